//! The live view (issue #10) against the real `penstock serve`, a real `sshd` target and real
//! `ssh` clients: a manager watches a vendor's live `ssh -tt` session with `ssh … watch` and in
//! a real headless Chromium (the vendor types a word, the word appears); who may open the watch
//! page and its WebSocket (vendor, other vendor, manager, auditor, admin, nobody, another site);
//! `session.watched` in the audit chain.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::live::{ws_status, Typist};
use common::sshd::{Answers, Lab, Vendor};
use common::web::{token, Auth, Live, Person, Web};
use common::{stderr, stdout, Backend};

const T: Duration = Duration::from_secs(60);

/// `ssh USER@gateway COMMAND` for a gateway user (no target), as a background process.
fn gateway_command(lab: &Lab, p: &Person, command: &str) -> Live {
    let mut c = lab.client_with("ssh", &Answers { password: p.v.password.clone(), code: p.fresh_code() }, None);
    c.arg(format!("{}@127.0.0.1", p.name())).arg(command);
    Live::spawn(&mut c)
}

/// A vendor with a grant and a live `ssh -tt` session (its shell prompt seen); its session id.
fn live_vendor(lab: &Lab) -> (Vendor, Typist, String) {
    let v = lab.vendor();
    let mut typist = Typist::start(lab, &v);
    typist.type_text("echo READY-$((40+2))\n");
    assert!(typist.wait_text("READY-42", T), "vendor session did not start: {}", typist.text());
    let id = lab.live_session(&v.name)["id"].as_str().expect("session id").to_string();
    (v, typist, id)
}

backend_tests! {
    fn ssh_watch_sees_typed_word;
}

fn ssh_watch_sees_typed_word(b: Backend) {
    let lab = Lab::new(b);
    let manager = Person::new(lab.user_with_role("manager"));
    let other = Person::new(lab.user_with_role("vendor"));
    let (v, mut typist, id) = live_vendor(&lab);

    // A vendor may not watch (not even a session's own vendor through the gateway command).
    let mut refused = gateway_command(&lab, &other, &format!("watch {id}"));
    let st = refused.wait(T).expect("vendor's watch ends");
    assert!(!st.success(), "a vendor could watch: {}", refused.text());
    assert!(refused.text().contains("only managers and auditors may watch"), "{}", refused.text());

    // The manager watches; the screen so far (the READY line) comes first.
    let mut watch = gateway_command(&lab, &manager, &format!("watch {id}"));
    assert!(watch.wait_text("[penstock] watching", T), "{}", watch.text());
    assert!(watch.wait_text("READY-42", Duration::from_secs(10)), "current screen not shown: {}", watch.text());
    typist.type_text("echo WATCHED-$((6*7))-WORD\n");
    assert!(typist.wait_text("WATCHED-42-WORD", T), "{}", typist.text());
    assert!(
        watch.wait_text("WATCHED-42-WORD", Duration::from_secs(15)),
        "the typed word did not reach the watching manager: {}",
        watch.text()
    );
    // The session ends: so does the watch.
    assert!(typist.exit(T), "vendor session: {}", typist.text());
    let st = watch.wait(Duration::from_secs(20)).expect("watch ends with the session");
    assert!(st.success(), "{}", watch.text());
    assert!(watch.text().contains("the session ended"), "{}", watch.text());

    // Watching a session that is not live is a clear error.
    let mut late = gateway_command(&lab, &manager, &format!("watch {id}"));
    assert!(late.wait(T).is_some_and(|s| !s.success()), "{}", late.text());
    assert!(late.text().contains("is not live"), "{}", late.text());

    let watched = lab.audit_events("session.watched");
    assert_eq!(watched.len(), 1, "{watched:?}");
    assert_eq!(watched[0]["actor"], manager.name());
    assert_eq!(watched[0]["details"]["session"], id.as_str());
    assert_eq!(watched[0]["details"]["via"], "ssh");
    let _ = v;
    lab.finish();
}

