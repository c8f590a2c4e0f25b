//! One session channel after the vendor asked for a shell, a command or a subsystem: the gateway
//! command set when no target is named; otherwise authorise (waiting for approval when there is
//! no grant), check the policy's channel rules, connect upstream, record, relay, and close the
//! books. Runs as its own task so the connection's SSH loop never waits on any of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::ChannelOpenHandle;
use russh::{server, Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, Pty};
use tokio::sync::Mutex;

use super::commands;
use super::inbox::Backlog;
use super::relay::Relay;
use super::server::Shared;
use super::upstream::{self, Connection};
use crate::access::{self, requests, Grant};
use crate::app::App;
use crate::audit::{self, Event};
use crate::auth::Principal;
use crate::policy::Channels;
use crate::recording::{ChannelKind, Recorder, Spec};
use crate::sessions::{self, EndReason};
use crate::targets::{self, Target};
use crate::users::{self, User};

/// The PTY the vendor asked for.
#[derive(Debug, Clone, Default)]
pub struct PtyReq {
    /// `TERM`.
    pub term: String,
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// Terminal modes.
    pub modes: Vec<(Pty, u32)>,
}

/// The connection's upstream, shared by its channels and opened on first use.
pub type UpstreamSlot = Arc<Mutex<Option<Arc<Connection>>>>;

/// Everything a channel task needs.
pub struct ChannelTask {
    /// Server state.
    pub shared: Arc<Shared>,
    /// Who logged in.
    pub who: Principal,
    /// Target named at login.
    pub target: Option<String>,
    /// What was asked for.
    pub kind: ChannelKind,
    /// PTY, if any.
    pub pty: Option<PtyReq>,
    /// Allowed environment.
    pub env: Vec<(String, String)>,
    /// Client address.
    pub peer: SocketAddr,
    /// Handle of the vendor's connection.
    pub down_handle: server::Handle,
    /// The connection's upstream.
    pub upstream: UpstreamSlot,
    /// The connection's backlog towards targets.
    pub backlog: Arc<Backlog>,
}

type Wr = ChannelWriteHalf<server::Msg>;

async fn say(wr: &Wr, text: &str) {
    let _ = wr.extended_data_bytes(1, Bytes::from(text.replace('\n', "\r\n"))).await;
}

async fn end(wr: &Wr, code: u32) {
    let _ = wr.exit_status(code).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

async fn refuse(wr: &Wr, msg: &str, code: u32) {
    say(wr, &format!("penstock: {msg}\n")).await;
    end(wr, code).await;
}

/// Answers a channel opened past the per-connection limit: says why and closes it.
pub async fn refuse_over_limit(down: Channel<server::Msg>, limit: usize) {
    let (_rd, wr) = down.split();
    let msg = format!(
        "session refused: this connection already has {limit} open sessions or forwards (the limit); \
         close one, or open a new connection"
    );
    refuse(&wr, &msg, 1).await;
}

/// Whether the policy's channel rules allow `kind`.
fn allowed(rules: &Channels, kind: &ChannelKind) -> Result<(), &'static str> {
    match kind {
        ChannelKind::Shell if !rules.shell => Err("interactive shells"),
        ChannelKind::Exec(c) if c.starts_with("scp ") && !rules.sftp => Err("scp"),
        ChannelKind::Exec(c) if !c.starts_with("scp ") && !rules.exec => Err("commands"),
        ChannelKind::Subsystem(_) if !rules.sftp => Err("sftp"),
        _ => Ok(()),
    }
}

