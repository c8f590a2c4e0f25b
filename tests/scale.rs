//! Several gateways on one PostgreSQL and one S3 server (the scale-out issue), with real parts:
//! two `penstock serve` processes with their own node ids on the harness's PostgreSQL, a real
//! SeaweedFS (`weed mini`) as the object store, a real `sshd` target and the real `ssh` client.
//!
//! The tests must run as root (see tests/common/sshd.rs).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::s3::Seaweed;
use common::sshd::{die_with_parent, wait_timeout, Gateway, Lab};
use common::{assert_fails, assert_ok, Backend};
use serde_json::Value;
use sha2::{Digest, Sha256};

const FAST: [(&str, &str); 2] = [("PENSTOCK_NODE_HEARTBEAT_SECS", "1"), ("PENSTOCK_NODE_LOST_AFTER_SECS", "4")];

fn node_b_env() -> Vec<(&'static str, &'static str)> {
    let mut env = FAST.to_vec();
    env.extend([("PENSTOCK_NODE_ID_FILE", "node_id_b"), ("PENSTOCK_NODE_NAME", "node-b")]);
    env
}

/// `penstock nodes --json` as an operator with the same `[node]` settings sees it.
fn nodes(lab: &Lab) -> Vec<Value> {
    let out = lab.install.command(&["nodes", "--json"]).envs(FAST).output().expect("nodes");
    let text = assert_ok("nodes", &out);
    serde_json::from_str::<Value>(&text).expect("json").as_array().cloned().unwrap_or_default()
}

