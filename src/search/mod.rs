//! Full-text search over recordings, kept in the store so every gateway on a shared PostgreSQL
//! sees it: SQLite FTS5 or PostgreSQL full-text search (`simple` configuration) behind one
//! interface. Each indexed row is one line of a recording's transcript (reconstructed command
//! lines, output with escape sequences stripped, the exec command, the gateway's notes on
//! transfers) with its offset in seconds.
//!
//! The index is fed off the relay path: `serve` runs [`start`], a task that looks for ended,
//! recorded sessions not yet indexed every few seconds and indexes them from the stored
//! recording in short transactions, so a slow index never holds up a session. A row in
//! `recording_index` claims a session, so several gateways never index one twice.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::Row;

use crate::app::App;
use crate::replay::transcript::{self, Kind};
use crate::storage::{self, RecordingStorage};
use crate::store::Backend;

/// Most lines indexed per recording (the rest is not searchable; replay still shows it).
const MAX_LINES: usize = 200_000;
/// Rows per INSERT statement.
const BATCH: usize = 32;
/// Rows per transaction.
const TX_ROWS: usize = 5000;
/// Most hits a search returns.
pub const MAX_HITS: i64 = 2000;

/// Indexes one recording (replacing what was indexed for it); returns the number of lines.
pub async fn index_session(app: &App, session: &str, locator: &str) -> anyhow::Result<usize> {
    let store = storage::for_app(app);
    let loc = locator.to_string();
    // Read and parse on the blocking pool; lines come back in bounded batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(f64, Kind, String)>>(4);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut n = 0usize;
        let r = storage::reader(&store, &loc)?;
        let res = transcript::lines(r, |_, l| {
            if n >= MAX_LINES {
                return Ok(());
            }
            n += 1;
            batch.push((l.t, l.kind, l.text));
            if batch.len() >= BATCH {
                tx.blocking_send(std::mem::take(&mut batch)).map_err(|_| anyhow::anyhow!("indexing stopped"))?;
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        res.map(|_| ())
    });
    sqlx::query("DELETE FROM recording_text WHERE session_id = $1").bind(session).execute(app.store.pool()).await?;
    let mut total = 0;
    // Rows go in transactions of a few thousand: one commit (and fsync) per row batch would
    // cost more than the parsing, and a long transaction would hold the store's write lock.
    let mut tx = None;
    let mut in_tx = 0;
    while let Some(batch) = rx.recv().await {
        let mut sql = String::from("INSERT INTO recording_text (text, session_id, t, kind) VALUES ");
        for i in 0..batch.len() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
        }
        let mut q = sqlx::query(&sql);
        for (t, kind, text) in &batch {
            q = q.bind(text.clone()).bind(session.to_string()).bind(*t).bind(kind.label());
        }
        if tx.is_none() {
            tx = Some(app.store.pool().begin().await?);
        }
        if let Some(t) = tx.as_mut() {
            q.execute(&mut **t).await?;
        }
        total += batch.len();
        in_tx += batch.len();
        if in_tx >= TX_ROWS {
            if let Some(t) = tx.take() {
                t.commit().await?;
            }
            in_tx = 0;
        }
    }
    if let Some(t) = tx.take() {
        t.commit().await?;
    }
    reader.await.context("indexer panicked")??;
    sqlx::query("UPDATE recording_index SET state = 'done', lines = $1, at = $2 WHERE session_id = $3")
        .bind(total as i64)
        .bind(app.clock.now())
        .bind(session)
        .execute(app.store.pool())
        .await?;
    Ok(total)
}

/// Claims a session for indexing; false when another indexer has it already.
async fn claim(app: &App, session: &str) -> anyhow::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO recording_index (session_id, state, lines, at) VALUES ($1, 'indexing', 0, $2) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(session)
    .bind(app.clock.now())
    .execute(app.store.pool())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ended, recorded sessions not indexed yet (at most `limit`).
async fn pending(app: &App, limit: i64) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT s.id, s.recording_path FROM sessions s WHERE s.ended_at IS NOT NULL AND s.recording_path IS NOT NULL \
         AND s.recording_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM recording_index i WHERE i.session_id = s.id) \
         ORDER BY s.ended_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Indexes what is pending; returns how many recordings.
pub async fn index_pending(app: &App) -> anyhow::Result<usize> {
    let store = storage::for_app(app);
    let mut n = 0;
    loop {
        let todo = pending(app, 50).await?;
        if todo.is_empty() {
            return Ok(n);
        }
        for (id, loc) in todo {
            if !claim(app, &id).await? {
                continue;
            }
            if !store.exists(&loc) {
                // Deleted by retention or missing: nothing to index (audit verify reports it).
                sqlx::query("UPDATE recording_index SET state = 'missing' WHERE session_id = $1")
                    .bind(&id)
                    .execute(app.store.pool())
                    .await?;
                continue;
            }
            if let Err(e) = index_session(app, &id, &loc).await {
                tracing::warn!(session = %id, error = %format!("{e:#}"), "cannot index recording");
                let _ = sqlx::query("UPDATE recording_index SET state = 'failed' WHERE session_id = $1")
                    .bind(&id)
                    .execute(app.store.pool())
                    .await;
            }
            n += 1;
        }
    }
}