/// A watcher that stops reading (its `ssh` is stopped with SIGSTOP) never slows the session:
/// the vendor's command streams 2 MB through the gateway and ends on time, complete; the
/// watcher, continued, is told the session ended.
#[test]
fn stalled_watcher_never_slows_the_session() {
    let lab = Lab::new(Backend::Sqlite);
    let manager = Person::new(lab.user_with_role("manager"));
    let v = lab.vendor();
    let mut c = lab.ssh(&v, &["-tt"]);
    c.arg("sleep 3; seq 1 300000; echo SEQ-DONE");
    let mut vendor = Live::spawn(&mut c);
    let id = lab.live_session(&v.name)["id"].as_str().expect("session id").to_string();
    let mut watch = gateway_command(&lab, &manager, &format!("watch {id}"));
    assert!(watch.wait_text("[penstock] watching", T), "{}", watch.text());
    let pid = watch.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    let started = std::time::Instant::now();
    let st = vendor.wait(Duration::from_secs(60)).expect("the vendor's command ends while the watcher is stalled");
    assert!(st.success(), "{}", vendor.text().chars().rev().take(300).collect::<String>());
    let out = vendor.text();
    assert!(out.contains("\n300000\r\n") && out.contains("SEQ-DONE"), "output incomplete");
    assert!(started.elapsed() < Duration::from_secs(45), "the session took {:?}", started.elapsed());
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    let st = watch.wait(Duration::from_secs(30)).expect("the watch ends after the session");
    assert!(st.success(), "{}", watch.text().chars().rev().take(300).collect::<String>());
    assert!(watch.text().contains("the session ended"), "{}", watch.text().chars().rev().take(300).collect::<String>());
    lab.finish();
}

/// Page and WebSocket × role: only managers and auditors watch; no credentials, another site's
/// page, a malformed id and a session that is not live are refused.
#[test]
fn live_view_roles() {
    let lab = Lab::new(Backend::Sqlite);
    let web = Web::new(&lab);
    let (v, mut typist, id) = live_vendor(&lab);
    let other = lab.user_with_role("vendor");
    let names: Vec<String> = vec![
        v.name.clone(),
        other.name.clone(),
        lab.user_with_role("manager").name,
        lab.user_with_role("auditor").name,
        lab.user_with_role("admin").name,
    ];
    let tokens: Vec<String> = names.iter().map(|n| token(&lab, n, "1h").1).collect();
    let roles = ["vendor", "other vendor", "manager", "auditor", "admin"];
    let page = format!("/sessions/{id}/watch");
    let ws = format!("/sessions/{id}/watch/ws");
    for (i, expect) in [403u16, 403, 200, 200, 403].into_iter().enumerate() {
        let r = web.get(&page, Auth::Token(&tokens[i]));
        assert_eq!(r.status, expect, "watch page as {}: {}", roles[i], r.body);
        if expect == 200 {
            assert!(r.body.contains("<script src=\"/static/live.js\">"), "{}", r.body);
            assert!(r.body.contains("read-only"), "{}", r.body);
        }
        let status = ws_status(&web.base, &ws, Auth::Token(&tokens[i]), None);
        let expect_ws = if expect == 200 { 101 } else { 403 };
        assert_eq!(status, expect_ws, "watch WebSocket as {}", roles[i]);
    }
    // Nobody: the page sends to the login page, the WebSocket says 401.
    let r = web.get(&page, Auth::None);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location").as_deref(), Some("/login"));
    assert_eq!(ws_status(&web.base, &ws, Auth::None, None), 401);
    assert_eq!(ws_status(&web.base, &ws, Auth::Token("pst_not-a-real-token-0000000000000000000000"), None), 401);
    // Another site's page with the manager's credentials.
    assert_eq!(ws_status(&web.base, &ws, Auth::Token(&tokens[2]), Some("https://evil.example")), 403);
    let same = web.base.clone();
    assert_eq!(ws_status(&web.base, &ws, Auth::Token(&tokens[2]), Some(&same)), 101);
    // A malformed id; a live-looking id that is not live.
    assert_eq!(ws_status(&web.base, "/sessions/nothex/watch/ws", Auth::Token(&tokens[2]), None), 400);
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(ws_status(&web.base, &format!("/sessions/{unknown}/watch/ws"), Auth::Token(&tokens[2]), None), 404);
    assert_eq!(web.get(&format!("/sessions/{unknown}/watch"), Auth::Token(&tokens[2])).status, 404);
    // The sessions page links the live view for those who may watch only.
    let list = web.get("/sessions", Auth::Token(&tokens[2]));
    assert!(list.body.contains(&format!("href=\"/sessions/{id}/watch\"")), "{}", list.body);
    let list = web.get("/sessions", Auth::Token(&tokens[0]));
    assert!(!list.body.contains("/watch\""), "{}", list.body);
    // The script is served from our origin under a CSP that allows only our scripts.
    let js = web.get("/static/live.js", Auth::None);
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").is_some_and(|c| c.starts_with("text/javascript")));
    let csp = r_csp(&web);
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    // Each successful upgrade (manager, auditor, same-origin manager) was audited.
    let watched = lab.audit_events("session.watched");
    assert_eq!(watched.len(), 3, "{watched:?}");
    assert!(watched.iter().all(|e| e["details"]["via"] == "web" && e["details"]["session"] == id.as_str()));
    assert!(typist.exit(T), "{}", typist.text());
    lab.finish();
}

