//! The queue between a vendor's channel and its target, and the connection-wide count of bytes
//! waiting in such queues.
//!
//! russh grants a peer more window as soon as data *arrives*, not when it is consumed, and its
//! session loop stops reading the socket while a channel's receiver is full. A relay must
//! therefore read the vendor eagerly: if the vendor's session loop stalled behind a slow target,
//! it would also stop taking the vendor's window adjustments, the target's output could not be
//! delivered, and a target like `cat` (which reads only while its output drains) would wait on
//! us forever. The memory this costs is bounded two ways:
//!
//! * while the connection's [`Backlog`] is above [`Backlog::is_high`], the handler shrinks the
//!   vendor's window grants to a trickle of two bytes (see `Conn::adjust_window`); trickled
//!   bytes are coalesced here, so they cost bytes, not queue entries;
//! * above a hard limit (the high mark plus two windows plus 16 MiB, reached only when a target
//!   stops reading for minutes while the vendor keeps sending) the reader waits: plain
//!   backpressure, as a direct TCP stream would give.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use russh::ChannelMsg;
use tokio::sync::Notify;

/// Above this many bytes waiting for targets, the connection's vendor gets only trickle grants.
pub const BACKLOG_HIGH: usize = 4 * 1024 * 1024;

/// Data messages smaller than this are appended to a queued small buffer.
const SMALL: usize = 1024;
/// A coalescing buffer stops growing at this size.
const SMALL_CAP: usize = 32 * 1024;

/// Bytes read from a connection's vendor and not yet accepted by its targets.
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicUsize,
    hard: usize,
}

impl Backlog {
    /// A backlog for a connection whose channels have `window` bytes of window.
    pub fn new(window: u32) -> Self {
        Backlog { bytes: AtomicUsize::new(0), hard: BACKLOG_HIGH + 2 * window as usize + 16 * 1024 * 1024 }
    }

    /// Whether the vendor's window grants should shrink.
    pub fn is_high(&self) -> bool {
        self.bytes() > BACKLOG_HIGH
    }

    /// Bytes waiting now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Releases `n` bytes (accepted by the target, or dropped).
    pub fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Keeps `n` popped bytes counted until the returned guard drops (when the target has
    /// them, or when the send is abandoned).
    pub fn hold(&self, n: usize) -> Held<'_> {
        Held { backlog: self, n }
    }
}

/// Bytes on their way to a target; released on drop.
pub struct Held<'a> {
    backlog: &'a Backlog,
    n: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.backlog.release(self.n);
    }
}

enum Item {
    Msg(ChannelMsg),
    Small(BytesMut),
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// The vendor side has ended: nothing more will be pushed.
    finished: bool,
    /// The target side has ended: pushes are dropped.
    dead: bool,
}

/// One channel's queue from the vendor's reader to the target's writer. The reader never waits
/// (below the hard limit); the writer releases each message's bytes once the target has them
/// ([`Backlog::hold`]); what is still queued when the inbox drops is released with it.
pub struct Inbox<'a> {
    state: Mutex<State>,
    ready: Notify,
    backlog: &'a Backlog,
}

fn data_len(msg: &ChannelMsg) -> usize {
    match msg {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
        _ => 0,
    }
}

