//! Acceptance only for queued mail (decisions.md 18). Postfix does not tell a milter whether
//! it finally queued a message after the milter said yes (a later milter, a full disk or
//! `message_size_limit` on the rewritten message can still refuse it). With
//! `[postfix] maillog` set, the access point holds the acceptance (and the presa in carico
//! it emits for its own recipients) in the outbox under the Postfix queue id; this task
//! reads the mail log and
//! - releases them when qmgr logs `<queue id>: from=<…>` (the message is in the queue);
//! - cancels them, and records why, when cleanup logs that it refused that queue id, or
//!   when the id never shows up within `confirm_timeout`.
//!
//! The log is read from its start when pecora starts (so lines written while it was down
//! count), then followed: read again as soon as it grows (an inotify watch on the file, and
//! on its directory for a rotation), and every few seconds as a backstop; a rotated or
//! truncated file is read again from its start.
//!
//! The same reading keeps the [`InjectionLog`](crate::runtime::injection_log::InjectionLog):
//! cleanup's `<queue id>: message-id=<…>` for the messages pecora generated, and whether qmgr then queued that queue id. Before the
//! outbox submits again a message an earlier attempt may have handed over (a crash right
//! after Postfix's 250), it asks there, and marks the message sent when Postfix already
//! queued it, so the receipt goes out once.
//!
//! Only this Postfix instance speaks here: a line counts when its tag is exactly
//! `<syslog_name>/cleanup[<pid>]` or `<syslog_name>/qmgr[<pid>]`, with the instance's
//! `syslog_name` (`[postfix] syslog_name`, else `postconf -xh syslog_name`). Lines of
//! another instance or program sharing the log, or without a pid, are ignored, so they
//! cannot release or cancel a held receipt.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};


use crate::adapters::watch::{Kept, Watch, Watcher};
use crate::config::valid_syslog_name;
use crate::runtime::injection_log::LogVerdict;
use crate::runtime::state::Shared;
use crate::store::model::{EventType, NewEvent, Record, StateUpdate};

