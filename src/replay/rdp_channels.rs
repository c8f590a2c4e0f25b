//! What went through the RDP clipboard and drive channels of a recording, as a channel log:
//! clipboard text copied either way, files copied through the clipboard (names, sizes, bytes
//! sent), redirected drives' names and the files the target opened, read and wrote on them
//! (paths, byte counts). Never file contents.
//!
//! Both directions come from the recording: the target's side from its whole stream (kind
//! `S`: MCS Send Data Indications), the vendor's side from the Send Data Requests the gateway
//! kept on the allowed `cliprdr`/`rdpdr` channels (kind `C`, `rdp::input`). The channel ids come
//! from the target's MCS Connect Response and the header's channel names.
//!
//! Everything here reads hostile bytes: every read is bounds-checked, reassembly of
//! virtual-channel chunks is bounded ([`MAX_MESSAGE`] bytes kept per message; longer messages
//! are counted, not kept), and so are the tables of open files and pending requests.

use std::collections::HashMap;

use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::x224::{X224Data, X224};

use crate::rdp::input::CLIENT_CHANNEL;
use crate::recording::frames::{Record, SERVER_TO_CLIENT};

/// Bytes of one reassembled channel message that are kept (the rest is only counted).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Characters of clipboard text shown per copy.
pub const MAX_TEXT: usize = 64 * 1024;
/// Entries in each table (open files, pending requests, file lists).
const MAX_TABLE: usize = 4096;
/// Largest server PDU held while it is incomplete.
const MAX_PENDING: usize = 128 * 1024;

const CHANNEL_FLAG_FIRST: u32 = 0x1;
const CHANNEL_FLAG_LAST: u32 = 0x2;
const CHANNEL_PACKET_COMPRESSED: u32 = 0x0020_0000;

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The vendor's client sent it.
    ToTarget,
    /// The target sent it.
    ToVendor,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::ToTarget => Dir::ToVendor,
            Dir::ToVendor => Dir::ToTarget,
        }
    }

    /// How the log names the direction.
    pub fn label(self) -> &'static str {
        match self {
            Dir::ToTarget => "vendor->target",
            Dir::ToVendor => "target->vendor",
        }
    }
}

/// One line of the channel log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChannelLine {
    /// Seconds into the recording.
    pub t: f64,
    /// `clipboard` or `drive`.
    pub channel: &'static str,
    /// `vendor->target` or `target->vendor`: which way the data went.
    pub direction: &'static str,
    /// `text`, `files`, `file-contents`, `formats`, `drive`, `open`, `close`, `read`, `write`,
    /// `delete`, `rename`, `note`.
    pub kind: &'static str,
    /// Clipboard text, a file name or path, or a description.
    pub text: String,
    /// A size or byte count, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Little-endian reads that never panic.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Rd<'a> {
        Rd { b, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let lo = u64::from(self.u32()?);
        let hi = u64::from(self.u32()?);
        Some(hi << 32 | lo)
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.at..).unwrap_or_default()
    }
}

