//! Operations: Prometheus metrics (text format 0.0.4) and the health checks a load balancer
//! probes, on the `[metrics] listen` address (plain HTTP, a listener of its own).
//!
//! - `/metrics`: counters kept by this process (audit events by kind, which covers logins,
//!   failures, lockouts and sessions; sessions ended by reason; relay bytes; pre-auth drops;
//!   uploads) and gauges read at scrape time (live sessions of this node, recording upload
//!   backlog, whether this node runs the background jobs and how long ago their last pass ran,
//!   store latency).
//! - `/healthz`: 200 while the process serves.
//! - `/readyz`: 200 only when the store takes a write and the recording storage can be written
//!   (local spool with room; with `require_remote`, the bucket too); 503 with the reason.
//!
//! The core calls the `count_*` functions; this module knows nothing of SSH or RDP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::Row;

use crate::app::App;
use crate::storage::upload::HEALTH;

static EVENTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static ENDED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static BYTES_UP: AtomicU64 = AtomicU64::new(0);
static BYTES_DOWN: AtomicU64 = AtomicU64::new(0);
static PREAUTH_DROPS: AtomicU64 = AtomicU64::new(0);
static LAST_JOBS_PASS: AtomicI64 = AtomicI64::new(0);
static RECORDER_BACKLOG: AtomicI64 = AtomicI64::new(0);

/// Batches handed to (positive) or taken by (negative) the recorders' writer tasks.
pub fn recorder_backlog(delta: i64) {
    RECORDER_BACKLOG.fetch_add(delta, Ordering::Relaxed);
}

/// An audit event of `kind` was appended by this process.
pub fn count_event(kind: &'static str) {
    if let Ok(mut m) = EVENTS.lock() {
        *m.entry(kind).or_default() += 1;
    }
}

/// A session ended with `reason`, having relayed these bytes.
pub fn count_session_end(reason: &str, up: i64, down: i64) {
    if let Ok(mut m) = ENDED.lock() {
        // Reasons are a fixed set; the cap keeps a bug from growing the map.
        if m.len() < 64 || m.contains_key(reason) {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }
    BYTES_UP.fetch_add(up.max(0) as u64, Ordering::Relaxed);
    BYTES_DOWN.fetch_add(down.max(0) as u64, Ordering::Relaxed);
}

/// A connection was dropped before authentication (login table full).
pub fn count_preauth_drop() {
    PREAUTH_DROPS.fetch_add(1, Ordering::Relaxed);
}

/// The background jobs ran a pass now (Unix seconds).
pub fn jobs_pass(now: i64) {
    LAST_JOBS_PASS.store(now, Ordering::Relaxed);
}

/// Starts the listener when `[metrics] listen` is set.
pub async fn start(app: &App) -> anyhow::Result<()> {
    let listen = app.config.metrics.listen.trim();
    if listen.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr =
        listen.parse().with_context(|| format!("[metrics] listen = {listen:?} is not IP:PORT"))?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ([metrics])"))?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app.clone());
    tracing::info!(listen = %listener.local_addr()?, "metrics and health listener ready");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// Why this node is not ready, if it is not.
pub async fn not_ready(app: &App) -> Option<String> {
    let store = async {
        let mut tx = app.store.begin_write().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.rollback().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), store).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(format!("store cannot be written: {}", crate::store::one_line(&e))),
        Err(_) => return Some("store did not answer within 5 s".into()),
    }
    let dir = app.config.recordings_dir();
    if let Err(e) = std::fs::create_dir_all(&dir)
        .map_err(anyhow::Error::from)
        .and_then(|_| crate::recording::check_space(&dir, app.config.recordings.min_free_mib))
    {
        return Some(format!("recordings cannot be written: {e}"));
    }
    if let Err(e) = crate::storage::upload::check_remote(&app.config) {
        return Some(e.to_string());
    }
    None
}

