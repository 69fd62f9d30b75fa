//! The 12 h / 24 h time limits of the sender's provider (pec-format.md §5, decisions.md 9,
//! 14): for every `certificato` recipient of an envelope we sent, a
//! `preavviso-errore-consegna` when neither presa in carico nor delivery receipt arrived
//! within `timers.take_charge`, and a final one when no delivery receipt arrived within
//! `timers.delivery` (never before `timers.delivery_min`).
//!
//! The job reads the transaction state that incoming receipts update, and records each
//! notice with its outbox message and its state mark in one registry transaction, keyed
//! per recipient and deadline: run twice, it sends nothing twice.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::runtime::engine::Engine;
use crate::pec::build::{self, Deadline, Notice, NoticeParams, Transaction};
use crate::pec::types::{Recipient, RecipientType};
use crate::store::model::{DueNotice, EventType, NewEvent, NewOutboxMessage, NoticeKind, Record, StateUpdate};
use crate::store::{Store, StoreError};

/// How many notices one pass sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimerReport {
    pub twelve: usize,
    pub twenty_four: usize,
}

/// One pass of the timer job at `now`.
pub async fn run_once(store: &Store, config: &Config, engine: &Engine, now: DateTime<Utc>) -> Result<TimerReport, StoreError> {
    let mut report = TimerReport::default();
    for (kind, min_age) in [
        (NoticeKind::TwelveHours, config.timers.take_charge.std()),
        (NoticeKind::TwentyFourHours, config.timers.delivery_min.std()),
    ] {
        for due in store.due_notices(kind, now, min_age).await? {
            match notice_record(engine, &due, kind, now) {
                Ok(record) => {
                    let outcome = store.record(&record, now).await?;
                    if !outcome.replayed {
                        tracing::info!(pec_id = %due.pec_id, recipient = %due.recipient, deadline = ?kind, "preavviso-errore-consegna recorded for sending");
                        match kind {
                            NoticeKind::TwelveHours => report.twelve += 1,
                            NoticeKind::TwentyFourHours => report.twenty_four += 1,
                        }
                    }
                }
                Err(e) => tracing::error!(pec_id = %due.pec_id, recipient = %due.recipient, "cannot build the time-limit notice: {e}"),
            }
        }
    }
    Ok(report)
}

fn notice_record(engine: &Engine, due: &DueNotice, kind: NoticeKind, now: DateTime<Utc>) -> Result<Record, build::BuildError> {
    let original = crate::store::model::parse_ts(&due.event_time)
        .map(|t| crate::pec::types::to_zone(t, engine.time_zone))
        .unwrap_or_else(|| engine.now());
    let instant = crate::pec::types::to_zone(now, engine.time_zone);
    let client_msgid = match &due.client_msgid {
        Some(m) if !m.is_empty() => format!("<{}>", m.trim_matches(['<', '>'])),
        _ => format!("<{}>", due.pec_id),
    };
    let tx = Transaction {
        instant: original,
        identificativo: due.pec_id.clone(),
        client_msgid,
        sender: due.sender.clone(),
        to: vec![Recipient { address: due.recipient.clone(), kind: RecipientType::Certificato }],
        cc: Vec::new(),
        reply_to: None,
        subject: due.subject.clone(),
        receipt: None,
    };
    let deadline = match kind {
        NoticeKind::TwelveHours => Deadline::H12,
        NoticeKind::TwentyFourHours => Deadline::H24,
    };
    let message_id = engine.new_identifier(&instant);
    let built = build::build_notice(
        &engine.provider,
        &tx,
        &NoticeParams { instant, message_id: &message_id, seed: &Engine::random(16) },
        &Notice::Preavviso { consegna: &due.recipient, deadline, errore_esteso: None },
        &engine.signer,
    )?;
    let (event_type, tag) = match kind {
        NoticeKind::TwelveHours => (EventType::TimerNotice12h, "12h"),
        NoticeKind::TwentyFourHours => (EventType::TimerNotice24h, "24h"),
    };
    let mut event = NewEvent::new(instant, event_type);
    event.pec_id = Some(due.pec_id.clone());
    event.client_msgid = due.client_msgid.clone();
    event.sender = Some(due.sender.clone());
    event.recipients = vec![due.recipient.clone()];
    event.subject = due.subject.clone();
    event.generated_ids = vec![message_id];
    event.provider = Some(engine.provider.name.clone());
    event.details = serde_json::json!({ "deadline": tag, "envelope_sent_at": due.envelope_sent_at });
    Ok(Record {
        event,
        outbox: vec![NewOutboxMessage {
            kind: format!("preavviso-errore-consegna-{tag}"),
            mail_from: engine.provider.system_address.clone(),
            rcpts: vec![due.sender.clone()],
            message: built.to_bytes(),
            hold_for_queue_id: None,
        }],
        state: vec![StateUpdate::NoticeSent { pec_id: due.pec_id.clone(), recipient: due.recipient.clone(), notice: kind, at: now }],
        idempotency_key: Some(format!("timer{tag}:{}:{}", due.pec_id, due.recipient.to_ascii_lowercase())),
    })
}
