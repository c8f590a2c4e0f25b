//! Session recording: asciicast v2 files under `recordings/YYYY/MM/DD/<session-id>.cast`, written
//! by a task of their own so the relay only hands over reference-counted chunks through a bounded
//! queue. Flushed every second, fsynced on close, hashed with SHA-256 as written. Transfers on
//! sftp/scp channels are parsed here too. A write failure is reported through
//! [`Recorder::failure_watch`] so the session can be ended (fail closed).
//!
//! Output of a channel without a terminal (`ssh host cat firmware.bin`) is recorded as text
//! events while it is text. From its first binary chunk (a NUL byte or invalid UTF-8) the
//! standard output goes byte-exact into a side file `<session-id>.out` instead, and the cast
//! says so in an event and, at the end, names the side file's size and SHA-256 (so the cast's
//! hash in the audit chain covers it). Binary data escaped into JSON would be lossy (invalid
//! UTF-8 becomes U+FFFD) and cost twice its size to write and hash.
//!
//! Standard input of such a channel (`ssh plc sh < script.sh`, `ssh plc 'cat > fw.bin' < fw.bin`)
//! is recorded the same way: `i` events while it is text, then byte-exact in `<session-id>.in`.

pub mod cast;
pub mod frames;
pub mod transfers;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::live::{Feed, Joined};
use cast::{header_line, push_event, HeaderInfo, Utf8Carry};
use transfers::{ScpTracker, SftpTracker, Transfer};

/// Batches of events queued per recording before the relay waits.
const QUEUE: usize = 4;
/// The relay hands events over in batches of about this many bytes, so the writer task is woken
/// once per batch rather than once per SSH packet...
const HANDOFF: usize = 128 * 1024;
/// ...or once the oldest event has waited this long (the file was only ever flushed every second).
const HOLD: Duration = Duration::from_millis(500);
/// Encoded lines are hashed and handed to the file in batches of about this size.
const BATCH: usize = 256 * 1024;

/// What the channel carries.
#[derive(Debug)]
pub enum ChannelKind {
    /// Interactive shell (with or without a PTY).
    Shell,
    /// A command.
    Exec(String),
    /// A subsystem such as sftp.
    Subsystem(String),
}

/// What the recording needs to know at the start.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Session id.
    pub session_id: &'a str,
    /// `user → target`.
    pub title: String,
    /// What the channel runs.
    pub kind: &'a ChannelKind,
    /// Terminal size (80x24 when there is no PTY).
    pub width: u32,
    /// Terminal rows.
    pub height: u32,
    /// `TERM`.
    pub term: Option<String>,
    /// Whether keystrokes are recorded as `i` events (PTY channels).
    pub record_input: bool,
}

enum Ev {
    Out(f64, Bytes),
    /// Standard error of the target (always recorded as text).
    Err(f64, Bytes),
    In(f64, Bytes),
    Resize(f64, u32, u32),
}

/// Events taken from the relay and not yet handed to the writer.
#[derive(Default)]
struct Pending {
    events: Vec<Ev>,
    bytes: usize,
    since: Option<Instant>,
}

/// Handle the relay uses.
pub struct Recorder {
    tx: Option<mpsc::Sender<Vec<Ev>>>,
    pending: std::sync::Mutex<Pending>,
    failed: watch::Receiver<Option<String>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<String>>>,
    start: Instant,
    record_input: bool,
    /// Path of the file.
    pub path: PathBuf,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("path", &self.path).field("recording", &self.tx.is_some()).finish()
    }
}

/// Checks there is room for recordings; refuses when the disk is (nearly) full.
pub fn check_space(dir: &Path, min_free_mib: u64) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).context("bad recordings path")?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        bail!("cannot check free space of {}: {}", dir.display(), std::io::Error::last_os_error());
    }
    let free_mib = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024);
    if free_mib < min_free_mib {
        bail!("recording storage {} is full ({free_mib} MiB free, {min_free_mib} MiB required)", dir.display());
    }
    Ok(())
}