impl ChannelTask {
    /// Runs the vendor's channel `down` to its end.
    pub async fn run(self, down: Channel<server::Msg>) {
        let app = self.shared.app.clone();
        let (mut rd, wr) = down.split();
        let user = match users::by_id(&app, self.who.user_id).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "cannot load user");
                return refuse(&wr, "the gateway cannot serve you right now (store unavailable)", 1).await;
            }
        };
        let mut eof_seen = false;
        let Some(target_name) = self.target.clone() else {
            return self.gateway_command(&app, &user, &mut rd, &wr).await;
        };
        let target = match targets::get(&app, &target_name).await {
            Ok(t) => t,
            Err(crate::error::Error::NotFound(_)) => {
                self.audit_refusal(&target_name, "unknown target").await;
                return refuse(&wr, &format!("unknown target {target_name}"), 1).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot look up target");
                return refuse(&wr, "the gateway cannot authorise sessions right now (store unavailable)", 1).await;
            }
        };
        let grant = match access::live_grant(&app, user.id, target.id, app.clock.now()).await {
            Ok(Some(g)) => g,
            Ok(None) => match self.wait_for_grant(&app, &user, &target, &mut rd, &wr, &mut eof_seen).await {
                Some(g) => g,
                None => return,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot check grants");
                return refuse(&wr, "the gateway cannot authorise sessions right now (store unavailable)", 1).await;
            }
        };
        let policy = app.policies.current().for_target(&target).cloned();
        let rules = policy.as_ref().map(|p| p.channels.clone()).unwrap_or_default();
        if let Err(what) = allowed(&rules, &self.kind) {
            let name = policy.as_ref().map(|p| p.name.as_str()).unwrap_or("default");
            self.audit_refusal(&target.name, &format!("{what} not allowed by policy {name}")).await;
            return refuse(&wr, &format!("policy {name} does not allow {what} on {}", target.name), 1).await;
        }
        let idle = policy.as_ref().and_then(|p| p.idle_timeout);
        self.connect_and_relay(app, target, grant, idle, rd, wr, eof_seen).await;
    }

    async fn gateway_command(&self, app: &App, user: &User, rd: &mut ChannelReadHalf, wr: &Wr) {
        let out = match &self.kind {
            ChannelKind::Exec(cmd) => match commands::watch_arg(cmd) {
                Some(Ok(id)) => commands::watch(app, user, &id, rd, wr).await,
                Some(Err(usage)) => usage,
                None => commands::run(app, user, self.peer.ip(), cmd).await,
            },
            ChannelKind::Shell => {
                let mut text = commands::help(user);
                text.push_str("\nNo target named: connect as USER@TARGET@gateway, or run one of the commands above.\n");
                commands::Output { stdout: String::new(), stderr: text, code: 0 }
            }
            ChannelKind::Subsystem(_) => commands::Output {
                stderr: "penstock: name a target for sftp: USER@TARGET@gateway\n".into(),
                code: 1,
                ..Default::default()
            },
        };
        let nl = |s: &str| if self.pty.is_some() { s.replace('\n', "\r\n") } else { s.to_string() };
        if !out.stdout.is_empty() {
            let _ = wr.data_bytes(Bytes::from(nl(&out.stdout))).await;
        }
        if !out.stderr.is_empty() {
            let _ = wr.extended_data_bytes(1, Bytes::from(nl(&out.stderr))).await;
        }
        end(wr, out.code).await;
    }

    async fn audit_refusal(&self, target: &str, reason: &str) {
        let ev = Event::SessionRefused {
            user: self.who.name.clone(),
            target: target.into(),
            source: self.peer.to_string(),
            reason: reason.into(),
        };
        if let Err(e) = audit::record(&self.shared.app.store, &*self.shared.app.clock, &self.who.name, &ev).await {
            tracing::error!(error = %e, "cannot audit refused session");
        }
    }

    /// No grant: file a request (asking for reason and duration on a PTY) or pick up the
    /// user's pending one, then wait until its grant is live. Ctrl-C leaves it pending.
    async fn wait_for_grant(
        &self,
        app: &App,
        user: &User,
        target: &Target,
        rd: &mut ChannelReadHalf,
        wr: &Wr,
        eof_seen: &mut bool,
    ) -> Option<Grant> {
        let pending = requests::list(app, Some(user.id), true).await.unwrap_or_default();
        let mut req = match pending.into_iter().find(|r| r.target_id == target.id) {
            Some(r) => r,
            None if self.pty.is_none() => {
                self.audit_refusal(&target.name, "no active grant").await;
                let msg = format!(
                    "no active grant for {t}; ask for one: ssh {u}@gateway request {t} --for 2h --reason \"…\" (or connect with a terminal to be asked)",
                    t = target.name,
                    u = user.name
                );
                refuse(wr, &msg, 1).await;
                return None;
            }
            None => {
                say(
                    wr,
                    &format!("penstock: no active grant for {}. File a request (Ctrl-C to give up).\n", target.name),
                )
                .await;
                let reason = read_line(rd, wr, "Reason (e.g. change ticket): ").await?;
                let dur_text = read_line(rd, wr, "Duration [1h]: ").await?;
                let dur_text = if dur_text.trim().is_empty() { "1h".to_string() } else { dur_text };
                let duration = match access::parse_duration(&dur_text) {
                    Ok(d) => d,
                    Err(e) => {
                        refuse(wr, &e.to_string(), 1).await;
                        return None;
                    }
                };
                match requests::create(
                    app,
                    user,
                    &requests::Ask { target: target.name.clone(), duration, reason, start: None },
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        refuse(wr, &e.to_string(), 1).await;
                        return None;
                    }
                }
            }
        };
        say(
            wr,
            &format!(
                "request {} pending: {}/{} approvals (Ctrl-C leaves it pending)\n",
                req.id, req.approvals, req.required
            ),
        )
        .await;
        let mut told_upcoming = false;
        let mut next_check = tokio::time::Instant::now();
        // Decisions made on any node wake the wait at once; the poll is the fallback.
        let mut signals = crate::signals::subscribe();
        let poll = Duration::from_millis((app.config.node.poll_ms * 2).clamp(100, 120_000));
        loop {
            if !*eof_seen {
                tokio::select! {
                    r = signals.changed() => if r.is_ok() { next_check = tokio::time::Instant::now() },
                    msg = rd.wait() => match msg {
                        Some(ChannelMsg::Data { data }) if self.pty.is_some() && (data.contains(&3) || data.contains(&4)) => {
                            refuse(wr, &format!("request {} stays pending; connect again to wait for it", req.id), 130).await;
                            return None;
                        }
                        // No more input from the vendor: remember it for the target.
                        Some(ChannelMsg::Eof) => *eof_seen = true,
                        Some(ChannelMsg::Close) | None => return None,
                        _ => {}
                    },
                    _ = tokio::time::sleep_until(next_check) => {}
                }
                if tokio::time::Instant::now() < next_check {
                    continue;
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_check) => {}
                    r = signals.changed() => if r.is_err() { tokio::time::sleep_until(next_check).await },
                }
            }
            next_check = tokio::time::Instant::now() + poll;
            let now_req = match requests::get(app, req.id).await {
                Ok(r) => r,
                Err(_) => continue, // store hiccup: keep waiting, grant nothing
            };
            if now_req.approvals != req.approvals && now_req.state == requests::State::Pending {
                say(wr, &format!("request {}: {}/{} approvals\n", req.id, now_req.approvals, now_req.required)).await;
            }
            req = now_req;
            match req.state {
                requests::State::Pending => {
                    let _ = requests::expire_due(app).await;
                }
                requests::State::Approved => {
                    let Some(gid) = req.grant_id else { continue };
                    let Ok(g) = access::get(app, gid).await else { continue };
                    let now = app.clock.now();
                    if g.live_at(now) {
                        say(wr, &format!("request {} approved; connecting to {}\n", req.id, target.name)).await;
                        return Some(g);
                    }
                    if g.valid_until <= now || g.revoked_at.is_some() {
                        refuse(wr, &format!("the grant of request {} is already over", req.id), 1).await;
                        return None;
                    }
                    if !told_upcoming {
                        say(
                            wr,
                            &format!(
                                "request {} approved; access opens at {} — waiting\n",
                                req.id,
                                crate::clock::fmt_ts(g.valid_from)
                            ),
                        )
                        .await;
                        told_upcoming = true;
                    }
                }
                other => {
                    let by = req.decided_by.clone().map(|b| format!(" by {b}")).unwrap_or_default();
                    let why = req.decision_comment.clone().map(|c| format!(": {c}")).unwrap_or_default();
                    refuse(wr, &format!("request {} was {}{by}{why}", req.id, format!("{other:?}").to_lowercase()), 1)
                        .await;
                    return None;
                }
            }
        }
    }

    async fn upstream(&self, app: &App, target: &Target) -> Result<Arc<Connection>, upstream::UpstreamError> {
        shared_upstream(&self.upstream, app, target, &self.who.name).await
    }

    /// Opens the target channel and replays PTY and environment on it. Nothing runs on the
    /// target yet: the shell, command or subsystem is requested by [`Self::request_upstream`]
    /// only once the session is recorded (fail closed).
    async fn open_upstream(&self, up: &Connection) -> anyhow::Result<Channel<russh::client::Msg>> {
        let chan = up.channel_open_session().await?;
        if let Some(p) = &self.pty {
            chan.request_pty(false, &p.term, p.cols, p.rows, 0, 0, &p.modes).await?;
        }
        for (k, v) in &self.env {
            chan.set_env(false, k.clone(), v.clone()).await?;
        }
        Ok(chan)
    }

    /// Asks the target for the shell, command or subsystem; `false` if it refused.
    async fn request_upstream(&self, chan: &mut Channel<russh::client::Msg>) -> anyhow::Result<bool> {
        match &self.kind {
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

    #[allow(clippy::too_many_arguments)]
    async fn connect_and_relay(
        self,
        app: App,
        target: Target,
        grant: Grant,
        idle: Option<i64>,
        rd: ChannelReadHalf,
        wr: Wr,
        eof_seen: bool,
    ) {
        crate::rotation::wait_if_rotating(&app, &target).await;
        let up = match self.upstream(&app, &target).await {
            Ok(u) => u,
            Err(e) => {
                self.audit_refusal(&target.name, &e.to_string()).await;
                return refuse(&wr, &e.to_string(), 1).await;
            }
        };
        let mut up_chan = match self.open_upstream(&up).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "cannot open upstream channel");
                return refuse(&wr, &format!("cannot open a session on {}", target.name), 1).await;
            }
        };
        let id = sessions::new_id();
        let spec = Spec {
            session_id: &id,
            title: format!("{} → {}", self.who.name, target.name),
            kind: &self.kind,
            width: self.pty.as_ref().map(|p| p.cols).filter(|c| *c > 0).unwrap_or(80),
            height: self.pty.as_ref().map(|p| p.rows).filter(|r| *r > 0).unwrap_or(24),
            term: self.pty.as_ref().map(|p| p.term.clone()),
            record_input: self.pty.is_some(),
        };
        let recorded = app.config.recordings.enabled;
        let recorder = if recorded { Recorder::start(&app, spec).await } else { Recorder::start_disabled() };
        let recorder = match recorder {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start recording; session refused");
                self.audit_refusal(&target.name, "recording unavailable").await;
                let _ = up_chan.close().await;
                return refuse(&wr, &format!("session refused: recording unavailable ({e})"), 1).await;
            }
        };
        let path = recorder.path.display().to_string();
        let peer = self.peer.to_string();
        let start = start_row(&id, &self.who, &target, &grant, &peer, recorded.then_some(path.as_str()));
        if let Err(e) = sessions::start(&app, &start).await {
            tracing::error!(error = %e, "cannot store session; refused");
            let _ = recorder.finish().await;
            let _ = up_chan.close().await;
            return refuse(&wr, "session refused: the gateway cannot record it (store unavailable)", 1).await;
        }
        let (stop, notices) = self.shared.registry.add(&id, grant.valid_until);
        // Only now, with the recording open and the session on record, does anything run.
        let started = match self.request_upstream(&mut up_chan).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} refused the request", target.name)),
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "upstream request failed");
                Err(format!("cannot open a session on {}", target.name))
            }
        };
        if let Err(msg) = started {
            let _ = up_chan.close().await;
            let sha = recorder.finish().await.ok().filter(|_| recorded);
            let end = sessions::End {
                reason: EndReason::Error,
                bytes_up: 0,
                bytes_down: 0,
                recording_path: recorded.then_some(path),
                recording_sha256: sha,
            };
            if let Err(e) = sessions::end(&app, &id, &self.who.name, &end).await {
                tracing::error!(session = %id, error = %e, "cannot store session end");
            }
            self.shared.registry.remove(&id);
            return refuse(&wr, &msg, 1).await;
        }
        tracing::info!(session = %id, user = %self.who.name, target = %target.name, "session started");
        app.notifier.send(
            "session.started",
            format!("Penstock: {} started a session on {} (session {id}).", self.who.name, target.name),
            serde_json::json!({ "session": id, "user": self.who.name, "target": target.name, "client": peer }),
        );
        // Everything the vendor sends is recorded: keystrokes, transfers, and what is piped
        // into a command (`ssh plc sh < script.sh`).
        let wants_input = true;
        if eof_seen {
            let _ = up_chan.eof().await;
        }
        let relay = Relay {
            down: (rd, wr),
            down_handle: self.down_handle.clone(),
            up: up_chan,
            recorder,
            stop,
            notices,
            wants_input,
            backlog: self.backlog.clone(),
            idle_timeout: idle.map(|s| Duration::from_secs(s.max(1) as u64)),
            exit_status_expected: true,
        };
        let out = relay.run().await;
        drop(up);
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
        if let Err(e) = sessions::end(&app, &id, &self.who.name, &end).await {
            tracing::error!(session = %id, error = %e, "cannot store session end");
        }
        self.shared.registry.remove(&id);
        crate::rotation::session_ended(&app, &target);
        app.notifier.send(
            "session.ended",
            format!("Penstock: session {id} of {} on {} ended ({}).", self.who.name, target.name, reason.as_str()),
            serde_json::json!({ "session": id, "user": self.who.name, "target": target.name, "reason": reason.as_str(), "bytes_up": out.bytes_up, "bytes_down": out.bytes_down }),
        );
        tracing::info!(session = %id, reason = reason.as_str(), up = out.bytes_up, down = out.bytes_down, "session ended");
    }
}

