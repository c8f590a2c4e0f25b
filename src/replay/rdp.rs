//! RDP recordings at replay: the target's stream decoded into a framebuffer with IronRDP's
//! decoders (fast-path and slow-path bitmap updates: RLE, planar, uncompressed; surface
//! commands: RemoteFX, uncompressed; bulk-compressed PDUs with the compression the Client Info
//! named), written out as PNG frames or piped to `ffmpeg`. The vendor's input becomes a key log
//! in `replay::rdp_keys`.
//!
//! Decoding happens here only, never on the session's path. What the gateway steered the
//! session away from (GFX/H.264, drawing orders) is not decoded: such updates are counted and
//! reported, and the frame keeps what was drawn before.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ironrdp_bulk::{BulkCompressor, CompressionType as BulkType};
use ironrdp_core::{ReadCursor, WriteBuf};
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::rdp::capability_sets::CapabilitySet;
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::slow_path::{self, GraphicsUpdateType};
use ironrdp_pdu::x224::X224;
use ironrdp_pdu::Action;
use ironrdp_session::fast_path::{Processor, ProcessorBuilder};
use ironrdp_session::image::DecodedImage;

use crate::rdp::input::CLIENT_INFO;
use crate::recording::frames::{Record, SERVER_TO_CLIENT};

/// Largest server PDU held while it is incomplete (TPKT lengths are 16 bits).
const MAX_PENDING: usize = 128 * 1024;
/// Largest desktop a replay draws (pixels a side).
const MAX_SIDE: u16 = 8192;

/// The target's stream decoded into a framebuffer.
pub struct Decoder {
    pending: Vec<u8>,
    image: Option<DecodedImage>,
    processor: Option<Processor>,
    bulk: Option<BulkCompressor>,
    default_size: (u16, u16),
    out: WriteBuf,
    /// The framebuffer changed since this was last cleared.
    pub changed: bool,
    /// Updates that could not be decoded.
    pub undecoded: usize,
    /// The first decoding error (a one-line description).
    pub first_error: Option<String>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("undecoded", &self.undecoded).finish_non_exhaustive()
    }
}

fn side(v: &serde_json::Value, fallback: u16) -> u16 {
    v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| (1..=MAX_SIDE).contains(n)).unwrap_or(fallback)
}

impl Decoder {
    /// A decoder for a recording with `header` (its desktop size is used until the target's
    /// Demand Active names its own).
    pub fn new(header: &serde_json::Value) -> Decoder {
        Decoder {
            pending: Vec::new(),
            image: None,
            processor: None,
            bulk: None,
            default_size: (side(&header["desktop_width"], 1024), side(&header["desktop_height"], 768)),
            out: WriteBuf::new(),
            changed: false,
            undecoded: 0,
            first_error: None,
        }
    }

    fn error(&mut self, what: String) {
        self.undecoded += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Applies the gateway's note of the Client Info PDU (the bulk compression in use).
    pub fn client_info(&mut self, note: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(note) else { return };
        if v["compression"].as_bool() == Some(true) {
            let t = match v["compression_type"].as_u64() {
                Some(0) => BulkType::Rdp4,
                Some(1) => BulkType::Rdp5,
                Some(2) => BulkType::Rdp6,
                _ => BulkType::Rdp61,
            };
            self.bulk = Some(BulkCompressor::new(t));
        }
    }

    /// The framebuffer, once something was drawn or the desktop was announced.
    pub fn image(&self) -> Option<&DecodedImage> {
        self.image.as_ref()
    }

    fn activate(&mut self, width: u16, height: u16, io_channel: u16, user_channel: u16, share_id: u32) {
        let (w, h) = (width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE));
        let same = self.image.as_ref().is_some_and(|i| i.width() == w && i.height() == h);
        if !same {
            // A new, black desktop: a frame is written once something is drawn on it.
            self.image = Some(DecodedImage::new(PixelFormat::RgbA32, w, h));
        }
        self.processor = Some(
            ProcessorBuilder {
                io_channel_id: io_channel,
                user_channel_id: user_channel,
                share_id,
                enable_server_pointer: false,
                pointer_software_rendering: false,
            }
            .build(),
        );
    }

    fn ensure_active(&mut self) {
        if self.processor.is_none() || self.image.is_none() {
            let (w, h) = self.default_size;
            self.activate(w, h, 1003, 1007, 0x0001_03ea);
        }
    }

