//! The `[rotation]` section of a policy file and the passwords it asks for.
//!
//! ```toml
//! [rotation]
//! after_session = true        # when the last vendor session on the target ends
//! max_age = "30d"             # and whenever the secret gets older than this
//! password = { length = 20, alphabet = "alnum" }   # what the device accepts
//! # for accounts that cannot change their own password: another target (`{target}` is the
//! # rotated target's name) logs in and runs a command reading `LOGIN:NEWPASSWORD` on stdin
//! admin = "{target}-admin"
//! command = "sudo -n /usr/sbin/chpasswd"
//! ```

use std::path::Path;

use anyhow::anyhow;
use rand::Rng;
use serde::Deserialize;
use toml::Spanned;

use crate::secret::Secret;

/// `[rotation]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    after_session: bool,
    #[serde(default)]
    max_age: Option<Spanned<String>>,
    #[serde(default)]
    password: Option<Spanned<PasswordSpec>>,
    #[serde(default)]
    admin: Option<Spanned<String>>,
    #[serde(default)]
    command: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordSpec {
    #[serde(default = "default_length")]
    length: i64,
    #[serde(default = "default_alphabet")]
    alphabet: String,
}

fn default_length() -> i64 {
    20
}

fn default_alphabet() -> String {
    "alnum".into()
}

/// The characters a generated password is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// `A-Z a-z 0-9`, at least one of each class.
    Alnum,
    /// `A-Z a-z`.
    Alpha,
    /// `0-9` (PIN-style devices).
    Digits,
    /// `0-9 a-f`.
    Hex,
    /// `alnum` plus `!#%+-.:=@_~`, at least one of each class.
    Symbols,
}

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const DIGITS: &str = "0123456789";
const SYMBOLS: &str = "!#%+-.:=@_~";

impl Alphabet {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alnum" => Self::Alnum,
            "alpha" => Self::Alpha,
            "digits" => Self::Digits,
            "hex" => Self::Hex,
            "symbols" => Self::Symbols,
            _ => return None,
        })
    }

    /// Character classes; a password holds at least one of each when it is long enough.
    fn classes(self) -> Vec<&'static str> {
        match self {
            Self::Alnum => vec![UPPER, LOWER, DIGITS],
            Self::Alpha => vec![UPPER, LOWER],
            Self::Digits => vec![DIGITS],
            Self::Hex => vec!["0123456789abcdef"],
            Self::Symbols => vec![UPPER, LOWER, DIGITS, SYMBOLS],
        }
    }
}

/// What a target's secret must look like when the gateway generates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordRule {
    /// Characters.
    pub length: usize,
    /// Drawn from.
    pub alphabet: Alphabet,
}

impl Default for PasswordRule {
    fn default() -> Self {
        Self { length: 20, alphabet: Alphabet::Alnum }
    }
}

impl PasswordRule {
    /// A new password from the OS's CSPRNG, uniform over the alphabet (no modulo bias), with at
    /// least one character of every class of the alphabet.
    pub fn generate(&self) -> Secret {
        let classes = self.alphabet.classes();
        let all: Vec<u8> = classes.iter().flat_map(|c| c.bytes()).collect();
        let mut rng = rand::rngs::OsRng;
        loop {
            let pw: Vec<u8> = (0..self.length).map(|_| all[rng.gen_range(0..all.len())]).collect();
            let complete =
                self.length < classes.len() || classes.iter().all(|c| pw.iter().any(|b| c.as_bytes().contains(b)));
            if complete {
                return Secret::new(pw);
            }
        }
    }
}

/// The compiled `[rotation]` rules of a policy. Targets no policy (or no `[rotation]`) covers
/// are rotated only on demand, with the default password rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Rotate when the last vendor session on the target ends.
    pub after_session: bool,
    /// Rotate when the active secret is older than this (seconds).
    pub max_age: Option<i64>,
    /// Generated passwords.
    pub password: PasswordRule,
    /// Change passwords through another account instead of `passwd` as the account itself.
    pub admin: Option<Admin>,
}

/// A password change made by another account: `target` (a target name, `{target}` standing
/// for the rotated target's) logs in and runs `command`, which reads `LOGIN:NEWPASSWORD` and a
/// newline on standard input (as `chpasswd` does), so the password is never on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Target whose vaulted credential logs in as the admin account.
    pub target: String,
    /// Command run there.
    pub command: String,
}

/// The command an admin account runs when the policy names none.
pub const DEFAULT_ADMIN_COMMAND: &str = "sudo -n chpasswd";

impl Admin {
    /// The admin target's name for `target`.
    pub fn target_for(&self, target: &str) -> String {
        self.target.replace("{target}", target)
    }
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Spec {
    /// Checks and compiles; errors are one line naming file, line and field.
    pub fn compile(&self, path: &Path, text: &str) -> anyhow::Result<Rules> {
        let max_age =
            match &self.max_age {
                Some(s) => Some(crate::access::parse_duration(s.get_ref()).map_err(|e| {
                    anyhow!("{}:{}: rotation.max_age: {e}", path.display(), line_of(text, s.span().start))
                })?),
                None => None,
            };
        let password = match &self.password {
            Some(p) => {
                let line = line_of(text, p.span().start);
                let spec = p.get_ref();
                let alphabet = Alphabet::parse(&spec.alphabet).ok_or_else(|| {
                    anyhow!(
                        "{}:{line}: rotation.password.alphabet: unknown alphabet {:?} (alnum, alpha, digits, hex or symbols)",
                        path.display(),
                        spec.alphabet
                    )
                })?;
                if !(8..=128).contains(&spec.length) {
                    return Err(anyhow!(
                        "{}:{line}: rotation.password.length: must be between 8 and 128",
                        path.display()
                    ));
                }
                PasswordRule { length: spec.length as usize, alphabet }
            }
            None => PasswordRule::default(),
        };
        let admin = match (&self.admin, &self.command) {
            (Some(a), c) => {
                if a.get_ref().trim().is_empty() {
                    return Err(anyhow!(
                        "{}:{}: rotation.admin: name a target",
                        path.display(),
                        line_of(text, a.span().start)
                    ));
                }
                let command = c.as_ref().map(|c| c.get_ref().trim().to_string()).unwrap_or_default();
                if c.is_some() && command.is_empty() {
                    let at = c.as_ref().map(|c| c.span().start).unwrap_or(0);
                    return Err(anyhow!(
                        "{}:{}: rotation.command: must not be empty",
                        path.display(),
                        line_of(text, at)
                    ));
                }
                let command = if command.is_empty() { DEFAULT_ADMIN_COMMAND.to_string() } else { command };
                Some(Admin { target: a.get_ref().trim().to_string(), command })
            }
            (None, Some(c)) => {
                return Err(anyhow!(
                    "{}:{}: rotation.command: give rotation.admin too (the target that runs it)",
                    path.display(),
                    line_of(text, c.span().start)
                ))
            }
            (None, None) => None,
        };
        Ok(Rules { after_session: self.after_session, max_age, password, admin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_follow_the_rule() {
        let r = PasswordRule { length: 20, alphabet: Alphabet::Alnum };
        let a = r.generate();
        let b = r.generate();
        assert_ne!(a, b);
        let s = a.expose_str().unwrap();
        assert_eq!(s.len(), 20);
        assert!(s.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(s.bytes().any(|c| c.is_ascii_digit()) && s.bytes().any(|c| c.is_ascii_uppercase()));
        let d = PasswordRule { length: 8, alphabet: Alphabet::Digits }.generate();
        assert!(d.expose().iter().all(u8::is_ascii_digit));
    }
}
