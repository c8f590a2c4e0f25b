//! Live sessions of this process, whatever front end relays them (SSH, RDP): the registry each
//! relay is signalled through, and the check that ends sessions that were killed, whose grant
//! was revoked or expired, or whose user was disabled. Each front end's watcher calls
//! [`enforce`] twice a second.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::Row;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::sessions::EndReason;

/// A live session as the watcher sees it.
#[derive(Debug)]
pub struct Live {
    /// Tells the relay to stop, and why.
    pub stop: watch::Sender<Option<EndReason>>,
    /// Notices for the vendor.
    pub notices: mpsc::Sender<String>,
    /// End of the grant (Unix seconds).
    pub valid_until: i64,
    /// Which ending-soon notices were sent (10 min, 1 min).
    pub warned: (bool, bool),
}

/// Live sessions of this process, by id.
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<String, Live>>);

/// Access ending within this many seconds is announced ("ends in 10 minutes").
pub const FIRST_NOTICE_SECS: i64 = 600;
/// The last notice ("ends in 1 minute").
pub const LAST_NOTICE_SECS: i64 = 60;

/// What every front end tells a vendor whose access ends at `valid_until`, when that is
/// within [`FIRST_NOTICE_SECS`] of `now`.
pub fn ending_message(valid_until: i64, now: i64) -> Option<String> {
    let left = valid_until - now;
    let at = crate::clock::fmt_ts(valid_until);
    if left > FIRST_NOTICE_SECS {
        None
    } else if left <= LAST_NOTICE_SECS {
        Some(format!("your access ends in 1 minute (at {at})"))
    } else {
        Some(format!("your access ends in {} minutes (at {at})", (left + 59) / 60))
    }
}

