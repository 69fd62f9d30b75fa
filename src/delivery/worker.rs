//! The delivery point (pec-format.md §4.3): for each message Dovecot committed to a mailbox,
//! a signed ricevuta di avvenuta consegna to the original sender, if and only if the stored
//! message is a genuine transport envelope that our reception point took in charge for that
//! mailbox.
//!
//! The spool event is only a hint: the facts come from the registry (what the reception
//! point verified) and from the stored bytes, read back with doveadm and verified again.
//! Processing is idempotent: the receipt is recorded with its outbox message under the key
//! `dlv:<pec id>:<mailbox>`, so a replayed event, or a crash between recording and removing
//! the event file, emits nothing twice. The event file goes only after that record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use crate::adapters::doveadm::{self, FetchError};
use crate::adapters::watch::{Kept, Watch, Watcher};
use super::{DeliveryEvent, Spool};
use crate::runtime::engine::{Engine, Incoming};
use crate::pec::build::{self, Built, Notice, NoticeParams, Transaction};
use crate::pec::incoming::GenuinePec;
use crate::pec::types::{Instant, ReceiptType};
use crate::runtime::state::Shared;
use crate::store::model::{EventRow, EventType, NewEvent, NewOutboxMessage, Record, StateUpdate};

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An avvenuta-consegna was recorded and queued (`replayed` when it had been already).
    Receipt { pec_id: String, recipient: String, variant: ReceiptType, replayed: bool },
    /// The stored message is not a transport envelope we took in charge for this mailbox
    /// (ordinary mail, an anomaly, a notice): no receipt, by design.
    NoReceipt(String),
}

