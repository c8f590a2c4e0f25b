//! Several gateways on one PostgreSQL (the scale-out issue), with real parts: two
//! `penstock serve` processes with their own node ids on the harness's PostgreSQL, a real
//! `sshd` target and the real `ssh` client.
//!
//! The tests must run as root (see tests/common/sshd.rs).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::sshd::{die_with_parent, wait_timeout, Gateway, Lab};
use common::{assert_fails, assert_ok, Backend};
use serde_json::Value;

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
    let mut env_a = FAST.to_vec();
    env_a.push(("PENSTOCK_NODE_NAME", "node-a"));
    let mut lab = Lab::with(Backend::Postgres, "", &env_a);
    let b = Gateway::start_env(&lab.install, &node_b_env());
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
    std::thread::sleep(Duration::from_millis(1500)); // the keystrokes reach the recording
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
    assert!(closed.contains("recording_sha256\":\""), "the survivor hashed the reachable recording: {closed}");
    let verified = lab.install.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
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

    // A comes back: nothing of its own is left open, nothing is closed twice.
    lab.restart_gateway(&env_a);
    let log = lab.gateway_log();
    assert!(!log.contains("recovered what an earlier run"), "{log}");
    let again = lab.install.ok(&["audit", "export"]);
    let closes = again.lines().filter(|l| l.contains("\"session.interrupted\"") && l.contains(&id)).count();
    assert_eq!(closes, 1, "{again}");
    assert!(nodes(&lab).iter().all(|n| n["state"] == "alive"));
    lab.finish();
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