impl Registry {
    /// Adds a session; returns the receivers its relay listens on.
    pub fn add(&self, id: &str, valid_until: i64) -> (watch::Receiver<Option<EndReason>>, mpsc::Receiver<String>) {
        let (stop, rx) = watch::channel(None);
        let (notices, notices_rx) = mpsc::channel(4);
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), Live { stop, notices, valid_until, warned: (false, false) });
        }
        (rx, notices_rx)
    }

    /// Sends "ends in 10 minutes / 1 minute" notices that are due at `now`.
    pub fn warn_due(&self, now: i64) {
        if let Ok(mut m) = self.0.lock() {
            for l in m.values_mut() {
                let left = l.valid_until - now;
                let Some(text) = ending_message(l.valid_until, now) else { continue };
                if left <= LAST_NOTICE_SECS && !l.warned.1 {
                    l.warned = (true, true);
                    let _ = l.notices.try_send(text);
                } else if left > LAST_NOTICE_SECS && !l.warned.0 {
                    l.warned.0 = true;
                    let _ = l.notices.try_send(text);
                }
            }
        }
    }

    /// Forgets a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }

    /// Ends a session with `reason`.
    pub fn stop(&self, id: &str, reason: EndReason) {
        if let Ok(m) = self.0.lock() {
            if let Some(l) = m.get(id) {
                let _ = l.stop.send(Some(reason));
            }
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, now: i64) -> Vec<String> {
        self.0
            .lock()
            .map(|m| m.iter().filter(|(_, l)| l.valid_until <= now).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

/// Ends the live sessions in `registry` whose grant expired (by the injected clock), sends the
/// due ending-soon notices, and asks the store which of them were killed, revoked, or whose
/// user was disabled. A store outage keeps sessions running (they are still recorded) and is
/// logged.
pub async fn enforce(app: &App, registry: &Registry) {
    if registry.is_empty() {
        return;
    }
    let now = app.clock.now();
    for id in registry.expired(now) {
        registry.stop(&id, EndReason::Expired);
    }
    registry.warn_due(now);
    let rows = sqlx::query(
        "SELECT s.id, s.kill_requested, g.revoked_at, u.disabled, u.expires_at, g.valid_until FROM sessions s \
         LEFT JOIN grants g ON g.id = s.grant_id LEFT JOIN users u ON u.id = s.user_id WHERE s.ended_at IS NULL",
    )
    .fetch_all(app.store.pool())
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "session watcher cannot read the store");
            return;
        }
    };
    for r in rows {
        let id: String = r.try_get(0).unwrap_or_default();
        let kill: i64 = r.try_get(1).unwrap_or(0);
        let revoked: Option<i64> = r.try_get(2).unwrap_or(None);
        let disabled: Option<i64> = r.try_get(3).unwrap_or(None);
        let expires: Option<i64> = r.try_get(4).unwrap_or(None);
        let until: Option<i64> = r.try_get(5).unwrap_or(None);
        if kill != 0 || revoked.is_some() || disabled.unwrap_or(0) != 0 {
            registry.stop(&id, EndReason::Killed);
        } else if expires.is_some_and(|e| e <= now) || until.is_some_and(|u| u <= now) {
            registry.stop(&id, EndReason::Expired);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live view: what a recording's writer task publishes, and the watchers that follow it.
// ---------------------------------------------------------------------------------------------

/// Events buffered per live session for its watchers; a watcher further behind is resynced
/// from the recording (it never slows the session).
pub const FEED_CAPACITY: usize = 256;
/// Join requests waiting for a writer task.
const JOIN_QUEUE: usize = 8;
/// Times a watcher that keeps falling behind is resynced before it is dropped.
const MAX_RESYNCS: u32 = 5;
/// Largest recording prefix read to rebuild the current screen (the rest is skipped).
const MAX_PREFIX: u64 = 64 * 1024 * 1024;

/// One screen-changing event of a live session, as the recorder wrote it to the cast.
#[derive(Debug, Clone)]
pub enum Feed {
    /// Terminal output (already valid UTF-8, as in the recording).
    Output(std::sync::Arc<str>),
    /// The vendor's terminal changed size (`COLSxROWS`).
    Resize(u32, u32),
}

/// What a joining watcher gets from the writer task: everything up to `written` bytes of the
/// recording is in the file, everything after comes through `rx`.
#[derive(Debug)]
pub struct Joined {
    /// The recording file being written.
    pub path: std::path::PathBuf,
    /// Bytes of the recording on disk when `rx` subscribed.
    pub written: u64,
    /// The events after that.
    pub rx: tokio::sync::broadcast::Receiver<Feed>,
}

/// A join request: the writer task answers on the oneshot.
pub type JoinRequest = tokio::sync::oneshot::Sender<Joined>;

/// The live feeds of this process's recordings, by session id.
#[derive(Debug, Default)]
pub struct Feeds(Mutex<HashMap<String, mpsc::Sender<JoinRequest>>>);

impl Feeds {
    /// A recording's writer registers its session; it answers join requests on the receiver.
    pub fn register(&self, id: &str) -> mpsc::Receiver<JoinRequest> {
        let (tx, rx) = mpsc::channel(JOIN_QUEUE);
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), tx);
        }
        rx
    }

    /// The writer is done.
    pub fn unregister(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }

    /// Whether `id` is being recorded by this process.
    pub fn is_live(&self, id: &str) -> bool {
        self.0.lock().map(|m| m.contains_key(id)).unwrap_or(false)
    }

    /// Joins `id`'s feed; `None` when it is not recorded here (ended, or on another node).
    pub async fn join(&self, id: &str) -> Option<Joined> {
        let tx = self.0.lock().ok()?.get(id).cloned()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.try_send(reply).ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.ok()?.ok()
    }
}

/// Who may watch live sessions: managers and auditors (not vendors, not admins: the live view
/// shows what a vendor types on a plant's machines).
pub fn may_watch(user: &crate::users::User) -> bool {
    matches!(user.role, crate::users::Role::Manager | crate::users::Role::Auditor)
}

/// Starts watching live RDP session `id` as `user` (checked with [`may_watch`]): the session
/// row, once `session.watched` with `via` is audited. Its screen is read from the recording as
/// it is written (`replay::rdp_view`), so only the node that relays it can show it.
pub async fn watch_rdp(
    app: &App,
    user: &crate::users::User,
    id: &str,
    via: &str,
) -> crate::error::Result<crate::sessions::SessionRow> {
    use crate::error::Error;
    if !may_watch(user) {
        return Err(Error::Denied("only managers and auditors may watch live sessions".into()));
    }
    let s = live_rdp(app, id).await?;
    let ev = crate::audit::Event::SessionWatched { session: id.to_string(), user: user.name.clone(), via: via.into() };
    crate::audit::record(&app.store, &*app.clock, &user.name, &ev).await?;
    Ok(s)
}

/// Live RDP session `id` with its recording on this node, or why not.
pub async fn live_rdp(app: &App, id: &str) -> crate::error::Result<crate::sessions::SessionRow> {
    use crate::error::Error;
    let not_here =
        || Error::NotFound(format!("session {id} is not live on this gateway (ended, unknown or on another node)"));
    let s = crate::sessions::get(app, id).await?.ok_or_else(not_here)?;
    use crate::storage::RecordingStorage;
    let spool = crate::storage::LocalFiles::new(app.config.recordings_dir());
    let local = s.recording_path.as_deref().is_some_and(|p| spool.exists(p));
    if s.protocol != "rdp" || s.ended_at.is_some() || !local {
        return Err(not_here());
    }
    Ok(s)
}