fn queue_id_token(s: &str) -> Option<&str> {
    let (id, _) = s.split_once(':')?;
    (id.len() >= 6 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

/// The `syslog_name` of the Postfix instance: the configured one, else what
/// `postconf -xh syslog_name` says (its default configuration directory, or `MAIL_CONFIG`),
/// else Postfix's default `postfix`.
pub fn syslog_name(configured: Option<&str>) -> String {
    if let Some(n) = configured {
        return n.to_string();
    }
    match crate::adapters::postfix::run_postconf(None, &["-xh".to_string(), "syslog_name".to_string()]) {
        Ok(out) if valid_syslog_name(out.trim()) => out.trim().to_string(),
        Ok(out) => {
            tracing::warn!("postconf gives an unusable syslog_name {:?}; reading the mail log as Postfix's default \"postfix\" (set [postfix] syslog_name)", out.trim());
            "postfix".into()
        }
        Err(e) => {
            tracing::warn!("{e}; reading the mail log as Postfix's default syslog_name \"postfix\" (set [postfix] syslog_name)");
            "postfix".into()
        }
    }
}

/// The daemon and the text of a line of this Postfix instance: `None` unless its tag is
/// exactly `<syslog_name>/<daemon>[<pid>]`, after the timestamp and host name.
fn tagged<'a>(line: &'a str, syslog_name: &str) -> Option<(&'a str, &'a str)> {
    // The tag is the last word before the first "]: ", and never starts the line.
    let (head, rest) = line.split_once("]: ")?;
    let (before, tag) = head.rsplit_once(' ')?;
    if before.trim().is_empty() {
        return None;
    }
    let (name, pid) = tag.split_once('[')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let daemon = name.strip_prefix(syslog_name)?.strip_prefix('/')?;
    Some((daemon, rest))
}

/// Reads one log line (syslog or maillog_file format) of the Postfix instance whose
/// `syslog_name` is `syslog_name`: `None` unless its tag is exactly
/// `<syslog_name>/cleanup[<pid>]` or `<syslog_name>/qmgr[<pid>]`, after the timestamp and
/// host name.
pub fn parse_line(line: &str, syslog_name: &str) -> Option<(String, LogVerdict)> {
    let (daemon, rest) = tagged(line, syslog_name)?;
    match daemon {
        "qmgr" => {
            let id = queue_id_token(rest)?;
            rest[id.len() + 1..].trim_start().starts_with("from=<").then(|| (id.to_string(), LogVerdict::Queued))
        }
        "cleanup" => {
            let body = rest.strip_prefix("warning: ").unwrap_or(rest);
            let id = queue_id_token(body)?;
            let what = body[id.len() + 1..].trim();
            // header/body_checks (`reject:`, `discard:`), a milter's own refusal
            // (`milter-reject:`, `milter-discard:`) and milter_header_checks on the headers a
            // milter wrote (`milter-header-reject:`, `milter-header-discard:`).
            let refused = ["reject:", "discard:", "milter-reject:", "milter-discard:", "milter-header-reject:", "milter-header-discard:"]
                .iter()
                .any(|p| what.starts_with(p))
                || what.contains("queue file size limit exceeded")
                || what.contains("queue file write error");
            refused.then(|| (id.to_string(), LogVerdict::Refused(what.chars().take(300).collect())))
        }
        _ => None,
    }
}

/// Reads cleanup's `<queue id>: message-id=<id>` line of this Postfix instance: the queue
/// id and the Message-ID (without angle brackets). cleanup writes it while it receives the
/// message, before Postfix answers the final dot: the message is in the queue only when
/// qmgr then logs the same queue id ([`parse_line`]).
pub fn parse_message_id(line: &str, syslog_name: &str) -> Option<(String, String)> {
    let (daemon, rest) = tagged(line, syslog_name)?;
    if daemon != "cleanup" {
        return None;
    }
    let id = queue_id_token(rest)?;
    let value = rest[id.len() + 1..].trim().strip_prefix("message-id=")?;
    let msgid = value.trim().trim_start_matches('<').trim_end_matches('>');
    (!msgid.is_empty() && msgid.len() <= 998 && !msgid.contains(['<', '>', ' '])).then(|| (id.to_string(), msgid.to_string()))
}

/// One open log file, read line by line.
struct Tail {
    reader: BufReader<std::fs::File>,
    offset: u64,
}

impl Tail {
    fn open(path: &Path) -> std::io::Result<(Tail, u64)> {
        let f = std::fs::File::open(path)?;
        let inode = f.metadata()?.ino();
        Ok((Tail { reader: BufReader::new(f), offset: 0 }, inode))
    }

    /// Complete lines from the offset on, at most `budget` bytes; the bytes read.
    fn read(&mut self, budget: u64, out: &mut Vec<String>) -> std::io::Result<u64> {
        let mut read = 0u64;
        let mut line = String::new();
        while read < budget {
            line.clear();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A line still being written: read it again next time.
                self.reader.seek(SeekFrom::Start(self.offset))?;
                break;
            }
            self.offset += n as u64;
            read += n as u64;
            out.push(line.trim_end().to_string());
        }
        Ok(read)
    }
}

/// How long the file rotated away from the path is still read: its writer goes on
/// appending until it reopens the path (postlogd after `postfix reload`, which logrotate's
/// postrotate runs).
const ROTATED_GRACE: Duration = Duration::from_secs(120);

/// A followed log file.
struct Follower {
    path: PathBuf,
    current: Tail,
    inode: u64,
    /// The file that was at the path before it was rotated, and when that was seen.
    previous: Option<(Tail, Instant)>,
}

impl Follower {
    fn open(path: &Path) -> std::io::Result<Follower> {
        let (current, inode) = Tail::open(path)?;
        Ok(Follower { path: path.to_path_buf(), current, inode, previous: None })
    }