async fn ready(State(app): State<App>) -> Response {
    match not_ready(&app).await {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    match render(&app).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("metrics unavailable: {e}\n")).into_response(),
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics page.
pub async fn render(app: &App) -> anyhow::Result<String> {
    let mut out = String::new();
    let t0 = Instant::now();
    let live: i64 = sqlx::query("SELECT COUNT(*) FROM sessions WHERE node_id = $1 AND ended_at IS NULL")
        .bind(app.node_id.as_str())
        .fetch_one(app.store.pool())
        .await?
        .try_get(0)?;
    let latency = t0.elapsed().as_secs_f64();

    family(&mut out, "penstock_sessions_live", "gauge", "Sessions running on this node.");
    let _ = writeln!(out, "penstock_sessions_live {live}");
    family(&mut out, "penstock_sessions_ended_total", "counter", "Sessions this node ended, by end reason.");
    for (reason, n) in ENDED.lock().map(|m| m.clone()).unwrap_or_default() {
        let _ = writeln!(out, "penstock_sessions_ended_total{{reason=\"{reason}\"}} {n}");
    }
    family(&mut out, "penstock_audit_events_total", "counter", "Audit events this node appended, by kind.");
    let events = EVENTS.lock().map(|m| m.clone()).unwrap_or_default();
    for (kind, n) in &events {
        let _ = writeln!(out, "penstock_audit_events_total{{kind=\"{kind}\"}} {n}");
    }
    let ev = |k: &str| events.get(k).copied().unwrap_or(0);
    family(&mut out, "penstock_logins_total", "counter", "Logins on this node, by result.");
    let _ = writeln!(out, "penstock_logins_total{{result=\"succeeded\"}} {}", ev("login.succeeded"));
    let _ = writeln!(out, "penstock_logins_total{{result=\"failed\"}} {}", ev("login.failed"));
    family(&mut out, "penstock_lockouts_total", "counter", "Lockouts this node imposed.");
    let _ = writeln!(out, "penstock_lockouts_total {}", ev("login.locked_out"));
    family(&mut out, "penstock_preauth_drops_total", "counter", "Connections dropped before authentication.");
    let _ = writeln!(out, "penstock_preauth_drops_total {}", PREAUTH_DROPS.load(Ordering::Relaxed));
    family(&mut out, "penstock_relay_bytes_total", "counter", "Bytes relayed by ended sessions, by direction.");
    let _ = writeln!(out, "penstock_relay_bytes_total{{direction=\"up\"}} {}", BYTES_UP.load(Ordering::Relaxed));
    let _ = writeln!(out, "penstock_relay_bytes_total{{direction=\"down\"}} {}", BYTES_DOWN.load(Ordering::Relaxed));
    family(
        &mut out,
        "penstock_recorder_backlog_batches",
        "gauge",
        "Batches of session output queued for the recorders' writers.",
    );
    let _ = writeln!(out, "penstock_recorder_backlog_batches {}", RECORDER_BACKLOG.load(Ordering::Relaxed).max(0));
    family(&mut out, "penstock_upload_backlog_files", "gauge", "Ended recordings waiting in the spool for upload.");
    let _ = writeln!(out, "penstock_upload_backlog_files {}", HEALTH.backlog_files.load(Ordering::Relaxed));
    family(&mut out, "penstock_upload_backlog_bytes", "gauge", "Their bytes.");
    let _ = writeln!(out, "penstock_upload_backlog_bytes {}", HEALTH.backlog_bytes.load(Ordering::Relaxed));
    family(&mut out, "penstock_uploads_total", "counter", "Objects uploaded to the recording store.");
    let _ = writeln!(out, "penstock_uploads_total {}", HEALTH.uploads.load(Ordering::Relaxed));
    family(&mut out, "penstock_remote_storage_up", "gauge", "1 when the last probe wrote to the bucket (S3).");
    let up = HEALTH.remote_ok.load(Ordering::Relaxed) as u8;
    let _ = writeln!(out, "penstock_remote_storage_up {up}");
    family(&mut out, "penstock_jobs_leader", "gauge", "1 when this node runs the background jobs.");
    let _ = writeln!(out, "penstock_jobs_leader {}", crate::jobs::leader() as u8);
    family(&mut out, "penstock_jobs_lag_seconds", "gauge", "Seconds since this node's last background-jobs pass.");
    let last = LAST_JOBS_PASS.load(Ordering::Relaxed);
    let lag = if last == 0 { -1 } else { app.clock.now() - last };
    let _ = writeln!(out, "penstock_jobs_lag_seconds {lag}");
    family(&mut out, "penstock_store_latency_seconds", "gauge", "Time of one store query at this scrape.");
    let _ = writeln!(out, "penstock_store_latency_seconds {latency:.6}");
    Ok(out)
}
