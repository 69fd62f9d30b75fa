//! inotify read through tokio: the one watch adapter behind the delivery spool's watch
//! (crate::delivery::worker) and the mail log's (crate::daemon::queue_confirm). The callers
//! decide what an event means; this owns the instance, its registration with tokio and the
//! reading of its events.

use std::ffi::OsStr;
use std::path::Path;

use inotify::{Event, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

/// An inotify instance registered with tokio's reactor.
pub struct Watch {
    fd: AsyncFd<Inotify>,
    buf: Vec<u8>,
}

impl Watch {
    pub fn new() -> std::io::Result<Watch> {
        let inotify = Inotify::init()?;
        // SAFETY: an Inotify owns its descriptor (opened non-blocking by init) until it is
        // dropped, and as_raw_fd always returns that one.
        let fd = unsafe { AsyncFd::register(inotify) }.map_err(std::io::Error::from)?;
        Ok(Watch { fd, buf: vec![0; 4096] })
    }

    /// Watches `path` for `mask`.
    pub fn add(&mut self, path: &Path, mask: WatchMask) -> std::io::Result<WatchDescriptor> {
        self.fd.get_mut().watches().add(path, mask)
    }

    /// Waits until events are queued, then hands `each` every event already queued (so a
    /// burst is one batch).
    pub async fn read_batch(&mut self, mut each: impl FnMut(Event<&OsStr>)) -> std::io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        loop {
            match guard.get_inner_mut().read_events(&mut self.buf) {
                Ok(events) => events.for_each(&mut each),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A watch on one target, as the daemon's loops use it: see [`Kept`].
pub trait Watcher {
    /// Waits for the events that matter; `Ok(false)` when the watch is gone (its target was
    /// removed or moved) and a new one must be made.
    fn wait(&mut self) -> impl std::future::Future<Output = std::io::Result<bool>> + Send;
}

/// A watch kept on a target that may change, made again when needed. A failure to make one
/// is warned about once (until one is made again); without a watch [`Kept::wait`] never
/// completes, and the caller's own timer (its polling interval) does the work.
pub struct Kept<W> {
    watch: Option<W>,
    warned: bool,
    /// What is watched, for the log ("the mail log", "the delivery spool").
    what: &'static str,
}

impl<W: Watcher> Kept<W> {
    pub fn new(what: &'static str) -> Kept<W> {
        Kept { watch: None, warned: false, what }
    }

    pub fn is_watching(&self) -> bool {
        self.watch.is_some()
    }

    pub fn clear(&mut self) {
        self.watch = None;
    }

    /// Keeps the watch when `current` says it watches the wanted target; else makes one with
    /// `make`, or calls `warn` with the error (the first time only).
    pub fn renew(
        &mut self,
        current: impl FnOnce(&W) -> bool,
        make: impl FnOnce() -> std::io::Result<W>,
        warn: impl FnOnce(&std::io::Error),
    ) {
        if self.watch.as_ref().is_some_and(current) {
            return;
        }
        self.watch = match make() {
            Ok(w) => {
                self.warned = false;
                Some(w)
            }
            Err(e) => {
                if !self.warned {
                    warn(&e);
                    self.warned = true;
                }
                None
            }
        };
    }

    /// Waits for the watch's events (forever without a watch). A watch that is gone or fails
    /// is dropped: the next [`Kept::renew`] makes a new one.
    pub async fn wait(&mut self) {
        let Some(w) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        match w.wait().await {
            Ok(true) => {}
            Ok(false) => self.watch = None,
            Err(e) => {
                tracing::warn!("{}'s inotify watch failed: {e}", self.what);
                self.watch = None;
            }
        }
    }
}
