//! SIEM streaming: the audit chain, in order, to syslog receivers (RFC 5424 with structured
//! data; UDP, TCP with RFC 6587 octet counting, or TLS per RFC 5425 with the receiver's
//! certificate checked against a configured CA) and JSON-lines files, **at least once**.
//!
//! Each destination has a cursor in the store (`siem_cursors`: the last sequence number it
//! took), moved only after a batch was handed over, so a receiver outage or a gateway restart
//! loses nothing and resumes where it stopped (a batch in flight may be sent twice). With
//! several gateways on one PostgreSQL, a lease in the same row lets one of them ship, never all.
//! `penstock siem status` shows each cursor, the lag behind the chain's head and the last error.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::Row;
use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::audit::{self, Record};
use crate::config::{SiemDestination, SiemKind};

/// Events per batch.
const BATCH: i64 = 200;
/// How long a gateway holds a destination without renewing (it renews every half second; a
/// gateway that stops cleanly gives its leases back at once).
const LEASE_SECS: i64 = 10;

/// This process's name in leases.
fn node() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(crate::sessions::new_id)
}
/// Connect and write timeout (a receiver that hangs counts as down).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Syslog severity of an event: warnings for refusals and failures, notices for the rest.
fn severity(kind: &str) -> u8 {
    match kind {
        "login.failed"
        | "login.locked_out"
        | "session.refused"
        | "target.host_key_mismatch"
        | "session.channel_refused"
        | "notification.failed" => 4,
        _ => 5,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// A field of the header: printable US-ASCII, at most `max` characters, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// One event as an RFC 5424 message (facility authpriv). The structured data carries the chain
/// position and hashes; the message is the event's canonical JSON, exactly as hashed.
pub fn rfc5424(r: &Record, hostname: &str, pid: u32) -> String {
    let pri = 10 * 8 + u32::from(severity(&r.kind));
    let ts = chrono::DateTime::from_timestamp(r.at, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "<{pri}>1 {ts} {} penstock {pid} {} [penstock@32473 seq=\"{}\" actor=\"{}\" kind=\"{}\" version=\"{}\" hash=\"{}\" prev=\"{}\"] {}",
        header_field(hostname, 255),
        header_field(&r.kind, 32),
        r.seq,
        sd_escape(&r.actor),
        sd_escape(&r.kind),
        r.version,
        r.hash,
        r.prev_hash,
        r.details.get()
    )
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Udp(tokio::net::UdpSocket),
    File(std::fs::File),
}

async fn tcp(address: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let s = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {address} timed out"))?
        .with_context(|| format!("cannot connect to {address}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The TLS client settings of a destination: its CA only, no client certificate.
fn tls_connector(d: &SiemDestination) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&d.ca)
        .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", d.ca.display()))?;
    for c in certs {
        let c = c.map_err(|e| anyhow::anyhow!("CA file {}: {e}", d.ca.display()))?;
        roots.add(c).map_err(|e| anyhow::anyhow!("CA file {}: {e}", d.ca.display()))?;
    }
    if roots.is_empty() {
        bail!("CA file {} holds no certificate", d.ca.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)))
}

/// The name the receiver's certificate must hold.
fn server_name(d: &SiemDestination) -> String {
    if !d.server_name.is_empty() {
        return d.server_name.clone();
    }
    let host = d.address.rsplit_once(':').map(|(h, _)| h).unwrap_or(&d.address);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

async fn connect(d: &SiemDestination) -> anyhow::Result<Conn> {
    Ok(match d.kind {
        SiemKind::Tcp => Conn::Tcp(tcp(&d.address).await?),
        SiemKind::Tls => {
            let connector = tls_connector(d)?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server_name(d))
                .map_err(|e| anyhow::anyhow!("invalid TLS server name: {e}"))?;
            let s = tcp(&d.address).await?;
            let s = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, s))
                .await
                .map_err(|_| anyhow::anyhow!("TLS handshake with {} timed out", d.address))?
                .with_context(|| format!("TLS handshake with {} failed", d.address))?;
            Conn::Tls(Box::new(s))
        }
        SiemKind::Udp => {
            let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
            s.connect(&d.address).await.with_context(|| format!("cannot reach {}", d.address))?;
            Conn::Udp(s)
        }
        SiemKind::File => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&d.path)
                .with_context(|| format!("cannot open {}", d.path.display()))?;
            Conn::File(f)
        }
    })
}

