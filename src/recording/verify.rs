//! Checks recordings against the hashes the audit chain holds (part of `penstock audit verify`):
//! each ended session's cast must hash to the `recording_sha256` of its `session.ended` event,
//! and a binary side file must match the size and SHA-256 its (verified) cast names. A session
//! closed after a crash (`session.interrupted`) names its cast's and side files' hashes as
//! found on disk in the event itself.

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
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
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

/// The side files a cast names: (file name, size, sha256), from its last side-file marker of
/// each kind (binary output, binary input).
fn side_files(cast: &Path) -> std::io::Result<Vec<(String, u64, String)>> {
    const PREFIXES: [&str; 2] = ["[penstock] binary output: ", "[penstock] binary input: "];
    let mut found: [Option<(String, u64, String)>; 2] = [None, None];
    for line in std::io::BufReader::new(std::fs::File::open(cast)?).lines() {
        let line = line?;
        if !line.contains("\"m\"") {
            continue;
        }
        let Ok(serde_json::Value::Array(ev)) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let (Some(code), Some(text)) = (ev.get(1).and_then(|v| v.as_str()), ev.get(2).and_then(|v| v.as_str())) else {
            continue;
        };
        if code != "m" {
            continue;
        }
        for (slot, prefix) in found.iter_mut().zip(PREFIXES) {
            let Some(rest) = text.strip_prefix(prefix) else { continue };
            // "N bytes in NAME, sha256 HEX"
            let parsed = rest.split_once(" bytes in ").and_then(|(n, rest)| {
                let (name, sha) = rest.split_once(", sha256 ")?;
                Some((name.to_string(), n.parse().ok()?, sha.to_string()))
            });
            if parsed.is_some() {
                *slot = parsed;
            }
        }
    }
    Ok(found.into_iter().flatten().collect())
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
        for r in batch.iter().filter(|r| r.kind == "session.ended" || r.kind == "session.interrupted") {
            let d: serde_json::Value = serde_json::from_str(r.details.get()).unwrap_or_default();
            if r.kind == "session.interrupted" {
                check_interrupted(&mut report, &d);
                continue;
            }
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

/// A session closed after a crash: the cast and each side file against the event's hashes.
fn check_interrupted(report: &mut Report, d: &serde_json::Value) {
    let session = d["session"].as_str().unwrap_or("?");
    let Some(path) = d["recording"].as_str() else { return };
    let cast = PathBuf::from(path);
    match d["recording_sha256"].as_str() {
        Some(sha) => compare(report, session, "recording", &cast, sha, d["recording_size"].as_u64()),
        // The cast was already gone when the session was closed.
        None => {
            report.problems.push(format!("session {session}: recording {} was missing after a crash", cast.display()))
        }
    }
    let sides: Vec<crate::audit::SideFile> = serde_json::from_value(d["side_files"].clone()).unwrap_or_default();
    for f in sides {
        compare(report, session, "side file", &cast.with_file_name(&f.name), &f.sha256, u64::try_from(f.size).ok());
    }
}

/// Hashes `file` and compares it with `sha` (and `size`).
fn compare(report: &mut Report, session: &str, what: &str, file: &Path, sha: &str, size: Option<u64>) {
    match hash_file(file) {
        Err(e) => report.problems.push(format!("session {session}: {what} {} cannot be read: {e}", file.display())),
        Ok((got, n)) if got != sha || size.is_some_and(|s| s != n) => report.problems.push(format!(
            "session {session}: {what} {} was altered ({n} bytes, SHA-256 differs from the audit chain)",
            file.display()
        )),
        Ok(_) => report.intact += 1,
    }
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
    let sides = match side_files(cast) {
        Err(e) => {
            report.problems.push(format!("session {session}: recording {shown} cannot be read: {e}"));
            return;
        }
        Ok(s) => s,
    };
    for (name, size, sha) in sides {
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
        assert_eq!(side_files(&cast).expect("read"), vec![("x.out".into(), 12, "abc".into())]);
        let with_input =
            [&lines[..], &[r#"[0.4,"m","[penstock] binary input: 7 bytes in x.in, sha256 def"]"#]].concat();
        std::fs::write(&cast, with_input.join("\n") + "\n").expect("write");
        assert_eq!(
            side_files(&cast).expect("read"),
            vec![("x.out".into(), 12, "abc".into()), ("x.in".into(), 7, "def".into())]
        );
        std::fs::write(&cast, lines[..2].join("\n") + "\n").expect("write");
        assert!(side_files(&cast).expect("read").is_empty(), "an `o` line is output, not a marker");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
