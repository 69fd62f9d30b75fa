//! What the mail log says about the messages pecora generated and injected, kept by the
//! log follower (crate::daemon::queue_confirm) and asked by the outbox worker before it
//! submits again a message an earlier attempt may have handed over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::outbox::{EarlierAttempt, InjectionRecord};

/// What a log line says about a queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogVerdict {
    /// qmgr took the message: it is in the queue.
    Queued,
    /// cleanup refused the message after the milters ran; the text says why.
    Refused(String),
    /// cleanup put the message on hold (a `HOLD` of header_checks or milter_header_checks,
    /// a milter's quarantine): once cleanup has committed it, it waits in Postfix's hold
    /// queue, where qmgr never sees it. The line comes while the message is still being
    /// received, so a refusal may follow it; only the queue itself says it was committed.
    Held,
}

/// How long an injected message whose queue id cleanup logged, and qmgr has not (yet),
/// counts as undecided: past it, the earlier attempt is taken for one Postfix dropped (the
/// client went away before the final dot) and the message is submitted again.
const UNDECIDED_GRACE: Duration = Duration::from_secs(10);
/// How long the Message-IDs of injected messages are remembered.
const REMEMBERED: Duration = Duration::from_secs(24 * 3600);
/// How long a question waits for the log to be read to its end.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// One message pecora generated, as the mail log tells it.
struct Injected {
    queue_id: String,
    /// `Some(true)`: qmgr queued it; `Some(false)`: cleanup refused it; `None`: not told yet.
    queued: Option<bool>,
    noted: Instant,
}

#[derive(Default)]
struct Ledger {
    by_message_id: HashMap<String, Injected>,
    /// Queue id → Message-ID, while the queue id's fate is untold.
    untold: HashMap<String, String>,
}

/// What the mail log says about the messages pecora generated and injected (only
/// pecora's own identifiers, `pecora.…@<provider domain>`): the queue id cleanup gave each
/// Message-ID, and whether qmgr queued it. Shared by the log follower, which fills it, and
/// the outbox worker, which asks it (as its [`InjectionRecord`]).
pub struct InjectionLog {
    ledger: std::sync::Mutex<Ledger>,
    /// Asks the follower to read the log now.
    pub(crate) wake: tokio::sync::Notify,
    /// Questions asked so far.
    pub(crate) asked: AtomicU64,
    /// The questions answered: those asked before the last pass that read the log to its end
    /// started.
    answered: tokio::sync::watch::Sender<u64>,
    /// Whether a mail log is being followed.
    following: AtomicBool,
}