/// Writes `batch` as RFC 6587 octet-counted RFC 5424 messages (TCP and TLS alike), within
/// [`IO_TIMEOUT`].
async fn write_framed<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    batch: &[Record],
    host: &str,
    pid: u32,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for r in batch {
        let m = rfc5424(r, host, pid);
        buf.extend_from_slice(format!("{} {m}", m.len()).as_bytes());
    }
    tokio::time::timeout(IO_TIMEOUT, async {
        w.write_all(&buf).await?;
        w.flush().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("the receiver stopped reading (write timed out)"))?
    .context("cannot send")
}

async fn send(conn: &mut Conn, batch: &[Record], host: &str, pid: u32) -> anyhow::Result<()> {
    match conn {
        Conn::Tcp(s) => {
            write_framed(s, batch, host, pid).await?;
            // A receiver that closed the connection shows up on the next write; check now so the
            // cursor does not move past events it never took.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Ok(0) => bail!("the receiver closed the connection"),
                _ => Ok(()),
            }
        }
        Conn::Tls(s) => write_framed(s, batch, host, pid).await,
        Conn::Udp(s) => {
            for r in batch {
                let m = rfc5424(r, host, pid);
                s.send(m.as_bytes()).await.context("cannot send")?;
            }
            Ok(())
        }
        Conn::File(f) => {
            use std::io::Write;
            let mut buf = Vec::new();
            for r in batch {
                serde_json::to_writer(&mut buf, r)?;
                buf.push(b'\n');
            }
            f.write_all(&buf).context("cannot write")?;
            f.sync_data().context("cannot sync")?;
            Ok(())
        }
    }
}

/// Takes or renews the destination's lease; false when another gateway holds it.
async fn lease(app: &App, name: &str, me: &str) -> anyhow::Result<bool> {
    let now = app.clock.now();
    sqlx::query(
        "INSERT INTO siem_cursors (destination, seq, updated_at, lease_until) VALUES ($1, 0, $2, 0) \
         ON CONFLICT (destination) DO NOTHING",
    )
    .bind(name)
    .bind(now)
    .execute(app.store.pool())
    .await?;
    let n = sqlx::query(
        "UPDATE siem_cursors SET holder = $1, lease_until = $2 WHERE destination = $3 \
         AND (holder IS NULL OR holder = $1 OR lease_until < $4)",
    )
    .bind(me)
    .bind(now + LEASE_SECS)
    .bind(name)
    .bind(now)
    .execute(app.store.pool())
    .await?
    .rows_affected();
    Ok(n == 1)
}

async fn cursor(app: &App, name: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT seq FROM siem_cursors WHERE destination = $1")
        .bind(name)
        .fetch_optional(app.store.pool())
        .await?
        .unwrap_or(0))
}

async fn advance(app: &App, name: &str, me: &str, seq: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE siem_cursors SET seq = $1, updated_at = $2, last_error = NULL, error_at = NULL \
         WHERE destination = $3 AND holder = $4",
    )
    .bind(seq)
    .bind(app.clock.now())
    .bind(name)
    .bind(me)
    .execute(app.store.pool())
    .await?;
    Ok(())
}

async fn failed(app: &App, name: &str, error: &str) {
    let _ = sqlx::query("UPDATE siem_cursors SET last_error = $1, error_at = $2 WHERE destination = $3")
        .bind(error)
        .bind(app.clock.now())
        .bind(name)
        .execute(app.store.pool())
        .await;
}

