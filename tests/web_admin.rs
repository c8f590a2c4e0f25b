//! The vendor's and the admin's console pages and API routes (issue #10, second slice) against
//! the real `penstock serve`, over HTTPS with the real `curl`, on SQLite and PostgreSQL: every new
//! route × role (allowed, forbidden, unauthenticated), a vendor filing a request through the form
//! (with its errors), the grant's connection details (`ssh` line, `.rdp` file), the grant
//! credential after a fresh TOTP code (replay refused, audited, and it works as the SSH
//! password), the admin's user, key, MFA and target changes (audited with the admin as actor, CSRF
//! on every form), a target's host key fetched from the Lab's real sshd and pinned after
//! confirmation; a real headless Chromium for the vendor's and the admin's flows; and the real
//! schemathesis fuzzing the API against its OpenAPI document.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sshd::{Answers, Lab, TARGET, TARGET_LOGIN, TARGET_PASSWORD};
use common::web::{check_page, check_route, token, Auth, Live, Person, Web};
use common::{stderr, stdout, Backend};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// Vendors and managers may request [`TARGET`]; one manager approves; at most 2 h.
fn policy() -> String {
    format!(
        "[policy]\nname = \"web-admin\"\ndescription = \"line 3 maintenance\"\n\n[match]\ntargets = [\"{TARGET}\"]\n\n\
         [request]\nroles = [\"vendor\", \"manager\"]\n\n[approval]\napprover_roles = [\"manager\"]\nrequired = 1\n\n\
         [limits]\nmax_duration = \"2h\"\n\n[channels]\nshell = true\nexec = true\nsftp = true\nforward = []\n"
    )
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|t| t["name"].as_str().unwrap_or("").to_string()).collect()
}

