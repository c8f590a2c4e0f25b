//! RDP recordings shown a frame at a time, for players that ask for "the screen at t" (the web
//! console's canvas player, its live view): a [`FrameCursor`] decodes a recording forward from
//! where it stands, record by record, so playing on costs only the new records; going back
//! starts a new cursor. [`Views`] keeps a few cursors between requests, bounded in number and
//! in framebuffer memory. A cursor also follows a recording that is still being written.
//!
//! Nothing here knows HTTP: the front end names a key per player and asks for frames.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::rdp::{png_bytes, Decoder};
use super::rdp_keys::{KeyLine, KeyLog};
use crate::rdp::input::CLIENT_INFO;
use crate::recording::frames::{Record, RecordReader, SERVER_TO_CLIENT};

/// Cursors kept between requests.
const MAX_VIEWS: usize = 16;
/// Framebuffer memory all kept cursors may hold.
const MAX_VIEW_BYTES: usize = 256 << 20;
/// A cursor not asked for this long is dropped.
const IDLE: Duration = Duration::from_secs(300);
/// Key-log lines a timeline holds (the rest is in `penstock replay --keys`).
const MAX_KEY_LINES: usize = 5000;

/// A recording decoded up to a moment.
pub struct FrameCursor {
    reader: RecordReader<Box<dyn Read + Send>>,
    decoder: Decoder,
    /// A record read but not applied yet (it comes after the position).
    ahead: Option<Record>,
    /// Microseconds applied up to.
    at: u64,
    /// The recording's current end was reached.
    at_end: bool,
    /// No frame was served from this cursor yet.
    fresh: bool,
}

impl std::fmt::Debug for FrameCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCursor").field("at", &self.at).finish_non_exhaustive()
    }
}

impl FrameCursor {
    /// A cursor at the start of the recording `r` (its header line must be there).
    pub fn open(r: Box<dyn Read + Send>) -> anyhow::Result<FrameCursor> {
        let mut reader = RecordReader::new(r);
        let header = reader.header()?.context("the recording has no header yet")?.clone();
        if header["format"].as_str() != Some(crate::rdp::recording::FORMAT) {
            anyhow::bail!("not an RDP recording (format {})", header["format"]);
        }
        Ok(FrameCursor { reader, decoder: Decoder::new(&header), ahead: None, at: 0, at_end: false, fresh: true })
    }

    /// Microseconds into the recording the screen stands at.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Whether the last advance reached the recording's end (for now, if it is still written).
    pub fn at_end(&self) -> bool {
        self.at_end
    }

