//! Access requests: pending → approved / denied / cancelled / expired, approvals with dual
//! control under the governing policy, and the grant (with its one-time grant credential) that
//! is issued when enough distinct approvers have said yes.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Grant;
use crate::app::App;
use crate::audit::{self, Event};
use crate::clock::fmt_ts;
use crate::error::{invalid, Error, Result};
use crate::policy::{window, Policy};
use crate::secret::Secret;
use crate::targets::{self, Target};
use crate::users::{self, Role, User};
use crate::vault::secret_aad;

/// Lifecycle of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Enough approvals; a grant was issued.
    Approved,
    /// An approver said no.
    Denied,
    /// The requester withdrew it.
    Cancelled,
    /// Nobody decided in time.
    Expired,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "denied" => State::Denied,
            "cancelled" => State::Cancelled,
            "expired" => State::Expired,
            _ => return Err(invalid(format!("unknown request state {s:?}"))),
        })
    }
}

/// A stored request.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Id.
    pub id: i64,
    /// Requester id.
    pub user_id: i64,
    /// Requester name.
    pub user: String,
    /// Target id.
    pub target_id: i64,
    /// Target name.
    pub target: String,
    /// Governing policy.
    pub policy: String,
    /// Why (often a change ticket).
    pub reason: String,
    /// Seconds asked for.
    pub duration: i64,
    /// Requested start (None: as soon as approved).
    pub start_at: Option<i64>,
    /// When it was filed.
    pub created_at: i64,
    /// Approvals needed.
    pub required: i64,
    /// State.
    pub state: State,
    /// Approvals so far.
    pub approvals: i64,
    /// Who decided last (denier, or the approver that completed it).
    pub decided_by: Option<String>,
    /// Comment of that decision.
    pub decision_comment: Option<String>,
    /// Grant issued.
    pub grant_id: Option<i64>,
}

impl Request {
    /// The moment a pending request stops being useful.
    pub fn expires_at(&self) -> i64 {
        self.start_at.unwrap_or(self.created_at) + self.duration
    }
}

const SELECT: &str = "SELECT r.id, r.user_id, u.name, r.target_id, t.name, r.policy, r.reason, r.duration, r.start_at, \
    r.created_at, r.required, r.state, (SELECT COUNT(*) FROM approvals a WHERE a.request_id = r.id), r.decided_by, \
    r.decision_comment, r.grant_id FROM requests r JOIN users u ON u.id = r.user_id JOIN targets t ON t.id = r.target_id";

fn from_row(r: &AnyRow) -> Result<Request> {
    let state: String = r.try_get(11)?;
    Ok(Request {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        user: r.try_get(2)?,
        target_id: r.try_get(3)?,
        target: r.try_get(4)?,
        policy: r.try_get(5)?,
        reason: r.try_get(6)?,
        duration: r.try_get(7)?,
        start_at: r.try_get(8)?,
        created_at: r.try_get(9)?,
        required: r.try_get(10)?,
        state: State::parse(&state)?,
        approvals: r.try_get(12)?,
        decided_by: r.try_get(13)?,
        decision_comment: r.try_get(14)?,
        grant_id: r.try_get(15)?,
    })
}

/// One request.
pub async fn get(app: &App, id: i64) -> Result<Request> {
    let row = sqlx::query(&format!("{SELECT} WHERE r.id = $1")).bind(id).fetch_optional(app.store.pool()).await?;
    row.as_ref().map(from_row).transpose()?.ok_or_else(|| Error::NotFound(format!("unknown request {id}")))
}

/// One approval of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    /// Approver's name.
    pub by: String,
    /// Their comment.
    pub comment: Option<String>,
    /// When (Unix seconds).
    pub at: i64,
}

/// The approvals of a request so far, oldest first.
pub async fn approvals(app: &App, id: i64) -> Result<Vec<Approval>> {
    let rows = sqlx::query(
        "SELECT u.name, a.comment, a.at FROM approvals a JOIN users u ON u.id = a.approver_id WHERE a.request_id = $1 ORDER BY a.at, a.id",
    )
    .bind(id)
    .fetch_all(app.store.pool())
    .await?;
    rows.iter().map(|r| Ok(Approval { by: r.try_get(0)?, comment: r.try_get(1)?, at: r.try_get(2)? })).collect()
}

