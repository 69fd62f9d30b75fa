//! The delivery point's input: events the Dovecot Lua hook drops into the spool when a
//! message has been committed to a mailbox (dovecot/pecora-delivered.lua).
//!
//! The spool has `tmp/` (the hook writes there) and `new/` (the hook renames finished
//! files there). pecora reads `new/`, processes each event idempotently, and only then
//! removes the file, so a crash at any point replays the event instead of losing it.
//!
//! Whoever may write the spool (Dovecot's mail user, any member of the spool's group) can
//! put anything there, so an entry is hostile input: it is opened without following a
//! symbolic link and without blocking on a FIFO, must be a regular file of at most
//! [`MAX_EVENT_BYTES`], and its user name must not be able to steer a path. Anything else
//! goes to `bad/` with the reason logged. An event is only a hint: what it claims is
//! checked against the registry and the stored message, and the delivery time is the one
//! Dovecot stored (worker.rs), never the file's `time=` or its mtime.

pub mod reconcile;
pub mod worker;

use std::path::{Path, PathBuf};

/// One stored message, as Dovecot reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    pub user: String,
    pub mailbox: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// Message-ID with angle brackets, as Dovecot read it from the header.
    pub message_id: String,
    /// Found by the reconciliation sweep (reconcile.rs), not announced by the hook.
    pub reconciled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unsupported event version {0:?}")]
    Version(String),
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {0}: {1:?}")]
    Invalid(&'static str, String),
    #[error("not a regular file but {0}")]
    NotRegular(&'static str),
    #[error("{0} bytes, more than an event may hold ({max})", max = MAX_EVENT_BYTES)]
    TooLarge(u64),
}

/// The most an event file may hold: the hook writes a few hundred bytes.
pub const MAX_EVENT_BYTES: u64 = 64 * 1024;

/// Whether a user name (decoded) is one pecora hands to Dovecot: not empty, no control
/// character (NUL included), no `/` and no `..`, so that no userdb template such as
/// `home=/var/vmail/%u` can be led out of its directory.
fn check_user(user: &str) -> Result<(), EventError> {
    if user.is_empty() || user.len() > 512 || user.chars().any(char::is_control) || user.contains('/') || user.contains("..") {
        return Err(EventError::Invalid("user", user.to_string()));
    }
    Ok(())
}

/// Undoes the hook's percent-encoding.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl DeliveryEvent {
    /// Parses one event file (`key=value` lines).
    pub fn parse(text: &str) -> Result<DeliveryEvent, EventError> {
        let mut get = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                get.insert(k.trim(), decode(v.trim()));
            }
        }
        match get.get("version").map(String::as_str) {
            Some("1") => {}
            other => return Err(EventError::Version(other.unwrap_or("").to_string())),
        }
        let field = |k: &'static str| get.get(k).cloned().ok_or(EventError::Missing(k));
        let num = |k: &'static str| -> Result<u64, EventError> {
            let v = field(k)?;
            v.parse().map_err(|_| EventError::Invalid(k, v))
        };
        let user = field("user")?;
        check_user(&user)?;
        let mailbox = field("mailbox")?;
        if mailbox.is_empty() || mailbox.chars().any(char::is_control) {
            return Err(EventError::Invalid("mailbox", mailbox));
        }
        // `time=` (the hook's clock, which whoever writes the spool can set) is not read:
        // the delivery time is the one Dovecot stored.
        Ok(DeliveryEvent {
            user,
            mailbox,
            uidvalidity: u32::try_from(num("uidvalidity")?).map_err(|_| EventError::Invalid("uidvalidity", String::new()))?,
            uid: u32::try_from(num("uid")?).map_err(|_| EventError::Invalid("uid", String::new()))?,
            message_id: field("message_id")?,
            reconciled: false,
        })
    }

    /// The event as its file name tells it: used when pecora may not read the file itself
    /// (the hook writes it 0600 as the mail user). The hook names a file
    /// `UIDVALIDITY.UID.TOKEN.USER~MSGID`: UID is 0 when Dovecot had not assigned it yet,
    /// TOKEN (hex digits) makes the name unique, and USER and MSGID (the Message-ID without
    /// its angle brackets, empty when it did not fit) are encoded by the hook with `=XX` for
    /// every byte outside `[A-Za-z0-9@_+-.]` and for the dots of a `..`. An older hook
    /// wrote `UIDVALIDITY.UID.USER`, still read. The mailbox is INBOX, the only one LMTP
    /// delivers to here. `None` for a name the hook cannot have written or a user name
    /// [`check_user`] refuses.
    pub fn from_file_name(name: &str) -> Option<DeliveryEvent> {
        // The hook encodes `%` itself (as =25): a raw one was not written by it.
        if name.contains('%') {
            return None;
        }
        let unescape = |encoded: &str| decode(&encoded.replace('=', "%"));
        let (head, message_id) = match name.split_once('~') {
            Some((head, msgid)) => {
                if msgid.contains('~') {
                    return None;
                }
                let msgid = unescape(msgid);
                if msgid.chars().any(|c| c.is_control() || c == '<' || c == '>' || c.is_whitespace()) {
                    return None;
                }
                (head, if msgid.is_empty() { String::new() } else { format!("<{msgid}>") })
            }
            None => (name, String::new()),
        };
        let versioned = name.contains('~');
        let mut it = head.splitn(if versioned { 4 } else { 3 }, '.');
        let uidvalidity = it.next()?.parse().ok()?;
        let uid = it.next()?.parse().ok()?;
        if versioned {
            let token = it.next()?;
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
        }
        let user = unescape(it.next()?);
        check_user(&user).ok()?;
        Some(DeliveryEvent { user, mailbox: "INBOX".into(), uidvalidity, uid, message_id, reconciled: false })
    }

    /// The PEC identifier this message carries: its Message-ID without angle brackets.
    pub fn pec_id(&self) -> &str {
        self.message_id.trim().trim_start_matches('<').trim_end_matches('>')
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    /// Creates `tmp/`, `new/` and `bad/` if missing.
    pub fn ensure(&self) -> std::io::Result<()> {
        for sub in ["tmp", "new", "bad"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        Ok(())
    }

    /// The waiting entries of `new/`, oldest name first: every kind of entry, since a
    /// symbolic link, a FIFO or a directory left there must be moved aside too.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("new"))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads one event entry as hostile input: never through a symbolic link, never
    /// blocking (a FIFO), a regular file only and at most [`MAX_EVENT_BYTES`] read. When
    /// pecora may not read it (the hook writes it 0600 as the mail user) or it is empty, the
    /// event its name tells. `Ok(Err(_))`: the entry must go to `bad/`; `Err(_)`: it could
    /// not be looked at now (gone meanwhile: `NotFound`).
    pub fn read(path: &Path) -> std::io::Result<Result<DeliveryEvent, EventError>> {
        use std::io::Read;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let kind = |t: std::fs::FileType| -> Option<&'static str> {
            if t.is_file() {
                None
            } else if t.is_symlink() {
                Some("a symbolic link")
            } else if t.is_dir() {
                Some("a directory")
            } else if t.is_fifo() {
                Some("a FIFO")
            } else if t.is_socket() {
                Some("a socket")
            } else {
                Some("a device")
            }
        };
        let by_name = || {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            DeliveryEvent::from_file_name(name).ok_or_else(|| EventError::Invalid("file name", name.to_string()))
        };
        // What the entry is, before opening it (opening a device may act on it).
        let meta = std::fs::symlink_metadata(path)?;
        if let Some(k) = kind(meta.file_type()) {
            return Ok(Err(EventError::NotRegular(k)));
        }
        if meta.len() > MAX_EVENT_BYTES {
            return Ok(Err(EventError::TooLarge(meta.len())));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let file = match file {
            Ok(f) => f,
            // Swapped for a symbolic link since the look above.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Err(EventError::NotRegular("a symbolic link"))),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(by_name()),
            Err(e) => return Err(e),
        };
        // And what was opened (the entry may have been swapped meanwhile).
        let meta = file.metadata()?;
        if let Some(k) = kind(meta.file_type()) {
            return Ok(Err(EventError::NotRegular(k)));
        }
        if meta.len() > MAX_EVENT_BYTES {
            return Ok(Err(EventError::TooLarge(meta.len())));
        }
        let mut bytes = Vec::new();
        file.take(MAX_EVENT_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_EVENT_BYTES {
            return Ok(Err(EventError::TooLarge(bytes.len() as u64)));
        }
        let Ok(text) = String::from_utf8(bytes) else {
            return Ok(Err(EventError::Invalid("encoding", "not UTF-8".into())));
        };
        if text.trim().is_empty() {
            // Empty: the hook writes in tmp/ and renames, so only a person or a broken disk
            // leaves that; the name still tells the event.
            return Ok(by_name());
        }
        Ok(DeliveryEvent::parse(&text))
    }

    /// The event is processed: remove it.
    pub fn done(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    /// The event cannot be parsed: keep it aside for a person, out of the way.
    pub fn quarantine(&self, path: &Path) -> std::io::Result<()> {
        let name = path.file_name().unwrap_or_default();
        std::fs::rename(path, self.dir.join("bad").join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_hook_writes() {
        let e = DeliveryEvent::parse(
            "version=1\nuser=mario.rossi@pec.beta.test\nmailbox=INBOX\nuidvalidity=1700000000\nuid=7\n\
             message_id=<opec.1@pec.alpha.test>\ntime=1700000123\n",
        )
        .unwrap();
        assert_eq!(e.user, "mario.rossi@pec.beta.test");
        assert_eq!(e.uid, 7);
        assert_eq!(e.pec_id(), "opec.1@pec.alpha.test");
        let odd = DeliveryEvent::parse("version=1\nuser=a%40b\nmailbox=Posta%20in%20arrivo\nuidvalidity=1\nuid=2\nmessage_id=\ntime=0\n").unwrap();
        assert_eq!(odd.user, "a@b");
        assert_eq!(odd.mailbox, "Posta in arrivo");
    }

    #[test]
    fn the_file_name_tells_the_event() {
        let e = DeliveryEvent::from_file_name("1700000000.7.luca.verdi@pec.beta.test").unwrap();
        assert_eq!((e.uidvalidity, e.uid, e.user.as_str(), e.mailbox.as_str()), (1700000000, 7, "luca.verdi@pec.beta.test", "INBOX"));
        assert_eq!(e.pec_id(), "");
        // The hook's encoding of unsafe bytes in the user name.
        assert_eq!(DeliveryEvent::from_file_name("1.2.a=20b@c").unwrap().user, "a b@c");
        assert_eq!(DeliveryEvent::from_file_name("1.2.a=3Db=25c").unwrap().user, "a=b%c");
        assert!(DeliveryEvent::from_file_name("x.2.u").is_none());
        assert!(DeliveryEvent::from_file_name("1.2.").is_none());
        assert!(DeliveryEvent::from_file_name("garbage").is_none());
        // The hook's names: a random token, the Message-ID, a uid of 0 when Dovecot told none.
        let e = DeliveryEvent::from_file_name("1700000000.0.00ff12ab.luca.verdi@pec.beta.test~opec.1=2E=2Ex=7Ey@pec.alpha.test").unwrap();
        assert_eq!((e.uidvalidity, e.uid, e.user.as_str()), (1700000000, 0, "luca.verdi@pec.beta.test"));
        assert_eq!(e.message_id, "<opec.1..x~y@pec.alpha.test>");
        let e = DeliveryEvent::from_file_name("1.7.0a.a=7Eb=20c@x~").unwrap();
        assert_eq!((e.uid, e.user.as_str(), e.message_id.as_str()), (7, "a~b c@x", ""));
        for name in ["1.0.xyz.luca@x~m@x", "1.0..luca@x~m@x", "1.0.ab~m@x", "1.0.ab.luca@x~m~x", "1.0.ab.luca@x~m=0A@x", "1.0.ab.=2E=2E=2Fetc~m@x", "1.0.ab.luca@x~m=3E@x"] {
            assert!(DeliveryEvent::from_file_name(name).is_none(), "{name}");
        }
        // A user name that could steer a path, however spelled, is refused.
        for name in ["1.2.=2E=2E=2Fetc", "1.2.a=2Fb", "1.2...", "1.2.a=00b", "1.2.a=0Ab", "1.2.a=2e=2eb", "1.2.a%2Fb"] {
            assert!(DeliveryEvent::from_file_name(name).is_none(), "{name}");
        }
    }

    #[test]
    fn refuses_broken_events() {
        assert!(matches!(DeliveryEvent::parse(""), Err(EventError::Version(_))));
        for user in ["..%2F..%2Fetc", "a%2Fb", "a%00b", "a%0Ab", "..", ""] {
            let text = format!("version=1\nuser={user}\nmailbox=INBOX\nuidvalidity=1\nuid=2\nmessage_id=<m>\n");
            assert!(matches!(DeliveryEvent::parse(&text), Err(EventError::Invalid("user", _))), "{user}");
        }
        assert!(matches!(
            DeliveryEvent::parse("version=1\nuser=a\nmailbox=IN%0ABOX\nuidvalidity=1\nuid=2\nmessage_id=<m>\n"),
            Err(EventError::Invalid("mailbox", _))
        ));
        assert!(matches!(DeliveryEvent::parse("version=1\nuser=a\n"), Err(EventError::Missing("mailbox"))));
        assert!(matches!(
            DeliveryEvent::parse("version=1\nuser=a\nmailbox=I\nuidvalidity=x\nuid=1\nmessage_id=m\ntime=1\n"),
            Err(EventError::Invalid("uidvalidity", _))
        ));
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("a%zz"), "a%zz");
    }

    #[test]
    fn hostile_spool_entries_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        spool.ensure().unwrap();
        let new = dir.path().join("new");
        let good = new.join("1.2.luca@pec.beta.test");
        std::fs::write(&good, "version=1\nuser=luca@pec.beta.test\nmailbox=INBOX\nuidvalidity=1\nuid=2\nmessage_id=<m@x>\ntime=0\n").unwrap();
        let fifo = new.join("1.3.fifo@x");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", new.join("1.4.zero@x")).unwrap();
        std::os::unix::fs::symlink(&good, new.join("1.5.link@x")).unwrap();
        let huge = std::fs::File::create(new.join("1.6.huge@x")).unwrap();
        huge.set_len(100 << 20).unwrap();
        std::fs::write(new.join("1.7.big@x"), vec![b'a'; MAX_EVENT_BYTES as usize + 1]).unwrap();
        std::fs::create_dir(new.join("1.8.dir@x")).unwrap();
        std::fs::write(new.join("1.9.=2E=2E=2Fetc"), "").unwrap();
        std::fs::write(new.join("1.10.bin@x"), [0xff, 0xfe, b'\n']).unwrap();

        assert_eq!(spool.pending().unwrap().len(), 9, "every kind of entry is listed");
        let read = |n: &str| Spool::read(&new.join(n)).unwrap();
        assert_eq!(read("1.2.luca@pec.beta.test").unwrap().uid, 2);
        assert!(matches!(read("1.3.fifo@x"), Err(EventError::NotRegular("a FIFO"))));
        assert!(matches!(read("1.4.zero@x"), Err(EventError::NotRegular("a symbolic link"))));
        assert!(matches!(read("1.5.link@x"), Err(EventError::NotRegular("a symbolic link"))));
        assert!(matches!(read("1.6.huge@x"), Err(EventError::TooLarge(n)) if n == 100 << 20));
        assert!(matches!(read("1.7.big@x"), Err(EventError::TooLarge(_))));
        assert!(matches!(read("1.8.dir@x"), Err(EventError::NotRegular("a directory"))));
        assert!(matches!(read("1.9.=2E=2E=2Fetc"), Err(EventError::Invalid("file name", _))));
        assert!(matches!(read("1.10.bin@x"), Err(EventError::Invalid("encoding", _))));
        // Moving aside moves the entry itself, not what a link points to.
        spool.quarantine(&new.join("1.5.link@x")).unwrap();
        assert!(good.is_file());
        assert!(std::fs::symlink_metadata(dir.path().join("bad/1.5.link@x")).unwrap().file_type().is_symlink());
    }
}