/// Ships the chain to one destination until the process ends.
async fn run(app: App, d: SiemDestination, me: String) {
    let host = if app.config.siem.hostname.is_empty() { system_hostname() } else { app.config.siem.hostname.clone() };
    let pid = std::process::id();
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        let step: anyhow::Result<bool> = async {
            if !lease(&app, &d.name, &me).await? {
                conn = None;
                return Ok(false);
            }
            let after = cursor(&app, &d.name).await?;
            let batch = audit::read(&app.store, after, BATCH).await?;
            let Some(last) = batch.last().map(|r| r.seq) else { return Ok(false) };
            if conn.is_none() {
                conn = Some(connect(&d).await?);
            }
            if let Some(c) = conn.as_mut() {
                if let Err(e) = send(c, &batch, &host, pid).await {
                    conn = None;
                    return Err(e);
                }
            }
            advance(&app, &d.name, &me, last).await?;
            Ok(batch.len() as i64 == BATCH)
        }
        .await;
        match step {
            Ok(more) => {
                backoff = Duration::from_secs(1);
                if !last_error.is_empty() {
                    tracing::info!(destination = %d.name, "SIEM destination reachable again");
                    last_error.clear();
                }
                if !more {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Err(e) => {
                let msg = format!("{e:#}").replace('\n', " ");
                if msg != last_error {
                    tracing::warn!(destination = %d.name, error = %msg, "SIEM delivery failed; retrying");
                    last_error = msg.clone();
                }
                failed(&app, &d.name, &msg).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Checks the destinations' settings.
pub fn check(dests: &[SiemDestination]) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for d in dests {
        if d.name.trim().is_empty() {
            bail!("[[siem.destinations]] needs a name");
        }
        if !names.insert(&d.name) {
            bail!("[[siem.destinations]] name {:?} is used twice", d.name);
        }
        match d.kind {
            SiemKind::Tcp | SiemKind::Udp | SiemKind::Tls if d.address.is_empty() => {
                bail!("SIEM destination {:?} needs address = \"HOST:PORT\"", d.name)
            }
            SiemKind::Tls if d.ca.as_os_str().is_empty() => {
                bail!("SIEM destination {:?} needs ca = \"CA.pem\" (the CA its certificate chains to)", d.name)
            }
            SiemKind::File if d.path.as_os_str().is_empty() => {
                bail!("SIEM destination {:?} needs path = \"FILE\"", d.name)
            }
            _ => {}
        }
    }
    Ok(())
}

/// Starts one shipping task per destination.
pub fn start(app: &App) -> anyhow::Result<()> {
    check(&app.config.siem.destinations)?;
    let me = node().to_string();
    for d in &app.config.siem.destinations {
        let mut d = d.clone();
        if d.kind == SiemKind::File {
            d.path = app.config.resolve(&d.path);
        }
        if d.kind == SiemKind::Tls {
            d.ca = app.config.resolve(&d.ca);
            // A bad CA file is a start-up error, not a retry loop.
            tls_connector(&d)?;
        }
        tokio::spawn(run(app.clone(), d, me.clone()));
    }
    Ok(())
}

/// Gives back this gateway's leases (on shutdown), so another gateway ships at once.
pub async fn release(app: &App) {
    let _ = sqlx::query("UPDATE siem_cursors SET holder = NULL, lease_until = 0 WHERE holder = $1")
        .bind(node())
        .execute(app.store.pool())
        .await;
}

/// A destination's state.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Name.
    pub name: String,
    /// Transport.
    pub kind: String,
    /// Address or file.
    pub target: String,
    /// Last sequence number delivered.
    pub delivered: i64,
    /// The chain's head.
    pub head: i64,
    /// Events not yet delivered.
    pub lag: i64,
    /// When the cursor last moved.
    pub updated_at: Option<i64>,
    /// The last failure since then.
    pub last_error: Option<String>,
    /// When it happened.
    pub error_at: Option<i64>,
}

/// State of every configured destination.
pub async fn status(app: &App) -> anyhow::Result<Vec<Status>> {
    let head: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetch_one(app.store.pool()).await?;
    let mut out = Vec::new();
    for d in &app.config.siem.destinations {
        let row = sqlx::query("SELECT seq, updated_at, last_error, error_at FROM siem_cursors WHERE destination = $1")
            .bind(&d.name)
            .fetch_optional(app.store.pool())
            .await?;
        let (delivered, updated_at, last_error, error_at) = match row {
            Some(r) => (r.try_get(0)?, Some(r.try_get(1)?), r.try_get(2)?, r.try_get(3)?),
            None => (0, None, None, None),
        };
        out.push(Status {
            name: d.name.clone(),
            kind: format!("{:?}", d.kind).to_lowercase(),
            target: if d.kind == SiemKind::File { d.path.display().to_string() } else { d.address.clone() },
            delivered,
            head,
            lag: head - delivered,
            updated_at,
            last_error,
            error_at,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_shape() {
        let r = Record {
            seq: 7,
            at: 1_764_000_000,
            kind: "login.failed".into(),
            version: 1,
            actor: "a\"b]".into(),
            details: serde_json::value::RawValue::from_string("{\"x\":1}".into()).unwrap(),
            prev_hash: "00".into(),
            hash: "11".into(),
        };
        let m = rfc5424(&r, "gw 1", 42);
        assert_eq!(
            m,
            "<84>1 2025-11-24T16:00:00Z gw1 penstock 42 login.failed [penstock@32473 seq=\"7\" actor=\"a\\\"b\\]\" kind=\"login.failed\" version=\"1\" hash=\"11\" prev=\"00\"] {\"x\":1}"
        );
    }
}