    /// Feeds bytes the target sent. An error means the stream cannot be split into PDUs any
    /// more (what was decoded so far stands).
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0usize;
        let res = loop {
            let rest = &self.pending[at..];
            let info = match ironrdp_pdu::find_size(rest) {
                Ok(Some(i)) => i,
                Ok(None) => break Ok(()),
                Err(e) => break Err(anyhow::anyhow!("the recorded RDP stream cannot be split into PDUs: {e}")),
            };
            if info.length == 0 {
                break Err(anyhow::anyhow!("the recorded RDP stream holds an empty PDU"));
            }
            if rest.len() < info.length {
                break Ok(());
            }
            let frame = rest[..info.length].to_vec();
            at += info.length;
            self.pdu(info.action, &frame);
        };
        self.pending.drain(..at);
        if res.is_ok() && self.pending.len() > MAX_PENDING {
            bail!("the recorded RDP stream holds a PDU longer than {MAX_PENDING} bytes");
        }
        if res.is_err() {
            self.pending.clear();
        }
        res
    }

    fn pdu(&mut self, action: Action, frame: &[u8]) {
        match action {
            Action::FastPath => {
                self.ensure_active();
                let (Some(p), Some(img)) = (self.processor.as_mut(), self.image.as_mut()) else { return };
                self.out.clear();
                match p.process(img, frame, &mut self.out, &mut self.bulk) {
                    Ok(updates) => {
                        if updates.iter().any(|u| matches!(u, ironrdp_session::fast_path::UpdateKind::Region(_))) {
                            self.changed = true;
                        }
                    }
                    Err(e) => self.error(format!("fast-path update: {e}")),
                }
            }
            Action::X224 => self.slow_path(frame),
        }
    }

    fn slow_path(&mut self, frame: &[u8]) {
        let Ok(X224(McsMessage::SendDataIndication(ind))) = ironrdp_core::decode::<X224<McsMessage<'_>>>(frame) else {
            return;
        };
        let Ok(h) = ironrdp_core::decode::<ShareControlHeader>(&ind.user_data) else { return };
        match h.share_control_pdu {
            ShareControlPdu::ServerDemandActive(d) => {
                let (mut w, mut hh) = self.default_size;
                for c in &d.pdu.capability_sets {
                    if let CapabilitySet::Bitmap(b) = c {
                        w = b.desktop_width;
                        hh = b.desktop_height;
                    }
                }
                self.activate(w, hh, ind.channel_id, ind.initiator_id, h.share_id);
            }
            ShareControlPdu::Data(d) => match d.share_data_pdu {
                ShareDataPdu::Update(data) => self.slow_update(&data),
                ShareDataPdu::Compressed { .. } => self.error("compressed slow-path data".into()),
                _ => {}
            },
            _ => {}
        }
    }

    fn slow_update(&mut self, data: &[u8]) {
        self.ensure_active();
        let (Some(p), Some(img)) = (self.processor.as_mut(), self.image.as_mut()) else { return };
        let mut src = ReadCursor::new(data);
        let r = match slow_path::read_graphics_update_type(&mut src) {
            Ok(GraphicsUpdateType::Bitmap) => match slow_path::decode_slow_path_bitmap(&mut src) {
                Ok(b) => p.process_bitmap_update(img, b).map(|_| true).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ok(GraphicsUpdateType::Orders) => Err("drawing orders (not decoded)".into()),
            Ok(_) => Ok(false),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(true) => self.changed = true,
            Ok(false) => {}
            Err(e) => self.error(format!("slow-path update: {e}")),
        }
    }
}

/// The framebuffer as an RGB PNG.
pub fn png_bytes(img: &DecodedImage) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (usize::from(img.width()), usize::from(img.height()));
    let mut rgb = Vec::with_capacity(w * h * 3);
    for px in img.data().chunks_exact(4).take(w * h) {
        rgb.extend_from_slice(&px[..3]);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, u32::from(img.width()), u32::from(img.height()));
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().context("PNG header")?;
        w.write_image_data(&rgb).context("PNG data")?;
    }
    Ok(out)
}

/// Where frames go.
pub enum Sink {
    /// PNG files `frame-NNNNN-<ms>.png` in a folder.
    Pngs(PathBuf),
    /// Raw RGB frames to `ffmpeg` (which writes the video).
    Video { child: std::process::Child, size: (u16, u16), out: PathBuf },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Pngs(p) => write!(f, "Pngs({})", p.display()),
            Sink::Video { out, .. } => write!(f, "Video({})", out.display()),
        }
    }
}

/// What a frame export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Frames written.
    pub frames: usize,
    /// Files written (PNG export).
    pub files: Vec<PathBuf>,
    /// Updates that could not be decoded, and the first reason.
    pub undecoded: usize,
    /// The first decoding problem.
    pub problem: Option<String>,
}

/// Frames per second of `--video` (frames repeat to hold the recording's timing).
pub const VIDEO_FPS: u64 = 5;