impl<'a> Inbox<'a> {
    /// An empty queue counting into `backlog`.
    pub fn new(backlog: &'a Backlog) -> Self {
        Inbox { state: Mutex::new(State::default()), ready: Notify::new(), backlog }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or a panic point; recover it regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg`. Returns false once the target side has ended (the message is dropped).
    pub async fn push(&self, msg: ChannelMsg) -> bool {
        while self.backlog.bytes() > self.backlog.hard && !self.lock().dead {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut st = self.lock();
        if st.dead {
            return false;
        }
        self.backlog.add(data_len(&msg));
        match msg {
            ChannelMsg::Data { data } if data.len() < SMALL => match st.items.back_mut() {
                Some(Item::Small(buf)) if buf.len() + data.len() <= SMALL_CAP => buf.extend_from_slice(&data),
                _ => st.items.push_back(Item::Small(BytesMut::from(&data[..]))),
            },
            msg => st.items.push_back(Item::Msg(msg)),
        }
        drop(st);
        self.ready.notify_one();
        true
    }

    /// The vendor side is done: [`Inbox::pop`] returns `None` once the queue is empty.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.ready.notify_one();
    }

    /// The next message, or `None` when the vendor side is done and everything was taken.
    /// Cancel-safe.
    pub async fn pop(&self) -> Option<ChannelMsg> {
        loop {
            {
                let mut st = self.lock();
                match st.items.pop_front() {
                    Some(Item::Msg(m)) => return Some(m),
                    Some(Item::Small(b)) => return Some(ChannelMsg::Data { data: Bytes::from(b) }),
                    None if st.finished => return None,
                    None => {}
                }
            }
            self.ready.notified().await;
        }
    }

    /// The target side has ended: drops what is queued (releasing its bytes) and every later push.
    pub fn close(&self) {
        let mut st = self.lock();
        st.dead = true;
        let dropped: usize = st
            .items
            .drain(..)
            .map(|i| match i {
                Item::Msg(m) => data_len(&m),
                Item::Small(b) => b.len(),
            })
            .sum();
        self.backlog.release(dropped);
    }
}

impl Drop for Inbox<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(b: &[u8]) -> ChannelMsg {
        ChannelMsg::Data { data: Bytes::copy_from_slice(b) }
    }

    #[tokio::test]
    async fn trickled_bytes_coalesce_in_order_and_are_counted() {
        let backlog = Backlog::new(64 * 1024);
        let inbox = Inbox::new(&backlog);
        for i in 0..10_000u32 {
            assert!(inbox.push(data(&[(i % 251) as u8, 7])).await);
        }
        assert!(inbox.push(ChannelMsg::Eof).await);
        assert!(inbox.push(data(&[1; 4096])).await);
        inbox.finish();
        assert_eq!(backlog.bytes(), 20_000 + 4096);
        let mut bytes = Vec::new();
        let mut entries = 0;
        let mut saw_eof_after = None;
        while let Some(m) = inbox.pop().await {
            entries += 1;
            match m {
                ChannelMsg::Data { data } => {
                    bytes.extend_from_slice(&data);
                    backlog.release(data.len());
                }
                ChannelMsg::Eof => saw_eof_after = Some(bytes.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
        // 20 000 bytes in 32 KiB buffers: one entry, then EOF, then the large message.
        assert_eq!(entries, 3);
        assert_eq!(saw_eof_after, Some(20_000));
        let expect: Vec<u8> = (0..10_000u32).flat_map(|i| [(i % 251) as u8, 7]).chain([1; 4096]).collect();
        assert_eq!(bytes, expect);
        assert_eq!(backlog.bytes(), 0);
    }

    #[tokio::test]
    async fn closing_releases_the_queue_and_refuses_more() {
        let backlog = Backlog::new(64 * 1024);
        let inbox = Inbox::new(&backlog);
        assert!(inbox.push(data(&[0; 5000])).await);
        assert!(inbox.push(data(&[0; 10])).await);
        inbox.close();
        assert_eq!(backlog.bytes(), 0);
        assert!(!inbox.push(data(&[0; 10])).await);
        assert_eq!(backlog.bytes(), 0);
    }

    #[tokio::test]
    async fn the_reader_waits_above_the_hard_limit_until_the_writer_drains() {
        let backlog = Backlog::new(64 * 1024);
        let inbox = Inbox::new(&backlog);
        let big = vec![0u8; 1024 * 1024];
        let mut pushed = 0;
        // The reader stops once the hard limit is passed.
        while tokio::time::timeout(Duration::from_millis(50), inbox.push(data(&big))).await.is_ok() {
            pushed += 1;
            assert!(pushed < 100, "the reader never waited");
        }
        assert!(backlog.bytes() > backlog.hard);
        assert!(backlog.bytes() <= backlog.hard + big.len());
        // Draining lets it go on.
        while backlog.bytes() > backlog.hard / 2 {
            let Some(ChannelMsg::Data { data }) = inbox.pop().await else { panic!("data expected") };
            backlog.release(data.len());
        }
        assert!(tokio::time::timeout(Duration::from_secs(1), inbox.push(data(&big))).await.is_ok());
    }
}
