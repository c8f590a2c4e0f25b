//! Threat classes of THREATS.md not covered elsewhere, end to end with the real OpenSSH client,
//! a real sshd target and the real `penstock serve`: the `env` allow-list, subsystems, X11 and
//! agent forwarding, hostile targets (stalled handshake, endless garbage, hostile output), the
//! gateway killed mid-session, recordings disk full, the database going away under a live
//! session, and a fast sender against a slow reader. Each test fails if its defence is removed.

#[macro_use]
mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sshd::{asciinema_cat, parse_cast, random_file, run, sha256_file, Lab, Running, TARGET};
use common::{assert_ok, files_under, stderr, stdout, Backend};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[track_caller]
fn assert_refused(what: &str, out: &Output) -> String {
    assert!(!out.status.success(), "{what}: expected failure\nstdout:\n{}\nstderr:\n{}", stdout(out), stderr(out));
    stderr(out)
}

/// Audit `session.channel_refused` events of `actor` with details.kind `kind` (waits a little:
/// the refusal is audited from the connection task).
#[track_caller]
fn refused_channels(lab: &Lab, actor: &str, kind: &str) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ev: Vec<Value> = lab
            .audit_events("session.channel_refused")
            .into_iter()
            .filter(|e| e["actor"] == actor && e["details"]["kind"] == kind)
            .collect();
        if !ev.is_empty() {
            return ev;
        }
        assert!(Instant::now() < end, "no `{kind}` channel refusal audited for {actor}: {:?}", lab.audit());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `.cast` files anywhere in the installation.
fn casts(lab: &Lab) -> Vec<PathBuf> {
    files_under(&lab.install.dir()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "cast")).collect()
}

/// Registers `name` at `addr` (any pinned key: the hostile targets never get that far).
fn add_target(lab: &Lab, name: &str, addr: &str) {
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            name,
            "--address",
            addr,
            "--login",
            "nobody",
            "--password-stdin",
            "--host-key",
            &lab.sshd.host_key,
        ],
        b"hostile-target-pw\n",
    );
}

// ---------------------------------------------------------------------------------------------
// 1. env requests: only an allow-list reaches the target.

#[test]
fn env_requests_are_allow_listed() {
    let lab = Lab::with(Backend::Sqlite, "AcceptEnv *\n", &[]);
    let v = lab.vendor();
    let out = run(
        lab.ssh(&v, &["-o", "SetEnv=LC_PENSTOCK=ok LANG=C.UTF-8 LD_PRELOAD=/tmp/evil.so FOO=bar"]).arg("env"),
        b"",
        T,
    );
    let env = assert_ok("ssh env", &out);
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"LC_PENSTOCK=ok"), "allowed LC_* variable missing on the target:\n{env}");
    assert!(lines.contains(&"LANG=C.UTF-8"), "LANG missing on the target:\n{env}");
    assert!(!env.contains("LD_PRELOAD"), "LD_PRELOAD reached the target:\n{env}");
    assert!(!lines.contains(&"FOO=bar"), "FOO reached the target:\n{env}");
    assert!(!lab.sshd.log().contains("LD_PRELOAD"), "the target was even asked for LD_PRELOAD");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Subsystems: only sftp.

