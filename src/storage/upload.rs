//! The uploader: with `[recordings] store = "s3"`, moves recordings from the local spool (the
//! recordings folder) to the bucket.
//!
//! - While a session runs, its files go up in parts (`<object>.parts/<offset>`) at least every
//!   `part_secs` and whenever `part_kib` new KiB are written, so a lost node loses at most its
//!   last part; a survivor reads the parts through the storage interface.
//! - When the session has ended (its hash is in the chain by then), each file is uploaded whole,
//!   write-once, the parts and the spool copy are deleted, and `recording.uploaded` is audited.
//!   A node that was lost uploads what it spooled when it comes back; where the chain held the
//!   hash of the parts a survivor could reach, the row takes the whole recording's hash and the
//!   event keeps the earlier one.
//! - S3 down or hung: sessions go on spooling (requests time out; nothing here is on a session's
//!   path), and the backlog drains once S3 answers. `require_remote` makes new sessions wait
//!   for a writable bucket (see [`check_remote`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::s3::{self, Bucket, PutOutcome};
use crate::app::App;
use crate::audit::{self, Event};
use crate::config::{Config, RecordingStore};

/// How the remote store is doing (one per process; the metrics endpoint reads it too).
#[derive(Debug, Default)]
pub struct Health {
    /// The last probe wrote to the bucket.
    pub remote_ok: AtomicBool,
    /// Files waiting in the spool for their final upload.
    pub backlog_files: AtomicU64,
    /// Their bytes.
    pub backlog_bytes: AtomicU64,
    /// Objects uploaded (parts and whole files).
    pub uploads: AtomicU64,
    /// Failed upload passes.
    pub failures: AtomicU64,
}

/// This process's view of the remote store.
pub static HEALTH: Health = Health {
    remote_ok: AtomicBool::new(false),
    backlog_files: AtomicU64::new(0),
    backlog_bytes: AtomicU64::new(0),
    uploads: AtomicU64::new(0),
    failures: AtomicU64::new(0),
};

/// Files looked at per pass (a spool larger than this drains over several passes).
const MAX_FILES_PER_PASS: usize = 10_000;
/// The largest part read into memory at once.
const MAX_PART: u64 = 64 * 1024 * 1024;

/// Refuses a new session when `require_remote` is set and the bucket cannot be written.
pub fn check_remote(cfg: &Config) -> anyhow::Result<()> {
    let r = &cfg.recordings;
    if r.store == RecordingStore::S3 && r.require_remote && !HEALTH.remote_ok.load(Ordering::SeqCst) {
        bail!("recording storage (S3 bucket {}) cannot be written and [recordings] require_remote is set", r.s3_bucket);
    }
    Ok(())
}

/// Whether recordings can be stored now (for readiness): always with local files; with S3, when
/// the last probe wrote or `require_remote` is off (the spool takes them).
pub fn remote_ready(cfg: &Config) -> bool {
    cfg.recordings.store == RecordingStore::Local
        || !cfg.recordings.require_remote
        || HEALTH.remote_ok.load(Ordering::SeqCst)
}

/// Checks the S3 settings, probes the bucket once and starts the uploader (nothing with local
/// storage). Bad settings stop `serve` with a one-line error; an unreachable bucket does not.
pub async fn start(app: &App) -> anyhow::Result<()> {
    if app.config.recordings.store != RecordingStore::S3 {
        return Ok(());
    }
    let bucket = Bucket::from_config(&app.config.recordings)?;
    probe(&bucket, &app.node_id).await;
    if !HEALTH.remote_ok.load(Ordering::SeqCst) {
        tracing::warn!(bucket = %bucket.name, "recording storage cannot be written now: recordings are spooled until it can");
    }
    let app = app.clone();
    tokio::spawn(async move {
        let mut up = Uploader { app, bucket, parts: HashMap::new(), last_probe: Instant::now() };
        up.run().await
    });
    Ok(())
}

