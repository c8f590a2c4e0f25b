//! X.224 connection negotiation: NLA (HYBRID / HYBRID_EX) is required from vendors; anything
//! else is answered with the RDP negotiation failure `HYBRID_REQUIRED_BY_SERVER`.

use ironrdp_pdu::nego::{
    ConnectionConfirm, ConnectionRequest, FailureCode, RequestFlags, ResponseFlags, SecurityProtocol,
};
use ironrdp_pdu::x224::X224;
use ironrdp_tokio::TokioFramed;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{framed_write, RdpError};

/// Reads the vendor's X.224 Connection Request.
pub async fn read_request<S>(framed: &mut TokioFramed<S>) -> Result<ConnectionRequest, RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let (_, frame) = framed.read_pdu().await.map_err(|e| RdpError::Protocol(format!("X.224: {e}")))?;
    let X224(req) = ironrdp_core::decode::<X224<ConnectionRequest>>(&frame)
        .map_err(|e| RdpError::Protocol(format!("X.224 Connection Request: {e}")))?;
    Ok(req)
}

/// The protocol the gateway selects for a vendor's request: HYBRID_EX when offered, else
/// HYBRID; `None` when the client offers no NLA.
pub fn vendor_choice(req: &ConnectionRequest) -> Option<SecurityProtocol> {
    if req.protocol.contains(SecurityProtocol::HYBRID_EX) {
        Some(SecurityProtocol::HYBRID_EX)
    } else if req.protocol.contains(SecurityProtocol::HYBRID) {
        Some(SecurityProtocol::HYBRID)
    } else {
        None
    }
}

/// The Connection Confirm selecting `protocol`. GFX is not offered (the recorder cannot decode
/// it), restricted admin and redirected authentication neither.
pub fn confirm(protocol: SecurityProtocol) -> Result<Vec<u8>, RdpError> {
    let pdu = X224(ConnectionConfirm::Response { flags: ResponseFlags::EXTENDED_CLIENT_DATA_SUPPORTED, protocol });
    ironrdp_core::encode_vec(&pdu).map_err(|e| RdpError::Protocol(format!("encode Connection Confirm: {e}")))
}

/// The negotiation failure telling a client that NLA is required.
pub fn hybrid_required() -> Result<Vec<u8>, RdpError> {
    let pdu = X224(ConnectionConfirm::Failure { code: FailureCode::HYBRID_REQUIRED_BY_SERVER });
    ironrdp_core::encode_vec(&pdu).map_err(|e| RdpError::Protocol(format!("encode negotiation failure: {e}")))
}

/// Sends the gateway's own Connection Request to a target (the vendor's requested protocols,
/// none of its cookies or flags) and returns the protocol the target selected.
pub async fn request_target<S>(
    framed: &mut TokioFramed<S>,
    protocols: SecurityProtocol,
) -> Result<SecurityProtocol, RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let req = ConnectionRequest {
        nego_data: None,
        flags: RequestFlags::empty(),
        protocol: protocols,
        correlation_info: None,
    };
    let bytes = ironrdp_core::encode_vec(&X224(req))
        .map_err(|e| RdpError::Protocol(format!("encode Connection Request: {e}")))?;
    framed_write(framed, &bytes).await?;
    let (_, frame) = framed.read_pdu().await.map_err(|e| RdpError::Target(format!("X.224: {e}")))?;
    let X224(confirm) = ironrdp_core::decode::<X224<ConnectionConfirm>>(&frame)
        .map_err(|e| RdpError::Target(format!("X.224 Connection Confirm: {e}")))?;
    match confirm {
        ConnectionConfirm::Response { protocol, .. } => Ok(protocol),
        ConnectionConfirm::Failure { code } => {
            Err(RdpError::Target(format!("the target refused the negotiation ({code:?})")))
        }
    }
}
