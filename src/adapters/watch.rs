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
