//! The web console, spoken to over HTTPS with the real `curl`: users with their TOTP steps
//! ([`Person`]), calls with a token or a console cookie ([`Web`], [`Auth`], [`Reply`]), API
//! tokens made by the real `penstock token create`, and [`Live`], a background process (a browser
//! script, a waiting `ssh`) whose output can be watched while it runs.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sshd::{die_with_parent, now, wait_timeout, Lab, Vendor};
use super::{stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// A user and the TOTP steps it used (each step logs in once).
pub struct Person {
    pub v: Vendor,
    last: Mutex<i64>,
}

impl Person {
    pub fn new(v: Vendor) -> Person {
        Person { v, last: Mutex::new(0) }
    }

    pub fn name(&self) -> &str {
        &self.v.name
    }

    /// A code for a step not used before that the server (±1 step) accepts now.
    pub fn fresh_code(&self) -> String {
        self.code_from(-1)
    }

    /// A code the server accepts for the next 30 s at least (for a browser that takes a while
    /// to start).
    pub fn code_ahead(&self) -> String {
        self.code_from(1)
    }

    pub fn code_from(&self, offset: i64) -> String {
        let mut last = self.last.lock().unwrap();
        let mut cur = now() / 30;
        let step = (cur + offset).max(*last + 1);
        while step > cur + 1 {
            std::thread::sleep(Duration::from_millis(250));
            cur = now() / 30;
        }
        *last = step;
        self.v.code_at(step * 30)
    }
}

/// An answer from the console.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The console cookie's value from `Set-Cookie`.
    pub fn session_cookie(&self) -> String {
        let sc = self.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {}", self.headers));
        sc.split(';').next().and_then(|kv| kv.strip_prefix("__Host-penstock=")).expect("console cookie").to_string()
    }

    /// The CSRF token in a page's forms.
    pub fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').expect("end of value")].to_string()
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Token(&'a str),
    Cookie(&'a str, Option<&'a str>),
}

/// The console at `https://127.0.0.1:PORT`, spoken to with the real curl.
pub struct Web {
    pub base: String,
    pub scratch: PathBuf,
}

impl Web {
    pub fn new(lab: &Lab) -> Web {
        Web { base: format!("https://127.0.0.1:{}", lab.web_port()), scratch: lab.install.scratch() }
    }

    pub fn call(&self, method: &str, path: &str, auth: Auth, body: Option<(&str, String)>) -> Reply {
        let n = super::random_hex(6);
        let (hfile, bfile) = (self.scratch.join(format!("h-{n}")), self.scratch.join(format!("b-{n}")));
        let mut c = Command::new("curl");
        c.args(["-sk", "--max-time", "20", "-X", method, "-D"]).arg(&hfile).arg("-o").arg(&bfile);
        c.args(["-w", "%{http_code}"]);
        match auth {
            Auth::None => {}
            Auth::Token(t) => {
                c.arg("-H").arg(format!("Authorization: Bearer {t}"));
            }
            Auth::Cookie(k, csrf) => {
                c.arg("-H").arg(format!("Cookie: __Host-penstock={k}"));
                if let Some(x) = csrf {
                    c.arg("-H").arg(format!("X-CSRF-Token: {x}"));
                }
            }
        }
        let input = match body {
            Some((ctype, data)) => {
                c.arg("-H").arg(format!("Content-Type: {ctype}")).args(["--data-binary", "@-"]);
                data
            }
            None => String::new(),
        };
        c.arg(format!("{}{path}", self.base));
        let o = super::sshd::run(&mut c, input.as_bytes(), T);
        let status: u16 = stdout(&o).trim().parse().unwrap_or_else(|_| panic!("curl {path}: {}", stderr(&o)));
        let r = Reply {
            status,
            headers: std::fs::read_to_string(&hfile).unwrap_or_default(),
            body: std::fs::read_to_string(&bfile).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(hfile);
        let _ = std::fs::remove_file(bfile);
        r
    }

    pub fn get(&self, path: &str, auth: Auth) -> Reply {
        self.call("GET", path, auth, None)
    }

    pub fn post_json(&self, path: &str, auth: Auth, body: Value) -> Reply {
        self.call("POST", path, auth, Some(("application/json", body.to_string())))
    }

    pub fn post_form(&self, path: &str, auth: Auth, form: &[(&str, &str)]) -> Reply {
        let enc: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", urlenc(v))).collect();
        self.call("POST", path, auth, Some(("application/x-www-form-urlencoded", enc.join("&"))))
    }

    /// Logs `p` in with password and a fresh code; returns the reply.
    pub fn login_with(&self, p: &Person, password: &str) -> Reply {
        let code = p.fresh_code();
        self.post_form("/login", Auth::None, &[("user", p.name()), ("password", password), ("code", &code)])
    }

    /// Logs `p` in; returns the cookie and the CSRF token of the new session.
    #[track_caller]
    pub fn login(&self, p: &Person) -> (String, String) {
        let r = self.login_with(p, &p.v.password.clone());
        assert_eq!(r.status, 303, "login of {} failed: {}", p.name(), r.body);
        let cookie = r.session_cookie();
        let page = self.get("/requests", Auth::Cookie(&cookie, None));
        assert_eq!(page.status, 200, "{}", page.body);
        (cookie.clone(), page.csrf())
    }
}

pub fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `token create --user NAME --expires E`; returns (id, value).
pub fn token(lab: &Lab, name: &str, expires: &str) -> (i64, String) {
    let out = lab.install.ok(&["token", "create", "--user", name, "--expires", expires]);
    let id = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    let value = out.lines().last().expect("token line").trim().to_string();
    assert!(value.starts_with("pst_") && value.len() > 40, "{out}");
    (id, value)
}

/// A background process whose output can be watched while it runs; killed when dropped.
pub struct Live {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

/// Collects a child's stdout and stderr, as they arrive, into one buffer (threads end at EOF).
pub fn collect_output(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let pipes: Vec<Box<dyn Read + Send>> =
        vec![Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
    for mut r in pipes {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            }
        });
    }
    out
}

impl Live {
    pub fn spawn(cmd: &mut Command) -> Live {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = die_with_parent(cmd).spawn().expect("spawn");
        let out = collect_output(&mut child);
        Live { child, out }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn wait_text(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !self.text().contains(needle) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.text().contains(needle)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The roles of a route × role matrix, in order: vendor (owner), other vendor, manager, auditor,
/// admin.
pub const ROLES: [&str; 5] = ["vendor", "other vendor", "manager", "auditor", "admin"];

/// One API route for every role: `expect` is the status per role in [`ROLES`] order (each token
/// is that role's); without credentials and with a made-up token the route answers 401. Every
/// error is JSON `{"error": "…"}`.
#[track_caller]
pub fn check_route(web: &Web, tokens: &[String; 5], method: &str, path: &str, body: Option<Value>, expect: [u16; 5]) {
    for (i, t) in tokens.iter().enumerate() {
        let r = match &body {
            Some(b) => web.post_json(path, Auth::Token(t), b.clone()),
            None => web.call(method, path, Auth::Token(t), None),
        };
        assert_eq!(r.status, expect[i], "{method} {path} as {}: {}", ROLES[i], r.body);
        if r.status >= 400 {
            assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {}", r.body);
        }
    }
    let r = match &body {
        Some(b) => web.post_json(path, Auth::None, b.clone()),
        None => web.call(method, path, Auth::None, None),
    };
    assert_eq!(r.status, 401, "{method} {path} without credentials: {}", r.body);
    let r = web.call(method, path, Auth::Token("pst_not-a-real-token-0000000000000000000000"), None);
    assert_eq!(r.status, 401, "{method} {path} with a made-up token: {}", r.body);
}

/// One console page (GET) for every role's console cookie: `expect` per role in [`ROLES`] order;
/// without a session the page sends the browser to the login page. A refused page shows none of
/// `secret_bits`.
#[track_caller]
pub fn check_page(web: &Web, cookies: &[String; 5], path: &str, expect: [u16; 5], secret_bits: &[&str]) {
    for (i, c) in cookies.iter().enumerate() {
        let r = web.get(path, Auth::Cookie(c, None));
        assert_eq!(r.status, expect[i], "GET {path} as {}: {}", ROLES[i], r.body);
        if r.status >= 400 {
            for s in secret_bits {
                assert!(!r.body.contains(s), "GET {path} as {} refused but shows {s:?}: {}", ROLES[i], r.body);
            }
        }
    }
    let r = web.get(path, Auth::None);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/login")), "GET {path} without a session");
}
