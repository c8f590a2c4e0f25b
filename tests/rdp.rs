//! The RDP front end end to end, with real parts from Debian: the target is
//! `freerdp-shadow-cli` with NLA (a SAM file made by `winpr-hash`) shadowing an Xvfb display,
//! the vendor is `xfreerdp` under another Xvfb display, and the gateway is the real
//! `penstock serve` on an installation made by `penstock init`. Grants come from the real
//! request/approve workflow (through the library, on the same database).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{die_with_parent, free_port, wait_timeout, Gateway};
use common::{assert_ok, Backend, Install};
use penstock::access::requests::{self, Ask};
use penstock::users::{self, NewUser, Role};

const TARGET: &str = "hmi-line3";
const LOGIN: &str = "maint";
const VAULT_PW: &str = "Vaulted-Rdp-Pw-8832";

const POLICY: &str = r#"
[policy]
name = "hmi"

[match]
targets = ["hmi-*"]

[request]
roles = ["vendor"]

[approval]
approver_roles = ["manager"]
required = 1

[limits]
max_duration = "4h"
"#;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An Xvfb display of its own.
struct Display {
    num: u32,
    _p: Proc,
    _out: std::process::ChildStdout,
}

impl Display {
    /// Xvfb picks a free display number and writes it to `-displayfd` once it accepts clients.
    fn start() -> Display {
        use std::io::BufRead;
        let mut child = die_with_parent(
            Command::new("Xvfb")
                .args(["-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .spawn()
        .expect("cannot run Xvfb (package xvfb)");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("Xvfb display number");
        let num = line.trim().parse().unwrap_or_else(|_| panic!("Xvfb said {line:?}"));
        // Kept open: Xvfb must never write into a closed pipe.
        Display { num, _p: Proc(child), _out: out.into_inner() }
    }

    fn env(&self) -> String {
        format!(":{}", self.num)
    }
}

/// `freerdp-shadow-cli` with NLA for `LOGIN`/`VAULT_PW` on its own display.
struct Shadow {
    port: u16,
    home: PathBuf,
    log: PathBuf,
    _p: Proc,
    _d: Display,
}

impl Shadow {
    fn start(dir: &Path) -> Shadow {
        let d = Display::start();
        let home = dir.join("shadow-home");
        std::fs::create_dir_all(&home).expect("home");
        let sam = dir.join("sam");
        let out =
            Command::new("winpr-hash").args(["-u", LOGIN, "-p", VAULT_PW, "-f", "sam"]).output().expect("winpr-hash");
        assert!(out.status.success(), "winpr-hash: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&sam, &out.stdout).expect("sam");
        let port = free_port();
        let log = dir.join("shadow.log");
        // A fresh Xvfb sometimes refuses its very first clients: the shadow server exits with
        // "failed to open display"; it is started again (on the same display) until it listens.
        let end = Instant::now() + Duration::from_secs(30);
        let child = 'started: loop {
            let child = die_with_parent(
                Command::new("freerdp-shadow-cli")
                    .args([
                        "/bind-address:127.0.0.1".to_string(),
                        format!("/port:{port}"),
                        "/sec:nla".into(),
                        format!("/sam-file:{}", sam.display()),
                    ])
                    .env("DISPLAY", d.env())
                    .env("HOME", &home)
                    .stdout(std::fs::File::create(&log).expect("log"))
                    .stderr(std::fs::File::create(dir.join("shadow.err")).expect("log")),
            )
            .spawn()
            .expect("cannot run freerdp-shadow-cli (package freerdp2-shadow-x11)");
            let mut child = Proc(child);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break 'started child;
                }
                assert!(
                    Instant::now() < end,
                    "shadow server on display {} did not listen: {}{}",
                    d.env(),
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("shadow.err")).unwrap_or_default()
                );
                if child.0.try_wait().expect("try_wait").is_some() {
                    std::thread::sleep(Duration::from_millis(300));
                    continue 'started;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        Shadow { port, home, log, _p: child, _d: d }
    }

    /// SHA-256 of its certificate, as `openssl x509 -fingerprint -sha256` prints it.
    fn thumbprint(&self) -> String {
        let crt = self.home.join(".config/freerdp/shadow/shadow.crt");
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&crt)
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.trim().rsplit('=').next().unwrap_or_default().to_uppercase()
    }
}

/// The installation, gateway, target and people of a test.
struct Lab {
    i: Install,
    gw: Gateway,
    shadow: Shadow,
    client_display: Display,
}

impl Lab {
    /// An installation with alice (vendor), mia (manager), bob (vendor), the policy, and the
    /// shadow server as target `TARGET` added with `target_args` (cert pinning flags).
    fn new(pin: Option<&str>) -> Lab {
        let i = Install::new(Backend::Sqlite);
        let shadow = Shadow::start(&i.scratch());
        let pdir = i.dir().join("policies");
        std::fs::create_dir_all(&pdir).expect("policies");
        std::fs::write(pdir.join("00-hmi.toml"), POLICY).expect("policy");
        let mut args = vec![
            "target".to_string(),
            "add".into(),
            TARGET.into(),
            "--protocol".into(),
            "rdp".into(),
            "--address".into(),
            format!("127.0.0.1:{}", shadow.port),
            "--login".into(),
            LOGIN.into(),
            "--password-stdin".into(),
        ];
        match pin {
            Some(p) => args.extend(["--cert-sha256".to_string(), p.to_string()]),
            None => args.push("--fetch-cert".into()),
        }
        let out = i.ok_stdin(&args, format!("{VAULT_PW}\n").as_bytes());
        if pin.is_none() {
            assert!(out.contains(&shadow.thumbprint()), "--fetch-cert prints the target's thumbprint: {out}");
        }
        common::block_on(async {
            let app = i.app().await;
            for (name, role) in [("alice", Role::Vendor), ("bob", Role::Vendor), ("mia", Role::Manager)] {
                let nu = NewUser { name: name.into(), role, org: None, expires_at: None, password: None };
                users::add(&app, "test", nu).await.expect("user");
            }
        });
        let gw = Gateway::start(&i);
        Lab { i, gw, shadow, client_display: Display::start() }
    }

    /// alice asks, mia approves: the grant id and its one-time credential.
    fn grant(&self, who: &str) -> (i64, String) {
        self.grant_on(who, TARGET)
    }

    /// `who` asks for `target`, mia approves: the grant id and its one-time credential.
    fn grant_on(&self, who: &str, target: &str) -> (i64, String) {
        common::block_on(async {
            let app = self.i.app().await;
            app.load_policies().expect("policies");
            let u = users::get(&app, who).await.expect("user");
            let ask = Ask { target: target.into(), duration: 3600, reason: "CHG-77 HMI update".into(), start: None };
            let r = requests::create(&app, &u, &ask).await.expect("request");
            let mia = users::get(&app, "mia").await.expect("mia");
            let r = requests::approve(&app, &mia, r.id, None).await.expect("approve");
            let gid = r.grant_id.expect("grant");
            let c = requests::grant_credential(&app, gid).await.expect("credential").expect("issued");
            (gid, c.expose_str().expect("utf-8").to_string())
        })
    }

    fn xfreerdp(&self, user: &str, password: &str, extra: &[&str]) -> Command {
        let home = self.i.scratch().join("client-home");
        std::fs::create_dir_all(&home).expect("client home");
        let mut c = Command::new("xfreerdp");
        c.args([
            format!("/v:127.0.0.1:{}", self.gw.rdp_port),
            format!("/u:{user}"),
            format!("/p:{password}"),
            "/cert:ignore".into(),
            "/sec:nla".into(),
        ])
        .args(extra)
        .env("DISPLAY", self.client_display.env())
        .env("HOME", home)
        .stdin(Stdio::null());
        c
    }

    /// `xfreerdp +auth-only`: its exit status (0 when NLA succeeded).
    fn auth_only(&self, user: &str, password: &str) -> i32 {
        let mut c = self.xfreerdp(user, password, &["+auth-only"]);
        let mut child = die_with_parent(c.stdout(Stdio::null()).stderr(Stdio::null())).spawn().expect("xfreerdp");
        let st = wait_timeout(&mut child, Duration::from_secs(8));
        let _ = child.kill();
        st.and_then(|s| s.code()).unwrap_or(-1)
    }

    fn audit_kinds(&self) -> Vec<(String, String)> {
        let text = self.i.ok(&["audit", "export"]);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| (v["kind"].as_str().unwrap_or_default().to_string(), v["details"].to_string()))
            .collect()
    }

    fn sessions(&self) -> Vec<serde_json::Value> {
        let v = self.i.json(&["session", "list", "--json"]);
        v.as_array().cloned().unwrap_or_default()
    }

    /// The vaulted password in any form, anywhere the gateway wrote.
    fn assert_vault_pw_nowhere(&self) {
        let mut hits = self.i.find_secret(VAULT_PW.as_bytes());
        let utf16: Vec<u8> = VAULT_PW.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        for f in common::files_under(&self.i.dir()) {
            if common::contains(&std::fs::read(&f).unwrap_or_default(), &utf16) {
                hits.push(format!("UTF-16 in {}", f.display()));
            }
        }
        assert!(hits.is_empty(), "the vaulted password leaked: {hits:?}");
    }
}

/// `target add --fetch-cert` pins the target's real thumbprint; `target show` shows it; the
/// grant credential logs in over NLA while the grant lives, and not after revoke or expiry;
/// a wrong credential and a missing grant are refused, audited and counted, and never reach
/// the target (a probe target counts its connections); the vaulted password leaks nowhere.
#[test]
fn rdp_grant_credential_works_only_while_the_grant_lives() {
    let lab = Lab::new(None);
    let show = lab.i.ok(&["target", "show", TARGET]);
    assert!(show.contains(&lab.shadow.thumbprint()) && show.contains("NLA"), "{show}");

    let (gid, cred) = lab.grant("alice");
    let user = format!("alice@{TARGET}");
    assert_eq!(lab.auth_only(&user, &cred), 0, "the grant credential logs in\n{}", lab.gw.log_text());

    let rc = lab.auth_only(&user, "not-the-credential-123");
    assert_ne!(rc, 0, "a wrong credential is refused");
    assert_ne!(lab.auth_only(&format!("bob@{TARGET}"), &cred), 0, "bob has no grant");
    assert_ne!(lab.auth_only("alice@plc-nowhere", &cred), 0, "no such target");
    assert_ne!(lab.auth_only(&user, VAULT_PW), 0, "the target's own password does not log in at the gateway");

    let kinds = lab.audit_kinds();
    let ok = kinds.iter().filter(|(k, d)| k == "login.succeeded" && d.contains("rdp-nla")).count();
    assert_eq!(ok, 1, "{kinds:?}");
    let failed: Vec<_> = kinds.iter().filter(|(k, d)| k == "login.failed" && d.contains("rdp-nla")).collect();
    assert!(failed.iter().any(|(_, d)| d.contains("wrong grant credential")), "{failed:?}");
    assert!(failed.iter().any(|(_, d)| d.contains("no live grant")), "{failed:?}");
    assert_eq!(failed.len(), 4, "each refusal audited once: {failed:?}");
    // Failures count towards lockout like SSH ones.
    let n = lab.i.exec_sql("DELETE FROM auth_failures WHERE scope = 'user:alice'");
    assert!(n >= 2, "alice's failures were counted ({n})");
    lab.i.exec_sql("DELETE FROM auth_failures"); // the address's failures count too

    // Refused logins never reach the target: a target that counts its TCP connections sees
    // none for a wrong credential or a user without a grant, and one for a good login.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let probe_port = probe.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in probe.incoming() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    lab.i.ok_stdin(
        &[
            "target",
            "add",
            "hmi-probe",
            "--protocol",
            "rdp",
            "--address",
            &format!("127.0.0.1:{probe_port}"),
            "--login",
            LOGIN,
            "--password-stdin",
            "--cert-sha256",
            &"BB".repeat(32),
        ],
        format!("{VAULT_PW}\n").as_bytes(),
    );
    let (_, probe_cred) = lab.grant_on("alice", "hmi-probe");
    assert_ne!(lab.auth_only("alice@hmi-probe", "wrong-credential-456"), 0);
    assert_ne!(lab.auth_only("bob@hmi-probe", &probe_cred), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "a refused login reached the target");
    lab.auth_only("alice@hmi-probe", &probe_cred);
    let end = Instant::now() + Duration::from_secs(5);
    while hits.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "a good login goes on to the target");
    lab.i.exec_sql("DELETE FROM auth_failures");

    // Revoked: refused.
    common::block_on(async {
        let app = lab.i.app().await;
        let mia = users::get(&app, "mia").await.expect("mia");
        requests::revoke(&app, &mia, gid, true).await.expect("revoke");
    });
    assert_ne!(lab.auth_only(&user, &cred), 0, "refused after revoke");
    lab.i.exec_sql("DELETE FROM auth_failures");

    // A new grant that then expires: works, then refused.
    let (gid2, cred2) = lab.grant("alice");
    assert_eq!(lab.auth_only(&user, &cred2), 0, "the new grant's credential works");
    lab.i.exec_sql(&format!("UPDATE grants SET valid_until = valid_from + 1 WHERE id = {gid2}"));
    assert_ne!(lab.auth_only(&user, &cred2), 0, "refused after expiry");
    lab.assert_vault_pw_nowhere();
}

