//! The SSH listener: accepts vendors, bounds connections that are still logging in, and watches
//! live sessions for kills, revocations, disabled users and expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::{watch, Semaphore};

use crate::app::App;
use crate::sessions::EndReason;

/// A live session as the watcher sees it.
#[derive(Debug)]
pub struct Live {
    /// Tells the relay to stop, and why.
    pub stop: watch::Sender<Option<EndReason>>,
    /// End of the grant (Unix seconds).
    pub valid_until: i64,
}

/// Live sessions of this process, by id.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<String, Live>>);

impl Registry {
    /// Adds a session; returns the receiver its relay listens on.
    pub fn add(&self, id: &str, valid_until: i64) -> watch::Receiver<Option<EndReason>> {
        let (stop, rx) = watch::channel(None);
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), Live { stop, valid_until });
        }
        rx
    }

    /// Forgets a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }

    /// Ends a session with `reason`.
    pub fn stop(&self, id: &str, reason: EndReason) {
        if let Ok(m) = self.0.lock() {
            if let Some(l) = m.get(id) {
                let _ = l.stop.send(Some(reason));
            }
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, now: i64) -> Vec<String> {
        self.0
            .lock()
            .map(|m| m.iter().filter(|(_, l)| l.valid_until <= now).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The core.
    pub app: App,
    /// Live sessions.
    pub registry: Registry,
    /// russh server config.
    pub config: Arc<russh::server::Config>,
}

/// The SSH listener.
pub struct Server {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

/// The russh server config: host key, large windows and packets, no idle cut-off (policy does
/// that), keepalives to find dead clients.
pub fn server_config(app: &App) -> anyhow::Result<russh::server::Config> {
    let key = crate::keys::load_private_key(&app.config.host_key_path())?;
    Ok(russh::server::Config {
        keys: vec![key],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey, russh::MethodKind::KeyboardInteractive][..]),
        // Failures are slowed down by the handler itself, so partial success (key, then TOTP)
        // is not delayed.
        auth_rejection_time: Duration::from_millis(0),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        max_auth_attempts: 6,
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        preferred: super::preferred_algorithms(),
        server_id: russh::SshId::Standard("SSH-2.0-Penstock".into()),
        ..Default::default()
    })
}

impl Server {
    /// Binds the configured address.
    pub async fn bind(app: App) -> anyhow::Result<Server> {
        let config = Arc::new(server_config(&app)?);
        let listener = tokio::net::TcpListener::bind(app.config.ssh.listen)
            .await
            .with_context(|| format!("cannot listen on {}", app.config.ssh.listen))?;
        Ok(Server { listener, shared: Arc::new(Shared { app, registry: Registry::default(), config }) })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) -> anyhow::Result<()> {
        let pending = Arc::new(Semaphore::new(self.shared.app.config.ssh.max_pending_logins.max(1)));
        tokio::spawn(watch_sessions(self.shared.clone()));
        loop {
            let (sock, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Connections still logging in are bounded; past that, new ones are dropped at once
            // so a flood of half-open handshakes cannot stall the gateway.
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many connections logging in; dropped");
                continue;
            };
            let _ = sock.set_nodelay(true);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                super::handler::serve_connection(shared, sock, peer, permit).await;
            });
        }
    }
}

/// Every half second: end sessions whose grant expired (by the injected clock), and ask the
/// store which live sessions were killed, revoked, or whose user was disabled. A store outage
/// keeps sessions running (they are still recorded) and is logged.
async fn watch_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.registry.is_empty() {
            continue;
        }
        let app = &shared.app;
        let now = app.clock.now();
        for id in shared.registry.expired(now) {
            shared.registry.stop(&id, EndReason::Expired);
        }
        let rows = sqlx::query(
            "SELECT s.id, s.kill_requested, g.revoked_at, u.disabled, u.expires_at, g.valid_until FROM sessions s \
             LEFT JOIN grants g ON g.id = s.grant_id LEFT JOIN users u ON u.id = s.user_id WHERE s.ended_at IS NULL",
        )
        .fetch_all(app.store.pool())
        .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "session watcher cannot read the store");
                continue;
            }
        };
        for r in rows {
            let id: String = r.try_get(0).unwrap_or_default();
            let kill: i64 = r.try_get(1).unwrap_or(0);
            let revoked: Option<i64> = r.try_get(2).unwrap_or(None);
            let disabled: Option<i64> = r.try_get(3).unwrap_or(None);
            let expires: Option<i64> = r.try_get(4).unwrap_or(None);
            let until: Option<i64> = r.try_get(5).unwrap_or(None);
            if kill != 0 || revoked.is_some() || disabled.unwrap_or(0) != 0 {
                shared.registry.stop(&id, EndReason::Killed);
            } else if expires.is_some_and(|e| e <= now) || until.is_some_and(|u| u <= now) {
                shared.registry.stop(&id, EndReason::Expired);
            }
        }
    }
}
