//! Playback in the auditor's terminal: timed, with space (pause), ←/→ (seek 5 s), +/- (speed)
//! and q (quit) when the terminal is interactive, or as fast as possible into a pipe. What is
//! written is only the terminal emulator's rendering of its screen (see the module above).

use std::io::{BufRead, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::cast::{CastReader, Event};
use super::Screen;

/// Opens the recording from its start (again, for seeking back).
pub type Opener<'a> = Box<dyn FnMut() -> anyhow::Result<Box<dyn BufRead + Send>> + 'a>;

/// How to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// Playback speed (1 = as recorded).
    pub speed: f64,
    /// Longest pause between two events, in recorded seconds.
    pub idle_limit: Option<f64>,
    /// Timed playback with keyboard control (stdout is a terminal); otherwise the rendering is
    /// written out at once.
    pub interactive: bool,
}

enum Key {
    Pause,
    Back,
    Forward,
    Faster,
    Slower,
    Quit,
}

/// Puts the terminal on stdin into raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed, properly sized termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing (\n → \r\n) off as in raw mode, but let signals work.
            t.c_lflag |= libc::ISIG;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return RawMode(None);
            }
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Reads keys from stdin on a thread of its own (it ends with the process).
fn keys() -> Receiver<Key> {
    let (tx, rx) = sync_channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 16];
        let mut esc = 0u8;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                let key = match esc {
                    1 => {
                        esc = if b == b'[' || b == b'O' { 2 } else { 0 };
                        None
                    }
                    2 if b.is_ascii_digit() || b == b';' => None,
                    2 => {
                        esc = 0;
                        match b {
                            b'C' => Some(Key::Forward),
                            b'D' => Some(Key::Back),
                            _ => None,
                        }
                    }
                    _ => match b {
                        0x1b => {
                            esc = 1;
                            None
                        }
                        b' ' => Some(Key::Pause),
                        b'+' | b'=' => Some(Key::Faster),
                        b'-' => Some(Key::Slower),
                        b'q' | b'Q' | 3 => Some(Key::Quit),
                        _ => None,
                    },
                };
                if let Some(k) = key {
                    if tx.send(k).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

struct State<'a> {
    open: Opener<'a>,
    cast: CastReader<Box<dyn BufRead + Send>>,
    next: Option<Event>,
    screen: Screen,
    shown: Option<vt100::Screen>,
    pos: f64,
}

impl<'a> State<'a> {
    fn start(mut open: Opener<'a>) -> anyhow::Result<State<'a>> {
        let (h, mut cast) = CastReader::new(open()?)?;
        let next = cast.next_event()?;
        Ok(State { open, cast, next, screen: Screen::new(&h), shown: None, pos: 0.0 })
    }

    /// Applies the next event.
    fn step(&mut self) -> anyhow::Result<()> {
        if let Some(ev) = self.next.take() {
            self.screen.apply(&ev.code, &ev.data);
            self.pos = self.pos.max(ev.t);
            self.next = self.cast.next_event()?;
        }
        Ok(())
    }

    /// Moves to `target` seconds (re-reading from the start when going back).
    fn seek(&mut self, target: f64) -> anyhow::Result<()> {
        let target = target.max(0.0);
        if target < self.pos {
            let fresh = State::start(std::mem::replace(&mut self.open, Box::new(|| anyhow::bail!("reopened"))))?;
            *self = fresh;
        }
        while self.next.as_ref().is_some_and(|e| e.t <= target) {
            self.step()?;
        }
        self.pos = target;
        self.shown = None;
        Ok(())
    }

    /// Writes what changed on the screen since the last render.
    fn render(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let now = self.screen.screen();
        match &self.shown {
            Some(prev) if prev.size() == now.size() => out.write_all(&now.contents_diff(prev))?,
            _ => {
                out.write_all(b"\x1b[0m\x1b[H\x1b[2J")?;
                out.write_all(&now.contents_formatted())?;
                out.write_all(&now.cursor_state_formatted())?;
            }
        }
        self.shown = Some(now.clone());
        out.flush()
    }
}

/// Plays the recording into `out`.
pub fn play(open: Opener<'_>, opts: &Options, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut st = State::start(open)?;
    if !opts.interactive {
        // Render after each burst of output, so intermediate screens are kept.
        while let Some(t) = st.next.as_ref().map(|e| e.t) {
            st.step()?;
            if st.next.as_ref().is_none_or(|n| n.t - t > 0.02) {
                st.render(out)?;
            }
        }
        out.write_all(b"\x1b[0m\r\n")?;
        out.flush()?;
        return Ok(());
    }
    let _raw = RawMode::enter();
    let keys = keys();
    let mut speed = opts.speed.clamp(0.01, 1000.0);
    let mut paused = false;
    out.write_all(b"\x1b[?1049h")?;
    st.render(out)?;
    // Ok(true): the recording played to its end; Ok(false): the auditor quit.
    let res = (|| -> anyhow::Result<bool> {
        loop {
            let key = if paused {
                match keys.recv() {
                    Ok(k) => Some(k),
                    Err(_) => return Ok(true),
                }
            } else {
                let Some(ev_t) = st.next.as_ref().map(|e| e.t) else { return Ok(true) };
                let mut gap = (ev_t - st.pos).max(0.0);
                if let Some(l) = opts.idle_limit {
                    gap = gap.min(l.max(0.0));
                }
                let wait = Duration::from_secs_f64((gap / speed).min(3600.0));
                let began = Instant::now();
                match keys.recv_timeout(wait) {
                    Ok(k) => {
                        let moved = began.elapsed().as_secs_f64() * speed;
                        st.pos = (st.pos + moved).min(ev_t);
                        Some(k)
                    }
                    Err(e) => {
                        if e == RecvTimeoutError::Disconnected {
                            // stdin closed: keep playing without keys.
                            std::thread::sleep(wait.saturating_sub(began.elapsed()));
                        }
                        st.step()?;
                        // Skip rendering inside a burst.
                        if st.next.as_ref().is_none_or(|n| n.t - ev_t > 0.01) {
                            st.render(out)?;
                        }
                        None
                    }
                }
            };
            match key {
                None => {}
                Some(Key::Quit) => return Ok(false),
                Some(Key::Pause) => paused = !paused,
                Some(Key::Faster) => speed = (speed * 2.0).min(64.0),
                Some(Key::Slower) => speed = (speed / 2.0).max(0.125),
                Some(Key::Back) => {
                    st.seek(st.pos - 5.0)?;
                    st.render(out)?;
                }
                Some(Key::Forward) => {
                    st.seek(st.pos + 5.0)?;
                    st.render(out)?;
                }
            }
        }
    })();
    out.write_all(b"\x1b[0m\x1b[?1049l")?;
    if let Ok(true) = res {
        // Played to the end: leave the last screen in view (as plain text, below what the
        // terminal showed before).
        for line in st.screen.text().lines() {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\r\n")?;
        }
    }
    out.flush()?;
    res.map(|_| ())
}
