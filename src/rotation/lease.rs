//! One rotation per target at a time, across gateway nodes and CLI runs: a lease row in the
//! store, taken inside a serialized write transaction and renewed while the rotation runs. A
//! lease whose holder died (kill -9) is taken over once it expires, or at once when the holder
//! was a process on this host that no longer exists.

use std::time::Duration;

use sqlx::Row;

use crate::app::App;

/// How long a lease lasts without renewal (seconds).
const LEASE_SECS: i64 = 60;
/// How often a running rotation renews it.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The outcome of [`acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// The lease is ours until released.
    Got(Lease),
    /// Someone else rotates this target now (the holder).
    Busy(String),
    /// A vendor session on the target is live (only when asked to wait for idle).
    LiveSession,
}

/// A held lease; release it with [`Lease::release`] (dropping it stops the renewal, and the row
/// expires by itself).
#[derive(Debug)]
pub struct Lease {
    app: App,
    target_id: i64,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// `HOST:PID:RANDOM` naming this process.
fn me() -> String {
    format!("{}:{}:{}", host(), std::process::id(), crate::auth::random_token(6))
}

/// Whether `holder` names a process on this host that is gone.
fn dead_here(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else { return false };
    h == host() && pid.parse::<u32>().is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// Takes the lease of `target_id`. With `require_idle`, refuses while a session on the target
/// is live (checked in the same transaction, so a session that starts after this waits for the
/// lease to go).
pub async fn acquire(app: &App, target_id: i64, require_idle: bool) -> anyhow::Result<Acquire> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let row = sqlx::query("SELECT holder, expires_at FROM rotation_locks WHERE target_id = $1")
        .bind(target_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(r) = row {
        let holder: String = r.try_get(0)?;
        let expires: i64 = r.try_get(1)?;
        if expires > now && !dead_here(&holder) {
            return Ok(Acquire::Busy(holder));
        }
        tracing::warn!(target_id, holder, "taking over an abandoned rotation lease");
        sqlx::query("DELETE FROM rotation_locks WHERE target_id = $1").bind(target_id).execute(&mut *tx).await?;
        // Its holder died mid-rotation: what it left in the vault is settled by the next attempt.
        sqlx::query(
            "UPDATE rotations SET outcome = 'interrupted', finished_at = $1 WHERE target_id = $2 AND outcome = 'running'",
        )
        .bind(now)
        .bind(target_id)
        .execute(&mut *tx)
        .await?;
    }
    if require_idle {
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM sessions WHERE target_id = $1 AND ended_at IS NULL")
            .bind(target_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if live > 0 {
            return Ok(Acquire::LiveSession);
        }
    }
    let holder = me();
    sqlx::query("INSERT INTO rotation_locks (target_id, holder, expires_at) VALUES ($1, $2, $3)")
        .bind(target_id)
        .bind(&holder)
        .bind(now + LEASE_SECS)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let renew = {
        let (app, holder) = (app.clone(), holder.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let r = sqlx::query("UPDATE rotation_locks SET expires_at = $1 WHERE target_id = $2 AND holder = $3")
                    .bind(app.clock.now() + LEASE_SECS)
                    .bind(target_id)
                    .bind(&holder)
                    .execute(app.store.pool())
                    .await;
                if let Err(e) = r {
                    tracing::warn!(target_id, error = %e, "cannot renew rotation lease");
                }
            }
        })
    };
    Ok(Acquire::Got(Lease { app: app.clone(), target_id, holder, renew }))
}

impl Lease {
    /// Gives the lease back.
    pub async fn release(self) {
        self.renew.abort();
        let r = sqlx::query("DELETE FROM rotation_locks WHERE target_id = $1 AND holder = $2")
            .bind(self.target_id)
            .bind(&self.holder)
            .execute(self.app.store.pool())
            .await;
        if let Err(e) = r {
            tracing::warn!(target_id = self.target_id, error = %e, "cannot release rotation lease (it expires by itself)");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Whether a live (unexpired) lease is held on `target_id`.
pub async fn held(app: &App, target_id: i64) -> anyhow::Result<bool> {
    let row = sqlx::query("SELECT holder, expires_at FROM rotation_locks WHERE target_id = $1")
        .bind(target_id)
        .fetch_optional(app.store.pool())
        .await?;
    Ok(match row {
        Some(r) => {
            let holder: String = r.try_get(0)?;
            let expires: i64 = r.try_get(1)?;
            expires > app.clock.now() && !dead_here(&holder)
        }
        None => false,
    })
}
