//! The gateway's SSH client towards targets: pinned host keys, vaulted credentials, time-outs.
//! The vendor is only ever told *that* something failed, never a secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::client::{self, KeyboardInteractiveAuthResponse};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use crate::app::App;
use crate::audit::{self, Event};
use crate::config::UpstreamConfig;
use crate::secret::Secret;
use crate::targets::{self, CredentialKind, Target};

/// The client config used towards targets, with the `[ssh] window_kib` window (see
/// docs/PERFORMANCE.md for what larger and smaller windows cost) and the modern algorithm set,
/// or the legacy one for a target that opted in (see `algorithms`).
///
/// Like the vendor leg, nothing but handshake and authentication messages goes to a target
/// before the gateway has logged in: the keepalive interval is longer than the connect,
/// handshake and login time-outs together, which bound that phase.
pub fn client_config(window: u32, legacy: bool, cfg: &UpstreamConfig) -> client::Config {
    let pre_auth = cfg.connect_timeout_secs + 2 * cfg.handshake_timeout_secs;
    client::Config {
        window_size: window,
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30.max(pre_auth + 5))),
        keepalive_max: 3,
        preferred: super::algorithms::client(legacy),
        ..Default::default()
    }
}

/// What a target offers that has nothing in common with the gateway's modern set (`key
/// exchange diffie-hellman-group14-sha1; host keys ssh-rsa; …`); `None` if the target is not
/// the cause (or cannot be probed).
async fn legacy_offer(host: &str, port: u16, cfg: &UpstreamConfig) -> Option<String> {
    let offer = super::algorithms::probe(host, port, Duration::from_secs(cfg.handshake_timeout_secs)).await.ok()?;
    let missing = offer.missing_from_modern();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Remembers the key a server presented.
struct Capture(Arc<std::sync::Mutex<Option<PublicKey>>>);

impl client::Handler for Capture {
    type Error = russh::Error;
    async fn check_server_key(&mut self, k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        if let PublicKeyOrCertificate::PublicKey { key, .. } = k {
            if let Ok(mut g) = self.0.lock() {
                *g = Some(key.clone());
            }
        }
        Ok(false)
    }
}

/// Connects to `host:port`, takes its host key and hangs up (with the legacy algorithm set only
/// when `legacy`).
pub async fn fetch_host_key(host: &str, port: u16, cfg: &UpstreamConfig, legacy: bool) -> anyhow::Result<PublicKey> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(cfg.connect_timeout_secs),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .with_context(|| format!("connecting to {host}:{port} timed out"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let slot = Arc::new(std::sync::Mutex::new(None));
    // The same algorithms as sessions.
    let config = Arc::new(client_config(crate::config::SshConfig::default().window_bytes(), legacy, cfg));
    let res = tokio::time::timeout(
        Duration::from_secs(cfg.handshake_timeout_secs),
        client::connect_stream(config, tcp, Capture(slot.clone())),
    )
    .await
    .with_context(|| format!("SSH handshake with {host}:{port} timed out"))?;
    let key = slot.lock().ok().and_then(|g| g.clone());
    if key.is_none() && !legacy {
        if let Err(russh::Error::NoCommonAlgo { .. }) = &res {
            if let Some(offer) = legacy_offer(host, port, cfg).await {
                anyhow::bail!(
                    "{host}:{port} offers only legacy SSH algorithms ({offer}); if the device cannot be upgraded, add it with --legacy-crypto"
                );
            }
        }
    }
    key.with_context(|| format!("{host}:{port} presented no SSH host key"))
}

/// Checks the target's host key against the pinned one.
pub struct Pinned {
    pinned: Option<PublicKey>,
    mismatch: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;
    async fn check_server_key(&mut self, k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let presented = match k {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                if let Ok(mut g) = self.mismatch.lock() {
                    *g = Some("certificate (not pinned)".into());
                }
                return Ok(false);
            }
        };
        let ok = self.pinned.as_ref().is_some_and(|p| crate::keys::same_key(p, presented));
        if !ok {
            if let Ok(mut g) = self.mismatch.lock() {
                *g = Some(crate::keys::fingerprint(presented));
            }
        }
        Ok(ok)
    }
}

/// A logged-in connection to a target.
pub type Connection = client::Handle<Pinned>;

/// Why the target could not be reached. Display is safe to show the vendor.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    /// The host key did not match the pinned one.
    #[error("the identity of {0} could not be verified; the session was refused")]
    HostKey(String),
    /// No algorithm in common: the target only speaks legacy crypto and has not opted in.
    #[error("{1}")]
    Legacy(String, String),
    /// Login with the vaulted credential failed.
    #[error("the gateway could not log in to {0}")]
    Login(String),
    /// Anything else.
    #[error("cannot open a session on {0}: {1}")]
    Other(String, String),
}

/// Connects to `target` and logs in with its vaulted credential.
pub async fn connect(app: &App, target: &Target, actor: &str) -> Result<Connection, UpstreamError> {
    connect_as(app, target, actor, None).await
}

