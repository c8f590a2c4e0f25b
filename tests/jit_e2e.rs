//! End-to-end tests of just-in-time access: the real OpenSSH client, a real sshd target and the
//! real `penstock serve`. Vendors file requests over `ssh vendor@gateway request …`, managers
//! approve, deny and revoke over ssh, a vendor connecting without a grant waits for the
//! approvals, grants end sessions when they are over, grant credentials stand in for the
//! password, and webhooks are delivered (or their failure audited).
//!
//! Must run as root (a real sshd logs in a local account).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sshd::{die_with_parent, free_port, now, wait_timeout, Answers, Lab, Vendor, TARGET};
use common::{stderr, stdout, Backend};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// Lockout would turn expected refusals into noise.
const ENV: &[(&str, &str)] = &[("PENSTOCK_AUTH_MAX_FAILURES", "1000")];

/// A policy for [`TARGET`] named `name`, with `required` approvals by managers and extra TOML
/// (windows, …). Requesters: vendors and managers (so a manager can try to approve their own).
fn policy(name: &str, required: u32, max: &str, extra: &str) -> String {
    format!(
        "[policy]\nname = \"{name}\"\n\n[match]\ntargets = [\"{TARGET}\"]\n\n[request]\nroles = [\"vendor\", \"manager\"]\n\n\
         [approval]\napprover_roles = [\"manager\"]\nrequired = {required}\n\n[limits]\nmax_duration = \"{max}\"\n\n\
         [channels]\nshell = true\nexec = true\nsftp = true\nforward = []\n\n{extra}"
    )
}

fn dual() -> String {
    policy("jit-dual", 2, "1h", "")
}

fn single() -> String {
    policy("jit-single", 1, "1h", "")
}

/// A user and the last TOTP step it logged in with (each step is accepted once per user).
struct Person {
    v: Vendor,
    last: Mutex<i64>,
}

impl Person {
    fn new(v: Vendor) -> Person {
        Person { v, last: Mutex::new(0) }
    }

    fn name(&self) -> &str {
        &self.v.name
    }

    /// Password and a code for a step not used before; waits until the server (±1 step)
    /// accepts it.
    fn answers(&self) -> Answers {
        self.answers_with(&self.v.password.clone())
    }

    fn answers_with(&self, password: &str) -> Answers {
        let mut last = self.last.lock().unwrap();
        let mut cur = now() / 30;
        let step = cur.max(*last + 1);
        while step > cur + 1 {
            std::thread::sleep(Duration::from_millis(250));
            cur = now() / 30;
        }
        *last = step;
        Answers { password: password.to_string(), code: self.v.code_at(step * 30) }
    }
}

/// `ssh PERSON@gateway LINE` (a gateway command).
fn gw(lab: &Lab, p: &Person, line: &str) -> Output {
    let mut c = lab.client_with("ssh", &p.answers(), None);
    c.arg(format!("{}@127.0.0.1", p.name())).arg(line);
    common::sshd::run(&mut c, b"", T)
}

#[track_caller]
fn gw_ok(lab: &Lab, p: &Person, line: &str) -> String {
    let o = gw(lab, p, line);
    assert!(o.status.success(), "`{line}` as {} failed: {}\n{}", p.name(), stdout(&o), stderr(&o));
    stdout(&o)
}

#[track_caller]
fn gw_fails(lab: &Lab, p: &Person, line: &str) -> String {
    let o = gw(lab, p, line);
    assert!(!o.status.success(), "`{line}` as {} succeeded: {}", p.name(), stdout(&o));
    stderr(&o)
}

/// `ssh PERSON@TARGET@gateway` with `answers`; the caller adds the command.
fn to_target(lab: &Lab, p: &Person, answers: &Answers) -> Command {
    let mut c = lab.client_with("ssh", answers, None);
    c.arg(lab.dest(&p.v));
    c
}

/// Files a request; returns its id (checks the "pending: 0/N approvals" line).
#[track_caller]
fn request(lab: &Lab, p: &Person, line: &str, required: u32) -> i64 {
    let out = gw_ok(lab, p, line);
    let id: i64 = out
        .strip_prefix("request ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in {out:?}"));
    assert!(out.contains(&format!("request {id} pending: 0/{required} approvals")), "{out}");
    id
}