    /// New complete lines since the last call (at most `budget` bytes at a time). A
    /// rotated file (a new one at the path) is read to its end first, and for
    /// [`ROTATED_GRACE`] after, so no line its writer adds before reopening is lost; a
    /// truncated one is read again from its start.
    fn read(&mut self, budget: u64, out: &mut Vec<String>) -> std::io::Result<bool> {
        let mut budget = budget;
        if let Some((old, since)) = self.previous.as_mut() {
            budget = budget.saturating_sub(old.read(budget, out)?);
            if since.elapsed() > ROTATED_GRACE {
                self.previous = None;
            }
        }
        if let Ok(m) = std::fs::metadata(&self.path) {
            if m.ino() != self.inode {
                budget = budget.saturating_sub(self.current.read(budget, out)?);
                let (new, inode) = Tail::open(&self.path)?;
                let old = std::mem::replace(&mut self.current, new);
                self.inode = inode;
                self.previous = Some((old, Instant::now()));
            } else if m.len() < self.current.offset {
                self.current = Tail::open(&self.path)?.0;
            }
        }
        let read = self.current.read(budget, out)?;
        // Short of the budget: the end of the file was reached.
        Ok(read < budget)
    }
}

/// Releases, cancels or keeps what is held, from what the log said.
async fn settle(shared: &Shared, seen: &HashMap<String, (LogVerdict, Instant)>, timeout: chrono::Duration) {
    let held = match shared.store.backend().outbox_held_queue_ids(shared.store.host()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("cannot read the held receipts: {e}");
            return;
        }
    };
    let now = chrono::Utc::now();
    let mut queued = Vec::new();
    for (qid, created) in held {
        let verdict = match seen.get(&qid) {
            Some((v, _)) => Some(v.clone()),
            None => crate::store::model::parse_ts(&created)
                .filter(|t| now - *t > timeout)
                .map(|_| LogVerdict::Refused("the queue id never appeared in the mail log".into())),
        };
        match verdict {
            None => {}
            Some(LogVerdict::Queued) => queued.push(qid),
            Some(LogVerdict::Refused(why)) => cancel(shared, &qid, &why).await,
        }
    }
    if queued.is_empty() {
        return;
    }
    // Every queue id this read confirmed, released in one transaction.
    match shared.store.backend().outbox_release_held_many(shared.store.host(), &queued, now).await {
        Ok(released) => {
            shared.store.outbox_wake();
            for (qid, n) in queued.iter().zip(released) {
                tracing::info!(queue_id = %qid, released = n, "Postfix queued the message: receipts released");
            }
        }
        Err(e) => tracing::warn!(queue_ids = ?queued, "cannot release the held receipts: {e}"),
    }
}

/// Postfix did not queue the message: no acceptance goes out, and the registry says why;
/// the recipients are marked failed so no time-limit notice follows.
async fn cancel(shared: &Shared, qid: &str, why: &str) {
    let rows = match shared.store.events_of_queue_id(qid).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(queue_id = %qid, "cannot read the registry: {e}");
            return;
        }
    };
    let engine = shared.snapshot().engine.clone();
    if let Some(acc) = rows.iter().find(|r| r.kind() == Some(EventType::Acceptance) && r.queue_id.as_deref() == Some(qid)) {
        let mut event = NewEvent::new(engine.now(), EventType::NonAcceptance);
        event.pec_id = acc.pec_id.clone();
        event.client_msgid = acc.client_msgid.clone();
        event.sender = acc.sender.clone();
        event.recipients = acc.recipient_list();
        event.subject = acc.subject.clone();
        event.provider = acc.provider.clone();
        event.queue_id = Some(qid.to_string());
        event.details = serde_json::json!({
            "reason": format!("Postfix did not queue the accepted message: {why}"),
            "acceptance_seq": acc.seq,
            "receipts": "cancelled",
        });
        let pec_id = acc.pec_id.clone().unwrap_or_default();
        let state = acc
            .recipient_list()
            .into_iter()
            .map(|r| StateUpdate::Failed { pec_id: pec_id.clone(), recipient: r, at: chrono::Utc::now(), reason: "not queued by Postfix".into() })
            .collect();
        let record = Record { event, outbox: Vec::new(), state, idempotency_key: Some(format!("notqueued:{qid}")) };
        if let Err(e) = shared.store.record(&record, chrono::Utc::now()).await {
            tracing::warn!(queue_id = %qid, "cannot record the cancellation: {e}");
            return;
        }
    }
    match shared.store.backend().outbox_cancel_held(shared.store.host(), qid, why).await {
        Ok(n) => tracing::warn!(queue_id = %qid, cancelled = n, reason = %why, "Postfix did not queue the accepted message: receipts cancelled"),
        Err(e) => tracing::warn!(queue_id = %qid, "cannot cancel the held receipts: {e}"),
    }
}

