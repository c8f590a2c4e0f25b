//! asciicast v2 encoding: the header line and `[time, code, data]` event lines, with UTF-8
//! sequences split across chunks carried over to the next chunk.

use std::collections::HashMap;

/// Header fields we set.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    /// Terminal width.
    pub width: u32,
    /// Terminal height.
    pub height: u32,
    /// Unix seconds at start.
    pub timestamp: i64,
    /// Exec command or subsystem.
    pub command: Option<String>,
    /// Title (user → target).
    pub title: String,
    /// `TERM` of the client.
    pub term: Option<String>,
}

/// The header line (without newline).
pub fn header_line(h: &HeaderInfo) -> String {
    let mut env = HashMap::new();
    if let Some(t) = &h.term {
        env.insert("TERM".to_string(), t.clone());
    }
    let header = asciicast::Header {
        version: 2,
        width: h.width,
        height: h.height,
        timestamp: chrono::DateTime::from_timestamp(h.timestamp, 0),
        duration: None,
        idle_time_limit: None,
        command: h.command.clone(),
        title: Some(h.title.clone()),
        env: if env.is_empty() { None } else { Some(env) },
    };
    serde_json::to_string(&header).unwrap_or_else(|_| "{\"version\":2,\"width\":80,\"height\":24}".into())
}

/// Turns byte chunks into valid UTF-8 strings, holding back an incomplete trailing sequence.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Text of `chunk` plus what was held back; invalid bytes become U+FFFD.
    pub fn decode(&mut self, chunk: &[u8]) -> String {
        let buf: std::borrow::Cow<[u8]> = if self.pending.is_empty() {
            std::borrow::Cow::Borrowed(chunk)
        } else {
            let mut v = std::mem::take(&mut self.pending);
            v.extend_from_slice(chunk);
            std::borrow::Cow::Owned(v)
        };
        // Hold back at most 3 bytes of an unfinished sequence at the end.
        let mut cut = buf.len();
        for back in 1..=3.min(buf.len()) {
            let b = buf[buf.len() - back];
            if b & 0xC0 == 0x80 {
                continue; // continuation byte: keep looking for the lead byte
            }
            let need = if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else if b >= 0xC0 {
                2
            } else {
                1
            };
            if need > back {
                cut = buf.len() - back;
            }
            break;
        }
        self.pending.extend_from_slice(&buf[cut..]);
        String::from_utf8_lossy(&buf[..cut]).into_owned()
    }

    /// Whatever is still held back, as text.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// One event line (without newline).
pub fn event_line(time: f64, code: &str, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 24);
    s.push('[');
    s.push_str(&format!("{time:.6}"));
    s.push_str(",\"");
    s.push_str(code);
    s.push_str("\",");
    s.push_str(&serde_json::to_string(data).unwrap_or_else(|_| "\"\"".into()));
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks() {
        let text = "Ölpumpe läuft ✓ 🏭";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut c = Utf8Carry::default();
            let mut out = c.decode(&bytes[..split]);
            out.push_str(&c.decode(&bytes[split..]));
            out.push_str(&c.finish());
            assert_eq!(out, text, "split at {split}");
        }
    }

    #[test]
    fn hostile_bytes_stay_json() {
        let mut c = Utf8Carry::default();
        let s = c.decode(b"\x1b]0;evil\x07\xff\xfe\x00\"\\");
        let line = event_line(1.5, "o", &s);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[1], "o");
        assert!(v[2].as_str().unwrap().contains('\u{fffd}'));
        let h = header_line(&HeaderInfo {
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            command: None,
            title: "a → b".into(),
            term: Some("xterm".into()),
        });
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["env"]["TERM"], "xterm");
    }
}