/// The connection's upstream, connecting on first use.
async fn shared_upstream(
    slot: &UpstreamSlot,
    app: &App,
    target: &Target,
    actor: &str,
) -> Result<Arc<Connection>, upstream::UpstreamError> {
    let mut slot = slot.lock().await;
    if let Some(u) = slot.as_ref() {
        if !u.is_closed() {
            return Ok(u.clone());
        }
    }
    let conn = Arc::new(upstream::connect(app, target, actor).await?);
    *slot = Some(conn.clone());
    Ok(conn)
}

/// A `direct-tcpip` request (`ssh -L`): allowed only to a `host:port` the target's policy lists,
/// under a live grant; opened from the target's side, counted and audited as a session without
/// a terminal recording.
pub struct Forward {
    /// Server state.
    pub shared: Arc<Shared>,
    /// Who logged in.
    pub who: Principal,
    /// Target named at login.
    pub target: Option<String>,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u32,
    /// Originator address (from the client).
    pub origin: (String, u32),
    /// Client address.
    pub peer: SocketAddr,
    /// Handle of the vendor's connection.
    pub down_handle: server::Handle,
    /// The connection's upstream.
    pub upstream: UpstreamSlot,
    /// The connection's backlog towards targets.
    pub backlog: Arc<Backlog>,
}

