//! SQL shared by both backends. Statements are written with SQLite's `?N` parameters;
//! [`pg`] turns them into PostgreSQL's `$N`. Row decoding goes through [`Cols`] so both
//! drivers share one mapping per type.

use super::StoreError;
use super::checkpoint::Checkpoint;
use super::model::{DueNotice, EventRow, OutboxMessage, OutboxStatus, RecipientState, SearchQuery};

/// `?N` → `$N` (no statement here contains a literal `?`).
pub fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

pub const EVENT_COLS: &str = "seq, recorded_at, event_time, event_zone, event_type, pec_id, client_msgid, sender, \
     recipients, subject, generated_ids, provider, queue_id, host, details, idempotency_key, prev_hash, hash";

pub const INSERT_EVENT: &str = "INSERT INTO registry_events (seq, recorded_at, event_time, event_zone, event_type, \
     pec_id, client_msgid, sender, recipients, subject, generated_ids, provider, queue_id, host, details, \
     idempotency_key, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

pub const UPDATE_HEAD: &str = "UPDATE registry_chain_head SET seq = ?1, hash = ?2 WHERE id = 1";
pub const SELECT_HEAD: &str = "SELECT seq, hash FROM registry_chain_head WHERE id = 1";
pub const EVENT_BY_KEY: &str = "SELECT seq FROM registry_events WHERE idempotency_key = ?1";
pub const OUTBOX_IDS_OF_EVENT: &str =
    "SELECT id FROM outbox_messages WHERE event_seq = ?1 ORDER BY id";

