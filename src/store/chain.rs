//! The hash chain over the registry rows, and its verification.
//!
//! Each row's hash is SHA-256 over an unambiguous encoding of every column of the row
//! (fixed order; each field tagged present/absent and length-prefixed), including its
//! sequence number and the previous row's hash. Changing any column changes the hash;
//! removing or inserting a row breaks the sequence or the link; recomputing every hash after
//! an edit is caught by a signed checkpoint that the chain must pass through.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use openssl::sha::Sha256;

use super::model::{EventRow, EventType, NewEvent, clean, clean_opt, json_list, ts};

/// The `prev_hash` of the first row ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation: a hash of anything else can never be taken for a row hash.
const DOMAIN: &[u8] = b"pecora-registry-event-v1\0";

fn put(h: &mut Sha256, field: Option<&[u8]>) {
    match field {
        None => h.update(&[0]),
        Some(b) => {
            h.update(&[1]);
            h.update(&(b.len() as u64).to_be_bytes());
            h.update(b);
        }
    }
}

/// The hex SHA-256 of a row, over every column except `hash` itself.
pub fn row_hash(r: &EventRow) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    put(&mut h, Some(&r.seq.to_be_bytes()));
    let s = |v: &String| Some(v.as_bytes().to_vec());
    let o = |v: &Option<String>| v.as_ref().map(|v| v.as_bytes().to_vec());
    for field in [
        s(&r.recorded_at),
        s(&r.event_time),
        s(&r.event_zone),
        s(&r.event_type),
        o(&r.pec_id),
        o(&r.client_msgid),
        o(&r.sender),
        s(&r.recipients),
        o(&r.subject),
        s(&r.generated_ids),
        o(&r.provider),
        o(&r.queue_id),
        s(&r.host),
        s(&r.details),
        o(&r.idempotency_key),
        s(&r.prev_hash),
    ] {
        put(&mut h, field.as_deref());
    }
    hex::encode(h.finish())
}