impl Recorder {
    /// Creates the file, writes and flushes the header, and starts the writer task. Any failure
    /// here means the session must not run.
    pub async fn start(app: &App, spec: Spec<'_>) -> anyhow::Result<Recorder> {
        let root = app.config.recordings_dir();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create recordings folder {}", root.display()))?;
        check_space(&root, app.config.recordings.min_free_mib)?;
        crate::storage::upload::check_remote(&app.config)?;
        let now = app.clock.now_utc();
        let dir = root.join(now.format("%Y/%m/%d").to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.cast", spec.session_id));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .with_context(|| format!("cannot create recording {}", path.display()))?;
        let mut out = file;
        let command = match spec.kind {
            ChannelKind::Shell => None,
            ChannelKind::Exec(c) => Some(c.clone()),
            ChannelKind::Subsystem(s) => Some(format!("subsystem:{s}")),
        };
        let header = header_line(&HeaderInfo {
            width: spec.width,
            height: spec.height,
            timestamp: app.clock.now(),
            command,
            title: spec.title.clone(),
            term: spec.term.clone(),
        });
        let mut hasher = Sha256::new();
        let line = format!("{header}\n");
        hasher.update(line.as_bytes());
        out.write_all(line.as_bytes()).await.with_context(|| format!("cannot write recording {}", path.display()))?;
        out.flush().await.with_context(|| format!("cannot write recording {}", path.display()))?;
        let out = out.into_std().await;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (fail_tx, failed) = watch::channel(None);
        let joins = app.feeds.register(spec.session_id);
        let (feed, _) = tokio::sync::broadcast::channel(crate::live::FEED_CAPACITY);
        let tracker = match spec.kind {
            ChannelKind::Subsystem(s) if s == "sftp" => Tracker::Sftp(Box::default()),
            ChannelKind::Exec(c) => {
                ScpTracker::for_command(c).map(|t| Tracker::Scp(Box::new(t))).unwrap_or(Tracker::None)
            }
            _ => Tracker::None,
        };
        let raw_allowed = !spec.record_input && matches!(tracker, Tracker::None);
        let writer = Writer {
            raw_allowed,
            out: Plain::new(Direction::Out),
            input: Plain::new(Direction::In),
            cast_path: path.clone(),
            buf: Vec::new(),
            sink: Sink { file: Some(out), writing: None, spare: Vec::new() },
            hasher,
            tracker,
            app: app.clone(),
            session: spec.session_id.to_string(),
            out_carry: Utf8Carry::default(),
            err_carry: Utf8Carry::default(),
            in_carry: Utf8Carry::default(),
            started: Instant::now(),
            feed,
            written: line.len() as u64,
        };
        let task = tokio::spawn(writer.run(rx, fail_tx, joins));
        Ok(Recorder {
            tx: Some(tx),
            pending: Default::default(),
            failed,
            task: Some(task),
            start: Instant::now(),
            record_input: spec.record_input,
            path,
        })
    }

    /// A recorder that records nothing (`[recordings] enabled = false`, for benchmarks).
    pub fn start_disabled() -> anyhow::Result<Recorder> {
        let (_fail_tx, failed) = watch::channel(None);
        Ok(Recorder {
            tx: None,
            pending: Default::default(),
            failed,
            task: Some(tokio::spawn(async { Ok(String::new()) })),
            start: Instant::now(),
            record_input: false,
            path: PathBuf::new(),
        })
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Queues `ev`; hands the batch to the writer once it is big enough.
    async fn send(&self, ev: Ev, bytes: usize) {
        if self.tx.is_none() {
            return;
        }
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let since = *p.since.get_or_insert_with(Instant::now);
            p.events.push(ev);
            p.bytes += bytes;
            (p.bytes >= HANDOFF || since.elapsed() >= HOLD).then(|| std::mem::take(&mut *p))
        };
        if let Some(batch) = full {
            self.hand_over(batch.events).await;
        }
    }

    async fn hand_over(&self, events: Vec<Ev>) {
        if let Some(tx) = &self.tx {
            crate::metrics::recorder_backlog(1);
            // A closed queue means the writer failed; `failed()` reports it.
            if tx.send(events).await.is_err() {
                crate::metrics::recorder_backlog(-1);
            }
        }
    }

    /// Whether events are waiting to be handed to the writer.
    pub fn has_pending(&self) -> bool {
        self.tx.is_some() && self.pending.lock().map(|p| !p.events.is_empty()).unwrap_or(true)
    }

    /// Hands whatever is queued to the writer. The relay calls this once its channel has been
    /// quiet for a moment, so an interactive session's events reach the file promptly.
    pub async fn flush(&self) {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.events.is_empty() {
                return;
            }
            std::mem::take(&mut *p)
        };
        self.hand_over(batch.events).await;
    }

