//! SSH key helpers: parsing public keys users paste, fingerprints, and the gateway's host key.

use std::path::Path;

use anyhow::{bail, Context};
use rand::RngCore;
use russh::keys::ssh_key::{self, HashAlg, LineEnding, PrivateKey, PublicKey};

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public_key(line: &str) -> anyhow::Result<PublicKey> {
    let line = line.trim();
    if line.is_empty() {
        bail!("empty public key");
    }
    PublicKey::from_openssh(line).map_err(|e| {
        let shown: String = line.chars().take(24).collect();
        anyhow::anyhow!("malformed SSH public key {shown:?}…: {e}")
    })
}

/// `SHA256:…` fingerprint of a public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The key as `algorithm base64` without a comment.
pub fn to_openssh(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh().unwrap_or_default().trim().to_string()
}

/// Whether two public keys are the same key (comments ignored).
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// A fresh Ed25519 private key.
pub fn generate_ed25519() -> PrivateKey {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    let kp = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    PrivateKey::from(kp)
}

/// Writes a private key in OpenSSH format with mode 0600; refuses to overwrite.
pub fn write_private_key(path: &Path, key: &PrivateKey) -> anyhow::Result<()> {
    let pem = key.to_openssh(LineEnding::LF).context("cannot encode host key")?;
    crate::cli::fsutil::write_new_file(path, pem.as_bytes(), 0o600)
}

/// Loads the gateway host key.
pub fn load_private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read host key {}", path.display()))?;
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("host key {} is malformed: {e}", path.display()))
}

/// Parses a private key given for a target (OpenSSH or PEM), optionally unencrypted only.
pub fn parse_private_key(text: &[u8]) -> anyhow::Result<PrivateKey> {
    let key = PrivateKey::from_openssh(text).map_err(|e| anyhow::anyhow!("malformed private key: {e}"))?;
    if key.is_encrypted() {
        bail!("the private key is passphrase-protected; give an unencrypted key (it is encrypted in the vault)");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fingerprint() {
        let k = generate_ed25519();
        let line = format!("{} alice@laptop", to_openssh(k.public_key()));
        let p = parse_public_key(&line).unwrap();
        assert!(same_key(&p, k.public_key()));
        assert!(fingerprint(&p).starts_with("SHA256:"));
        assert!(parse_public_key("ssh-ed25519 AAAAnotbase64!!").is_err());
        assert!(parse_public_key("").is_err());
    }
}
