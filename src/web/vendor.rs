//! The vendor's pages: file a request (the targets the vendor may request with their policy's
//! limits and maintenance window), a grant's connection details (the exact `ssh` line, an `.rdp`
//! file for RDP targets), the grant credential after a fresh TOTP code, and a session's summary.
//! A vendor reaches only its own grants and sessions; the rules live in the core
//! (`access::requests::{requestable, create, reveal_credential}`).

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::api::{acting, session_id};
use super::pages::{layout, page_caller, page_error, window_text};
use super::{caller, check_csrf, esc, forbidden, time_html, Caller, Peer, Web, WebError};
use crate::access::{self, requests};
use crate::error::Error;
use crate::users::Role;
use crate::{sessions, targets};

/// Extra links of the main navigation for the caller's role.
pub(super) fn nav_links(c: &Caller) -> String {
    let mut s = String::new();
    if c.user.role != Role::Auditor {
        s.push_str(" <a href=\"/requests/new\">New request</a>");
    }
    if c.user.role == Role::Admin {
        s.push_str(" <a href=\"/admin/users\">Users</a> <a href=\"/admin/targets\">Targets</a> <a href=\"/admin/policies\">Policies</a>");
    }
    s
}

/// The gateway's host name as the browser reached it (for connection lines); `gateway` when
/// the `Host` header is missing or odd.
fn gateway_host(h: &HeaderMap) -> String {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().map(|v| format!("[{v}]")).unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).to_string()
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        name
    } else {
        "gateway".into()
    }
}

/// How to reach a grant's target through the gateway.
#[derive(Serialize, ToSchema)]
pub struct ApiConnect {
    /// Grant id.
    pub grant_id: i64,
    /// Target name.
    pub target: String,
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// Start (Unix seconds).
    pub valid_from: i64,
    /// End (Unix seconds, exclusive).
    pub valid_until: i64,
    /// Whether it admits a session now.
    pub live: bool,
    /// SSH targets: the command line to connect.
    pub ssh_command: Option<String>,
    /// RDP targets: the gateway address for the RDP client.
    pub rdp_address: Option<String>,
    /// RDP targets: the user name to give the RDP client.
    pub rdp_username: Option<String>,
    /// Whether the grant has a one-time grant credential (reveal it with a fresh TOTP code).
    pub has_credential: bool,
}

/// A fresh verification code.
#[derive(Deserialize, ToSchema)]
pub struct CodeBody {
    /// The current 6-digit code of the caller's authenticator app (each code works once).
    pub code: String,
}

/// A grant credential (shown once per fresh code; audited).
#[derive(Serialize, ToSchema)]
pub struct ApiCredential {
    /// Grant id.
    pub grant_id: i64,
    /// Target name.
    pub target: String,
    /// The credential: the password for `USER@TARGET` at the gateway (TOTP still required).
    pub credential: String,
}

/// A grant of the caller, with its target.
async fn own_grant(web: &Web, c: &Caller, id: i64) -> Result<(access::Grant, targets::Target), WebError> {
    let g = match access::get(&web.app, id).await {
        Ok(g) if g.user_id == c.user.id => g,
        Ok(_) | Err(Error::NotFound(_)) => return Err(Error::NotFound(format!("unknown grant {id}")).into()),
        Err(e) => return Err(e.into()),
    };
    let t = targets::by_id(&web.app, g.target_id).await?;
    Ok((g, t))
}

async fn connect_info(web: &Web, c: &Caller, h: &HeaderMap, id: i64) -> Result<ApiConnect, WebError> {
    let (g, t) = own_grant(web, c, id).await?;
    let host = gateway_host(h);
    let login = format!("{}@{}", c.user.name, t.name);
    let rdp = t.protocol == "rdp";
    let cfg = &web.app.config;
    Ok(ApiConnect {
        grant_id: g.id,
        target: t.name.clone(),
        protocol: t.protocol.clone(),
        valid_from: g.valid_from,
        valid_until: g.valid_until,
        live: g.live_at(web.app.clock.now()),
        ssh_command: (!rdp).then(|| format!("ssh -p {} {login}@{host}", cfg.ssh.listen.port())),
        rdp_address: rdp.then(|| format!("{host}:{}", cfg.rdp.listen.port())),
        rdp_username: rdp.then(|| login.clone()),
        has_credential: requests::grant_credential(&web.app, g.id).await?.is_some(),
    })
}

#[derive(Deserialize, Default)]
struct NewRequestForm {
    csrf: Option<String>,
    target: Option<String>,
    duration: Option<String>,
    reason: Option<String>,
    start: Option<String>,
}