    /// Output from the target.
    pub async fn output(&self, data: &Bytes) {
        self.send(Ev::Out(self.elapsed(), data.clone()), data.len()).await;
    }

    /// Standard error output from the target.
    pub async fn error_output(&self, data: &Bytes) {
        self.send(Ev::Err(self.elapsed(), data.clone()), data.len()).await;
    }

    /// Input from the vendor.
    pub async fn input(&self, data: &Bytes) {
        self.send(Ev::In(self.elapsed(), data.clone()), data.len()).await;
    }

    /// Terminal resize.
    pub async fn resize(&self, cols: u32, rows: u32) {
        self.send(Ev::Resize(self.elapsed(), cols, rows), 0).await;
        self.flush().await;
    }

    /// Whether `i` events are kept for this channel (transfer parsing still sees the bytes).
    pub fn records_input(&self) -> bool {
        self.record_input
    }

    /// A receiver that holds the failure message once the recording cannot be written.
    pub fn failure_watch(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Flushes, fsyncs and closes; returns the file's SHA-256.
    pub async fn finish(mut self) -> anyhow::Result<String> {
        self.flush().await;
        drop(self.tx.take());
        match self.task.take() {
            Some(t) => t.await.context("recording task panicked")?,
            None => bail!("recording already finished"),
        }
    }
}

/// Hands terminal output to the live view, if anyone watches.
fn publish(feed: &tokio::sync::broadcast::Sender<Feed>, text: &str) {
    if feed.receiver_count() > 0 {
        let _ = feed.send(Feed::Output(text.into()));
    }
}

enum Tracker {
    None,
    Sftp(Box<SftpTracker>),
    Scp(Box<ScpTracker>),
}

/// Writes batches to the file on the blocking pool, one batch in flight while the next is
/// encoded; the buffers are swapped, never copied.
/// What a background write hands back: the file, the emptied buffer and the result.
type WriteDone = (std::fs::File, Vec<u8>, std::io::Result<()>);

struct Sink {
    file: Option<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<WriteDone>>,
    spare: Vec<u8>,
}

impl Sink {
    /// Waits for the batch in flight; its error, if any, is returned here.
    async fn settle(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.writing.take() {
            let (file, mut done, res) = w.await.map_err(std::io::Error::other)?;
            self.file = Some(file);
            done.clear();
            self.spare = done;
            res?;
        }
        Ok(())
    }

    /// Hands `batch` over (leaving an empty buffer in its place).
    async fn write(&mut self, batch: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::Write;
        self.settle().await?;
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("recording file lost"))?;
        let data = std::mem::replace(batch, std::mem::take(&mut self.spare));
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let res = file.write_all(&data);
            (file, data, res)
        }));
        Ok(())
    }

    /// Waits for everything written and fsyncs.
    async fn sync(&mut self) -> std::io::Result<()> {
        self.settle().await?;
        let file = self.file.take().ok_or_else(|| std::io::Error::other("recording file lost"))?;
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = file.sync_all();
            (file, res)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        res
    }

    /// Gives back the memory of an idle recording.
    fn trim(&mut self) {
        self.spare = Vec::new();
    }
}

/// The byte-exact side file of a channel's binary standard output or input.
struct RawOut {
    path: PathBuf,
    sink: Sink,
    hasher: Sha256,
    buf: Vec<u8>,
    bytes: u64,
}