/// Why an event could not be processed now.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("registry: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("reading the stored message: {0}")]
    Fetch(#[from] FetchError),
    #[error("cannot build the receipt: {0}")]
    Build(#[from] crate::pec::build::BuildError),
    #[error("the receipt builder crashed: {0}")]
    Crashed(String),
    /// The event names no stored message pecora can find (yet).
    #[error("cannot find the stored message: {reason}")]
    Unresolved { reason: String, transient: bool },
}

impl DeliveryError {
    fn is_transient(&self) -> bool {
        match self {
            DeliveryError::Fetch(f) => f.is_transient(),
            DeliveryError::Store(_) => true,
            DeliveryError::Unresolved { transient, .. } => *transient,
            DeliveryError::Build(_) | DeliveryError::Crashed(_) => false,
        }
    }
}

/// The mail address of a Dovecot user: the user name itself when it is an address, else the
/// recipient of the reception record whose local part it is.
fn mailbox_address(user: &str, taken: &[String]) -> Option<String> {
    if user.contains('@') {
        return taken.iter().find(|r| r.eq_ignore_ascii_case(user)).cloned();
    }
    taken
        .iter()
        .find(|r| r.rsplit_once('@').is_some_and(|(l, _)| l.eq_ignore_ascii_case(user)))
        .cloned()
}

/// The receipt variant for `recipient` (pec-format.md §3.5).
pub fn variant_for(g: &GenuinePec, recipient: &str) -> ReceiptType {
    let requested = g.daticert.ricevuta.unwrap_or(ReceiptType::Completa);
    let in_to = g.to.iter().any(|a| a.eq_ignore_ascii_case(recipient));
    let in_cc = g.cc.iter().any(|a| a.eq_ignore_ascii_case(recipient));
    build::receipt_variant(requested, in_to, in_cc)
}

/// The original transaction as the verified envelope certified it.
pub fn transaction_of(g: &GenuinePec) -> Transaction {
    let d = &g.daticert;
    Transaction {
        instant: d.data,
        identificativo: d.identificativo.clone(),
        client_msgid: d.msgid.clone().unwrap_or_else(|| format!("<{}>", d.identificativo)),
        sender: d.mittente.clone(),
        to: d.destinatari.clone(),
        cc: Vec::new(),
        reply_to: Some(d.risposte.clone()),
        subject: d.oggetto.clone(),
        receipt: d.ricevuta,
    }
}

/// A registry event about a verified PEC message, with the facts its daticert certifies
/// (identifier, client msgid, sender, subject) and the provider that signed it.
pub fn event_about(g: &GenuinePec, at: Instant, kind: EventType, recipients: Vec<String>) -> NewEvent {
    let d = &g.daticert;
    let mut event = NewEvent::new(at, kind);
    event.pec_id = Some(d.identificativo.clone());
    event.client_msgid = d.msgid.as_ref().map(|x| x.trim_matches(['<', '>']).to_string());
    event.sender = Some(d.mittente.clone());
    event.recipients = recipients;
    event.subject = d.oggetto.clone();
    event.provider = Some(g.provider.clone());
    event
}

/// Builds the signed avvenuta-consegna for `recipient` of the verified envelope `g`,
/// delivered at `at`. Pure apart from the signature.
pub fn build_receipt(engine: &Engine, g: &GenuinePec, recipient: &str, at: Instant, message_id: &str) -> Result<(Built, ReceiptType), build::BuildError> {
    let variant = variant_for(g, recipient);
    let postacert = match variant {
        ReceiptType::Sintetica => None,
        _ => g.postacert.as_deref(),
    };
    let built = build::build_notice(
        &engine.provider,
        &transaction_of(g),
        &NoticeParams { instant: at, message_id, seed: &Engine::random(16) },
        &Notice::AvvenutaConsegna { consegna: recipient, variant, postacert },
        &engine.signer,
    )?;
    Ok((built, variant))
}

/// The delivery time to certify: the time Dovecot saved the message (`date.saved`), read
/// back with the stored bytes. Never the spool event's `time=` or its file's mtime, which
/// whoever may write the spool can set. `None` when Dovecot told none, or one later than
/// `now` (a clock stepped back): the caller uses the time of processing.
pub fn delivery_time(saved: Option<i64>, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(saved?, 0).filter(|t| *t <= now + chrono::Duration::seconds(5))
}

/// The stored message an event names, with the mailbox and uid it has now. Dovecot reports
/// uid 0 when it had not assigned the uid at commit (concurrent deliveries to one Maildir):
/// the copy is then found by user and Message-ID (any folder, the earliest saved, as the
/// reconciliation sweep does), so such an event is never fetched as "uid 0".
async fn stored_copy(delivery: &crate::config::Delivery, event: &DeliveryEvent) -> Result<(doveadm::StoredMessage, String, u32), DeliveryError> {
    if event.uid != 0 {
        let stored = doveadm::fetch(delivery, &event.user, &event.mailbox, event.uid).await?;
        return Ok((stored, event.mailbox.clone(), event.uid));
    }
    if event.pec_id().is_empty() {
        return Err(DeliveryError::Unresolved {
            reason: "Dovecot told no uid and the event names no Message-ID".into(),
            transient: false,
        });
    }
    let found = doveadm::locate(delivery, &event.user, &event.message_id).await?;
    let copy = found
        .iter()
        .filter(|l| l.mailbox == event.mailbox)
        .min_by_key(|l| (l.saved, l.uid))
        .or_else(|| found.iter().min_by_key(|l| (l.saved, l.uid)))
        .cloned();
    let Some(copy) = copy else {
        return Err(DeliveryError::Unresolved {
            reason: format!("no message {} in any mailbox of {} (Dovecot told no uid)", event.message_id, event.user),
            transient: true,
        });
    };
    tracing::info!(mailbox = %copy.mailbox, uid = copy.uid, "Dovecot told no uid: the stored copy found by Message-ID");
    let stored = doveadm::fetch(delivery, &event.user, &copy.mailbox, copy.uid).await?;
    Ok((stored, copy.mailbox, copy.uid))
}

/// Processes one delivery event.
pub async fn process(shared: &Shared, event: &DeliveryEvent) -> Result<Outcome, DeliveryError> {
    let runtime = shared.snapshot();
    let engine = runtime.engine.clone();
    let mut pec_id = event.pec_id().to_string();
    // An event known only by its file name: the Message-ID comes from the stored message.
    let mut prefetched = None;
    if pec_id.is_empty() {
        let stored = stored_copy(&runtime.config.delivery, event).await?;
        pec_id = mail_parser::MessageParser::default()
            .parse_headers(&stored.0.raw)
            .and_then(|m| m.message_id().map(|s| s.trim_matches(['<', '>']).to_string()))
            .unwrap_or_default();
        if pec_id.is_empty() {
            return Ok(Outcome::NoReceipt("the stored message has no Message-ID".into()));
        }
        prefetched = Some(stored);
    }
    // What the reception point verified and took in charge under this identifier.
    let rows = shared.store.backend().events_of_pec_id(&pec_id).await?;
    let taken: Vec<&EventRow> = rows.iter().filter(|r| r.kind() == Some(EventType::TakeChargeEmitted)).collect();
    let Some((row, recipient)) = taken
        .iter()
        .find_map(|r| mailbox_address(&event.user, &r.recipient_list()).map(|a| (*r, a)))
    else {
        return Ok(Outcome::NoReceipt(format!(
            "no transport envelope {pec_id} was taken in charge for {}",
            event.user
        )));
    };
    let key = format!("dlv:{pec_id}:{}", recipient.to_ascii_lowercase());
    if rows.iter().any(|r| r.idempotency_key.as_deref() == Some(key.as_str())) {
        return Ok(Outcome::Receipt { pec_id, recipient, variant: ReceiptType::Completa, replayed: true });
    }

    // The bytes the mailbox holds, verified again at the moment they arrived, and the time
    // Dovecot saved them.
    let (stored, mailbox, uid) = match prefetched {
        Some(s) => s,
        None => stored_copy(&runtime.config.delivery, event).await?,
    };
    let (raw, saved) = (stored.raw, stored.saved);
    let arrival = row.instant().unwrap_or_else(|| engine.now());
    let verified = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.verify_incoming(&raw, &arrival))
            .await
            .unwrap_or_else(|e| Incoming::NotGenuine { claimed_pec: true, reason: format!("verifier crashed: {e}"), code: "internal" })
    };
    let g = match verified {
        Incoming::Envelope(g) if g.daticert.identificativo == pec_id && g.message_id.trim_matches(['<', '>']) == pec_id => g,
        Incoming::Envelope(_) => {
            return Ok(Outcome::NoReceipt(format!("the stored envelope does not carry the identifier {pec_id}")));
        }
        Incoming::Notice(_) => return Ok(Outcome::NoReceipt("the stored message is a notice".into())),
        Incoming::NotGenuine { reason, .. } => {
            return Ok(Outcome::NoReceipt(format!("the stored message is not a genuine transport envelope: {reason}")));
        }
    };
    // decisions.md 20, defence in depth: whatever the registry says, a mailbox the signed
    // envelope is not addressed to is never certified.
    if !g.daticert.destinatari.iter().any(|d| d.address.trim().eq_ignore_ascii_case(&recipient)) {
        tracing::warn!(pec_id, %recipient, "delivery event for a mailbox not among the envelope's destinatari: no receipt");
        return Ok(Outcome::NoReceipt(format!("{recipient} is not among the destinatari of {pec_id}")));
    }

    let delivered_at = match delivery_time(saved, chrono::Utc::now()) {
        Some(t) => crate::pec::types::to_zone(t, engine.time_zone),
        None => {
            tracing::warn!(%pec_id, saved, "Dovecot told no usable save time for the stored message: the receipt carries the time of processing");
            engine.now()
        }
    };
    let message_id = engine.new_identifier(&delivered_at);
    let (built, variant) = {
        let (engine, g, recipient, id) = (engine.clone(), g.clone(), recipient.clone(), message_id.clone());
        tokio::task::spawn_blocking(move || build_receipt(&engine, &g, &recipient, delivered_at, &id))
            .await
            .map_err(|e| DeliveryError::Crashed(e.to_string()))??
    };
    let d = &g.daticert;
    let mut ev = event_about(&g, delivered_at, EventType::Delivery, vec![recipient.clone()]);
    ev.generated_ids = vec![message_id];
    ev.queue_id = row.queue_id.clone();
    ev.details = serde_json::json!({
        "variant": variant.as_str(),
        "mailbox": mailbox,
        "uidvalidity": event.uidvalidity,
        "uid": uid,
    });
    if event.reconciled {
        ev.details["found_by"] = "reconciliation".into();
    }
    let mut outbox = vec![NewOutboxMessage {
        kind: "avvenuta-consegna".into(),
        mail_from: engine.provider.system_address.clone(),
        rcpts: vec![d.mittente.clone()],
        message: built.to_bytes(),
        hold_for_queue_id: None,
    }];
    outbox.extend(alerts_for(&runtime.config, &engine, &recipient, &g, delivered_at));
    let record = Record {
        event: ev,
        outbox,
        // Same provider (decisions.md 7): our own transaction learns it at once.
        state: vec![StateUpdate::Delivered { pec_id: pec_id.clone(), recipient: recipient.clone(), at: chrono::Utc::now() }],
        idempotency_key: Some(key),
    };
    let outcome = shared.store.record(&record, chrono::Utc::now()).await?;
    Ok(Outcome::Receipt { pec_id, recipient, variant, replayed: outcome.replayed })
}

