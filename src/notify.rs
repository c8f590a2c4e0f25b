//! Webhook notifications: JSON with a Slack-compatible `text` field, posted to every configured
//! URL from a task of its own. Delivery never blocks the caller: the queue is bounded, each
//! delivery is retried with backoff, and a delivery that finally fails is audited.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::audit::{self, Event};
use crate::clock::SharedClock;
use crate::store::Store;

/// Notifications waiting for delivery before new ones are dropped (and logged).
const QUEUE: usize = 1024;

#[derive(Debug)]
struct Note {
    kind: String,
    body: String,
}

/// Handle to the delivery task.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Note>>,
    /// Deliveries (note × URL) queued or in flight, for [`Notifier::flush`].
    pending: Arc<std::sync::atomic::AtomicUsize>,
    urls: usize,
}

/// Where to post.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host[:port]/path` URLs.
    pub urls: Vec<String>,
    /// Attempts per delivery.
    pub attempts: u32,
    /// First retry delay; doubles each time.
    pub backoff: Duration,
    /// Per-attempt time-out.
    pub timeout: Duration,
}

impl Notifier {
    /// Starts the delivery task (nothing is started when there are no URLs).
    pub fn start(store: Store, clock: SharedClock, settings: Settings) -> Notifier {
        if settings.urls.is_empty() {
            return Notifier::default();
        }
        let (tx, mut rx) = mpsc::channel::<Note>(QUEUE);
        let urls = settings.urls.len();
        let settings = Arc::new(settings);
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let left = pending.clone();
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(8));
            while let Some(note) = rx.recv().await {
                let note = Arc::new(note);
                for url in settings.urls.clone() {
                    let Ok(permit) = limit.clone().acquire_owned().await else { return };
                    let (note, settings, store, clock) = (note.clone(), settings.clone(), store.clone(), clock.clone());
                    let left = left.clone();
                    tokio::spawn(async move {
                        deliver(&url, &note, &settings, &store, &clock).await;
                        left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(permit);
                    });
                }
            }
        });
        Notifier { tx: Some(tx), pending, urls }
    }

    /// Waits until every queued notification was delivered (or finally failed), at most
    /// `within`: for short-lived commands (`penstock target rotate`) that must not exit before
    /// their notifications went out.
    pub async fn flush(&self, within: Duration) {
        let end = tokio::time::Instant::now() + within;
        while self.pending.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Queues a notification of `kind` with the human `text` and structured `data`.
    pub fn send(&self, kind: &str, text: String, data: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        let body = json!({ "kind": kind, "text": text, "data": data }).to_string();
        self.pending.fetch_add(self.urls, std::sync::atomic::Ordering::SeqCst);
        if tx.try_send(Note { kind: kind.to_string(), body }).is_err() {
            self.pending.fetch_sub(self.urls, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(kind, "notification queue full; notification dropped");
        }
    }
}

async fn deliver(url: &str, note: &Note, s: &Settings, store: &Store, clock: &SharedClock) {
    let mut delay = s.backoff;
    let mut last = String::new();
    for attempt in 1..=s.attempts.max(1) {
        match tokio::time::timeout(s.timeout, post(url, &note.body)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tracing::warn!(url, attempt, error = %last, "webhook delivery failed");
        if attempt < s.attempts {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    let ev = Event::NotificationFailed { url: url.to_string(), kind: note.kind.clone(), error: last };
    if let Err(e) = audit::record(store, &**clock, "system", &ev).await {
        tracing::error!(error = %e, "cannot audit failed notification");
    }
}

/// Splits `http://host[:port]/path`.
pub fn parse_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!("webhook URL {url:?} must start with http:// (put a TLS relay in front for https)")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) =
        crate::targets::parse_address(hostport).map(|(h, p)| (h, if hostport.contains(':') { p } else { 80 }))?;
    Ok((host, port, path.to_string()))
}

async fn post(url: &str, body: &str) -> anyhow::Result<()> {
    let (host, port, path) = parse_url(url)?;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: penstock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if (200..300).contains(&code) {
        Ok(())
    } else {
        anyhow::bail!("HTTP status {code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("http://hooks.plant:8080/x/y").unwrap(), ("hooks.plant".into(), 8080, "/x/y".into()));
        assert_eq!(parse_url("http://10.0.0.5").unwrap(), ("10.0.0.5".into(), 80, "/".into()));
        assert!(parse_url("https://x").is_err());
    }
}
