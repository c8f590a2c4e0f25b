//! A throw-away PostgreSQL server, started once per test binary and stopped when it exits.
//!
//! The server lives in a temporary folder, listens on a unix socket in that folder and on
//! 127.0.0.1 at a free port, trusts every local connection and runs with `fsync=off`. Each test
//! asks for its own database with [`fresh_database`].
//!
//! Lifetime: the server is started by a small `sh` wrapper whose standard input is a pipe held by
//! the test process. When that pipe closes the wrapper stops the server (`SIGQUIT`, immediate
//! shutdown), waits for it and removes the folder. The pipe is closed, and the wrapper waited for,
//! by an `atexit` handler, so the server is gone before the test binary exits; if the test
//! process is killed instead, the kernel closes the pipe and the wrapper still cleans up.
//!
//! `initdb` and `postgres` refuse to run as root. When the tests run as root (CI containers),
//! they are started as the `postgres` user (which the Debian `postgresql` package creates) and
//! the folder is handed to that user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The running server.
#[derive(Debug)]
pub struct PgServer {
    /// Folder with the server's binaries.
    pub bin_dir: PathBuf,
    /// Folder of the unix socket.
    pub socket_dir: PathBuf,
    /// Data directory (cluster).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Who the server runs as when the tests run as root: (uid, gid).
    run_as: Option<(u32, u32)>,
}

/// The wrapper process and the write end of its stdin pipe; taken at exit.
static WRAPPER: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);
static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The server, started on first use. Panics with a clear message if PostgreSQL is missing or
/// does not start (PostgreSQL tests are never skipped silently).
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("PostgreSQL test server unavailable: {e}"),
    }
}

/// Creates an empty database and returns its URL (`postgres://postgres@127.0.0.1:PORT/t_…`).
pub fn fresh_database() -> (String, String) {
    let s = server();
    let name = format!("t_{:016x}", rand::random::<u64>());
    s.psql("postgres", &format!("CREATE DATABASE {name}"));
    (format!("postgres://postgres@127.0.0.1:{}/{name}", s.port), name)
}

impl PgServer {
    /// Path of a binary of this PostgreSQL installation (`psql`, `pg_dump`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        if p.exists() {
            p
        } else {
            PathBuf::from(name)
        }
    }

    /// Runs one SQL command in `db` over the unix socket and returns its unaligned, tuples-only
    /// output. Panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin("psql"))
            .args(self.conn_args(db))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run psql");
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of database `db` (plain SQL, data included).
    pub fn dump(&self, db: &str) -> Vec<u8> {
        let out = Command::new(self.bin("pg_dump"))
            .args(self.conn_args(db))
            .stdin(Stdio::null())
            .output()
            .expect("cannot run pg_dump");
        assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn conn_args(&self, db: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            db.into(),
        ]
    }

    /// A command that runs as the server's owner.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        // Both `initdb` and `postgres` want a working directory they may read.
        c.current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        c
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, else the folder of `initdb` on
/// `PATH`.
fn find_bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    Err("no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin or on PATH; \
         install the `postgresql` package"
        .into())
}

/// (uid, gid) of the `postgres` account when we are root, so the server can drop privileges.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions; getpwnam returns a pointer into static storage that
    // is read immediately, while `SERVER` initialisation is serialised by the OnceLock.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err("the tests run as root, and initdb/postgres refuse to; but there is no `postgres` \
                        account to run them as (install the `postgresql` package)"
                .into());
        }
        Ok(Some(((*pw).pw_uid, (*pw).pw_gid)))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn start() -> Result<PgServer, String> {
    let bin_dir = find_bin_dir()?;
    let run_as = run_as()?;
    // Root's $TMPDIR may not be reachable for the postgres account; /tmp always is.
    let parent = if run_as.is_some() { PathBuf::from("/tmp") } else { std::env::temp_dir() };
    let root = tempfile::Builder::new()
        .prefix("penstock-pg-")
        .tempdir_in(&parent)
        .map_err(|e| format!("cannot create a folder in {}: {e}", parent.display()))?
        // Removed by the wrapper once the server has stopped.
        .keep();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", root.display()))?;
    }
    let mut server = PgServer { bin_dir, socket_dir: root.clone(), data_dir: root.join("data"), port: 0, run_as };
    let out = server
        .command(server.bin("initdb"))
        .args(["-D"])
        .arg(&server.data_dir)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&root);
        return Err(describe("initdb", &out));
    }
    let mut last_err = String::new();
    // The port is probed, then bound by postgres: retry if someone else took it meanwhile.
    for _ in 0..5 {
        server.port = free_port();
        match launch(&server) {
            Ok(()) => return Ok(server),
            Err(e) => last_err = e,
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Err(last_err)
}

/// Starts the wrapper and waits until the server answers.
fn launch(s: &PgServer) -> Result<(), String> {
    let script = r#"
        "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_SOCK" \
            -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
            -c full_page_writes=off -c max_connections=300 >"$PG_SOCK/postgres.log" 2>&1 &
        pid=$!
        # Returns when the test process closes our stdin (at exit, or when it dies).
        cat >/dev/null
        kill -QUIT "$pid" 2>/dev/null
        wait "$pid"
        if [ -e "$PG_SOCK/remove-on-exit" ]; then rm -rf "$PG_SOCK"; fi
    "#;
    let mut child = s
        .command("sh")
        .args(["-c", script])
        .env("PG_BIN", &s.bin_dir)
        .env("PG_DATA", &s.data_dir)
        .env("PG_PORT", s.port.to_string())
        .env("PG_SOCK", &s.socket_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the postgres wrapper: {e}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(s.bin("psql"))
            .args(s.conn_args("postgres"))
            .args(["-X", "-q", "-c", "SELECT 1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|st| st.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let log = std::fs::read_to_string(s.socket_dir.join("postgres.log")).unwrap_or_default();
            drop(stdin);
            let _ = child.wait();
            return Err(format!("postgres did not start on port {}: {}", s.port, log.trim()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // From now on the wrapper removes the folder when it stops the server (after a failed start
    // the folder is kept for the next attempt, and `start` removes it).
    if let Err(e) = std::fs::write(s.socket_dir.join("remove-on-exit"), b"") {
        drop(stdin);
        let _ = child.wait();
        return Err(format!("cannot write the marker file in {}: {e}", s.socket_dir.display()));
    }
    *WRAPPER.lock().unwrap_or_else(|e| e.into_inner()) = Some((child, stdin));
    register_exit_hook();
    Ok(())
}

extern "C" fn stop_at_exit() {
    let taken = WRAPPER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((mut child, stdin)) = taken {
        drop(stdin);
        let _ = child.wait();
    }
    if let Some(Ok(s)) = SERVER.get() {
        let _ = std::fs::remove_dir_all(&s.socket_dir);
    }
}

fn register_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain function without captured state.
        unsafe {
            libc::atexit(stop_at_exit);
        }
    });
}
