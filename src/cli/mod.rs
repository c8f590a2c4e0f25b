//! The `penstock` command line.

pub mod evidence;
pub mod fsutil;
pub mod init;
mod manage;
mod secrets;
mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::secret::Secret;

/// Penstock: just-in-time privileged access for OT maintenance.
#[derive(Debug, Parser)]
#[command(name = "penstock", version, about, max_term_width = 100)]
pub struct Cli {
    /// Config file.
    #[arg(short, long, global = true, env = "PENSTOCK_CONFIG", default_value = "/etc/penstock/penstock.toml")]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new installation (config, keys, database, example policies) in DIR.
    Init {
        /// Folder to create it in.
        #[arg(long)]
        dir: PathBuf,
        /// Use this database instead of SQLite (e.g. postgres://penstock@localhost/penstock).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Set up a local demo installation in DIR if there is none (with an admin, a manager and a
    /// vendor), print how to log in, and serve it.
    Quickstart {
        /// Folder of the local installation.
        #[arg(long, default_value = "penstock-local")]
        dir: PathBuf,
        /// SSH listen address.
        #[arg(long, default_value = "127.0.0.1:2222")]
        ssh_listen: String,
        /// Web console listen address (HTTPS).
        #[arg(long, default_value = "127.0.0.1:8443")]
        web_listen: String,
    },
    /// Run the gateway.
    Serve,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Grants (direct admin grants; requests and approvals come with the JIT workflow).
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Live and past sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// The tamper-evident audit chain.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Access policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Play a session's recording; or the screen at a moment (--at S --text), or a transcript.
    Replay(evidence::ReplayArgs),
    /// Signed evidence bundles for auditors.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCmd),
    /// Recordings: full-text search, index, legal holds.
    #[command(subcommand)]
    Recordings(evidence::RecordingsCmd),
    /// Audit events streamed to SIEMs (syslog, JSON lines).
    #[command(subcommand)]
    Siem(evidence::SiemCmd),
    /// Vaulted target secrets: age, rotation, use and reuse.
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// The gateways sharing this store: address, version, live sessions, last heartbeat.
    Nodes {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// API tokens for the web API (`Authorization: Bearer TOKEN`).
    #[command(subcommand)]
    Token(TokenCmd),
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token that acts as USER with USER's role; printed once, stored hashed.
    Create {
        /// User the token acts as.
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 90d or 12h (at most a year).
        #[arg(long, default_value = "90d")]
        expires: String,
    },
    /// List tokens (never their values).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token now.
    Revoke {
        /// Token id.
        id: i64,
    },
}

/// `policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate policy files (default: the configured folder); errors name file, line and field.
    Check {
        /// Folder of *.toml policies.
        dir: Option<PathBuf>,
    },
    /// Ask running servers to reload their policies (after validating them).
    Reload,
    /// Show which policy governs each target.
    List,
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user and enrol TOTP (prints the otpauth URI and a QR code).
    Add {
        /// Login name.
        name: String,
        /// vendor, manager, auditor or admin.
        #[arg(long)]
        role: String,
        /// Organisation.
        #[arg(long)]
        org: Option<String>,
        /// Last day the account works (YYYY-MM-DD, UTC).
        #[arg(long)]
        expires: Option<String>,
        /// Read the password from standard input (else one is generated and printed once).
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// Create the account without a password (key + TOTP only).
        #[arg(long)]
        no_password: bool,
    },
    /// List users.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user.
    Disable {
        /// Login name.
        name: String,
    },
    /// Replace a user's TOTP seed (prints the new QR code).
    ResetMfa {
        /// Login name.
        name: String,
    },
    /// Add an SSH public key.
    AddKey {
        /// Login name.
        name: String,
        /// The key line (`ssh-ed25519 AAAA… comment`).
        #[arg(long, required_unless_present = "key_file")]
        key: Option<String>,
        /// A file with the key line.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Remove an SSH public key (by fingerprint or key line).
    RemoveKey {
        /// Login name.
        name: String,
        /// `SHA256:…` fingerprint or the key line.
        key: String,
    },
}

/// Where a target credential comes from.
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct CredentialArgs {
    /// Read the target password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Use this private key file (OpenSSH format, unencrypted; sealed in the vault).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Read keyboard-interactive answers from standard input, one per line.
    #[arg(long)]
    pub kbdint_stdin: bool,
}

/// `target …`
#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Add a target with its vaulted credential and pinned host key.
    Add {
        /// Name vendors use (`alice@NAME`).
        name: String,
        /// HOST:PORT.
        #[arg(long)]
        address: String,
        /// Account on the target.
        #[arg(long)]
        login: String,
        /// Protocol.
        #[arg(long, default_value = "ssh")]
        protocol: String,
        /// Credential.
        #[command(flatten)]
        credential: CredentialArgs,
        /// Pin this host key (`ssh-ed25519 AAAA…`).
        #[arg(long, conflicts_with = "fetch_host_key")]
        host_key: Option<String>,
        /// Fetch the host key now, print its fingerprint and pin it.
        #[arg(long)]
        fetch_host_key: bool,
        /// Site tag.
        #[arg(long)]
        site: Option<String>,
        /// Zone tag.
        #[arg(long)]
        zone: Option<String>,
        /// Criticality tag (e.g. safety, high, low).
        #[arg(long)]
        criticality: Option<String>,
        /// Allow legacy SSH algorithms (ssh-rsa, SHA-1 key exchange, CBC, hmac-sha1) towards
        /// this target, for old devices that speak nothing else (audited).
        #[arg(long)]
        legacy_crypto: bool,
        /// RDP: pin this SHA-256 thumbprint of the target's TLS certificate (hex, colons optional).
        #[arg(long, conflicts_with = "fetch_cert")]
        cert_sha256: Option<String>,
        /// RDP: connect now, print the certificate's SHA-256 thumbprint and pin it.
        #[arg(long)]
        fetch_cert: bool,
        /// RDP: log in with NLA (CredSSP), the default.
        #[arg(long, conflicts_with = "no_nla")]
        nla: bool,
        /// RDP: the target has no NLA; the vaulted account goes in the Client Info PDU (auto-logon).
        #[arg(long)]
        no_nla: bool,
    },
    /// Change a target's settings.
    Set {
        /// Name.
        name: String,
        /// Allow legacy SSH algorithms towards it (audited).
        #[arg(long, conflicts_with = "no_legacy_crypto")]
        legacy_crypto: bool,
        /// Back to the modern algorithm set only.
        #[arg(long)]
        no_legacy_crypto: bool,
        /// RDP: pin this certificate thumbprint instead (audited).
        #[arg(long, conflicts_with = "fetch_cert")]
        cert_sha256: Option<String>,
        /// RDP: fetch the target's certificate now and pin its thumbprint (audited).
        #[arg(long)]
        fetch_cert: bool,
        /// RDP: log in with NLA.
        #[arg(long, conflicts_with = "no_nla")]
        nla: bool,
        /// RDP: auto-logon through the Client Info PDU instead of NLA.
        #[arg(long)]
        no_nla: bool,
    },
    /// List targets.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only targets that allow legacy SSH algorithms.
        #[arg(long)]
        legacy: bool,
    },
    /// Show one target.
    Show {
        /// Name.
        name: String,
    },
    /// Remove a target and its secrets.
    Remove {
        /// Name.
        name: String,
    },
    /// Store a new version of the target's credential (rotation).
    SetSecret {
        /// Name.
        name: String,
        /// Credential.
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Rotate the target's secret now: change it on the target, verify a fresh login, then make
    /// it active (prints the new version, never the secret).
    Rotate {
        /// Name.
        name: String,
    },
}

/// `grant …`
#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Give a user access to a target for a while, starting now.
    Add {
        /// User.
        #[arg(long)]
        user: String,
        /// Target.
        #[arg(long)]
        target: String,
        /// Duration, e.g. 2h or 90m.
        #[arg(long = "for")]
        duration: String,
    },
    /// List grants.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// End a grant now; its live sessions are cut.
    Revoke {
        /// Grant id.
        id: i64,
    },
}

