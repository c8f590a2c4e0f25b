//! The small part of POSIX ustar that evidence bundles need: regular files and folders, written
//! so GNU tar and bsdtar extract them, and read back strictly (anything else is reported).

use std::io::{Read, Write};

use anyhow::{bail, Context};

const BLOCK: usize = 512;

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    let s = s.as_bytes();
    let s = &s[s.len().saturating_sub(digits)..];
    field[..s.len()].copy_from_slice(s);
    field[digits] = 0;
}

fn header(path: &str, size: u64, mtime: i64, dir: bool) -> anyhow::Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    let (prefix, name) = if path.len() <= 100 {
        ("", path)
    } else {
        let cut = path[..path.len().min(156)].rfind('/').context("path too long for a tar entry")?;
        (&path[..cut], &path[cut + 1..])
    };
    if name.len() > 100 || prefix.len() > 155 {
        bail!("path {path} is too long for a tar entry");
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], if dir { 0o755 } else { 0o644 });
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime.max(0) as u64);
    h[156] = if dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..273].copy_from_slice(b"penstock");
    h[297..305].copy_from_slice(b"penstock");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Writes a tar stream.
pub struct Writer<W: Write> {
    out: W,
    mtime: i64,
}

impl<W: Write> Writer<W> {
    /// Entries get modification time `mtime`.
    pub fn new(out: W, mtime: i64) -> Self {
        Writer { out, mtime }
    }

    /// A folder entry.
    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let p = format!("{}/", path.trim_end_matches('/'));
        self.out.write_all(&header(&p, 0, self.mtime, true)?)?;
        Ok(())
    }

    /// A file of `size` bytes read from `data` (which must give exactly that many).
    pub fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> anyhow::Result<()> {
        self.out.write_all(&header(path, size, self.mtime, false)?)?;
        let n = std::io::copy(&mut data.take(size), &mut self.out)?;
        if n != size {
            bail!("{path} changed while it was being written ({n} of {size} bytes)");
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// A file from memory.
    pub fn bytes(&mut self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        self.file(path, data.len() as u64, &mut &data[..])
    }

    /// Ends the archive; returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One entry as read.
#[allow(missing_debug_implementations)]
pub enum Entry<'a> {
    /// A folder.
    Dir(String),
    /// A file and a reader over exactly its content.
    File(String, u64, &'a mut dyn Read),
    /// Anything else (links, devices, GNU extensions), by path and type flag.
    Other(String, u8),
}

fn parse_octal(f: &[u8]) -> anyhow::Result<u64> {
    let s = std::str::from_utf8(f).context("bad number in tar header")?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).with_context(|| format!("bad number {s:?} in tar header"))
}

fn cstr(f: &[u8]) -> anyhow::Result<String> {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    Ok(std::str::from_utf8(&f[..end]).context("tar entry name is not UTF-8")?.to_string())
}

/// Reads every entry of a tar stream, calling `f` for each.
pub fn read(mut r: impl Read, mut f: impl FnMut(Entry<'_>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    loop {
        let mut h = [0u8; BLOCK];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => bail!("the archive ends in the middle"),
            Err(e) => return Err(e).context("cannot read the archive"),
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let stored = parse_octal(&h[148..156])?;
        let mut sum: u64 = h.iter().map(|&b| b as u64).sum();
        sum = sum - h[148..156].iter().map(|&b| b as u64).sum::<u64>() + 8 * b' ' as u64;
        if sum != stored {
            bail!("tar header checksum mismatch: the archive is damaged");
        }
        let name = cstr(&h[..100])?;
        let prefix = if &h[257..262] == b"ustar" { cstr(&h[345..500])? } else { String::new() };
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let size = parse_octal(&h[124..136])?;
        let kind = h[156];
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        match kind {
            b'0' | 0 => {
                let mut take = (&mut r).take(size);
                f(Entry::File(path.clone(), size, &mut take))?;
                // Whatever the callback left unread.
                std::io::copy(&mut take, &mut std::io::sink())?;
                if take.limit() != 0 {
                    bail!("the archive ends in the middle of {path}");
                }
            }
            b'5' => f(Entry::Dir(path))?,
            other => {
                f(Entry::Other(path, other))?;
                let n = std::io::copy(&mut (&mut r).take(size), &mut std::io::sink())?;
                if n != size {
                    bail!("the archive ends in the middle");
                }
            }
        }
        std::io::copy(&mut (&mut r).take(pad), &mut std::io::sink())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::new(Vec::new(), 1_700_000_000);
        w.dir("b").unwrap();
        w.bytes("b/a.txt", b"hello").unwrap();
        let long = format!("b/{}/{}.cast", "d".repeat(80), "e".repeat(60));
        w.bytes(&long, &[7u8; 1000]).unwrap();
        let data = w.finish().unwrap();
        let mut seen = Vec::new();
        read(&data[..], |e| {
            match e {
                Entry::Dir(p) => seen.push((p, 0, Vec::new())),
                Entry::File(p, n, r) => {
                    let mut v = Vec::new();
                    r.read_to_end(&mut v)?;
                    seen.push((p, n, v));
                }
                Entry::Other(p, _) => seen.push((p, 99, Vec::new())),
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[0].0, "b/");
        assert_eq!(seen[1], ("b/a.txt".to_string(), 5, b"hello".to_vec()));
        assert_eq!(seen[2].0, long);
        assert_eq!(seen[2].2.len(), 1000);
    }
}
