//! Checks recordings against the hashes the audit chain holds (part of `penstock audit verify`):
//! each ended session's cast must hash to the `recording_sha256` of its `session.ended` event,
//! and a binary side file must match the size and SHA-256 its (verified) cast names. A session
//! closed after a crash (`session.interrupted`) names its cast's and side files' hashes as
//! found on disk in the event itself.

use crate::audit;
use crate::storage::{self, RecordingStorage};
use crate::store::Store;

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Recording files (casts and side files) that matched.
    pub intact: usize,
    /// One line per recording that did not.
    pub problems: Vec<String>,
    /// Recordings retention deleted (each with its `recording.deleted` event): not problems.
    pub deleted: usize,
}

/// Checks every recording named by a `session.ended` event, reading them through `storage`.
pub async fn check(store: &Store, storage: &dyn RecordingStorage) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let deleted = crate::retention::deleted(store).await?;
    let mut after = 0;
    loop {
        let batch = audit::read(store, after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for r in batch.iter().filter(|r| r.kind == "session.ended" || r.kind == "session.interrupted") {
            let d: serde_json::Value = serde_json::from_str(r.details.get()).unwrap_or_default();
            if r.kind == "session.interrupted" {
                check_interrupted(&mut report, storage, &d);
                continue;
            }
            let session = d["session"].as_str().unwrap_or("?");
            let (Some(path), Some(sha)) = (d["recording"].as_str(), d["recording_sha256"].as_str()) else {
                continue; // not recorded, or ended before its recording could be closed
            };
            if deleted.contains_key(session) && !storage.exists(path) {
                // Deleted by retention, with its own audit event: not missing.
                report.deleted += 1;
                continue;
            }
            check_one(&mut report, storage, session, path, sha);
        }
    }
    Ok(report)
}

/// A session closed after a crash: the cast and each side file against the event's hashes.
fn check_interrupted(report: &mut Report, storage: &dyn RecordingStorage, d: &serde_json::Value) {
    let session = d["session"].as_str().unwrap_or("?");
    let Some(cast) = d["recording"].as_str() else { return };
    match d["recording_sha256"].as_str() {
        Some(sha) => compare(report, storage, session, "recording", cast, sha, d["recording_size"].as_u64()),
        // The cast was already gone when the session was closed.
        None => report.problems.push(format!("session {session}: recording {cast} was missing after a crash")),
    }
    let sides: Vec<crate::audit::SideFile> = serde_json::from_value(d["side_files"].clone()).unwrap_or_default();
    for f in sides {
        match storage.sibling(cast, &f.name) {
            Ok(side) => compare(report, storage, session, "side file", &side, &f.sha256, u64::try_from(f.size).ok()),
            Err(e) => report.problems.push(format!("session {session}: side file {:?}: {e}", f.name)),
        }
    }
}

/// Hashes `locator` and compares it with `sha` (and `size`).
fn compare(
    report: &mut Report,
    storage: &dyn RecordingStorage,
    session: &str,
    what: &str,
    locator: &str,
    sha: &str,
    size: Option<u64>,
) {
    match storage::hash(storage, locator) {
        Err(e) => report.problems.push(format!("session {session}: {what} {locator} cannot be read: {e}")),
        Ok((got, n)) if got != sha || size.is_some_and(|s| s != n) => report.problems.push(format!(
            "session {session}: {what} {locator} was altered ({n} bytes, SHA-256 differs from the audit chain)"
        )),
        Ok(_) => report.intact += 1,
    }
}

fn check_one(report: &mut Report, storage: &dyn RecordingStorage, session: &str, cast: &str, sha: &str) {
    match storage::hash(storage, cast) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.problems.push(format!(
                "session {session}: recording {cast} cannot be read: it is missing (no recording.deleted event: retention did not delete it)"
            ));
            return;
        }
        Err(e) => {
            report.problems.push(format!("session {session}: recording {cast} cannot be read: {e}"));
            return;
        }
        Ok((got, _)) if got != sha => {
            report.problems.push(format!(
                "session {session}: recording {cast} was altered (SHA-256 differs from the audit chain)"
            ));
            return;
        }
        Ok(_) => report.intact += 1,
    }
    if super::frames::is_frames(cast) {
        return; // a binary (RDP) recording has no side files
    }
    let sides = match storage::reader(storage, cast).and_then(crate::replay::cast::side_files) {
        Err(e) => {
            report.problems.push(format!("session {session}: recording {cast} cannot be read: {e:#}"));
            return;
        }
        Ok(s) => s,
    };
    for f in sides {
        let side = match storage.sibling(cast, &f.name) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(format!("session {session}: side file {:?}: {e}", f.name));
                continue;
            }
        };
        match storage::hash(storage, &side) {
            Err(e) => report.problems.push(format!("session {session}: side file {side} cannot be read: {e}")),
            Ok((got, n)) if got != f.sha256 || n != f.size => report.problems.push(format!(
                "session {session}: side file {side} was altered ({n} bytes, SHA-256 differs from the one its recording names)"
            )),
            Ok(_) => report.intact += 1,
        }
    }
}