/// A background process whose output can be watched while it runs; killed when dropped.
struct Live {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Live {
    fn spawn(cmd: &mut Command) -> Live {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = die_with_parent(cmd).spawn().expect("spawn");
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> =
            vec![Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for mut r in pipes {
            let out = out.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Live { child, out, threads }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Whether the output contains `needle` within `timeout`.
    fn wait_text(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.text().contains(needle)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit (and the pipes) at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_timeout(&mut self.child, timeout)?;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Some(st)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events(lab: &Lab, kind: &str) -> Vec<Value> {
    lab.audit_events(kind)
}

fn of_request(evs: &[Value], id: i64) -> Vec<Value> {
    evs.iter().filter(|e| e["details"]["request_id"] == id).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Dual control, the "done when"

/// Dual control: the vendor files a 20 s request, a connection without a grant waits, one
/// approval is not enough, the second connects it within ~3 s, the session is cut when the grant
/// is over (`expired`), and the audit holds the whole story.
fn dual_control_wait_connect_expire(b: Backend) {
    let d = dual();
    let lab = Lab::with_options(b, &[("00-jit.toml", &d)], ENV);
    let vendor = Person::new(lab.vendor_without_grant());
    let m1 = Person::new(lab.user_with_role("manager"));
    let m2 = Person::new(lab.user_with_role("manager"));

    let id = request(&lab, &vendor, &format!("request {TARGET} --for 20s --reason \"CHG-4711\""), 2);

    let mut waiting = Live::spawn(to_target(&lab, &vendor, &vendor.answers()).arg("echo CONNECTED; sleep 300"));
    assert!(
        waiting.wait_text(&format!("request {id} pending: 0/2 approvals"), Duration::from_secs(20)),
        "the connection does not wait for request {id}: {}",
        waiting.text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.alive() && !waiting.text().contains("CONNECTED"), "{}", waiting.text());

    let o = gw_ok(&lab, &m1, &format!("approve {id} --comment ok"));
    assert!(o.contains(&format!("request {id}: 1/2 approvals")), "{o}");
    assert!(
        waiting.wait_text(&format!("request {id}: 1/2 approvals"), Duration::from_secs(5)),
        "the waiting vendor was not told about the first approval: {}",
        waiting.text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.alive() && !waiting.text().contains("CONNECTED"),
        "connected after one approval: {}",
        waiting.text()
    );

    let before = Instant::now();
    let o = gw_ok(&lab, &m2, &format!("approve {id} --comment ok"));
    let approved = Instant::now();
    assert!(o.contains(&format!("request {id} approved (2/2); grant")), "{o}");
    assert!(
        waiting.wait_text("CONNECTED", Duration::from_secs(3)),
        "not connected within 3 s of the second approval: {}",
        waiting.text()
    );
    let live = lab.live_session(vendor.name());
    assert_eq!(live["target"], TARGET, "{live}");

    let st = waiting.wait(Duration::from_secs(40)).unwrap_or_else(|| panic!("session not cut: {}", waiting.text()));
    let elapsed = before.elapsed();
    assert!(!st.success(), "{st}");
    assert!(waiting.text().contains("access grant is over"), "{}", waiting.text());
    assert!(
        elapsed >= Duration::from_secs(17) && approved.elapsed() <= Duration::from_secs(27),
        "cut after {elapsed:?}, not ~20 s after the approval"
    );
    let s = lab.ended_session(vendor.name());
    assert_eq!(s["end_reason"], "expired", "{s}");

    let created = of_request(&events(&lab, "request.created"), id);
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["actor"], vendor.name(), "{created:?}");
    assert_eq!(created[0]["details"]["reason"], "CHG-4711", "{created:?}");
    assert_eq!(created[0]["details"]["duration"], 20, "{created:?}");
    let approvals = of_request(&events(&lab, "request.approved"), id);
    assert_eq!(approvals.len(), 2, "{approvals:?}");
    let actors: Vec<&str> = approvals.iter().map(|a| a["actor"].as_str().unwrap_or_default()).collect();
    assert_eq!(actors, [m1.name(), m2.name()], "{approvals:?}");
    assert!(approvals.iter().all(|a| a["details"]["comment"] == "ok"), "{approvals:?}");
    let issued: Vec<Value> =
        events(&lab, "grant.issued").into_iter().filter(|g| g["details"]["user"] == vendor.name()).collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let (from, until) = (issued[0]["details"]["valid_from"].as_i64(), issued[0]["details"]["valid_until"].as_i64());
    assert_eq!(until.zip(from).map(|(u, f)| u - f), Some(20), "{issued:?}");
    assert_eq!(issued[0]["actor"], m2.name(), "{issued:?}");
    lab.finish();
}

backend_tests! {
    fn dual_control_wait_connect_expire;
}

// ---------------------------------------------------------------------------------------------
// 2. Maintenance windows

/// Outside the only (one-off) window a request is refused naming the window's opening in local
/// time; with `--start` inside the window it is accepted, and its grant starts at that time.
#[test]
fn request_outside_window_is_refused_with_next_opening() {
    use chrono::TimeZone;
    let tz = chrono_tz::Europe::Berlin;
    let tomorrow = chrono::Utc::now().with_timezone(&tz).date_naive() + chrono::Days::new(1);
    let day = tomorrow.format("%Y-%m-%d").to_string();
    let extra = format!("[[windows]]\nfrom = \"{day} 08:00\"\nto = \"{day} 10:00\"\ntimezone = \"Europe/Berlin\"\n");
    let p = policy("jit-window", 1, "4h", &extra);
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &p)], ENV);
    let vendor = Person::new(lab.vendor_without_grant());
    let manager = Person::new(lab.user_with_role("manager"));

    let err = gw_fails(&lab, &vendor, &format!("request {TARGET} --for 1h --reason x"));
    assert!(err.contains("outside the maintenance windows"), "{err}");
    assert!(err.contains(&format!("{day} 08:00")), "the next opening is not named: {err}");

    let id = request(&lab, &vendor, &format!("request {TARGET} --for 1h --reason x --start \"{day} 08:30\""), 1);
    let o = gw_ok(&lab, &manager, &format!("approve {id}"));
    assert!(o.contains("approved (1/1)"), "{o}");
    let want_from = tz
        .from_local_datetime(&tomorrow.and_hms_opt(8, 30, 0).unwrap())
        .single()
        .expect("unambiguous local time")
        .timestamp();
    let issued: Vec<Value> =
        events(&lab, "grant.issued").into_iter().filter(|g| g["details"]["user"] == vendor.name()).collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["details"]["valid_from"], want_from, "{issued:?}");
    assert_eq!(issued[0]["details"]["valid_until"], want_from + 3600, "{issued:?}");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Deny and who may decide

/// A vendor cannot approve, nobody can approve their own request, approving twice is refused,
/// `requests --json` parses, and a deny ends the waiting connection with who and why.
#[test]
fn deny_and_decision_rules() {
    let d = dual();
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &d)], ENV);
    let vendor = Person::new(lab.vendor_without_grant());
    let other_vendor = Person::new(lab.vendor_without_grant());
    let ma = Person::new(lab.user_with_role("manager"));
    let mb = Person::new(lab.user_with_role("manager"));
    let mc = Person::new(lab.user_with_role("manager"));

