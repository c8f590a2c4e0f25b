//! Checks recordings against the hashes the audit chain holds (part of `penstock audit verify`):
//! each ended session's cast must hash to the `recording_sha256` of its `session.ended` event,
//! and a binary side file must match the size and SHA-256 its (verified) cast names.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::audit;
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

/// SHA-256 and size of a file.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The side file a cast names: (file name, size, sha256), from its last side-file marker.
fn side_file(cast: &Path) -> std::io::Result<Option<(String, u64, String)>> {
    const PREFIX: &str = "[penstock] binary output: ";
    let mut found = None;
    for line in std::io::BufReader::new(std::fs::File::open(cast)?).lines() {
        let line = line?;
        if !line.contains("\"m\"") {
            continue;
        }
        let Ok(serde_json::Value::Array(ev)) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let (Some(code), Some(text)) = (ev.get(1).and_then(|v| v.as_str()), ev.get(2).and_then(|v| v.as_str())) else {
            continue;
        };
        let Some(rest) = text.strip_prefix(PREFIX).filter(|_| code == "m") else { continue };
        // "N bytes in NAME, sha256 HEX"
        let parsed = rest.split_once(" bytes in ").and_then(|(n, rest)| {
            let (name, sha) = rest.split_once(", sha256 ")?;
            Some((name.to_string(), n.parse().ok()?, sha.to_string()))
        });
        if parsed.is_some() {
            found = parsed;
        }
    }
    Ok(found)
}

/// Checks every recording named by a `session.ended` event.
pub async fn check(store: &Store) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let deleted = crate::retention::deleted(store).await?;
    let mut after = 0;
    loop {
        let batch = audit::read(store, after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for r in batch.iter().filter(|r| r.kind == "session.ended") {
            let d: serde_json::Value = serde_json::from_str(r.details.get()).unwrap_or_default();
            let session = d["session"].as_str().unwrap_or("?");
            let (Some(path), Some(sha)) = (d["recording"].as_str(), d["recording_sha256"].as_str()) else {
                continue; // not recorded, or ended before its recording could be closed
            };
            let path = PathBuf::from(path);
            if deleted.contains_key(session) && !path.exists() {
                // Deleted by retention, with its own audit event: not missing.
                report.deleted += 1;
                continue;
            }
            check_one(&mut report, session, &path, sha);
        }
    }
    Ok(report)
}

fn check_one(report: &mut Report, session: &str, cast: &Path, sha: &str) {
    let shown = cast.display();
    match hash_file(cast) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.problems.push(format!(
                "session {session}: recording {shown} cannot be read: it is missing (no recording.deleted event: retention did not delete it)"
            ));
            return;
        }
        Err(e) => {
            report.problems.push(format!("session {session}: recording {shown} cannot be read: {e}"));
            return;
        }
        Ok((got, _)) if got != sha => {
            report.problems.push(format!(
                "session {session}: recording {shown} was altered (SHA-256 differs from the audit chain)"
            ));
            return;
        }
        Ok(_) => report.intact += 1,
    }
    match side_file(cast) {
        Err(e) => report.problems.push(format!("session {session}: recording {shown} cannot be read: {e}")),
        Ok(None) => {}
        Ok(Some((name, size, sha))) => {
            let side = cast.with_file_name(&name);
            match hash_file(&side) {
                Err(e) => report.problems.push(format!("session {session}: side file {} cannot be read: {e}", side.display())),
                Ok((got, n)) if got != sha || n != size => report.problems.push(format!(
                    "session {session}: side file {} was altered ({n} bytes, SHA-256 differs from the one its recording names)",
                    side.display()
                )),
                Ok(_) => report.intact += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_side_file_marker_counts_and_output_cannot_fake_one() {
        let dir = std::env::temp_dir().join(format!("penstock-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cast = dir.join("x.cast");
        let lines = [
            r#"{"version":2,"width":80,"height":24}"#,
            r#"[0.1,"o","[penstock] binary output: 5 bytes in fake.out, sha256 00"]"#,
            r#"[0.2,"m","[penstock] binary output follows, recorded byte-exact in x.out"]"#,
            r#"[0.3,"m","[penstock] binary output: 12 bytes in x.out, sha256 abc"]"#,
        ];
        std::fs::write(&cast, lines.join("\n") + "\n").expect("write");
        assert_eq!(side_file(&cast).expect("read"), Some(("x.out".into(), 12, "abc".into())));
        std::fs::write(&cast, lines[..2].join("\n") + "\n").expect("write");
        assert_eq!(side_file(&cast).expect("read"), None, "an `o` line is output, not a marker");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