/// `session …`
#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// List sessions, newest first.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only live sessions.
        #[arg(long)]
        live: bool,
    },
    /// End a live session (the server notices within 2 s).
    Kill {
        /// Session id (or a unique prefix).
        id: String,
    },
}

/// `audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the whole chain, then every recording against the hash the chain holds.
    Verify {
        /// Check the chain only (hashing every recording can take a while).
        #[arg(long)]
        chain_only: bool,
    },
    /// Write the chain out.
    Export {
        /// Format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        /// File to write (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Reads one line (a password) from standard input.
pub(crate) fn read_stdin_line(what: &str) -> anyhow::Result<Secret> {
    let mut buf = zeroize::Zeroizing::new(String::new());
    std::io::stdin().read_to_string(&mut buf).with_context(|| format!("cannot read {what} from standard input"))?;
    let line = buf.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        anyhow::bail!("no {what} on standard input");
    }
    Ok(Secret::from_string(line))
}

/// Reads all of standard input.
pub(crate) fn read_stdin_all(what: &str) -> anyhow::Result<Secret> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).with_context(|| format!("cannot read {what} from standard input"))?;
    Ok(Secret::new(buf))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands behave like other Unix tools when a pipe reader goes away (`penstock … | head`).
    // The server keeps SIGPIPE ignored: a peer that vanishes mid-write (an RDP client closing
    // its socket) must end that connection with EPIPE, never the gateway.
    if !matches!(cli.command, Command::Serve | Command::Quickstart { .. }) {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The process's TLS provider, for libraries that build TLS configs themselves (the S3
    // client): one provider, the one Penstock's own configs name.
    let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let threads = match cli.command {
        // A bad config is reported by `serve` itself, with file, line and key.
        Command::Serve => crate::config::Config::load(&cli.config).map(|c| c.ssh.threads).unwrap_or(0),
        Command::Quickstart { .. } => crate::config::SshConfig::default().threads,
        _ => 0,
    };
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("penstock: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("penstock: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, database_url } => {
            let path = init::init(&dir, database_url.as_deref()).await?;
            println!("Created a Penstock installation in {}.", dir.display());
            let cfg = crate::config::Config::load(&path)?;
            println!("TLS certificate SHA-256: {}", crate::tls_identity::load(&cfg)?.thumbprint());
            println!("Next: penstock -c {} user add NAME --role admin", path.display());
            Ok(())
        }
        Command::Quickstart { dir, ssh_listen, web_listen } => serve::quickstart(&dir, &ssh_listen, &web_listen).await,
        Command::Serve => serve::serve(&cli.config).await,
        Command::User(c) => manage::user(&cli.config, c).await,
        Command::Target(c) => manage::target(&cli.config, c).await,
        Command::Grant(c) => manage::grant(&cli.config, c).await,
        Command::Session(c) => manage::session(&cli.config, c).await,
        Command::Audit(c) => manage::audit(&cli.config, c).await,
        Command::Policy(c) => manage::policy(&cli.config, c).await,
        Command::Replay(a) => evidence::replay(&cli.config, a).await,
        Command::Evidence(c) => evidence::evidence_cmd(&cli.config, c).await,
        Command::Recordings(c) => evidence::recordings(&cli.config, c).await,
        Command::Siem(c) => evidence::siem(&cli.config, c).await,
        Command::Secrets(c) => secrets::secrets(&cli.config, c).await,
        Command::Nodes { json } => manage::nodes(&cli.config, json).await,
        Command::Token(c) => manage::token(&cli.config, c).await,
    }
}
