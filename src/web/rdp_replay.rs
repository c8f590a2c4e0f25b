//! RDP sessions in the console: the replay page (a canvas player, the session's key log with
//! links to their moments) and the frames it asks for, `GET /audit/sessions/{id}/frame?t=&p=`:
//! the screen at `t` seconds as a PNG, decoded on the server by the core's
//! [`crate::replay::rdp_view`] (a player's decoder is kept between its requests, so playing on
//! decodes only what is new). `204` when the screen did not change since this player's last
//! frame. Who may read a session is `audit::readable`'s rule (a vendor: its own only).

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::audit::{readable, REPLAY_CSP};
use super::pages::layout;
use super::{assets, caller, esc, time_html, Caller, Web, WebError};
use crate::error::Error;
use crate::replay::rdp_view;
use crate::replay::transcript::{clean_char, fmt_offset};
use crate::sessions::SessionRow;
use crate::storage::RecordingStorage;

/// Key-log lines shown on the page.
const SHOWN_KEYS: usize = 2000;

fn locator(s: &SessionRow) -> Result<String, WebError> {
    s.recording_path.clone().ok_or_else(|| Error::NotFound(format!("session {} has no recording", s.id)).into())
}

/// The replay page of an RDP session.
pub(super) async fn page(
    web: &Web,
    c: &Caller,
    s: &SessionRow,
    t: Option<f64>,
    speed: Option<f64>,
) -> Result<Response, WebError> {
    let loc = locator(s)?;
    let store = crate::storage::for_app(&web.app);
    let tl = tokio::task::spawn_blocking(move || rdp_view::timeline(store.open(&loc)?))
        .await
        .map_err(|e| Error::Other(anyhow::anyhow!("replay task failed: {e}")))?
        .map_err(|e| Error::Invalid(format!("cannot read the recording: {e:#}")))?;
    let start = t.filter(|t| t.is_finite()).unwrap_or(0.0).clamp(0.0, tl.duration.max(0.0));
    let speed = speed.filter(|s| s.is_finite()).unwrap_or(1.0).clamp(0.25, 16.0);
    let id = esc(&s.id);
    let mut keys = String::new();
    for l in tl.keys.iter().take(SHOWN_KEYS) {
        let text: String = l.text.chars().map(clean_char).collect();
        let _ = write!(
            keys,
            "<li><a href=\"/audit/sessions/{id}/replay?t={t:.1}\" data-t=\"{t:.1}\">{off}</a> {kind} <code>{text}</code></li>",
            t = l.t,
            off = esc(&fmt_offset(l.t)),
            kind = esc(l.kind),
            text = esc(&text),
        );
    }
    if keys.is_empty() {
        keys.push_str("<li>Nothing was typed or clicked.</li>");
    }
    let more = if tl.keys.len() > SHOWN_KEYS || tl.keys_cut {
        format!("<p>The key log is longer: <code>penstock replay {id} --keys</code> shows all of it.</p>")
    } else {
        String::new()
    };
    let note = tl.layout_note.as_deref().map(|n| format!("<p class=\"note\">{}</p>", esc(n))).unwrap_or_default();
    let body = format!(
        "<p>{u} → {tg}, started {started}; {r}. Length {len}.</p>\
         <div id=\"rdp-player\" data-frame=\"/audit/sessions/{id}/frame\" data-start=\"{start:.1}\" data-speed=\"{speed}\" \
         data-duration=\"{dur:.3}\">\
         <div class=\"controls\"><button type=\"button\" id=\"rdp-play\">Play</button> \
         <label for=\"rdp-seek\">Position</label> <input id=\"rdp-seek\" type=\"range\" min=\"0\" max=\"{dur:.1}\" step=\"0.1\" value=\"{start:.1}\"> \
         <span id=\"rdp-time\">{at}</span> \
         <label for=\"rdp-speed\">Speed</label> <select id=\"rdp-speed\"><option value=\"0.5\">0.5×</option>\
         <option value=\"1\">1×</option><option value=\"2\">2×</option><option value=\"4\">4×</option><option value=\"8\">8×</option></select></div>\
         <p id=\"rdp-status\" role=\"status\">Loading…</p>\
         <canvas id=\"rdp-screen\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Screen of session {id}\"></canvas></div>\
         <h2>Key log</h2>{note}<ol id=\"rdp-keys\" class=\"keys\">{keys}</ol>{more}\
         <script src=\"{js}\"></script>",
        u = esc(&s.user),
        tg = esc(&s.target),
        started = time_html(web.tz, s.started_at),
        r = esc(s.end_reason.as_deref().unwrap_or("live")),
        len = esc(&fmt_offset(tl.duration)),
        dur = tl.duration,
        at = esc(&fmt_offset(start)),
        w = tl.width,
        h = tl.height,
        js = assets::url("rdp-player.js"),
    );
    let mut resp = layout(web, c, &format!("Replay: {} → {}", s.user, s.target), &body).await?;
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPLAY_CSP));
    Ok(resp)
}

