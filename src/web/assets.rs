//! Front-end assets embedded in the binary: asciinema-player's script and style, built from
//! `web/package-lock.json` by `build.rs` (a stub saying the player was not built when npm was
//! missing). Served under `/assets/<hash>/<name>` with the right content type and a year-long,
//! immutable cache: the hash of the content is in the URL, so a new build gets new URLs.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::Web;

const PLAYER_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/assets/asciinema-player.min.js"));
const PLAYER_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/assets/asciinema-player.css"));
const REPLAY_JS: &[u8] = include_bytes!("static/replay.js");
const NOTICES_JS: &[u8] = include_bytes!("static/notices.js");
const RDP_PLAYER_JS: &[u8] = include_bytes!("static/rdp-player.js");

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "asciinema-player.min.js", content_type: "text/javascript; charset=utf-8", body: PLAYER_JS },
    Asset { name: "asciinema-player.css", content_type: "text/css; charset=utf-8", body: PLAYER_CSS },
    Asset { name: "replay.js", content_type: "text/javascript; charset=utf-8", body: REPLAY_JS },
    Asset { name: "notices.js", content_type: "text/javascript; charset=utf-8", body: NOTICES_JS },
    Asset { name: "rdp-player.js", content_type: "text/javascript; charset=utf-8", body: RDP_PLAYER_JS },
];

/// The first 16 hex digits of the SHA-256 of all assets: the URL prefix of this build's files.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for a in ASSETS {
        h.update(a.name.as_bytes());
        h.update(a.body);
    }
    hex::encode(h.finalize())[..16].to_string()
});

/// The URL of asset `name`.
pub fn url(name: &str) -> String {
    format!("/assets/{}/{name}", *VERSION)
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) if version == *VERSION => (
            [(header::CONTENT_TYPE, a.content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")],
            a.body,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

pub(super) fn routes() -> Router<Web> {
    Router::new().route("/assets/{version}/{name}", get(asset))
}