#[test]
fn only_the_sftp_subsystem_is_allowed() {
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let out = run(lab.ssh(&v, &["-s"]).arg("somethingelse"), b"", T);
    assert_refused("ssh -s somethingelse", &out);
    let ev = refused_channels(&lab, &v.name, "subsystem");
    assert_eq!(ev[0]["details"]["detail"], "somethingelse", "{}", ev[0]);
    assert!(lab.sessions_of(&v.name).is_empty(), "a refused subsystem opened a session");

    let w = lab.vendor();
    let dir = lab.remote_dir();
    let local = lab.install.scratch().join("up.bin");
    let sha = random_file(&local, 50_000);
    let batch = lab.install.scratch().join("batch");
    std::fs::write(&batch, format!("put {} {}\n", local.display(), dir.join("up.bin").display())).expect("batch");
    let out = run(lab.client("sftp", &w).arg("-b").arg(&batch).arg(lab.dest(&w)), b"", T);
    assert_ok("sftp put", &out);
    assert_eq!(sha256_file(&dir.join("up.bin")), sha);
    lab.ended_session(&w.name);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. X11 and agent forwarding are refused even though the target would allow them.

#[test]
fn x11_and_agent_forwarding_are_refused() {
    let lab = Lab::with(Backend::Sqlite, "X11Forwarding yes\nAllowAgentForwarding yes\n", &[]);
    let sock = lab.install.scratch().join("agent.sock");
    let _agent = Running::spawn(std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock));
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < end, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = lab.vendor();
    let mut cmd = lab.ssh(&v, &["-X", "-A", "-o", "ForwardX11Trusted=yes"]);
    cmd.env("SSH_AUTH_SOCK", &sock).arg(r#"echo "[$DISPLAY][$SSH_AUTH_SOCK]""#);
    let out = run(&mut cmd, b"", T);
    let text = assert_ok("ssh -X -A", &out);
    assert_eq!(text.trim(), "[][]", "X11 or agent forwarding reached the target");
    // The client asked for both (so the refusals below are the gateway's doing).
    let err = stderr(&out);
    assert!(err.contains("X11 forwarding request failed"), "{err}");
    refused_channels(&lab, &v.name, "x11");
    refused_channels(&lab, &v.name, "agent");
    lab.ended_session(&v.name);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile targets: a stalled handshake and an endless stream of garbage.

#[test]
fn hostile_targets_time_out_and_the_gateway_keeps_serving() {
    let lab = Lab::with(Backend::Sqlite, "", &[("PENSTOCK_UPSTREAM_HANDSHAKE_TIMEOUT_SECS", "2")]);
    let done = Arc::new(AtomicBool::new(false));

    // Accepts and never sends anything.
    let stall = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stall_addr = stall.local_addr().expect("addr").to_string();
    stall.set_nonblocking(true).expect("nonblocking");
    let d = done.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !d.load(Ordering::SeqCst) {
            if let Ok((s, _)) = stall.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Sends garbage instead of a banner, for ever.
    let garbage = TcpListener::bind("127.0.0.1:0").expect("bind");
    let garbage_addr = garbage.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for s in garbage.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let chunk: Vec<u8> = (0..65536u32).map(|i| b"\x00\xffSSH-garbage \x1b[2J"[(i % 17) as usize]).collect();
                while s.write_all(&chunk).is_ok() {}
            });
        }
    });
    add_target(&lab, "stall", &stall_addr);
    add_target(&lab, "garbage", &garbage_addr);

    for target in ["stall", "garbage"] {
        let v = lab.vendor_without_grant();
        lab.grant(&v.name, target, "2h");
        let started = Instant::now();
        let out = run(lab.client("ssh", &v).arg(format!("{}@127.0.0.1", v.login(target))).arg("true"), b"", T);
        let took = started.elapsed();
        let err = assert_refused(target, &out);
        assert!(err.contains(&format!("cannot reach {target}")), "{target}: {err}");
        if target == "stall" {
            assert!(err.contains("timed out"), "{target}: {err}");
        }
        assert!(took < Duration::from_secs(8), "{target}: refusal took {took:?}");
        assert!(lab.sessions_of(&v.name).is_empty(), "{target}: a session was opened");
    }

    let v = lab.vendor();
    let out = run(lab.ssh(&v, &[]).arg("echo still-serving"), b"", T);
    assert_eq!(assert_ok("normal session", &out).trim(), "still-serving");
    lab.ended_session(&v.name);
    done.store(true, Ordering::SeqCst);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile output cannot break the recording or the player.

