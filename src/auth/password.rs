//! Password hashing with Argon2id.
//!
//! Parameters: memory 19 MiB, 2 iterations, 1 lane, 32-byte output, 16-byte random salt
//! (OWASP's first recommended Argon2id setting). Stored as a PHC string.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::secret::Secret;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, Some(32)).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password for storage.
pub fn hash(password: &Secret) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.expose(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

/// Checks a password against a stored hash. A malformed hash never matches.
pub fn verify(password: &Secret, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => hasher().verify_password(password.expose(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a random value, checked against for unknown users so that their answer
/// takes as long as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&Secret::from_string(crate::auth::random_token(16))).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verify() {
        let h = hash(&Secret::from_string("correct horse".into())).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(&Secret::from_string("correct horse".into()), &h));
        assert!(!verify(&Secret::from_string("wrong".into()), &h));
        assert!(!verify(&Secret::from_string("x".into()), "garbage"));
    }
}
