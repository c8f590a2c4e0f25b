//! Targets: the OT hosts behind the gateway, their pinned identity and vaulted credential.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::app::App;
use crate::audit::{self, Event};
use crate::error::{invalid, Error, Result};
use crate::secret::Secret;
use crate::users::{check_name, conflict_or};
use crate::vault::secret_aad;

/// How the gateway logs in to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A password.
    Password,
    /// An SSH private key.
    PrivateKey,
    /// Answers to keyboard-interactive prompts, in order.
    KeyboardInteractive,
}

impl CredentialKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::PrivateKey => "private_key",
            CredentialKind::KeyboardInteractive => "keyboard_interactive",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "password" => Ok(Self::Password),
            "private_key" => Ok(Self::PrivateKey),
            "keyboard_interactive" => Ok(Self::KeyboardInteractive),
            _ => Err(invalid(format!("unknown credential kind {s:?}"))),
        }
    }
}

/// A stored target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Row id.
    pub id: i64,
    /// Name vendors use (`alice@NAME`).
    pub name: String,
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Account on the target.
    pub login: String,
    /// Kind of vaulted credential.
    pub credential_kind: CredentialKind,
    /// Pinned host key, OpenSSH format.
    pub host_key: Option<String>,
    /// Site tag.
    pub site: Option<String>,
    /// Zone tag.
    pub zone: Option<String>,
    /// Criticality tag.
    pub criticality: Option<String>,
    /// Whether the gateway may use legacy SSH algorithms (SHA-1, CBC, finite-field DH) towards
    /// this target (`--legacy-crypto`).
    pub legacy_crypto: bool,
    /// RDP: the pinned SHA-256 thumbprint of the target's TLS certificate (`AB:CD:…`).
    pub cert_sha256: Option<String>,
    /// RDP: log in with NLA (CredSSP); false puts the vaulted account in the Client Info PDU.
    pub rdp_nla: bool,
}

impl Target {
    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Fingerprint of the pinned host key.
    pub fn host_key_fingerprint(&self) -> Option<String> {
        let k = crate::keys::parse_public_key(self.host_key.as_deref()?).ok()?;
        Some(crate::keys::fingerprint(&k))
    }
}

const COLUMNS: &str = "id, name, protocol, host, port, login, credential_kind, host_key, site, zone, criticality, legacy_crypto, cert_sha256, rdp_nla";

fn from_row(r: &AnyRow) -> Result<Target> {
    let kind: String = r.try_get(6)?;
    let port: i64 = r.try_get(4)?;
    Ok(Target {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        protocol: r.try_get(2)?,
        host: r.try_get(3)?,
        port: u16::try_from(port).map_err(|_| invalid("stored port out of range"))?,
        login: r.try_get(5)?,
        credential_kind: CredentialKind::parse(&kind)?,
        host_key: r.try_get(7)?,
        site: r.try_get(8)?,
        zone: r.try_get(9)?,
        criticality: r.try_get(10)?,
        legacy_crypto: r.try_get::<i64, _>(11)? != 0,
        cert_sha256: r.try_get(12)?,
        rdp_nla: r.try_get::<i64, _>(13)? != 0,
    })
}

/// Splits `host:port` (or `[v6]:port`; port defaults to 22).
pub fn parse_address(addr: &str) -> Result<(String, u16)> {
    parse_address_or(addr, 22)
}