/// The backstop: the log is read this often even when inotify says nothing.
const BACKSTOP: Duration = Duration::from_secs(5);
/// How often the log is read where inotify cannot watch it.
const POLL: Duration = Duration::from_millis(300);
/// The shortest time between two passes over the log (each asks the registry for the held
/// receipts): a busy log, which grows all the time, is read in batches.
const MIN_GAP: Duration = Duration::from_millis(50);
/// How often what was remembered of old lines is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What wakes the follower when the mail log grows: an inotify watch on the file (and on
/// the file a rotation moved away, while its writer may still append), and one on its
/// directory for a new file at the path.
struct LogWatch {
    path: PathBuf,
    name: OsString,
    watch: Watch,
    dir: inotify::WatchDescriptor,
}

impl LogWatch {
    fn new(path: &Path) -> std::io::Result<LogWatch> {
        use inotify::WatchMask;
        let name = path.file_name().ok_or_else(|| std::io::Error::other("the mail log path names no file"))?.to_os_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut watch = Watch::new()?;
        let dir = watch.add(
            &dir,
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF,
        )?;
        let mut w = LogWatch { path: path.to_path_buf(), name, watch, dir };
        w.watch_file();
        Ok(w)
    }

    /// Watches the file now at the path (after a rotation, a new one; the old file's watch
    /// lasts as long as that file). None there yet: the directory's watch says when.
    fn watch_file(&mut self) {
        let _ = self.watch.add(&self.path, inotify::WatchMask::MODIFY);
    }

}

impl Watcher for LogWatch {
    /// Waits until the log grows or a file comes or goes at its path, taking every event
    /// already queued. `Ok(false)`: the directory's watch is gone; make a new one.
    async fn wait(&mut self) -> std::io::Result<bool> {
        use inotify::EventMask;
        loop {
            let (mut got, mut renew, mut alive) = (false, false, true);
            let (dir, name) = (&self.dir, &self.name);
            self.watch
                .read_batch(|e| {
                    if e.wd == *dir {
                        if e.mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                            alive = false;
                        } else if e.name == Some(name.as_os_str()) {
                            got = true;
                            renew = true;
                        }
                    } else if e.mask.contains(EventMask::MODIFY) {
                        got = true;
                    }
                })
                .await?;
            if renew {
                self.watch_file();
            }
            if got || !alive {
                return Ok(alive);
            }
        }
    }
}

