//! Which SSH algorithms each leg offers, and what an old target offers when it has nothing in
//! common with them.
//!
//! Both legs offer the same modern set by default: ML-KEM/curve25519 key exchange, Ed25519,
//! RSA-SHA2 and ECDSA host keys, AEAD ciphers (the gateway's server also keeps AES-CTR for older
//! vendor clients, always with an ETM MAC), and encrypt-then-MAC MACs. No SHA-1, no CBC, no
//! finite-field Diffie-Hellman. Old devices (dropbear on a PLC's comms module, an HMI with an
//! old OpenSSH) that speak only `ssh-rsa`, `diffie-hellman-group14-sha1`, `aes128-cbc` or
//! `hmac-sha1` get those only when their target opts in (`--legacy-crypto`).

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{cipher, kex, mac, Preferred};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODERN_KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

const LEGACY_KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::ECDH_SHA2_NISTP256,
    kex::ECDH_SHA2_NISTP384,
    kex::ECDH_SHA2_NISTP521,
    kex::DH_G16_SHA512,
    kex::DH_G14_SHA256,
    kex::DH_GEX_SHA256,
    kex::DH_G14_SHA1,
    kex::DH_GEX_SHA1,
    kex::DH_G1_SHA1,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

const MODERN_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
    Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
];

const LEGACY_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
    Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
    Algorithm::Rsa { hash: None },
];

/// AES-GCM first (hardware-accelerated through aws-lc-rs), then ChaCha20-Poly1305.
const AEAD_CIPHERS: &[cipher::Name] = &[cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305];

/// The server also accepts AES-CTR (with an ETM MAC) from older vendor clients.
const SERVER_CIPHERS: &[cipher::Name] =
    &[cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305, cipher::AES_256_CTR, cipher::AES_128_CTR];

const LEGACY_CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
    cipher::AES_256_CBC,
    cipher::AES_192_CBC,
    cipher::AES_128_CBC,
];

const ETM_MACS: &[mac::Name] = &[mac::HMAC_SHA256_ETM, mac::HMAC_SHA512_ETM];

const LEGACY_MACS: &[mac::Name] = &[
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256,
    mac::HMAC_SHA512,
    mac::HMAC_SHA1_ETM,
    mac::HMAC_SHA1,
];

/// What the gateway's SSH server offers vendors.
pub fn server() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(MODERN_KEX),
        key: Cow::Borrowed(MODERN_KEYS),
        cipher: Cow::Borrowed(SERVER_CIPHERS),
        mac: Cow::Borrowed(ETM_MACS),
        ..Preferred::default()
    }
}

/// What the gateway's client offers a target: the modern set, or with `legacy` (the target's
/// `--legacy-crypto` opt-in) also SHA-1, CBC and finite-field Diffie-Hellman.
pub fn client(legacy: bool) -> Preferred {
    if legacy {
        Preferred {
            kex: Cow::Borrowed(LEGACY_KEX),
            key: Cow::Borrowed(LEGACY_KEYS),
            cipher: Cow::Borrowed(LEGACY_CIPHERS),
            mac: Cow::Borrowed(LEGACY_MACS),
            ..Preferred::default()
        }
    } else {
        Preferred {
            kex: Cow::Borrowed(MODERN_KEX),
            key: Cow::Borrowed(MODERN_KEYS),
            cipher: Cow::Borrowed(AEAD_CIPHERS),
            mac: Cow::Borrowed(ETM_MACS),
            ..Preferred::default()
        }
    }
}

/// The algorithm lists of a server's KEXINIT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// Key exchange.
    pub kex: Vec<String>,
    /// Host key algorithms.
    pub host_keys: Vec<String>,
    /// Ciphers (client to server).
    pub ciphers: Vec<String>,
    /// MACs (client to server).
    pub macs: Vec<String>,
}

impl Offer {
    /// The kinds of algorithm for which the modern client set has nothing in common with this
    /// offer, each with what the target offered: empty when the modern set would do.
    pub fn missing_from_modern(&self) -> Vec<String> {
        let modern = client(false);
        let kex: Vec<&str> = modern.kex.iter().map(|n| n.as_ref()).collect();
        let keys: Vec<String> = modern.key.iter().map(|a| a.to_string()).collect();
        let ciphers: Vec<&str> = modern.cipher.iter().map(|n| n.as_ref()).collect();
        let macs: Vec<&str> = modern.mac.iter().map(|n| n.as_ref()).collect();
        let none_of = |offered: &[String], ours: &[&str]| !offered.iter().any(|o| ours.contains(&o.as_str()));
        let keys_ref: Vec<&str> = keys.iter().map(String::as_str).collect();
        let kex_real: Vec<String> =
            self.kex.iter().filter(|k| !k.starts_with("ext-info") && !k.starts_with("kex-strict")).cloned().collect();
        let mut out = Vec::new();
        if none_of(&kex_real, &kex) {
            out.push(format!("key exchange {}", kex_real.join(",")));
        }
        if none_of(&self.host_keys, &keys_ref) {
            out.push(format!("host keys {}", self.host_keys.join(",")));
        }
        // An AEAD cipher needs no MAC: the MAC list matters only when no AEAD cipher is common.
        let aead = !none_of(&self.ciphers, &ciphers);
        if !aead {
            out.push(format!("ciphers {}", self.ciphers.join(",")));
            if none_of(&self.macs, &macs) {
                out.push(format!("MACs {}", self.macs.join(",")));
            }
        }
        out
    }
}

/// Most bytes read while probing (banner lines and one packet).
const PROBE_LIMIT: usize = 64 * 1024;

