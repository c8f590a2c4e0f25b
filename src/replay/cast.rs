//! Reading asciicast v2 recordings as the recorder writes them, one event at a time (a
//! recording can be far larger than memory).

use std::io::{BufRead, Read};

use anyhow::{bail, Context};

/// Longest line read (the recorder writes events of at most a few hundred KiB).
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// What the header says.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
    /// Unix seconds at the start.
    pub timestamp: Option<i64>,
    /// `user → target`.
    pub title: Option<String>,
    /// The exec command or subsystem, if any.
    pub command: Option<String>,
}

/// One event: `o` output, `i` input, `r` resize, `m` gateway marker.
#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the start.
    pub t: f64,
    /// Event code.
    pub code: String,
    /// Its data.
    pub data: String,
}

/// Reads events from a recording.
pub struct CastReader<R> {
    r: R,
    line: String,
    lineno: usize,
}

impl<R: BufRead> CastReader<R> {
    /// Reads the header.
    pub fn new(r: R) -> anyhow::Result<(Header, CastReader<R>)> {
        let mut me = CastReader { r, line: String::new(), lineno: 0 };
        if !me.read_line()? {
            bail!("recording is empty");
        }
        let v: serde_json::Value = serde_json::from_str(&me.line).context("recording header is not JSON")?;
        if v["version"].as_i64() != Some(2) {
            bail!("recording is not asciicast v2");
        }
        let dim = |k: &str, d: u16| v[k].as_u64().map(|n| n.clamp(1, 1000) as u16).unwrap_or(d);
        let h = Header {
            width: dim("width", 80),
            height: dim("height", 24),
            timestamp: v["timestamp"].as_i64(),
            title: v["title"].as_str().map(str::to_string),
            command: v["command"].as_str().map(str::to_string),
        };
        Ok((h, me))
    }

    fn read_line(&mut self) -> anyhow::Result<bool> {
        self.line.clear();
        let n = (&mut self.r).take(MAX_LINE).read_line(&mut self.line).context("cannot read recording")?;
        if n == 0 {
            return Ok(false);
        }
        self.lineno += 1;
        if !self.line.ends_with('\n') && n as u64 >= MAX_LINE {
            bail!("recording line {} is longer than {MAX_LINE} bytes", self.lineno);
        }
        Ok(true)
    }

    /// The next event; `None` at the end. A line cut short by a crash ends the recording.
    pub fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            let text = self.line.trim_end();
            if text.is_empty() {
                continue;
            }
            let parsed: Result<(f64, String, String), _> = serde_json::from_str(text);
            match parsed {
                Ok((t, code, data)) => return Ok(Some(Event { t, code, data })),
                // The gateway killed mid-write leaves a partial last line.
                Err(_) if !self.line.ends_with('\n') => return Ok(None),
                Err(e) => bail!("recording line {} is not an event: {e}", self.lineno),
            }
        }
    }
}

/// A side file a recording names in a gateway marker: file name, size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideFile {
    /// Plain file name beside the recording (`<id>.out`, `<id>.in`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The side file a marker event's text describes (`[penstock] binary …: N bytes in NAME,
/// sha256 HEX`), if it is such a marker.
pub fn side_file_marker(text: &str) -> Option<SideFile> {
    let rest = text.strip_prefix("[penstock] ")?;
    let (head, tail) = rest.split_once(" bytes in ")?;
    let size = head.rsplit(' ').next()?.parse().ok()?;
    let (name, sha) = tail.split_once(", sha256 ")?;
    let sha = sha.split_whitespace().next()?.to_string();
    Some(SideFile { name: name.to_string(), size, sha256: sha })
}

/// Every side file the recording names (the last marker for each name counts).
pub fn side_files<R: BufRead>(r: R) -> anyhow::Result<Vec<SideFile>> {
    let (_, mut cast) = CastReader::new(r)?;
    let mut out: Vec<SideFile> = Vec::new();
    while let Some(ev) = cast.next_event()? {
        if ev.code != "m" {
            continue;
        }
        if let Some(s) = side_file_marker(&ev.data) {
            out.retain(|o| o.name != s.name);
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_side_files() {
        let s = side_file_marker("[penstock] binary output: 12 bytes in ab.out, sha256 00ff").unwrap();
        assert_eq!(s, SideFile { name: "ab.out".into(), size: 12, sha256: "00ff".into() });
        assert!(side_file_marker("[penstock] binary output follows, recorded byte-exact in ab.out").is_none());
        let cast = "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"[penstock] binary output: 5 bytes in f.out, sha256 00\"]\n[0.2,\"m\",\"[penstock] binary input: 7 bytes in x.in, sha256 11\"]\n[0.3,\"m\",\"[penstock] binary ou";
        let files = side_files(cast.as_bytes()).unwrap();
        assert_eq!(files, vec![SideFile { name: "x.in".into(), size: 7, sha256: "11".into() }]);
    }
}
