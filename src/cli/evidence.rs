//! `penstock replay`, `penstock evidence …` and `penstock recordings …`: the auditor's commands.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::app::App;
use crate::evidence::{self, export::Selection};
use crate::replay::{self, transcript};
use crate::storage::{self, RecordingStorage};

const ACTOR: &str = "cli";

/// `replay …` options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Session id (or a unique prefix of at least 4 hex digits).
    pub id: String,
    /// Show the screen as it was this many seconds in.
    #[arg(long)]
    pub at: Option<f64>,
    /// With --at: plain text (the default when standard output is not a terminal).
    #[arg(long, requires = "at")]
    pub text: bool,
    /// Timestamped command lines (reconstructed from keystrokes), output and gateway notes.
    #[arg(long, conflicts_with = "at")]
    pub transcript: bool,
    /// With --transcript, --keys or --channels: JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Playback speed.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Longest pause between events during playback, in seconds.
    #[arg(long)]
    pub idle_limit: Option<f64>,
    /// RDP sessions: write the decoded screen as PNG files into this folder (a frame every
    /// --every seconds when the screen changed, and `last.png`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["at", "transcript", "keys"])]
    pub frames: Option<PathBuf>,
    /// RDP sessions: write the decoded session as a video (through ffmpeg; the format follows
    /// the file name, e.g. out.mp4).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["at", "transcript", "keys"])]
    pub video: Option<PathBuf>,
    /// With --frames or --video: seconds between frames.
    #[arg(long, default_value_t = 1.0)]
    pub every: f64,
    /// RDP sessions: the vendor's keystrokes (typed text per line) and mouse clicks.
    #[arg(long, conflicts_with_all = ["at", "transcript"])]
    pub keys: bool,
    /// RDP sessions: what went through the clipboard and drive channels the policy allowed
    /// (clipboard text either way, copied files' names and sizes, redirected drives and the
    /// files the target opened, read and wrote on them).
    #[arg(long, conflicts_with_all = ["at", "transcript", "keys", "frames", "video"])]
    pub channels: bool,
}

/// `evidence …`
#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Write a signed evidence bundle (tar) for a session, a request, or a time range.
    Export {
        /// One session (id or unique prefix).
        #[arg(long, conflicts_with_all = ["request", "since"])]
        session: Option<String>,
        /// The sessions under a request's grant, with the request and its approvals.
        #[arg(long, conflicts_with = "since")]
        request: Option<i64>,
        /// Sessions that started at or after this time (YYYY-MM-DD[ HH:MM[:SS]], UTC).
        #[arg(long, requires = "until")]
        since: Option<String>,
        /// ... and before this time.
        #[arg(long, requires = "since")]
        until: Option<String>,
        /// The bundle file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check a bundle offline: files, signature, key, audit-chain segment, recordings.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// The gateway's evidence public key (as `penstock evidence key` printed it).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print the gateway's evidence public key (creating the key if there is none).
    Key,
}

/// Parses `YYYY-MM-DD[ HH:MM[:SS]]` (UTC) or Unix seconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let t = s.replace('T', " ");
    let t = t.trim_end_matches('Z').trim_end_matches(" UTC");
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc().timestamp());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(d) = d.and_hms_opt(0, 0, 0) {
            return Ok(d.and_utc().timestamp());
        }
    }
    bail!("invalid time {s:?}: use YYYY-MM-DD, YYYY-MM-DD HH:MM[:SS] (UTC) or Unix seconds")
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

/// The recording of a session: (full id, locator).
async fn recording_of(app: &App, id: &str) -> anyhow::Result<(String, String)> {
    let id = evidence::export::resolve_session(app, id).await?;
    let path: Option<String> = sqlx::query_scalar("SELECT recording_path FROM sessions WHERE id = $1")
        .bind(&id)
        .fetch_one(app.store.pool())
        .await?;
    let path = path.with_context(|| format!("session {id} was not recorded"))?;
    Ok((id, path))
}

