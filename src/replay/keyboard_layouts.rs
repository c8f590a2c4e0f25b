//! Keyboard layouts for the RDP key log: what a scancode (set 1, the physical key) types on the
//! layout the client announced in its Client Core Data (`keyboardLayout`, a Windows layout id).
//!
//! A layout is given as four rows of the main block, each key's plain and shifted character,
//! plus the keys AltGr (right Alt, or Ctrl+Alt) changes and the dead keys (an accent that
//! combines with the next key). Layouts switched inside the session (Alt+Shift on the target)
//! are not seen by the gateway: the key log follows the announced layout, and says so when the
//! layout is not one of these.

/// An accent typed with a dead key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accent {
    /// ` (grave).
    Grave,
    /// ´ (acute).
    Acute,
    /// ^ (circumflex).
    Circumflex,
    /// ¨ (diaeresis).
    Diaeresis,
    /// ~ (tilde).
    Tilde,
}

impl Accent {
    /// The accent on its own (a dead key followed by Space).
    pub fn spacing(self) -> char {
        match self {
            Accent::Grave => '`',
            Accent::Acute => '´',
            Accent::Circumflex => '^',
            Accent::Diaeresis => '¨',
            Accent::Tilde => '~',
        }
    }

    /// `base` with this accent, when such a character exists.
    pub fn compose(self, base: char) -> Option<char> {
        let table = match self {
            Accent::Grave => "aàeèiìoòuùAÀEÈIÌOÒUÙ",
            Accent::Acute => "aáeéiíoóuúyýAÁEÉIÍOÓUÚYÝ",
            Accent::Circumflex => "aâeêiîoôuûAÂEÊIÎOÔUÛ",
            Accent::Diaeresis => "aäeëiïoöuüyÿAÄEËIÏOÖUÜ",
            Accent::Tilde => "aãnñoõAÃNÑOÕ",
        };
        let chars: Vec<char> = table.chars().collect();
        chars.chunks(2).find(|p| p[0] == base).map(|p| p[1])
    }
}

/// Which level of a key is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// No modifier.
    Plain,
    /// Shift.
    Shift,
    /// AltGr.
    AltGr,
}

/// One keyboard layout.
#[derive(Debug)]
pub struct Layout {
    /// Windows layout ids (the low 16 bits of `keyboardLayout`) it stands for.
    pub ids: &'static [u32],
    /// Its name.
    pub name: &'static str,
    /// Scancodes 0x29, 0x02–0x0d (13 keys): plain, shifted.
    row0: (&'static str, &'static str),
    /// Scancodes 0x10–0x1b (12 keys).
    row1: (&'static str, &'static str),
    /// Scancodes 0x1e–0x28, then 0x2b (12 keys).
    row2: (&'static str, &'static str),
    /// Scancodes 0x56 (the ISO key left of Z), 0x2c–0x35 (11 keys).
    row3: (&'static str, &'static str),
    /// AltGr characters.
    altgr: &'static [(u8, char)],
    /// Dead keys.
    dead: &'static [(u8, Level, Accent)],
}

const ROW0: [u8; 13] = [0x29, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d];
const ROW1: [u8; 12] = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b];
const ROW2: [u8; 12] = [0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x2b];
const ROW3: [u8; 11] = [0x56, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35];

/// What a key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typed {
    /// A character.
    Char(char),
    /// A dead key: an accent for the next key.
    Dead(Accent),
}

impl Layout {
    /// The (plain, shifted) characters of `code`.
    pub fn chars(&self, code: u8) -> Option<(char, char)> {
        let pick = |codes: &[u8], row: &(&str, &str)| {
            let i = codes.iter().position(|c| *c == code)?;
            Some((row.0.chars().nth(i)?, row.1.chars().nth(i)?))
        };
        if code == 0x39 {
            return Some((' ', ' '));
        }
        pick(&ROW0, &self.row0)
            .or_else(|| pick(&ROW1, &self.row1))
            .or_else(|| pick(&ROW2, &self.row2))
            .or_else(|| pick(&ROW3, &self.row3))
    }

