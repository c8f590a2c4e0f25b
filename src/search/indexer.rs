//! Feeds the recordings index as recordings are written, off the relay path.
//!
//! `serve` runs [`start`], two tasks that read recordings through the storage interface:
//! - **live**: each session this gateway is recording is followed while it runs (a [`Follow`]
//!   reader waits at the end of the cast for more); its lines are written to the store in short
//!   transactions about once a second, so a word typed is searchable a second or two later. The
//!   recorder and the relay never wait for it: the indexer only reads the file the recorder
//!   writes, and a slow index only falls behind.
//! - **ended**: sessions that ended without being followed (recorded on another gateway, more
//!   live sessions than [`MAX_LIVE`], recorded before this gateway started) are indexed from the
//!   stored recording.
//!
//! A row in `recording_index` claims a session (`live`, `indexing`, then `done`, `missing` or
//! `failed`), so several gateways never index one twice. A gateway that restarts gives its own
//! `live` claims back (and on SQLite, where it is the only one, any `indexing` claim), so what a
//! crash interrupted is indexed again from the start.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Row;

use super::follow::Follow;
use crate::app::App;
use crate::replay::transcript::{self, Kind};
use crate::storage::{self, RecordingStorage};
use crate::store::Backend;

/// Most lines indexed per recording (the rest is not searchable; replay still shows it).
const MAX_LINES: usize = 200_000;
/// Rows per INSERT statement.
const BATCH: usize = 32;
/// Most rows held before they are written in one transaction.
const TX_ROWS: usize = 5000;
/// Live sessions followed at once by one gateway. Each holds a thread of the blocking pool that
/// sleeps while its session is quiet; sessions past this are indexed when they end.
pub const MAX_LIVE: usize = 128;
/// How often a follower looks for more of a live recording.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// How long lines of a live session may wait before they are written.
const LIVE_FLUSH: Duration = Duration::from_secs(1);

/// Lines per second a live session is indexed at, at most: an interactive session stays well
/// below it (and is searchable at once); bulk output waits its turn instead of taking CPU from
/// the relays (see docs/PERFORMANCE.md).
const LIVE_LINES_PER_SEC: f64 = 1000.0;

type IndexedLine = (f64, Kind, String);

/// The line limit was reached.
#[derive(Debug)]
struct Enough;

impl std::fmt::Display for Enough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line limit reached")
    }
}

impl std::error::Error for Enough {}

/// Sleeps (on the indexer's own blocking thread) while `lines` since `began` run ahead of
/// [`LIVE_LINES_PER_SEC`].
fn pace(lines: usize, began: Instant) {
    let due = Duration::from_secs_f64(lines as f64 / LIVE_LINES_PER_SEC);
    if let Some(ahead) = due.checked_sub(began.elapsed()) {
        std::thread::sleep(ahead);
    }
}

