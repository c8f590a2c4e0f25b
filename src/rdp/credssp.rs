//! CredSSP on both legs. Towards the vendor the gateway is the CredSSP/NTLM server and checks
//! the response against the live grant credentials of `USER@TARGET` (looked up through the
//! core's `auth::grant_candidates`, outcome reported to `auth::challenge_login_result`, so
//! lockout and audit are the SSH ones). Towards the target it is the client with the vaulted
//! account.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ironrdp_connector::credssp::CredsspSequence;
use ironrdp_connector::{Credentials, ServerName};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::PduHint;
use ironrdp_tokio::TokioFramed;
use sspi::credssp::{
    CredSspServer, CredentialsProxy, EarlyUserAuthResult, NStatusCode, ServerMode, ServerState, TsRequest,
};
use sspi::generator::GeneratorState;
use sspi::{AuthIdentity, Username};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{framed_write, RdpError};
use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::secret::Secret;

/// The method name logins over RDP are audited with.
pub const METHOD: &str = "rdp-nla";

#[derive(Clone, Copy, Debug)]
struct TsRequestHint;

impl PduHint for TsRequestHint {
    fn find_size(&self, bytes: &[u8]) -> ironrdp_core::DecodeResult<Option<(bool, usize)>> {
        match TsRequest::read_length(bytes) {
            Ok(length) if length > 64 * 1024 => {
                Err(ironrdp_core::other_err!("TsRequest", "CredSSP message larger than 64 KiB"))
            }
            Ok(length) => Ok(Some((true, length))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(ironrdp_core::other_err!("TsRequest", source: e)),
        }
    }
}

/// Splits the NTLM user name into (user, target): `alice@hmi-line3` (xfreerdp `/u:`), or
/// `hmi-line3\alice` (a client that sends the target as the domain).
pub fn split_name(username: &Username) -> Option<(String, String)> {
    let inner = username.inner();
    let (user, target) = match inner.split_once('\\') {
        Some((domain, account)) => match account.rsplit_once('@') {
            Some((u, t)) => (u, t),
            None => (account, domain),
        },
        None => inner.rsplit_once('@')?,
    };
    (!user.is_empty() && !target.is_empty()).then(|| (user.to_string(), target.to_string()))
}

/// What the credentials proxy saw while sspi ran.
#[derive(Debug, Default)]
struct Seen {
    name: Option<(String, String)>,
    principal: Option<Principal>,
    candidates: usize,
    error: Option<AuthError>,
}

/// sspi asks this for the credentials to check the NTLM response with. sspi's trait is
/// synchronous; the store lookup runs on this worker thread with `block_in_place`.
struct GrantProxy {
    app: App,
    source: IpAddr,
    handle: tokio::runtime::Handle,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for GrantProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantProxy").field("source", &self.source).finish_non_exhaustive()
    }
}

impl CredentialsProxy for GrantProxy {
    type AuthenticationData = AuthIdentity;

    fn auth_data_by_user(&mut self, username: &Username) -> std::io::Result<AuthIdentity> {
        self.auth_data_candidates_by_user(username)?
            .into_iter()
            .next()
            .ok_or_else(|| std::io::Error::other("no credential"))
    }

    fn auth_data_candidates_by_user(&mut self, username: &Username) -> std::io::Result<Vec<AuthIdentity>> {
        let Some((user, target)) = split_name(username) else {
            return Err(std::io::Error::other("the user name is not USER@TARGET"));
        };
        let (app, handle, source) = (self.app.clone(), self.handle.clone(), self.source);
        let (u, t) = (user.clone(), target.clone());
        let found = tokio::task::block_in_place(move || handle.block_on(auth::grant_candidates(&app, &u, &t, source)));
        let mut seen = self.seen.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        seen.name = Some((user, target));
        let c = match found {
            Ok(c) => c,
            Err(e) => {
                seen.error = Some(e);
                return Err(std::io::Error::other("login refused"));
            }
        };
        seen.principal = c.principal.clone();
        seen.candidates = c.credentials.len();
        if c.principal.is_none() || c.credentials.is_empty() {
            return Err(std::io::Error::other("no credential"));
        }
        Ok(c.credentials
            .iter()
            .filter_map(|s| s.expose_str())
            .map(|p| AuthIdentity { username: username.clone(), password: p.to_string().into() })
            .collect())
    }

    fn auth_data(&mut self) -> std::io::Result<Vec<AuthIdentity>> {
        Err(std::io::Error::other("only NTLM is offered"))
    }
}

/// Who logged in over RDP, and to which target.
#[derive(Debug)]
pub struct VendorLogin {
    /// The vendor.
    pub principal: Principal,
    /// The target name from `USER@TARGET`.
    pub target: String,
}

async fn write_ts<S>(framed: &mut TokioFramed<S>, ts: &TsRequest) -> Result<(), RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let len = usize::from(ts.buffer_len().map_err(|e| RdpError::Protocol(format!("TsRequest: {e}")))?);
    let mut out = Vec::with_capacity(len);
    ts.encode_ts_request(&mut out).map_err(|e| RdpError::Protocol(format!("TsRequest: {e}")))?;
    framed_write(framed, &out).await
}

