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
/// A quiet stream's records are in the file after this long.
const QUIET_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);
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
    let mut dirty = false;
    loop {
        // What was written reaches the file within QUIET_FLUSH of the stream going quiet, and
        // at least every second while it flows (live views read the file).
        let next = if dirty {
            match tokio::time::timeout(QUIET_FLUSH, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    out.flush().await?;
                    dirty = false;
                    last_flush = Instant::now();
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some((kind, at, data)) = next else { break };
        dirty = true;
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
            dirty = false;
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

/// Reads a frame recording whole: its header and records.
pub fn read(r: impl std::io::Read) -> anyhow::Result<(serde_json::Value, Vec<Record>)> {
    let (header, mut records) = Records::open(r)?;
    let all: Vec<Record> = records.by_ref().collect();
    if let Some(cut) = records.end()? {
        bail!("{cut}");
    }
    Ok((header, all))
}

/// The records of a finished recording as an iterator that holds one record at a time (for
/// exports and logs of recordings of any length). A read error or an oversized record ends the
/// iteration and [`Records::end`] reports it. A recording that stops inside its last record (the
/// gateway was killed mid-write) yields every whole record, and `end` says what was cut.
#[derive(Debug)]
pub struct Records<R> {
    reader: RecordReader<R>,
    error: Option<anyhow::Error>,
    cut: Option<String>,
    ended: bool,
}

impl<R: std::io::Read> Records<R> {
    /// The recording's header and an iterator over its records.
    pub fn open(r: R) -> anyhow::Result<(serde_json::Value, Records<R>)> {
        let mut reader = RecordReader::new(r);
        let header = reader.header()?.context("recording has no header line")?.clone();
        Ok((header, Records { reader, error: None, cut: None, ended: false }))
    }

    /// After the iteration: an error when the recording could not be read to its end, else a
    /// note when its last record was cut short.
    pub fn end(mut self) -> anyhow::Result<Option<String>> {
        if !self.ended {
            for _ in self.by_ref() {}
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.cut),
        }
    }
}

impl<R: std::io::Read> Iterator for Records<R> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.ended {
            return None;
        }
        let next = self.reader.next_record();
        match next {
            Ok(Some(r)) => return Some(r),
            Ok(None) => {
                self.cut = self.reader.finish().err().map(|e| {
                    format!("{e} ({} bytes at the end skipped: the gateway stopped mid-write)", self.reader.held())
                })
            }
            Err(e) => self.error = Some(e),
        }
        self.ended = true;
        None
    }
}

/// Largest header line.
const MAX_HEADER: usize = 64 * 1024;
/// Bytes asked of the reader at a time.
const CHUNK: usize = 64 * 1024;
/// A record's header: kind, time, length.
const RECORD_HEAD: usize = 13;

/// Reads a frame recording record by record, holding one record at a time. It also follows a
/// recording that is still being written: at the current end [`RecordReader::next_record`]
/// answers `None`, and a later call reads what was appended since (a record cut by the end is
/// kept until it is whole).
#[derive(Debug)]
pub struct RecordReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    header: Option<serde_json::Value>,
}

impl<R: std::io::Read> RecordReader<R> {
    /// A reader at the start of a recording.
    pub fn new(r: R) -> RecordReader<R> {
        RecordReader { r, buf: Vec::new(), start: 0, header: None }
    }

    /// Reads until `want` unread bytes are held or the source has no more for now.
    fn fill(&mut self, want: usize) -> anyhow::Result<()> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.buf.len() - self.start < want {
            let have = self.buf.len();
            self.buf.resize(have + CHUNK.max(want - (have - self.start)), 0);
            let n = loop {
                match self.r.read(&mut self.buf[have..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match n {
                Ok(n) => {
                    self.buf.truncate(have + n);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(anyhow::Error::new(e).context("cannot read recording"));
                }
            }
        }
        Ok(())
    }

    /// The header (`None` while its line is not complete yet).
    pub fn header(&mut self) -> anyhow::Result<Option<&serde_json::Value>> {
        if self.header.is_none() {
            loop {
                let held = &self.buf[self.start..];
                if let Some(nl) = held.iter().position(|b| *b == b'\n') {
                    let header: serde_json::Value =
                        serde_json::from_slice(&held[..nl]).context("recording header is not JSON")?;
                    self.start += nl + 1;
                    self.header = Some(header);
                    break;
                }
                if held.len() > MAX_HEADER {
                    bail!("recording header is longer than {MAX_HEADER} bytes");
                }
                let before = held.len();
                self.fill(before + 1)?;
                if self.buf.len() - self.start == before {
                    return Ok(None);
                }
            }
        }
        Ok(self.header.as_ref())
    }

    /// The next record, or `None` at the recording's (current) end.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if self.header()?.is_none() {
            return Ok(None);
        }
        self.fill(RECORD_HEAD)?;
        let held = &self.buf[self.start..];
        if held.len() < RECORD_HEAD {
            return Ok(None);
        }
        let kind = held[0];
        let at = u64::from_le_bytes(held[1..9].try_into().context("record header")?);
        let len = u32::from_le_bytes(held[9..13].try_into().context("record header")?) as usize;
        if len > MAX_RECORD {
            bail!("recording holds a record of {len} bytes (at most {MAX_RECORD})");
        }
        self.fill(RECORD_HEAD + len)?;
        let held = &self.buf[self.start..];
        let Some(data) = held.get(RECORD_HEAD..RECORD_HEAD + len) else { return Ok(None) };
        let rec = Record { kind, at_micros: at, data: data.to_vec() };
        self.start += RECORD_HEAD + len;
        Ok(Some(rec))
    }

