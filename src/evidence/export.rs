//! `penstock evidence export`: chooses the sessions, gathers their records, recordings and the
//! covering audit-chain segment, and writes the signed bundle (to a temporary file renamed into
//! place, so a failed export leaves nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Column, Row};

use crate::app::App;
use crate::audit::{self, Record};
use crate::replay::cast;
use crate::storage::{self, RecordingStorage};

/// Which sessions go into a bundle.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One session (id or unique prefix).
    Session(String),
    /// Every session under the grant of a request, and the request itself.
    Request(i64),
    /// Sessions that started in `[since, until)` (Unix seconds).
    Range(i64, i64),
}

/// What was written.
#[derive(Debug)]
pub struct Summary {
    /// The bundle's top folder.
    pub folder: String,
    /// Sessions in it.
    pub sessions: usize,
    /// Recording files (casts and side files).
    pub recordings: usize,
    /// Audit events in the segment.
    pub events: usize,
}

/// A database row as a JSON object (integers, reals, text; blobs as hex).
pub fn row_json(row: &AnyRow) -> Value {
    let mut m = Map::new();
    for (i, c) in row.columns().iter().enumerate() {
        let v = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            json!(v)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            json!(v)
        } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            json!(v)
        } else if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
            json!(v.map(hex::encode))
        } else {
            Value::Null
        };
        m.insert(c.name().to_string(), v);
    }
    Value::Object(m)
}

const SESSION_SQL: &str = "SELECT s.id, u.name AS user_name, u.org AS user_org, t.name AS target_name, s.grant_id, \
     s.client_addr, s.started_at, s.ended_at, s.bytes_up, s.bytes_down, s.end_reason, s.recording_path, \
     s.recording_sha256 FROM sessions s LEFT JOIN users u ON u.id = s.user_id LEFT JOIN targets t ON t.id = s.target_id";

/// Resolves a session id or unique prefix (at least 4 hex digits) to the full id.
pub async fn resolve_session(app: &App, id_or_prefix: &str) -> anyhow::Result<String> {
    let p = id_or_prefix.to_ascii_lowercase();
    if p.len() < 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid session id {id_or_prefix:?}: give at least 4 hex digits");
    }
    let rows = sqlx::query("SELECT id FROM sessions WHERE id LIKE $1 ORDER BY id LIMIT 2")
        .bind(format!("{p}%"))
        .fetch_all(app.store.pool())
        .await?;
    match rows.as_slice() {
        [] => bail!("unknown session {id_or_prefix:?}"),
        [r] => Ok(r.try_get(0)?),
        _ => bail!("session prefix {id_or_prefix:?} is ambiguous: give more digits"),
    }
}

/// Session rows (as JSON) of a selection, plus request ids it names.
async fn select(app: &App, sel: &Selection) -> anyhow::Result<(Vec<Value>, BTreeSet<i64>)> {
    let pool = app.store.pool();
    let mut requests = BTreeSet::new();
    let rows = match sel {
        Selection::Session(id) => {
            let id = resolve_session(app, id).await?;
            sqlx::query(&format!("{SESSION_SQL} WHERE s.id = $1")).bind(id).fetch_all(pool).await?
        }
        Selection::Request(n) => {
            let row = sqlx::query("SELECT grant_id FROM requests WHERE id = $1")
                .bind(n)
                .fetch_optional(pool)
                .await?
                .with_context(|| format!("unknown request {n}"))?;
            requests.insert(*n);
            match row.try_get::<Option<i64>, _>(0)? {
                Some(g) => {
                    sqlx::query(&format!("{SESSION_SQL} WHERE s.grant_id = $1 ORDER BY s.started_at, s.id"))
                        .bind(g)
                        .fetch_all(pool)
                        .await?
                }
                None => Vec::new(),
            }
        }
        Selection::Range(since, until) => {
            if until <= since {
                bail!("--until must be after --since");
            }
            sqlx::query(&format!(
                "{SESSION_SQL} WHERE s.started_at >= $1 AND s.started_at < $2 ORDER BY s.started_at, s.id"
            ))
            .bind(since)
            .bind(until)
            .fetch_all(pool)
            .await?
        }
    };
    Ok((rows.iter().map(row_json).collect(), requests))
}

async fn rows_for(app: &App, sql: &str, ids: impl IntoIterator<Item = Value>) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for id in ids {
        let q = sqlx::query(sql);
        let q = match &id {
            Value::Number(n) => q.bind(n.as_i64().unwrap_or(-1)),
            Value::String(s) => q.bind(s.clone()),
            _ => continue,
        };
        out.extend(q.fetch_all(app.store.pool()).await?.iter().map(row_json));
    }
    Ok(out)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

