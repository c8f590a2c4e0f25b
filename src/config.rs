//! `penstock.toml`: loading, defaults, `PENSTOCK_<SECTION>_<KEY>` overrides, and errors that
//! name the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

/// The whole configuration. Relative paths are relative to the config file's folder.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SSH front end.
    pub ssh: SshConfig,
    /// Web console.
    pub web: WebConfig,
    /// RDP front end.
    pub rdp: RdpConfig,
    /// Store.
    pub database: DatabaseConfig,
    /// Session recordings.
    pub recordings: RecordingsConfig,
    /// Secret storage.
    pub vault: VaultConfig,
    /// Login rules.
    pub auth: AuthConfig,
    /// Connections to targets.
    pub upstream: UpstreamConfig,
    /// Logging.
    pub log: LogConfig,
    /// Policies.
    pub policies: PoliciesConfig,
    /// Webhooks.
    pub notifications: NotificationsConfig,
    /// Evidence bundles.
    pub evidence: EvidenceConfig,
    /// Audit events streamed to SIEMs.
    pub siem: SiemConfig,
    /// The gateway's TLS certificate (web console, RDP).
    pub tls: TlsConfig,
    /// This gateway as one node of several.
    pub node: NodeConfig,
    /// Prometheus metrics and health checks.
    pub metrics: MetricsConfig,
    /// Folder of the config file; set by [`Config::load`].
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[ssh]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Host key file (OpenSSH private key format).
    pub host_key: PathBuf,
    /// Seconds a client has from connecting to finishing its login (OpenSSH's `LoginGraceTime`).
    /// Nothing but authentication messages is sent before that: keepalives start after it.
    pub login_timeout_secs: u64,
    /// Most connections that may be logging in at once.
    pub max_pending_logins: usize,
    /// Most connections from one source address that may be logging in at once.
    pub max_pending_per_source: usize,
    /// SSH channel window on both legs, in KiB (8 MiB by default; 2048 = OpenSSH's own).
    pub window_kib: u32,
    /// Threads relaying sessions (`penstock serve`): 0 (the default) for one per CPU core. One
    /// thread keeps every hand-off on one core: about a sixth less CPU per byte (see
    /// docs/PERFORMANCE.md), but logins wait behind bulk sessions on a busy gateway.
    pub threads: usize,
    /// TCP load balancers in front (addresses or `ADDR/BITS`): their connections must start
    /// with a PROXY protocol v2 header naming the vendor's address (HAProxy `send-proxy-v2`).
    pub proxy_from: Vec<String>,
}

impl SshConfig {
    /// The channel window in bytes (between 64 KiB and 64 MiB).
    pub fn window_bytes(&self) -> u32 {
        self.window_kib.clamp(64, 64 * 1024) * 1024
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
            host_key: PathBuf::from("ssh_host_ed25519_key"),
            login_timeout_secs: 120,
            max_pending_logins: 256,
            max_pending_per_source: 16,
            window_kib: 8192,
            threads: 0,
            proxy_from: Vec::new(),
        }
    }
}

/// `[web]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Whether `serve` starts the web console and API.
    pub enabled: bool,
    /// Address to listen on (HTTPS only).
    pub listen: SocketAddr,
    /// A console session ends after this many seconds without a request.
    pub idle_timeout_secs: i64,
    /// A console session ends this many seconds after its login, whatever happens.
    pub session_max_secs: i64,
    /// The plant's time zone (IANA name) pages show times in; UTC is shown on hover.
    pub time_zone: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            idle_timeout_secs: 900,
            session_max_secs: 12 * 3600,
            time_zone: "UTC".into(),
        }
    }
}

/// `[rdp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdpConfig {
    /// Whether `serve` opens the RDP listener.
    pub enabled: bool,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Seconds a vendor has from the TCP accept to finish NLA.
    pub login_timeout_secs: u64,
    /// RDP connections at once (logging in or relaying); more are refused.
    pub max_connections: usize,
    /// TCP load balancers in front (addresses or `ADDR/BITS`): their connections must start
    /// with a PROXY protocol v2 header naming the vendor's address.
    pub proxy_from: Vec<String>,
}

impl Default for RdpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 3389)),
            login_timeout_secs: 30,
            max_connections: 256,
            proxy_from: Vec::new(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` or `postgres://...`. Empty: `penstock.db` in the data folder.
    pub url: String,
}

