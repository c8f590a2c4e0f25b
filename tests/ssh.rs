//! End-to-end tests of the SSH gateway with real parts: Debian's `sshd` as the target (its own
//! config and host key, on a free loopback port), the real `ssh`, `scp` and `sftp` clients
//! answering the gateway's prompts through `SSH_ASKPASS`, and the real `penstock serve`.
//!
//! Each test builds its own [`Lab`] (installation, sshd, gateway) and ends with
//! [`Lab::finish`]: every recording matches the SHA-256 stored in its session row and parses as
//! asciicast v2, `audit verify` reports an intact chain, and neither the target password nor any
//! vendor password appears in the gateway log, a recording, the audit export, the database or
//! anything penstock printed.
//!
//! The server uses the real clock and accepts a TOTP step once per user, so every login uses a
//! fresh vendor. The tests must run as root (the target account `pstarget` is created locally).

#[macro_use]
mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sshd::{
    asciinema_cat, die_with_parent, free_port, parse_cast, random_file, run, sha256_file, wait_timeout, Answers, Lab,
    Running, Sshd, TARGET, TARGET_LOGIN, TARGET_PASSWORD,
};
use common::{assert_ok, random_hex, ssh_fingerprint, ssh_keygen, stderr, stdout, Backend};
use serde_json::Value;

backend_tests! {
    fn shell_with_pty_is_recorded;
    fn exec_passes_exit_status_and_stderr;
    fn scp_and_sftp_transfers_are_exact_and_logged;
    fn logins_and_refusals;
    fn host_key_mismatch_is_refused_and_audited;
    fn target_refusing_the_request_ends_the_session_as_error;
    fn forwarding_is_refused_and_audited;
    fn kill_revoke_and_expiry_end_live_sessions;
    fn recording_failure_refuses_the_session;
}

const T: Duration = Duration::from_secs(30);

/// Panics unless `out` failed; returns its stderr.
#[track_caller]
fn assert_refused(what: &str, out: &std::process::Output) -> String {
    assert!(!out.status.success(), "{what}: expected failure\nstdout:\n{}\nstderr:\n{}", stdout(out), stderr(out));
    stderr(out)
}

/// The ended session of `user`, checked to have `reason`, with its parsed recording.
#[track_caller]
fn ended(lab: &Lab, user: &str, reason: &str) -> (Value, common::sshd::Cast) {
    let s = lab.ended_session(user);
    assert_eq!(s["end_reason"], reason, "{s}");
    assert_eq!(s["target"], TARGET, "{s}");
    let path = s["recording_path"].as_str().unwrap_or_else(|| panic!("no recording: {s}"));
    let rel = Path::new(path).strip_prefix(lab.install.dir().join("recordings")).expect("under recordings/");
    // recordings/YYYY/MM/DD/<session-id>.cast
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    assert_eq!(parts.len(), 4, "{path}");
    assert_eq!(parts[3], format!("{}.cast", s["id"].as_str().unwrap_or_default()), "{path}");
    let cast = parse_cast(Path::new(path));
    (s, cast)
}

// ---------------------------------------------------------------------------------------------
// 1. Shell with a PTY

/// `ssh -tt` with commands on stdin: they run on the target under a PTY, the output comes back,
/// and the recording is asciicast v2 (header with TERM, increasing times, input and output
/// events) that `asciinema cat` plays.
fn shell_with_pty_is_recorded(b: Backend) {
    let lab = Lab::new(b);
    let v = lab.vendor();
    let out = run(&mut lab.ssh(&v, &["-tt"]), b"stty size; echo MARK-$((6*7)); exit 0\n", T);
    let text = assert_ok("shell", &out);
    assert!(text.contains("MARK-42"), "{text}");

    let (s, cast) = ended(&lab, &v.name, "closed");
    assert!(s["bytes_up"].as_i64().unwrap_or(0) > 0, "{s}");
    assert!(s["bytes_down"].as_i64().unwrap_or(0) > 0, "{s}");
    let h = &cast.header;
    assert_eq!(h["env"]["TERM"], "xterm-256color", "{h}");
    assert!(h.get("command").is_none_or(Value::is_null), "a shell has no command: {h}");
    assert_eq!(h["title"], format!("{} → {TARGET}", v.name), "{h}");
    assert!(cast.text("o").contains("MARK-42"), "{:?}", cast.events);
    assert!(cast.text("i").contains("stty size"), "keystrokes of a PTY session are recorded: {:?}", cast.events);
    assert!(cast.events.iter().any(|e| e.1 == "o" && e.0 > 0.0), "{:?}", cast.events);
    let played = asciinema_cat(Path::new(s["recording_path"].as_str().unwrap_or_default()));
    assert!(played.contains("MARK-42"), "asciinema cat:\n{played}");

    let id = s["id"].as_str().unwrap_or_default();
    let audit = lab.audit();
    assert!(audit.iter().any(|r| r["kind"] == "session.started" && r["details"]["session"] == id), "{audit:?}");
    let ended_ev = audit
        .iter()
        .find(|r| r["kind"] == "session.ended" && r["details"]["session"] == id)
        .unwrap_or_else(|| panic!("no session.ended: {audit:?}"));
    assert_eq!(ended_ev["details"]["recording_sha256"], s["recording_sha256"]);
    lab.finish();
}

