//! Session recording: asciicast v2 files under `recordings/YYYY/MM/DD/<session-id>.cast`, written
//! by a task of their own so the relay only hands over reference-counted chunks through a bounded
//! queue. Flushed every second, fsynced on close, hashed with SHA-256 as written. Transfers on
//! sftp/scp channels are parsed here too. A write failure is reported through [`Recorder::failed`]
//! so the session can be ended (fail closed).

pub mod cast;
pub mod transfers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use cast::{event_line, header_line, HeaderInfo, Utf8Carry};
use transfers::{ScpTracker, SftpTracker, Transfer};

/// Events queued per recording before the relay waits.
const QUEUE: usize = 256;

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
    In(f64, Bytes),
    Resize(f64, u32, u32),
}

/// Handle the relay uses.
#[derive(Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Ev>>,
    failed: watch::Receiver<Option<String>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<String>>>,
    start: Instant,
    record_input: bool,
    /// Path of the file.
    pub path: PathBuf,
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
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
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
        let (tx, rx) = mpsc::channel(QUEUE);
        let (fail_tx, failed) = watch::channel(None);
        let tracker = match spec.kind {
            ChannelKind::Subsystem(s) if s == "sftp" => Tracker::Sftp(Box::default()),
            ChannelKind::Exec(c) => {
                ScpTracker::for_command(c).map(|t| Tracker::Scp(Box::new(t))).unwrap_or(Tracker::None)
            }
            _ => Tracker::None,
        };
        let writer = Writer {
            out,
            hasher,
            tracker,
            app: app.clone(),
            session: spec.session_id.to_string(),
            out_carry: Utf8Carry::default(),
            in_carry: Utf8Carry::default(),
            started: Instant::now(),
        };
        let task = tokio::spawn(writer.run(rx, fail_tx));
        Ok(Recorder {
            tx: Some(tx),
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

    async fn send(&self, ev: Ev) {
        if let Some(tx) = &self.tx {
            // A closed queue means the writer failed; `failed()` reports it.
            let _ = tx.send(ev).await;
        }
    }

    /// Output from the target.
    pub async fn output(&self, data: &Bytes) {
        self.send(Ev::Out(self.elapsed(), data.clone())).await;
    }

    /// Input from the vendor.
    pub async fn input(&self, data: &Bytes) {
        self.send(Ev::In(self.elapsed(), data.clone())).await;
    }

    /// Terminal resize.
    pub async fn resize(&self, cols: u32, rows: u32) {
        self.send(Ev::Resize(self.elapsed(), cols, rows)).await;
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
        drop(self.tx.take());
        match self.task.take() {
            Some(t) => t.await.context("recording task panicked")?,
            None => bail!("recording already finished"),
        }
    }
}

enum Tracker {
    None,
    Sftp(Box<SftpTracker>),
    Scp(Box<ScpTracker>),
}

struct Writer {
    out: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    tracker: Tracker,
    app: App,
    session: String,
    out_carry: Utf8Carry,
    in_carry: Utf8Carry,
    started: Instant,
}

impl Writer {
    async fn line(&mut self, line: String) -> std::io::Result<()> {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.out.write_all(line.as_bytes()).await?;
        self.out.write_all(b"\n").await
    }

    async fn handle(&mut self, ev: Ev) -> std::io::Result<()> {
        match ev {
            Ev::Out(t, data) => match &mut self.tracker {
                Tracker::Sftp(s) => s.server_bytes(&data),
                Tracker::Scp(s) if !s.sender_is_client() => s.sender_bytes(&data),
                Tracker::Scp(_) => {}
                Tracker::None => {
                    let text = self.out_carry.decode(&data);
                    if !text.is_empty() {
                        self.line(event_line(t, "o", &text)).await?;
                    }
                }
            },
            Ev::In(t, data) => match &mut self.tracker {
                Tracker::Sftp(s) => s.client_bytes(&data),
                Tracker::Scp(s) if s.sender_is_client() => s.sender_bytes(&data),
                Tracker::Scp(_) => {}
                Tracker::None => {
                    let text = self.in_carry.decode(&data);
                    if !text.is_empty() {
                        self.line(event_line(t, "i", &text)).await?;
                    }
                }
            },
            Ev::Resize(t, c, r) => self.line(event_line(t, "r", &format!("{c}x{r}"))).await?,
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
        let note = format!("[penstock] {} {} ({} bytes, sha256 {})\r\n", t.direction, t.path, t.size, t.sha256);
        let at = self.started.elapsed().as_secs_f64();
        self.line(event_line(at, "o", &note)).await?;
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

    async fn run(mut self, mut rx: mpsc::Receiver<Ev>, fail: watch::Sender<Option<String>>) -> anyhow::Result<String> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let res: std::io::Result<()> = async {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => self.handle(ev).await?,
                        None => break,
                    },
                    _ = tick.tick() => self.out.flush().await?,
                }
            }
            let rest = self.out_carry.finish();
            if !rest.is_empty() {
                let t = self.started.elapsed().as_secs_f64();
                self.line(event_line(t, "o", &rest)).await?;
            }
            self.out.flush().await?;
            self.out.get_ref().sync_all().await
        }
        .await;
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