/// Starts `ffmpeg` writing `out` from raw RGB frames of `size`.
pub fn start_ffmpeg(out: &Path, size: (u16, u16)) -> anyhow::Result<Sink> {
    let child = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s"])
        .arg(format!("{}x{}", size.0, size.1))
        .args(["-r", &VIDEO_FPS.to_string(), "-i", "-", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(child) => Ok(Sink::Video { child, size, out: out.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--video needs ffmpeg, which is not installed (Debian package ffmpeg)")
        }
        Err(e) => bail!("cannot run ffmpeg: {e}"),
    }
}

fn rgb(img: &DecodedImage, size: (u16, u16)) -> Vec<u8> {
    // A video keeps the first frame's size: later sizes are cropped or padded with black.
    let (w, h) = (usize::from(size.0), usize::from(size.1));
    let (iw, ih) = (usize::from(img.width()), usize::from(img.height()));
    let mut out = vec![0u8; w * h * 3];
    let data = img.data();
    for y in 0..h.min(ih) {
        for x in 0..w.min(iw) {
            let s = (y * iw + x) * 4;
            let d = (y * w + x) * 3;
            if let (Some(src), Some(dst)) = (data.get(s..s + 3), out.get_mut(d..d + 3)) {
                dst.copy_from_slice(src);
            }
        }
    }
    out
}

/// Decodes `records` and writes frames: with `every` seconds, a frame at each multiple of it
/// when the screen changed since the last one written, and always the last. A PNG export
/// writes each frame once; a video repeats frames to keep the recording's pace.
pub fn export(
    header: &serde_json::Value,
    records: impl IntoIterator<Item = impl std::borrow::Borrow<Record>>,
    every: f64,
    sink: &mut Sink,
) -> anyhow::Result<Exported> {
    if every.is_nan() || every <= 0.0 {
        bail!("--every must be above 0 seconds");
    }
    let step = (every * 1_000_000.0) as u64;
    let mut dec = Decoder::new(header);
    let mut done = Exported::default();
    let step = step.max(1);
    let mut next_due = step;
    let mut video_frames = 0u64;
    let mut last_at = 0u64;
    for r in records {
        let r = r.borrow();
        // Frames due before this record show the screen as it was.
        while next_due <= r.at_micros {
            emit(&mut dec, next_due, sink, &mut done, &mut video_frames, false)?;
            next_due = next_due.saturating_add(step);
        }
        last_at = r.at_micros;
        match r.kind {
            SERVER_TO_CLIENT => {
                if let Err(e) = dec.feed(&r.data) {
                    dec.error(format!("{e:#}"));
                }
            }
            CLIENT_INFO => dec.client_info(&r.data),
            _ => {}
        }
    }
    emit(&mut dec, last_at, sink, &mut done, &mut video_frames, true)?;
    if let Sink::Video { child, .. } = sink {
        drop(child.stdin.take());
        let st = child.wait().context("ffmpeg")?;
        if !st.success() {
            bail!("ffmpeg failed ({st})");
        }
    }
    done.undecoded = dec.undecoded;
    done.problem = dec.first_error.clone();
    Ok(done)
}

fn emit(
    dec: &mut Decoder,
    at: u64,
    sink: &mut Sink,
    done: &mut Exported,
    video_frames: &mut u64,
    last: bool,
) -> anyhow::Result<()> {
    let Some(img) = dec.image() else { return Ok(()) };
    match sink {
        Sink::Pngs(dir) => {
            if !dec.changed && !last {
                return Ok(());
            }
            let name =
                if last { "last.png".to_string() } else { format!("frame-{:05}-{:09}ms.png", done.frames, at / 1000) };
            let path = dir.join(name);
            std::fs::write(&path, png_bytes(img)?).with_context(|| format!("cannot write {}", path.display()))?;
            done.files.push(path);
        }
        Sink::Video { child, size, .. } => {
            // Frames up to `at` at VIDEO_FPS: the current screen fills the time since the last.
            let want = (at * VIDEO_FPS / 1_000_000).max(*video_frames + 1);
            let frame = rgb(img, *size);
            let stdin = child.stdin.as_mut().context("ffmpeg input")?;
            while *video_frames < want {
                stdin.write_all(&frame).context("ffmpeg stopped reading (see its message above)")?;
                *video_frames += 1;
            }
        }
    }
    dec.changed = false;
    done.frames += 1;
    Ok(())
}

/// The desktop size the first frame will have (for `--video`).
pub fn first_size(
    header: &serde_json::Value,
    records: impl IntoIterator<Item = impl std::borrow::Borrow<Record>>,
) -> (u16, u16) {
    let mut dec = Decoder::new(header);
    for r in records {
        let r = r.borrow();
        if r.kind == SERVER_TO_CLIENT {
            let _ = dec.feed(&r.data);
            if let Some(i) = dec.image() {
                return (i.width(), i.height());
            }
        }
    }
    dec.default_size
}