/// UTF-16LE up to the first NUL (or the end), lossy, control characters made visible.
fn utf16z(b: &[u8]) -> String {
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// Text as an auditor reads it: line ends kept, other control characters shown as `\u{..}`.
fn visible(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push_str(" [...]");
            break;
        }
        match c {
            '\r' => {}
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Reassembles one direction of one channel.
#[derive(Debug, Default)]
struct Reassembly {
    buf: Vec<u8>,
    /// Total length the first chunk announced.
    total: usize,
    /// Bytes received for the current message (kept or not).
    got: usize,
    active: bool,
}

impl Reassembly {
    /// One chunk (its Channel PDU Header already read): a whole message (possibly cut at
    /// [`MAX_MESSAGE`]) and its announced length, when this was its last chunk.
    fn chunk(&mut self, flags: u32, length: u32, data: &[u8]) -> Option<(Vec<u8>, usize)> {
        if flags & CHANNEL_FLAG_FIRST != 0 {
            self.buf.clear();
            self.active = true;
            self.total = length as usize;
            self.got = 0;
        }
        if !self.active {
            return None;
        }
        self.got = self.got.saturating_add(data.len());
        let room = MAX_MESSAGE.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        if flags & CHANNEL_FLAG_LAST != 0 {
            self.active = false;
            let total = self.total.max(self.got);
            return Some((std::mem::take(&mut self.buf), total));
        }
        None
    }
}

/// Clipboard state (MS-RDPECLIP).
#[derive(Debug, Default)]
struct Clip {
    long_names: [bool; 2],
    /// Format id → name, per side (from that side's last Format List).
    formats: [HashMap<u32, String>; 2],
    /// The format each side was last asked for (by the other).
    requested: [Option<u32>; 2],
    /// Files each side last offered (FileGroupDescriptorW): name, size.
    files: [Vec<(String, u64)>; 2],
    /// File Contents Requests each side sent, by stream id: (file index, range?).
    streams: [HashMap<u32, (u32, bool)>; 2],
}

fn side(d: Dir) -> usize {
    match d {
        Dir::ToTarget => 0,
        Dir::ToVendor => 1,
    }
}

const CF_TEXT: u32 = 1;
const CF_OEMTEXT: u32 = 7;
const CF_UNICODETEXT: u32 = 13;

/// Channel state for one recording.
#[derive(Debug, Default)]
pub struct ChannelLog {
    /// Channel id → name (`cliprdr` or `rdpdr`).
    ids: HashMap<u16, &'static str>,
    reasm: HashMap<(u16, bool), Reassembly>,
    clip: Clip,
    drive: Drive,
    lines: Vec<ChannelLine>,
    t: f64,
}

impl ChannelLog {
    fn line(&mut self, channel: &'static str, dir: Dir, kind: &'static str, text: String, bytes: Option<u64>) {
        self.lines.push(ChannelLine { t: self.t, channel, direction: dir.label(), kind, text, bytes });
    }

    /// One MCS Send Data Request/Indication's user data on channel `id`.
    fn channel_data(&mut self, id: u16, dir: Dir, data: &[u8]) {
        let Some(name) = self.ids.get(&id).copied() else { return };
        let mut r = Rd::new(data);
        let (Some(length), Some(flags)) = (r.u32(), r.u32()) else { return };
        if flags & CHANNEL_PACKET_COMPRESSED != 0 {
            self.line(
                channel_label(name),
                dir,
                "note",
                "compressed channel data (not decoded)".into(),
                Some(u64::from(length)),
            );
            return;
        }
        let whole = {
            let re = self.reasm.entry((id, dir == Dir::ToTarget)).or_default();
            re.chunk(flags, length, r.rest())
        };
        let Some((msg, total)) = whole else { return };
        match name {
            "cliprdr" => self.cliprdr(dir, &msg, total),
            _ => self.rdpdr(dir, &msg),
        }
    }

    fn cliprdr(&mut self, dir: Dir, msg: &[u8], total: usize) {
        let mut r = Rd::new(msg);
        let (Some(kind), Some(flags), Some(len)) = (r.u16(), r.u16(), r.u32()) else { return };
        let body = r.rest();
        let body = &body[..body.len().min(len as usize)];
        let s = side(dir);
        match kind {
            // Clipboard Capabilities: the general capability set's flags.
            7 => {
                let mut c = Rd::new(body);
                let count = c.u16().unwrap_or(0);
                let _ = c.u16();
                for _ in 0..count.min(16) {
                    let (Some(t), Some(l)) = (c.u16(), c.u16()) else { break };
                    let Some(set) = c.take(usize::from(l).saturating_sub(4)) else { break };
                    if t == 1 {
                        let mut g = Rd::new(set);
                        let _version = g.u32();
                        if let Some(f) = g.u32() {
                            self.clip.long_names[s] = f & 0x2 != 0;
                        }
                    }
                }
            }
            // Format List.
            2 => {
                let long = self.clip.long_names[0] && self.clip.long_names[1];
                let list = format_list(body, long);
                let names: Vec<String> = list.iter().map(|(id, n)| format_name(*id, n)).collect();
                self.clip.formats[s] = list.into_iter().take(MAX_TABLE).collect();
                self.line("clipboard", dir, "formats", format!("clipboard offered: {}", names.join(", ")), None);
            }
            // Format Data Request: the other side is asked.
            4 => {
                if let Some(id) = Rd::new(body).u32() {
                    self.clip.requested[side(dir.other())] = Some(id);
                }
            }
            // Format Data Response.
            5 => {
                let Some(id) = self.clip.requested[s].take() else { return };
                let ok = flags & 0x1 != 0;
                if !ok {
                    return;
                }
                let name = self.clip.formats[s].get(&id).cloned().unwrap_or_default();
                // The size the sender declared (the message may have been cut at MAX_MESSAGE).
                let declared = u64::from(len).max(total.saturating_sub(8) as u64);
                match id {
                    CF_UNICODETEXT => {
                        let text = visible(&utf16z(body), MAX_TEXT);
                        self.line("clipboard", dir, "text", text, Some(declared));
                    }
                    CF_TEXT | CF_OEMTEXT => {
                        let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                        let text = visible(&String::from_utf8_lossy(&body[..end]), MAX_TEXT);
                        self.line("clipboard", dir, "text", text, Some(declared));
                    }
                    _ if name.eq_ignore_ascii_case("FileGroupDescriptorW") => {
                        let files = file_group(body);
                        for (n, size) in &files {
                            self.line("clipboard", dir, "files", n.clone(), Some(*size));
                        }
                        self.clip.files[s] = files;
                    }
                    _ if name == "UTF8_STRING" || name.eq_ignore_ascii_case("text/plain;charset=utf-8") => {
                        let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                        let text = visible(&String::from_utf8_lossy(&body[..end]), MAX_TEXT);
                        self.line("clipboard", dir, "text", text, Some(declared));
                    }
                    _ => {
                        let what = format!("clipboard data in format {}", format_name(id, &name));
                        self.line("clipboard", dir, "data", what, Some(declared));
                    }
                }
            }
            // File Contents Request: `dir` asks the other side for a file's size or a range.
            8 => {
                let mut c = Rd::new(body);
                let (Some(stream), Some(index), Some(flags)) = (c.u32(), c.u32(), c.u32()) else { return };
                let table = &mut self.clip.streams[s];
                if table.len() >= MAX_TABLE {
                    table.clear();
                }
                table.insert(stream, (index, flags & 0x2 != 0));
            }
            // File Contents Response: the file's size, or bytes of it.
            9 => {
                let mut c = Rd::new(body);
                let Some(stream) = c.u32() else { return };
                let Some((index, range)) = self.clip.streams[side(dir.other())].remove(&stream) else { return };
                let name = self.clip.files[s]
                    .get(index as usize)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_else(|| format!("file #{index}"));
                if !range {
                    return;
                }
                let n = (len as usize).saturating_sub(4) as u64;
                // Consecutive ranges of the same file are one line.
                if let Some(last) = self.lines.last_mut() {
                    if last.kind == "file-contents" && last.text == name && last.direction == dir.label() {
                        last.bytes = Some(last.bytes.unwrap_or(0).saturating_add(n));
                        return;
                    }
                }
                self.line("clipboard", dir, "file-contents", name, Some(n));
            }
            _ => {}
        }
    }
}

fn channel_label(name: &str) -> &'static str {
    if name == "cliprdr" {
        "clipboard"
    } else {
        "drive"
    }
}

/// A Format List's (id, name) pairs, with long or short (32-byte) names.
fn format_list(body: &[u8], long: bool) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut r = Rd::new(body);
    while out.len() < MAX_TABLE {
        let Some(id) = r.u32() else { break };
        if long {
            let rest = r.rest();
            let mut end = 0;
            while let Some(c) = rest.get(end..end + 2) {
                end += 2;
                if c == [0, 0] {
                    break;
                }
            }
            let name = utf16z(&rest[..end.min(rest.len())]);
            let _ = r.take(end);
            out.push((id, name));
        } else {
            let Some(n) = r.take(32) else { break };
            out.push((id, utf16z(n)));
        }
    }
    out
}

