//! The table of connections that are still logging in, bounded globally and per source address.
//!
//! A connection that has not finished key exchange (it has not sent a single authentication
//! request) is the cheapest to drop. When a table is full, the newcomer does not get refused:
//! the oldest such connection of the same source (else of the whole table) is dropped to make
//! room. Only when every place holds a connection that is genuinely authenticating is the
//! newcomer refused. Vendors often share one NAT address, so one broken or hostile machine at a
//! vendor's site must not lock out every engineer there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One connection in the table.
#[derive(Debug)]
struct Entry {
    id: u64,
    source: IpAddr,
    /// Set once the connection sent its first authentication request (key exchange done).
    authenticating: Arc<AtomicBool>,
    /// Woken to drop the connection.
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    /// Oldest first.
    entries: Vec<Entry>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let pos = self.entries.iter().position(|e| e.id == id)?;
        let e = self.entries.remove(pos);
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        Some(e)
    }

    /// The oldest connection that has not finished key exchange, from `source` if given.
    fn oldest_idle(&self, source: Option<IpAddr>) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| source.is_none_or(|s| s == e.source) && !e.authenticating.load(Ordering::SeqCst))
            .map(|e| e.id)
    }
}

/// Counters of what the table did (exported as metrics later).
#[derive(Debug, Default)]
pub struct LimitStats {
    /// Connections dropped before key exchange to make room for a newcomer.
    pub dropped_idle: AtomicU64,
    /// Newcomers refused because every place was taken by an authenticating connection.
    pub refused: AtomicU64,
}

/// Hands out [`LoginSlot`]s.
#[derive(Debug)]
pub struct LoginLimits {
    table: Arc<Mutex<Table>>,
    max_global: usize,
    max_per_source: usize,
    /// What was dropped and refused.
    pub stats: Arc<LimitStats>,
}

/// What [`LoginLimits::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// A place; `dropped` tells whether an idle connection was dropped for it.
    Admitted { slot: LoginSlot, dropped: bool },
    /// Every place holds a connection that is authenticating.
    Full,
}

impl LoginLimits {
    /// A table of at most `max_global` connections, `max_per_source` from one address.
    pub fn new(max_global: usize, max_per_source: usize) -> LoginLimits {
        LoginLimits {
            table: Arc::new(Mutex::new(Table::default())),
            max_global: max_global.max(1),
            max_per_source: max_per_source.max(1),
            stats: Arc::default(),
        }
    }

    /// Finds a place for a new connection from `source`, dropping the oldest connection that
    /// has not finished key exchange if a limit is reached.
    pub fn admit(&self, source: IpAddr) -> Admission {
        let Ok(mut t) = self.table.lock() else { return Admission::Full };
        let mut dropped = false;
        if t.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            match t.oldest_idle(Some(source)).and_then(|id| t.remove(id)) {
                Some(victim) => {
                    victim.evict.notify_one();
                    dropped = true;
                }
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Full;
                }
            }
        }
        if t.entries.len() >= self.max_global {
            // The same source's idle connection first, then anyone's.
            let victim = t.oldest_idle(Some(source)).or_else(|| t.oldest_idle(None));
            match victim.and_then(|id| t.remove(id)) {
                Some(victim) => {
                    victim.evict.notify_one();
                    dropped = true;
                }
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Full;
                }
            }
        }
        if dropped {
            self.stats.dropped_idle.fetch_add(1, Ordering::Relaxed);
        }
        t.next_id += 1;
        let id = t.next_id;
        let authenticating = Arc::new(AtomicBool::new(false));
        let evict = Arc::new(Notify::new());
        t.entries.push(Entry { id, source, authenticating: authenticating.clone(), evict: evict.clone() });
        *t.per_source.entry(source).or_insert(0) += 1;
        Admission::Admitted { slot: LoginSlot { id, table: self.table.clone(), authenticating, evict }, dropped }
    }

    /// Connections in the table now.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.entries.len()).unwrap_or(0)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A place in the table; dropping it (login done or connection gone) frees it.
#[derive(Debug)]
pub struct LoginSlot {
    id: u64,
    table: Arc<Mutex<Table>>,
    authenticating: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

impl LoginSlot {
    /// The connection finished key exchange and is authenticating: it is no longer dropped to
    /// make room.
    pub fn mark_authenticating(&self) {
        self.authenticating.store(true, Ordering::SeqCst);
    }

    /// Woken when the table drops this connection to make room for another.
    pub fn eviction(&self) -> Arc<Notify> {
        self.evict.clone()
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admitted(a: Admission) -> (LoginSlot, bool) {
        match a {
            Admission::Admitted { slot, dropped } => (slot, dropped),
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn a_full_source_drops_its_oldest_idle_connection() {
        let l = LoginLimits::new(100, 3);
        let slots: Vec<_> = (0..3).map(|_| admitted(l.admit(ip(1))).0).collect();
        let first = slots[0].eviction();
        let (_new, dropped) = admitted(l.admit(ip(1)));
        assert!(dropped);
        // The oldest one was told to go (a stored permit makes `notified` ready at once).
        let woke = futures_ready(first);
        assert!(woke, "the oldest idle connection was not evicted");
        assert_eq!(l.len(), 3);
        assert_eq!(l.stats.dropped_idle.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn authenticating_connections_are_never_dropped() {
        let l = LoginLimits::new(100, 2);
        let a = admitted(l.admit(ip(1))).0;
        let b = admitted(l.admit(ip(1))).0;
        a.mark_authenticating();
        b.mark_authenticating();
        assert!(matches!(l.admit(ip(1)), Admission::Full));
        assert_eq!(l.stats.refused.load(Ordering::Relaxed), 1);
        // Another source still gets in.
        let _c = admitted(l.admit(ip(2)));
        drop(a);
        let (_d, dropped) = admitted(l.admit(ip(1)));
        assert!(!dropped, "a freed place needs no eviction");
    }

    #[test]
    fn the_global_limit_drops_the_oldest_idle_of_anyone() {
        let l = LoginLimits::new(4, 4);
        let mut slots = Vec::new();
        for i in 2..6 {
            slots.push(admitted(l.admit(ip(i))).0);
        }
        slots[0].mark_authenticating();
        let second = slots[1].eviction();
        let (_n, dropped) = admitted(l.admit(ip(9)));
        assert!(dropped);
        assert!(futures_ready(second), "the oldest idle connection (not the authenticating one) goes");
        assert_eq!(l.len(), 4, "the global bound holds");
    }

    #[test]
    fn dropping_a_slot_frees_its_place_once() {
        let l = LoginLimits::new(2, 2);
        let (a, _) = admitted(l.admit(ip(1)));
        let (b, _) = admitted(l.admit(ip(1)));
        a.mark_authenticating();
        b.mark_authenticating();
        drop(a);
        drop(b);
        assert!(l.is_empty());
        let _c = admitted(l.admit(ip(1)));
        assert_eq!(l.len(), 1);
    }

    /// Whether `n` has a stored wake-up.
    fn futures_ready(n: Arc<Notify>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(50), n.notified()).await.is_ok() })
    }
}