async fn new_request_page(
    web: &Web,
    c: &Caller,
    status: StatusCode,
    error: Option<&str>,
    f: &NewRequestForm,
) -> Result<Response, WebError> {
    let list = requests::requestable(&web.app, &c.user).await?;
    let now = web.app.clock.now();
    let csrf = c.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default();
    let mut body = String::new();
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>", esc(e));
    }
    if list.is_empty() {
        body.push_str("<p class=\"empty\">No policy lets you request access to any target; ask an administrator.</p>");
        let mut r = layout(web, c, "New request", &body).await?;
        *r.status_mut() = status;
        return Ok(r);
    }
    body.push_str(
        "<section aria-labelledby=\"targets-h\"><h2 id=\"targets-h\">Targets you may request</h2><table id=\"requestable\"><thead><tr>\
         <th scope=\"col\">Target</th><th scope=\"col\">Protocol</th><th scope=\"col\">Policy</th><th scope=\"col\">Longest access</th>\
         <th scope=\"col\">Approvals</th><th scope=\"col\">Maintenance window</th></tr></thead><tbody>",
    );
    for (t, p) in &list {
        let _ = write!(
            body,
            "<tr id=\"target-{name}\"><td>{name}</td><td>{proto}</td><td>{policy}</td><td>{max}</td><td>{req}</td><td>{win}</td></tr>",
            name = esc(&t.name),
            proto = esc(&t.protocol),
            policy = esc(&p.name),
            max = access::fmt_duration(p.max_duration),
            req = p.required,
            win = window_text(web, p, now)
        );
    }
    body.push_str("</tbody></table></section>");
    let chosen = f.target.as_deref().unwrap_or("");
    let mut options = String::new();
    for (t, p) in &list {
        let _ = write!(
            options,
            "<option value=\"{n}\"{sel}>{n} (up to {max})</option>",
            n = esc(&t.name),
            sel = if t.name == chosen { " selected" } else { "" },
            max = access::fmt_duration(p.max_duration)
        );
    }
    let _ = write!(
        body,
        "<section aria-labelledby=\"file-h\"><h2 id=\"file-h\">File a request</h2>\
         <form method=\"post\" action=\"/requests/new\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"target\">Target</label><select id=\"target\" name=\"target\" required>{options}</select>\
         <label for=\"duration\">Duration (e.g. 30m, 2h)</label><input id=\"duration\" name=\"duration\" required maxlength=\"16\" value=\"{duration}\">\
         <label for=\"reason\">Reason (change ticket)</label><textarea id=\"reason\" name=\"reason\" rows=\"2\" maxlength=\"500\" required>{reason}</textarea>\
         <label for=\"start\">Start (optional, YYYY-MM-DD HH:MM in the policy's time zone; empty: as soon as approved)</label>\
         <input id=\"start\" name=\"start\" maxlength=\"16\" value=\"{start}\">\
         <button type=\"submit\">File request</button></form></section>",
        csrf = esc(&csrf),
        duration = esc(f.duration.as_deref().unwrap_or("")),
        reason = esc(f.reason.as_deref().unwrap_or("")),
        start = esc(f.start.as_deref().unwrap_or("")),
    );
    let mut r = layout(web, c, "New request", &body).await?;
    *r.status_mut() = status;
    Ok(r)
}

async fn new_request_form(State(web): State<Web>, h: HeaderMap) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if c.user.role == Role::Auditor {
        return page_error(forbidden("file requests"));
    }
    new_request_page(&web, &c, StatusCode::OK, None, &NewRequestForm::default()).await.unwrap_or_else(page_error)
}

async fn file_request(State(web): State<Web>, h: HeaderMap, Form(f): Form<NewRequestForm>) -> Response {
    let c = match caller(&web, &h).await {
        Ok(c) => c,
        Err(e) => return page_error(e),
    };
    if let Err(e) = check_csrf(&c, f.csrf.as_deref()) {
        return page_error(e);
    }
    if c.user.role == Role::Auditor {
        return page_error(forbidden("file requests"));
    }
    let res = async {
        let duration = access::parse_duration(f.duration.as_deref().unwrap_or("").trim())?;
        let ask = requests::Ask {
            target: f.target.clone().unwrap_or_default(),
            duration,
            reason: f.reason.clone().unwrap_or_default(),
            start: f.start.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string),
        };
        requests::create(&web.app, &c.user, &ask).await
    }
    .await;
    match res {
        Ok(r) => Redirect::to(&format!("/requests?done=filed-{}", r.id)).into_response(),
        Err(e) => {
            let (status, msg) = WebError::Core(e).status_and_message();
            new_request_page(&web, &c, status, Some(&msg), &f).await.unwrap_or_else(page_error)
        }
    }
}

