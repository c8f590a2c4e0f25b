//! Retention and legal hold. With `[recordings] retain_days` set, a daily job (and
//! `penstock recordings expire`) deletes the recordings of sessions that ended longer ago,
//! except those on legal hold (`penstock recordings hold`). Each deletion is first written to
//! the audit chain (`recording.deleted`, with the hash the recording had) and to
//! `recording_deletions`, then the files go; so `audit verify` can tell a recording retention
//! deleted from one that went missing. A row in `recording_deletions` claims a session, so
//! several gateways on one PostgreSQL never delete (or audit) twice.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::replay::cast;
use crate::storage::{self, RecordingStorage};

/// Recordings deleted per run at most (the next run goes on).
const PER_RUN: i64 = 10_000;

/// Deletes what retention says is due; returns how many recordings.
pub async fn expire(app: &App, actor: &str) -> anyhow::Result<usize> {
    let days = app.config.recordings.retain_days;
    if days == 0 {
        return Ok(0);
    }
    let cutoff = app.clock.now() - i64::from(days) * 86_400;
    let rows = sqlx::query(
        "SELECT s.id, s.recording_path, s.recording_sha256 FROM sessions s \
         WHERE s.ended_at IS NOT NULL AND s.ended_at < $1 AND s.recording_path IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM recording_holds h WHERE h.session_id = s.id) \
         AND NOT EXISTS (SELECT 1 FROM recording_deletions d WHERE d.session_id = s.id AND d.files_gone = 1) \
         ORDER BY s.ended_at LIMIT $2",
    )
    .bind(cutoff)
    .bind(PER_RUN)
    .fetch_all(app.store.pool())
    .await?;
    let store = storage::for_app(app);
    let mut n = 0;
    for r in &rows {
        let id: String = r.try_get(0)?;
        let loc: String = r.try_get(1)?;
        let sha: Option<String> = r.try_get(2)?;
        // The side files the cast names (read before the cast goes).
        let sides: Vec<String> = match storage::reader(&store, &loc) {
            Ok(rd) => cast::side_files(rd).map(|v| v.into_iter().map(|s| s.name).collect()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut tx = app.store.begin_write().await?;
        let claimed = sqlx::query(
            "INSERT INTO recording_deletions (session_id, at, files_gone) VALUES ($1, $2, 0) \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .bind(&id)
        .bind(app.clock.now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            audit::append(
                &mut tx,
                &*app.clock,
                actor,
                &Event::RecordingDeleted {
                    session: id.clone(),
                    recording: loc.clone(),
                    recording_sha256: sha,
                    side_files: sides.clone(),
                    reason: format!("retention: ended more than {days} day(s) ago"),
                },
            )
            .await?;
        }
        tx.commit().await?;
        for name in &sides {
            if let Ok(side) = store.sibling(&loc, name) {
                store.delete(&side).with_context(|| format!("cannot delete {side}"))?;
            }
        }
        store.delete(&loc).with_context(|| format!("cannot delete {loc}"))?;
        sqlx::query("UPDATE recording_deletions SET files_gone = 1 WHERE session_id = $1")
            .bind(&id)
            .execute(app.store.pool())
            .await?;
        sqlx::query("DELETE FROM recording_text WHERE session_id = $1").bind(&id).execute(app.store.pool()).await?;
        n += 1;
    }
    Ok(n)
}

/// Starts the daily retention job of a server (first run a minute after start).
pub fn start(app: App) {
    if app.config.recordings.retain_days == 0 {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(86_400));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !crate::jobs::leader() {
                continue; // another node runs retention
            }
            match expire(&app, "system").await {
                Ok(0) => {}
                Ok(n) => tracing::info!(recordings = n, "retention deleted recordings"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "retention job failed"),
            }
        }
    });
}

/// Puts a session's recording on legal hold.
pub async fn hold(app: &App, actor: &str, session: &str, reason: &str) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        anyhow::bail!("give --reason for the hold");
    }
    let mut tx = app.store.begin_write().await?;
    let n = sqlx::query(
        "INSERT INTO recording_holds (session_id, reason, held_by, at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(session)
    .bind(reason)
    .bind(actor)
    .bind(app.clock.now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        anyhow::bail!("session {session} is already on hold");
    }
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::RecordingHeld { session: session.into(), reason: reason.into(), by: actor.into() },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Lifts a legal hold.
pub async fn unhold(app: &App, actor: &str, session: &str) -> anyhow::Result<()> {
    let mut tx = app.store.begin_write().await?;
    let n = sqlx::query("DELETE FROM recording_holds WHERE session_id = $1")
        .bind(session)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        anyhow::bail!("session {session} is not on hold");
    }
    audit::append(&mut tx, &*app.clock, actor, &Event::RecordingReleased { session: session.into(), by: actor.into() })
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A hold as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    /// Session id.
    pub session: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub by: String,
    /// When (Unix seconds).
    pub at: i64,
}

/// Every hold.
pub async fn holds(app: &App) -> anyhow::Result<Vec<Hold>> {
    let rows = sqlx::query("SELECT session_id, reason, held_by, at FROM recording_holds ORDER BY at")
        .fetch_all(app.store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok(Hold { session: r.try_get(0)?, reason: r.try_get(1)?, by: r.try_get(2)?, at: r.try_get(3)? }))
        .collect()
}

/// Sessions whose recording retention deleted, from the audit chain: session → (time, reason).
pub async fn deleted(store: &crate::store::Store) -> anyhow::Result<HashMap<String, (i64, String)>> {
    let rows = sqlx::query("SELECT at, details FROM audit_events WHERE kind = 'recording.deleted' ORDER BY seq")
        .fetch_all(store.pool())
        .await?;
    let mut out = HashMap::new();
    for r in &rows {
        let at: i64 = r.try_get(0)?;
        let details: String = r.try_get(1)?;
        let d: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
        if let Some(s) = d["session"].as_str() {
            out.insert(s.to_string(), (at, d["reason"].as_str().unwrap_or_default().to_string()));
        }
    }
    Ok(out)
}
