//! One vendor connection: authentication (key or password, then TOTP, through the core), then
//! the channel requests. A channel is authorised, connected upstream, recorded and only then
//! relayed; any failure on that path refuses the channel with a one-line reason.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::ssh_key::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet, Pty};
use tokio::sync::OwnedSemaphorePermit;

use super::login::{self, Login};
use super::relay::Relay;
use super::server::Shared;
use super::upstream::{self, Connection};
use crate::access::{self, Grant};
use crate::audit::{self, Event};
use crate::auth::{self, FirstFactor, Principal};
use crate::recording::{ChannelKind, Recorder, Spec};
use crate::secret::Secret;
use crate::sessions::{self, EndReason};
use crate::targets::{self, Target};

/// Delay before answering a failed login step.
const FAILURE_DELAY: Duration = Duration::from_millis(800);
/// Most channels one connection may open.
const MAX_CHANNELS: usize = 16;
/// Environment variables passed to targets.
fn env_allowed(name: &str) -> bool {
    name == "TERM" || name == "LANG" || name.starts_with("LC_")
}

/// Runs one connection to its end.
pub async fn serve_connection(
    shared: Arc<Shared>,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let authed = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(shared.app.config.ssh.login_timeout_secs.max(1));
    let conn = Conn::new(shared.clone(), peer, permit, authed.clone());
    let running = match tokio::time::timeout(limit, russh::server::run_stream(shared.config.clone(), sock, conn)).await
    {
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
        tokio::time::sleep(limit).await;
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

#[derive(Debug, Clone, Default)]
struct PtyReq {
    term: String,
    cols: u32,
    rows: u32,
    modes: Vec<(Pty, u32)>,
}

#[derive(Default)]
struct ChanState {
    chan: Option<Channel<Msg>>,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    started: bool,
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
    permit: Option<OwnedSemaphorePermit>,
    authed: Arc<AtomicBool>,
    key_ok: Option<(String, Principal)>,
    kbd: Kbd,
    principal: Option<Principal>,
    login: Option<Login>,
    upstream: Option<Arc<Connection>>,
    channels: HashMap<ChannelId, ChanState>,
    backlog: Arc<AtomicUsize>,
}

/// Above this many bytes waiting for targets, the connection's vendor gets no more window.
pub const BACKLOG_HIGH: usize = 4 * 1024 * 1024;

impl Conn {
    fn new(shared: Arc<Shared>, peer: SocketAddr, permit: OwnedSemaphorePermit, authed: Arc<AtomicBool>) -> Self {
        Conn {
            shared,
            peer,
            permit: Some(permit),
            authed,
            key_ok: None,
            kbd: Kbd::Idle,
            principal: None,
            login: None,
            upstream: None,
            channels: HashMap::new(),
            backlog: Arc::new(AtomicUsize::new(0)),
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

    /// Refuses a started channel with a message on stderr and exit status `code`.
    fn refuse(&self, ch: ChannelId, session: &mut Session, msg: &str, code: u32) -> Result<(), russh::Error> {
        session.channel_success(ch)?;
        session.extended_data(ch, 1, Bytes::from(format!("penstock: {msg}\r\n")))?;
        session.exit_status_request(ch, code)?;
        session.eof(ch)?;
        session.close(ch)
    }

    async fn audit_refusal(&self, target: &str, reason: &str) {
        let Some(p) = &self.principal else { return };
        let ev = Event::SessionRefused {
            user: p.name.clone(),
            target: target.into(),
            source: self.peer.to_string(),
            reason: reason.into(),
        };
        if let Err(e) = audit::record(&self.shared.app.store, &*self.shared.app.clock, &p.name, &ev).await {
            tracing::error!(error = %e, "cannot audit refused session");
        }
    }

    /// Authorises, connects, records and relays a channel for `kind`.
    async fn start(&mut self, ch: ChannelId, kind: ChannelKind, session: &mut Session) -> Result<(), russh::Error> {
        let (Some(who), Some(login)) = (self.principal.clone(), self.login.clone()) else {
            return session.channel_failure(ch);
        };
        let Some(state) = self.channels.get(&ch) else { return session.channel_failure(ch) };
        if state.started {
            return session.channel_failure(ch);
        }
        let Some(target_name) = login.target.clone() else {
            return self.refuse(
                ch,
                session,
                &format!(
                    "no target named: connect as {}@TARGET (for example ssh {}@plc-line3@gateway)",
                    who.name, who.name
                ),
                2,
            );
        };
        let app = self.shared.app.clone();
        let target = match targets::get(&app, &target_name).await {
            Ok(t) => t,
            Err(crate::error::Error::NotFound(_)) => {
                self.audit_refusal(&target_name, "unknown target").await;
                return self.refuse(ch, session, &format!("unknown target {target_name}"), 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot look up target");
                return self.refuse(
                    ch,
                    session,
                    "the gateway cannot authorise sessions right now (store unavailable)",
                    1,
                );
            }
        };
        let grant = match access::live_grant(&app, who.user_id, target.id, app.clock.now()).await {
            Ok(Some(g)) => g,
            Ok(None) => {
                self.audit_refusal(&target.name, "no active grant").await;
                let msg = format!("no active grant for {} (ask a plant manager for access)", target.name);
                return self.refuse(ch, session, &msg, 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check grants");
                return self.refuse(
                    ch,
                    session,
                    "the gateway cannot authorise sessions right now (store unavailable)",
                    1,
                );
            }
        };
        let up = match self.upstream_for(&target, &who).await {
            Ok(u) => u,
            Err(e) => {
                self.audit_refusal(&target.name, &e.to_string()).await;
                return self.refuse(ch, session, &e.to_string(), 1);
            }
        };
        match self.open_upstream(&up, ch).await {
            Ok(up_chan) => self.launch(ch, kind, session, who, target, grant, up, up_chan).await,
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "cannot open upstream channel");
                self.refuse(ch, session, &format!("cannot open a session on {}", target.name), 1)
            }
        }
    }

    async fn upstream_for(
        &mut self,
        target: &Target,
        who: &Principal,
    ) -> Result<Arc<Connection>, upstream::UpstreamError> {
        if let Some(u) = &self.upstream {
            if !u.is_closed() {
                return Ok(u.clone());
            }
        }
        let conn = Arc::new(upstream::connect(&self.shared.app, target, &who.name).await?);
        self.upstream = Some(conn.clone());
        Ok(conn)
    }

    /// Opens the target channel and replays PTY and environment on it. Nothing runs on the
    /// target yet: the shell, command or subsystem is only requested (by [`request_upstream`])
    /// once the session is recorded.
    async fn open_upstream(&mut self, up: &Connection, ch: ChannelId) -> anyhow::Result<Channel<russh::client::Msg>> {
        let chan = up.channel_open_session().await?;
        let Some(state) = self.channels.get(&ch) else { anyhow::bail!("channel vanished") };
        if let Some(p) = &state.pty {
            chan.request_pty(false, &p.term, p.cols, p.rows, 0, 0, &p.modes).await?;
        }
        for (k, v) in &state.env {
            chan.set_env(false, k.clone(), v.clone()).await?;
        }
        Ok(chan)
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &mut self,
        ch: ChannelId,
        kind: ChannelKind,
        session: &mut Session,
        who: Principal,
        target: Target,
        grant: Grant,
        up: Arc<Connection>,
        mut up_chan: Channel<russh::client::Msg>,
    ) -> Result<(), russh::Error> {
        let app = self.shared.app.clone();
        let Some(state) = self.channels.get(&ch) else { return session.channel_failure(ch) };
        if state.chan.is_none() {
            return session.channel_failure(ch);
        }
        let pty = state.pty.clone();
        let id = sessions::new_id();
        let title = format!("{} → {}", who.name, target.name);
        let spec = Spec {
            session_id: &id,
            title,
            kind: &kind,
            width: pty.as_ref().map(|p| p.cols).filter(|c| *c > 0).unwrap_or(80),
            height: pty.as_ref().map(|p| p.rows).filter(|r| *r > 0).unwrap_or(24),
            term: pty.as_ref().map(|p| p.term.clone()),
            record_input: pty.is_some(),
        };
        let recorder = if app.config.recordings.enabled {
            match Recorder::start(&app, spec).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start recording; session refused");
                    self.audit_refusal(&target.name, "recording unavailable").await;
                    let _ = up_chan.close().await;
                    return self.refuse(ch, session, &format!("session refused: recording unavailable ({e})"), 1);
                }
            }
        } else {
            match Recorder::start_disabled() {
                Ok(r) => r,
                Err(e) => return self.refuse(ch, session, &format!("session refused: {e}"), 1),
            }
        };
        let path = recorder.path.display().to_string();
        let start = sessions::Start {
            id: &id,
            user_id: who.user_id,
            user: &who.name,
            target_id: target.id,
            target: &target.name,
            grant_id: grant.id,
            client_addr: &self.peer.to_string(),
            recording_path: app.config.recordings.enabled.then_some(path.as_str()),
        };
        if let Err(e) = sessions::start(&app, &start).await {
            tracing::error!(error = %e, "cannot store session; refused");
            let _ = recorder.finish().await;
            let _ = up_chan.close().await;
            return self.refuse(ch, session, "session refused: the gateway cannot record it (store unavailable)", 1);
        }
        // Recorded and stored: only now does anything run on the target.
        let accepted = request_upstream(&mut up_chan, &kind).await;
        let down = match &accepted {
            Ok(true) => self.channels.get_mut(&ch).and_then(|s| {
                s.started = true;
                s.chan.take()
            }),
            _ => None,
        };
        let Some(down) = down else {
            let _ = up_chan.close().await;
            let recorded = app.config.recordings.enabled;
            let sha = recorder.finish().await.ok().filter(|_| recorded);
            let end = sessions::End {
                reason: EndReason::Error,
                bytes_up: 0,
                bytes_down: 0,
                recording_path: recorded.then(|| path.clone()),
                recording_sha256: sha,
            };
            if let Err(e) = sessions::end(&app, &id, &who.name, &end).await {
                tracing::error!(session = %id, error = %e, "cannot store session end");
            }
            return match accepted {
                Ok(_) => session.channel_failure(ch),
                Err(e) => {
                    tracing::warn!(target = %target.name, error = %e, "target did not start the session");
                    self.refuse(ch, session, &format!("cannot open a session on {}", target.name), 1)
                }
            };
        };
        let stop = self.shared.registry.add(&id, grant.valid_until);
        session.channel_success(ch)?;
        tracing::info!(session = %id, user = %who.name, target = %target.name, "session started");
        let wants_input = pty.is_some()
            || matches!(kind, ChannelKind::Subsystem(_))
            || matches!(&kind, ChannelKind::Exec(c) if c.starts_with("scp "));
        let relay = Relay {
            down,
            down_handle: session.handle(),
            up: up_chan,
            recorder,
            stop,
            wants_input,
            backlog: self.backlog.clone(),
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let out = relay.run().await;
            drop(up);
            let recorded = app.config.recordings.enabled;
            let (reason, sha) = match out.recorder.finish().await {
                Ok(sha) => (out.reason, recorded.then_some(sha)),
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "recording did not close cleanly");
                    (EndReason::Error, None)
                }
            };
            let end = sessions::End {
                reason,
                bytes_up: out.bytes_up as i64,
                bytes_down: out.bytes_down as i64,
                recording_path: recorded.then_some(path),
                recording_sha256: sha,
            };
            if let Err(e) = sessions::end(&app, &id, &who.name, &end).await {
                tracing::error!(session = %id, error = %e, "cannot store session end");
            }
            shared.registry.remove(&id);
            tracing::info!(session = %id, reason = reason.as_str(), up = out.bytes_up, down = out.bytes_down, "session ended");
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

/// Asks the target for the shell, command or subsystem; `false` means it refused.
async fn request_upstream(chan: &mut Channel<russh::client::Msg>, kind: &ChannelKind) -> anyhow::Result<bool> {
    match kind {
        ChannelKind::Shell => chan.request_shell(true).await?,
        ChannelKind::Exec(cmd) => chan.exec(true, cmd.as_bytes()).await?,
        ChannelKind::Subsystem(s) => chan.request_subsystem(true, s.clone()).await?,
    }
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match chan.wait().await {
                Some(ChannelMsg::Success) => return Ok(true),
                Some(ChannelMsg::Failure) => return Ok(false),
                Some(ChannelMsg::Close) | None => anyhow::bail!("target closed the channel"),
                Some(_) => {}
            }
        }
    })
    .await?
}

