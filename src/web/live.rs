//! The live view in the console: `/sessions/{id}/watch` (a page) and its WebSocket
//! `/sessions/{id}/watch/ws`, which carries the screen of a live session as the core's
//! [`crate::live::Watcher`] renders it (text only: target output never reaches the browser as
//! recorded). Managers and auditors only; read-only (messages from the browser are ignored).

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::api::session_id;
use super::pages::{layout, page_error};
use super::{caller, esc, Caller, Web, WebError};
use crate::live::{self, Seen, Watcher};

/// The page's script (served from our own origin: `script-src 'self'`).
const SCRIPT: &str = include_str!("static/live.js");
/// Screen updates sent at most this often (more output in between is folded in).
const FRAME: Duration = Duration::from_millis(100);
/// How often a watcher's console session is checked again (logout or expiry ends the view).
const RECHECK: Duration = Duration::from_secs(10);

/// The caller, allowed to watch.
async fn watcher(web: &Web, h: &HeaderMap) -> Result<Caller, WebError> {
    let c = caller(web, h).await?;
    if !live::may_watch(&c.user) {
        return Err(WebError::Forbidden("only managers and auditors may watch live sessions".into()));
    }
    Ok(c)
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SCRIPT)
        .into_response()
}

async fn watch_page(State(web): State<Web>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let res = async {
        let c = watcher(&web, &h).await?;
        let id = session_id(&id)?;
        let s = crate::sessions::get(&web.app, id)
            .await?
            .ok_or_else(|| crate::error::Error::NotFound(format!("unknown session {id}")))?;
        if s.protocol == "rdp" {
            let s = live::watch_rdp(&web.app, &c.user, id, "web").await?;
            return super::rdp_replay::live_page(&web, &c, &s).await;
        }
        let body = format!(
            "<p>{u} → {t}, since {since}. <span id=\"live-status\" role=\"status\">Connecting…</span></p>\
             <pre id=\"screen\" class=\"screen\" tabindex=\"0\" aria-label=\"Screen of session {id} (read-only)\"></pre>\
             <p><a href=\"/sessions\">Back to live sessions</a></p><script src=\"/static/live.js\"></script>",
            u = esc(&s.user),
            t = esc(&s.target),
            since = super::time_html(web.tz, s.started_at),
            id = esc(id),
        );
        layout(&web, &c, &format!("Watching {} → {}", s.user, s.target), &body).await
    }
    .await;
    res.unwrap_or_else(page_error)
}

async fn watch_ws(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let c = match watcher(&web, &h).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // A browser always names the page's origin: another site's page may not watch through the
    // user's cookie (cross-site WebSocket hijacking).
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        if origin.to_str().ok().and_then(|o| o.strip_prefix("https://")) != host {
            return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
        }
    }
    let id = match session_id(&id) {
        Ok(id) => id.to_string(),
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    // Joined (and audited) before the upgrade, so a session that is not live is a plain 404.
    let w = match Watcher::start(&web.app, &c.user, &id, "web").await {
        Ok(w) => w,
        Err(e) => return WebError::from(e).into_response(),
    };
    ws.max_message_size(4096).on_upgrade(move |socket| follow(web, h, w, socket))
}

async fn send_screen(socket: &mut WebSocket, w: &Watcher, note: Option<&str>) -> bool {
    let mut msg = json!({ "screen": w.screen().text() });
    if let Some(n) = note {
        msg["status"] = n.into();
    }
    socket.send(Message::Text(msg.to_string().into())).await.is_ok()
}

/// Streams the screen until the session ends, the browser leaves or the console session is
/// over.
async fn follow(web: Web, h: HeaderMap, mut w: Watcher, mut socket: WebSocket) {
    if !send_screen(&mut socket, &w, Some(&format!("Live: {}", w.title))).await {
        return;
    }
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let ended = loop {
        tokio::select! {
            seen = w.next() => match seen {
                Seen::Ended => break true,
                Seen::Changed | Seen::Resynced => {
                    // Fold in whatever else comes within one frame.
                    let deadline = tokio::time::sleep(FRAME);
                    tokio::pin!(deadline);
                    let mut over = false;
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            s = w.next() => if s == Seen::Ended { over = true; break },
                        }
                    }
                    if !send_screen(&mut socket, &w, None).await {
                        break false;
                    }
                    if over {
                        break true;
                    }
                }
            },
            msg = socket.recv() => match msg {
                // Read-only: anything the browser sends is ignored; a close ends the view.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                Some(Ok(_)) => {}
            },
            _ = recheck.tick() => {
                if watcher(&web, &h).await.is_err() {
                    let _ = socket.send(Message::Text(json!({"status": "Your console session ended."}).to_string().into())).await;
                    break false;
                }
            }
        }
    };
    if ended {
        let _ = socket
            .send(Message::Text(json!({ "ended": true, "status": "The session ended." }).to_string().into()))
            .await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[derive(serde::Deserialize)]
struct LiveFrameQuery {
    p: Option<String>,
}

/// The latest screen of a live RDP session (`204`: unchanged for this player;
/// `x-penstock-ended: 1` once the session is over).
async fn watch_frame(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LiveFrameQuery>,
) -> Response {
    let res = async {
        let c = watcher(&web, &h).await?;
        let id = session_id(&id)?.to_string();
        let (ended, locator) = match live::live_rdp(&web.app, &id).await {
            Ok(s) => (false, s.recording_path),
            // Just ended: the rest of the recording is still shown once.
            Err(_) => match crate::sessions::get(&web.app, &id).await? {
                Some(s) if s.protocol == "rdp" && s.ended_at.is_some() => (true, s.recording_path),
                _ => {
                    return Err(
                        crate::error::Error::NotFound(format!("session {id} is not live on this gateway")).into()
                    )
                }
            },
        };
        let locator = locator.ok_or_else(|| crate::error::Error::NotFound(format!("session {id} has no recording")))?;
        let player = super::rdp_replay::player_id(q.p)?;
        let key = format!("live/{}/{id}/{player}", c.user.id);
        super::rdp_replay::frame_response(&web, key, locator, u64::MAX, false, ended).await
    }
    .await;
    res.unwrap_or_else(|e| e.into_response())
}

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/static/live.js", get(script))
        .route("/sessions/{id}/watch", get(watch_page))
        .route("/sessions/{id}/watch/ws", get(watch_ws))
        .route("/sessions/{id}/watch/frame", get(watch_frame))
}
