//! The vendor's input in an RDP recording as a key log: scancodes mapped to text with the
//! keyboard layout the client announced, Unicode events as they are, mouse clicks as events.

use ironrdp_pdu::input::fast_path::{FastPathInput, FastPathInputEvent, KeyboardFlags as FpKeyFlags, SynchronizeFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_pdu::input::scan_code::KeyboardFlags as SlowKeyFlags;
use ironrdp_pdu::input::sync::SyncToggleFlags;
use ironrdp_pdu::input::unicode::KeyboardFlags as UniFlags;
use ironrdp_pdu::input::InputEvent;
use ironrdp_pdu::mcs::McsMessage;
use ironrdp_pdu::rdp::headers::{ShareControlHeader, ShareControlPdu, ShareDataPdu};
use ironrdp_pdu::x224::X224;

use super::keyboard_layouts::{self, Accent, Layout, Typed};
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

/// Turns input events into key-log lines, record by record.
#[derive(Debug)]
pub struct KeyLog {
    layout: &'static Layout,
    lines: Vec<KeyLine>,
    cur: String,
    cur_t: f64,
    /// Characters of `cur` a Backspace may take back.
    erasable: usize,
    shift: bool,
    ctrl: bool,
    alt: bool,
    /// Right Alt (AltGr on layouts that have one).
    right_alt: bool,
    caps: bool,
    num: bool,
    /// A dead key waiting for the next one.
    dead: Option<Accent>,
}

impl KeyLog {
    /// A key log for a recording with this header (its `keyboard_layout`).
    pub fn new(header: &serde_json::Value) -> KeyLog {
        let layout = header["keyboard_layout"]
            .as_u64()
            .and_then(|l| u32::try_from(l).ok())
            .and_then(keyboard_layouts::find)
            .unwrap_or(&keyboard_layouts::US);
        KeyLog {
            layout,
            lines: Vec::new(),
            cur: String::new(),
            cur_t: 0.0,
            erasable: 0,
            shift: false,
            ctrl: false,
            alt: false,
            right_alt: false,
            caps: false,
            num: true,
            dead: None,
        }
    }

    /// Feeds one record (only input records count).
    pub fn feed(&mut self, r: &Record) {
        if r.kind != CLIENT_INPUT {
            return;
        }
        let t = r.at_micros as f64 / 1_000_000.0;
        match r.data.first().map(|b| b & 0b11) {
            Some(0) => self.fast_path(t, &r.data),
            Some(3) => self.slow_path(t, &r.data),
            _ => {}
        }
    }

    /// Takes the lines finished so far (a line is finished by Enter, a click or [`finish`]).
    ///
    /// [`finish`]: KeyLog::finish
    pub fn take_lines(&mut self) -> Vec<KeyLine> {
        std::mem::take(&mut self.lines)
    }

    /// Ends the log: the remaining lines.
    pub fn finish(mut self) -> Vec<KeyLine> {
        self.flush();
        self.lines
    }

    fn pending_dead(&mut self, t: f64) {
        if let Some(a) = self.dead.take() {
            self.push_text(t, &a.spacing().to_string(), true);
        }
    }

    fn push_text(&mut self, t: f64, s: &str, erasable: bool) {
        if self.cur.is_empty() {
            self.cur_t = t;
        }
        self.cur.push_str(s);
        self.erasable = if erasable { self.erasable + s.chars().count() } else { 0 };
    }

    fn flush(&mut self) {
        self.dead = None;
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

    /// AltGr: right Alt on a layout that has AltGr, or Ctrl+Alt.
    fn altgr(&self) -> bool {
        self.layout.has_altgr() && (self.right_alt || (self.ctrl && self.alt))
    }

    fn typed_char(&mut self, t: f64, c: char) {
        match self.dead.take() {
            Some(a) if c == ' ' => self.push_text(t, &a.spacing().to_string(), true),
            Some(a) => match a.compose(c) {
                Some(composed) => self.push_text(t, &composed.to_string(), true),
                None => {
                    self.push_text(t, &a.spacing().to_string(), true);
                    self.push_text(t, &c.to_string(), true);
                }
            },
            None => self.push_text(t, &c.to_string(), true),
        }
    }

    fn scancode(&mut self, t: f64, code: u8, extended: bool, release: bool) {
        match (code, extended) {
            (0x2a | 0x36, false) => self.shift = !release,
            (0x1d, _) => self.ctrl = !release,
            (0x38, false) => self.alt = !release,
            (0x38, true) => self.right_alt = !release,
            (0x3a, false) if !release => self.caps = !self.caps,
            (0x45, _) if !release => self.num = !self.num,
            _ if release => {}
            (0x0e, false) => {
                self.dead = None;
                self.backspace(t)
            }
            (0x1c, _) => self.flush(),
            _ => {
                if let Some(c) = (!extended && self.num).then(|| numpad(code)).flatten() {
                    self.typed_char(t, c);
                    return;
                }
                if extended && code == 0x35 {
                    self.typed_char(t, '/');
                    return;
                }
                if !extended {
                    let altgr = self.altgr();
                    if !altgr && (self.ctrl || self.alt || self.right_alt) {
                        if let Some((p, _)) = self.layout.chars(code) {
                            self.pending_dead(t);
                            let m = if self.ctrl { "C" } else { "A" };
                            self.push_text(t, &format!("<{m}-{p}>"), false);
                            return;
                        }
                    }
                    match self.layout.typed(code, self.shift, altgr, self.caps) {
                        Some(Typed::Char(c)) => return self.typed_char(t, c),
                        Some(Typed::Dead(a)) => {
                            // Two dead keys in a row type the first accent.
                            self.pending_dead(t);
                            self.dead = Some(a);
                            return;
                        }
                        None if altgr && self.layout.chars(code).is_some() => return,
                        None => {}
                    }
                }
                self.pending_dead(t);
                let name = key_name(code, extended).map(str::to_string).unwrap_or_else(|| format!("sc{code:02x}"));
                self.push_text(t, &format!("<{name}>"), false);
            }
        }
    }

    /// Lock states from a synchronize event (sent when the client connects or gets the focus).
    fn sync(&mut self, caps: bool, num: bool) {
        self.caps = caps;
        self.num = num;
    }

    fn unicode(&mut self, t: f64, unit: u16, release: bool) {
        if release {
            return;
        }
        match char::from_u32(u32::from(unit)) {
            Some('\r') | Some('\n') => self.flush(),
            Some('\u{8}') => self.backspace(t),
            Some(c) if !c.is_control() => self.typed_char(t, c),
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
                FastPathInputEvent::SyncEvent(f) => {
                    self.sync(f.contains(SynchronizeFlags::CAPS_LOCK), f.contains(SynchronizeFlags::NUM_LOCK))
                }
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
                InputEvent::Sync(p) => {
                    self.sync(p.flags.contains(SyncToggleFlags::CAPS_LOCK), p.flags.contains(SyncToggleFlags::NUM_LOCK))
                }
                _ => {}
            }
        }
    }
}

/// The vendor's input as key-log lines (typed text per line, clicks), with the keyboard layout
/// the recording's header names.
pub fn key_log(
    header: &serde_json::Value,
    records: impl IntoIterator<Item = impl std::borrow::Borrow<Record>>,
) -> Vec<KeyLine> {
    let mut log = KeyLog::new(header);
    for r in records {
        log.feed(r.borrow());
    }
    log.finish()
}

/// What the key log assumed about the keyboard, when that is worth telling: the layout it
/// followed when it is not US English, or that the client's layout is not known here.
pub fn layout_note(header: &serde_json::Value) -> Option<String> {
    let layout = header["keyboard_layout"].as_u64().and_then(|l| u32::try_from(l).ok())?;
    if layout == 0 || layout & 0xffff == 0x0409 {
        return None;
    }
    Some(match keyboard_layouts::find(layout) {
        Some(l) => format!(
            "keys are shown as on the {} layout (0x{layout:04x}) the client announced; a layout switched on the target is not seen",
            l.name
        ),
        None => format!(
            "the client's keyboard layout 0x{layout:04x} is not known here; scancodes are shown as on a US English keyboard"
        ),
    })
}

/// The numeric keypad with Num Lock on (scancodes without the extended flag).
fn numpad(code: u8) -> Option<char> {
    Some(match code {
        0x37 => '*',
        0x47 => '7',
        0x48 => '8',
        0x49 => '9',
        0x4a => '-',
        0x4b => '4',
        0x4c => '5',
        0x4d => '6',
        0x4e => '+',
        0x4f => '1',
        0x50 => '2',
        0x51 => '3',
        0x52 => '0',
        0x53 => '.',
        _ => return None,
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
        let lines = key_log(&serde_json::json!({}), &recs);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].text, "Hi!");
        assert_eq!(lines[0].t, 1.0);
        assert_eq!(lines[1].text, "é");
    }

    fn rec_at(at: u64, events: Vec<FastPathInputEvent>) -> Record {
        rec(at, events)
    }

    fn typed(layout: u32, keys: &[(u8, bool, bool)]) -> String {
        let evs: Vec<FastPathInputEvent> = keys
            .iter()
            .map(|(code, ext, release)| {
                let mut f = if *release { FpKeyFlags::RELEASE } else { FpKeyFlags::empty() };
                if *ext {
                    f |= FpKeyFlags::EXTENDED;
                }
                FastPathInputEvent::KeyboardEvent(f, *code)
            })
            .collect();
        let recs: Vec<Record> = evs.chunks(16).map(|c| rec_at(1, c.to_vec())).collect();
        let lines = key_log(&serde_json::json!({ "keyboard_layout": layout }), &recs);
        lines.into_iter().map(|l| l.text).collect::<Vec<_>>().join("|")
    }

    fn press(code: u8) -> [(u8, bool, bool); 2] {
        [(code, false, false), (code, false, true)]
    }

    #[test]
    fn the_announced_layout_decides_what_a_scancode_types() {
        // The physical keys of "zy" (0x2c, 0x15): German types "yz", French "wy", US "zy".
        let zy: Vec<_> = [press(0x2c), press(0x15)].concat();
        assert_eq!(typed(0x0409, &zy), "zy");
        assert_eq!(typed(0x0407, &zy), "yz");
        assert_eq!(typed(0x040c, &zy), "wy");
        assert_eq!(typed(0x0419, &zy), "ян");
        // An unknown layout falls back to US English, and the note says so.
        assert_eq!(typed(0x0411, &zy), "zy");
        assert!(layout_note(&serde_json::json!({ "keyboard_layout": 0x0411 })).is_some_and(|n| n.contains("not known")));
        assert!(layout_note(&serde_json::json!({ "keyboard_layout": 0x0407 })).is_some_and(|n| n.contains("German")));
        assert!(layout_note(&serde_json::json!({ "keyboard_layout": 0x0409 })).is_none());
    }

    #[test]
    fn altgr_dead_keys_caps_lock_and_the_keypad() {
        // German: AltGr (right Alt) + Q is @; Ctrl+Alt + E is €; dead ^ then e is ê; dead ´ then
        // space is ´; dead ^ then x is ^x.
        let mut keys = vec![(0x38, true, false)];
        keys.extend(press(0x10));
        keys.push((0x38, true, true));
        keys.extend([(0x1d, false, false), (0x38, false, false)]);
        keys.extend(press(0x12));
        keys.extend([(0x38, false, true), (0x1d, false, true)]);
        keys.extend(press(0x29));
        keys.extend(press(0x12));
        keys.extend(press(0x0d));
        keys.extend(press(0x39));
        keys.extend(press(0x29));
        keys.extend(press(0x2d));
        assert_eq!(typed(0x0407, &keys), "@€ê´^x");
        // On US, right Alt is Alt: a shortcut, not a character.
        let mut keys = vec![(0x38, true, false)];
        keys.extend(press(0x21));
        keys.push((0x38, true, true));
        assert_eq!(typed(0x0409, &keys), "<A-f>");
        // Caps Lock capitalises letters (ö too) and leaves digits; the keypad types digits.
        let mut keys = press(0x3a).to_vec();
        keys.extend(press(0x27));
        keys.extend(press(0x03));
        keys.extend(press(0x4f));
        keys.extend(press(0x4e));
        assert_eq!(typed(0x0407, &keys), "Ö21+");
        // Backspace takes back a composed character as one.
        let mut keys = press(0x29).to_vec();
        keys.extend(press(0x12));
        keys.extend(press(0x0e));
        keys.extend(press(0x12));
        assert_eq!(typed(0x0407, &keys), "e");
    }

    #[test]
    fn a_sync_event_sets_caps_lock() {
        let recs = vec![rec(
            1,
            vec![
                FastPathInputEvent::SyncEvent(SynchronizeFlags::CAPS_LOCK | SynchronizeFlags::NUM_LOCK),
                key(0x1e, false),
            ],
        )];
        let lines = key_log(&serde_json::json!({}), &recs);
        assert_eq!(lines.first().map(|l| l.text.as_str()), Some("A"));
    }
}
