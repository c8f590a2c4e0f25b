//! Recordings in an S3-compatible object store (`[recordings] store = "s3"`), through the
//! `object_store` crate. The recordings folder stays the local spool: sessions write there, the
//! uploader (`upload.rs`) copies each recording up in parts while it is written and whole when
//! it ends. Reading prefers the spool (a recording this node still holds), then the whole
//! object, then the parts in order (a recording whose node was lost mid-session).
//!
//! Object names do not depend on a node's folders: a recording `…/YYYY/MM/DD/<id>.cast` is
//! `PREFIX/YYYY/MM/DD/<id>.cast` on every node; its parts are `…/<id>.cast.parts/<offset>`.
//!
//! The storage interface is synchronous (replay and verify read like files). All S3 requests run
//! on one small runtime of their own, so they work the same from a CLI command, a blocking
//! thread or an async task, and the HTTP client's connections always live on one runtime.

use std::future::Future;
use std::io::Read;
use std::path::{Component, Path};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart};

use super::{LocalFiles, RecordingStorage};
use crate::config::RecordingsConfig;
use crate::secret::Secret;

/// How many chunks a reader may have in flight (each up to the HTTP body's chunk size).
const READ_AHEAD: usize = 8;
/// Objects larger than this are uploaded in multipart requests.
const MULTIPART_ABOVE: u64 = 8 * 1024 * 1024;

/// The runtime every S3 request runs on (never dropped).
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("penstock-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 runtime: {e}"))
    })
    .as_ref()
    .map_err(|e| std::io::Error::other(e.clone()))
}

/// Runs `f` on the S3 runtime and waits for it from synchronous code.
fn block<F>(f: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| std::io::Error::other("the S3 runtime stopped"))
}

/// Runs `f` on the S3 runtime and awaits it from async code.
pub async fn run<F>(f: F) -> anyhow::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime()?.spawn(f).await.context("S3 request task failed")
}

/// The bucket, its prefix and the client.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `endpoint/bucket`, for messages.
    pub name: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).field("prefix", &self.prefix).finish()
    }
}

/// Reads a credential from systemd's credential folder, else from the config.
fn credential(file: &str, configured: &str) -> anyhow::Result<Secret> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join(file);
        if p.exists() {
            let v = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
            return Ok(Secret::from_string(v.trim().to_string()));
        }
    }
    Ok(Secret::from_string(configured.to_string()))
}

