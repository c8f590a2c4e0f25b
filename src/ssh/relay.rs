//! Moves one channel's bytes between the vendor and the target, in both directions at once, with
//! backpressure (every write waits for the peer's window) and the recorder fed by reference.
//! Notices (grant ending soon) go to the vendor's stderr, never into the recording.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::{client, server, Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{mpsc, watch};

use super::inbox::{Backlog, Inbox};
use crate::recording::Recorder;
use crate::sessions::EndReason;

/// Data packets this small, while the backlog is high, are the trickle of `Conn::adjust_window`.
const TRICKLE_MAX: usize = 64;
/// Pause after each trickle packet.
const TRICKLE_PAUSE: Duration = Duration::from_millis(10);

/// One relayed channel.
pub struct Relay {
    /// The vendor's channel, split.
    pub down: (ChannelReadHalf, ChannelWriteHalf<server::Msg>),
    /// Handle of the vendor's connection (for exit signals).
    pub down_handle: server::Handle,
    /// The target's channel.
    pub up: Channel<client::Msg>,
    /// The recording.
    pub recorder: Recorder,
    /// Fires when the session must end (kill, revoke, expiry).
    pub stop: watch::Receiver<Option<EndReason>>,
    /// Notices for the vendor (grant ending soon).
    pub notices: mpsc::Receiver<String>,
    /// Whether the vendor's bytes go to the recorder (PTY keystrokes, sftp/scp uploads).
    pub wants_input: bool,
    /// Bytes read from the vendor and not yet accepted by targets, for the whole connection.
    pub backlog: Arc<Backlog>,
    /// End the session after this long without data either way.
    pub idle_timeout: Option<Duration>,
    /// A session channel (not a forward): the target's EOF is passed on together with its exit
    /// status. sshd sends EOF before the exit status, and an OpenSSH client closes a channel
    /// once both sides sent EOF; russh drops the channel on that close, so an exit status that
    /// followed would be lost (seen with ControlMaster: `ssh` exiting 255 after a good command).
    pub exit_status_expected: bool,
}

/// How a relay ended.
#[derive(Debug)]
pub struct Outcome {
    /// Why.
    pub reason: EndReason,
    /// Bytes vendor → target.
    pub bytes_up: u64,
    /// Bytes target → vendor.
    pub bytes_down: u64,
    /// The recording, to be finished by the caller.
    pub recorder: Recorder,
}

fn notice(reason: EndReason, detail: &str) -> String {
    let what = match reason {
        EndReason::Killed => "ended by an administrator",
        EndReason::Expired => "ended: the access grant is over",
        EndReason::Idle => "ended: idle for too long",
        EndReason::Error | EndReason::Interrupted | EndReason::NodeLost => "ended",
        EndReason::Closed => "closed",
    };
    if detail.is_empty() {
        format!("\r\npenstock: session {what}\r\n")
    } else {
        format!("\r\npenstock: session {what}: {detail}\r\n")
    }
}

