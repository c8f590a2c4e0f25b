//! The vendor's input in an RDP recording as a key log: scancodes mapped to text with the
//! keyboard layout the client announced, Unicode events as they are, mouse clicks as events.

use ironrdp_pdu::input::fast_path::{FastPathInput, FastPathInputEvent, KeyboardFlags as FpKeyFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::scan_code::KeyboardFlags as SlowKeyFlags;
use ironrdp_pdu::input::unicode::KeyboardFlags as UniFlags;
use ironrdp_pdu::input::InputEvent;
use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::x224::X224;

use crate::rdp::input::CLIENT_INPUT;
use crate::recording::frames::Record;

/// One line of the key log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyLine {
    /// Seconds into the recording.
    pub t: f64,
    /// `keys` (typed text; special keys in angle brackets) or `click`.
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

/// US layout, scancode set 1: (plain, shifted).
fn us_char(code: u8) -> Option<(char, char)> {
    const ROW1: &[u8; 13] = b"1234567890-=\0";
    const ROW1S: &[u8; 13] = b"!@#$%^&*()_+\0";
    let pair = |a: u8, b: u8| Some((char::from(a), char::from(b)));
    match code {
        0x02..=0x0d => pair(ROW1[usize::from(code - 2)], ROW1S[usize::from(code - 2)]),
        0x10..=0x1b => {
            let p = b"qwertyuiop[]";
            let s = b"QWERTYUIOP{}";
            pair(p[usize::from(code - 0x10)], s[usize::from(code - 0x10)])
        }
        0x1e..=0x29 => {
            let p = b"asdfghjkl;'`";
            let s = b"ASDFGHJKL:\"~";
            pair(p[usize::from(code - 0x1e)], s[usize::from(code - 0x1e)])
        }
        0x2b..=0x35 => {
            let p = b"\\zxcvbnm,./";
            let s = b"|ZXCVBNM<>?";
            pair(p[usize::from(code - 0x2b)], s[usize::from(code - 0x2b)])
        }
        0x39 => pair(b' ', b' '),
        _ => None,
    }
}

fn key_name(code: u8, extended: bool) -> Option<&'static str> {
    Some(match (code, extended) {
        (0x01, _) => "Esc",
        (0x0f, _) => "Tab",
        (0x1c, _) => "Enter",
        (0x3b, _) => "F1",
        (0x3c, _) => "F2",
        (0x3d, _) => "F3",
        (0x3e, _) => "F4",
        (0x3f, _) => "F5",
        (0x40, _) => "F6",
        (0x41, _) => "F7",
        (0x42, _) => "F8",
        (0x43, _) => "F9",
        (0x44, _) => "F10",
        (0x57, _) => "F11",
        (0x58, _) => "F12",
        (0x47, true) => "Home",
        (0x48, true) => "Up",
        (0x49, true) => "PgUp",
        (0x4b, true) => "Left",
        (0x4d, true) => "Right",
        (0x4f, true) => "End",
        (0x50, true) => "Down",
        (0x51, true) => "PgDn",
        (0x52, true) => "Ins",
        (0x53, true) => "Del",
        (0x5b, true) | (0x5c, true) => "Win",
        _ => return None,
    })
}

/// Turns input events into key-log lines.
#[derive(Debug, Default)]
struct KeyLog {
    lines: Vec<KeyLine>,
    cur: String,
    cur_t: f64,
    /// Characters of `cur` a Backspace may take back.
    erasable: usize,
    shift: bool,
    ctrl: bool,
    alt: bool,
    caps: bool,
}

