//! Real OpenSSH pieces for end-to-end tests of the SSH gateway.
//!
//! * [`Sshd`]: Debian's `/usr/sbin/sshd` as a target, on a free loopback port with its own
//!   config, host key and log in a temporary folder, logging in the local account
//!   [`TARGET_LOGIN`] (created on first use; the tests must run as root).
//! * [`Gateway`]: the real `penstock serve` on a free loopback port, its log in the installation
//!   folder (so [`Install::find_secret`] scans it).
//! * [`Lab`]: an installation with an sshd target named [`TARGET`] and a running gateway, plus
//!   vendors (one fresh user per login: a TOTP step is accepted once per user) and real
//!   `ssh`/`scp`/`sftp` commands answering the gateway's prompts through `SSH_ASKPASS`.
//! * [`Lab::finish`]: the checks every end-to-end test ends with (recordings match their
//!   hashes, the audit chain is intact, no secret anywhere).
//!
//! Every process started here gets `PR_SET_PDEATHSIG`, so nothing outlives a killed test.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{assert_ok, random_hex, ssh_keygen, Backend, Install};

/// Local account the sshd target logs in.
pub const TARGET_LOGIN: &str = "pstarget";
/// Its password: the vaulted target secret, distinctive so it can be searched for.
pub const TARGET_PASSWORD: &str = "Plc-Secret-4711";
/// Name of the sshd target in every [`Lab`].
pub const TARGET: &str = "plc-line3";

/// Panics unless the tests run as root (needed to run sshd and create its account).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the SSH end-to-end tests run a real sshd that logs in the local account `{TARGET_LOGIN}`: \
         run them as root (CI does; locally: sudo -E cargo test --release --test ssh)"
    );
}

/// Makes the child die with the thread that spawned it (a killed or finished test leaves no
/// processes behind).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Creates [`TARGET_LOGIN`] if missing and sets its password; once per test binary.
pub fn ensure_target_account() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_root();
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let exists = Command::new("id").arg(TARGET_LOGIN).output().map(|o| o.status.success()).unwrap_or(false);
        if !exists {
            let out = Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", TARGET_LOGIN])
                .output()
                .expect("cannot run useradd");
            // Another test binary may have created it meanwhile (exit 9: already exists).
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {TARGET_LOGIN} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // chpasswd takes a lock on /etc/shadow; retry if another process holds it.
        let mut last = String::new();
        for _ in 0..20 {
            let mut child = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cannot run chpasswd");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(format!("{TARGET_LOGIN}:{TARGET_PASSWORD}\n").as_bytes())
                .expect("write chpasswd");
            let out = child.wait_with_output().expect("wait chpasswd");
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("chpasswd for {TARGET_LOGIN} failed: {last}");
    });
}