/// The new-PEC alerts the mailbox's holder asked for (e-mail and/or webhook), as outbox
/// messages recorded with the delivery.
fn alerts_for(config: &crate::config::Config, engine: &Engine, mailbox: &str, g: &GenuinePec, at: Instant) -> Vec<NewOutboxMessage> {
    let Some(a) = config.alerts.for_mailbox(mailbox) else { return Vec::new() };
    let d = &g.daticert;
    let facts = crate::adapters::alerts::Delivered {
        mailbox,
        sender: &d.mittente,
        subject: d.oggetto.as_deref(),
        pec_id: &d.identificativo,
        at,
    };
    let mut out = Vec::new();
    if let Some(to) = &a.email {
        let id = engine.new_identifier(&at);
        match crate::adapters::alerts::email(&engine.provider.system_address, to, &facts, &id) {
            Ok(message) => out.push(NewOutboxMessage {
                kind: "alert-email".into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![to.clone()],
                message,
                hold_for_queue_id: None,
            }),
            Err(e) => tracing::error!(%mailbox, "cannot build the alert e-mail to {to}: {e}"),
        }
    }
    if let Some(url) = &a.webhook {
        out.push(NewOutboxMessage {
            kind: "alert-webhook".into(),
            mail_from: String::new(),
            rcpts: vec![format!("{}{url}", crate::adapters::alerts::WEBHOOK_PREFIX)],
            message: crate::adapters::alerts::webhook_body(&facts),
            hold_for_queue_id: None,
        });
    }
    out
}