/// Runs the CredSSP server towards the vendor over the TLS stream in `framed`; `public_key` is
/// the gateway certificate's. Every refusal is audited and counted by the core before it
/// returns.
pub async fn accept_vendor<S>(
    framed: &mut TokioFramed<S>,
    app: &App,
    source: IpAddr,
    public_key: Vec<u8>,
) -> Result<VendorLogin, RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let proxy = GrantProxy { app: app.clone(), source, handle: tokio::runtime::Handle::current(), seen: seen.clone() };
    let mode = ServerMode::Ntlm(sspi::ntlm::NtlmConfig::new("penstock".into()));
    let mut server =
        CredSspServer::new(public_key, proxy, mode).map_err(|e| RdpError::Protocol(format!("CredSSP: {e}")))?;
    let outcome = loop {
        let bytes =
            framed.read_by_hint(&TsRequestHint).await.map_err(|e| RdpError::Protocol(format!("CredSSP: {e}")))?;
        let request = TsRequest::from_buffer(&bytes).map_err(|e| RdpError::Protocol(format!("CredSSP: {e}")))?;
        tracing::debug!(len = bytes.len(), "CredSSP message from the vendor");
        let result = {
            let mut generator = server.process(request);
            let mut state = generator.start();
            loop {
                match state {
                    GeneratorState::Suspended(_) => {
                        let e =
                            sspi::Error::new(sspi::ErrorKind::InternalError, "the gateway makes no network requests");
                        state = generator.resume(Err(e));
                    }
                    GeneratorState::Completed(r) => break r,
                }
            }
        };
        tracing::debug!(ok = result.is_ok(), "CredSSP step");
        match result {
            Ok(ServerState::ReplyNeeded(ts)) => write_ts(framed, &ts).await?,
            Ok(ServerState::Finished(_delegated)) => break Ok(()),
            Err(err) => {
                if let Some(ts) = err.ts_request {
                    let mut ts = *ts;
                    if err.error.error_type == sspi::ErrorKind::LogonDenied {
                        ts.error_code = Some(NStatusCode::LOGON_FAILURE);
                    }
                    // The client may already be gone; the refusal stands either way.
                    let _ = write_ts(framed, &ts).await;
                }
                break Err(err.error);
            }
        }
    };
    tracing::debug!(ok = outcome.is_ok(), "CredSSP with the vendor finished");
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| RdpError::Internal("poisoned lock".into()))?);
    let Some((user, target)) = seen.name else {
        // No user name reached the check (a protocol error or a client that gave up).
        return Err(RdpError::Protocol(match outcome {
            Err(e) => format!("CredSSP failed before authentication: {e}"),
            Ok(()) => "CredSSP finished without a user".into(),
        }));
    };
    if let Some(e) = seen.error {
        return Err(RdpError::Denied(e));
    }
    let result = match (&outcome, &seen.principal) {
        (Ok(()), Some(_)) => Ok(()),
        (_, None) => Err("unknown user or account disabled"),
        (Err(_), Some(_)) if seen.candidates == 0 => Err("no live grant on the target"),
        (Err(e), Some(_)) if e.error_type == sspi::ErrorKind::LogonDenied => Err("wrong grant credential"),
        (Err(_), Some(_)) => Err("CredSSP failed after the user name"),
    };
    tracing::debug!(%user, %target, ?result, "reporting the RDP login");
    auth::challenge_login_result(app, &user, source, &format!("{METHOD} {user}@{target}"), result)
        .await
        .map_err(RdpError::Denied)?;
    match seen.principal {
        Some(principal) => Ok(VendorLogin { principal, target }),
        None => Err(RdpError::Denied(AuthError::Denied)),
    }
}

/// Writes the HYBRID_EX Early User Authorization Result.
pub async fn early_user_auth<S>(framed: &mut TokioFramed<S>, ok: bool) -> Result<(), RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let r = if ok { EarlyUserAuthResult::Success } else { EarlyUserAuthResult::AccessDenied };
    let mut out = Vec::with_capacity(4);
    r.to_buffer(&mut out).map_err(|e| RdpError::Protocol(e.to_string()))?;
    framed_write(framed, &out).await
}

struct NoNetwork;

impl ironrdp_async::NetworkClient for NoNetwork {
    async fn send(
        &mut self,
        _request: &sspi::generator::NetworkRequest,
    ) -> ironrdp_connector::ConnectorResult<Vec<u8>> {
        Err(ironrdp_connector::general_err!("the gateway makes no network requests for NTLM"))
    }
}

/// Runs CredSSP as the client towards the target with the vaulted account. `public_key` is the
/// (pinned) target certificate's.
pub async fn login_target<S>(
    framed: &mut TokioFramed<S>,
    login: &str,
    password: &Secret,
    protocol: SecurityProtocol,
    host: &str,
    public_key: Vec<u8>,
) -> Result<(), RdpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync,
{
    let password = password
        .expose_str()
        .ok_or_else(|| RdpError::Target("the vaulted RDP password is not UTF-8".into()))?
        .to_string();
    let creds = Credentials::UsernamePassword { username: login.to_string(), password };
    let (sequence, first) = CredsspSequence::init(creds, None, protocol, ServerName::new(host), public_key, None)
        .map_err(|e| RdpError::Target(format!("CredSSP: {e}")))?;
    let mut buf = WriteBuf::new();
    ironrdp_async::perform_credssp(framed, &mut NoNetwork, &mut buf, sequence, first)
        .await
        .map_err(|e| RdpError::Target(format!("CredSSP with the vaulted account failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Option<(String, String)> {
        split_name(&Username::parse(s).unwrap())
    }

    #[test]
    fn user_and_target_from_the_ntlm_name() {
        let pair = |u: &str, t: &str| Some((u.to_string(), t.to_string()));
        assert_eq!(name("alice@hmi-line3"), pair("alice", "hmi-line3"));
        assert_eq!(name("hmi-line3\\alice"), pair("alice", "hmi-line3"));
        assert_eq!(name("CORP\\alice@hmi-line3"), pair("alice", "hmi-line3"));
        assert_eq!(name("alice"), None, "no target");
        assert_eq!(name("@hmi"), None);
    }
}