/// A real terminal (tmux): the PTY has the client's size, a resize reaches the target (and is
/// recorded as an `r` event), and the recording's header has the initial size.
#[test]
fn pty_size_and_resize_reach_the_target() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let scratch = lab.install.scratch();
    let ssh = lab.ssh(&v, &["-t"]);
    let q = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut line = String::from("env -i");
    for (k, val) in ssh.get_envs() {
        if let Some(val) = val {
            line.push_str(&format!(" {}={}", k.to_string_lossy(), q(val)));
        }
    }
    line.push(' ');
    line.push_str(&q(ssh.get_program()));
    for a in ssh.get_args() {
        line.push(' ');
        line.push_str(&q(a));
    }
    let rc = scratch.join("ssh.rc");
    std::fs::write(scratch.join("run.sh"), format!("{line}\necho $? > '{}'\n", rc.display())).expect("run.sh");
    let tmux = Tmux { sock: scratch.join("tmux.sock") };
    tmux.ok(&["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "100", "-y", "30"], Some("sh run.sh"));

    // Keys typed once the session is live wait in the PTY until the shell reads them.
    lab.live_session(&v.name);
    tmux.ok(&["send-keys", "-t", "t", "stty size; echo MARK-$((6*7))", "Enter"], None);
    tmux.wait_for("MARK-42", |screen| screen.contains("30 100"));
    tmux.ok(&["resize-window", "-t", "t", "-x", "120", "-y", "40"], None);
    std::thread::sleep(Duration::from_millis(300));
    tmux.ok(&["send-keys", "-t", "t", "clear; stty size", "Enter"], None);
    tmux.wait_for("40 120", |_| true);
    tmux.ok(&["send-keys", "-t", "t", "exit", "Enter"], None);
    let end = Instant::now() + T;
    while !rc.exists() {
        assert!(Instant::now() < end, "ssh did not end; screen:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&rc).unwrap_or_default().trim(), "0");

    let (_, cast) = ended(&lab, &v.name, "closed");
    assert_eq!(cast.header["width"], 100, "{}", cast.header);
    assert_eq!(cast.header["height"], 30, "{}", cast.header);
    assert_eq!(cast.header["env"]["TERM"], "xterm-256color", "{}", cast.header);
    let resizes: Vec<&str> = cast.events.iter().filter(|e| e.1 == "r").map(|e| e.2.as_str()).collect();
    assert!(resizes.contains(&"120x40"), "{resizes:?}");
    let o = cast.text("o");
    assert!(o.contains("30 100") && o.contains("40 120") && o.contains("MARK-42"), "{o}");
    drop(tmux);
    lab.finish();
}

/// A private tmux server, killed when dropped.
struct Tmux {
    sock: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock).env("TERM", "xterm-256color");
        c.current_dir(self.sock.parent().unwrap_or(Path::new("/")));
        c
    }

    #[track_caller]
    fn ok(&self, args: &[&str], shell_cmd: Option<&str>) {
        let mut c = self.cmd();
        c.args(args);
        if let Some(s) = shell_cmd {
            c.arg(s);
        }
        let out = run(&mut c, b"", T);
        assert_ok(&format!("tmux {args:?}"), &out);
    }

    fn screen(&self) -> String {
        let out = run(self.cmd().args(["capture-pane", "-p", "-t", "t"]), b"", T);
        stdout(&out)
    }

    #[track_caller]
    fn wait_for(&self, needle: &str, also: impl Fn(&str) -> bool) {
        let end = Instant::now() + T;
        loop {
            let s = self.screen();
            if s.contains(needle) && also(&s) {
                return;
            }
            assert!(Instant::now() < end, "{needle:?} not on screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Exec

/// Exit statuses (3 and 0) and stderr come back from the target; the exec recording has the
/// command in its header and the output (stdout and stderr) as events, and no input.
fn exec_passes_exit_status_and_stderr(b: Backend) {
    let lab = Lab::new(b);
    let v = lab.vendor();
    let cmd = "echo out-$((1+1)); echo err-$((2+2)) >&2; exit 3";
    let out = run(lab.ssh(&v, &[]).arg(cmd), b"", T);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "out-2\n");
    assert!(stderr(&out).contains("err-4"), "{}", stderr(&out));
    let (s, cast) = ended(&lab, &v.name, "closed");
    assert_eq!(cast.header["command"], cmd, "{}", cast.header);
    assert!(cast.header.get("env").is_none_or(Value::is_null), "no PTY, no TERM: {}", cast.header);
    let o = cast.text("o");
    assert!(o.contains("out-2") && o.contains("err-4"), "{o}");
    assert!(cast.text("i").is_empty(), "exec input is not recorded: {:?}", cast.events);
    assert_eq!(s["bytes_down"], 12, "{s}");
    let side = Path::new(s["recording_path"].as_str().unwrap_or_default()).with_extension("out");
    assert!(!side.exists(), "text output stays in the cast, no side file: {}", side.display());

    // Output that is valid UTF-8 but all control bytes goes to the side file after its first
    // chunk, instead of costing six bytes per byte in the cast.
    let z = lab.vendor();
    let out = run(lab.ssh(&z, &[]).arg("head -c 300000 /dev/zero"), b"", T);
    assert_eq!(out.stdout.len(), 300_000, "{}", stderr(&out));
    let (s, cast) = ended(&lab, &z.name, "closed");
    let side = std::fs::read(Path::new(s["recording_path"].as_str().unwrap_or_default()).with_extension("out"))
        .expect("side file for NUL output");
    assert!(side.len() >= 300_000 - 64 * 1024 && side.iter().all(|b| *b == 0), "{} bytes", side.len());
    let o = cast.text("o");
    let in_cast = o.chars().filter(|c| *c == '\0').count();
    assert_eq!(in_cast + side.len(), 300_000, "every byte is in the cast or the side file");
    assert!(o.contains(&format!("binary output: {} bytes in", side.len())), "{o:.300}");

    let w = lab.vendor();
    let out = run(lab.ssh(&w, &[]).args(["whoami;", "exit", "0"]), b"", T);
    assert_eq!(assert_ok("exec exit 0", &out), format!("{TARGET_LOGIN}\n"));
    ended(&lab, &w.name, "closed");

    // stdin reaches the command.
    let x = lab.vendor();
    let out = run(lab.ssh(&x, &[]).arg("tr a-z A-Z"), b"hello gateway\n", T);
    assert_eq!(assert_ok("exec with stdin", &out), "HELLO GATEWAY\n");
    let (s, _) = ended(&lab, &x.name, "closed");
    assert_eq!(s["bytes_up"], 14, "{s}");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Bulk data

/// Runs `cmd` with stdin from `input` and stdout to `output`; returns its stderr output.
fn run_files(cmd: &mut Command, input: &Path, output: &Path, timeout: Duration) -> std::process::Output {
    cmd.stdin(std::fs::File::open(input).expect("input"))
        .stdout(std::fs::File::create(output).expect("output"))
        .stderr(Stdio::piped());
    let mut child = die_with_parent(cmd).spawn().expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        panic!("{cmd:?} did not finish within {timeout:?}");
    };
    std::process::Output { status, stdout: Vec::new(), stderr: reader.join().unwrap_or_default() }
}

/// 50 MiB through `cat` both ways at once, then up only and down only: byte-exact, counted in
/// the session rows.
#[test]
fn fifty_mib_each_way_is_byte_exact() {
    const N: usize = 50 * 1024 * 1024;
    let lab = Lab::new(Backend::Sqlite);
    let scratch = lab.install.scratch();
    let input = scratch.join("blob.in");
    let hash = random_file(&input, N);
    let started = Instant::now();

    let v = lab.vendor();
    let echoed = scratch.join("blob.echo");
    let out = run_files(lab.ssh(&v, &[]).arg("cat"), &input, &echoed, Duration::from_secs(300));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&echoed), hash, "data through `cat` changed");
    let (s, _) = ended(&lab, &v.name, "closed");
    assert_eq!(s["bytes_up"].as_u64(), Some(N as u64), "{s}");
    assert_eq!(s["bytes_down"].as_u64(), Some(N as u64), "{s}");
    eprintln!("50 MiB each way at once: {:?}", started.elapsed());

    let dir = lab.remote_dir();
    let remote = dir.join("blob");
    let up = lab.vendor();
    let out = run_files(
        lab.ssh(&up, &[]).arg(format!("cat > {}", remote.display())),
        &input,
        &scratch.join("up.out"),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&remote), hash, "uploaded file differs");
    let (s, _) = ended(&lab, &up.name, "closed");
    assert_eq!(s["bytes_up"].as_u64(), Some(N as u64), "{s}");

    let down = lab.vendor();
    let fetched = scratch.join("blob.down");
    let out = run_files(
        lab.ssh(&down, &[]).arg(format!("cat {}", remote.display())),
        Path::new("/dev/null"),
        &fetched,
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256_file(&fetched), hash, "downloaded file differs");
    let (s, cast) = ended(&lab, &down.name, "closed");
    assert_eq!(s["bytes_down"].as_u64(), Some(N as u64), "{s}");
    // Binary output without a terminal is recorded byte-exact in a side file that the cast
    // names with its size and hash.
    let side = Path::new(s["recording_path"].as_str().unwrap_or_default()).with_extension("out");
    assert_eq!(sha256_file(&side), hash, "side file {} differs from what was sent", side.display());
    let o = cast.text("o");
    let name = side.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    assert!(o.contains(&format!("binary output: {N} bytes in {name}, sha256 {hash}")), "{o:.400}");
    assert!(o.len() < 4096, "binary output stays out of the cast: {} bytes", o.len());
    eprintln!("all three 50 MiB transfers: {:?}", started.elapsed());
    lab.finish();
}

/// A target that answers every chunk of input with four times as much output, while the vendor
/// pushes 16 MiB at once: the target spends its time blocked on output, so the gateway's backlog
/// towards it stays high and the vendor's window is held back in tiny grants. The stream must
/// still finish (no deadlock between the vendor's and the target's SSH connections, however many
/// tiny packets the vendor sends meanwhile) with every byte accounted for.
#[test]
fn amplifying_target_does_not_deadlock_a_bulk_stream() {
    const N: usize = 16 * 1024 * 1024;
    let lab = Lab::new(Backend::Sqlite);
    let scratch = lab.install.scratch();
    let input = scratch.join("amp.in");
    random_file(&input, N);
    let amplify = "python3 -c 'import sys,time\n\
        i,o=sys.stdin.buffer,sys.stdout.buffer\n\
        while True:\n b=i.read1(65536)\n if not b: break\n o.write(b*4); o.flush(); time.sleep(0.004)'";
    let v = lab.vendor();
    let output = scratch.join("amp.out");
    let out = run_files(lab.ssh(&v, &[]).arg(amplify), &input, &output, Duration::from_secs(180));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&output).map(|m| m.len()).ok(), Some(4 * N as u64));
    let (s, _) = ended(&lab, &v.name, "closed");
    assert_eq!(s["bytes_up"].as_u64(), Some(N as u64), "{s}");
    assert_eq!(s["bytes_down"].as_u64(), Some(4 * N as u64), "{s}");
    lab.finish();
}

