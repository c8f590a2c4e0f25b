//! Handlers of the management commands (`user`, `target`, `grant`, `session`, `audit`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chrono::NaiveDate;

use crate::access;
use crate::app::App;
use crate::audit::{self, Verdict};
use crate::auth::totp;
use crate::clock::fmt_ts;
use crate::secret::Secret;
use crate::sessions;
use crate::targets::{self, CredentialKind, NewTarget};
use crate::users::{self, NewUser, Role};

use super::{
    read_stdin_all, read_stdin_line, AuditCmd, CredentialArgs, GrantCmd, PolicyCmd, SessionCmd, TargetCmd, TokenCmd,
    UserCmd,
};

const ACTOR: &str = "cli";

/// Prints a new user's enrolment: the otpauth URI and the QR code.
pub(crate) fn print_enrolment(name: &str, uri: &Secret) {
    println!("TOTP for {name}: scan this with an authenticator app (or enter the URI):");
    println!("{}", totp::qr_for_terminal(uri));
    println!("{}", uri.expose_str().unwrap_or(""));
}

fn parse_expiry(s: &str) -> anyhow::Result<i64> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("invalid --expires {s:?}: expected YYYY-MM-DD"))?;
    // The account works through the whole given day (UTC).
    let next = d.succ_opt().context("date out of range")?;
    Ok(next.and_hms_opt(0, 0, 0).context("date out of range")?.and_utc().timestamp())
}

pub(crate) async fn user(config: &Path, cmd: UserCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        UserCmd::Add { name, role, org, expires, password_stdin, no_password } => {
            let role: Role = role.parse()?;
            let expires_at = expires.as_deref().map(parse_expiry).transpose()?;
            let (password, generated) = if no_password {
                (None, false)
            } else if password_stdin {
                (Some(read_stdin_line("password")?), false)
            } else {
                (Some(Secret::from_string(crate::auth::random_token(20))), true)
            };
            let enrol = users::add(
                &app,
                ACTOR,
                NewUser { name: name.clone(), role, org, expires_at, password: password.clone() },
            )
            .await?;
            println!("User {name} added ({role}).");
            if generated {
                if let Some(p) = &password {
                    println!("Password (shown once): {}", p.expose_str().unwrap_or(""));
                }
            }
            print_enrolment(&name, &enrol.otpauth_uri);
        }
        UserCmd::List { json } => {
            let list = users::list(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<20} {:<8} {:<24} {:<10} {:<20}", "NAME", "ROLE", "ORG", "STATE", "EXPIRES");
                let now = app.clock.now();
                for u in list {
                    let state = if u.disabled {
                        "disabled"
                    } else if !u.usable_at(now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<20} {:<8} {:<24} {:<10} {:<20}",
                        u.name,
                        u.role.to_string(),
                        u.org.unwrap_or_default(),
                        state,
                        u.expires_at.map(fmt_ts).unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        UserCmd::Disable { name } => {
            users::disable(&app, ACTOR, &name).await?;
            println!("User {name} disabled.");
        }
        UserCmd::ResetMfa { name } => {
            let enrol = users::reset_mfa(&app, ACTOR, &name).await?;
            println!("TOTP of {name} replaced; the old authenticator entry no longer works.");
            print_enrolment(&name, &enrol.otpauth_uri);
        }
        UserCmd::AddKey { name, key, key_file } => {
            let line = match (key, key_file) {
                (Some(k), _) => k,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, None) => anyhow::bail!("give --key or --key-file"),
            };
            let fp = users::add_key(&app, ACTOR, &name, &line).await?;
            println!("Key {fp} added to {name}.");
        }
        UserCmd::RemoveKey { name, key } => {
            users::remove_key(&app, ACTOR, &name, &key).await?;
            println!("Key removed from {name}.");
        }
    }
    Ok(())
}

