//! The gateway's TLS identity: one certificate and key (`[tls]`) shared by every TLS front end
//! (web console, RDP), made self-signed with rcgen when none is configured, and its SHA-256
//! thumbprint, which vendors and browsers pin.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// A loaded certificate chain and its private key.
pub struct TlsIdentity {
    /// Chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("thumbprint", &self.thumbprint()).field("key", &"[redacted]").finish()
    }
}

impl TlsIdentity {
    /// SHA-256 of the leaf certificate as colon-separated upper-case hex (the form
    /// `xfreerdp /cert:fingerprint:sha256:…` and browsers show).
    pub fn thumbprint(&self) -> String {
        self.certs.first().map(|c| thumbprint(c.as_ref())).unwrap_or_default()
    }

    /// A rustls server configuration with this identity, offering `alpn` protocols in order.
    pub fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| anyhow::anyhow!("TLS certificate and key do not fit together: {e}"))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// SHA-256 of a DER certificate, `AB:CD:…`.
pub fn thumbprint(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Creates a self-signed certificate and key when neither file exists. Returns whether it made
/// them; one file without the other is an error (someone's half-finished setup is not replaced).
pub fn ensure(config: &Config) -> anyhow::Result<bool> {
    let (cert, key) = (config.tls_cert_path(), config.tls_key_path());
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (true, false) => bail!("TLS certificate {} exists but its key {} does not", cert.display(), key.display()),
        (false, true) => bail!("TLS key {} exists but its certificate {} does not", key.display(), cert.display()),
    }
    generate(&cert, &key)?;
    Ok(true)
}

/// Writes a new self-signed certificate for this host (ten years; names: the host name,
/// `localhost`, 127.0.0.1 and ::1) and its key (mode 0600).
pub fn generate(cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Some(h) = host_name() {
        names.insert(0, h);
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| anyhow::anyhow!("cannot make a TLS certificate: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Penstock gateway");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Penstock");
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow::anyhow!("cannot make a TLS key: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| anyhow::anyhow!("cannot sign the TLS certificate: {e}"))?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    crate::cli::fsutil::write_new_file(key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = crate::cli::fsutil::write_new_file(cert_path, cert.pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

/// Loads `[tls]` cert and key.
pub fn load(config: &Config) -> anyhow::Result<TlsIdentity> {
    let (cert_path, key_path) = (config.tls_cert_path(), config.tls_key_path());
    let text = std::fs::read(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {} (run `penstock init`)", cert_path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("TLS certificate {} is malformed: {e}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("TLS certificate {} holds no certificate", cert_path.display());
    }
    let key_text = zeroize::Zeroizing::new(
        std::fs::read(&key_path).with_context(|| format!("cannot read TLS key {}", key_path.display()))?,
    );
    let key = PrivateKeyDer::from_pem_slice(&key_text)
        .map_err(|e| anyhow::anyhow!("TLS key {} is malformed: {e}", key_path.display()))?;
    let id = TlsIdentity { certs, key };
    // Catch a key that does not belong to the certificate now, not at the first client.
    id.server_config(&[])?;
    Ok(id)
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_loads_and_serves() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("penstock.toml");
        let cfg = Config::parse("", &cfg_path, &[]).unwrap();
        assert!(ensure(&cfg).unwrap());
        assert!(!ensure(&cfg).unwrap(), "a second call keeps the existing files");
        let id = load(&cfg).unwrap();
        let t = id.thumbprint();
        assert_eq!(t.len(), 32 * 3 - 1, "{t}");
        assert_eq!(t, thumbprint(id.certs[0].as_ref()));
        assert!(!format!("{id:?}").contains("PRIVATE"));
        id.server_config(&[b"h2", b"http/1.1"]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cfg.tls_key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn half_a_setup_and_a_mismatched_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse("", &dir.path().join("penstock.toml"), &[]).unwrap();
        std::fs::write(cfg.tls_cert_path(), "x").unwrap();
        let err = ensure(&cfg).unwrap_err().to_string();
        assert!(err.contains("its key"), "{err}");
        std::fs::remove_file(cfg.tls_cert_path()).unwrap();
        // Two identities, then the second's key under the first's certificate.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        generate(&other.join("c.pem"), &other.join("k.pem")).unwrap();
        ensure(&cfg).unwrap();
        std::fs::copy(other.join("k.pem"), cfg.tls_key_path()).unwrap();
        let err = load(&cfg).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        std::fs::write(cfg.tls_cert_path(), "not pem").unwrap();
        let err = load(&cfg).unwrap_err().to_string();
        assert!(err.contains("holds no certificate") || err.contains("malformed"), "{err}");
    }
}
