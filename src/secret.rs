//! [`Secret`]: bytes that must never be shown. Debug and Display print `[REDACTED]` and the
//! memory is zeroed when dropped.

use std::fmt;

use zeroize::Zeroizing;

/// A secret value (password, private key, TOTP seed, grant credential).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Wraps a string.
    pub fn from_string(s: String) -> Self {
        Self::new(s.into_bytes())
    }

    /// The bytes, for the one place that must use them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as UTF-8 text, if it is text.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::from_string("hunter2-plc".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose_str(), Some("hunter2-plc"));
    }
}
