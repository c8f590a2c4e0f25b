//! Live-view helpers: [`Typist`], a vendor's `ssh -tt` session that the test types into while
//! it runs, and [`ws_status`], a WebSocket upgrade to the console made with the real curl (its
//! status line only).

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sshd::{die_with_parent, wait_timeout, Lab, Vendor};
use super::web::Auth;

/// A vendor's interactive `ssh -tt` session; what it prints is collected as it comes.
pub struct Typist {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Typist {
    /// Connects `v` to the lab's target with a terminal.
    pub fn start(lab: &Lab, v: &Vendor) -> Typist {
        let mut cmd = lab.ssh(v, &["-tt"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawn ssh");
        let stdin = child.stdin.take();
        let out = super::web::collect_output(&mut child);
        Typist { child, stdin, out }
    }

    /// Types `text` into the session.
    pub fn type_text(&mut self, text: &str) {
        let si = self.stdin.as_mut().expect("session input open");
        si.write_all(text.as_bytes()).expect("type");
        si.flush().expect("flush");
    }

    /// What the vendor saw so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the vendor saw `needle`.
    pub fn wait_text(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !self.text().contains(needle) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.text().contains(needle)
    }

    /// Types `exit` and waits for the session to end; whether it ended well.
    pub fn exit(&mut self, timeout: Duration) -> bool {
        self.type_text("exit\n");
        drop(self.stdin.take());
        wait_timeout(&mut self.child, timeout).is_some_and(|s| s.success())
    }
}

impl Drop for Typist {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a WebSocket upgrade of `path` (with `origin` as the `Origin` header, if any):
/// 101 when the console switched protocols.
pub fn ws_status(base: &str, path: &str, auth: Auth, origin: Option<&str>) -> u16 {
    let hfile = std::env::temp_dir().join(format!("penstock-ws-{}", super::random_hex(6)));
    let mut c = Command::new("curl");
    c.args(["-sk", "--http1.1", "--max-time", "3", "-o", "/dev/null", "-D"]).arg(&hfile);
    c.args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"]);
    c.args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]);
    if let Some(o) = origin {
        c.arg("-H").arg(format!("Origin: {o}"));
    }
    match auth {
        Auth::None => {}
        Auth::Token(t) => {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        Auth::Cookie(k, _) => {
            c.arg("-H").arg(format!("Cookie: __Host-penstock={k}"));
        }
    }
    c.arg(format!("{base}{path}"));
    let _ = super::sshd::run(&mut c, b"", Duration::from_secs(20));
    let head = std::fs::read_to_string(&hfile).unwrap_or_default();
    let _ = std::fs::remove_file(&hfile);
    head.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {path}: {head:?}"))
}
