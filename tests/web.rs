//! The web console and API (issue #10) against the real `penstock serve`, over HTTPS with the
//! real `curl`, on SQLite and PostgreSQL: every API route × role (allowed, forbidden,
//! unauthenticated), CSRF, console sessions (cookie flags, logout, log out everywhere, idle
//! timeout), lockout shared with SSH, API token scope, expiry and revoke, plain HTTP refused, the
//! security headers; and a real headless Chromium (Debian's, driven by playwright-core) in which
//! a manager approves a request that a real `ssh` is waiting on, which then connects.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sshd::{Answers, Lab, TARGET};
use common::web::{check_route, token, urlenc, Auth, Live, Person, Web};
use common::{stderr, stdout, Backend};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// One approval by a manager; vendors and managers may request.
fn policy() -> String {
    format!(
        "[policy]\nname = \"web-single\"\ndescription = \"line 3 maintenance\"\n\n[match]\ntargets = [\"{TARGET}\"]\n\n\
         [request]\nroles = [\"vendor\", \"manager\"]\n\n[approval]\napprover_roles = [\"manager\"]\nrequired = 1\n\n\
         [limits]\nmax_duration = \"2h\"\n\n[channels]\nshell = true\nexec = true\nsftp = true\nforward = []\n"
    )
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().expect("array").iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

/// The API for every role, the console session for a manager, a vendor and an auditor, CSRF,
/// tokens, and the transport (plain HTTP refused, headers).
fn api_roles_csrf_tokens(b: Backend) {
    let lab = Lab::with_options(b, &[("00-web.toml", &policy())], &[("PENSTOCK_AUTH_MAX_FAILURES", "1000")]);
    let web = Web::new(&lab);
    let [v1, v2, m, a, ad] =
        ["vendor", "vendor", "manager", "auditor", "admin"].map(|r| Person::new(lab.user_with_role(r)));
    let tok: [(i64, String); 5] = [&v1, &v2, &m, &a, &ad].map(|p| token(&lab, p.name(), "90d"));
    let tokens: [String; 5] = tok.clone().map(|t| t.1);
    let [tv1, tv2, tm, ta, tad] = [0, 1, 2, 3, 4].map(|i| tokens[i].as_str());

    // Transport: plain HTTP on the TLS port is refused with a pointer, never content; security
    // headers on pages and API answers.
    let plain = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", &format!("http://127.0.0.1:{}/login", lab.web_port())])
        .output()
        .expect("curl");
    let text = stdout(&plain);
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("use https://"), "{text}");
    assert!(!text.contains("<form") && !text.contains("<html"), "{text}");
    for r in [web.get("/login", Auth::None), web.get("/api/v1/whoami", Auth::Token(tm))] {
        assert_eq!(r.header("strict-transport-security").as_deref(), Some("max-age=31536000"), "{}", r.headers);
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && !csp.contains("http"), "{csp}");
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(r.header("referrer-policy").as_deref(), Some("same-origin"));
    }
    // A cross-site form post is refused whatever it carries.
    let r = web.call(
        "POST",
        "/login",
        Auth::None,
        Some(("application/x-www-form-urlencoded", "user=x&password=y&code=123456".into())),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let mut c = Command::new("curl");
    c.args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Origin: https://evil.example",
        "-d",
        "user=x&password=y&code=1",
    ])
    .arg(format!("{}/login", web.base));
    assert_eq!(stdout(&common::sshd::run(&mut c, b"", T)).trim(), "403", "a cross-origin post was accepted");
    // Bodies are bounded: refused before they are read (curl may see the refusal or the reset
    // of the connection it was still sending on), and nothing was filed.
    let big = web.post_json(
        "/api/v1/requests",
        Auth::Token(tv1),
        json!({ "target": TARGET, "duration": "5m", "reason": "x".repeat(100_000) }),
    );
    assert!(big.status == 413 || big.status == 0, "{} {}", big.status, big.body);
    assert_eq!(web.get("/api/v1/requests", Auth::Token(tv1)).body, "[]");

    // The OpenAPI document, generated from the handlers, lists every route.
    let doc = web.get("/api/v1/openapi.json", Auth::None);
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for p in [
        "/api/v1/requests",
        "/api/v1/requests/{id}/approve",
        "/api/v1/requests/{id}/deny",
        "/api/v1/grants",
        "/api/v1/grants/{id}/revoke",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}/kill",
        "/api/v1/notices",
        "/api/v1/search",
        "/api/v1/audit",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
    }

    // A vendor files a request through the API.
    let r = web.post_json(
        "/api/v1/requests",
        Auth::Token(tv1),
        json!({ "target": TARGET, "duration": "30m", "reason": "CHG-7001 web api" }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().expect("id");
    assert_eq!(r.json()["state"], "pending");
    let r = web.post_json(
        "/api/v1/requests",
        Auth::Token(ta),
        json!({ "target": TARGET, "duration": "30m", "reason": "x" }),
    );
    assert_eq!(r.status, 403, "an auditor filed a request: {}", r.body);

    // Route × role.
    let zero = "0".repeat(32);
    check_route(&web, &tokens, "GET", "/api/v1/whoami", None, [200; 5]);
    check_route(&web, &tokens, "GET", "/api/v1/requests", None, [200; 5]);
    check_route(&web, &tokens, "GET", &format!("/api/v1/requests/{id}"), None, [200, 404, 200, 200, 200]);
    // The admin may decide as far as the console is concerned, but the policy names only
    // managers, so the core refuses; after the manager's approval the request is decided (400).
    let r = web.post_json(&format!("/api/v1/requests/{id}/approve"), Auth::Token(tad), json!({}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("does not name"), "{}", r.body);
    check_route(
        &web,
        &tokens,
        "POST",
        &format!("/api/v1/requests/{id}/approve"),
        Some(json!({})),
        [403, 403, 200, 403, 400],
    );
    let approved = web.get(&format!("/api/v1/requests/{id}"), Auth::Token(tm)).json();
    assert_eq!(approved["state"], "approved", "{approved}");
    let gid = approved["grant_id"].as_i64().expect("grant id");
    check_route(
        &web,
        &tokens,
        "POST",
        &format!("/api/v1/requests/{id}/deny"),
        Some(json!({})),
        [403, 403, 400, 403, 400],
    );
    check_route(&web, &tokens, "GET", "/api/v1/grants", None, [200; 5]);
    check_route(&web, &tokens, "GET", "/api/v1/sessions", None, [200; 5]);
    check_route(&web, &tokens, "GET", "/api/v1/sessions?live=true", None, [200; 5]);
    check_route(&web, &tokens, "GET", "/api/v1/notices", None, [200; 5]);
    check_route(&web, &tokens, "POST", &format!("/api/v1/sessions/{zero}/kill"), None, [403, 403, 404, 403, 404]);
    check_route(&web, &tokens, "POST", "/api/v1/grants/999999/revoke", None, [403, 403, 404, 403, 404]);
    check_route(&web, &tokens, "GET", "/api/v1/search?q=hello", None, [403, 403, 200, 200, 200]);
    check_route(&web, &tokens, "GET", "/api/v1/audit?limit=5", None, [403, 403, 403, 200, 200]);
    for t in [None, Some(tm)] {
        let r = web.get("/api/v1/nothing-here", t.map(Auth::Token).unwrap_or(Auth::None));
        assert_eq!(r.status, 404, "{}", r.body);
    }

    // What each role sees: a vendor only its own requests, grants and sessions.
    assert_eq!(ids(&web.get("/api/v1/requests", Auth::Token(tv1)).json()), vec![id]);
    assert!(ids(&web.get("/api/v1/requests", Auth::Token(tv2)).json()).is_empty());
    for t in [tm, ta, tad] {
        assert!(ids(&web.get("/api/v1/requests", Auth::Token(t)).json()).contains(&id));
        assert!(ids(&web.get("/api/v1/grants", Auth::Token(t)).json()).contains(&gid));
    }
    let g1 = web.get("/api/v1/grants", Auth::Token(tv1)).json();
    assert_eq!(ids(&g1), vec![gid], "{g1}");
    assert_eq!(g1[0]["live"], true);
    assert!(ids(&web.get("/api/v1/grants", Auth::Token(tv2)).json()).is_empty());

    // A real session under the grant: the vendor sees it, the other vendor does not.
    let mut c = lab.client_with("ssh", &Answers { password: v1.v.password.clone(), code: v1.fresh_code() }, None);
    c.arg(lab.dest(&v1.v)).arg("echo web-session-marker");
    let o = common::sshd::run(&mut c, b"", T);
    assert!(stdout(&o).contains("web-session-marker"), "{}{}", stdout(&o), stderr(&o));
    let sessions_of = |t: &str| -> Vec<String> {
        web.get("/api/v1/sessions", Auth::Token(t))
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s["user"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(sessions_of(tv1), vec![v1.name().to_string()]);
    assert!(sessions_of(tv2).is_empty());
    assert!(sessions_of(ta).contains(&v1.name().to_string()));

    // Audit API for auditors: the approval is there.
    let audit = web.get("/api/v1/audit?limit=1000", Auth::Token(ta)).json();
    assert!(
        audit.as_array().expect("array").iter().any(|e| e["kind"] == "request.approved" && e["actor"] == m.name()),
        "{audit}"
    );

    // Revoke through the API, once.
    let r = web.call("POST", &format!("/api/v1/grants/{gid}/revoke"), Auth::Token(tm), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["revoked_at"].is_i64() && r.json()["live"] == false, "{}", r.body);
    assert_eq!(web.call("POST", &format!("/api/v1/grants/{gid}/revoke"), Auth::Token(tm), None).status, 400);

    // Token scope, expiry and revoke.
    let (short_id, short) = token(&lab, v2.name(), "2s");
    assert_eq!(web.get("/api/v1/whoami", Auth::Token(&short)).status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(web.get("/api/v1/whoami", Auth::Token(&short)).status, 401, "an expired token still works");
    let list = lab.install.ok(&["token", "list"]);
    assert!(list.lines().any(|l| l.starts_with(&format!("{short_id} ")) && l.contains("expired")), "{list}");
    lab.install.ok(&["token", "revoke", &tok[3].0.to_string()]);
    assert_eq!(web.get("/api/v1/whoami", Auth::Token(ta)).status, 401, "a revoked token still works");
    lab.install.fails(&["token", "revoke", &tok[3].0.to_string()]);
    lab.install.ok(&["user", "disable", v2.name()]);
    assert_eq!(web.get("/api/v1/whoami", Auth::Token(tv2)).status, 401, "a disabled user's token still works");
    assert_eq!(lab.audit_events("token.created").len(), 6);
    assert_eq!(lab.audit_events("token.revoked").len(), 1);

    // Console login: the cookie's flags; the same answer for an unknown user as for a wrong
    // password.
    let r = web.login_with(&m, &m.v.password.clone());
    assert_eq!(r.status, 303, "{}", r.body);
    let sc = r.header("set-cookie").expect("cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(sc.contains(flag), "cookie without {flag}: {sc}");
    }
    let mc = r.session_cookie();
    let wrong = web.post_form(
        "/login",
        Auth::None,
        &[("user", m.name()), ("password", "not-the-password"), ("code", "123456")],
    );
    let ghost = web.post_form("/login", Auth::None, &[("user", "nobody-here"), ("password", "x"), ("code", "123456")]);
    assert_eq!((wrong.status, ghost.status), (401, 401));
    assert_eq!(wrong.body, ghost.body, "the login page tells unknown users from wrong passwords");

    // Session fixation: a cookie the browser already had is never adopted at login.
    let planted = "planted-by-an-attacker-000000000000000000000";
    let code = m.fresh_code();
    let r = web.call(
        "POST",
        "/login",
        Auth::Cookie(planted, None),
        Some((
            "application/x-www-form-urlencoded",
            format!("user={}&password={}&code={code}", m.name(), urlenc(&m.v.password)),
        )),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let fresh = r.session_cookie();
    assert_ne!(fresh, planted);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(planted, None)).status, 401);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&fresh, None)).status, 200);
    // Tokens count only in the Authorization header, never in the URL.
    for q in ["token", "access_token", "api_token"] {
        assert_eq!(web.get(&format!("/api/v1/whoami?{q}={tm}"), Auth::None).status, 401, "?{q}= authenticated");
    }

    // The manager's requests page holds the whole decision context of a new request.
    let r = web.post_json(
        "/api/v1/requests",
        Auth::Token(tv1),
        json!({ "target": TARGET, "duration": "45m", "reason": "CHG-7002 <b>firmware</b>" }),
    );
    let id2 = r.json()["id"].as_i64().unwrap_or_else(|| panic!("{}", r.body));
    let page = web.get("/requests", Auth::Cookie(&mc, None));
    assert_eq!(page.status, 200);
    let card_at = page.body.find(&format!("id=\"request-{id2}\"")).unwrap_or_else(|| panic!("{}", page.body));
    let card = &page.body[card_at..];
    let card = &card[..card.find("</article>").expect("card end")];
    for needle in [
        v1.name(),
        "Acme Automation",
        TARGET,
        "CHG-7002 &lt;b&gt;firmware&lt;/b&gt;",
        "45m",
        "0 of 1",
        "web-single: line 3 maintenance",
        "any time",
        "<li>",
        "title=\"",
        &format!("Approve #{id2}"),
    ] {
        assert!(card.contains(needle), "decision card lacks {needle:?}:\n{card}");
    }
    assert!(page.body.contains("id=\"pending-count\" aria-label=\"1 pending\""), "{}", page.body);
    let csrf = page.csrf();

    // CSRF: refused without or with a wrong token, on forms and on the API.
    let decide = format!("/requests/{id2}/decide");
    let r = web.post_form(&decide, Auth::Cookie(&mc, None), &[("decision", "deny")]);
    assert_eq!(r.status, 403, "a form without CSRF token was accepted: {}", r.body);
    let r = web.post_form(&decide, Auth::Cookie(&mc, None), &[("csrf", "wrong"), ("decision", "deny")]);
    assert_eq!(r.status, 403);
    assert_eq!(web.post_json(&format!("/api/v1/requests/{id2}/deny"), Auth::Cookie(&mc, None), json!({})).status, 403);
    assert_eq!(
        web.post_json(&format!("/api/v1/requests/{id2}/deny"), Auth::Cookie(&mc, Some("nope")), json!({})).status,
        403
    );
    assert_eq!(web.get(&format!("/api/v1/requests/{id2}"), Auth::Token(tm)).json()["state"], "pending");
    // With the token, the API passes the CSRF gate (and answers for the grant that isn't).
    assert_eq!(web.call("POST", "/api/v1/grants/999999/revoke", Auth::Cookie(&mc, Some(&csrf)), None).status, 404);
    let r = web.post_form(
        &decide,
        Auth::Cookie(&mc, None),
        &[("csrf", &csrf), ("decision", "deny"), ("comment", "not tonight")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let denied = web.get(&format!("/api/v1/requests/{id2}"), Auth::Token(tm)).json();
    assert_eq!((denied["state"].as_str(), denied["decision_comment"].as_str()), (Some("denied"), Some("not tonight")));

    // A vendor's and an auditor's console: no deciding.
    let r = web.post_json(
        "/api/v1/requests",
        Auth::Token(tv1),
        json!({ "target": TARGET, "duration": "5m", "reason": "CHG-7003" }),
    );
    let id3 = r.json()["id"].as_i64().unwrap_or_else(|| panic!("{}", r.body));
    let (vc, vcsrf) = web.login(&v1);
    let vpage = web.get("/requests", Auth::Cookie(&vc, None));
    assert!(!vpage.body.contains("Approve #"), "a vendor is offered a decision");
    let r = web.post_form(
        &format!("/requests/{id3}/decide"),
        Auth::Cookie(&vc, None),
        &[("csrf", &vcsrf), ("decision", "approve")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let (ac, acsrf) = web.login(&a);
    let r = web.post_form(
        &format!("/requests/{id3}/decide"),
        Auth::Cookie(&ac, None),
        &[("csrf", &acsrf), ("decision", "approve")],
    );
    assert_eq!(r.status, 403, "an auditor decided: {}", r.body);
    assert_eq!(web.get(&format!("/api/v1/requests/{id3}"), Auth::Token(tm)).json()["state"], "pending");
    // Pages without a session go to the login page.
    for p in ["/requests", "/grants", "/sessions", "/account"] {
        let r = web.get(p, Auth::None);
        assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/login")), "{p}");
        let r = web.get(p, Auth::Cookie("forged-cookie-value", None));
        assert_eq!(r.status, 303, "{p} with a forged cookie");
    }

    // The manager ends a live session and revokes a grant from the console's pages.
    let g2 = lab.grant(v1.name(), TARGET, "1h");
    let mut c = lab.client_with("ssh", &Answers { password: v1.v.password.clone(), code: v1.fresh_code() }, None);
    c.arg(lab.dest(&v1.v)).arg("echo LIVE-FOR-KILL; sleep 60");
    let mut live = Live::spawn(&mut c);
    assert!(live.wait_text("LIVE-FOR-KILL", Duration::from_secs(30)), "{}", live.text());
    let sid = lab.live_session(v1.name())["id"].as_str().expect("session id").to_string();
    let page = web.get("/sessions", Auth::Cookie(&mc, None));
    assert!(
        page.body.contains(&format!("id=\"session-{sid}\"")) && page.body.contains("End session of"),
        "{}",
        page.body
    );
    let vpage = web.get("/sessions", Auth::Cookie(&vc, None));
    assert!(vpage.body.contains(&sid) && !vpage.body.contains("End session of"), "{}", vpage.body);
    let r = web.post_form(&format!("/sessions/{sid}/kill"), Auth::Cookie(&vc, None), &[("csrf", &vcsrf)]);
    assert_eq!(r.status, 403, "a vendor ended a session: {}", r.body);
    for bad in [None, Some("wrong")] {
        let form: Vec<(&str, &str)> = bad.map(|b| vec![("csrf", b)]).unwrap_or_default();
        let r = web.post_form(&format!("/sessions/{sid}/kill"), Auth::Cookie(&mc, None), &form);
        assert_eq!(r.status, 403, "a kill without the CSRF token was accepted: {}", r.body);
        let r = web.post_form(&format!("/grants/{g2}/revoke"), Auth::Cookie(&mc, None), &form);
        assert_eq!(r.status, 403, "a revoke without the CSRF token was accepted: {}", r.body);
        assert_eq!(web.call("POST", &format!("/api/v1/sessions/{sid}/kill"), Auth::Cookie(&mc, bad), None).status, 403);
        assert_eq!(web.call("POST", &format!("/api/v1/grants/{g2}/revoke"), Auth::Cookie(&mc, bad), None).status, 403);
    }
    assert!(live.alive(), "the session ended without a valid kill: {}", live.text());
    let r = web.post_form(&format!("/sessions/{sid}/kill"), Auth::Cookie(&mc, None), &[("csrf", &csrf)]);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/sessions?done=killed")), "{}", r.body);
    assert!(live.wait(Duration::from_secs(15)).is_some(), "the session outlived its kill: {}", live.text());
    // The row is closed after the recorder's final flush, a moment after the client sees the end.
    let end = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let all = web.get("/api/v1/sessions", Auth::Token(tm)).json();
        let row =
            all.as_array().expect("array").iter().find(|s| s["id"] == sid.as_str()).cloned().expect("session row");
        if !row["end_reason"].is_null() || Instant::now() > end {
            break row;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(row["end_reason"], "killed", "{row}");
    let page = web.get("/grants", Auth::Cookie(&mc, None));
    assert!(page.body.contains(&format!("Revoke grant {g2}")), "{}", page.body);
    let r = web.post_form(&format!("/grants/{g2}/revoke"), Auth::Cookie(&mc, None), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    let g = web.get("/api/v1/grants", Auth::Token(tm)).json();
    let row = g.as_array().expect("array").iter().find(|x| x["id"] == g2).cloned().expect("grant row");
    assert!(row["revoked_at"].is_i64(), "{row}");
    assert!(lab.audit_events("session.kill_requested").iter().any(|e| e["actor"] == m.name()));

    // Logout ends the session.
    let r = web.post_form("/logout", Auth::Cookie(&vc, None), &[("csrf", &vcsrf)]);
    assert_eq!(r.status, 303);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&vc, None)).status, 401, "the cookie works after logout");

    // Log out everywhere: the manager's three sessions are listed, then all end.
    let (mc2, mcsrf2) = web.login(&m);
    let account = web.get("/account", Auth::Cookie(&mc2, None));
    assert_eq!(account.body.matches("id=\"console-session-").count(), 3, "{}", account.body);
    let r = web.post_form("/account/sessions/logout-all", Auth::Cookie(&mc2, None), &[("csrf", &mcsrf2)]);
    assert_eq!(r.status, 303);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&mc, None)).status, 401);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&mc2, None)).status, 401);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&ac, None)).status, 200, "another user's session ended too");

    // Audited.
    let logins = lab.audit_events("web.login");
    assert_eq!(logins.len(), 5, "{logins:?}");
    let reasons: Vec<String> = lab
        .audit_events("web.logout")
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reasons.iter().filter(|r| *r == "logout").count(), 1, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "logout-all").count(), 3, "{reasons:?}");
    assert!(lab.audit_events("login.failed").iter().any(|e| e["details"]["user"] == "nobody-here"));

    // Token values and cookies are stored only as hashes.
    for secret in tokens.iter().chain([&mc, &mc2, &vc, &ac, &fresh]) {
        let found: Vec<String> =
            lab.install.find_secret(secret.as_bytes()).into_iter().filter(|f| !f.contains("token create")).collect();
        assert!(found.is_empty(), "a token or cookie is stored: {found:?}");
    }
    lab.finish();
}