    /// What `code` types with these modifiers; `caps` applies to letters only.
    pub fn typed(&self, code: u8, shift: bool, altgr: bool, caps: bool) -> Option<Typed> {
        let level = if altgr {
            Level::AltGr
        } else if shift {
            Level::Shift
        } else {
            Level::Plain
        };
        if let Some((_, _, a)) = self.dead.iter().find(|(c, l, _)| *c == code && *l == level) {
            return Some(Typed::Dead(*a));
        }
        if altgr {
            return self.altgr.iter().find(|(c, _)| *c == code).map(|(_, ch)| Typed::Char(*ch));
        }
        let (plain, shifted) = self.chars(code)?;
        // Caps Lock shifts letters whose shifted form is their capital.
        let letter = plain.is_alphabetic() && plain.to_uppercase().eq(std::iter::once(shifted));
        let upper = shift ^ (caps && letter);
        Some(Typed::Char(if upper { shifted } else { plain }))
    }

    /// Whether AltGr has a meaning on this layout (else right Alt is plain Alt).
    pub fn has_altgr(&self) -> bool {
        !self.altgr.is_empty() || self.dead.iter().any(|(_, l, _)| *l == Level::AltGr)
    }
}

const QWERTY_ROW1: (&str, &str) = ("qwertyuiop[]", "QWERTYUIOP{}");
const QWERTZ_ROW3: (&str, &str) = ("<yxcvbnm,.-", ">YXCVBNM;:_");
const NORDIC_ROW3: (&str, &str) = ("<zxcvbnm,.-", ">ZXCVBNM;:_");

/// US English: the fallback for layouts not listed here.
pub static US: Layout = Layout {
    ids: &[0x0409],
    name: "US English",
    row0: ("`1234567890-=", "~!@#$%^&*()_+"),
    row1: QWERTY_ROW1,
    row2: ("asdfghjkl;'\\", "ASDFGHJKL:\"|"),
    row3: ("\\zxcvbnm,./", "|ZXCVBNM<>?"),
    altgr: &[],
    dead: &[],
};

