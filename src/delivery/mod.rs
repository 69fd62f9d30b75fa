//! The delivery point's input: events the Dovecot Lua hook drops into the spool when a
//! message has been committed to a mailbox (dovecot/pecora-delivered.lua).
//!
//! The spool has `tmp/` (the hook writes there) and `new/` (the hook renames finished
//! files there). pecora reads `new/`, processes each event idempotently, and only then
//! removes the file, so a crash at any point replays the event instead of losing it.

pub mod dovecot;
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
    /// Unix time the hook ran (or Dovecot saved the message, for a reconciled one).
    pub time: i64,
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
        if user.is_empty() {
            return Err(EventError::Invalid("user", user));
        }
        Ok(DeliveryEvent {
            user,
            mailbox: field("mailbox")?,
            uidvalidity: u32::try_from(num("uidvalidity")?).map_err(|_| EventError::Invalid("uidvalidity", String::new()))?,
            uid: u32::try_from(num("uid")?).map_err(|_| EventError::Invalid("uid", String::new()))?,
            message_id: field("message_id")?,
            time: num("time")? as i64,
            reconciled: false,
        })
    }

    /// The event as its file name tells it (`UIDVALIDITY.UID.USER`, the user encoded by the
    /// hook with `=XX` for unsafe bytes): used when pecora may not read the file itself (the
    /// hook writes it 0600 as the mail user). The mailbox is INBOX, the only one LMTP
    /// delivers to here, and the Message-ID is read from the stored message.
    pub fn from_file_name(name: &str, time: i64) -> Option<DeliveryEvent> {
        let mut it = name.splitn(3, '.');
        let uidvalidity = it.next()?.parse().ok()?;
        let uid = it.next()?.parse().ok()?;
        let user = decode(&it.next()?.replace('=', "%"));
        if user.is_empty() {
            return None;
        }
        Some(DeliveryEvent { user, mailbox: "INBOX".into(), uidvalidity, uid, message_id: String::new(), time, reconciled: false })
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

    /// The waiting events, oldest name first.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("new"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads one event file; when pecora may not read it (the hook writes it 0600 as the
    /// mail user) or it is empty, the event its name tells.
    pub fn read(path: &Path) -> std::io::Result<Result<DeliveryEvent, EventError>> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => return Ok(DeliveryEvent::parse(&text)),
            // Empty: the hook writes in tmp/ and renames, so only a person or a broken disk
            // leaves that; the name still tells the event.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let time = std::fs::symlink_metadata(path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        Ok(DeliveryEvent::from_file_name(name, time).ok_or_else(|| EventError::Invalid("file name", name.to_string())))
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
        let e = DeliveryEvent::from_file_name("1700000000.7.luca.verdi@pec.beta.test", 5).unwrap();
        assert_eq!((e.uidvalidity, e.uid, e.user.as_str(), e.mailbox.as_str()), (1700000000, 7, "luca.verdi@pec.beta.test", "INBOX"));
        assert_eq!(e.pec_id(), "");
        // The hook's encoding of unsafe bytes in the user name.
        assert_eq!(DeliveryEvent::from_file_name("1.2.a=20b@c", 0).unwrap().user, "a b@c");
        assert!(DeliveryEvent::from_file_name("x.2.u", 0).is_none());
        assert!(DeliveryEvent::from_file_name("1.2.", 0).is_none());
        assert!(DeliveryEvent::from_file_name("garbage", 0).is_none());
    }

    #[test]
    fn refuses_broken_events() {
        assert!(matches!(DeliveryEvent::parse(""), Err(EventError::Version(_))));
        assert!(matches!(DeliveryEvent::parse("version=1\nuser=a\n"), Err(EventError::Missing("mailbox"))));
        assert!(matches!(
            DeliveryEvent::parse("version=1\nuser=a\nmailbox=I\nuidvalidity=x\nuid=1\nmessage_id=m\ntime=1\n"),
            Err(EventError::Invalid("uidvalidity", _))
        ));
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("a%zz"), "a%zz");
    }
}
