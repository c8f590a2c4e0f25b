//! The RDP listener and one connection's life: negotiation, TLS, NLA against the grant
//! credential, then (only after that) the target leg, the session row and its recording, and
//! the relay until close, kill, revoke or expiry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ironrdp_async::FramedWrite;
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_tokio::TokioFramed;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use super::credssp::{self, VendorLogin};
use super::{nego, recording, relay, target, tls, RdpError};
use crate::access;
use crate::app::App;
use crate::audit::{self, Event};
use crate::live::Registry;
use crate::recording::frames::FrameRecorder;
use crate::sessions::{self, EndReason};
use crate::targets;

/// State shared by every RDP connection.
#[derive(Debug)]
struct Shared {
    app: App,
    registry: Registry,
    tls: Arc<rustls::ServerConfig>,
    /// The gateway certificate's public key (CredSSP binds the vendor's login to it).
    public_key: Vec<u8>,
    slots: Arc<Semaphore>,
}

/// The RDP listener.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Loads the gateway's TLS identity and binds `[rdp] listen`.
    pub async fn bind(app: App) -> anyhow::Result<Server> {
        let identity = crate::tls_identity::load(&app.config)?;
        let tls_config = identity.server_config(&[])?;
        let cert = identity.certs.first().context("the TLS certificate file holds no certificate")?;
        let public_key = tls::public_key(cert.as_ref())?;
        let listen = app.config.rdp.listen;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen for RDP on {listen}"))?;
        tracing::info!(thumbprint = %identity.thumbprint(), "RDP certificate (vendors pin this SHA-256 thumbprint)");
        let slots = Arc::new(Semaphore::new(app.config.rdp.max_connections.max(1)));
        Ok(Server {
            listener,
            shared: Arc::new(Shared { app, registry: Registry::default(), tls: tls_config, public_key, slots }),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts connections until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        let watcher = self.shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                crate::live::enforce(&watcher.app, &watcher.registry).await;
            }
        });
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "RDP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "RDP connection refused: too many connections ([rdp] max_connections)");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut tcp = tcp;
                let proxies = &shared.app.config.rdp.proxy_from;
                let peer = if !proxies.is_empty() && crate::proxy_protocol::is_proxy(peer.ip(), proxies) {
                    // A balancer's connection: the vendor's address comes in its PROXY header
                    // (within the login time; the connection already holds its place).
                    let wait = Duration::from_secs(shared.app.config.rdp.login_timeout_secs.clamp(1, 5));
                    match crate::proxy_protocol::read_header(&mut tcp, peer, wait).await {
                        Ok(client) => client,
                        Err(e) => {
                            tracing::warn!(proxy = %peer, error = %format!("{e:#}"), "RDP connection from a proxy refused");
                            return;
                        }
                    }
                } else {
                    peer
                };
                if let Err(e) = connection(&shared, tcp, peer).await {
                    tracing::info!(%peer, error = %e, "RDP connection ended");
                }
                drop(permit);
            });
        }
    }
}

type VendorFramed = TokioFramed<TlsStream<TcpStream>>;

