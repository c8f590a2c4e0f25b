//! `penstock evidence verify`: checks a bundle offline (no database, no installation): every
//! file against the MANIFEST, the MANIFEST's signature and key, the audit-chain segment's hashes
//! and links, and each recording against the SHA-256 its `session.ended` event holds. Every
//! problem is reported, one line each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use russh::keys::ssh_key::PublicKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::tar::{self, Entry};
use crate::audit::{self, Record};
use crate::replay::cast;

/// Files kept in memory to be parsed (everything is hashed while streaming).
const KEEP_MAX: u64 = 256 * 1024 * 1024;
/// All kept files together.
const KEEP_TOTAL: u64 = 1024 * 1024 * 1024;

/// What verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per problem; empty means the bundle checks out.
    pub problems: Vec<String>,
    /// What was checked (for the success message).
    pub checked: Vec<String>,
    /// Fingerprint of the key that signed it, if the signature parsed.
    pub signer: Option<String>,
}

struct File {
    sha: String,
    size: u64,
    data: Option<Vec<u8>>,
}

fn keep(rel: &str) -> bool {
    !rel.starts_with("recordings/") || rel.ends_with(".cast")
}

/// Reads the tar; returns the top folder and files by path relative to it.
fn read_bundle(path: &Path, report: &mut Report) -> anyhow::Result<BTreeMap<String, File>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut files = BTreeMap::new();
    let mut top: Option<String> = None;
    let mut kept = 0u64;
    tar::read(std::io::BufReader::new(f), |e| {
        let (p, kind) = match &e {
            Entry::Dir(p) => (p.clone(), 'd'),
            Entry::File(p, _, _) => (p.clone(), 'f'),
            Entry::Other(p, _) => (p.clone(), 'o'),
        };
        let clean = p.trim_end_matches('/');
        let (first, rel) = clean.split_once('/').unwrap_or((clean, ""));
        if top.is_none() {
            top = Some(first.to_string());
        }
        if top.as_deref() != Some(first) || rel.split('/').any(|c| c == ".." || c == ".") {
            report.problems.push(format!("added: {p} (outside the bundle folder)"));
            return Ok(());
        }
        match e {
            Entry::Dir(_) => {}
            Entry::Other(_, t) => {
                report.problems.push(format!("added: {rel} (tar entry of type {:?}, not a file)", t as char))
            }
            Entry::File(_, size, r) => {
                let _ = kind;
                let mut h = Sha256::new();
                let mut data = if keep(rel) && size <= KEEP_MAX && kept + size <= KEEP_TOTAL {
                    kept += size;
                    Some(Vec::with_capacity(size as usize))
                } else {
                    None
                };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    if let Some(d) = &mut data {
                        d.extend_from_slice(&buf[..n]);
                    }
                }
                if files.insert(rel.to_string(), File { sha: hex::encode(h.finalize()), size, data }).is_some() {
                    report.problems.push(format!("added: {rel} (a second copy)"));
                }
            }
        }
        Ok(())
    })?;
    Ok(files)
}

fn text<'a>(files: &'a BTreeMap<String, File>, name: &str) -> Option<&'a [u8]> {
    files.get(name).and_then(|f| f.data.as_deref())
}

