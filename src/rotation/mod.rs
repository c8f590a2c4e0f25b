//! Secret rotation (issue #13): after the last vendor session on a target ends, when the secret
//! is older than the policy's `max_age`, and on demand (`penstock target rotate`).
//!
//! Two phases in the vault: the new secret is sealed as a **pending** version before the target
//! is touched, becomes **verified** once a fresh login with it works, and only then **active**
//! (the old one is kept as **retired**). A crash or a dropped connection at any step leaves every
//! candidate in the vault; the next attempt ([`recover`]) tries them, newest first, and keeps the
//! one the target accepts. One rotation per target at a time, across nodes ([`lease`]).
//! Failures are audited, sent to the webhooks, retried with backoff and shown in
//! `penstock secrets report` ([`report`]).

pub mod device;
pub mod lease;
pub mod report;
pub mod rules;

use std::time::Duration;

use anyhow::anyhow;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::secret::Secret;
use crate::ssh::upstream::{self, UpstreamError};
use crate::targets::{self, CredentialKind, Target};
use crate::vault::secret_aad;
use lease::Acquire;
use rules::Rules;

/// Actor of automatic rotations in the audit chain.
pub const ACTOR: &str = "rotation";
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const BACKOFF: i64 = 60;
const MAX_BACKOFF: i64 = 6 * 3600;
/// How often the scheduler looks for due rotations.
const TICK: Duration = Duration::from_secs(5);
/// How long a new session waits for a running rotation.
const SESSION_WAIT: Duration = Duration::from_secs(15);

/// Why a rotation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The last vendor session on the target ended.
    AfterSession,
    /// The active secret is older than the policy's `max_age`.
    MaxAge,
    /// Someone asked (`penstock target rotate`).
    OnDemand,
    /// A failed rotation is tried again.
    Retry,
    /// Only settle an interrupted rotation (no new secret).
    Recovery,
}

impl Reason {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AfterSession => "after_session",
            Reason::MaxAge => "max_age",
            Reason::OnDemand => "on_demand",
            Reason::Retry => "retry",
            Reason::Recovery => "recovery",
        }
    }
}

/// How a call to [`rotate`] ended (failures are errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is active; `recovered` names a version an earlier, interrupted rotation
    /// left behind that was settled first.
    Rotated {
        /// The new active version.
        version: i64,
        /// Settled first: (version, `promoted` or `kept`).
        recovered: Option<(i64, String)>,
    },
    /// Recovery only: this version is active.
    Settled {
        /// The active version.
        version: i64,
    },
    /// A vendor session is live; the rotation runs when it ends.
    Deferred,
    /// Another rotation of this target is running (its holder).
    Busy(String),
}

/// A failed rotation: the step, a one-line reason (never a secret) and the version that works.
#[derive(Debug)]
struct Failure {
    stage: &'static str,
    error: String,
    kept: Option<i64>,
}

impl Failure {
    fn new(stage: &'static str, error: impl std::fmt::Display, kept: Option<i64>) -> Self {
        Failure { stage, error: error.to_string().replace('\n', " "), kept }
    }
}

/// The rotation rules of `target` (its policy's `[rotation]`, else on demand only).
pub fn rules_for(app: &App, target: &Target) -> Rules {
    app.policies.current().for_target(target).and_then(|p| p.rotation.clone()).unwrap_or_default()
}

/// A test-only hook: with `PENSTOCK_TEST_ROTATION_PAUSE=PATH`, a rotation reaching `step`
/// creates `PATH.reached` (holding the step) and waits while `PATH` exists (at most 5 minutes),
/// so tests can kill the gateway or drop the target connection at that exact point.
pub(crate) async fn test_pause(step: &str) {
    let Some(path) = std::env::var_os("PENSTOCK_TEST_ROTATION_PAUSE") else { return };
    let path = std::path::PathBuf::from(path);
    if !path.exists() {
        return;
    }
    let mut reached = path.clone().into_os_string();
    reached.push(".reached");
    let _ = std::fs::write(&reached, step);
    tracing::warn!(step, "rotation paused by PENSTOCK_TEST_ROTATION_PAUSE");
    let end = tokio::time::Instant::now() + Duration::from_secs(300);
    while path.exists() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One stored version of a target's secret (without its value).
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub version: i64,
    pub kind: String,
    pub state: String,
    pub created_at: i64,
    pub verified_at: Option<i64>,
}