fn format_name(id: u32, name: &str) -> String {
    match (id, name) {
        (CF_TEXT, "") => "text".into(),
        (CF_OEMTEXT, "") => "OEM text".into(),
        (CF_UNICODETEXT, "") => "Unicode text".into(),
        (_, "") => format!("#{id}"),
        (_, n) => visible(n, 64),
    }
}

/// A FileGroupDescriptorW's files: name and size.
fn file_group(body: &[u8]) -> Vec<(String, u64)> {
    const DESC: usize = 592;
    let mut r = Rd::new(body);
    let Some(count) = r.u32() else { return Vec::new() };
    let mut out = Vec::new();
    for _ in 0..(count as usize).min(MAX_TABLE) {
        let Some(d) = r.take(DESC) else { break };
        let mut f = Rd::new(d);
        let _ = f.take(64);
        let (Some(hi), Some(lo)) = (f.u32(), f.u32()) else { break };
        let name = visible(&utf16z(f.take(520).unwrap_or_default()), 260);
        out.push((name, u64::from(hi) << 32 | u64::from(lo)));
    }
    out
}

/// Device redirection state (MS-RDPEFS).
#[derive(Debug, Default)]
struct Drive {
    /// Device id → name.
    devices: HashMap<u32, String>,
    /// Completion id → the request it completes.
    pending: HashMap<u32, Pending>,
    /// (device, file id) → open file.
    open: HashMap<(u32, u32), OpenFile>,
}

/// A Device I/O Request awaiting its completion.
#[derive(Debug, Clone)]
struct Pending {
    device: u32,
    file: u32,
    major: u32,
    /// Information class (queries, set-information).
    class: u32,
    /// The path (create) or the new name (rename).
    path: String,
}

#[derive(Debug, Default, Clone)]
struct OpenFile {
    path: String,
    read: u64,
    written: u64,
    size: Option<u64>,
}

const RDPDR_CORE: u16 = 0x4472;
const PAKID_DEVICELIST_ANNOUNCE: u16 = 0x4441;
const PAKID_DEVICELIST_REMOVE: u16 = 0x444d;
const PAKID_DEVICE_IOREQUEST: u16 = 0x4952;
const PAKID_DEVICE_IOCOMPLETION: u16 = 0x4943;
const IRP_MJ_CREATE: u32 = 0;
const IRP_MJ_CLOSE: u32 = 2;
const IRP_MJ_READ: u32 = 3;
const IRP_MJ_WRITE: u32 = 4;
const IRP_MJ_QUERY_INFORMATION: u32 = 5;
const IRP_MJ_SET_INFORMATION: u32 = 6;
const FILE_STANDARD_INFORMATION: u32 = 5;
const FILE_RENAME_INFORMATION: u32 = 10;
const FILE_DISPOSITION_INFORMATION: u32 = 13;

