//! The SSH login name: `VENDOR@TARGET` (CyberArk PSMP / WALLIX convention), `VENDOR:TARGET`
//! (Warpgate's), or plain `VENDOR` for the gateway's own command set.

/// A parsed login name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Penstock user.
    pub user: String,
    /// Target, if one was named.
    pub target: Option<String>,
}

/// Splits a login name at the first `@` or `:`. Names themselves contain neither.
pub fn parse(login: &str) -> Login {
    match login.find(['@', ':']) {
        Some(i) => {
            Login { user: login[..i].to_string(), target: Some(login[i + 1..].to_string()).filter(|t| !t.is_empty()) }
        }
        None => Login { user: login.to_string(), target: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("alice@plc-line3"), Login { user: "alice".into(), target: Some("plc-line3".into()) });
        assert_eq!(parse("alice:plc-line3"), Login { user: "alice".into(), target: Some("plc-line3".into()) });
        assert_eq!(parse("alice"), Login { user: "alice".into(), target: None });
        assert_eq!(parse("alice@"), Login { user: "alice".into(), target: None });
    }
}