/// Every version of `target_id`'s secret, newest first.
pub(crate) async fn versions(app: &App, target_id: i64) -> anyhow::Result<Vec<Version>> {
    let rows = sqlx::query(
        "SELECT version, kind, state, created_at, verified_at FROM secrets \
         WHERE owner_kind = 'target' AND owner_id = $1 ORDER BY version DESC",
    )
    .bind(target_id)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Version {
                version: r.try_get(0)?,
                kind: r.try_get(1)?,
                state: r.try_get(2)?,
                created_at: r.try_get(3)?,
                verified_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// The active version (the one sessions use) and the candidates newer than it that an
/// unfinished rotation left (pending or verified), newest first.
pub(crate) fn split(vs: &[Version]) -> (Option<&Version>, Vec<&Version>) {
    let active = vs.iter().find(|v| v.state == "active");
    let floor = active.map(|a| a.version).unwrap_or(0);
    let cands = vs.iter().filter(|v| v.version > floor && (v.state == "pending" || v.state == "verified")).collect();
    (active, cands)
}

/// Opens one version.
pub(crate) async fn open(app: &App, target_id: i64, v: &Version) -> anyhow::Result<Secret> {
    let ct: Vec<u8> =
        sqlx::query("SELECT ciphertext FROM secrets WHERE owner_kind = 'target' AND owner_id = $1 AND version = $2")
            .bind(target_id)
            .bind(v.version)
            .fetch_one(app.store.pool())
            .await?
            .try_get(0)?;
    app.vault.open(&secret_aad("target", target_id, &v.kind, v.version), &ct)
}

fn kind_of(s: &str) -> CredentialKind {
    if s == "private_key" {
        CredentialKind::PrivateKey
    } else {
        CredentialKind::Password
    }
}

/// Whether `secret` logs in to `target` now: `Ok(false)` when the target refused it, an error
/// when the target could not be asked (unreachable, wrong host key).
async fn logs_in(app: &App, target: &Target, kind: CredentialKind, secret: &Secret) -> anyhow::Result<bool> {
    match upstream::connect_as(app, target, ACTOR, Some((kind, secret))).await {
        Ok(conn) => {
            let _ = conn.disconnect(russh::Disconnect::ByApplication, "", "en").await;
            Ok(true)
        }
        Err(UpstreamError::Login(_)) => Ok(false),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Seals `secret` as the next, pending version and audits the start.
async fn add_pending(app: &App, target: &Target, secret: &Secret, reason: Reason, actor: &str) -> anyhow::Result<i64> {
    let kind = target.credential_kind.as_str();
    let mut tx = app.store.begin_write().await?;
    let version = crate::targets::next_secret_version(&mut tx, target.id).await?;
    let sealed = app.vault.seal(&secret_aad("target", target.id, kind, version), secret.expose())?;
    sqlx::query(
        "INSERT INTO secrets (owner_kind, owner_id, kind, version, ciphertext, created_at, state) \
         VALUES ('target', $1, $2, $3, $4, $5, 'pending')",
    )
    .bind(target.id)
    .bind(kind)
    .bind(version)
    .bind(sealed)
    .bind(app.clock.now())
    .execute(&mut *tx)
    .await?;
    let ev = Event::RotationStarted { target: target.name.clone(), reason: reason.as_str().into(), version };
    audit::append(&mut tx, &*app.clock, actor, &ev).await?;
    tx.commit().await?;
    Ok(version)
}

/// Sets one version's state (e.g. `verified`, `discarded`).
async fn set_state(app: &App, target_id: i64, version: i64, state: &str) -> anyhow::Result<()> {
    let verified = (state == "verified").then(|| app.clock.now());
    sqlx::query(
        "UPDATE secrets SET state = $1, verified_at = COALESCE($2, verified_at) \
         WHERE owner_kind = 'target' AND owner_id = $3 AND version = $4",
    )
    .bind(state)
    .bind(verified)
    .bind(target_id)
    .bind(version)
    .execute(app.store.pool())
    .await?;
    Ok(())
}

/// Makes `version` the active one in one transaction: the old active version is retired, other
/// leftover candidates are discarded, `event` is audited and any owed retry is cleared.
async fn activate(app: &App, target: &Target, version: i64, actor: &str, event: &Event) -> anyhow::Result<()> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE secrets SET state = 'retired' WHERE owner_kind = 'target' AND owner_id = $1 AND state = 'active' AND version <> $2")
        .bind(target.id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE secrets SET state = 'discarded' WHERE owner_kind = 'target' AND owner_id = $1 AND state IN ('pending', 'verified') AND version <> $2")
        .bind(target.id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE secrets SET state = 'active', verified_at = COALESCE(verified_at, $1) WHERE owner_kind = 'target' AND owner_id = $2 AND version = $3")
        .bind(now)
        .bind(target.id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM rotation_due WHERE target_id = $1").bind(target.id).execute(&mut *tx).await?;
    audit::append(&mut tx, &*app.clock, actor, event).await?;
    tx.commit().await?;
    Ok(())
}

/// The secret that works now.
struct Working {
    version: i64,
    secret: Secret,
    /// Settled from an interrupted rotation: (version, outcome).
    recovered: Option<(i64, String)>,
}

/// Settles what an interrupted rotation left: tries every candidate newer than the active
/// version (newest first), then the active one, and keeps the first the target accepts.
async fn recover(app: &App, target: &Target, actor: &str) -> Result<Working, Failure> {
    let vs = versions(app, target.id).await.map_err(|e| Failure::new("vault", e, None))?;
    let (active, cands) = split(&vs);
    let active = active.ok_or_else(|| Failure::new("vault", "the target has no active secret", None))?;
    let kept = Some(active.version);
    let open_v = |v: &Version| {
        let v = v.clone();
        async move { open(app, target.id, &v).await.map_err(|e| Failure::new("vault", e, kept)) }
    };
    if cands.is_empty() {
        return Ok(Working { version: active.version, secret: open_v(active).await?, recovered: None });
    }
    tracing::warn!(target = %target.name, candidates = cands.len(), "settling an interrupted rotation");
    for c in cands.iter().copied().chain(std::iter::once(active)) {
        let secret = open_v(c).await?;
        match logs_in(app, target, kind_of(&c.kind), &secret).await {
            Ok(true) => {
                let outcome = if c.version == active.version { "kept" } else { "promoted" };
                let ev = Event::RotationRecovered {
                    target: target.name.clone(),
                    version: c.version,
                    outcome: outcome.into(),
                };
                activate(app, target, c.version, actor, &ev).await.map_err(|e| Failure::new("vault", e, kept))?;
                tracing::info!(target = %target.name, version = c.version, outcome, "interrupted rotation settled");
                return Ok(Working { version: c.version, secret, recovered: Some((c.version, outcome.into())) });
            }
            Ok(false) => {}
            Err(e) => {
                return Err(Failure::new(
                    "recover",
                    format!("{e}; the {} candidate secret(s) stay in the vault for the next attempt", cands.len()),
                    kept,
                ))
            }
        }
    }
    Err(Failure::new(
        "recover",
        format!(
            "no vaulted version of the secret logs in to {} (tried {}); all are kept",
            target.name,
            cands.len() + 1
        ),
        None,
    ))
}

/// Rotates the secret of the target `name`. Automatic reasons wait for the target to be idle
/// ([`Outcome::Deferred`]); a failure is audited, sent to the webhooks and retried with backoff,
/// and the error says at which step and why (never the secret).
pub async fn rotate(app: &App, name: &str, reason: Reason, actor: &str) -> anyhow::Result<Outcome> {
    let target = targets::get(app, name).await?;
    if target.credential_kind == CredentialKind::KeyboardInteractive {
        anyhow::bail!(
            "target {name} logs in with keyboard-interactive answers; only passwords and keys can be rotated"
        );
    }
    let idle = matches!(reason, Reason::AfterSession | Reason::MaxAge | Reason::Retry);
    let lease = match lease::acquire(app, target.id, idle).await? {
        Acquire::Got(l) => l,
        Acquire::Busy(h) => return Ok(Outcome::Busy(h)),
        Acquire::LiveSession => return Ok(Outcome::Deferred),
    };
    let started = app.clock.now();
    let run_id: i64 = sqlx::query(
        "INSERT INTO rotations (target_id, reason, actor, started_at, outcome) VALUES ($1, $2, $3, $4, 'running') RETURNING id",
    )
    .bind(target.id)
    .bind(reason.as_str())
    .bind(actor)
    .bind(started)
    .fetch_one(app.store.pool())
    .await?
    .try_get(0)?;
    let result = run(app, &target, reason, actor).await;
    let (outcome, version, error) = match &result {
        Ok(Outcome::Rotated { version, .. }) | Ok(Outcome::Settled { version }) => ("ok", Some(*version), None),
        Ok(_) => ("ok", None, None),
        Err(f) => ("failed", f.kept, Some(format!("{}: {}", f.stage, f.error))),
    };
    let done =
        sqlx::query("UPDATE rotations SET finished_at = $1, outcome = $2, version = $3, error = $4 WHERE id = $5")
            .bind(app.clock.now())
            .bind(outcome)
            .bind(version)
            .bind(error)
            .bind(run_id)
            .execute(app.store.pool())
            .await;
    if let Err(e) = done {
        tracing::error!(target = %name, error = %e, "cannot record the rotation's end");
    }
    let out = match result {
        Ok(o) => {
            if let Outcome::Rotated { version, .. } = &o {
                tracing::info!(target = %name, version, reason = reason.as_str(), "secret rotated and verified");
                app.notifier.send(
                    "secret.rotated",
                    format!("Penstock: the secret of {name} was rotated to version {version} ({}).", reason.as_str()),
                    serde_json::json!({ "target": name, "version": version, "reason": reason.as_str() }),
                );
            }
            Ok(o)
        }
        Err(f) => {
            failed(app, &target, reason, actor, &f).await;
            Err(anyhow!("rotation of {name} failed at {}: {}", f.stage, f.error))
        }
    };
    lease.release().await;
    out
}

/// Audits, notifies and schedules the retry of a failed rotation.
async fn failed(app: &App, target: &Target, reason: Reason, actor: &str, f: &Failure) {
    tracing::warn!(target = %target.name, stage = f.stage, error = %f.error, "rotation failed");
    let now = app.clock.now();
    let r: anyhow::Result<i64> = async {
        let mut tx = app.store.begin_write().await?;
        let failures: i64 = sqlx::query("SELECT failures FROM rotation_due WHERE target_id = $1")
            .bind(target.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0)
            + 1;
        let delay = BACKOFF.saturating_mul(1 << (failures - 1).clamp(0, 16)).min(MAX_BACKOFF);
        sqlx::query("DELETE FROM rotation_due WHERE target_id = $1").bind(target.id).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO rotation_due (target_id, reason, due_at, failures, last_error) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(target.id)
        .bind(reason.as_str())
        .bind(now + delay)
        .bind(failures)
        .bind(format!("{}: {}", f.stage, f.error))
        .execute(&mut *tx)
        .await?;
        let ev = Event::RotationFailed {
            target: target.name.clone(),
            reason: reason.as_str().into(),
            stage: f.stage.into(),
            error: f.error.clone(),
            kept_version: f.kept,
        };
        audit::append(&mut tx, &*app.clock, actor, &ev).await?;
        tx.commit().await?;
        Ok(now + delay)
    }
    .await;
    let retry = match r {
        Ok(at) => format!("; retry at {}", crate::clock::fmt_ts(at)),
        Err(e) => {
            tracing::error!(target = %target.name, error = %e, "cannot record the failed rotation");
            String::new()
        }
    };
    app.notifier.send(
        "rotation.failed",
        format!("Penstock: rotating the secret of {} failed at {}: {}{retry}", target.name, f.stage, f.error),
        serde_json::json!({ "target": target.name, "stage": f.stage, "error": f.error, "reason": reason.as_str(), "kept_version": f.kept }),
    );
}

async fn run(app: &App, target: &Target, reason: Reason, actor: &str) -> Result<Outcome, Failure> {
    let working = recover(app, target, actor).await?;
    if reason == Reason::Recovery {
        return Ok(Outcome::Settled { version: working.version });
    }
    let recovered = working.recovered.clone();
    let version = match target.credential_kind {
        CredentialKind::PrivateKey => rotate_key(app, target, reason, actor, &working).await?,
        _ => rotate_password(app, target, reason, actor, &working).await?,
    };
    Ok(Outcome::Rotated { version, recovered })
}

async fn rotate_password(app: &App, target: &Target, reason: Reason, actor: &str, w: &Working) -> Result<i64, Failure> {
    let kept = Some(w.version);
    let rules = rules_for(app, target);
    let new = rules.password.generate();
    let version = add_pending(app, target, &new, reason, actor).await.map_err(|e| Failure::new("vault", e, kept))?;
    let conn = match &rules.admin {
        // The account changes its own password with `passwd`, logged in with the current one.
        None => upstream::connect_as(app, target, actor, Some((CredentialKind::Password, &w.secret)))
            .await
            .map_err(|e| Failure::new("login", e, kept)),
        // Another account changes it.
        Some(admin) => {
            let name = admin.target_for(&target.name);
            match targets::get(app, &name).await {
                Ok(a) if a.id != target.id => {
                    upstream::connect(app, &a, actor).await.map_err(|e| Failure::new("admin_login", e, kept))
                }
                Ok(_) => Err(Failure::new("admin_login", format!("{name} is the rotated target itself"), kept)),
                Err(e) => Err(Failure::new("admin_login", format!("admin target: {e}"), kept)),
            }
        }
    };
    let conn = match conn {
        Ok(c) => c,
        Err(f) => {
            let _ = set_state(app, target.id, version, "discarded").await;
            return Err(f);
        }
    };
    let change = match &rules.admin {
        None => device::change_password(&conn, &w.secret, &new).await,
        Some(admin) => device::change_password_as_admin(&conn, &admin.command, &target.login, &new).await,
    };
    let _ = conn.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    drop(conn);
    match change {
        Ok(device::Change::Done) => {}
        Ok(device::Change::Rejected(msg)) => {
            let _ = set_state(app, target.id, version, "discarded").await;
            return Err(Failure::new("change", format!("the target refused the new password: {msg}"), kept));
        }
        Ok(device::Change::Unknown(msg)) => {
            tracing::warn!(target = %target.name, msg, "passwd gave no answer; finding out which password works");
        }
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "passwd failed; finding out which password works");
        }
    }
    // Verify with a fresh login before the vault trusts it.
    match logs_in(app, target, CredentialKind::Password, &new).await {
        Ok(true) => {
            let _ = set_state(app, target.id, version, "verified").await;
            let ev = Event::SecretRotated { target: target.name.clone(), kind: "password".into(), version };
            activate(app, target, version, actor, &ev).await.map_err(|e| Failure::new("commit", e, Some(version)))?;
            Ok(version)
        }
        Ok(false) => match logs_in(app, target, CredentialKind::Password, &w.secret).await {
            Ok(true) => {
                let _ = set_state(app, target.id, version, "discarded").await;
                Err(Failure::new(
                    "verify",
                    "the new password does not log in; the old one still works and stays active",
                    kept,
                ))
            }
            Ok(false) => Err(Failure::new(
                "verify",
                "neither the new nor the old password logs in now; both stay in the vault for the next attempt",
                None,
            )),
            Err(e) => {
                Err(Failure::new("verify", format!("{e}; the new version stays pending for the next attempt"), kept))
            }
        },
        Err(e) => Err(Failure::new("verify", format!("{e}; the new version stays pending for the next attempt"), kept)),
    }
}

/// The public key line of a vaulted private key.
fn public_line(secret: &Secret) -> anyhow::Result<String> {
    let k = crate::keys::parse_private_key(secret.expose())?;
    Ok(crate::keys::to_openssh(k.public_key()))
}

async fn rotate_key(app: &App, target: &Target, reason: Reason, actor: &str, w: &Working) -> Result<i64, Failure> {
    let kept = Some(w.version);
    let key = crate::keys::generate_ed25519();
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| Failure::new("generate", format!("cannot encode the new key: {e}"), kept))?;
    let new = Secret::new(pem.as_bytes().to_vec());
    drop(pem);
    let new_line = crate::keys::to_openssh(key.public_key());
    let version = add_pending(app, target, &new, reason, actor).await.map_err(|e| Failure::new("vault", e, kept))?;
    let discard = |stage: &'static str, e: String| async move {
        let _ = set_state(app, target.id, version, "discarded").await;
        Failure::new(stage, e, kept)
    };
    let conn = match upstream::connect_as(app, target, actor, Some((CredentialKind::PrivateKey, &w.secret))).await {
        Ok(c) => c,
        Err(e) => return Err(discard("login", e.to_string()).await),
    };
    let cmd = device::add_key_command(&new_line).map_err(|e| Failure::new("add_key", e, kept))?;
    let added = device::run(&conn, &cmd).await;
    let _ = conn.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    match added {
        Ok((Some(0), _)) => {}
        Ok((status, _)) => {
            let code = status.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
            return Err(discard(
                "add_key",
                format!("cannot add the new key to ~/.ssh/authorized_keys (exit status {code})"),
            )
            .await);
        }
        Err(e) => tracing::warn!(target = %target.name, error = %e, "adding the key gave no answer; verifying"),
    }
    test_pause("after_change").await;
    match logs_in(app, target, CredentialKind::PrivateKey, &new).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(discard("verify", "the new key does not log in; the old one stays active".into()).await)
        }
        Err(e) => {
            return Err(Failure::new("verify", format!("{e}; the new key stays pending for the next attempt"), kept))
        }
    }
    let _ = set_state(app, target.id, version, "verified").await;
    // Remove every key the vault ever held for this target except the new one.
    let mut blobs = Vec::new();
    for v in versions(app, target.id).await.map_err(|e| Failure::new("vault", e, Some(version)))? {
        if v.version == version || v.kind != "private_key" {
            continue;
        }
        if let Ok(line) = open(app, target.id, &v).await.and_then(|s| public_line(&s)) {
            if let Some(b) = device::key_blob(&line) {
                blobs.push(b);
            }
        }
    }
    let ev = Event::SecretRotated { target: target.name.clone(), kind: "private_key".into(), version };
    let conn = upstream::connect_as(app, target, actor, Some((CredentialKind::PrivateKey, &new)))
        .await
        .map_err(|e| Failure::new("remove_old_key", e, Some(w.version)))?;
    let removed = device::run(&conn, &device::remove_keys_command(&blobs)).await;
    let _ = conn.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    activate(app, target, version, actor, &ev).await.map_err(|e| Failure::new("commit", e, Some(version)))?;
    match removed {
        Ok((Some(0), _)) => {}
        Ok((status, _)) => {
            let code = status.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
            return Err(Failure::new(
                "remove_old_key",
                format!("the old key could not be removed (exit status {code}); the new key is active"),
                Some(version),
            ));
        }
        Err(e) => return Err(Failure::new("remove_old_key", format!("{e}; the new key is active"), Some(version))),
    }
    if let Ok(true) = logs_in(app, target, CredentialKind::PrivateKey, &w.secret).await {
        return Err(Failure::new(
            "remove_old_key",
            "the old key still logs in (is it listed elsewhere than ~/.ssh/authorized_keys?); the new key is active",
            Some(version),
        ));
    }
    Ok(version)
}