/// Checks the bundle at `path`; with `key`, it must be signed by that key.
pub fn verify(path: &Path, key: Option<&PublicKey>) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let files = read_bundle(path, &mut report)?;
    let p = &mut report.problems;

    // 1. Files against the MANIFEST.
    let manifest = text(&files, "MANIFEST");
    let mut listed = BTreeMap::new();
    match manifest {
        None => p.push("missing: MANIFEST (nothing can be checked)".into()),
        Some(m) => {
            for (i, line) in String::from_utf8_lossy(m).lines().enumerate() {
                match line.split_once("  ") {
                    Some((sha, name)) if sha.len() == 64 && !name.is_empty() => {
                        listed.insert(name.to_string(), sha.to_string());
                    }
                    _ => p.push(format!("changed: MANIFEST (line {} is not `SHA256  FILE`)", i + 1)),
                }
            }
        }
    }
    for (name, sha) in &listed {
        match files.get(name) {
            None => p.push(format!("missing: {name} (listed in MANIFEST)")),
            Some(f) if &f.sha != sha => p.push(format!("changed: {name} (SHA-256 differs from MANIFEST)")),
            Some(_) => {}
        }
    }
    if manifest.is_some() {
        for name in files.keys() {
            if name != "MANIFEST" && name != "MANIFEST.sig" && !listed.contains_key(name) {
                p.push(format!("added: {name} (not in MANIFEST)"));
            }
        }
        report.checked.push(format!("{} files match MANIFEST", listed.len()));
    }

    // 2. The signature and the key.
    let bundled = text(&files, "evidence.pub").and_then(|b| {
        let line = String::from_utf8_lossy(b);
        PublicKey::from_openssh(line.trim()).ok()
    });
    let expected = key.cloned().or(bundled.clone());
    match (manifest, text(&files, "MANIFEST.sig")) {
        (_, None) => p.push("missing: MANIFEST.sig (the bundle is not signed)".into()),
        (None, Some(_)) => {}
        (Some(m), Some(s)) => match super::parse_sig(s) {
            Err(e) => p.push(format!("bad signature: MANIFEST.sig cannot be read ({e})")),
            Ok(sig) => {
                let signer = PublicKey::from(sig.public_key().clone());
                let fp = crate::keys::fingerprint(&signer);
                report.signer = Some(fp.clone());
                if signer.verify(super::NAMESPACE, m, &sig).is_err() {
                    p.push("bad signature: MANIFEST.sig does not match MANIFEST (namespace penstock-evidence)".into());
                }
                match &expected {
                    None => p.push("missing: evidence.pub (and no --key given: the signer cannot be checked)".into()),
                    Some(k) if !crate::keys::same_key(k, &signer) => p.push(format!(
                        "wrong key: MANIFEST.sig is signed by {fp}, not by the {} key {}",
                        if key.is_some() { "given" } else { "bundle's" },
                        crate::keys::fingerprint(k)
                    )),
                    Some(_) => {}
                }
            }
        },
    }
    if let (Some(k), Some(b)) = (key, &bundled) {
        if !crate::keys::same_key(k, b) {
            p.push(format!(
                "wrong key: evidence.pub in the bundle is {}, not the given key {}",
                crate::keys::fingerprint(b),
                crate::keys::fingerprint(k)
            ));
        }
    }

    // 3. The audit-chain segment.
    let mut events: Vec<Record> = Vec::new();
    match text(&files, "audit/segment.jsonl") {
        None => p.push("missing: audit/segment.jsonl".into()),
        Some(b) => {
            for (i, line) in String::from_utf8_lossy(b).lines().enumerate() {
                match serde_json::from_str::<Record>(line) {
                    Ok(r) => events.push(r),
                    Err(_) => p.push(format!("chain break: audit/segment.jsonl line {} is not an audit event", i + 1)),
                }
            }
        }
    }
    let info: Value =
        text(&files, "audit/segment.json").and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    check_chain(&events, &info, p);
    if let (Some(a), Some(b)) = (events.first(), events.last()) {
        report.checked.push(format!("audit events {}–{} hash and link (prev hash {})", a.seq, b.seq, a.prev_hash));
    }

    // 4. Records and recordings against the chain.
    let ended: BTreeMap<String, Value> = events
        .iter()
        .filter(|r| r.kind == "session.ended")
        .filter_map(|r| serde_json::from_str::<Value>(r.details.get()).ok())
        .filter_map(|d| Some((d["session"].as_str()?.to_string(), d)))
        .collect();
    let sessions: Vec<Value> =
        text(&files, "records/sessions.json").and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    let mut matched = 0;
    for s in &sessions {
        let id = s["id"].as_str().unwrap_or("?");
        let (Some(path), Some(sha)) = (s["recording_path"].as_str(), s["recording_sha256"].as_str()) else { continue };
        match ended.get(id) {
            None => p.push(format!("chain break: no session.ended event for session {id} in the segment")),
            Some(d) if d["recording_sha256"].as_str() != Some(sha) => p.push(format!(
                "changed: records/sessions.json (session {id}: recording SHA-256 differs from its session.ended event)"
            )),
            Some(_) => {}
        }
        let name =
            format!("recordings/{}", Path::new(path).file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let Some(f) = files.get(&name) else {
            p.push(format!("missing: {name} (recording of session {id})"));
            continue;
        };
        if ended.get(id).and_then(|d| d["recording_sha256"].as_str()) != Some(f.sha.as_str()) {
            p.push(format!("changed: {name} (SHA-256 differs from the session.ended event of session {id})"));
            continue;
        }
        matched += 1;
        let Some(data) = &f.data else { continue };
        let Ok(sides) = cast::side_files(&data[..]) else {
            p.push(format!("changed: {name} (not a readable asciicast recording)"));
            continue;
        };
        for side in sides {
            let sname = format!("recordings/{}", side.name);
            match files.get(&sname) {
                None => p.push(format!("missing: {sname} (side file its recording names)")),
                Some(sf) if sf.sha != side.sha256 || sf.size != side.size => {
                    p.push(format!("changed: {sname} (size or SHA-256 differs from the one its recording names)"))
                }
                Some(_) => matched += 1,
            }
        }
    }
    let transfers: Vec<Value> =
        text(&files, "records/transfers.json").and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
    let chained: BTreeSet<(String, String, String)> = events
        .iter()
        .filter(|r| r.kind == "session.file_transferred")
        .filter_map(|r| serde_json::from_str::<Value>(r.details.get()).ok())
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (s("session"), s("path"), s("sha256"))
        })
        .collect();
    for t in &transfers {
        let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
        if !chained.contains(&(s("session_id"), s("path"), s("sha256"))) {
            p.push(format!("changed: records/transfers.json (transfer {} has no matching audit event)", t["id"]));
        }
    }
    report.checked.push(format!("{matched} recording files match the audit chain"));
    Ok(report)
}