static LAYOUTS: &[&Layout] = &[
    &US,
    &Layout {
        ids: &[0x0809],
        name: "United Kingdom",
        row0: ("`1234567890-=", "¬!\"£$%^&*()_+"),
        row1: QWERTY_ROW1,
        row2: ("asdfghjkl;'#", "ASDFGHJKL:@~"),
        row3: ("\\zxcvbnm,./", "|ZXCVBNM<>?"),
        altgr: &[(0x05, '€'), (0x29, '¦')],
        dead: &[],
    },
    &Layout {
        ids: &[0x0407, 0x0c07],
        name: "German",
        row0: ("^1234567890ß´", "°!\"§$%&/()=?`"),
        row1: ("qwertzuiopü+", "QWERTZUIOPÜ*"),
        row2: ("asdfghjklöä#", "ASDFGHJKLÖÄ'"),
        row3: QWERTZ_ROW3,
        altgr: &[
            (0x10, '@'),
            (0x12, '€'),
            (0x03, '²'),
            (0x04, '³'),
            (0x08, '{'),
            (0x09, '['),
            (0x0a, ']'),
            (0x0b, '}'),
            (0x0c, '\\'),
            (0x1b, '~'),
            (0x56, '|'),
            (0x32, 'µ'),
        ],
        dead: &[
            (0x29, Level::Plain, Accent::Circumflex),
            (0x0d, Level::Plain, Accent::Acute),
            (0x0d, Level::Shift, Accent::Grave),
        ],
    },
    &Layout {
        ids: &[0x0807],
        name: "Swiss German",
        row0: ("§1234567890'^", "°+\"*ç%&/()=?`"),
        row1: ("qwertzuiopü¨", "QWERTZUIOPè!"),
        row2: ("asdfghjklöä$", "ASDFGHJKLéà£"),
        row3: QWERTZ_ROW3,
        altgr: &[
            (0x03, '@'),
            (0x04, '#'),
            (0x08, '|'),
            (0x12, '€'),
            (0x1a, '['),
            (0x1b, ']'),
            (0x28, '{'),
            (0x2b, '}'),
            (0x56, '\\'),
        ],
        dead: &[
            (0x0d, Level::Plain, Accent::Circumflex),
            (0x0d, Level::Shift, Accent::Grave),
            (0x1b, Level::Plain, Accent::Diaeresis),
            (0x0c, Level::AltGr, Accent::Acute),
            (0x0d, Level::AltGr, Accent::Tilde),
        ],
    },
    &Layout {
        ids: &[0x040c, 0x080c, 0x140c, 0x180c],
        name: "French (AZERTY)",
        row0: ("²&é\"'(-è_çà)=", "²1234567890°+"),
        row1: ("azertyuiop^$", "AZERTYUIOP¨£"),
        row2: ("qsdfghjklmù*", "QSDFGHJKLM%µ"),
        row3: ("<wxcvbn,;:!", ">WXCVBN?./§"),
        altgr: &[
            (0x04, '#'),
            (0x05, '{'),
            (0x06, '['),
            (0x07, '|'),
            (0x09, '\\'),
            (0x0a, '^'),
            (0x0b, '@'),
            (0x0c, ']'),
            (0x0d, '}'),
            (0x12, '€'),
            (0x1b, '¤'),
        ],
        dead: &[
            (0x1a, Level::Plain, Accent::Circumflex),
            (0x1a, Level::Shift, Accent::Diaeresis),
            (0x03, Level::AltGr, Accent::Tilde),
            (0x08, Level::AltGr, Accent::Grave),
        ],
    },
    &Layout {
        ids: &[0x040a, 0x0c0a],
        name: "Spanish",
        row0: ("º1234567890'¡", "ª!\"·$%&/()=?¿"),
        row1: ("qwertyuiop`+", "QWERTYUIOP^*"),
        row2: ("asdfghjklñ´ç", "ASDFGHJKLÑ¨Ç"),
        row3: NORDIC_ROW3,
        altgr: &[
            (0x29, '\\'),
            (0x02, '|'),
            (0x03, '@'),
            (0x04, '#'),
            (0x05, '~'),
            (0x07, '¬'),
            (0x12, '€'),
            (0x1a, '['),
            (0x1b, ']'),
            (0x28, '{'),
            (0x2b, '}'),
        ],
        dead: &[
            (0x1a, Level::Plain, Accent::Grave),
            (0x1a, Level::Shift, Accent::Circumflex),
            (0x28, Level::Plain, Accent::Acute),
            (0x28, Level::Shift, Accent::Diaeresis),
        ],
    },
    &Layout {
        ids: &[0x0410],
        name: "Italian",
        row0: ("\\1234567890'ì", "|!\"£$%&/()=?^"),
        row1: ("qwertyuiopè+", "QWERTYUIOPé*"),
        row2: ("asdfghjklòàù", "ASDFGHJKLç°§"),
        row3: NORDIC_ROW3,
        altgr: &[(0x12, '€'), (0x1a, '['), (0x1b, ']'), (0x27, '@'), (0x28, '#')],
        dead: &[],
    },
    &Layout {
        ids: &[0x041d, 0x040b],
        name: "Swedish/Finnish",
        row0: ("§1234567890+´", "½!\"#¤%&/()=?`"),
        row1: ("qwertyuiopå¨", "QWERTYUIOPÅ^"),
        row2: ("asdfghjklöä'", "ASDFGHJKLÖÄ*"),
        row3: NORDIC_ROW3,
        altgr: &[
            (0x03, '@'),
            (0x04, '£'),
            (0x05, '$'),
            (0x08, '{'),
            (0x09, '['),
            (0x0a, ']'),
            (0x0b, '}'),
            (0x0c, '\\'),
            (0x12, '€'),
            (0x56, '|'),
        ],
        dead: &[
            (0x0d, Level::Plain, Accent::Acute),
            (0x0d, Level::Shift, Accent::Grave),
            (0x1b, Level::Plain, Accent::Diaeresis),
            (0x1b, Level::Shift, Accent::Circumflex),
            (0x1b, Level::AltGr, Accent::Tilde),
        ],
    },
    &Layout {
        ids: &[0x0414],
        name: "Norwegian",
        row0: ("|1234567890+\\", "§!\"#¤%&/()=?`"),
        row1: ("qwertyuiopå¨", "QWERTYUIOPÅ^"),
        row2: ("asdfghjkløæ'", "ASDFGHJKLØÆ*"),
        row3: NORDIC_ROW3,
        altgr: &[
            (0x03, '@'),
            (0x04, '£'),
            (0x05, '$'),
            (0x08, '{'),
            (0x09, '['),
            (0x0a, ']'),
            (0x0b, '}'),
            (0x12, '€'),
        ],
        dead: &[
            (0x0d, Level::Shift, Accent::Grave),
            (0x0d, Level::AltGr, Accent::Acute),
            (0x1b, Level::Plain, Accent::Diaeresis),
            (0x1b, Level::Shift, Accent::Circumflex),
            (0x1b, Level::AltGr, Accent::Tilde),
        ],
    },
    &Layout {
        ids: &[0x0406],
        name: "Danish",
        row0: ("½1234567890+´", "§!\"#¤%&/()=?`"),
        row1: ("qwertyuiopå¨", "QWERTYUIOPÅ^"),
        row2: ("asdfghjklæø'", "ASDFGHJKLÆØ*"),
        row3: NORDIC_ROW3,
        altgr: &[
            (0x03, '@'),
            (0x04, '£'),
            (0x05, '$'),
            (0x08, '{'),
            (0x09, '['),
            (0x0a, ']'),
            (0x0b, '}'),
            (0x12, '€'),
            (0x56, '\\'),
        ],
        dead: &[
            (0x0d, Level::Plain, Accent::Acute),
            (0x0d, Level::Shift, Accent::Grave),
            (0x1b, Level::Plain, Accent::Diaeresis),
            (0x1b, Level::Shift, Accent::Circumflex),
            (0x1b, Level::AltGr, Accent::Tilde),
        ],
    },
    &Layout {
        ids: &[0x0419],
        name: "Russian",
        row0: ("ё1234567890-=", "Ё!\"№;%:?*()_+"),
        row1: ("йцукенгшщзхъ", "ЙЦУКЕНГШЩЗХЪ"),
        row2: ("фывапролджэ\\", "ФЫВАПРОЛДЖЭ/"),
        row3: ("\\ячсмитьбю.", "/ЯЧСМИТЬБЮ,"),
        altgr: &[],
        dead: &[],
    },
];

