//! The data the registry stores: events (the chained record), per-transaction state, the
//! outbox, quarantine entries and checkpoints, and the queries over them.
//!
//! Timestamps are stored as text: instants in UTC in one fixed, sortable form (see [`ts`]),
//! and the transaction instant as that UTC text plus its zone offset, so the bytes the chain
//! hashes survive a round trip through either database unchanged.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;

use crate::pec::types::{Instant, Recipient};

/// Formats an instant the way every table stores it: UTC, microseconds, `Z`
/// (`2026-01-31T09:05:00.000000Z`). Fixed width, so text order is time order.
pub fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a value written by [`ts`] (any RFC 3339 form is accepted).
pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `now - d`, saturating at the earliest representable instant.
pub fn before(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `now + d`, saturating at the latest representable instant.
pub fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What happened, as the registry names it (pec-format.md §7.4, "event type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A transport envelope (or other PEC message) arrived at the reception point.
    Reception,
    /// The access point accepted a message and issued the `accettazione`.
    Acceptance,
    /// The access point refused a message and issued the `non-accettazione`.
    NonAcceptance,
    /// The transport envelope left for the recipients' providers.
    EnvelopeSent,
    /// The reception point issued a `presa-in-carico`.
    TakeChargeEmitted,
    /// A `presa-in-carico` for one of our envelopes arrived (decisions.md 14).
    TakeChargeReceived,
    /// The delivery point stored the message and issued the `avvenuta-consegna`.
    Delivery,
    /// An `avvenuta-consegna` for one of our envelopes arrived (decisions.md 14).
    DeliveryReceiptReceived,
    /// The delivery point (or a bounce, decisions.md 13) produced an `errore-consegna`.
    NonDelivery,
    /// An `errore-consegna` for one of our envelopes arrived.
    NonDeliveryReceived,
    /// A `busta di anomalia` was produced.
    Anomaly,
    /// A virus was found (`rilevazione-virus` / non-acceptance or non-delivery for virus).
    Virus,
    /// The 12-hour `preavviso-errore-consegna` was sent.
    TimerNotice12h,
    /// The 24-hour `preavviso-errore-consegna` was sent.
    TimerNotice24h,
    /// A lost receipt was reproduced from the registry (decisions.md 11).
    ReceiptReproduced,
    /// The retention job removed the rows up to a checkpoint (details: `cut_seq`, `cutoff`).
    RetentionPurge,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::Reception,
        EventType::Acceptance,
        EventType::NonAcceptance,
        EventType::EnvelopeSent,
        EventType::TakeChargeEmitted,
        EventType::TakeChargeReceived,
        EventType::Delivery,
        EventType::DeliveryReceiptReceived,
        EventType::NonDelivery,
        EventType::NonDeliveryReceived,
        EventType::Anomaly,
        EventType::Virus,
        EventType::TimerNotice12h,
        EventType::TimerNotice24h,
        EventType::ReceiptReproduced,
        EventType::RetentionPurge,
    ];

    /// The stored token.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Reception => "reception",
            EventType::Acceptance => "acceptance",
            EventType::NonAcceptance => "non-acceptance",
            EventType::EnvelopeSent => "envelope-sent",
            EventType::TakeChargeEmitted => "take-charge-emitted",
            EventType::TakeChargeReceived => "take-charge-received",
            EventType::Delivery => "delivery",
            EventType::DeliveryReceiptReceived => "delivery-receipt-received",
            EventType::NonDelivery => "non-delivery",
            EventType::NonDeliveryReceived => "non-delivery-received",
            EventType::Anomaly => "anomaly",
            EventType::Virus => "virus",
            EventType::TimerNotice12h => "timer-notice-12h",
            EventType::TimerNotice24h => "timer-notice-24h",
            EventType::ReceiptReproduced => "receipt-reproduced",
            EventType::RetentionPurge => "retention-purge",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to append to the registry.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The transaction instant (decisions.md 6), in the provider's zone.
    pub event_time: Instant,
    pub event_type: EventType,
    /// The PEC identifier of the transaction, without angle brackets.
    pub pec_id: Option<String>,
    /// The client's Message-ID of the original, without angle brackets.
    pub client_msgid: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub subject: Option<String>,
    /// Identifiers of the messages this event generated (receipts, envelopes, notices).
    pub generated_ids: Vec<String>,
    /// The provider concerned (the sending provider, or the one a receipt came from).
    pub provider: Option<String>,
    /// The Postfix queue id of the message the event is about.
    pub queue_id: Option<String>,
    /// Anything else worth keeping (a JSON object; never message content).
    pub details: serde_json::Value,
}