fn check_chain(events: &[Record], info: &Value, p: &mut Vec<String>) {
    let mut prev: Option<&Record> = None;
    for r in events {
        match prev {
            None => {
                if info["prev_hash"].as_str().is_some_and(|h| h != r.prev_hash) {
                    p.push(format!(
                        "chain break: event {} does not link to the prev_hash in audit/segment.json",
                        r.seq
                    ));
                }
                if info["first_seq"].as_i64().is_some_and(|s| s != r.seq) {
                    p.push(format!("chain break: the segment starts at event {}, not {}", r.seq, info["first_seq"]));
                }
            }
            Some(b) => {
                if r.seq != b.seq + 1 {
                    p.push(format!("chain break: event {} is missing (event {} follows {})", b.seq + 1, r.seq, b.seq));
                } else if r.prev_hash != b.hash {
                    p.push(format!("chain break: event {} does not link to event {}", r.seq, b.seq));
                }
            }
        }
        if audit::record_hash(r) != r.hash {
            p.push(format!("chain break: event {} does not match its hash (edited)", r.seq));
        }
        prev = Some(r);
    }
    if let Some(last) = events.last() {
        if info["last_seq"].as_i64().is_some_and(|s| s != last.seq) {
            p.push(format!("chain break: the segment ends at event {}, not {}", last.seq, info["last_seq"]));
        }
        if info["last_hash"].as_str().is_some_and(|h| h != last.hash) {
            p.push(format!("chain break: event {} is not the last_hash in audit/segment.json", last.seq));
        }
    } else if !info.is_null() && info.get("first_seq").is_some() {
        p.push("chain break: audit/segment.jsonl is empty".into());
    }
}