pub fn events_after() -> String {
    format!("SELECT {EVENT_COLS} FROM registry_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
}
pub fn event_by_seq() -> String {
    format!("SELECT {EVENT_COLS} FROM registry_events WHERE seq = ?1")
}
pub fn events_by_identifier() -> String {
    format!(
        "SELECT {EVENT_COLS} FROM registry_events WHERE pec_id = ?1 OR client_msgid = ?1 OR queue_id = ?1 \
         OR generated_ids LIKE ?2 ESCAPE '\\' ORDER BY seq"
    )
}
pub fn events_of_pec_id() -> String {
    format!("SELECT {EVENT_COLS} FROM registry_events WHERE pec_id = ?1 ORDER BY seq")
}
/// Rows recorded under one Postfix queue id, exactly (no other column is compared).
pub fn events_of_queue_id() -> String {
    format!("SELECT {EVENT_COLS} FROM registry_events WHERE queue_id = ?1 ORDER BY seq")
}
pub fn events_of_type_between() -> String {
    format!(
        "SELECT {EVENT_COLS} FROM registry_events WHERE recorded_at >= ?1 AND recorded_at < ?2 \
         AND event_type = ?3 AND seq > ?4 ORDER BY seq LIMIT ?5"
    )
}
pub const FIRST_SEQ_SINCE: &str = "SELECT MIN(seq) FROM registry_events WHERE recorded_at >= ?1";

pub const CHECKPOINT_COLS: &str = "id, seq, head_hash, created_at, host, content, cms";
pub const INSERT_CHECKPOINT: &str = "INSERT INTO registry_checkpoints (seq, head_hash, created_at, host, content, cms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id";
pub fn checkpoints() -> String {
    format!("SELECT {CHECKPOINT_COLS} FROM registry_checkpoints ORDER BY seq, id")
}
pub fn latest_checkpoint() -> String {
    format!("SELECT {CHECKPOINT_COLS} FROM registry_checkpoints ORDER BY seq DESC, id DESC LIMIT 1")
}

pub const OUTBOX_COLS: &str = "id, event_seq, kind, mail_from, rcpts, message, status, queue_id, attempts, \
     next_attempt_at, lease_owner, lease_until, last_error, created_at, sent_at, seal";
pub const INSERT_OUTBOX: &str = "INSERT INTO outbox_messages (event_seq, kind, mail_from, rcpts, message, status, \
     queue_id, attempts, next_attempt_at, created_at, seal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8, ?9) RETURNING id";
/// [`OUTBOX_COLS`] with an empty `message`: for listings, which must not load every
/// message (a completa receipt carries the original, up to 50 MB) at once.
pub fn outbox_cols_without_message() -> String {
    OUTBOX_COLS.replacen("message,", "substr(message, 1, 0),", 1)
}
/// The rows still to be injected, without their messages.
pub fn outbox_queued() -> String {
    format!("SELECT {} FROM outbox_messages WHERE status IN ('pending', 'held') ORDER BY id", outbox_cols_without_message())
}
/// `?1` the earliest creation time. The rows the worker refused for their seal: its
/// `last_error` begins so (crate::store::outbox).
pub fn outbox_refused_since() -> String {
    format!(
        "SELECT {} FROM outbox_messages WHERE status = 'failed' AND created_at >= ?1 \
         AND last_error LIKE 'not injected: %' ORDER BY id",
        outbox_cols_without_message()
    )
}
/// `?1` status, `?2` limit: the newest first.
pub fn outbox_with_status() -> String {
    format!("SELECT {} FROM outbox_messages WHERE status = ?1 ORDER BY id DESC LIMIT ?2", outbox_cols_without_message())
}
/// A failed row queued again by hand (`pecora outbox retry`): due at `?2`, sealed `?3`.
/// Its attempts restart at 1, so the worker's first claim asks the mail log whether an
/// earlier attempt reached Postfix before submitting it again.
pub const RETRY_FAILED: &str = "UPDATE outbox_messages SET status = 'pending', attempts = 1, next_attempt_at = ?2, \
     last_error = NULL, lease_owner = NULL, lease_until = NULL, seal = ?3 WHERE id = ?1 AND status = 'failed'";
pub const SET_SEAL: &str = "UPDATE outbox_messages SET seal = ?2 WHERE id = ?1 AND seal IS NULL";
/// `?1` owner, `?2` lease end, `?3` now, `?4` limit; `{lock}` is empty on SQLite and
/// `FOR UPDATE SKIP LOCKED` on PostgreSQL.
pub fn claim(lock: &str) -> String {
    format!(
        "UPDATE outbox_messages SET lease_owner = ?1, lease_until = ?2, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM outbox_messages WHERE status = 'pending' AND next_attempt_at <= ?3 \
         AND (lease_until IS NULL OR lease_until <= ?3) ORDER BY next_attempt_at, id LIMIT ?4 {lock}) \
         RETURNING {OUTBOX_COLS}"
    )
}
pub const MARK_SENT: &str = "UPDATE outbox_messages SET status = 'sent', sent_at = ?3, lease_owner = NULL, \
     lease_until = NULL, last_error = NULL WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'";
pub const MARK_RETRY: &str = "UPDATE outbox_messages SET next_attempt_at = ?3, last_error = ?4, lease_owner = NULL, \
     lease_until = NULL WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'";
pub const MARK_FAILED: &str = "UPDATE outbox_messages SET status = 'failed', last_error = ?3, lease_owner = NULL, \
     lease_until = NULL WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'";
/// Held rows are one host's: Postfix queue ids are unique per host only, and each host
/// follows its own mail log (`?3`, `?1` in HELD_QUEUE_IDS: the host that recorded the row's
/// event, looked up by its primary key for each held row, never by scanning the events).
pub const RELEASE_HELD: &str = "UPDATE outbox_messages SET status = 'pending', next_attempt_at = ?2 WHERE status = 'held' AND queue_id = ?1 \
     AND EXISTS (SELECT 1 FROM registry_events e WHERE e.seq = outbox_messages.event_seq AND e.host = ?3)";
pub const HELD_QUEUE_IDS: &str = "SELECT queue_id, MIN(created_at) FROM outbox_messages \
     WHERE status = 'held' AND queue_id IS NOT NULL AND EXISTS (SELECT 1 FROM registry_events e WHERE e.seq = outbox_messages.event_seq AND e.host = ?1) \
     GROUP BY queue_id ORDER BY 2";
/// Held rows by the host that recorded their event: how many, and the oldest's creation.
pub const HELD_BY_HOST: &str = "SELECT e.host, COUNT(*), MIN(o.created_at) FROM outbox_messages o \
     JOIN registry_events e ON e.seq = o.event_seq WHERE o.status = 'held' GROUP BY e.host ORDER BY 1";
pub const RELEASE_OWN_LEASES: &str = "UPDATE outbox_messages SET lease_owner = NULL, lease_until = NULL \
     WHERE status = 'pending' AND lease_owner = ?1";
pub const CANCEL_HELD: &str = "UPDATE outbox_messages SET status = 'cancelled', last_error = ?2 WHERE status = 'held' AND queue_id = ?1 \
     AND EXISTS (SELECT 1 FROM registry_events e WHERE e.seq = outbox_messages.event_seq AND e.host = ?3)";
pub fn outbox_by_id() -> String {
    format!("SELECT {OUTBOX_COLS} FROM outbox_messages WHERE id = ?1")
}

pub const INSERT_TRANSACTION: &str = "INSERT INTO transaction_state (pec_id, client_msgid, sender, subject, queue_id, \
     event_time, event_zone, accepted_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, ?8) \
     ON CONFLICT (pec_id) DO NOTHING";
pub const INSERT_RECIPIENT: &str = "INSERT INTO recipient_state (pec_id, recipient, recipient_type) VALUES (?1, ?2, ?3) \
     ON CONFLICT (pec_id, recipient) DO NOTHING";
pub const ENVELOPE_SENT: &str = "UPDATE transaction_state SET envelope_sent_at = COALESCE(envelope_sent_at, ?2), \
     updated_at = ?2 WHERE pec_id = ?1";
/// The recipient-state column set once by an update (`{col}` is one of a fixed list).
pub fn recipient_stamp(col: &str) -> String {
    format!(
        "UPDATE recipient_state SET {col} = COALESCE({col}, ?3) WHERE pec_id = ?1 AND lower(recipient) = lower(?2)"
    )
}
pub const RECIPIENT_FAILED: &str = "UPDATE recipient_state SET failed_at = COALESCE(failed_at, ?3), \
     failure = COALESCE(failure, ?4) WHERE pec_id = ?1 AND lower(recipient) = lower(?2)";
pub const TRANSACTION_BY_ID: &str = "SELECT pec_id, client_msgid, sender, subject, queue_id, event_time, event_zone, \
     accepted_at, envelope_sent_at FROM transaction_state WHERE pec_id = ?1";
pub const RECIPIENTS_OF: &str = "SELECT recipient, recipient_type, taken_in_charge_at, delivered_at, failed_at, \
     failure, notice_12h_at, notice_24h_at FROM recipient_state WHERE pec_id = ?1 ORDER BY recipient";

/// Recipients due for a notice (`?1`: sent at or before). 12 h: no take-charge, no
/// delivery, no failure, neither notice yet. 24 h: no delivery, no failure, no 24 h notice.
pub fn due_notices(twelve: bool) -> String {
    let cond = if twelve {
        "r.taken_in_charge_at IS NULL AND r.notice_12h_at IS NULL AND r.notice_24h_at IS NULL"
    } else {
        "r.notice_24h_at IS NULL"
    };
    format!(
        "SELECT t.pec_id, r.recipient, t.client_msgid, t.sender, t.subject, t.event_time, t.event_zone, \
         t.envelope_sent_at FROM recipient_state r JOIN transaction_state t ON t.pec_id = r.pec_id \
         WHERE r.recipient_type = 'certificato' AND t.envelope_sent_at IS NOT NULL AND t.envelope_sent_at <= ?1 \
         AND r.delivered_at IS NULL AND r.failed_at IS NULL AND {cond} \
         ORDER BY t.envelope_sent_at, t.pec_id, r.recipient"
    )
}

pub const INSERT_QUARANTINE: &str = "INSERT INTO quarantine_entries (pec_id, reason, path, content, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id";

pub const PURGE_EVENTS: &str = "DELETE FROM registry_events WHERE seq <= ?1";
pub const PURGE_CHECKPOINTS: &str = "DELETE FROM registry_checkpoints WHERE seq < ?1";
pub const PURGE_OUTBOX: &str = "DELETE FROM outbox_messages WHERE event_seq <= ?1 AND status IN ('sent', 'failed', 'cancelled')";
pub const PURGE_RECIPIENTS: &str = "DELETE FROM recipient_state WHERE pec_id IN (SELECT pec_id FROM transaction_state WHERE created_at < ?1)";
pub const PURGE_TRANSACTIONS: &str = "DELETE FROM transaction_state WHERE created_at < ?1";
pub const QUARANTINE_PATHS_BEFORE: &str =
    "SELECT path FROM quarantine_entries WHERE created_at < ?1 AND path IS NOT NULL";
pub const PURGE_QUARANTINE: &str = "DELETE FROM quarantine_entries WHERE created_at < ?1";

/// A bound parameter of a dynamically built statement.
#[derive(Debug, Clone)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `LIKE` pattern that finds `value` as an element of a JSON list of strings.
pub fn json_element_pattern(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    format!("%{}%", like_escape(&quoted))
}

/// The search statement and its parameters.
pub fn search(q: &SearchQuery) -> (String, Vec<Param>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    let mut add = |cond: &str, p: Param| {
        params.push(p);
        conds.push(cond.replace("?", &format!("?{}", params.len())));
    };
    let bare = |s: &str| {
        s.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string()
    };
    if let Some(v) = &q.pec_id {
        add("pec_id = ?", Param::Text(bare(v)));
    }
    if let Some(v) = &q.client_msgid {
        add("client_msgid = ?", Param::Text(bare(v)));
    }
    if let Some(v) = &q.sender {
        add(
            "lower(sender) = lower(?)",
            Param::Text(v.trim().to_string()),
        );
    }
    if let Some(v) = &q.recipient {
        add(
            "lower(recipients) LIKE ? ESCAPE '\\'",
            Param::Text(json_element_pattern(&v.trim().to_lowercase())),
        );
    }
    if let Some(v) = &q.subject {
        add(
            "lower(subject) LIKE ? ESCAPE '\\'",
            Param::Text(format!("%{}%", like_escape(&v.to_lowercase()))),
        );
    }
    if let Some(t) = q.from {
        add("event_time >= ?", Param::Text(super::model::ts(t)));
    }
    if let Some(t) = q.until {
        add("event_time < ?", Param::Text(super::model::ts(t)));
    }
    let limit = i64::try_from(q.limit.max(1)).unwrap_or(i64::MAX);
    params.push(Param::Int(limit));
    let wh = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    (
        format!(
            "SELECT {EVENT_COLS} FROM registry_events {wh} ORDER BY seq DESC LIMIT ?{}",
            params.len()
        ),
        params,
    )
}

/// Column access common to both drivers.
pub trait Cols {
    fn i64_at(&self, i: usize) -> Result<i64, StoreError>;
    fn text_at(&self, i: usize) -> Result<String, StoreError>;
    fn opt_at(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn bytes_at(&self, i: usize) -> Result<Vec<u8>, StoreError>;
}

pub fn event_row(r: &impl Cols) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        seq: r.i64_at(0)?,
        recorded_at: r.text_at(1)?,
        event_time: r.text_at(2)?,
        event_zone: r.text_at(3)?,
        event_type: r.text_at(4)?,
        pec_id: r.opt_at(5)?,
        client_msgid: r.opt_at(6)?,
        sender: r.opt_at(7)?,
        recipients: r.text_at(8)?,
        subject: r.opt_at(9)?,
        generated_ids: r.text_at(10)?,
        provider: r.opt_at(11)?,
        queue_id: r.opt_at(12)?,
        host: r.text_at(13)?,
        details: r.text_at(14)?,
        idempotency_key: r.opt_at(15)?,
        prev_hash: r.text_at(16)?,
        hash: r.text_at(17)?,
    })
}

