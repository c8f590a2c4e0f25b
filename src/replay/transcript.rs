//! A recording as lines of text: what was typed (command lines reconstructed from keystrokes
//! with their editing applied), what was shown (output with every escape sequence stripped by a
//! real terminal parser), the exec command and the gateway's own notes (transfers, side files).
//! Used for `penstock replay --transcript` and as the text the search index holds.

use std::io::BufRead;

use serde::Serialize;

use super::cast::{CastReader, Header};

/// Longest line kept (longer ones are cut and marked).
const MAX_CHARS: usize = 4096;

/// Where a line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A command line the vendor typed (reconstructed).
    Input,
    /// A line of output.
    Output,
    /// The exec command or subsystem.
    Command,
    /// A note the gateway wrote (an `m` event, which target output cannot forge).
    Note,
}

impl Kind {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Input => "in",
            Kind::Output => "out",
            Kind::Command => "cmd",
            Kind::Note => "note",
        }
    }

    /// Parses a label.
    pub fn from_label(s: &str) -> Option<Kind> {
        Some(match s {
            "in" => Kind::Input,
            "out" => Kind::Output,
            "cmd" => Kind::Command,
            "note" => Kind::Note,
            _ => return None,
        })
    }
}

/// One line.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Seconds since the start (for input: when Enter was pressed; for output: when the line's
    /// last character arrived).
    pub t: f64,
    /// Its kind.
    pub kind: Kind,
    /// The text, free of control characters.
    pub text: String,
}

/// Replaces anything that could act on a terminal or mislead a reader (controls, bidi
/// overrides) with U+FFFD.
pub fn clean_char(c: char) -> char {
    if c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c) {
        '\u{fffd}'
    } else {
        c
    }
}

fn push_capped(s: &mut String, c: char) {
    if s.len() < MAX_CHARS {
        s.push(clean_char(c));
    } else if !s.ends_with('…') {
        s.push('…');
    }
}

/// Output text collected into lines by a terminal parser.
#[derive(Default)]
struct OutLines {
    cur: String,
    /// When the line's last character arrived (a prompt printed long before the command typed
    /// after it does not date the line).
    last: Option<f64>,
    now: f64,
    done: Vec<Line>,
}

impl vte::Perform for OutLines {
    fn print(&mut self, c: char) {
        self.last = Some(self.now);
        push_capped(&mut self.cur, c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => self.end(),
            b'\t' => self.print(' '),
            0x08 => {
                self.cur.pop();
            }
            _ => {}
        }
    }
}

impl OutLines {
    fn end(&mut self) {
        let text = self.cur.trim_end().to_string();
        self.cur.clear();
        if let Some(t) = self.last.take() {
            if !text.trim().is_empty() {
                self.done.push(Line { t, kind: Kind::Output, text });
            }
        }
    }
}

/// Keystrokes turned into command lines.
#[derive(Default)]
struct InLines {
    cur: String,
    /// Inside an escape sequence (cursor keys and the like).
    esc: u8,
    /// The line was edited with keys whose effect only the target's shell knows.
    fuzzy: bool,
    done: Vec<Line>,
}

impl InLines {
    fn key(&mut self, t: f64, c: char) {
        if self.esc > 0 {
            // ESC [ params final, or ESC O x.
            self.esc = match (self.esc, c) {
                (1, '[') | (1, 'O') => 2,
                (2, '0'..='9' | ';') => 2,
                _ => 0,
            };
            return;
        }
        match c {
            '\r' | '\n' => self.submit(t, ""),
            '\u{7f}' | '\u{8}' => {
                self.cur.pop();
            }
            '\u{15}' => self.cur.clear(),
            '\u{17}' => {
                let keep = self.cur.trim_end().rfind(' ').map(|i| i + 1).unwrap_or(0);
                self.cur.truncate(keep);
            }
            '\u{3}' => self.submit(t, " ^C"),
            '\u{4}' if self.cur.is_empty() => self.submit(t, "^D"),
            '\u{1b}' => {
                self.esc = 1;
                self.fuzzy = true;
            }
            '\t' => {
                self.fuzzy = true;
                push_capped(&mut self.cur, '⇥');
            }
            c if c.is_control() => self.fuzzy = true,
            c => push_capped(&mut self.cur, c),
        }
    }

    fn submit(&mut self, t: f64, suffix: &str) {
        let mut text = std::mem::take(&mut self.cur);
        text.push_str(suffix);
        if std::mem::take(&mut self.fuzzy) {
            text.push_str("   (edited with cursor/completion keys: see the output)");
        }
        if !text.trim().is_empty() {
            self.done.push(Line { t, kind: Kind::Input, text });
        }
    }
}

