//! Users: roles, orgs, expiry, passwords, TOTP enrolment and SSH keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::auth::{password, totp};
use crate::error::{invalid, Error, Result};
use crate::secret::Secret;
use crate::vault::secret_aad;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An outside vendor: asks for access.
    Vendor,
    /// A plant manager: approves and watches.
    Manager,
    /// Reads audit and recordings.
    Auditor,
    /// Runs the gateway.
    Admin,
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vendor" => Ok(Role::Vendor),
            "manager" => Ok(Role::Manager),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            _ => Err(invalid(format!("unknown role {s:?} (vendor, manager, auditor or admin)"))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Vendor => "vendor",
            Role::Manager => "manager",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        })
    }
}

/// A stored user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Organisation.
    pub org: Option<String>,
    /// Unix seconds after which the account no longer works.
    pub expires_at: Option<i64>,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether a password is set.
    pub has_password: bool,
    /// Number of SSH keys.
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// Last TOTP step accepted.
    #[serde(skip)]
    pub totp_last_step: i64,
}

impl User {
    /// Whether the account may log in at `now`.
    pub fn usable_at(&self, now: i64) -> bool {
        !self.disabled && self.expires_at.is_none_or(|e| now < e)
    }
}

const COLUMNS: &str = "id, name, role, org, expires_at, disabled, password_hash, totp_last_step";

fn from_row(r: &AnyRow) -> Result<User> {
    let role: String = r.try_get(2)?;
    let password_hash: Option<String> = r.try_get(6)?;
    Ok(User {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: role.parse()?,
        org: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        disabled: r.try_get::<i64, _>(5)? != 0,
        has_password: password_hash.is_some(),
        password_hash,
        totp_last_step: r.try_get(7)?,
    })
}

/// Checks a user or target name: 1–64 of `a-z A-Z 0-9 . _ -`, so that `VENDOR@TARGET` and
/// `VENDOR:TARGET` logins split unambiguously.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid {what} name {name:?}: use 1-64 letters, digits, '.', '_' or '-'")))
    }
}

/// What `add` needs.
#[derive(Debug)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Organisation.
    pub org: Option<String>,
    /// Expiry (Unix seconds).
    pub expires_at: Option<i64>,
    /// Password; `None` for an account without one.
    pub password: Option<Secret>,
}

/// What a new user needs to enrol their authenticator app.
#[derive(Debug)]
pub struct Enrolment {
    /// The user's id.
    pub user_id: i64,
    /// `otpauth://` URI (contains the seed: show once, never log).
    pub otpauth_uri: Secret,
}

/// Looks a user up by name.
pub async fn find(app: &App, name: &str) -> Result<Option<User>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(app.store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Looks a user up by name; unknown is an error.
pub async fn get(app: &App, name: &str) -> Result<User> {
    find(app, name).await?.ok_or_else(|| Error::NotFound(format!("unknown user {name:?}")))
}

/// Looks a user up by id.
pub async fn by_id(app: &App, id: i64) -> Result<User> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(app.store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()?.ok_or_else(|| Error::NotFound(format!("unknown user id {id}")))
}

/// All users, by name.
pub async fn list(app: &App) -> Result<Vec<User>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY name")).fetch_all(app.store.pool()).await?;
    rows.iter().map(from_row).collect()
}

/// Creates a user and enrols a TOTP seed, in one transaction.
pub async fn add(app: &App, actor: &str, new: NewUser) -> Result<Enrolment> {
    check_name("user", &new.name)?;
    if let Some(p) = &new.password {
        if p.len() < 8 {
            return Err(invalid("password too short: use at least 8 characters"));
        }
    }
    if find(app, &new.name).await?.is_some() {
        return Err(Error::Conflict(format!("user {:?} already exists", new.name)));
    }
    let hash = new.password.as_ref().map(password::hash).transpose()?;
    let seed = totp::new_seed();
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO users (name, role, org, expires_at, disabled, password_hash, totp_last_step, created_at) \
         VALUES ($1, $2, $3, $4, 0, $5, 0, $6) RETURNING id",
    )
    .bind(&new.name)
    .bind(new.role.to_string())
    .bind(new.org.clone())
    .bind(new.expires_at)
    .bind(hash)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| conflict_or(e, || format!("user {:?} already exists", new.name)))?
    .try_get(0)?;
    store_seed(app, &mut tx, id, &seed, 1).await?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::UserAdded {
            user: new.name.clone(),
            role: new.role.to_string(),
            org: new.org.clone(),
            expires_at: new.expires_at,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Enrolment { user_id: id, otpauth_uri: totp::otpauth_uri(&seed, &app.config.auth.totp_issuer, &new.name)? })
}

