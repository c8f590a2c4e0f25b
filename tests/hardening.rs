//! Field hardening, end to end with real clients (OpenSSH, PuTTY's plink, paramiko,
//! ssh-audit), a real sshd target and the real `penstock serve`:
//!
//! 1. a gateway killed mid-session leaves nothing dangling (sessions closed as `interrupted`
//!    on restart, their recordings' hashes in the chain, half-done request states repaired);
//! 2. no SHA-1 or CBC towards targets unless a target opts in (`--legacy-crypto`);
//! 3. idle connections from one address do not lock out a real login from it;
//! 4. a vendor who takes 45 s at the prompts still logs in (no keepalive before login);
//! 5. what a vendor pipes into a command is recorded (text and a byte-exact side file);
//! 6. one ControlMaster connection runs hundreds of sessions; the open-channel limit is clear.

#[macro_use]
mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{parse_cast, random_file, run, sha256_file, Lab, Running, Vendor, TARGET};
use common::{assert_ok, stderr, stdout, Backend};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// The session row of `id`.
fn session(lab: &Lab, id: &str) -> Value {
    lab.sessions(false).into_iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("no session {id}"))
}

/// Flips one bit of byte `at` of `path`.
fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read");
    b[at] ^= 0x01;
    std::fs::write(path, b).expect("write");
}

// ---------------------------------------------------------------------------------------------
// 1. A gateway that dies mid-session leaves nothing dangling.

