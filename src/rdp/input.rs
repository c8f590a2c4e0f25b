//! What the vendor sends, as the recording keeps it: the relay hands every chunk it forwards to a
//! [`ClientTap`], which splits the stream into PDUs (bounded buffer) and keeps only what a key
//! log and a decoder need:
//! - input (fast-path input PDUs, slow-path Input PDUs): recorded as they are ([`CLIENT_INPUT`]);
//! - the Client Info PDU: never recorded (it may carry the vendor's password), only a JSON
//!   note of its compression settings, which the replay's bulk decompressor needs
//!   ([`CLIENT_INFO`]).
//!
//! - MCS Send Data Requests on the static channels the policy allowed and the recording logs
//!   (`cliprdr`, `rdpdr`; [`CLIENT_CHANNEL`]): recorded as they are, so the replay can show the
//!   clipboard text and the files and drives that went through (`replay::rdp_channels`).
//!   Nothing on any other channel, and never the Client Info PDU (it travels on the I/O
//!   channel, which is never one of these).
//!
//! Everything else the client sends (capabilities, other channels' data, acknowledgements) is
//! forwarded and not recorded.

use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::rdp::client_info::ClientInfoFlags;
use ironrdp_pdu::rdp::headers::{BasicSecurityHeaderFlags, ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::rdp::ClientInfoPdu;
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;

/// Record kind: a client input PDU (fast-path, or an X.224 frame holding a slow-path Input PDU).
pub const CLIENT_INPUT: u8 = b'I';
/// Record kind: what the replay needs from the Client Info PDU (JSON, no credentials).
pub const CLIENT_INFO: u8 = b'N';
/// Record kind: an X.224 frame with the vendor's MCS Send Data Request on a recorded channel
/// (`cliprdr` or `rdpdr`, where the policy allowed them).
pub const CLIENT_CHANNEL: u8 = b'C';

/// Static channels whose traffic the recording keeps in both directions (when allowed).
pub const RECORDED_CHANNELS: [&str; 2] = ["cliprdr", "rdpdr"];

/// The MCS channel ids of the recorded channels: `ids` are the static channels' ids from the
/// target's MCS Connect Response (`rdp::guard` reads it), `names` the static channels as the
/// target was asked for them, in the same order.
pub fn recorded_channel_ids(ids: &[u16], names: &[String]) -> Vec<u16> {
    names
        .iter()
        .zip(ids.iter())
        .filter(|(n, _)| RECORDED_CHANNELS.iter().any(|r| n.eq_ignore_ascii_case(r)))
        .map(|(_, id)| *id)
        .collect()
}

/// Largest PDU the tap buffers (a TPKT length is 16 bits; fast-path lengths 15).
const MAX_PDU: usize = 64 * 1024;

/// What one client PDU is, for the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Input: record these bytes.
    Input(Vec<u8>),
    /// The Client Info PDU: record this note instead.
    Info(String),
    /// Data on a recorded channel (`cliprdr`, `rdpdr`): record these bytes.
    Channel(Vec<u8>),
    /// Not recorded.
    Other,
}

/// Splits the vendor's stream into PDUs.
#[derive(Debug, Default)]
pub struct ClientTap {
    buf: Vec<u8>,
    /// The stream could not be split (garbage or an unsupported framing): nothing more is
    /// classified (the relay goes on; the key log ends here, with a note).
    pub broken: bool,
    /// MCS channel ids whose Send Data Requests are recorded (allowed `cliprdr`/`rdpdr`).
    pub recorded: Vec<u16>,
}

impl ClientTap {
    /// Feeds bytes the vendor sent; returns what to record, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Classified> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let info = match ironrdp_pdu::find_size(&self.buf) {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    self.buf = Vec::new();
                    break;
                }
            };
            if info.length == 0 || info.length > MAX_PDU {
                self.broken = true;
                self.buf = Vec::new();
                break;
            }
            if self.buf.len() < info.length {
                break;
            }
            let pdu: Vec<u8> = self.buf.drain(..info.length).collect();
            let c = classify(info.action, &pdu, &self.recorded);
            if c != Classified::Other {
                out.push(c);
            }
        }
        if self.buf.len() > MAX_PDU {
            self.broken = true;
            self.buf = Vec::new();
        }
        out
    }
}

/// Classifies one whole client PDU; Send Data Requests on the channel ids in `recorded` are
/// channel data.
pub fn classify(action: Action, pdu: &[u8], recorded: &[u16]) -> Classified {
    match action {
        Action::FastPath => Classified::Input(pdu.to_vec()),
        Action::X224 => {
            let Ok(X224(McsMessage::SendDataRequest(req))) = ironrdp_core::decode::<X224<McsMessage<'_>>>(pdu) else {
                return Classified::Other;
            };
            if recorded.contains(&req.channel_id) {
                return Classified::Channel(pdu.to_vec());
            }
            let data: &[u8] = &req.user_data;
            // A Basic Security Header with INFO_PKT: the Client Info PDU.
            if data.len() >= 4 {
                let flags = BasicSecurityHeaderFlags::from_bits_truncate(u16::from_le_bytes([data[0], data[1]]));
                if flags.contains(BasicSecurityHeaderFlags::INFO_PKT) {
                    return Classified::Info(info_note(data));
                }
            }
            match ironrdp_core::decode::<ShareControlHeader>(data) {
                Ok(h) => match h.share_control_pdu {
                    ShareControlPdu::Data(d) if matches!(d.share_data_pdu, ShareDataPdu::Input(_)) => {
                        Classified::Input(pdu.to_vec())
                    }
                    _ => Classified::Other,
                },
                Err(_) => Classified::Other,
            }
        }
    }
}

