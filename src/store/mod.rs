//! The store: one sqlx pool over SQLite (embedded default) or PostgreSQL, with the versioned
//! migrations under `migrations/<backend>/`. SQL elsewhere in the crate is written once with
//! `$1` placeholders, which both backends accept.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Transaction};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// An open write transaction; see [`Store::begin_write`].
pub type Tx = Transaction<'static, sqlx::Any>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Opens the database at `url`. With `create`, a missing SQLite file is created; without,
    /// it is an error that says to run `penstock init`. Migrations are applied either way.
    pub async fn open(url: &str, create: bool) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            bail!("database url must start with sqlite:// or postgres:// (got {:?})", redact_url(url));
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            let file = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let file = file.split('?').next().unwrap_or("").to_string();
            if !create && !Path::new(&file).exists() {
                bail!("database {file} does not exist (run `penstock init` first)");
            }
            if !url.contains('?') {
                url.push_str(if create { "?mode=rwc" } else { "?mode=rw" });
            }
        }
        let opts =
            AnyConnectOptions::from_str(&url).with_context(|| format!("bad database url {}", redact_url(&url)))?;
        // One direct connection first, so a dead server is reported at once with its cause.
        {
            use sqlx::Connection;
            let conn = tokio::time::timeout(Duration::from_secs(10), sqlx::AnyConnection::connect_with(&opts))
                .await
                .map_err(|_| anyhow::anyhow!("cannot open database {}: connection timed out", redact_url(&url)))?
                .map_err(|e| anyhow::anyhow!("cannot open database {}: {}", redact_url(&url), one_line(&e)))?;
            let _ = conn.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            // No idle/lifetime reaper task: sqlx 0.8.6's can spin forever (launchbadge/sqlx#3645).
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {}", redact_url(&url), one_line(&e)))?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("database {}: {}", redact_url(&url), one_line(&e)))?;
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|e| anyhow::anyhow!("database migration failed: {}", one_line(&e)))?;
        Ok(Store { pool, backend })
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that holds the store's write lock from its first statement, so
    /// concurrent writers (the server and a CLI, or several servers on PostgreSQL) queue instead
    /// of deadlocking or racing for the next audit sequence number.
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE meta SET value = value WHERE key = 'write_lock'").execute(&mut *tx).await?;
        Ok(tx)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database error as one line.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// The URL with any password replaced.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite:///x.db"), "sqlite:///x.db");
    }
}