fn r_csp(web: &Web) -> String {
    web.get("/login", Auth::None).header("content-security-policy").unwrap_or_default()
}

/// A manager opens the live view of a real `ssh -tt` session in a real headless Chromium; the
/// vendor types a command; its output appears in the page; the end of the session is shown.
#[test]
fn browser_manager_watches_live_ssh() {
    let lab = Lab::new(Backend::Sqlite);
    let manager = Person::new(lab.user_with_role("manager"));
    let (_v, mut typist, id) = live_vendor(&lab);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "run `npm ci` in {} (scripts/test does)", dir.display());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-live-browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let word = "BROWSER-42-LIVE";
    let mut node = Command::new("node");
    node.arg(dir.join("watch.mjs"))
        .current_dir(&dir)
        .env("PENSTOCK_URL", format!("https://127.0.0.1:{}/", lab.web_port()))
        .env("PENSTOCK_USER", manager.name())
        .env("PENSTOCK_PASSWORD", &manager.v.password)
        .env("PENSTOCK_CODE", manager.code_ahead())
        .env("PENSTOCK_SESSION", &id)
        .env("PENSTOCK_WORD", word)
        .env("PENSTOCK_SHOTS", &shots);
    let mut browser = Live::spawn(&mut node);
    assert!(
        browser.wait_text("READY", Duration::from_secs(90)),
        "live view did not open: {} (screenshots in {})",
        browser.text(),
        shots.display()
    );
    typist.type_text("echo BROWSER-$((6*7))-LIVE\n");
    assert!(typist.wait_text(word, T), "{}", typist.text());
    assert!(
        browser.wait_text(&format!("seen {word}"), Duration::from_secs(60)),
        "the word did not appear in the page: {} (screenshots in {})",
        browser.text(),
        shots.display()
    );
    assert!(typist.exit(T), "{}", typist.text());
    let st = browser.wait(Duration::from_secs(60)).expect("browser script ends");
    assert!(
        st.success() && browser.text().contains("ended"),
        "{} (screenshots in {})",
        browser.text(),
        shots.display()
    );
    for f in ["1-live.png", "2-word.png", "3-ended.png"] {
        let len = std::fs::metadata(shots.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
    let watched = lab.audit_events("session.watched");
    assert!(watched.iter().any(|e| e["actor"] == manager.name() && e["details"]["via"] == "web"), "{watched:?}");
    let _ = (stdout, stderr);
    lab.finish();
}

/// A vendor whose grant ends in 9 minutes has a live ssh session and its console open in a
/// real headless Chromium: the banner says its access ends in 9 minutes, and it goes away
/// without a reload once the session has ended. (The same notice goes to the session itself.)
#[test]
fn browser_vendor_sees_ending_notice() {
    let lab = Lab::new(Backend::Sqlite);
    let mut v = lab.vendor_without_grant();
    v.grant = Some(lab.grant(&v.name, common::sshd::TARGET, "9m"));
    // The session first: its login uses this step's code, the browser's the next one.
    let mut typist = Typist::start(&lab, &v);
    typist.type_text("echo READY-$((40+2))\n");
    assert!(typist.wait_text("READY-42", T), "{}", typist.text());
    let p = Person::new(v);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "run `npm ci` in {} (scripts/test does)", dir.display());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-notice-browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let mut node = Command::new("node");
    node.arg(dir.join("notices.mjs"))
        .current_dir(&dir)
        .env("PENSTOCK_URL", format!("https://127.0.0.1:{}/", lab.web_port()))
        .env("PENSTOCK_USER", p.name())
        .env("PENSTOCK_PASSWORD", &p.v.password)
        .env("PENSTOCK_CODE", p.code_ahead())
        .env("PENSTOCK_NOTICE", "ends in 9 minutes")
        .env("PENSTOCK_SHOTS", &shots);
    let mut browser = Live::spawn(&mut node);
    assert!(
        browser.wait_text("seen notice", Duration::from_secs(90)),
        "{} (screenshots in {})",
        browser.text(),
        shots.display()
    );
    assert!(browser.text().contains(&format!("SSH session on {}", common::sshd::TARGET)), "{}", browser.text());
    assert!(typist.exit(T), "{}", typist.text());
    let st = browser.wait(Duration::from_secs(90)).expect("browser script ends");
    assert!(
        st.success() && browser.text().contains("notice gone"),
        "{} (screenshots in {})",
        browser.text(),
        shots.display()
    );
    lab.finish();
}

