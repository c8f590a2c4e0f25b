//! The web front end: the console (server-rendered pages) and the JSON API under `/api/v1`,
//! served over HTTPS with the gateway's one TLS identity. It translates HTTP onto the core
//! (`auth`, `console_sessions`, `tokens`, `access`, `sessions`, `search`, `audit`) and keeps no
//! rules of its own beyond "which role may reach which route".

mod admin;
mod api;
mod assets;
mod audit;
mod live;
mod pages;
mod rdp_replay;
mod vendor;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::app::App;
use crate::console_sessions::{self, ConsoleSession};
use crate::error::Error;
use crate::users::{Role, User};

/// Largest request body (forms and JSON are small).
const BODY_LIMIT: usize = 64 * 1024;
/// Longest time a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time for the TLS handshake and the request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// The console cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const COOKIE: &str = "__Host-penstock";

/// What every handler is given.
#[derive(Clone)]
pub struct Web {
    app: App,
    tz: chrono_tz::Tz,
    /// RDP players' decoders, kept between their frame requests.
    views: Arc<crate::replay::rdp_view::Views>,
}

/// The client's address, set per connection.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// Who is calling, and how.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user (its role decides what it may do).
    pub user: User,
    /// The console session, when the call came from a browser (not an API token).
    pub session: Option<ConsoleSession>,
}

impl Caller {
    /// Managers, admins and auditors see everyone's requests, grants and sessions.
    fn sees_all(&self) -> bool {
        matches!(self.user.role, Role::Manager | Role::Admin | Role::Auditor)
    }

    /// Managers and admins decide, revoke and kill; auditors are read-only.
    fn may_act(&self) -> bool {
        matches!(self.user.role, Role::Manager | Role::Admin)
    }
}

/// Why a call was refused.
#[derive(Debug)]
pub enum WebError {
    /// No valid session or token.
    Unauthenticated,
    /// The role may not do this.
    Forbidden(String),
    /// A state change without the session's CSRF token.
    Csrf,
    /// The core said no (or failed).
    Core(Error),
}

impl From<Error> for WebError {
    fn from(e: Error) -> Self {
        WebError::Core(e)
    }
}

impl WebError {
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            WebError::Unauthenticated => {
                (StatusCode::UNAUTHORIZED, "log in first (console session or API token)".into())
            }
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            WebError::Csrf => (StatusCode::FORBIDDEN, "missing or wrong CSRF token; reload the page".into()),
            WebError::Core(e) => match e {
                Error::Invalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
                Error::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
                Error::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
                Error::Denied(m) => (StatusCode::FORBIDDEN, m.clone()),
                Error::Db(_) | Error::Other(_) => {
                    tracing::error!(error = %e, "web request failed");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the gateway log".into())
                }
            },
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, msg) = self.status_and_message();
        (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

fn forbidden(what: &str) -> WebError {
    WebError::Forbidden(format!("your role may not {what}"))
}

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Authenticates a call: `Authorization: Bearer TOKEN` (API token) or the console cookie.
async fn caller(web: &Web, headers: &HeaderMap) -> Result<Caller, WebError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or(WebError::Unauthenticated)?;
        let user = crate::tokens::verify(&web.app, token.trim()).await?.ok_or(WebError::Unauthenticated)?;
        return Ok(Caller { user, session: None });
    }
    let token = cookie(headers, COOKIE).ok_or(WebError::Unauthenticated)?;
    let (session, user) = console_sessions::resume(&web.app, token).await?.ok_or(WebError::Unauthenticated)?;
    Ok(Caller { user, session: Some(session) })
}

/// A state change from a console session must carry its CSRF token (API tokens are not sent by
/// browsers on their own, so they need none).
fn check_csrf(c: &Caller, presented: Option<&str>) -> Result<(), WebError> {
    match &c.session {
        None => Ok(()),
        Some(s) => match presented {
            Some(p) if console_sessions::same(p, &s.csrf) => Ok(()),
            _ => Err(WebError::Csrf),
        },
    }
}

/// Security headers on every answer.
async fn security_headers(req: Request, next: Next) -> Response {
    // A cross-site POST is refused outright (SameSite=Strict already keeps the cookie away).
    if req.method() == Method::POST {
        if let (Some(origin), Some(host)) = (req.headers().get(header::ORIGIN), req.headers().get(header::HOST)) {
            let same = origin.to_str().ok().and_then(|o| o.strip_prefix("https://")) == host.to_str().ok();
            if !same {
                return (StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
            }
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (k, v) in [
        ("strict-transport-security", "max-age=31536000"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it Chrome sends `Origin: null` on our own form posts.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        // A page may set a stricter or wider CSP (the replay page allows the player's
        // WebAssembly) and assets their own cache lifetime.
        if !(h.contains_key(k) && (k == "content-security-policy" || k == "cache-control")) {
            h.insert(k, HeaderValue::from_static(v));
        }
    }
    res
}

fn router(web: Web) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(live::routes())
        .merge(assets::routes())
        .merge(audit::routes())
        .merge(vendor::routes())
        .merge(admin::routes())
        .nest(
            "/api/v1",
            api::routes()
                .merge(vendor::api_routes())
                .merge(admin::api_routes())
                .layer(axum::middleware::map_response(api::json_errors)),
        )
        .with_state(web)
        .layer(axum::middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
}

/// The console's URL for a listen address (a wildcard address shown as this host's name).
pub fn url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => "localhost".to_string(),
        IpAddr::V6(v) if v.is_unspecified() => "localhost".to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
        IpAddr::V4(v) => v.to_string(),
    };
    format!("https://{host}:{}/", listen.port())
}

/// Starts the console on `[web] listen` unless `[web] enabled = false`; returns the bound
/// address. Errors (bad certificate, address in use, unknown time zone) stop `serve`.
pub async fn start(app: App) -> anyhow::Result<Option<SocketAddr>> {
    let cfg = &app.config.web;
    if !cfg.enabled {
        tracing::info!("web console disabled ([web] enabled = false)");
        return Ok(None);
    }
    let tz: chrono_tz::Tz = cfg
        .time_zone
        .parse()
        .map_err(|_| anyhow::anyhow!("[web] time_zone {:?} is not an IANA time zone", cfg.time_zone))?;
    let tls = crate::tls_identity::load(&app.config)?.server_config(&[b"http/1.1"])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener =
        TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on [web] listen {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let router = router(Web { app, tz, views: Arc::default() });
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else { return };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(stream, peer, acceptor, router, local).await;
            });
        }
    });
    tracing::info!(listen = %local, url = %url(local), "web console ready");
    Ok(Some(local))
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    local: SocketAddr,
) {
    // A TLS connection starts with a handshake record (0x16); anything else is plain HTTP or
    // noise and gets a one-line refusal, never content.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            let body = format!("This is the Penstock console's HTTPS port: use {}\n", url(local));
            let msg = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(msg.as_bytes())).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => return,
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "web TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut r: Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(Peer(peer));
            r
        })
        .service(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(peer = %peer, error = %e, "web connection ended with an error");
    }
}

/// Formats an instant for a page: plant time, with UTC on hover.
fn time_html(tz: chrono_tz::Tz, t: i64) -> String {
    match chrono::DateTime::from_timestamp(t, 0) {
        Some(dt) => format!(
            "<time datetime=\"{}\" title=\"{}\">{}</time>",
            dt.format("%Y-%m-%dT%H:%M:%SZ"),
            dt.format("%Y-%m-%d %H:%M:%S UTC"),
            dt.with_timezone(&tz).format("%a %d %b %H:%M %Z")
        ),
        None => t.to_string(),
    }
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
