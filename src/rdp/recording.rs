//! What an RDP recording holds: the decrypted byte stream the target sent (every PDU after
//! CredSSP: MCS Connect Response with the channel ids, licensing, Demand Active with the share
//! id and desktop size, then the fast-path and slow-path updates), stamped in microseconds, in a
//! frame recording (`recording::frames`, kind `S`), and from the vendor's side only its input
//! PDUs (kind `I`) and a note of the Client Info PDU's compression settings (kind `N`; see
//! `rdp::input`). The header names what a decoder needs that is not in those streams: the
//! protocol the target selected, the vendor's desktop settings and keyboard layout, and the
//! static channels as the target was asked for them (and those the policy refused). Decoding
//! (IronRDP's fast-path processor and bitmap/RemoteFX decoders, `replay::rdp`) happens at
//! replay, never on the session's path.

use ironrdp_pdu::nego::SecurityProtocol;
use serde_json::json;

use super::relay::ClientSettings;

/// The `format` value of RDP recordings.
pub const FORMAT: &str = "penstock-rdp/1";

/// The header line of an RDP recording.
pub fn header(
    session: &str,
    user: &str,
    target: &str,
    started: i64,
    selected: SecurityProtocol,
    client: ClientSettings,
) -> serde_json::Value {
    json!({
        "format": FORMAT,
        "session": session,
        "user": user,
        "target": target,
        "timestamp": started,
        "direction": "server-to-client",
        "selected_protocol": selected.bits(),
        "desktop_width": client.width,
        "desktop_height": client.height,
        "keyboard_layout": client.keyboard_layout,
        "channels": client.channels,
        "channels_refused": client.refused,
    })
}
