//! X11 helpers for the RDP tests: an Xvfb display of its own, child processes killed when
//! dropped, and running X tools on a display.

use std::process::{Child, Command, Stdio};

use super::sshd::die_with_parent;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An Xvfb display of its own.
pub struct Display {
    /// Its number.
    pub num: u32,
    _p: Proc,
    _out: std::process::ChildStdout,
}

impl Display {
    /// Xvfb picks a free display number and writes it to `-displayfd` once it accepts clients.
    pub fn start() -> Display {
        use std::io::BufRead;
        let mut child = die_with_parent(
            Command::new("Xvfb")
                .args(["-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .spawn()
        .expect("cannot run Xvfb (package xvfb)");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("Xvfb display number");
        let num = line.trim().parse().unwrap_or_else(|_| panic!("Xvfb said {line:?}"));
        // Kept open: Xvfb must never write into a closed pipe.
        Display { num, _p: Proc(child), _out: out.into_inner() }
    }

    /// Its `DISPLAY` value.
    pub fn env(&self) -> String {
        format!(":{}", self.num)
    }
}

/// Runs `prog args` with `DISPLAY=display`; panics with its output when it fails.
pub fn x_tool(display: &Display, prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .env("DISPLAY", display.env())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(out.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether an RDP server answers on `127.0.0.1:port`: an X.224 Connection Request (asking for
/// TLS or NLA) gets a Connection Confirm within 5 s. A server can listen and then die, or
/// accept before it is ready; a listening socket alone does not show it will serve the next
/// client.
pub fn rdp_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(std::time::Duration::from_secs(5));
    if s.set_read_timeout(timeout).is_err() || s.set_write_timeout(timeout).is_err() {
        return false;
    }
    // TPKT (19 bytes) | X.224 CR (class 0) | RDP_NEG_REQ: PROTOCOL_SSL | PROTOCOL_HYBRID.
    let request = [3u8, 0, 0, 19, 14, 0xe0, 0, 0, 0, 0, 0, 1, 0, 8, 0, 3, 0, 0, 0];
    let mut reply = [0u8; 6];
    s.write_all(&request).is_ok() && s.read_exact(&mut reply).is_ok() && reply[0] == 3 && reply[5] == 0xd0
}
