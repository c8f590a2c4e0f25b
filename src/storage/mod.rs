//! Recording storage: the one interface replay, search, evidence bundles, verify and retention
//! read recordings through. A recording is named by its *locator* (today the path the session
//! row holds); its side files (`<id>.out`, `<id>.in`) are named relative to it. Backends: local
//! files, and an S3-compatible object store with the local folder as spool (`s3.rs`, uploads by
//! `upload.rs`).

pub mod s3;
pub mod upload;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// What a recording store can do.
pub trait RecordingStorage: Send + Sync + std::fmt::Debug {
    /// Opens a recording (or side file) for reading.
    fn open(&self, locator: &str) -> std::io::Result<Box<dyn Read + Send>>;
    /// Its size in bytes.
    fn size(&self, locator: &str) -> std::io::Result<u64>;
    /// Whether it exists.
    fn exists(&self, locator: &str) -> bool;
    /// Deletes it (a missing file is not an error).
    fn delete(&self, locator: &str) -> std::io::Result<()>;
    /// The locator of side file `name` that belongs to recording `cast`. `name` is a plain file
    /// name as the cast's marker gives it; anything else is refused.
    fn sibling(&self, cast: &str, name: &str) -> anyhow::Result<String>;
    /// The last path element (a recording's file name).
    fn file_name(&self, locator: &str) -> String;
}

/// Recordings as files under the recordings folder.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    root: PathBuf,
}

impl LocalFiles {
    /// Recordings under `root`.
    pub fn new(root: PathBuf) -> LocalFiles {
        LocalFiles { root }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, locator: &str) -> PathBuf {
        let p = Path::new(locator);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }
}

impl RecordingStorage for LocalFiles {
    fn open(&self, locator: &str) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::fs::File::open(self.path(locator))?))
    }

    fn size(&self, locator: &str) -> std::io::Result<u64> {
        Ok(std::fs::metadata(self.path(locator))?.len())
    }

    fn exists(&self, locator: &str) -> bool {
        self.path(locator).is_file()
    }

    fn delete(&self, locator: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(locator)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sibling(&self, cast: &str, name: &str) -> anyhow::Result<String> {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            bail!("side file name {name:?} is not a plain file name");
        }
        Ok(self.path(cast).with_file_name(name).display().to_string())
    }

    fn file_name(&self, locator: &str) -> String {
        Path::new(locator).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The storage an installation uses.
#[derive(Debug, Clone)]
pub enum Recordings {
    /// The recordings folder.
    Local(LocalFiles),
    /// S3 with the folder as spool.
    S3(s3::S3Files),
}

impl Recordings {
    fn inner(&self) -> &dyn RecordingStorage {
        match self {
            Recordings::Local(l) => l,
            Recordings::S3(s) => s,
        }
    }
}

impl RecordingStorage for Recordings {
    fn open(&self, locator: &str) -> std::io::Result<Box<dyn Read + Send>> {
        self.inner().open(locator)
    }
    fn size(&self, locator: &str) -> std::io::Result<u64> {
        self.inner().size(locator)
    }
    fn exists(&self, locator: &str) -> bool {
        self.inner().exists(locator)
    }
    fn delete(&self, locator: &str) -> std::io::Result<()> {
        self.inner().delete(locator)
    }
    fn sibling(&self, cast: &str, name: &str) -> anyhow::Result<String> {
        self.inner().sibling(cast, name)
    }
    fn file_name(&self, locator: &str) -> String {
        self.inner().file_name(locator)
    }
}

/// The storage the installation uses. With S3 configured but unusable (bad settings) it falls
/// back to the spool alone and says so once; `serve` checks the settings before it starts.
pub fn for_app(app: &crate::app::App) -> Recordings {
    let local = LocalFiles::new(app.config.recordings_dir());
    match app.config.recordings.store {
        crate::config::RecordingStore::Local => Recordings::Local(local),
        crate::config::RecordingStore::S3 => match s3::Bucket::from_config(&app.config.recordings) {
            Ok(bucket) => Recordings::S3(s3::S3Files { local, bucket }),
            Err(e) => {
                tracing::error!(error = %e, "recordings are read from the local spool only");
                Recordings::Local(local)
            }
        },
    }
}

/// SHA-256 (hex) and size of a stored object.
pub fn hash(storage: &dyn RecordingStorage, locator: &str) -> std::io::Result<(String, u64)> {
    let mut r = storage.open(locator)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// A buffered reader over a stored object.
pub fn reader(storage: &dyn RecordingStorage, locator: &str) -> anyhow::Result<BufReader<Box<dyn Read + Send>>> {
    let r = storage.open(locator).with_context(|| format!("cannot read recording {locator}"))?;
    Ok(BufReader::with_capacity(256 * 1024, r))
}
