//! This gateway's identity as a node: a stable id kept in the `node_id` file beside the config
//! (made on the first `serve`), its row in the store's `nodes` table, and the heartbeat that
//! keeps the row current. Sessions carry the id of the node that runs them, so crash recovery
//! (`recovery`) closes only this node's sessions when several gateways share one PostgreSQL,
//! and a node that stops heartbeating has its sessions ended by a survivor ([`reap_lost`]).
//! On SQLite only one `serve` may run: a second is refused ([`lock_single_node`]).

use std::path::PathBuf;

use anyhow::Context;

use crate::app::App;
use crate::audit::{self, Event};

/// The file that holds the node id.
pub fn id_path(app: &App) -> PathBuf {
    app.config.resolve(&app.config.node.id_file)
}

/// Reads the node id, or makes and saves a new one.
pub fn load_or_create_id(app: &App) -> anyhow::Result<String> {
    let path = id_path(app);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_string();
            anyhow::ensure!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}: not a node id (32 hex digits); remove the file to make a new one",
                path.display()
            );
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = crate::sessions::new_id();
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// This machine's host name (the node's default name).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

/// Gives `app` its node id, records the node in the store and audits its start.
pub async fn register(app: &mut App) -> anyhow::Result<()> {
    let id = load_or_create_id(app)?;
    app.node_id = std::sync::Arc::new(id.clone());
    if app.config.node.lost_after_secs < 3 * app.config.node.heartbeat_secs.max(1) {
        anyhow::bail!(
            "[node] lost_after_secs ({}) must be at least three heartbeats (heartbeat_secs = {})",
            app.config.node.lost_after_secs,
            app.config.node.heartbeat_secs
        );
    }
    lock_single_node(app)?;
    let name = if app.config.node.name.is_empty() { hostname() } else { app.config.node.name.clone() };
    let version = env!("CARGO_PKG_VERSION").to_string();
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    sqlx::query(
        "INSERT INTO nodes (id, name, address, version, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (id) DO UPDATE SET name = $2, address = $3, version = $4, started_at = $5, heartbeat_at = $5",
    )
    .bind(&id)
    .bind(&name)
    .bind(app.config.ssh.listen.to_string())
    .bind(&version)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("cannot register this node in the store")?;
    audit::append(&mut tx, &*app.clock, "system", &Event::NodeStarted { node: id.clone(), name, version }).await?;
    tx.commit().await?;
    tracing::info!(node = %id, "node registered");
    Ok(())
}

/// Records that this node is alive.
pub async fn heartbeat(app: &App) -> anyhow::Result<()> {
    sqlx::query("UPDATE nodes SET heartbeat_at = $1 WHERE id = $2")
        .bind(app.clock.now())
        .bind(app.node_id.as_str())
        .execute(app.store.pool())
        .await?;
    Ok(())
}

/// On SQLite, holds an exclusive lock beside the database for the life of the process, so a
/// second `serve` on the same store is refused instead of forking the audit chain's writers
/// and closing the first one's sessions as crashed. PostgreSQL takes any number of nodes.
fn lock_single_node(app: &App) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    static LOCK: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let url = app.config.database_url();
    let Some(db) = url.strip_prefix("sqlite://") else { return Ok(()) };
    let db = db.split('?').next().unwrap_or(db);
    let path = PathBuf::from(format!("{db}.serve-lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another `penstock serve` is running on this SQLite store ({db}); SQLite allows one gateway — \
             several need PostgreSQL ([database] url = \"postgres://…\", see README: several gateways)"
        );
    }
    let _ = LOCK.set(f);
    Ok(())
}

/// A node as `penstock nodes` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeRow {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// SSH listen address it registered.
    pub address: String,
    /// Penstock version.
    pub version: String,
    /// Last start (Unix seconds).
    pub started_at: i64,
    /// Last heartbeat (Unix seconds).
    pub heartbeat_at: i64,
    /// Its live sessions.
    pub live_sessions: i64,
    /// `alive`, or `lost` when its heartbeat is older than `[node] lost_after_secs`.
    pub state: String,
    /// Whether it runs the store-wide background jobs (expiry, retention, rotation).
    pub jobs: bool,
}

/// Every node the store knows.
pub async fn list(app: &App) -> anyhow::Result<Vec<NodeRow>> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT n.id, n.name, n.address, n.version, n.started_at, n.heartbeat_at, \
         (SELECT COUNT(*) FROM sessions s WHERE s.node_id = n.id AND s.ended_at IS NULL) \
         FROM nodes n ORDER BY n.name, n.id",
    )
    .fetch_all(app.store.pool())
    .await?;
    let stale = app.clock.now() - app.config.node.lost_after_secs as i64;
    let holder = crate::jobs::holder(app).await?;
    rows.iter()
        .map(|r| {
            let heartbeat_at: i64 = r.try_get(5)?;
            Ok(NodeRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                address: r.try_get(2)?,
                version: r.try_get(3)?,
                started_at: r.try_get(4)?,
                heartbeat_at,
                live_sessions: r.try_get(6)?,
                state: if heartbeat_at < stale { "lost" } else { "alive" }.into(),
                jobs: match &holder {
                    Some(h) => heartbeat_at >= stale && r.try_get::<String, _>(0)? == *h,
                    None => rows.len() == 1,
                },
            })
        })
        .collect()
}

/// Ends the open sessions of nodes whose heartbeat is older than `[node] lost_after_secs`
/// (as `node_lost`, hashing the recording where this node can read it), with a `node.lost`
/// event per node; returns how many sessions. Run by every node after its heartbeat; the
/// per-session close is atomic, so survivors never close a session twice.
pub async fn reap_lost(app: &App) -> anyhow::Result<usize> {
    use sqlx::Row;
    let stale = app.clock.now() - app.config.node.lost_after_secs as i64;
    let rows = sqlx::query(
        "SELECT n.id, n.name, n.heartbeat_at FROM nodes n WHERE n.id <> $1 AND n.heartbeat_at < $2 \
         AND EXISTS (SELECT 1 FROM sessions s WHERE s.node_id = n.id AND s.ended_at IS NULL)",
    )
    .bind(app.node_id.as_str())
    .bind(stale)
    .fetch_all(app.store.pool())
    .await?;
    let mut total = 0;
    for r in rows {
        let (node, name, last): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let n = crate::recovery::close_lost(app, &node).await?;
        if n == 0 {
            continue; // another survivor was quicker
        }
        let mut tx = app.store.begin_write().await?;
        let ev = Event::NodeLost { node: node.clone(), name: name.clone(), last_heartbeat: last, sessions: n as i64 };
        audit::append(&mut tx, &*app.clock, "system", &ev).await?;
        tx.commit().await?;
        tracing::warn!(node = %node, name = %name, sessions = n, "node lost: its sessions were ended");
        total += n;
    }
    Ok(total)
}
