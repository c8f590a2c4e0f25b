//! A real xrdp (Debian's `xrdp`) as an RDP target without NLA: `xrdp` and `xrdp-sesman` in the
//! foreground with config files written to a folder of their own (TLS with a certificate made
//! here, its own RDP port, `cliprdr` and `rdpdr` on), sessions on `Xvnc`
//! (`tigervnc-standalone-server`) running a window manager script that only waits, and
//! `xrdp-chansrv` in each session for the clipboard and for drives (mounted with FUSE under the
//! session user's `~/thinclient_drives`). The session user is a real local account with a home
//! and a shell (sesman logs it in through PAM).
//!
//! xrdp finds sesman through `/etc/xrdp/sesman.ini` (its `ListenPort`), whatever config xrdp
//! itself is given: sesman listens on that port (3350 unless changed), so one xrdp runs per test
//! binary at a time. Dropping an [`Xrdp`] ends xrdp, sesman and every process of the sessions
//! it started (by process id), and unmounts the session's drives.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::sshd::{die_with_parent, free_port};
use super::x11::Proc;

/// A running xrdp with its session manager.
pub struct Xrdp {
    /// Its RDP port on loopback.
    pub port: u16,
    /// Its folder (configs, certificate, logs).
    pub dir: PathBuf,
    /// The session user.
    pub user: String,
    xrdp: Proc,
    sesman: Proc,
    _tmp: tempfile::TempDir,
}

/// The port sesman listens on, as xrdp reads it from `/etc/xrdp/sesman.ini`.
fn sesman_port() -> u16 {
    let text = std::fs::read_to_string("/etc/xrdp/sesman.ini").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ListenPort="))
        .find_map(|p| p.trim().parse().ok())
        .unwrap_or(3350)
}

/// A local account `user` with password `pw`, a home and a shell (created when missing).
pub fn ensure_session_user(user: &str, pw: &str) {
    let exists = Command::new("id").arg(user).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !exists.is_ok_and(|s| s.success()) {
        let st = Command::new("useradd").args(["-m", "-s", "/bin/bash", user]).status().expect("useradd");
        assert!(st.success(), "useradd {user}");
    }
    let mut c = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().expect("stdin");
        stdin.write_all(format!("{user}:{pw}\n").as_bytes()).expect("chpasswd input");
    }
    assert!(c.wait().expect("chpasswd").success(), "chpasswd");
}