#[test]
fn a_session_cut_by_kill_9_is_closed_as_interrupted_on_restart() {
    let mut lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let mut sess = Running::spawn(lab.ssh(&v, &[]).arg("for i in $(seq 1 200); do echo line-$i; sleep 0.05; done"));
    let live = lab.live_session(&v.name);
    let id = live["id"].as_str().expect("id").to_string();
    let cast = PathBuf::from(live["recording_path"].as_str().expect("recording"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sess.alive(), "the session ended before the kill");
    lab.kill_gateway();
    sess.wait(Duration::from_secs(15)).expect("ssh did not notice the gateway died");
    assert!(session(&lab, &id)["ended_at"].is_null(), "nothing could have closed the session yet");

    lab.restart_gateway(&[]);
    let s = session(&lab, &id);
    assert_eq!(s["end_reason"], "interrupted", "{s}");
    assert!(s["ended_at"].is_i64(), "{s}");
    let on_disk = sha256_file(&cast);
    assert_eq!(s["recording_sha256"], on_disk.as_str(), "the row holds the hash of the file as found");
    let ev = lab.audit_events("session.interrupted");
    let ev = ev.iter().find(|e| e["details"]["session"] == id.as_str()).expect("session.interrupted event");
    assert_eq!(ev["details"]["recording_sha256"], on_disk.as_str(), "{ev}");
    assert_eq!(ev["details"]["recording_size"].as_u64(), Some(std::fs::metadata(&cast).expect("size").len()), "{ev}");
    // Shown as interrupted everywhere a session is shown.
    assert!(lab.install.ok(&["session", "list"]).lines().any(|l| l.contains(&id[..8]) && l.contains("interrupted")));
    // The recording was not rewritten, and readers tolerate its torn last line.
    let text = common::sshd::asciinema_cat(&cast);
    assert!(text.contains("line-10"), "{text}");

    let verify = lab.install.ok(&["audit", "verify"]);
    assert!(verify.starts_with("audit chain intact:"), "{verify}");
    flip_byte(&cast, 40);
    let out = lab.install.run(&["audit", "verify"]);
    assert!(!out.status.success(), "verify passed with a flipped byte in an interrupted recording");
    let err = format!("{}{}", stdout(&out), stderr(&out));
    assert!(err.contains(&id) && err.contains("altered"), "{err}");
    flip_byte(&cast, 40);
    assert!(lab.install.ok(&["audit", "verify"]).starts_with("audit chain intact:"));

    // A restart with nothing left open closes nothing more.
    lab.restart_gateway(&[]);
    assert_eq!(lab.audit_events("session.interrupted").len(), 1);
    assert_eq!(lab.audit_events("node.started").len(), 3, "each start is audited");
}

#[test]
fn on_postgres_a_gateway_closes_only_its_own_sessions_and_repairs_half_done_requests() {
    let mut lab = Lab::new(Backend::Postgres);
    let v = lab.vendor();
    // Another node's live session, and a request that claims approval without its grant.
    let someone = lab.vendor_without_grant();
    let user_id = format!("(SELECT id FROM users WHERE name = '{}')", someone.name);
    lab.install.exec_sql(&format!(
        "INSERT INTO sessions (id, user_id, target_id, client_addr, started_at, node_id) \
         VALUES ('00000000000000000000000000other', {user_id}, 1, '10.9.9.9:1', 1, 'ffffffffffffffffffffffffffffffff')"
    ));
    lab.install.exec_sql(&format!(
        "INSERT INTO requests (user_id, target_id, policy, reason, duration, created_at, required, state) \
         VALUES ({user_id}, 1, 'default', 'crash test', 3600, 1, 1, 'approved')"
    ));
    let mut sess = Running::spawn(lab.ssh(&v, &[]).arg("sleep 30"));
    let mine = lab.live_session(&v.name)["id"].as_str().expect("id").to_string();
    lab.kill_gateway();
    sess.wait(Duration::from_secs(15)).expect("ssh did not notice the gateway died");
    lab.restart_gateway(&[]);
    assert_eq!(session(&lab, &mine)["end_reason"], "interrupted");
    let other = session(&lab, "00000000000000000000000000other");
    assert!(other["ended_at"].is_null(), "another node's session was closed: {other}");
    let db = lab.install.pg_database().expect("postgres").to_string();
    let state = common::postgres::server().psql(&db, "SELECT state FROM requests WHERE reason = 'crash test'");
    assert_eq!(state.trim(), "pending", "{state}");
    let repaired = lab.audit_events("state.repaired");
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert!(lab.install.ok(&["audit", "verify"]).starts_with("audit chain intact:"));
}

// ---------------------------------------------------------------------------------------------
// 2. No SHA-1 or CBC towards targets unless a target opts in.

const LEGACY_SSHD: &str = "HostKeyAlgorithms ssh-rsa\nKexAlgorithms diffie-hellman-group14-sha1\n\
                           Ciphers aes128-cbc\nMACs hmac-sha1\n";

#[test]
fn legacy_only_targets_are_refused_until_they_opt_in() {
    let lab = Lab::new(Backend::Sqlite);
    let dir = lab.install.scratch().join("legacy");
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("ssh_host_rsa_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(made.status.success());
    let rsa = std::fs::read_to_string(key.with_extension("pub")).expect("pub").trim().to_string();
    let old = common::sshd::Sshd::start_extra(
        true,
        &format!("HostKey {}\n{LEGACY_SSHD}", dir.join("ssh_host_rsa_key").display()),
    );
    let pw = format!("{}\n", common::sshd::TARGET_PASSWORD);

    // Fetching its host key names what it offers and how to opt in.
    let out = lab.install.run_stdin(
        &[
            "target",
            "add",
            "plc-old",
            "--address",
            &old.address(),
            "--login",
            common::sshd::TARGET_LOGIN,
            "--password-stdin",
            "--fetch-host-key",
        ],
        pw.as_bytes(),
    );
    assert!(!out.status.success(), "a legacy-only target was added with the modern set");
    let err = stderr(&out);
    for name in ["diffie-hellman-group14-sha1", "ssh-rsa", "aes128-cbc", "hmac-sha1", "--legacy-crypto"] {
        assert!(err.contains(name), "{name} not named in: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Pinned by hand: a vendor's session is refused with the same explanation.
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "plc-old",
            "--address",
            &old.address(),
            "--login",
            common::sshd::TARGET_LOGIN,
            "--password-stdin",
            "--host-key",
            &rsa,
        ],
        pw.as_bytes(),
    );
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "plc-old", "1h");
    let dest = format!("{}@127.0.0.1", v.login("plc-old"));
    let out = run(lab.client("ssh", &v).arg(&dest).arg("echo legacy-ok"), b"", T);
    assert!(!out.status.success(), "a session ran over legacy crypto without the opt-in");
    let err = stderr(&out);
    assert!(
        err.contains("legacy")
            && err.contains("diffie-hellman-group14-sha1")
            && err.contains("target set plc-old --legacy-crypto"),
        "{err}"
    );
    assert!(!old.log().contains("Accepted password"), "the gateway logged in anyway");

    // Opting in is audited, shown and listed; then the session works.
    lab.install.ok(&["target", "set", "plc-old", "--legacy-crypto"]);
    assert!(lab.install.ok(&["target", "show", "plc-old"]).contains("legacy allowed"));
    let listed = lab.install.ok(&["target", "list", "--legacy"]);
    assert!(listed.contains("plc-old") && !listed.contains(TARGET), "{listed}");
    let ev = lab.audit_events("target.legacy_crypto");
    assert_eq!(ev.last().expect("audited")["details"]["allowed"], true);
    let v2 = lab.vendor_without_grant();
    lab.grant(&v2.name, "plc-old", "1h");
    let dest = format!("{}@127.0.0.1", v2.login("plc-old"));
    let out = run(lab.client("ssh", &v2).arg(&dest).arg("echo legacy-ok"), b"", T);
    assert!(assert_ok("ssh over legacy crypto", &out).contains("legacy-ok"));
    // The modern target was still reached with the modern set only.
    assert!(lab.install.ok(&["target", "show", TARGET]).contains("modern only"));
    lab.finish();
}

/// Whether something listens on TCP `port` (IPv4 or IPv6), from /proc.
fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).unwrap_or_default().lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}"))
        })
    })
}