/// A pinned thumbprint the target does not have: the session is refused and audited, and the
/// vendor's client gets no session.
#[test]
fn rdp_pinned_thumbprint_mismatch_is_refused() {
    let wrong = "AA".repeat(32);
    let lab = Lab::new(Some(&wrong));
    let (_, cred) = lab.grant("alice");
    let mut c = lab.xfreerdp(&format!("alice@{TARGET}"), &cred, &[]);
    let mut child = die_with_parent(c.stdout(Stdio::null()).stderr(Stdio::null())).spawn().expect("xfreerdp");
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    let _ = child.kill();
    assert!(st.is_some_and(|s| !s.success()), "the client gets no session: {st:?}");
    let kinds = lab.audit_kinds();
    let mismatch: Vec<_> = kinds.iter().filter(|(k, _)| k == "target.cert_mismatch").collect();
    assert!(!mismatch.is_empty(), "{kinds:?}");
    assert!(mismatch[0].1.contains(&lab.shadow.thumbprint()), "the presented thumbprint is audited: {mismatch:?}");
    assert!(
        kinds.iter().any(|(k, d)| k == "session.refused" && d.contains("identity could not be verified")),
        "{kinds:?}"
    );
    assert!(lab.sessions().is_empty(), "no session ran");
    let shadow_log = std::fs::read_to_string(&lab.shadow.log).unwrap_or_default();
    assert!(!shadow_log.contains("authenticat") || !shadow_log.contains(LOGIN), "no login reached the target");
}

