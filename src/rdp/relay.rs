//! The relay after both handshakes: the vendor's MCS Connect Initial is rewritten (the target's
//! selected protocol; no GFX pipeline, which the recorder cannot decode), then bytes flow both
//! ways through fixed buffers. A side is read only after the previous chunk was written to the
//! other, so a slow side back-pressures the other through TCP; what the target sends is handed
//! to the recorder (bounded queue) before it is written to the vendor. Kill, revoke and expiry
//! (the `stop` watch) and a recording failure end it.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use ironrdp_pdu::gcc::{ChannelName, ClientEarlyCapabilityFlags, ConferenceCreateRequest};
use ironrdp_pdu::mcs::ConnectInitial;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::x224::{X224Data, X224};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::guard::{Forward, Refusal, TargetGuard};
use super::input::{
    recorded_channel_ids, rewrite_client_info, AutoLogon, Classified, ClientTap, CLIENT_CHANNEL, CLIENT_INFO,
    CLIENT_INPUT, MAX_HOLD,
};
use super::RdpError;
use crate::policy::Channels;
use crate::recording::frames::{FrameRecorder, SERVER_TO_CLIENT};
use crate::sessions::EndReason;

/// Bytes read from one side before they are written to the other.
pub const CHUNK: usize = 64 * 1024;

/// What the recording header needs from the vendor's Connect Initial.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Desktop width.
    pub width: u16,
    /// Desktop height.
    pub height: u16,
    /// Keyboard layout (for reading scancodes later).
    pub keyboard_layout: u32,
    /// Static virtual channels as the target was asked for them, in the order it numbers them
    /// (refused ones under their placeholder name).
    pub channels: Vec<String>,
    /// Static virtual channels the policy refused.
    pub refused: Vec<String>,
}

/// Whether the policy's channel rules let a static virtual channel through: clipboard
/// (`cliprdr`) and device redirection (`rdpdr`: drives, printers, ports, smart cards) only when
/// allowed; the others (sound, dynamic channels, remote apps) always.
pub fn channel_allowed(name: &str, rules: &Channels) -> bool {
    match name.to_ascii_lowercase().as_str() {
        "cliprdr" => rules.rdp_clipboard,
        "rdpdr" => rules.rdp_drive,
        _ => true,
    }
}

/// Rewrites the X.224 frame holding the vendor's MCS Connect Initial: `serverSelectedProtocol`
/// becomes what the target selected, the GFX pipeline flag is cleared, and the static channels
/// the policy does not allow are renamed so that the target never opens them.
pub fn rewrite_connect_initial(
    frame: &[u8],
    selected: SecurityProtocol,
    rules: &Channels,
) -> Result<(Vec<u8>, ClientSettings), RdpError> {
    let bad = |e: &dyn std::fmt::Display| RdpError::Protocol(format!("MCS Connect Initial: {e}"));
    let outer = ironrdp_core::decode::<X224<X224Data<'_>>>(frame).map_err(|e| bad(&e))?.0;
    let mut ci = ironrdp_core::decode::<ConnectInitial>(outer.data.as_ref()).map_err(|e| bad(&e))?;
    let mut blocks = ci.conference_create_request.into_gcc_blocks();
    blocks.core.optional_data.server_selected_protocol = Some(selected);
    if let Some(flags) = blocks.core.optional_data.early_capability_flags.as_mut() {
        flags.remove(ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL);
    }
    // A refused channel keeps its place under a name no target serves (`_pstkN`): the client
    // gets as many channel ids as it asked for (xfreerdp drops the connection otherwise), and
    // the target never opens clipboard or device redirection on it. Both protocols are started
    // by the server (Monitor Ready, Server Announce), so the client's side stays idle.
    let mut channels = Vec::new();
    let mut refused = Vec::new();
    if let Some(net) = blocks.network.as_mut() {
        for (i, c) in net.channels.iter_mut().enumerate() {
            let name = c.name.as_str().unwrap_or("?").to_string();
            if channel_allowed(&name, rules) {
                channels.push(name);
            } else {
                let placeholder = format!("_pstk{}", i % 10);
                c.name = ChannelName::from_utf8(&placeholder).ok_or_else(|| bad(&"channel name"))?;
                channels.push(placeholder);
                refused.push(name);
            }
        }
    }
    let settings = ClientSettings {
        width: blocks.core.desktop_width,
        height: blocks.core.desktop_height,
        keyboard_layout: blocks.core.keyboard_layout,
        channels,
        refused,
    };
    ci.conference_create_request = ConferenceCreateRequest::new(blocks).map_err(|e| bad(&e))?;
    let inner = ironrdp_core::encode_vec(&ci).map_err(|e| bad(&e))?;
    let out = ironrdp_core::encode_vec(&X224(X224Data { data: Cow::Owned(inner) })).map_err(|e| bad(&e))?;
    Ok((out, settings))
}

