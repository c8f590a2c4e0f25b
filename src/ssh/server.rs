//! The SSH listener: accepts vendors, bounds connections that are still logging in, and watches
//! live sessions for kills, revocations, disabled users and expiry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use super::login_limits::{Admission, LoginLimits};
use crate::app::App;
pub use crate::live::{Live, Registry};

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The core.
    pub app: App,
    /// Live sessions.
    pub registry: Registry,
    /// russh server config.
    pub config: Arc<russh::server::Config>,
    /// Connections still logging in.
    pub logins: LoginLimits,
}

/// The SSH listener.
pub struct Server {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

/// The russh server config: host key, large windows and packets, no idle cut-off (policy does
/// that), keepalives to find dead clients.
///
/// OpenSSH clients treat any global request during user authentication as a protocol error
/// (`bad message during authentication: type 80`), so no keepalive may reach a client that has
/// not logged in. russh's keepalive timer runs from the start of the connection and restarts
/// with every packet received; the login deadline (`login_timeout_secs`, counted from the TCP
/// accept) ends every connection that has not logged in by then. So the keepalive interval is
/// kept longer than the login deadline: a keepalive can only ever go to an authenticated
/// client. Dead networks are also found by TCP keepalives on the socket.
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
        // `[ssh] window_kib` (8 MiB by default). The window also bounds what a connection can
        // have in flight towards a slow target, together with the handler's backlog limit.
        window_size: app.config.ssh.window_bytes(),
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        keepalive_interval: Some(keepalive_after(app.config.ssh.login_timeout_secs)),
        keepalive_max: 3,
        nodelay: true,
        preferred: super::algorithms::server(),
        server_id: russh::SshId::Standard("SSH-2.0-Penstock".into()),
        ..Default::default()
    })
}

/// The SSH keepalive interval: 30 s, but always longer than the login deadline (see
/// [`server_config`]).
pub fn keepalive_after(login_timeout_secs: u64) -> Duration {
    Duration::from_secs(30.max(login_timeout_secs.max(1) + 5))
}

impl Server {
    /// Binds the configured address.
    pub async fn bind(app: App) -> anyhow::Result<Server> {
        let config = Arc::new(server_config(&app)?);
        let listener = tokio::net::TcpListener::bind(app.config.ssh.listen)
            .await
            .with_context(|| format!("cannot listen on {}", app.config.ssh.listen))?;
        let logins = LoginLimits::new(app.config.ssh.max_pending_logins, app.config.ssh.max_pending_per_source);
        Ok(Server { listener, shared: Arc::new(Shared { app, registry: Registry::default(), config, logins }) })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) -> anyhow::Result<()> {
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
            let proxies = &self.shared.app.config.ssh.proxy_from;
            if !proxies.is_empty() && crate::proxy_protocol::is_proxy(peer.ip(), proxies) {
                // A balancer's connection: the vendor's address comes in its PROXY header. Header
                // reads are bounded in number and time.
                let Ok(slot) = header_slots().clone().try_acquire_owned() else {
                    crate::metrics::count_preauth_drop();
                    tracing::warn!(%peer, "too many PROXY headers pending; connection dropped");
                    continue;
                };
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let mut sock = sock;
                    match crate::proxy_protocol::read_header(&mut sock, peer, Duration::from_secs(5)).await {
                        Ok(client) => {
                            drop(slot);
                            admit(shared, sock, client);
                        }
                        Err(e) => {
                            crate::metrics::count_preauth_drop();
                            tracing::warn!(proxy = %peer, error = %format!("{e:#}"), "connection from a proxy refused");
                        }
                    }
                });
                continue;
            }
            admit(self.shared.clone(), sock, peer);
        }
    }
}

/// Connections from proxies whose PROXY header is still being read.
fn header_slots() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(256)))
}