impl RawOut {
    async fn open(cast: &Path, ext: &str) -> std::io::Result<RawOut> {
        let path = cast.with_extension(ext);
        let p = path.clone();
        let file =
            tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).create_new(true).open(p))
                .await
                .map_err(std::io::Error::other)??;
        Ok(RawOut {
            path,
            sink: Sink { file: Some(file), writing: None, spare: Vec::new() },
            hasher: Sha256::new(),
            buf: Vec::new(),
            bytes: 0,
        })
    }

    async fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buf);
        self.sink.write(&mut self.buf).await
    }

    fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Whether `pending + chunk` is binary: invalid UTF-8 before a possibly unfinished sequence
/// at its end.
fn is_binary(pending: &[u8], chunk: &[u8]) -> bool {
    let check = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(_) => false,
        Err(e) => e.error_len().is_some(),
    };
    if pending.is_empty() {
        check(chunk)
    } else {
        let mut v = pending.to_vec();
        v.extend_from_slice(chunk);
        check(&v)
    }
}

struct Writer {
    /// Whether binary standard output and input may go to side files (no terminal, no
    /// transfer parsing).
    raw_allowed: bool,
    /// Standard output: text events, then its side file once binary output was seen.
    out: Plain,
    /// Standard input, likewise.
    input: Plain,
    cast_path: PathBuf,
    /// Encoded lines not yet hashed and written.
    buf: Vec<u8>,
    sink: Sink,
    hasher: Sha256,
    tracker: Tracker,
    app: App,
    session: String,
    out_carry: Utf8Carry,
    err_carry: Utf8Carry,
    in_carry: Utf8Carry,
    started: Instant,
    /// The live view: terminal output and resizes for watchers (sent only while someone
    /// watches; a watcher that falls behind lags, the writer never waits).
    feed: tokio::sync::broadcast::Sender<Feed>,
    /// Bytes of the cast handed to the file so far.
    written: u64,
}

/// Which way a plain (non-terminal) stream goes.
#[derive(Clone, Copy)]
enum Direction {
    /// Standard output of the target.
    Out,
    /// Standard input from the vendor.
    In,
}

impl Direction {
    fn ext(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Direction::Out => "output",
            Direction::In => "input",
        }
    }
}

/// A plain stream's state: its side file once binary, and whether its last text chunk was
/// escape-heavy.
struct Plain {
    raw: Option<RawOut>,
    escape_heavy: bool,
}

impl Plain {
    fn new(_dir: Direction) -> Plain {
        Plain { raw: None, escape_heavy: false }
    }
}

/// Which byte stream a text event comes from (each keeps its own unfinished UTF-8 sequence).
#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
    In,
}

