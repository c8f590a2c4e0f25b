//! File transfer tracking for sftp (also used by modern `scp`) and legacy `scp -t/-f`: path,
//! size, direction and SHA-256 of each file, read off the relayed byte streams. Runs in the
//! recorder's writer task, off the relay path. Memory is bounded: a stream that does not parse,
//! or has too many open files, stops being tracked rather than growing.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// `upload` (vendor → target) or `download`.
    pub direction: &'static str,
    /// Path on the target.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, or a note when it could not be computed.
    pub sha256: String,
}

const MAX_PACKET: usize = 1 << 20;
const MAX_TRACKED: usize = 256;

/// Splits a byte stream into SFTP packets (`u32 length` + body).
#[derive(Debug, Default)]
struct Framer {
    buf: Vec<u8>,
    broken: bool,
}

impl Framer {
    fn push(&mut self, chunk: &[u8], mut on_packet: impl FnMut(&[u8])) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while self.buf.len() - start >= 4 {
            let len =
                u32::from_be_bytes([self.buf[start], self.buf[start + 1], self.buf[start + 2], self.buf[start + 3]])
                    as usize;
            if len == 0 || len > MAX_PACKET {
                self.broken = true;
                self.buf = Vec::new();
                return;
            }
            if self.buf.len() - start < 4 + len {
                break;
            }
            on_packet(&self.buf[start + 4..start + 4 + len]);
            start += 4 + len;
        }
        self.buf.drain(..start);
    }
}

/// Reads SSH wire types from a packet body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Some(hi << 32 | lo)
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(s)
    }
}

#[derive(Debug)]
struct Stream {
    hasher: Sha256,
    next: u64,
    size: u64,
    in_order: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Self { hasher: Sha256::new(), next: 0, size: 0, in_order: true }
    }
}

impl Stream {
    fn feed(&mut self, offset: u64, data: &[u8]) {
        if offset != self.next {
            self.in_order = false;
        }
        self.hasher.update(data);
        self.next = offset + data.len() as u64;
        self.size = self.size.max(self.next);
    }
    fn finish(self) -> (u64, String) {
        let digest = hex::encode(self.hasher.finalize());
        (self.size, if self.in_order { digest } else { "unavailable (non-sequential access)".into() })
    }
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    write: Option<Stream>,
    read: Option<Stream>,
    for_write: bool,
}

/// Tracks one sftp channel.
#[derive(Debug, Default)]
pub struct SftpTracker {
    up: Framer,
    down: Framer,
    opening: HashMap<u32, (String, bool)>,
    files: HashMap<Vec<u8>, OpenFile>,
    reads: HashMap<u32, (Vec<u8>, u64)>,
    done: Vec<Transfer>,
}

const SSH_FXF_WRITE: u32 = 0x02;

impl SftpTracker {
    /// Bytes from the vendor to the target.
    pub fn client_bytes(&mut self, chunk: &[u8]) {
        let mut up = std::mem::take(&mut self.up);
        up.push(chunk, |p| self.client_packet(p));
        self.up = up;
    }

    /// Bytes from the target to the vendor.
    pub fn server_bytes(&mut self, chunk: &[u8]) {
        let mut down = std::mem::take(&mut self.down);
        down.push(chunk, |p| self.server_packet(p));
        self.down = down;
    }

    fn client_packet(&mut self, p: &[u8]) {
        let mut r = Reader(p);
        let (Some(kind), Some(id)) = (r.u8(), r.u32()) else { return };
        match kind {
            3 => {
                // OPEN filename pflags attrs
                if let (Some(name), Some(pflags)) = (r.string(), r.u32()) {
                    if self.opening.len() < MAX_TRACKED {
                        self.opening
                            .insert(id, (String::from_utf8_lossy(name).into_owned(), pflags & SSH_FXF_WRITE != 0));
                    }
                }
            }
            5 => {
                // READ handle offset len
                if let (Some(h), Some(off)) = (r.string(), r.u64()) {
                    if self.files.contains_key(h) && self.reads.len() < 4 * MAX_TRACKED {
                        self.reads.insert(id, (h.to_vec(), off));
                    }
                }
            }
            6 => {
                // WRITE handle offset data
                if let (Some(h), Some(off), Some(data)) = (r.string(), r.u64(), r.string()) {
                    if let Some(f) = self.files.get_mut(h) {
                        f.write.get_or_insert_with(Stream::default).feed(off, data);
                    }
                }
            }
            4 => {
                // CLOSE handle
                if let Some(h) = r.string() {
                    if let Some(f) = self.files.remove(h) {
                        self.finish(f);
                    }
                }
            }
            _ => {}
        }
    }