/// Splits `host:port` (or `[v6]:port`), with the port `default_port` when none is given.
pub fn parse_address_or(addr: &str, default_port: u16) -> Result<(String, u16)> {
    let bad = || invalid(format!("invalid address {addr:?}: expected HOST:PORT"));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (addr.to_string(), ""),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = if port.is_empty() { default_port } else { port.parse::<u16>().map_err(|_| bad())? };
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// What `add` needs.
#[derive(Debug)]
pub struct NewTarget {
    /// Name.
    pub name: String,
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// `host:port`.
    pub address: String,
    /// Login on the target.
    pub login: String,
    /// Credential kind and value.
    pub credential: (CredentialKind, Secret),
    /// Pinned host key (OpenSSH public key line).
    pub host_key: Option<String>,
    /// Tags.
    pub site: Option<String>,
    /// Tags.
    pub zone: Option<String>,
    /// Tags.
    pub criticality: Option<String>,
    /// Allow legacy SSH algorithms towards it.
    pub legacy_crypto: bool,
    /// RDP: pinned certificate thumbprint (SHA-256 hex, with or without colons).
    pub cert_sha256: Option<String>,
    /// RDP: NLA towards the target (else auto-logon through Client Info).
    pub rdp_nla: bool,
}

/// Normalizes a SHA-256 thumbprint (hex, any case, colons or not) to `AB:CD:…`.
pub fn normalize_thumbprint(s: &str) -> Result<String> {
    let hex_only: String = s.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex_only)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| invalid("a certificate thumbprint is 64 hexadecimal digits (SHA-256)"))?;
    Ok(bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

/// Validates a credential before it is sealed.
fn check_credential(kind: CredentialKind, secret: &Secret) -> Result<()> {
    if secret.is_empty() {
        return Err(invalid("the target credential is empty"));
    }
    if kind == CredentialKind::PrivateKey {
        crate::keys::parse_private_key(secret.expose()).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Creates a target with its sealed credential, in one transaction.
pub async fn add(app: &App, actor: &str, t: NewTarget) -> Result<Target> {
    check_name("target", &t.name)?;
    let rdp = match t.protocol.as_str() {
        "ssh" => false,
        "rdp" => true,
        _ => return Err(invalid(format!("unsupported protocol {:?} (supported: ssh, rdp)", t.protocol))),
    };
    let (host, port) = parse_address_or(&t.address, if rdp { 3389 } else { 22 })?;
    if t.login.is_empty() {
        return Err(invalid("--login is required"));
    }
    let cert_sha256 = match (&t.cert_sha256, rdp) {
        (Some(c), true) => Some(normalize_thumbprint(c)?),
        (None, true) => {
            return Err(invalid("an RDP target's certificate must be pinned: give --cert-sha256 or --fetch-cert"))
        }
        (Some(_), false) => return Err(invalid("--cert-sha256 is for RDP targets; SSH targets pin a host key")),
        (None, false) => None,
    };
    if rdp && t.credential.0 != CredentialKind::Password {
        return Err(invalid("an RDP target's credential is a password (--password-stdin)"));
    }
    if rdp && (t.host_key.is_some() || t.legacy_crypto) {
        return Err(invalid("--host-key and --legacy-crypto are for SSH targets"));
    }
    let host_key = match &t.host_key {
        Some(line) => {
            let k = crate::keys::parse_public_key(line).map_err(|e| invalid(format!("--host-key: {e}")))?;
            Some(crate::keys::to_openssh(&k))
        }
        None => None,
    };
    check_credential(t.credential.0, &t.credential.1)?;
    if get(app, &t.name).await.is_ok() {
        return Err(Error::Conflict(format!("target {:?} already exists", t.name)));
    }
    let mut tx = app.store.begin_write().await?;
    let id: i64 = sqlx::query(
        "INSERT INTO targets (name, protocol, host, port, login, credential_kind, host_key, site, zone, criticality, created_at, legacy_crypto, cert_sha256, rdp_nla) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
    )
    .bind(&t.name)
    .bind(&t.protocol)
    .bind(&host)
    .bind(i64::from(port))
    .bind(&t.login)
    .bind(t.credential.0.as_str())
    .bind(host_key.clone())
    .bind(t.site.clone())
    .bind(t.zone.clone())
    .bind(t.criticality.clone())
    .bind(app.clock.now())
    .bind(i64::from(t.legacy_crypto))
    .bind(cert_sha256.clone())
    .bind(i64::from(t.rdp_nla))
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| conflict_or(e, || format!("target {:?} already exists", t.name)))?
    .try_get(0)?;
    seal_secret(app, &mut tx, id, t.credential.0, &t.credential.1, 1).await?;
    let target = Target {
        id,
        name: t.name.clone(),
        protocol: t.protocol.clone(),
        host,
        port,
        login: t.login.clone(),
        credential_kind: t.credential.0,
        host_key,
        site: t.site.clone(),
        zone: t.zone.clone(),
        criticality: t.criticality.clone(),
        legacy_crypto: t.legacy_crypto,
        cert_sha256: cert_sha256.clone(),
        rdp_nla: t.rdp_nla,
    };
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::TargetAdded {
            target: t.name.clone(),
            address: target.address(),
            login: t.login.clone(),
            credential_kind: t.credential.0.as_str().into(),
            host_key_fingerprint: target.host_key_fingerprint(),
        },
    )
    .await?;
    if t.legacy_crypto {
        let ev = Event::TargetLegacyCrypto { target: t.name.clone(), allowed: true };
        audit::append(&mut tx, &*app.clock, actor, &ev).await?;
    }
    if let Some(c) = &cert_sha256 {
        let ev = Event::TargetRdpSettings { target: t.name.clone(), cert_sha256: c.clone(), nla: t.rdp_nla };
        audit::append(&mut tx, &*app.clock, actor, &ev).await?;
    }
    tx.commit().await?;
    Ok(target)
}

/// Changes an RDP target's pinned certificate and/or NLA choice (audited).
pub async fn set_rdp(
    app: &App,
    actor: &str,
    name: &str,
    cert_sha256: Option<&str>,
    nla: Option<bool>,
) -> Result<Target> {
    let target = get(app, name).await?;
    if target.protocol != "rdp" {
        return Err(invalid(format!("target {name:?} is not an RDP target")));
    }
    let cert = match cert_sha256 {
        Some(c) => normalize_thumbprint(c)?,
        None => target.cert_sha256.clone().ok_or_else(|| invalid("the target has no pinned certificate"))?,
    };
    let nla = nla.unwrap_or(target.rdp_nla);
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE targets SET cert_sha256 = $1, rdp_nla = $2 WHERE id = $3")
        .bind(&cert)
        .bind(i64::from(nla))
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    let ev = Event::TargetRdpSettings { target: target.name.clone(), cert_sha256: cert, nla };
    audit::append(&mut tx, &*app.clock, actor, &ev).await?;
    tx.commit().await?;
    get(app, name).await
}

/// Allows or forbids legacy SSH algorithms towards a target (audited).
pub async fn set_legacy_crypto(app: &App, actor: &str, name: &str, allowed: bool) -> Result<Target> {
    let target = get(app, name).await?;
    let mut tx = app.store.begin_write().await?;
    sqlx::query("UPDATE targets SET legacy_crypto = $1 WHERE id = $2")
        .bind(i64::from(allowed))
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::TargetLegacyCrypto { target: target.name.clone(), allowed })
        .await?;
    tx.commit().await?;
    get(app, name).await
}

