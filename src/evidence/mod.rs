//! Signed evidence bundles: a tar that a third party can check without trusting the gateway.
//!
//! A bundle is one folder `penstock-evidence-<time>/` holding the recordings and their side
//! files, the session, transfer, grant, request and approval records as JSON, the audit-chain
//! segment that covers them (with the hash of the event just before it), the gateway's evidence
//! public key, a `README.txt`, a `MANIFEST` of SHA-256 sums in `sha256sum` format, and
//! `MANIFEST.sig`, an SSHSIG signature (namespace `penstock-evidence`) over `MANIFEST` by the
//! gateway's Ed25519 evidence key. `sha256sum -c MANIFEST` and `ssh-keygen -Y verify` check it
//! with stock tools; `penstock evidence verify` checks that and the chain and records too.

pub mod export;
pub mod tar;
pub mod verify;

use std::path::Path;

use anyhow::Context;
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::config::Config;

/// SSHSIG namespace of bundle signatures.
pub const NAMESPACE: &str = "penstock-evidence";
/// Principal named in the bundle's `allowed_signers`.
pub const PRINCIPAL: &str = "penstock";

/// Creates the evidence key if there is none; returns whether it did.
pub fn ensure_key(config: &Config) -> anyhow::Result<bool> {
    let path = config.evidence_key_path();
    if path.exists() {
        return Ok(false);
    }
    let key = crate::keys::generate_ed25519();
    crate::keys::write_private_key(&path, &key)
        .with_context(|| format!("cannot create evidence key {}", path.display()))?;
    Ok(true)
}

/// Loads the evidence key.
pub fn load_key(config: &Config) -> anyhow::Result<PrivateKey> {
    let path = config.evidence_key_path();
    if !path.exists() {
        anyhow::bail!("no evidence key at {} (run `penstock serve` once, or `penstock evidence key`)", path.display());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read evidence key {}", path.display()))?;
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("evidence key {} is malformed: {e}", path.display()))
}

/// `ssh-ed25519 AAAA… penstock-evidence`.
pub fn public_line(key: &PublicKey) -> String {
    format!("{} penstock-evidence", crate::keys::to_openssh(key))
}

/// The `allowed_signers` line for `ssh-keygen -Y verify`.
pub fn allowed_signers_line(key: &PublicKey) -> String {
    format!("{PRINCIPAL} namespaces=\"{NAMESPACE}\" {}\n", crate::keys::to_openssh(key))
}

/// SSHSIG (armored) over `msg`.
pub fn sign(key: &PrivateKey, msg: &[u8]) -> anyhow::Result<String> {
    let sig = key.sign(NAMESPACE, HashAlg::Sha512, msg).map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    sig.to_pem(LineEnding::LF).map_err(|e| anyhow::anyhow!("cannot encode signature: {e}"))
}

/// Parses an armored SSHSIG.
pub fn parse_sig(text: &[u8]) -> anyhow::Result<SshSig> {
    SshSig::from_pem(text).map_err(|e| anyhow::anyhow!("not an SSH signature: {e}"))
}

/// Reads a public key from a file holding one OpenSSH public key line (or an allowed_signers
/// line, whose key is the last two fields before any comment).
pub fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Ok(k) = PublicKey::from_openssh(line) {
            return Ok(k);
        }
        // allowed_signers: principals [options] keytype base64 [comment]
        let fields: Vec<&str> = line.split_whitespace().collect();
        for i in 0..fields.len().saturating_sub(1) {
            if fields[i].starts_with("ssh-") {
                if let Ok(k) = PublicKey::from_openssh(&format!("{} {}", fields[i], fields[i + 1])) {
                    return Ok(k);
                }
            }
        }
    }
    anyhow::bail!("{} holds no SSH public key", path.display())
}
