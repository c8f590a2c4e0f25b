//! The console's server-rendered pages: login, requests with the decision context, grants,
//! sessions and the account page. Plain HTML forms (no script), one small stylesheet.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;

use super::api::{grants_for, session_id, sessions_for};
use super::{caller, check_csrf, esc, forbidden, time_html, Caller, Peer, Web, WebError, COOKIE};
use crate::access::{self, requests};
use crate::auth::{self, AuthError};
use crate::policy::window;
use crate::secret::Secret;
use crate::{console_sessions, sessions, targets, users};

const STYLE: &str = include_str!("style.css");

/// An error as a page: the login page for an unauthenticated caller, else a message.
pub(super) fn page_error(e: WebError) -> Response {
    if matches!(e, WebError::Unauthenticated) {
        return Redirect::to("/login").into_response();
    }
    let (status, msg) = e.status_and_message();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Penstock: {status}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main>\
         <p class=\"error\" role=\"alert\">{}</p><p><a href=\"/requests\">Back to requests</a></p></main></body></html>",
        esc(&msg)
    );
    (status, Html(body)).into_response()
}

/// The frame of every page of a logged-in user.
pub(super) async fn layout(web: &Web, c: &Caller, title: &str, body: &str) -> Result<Response, WebError> {
    let mine = (!c.sees_all()).then_some(c.user.id);
    let pending = requests::list(&web.app, mine, true).await?.len();
    let csrf = c.session.as_ref().map(|s| s.csrf.as_str()).unwrap_or("");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t} · Penstock</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>\
         <header><nav aria-label=\"Main\"><a href=\"/requests\">Requests <span class=\"badge\" id=\"pending-count\" \
         aria-label=\"{pending} pending\">{pending}</span></a> <a href=\"/grants\">Grants</a> <a href=\"/sessions\">Sessions</a> \
         <a href=\"/audit/sessions\">Recordings</a> {log}<a href=\"/account\">Account</a>{extra}</nav>\
         <div class=\"who\">{u} ({r}) <form method=\"post\" action=\"/logout\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Log out</button></form></div></header>\
         <div id=\"notices\" aria-live=\"polite\"></div>\
         <main><h1>{t}</h1>{body}</main><script src=\"{notices}\"></script></body></html>",
        notices = super::assets::url("notices.js"),
        t = esc(title),
        u = esc(&c.user.name),
        r = c.user.role,
        csrf = esc(csrf),
        log = if matches!(c.user.role, users::Role::Auditor | users::Role::Admin) {
            "<a href=\"/audit/log\">Audit log</a> "
        } else {
            ""
        },
        extra = super::vendor::nav_links(c),
    );
    Ok(Html(html).into_response())
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn index(State(web): State<Web>, h: HeaderMap) -> Response {
    match caller(&web, &h).await {
        Ok(_) => Redirect::to("/requests").into_response(),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let msg = message.map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m))).unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Log in · Penstock</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"login\"><h1>Penstock</h1>{msg}\
         <form method=\"post\" action=\"/login\">\
         <label for=\"user\">User</label><input id=\"user\" name=\"user\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <label for=\"code\">Verification code</label><input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
         pattern=\"[0-9]{{6}}\" maxlength=\"6\" required>\
         <button type=\"submit\">Log in</button></form></main></body></html>"
    );
    (status, Html(html)).into_response()
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    code: String,
}

