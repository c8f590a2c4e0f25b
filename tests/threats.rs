//! Attacks peers failed at, driven with a real SSH client library (russh) against the real
//! `penstock serve`: identity confusion across login attempts, a username change mid-auth,
//! oversized keyboard-interactive answers, empty passwords, and half-open handshakes from one
//! source that must not lock others out. Each test fails if its defence is removed.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Install};
use russh::client::{self, KeyboardInteractiveAuthResponse};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;

/// A running gateway; killed on drop.
struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_gateway(i: &Install, extra_env: &[(&str, &str)]) -> Gateway {
    let port = free_port();
    let log = std::fs::File::create(i.dir().join("gateway.log")).expect("log");
    let mut cmd = i.command(&["serve"]);
    cmd.env("PENSTOCK_SSH_LISTEN", format!("127.0.0.1:{port}"))
        .env("PENSTOCK_WEB_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("PENSTOCK_RDP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            std::fs::read_to_string(i.dir().join("gateway.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The readiness probes above were connections from 127.0.0.1 too; let the gateway notice
    // they closed so they do not count against the per-source login limit.
    std::thread::sleep(Duration::from_millis(500));
    Gateway { child, port }
}

/// A user with a password; returns the TOTP seed.
fn add_user(i: &Install, name: &str, role: &str, password: &str) -> penstock::secret::Secret {
    let out =
        i.ok_stdin(&["user", "add", name, "--role", role, "--password-stdin"], format!("{password}\n").as_bytes());
    let secret = out.split("secret=").nth(1).expect("otpauth secret").split('&').next().expect("secret").to_string();
    let bytes = totp_rs::Secret::Encoded(secret).to_bytes().expect("base32 seed");
    penstock::secret::Secret::new(bytes)
}

fn code(seed: &penstock::secret::Secret) -> String {
    penstock::auth::totp::code_at(seed, chrono::Utc::now().timestamp())
}

struct AnyKey;

impl client::Handler for AnyKey {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn connect(port: u16) -> client::Handle<AnyKey> {
    client::connect(Arc::new(client::Config::default()), ("127.0.0.1", port), AnyKey).await.expect("connect")
}

/// Starts keyboard-interactive for `user` and answers its prompts with `answers`.
async fn kbdint(h: &mut client::Handle<AnyKey>, user: &str, answers: Vec<String>) -> (usize, bool) {
    let first = h.authenticate_keyboard_interactive_start(user, None::<String>).await.expect("kbdint start");
    let KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } = first else {
        panic!("expected prompts, got {first:?}")
    };
    let n = prompts.len();
    let r = h.authenticate_keyboard_interactive_respond(answers).await.expect("kbdint respond");
    (n, matches!(r, KeyboardInteractiveAuthResponse::Success))
}

/// Runs the gateway command `cmd` on an authenticated connection; returns stdout.
async fn exec(h: &client::Handle<AnyKey>, cmd: &str) -> String {
    let mut ch = h.channel_open_session().await.expect("channel");
    ch.exec(true, cmd).await.expect("exec");
    let mut out = Vec::new();
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

backend_tests! {
    fn failed_login_then_other_user_yields_the_second_identity;
    fn username_change_after_key_needs_the_full_password_round;
}

/// Warpgate CVE-2023-48712: a failed attempt as one user followed by a good login as another
/// must yield the second identity, never the first.
fn failed_login_then_other_user_yields_the_second_identity(b: Backend) {
    let i = Install::new(b);
    let alice = add_user(&i, "alice", "admin", "alice-password-1");
    let bob = add_user(&i, "bob", "vendor", "bob-password-1");
    let gw = start_gateway(&i, &[]);
    common::block_on(async {
        let mut h = connect(gw.port).await;
        let (n, ok) = kbdint(&mut h, "alice", vec!["wrong-password".into(), code(&alice)]).await;
        assert_eq!(n, 2, "password and verification code are asked together");
        assert!(!ok, "a wrong password must fail");
        let (_, ok) = kbdint(&mut h, "bob", vec!["bob-password-1".into(), code(&bob)]).await;
        assert!(ok, "bob's own login succeeds");
        let who = exec(&h, "whoami").await;
        assert!(who.starts_with("bob (vendor"), "identity after the switch: {who:?}");
    });
}

/// A key accepted for one name must not carry over when the client switches the user name: the
/// other user still has to give a password and a code.
fn username_change_after_key_needs_the_full_password_round(b: Backend) {
    let i = Install::new(b);
    let alice = add_user(&i, "alice", "vendor", "alice-password-1");
    let _bob = add_user(&i, "bob", "admin", "bob-password-1");
    let key_path = i.scratch().join("alice_key");
    let pubkey = common::ssh_keygen(&key_path, "alice@laptop");
    i.ok(&["user", "add-key", "alice", "--key", pubkey.trim()]);
    let gw = start_gateway(&i, &[]);
    common::block_on(async {
        let mut h = connect(gw.port).await;
        let key = russh::keys::load_secret_key(&key_path, None).expect("key");
        let r = h
            .authenticate_publickey("alice", PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await
            .expect("publickey");
        match r {
            client::AuthResult::Failure { partial_success, .. } => {
                assert!(partial_success, "the key is a first factor only")
            }
            client::AuthResult::Success => panic!("a key alone must not log in"),
        }
        // Switch to bob: the round must ask for bob's password and code, not just a code.
        let (n, ok) = kbdint(&mut h, "bob", vec![code(&alice)]).await;
        assert_eq!(n, 2, "bob must be asked for password and code");
        assert!(!ok, "alice's key and code must not log in bob");
        // Back as alice, the key still needs only her code.
        let (n, ok) = kbdint(&mut h, "alice", vec![code(&alice)]).await;
        assert_eq!(n, 1);
        assert!(ok, "alice's key plus her code logs in");
        assert!(exec(&h, "whoami").await.starts_with("alice"));
    });
}

/// Huge keyboard-interactive answers and empty passwords are refused without harm, and the
/// gateway keeps serving.
#[test]
fn oversized_and_empty_answers_are_refused() {
    let i = Install::new(Backend::Sqlite);
    let carol = add_user(&i, "carol", "vendor", "carol-password-1");
    let gw = start_gateway(&i, &[("PENSTOCK_AUTH_MAX_FAILURES", "100")]);
    common::block_on(async {
        let mut h = connect(gw.port).await;
        let big = "x".repeat(30_000);
        let (_, ok) = kbdint(&mut h, "carol", vec![big.clone(), big.clone(), big.clone(), big]).await;
        assert!(!ok, "oversized answers are refused");
        let (_, ok) = kbdint(&mut h, "carol", vec![String::new(), code(&carol)]).await;
        assert!(!ok, "an empty password is refused");
        let (_, ok) = kbdint(&mut h, "carol", vec!["carol-password-1".into()]).await;
        assert!(!ok, "a missing code is refused");
    });
    common::block_on(async {
        let mut h = connect(gw.port).await;
        let (_, ok) = kbdint(&mut h, "carol", vec!["carol-password-1".into(), code(&carol)]).await;
        assert!(ok, "the gateway still serves a proper login");
    });
}

/// Slowloris and garbage: many silent connections and one spewing garbage from one source must
/// not stop another source from logging in (Warpgate GHSA-78rf-vg74-7cr8).
#[test]
fn half_open_handshakes_do_not_lock_out_other_sources() {
    let i = Install::new(Backend::Sqlite);
    let dave = add_user(&i, "dave", "vendor", "dave-password-1");
    let gw = start_gateway(&i, &[("PENSTOCK_SSH_MAX_PENDING_PER_SOURCE", "8")]);
    let addr: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().expect("addr");
    // 40 connections from 127.0.0.1 that never speak: each newcomer drops the oldest one that
    // has not finished key exchange, so at most 8 stay open.
    let mut silent: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let open = silent.iter_mut().map(still_open).filter(|open| *open).count();
    assert!(open <= 8, "{open} silent connections from one source are still held (limit 8)");
    assert!(open >= 1, "the newest silent connections should still be open");
    // One that sends garbage instead of an identification line.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    let _ = garbage.write_all(&[0xffu8; 64 * 1024]);
    // From another loopback address the gateway still answers at once and logs in.
    let start = Instant::now();
    common::block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        let stream = sock.connect(addr).await.expect("connect from 127.0.0.2");
        let mut h =
            client::connect_stream(Arc::new(client::Config::default()), stream, AnyKey).await.expect("handshake");
        let (_, ok) = kbdint(&mut h, "dave", vec!["dave-password-1".into(), code(&dave)]).await;
        assert!(ok, "login from another source works while 127.0.0.1 floods");
    });
    assert!(start.elapsed() < Duration::from_secs(10), "login took {:?}", start.elapsed());
    // The flooding source itself still gets in: it is its idle connections that go.
    let mut extra = TcpStream::connect(addr).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 64];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"SSH-2.0-"),
        "a new connection from the flooding source got no banner: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(silent);
}

/// Whether the gateway still holds `s` open (reads its banner; EOF means it was dropped).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return true,
            Err(_) => return false,
        }
    }
}