/// A file to put in the bundle.
enum Source {
    Mem(Vec<u8>),
    Stored(String),
}

/// The README an auditor reads first.
fn readme(folder: &str, fingerprint: &str, summary: &str) -> String {
    format!(
        "Penstock evidence bundle {folder}\n\
         ====================================================================\n\n\
         {summary}\n\
         Signed by the gateway's Ed25519 evidence key {fingerprint}\n\
         (SSHSIG, namespace \"penstock-evidence\"). Obtain the gateway's evidence public key\n\
         through another channel (`penstock evidence key` on the gateway) and compare: the copy\n\
         in this bundle (evidence.pub) proves nothing on its own.\n\n\
         Check it with stock tools (coreutils and OpenSSH), without Penstock:\n\n\
         \x20 tar xf BUNDLE.tar && cd {folder}\n\
         \x20 sha256sum -c --strict MANIFEST        # every file intact\n\
         \x20 find . -type f ! -name MANIFEST ! -name MANIFEST.sig | sed 's#^./##' | sort \\\n\
         \x20   | diff - <(cut -c67- MANIFEST | sort) # no file added or removed\n\
         \x20 # allowed_signers holds the key below; better, write your own from the key you trust:\n\
         \x20 #   echo \"penstock namespaces=\\\"penstock-evidence\\\" $(cut -d' ' -f1,2 evidence.pub)\" > allowed_signers\n\
         \x20 ssh-keygen -Y verify -f allowed_signers -I penstock -n penstock-evidence \\\n\
         \x20   -s MANIFEST.sig < MANIFEST\n\n\
         Or, on any machine with the penstock binary (no database needed):\n\n\
         \x20 penstock evidence verify BUNDLE.tar --key evidence.pub\n\n\
         which also re-hashes the audit-chain segment, checks it links to the hash of the event\n\
         before it (audit/segment.json, compare with the gateway's `audit verify` head), and checks\n\
         each recording against the SHA-256 its session.ended event holds.\n\n\
         Contents\n\
         --------\n\
         records/*.json          sessions, file transfers, grants, requests, approvals\n\
         audit/segment.jsonl     the audit events from the first to the last that concern these\n\
         \x20                       sessions, grants and requests (each hashed over the one before)\n\
         audit/segment.json      first/last sequence numbers, prev_hash (the event before), head\n\
         recordings/*.cast       asciicast v2 recordings (play with `asciinema play` or\n\
         \x20                       `penstock replay`); *.out / *.in binary side files, named with\n\
         \x20                       their size and SHA-256 by a marker event in their cast\n\
         recordings/*.frames     RDP recordings: the target's decrypted stream, the vendor's input\n\
         \x20                       and its data on the clipboard and drive channels the policy\n\
         \x20                       allowed (`penstock replay ID --frames/--video/--keys/--channels`\n\
         \x20                       on the gateway)\n\
         evidence.pub            the signing key; allowed_signers: the same for ssh-keygen\n\
         MANIFEST, MANIFEST.sig  SHA-256 of every other file, and its signature\n"
    )
}