fn device_kind(t: u32) -> &'static str {
    match t {
        1 => "serial port",
        2 => "parallel port",
        4 => "printer",
        8 => "drive",
        0x20 => "smart card",
        _ => "device",
    }
}

impl ChannelLog {
    fn rdpdr(&mut self, dir: Dir, msg: &[u8]) {
        let mut r = Rd::new(msg);
        let (Some(component), Some(packet)) = (r.u16(), r.u16()) else { return };
        if component != RDPDR_CORE {
            return;
        }
        match (dir, packet) {
            (Dir::ToTarget, PAKID_DEVICELIST_ANNOUNCE) => {
                let count = r.u32().unwrap_or(0);
                for _ in 0..count.min(256) {
                    let (Some(t), Some(id), Some(dos), Some(dlen)) = (r.u32(), r.u32(), r.take(8), r.u32()) else {
                        break;
                    };
                    let data = r.take(dlen as usize).unwrap_or_default();
                    let dos_end = dos.iter().position(|b| *b == 0).unwrap_or(dos.len());
                    let dos_name = visible(&String::from_utf8_lossy(&dos[..dos_end]), 8);
                    // A drive's device data is its full name (UTF-16, NUL-terminated).
                    let full = if t == 8 { visible(&utf16z(data), 260) } else { String::new() };
                    let name =
                        if full.is_empty() || full == dos_name { dos_name } else { format!("{full} ({dos_name})") };
                    if self.drive.devices.len() < MAX_TABLE {
                        self.drive.devices.insert(id, name.clone());
                    }
                    self.line(
                        "drive",
                        dir,
                        "drive",
                        format!("{} {name} redirected (device {id})", device_kind(t)),
                        None,
                    );
                }
            }
            (Dir::ToTarget, PAKID_DEVICELIST_REMOVE) => {
                let count = r.u32().unwrap_or(0);
                for _ in 0..count.min(256) {
                    let Some(id) = r.u32() else { break };
                    let name = self.drive.devices.remove(&id).unwrap_or_else(|| format!("device {id}"));
                    self.line("drive", dir, "drive", format!("{name} removed"), None);
                }
            }
            (Dir::ToVendor, PAKID_DEVICE_IOREQUEST) => self.io_request(&mut r),
            (Dir::ToTarget, PAKID_DEVICE_IOCOMPLETION) => self.io_completion(&mut r),
            _ => {}
        }
    }

    fn device_name(&self, device: u32) -> String {
        let name = self.drive.devices.get(&device).cloned().unwrap_or_else(|| format!("device {device}"));
        // "share (SHARE)" → "share"
        name.split(" (").next().unwrap_or_default().to_string()
    }

    fn io_request(&mut self, r: &mut Rd<'_>) {
        let (Some(device), Some(file), Some(completion), Some(major), Some(_minor)) =
            (r.u32(), r.u32(), r.u32(), r.u32(), r.u32())
        else {
            return;
        };
        let mut p = Pending { device, file, major, class: 0, path: String::new() };
        match major {
            IRP_MJ_CREATE => {
                // DesiredAccess, AllocationSize, FileAttributes, SharedAccess, CreateDisposition,
                // CreateOptions, then PathLength and Path.
                let _ = r.take(4 + 8 + 4 + 4 + 4 + 4);
                let plen = r.u32().unwrap_or(0) as usize;
                let path = visible(&utf16z(r.take(plen).unwrap_or_else(|| r.rest())), 1024);
                p.path = if path.is_empty() { "\\".to_string() } else { path };
            }
            IRP_MJ_CLOSE => {
                self.close(device, file);
                return;
            }
            IRP_MJ_QUERY_INFORMATION => p.class = r.u32().unwrap_or(0),
            IRP_MJ_SET_INFORMATION => {
                // FsInformationClass, Length, Padding (24), then the class's buffer.
                p.class = r.u32().unwrap_or(0);
                let _len = r.u32();
                let _ = r.take(24);
                let b = r.rest();
                match p.class {
                    // FileRenameInformation: ReplaceIfExists, RootDirectory, FileNameLength, name.
                    FILE_RENAME_INFORMATION => {
                        let mut s = Rd::new(b);
                        let _ = s.take(2);
                        let n = s.u32().unwrap_or(0) as usize;
                        p.path = visible(&utf16z(s.take(n).unwrap_or_else(|| s.rest())), 1024);
                    }
                    // FileDispositionInformation: delete on close when its first byte says so.
                    FILE_DISPOSITION_INFORMATION if b.first().copied().unwrap_or(1) != 0 => {}
                    _ => return,
                }
            }
            IRP_MJ_READ | IRP_MJ_WRITE => {}
            _ => return,
        }
        if self.drive.pending.len() >= MAX_TABLE {
            self.drive.pending.clear();
        }
        self.drive.pending.insert(completion, p);
    }