    let id = request(&lab, &vendor, &format!("request {TARGET} --for 10m --reason \"CHG-1\""), 2);
    let mut waiting = Live::spawn(to_target(&lab, &vendor, &vendor.answers()).arg("echo CONNECTED"));
    assert!(waiting.wait_text(&format!("request {id} pending: 0/2"), Duration::from_secs(20)), "{}", waiting.text());

    let err = gw_fails(&lab, &other_vendor, &format!("approve {id}"));
    assert!(err.contains("vendors cannot decide requests"), "{err}");

    gw_ok(&lab, &ma, &format!("approve {id} --comment first"));
    let err = gw_fails(&lab, &ma, &format!("approve {id} --comment again"));
    assert!(err.contains("already approved"), "{err}");

    let own = request(&lab, &mb, &format!("request {TARGET} --for 10m --reason own"), 2);
    let err = gw_fails(&lab, &mb, &format!("approve {own}"));
    assert!(err.contains("you cannot decide your own request"), "{err}");

    gw_ok(&lab, &mc, &format!("deny {id} --reason \"no change ticket\""));
    let st = waiting.wait(Duration::from_secs(10)).unwrap_or_else(|| panic!("still waiting: {}", waiting.text()));
    assert!(!st.success(), "{st}");
    let text = waiting.text();
    assert!(text.contains(&format!("request {id} was denied by {}: no change ticket", mc.name())), "{text}");
    assert!(!text.contains("CONNECTED"), "{text}");