/// `[recordings]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsConfig {
    /// Folder recordings are written to.
    pub dir: PathBuf,
    /// Whether sessions are recorded. Off is for benchmarks only.
    pub enabled: bool,
    /// Refuse new sessions when less than this many MiB are free.
    pub min_free_mib: u64,
    /// Delete recordings of sessions that ended more than this many days ago (0: keep them).
    pub retain_days: u32,
    /// Index sessions for search while they run (false: when they end).
    pub index_live: bool,
    /// Where recordings are kept: `local` (the folder) or `s3` (the folder is the spool).
    pub store: RecordingStore,
    /// S3 endpoint, e.g. `http://127.0.0.1:8333` (empty: AWS for the region).
    pub s3_endpoint: String,
    /// Bucket.
    pub s3_bucket: String,
    /// Region (any value for most S3-compatible servers).
    pub s3_region: String,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO, SeaweedFS and Ceph expect.
    pub s3_path_style: bool,
    /// Key prefix inside the bucket.
    pub s3_prefix: String,
    /// Access key id; `$CREDENTIALS_DIRECTORY/s3_access_key_id` wins when present.
    pub s3_access_key_id: String,
    /// Secret access key; `$CREDENTIALS_DIRECTORY/s3_secret_access_key` wins when present.
    pub s3_secret_access_key: Redacted,
    /// Seconds before a request to S3 is given up (a hung server does not hold the uploads).
    pub s3_timeout_secs: u64,
    /// Refuse new sessions whenever S3 cannot be written (fail closed), not only when the spool
    /// runs low.
    pub require_remote: bool,
    /// A live session's recording is uploaded in parts at least this often (seconds), so a
    /// lost node loses at most its last part.
    pub part_secs: u64,
    /// …and whenever this many new KiB are written.
    pub part_kib: u64,
}

/// A secret string from the config: shown as `[redacted]` by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where recordings are kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordingStore {
    /// Files in the recordings folder.
    #[default]
    Local,
    /// An S3-compatible object store, with the recordings folder as the local spool.
    S3,
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("recordings"),
            enabled: true,
            min_free_mib: 64,
            retain_days: 0,
            index_live: true,
            store: RecordingStore::Local,
            s3_endpoint: String::new(),
            s3_bucket: String::new(),
            s3_region: "us-east-1".into(),
            s3_path_style: true,
            s3_prefix: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Redacted::default(),
            s3_timeout_secs: 20,
            require_remote: false,
            part_secs: 60,
            part_kib: 8192,
        }
    }
}

/// `[vault]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Master key file. `$CREDENTIALS_DIRECTORY/master.key` wins when set (systemd).
    pub master_key: PathBuf,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self { master_key: PathBuf::from("master.key") }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failures within the window that lock a user or a source address.
    pub max_failures: u32,
    /// The window, in seconds.
    pub lockout_window_secs: i64,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { max_failures: 5, lockout_window_secs: 900, totp_issuer: "Penstock".into() }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Seconds to wait for TCP connect.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for the SSH handshake and login.
    pub handshake_timeout_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self { connect_timeout_secs: 10, handshake_timeout_secs: 15 }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `penstock=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[policies]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Folder of `*.toml` policy files.
    pub dir: PathBuf,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("policies") }
    }
}

/// `[notifications]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// `http://…` URLs that receive JSON (with a Slack-compatible `text` field).
    pub webhooks: Vec<String>,
    /// Attempts per delivery.
    pub attempts: u32,
    /// Seconds before the first retry (doubling after each).
    pub backoff_secs: u64,
    /// Seconds per attempt.
    pub timeout_secs: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self { webhooks: Vec::new(), attempts: 5, backoff_secs: 2, timeout_secs: 5 }
    }
}

/// `[evidence]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Ed25519 key that signs evidence bundles (OpenSSH format; made by `init` and by `serve`
    /// when missing).
    pub key: PathBuf,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self { key: PathBuf::from("evidence_ed25519_key") }
    }
}

/// `[tls]`: one certificate for every TLS front end (web console, RDP), so clients pin one
/// thumbprint. Made self-signed by `init`, and by `serve` when both files are missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert: PathBuf::from("tls_cert.pem"), key: PathBuf::from("tls_key.pem") }
    }
}

