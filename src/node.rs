//! This gateway's identity as a node: a stable id kept in the `node_id` file beside the config
//! (made on the first `serve`), its row in the store's `nodes` table, and the heartbeat that
//! keeps the row current. Sessions carry the id of the node that runs them, so crash recovery
//! (`recovery`) closes only this node's sessions when several gateways share one PostgreSQL.

use std::path::PathBuf;

use anyhow::Context;

use crate::app::App;
use crate::audit::{self, Event};

/// The file that holds the node id.
pub fn id_path(app: &App) -> PathBuf {
    app.config.resolve(std::path::Path::new("node_id"))
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
    let name = hostname();
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