/// Called when a vendor session on `target` ends: rotates if the policy says `after_session`
/// and no other session on the target is live (checked under the lease).
pub fn session_ended(app: &App, target: &Target) {
    if !rules_for(app, target).after_session || target.credential_kind == CredentialKind::KeyboardInteractive {
        return;
    }
    let (app, name) = (app.clone(), target.name.clone());
    tokio::spawn(async move {
        match rotate(&app, &name, Reason::AfterSession, ACTOR).await {
            Ok(Outcome::Deferred) => tracing::info!(target = %name, "rotation waits: another session is live"),
            Ok(Outcome::Busy(h)) => tracing::info!(target = %name, holder = %h, "rotation already running"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rotation after session failed"),
        }
    });
}

/// Called before a new session logs in to `target`: waits (a few seconds at most) while a
/// rotation of it runs, so the session uses the secret that rotation settles on.
pub async fn wait_if_rotating(app: &App, target: &Target) {
    let end = tokio::time::Instant::now() + SESSION_WAIT;
    while tokio::time::Instant::now() < end {
        match lease::held(app, target.id).await {
            Ok(true) => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => return,
        }
    }
    tracing::warn!(target = %target.name, "a rotation is still running; connecting anyway");
}

/// Starts the scheduler: every few seconds it settles interrupted rotations, runs owed retries
/// whose backoff is over, and rotates secrets older than their policy's `max_age`.
pub fn start_scheduler(app: App) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            if !crate::jobs::leader() {
                continue; // another node runs the scheduler
            }
            if let Err(e) = run_due(&app).await {
                tracing::warn!(error = %e, "rotation scheduler");
            }
        }
    });
}

