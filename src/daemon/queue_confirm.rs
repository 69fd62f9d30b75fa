//! Acceptance only for queued mail (decisions.md 18). Postfix does not tell a milter whether
//! it finally queued a message after the milter said yes (a later milter, a full disk or
//! `message_size_limit` on the rewritten message can still refuse it). With
//! `[postfix] maillog` set, the access point holds the acceptance (and the presa in carico
//! it emits for its own recipients) in the outbox under the Postfix queue id; this task
//! reads the mail log and
//! - releases them when qmgr logs `<queue id>: from=<…>` (the message is in the queue);
//! - releases them when cleanup logs that it put the message on hold (a `HOLD` action) and
//!   `postqueue -j` then lists it: qmgr never logs a message in the hold queue, and the
//!   hold line comes before cleanup has committed the message;
//! - cancels them, and records why, when cleanup logs that it refused that queue id, or
//!   when the id never shows up within `confirm_timeout` and `postqueue -j` does not list
//!   it either (one it lists was queued, and only its line is missing: released).
//!
//! The log is read from its start when pecora starts (so lines written while it was down
//! count), after the file its last rotation left (`<log>.1` or `<log>-<date>`, when written
//! within `confirm_timeout`: a rotation while pecora was down loses no line), then
//! followed: read again as soon as it grows (an inotify watch on the file, and
//! on its directory for a rotation), and every few seconds as a backstop; a rotated or
//! truncated file is read again from its start (after a `copytruncate`, once the rest of
//! the copy is read: the lines written since the last read are there only).
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
pub fn syslog_name(configured: Option<&str>, config_dir: Option<&Path>) -> String {
    if let Some(n) = configured {
        return n.to_string();
    }
    match crate::adapters::postfix::run_postconf(config_dir, &["-xh".to_string(), "syslog_name".to_string()]) {
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
            if refused {
                return Some((id.to_string(), LogVerdict::Refused(what.chars().take(300).collect())));
            }
            // HOLD of header_checks, a milter's quarantine, HOLD of milter_header_checks.
            ["hold:", "milter-hold:", "milter-header-hold:"]
                .iter()
                .any(|p| what.starts_with(p))
                .then(|| (id.to_string(), LogVerdict::Held))
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
    /// The last complete line read, as it is in the file (its end is at `offset`): what a
    /// copy of this file must hold at the same place ([`Tail::copy_of`]).
    last: Vec<u8>,
}

impl Tail {
    fn open(path: &Path) -> std::io::Result<(Tail, u64)> {
        let f = std::fs::File::open(path)?;
        let inode = f.metadata()?.ino();
        Ok((Tail { reader: BufReader::new(f), offset: 0, last: Vec::new() }, inode))
    }

    /// Whether `f` holds the last line read where it was read, ending at the offset.
    fn holds_last_line(&self, f: &std::fs::File) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(start) = self.offset.checked_sub(self.last.len() as u64) else { return false };
        let mut there = vec![0u8; self.last.len()];
        f.read_exact_at(&mut there, start).is_ok() && there == self.last
    }

    /// Whether the file still holds the last line read where it was read: false once it was
    /// truncated in place, even when it has since grown past the offset again.
    fn intact(&self) -> bool {
        self.holds_last_line(self.reader.get_ref())
    }

    /// `path` opened where this file was read up to, when `path` is a copy of it: the last
    /// line read ends at the same offset there. logrotate's `copytruncate` copies the log
    /// and then truncates it in place, so the lines written after this file was last read
    /// are in the copy only.
    fn copy_of(&self, path: &Path) -> Option<Tail> {
        if self.last.is_empty() {
            return None;
        }
        let mut f = std::fs::File::open(path).ok()?;
        if !self.holds_last_line(&f) {
            return None;
        }
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        Some(Tail { reader: BufReader::new(f), offset: self.offset, last: self.last.clone() })
    }

    /// Complete lines from the offset on, at most `budget` bytes; the bytes read. A line
    /// that is not UTF-8 (another program's, in a shared syslog file) is read lossily: it
    /// cannot stop the reading of the lines after it.
    fn read(&mut self, budget: u64, out: &mut Vec<String>) -> std::io::Result<u64> {
        let mut read = 0u64;
        let mut line = Vec::new();
        while read < budget {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A line still being written: read it again next time.
                self.reader.seek(SeekFrom::Start(self.offset))?;
                break;
            }
            self.offset += n as u64;
            read += n as u64;
            out.push(String::from_utf8_lossy(&line).trim_end().to_string());
            std::mem::swap(&mut self.last, &mut line);
        }
        Ok(read)
    }
}