/// `[node]`: this gateway as a node (several gateways share one PostgreSQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name shown by `penstock nodes` (empty: the machine's host name).
    pub name: String,
    /// File holding this node's stable id (made on the first `serve`).
    pub id_file: PathBuf,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u64,
    /// A node whose heartbeat is older than this is lost: a surviving node ends its sessions as
    /// `node_lost`. At least three heartbeats.
    pub lost_after_secs: u64,
    /// Milliseconds between the checks a node makes for kills, revokes, disabled users and
    /// expired grants (the fallback behind notifications); waiting vendors look twice as often.
    pub poll_ms: u64,
    /// On PostgreSQL: act on other nodes' changes at once through `LISTEN/NOTIFY`.
    pub notify: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            id_file: PathBuf::from("node_id"),
            heartbeat_secs: 10,
            lost_after_secs: 60,
            poll_ms: 500,
            notify: true,
        }
    }
}

/// `[metrics]`: Prometheus metrics and the health checks a load balancer probes, on a listener
/// of their own (plain HTTP: bind it to loopback or a management network).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT` for `/metrics`, `/healthz` and `/readyz` (empty: off).
    pub listen: String,
}

/// `[siem]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SiemConfig {
    /// HOSTNAME in syslog messages (empty: the machine's host name).
    pub hostname: String,
    /// Where audit events go (`[[siem.destinations]]`).
    pub destinations: Vec<SiemDestination>,
}

/// One `[[siem.destinations]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemDestination {
    /// Name (the key of its cursor in the store; keep it when changing the address).
    pub name: String,
    /// `udp`, `tcp`, `tls` (syslog RFC 5424; TCP with RFC 6587 octet counting, TLS per RFC
    /// 5425) or `file` (JSON lines).
    pub kind: SiemKind,
    /// HOST:PORT for `udp`, `tcp` and `tls`.
    #[serde(default)]
    pub address: String,
    /// `tls`: PEM file of the CA certificate(s) the receiver's certificate must chain to.
    #[serde(default)]
    pub ca: PathBuf,
    /// `tls`: the name the receiver's certificate must hold (default: the host of `address`).
    #[serde(default)]
    pub server_name: String,
    /// File for `file`.
    #[serde(default)]
    pub path: PathBuf,
}

/// Transport of a SIEM destination.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SiemKind {
    /// Syslog over UDP (no delivery guarantee: a lost datagram is not resent).
    Udp,
    /// Syslog over TCP, octet counting.
    Tcp,
    /// Syslog over TLS (RFC 5425), octet counting; the receiver's certificate is checked.
    Tls,
    /// JSON lines appended to a file (fsynced per batch).
    File,
}

const SECTIONS: &[&str] = &[
    "ssh",
    "web",
    "rdp",
    "database",
    "recordings",
    "vault",
    "auth",
    "upstream",
    "log",
    "policies",
    "notifications",
    "evidence",
    "siem",
    "tls",
    "node",
    "metrics",
];

impl Config {
    /// Reads `path`, applies `PENSTOCK_<SECTION>_<KEY>` overrides from the environment and
    /// resolves relative paths. Errors name the file, line and key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::parse(&text, path, &env)
    }

    /// Parses config text; `env` is the environment to take overrides from.
    pub fn parse(text: &str, path: &Path, env: &[(String, String)]) -> anyhow::Result<Config> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| located(path, text, &e))?;
        // Check the file on its own first, so errors point at its lines.
        toml::from_str::<Config>(text).map_err(|e| located(path, text, &e))?;
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("PENSTOCK_") else { continue };
            let Some((section, key)) = rest.split_once('_') else { continue };
            let section = section.to_ascii_lowercase();
            if !SECTIONS.contains(&section.as_str()) {
                continue;
            }
            let value = parse_env_value(raw);
            let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(sect) = entry.as_table_mut() else {
                bail!("{name}: [{section}] in {} is not a table", path.display());
            };
            sect.insert(key.to_ascii_lowercase(), value);
        }
        let mut cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("environment override: {}", e.message()))?;
        cfg.base_dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(cfg)
    }

    /// A path from the config made absolute against the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Database URL, defaulting to `penstock.db` beside the config.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.resolve(Path::new("penstock.db")).display())
        } else {
            self.database.url.clone()
        }
    }

    /// Master key path, preferring systemd's credential folder.
    pub fn master_key_path(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join("master.key");
            if p.exists() {
                return p;
            }
        }
        self.resolve(&self.vault.master_key)
    }

    /// Recordings folder.
    pub fn recordings_dir(&self) -> PathBuf {
        self.resolve(&self.recordings.dir)
    }

    /// Policies folder.
    pub fn policies_dir(&self) -> PathBuf {
        self.resolve(&self.policies.dir)
    }

    /// Host key file.
    pub fn host_key_path(&self) -> PathBuf {
        self.resolve(&self.ssh.host_key)
    }

    /// Evidence signing key file.
    pub fn evidence_key_path(&self) -> PathBuf {
        self.resolve(&self.evidence.key)
    }

    /// TLS certificate file.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.resolve(&self.tls.cert)
    }

    /// TLS private key file.
    pub fn tls_key_path(&self) -> PathBuf {
        self.resolve(&self.tls.key)
    }
}

