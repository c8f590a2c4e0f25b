//! Signals between gateways. A change that running sessions must act on at once (a kill, a
//! revoke, an approval or denial, a disabled user, a policy reload) is announced with PostgreSQL
//! `NOTIFY` inside the transaction that makes it, so a change that rolls back announces nothing
//! and one that commits reaches every node's `LISTEN` at once. A node wakes its session watcher
//! and its waiting vendors on each announcement; their polls stay as the fallback, and a listener
//! that had to reconnect wakes everyone once to catch up on what it may have missed. SQLite
//! holds one gateway and has no notifications: there the polls are the mechanism.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::store::{Backend, Tx};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "penstock_signals";

fn wake_counter() -> &'static watch::Sender<u64> {
    static SENDER: OnceLock<watch::Sender<u64>> = OnceLock::new();
    SENDER.get_or_init(|| watch::channel(0).0)
}

/// A receiver that changes each time this process is woken by a signal.
pub fn subscribe() -> watch::Receiver<u64> {
    wake_counter().subscribe()
}

/// Wakes every subscriber of this process.
pub fn wake() {
    wake_counter().send_modify(|n| *n = n.wrapping_add(1));
}

/// Announces `what` (a short word: `kill`, `revoke`, `approval`, …) to every node when `tx`
/// commits. A no-op on SQLite.
pub async fn announce(tx: &mut Tx, backend: Backend, what: &str) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(what).execute(&mut **tx).await?;
    }
    Ok(())
}

/// Starts this node's listener (PostgreSQL with `[node] notify`, else nothing).
pub fn start_listener(app: &App) {
    if app.store.backend() != Backend::Postgres || !app.config.node.notify {
        return;
    }
    let url = app.config.database_url();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match listen(&url).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "signal listener: reconnecting; polls carry on meanwhile");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
}

async fn listen(url: &str) -> anyhow::Result<()> {
    let mut l = sqlx::postgres::PgListener::connect(url).await?;
    l.listen(CHANNEL).await?;
    // Whatever was announced while no one listened: look now.
    wake();
    loop {
        match l.try_recv().await? {
            Some(_) => wake(),
            // The connection dropped and was made again: notifications in between are lost.
            None => wake(),
        }
    }
}