/// Failed console logins count toward the same lockout as SSH; an idle console session ends.
fn lockout_and_idle_timeout(b: Backend) {
    let lab = Lab::with_options(
        b,
        &[("00-web.toml", &policy())],
        &[("PENSTOCK_AUTH_MAX_FAILURES", "3"), ("PENSTOCK_WEB_IDLE_TIMEOUT_SECS", "3")],
    );
    let web = Web::new(&lab);
    let m = Person::new(lab.user_with_role("manager"));
    let (cookie, _) = web.login(&m);
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&cookie, None)).status, 200);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(web.get("/api/v1/whoami", Auth::Cookie(&cookie, None)).status, 401, "an idle session still works");
    assert_eq!(web.get("/requests", Auth::Cookie(&cookie, None)).status, 303);

    for _ in 0..3 {
        let r = web.post_form(
            "/login",
            Auth::None,
            &[("user", m.name()), ("password", "wrong-password"), ("code", "000000")],
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = web.login_with(&m, &m.v.password.clone());
    assert_eq!(r.status, 429, "the right password works during a lockout: {}", r.body);
    assert!(r.body.contains("Too many failed attempts"), "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    // The same lockout holds over SSH.
    let mut c = lab.client_with("ssh", &Answers { password: m.v.password.clone(), code: m.v.code() }, None);
    c.arg(format!("{}@127.0.0.1", m.name())).arg("whoami");
    let o = common::sshd::run(&mut c, b"", T);
    assert!(!o.status.success(), "ssh logged in during a web lockout: {}", stdout(&o));
    assert!(lab.audit_events("login.locked_out").iter().any(|e| e["details"]["scope"] == format!("user:{}", m.name())));
    assert!(lab.audit_events("login.failed").len() >= 3);

    // `[web] enabled = false`: nothing listens on the console's port.
    let mut lab = lab;
    lab.restart_gateway(&[("PENSTOCK_WEB_ENABLED", "false")]);
    assert!(lab.gateway_log().contains("web console disabled"), "{}", lab.gateway_log());
    assert!(std::net::TcpStream::connect(("127.0.0.1", lab.web_port())).is_err(), "the disabled console listens");
    lab.finish();
}

backend_tests! {
    fn api_roles_csrf_tokens;
    fn lockout_and_idle_timeout;
}

/// The "done when", first half: a vendor's `ssh` waits on its request; a manager logs in
/// to the console in a real headless Chromium (password + TOTP), sees the request with its
/// context and approves it; the waiting `ssh` connects. Screenshots are kept in
/// `target/tmp/web-browser/`.
#[test]
fn browser_manager_approves_waiting_ssh() {
    let lab =
        Lab::with_options(Backend::Sqlite, &[("00-web.toml", &policy())], &[("PENSTOCK_AUTH_MAX_FAILURES", "1000")]);
    let vendor = Person::new(lab.user_with_role("vendor"));
    let manager = Person::new(lab.user_with_role("manager"));
    // The vendor files a request over SSH and connects; the connection waits for the approval.
    let mut c =
        lab.client_with("ssh", &Answers { password: vendor.v.password.clone(), code: vendor.fresh_code() }, None);
    c.arg(format!("{}@127.0.0.1", vendor.name()))
        .arg(format!("request {TARGET} --for 30m --reason \"CHG-4242 browser\""));
    let o = common::sshd::run(&mut c, b"", T);
    let out = stdout(&o);
    let id: i64 = out
        .strip_prefix("request ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id: {out}{}", stderr(&o)));
    let mut c =
        lab.client_with("ssh", &Answers { password: vendor.v.password.clone(), code: vendor.fresh_code() }, None);
    c.arg(lab.dest(&vendor.v)).arg("echo CONNECTED-AFTER-BROWSER; sleep 1");
    let mut waiting = Live::spawn(&mut c);
    assert!(waiting.wait_text(&format!("request {id} pending"), Duration::from_secs(30)), "{}", waiting.text());
    assert!(!waiting.text().contains("CONNECTED-AFTER-BROWSER"));

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "run `npm ci` in {} (scripts/test does)", dir.display());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let mut node = Command::new("node");
    node.arg(dir.join("approve.mjs"))
        .current_dir(&dir)
        .env("PENSTOCK_URL", format!("https://127.0.0.1:{}/", lab.web_port()))
        .env("PENSTOCK_USER", manager.name())
        .env("PENSTOCK_PASSWORD", &manager.v.password)
        .env("PENSTOCK_CODE", manager.code_ahead())
        .env("PENSTOCK_REQUEST_ID", id.to_string())
        .env("PENSTOCK_SHOTS", &shots);
    let o = common::sshd::run(&mut node, b"", Duration::from_secs(120));
    assert!(
        o.status.success(),
        "browser run failed: {}{} (screenshots in {})",
        stdout(&o),
        stderr(&o),
        shots.display()
    );
    assert!(stdout(&o).contains(&format!("approved {id}")), "{}", stdout(&o));
    for f in ["1-login.png", "2-pending.png", "3-approved.png"] {
        let len = std::fs::metadata(shots.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
    assert!(
        waiting.wait_text("CONNECTED-AFTER-BROWSER", Duration::from_secs(20)),
        "the waiting ssh did not connect after the browser approval: {}",
        waiting.text()
    );
    assert!(waiting.wait(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", waiting.text());
    let approvals = lab.audit_events("request.approved");
    assert!(approvals
        .iter()
        .any(|e| e["actor"] == manager.name() && e["details"]["comment"] == "approved from the browser test"));
    assert_eq!(lab.audit_events("web.login").len(), 1);
    lab.finish();
}
