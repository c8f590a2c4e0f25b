//! One vendor connection: authentication (key or password, then TOTP, through the core), then
//! the channel requests. A channel is authorised, connected upstream, recorded and only then
//! relayed; any failure on that path refuses the channel with a one-line reason.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty};

use super::channel::{ChannelTask, Forward, PtyReq, UpstreamSlot};
use super::inbox::Backlog;
use super::login::{self, Login};
use super::login_limits::LoginSlot;
use super::server::Shared;
use crate::audit::{self, Event};
use crate::auth::{self, FirstFactor, Principal};
use crate::recording::ChannelKind;
use crate::secret::Secret;

/// Delay before answering a failed login step.
const FAILURE_DELAY: Duration = Duration::from_millis(800);
/// Most channels one connection may have open at once (sessions and `-L` forwards together).
/// Only open channels count: a channel's place is freed when its task ends, however it ended.
pub const MAX_CHANNELS: usize = 16;
/// Channels past the limit are still opened (up to this many more) so the client can be told
/// why in plain words; beyond that they are refused outright.
const MAX_REFUSAL_CHANNELS: usize = 4;
/// Environment variables passed to targets.
fn env_allowed(name: &str) -> bool {
    name == "TERM" || name == "LANG" || name.starts_with("LC_")
}

/// Runs one connection to its end. The login deadline counts from the accept: a connection
/// that has not logged in by then is dropped (and until then it is sent nothing but SSH
/// handshake and authentication messages; see `server::server_config`).
pub async fn serve_connection(shared: Arc<Shared>, sock: tokio::net::TcpStream, peer: SocketAddr, permit: LoginSlot) {
    let authed = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(shared.app.config.ssh.login_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + limit;
    let conn = Conn::new(shared.clone(), peer, permit, authed.clone());
    let running =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(shared.config.clone(), sock, conn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = ?e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "no SSH identification in time; dropped");
                return;
            }
        };
    let handle = running.handle();
    let guard = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        if !authed.load(Ordering::SeqCst) {
            tracing::info!(%peer, "login timed out");
            let _ = handle.disconnect(russh::Disconnect::ByApplication, "login timed out".into(), "en".into()).await;
        }
    });
    if let Err(e) = running.await {
        tracing::debug!(%peer, error = ?e, "connection ended with an error");
    }
    guard.abort();
}

/// A place among a connection's open channels; freed on drop (when the channel's task ends).
#[derive(Debug)]
pub struct OpenChannel(Arc<AtomicUsize>);

impl OpenChannel {
    fn take(open: &Arc<AtomicUsize>) -> Option<OpenChannel> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_CHANNELS).then_some(n + 1))
            .ok()
            .map(|_| OpenChannel(open.clone()))
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct ChanState {
    chan: Option<Channel<Msg>>,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    /// Its place among the open channels; `None` for a channel opened past the limit, which
    /// only tells the client why and closes.
    place: Option<OpenChannel>,
}

/// Which keyboard-interactive round is running, and for which login name.
#[derive(Debug, Clone)]
enum Kbd {
    Idle,
    PasswordAndCode(String),
    Code(String),
}

/// Handler state of one connection.
pub struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    permit: Option<LoginSlot>,
    authed: Arc<AtomicBool>,
    key_ok: Option<(String, Principal)>,
    kbd: Kbd,
    principal: Option<Principal>,
    login: Option<Login>,
    upstream: UpstreamSlot,
    /// Channels opened and not yet started (a started channel belongs to its task).
    channels: HashMap<ChannelId, ChanState>,
    /// Channels open now (started or not), for the per-connection limit.
    open: Arc<AtomicUsize>,
    backlog: Arc<Backlog>,
}

impl Conn {
    fn new(shared: Arc<Shared>, peer: SocketAddr, permit: LoginSlot, authed: Arc<AtomicBool>) -> Self {
        let backlog = Arc::new(Backlog::new(shared.config.window_size));
        Conn {
            shared,
            peer,
            permit: Some(permit),
            authed,
            key_ok: None,
            kbd: Kbd::Idle,
            principal: None,
            login: None,
            upstream: Arc::new(tokio::sync::Mutex::new(None)),
            channels: HashMap::new(),
            open: Arc::new(AtomicUsize::new(0)),
            backlog,
        }
    }

