//! Access: grants that let a user reach a target for a bounded time.

pub mod requests;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::error::{invalid, Error, Result};

/// A time-boxed permission for one user on one target.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Grant {
    /// Row id.
    pub id: i64,
    /// User.
    pub user_id: i64,
    /// Target.
    pub target_id: i64,
    /// Start (Unix seconds).
    pub valid_from: i64,
    /// End (Unix seconds, exclusive).
    pub valid_until: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Who issued it.
    pub created_by: String,
}

impl Grant {
    /// Whether the grant admits a session at `now`.
    pub fn live_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.valid_from <= now && now < self.valid_until
    }
}

const COLUMNS: &str = "id, user_id, target_id, valid_from, valid_until, revoked_at, created_by";

fn from_row(r: &AnyRow) -> Result<Grant> {
    Ok(Grant {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        target_id: r.try_get(2)?,
        valid_from: r.try_get(3)?,
        valid_until: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        created_by: r.try_get(6)?,
    })
}

/// Issues a grant directly (admin), audited.
pub async fn issue(
    app: &App,
    actor: &str,
    user: &str,
    target: &str,
    valid_from: i64,
    valid_until: i64,
) -> Result<Grant> {
    let u = crate::users::get(app, user).await?;
    let t = crate::targets::get(app, target).await?;
    if valid_until <= valid_from {
        return Err(invalid("a grant must end after it starts"));
    }
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO grants (user_id, target_id, valid_from, valid_until, revoked_at, created_by, created_at) \
         VALUES ($1, $2, $3, $4, NULL, $5, $6) RETURNING id",
    )
    .bind(u.id)
    .bind(t.id)
    .bind(valid_from)
    .bind(valid_until)
    .bind(actor)
    .bind(app.clock.now())
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::GrantIssued { grant_id: id, user: u.name, target: t.name, valid_from, valid_until, by: actor.into() },
    )
    .await?;
    tx.commit().await?;
    Ok(Grant {
        id,
        user_id: u.id,
        target_id: t.id,
        valid_from,
        valid_until,
        revoked_at: None,
        created_by: actor.into(),
    })
}

/// The live grant for (user, target) at `now` that lasts longest, if any.
pub async fn live_grant(app: &App, user_id: i64, target_id: i64, now: i64) -> Result<Option<Grant>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM grants WHERE user_id = $1 AND target_id = $2 AND revoked_at IS NULL \
         AND valid_from <= $3 AND valid_until > $3 ORDER BY valid_until DESC LIMIT 1"
    ))
    .bind(user_id)
    .bind(target_id)
    .bind(now)
    .fetch_optional(app.store.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// A grant by id.
pub async fn get(app: &App, id: i64) -> Result<Grant> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM grants WHERE id = $1"))
        .bind(id)
        .fetch_optional(app.store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()?.ok_or_else(|| Error::NotFound(format!("unknown grant {id}")))
}

/// Grants, newest first; only those of `user_id` when given.
pub async fn list(app: &App, user_id: Option<i64>) -> Result<Vec<Grant>> {
    let rows = match user_id {
        Some(u) => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM grants WHERE user_id = $1 ORDER BY id DESC"))
                .bind(u)
                .fetch_all(app.store.pool())
                .await?
        }
        None => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM grants ORDER BY id DESC")).fetch_all(app.store.pool()).await?
        }
    };
    rows.iter().map(from_row).collect()
}

/// Revokes a grant; live sessions under it notice within their poll interval.
pub async fn revoke(app: &App, actor: &str, id: i64) -> Result<()> {
    let g = get(app, id).await?;
    let now = app.clock.now();
    if g.revoked_at.is_some() || g.valid_until <= now {
        return Err(invalid(format!("grant {id} has already ended")));
    }
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE grants SET revoked_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *tx).await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::GrantRevoked { grant_id: id, by: actor.into() }).await?;
    crate::signals::announce(&mut tx, app.store.backend(), "revoke").await?;
    tx.commit().await?;
    Ok(())
}

/// Formats seconds as `2h`, `1h30m`, `45s`.
pub fn fmt_duration(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{u}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Parses a duration such as `90m`, `2h`, `1d`, `45s` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || invalid(format!("invalid duration {s:?}: use e.g. 30m, 2h, 1h30m, 1d"));
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: i64 = num.parse().map_err(|_| bad())?;
            num.clear();
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(bad()),
            };
            total = total.checked_add(n.checked_mul(unit).ok_or_else(bad)?).ok_or_else(bad)?;
        }
    }
    if !num.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("45s").unwrap(), 45);
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn liveness() {
        let g = Grant {
            id: 1,
            user_id: 1,
            target_id: 1,
            valid_from: 100,
            valid_until: 200,
            revoked_at: None,
            created_by: "x".into(),
        };
        assert!(!g.live_at(99));
        assert!(g.live_at(100));
        assert!(!g.live_at(200));
        assert!(!Grant { revoked_at: Some(150), ..g }.live_at(120));
    }
}
