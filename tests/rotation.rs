//! Secret rotation end to end (issue #13): a real Debian `sshd` as the target, real local
//! accounts whose passwords and `authorized_keys` the gateway changes, the real `penstock serve`
//! and the real `ssh` client. Every test uses accounts of its own (`prot-*`), never the
//! harness's shared target account, so test binaries running in parallel are not disturbed.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{now, run, Answers, Lab, Running, Sshd, Vendor};
use common::{assert_ok, block_on, random_hex, ssh_keygen, Backend};
use serde_json::Value;

const POLICY: &str = r#"[policy]
name = "rotation-test"
[match]
targets = ["rot-*"]
[request]
roles = ["vendor"]
[approval]
approver_roles = ["manager"]
required = 1
[limits]
max_duration = "4h"
[rotation]
after_session = true
max_age = "30d"
password = { length = 20, alphabet = "alnum" }
"#;

/// `prot-NAME-s` / `prot-NAME-p`: one account per test and backend.
fn account_name(base: &str, b: Backend) -> String {
    format!("prot-{base}-{}", &b.name()[..1])
}

/// Creates the local account `name` (if missing) with `password` and an empty
/// `~/.ssh/authorized_keys`.
fn account(name: &str, password: &str) {
    common::sshd::require_root();
    let out = Command::new("useradd").args(["-m", "-s", "/bin/bash", name]).output().expect("useradd");
    assert!(out.status.success() || out.status.code() == Some(9), "useradd {name}: {}", common::stderr(&out));
    set_password(name, password);
    let ssh = Path::new("/home").join(name).join(".ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir .ssh");
    std::fs::write(ssh.join("authorized_keys"), "").expect("authorized_keys");
    let out = Command::new("chown").arg("-R").arg(format!("{name}:{name}")).arg(&ssh).output().expect("chown");
    assert!(out.status.success());
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let _ = std::fs::remove_file(Path::new("/home").join(name).join(".bash_history"));
}

fn set_password(name: &str, password: &str) {
    for _ in 0..20 {
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chpasswd");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(format!("{name}:{password}\n").as_bytes()).expect("write");
        if child.wait().expect("wait").success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("chpasswd {name} failed");
}

/// The account's password hash in /etc/shadow.
fn shadow_hash(name: &str) -> String {
    let text = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|r| r.split(':').next().unwrap_or("").to_string()))
        .unwrap_or_else(|| panic!("{name} not in /etc/shadow"))
}

/// Whether the real `ssh` logs in to the target sshd directly as `user` with `password` (given
/// to the askpass helper through the environment, so it is never written to disk).
fn password_login(dir: &Path, port: u16, user: &str, password: &str) -> bool {
    let askpass = dir.join("askpass-env.sh");
    if !askpass.exists() {
        std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$PENSTOCK_TEST_PW\"\n").expect("askpass");
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let mut c = Command::new("ssh");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", dir)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env("PENSTOCK_TEST_PW", password)
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR", "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10", "-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg("true");
    run(&mut c, b"", Duration::from_secs(30)).status.success()
}

/// Whether the real `ssh` logs in directly with the private key file `key`.
fn key_login(dir: &Path, port: u16, user: &str, key: &Path) -> bool {
    let mut c = Command::new("ssh");
    c.env("HOME", dir)
        .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"])
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .arg("true");
    run(&mut c, b"", Duration::from_secs(30)).status.success()
}

/// The vaulted active secret of `target`, read through the library as the gateway would.
fn vaulted(lab: &Lab, target: &str) -> Vec<u8> {
    block_on(async {
        let app = lab.install.app().await;
        let t = penstock::targets::get(&app, target).await.expect("target");
        let s = penstock::targets::credential(&app, &t).await.expect("credential");
        app.store.close().await;
        s.expose().to_vec()
    })
}

/// `secrets report --json`, by target name.
fn report(lab: &Lab) -> Vec<Value> {
    match lab.install.json(&["secrets", "report", "--json"]) {
        Value::Array(a) => a,
        other => panic!("report is not an array: {other}"),
    }
}

fn entry(lab: &Lab, target: &str) -> Value {
    report(lab).into_iter().find(|e| e["target"] == target).unwrap_or_else(|| panic!("{target} not in report"))
}