/// The parent pid of `pid`, from /proc.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every process descended from `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
            if let Some(pp) = ppid(pid) {
                all.push((pid, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &all {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect()
}

impl Xrdp {
    /// Starts xrdp (TLS only, no NLA) and sesman for sessions of `user` (who must exist), its
    /// files in a temporary folder of its own.
    pub fn start(user: &str) -> Xrdp {
        let tmp = tempfile::Builder::new().prefix("penstock-xrdp").tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        {
            use std::os::unix::fs::PermissionsExt;
            // The session user runs the window manager script from here.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let sesman_port = sesman_port();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", sesman_port)).is_err()
                && std::net::TcpStream::connect(("::1", sesman_port)).is_err(),
            "port {sesman_port} (xrdp-sesman, from /etc/xrdp/sesman.ini) is taken: is another xrdp running?"
        );
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=xrdp-test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        let wm = dir.join("startwm.sh");
        std::fs::write(&wm, "#!/bin/sh\nexec sleep 100000\n").expect("startwm.sh");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let port = free_port();
        let xrdp_ini = format!(
            "[Globals]\nini_version=1\nfork=false\nport=tcp://127.0.0.1:{port}\nsecurity_layer=tls\n\
             crypt_level=none\ncertificate={}\nkey_file={}\nssl_protocols=TLSv1.2, TLSv1.3\nallow_channels=true\n\
             bitmap_cache=true\nbitmap_compression=true\nbulk_compression=false\nmax_bpp=24\nuse_fastpath=both\n\
             [Logging]\nLogFile={}\nLogLevel=INFO\nEnableSyslog=false\n\
             [Channels]\nrdpdr=true\nrdpsnd=false\ndrdynvc=false\ncliprdr=true\nrail=false\nxrdpvr=false\ntcutils=false\n\
             [Xvnc]\nname=Xvnc\nlib=libvnc.so\nusername=ask\npassword=ask\nip=127.0.0.1\nport=-1\n",
            cert.display(),
            key.display(),
            dir.join("xrdp.log").display()
        );
        let sesman_ini = format!(
            "[Globals]\nListenAddress=127.0.0.1\nListenPort={sesman_port}\nEnableUserWindowManager=false\n\
             UserWindowManager=startwm.sh\nDefaultWindowManager={wm}\nReconnectScript={wm}\n\
             [Security]\nAllowRootLogin=false\nMaxLoginRetry=4\nAlwaysGroupCheck=false\n\
             RestrictOutboundClipboard=none\nRestrictInboundClipboard=none\n\
             [Sessions]\nX11DisplayOffset=50\nMaxSessions=10\nKillDisconnected=false\nDisconnectedTimeLimit=0\n\
             IdleTimeLimit=0\nPolicy=Default\n\
             [Logging]\nLogFile={log}\nLogLevel=INFO\nEnableSyslog=false\n\
             [Xvnc]\nparam=Xvnc\nparam=-bs\nparam=-nolisten\nparam=tcp\nparam=-localhost\nparam=-dpi\nparam=96\n\
             [Chansrv]\nFuseMountName=thinclient_drives\nFileUmask=077\n[SessionVariables]\n",
            wm = wm.display(),
            log = dir.join("sesman.log").display()
        );
        std::fs::write(dir.join("xrdp.ini"), xrdp_ini).expect("xrdp.ini");
        std::fs::write(dir.join("sesman.ini"), sesman_ini).expect("sesman.ini");
        // As Debian's `xrdp.service` leaves it (/usr/share/xrdp/socksetup): every session's
        // user (chansrv runs as that user) makes its sockets there. Without a systemd boot,
        // nobody else does.
        std::fs::create_dir_all("/run/xrdp/sockdir").expect("/run/xrdp/sockdir");
        std::fs::set_permissions("/run/xrdp/sockdir", std::os::unix::fs::PermissionsExt::from_mode(0o3777))
            .expect("chmod sockdir");
        let spawn = |prog: &str, ini: &str, out: &str| {
            Proc(
                die_with_parent(
                    Command::new(prog)
                        .args(["-n", "-c"])
                        .arg(dir.join(ini))
                        .stdin(Stdio::null())
                        .stdout(std::fs::File::create(dir.join(out)).expect("log"))
                        .stderr(std::fs::File::create(dir.join(format!("{out}.err"))).expect("log")),
                )
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {prog} (package xrdp): {e}")),
            )
        };
        let sesman = spawn("xrdp-sesman", "sesman.ini", "sesman.out");
        let xrdp = spawn("xrdp", "xrdp.ini", "xrdp.out");
        let x = Xrdp { port, dir, user: user.to_string(), xrdp, sesman, _tmp: tmp };
        let end = Instant::now() + Duration::from_secs(20);
        while !super::x11::rdp_answers(port) {
            assert!(Instant::now() < end, "xrdp did not listen on {port}:\n{}", x.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        x
    }

    /// SHA-256 of its certificate, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn thumbprint(&self) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.dir.join("cert.pem"))
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.trim().rsplit('=').next().unwrap_or_default().to_uppercase()
    }

    /// Its logs (xrdp, sesman).
    pub fn log_text(&self) -> String {
        ["xrdp.log", "xrdp.out", "xrdp.out.err", "sesman.log", "sesman.out", "sesman.out.err"]
            .iter()
            .map(|f| format!("== {f}\n{}", std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()))
            .collect()
    }

    /// The X display (`:N`) of the session sesman started, once its X server runs.
    pub fn session_display(&self, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            for pid in descendants(self.sesman.0.id()) {
                let args = cmdline(pid);
                if args.first().is_some_and(|a| a.ends_with("Xvnc")) {
                    if let Some(d) = args.iter().find(|a| a.starts_with(':')) {
                        return Some(d.clone());
                    }
                }
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The session user's home.
    pub fn home(&self) -> PathBuf {
        PathBuf::from(format!("/home/{}", self.user))
    }

    /// A command that runs `prog` as the session user on the session's display `display`.
    pub fn in_session(&self, display: &str, prog: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.user, "--", "env"])
            .arg(format!("DISPLAY={display}"))
            .arg(format!("XAUTHORITY={}", self.home().join(".Xauthority").display()))
            .arg(format!("HOME={}", self.home().display()))
            .arg(prog)
            .stdin(Stdio::null());
        c
    }

    /// Ends the sessions sesman started (their X server, chansrv, window manager), by pid,
    /// and unmounts their drives.
    pub fn end_sessions(&self) {
        for pid in descendants(self.sesman.0.id()) {
            // SAFETY: kill has no memory-safety preconditions; these are our own descendants.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        for pid in descendants(self.sesman.0.id()) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let _ = Command::new("fusermount")
            .arg("-uz")
            .arg(self.home().join("thinclient_drives"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Xrdp {
    fn drop(&mut self) {
        self.end_sessions();
        let _ = self.xrdp.0.kill();
        let _ = self.sesman.0.kill();
    }
}