impl Relay {
    /// Runs until either side closes or the session is stopped.
    pub async fn run(self) -> Outcome {
        let Relay {
            down: (mut down_rd, down_wr),
            down_handle,
            up,
            recorder,
            mut stop,
            mut notices,
            wants_input,
            backlog,
            idle_timeout,
            exit_status_expected,
        } = self;
        let down_id = down_wr.id();
        let (mut up_rd, up_wr) = up.split();
        let bytes_up = AtomicU64::new(0);
        let bytes_down = AtomicU64::new(0);
        let started = Instant::now();
        // Milliseconds since `started` of the last byte either way.
        let last_activity = AtomicU64::new(0);
        let touch = || last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let rec = &recorder;
        let reason = {
            // The vendor's side is read eagerly (see `super::inbox` for why and how memory stays
            // bounded); the target's side is back-pressured by the target's window.
            let inbox = Inbox::new(&backlog);
            let read_vendor = async {
                while let Some(msg) = down_rd.wait().await {
                    let close = matches!(msg, ChannelMsg::Close);
                    let trickle = matches!(&msg, ChannelMsg::Data { data } if data.len() <= TRICKLE_MAX);
                    if !inbox.push(msg).await || close {
                        break;
                    }
                    if trickle && backlog.is_high() {
                        // Each tiny packet earns the vendor another tiny grant: pace them, so a
                        // vendor outrunning its target costs a packet per pause, not one per
                        // round trip. The pause is bounded, so russh's loop still moves on.
                        tokio::time::sleep(TRICKLE_PAUSE).await;
                    }
                }
                inbox.finish();
            };
            let write_target = async {
                loop {
                    let next = match quiet(inbox.pop(), rec).await {
                        Some(m) => m,
                        None => inbox.pop().await,
                    };
                    let Some(msg) = next else { break };
                    match msg {
                        ChannelMsg::Data { data } => {
                            let _held = backlog.hold(data.len());
                            bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                            touch();
                            if wants_input {
                                rec.input(&data).await;
                            }
                            let sent = up_wr.data_bytes(data).await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        ChannelMsg::ExtendedData { data, ext } => {
                            let _held = backlog.hold(data.len());
                            bytes_up.fetch_add(data.len() as u64, Ordering::Relaxed);
                            let sent = up_wr.extended_data_bytes(ext, data).await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        ChannelMsg::Eof => {
                            let _ = up_wr.eof().await;
                        }
                        ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                            rec.resize(col_width, row_height).await;
                            let _ = up_wr.window_change(col_width, row_height, pix_width, pix_height).await;
                        }
                        ChannelMsg::Signal { signal } => {
                            let _ = up_wr.signal(signal).await;
                        }
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                inbox.close();
            };
            let vendor_to_target = async {
                tokio::join!(read_vendor, write_target);
            };

            let target_to_vendor = async {
                let mut eof_held = false;
                loop {
                    let next = match quiet(up_rd.wait(), rec).await {
                        Some(m) => m,
                        None => up_rd.wait().await,
                    };
                    let Some(msg) = next else { break };
                    match msg {
                        ChannelMsg::Data { data } => {
                            bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                            touch();
                            rec.output(&data).await;
                            if down_wr.data_bytes(data).await.is_err() {
                                break;
                            }
                        }
                        ChannelMsg::ExtendedData { data, ext } => {
                            bytes_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                            touch();
                            rec.error_output(&data).await;
                            if down_wr.extended_data_bytes(ext, data).await.is_err() {
                                break;
                            }
                        }
                        ChannelMsg::ExitStatus { exit_status } => {
                            let _ = down_wr.exit_status(exit_status).await;
                            if std::mem::take(&mut eof_held) {
                                let _ = down_wr.eof().await;
                            }
                        }
                        ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                            let _ = down_handle
                                .exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag)
                                .await;
                            if std::mem::take(&mut eof_held) {
                                let _ = down_wr.eof().await;
                            }
                        }
                        ChannelMsg::Eof if exit_status_expected => eof_held = true,
                        ChannelMsg::Eof => {
                            let _ = down_wr.eof().await;
                        }
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                if eof_held {
                    let _ = down_wr.eof().await;
                }
            };

            let mut failed = recorder_failure(rec);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tokio::pin!(vendor_to_target, target_to_vendor);
            let (reason, detail) = loop {
                tokio::select! {
                    _ = &mut target_to_vendor => break (EndReason::Closed, String::new()),
                    _ = &mut vendor_to_target => {
                        // The vendor closed: close the target side and let its last output drain.
                        let _ = up_wr.close().await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut target_to_vendor).await;
                        break (EndReason::Closed, String::new());
                    }
                    r = wait_stop(&mut stop) => break (r, String::new()),
                    msg = &mut failed => break (EndReason::Error, msg),
                    Some(text) = notices.recv() => {
                        let _ = down_wr.extended_data_bytes(1, Bytes::from(format!("\r\npenstock: {text}\r\n"))).await;
                    }
                    _ = tick.tick(), if idle_timeout.is_some() => {
                        let idle = started.elapsed().saturating_sub(Duration::from_millis(last_activity.load(Ordering::Relaxed)));
                        if idle_timeout.is_some_and(|t| idle >= t) {
                            break (EndReason::Idle, String::new());
                        }
                    }
                }
            };
            drop(failed);
            if reason != EndReason::Closed {
                let text = notice(reason, &detail);
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = down_wr.extended_data_bytes(1, Bytes::from(text)).await;
                    let _ = down_wr.exit_status(255).await;
                    let _ = down_wr.eof().await;
                })
                .await;
                let _ = up_wr.close().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), down_wr.close()).await;
            reason
        };
        let (bytes_up, bytes_down) = (bytes_up.load(Ordering::Relaxed), bytes_down.load(Ordering::Relaxed));
        drop((up_wr, down_wr));
        Outcome { reason, bytes_up, bytes_down, recorder }
    }
}

/// How long a channel must be quiet before the recorder gets the events it holds.
const QUIET: Duration = Duration::from_millis(20);

/// Waits for `next` (a cancel-safe receive). While the recorder holds events, waits at most
/// [`QUIET`]: then hands them to the recorder's writer and returns `None` (receive again).
async fn quiet<T>(next: impl std::future::Future<Output = T>, rec: &Recorder) -> Option<T> {
    if !rec.has_pending() {
        return Some(next.await);
    }
    match tokio::time::timeout(QUIET, next).await {
        Ok(m) => Some(m),
        Err(_) => {
            rec.flush().await;
            None
        }
    }
}

/// A future that resolves when the recorder reports a failure.
fn recorder_failure(rec: &Recorder) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
    let mut w = rec.failure_watch();
    Box::pin(async move {
        loop {
            if let Some(m) = w.borrow().clone() {
                return m;
            }
            if w.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
}

async fn wait_stop(stop: &mut watch::Receiver<Option<EndReason>>) -> EndReason {
    loop {
        if let Some(r) = *stop.borrow() {
            return r;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