pub(crate) async fn replay(config: &Path, a: ReplayArgs) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    let (id, loc) = recording_of(&app, &a.id).await?;
    let store = storage::for_app(&app);
    if !store.exists(&loc) {
        bail!("the recording of session {id} is no longer stored ({})", store.file_name(&loc));
    }
    if crate::recording::frames::is_frames(&loc) {
        return tokio::task::block_in_place(|| replay_rdp(&id, || storage::reader(&store, &loc), &a));
    }
    if a.frames.is_some() || a.video.is_some() || a.keys || a.channels {
        bail!(
            "session {id} is an SSH session: --frames, --video, --keys and --channels are for RDP sessions (use --transcript)"
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Some(at) = a.at {
        let (_, screen) = replay::screen_at(storage::reader(&store, &loc)?, at)?;
        if a.text || !is_tty(1) {
            out.write_all(screen.text().as_bytes())?;
        } else {
            out.write_all(b"\x1b[0m\x1b[H\x1b[2J")?;
            out.write_all(&screen.screen().contents_formatted())?;
            out.write_all(b"\x1b[0m\r\n")?;
        }
        out.flush()?;
        return Ok(());
    }
    if a.transcript {
        let json = a.json;
        let mut first = true;
        transcript::lines(storage::reader(&store, &loc)?, |h, l| {
            if first && !json {
                first = false;
                let started = h.timestamp.map(crate::clock::fmt_ts).unwrap_or_else(|| "?".into());
                let title: String = h.title.clone().unwrap_or_default().chars().map(transcript::clean_char).collect();
                writeln!(out, "# session {id}  {title}  started {started}")?;
            }
            if json {
                serde_json::to_writer(&mut out, &l)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{} {:<4} {}", transcript::fmt_offset(l.t), l.kind.label(), l.text)?;
            }
            Ok(())
        })?;
        out.flush()?;
        return Ok(());
    }
    if a.speed.is_nan() || a.speed <= 0.0 {
        bail!("--speed must be above 0");
    }
    let opts = replay::player::Options { speed: a.speed, idle_limit: a.idle_limit, interactive: is_tty(1) };
    let st = store.clone();
    let l2 = loc.clone();
    let open: replay::player::Opener<'_> = Box::new(move || {
        let r: Box<dyn std::io::BufRead + Send> = Box::new(storage::reader(&st, &l2)?);
        Ok(r)
    });
    drop(out);
    let mut lock = stdout.lock();
    tokio::task::block_in_place(|| replay::player::play(open, &opts, &mut lock))
}

/// Tells on stderr that the recording's last record was cut (the gateway was killed mid-write):
/// everything before it was replayed.
fn cut_note(cut: Option<String>) {
    if let Some(cut) = cut {
        eprintln!("note: {cut}");
    }
}