/// The parameters of [`INSERT_EVENT`], in order.
pub fn event_params(r: &EventRow) -> Vec<Option<String>> {
    vec![
        None, // seq, bound separately as an integer
        Some(r.recorded_at.clone()),
        Some(r.event_time.clone()),
        Some(r.event_zone.clone()),
        Some(r.event_type.clone()),
        r.pec_id.clone(),
        r.client_msgid.clone(),
        r.sender.clone(),
        Some(r.recipients.clone()),
        r.subject.clone(),
        Some(r.generated_ids.clone()),
        r.provider.clone(),
        r.queue_id.clone(),
        Some(r.host.clone()),
        Some(r.details.clone()),
        r.idempotency_key.clone(),
        Some(r.prev_hash.clone()),
        Some(r.hash.clone()),
    ]
}

pub fn checkpoint_row(r: &impl Cols) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        id: r.i64_at(0)?,
        seq: r.i64_at(1)?,
        head_hash: r.text_at(2)?,
        created_at: r.text_at(3)?,
        host: r.text_at(4)?,
        content: r.text_at(5)?,
        cms: r.bytes_at(6)?,
    })
}

pub fn outbox_row(r: &impl Cols) -> Result<OutboxMessage, StoreError> {
    let status = r.text_at(6)?;
    Ok(OutboxMessage {
        id: r.i64_at(0)?,
        event_seq: r.i64_at(1)?,
        kind: r.text_at(2)?,
        mail_from: r.text_at(3)?,
        rcpts: serde_json::from_str(&r.text_at(4)?).map_err(|e| StoreError::Corrupt {
            what: "outbox_messages.rcpts",
            detail: e.to_string(),
        })?,
        message: r.bytes_at(5)?,
        status: OutboxStatus::parse(&status).ok_or(StoreError::Corrupt {
            what: "outbox_messages.status",
            detail: status,
        })?,
        queue_id: r.opt_at(7)?,
        attempts: r.i64_at(8)?,
        next_attempt_at: r.text_at(9)?,
        lease_owner: r.opt_at(10)?,
        lease_until: r.opt_at(11)?,
        last_error: r.opt_at(12)?,
        created_at: r.text_at(13)?,
        sent_at: r.opt_at(14)?,
        seal: r.opt_at(15)?,
    })
}