async fn seal_secret(
    app: &App,
    tx: &mut crate::store::Tx,
    target_id: i64,
    kind: CredentialKind,
    secret: &Secret,
    version: i64,
) -> Result<()> {
    let sealed = app.vault.seal(&secret_aad("target", target_id, kind.as_str(), version), secret.expose())?;
    sqlx::query("INSERT INTO secrets (owner_kind, owner_id, kind, version, ciphertext, created_at) VALUES ('target', $1, $2, $3, $4, $5)")
        .bind(target_id)
        .bind(kind.as_str())
        .bind(version)
        .bind(sealed)
        .bind(app.clock.now())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The version number a target's next secret gets.
pub(crate) async fn next_secret_version(tx: &mut crate::store::Tx, target_id: i64) -> Result<i64> {
    Ok(sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM secrets WHERE owner_kind = 'target' AND owner_id = $1")
        .bind(target_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?)
}

/// Stores a new version of a target's credential (rotation); returns the version.
pub async fn set_secret(app: &App, actor: &str, name: &str, kind: CredentialKind, secret: Secret) -> Result<i64> {
    let target = get(app, name).await?;
    check_credential(kind, &secret)?;
    let mut tx = app.store.begin_write().await?;
    let version = next_secret_version(&mut tx, target.id).await?;
    seal_secret(app, &mut tx, target.id, kind, &secret, version).await?;
    sqlx::query("UPDATE targets SET credential_kind = $1 WHERE id = $2")
        .bind(kind.as_str())
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &*app.clock,
        actor,
        &Event::SecretRotated { target: target.name, kind: kind.as_str().into(), version },
    )
    .await?;
    tx.commit().await?;
    Ok(version)
}

/// The current credential of a target. Only the upstream connector calls this.
pub async fn credential(app: &App, target: &Target) -> Result<Secret> {
    let row = sqlx::query("SELECT kind, version, ciphertext FROM secrets WHERE owner_kind = 'target' AND owner_id = $1 AND state = 'active' ORDER BY version DESC LIMIT 1")
        .bind(target.id)
        .fetch_optional(app.store.pool())
        .await?
        .ok_or_else(|| Error::NotFound(format!("target {:?} has no credential", target.name)))?;
    let kind: String = row.try_get(0)?;
    let version: i64 = row.try_get(1)?;
    let ct: Vec<u8> = row.try_get(2)?;
    Ok(app.vault.open(&secret_aad("target", target.id, &kind, version), &ct)?)
}

/// What a target presents before it is pinned: an SSH host key or an RDP certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    /// `ssh` or `rdp`.
    pub protocol: String,
    /// `host:port` as contacted.
    pub address: String,
    /// SSH: the host key (OpenSSH line), to pin after confirmation.
    pub host_key: Option<String>,
    /// SSH: `SHA256:…` fingerprint; RDP: the certificate's SHA-256 thumbprint (`AB:CD:…`).
    pub fingerprint: String,
}