/// The text of the element with `id` (`<tag id="ID">TEXT</…>`).
fn element_text(body: &str, id: &str) -> String {
    let at = body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {body}"));
    let rest = &body[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("text end");
    rest[start..start + end].to_string()
}

/// The value of the hidden field `name` in a page.
fn field(body: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let at = body.find(&needle).unwrap_or_else(|| panic!("no field {name} in {body}"));
    let rest = &body[at + needle.len()..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

fn host_key_fingerprint(line: &str) -> String {
    penstock::keys::fingerprint(&penstock::keys::parse_public_key(line).expect("sshd host key"))
}

/// Every new API route and page for every role, and what each does.
fn vendor_and_admin_routes(b: Backend) {
    let lab = Lab::with_options(b, &[("00-web.toml", &policy())], &[("PENSTOCK_AUTH_MAX_FAILURES", "1000")]);
    let web = Web::new(&lab);
    let [v1, v2, m, a, ad] =
        ["vendor", "vendor", "manager", "auditor", "admin"].map(|r| Person::new(lab.user_with_role(r)));
    let tokens: [String; 5] = [&v1, &v2, &m, &a, &ad].map(|p| token(&lab, p.name(), "1d").1);
    let [tv1, _tv2, tm, _ta, tad] = [0, 1, 2, 3, 4].map(|i| tokens[i].as_str());

    // The OpenAPI document lists the new routes.
    let doc = web.get("/api/v1/openapi.json", Auth::None).json();
    for p in [
        "/api/v1/users",
        "/api/v1/users/{name}/disable",
        "/api/v1/users/{name}/reset-mfa",
        "/api/v1/users/{name}/keys",
        "/api/v1/users/{name}/keys/remove",
        "/api/v1/targets",
        "/api/v1/targets/fetch-identity",
        "/api/v1/policies",
        "/api/v1/grants/{id}/connect",
        "/api/v1/grants/{id}/credential",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
    }

    // Users: only admins list, add, disable, reset MFA and change keys; each change audited with
    // the admin as actor.
    check_route(&web, &tokens, "GET", "/api/v1/users", None, [403, 403, 403, 403, 200]);
    let listed = web.get("/api/v1/users", Auth::Token(tad)).json();
    assert!(names(&listed).contains(&v1.name().to_string()), "{listed}");
    check_route(
        &web,
        &tokens,
        "POST",
        "/api/v1/users",
        Some(json!({ "name": "web-made", "role": "vendor", "org": "Beta GmbH", "expires": "2099-12-31" })),
        [403, 403, 403, 403, 201],
    );
    let r = web.post_json("/api/v1/users", Auth::Token(tad), json!({ "name": "web-made", "role": "vendor" }));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = web.post_json("/api/v1/users", Auth::Token(tad), json!({ "name": "web-bad", "role": "overlord" }));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("unknown role"), "{}", r.body);
    let r = web.post_json("/api/v1/users", Auth::Token(tad), json!({ "name": "web-made2", "role": "manager" }));
    assert_eq!(r.status, 201, "{}", r.body);
    let made = r.json();
    assert!(made["otpauth_uri"].as_str().is_some_and(|u| u.starts_with("otpauth://totp/")), "{made}");
    assert!(made["password"].as_str().is_some_and(|p| p.len() >= 16), "{made}");
    assert_eq!((made["user"]["role"].as_str(), made["user"]["disabled"].as_bool()), (Some("manager"), Some(false)));
    lab.add_secret(made["password"].as_str().unwrap_or_default());

    let keyfile = lab.install.scratch().join("web-made-key");
    let pubkey = common::ssh_keygen(&keyfile, "web-made@test");
    let fp = common::ssh_fingerprint(&keyfile.with_extension("pub"));
    check_route(
        &web,
        &tokens,
        "POST",
        "/api/v1/users/web-made/keys",
        Some(json!({ "key": pubkey })),
        [403, 403, 403, 403, 200],
    );
    let r = web.post_json("/api/v1/users/web-made/keys", Auth::Token(tad), json!({ "key": pubkey }));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = web.post_json("/api/v1/users/web-made/keys", Auth::Token(tad), json!({ "key": "ssh-ed25519 not-a-key" }));
    assert_eq!(r.status, 400, "{}", r.body);
    let u = web.get("/api/v1/users", Auth::Token(tad)).json();
    let row = u.as_array().expect("array").iter().find(|x| x["name"] == "web-made").cloned().expect("row");
    assert_eq!(row["keys"], json!([fp]), "{row}");
    check_route(
        &web,
        &tokens,
        "POST",
        "/api/v1/users/web-made/keys/remove",
        Some(json!({ "fingerprint": fp })),
        [403, 403, 403, 403, 200],
    );
    let r = web.post_json("/api/v1/users/web-made/keys/remove", Auth::Token(tad), json!({ "fingerprint": fp }));
    assert_eq!(r.status, 404, "{}", r.body);
    check_route(&web, &tokens, "POST", "/api/v1/users/web-made/reset-mfa", None, [403, 403, 403, 403, 200]);
    check_route(&web, &tokens, "POST", "/api/v1/users/web-made/disable", None, [403, 403, 403, 403, 200]);
    assert_eq!(web.call("POST", "/api/v1/users/nobody-at-all/disable", Auth::Token(tad), None).status, 404);
    let r = web.call("POST", &format!("/api/v1/users/{}/disable", ad.name()), Auth::Token(tad), None);
    assert_eq!(r.status, 400, "an admin disabled itself: {}", r.body);
    let listed = lab.install.ok(&["user", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("web-made ") && l.contains("disabled")), "{listed}");
    for kind in ["user.added", "user.key_added", "user.key_removed", "user.mfa_reset", "user.disabled"] {
        assert!(
            lab.audit_events(kind).iter().any(|e| e["actor"] == ad.name() && e["details"]["user"] == "web-made"),
            "no {kind} by {}",
            ad.name()
        );
    }

    // Targets: a vendor sees what it may request, with the policy's limits and no addresses;
    // the others see every target with its address and pinned identity.
    check_route(&web, &tokens, "GET", "/api/v1/targets", None, [200; 5]);
    let vt = web.get("/api/v1/targets", Auth::Token(tv1)).json();
    assert_eq!(names(&vt), vec![TARGET.to_string()], "{vt}");
    assert_eq!((vt[0]["policy"].as_str(), vt[0]["max_duration_secs"].as_i64()), (Some("web-admin"), Some(7200)));
    assert!(vt[0]["address"].is_null() && vt[0]["pinned"].is_null(), "a vendor sees target details: {vt}");
    let sshd_fp = host_key_fingerprint(&lab.sshd.host_key);
    let at = web.get("/api/v1/targets", Auth::Token(tad)).json();
    assert_eq!(at[0]["address"].as_str(), Some(lab.sshd.address().as_str()), "{at}");
    assert_eq!(at[0]["pinned"].as_str(), Some(sshd_fp.as_str()), "{at}");

    // Fetch the Lab sshd's host key, then pin it.
    let fetch = json!({ "address": lab.sshd.address() });
    check_route(
        &web,
        &tokens,
        "POST",
        "/api/v1/targets/fetch-identity",
        Some(fetch.clone()),
        [403, 403, 403, 403, 200],
    );
    let f = web.post_json("/api/v1/targets/fetch-identity", Auth::Token(tad), fetch).json();
    assert_eq!(f["fingerprint"].as_str(), Some(sshd_fp.as_str()), "{f}");
    let host_key = f["host_key"].as_str().expect("host key").to_string();
    let r = web.post_json(
        "/api/v1/targets/fetch-identity",
        Auth::Token(tad),
        json!({ "address": "127.0.0.1:1", "protocol": "ssh" }),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("cannot fetch the host key"), "{}", r.body);
    let new_target = |name: &str, key: Option<&str>| {
        json!({ "name": name, "address": lab.sshd.address(), "login": TARGET_LOGIN, "password": TARGET_PASSWORD,
                "host_key": key, "site": "north", "zone": "cell-2" })
    };
    check_route(
        &web,
        &tokens,
        "POST",
        "/api/v1/targets",
        Some(new_target("plc-web", Some(&host_key))),
        [403, 403, 403, 403, 201],
    );
    assert_eq!(web.post_json("/api/v1/targets", Auth::Token(tad), new_target("plc-web", Some(&host_key))).status, 409);
    let r = web.post_json("/api/v1/targets", Auth::Token(tad), new_target("plc-unpinned", None));
    assert_eq!(r.status, 400, "an SSH target without a pinned key was added: {}", r.body);
    let show = lab.install.ok(&["target", "show", "plc-web"]);
    assert!(show.contains(&sshd_fp), "{show}");
    assert!(lab
        .audit_events("target.added")
        .iter()
        .any(|e| e["actor"] == ad.name() && e["details"]["host_key_fingerprint"] == sshd_fp.as_str()));

    // A NUL byte in a search (schemathesis found a 500 there) is a clear 400.
    let r = web.get("/api/v1/search?q=a%00b", Auth::Token(tm));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("control characters"), "{}", r.body);

    // Policies (read-only) with the targets each governs.
    check_route(&web, &tokens, "GET", "/api/v1/policies", None, [403, 403, 403, 403, 200]);
    let pol = web.get("/api/v1/policies", Auth::Token(tad)).json();
    let p = pol.as_array().expect("array").iter().find(|p| p["name"] == "web-admin").cloned().expect("policy");
    assert_eq!((p["targets"].clone(), p["max_duration_secs"].as_i64()), (json!([TARGET]), Some(7200)), "{p}");

    // Console logins for every role; the new pages by role.
    let cookies: [(String, String); 5] = [&v1, &v2, &m, &a, &ad].map(|p| web.login(p));
    let only_cookies: [String; 5] = cookies.clone().map(|c| c.0);
    let (vc, vcsrf) = (cookies[0].0.as_str(), cookies[0].1.as_str());
    let (adc, adcsrf) = (cookies[4].0.as_str(), cookies[4].1.as_str());
    for p in ["/admin/users", "/admin/targets", "/admin/policies"] {
        check_page(
            &web,
            &only_cookies,
            p,
            [403, 403, 403, 403, 200],
            &["web-made", "Add a target", "Targets governed"],
        );
    }
    check_page(&web, &only_cookies, "/requests/new", [200, 200, 200, 403, 200], &[]);
    let page = web.get("/policies-not-here", Auth::Cookie(adc, None));
    assert_eq!(page.status, 404);
    let nav = web.get("/requests", Auth::Cookie(adc, None)).body;
    assert!(nav.contains("href=\"/admin/users\""), "{nav}");
    let nav = web.get("/requests", Auth::Cookie(vc, None)).body;
    assert!(nav.contains("href=\"/requests/new\"") && !nav.contains("/admin/"), "{nav}");
    let pp = web.get("/admin/policies", Auth::Cookie(adc, None)).body;
    assert!(pp.contains("id=\"policy-web-admin\"") && pp.contains("plc-web"), "{pp}");

    // The vendor files a request through the form: the targets it may request with their
    // limits; a clear error keeps what was typed; then it is filed.
    let form = web.get("/requests/new", Auth::Cookie(vc, None));
    assert!(form.body.contains(&format!("id=\"target-{TARGET}\"")) && form.body.contains("2h"), "{}", form.body);
    assert!(form.body.contains("any time (no maintenance windows)"), "{}", form.body);
    let fields = |d: &str, csrf: &str| -> Vec<(&'static str, String)> {
        vec![
            ("csrf", csrf.to_string()),
            ("target", TARGET.to_string()),
            ("duration", d.to_string()),
            ("reason", "CHG-9001 <i>form</i>".into()),
        ]
    };
    let post = |f: Vec<(&str, String)>| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        web.post_form("/requests/new", Auth::Cookie(vc, None), &f)
    };
    let r = post(fields("5h", vcsrf));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("role=\"alert\"") && r.body.contains("exceeds the maximum of 2h"), "{}", r.body);
    assert!(r.body.contains("CHG-9001 &lt;i&gt;form&lt;/i&gt;</textarea>"), "the form lost the reason: {}", r.body);
    let r = post(fields("30m", "wrong-csrf"));
    assert_eq!(r.status, 403, "a request without the CSRF token was filed: {}", r.body);
    let r = post(vec![
        ("csrf", vcsrf.to_string()),
        ("target", "no-such-plc".into()),
        ("duration", "1h".into()),
        ("reason", "x".into()),
    ]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(web.get("/api/v1/requests", Auth::Token(tv1)).body, "[]");
    let r = post(fields("30m", vcsrf));
    assert_eq!(r.status, 303, "{}", r.body);
    let loc = r.header("location").unwrap_or_default();
    let id: i64 =
        loc.strip_prefix("/requests?done=filed-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{loc}"));
    let shown = web.get(&loc, Auth::Cookie(vc, None)).body;
    assert!(shown.contains(&format!("Request {id} filed")), "{shown}");
    let req = web.get(&format!("/api/v1/requests/{id}"), Auth::Token(tv1)).json();
    assert_eq!((req["state"].as_str(), req["duration_secs"].as_i64()), (Some("pending"), Some(1800)), "{req}");
    let r = web.post_json(&format!("/api/v1/requests/{id}/approve"), Auth::Token(tm), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let gid = r.json()["grant_id"].as_i64().expect("grant");

    // How to connect: only the grant's holder.
    check_route(&web, &tokens, "GET", &format!("/api/v1/grants/{gid}/connect"), None, [200, 404, 404, 404, 404]);
    let ci = web.get(&format!("/api/v1/grants/{gid}/connect"), Auth::Token(tv1)).json();
    let ssh_line = format!("ssh -p {} {}@{TARGET}@127.0.0.1", lab.port(), v1.name());
    assert_eq!(ci["ssh_command"].as_str(), Some(ssh_line.as_str()), "{ci}");
    assert_eq!(
        (ci["protocol"].as_str(), ci["has_credential"].as_bool(), ci["live"].as_bool()),
        (Some("ssh"), Some(true), Some(true))
    );
    let grants = web.get("/grants", Auth::Cookie(vc, None)).body;
    assert!(grants.contains(&format!("href=\"/grants/{gid}\"")), "{grants}");
    let gp = web.get(&format!("/grants/{gid}"), Auth::Cookie(vc, None));
    assert_eq!(gp.status, 200, "{}", gp.body);
    assert_eq!(element_text(&gp.body, "ssh-line"), ssh_line);
    check_page(&web, &only_cookies, &format!("/grants/{gid}"), [200, 404, 404, 404, 404], &[&ssh_line, "ssh -p"]);

    // The grant credential: a wrong code is refused, a fresh one shows it (once per code), and
    // it works as the SSH password.
    let reveal = format!("/api/v1/grants/{gid}/credential");
    check_route(&web, &tokens, "POST", &reveal, Some(json!({ "code": v1.v.wrong_code() })), [403, 404, 404, 404, 404]);
    let r = web.post_form(
        &format!("/grants/{gid}/credential"),
        Auth::Cookie(vc, None),
        &[("csrf", "bad"), ("code", "123456")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let code = v1.fresh_code();
    let r = web.post_form(
        &format!("/grants/{gid}/credential"),
        Auth::Cookie(vc, None),
        &[("csrf", vcsrf), ("code", &code)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let credential = unescape(&element_text(&r.body, "grant-credential"));
    assert!(credential.len() >= 16, "{credential}");
    let r = web.post_form(
        &format!("/grants/{gid}/credential"),
        Auth::Cookie(vc, None),
        &[("csrf", vcsrf), ("code", &code)],
    );
    assert_eq!(r.status, 403, "a used code showed the credential again: {}", r.body);
    assert!(!r.body.contains(&credential));
    let r = web.post_json(&reveal, Auth::Token(tv1), json!({ "code": v1.fresh_code() }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["credential"].as_str(), Some(credential.as_str()));
    let shown: Vec<Value> = lab.audit_events("grant.credential_shown");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(shown.iter().all(|e| e["actor"] == v1.name() && e["details"]["grant_id"] == gid));
    assert_eq!(shown.iter().map(|e| e["details"]["via"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["web", "api"]);
    assert!(lab
        .audit_events("login.failed")
        .iter()
        .any(|e| e["details"]["reason"].as_str().is_some_and(|r| r.starts_with("grant credential: wrong or reused"))));
    let mut c = lab.client_with("ssh", &Answers { password: credential.clone(), code: v1.fresh_code() }, None);
    c.arg(lab.dest(&v1.v)).arg("echo via-grant-credential");
    let o = common::sshd::run(&mut c, b"", T);
    assert!(stdout(&o).contains("via-grant-credential"), "{}{}", stdout(&o), stderr(&o));
    lab.add_secret(&credential);

    // An RDP target: the grant page offers an .rdp file for the holder only.
    lab.install.ok_stdin(
        &[
            "target",
            "add",
            "hmi-web",
            "--protocol",
            "rdp",
            "--address",
            "127.0.0.1:3399",
            "--login",
            "maint",
            "--password-stdin",
            "--cert-sha256",
            &"ab".repeat(32),
        ],
        b"Hmi-Secret-0815\n",
    );
    let rg = lab.grant(v1.name(), "hmi-web", "1h");
    let rdp = web.get(&format!("/grants/{rg}/rdp"), Auth::Cookie(vc, None));
    assert_eq!(rdp.status, 200, "{}", rdp.body);
    assert!(rdp.header("content-type").is_some_and(|c| c.starts_with("application/x-rdp")), "{}", rdp.headers);
    assert!(rdp.header("content-disposition").is_some_and(|c| c.contains("hmi-web.rdp")), "{}", rdp.headers);
    assert!(
        rdp.body.contains("full address:s:127.0.0.1:")
            && rdp.body.contains(&format!("username:s:{}@hmi-web", v1.name())),
        "{}",
        rdp.body
    );
    let other = web.get(&format!("/grants/{rg}/rdp"), Auth::Cookie(&cookies[1].0, None));
    assert_eq!(other.status, 404, "{}", other.body);
    assert!(!other.body.contains("full address"));
    assert_eq!(
        web.get(&format!("/grants/{gid}/rdp"), Auth::Cookie(vc, None)).status,
        400,
        "an .rdp file for an SSH target"
    );
    let gp = web.get(&format!("/grants/{rg}"), Auth::Cookie(vc, None)).body;
    assert!(gp.contains(&format!("href=\"/grants/{rg}/rdp\"")) && gp.contains("has no grant credential"), "{gp}");

    // A session's page: its vendor and the roles that see everything; another vendor gets 403
    // and none of it.
    let sid = lab.sessions_of(v1.name())[0]["id"].as_str().expect("session id").to_string();
    check_page(
        &web,
        &only_cookies,
        &format!("/sessions/{sid}/summary"),
        [200, 403, 200, 200, 200],
        &[v1.name(), TARGET, &sid],
    );
    assert_eq!(web.get("/sessions/not-an-id/summary", Auth::Cookie(vc, None)).status, 400);

    // Admin forms: CSRF on each; a user added from the page shows its enrolment once.
    let r = web.post_form("/admin/users", Auth::Cookie(adc, None), &[("name", "form-made"), ("role", "vendor")]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = web.post_form(
        "/admin/users",
        Auth::Cookie(vc, None),
        &[("csrf", vcsrf), ("name", "form-made"), ("role", "admin")],
    );
    assert_eq!(r.status, 403, "a vendor added a user: {}", r.body);
    let r = web.post_form(
        "/admin/users",
        Auth::Cookie(adc, None),
        &[("csrf", adcsrf), ("name", "form-made"), ("role", "vendor"), ("org", "Gamma AG")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(element_text(&r.body, "otpauth-uri").starts_with("otpauth://totp/"), "{}", r.body);
    assert!(r.body.contains("<svg") && r.body.contains("id=\"new-password-shown\""), "{}", r.body);
    lab.add_secret(&element_text(&r.body, "new-password-shown"));
    let users_page = web.get("/admin/users", Auth::Cookie(adc, None)).body;
    assert!(users_page.contains("id=\"user-form-made\"") && !users_page.contains("otpauth"), "{users_page}");
    let r = web.post_form("/admin/users/form-made/reset-mfa", Auth::Cookie(adc, None), &[("csrf", adcsrf)]);
    assert!(r.status == 200 && r.body.contains("otpauth://totp/"), "{}", r.body);
    let r =
        web.post_form("/admin/users/form-made/keys", Auth::Cookie(adc, None), &[("csrf", adcsrf), ("key", &pubkey)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(web.get("/admin/users", Auth::Cookie(adc, None)).body.contains(&fp));
    let r = web.post_form(
        "/admin/users/form-made/keys/remove",
        Auth::Cookie(adc, None),
        &[("csrf", adcsrf), ("fingerprint", &fp)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = web.post_form("/admin/users/form-made/disable", Auth::Cookie(adc, None), &[("csrf", "nope")]);
    assert_eq!(r.status, 403);
    let r = web.post_form("/admin/users/form-made/disable", Auth::Cookie(adc, None), &[("csrf", adcsrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(lab
        .audit_events("user.disabled")
        .iter()
        .any(|e| e["actor"] == ad.name() && e["details"]["user"] == "form-made"));

    // Adding a target from the page: fetch, compare, confirm.
    let r = web.post_form(
        "/admin/targets/fetch",
        Auth::Cookie(adc, None),
        &[("csrf", adcsrf), ("protocol", "ssh"), ("address", &lab.sshd.address())],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(element_text(&r.body, "fetched-fingerprint"), sshd_fp);
    let key = unescape(&field(&r.body, "host_key"));
    let r = web.post_form(
        "/admin/targets",
        Auth::Cookie(adc, None),
        &[
            ("csrf", adcsrf),
            ("protocol", "ssh"),
            ("address", &lab.sshd.address()),
            ("host_key", &key),
            ("name", "plc-form"),
            ("login", TARGET_LOGIN),
            ("password", TARGET_PASSWORD),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let tp = web.get(r.header("location").as_deref().unwrap_or("/admin/targets"), Auth::Cookie(adc, None)).body;
    assert!(tp.contains("id=\"target-plc-form\"") && tp.contains("Target plc-form added"), "{tp}");
    lab.finish();
}

backend_tests! {
    fn vendor_and_admin_routes;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// In a real headless Chromium: a vendor files a request through the form (first with a
/// duration over the policy's limit, shown as an error), sees the grant after a manager's
/// approval with its `ssh` line, and reveals the grant credential with a fresh TOTP code; the
/// vendor is refused another vendor's session page (403, no data); an admin adds a target whose
/// host key the gateway fetched from the Lab's real sshd, after comparing the fingerprint, and a
/// session through the new target then works with that pinned key.
#[test]
fn browser_vendor_request_credential_admin_pins_target() {
    let lab =
        Lab::with_options(Backend::Sqlite, &[("00-web.toml", &policy())], &[("PENSTOCK_AUTH_MAX_FAILURES", "1000")]);
    let web = Web::new(&lab);
    let vendor = lab.user_with_role("vendor");
    let admin = lab.user_with_role("admin");
    let (_, tm) = token(&lab, lab.user_with_role("manager").name.as_str(), "1d");
    // Another vendor's finished session.
    let other = lab.vendor();
    let o = common::sshd::run(lab.ssh(&other, &[]).arg("echo other-vendor-session"), b"", T);
    assert!(stdout(&o).contains("other-vendor-session"), "{}", stderr(&o));
    let other_sid = lab.ended_session(&other.name)["id"].as_str().expect("id").to_string();
    let sshd_fp = host_key_fingerprint(&lab.sshd.host_key);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").is_dir(), "run `npm ci` in {} (scripts/test does)", dir.display());
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-admin-browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let mut node = Command::new("node");
    node.arg(dir.join("vendor_admin.mjs"))
        .current_dir(&dir)
        .env("PENSTOCK_URL", format!("https://127.0.0.1:{}/", lab.web_port()))
        .env("PENSTOCK_VENDOR", &vendor.name)
        .env("PENSTOCK_VENDOR_PASSWORD", &vendor.password)
        .env("PENSTOCK_VENDOR_SEED", hex(&vendor.seed))
        .env("PENSTOCK_ADMIN", &admin.name)
        .env("PENSTOCK_ADMIN_PASSWORD", &admin.password)
        .env("PENSTOCK_ADMIN_SEED", hex(&admin.seed))
        .env("PENSTOCK_TARGET", TARGET)
        .env("PENSTOCK_OTHER_SESSION", &other_sid)
        .env("PENSTOCK_OTHER_USER", &other.name)
        .env("PENSTOCK_SSHD_ADDRESS", lab.sshd.address())
        .env("PENSTOCK_EXPECT_FP", &sshd_fp)
        .env("PENSTOCK_NEW_TARGET", "plc-browser")
        .env("PENSTOCK_TARGET_LOGIN", TARGET_LOGIN)
        .env("PENSTOCK_TARGET_PASSWORD", TARGET_PASSWORD)
        .env("PENSTOCK_SHOTS", &shots);
    let mut run = Live::spawn(&mut node);
    assert!(run.wait_text("filed ", Duration::from_secs(120)), "the browser filed nothing: {}", run.text());
    let id: i64 = run
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("filed ").and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{}", run.text()));
    let req = web.get(&format!("/api/v1/requests/{id}"), Auth::Token(&tm)).json();
    assert_eq!((req["user"].as_str(), req["state"].as_str()), (Some(vendor.name.as_str()), Some("pending")), "{req}");
    assert_eq!(req["reason"], "CHG-5150 browser", "{req}");
    let r = web.post_json(&format!("/api/v1/requests/{id}/approve"), Auth::Token(&tm), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let status = run.wait(Duration::from_secs(180));
    let out = run.text();
    assert!(status.is_some_and(|s| s.success()), "browser run failed: {out} (screenshots in {})", shots.display());
    let ssh_line = format!("ssh line: ssh -p {} {}@{TARGET}@127.0.0.1", lab.port(), vendor.name);
    for needle in [
        ssh_line.as_str(),
        "limit error shown",
        "credential shown",
        "other session refused: 403",
        &format!("pinned {sshd_fp}"),
    ] {
        assert!(out.contains(needle), "no {needle:?} in the browser's output: {out}");
    }
    for f in ["1-new-request.png", "2-grant.png", "3-credential.png", "4-refused.png", "5-confirm.png", "6-targets.png"]
    {
        let len = std::fs::metadata(shots.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {f} missing or empty");
    }
    let shown = lab.audit_events("grant.credential_shown");
    assert!(
        shown.len() == 1 && shown[0]["actor"] == vendor.name.as_str() && shown[0]["details"]["via"] == "web",
        "{shown:?}"
    );
    assert!(lab.audit_events("target.added").iter().any(|e| e["actor"] == admin.name.as_str()
        && e["details"]["target"] == "plc-browser"
        && e["details"]["host_key_fingerprint"] == sshd_fp.as_str()));
    // The pinned key is the sshd's: a session through the new target works.
    let n = lab.user_with_role("vendor");
    lab.grant(&n.name, "plc-browser", "1h");
    let mut c = lab.client("ssh", &n);
    c.arg(format!("{}@plc-browser@127.0.0.1", n.name)).arg("echo through-the-pinned-target");
    let o = common::sshd::run(&mut c, b"", T);
    assert!(stdout(&o).contains("through-the-pinned-target"), "{}{}", stdout(&o), stderr(&o));
    lab.finish();
}

/// The real schemathesis fuzzes every API operation from `/api/v1/openapi.json` with an admin
/// token and with a vendor token: no 5xx, answers with the documented status codes, content
/// types and schemas. Bounded in time (`--max-time`, few examples). The identity fetch is left
/// out (it would contact whatever addresses the fuzzer makes up). One worker: with two,
/// schemathesis itself sometimes fails (a thread-safety bug in hypothesis' lambda descriptions).
#[test]
fn schemathesis_api() {
    if Command::new("schemathesis").arg("--version").output().is_err() {
        panic!("schemathesis is not installed: `python3 -m pip install schemathesis` (scripts/test does)");
    }
    let lab =
        Lab::with_options(Backend::Sqlite, &[("00-web.toml", &policy())], &[("PENSTOCK_AUTH_MAX_FAILURES", "1000000")]);
    let base = format!("https://127.0.0.1:{}", lab.web_port());
    let checks = std::env::var("PENSTOCK_SCHEMATHESIS_CHECKS").unwrap_or_else(|_| {
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth".into()
    });
    for role in ["admin", "vendor"] {
        let user = lab.user_with_role(role);
        let (_, tok) = token(&lab, &user.name, "1d");
        let started = Instant::now();
        let mut c = Command::new("schemathesis");
        c.args(["run", &format!("{base}/api/v1/openapi.json"), "--url", &base, "--tls-verify", "false"])
            .args(["-H", &format!("Authorization: Bearer {tok}")])
            .args(["--checks", &checks, "--max-examples", "8", "--max-time", "40", "--workers", "1", "--no-color"])
            .args(["--phases", "examples,coverage,fuzzing", "--exclude-path", "/api/v1/targets/fetch-identity"])
            .args(["--request-timeout", "20", "--seed", "4711"])
            .env("PYTHONWARNINGS", "ignore")
            .current_dir(lab.install.scratch());
        let o = common::sshd::run(&mut c, b"", Duration::from_secs(240));
        let text = format!("{}{}", stdout(&o), stderr(&o));
        assert!(o.status.success(), "schemathesis as {role} found problems:\n{text}");
        assert!(!text.contains("Server error"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(100), "schemathesis as {role} took {:?}", started.elapsed());
        // The fuzzer reuses names it saw in answers; the caller stayed usable throughout (an
        // admin cannot disable itself), so every operation was reached with valid credentials.
        let me = Web::new(&lab).get("/api/v1/whoami", Auth::Token(&tok));
        assert_eq!(me.status, 200, "the {role}'s token stopped working during the run: {}", me.body);
        println!("schemathesis as {role}:\n{text}");
    }
    assert!(!lab.gateway_log().contains("panicked"), "{}", lab.gateway_log());
    lab.finish();
}
