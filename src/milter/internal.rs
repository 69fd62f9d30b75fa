//! Postfix's own mail, seen through `non_smtpd_milters` (decisions.md 13, 17):
//! - a message we signed ourselves (re-queued with `postsuper -r`) passes unchanged, so
//!   nothing is ever wrapped twice;
//! - a bounce of a transport envelope becomes a signed errore-consegna to the original
//!   sender, and the plain DSN is discarded: on the sender's side for failures reported
//!   over SMTP, on the recipient's side for failures of the local delivery (LMTP);
//! - anything else (local `sendmail` to a PEC mailbox) is mail from outside: the reception
//!   point's rules apply.

use indymilter::{ContextActions, SetErrorReply, Status};

use super::session::{Message, Session};
use crate::dsn::{self, RecipientStatus};
use crate::engine::Engine;
use crate::pec::build::{self, Notice, NoticeParams, Transaction};
use crate::store::model::{EventRow, EventType, NewEvent, NewOutboxMessage, Record, StateUpdate};

impl Session {
    pub(super) async fn internal(
        &mut self,
        queue_id: &str,
        m: &Message,
        raw: &[u8],
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        let engine = self.runtime.engine.clone();
        if tokio::task::block_in_place(|| engine.signed_by_us(raw)) {
            tracing::info!(queue_id, "signed by us already (re-queued): passed unchanged");
            return Status::Continue;
        }
        if m.mail_from.is_empty() {
            if let Some(report) = dsn::parse(raw) {
                return self.bounce(queue_id, &report, &engine).await;
            }
        }
        self.reception_point(queue_id, m, raw, actions, reply).await
    }

    /// A bounce: about one of our transport envelopes (sent or taken in charge), it becomes
    /// one errore-consegna per failed recipient; otherwise it passes unchanged.
    async fn bounce(&mut self, queue_id: &str, report: &dsn::Report, engine: &Engine) -> Status {
        let Some(pec_id) = report.original_message_id.clone() else {
            tracing::info!(queue_id, "bounce without the original Message-ID: passed unchanged");
            return Status::Continue;
        };
        let span = tracing::info_span!("bounce", queue_id, pec_id = %pec_id);
        let _g = span.enter();
        let rows = match self.shared.store.backend().events_of_pec_id(&pec_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read the registry: {e}; tempfailing");
                return Status::Tempfail;
            }
        };
        // Ours as the sender's provider, else as the recipients' provider.
        let Some(row) = rows
            .iter()
            .find(|r| r.kind() == Some(EventType::Acceptance))
            .or_else(|| rows.iter().find(|r| r.kind() == Some(EventType::TakeChargeEmitted)))
        else {
            tracing::info!("bounce of a message that is not one of our transport envelopes: passed unchanged");
            return Status::Continue;
        };
        let tx = transaction_of_row(engine, row);
        let members: Vec<String> = tx.to.iter().chain(tx.cc.iter()).map(|r| r.address.clone()).collect();
        let failed: Vec<&RecipientStatus> = report
            .recipients
            .iter()
            .filter(|r| r.failed())
            .filter(|r| {
                members.iter().any(|a| a.eq_ignore_ascii_case(&r.recipient))
                    || r.original.as_ref().is_some_and(|o| members.iter().any(|a| a.eq_ignore_ascii_case(o)))
            })
            .collect();
        if failed.is_empty() {
            tracing::info!("bounce reports no failed recipient of the envelope (a delay warning?): passed unchanged");
            return Status::Continue;
        }
        for f in failed {
            let recipient = members
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&f.recipient) || f.original.as_ref().is_some_and(|o| a.eq_ignore_ascii_case(o)))
                .cloned()
                .unwrap_or_else(|| f.recipient.clone());
            let record = match non_delivery_record(engine, &tx, row, &recipient, f, queue_id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%recipient, "cannot build the errore-consegna: {e}; tempfailing");
                    return Status::Tempfail;
                }
            };
            match self.shared.store.record(&record, chrono::Utc::now()).await {
                Ok(o) if o.replayed => tracing::info!(%recipient, "errore-consegna recorded earlier for this bounce"),
                Ok(_) => tracing::info!(%recipient, status = %f.status, errore = f.errore().as_str(), "bounce turned into a signed errore-consegna"),
                Err(e) => {
                    tracing::error!("cannot record the errore-consegna: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
        }
        // The signed notice replaces the plain DSN (decisions.md 13).
        Status::Discard
    }
}

/// The original transaction, from the registry row that certifies it: the acceptance (we
/// are the sender's provider) or the presa in carico (we are the recipients').
fn transaction_of_row(engine: &Engine, row: &EventRow) -> Transaction {
    let details: serde_json::Value = serde_json::from_str(&row.details).unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        details
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (to, cc) = match (list("to"), list("cc")) {
        (to, cc) if !to.is_empty() || !cc.is_empty() => (to, cc),
        _ => (row.recipient_list(), Vec::new()),
    };
    let instant = details
        .get("accepted_at")
        .and_then(|v| v.as_str())
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .or_else(|| row.instant())
        .unwrap_or_else(|| engine.now());
    let pec_id = row.pec_id.clone().unwrap_or_default();
    Transaction {
        instant,
        client_msgid: match &row.client_msgid {
            Some(m) if !m.is_empty() => format!("<{}>", m.trim_matches(['<', '>'])),
            _ => format!("<{pec_id}>"),
        },
        identificativo: pec_id,
        sender: row.sender.clone().unwrap_or_default(),
        to: engine.typed(&to),
        cc: engine.typed(&cc),
        reply_to: None,
        subject: row.subject.clone(),
        receipt: None,
    }
}

fn non_delivery_record(
    engine: &Engine,
    tx: &Transaction,
    row: &EventRow,
    recipient: &str,
    f: &RecipientStatus,
    queue_id: &str,
) -> Result<Record, build::BuildError> {
    let now = engine.now();
    let message_id = engine.new_identifier(&now);
    let errore_esteso = f.errore_esteso(&engine.provider.name);
    let built = build::build_notice(
        &engine.provider,
        tx,
        &NoticeParams { instant: now, message_id: &message_id, seed: &Engine::random(16) },
        &Notice::ErroreConsegna { consegna: recipient, errore: f.errore(), errore_esteso: &errore_esteso },
        &engine.signer,
    )?;
    let mut event = NewEvent::new(now, EventType::NonDelivery);
    event.pec_id = Some(tx.identificativo.clone());
    event.client_msgid = row.client_msgid.clone();
    event.sender = Some(tx.sender.clone());
    event.recipients = vec![recipient.to_string()];
    event.subject = tx.subject.clone();
    event.generated_ids = vec![message_id];
    event.provider = Some(engine.provider.name.clone());
    event.queue_id = Some(queue_id.to_string());
    event.details = serde_json::json!({
        "errore": f.errore().as_str(),
        "status": f.status,
        "diagnostic": f.diagnostic,
        "source": "bounce",
        "envelope_queue_id": row.queue_id,
    });
    Ok(Record {
        event,
        outbox: vec![NewOutboxMessage {
            kind: "errore-consegna".into(),
            mail_from: engine.provider.system_address.clone(),
            rcpts: vec![tx.sender.clone()],
            message: built.to_bytes(),
            hold_for_queue_id: None,
        }],
        state: vec![StateUpdate::Failed {
            pec_id: tx.identificativo.clone(),
            recipient: recipient.to_string(),
            at: chrono::Utc::now(),
            reason: errore_esteso,
        }],
        idempotency_key: Some(format!("err:{}:{}", tx.identificativo, recipient.to_ascii_lowercase())),
    })
}