/// Writes the bundle for `sel` to `out`.
pub async fn export(app: &App, sel: &Selection, out: &Path) -> anyhow::Result<Summary> {
    let key = super::load_key(&app.config)?;
    let public = key.public_key().clone();
    let store = storage::for_app(app);
    let (sessions, mut request_ids) = select(app, sel).await?;
    if sessions.is_empty() && request_ids.is_empty() {
        bail!("no sessions match: nothing to export");
    }
    let session_ids: BTreeSet<String> = sessions.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect();
    let mut grant_ids: BTreeSet<i64> = sessions.iter().filter_map(|s| s["grant_id"].as_i64()).collect();
    for r in rows_for(app, "SELECT id FROM requests WHERE grant_id = $1", grant_ids.iter().map(|g| json!(g))).await? {
        if let Some(id) = r["id"].as_i64() {
            request_ids.insert(id);
        }
    }
    let requests = rows_for(
        app,
        "SELECT r.id, u.name AS user_name, t.name AS target_name, r.policy, r.reason, r.duration, r.start_at, \
         r.created_at, r.required, r.state, r.decided_at, r.decided_by, r.decision_comment, r.grant_id \
         FROM requests r LEFT JOIN users u ON u.id = r.user_id LEFT JOIN targets t ON t.id = r.target_id WHERE r.id = $1",
        request_ids.iter().map(|r| json!(r)),
    )
    .await?;
    grant_ids.extend(requests.iter().filter_map(|r| r["grant_id"].as_i64()));
    let approvals = rows_for(
        app,
        "SELECT a.id, a.request_id, u.name AS approver, a.comment, a.at FROM approvals a \
         LEFT JOIN users u ON u.id = a.approver_id WHERE a.request_id = $1 ORDER BY a.id",
        request_ids.iter().map(|r| json!(r)),
    )
    .await?;
    let grants = rows_for(
        app,
        "SELECT g.id, u.name AS user_name, t.name AS target_name, g.valid_from, g.valid_until, g.revoked_at, \
         g.created_by, g.created_at, g.request_id, g.policy FROM grants g LEFT JOIN users u ON u.id = g.user_id \
         LEFT JOIN targets t ON t.id = g.target_id WHERE g.id = $1",
        grant_ids.iter().map(|g| json!(g)),
    )
    .await?;
    let transfers = rows_for(
        app,
        "SELECT id, session_id, direction, path, size, sha256, at FROM session_transfers WHERE session_id = $1 ORDER BY id",
        session_ids.iter().map(|s| json!(s)),
    )
    .await?;
    let segment = segment(app, &session_ids, &grant_ids, &request_ids).await?;

    let now = app.clock.now_utc();
    let folder = format!("penstock-evidence-{}", now.format("%Y%m%dT%H%M%SZ"));
    let mut files: BTreeMap<String, Source> = BTreeMap::new();
    let mut recordings = 0;
    let mut missing = Vec::new();
    for s in &sessions {
        let (Some(path), Some(_)) = (s["recording_path"].as_str(), s["recording_sha256"].as_str()) else { continue };
        if !store.exists(path) {
            missing.push(format!("{} (session {})", store.file_name(path), s["id"].as_str().unwrap_or("?")));
            continue;
        }
        files.insert(format!("recordings/{}", store.file_name(path)), Source::Stored(path.to_string()));
        recordings += 1;
        // A binary (RDP) recording has no side files (and is not a cast).
        let sides = if crate::recording::frames::is_frames(path) {
            Vec::new()
        } else {
            cast::side_files(storage::reader(&store, path)?)?
        };
        for side in sides {
            let loc = store.sibling(path, &side.name)?;
            if store.exists(&loc) {
                files.insert(format!("recordings/{}", side.name), Source::Stored(loc));
                recordings += 1;
            } else {
                missing.push(side.name.clone());
            }
        }
    }
    let (seg_events, seg_info) = match &segment {
        Some((events, info)) => (events.len(), info.clone()),
        None => (0, Value::Null),
    };
    let mut jsonl = Vec::new();
    if let Some((events, _)) = &segment {
        for r in events {
            serde_json::to_writer(&mut jsonl, r)?;
            jsonl.push(b'\n');
        }
    }
    let selection = match sel {
        Selection::Session(id) => json!({"session": id}),
        Selection::Request(n) => json!({"request": n}),
        Selection::Range(a, b) => json!({"since": a, "until": b}),
    };
    let fingerprint = crate::keys::fingerprint(&public);
    let bundle = json!({
        "format": "penstock-evidence/1",
        "created_at": app.clock.now(),
        "selection": selection,
        "sessions": session_ids,
        "grants": grant_ids,
        "requests": request_ids,
        "recordings_missing": missing,
        "key_fingerprint": fingerprint,
        "gateway_version": env!("CARGO_PKG_VERSION"),
    });
    let summary_text = format!(
        "{} session(s), {} recording file(s), {} request(s), {} grant(s), {} audit event(s).\n{}",
        sessions.len(),
        recordings,
        request_ids.len(),
        grant_ids.len(),
        seg_events,
        if missing.is_empty() {
            String::new()
        } else {
            format!("Recordings that were no longer stored: {}.\n", missing.join(", "))
        }
    );
    files.insert("README.txt".into(), Source::Mem(readme(&folder, &fingerprint, &summary_text).into_bytes()));
    files.insert("bundle.json".into(), Source::Mem(pretty(&bundle)));
    files.insert("evidence.pub".into(), Source::Mem(format!("{}\n", super::public_line(&public)).into_bytes()));
    files.insert("allowed_signers".into(), Source::Mem(super::allowed_signers_line(&public).into_bytes()));
    files.insert("records/sessions.json".into(), Source::Mem(pretty(&Value::Array(sessions.clone()))));
    files.insert("records/transfers.json".into(), Source::Mem(pretty(&Value::Array(transfers))));
    files.insert("records/grants.json".into(), Source::Mem(pretty(&Value::Array(grants))));
    files.insert("records/requests.json".into(), Source::Mem(pretty(&Value::Array(requests))));
    files.insert("records/approvals.json".into(), Source::Mem(pretty(&Value::Array(approvals))));
    files.insert("audit/segment.jsonl".into(), Source::Mem(jsonl));
    files.insert("audit/segment.json".into(), Source::Mem(pretty(&seg_info)));

    // MANIFEST: hash every file (stored ones are streamed).
    let mut manifest = String::new();
    let mut sizes = BTreeMap::new();
    for (name, src) in &files {
        let (sha, size) = match src {
            Source::Mem(b) => (hex::encode(Sha256::digest(b)), b.len() as u64),
            Source::Stored(loc) => {
                storage::hash(&store, loc).with_context(|| format!("cannot read recording {loc}"))?
            }
        };
        sizes.insert(name.clone(), (sha.clone(), size));
        manifest.push_str(&format!("{sha}  {name}\n"));
    }
    let sig = super::sign(&key, manifest.as_bytes())?;

    let tmp = tmp_path(out);
    let res = (|| -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = super::tar::Writer::new(std::io::BufWriter::new(file), app.clock.now());
        w.dir(&folder)?;
        for d in ["audit", "records", "recordings"] {
            w.dir(&format!("{folder}/{d}"))?;
        }
        for (name, src) in &files {
            let path = format!("{folder}/{name}");
            match src {
                Source::Mem(b) => w.bytes(&path, b)?,
                Source::Stored(loc) => {
                    let (sha, size) = &sizes[name];
                    let mut r = HashingReader { inner: store.open(loc)?, h: Sha256::new() };
                    w.file(&path, *size, &mut r)?;
                    if &hex::encode(std::mem::take(&mut r.h).finalize()) != sha {
                        bail!("recording {loc} changed while the bundle was written");
                    }
                }
            }
        }
        w.bytes(&format!("{folder}/MANIFEST"), manifest.as_bytes())?;
        w.bytes(&format!("{folder}/MANIFEST.sig"), sig.as_bytes())?;
        let file = w.finish()?.into_inner().map_err(|e| anyhow::anyhow!("cannot write bundle: {}", e.error()))?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Summary { folder, sessions: sessions.len(), recordings, events: seg_events })
}

