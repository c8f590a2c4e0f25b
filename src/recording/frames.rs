//! Recordings of binary protocols (RDP): a JSON header line naming the format and what a decoder
//! needs, then records `[kind: u8][micros since start: u64 LE][len: u32 LE][bytes]`. Written by a
//! task of its own behind a bounded queue, hashed with SHA-256 as written, fsynced on close.
//! A write error is reported through [`FrameRecorder::failure_watch`] (the session ends: fail
//! closed).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::app::App;

/// File name extension of frame recordings.
pub const EXTENSION: &str = "frames";
/// Record kind: bytes the server sent to the client.
pub const SERVER_TO_CLIENT: u8 = b'S';
/// Chunks queued before the relay waits for the writer.
const QUEUE: usize = 64;
/// Largest record (a chunk longer than this is split).
pub const MAX_RECORD: usize = 1024 * 1024;

/// A running frame recording.
#[derive(Debug)]
pub struct FrameRecorder {
    tx: Option<mpsc::Sender<(u8, u64, Bytes)>>,
    failed: watch::Receiver<Option<String>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<String>>>,
    start: Instant,
    /// Where it is (recording locator as stored in the session row).
    pub path: PathBuf,
}

/// Whether a recording locator names a frame recording (not an asciicast).
pub fn is_frames(locator: &str) -> bool {
    locator.ends_with(&format!(".{EXTENSION}"))
}

impl FrameRecorder {
    /// Creates `recordings/YYYY/MM/DD/<session>.frames` and writes `header` (a JSON object) as
    /// its first line. Any failure means the session must not run.
    pub async fn start(app: &App, session_id: &str, header: &serde_json::Value) -> anyhow::Result<FrameRecorder> {
        let root = app.config.recordings_dir();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create recordings folder {}", root.display()))?;
        super::check_space(&root, app.config.recordings.min_free_mib)?;
        crate::storage::upload::check_remote(&app.config)?;
        let dir = root.join(app.clock.now_utc().format("%Y/%m/%d").to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{session_id}.{EXTENSION}"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .with_context(|| format!("cannot create recording {}", path.display()))?;
        let line = format!("{header}\n");
        let mut hasher = Sha256::new();
        hasher.update(line.as_bytes());
        file.write_all(line.as_bytes()).await.with_context(|| format!("cannot write recording {}", path.display()))?;
        file.flush().await.with_context(|| format!("cannot write recording {}", path.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (fail_tx, failed) = watch::channel(None);
        let p = path.clone();
        let task = tokio::spawn(async move {
            let r = write_all(file, rx, hasher).await;
            if let Err(e) = &r {
                let _ = fail_tx.send(Some(format!("recording {} cannot be written: {e:#}", p.display())));
            }
            r
        });
        Ok(FrameRecorder { tx: Some(tx), failed, task: Some(task), start: Instant::now(), path })
    }

    /// Queues `data` as a record of `kind` stamped now; waits while the queue is full.
    pub async fn record(&self, kind: u8, data: Bytes) -> anyhow::Result<()> {
        let at = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let Some(tx) = &self.tx else { bail!("recording closed") };
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_RECORD));
            if tx.send((kind, at, chunk)).await.is_err() {
                bail!("the recording writer stopped");
            }
        }
        Ok(())
    }

    /// A receiver that holds the failure message once the recording cannot be written.
    pub fn failure_watch(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Writes what is queued, fsyncs, closes; returns the file's SHA-256 (hex).
    pub async fn finish(mut self) -> anyhow::Result<String> {
        drop(self.tx.take());
        match self.task.take() {
            Some(t) => t.await.context("recording task panicked")?,
            None => bail!("recording already finished"),
        }
    }
}

async fn write_all(
    file: tokio::fs::File,
    mut rx: mpsc::Receiver<(u8, u64, Bytes)>,
    mut hasher: Sha256,
) -> anyhow::Result<String> {
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut last_flush = Instant::now();
    while let Some((kind, at, data)) = rx.recv().await {
        let len = u32::try_from(data.len()).context("record too large")?;
        let mut head = [0u8; 13];
        head[0] = kind;
        head[1..9].copy_from_slice(&at.to_le_bytes());
        head[9..13].copy_from_slice(&len.to_le_bytes());
        hasher.update(head);
        hasher.update(&data);
        out.write_all(&head).await?;
        out.write_all(&data).await?;
        if last_flush.elapsed().as_secs() >= 1 {
            out.flush().await?;
            last_flush = Instant::now();
        }
    }
    out.flush().await?;
    out.get_ref().sync_all().await?;
    Ok(hex::encode(hasher.finalize()))
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Kind byte.
    pub kind: u8,
    /// Microseconds since the recording started.
    pub at_micros: u64,
    /// Bytes.
    pub data: Vec<u8>,
}

/// Reads a frame recording: its header and records.
pub fn read(mut r: impl std::io::Read) -> anyhow::Result<(serde_json::Value, Vec<Record>)> {
    let mut all = Vec::new();
    r.read_to_end(&mut all).context("cannot read recording")?;
    let nl = all.iter().position(|b| *b == b'\n').context("recording has no header line")?;
    let header: serde_json::Value = serde_json::from_slice(&all[..nl]).context("recording header is not JSON")?;
    let mut rest = &all[nl + 1..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 13 {
            bail!("recording ends inside a record header");
        }
        let kind = rest[0];
        let at = u64::from_le_bytes(rest[1..9].try_into().context("record header")?);
        let len = u32::from_le_bytes(rest[9..13].try_into().context("record header")?) as usize;
        let data = rest.get(13..13 + len).context("recording ends inside a record")?;
        records.push(Record { kind, at_micros: at, data: data.to_vec() });
        rest = &rest[13 + len..];
    }
    Ok((header, records))
}