async fn login(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let name: String = f.user.trim().chars().take(64).collect();
    let password = Secret::from_string(f.password);
    // The same core calls, lockout and audit as an SSH login.
    let who = match auth::login_password(&web.app, &name, &password, f.code.trim(), peer.0.ip()).await {
        Ok(w) => w,
        Err(AuthError::LockedOut) => {
            return login_page(StatusCode::TOO_MANY_REQUESTS, Some("Too many failed attempts; try again later."))
        }
        Err(AuthError::Denied) => {
            return login_page(StatusCode::UNAUTHORIZED, Some("Login failed: wrong user, password or code."))
        }
        Err(AuthError::Unavailable) => {
            return login_page(StatusCode::SERVICE_UNAVAILABLE, Some("Login is unavailable; see the gateway log."))
        }
    };
    let ua = h.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let res = async {
        let user = users::by_id(&web.app, who.user_id).await?;
        console_sessions::open(&web.app, &user, &peer.0.ip().to_string(), ua).await
    }
    .await;
    match res {
        Ok((_, token)) => {
            let cookie = format!(
                "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                token.expose_str().unwrap_or(""),
                web.app.config.web.session_max_secs
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/requests")).into_response()
        }
        Err(e) => page_error(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    pub(super) csrf: Option<String>,
}

fn clear_cookie() -> (header::HeaderName, String) {
    (header::SET_COOKIE, format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"))
}

async fn logout(State(web): State<Web>, h: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        if let Some(s) = &c.session {
            console_sessions::end(&web.app, &c.user, s.id, "logout").await?;
        }
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => ([clear_cookie()], Redirect::to("/login")).into_response(),
        Err(e) => page_error(e),
    }
}

/// Authenticates a page request.
pub(super) async fn page_caller(web: &Web, h: &HeaderMap) -> Result<Caller, Response> {
    caller(web, h).await.map_err(page_error)
}

#[derive(Deserialize)]
struct Done {
    done: Option<String>,
}

fn done_message(d: &Done) -> String {
    let Some(d) = &d.done else { return String::new() };
    let (what, id) = d.split_once('-').unwrap_or((d.as_str(), ""));
    let id: i64 = id.parse().unwrap_or(0);
    let text = match what {
        "approved" => format!("Request {id}: your approval is recorded."),
        "denied" => format!("Request {id} denied."),
        "revoked" => format!("Grant {id} revoked; its live sessions end within a second."),
        "killed" => "The session will end within two seconds.".to_string(),
        "ended" => format!("Console session {id} ended."),
        "all" => "All your console sessions ended; log in again.".to_string(),
        "filed" => format!("Request {id} filed; you will see here when it is decided."),
        _ => return String::new(),
    };
    format!("<p class=\"ok\" role=\"status\">{}</p>", esc(&text))
}

pub(super) fn window_text(web: &Web, p: &crate::policy::Policy, now: i64) -> String {
    if p.windows.is_empty() {
        return "any time (no maintenance windows)".into();
    }
    if let Some((_, until)) = window::containing(&p.windows, now) {
        return format!("open now, until {}", time_html(web.tz, until));
    }
    match window::next_opening(&p.windows, now) {
        Some(t) => format!("closed; next opens {}", time_html(web.tz, t)),
        None => "closed; none in the next year".into(),
    }
}

/// One pending request with everything needed to decide it.
async fn decision_card(web: &Web, c: &Caller, r: &requests::Request) -> Result<String, WebError> {
    let app = &web.app;
    let now = app.clock.now();
    let vendor = users::by_id(app, r.user_id).await?;
    let target = targets::by_id(app, r.target_id).await?;
    let mut tags = Vec::new();
    for (k, v) in [("site", &target.site), ("zone", &target.zone), ("criticality", &target.criticality)] {
        if let Some(v) = v {
            tags.push(format!("{k} {}", esc(v)));
        }
    }
    let approvals = requests::approvals(app, r.id).await?;
    let by = if approvals.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = approvals
            .iter()
            .map(|a| {
                format!(
                    "{}{}",
                    esc(&a.by),
                    a.comment.as_deref().map(|c| format!(" (“{}”)", esc(c))).unwrap_or_default()
                )
            })
            .collect();
        format!(": {}", names.join(", "))
    };
    let policy = requests::policy_of(app, r);
    let policy_text = match &policy {
        Some(p) => format!(
            "{}{} — up to {}, {} approval(s)",
            esc(&p.name),
            if p.description.is_empty() { String::new() } else { format!(": {}", esc(&p.description)) },
            access::fmt_duration(p.max_duration),
            p.required
        ),
        None => format!("{} (no longer loaded: this request cannot be decided)", esc(&r.policy)),
    };
    let window = policy.as_ref().map(|p| window_text(web, p, r.start_at.unwrap_or(now).max(now))).unwrap_or_default();
    let recent = sessions::recent(app, r.user_id, r.target_id, 5).await?;
    let recent_html = if recent.is_empty() {
        "none".to_string()
    } else {
        let mut s = String::from("<ul>");
        for x in &recent {
            let _ = write!(
                s,
                "<li>{} · {} · {}</li>",
                time_html(web.tz, x.started_at),
                x.ended_at.map(|e| access::fmt_duration((e - x.started_at).max(1))).unwrap_or_else(|| "live".into()),
                esc(x.end_reason.as_deref().unwrap_or("live"))
            );
        }
        s.push_str("</ul>");
        s
    };
    let when = match r.start_at {
        Some(s) => format!("from {} for {}", time_html(web.tz, s), access::fmt_duration(r.duration)),
        None => format!("as soon as approved, for {}", access::fmt_duration(r.duration)),
    };
    let mut html = format!(
        "<article class=\"request\" id=\"request-{id}\" aria-labelledby=\"request-{id}-title\">\
         <h2 id=\"request-{id}-title\">#{id} {vendor} → {target}</h2><dl>\
         <dt>Vendor</dt><dd>{vendor}{org}</dd>\
         <dt>Target</dt><dd>{target}{tags}</dd>\
         <dt>Reason</dt><dd>{reason}</dd>\
         <dt>When</dt><dd>{when}</dd>\
         <dt>Approvals</dt><dd>{n} of {req}{by}</dd>\
         <dt>Policy</dt><dd>{policy_text}</dd>\
         <dt>Maintenance window</dt><dd>{window}</dd>\
         <dt>Recent sessions of {vendor} on {target}</dt><dd>{recent_html}</dd>\
         <dt>Filed</dt><dd>{filed}</dd></dl>",
        id = r.id,
        vendor = esc(&vendor.name),
        org = vendor.org.as_deref().map(|o| format!(", {}", esc(o))).unwrap_or_default(),
        target = esc(&target.name),
        tags = if tags.is_empty() { String::new() } else { format!(" ({})", tags.join(", ")) },
        reason = esc(&r.reason),
        n = r.approvals,
        req = r.required,
        filed = time_html(web.tz, r.created_at),
    );
    if c.may_act() {
        let csrf = c.session.as_ref().map(|s| s.csrf.as_str()).unwrap_or("");
        let _ = write!(
            html,
            "<form method=\"post\" action=\"/requests/{id}/decide\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"comment-{id}\">Comment (optional; shown to the vendor when denying)</label>\
             <textarea id=\"comment-{id}\" name=\"comment\" rows=\"2\" maxlength=\"500\"></textarea>\
             <div class=\"actions\"><button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve #{id}</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny #{id}</button></div></form>",
            id = r.id,
            csrf = esc(csrf)
        );
    }
    html.push_str("</article>");
    Ok(html)
}

async fn requests_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let mine = (!c.sees_all()).then_some(c.user.id);
        let list = requests::list(&web.app, mine, false).await?;
        let mut body = done_message(&d);
        let pending: Vec<_> = list.iter().filter(|r| r.state == requests::State::Pending).collect();
        let _ = write!(body, "<section aria-labelledby=\"pending-h\"><h2 id=\"pending-h\">Pending ({})</h2>", pending.len());
        if pending.is_empty() {
            body.push_str("<p class=\"empty\">Nothing waits for a decision.</p>");
        }
        for r in pending {
            body.push_str(&decision_card(&web, &c, r).await?);
        }
        body.push_str("</section><section aria-labelledby=\"recent-h\"><h2 id=\"recent-h\">Decided</h2><table><thead><tr>\
            <th scope=\"col\">#</th><th scope=\"col\">Vendor</th><th scope=\"col\">Target</th><th scope=\"col\">State</th>\
            <th scope=\"col\">By</th><th scope=\"col\">Filed</th></tr></thead><tbody>");
        for r in list.iter().filter(|r| r.state != requests::State::Pending).take(50) {
            let state = serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.id,
                esc(&r.user),
                esc(&r.target),
                esc(&state),
                esc(r.decided_by.as_deref().unwrap_or("")),
                time_html(web.tz, r.created_at)
            );
        }
        body.push_str("</tbody></table></section>");
        layout(&web, &c, "Requests", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct DecideForm {
    csrf: Option<String>,
    decision: String,
    comment: Option<String>,
}

async fn decide(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>, Form(f): Form<DecideForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        if !c.may_act() {
            return Err(forbidden("decide requests"));
        }
        let comment = f.comment.as_deref().map(str::trim).filter(|s| !s.is_empty());
        match f.decision.as_str() {
            "approve" => {
                requests::approve(&web.app, &c.user, id, comment).await?;
                Ok(format!("/requests?done=approved-{id}"))
            }
            "deny" => {
                requests::deny(&web.app, &c.user, id, comment).await?;
                Ok(format!("/requests?done=denied-{id}"))
            }
            _ => Err(crate::error::invalid("decision must be approve or deny").into()),
        }
    }
    .await;
    match res {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => page_error(e),
    }
}

async fn grants_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let now = web.app.clock.now();
        let grants: Vec<_> =
            grants_for(&web, &c).await?.into_iter().filter(|g| g.revoked_at.is_none() && g.valid_until > now).collect();
        let mut body = done_message(&d);
        if grants.is_empty() {
            body.push_str("<p class=\"empty\">No live or upcoming grants.</p>");
        }
        let csrf = c.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default();
        body.push_str("<ul class=\"cards\">");
        for g in grants {
            let _ = write!(
                body,
                "<li id=\"grant-{id}\"><strong>Grant {id}</strong>: {u} → {t}, {state} from {f} until {until} (by {by})",
                id = g.id,
                u = esc(&g.user),
                t = esc(&g.target),
                state = if g.live { "live" } else { "upcoming" },
                f = time_html(web.tz, g.valid_from),
                until = time_html(web.tz, g.valid_until),
                by = esc(&g.created_by)
            );
            if g.user == c.user.name {
                let _ = write!(body, " <a href=\"/grants/{id}\">How to connect to {t}</a>", id = g.id, t = esc(&g.target));
            }
            if c.may_act() {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/grants/{id}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" class=\"deny\">Revoke grant {id}</button></form>",
                    id = g.id,
                    csrf = esc(&csrf)
                );
            }
            body.push_str("</li>");
        }
        body.push_str("</ul>");
        layout(&web, &c, "Grants", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn revoke_form(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>, Form(f): Form<CsrfForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        if !c.may_act() {
            return Err(forbidden("revoke grants"));
        }
        requests::revoke(&web.app, &c.user, id, true).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => Redirect::to(&format!("/grants?done=revoked-{id}")).into_response(),
        Err(e) => page_error(e),
    }
}

