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
use crate::pec::dsn::{self, RecipientStatus};
use crate::config::OrdinaryMailPolicy;
use crate::runtime::engine::Engine;
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
                return self.bounce(queue_id, m, raw, &report, actions, reply).await;
            }
        }
        self.reception_point(queue_id, m, raw, actions, reply).await
    }

    /// A bounce that provably concerns one of our transport envelopes (decisions.md 19)
    /// becomes one errore-consegna per failed recipient, and the plain DSN is discarded. A
    /// bounce that does not bind is ordinary mail: the reception point's rules apply to it
    /// (a plain DSN to an outside address passes unchanged; to a PEC mailbox it arrives in
    /// a busta di anomalia), and nothing signed names the transaction.
    async fn bounce(
        &mut self,
        queue_id: &str,
        m: &Message,
        raw: &[u8],
        report: &dsn::Report,
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        let engine = self.runtime.engine.clone();
        let bounced = report.queue_id.clone().unwrap_or_default();
        let span = tracing::info_span!("bounce", queue_id, bounced_queue_id = %bounced);
        let _g = span.enter();
        let rows = if bounced.is_empty() {
            Vec::new()
        } else {
            match self.shared.store.events_of_queue_id(&bounced).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cannot read the registry: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
        };
        let binding = bind(report, &rows);
        let (row, failed) = match binding {
            Binding::Bound { row, failed } => (row, failed),
            Binding::Unbound(why) => {
                tracing::info!(
                    message_id = ?report.original_message_id,
                    "bounce not bound to a transport envelope of ours ({why}): handled as ordinary mail"
                );
                // A mailbox that refuses ordinary mail does not get it either; but a refusal
                // of Postfix's own bounce has nobody to read it (and keeps Postfix trying to
                // bounce): it is dropped instead, and the registry says so.
                let config = self.runtime.config.clone();
                let refusing: Vec<String> = m
                    .rcpts
                    .iter()
                    .filter(|r| engine.is_local(r) && config.policy.ordinary_mail_for(r) == OrdinaryMailPolicy::Refuse)
                    .cloned()
                    .collect();
                if !refusing.is_empty() {
                    let mut event = NewEvent::new(engine.now(), EventType::Anomaly);
                    event.sender = Some(m.mail_from.clone());
                    event.recipients = refusing.clone();
                    event.queue_id = Some(queue_id.to_string());
                    event.details = serde_json::json!({
                        "reason": format!("unbound bounce ({why}) to a mailbox that accepts only certified mail"),
                        "bounced_queue_id": report.queue_id,
                        "refused": true,
                        "discarded": true,
                    });
                    let record = Record { event, outbox: Vec::new(), state: Vec::new(), idempotency_key: None };
                    if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
                        tracing::error!("cannot record the discarded bounce: {e}; tempfailing");
                        return Status::Tempfail;
                    }
                    tracing::info!(recipients = ?refusing, "the mailbox accepts only certified mail: bounce discarded");
                    return Status::Discard;
                }
                drop(_g);
                return self.reception_point(queue_id, m, raw, actions, reply).await;
            }
        };
        let tx = transaction_of_row(&engine, row);
        let span = tracing::info_span!("bound", pec_id = %tx.identificativo);
        let _g2 = span.enter();
        if failed.is_empty() {
            tracing::info!("bounce reports no failed recipient of the envelope (a delay warning?): passed unchanged");
            return Status::Continue;
        }
        for (f, recipient) in failed {
            let record = match non_delivery_record(&engine, &tx, row, &recipient, f, queue_id) {
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

/// Whether a bounce concerns one of our transport envelopes (decisions.md 19).
#[derive(Debug)]
enum Binding<'a> {
    /// The envelope's registry row, and each failed recipient with the recorded address it
    /// names (possibly none: a delay warning).
    Bound { row: &'a EventRow, failed: Vec<(&'a RecipientStatus, String)> },
    /// Why not.
    Unbound(&'static str),
}

/// Binds a bounce to the transaction whose envelope it returns, using only what Postfix
/// wrote and the registry recorded: the bounced message's queue id (`X-Postfix-Queue-ID`)
/// must be the one recorded with the acceptance (we sent the envelope) or with the presa in
/// carico (we took it in charge), the envelope sender (`X-Postfix-Sender`) the one recorded
/// there, and a failed recipient counts only when its `Final-Recipient` is one of the
/// recorded recipients (the mailboxes taken in charge, on the recipient's side). The
/// Message-ID of the bounced message and Original-Recipient (the sender's ORCPT) are not
/// looked at.
fn bind<'a>(report: &'a dsn::Report, rows: &'a [EventRow]) -> Binding<'a> {
    let Some(bounced) = report.queue_id.as_deref().filter(|q| !q.is_empty()) else {
        return Binding::Unbound("no X-Postfix-Queue-ID");
    };
    let ours = |kind: EventType| rows.iter().find(|r| r.kind() == Some(kind) && r.queue_id.as_deref() == Some(bounced));
    // Ours as the sender's provider, else as the recipients' provider.
    let Some(row) = ours(EventType::Acceptance).or_else(|| ours(EventType::TakeChargeEmitted)) else {
        return Binding::Unbound("its queue id is not the one of an envelope we sent or took in charge");
    };
    let Some(sender) = report.sender.as_deref() else {
        return Binding::Unbound("no X-Postfix-Sender");
    };
    if !sender.eq_ignore_ascii_case(&envelope_sender(row)) {
        return Binding::Unbound("its envelope sender is not the recorded one");
    }
    let members = row.recipient_list();
    let failed: Vec<(&RecipientStatus, String)> = report
        .recipients
        .iter()
        .filter(|r| r.failed())
        .filter_map(|r| members.iter().find(|a| a.eq_ignore_ascii_case(&r.recipient)).map(|a| (r, a.clone())))
        .collect();
    if failed.is_empty() && report.recipients.iter().any(|r| r.failed()) {
        return Binding::Unbound("no failed Final-Recipient is a recorded recipient of the envelope");
    }
    Binding::Bound { row, failed }
}

/// The SMTP envelope sender recorded with an acceptance or presa in carico: recorded as
/// such since decisions.md 19; before, the acceptance's sender (the access point requires
/// it to be the envelope sender) and the presa in carico's daticert mittente.
fn envelope_sender(row: &EventRow) -> String {
    serde_json::from_str::<serde_json::Value>(&row.details)
        .ok()
        .and_then(|d| d.get("envelope_sender").and_then(|v| v.as_str()).map(str::to_string))
        .or_else(|| row.sender.clone())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: EventType, queue_id: &str, sender: &str, recipients: &[&str], details: serde_json::Value) -> EventRow {
        EventRow {
            event_type: kind.as_str().into(),
            pec_id: Some("opec.1@pec.alpha.test".into()),
            sender: Some(sender.into()),
            recipients: serde_json::to_string(recipients).unwrap(),
            queue_id: Some(queue_id.into()),
            details: details.to_string(),
            ..Default::default()
        }
    }

    fn rcpt(final_rcpt: &str, original: Option<&str>, action: &str) -> RecipientStatus {
        RecipientStatus {
            recipient: final_rcpt.into(),
            original: original.map(str::to_string),
            action: action.into(),
            status: "5.2.2".into(),
            diagnostic: None,
        }
    }

    fn report(queue_id: Option<&str>, sender: Option<&str>, recipients: Vec<RecipientStatus>) -> dsn::Report {
        dsn::Report {
            reporting_mta: Some("mx.pec.beta.test".into()),
            queue_id: queue_id.map(str::to_string),
            sender: sender.map(str::to_string),
            recipients,
            // The PEC identifier of the real transaction: it must count for nothing.
            original_message_id: Some("opec.1@pec.alpha.test".into()),
        }
    }

    fn bound(b: &Binding<'_>) -> Option<Vec<String>> {
        match b {
            Binding::Bound { failed, .. } => Some(failed.iter().map(|(_, a)| a.clone()).collect()),
            Binding::Unbound(_) => None,
        }
    }

    const MARIO: &str = "mario.rossi@pec.alpha.test";
    const LUCA: &str = "luca.verdi@pec.beta.test";
    const PIENA: &str = "piena@pec.beta.test";

    #[test]
    fn a_bounce_binds_by_queue_id_sender_and_final_recipient_only() {
        // Recipient's side: beta took the envelope in charge under queue id R1 for luca and piena.
        let taken = row(EventType::TakeChargeEmitted, "R1", MARIO, &[LUCA, PIENA], serde_json::json!({ "envelope_sender": MARIO }));
        // An anomaly beta built under queue id R2 (an outsider's mail).
        let anomaly = row(EventType::Anomaly, "R2", "paolo@mail.gamma.test", &[PIENA], serde_json::json!({}));
        let rows = vec![taken.clone(), anomaly];

        // Postfix's genuine bounce of R1 for piena binds.
        let genuine = report(Some("R1"), Some(MARIO), vec![rcpt(PIENA, Some(PIENA), "failed"), rcpt(LUCA, None, "delivered")]);
        assert_eq!(bound(&bind(&genuine, &rows)), Some(vec![PIENA.to_string()]));
        // Case does not matter in addresses.
        let upper = report(Some("R1"), Some("Mario.Rossi@PEC.alpha.test"), vec![rcpt("PIENA@pec.beta.test", None, "failed")]);
        assert_eq!(bound(&bind(&upper, &rows)), Some(vec![PIENA.to_string()]));

        // The attack: the outsider's mail (queue id R2) carried the transaction's PEC id
        // as Message-ID and ORCPT=luca; its bounce names piena as Final-Recipient.
        let attack = report(Some("R2"), Some("paolo@mail.gamma.test"), vec![rcpt(PIENA, Some(LUCA), "failed")]);
        assert!(bound(&bind(&attack, &rows)).is_none());
        // Even with the envelope's queue id, Original-Recipient names nobody.
        let orcpt_only = report(Some("R1"), Some(MARIO), vec![rcpt("assente@pec.beta.test", Some(LUCA), "failed")]);
        assert!(bound(&bind(&orcpt_only, &rows)).is_none());
        // The queue id alone is not enough: the envelope sender must be the recorded one.
        let other_sender = report(Some("R1"), Some("paolo@mail.gamma.test"), vec![rcpt(PIENA, None, "failed")]);
        assert!(bound(&bind(&other_sender, &rows)).is_none());
        assert!(bound(&bind(&report(Some("R1"), None, vec![rcpt(PIENA, None, "failed")]), &rows)).is_none());
        // No queue id, or one we never recorded (the id must be equal, not similar).
        assert!(bound(&bind(&report(None, Some(MARIO), vec![rcpt(PIENA, None, "failed")]), &rows)).is_none());
        assert!(bound(&bind(&report(Some("r1"), Some(MARIO), vec![rcpt(PIENA, None, "failed")]), &rows)).is_none());
        assert!(bound(&bind(&report(Some("R1"), Some(MARIO), vec![rcpt(PIENA, None, "failed")]), &rows[1..])).is_none());
        // A delay warning of our envelope binds, with nobody failed.
        let delayed = report(Some("R1"), Some(MARIO), vec![rcpt(PIENA, None, "delayed")]);
        assert_eq!(bound(&bind(&delayed, &rows)), Some(vec![]));
    }

    #[test]
    fn the_senders_side_binds_to_the_acceptance() {
        // An acceptance row (older ones have no envelope_sender: the access point made the
        // login, MAIL FROM and From one address).
        let acc = row(EventType::Acceptance, "Q1", MARIO, &[LUCA, "nessuno@pec.beta.test"], serde_json::json!({}));
        let rows = vec![acc];
        let r = report(Some("Q1"), Some(MARIO), vec![rcpt("nessuno@pec.beta.test", None, "failed")]);
        assert_eq!(bound(&bind(&r, &rows)), Some(vec!["nessuno@pec.beta.test".to_string()]));
        let r = report(Some("Q1"), Some("anna.bianchi@pec.alpha.test"), vec![rcpt("nessuno@pec.beta.test", None, "failed")]);
        assert!(bound(&bind(&r, &rows)).is_none());
    }
}