/// How many times an event is tried for a transient reason before it goes to `bad/`
/// (about 14 minutes of tries, waits doubling from 2 s up to 5 min): an event that names
/// nothing pecora can find never loops forever. The reconciliation sweep still certifies
/// the stored message behind an event set aside.
pub const MAX_ATTEMPTS: u32 = 10;

/// How long an empty event file written in place is left alone before it is read.
const FRESH: Duration = Duration::from_secs(1);

/// Retry bookkeeping for events that failed for a transient reason, and the entries that
/// could be neither moved aside nor removed (skipped until pecora restarts).
#[derive(Default)]
struct Retries {
    next: HashMap<PathBuf, (u32, Clock)>,
    stuck: std::collections::HashSet<PathBuf>,
}

impl Retries {
    fn due(&self, p: &Path) -> bool {
        !self.stuck.contains(p) && self.next.get(p).is_none_or(|(_, t)| Clock::now() >= *t)
    }
    /// Counts a failed attempt and schedules the next; the number of attempts so far.
    fn failed(&mut self, p: &Path) -> u32 {
        let e = self.next.entry(p.to_path_buf()).or_insert((0, Clock::now()));
        e.0 += 1;
        let wait = Duration::from_secs(1u64 << e.0.min(9)).min(Duration::from_secs(300));
        e.1 = Clock::now() + wait;
        e.0
    }
    fn forget(&mut self, p: &Path) {
        self.next.remove(p);
    }
    /// Looks at the entry again after `wait`, without counting an attempt.
    fn later(&mut self, p: &Path, wait: Duration) {
        let e = self.next.entry(p.to_path_buf()).or_insert((0, Clock::now()));
        e.1 = Clock::now() + wait;
    }
    /// When the next retry is due, if any is waiting.
    fn next_due(&self) -> Option<Clock> {
        self.next.values().map(|(_, t)| *t).min()
    }
    /// Drops the bookkeeping of entries no longer in the spool.
    fn keep_only(&mut self, present: &[PathBuf]) {
        let present: std::collections::HashSet<&PathBuf> = present.iter().collect();
        self.next.retain(|p, _| present.contains(p));
        self.stuck.retain(|p| present.contains(p));
    }
}