async fn sessions_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let list = sessions_for(&web, &c, true).await?;
        let mut body = done_message(&d);
        if list.is_empty() {
            body.push_str("<p class=\"empty\">No live sessions.</p>");
        }
        let csrf = c.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default();
        body.push_str("<ul class=\"cards\">");
        for s in list {
            let _ = write!(
                body,
                "<li id=\"session-{id}\"><strong>{u} → {t}</strong> since {since} from {addr}<br><code>{id}</code> · {up} B up, {down} B down",
                id = esc(&s.id),
                u = esc(&s.user),
                t = esc(&s.target),
                since = time_html(web.tz, s.started_at),
                addr = esc(&s.client_addr),
                up = s.bytes_up,
                down = s.bytes_down
            );
            // Live view follows terminal recordings (SSH); RDP sessions have none yet.
            if crate::live::may_watch(&c.user) {
                let _ = write!(body, " · <a href=\"/sessions/{id}/watch\">Watch {u}'s session</a>", id = esc(&s.id), u = esc(&s.user));
            }
            if c.may_act() {
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/sessions/{id}/kill\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button type=\"submit\" class=\"deny\">End session of {u}</button></form>",
                    id = esc(&s.id),
                    u = esc(&s.user),
                    csrf = esc(&csrf)
                );
            }
            body.push_str("</li>");
        }
        body.push_str("</ul>");
        layout(&web, &c, "Live sessions", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn kill_form(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>, Form(f): Form<CsrfForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        if !c.may_act() {
            return Err(forbidden("end sessions"));
        }
        sessions::request_kill(&web.app, &c.user.name, session_id(&id)?).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => Redirect::to("/sessions?done=killed").into_response(),
        Err(e) => page_error(e),
    }
}