/// Starts the indexing task of a server.
pub fn start(app: App) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = index_pending(&app).await {
                tracing::warn!(error = %format!("{e:#}"), "recording indexer");
            }
        }
    });
}

/// Drops the whole index and rebuilds it from the stored recordings.
pub async fn reindex(app: &App) -> anyhow::Result<usize> {
    sqlx::query("DELETE FROM recording_text").execute(app.store.pool()).await?;
    sqlx::query("DELETE FROM recording_index").execute(app.store.pool()).await?;
    index_pending(app).await
}

/// Search filters.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Words (matched as a phrase).
    pub text: String,
    /// Target name glob.
    pub target: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// User organisation.
    pub org: Option<String>,
    /// Sessions started at or after (Unix seconds).
    pub since: Option<i64>,
    /// ... and before.
    pub until: Option<i64>,
    /// End reason (closed, killed, expired, idle, error…).
    pub reason: Option<String>,
}

/// One line that matched.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Seconds into the recording.
    pub offset: f64,
    /// `in`, `out`, `cmd` or `note`.
    pub kind: String,
    /// The line.
    pub text: String,
}

/// A session with hits.
#[derive(Debug, Clone, Serialize)]
pub struct SessionHits {
    /// Session id.
    pub session: String,
    /// User.
    pub user: String,
    /// Organisation.
    pub org: Option<String>,
    /// Target.
    pub target: String,
    /// Start (Unix seconds).
    pub started_at: i64,
    /// How it ended.
    pub end_reason: Option<String>,
    /// Matching lines in time order.
    pub hits: Vec<Hit>,
}

/// The phrase as an FTS5 query (a quoted string: no operators reach FTS5).
fn fts5_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Runs a search; sessions newest first, each with its hits in time order. At most
/// [`MAX_HITS`] lines come back (the most recently indexed ones).
pub async fn search(app: &App, q: &Query) -> anyhow::Result<Vec<SessionHits>> {
    if q.text.trim().is_empty() {
        anyhow::bail!("give words to search for");
    }
    let (from, matcher, needle) = match app.store.backend() {
        Backend::Sqlite => (
            "recording_fts JOIN recording_text r ON r.id = recording_fts.rowid",
            "recording_fts MATCH $1",
            fts5_phrase(q.text.trim()),
        ),
        Backend::Postgres => ("recording_text r", "r.tsv @@ phraseto_tsquery('simple', $1)", q.text.trim().to_string()),
    };
    let mut sql = format!(
        "SELECT r.session_id, r.t, r.kind, r.text, u.name, u.org, tg.name, s.started_at, s.end_reason \
         FROM {from} JOIN sessions s ON s.id = r.session_id LEFT JOIN users u ON u.id = s.user_id \
         LEFT JOIN targets tg ON tg.id = s.target_id WHERE {matcher}"
    );
    let mut n = 1;
    let mut add = |sql: &mut String, cond: &str| {
        n += 1;
        sql.push_str(&format!(" AND {}", cond.replace('?', &format!("${n}"))));
    };
    if q.user.is_some() {
        add(&mut sql, "u.name = ?");
    }
    if q.org.is_some() {
        add(&mut sql, "u.org = ?");
    }
    if q.since.is_some() {
        add(&mut sql, "s.started_at >= ?");
    }
    if q.until.is_some() {
        add(&mut sql, "s.started_at < ?");
    }
    if q.reason.is_some() {
        add(&mut sql, "s.end_reason = ?");
    }
    // Newest indexed lines first: both full-text indexes walk their matches in row order, so
    // the limit stops the walk early even when a common word matches millions of lines.
    let order = match app.store.backend() {
        Backend::Sqlite => "recording_fts.rowid DESC",
        Backend::Postgres => "r.id DESC",
    };
    sql.push_str(&format!(" ORDER BY {order} LIMIT {MAX_HITS}"));
    let mut query = sqlx::query(&sql).bind(needle);
    for v in [&q.user, &q.org].into_iter().flatten() {
        query = query.bind(v.clone());
    }
    for v in [q.since, q.until].into_iter().flatten() {
        query = query.bind(v);
    }
    if let Some(r) = &q.reason {
        query = query.bind(r.clone());
    }
    let rows = query.fetch_all(app.store.pool()).await?;
    let mut out: Vec<SessionHits> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &rows {
        let session: String = r.try_get(0)?;
        let target: String = r.try_get::<Option<String>, _>(6)?.unwrap_or_default();
        if let Some(g) = &q.target {
            if !crate::policy::glob_match(g, &target) {
                continue;
            }
        }
        let hit = Hit { offset: r.try_get(1)?, kind: r.try_get(2)?, text: r.try_get(3)? };
        match at.get(&session) {
            Some(&i) => out[i].hits.push(hit),
            None => {
                at.insert(session.clone(), out.len());
                out.push(SessionHits {
                    session,
                    user: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    org: r.try_get(5)?,
                    target,
                    started_at: r.try_get(7)?,
                    end_reason: r.try_get(8)?,
                    hits: vec![hit],
                });
            }
        }
    }
    for s in &mut out {
        s.hits.sort_by(|a, b| a.offset.total_cmp(&b.offset));
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.session.cmp(&b.session)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_quoted() {
        assert_eq!(fts5_phrase("write_register"), "\"write_register\"");
        assert_eq!(fts5_phrase("a\" OR b"), "\"a\"\" OR b\"");
    }
}