impl NewEvent {
    /// An event with only the instant and type set; fill the rest with struct update syntax
    /// or field assignment.
    pub fn new(event_time: Instant, event_type: EventType) -> NewEvent {
        NewEvent {
            event_time,
            event_type,
            pec_id: None,
            client_msgid: None,
            sender: None,
            recipients: Vec::new(),
            subject: None,
            generated_ids: Vec::new(),
            provider: None,
            queue_id: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }
}

/// One stored registry row, exactly as stored: every field here goes into the row hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub seq: i64,
    /// When pecora wrote the row ([`ts`] form).
    pub recorded_at: String,
    /// The transaction instant in UTC ([`ts`] form).
    pub event_time: String,
    /// The zone offset of the transaction instant (`+01:00`).
    pub event_zone: String,
    pub event_type: String,
    pub pec_id: Option<String>,
    pub client_msgid: Option<String>,
    pub sender: Option<String>,
    /// JSON array of strings.
    pub recipients: String,
    pub subject: Option<String>,
    /// JSON array of strings.
    pub generated_ids: String,
    pub provider: Option<String>,
    pub queue_id: Option<String>,
    /// The host that wrote the row.
    pub host: String,
    /// JSON object.
    pub details: String,
    pub idempotency_key: Option<String>,
    /// Hex SHA-256 of the previous row (64 zeros for the first row ever).
    pub prev_hash: String,
    /// Hex SHA-256 of this row (see `chain::row_hash`).
    pub hash: String,
}

impl EventRow {
    /// The recipients as a list (empty when the stored JSON is not a list of strings).
    pub fn recipient_list(&self) -> Vec<String> {
        serde_json::from_str(&self.recipients).unwrap_or_default()
    }

    pub fn generated_id_list(&self) -> Vec<String> {
        serde_json::from_str(&self.generated_ids).unwrap_or_default()
    }

    /// The transaction instant in its own zone, when the stored text is well formed.
    pub fn instant(&self) -> Option<Instant> {
        let utc = parse_ts(&self.event_time)?;
        let zone: FixedOffset = self.event_zone.parse().ok()?;
        Some(utc.with_timezone(&zone))
    }

    pub fn kind(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }
}

/// A change to the per-transaction state, applied in the same database transaction as the
/// event. Every timestamp is set once: the first write wins, so replays change nothing.
#[derive(Debug, Clone)]
pub enum StateUpdate {
    /// The access point accepted the message: creates the transaction and its recipients.
    Accepted {
        pec_id: String,
        client_msgid: Option<String>,
        sender: String,
        subject: Option<String>,
        queue_id: Option<String>,
        event_time: Instant,
        recipients: Vec<Recipient>,
    },
    /// The transport envelope was handed on; starts the 12 h / 24 h timers.
    EnvelopeSent { pec_id: String, at: DateTime<Utc> },
    TakenInCharge {
        pec_id: String,
        recipient: String,
        at: DateTime<Utc>,
    },
    Delivered {
        pec_id: String,
        recipient: String,
        at: DateTime<Utc>,
    },
    Failed {
        pec_id: String,
        recipient: String,
        at: DateTime<Utc>,
        reason: String,
    },
    NoticeSent {
        pec_id: String,
        recipient: String,
        notice: NoticeKind,
        at: DateTime<Utc>,
    },
}

/// The two timer notices of pec-format.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum NoticeKind {
    #[serde(rename = "12h")]
    TwelveHours,
    #[serde(rename = "24h")]
    TwentyFourHours,
}

/// A message pecora generated, to be submitted by the outbox worker.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    /// What it is (`accettazione`, `posta-certificata`, `preavviso-errore-consegna`, …).
    pub kind: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub message: Vec<u8>,
    /// `Some(queue id)`: keep the message held until Postfix confirms that queue id
    /// (decisions.md 18); `None`: submit at once.
    pub hold_for_queue_id: Option<String>,
}