/// `audit verify` re-hashes every recording against the hash its `session.ended` event holds,
/// and each binary side file against the size and hash its cast names: an edited, truncated or
/// missing file is named; restored, all is intact again.
#[test]
fn audit_verify_detects_altered_recordings() {
    let lab = Lab::new(Backend::Sqlite);
    let t = lab.vendor();
    assert_ok("text exec", &run(lab.ssh(&t, &[]).arg("echo evidence"), b"", T));
    let (s, _) = ended(&lab, &t.name, "closed");
    let cast = PathBuf::from(s["recording_path"].as_str().expect("recording"));
    let b = lab.vendor();
    assert_ok("binary exec", &run(lab.ssh(&b, &[]).arg("printf 'a\\377b\\376'; head -c 5000 /dev/urandom"), b"", T));
    let (s, _) = ended(&lab, &b.name, "closed");
    let bin_cast = PathBuf::from(s["recording_path"].as_str().expect("recording"));
    let side = bin_cast.with_extension("out");
    assert!(side.exists(), "no side file for binary output");

    let out = lab.install.ok(&["audit", "verify"]);
    assert!(out.contains("recordings intact: 3 files"), "{out}");

    let check_broken = |path: &Path, mangle: &dyn Fn(&Path), expect: &str| {
        let saved = std::fs::read(path).expect("read");
        mangle(path);
        let msg = lab.install.fails(&["audit", "verify"]);
        assert!(msg.contains(&path.display().to_string()) && msg.contains(expect), "{msg}");
        assert!(msg.contains("do not match the audit chain"), "{msg}");
        std::fs::write(path, &saved).expect("restore");
    };
    let append = |p: &Path| {
        let mut v = std::fs::read(p).expect("read");
        v.extend_from_slice(b"[9.9,\"o\",\"added later\"]\n");
        std::fs::write(p, v).expect("write");
    };
    let truncate = |p: &Path| {
        let v = std::fs::read(p).expect("read");
        std::fs::write(p, &v[..v.len() - 1]).expect("write");
    };
    let flip = |p: &Path| {
        let mut v = std::fs::read(p).expect("read");
        v[10] ^= 1;
        std::fs::write(p, v).expect("write");
    };
    check_broken(&cast, &append, "was altered");
    check_broken(&cast, &truncate, "was altered");
    check_broken(&side, &flip, "was altered");
    check_broken(&side, &truncate, "was altered");
    check_broken(&cast, &|p| std::fs::remove_file(p).expect("remove"), "cannot be read");

    let out = lab.install.ok(&["audit", "verify"]);
    assert!(out.contains("recordings intact: 3 files"), "{out}");
    let out = lab.install.ok(&["audit", "verify", "--chain-only"]);
    assert!(!out.contains("recordings"), "{out}");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. scp and sftp

/// One expected transfer: (direction, path, size, sha256).
type Xfer = (String, String, i64, String);

/// scp (sftp mode and `-O` legacy) up and down and sftp put/get: the files arrive intact, and
/// each session's transfers (table and audit) name path, size, direction and SHA-256.
fn scp_and_sftp_transfers_are_exact_and_logged(b: Backend) {
    let lab = Lab::new(b);
    let scratch = lab.install.scratch();
    let dir = lab.remote_dir();
    let d = |name: &str| dir.join(name).display().to_string();
    let local = |name: &str| scratch.join(name);
    let mut expected: Vec<(String, Vec<Xfer>)> = Vec::new();
    let x = |dir: &str, path: String, size: usize, sha: &str| (dir.to_string(), path, size as i64, sha.to_string());

    // scp upload, sftp protocol (the default).
    let v = lab.vendor();
    let h = random_file(&local("up1.bin"), 300_000);
    let out =
        run(lab.client("scp", &v).arg(local("up1.bin")).arg(format!("{}:{}", lab.dest(&v), d("up1.bin"))), b"", T);
    assert_ok("scp upload", &out);
    assert_eq!(sha256_file(&dir.join("up1.bin")), h);
    expected.push((v.name.clone(), vec![x("upload", d("up1.bin"), 300_000, &h)]));

    // scp download, sftp protocol.
    let v = lab.vendor();
    let h = random_file(&dir.join("src1.bin"), 200_001);
    let out =
        run(lab.client("scp", &v).arg(format!("{}:{}", lab.dest(&v), d("src1.bin"))).arg(local("down1.bin")), b"", T);
    assert_ok("scp download", &out);
    assert_eq!(sha256_file(&local("down1.bin")), h);
    expected.push((v.name.clone(), vec![x("download", d("src1.bin"), 200_001, &h)]));

    // scp -O upload (legacy scp protocol: an exec of `scp -t`).
    let v = lab.vendor();
    let h = random_file(&local("up2.bin"), 150_000);
    let out = run(
        lab.client("scp", &v).arg("-O").arg(local("up2.bin")).arg(format!("{}:{}", lab.dest(&v), d("up2.bin"))),
        b"",
        T,
    );
    assert_ok("scp -O upload", &out);
    assert_eq!(sha256_file(&dir.join("up2.bin")), h);
    expected.push((v.name.clone(), vec![x("upload", d("up2.bin"), 150_000, &h)]));

    // scp -O download (`scp -f`).
    let v = lab.vendor();
    let h = random_file(&dir.join("src2.bin"), 99_999);
    let out = run(
        lab.client("scp", &v).arg("-O").arg(format!("{}:{}", lab.dest(&v), d("src2.bin"))).arg(local("down2.bin")),
        b"",
        T,
    );
    assert_ok("scp -O download", &out);
    assert_eq!(sha256_file(&local("down2.bin")), h);
    expected.push((v.name.clone(), vec![x("download", d("src2.bin"), 99_999, &h)]));

    // sftp put and get in one session.
    let v = lab.vendor();
    let hu = random_file(&local("up3.bin"), 70_000);
    let hd = random_file(&dir.join("src3.bin"), 1_234_567);
    let batch = local("batch.sftp");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            local("up3.bin").display(),
            d("up3.bin"),
            d("src3.bin"),
            local("down3.bin").display()
        ),
    )
    .expect("batch");
    let out = run(lab.client("sftp", &v).arg("-b").arg(&batch).arg(lab.dest(&v)), b"", T);
    assert_ok("sftp put/get", &out);
    assert_eq!(sha256_file(&dir.join("up3.bin")), hu);
    assert_eq!(sha256_file(&local("down3.bin")), hd);
    expected.push((
        v.name.clone(),
        vec![x("upload", d("up3.bin"), 70_000, &hu), x("download", d("src3.bin"), 1_234_567, &hd)],
    ));

    // Each session lists exactly its files, in the table and in the audit chain (once the
    // session has ended: transfers are stored by the recording's writer, which may still be
    // busy when the client exits).
    let sessions: Vec<_> = expected.iter().map(|(user, _)| ended(&lab, user, "closed")).collect();
    let rows = transfers(&lab);
    let audit = lab.audit_events("session.file_transferred");
    for ((user, want), (s, cast)) in expected.iter().zip(sessions) {
        let id = s["id"].as_str().unwrap_or_default().to_string();
        let mut got: Vec<Xfer> = rows.iter().filter(|r| r.0 == id).map(|r| r.1.clone()).collect();
        let mut want = want.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "transfers of session {id} ({user})");
        let mut in_audit: Vec<Xfer> = audit
            .iter()
            .filter(|r| r["details"]["session"] == id.as_str())
            .map(|r| {
                let dt = &r["details"];
                (
                    dt["direction"].as_str().unwrap_or_default().to_string(),
                    dt["path"].as_str().unwrap_or_default().to_string(),
                    dt["size"].as_i64().unwrap_or(-1),
                    dt["sha256"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        in_audit.sort();
        assert_eq!(in_audit, want, "audited transfers of session {id} ({user})");
        // The recording notes each transfer.
        let o = cast.text("o");
        for (dir, path, size, sha) in &want {
            let note = format!("[penstock] {dir} {path} ({size} bytes, sha256 {sha})");
            assert!(o.contains(&note), "{note:?} not in recording of {id}: {o:?}");
        }
    }
    lab.finish();
}

/// (session id, transfer) rows of `session_transfers`, read through the library.
fn transfers(lab: &Lab) -> Vec<(String, Xfer)> {
    use sqlx::Row;
    common::block_on(async {
        let store = lab.install.store().await;
        let rows = sqlx::query("SELECT session_id, direction, path, size, sha256 FROM session_transfers")
            .fetch_all(store.pool())
            .await
            .expect("session_transfers");
        let out = rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    (r.get::<String, _>(1), r.get::<String, _>(2), r.get::<i64, _>(3), r.get::<String, _>(4)),
                )
            })
            .collect();
        store.close().await;
        out
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Logins

/// Password + TOTP and key + TOTP work (with the right prompts); a wrong code, a reused code
/// and a wrong password are refused; without a grant, for an unknown target or without a target
/// the vendor is told why; `VENDOR:TARGET` and `-l VENDOR@TARGET` work; a target whose vaulted
/// credential is a private key works.
fn logins_and_refusals(b: Backend) {
    let lab = Lab::new(b);
    let scratch = lab.install.scratch();

    // Password + TOTP, asked in one keyboard-interactive round.
    let v = lab.vendor();
    let n = lab.clients();
    let out = run(lab.ssh(&v, &[]).arg("echo ok-password"), b"", T);
    assert_eq!(assert_ok("password + TOTP", &out), "ok-password\n");
    let prompts = lab.prompts(n);
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert!(prompts[0].ends_with("Password: ") && prompts[1].ends_with("Verification code: "), "{prompts:?}");

    // Key + TOTP: only the code is asked.
    let k = lab.vendor();
    let key = scratch.join("vendor_key");
    let line = ssh_keygen(&key, "vendor-key");
    lab.install.ok(&["user", "add-key", &k.name, "--key", &line]);
    let n = lab.clients();
    let mut c = lab.client_with("ssh", &Answers { password: "not-asked".into(), code: k.code() }, Some(&key));
    let out = run(c.arg(lab.dest(&k)).arg("echo ok-key"), b"", T);
    assert_eq!(assert_ok("key + TOTP", &out), "ok-key\n");
    let prompts = lab.prompts(n);
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    assert!(prompts[0].ends_with("Verification code: "), "{prompts:?}");
    let logins = lab.audit_events("login.succeeded");
    let method = |user: &str| {
        logins.iter().find(|r| r["details"]["user"] == user).map(|r| r["details"]["method"].clone()).unwrap_or_default()
    };
    assert_eq!(method(&k.name), "publickey+totp");
    assert_eq!(method(&v.name), "password+totp");

    // A wrong code is refused.
    let w = lab.vendor();
    let mut c = lab.client_with("ssh", &Answers { password: w.password.clone(), code: w.wrong_code() }, None);
    let err = assert_refused("wrong code", &run(c.arg(lab.dest(&w)).arg("echo should-not-run"), b"", T));
    assert!(err.contains("Permission denied"), "{err}");

    // A code works once: the same code again is refused.
    let r = lab.vendor();
    let answers = Answers { password: r.password.clone(), code: r.code() };
    let out = run(lab.client_with("ssh", &answers, None).arg(lab.dest(&r)).arg("echo first"), b"", T);
    assert_eq!(assert_ok("first use of a code", &out), "first\n");
    let out = run(lab.client_with("ssh", &answers, None).arg(lab.dest(&r)).arg("echo replayed"), b"", T);
    let err = assert_refused("reused code", &out);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!stdout(&out).contains("replayed"));
    let failures = lab.audit_events("login.failed");
    assert!(
        failures.iter().any(|f| f["details"]["user"] == r.name.as_str()
            && f["details"]["reason"].as_str().is_some_and(|s| s.contains("reused"))),
        "{failures:?}"
    );

    // A wrong password is refused.
    let p = lab.vendor();
    let answers = Answers { password: format!("{}-wrong", p.password), code: p.code() };
    let err = assert_refused(
        "wrong password",
        &run(lab.client_with("ssh", &answers, None).arg(lab.dest(&p)).arg("echo no"), b"", T),
    );
    assert!(err.contains("Permission denied"), "{err}");

    // Logged in, but no grant.
    let g = lab.vendor_without_grant();
    let out = run(lab.ssh(&g, &[]).arg("echo should-not-run"), b"", T);
    let err = assert_refused("no grant", &out);
    assert!(err.contains("no active grant for plc-line3"), "{err}");
    assert!(!stdout(&out).contains("should-not-run"));

    // Unknown target.
    let u = lab.vendor();
    let out = run(lab.client("ssh", &u).arg(format!("{}@127.0.0.1", u.login("plc-nowhere"))).arg("true"), b"", T);
    let err = assert_refused("unknown target", &out);
    assert!(err.contains("unknown target plc-nowhere"), "{err}");

    // No target at all.
    let z = lab.vendor();
    let out = run(lab.client("ssh", &z).arg(format!("{}@127.0.0.1", z.name)).arg("true"), b"", T);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown command true") && stderr(&out).contains("USER@TARGET@gateway"),
        "{}",
        stderr(&out)
    );

    let refusals = lab.audit_events("session.refused");
    let reason = |user: &str| {
        refusals
            .iter()
            .find(|r| r["details"]["user"] == user)
            .map(|r| r["details"]["reason"].clone())
            .unwrap_or_default()
    };
    assert_eq!(reason(&g.name), "no active grant");
    assert_eq!(reason(&u.name), "unknown target");

    // VENDOR:TARGET and -l VENDOR@TARGET.
    let c1 = lab.vendor();
    let out = run(lab.client("ssh", &c1).arg(format!("{}:{TARGET}@127.0.0.1", c1.name)).arg("echo form-colon"), b"", T);
    assert_eq!(assert_ok("VENDOR:TARGET", &out), "form-colon\n");
    let c2 = lab.vendor();
    let out = run(lab.client("ssh", &c2).args(["-l", &c2.login(TARGET), "127.0.0.1", "echo form-l"]), b"", T);
    assert_eq!(assert_ok("-l VENDOR@TARGET", &out), "form-l\n");

    // A target whose vaulted credential is a private key.
    let tkey = scratch.join("target_key");
    let tpub = ssh_keygen(&tkey, "penstock-to-target");
    lab.sshd.authorize(&tpub);
    lab.install.ok(&[
        "target",
        "add",
        "plc-keyed",
        "--address",
        &lab.sshd.address(),
        "--login",
        TARGET_LOGIN,
        "--key-file",
        &tkey.display().to_string(),
        "--host-key",
        &lab.sshd.host_key,
    ]);
    let kt = lab.vendor();
    lab.grant(&kt.name, "plc-keyed", "1h");
    let out = run(lab.client("ssh", &kt).arg(format!("{}@127.0.0.1", kt.login("plc-keyed"))).arg("whoami"), b"", T);
    assert_eq!(assert_ok("key credential", &out), format!("{TARGET_LOGIN}\n"));
    assert!(lab.sshd.log().contains("Accepted publickey for pstarget"), "{}", lab.sshd.log());
    // The private part of the vaulted key (the base64 lines after the header and public key)
    // is nowhere in the installation.
    let key_text = std::fs::read_to_string(&tkey).expect("target key");
    let body: Vec<&str> = key_text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 3, "{key_text}");
    for l in &body[2..body.len() - 1] {
        let found = lab.install.find_secret(l.as_bytes());
        assert!(found.is_empty(), "target private key found in: {found:?}");
    }

    // Sessions exist exactly for the successful logins.
    for who in [&v, &k, &r, &c1, &c2] {
        assert_eq!(lab.sessions_of(&who.name).len(), 1, "{}", who.name);
        ended(&lab, &who.name, "closed");
    }
    for who in [&w, &p, &g, &u, &z] {
        assert!(lab.sessions_of(&who.name).is_empty(), "{}", who.name);
    }
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. Target identity and upstream failures

