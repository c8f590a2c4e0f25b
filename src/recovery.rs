//! What a gateway that died (a crash, `kill -9`, a power cut) left behind, put right when it
//! starts again:
//!
//! * sessions it was running stay open in the store: each is closed with end reason
//!   `interrupted` and a `session.interrupted` event that carries the size and SHA-256 of its
//!   recording and side files **as found on disk**, so `audit verify` covers them from then
//!   on. The recording itself is not rewritten (its last line may be torn; readers skip it).
//! * every request and grant change is one transaction, so none can be half done; as a last
//!   line of defence a request marked approved without its grant is put back to pending (its
//!   approvals are kept) and audited.

use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event, SideFile};
use crate::sessions::EndReason;
use crate::storage::{self, RecordingStorage};

/// What [`on_start`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Sessions closed as interrupted.
    pub sessions: usize,
    /// Request states repaired.
    pub repaired: usize,
}

/// Closes this node's sessions that an earlier run left open and repairs request states.
pub async fn on_start(app: &App) -> anyhow::Result<Recovered> {
    let sessions = close_interrupted(app).await?;
    let repaired = repair_requests(app).await?;
    if sessions > 0 || repaired > 0 {
        tracing::warn!(sessions, repaired, "recovered what an earlier run of this gateway left behind");
    }
    Ok(Recovered { sessions, repaired })
}

/// The side files that may stand beside a cast (`<id>.out`, `<id>.in`), as found.
fn side_files(storage: &dyn RecordingStorage, cast: &str) -> Vec<SideFile> {
    let stem = storage.file_name(cast);
    let stem = stem.strip_suffix(".cast").unwrap_or(&stem).to_string();
    ["out", "in"]
        .iter()
        .filter_map(|ext| {
            let name = format!("{stem}.{ext}");
            let loc = storage.sibling(cast, &name).ok()?;
            let (sha256, size) = storage::hash(storage, &loc).ok()?;
            Some(SideFile { name, size: size as i64, sha256 })
        })
        .collect()
}

/// Closes every open session of this node (and, from before node ids, of no node).
async fn close_interrupted(app: &App) -> anyhow::Result<usize> {
    close_sessions(app, &app.node_id, true, EndReason::Interrupted).await
}

/// Closes the open sessions of `node` (another gateway that stopped heartbeating) as
/// `node_lost`; returns how many. Each is closed by one statement that only a still-open
/// session passes, so two survivors never close one twice.
pub async fn close_lost(app: &App, node: &str) -> anyhow::Result<usize> {
    close_sessions(app, node, false, EndReason::NodeLost).await
}

async fn close_sessions(app: &App, node: &str, with_unowned: bool, reason: EndReason) -> anyhow::Result<usize> {
    let sql = if with_unowned {
        "SELECT id, recording_path FROM sessions WHERE ended_at IS NULL AND (node_id = $1 OR node_id IS NULL)"
    } else {
        "SELECT id, recording_path FROM sessions WHERE ended_at IS NULL AND node_id = $1"
    };
    let rows = sqlx::query(sql).bind(node).fetch_all(app.store.pool()).await?;
    let store = storage::for_app(app);
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get(0)?;
        let path: Option<String> = r.try_get(1)?;
        let (size, sha, sides) = match &path {
            Some(cast) => {
                let found = storage::hash(&store, cast).ok();
                let sides = side_files(&store, cast);
                (found.as_ref().map(|(_, s)| *s as i64), found.map(|(h, _)| h), sides)
            }
            None => (None, None, Vec::new()),
        };
        let mut tx = app.store.begin_write().await?;
        let closed = sqlx::query(
            "UPDATE sessions SET ended_at = $1, end_reason = $2, recording_sha256 = $3 WHERE id = $4 AND ended_at IS NULL",
        )
        .bind(app.clock.now())
        .bind(reason.as_str())
        .bind(sha.clone())
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if closed == 0 {
            continue;
        }
        let ev = Event::SessionInterrupted {
            session: id.clone(),
            node: node.to_string(),
            recording: path,
            recording_size: size,
            recording_sha256: sha,
            side_files: sides,
        };
        audit::append(&mut tx, &*app.clock, "system", &ev).await?;
        tx.commit().await?;
        tracing::warn!(session = %id, node, reason = reason.as_str(), "session left open by a stopped gateway closed");
        n += 1;
    }
    Ok(n)
}

/// Puts requests marked approved without a grant back to pending (audited).
async fn repair_requests(app: &App) -> anyhow::Result<usize> {
    let rows = sqlx::query("SELECT id FROM requests WHERE state = 'approved' AND grant_id IS NULL")
        .fetch_all(app.store.pool())
        .await?;
    let mut n = 0;
    for r in rows {
        let id: i64 = r.try_get(0)?;
        let mut tx = app.store.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE requests SET state = 'pending', decided_at = NULL, decided_by = NULL WHERE id = $1 AND state = 'approved' AND grant_id IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            continue;
        }
        let ev = Event::StateRepaired {
            what: "request".into(),
            id,
            detail: "marked approved without a grant; back to pending (approvals kept)".into(),
        };
        audit::append(&mut tx, &*app.clock, "system", &ev).await?;
        tx.commit().await?;
        n += 1;
    }
    Ok(n)
}