/// Connects to `host:port` and reads the algorithm lists of its KEXINIT (nothing is negotiated;
/// the connection is dropped right after).
pub async fn probe(host: &str, port: u16, timeout: Duration) -> anyhow::Result<Offer> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await?;
        s.write_all(b"SSH-2.0-Penstock_probe\r\n").await?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        // Banner: lines until one starting with "SSH-".
        let body_start = loop {
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the target closed the connection before its SSH banner");
            buf.extend_from_slice(&chunk[..n]);
            anyhow::ensure!(buf.len() <= PROBE_LIMIT, "the target sent no SSH banner");
            if let Some(end) = banner_end(&buf) {
                break end;
            }
        };
        loop {
            if let Some(offer) = parse_kexinit(&buf[body_start..])? {
                return Ok(offer);
            }
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the target closed the connection before its key exchange offer");
            buf.extend_from_slice(&chunk[..n]);
            anyhow::ensure!(buf.len() <= PROBE_LIMIT, "the target's key exchange offer is too large");
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| anyhow::anyhow!("probing {host}:{port} timed out"))?
}

/// Where the byte after the server's `SSH-` line is, once it has arrived.
fn banner_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
        let line = &buf[start..start + nl];
        start += nl + 1;
        if line.starts_with(b"SSH-") {
            return Some(start);
        }
    }
    None
}

/// Parses the first binary packet (an unencrypted KEXINIT); `None` while incomplete.
fn parse_kexinit(b: &[u8]) -> anyhow::Result<Option<Offer>> {
    if b.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    anyhow::ensure!((5..=PROBE_LIMIT).contains(&len), "the target sent a malformed SSH packet");
    if b.len() < 4 + len {
        return Ok(None);
    }
    let pad = b[4] as usize;
    anyhow::ensure!(pad < len, "the target sent a malformed SSH packet");
    let payload = &b[5..4 + len - pad];
    anyhow::ensure!(payload.first() == Some(&20) && payload.len() >= 17, "the target did not start a key exchange");
    let mut rest = &payload[17..];
    // kex, host keys, ciphers c→s, ciphers s→c, MACs c→s, MACs s→c, …
    let mut lists: Vec<Vec<String>> = Vec::new();
    for _ in 0..6 {
        anyhow::ensure!(rest.len() >= 4, "the target's key exchange offer is truncated");
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        anyhow::ensure!(rest.len() >= 4 + n, "the target's key exchange offer is truncated");
        let names = String::from_utf8_lossy(&rest[4..4 + n]);
        lists.push(names.split(',').filter(|s| !s.is_empty()).map(|s| s.chars().take(64).collect()).collect());
        rest = &rest[4 + n..];
    }
    let mut take = |i: usize| std::mem::take(&mut lists[i]);
    Ok(Some(Offer { kex: take(0), host_keys: take(1), ciphers: take(2), macs: take(4) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_modern_client_offers_no_sha1_cbc_or_finite_field_dh() {
        let p = client(false);
        let all: Vec<String> = p
            .kex
            .iter()
            .map(|n| n.as_ref().to_string())
            .chain(p.key.iter().map(|a| a.to_string()))
            .chain(p.cipher.iter().map(|n| n.as_ref().to_string()))
            .chain(p.mac.iter().map(|n| n.as_ref().to_string()))
            .collect();
        for bad in ["ssh-rsa", "diffie-hellman", "cbc", "hmac-sha1", "ctr"] {
            assert!(!all.iter().any(|a| a == bad || (bad != "ssh-rsa" && a.contains(bad))), "{bad} offered: {all:?}");
        }
        assert!(client(true).key.iter().any(|a| a.to_string() == "ssh-rsa"));
    }

    #[test]
    fn a_legacy_offer_is_explained_kind_by_kind() {
        let legacy = Offer {
            kex: names(&["diffie-hellman-group14-sha1", "ext-info-s"]),
            host_keys: names(&["ssh-rsa"]),
            ciphers: names(&["aes128-cbc"]),
            macs: names(&["hmac-sha1"]),
        };
        let m = legacy.missing_from_modern();
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m[0].contains("diffie-hellman-group14-sha1") && !m[0].contains("ext-info"));
        let modern = Offer {
            kex: names(&["curve25519-sha256"]),
            host_keys: names(&["ssh-ed25519"]),
            ciphers: names(&["aes128-ctr", "chacha20-poly1305@openssh.com"]),
            macs: names(&["hmac-sha1"]),
        };
        assert!(modern.missing_from_modern().is_empty(), "an AEAD cipher needs no MAC");
    }

    #[test]
    fn kexinit_parsing_waits_for_the_whole_packet_and_bounds_sizes() {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[0u8; 16]);
        for l in [
            "curve25519-sha256",
            "ssh-ed25519",
            "aes128-gcm@openssh.com",
            "aes128-gcm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
        ] {
            payload.extend_from_slice(&(l.len() as u32).to_be_bytes());
            payload.extend_from_slice(l.as_bytes());
        }
        let pad = 4u8;
        let len = (payload.len() + 1 + pad as usize) as u32;
        let mut pkt = len.to_be_bytes().to_vec();
        pkt.push(pad);
        pkt.extend_from_slice(&payload);
        pkt.extend_from_slice(&[0u8; 4]);
        assert_eq!(parse_kexinit(&pkt[..pkt.len() - 1]).expect("partial"), None);
        let offer = parse_kexinit(&pkt).expect("parse").expect("complete");
        assert_eq!(offer.host_keys, vec!["ssh-ed25519".to_string()]);
        assert_eq!(offer.macs, vec!["hmac-sha2-256-etm@openssh.com".to_string()]);
        assert!(parse_kexinit(&[0xff, 0xff, 0xff, 0xff, 0]).is_err());
        assert_eq!(banner_end(b"hello\r\nSSH-2.0-x\r\nrest"), Some(18));
    }
}
