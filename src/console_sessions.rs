//! Console sessions: what a web login opens. The browser holds a random token; the store holds
//! only its SHA-256, the session's CSRF token, and when it was last used. Sessions end on logout,
//! after the idle timeout, after the maximum age, or when their user is disabled or expires.
//! Nothing here knows HTTP.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::users::{self, User};

/// A live console session (without its token).
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleSession {
    /// Row id (shown to its user; not a credential).
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The CSRF token every state change from this session must carry.
    #[serde(skip)]
    pub csrf: String,
    /// Client address at login.
    pub source: String,
    /// Browser at login (truncated).
    pub user_agent: String,
    /// Login time.
    pub created_at: i64,
    /// Last request.
    pub last_seen: i64,
}

/// SHA-256 hex of a token (cookie values and API tokens are random and long, so a plain hash
/// suffices; the value itself is never stored).
pub fn token_hash(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// Constant-time equality of two strings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Opens a session for `user` (who has passed both factors); returns the session and the token
/// to hand to the browser (shown once, never stored). Audited as `web.login`.
pub async fn open(app: &App, user: &User, source: &str, user_agent: &str) -> Result<(ConsoleSession, Secret)> {
    let token = Secret::from_string(crate::auth::random_token(43));
    let csrf = crate::auth::random_token(32);
    let ua: String = user_agent.chars().filter(|c| !c.is_control()).take(120).collect();
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO web_sessions (token_hash, user_id, csrf, source, user_agent, created_at, last_seen) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
    )
    .bind(token_hash(token.expose()))
    .bind(user.id)
    .bind(&csrf)
    .bind(source)
    .bind(&ua)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    audit::append(
        &mut tx,
        &*app.clock,
        &user.name,
        &Event::WebLogin { user: user.name.clone(), source: source.into(), session: id },
    )
    .await?;
    tx.commit().await?;
    let s = ConsoleSession {
        id,
        user_id: user.id,
        csrf,
        source: source.into(),
        user_agent: ua,
        created_at: now,
        last_seen: now,
    };
    Ok((s, token))
}

const COLUMNS: &str = "id, user_id, csrf, source, user_agent, created_at, last_seen";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ConsoleSession> {
    Ok(ConsoleSession {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        csrf: r.try_get(2)?,
        source: r.try_get(3)?,
        user_agent: r.try_get(4)?,
        created_at: r.try_get(5)?,
        last_seen: r.try_get(6)?,
    })
}

/// The live session a browser token belongs to, with its user; `None` for an unknown, ended,
/// idle or too old session, or a user who may no longer log in. Marks the session as used.
pub async fn resume(app: &App, token: &str) -> Result<Option<(ConsoleSession, User)>> {
    let now = app.clock.now();
    let web = &app.config.web;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM web_sessions WHERE token_hash = $1 AND ended_at IS NULL AND last_seen > $2 AND created_at > $3"
    ))
    .bind(token_hash(token.as_bytes()))
    .bind(now - web.idle_timeout_secs)
    .bind(now - web.session_max_secs)
    .fetch_optional(app.store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let s = from_row(&row)?;
    let user = users::by_id(app, s.user_id).await?;
    if !user.usable_at(now) {
        return Ok(None);
    }
    // One write at most every 15 s per session keeps the store's write lock free.
    if now - s.last_seen >= 15 {
        let mut tx = app.store.begin_write().await?;
        sqlx::query("UPDATE web_sessions SET last_seen = $1 WHERE id = $2 AND ended_at IS NULL")
            .bind(now)
            .bind(s.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(Some((s, user)))
}

/// `user`'s live sessions, newest first.
pub async fn list(app: &App, user: &User) -> Result<Vec<ConsoleSession>> {
    let now = app.clock.now();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM web_sessions WHERE user_id = $1 AND ended_at IS NULL AND last_seen > $2 AND created_at > $3 \
         ORDER BY id DESC LIMIT 100"
    ))
    .bind(user.id)
    .bind(now - app.config.web.idle_timeout_secs)
    .bind(now - app.config.web.session_max_secs)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Ends one of `user`'s sessions (`reason`: `logout`, `ended-by-user`). Audited as `web.logout`.
pub async fn end(app: &App, user: &User, id: i64, reason: &str) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    let n = sqlx::query("UPDATE web_sessions SET ended_at = $1 WHERE id = $2 AND user_id = $3 AND ended_at IS NULL")
        .bind(app.clock.now())
        .bind(id)
        .bind(user.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::NotFound(format!("no open console session {id}")));
    }
    audit::append(
        &mut tx,
        &*app.clock,
        &user.name,
        &Event::WebLogout { user: user.name.clone(), session: id, reason: reason.into(), by: user.name.clone() },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Ends every open session of `user` ("log out everywhere"); returns how many.
pub async fn end_all(app: &App, user: &User) -> Result<usize> {
    let mut tx = app.store.begin_write().await?;
    let ids: Vec<i64> = sqlx::query("SELECT id FROM web_sessions WHERE user_id = $1 AND ended_at IS NULL")
        .bind(user.id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    sqlx::query("UPDATE web_sessions SET ended_at = $1 WHERE user_id = $2 AND ended_at IS NULL")
        .bind(app.clock.now())
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    for id in &ids {
        audit::append(
            &mut tx,
            &*app.clock,
            &user.name,
            &Event::WebLogout {
                user: user.name.clone(),
                session: *id,
                reason: "logout-all".into(),
                by: user.name.clone(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ids.len())
}