fn fmt_interval(web: &Web, g: &access::Grant, now: i64) -> String {
    let state = if g.revoked_at.is_some() {
        "revoked"
    } else if g.live_at(now) {
        "live"
    } else if g.valid_from > now {
        "upcoming"
    } else {
        "ended"
    };
    format!("{state}, from {} until {}", time_html(web.tz, g.valid_from), time_html(web.tz, g.valid_until))
}

async fn grant_body(web: &Web, c: &Caller, h: &HeaderMap, id: i64, revealed: Option<&str>) -> Result<String, WebError> {
    let (g, _) = own_grant(web, c, id).await?;
    let info = connect_info(web, c, h, id).await?;
    let now = web.app.clock.now();
    let mut body = format!(
        "<article id=\"grant-{id}\" aria-labelledby=\"grant-h\"><h2 id=\"grant-h\">Grant {id}: {t}</h2><p>{when}</p>\
         <h3>How to connect</h3>",
        t = esc(&info.target),
        when = fmt_interval(web, &g, now)
    );
    if let Some(cmd) = &info.ssh_command {
        let _ = write!(
            body,
            "<p>With OpenSSH (scp and sftp take <code>-P</code> for the port); the gateway asks for your password \
             (or the grant credential) and a verification code:</p><pre><code id=\"ssh-line\">{}</code></pre>",
            esc(cmd)
        );
    }
    if let (Some(addr), Some(user)) = (&info.rdp_address, &info.rdp_username) {
        let _ = write!(
            body,
            "<p>With your RDP client (mstsc, xfreerdp, Remmina): computer <code id=\"rdp-address\">{a}</code>, user \
             <code id=\"rdp-user\">{u}</code>, password: the grant credential below.</p>\
             <pre><code id=\"rdp-line\">xfreerdp /v:{a} /u:{u} /p:GRANT-CREDENTIAL</code></pre>\
             <p><a id=\"rdp-file\" href=\"/grants/{id}/rdp\" download>Download {t}.rdp</a></p>",
            a = esc(addr),
            u = esc(user),
            t = esc(&info.target)
        );
    }
    body.push_str("<h3>Grant credential</h3>");
    if !info.has_credential {
        body.push_str("<p>This grant has no grant credential: log in with your own password.</p>");
    } else if let Some(cred) = revealed {
        let _ = write!(
            body,
            "<p role=\"status\">Use this as the password for <code>{u}@{t}</code> at the gateway (a verification code is still \
             asked). It works only while the grant lasts; this view is recorded in the audit log.</p>\
             <pre><code id=\"grant-credential\">{cred}</code></pre>",
            u = esc(&c.user.name),
            t = esc(&info.target),
            cred = esc(cred)
        );
    } else if g.revoked_at.is_none() && g.valid_until > now {
        let csrf = c.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default();
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/grants/{id}/credential\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label for=\"reveal-code\">Verification code (a new one: each code works once)</label>\
             <input id=\"reveal-code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" required>\
             <button type=\"submit\">Show the grant credential</button></form>",
            csrf = esc(&csrf)
        );
    }
    body.push_str("</article>");
    Ok(body)
}