/// Negotiation, TLS and NLA with the vendor.
async fn login(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(VendorFramed, VendorLogin, SecurityProtocol), RdpError> {
    let mut framed = TokioFramed::new(tcp);
    let req = nego::read_request(&mut framed).await?;
    let Some(chosen) = nego::vendor_choice(&req) else {
        let _ = framed.write_all(&nego::hybrid_required()?).await;
        return Err(RdpError::Protocol(format!("the client offered {:?}, not NLA; refused", req.protocol)));
    };
    super::framed_write(&mut framed, &nego::confirm(chosen)?).await?;
    let tcp = framed.into_inner_no_leftover();
    let tls = tokio_rustls::TlsAcceptor::from(shared.tls.clone())
        .accept(tcp)
        .await
        .map_err(|e| RdpError::Protocol(format!("TLS: {e}")))?;
    let mut framed = TokioFramed::new(tls);
    let who = credssp::accept_vendor(&mut framed, &shared.app, peer.ip(), shared.public_key.clone()).await?;
    Ok((framed, who, chosen))
}

/// Audits a session refused after login and, for HYBRID_EX, tells the vendor's client.
async fn refuse(
    app: &App,
    vendor: &mut VendorFramed,
    early: bool,
    who: &VendorLogin,
    peer: SocketAddr,
    e: RdpError,
) -> RdpError {
    let ev = Event::SessionRefused {
        user: who.principal.name.clone(),
        target: who.target.clone(),
        source: peer.to_string(),
        reason: e.to_string(),
    };
    if let Err(err) = audit::record(&app.store, &*app.clock, &who.principal.name, &ev).await {
        tracing::error!(error = %err, "cannot audit a refused RDP session");
    }
    if early {
        let _ = credssp::early_user_auth(vendor, false).await;
    }
    e
}

async fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Result<(), RdpError> {
    let app = &shared.app;
    let accepted = std::time::Instant::now();
    let deadline = Duration::from_secs(app.config.rdp.login_timeout_secs.max(1));
    let (mut vendor, who, chosen) = tokio::time::timeout(deadline, login(shared, tcp, peer))
        .await
        .map_err(|_| RdpError::Protocol("the vendor did not log in in time".into()))??;
    let vendor_login = accepted.elapsed();
    tracing::info!(%peer, user = %who.principal.name, target = %who.target, "RDP login");
    let early = chosen == SecurityProtocol::HYBRID_EX;
    let target = match targets::get(app, &who.target).await {
        Ok(t) if t.protocol == "rdp" => t,
        _ => {
            let e = RdpError::Refused(format!("{} is not an RDP target", who.target));
            return Err(refuse(app, &mut vendor, early, &who, peer, e).await);
        }
    };
    let grant = match access::live_grant(app, who.principal.user_id, target.id, app.clock.now()).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            return Err(refuse(app, &mut vendor, early, &who, peer, RdpError::Refused("no live grant".into())).await)
        }
        Err(e) => {
            let e = RdpError::Internal(format!("grant lookup failed: {e}"));
            return Err(refuse(app, &mut vendor, early, &who, peer, e).await);
        }
    };
    let credential = match targets::credential(app, &target).await {
        Ok(c) => c,
        Err(e) => {
            let e = RdpError::Internal(format!("vaulted credential unavailable: {e}"));
            return Err(refuse(app, &mut vendor, early, &who, peer, e).await);
        }
    };
    let leg_started = std::time::Instant::now();
    let leg = target::connect(app, &target, &credential).await;
    let target_leg = leg_started.elapsed();
    // NLA targets got the credential in CredSSP; others get it in the Client Info PDU.
    let autologon = (!target.rdp_nla)
        .then(|| super::input::AutoLogon { login: target.login.clone(), password: credential.clone() });
    drop(credential);
    let mut leg = match leg {
        Ok(l) => l,
        Err(RdpError::TargetIdentity { presented }) => {
            let ev = Event::CertMismatch {
                target: target.name.clone(),
                expected: target.cert_sha256.clone(),
                presented: presented.clone(),
            };
            if let Err(e) = audit::record(&app.store, &*app.clock, &who.principal.name, &ev).await {
                tracing::error!(error = %e, "cannot audit a certificate mismatch");
            }
            tracing::warn!(target = %target.name, %presented, "RDP target certificate does not match the pinned thumbprint");
            return Err(refuse(app, &mut vendor, early, &who, peer, RdpError::TargetIdentity { presented }).await);
        }
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "RDP target leg failed");
            return Err(refuse(app, &mut vendor, early, &who, peer, e).await);
        }
    };
    // HYBRID_EX: the vendor learns that its login worked only now that the target's did.
    if early {
        credssp::early_user_auth(&mut vendor, true).await?;
    }
    let (_, frame) = vendor.read_pdu().await.map_err(|e| RdpError::Protocol(format!("MCS: {e}")))?;
    let rules = app.policies.current().for_target(&target).map(|p| p.channels.clone()).unwrap_or_default();
    let (rewritten, settings) = relay::rewrite_connect_initial(&frame, leg.selected, &rules)?;
    if !settings.refused.is_empty() {
        tracing::info!(user = %who.principal.name, target = %target.name, refused = ?settings.refused, "RDP channels left out by policy");
    }

    // Nothing reaches the target past the handshake before the recording and the session row
    // exist (fail closed).
    let id = sessions::new_id();
    let channel_names = settings.channels.clone();
    let header = recording::header(&id, &who.principal.name, &target.name, app.clock.now(), leg.selected, settings);
    let recorder = match FrameRecorder::start(app, &id, &header).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the RDP recording; session refused");
            return Err(
                refuse(app, &mut vendor, false, &who, peer, RdpError::Refused("recording unavailable".into())).await
            );
        }
    };
    let path = recorder.path.display().to_string();
    let peer_s = peer.to_string();
    let start = sessions::Start {
        id: &id,
        user_id: who.principal.user_id,
        user: &who.principal.name,
        target_id: target.id,
        target: &target.name,
        grant_id: grant.id,
        client_addr: &peer_s,
        recording_path: Some(&path),
        protocol: "rdp",
    };
    if let Err(e) = sessions::start(app, &start).await {
        let _ = recorder.finish().await;
        let e = RdpError::Internal(format!("cannot store the session: {e}"));
        return Err(refuse(app, &mut vendor, false, &who, peer, e).await);
    }
    let (stop, mut notices) = shared.registry.add(&id, grant.valid_until);
    // Setup times: the vendor's NLA (its client's round trips included), the target leg (TCP,
    // TLS, NLA with the vaulted account), and all of it up to the relay (bench/PERFORMANCE.md).
    tracing::info!(
        session = %id,
        user = %who.principal.name,
        target = %target.name,
        vendor_login_ms = vendor_login.as_millis() as u64,
        target_leg_ms = target_leg.as_millis() as u64,
        setup_ms = accepted.elapsed().as_millis() as u64,
        "RDP session started"
    );
    app.notifier.send(
        "session.started",
        format!("Penstock: {} started an RDP session on {} (session {id}).", who.principal.name, target.name),
        serde_json::json!({ "session": id, "user": who.principal.name, "target": target.name, "client": peer_s, "protocol": "rdp" }),
    );
    // Ending-soon notices (10 and 1 minute before the grant ends) go out as webhooks; the
    // task ends when the session leaves the registry.
    let notice_task = {
        let (app, id, user, tgt) = (app.clone(), id.clone(), who.principal.name.clone(), target.name.clone());
        tokio::spawn(async move {
            while let Some(text) = notices.recv().await {
                tracing::info!(session = %id, notice = %text, "RDP session ending soon");
                app.notifier.send(
                    "session.ending",
                    format!("Penstock: RDP session {id} of {user} on {tgt}: {text}."),
                    serde_json::json!({ "session": id, "user": user, "target": tgt, "notice": text, "protocol": "rdp" }),
                );
            }
        })
    };
    let outcome = match leg.framed.write_all(&rewritten).await {
        Ok(()) => {
            let (vendor_stream, vendor_left) = vendor.into_inner();
            let (target_stream, target_left) = leg.framed.into_inner();
            relay::run(
                vendor_stream,
                vendor_left,
                target_stream,
                target_left,
                &recorder,
                stop,
                autologon,
                channel_names,
            )
            .await
        }
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "cannot write to the RDP target");
            relay::Outcome { up: 0, down: 0, reason: EndReason::Error, refused: None }
        }
    };
    shared.registry.remove(&id);
    notice_task.abort();
    if let Some(refusal) = &outcome.refused {
        tracing::warn!(session = %id, target = %target.name, "{refusal}");
        let ev = Event::SessionRefused {
            user: who.principal.name.clone(),
            target: target.name.clone(),
            source: peer.to_string(),
            reason: format!("session {id}: {refusal}"),
        };
        if let Err(e) = audit::record(&app.store, &*app.clock, &who.principal.name, &ev).await {
            tracing::error!(error = %e, "cannot audit the target guard's refusal");
        }
    }
    let (reason, sha) = match recorder.finish().await {
        Ok(h) => (outcome.reason, Some(h)),
        Err(e) => {
            tracing::error!(session = %id, error = %e, "RDP recording failed");
            (EndReason::Error, None)
        }
    };
    let end = sessions::End {
        reason,
        bytes_up: i64::try_from(outcome.up).unwrap_or(i64::MAX),
        bytes_down: i64::try_from(outcome.down).unwrap_or(i64::MAX),
        recording_path: Some(path),
        recording_sha256: sha,
    };
    if let Err(e) = sessions::end(app, &id, &who.principal.name, &end).await {
        tracing::error!(session = %id, error = %e, "cannot store the RDP session's end");
    }
    app.notifier.send(
        "session.ended",
        format!("Penstock: RDP session {id} of {} on {} ended ({}).", who.principal.name, target.name, reason.as_str()),
        serde_json::json!({ "session": id, "user": who.principal.name, "target": target.name, "reason": reason.as_str(), "bytes_up": outcome.up, "bytes_down": outcome.down, "protocol": "rdp" }),
    );
    tracing::info!(session = %id, reason = reason.as_str(), "RDP session ended");
    Ok(())
}
