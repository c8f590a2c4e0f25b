//! `penstock replay`: a recording played in the auditor's terminal, the screen at a moment as
//! text, and a transcript.
//!
//! Target output never reaches the auditor's terminal as it was recorded. It is fed to a real
//! terminal emulator (`vt100`), and what is written out is that emulator's own rendering of its
//! screen (text, colours, cursor moves, erases). So OSC 52 clipboard writes, title and font
//! changes, DCS/APC/PM strings, mouse or paste modes and every query that makes a terminal
//! answer back are dropped by construction (Guacamole CVE-2024-35164, xterm answer-back).
//! Binary side files are named by the gateway's notes, never read here.

pub mod cast;
pub mod keyboard_layouts;
pub mod player;
pub mod rdp;
pub mod rdp_channels;
pub mod rdp_keys;
pub mod rdp_view;
pub mod transcript;

use std::io::BufRead;

use anyhow::Context;

use cast::{CastReader, Header};

/// Applies a resize event's `COLSxROWS`.
fn resize(parser: &mut vt100::Parser, data: &str) {
    if let Some((c, r)) = data.split_once('x') {
        if let (Ok(c), Ok(r)) = (c.trim().parse::<u16>(), r.trim().parse::<u16>()) {
            parser.screen_mut().set_size(r.clamp(1, 1000), c.clamp(1, 1000));
        }
    }
}

/// Bidirectional overrides, which could make the auditor misread a line.
fn is_bidi(c: char) -> bool {
    ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A terminal emulator fed from a recording.
pub struct Screen {
    parser: vt100::Parser,
}

impl Screen {
    /// An empty screen of the recording's size.
    pub fn new(h: &Header) -> Screen {
        Screen { parser: vt100::Parser::new(h.height, h.width, 0) }
    }

    /// Applies one event (output and resizes change the screen).
    pub fn apply(&mut self, code: &str, data: &str) {
        match code {
            "o" if data.chars().any(is_bidi) => {
                let clean: String = data.chars().map(|c| if is_bidi(c) { '\u{fffd}' } else { c }).collect();
                self.parser.process(clean.as_bytes())
            }
            "o" => self.parser.process(data.as_bytes()),
            "r" => resize(&mut self.parser, data),
            _ => {}
        }
    }

    /// The emulator's screen.
    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }

    /// The visible screen as plain text (trailing blanks trimmed).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for line in self.parser.screen().contents().lines() {
            let line: String = line.chars().map(transcript::clean_char).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }
}

/// The screen as it was `at` seconds into the recording.
pub fn screen_at<R: BufRead>(r: R, at: f64) -> anyhow::Result<(Header, Screen)> {
    let (header, mut cast) = CastReader::new(r)?;
    let mut screen = Screen::new(&header);
    while let Some(ev) = cast.next_event().context("cannot read recording")? {
        if ev.t > at {
            break;
        }
        screen.apply(&ev.code, &ev.data);
    }
    Ok((header, screen))
}