async fn grant_page(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async { layout(&web, &c, "Grant", &grant_body(&web, &c, &h, id, None).await?).await }.await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct RevealForm {
    csrf: Option<String>,
    code: Option<String>,
}

async fn reveal_form(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    h: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<RevealForm>,
) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        check_csrf(&c, f.csrf.as_deref())?;
        own_grant(&web, &c, id).await?;
        let cred =
            requests::reveal_credential(&web.app, &c.user, id, f.code.as_deref().unwrap_or(""), peer.0.ip(), "web")
                .await?;
        let shown = cred.expose_str().unwrap_or("").to_string();
        layout(&web, &c, "Grant", &grant_body(&web, &c, &h, id, Some(&shown)).await?).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn rdp_file(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        let info = connect_info(&web, &c, &h, id).await?;
        let (Some(addr), Some(user)) = (info.rdp_address, info.rdp_username) else {
            return Err(WebError::Core(Error::Invalid(format!("{} is not an RDP target", info.target))));
        };
        let text = format!(
            "full address:s:{addr}\r\nusername:s:{user}\r\nprompt for credentials:i:1\r\nenablecredsspsupport:i:1\r\n\
             authentication level:i:2\r\nredirectclipboard:i:0\r\nredirectdrives:i:0\r\n"
        );
        Ok((
            [
                (header::CONTENT_TYPE, "application/x-rdp; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}.rdp\"", info.target)),
            ],
            text,
        )
            .into_response())
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn session_summary(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let c = match page_caller(&web, &h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let res = async {
        let id = session_id(&id)?;
        let s = sessions::get(&web.app, id).await?.ok_or_else(|| Error::NotFound(format!("unknown session {id}")))?;
        if !c.sees_all() && s.user != c.user.name {
            return Err(WebError::Forbidden("this session is not yours".into()));
        }
        let body = format!(
            "<dl id=\"session-{sid}\"><dt>Session</dt><dd><code>{sid}</code></dd><dt>User</dt><dd>{u}</dd><dt>Target</dt><dd>{t} ({p})</dd>\
             <dt>From</dt><dd>{addr}</dd><dt>Started</dt><dd>{start}</dd><dt>Ended</dt><dd>{end}</dd>\
             <dt>Traffic</dt><dd>{up} B up, {down} B down</dd></dl>",
            sid = esc(&s.id),
            u = esc(&s.user),
            t = esc(&s.target),
            p = esc(&s.protocol),
            addr = esc(&s.client_addr),
            start = time_html(web.tz, s.started_at),
            end = match s.ended_at {
                Some(e) => format!("{} ({})", time_html(web.tz, e), esc(s.end_reason.as_deref().unwrap_or(""))),
                None => "live".into(),
            },
            up = s.bytes_up,
            down = s.bytes_down
        );
        layout(&web, &c, "Session", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[utoipa::path(get, path = "/api/v1/grants/{id}/connect", tag = "grants", params(("id" = i64, Path, description = "Grant id")),
    responses((status = 200, body = ApiConnect), (status = 401, body = super::api::ApiError), (status = 404, body = super::api::ApiError)))]
async fn api_connect(State(web): State<Web>, h: HeaderMap, Path(id): Path<i64>) -> Result<Json<ApiConnect>, WebError> {
    let c = caller(&web, &h).await?;
    Ok(Json(connect_info(&web, &c, &h, id).await?))
}

#[utoipa::path(post, path = "/api/v1/grants/{id}/credential", tag = "grants", params(("id" = i64, Path, description = "Grant id")),
    request_body = CodeBody,
    responses((status = 200, body = ApiCredential), (status = 400, body = super::api::ApiError), (status = 401, body = super::api::ApiError),
        (status = 403, body = super::api::ApiError), (status = 404, body = super::api::ApiError)))]
async fn api_reveal(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    h: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Json<ApiCredential>, WebError> {
    let c = acting(&web, &h).await?;
    let (_, t) = own_grant(&web, &c, id).await?;
    let b: CodeBody = super::admin::json_body(&body)?;
    let cred = requests::reveal_credential(&web.app, &c.user, id, &b.code, peer.0.ip(), "api").await?;
    Ok(Json(ApiCredential { grant_id: id, target: t.name, credential: cred.expose_str().unwrap_or("").to_string() }))
}

/// A live session of the caller whose access ends soon.
#[derive(Serialize, ToSchema)]
pub(super) struct ApiNotice {
    /// Session id.
    session: String,
    /// Target name.
    target: String,
    /// `ssh` or `rdp`.
    protocol: String,
    /// When the grant ends (Unix seconds).
    ends_at: i64,
    /// Seconds left.
    seconds_left: i64,
    /// The notice ("your access ends in 10 minutes (at …)").
    message: String,
}

#[utoipa::path(get, path = "/api/v1/notices", tag = "sessions",
    responses((status = 200, body = [ApiNotice]), (status = 401, body = super::api::ApiError)))]
async fn api_notices(State(web): State<Web>, h: HeaderMap) -> Result<Json<Vec<ApiNotice>>, WebError> {
    let c = caller(&web, &h).await?;
    let list = sessions::ending_soon(&web.app, c.user.id).await?;
    Ok(Json(
        list.into_iter()
            .map(|n| ApiNotice {
                session: n.session,
                target: n.target,
                protocol: n.protocol,
                ends_at: n.ends_at,
                seconds_left: n.seconds_left,
                message: n.message,
            })
            .collect(),
    ))
}

/// The vendor routes of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(api_connect, api_reveal, api_notices))]
pub(super) struct VendorApi;

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/requests/new", get(new_request_form).post(file_request))
        .route("/grants/{id}", get(grant_page))
        .route("/grants/{id}/credential", post(reveal_form))
        .route("/grants/{id}/rdp", get(rdp_file))
        .route("/sessions/{id}/summary", get(session_summary))
}

pub(super) fn api_routes() -> Router<Web> {
    Router::new()
        .route("/grants/{id}/connect", get(api_connect))
        .route("/grants/{id}/credential", post(api_reveal))
        .route("/notices", get(api_notices))
}
