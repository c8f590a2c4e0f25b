//! The audit chain: typed, versioned events, each hashed over the previous event's hash, so an
//! edited, deleted or reordered row is found by [`verify`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::clock::Clock;
use crate::store::{Store, Tx};

mod events;
pub use events::{Event, SideFile};

/// Hash that stands before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// Event type name, e.g. `user.added`.
    pub kind: String,
    /// Version of that event type's schema.
    pub version: i64,
    /// Who did it (a user name, `system` or `cli`).
    pub actor: String,
    /// The event as JSON, exactly as hashed.
    pub details: Box<serde_json::value::RawValue>,
    /// Hash of the event before.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

fn compute_hash(seq: i64, at: i64, kind: &str, version: i64, actor: &str, details: &str, prev: &str) -> String {
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), &at.to_string(), kind, &version.to_string(), actor, details, prev] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The hash a stored event must have (for checking exported segments offline).
pub fn record_hash(r: &Record) -> String {
    compute_hash(r.seq, r.at, &r.kind, r.version, &r.actor, r.details.get(), &r.prev_hash)
}

/// Appends `event` inside `tx` (which must come from [`Store::begin_write`]).
pub async fn append(tx: &mut Tx, clock: &dyn Clock, actor: &str, event: &Event) -> Result<i64, sqlx::Error> {
    let last =
        sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetch_optional(&mut **tx).await?;
    let (seq, prev) = match last {
        Some(r) => (r.try_get::<i64, _>(0)? + 1, r.try_get::<String, _>(1)?),
        None => (1, GENESIS.to_string()),
    };
    let at = clock.now();
    // Canonical JSON (keys sorted, no whitespace), so anyone can re-hash an exported event.
    let details = serde_json::to_value(event)
        .and_then(|v| serde_json::to_string(&v))
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (kind, version) = event.kind();
    crate::metrics::count_event(kind);
    let hash = compute_hash(seq, at, kind, version, actor, &details, &prev);
    sqlx::query(
        "INSERT INTO audit_events (seq, at, kind, version, actor, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(kind)
    .bind(version)
    .bind(actor)
    .bind(details)
    .bind(prev)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Appends one event in its own transaction.
pub async fn record(store: &Store, clock: &dyn Clock, actor: &str, event: &Event) -> Result<i64, sqlx::Error> {
    let mut tx = store.begin_write().await?;
    let seq = append(&mut tx, clock, actor, event).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Reads events with `seq > after`, at most `limit`, in order.
pub async fn read(store: &Store, after: i64, limit: i64) -> Result<Vec<Record>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, version, actor, details, prev_hash, hash FROM audit_events \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let details: String = r.try_get(5)?;
            Ok(Record {
                seq: r.try_get(0)?,
                at: r.try_get(1)?,
                kind: r.try_get(2)?,
                version: r.try_get(3)?,
                actor: r.try_get(4)?,
                details: serde_json::value::RawValue::from_string(details.clone())
                    .or_else(|_| serde_json::value::to_raw_value(&details))
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                prev_hash: r.try_get(6)?,
                hash: r.try_get(7)?,
            })
        })
        .collect()
}

/// Outcome of [`verify`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every event checks out.
    Intact {
        /// How many events.
        count: i64,
        /// Hash of the last event (record it elsewhere to detect tail truncation later).
        head: String,
    },
    /// The first event that does not.
    Broken {
        /// Its sequence number.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Walks the whole chain and checks sequence, links and hashes.
pub async fn verify(store: &Store) -> Result<Verdict, sqlx::Error> {
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_string();
    loop {
        let rows = sqlx::query(
            "SELECT seq, at, kind, version, actor, details, prev_hash, hash FROM audit_events \
             WHERE seq >= $1 ORDER BY seq LIMIT 1000",
        )
        .bind(expected_seq)
        .fetch_all(store.pool())
        .await?;
        if rows.is_empty() {
            let total: i64 =
                sqlx::query("SELECT COUNT(*) FROM audit_events").fetch_one(store.pool()).await?.try_get(0)?;
            if total != expected_seq - 1 {
                return Ok(Verdict::Broken { seq: 0, reason: "events outside the sequence were inserted".into() });
            }
            return Ok(Verdict::Intact { count: expected_seq - 1, head: prev });
        }
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            if seq != expected_seq {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    reason: format!("event {expected_seq} is missing (next is {seq})"),
                });
            }
            let at: i64 = r.try_get(1)?;
            let kind: String = r.try_get(2)?;
            let version: i64 = r.try_get(3)?;
            let actor: String = r.try_get(4)?;
            let details: String = r.try_get(5)?;
            let prev_hash: String = r.try_get(6)?;
            let hash: String = r.try_get(7)?;
            if prev_hash != prev {
                return Ok(Verdict::Broken { seq, reason: "does not link to the event before it".into() });
            }
            if compute_hash(seq, at, &kind, version, &actor, &details, &prev_hash) != hash {
                return Ok(Verdict::Broken { seq, reason: "content does not match its hash (edited)".into() });
            }
            prev = hash;
            expected_seq += 1;
        }
    }
}