/// Waits until the active version of `target` is `version` or later.
#[track_caller]
fn wait_version(lab: &Lab, target: &str, version: i64) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let e = entry(lab, target);
        if e["version"].as_i64().is_some_and(|v| v >= version) {
            return e;
        }
        assert!(
            Instant::now() < end,
            "{target} did not reach version {version}: {e}\ngateway log:\n{}",
            lab.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Adds the password target `name` for `login` on `sshd`.
fn add_password_target(lab: &Lab, name: &str, sshd: &Sshd, login: &str, password: &str) {
    lab.add_secret(password);
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            name,
            "--address",
            &sshd.address(),
            "--login",
            login,
            "--password-stdin",
            "--host-key",
            &sshd.host_key,
        ],
        format!("{password}\n").as_bytes(),
    );
}

/// Runs `id -un` on `target` through the gateway as `v` answering with `code`; returns its output.
#[track_caller]
fn vendor_session(lab: &Lab, v: &Vendor, target: &str, code: String) -> String {
    let mut c = lab.client_with("ssh", &Answers { password: v.password.clone(), code }, None);
    c.arg(format!("{}@127.0.0.1", v.login(target))).arg("id -un");
    let out = run(&mut c, b"", Duration::from_secs(60));
    assert_ok(&format!("session of {} on {target}", v.name), &out).trim().to_string()
}

