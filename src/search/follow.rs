//! A reader over a recording that is still being written. At the end of what has been written
//! so far it waits for more (after calling its idle hook, which lets the indexer commit what it
//! has) until the session is marked ended; only then does it report the end of the file. The
//! indexer can so read a live cast with the same parser as a finished one.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reads `inner`, waiting at its end until `ended` is set.
pub struct Follow<R, F> {
    inner: R,
    ended: Arc<AtomicBool>,
    idle: F,
    poll: Duration,
}

impl<R: Read, F: FnMut() -> std::io::Result<()>> Follow<R, F> {
    /// `idle` runs each time the reader has caught up with the writer; an error from it stops
    /// the reading (the indexer went away).
    pub fn new(inner: R, ended: Arc<AtomicBool>, idle: F, poll: Duration) -> Self {
        Follow { inner, ended, idle, poll }
    }
}

impl<R: Read, F: FnMut() -> std::io::Result<()>> Read for Follow<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.ended.load(Ordering::Acquire) {
                // The session is marked ended only after its recording was closed, so what the
                // writer added between the read above and the flag is read now; after that, the
                // end of the file is the end.
                return self.inner.read(buf);
            }
            (self.idle)()?;
            std::thread::sleep(self.poll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn waits_for_the_writer_until_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.cast");
        let mut w = std::fs::File::create(&path).unwrap();
        w.write_all(b"line one\npart").unwrap();
        w.flush().unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let idles = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (ended.clone(), idles.clone());
        let reader = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            let follow = Follow::new(
                f,
                flag,
                move || {
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                },
                Duration::from_millis(10),
            );
            BufReader::new(follow).lines().map(|l| l.unwrap()).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!reader.is_finished(), "the reader waits at the end of a live file");
        w.write_all(b"ial line two\nthree").unwrap();
        w.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        w.write_all(b"\n").unwrap();
        drop(w);
        ended.store(true, Ordering::Release);
        let lines = reader.join().unwrap();
        assert_eq!(lines, vec!["line one", "partial line two", "three"]);
        assert!(idles.load(Ordering::Relaxed) > 0, "the idle hook ran while waiting");
    }

    #[test]
    fn an_idle_error_stops_the_reader() {
        let ended = Arc::new(AtomicBool::new(false));
        let mut f = Follow::new(
            std::io::empty(),
            ended,
            || Err(std::io::Error::other("indexer gone")),
            Duration::from_millis(1),
        );
        let mut buf = [0u8; 8];
        assert!(f.read(&mut buf).is_err());
    }
}