impl KeyLog {
    fn push_text(&mut self, t: f64, s: &str, erasable: bool) {
        if self.cur.is_empty() {
            self.cur_t = t;
        }
        self.cur.push_str(s);
        self.erasable = if erasable { self.erasable + s.chars().count() } else { 0 };
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            let text = std::mem::take(&mut self.cur);
            self.lines.push(KeyLine { t: self.cur_t, kind: "keys", text });
        }
        self.erasable = 0;
    }

    fn backspace(&mut self, t: f64) {
        if self.erasable > 0 {
            self.cur.pop();
            self.erasable -= 1;
        } else {
            self.push_text(t, "<BS>", false);
        }
    }

    fn scancode(&mut self, t: f64, code: u8, extended: bool, release: bool) {
        match code {
            0x2a | 0x36 => self.shift = !release,
            0x1d => self.ctrl = !release,
            0x38 => self.alt = !release,
            0x3a if !release => self.caps = !self.caps,
            _ if release => {}
            0x0e => self.backspace(t),
            0x1c => {
                self.flush();
            }
            _ => {
                if !extended {
                    if let Some((p, s)) = us_char(code) {
                        if self.ctrl || self.alt {
                            let m = if self.ctrl { "C" } else { "A" };
                            self.push_text(t, &format!("<{m}-{p}>"), false);
                        } else {
                            let upper = self.shift ^ (self.caps && p.is_ascii_alphabetic());
                            self.push_text(t, &(if upper { s } else { p }).to_string(), true);
                        }
                        return;
                    }
                }
                let name = key_name(code, extended).map(str::to_string).unwrap_or_else(|| format!("sc{code:02x}"));
                self.push_text(t, &format!("<{name}>"), false);
            }
        }
    }

    fn unicode(&mut self, t: f64, unit: u16, release: bool) {
        if release {
            return;
        }
        match char::from_u32(u32::from(unit)) {
            Some('\r') | Some('\n') => self.flush(),
            Some('\u{8}') => self.backspace(t),
            Some(c) if !c.is_control() => self.push_text(t, &c.to_string(), true),
            _ => self.push_text(t, &format!("<U+{unit:04X}>"), false),
        }
    }

    fn click(&mut self, t: f64, button: &str, x: u16, y: u16) {
        self.flush();
        self.lines.push(KeyLine { t, kind: "click", text: format!("{button} at {x},{y}") });
    }

    fn mouse(&mut self, t: f64, flags: PointerFlags, x: u16, y: u16) {
        if !flags.contains(PointerFlags::DOWN) {
            return;
        }
        if flags.contains(PointerFlags::LEFT_BUTTON) {
            self.click(t, "left", x, y);
        } else if flags.contains(PointerFlags::RIGHT_BUTTON) {
            self.click(t, "right", x, y);
        } else if flags.contains(PointerFlags::MIDDLE_BUTTON_OR_WHEEL) && !flags.contains(PointerFlags::VERTICAL_WHEEL)
        {
            self.click(t, "middle", x, y);
        }
    }

    fn fast_path(&mut self, t: f64, pdu: &[u8]) {
        let Ok(input) = ironrdp_core::decode::<FastPathInput>(pdu) else { return };
        for ev in input.input_events() {
            match ev {
                FastPathInputEvent::KeyboardEvent(f, code) => {
                    self.scancode(t, *code, f.contains(FpKeyFlags::EXTENDED), f.contains(FpKeyFlags::RELEASE))
                }
                FastPathInputEvent::UnicodeKeyboardEvent(f, unit) => {
                    self.unicode(t, *unit, f.contains(FpKeyFlags::RELEASE))
                }
                FastPathInputEvent::MouseEvent(m) => self.mouse(t, m.flags, m.x_position, m.y_position),
                _ => {}
            }
        }
    }

    fn slow_path(&mut self, t: f64, frame: &[u8]) {
        let Ok(X224(McsMessage::SendDataRequest(req))) = ironrdp_core::decode::<X224<McsMessage<'_>>>(frame) else {
            return;
        };
        let Ok(h) = ironrdp_core::decode::<ShareControlHeader>(&req.user_data) else { return };
        let ShareControlPdu::Data(d) = h.share_control_pdu else { return };
        let ShareDataPdu::Input(events) = d.share_data_pdu else { return };
        for ev in &events.0 {
            match ev {
                InputEvent::ScanCode(s) => self.scancode(
                    t,
                    u8::try_from(s.key_code & 0xff).unwrap_or(0),
                    s.flags.contains(SlowKeyFlags::EXTENDED),
                    s.flags.contains(SlowKeyFlags::RELEASE),
                ),
                InputEvent::Unicode(u) => self.unicode(t, u.unicode_code, u.flags.contains(UniFlags::RELEASE)),
                InputEvent::Mouse(m) => self.mouse(t, m.flags, m.x_position, m.y_position),
                _ => {}
            }
        }
    }
}

/// The vendor's input as key-log lines (typed text per line, clicks).
pub fn key_log(records: &[Record]) -> Vec<KeyLine> {
    let mut log = KeyLog::default();
    for r in records.iter().filter(|r| r.kind == CLIENT_INPUT) {
        let t = r.at_micros as f64 / 1_000_000.0;
        match r.data.first().map(|b| b & 0b11) {
            Some(0) => log.fast_path(t, &r.data),
            Some(3) => log.slow_path(t, &r.data),
            _ => {}
        }
    }
    log.flush();
    log.lines
}

/// The keyboard layout the client announced, when it is not US English (the key log maps
/// scancodes as US English).
pub fn layout_note(header: &serde_json::Value) -> Option<String> {
    let layout = header["keyboard_layout"].as_u64()?;
    (layout != 0x409 && layout != 0).then(|| {
        format!("the client's keyboard layout is 0x{layout:04x}; scancodes are shown as on a US English keyboard")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u8, release: bool) -> FastPathInputEvent {
        let f = if release { FpKeyFlags::RELEASE } else { FpKeyFlags::empty() };
        FastPathInputEvent::KeyboardEvent(f, code)
    }

    fn rec(at: u64, events: Vec<FastPathInputEvent>) -> Record {
        let pdu = FastPathInput::new(events).expect("events");
        Record { kind: CLIENT_INPUT, at_micros: at, data: ironrdp_core::encode_vec(&pdu).expect("encode") }
    }

    #[test]
    fn scancodes_become_text_with_shift_backspace_and_enter() {
        // "Hi" <shift-h i>, "x" then backspace, "!" (shift-1), Enter, then a unicode "é".
        let evs = vec![
            key(0x2a, false),
            key(0x23, false),
            key(0x23, true),
            key(0x2a, true),
            key(0x17, false),
            key(0x2d, false),
            key(0x0e, false),
            key(0x2a, false),
            key(0x02, false),
            key(0x2a, true),
            key(0x1c, false),
        ];
        let recs = vec![
            rec(1_000_000, evs),
            rec(2_500_000, vec![FastPathInputEvent::UnicodeKeyboardEvent(FpKeyFlags::empty(), 0xe9)]),
        ];
        let lines = key_log(&recs);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].text, "Hi!");
        assert_eq!(lines[0].t, 1.0);
        assert_eq!(lines[1].text, "é");
    }
}