/// Follows the mail log until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let log = shared.injection_log.clone();
    let mut follower: Option<Follower> = None;
    let mut watch: Kept<LogWatch> = Kept::new("the mail log");
    let mut seen: HashMap<String, (LogVerdict, Instant)> = HashMap::new();
    let mut warned = false;
    let mut warned_off = false;
    // postconf is asked once; a configured name (reloadable) wins.
    let mut detected: Option<String> = None;
    let mut last_pruned = Instant::now();
    loop {
        if *stop.borrow() {
            log.set_following(false);
            return;
        }
        let runtime = shared.snapshot();
        let pc = runtime.config.postfix.clone();
        let domain = runtime.engine.provider.domain.clone();
        let name = match (&pc.syslog_name, &detected) {
            (Some(n), _) => n.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) if pc.maillog.is_some() => {
                let d = tokio::task::block_in_place(|| syslog_name(None));
                tracing::info!(syslog_name = %d, "confirming queued messages from this Postfix instance's lines only");
                detected = Some(d.clone());
                d
            }
            (None, None) => String::new(),
        };
        if pc.maillog.is_none() && !warned_off {
            tracing::error!("[postfix] maillog is not set: the acceptance hold is off, so a message Postfix refuses after the milter still gets a ricevuta di accettazione (decisions.md 18); run `pecora setup postfix --apply`");
            warned_off = true;
        }
        if pc.maillog.is_some() {
            warned_off = false;
        }
        // Read up to the end of the log in chunks, without waiting in between.
        let mut at_end = true;
        match &pc.maillog {
            None => {
                follower = None;
                watch.clear();
                log.set_following(false);
            }
            Some(path) => {
                // Watch before reading, so a line written in between still wakes us.
                watch.renew(
                    |w| &w.path == path,
                    || LogWatch::new(path),
                    |e| tracing::warn!(maillog = %path.display(), "cannot watch the mail log (inotify): reading it every {POLL:?} instead: {e}"),
                );
                if follower.as_ref().is_none_or(|f| &f.path != path) {
                    match Follower::open(path) {
                        Ok(f) => {
                            follower = Some(f);
                            warned = false;
                        }
                        Err(e) if !warned => {
                            tracing::error!(maillog = %path.display(), "cannot read the Postfix mail log: {e}; acceptance receipts stay held");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                }
                if let Some(f) = follower.as_mut() {
                    log.set_following(true);
                    let ticket = log.asked.load(Ordering::SeqCst);
                    let mut lines = Vec::new();
                    let result = tokio::task::block_in_place(|| f.read(64 << 20, &mut lines));
                    match result {
                        Ok(end) => at_end = end,
                        Err(e) => {
                            tracing::warn!(maillog = %path.display(), "reading the mail log: {e}");
                            follower = None;
                        }
                    }
                    let now = Instant::now();
                    for l in &lines {
                        if let Some((qid, v)) = parse_line(l, &name) {
                            log.note_verdict(&qid, &v);
                            // A refusal is final; a later "queued" for the same id cannot happen.
                            seen.entry(qid).and_modify(|e| if e.0 == LogVerdict::Queued { *e = (v.clone(), now) }).or_insert((v, now));
                        } else if let Some((qid, message_id)) = parse_message_id(l, &name) {
                            if crate::pec::ident::is_own_identifier(&message_id, &domain) {
                                log.note_message_id(qid, message_id, now);
                            }
                        }
                    }
                    if now.duration_since(last_pruned) > PRUNE_EVERY {
                        seen.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(3600));
                        log.forget_old(now);
                        last_pruned = now;
                    }
                    if at_end {
                        log.answer(ticket);
                    }
                    settle(&shared, &seen, pc.confirm_timeout.chrono()).await;
                }
                if follower.is_none() {
                    log.set_following(false);
                }
            }
        }
        if !at_end {
            continue;
        }
        let wait = if watch.is_watching() { BACKSTOP } else { POLL };
        let pass_ended = tokio::time::Instant::now();
        tokio::select! {
            () = watch.wait() => {}
            _ = log.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        // A busy log grows all the time: at most one pass every MIN_GAP.
        tokio::time::sleep_until(pass_ended + MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postfix_lines() {
        let p = |l: &str| parse_line(l, "postfix");
        assert_eq!(
            p("Dec 01 22:29:14 mx postfix/qmgr[7275]: 4jfFtL1zw0z1SZCR: from=<posta-certificata@pec.alpha.test>, size=6462, nrcpt=1 (queue active)"),
            Some(("4jfFtL1zw0z1SZCR".into(), LogVerdict::Queued))
        );
        assert_eq!(
            parse_line("Dec  1 22:29:14 mx postfix-alpha/qmgr[7275]: 3F2A1B: from=<a@b>, size=1, nrcpt=1 (queue active)", "postfix-alpha"),
            Some(("3F2A1B".into(), LogVerdict::Queued))
        );
        assert!(matches!(
            p("Dec 01 22:29:14 mx postfix/cleanup[7585]: warning: 4jfFtL0vP4z1SZCR: queue file size limit exceeded"),
            Some((id, LogVerdict::Refused(_))) if id == "4jfFtL0vP4z1SZCR"
        ));
        assert!(matches!(
            p("2026-12-01T22:29:14.1+01:00 mx postfix/cleanup[1]: 4jfFtL0vP4z1: milter-reject: END-OF-MESSAGE from x: 5.7.1 no"),
            Some((_, LogVerdict::Refused(_)))
        ));
        // milter_header_checks on the headers pecora's milter wrote (Postfix 3.7's words).
        assert!(matches!(
            p("Dec 05 17:28:47 mx postfix/cleanup[19129]: 4jhb1q0YZmz1V83h: milter-header-reject: header Subject: POSTA CERTIFICATA: x from localhost[127.0.0.1]; from=<a@b> to=<c@d> proto=ESMTP helo=<vm>: 5.7.1 refused"),
            Some((id, LogVerdict::Refused(_))) if id == "4jhb1q0YZmz1V83h"
        ));
        // A header_checks DISCARD: the client heard 250, and nothing was queued.
        assert!(matches!(
            p("Dec 05 17:28:47 mx postfix/cleanup[1]: 4jhb1q0YZmz1V83h: discard: header Subject: x from localhost[127.0.0.1]; from=<a@b> to=<c@d>: gone"),
            Some((_, LogVerdict::Refused(_)))
        ));
        // Not about queueing.
        assert_eq!(p("Dec 01 22:29:14 mx postfix/qmgr[7275]: 4jfFtL1zw0z1SZCR: removed"), None);
        assert_eq!(p("Dec 01 22:29:14 mx postfix/cleanup[7585]: 4jfFtL0vP4z1SZCR: message-id=<x@y>"), None);
        assert_eq!(p("Dec 01 22:29:14 mx postfix/smtpd[1]: connect from localhost[127.0.0.1]"), None);
        assert_eq!(p("garbage"), None);
        assert_eq!(p("x]: : from=<"), None);
    }

    /// Only this instance's cleanup and qmgr, with a pid, speak for Postfix: lines that
    /// name a queue id in the same words but come from another instance, another program or
    /// carry no pid are ignored.
    #[test]
    fn ignores_lines_not_written_by_this_instance() {
        let queued = "4jfFtL1zw0z1SZCR: from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)";
        let refused = "4jfFtL1zw0z1SZCR: milter-reject: END-OF-MESSAGE from x: 5.7.1 no";
        for (name, tail) in [("qmgr", queued), ("cleanup", refused)] {
            // The genuine line, for contrast.
            assert!(parse_line(&format!("Dec  1 22:29:14 mx postfix-alpha/{name}[7275]: {tail}"), "postfix-alpha").is_some());
            for line in [
                // Another instance's syslog name (or Postfix's default).
                format!("Dec  1 22:29:14 mx postfix-beta/{name}[7275]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix/{name}[7275]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alphabet/{name}[7275]: {tail}"),
                format!("Dec  1 22:29:14 mx xpostfix-alpha/{name}[7275]: {tail}"),
                // A listener's syslog_name override: an smtpd, not this instance's daemon.
                format!("Dec  1 22:29:14 mx postfix-alpha/pec-mx/{name}[7275]: {tail}"),
                // No pid, an empty one, or not a number.
                format!("Dec  1 22:29:14 mx postfix-alpha/{name}: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alpha/{name}[]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alpha/{name}[12x]: {tail}"),
                // Another program, whose text imitates Postfix.
                format!("Dec  1 22:29:14 mx logger[1]: postfix-alpha/{name}[7275]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alpha/smtpd[1]: postfix-alpha/{name}[7275]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alpha/postlog[1]: {tail}"),
                format!("Dec  1 22:29:14 mx postfix-alpha/pickup[7275]: {tail}"),
                // No timestamp and host before the tag.
                format!("postfix-alpha/{name}[7275]: {tail}"),
            ] {
                assert_eq!(parse_line(&line, "postfix-alpha"), None, "{line}");
            }
        }
        assert!(valid_syslog_name("postfix-alpha") && valid_syslog_name("postfix/a.b_c"));
        assert!(!valid_syslog_name("") && !valid_syslog_name("post fix") && !valid_syslog_name("p[1]"));
        assert_eq!(syslog_name(Some("postfix-alpha")), "postfix-alpha");
    }

    #[test]
    fn reads_message_ids() {
        let p = |l: &str| parse_message_id(l, "postfix");
        assert_eq!(
            p("Dec 05 17:28:47.123456 mx postfix/cleanup[7585]: 4jfFtL0vP4z1SZCR: message-id=<pecora.1.h.ab@pec.alpha.test>"),
            Some(("4jfFtL0vP4z1SZCR".into(), "pecora.1.h.ab@pec.alpha.test".into()))
        );
        // Only this instance's cleanup, with a pid.
        assert_eq!(p("Dec 05 17:28:47 mx postfix-beta/cleanup[1]: 4jfFtL0vP4z1: message-id=<x@y>"), None);
        assert_eq!(p("Dec 05 17:28:47 mx postfix/smtpd[1]: 4jfFtL0vP4z1: message-id=<x@y>"), None);
        assert_eq!(p("Dec 05 17:28:47 mx postfix/cleanup: 4jfFtL0vP4z1: message-id=<x@y>"), None);
        assert_eq!(p("Dec 05 17:28:47 mx postfix/cleanup[1]: 4jfFtL0vP4z1: message-id=<>"), None);
        assert_eq!(p("Dec 05 17:28:47 mx postfix/cleanup[1]: 4jfFtL0vP4z1: resent-message-id=<x@y>"), None);
    }

    async fn quiet(w: &mut LogWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(300), w.wait()).await.is_err()
    }

    async fn woke(w: &mut LogWatch) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(5), w.wait()).await, Ok(Ok(true)))
    }

    /// The watch wakes the follower when the log grows, when a rotation puts a new file at
    /// its path, when that new file grows, and when the rotated file still grows.
    #[tokio::test]
    async fn the_watch_wakes_on_growth_and_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        // No file yet: its creation wakes.
        let mut w = LogWatch::new(&p).unwrap();
        assert!(quiet(&mut w).await, "nothing happened yet");
        std::fs::write(&p, "one\n").unwrap();
        assert!(woke(&mut w).await, "created");
        let mut old = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        old.write_all(b"two\n").unwrap();
        assert!(woke(&mut w).await, "grown");
        // Another file in the directory changes nothing.
        std::fs::write(dir.path().join("other.log"), "x\n").unwrap();
        assert!(quiet(&mut w).await, "another file");
        std::fs::rename(&p, dir.path().join("maillog.1")).unwrap();
        assert!(woke(&mut w).await, "rotated away");
        std::fs::write(&p, "fresh\n").unwrap();
        assert!(woke(&mut w).await, "a new file at the path");
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"new\n").unwrap();
        assert!(woke(&mut w).await, "the new file grown");
        old.write_all(b"late\n").unwrap();
        assert!(woke(&mut w).await, "the rotated file grown");
    }

    #[test]
    fn follows_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        let mut f = Follower::open(&p).unwrap();
        let mut out = Vec::new();
        f.read(1 << 20, &mut out).unwrap();
        assert_eq!(out, ["one", "two"]);
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"ial\nthree\n").unwrap();
        out.clear();
        f.read(1 << 20, &mut out).unwrap();
        assert_eq!(out, ["partial", "three"]);
        // Rotation: a new file at the same path. What was written to the old file and not
        // read yet comes first, and what its writer adds until it reopens the path too.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"unread\n").unwrap();
        let mut writer = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::rename(&p, dir.path().join("maillog.1")).unwrap();
        std::fs::write(&p, "fresh\n").unwrap();
        out.clear();
        f.read(1 << 20, &mut out).unwrap();
        assert_eq!(out, ["unread", "fresh"]);
        writer.write_all(b"late\n").unwrap();
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"new\n").unwrap();
        out.clear();
        f.read(1 << 20, &mut out).unwrap();
        assert_eq!(out, ["late", "new"]);
        // Truncated in place: read again from its start.
        std::fs::write(&p, "x\n").unwrap();
        out.clear();
        f.read(1 << 20, &mut out).unwrap();
        assert_eq!(out, ["x"]);
    }
}
