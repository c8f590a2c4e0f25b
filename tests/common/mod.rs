//! Shared harness for Penstock's integration tests.
//!
//! Use it from a test file with `#[macro_use] mod common;`. It offers:
//!
//! * [`Backend`] and [`backends`]: every behaviour is checked on SQLite and on PostgreSQL;
//!   [`backend_tests!`] / [`backend_tests_async!`] turn `fn name(b: Backend)` into the tests
//!   `sqlite::name` and `postgres::name`.
//! * [`postgres`]: one throw-away PostgreSQL server per test binary, a fresh database per test.
//! * [`Install`]: an installation made by the real `penstock init` in a temporary folder, with
//!   helpers to run the binary against it and check its answers.
//! * [`sshd`]: a real OpenSSH `sshd` as a target, the real `penstock serve` and the real `ssh`,
//!   `scp` and `sftp` clients, for end-to-end tests of the SSH gateway.
//! * [`x11`]: an Xvfb display of its own and X tools on it; [`xrdp`]: a real xrdp target without
//!   NLA (Xvnc sessions, chansrv for clipboard and drives).
//! * Small utilities: [`block_on`], [`files_under`], [`contains`], [`ssh_keygen`].
//!
//! Room is left for more front-end helpers: put them in their own submodule next to `postgres`.

#![allow(dead_code, unused_macros)]

pub mod live;
pub mod postgres;
pub mod s3;
pub mod sshd;
pub mod web;
pub mod x11;
pub mod xrdp;

use std::ffi::OsStr;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// The penstock binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_penstock");

