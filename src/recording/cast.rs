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

/// Length of `buf` without an unfinished UTF-8 sequence at its end (at most 3 bytes held back).
fn complete_len(buf: &[u8]) -> usize {
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
            return buf.len() - back;
        }
        break;
    }
    buf.len()
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
        let cut = complete_len(&buf);
        self.pending.extend_from_slice(&buf[cut..]);
        String::from_utf8_lossy(&buf[..cut]).into_owned()
    }

    /// Like [`Utf8Carry::decode`], handing the text to `f`; when nothing is held back and the
    /// chunk is valid UTF-8 (the usual case) the text is borrowed from `chunk`, not copied.
    pub fn decode_with<R>(&mut self, chunk: &[u8], f: impl FnOnce(&str) -> R) -> R {
        if self.pending.is_empty() {
            let cut = complete_len(chunk);
            if let Ok(text) = std::str::from_utf8(&chunk[..cut]) {
                self.pending.extend_from_slice(&chunk[cut..]);
                return f(text);
            }
        }
        let text = self.decode(chunk);
        f(&text)
    }

    /// The bytes held back (an unfinished UTF-8 sequence).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Takes the bytes held back.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Whatever is still held back, as text.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// One event line (without newline).
pub fn event_line(time: f64, code: &str, data: &str) -> String {
    let mut v = Vec::with_capacity(data.len() + 32);
    push_event(&mut v, time, code, data);
    v.pop(); // the newline
    String::from_utf8(v).unwrap_or_default()
}

/// Appends one event line and its newline to `out`: `[time,"code","data"]`, with the data
/// escaped exactly as `serde_json` does, without intermediate strings.
pub fn push_event(out: &mut Vec<u8>, time: f64, code: &str, data: &str) {
    use std::io::Write;
    out.reserve(data.len() + data.len() / 16 + 32);
    out.push(b'[');
    let _ = write!(out, "{time:.6}");
    out.extend_from_slice(b",\"");
    out.extend_from_slice(code.as_bytes());
    out.extend_from_slice(b"\",");
    push_json_str(out, data);
    out.extend_from_slice(b"]\n");
}

/// Whether any byte of `w` is below 0x20, `"` or `\\` (the bytes JSON strings escape).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    below_space | has_zero(w ^ (ONES * b'"' as u64)) | has_zero(w ^ (ONES * b'\\' as u64)) != 0
}

/// Appends `s` as a JSON string literal (quotes included), escaping like `serde_json`.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip eight plain bytes at a time.
        while i + 8 <= bytes.len() {
            let w = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
            if word_needs_escape(w) {
                break;
            }
            i += 8;
        }
        if i >= bytes.len() {
            break;
        }
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        } else {
            out.extend_from_slice(esc);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
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
    fn escaping_matches_serde_json() {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain ascii text that is longer than eight bytes".into(),
            "\"quoted\" \\ back\\slash \u{7f} del".into(),
            "Ölpumpe läuft ✓ 🏭 \u{2028}\u{2029}".into(),
        ];
        samples.push((0u8..=0x7f).map(char::from).collect());
        for n in 0..40 {
            // Escapes at every position relative to the 8-byte words.
            let mut s = "x".repeat(n);
            s.push('\n');
            s.push_str(&"y".repeat(17));
            s.push('\u{1}');
            samples.push(s);
        }
        for s in &samples {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
            let line = event_line(1.25, "o", s);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v[2].as_str().unwrap(), s);
            assert!(line.starts_with("[1.250000,\"o\","));
        }
    }

    #[test]
    fn decode_with_matches_decode() {
        let inputs: Vec<&[u8]> = vec![
            "Ölpumpe läuft ✓ 🏭".as_bytes(),
            b"\xff\xfe plain \xe2\x9c",
            b"\x93 rest",
            b"ascii only",
            &[0xf0, 0x9f],
            &[0x8f, 0xad, b'!'],
        ];
        let (mut a, mut b) = (Utf8Carry::default(), Utf8Carry::default());
        for chunk in inputs {
            let x = a.decode(chunk);
            let y = b.decode_with(chunk, |t| t.to_string());
            assert_eq!(x, y);
        }
        assert_eq!(a.finish(), b.finish());
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