/// A vendor's recorded session, ended, with `word` typed (`echo` of an arithmetic that prints
/// it); its id.
fn recorded_session(lab: &Lab, v: &Vendor, prefix: &str) -> String {
    let mut typist = Typist::start(lab, v);
    typist.type_text(&format!("echo {prefix}-$((6*7))-AUDIT\n"));
    assert!(typist.wait_text(&format!("{prefix}-42-AUDIT"), T), "{}", typist.text());
    let id = lab.live_session(&v.name)["id"].as_str().expect("session id").to_string();
    assert!(typist.exit(T), "{}", typist.text());
    lab.ended_session(&v.name);
    id
}

/// Waits until the console's search (as `auth`) finds `word`; returns the page.
fn search_until_found(web: &Web, auth: Auth, word: &str) -> String {
    let end = std::time::Instant::now() + T;
    loop {
        let r = web.get(&format!("/audit/search?q={word}"), auth);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.contains("class=\"hit\"") {
            return r.body;
        }
        assert!(std::time::Instant::now() < end, "search never found {word}: {}", r.body);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Recordings, replays, bundles, search and the audit log × role: a vendor reads only its own
/// sessions (another vendor's are unknown to it), nobody reads anything without logging in.
#[test]
fn recordings_access_by_role() {
    let lab = Lab::new(Backend::Sqlite);
    let web = Web::new(&lab);
    let v = lab.vendor();
    let id = recorded_session(&lab, &v, "OWNED");
    let other = lab.user_with_role("vendor");
    let names = [
        v.name.clone(),
        other.name.clone(),
        lab.user_with_role("manager").name,
        lab.user_with_role("auditor").name,
        lab.user_with_role("admin").name,
    ];
    let tokens: Vec<String> = names.iter().map(|n| token(&lab, n, "1h").1).collect();
    let roles = ["vendor", "other vendor", "manager", "auditor", "admin"];
    let cast = format!("/audit/sessions/{id}/cast");
    let replay = format!("/audit/sessions/{id}/replay?t=1.5");
    let bundle = format!("/audit/sessions/{id}/evidence");
    for (i, [c, r, e]) in
        [[200u16, 200, 403], [404, 404, 403], [200, 200, 200], [200, 200, 200], [200, 200, 200]].into_iter().enumerate()
    {
        let got = web.get(&cast, Auth::Token(&tokens[i]));
        assert_eq!(got.status, c, "cast as {}: {}", roles[i], got.body);
        if c == 200 {
            assert!(got.body.contains("OWNED-42-AUDIT"), "cast as {}", roles[i]);
            assert!(got.body.starts_with("{\"version\":2"), "not a cast");
            assert_eq!(got.header("content-type").as_deref(), Some("application/x-asciicast"));
            assert!(got.header("content-disposition").is_some_and(|d| d.contains(&format!("{id}.cast"))));
        } else {
            assert!(!got.body.contains("OWNED-42"), "{}", got.body);
        }
        let got = web.get(&replay, Auth::Token(&tokens[i]));
        assert_eq!(got.status, r, "replay as {}: {}", roles[i], got.body);
        if r == 200 {
            assert!(got.body.contains("data-start=\"1.5\""), "{}", got.body);
            let csp = got.header("content-security-policy").unwrap_or_default();
            assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval'") && !csp.contains("unsafe-inline"), "{csp}");
        }
        let got = web.get(&bundle, Auth::Token(&tokens[i]));
        assert_eq!(got.status, e, "bundle as {}: {}", roles[i], got.body.chars().take(200).collect::<String>());
        if e == 200 {
            assert_eq!(got.header("content-type").as_deref(), Some("application/x-tar"));
            assert!(got.body.contains("MANIFEST") && got.body.contains("OWNED-42-AUDIT"), "bundle as {}", roles[i]);
        }
        // The other vendor's list does not show the session; the owner's and the auditor's do.
        let list = web.get("/audit/sessions", Auth::Token(&tokens[i]));
        assert_eq!(list.status, 200, "{}", list.body);
        assert_eq!(list.body.contains(&format!("row-{id}")), i != 1, "list as {}: {}", roles[i], list.body);
    }
    for path in [&cast, &bundle] {
        assert_eq!(web.get(path, Auth::None).status, 401, "{path}");
    }
    for path in [replay.as_str(), "/audit/sessions", "/audit/search?q=x", "/audit/log"] {
        let r = web.get(path, Auth::None);
        assert_eq!((r.status, r.header("location")), (303, Some("/login".to_string())), "{path}");
    }
    // Filters.
    let auditor = Auth::Token(&tokens[3]);
    let f = |q: &str| web.get(&format!("/audit/sessions?{q}"), auditor).body.contains(&format!("row-{id}"));
    assert!(f(&format!("user={}", v.name)));
    assert!(!f(&format!("user={}", other.name)));
    assert!(f("org=Acme+Automation&protocol=ssh&reason=closed"));
    assert!(!f("protocol=rdp"));
    assert!(!f("reason=killed"));
    assert!(!f("from=2099-01-01"));
    assert!(f("from=2020-01-01&to=2099-12-31"));
    let bad = web.get("/audit/sessions?from=yesterday", auditor);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("not a date"), "{}", bad.body);
    // An other vendor filtering for the owner still sees only its own (none).
    let list = web.get(&format!("/audit/sessions?user={}", v.name), Auth::Token(&tokens[1]));
    assert!(!list.body.contains(&format!("row-{id}")));
    // The same through the API, listed in its OpenAPI document.
    for (i, [c, e]) in [[200u16, 403], [404, 403], [200, 200], [200, 200], [200, 200]].into_iter().enumerate() {
        let r = web.get(&format!("/api/v1/sessions/{id}/recording"), Auth::Token(&tokens[i]));
        assert_eq!(r.status, c, "API recording as {}: {}", roles[i], r.body);
        assert_eq!(r.body.contains("OWNED-42-AUDIT"), c == 200);
        let r = web.get(&format!("/api/v1/sessions/{id}/evidence"), Auth::Token(&tokens[i]));
        assert_eq!(r.status, e, "API evidence as {}", roles[i]);
        let r = web.get(&format!("/api/v1/recordings?target=plc-line3&user={}", v.name), Auth::Token(&tokens[i]));
        assert_eq!(r.status, 200, "{}", r.body);
        let listed = r.json().as_array().expect("array").iter().any(|s| s["id"] == id.as_str());
        assert_eq!(listed, i != 1, "API recordings as {}: {}", roles[i], r.body);
    }
    assert_eq!(web.get(&format!("/api/v1/sessions/{id}/recording"), Auth::None).status, 401);
    let doc = web.get("/api/v1/openapi.json", Auth::None).json();
    for p in ["/api/v1/recordings", "/api/v1/sessions/{id}/recording", "/api/v1/sessions/{id}/evidence"] {
        assert!(doc["paths"][p]["get"].is_object(), "{p} not in the OpenAPI document");
    }
    let params: Vec<&str> = doc["paths"]["/api/v1/recordings"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in ["user", "org", "target", "from", "to", "reason", "protocol", "page"] {
        assert!(params.contains(&p), "{p} missing: {params:?}");
    }
    // Search: hits link the replay at their moment; vendors may not search.
    let found = search_until_found(&web, auditor, "OWNED-42-AUDIT");
    assert!(found.contains(&format!("href=\"/audit/sessions/{id}/replay?t=")), "{found}");
    assert_eq!(web.get("/audit/search?q=OWNED", Auth::Token(&tokens[0])).status, 403);
    assert_eq!(web.get("/audit/search?q=OWNED", Auth::Token(&tokens[1])).status, 403);
    // The audit log: auditors and admins, with the chain's state.
    for (i, expect) in [403u16, 403, 403, 200, 200].into_iter().enumerate() {
        let r = web.get("/audit/log", Auth::Token(&tokens[i]));
        assert_eq!(r.status, expect, "audit log as {}", roles[i]);
        if expect == 200 {
            assert!(r.body.contains("Chain intact"), "{}", r.body);
            assert!(r.body.contains("session.ended"), "{}", r.body);
        }
    }
    // The player's assets: our origin, right types, long cache, content-hashed URLs.
    let page = web.get(&replay, auditor).body;
    let src = |name: &str| {
        let at = page.find(name).unwrap_or_else(|| panic!("{name} not on the replay page"));
        let start = page[..at].rfind('"').expect("quote") + 1;
        page[start..at + name.len()].to_string()
    };
    for (name, ctype) in [
        ("asciinema-player.min.js", "text/javascript"),
        ("asciinema-player.css", "text/css"),
        ("replay.js", "text/javascript"),
    ] {
        let path = src(name);
        assert!(path.starts_with("/assets/"), "{path}");
        let r = web.get(&path, Auth::None);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").is_some_and(|c| c.starts_with(ctype)),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert!(r.header("cache-control").is_some_and(|c| c.contains("max-age=31536000") && c.contains("immutable")));
        assert!(r.body.len() > 200, "{path} is empty");
        let stale = path.replacen("/assets/", "/assets/0000000000000000", 1);
        assert_eq!(web.get(&stale, Auth::None).status, 404);
    }
    lab.finish();
}

/// An auditor searches, in a real headless Chromium, for a word typed in a real ssh session,
/// opens the hit, and the player's terminal shows that moment.
#[test]
fn browser_auditor_search_opens_replay_at_hit() {
    let lab = Lab::new(Backend::Sqlite);
    let web = Web::new(&lab);
    let v = lab.vendor();
    let auditor = Person::new(lab.user_with_role("auditor"));
    // Before and after the word, seconds apart: the replay opened at the hit shows the moment
    // of the word, not what came later.
    let mut typist = Typist::start(&lab, &v);
    typist.type_text("echo BEFORE-$((1+1))\n");
    assert!(typist.wait_text("BEFORE-2", T), "{}", typist.text());
    std::thread::sleep(Duration::from_secs(3));
    typist.type_text("echo REPLAYED-$((6*7))-AUDIT\n");
    assert!(typist.wait_text("REPLAYED-42-AUDIT", T), "{}", typist.text());
    std::thread::sleep(Duration::from_secs(4));
    typist.type_text("echo LATER-$((2+2))-NOTYET\n");
    assert!(typist.wait_text("LATER-4-NOTYET", T), "{}", typist.text());
    let id = lab.live_session(&v.name)["id"].as_str().expect("session id").to_string();
    assert!(typist.exit(T), "{}", typist.text());
    lab.ended_session(&v.name);
    let word = "REPLAYED-42-AUDIT";
    let (_, t) = token(&lab, auditor.name(), "1h");
    search_until_found(&web, Auth::Token(&t), word);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "run `npm ci` in {} (scripts/test does)", dir.display());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-replay-browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let mut node = Command::new("node");
    node.arg(dir.join("replay.mjs"))
        .current_dir(&dir)
        .env("PENSTOCK_URL", format!("https://127.0.0.1:{}/", lab.web_port()))
        .env("PENSTOCK_USER", auditor.name())
        .env("PENSTOCK_PASSWORD", &auditor.v.password)
        .env("PENSTOCK_CODE", auditor.code_ahead())
        .env("PENSTOCK_WORD", word)
        .env("PENSTOCK_LATER", "LATER-4-NOTYET")
        .env("PENSTOCK_SESSION", &id)
        .env("PENSTOCK_SHOTS", &shots);
    let o = common::sshd::run(&mut node, b"", Duration::from_secs(120));
    assert!(
        o.status.success(),
        "browser run failed: {}{} (screenshots in {})",
        stdout(&o),
        stderr(&o),
        shots.display()
    );
    assert!(stdout(&o).contains(&format!("seen {word}")), "{}", stdout(&o));
    for f in ["1-search.png", "2-replay.png"] {
        let len = std::fs::metadata(shots.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
    lab.finish();
}