    /// Applies every record up to `until` microseconds (all there is with `u64::MAX`).
    pub fn advance(&mut self, until: u64) -> anyhow::Result<()> {
        self.at_end = false;
        loop {
            let rec = match self.ahead.take() {
                Some(r) => r,
                None => match self.reader.next_record()? {
                    Some(r) => r,
                    None => {
                        self.at_end = true;
                        break;
                    }
                },
            };
            if rec.at_micros > until {
                self.ahead = Some(rec);
                break;
            }
            self.at = self.at.max(rec.at_micros);
            match rec.kind {
                SERVER_TO_CLIENT => {
                    if let Err(e) = self.decoder.feed(&rec.data) {
                        // What was decoded so far stands; the rest of the stream is skipped.
                        self.decoder.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                CLIENT_INFO => self.decoder.client_info(&rec.data),
                _ => {}
            }
        }
        if until != u64::MAX {
            self.at = self.at.max(until);
        }
        Ok(())
    }

    /// Applies records until something is drawn (or the recording's current end).
    pub fn advance_to_first_frame(&mut self) -> anyhow::Result<()> {
        while self.decoder.image().is_none() {
            let next = match self.ahead.as_ref() {
                Some(r) => r.at_micros,
                None => match self.reader.next_record()? {
                    Some(r) => {
                        let at = r.at_micros;
                        self.ahead = Some(r);
                        at
                    }
                    None => break,
                },
            };
            self.advance(next)?;
        }
        Ok(())
    }

    /// The screen as a PNG when it changed since the last frame this cursor gave (always for
    /// the first one, and with `always`); `None` when unchanged or nothing was drawn yet.
    pub fn frame(&mut self, always: bool) -> anyhow::Result<Option<Vec<u8>>> {
        let want = always || self.fresh || self.decoder.changed;
        let Some(img) = self.decoder.image().filter(|_| want) else { return Ok(None) };
        let png = png_bytes(img)?;
        self.decoder.changed = false;
        self.fresh = false;
        Ok(Some(png))
    }

    /// Framebuffer bytes held.
    pub fn memory(&self) -> usize {
        self.decoder.image().map_or(0, |i| usize::from(i.width()) * usize::from(i.height()) * 4)
    }
}

/// What a player shows beside the screen: the recording's length, desktop size and key log.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Seconds from the first to the last record.
    pub duration: f64,
    /// Desktop size the client asked for.
    pub width: u16,
    /// Desktop height.
    pub height: u16,
    /// What the vendor typed and clicked (at most [`MAX_KEY_LINES`]).
    pub keys: Vec<KeyLine>,
    /// More lines than shown.
    pub keys_cut: bool,
    /// The key log's layout note.
    pub layout_note: Option<String>,
}

/// Reads a recording once, without decoding its screen, for its [`Timeline`].
pub fn timeline(r: Box<dyn Read + Send>) -> anyhow::Result<Timeline> {
    let mut reader = RecordReader::new(r);
    let header = reader.header()?.context("the recording has no header yet")?.clone();
    let mut log = KeyLog::new(&header);
    let mut t = Timeline {
        width: header["desktop_width"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(1024),
        height: header["desktop_height"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(768),
        layout_note: super::rdp_keys::layout_note(&header),
        ..Timeline::default()
    };
    let mut last = 0u64;
    let keep = |t: &mut Timeline, lines: Vec<KeyLine>| {
        for l in lines {
            if t.keys.len() < MAX_KEY_LINES {
                t.keys.push(l);
            } else {
                t.keys_cut = true;
            }
        }
    };
    while let Some(rec) = reader.next_record()? {
        last = last.max(rec.at_micros);
        log.feed(&rec);
        let lines = log.take_lines();
        keep(&mut t, lines);
    }
    keep(&mut t, log.finish());
    t.duration = last as f64 / 1e6;
    Ok(t)
}

struct Kept {
    key: String,
    cursor: FrameCursor,
    used: Instant,
}

/// Cursors kept between a player's requests, by the front end's key for that player.
#[derive(Default)]
pub struct Views(Mutex<Vec<Kept>>);

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

impl Views {
    /// Takes the cursor kept for `key` (the caller has it alone until it is put back).
    pub fn take(&self, key: &str) -> Option<FrameCursor> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(|k| k.key == key)?;
        Some(kept.swap_remove(i).cursor)
    }

    /// Keeps `cursor` for `key`, dropping idle cursors and then the least recently used ones
    /// while there are too many or they hold too much.
    pub fn put(&self, key: String, cursor: FrameCursor) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        kept.retain(|k| k.key != key && now.duration_since(k.used) < IDLE);
        kept.push(Kept { key, cursor, used: now });
        kept.sort_by_key(|k| std::cmp::Reverse(k.used));
        let mut bytes = 0usize;
        let mut n = 0usize;
        kept.retain(|k| {
            bytes += k.cursor.memory();
            n += 1;
            n == 1 || (n <= MAX_VIEWS && bytes <= MAX_VIEW_BYTES)
        });
    }

    /// Cursors kept.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The screen at `t` microseconds for the player `key`: continues its kept cursor when `t` is
/// not before it, else opens the recording anew with `open`. `Ok(None)`: unchanged since the
/// frame this player got last. With `t` = `u64::MAX`, all there is (a live recording).
pub fn frame_at(
    views: &Views,
    key: &str,
    t: u64,
    always: bool,
    open: impl FnOnce() -> anyhow::Result<Box<dyn Read + Send>>,
) -> anyhow::Result<(Option<Vec<u8>>, u64, bool)> {
    let mut cursor = match views.take(key) {
        Some(c) if c.position() <= t => c,
        _ => FrameCursor::open(open()?)?,
    };
    cursor.advance(t)?;
    if always && cursor.decoder.image().is_none() {
        // Nothing drawn yet: the first screen there is (the position says when).
        cursor.advance_to_first_frame()?;
    }
    let png = cursor.frame(always)?;
    let (at, end) = (cursor.position(), cursor.at_end());
    views.put(key.to_string(), cursor);
    Ok((png, at, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(records: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out =
            serde_json::json!({"format": crate::rdp::recording::FORMAT, "desktop_width": 64, "desktop_height": 48})
                .to_string()
                .into_bytes();
        out.push(b'\n');
        for (k, at, d) in records {
            out.push(*k);
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&(d.len() as u32).to_le_bytes());
            out.extend_from_slice(d);
        }
        out
    }

    /// A fast-path bitmap update (uncompressed, 24 bpp) filling a `w`×`h` rectangle with `rgb`.
    fn bitmap(w: u16, h: u16, rgb: [u8; 3]) -> Vec<u8> {
        let mut px = Vec::new();
        for _ in 0..(usize::from(w) * usize::from(h)) {
            px.extend_from_slice(&[rgb[2], rgb[1], rgb[0]]);
        }
        // TS_BITMAP_DATA: dest rect, size, bpp 24, flags 0 (uncompressed), length.
        let mut data = Vec::new();
        for v in [0u16, 0, w - 1, h - 1, w, h, 24, 0, px.len() as u16] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(&px);
        // TS_UPDATE_BITMAP_DATA: updateType BITMAP, one rectangle.
        let mut upd = Vec::new();
        upd.extend_from_slice(&1u16.to_le_bytes());
        upd.extend_from_slice(&1u16.to_le_bytes());
        upd.extend_from_slice(&data);
        // Fast-path update PDU: header byte, 2-byte length, update header (bitmap, no
        // fragmentation), size, the update.
        let body_len = 1 + 2 + upd.len();
        let total = 1 + 2 + body_len;
        let mut out = vec![0x00, 0x80 | ((total >> 8) as u8), total as u8];
        out.push(0x01);
        out.extend_from_slice(&(upd.len() as u16).to_le_bytes());
        out.extend_from_slice(&upd);
        out
    }

    fn pixel(png: &[u8], x: usize, y: usize) -> [u8; 3] {
        let mut r = png::Decoder::new(png).read_info().expect("png");
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).expect("frame");
        let i = (y * info.width as usize + x) * 3;
        [buf[i], buf[i + 1], buf[i + 2]]
    }

    #[test]
    fn a_cursor_plays_forward_and_a_new_one_goes_back() {
        let red = bitmap(16, 16, [200, 10, 10]);
        let blue = bitmap(16, 16, [10, 10, 200]);
        let bytes = recording(&[(SERVER_TO_CLIENT, 1_000_000, red), (SERVER_TO_CLIENT, 3_000_000, blue)]);
        let views = Views::default();
        let open = || -> anyhow::Result<Box<dyn Read + Send>> { Ok(Box::new(std::io::Cursor::new(bytes.clone()))) };
        // Before anything was drawn there is no frame.
        let (png, at, _) = frame_at(&views, "p", 500_000, false, open).expect("frame");
        assert!(png.is_none());
        assert_eq!(at, 500_000);
        let (png, _, end) = frame_at(&views, "p", 2_000_000, false, open).expect("frame");
        assert_eq!(pixel(&png.expect("drawn"), 5, 5), [200, 10, 10]);
        assert!(!end);
        // Unchanged: no frame.
        assert!(frame_at(&views, "p", 2_500_000, false, open).expect("frame").0.is_none());
        let (png, _, end) = frame_at(&views, "p", 4_000_000, false, open).expect("frame");
        assert_eq!(pixel(&png.expect("drawn"), 5, 5), [10, 10, 200]);
        assert!(end);
        // Asked for a frame at 0.5 s, before anything was drawn: the first frame, at 1 s.
        let (png, at, _) = frame_at(&views, "q", 500_000, true, open).expect("frame");
        assert_eq!(pixel(&png.expect("drawn"), 5, 5), [200, 10, 10]);
        assert_eq!(at, 1_000_000);
        // Back to 2 s: a new cursor, whose first frame is always given.
        let (png, _, _) = frame_at(&views, "p", 2_000_000, false, open).expect("frame");
        assert_eq!(pixel(&png.expect("drawn"), 5, 5), [200, 10, 10]);
        assert_eq!(views.len(), 2);
    }

    #[test]
    fn views_are_bounded() {
        let bytes = recording(&[(SERVER_TO_CLIENT, 0, bitmap(8, 8, [1, 2, 3]))]);
        let views = Views::default();
        for i in 0..(MAX_VIEWS + 5) {
            let open = || -> anyhow::Result<Box<dyn Read + Send>> { Ok(Box::new(std::io::Cursor::new(bytes.clone()))) };
            frame_at(&views, &format!("p{i}"), 10, false, open).expect("frame");
        }
        assert_eq!(views.len(), MAX_VIEWS);
        // The newest are kept.
        assert!(views.take(&format!("p{}", MAX_VIEWS + 4)).is_some());
        assert!(views.take("p0").is_none());
    }

    #[test]
    fn not_an_rdp_recording_is_refused() {
        let err = FrameCursor::open(Box::new(std::io::Cursor::new(b"{\"version\":2}\n".to_vec()))).expect_err("cast");
        assert!(err.to_string().contains("not an RDP recording"), "{err}");
    }
}