/// Records what the key log and the decoder need from bytes the vendor sent (after they were
/// forwarded: input is recorded as the target received it).
async fn record_client(recorder: &FrameRecorder, tap: &mut ClientTap, bytes: &[u8]) -> std::io::Result<()> {
    let was_broken = tap.broken;
    for c in tap.feed(bytes) {
        let (kind, data) = match c {
            Classified::Input(b) => (CLIENT_INPUT, Bytes::from(b)),
            Classified::Info(note) => (CLIENT_INFO, Bytes::from(note.into_bytes())),
            Classified::Channel(b) => (CLIENT_CHANNEL, Bytes::from(b)),
            Classified::Other => continue,
        };
        recorder.record(kind, data).await.map_err(std::io::Error::other)?;
    }
    if tap.broken && !was_broken && !tap.recorded.is_empty() {
        // Clipboard or drive redirection is allowed and recorded: a stream the recording can no
        // longer follow ends the session (fail closed) rather than carrying unrecorded copies.
        tracing::warn!("the vendor's RDP stream could not be split into PDUs while clipboard/drive channels are recorded: session ended");
        let note = serde_json::json!({ "error": "the client stream could not be split into PDUs; session ended (recorded channels)" });
        recorder
            .record(CLIENT_INFO, Bytes::from(note.to_string().into_bytes()))
            .await
            .map_err(std::io::Error::other)?;
        return Err(std::io::Error::other("the vendor's stream cannot be recorded"));
    }
    if tap.broken && !was_broken {
        tracing::warn!("the vendor's RDP stream could not be split into PDUs: its input is not recorded from here on");
        let note = serde_json::json!({ "error": "the client stream could not be split into PDUs; input not recorded from here" });
        recorder
            .record(CLIENT_INFO, Bytes::from(note.to_string().into_bytes()))
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Byte counts and why the relay ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Vendor → target.
    pub up: u64,
    /// Target → vendor.
    pub down: u64,
    /// Why.
    pub reason: EndReason,
    /// What the target guard stopped, when it ended the session.
    pub refused: Option<Refusal>,
}

/// Relays until either side closes, `stop` says so, or the recording fails. `vendor_leftover`
/// and `target_leftover` are bytes already read past the handshakes; `channels` are the static
/// channels as the target was asked for them (allowed `cliprdr`/`rdpdr` among them are recorded
/// in both directions).
#[allow(clippy::too_many_arguments)]
pub async fn run<V, T>(
    vendor: V,
    vendor_leftover: BytesMut,
    target: T,
    target_leftover: BytesMut,
    recorder: &FrameRecorder,
    mut stop: watch::Receiver<Option<EndReason>>,
    autologon: Option<AutoLogon>,
    channels: Vec<String>,
) -> Outcome
where
    V: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut vr, mut vw) = tokio::io::split(vendor);
    let (mut tr, mut tw) = tokio::io::split(target);
    let mut failed = recorder.failure_watch();
    let mut up = 0u64;
    let mut down = 0u64;
    // The recorded channels' ids, set by the downward path from the target's Connect
    // Response before it reaches the vendor (so before the vendor can use them).
    let recorded_ids: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    let tapping = channels.iter().any(|n| super::input::RECORDED_CHANNELS.iter().any(|r| n.eq_ignore_ascii_case(r)));
    let upward = async {
        let mut tap = ClientTap::default();
        let mut ids_set = false;
        // Auto-logon: the vendor's stream is held back PDU by PDU until its Client Info PDU,
        // which goes on with the vaulted account instead of the vendor's credentials.
        let mut logon = autologon;
        let mut hold: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut first = Some(vendor_leftover);
        loop {
            match first.take() {
                Some(l) if l.is_empty() => continue,
                Some(l) => hold.extend_from_slice(&l),
                None => {
                    let n = vr.read(&mut buf).await?;
                    if n == 0 {
                        let _ = tw.shutdown().await;
                        return Ok::<_, std::io::Error>(());
                    }
                    hold.extend_from_slice(&buf[..n]);
                }
            }
            let out: Vec<u8> = match logon.as_ref() {
                None => std::mem::take(&mut hold),
                Some(l) => {
                    let (ready, done) = rewrite_client_info(&mut hold, l).map_err(std::io::Error::other)?;
                    if done {
                        logon = None;
                    } else if hold.len() > MAX_HOLD {
                        return Err(std::io::Error::other("no Client Info PDU from the vendor"));
                    }
                    ready
                }
            };
            if out.is_empty() {
                continue;
            }
            tw.write_all(&out).await?;
            up += out.len() as u64;
            if !ids_set {
                if let Some(ids) = recorded_ids.get() {
                    tap.recorded = ids.clone();
                    ids_set = true;
                }
            }
            record_client(recorder, &mut tap, &out).await?;
        }
    };
    let refused: std::sync::OnceLock<Refusal> = std::sync::OnceLock::new();
    let downward = async {
        let mut guard = TargetGuard::default();
        let mut ids_known = !tapping;
        let mut pending = target_leftover;
        loop {
            if pending.is_empty() {
                pending.reserve(CHUNK);
                let n = tr.read_buf(&mut pending).await?;
                if n == 0 {
                    let _ = vw.shutdown().await;
                    return Ok::<_, std::io::Error>(());
                }
            }
            let chunk: Bytes = pending.split().freeze();
            // Everything the target sent is recorded, what the guard stops included (evidence).
            recorder.record(SERVER_TO_CLIENT, chunk.clone()).await.map_err(std::io::Error::other)?;
            let forward = match guard.feed(&chunk) {
                Ok(f) => f,
                Err(refusal) => {
                    let _ = refused.set(refusal);
                    return Err(std::io::Error::other("stopped by the target guard"));
                }
            };
            // The recorded channels' ids, from the Connect Response the guard has read, are
            // known before that PDU reaches the vendor (so before the vendor can use them).
            if !ids_known {
                if let Some(all) = guard.channel_ids() {
                    let _ = recorded_ids.set(recorded_channel_ids(all, &channels));
                    ids_known = true;
                }
            }
            match forward {
                Forward::All => vw.write_all(&chunk).await?,
                Forward::Part(b) => vw.write_all(&b).await?,
            }
            down += chunk.len() as u64;
        }
    };
    let reason = tokio::select! {
        r = async { tokio::try_join!(upward, downward) } => match r {
            Ok(_) => EndReason::Closed,
            Err(_) if refused.get().is_some() => EndReason::Error,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => EndReason::Closed,
            Err(e) => {
                tracing::info!(error = %e, "RDP relay ended");
                EndReason::Closed
            }
        },
        r = stop.wait_for(Option::is_some) => r.ok().and_then(|v| *v).unwrap_or(EndReason::Killed),
        _ = failed.wait_for(Option::is_some) => EndReason::Error,
    };
    Outcome { up, down, reason, refused: refused.into_inner() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_pdu::gcc::{
        ChannelDef, ChannelOptions, ClientCoreData, ClientCoreOptionalData, ClientGccBlocks, ClientNetworkData,
        ClientSecurityData, ColorDepth, ConnectionType, EncryptionMethod, HighColorDepth, KeyboardType, RdpVersion,
        SecureAccessSequence, SupportedColorDepths,
    };

    /// A vendor's Connect Initial (in its X.224 frame) asking for `flags` and `channels`, as
    /// negotiated with the gateway (TLS+CredSSP).
    fn connect_initial(flags: ClientEarlyCapabilityFlags, channels: &[&str]) -> Vec<u8> {
        let core = ClientCoreData {
            version: RdpVersion::V5_PLUS,
            desktop_width: 1280,
            desktop_height: 800,
            color_depth: ColorDepth::Bpp8,
            sec_access_sequence: SecureAccessSequence::Del,
            keyboard_layout: 0x407,
            client_build: 2600,
            client_name: "vendor-pc".into(),
            keyboard_type: KeyboardType::IBM_ENHANCED,
            keyboard_subtype: 0,
            keyboard_functional_keys_count: 12,
            ime_file_name: String::new(),
            optional_data: ClientCoreOptionalData {
                post_beta2_color_depth: Some(ColorDepth::Bpp8),
                client_product_id: Some(1),
                serial_number: Some(0),
                high_color_depth: Some(HighColorDepth::Bpp8),
                supported_color_depths: Some(SupportedColorDepths::BPP24 | SupportedColorDepths::BPP32),
                early_capability_flags: Some(flags),
                dig_product_id: Some(String::new()),
                connection_type: Some(ConnectionType::Lan),
                server_selected_protocol: Some(SecurityProtocol::HYBRID),
                ..ClientCoreOptionalData::default()
            },
        };
        let network = ClientNetworkData {
            channels: channels
                .iter()
                .map(|n| ChannelDef {
                    name: ChannelName::from_utf8(n).expect("name"),
                    options: ChannelOptions::INITIALIZED,
                })
                .collect(),
        };
        let blocks = ClientGccBlocks {
            core,
            security: ClientSecurityData { encryption_methods: EncryptionMethod::empty(), ext_encryption_methods: 0 },
            network: Some(network),
            cluster: None,
            monitor: None,
            message_channel: None,
            multi_transport_channel: None,
            monitor_extended: None,
        };
        let ci = ConnectInitial::with_gcc_blocks(blocks).expect("connect initial");
        let inner = ironrdp_core::encode_vec(&ci).expect("encode");
        ironrdp_core::encode_vec(&X224(X224Data { data: Cow::Owned(inner) })).expect("frame")
    }

    fn decoded(frame: &[u8]) -> ClientGccBlocks {
        let outer = ironrdp_core::decode::<X224<X224Data<'_>>>(frame).expect("frame").0;
        ironrdp_core::decode::<ConnectInitial>(outer.data.as_ref())
            .expect("ci")
            .conference_create_request
            .into_gcc_blocks()
    }

    fn channel_names(blocks: &ClientGccBlocks) -> Vec<String> {
        let channels = blocks.network.as_ref().map(|n| n.channels.as_slice()).unwrap_or_default();
        channels.iter().map(|c| c.name.as_str().unwrap_or("?").to_string()).collect()
    }

    /// The target is never asked for the graphics pipeline (its stream would not be
    /// decodable at replay), is told the protocol it selected itself, and never sees the name
    /// of a channel the policy refuses; the other channels and settings pass unchanged.
    #[test]
    fn the_target_gets_no_gfx_its_own_protocol_and_no_refused_channel() {
        let asked = ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL
            | ClientEarlyCapabilityFlags::SUPPORT_ERR_INFO_PDU
            | ClientEarlyCapabilityFlags::VALID_CONNECTION_TYPE;
        let frame = connect_initial(asked, &["rdpsnd", "cliprdr", "rdpdr", "drdynvc"]);
        assert!(decoded(&frame).core.optional_data.early_capability_flags.is_some_and(|f| f.contains(asked)));

        let (out, settings) =
            rewrite_connect_initial(&frame, SecurityProtocol::SSL, &Channels::default()).expect("rewrite");
        let blocks = decoded(&out);
        let flags = blocks.core.optional_data.early_capability_flags.expect("flags");
        assert!(!flags.contains(ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL), "GFX still asked for");
        assert!(flags.contains(
            ClientEarlyCapabilityFlags::SUPPORT_ERR_INFO_PDU | ClientEarlyCapabilityFlags::VALID_CONNECTION_TYPE
        ));
        assert_eq!(blocks.core.optional_data.server_selected_protocol, Some(SecurityProtocol::SSL));
        let names = channel_names(&blocks);
        assert_eq!(
            names,
            ["rdpsnd", "_pstk1", "_pstk2", "drdynvc"],
            "refused channels keep their place, not their name"
        );
        assert_eq!(settings.refused, ["cliprdr", "rdpdr"]);
        assert_eq!((settings.width, settings.height, settings.keyboard_layout), (1280, 800, 0x407));

        let open = Channels { rdp_clipboard: true, ..Channels::default() };
        let (out, settings) = rewrite_connect_initial(&frame, SecurityProtocol::HYBRID, &open).expect("rewrite");
        let names = channel_names(&decoded(&out));
        assert_eq!(names, ["rdpsnd", "cliprdr", "_pstk2", "drdynvc"]);
        assert_eq!(settings.refused, ["rdpdr"]);
        // Bytes that are not a Connect Initial are a protocol error, not a panic.
        assert!(rewrite_connect_initial(&frame[..frame.len() / 2], SecurityProtocol::SSL, &open).is_err());
    }
}