impl Bucket {
    /// The bucket `[recordings]` names. Errors are one line naming the missing key.
    pub fn from_config(c: &RecordingsConfig) -> anyhow::Result<Bucket> {
        if c.s3_bucket.trim().is_empty() {
            bail!("[recordings] store = \"s3\" needs s3_bucket");
        }
        let key_id = credential("s3_access_key_id", &c.s3_access_key_id)?;
        let secret = credential("s3_secret_access_key", &c.s3_secret_access_key.0)?;
        if key_id.is_empty() != secret.is_empty() {
            bail!("[recordings] s3_access_key_id and s3_secret_access_key must be given together");
        }
        let timeout = Duration::from_secs(c.s3_timeout_secs.max(1));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&c.s3_bucket)
            .with_region(&c.s3_region)
            .with_virtual_hosted_style_request(!c.s3_path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(Duration::from_secs(5).min(timeout))
                    .with_allow_http(c.s3_endpoint.starts_with("http://")),
            )
            .with_retry(RetryConfig { max_retries: 2, retry_timeout: timeout, ..Default::default() });
        if !c.s3_endpoint.is_empty() {
            b = b.with_endpoint(&c.s3_endpoint);
        }
        if let (Some(id), Some(key)) = (key_id.expose_str(), secret.expose_str()) {
            if !id.is_empty() {
                b = b.with_access_key_id(id).with_secret_access_key(key);
            }
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("[recordings] S3 settings: {e}"))?;
        let endpoint = if c.s3_endpoint.is_empty() { "s3" } else { c.s3_endpoint.trim_end_matches('/') };
        Ok(Bucket {
            store: Arc::new(store),
            prefix: c.s3_prefix.trim_matches('/').to_string(),
            name: format!("{endpoint}/{}", c.s3_bucket),
        })
    }

    /// The object name of a recording or side file, from its locator: the date folders and the
    /// file name, under the prefix.
    pub fn key(&self, locator: &str) -> anyhow::Result<ObjPath> {
        let parts: Vec<String> = Path::new(locator)
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.is_empty() || parts.iter().any(|p| p == "." || p == "..") {
            bail!("recording locator {locator:?} names no file");
        }
        let tail = &parts[parts.len().saturating_sub(4)..];
        let mut name = self.prefix.clone();
        for p in tail {
            if !name.is_empty() {
                name.push('/');
            }
            name.push_str(p);
        }
        ObjPath::parse(&name).map_err(|e| anyhow::anyhow!("recording locator {locator:?}: {e}"))
    }

    /// The folder of a recording's parts.
    fn parts_dir(key: &ObjPath) -> ObjPath {
        ObjPath::from(format!("{key}.parts"))
    }

    /// A part's name: its offset in the recording, zero-padded so names sort in order.
    pub fn part_key(key: &ObjPath, offset: u64) -> ObjPath {
        ObjPath::from(format!("{key}.parts/{offset:016}"))
    }

    /// Size of an object, or `None` when there is none.
    pub async fn head(&self, key: &ObjPath) -> anyhow::Result<Option<u64>> {
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("S3 {}: cannot look up {key}: {e}", self.name)),
        }
    }

    /// The parts uploaded so far, in order: (offset, size).
    pub async fn parts(&self, key: &ObjPath) -> anyhow::Result<Vec<(u64, u64, ObjPath)>> {
        let dir = Self::parts_dir(key);
        let mut list = self.store.list(Some(&dir));
        let mut out = Vec::new();
        while let Some(m) = list.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("S3 {}: cannot list {dir}: {e}", self.name))?;
            let Some(off) = m.location.filename().and_then(|f| f.parse::<u64>().ok()) else { continue };
            out.push((off, m.size, m.location));
        }
        out.sort_by_key(|p| p.0);
        Ok(out)
    }

    /// Writes `data` to `key` once: an object already there is left alone and reported.
    pub async fn put_once(&self, key: &ObjPath, data: Bytes) -> anyhow::Result<PutOutcome> {
        let len = data.len() as u64;
        if let Some(size) = self.head(key).await? {
            return Ok(PutOutcome::Exists { size, ours: size == len });
        }
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(key, PutPayload::from(data), opts).await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                let size = self.head(key).await?.unwrap_or(0);
                Ok(PutOutcome::Exists { size, ours: size == len })
            }
            Err(e) => Err(anyhow::anyhow!("S3 {}: cannot write {key}: {e}", self.name)),
        }
    }

    /// Uploads a local file to `key` once (multipart above 8 MiB).
    pub async fn put_file_once(&self, key: &ObjPath, file: &Path) -> anyhow::Result<PutOutcome> {
        let len = tokio::fs::metadata(file).await.with_context(|| format!("cannot read {}", file.display()))?.len();
        if len <= MULTIPART_ABOVE {
            let data = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
            return self.put_once(key, Bytes::from(data)).await;
        }
        if let Some(size) = self.head(key).await? {
            return Ok(PutOutcome::Exists { size, ours: size == len });
        }
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| anyhow::anyhow!("S3 {}: cannot start upload of {key}: {e}", self.name))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
        let mut f = tokio::fs::File::open(file).await.with_context(|| format!("cannot read {}", file.display()))?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4).await.map_err(|e| anyhow::anyhow!("S3 {}: upload of {key}: {e}", self.name))?;
            w.write(&buf[..n]);
        }
        w.finish().await.map_err(|e| anyhow::anyhow!("S3 {}: cannot finish upload of {key}: {e}", self.name))?;
        Ok(PutOutcome::Written)
    }

    /// Deletes an object (a missing one is not an error).
    pub async fn delete(&self, key: &ObjPath) -> anyhow::Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("S3 {}: cannot delete {key}: {e}", self.name)),
        }
    }

    /// Deletes a recording's parts.
    pub async fn delete_parts(&self, key: &ObjPath) -> anyhow::Result<()> {
        for (_, _, p) in self.parts(key).await? {
            self.delete(&p).await?;
        }
        Ok(())
    }

    /// Writes and reads back a small object: whether recordings can be stored now.
    pub async fn probe(&self, node: &str) -> anyhow::Result<()> {
        let name = if self.prefix.is_empty() {
            format!("_penstock/health/{node}")
        } else {
            format!("{}/_penstock/health/{node}", self.prefix)
        };
        let key = ObjPath::from(name);
        self.store
            .put(&key, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| anyhow::anyhow!("S3 {} cannot be written: {e}", self.name))?;
        Ok(())
    }

    /// Streams an object's bytes, or its parts in order when the whole object is not there.
    fn open_remote(&self, key: ObjPath) -> std::io::Result<Box<dyn Read + Send>> {
        let me = self.clone();
        let (tx, rx) = sync_channel::<std::io::Result<Bytes>>(READ_AHEAD);
        let (first_tx, first_rx) = sync_channel::<std::io::Result<()>>(1);
        runtime()?.spawn(async move {
            let sources: Vec<ObjPath> = match me.store.get(&key).await {
                Ok(r) => {
                    let _ = first_tx.send(Ok(()));
                    pump(r.into_stream(), &tx).await;
                    return;
                }
                Err(object_store::Error::NotFound { .. }) => match me.parts(&key).await {
                    Ok(p) if !p.is_empty() => p.into_iter().map(|(_, _, k)| k).collect(),
                    Ok(_) => {
                        let _ = first_tx.send(Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{key} is not in S3 {}", me.name),
                        )));
                        return;
                    }
                    Err(e) => {
                        let _ = first_tx.send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                },
                Err(e) => {
                    let _ =
                        first_tx.send(Err(std::io::Error::other(format!("S3 {}: cannot read {key}: {e}", me.name))));
                    return;
                }
            };
            let _ = first_tx.send(Ok(()));
            for part in sources {
                match me.store.get(&part).await {
                    Ok(r) => {
                        if !pump(r.into_stream(), &tx).await {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(format!("S3 {}: cannot read {part}: {e}", me.name))));
                        return;
                    }
                }
            }
        });
        first_rx.recv().map_err(|_| std::io::Error::other("the S3 runtime stopped"))??;
        Ok(Box::new(ChunkReader { rx, cur: Bytes::new() }))
    }
}