fn read_credential(c: &CredentialArgs) -> anyhow::Result<Option<(CredentialKind, Secret)>> {
    if c.password_stdin {
        return Ok(Some((CredentialKind::Password, read_stdin_line("target password")?)));
    }
    if let Some(f) = &c.key_file {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read key file {}", f.display()))?;
        return Ok(Some((CredentialKind::PrivateKey, Secret::new(bytes))));
    }
    if c.kbdint_stdin {
        return Ok(Some((CredentialKind::KeyboardInteractive, read_stdin_all("keyboard-interactive answers")?)));
    }
    Ok(None)
}

pub(crate) async fn target(config: &Path, cmd: TargetCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        TargetCmd::Add {
            name,
            address,
            login,
            protocol,
            credential,
            host_key,
            fetch_host_key,
            site,
            zone,
            criticality,
            legacy_crypto,
            cert_sha256,
            fetch_cert,
            nla: _,
            no_nla,
        } => {
            let cred = read_credential(&credential)?
                .context("give the target credential: --password-stdin, --key-file or --kbdint-stdin")?;
            if protocol == "rdp" {
                let cert_sha256 = if fetch_cert { Some(fetch_rdp_cert(&app, &address).await?) } else { cert_sha256 };
                let cert_sha256 = cert_sha256
                    .context("give --cert-sha256 or --fetch-cert: the target's certificate must be pinned")?;
                let t = targets::add(
                    &app,
                    ACTOR,
                    NewTarget {
                        name,
                        protocol,
                        address,
                        login,
                        credential: cred,
                        host_key: None,
                        site,
                        zone,
                        criticality,
                        legacy_crypto,
                        cert_sha256: Some(cert_sha256),
                        rdp_nla: !no_nla,
                    },
                )
                .await?;
                println!(
                    "Target {} added (RDP {} as {}, certificate {}, {}).",
                    t.name,
                    t.address(),
                    t.login,
                    t.cert_sha256.clone().unwrap_or_default(),
                    if t.rdp_nla { "NLA" } else { "auto-logon without NLA" }
                );
                return Ok(());
            }
            if fetch_cert || cert_sha256.is_some() || no_nla {
                anyhow::bail!("--fetch-cert, --cert-sha256 and --no-nla are for RDP targets (--protocol rdp)");
            }
            let host_key = if fetch_host_key {
                let (host, port) = targets::parse_address(&address)?;
                let key =
                    crate::ssh::upstream::fetch_host_key(&host, port, &app.config.upstream, legacy_crypto).await?;
                println!("Fetched host key of {address}: {}", crate::keys::fingerprint(&key));
                Some(crate::keys::to_openssh(&key))
            } else {
                host_key
            };
            let host_key =
                host_key.context("give --host-key or --fetch-host-key: the target's identity must be pinned")?;
            let t = targets::add(
                &app,
                ACTOR,
                NewTarget {
                    name,
                    protocol,
                    address,
                    login,
                    credential: cred,
                    host_key: Some(host_key),
                    site,
                    zone,
                    criticality,
                    legacy_crypto,
                    cert_sha256: None,
                    rdp_nla: true,
                },
            )
            .await?;
            println!(
                "Target {} added ({} as {}, host key {}).",
                t.name,
                t.address(),
                t.login,
                t.host_key_fingerprint().unwrap_or_default()
            );
        }
        TargetCmd::Set { name, legacy_crypto, no_legacy_crypto, cert_sha256, fetch_cert, nla, no_nla } => {
            if cert_sha256.is_some() || fetch_cert || nla || no_nla {
                let cert = if fetch_cert {
                    let t = targets::get(&app, &name).await?;
                    Some(fetch_rdp_cert(&app, &t.address()).await?)
                } else {
                    cert_sha256
                };
                let nla = if nla {
                    Some(true)
                } else if no_nla {
                    Some(false)
                } else {
                    None
                };
                let t = targets::set_rdp(&app, ACTOR, &name, cert.as_deref(), nla).await?;
                println!(
                    "Target {}: certificate {}, {}.",
                    t.name,
                    t.cert_sha256.clone().unwrap_or_default(),
                    if t.rdp_nla { "NLA" } else { "auto-logon without NLA" }
                );
                if !legacy_crypto && !no_legacy_crypto {
                    return Ok(());
                }
            }
            if !legacy_crypto && !no_legacy_crypto {
                anyhow::bail!("nothing to change: give --legacy-crypto or --no-legacy-crypto (SSH), or --cert-sha256, --fetch-cert, --nla, --no-nla (RDP)");
            }
            let t = targets::set_legacy_crypto(&app, ACTOR, &name, legacy_crypto).await?;
            println!(
                "Target {}: legacy SSH algorithms {}.",
                t.name,
                if t.legacy_crypto { "allowed" } else { "not allowed (modern set only)" }
            );
        }
        TargetCmd::List { json, legacy } => {
            let list: Vec<_> = targets::list(&app).await?.into_iter().filter(|t| !legacy || t.legacy_crypto).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<20} {:<6} {:<24} {:<12} {:<12} {:<10} {:<10}",
                    "NAME", "PROTO", "ADDRESS", "LOGIN", "SITE", "ZONE", "CRIT"
                );
                for t in list {
                    println!(
                        "{:<20} {:<6} {:<24} {:<12} {:<12} {:<10} {:<10}",
                        t.name,
                        t.protocol,
                        t.address(),
                        t.login,
                        t.site.clone().unwrap_or_default(),
                        t.zone.clone().unwrap_or_default(),
                        t.criticality.clone().unwrap_or_default()
                    );
                }
            }
        }
        TargetCmd::Show { name } => {
            let t = targets::get(&app, &name).await?;
            println!("name:          {}", t.name);
            println!("protocol:      {}", t.protocol);
            println!("address:       {}", t.address());
            println!("login:         {}", t.login);
            println!("credential:    {} (vaulted)", t.credential_kind.as_str());
            if t.protocol == "rdp" {
                println!(
                    "certificate:   {} (SHA-256, pinned)",
                    t.cert_sha256.clone().unwrap_or_else(|| "(none)".into())
                );
                println!(
                    "logon:         {}",
                    if t.rdp_nla { "NLA (CredSSP)" } else { "auto-logon (Client Info), no NLA" }
                );
            } else {
                println!("host key:      {}", t.host_key_fingerprint().unwrap_or_else(|| "(none)".into()));
                println!(
                    "algorithms:    {}",
                    if t.legacy_crypto { "legacy allowed (ssh-rsa, SHA-1 kex, CBC, hmac-sha1)" } else { "modern only" }
                );
            }
            println!(
                "site/zone/crit: {} / {} / {}",
                t.site.unwrap_or_default(),
                t.zone.unwrap_or_default(),
                t.criticality.unwrap_or_default()
            );
        }
        TargetCmd::Remove { name } => {
            targets::remove(&app, ACTOR, &name).await?;
            println!("Target {name} removed.");
        }
        TargetCmd::SetSecret { name, credential } => {
            let (kind, secret) = read_credential(&credential)?
                .context("give the new credential: --password-stdin, --key-file or --kbdint-stdin")?;
            let v = targets::set_secret(&app, ACTOR, &name, kind, secret).await?;
            println!("Credential of {name} rotated to version {v}.");
        }
        TargetCmd::Rotate { name } => super::secrets::rotate(&app, &name).await?,
    }
    Ok(())
}