/// ssh-audit's `[fail]` lines, except NIST-curve ECDSA (kept for OpenSSH compatibility).
fn audit_failures(report: &str) -> Vec<String> {
    report.lines().filter(|l| l.contains("[fail]") && !l.contains("nistp")).map(str::to_string).collect()
}

#[test]
fn ssh_audit_rates_nothing_as_fail_on_either_side() {
    let lab = Lab::new(Backend::Sqlite);
    // Server side: the gateway as vendors see it.
    let out =
        Command::new("ssh-audit").args(["-n", "-p", &lab.port().to_string(), "127.0.0.1"]).output().expect("ssh-audit");
    let report = stdout(&out);
    assert!(report.contains("kex algorithms") || report.contains("(kex)"), "no report: {report}{}", stderr(&out));
    let fails = audit_failures(&report);
    assert!(fails.is_empty(), "ssh-audit fails the gateway's server:\n{}", fails.join("\n"));

    // Client side: the gateway's client towards a target, audited by ssh-audit posing as one.
    let port = common::sshd::free_port();
    let report_path = lab.install.scratch().join("client-audit.txt");
    let mut auditor = Command::new("ssh-audit")
        .args(["-n", "-c", "-t", "30", "-p", &port.to_string()])
        .stdout(std::fs::File::create(&report_path).expect("report file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-audit -c");
    // Wait for its listener without connecting (it audits the first client and exits).
    let end = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        assert!(Instant::now() < end, "ssh-audit -c does not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "audit-probe",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--login",
            "x",
            "--password-stdin",
            "--host-key",
            &lab.sshd.host_key,
        ],
        b"x\n",
    );
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "audit-probe", "1h");
    let _ = run(lab.client("ssh", &v).arg(format!("{}@127.0.0.1", v.login("audit-probe"))).arg("true"), b"", T);
    common::sshd::wait_timeout(&mut auditor, Duration::from_secs(40)).expect("ssh-audit -c did not finish");
    let report = std::fs::read_to_string(&report_path).expect("report");
    assert!(report.contains("kex algorithms") || report.contains("(kex)"), "no client report: {report}");
    assert!(!report.contains("ssh-rsa ") || !report.contains("(key) ssh-rsa"), "ssh-rsa offered:\n{report}");
    let fails = audit_failures(&report);
    assert!(fails.is_empty(), "ssh-audit fails the gateway's client:\n{}", fails.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Idle connections from one address do not lock out a real login from it.

/// A TCP connection from `src` to the gateway that never sends a byte.
fn idle_connection(src: IpAddr, port: u16) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::new(src, 0).into()).ok()?;
    sock.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), Duration::from_secs(2)).ok()?;
    Some(sock.into())
}

/// Connections to `port` the gateway holds (ESTABLISHED, local port `port`), from /proc.
fn established_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[1].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