fn audit_kinds(lab: &Lab) -> Vec<(String, String)> {
    lab.audit()
        .into_iter()
        .map(|r| (r["kind"].as_str().unwrap_or("").to_string(), r["actor"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The secret must be nowhere on disk but in the vault's ciphertext: not in the installation's
/// files (database, WAL, logs, recordings), not in anything penstock printed, not in the audit
/// export, not in the target's shell history or sshd log.
#[track_caller]
fn nowhere(lab: &Lab, sshd: &Sshd, login: &str, secret: &[u8]) {
    let found = lab.install.find_secret(secret);
    assert!(found.is_empty(), "rotated secret found in {found:?}");
    let audit = lab.install.ok(&["audit", "export", "--format", "jsonl"]);
    assert!(!common::contains(audit.as_bytes(), secret), "rotated secret in the audit export");
    assert!(!common::contains(sshd.log().as_bytes(), secret), "rotated secret in the sshd log");
    let hist = std::fs::read(Path::new("/home").join(login).join(".bash_history")).unwrap_or_default();
    assert!(!common::contains(&hist, secret), "rotated secret in the target's shell history");
}

fn password_rotates_after_each_session(b: Backend) {
    let login = account_name("pw", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    account(&login, &initial);
    let sshd = Sshd::start_custom(false, &login, None, "");
    let lab = Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[]);
    add_password_target(&lab, "rot-pw", &sshd, &login, &initial);
    let dir = lab.install.scratch();
    assert!(password_login(&dir, sshd.port, &login, &initial), "the initial password must work before rotation");
    let before = shadow_hash(&login);

    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "rot-pw", "2h");
    assert_eq!(vendor_session(&lab, &v, "rot-pw", v.code()), login);
    let e = wait_version(&lab, "rot-pw", 2);
    assert!(e["last_rotation"].as_i64().is_some(), "{e}");
    assert_eq!(e["failures"], 0, "{e}");

    let new = vaulted(&lab, "rot-pw");
    let new_text = String::from_utf8(new.clone()).expect("utf-8 password");
    assert_eq!(new_text.len(), 20, "the policy asks for 20 characters");
    assert!(new_text.bytes().all(|c| c.is_ascii_alphanumeric()), "the policy asks for alnum");
    assert_ne!(shadow_hash(&login), before, "the account's password hash must have changed");
    assert!(!password_login(&dir, sshd.port, &login, &initial), "sshd must refuse the old password");
    assert!(password_login(&dir, sshd.port, &login, &new_text), "sshd must accept the vaulted new password");

    // The vendor's next session works without their noticing (next TOTP step), and rotates again.
    assert_eq!(vendor_session(&lab, &v, "rot-pw", v.code_at(now() + 30)), login);
    wait_version(&lab, "rot-pw", 3);
    let newer = String::from_utf8(vaulted(&lab, "rot-pw")).expect("utf-8");
    assert_ne!(newer, new_text);
    assert!(!password_login(&dir, sshd.port, &login, &new_text), "version 2 must be dead after version 3");
    assert!(password_login(&dir, sshd.port, &login, &newer));

    let kinds = audit_kinds(&lab);
    let count = |k: &str| kinds.iter().filter(|(kind, actor)| kind == k && actor == "rotation").count();
    assert_eq!(count("target.rotation_started"), 2, "{kinds:?}");
    assert_eq!(count("target.secret_rotated"), 2, "{kinds:?}");
    assert_eq!(count("target.rotation_failed"), 0, "{kinds:?}");
    for s in [&new_text, &newer] {
        nowhere(&lab, &sshd, &login, s.as_bytes());
    }
    lab.finish();
}

fn key_rotates_after_session(b: Backend) {
    let login = account_name("key", b);
    account(&login, &format!("Unused-{}", random_hex(8)));
    let sshd = Sshd::start_custom(false, &login, Some(".ssh/authorized_keys"), "");
    let lab = Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[]);
    let dir = lab.install.scratch();
    let old_key = dir.join("old_key");
    let old_pub = ssh_keygen(&old_key, "initial");
    let ak = Path::new("/home").join(&login).join(".ssh/authorized_keys");
    std::fs::write(&ak, format!("{old_pub}\n")).expect("authorized_keys");
    let out = Command::new("chown").arg(format!("{login}:{login}")).arg(&ak).output().expect("chown");
    assert!(out.status.success());
    assert!(key_login(&dir, sshd.port, &login, &old_key), "the initial key must work before rotation");
    lab.install.ok(&[
        "target",
        "add",
        "rot-key",
        "--address",
        &sshd.address(),
        "--login",
        &login,
        "--key-file",
        &old_key.display().to_string(),
        "--host-key",
        &sshd.host_key,
    ]);

    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "rot-key", "2h");
    assert_eq!(vendor_session(&lab, &v, "rot-key", v.code()), login);
    wait_version(&lab, "rot-key", 2);

    let pem = vaulted(&lab, "rot-key");
    let new_key = penstock::keys::parse_private_key(&pem).expect("vaulted key parses");
    let new_pub = penstock::keys::to_openssh(new_key.public_key());
    assert!(new_pub.starts_with("ssh-ed25519 "), "{new_pub}");
    let ak_text = std::fs::read_to_string(&ak).expect("authorized_keys");
    let old_blob = old_pub.split_whitespace().nth(1).expect("blob");
    let new_blob = new_pub.split_whitespace().nth(1).expect("blob");
    assert!(ak_text.contains(new_blob), "new key not in authorized_keys:\n{ak_text}");
    assert!(!ak_text.contains(old_blob), "old key still in authorized_keys:\n{ak_text}");
    assert!(!key_login(&dir, sshd.port, &login, &old_key), "sshd must refuse the old key");
    // The new key logs in: the vendor's next session goes through with it.
    assert_eq!(vendor_session(&lab, &v, "rot-key", v.code_at(now() + 30)), login);
    wait_version(&lab, "rot-key", 3);
    let kinds = audit_kinds(&lab);
    assert!(kinds.iter().any(|(k, a)| k == "target.secret_rotated" && a == "rotation"), "{kinds:?}");
    nowhere(&lab, &sshd, &login, &pem);
    lab.finish();
}

/// Waits for the pause hook; then until passwd has written the new hash.
#[track_caller]
fn wait_paused_after_change(lab: &Lab, pause: &Path, login: &str, before: &str) {
    let reached = pause.with_extension("reached");
    let end = Instant::now() + Duration::from_secs(60);
    while !reached.exists() {
        assert!(Instant::now() < end, "rotation never reached the pause\ngateway log:\n{}", lab.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&reached).expect("reached"), "after_change");
    while shadow_hash(login) == before {
        assert!(Instant::now() < end, "the target never took the new password");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills every process running as `login` (its sshd session process: the gateway's connection
/// to the target drops).
fn drop_connections_of(login: &str) {
    let out = Command::new("id").args(["-u", login]).output().expect("id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
        if real == Some(uid.as_str()) {
            // SAFETY: kill(2) on a process of the test's own throw-away account.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn interrupted_by_kill9_recovers(b: Backend) {
    let login = account_name("int", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    account(&login, &initial);
    let sshd = Sshd::start_custom(false, &login, None, "");
    let tmp = tempfile::tempdir().expect("tmp");
    let pause = tmp.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    let pause_env = pause.display().to_string();
    let mut lab =
        Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[("PENSTOCK_TEST_ROTATION_PAUSE", pause_env.as_str())]);
    add_password_target(&lab, "rot-int", &sshd, &login, &initial);
    let dir = lab.install.scratch();
    let before = shadow_hash(&login);
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "rot-int", "2h");
    assert_eq!(vendor_session(&lab, &v, "rot-int", v.code()), login);

    // The target accepted the new password; the vault has not committed it: kill -9 now.
    wait_paused_after_change(&lab, &pause, &login, &before);
    lab.kill_gateway();
    std::fs::remove_file(&pause).expect("unpause");
    assert!(!password_login(&dir, sshd.port, &login, &initial), "the target must have taken the new password");
    assert_eq!(vaulted(&lab, "rot-int"), initial.as_bytes(), "the vault must not have committed it yet");
    let e = entry(&lab, "rot-int");
    assert_eq!(e["unsettled"], serde_json::json!([2]), "{e}");

    // The next attempt finds the candidate that works, then rotates.
    let out = lab.install.ok(&["target", "rotate", "rot-int"]);
    assert!(out.contains("version 2 promoted"), "{out}");
    assert!(out.contains("rotated to version 3"), "{out}");
    let current = String::from_utf8(vaulted(&lab, "rot-int")).expect("utf-8");
    assert!(password_login(&dir, sshd.port, &login, &current), "the target must be reachable with the vaulted secret");
    let kinds = audit_kinds(&lab);
    assert!(kinds.iter().any(|(k, _)| k == "target.rotation_recovered"), "{kinds:?}");
    assert_eq!(entry(&lab, "rot-int")["unsettled"], serde_json::json!([]));
    nowhere(&lab, &sshd, &login, current.as_bytes());
    lab.finish();
}

fn dropped_connection_recovers(b: Backend) {
    let login = account_name("drop", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    account(&login, &initial);
    let sshd = Sshd::start_custom(false, &login, None, "");
    let tmp = tempfile::tempdir().expect("tmp");
    let pause = tmp.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    let pause_env = pause.display().to_string();
    let lab =
        Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[("PENSTOCK_TEST_ROTATION_PAUSE", pause_env.as_str())]);
    add_password_target(&lab, "rot-drop", &sshd, &login, &initial);
    let dir = lab.install.scratch();
    let before = shadow_hash(&login);
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "rot-drop", "2h");
    assert_eq!(vendor_session(&lab, &v, "rot-drop", v.code()), login);

    // The target took the new password; its connection drops before passwd's answer arrives.
    wait_paused_after_change(&lab, &pause, &login, &before);
    // A session that starts now waits for the rotation to finish, then uses the new password.
    let w = lab.vendor_without_grant();
    lab.grant(&w.name, "rot-drop", "2h");
    let mut c = lab.client_with("ssh", &Answers { password: w.password.clone(), code: w.code() }, None);
    c.arg(format!("{}@127.0.0.1", w.login("rot-drop"))).arg("id -un");
    let mut waiting = Running::spawn(&mut c);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.alive(), "the new session must wait while the rotation runs");
    assert!(lab.sessions(true).is_empty(), "no session may start during the rotation");
    drop_connections_of(&login);
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(&pause).expect("unpause");
    let e = wait_version(&lab, "rot-drop", 2);
    assert_eq!(e["failures"], 0, "{e}");
    let log = lab.gateway_log();
    assert!(log.contains("finding out which password works"), "passwd's answer must have been lost:\n{log}");
    let out = waiting.wait(Duration::from_secs(60)).expect("the waiting session ends");
    assert_eq!(assert_ok("the session that waited", &out).trim(), login);
    // Its end rotates again; then the vaulted secret is the one the target takes.
    wait_version(&lab, "rot-drop", 3);
    let current = String::from_utf8(vaulted(&lab, "rot-drop")).expect("utf-8");
    assert!(password_login(&dir, sshd.port, &login, &current));
    assert!(!password_login(&dir, sshd.port, &login, &initial));
    lab.finish();
}

/// A PAM rule for the rejecting accounts only: `pam_unix` with `minlen=40` in front of the
/// usual stack, so `passwd` refuses the 20-character password the policy generates.
fn install_pam_rule() {
    const MARK: &str = "# penstock rotation test";
    let path = "/etc/pam.d/passwd";
    let text = std::fs::read_to_string(path).expect("read /etc/pam.d/passwd");
    if text.contains(MARK) {
        return;
    }
    let rule = format!(
        "{MARK}: passwords of these accounts need 40 characters\n\
         password [success=ignore default=1] pam_succeed_if.so quiet user in prot-bad-s:prot-bad-p\n\
         password requisite pam_unix.so obscure yescrypt minlen=40\n"
    );
    std::fs::write(path, format!("{rule}{text}")).expect("write /etc/pam.d/passwd");
}

/// A webhook receiver: answers 200 to each POST and keeps its JSON body.
fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}/hook", l.local_addr().expect("addr").port());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            // The sender closes nothing before our answer: read until the body is complete.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                let len: usize = head
                    .lines()
                    .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    if let Ok(v) = serde_json::from_str::<Value>(&body[..len]) {
                        keep.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn rejected_password_keeps_the_old_one(b: Backend) {
    install_pam_rule();
    let login = account_name("bad", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    account(&login, &initial);
    let sshd = Sshd::start_custom(false, &login, None, "");
    let (url, posted) = webhook();
    let hooks = format!("[\"{url}\"]");
    let lab =
        Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[("PENSTOCK_NOTIFICATIONS_WEBHOOKS", hooks.as_str())]);
    // The CLI reads the file (the gateway got the same through its environment).
    let cfg = std::fs::read_to_string(lab.install.config_path()).expect("config");
    assert!(cfg.contains("\nwebhooks = []\n"), "{cfg}");
    std::fs::write(lab.install.config_path(), cfg.replace("\nwebhooks = []\n", &format!("\nwebhooks = {hooks}\n")))
        .expect("config");
    add_password_target(&lab, "rot-bad", &sshd, &login, &initial);
    let dir = lab.install.scratch();
    let before = shadow_hash(&login);
    let msg = lab.install.fails(&["target", "rotate", "rot-bad"]);
    assert!(msg.contains("rotation of rot-bad failed at change") && msg.contains("refused the new password"), "{msg}");
    assert!(msg.to_lowercase().contains("longer"), "the device's reason must be shown: {msg}");
    assert_eq!(shadow_hash(&login), before, "the password must be unchanged");
    assert_eq!(vaulted(&lab, "rot-bad"), initial.as_bytes(), "the vault keeps the old one");
    assert!(password_login(&dir, sshd.port, &login, &initial));
    let e = entry(&lab, "rot-bad");
    assert_eq!(e["version"], 1, "{e}");
    assert_eq!(e["failures"], 1, "{e}");
    assert!(e["last_error"].as_str().is_some_and(|s| s.starts_with("change:")), "{e}");
    assert!(e["next_retry"].as_i64().is_some_and(|t| t > now()), "{e}");
    let text = lab.install.ok(&["secrets", "report"]);
    assert!(text.contains("last failure: change:"), "{text}");
    let kinds = audit_kinds(&lab);
    assert!(kinds.iter().any(|(k, a)| k == "target.rotation_failed" && a == "cli"), "{kinds:?}");
    let failed_posts = |n: usize| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Value> = posted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|v| v["kind"] == "rotation.failed")
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let got = failed_posts(1);
    assert_eq!(got.len(), 1, "the CLI's failure must reach the webhook before it exits: {got:?}");
    assert_eq!(got[0]["data"]["target"], "rot-bad", "{got:?}");
    assert_eq!(got[0]["data"]["stage"], "change", "{got:?}");

    // The vendor still gets in with the old password; the rotation after the session fails the
    // same way in the gateway, is posted too, and the backoff grows.
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "rot-bad", "2h");
    assert_eq!(vendor_session(&lab, &v, "rot-bad", v.code()), login);
    let got = failed_posts(2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1]["text"].as_str().is_some_and(|t| t.contains("retry at")), "{got:?}");
    let e = entry(&lab, "rot-bad");
    assert_eq!(e["failures"], 2, "{e}");
    assert!(e["next_retry"].as_i64().is_some_and(|t| t > now() + 90), "second retry waits longer: {e}");
    assert!(password_login(&dir, sshd.port, &login, &initial));
    for p in posted.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        assert!(!p.to_string().contains(&initial), "a secret in a webhook: {p}");
    }
    lab.finish();
}