async fn probe(bucket: &Bucket, node: &str) {
    let (b, n) = (bucket.clone(), node.to_string());
    let ok = match s3::run(async move { b.probe(&n).await }).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) | Err(e) => {
            if HEALTH.remote_ok.load(Ordering::SeqCst) {
                tracing::warn!(error = %e, "recording storage cannot be written");
            }
            false
        }
    };
    if ok && !HEALTH.remote_ok.load(Ordering::SeqCst) {
        tracing::info!(bucket = %bucket.name, "recording storage is writable");
    }
    HEALTH.remote_ok.store(ok, Ordering::SeqCst);
}

/// Where a live file's parts have got to.
#[derive(Debug)]
struct PartState {
    uploaded: u64,
    last: Instant,
}

struct Uploader {
    app: App,
    bucket: Bucket,
    parts: HashMap<PathBuf, PartState>,
    last_probe: Instant,
}

/// One file in the spool.
struct Spooled {
    path: PathBuf,
    len: u64,
}

impl Uploader {
    async fn run(&mut self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ok = HEALTH.remote_ok.load(Ordering::SeqCst);
            // Probe every 5 s, and every second while the bucket is failing.
            if !ok || self.last_probe.elapsed() >= Duration::from_secs(5) {
                probe(&self.bucket, &self.app.node_id).await;
                self.last_probe = Instant::now();
            }
            if !HEALTH.remote_ok.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = self.pass().await {
                HEALTH.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "recording upload pass failed; it is retried");
            }
        }
    }

    /// One look at the spool.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let root = self.app.config.recordings_dir();
        let files = tokio::task::spawn_blocking(move || spooled(&root)).await.context("spool scan")??;
        let mut by_session: HashMap<String, Vec<Spooled>> = HashMap::new();
        for f in files {
            let Some(stem) = f.path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('.').next()) else {
                continue;
            };
            by_session.entry(stem.to_string()).or_default().push(f);
        }
        let (mut backlog_files, mut backlog_bytes) = (0u64, 0u64);
        let mut seen = std::collections::HashSet::new();
        for (session, files) in by_session {
            let row = sqlx::query("SELECT ended_at, recording_path, recording_sha256 FROM sessions WHERE id = $1")
                .bind(&session)
                .fetch_optional(self.app.store.pool())
                .await?;
            let Some(row) = row else { continue };
            let ended: Option<i64> = row.try_get(0)?;
            let cast: Option<String> = row.try_get(1)?;
            let sha: Option<String> = row.try_get(2)?;
            if ended.is_none() {
                for f in &files {
                    seen.insert(f.path.clone());
                    self.upload_part(f).await?;
                }
                continue;
            }
            backlog_files += files.len() as u64;
            backlog_bytes += files.iter().map(|f| f.len).sum::<u64>();
            self.finish(&session, cast.as_deref(), sha, &files).await?;
            backlog_files -= files.len() as u64;
            backlog_bytes -= files.iter().map(|f| f.len).sum::<u64>();
            HEALTH.backlog_files.store(backlog_files, Ordering::Relaxed);
            HEALTH.backlog_bytes.store(backlog_bytes, Ordering::Relaxed);
        }
        self.parts.retain(|p, _| seen.contains(p));
        HEALTH.backlog_files.store(backlog_files, Ordering::Relaxed);
        HEALTH.backlog_bytes.store(backlog_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads the part of a live file written since the last part, when one is due.
    async fn upload_part(&mut self, f: &Spooled) -> anyhow::Result<()> {
        let key = self.bucket.key(&f.path.to_string_lossy())?;
        if !self.parts.contains_key(&f.path) {
            let (b, k) = (self.bucket.clone(), key.clone());
            let parts = s3::run(async move { b.parts(&k).await }).await??;
            let mut uploaded = 0;
            for (off, size, _) in parts {
                if off == uploaded {
                    uploaded += size;
                }
            }
            self.parts.insert(f.path.clone(), PartState { uploaded, last: Instant::now() });
        }
        let Some(st) = self.parts.get_mut(&f.path) else { return Ok(()) };
        let new = f.len.saturating_sub(st.uploaded);
        let due = new >= self.app.config.recordings.part_kib.max(1) * 1024
            || (new > 0 && st.last.elapsed() >= Duration::from_secs(self.app.config.recordings.part_secs.max(1)));
        if !due {
            return Ok(());
        }
        let (off, len) = (st.uploaded, new.min(MAX_PART));
        let path = f.path.clone();
        let data = tokio::task::spawn_blocking(move || read_at(&path, off, len)).await.context("part read")??;
        let n = data.len() as u64;
        let (b, k) = (self.bucket.clone(), Bucket::part_key(&key, off));
        match s3::run(async move { b.put_once(&k, data).await }).await?? {
            PutOutcome::Written | PutOutcome::Exists { ours: true, .. } => {}
            PutOutcome::Exists { size, .. } => {
                bail!("part {off} of {key} is already in the bucket with another size ({size} bytes)")
            }
        }
        HEALTH.uploads.fetch_add(1, Ordering::Relaxed);
        st.uploaded = off + n;
        st.last = Instant::now();
        Ok(())
    }

    /// Uploads an ended session's files whole, then drops the parts and the spool copies.
    async fn finish(
        &mut self,
        session: &str,
        cast: Option<&str>,
        chain_sha: Option<String>,
        files: &[Spooled],
    ) -> anyhow::Result<()> {
        let cast_name = cast.and_then(|c| Path::new(c).file_name()).map(|n| n.to_os_string());
        let mut main: Option<(String, String, u64)> = None;
        let mut names = Vec::new();
        for f in files {
            let path = f.path.clone();
            let (sha, size) = tokio::task::spawn_blocking(move || hash_file(&path)).await.context("hash")??;
            let key = self.bucket.key(&f.path.to_string_lossy())?;
            let (b, k, p) = (self.bucket.clone(), key.clone(), f.path.clone());
            match s3::run(async move { b.put_file_once(&k, &p).await }).await?? {
                PutOutcome::Written | PutOutcome::Exists { ours: true, .. } => {}
                PutOutcome::Exists { size: there, .. } => {
                    bail!("{key} is already in the bucket with another size ({there} bytes, spool {size}): left in the spool")
                }
            }
            HEALTH.uploads.fetch_add(1, Ordering::Relaxed);
            names.push(key.to_string());
            if Some(f.path.file_name().map(|n| n.to_os_string())) == Some(cast_name.clone()) {
                main = Some((key.to_string(), sha, size));
            }
        }
        let (object, sha, size) = match main {
            Some(m) => m,
            None => (names.first().cloned().unwrap_or_default(), String::new(), 0),
        };
        let replaced = !sha.is_empty() && chain_sha.as_deref() != Some(sha.as_str());
        let mut tx = self.app.store.begin_write().await?;
        if replaced {
            // Only a session a survivor closed (parts, or nothing reachable) gets the whole
            // recording's hash; a normally ended session whose spool copy differs keeps the
            // chain's hash, and `audit verify` reports the difference.
            let lost = sqlx::query(
                "UPDATE sessions SET recording_sha256 = $1 WHERE id = $2 AND end_reason IN ('node_lost', 'interrupted')",
            )
            .bind(&sha)
            .bind(session)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if lost == 0 {
                tracing::error!(
                    session,
                    "spooled recording differs from the hash in the audit chain; uploaded as found"
                );
            }
        }
        let ev = Event::RecordingUploaded {
            session: session.to_string(),
            object,
            sha256: sha,
            size: size as i64,
            files: names,
            previous_sha256: if replaced { chain_sha } else { None },
        };
        audit::append(&mut tx, self.app.clock.as_ref(), "system", &ev).await?;
        tx.commit().await?;
        for f in files {
            let key = self.bucket.key(&f.path.to_string_lossy())?;
            let b = self.bucket.clone();
            s3::run(async move { b.delete_parts(&key).await }).await??;
            if let Err(e) = std::fs::remove_file(&f.path) {
                tracing::warn!(file = %f.path.display(), error = %e, "cannot remove uploaded recording from the spool");
            }
            self.parts.remove(&f.path);
        }
        tracing::info!(session, files = files.len(), "recording uploaded");
        Ok(())
    }
}

/// The files in the spool (recordings and side files), oldest folders first.
fn spooled(root: &Path) -> anyhow::Result<Vec<Spooled>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read spool {}", dir.display())),
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(Spooled { path: e.path(), len });
                if out.len() >= MAX_FILES_PER_PASS {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

fn read_at(path: &Path, off: u64, len: u64) -> anyhow::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    f.seek(SeekFrom::Start(off))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
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