    /// A file closed (or still open at the end): one line for what was read of it, one for
    /// what was written.
    fn close(&mut self, device: u32, file: u32) {
        let Some(f) = self.drive.open.remove(&(device, file)) else { return };
        let name = format!("{}:{}", self.device_name(device), f.path);
        let size = f.size.map(|s| format!(", size {s}")).unwrap_or_default();
        if f.read > 0 {
            // Read by the target from the vendor's drive.
            let text = format!("{name} (read {} bytes{size})", f.read);
            self.line("drive", Dir::ToTarget, "read", text, Some(f.read));
        }
        if f.written > 0 {
            let text = format!("{name} (wrote {} bytes{size})", f.written);
            self.line("drive", Dir::ToVendor, "write", text, Some(f.written));
        }
    }

    fn io_completion(&mut self, r: &mut Rd<'_>) {
        let (Some(device), Some(completion), Some(status)) = (r.u32(), r.u32(), r.u32()) else { return };
        let Some(p) = self.drive.pending.remove(&completion) else { return };
        if p.device != device {
            return;
        }
        let ok = status == 0;
        let dname = self.device_name(device);
        match p.major {
            IRP_MJ_CREATE => {
                let Some(file) = r.u32() else { return };
                let name = format!("{dname}:{}", p.path);
                if ok {
                    if self.drive.open.len() < MAX_TABLE {
                        self.drive.open.insert((device, file), OpenFile { path: p.path, ..OpenFile::default() });
                    }
                    self.line("drive", Dir::ToVendor, "open", name, None);
                } else {
                    self.line("drive", Dir::ToVendor, "open", format!("{name} (failed: 0x{status:08x})"), None);
                }
            }
            IRP_MJ_READ if ok => {
                let n = r.u32().unwrap_or(0);
                if let Some(f) = self.drive.open.get_mut(&(device, p.file)) {
                    f.read = f.read.saturating_add(u64::from(n));
                }
            }
            IRP_MJ_WRITE if ok => {
                let n = r.u32().unwrap_or(0);
                if let Some(f) = self.drive.open.get_mut(&(device, p.file)) {
                    f.written = f.written.saturating_add(u64::from(n));
                }
            }
            IRP_MJ_QUERY_INFORMATION if ok && p.class == FILE_STANDARD_INFORMATION => {
                // Length, then FileStandardInformation: AllocationSize, EndOfFile.
                let _len = r.u32();
                let _alloc = r.u64();
                if let (Some(eof), Some(f)) = (r.u64(), self.drive.open.get_mut(&(device, p.file))) {
                    f.size = Some(eof);
                }
            }
            IRP_MJ_SET_INFORMATION if ok => {
                let old = self.drive.open.get(&(device, p.file)).map(|f| f.path.clone()).unwrap_or_default();
                if p.class == FILE_DISPOSITION_INFORMATION {
                    self.line("drive", Dir::ToVendor, "delete", format!("{dname}:{old}"), None);
                } else if p.class == FILE_RENAME_INFORMATION {
                    self.line("drive", Dir::ToVendor, "rename", format!("{dname}:{old} -> {}", p.path), None);
                    if let Some(f) = self.drive.open.get_mut(&(device, p.file)) {
                        f.path = p.path;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Splits recorded MCS frames into PDUs (bounded) and hands channel data on.
#[derive(Debug, Default)]
struct Splitter {
    pending: Vec<u8>,
    broken: bool,
}

impl Splitter {
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        if self.broken {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut at = 0usize;
        loop {
            let rest = self.pending.get(at..).unwrap_or_default();
            match ironrdp_pdu::find_size(rest) {
                Ok(Some(i)) if i.length > 0 && rest.len() >= i.length => {
                    if i.action == ironrdp_pdu::Action::X224 {
                        each(&rest[..i.length]);
                    }
                    at += i.length;
                }
                Ok(Some(i)) if i.length > 0 => break,
                Ok(None) => break,
                _ => {
                    self.broken = true;
                    break;
                }
            }
        }
        self.pending.drain(..at.min(self.pending.len()));
        if self.broken || self.pending.len() > MAX_PENDING {
            self.broken = true;
            self.pending = Vec::new();
        }
    }
}

/// The channel log of a recording (`header` names the static channels in the target's order).
pub fn channel_log(
    header: &serde_json::Value,
    records: impl IntoIterator<Item = impl std::borrow::Borrow<Record>>,
) -> Vec<ChannelLine> {
    let names: Vec<String> = header["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default().to_ascii_lowercase())
        .collect();
    if !names.iter().any(|n| n == "cliprdr" || n == "rdpdr") {
        return Vec::new();
    }
    let mut log = ChannelLog::default();
    let mut server = Splitter::default();
    let mut client = Splitter::default();
    let mut found_ids = false;
    for r in records {
        let r = r.borrow();
        log.t = r.at_micros as f64 / 1_000_000.0;
        match r.kind {
            SERVER_TO_CLIENT => {
                let mut frames = Vec::new();
                server.feed(&r.data, |pdu| frames.push(pdu.to_vec()));
                for pdu in frames {
                    if !found_ids {
                        if let Ok(X224(frame)) = ironrdp_core::decode::<X224<X224Data<'_>>>(&pdu) {
                            if let Ok(resp) =
                                ironrdp_core::decode::<ironrdp_pdu::mcs::ConnectResponse>(frame.data.as_ref())
                            {
                                let ids = &resp.conference_create_response.gcc_blocks().network.channel_ids;
                                for (n, id) in names.iter().zip(ids.iter()) {
                                    match n.as_str() {
                                        "cliprdr" => log.ids.insert(*id, "cliprdr"),
                                        "rdpdr" => log.ids.insert(*id, "rdpdr"),
                                        _ => None,
                                    };
                                }
                                found_ids = true;
                                continue;
                            }
                        }
                    }
                    if let Ok(X224(McsMessage::SendDataIndication(ind))) =
                        ironrdp_core::decode::<X224<McsMessage<'_>>>(&pdu)
                    {
                        log.channel_data(ind.channel_id, Dir::ToVendor, &ind.user_data);
                    }
                }
            }
            CLIENT_CHANNEL => {
                let mut frames = Vec::new();
                client.feed(&r.data, |pdu| frames.push(pdu.to_vec()));
                for pdu in frames {
                    if let Ok(X224(McsMessage::SendDataRequest(req))) =
                        ironrdp_core::decode::<X224<McsMessage<'_>>>(&pdu)
                    {
                        log.channel_data(req.channel_id, Dir::ToTarget, &req.user_data);
                    }
                }
            }
            _ => {}
        }
    }
    // Files still open at the end.
    let open: Vec<(u32, u32)> = log.drive.open.keys().copied().collect();
    for (d, f) in open {
        log.close(d, f);
    }
    log.lines
}

/// The lines search indexes for one channel-log line: each line of clipboard text, a file's
/// name, a drive path (with what happened), each prefixed with the channel and direction.
pub fn search_lines(c: &ChannelLine) -> Vec<String> {
    let prefix = format!("{} {} {}:", c.channel, c.kind, c.direction);
    match c.kind {
        "text" => c.text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{prefix} {l}")).collect(),
        "formats" | "note" => Vec::new(),
        _ => vec![format!("{prefix} {}", c.text)],
    }
}

/// A line for a terminal: offset, channel, direction, kind, text (and the byte count).
pub fn display(c: &ChannelLine) -> String {
    let bytes = match (c.kind, c.bytes) {
        ("files" | "file-contents", Some(n)) => format!(" [{n} bytes]"),
        ("text", Some(n)) => format!(" [{n} bytes]"),
        _ => String::new(),
    };
    let text: String = c.text.chars().map(|ch| if ch == '\n' { '\u{23ce}' } else { ch }).collect();
    format!("{:<9} {:<14} {:<13} {text}{bytes}", c.channel, c.direction, c.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIP: u16 = 1005;
    const DR: u16 = 1004;

    fn log() -> ChannelLog {
        let mut l = ChannelLog::default();
        l.ids.insert(CLIP, "cliprdr");
        l.ids.insert(DR, "rdpdr");
        l
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().chain([0]).flat_map(|u| u.to_le_bytes()).collect()
    }

    /// A virtual channel message in chunks of `chunk` bytes (Channel PDU Header each).
    fn chunks(msg: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let parts: Vec<&[u8]> = msg.chunks(chunk.max(1)).collect();
        let n = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut flags = 0u32;
                if i == 0 {
                    flags |= CHANNEL_FLAG_FIRST;
                }
                if i + 1 == n {
                    flags |= CHANNEL_FLAG_LAST;
                }
                let mut v = (msg.len() as u32).to_le_bytes().to_vec();
                v.extend_from_slice(&flags.to_le_bytes());
                v.extend_from_slice(p);
                v
            })
            .collect()
    }

    fn clip_pdu(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn send(l: &mut ChannelLog, id: u16, dir: Dir, msg: &[u8], chunk: usize) {
        for c in chunks(msg, chunk) {
            l.channel_data(id, dir, &c);
        }
    }

    /// Short format names (no capabilities exchanged): 32-byte names.
    fn short_list(entries: &[(u32, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (id, name) in entries {
            v.extend_from_slice(&id.to_le_bytes());
            let mut n = utf16(name);
            n.resize(32, 0);
            v.extend_from_slice(&n);
        }
        v
    }

    #[test]
    fn clipboard_text_both_ways_and_files() {
        let mut l = log();
        // The vendor offers text; the target asks for it; the vendor answers (in 3 chunks).
        send(&mut l, CLIP, Dir::ToTarget, &clip_pdu(2, 0, &short_list(&[(13, "")])), 1600);
        send(&mut l, CLIP, Dir::ToVendor, &clip_pdu(4, 0, &13u32.to_le_bytes()), 1600);
        send(&mut l, CLIP, Dir::ToTarget, &clip_pdu(5, 1, &utf16("pump 3 setpoint\r\n= 42")), 16);
        // The target offers a file list; the vendor asks; the target answers; then contents.
        let mut fg = 2u32.to_le_bytes().to_vec();
        for (name, size) in [("recipe.csv", 1234u64), ("..\\evil.exe", 5_000_000_000)] {
            let mut d = vec![0u8; 592];
            d[64..68].copy_from_slice(&((size >> 32) as u32).to_le_bytes());
            d[68..72].copy_from_slice(&(size as u32).to_le_bytes());
            let n = utf16(name);
            d[72..72 + n.len()].copy_from_slice(&n);
            fg.extend_from_slice(&d);
        }
        // Both sides announce long format names; the file list format is named that way.
        let caps: Vec<u8> = [1u16, 0, 1, 12].iter().flat_map(|w| w.to_le_bytes()).chain(words(&[2, 0x2])).collect();
        send(&mut l, CLIP, Dir::ToVendor, &clip_pdu(7, 0, &caps), 1600);
        send(&mut l, CLIP, Dir::ToTarget, &clip_pdu(7, 0, &caps), 1600);
        let mut long = 0xc0a1u32.to_le_bytes().to_vec();
        long.extend(utf16("FileGroupDescriptorW"));
        long.extend(13u32.to_le_bytes());
        long.extend(utf16(""));
        send(&mut l, CLIP, Dir::ToVendor, &clip_pdu(2, 0, &long), 1600);
        send(&mut l, CLIP, Dir::ToTarget, &clip_pdu(4, 0, &0xc0a1u32.to_le_bytes()), 1600);
        send(&mut l, CLIP, Dir::ToVendor, &clip_pdu(5, 1, &fg), 300);
        for _ in 0..2 {
            let mut req = Vec::new();
            for v in [7u32, 0, 2, 0, 0, 600] {
                req.extend_from_slice(&v.to_le_bytes());
            }
            send(&mut l, CLIP, Dir::ToTarget, &clip_pdu(8, 0, &req), 1600);
            let mut resp = 7u32.to_le_bytes().to_vec();
            resp.extend_from_slice(&[0x41; 600]);
            send(&mut l, CLIP, Dir::ToVendor, &clip_pdu(9, 1, &resp), 1600);
        }
        let lines = l.lines;
        let text: Vec<_> = lines.iter().filter(|l| l.kind == "text").collect();
        assert_eq!(text.len(), 1, "{lines:?}");
        assert_eq!(text[0].text, "pump 3 setpoint\n= 42");
        assert_eq!(text[0].direction, "vendor->target");
        let files: Vec<_> = lines.iter().filter(|l| l.kind == "files").collect();
        assert_eq!(files.len(), 2, "{lines:?}");
        assert_eq!((files[0].text.as_str(), files[0].bytes), ("recipe.csv", Some(1234)));
        assert_eq!(files[1].bytes, Some(5_000_000_000));
        assert_eq!(files[0].direction, "target->vendor");
        let contents: Vec<_> = lines.iter().filter(|l| l.kind == "file-contents").collect();
        assert_eq!(contents.len(), 1, "{lines:?}");
        assert_eq!((contents[0].text.as_str(), contents[0].bytes), ("recipe.csv", Some(1200)));
        assert!(search_lines(text[0]).iter().any(|s| s.ends_with("= 42")));
    }

    fn dr(packet: u16, body: &[u8]) -> Vec<u8> {
        let mut v = RDPDR_CORE.to_le_bytes().to_vec();
        v.extend_from_slice(&packet.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn drive_announce_open_read_write_close() {
        let mut l = log();
        let mut ann = words(&[1, 8, 3]);
        ann.extend_from_slice(b"PLCSHARE");
        let full = utf16("plcshare");
        ann.extend_from_slice(&(full.len() as u32).to_le_bytes());
        ann.extend_from_slice(&full);
        send(&mut l, DR, Dir::ToTarget, &dr(PAKID_DEVICELIST_ANNOUNCE, &ann), 1600);
        // Create \recipe.txt (completion 9) → file id 5.
        let path = utf16("\\recipe.txt");
        let mut create = words(&[3, 0, 9, IRP_MJ_CREATE, 0, 0]);
        create.extend_from_slice(&[0u8; 8 + 4 + 4 + 4 + 4]);
        create.extend_from_slice(&(path.len() as u32).to_le_bytes());
        create.extend_from_slice(&path);
        send(&mut l, DR, Dir::ToVendor, &dr(PAKID_DEVICE_IOREQUEST, &create), 1600);
        let mut done = words(&[3, 9, 0, 5]);
        done.push(1);
        send(&mut l, DR, Dir::ToTarget, &dr(PAKID_DEVICE_IOCOMPLETION, &done), 1600);
        // Two reads of 1000 and 400 bytes, one write of 10.
        for (c, n) in [(10u32, 1000u32), (11, 400)] {
            let req = words(&[3, 5, c, IRP_MJ_READ, 0, n, 0, 0]);
            send(&mut l, DR, Dir::ToVendor, &dr(PAKID_DEVICE_IOREQUEST, &req), 1600);
            let mut resp = words(&[3, c, 0, n]);
            resp.extend(std::iter::repeat_n(0x55, n as usize));
            send(&mut l, DR, Dir::ToTarget, &dr(PAKID_DEVICE_IOCOMPLETION, &resp), 512);
        }
        let mut w = words(&[3, 5, 12, IRP_MJ_WRITE, 0, 10, 0, 0]);
        w.extend_from_slice(&[0; 20]);
        w.extend_from_slice(&[1; 10]);
        send(&mut l, DR, Dir::ToVendor, &dr(PAKID_DEVICE_IOREQUEST, &w), 1600);
        send(&mut l, DR, Dir::ToTarget, &dr(PAKID_DEVICE_IOCOMPLETION, &words(&[3, 12, 0, 10, 0])), 1600);
        send(&mut l, DR, Dir::ToVendor, &dr(PAKID_DEVICE_IOREQUEST, &words(&[3, 5, 13, IRP_MJ_CLOSE, 0])), 1600);
        let lines = l.lines;
        assert!(lines.iter().any(|l| l.kind == "drive" && l.text.contains("plcshare")), "{lines:?}");
        assert!(lines.iter().any(|l| l.kind == "open" && l.text == "plcshare:\\recipe.txt"), "{lines:?}");
        let read = lines.iter().find(|l| l.kind == "read").expect("read line");
        assert_eq!(read.bytes, Some(1400));
        assert!(read.text.contains("recipe.txt"));
        let write = lines.iter().find(|l| l.kind == "write").expect("write line");
        assert_eq!(write.bytes, Some(10));
    }

    /// Hostile or truncated channel data never panics, and what is kept stays bounded.
    #[test]
    fn hostile_channel_data_is_harmless() {
        let mut l = log();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mostly well-formed chunk headers with hostile bodies.
            if i % 2 == 0 && b.len() >= 8 {
                b[4..8].copy_from_slice(&(CHANNEL_FLAG_FIRST | CHANNEL_FLAG_LAST).to_le_bytes());
                if b.len() >= 10 {
                    let kinds: [u16; 6] = [2, 4, 5, 7, 8, 9];
                    let k = kinds[(next() % 6) as usize];
                    let dr_kinds = [PAKID_DEVICELIST_ANNOUNCE, PAKID_DEVICE_IOREQUEST, PAKID_DEVICE_IOCOMPLETION];
                    if i % 4 == 0 {
                        b[8..10].copy_from_slice(&k.to_le_bytes());
                    } else if b.len() >= 12 {
                        b[8..10].copy_from_slice(&RDPDR_CORE.to_le_bytes());
                        b[10..12].copy_from_slice(&dr_kinds[(next() % 3) as usize].to_le_bytes());
                    }
                }
            }
            let id = if i % 3 == 0 { CLIP } else { DR };
            let dir = if i % 5 < 2 { Dir::ToTarget } else { Dir::ToVendor };
            l.channel_data(id, dir, &b);
        }
        // A message announcing 4 GiB, sent in many chunks: only MAX_MESSAGE bytes are kept.
        let mut first = u32::MAX.to_le_bytes().to_vec();
        first.extend_from_slice(&CHANNEL_FLAG_FIRST.to_le_bytes());
        first.extend_from_slice(&[0; 1600]);
        l.channel_data(CLIP, Dir::ToTarget, &first);
        let mut mid = u32::MAX.to_le_bytes().to_vec();
        mid.extend_from_slice(&0u32.to_le_bytes());
        mid.extend_from_slice(&[0; 1600]);
        for _ in 0..1000 {
            l.channel_data(CLIP, Dir::ToTarget, &mid);
        }
        let kept = l.reasm.values().map(|r| r.buf.len()).max().unwrap_or(0);
        assert!(kept <= MAX_MESSAGE, "{kept}");
        assert!(l.drive.pending.len() <= MAX_TABLE && l.drive.open.len() <= MAX_TABLE);
        // Whole garbage recordings too.
        let header = serde_json::json!({ "channels": ["cliprdr", "rdpdr"] });
        let recs: Vec<Record> = (0..200)
            .map(|i| Record {
                kind: if i % 2 == 0 { SERVER_TO_CLIENT } else { CLIENT_CHANNEL },
                at_micros: i,
                data: (0..(next() % 300)).map(|_| next() as u8).collect(),
            })
            .collect();
        let _ = channel_log(&header, &recs);
    }
}