fn report_shows_ages_and_shared_secrets(b: Backend) {
    let (a, c) = (account_name("sha", b), account_name("shb", b));
    let shared = format!("Shared-Spreadsheet-{}", random_hex(6));
    account(&a, &shared);
    account(&c, &shared);
    let sshd = Sshd::start_custom(false, &format!("{a} {c}"), None, "");
    let lab = Lab::new(b);
    add_password_target(&lab, "shared-a", &sshd, &a, &shared);
    add_password_target(&lab, "shared-b", &sshd, &c, &shared);
    let v = lab.vendor_without_grant();
    lab.grant(&v.name, "shared-b", "2h");
    assert_eq!(vendor_session(&lab, &v, "shared-b", v.code()), c);

    let ea = entry(&lab, "shared-a");
    let eb = entry(&lab, "shared-b");
    assert_eq!(ea["shared_with"], serde_json::json!(["shared-b"]), "{ea}");
    assert_eq!(eb["shared_with"], serde_json::json!(["shared-a"]), "{eb}");
    assert!(ea["age_secs"].as_i64().is_some_and(|s| (0..600).contains(&s)), "{ea}");
    assert!(ea["last_rotation"].is_null() && ea["last_use"].is_null(), "{ea}");
    assert_eq!(eb["used_by"], serde_json::json!([v.name]), "{eb}");
    assert!(eb["last_use"].as_i64().is_some(), "{eb}");
    let text = lab.install.ok(&["secrets", "report"]);
    assert!(text.contains("SHARED WITH") && text.contains("share a secret"), "{text}");

    // On demand: prints the version, never the secret; the reuse is gone.
    let out = lab.install.ok(&["target", "rotate", "shared-a"]);
    assert!(out.contains("rotated to version 2"), "{out}");
    let new = vaulted(&lab, "shared-a");
    assert!(!common::contains(out.as_bytes(), &new));
    assert!(password_login(&lab.install.scratch(), sshd.port, &a, std::str::from_utf8(&new).expect("utf-8")));
    assert!(!password_login(&lab.install.scratch(), sshd.port, &a, &shared));
    let ea = entry(&lab, "shared-a");
    assert_eq!(ea["shared_with"], serde_json::json!([]), "{ea}");
    assert!(ea["last_rotation"].as_i64().is_some(), "{ea}");
    assert_eq!(entry(&lab, "shared-b")["shared_with"], serde_json::json!([]));
    // Targets of no rotation policy are not rotated after sessions.
    assert_eq!(entry(&lab, "shared-b")["version"], 1);
    nowhere(&lab, &sshd, &a, &new);
    lab.finish();
}