/// Which store an installation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: `penstock.db` in the installation folder.
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The backends every test runs against: SQLite always, and PostgreSQL (whose absence is an
/// error, not a reason to skip).
pub fn backends() -> Vec<Backend> {
    vec![Backend::Sqlite, Backend::Postgres]
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from `fn NAME(b: Backend)` functions in
/// the calling file. Attributes (e.g. `#[ignore = "bug: …"]`) apply to both variants.
///
/// ```ignore
/// backend_tests! {
///     fn user_lifecycle;
///     #[ignore = "bug: …"] fn something_broken;
/// }
/// ```
macro_rules! backend_tests {
    ($( $(#[$attr:meta])* fn $name:ident; )*) => {
        mod sqlite {
            $( $(#[$attr])* #[test] fn $name() { super::$name(crate::common::Backend::Sqlite) } )*
        }
        mod postgres {
            $( $(#[$attr])* #[test] fn $name() { super::$name(crate::common::Backend::Postgres) } )*
        }
    };
}

/// Like [`backend_tests!`] for `async fn NAME(b: Backend)`; each test gets its own runtime.
macro_rules! backend_tests_async {
    ($( $(#[$attr:meta])* fn $name:ident; )*) => {
        mod sqlite {
            $( $(#[$attr])* #[test] fn $name() {
                crate::common::block_on(super::$name(crate::common::Backend::Sqlite))
            } )*
        }
        mod postgres {
            $( $(#[$attr])* #[test] fn $name() {
                crate::common::block_on(super::$name(crate::common::Backend::Postgres))
            } )*
        }
    };
}

/// Runs a future to completion on a new multi-threaded runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Whether `needle` occurs in `hay` (an empty needle never does).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively (symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A random lower-case hex string of `n` bytes (2n characters), for distinctive names and
/// secrets.
pub fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Runs `ssh-keygen -t ed25519 -N '' -f PATH -C COMMENT` and returns the public key line.
pub fn ssh_keygen(path: &Path, comment: &str) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run ssh-keygen (install openssh-client)");
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(path.with_extension("pub")).expect("read public key").trim().to_string()
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `SHA256:…` fingerprint of a public key file, as `ssh-keygen -l` computes it.
pub fn ssh_fingerprint(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pub_path).output().expect("cannot run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen -l failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("fingerprint field").to_string()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panics unless the command succeeded; returns its standard output.
#[track_caller]
pub fn assert_ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what}: expected success, got {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Panics unless the command failed with exit status 1 and exactly one line on standard error
/// of the form `penstock: error: MESSAGE`; returns MESSAGE.
#[track_caller]
pub fn assert_fails(what: &str, o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: expected failure (exit 1)\nstdout:\n{}\nstderr:\n{err}", stdout(o));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line on stderr, got:\n{err}");
    let msg = lines[0].strip_prefix("penstock: error: ");
    assert!(msg.is_some(), "{what}: stderr does not start with `penstock: error: `: {err}");
    msg.unwrap_or_default().to_string()
}

/// A command for the penstock binary with a clean environment: no `PENSTOCK_*` overrides and no
/// systemd credentials folder leak in from the caller.
pub fn penstock_command() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PENSTOCK_")) {
            c.env_remove(k);
        }
    }
    c.env_remove("CREDENTIALS_DIRECTORY");
    c.env_remove("RUST_LOG");
    c
}

/// One command the harness ran, kept so tests can scan everything penstock ever printed.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Arguments after `penstock -c CONFIG`.
    pub args: Vec<String>,
    /// What it produced.
    pub output: Output,
}

/// A Penstock installation in a temporary folder.
///
/// Layout of the temporary folder: `penstock/` is the installation (`--dir` of `init`);
/// `scratch/` is for the test's own files (keys, copies), kept outside the installation so scans
/// of the installation only see what penstock wrote.
#[derive(Debug)]
pub struct Install {
    backend: Backend,
    tmp: tempfile::TempDir,
    /// PostgreSQL: (url, database name).
    pg: Option<(String, String)>,
    transcript: Mutex<Vec<Ran>>,
}

impl Install {
    /// Runs `penstock init` for `backend` in a new temporary folder; panics if it fails.
    #[track_caller]
    pub fn new(backend: Backend) -> Install {
        let i = Install::uninitialised(backend);
        let out = i.init();
        assert_ok(&format!("init ({})", backend.name()), &out);
        i
    }

    /// The temporary folder (and, for PostgreSQL, a fresh database) without running `init`.
    pub fn uninitialised(backend: Backend) -> Install {
        Install::uninitialised_in(backend, "penstock-test-")
    }

    /// Like [`Install::uninitialised`] with a chosen prefix for the temporary folder's name
    /// (e.g. one with spaces).
    pub fn uninitialised_in(backend: Backend, prefix: &str) -> Install {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
        std::fs::create_dir(tmp.path().join("scratch")).expect("scratch dir");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres::fresh_database()),
        };
        Install { backend, tmp, pg, transcript: Mutex::new(Vec::new()) }
    }

    /// Runs `penstock init --dir DIR [--database-url URL]` (recorded in the transcript).
    pub fn init(&self) -> Output {
        let mut args = vec!["init".to_string(), "--dir".into(), self.dir().display().to_string()];
        if let Some((url, _)) = &self.pg {
            args.push("--database-url".into());
            args.push(url.clone());
        }
        let out = penstock_command().args(&args).stdin(Stdio::null()).output().expect("cannot run penstock");
        self.record(args, &out);
        out
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The installation folder.
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("penstock")
    }

    /// A folder for the test's own files, outside the installation.
    pub fn scratch(&self) -> PathBuf {
        self.tmp.path().join("scratch")
    }

    /// `DIR/penstock.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("penstock.toml")
    }

    /// The database URL the installation uses.
    pub fn db_url(&self) -> String {
        match &self.pg {
            Some((url, _)) => url.clone(),
            None => format!("sqlite://{}", self.dir().join("penstock.db").display()),
        }
    }

    /// PostgreSQL database name, if any.
    pub fn pg_database(&self) -> Option<&str> {
        self.pg.as_ref().map(|(_, name)| name.as_str())
    }

    /// A `penstock -c CONFIG ARGS…` command with a clean environment and null stdin; for
    /// special cases (extra environment, another config). Not recorded in the transcript.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = penstock_command();
        c.arg("-c").arg(self.config_path()).args(args).stdin(Stdio::null());
        c
    }

    /// Runs `penstock -c CONFIG ARGS…` with empty stdin.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Output {
        self.run_stdin(args, b"")
    }

    /// Runs `penstock -c CONFIG ARGS…` with `input` on stdin.
    pub fn run_stdin<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> Output {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut child = self
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run penstock");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // Ignore EPIPE: a command may exit before reading its input.
        let _ = stdin.write_all(input);
        drop(stdin);
        let out = child.wait_with_output().expect("wait for penstock");
        self.record(args, &out);
        out
    }

    /// Runs the command and asserts success; returns stdout.
    #[track_caller]
    pub fn ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        self.ok_stdin(args, b"")
    }

    /// Runs the command with `input` on stdin and asserts success; returns stdout.
    #[track_caller]
    pub fn ok_stdin<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> String {
        let out = self.run_stdin(args, input);
        assert_ok(&self.describe(args), &out)
    }

    /// Runs the command and asserts [`assert_fails`]; returns the one-line message.
    #[track_caller]
    pub fn fails<S: AsRef<str>>(&self, args: &[S]) -> String {
        self.fails_stdin(args, b"")
    }

    /// Runs the command with `input` on stdin and asserts [`assert_fails`]; returns the message.
    #[track_caller]
    pub fn fails_stdin<S: AsRef<str>>(&self, args: &[S], input: &[u8]) -> String {
        let out = self.run_stdin(args, input);
        assert_fails(&self.describe(args), &out)
    }

    /// `stdout` of a `--json` command, parsed.
    #[track_caller]
    pub fn json<S: AsRef<str>>(&self, args: &[S]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{out}", self.describe(args)))
    }

    /// Everything run so far through this installation, with its output.
    pub fn transcript(&self) -> Vec<Ran> {
        self.transcript.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, args: Vec<String>, out: &Output) {
        self.transcript.lock().unwrap_or_else(|e| e.into_inner()).push(Ran { args, output: out.clone() });
    }

    fn describe<S: AsRef<str>>(&self, args: &[S]) -> String {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        format!("[{}] penstock {}", self.backend.name(), args.join(" "))
    }

    /// Opens the installation's store directly (through the library), for inspection and
    /// tampering that the CLI does not offer.
    pub async fn store(&self) -> penstock::store::Store {
        penstock::store::Store::open(&self.db_url(), false).await.expect("open store")
    }

    /// Opens the installation through the library, as the server would.
    pub async fn app(&self) -> penstock::app::App {
        let cfg = penstock::config::Config::load(&self.config_path()).expect("load config");
        penstock::app::App::open(cfg).await.expect("open app")
    }

    /// Runs one SQL statement on the installation's database; returns the rows affected.
    pub fn exec_sql(&self, sql: &str) -> u64 {
        block_on(async {
            let store = self.store().await;
            let n = sqlx::query(sql)
                .execute(store.pool())
                .await
                .unwrap_or_else(|e| panic!("SQL {sql:?} failed: {e}"))
                .rows_affected();
            store.close().await;
            n
        })
    }

    /// Asserts that `secret` is nowhere ([`Install::find_secret`]), nor as UTF-16 (as RDP
    /// carries it) in any file under the installation folder.
    #[track_caller]
    pub fn assert_secret_nowhere(&self, secret: &str) {
        let mut hits = self.find_secret(secret.as_bytes());
        let utf16: Vec<u8> = secret.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        for f in files_under(&self.dir()) {
            if contains(&std::fs::read(&f).unwrap_or_default(), &utf16) {
                hits.push(format!("UTF-16 in {}", f.display()));
            }
        }
        assert!(hits.is_empty(), "the secret leaked: {hits:?}");
    }

    /// Where `secret` (as bytes, or hex-encoded as a `bytea` dump would show it) can be found:
    /// any file under the installation folder (database, WAL, config, keys…), anything a command
    /// run through this installation printed, and for PostgreSQL a `pg_dump` of the database
    /// and every file of the server (data files, WAL, log). Returns one description per place;
    /// empty means nowhere.
    pub fn find_secret(&self, secret: &[u8]) -> Vec<String> {
        let forms = [secret.to_vec(), hex::encode(secret).into_bytes(), hex::encode_upper(secret).into_bytes()];
        let hit = |hay: &[u8]| forms.iter().any(|f| contains(hay, f));
        let mut found = Vec::new();
        for f in files_under(&self.dir()) {
            if hit(&std::fs::read(&f).unwrap_or_default()) {
                found.push(format!("file {}", f.display()));
            }
        }
        for r in self.transcript() {
            if hit(&r.output.stdout) {
                found.push(format!("stdout of `penstock {}`", r.args.join(" ")));
            }
            if hit(&r.output.stderr) {
                found.push(format!("stderr of `penstock {}`", r.args.join(" ")));
            }
        }
        if let Some((_, db)) = &self.pg {
            let server = postgres::server();
            if hit(&server.dump(db)) {
                found.push(format!("pg_dump of {db}"));
            }
            for f in files_under(&server.socket_dir) {
                if hit(&std::fs::read(&f).unwrap_or_default()) {
                    found.push(format!("PostgreSQL data file {}", f.display()));
                }
            }
        }
        found
    }
}
