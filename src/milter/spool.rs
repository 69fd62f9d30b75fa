//! The message as it arrives (header block, then body): in memory up to a threshold, then in an anonymous
//! temporary file, so a 50 MB message costs a bounded amount of RAM per session.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// A growing message body.
pub enum Spool {
    Memory(Vec<u8>),
    File { file: File, len: u64 },
}

impl Spool {
    pub fn new() -> Spool {
        Spool::Memory(Vec::new())
    }

    pub fn len(&self) -> u64 {
        match self {
            Spool::Memory(v) => v.len() as u64,
            Spool::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a chunk; moves to a file in `dir` once the size passes `threshold`.
    pub fn append(&mut self, chunk: &[u8], threshold: u64, dir: &Path) -> io::Result<()> {
        match self {
            Spool::Memory(v) if (v.len() + chunk.len()) as u64 > threshold => {
                let mut file = tempfile::tempfile_in(dir)?;
                file.write_all(v)?;
                file.write_all(chunk)?;
                let len = (v.len() + chunk.len()) as u64;
                *self = Spool::File { file, len };
                Ok(())
            }
            Spool::Memory(v) => {
                v.extend_from_slice(chunk);
                Ok(())
            }
            Spool::File { file, len } => {
                file.write_all(chunk)?;
                *len += chunk.len() as u64;
                Ok(())
            }
        }
    }

    /// The whole body as one byte slice: borrowed memory, or a read-only memory map of the
    /// spool file (file-backed pages, not heap).
    pub fn bytes(&self) -> io::Result<SpoolBytes<'_>> {
        match self {
            Spool::Memory(v) => Ok(SpoolBytes::Memory(v)),
            Spool::File { file, len } => {
                if *len == 0 {
                    return Ok(SpoolBytes::Memory(&[]));
                }
                // SAFETY: the file is an anonymous temporary file owned by this spool; no
                // other process can open it, and we never write to it while mapped.
                let map = unsafe { memmap2::Mmap::map(file)? };
                Ok(SpoolBytes::Mapped(map))
            }
        }
    }
}

/// Returns the heap memory freed after a large message to the system (glibc's
/// `malloc_trim`): without it the allocator keeps the peak of the largest message seen
/// resident for the daemon's lifetime.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Default for Spool {
    fn default() -> Self {
        Spool::new()
    }
}

/// A view of a spooled body.
pub enum SpoolBytes<'a> {
    Memory(&'a [u8]),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for SpoolBytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SpoolBytes::Memory(b) => b,
            SpoolBytes::Mapped(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_disk_past_threshold_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new();
        s.append(b"hello ", 8, dir.path()).unwrap();
        assert!(matches!(s, Spool::Memory(_)));
        s.append(b"world", 8, dir.path()).unwrap();
        assert!(matches!(s, Spool::File { .. }));
        s.append(b"!", 8, dir.path()).unwrap();
        assert_eq!(&*s.bytes().unwrap(), b"hello world!");
        assert_eq!(s.len(), 12);
    }
}
