//! `penstock init`: a new installation in one folder, all or nothing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::app::App;
use crate::audit::{self, Event};
use crate::clock::SystemClock;
use crate::config::{default_config_text, Config};
use crate::store::Store;
use crate::vault::{MasterKey, Vault};

use super::fsutil::write_new_file;

/// Example policies shipped with the binary (see `policies/` in the source tree).
pub const EXAMPLE_POLICIES: &[(&str, &str)] = &[
    ("10-safety-critical.toml", include_str!("../../policies/10-safety-critical.toml")),
    ("20-line-maintenance.toml", include_str!("../../policies/20-line-maintenance.toml")),
    ("30-historian.toml", include_str!("../../policies/30-historian.toml")),
];

/// Removes what an interrupted init created.
struct Undo(Vec<PathBuf>);

impl Undo {
    fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Creates the installation in `dir`; returns the config path.
pub async fn init(dir: &Path, database_url: Option<&str>) -> anyhow::Result<PathBuf> {
    let config_path = dir.join("penstock.toml");
    for name in [
        "penstock.toml",
        "master.key",
        "ssh_host_ed25519_key",
        "evidence_ed25519_key",
        "tls_cert.pem",
        "tls_key.pem",
        "penstock.db",
    ] {
        if dir.join(name).exists() {
            bail!("{} already holds a Penstock installation ({name} exists); nothing was changed", dir.display());
        }
    }
    let mut undo = Undo(Vec::new());
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        undo.0.push(dir.to_path_buf());
    }
    let key = MasterKey::generate();
    let key_path = dir.join("master.key");
    write_new_file(&key_path, format!("{}\n", key.to_hex().as_str()).as_bytes(), 0o600)?;
    undo.0.push(key_path);
    let host_key_path = dir.join("ssh_host_ed25519_key");
    crate::keys::write_private_key(&host_key_path, &crate::keys::generate_ed25519())?;
    undo.0.push(host_key_path);
    let evidence_key = dir.join("evidence_ed25519_key");
    crate::keys::write_private_key(&evidence_key, &crate::keys::generate_ed25519())?;
    undo.0.push(evidence_key);
    undo.0.push(dir.join("tls_key.pem"));
    undo.0.push(dir.join("tls_cert.pem"));
    crate::tls_identity::generate(&dir.join("tls_cert.pem"), &dir.join("tls_key.pem"))?;
    let db_url = match database_url {
        Some(u) => u.to_string(),
        None => format!("sqlite://{}", std::path::absolute(dir.join("penstock.db"))?.display()),
    };
    let db_setting = if database_url.is_some() { db_url.clone() } else { String::new() };
    write_new_file(&config_path, default_config_text(&db_setting).as_bytes(), 0o640)?;
    undo.0.push(config_path.clone());
    for sub in ["recordings", "policies"] {
        let p = dir.join(sub);
        if !p.exists() {
            std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
            undo.0.push(p);
        }
    }
    for (name, text) in EXAMPLE_POLICIES {
        let p = dir.join("policies").join(name);
        if !p.exists() {
            write_new_file(&p, text.as_bytes(), 0o644)?;
            undo.0.push(p);
        }
    }
    if database_url.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            undo.0.push(dir.join(format!("penstock.db{suffix}")));
        }
    }
    let store = Store::open(&db_url, true).await?;
    let existing: i64 = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM meta WHERE key = 'vault_check'")
        .fetch_one(store.pool())
        .await?;
    if existing > 0 {
        bail!(
            "database {} already belongs to a Penstock installation; nothing was changed",
            crate::store::redact_url(&db_url)
        );
    }
    let vault = Vault::new(&key);
    let mut tx = store.begin_write().await?;
    sqlx::query("INSERT INTO meta (key, value) VALUES ('vault_check', $1)")
        .bind(vault.check_value()?)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, &SystemClock, "cli", &Event::Initialized {}).await?;
    tx.commit().await?;
    store.close().await;
    undo.disarm();
    // Prove it opens.
    let cfg = Config::load(&config_path)?;
    App::open(cfg).await?.store.close().await;
    Ok(config_path)
}