/// What a watcher saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The screen changed.
    Changed,
    /// The screen was rebuilt from the recording after the watcher fell behind.
    Resynced,
    /// The session ended.
    Ended,
}

/// A manager or auditor following a live session: a terminal emulator fed with the recording
/// so far and then the live events. Only the emulator's rendering is ever shown (see `replay`).
pub struct Watcher {
    app: App,
    id: String,
    screen: crate::replay::Screen,
    rx: tokio::sync::broadcast::Receiver<Feed>,
    resyncs: u32,
    /// The recording's title (`user → target`).
    pub title: String,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("id", &self.id).finish()
    }
}

/// Reads the first `written` bytes of a recording into a screen.
async fn screen_from(path: std::path::PathBuf, written: u64) -> anyhow::Result<(String, crate::replay::Screen)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = std::fs::File::open(&path)?;
        let r = std::io::BufReader::new(f.take(written.min(MAX_PREFIX)));
        let (h, mut cast) = crate::replay::cast::CastReader::new(r)?;
        let mut screen = crate::replay::Screen::new(&h);
        while let Some(ev) = cast.next_event()? {
            screen.apply(&ev.code, &ev.data);
        }
        Ok((h.title.unwrap_or_default(), screen))
    })
    .await?
}

impl Watcher {
    /// Starts watching `id` as `user` (checked with [`may_watch`]) and audits
    /// `session.watched` with `via` (`web` or `ssh`).
    pub async fn start(app: &App, user: &crate::users::User, id: &str, via: &str) -> crate::error::Result<Watcher> {
        use crate::error::Error;
        if !may_watch(user) {
            return Err(Error::Denied("only managers and auditors may watch live sessions".into()));
        }
        let joined = app.feeds.join(id).await.ok_or_else(|| {
            Error::NotFound(format!("session {id} is not live on this gateway (ended, unknown or on another node)"))
        })?;
        let (title, screen) = screen_from(joined.path, joined.written)
            .await
            .map_err(|e| Error::Other(anyhow::anyhow!("cannot read the live recording: {e}")))?;
        let ev =
            crate::audit::Event::SessionWatched { session: id.to_string(), user: user.name.clone(), via: via.into() };
        crate::audit::record(&app.store, &*app.clock, &user.name, &ev).await?;
        Ok(Watcher { app: app.clone(), id: id.to_string(), screen, rx: joined.rx, resyncs: 0, title })
    }

    /// The current screen.
    pub fn screen(&self) -> &crate::replay::Screen {
        &self.screen
    }

    fn apply(&mut self, f: Feed) {
        match f {
            Feed::Output(s) => self.screen.apply("o", &s),
            Feed::Resize(c, r) => self.screen.apply("r", &format!("{c}x{r}")),
        }
    }

    /// Waits for the next change and applies it (and whatever else is already queued).
    pub async fn next(&mut self) -> Seen {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let first = self.rx.recv().await;
        match first {
            Ok(f) => self.apply(f),
            Err(RecvError::Closed) => return Seen::Ended,
            Err(RecvError::Lagged(_)) => return self.resync().await,
        }
        loop {
            match self.rx.try_recv() {
                Ok(f) => self.apply(f),
                Err(TryRecvError::Empty) => return Seen::Changed,
                Err(TryRecvError::Closed) => return Seen::Changed,
                Err(TryRecvError::Lagged(_)) => return self.resync().await,
            }
        }
    }

    /// Rebuilds the screen from the recording after falling behind; gives up (as if ended)
    /// when that keeps happening.
    async fn resync(&mut self) -> Seen {
        self.resyncs += 1;
        if self.resyncs > MAX_RESYNCS {
            tracing::info!(session = %self.id, "live watcher keeps falling behind; dropped");
            return Seen::Ended;
        }
        let Some(joined) = self.app.feeds.join(&self.id).await else { return Seen::Ended };
        match screen_from(joined.path, joined.written).await {
            Ok((_, screen)) => {
                self.screen = screen;
                self.rx = joined.rx;
                Seen::Resynced
            }
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "cannot resync live watcher");
                Seen::Ended
            }
        }
    }
}