/// Admits a connection from `peer` (the vendor's address) to the login table and serves it.
fn admit(shared: Arc<Shared>, sock: tokio::net::TcpStream, peer: SocketAddr) {
    // Connections still logging in are bounded. A full table first drops its oldest
    // connection that has not finished key exchange; only when every place is taken
    // by one that is authenticating is the newcomer dropped.
    let permit = match shared.logins.admit(peer.ip()) {
        Admission::Admitted { slot, dropped } => {
            if dropped {
                crate::metrics::count_preauth_drop();
                tracing::warn!(%peer, dropped_total = shared.logins.stats.dropped_idle.load(std::sync::atomic::Ordering::Relaxed),
                    "login table full: dropped the oldest connection that had not finished key exchange");
            }
            slot
        }
        Admission::Full => {
            crate::metrics::count_preauth_drop();
            tracing::warn!(%peer, "too many connections authenticating; new connection dropped");
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    set_tcp_keepalive(&sock);
    let evicted = permit.eviction();
    tokio::spawn(async move {
        tokio::select! {
            _ = super::handler::serve_connection(shared, sock, peer, permit) => {}
            _ = evicted.notified() => tracing::info!(%peer, "dropped before key exchange to make room for a new connection"),
        }
    });
}

/// TCP keepalives (idle 60 s, then every 15 s, 4 probes) find a vanished client without sending
/// it anything at the SSH level.
fn set_tcp_keepalive(sock: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Reloads the policies; a bad file keeps the current set and is logged.
pub async fn reload_policies(app: &App, why: &str) {
    match app.load_policies() {
        Ok(n) => {
            tracing::info!(policies = n, why, "policies reloaded");
            let ev = crate::audit::Event::PoliciesLoaded { count: n as i64 };
            if let Err(e) = crate::audit::record(&app.store, &*app.clock, "system", &ev).await {
                tracing::error!(error = %e, "cannot audit policy reload");
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), why, "policy reload failed; keeping the previous policies")
        }
    }
}

/// The policy generation counter that `penstock policy reload` bumps.
pub async fn policy_generation(app: &App) -> Option<i64> {
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'policy_generation'")
        .fetch_optional(app.store.pool())
        .await
        .ok()?;
    let v: Vec<u8> = row?.try_get(0).ok()?;
    String::from_utf8(v).ok()?.parse().ok()
}

/// Every `[node] poll_ms` (half a second), and at once when another node announces a change
/// (`signals`): end sessions whose grant expired (by the injected clock), and ask the store
/// which live sessions were killed, revoked, or whose user was disabled. A store outage
/// keeps sessions running (they are still recorded) and is logged.
async fn watch_sessions(shared: Arc<Shared>) {
    let poll_ms = shared.app.config.node.poll_ms.clamp(50, 60_000);
    let mut tick = tokio::time::interval(Duration::from_millis(poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut signals = crate::signals::subscribe();
    let mut generation = policy_generation(&shared.app).await;
    let mut n: u64 = 0;
    let heartbeat_ticks = (shared.app.config.node.heartbeat_secs.max(1) * 1000 / poll_ms).max(1);
    let slow_ticks = (2000 / poll_ms).max(1);
    loop {
        // A tick, or another node's change announced (then only the checks below run at once).
        let signalled = tokio::select! {
            _ = tick.tick() => false,
            r = signals.changed() => r.is_ok(),
        };
        if signalled {
            let g = policy_generation(&shared.app).await;
            if g != generation {
                generation = g;
                reload_policies(&shared.app, "policy reload").await;
            }
        } else {
            n += 1;
        }
        if !signalled && n.is_multiple_of(heartbeat_ticks) {
            // This node is alive; nodes that are not have their sessions ended.
            if let Err(e) = crate::node::heartbeat(&shared.app).await {
                tracing::warn!(error = %e, "cannot record the node's heartbeat");
            }
            if let Err(e) = crate::node::reap_lost(&shared.app).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot end the sessions of a lost node");
            }
        }
        if !signalled && n.is_multiple_of(slow_ticks) {
            // Every 2 s: pending requests past their time (on the node that runs the jobs), and
            // `penstock policy reload`.
            if crate::jobs::leader() {
                match crate::access::requests::expire_due(&shared.app).await {
                    Ok(_) => crate::metrics::jobs_pass(shared.app.clock.now()),
                    Err(e) => tracing::warn!(error = %e, "cannot expire requests"),
                }
            }
            let g = policy_generation(&shared.app).await;
            if g != generation {
                generation = g;
                reload_policies(&shared.app, "policy reload").await;
            }
        }
        crate::live::enforce(&shared.app, &shared.registry).await;
    }
}