fn tmp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

struct HashingReader {
    inner: Box<dyn std::io::Read + Send>,
    h: Sha256,
}

impl std::io::Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.h.update(&buf[..n]);
        Ok(n)
    }
}

/// Whether an audit event concerns the bundle's sessions, grants or requests.
fn concerns(r: &Record, sessions: &BTreeSet<String>, grants: &BTreeSet<i64>, requests: &BTreeSet<i64>) -> bool {
    let Ok(d) = serde_json::from_str::<Value>(r.details.get()) else { return false };
    d["session"].as_str().is_some_and(|s| sessions.contains(s))
        || d["grant_id"].as_i64().is_some_and(|g| grants.contains(&g))
        || d["request_id"].as_i64().is_some_and(|q| requests.contains(&q))
}

/// The contiguous chain segment from the first to the last event that concerns the bundle.
async fn segment(
    app: &App,
    sessions: &BTreeSet<String>,
    grants: &BTreeSet<i64>,
    requests: &BTreeSet<i64>,
) -> anyhow::Result<Option<(Vec<Record>, Value)>> {
    let (mut first, mut last) = (None, None);
    let mut relevant = Vec::new();
    let mut after = 0;
    let mut head = (0, audit::GENESIS.to_string());
    loop {
        let batch = audit::read(&app.store, after, 1000).await?;
        let Some(l) = batch.last() else { break };
        after = l.seq;
        head = (l.seq, l.hash.clone());
        for r in &batch {
            if concerns(r, sessions, grants, requests) {
                first.get_or_insert(r.seq);
                last = Some(r.seq);
                relevant.push(r.seq);
            }
        }
    }
    let (Some(first), Some(last)) = (first, last) else { return Ok(None) };
    let mut events = Vec::new();
    let mut after = first - 1;
    while after < last {
        let batch = audit::read(&app.store, after, (last - after).min(1000)).await?;
        let Some(l) = batch.last() else { break };
        after = l.seq;
        events.extend(batch);
    }
    let prev = events.first().map(|r| r.prev_hash.clone()).unwrap_or_default();
    let end = events.last().map(|r| r.hash.clone()).unwrap_or_default();
    let info = json!({
        "first_seq": first,
        "last_seq": last,
        "prev_hash": prev,
        "last_hash": end,
        "relevant": relevant,
        "chain_head_at_export": {"seq": head.0, "hash": head.1},
    });
    Ok(Some((events, info)))
}

/// Writes a one-line summary.
pub fn print_summary(out: &mut dyn Write, path: &Path, s: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "Wrote {}: {} session(s), {} recording file(s), {} audit event(s), signed (folder {}).",
        path.display(),
        s.sessions,
        s.recordings,
        s.events,
        s.folder
    )
}