/// Indexes one recording (replacing what was indexed for it); returns the number of lines.
/// With `live`, the recording is still being written: reading waits at its end until the flag
/// is set (the session has ended), and lines are written at least every [`LIVE_FLUSH`].
pub async fn index_session(
    app: &App,
    session: &str,
    locator: &str,
    live: Option<Arc<AtomicBool>>,
) -> anyhow::Result<usize> {
    if crate::recording::frames::is_frames(locator) {
        return index_rdp(app, session, locator).await;
    }
    let store = storage::for_app(app);
    let loc = locator.to_string();
    let following = live.is_some();
    // Read and parse on the blocking pool; lines come back in bounded batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<IndexedLine>>(4);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let pending: Rc<RefCell<Vec<IndexedLine>>> = Rc::new(RefCell::new(Vec::with_capacity(BATCH)));
        let send = |p: &RefCell<Vec<IndexedLine>>, tx: &tokio::sync::mpsc::Sender<Vec<IndexedLine>>| {
            let batch = std::mem::take(&mut *p.borrow_mut());
            if batch.is_empty() {
                return Ok(());
            }
            tx.blocking_send(batch).map_err(|_| std::io::Error::other("indexing stopped"))
        };
        let raw = store.open(&loc).with_context(|| format!("cannot read recording {loc}"))?;
        let src: Box<dyn Read> = match live {
            Some(ended) => {
                let (p, t) = (pending.clone(), tx.clone());
                Box::new(Follow::new(raw, ended, move || send(&p, &t), FOLLOW_POLL))
            }
            None => raw,
        };
        let mut n = 0usize;
        let began = Instant::now();
        let res = transcript::lines(BufReader::with_capacity(256 * 1024, src), |_, l| {
            if n >= MAX_LINES {
                // Enough: the rest is not parsed at all (replay still shows it).
                return Err(Enough.into());
            }
            n += 1;
            pending.borrow_mut().push((l.t, l.kind, l.text));
            if pending.borrow().len() >= BATCH {
                send(&pending, &tx)?;
                if following {
                    pace(n, began);
                }
            }
            Ok(())
        });
        send(&pending, &tx)?;
        match res {
            Err(e) if e.is::<Enough>() => Ok(()),
            other => other.map(|_| ()),
        }
    });
    sqlx::query("DELETE FROM recording_text WHERE session_id = $1").bind(session).execute(app.store.pool()).await?;
    let mut total = 0;
    // Lines are written a few thousand per transaction (one commit per line would cost more
    // than the parsing; a longer transaction would hold the store's write lock), and for a live
    // session also whenever they have waited a second, so no transaction stays open while the
    // vendor thinks.
    let mut held: Vec<IndexedLine> = Vec::new();
    let mut since = Instant::now();
    loop {
        let next = if following && !held.is_empty() {
            match tokio::time::timeout_at((since + LIVE_FLUSH).into(), rx.recv()).await {
                Ok(b) => b,
                Err(_) => {
                    total += write_lines(app, session, std::mem::take(&mut held)).await?;
                    since = Instant::now();
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(batch) = next else { break };
        if held.is_empty() {
            since = Instant::now();
        }
        held.extend(batch);
        if held.len() >= TX_ROWS || (following && since.elapsed() >= LIVE_FLUSH) {
            total += write_lines(app, session, std::mem::take(&mut held)).await?;
            since = Instant::now();
        }
    }
    total += write_lines(app, session, held).await?;
    reader.await.context("indexer panicked")??;
    sqlx::query("UPDATE recording_index SET state = 'done', lines = $1, at = $2 WHERE session_id = $3")
        .bind(total as i64)
        .bind(app.clock.now())
        .bind(session)
        .execute(app.store.pool())
        .await?;
    Ok(total)
}

/// Indexes an ended RDP session: the lines of its key log (what the vendor typed) as input,
/// and its channel log (clipboard text, file names, drive paths) as notes.
async fn index_rdp(app: &App, session: &str, locator: &str) -> anyhow::Result<usize> {
    let store = storage::for_app(app);
    let loc = locator.to_string();
    let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<IndexedLine>> {
        // Two streaming passes (keys, then channels): one record in memory at a time.
        let open = || store.open(&loc).with_context(|| format!("cannot read recording {loc}"));
        let (header, mut records) = crate::recording::frames::Records::open(open()?)?;
        let keys = crate::replay::rdp_keys::key_log(&header, records.by_ref());
        // A cut last record (a gateway killed mid-write) leaves the whole ones indexed.
        records.end()?;
        let mut lines: Vec<IndexedLine> =
            keys.into_iter().filter(|l| l.kind == "keys").take(MAX_LINES).map(|l| (l.t, Kind::Input, l.text)).collect();
        // What went through the clipboard and drive channels: clipboard text (a line per
        // line), file names and drive paths, as gateway notes.
        let (_, mut records) = crate::recording::frames::Records::open(open()?)?;
        let channels = crate::replay::rdp_channels::channel_log(&header, records.by_ref());
        records.end()?;
        for c in channels {
            for text in crate::replay::rdp_channels::search_lines(&c) {
                if lines.len() >= MAX_LINES {
                    break;
                }
                lines.push((c.t, Kind::Note, text));
            }
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(lines)
    })
    .await
    .context("indexer panicked")??;
    sqlx::query("DELETE FROM recording_text WHERE session_id = $1").bind(session).execute(app.store.pool()).await?;
    let mut total = 0;
    let mut it = lines.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<IndexedLine> = it.by_ref().take(TX_ROWS).collect();
        total += write_lines(app, session, chunk).await?;
    }
    sqlx::query("UPDATE recording_index SET state = 'done', lines = $1, at = $2 WHERE session_id = $3")
        .bind(total as i64)
        .bind(app.clock.now())
        .bind(session)
        .execute(app.store.pool())
        .await?;
    Ok(total)
}

/// Writes lines of `session` in one transaction (and renews its claim); returns how many.
async fn write_lines(app: &App, session: &str, lines: Vec<IndexedLine>) -> anyhow::Result<usize> {
    if lines.is_empty() {
        return Ok(0);
    }
    let mut tx = app.store.pool().begin().await?;
    for chunk in lines.chunks(BATCH) {
        let mut sql = String::from("INSERT INTO recording_text (text, session_id, t, kind) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
        }
        let mut q = sqlx::query(&sql);
        for (t, kind, text) in chunk {
            q = q.bind(text.clone()).bind(session.to_string()).bind(*t).bind(kind.label());
        }
        q.execute(&mut *tx).await?;
    }
    sqlx::query("UPDATE recording_index SET lines = lines + $1, at = $2 WHERE session_id = $3")
        .bind(lines.len() as i64)
        .bind(app.clock.now())
        .bind(session)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(lines.len())
}

/// Claims a session for indexing (`state` is `live` or `indexing`); false when another
/// indexer has it already.
async fn claim(app: &App, session: &str, state: &str) -> anyhow::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO recording_index (session_id, state, lines, at) VALUES ($1, $2, 0, $3) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(session)
    .bind(state)
    .bind(app.clock.now())
    .execute(app.store.pool())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives a claim back with what was indexed under it, so the session is indexed again.
async fn release(app: &App, session: &str) -> anyhow::Result<()> {
    let mut tx = app.store.pool().begin().await?;
    sqlx::query("DELETE FROM recording_text WHERE session_id = $1").bind(session).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM recording_index WHERE session_id = $1").bind(session).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Claims a crash left behind: this gateway's live ones, and on SQLite (one gateway) every
/// unfinished one.
async fn release_stale(app: &App) -> anyhow::Result<usize> {
    let sql = match app.store.backend() {
        Backend::Sqlite => "SELECT session_id FROM recording_index WHERE state IN ('live', 'indexing')",
        Backend::Postgres => {
            "SELECT i.session_id FROM recording_index i JOIN sessions s ON s.id = i.session_id \
             WHERE i.state = 'live' AND s.node_id = $1"
        }
    };
    let mut q = sqlx::query(sql);
    if app.store.backend() == Backend::Postgres {
        q = q.bind(app.node_id.to_string());
    }
    let ids: Vec<String> =
        q.fetch_all(app.store.pool()).await?.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    for id in &ids {
        release(app, id).await?;
    }
    Ok(ids.len())
}

/// Ended, recorded sessions not indexed yet (at most `limit`).
async fn pending(app: &App, limit: i64) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT s.id, s.recording_path FROM sessions s WHERE s.ended_at IS NOT NULL AND s.recording_path IS NOT NULL AND s.protocol IN ('ssh', 'rdp') \
         AND s.recording_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM recording_index i WHERE i.session_id = s.id) \
         ORDER BY s.ended_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Live sessions this gateway records that nobody indexes yet (at most `limit`).
async fn live_unclaimed(app: &App, limit: usize) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT s.id, s.recording_path FROM sessions s WHERE s.ended_at IS NULL AND s.recording_path IS NOT NULL AND s.protocol = 'ssh' \
         AND s.node_id = $1 AND NOT EXISTS (SELECT 1 FROM recording_index i WHERE i.session_id = s.id) \
         ORDER BY s.started_at LIMIT $2",
    )
    .bind(app.node_id.to_string())
    .bind(limit as i64)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Which of `ids` have ended.