#[test]
fn idle_connections_do_not_lock_out_a_real_login_from_the_same_address() {
    let lab = Lab::new(Backend::Sqlite);
    let port = lab.port();
    let v = lab.vendor();
    let w = lab.vendor();
    let local: IpAddr = [127, 0, 0, 1].into();
    let idle: Vec<TcpStream> = (0..40).filter_map(|_| idle_connection(local, port)).collect();
    assert_eq!(idle.len(), 40);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let out = run(lab.ssh(&v, &["-b", "127.0.0.1"]).arg("echo through"), b"", T);
    assert!(assert_ok("login beside 40 idle connections", &out).contains("through"));
    assert!(t0.elapsed() < Duration::from_secs(8), "the login took {:?}", t0.elapsed());
    let log = lab.gateway_log();
    assert!(log.contains("dropped the oldest connection that had not finished key exchange"), "drops not logged");

    // Floods from eight more sources: the table's global bound holds, memory stays bounded,
    // and a source with no idle connection still gets in at once.
    let rss0 = common::rss_kib(lab.gateway_pid());
    let mut flood = Vec::new();
    for last in 2..=9u8 {
        let src: IpAddr = [127, 0, 0, last].into();
        flood.extend((0..40).filter_map(|_| idle_connection(src, port)));
    }
    assert!(flood.len() >= 300, "only {} flood connections", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    let held = established_to(port);
    assert!(held <= 256 + 45, "the gateway holds {held} connections (global limit 256)");
    let grew = common::rss_kib(lab.gateway_pid()).saturating_sub(rss0);
    assert!(grew < 64 * 1024, "the gateway grew by {grew} KiB under an idle flood");
    let t0 = Instant::now();
    let out = run(lab.ssh(&w, &["-b", "127.0.0.10"]).arg("echo fresh-source"), b"", T);
    assert!(assert_ok("login from a fresh source", &out).contains("fresh-source"));
    assert!(t0.elapsed() < Duration::from_secs(8), "the login took {:?}", t0.elapsed());
    drop(idle);
    drop(flood);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. A vendor who takes 45 s at the prompts still logs in.

/// An askpass script that waits `delay` seconds before answering the password prompt, then
/// answers the code prompt with `code`.
fn slow_askpass(dir: &Path, password: &str, code: &str, delay: u64) -> PathBuf {
    let p = dir.join(format!("slow-askpass-{}.sh", common::random_hex(4)));
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n*assword*) sleep {delay}; printf '%s\\n' '{password}' ;;\n\
         *erification*) printf '%s\\n' '{code}' ;;\n*) exit 1 ;;\nesac\n"
    );
    std::fs::write(&p, script).expect("askpass");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    p
}

/// The gateway's host key fingerprint (`SHA256:…`).
fn gateway_fingerprint(lab: &Lab) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(lab.install.dir().join("ssh_host_ed25519_key"))
        .output()
        .expect("ssh-keygen");
    stdout(&out).split_whitespace().nth(1).expect("fingerprint").to_string()
}

