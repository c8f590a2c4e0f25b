//! Authentication for every front end: password or public key, then TOTP; lockout per user and
//! per source address; the same answer for unknown users as for wrong passwords.

pub mod password;
pub mod totp;

use std::net::IpAddr;

use rand::Rng;
use russh::keys::ssh_key::PublicKey;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::secret::Secret;
use crate::users::{self, Role, User};

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User id.
    pub user_id: i64,
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// Why a login step failed. Display is what the client may be told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong user, password, key or code; disabled or expired account. One answer for all.
    #[error("authentication failed")]
    Denied,
    /// Too many failures for this user or address.
    #[error("too many failed attempts; try again later")]
    LockedOut,
    /// The store or vault failed; fail closed.
    #[error("authentication unavailable")]
    Unavailable,
}

/// A random alphanumeric token of `len` characters.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// The first factor offered.
#[derive(Debug)]
pub enum FirstFactor<'a> {
    /// A password.
    Password(&'a Secret),
    /// A password given while connecting to a target: the account password, or the one-time
    /// credential of a grant on that target that is live now.
    PasswordFor(&'a Secret, &'a str),
    /// A public key whose signature the front end has verified.
    VerifiedKey(&'a PublicKey),
}

impl FirstFactor<'_> {
    fn method(&self) -> &'static str {
        match self {
            FirstFactor::Password(_) | FirstFactor::PasswordFor(..) => "password",
            FirstFactor::VerifiedKey(_) => "publickey",
        }
    }
}

fn scopes(name: &str, source: IpAddr) -> [String; 2] {
    [format!("user:{name}"), format!("addr:{source}")]
}

fn unavailable<E: std::fmt::Display>(e: E) -> AuthError {
    tracing::error!(error = %e, "authentication backend failed");
    AuthError::Unavailable
}