/// A target pinned to another host key is refused with "could not be verified" and a
/// `target.host_key_mismatch` event; `--fetch-host-key` pins the real key and works; a wrong
/// vaulted password is reported without the secret.
fn host_key_mismatch_is_refused_and_audited(b: Backend) {
    let lab = Lab::new(b);
    let scratch = lab.install.scratch();
    let other = ssh_keygen(&scratch.join("impostor"), "not-the-target");
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "plc-pinned-wrong",
            "--address",
            &lab.sshd.address(),
            "--login",
            TARGET_LOGIN,
            "--password-stdin",
            "--host-key",
            &other,
        ],
        format!("{TARGET_PASSWORD}\n").as_bytes(),
    );
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "plc-pinned-wrong", "1h");
    let dir = lab.remote_dir();
    let marker = dir.join("ran");
    let out = run(
        lab.client("ssh", &v)
            .arg(format!("{}@127.0.0.1", v.login("plc-pinned-wrong")))
            .arg(format!("touch {}", marker.display())),
        b"",
        T,
    );
    let err = assert_refused("host key mismatch", &out);
    assert!(err.contains("could not be verified"), "{err}");
    assert!(!marker.exists(), "the command ran on an unverified target");
    let ev = lab.audit_events("target.host_key_mismatch");
    assert_eq!(ev.len(), 1, "{ev:?}");
    let sshd_pub = scratch.join("sshd.pub");
    std::fs::write(&sshd_pub, format!("{}\n", lab.sshd.host_key)).expect("write");
    assert_eq!(ev[0]["details"]["target"], "plc-pinned-wrong");
    assert_eq!(ev[0]["details"]["presented"], ssh_fingerprint(&sshd_pub));
    assert_eq!(ev[0]["details"]["expected"], ssh_fingerprint(&scratch.join("impostor.pub")));
    assert!(lab.sessions_of(&v.name).is_empty());

    // --fetch-host-key pins what the target presents.
    let fetched = lab.install.ok_stdin(
        &[
            "target",
            "add",
            "plc-fetched",
            "--address",
            &lab.sshd.address(),
            "--login",
            TARGET_LOGIN,
            "--password-stdin",
            "--fetch-host-key",
        ],
        format!("{TARGET_PASSWORD}\n").as_bytes(),
    );
    assert!(fetched.contains(&ssh_fingerprint(&sshd_pub)), "{fetched}");
    let f = lab.vendor_without_grant();
    lab.grant(&f.name, "plc-fetched", "1h");
    let out =
        run(lab.client("ssh", &f).arg(format!("{}@127.0.0.1", f.login("plc-fetched"))).arg("echo pinned"), b"", T);
    assert_eq!(assert_ok("fetched host key", &out), "pinned\n");

    // A wrong vaulted password: the vendor learns that the login failed, nothing more.
    let wrong = format!("Wrong-Plc-Secret-{}", random_hex(4));
    lab.add_secret(&wrong);
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "plc-badpw",
            "--address",
            &lab.sshd.address(),
            "--login",
            TARGET_LOGIN,
            "--password-stdin",
            "--host-key",
            &lab.sshd.host_key,
        ],
        format!("{wrong}\n").as_bytes(),
    );
    let w = lab.vendor_without_grant();
    lab.grant(&w.name, "plc-badpw", "1h");
    let out = run(lab.client("ssh", &w).arg(format!("{}@127.0.0.1", w.login("plc-badpw"))).arg("true"), b"", T);
    let err = assert_refused("wrong target password", &out);
    assert!(err.contains("could not log in to plc-badpw"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(TARGET_PASSWORD), "{err}");
    lab.finish();
}