/// The policy a request is governed by, if it still exists.
pub fn policy_of(app: &App, req: &Request) -> Option<Policy> {
    policy_named(app, &req.policy).ok()
}

/// Requests, newest first: of one user, or pending ones, or all.
pub async fn list(app: &App, user_id: Option<i64>, pending_only: bool) -> Result<Vec<Request>> {
    expire_due(app).await?;
    let mut sql = format!("{SELECT} WHERE 1 = 1");
    if user_id.is_some() {
        sql.push_str(" AND r.user_id = $1");
    }
    if pending_only {
        sql.push_str(" AND r.state = 'pending'");
    }
    sql.push_str(" ORDER BY r.id DESC LIMIT 200");
    let mut q = sqlx::query(&sql);
    if let Some(u) = user_id {
        q = q.bind(u);
    }
    let rows = q.fetch_all(app.store.pool()).await?;
    rows.iter().map(from_row).collect()
}

fn policy_for(app: &App, target: &Target) -> Result<Policy> {
    app.policies
        .current()
        .for_target(target)
        .cloned()
        .ok_or_else(|| Error::Denied(format!("no policy covers {}; ask an administrator", target.name)))
}

/// The targets `who` may request, each with the policy that governs it (by target name).
pub async fn requestable(app: &App, who: &User) -> Result<Vec<(Target, Policy)>> {
    let set = app.policies.current();
    Ok(targets::list(app)
        .await?
        .into_iter()
        .filter_map(|t| {
            let p = set.for_target(&t)?.clone();
            p.requesters.includes(who).then_some((t, p))
        })
        .collect())
}

fn policy_named(app: &App, name: &str) -> Result<Policy> {
    app.policies
        .current()
        .policies
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| Error::Denied(format!("policy {name:?} no longer exists; the request cannot be decided")))
}

/// The time zone start times are read in for a policy: its first window's, else UTC.
pub fn policy_tz(p: &Policy) -> chrono_tz::Tz {
    match p.windows.first() {
        Some(window::Window::Weekly { tz, .. } | window::Window::Once { tz, .. }) => *tz,
        None => chrono_tz::UTC,
    }
}

/// Formats an instant in the policy's time zone (and UTC).
pub fn fmt_in(p: &Policy, t: i64) -> String {
    let tz = policy_tz(p);
    match chrono::DateTime::from_timestamp(t, 0) {
        Some(dt) if tz != chrono_tz::UTC => {
            format!("{} {} ({})", dt.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"), tz.name(), fmt_ts(t))
        }
        _ => fmt_ts(t),
    }
}

/// Parses a requested start: `YYYY-MM-DD HH:MM` in the policy's time zone.
pub fn parse_start(p: &Policy, s: &str) -> Result<i64> {
    let local = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M").map_err(|_| {
        invalid(format!("invalid --start {s:?}: use \"YYYY-MM-DD HH:MM\" ({} time)", policy_tz(p).name()))
    })?;
    Ok(window::local_to_utc(policy_tz(p), local).timestamp())
}

/// What a vendor asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Target name.
    pub target: String,
    /// Seconds.
    pub duration: i64,
    /// Why.
    pub reason: String,
    /// Requested start (`YYYY-MM-DD HH:MM` in the policy's zone).
    pub start: Option<String>,
}

