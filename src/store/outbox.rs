//! The outbox worker: submits the messages pecora generated (written to the store with
//! their event, before any attempt), retries temporary failures with capped exponential
//! backoff, and marks them sent.
//!
//! Claims are leases: a worker that dies leaves its messages to come back when the lease
//! expires (or when the same host's worker starts again). A worker that submitted a message
//! but died before marking it sent leaves the row pending: before submitting again a row
//! claimed before (an expired or released lease, a timeout after the final dot), the
//! worker asks the mail system's own record ([`InjectionRecord`]: Postfix's mail log,
//! where cleanup logs each Message-ID with its queue id and qmgr logs the queue id once
//! the message is queued) whether it already took that Message-ID, and marks the row sent
//! when it did. Without such a record delivery is at least once: Postfix may then hold
//! two copies.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::model::{OutboxMessage, after};
use super::{Store, StoreError};

/// Why a submission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SubmitError {
    /// True when trying again later can help (network trouble, 4xx).
    pub temporary: bool,
    pub message: String,
}

/// Hands a message to the mail system.
#[async_trait]
pub trait Submitter: Send + Sync {
    async fn submit(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<(), SubmitError>;
}

/// The real injector (the dedicated Postfix listener with no milter).
#[async_trait]
impl Submitter for crate::adapters::inject::Injector {
    async fn submit(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<(), SubmitError> {
        // A new-PEC alert for a webhook rides the outbox too (see crate::adapters::alerts).
        if let Some(url) = crate::adapters::alerts::webhook_target(rcpts) {
            return crate::adapters::alerts::post(url, message.to_vec())
                .await
                .map_err(|e| SubmitError { temporary: e.temporary, message: e.message });
        }
        crate::adapters::inject::Injector::submit(self, mail_from, rcpts, message)
            .await
            .map(|_| ())
            .map_err(|e| SubmitError {
                temporary: e.is_temporary(),
                message: e.to_string(),
            })
    }
}

/// What the mail system's record says about a message an earlier attempt may have
/// handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlierAttempt {
    /// The mail system queued it, under this queue id: it is not submitted again.
    Queued(String),
    /// It holds no trace of it, or refused it: submit.
    NotTaken,
    /// It received the message and has not said yet whether it queued it: ask again
    /// shortly (the text says why).
    Undecided(String),
    /// There is no record to look in: submit (at least once).
    Unknown,
}

/// Where the worker learns whether an earlier attempt reached the mail system.
#[async_trait]
pub trait InjectionRecord: Send + Sync {
    /// What became of the message whose Message-ID (without angle brackets) is `message_id`.
    async fn earlier_attempt(&self, message_id: &str) -> EarlierAttempt;
}

/// How long a row waits before the record is asked again, while it is undecided.
const UNDECIDED_RETRY: Duration = Duration::from_secs(2);

/// The Message-ID of a generated message, without angle brackets.
fn message_id_of(message: &[u8]) -> Option<String> {
    let (head, _) = crate::pec::incoming::split_header(message);
    let fields = crate::pec::incoming::header_fields(head);
    let (_, v) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case("Message-ID"))?;
    let id = v.trim().trim_start_matches('<').trim_end_matches('>').trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Retry policy: `base · 2^(attempt-1)`, at most `cap`; after `max_attempts` claims a
/// temporary failure is final too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: i64,
}

impl Default for Backoff {
    /// 30 s, doubling up to 1 h, 60 attempts (about two and a half days).
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(3600),
            max_attempts: 60,
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th failed try (1-based).
    pub fn delay(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

/// What one pass of the worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    /// Messages whose lease this worker had lost when it came to mark them.
    pub lost: usize,
    /// Rows not injected because their seal is missing or wrong (crate::store::seal).
    pub refused: usize,
    /// Rows an earlier attempt had handed over (the mail system's record says it queued
    /// them): marked sent, not submitted again.
    pub already_queued: usize,
}

/// Submits due outbox messages.
pub struct OutboxWorker<S> {
    store: Store,
    submitter: S,
    owner: String,
    lease: Duration,
    batch: usize,
    backoff: Backoff,
    record: Option<Arc<dyn InjectionRecord>>,
}

impl<S: Submitter> OutboxWorker<S> {
    /// A worker named `owner` (unique per host and worker; the host name plus a number).
    /// Lease 5 minutes, batches of 20, default backoff.
    pub fn new(store: Store, submitter: S, owner: impl Into<String>) -> OutboxWorker<S> {
        OutboxWorker {
            store,
            submitter,
            owner: owner.into(),
            lease: Duration::from_secs(300),
            batch: 20,
            backoff: Backoff::default(),
            record: None,
        }
    }