    fn server_packet(&mut self, p: &[u8]) {
        let mut r = Reader(p);
        let (Some(kind), Some(id)) = (r.u8(), r.u32()) else { return };
        match kind {
            102 => {
                // HANDLE
                if let (Some((path, for_write)), Some(h)) = (self.opening.remove(&id), r.string()) {
                    if self.files.len() < MAX_TRACKED {
                        self.files.insert(h.to_vec(), OpenFile { path, write: None, read: None, for_write });
                    }
                }
            }
            103 => {
                // DATA
                if let (Some((h, off)), Some(data)) = (self.reads.remove(&id), r.string()) {
                    if let Some(f) = self.files.get_mut(&h) {
                        f.read.get_or_insert_with(Stream::default).feed(off, data);
                    }
                }
            }
            101 => {
                // STATUS (failed open or EOF on read)
                self.opening.remove(&id);
                self.reads.remove(&id);
            }
            _ => {}
        }
    }

    fn finish(&mut self, f: OpenFile) {
        if let Some(w) = f.write {
            let (size, sha256) = w.finish();
            self.done.push(Transfer { direction: "upload", path: f.path.clone(), size, sha256 });
        } else if f.for_write {
            let (size, sha256) = Stream::default().finish();
            self.done.push(Transfer { direction: "upload", path: f.path.clone(), size, sha256 });
        }
        if let Some(rd) = f.read {
            let (size, sha256) = rd.finish();
            self.done.push(Transfer { direction: "download", path: f.path, size, sha256 });
        }
    }

    /// Transfers completed since the last call.
    pub fn take_done(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.done)
    }
}

/// Tracks a legacy `scp -t DIR` (upload) or `scp -f PATH` (download) exec channel by reading the
/// sender's side of the scp protocol.
#[derive(Debug)]
pub struct ScpTracker {
    direction: &'static str,
    base: String,
    line: Vec<u8>,
    state: ScpState,
    done: Vec<Transfer>,
}

#[derive(Debug)]
enum ScpState {
    Header,
    Data { name: String, remaining: u64, size: u64, hasher: Sha256 },
    Broken,
}

impl ScpTracker {
    /// A tracker for an exec command, if it is an scp sink or source.
    pub fn for_command(cmd: &str) -> Option<ScpTracker> {
        let mut words = cmd.split_whitespace();
        if words.next()? != "scp" {
            return None;
        }
        let mut direction = None;
        let mut path = String::new();
        let mut dir_target = false;
        for w in words {
            match w {
                "-t" => direction = Some("upload"),
                "-f" => direction = Some("download"),
                "-d" => dir_target = true,
                w if w.starts_with('-') => {}
                w => path = w.to_string(),
            }
        }
        // `scp -t FILE` names the file itself; with -d (or a trailing /) it is a folder.
        if direction == Some("upload") && dir_target && !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        Some(ScpTracker {
            direction: direction?,
            base: path,
            line: Vec::new(),
            state: ScpState::Header,
            done: Vec::new(),
        })
    }

    /// Whether the sender is the vendor (upload) — else the target.
    pub fn sender_is_client(&self) -> bool {
        self.direction == "upload"
    }