impl InjectionLog {
    /// `following`: whether a mail log is configured (questions asked before the follower's
    /// first pass then wait for it).
    pub fn new(following: bool) -> InjectionLog {
        InjectionLog {
            ledger: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            asked: AtomicU64::new(0),
            answered: tokio::sync::watch::Sender::new(0),
            following: AtomicBool::new(following),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// cleanup received the message `message_id` as `queue_id`.
    pub(crate) fn note_message_id(&self, queue_id: String, message_id: String, now: Instant) {
        let mut l = self.ledger();
        l.untold.insert(queue_id.clone(), message_id.clone());
        l.by_message_id.insert(message_id, Injected { queue_id, queued: None, noted: now });
    }

    /// What the log says of a queue id; counts only for a queue id a Message-ID was noted with.
    pub(crate) fn note_verdict(&self, queue_id: &str, verdict: &LogVerdict) {
        let mut l = self.ledger();
        if let Some(message_id) = l.untold.remove(queue_id) {
            if let Some(i) = l.by_message_id.get_mut(&message_id).filter(|i| i.queue_id == queue_id) {
                i.queued = Some(*verdict == LogVerdict::Queued);
            }
        }
    }

    pub(crate) fn forget_old(&self, now: Instant) {
        let mut l = self.ledger();
        l.by_message_id.retain(|_, i| now.duration_since(i.noted) < REMEMBERED);
        let Ledger { by_message_id, untold } = &mut *l;
        untold.retain(|_, m| by_message_id.get(m).is_some_and(|i| now.duration_since(i.noted) < Duration::from_secs(3600)));
    }

    /// A pass that started after `ticket` questions were asked read the log to its end.
    pub(crate) fn answer(&self, ticket: u64) {
        self.answered.send_if_modified(|a| {
            let newer = ticket > *a;
            if newer {
                *a = ticket;
            }
            newer
        });
    }

    /// Whether a mail log is followed; when it is not, questions are answered at once.
    pub(crate) fn set_following(&self, on: bool) {
        self.following.store(on, Ordering::SeqCst);
        if !on {
            self.answer(self.asked.load(Ordering::SeqCst));
        }
    }

    /// What the log said of `message_id`, as it stands now.
    fn lookup(&self, message_id: &str, now: Instant) -> EarlierAttempt {
        let l = self.ledger();
        match l.by_message_id.get(message_id) {
            None => EarlierAttempt::NotTaken,
            Some(Injected { queue_id, queued: Some(true), .. }) => EarlierAttempt::Queued(queue_id.clone()),
            Some(Injected { queued: Some(false), .. }) => EarlierAttempt::NotTaken,
            Some(Injected { queue_id, queued: None, noted }) if now.duration_since(*noted) < UNDECIDED_GRACE => {
                EarlierAttempt::Undecided(format!("Postfix received an earlier attempt as {queue_id} and has not logged yet whether it queued it"))
            }
            Some(Injected { queued: None, .. }) => EarlierAttempt::NotTaken,
        }
    }
}

#[async_trait::async_trait]
impl InjectionRecord for InjectionLog {
    /// Waits until the log was read to its end after the question, then looks.
    async fn earlier_attempt(&self, message_id: &str) -> EarlierAttempt {
        if !self.following.load(Ordering::SeqCst) {
            return EarlierAttempt::Unknown;
        }
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut answered = self.answered.subscribe();
        let read = tokio::time::timeout(ANSWER_WAIT, answered.wait_for(|a| *a >= ticket)).await;
        if !self.following.load(Ordering::SeqCst) {
            return EarlierAttempt::Unknown;
        }
        if !matches!(read, Ok(Ok(_))) {
            return EarlierAttempt::Undecided("the mail log is still being read".into());
        }
        self.lookup(message_id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_injection_log_tells_what_postfix_did_with_a_message_id() {
        let log = InjectionLog::new(true);
        let t0 = Instant::now();
        log.note_message_id("QUEUED1".into(), "a@x".into(), t0);
        log.note_verdict("QUEUED1", &LogVerdict::Queued);
        log.note_message_id("REFUSED1".into(), "b@x".into(), t0);
        log.note_verdict("REFUSED1", &LogVerdict::Refused("reject: no".into()));
        log.note_message_id("HALF1".into(), "c@x".into(), t0);
        // A verdict about a queue id no Message-ID was noted with changes nothing.
        log.note_verdict("OTHER", &LogVerdict::Queued);
        assert_eq!(log.lookup("a@x", t0), EarlierAttempt::Queued("QUEUED1".into()));
        assert_eq!(log.lookup("b@x", t0), EarlierAttempt::NotTaken);
        assert_eq!(log.lookup("nobody@x", t0), EarlierAttempt::NotTaken);
        assert!(matches!(log.lookup("c@x", t0), EarlierAttempt::Undecided(_)));
        // cleanup had it, qmgr never logged it: the client went away before the final dot.
        assert_eq!(log.lookup("c@x", t0 + UNDECIDED_GRACE), EarlierAttempt::NotTaken);
        // Sent again, and queued this time: the newest queue id counts.
        log.note_message_id("HALF2".into(), "c@x".into(), t0);
        log.note_verdict("HALF1", &LogVerdict::Queued);
        assert!(matches!(log.lookup("c@x", t0), EarlierAttempt::Undecided(_)));
        log.note_verdict("HALF2", &LogVerdict::Queued);
        assert_eq!(log.lookup("c@x", t0), EarlierAttempt::Queued("HALF2".into()));

        // A question waits for a pass that read the log to its end after it was asked.
        let log = Arc::new(log);
        let asking = tokio::spawn({
            let log = log.clone();
            async move { log.earlier_attempt("a@x").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!asking.is_finished(), "answered before the log was read");
        let ticket = log.asked.load(Ordering::SeqCst);
        assert_eq!(ticket, 1);
        log.answer(ticket);
        assert_eq!(asking.await.unwrap(), EarlierAttempt::Queued("QUEUED1".into()));
        // No mail log followed: nothing to look in.
        log.set_following(false);
        assert_eq!(log.earlier_attempt("a@x").await, EarlierAttempt::Unknown);
    }
}