/// Files a request for `who`.
pub async fn create(app: &App, who: &User, ask: &Ask) -> Result<Request> {
    let target = targets::get(app, &ask.target).await?;
    let policy = policy_for(app, &target)?;
    if !policy.requesters.includes(who) {
        return Err(Error::Denied(format!(
            "policy {} does not let {} request access to {}",
            policy.name, who.name, target.name
        )));
    }
    let reason = ask.reason.trim();
    if reason.is_empty() {
        return Err(invalid("a reason is required (e.g. --reason \"CHG-4711 firmware update\")"));
    }
    if reason.len() > 500 {
        return Err(invalid("the reason is too long (500 characters at most)"));
    }
    if ask.duration <= 0 {
        return Err(invalid("the duration must be positive"));
    }
    if ask.duration > policy.max_duration {
        return Err(invalid(format!(
            "{} exceeds the maximum of {} allowed by policy {}",
            super::fmt_duration(ask.duration),
            super::fmt_duration(policy.max_duration),
            policy.name
        )));
    }
    let now = app.clock.now();
    let start_at = ask.start.as_deref().map(|s| parse_start(&policy, s)).transpose()?;
    if let Some(s) = start_at {
        if s < now - 60 {
            return Err(invalid(format!("the start {} is in the past", fmt_in(&policy, s))));
        }
    }
    if !policy.windows.is_empty() {
        let at = start_at.unwrap_or(now).max(now);
        if window::containing(&policy.windows, at).is_none() {
            let next = window::next_opening(&policy.windows, at)
                .map(|t| format!("; the next window opens {}", fmt_in(&policy, t)))
                .unwrap_or_else(|| "; no window opens in the next year".into());
            return Err(Error::Denied(format!(
                "{} is outside the maintenance windows of policy {}{next}",
                fmt_in(&policy, at),
                policy.name
            )));
        }
    }
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO requests (user_id, target_id, policy, reason, duration, start_at, created_at, required, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending') RETURNING id",
    )
    .bind(who.id)
    .bind(target.id)
    .bind(&policy.name)
    .bind(reason)
    .bind(ask.duration)
    .bind(start_at)
    .bind(now)
    .bind(i64::from(policy.required))
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    audit::append(
        &mut tx,
        &*app.clock,
        &who.name,
        &Event::RequestCreated {
            request_id: id,
            user: who.name.clone(),
            target: target.name.clone(),
            policy: policy.name.clone(),
            reason: reason.into(),
            duration: ask.duration,
            start_at,
        },
    )
    .await?;
    tx.commit().await?;
    let req = get(app, id).await?;
    app.notifier.send(
        "request.created",
        format!(
            "Penstock: {} requests {} on {} for {} ({}). Request {id} needs {} approval(s).",
            who.name,
            target.name,
            start_at.map(|s| format!("from {}", fmt_in(&policy, s))).unwrap_or_else(|| "now".into()),
            super::fmt_duration(ask.duration),
            reason,
            policy.required
        ),
        serde_json::to_value(&req).unwrap_or_default(),
    );
    Ok(req)
}

/// Whether `u` may decide requests under `p` (never a vendor, whatever the policy says).
fn may_decide(p: &Policy, u: &User) -> bool {
    u.role != Role::Vendor && p.approvers.includes(u)
}

async fn pending_for_decision(app: &App, id: i64, who: &User) -> Result<(Request, Policy)> {
    expire_due(app).await?;
    let req = get(app, id).await?;
    if req.state != State::Pending {
        return Err(invalid(format!("request {id} is {}", req.state.as_str())));
    }
    if who.role == Role::Vendor {
        return Err(Error::Denied("vendors cannot decide requests".into()));
    }
    if req.user_id == who.id {
        return Err(Error::Denied("you cannot decide your own request".into()));
    }
    let policy = policy_named(app, &req.policy)?;
    if !may_decide(&policy, who) {
        return Err(Error::Denied(format!("policy {} does not name {} as an approver", policy.name, who.name)));
    }
    Ok((req, policy))
}