/// A target that refuses the request (here: an sshd without the sftp subsystem) fails the
/// vendor's request; the session that was recorded for it ends as `error`, with nothing moved.
fn target_refusing_the_request_ends_the_session_as_error(b: Backend) {
    let lab = Lab::new(b);
    let bare = Sshd::start_with(false);
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "plc-nosftp",
            "--address",
            &bare.address(),
            "--login",
            TARGET_LOGIN,
            "--password-stdin",
            "--host-key",
            &bare.host_key,
        ],
        format!("{TARGET_PASSWORD}\n").as_bytes(),
    );
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "plc-nosftp", "1h");
    let batch = lab.install.scratch().join("batch.sftp");
    std::fs::write(&batch, "ls /\n").expect("batch");
    let out =
        run(lab.client("sftp", &v).arg("-b").arg(&batch).arg(format!("{}@127.0.0.1", v.login("plc-nosftp"))), b"", T);
    let err = assert_refused("sftp on a target without sftp", &out);
    assert!(err.contains("plc-nosftp refused the request"), "{err}");
    let s = lab.ended_session(&v.name);
    assert_eq!(s["end_reason"], "error", "{s}");
    assert_eq!(s["target"], "plc-nosftp", "{s}");
    assert_eq!((s["bytes_up"].as_i64(), s["bytes_down"].as_i64()), (Some(0), Some(0)), "{s}");
    let cast = parse_cast(Path::new(s["recording_path"].as_str().expect("recording")));
    assert_eq!(cast.header["command"], "subsystem:sftp", "{}", cast.header);
    assert!(cast.events.is_empty(), "{:?}", cast.events);
    let ended_ev = lab.audit_events("session.ended");
    assert!(
        ended_ev.iter().any(|e| e["details"]["session"] == s["id"] && e["details"]["reason"] == "error"),
        "{ended_ev:?}"
    );
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Forwarding