async fn ended_among(app: &App, ids: &[&String]) -> anyhow::Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT id FROM sessions WHERE ended_at IS NOT NULL AND id IN ({})", marks.join(","));
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id.to_string());
    }
    q.fetch_all(app.store.pool()).await?.iter().map(|r| Ok(r.try_get(0)?)).collect()
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
            if !claim(app, &id, "indexing").await? {
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
            if let Err(e) = index_session(app, &id, &loc, None).await {
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

/// One pass of the live indexer: flags followed sessions that ended, starts following new ones.
async fn follow_pass(
    app: &App,
    followed: &mut HashMap<String, Arc<AtomicBool>>,
    finished: &tokio::sync::mpsc::Sender<String>,
) -> anyhow::Result<()> {
    let ids: Vec<&String> = followed.iter().filter(|(_, f)| !f.load(Ordering::Relaxed)).map(|(id, _)| id).collect();
    for id in ended_among(app, &ids).await? {
        if let Some(f) = followed.get(&id) {
            f.store(true, Ordering::Release);
        }
    }
    let room = MAX_LIVE.saturating_sub(followed.len());
    if room == 0 {
        return Ok(());
    }
    for (id, loc) in live_unclaimed(app, room).await? {
        // (A `recordings reindex` drops the claims of sessions still followed here.)
        if followed.contains_key(&id) || !claim(app, &id, "live").await? {
            continue;
        }
        let ended = Arc::new(AtomicBool::new(false));
        followed.insert(id.clone(), ended.clone());
        let (app, finished) = (app.clone(), finished.clone());
        tokio::spawn(async move {
            if let Err(e) = index_session(&app, &id, &loc, Some(ended)).await {
                // Give the claim back: the session is indexed again, from the start, once it ends.
                tracing::warn!(session = %id, error = %format!("{e:#}"), "cannot index live recording");
                if let Err(e) = release(&app, &id).await {
                    tracing::warn!(session = %id, error = %format!("{e:#}"), "cannot release index claim");
                }
            }
            let _ = finished.send(id).await;
        });
    }
    Ok(())
}

/// Starts the indexing tasks of a server.
pub fn start(app: App) {
    tokio::spawn(async move {
        match release_stale(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "unfinished index claims released; indexed again"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot release unfinished index claims"),
        }
        let live_app = app.clone();
        tokio::spawn(async move {
            if !live_app.config.recordings.index_live {
                return;
            }
            let mut followed: HashMap<String, Arc<AtomicBool>> = HashMap::new();
            let (finished, mut done) = tokio::sync::mpsc::channel::<String>(MAX_LIVE);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                while let Ok(id) = done.try_recv() {
                    followed.remove(&id);
                }
                if let Err(e) = follow_pass(&live_app, &mut followed, &finished).await {
                    tracing::warn!(error = %format!("{e:#}"), "live recording indexer");
                }
            }
        });
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

/// Drops the whole index and rebuilds it from the stored recordings (live sessions are
/// indexed again by their gateway's follower, or when they end).
pub async fn reindex(app: &App) -> anyhow::Result<usize> {
    sqlx::query("DELETE FROM recording_text").execute(app.store.pool()).await?;
    sqlx::query("DELETE FROM recording_index").execute(app.store.pool()).await?;
    index_pending(app).await
}