/// The file a rotation most recently moved away from `path`, when it was modified at or
/// after `since`: `<name>.1` (logrotate's default; `delaycompress` leaves it uncompressed,
/// as the rule `pecora setup postfix` writes and Debian's rsyslog rule do) or
/// `<name>-<digits>` (logrotate's `dateext`), the newest of them. A compressed or otherwise
/// named file is not read.
fn rotated_sibling(path: &Path, since: std::time::SystemTime) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let rotated = |n: &str| {
        n.strip_prefix(name).is_some_and(|rest| {
            rest == ".1" || rest.strip_prefix('-').is_some_and(|d| d.len() >= 8 && d.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(rotated))
        .filter_map(|e| {
            // Not through a link: only a regular file the rotation left.
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            let modified = m.modified().ok()?;
            (m.is_file() && modified >= since).then(|| (modified, e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

/// How recent a copy of the log must be to be taken for the one `copytruncate` made.
const COPY_RECENT: Duration = Duration::from_secs(600);

/// How long the file rotated away from the path is still read: its writer goes on
/// appending until it reopens the path (postlogd after `postfix reload`, which logrotate's
/// postrotate runs).
const ROTATED_GRACE: Duration = Duration::from_secs(120);

/// A followed log file.
struct Follower {
    path: PathBuf,
    current: Tail,
    inode: u64,
    /// The files that were at the path before it was rotated (or the copy a
    /// `copytruncate` made), oldest first, each with when that was seen: read, in that
    /// order, before the current one.
    previous: std::collections::VecDeque<(Tail, Instant)>,
}

impl Follower {
    /// Follows `path` from its start, after the file a rotation last moved away from it when
    /// that one was written to within `lookback` ([`rotated_sibling`]): lines logged just
    /// before a rotation that happened while pecora was down still count.
    fn open(path: &Path, lookback: Duration) -> std::io::Result<Follower> {
        let (current, inode) = Tail::open(path)?;
        let since = std::time::SystemTime::now().checked_sub(lookback).unwrap_or(std::time::UNIX_EPOCH);
        let previous = rotated_sibling(path, since).and_then(|p| match Tail::open(&p) {
            Ok((t, _)) => {
                tracing::info!(maillog = %p.display(), "reading the mail log's last rotated file first");
                Some((t, Instant::now()))
            }
            Err(e) => {
                tracing::warn!(maillog = %p.display(), "cannot read the mail log's last rotated file: {e}; lines logged just before the rotation are missed");
                None
            }
        });
        Ok(Follower { path: path.to_path_buf(), current, inode, previous: previous.into_iter().collect() })
    }

    /// New complete lines since the last call (at most `budget` bytes at a time). A
    /// rotated file (a new one at the path) is read to its end first, and for
    /// [`ROTATED_GRACE`] after, so no line its writer adds before reopening is lost; a
    /// truncated one is read again from its start.
    fn read(&mut self, budget: u64, out: &mut Vec<String>) -> std::io::Result<bool> {
        let mut budget = budget;
        let mut i = 0;
        while i < self.previous.len() && budget > 0 {
            let (old, since) = &mut self.previous[i];
            let given = budget;
            let read = old.read(given, out)?;
            budget = given.saturating_sub(read);
            if read >= given {
                // Not at its end yet: the files after it wait, so the lines keep their order.
                break;
            }
            // Dropped once read to its end after the grace, never with lines still unread.
            if since.elapsed() > ROTATED_GRACE {
                self.previous.remove(i);
            } else {
                i += 1;
            }
        }
        if let Ok(m) = std::fs::metadata(&self.path) {
            if m.ino() != self.inode {
                budget = budget.saturating_sub(self.current.read(budget, out)?);
                let (new, inode) = Tail::open(&self.path)?;
                let old = std::mem::replace(&mut self.current, new);
                self.inode = inode;
                self.previous.push_back((old, Instant::now()));
            } else if m.len() < self.current.offset || !self.current.intact() {
                // Truncated in place. After logrotate's copytruncate, the lines appended
                // since the last read are in the copy it just made: read them there first.
                let copy = rotated_sibling(&self.path, std::time::SystemTime::now() - COPY_RECENT)
                    .and_then(|p| self.current.copy_of(&p).map(|t| (p, t)));
                self.current = Tail::open(&self.path)?.0;
                if let Some((p, mut copy)) = copy {
                    tracing::info!(maillog = %p.display(), "the mail log was truncated in place (copytruncate): reading the rest of the copy first");
                    budget = budget.saturating_sub(copy.read(budget, out)?);
                    self.previous.push_back((copy, Instant::now()));
                }
            }
        }
        let read = self.current.read(budget, out)?;
        // Short of the budget: the end of the file was reached.
        Ok(read < budget)
    }
}

/// Releases, cancels or keeps what is held, from what the log said.
async fn settle(
    shared: &Shared,
    seen: &HashMap<String, (LogVerdict, Instant)>,
    timeout: chrono::Duration,
    config_dir: Option<&Path>,
    postqueue: &mut PostqueueGate,
) {
    let held = match shared.store.backend().outbox_held_queue_ids(shared.store.host()).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("cannot read the held receipts: {e}");
            return;
        }
    };
    let now = chrono::Utc::now();
    let mut queued = Vec::new();
    let mut on_hold = Vec::new();
    // Past confirm_timeout with no line about them.
    let mut unnamed = Vec::new();
    for (qid, created) in held {
        match seen.get(&qid).map(|(v, _)| v.clone()) {
            None => {
                if crate::store::model::parse_ts(&created).is_some_and(|t| now - t > timeout) {
                    unnamed.push(qid);
                }
            }
            Some(LogVerdict::Queued) => queued.push(qid),
            Some(LogVerdict::Refused(why)) => cancel(shared, &qid, &why).await,
            Some(LogVerdict::Held) => on_hold.push(qid),
        }
    }
    // What the log confirmed goes out first, whatever `postqueue -j` does below.
    release(shared, &queued, now).await;
    if (on_hold.is_empty() && unnamed.is_empty()) || !postqueue.due() {
        return;
    }
    let listed = list_queue(config_dir.map(Path::to_path_buf)).await;
    if listed.is_err() {
        postqueue.postpone();
    }
    let mut queued = committed_on_hold(on_hold, listed.as_ref());
    // Before a receipt is cancelled as never queued, Postfix's queue has its say: a message
    // it still lists was queued, and only its log line went missing (lines a syslog daemon
    // dropped, a log pecora could not read for a while).
    for qid in unnamed {
        match listed.as_ref().ok().and_then(|l| l.iter().find(|(_, id)| *id == qid)) {
            Some((queue, _)) => {
                tracing::warn!(queue_id = %qid, queue = %queue,
                    "the mail log never named this queue id, but Postfix's queue lists the message: receipts released (check [postfix] maillog: lines are missing from it)");
                queued.push(qid);
            }
            None => {
                let why = match &listed {
                    Ok(_) => "the queue id never appeared in the mail log, and Postfix's queue does not list it".to_string(),
                    Err(e) => format!("the queue id never appeared in the mail log (Postfix's queue could not be listed: {e})"),
                };
                cancel(shared, &qid, &why).await;
            }
        }
    }
    release(shared, &queued, now).await;
}

/// Releases the receipts held for `queued`, in one transaction, and wakes the outbox.
async fn release(shared: &Shared, queued: &[String], now: chrono::DateTime<chrono::Utc>) {
    if queued.is_empty() {
        return;
    }
    match shared.store.backend().outbox_release_held_many(shared.store.host(), queued, now).await {
        Ok(released) => {
            shared.store.outbox_wake();
            for (qid, n) in queued.iter().zip(released) {
                tracing::info!(queue_id = %qid, released = n, "Postfix queued the message: receipts released");
            }
        }
        Err(e) => tracing::warn!(queue_ids = ?queued, "cannot release the held receipts: {e}"),
    }
}

/// How often at most `postqueue -j` is run while messages put on hold wait: the log may be
/// read many times a second, and the listing covers the whole queue.
const POSTQUEUE_EVERY: Duration = Duration::from_secs(2);

/// How long `postqueue -j` is left alone after it failed or did not answer.
const POSTQUEUE_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// When the mail log's follower may run `postqueue -j` next: state of its loop ([`run`]).
#[derive(Debug, Default)]
struct PostqueueGate {
    next: Option<Instant>,
}

impl PostqueueGate {
    /// Whether `postqueue -j` may be run now (and it is then taken as run: the next time is
    /// [`POSTQUEUE_EVERY`] later).
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.next = Some(now + POSTQUEUE_EVERY);
        true
    }

    /// `postqueue -j` failed or hung: not again for [`POSTQUEUE_AFTER_FAILURE`], so that the
    /// log's passes do not each wait [`POSTQUEUE_WAIT`] for it.
    fn postpone(&mut self) {
        self.next = Some(Instant::now() + POSTQUEUE_AFTER_FAILURE);
    }
}

/// How long `postqueue -j` may take before the follower goes on without its answer.
const POSTQUEUE_WAIT: Duration = Duration::from_secs(30);

/// What `postqueue -j` lists: (queue, queue id) pairs, or why it could not be run. A
/// listing that does not come within [`POSTQUEUE_WAIT`] counts as failed, so a stuck
/// `showq` never stops the reading of the log.
async fn list_queue(config_dir: Option<PathBuf>) -> Result<Vec<(String, String)>, String> {
    let run = tokio::task::spawn_blocking(move || crate::adapters::postfix::queued_ids(config_dir.as_deref()));
    match tokio::time::timeout(POSTQUEUE_WAIT, run).await {
        Ok(done) => done.unwrap_or_else(|e| Err(e.to_string())),
        Err(_) => Err(format!("postqueue -j did not answer within {POSTQUEUE_WAIT:?}")),
    }
}

/// Of the queue ids cleanup put on hold, those Postfix's queue now lists: committed, so the
/// message is Postfix's (in the hold queue until someone releases or deletes it) and its
/// receipts go out. A queue id not listed yet (cleanup is still receiving the message) waits
/// for a later pass. One never listed (refused with no line, deleted before it was seen) is
/// forgotten after an hour, and then handled at `confirm_timeout` like an id the log never
/// named.
fn committed_on_hold(on_hold: Vec<String>, listed: Result<&Vec<(String, String)>, &String>) -> Vec<String> {
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            if !on_hold.is_empty() {
                tracing::warn!(queue_ids = ?on_hold,
                    "Postfix put these messages on hold and cannot be asked whether it queued them ({e}): their receipts stay held");
            }
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for qid in on_hold {
        if let Some((queue, _)) = listed.iter().find(|(_, id)| *id == qid) {
            tracing::info!(queue_id = %qid, queue = %queue, "Postfix holds the message in its queue (a HOLD action): receipts released");
            out.push(qid);
        }
    }
    out
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
    // The syslog_name postconf gave, and the configuration directory it was asked about (a
    // reload that names another instance asks again).
    let mut detected: Option<(Option<PathBuf>, String)> = None;
    let mut last_pruned = Instant::now();
    let mut postqueue = PostqueueGate::default();
    loop {
        if *stop.borrow() {
            log.set_following(false);
            return;
        }
        crate::store::failpoint::panic_here("queue-confirm-panic");
        let runtime = shared.snapshot();
        let pc = runtime.config.postfix.clone();
        let domain = runtime.engine.provider.domain.clone();
        let name = match (&pc.syslog_name, &detected) {
            (Some(n), _) => n.clone(),
            (None, Some((dir, d))) if *dir == pc.config_dir => d.clone(),
            (None, _) if pc.maillog.is_some() => {
                let d = tokio::task::block_in_place(|| syslog_name(None, pc.config_dir.as_deref()));
                tracing::info!(syslog_name = %d, "confirming queued messages from this Postfix instance's lines only");
                detected = Some((pc.config_dir.clone(), d.clone()));
                d
            }
            (None, _) => String::new(),
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
                    match Follower::open(path, pc.confirm_timeout.std()) {
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
                            // A hold is not yet a verdict on a message pecora injected: a
                            // refusal may follow, and resending is safer than losing it.
                            if v != LogVerdict::Held {
                                log.note_verdict(&qid, &v);
                            }
                            // A refusal is final; a later "queued" for the same id cannot
                            // happen. Otherwise the latest line counts (held, then released
                            // from the hold queue and queued).
                            seen.entry(qid).and_modify(|e| if !matches!(e.0, LogVerdict::Refused(_)) { *e = (v.clone(), now) }).or_insert((v, now));
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
                    settle(&shared, &seen, pc.confirm_timeout.chrono(), pc.config_dir.as_deref(), &mut postqueue).await;
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
        // A HOLD: header_checks, a milter's quarantine, milter_header_checks.
        for l in [
            "Dec 06 03:10:00 mx postfix/cleanup[1]: 4jhb1q0YZmz1V83h: hold: header Subject: Trattenuto from localhost[127.0.0.1]; from=<a@b> to=<c@d> proto=ESMTP helo=<vm>: held for review",
            "Dec 06 03:10:00 mx postfix/cleanup[1]: 4jhb1q0YZmz1V83h: milter-hold: END-OF-MESSAGE from localhost[127.0.0.1]: milter triggers HOLD action; from=<a@b> to=<c@d>",
            "Dec 06 03:10:00 mx postfix/cleanup[1]: 4jhb1q0YZmz1V83h: milter-header-hold: header Subject: POSTA CERTIFICATA: x from localhost[127.0.0.1]; from=<a@b>",
        ] {
            assert_eq!(p(l), Some(("4jhb1q0YZmz1V83h".into(), LogVerdict::Held)), "{l}");
        }
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
        assert_eq!(syslog_name(Some("postfix-alpha"), None), "postfix-alpha");
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

    /// What the follower reads now, with a budget large enough for everything.
    fn next_lines(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        f.read(1 << 20, &mut out).unwrap();
        out
    }

    /// A line that is not UTF-8 (a shared syslog file holds other programs' lines) is read
    /// like any other, and the lines after it too; before, it stopped the reading there, and
    /// every pass began the log again from its start.
    #[test]
    fn a_line_that_is_not_utf8_does_not_stop_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        std::fs::write(&p, b"Dec  5 10:00:00 mx other[1]: caf\xe9 \xff\xfe\nDec  5 10:00:01 mx postfix/qmgr[2]: 4jfFtL1zw0z1SZCR: from=<a@b>, size=1, nrcpt=1 (queue active)\n").unwrap();
        let mut f = Follower::open(&p, Duration::ZERO).unwrap();
        let mut out = Vec::new();
        assert!(f.read(1 << 20, &mut out).unwrap());
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("Dec  5 10:00:00 mx other[1]: caf"), "{out:?}");
        assert_eq!(parse_line(&out[1], "postfix"), Some(("4jfFtL1zw0z1SZCR".into(), LogVerdict::Queued)));
    }

    /// At start, the file the last rotation left is read before the log itself, when it was
    /// written within the lookback; compressed, stale and linked files are not.
    #[test]
    fn reads_the_last_rotated_file_first_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        let hour = Duration::from_secs(3600);
        let read_all = |lookback: Duration| {
            let mut f = Follower::open(&p, lookback).unwrap();
            let mut out = Vec::new();
            // A small budget: the rotated file takes several reads, and none is skipped.
            while !f.read(8, &mut out).unwrap() {}
            out
        };
        std::fs::write(&p, "now\n").unwrap();
        std::fs::write(dir.path().join("maillog.2.gz"), "compressed\n").unwrap();
        std::fs::write(dir.path().join("maillog.old"), "other\n").unwrap();
        assert_eq!(read_all(hour), ["now"]);
        std::fs::write(dir.path().join("maillog.1"), "before the rotation\nthen\n").unwrap();
        assert_eq!(read_all(hour), ["before the rotation", "then", "now"]);
        // Written before the lookback: no held receipt can wait for its lines.
        let stale = std::time::SystemTime::now() - 2 * hour;
        std::fs::File::options().write(true).open(dir.path().join("maillog.1")).unwrap().set_modified(stale).unwrap();
        assert_eq!(read_all(hour), ["now"]);
        // logrotate's dateext: the newest such file.
        std::fs::write(dir.path().join("maillog-20261205"), "dated\n").unwrap();
        assert_eq!(read_all(hour), ["dated", "now"]);
        // Never through a link.
        std::fs::remove_file(dir.path().join("maillog-20261205")).unwrap();
        std::fs::write(dir.path().join("elsewhere"), "linked\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("maillog-20261206")).unwrap();
        assert_eq!(read_all(hour), ["now"]);
    }

    /// logrotate's copytruncate: the log is copied to FILE.1 and truncated in place. What was
    /// appended after the last read is in the copy only, and is read there, before the
    /// truncated file's new lines; a FILE.1 that is not a copy of what was read is not.
    #[test]
    fn a_copytruncate_rotation_loses_no_line() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        let copy = dir.path().join("maillog.1");
        std::fs::write(&p, "a\nb\n").unwrap();
        let mut f = Follower::open(&p, Duration::ZERO).unwrap();
        assert_eq!(next_lines(&mut f), ["a", "b"]);
        let mut writer = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writer.write_all(b"c, unread\n").unwrap();
        std::fs::copy(&p, &copy).unwrap();
        writer.set_len(0).unwrap();
        writer.write_all(b"d\n").unwrap();
        assert_eq!(next_lines(&mut f), ["c, unread", "d"]);
        // Again, with a new FILE.1 that holds something else where the last line read ended.
        writer.write_all(b"e, unread\nf\n").unwrap();
        std::fs::remove_file(&copy).unwrap();
        std::fs::write(&copy, "x\nyy\nz, not a copy\n").unwrap();
        writer.set_len(0).unwrap();
        writer.write_all(b"g\n").unwrap();
        assert_eq!(next_lines(&mut f), ["g"]);
    }

    /// Two rotations before the first rotated file was read to its end (a small budget per
    /// pass, as with a large file): every line still comes, in order.
    #[test]
    fn two_rotations_in_a_row_lose_no_line_and_keep_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        std::fs::write(&p, "a1\na2\na3\na4\n").unwrap();
        let mut f = Follower::open(&p, Duration::ZERO).unwrap();
        let mut out = Vec::new();
        f.read(1, &mut out).unwrap();
        std::fs::rename(&p, dir.path().join("maillog.1")).unwrap();
        std::fs::write(&p, "b1\nb2\n").unwrap();
        f.read(1, &mut out).unwrap();
        std::fs::rename(dir.path().join("maillog.1"), dir.path().join("maillog.2")).unwrap();
        std::fs::rename(&p, dir.path().join("maillog.1")).unwrap();
        std::fs::write(&p, "c1\n").unwrap();
        for _ in 0..10 {
            f.read(1, &mut out).unwrap();
        }
        assert_eq!(out, ["a1", "a2", "a3", "a4", "b1", "b2", "c1"]);
    }

    #[test]
    fn follows_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("maillog");
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        let mut f = Follower::open(&p, Duration::ZERO).unwrap();
        assert_eq!(next_lines(&mut f), ["one", "two"]);
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"ial\nthree\n").unwrap();
        assert_eq!(next_lines(&mut f), ["partial", "three"]);
        // Rotation: a new file at the same path. What was written to the old file and not
        // read yet comes first, and what its writer adds until it reopens the path too.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"unread\n").unwrap();
        let mut writer = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::rename(&p, dir.path().join("maillog.1")).unwrap();
        std::fs::write(&p, "fresh\n").unwrap();
        assert_eq!(next_lines(&mut f), ["unread", "fresh"]);
        writer.write_all(b"late\n").unwrap();
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"new\n").unwrap();
        assert_eq!(next_lines(&mut f), ["late", "new"]);
        // Truncated in place: read again from its start.
        std::fs::write(&p, "x\n").unwrap();
        assert_eq!(next_lines(&mut f), ["x"]);
    }
}
