//! `penstock serve` and `penstock quickstart`.

use std::path::Path;

use anyhow::Context;

use crate::app::App;
use crate::config::{Config, LogFormat};
use crate::secret::Secret;
use crate::users::{self, NewUser, Role};

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    init_tracing(&cfg);
    let app = App::open(cfg).await?;
    run(app).await
}

async fn run(mut app: App) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    crate::node::register(&mut app).await?;
    crate::recovery::on_start(&app).await?;
    if crate::evidence::ensure_key(&app.config)? {
        tracing::info!(key = %app.config.evidence_key_path().display(), "evidence signing key created");
    }
    if crate::tls_identity::ensure(&app.config)? {
        tracing::info!(cert = %app.config.tls_cert_path().display(), "self-signed TLS certificate created");
    }
    crate::proxy_protocol::check_config("ssh", &app.config.ssh.proxy_from)?;
    crate::proxy_protocol::check_config("rdp", &app.config.rdp.proxy_from)?;
    crate::jobs::start(&app);
    crate::metrics::start(&app).await?;
    crate::storage::upload::start(&app).await?;
    crate::signals::start_listener(&app);
    crate::search::start(app.clone());
    crate::retention::start(app.clone());
    crate::siem::start(&app)?;
    let n = app.load_policies()?;
    tracing::info!(policies = n, dir = %app.config.policies_dir().display(), "policies loaded");
    app.start_notifier()?;
    crate::rotation::start_scheduler(app.clone());
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let reload_app = app.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            crate::ssh::server::reload_policies(&reload_app, "SIGHUP").await;
        }
    });
    // The console first: once "ssh listener ready" is logged, both listen.
    crate::web::start(app.clone()).await?;
    let rdp_task = if app.config.rdp.enabled {
        let rdp = crate::rdp::server::Server::bind(app.clone()).await?;
        tracing::info!(listen = %rdp.local_addr()?, "rdp listener ready");
        tokio::spawn(rdp.run())
    } else {
        tokio::spawn(std::future::pending())
    };
    let ssh = crate::ssh::server::Server::bind(app.clone()).await?;
    tracing::info!(listen = %ssh.local_addr(), "ssh listener ready");
    let ssh_task = tokio::spawn(ssh.run());
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        r = ssh_task => { r.context("ssh listener panicked")??; }
        r = rdp_task => { r.context("rdp listener panicked")??; }
    }
    crate::siem::release(&app).await;
    app.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Creates `dir` with three users on first use, prints how to log in, and serves.
pub async fn quickstart(dir: &Path, ssh_listen: &str, web_listen: &str) -> anyhow::Result<()> {
    let config_path = dir.join("penstock.toml");
    if !config_path.exists() {
        super::init::init(dir, None).await?;
        let app = App::open_path(&config_path).await?;
        println!("Created a local Penstock installation in {}.\n", dir.display());
        for (name, role, org) in [
            ("admin", Role::Admin, None),
            ("manager", Role::Manager, Some("Plant")),
            ("vendor", Role::Vendor, Some("Acme Automation")),
        ] {
            let password = Secret::from_string(crate::auth::random_token(16));
            let enrol = users::add(
                &app,
                "quickstart",
                NewUser {
                    name: name.into(),
                    role,
                    org: org.map(str::to_string),
                    expires_at: None,
                    password: Some(password.clone()),
                },
            )
            .await?;
            println!("== {name} ({role}) password: {}", password.expose_str().unwrap_or(""));
            super::manage::print_enrolment(name, &enrol.otpauth_uri);
        }
        app.store.close().await;
        println!("These passwords and QR codes are shown only now.\n");
    } else {
        println!("Using the existing installation in {}.", dir.display());
    }
    let mut cfg = Config::load(&config_path)?;
    cfg.ssh.listen = ssh_listen.parse().with_context(|| format!("invalid --ssh-listen {ssh_listen:?}"))?;
    cfg.web.listen = web_listen.parse().with_context(|| format!("invalid --web-listen {web_listen:?}"))?;
    let port = cfg.ssh.listen.port();
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "penstock".into());
    let c = config_path.display();
    let ip = cfg.ssh.listen.ip();
    println!("Add a target:   {exe} -c {c} target add plc-line3 --address HOST:22 --login USER --password-stdin --fetch-host-key");
    println!("Vendor asks:    ssh -p {port} vendor@{ip} request plc-line3 --for 1h --reason \"CHG-1\"   (or just connect below)");
    println!("Manager:        ssh -p {port} manager@{ip} requests --pending ; ssh -p {port} manager@{ip} approve ID");
    println!("Break-glass:    {exe} -c {c} grant add --user vendor --target plc-line3 --for 2h");
    println!("Connect:        ssh -p {port} vendor@plc-line3@{ip}   (password, then the 6-digit code)");
    if cfg.web.enabled {
        println!(
            "Web console:    {}   (log in with a password above and the 6-digit code)",
            crate::web::url(cfg.web.listen)
        );
    }
    println!("TLS certificate SHA-256 (web console, RDP): {}", crate::tls_identity::load(&cfg)?.thumbprint());
    println!("Policies in {} decide who approves and when (see README).\n", dir.join("policies").display());
    init_tracing(&cfg);
    run(App::open(cfg).await?).await
}
