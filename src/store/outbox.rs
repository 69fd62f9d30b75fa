//! The outbox worker: submits the messages pecora generated (written to the store with
//! their event, before any attempt), retries temporary failures with capped exponential
//! backoff, and marks them sent.
//!
//! Claims are leases: a worker that dies leaves its messages to come back when the lease
//! expires. Delivery is at least once: a worker that submitted a message but died before
//! marking it sent causes a second submission after the lease (Postfix then holds two
//! copies); keep the lease longer than a submission can take.

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
impl Submitter for crate::inject::Injector {
    async fn submit(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<(), SubmitError> {
        // A new-PEC alert for a webhook rides the outbox too (see crate::alerts).
        if let Some(url) = crate::alerts::webhook_target(rcpts) {
            return crate::alerts::post(url, message.to_vec())
                .await
                .map_err(|e| SubmitError { temporary: e.temporary, message: e.message });
        }
        crate::inject::Injector::submit(self, mail_from, rcpts, message)
            .await
            .map(|_| ())
            .map_err(|e| SubmitError {
                temporary: e.is_temporary(),
                message: e.to_string(),
            })
    }
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
}

/// Submits due outbox messages.
pub struct OutboxWorker<S> {
    store: Store,
    submitter: S,
    owner: String,
    lease: Duration,
    batch: usize,
    backoff: Backoff,
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
        }
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
                crate::metrics::global().outbox_refused(if m.seal.is_none() { "unsealed" } else { "bad-seal" });
                report.refused += 1;
                if !backend.outbox_mark_failed(m.id, &self.owner, &reason, None).await? {
                    report.lost += 1;
                }
                continue;
            }
            crate::failpoint::hit("before-inject");
            let held = match self
                .submitter
                .submit(&m.mail_from, &m.rcpts, &m.message)
                .await
            {
                Ok(()) => {
                    report.sent += 1;
                    crate::failpoint::hit("after-inject");
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

    /// Why a claimed row must not be injected: its seal is missing or does not match its
    /// content. `None` for a row pecora sealed, or when the store has no outbox key (a
    /// library user that does not seal; the daemon always sets one).
    fn unsealed(&self, m: &OutboxMessage) -> Option<&'static str> {
        let key = self.store.outbox_key()?;
        match &m.seal {
            None => Some("it carries no seal"),
            Some(s) if !key.verify(s, &m.kind, &m.mail_from, &m.rcpts, &m.message) => {
                Some("its seal does not match its kind, sender, recipients and message")
            }
            Some(_) => None,
        }
    }

    /// Runs until `shutdown` turns true: a pass, then (when nothing was due) a pause of
    /// `poll`. Store errors are logged and retried after the pause.
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
                _ = shutdown.changed() => {}
            }
        }
    }
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