/// One pass of the scheduler: settles interrupted rotations, runs retries whose backoff is over
/// and rotates secrets older than their policy's `max_age` (by `app.clock`).
pub async fn run_due(app: &App) -> anyhow::Result<()> {
    let now = app.clock.now();
    for t in targets::list(app).await? {
        if t.credential_kind == CredentialKind::KeyboardInteractive {
            continue;
        }
        let vs = versions(app, t.id).await?;
        let (active, cands) = split(&vs);
        let due: Option<i64> = sqlx::query("SELECT due_at FROM rotation_due WHERE target_id = $1")
            .bind(t.id)
            .fetch_optional(app.store.pool())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let rules = rules_for(app, &t);
        let old = match (active, rules.max_age) {
            (Some(a), Some(max)) => a.created_at + max <= now,
            _ => false,
        };
        let reason = if !cands.is_empty() && !lease::held(app, t.id).await? {
            Reason::Recovery
        } else if due.is_some_and(|d| d <= now) {
            Reason::Retry
        } else if old && due.is_none() {
            Reason::MaxAge
        } else {
            continue;
        };
        match rotate(app, &t.name, reason, ACTOR).await {
            Ok(o) => tracing::debug!(target = %t.name, reason = reason.as_str(), outcome = ?o, "scheduled rotation"),
            Err(e) => tracing::warn!(error = %e, "scheduled rotation failed"),
        }
    }
    Ok(())
}
