//! Time as a dependency: every piece of logic that asks "what time is it" goes through [`Clock`],
//! so tests can move time without sleeping.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

/// A source of the current time, in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;

    /// The current time as a UTC date-time.
    fn now_utc(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.now(), 0).single().unwrap_or_default()
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        Utc::now().timestamp()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `secs` since the epoch.
    pub fn new(secs: i64) -> Self {
        Self(AtomicI64::new(secs))
    }
    /// Move the clock forward (or backward, with a negative value).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    /// Put the clock at `secs`.
    pub fn set(&self, secs: i64) {
        self.0.store(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats epoch seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_ts(secs: i64) -> String {
    match Utc.timestamp_opt(secs, 0).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => secs.to_string(),
    }
}