pub(crate) async fn grant(config: &Path, cmd: GrantCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        GrantCmd::Add { user, target, duration } => {
            let secs = access::parse_duration(&duration)?;
            let now = app.clock.now();
            let g = access::issue(&app, ACTOR, &user, &target, now, now + secs).await?;
            println!("Grant {} issued: {user} may reach {target} until {}.", g.id, fmt_ts(g.valid_until));
        }
        GrantCmd::List { json } => {
            let list = access::list(&app, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<6} {:<16} {:<16} {:<24} {:<24} {:<8}", "ID", "USER", "TARGET", "FROM", "UNTIL", "STATE");
                let now = app.clock.now();
                for g in list {
                    let u = users::by_id(&app, g.user_id).await.map(|u| u.name).unwrap_or_default();
                    let t = targets::by_id(&app, g.target_id).await.map(|t| t.name).unwrap_or_default();
                    let state = if g.revoked_at.is_some() {
                        "revoked"
                    } else if g.live_at(now) {
                        "live"
                    } else if g.valid_from > now {
                        "upcoming"
                    } else {
                        "ended"
                    };
                    println!(
                        "{:<6} {:<16} {:<16} {:<24} {:<24} {:<8}",
                        g.id,
                        u,
                        t,
                        fmt_ts(g.valid_from),
                        fmt_ts(g.valid_until),
                        state
                    );
                }
            }
        }
        GrantCmd::Revoke { id } => {
            access::revoke(&app, ACTOR, id).await?;
            println!("Grant {id} revoked; its live sessions end within 2 s.");
        }
    }
    Ok(())
}