    /// The client sent an authentication request, so it has finished key exchange: it is no
    /// longer dropped to make room for other connections.
    fn authenticating(&self) {
        if let Some(p) = &self.permit {
            p.mark_authenticating();
        }
    }

    fn source(&self) -> std::net::IpAddr {
        self.peer.ip()
    }

    fn both_methods() -> MethodSet {
        MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..])
    }

    async fn failed(&self) -> Auth {
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false }
    }

    fn accept(&mut self, login_name: &str, who: Principal) -> Auth {
        self.login = Some(login::parse(login_name));
        self.principal = Some(who);
        Auth::Accept
    }

    /// Hands a channel that asked for `kind` to its own task (see `channel.rs`).
    fn start(&mut self, ch: ChannelId, kind: ChannelKind, session: &mut Session) -> Result<(), russh::Error> {
        let (Some(who), Some(login)) = (self.principal.clone(), self.login.clone()) else {
            return session.channel_failure(ch);
        };
        // Once started, the channel belongs to its task; its place is freed when the task ends.
        let Some(state) = self.channels.remove(&ch) else { return session.channel_failure(ch) };
        let Some(down) = state.chan else { return session.channel_failure(ch) };
        let Some(place) = state.place else {
            session.channel_success(ch)?;
            tokio::spawn(super::channel::refuse_over_limit(down, MAX_CHANNELS));
            return Ok(());
        };
        session.channel_success(ch)?;
        let task = ChannelTask {
            shared: self.shared.clone(),
            who,
            target: login.target,
            kind,
            pty: state.pty.clone(),
            env: state.env.clone(),
            peer: self.peer,
            down_handle: session.handle(),
            upstream: self.upstream.clone(),
            backlog: self.backlog.clone(),
        };
        tokio::spawn(async move {
            task.run(down).await;
            drop(place);
        });
        Ok(())
    }

    async fn refuse_forward(&self, kind: &str, detail: String) {
        let Some(p) = &self.principal else { return };
        let ev = Event::ChannelRefused { session: String::new(), kind: kind.into(), detail };
        if let Err(e) = audit::record(&self.shared.app.store, &*self.shared.app.clock, &p.name, &ev).await {
            tracing::error!(error = %e, "cannot audit refused channel");
        }
    }
}

