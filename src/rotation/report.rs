//! `penstock secrets report`: for each target the active secret's version and age, its last
//! rotation, its last use and the vendors who used it, rotation failures, and the targets whose
//! vaulted secrets are identical. Identity is decided by an HMAC-SHA256 under a key made for
//! this one report, in memory: neither the secrets nor a reusable hash of them are stored or
//! shown.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::Serialize;
use sha2::Sha256;
use sqlx::Row;

use crate::app::App;
use crate::targets;

/// One target's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Target name.
    pub target: String,
    /// `password` or `private_key` (or `keyboard_interactive`).
    pub kind: String,
    /// Active version.
    pub version: Option<i64>,
    /// When the active version was sealed (Unix seconds).
    pub created_at: Option<i64>,
    /// When a login with it was last verified by a rotation (none: stored by hand, never tested).
    pub verified_at: Option<i64>,
    /// Its age in seconds.
    pub age_secs: Option<i64>,
    /// The policy's `max_age`, if any.
    pub max_age_secs: Option<i64>,
    /// Older than `max_age`.
    pub overdue: bool,
    /// Rotated after each session.
    pub after_session: bool,
    /// Last successful rotation (Unix seconds).
    pub last_rotation: Option<i64>,
    /// Last session on the target (Unix seconds).
    pub last_use: Option<i64>,
    /// Users who had sessions on the target while the active secret was in use.
    pub used_by: Vec<String>,
    /// Failed rotations since the last success.
    pub failures: i64,
    /// The last failure's step and reason.
    pub last_error: Option<String>,
    /// When the next retry is due (Unix seconds).
    pub next_retry: Option<i64>,
    /// Versions an interrupted rotation left (settled on the next attempt).
    pub unsettled: Vec<i64>,
    /// Other targets whose active secret is identical.
    pub shared_with: Vec<String>,
}

type HmacSha256 = Hmac<Sha256>;

/// Builds the report, by target name.
pub async fn build(app: &App) -> anyhow::Result<Vec<Entry>> {
    let now = app.clock.now();
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    let mut tags: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for t in targets::list(app).await? {
        let vs = super::versions(app, t.id).await?;
        let (active, cands) = super::split(&vs);
        let rules = super::rules_for(app, &t);
        if let Some(a) = active {
            // A secret that cannot be opened is reported, never fatal to the report.
            if let Ok(s) = super::open(app, t.id, a).await {
                let mut mac = HmacSha256::new_from_slice(key.as_ref())?;
                mac.update(a.kind.as_bytes());
                mac.update(&[0]);
                mac.update(s.expose());
                tags.entry(mac.finalize().into_bytes().to_vec()).or_default().push(t.name.clone());
            }
        }
        let last_rotation: Option<i64> = sqlx::query(
            "SELECT MAX(finished_at) FROM rotations WHERE target_id = $1 AND outcome = 'ok' AND reason <> 'recovery'",
        )
        .bind(t.id)
        .fetch_one(app.store.pool())
        .await?
        .try_get(0)?;
        let last_use: Option<i64> = sqlx::query("SELECT MAX(started_at) FROM sessions WHERE target_id = $1")
            .bind(t.id)
            .fetch_one(app.store.pool())
            .await?
            .try_get(0)?;
        let since = active.map(|a| a.created_at).unwrap_or(0);
        let used_by: Vec<String> = sqlx::query(
            "SELECT DISTINCT u.name FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.target_id = $1 AND (s.ended_at IS NULL OR s.ended_at >= $2) ORDER BY u.name",
        )
        .bind(t.id)
        .bind(since)
        .fetch_all(app.store.pool())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let due = sqlx::query("SELECT failures, last_error, due_at FROM rotation_due WHERE target_id = $1")
            .bind(t.id)
            .fetch_optional(app.store.pool())
            .await?;
        let (failures, last_error, next_retry) = match due {
            Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<Option<String>, _>(1)?, Some(r.try_get::<i64, _>(2)?)),
            None => (0, None, None),
        };
        let age = active.map(|a| now - a.created_at);
        out.push(Entry {
            target: t.name.clone(),
            kind: t.credential_kind.as_str().into(),
            version: active.map(|a| a.version),
            created_at: active.map(|a| a.created_at),
            verified_at: active.and_then(|a| a.verified_at),
            age_secs: age,
            max_age_secs: rules.max_age,
            overdue: matches!((age, rules.max_age), (Some(a), Some(m)) if a > m),
            after_session: rules.after_session,
            last_rotation,
            last_use,
            used_by,
            failures,
            last_error,
            next_retry,
            unsettled: cands.iter().map(|c| c.version).collect(),
            shared_with: Vec::new(),
        });
    }
    for group in tags.values().filter(|g| g.len() > 1) {
        for e in out.iter_mut().filter(|e| group.contains(&e.target)) {
            e.shared_with = group.iter().filter(|n| **n != e.target).cloned().collect();
        }
    }
    Ok(out)
}

/// The report as a table.
pub fn render(entries: &[Entry], now: i64) -> String {
    use std::fmt::Write;
    let ago = |t: Option<i64>| match t {
        Some(t) => format!("{} ago", crate::access::fmt_duration((now - t).max(1))),
        None => "never".into(),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:<12} {:>4} {:<14} {:<16} {:<16} {:<24} {:<8} SHARED WITH",
        "TARGET", "KIND", "VER", "AGE", "LAST ROTATION", "LAST USE", "USED BY", "FAILURES"
    );
    for e in entries {
        let age = match e.age_secs {
            Some(a) => {
                let mut t = crate::access::fmt_duration(a.max(1));
                if e.overdue {
                    t.push_str(" (old)");
                }
                t
            }
            None => "-".into(),
        };
        let failures = if e.failures > 0 { e.failures.to_string() } else { "-".into() };
        let used = if e.used_by.is_empty() { "-".into() } else { e.used_by.join(",") };
        let shared = if e.shared_with.is_empty() { "-".into() } else { e.shared_with.join(",") };
        let _ = writeln!(
            s,
            "{:<20} {:<12} {:>4} {:<14} {:<16} {:<16} {:<24} {:<8} {}",
            e.target,
            e.kind,
            e.version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            age,
            ago(e.last_rotation),
            ago(e.last_use),
            used,
            failures,
            shared
        );
        if let Some(err) = &e.last_error {
            let retry = e.next_retry.map(|t| format!(" (retry at {})", crate::clock::fmt_ts(t))).unwrap_or_default();
            let _ = writeln!(s, "  last failure: {err}{retry}");
        }
        if !e.unsettled.is_empty() {
            let _ = writeln!(s, "  interrupted rotation: version(s) {:?} are settled on the next attempt", e.unsettled);
        }
    }
    let groups: usize = entries.iter().filter(|e| !e.shared_with.is_empty()).count();
    if groups > 0 {
        let _ = writeln!(s, "{groups} target(s) share a secret with another target: rotate them to end the reuse.");
    }
    s
}