/// Contacts `address` and returns the identity it presents (for an admin to compare and confirm
/// before [`add`] pins it). Nothing is stored.
pub async fn fetch_identity(app: &App, protocol: &str, address: &str, legacy_crypto: bool) -> Result<Fetched> {
    match protocol {
        "ssh" => {
            let (host, port) = parse_address_or(address, 22)?;
            let key = crate::ssh::upstream::fetch_host_key(&host, port, &app.config.upstream, legacy_crypto)
                .await
                .map_err(|e| invalid(format!("cannot fetch the host key of {address}: {e:#}")))?;
            Ok(Fetched {
                protocol: "ssh".into(),
                address: address.to_string(),
                host_key: Some(crate::keys::to_openssh(&key)),
                fingerprint: crate::keys::fingerprint(&key),
            })
        }
        "rdp" => {
            let (host, port) = parse_address_or(address, 3389)?;
            let timeout = std::time::Duration::from_secs(app.config.upstream.connect_timeout_secs.max(1));
            let f = crate::rdp::target::fetch_cert(&host, port, timeout)
                .await
                .map_err(|e| invalid(format!("cannot fetch the certificate of {address}: {e:#}")))?;
            Ok(Fetched {
                protocol: "rdp".into(),
                address: address.to_string(),
                host_key: None,
                fingerprint: f.thumbprint,
            })
        }
        other => Err(invalid(format!("unsupported protocol {other:?} (supported: ssh, rdp)"))),
    }
}

/// Looks a target up by name.
pub async fn get(app: &App, name: &str) -> Result<Target> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM targets WHERE name = $1"))
        .bind(name)
        .fetch_optional(app.store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()?.ok_or_else(|| Error::NotFound(format!("unknown target {name:?}")))
}

/// Looks a target up by id.
pub async fn by_id(app: &App, id: i64) -> Result<Target> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM targets WHERE id = $1"))
        .bind(id)
        .fetch_optional(app.store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()?.ok_or_else(|| Error::NotFound(format!("unknown target id {id}")))
}

/// All targets by name.
pub async fn list(app: &App) -> Result<Vec<Target>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM targets ORDER BY name")).fetch_all(app.store.pool()).await?;
    rows.iter().map(from_row).collect()
}

/// Removes a target and its secrets.
pub async fn remove(app: &App, actor: &str, name: &str) -> Result<()> {
    let target = get(app, name).await?;
    let mut tx = app.store.begin_write().await?;
    sqlx::query("DELETE FROM secrets WHERE owner_kind = 'target' AND owner_id = $1")
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM targets WHERE id = $1").bind(target.id).execute(&mut *tx).await?;
    audit::append(&mut tx, &*app.clock, actor, &Event::TargetRemoved { target: target.name }).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("10.0.3.15:22").unwrap(), ("10.0.3.15".into(), 22));
        assert_eq!(parse_address("plc").unwrap(), ("plc".into(), 22));
        assert_eq!(parse_address("[::1]:2200").unwrap(), ("::1".into(), 2200));
        assert!(parse_address("host:99999").is_err());
        assert!(parse_address(":22").is_err());
    }
}

#[cfg(test)]
mod rdp_tests {
    use super::*;

    #[test]
    fn thumbprints_are_normalized() {
        let hex_lower = "ab".repeat(32);
        let want = vec!["AB"; 32].join(":");
        assert_eq!(normalize_thumbprint(&hex_lower).unwrap(), want);
        assert_eq!(normalize_thumbprint(&want.to_lowercase()).unwrap(), want);
        assert!(normalize_thumbprint("AB:CD").is_err(), "too short");
        assert!(normalize_thumbprint(&"zz".repeat(32)).is_err(), "not hex");
        assert_eq!(parse_address_or("10.0.3.20", 3389).unwrap(), ("10.0.3.20".to_string(), 3389));
    }
}