#[derive(Deserialize)]
pub(super) struct FrameQuery {
    /// Seconds into the recording.
    t: Option<f64>,
    /// The player's id (letters and digits, at most 32): its decoder is kept between requests.
    p: Option<String>,
    /// `1`: the frame even when unchanged.
    full: Option<u8>,
}

/// The screen of an RDP recording at `t`.
pub(super) async fn frame(
    State(web): State<Web>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FrameQuery>,
) -> Response {
    let res = async {
        let c = caller(&web, &h).await?;
        let s = readable(&web, &c, &id).await?;
        if s.protocol != "rdp" {
            return Err(Error::NotFound(format!("session {} is not an RDP session", s.id)).into());
        }
        let loc = locator(&s)?;
        let t = q.t.filter(|t| t.is_finite() && *t >= 0.0).unwrap_or(0.0).min(1e9);
        let player = player_id(q.p)?;
        let key = format!("{}/{}/{player}", c.user.id, s.id);
        // `t` is in seconds to the millisecond (the page's times have three decimals): the
        // screen at t includes everything recorded within that millisecond, so the recording's
        // end (its last record's time, rounded) shows its last screen.
        let micros = ((t * 1000.0).round() as u64).saturating_mul(1000).saturating_add(999);
        frame_response(&web, key, loc, micros, q.full == Some(1), false).await
    }
    .await;
    res.unwrap_or_else(|e| e.into_response())
}

/// A player's id as the browser sent it: at most 32 letters and digits.
pub(super) fn player_id(p: Option<String>) -> Result<String, WebError> {
    let player = p.unwrap_or_default();
    if player.len() > 32 || !player.chars().all(|ch| ch.is_ascii_alphanumeric()) {
        return Err(Error::Invalid("p must be at most 32 letters and digits".into()).into());
    }
    Ok(player)
}

/// The screen at `micros` of recording `loc` for player `key`, as the answer to a frame request.
pub(super) async fn frame_response(
    web: &Web,
    key: String,
    loc: String,
    micros: u64,
    always: bool,
    ended: bool,
) -> Result<Response, WebError> {
    let (views, store) = (web.views.clone(), crate::storage::for_app(&web.app));
    let (png, at, _) =
        tokio::task::spawn_blocking(move || rdp_view::frame_at(&views, &key, micros, always, || Ok(store.open(&loc)?)))
            .await
            .map_err(|e| Error::Other(anyhow::anyhow!("replay task failed: {e}")))?
            .map_err(|e| Error::Invalid(format!("cannot decode the recording: {e:#}")))?;
    let mut resp = match png {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Whole milliseconds, rounded down: a request for t answers at t.
    let ms = at / 1000;
    if let Ok(v) = HeaderValue::from_str(&format!("{}.{:03}", ms / 1000, ms % 1000)) {
        h.insert("x-penstock-at", v);
    }
    if ended {
        h.insert("x-penstock-ended", HeaderValue::from_static("1"));
    }
    Ok(resp)
}

/// The live view of an RDP session (the player in live mode: it asks for the latest screen).
pub(super) async fn live_page(web: &Web, c: &Caller, s: &SessionRow) -> Result<Response, WebError> {
    let id = esc(&s.id);
    let body = format!(
        "<p>{u} → {tg}, since {since}. <span id=\"live-status\" role=\"status\">Connecting…</span></p>\
         <div id=\"rdp-live\" data-frame=\"/sessions/{id}/watch/frame\">\
         <canvas id=\"rdp-screen\" width=\"1024\" height=\"768\" role=\"img\" aria-label=\"Screen of session {id} (read-only)\"></canvas></div>\
         <p><a href=\"/sessions\">Back to live sessions</a></p><script src=\"{js}\"></script>",
        u = esc(&s.user),
        tg = esc(&s.target),
        since = time_html(web.tz, s.started_at),
        js = assets::url("rdp-player.js"),
    );
    layout(web, c, &format!("Watching {} → {}", s.user, s.target), &body).await
}
