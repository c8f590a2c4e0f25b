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