/// Hostile output (a title escape, quotes, brackets and a line that looks like an event):
/// recorded as data, never as an event, and the cast still plays. Invalid UTF-8 from a channel
/// without a terminal goes byte-exact to the side file, and the cast's own notes are markers the
/// target cannot forge.
#[test]
fn hostile_output_cannot_forge_recording_events() {
    let lab = Lab::new(Backend::Sqlite);
    for (cmd, relayed, binary) in [
        (
            r#"printf '\033]0;x\007\000"]\n[1.0, "o", "fake"]\n'"#,
            &b"\x1b]0;x\x07\x00\"]\n[1.0, \"o\", \"fake\"]\n"[..],
            false,
        ),
        (
            r#"printf '\033]0;x\007\xff\xfe\000"]\n[1.0, "o", "fake"]\n'"#,
            &b"\x1b]0;x\x07\xff\xfe\x00\"]\n[1.0, \"o\", \"fake\"]\n"[..],
            true,
        ),
    ] {
        let v = lab.vendor();
        let out = run(lab.ssh(&v, &[]).arg(cmd), b"", T);
        assert_ok("hostile printf", &out);
        assert_eq!(out.stdout, relayed, "relayed bytes changed");
        let s = lab.ended_session(&v.name);
        let path = PathBuf::from(s["recording_path"].as_str().expect("recording"));
        let cast = parse_cast(&path);
        let text = std::fs::read_to_string(&path).expect("recording");
        assert_eq!(text.lines().count(), 1 + cast.events.len(), "lines other than the header and the events");
        assert!(text.ends_with('\n'));
        assert!(
            !cast.events.iter().any(|(t, c, d)| *t == 1.0 && c == "o" && d == "fake"),
            "the target forged an event: {:?}",
            cast.events
        );
        let o = cast.text("o");
        let side = path.with_extension("out");
        if binary {
            assert_eq!(std::fs::read(&side).ok().as_deref(), Some(relayed), "side file is not byte-exact");
            assert!(!o.contains("fake"), "binary output went to the cast: {o:?}");
            let marks = cast.text("m");
            assert!(marks.contains("binary output: 31 bytes in"), "no marker names the side file: {marks:?}");
        } else {
            assert!(!side.exists(), "text output made a side file");
            assert!(o.contains("[1.0, \"o\", \"fake\"]"), "the fake line is not in the output data: {o:?}");
            assert!(o.contains("\u{1b}]0;x\u{7}"), "escape sequence not recorded as data: {o:?}");
            assert!(cast.text("m").is_empty(), "the target's output made a marker: {:?}", cast.events);
            let shown = asciinema_cat(&path);
            assert!(shown.contains("fake"), "{shown}");
        }
    }
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. The gateway killed mid-session leaves a readable recording.

#[test]
fn gateway_killed_mid_session_leaves_a_readable_recording() {
    let mut lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let mut sess = Running::spawn(lab.ssh(&v, &[]).arg("for i in $(seq 1 100); do echo line-$i; sleep 0.1; done"));
    let live = lab.live_session(&v.name);
    let path = PathBuf::from(live["recording_path"].as_str().expect("recording"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sess.alive(), "the session ended early");
    lab.kill_gateway();
    let out = sess.wait(Duration::from_secs(15)).expect("ssh did not notice the gateway died");
    assert!(!out.status.success(), "ssh succeeded although the gateway was killed");

    let bytes = std::fs::read(&path).expect("recording exists");
    let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    let text = std::str::from_utf8(complete).expect("recording is UTF-8");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header is JSON");
    assert_eq!(header["version"], 2, "{header}");
    let mut data = String::new();
    for l in lines {
        let e: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}"));
        data.push_str(e[2].as_str().unwrap_or_else(|| panic!("not an event: {l}")));
    }
    assert!(data.contains("line-10\n"), "less than a second of output flushed before the kill: {data:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Recordings disk full: new sessions refused, nothing runs, nothing written.

#[test]
fn recordings_disk_full_refuses_new_sessions() {
    let lab = Lab::with(Backend::Sqlite, "", &[("PENSTOCK_RECORDINGS_MIN_FREE_MIB", "100000000")]);
    let v = lab.vendor();
    let marker = lab.remote_dir().join("ran");
    let out = run(lab.ssh(&v, &[]).arg(format!("touch {}", marker.display())), b"", T);
    let err = assert_refused("session with the disk full", &out);
    assert!(err.contains("recording") && err.contains("full"), "{err}");
    assert!(!marker.exists(), "the command ran on the target");
    assert!(casts(&lab).is_empty(), "a recording was created: {:?}", casts(&lab));
    assert!(lab.sessions_of(&v.name).is_empty(), "a session was stored");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 8. Database unavailable: no new access, live sessions keep recording.

#[test]
fn database_unavailable_fails_closed_and_live_sessions_keep_recording() {
    let lab = Lab::new(Backend::Postgres);
    let db = lab.install.pg_database().expect("postgres database").to_string();
    let pg = common::postgres::server();
    let v = lab.vendor();
    let late = lab.vendor();
    let mut sess = Running::spawn(lab.ssh(&v, &[]).arg("for i in $(seq 1 150); do echo tick-$i; sleep 0.1; done"));
    let live = lab.live_session(&v.name);
    let path = PathBuf::from(live["recording_path"].as_str().expect("recording"));

    pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    pg.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = run(lab.ssh(&late, &[]).arg("echo granted"), b"", T);
        assert_refused("login with the database down", &out);
        assert!(!stdout(&out).contains("granted"));
        assert!(sess.alive(), "the live session died with the database");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let s1 = size(&path);
        std::thread::sleep(Duration::from_millis(2500));
        assert!(sess.alive(), "the live session died with the database");
        let s2 = size(&path);
        assert!(s2 > s1, "the recording stopped growing ({s1} → {s2} bytes)");
    }));
    pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let out = sess.wait(Duration::from_secs(40)).expect("session did not end");
    assert!(assert_ok("live session", &out).contains("tick-150"));
    let s = lab.ended_session(&v.name);
    let cast = parse_cast(Path::new(s["recording_path"].as_str().expect("recording")));
    assert!(cast.text("o").contains("tick-150\n"));
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 9. A fast sender against a slow reader: gateway memory stays bounded.

#[test]
fn fast_sender_slow_reader_memory_is_bounded() {
    const LEN: usize = 200 << 20;
    let lab = Lab::new(Backend::Sqlite);
    let v = lab.vendor();
    let pid = lab.gateway_pid();
    let data: Vec<u8> = {
        use rand::RngCore;
        let mut d = vec![0u8; LEN];
        rand::thread_rng().fill_bytes(&mut d);
        d
    };
    let sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&data))
    };
    let base = common::rss_kib(pid);
    let mut cmd = lab.ssh(&v, &[]);
    cmd.arg("sleep 8; sha256sum");
    let started = Instant::now();
    let sender = std::thread::spawn(move || run(&mut cmd, &data, Duration::from_secs(150)));
    let mut peak = base;
    while started.elapsed() < Duration::from_secs(8) {
        peak = peak.max(common::rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut overall = peak;
    while !sender.is_finished() {
        overall = overall.max(common::rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sender.join().expect("sender");
    let text = assert_ok("200 MiB through a slow reader", &out);
    assert_eq!(text.split_whitespace().next(), Some(sha.as_str()), "the data arrived changed");
    eprintln!("gateway RSS: idle {base} KiB, peak while the reader slept {peak} KiB, overall {overall} KiB");
    assert!(
        peak.saturating_sub(base) < 64 * 1024,
        "gateway RSS grew by {} MiB while the target did not read",
        (peak - base) / 1024
    );
    let s = lab.ended_session(&v.name);
    assert_eq!(s["target"], TARGET);
    lab.finish();
}
