//! `penstock target rotate` and `penstock secrets report`.

use std::path::Path;

use clap::Subcommand;

use crate::app::App;
use crate::rotation::{self, Outcome, Reason};

/// `secrets …`
#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Each target's secret: age, last rotation, last use and who used it, rotation failures,
    /// and which targets share an identical secret.
    Report {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Rotates `name` now; prints the new version, never the secret.
pub(crate) async fn rotate(app: &App, name: &str) -> anyhow::Result<()> {
    app.load_policies()?;
    let mut app = app.clone();
    app.start_notifier()?;
    let result = rotation::rotate(&app, name, Reason::OnDemand, "cli").await;
    // A failure (or success) is posted to the webhooks before the command exits.
    app.notifier.flush(std::time::Duration::from_secs(60)).await;
    match result? {
        Outcome::Rotated { version, recovered } => {
            if let Some((v, how)) = recovered {
                println!("An interrupted rotation was settled first: version {v} {how}.");
            }
            println!("Secret of {name} rotated to version {version} (verified by a fresh login).");
            Ok(())
        }
        Outcome::Settled { version } => {
            println!("Secret of {name} is version {version}.");
            Ok(())
        }
        Outcome::Busy(holder) => anyhow::bail!("a rotation of {name} is already running ({holder}); try again shortly"),
        Outcome::Deferred => anyhow::bail!("a session on {name} is live; the rotation was not started"),
    }
}

pub(crate) async fn secrets(config: &Path, cmd: SecretsCmd) -> anyhow::Result<()> {
    let app = App::open_path(config).await?;
    // Without policies the report still shows everything but max_age and after_session.
    if let Err(e) = app.load_policies() {
        eprintln!("penstock: warning: {}", format!("{e:#}").replace('\n', " "));
    }
    match cmd {
        SecretsCmd::Report { json } => {
            let entries = rotation::report::build(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", rotation::report::render(&entries, app.clock.now()));
            }
        }
    }
    Ok(())
}