/// A value from the environment: TOML if it parses as one, else a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Turns a toml error into `FILE:LINE: [section] key: message`.
pub(crate) fn located(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let section = before
                .lines()
                .rev()
                .find_map(|l| {
                    let l = l.trim();
                    l.strip_prefix('[').and_then(|r| r.strip_suffix(']')).map(str::to_string)
                })
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            // The key is what stands before `=` on the error's line (the span may point at the
            // key or at its value).
            let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_text = text[line_start..].lines().next().unwrap_or("");
            let key = match line_text.split_once('=') {
                Some((k, _)) if !line_text.trim_start().starts_with('[') => k.trim().to_string(),
                _ => String::new(),
            };
            let key = if key.is_empty() { String::new() } else { format!("key `{key}`: ") };
            anyhow!("{}:{line}: {section}{key}{msg}", path.display())
        }
        None => anyhow!("{}: {msg}", path.display()),
    }
}

/// The commented config `init` writes.
pub fn default_config_text(database_url: &str) -> String {
    format!(
        r#"# Penstock configuration. Every key can be overridden by an environment variable
# PENSTOCK_<SECTION>_<KEY>, e.g. PENSTOCK_SSH_LISTEN=127.0.0.1:2022.
# Relative paths are relative to the folder of this file.

[ssh]
# Where vendors connect with OpenSSH: ssh -p 2222 VENDOR@TARGET@gateway
listen = "0.0.0.0:2222"
# The gateway's own host key (generated by `penstock init`).
host_key = "ssh_host_ed25519_key"
# Seconds a client gets to finish logging in.
login_timeout_secs = 60
# Connections still logging in, in all and per source address; past that new ones are dropped,
# so half-open handshakes from one place cannot lock everyone else out.
max_pending_logins = 256
max_pending_per_source = 16
# SSH channel window on both legs, KiB. 8 MiB suits bulk transfers over longer links; on a LAN
# OpenSSH's own 2048 measured faster and uses less memory (docs/PERFORMANCE.md).
window_kib = 8192
# Threads relaying sessions; 0 = one per CPU core. 1 keeps every hand-off on one core: about a
# sixth less CPU per byte, but new logins wait behind bulk sessions on a busy gateway.
threads = 0
# Load balancers in front (HAProxy with `send-proxy-v2`): connections from these addresses must
# carry a PROXY protocol v2 header, whose client address lockout, limits and audit then use.
# proxy_from = ["10.0.0.5", "10.0.1.0/24"]

[web]
# Web console and JSON API (/api/v1), HTTPS with the [tls] certificate; plain HTTP is refused.
enabled = true
listen = "0.0.0.0:8443"
# A console login ends after 15 minutes without a request, and 12 hours after it began.
idle_timeout_secs = 900
session_max_secs = 43200
# The plant's time zone for times on pages (UTC on hover), e.g. "Europe/Berlin".
time_zone = "UTC"

[rdp]
# RDP front end: vendors connect with mstsc/xfreerdp as USER@TARGET and the grant credential
# (NLA required); the gateway's certificate is the one in [tls].
enabled = true
listen = "0.0.0.0:3389"
# Load balancers sending PROXY protocol v2 (as [ssh] proxy_from).
# proxy_from = ["10.0.0.5"]

[database]
# SQLite (embedded default) or PostgreSQL: url = "postgres://penstock@localhost/penstock"
url = "{database_url}"

[recordings]
dir = "recordings"
# New sessions are refused when the recordings disk has less free space than this.
min_free_mib = 64
# A daily job deletes recordings of sessions that ended more than this many days ago (0 keeps
# them forever), each with a `recording.deleted` audit event; `recordings hold` exempts one.
retain_days = 0
# Search indexes a session while it runs (a second or two behind the vendor); false indexes each
# session only when it has ended.
index_live = true

[vault]
# 32-byte master key that encrypts every vaulted secret. Under systemd, LoadCredential=master.key
# wins over this path.
master_key = "master.key"

[auth]
# Lock a user, and separately a source address, after this many failures in the window.
max_failures = 5
lockout_window_secs = 900
totp_issuer = "Penstock"

[upstream]
connect_timeout_secs = 10
handshake_timeout_secs = 15

[log]
# "text" or "json"
format = "text"
level = "info"

[policies]
# *.toml files read in name order; the first policy that matches a target governs it.
# Reloaded on SIGHUP and by `penstock policy reload`.
dir = "policies"

[notifications]
# Webhooks receive JSON with a Slack-compatible "text" field for request and session events,
# e.g. webhooks = ["http://chat-relay.plant:8080/hooks/penstock"]. Failed deliveries are retried
# with backoff and audited; they never hold up a request.
webhooks = []
attempts = 5
backoff_secs = 2
timeout_secs = 5

[evidence]
# Ed25519 key that signs evidence bundles (SSHSIG, namespace "penstock-evidence"); made by
# `penstock init`, or by `penstock serve` when missing. `penstock evidence key` prints its public
# half: give that to auditors through another channel.
key = "evidence_ed25519_key"

[tls]
# The certificate of the web console and the RDP listener (PEM). `penstock init` makes a
# self-signed one and prints its SHA-256 thumbprint; put your plant CA's certificate here instead.
cert = "tls_cert.pem"
key = "tls_key.pem"

[node]
# This gateway as one node of several on a shared PostgreSQL (SQLite allows one `serve`).
# name = "gw-site-a"          # shown by `penstock nodes` (default: the host name)
id_file = "node_id"
heartbeat_secs = 10
# A node silent this long is lost: another node ends its sessions as `node_lost`.
lost_after_secs = 60
# Kills, revokes and approvals made on another node arrive at once by LISTEN/NOTIFY (PostgreSQL);
# every poll_ms a node also looks for them itself (the fallback, and the only way on SQLite).
poll_ms = 500
notify = true

[metrics]
# Prometheus metrics (/metrics) and health checks for a load balancer (/healthz: the process
# runs; /readyz: the store and the recording storage can be written) on a plain-HTTP listener of
# their own. Bind it to loopback or a management network. Empty: off.
listen = ""

[siem]
# Audit events streamed in chain order, at least once (a cursor per destination in the store;
# `penstock siem status` shows lag and errors). Syslog is RFC 5424 with structured data.
# [[siem.destinations]]
# name = "soc"
# kind = "tls"               # "tls" (RFC 5425), "tcp" (octet counting), "udp" or "file" (JSON lines)
# address = "siem.plant:6514" # or path = "/var/log/penstock-audit.jsonl" for "file"
# ca = "/etc/penstock/siem-ca.pem"   # tls: the CA the receiver's certificate chains to
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Config::parse(text, Path::new("/etc/penstock/penstock.toml"), &env)
    }

    #[test]
    fn defaults_and_default_text_parse() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.ssh.listen.port(), 2222);
        assert_eq!(c.web.listen.port(), 8443);
        let c = parse(&default_config_text("sqlite:///x.db"), &[]).unwrap();
        assert_eq!(c.database.url, "sqlite:///x.db");
        assert_eq!(c.auth.max_failures, 5);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[ssh]\nlisen = \"1.2.3.4:22\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("/etc/penstock/penstock.toml:2"), "{err}");
        assert!(err.contains("[ssh]"), "{err}");
        assert!(err.contains("lisen"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_value_names_line() {
        let err = parse("[log]\nformat = \"xml\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
    }

    #[test]
    fn env_overrides() {
        let c = parse(
            "[ssh]\nlisten = \"0.0.0.0:2222\"\n",
            &[("PENSTOCK_SSH_LISTEN", "127.0.0.1:2022"), ("PENSTOCK_AUTH_MAX_FAILURES", "9"), ("PENSTOCK_CONFIG", "x")],
        )
        .unwrap();
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2022");
        assert_eq!(c.auth.max_failures, 9);
        let err = parse("", &[("PENSTOCK_SSH_LISTN", "x")]).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");
    }
}