/// Whether `name` or `source` is locked out now.
async fn locked(app: &App, name: &str, source: IpAddr) -> Result<bool, AuthError> {
    let since = app.clock.now() - app.config.auth.lockout_window_secs;
    for scope in scopes(name, source) {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM auth_failures WHERE scope = $1 AND at > $2")
            .bind(&scope)
            .bind(since)
            .fetch_one(app.store.pool())
            .await
            .and_then(|r| r.try_get(0))
            .map_err(unavailable)?;
        if n >= i64::from(app.config.auth.max_failures) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Records a failure for the user and the address, audits it, and audits a lockout when one
/// begins.
async fn fail(app: &App, name: &str, source: IpAddr, reason: &str) -> AuthError {
    let now = app.clock.now();
    let since = now - app.config.auth.lockout_window_secs;
    let res: Result<(), sqlx::Error> = async {
        let mut tx = app.store.begin_write().await?;
        for scope in scopes(name, source) {
            sqlx::query("INSERT INTO auth_failures (scope, at) VALUES ($1, $2)")
                .bind(&scope)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM auth_failures WHERE scope = $1 AND at > $2")
                .bind(&scope)
                .bind(since)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if n == i64::from(app.config.auth.max_failures) {
                audit::append(
                    &mut tx,
                    &*app.clock,
                    "system",
                    &Event::LockedOut { scope: scope.clone(), until: now + app.config.auth.lockout_window_secs },
                )
                .await?;
            }
        }
        let user: String = name.chars().take(64).collect();
        audit::append(
            &mut tx,
            &*app.clock,
            "system",
            &Event::LoginFailed { user, source: source.to_string(), reason: reason.into() },
        )
        .await?;
        tx.commit().await
    }
    .await;
    match res {
        Ok(()) => AuthError::Denied,
        Err(e) => unavailable(e),
    }
}

/// Checks the first factor for `name` from `source`. On success the caller must still ask for
/// the TOTP code with [`second_factor`].
pub async fn first_factor(
    app: &App,
    name: &str,
    factor: FirstFactor<'_>,
    source: IpAddr,
) -> Result<Principal, AuthError> {
    if locked(app, name, source).await? {
        return Err(AuthError::LockedOut);
    }
    let user = users::find(app, name).await.map_err(unavailable)?;
    let ok = match (&user, &factor) {
        (Some(u), FirstFactor::PasswordFor(p, target)) => {
            let h = u.password_hash.clone();
            let pw = (*p).clone();
            let by_password = tokio::task::spawn_blocking(move || {
                password::verify(&pw, h.as_deref().unwrap_or(password::dummy_hash()))
            })
            .await
            .unwrap_or(false)
                && u.password_hash.is_some();
            by_password
                || crate::access::requests::grant_credential_matches(app, u.id, target, p).await.map_err(unavailable)?
        }
        (Some(u), FirstFactor::Password(p)) => {
            let h = u.password_hash.clone();
            let p = (*p).clone();
            let ok = tokio::task::spawn_blocking(move || {
                password::verify(&p, h.as_deref().unwrap_or(password::dummy_hash()))
            })
            .await
            .unwrap_or(false);
            ok && u.password_hash.is_some()
        }
        (None, FirstFactor::Password(p) | FirstFactor::PasswordFor(p, _)) => {
            // Same work as a real check, then no.
            let p = (*p).clone();
            let _ = tokio::task::spawn_blocking(move || password::verify(&p, password::dummy_hash())).await;
            false
        }
        (Some(u), FirstFactor::VerifiedKey(k)) => {
            let fp = crate::keys::fingerprint(k);
            users::keys(app, u.id).await.map_err(unavailable)?.iter().any(|(f, _)| *f == fp)
        }
        (None, FirstFactor::VerifiedKey(_)) => false,
    };
    let reason = match &user {
        None => "unknown user",
        Some(_) if !ok => "wrong credentials",
        Some(u) if !u.usable_at(app.clock.now()) => "account disabled or expired",
        Some(_) => "",
    };
    match user {
        Some(u) if reason.is_empty() => Ok(Principal { user_id: u.id, name: u.name, role: u.role }),
        _ => Err(fail(app, name, source, &format!("{}: {reason}", factor.method())).await),
    }
}

/// Checks the TOTP code for a principal that passed [`first_factor`]. A code's time step is
/// accepted once per user, ever.
pub async fn second_factor(
    app: &App,
    who: &Principal,
    code: &str,
    source: IpAddr,
    method: &str,
) -> Result<(), AuthError> {
    if locked(app, &who.name, source).await? {
        return Err(AuthError::LockedOut);
    }
    let user: User = users::by_id(app, who.user_id).await.map_err(unavailable)?;
    let seed = users::totp_seed(app, user.id).await.map_err(unavailable)?;
    let Some(seed) = seed else {
        return Err(fail(app, &user.name, source, "no TOTP enrolled").await);
    };
    let Some(step) = totp::accepted_step(&seed, code, app.clock.now(), user.totp_last_step) else {
        return Err(fail(app, &user.name, source, "wrong or reused TOTP code").await);
    };
    if !user.usable_at(app.clock.now()) {
        return Err(fail(app, &user.name, source, "account disabled or expired").await);
    }
    let res: Result<u64, sqlx::Error> = async {
        let mut tx = app.store.begin_write().await?;
        // Compare-and-set: a concurrent login with the same code loses here.
        let n = sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
            .bind(step)
            .bind(user.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            sqlx::query("DELETE FROM auth_failures WHERE scope = $1")
                .bind(format!("user:{}", user.name))
                .execute(&mut *tx)
                .await?;
            audit::append(
                &mut tx,
                &*app.clock,
                &user.name,
                &Event::LoginSucceeded {
                    user: user.name.clone(),
                    method: format!("{method}+totp"),
                    source: source.to_string(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }
    .await;
    match res {
        Ok(1) => Ok(()),
        Ok(_) => Err(fail(app, &user.name, source, "reused TOTP code").await),
        Err(e) => Err(unavailable(e)),
    }
}

/// Checks a fresh TOTP code of an already logged-in user before a sensitive action (showing a
/// grant credential): the same replay guard as a login (a step is accepted once per user, ever),
/// failures counted towards lockout and audited as `login.failed` (method `what`); success is not
/// a login and is audited by the caller's own event.
pub async fn confirm_code(app: &App, user: &User, code: &str, source: IpAddr, what: &str) -> Result<(), AuthError> {
    if locked(app, &user.name, source).await? {
        return Err(AuthError::LockedOut);
    }
    let fresh: User = users::by_id(app, user.id).await.map_err(unavailable)?;
    let seed = users::totp_seed(app, fresh.id).await.map_err(unavailable)?;
    let Some(seed) = seed else {
        return Err(fail(app, &fresh.name, source, &format!("{what}: no TOTP enrolled")).await);
    };
    let code: String = code.trim().chars().take(12).collect();
    let Some(step) = totp::accepted_step(&seed, &code, app.clock.now(), fresh.totp_last_step) else {
        return Err(fail(app, &fresh.name, source, &format!("{what}: wrong or reused TOTP code")).await);
    };
    if !fresh.usable_at(app.clock.now()) {
        return Err(fail(app, &fresh.name, source, &format!("{what}: account disabled or expired")).await);
    }
    let res: Result<u64, sqlx::Error> = async {
        let mut tx = app.store.begin_write().await?;
        let n = sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
            .bind(step)
            .bind(fresh.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
    .await;
    match res {
        Ok(1) => Ok(()),
        Ok(_) => Err(fail(app, &fresh.name, source, &format!("{what}: reused TOTP code")).await),
        Err(e) => Err(unavailable(e)),
    }
}

/// What a challenge-response login (NTLM inside RDP's CredSSP) may accept for `USER@TARGET`:
/// the front end's protocol library checks the response against these and reports the outcome
/// with [`challenge_login_result`].
#[derive(Debug, Default)]
pub struct GrantCandidates {
    /// The user, when it exists and may log in now.
    pub principal: Option<Principal>,
    /// Credentials of the user's grants on the target that are live now.
    pub credentials: Vec<Secret>,
}

/// The live grant credentials of `name` on `target`, unless `name` or `source` is locked out.
/// An unknown or unusable user gets no candidates (so the check fails as for a wrong
/// credential); the failure is counted by [`challenge_login_result`].
pub async fn grant_candidates(
    app: &App,
    name: &str,
    target: &str,
    source: IpAddr,
) -> Result<GrantCandidates, AuthError> {
    if locked(app, name, source).await? {
        return Err(AuthError::LockedOut);
    }
    let Some(u) = users::find(app, name).await.map_err(unavailable)? else {
        return Ok(GrantCandidates::default());
    };
    if !u.usable_at(app.clock.now()) {
        return Ok(GrantCandidates::default());
    }
    let credentials = crate::access::requests::live_grant_credentials(app, u.id, target).await.map_err(unavailable)?;
    Ok(GrantCandidates { principal: Some(Principal { user_id: u.id, name: u.name, role: u.role }), credentials })
}

/// Records the outcome of a challenge-response login checked against [`grant_candidates`]:
/// success is audited and clears the user's failures; failure (with `reason`) is audited and
/// counts towards lockout like a wrong SSH password.
pub async fn challenge_login_result(
    app: &App,
    name: &str,
    source: IpAddr,
    method: &str,
    outcome: Result<(), &str>,
) -> Result<(), AuthError> {
    if let Err(reason) = outcome {
        return Err(fail(app, name, source, &format!("{method}: {reason}")).await);
    }
    let res: Result<(), sqlx::Error> = async {
        let mut tx = app.store.begin_write().await?;
        sqlx::query("DELETE FROM auth_failures WHERE scope = $1")
            .bind(format!("user:{name}"))
            .execute(&mut *tx)
            .await?;
        let ev =
            Event::LoginSucceeded { user: name.to_string(), method: method.to_string(), source: source.to_string() };
        audit::append(&mut tx, &*app.clock, name, &ev).await?;
        tx.commit().await
    }
    .await;
    res.map_err(unavailable)
}

/// Both factors at once (password + code).
pub async fn login_password(
    app: &App,
    name: &str,
    password: &Secret,
    code: &str,
    source: IpAddr,
) -> Result<Principal, AuthError> {
    login_password_for(app, name, password, None, code, source).await
}

/// Both factors at once, for a connection to `target` (where a live grant credential also
/// counts as the password).
pub async fn login_password_for(
    app: &App,
    name: &str,
    password: &Secret,
    target: Option<&str>,
    code: &str,
    source: IpAddr,
) -> Result<Principal, AuthError> {
    let factor = match target {
        Some(t) => FirstFactor::PasswordFor(password, t),
        None => FirstFactor::Password(password),
    };
    let who = first_factor(app, name, factor, source).await?;
    second_factor(app, &who, code, source, "password").await?;
    Ok(who)
}