impl Forward {
    async fn refuse(&self, reply: ChannelOpenHandle, why: &str) {
        let ev = Event::ChannelRefused {
            session: String::new(),
            kind: "direct-tcpip".into(),
            detail: format!("{}:{}: {why}", self.host, self.port),
        };
        if let Err(e) = audit::record(&self.shared.app.store, &*self.shared.app.clock, &self.who.name, &ev).await {
            tracing::error!(error = %e, "cannot audit refused forward");
        }
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
    }

    /// Decides, opens and relays the forward.
    pub async fn run(self, down: Channel<server::Msg>, reply: ChannelOpenHandle) {
        let app = self.shared.app.clone();
        let Some(target_name) = self.target.clone() else { return self.refuse(reply, "no target named").await };
        let Ok(target) = targets::get(&app, &target_name).await else {
            return self.refuse(reply, "unknown target").await;
        };
        let grant = match access::live_grant(&app, self.who.user_id, target.id, app.clock.now()).await {
            Ok(Some(g)) => g,
            _ => return self.refuse(reply, "no active grant").await,
        };
        let dest = format!("{}:{}", self.host.to_ascii_lowercase(), self.port);
        let allowed = app
            .policies
            .current()
            .for_target(&target)
            .is_some_and(|p| p.channels.forward.iter().any(|d| d.eq_ignore_ascii_case(&dest)));
        if !allowed {
            return self.refuse(reply, "destination not allowed by policy").await;
        }
        let up = match shared_upstream(&self.upstream, &app, &target, &self.who.name).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "forward: upstream unavailable");
                return reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        };
        let up_chan = match up
            .channel_open_direct_tcpip(self.host.clone(), self.port, self.origin.0.clone(), self.origin.1)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, dest, "forward: target could not connect");
                return reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        };
        let Ok(recorder) = Recorder::start_disabled() else {
            return reply.reject(ChannelOpenFailure::ResourceShortage).await;
        };
        let id = sessions::new_id();
        let peer = self.peer.to_string();
        let start = start_row(&id, &self.who, &target, &grant, &peer, None);
        if let Err(e) = sessions::start(&app, &start).await {
            tracing::error!(error = %e, "cannot store forward session; refused");
            return reply.reject(ChannelOpenFailure::ResourceShortage).await;
        }
        reply.accept().await;
        let (stop, notices) = self.shared.registry.add(&id, grant.valid_until);
        let relay = Relay {
            down: down.split(),
            down_handle: self.down_handle.clone(),
            up: up_chan,
            recorder,
            stop,
            notices,
            wants_input: false,
            backlog: self.backlog.clone(),
            idle_timeout: None,
            exit_status_expected: false,
        };
        let out = relay.run().await;
        let _ = out.recorder.finish().await;
        let end = sessions::End {
            reason: out.reason,
            bytes_up: out.bytes_up as i64,
            bytes_down: out.bytes_down as i64,
            recording_path: None,
            recording_sha256: None,
        };
        if let Err(e) = sessions::end(&app, &id, &self.who.name, &end).await {
            tracing::error!(session = %id, error = %e, "cannot store forward end");
        }
        self.shared.registry.remove(&id);
        crate::rotation::session_ended(&app, &target);
    }
}