/// A full session: relayed, recorded (the target's stream, with the metadata to decode it),
/// ended by `session kill` within a second or two, its recording's hash in the chain
/// (`audit verify` passes), and the vaulted password nowhere.
#[test]
fn rdp_full_session_is_recorded_and_killable() {
    let lab = Lab::new(None);
    let (_, cred) = lab.grant("alice");
    let mut c = lab.xfreerdp(&format!("alice@{TARGET}"), &cred, &["/size:800x600"]);
    let client_log = lab.i.scratch().join("xfreerdp.log");
    let child = die_with_parent(c.stdout(std::fs::File::create(&client_log).expect("log")).stderr(Stdio::null()))
        .spawn()
        .expect("xfreerdp");
    let mut client = Proc(child);

    // The session appears, and the target's updates flow (and are recorded) for a while.
    let end = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let live: Vec<_> = lab.sessions().into_iter().filter(|s| s["ended_at"].is_null()).collect();
        if let Some(s) = live.first() {
            break s["id"].as_str().expect("id").to_string();
        }
        assert!(
            Instant::now() < end && client.0.try_wait().expect("try_wait").is_none(),
            "no RDP session started\ngateway:\n{}\nclient:\n{}",
            lab.gw.log_text(),
            std::fs::read_to_string(&client_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(4));
    assert!(client.0.try_wait().expect("try_wait").is_none(), "the session stays up\n{}", lab.gw.log_text());

    let t0 = Instant::now();
    assert_ok("session kill", &lab.i.run(&["session", "kill", &id]));
    let st = wait_timeout(&mut client.0, Duration::from_secs(5));
    assert!(st.is_some(), "kill ends the vendor's client\n{}", lab.gw.log_text());
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "kill took {took:?}");

    let end = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = lab.sessions().into_iter().find(|s| s["id"] == id.as_str()).expect("session row");
        if !s["ended_at"].is_null() {
            break s;
        }
        assert!(Instant::now() < end, "session not closed: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s["protocol"], "rdp", "{s}");
    assert_eq!(s["end_reason"], "killed", "{s}");
    assert!(s["bytes_down"].as_i64().unwrap_or(0) > 2_000, "the target's screen went through: {s}");
    let path = s["recording_path"].as_str().expect("recorded").to_string();
    let sha = s["recording_sha256"].as_str().expect("hashed").to_string();
    let bytes = std::fs::read(&path).expect("recording file");
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha, "the stored hash is the file's");
    let (header, records) = penstock::recording::frames::read(&bytes[..]).expect("frame recording");
    assert_eq!(header["format"], "penstock-rdp/1", "{header}");
    assert_eq!(header["desktop_width"], 800, "{header}");
    assert_eq!(header["user"], "alice", "{header}");
    let recorded: usize = records.iter().map(|r| r.data.len()).sum();
    assert_eq!(recorded as i64, s["bytes_down"].as_i64().unwrap_or(-1), "every byte the target sent is recorded");
    assert!(records.windows(2).all(|w| w[0].at_micros <= w[1].at_micros), "timestamps only go forward");

    let kinds = lab.audit_kinds();
    let ended: Vec<_> = kinds.iter().filter(|(k, _)| k == "session.ended").collect();
    assert!(ended.iter().any(|(_, d)| d.contains(&sha)), "the recording's hash is in the chain: {ended:?}");
    let verify = lab.i.ok(&["audit", "verify"]);
    assert!(verify.to_lowercase().contains("intact") || verify.contains("ok"), "{verify}");

    // Tampering with the recording is found.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&path, &tampered).expect("tamper");
    let out = lab.i.run(&["audit", "verify"]);
    assert!(!out.status.success(), "a changed recording fails audit verify");
    std::fs::write(&path, &bytes).expect("restore");

    // `replay` says plainly that it cannot decode RDP recordings yet.
    let err = lab.i.fails(&["replay", &id]);
    assert!(err.contains("RDP session"), "{err}");

    lab.assert_vault_pw_nowhere();
}