/// Builds the row that follows `(prev_seq, prev_hash)`, hash included.
pub fn seal(
    ev: &NewEvent,
    prev_seq: i64,
    prev_hash: &str,
    recorded_at: DateTime<Utc>,
    host: &str,
    idempotency_key: Option<&str>,
) -> EventRow {
    let strip = |v: &Option<String>| {
        clean_opt(v).map(|s| {
            s.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    };
    let list = |v: &[String]| json_list(&v.iter().map(|s| clean(s)).collect::<Vec<_>>());
    let mut row = EventRow {
        seq: prev_seq + 1,
        recorded_at: ts(recorded_at),
        event_time: ts(ev.event_time.with_timezone(&Utc)),
        event_zone: ev.event_time.format("%:z").to_string(),
        event_type: ev.event_type.as_str().to_string(),
        pec_id: strip(&ev.pec_id),
        client_msgid: strip(&ev.client_msgid),
        sender: clean_opt(&ev.sender),
        recipients: list(&ev.recipients),
        subject: clean_opt(&ev.subject),
        generated_ids: list(&ev.generated_ids),
        provider: clean_opt(&ev.provider),
        queue_id: clean_opt(&ev.queue_id),
        host: clean(host),
        details: clean(&ev.details.to_string()),
        idempotency_key: idempotency_key.map(clean),
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    row
}

/// Where a problem was found, for the operator: the first row that was changed, inserted
/// or deleted, or the checkpoint that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Problem {
    /// The row's content no longer matches its hash.
    RowChanged { seq: i64 },
    /// Rows `first..=last` are missing.
    RowsDeleted { first: i64, last: i64 },
    /// The row does not link to the one before it: it was inserted, or the row before it
    /// was replaced.
    RowInserted { seq: i64 },
    /// The chain passes every local check but disagrees with a signed checkpoint: a row in
    /// `first..=last` was changed, inserted or deleted and every later hash recomputed.
    ChainRewritten {
        first: i64,
        last: i64,
        checkpoint_seq: i64,
    },
    /// The oldest retained rows do not start at a checkpoint written by the retention job.
    HeadMissing { first_retained: i64 },
    /// A checkpoint whose signature or content does not hold.
    CheckpointForged { source: String, reason: String },
    /// Two validly signed checkpoints name different hashes for one row.
    CheckpointsDisagree { seq: i64 },
    /// The stored chain head disagrees with the last row.
    HeadRecordMismatch { head_seq: i64, last_seq: i64 },
}

impl Problem {
    /// The first row concerned, when one can be named.
    pub fn first_row(&self) -> Option<i64> {
        match self {
            Problem::RowChanged { seq } | Problem::RowInserted { seq } => Some(*seq),
            Problem::RowsDeleted { first, .. } | Problem::ChainRewritten { first, .. } => {
                Some(*first)
            }
            Problem::HeadMissing { first_retained } => Some((*first_retained - 1).max(1)),
            Problem::CheckpointsDisagree { seq } => Some(*seq),
            Problem::HeadRecordMismatch { head_seq, last_seq } => {
                Some((*head_seq).min(*last_seq) + 1)
            }
            Problem::CheckpointForged { .. } => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::RowChanged { seq } => write!(
                f,
                "row {seq} was changed (its hash does not match its content)"
            ),
            Problem::RowsDeleted { first, last } if first == last => {
                write!(f, "row {first} was deleted")
            }
            Problem::RowsDeleted { first, last } => {
                write!(f, "rows {first} to {last} were deleted")
            }
            Problem::RowInserted { seq } => write!(
                f,
                "row {seq} does not follow the row before it: it was inserted, or row {} was replaced",
                seq - 1
            ),
            Problem::ChainRewritten {
                first,
                last,
                checkpoint_seq,
            } => write!(
                f,
                "a row between {first} and {last} was changed, inserted or deleted and the later hashes recomputed: \
                 the signed checkpoint at row {checkpoint_seq} does not match"
            ),
            Problem::HeadMissing { first_retained } => write!(
                f,
                "rows before {first_retained} are missing and no retention purge with a signed checkpoint accounts for them"
            ),
            Problem::CheckpointForged { source, reason } => {
                write!(f, "checkpoint {source} does not hold: {reason}")
            }
            Problem::CheckpointsDisagree { seq } => {
                write!(
                    f,
                    "two signed checkpoints name different hashes for row {seq}"
                )
            }
            Problem::HeadRecordMismatch { head_seq, last_seq } => write!(
                f,
                "the chain head records row {head_seq} but the last row is {last_seq}: rows were deleted or added outside pecora"
            ),
        }
    }
}

/// A checkpoint whose signature has been checked (or, without a certificate, taken as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedPoint {
    pub seq: i64,
    pub hash: String,
    pub source: String,
}

/// Walks rows in sequence order and reports the first problem.
pub struct Walker {
    expected_seq: i64,
    prev_hash: String,
    /// Signed checkpoints by seq (only those at or after the anchor).
    points: BTreeMap<i64, TrustedPoint>,
    last_point_seq: i64,
    /// The largest `cut_seq` named by a retention-purge row.
    pub purge_cut: Option<i64>,
    pub rows: u64,
    pub last_seq: i64,
    pub last_hash: String,
    pub problem: Option<Problem>,
}

impl Walker {
    /// Starts after `(anchor_seq, anchor_hash)`.
    pub fn new(anchor_seq: i64, anchor_hash: &str, points: BTreeMap<i64, TrustedPoint>) -> Walker {
        Walker {
            expected_seq: anchor_seq + 1,
            prev_hash: anchor_hash.to_string(),
            points,
            last_point_seq: anchor_seq,
            purge_cut: None,
            rows: 0,
            last_seq: anchor_seq,
            last_hash: anchor_hash.to_string(),
            problem: None,
        }
    }

    /// Checks one row; returns false once a problem was found (stop feeding rows then).
    pub fn feed(&mut self, r: &EventRow) -> bool {
        if self.problem.is_some() {
            return false;
        }
        self.rows += 1;
        let problem = if r.seq > self.expected_seq {
            // A checkpoint inside the gap would name the same rows; the gap is the news.
            Some(Problem::RowsDeleted {
                first: self.expected_seq,
                last: r.seq - 1,
            })
        } else if r.seq < self.expected_seq {
            Some(Problem::RowInserted { seq: r.seq })
        } else if row_hash(r) != r.hash {
            // A row renumbered by one around an insertion or a deletion still hashes with
            // its old number: name the inserted or deleted row rather than this one.
            let renumbered = |seq: i64| row_hash(&EventRow { seq, ..r.clone() }) == r.hash;
            if renumbered(r.seq - 1) {
                Some(Problem::RowInserted { seq: r.seq - 1 })
            } else if renumbered(r.seq + 1) {
                Some(Problem::RowsDeleted {
                    first: r.seq,
                    last: r.seq,
                })
            } else {
                Some(Problem::RowChanged { seq: r.seq })
            }
        } else if r.prev_hash != self.prev_hash {
            Some(Problem::RowInserted { seq: r.seq })
        } else {
            match self.points.get(&r.seq) {
                Some(p) if p.hash != r.hash => Some(Problem::ChainRewritten {
                    first: self.last_point_seq + 1,
                    last: r.seq,
                    checkpoint_seq: r.seq,
                }),
                Some(_) => {
                    self.last_point_seq = r.seq;
                    None
                }
                None => None,
            }
        };
        if let Some(p) = problem {
            self.problem = Some(p);
            return false;
        }
        if r.event_type == EventType::RetentionPurge.as_str() {
            let cut = serde_json::from_str::<serde_json::Value>(&r.details)
                .ok()
                .and_then(|d| d.get("cut_seq").and_then(serde_json::Value::as_i64));
            if let Some(cut) = cut {
                self.purge_cut = Some(self.purge_cut.map_or(cut, |c| c.max(cut)));
            }
        }
        self.expected_seq = r.seq + 1;
        self.prev_hash = r.hash.clone();
        self.last_seq = r.seq;
        self.last_hash = r.hash.clone();
        true
    }

    /// After the last row: checkpoints beyond it mean the tail was cut off.
    pub fn finish(&mut self) {
        if self.problem.is_some() {
            return;
        }
        if let Some((&seq, _)) = self.points.range(self.last_seq + 1..).next_back() {
            self.problem = Some(Problem::RowsDeleted {
                first: self.last_seq + 1,
                last: seq,
            });
        }
    }

    /// Rows after the last checkpoint the walk passed: not covered by any signature.
    pub fn unsigned_tail(&self) -> i64 {
        self.last_seq - self.last_point_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ev(subject: &str) -> NewEvent {
        let t = chrono::FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
            .unwrap();
        let mut e = NewEvent::new(t, EventType::Acceptance);
        e.pec_id = Some("<a@b.it>".into());
        e.subject = Some(subject.into());
        e.recipients = vec!["x@y.it".into()];
        e
    }

    fn chain(n: usize) -> Vec<EventRow> {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
        let mut rows: Vec<EventRow> = Vec::new();
        for i in 0..n {
            let (s, h) = rows
                .last()
                .map_or((0, GENESIS.to_string()), |r| (r.seq, r.hash.clone()));
            rows.push(seal(&ev(&format!("s{i}")), s, &h, now, "h1", None));
        }
        rows
    }

    fn walk(rows: &[EventRow], points: BTreeMap<i64, TrustedPoint>) -> Option<Problem> {
        let mut w = Walker::new(0, GENESIS, points);
        for r in rows {
            if !w.feed(r) {
                break;
            }
        }
        w.finish();
        w.problem
    }

    #[test]
    fn sealed_rows_verify_and_strip_brackets() {
        let rows = chain(3);
        assert_eq!(rows[0].pec_id.as_deref(), Some("a@b.it"));
        assert_eq!(rows[0].event_zone, "+01:00");
        assert_eq!(walk(&rows, BTreeMap::new()), None);
    }

    #[test]
    fn every_column_is_hashed() {
        let base = chain(1).remove(0);
        let edits: Vec<fn(&mut EventRow)> = vec![
            |r| r.seq += 1,
            |r| r.recorded_at.push('x'),
            |r| r.event_time.push('x'),
            |r| r.event_zone.push('x'),
            |r| r.event_type.push('x'),
            |r| r.pec_id = None,
            |r| r.client_msgid = Some(String::new()),
            |r| r.sender = Some(String::new()),
            |r| r.recipients.push(' '),
            |r| r.subject = None,
            |r| r.generated_ids.push(' '),
            |r| r.provider = Some(String::new()),
            |r| r.queue_id = Some(String::new()),
            |r| r.host.push('x'),
            |r| r.details.push(' '),
            |r| r.idempotency_key = Some(String::new()),
            |r| r.prev_hash.push('0'),
        ];
        for (i, edit) in edits.into_iter().enumerate() {
            let mut r = base.clone();
            edit(&mut r);
            assert_ne!(row_hash(&r), base.hash, "edit {i} not detected");
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = chain(1).remove(0);
        let mut b = a.clone();
        a.sender = Some("ab".into());
        a.subject = Some("c".into());
        b.sender = Some("a".into());
        b.subject = Some("bc".into());
        assert_ne!(row_hash(&a), row_hash(&b));
    }

    #[test]
    fn deletion_edit_insertion_and_checkpoint_detected() {
        let rows = chain(5);
        let mut del = rows.clone();
        del.remove(2);
        assert_eq!(
            walk(&del, BTreeMap::new()),
            Some(Problem::RowsDeleted { first: 3, last: 3 })
        );

        let mut edit = rows.clone();
        edit[3].subject = Some("forged".into());
        assert_eq!(
            walk(&edit, BTreeMap::new()),
            Some(Problem::RowChanged { seq: 4 })
        );

        // Rewrite row 2 and recompute all later hashes: only a checkpoint catches it.
        let mut forged = rows.clone();
        forged[1].subject = Some("forged".into());
        for i in 1..forged.len() {
            if i > 1 {
                forged[i].prev_hash = forged[i - 1].hash.clone();
            }
            forged[i].hash = row_hash(&forged[i]);
        }
        assert_eq!(walk(&forged, BTreeMap::new()), None);
        let mut points = BTreeMap::new();
        points.insert(
            4,
            TrustedPoint {
                seq: 4,
                hash: rows[3].hash.clone(),
                source: "t".into(),
            },
        );
        assert_eq!(
            walk(&forged, points.clone()),
            Some(Problem::ChainRewritten {
                first: 1,
                last: 4,
                checkpoint_seq: 4
            })
        );
        // Tail truncation behind a checkpoint.
        assert_eq!(
            walk(&rows[..2], points),
            Some(Problem::RowsDeleted { first: 3, last: 4 })
        );
    }
}