/// Turns events into lines.
pub struct Transcriber {
    parser: vte::Parser,
    out: OutLines,
    input: InLines,
    notes: Vec<Line>,
    /// The output copy of the last note (`\r\n{note}\r\n`), skipped once.
    echo: Option<String>,
}

impl Default for Transcriber {
    fn default() -> Self {
        Transcriber {
            parser: vte::Parser::new(),
            out: OutLines::default(),
            input: InLines::default(),
            notes: Vec::new(),
            echo: None,
        }
    }
}

impl Transcriber {
    /// Feeds one event.
    pub fn event(&mut self, t: f64, code: &str, data: &str) {
        match code {
            "o" => {
                if self.echo.as_deref() == Some(data) {
                    self.echo = None;
                    return;
                }
                self.echo = None;
                self.out.now = t;
                self.parser.advance(&mut self.out, data.as_bytes());
            }
            "i" => {
                for c in data.chars() {
                    self.input.key(t, c);
                }
            }
            "m" => {
                let text: String = data.chars().take(MAX_CHARS).map(clean_char).collect();
                self.notes.push(Line { t, kind: Kind::Note, text });
                self.echo = Some(format!("\r\n{data}\r\n"));
            }
            _ => {}
        }
    }

    /// Lines finished so far, in time order (taken out).
    pub fn take(&mut self) -> Vec<Line> {
        let mut all = std::mem::take(&mut self.out.done);
        all.append(&mut self.input.done);
        all.append(&mut self.notes);
        all.sort_by(|a, b| a.t.total_cmp(&b.t));
        all
    }

    /// Ends unfinished lines at time `t`; returns the rest.
    pub fn finish(&mut self, t: f64) -> Vec<Line> {
        self.out.end();
        self.input.submit(t, "");
        self.take()
    }
}

/// Calls `f` with every line of a recording, in time order (lines are emitted in batches, so
/// memory stays bounded by the longest stretch between two events).
pub fn lines<R: BufRead>(r: R, mut f: impl FnMut(&Header, Line) -> anyhow::Result<()>) -> anyhow::Result<Header> {
    let (header, mut cast) = CastReader::new(r)?;
    if let Some(c) = &header.command {
        let text: String = c.chars().take(MAX_CHARS).map(clean_char).collect();
        f(&header, Line { t: 0.0, kind: Kind::Command, text })?;
    }
    let mut tr = Transcriber::default();
    let mut last = 0.0;
    while let Some(ev) = cast.next_event()? {
        last = ev.t;
        tr.event(ev.t, &ev.code, &ev.data);
        let batch = tr.take();
        for l in batch {
            f(&header, l)?;
        }
    }
    for l in tr.finish(last) {
        f(&header, l)?;
    }
    Ok(header)
}

/// `HH:MM:SS.mmm` of an offset in seconds.
pub fn fmt_offset(t: f64) -> String {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[(f64, &str, &str)]) -> Vec<(Kind, String)> {
        let mut tr = Transcriber::default();
        for (t, c, d) in events {
            tr.event(*t, c, d);
        }
        let mut v: Vec<(Kind, String)> = tr.take().into_iter().map(|l| (l.kind, l.text)).collect();
        v.extend(tr.finish(9.0).into_iter().map(|l| (l.kind, l.text)));
        v
    }

    #[test]
    fn input_editing_and_output_stripping() {
        let v = run(&[
            (1.0, "i", "lsx\u{7f} -l\r"),
            (1.1, "o", "\u{1b}[1;31mred\u{1b}[0m file\r\n"),
            (1.2, "o", "\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}]0;title\u{7}\u{1b}Pq#0\u{1b}\\ok\u{202e}\r\n"),
            (2.0, "m", "[penstock] upload /tmp/a (3 bytes, sha256 00)"),
            (2.0, "o", "\r\n[penstock] upload /tmp/a (3 bytes, sha256 00)\r\n"),
            (2.5, "o", "[penstock] forged\r\n"),
        ]);
        assert_eq!(
            v,
            vec![
                (Kind::Input, "ls -l".into()),
                (Kind::Output, "red file".into()),
                (Kind::Output, "ok\u{fffd}".into()),
                (Kind::Note, "[penstock] upload /tmp/a (3 bytes, sha256 00)".into()),
                (Kind::Output, "[penstock] forged".into()),
            ]
        );
    }

    #[test]
    fn offsets_format() {
        assert_eq!(fmt_offset(95.5), "00:01:35.500");
        assert_eq!(fmt_offset(3725.0), "01:02:05.000");
    }
}
