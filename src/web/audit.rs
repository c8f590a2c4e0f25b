//! The auditor's pages (read-only): recorded sessions with filters and pages, full-text search
//! whose hits open the replay at that moment, replay in the browser (asciinema-player, embedded
//! by `assets`), downloads of a recording (`.cast`) and of a signed evidence bundle, and the
//! audit log with the chain's verify result.
//!
//! Who may read what: managers, auditors and admins see every session (the API's rule); a
//! vendor sees, replays and downloads only its own sessions; evidence bundles and search are for
//! managers, auditors and admins; the audit log for auditors and admins. Every route checks the
//! caller before it reads anything.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::TimeZone;
use serde::Deserialize;

use super::api::session_id;
use super::pages::{layout, page_error};
use super::{assets, caller, esc, forbidden, time_html, Caller, Web, WebError};
use crate::error::Error;
use crate::users::Role;
use crate::{audit, sessions};

/// Rows per page.
const PAGE: i64 = 50;
/// Largest recording served in one answer (larger ones: `penstock evidence export`).
const MAX_DOWNLOAD: u64 = 256 * 1024 * 1024;
/// The replay page may run the player's WebAssembly terminal (`wasm-unsafe-eval` allows
/// WebAssembly compilation, not JavaScript `eval`).
pub(super) const REPLAY_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; \
    style-src 'self'; img-src 'self' data:; font-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A session the caller may read (its own, for a vendor), or 403/404.
pub(super) async fn readable(web: &Web, c: &Caller, id: &str) -> Result<sessions::SessionRow, WebError> {
    let id = session_id(id)?;
    let s = sessions::get(&web.app, id).await?;
    match s {
        Some(s) if c.sees_all() || s.user == c.user.name => Ok(s),
        // Another vendor's session is indistinguishable from one that does not exist.
        Some(_) if c.user.role == Role::Vendor => Err(Error::NotFound(format!("unknown session {id}")).into()),
        Some(_) => Err(forbidden("read this session")),
        None => Err(Error::NotFound(format!("unknown session {id}")).into()),
    }
}

