//! The vault: every target secret and TOTP seed is sealed with XChaCha20-Poly1305 under the
//! master key. The associated data binds each ciphertext to its owner row, kind and version, so a
//! ciphertext copied to another row does not open.

use std::path::Path;

use anyhow::{bail, Context};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::secret::Secret;

const NONCE_LEN: usize = 24;
/// Plaintext sealed at `init` to tell a wrong master key from a right one.
const CHECK_PLAINTEXT: &[u8] = b"penstock vault check v1";
/// Associated data of the check value.
pub const CHECK_AAD: &str = "penstock:meta:vault_check";

/// The 32-byte master key.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// Reads a key file: 64 hex digits (optionally followed by a newline) or 32 raw bytes.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let raw =
            Zeroizing::new(std::fs::read(path).with_context(|| format!("cannot read master key {}", path.display()))?);
        let mut k = Zeroizing::new([0u8; 32]);
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        if text.len() == 64 && hex::decode_to_slice(text, k.as_mut()).is_ok() {
            return Ok(Self(k));
        }
        if raw.len() == 32 {
            k.copy_from_slice(&raw);
            return Ok(Self(k));
        }
        bail!(
            "master key {} is malformed: expected 64 hex digits or 32 bytes, found {} bytes",
            path.display(),
            raw.len()
        )
    }

    /// The key as hex text, as `init` writes it.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }
}

/// Seals and opens secrets.
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

/// Associated data for a secret of `owner_kind`/`owner_id`, `kind`, `version`.
pub fn secret_aad(owner_kind: &str, owner_id: i64, kind: &str, version: i64) -> String {
    format!("penstock:secret:{owner_kind}:{owner_id}:{kind}:{version}")
}

impl Vault {
    /// A vault using `key`.
    pub fn new(key: &MasterKey) -> Self {
        Self { cipher: XChaCha20Poly1305::new(key.0.as_ref().into()) }
    }

    /// Encrypts `plain`, bound to `aad`. Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: aad.as_bytes() })
            .map_err(|_| anyhow::anyhow!("vault: encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`Vault::seal`] made with the same `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> anyhow::Result<Secret> {
        if sealed.len() < NONCE_LEN + 16 {
            bail!("vault: ciphertext for {aad} is truncated");
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| anyhow::anyhow!("vault: cannot decrypt {aad} (wrong master key or tampered row)"))?;
        Ok(Secret::new(plain))
    }

    /// The value stored at `init` that proves this key is the database's key.
    pub fn check_value(&self) -> anyhow::Result<Vec<u8>> {
        self.seal(CHECK_AAD, CHECK_PLAINTEXT)
    }

    /// Whether `sealed` is this key's check value.
    pub fn verify_check_value(&self, sealed: &[u8]) -> bool {
        self.open(CHECK_AAD, sealed).map(|s| s.expose() == CHECK_PLAINTEXT).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let v = Vault::new(&MasterKey::generate());
        let aad = secret_aad("target", 1, "password", 1);
        let sealed = v.seal(&aad, b"s3cret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(v.open(&aad, &sealed).unwrap().expose(), b"s3cret");
        // Bound to its row: another owner or version does not open.
        assert!(v.open(&secret_aad("target", 2, "password", 1), &sealed).is_err());
        assert!(v.open(&secret_aad("target", 1, "password", 2), &sealed).is_err());
        // A flipped bit does not open.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(v.open(&aad, &bad).is_err());
    }

    #[test]
    fn wrong_key_fails_check() {
        let v1 = Vault::new(&MasterKey::generate());
        let v2 = Vault::new(&MasterKey::generate());
        let check = v1.check_value().unwrap();
        assert!(v1.verify_check_value(&check));
        assert!(!v2.verify_check_value(&check));
    }

    #[test]
    fn key_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let k = MasterKey::generate();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("{}\n", k.to_hex().as_str())).unwrap();
        let k2 = MasterKey::load(&p).unwrap();
        assert_eq!(k.to_hex(), k2.to_hex());
        std::fs::write(&p, b"short").unwrap();
        let e = MasterKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
    }
}