/// Like [`connect`], logging in with `with` (kind, secret) instead of the active vaulted
/// credential when given: rotation verifies candidate secrets this way.
pub async fn connect_as(
    app: &App,
    target: &Target,
    actor: &str,
    with: Option<(CredentialKind, &Secret)>,
) -> Result<Connection, UpstreamError> {
    let name = target.name.clone();
    let cfg = &app.config.upstream;
    let tcp = tokio::time::timeout(
        Duration::from_secs(cfg.connect_timeout_secs),
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| UpstreamError::Unreachable(name.clone(), "connection timed out".into()))?
    .map_err(|e| UpstreamError::Unreachable(name.clone(), e.kind().to_string()))?;
    let _ = tcp.set_nodelay(true);
    let pinned = target.host_key.as_deref().and_then(|k| crate::keys::parse_public_key(k).ok());
    let mismatch = Arc::new(std::sync::Mutex::new(None));
    let handler = Pinned { pinned, mismatch: mismatch.clone() };
    let handshake = Duration::from_secs(cfg.handshake_timeout_secs);
    let connected = tokio::time::timeout(
        handshake,
        client::connect_stream(
            Arc::new(client_config(app.config.ssh.window_bytes(), target.legacy_crypto, cfg)),
            tcp,
            handler,
        ),
    )
    .await;
    let presented = mismatch.lock().ok().and_then(|g| g.clone());
    let mut conn = match (connected, presented) {
        (_, Some(presented)) => {
            let _ = audit::record(
                &app.store,
                &*app.clock,
                actor,
                &Event::HostKeyMismatch { target: name.clone(), expected: target.host_key_fingerprint(), presented },
            )
            .await;
            return Err(UpstreamError::HostKey(name));
        }
        (Err(_), None) => return Err(UpstreamError::Unreachable(name, "SSH handshake timed out".into())),
        (Ok(Err(russh::Error::NoCommonAlgo { .. })), None) if !target.legacy_crypto => {
            let why = match legacy_offer(&target.host, target.port, cfg).await {
                Some(offer) => format!(
                    "{name} offers only legacy SSH algorithms ({offer}); if the device cannot be upgraded, an admin can allow them with `penstock target set {name} --legacy-crypto`"
                ),
                None => format!("{name} has no SSH algorithm in common with the gateway"),
            };
            tracing::warn!(target = %name, "{why}");
            return Err(UpstreamError::Legacy(name, why));
        }
        (Ok(Err(e)), None) => return Err(UpstreamError::Unreachable(name, format!("SSH handshake failed: {e}"))),
        (Ok(Ok(c)), None) => c,
    };
    let vaulted;
    let (kind, secret) = match with {
        Some(given) => given,
        None => {
            vaulted = targets::credential(app, target).await.map_err(|e| {
                tracing::error!(target = %name, error = %e, "cannot open vaulted credential");
                UpstreamError::Login(name.clone())
            })?;
            (target.credential_kind, &vaulted)
        }
    };
    let ok = tokio::time::timeout(handshake, login(&mut conn, &target.login, kind, secret))
        .await
        .map_err(|_| UpstreamError::Login(name.clone()))?
        .map_err(|e| {
            tracing::warn!(target = %name, error = %e, "upstream login failed");
            UpstreamError::Login(name.clone())
        })?;
    if !ok {
        return Err(UpstreamError::Login(name));
    }
    Ok(conn)
}

async fn login(conn: &mut Connection, user: &str, kind: CredentialKind, secret: &Secret) -> anyhow::Result<bool> {
    match kind {
        CredentialKind::Password => {
            let pw = secret.expose_str().context("target password is not UTF-8")?;
            if conn.authenticate_password(user, pw).await?.success() {
                return Ok(true);
            }
            // Many appliances only offer keyboard-interactive for passwords.
            kbdint(conn, user, |_| Some(pw.to_string())).await
        }
        CredentialKind::PrivateKey => {
            let key = crate::keys::parse_private_key(secret.expose())?;
            let hash = conn.best_supported_rsa_hash().await?.flatten();
            Ok(conn.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await?.success())
        }
        CredentialKind::KeyboardInteractive => {
            let text = secret.expose_str().context("keyboard-interactive answers are not UTF-8")?;
            let mut answers = text.lines().map(str::to_string).collect::<Vec<_>>().into_iter();
            kbdint(conn, user, move |_| answers.next()).await
        }
    }
}

async fn kbdint(
    conn: &mut Connection,
    user: &str,
    mut answer: impl FnMut(&str) -> Option<String>,
) -> anyhow::Result<bool> {
    let mut resp = conn.authenticate_keyboard_interactive_start(user, None::<String>).await?;
    for _ in 0..8 {
        match resp {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let mut answers = Vec::with_capacity(prompts.len());
                for p in &prompts {
                    answers.push(answer(&p.prompt).unwrap_or_default());
                }
                resp = conn.authenticate_keyboard_interactive_respond(answers).await?;
            }
        }
    }
    Ok(false)
}
