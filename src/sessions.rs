//! Session rows: who reached what, when, how much moved, how it ended, and its recording.

use serde::Serialize;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::error::{invalid, Error, Result};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client or target closed it.
    Closed,
    /// `session kill` or a revoke.
    Killed,
    /// The grant ran out (or its window closed).
    Expired,
    /// No data either way for the policy's idle timeout.
    Idle,
    /// Something failed.
    Error,
    /// The gateway stopped without closing it (closed when it started again).
    Interrupted,
    /// Its gateway stopped heartbeating (closed by another node of the same store).
    NodeLost,
}

impl EndReason {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Killed => "killed",
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Error => "error",
            EndReason::Interrupted => "interrupted",
            EndReason::NodeLost => "node_lost",
        }
    }
}

/// A session as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// Id (32 hex digits).
    pub id: String,
    /// User name.
    pub user: String,
    /// Target name.
    pub target: String,
    /// Client address.
    pub client_addr: String,
    /// Start (Unix seconds).
    pub started_at: i64,
    /// End.
    pub ended_at: Option<i64>,
    /// Bytes from the client to the target.
    pub bytes_up: i64,
    /// Bytes from the target to the client.
    pub bytes_down: i64,
    /// closed / killed / expired / idle / error / interrupted; none while live.
    pub end_reason: Option<String>,
    /// Recording file.
    pub recording_path: Option<String>,
    /// SHA-256 of the recording.
    pub recording_sha256: Option<String>,
    /// Grant it runs under.
    pub grant_id: Option<i64>,
    /// Front end: `ssh` or `rdp`.
    pub protocol: String,
}

/// A new random session id.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// What is known when a session starts.
#[derive(Debug, Clone)]
pub struct Start<'a> {
    /// Session id.
    pub id: &'a str,
    /// User.
    pub user_id: i64,
    /// User name.
    pub user: &'a str,
    /// Target.
    pub target_id: i64,
    /// Target name.
    pub target: &'a str,
    /// Grant.
    pub grant_id: i64,
    /// Client address.
    pub client_addr: &'a str,
    /// Recording file, when recorded.
    pub recording_path: Option<&'a str>,
    /// Front end: `ssh` or `rdp`.
    pub protocol: &'a str,
}