/// `kill -9` of the node a session runs on: the other node ends that session as `node_lost`
/// (with its recording's hash, which it can read here), audits `node.lost`, keeps serving new
/// sessions, and `penstock nodes` shows which node is lost. The lost node, started again,
/// finds nothing left to recover.
#[test]
fn a_lost_nodes_sessions_are_ended_by_a_survivor() {
    let sw = Seaweed::start();
    let mut s3env = sw.env();
    s3env.push(("PENSTOCK_RECORDINGS_PART_SECS".into(), "1".into()));
    let mut env_a = FAST.to_vec();
    env_a.push(("PENSTOCK_NODE_NAME", "node-a"));
    env_a.extend(env_refs(&s3env));
    let mut lab = Lab::with(Backend::Postgres, "", &env_a);
    config_s3(&lab, &sw);
    let mut env_b = node_b_env();
    env_b.extend(env_refs(&s3env));
    env_b.push(("PENSTOCK_RECORDINGS_DIR", "recordings-b"));
    let b = Gateway::start_env(&lab.install, &env_b);
    let all = nodes(&lab);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|n| n["state"] == "alive"), "{all:?}");
    let a_id = all.iter().find(|n| n["name"] == "node-a").expect("node-a")["id"].as_str().expect("id").to_string();

    // A session on node A, then A dies.
    let v = lab.vendor();
    let mut cmd = lab.ssh(&v, &["-tt"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = die_with_parent(&mut cmd).spawn().expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"echo before-the-crash\n").expect("type");
    stdin.flush().expect("flush");
    let live = lab.live_session(&v.name);
    let id = live["id"].as_str().expect("id").to_string();
    let path = live["recording_path"].as_str().expect("path").to_string();
    let key = object_key(&path);
    // The keystrokes reach the recording, and the recording's first part the bucket.
    eventually("no part of the live recording reached the bucket", Duration::from_secs(15), || {
        (!sw.parts(&key).is_empty()).then_some(())
    });
    lab.kill_gateway();
    let _ = wait_timeout(&mut child, Duration::from_secs(20));
    drop(stdin);

    // B notices within lost_after (4 s) plus a heartbeat or two.
    let end = Instant::now() + Duration::from_secs(20);
    let ended = loop {
        let s = lab.sessions(false).into_iter().find(|s| s["id"] == id.as_str()).expect("the session");
        if !s["end_reason"].is_null() {
            break s;
        }
        assert!(Instant::now() < end, "node B did not end the lost node's session\nB log:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ended["end_reason"], "node_lost", "{ended}");
    let audit = lab.install.ok(&["audit", "export"]);
    let lost =
        audit.lines().find(|l| l.contains("\"node.lost\"")).unwrap_or_else(|| panic!("no node.lost event:\n{audit}"));
    assert!(lost.contains(&a_id) && lost.contains("\"sessions\":1"), "{lost}");
    let closed = audit
        .lines()
        .find(|l| l.contains("\"session.interrupted\"") && l.contains(&id))
        .unwrap_or_else(|| panic!("no session.interrupted event:\n{audit}"));
    assert!(closed.contains("recording_sha256\":\""), "the survivor hashed the parts in the bucket: {closed}");
    let all = nodes(&lab);
    let a = all.iter().find(|n| n["name"] == "node-a").expect("node-a");
    assert_eq!(a["state"], "lost", "{all:?}");
    assert_eq!(a["live_sessions"], 0, "{all:?}");
    assert!(all.iter().any(|n| n["name"] == "node-b" && n["state"] == "alive"), "{all:?}");
    let table = assert_ok("nodes", &lab.install.command(&["nodes"]).envs(FAST).output().expect("nodes"));
    assert!(table.contains("node-a") && table.contains("lost") && table.contains("node-b"), "{table}");

    // B serves new sessions.
    lab.use_port(b.port);
    let v2 = lab.vendor();
    let out = assert_ok(
        "ssh through node B",
        &common::sshd::run(lab.ssh(&v2, &[]).arg("echo via-b"), b"", Duration::from_secs(60)),
    );
    assert!(out.contains("via-b"), "{out}");

    // A comes back: nothing of its own is left open, nothing is closed twice, and it uploads
    // what it spooled; the chain then holds the whole recording's hash (and the survivor's).
    assert!(std::path::Path::new(&path).exists(), "node A's spool lost the recording");
    lab.restart_gateway(&env_a);
    let log = lab.gateway_log();
    assert!(!log.contains("recovered what an earlier run"), "{log}");
    let object = eventually("node A did not upload its spool", Duration::from_secs(30), || {
        sw.object(&key).filter(|_| !std::path::Path::new(&path).exists())
    });
    assert!(String::from_utf8_lossy(&object).contains("before-the-crash"));
    let row = lab.sessions(false).into_iter().find(|r| r["id"] == id.as_str()).expect("session");
    assert_eq!(row["recording_sha256"].as_str(), Some(sha256_hex(&object).as_str()), "{row}");
    let up = lab.audit_events("recording.uploaded");
    let ev = up.iter().find(|e| e["details"]["session"] == id.as_str()).unwrap_or_else(|| panic!("{up:?}"));
    assert_eq!(ev["details"]["sha256"].as_str(), Some(sha256_hex(&object).as_str()), "{ev}");
    let again = lab.install.ok(&["audit", "export"]);
    let closes = again.lines().filter(|l| l.contains("\"session.interrupted\"") && l.contains(&id)).count();
    assert_eq!(closes, 1, "{again}");
    assert!(nodes(&lab).iter().all(|n| n["state"] == "alive"));
    let verified = lab.install.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
}

/// SQLite holds one gateway: a second `serve` on the same store is refused in one line, and the
/// first keeps serving.
#[test]
fn a_second_gateway_on_sqlite_is_refused() {
    let lab = Lab::new(Backend::Sqlite);
    let out = lab.install.command(&["serve"]).env("PENSTOCK_SSH_LISTEN", "127.0.0.1:0").output().expect("serve");
    let err = assert_fails("second serve", &out);
    assert!(err.contains("another `penstock serve` is running on this SQLite store"), "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
    let v = lab.vendor();
    let out =
        assert_ok("ssh", &common::sshd::run(lab.ssh(&v, &[]).arg("echo still-serving"), b"", Duration::from_secs(60)));
    assert!(out.contains("still-serving"), "{out}");
    lab.finish();
}

/// A process whose output is collected while it runs; killed when dropped.
struct Watched {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Watched {
    fn spawn(mut cmd: std::process::Command) -> Watched {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawn");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pipes: Vec<Box<dyn std::io::Read + Send>> =
            vec![Box::new(child.stdout.take().expect("out")), Box::new(child.stderr.take().expect("err"))];
        for mut r in pipes {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
                }
            });
        }
        Watched { stdin: child.stdin.take(), child, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn type_text(&mut self, s: &str) {
        if let Some(i) = self.stdin.as_mut() {
            i.write_all(s.as_bytes()).expect("type");
            i.flush().expect("flush");
        }
    }

    /// How long until the output holds `needle` (panics after `timeout`).
    #[track_caller]
    fn until(&self, needle: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        while !self.text().contains(needle) {
            assert!(t0.elapsed() < timeout, "no {needle:?} within {timeout:?}:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(10));
        }
        t0.elapsed()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SINGLE: &str =
    "[policy]\nname = \"scale-single\"\n\n[match]\ntargets = [\"plc-line3\"]\n\n[request]\nroles = [\"vendor\"]\n\n\
     [approval]\napprover_roles = [\"manager\"]\nrequired = 1\n\n[limits]\nmax_duration = \"2h\"\n\n\
     [channels]\nshell = true\nexec = true\nsftp = true\nforward = []\n";

/// With both nodes polling only every 5 s, an approval made on node B connects the vendor
/// waiting on node A, and a kill and a revoke end sessions on A, each within a second
/// (PostgreSQL NOTIFY in the deciding transaction). With notifications off, a kill arrives
/// within one poll interval.
#[test]
fn approvals_kills_and_revokes_reach_another_node_at_once() {
    let slow = [("PENSTOCK_NODE_POLL_MS", "5000"), ("PENSTOCK_AUTH_MAX_FAILURES", "1000")];
    let mut lab = Lab::with_options(Backend::Postgres, &[("00-scale.toml", SINGLE)], &slow);
    let a_port = lab.port();
    let mut env_b = slow.to_vec();
    env_b.push(("PENSTOCK_NODE_ID_FILE", "node_id_b"));
    let b = Gateway::start_env(&lab.install, &env_b);

    // A vendor without a grant waits on A for their request.
    let vendor = lab.vendor_without_grant();
    let mut waiting = Watched::spawn(lab.ssh(&vendor, &["-tt"]));
    waiting.until("Reason", Duration::from_secs(30));
    waiting.type_text("CHG-9\n");
    waiting.until("Duration", Duration::from_secs(10));
    waiting.type_text("\n");
    waiting.until("pending: 0/1", Duration::from_secs(10));
    let text = waiting.text();
    let id: i64 = text
        .split("request ")
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no request id: {text}"));

    // A manager approves on B.
    let manager = lab.user_with_role("manager");
    lab.use_port(b.port);
    let mut approve = lab.client_with(
        "ssh",
        &common::sshd::Answers { password: manager.password.clone(), code: manager.code() },
        None,
    );
    approve.arg(format!("{}@127.0.0.1", manager.name)).arg(format!("approve {id}"));
    let o = common::sshd::run(&mut approve, b"", Duration::from_secs(60));
    assert_ok("approve on node B", &o);
    let took = waiting.until("approved; connecting", Duration::from_secs(15));
    assert!(took < Duration::from_secs(1), "the approval took {took:?} to reach node A");
    waiting.type_text("echo CONNECTED-$((40+2))\n");
    waiting.until("CONNECTED-42", Duration::from_secs(20));

    // A kill issued elsewhere ends it within a second.
    lab.use_port(a_port);
    let live = lab.live_session(&vendor.name);
    let t0 = Instant::now();
    lab.install.ok(&["session", "kill", live["id"].as_str().expect("id")]);
    waiting.until("ended by an administrator", Duration::from_secs(15));
    assert!(t0.elapsed() < Duration::from_secs(1) + Duration::from_millis(300), "kill took {:?}", t0.elapsed());

    // A revoke too.
    let v2 = lab.vendor();
    let s2 = Watched::spawn({
        let mut c = lab.ssh(&v2, &[]);
        c.arg("echo UP; sleep 300");
        c
    });
    s2.until("UP", Duration::from_secs(30));
    let t0 = Instant::now();
    lab.install.ok(&["grant", "revoke", &v2.grant.expect("grant").to_string()]);
    s2.until("penstock: session", Duration::from_secs(15));
    assert!(t0.elapsed() < Duration::from_secs(1) + Duration::from_millis(300), "revoke took {:?}", t0.elapsed());

    // Notifications off: the poll (1 s here) is the fallback.
    lab.restart_gateway(&[("PENSTOCK_NODE_POLL_MS", "1000"), ("PENSTOCK_NODE_NOTIFY", "false")]);
    let v3 = lab.vendor();
    let s3 = Watched::spawn({
        let mut c = lab.ssh(&v3, &[]);
        c.arg("echo UP; sleep 300");
        c
    });
    s3.until("UP", Duration::from_secs(30));
    let live = lab.live_session(&v3.name);
    let t0 = Instant::now();
    lab.install.ok(&["session", "kill", live["id"].as_str().expect("id")]);
    s3.until("ended by an administrator", Duration::from_secs(15));
    assert!(t0.elapsed() < Duration::from_millis(2300), "kill by poll took {:?}", t0.elapsed());
    drop(b);
    lab.finish();
}

/// Writes the S3 server's settings into the installation's `[recordings]`, so CLI commands
/// (replay, search, evidence, verify) read recordings through the bucket as a gateway does.
fn config_s3(lab: &Lab, sw: &Seaweed) {
    let path = lab.install.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    let mut lines = String::from("[recordings]\n");
    for (k, v) in sw.env() {
        let key = k.strip_prefix("PENSTOCK_RECORDINGS_").expect("recordings key").to_ascii_lowercase();
        if v.parse::<u64>().is_ok() {
            lines.push_str(&format!("{key} = {v}\n"));
        } else {
            lines.push_str(&format!("{key} = \"{v}\"\n"));
        }
    }
    assert!(text.contains("[recordings]\n"), "{text}");
    std::fs::write(&path, text.replacen("[recordings]\n", &lines, 1)).expect("write config");
}

/// The object name of a recording: its date folders and file name.
fn object_key(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    parts[parts.len() - 4..].join("/")
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
#[track_caller]
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what} (waited {timeout:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn env_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A session recorded on node A goes to the bucket in parts while it runs and whole when it
/// ends (with the hash the chain holds, spool emptied, `recording.uploaded` audited); node B,
/// with a spool of its own, replays it, finds it by a word typed in it and bundles it as
/// evidence; `audit verify` reads it from the bucket.
#[test]
fn recordings_live_in_s3_and_any_node_reads_them() {
    let sw = Seaweed::start();
    let mut s3env = sw.env();
    s3env.push(("PENSTOCK_RECORDINGS_PART_SECS".into(), "1".into()));
    let env_a = env_refs(&s3env);
    let lab = Lab::with(Backend::Postgres, "", &env_a);
    config_s3(&lab, &sw);
    let mut env_b = env_a.clone();
    env_b.extend([("PENSTOCK_NODE_ID_FILE", "node_id_b"), ("PENSTOCK_RECORDINGS_DIR", "recordings-b")]);
    let b = Gateway::start_env(&lab.install, &env_b);

    let v = lab.vendor();
    let mut s = Watched::spawn(lab.ssh(&v, &["-tt"]));
    s.type_text("echo part-$((1+1))-word\n");
    s.until("part-2-word", Duration::from_secs(30));
    let live = lab.live_session(&v.name);
    let id = live["id"].as_str().expect("id").to_string();
    let path = live["recording_path"].as_str().expect("path").to_string();
    let key = object_key(&path);
    eventually("no part of the live recording reached the bucket", Duration::from_secs(15), || {
        (!sw.parts(&key).is_empty()).then_some(())
    });
    assert!(sw.object(&key).is_none(), "the whole object exists before the session ended");
    s.type_text("echo s3-needle-$((6*7))\nexit\n");
    s.until("s3-needle-42", Duration::from_secs(20));
    let _ = wait_timeout(&mut s.child, Duration::from_secs(20));

    let object = eventually("the ended recording was not uploaded", Duration::from_secs(30), || {
        sw.object(&key).filter(|_| !std::path::Path::new(&path).exists())
    });
    let row = lab.sessions(false).into_iter().find(|r| r["id"] == id.as_str()).expect("session");
    let sha = row["recording_sha256"].as_str().expect("hash in the row").to_string();
    assert_eq!(sha256_hex(&object), sha, "the object is not the recording the chain hashed");
    assert!(String::from_utf8_lossy(&object).contains("s3-needle-42"));
    eventually("parts were not cleaned up", Duration::from_secs(10), || sw.parts(&key).is_empty().then_some(()));
    let up = lab.audit_events("recording.uploaded");
    let ev = up.iter().find(|e| e["details"]["session"] == id.as_str()).unwrap_or_else(|| panic!("{up:?}"));
    assert_eq!(ev["details"]["sha256"], sha.as_str(), "{ev}");
    assert!(ev["details"]["previous_sha256"].is_null(), "{ev}");

    // Node B's view: its own (empty) spool, so everything comes from the bucket.
    let on_b = |args: &[&str]| -> String {
        let o = lab.install.command(args).env("PENSTOCK_RECORDINGS_DIR", "recordings-b").output().expect("run");
        assert_ok(&args.join(" "), &o)
    };
    let tr = on_b(&["replay", &id, "--transcript"]);
    assert!(tr.contains("s3-needle"), "{tr}");
    let found = on_b(&["recordings", "search", "s3-needle-42"]);
    assert!(found.contains(&id[..8]), "{found}");
    let bundle = lab.install.scratch().join("s3.tar");
    let msg = on_b(&["evidence", "export", "--session", &id, "-o", bundle.to_str().expect("path")]);
    assert!(msg.contains("1 recording file(s)"), "{msg}");
    let key_line = on_b(&["evidence", "key"]);
    let pubkey = lab.install.scratch().join("ev.pub");
    std::fs::write(&pubkey, key_line).expect("key");
    let ok = on_b(&["evidence", "verify", bundle.to_str().expect("b"), "--key", pubkey.to_str().expect("k")]);
    assert!(ok.contains("verified"), "{ok}");
    let verified = on_b(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // Credentials from systemd's credential folder win over the config's: with a wrong secret
    // in the config the bucket refuses; with the right one in $CREDENTIALS_DIRECTORY it reads.
    let wrong = |creds: Option<&std::path::Path>| {
        let mut c = lab.install.command(&["replay", &id, "--transcript"]);
        c.env("PENSTOCK_RECORDINGS_DIR", "recordings-b")
            .env("PENSTOCK_RECORDINGS_S3_SECRET_ACCESS_KEY", "wrong-secret");
        if let Some(d) = creds {
            c.env("CREDENTIALS_DIRECTORY", d);
        }
        c.output().expect("replay")
    };
    let refused = wrong(None);
    assert!(!refused.status.success(), "a wrong S3 secret was accepted");
    let creds = lab.install.scratch().join("creds");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("s3_access_key_id"), common::s3::ACCESS_KEY).expect("key id");
    std::fs::write(creds.join("s3_secret_access_key"), format!("{}\n", common::s3::SECRET_KEY)).expect("secret");
    let read = wrong(Some(&creds));
    assert!(assert_ok("replay with credentials", &read).contains("s3-needle"));
    drop(b);
}

/// S3 down (killed) or hung (SIGSTOP) mid-session: the session goes on, its recording stays in
/// the spool, and the backlog drains once S3 is back. With `require_remote`, new sessions are
/// refused while S3 cannot be written, and admitted again when it can.
#[test]
fn s3_outages_spool_and_require_remote_fails_closed() {
    let mut sw = Seaweed::start();
    let s3env = sw.env();
    let lab = Lab::with(Backend::Sqlite, "", &env_refs(&s3env));
    config_s3(&lab, &sw);

    // Hung mid-session.
    let v = lab.vendor();
    let mut s = Watched::spawn(lab.ssh(&v, &["-tt"]));
    s.type_text("echo before-$((1+1))\n");
    s.until("before-2", Duration::from_secs(30));
    let live = lab.live_session(&v.name);
    let id = live["id"].as_str().expect("id").to_string();
    let path = live["recording_path"].as_str().expect("path").to_string();
    sw.freeze();
    s.type_text("echo during-hang-$((3+4))\n");
    s.until("during-hang-7", Duration::from_secs(10));
    s.type_text("exit\n");
    let _ = wait_timeout(&mut s.child, Duration::from_secs(20));
    // A new session while S3 hangs (no require_remote): admitted, recorded in the spool.
    let v2 = lab.vendor();
    let o = common::sshd::run(lab.ssh(&v2, &[]).arg("echo spooled-$((5*5))"), b"", Duration::from_secs(60));
    assert!(assert_ok("ssh while S3 hangs", &o).contains("spooled-25"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(std::path::Path::new(&path).exists(), "the recording left the spool while S3 hung");
    sw.thaw();
    let key = object_key(&path);
    let object = eventually("the backlog did not drain after S3 came back", Duration::from_secs(40), || {
        sw.object(&key).filter(|_| !std::path::Path::new(&path).exists())
    });
    assert!(String::from_utf8_lossy(&object).contains("during-hang-7"));
    let row = lab.sessions(false).into_iter().find(|r| r["id"] == id.as_str()).expect("session");
    assert_eq!(row["recording_sha256"].as_str(), Some(sha256_hex(&object).as_str()));
    let second = lab.ended_session(&v2.name);
    let key2 = object_key(second["recording_path"].as_str().expect("path"));
    eventually("the second recording did not drain", Duration::from_secs(30), || sw.object(&key2));

    // require_remote: S3 killed, new sessions are refused with a clear reason.
    let mut lab = lab;
    let mut strict = s3env.clone();
    strict.push(("PENSTOCK_RECORDINGS_REQUIRE_REMOTE".into(), "true".into()));
    lab.restart_gateway(&env_refs(&strict));
    let v3 = lab.vendor();
    let ok = common::sshd::run(lab.ssh(&v3, &[]).arg("echo admitted-$((2*4))"), b"", Duration::from_secs(60));
    assert!(assert_ok("ssh with S3 up", &ok).contains("admitted-8"));
    sw.stop();
    let refused = eventually("a session was admitted with S3 down and require_remote", Duration::from_secs(20), || {
        let v4 = lab.vendor();
        let o = common::sshd::run(lab.ssh(&v4, &[]).arg("echo leaked-$((3*3))"), b"", Duration::from_secs(60));
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (!text.contains("leaked-9")).then_some(text)
    });
    assert!(refused.contains("recording"), "{refused}");
    let log = lab.gateway_log();
    assert!(log.contains("require_remote"), "{log}");
    sw.start_again();
    eventually("sessions were not admitted again once S3 was back", Duration::from_secs(30), || {
        let v5 = lab.vendor();
        let o = common::sshd::run(lab.ssh(&v5, &[]).arg("echo back-$((4*4))"), b"", Duration::from_secs(60));
        String::from_utf8_lossy(&o.stdout).contains("back-16").then_some(())
    });
    let verified = lab.install.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
}

/// `GET http://127.0.0.1:PORT/PATH` with curl: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let o = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A metric's value on a node's `/metrics` page.
fn metric(port: u16, line_start: &str) -> Option<f64> {
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// Three gateways on one PostgreSQL, each serving sessions at the same time: the audit chain
/// stays one chain (no gaps, no forks, `audit verify` intact); each node's metrics count its
/// own sessions and logins; exactly one node runs the background jobs, and when it is killed
/// another takes them over.
#[test]
fn three_nodes_keep_one_chain_and_one_jobs_runner() {
    let ports: Vec<u16> = (0..3).map(|_| common::sshd::free_port()).collect();
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut lab = Lab::with(Backend::Postgres, "", &[("PENSTOCK_METRICS_LISTEN", listen[0].as_str())]);
    let b = Gateway::start_env(
        &lab.install,
        &[("PENSTOCK_NODE_ID_FILE", "node_id_b"), ("PENSTOCK_METRICS_LISTEN", listen[1].as_str())],
    );
    let c = Gateway::start_env(
        &lab.install,
        &[("PENSTOCK_NODE_ID_FILE", "node_id_c"), ("PENSTOCK_METRICS_LISTEN", listen[2].as_str())],
    );
    let ssh_ports = [lab.port(), b.port, c.port];
    for p in &ports {
        assert_eq!(http_get(*p, "/healthz").0, 200);
        let (code, body) = http_get(*p, "/readyz");
        assert_eq!(code, 200, "{body}");
    }

    // 8 sessions per node, all at once.
    const PER_NODE: usize = 8;
    let mut jobs = Vec::new();
    for (i, port) in ssh_ports.iter().enumerate() {
        for k in 0..PER_NODE {
            let v = lab.vendor();
            lab.use_port(*port);
            let mut cmd = lab.ssh(&v, &[]);
            cmd.arg(format!("echo node{i}-session{k}-$((6*7))"));
            jobs.push((format!("node{i}-session{k}-42"), cmd));
        }
    }
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(want, mut cmd)| {
            std::thread::spawn(move || {
                let o = common::sshd::run(&mut cmd, b"", Duration::from_secs(120));
                (want, o)
            })
        })
        .collect();
    for h in handles {
        let (want, o) = h.join().expect("thread");
        let out = assert_ok(&want, &o);
        assert!(out.contains(&want), "{out}");
    }

    // A client has its exit status before its session's end is audited (the recording is
    // hashed after the relay stops): wait for all of them, then read the whole chain.
    let ended_count = |events: &[Value]| events.iter().filter(|e| e["kind"] == "session.ended").count();
    let events = eventually("not every session's end was audited", Duration::from_secs(15), || {
        let events = lab.audit();
        (ended_count(&events) >= 3 * PER_NODE).then_some(events)
    });
    // One chain: consecutive sequence numbers, each linked to the one before.
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gaps or duplicates in the chain");
    for w in events.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"], "fork at seq {}", w[1]["seq"]);
    }
    let verified = lab.install.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
    assert_eq!(ended_count(&events), 3 * PER_NODE, "session.ended events");

    // Each node counted its own.
    for p in &ports {
        let closed = metric(*p, "penstock_sessions_ended_total{reason=\"closed\"}").unwrap_or(0.0);
        assert_eq!(closed as usize, PER_NODE, "node on metrics port {p}");
        let logins = metric(*p, "penstock_logins_total{result=\"succeeded\"}").unwrap_or(0.0);
        assert!(logins as usize >= PER_NODE, "logins on {p}: {logins}");
        assert_eq!(metric(*p, "penstock_sessions_live"), Some(0.0));
        assert_eq!(metric(*p, "penstock_recorder_backlog_batches"), Some(0.0), "recorder backlog on {p}");
        assert_eq!(metric(*p, "penstock_preauth_drops_total"), Some(0.0));
        assert!(metric(*p, "penstock_store_latency_seconds").is_some_and(|l| l > 0.0 && l < 5.0));
    }

    // Exactly one runs the jobs; kill it and another takes over.
    let leaders: Vec<usize> = (0..3).filter(|i| metric(ports[*i], "penstock_jobs_leader") == Some(1.0)).collect();
    assert_eq!(leaders.len(), 1, "nodes running the jobs: {leaders:?}");
    let listed: Vec<Value> = serde_json::from_str(&lab.install.ok(&["nodes", "--json"])).expect("nodes json");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed.iter().filter(|n| n["jobs"] == true).count(), 1, "{listed:?}");
    let dead = leaders[0];
    let mut gws = [None, Some(b), Some(c)];
    match dead {
        0 => lab.kill_gateway(),
        i => {
            if let Some(g) = gws[i].as_mut() {
                g.kill9();
            }
        }
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    let t0 = Instant::now();
    let next = eventually("no survivor took over the jobs", Duration::from_secs(15), || {
        survivors.iter().copied().find(|i| metric(ports[*i], "penstock_jobs_leader") == Some(1.0))
    });
    let other = survivors.iter().copied().find(|i| *i != next).expect("other");
    assert_eq!(metric(ports[other], "penstock_jobs_leader"), Some(0.0), "two nodes run the jobs");
    eprintln!("jobs moved from node {dead} to node {next} in {:?}", t0.elapsed());
    drop(gws);
}

/// The gateway's database goes away for a moment (connections refused and every existing one
/// cut, as by a PostgreSQL restart): readiness reports it; once the database is back the
/// signal listener resubscribes and catches up, so a kill issued right after the outage ends
/// the session without waiting for the 5 s poll; readiness recovers.
#[test]
fn a_store_outage_is_caught_up_when_listeners_resubscribe() {
    let mport = common::sshd::free_port();
    let listen = format!("127.0.0.1:{mport}");
    let lab = Lab::with(
        Backend::Postgres,
        "",
        &[("PENSTOCK_NODE_POLL_MS", "5000"), ("PENSTOCK_METRICS_LISTEN", listen.as_str())],
    );
    let v = lab.vendor();
    let s = Watched::spawn({
        let mut c = lab.ssh(&v, &[]);
        c.arg("echo UP; sleep 300");
        c
    });
    s.until("UP", Duration::from_secs(30));
    let live = lab.live_session(&v.name);
    let db = lab.install.pg_database().expect("postgres").to_string();
    let pg = common::postgres::server();
    pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    pg.psql(
        "postgres",
        &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    let why = eventually("readiness did not notice the outage", Duration::from_secs(15), || {
        let (code, body) = http_get(mport, "/readyz");
        (code == 503).then_some(body)
    });
    assert!(why.contains("store"), "{why}");
    pg.psql("postgres", &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    let t0 = Instant::now();
    lab.install.ok(&["session", "kill", live["id"].as_str().expect("id")]);
    s.until("ended by an administrator", Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(6), "the kill took {took:?} after the outage");
    let log = lab.gateway_log();
    assert!(log.contains("signal listener: reconnecting"), "{log}");
    eventually("readiness did not recover", Duration::from_secs(15), || {
        (http_get(mport, "/readyz").0 == 200).then_some(())
    });
    lab.finish();
}

/// A real HAProxy in front with `send-proxy-v2`: the gateway audits the vendor's own address
/// (the client binds 127.0.0.2; HAProxy connects from 127.0.0.1), a client not from a proxy
/// is served as a direct connection with its own address, and a connection from the proxy's
/// address without a header is refused.
#[test]
fn haproxy_in_front_passes_the_vendors_address() {
    let lab = Lab::with(Backend::Sqlite, "", &[("PENSTOCK_SSH_PROXY_FROM", "[\"127.0.0.1\"]")]);
    let front = common::sshd::free_port();
    let cfg = lab.install.scratch().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
             frontend vendors\n  bind 127.0.0.1:{front}\n  default_backend gateways\n\
             backend gateways\n  server gw1 127.0.0.1:{} send-proxy-v2\n",
            lab.port()
        ),
    )
    .expect("haproxy config");
    let mut hap = std::process::Command::new("haproxy");
    hap.arg("-db").arg("-f").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null());
    let mut hap = die_with_parent(&mut hap).spawn().expect("haproxy (Debian package haproxy)");
    eventually("haproxy did not listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", front)).ok().map(|_| ())
    });

    // Through HAProxy from 127.0.0.2.
    let mut lab = lab;
    let gw_port = lab.port();
    lab.use_port(front);
    let v = lab.vendor();
    let o =
        common::sshd::run(lab.ssh(&v, &["-b", "127.0.0.2"]).arg("echo via-$((2*21))"), b"", Duration::from_secs(60));
    assert!(assert_ok("ssh through haproxy", &o).contains("via-42"));
    let logins = lab.audit_events("login.succeeded");
    let mine = logins.iter().find(|e| e["details"]["user"] == v.name.as_str()).unwrap_or_else(|| panic!("{logins:?}"));
    assert_eq!(mine["details"]["source"], "127.0.0.2", "{mine}");
    let s = lab.ended_session(&v.name);
    assert!(s["client_addr"].as_str().unwrap_or("").starts_with("127.0.0.2"), "{s}");

    // Direct, not from a proxy: its own address.
    lab.use_port(gw_port);
    let v2 = lab.vendor();
    let o =
        common::sshd::run(lab.ssh(&v2, &["-b", "127.0.0.3"]).arg("echo direct-$((3*3))"), b"", Duration::from_secs(60));
    assert!(assert_ok("direct ssh", &o).contains("direct-9"));
    let logins = lab.audit_events("login.succeeded");
    let mine = logins.iter().find(|e| e["details"]["user"] == v2.name.as_str()).expect("login");
    assert_eq!(mine["details"]["source"], "127.0.0.3", "{mine}");

    // From the proxy's address without a header: refused before SSH begins.
    let v3 = lab.vendor();
    let o = common::sshd::run(lab.ssh(&v3, &["-b", "127.0.0.1"]).arg("echo leaked"), b"", Duration::from_secs(60));
    assert!(!o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("leaked"));
    eventually("no refusal in the log", Duration::from_secs(10), || {
        lab.gateway_log().contains("connection from a proxy refused").then_some(())
    });
    let _ = hap.kill();
    let _ = hap.wait();
    lab.finish();
}