/// Reads one line typed on the vendor's PTY, echoing it. `None` on Ctrl-C, Ctrl-D or close.
async fn read_line(rd: &mut ChannelReadHalf, wr: &Wr, prompt: &str) -> Option<String> {
    let _ = wr.data_bytes(Bytes::from(prompt.to_string())).await;
    let mut line = String::new();
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Data { data }) => {
                for &b in data.iter() {
                    match b {
                        3 | 4 => {
                            let _ = wr.data_bytes(Bytes::from_static(b"^C\r\n")).await;
                            end(wr, 130).await;
                            return None;
                        }
                        b'\r' | b'\n' => {
                            let _ = wr.data_bytes(Bytes::from_static(b"\r\n")).await;
                            return Some(line);
                        }
                        0x7f | 0x08 if line.pop().is_some() => {
                            let _ = wr.data_bytes(Bytes::from_static(b"\x08 \x08")).await;
                        }
                        b if b >= 0x20 && line.len() < 500 => {
                            line.push(b as char);
                            let _ = wr.data_bytes(Bytes::copy_from_slice(&[b])).await;
                        }
                        _ => {}
                    }
                }
            }
            Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => {
                end(wr, 130).await;
                return None;
            }
            Some(_) => {}
        }
    }
}

/// The session row of a channel `who` opened to `target` under `grant`.
fn start_row<'a>(
    id: &'a str,
    who: &'a Principal,
    target: &'a Target,
    grant: &Grant,
    peer: &'a str,
    recording_path: Option<&'a str>,
) -> sessions::Start<'a> {
    sessions::Start {
        id,
        user_id: who.user_id,
        user: &who.name,
        target_id: target.id,
        target: &target.name,
        grant_id: grant.id,
        client_addr: peer,
        recording_path,
        protocol: "ssh",
    }
}