/// Filters of the recorded-session list (page and API).
#[derive(Deserialize, Default, utoipa::IntoParams)]
pub(super) struct SessionQuery {
    /// User name of the vendor (ignored for vendors: they see their own).
    user: Option<String>,
    /// The user's organisation.
    org: Option<String>,
    /// Target name.
    target: Option<String>,
    /// First day, `YYYY-MM-DD` in the plant's time zone.
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` in the plant's time zone.
    to: Option<String>,
    /// End reason (`closed`, `killed`, `expired`, `idle`, …; `live` for running sessions).
    reason: Option<String>,
    /// `ssh` or `rdp`.
    protocol: Option<String>,
    /// Page, from 1 (50 sessions a page).
    page: Option<i64>,
}

/// The store's filter for `q` as `c` may use it.
fn filter(web: &Web, c: &Caller, q: &SessionQuery) -> Result<sessions::Filter, WebError> {
    let mut f = sessions::Filter {
        user: nonempty(&q.user),
        org: nonempty(&q.org),
        target: nonempty(&q.target),
        since: day(web, &q.from, "from")?,
        until: day(web, &q.to, "to")?.map(|t| t + 86_400),
        reason: nonempty(&q.reason),
        protocol: nonempty(&q.protocol),
    };
    if !c.sees_all() {
        // A vendor's list is its own sessions, whatever the filter says.
        f.user = Some(c.user.name.clone());
    }
    Ok(f)
}

#[utoipa::path(get, path = "/api/v1/recordings", tag = "evidence", params(SessionQuery),
    responses((status = 200, body = [super::api::ApiSession]), (status = 400, body = super::api::ApiError), (status = 401, body = super::api::ApiError)))]
pub(super) async fn api_recordings(
    State(web): State<Web>,
    h: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Result<axum::Json<Vec<super::api::ApiSession>>, WebError> {
    let c = caller(&web, &h).await?;
    let f = filter(&web, &c, &q)?;
    let page = q.page.unwrap_or(1).clamp(1, 100_000);
    let rows = sessions::find(&web.app, &f, (page - 1) * PAGE, PAGE).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}/recording", tag = "evidence",
    params(("id" = String, Path, description = "Session id (32 hex digits)")),
    responses((status = 200, description = "The asciicast v2 recording", content_type = "application/x-asciicast"),
        (status = 400, body = super::api::ApiError), (status = 401, body = super::api::ApiError), (status = 404, body = super::api::ApiError)))]
pub(super) async fn api_recording(web: State<Web>, h: HeaderMap, id: Path<String>) -> Response {
    cast_download(web, h, id).await
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}/evidence", tag = "evidence",
    params(("id" = String, Path, description = "Session id (32 hex digits)")),
    responses((status = 200, description = "A signed evidence bundle (ustar)", content_type = "application/x-tar"),
        (status = 401, body = super::api::ApiError), (status = 403, body = super::api::ApiError), (status = 404, body = super::api::ApiError)))]
pub(super) async fn api_evidence(web: State<Web>, h: HeaderMap, id: Path<String>) -> Response {
    evidence_download(web, h, id).await
}

/// The API routes of this module (nested under `/api/v1` by `api`).
pub(super) fn api_routes() -> Router<Web> {
    Router::new()
        .route("/recordings", get(api_recordings))
        .route("/sessions/{id}/recording", get(api_recording))
        .route("/sessions/{id}/evidence", get(api_evidence))
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).map(|s| s.chars().take(200).collect())
}

/// `YYYY-MM-DD` (a day in the plant's time zone, from its start) as Unix seconds.
fn day(web: &Web, v: &Option<String>, what: &str) -> Result<Option<i64>, WebError> {
    let Some(v) = nonempty(v) else { return Ok(None) };
    let d = chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d")
        .map_err(|_| Error::Invalid(format!("{what}: {v:?} is not a date (YYYY-MM-DD)")))?;
    let start = d.and_hms_opt(0, 0, 0).ok_or_else(|| Error::Invalid(format!("{what}: bad date")))?;
    let t = web
        .tz
        .from_local_datetime(&start)
        .earliest()
        .ok_or_else(|| Error::Invalid(format!("{what}: {v} has no midnight in the plant's time zone")))?;
    Ok(Some(t.timestamp()))
}

fn field(id: &str, label: &str, value: &Option<String>, kind: &str) -> String {
    format!(
        "<div><label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" type=\"{kind}\" value=\"{}\"></div>",
        esc(value.as_deref().unwrap_or(""))
    )
}

fn qs(pairs: &[(&str, &Option<String>)], page: i64) -> String {
    let mut out: Vec<String> =
        pairs.iter().filter_map(|(k, v)| nonempty(v).map(|v| format!("{k}={}", urlenc(&v)))).collect();
    out.push(format!("page={page}"));
    out.join("&amp;")
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn sessions_page(State(web): State<Web>, h: HeaderMap, Query(q): Query<SessionQuery>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        let page = q.page.unwrap_or(1).clamp(1, 100_000);
        let f = filter(&web, &c, &q)?;
        let rows = sessions::find(&web.app, &f, (page - 1) * PAGE, PAGE + 1).await?;
        let more = rows.len() as i64 > PAGE;
        let mut body = String::from("<form method=\"get\" action=\"/audit/sessions\" class=\"filters\" aria-label=\"Filter sessions\">");
        if c.sees_all() {
            body.push_str(&field("user", "Vendor (user)", &q.user, "text"));
            body.push_str(&field("org", "Organisation", &q.org, "text"));
        }
        body.push_str(&field("target", "Target", &q.target, "text"));
        body.push_str(&field("from", "From (day, plant time)", &q.from, "date"));
        body.push_str(&field("to", "To (day, plant time)", &q.to, "date"));
        body.push_str(&field("reason", "End reason (closed, killed, expired, idle, live…)", &q.reason, "text"));
        body.push_str(&field("protocol", "Protocol (ssh, rdp)", &q.protocol, "text"));
        body.push_str("<button type=\"submit\">Filter</button></form>");
        if c.sees_all() {
            body.push_str(
                "<form method=\"get\" action=\"/audit/search\" role=\"search\"><label for=\"q\">Search recordings</label>\
                 <input id=\"q\" name=\"q\" type=\"search\"><button type=\"submit\">Search</button></form>",
            );
        }
        body.push_str(
            "<table><caption>Recorded sessions, newest first</caption><thead><tr><th scope=\"col\">Started</th><th scope=\"col\">Vendor</th>\
             <th scope=\"col\">Target</th><th scope=\"col\">Protocol</th><th scope=\"col\">End</th><th scope=\"col\">Recording</th></tr></thead><tbody>",
        );
        for s in rows.iter().take(PAGE as usize) {
            let links = if s.recording_path.is_some() {
                let mut l = format!("<a href=\"/audit/sessions/{id}/replay\">Replay</a>", id = esc(&s.id));
                if s.protocol == "ssh" {
                    let _ = write!(l, " · <a href=\"/audit/sessions/{id}/cast\" download>.cast</a>", id = esc(&s.id));
                }
                if c.sees_all() {
                    let _ = write!(l, " · <a href=\"/audit/sessions/{id}/evidence\" download>Evidence bundle</a>", id = esc(&s.id));
                }
                l
            } else {
                "—".to_string()
            };
            let _ = write!(
                body,
                "<tr id=\"row-{id}\"><td>{start}</td><td>{u}</td><td>{t}</td><td>{p}</td><td>{r}</td><td>{links}</td></tr>",
                id = esc(&s.id),
                start = time_html(web.tz, s.started_at),
                u = esc(&s.user),
                t = esc(&s.target),
                p = esc(&s.protocol),
                r = esc(s.end_reason.as_deref().unwrap_or("live")),
            );
        }
        body.push_str("</tbody></table><nav aria-label=\"Pages\">");
        let pairs = [
            ("user", &q.user),
            ("org", &q.org),
            ("target", &q.target),
            ("from", &q.from),
            ("to", &q.to),
            ("reason", &q.reason),
            ("protocol", &q.protocol),
        ];
        if page > 1 {
            let _ = write!(body, "<a rel=\"prev\" href=\"/audit/sessions?{}\">Newer</a> ", qs(&pairs, page - 1));
        }
        let _ = write!(body, "<span>Page {page}</span>");
        if more {
            let _ = write!(body, " <a rel=\"next\" href=\"/audit/sessions?{}\">Older</a>", qs(&pairs, page + 1));
        }
        body.push_str("</nav>");
        layout(&web, &c, "Recorded sessions", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn search_page(State(web): State<Web>, h: HeaderMap, Query(q): Query<SearchQuery>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        if !c.sees_all() {
            return Err(forbidden("search recordings"));
        }
        let text = nonempty(&q.q).unwrap_or_default();
        let mut body = format!(
            "<form method=\"get\" action=\"/audit/search\" role=\"search\"><label for=\"q\">Search recordings</label>\
             <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\"><button type=\"submit\">Search</button></form>",
            esc(&text)
        );
        if !text.is_empty() {
            let found = crate::search::search(&web.app, &crate::search::Query { text: text.clone(), ..Default::default() })
                .await
                .map_err(|e| Error::Invalid(format!("search failed: {e}")))?;
            if found.is_empty() {
                body.push_str("<p class=\"empty\" role=\"status\">No recordings contain that.</p>");
            }
            body.push_str("<ul class=\"cards\" id=\"hits\">");
            for s in found {
                let _ = write!(
                    body,
                    "<li><strong>{u} → {t}</strong>, {start} ({r})<ul>",
                    u = esc(&s.user),
                    t = esc(&s.target),
                    start = time_html(web.tz, s.started_at),
                    r = esc(s.end_reason.as_deref().unwrap_or("live")),
                );
                for hit in s.hits.iter().take(20) {
                    let _ = write!(
                        body,
                        "<li><a class=\"hit\" href=\"/audit/sessions/{id}/replay?t={t:.1}\">at {off}</a> <code>{text}</code></li>",
                        id = esc(&s.session),
                        // Just after the line was complete, so the frame shows it.
                        t = hit.offset + 0.3,
                        off = esc(&crate::replay::transcript::fmt_offset(hit.offset)),
                        text = esc(&hit.text),
                    );
                }
                body.push_str("</ul></li>");
            }
            body.push_str("</ul>");
        }
        layout(&web, &c, "Search recordings", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

#[derive(Deserialize)]
struct ReplayQuery {
    t: Option<f64>,
    speed: Option<f64>,
}

async fn replay_page(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        let s = readable(&web, &c, &id).await?;
        if s.protocol == "rdp" {
            return super::rdp_replay::page(&web, &c, &s, q.t, q.speed).await;
        }
        let start = q.t.filter(|t| t.is_finite()).unwrap_or(0.0).clamp(0.0, 1e9);
        let speed = q.speed.filter(|s| s.is_finite()).unwrap_or(1.0).clamp(0.25, 16.0);
        let mut speeds = String::new();
        for sp in [0.5, 1.0, 2.0, 4.0] {
            let _ = write!(speeds, " <a href=\"/audit/sessions/{id}/replay?t={start:.1}&amp;speed={sp}\">{sp}×</a>", id = esc(&s.id));
        }
        let body = format!(
            "<link rel=\"stylesheet\" href=\"{css}\"><p>{u} → {t}, started {started}; {r}. Starting at {at}. Speed:{speeds}</p>\
             <div id=\"player\" role=\"region\" aria-label=\"Recording of session {id}\" data-cast=\"/audit/sessions/{id}/cast\" \
             data-start=\"{start:.1}\" data-speed=\"{speed}\"></div>\
             <p><a href=\"/audit/sessions/{id}/cast\" download>Download the recording (.cast)</a></p>\
             <script src=\"{js}\"></script><script src=\"{replay}\"></script>",
            css = assets::url("asciinema-player.css"),
            js = assets::url("asciinema-player.min.js"),
            replay = assets::url("replay.js"),
            u = esc(&s.user),
            t = esc(&s.target),
            started = time_html(web.tz, s.started_at),
            r = esc(s.end_reason.as_deref().unwrap_or("live")),
            at = esc(&crate::replay::transcript::fmt_offset(start)),
            id = esc(&s.id),
        );
        let mut resp = layout(&web, &c, &format!("Replay: {} → {}", s.user, s.target), &body).await?;
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPLAY_CSP));
        Ok::<_, WebError>(resp)
    }
    .await;
    res.unwrap_or_else(page_error)
}

/// Reads a stored object whole (bounded by [`MAX_DOWNLOAD`]).
async fn read_object(web: &Web, locator: String) -> Result<Vec<u8>, WebError> {
    let store = crate::storage::for_app(&web.app);
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        use crate::storage::RecordingStorage;
        use std::io::Read;
        let r = store.open(&locator)?;
        let mut buf = Vec::new();
        r.take(MAX_DOWNLOAD + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_DOWNLOAD {
            anyhow::bail!(
                "the recording is larger than {} MiB: export it with `penstock evidence export`",
                MAX_DOWNLOAD >> 20
            );
        }
        Ok(buf)
    })
    .await
    .map_err(|e| Error::Other(anyhow::anyhow!("download task failed: {e}")))?
    .map_err(|e| Error::Invalid(format!("cannot read the recording: {e}")).into())
}

async fn cast_download(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        let s = readable(&web, &c, &id).await?;
        let locator = s
            .recording_path
            .clone()
            .filter(|_| s.protocol == "ssh")
            .ok_or_else(|| Error::NotFound(format!("session {} has no terminal recording", s.id)))?;
        let body = read_object(&web, locator).await?;
        Ok::<_, WebError>(
            (
                [
                    (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}.cast\"", s.id)),
                ],
                body,
            )
                .into_response(),
        )
    }
    .await;
    res.unwrap_or_else(|e| e.into_response())
}

async fn evidence_download(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        if !c.sees_all() {
            return Err(forbidden("export evidence bundles"));
        }
        let s = readable(&web, &c, &id).await?;
        let dir = tempdir_in(&web)?;
        let out = dir.join(format!("penstock-evidence-{}.tar", s.id));
        let sel = crate::evidence::export::Selection::Session(s.id.clone());
        // The export's future is not `Send` (it borrows inside iterator closures), so it runs
        // on a blocking thread of its own.
        let (app, out2, rt) = (web.app.clone(), out.clone(), tokio::runtime::Handle::current());
        let made = tokio::task::spawn_blocking(move || rt.block_on(crate::evidence::export::export(&app, &sel, &out2)))
            .await
            .map_err(|e| Error::Other(anyhow::anyhow!("export task failed: {e}")))?;
        let body = match made {
            Ok(_) => {
                tokio::fs::read(&out).await.map_err(|e| Error::Other(anyhow::anyhow!("cannot read the bundle: {e}")))
            }
            Err(e) => Err(Error::Invalid(format!("cannot export: {e}"))),
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok::<_, WebError>(
            (
                [
                    (header::CONTENT_TYPE, "application/x-tar".to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"penstock-evidence-{}.tar\"", s.id)),
                ],
                body?,
            )
                .into_response(),
        )
    }
    .await;
    res.unwrap_or_else(|e| e.into_response())
}

/// A fresh private folder for one export.
fn tempdir_in(web: &Web) -> Result<std::path::PathBuf, WebError> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = web;
    let dir = std::env::temp_dir().join(format!("penstock-export-{}", crate::sessions::new_id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::Other(anyhow::anyhow!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

#[derive(Deserialize)]
struct LogQuery {
    page: Option<i64>,
}

async fn log_page(State(web): State<Web>, h: HeaderMap, Query(q): Query<LogQuery>) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        if !matches!(c.user.role, Role::Auditor | Role::Admin) {
            return Err(forbidden("read the audit log"));
        }
        let page = q.page.unwrap_or(1).clamp(1, 10_000_000);
        let verdict = audit::verify(&web.app.store).await.map_err(Error::from)?;
        let (status, total) = match &verdict {
            audit::Verdict::Intact { count, head } => (
                format!("<p class=\"ok\" role=\"status\" id=\"chain\">Chain intact: {count} events, head {}</p>", esc(&head[..head.len().min(16)])),
                *count,
            ),
            audit::Verdict::Broken { seq, reason } => (
                format!("<p class=\"error\" role=\"alert\" id=\"chain\">Chain broken at event {seq}: {}</p>", esc(reason)),
                *seq,
            ),
        };
        // Newest first: page 1 is the last PAGE events.
        let after = (total - page * PAGE).max(0);
        let limit = (total - (page - 1) * PAGE - after).max(0);
        let rows = audit::read(&web.app.store, after, limit).await.map_err(Error::from)?;
        let mut body = status;
        body.push_str(
            "<table><caption>Audit events, newest first</caption><thead><tr><th scope=\"col\">#</th><th scope=\"col\">When</th>\
             <th scope=\"col\">Event</th><th scope=\"col\">Actor</th><th scope=\"col\">Details</th></tr></thead><tbody>",
        );
        for r in rows.iter().rev() {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                r.seq,
                time_html(web.tz, r.at),
                esc(&r.kind),
                esc(&r.actor),
                esc(r.details.get())
            );
        }
        body.push_str("</tbody></table><nav aria-label=\"Pages\">");
        if page > 1 {
            let _ = write!(body, "<a rel=\"prev\" href=\"/audit/log?page={}\">Newer</a> ", page - 1);
        }
        let _ = write!(body, "<span>Page {page}</span>");
        if after > 0 {
            let _ = write!(body, " <a rel=\"next\" href=\"/audit/log?page={}\">Older</a>", page + 1);
        }
        body.push_str("</nav>");
        layout(&web, &c, "Audit log", &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/audit/sessions", get(sessions_page))
        .route("/audit/search", get(search_page))
        .route("/audit/log", get(log_page))
        .route("/audit/sessions/{id}/replay", get(replay_page))
        .route("/audit/sessions/{id}/frame", get(super::rdp_replay::frame))
        .route("/audit/sessions/{id}/cast", get(cast_download))
        .route("/audit/sessions/{id}/evidence", get(evidence_download))
}