    /// Bytes from the sending side.
    pub fn sender_bytes(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match &mut self.state {
                ScpState::Broken => return,
                ScpState::Header => {
                    let Some(nl) = chunk.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(chunk);
                        if self.line.len() > 4096 {
                            self.state = ScpState::Broken;
                        }
                        return;
                    };
                    // A lone NUL ends a file's data; skip it.
                    let mut head = &chunk[..nl];
                    while let Some((&0, rest)) = head.split_first() {
                        if self.line.is_empty() {
                            head = rest;
                        } else {
                            break;
                        }
                    }
                    self.line.extend_from_slice(head);
                    chunk = &chunk[nl + 1..];
                    let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                    self.header(&line);
                }
                ScpState::Data { remaining, hasher, .. } => {
                    let n = (*remaining).min(chunk.len() as u64) as usize;
                    hasher.update(&chunk[..n]);
                    *remaining -= n as u64;
                    chunk = &chunk[n..];
                    if *remaining == 0 {
                        if let ScpState::Data { name, size, hasher, .. } =
                            std::mem::replace(&mut self.state, ScpState::Header)
                        {
                            let path = self.path_of(name);
                            self.done.push(Transfer {
                                direction: self.direction,
                                path,
                                size,
                                sha256: hex::encode(hasher.finalize()),
                            });
                        }
                        // The sender follows the data with a NUL byte.
                        if chunk.first() == Some(&0) {
                            chunk = &chunk[1..];
                        }
                    }
                }
            }
        }
    }

    fn path_of(&self, name: String) -> String {
        if self.base.is_empty() {
            name
        } else if self.direction == "upload" && self.base.ends_with('/') {
            format!("{}{}", self.base, name)
        } else {
            self.base.clone()
        }
    }

    fn header(&mut self, line: &str) {
        let line = line.trim_start_matches('\0');
        match line.as_bytes().first() {
            Some(b'C') => {
                let mut parts = line.splitn(3, ' ');
                let (_, size, name) = (parts.next(), parts.next(), parts.next());
                match (size.and_then(|s| s.parse::<u64>().ok()), name) {
                    (Some(size), Some(name)) => {
                        let name = name.to_string();
                        if size == 0 {
                            let path = if self.direction == "upload" {
                                format!("{}/{}", self.base.trim_end_matches('/'), name)
                            } else {
                                self.base.clone()
                            };
                            self.done.push(Transfer {
                                direction: self.direction,
                                path,
                                size: 0,
                                sha256: hex::encode(Sha256::digest([])),
                            });
                        } else {
                            self.state = ScpState::Data { name, remaining: size, size, hasher: Sha256::new() };
                        }
                    }
                    _ => self.state = ScpState::Broken,
                }
            }
            Some(b'T') | Some(b'D') | Some(b'E') | None => {}
            _ => self.state = ScpState::Broken,
        }
    }

    /// Transfers completed since the last call.
    pub fn take_done(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&((body.len() + 5) as u32).to_be_bytes());
        p.push(kind);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(body);
        p
    }
    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn sftp_upload_and_download_split_anywhere() {
        let content = b"firmware-image-bytes".repeat(100);
        let mut client = Vec::new();
        let mut server = Vec::new();
        // upload
        client.extend(pkt(
            3,
            1,
            &[s(b"/tmp/fw.bin"), 0x1au32.to_be_bytes().to_vec(), 0u32.to_be_bytes().to_vec()].concat(),
        ));
        server.extend(pkt(102, 1, &s(b"H1")));
        client.extend(pkt(6, 2, &[s(b"H1"), 0u64.to_be_bytes().to_vec(), s(&content[..1000])].concat()));
        client.extend(pkt(6, 3, &[s(b"H1"), 1000u64.to_be_bytes().to_vec(), s(&content[1000..])].concat()));
        client.extend(pkt(4, 4, &s(b"H1")));
        let mut t = SftpTracker::default();
        // Feed in awkward pieces, interleaving directions in protocol order.
        let (c1, c2) = client.split_at(40);
        t.client_bytes(c1);
        t.server_bytes(&server);
        for piece in c2.chunks(7) {
            t.client_bytes(piece);
        }
        let done = t.take_done();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].direction, "upload");
        assert_eq!(done[0].path, "/tmp/fw.bin");
        assert_eq!(done[0].size, content.len() as u64);
        assert_eq!(done[0].sha256, hex::encode(Sha256::digest(&content)));

        // download
        let mut t = SftpTracker::default();
        t.client_bytes(&pkt(
            3,
            1,
            &[s(b"/etc/cfg"), 1u32.to_be_bytes().to_vec(), 0u32.to_be_bytes().to_vec()].concat(),
        ));
        t.server_bytes(&pkt(102, 1, &s(b"H2")));
        t.client_bytes(&pkt(5, 2, &[s(b"H2"), 0u64.to_be_bytes().to_vec(), 4096u32.to_be_bytes().to_vec()].concat()));
        t.server_bytes(&pkt(103, 2, &s(b"hello")));
        t.client_bytes(&pkt(5, 3, &[s(b"H2"), 5u64.to_be_bytes().to_vec(), 4096u32.to_be_bytes().to_vec()].concat()));
        t.server_bytes(&pkt(101, 3, &[1u32.to_be_bytes().to_vec()].concat()));
        t.client_bytes(&pkt(4, 4, &s(b"H2")));
        let done = t.take_done();
        assert_eq!(
            done,
            vec![Transfer {
                direction: "download",
                path: "/etc/cfg".into(),
                size: 5,
                sha256: hex::encode(Sha256::digest(b"hello"))
            }]
        );
    }

    #[test]
    fn sftp_garbage_is_bounded() {
        let mut t = SftpTracker::default();
        t.client_bytes(&[0xff; 64]);
        t.client_bytes(&[0u8; 1 << 16]);
        assert!(t.up.buf.is_empty());
        assert!(t.take_done().is_empty());
    }

    #[test]
    fn legacy_scp_upload() {
        let mut t = ScpTracker::for_command("scp -d -t /tmp").unwrap();
        assert!(t.sender_is_client());
        let mut stream = b"C0644 11 fw.bin\n".to_vec();
        stream.extend_from_slice(b"hello world\0");
        stream.extend_from_slice(b"C0600 0 empty\n");
        for piece in stream.chunks(3) {
            t.sender_bytes(piece);
        }
        let done = t.take_done();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].path, "/tmp/fw.bin");
        assert_eq!(done[0].size, 11);
        assert_eq!(done[0].sha256, hex::encode(Sha256::digest(b"hello world")));
        assert!(ScpTracker::for_command("ls -la").is_none());
        let mut t = ScpTracker::for_command("scp -t /tmp/fw-copy.bin").unwrap();
        t.sender_bytes(b"C0644 2 fw.bin\nhi\0");
        assert_eq!(t.take_done()[0].path, "/tmp/fw-copy.bin");
    }
}