/// Runs plink in tmux (it wants a terminal for its prompts), answers the password `delay` s
/// after the prompt appears and the code right after; returns the screen and plink's exit code.
fn plink_slow(lab: &Lab, v: &Vendor, delay: Duration) -> (String, String) {
    let session = format!("plink{}", common::random_hex(4));
    let out = lab.install.scratch().join(format!("{session}.out"));
    let cmd = format!(
        "plink -ssh -P {} -hostkey {} {}@127.0.0.1 'echo plink-ok'; echo EXIT=$? > {}; sleep 600",
        lab.port(),
        gateway_fingerprint(lab),
        v.login(TARGET),
        out.display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux");
    assert!(tmux(&["new-session", "-d", "-x", "200", "-y", "50", "-s", &session, &cmd]).status.success());
    // Whatever happens below, the tmux session goes.
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
        }
    }
    let _kill = Kill(session.clone());
    let screen = || stdout(&tmux(&["capture-pane", "-p", "-t", &session]));
    let wait_for = |what: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        while !screen().contains(what) {
            assert!(Instant::now() < end, "plink never showed {what:?}:\n{}", screen());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("Password:");
    std::thread::sleep(delay);
    tmux(&["send-keys", "-t", &session, &v.password, "Enter"]);
    wait_for("Verification code:");
    tmux(&["send-keys", "-t", &session, &v.code(), "Enter"]);
    // PuTTY asks for Return after keyboard-interactive prompts (its anti-spoofing step).
    wait_for("Press Return");
    tmux(&["send-keys", "-t", &session, "Enter"]);
    let end = Instant::now() + Duration::from_secs(30);
    while !out.exists() {
        assert!(Instant::now() < end, "plink did not finish:\n{}", screen());
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = screen();
    let code = std::fs::read_to_string(&out).unwrap_or_default();
    (text, code)
}

/// paramiko's keyboard-interactive login answered after `delay`, then `echo paramiko-ok`.
fn paramiko_slow(lab: &Lab, v: &Vendor, delay: u64) -> Output {
    let code = v.code_at(common::sshd::now() + delay as i64);
    let script = format!(
        r#"
import time, sys, paramiko
t = paramiko.Transport(("127.0.0.1", {port}))
t.start_client(timeout=30)
t.auth_timeout = 180  # paramiko's own default (30 s) would give up first
def handler(title, instructions, prompts):
    time.sleep({delay})
    return ["{pw}" if "assword" in p else "{code}" for p, echo in prompts]
t.auth_interactive("{user}", handler)
ch = t.open_session()
ch.exec_command("echo paramiko-ok")
out = ch.makefile("rb").read().decode()
print(out.strip(), "exit", ch.recv_exit_status())
t.close()
"#,
        port = lab.port(),
        pw = v.password,
        user = v.login(TARGET),
    );
    run(Command::new("python3").arg("-c").arg(script), b"", Duration::from_secs(delay + 60))
}

#[test]
fn vendors_who_take_45_seconds_at_the_prompts_still_log_in() {
    const DELAY: u64 = 45;
    let lab = Lab::new(Backend::Sqlite);
    let (a, b, c) = (lab.vendor(), lab.vendor(), lab.vendor());
    std::thread::scope(|s| {
        let openssh = s.spawn(|| {
            let askpass = slow_askpass(
                &lab.install.scratch(),
                &a.password,
                &a.code_at(common::sshd::now() + DELAY as i64),
                DELAY,
            );
            let mut cmd = lab.ssh(&a, &[]);
            cmd.env("SSH_ASKPASS", &askpass).arg("echo slow-ok");
            run(&mut cmd, b"", Duration::from_secs(DELAY + 60))
        });
        let plink = s.spawn(|| plink_slow(&lab, &b, Duration::from_secs(DELAY)));
        let paramiko = s.spawn(|| paramiko_slow(&lab, &c, DELAY));
        let out = openssh.join().expect("openssh thread");
        assert!(assert_ok("OpenSSH answered after 45 s", &out).contains("slow-ok"));
        let (screen, code) = plink.join().expect("plink thread");
        assert!(screen.contains("plink-ok") && code.contains("EXIT=0"), "plink: {code}\n{screen}");
        let out = paramiko.join().expect("paramiko thread");
        assert!(assert_ok("paramiko answered after 45 s", &out).contains("paramiko-ok exit 0"));
    });
    lab.finish();
}

#[test]
fn a_login_answered_after_the_login_timeout_is_cleanly_refused() {
    let lab = Lab::with(Backend::Sqlite, "", &[("PENSTOCK_SSH_LOGIN_TIMEOUT_SECS", "6")]);
    let v = lab.vendor();
    let askpass = slow_askpass(&lab.install.scratch(), &v.password, &v.code_at(common::sshd::now() + 10), 10);
    let t0 = Instant::now();
    let mut cmd = lab.ssh(&v, &[]);
    cmd.env("SSH_ASKPASS", &askpass).arg("echo too-late");
    let out = run(&mut cmd, b"", T);
    assert!(!out.status.success(), "a login after the deadline got in: {}", stdout(&out));
    assert!(!stdout(&out).contains("too-late"));
    assert!(t0.elapsed() < Duration::from_secs(30));
    let err = stderr(&out);
    assert!(!err.contains("type 80"), "a keepalive reached the client before login: {err}");
    assert!(lab.gateway_log().contains("login timed out"), "the timeout was not logged");
    assert!(lab.sessions_of(&v.name).is_empty());
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. What a vendor pipes into a command is part of the record.

#[test]
fn piped_standard_input_is_recorded_as_text_and_byte_exact() {
    let lab = Lab::new(Backend::Sqlite);
    let dir = lab.remote_dir();
    // A script piped into `sh`: its text is in the recording.
    let v = lab.vendor();
    let script = format!("echo step-one\ntouch {}/ran-by-script\necho write_register 40001 17\n", dir.display());
    let out = run(lab.ssh(&v, &[]).arg("sh"), script.as_bytes(), T);
    assert!(assert_ok("ssh … sh < script", &out).contains("write_register 40001 17"));
    assert!(dir.join("ran-by-script").exists());
    let s = lab.ended_session(&v.name);
    let cast = parse_cast(Path::new(s["recording_path"].as_str().expect("path")));
    let typed = cast.text("i");
    assert!(
        typed.contains("touch ") && typed.contains("ran-by-script") && typed.contains("echo step-one"),
        "input not recorded: {typed:?}"
    );

    // 50 MiB of binary piped into `cat > f`: byte-exact in the input side file.
    let w = lab.vendor();
    let local = lab.install.scratch().join("fw.bin");
    let sha = random_file(&local, 50 * 1024 * 1024);
    let remote = dir.join("fw.bin");
    let input = std::fs::read(&local).expect("read");
    let out = run(lab.ssh(&w, &[]).arg(format!("cat > {}", remote.display())), &input, Duration::from_secs(180));
    assert_ok("ssh … 'cat > f' < 50 MiB", &out);
    assert_eq!(sha256_file(&remote), sha, "the target got other bytes");
    let s = lab.ended_session(&w.name);
    let cast_path = PathBuf::from(s["recording_path"].as_str().expect("path"));
    let side = cast_path.with_extension("in");
    assert_eq!(sha256_file(&side), sha, "the input side file is not byte-exact");
    let cast = parse_cast(&cast_path);
    let marker = cast.text("m");
    assert!(
        marker.contains(&format!("binary input: {} bytes in", 50 * 1024 * 1024)) && marker.contains(&sha),
        "{marker}"
    );

    // `audit verify` catches an edit to the side file.
    assert!(lab.install.ok(&["audit", "verify"]).starts_with("audit chain intact:"));
    flip_byte(&side, 1000);
    let out = lab.install.run(&["audit", "verify"]);
    assert!(!out.status.success(), "an edited input side file passed verify");
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("fw") || stderr(&out).contains(".in"),
        "{}",
        stderr(&out)
    );
    flip_byte(&side, 1000);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. A long-lived connection keeps opening sessions.

#[test]
fn one_controlmaster_connection_runs_hundreds_of_sessions_and_16_at_once() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let sock = lab.install.scratch().join("cm.sock");
    // `-M` and `-S` override the harness's `-o ControlMaster=no -o ControlPath=none`.
    let sock_arg = sock.display().to_string();
    let mut master = lab.ssh(&v, &["-M", "-S", &sock_arg, "-N"]);
    let _master = Running::spawn(&mut master);
    let end = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < end, "the ControlMaster did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mux = |cmd: &str| {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-o", "ControlMaster=no", "-o", &format!("ControlPath={}", sock.display())]);
        c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]);
        c.arg(lab.dest(&v)).arg(cmd);
        c
    };
    for i in 0..200 {
        let out = run(&mut mux(&format!("echo s-{i}")), b"", T);
        assert_eq!(assert_ok(&format!("session {i}"), &out).trim(), format!("s-{i}"));
    }
    // 16 at once; the 17th is refused with a clear message; one more once any has ended.
    let holders: Vec<Running> = (0..16).map(|i| Running::spawn(&mut mux(&format!("echo held-{i}; sleep 8")))).collect();
    let end = Instant::now() + Duration::from_secs(20);
    while lab.sessions(true).len() < 16 {
        assert!(Instant::now() < end, "only {} live sessions", lab.sessions(true).len());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&mut mux("echo seventeenth"), b"", T);
    assert!(!out.status.success(), "a 17th concurrent session was allowed");
    let err = stderr(&out);
    assert!(err.contains("16 open sessions") && err.contains("limit"), "unclear refusal: {err}");
    for mut h in holders {
        let out = h.wait(Duration::from_secs(30)).expect("held session ended");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&mut mux("echo after"), b"", T);
    assert_eq!(assert_ok("a session after the 16 ended", &out).trim(), "after");
    assert_eq!(lab.sessions_of(&v.name).len(), 217, "every session is on record");
    drop(_master);
    lab.finish();
}
