//! [`App`]: the core's handles (config, store, vault, clock) that every front end is given.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sqlx::Row;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::notify::Notifier;
use crate::policy::Policies;
use crate::store::Store;
use crate::vault::{MasterKey, Vault};

/// Everything the core needs.
#[derive(Debug, Clone)]
pub struct App {
    /// Configuration.
    pub config: Arc<Config>,
    /// Database.
    pub store: Store,
    /// Secret sealing.
    pub vault: Arc<Vault>,
    /// Time.
    pub clock: SharedClock,
    /// Access policies (empty until loaded by `serve` or a command that needs them).
    pub policies: Arc<Policies>,
    /// Webhook notifications (inactive unless started by `serve`).
    pub notifier: Notifier,
    /// This gateway's node id (set by `serve` through `node::register`; empty elsewhere).
    pub node_id: Arc<String>,
    /// Live feeds of the sessions this process records (the live view).
    pub feeds: Arc<crate::live::Feeds>,
}

impl App {
    /// Opens an existing installation: config, database, master key (checked against the
    /// database, so a wrong key is an error here and never garbage later).
    pub async fn open(config: Config) -> anyhow::Result<App> {
        let store = Store::open(&config.database_url(), false).await?;
        let key_path = config.master_key_path();
        let key = MasterKey::load(&key_path)?;
        let vault = Vault::new(&key);
        let check: Option<Vec<u8>> = sqlx::query("SELECT value FROM meta WHERE key = 'vault_check'")
            .fetch_optional(store.pool())
            .await
            .context("cannot read database")?
            .map(|r| r.try_get(0))
            .transpose()?;
        match check {
            None => bail!("database has no vault check value: it was not created by `penstock init`"),
            Some(c) if !vault.verify_check_value(&c) => {
                bail!("master key {} does not match this database (wrong key file?)", key_path.display())
            }
            Some(_) => {}
        }
        Ok(App {
            config: Arc::new(config),
            store,
            vault: Arc::new(vault),
            clock: Arc::new(SystemClock),
            policies: Arc::new(Policies::default()),
            notifier: Notifier::default(),
            node_id: Arc::default(),
            feeds: Arc::default(),
        })
    }

    /// Loads the policies from the configured folder (an error leaves the current set).
    pub fn load_policies(&self) -> anyhow::Result<usize> {
        self.policies.reload(&self.config.policies_dir())
    }

    /// Starts webhook delivery as configured.
    pub fn start_notifier(&mut self) -> anyhow::Result<()> {
        let n = &self.config.notifications;
        for u in &n.webhooks {
            crate::notify::parse_url(u)?;
        }
        self.notifier = Notifier::start(
            self.store.clone(),
            self.clock.clone(),
            crate::notify::Settings {
                urls: n.webhooks.clone(),
                attempts: n.attempts,
                backoff: std::time::Duration::from_secs(n.backoff_secs),
                timeout: std::time::Duration::from_secs(n.timeout_secs.max(1)),
            },
        );
        Ok(())
    }

    /// Opens the installation whose config is at `path`.
    pub async fn open_path(path: &Path) -> anyhow::Result<App> {
        App::open(Config::load(path)?).await
    }
}