/// `replay` of an RDP session: frames, a video or the key log. The recording is read as a
/// stream (`open` opens it; a video reads it twice, first for the desktop's size), so a
/// recording of any length needs only one record and the decoder's screen in memory.
fn replay_rdp<R: std::io::Read>(id: &str, open: impl Fn() -> anyhow::Result<R>, a: &ReplayArgs) -> anyhow::Result<()> {
    use crate::recording::frames::Records;
    use crate::replay::rdp;
    if a.frames.is_none() && a.video.is_none() && !a.keys && !a.channels {
        bail!("session {id} is an RDP session: replay it with --frames DIR, --video FILE, --keys or --channels");
    }
    let (header, mut records) = Records::open(open()?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.channels {
        let lines = crate::replay::rdp_channels::channel_log(&header, records.by_ref());
        cut_note(records.end()?);
        for l in &lines {
            if a.json {
                serde_json::to_writer(&mut out, l)?;
                out.write_all(b"\n")?;
            } else {
                let text: String =
                    crate::replay::rdp_channels::display(l).chars().map(transcript::clean_char).collect();
                writeln!(out, "{} {}", transcript::fmt_offset(l.t), text)?;
            }
        }
        out.flush()?;
        let allowed: Vec<&str> = header["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .filter(|n| n.eq_ignore_ascii_case("cliprdr") || n.eq_ignore_ascii_case("rdpdr"))
            .collect();
        if allowed.is_empty() {
            eprintln!("note: the policy allowed neither clipboard nor drive redirection in this session");
        } else if lines.is_empty() {
            eprintln!("note: nothing went through the allowed channels ({})", allowed.join(", "));
        }
        return Ok(());
    }
    if a.keys {
        let lines = crate::replay::rdp_keys::key_log(&header, records.by_ref());
        cut_note(records.end()?);
        for l in lines {
            if a.json {
                serde_json::to_writer(&mut out, &l)?;
                out.write_all(b"\n")?;
            } else {
                let text: String = l.text.chars().map(transcript::clean_char).collect();
                writeln!(out, "{} {:<5} {}", transcript::fmt_offset(l.t), l.kind, text)?;
            }
        }
        out.flush()?;
        if let Some(n) = crate::replay::rdp_keys::layout_note(&header) {
            eprintln!("note: {n}");
        }
        return Ok(());
    }
    let mut sink = if let Some(dir) = &a.frames {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        rdp::Sink::Pngs(dir.clone())
    } else if let Some(file) = &a.video {
        let (_, mut first) = Records::open(open()?)?;
        let size = rdp::first_size(&header, first.by_ref());
        drop(first);
        rdp::start_ffmpeg(file, size)?
    } else {
        bail!("nothing to write");
    };
    let done = rdp::export(&header, records.by_ref(), a.every, &mut sink)?;
    cut_note(records.end()?);
    match &sink {
        rdp::Sink::Pngs(dir) => writeln!(out, "{} frames written to {}", done.files.len(), dir.display())?,
        rdp::Sink::Video { out: file, .. } => writeln!(out, "video written to {}", file.display())?,
    }
    if done.undecoded > 0 {
        writeln!(
            out,
            "{} updates could not be decoded (first: {})",
            done.undecoded,
            done.problem.as_deref().unwrap_or("?")
        )?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) async fn evidence_cmd(config: &Path, cmd: EvidenceCmd) -> anyhow::Result<()> {
    match cmd {
        EvidenceCmd::Verify { bundle, key } => {
            let key = key.as_deref().map(evidence::read_public_key).transpose()?;
            let report = tokio::task::block_in_place(|| evidence::verify::verify(&bundle, key.as_ref()))?;
            for p in &report.problems {
                println!("{p}");
            }
            match report.problems.first() {
                None => {
                    println!(
                        "bundle {} verified: {}; signed by {}{}",
                        bundle.display(),
                        report.checked.join("; "),
                        report.signer.unwrap_or_default(),
                        if key.is_some() {
                            " (the given key)"
                        } else {
                            " (the key in the bundle: pass --key to check it is the gateway's)"
                        }
                    );
                    Ok(())
                }
                Some(first) => bail!(
                    "bundle {} failed verification: {} problem(s); first: {first}",
                    bundle.display(),
                    report.problems.len()
                ),
            }
        }
        EvidenceCmd::Key => {
            let cfg = crate::config::Config::load(config)?;
            if evidence::ensure_key(&cfg)? {
                eprintln!("Created evidence key {}.", cfg.evidence_key_path().display());
            }
            let key = evidence::load_key(&cfg)?;
            println!("{}", evidence::public_line(key.public_key()));
            Ok(())
        }
        EvidenceCmd::Export { session, request, since, until, output } => {
            let sel = match (session, request, since, until) {
                (Some(s), _, _, _) => Selection::Session(s),
                (_, Some(r), _, _) => Selection::Request(r),
                (_, _, Some(a), Some(b)) => Selection::Range(parse_time(&a)?, parse_time(&b)?),
                _ => bail!("give --session ID, --request N, or --since and --until"),
            };
            if output.exists() {
                bail!("{} exists already; choose another file", output.display());
            }
            let app = App::open_path(config).await?;
            let s = evidence::export::export(&app, &sel, &output).await?;
            evidence::export::print_summary(&mut std::io::stdout(), &output, &s)?;
            Ok(())
        }
    }
}

/// `recordings …`
#[derive(Debug, Subcommand)]
pub enum RecordingsCmd {
    /// Find sessions by words typed or shown in them (a phrase); each hit with its offset.
    Search {
        /// Words to find (matched as a phrase, case-insensitively).
        words: String,
        /// Target name or glob (`plc-*`).
        #[arg(long)]
        target: Option<String>,
        /// User name.
        #[arg(long)]
        user: Option<String>,
        /// User organisation.
        #[arg(long)]
        org: Option<String>,
        /// Sessions started at or after (YYYY-MM-DD[ HH:MM], UTC).
        #[arg(long)]
        since: Option<String>,
        /// Sessions started before.
        #[arg(long)]
        until: Option<String>,
        /// End reason (closed, killed, expired, idle, error).
        #[arg(long)]
        reason: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the search index from the stored recordings.
    Reindex,
    /// Put a session's recording on legal hold (retention keeps it).
    Hold {
        /// Session id (or a unique prefix).
        id: String,
        /// Why (an incident or case number).
        #[arg(long)]
        reason: String,
    },
    /// Lift a legal hold.
    Unhold {
        /// Session id (or a unique prefix).
        id: String,
    },
    /// List legal holds.
    Holds {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete the recordings retention says are due now (`[recordings] retain_days`; the server
    /// does this daily).
    Expire,
}

pub(crate) async fn recordings(config: &Path, cmd: RecordingsCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        RecordingsCmd::Search { words, target, user, org, since, until, reason, json } => {
            let q = crate::search::Query {
                text: words,
                target,
                user,
                org,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                reason,
            };
            let found = crate::search::search(&app, &q).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if json {
                serde_json::to_writer_pretty(&mut out, &found)?;
                out.write_all(b"\n")?;
            } else if found.is_empty() {
                writeln!(out, "no recording contains {:?}", q.text)?;
            } else {
                for s in &found {
                    let shown: Vec<String> = s
                        .hits
                        .iter()
                        .take(3)
                        .map(|h| format!("{} {} {:?}", &transcript::fmt_offset(h.offset)[..8], h.kind, h.text))
                        .collect();
                    writeln!(
                        out,
                        "{}  {}@{}  {}  {} hit(s): {}{}",
                        s.session,
                        s.user,
                        s.target,
                        crate::clock::fmt_ts(s.started_at),
                        s.hits.len(),
                        shown.join("; "),
                        if s.hits.len() > 3 { " …" } else { "" }
                    )?;
                }
            }
            out.flush()?;
        }
        RecordingsCmd::Reindex => {
            let n = crate::search::reindex(&app).await?;
            println!("Indexed {n} recording(s).");
        }
        RecordingsCmd::Hold { id, reason } => {
            let id = evidence::export::resolve_session(&app, &id).await?;
            crate::retention::hold(&app, ACTOR, &id, &reason).await?;
            println!("Recording of session {id} is on legal hold.");
        }
        RecordingsCmd::Unhold { id } => {
            let id = evidence::export::resolve_session(&app, &id).await?;
            crate::retention::unhold(&app, ACTOR, &id).await?;
            println!("Legal hold on session {id} lifted.");
        }
        RecordingsCmd::Holds { json } => {
            let list = crate::retention::holds(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for h in list {
                    println!("{}  {}  by {}  {}", h.session, crate::clock::fmt_ts(h.at), h.by, h.reason);
                }
            }
        }
        RecordingsCmd::Expire => {
            if app.config.recordings.retain_days == 0 {
                bail!("[recordings] retain_days is 0: recordings are kept forever");
            }
            let n = crate::retention::expire(&app, ACTOR).await?;
            println!("Retention deleted {n} recording(s).");
        }
    }
    Ok(())
}

/// `siem …`
#[derive(Debug, Subcommand)]
pub enum SiemCmd {
    /// Each destination: events delivered, lag behind the chain's head, last error.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn siem(config: &Path, cmd: SiemCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        SiemCmd::Status { json } => {
            let list = crate::siem::status(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no SIEM destinations configured ([[siem.destinations]] in the config)");
            }
            for s in list {
                let updated = s.updated_at.map(crate::clock::fmt_ts).unwrap_or_else(|| "never".into());
                println!(
                    "{} ({} {}): delivered {} of {} (lag {}), last delivery {}{}",
                    s.name,
                    s.kind,
                    s.target,
                    s.delivered,
                    s.head,
                    s.lag,
                    updated,
                    match (&s.last_error, s.error_at) {
                        (Some(e), Some(at)) => format!("; last failure {}: {e}", crate::clock::fmt_ts(at)),
                        (Some(e), None) => format!("; failing: {e}"),
                        _ => String::new(),
                    }
                );
            }
        }
    }
    Ok(())
}