async fn store_seed(app: &App, tx: &mut crate::store::Tx, user_id: i64, seed: &Secret, version: i64) -> Result<()> {
    let sealed = app.vault.seal(&secret_aad("user", user_id, "totp_seed", version), seed.expose())?;
    sqlx::query(
        "INSERT INTO secrets (owner_kind, owner_id, kind, version, ciphertext, created_at) VALUES ('user', $1, 'totp_seed', $2, $3, $4)",
    )
    .bind(user_id)
    .bind(version)
    .bind(sealed)
    .bind(app.clock.now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The user's current TOTP seed.
pub async fn totp_seed(app: &App, user_id: i64) -> Result<Option<Secret>> {
    let row = sqlx::query(
        "SELECT version, ciphertext FROM secrets WHERE owner_kind = 'user' AND owner_id = $1 AND kind = 'totp_seed' \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(app.store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let version: i64 = row.try_get(0)?;
    let ct: Vec<u8> = row.try_get(1)?;
    Ok(Some(app.vault.open(&secret_aad("user", user_id, "totp_seed", version), &ct)?))
}

/// Replaces a user's TOTP seed; returns the new enrolment.
pub async fn reset_mfa(app: &App, actor: &str, name: &str) -> Result<Enrolment> {
    let user = get(app, name).await?;
    let seed = totp::new_seed();
    let mut tx = app.store.begin_write().await?;
    let version: i64 = sqlx::query(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM secrets WHERE owner_kind = 'user' AND owner_id = $1 AND kind = 'totp_seed'",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    store_seed(app, &mut tx, user.id, &seed, version).await?;
    sqlx::query(
        "DELETE FROM secrets WHERE owner_kind = 'user' AND owner_id = $1 AND kind = 'totp_seed' AND version < $2",
    )
    .bind(user.id)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::MfaReset { user: user.name.clone() }).await?;
    tx.commit().await?;
    Ok(Enrolment { user_id: user.id, otpauth_uri: totp::otpauth_uri(&seed, &app.config.auth.totp_issuer, &user.name)? })
}

/// Disables a user.
pub async fn disable(app: &App, actor: &str, name: &str) -> Result<()> {
    let user = get(app, name).await?;
    if user.name == actor {
        return Err(invalid("you cannot disable your own account (another admin or the CLI can)"));
    }
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE users SET disabled = 1 WHERE id = $1").bind(user.id).execute(&mut *tx).await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::UserDisabled { user: user.name }).await?;
    crate::signals::announce(&mut tx, app.store.backend(), "user").await?;
    tx.commit().await?;
    Ok(())
}

/// Adds an SSH public key to a user; returns its fingerprint.
pub async fn add_key(app: &App, actor: &str, name: &str, key_line: &str) -> Result<String> {
    let user = get(app, name).await?;
    let key = crate::keys::parse_public_key(key_line).map_err(|e| invalid(e.to_string()))?;
    let fp = crate::keys::fingerprint(&key);
    let mut tx = app.store.begin_write().await?;
    sqlx::query("INSERT INTO user_keys (user_id, openssh, fingerprint, created_at) VALUES ($1, $2, $3, $4)")
        .bind(user.id)
        .bind(crate::keys::to_openssh(&key))
        .bind(&fp)
        .bind(app.clock.now())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("user {name:?} already has key {fp}")))?;
    audit::append(&mut tx, &*app.clock, actor, &Event::UserKeyAdded { user: user.name, fingerprint: fp.clone() })
        .await?;
    tx.commit().await?;
    Ok(fp)
}

/// Removes a key by fingerprint (or by the key itself).
pub async fn remove_key(app: &App, actor: &str, name: &str, key_or_fp: &str) -> Result<()> {
    let user = get(app, name).await?;
    let fp = if key_or_fp.starts_with("SHA256:") {
        key_or_fp.to_string()
    } else {
        crate::keys::fingerprint(&crate::keys::parse_public_key(key_or_fp).map_err(|e| invalid(e.to_string()))?)
    };
    let mut tx = app.store.begin_write().await?;
    let n = sqlx::query("DELETE FROM user_keys WHERE user_id = $1 AND fingerprint = $2")
        .bind(user.id)
        .bind(&fp)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::NotFound(format!("user {name:?} has no key {fp}")));
    }
    audit::append(&mut tx, &*app.clock, actor, &Event::UserKeyRemoved { user: user.name, fingerprint: fp }).await?;
    tx.commit().await?;
    Ok(())
}

/// Fingerprints and keys of a user.
pub async fn keys(app: &App, user_id: i64) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT fingerprint, openssh FROM user_keys WHERE user_id = $1 ORDER BY id")
        .bind(user_id)
        .fetch_all(app.store.pool())
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// `YYYY-MM-DD` as an account expiry: the account works through the whole given day (UTC).
pub fn expiry_from_date(s: &str) -> Result<i64> {
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        invalid(format!("invalid expiry {:?}: expected YYYY-MM-DD", s.chars().take(20).collect::<String>()))
    })?;
    d.succ_opt()
        .and_then(|n| n.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
        .ok_or_else(|| invalid("expiry date out of range"))
}

/// Maps a unique-constraint violation to [`Error::Conflict`].
pub fn conflict_or(e: sqlx::Error, msg: impl FnOnce() -> String) -> Error {
    let unique = match &e {
        sqlx::Error::Database(d) => {
            matches!(d.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || d.message().contains("UNIQUE")
                || d.message().contains("duplicate key")
        }
        _ => false,
    };
    if unique {
        Error::Conflict(msg())
    } else {
        Error::Db(e)
    }
}