fn first_answers(response: Option<Response<'_>>) -> Vec<Secret> {
    // At most two answers of at most 1 KiB are looked at, however many the client sends.
    response.into_iter().flatten().take(2).map(|b| Secret::new(b[..b.len().min(1024)].to_vec())).collect()
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    /// russh grants the vendor more window as soon as data arrives, not when it is consumed.
    /// While the connection's backlog towards targets is high, the next grants shrink to a
    /// trickle (2 bytes, coalesced by the relay's inbox), so a fast vendor and a slow target
    /// cannot grow memory; once the backlog drains the full window returns.
    fn adjust_window(&mut self, _channel: ChannelId, _current: u32) -> u32 {
        if self.backlog.is_high() {
            2
        } else {
            self.shared.config.window_size
        }
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        self.authenticating();
        Ok(Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false })
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.authenticating();
        // Passwords only travel inside keyboard-interactive, together with the TOTP code.
        Ok(Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        // Only keys the user has registered are asked to sign; nothing is granted here.
        let name = login::parse(user).user;
        let known = match crate::users::find(&self.shared.app, &name).await {
            Ok(Some(u)) => crate::users::keys(&self.shared.app, u.id)
                .await
                .map(|ks| ks.iter().any(|(fp, _)| *fp == crate::keys::fingerprint(offer.public_key)))
                .unwrap_or(false),
            _ => false,
        };
        Ok(if known {
            Auth::Accept
        } else {
            Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false }
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        // The signature has been verified by russh at this point.
        let name = login::parse(user).user;
        let pk: &PublicKey = key.public_key;
        match auth::first_factor(&self.shared.app, &name, FirstFactor::VerifiedKey(pk), self.source()).await {
            Ok(p) => {
                self.key_ok = Some((user.to_string(), p));
                Ok(Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
                    partial_success: true,
                })
            }
            Err(_) => Ok(self.failed().await),
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.authenticating();
        let key_done = self.key_ok.as_ref().filter(|(u, _)| u == user).map(|(_, p)| p.clone());
        let Some(_) = response else {
            let (kbd, prompts): (Kbd, Vec<(Cow<'static, str>, bool)>) = match &key_done {
                Some(_) => (Kbd::Code(user.to_string()), vec![(Cow::Borrowed("Verification code: "), false)]),
                None => (
                    Kbd::PasswordAndCode(user.to_string()),
                    vec![(Cow::Borrowed("Password: "), false), (Cow::Borrowed("Verification code: "), false)],
                ),
            };
            self.kbd = kbd;
            return Ok(Auth::Partial {
                name: Cow::Borrowed("Penstock"),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(prompts),
            });
        };
        let answers = first_answers(response);
        let round = std::mem::replace(&mut self.kbd, Kbd::Idle);
        let name = login::parse(user).user;
        let app = self.shared.app.clone();
        let source = self.source();
        let result = match round {
            // The login name must be the one the round was started for (no identity swaps).
            Kbd::Code(u) if u == user => match (&key_done, answers.first()) {
                (Some(p), Some(code)) => {
                    auth::second_factor(&app, p, code.expose_str().unwrap_or(""), source, "publickey")
                        .await
                        .map(|_| p.clone())
                }
                _ => Err(auth::AuthError::Denied),
            },
            Kbd::PasswordAndCode(u) if u == user => match answers.as_slice() {
                [pw, code] => {
                    auth::login_password_for(
                        &app,
                        &name,
                        pw,
                        login::parse(user).target.as_deref(),
                        code.expose_str().unwrap_or(""),
                        source,
                    )
                    .await
                }
                _ => Err(auth::AuthError::Denied),
            },
            _ => Err(auth::AuthError::Denied),
        };
        match result {
            Ok(p) => Ok(self.accept(user, p)),
            Err(_) => Ok(self.failed().await),
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.authed.store(true, Ordering::SeqCst);
        self.permit = None;
        self.key_ok = None;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.principal.is_none() {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        let place = OpenChannel::take(&self.open);
        if place.is_none() {
            let waiting = self.channels.values().filter(|c| c.place.is_none()).count();
            tracing::info!(peer = %self.peer, limit = MAX_CHANNELS, "session refused: too many open channels on one connection");
            if waiting >= MAX_REFUSAL_CHANNELS {
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
        }
        self.channels.insert(channel.id(), ChanState { chan: Some(channel), place, ..Default::default() });
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(s) => {
                let term: String = term.chars().take(64).collect();
                s.pty = Some(PtyReq {
                    term,
                    cols: col_width.min(1000),
                    rows: row_height.min(1000),
                    modes: modes.iter().take(64).copied().collect(),
                });
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(s) if env_allowed(name) && s.env.len() < 32 && value.len() <= 256 => {
                s.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _pw: u32,
        _ph: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Before the relay starts, remember the size; after, the relay forwards it in order.
        if let Some(s) = self.channels.get_mut(&channel) {
            if let Some(p) = s.pty.as_mut() {
                p.cols = cols.min(1000);
                p.rows = rows.min(1000);
            }
        }
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, ChannelKind::Shell, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if data.len() > 64 * 1024 {
            return session.channel_failure(channel);
        }
        let cmd = String::from_utf8_lossy(data).into_owned();
        self.start(channel, ChannelKind::Exec(cmd), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            self.refuse_forward("subsystem", name.chars().take(64).collect()).await;
            return session.channel_failure(channel);
        }
        self.start(channel, ChannelKind::Subsystem(name.to_string()), session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("x11", String::new()).await;
        session.channel_failure(channel)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse_forward("agent", String::new()).await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forward("tcpip-forward", format!("{address}:{port}")).await;
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse_forward("streamlocal-forward", socket_path.chars().take(256).collect()).await;
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(who), Some(login)) = (self.principal.clone(), self.login.clone()) else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let Some(place) = OpenChannel::take(&self.open) else {
            tracing::info!(peer = %self.peer, limit = MAX_CHANNELS, "forward refused: too many open channels on one connection");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        // Decided (policy destinations, live grant) in its own task; the open is answered there.
        let fwd = Forward {
            shared: self.shared.clone(),
            who,
            target: login.target,
            host: host.chars().take(255).collect(),
            port,
            origin: (originator_address.chars().take(64).collect(), originator_port),
            peer: self.peer,
            down_handle: session.handle(),
            upstream: self.upstream.clone(),
            backlog: self.backlog.clone(),
        };
        tokio::spawn(async move {
            fwd.run(channel, reply).await;
            drop(place);
        });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("direct-streamlocal", socket_path.chars().take(256).collect()).await;
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _addr: &str,
        _port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }
}
