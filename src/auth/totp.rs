//! TOTP (RFC 6238: SHA-1, 6 digits, 30-second steps) with ±1 step of skew and a replay guard:
//! a step once accepted for a user is never accepted again.

use totp_rs::{Algorithm, TOTP};

use crate::secret::Secret;

/// Seconds per step.
pub const STEP: i64 = 30;

fn totp(seed: &Secret, issuer: &str, account: &str) -> anyhow::Result<TOTP> {
    TOTP::new(Algorithm::SHA1, 6, 1, STEP as u64, seed.expose().to_vec(), Some(issuer.to_string()), account.to_string())
        .map_err(|e| anyhow::anyhow!("bad TOTP parameters: {e}"))
}

/// A new random 20-byte seed.
pub fn new_seed() -> Secret {
    use rand::RngCore;
    let mut b = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut b);
    Secret::new(b)
}

/// The `otpauth://totp/...` URI for enrolment in an authenticator app.
pub fn otpauth_uri(seed: &Secret, issuer: &str, account: &str) -> anyhow::Result<Secret> {
    Ok(Secret::from_string(totp(seed, issuer, account)?.get_url()))
}

/// The code for `now` (for tests and tools).
pub fn code_at(seed: &Secret, now: i64) -> String {
    totp(seed, "x", "x").map(|t| t.generate(now.max(0) as u64)).unwrap_or_default()
}

/// The step `code` belongs to, within ±1 step of `now` and strictly after `last_step`.
pub fn accepted_step(seed: &Secret, code: &str, now: i64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(seed, "x", "x").ok()?;
    let current = now / STEP;
    let mut found = None;
    for step in [current - 1, current, current + 1] {
        if step <= last_step || step < 0 {
            continue;
        }
        let expected = t.generate((step * STEP) as u64);
        if constant_eq(expected.as_bytes(), code.as_bytes()) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The URI drawn as a QR code for a terminal, two rows a line.
pub fn qr_for_terminal(uri: &Secret) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(uri.expose()) {
        Ok(code) => {
            code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build()
        }
        Err(e) => format!("(cannot draw QR code: {e})"),
    }
}

/// The URI drawn as a QR code in SVG (an inline `<svg>` element: no script, no image request),
/// for a page that shows an enrolment once.
pub fn qr_svg(uri: &Secret) -> String {
    let code = match qrcode::QrCode::new(uri.expose()) {
        Ok(c) => c,
        Err(e) => return format!("<p>(cannot draw QR code: {e})</p>"),
    };
    let w = code.width();
    let mut path = String::new();
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == qrcode::Color::Dark {
            path.push_str(&format!("M{} {}h1v1h-1z", i % w, i / w));
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"-4 -4 {s} {s}\" width=\"240\" height=\"240\" role=\"img\" \
         aria-label=\"QR code of the authenticator enrolment\"><rect x=\"-4\" y=\"-4\" width=\"{s}\" height=\"{s}\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>",
        s = w + 8
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_within_skew_once() {
        let seed = new_seed();
        let now = 1_800_000_000;
        let code = code_at(&seed, now);
        let step = accepted_step(&seed, &code, now, 0).unwrap();
        assert_eq!(step, now / STEP);
        // Replay of the same step is refused.
        assert_eq!(accepted_step(&seed, &code, now, step), None);
        // ±1 step accepted, ±2 not.
        let prev = code_at(&seed, now - STEP);
        assert!(accepted_step(&seed, &prev, now, 0).is_some());
        let old = code_at(&seed, now - 2 * STEP);
        assert!(old == code || old == prev || accepted_step(&seed, &old, now, 0).is_none());
        // Another user's seed does not accept it.
        let other = new_seed();
        let c = code_at(&other, now);
        assert!(c == code || accepted_step(&seed, &c, now, 0).is_none());
        assert_eq!(accepted_step(&seed, "12345", now, 0), None);
        assert_eq!(accepted_step(&seed, "abcdef", now, 0), None);
    }

    #[test]
    fn uri_and_qr() {
        let seed = new_seed();
        let uri = otpauth_uri(&seed, "Penstock", "alice").unwrap();
        let s = uri.expose_str().unwrap();
        assert!(s.starts_with("otpauth://totp/Penstock:alice?"), "{s}");
        assert!(qr_for_terminal(&uri).lines().count() > 10);
    }
}