/// Records `who`'s approval; issues the grant when the count is reached. Returns the request
/// as it now stands.
pub async fn approve(app: &App, who: &User, id: i64, comment: Option<&str>) -> Result<Request> {
    let (req, policy) = pending_for_decision(app, id, who).await?;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    // Re-read under the write lock: a concurrent decision may have landed.
    let state: String =
        sqlx::query("SELECT state FROM requests WHERE id = $1").bind(id).fetch_one(&mut *tx).await?.try_get(0)?;
    if state != "pending" {
        return Err(invalid(format!("request {id} is {state}")));
    }
    sqlx::query("INSERT INTO approvals (request_id, approver_id, comment, at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(who.id)
        .bind(comment.map(str::to_string))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| users::conflict_or(e, || format!("you have already approved request {id}")))?;
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM approvals WHERE request_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    audit::append(
        &mut tx,
        &*app.clock,
        &who.name,
        &Event::RequestApproved {
            request_id: id,
            by: who.name.clone(),
            comment: comment.map(str::to_string),
            approvals: count,
            required: req.required,
        },
    )
    .await?;
    let mut issued: Option<(Grant, Secret)> = None;
    if count >= req.required {
        let (from, until) = grant_interval(&policy, &req, now)?;
        let credential = Secret::from_string(crate::auth::random_token(24));
        let gid: i64 = sqlx::query(
            "INSERT INTO grants (user_id, target_id, valid_from, valid_until, revoked_at, created_by, created_at, request_id, policy) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8) RETURNING id",
        )
        .bind(req.user_id)
        .bind(req.target_id)
        .bind(from)
        .bind(until)
        .bind(&who.name)
        .bind(now)
        .bind(id)
        .bind(&policy.name)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let sealed = app.vault.seal(&secret_aad("grant", gid, "credential", 1), credential.expose())?;
        sqlx::query("INSERT INTO secrets (owner_kind, owner_id, kind, version, ciphertext, created_at) VALUES ('grant', $1, 'credential', 1, $2, $3)")
            .bind(gid)
            .bind(sealed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE requests SET state = 'approved', decided_at = $1, decided_by = $2, decision_comment = $3, grant_id = $4 WHERE id = $5")
            .bind(now)
            .bind(&who.name)
            .bind(comment.map(str::to_string))
            .bind(gid)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit::append(
            &mut tx,
            &*app.clock,
            &who.name,
            &Event::GrantIssued {
                grant_id: gid,
                user: req.user.clone(),
                target: req.target.clone(),
                valid_from: from,
                valid_until: until,
                by: who.name.clone(),
            },
        )
        .await?;
        let grant = Grant {
            id: gid,
            user_id: req.user_id,
            target_id: req.target_id,
            valid_from: from,
            valid_until: until,
            revoked_at: None,
            created_by: who.name.clone(),
        };
        issued = Some((grant, credential));
    }
    crate::signals::announce(&mut tx, app.store.backend(), "approval").await?;
    tx.commit().await?;
    let now_req = get(app, id).await?;
    match &issued {
        Some((g, _)) => app.notifier.send(
            "request.approved",
            format!(
                "Penstock: request {id} ({} on {}) approved by {}; access from {} until {}.",
                req.user,
                req.target,
                who.name,
                fmt_in(&policy, g.valid_from),
                fmt_in(&policy, g.valid_until)
            ),
            serde_json::to_value(&now_req).unwrap_or_default(),
        ),
        None => app.notifier.send(
            "request.approval",
            format!(
                "Penstock: {} approved request {id} ({} on {}): {count}/{} approvals.",
                who.name, req.user, req.target, req.required
            ),
            serde_json::to_value(&now_req).unwrap_or_default(),
        ),
    }
    Ok(now_req)
}

/// The grant interval: from max(now, requested start, window opening) to min(start + duration,
/// window closing, from + policy maximum).
pub fn grant_interval(policy: &Policy, req: &Request, now: i64) -> Result<(i64, i64)> {
    let start = req.start_at.unwrap_or(now).max(now);
    let mut from = start;
    // A request with a start is for [start, start + duration); approved late, it is shorter.
    let mut until = req.start_at.unwrap_or(start) + req.duration;
    if !policy.windows.is_empty() {
        let span = match window::containing(&policy.windows, start) {
            Some(w) => w,
            None => {
                let open = window::next_opening(&policy.windows, start).ok_or_else(|| {
                    Error::Denied(format!("no maintenance window of policy {} is left for this request", policy.name))
                })?;
                window::containing(&policy.windows, open).unwrap_or((open, open))
            }
        };
        from = from.max(span.0);
        until = until.min(span.1);
    }
    until = until.min(from + policy.max_duration);
    if until <= from {
        return Err(Error::Denied("the maintenance window has closed for this request".into()));
    }
    Ok((from, until))
}

/// `who` denies the request.
pub async fn deny(app: &App, who: &User, id: i64, reason: Option<&str>) -> Result<Request> {
    let (req, _) = pending_for_decision(app, id, who).await?;
    finish(
        app,
        id,
        State::Denied,
        &who.name,
        reason,
        &Event::RequestDenied { request_id: id, by: who.name.clone(), reason: reason.map(str::to_string) },
    )
    .await?;
    let r = get(app, id).await?;
    app.notifier.send(
        "request.denied",
        format!(
            "Penstock: request {id} ({} on {}) denied by {}{}.",
            req.user,
            req.target,
            who.name,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        serde_json::to_value(&r).unwrap_or_default(),
    );
    Ok(r)
}

/// The requester withdraws a pending request.
pub async fn cancel(app: &App, who: &User, id: i64) -> Result<Request> {
    let req = get(app, id).await?;
    if req.user_id != who.id {
        return Err(Error::Denied(format!("request {id} is not yours")));
    }
    if req.state != State::Pending {
        return Err(invalid(format!("request {id} is {}", req.state.as_str())));
    }
    finish(
        app,
        id,
        State::Cancelled,
        &who.name,
        None,
        &Event::RequestCancelled { request_id: id, by: who.name.clone() },
    )
    .await?;
    get(app, id).await
}

async fn finish(app: &App, id: i64, state: State, by: &str, comment: Option<&str>, ev: &Event) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    let n = sqlx::query("UPDATE requests SET state = $1, decided_at = $2, decided_by = $3, decision_comment = $4 WHERE id = $5 AND state = 'pending'")
        .bind(state.as_str())
        .bind(app.clock.now())
        .bind(by)
        .bind(comment.map(str::to_string))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(invalid(format!("request {id} was decided in the meantime")));
    }
    audit::append(&mut tx, &*app.clock, by, ev).await?;
    crate::signals::announce(&mut tx, app.store.backend(), "decision").await?;
    tx.commit().await?;
    Ok(())
}

