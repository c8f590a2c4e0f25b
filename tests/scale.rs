//! Several gateways on one PostgreSQL (the scale-out issue), with real parts: two
//! `penstock serve` processes with their own node ids on the harness's PostgreSQL, a real
//! `sshd` target and the real `ssh` client.
//!
//! The tests must run as root (see tests/common/sshd.rs).

#[macro_use]
mod common;

use std::io::Write;
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