    /// Before a row claimed before is submitted again, `record` is asked whether the
    /// earlier attempt already handed it over.
    pub fn with_injection_record(mut self, record: Arc<dyn InjectionRecord>) -> Self {
        self.record = Some(record);
        self
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn submitter(&self) -> &S {
        &self.submitter
    }

    /// Claims the messages due at `now` and tries each once.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<WorkReport, StoreError> {
        let backend = self.store.backend();
        let claimed = backend
            .outbox_claim(&self.owner, now, self.lease, self.batch)
            .await?;
        let mut report = WorkReport {
            claimed: claimed.len(),
            ..WorkReport::default()
        };
        for m in claimed {
            if let Some(why) = self.unsealed(&m) {
                // Not ours: written into the registry behind pecora's back, or changed
                // since. Never injected, never retried.
                let reason = format!(
                    "not injected: {why} (the row was not queued by pecora, or was changed since)"
                );
                tracing::error!(id = m.id, kind = %m.kind, event_seq = m.event_seq, mail_from = %m.mail_from,
                    rcpts = ?m.rcpts, "outbox row refused: {reason}");
                if let Some(o) = self.store.observer() {
                    o.outbox_row_refused(if m.seal.is_none() { "unsealed" } else { "bad-seal" });
                }
                report.refused += 1;
                if !backend.outbox_mark_failed(m.id, &self.owner, &reason, None).await? {
                    report.lost += 1;
                }
                continue;
            }
            // Claimed before (`attempts` counts claims): an earlier attempt may have handed
            // it over before its worker died or lost the answer.
            if m.attempts > 1 && m.attempts < self.backoff.max_attempts {
                if let Some(decided) = self.earlier_attempt(&m, now).await? {
                    match decided {
                        Decided::Queued => report.already_queued += 1,
                        Decided::Wait => report.retried += 1,
                        Decided::Lost => report.lost += 1,
                    }
                    continue;
                }
            }
            super::failpoint::hit("before-inject");
            let held = match self
                .submitter
                .submit(&m.mail_from, &m.rcpts, &m.message)
                .await
            {
                Ok(()) => {
                    report.sent += 1;
                    super::failpoint::hit("after-inject");
                    backend.outbox_mark_sent(m.id, &self.owner, now).await?
                }
                Err(e) => {
                    let retry = (e.temporary && m.attempts < self.backoff.max_attempts)
                        .then(|| after(now, self.backoff.delay(m.attempts)));
                    log_failure(&m, &e, retry);
                    if retry.is_some() {
                        report.retried += 1;
                    } else {
                        report.failed += 1;
                    }
                    backend
                        .outbox_mark_failed(m.id, &self.owner, &e.message, retry)
                        .await?
                }
            };
            if !held {
                report.lost += 1;
            }
        }
        Ok(report)
    }

    /// Asks the injection record about a row claimed before. `Some` when the row was
    /// settled here (marked sent, or put back to be asked again shortly); `None`: submit it.
    async fn earlier_attempt(&self, m: &OutboxMessage, now: DateTime<Utc>) -> Result<Option<Decided>, StoreError> {
        let Some(record) = &self.record else { return Ok(None) };
        let Some(message_id) = message_id_of(&m.message) else { return Ok(None) };
        let backend = self.store.backend();
        let held = match record.earlier_attempt(&message_id).await {
            EarlierAttempt::Queued(queue_id) => {
                tracing::info!(id = m.id, kind = %m.kind, event_seq = m.event_seq, %message_id, %queue_id,
                    attempt = m.attempts, "an earlier attempt had already handed this message to Postfix: marked sent, not submitted again");
                if backend.outbox_mark_sent(m.id, &self.owner, now).await? {
                    Decided::Queued
                } else {
                    Decided::Lost
                }
            }
            EarlierAttempt::Undecided(why) => {
                tracing::info!(id = m.id, kind = %m.kind, %message_id, attempt = m.attempts, "{why}: asking again shortly before submitting it again");
                if backend.outbox_mark_failed(m.id, &self.owner, &why, Some(after(now, UNDECIDED_RETRY))).await? {
                    Decided::Wait
                } else {
                    Decided::Lost
                }
            }
            EarlierAttempt::NotTaken => {
                tracing::info!(id = m.id, kind = %m.kind, %message_id, attempt = m.attempts, "Postfix did not take the earlier attempt: submitting again");
                return Ok(None);
            }
            EarlierAttempt::Unknown => {
                tracing::warn!(id = m.id, kind = %m.kind, %message_id, attempt = m.attempts,
                    "no mail log to tell whether an earlier attempt reached Postfix ([postfix] maillog): submitting again, the recipient may get it twice");
                return Ok(None);
            }
        };
        Ok(Some(held))
    }