/// Marks pending requests whose time has run out as expired; returns how many.
pub async fn expire_due(app: &App) -> Result<usize> {
    let now = app.clock.now();
    let rows = sqlx::query("SELECT id, user_id, target_id FROM requests WHERE state = 'pending' AND COALESCE(start_at, created_at) + duration <= $1")
        .bind(now)
        .fetch_all(app.store.pool())
        .await?;
    let mut n = 0;
    for r in rows {
        let id: i64 = r.try_get(0)?;
        if finish(app, id, State::Expired, "system", None, &Event::RequestExpired { request_id: id }).await.is_ok() {
            n += 1;
            app.notifier.send(
                "request.expired",
                format!("Penstock: request {id} expired without a decision."),
                serde_json::json!({ "id": id }),
            );
        }
    }
    Ok(n)
}

/// The grant credential of a grant (shown to its vendor after an MFA login).
pub async fn grant_credential(app: &App, grant_id: i64) -> Result<Option<Secret>> {
    let row = sqlx::query("SELECT ciphertext FROM secrets WHERE owner_kind = 'grant' AND owner_id = $1 AND kind = 'credential' AND version = 1")
        .bind(grant_id)
        .fetch_optional(app.store.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    let ct: Vec<u8> = row.try_get(0)?;
    Ok(Some(app.vault.open(&secret_aad("grant", grant_id, "credential", 1), &ct)?))
}

/// Shows `who` the credential of their own grant `grant_id` (live or upcoming) after a fresh TOTP
/// code (`auth::confirm_code`: replay guard, lockout); audited `grant.credential_shown` with `via`
/// (`web`, `api`; over SSH the login's own MFA stands for the code, `via` = `ssh`). Another user's grant is "unknown", as if it did not exist.
pub async fn reveal_credential(
    app: &App,
    who: &User,
    grant_id: i64,
    code: &str,
    source: std::net::IpAddr,
    via: &str,
) -> Result<Secret> {
    let g = match super::get(app, grant_id).await {
        Ok(g) if g.user_id == who.id => g,
        Ok(_) | Err(Error::NotFound(_)) => return Err(Error::NotFound(format!("unknown grant {grant_id}"))),
        Err(e) => return Err(e),
    };
    let now = app.clock.now();
    if g.revoked_at.is_some() || g.valid_until <= now {
        return Err(invalid(format!("grant {grant_id} has ended; its credential no longer works")));
    }
    let cred = grant_credential(app, g.id).await?.ok_or_else(|| {
        invalid(format!("grant {grant_id} has no grant credential (an admin grant: log in with your password)"))
    })?;
    match crate::auth::confirm_code(app, who, code, source, "grant credential").await {
        Ok(()) => {}
        Err(crate::auth::AuthError::Denied) => {
            return Err(Error::Denied("wrong or already used verification code; wait for the next code".into()))
        }
        Err(crate::auth::AuthError::LockedOut) => {
            return Err(Error::Denied("too many failed attempts; try again later".into()))
        }
        Err(crate::auth::AuthError::Unavailable) => {
            return Err(Error::Other(anyhow::anyhow!("the authentication backend failed")))
        }
    }
    let target = targets::by_id(app, g.target_id).await.map(|t| t.name).unwrap_or_default();
    credential_shown(app, who, g.id, &target, source, via).await?;
    Ok(cred)
}

/// Audits that `who` was shown the credential of its grant `grant_id` (`grant.credential_shown`):
/// every front end that shows one calls this before it does.
pub async fn credential_shown(
    app: &App,
    who: &User,
    grant_id: i64,
    target: &str,
    source: std::net::IpAddr,
    via: &str,
) -> Result<()> {
    let mut tx = app.store.begin_write().await?;
    let ev = Event::GrantCredentialShown {
        grant_id,
        user: who.name.clone(),
        target: target.to_string(),
        via: via.to_string(),
        source: source.to_string(),
    };
    audit::append(&mut tx, &*app.clock, &who.name, &ev).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether `password` is the credential of a grant of `user_id` on `target` live now.
pub async fn grant_credential_matches(app: &App, user_id: i64, target: &str, password: &Secret) -> Result<bool> {
    for c in live_grant_credentials(app, user_id, target).await? {
        let (a, b) = (c.expose(), password.expose());
        if a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The credentials of `user_id`'s grants on `target` live now (newest first, at most 4): for
/// challenge-response logins (NTLM) that need the plaintext to check a response.
pub async fn live_grant_credentials(app: &App, user_id: i64, target: &str) -> Result<Vec<Secret>> {
    let Ok(t) = targets::get(app, target).await else { return Ok(Vec::new()) };
    let now = app.clock.now();
    let rows = sqlx::query("SELECT id FROM grants WHERE user_id = $1 AND target_id = $2 AND revoked_at IS NULL AND valid_from <= $3 AND valid_until > $3 ORDER BY id DESC LIMIT 4")
        .bind(user_id)
        .bind(t.id)
        .bind(now)
        .fetch_all(app.store.pool())
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let gid: i64 = r.try_get(0)?;
        if let Some(c) = grant_credential(app, gid).await? {
            out.push(c);
        }
    }
    Ok(out)
}

/// Revokes the grant of request `id` (or grant `id` with `is_grant`): managers and admins, or
/// an approver named by the grant's policy. Live sessions end within a second.
pub async fn revoke(app: &App, who: &User, id: i64, is_grant: bool) -> Result<Grant> {
    let gid = if is_grant {
        id
    } else {
        get(app, id).await?.grant_id.ok_or_else(|| invalid(format!("request {id} has no grant")))?
    };
    let g = super::get(app, gid).await?;
    let allowed = matches!(who.role, Role::Manager | Role::Admin) || {
        let policy: Option<String> = sqlx::query("SELECT policy FROM grants WHERE id = $1")
            .bind(gid)
            .fetch_one(app.store.pool())
            .await?
            .try_get(0)?;
        policy.and_then(|p| policy_named(app, &p).ok()).is_some_and(|p| may_decide(&p, who))
    };
    if !allowed {
        return Err(Error::Denied(format!("{} may not revoke grant {gid}", who.name)));
    }
    super::revoke(app, &who.name, gid).await?;
    super::get(app, g.id).await
}
