//! The target leg: TCP, X.224 (the target must select NLA), TLS checked against the pinned
//! thumbprint, CredSSP with the vaulted account. Also `target add --fetch-cert`.

use std::time::Duration;

use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_tokio::TokioFramed;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::{self, ClientTlsError, PinnedCert};
use super::{credssp, nego, RdpError};
use crate::app::App;
use crate::secret::Secret;
use crate::targets::Target;

/// A target logged in to, ready for the MCS phase.
pub struct TargetLeg {
    /// The TLS stream (with any bytes read past CredSSP).
    pub framed: TokioFramed<TlsStream<TcpStream>>,
    /// The protocol the target selected.
    pub selected: SecurityProtocol,
}

impl std::fmt::Debug for TargetLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetLeg").field("selected", &self.selected).finish_non_exhaustive()
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, RdpError> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(RdpError::Target(format!("cannot connect to {host}:{port}: {e}"))),
        Err(_) => Err(RdpError::Target(format!("cannot connect to {host}:{port}: timed out"))),
    }
}

/// Connects to `target` and logs in with `credential`: NLA, or TLS only for a target without
/// NLA (its auto-logon happens later, in the relayed Client Info PDU).
pub async fn connect(app: &App, target: &Target, credential: &Secret) -> Result<TargetLeg, RdpError> {
    let limit = Duration::from_secs(app.config.upstream.handshake_timeout_secs.max(1));
    let fut = async {
        let stream =
            tcp(&target.host, target.port, Duration::from_secs(app.config.upstream.connect_timeout_secs)).await?;
        let mut framed = TokioFramed::new(stream);
        // A target without NLA is offered TLS only (never Standard RDP Security): the vaulted
        // account goes in the Client Info PDU, inside TLS checked against the pin.
        // An NLA target is offered both NLA variants whatever the vendor chose: the gateway
        // finishes either on this leg, and a vendor's HYBRID_EX-only offer (early user
        // authorization) must not shut out a target that speaks plain HYBRID.
        let offer =
            if target.rdp_nla { SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX } else { SecurityProtocol::SSL };
        let selected = nego::request_target(&mut framed, offer).await?;
        if !target.rdp_nla {
            if selected != SecurityProtocol::SSL {
                return Err(RdpError::Target(format!("the target did not select TLS (selected {selected:?})")));
            }
        } else if !selected.intersects(SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX) {
            return Err(RdpError::Target(format!("the target did not select NLA (selected {selected:?})")));
        }
        let stream = framed.into_inner_no_leftover();
        let verifier = PinnedCert::new(target.cert_sha256.clone());
        let tls = match tls::connect(stream, &target.host, verifier).await {
            Ok(s) => s,
            Err(ClientTlsError::Mismatch { presented }) => return Err(RdpError::TargetIdentity { presented }),
            Err(e) => return Err(RdpError::Target(e.to_string())),
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| RdpError::Target("the target presented no certificate".into()))?;
        let public_key = tls::public_key(cert.as_ref()).map_err(|e| RdpError::Target(e.to_string()))?;
        let mut framed = TokioFramed::new(tls);
        if target.rdp_nla {
            credssp::login_target(&mut framed, &target.login, credential, selected, &target.host, public_key).await?;
        }
        Ok(TargetLeg { framed, selected })
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(RdpError::Target("the target did not finish the handshake in time".into())),
    }
}

/// What `--fetch-cert` learned.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// SHA-256 thumbprint of its certificate (`AB:CD:…`).
    pub thumbprint: String,
    /// The protocol it selected when offered TLS, NLA and NLA with early authorization.
    pub selected: SecurityProtocol,
}

/// Connects to an RDP server, negotiates TLS and returns its certificate's thumbprint (no login).
pub async fn fetch_cert(host: &str, port: u16, timeout: Duration) -> anyhow::Result<Fetched> {
    let fut = async {
        let stream = tcp(host, port, timeout).await?;
        let mut framed = TokioFramed::new(stream);
        let offer = SecurityProtocol::SSL | SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX;
        let selected = nego::request_target(&mut framed, offer).await?;
        if selected.is_standard_rdp_security() {
            return Err(RdpError::Target(
                "the server offers only Standard RDP Security (no TLS); it cannot be pinned".into(),
            ));
        }
        let verifier = PinnedCert::new(None);
        tls::connect(framed.into_inner_no_leftover(), host, verifier.clone())
            .await
            .map_err(|e| RdpError::Target(e.to_string()))?;
        let (thumbprint, _) =
            verifier.presented().ok_or_else(|| RdpError::Target("no certificate presented".into()))?;
        Ok::<_, RdpError>(Fetched { thumbprint, selected })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| anyhow::anyhow!("{e}")),
        Err(_) => anyhow::bail!("{host}:{port} did not answer the RDP handshake in time"),
    }
}
