//! Live sessions of this process, whatever front end relays them (SSH, RDP): the registry each
//! relay is signalled through, and the check that ends sessions that were killed, whose grant
//! was revoked or expired, or whose user was disabled. Each front end's watcher calls
//! [`enforce`] twice a second.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::Row;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::sessions::EndReason;

/// A live session as the watcher sees it.
#[derive(Debug)]
pub struct Live {
    /// Tells the relay to stop, and why.
    pub stop: watch::Sender<Option<EndReason>>,
    /// Notices for the vendor.
    pub notices: mpsc::Sender<String>,
    /// End of the grant (Unix seconds).
    pub valid_until: i64,
    /// Which ending-soon notices were sent (10 min, 1 min).
    pub warned: (bool, bool),
}

/// Live sessions of this process, by id.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<String, Live>>);

impl Registry {
    /// Adds a session; returns the receivers its relay listens on.
    pub fn add(&self, id: &str, valid_until: i64) -> (watch::Receiver<Option<EndReason>>, mpsc::Receiver<String>) {
        let (stop, rx) = watch::channel(None);
        let (notices, notices_rx) = mpsc::channel(4);
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), Live { stop, notices, valid_until, warned: (false, false) });
        }
        (rx, notices_rx)
    }

    /// Sends "ends in 10 minutes / 1 minute" notices that are due at `now`.
    pub fn warn_due(&self, now: i64) {
        if let Ok(mut m) = self.0.lock() {
            for l in m.values_mut() {
                let left = l.valid_until - now;
                let at = crate::clock::fmt_ts(l.valid_until);
                if left <= 60 && !l.warned.1 {
                    l.warned = (true, true);
                    let _ = l.notices.try_send(format!("your access ends in 1 minute (at {at})"));
                } else if left <= 600 && !l.warned.0 {
                    l.warned.0 = true;
                    let _ = l.notices.try_send(format!("your access ends in {} minutes (at {at})", (left + 59) / 60));
                }
            }
        }
    }

    /// Forgets a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }

    /// Ends a session with `reason`.
    pub fn stop(&self, id: &str, reason: EndReason) {
        if let Ok(m) = self.0.lock() {
            if let Some(l) = m.get(id) {
                let _ = l.stop.send(Some(reason));
            }
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, now: i64) -> Vec<String> {
        self.0
            .lock()
            .map(|m| m.iter().filter(|(_, l)| l.valid_until <= now).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

/// Ends the live sessions in `registry` whose grant expired (by the injected clock), sends the
/// due ending-soon notices, and asks the store which of them were killed, revoked, or whose
/// user was disabled. A store outage keeps sessions running (they are still recorded) and is
/// logged.
pub async fn enforce(app: &App, registry: &Registry) {
    if registry.is_empty() {
        return;
    }
    let now = app.clock.now();
    for id in registry.expired(now) {
        registry.stop(&id, EndReason::Expired);
    }
    registry.warn_due(now);
    let rows = sqlx::query(
        "SELECT s.id, s.kill_requested, g.revoked_at, u.disabled, u.expires_at, g.valid_until FROM sessions s \
         LEFT JOIN grants g ON g.id = s.grant_id LEFT JOIN users u ON u.id = s.user_id WHERE s.ended_at IS NULL",
    )
    .fetch_all(app.store.pool())
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "session watcher cannot read the store");
            return;
        }
    };
    for r in rows {
        let id: String = r.try_get(0).unwrap_or_default();
        let kill: i64 = r.try_get(1).unwrap_or(0);
        let revoked: Option<i64> = r.try_get(2).unwrap_or(None);
        let disabled: Option<i64> = r.try_get(3).unwrap_or(None);
        let expires: Option<i64> = r.try_get(4).unwrap_or(None);
        let until: Option<i64> = r.try_get(5).unwrap_or(None);
        if kill != 0 || revoked.is_some() || disabled.unwrap_or(0) != 0 {
            registry.stop(&id, EndReason::Killed);
        } else if expires.is_some_and(|e| e <= now) || until.is_some_and(|u| u <= now) {
            registry.stop(&id, EndReason::Expired);
        }
    }
}