/// Writes the row and the audit event.
pub async fn start(app: &App, s: &Start<'_>) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, target_id, grant_id, client_addr, started_at, recording_path, node_id, protocol) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.id)
    .bind(s.user_id)
    .bind(s.target_id)
    .bind(s.grant_id)
    .bind(s.client_addr)
    .bind(app.clock.now())
    .bind(s.recording_path.map(str::to_string))
    .bind((!app.node_id.is_empty()).then(|| app.node_id.to_string()))
    .bind(s.protocol)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        &*app.clock,
        s.user,
        &Event::SessionStarted {
            session: s.id.into(),
            user: s.user.into(),
            target: s.target.into(),
            source: s.client_addr.into(),
            grant_id: s.grant_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Updates the byte counters of a live session.
pub async fn update_bytes(app: &App, id: &str, up: i64, down: i64) -> Result<()> {
    sqlx::query("UPDATE sessions SET bytes_up = $1, bytes_down = $2 WHERE id = $3")
        .bind(up)
        .bind(down)
        .bind(id)
        .execute(app.store.pool())
        .await?;
    Ok(())
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct End {
    /// Why.
    pub reason: EndReason,
    /// Bytes client → target.
    pub bytes_up: i64,
    /// Bytes target → client.
    pub bytes_down: i64,
    /// Recording file.
    pub recording_path: Option<String>,
    /// Its SHA-256.
    pub recording_sha256: Option<String>,
}

/// Closes the row and audits the end.
pub async fn end(app: &App, id: &str, actor: &str, e: &End) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    sqlx::query(
        "UPDATE sessions SET ended_at = $1, end_reason = $2, bytes_up = $3, bytes_down = $4, recording_sha256 = $5 WHERE id = $6",
    )
    .bind(app.clock.now())
    .bind(e.reason.as_str())
    .bind(e.bytes_up)
    .bind(e.bytes_down)
    .bind(e.recording_sha256.clone())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::SessionEnded {
            session: id.into(),
            reason: e.reason.as_str().into(),
            bytes_up: e.bytes_up,
            bytes_down: e.bytes_down,
            recording: e.recording_path.clone(),
            recording_sha256: e.recording_sha256.clone(),
        },
    )
    .await?;
    tx.commit().await?;
    crate::metrics::count_session_end(e.reason.as_str(), e.bytes_up, e.bytes_down);
    Ok(())
}

/// Records a file moved by scp/sftp.
pub async fn add_transfer(
    app: &App,
    actor: &str,
    session: &str,
    direction: &str,
    path: &str,
    size: i64,
    sha256: &str,
) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    sqlx::query(
        "INSERT INTO session_transfers (session_id, direction, path, size, sha256, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session)
    .bind(direction)
    .bind(path)
    .bind(size)
    .bind(sha256)
    .bind(app.clock.now())
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::FileTransferred {
            session: session.into(),
            direction: direction.into(),
            path: path.into(),
            size,
            sha256: sha256.into(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether a kill was requested for a live session (or it vanished).
pub async fn kill_requested(app: &App, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT kill_requested FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(app.store.pool())
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>(0)? != 0,
        None => true,
    })
}

/// Asks the server running a session to end it; returns the full id.
pub async fn request_kill(app: &App, actor: &str, id_or_prefix: &str) -> Result<String> {
    if id_or_prefix.len() < 4 || !id_or_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("invalid session id {id_or_prefix:?}: give at least 4 hex digits")));
    }
    let rows = sqlx::query("SELECT id, ended_at FROM sessions WHERE id LIKE $1 LIMIT 2")
        .bind(format!("{}%", id_or_prefix.to_ascii_lowercase()))
        .fetch_all(app.store.pool())
        .await?;
    let (id, ended): (String, Option<i64>) = match rows.as_slice() {
        [] => return Err(Error::NotFound(format!("unknown session {id_or_prefix:?}"))),
        [r] => (r.try_get(0)?, r.try_get(1)?),
        _ => return Err(invalid(format!("session prefix {id_or_prefix:?} is ambiguous"))),
    };
    if ended.is_some() {
        return Err(invalid(format!("session {id} has already ended")));
    }
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE sessions SET kill_requested = 1 WHERE id = $1").bind(&id).execute(&mut *tx).await?;
    crate::signals::announce(&mut tx, app.store.backend(), "kill").await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::SessionKillRequested { session: id.clone(), by: actor.into() })
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// A live session whose access ends soon (see [`crate::live::ending_message`]).
#[derive(Debug, Clone, Serialize)]
pub struct EndingSoon {
    /// Session id.
    pub session: String,
    /// Target name.
    pub target: String,
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// When the grant ends (Unix seconds).
    pub ends_at: i64,
    /// Seconds left.
    pub seconds_left: i64,
    /// The notice's text.
    pub message: String,
}

/// The live sessions of `user_id`, on any gateway, whose grant ends within the first notice's
/// time: what the web console shows its vendor (the session's own channel gets the same
/// notices from `live::Registry`).
pub async fn ending_soon(app: &App, user_id: i64) -> Result<Vec<EndingSoon>> {
    let now = app.clock.now();
    let rows = sqlx::query(
        "SELECT s.id, t.name, s.protocol, g.valid_until FROM sessions s JOIN grants g ON g.id = s.grant_id \
         LEFT JOIN targets t ON t.id = s.target_id WHERE s.user_id = $1 AND s.ended_at IS NULL \
         AND g.revoked_at IS NULL AND g.valid_until <= $2 ORDER BY g.valid_until, s.id LIMIT 100",
    )
    .bind(user_id)
    .bind(now + crate::live::FIRST_NOTICE_SECS)
    .fetch_all(app.store.pool())
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let ends_at: i64 = r.try_get(3)?;
        let Some(message) = crate::live::ending_message(ends_at, now) else { continue };
        out.push(EndingSoon {
            session: r.try_get(0)?,
            target: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            protocol: r.try_get(2)?,
            ends_at,
            seconds_left: (ends_at - now).max(0),
            message,
        });
    }
    Ok(out)
}

/// Sessions, newest first.
pub async fn list(app: &App, live_only: bool) -> Result<Vec<SessionRow>> {
    select(app, if live_only { "WHERE s.ended_at IS NULL" } else { "" }, &[], None).await
}