/// Where an outbox message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Waiting for the queue confirmation of decisions.md 18.
    Held,
    /// Waiting for (or being tried by) a worker.
    Pending,
    Sent,
    /// Given up: a permanent refusal or too many attempts.
    Failed,
    /// Never to be sent (Postfix refused the message after all).
    Cancelled,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Held => "held",
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxStatus> {
        [
            OutboxStatus::Held,
            OutboxStatus::Pending,
            OutboxStatus::Sent,
            OutboxStatus::Failed,
            OutboxStatus::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A stored outbox message.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxMessage {
    pub id: i64,
    /// The registry row recorded with it.
    pub event_seq: i64,
    pub kind: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    #[serde(skip)]
    pub message: Vec<u8>,
    pub status: OutboxStatus,
    pub queue_id: Option<String>,
    /// Claims so far (a crashed worker's claim counts).
    pub attempts: i64,
    pub next_attempt_at: String,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    /// The row's seal (crate::store::seal); `None` for rows queued before seals.
    #[serde(skip)]
    pub seal: Option<String>,
}

/// Everything [`crate::store::Store::record`] writes in one database transaction.
#[derive(Debug, Clone)]
pub struct Record {
    pub event: NewEvent,
    pub outbox: Vec<NewOutboxMessage>,
    pub state: Vec<StateUpdate>,
    /// `acc:<queue-id>`, `consegna:<pec-id>:<rcpt>`, …: when a row with this key exists,
    /// nothing is written and the existing result is returned.
    pub idempotency_key: Option<String>,
}

/// The result of [`crate::store::Store::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOutcome {
    /// The registry row (the new one, or the one recorded earlier under the same key).
    pub seq: i64,
    /// The outbox messages of that row, in the order given.
    pub outbox_ids: Vec<i64>,
    /// True when the key was already recorded and nothing was written now.
    pub replayed: bool,
    /// State updates that matched no transaction or recipient (0 on replay).
    pub unmatched_updates: usize,
}

/// A recipient due for a timer notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueNotice {
    pub pec_id: String,
    pub recipient: String,
    pub client_msgid: Option<String>,
    pub sender: String,
    pub subject: Option<String>,
    /// The transaction instant (UTC text and zone, as in [`EventRow`]).
    pub event_time: String,
    pub event_zone: String,
    pub envelope_sent_at: String,
}

/// The state of one transaction and its recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionState {
    pub pec_id: String,
    pub client_msgid: Option<String>,
    pub sender: String,
    pub subject: Option<String>,
    pub queue_id: Option<String>,
    pub event_time: String,
    pub event_zone: String,
    pub accepted_at: Option<String>,
    pub envelope_sent_at: Option<String>,
    pub recipients: Vec<RecipientState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientState {
    pub recipient: String,
    pub recipient_type: String,
    pub taken_in_charge_at: Option<String>,
    pub delivered_at: Option<String>,
    pub failed_at: Option<String>,
    pub failure: Option<String>,
    pub notice_12h_at: Option<String>,
    pub notice_24h_at: Option<String>,
}

/// A message kept aside (virus, anomaly) for the retention period.
#[derive(Debug, Clone)]
pub struct NewQuarantine {
    pub pec_id: Option<String>,
    pub reason: String,
    /// A file holding the message (removed by the retention job) …
    pub path: Option<String>,
    /// … or the bytes themselves.
    pub content: Option<Vec<u8>>,
}

/// A registry search (`pecora log search`). Text filters are exact except `subject`
/// (substring); address filters ignore case. Dates bound the transaction instant.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub pec_id: Option<String>,
    pub client_msgid: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub subject: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// At most this many rows, newest first.
    pub limit: usize,
}

/// What the retention job removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Rows up to and including this seq were removed (0: nothing).
    pub cut_seq: i64,
    pub events: u64,
    pub checkpoints: u64,
    pub outbox: u64,
    pub transactions: u64,
    pub quarantine: u64,
    /// Quarantine files whose rows were removed (the store deletes them).
    #[serde(skip)]
    pub quarantine_paths: Vec<String>,
}

/// The JSON text of a list of strings (never fails).
pub(crate) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// Replaces NUL characters, which PostgreSQL text refuses, so both backends store (and
/// hash) the same text.
pub(crate) fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

pub(crate) fn clean_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_is_fixed_width_and_round_trips() {
        let t = DateTime::parse_from_rfc3339("2026-01-31T10:05:00.5+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ts(t), "2026-01-31T09:05:00.500000Z");
        assert_eq!(parse_ts(&ts(t)), Some(t));
    }

    #[test]
    fn event_types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("nope"), None);
    }

    #[test]
    fn nul_is_replaced() {
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
    }
}
