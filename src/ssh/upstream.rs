//! The gateway's SSH client towards targets: pinned host keys, vaulted credentials, time-outs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::keys::{PublicKey, PublicKeyOrCertificate};

use crate::config::UpstreamConfig;

/// Remembers the key a server presented.
struct Capture(Arc<std::sync::Mutex<Option<PublicKey>>>);

impl russh::client::Handler for Capture {
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

/// Connects to `host:port`, takes its host key and hangs up.
pub async fn fetch_host_key(host: &str, port: u16, cfg: &UpstreamConfig) -> anyhow::Result<PublicKey> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(cfg.connect_timeout_secs),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .with_context(|| format!("connecting to {host}:{port} timed out"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let slot = Arc::new(std::sync::Mutex::new(None));
    let config = Arc::new(russh::client::Config::default());
    let _ = tokio::time::timeout(
        Duration::from_secs(cfg.handshake_timeout_secs),
        russh::client::connect_stream(config, tcp, Capture(slot.clone())),
    )
    .await
    .with_context(|| format!("SSH handshake with {host}:{port} timed out"))?;
    let key = slot.lock().ok().and_then(|g| g.clone());
    key.with_context(|| format!("{host}:{port} presented no SSH host key"))
}
