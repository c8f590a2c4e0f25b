//! Which node runs the store-wide background jobs (request expiry, retention, the rotation
//! scheduler): exactly one at a time.
//!
//! On PostgreSQL each node keeps one connection of its own and tries to take a session-level
//! advisory lock on it. The node holding the lock runs the jobs; when it dies its connection
//! closes, PostgreSQL releases the lock, and the next node to try takes over (within
//! [`RETRY`]). A node that loses its connection stops running jobs before it reconnects. On
//! SQLite there is one node, and it always runs them.
//!
//! The holder's node id is written to `meta` (`jobs_node`), so `penstock nodes` can show it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Row;

use crate::app::App;
use crate::store::Backend;

/// The advisory lock's key ("penstock jobs").
const LOCK_KEY: i64 = 0x7065_6e73_746f_636b;
/// How often a node without the lock tries again, and the holder checks its connection.
const RETRY: Duration = Duration::from_secs(2);

static LEADER: AtomicBool = AtomicBool::new(false);

/// Whether this process runs the store-wide jobs now.
pub fn leader() -> bool {
    LEADER.load(Ordering::SeqCst)
}

/// Starts taking part (from `serve`, after the node is registered).
pub fn start(app: &App) {
    if app.store.backend() != Backend::Postgres {
        LEADER.store(true, Ordering::SeqCst);
        return;
    }
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = hold(&app).await {
                if LEADER.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "lost the background-jobs lock; another node takes over");
                } else {
                    tracing::debug!(error = %e, "background-jobs lock");
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// Takes the lock when free and holds it while the connection lives; returns on an error.
async fn hold(app: &App) -> anyhow::Result<()> {
    let mut conn = app.store.pool().acquire().await?.detach();
    loop {
        let got: bool =
            sqlx::query("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn).await?.try_get(0)?;
        if got {
            break;
        }
        tokio::time::sleep(RETRY).await;
    }
    sqlx::query("UPDATE meta SET value = $1 WHERE key = 'jobs_node'")
        .bind(app.node_id.as_bytes().to_vec())
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO meta (key, value) SELECT 'jobs_node', $1 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'jobs_node')")
        .bind(app.node_id.as_bytes().to_vec())
        .execute(&mut conn)
        .await?;
    LEADER.store(true, Ordering::SeqCst);
    tracing::info!(node = %app.node_id, "this node runs the background jobs");
    loop {
        tokio::time::sleep(RETRY).await;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
}

/// The node that runs the jobs, as last recorded (PostgreSQL); `None` on SQLite or before any.
pub async fn holder(app: &App) -> anyhow::Result<Option<String>> {
    if app.store.backend() != Backend::Postgres {
        return Ok(None);
    }
    let v: Option<Vec<u8>> = sqlx::query("SELECT value FROM meta WHERE key = 'jobs_node'")
        .fetch_optional(app.store.pool())
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