/// The layout for a `keyboardLayout` value: `None` when it is not one of these (the key log
/// then uses US English and says so).
pub fn find(keyboard_layout: u32) -> Option<&'static Layout> {
    let id = keyboard_layout & 0xffff;
    // The high word names a variant (e.g. 0x00020409, US International); the base layout's
    // letters are right, its dead keys may not be.
    LAYOUTS.iter().copied().find(|l| l.ids.contains(&id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_row_has_one_character_per_key() {
        for l in LAYOUTS {
            for (row, n) in [(l.row0, 13), (l.row1, 12), (l.row2, 12), (l.row3, 11)] {
                assert_eq!(row.0.chars().count(), n, "{} {:?}", l.name, row.0);
                assert_eq!(row.1.chars().count(), n, "{} {:?}", l.name, row.1);
            }
        }
    }

    #[test]
    fn german_swaps_y_and_z_and_has_altgr_and_dead_keys() {
        let de = find(0x0407).expect("German");
        assert_eq!(de.typed(0x2c, false, false, false), Some(Typed::Char('y')));
        assert_eq!(de.typed(0x15, false, false, false), Some(Typed::Char('z')));
        assert_eq!(de.typed(0x10, false, true, false), Some(Typed::Char('@')));
        assert_eq!(de.typed(0x27, false, false, true), Some(Typed::Char('Ö')));
        assert_eq!(de.typed(0x03, false, false, true), Some(Typed::Char('2')), "Caps Lock leaves digits");
        assert_eq!(de.typed(0x29, false, false, false), Some(Typed::Dead(Accent::Circumflex)));
        assert_eq!(Accent::Circumflex.compose('e'), Some('ê'));
        assert_eq!(Accent::Circumflex.compose('x'), None);
        assert_eq!(find(0x0001_0407).map(|l| l.name), Some("German"));
        assert!(find(0x0411).is_none(), "Japanese is not listed");
    }
}
