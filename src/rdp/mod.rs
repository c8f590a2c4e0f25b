//! The RDP front end: stock RDP clients (mstsc, xfreerdp) connect as `USER@TARGET` with the
//! grant's one-time credential over NLA; the gateway logs in to the target with the vaulted
//! account, relays the session and records what the target sends. It translates RDP into
//! core calls (auth, access, targets, sessions, recording, audit) and holds no policy itself.
//!
//! | module | job |
//! |---|---|
//! | `server` | the listener, the per-connection flow, the session watcher |
//! | `nego` | X.224 negotiation (NLA required) |
//! | `tls` | TLS towards vendors (gateway identity) and targets (pinned thumbprint) |
//! | `credssp` | CredSSP server (grant credential) and client (vaulted account) |
//! | `target` | the target leg, and `--fetch-cert` |
//! | `relay` | the Connect Initial rewrite and the bounded byte relay |
//! | `input` | what of the vendor's stream is recorded (input; Client Info settings) |
//! | `recording` | the recording header (what a decoder needs) |

pub mod credssp;
pub mod guard;
pub mod input;
pub mod nego;
pub mod recording;
pub mod relay;
pub mod server;
pub mod target;
pub mod tls;

use ironrdp_async::FramedWrite;
use ironrdp_tokio::TokioFramed;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::AuthError;

/// Why an RDP connection ended before or outside the relay.
#[derive(Debug, thiserror::Error)]
pub enum RdpError {
    /// The client broke the protocol or went away.
    #[error("RDP protocol: {0}")]
    Protocol(String),
    /// Authentication refused (already audited and counted by the core).
    #[error("{0}")]
    Denied(AuthError),
    /// Authenticated, but no session may run (audited by the caller).
    #[error("session refused: {0}")]
    Refused(String),
    /// The target leg failed.
    #[error("target: {0}")]
    Target(String),
    /// The target's certificate is not the pinned one.
    #[error("the target's identity could not be verified")]
    TargetIdentity {
        /// Thumbprint it presented.
        presented: String,
    },
    /// The gateway itself failed (store, recording).
    #[error("{0}")]
    Internal(String),
}

/// Writes all of `bytes` to a framed stream.
pub(crate) async fn framed_write<S>(framed: &mut TokioFramed<S>, bytes: &[u8]) -> Result<(), RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    framed.write_all(bytes).await.map_err(|e| RdpError::Protocol(format!("write: {e}")))
}