/// Moves a body stream into the reader's channel; false when the reader is gone or it failed.
async fn pump(
    mut s: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    tx: &std::sync::mpsc::SyncSender<std::io::Result<Bytes>>,
) -> bool {
    while let Some(chunk) = s.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        let failed = item.is_err();
        // The channel is bounded: a slow reader holds the download back. Sending blocks this
        // runtime's thread only as long as the reader takes to drain one chunk.
        if tokio::task::block_in_place(|| tx.send(item)).is_err() || failed {
            return false;
        }
    }
    true
}

/// What `put_once` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written now.
    Written,
    /// An object was already there (`ours`: with the size we were about to write).
    Exists { size: u64, ours: bool },
}

/// `Read` over chunks arriving from the S3 runtime.
struct ChunkReader {
    rx: Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.cur = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Recordings in S3 with the recordings folder as the spool.
#[derive(Debug, Clone)]
pub struct S3Files {
    /// The spool.
    pub local: LocalFiles,
    /// The bucket.
    pub bucket: Bucket,
}

impl RecordingStorage for S3Files {
    fn open(&self, locator: &str) -> std::io::Result<Box<dyn Read + Send>> {
        if self.local.exists(locator) {
            return self.local.open(locator);
        }
        let key = self
            .bucket
            .key(locator)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.bucket.open_remote(key)
    }

    fn size(&self, locator: &str) -> std::io::Result<u64> {
        if self.local.exists(locator) {
            return self.local.size(locator);
        }
        let key = self
            .bucket
            .key(locator)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let b = self.bucket.clone();
        block(async move {
            match b.head(&key).await? {
                Some(s) => Ok(s),
                None => Ok(b.parts(&key).await?.iter().map(|p| p.1).sum()),
            }
        })?
        .map_err(|e: anyhow::Error| std::io::Error::other(e.to_string()))
    }

    fn exists(&self, locator: &str) -> bool {
        if self.local.exists(locator) {
            return true;
        }
        let Ok(key) = self.bucket.key(locator) else { return false };
        let b = self.bucket.clone();
        block(async move {
            matches!(b.head(&key).await, Ok(Some(_))) || b.parts(&key).await.map(|p| !p.is_empty()).unwrap_or(false)
        })
        .unwrap_or(false)
    }

    fn delete(&self, locator: &str) -> std::io::Result<()> {
        let key = self
            .bucket
            .key(locator)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let b = self.bucket.clone();
        block(async move {
            b.delete(&key).await?;
            b.delete_parts(&key).await
        })?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.local.delete(locator)
    }

    fn sibling(&self, cast: &str, name: &str) -> anyhow::Result<String> {
        self.local.sibling(cast, name)
    }

    fn file_name(&self, locator: &str) -> String {
        self.local.file_name(locator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(prefix: &str) -> Bucket {
        let c = RecordingsConfig {
            store: crate::config::RecordingStore::S3,
            s3_bucket: "recordings".into(),
            s3_endpoint: "http://127.0.0.1:1".into(),
            s3_prefix: prefix.into(),
            ..Default::default()
        };
        Bucket::from_config(&c).expect("bucket")
    }

    #[test]
    fn keys_do_not_depend_on_the_node_folder() {
        let b = bucket("/plant-a/");
        let k1 = b.key("/var/lib/penstock/recordings/2026/12/04/abc.cast").expect("key");
        let k2 = b.key("/srv/other/rec/2026/12/04/abc.cast").expect("key");
        assert_eq!(k1, k2);
        assert_eq!(k1.as_ref(), "plant-a/2026/12/04/abc.cast");
        assert_eq!(Bucket::part_key(&k1, 4096).as_ref(), "plant-a/2026/12/04/abc.cast.parts/0000000000004096");
        assert!(b.key("/").is_err());
    }

    #[test]
    fn settings_errors_are_one_line() {
        let c = RecordingsConfig { store: crate::config::RecordingStore::S3, ..Default::default() };
        let e = Bucket::from_config(&c).expect_err("no bucket").to_string();
        assert_eq!(e, "[recordings] store = \"s3\" needs s3_bucket");
        let c = RecordingsConfig { s3_bucket: "b".into(), s3_access_key_id: "k".into(), ..Default::default() };
        let e = Bucket::from_config(&c).expect_err("half credentials").to_string();
        assert!(e.contains("must be given together"), "{e}");
    }
}
