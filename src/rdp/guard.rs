//! What a target may not send through the gateway. The relay copies the target's stream to the
//! vendor without decoding it; this guard walks it PDU by PDU (headers only, a few bytes held
//! back at most where a chunk ends inside one) and stops the session when the target sends a
//! **Server Redirection PDU**: that PDU tells the vendor's client to reconnect to another host,
//! with a routing token or credentials, around the gateway and its recording (MS-RDPBCGR
//! 2.2.13.3.1, `PDUTYPE_SERVER_REDIR_PKT` on the I/O channel). A compromised or hostile target
//! is exactly what a gateway must not let steer the vendor.
//!
//! The I/O channel's id comes from the target's first PDU after the handshake, its MCS Connect
//! Response (held whole, at most 64 KiB); a first PDU that is not one ends the session too.

use std::borrow::Cow;

use ironrdp_pdu::x224::{X224Data, X224};
use ironrdp_pdu::Action;

/// Largest Connect Response held while incomplete.
const MAX_FIRST: usize = 64 * 1024;
/// Bytes of an X.224 PDU that decide it: TPKT (4), X.224 data (3), MCS Send Data Indication up
/// to its user data (at most 8), Share Control Header type (4).
const LOOK: usize = 20;
/// `PDUTYPE_SERVER_REDIR_PKT` with `TS_PROTOCOL_VERSION`.
const SERVER_REDIRECTION: u16 = 0x0010 | 0x000a;

/// Why the guard ended the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A Server Redirection PDU.
    #[error(
        "the target sent a Server Redirection PDU (it would send the vendor's client to another host); session ended"
    )]
    Redirection,
    /// The first PDU was not an MCS Connect Response.
    #[error("the target's first PDU after the handshake is not an MCS Connect Response; session ended")]
    NoConnectResponse,
    /// The stream could not be split into PDUs.
    #[error("the target's stream could not be split into RDP PDUs; session ended")]
    Garbled,
}

/// What may go on to the vendor after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// The whole chunk, as it is.
    All,
    /// These bytes (held bytes from before, and the chunk up to a PDU start still undecided).
    Part(Vec<u8>),
}

/// Walks the target's stream.
#[derive(Debug, Default)]
pub struct TargetGuard {
    /// The I/O channel's id, once the Connect Response went by.
    io: Option<u16>,
    /// The static channels' ids the Connect Response gave, in the order they were asked for.
    channel_ids: Option<Vec<u16>>,
    /// Bytes of the current PDU still to pass without looking.
    remaining: usize,
    /// Bytes at a PDU start held until they decide it.
    held: Vec<u8>,
}

impl TargetGuard {
    /// The static channels' ids from the target's Connect Response, once it went by.
    pub fn channel_ids(&self) -> Option<&[u16]> {
        self.channel_ids.as_deref()
    }

    /// Feeds a chunk the target sent.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Forward, Refusal> {
        let prev = std::mem::take(&mut self.held);
        let had_prev = !prev.is_empty();
        let data: Cow<'_, [u8]> = if had_prev {
            let mut v = prev;
            v.extend_from_slice(chunk);
            Cow::Owned(v)
        } else {
            Cow::Borrowed(chunk)
        };
        let mut p = 0;
        while p < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - p);
                p += n;
                self.remaining -= n;
                continue;
            }
            let rest = &data[p..];
            let info = match ironrdp_pdu::find_size(rest) {
                Ok(Some(i)) if i.length > 0 => i,
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => return Err(Refusal::Garbled),
            };
            let Some(io) = self.io else {
                if rest.len() < info.length {
                    if info.length > MAX_FIRST {
                        return Err(Refusal::NoConnectResponse);
                    }
                    break;
                }
                let (io, ids) = connect_response(&rest[..info.length]).ok_or(Refusal::NoConnectResponse)?;
                self.io = Some(io);
                self.channel_ids = Some(ids);
                p += info.length;
                continue;
            };
            if info.action == Action::X224 {
                let look = info.length.min(LOOK);
                if rest.len() < look {
                    break;
                }
                if is_redirection(&rest[..look], io) {
                    return Err(Refusal::Redirection);
                }
            }
            let n = info.length.min(rest.len());
            p += n;
            self.remaining = info.length - n;
        }
        self.held = data[p..].to_vec();
        if !had_prev && p == chunk.len() {
            Ok(Forward::All)
        } else {
            Ok(Forward::Part(data[..p].to_vec()))
        }
    }
}