fn first_answers(response: Option<Response<'_>>) -> Vec<Secret> {
    // At most two answers of at most 1 KiB are looked at, however many the client sends.
    response.into_iter().flatten().take(2).map(|b| Secret::new(b[..b.len().min(1024)].to_vec())).collect()
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    /// russh grants the vendor more window as soon as data arrives, not when it is consumed.
    /// While the connection's backlog towards targets is high, the next grants shrink to a
    /// trickle (2 bytes), so a fast vendor and a slow target cannot grow memory; once the
    /// backlog drains the full window returns.
    fn adjust_window(&mut self, _channel: ChannelId, _current: u32) -> u32 {
        if self.backlog.load(Ordering::Relaxed) > BACKLOG_HIGH {
            2
        } else {
            self.shared.config.window_size
        }
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false })
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        // Passwords only travel inside keyboard-interactive, together with the TOTP code.
        Ok(Auth::Reject { proceed_with_methods: Some(Self::both_methods()), partial_success: false })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
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
                [pw, code] => auth::login_password(&app, &name, pw, code.expose_str().unwrap_or(""), source).await,
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
        if self.principal.is_none() || self.channels.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), ChanState { chan: Some(channel), ..Default::default() });
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
            Some(s) if !s.started => {
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
            Some(s) if !s.started && env_allowed(name) && s.env.len() < 32 && value.len() <= 256 => {
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
            if let (false, Some(p)) = (s.started, s.pty.as_mut()) {
                p.cols = cols.min(1000);
                p.rows = rows.min(1000);
            }
        }
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.start(channel, ChannelKind::Shell, session).await
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
        self.start(channel, ChannelKind::Exec(cmd), session).await
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
        self.start(channel, ChannelKind::Subsystem(name.to_string()), session).await
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
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No policy allows a forward destination yet (the default is none).
        self.refuse_forward("direct-tcpip", format!("{}:{port}", host.chars().take(255).collect::<String>())).await;
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
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
