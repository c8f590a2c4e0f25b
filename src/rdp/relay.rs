//! The relay after both handshakes: the vendor's MCS Connect Initial is rewritten (the target's
//! selected protocol; no GFX pipeline, which the recorder cannot decode), then bytes flow both
//! ways through fixed buffers. A side is read only after the previous chunk was written to the
//! other, so a slow side back-pressures the other through TCP; what the target sends is handed
//! to the recorder (bounded queue) before it is written to the vendor. Kill, revoke and expiry
//! (the `stop` watch) and a recording failure end it.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use ironrdp_pdu::gcc::{ClientEarlyCapabilityFlags, ConferenceCreateRequest};
use ironrdp_pdu::mcs::ConnectInitial;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::x224::{X224Data, X224};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::RdpError;
use crate::recording::frames::{FrameRecorder, SERVER_TO_CLIENT};
use crate::sessions::EndReason;

/// Bytes read from one side before they are written to the other.
pub const CHUNK: usize = 64 * 1024;

/// What the recording header needs from the vendor's Connect Initial.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSettings {
    /// Desktop width.
    pub width: u16,
    /// Desktop height.
    pub height: u16,
    /// Keyboard layout (for reading scancodes later).
    pub keyboard_layout: u32,
}

/// Rewrites the X.224 frame holding the vendor's MCS Connect Initial: `serverSelectedProtocol`
/// becomes what the target selected, and the GFX pipeline flag is cleared.
pub fn rewrite_connect_initial(
    frame: &[u8],
    selected: SecurityProtocol,
) -> Result<(Vec<u8>, ClientSettings), RdpError> {
    let bad = |e: &dyn std::fmt::Display| RdpError::Protocol(format!("MCS Connect Initial: {e}"));
    let outer = ironrdp_core::decode::<X224<X224Data<'_>>>(frame).map_err(|e| bad(&e))?.0;
    let mut ci = ironrdp_core::decode::<ConnectInitial>(outer.data.as_ref()).map_err(|e| bad(&e))?;
    let mut blocks = ci.conference_create_request.into_gcc_blocks();
    blocks.core.optional_data.server_selected_protocol = Some(selected);
    if let Some(flags) = blocks.core.optional_data.early_capability_flags.as_mut() {
        flags.remove(ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL);
    }
    let settings = ClientSettings {
        width: blocks.core.desktop_width,
        height: blocks.core.desktop_height,
        keyboard_layout: blocks.core.keyboard_layout,
    };
    ci.conference_create_request = ConferenceCreateRequest::new(blocks).map_err(|e| bad(&e))?;
    let inner = ironrdp_core::encode_vec(&ci).map_err(|e| bad(&e))?;
    let out = ironrdp_core::encode_vec(&X224(X224Data { data: Cow::Owned(inner) })).map_err(|e| bad(&e))?;
    Ok((out, settings))
}

/// Byte counts and why the relay ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Vendor → target.
    pub up: u64,
    /// Target → vendor.
    pub down: u64,
    /// Why.
    pub reason: EndReason,
}

/// Relays until either side closes, `stop` says so, or the recording fails. `vendor_leftover`
/// and `target_leftover` are bytes already read past the handshakes.
#[allow(clippy::too_many_arguments)]
pub async fn run<V, T>(
    vendor: V,
    vendor_leftover: BytesMut,
    target: T,
    target_leftover: BytesMut,
    recorder: &FrameRecorder,
    mut stop: watch::Receiver<Option<EndReason>>,
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
    let upward = async {
        if !vendor_leftover.is_empty() {
            tw.write_all(&vendor_leftover).await?;
            up += vendor_leftover.len() as u64;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = vr.read(&mut buf).await?;
            if n == 0 {
                let _ = tw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            tw.write_all(&buf[..n]).await?;
            up += n as u64;
        }
    };
    let downward = async {
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
            recorder.record(SERVER_TO_CLIENT, chunk.clone()).await.map_err(std::io::Error::other)?;
            vw.write_all(&chunk).await?;
            down += chunk.len() as u64;
        }
    };
    let reason = tokio::select! {
        r = async { tokio::try_join!(upward, downward) } => match r {
            Ok(_) => EndReason::Closed,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => EndReason::Closed,
            Err(e) => {
                tracing::info!(error = %e, "RDP relay ended");
                EndReason::Closed
            }
        },
        r = stop.wait_for(Option::is_some) => r.ok().and_then(|v| *v).unwrap_or(EndReason::Killed),
        _ = failed.wait_for(Option::is_some) => EndReason::Error,
    };
    Outcome { up, down, reason }
}
