//! API tokens for integrations (ticketing, ITSM): `penstock token create --user U --expires 90d`.
//! A token acts as its user with that user's role; only its SHA-256 is stored; it stops working
//! when revoked, expired, or when its user is disabled or expires. Nothing here knows HTTP.

use serde::Serialize;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::console_sessions::token_hash;
use crate::error::{invalid, Error, Result};
use crate::secret::Secret;
use crate::users::{self, User};

/// Prefix of every token, so scanners and people recognise one.
pub const PREFIX: &str = "pst_";

/// A stored token (without its value).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// Id.
    pub id: i64,
    /// User it acts as.
    pub user: String,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Expires (Unix seconds).
    pub expires_at: i64,
    /// Revoked.
    pub revoked_at: Option<i64>,
    /// Who made it.
    pub created_by: String,
}

/// Makes a token for `user` valid for `secs`; returns its id and value (shown once).
pub async fn create(app: &App, actor: &str, user: &str, secs: i64) -> Result<(i64, Secret)> {
    let u = users::get(app, user).await?;
    if secs <= 0 || secs > 366 * 86400 {
        return Err(invalid("a token must expire within a year"));
    }
    let value = Secret::from_string(format!("{PREFIX}{}", crate::auth::random_token(40)));
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(token_hash(value.expose()))
    .bind(u.id)
    .bind(now)
    .bind(now + secs)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::TokenCreated { token_id: id, user: u.name.clone(), expires_at: now + secs, by: actor.into() },
    )
    .await?;
    tx.commit().await?;
    Ok((id, value))
}

/// All tokens, newest first.
pub async fn list(app: &App) -> Result<Vec<TokenRow>> {
    let rows = sqlx::query(
        "SELECT k.id, u.name, k.created_at, k.expires_at, k.revoked_at, k.created_by FROM api_tokens k \
         JOIN users u ON u.id = k.user_id ORDER BY k.id DESC",
    )
    .fetch_all(app.store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenRow {
                id: r.try_get(0)?,
                user: r.try_get(1)?,
                created_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                revoked_at: r.try_get(4)?,
                created_by: r.try_get(5)?,
            })
        })
        .collect()
}

/// Revokes a token.
pub async fn revoke(app: &App, actor: &str, id: i64) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    let row = sqlx::query(
        "SELECT u.name FROM api_tokens k JOIN users u ON u.id = k.user_id WHERE k.id = $1 AND k.revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Err(Error::NotFound(format!("no unrevoked token {id}"))) };
    let user: String = row.try_get(0)?;
    sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
        .bind(app.clock.now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::TokenRevoked { token_id: id, user, by: actor.into() }).await?;
    tx.commit().await?;
    Ok(())
}

/// The user a presented token acts as, if it is known, unrevoked, unexpired and its user may
/// log in now.
pub async fn verify(app: &App, presented: &str) -> Result<Option<User>> {
    if !presented.starts_with(PREFIX) || presented.len() > 100 {
        return Ok(None);
    }
    let now = app.clock.now();
    let row =
        sqlx::query("SELECT user_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2")
            .bind(token_hash(presented.as_bytes()))
            .bind(now)
            .fetch_optional(app.store.pool())
            .await?;
    let Some(row) = row else { return Ok(None) };
    let user = users::by_id(app, row.try_get(0)?).await?;
    Ok(user.usable_at(now).then_some(user))
}