    let list: Value = serde_json::from_str(&gw_ok(&lab, &mc, "requests --json")).expect("requests --json parses");
    let list = list.as_array().expect("an array");
    let find = |i: i64| list.iter().find(|r| r["id"] == i).cloned().unwrap_or_else(|| panic!("{i} missing: {list:?}"));
    assert_eq!(find(id)["state"], "denied");
    assert_eq!(find(id)["user"], vendor.name());
    assert_eq!(find(own)["state"], "pending");
    let denied = of_request(&events(&lab, "request.denied"), id);
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["actor"], mc.name());
    assert_eq!(denied[0]["details"]["reason"], "no change ticket");
    assert!(lab.sessions_of(vendor.name()).is_empty());
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Revoke

/// Revoking an approved request over ssh ends its live session within ~3 s (`killed`).
#[test]
fn revoke_cuts_live_session() {
    let p = single();
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &p)], ENV);
    let vendor = Person::new(lab.vendor_without_grant());
    let m1 = Person::new(lab.user_with_role("manager"));
    let m2 = Person::new(lab.user_with_role("manager"));

    let id = request(&lab, &vendor, &format!("request {TARGET} --for 10m --reason CHG-2"), 1);
    gw_ok(&lab, &m1, &format!("approve {id}"));
    let mut session = Live::spawn(to_target(&lab, &vendor, &vendor.answers()).arg("echo CONNECTED; sleep 300"));
    assert!(session.wait_text("CONNECTED", Duration::from_secs(20)), "{}", session.text());
    lab.live_session(vendor.name());

    let t0 = Instant::now();
    let o = gw_ok(&lab, &m2, &format!("revoke {id}"));
    assert!(o.contains("revoked"), "{o}");
    let st = session.wait(Duration::from_secs(3)).unwrap_or_else(|| panic!("session still up 3 s after revoke"));
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(!st.success(), "{st}");
    let s = lab.ended_session(vendor.name());
    assert_eq!(s["end_reason"], "killed", "{s}");
    assert_eq!(events(&lab, "grant.revoked").len(), 1);
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Grant credentials

/// The grant's one-time credential (from `grants --show-credential --json`) logs in to the target
/// in place of the password (with TOTP) and is refused once the grant is revoked.
#[test]
fn grant_credential_logs_in_until_revoked() {
    let p = single();
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &p)], ENV);
    let vendor = Person::new(lab.vendor_without_grant());
    let m1 = Person::new(lab.user_with_role("manager"));

    let id = request(&lab, &vendor, &format!("request {TARGET} --for 10m --reason CHG-3"), 1);
    gw_ok(&lab, &m1, &format!("approve {id}"));
    let grants: Value =
        serde_json::from_str(&gw_ok(&lab, &vendor, "grants --show-credential --json")).expect("grants --json parses");
    let g = &grants.as_array().expect("array")[0];
    assert_eq!(g["target"], TARGET, "{grants}");
    assert_eq!(g["live"], true, "{grants}");
    let cred = g["credential"].as_str().unwrap_or_else(|| panic!("no credential: {grants}")).to_string();
    assert!(cred.len() >= 16 && cred != vendor.v.password, "{cred}");
    lab.add_secret(&cred);

    let out =
        common::sshd::run(to_target(&lab, &vendor, &vendor.answers_with(&cred)).arg("echo VIA-CREDENTIAL"), b"", T);
    assert!(out.status.success(), "credential login failed: {}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("VIA-CREDENTIAL"), "{}", stdout(&out));

    gw_ok(&lab, &m1, &format!("revoke {id}"));
    let out =
        common::sshd::run(to_target(&lab, &vendor, &vendor.answers_with(&cred)).arg("echo VIA-CREDENTIAL"), b"", T);
    assert!(!out.status.success(), "revoked credential still works: {}", stdout(&out));
    assert!(!stdout(&out).contains("VIA-CREDENTIAL"));
    // Refused at the first factor (the TOTP code was a fresh, valid one).
    let failed: Vec<Value> = events(&lab, "login.failed")
        .into_iter()
        .filter(|e| e["details"]["user"].as_str().is_some_and(|u| u.starts_with(vendor.name())))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["details"]["reason"].as_str().is_some_and(|r| r.contains("wrong credentials")), "{failed:?}");
    lab.finish();
}