/// A loopback port that was free a moment ago and has not been handed out before in this
/// process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        let mut g = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `cmd` with `input` on stdin (null when empty) and collects its output; kills it and
/// panics after `timeout`.
#[track_caller]
pub fn run(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    cmd.stdin(if input.is_empty() { Stdio::null() } else { Stdio::piped() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = die_with_parent(cmd).spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let bg = Background::collect(&mut child, input);
    match wait_timeout(&mut child, timeout) {
        Some(status) => bg.output(status),
        None => {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let o = bg.output(status);
            panic!(
                "{what} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Threads feeding a child's stdin and collecting its stdout and stderr.
pub struct Background {
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Starts the threads for whatever pipes `child` has.
    pub fn collect(child: &mut Child, input: &[u8]) -> Background {
        if let Some(mut si) = child.stdin.take() {
            let data = input.to_vec();
            // EPIPE is fine: the command may exit before reading everything.
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        let reader = |r: Option<Box<dyn Read + Send>>| {
            r.map(|mut r| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = r.read_to_end(&mut v);
                    v
                })
            })
        };
        Background {
            out: reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
            err: reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        }
    }

    /// The collected output (waits for the pipes to close).
    pub fn output(self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: self.out.map(|h| h.join().unwrap_or_default()).unwrap_or_default(),
            stderr: self.err.map(|h| h.join().unwrap_or_default()).unwrap_or_default(),
        }
    }
}

/// A process running in the background (e.g. a long `ssh` session), killed when dropped.
pub struct Running {
    /// The child.
    pub child: Child,
    bg: Option<Background>,
}

impl Running {
    /// Spawns `cmd` with null stdin and piped output.
    pub fn spawn(cmd: &mut Command) -> Running {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = die_with_parent(cmd).spawn().expect("spawn");
        let bg = Background::collect(&mut child, b"");
        Running { child, bg: Some(bg) }
    }

    /// Waits at most `timeout`; the output if it ended.
    pub fn wait(&mut self, timeout: Duration) -> Option<Output> {
        let status = wait_timeout(&mut self.child, timeout)?;
        self.bg.take().map(|b| b.output(status))
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM, waits up to 5 s, then SIGKILL.
fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    if wait_timeout(child, Duration::from_secs(5)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until `path` contains `needle`, or panics after `timeout` showing the file.
#[track_caller]
fn wait_for_text(path: &Path, needle: &str, timeout: Duration, child: &mut Child, what: &str) {
    let end = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("{what} exited ({st}) before it was ready; its log:\n{text}");
        }
        if Instant::now() >= end {
            panic!("{what} not ready within {timeout:?}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's sshd as a target, in its own temporary folder.
pub struct Sshd {
    dir: tempfile::TempDir,
    /// Loopback port.
    pub port: u16,
    /// Its host public key line (`ssh-ed25519 AAAA… comment`).
    pub host_key: String,
    child: Child,
}

impl Sshd {
    /// Starts sshd (`-D -e`) on a free port with the `sftp` subsystem; waits until it listens.
    pub fn start() -> Sshd {
        Sshd::start_with(true)
    }

    /// Like [`Sshd::start`], optionally without any subsystem (so `sftp` is refused).
    pub fn start_with(sftp: bool) -> Sshd {
        Sshd::start_extra(sftp, "")
    }

    /// Like [`Sshd::start_with`] with `extra` lines (e.g. `AcceptEnv *\n`) appended to its
    /// config (they must not repeat an option set here: sshd takes the first value).
    pub fn start_extra(sftp: bool, extra: &str) -> Sshd {
        Sshd::start_custom(sftp, TARGET_LOGIN, None, extra)
    }

    /// Like [`Sshd::start_extra`], letting in the space-separated `allow_users` instead of
    /// [`TARGET_LOGIN`] and, with `authorized_keys`, using that `AuthorizedKeysFile` (e.g.
    /// `.ssh/authorized_keys`, each account's own) instead of the shared file of
    /// [`Sshd::authorize`]. For tests that change an account (rotation) without disturbing the
    /// accounts other test binaries use.
    pub fn start_custom(sftp: bool, allow_users: &str, authorized_keys: Option<&str>, extra: &str) -> Sshd {
        ensure_target_account();
        let dir = tempfile::Builder::new().prefix("penstock-sshd-").tempdir().expect("temp dir");
        // The target account reads authorized_keys with its own rights.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.path();
        let host_key = ssh_keygen(&d.join("ssh_host_ed25519_key"), "sshd-target");
        let ak = d.join("authorized_keys");
        std::fs::write(&ak, "").expect("authorized_keys");
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let port = free_port();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {hk}\n\
             PidFile {pid}\n\
             UsePAM no\n\
             PasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {akf}\n\
             StrictModes no\n\
             PermitRootLogin no\n\
             AllowUsers {allow_users}\n\
             {subsystem}\
             PrintMotd no\n\
             PrintLastLog no\n\
             UseDNS no\n\
             MaxStartups 100:30:200\n\
             MaxSessions 64\n\
             LogLevel VERBOSE\n\
             {extra}",
            hk = d.join("ssh_host_ed25519_key").display(),
            pid = d.join("sshd.pid").display(),
            akf = authorized_keys.map(str::to_string).unwrap_or_else(|| ak.display().to_string()),
            subsystem = if sftp { "Subsystem sftp internal-sftp\n" } else { "" },
        );
        let cfg = d.join("sshd_config");
        std::fs::write(&cfg, config).expect("sshd_config");
        let log = d.join("sshd.log");
        let logf = std::fs::File::create(&log).expect("sshd log");
        let mut child = die_with_parent(
            Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("dup"))
                .stderr(logf),
        )
        .spawn()
        .expect("cannot run /usr/sbin/sshd (install openssh-server)");
        wait_for_text(&log, "Server listening on", Duration::from_secs(10), &mut child, "sshd");
        Sshd { dir, port, host_key, child }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lets `pub_line` log in as [`TARGET_LOGIN`].
    pub fn authorize(&self, pub_line: &str) {
        let ak = self.dir.path().join("authorized_keys");
        let mut f = std::fs::OpenOptions::new().append(true).open(ak).expect("authorized_keys");
        writeln!(f, "{pub_line}").expect("write authorized_keys");
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The real `penstock serve`, logging to `DIR/gateway.log`.
pub struct Gateway {
    child: Child,
    /// Loopback port it listens on.
    pub port: u16,
    /// Loopback port of its web console (HTTPS).
    pub web_port: u16,
    /// Loopback port its RDP listener is on.
    pub rdp_port: u16,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Gateway {
    /// Starts `penstock -c CONFIG serve` with `PENSTOCK_SSH_LISTEN=127.0.0.1:PORT`; waits until it
    /// listens.
    pub fn start(install: &Install) -> Gateway {
        Gateway::start_env(install, &[])
    }

    /// Like [`Gateway::start`] with extra environment (e.g. `PENSTOCK_*` overrides).
    pub fn start_env(install: &Install, env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let web_port = free_port();
        let rdp_port = free_port();
        let log = install.dir().join("gateway.log");
        // A gateway started again on the same installation: its readiness is read from a fresh
        // log (the earlier run's log moves to gateway.log.old).
        if let Ok(old) = std::fs::read_to_string(&log) {
            let mut all =
                std::fs::OpenOptions::new().create(true).append(true).open(log.with_extension("log.old")).expect("log");
            std::io::Write::write_all(&mut all, old.as_bytes()).expect("keep old log");
            let _ = std::fs::remove_file(&log);
        }
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("gateway log");
        let mut child = die_with_parent(
            install
                .command(&["serve"])
                .env("PENSTOCK_SSH_LISTEN", format!("127.0.0.1:{port}"))
                .env("PENSTOCK_WEB_LISTEN", format!("127.0.0.1:{web_port}"))
                .env("PENSTOCK_RDP_LISTEN", format!("127.0.0.1:{rdp_port}"))
                .env("NO_COLOR", "1")
                .envs(env.iter().copied())
                .stdout(logf.try_clone().expect("dup"))
                .stderr(logf),
        )
        .spawn()
        .expect("cannot run penstock serve");
        wait_for_text(&log, "ssh listener ready", Duration::from_secs(20), &mut child, "penstock serve");
        Gateway { child, port, web_port, rdp_port, log }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no chance to flush or close anything) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// RFC 4648 base32, as in otpauth URIs.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase()).expect("base32 digit") as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A vendor account made through the CLI.
#[derive(Debug, Clone)]
pub struct Vendor {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// TOTP seed (from the otpauth URI `user add` printed).
    pub seed: Vec<u8>,
    /// Grant on [`TARGET`], if one was issued.
    pub grant: Option<i64>,
}

impl Vendor {
    /// The TOTP code for now.
    pub fn code(&self) -> String {
        self.code_at(now())
    }

    /// The TOTP code for Unix time `t`.
    pub fn code_at(&self, t: i64) -> String {
        penstock::auth::totp::code_at(&penstock::secret::Secret::new(self.seed.clone()), t)
    }

    /// A six-digit code that is wrong for every step the server would accept now.
    pub fn wrong_code(&self) -> String {
        let t = now();
        let near: Vec<String> = (-2..=2).map(|k| self.code_at(t + 30 * k)).collect();
        (0..)
            .map(|i: u32| format!("{:06}", (near[2].parse::<u32>().unwrap_or(0) + 1 + i) % 1_000_000))
            .find(|c| !near.contains(c))
            .expect("a wrong code")
    }

    /// `NAME@TARGET` login name.
    pub fn login(&self, target: &str) -> String {
        format!("{}@{target}", self.name)
    }
}

/// What a client answers to the gateway's prompts.
#[derive(Debug, Clone)]
pub struct Answers {
    /// To `Password:`.
    pub password: String,
    /// To `Verification code:`.
    pub code: String,
}

/// One installation with an sshd target and a running gateway.
pub struct Lab {
    /// The installation.
    pub install: Install,
    /// The target.
    pub sshd: Sshd,
    gateway: Option<Gateway>,
    port: u16,
    passwords: Mutex<Vec<String>>,
    remote_dirs: Mutex<Vec<PathBuf>>,
    counter: AtomicUsize,
}

impl Lab {
    /// `init`, an sshd, the target [`TARGET`] (password credential, pinned host key) and the
    /// gateway.
    pub fn new(backend: Backend) -> Lab {
        Lab::setup(backend, "", &[], &[])
    }

    /// Like [`Lab::new`] with `sshd_extra` lines in the target's sshd config and `env` for the
    /// gateway.
    pub fn with(backend: Backend, sshd_extra: &str, env: &[(&str, &str)]) -> Lab {
        Lab::setup(backend, sshd_extra, &[], env)
    }

    /// Like [`Lab::new`], writing `policies` (file name, TOML text) into `DIR/policies/` before
    /// the gateway starts (files are read in name order, so `00-….toml` wins over the shipped
    /// examples) and starting the gateway with the extra environment `env`.
    pub fn with_options(backend: Backend, policies: &[(&str, &str)], env: &[(&str, &str)]) -> Lab {
        Lab::setup(backend, "", policies, env)
    }

    fn setup(backend: Backend, sshd_extra: &str, policies: &[(&str, &str)], env: &[(&str, &str)]) -> Lab {
        require_root();
        let install = Install::new(backend);
        let pdir = install.dir().join("policies");
        std::fs::create_dir_all(&pdir).expect("policies dir");
        for (name, text) in policies {
            std::fs::write(pdir.join(name), text).expect("write policy");
        }
        let sshd = Sshd::start_extra(true, sshd_extra);
        install.ok_stdin(
            &[
                "target",
                "add",
                TARGET,
                "--address",
                &sshd.address(),
                "--login",
                TARGET_LOGIN,
                "--password-stdin",
                "--host-key",
                &sshd.host_key,
            ],
            format!("{TARGET_PASSWORD}\n").as_bytes(),
        );
        let gateway = Gateway::start_env(&install, env);
        let port = gateway.port;
        Lab {
            install,
            sshd,
            gateway: Some(gateway),
            port,
            passwords: Mutex::new(Vec::new()),
            remote_dirs: Mutex::new(Vec::new()),
            counter: AtomicUsize::new(0),
        }
    }

    /// The gateway's SSH port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The gateway's web console port (HTTPS on 127.0.0.1).
    pub fn web_port(&self) -> u16 {
        self.gateway.as_ref().expect("gateway running").web_port
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("gateway running").pid()
    }

    /// Kills the gateway with SIGKILL.
    pub fn kill_gateway(&mut self) {
        if let Some(g) = self.gateway.as_mut() {
            g.kill9();
        }
    }

    /// Starts the gateway again on the same installation (after [`Lab::kill_gateway`]), with
    /// extra environment `env`; new clients use its new port.
    pub fn restart_gateway(&mut self, env: &[(&str, &str)]) {
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
        let g = Gateway::start_env(&self.install, env);
        self.port = g.port;
        self.gateway = Some(g);
    }

    /// Points new clients at another gateway (another node on the same store).
    pub fn use_port(&mut self, port: u16) {
        self.port = port;
    }

    /// The gateway's log so far.
    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(|g| g.log_text()).unwrap_or_default()
    }

    /// A new vendor (random name and password, TOTP enrolled) with a 2-hour grant on
    /// [`TARGET`].
    pub fn vendor(&self) -> Vendor {
        let mut v = self.vendor_without_grant();
        v.grant = Some(self.grant(&v.name, TARGET, "2h"));
        v
    }

    /// A new vendor without any grant.
    pub fn vendor_without_grant(&self) -> Vendor {
        self.user_with_role("vendor")
    }

    /// A new user with `role` (`vendor`, `manager`, …; random name and password, TOTP
    /// enrolled), in the organisation "Acme Automation"; no grant.
    pub fn user_with_role(&self, role: &str) -> Vendor {
        let name = format!("{}{}", &role[..1], random_hex(5));
        let password = format!("Vendor-Pw-{}", random_hex(8));
        self.passwords.lock().unwrap_or_else(|e| e.into_inner()).push(password.clone());
        let out = self.install.ok_stdin(
            &["user", "add", &name, "--role", role, "--org", "Acme Automation", "--password-stdin"],
            format!("{password}\n").as_bytes(),
        );
        let uri = out.lines().find(|l| l.starts_with("otpauth://")).unwrap_or_else(|| panic!("no URI in:\n{out}"));
        let secret = uri
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("secret="))
            .unwrap_or_else(|| panic!("no secret in {uri}"));
        Vendor { name, password, seed: base32_decode(secret), grant: None }
    }

    /// Issues a grant; returns its id.
    pub fn grant(&self, user: &str, target: &str, duration: &str) -> i64 {
        let out = self.install.ok(&["grant", "add", "--user", user, "--target", target, "--for", duration]);
        out.split_whitespace().nth(1).and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("no grant id in {out:?}"))
    }

    /// A fresh folder under /tmp the target account can write to (removed when the lab is
    /// dropped).
    pub fn remote_dir(&self) -> PathBuf {
        let d = PathBuf::from(format!("/tmp/penstock-e2e-{}", random_hex(6)));
        std::fs::create_dir(&d).expect("remote dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        self.remote_dirs.lock().unwrap_or_else(|e| e.into_inner()).push(d.clone());
        d
    }

    /// `prog` (`ssh`, `scp`, `sftp`) with options that make it non-interactive and answer the
    /// gateway's prompts with `answers` through an askpass script (prompts are logged to
    /// `SCRATCH/prompts-N.log`). With `key`, public-key authentication with that key comes first.
    /// The port option is added (`-p`/`-P`); the caller adds the destination.
    pub fn client_with(&self, prog: &str, answers: &Answers, key: Option<&Path>) -> Command {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let scratch = self.install.scratch();
        let askpass = scratch.join(format!("askpass-{n}.sh"));
        let prompts = scratch.join(format!("prompts-{n}.log"));
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{log}'\ncase \"$1\" in\n*assword*) printf '%s\\n' '{pw}' ;;\n\
             *erification*) printf '%s\\n' '{code}' ;;\n*) exit 1 ;;\nesac\n",
            log = prompts.display(),
            pw = answers.password,
            code = answers.code,
        );
        std::fs::write(&askpass, script).expect("askpass");
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let mut c = Command::new(prog);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &scratch)
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        c.args(["-F", "/dev/null"]);
        c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]);
        c.args(["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10"]);
        c.args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        match key {
            Some(k) => {
                c.arg("-i").arg(k);
                c.args(["-o", "IdentitiesOnly=yes", "-o", "PubkeyAuthentication=yes"]);
            }
            None => {
                c.args(["-o", "PubkeyAuthentication=no"]);
            }
        }
        c.arg(if prog == "ssh" { "-p" } else { "-P" }).arg(self.port.to_string());
        c
    }

    /// [`Lab::client_with`] answering with the vendor's password and the current code.
    pub fn client(&self, prog: &str, v: &Vendor) -> Command {
        self.client_with(prog, &Answers { password: v.password.clone(), code: v.code() }, None)
    }

    /// `ssh OPTS… VENDOR@TARGET@127.0.0.1` (password + TOTP); the caller adds the command.
    pub fn ssh(&self, v: &Vendor, opts: &[&str]) -> Command {
        let mut c = self.client("ssh", v);
        c.args(opts).arg(self.dest(v));
        c
    }

    /// `VENDOR@TARGET@127.0.0.1`.
    pub fn dest(&self, v: &Vendor) -> String {
        format!("{}@127.0.0.1", v.login(TARGET))
    }

    /// Adds a secret that [`Lab::finish`] must not find anywhere.
    pub fn add_secret(&self, s: &str) {
        self.passwords.lock().unwrap_or_else(|e| e.into_inner()).push(s.to_string());
    }

    /// Prompts the `n`-th client's askpass was asked, in order.
    pub fn prompts(&self, n: usize) -> Vec<String> {
        std::fs::read_to_string(self.install.scratch().join(format!("prompts-{n}.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Number of clients made so far (the next client is number `clients()`).
    pub fn clients(&self) -> usize {
        self.counter.load(Ordering::SeqCst)
    }

    /// `session list --json` (optionally `--live`).
    pub fn sessions(&self, live: bool) -> Vec<Value> {
        let mut args = vec!["session", "list", "--json"];
        if live {
            args.push("--live");
        }
        match self.install.json(&args) {
            Value::Array(a) => a,
            other => panic!("session list is not an array: {other}"),
        }
    }

    /// Sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> Vec<Value> {
        self.sessions(false).into_iter().filter(|s| s["user"] == user).collect()
    }

    /// Waits until `user` has exactly one session and it has ended; returns it.
    #[track_caller]
    pub fn ended_session(&self, user: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.sessions_of(user);
            if s.len() == 1 && !s[0]["end_reason"].is_null() {
                return s[0].clone();
            }
            assert!(Instant::now() < end, "no ended session for {user}: {s:?}\ngateway log:\n{}", self.gateway_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `user` has a live session; returns it.
    #[track_caller]
    pub fn live_session(&self, user: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let s: Vec<Value> = self.sessions(true).into_iter().filter(|s| s["user"] == user).collect();
            if let Some(s) = s.into_iter().next() {
                return s;
            }
            assert!(Instant::now() < end, "no live session for {user}\ngateway log:\n{}", self.gateway_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The audit chain, exported with `audit export`.
    pub fn audit(&self) -> Vec<Value> {
        self.install
            .ok(&["audit", "export", "--format", "jsonl"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line ({e}): {l}")))
            .collect()
    }

    /// Audit events of type `kind`, as (actor, details).
    pub fn audit_events(&self, kind: &str) -> Vec<Value> {
        self.audit().into_iter().filter(|r| r["kind"] == kind).collect()
    }

    /// The checks every end-to-end test ends with: no live session is left, the gateway stops,
    /// each recorded session's file hashes to its stored SHA-256 and parses as asciicast v2, the
    /// audit chain verifies, and neither the target password nor any vendor password is in the
    /// gateway log, a recording, the audit export, the database or anything penstock printed.
    #[track_caller]
    pub fn finish(mut self) {
        let end = Instant::now() + Duration::from_secs(15);
        while !self.sessions(true).is_empty() {
            assert!(Instant::now() < end, "sessions still live: {:?}", self.sessions(true));
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.gateway_log();
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
        assert!(log.contains("ssh listener ready"), "gateway log:\n{log}");
        for s in self.sessions(false) {
            let Some(path) = s["recording_path"].as_str() else { continue };
            // A recording that failed mid-session has no hash (the session ends as `error`).
            if s["end_reason"] == "error" && s["recording_sha256"].is_null() {
                continue;
            }
            let sha = s["recording_sha256"].as_str().unwrap_or_else(|| panic!("no recording hash: {s}"));
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("recording {path}: {e}"));
            assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "recording {path} does not match its hash");
            parse_cast(Path::new(path));
        }
        let verify = self.install.ok(&["audit", "verify"]);
        assert!(verify.starts_with("audit chain intact:"), "{verify}");
        let _ = self.audit();
        let mut secrets = vec![TARGET_PASSWORD.to_string()];
        secrets.extend(self.passwords.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        for s in &secrets {
            let found = self.install.find_secret(s.as_bytes());
            assert!(found.is_empty(), "secret {s:?} found in: {found:?}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
        if std::thread::panicking() {
            let tail = |text: String| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            let gw = std::fs::read_to_string(self.install.dir().join("gateway.log")).unwrap_or_default();
            eprintln!("--- gateway log (tail) ---\n{}\n--- sshd log (tail) ---\n{}", tail(gw), tail(self.sshd.log()));
        }
        for d in self.remote_dirs.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A parsed asciicast v2 recording.
#[derive(Debug)]
pub struct Cast {
    /// The header object.
    pub header: Value,
    /// Events: (time, code, data).
    pub events: Vec<(f64, String, String)>,
}

impl Cast {
    /// All data of events with `code`, concatenated.
    pub fn text(&self, code: &str) -> String {
        self.events.iter().filter(|e| e.1 == code).map(|e| e.2.as_str()).collect()
    }
}

/// Parses `path` as asciicast v2 and checks its shape: a header with version 2, positive width
/// and height and a timestamp, then `[time, code, data]` events with known codes and
/// non-decreasing times.
#[track_caller]
pub fn parse_cast(path: &Path) -> Cast {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("recording {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header line")).expect("header is JSON");
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    assert!(header["height"].as_u64().is_some_and(|h| h > 0), "{header}");
    assert!(header["timestamp"].as_i64().is_some_and(|t| (now() - t).abs() < 3600), "{header}");
    let mut events = Vec::new();
    let mut last = 0.0f64;
    for (i, l) in lines.enumerate() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("event {i} of {} ({e}): {l}", path.display()));
        let a = v.as_array().unwrap_or_else(|| panic!("event {i} is not an array: {l}"));
        assert_eq!(a.len(), 3, "{l}");
        let t = a[0].as_f64().unwrap_or_else(|| panic!("bad time: {l}"));
        let code = a[1].as_str().unwrap_or_else(|| panic!("bad code: {l}")).to_string();
        let data = a[2].as_str().unwrap_or_else(|| panic!("bad data: {l}")).to_string();
        assert!(["o", "i", "r", "m"].contains(&code.as_str()), "{l}");
        assert!(t >= last, "event times go backwards in {} at event {i}: {last} then {t}", path.display());
        last = t;
        events.push((t, code, data));
    }
    Cast { header, events }
}

/// What `asciinema cat FILE` prints (run under `script`, which gives it the terminal it wants).
#[track_caller]
pub fn asciinema_cat(path: &Path) -> String {
    let out = run(
        Command::new("script").arg("-qec").arg(format!("asciinema cat '{}'", path.display())).arg("/dev/null"),
        b"",
        Duration::from_secs(60),
    );
    assert_ok("asciinema cat", &out)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Writes `len` random bytes to `path`; returns their SHA-256.
pub fn random_file(path: &Path, len: usize) -> String {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write random file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    hex::encode(Sha256::digest(&data))
}