pub(crate) async fn session(config: &Path, cmd: SessionCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        SessionCmd::List { json, live } => {
            let list = sessions::list(&app, live).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<34} {:<12} {:<14} {:<22} {:<24} {:<8} {:>10} {:>10}",
                    "ID", "USER", "TARGET", "CLIENT", "STARTED", "STATE", "UP", "DOWN"
                );
                for s in list {
                    let state = s.end_reason.clone().unwrap_or_else(|| "live".into());
                    println!(
                        "{:<34} {:<12} {:<14} {:<22} {:<24} {:<8} {:>10} {:>10}",
                        s.id,
                        s.user,
                        s.target,
                        s.client_addr,
                        fmt_ts(s.started_at),
                        state,
                        s.bytes_up,
                        s.bytes_down
                    );
                }
            }
        }
        SessionCmd::Kill { id } => {
            let full = sessions::request_kill(&app, ACTOR, &id).await?;
            println!("Session {full} will be ended within 2 s.");
        }
    }
    Ok(())
}

pub(crate) async fn audit(config: &Path, cmd: AuditCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        AuditCmd::Verify { chain_only } => {
            match audit::verify(&app.store).await? {
                Verdict::Intact { count, head } => println!("audit chain intact: {count} events (head {head})"),
                Verdict::Broken { seq, reason } => anyhow::bail!("audit chain broken at event {seq}: {reason}"),
            }
            if chain_only {
                return Ok(());
            }
            let report = crate::recording::verify::check(&app.store, &crate::storage::for_app(&app)).await?;
            // Every problem on standard output; the error line names the first.
            for p in &report.problems {
                println!("{p}");
            }
            match report.problems.first() {
                None => {
                    if report.deleted > 0 {
                        println!(
                            "recordings intact: {} files ({} recording(s) deleted by retention, each with a recording.deleted event)",
                            report.intact, report.deleted
                        );
                    } else {
                        println!("recordings intact: {} files", report.intact);
                    }
                    Ok(())
                }
                Some(first) => anyhow::bail!(
                    "{} recording file(s) do not match the audit chain ({} intact); first: {first}",
                    report.problems.len(),
                    report.intact
                ),
            }
        }
        AuditCmd::Export { format: _, output } => {
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            loop {
                let batch = audit::read(&app.store, after, 1000).await?;
                let Some(last) = batch.last() else { break };
                after = last.seq;
                for r in &batch {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}

pub(crate) async fn policy(config: &Path, cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Check { dir } => {
            let dir = match dir {
                Some(d) => d,
                None => crate::config::Config::load(config)?.policies_dir(),
            };
            let set = crate::policy::PolicySet::load_dir(&dir)?;
            for p in &set.policies {
                println!(
                    "{}: {} (approvals {}, max {}, {} window(s)) — {}",
                    p.file.display(),
                    p.name,
                    p.required,
                    access::fmt_duration(p.max_duration),
                    p.windows.len(),
                    p.description
                );
            }
            println!("{} policies OK", set.policies.len());
            Ok(())
        }
        PolicyCmd::Reload => {
            let app = App::open_path(config).await?;
            let n = app.load_policies()?;
            let mut tx = app.store.begin_write().await?;
            let g: i64 = crate::ssh::server::policy_generation(&app).await.unwrap_or(0) + 1;
            sqlx::query("DELETE FROM meta WHERE key = 'policy_generation'").execute(&mut *tx).await?;
            sqlx::query("INSERT INTO meta (key, value) VALUES ('policy_generation', $1)")
                .bind(g.to_string().into_bytes())
                .execute(&mut *tx)
                .await?;
            crate::signals::announce(&mut tx, app.store.backend(), "policy").await?;
            tx.commit().await?;
            println!("{n} policies valid; running servers reload them within 2 s.");
            Ok(())
        }
        PolicyCmd::List => {
            let app = App::open_path(config).await?;
            app.load_policies()?;
            let set = app.policies.current();
            for t in targets::list(&app).await? {
                let p =
                    set.for_target(&t).map(|p| p.name.clone()).unwrap_or_else(|| "(none: only admin grants)".into());
                println!("{:<20} {}", t.name, p);
            }
            Ok(())
        }
    }
}

pub(crate) async fn token(config: &Path, cmd: TokenCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    match cmd {
        TokenCmd::Create { user, expires } => {
            let secs = access::parse_duration(&expires)?;
            let (id, value) = crate::tokens::create(&app, ACTOR, &user, secs).await?;
            println!("Token {id} for {user}, valid until {} (shown only now):", fmt_ts(app.clock.now() + secs));
            println!("{}", value.expose_str().unwrap_or(""));
        }
        TokenCmd::List { json } => {
            let list = crate::tokens::list(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let now = app.clock.now();
                println!("{:<6} {:<16} {:<24} {:<24} {:<8}", "ID", "USER", "CREATED", "EXPIRES", "STATE");
                for t in list {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<6} {:<16} {:<24} {:<24} {:<8}",
                        t.id,
                        t.user,
                        fmt_ts(t.created_at),
                        fmt_ts(t.expires_at),
                        state
                    );
                }
            }
        }
        TokenCmd::Revoke { id } => {
            crate::tokens::revoke(&app, ACTOR, id).await?;
            println!("Token {id} revoked.");
        }
    }
    Ok(())
}

/// `penstock nodes`.
pub(crate) async fn nodes(config: &Path, json: bool) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    let list = crate::node::list(&app).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no gateway has run on this store yet");
    }
    let now = app.clock.now();
    for n in list {
        println!(
            "{}  {:<16} {:<22} v{:<8} {:>3} live  {:<5}  heartbeat {} s ago  started {}{}",
            &n.id[..n.id.len().min(12)],
            n.name,
            n.address,
            n.version,
            n.live_sessions,
            n.state,
            now - n.heartbeat_at,
            crate::clock::fmt_ts(n.started_at),
            if n.jobs { "  runs jobs" } else { "" }
        );
    }
    Ok(())
}

/// `--fetch-cert`: the RDP server's certificate thumbprint, printed for the operator to compare.
async fn fetch_rdp_cert(app: &App, address: &str) -> anyhow::Result<String> {
    let (host, port) = targets::parse_address_or(address, 3389)?;
    let timeout = std::time::Duration::from_secs(app.config.upstream.connect_timeout_secs.max(1));
    let f = crate::rdp::target::fetch_cert(&host, port, timeout).await?;
    println!("Fetched certificate of {host}:{port}: SHA-256 {}", f.thumbprint);
    Ok(f.thumbprint)
}