    /// Bytes read but not yet returned (a record cut by the current end).
    pub fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    /// At the end of a finished recording: an error when it stops inside a record.
    pub fn finish(&self) -> anyhow::Result<()> {
        match self.buf.len() - self.start {
            0 => Ok(()),
            n if n < RECORD_HEAD => bail!("recording ends inside a record header"),
            _ => bail!("recording ends inside a record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(records: &[Record]) -> Vec<u8> {
        let mut out = b"{\"format\":\"penstock-rdp/1\"}\n".to_vec();
        for r in records {
            out.push(r.kind);
            out.extend_from_slice(&r.at_micros.to_le_bytes());
            out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&r.data);
        }
        out
    }

    fn sample() -> Vec<Record> {
        (0..50u64)
            .map(|i| Record {
                kind: if i % 3 == 0 { b'I' } else { SERVER_TO_CLIENT },
                at_micros: i * 1000,
                data: vec![i as u8; (i * 37 % 3000) as usize],
            })
            .collect()
    }

    /// A source that hands out what was appended so far, like a file being written.
    #[derive(Clone, Default)]
    struct Growing(std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

    impl std::io::Read for Growing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut g = self.0.lock().expect("lock");
            let (data, at) = &mut *g;
            let n = buf.len().min(data.len() - *at).min(7);
            buf[..n].copy_from_slice(&data[*at..*at + n]);
            *at += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_back_what_was_written() {
        let recs = sample();
        let (h, back) = read(&encode(&recs)[..]).expect("read");
        assert_eq!(h["format"], "penstock-rdp/1");
        assert_eq!(back, recs);
    }

    #[test]
    fn a_cut_recording_is_an_error_and_a_growing_one_is_followed() {
        let bytes = encode(&sample());
        let header_end = bytes.iter().position(|b| *b == b'\n').expect("nl") + 1;
        for cut in header_end + 1..bytes.len() {
            let whole = read(&bytes[..cut]);
            // Cuts between records are whole recordings; any other cut is reported.
            let between = {
                let mut at = header_end;
                let mut ok = false;
                while at <= cut {
                    if at == cut {
                        ok = true;
                        break;
                    }
                    let len = u32::from_le_bytes(bytes[at + 9..at + 13].try_into().expect("len")) as usize;
                    at += 13 + len;
                }
                ok
            };
            assert_eq!(whole.is_ok(), between, "cut at {cut}");
        }
        // Appended a few bytes at a time, the reader answers None at each end and then goes on.
        let src = Growing::default();
        let mut rr = RecordReader::new(src.clone());
        let mut got = Vec::new();
        for piece in bytes.chunks(101) {
            src.0.lock().expect("lock").0.extend_from_slice(piece);
            while let Some(r) = rr.next_record().expect("record") {
                got.push(r);
            }
        }
        rr.finish().expect("whole");
        assert_eq!(got, sample());
    }

    /// Streamed, a recording cut inside a record (a gateway killed mid-write) gives every whole
    /// record and a note naming the skipped bytes; an oversized record is an error.
    #[test]
    fn streamed_records_keep_what_is_whole() {
        let recs = sample();
        let bytes = encode(&recs);
        let (_, mut it) = Records::open(&bytes[..]).expect("open");
        assert_eq!(it.by_ref().collect::<Vec<_>>(), recs);
        assert_eq!(it.end().expect("whole"), None);
        let cut = bytes.len() - 5;
        let (_, mut it) = Records::open(&bytes[..cut]).expect("open");
        assert_eq!(it.by_ref().collect::<Vec<_>>(), recs[..recs.len() - 1]);
        let last = recs.last().map_or(0, |r| r.data.len() + RECORD_HEAD);
        let note = it.end().expect("a cut tail is not an error").expect("but it is named");
        assert!(note.contains(&format!("{} bytes at the end skipped", last - 5)), "{note}");
        let mut bad = bytes[..cut].to_vec();
        bad.truncate(bytes.len() - last);
        bad.push(SERVER_TO_CLIENT);
        bad.extend_from_slice(&0u64.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        let (_, mut it) = Records::open(&bad[..]).expect("open");
        assert_eq!(it.by_ref().count(), recs.len() - 1);
        assert!(it.end().expect_err("oversized").to_string().contains("at most"));
    }

    #[test]
    fn oversized_records_and_headers_are_refused() {
        let mut bytes = b"{}\n".to_vec();
        bytes.push(SERVER_TO_CLIENT);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read(&bytes[..]).expect_err("too long");
        assert!(err.to_string().contains("at most"), "{err}");
        let err = read(&vec![b'{'; MAX_HEADER + 10][..]).expect_err("no header");
        assert!(err.to_string().contains("header"), "{err}");
    }
}