/// `max_age` goes by the injected clock: with the clock 31 days ahead the scheduler's pass
/// rotates the 30-day policy's target, and the report calls its secret old before that.
fn max_age_rotates_by_the_injected_clock(b: Backend) {
    let login = account_name("age", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    account(&login, &initial);
    let sshd = Sshd::start_custom(false, &login, None, "");
    let lab = Lab::with_options(b, &[("00-rotation.toml", POLICY)], &[]);
    add_password_target(&lab, "rot-age", &sshd, &login, &initial);
    let dir = lab.install.scratch();
    let e = entry(&lab, "rot-age");
    assert_eq!(e["max_age_secs"], 30 * 86400, "{e}");
    assert_eq!(e["overdue"], false, "{e}");
    block_on(async {
        let mut app = lab.install.app().await;
        let clock = std::sync::Arc::new(penstock::clock::ManualClock::new(now()));
        app.clock = clock.clone();
        app.load_policies().expect("policies");
        // Young: nothing to do.
        penstock::rotation::run_due(&app).await.expect("pass");
        let young = penstock::rotation::report::build(&app).await.expect("report");
        let young = young.iter().find(|e| e.target == "rot-age").expect("entry");
        assert_eq!(young.version, Some(1));
        clock.advance(31 * 86400);
        let old = penstock::rotation::report::build(&app).await.expect("report");
        let old = old.iter().find(|e| e.target == "rot-age").expect("entry");
        assert!(old.overdue && old.age_secs.is_some_and(|a| a >= 31 * 86400), "{old:?}");
        penstock::rotation::run_due(&app).await.expect("pass");
        let after = penstock::rotation::report::build(&app).await.expect("report");
        let after = after.iter().find(|e| e.target == "rot-age").expect("entry");
        assert_eq!(after.version, Some(2), "{after:?}");
        assert!(!after.overdue && after.age_secs == Some(0), "{after:?}");
        app.store.close().await;
    });
    let new = String::from_utf8(vaulted(&lab, "rot-age")).expect("utf-8");
    assert!(password_login(&dir, sshd.port, &login, &new));
    assert!(!password_login(&dir, sshd.port, &login, &initial));
    let started: Vec<Value> = lab.audit_events("target.rotation_started");
    assert!(started.iter().any(|r| r["details"]["reason"] == "max_age"), "{started:?}");
    lab.finish();
}

/// For accounts that cannot change their own password (here: `chage -m 99999`, so `passwd`
/// refuses), a separate admin account changes it with `sudo -n chpasswd`, the password on the
/// command's standard input.
fn admin_account_changes_the_password(b: Backend) {
    let login = account_name("own", b);
    let admin = account_name("adm", b);
    let initial = format!("Rot-Initial-{}", random_hex(6));
    let admin_pw = format!("Rot-Admin-{}", random_hex(6));
    account(&login, &initial);
    account(&admin, &admin_pw);
    let out = Command::new("chage").args(["-m", "99999", &login]).output().expect("chage");
    assert!(out.status.success(), "chage: {}", common::stderr(&out));
    let sudoers = format!("{admin} ALL=(root) NOPASSWD: /usr/sbin/chpasswd\n");
    let path = format!("/etc/sudoers.d/penstock-rotation-test-{admin}");
    std::fs::write(&path, sudoers).expect("sudoers");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    let sshd = Sshd::start_custom(false, &format!("{login} {admin}"), None, "");
    let policy = POLICY
        .replace("\"rot-*\"", "\"own-*\"")
        .replace("rotation-test", "rotation-admin-test")
        .replace("[rotation]\n", "[rotation]\nadmin = \"root-{target}\"\ncommand = \"sudo -n /usr/sbin/chpasswd\"\n");
    let lab = Lab::with_options(b, &[("00-rotation.toml", policy.as_str())], &[]);
    add_password_target(&lab, "own-plc", &sshd, &login, &initial);
    add_password_target(&lab, "root-own-plc", &sshd, &admin, &admin_pw);
    let dir = lab.install.scratch();
    let before = shadow_hash(&login);
    let out = lab.install.ok(&["target", "rotate", "own-plc"]);
    assert!(out.contains("rotated to version 2"), "{out}");
    assert_ne!(shadow_hash(&login), before);
    let new = String::from_utf8(vaulted(&lab, "own-plc")).expect("utf-8");
    assert!(password_login(&dir, sshd.port, &login, &new));
    assert!(!password_login(&dir, sshd.port, &login, &initial));
    // The admin account's own secret is untouched.
    assert_eq!(entry(&lab, "root-own-plc")["version"], 1);
    assert!(password_login(&dir, sshd.port, &admin, &admin_pw));
    nowhere(&lab, &sshd, &login, new.as_bytes());
    let _ = std::fs::remove_file(&path);
    lab.finish();
}

backend_tests! {
    fn admin_account_changes_the_password;
    fn max_age_rotates_by_the_injected_clock;
    fn password_rotates_after_each_session;
    fn key_rotates_after_session;
    fn interrupted_by_kill9_recovers;
    fn dropped_connection_recovers;
    fn rejected_password_keeps_the_old_one;
    fn report_shows_ages_and_shared_secrets;
}