async fn account_page(State(web): State<Web>, h: HeaderMap, Query(d): Query<Done>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let list = console_sessions::list(&web.app, &c.user).await?;
        let csrf = c.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default();
        let current = c.session.as_ref().map(|s| s.id);
        let mut body = done_message(&d);
        let _ = write!(
            body,
            "<p>{} ({}){}</p><h2>Your console sessions</h2><ul class=\"cards\">",
            esc(&c.user.name),
            c.user.role,
            c.user.org.as_deref().map(|o| format!(", {}", esc(o))).unwrap_or_default()
        );
        for s in &list {
            let _ = write!(
                body,
                "<li id=\"console-session-{id}\">Session {id}{this}: from {src}, logged in {at}, last used {seen}<br><small>{ua}</small>\
                 <form method=\"post\" action=\"/account/sessions/{id}/end\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\">End session {id}</button></form></li>",
                id = s.id,
                this = if Some(s.id) == current { " (this one)" } else { "" },
                src = esc(&s.source),
                at = time_html(web.tz, s.created_at),
                seen = time_html(web.tz, s.last_seen),
                ua = esc(&s.user_agent),
                csrf = esc(&csrf)
            );
        }
        let _ = write!(
            body,
            "</ul><form method=\"post\" action=\"/account/sessions/logout-all\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"deny\">Log out everywhere</button></form>",
            esc(&csrf)
        );
        layout(&web, &c, "Account", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn end_one(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>, Form(f): Form<CsrfForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        console_sessions::end(&web.app, &c.user, id, "ended-by-user").await?;
        Ok::<_, WebError>(c.session.map(|s| s.id) == Some(id))
    }
    .await;
    match res {
        Ok(true) => ([clear_cookie()], Redirect::to("/login")).into_response(),
        Ok(false) => Redirect::to(&format!("/account?done=ended-{id}")).into_response(),
        Err(e) => page_error(e),
    }
}

async fn end_all(State(web): State<Web>, h: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        console_sessions::end_all(&web.app, &c.user).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match res {
        Ok(()) => ([clear_cookie()], Redirect::to("/login")).into_response(),
        Err(e) => page_error(e),
    }
}

async fn not_found() -> Response {
    page_error(WebError::Core(crate::error::Error::NotFound("no such page".into())))
}

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/", get(index))
        .route("/static/style.css", get(style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/requests", get(requests_page))
        .route("/requests/{id}/decide", post(decide))
        .route("/grants", get(grants_page))
        .route("/grants/{id}/revoke", post(revoke_form))
        .route("/sessions", get(sessions_page))
        .route("/sessions/{id}/kill", post(kill_form))
        .route("/account", get(account_page))
        .route("/account/sessions/{id}/end", post(end_one))
        .route("/account/sessions/logout-all", post(end_all))
        .fallback(not_found)
}