/// One session by its full id.
pub async fn get(app: &App, id: &str) -> Result<Option<SessionRow>> {
    Ok(select(app, "WHERE s.id = $1", &[id], None).await?.into_iter().next())
}

/// The latest `limit` sessions of a user on a target, newest first.
pub async fn recent(app: &App, user_id: i64, target_id: i64, limit: i64) -> Result<Vec<SessionRow>> {
    let sql =
        format!("{SESSION_SELECT} WHERE s.user_id = $1 AND s.target_id = $2 ORDER BY s.started_at DESC, s.id LIMIT $3");
    let rows = sqlx::query(&sql).bind(user_id).bind(target_id).bind(limit).fetch_all(app.store.pool()).await?;
    rows.iter().map(session_from_row).collect()
}

const SESSION_SELECT: &str =
    "SELECT s.id, u.name, t.name, s.client_addr, s.started_at, s.ended_at, s.bytes_up, s.bytes_down, \
    s.end_reason, s.recording_path, s.recording_sha256, s.grant_id, s.protocol FROM sessions s \
    LEFT JOIN users u ON u.id = s.user_id LEFT JOIN targets t ON t.id = s.target_id";

async fn select(app: &App, filter: &str, binds: &[&str], limit: Option<i64>) -> Result<Vec<SessionRow>> {
    let sql = format!(
        "{SESSION_SELECT} {filter} ORDER BY s.started_at DESC, s.id{}",
        limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default()
    );
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(*b);
    }
    let rows = q.fetch_all(app.store.pool()).await?;
    rows.iter().map(session_from_row).collect()
}

fn session_from_row(r: &sqlx::any::AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get(0)?,
        user: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        target: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        client_addr: r.try_get(3)?,
        started_at: r.try_get(4)?,
        ended_at: r.try_get(5)?,
        bytes_up: r.try_get(6)?,
        bytes_down: r.try_get(7)?,
        end_reason: r.try_get(8)?,
        recording_path: r.try_get(9)?,
        recording_sha256: r.try_get(10)?,
        grant_id: r.try_get(11)?,
        protocol: r.try_get(12)?,
    })
}

/// What the auditor's session list filters on (all optional; text fields match exactly).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// User name.
    pub user: Option<String>,
    /// The user's organisation.
    pub org: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// Started at or after (Unix seconds).
    pub since: Option<i64>,
    /// Started before.
    pub until: Option<i64>,
    /// End reason (`closed`, `killed`, …; `live` for sessions still running).
    pub reason: Option<String>,
    /// Front end (`ssh`, `rdp`).
    pub protocol: Option<String>,
}

/// Sessions matching `f`, newest first, `limit` of them after skipping `offset`.
pub async fn find(app: &App, f: &Filter, offset: i64, limit: i64) -> Result<Vec<SessionRow>> {
    enum B<'a> {
        S(&'a str),
        I(i64),
    }
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<B> = Vec::new();
    for (col, v) in [("u.name", &f.user), ("u.org", &f.org), ("t.name", &f.target), ("s.protocol", &f.protocol)] {
        if let Some(v) = v {
            binds.push(B::S(v));
            conds.push(format!("{col} = ${}", binds.len()));
        }
    }
    match f.reason.as_deref() {
        Some("live") => conds.push("s.ended_at IS NULL".into()),
        Some(r) => {
            binds.push(B::S(r));
            conds.push(format!("s.end_reason = ${}", binds.len()));
        }
        None => {}
    }
    if let Some(t) = f.since {
        binds.push(B::I(t));
        conds.push(format!("s.started_at >= ${}", binds.len()));
    }
    if let Some(t) = f.until {
        binds.push(B::I(t));
        conds.push(format!("s.started_at < ${}", binds.len()));
    }
    let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    let sql = format!(
        "{SESSION_SELECT} {filter} ORDER BY s.started_at DESC, s.id LIMIT {} OFFSET {}",
        limit.clamp(1, 1000),
        offset.max(0)
    );
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = match b {
            B::S(s) => q.bind(s),
            B::I(i) => q.bind(i),
        };
    }
    let rows = q.fetch_all(app.store.pool()).await?;
    rows.iter().map(session_from_row).collect()
}