impl Writer {
    /// Hashes and writes what is buffered.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buf);
        self.written += self.buf.len() as u64;
        self.sink.write(&mut self.buf).await
    }

    /// Answers a watcher joining the live view: everything encoded so far goes to the file
    /// first, so the recording up to `written` plus the feed from now on is the whole session.
    async fn join(&mut self, reply: crate::live::JoinRequest) -> std::io::Result<()> {
        self.flush().await?;
        self.sink.settle().await?;
        let _ = reply.send(Joined { path: self.cast_path.clone(), written: self.written, rx: self.feed.subscribe() });
        Ok(())
    }

    async fn line(&mut self, t: f64, code: &str, text: &str) -> std::io::Result<()> {
        if code == "o" {
            publish(&self.feed, text);
        }
        push_event(&mut self.buf, t, code, text);
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Encodes a chunk of terminal text as an event (no copy of valid UTF-8); returns the size
    /// of the encoded event.
    async fn text(&mut self, t: f64, code: &str, data: &[u8], stream: Stream) -> std::io::Result<usize> {
        let (carry, buf) = match stream {
            Stream::Out => (&mut self.out_carry, &mut self.buf),
            Stream::Err => (&mut self.err_carry, &mut self.buf),
            Stream::In => (&mut self.in_carry, &mut self.buf),
        };
        let before = buf.len();
        let feed = &self.feed;
        carry.decode_with(data, |text| {
            if !text.is_empty() {
                if code == "o" {
                    publish(feed, text);
                }
                push_event(buf, t, code, text);
            }
        });
        let encoded = buf.len() - before;
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(encoded)
    }

    /// Standard output or input of a channel without a terminal: text events, or the side file
    /// once the stream turned out binary.
    async fn plain(&mut self, t: f64, data: &[u8], dir: Direction) -> std::io::Result<()> {
        let (stream, code) = match dir {
            Direction::Out => (Stream::Out, "o"),
            Direction::In => (Stream::In, "i"),
        };
        let p = match dir {
            Direction::Out => &self.out,
            Direction::In => &self.input,
        };
        let carry = match dir {
            Direction::Out => &self.out_carry,
            Direction::In => &self.in_carry,
        };
        if p.raw.is_none() && self.raw_allowed && (p.escape_heavy || is_binary(carry.pending(), data)) {
            let mut raw = RawOut::open(&self.cast_path, dir.ext()).await?;
            let note = format!("[penstock] binary {} follows, recorded byte-exact in {}", dir.word(), raw.name());
            self.note(t, &note).await?;
            let held = match dir {
                Direction::Out => self.out_carry.take_pending(),
                Direction::In => self.in_carry.take_pending(),
            };
            raw.push(&held).await?;
            match dir {
                Direction::Out => self.out.raw = Some(raw),
                Direction::In => self.input.raw = Some(raw),
            }
        }
        let p = match dir {
            Direction::Out => &mut self.out,
            Direction::In => &mut self.input,
        };
        match &mut p.raw {
            Some(raw) => raw.push(data).await,
            None => {
                // Valid UTF-8 full of control bytes (zeros, say) is binary too: escaped, it
                // would cost several times its size. The next chunk goes to the side file.
                let encoded = self.text(t, code, data, stream).await?;
                let p = match dir {
                    Direction::Out => &mut self.out,
                    Direction::In => &mut self.input,
                };
                p.escape_heavy = encoded > 2 * data.len() + 64;
                Ok(())
            }
        }
    }

    /// Closes the side files (if any) and names their sizes and hashes in the cast.
    async fn finish_raw(&mut self) -> std::io::Result<()> {
        for dir in [Direction::Out, Direction::In] {
            let raw = match dir {
                Direction::Out => self.out.raw.take(),
                Direction::In => self.input.raw.take(),
            };
            let Some(mut raw) = raw else { continue };
            raw.flush().await?;
            raw.sink.sync().await?;
            let sha = hex::encode(std::mem::take(&mut raw.hasher).finalize());
            let note = format!("[penstock] binary {}: {} bytes in {}, sha256 {sha}", dir.word(), raw.bytes, raw.name());
            let t = self.started.elapsed().as_secs_f64();
            self.note(t, &note).await?;
        }
        Ok(())
    }

    /// A note from the gateway: an `m` (marker) event, which target output can never produce,
    /// and the same text as output so that a person replaying the cast sees it.
    async fn note(&mut self, t: f64, text: &str) -> std::io::Result<()> {
        self.line(t, "m", text).await?;
        self.line(t, "o", &format!("\r\n{text}\r\n")).await
    }

    async fn handle(&mut self, ev: Ev) -> std::io::Result<()> {
        match ev {
            Ev::Out(t, data) => match &mut self.tracker {
                Tracker::Sftp(s) => s.server_bytes(&data),
                Tracker::Scp(s) if !s.sender_is_client() => s.sender_bytes(&data),
                Tracker::Scp(_) => {}
                Tracker::None => self.plain(t, &data, Direction::Out).await?,
            },
            Ev::Err(t, data) => _ = self.text(t, "o", &data, Stream::Err).await?,
            Ev::In(t, data) => match &mut self.tracker {
                Tracker::Sftp(s) => s.client_bytes(&data),
                Tracker::Scp(s) if s.sender_is_client() => s.sender_bytes(&data),
                Tracker::Scp(_) => {}
                Tracker::None if self.raw_allowed => self.plain(t, &data, Direction::In).await?,
                Tracker::None => _ = self.text(t, "i", &data, Stream::In).await?,
            },
            Ev::Resize(t, c, r) => {
                if self.feed.receiver_count() > 0 {
                    let _ = self.feed.send(Feed::Resize(c, r));
                }
                self.line(t, "r", &format!("{c}x{r}")).await?
            }
        }
        let done = match &mut self.tracker {
            Tracker::Sftp(s) => s.take_done(),
            Tracker::Scp(s) => s.take_done(),
            Tracker::None => Vec::new(),
        };
        for t in done {
            self.transfer(t).await?;
        }
        Ok(())
    }

    async fn transfer(&mut self, t: Transfer) -> std::io::Result<()> {
        let note = format!("[penstock] {} {} ({} bytes, sha256 {})", t.direction, t.path, t.size, t.sha256);
        let at = self.started.elapsed().as_secs_f64();
        self.note(at, &note).await?;
        if let Err(e) = crate::sessions::add_transfer(
            &self.app,
            "system",
            &self.session,
            t.direction,
            &t.path,
            t.size as i64,
            &t.sha256,
        )
        .await
        {
            tracing::error!(session = %self.session, error = %e, "cannot store file transfer");
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<Ev>>,
        fail: watch::Sender<Option<String>>,
        mut joins: mpsc::Receiver<crate::live::JoinRequest>,
    ) -> anyhow::Result<String> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let res: std::io::Result<()> = async {
            let mut busy = false;
            let mut joinable = true;
            loop {
                tokio::select! {
                    req = joins.recv(), if joinable => match req {
                        Some(reply) => self.join(reply).await?,
                        None => joinable = false,
                    },
                    batch = rx.recv() => {
                        let Some(batch) = batch else { break };
                        crate::metrics::recorder_backlog(-1);
                        for ev in batch {
                            self.handle(ev).await?;
                        }
                        busy = true;
                    }
                    _ = tick.tick() => {
                        self.flush().await?;
                        self.sink.settle().await?;
                        for raw in [&mut self.out.raw, &mut self.input.raw].into_iter().flatten() {
                            raw.flush().await?;
                            raw.sink.settle().await?;
                        }
                        if !busy {
                            // Idle: give back the batch buffers until output comes again.
                            self.buf = Vec::new();
                            self.sink.trim();
                            for raw in [&mut self.out.raw, &mut self.input.raw].into_iter().flatten() {
                                raw.buf = Vec::new();
                                raw.sink.trim();
                            }
                        }
                        busy = false;
                    }
                }
            }
            for (code, rest) in
                [("o", self.out_carry.finish()), ("o", self.err_carry.finish()), ("i", self.in_carry.finish())]
            {
                if !rest.is_empty() {
                    let t = self.started.elapsed().as_secs_f64();
                    self.line(t, code, &rest).await?;
                }
            }
            self.finish_raw().await?;
            self.flush().await?;
            self.sink.sync().await
        }
        .await;
        self.app.feeds.unregister(&self.session);
        match res {
            Ok(()) => Ok(hex::encode(self.hasher.finalize())),
            Err(e) => {
                let msg = format!("recording failed: {e}");
                let _ = fail.send(Some(msg.clone()));
                rx.close();
                bail!(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_binary;

    #[test]
    fn binary_means_invalid_utf8_not_a_split_sequence() {
        assert!(!is_binary(b"", "héllo wörld\n".as_bytes()));
        assert!(is_binary(b"", &[b'a', 0xff, b'b']));
        // An unfinished sequence at the end is text so far...
        assert!(!is_binary(b"", &[b'a', 0xc3]));
        // ...completed by the next chunk...
        assert!(!is_binary(&[0xc3], &[0xa9, b'x']));
        // ...or broken by it.
        assert!(is_binary(&[0xc3], b"x"));
    }
}