/// The I/O channel id and the static channels' ids of an MCS Connect Response PDU.
fn connect_response(pdu: &[u8]) -> Option<(u16, Vec<u16>)> {
    let X224(frame) = ironrdp_core::decode::<X224<X224Data<'_>>>(pdu).ok()?;
    let resp = ironrdp_core::decode::<ironrdp_pdu::mcs::ConnectResponse>(frame.data.as_ref()).ok()?;
    let net = &resp.conference_create_response.gcc_blocks().network;
    Some((net.io_channel, net.channel_ids.clone()))
}

/// Whether the start of an X.224 PDU (`head`, up to [`LOOK`] bytes) is an MCS Send Data
/// Indication on the I/O channel carrying a Server Redirection PDU.
fn is_redirection(head: &[u8], io: u16) -> bool {
    // TPKT (4 bytes), X.224 Data TPDU (02 F0 80).
    let Some(mcs) = head.get(7..) else { return false };
    // Send Data Indication (choice 26 << 2), initiator, channel id, priority/segmentation.
    if mcs.first().map(|b| b >> 2) != Some(26) {
        return false;
    }
    let (Some(c0), Some(c1)) = (mcs.get(3), mcs.get(4)) else { return false };
    if u16::from_be_bytes([*c0, *c1]) != io {
        return false;
    }
    // PER length: one byte, or two when the first has its top bit set.
    let Some(len0) = mcs.get(6) else { return false };
    let data_at = if len0 & 0x80 != 0 { 8 } else { 7 };
    // Share Control Header: totalLength (2), pduType (2).
    match (mcs.get(data_at + 2), mcs.get(data_at + 3)) {
        (Some(t0), Some(t1)) => u16::from_le_bytes([*t0, *t1]) == SERVER_REDIRECTION,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_pdu::gcc::{
        ConferenceCreateResponse, ServerCoreData, ServerCoreOptionalData, ServerGccBlocks, ServerNetworkData,
        ServerSecurityData,
    };
    use ironrdp_pdu::mcs::{ConnectResponse, DomainParameters, McsMessage, SendDataIndication};
    use std::borrow::Cow;

    fn connect_response(io: u16) -> Vec<u8> {
        // (The test's encoder; the module's decoder is `super::connect_response`.)
        let blocks = ServerGccBlocks {
            core: ServerCoreData {
                version: ironrdp_pdu::gcc::RdpVersion::V5_PLUS,
                optional_data: ServerCoreOptionalData::default(),
            },
            network: ServerNetworkData { channel_ids: vec![1004, 1005], io_channel: io },
            security: ServerSecurityData::no_security(),
            message_channel: None,
            multi_transport_channel: None,
        };
        let resp = ConnectResponse {
            conference_create_response: ConferenceCreateResponse::new(1002, blocks).expect("response"),
            called_connect_id: 0,
            domain_parameters: DomainParameters::target(),
        };
        let inner = ironrdp_core::encode_vec(&resp).expect("encode");
        ironrdp_core::encode_vec(&X224(X224Data { data: Cow::Owned(inner) })).expect("x224")
    }

    fn indication(channel_id: u16, user_data: Vec<u8>) -> Vec<u8> {
        let sdi = SendDataIndication { initiator_id: 1002, channel_id, user_data: Cow::Owned(user_data) };
        ironrdp_core::encode_vec(&X224(McsMessage::SendDataIndication(sdi))).expect("encode")
    }

    /// A Share Control PDU of `pdu_type` with `len` bytes after its header.
    fn share_control(pdu_type: u16, len: usize) -> Vec<u8> {
        let total = u16::try_from(6 + len).expect("short");
        let mut v = total.to_le_bytes().to_vec();
        v.extend((0x0010 | pdu_type).to_le_bytes());
        v.extend(1002u16.to_le_bytes());
        v.extend(std::iter::repeat_n(0x5a, len));
        v
    }

    fn fast_path(len: usize) -> Vec<u8> {
        // Fast-path output header, two-byte length.
        let total = u16::try_from(len + 3).expect("short") | 0x8000;
        let mut v = vec![0x00];
        v.extend(total.to_be_bytes());
        v.extend(std::iter::repeat_n(0x11, len));
        v
    }

    /// Feeds `stream` in pieces of `step` bytes; what went on, or the refusal.
    fn run(stream: &[u8], step: usize) -> Result<Vec<u8>, Refusal> {
        let mut g = TargetGuard::default();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            match g.feed(piece)? {
                Forward::All => out.extend_from_slice(piece),
                Forward::Part(b) => out.extend(b),
            }
        }
        Ok(out)
    }

    #[test]
    fn ordinary_traffic_goes_through_unchanged_however_it_is_cut() {
        let mut stream = connect_response(1003);
        stream.extend(indication(1003, share_control(0x1, 300))); // Demand Active
        stream.extend(fast_path(5000));
        stream.extend(indication(1004, vec![0x1a, 0x00, 0x1a, 0x00, 0, 0, 0, 0])); // a channel's bytes
        stream.extend(indication(1003, share_control(0x7, 40))); // Data PDU
        stream.extend(fast_path(2));
        for step in [1, 2, 3, 7, 19, 64, 1500, stream.len()] {
            assert_eq!(run(&stream, step).as_deref(), Ok(&stream[..]), "cut every {step} bytes");
        }
        // Whole PDUs in one chunk go on without a copy.
        let mut g = TargetGuard::default();
        let cr = connect_response(1003);
        assert_eq!(g.feed(&cr[..5]), Ok(Forward::Part(Vec::new())), "the Connect Response is held until whole");
        assert_eq!(g.channel_ids(), None);
        assert_eq!(g.feed(&cr[5..]), Ok(Forward::Part(cr.clone())));
        assert_eq!(g.channel_ids(), Some(&[1004u16, 1005][..]));
        let mut g = TargetGuard::default();
        assert_eq!(g.feed(&connect_response(1003)), Ok(Forward::All));
        assert_eq!(g.feed(&fast_path(100)), Ok(Forward::All));
    }

    #[test]
    fn a_server_redirection_pdu_ends_the_session_before_any_of_it_goes_on() {
        let mut stream = connect_response(1003);
        stream.extend(fast_path(100));
        let before = stream.len();
        stream.extend(indication(1003, share_control(0xa, 200)));
        for step in [1, 5, 13, stream.len()] {
            let mut g = TargetGuard::default();
            let mut out = Vec::new();
            let mut refused = None;
            for piece in stream.chunks(step) {
                match g.feed(piece) {
                    Ok(Forward::All) => out.extend_from_slice(piece),
                    Ok(Forward::Part(b)) => out.extend(b),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            assert_eq!(refused, Some(Refusal::Redirection), "cut every {step} bytes");
            assert!(out.len() <= before, "{} bytes of the redirection went on (cut every {step})", out.len() - before);
        }
        // The same PDU type on another channel is that channel's business.
        let mut other = connect_response(1003);
        other.extend(indication(1004, share_control(0xa, 20)));
        assert!(run(&other, 3).is_ok());
    }

    #[test]
    fn a_target_that_does_not_start_with_a_connect_response_or_sends_garbage_is_refused() {
        assert_eq!(run(&fast_path(10), 4), Err(Refusal::NoConnectResponse));
        let mut stream = connect_response(1003);
        stream.extend([0xff; 16]);
        assert_eq!(run(&stream, 8), Err(Refusal::Garbled));
    }
}