// ---------------------------------------------------------------------------------------------
// 6. Notifications

/// A tiny HTTP server answering 200 and recording request bodies.
fn hook_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if data.len() >= i + 4 + len {
                        b.lock().unwrap().push(String::from_utf8_lossy(&data[i + 4..i + 4 + len]).into_owned());
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

/// Webhooks get JSON with `kind` and `text` for a created and an approved request.
#[test]
fn webhook_receives_request_events() {
    let (port, bodies) = hook_server();
    let hooks = format!("[\"http://127.0.0.1:{port}/hook\"]");
    let p = single();
    let env = [ENV[0], ("PENSTOCK_NOTIFICATIONS_WEBHOOKS", hooks.as_str())];
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &p)], &env);
    let vendor = Person::new(lab.vendor_without_grant());
    let m1 = Person::new(lab.user_with_role("manager"));
    let id = request(&lab, &vendor, &format!("request {TARGET} --for 10m --reason CHG-5"), 1);
    gw_ok(&lab, &m1, &format!("approve {id}"));

    let end = Instant::now() + Duration::from_secs(10);
    let kinds = loop {
        let got: Vec<Value> = bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}")))
            .collect();
        let has = |k: &str| got.iter().any(|v| v["kind"] == k);
        if (has("request.created") && has("request.approved")) || Instant::now() > end {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |k: &str| kinds.iter().find(|v| v["kind"] == k).cloned().unwrap_or_else(|| panic!("no {k}: {kinds:?}"));
    let created = find("request.created");
    let text = created["text"].as_str().unwrap_or_default();
    assert!(text.contains(vendor.name()) && text.contains(TARGET) && text.contains("CHG-5"), "{created}");
    assert_eq!(created["data"]["id"], id, "{created}");
    let approved = find("request.approved");
    assert!(approved["text"].as_str().is_some_and(|t| t.contains("approved") && t.contains(m1.name())), "{approved}");
    assert!(events(&lab, "notification.failed").is_empty());
    lab.finish();
}

/// A dead webhook never holds up a request; the final failure is audited.
#[test]
fn dead_webhook_does_not_block_and_is_audited() {
    let dead = free_port();
    let hooks = format!("[\"http://127.0.0.1:{dead}/hook\"]");
    let p = single();
    let env = [
        ENV[0],
        ("PENSTOCK_NOTIFICATIONS_WEBHOOKS", hooks.as_str()),
        ("PENSTOCK_NOTIFICATIONS_ATTEMPTS", "2"),
        ("PENSTOCK_NOTIFICATIONS_BACKOFF_SECS", "0"),
    ];
    let lab = Lab::with_options(Backend::Sqlite, &[("00-jit.toml", &p)], &env);
    let vendor = Person::new(lab.vendor_without_grant());
    let t0 = Instant::now();
    request(&lab, &vendor, &format!("request {TARGET} --for 10m --reason CHG-6"), 1);
    assert!(t0.elapsed() < Duration::from_secs(5), "request took {:?}", t0.elapsed());

    let end = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let f = events(&lab, "notification.failed");
        if !f.is_empty() || Instant::now() > end {
            break f;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!failed.is_empty(), "no notification.failed in the audit");
    let d = &failed[0]["details"];
    assert_eq!(d["url"], format!("http://127.0.0.1:{dead}/hook"), "{d}");
    assert_eq!(d["kind"], "request.created", "{d}");
    lab.finish();
}