/// The note kept of a Client Info PDU: its compression settings (never its credentials).
fn info_note(data: &[u8]) -> String {
    match ironrdp_core::decode::<ClientInfoPdu>(data) {
        Ok(p) => {
            let compression = p.client_info.flags.contains(ClientInfoFlags::COMPRESSION);
            serde_json::json!({
                "compression": compression,
                "compression_type": p.client_info.compression_type as u8,
            })
            .to_string()
        }
        Err(e) => serde_json::json!({ "error": format!("undecodable Client Info: {e}") }).to_string(),
    }
}

/// The vaulted account put into the Client Info PDU of a target without NLA (auto-logon).
pub struct AutoLogon {
    /// The target account.
    pub login: String,
    /// Its vaulted password.
    pub password: crate::secret::Secret,
}

impl std::fmt::Debug for AutoLogon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoLogon").field("login", &self.login).finish_non_exhaustive()
    }
}

/// Most bytes held back from the target while the vendor's Client Info PDU is awaited.
pub const MAX_HOLD: usize = 256 * 1024;

/// Takes the complete PDUs out of `hold` (the vendor's stream before its Client Info): returns
/// the bytes to forward, with the Client Info PDU's credentials replaced by `logon`'s, and
/// whether that happened (then `hold` is empty and everything after is forwarded as it is).
pub fn rewrite_client_info(hold: &mut Vec<u8>, logon: &AutoLogon) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    loop {
        let info = match ironrdp_pdu::find_size(hold) {
            Ok(Some(i)) if i.length > 0 && hold.len() >= i.length => i,
            Ok(_) => return Ok((out, false)),
            Err(e) => return Err(format!("the vendor's stream cannot be split into PDUs: {e}")),
        };
        let pdu: Vec<u8> = hold.drain(..info.length).collect();
        if info.action == Action::X224 {
            if let Some(new) = replace_credentials(&pdu, logon)? {
                out.extend_from_slice(&new);
                out.append(hold);
                return Ok((out, true));
            }
        }
        out.extend_from_slice(&pdu);
    }
}

/// The Client Info PDU `pdu` with the vaulted account (and the auto-logon flag) instead of the
/// vendor's credentials; `None` when `pdu` is not a Client Info PDU.
fn replace_credentials(pdu: &[u8], logon: &AutoLogon) -> Result<Option<Vec<u8>>, String> {
    let Ok(X224(McsMessage::SendDataRequest(req))) = ironrdp_core::decode::<X224<McsMessage<'_>>>(pdu) else {
        return Ok(None);
    };
    let data: &[u8] = &req.user_data;
    if data.len() < 4 {
        return Ok(None);
    }
    let flags = BasicSecurityHeaderFlags::from_bits_truncate(u16::from_le_bytes([data[0], data[1]]));
    if !flags.contains(BasicSecurityHeaderFlags::INFO_PKT) {
        return Ok(None);
    }
    let mut info =
        ironrdp_core::decode::<ClientInfoPdu>(data).map_err(|e| format!("the vendor's Client Info PDU: {e}"))?;
    let password = logon.password.expose_str().ok_or("the vaulted password is not text")?.to_string();
    info.client_info.credentials =
        ironrdp_pdu::rdp::client_info::Credentials { username: logon.login.clone(), password, domain: None };
    info.client_info.password_cookie = None;
    info.client_info.flags |= ClientInfoFlags::AUTOLOGON;
    let user_data =
        zeroize::Zeroizing::new(ironrdp_core::encode_vec(&info).map_err(|e| format!("encode Client Info: {e}"))?);
    // IronRDP's Credentials hold the password in a plain String; it is dropped here.
    drop(info);
    let new = ironrdp_pdu::mcs::SendDataRequest {
        initiator_id: req.initiator_id,
        channel_id: req.channel_id,
        user_data: std::borrow::Cow::Borrowed(&user_data[..]),
    };
    let out = ironrdp_core::encode_vec(&X224(McsMessage::SendDataRequest(new)))
        .map_err(|e| format!("encode Client Info: {e}"))?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn send_data(channel_id: u16, data: &[u8]) -> Vec<u8> {
        let req = ironrdp_pdu::mcs::SendDataRequest { initiator_id: 1007, channel_id, user_data: Cow::Borrowed(data) };
        ironrdp_core::encode_vec(&X224(McsMessage::SendDataRequest(req))).expect("encode")
    }

    /// Send Data Requests are recorded on the recorded channels only, whatever they carry
    /// (garbage included: the tap never parses channel contents); other channels' data is not;
    /// a stream that cannot be split stops the tap, never the relay, and never panics.
    #[test]
    fn channel_data_is_kept_only_on_recorded_channels() {
        let mut tap = ClientTap { recorded: vec![1004, 1005], ..ClientTap::default() };
        let garbage = [0xffu8; 40];
        let mut stream = send_data(1005, &garbage);
        stream.extend(send_data(1006, b"other channel"));
        stream.extend(send_data(1004, &[]));
        stream.extend(send_data(1003, &[0x40, 0, 0, 0, 1, 2, 3]));
        // Fed one byte at a time: PDUs split anywhere.
        let mut got = Vec::new();
        for b in &stream {
            got.extend(tap.feed(std::slice::from_ref(b)));
        }
        let channel: Vec<_> = got.iter().filter(|c| matches!(c, Classified::Channel(_))).collect();
        assert_eq!(channel.len(), 2, "{got:?}");
        assert!(!tap.broken);
        // Hostile framing: a TPKT announcing more than the tap holds.
        let mut bad = vec![3u8, 0, 0xff, 0xff];
        bad.extend([0u8; 100]);
        let _ = tap.feed(&bad);
        let _ = tap.feed(&[0u8; 70_000]);
        assert!(tap.broken);
        assert!(tap.feed(&stream).is_empty());
    }
}