    /// Why a claimed row must not be injected: its seal is missing or does not match its
    /// content under any of the store's keys. `None` for a row pecora sealed, or when the
    /// store has no outbox key (a library user that does not seal; the daemon always sets
    /// one).
    fn unsealed(&self, m: &OutboxMessage) -> Option<&'static str> {
        let keys = self.store.outbox_keys()?;
        if m.seal.is_none() {
            return Some("it carries no seal");
        }
        match keys.verify_row(m) {
            None => Some("its seal does not match its kind, sender, recipients and message"),
            Some(super::seal::SealedBy::Previous) => {
                tracing::info!(id = m.id, kind = %m.kind, event_seq = m.event_seq,
                    "outbox row sealed under a previous signing key (queued before the key changed): injected");
                None
            }
            Some(super::seal::SealedBy::Current) => None,
        }
    }

    /// Runs until `shutdown` turns true: a pass, then (when nothing was due) a pause of
    /// `poll`, cut short when this process records or releases a message
    /// ([`Store::outbox_wake`]). Store errors are logged and retried after the pause.
    pub async fn run(&self, poll: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // What an earlier process of this host had claimed when it died goes out now.
        match self.store.backend().outbox_release_leases(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "outbox messages left claimed by a previous run are due again"),
            Err(e) => tracing::warn!("cannot release the previous run's outbox leases: {e}"),
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            let busy = match self.run_once(Utc::now()).await {
                Ok(r) => r.claimed > 0,
                Err(e) => {
                    tracing::error!(error = %e, "outbox pass failed");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = self.store.outbox_woken() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// What [`OutboxWorker::earlier_attempt`] did with a row.
enum Decided {
    Queued,
    Wait,
    Lost,
}

fn log_failure(m: &OutboxMessage, e: &SubmitError, retry: Option<DateTime<Utc>>) {
    match retry {
        Some(t) => {
            tracing::warn!(id = m.id, kind = %m.kind, attempt = m.attempts, error = %e, retry_at = %t,
            "outbox submission failed, will retry")
        }
        None => tracing::error!(id = m.id, kind = %m.kind, attempt = m.attempts, error = %e,
            "outbox submission failed for good"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message recorded due wakes the worker at once; one held for a queue id does not
    /// (the acceptance release wakes it: crate::daemon::queue_confirm).
    #[tokio::test]
    async fn recording_a_due_message_wakes_the_worker() {
        use crate::store::model::{EventType, NewEvent, NewOutboxMessage, Record};
        let store = Store::open("sqlite::memory:").await.unwrap();
        let record = |hold: Option<&str>| Record {
            event: NewEvent::new(Utc::now().fixed_offset(), EventType::Acceptance),
            outbox: vec![NewOutboxMessage {
                kind: "accettazione".into(),
                mail_from: "posta-certificata@pec.a.test".into(),
                rcpts: vec!["x@pec.a.test".into()],
                message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
                hold_for_queue_id: hold.map(str::to_string),
            }],
            state: vec![],
            idempotency_key: None,
        };
        let woken = || tokio::time::timeout(Duration::from_millis(200), store.outbox_woken());
        store.record(&record(Some("4HELD1")), Utc::now()).await.unwrap();
        assert!(woken().await.is_err(), "a held message is not due");
        store.record(&record(None), Utc::now()).await.unwrap();
        assert!(woken().await.is_ok(), "a due message wakes the worker");
        store.outbox_wake();
        assert!(woken().await.is_ok(), "and so does a release");
    }

    #[test]
    fn message_id_of_generated_messages() {
        assert_eq!(message_id_of(b"From: a@b\r\nMessage-ID:\r\n <pecora.1.h.ab@pec.a.test>\r\n\r\nMessage-ID: <no@body>\r\n").as_deref(), Some("pecora.1.h.ab@pec.a.test"));
        assert_eq!(message_id_of(b"message-id: <x@y>\n\n"), Some("x@y".into()));
        assert_eq!(message_id_of(b"Subject: s\r\n\r\nMessage-ID: <in@body>\r\n"), None);
        assert_eq!(message_id_of(b"{\"json\": true}"), None);
        assert_eq!(message_id_of(b"Message-ID: <>\r\n\r\n"), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
            max_attempts: 5,
        };
        assert_eq!(b.delay(1), Duration::from_secs(10));
        assert_eq!(b.delay(2), Duration::from_secs(20));
        assert_eq!(b.delay(3), Duration::from_secs(40));
        assert_eq!(b.delay(4), Duration::from_secs(60));
        assert_eq!(b.delay(1000), Duration::from_secs(60));
        assert_eq!(b.delay(0), Duration::from_secs(10));
    }
}