/// Handles one spool file; returns whether it is finished with (removed or set aside).
async fn handle(shared: &Shared, spool: &Spool, path: &Path, retries: &mut Retries) {
    // The hook publishes finished files by renaming them, but a file written in place (by a
    // person) is empty for a moment after its creation: not read as a name-only event until
    // it has been left alone for a while.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let fresh = m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age < FRESH);
        if m.is_file() && m.len() == 0 && fresh {
            retries.later(path, FRESH);
            return;
        }
    }
    let event = match Spool::read(path) {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            set_aside(spool, path, &format!("refused delivery spool entry: {e}"), retries);
            return;
        }
        // Gone meanwhile (another worker, a person): nothing to do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            let n = retries.failed(path);
            if n >= MAX_ATTEMPTS {
                set_aside(spool, path, &format!("cannot read the delivery event after {n} attempts: {e}"), retries);
            } else {
                tracing::warn!(file = %path.display(), attempt = n, "cannot read the delivery event: {e}");
            }
            return;
        }
    };
    let span = tracing::info_span!("delivery", pec_id = %event.pec_id(), user = %event.user, uid = event.uid);
    let _g = span.enter();
    match process(shared, &event).await {
        Ok(Outcome::Receipt { pec_id, recipient, variant, replayed }) => {
            if replayed {
                tracing::info!(%pec_id, %recipient, "delivery event replayed: the receipt was recorded already");
            } else {
                tracing::info!(%pec_id, %recipient, variant = variant.as_str(), "stored: avvenuta-consegna queued");
            }
            finish(spool, path, retries);
        }
        Ok(Outcome::NoReceipt(why)) => {
            tracing::debug!("stored, no receipt: {why}");
            finish(spool, path, retries);
        }
        Err(e) if e.is_transient() => {
            let n = retries.failed(path);
            if n >= MAX_ATTEMPTS {
                set_aside(
                    spool,
                    path,
                    &format!("delivery event given up after {n} attempts (the reconciliation sweep certifies the stored message): {e}"),
                    retries,
                );
            } else {
                tracing::warn!(attempt = n, "delivery event kept for a retry: {e}");
            }
        }
        Err(e) => set_aside(spool, path, &format!("delivery event cannot be processed: {e}"), retries),
    }
}

/// Moves a spool entry to `bad/` for an operator, saying why; when even that fails, removes
/// it, and when that fails too, skips it until pecora restarts, so that one entry can never
/// stop the worker or flood the log.
fn set_aside(spool: &Spool, path: &Path, why: &str, retries: &mut Retries) {
    retries.forget(path);
    let file = path.display();
    let Err(e) = spool.quarantine(path) else {
        tracing::error!(file = %file, "{why}; moved to bad/");
        return;
    };
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    match if is_dir { std::fs::remove_dir(path) } else { std::fs::remove_file(path) } {
        Ok(()) => tracing::error!(file = %file, "{why}; cannot move it to bad/ ({e}): removed"),
        Err(e2) if e2.kind() == std::io::ErrorKind::NotFound => {}
        Err(e2) => {
            tracing::error!(file = %file, "{why}; cannot move it to bad/ ({e}) nor remove it ({e2}): skipped until pecora restarts");
            retries.stuck.insert(path.to_path_buf());
        }
    }
}

fn finish(spool: &Spool, path: &Path, retries: &mut Retries) {
    retries.forget(path);
    if let Err(e) = spool.done(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(file = %path.display(), "cannot remove the processed event: {e}");
        }
    }
}

/// What wakes the worker when an event lands in the spool's `new/`: an inotify watch on
/// it, read through tokio. None where inotify cannot watch it (no instance left, a file
/// system without it): the worker then reads the spool every `poll_interval`.
struct SpoolWatch {
    dir: PathBuf,
    watch: Watch,
}

impl SpoolWatch {
    fn new(dir: &Path) -> std::io::Result<SpoolWatch> {
        use inotify::WatchMask;
        let mut watch = Watch::new()?;
        // The hook renames its finished file into new/ (MOVED_TO); a person or a test may
        // write there directly (CLOSE_WRITE), or leave a link, a FIFO or a directory (CREATE).
        watch.add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::CREATE)?;
        Ok(SpoolWatch { dir: dir.to_path_buf(), watch })
    }

}

