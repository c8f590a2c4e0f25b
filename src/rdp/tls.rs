//! TLS on the RDP legs: the gateway's identity towards vendors, and towards targets a rustls
//! verifier that accepts exactly the pinned SHA-256 thumbprint (RDP servers are self-signed;
//! no CA chain means anything, the pin is the identity).

use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use x509_cert::der::Decode;

use crate::tls_identity::thumbprint;

/// Checks the target's leaf certificate against a pinned thumbprint; remembers what was shown.
#[derive(Debug)]
pub struct PinnedCert {
    /// `AB:CD:…`; `None` accepts any certificate (only for `target add --fetch-cert`).
    expected: Option<String>,
    presented: Mutex<Option<(String, Vec<u8>)>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCert {
    /// A verifier for `expected` (normalized `AB:CD:…`), or one that accepts and records any
    /// certificate when `None`.
    pub fn new(expected: Option<String>) -> Arc<PinnedCert> {
        Arc::new(PinnedCert {
            expected,
            presented: Mutex::new(None),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// The thumbprint and DER of the certificate the server presented, if the handshake got
    /// that far.
    pub fn presented(&self) -> Option<(String, Vec<u8>)> {
        self.presented.lock().ok().and_then(|p| p.clone())
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = thumbprint(end_entity.as_ref());
        if let Ok(mut p) = self.presented.lock() {
            *p = Some((got.clone(), end_entity.as_ref().to_vec()));
        }
        match &self.expected {
            None => Ok(ServerCertVerified::assertion()),
            Some(want) if *want == got => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General("certificate thumbprint does not match the pinned one".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why the TLS handshake towards a target failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The target showed another certificate than the pinned one.
    #[error("the target's certificate does not match the pinned thumbprint")]
    Mismatch {
        /// What it showed.
        presented: String,
    },
    /// Anything else (protocol versions, I/O).
    #[error("TLS handshake with the target failed: {0}")]
    Other(String),
}

/// TLS client handshake on `tcp` towards `host`, checked by `verifier`.
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    verifier: Arc<PinnedCert>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientTlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientTlsError::Other(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    // CredSSP binds to this TLS channel's public key; session resumption would skip the
    // certificate check of a fresh connection.
    cfg.resumption = rustls::client::Resumption::disabled();
    let name = ServerName::try_from(host.to_string()).map_err(|e| ClientTlsError::Other(e.to_string()))?;
    match tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await {
        Ok(s) => Ok(s),
        Err(e) => match (&verifier.expected, verifier.presented()) {
            (Some(want), Some((got, _))) if *want != got => Err(ClientTlsError::Mismatch { presented: got }),
            _ => Err(ClientTlsError::Other(e.to_string())),
        },
    }
}

/// The `subjectPublicKey` bits of a DER certificate: what CredSSP binds the authentication to.
pub fn public_key(cert_der: &[u8]) -> anyhow::Result<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| anyhow::anyhow!("cannot parse the TLS certificate: {e}"))?;
    Ok(cert.tbs_certificate().subject_public_key_info().subject_public_key.raw_bytes().to_vec())
}