pub fn due_row(r: &impl Cols) -> Result<DueNotice, StoreError> {
    Ok(DueNotice {
        pec_id: r.text_at(0)?,
        recipient: r.text_at(1)?,
        client_msgid: r.opt_at(2)?,
        sender: r.text_at(3)?,
        subject: r.opt_at(4)?,
        event_time: r.text_at(5)?,
        event_zone: r.text_at(6)?,
        envelope_sent_at: r.text_at(7)?,
    })
}

pub fn recipient_row(r: &impl Cols) -> Result<RecipientState, StoreError> {
    Ok(RecipientState {
        recipient: r.text_at(0)?,
        recipient_type: r.text_at(1)?,
        taken_in_charge_at: r.opt_at(2)?,
        delivered_at: r.opt_at(3)?,
        failed_at: r.opt_at(4)?,
        failure: r.opt_at(5)?,
        notice_12h_at: r.opt_at(6)?,
        notice_24h_at: r.opt_at(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_convert() {
        assert_eq!(pg("a = ?1 AND b = ?12"), "a = $1 AND b = $12");
    }

    #[test]
    fn search_numbers_parameters_in_order() {
        let q = SearchQuery {
            sender: Some("A@B.it".into()),
            subject: Some("50%_off".into()),
            limit: 5,
            ..Default::default()
        };
        let (sql, params) = search(&q);
        assert!(sql.contains("lower(sender) = lower(?1)"), "{sql}");
        assert!(sql.contains("lower(subject) LIKE ?2"), "{sql}");
        assert!(sql.ends_with("LIMIT ?3"), "{sql}");
        assert!(matches!(&params[1], Param::Text(s) if s == "%50\\%\\_off%"));
    }
}