impl Watcher for SpoolWatch {
    /// Waits for entries to land, and takes every event already queued, so a burst makes
    /// one pass over the spool. `Ok(false)`: the watch is gone (the directory was removed
    /// or moved): make a new one.
    async fn wait(&mut self) -> std::io::Result<bool> {
        loop {
            let mut alive = true;
            let mut got = false;
            let dir = &self.dir;
            self.watch
                .read_batch(|e| {
                    // A regular file just created is still being written: its
                    // CLOSE_WRITE (or the rename that publishes it) wakes the worker.
                    let created_file = e.mask.contains(inotify::EventMask::CREATE)
                        && e.name.is_some_and(|n| std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.is_file()));
                    got |= !created_file;
                    if e.mask.intersects(inotify::EventMask::IGNORED | inotify::EventMask::DELETE_SELF | inotify::EventMask::MOVE_SELF) {
                        alive = false;
                    }
                })
                .await?;
            if got || !alive {
                return Ok(alive);
            }
        }
    }
}

/// Reads the spool until `stop`: at once when an entry lands in `new/` (inotify), and every
/// `delivery.rescan_interval` as a backstop, or every `delivery.poll_interval` where
/// inotify cannot watch the spool; an event waiting for a retry is taken up when it is due.
pub async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut retries = Retries::default();
    let mut warned = false;
    let mut watch: Kept<SpoolWatch> = Kept::new("the delivery spool");
    loop {
        if *stop.borrow() {
            return;
        }
        let runtime = shared.snapshot();
        let spool = Spool::new(runtime.config.listen.delivery_spool.clone());
        let new = spool.dir.join("new");
        // Watch before reading, so nothing that lands in between is missed.
        watch.renew(
            |w| w.dir == new,
            || SpoolWatch::new(&new),
            |e| tracing::warn!(spool = %new.display(), "cannot watch the delivery spool (inotify): reading it every delivery.poll_interval instead: {e}"),
        );
        match spool.pending() {
            Ok(files) => {
                warned = false;
                retries.keep_only(&files);
                for f in files {
                    if *stop.borrow() {
                        return;
                    }
                    if retries.due(&f) {
                        handle(&shared, &spool, &f, &mut retries).await;
                    }
                }
            }
            Err(e) if !warned => {
                tracing::error!(spool = %spool.dir.display(), "cannot read the delivery spool: {e}");
                warned = true;
            }
            Err(_) => {}
        }
        let delivery = &runtime.config.delivery;
        let mut wait = if watch.is_watching() { delivery.rescan_interval.std() } else { delivery.poll_interval.std() };
        if let Some(due) = retries.next_due() {
            wait = wait.min(due.saturating_duration_since(Clock::now()));
        }
        tokio::select! {
            () = watch.wait() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_time_is_dovecots_save_time() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        // Days ago (pecora was down): still the time Dovecot stored it.
        assert_eq!(delivery_time(Some(1_800_000_000 - 5 * 86400), now).unwrap().timestamp(), 1_800_000_000 - 5 * 86400);
        assert_eq!(delivery_time(Some(1_800_000_003), now).unwrap().timestamp(), 1_800_000_003);
        // None told, or one in the future: the caller uses the time of processing.
        assert_eq!(delivery_time(None, now), None);
        assert_eq!(delivery_time(Some(1_800_000_000 + 3600), now), None);
    }

    #[test]
    fn retries_are_bounded_and_spaced() {
        let mut r = Retries::default();
        let p = Path::new("/spool/new/1.0.ab.u@x~m@x");
        assert!(r.due(p));
        let n: Vec<u32> = (0..MAX_ATTEMPTS).map(|_| r.failed(p)).collect();
        assert_eq!(n.last(), Some(&MAX_ATTEMPTS), "the caller sets the event aside at the last");
        assert!(!r.due(p), "not due again at once");
        assert!(r.next_due().unwrap() <= Clock::now() + Duration::from_secs(300));
        r.keep_only(&[]);
        assert!(r.due(p) && r.next_due().is_none(), "an entry gone from the spool is forgotten");
    }

    #[test]
    fn mailbox_of_user() {
        let taken = vec!["Luca.Verdi@pec.beta.test".to_string(), "giulia.neri@pec.beta.test".to_string()];
        assert_eq!(mailbox_address("luca.verdi@pec.beta.test", &taken).unwrap(), "Luca.Verdi@pec.beta.test");
        assert_eq!(mailbox_address("giulia.neri", &taken).unwrap(), "giulia.neri@pec.beta.test");
        assert_eq!(mailbox_address("paolo@pec.beta.test", &taken), None);
    }
}