/// A listener that must never be reached; counts connections.
struct Decoy {
    port: u16,
    hit: Arc<AtomicBool>,
}

impl Decoy {
    fn start() -> Decoy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let hit = Arc::new(AtomicBool::new(false));
        let h = hit.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                h.store(true, Ordering::SeqCst);
                let mut s = s;
                let _ = std::io::Write::write_all(&mut s, b"DECOY-BANNER\n");
            }
        });
        Decoy { port, hit }
    }
}

/// `-L` to a destination: the forward's connections are refused by the gateway (no data, closed)
/// and audited as `direct-tcpip`; `-R` is refused, so `ExitOnForwardFailure` makes ssh exit
/// non-zero, audited as `tcpip-forward`.
fn forwarding_is_refused_and_audited(b: Backend) {
    let lab = Lab::new(b);
    let decoy = Decoy::start();

    let v = lab.vendor();
    let lport = free_port();
    let spec = format!("127.0.0.1:{lport}:127.0.0.1:{}", decoy.port);
    let mut ssh = Running::spawn(&mut lab.ssh(&v, &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec]));
    let end = Instant::now() + T;
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", lport)) {
            break c;
        }
        assert!(ssh.alive(), "ssh -L exited: {:?}", ssh.wait(Duration::from_secs(1)));
        assert!(Instant::now() < end, "the local forward never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the forward delivered data: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the forwarded connection was neither closed nor reset: {e}"),
    }
    assert!(!decoy.hit.load(Ordering::SeqCst), "the forward reached its destination");
    let end = Instant::now() + T;
    loop {
        let ev = lab.audit_events("session.channel_refused");
        if let Some(e) = ev.iter().find(|e| e["details"]["kind"] == "direct-tcpip") {
            let detail = e["details"]["detail"].as_str().unwrap_or_default();
            assert!(detail.starts_with(&format!("127.0.0.1:{}: ", decoy.port)), "{e}");
            assert_eq!(e["actor"], v.name.as_str(), "{e}");
            break;
        }
        assert!(Instant::now() < end, "no direct-tcpip refusal audited: {ev:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ssh.alive(), "ssh -N stays connected after a refused channel");
    drop(ssh);

    let r = lab.vendor();
    let rport = free_port();
    let spec = format!("127.0.0.1:{rport}:127.0.0.1:{}", decoy.port);
    let out = run(&mut lab.ssh(&r, &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec]), b"", T);
    let err = assert_refused("-R", &out);
    assert!(err.contains("forwarding failed"), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", rport)).is_err(), "something listens on the -R port");
    let ev = lab.audit_events("session.channel_refused");
    let e = ev.iter().find(|e| e["details"]["kind"] == "tcpip-forward").unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(e["details"]["detail"], format!("127.0.0.1:{rport}"), "{e}");
    assert!(!decoy.hit.load(Ordering::SeqCst));
    assert!(lab.sessions(false).is_empty(), "forwarding-only connections open no session");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 9. Ending live sessions

/// `session kill` and `grant revoke` end a live session within a few seconds (end reason
/// `killed`), and a grant running out ends it as `expired`; the vendor is told why.
fn kill_revoke_and_expiry_end_live_sessions(b: Backend) {
    let lab = Lab::new(b);
    let killed = lab.vendor();
    let revoked = lab.vendor();
    let expiring = lab.vendor_without_grant();
    lab.grant(&expiring.name, TARGET, "10s");
    // A long command that also ends by itself (SIGPIPE) once its channel is gone, so nothing
    // lingers on the target.
    let long = "for i in $(seq 60); do echo tick; sleep 1; done";
    let mut s_kill = Running::spawn(lab.ssh(&killed, &[]).arg(long));
    let mut s_revoke = Running::spawn(lab.ssh(&revoked, &[]).arg(long));
    let mut s_expire = Running::spawn(lab.ssh(&expiring, &[]).arg(long));

    let live = lab.live_session(&killed.name);
    let id = live["id"].as_str().unwrap_or_default().to_string();
    assert!(live["end_reason"].is_null(), "{live}");
    lab.install.ok(&["session", "kill", &id[..8]]);
    let t0 = Instant::now();
    let out = s_kill.wait(Duration::from_secs(5)).expect("ssh did not exit after session kill");
    assert!(t0.elapsed() < Duration::from_secs(3), "kill took {:?}", t0.elapsed());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ended by an administrator"), "{}", stderr(&out));
    let (s, _) = ended(&lab, &killed.name, "killed");
    assert_eq!(s["id"], id.as_str());
    let kills = lab.audit_events("session.kill_requested");
    assert!(kills.iter().any(|k| k["details"]["session"] == id.as_str()), "{kills:?}");

    lab.live_session(&revoked.name);
    lab.install.ok(&["grant", "revoke", &revoked.grant.expect("grant").to_string()]);
    let t0 = Instant::now();
    let out = s_revoke.wait(Duration::from_secs(5)).expect("ssh did not exit after grant revoke");
    assert!(t0.elapsed() < Duration::from_secs(3), "revoke took {:?}", t0.elapsed());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("penstock: session ended"), "{}", stderr(&out));
    ended(&lab, &revoked.name, "killed");

    let out = s_expire.wait(Duration::from_secs(20)).expect("ssh did not exit when the grant ran out");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the access grant is over"), "{}", stderr(&out));
    ended(&lab, &expiring.name, "expired");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 11. Fail closed

/// When the recording cannot be created, the session is refused with a message naming the
/// recording, and nothing runs on the target (neither an exec nor a shell).
fn recording_failure_refuses_the_session(b: Backend) {
    let lab = Lab::new(b);
    let rec = lab.install.dir().join("recordings");
    let _ = std::fs::remove_dir_all(&rec);
    std::fs::write(&rec, "not a folder\n").expect("replace recordings/ by a file");
    let dir = lab.remote_dir();

    let v = lab.vendor();
    let marker = dir.join("exec-ran");
    let out = run(lab.ssh(&v, &[]).arg(format!("touch {}; echo RAN", marker.display())), b"", T);
    let err = assert_refused("exec without recording", &out);
    assert!(err.contains("recording"), "{err}");
    assert!(!stdout(&out).contains("RAN"), "{}", stdout(&out));

    let s = lab.vendor();
    let shell_marker = dir.join("shell-ran");
    let out = run(&mut lab.ssh(&s, &["-tt"]), format!("touch {}\nexit\n", shell_marker.display()).as_bytes(), T);
    let err = assert_refused("shell without recording", &out);
    assert!(err.contains("recording"), "{err}");

    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "the command ran on the target although its recording could not be created");
    assert!(!shell_marker.exists(), "the shell ran on the target although its recording could not be created");
    let refusals = lab.audit_events("session.refused");
    for who in [&v, &s] {
        assert!(
            refusals.iter().any(|r| r["details"]["user"] == who.name.as_str()
                && r["details"]["reason"] == "recording unavailable"),
            "{refusals:?}"
        );
    }
    assert!(lab.sessions(false).is_empty(), "{:?}", lab.sessions(false));
    lab.finish();
}
