//! The reception point (pec-format.md §4.2, decisions.md 7, 8, 14, 15, 20, 23): every
//! message that arrives on the MX listener is classified and verified. A genuine transport
//! envelope earns a presa in carico for those of our local recipients that are among its
//! signed destinatari, and is delivered unchanged to them; a genuine notice is delivered
//! unchanged, after feeding the transaction it is about; anything else is wrapped in a busta
//! di anomalia, or refused where the mailbox's policy says so.
//!
//! A genuine envelope that reaches a local mailbox it was not addressed to (a replay by
//! anyone who holds a copy) is, for that mailbox, an anomaly (decisions.md 20). When the
//! same transaction also holds addressed recipients, the others leave the transaction
//! (DELETE_RCPT) and get the busta di anomalia through the outbox, so nothing is lost and
//! nobody is certified for a message not addressed to them; where a mailbox refuses
//! anomalies, or Postfix did not offer DELETE_RCPT, the whole transaction is refused with a
//! 5.7.1 naming them instead.

use indymilter::{ContextActions, SetErrorReply, Status};

use super::rewrite::replace_message;
use super::session::{Message, Session, refuse};
use crate::config::OrdinaryMailPolicy;
use crate::runtime::engine::{Engine, Incoming};
use crate::delivery::worker::event_about;
use crate::pec::incoming::GenuinePec;
use crate::pec::build::{self, Anomaly, Notice, NoticeParams};
use crate::pec::types::{Recipient, Tipo};
use crate::store::model::{EventType, NewEvent, NewOutboxMessage, Record, StateUpdate};

/// Reason code of a genuine envelope at a mailbox not among its destinatari.
const NOT_ADDRESSED: &str = "not-addressed";
/// What the holder of such a mailbox reads in the busta di anomalia.
const NOT_ADDRESSED_TEXT: &str = "il messaggio di posta certificata non era indirizzato a questa casella";

/// A busta di anomalia around `raw`, and what it was built from.
struct Wrapped<'a> {
    built: build::BuiltParts<'a>,
    /// The anomaly's own identifier, its Message-ID (decisions.md 19).
    id: String,
    /// The From address of the wrapped message (MAIL FROM when it has none).
    sender: String,
    subject: Option<String>,
    /// The Message-ID the wrapped message carried: recorded, never reused (decisions.md 19).
    original_message_id: Option<String>,
}

/// Wraps `raw` in a busta di anomalia for `recipients`, telling them `why`; a failure is
/// logged with the queue id.
fn wrap_anomaly<'a>(engine: &Engine, queue_id: &str, m: &Message, raw: &'a [u8], recipients: &[String], why: &str, now: crate::pec::Instant) -> Result<Wrapped<'a>, ()> {
    let facts = crate::pec::access::read_headers(raw);
    let sender = facts.as_ref().map(|f| f.from.clone()).filter(|f| !f.is_empty()).unwrap_or_else(|| m.mail_from.clone());
    let subject = facts.as_ref().and_then(|f| f.subject.clone());
    let recipients: Vec<Recipient> = engine.typed(recipients);
    // decisions.md 19: the anomaly gets an identifier of its own, never the Message-ID its
    // sender chose (which may be a PEC identifier of a real transaction).
    let id = engine.new_identifier(&now);
    let built = tokio::task::block_in_place(|| {
        build::build_anomaly_parts(
            &engine.provider,
            &Anomaly {
                instant: now,
                message_id: &id,
                sender: &sender,
                subject: subject.as_deref(),
                recipients: &recipients,
                reason: why,
                seed: &Engine::random(16),
            },
            raw,
            &engine.signer,
        )
    })
    .map_err(|e| tracing::error!(queue_id, "cannot build the busta di anomalia: {e}; tempfailing"))?;
    let original_message_id = facts.and_then(|f| f.message_id);
    Ok(Wrapped { built, id, sender, subject, original_message_id })
}

impl Session {
    pub(super) async fn reception_point(
        &mut self,
        queue_id: &str,
        m: &Message,
        raw: &[u8],
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {

        let engine = self.runtime.engine.clone();
        let arrival = engine.now();
        let incoming = tokio::task::block_in_place(|| engine.verify_incoming(raw, &arrival));
        let local: Vec<String> = m.rcpts.iter().filter(|r| engine.is_local(r)).cloned().collect();

        match incoming {
            Incoming::Envelope(v) => {
                // decisions.md 20: only the signed destinatari are taken in charge.
                let (addressed, unaddressed): (Vec<String>, Vec<String>) = local
                    .iter()
                    .cloned()
                    .partition(|r| v.daticert.destinatari.iter().any(|d| d.address.trim().eq_ignore_ascii_case(r)));
                if unaddressed.is_empty() {
                    return self.genuine_envelope(queue_id, m, &local, &v, &engine, raw).await;
                }
                let reason = format!(
                    "the transport envelope {} is not addressed to {}: they are not among its signed destinatari",
                    v.daticert.identificativo,
                    unaddressed.join(", ")
                );
                tracing::warn!(queue_id, pec_id = %v.daticert.identificativo, from = %m.mail_from, unaddressed = ?unaddressed, "genuine envelope for mailboxes it was not addressed to: an anomaly for them");
                if addressed.is_empty() {
                    return self.anomaly(queue_id, m, &local, raw, &reason, NOT_ADDRESSED, true, actions, reply).await;
                }
                if let Err(status) = self.unaddressed_apart(queue_id, m, &unaddressed, raw, &reason, actions, reply).await {
                    return status;
                }
                self.genuine_envelope(queue_id, m, &addressed, &v, &engine, raw).await
            }
            Incoming::Notice(v) => self.genuine_notice(queue_id, m, &v, &engine).await,
            Incoming::NotGenuine { claimed_pec, reason, code } => {
                self.anomaly(queue_id, m, &local, raw, &reason, code, claimed_pec, actions, reply).await
            }
        }
    }

    /// The recipients of a mixed transaction that a genuine envelope was not addressed to
    /// (decisions.md 20): each gets the busta di anomalia through the outbox (redirected
    /// instead, unwrapped, where the holder chose so) and leaves the transaction, which goes
    /// on unchanged for the addressed ones. A mailbox that refuses what is not certified
    /// mail, or a Postfix that did not offer DELETE_RCPT, refuses the whole transaction
    /// naming them: a milter answers for the whole message at end of data.
    #[allow(clippy::too_many_arguments)]
    async fn unaddressed_apart(
        &mut self,
        queue_id: &str,
        m: &Message,
        unaddressed: &[String],
        raw: &[u8],
        reason: &str,
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Result<(), Status> {
        let engine = self.runtime.engine.clone();
        let config = self.runtime.config.clone();
        let list = unaddressed.join(", ");
        let refused_text = format!("{list}: not among the recipients this certified message is addressed to; send to them separately");
        if unaddressed.iter().any(|r| config.policy.ordinary_mail_for(r) == OrdinaryMailPolicy::Refuse) {
            tracing::info!(queue_id, unaddressed = ?unaddressed, "refused: a mailbox the envelope is not addressed to accepts only certified mail");
            return Err(refuse(reply, "550", "5.7.1", &refused_text));
        }
        // Out of the transaction first: without DELETE_RCPT nothing has been recorded yet.
        for r in unaddressed {
            if let Err(e) = actions.delete_recipient(format!("<{r}>")).await {
                tracing::warn!(queue_id, recipient = %r, "cannot remove a recipient the envelope is not addressed to ({e}): refusing the transaction");
                return Err(refuse(reply, "550", "5.7.1", &refused_text));
            }
        }
        let redirecting: Vec<(String, String)> = unaddressed
            .iter()
            .filter(|r| config.policy.ordinary_mail_for(r) == OrdinaryMailPolicy::Redirect)
            .filter_map(|r| config.policy.redirect_for(r).map(|to| (r.clone(), to)))
            .collect();
        if !redirecting.is_empty() {
            self.redirect(queue_id, m, raw, &redirecting, reason, true, actions).await?;
        }
        let wrapped: Vec<String> = unaddressed.iter().filter(|r| !redirecting.iter().any(|(x, _)| x == *r)).cloned().collect();
        if wrapped.is_empty() {
            return Ok(());
        }
        let now = engine.now();
        let Wrapped { built, id: anomaly_id, subject, .. } =
            wrap_anomaly(&engine, queue_id, m, raw, &wrapped, NOT_ADDRESSED_TEXT, now).map_err(|()| Status::Tempfail)?;
        let mut event = NewEvent::new(now, EventType::Anomaly);
        event.sender = Some(m.mail_from.clone());
        event.recipients = wrapped.clone();
        event.queue_id = Some(queue_id.to_string());
        event.subject = subject;
        event.generated_ids = vec![anomaly_id];
        event.details = serde_json::json!({
            "reason": reason,
            "reason_code": NOT_ADDRESSED,
            "claimed_pec": true,
            "refused": false,
            "split_from_transaction": true,
            "client": self.client,
        });
        let record = Record {
            event,
            outbox: vec![NewOutboxMessage {
                kind: "anomalia".into(),
                mail_from: m.mail_from.clone(),
                rcpts: wrapped.clone(),
                message: built.to_bytes(),
                hold_for_queue_id: None,
            }],
            state: Vec::new(),
            idempotency_key: Some(format!("anomaly-apart:{queue_id}:{}", wrapped.join(",").to_ascii_lowercase())),
        };
        if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
            tracing::error!(queue_id, "cannot record the anomaly: {e}; tempfailing");
            return Err(Status::Tempfail);
        }
        tracing::info!(queue_id, recipients = ?wrapped, "busta di anomalia for the recipients the envelope is not addressed to, apart from the transaction");
        Ok(())
    }

    async fn genuine_envelope(
        &mut self,
        queue_id: &str,
        m: &Message,
        local: &[String],
        v: &GenuinePec,
        engine: &Engine,
        raw: &[u8],
    ) -> Status {
        let span = tracing::info_span!("reception", queue_id, pec_id = %v.daticert.identificativo);
        let _g = span.enter();
        if local.is_empty() {
            tracing::info!(from = %m.mail_from, "genuine transport envelope for other domains: passed on unchanged");
            return Status::Continue;
        }
        if let Some(clamd) = self.runtime.config.antivirus.clamd.clone() {
            match crate::adapters::clamd::Clamd::new(clamd).scan(&[raw]).await {
                Ok(crate::adapters::clamd::ScanResult::Clean) => {}
                Ok(crate::adapters::clamd::ScanResult::Infected(sig)) => return self.virus_at_reception(queue_id, local, v, engine, raw, &sig).await,
                Err(e) => {
                    tracing::error!("antivirus scan failed: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
        }
        let d = &v.daticert;
        // decisions.md 20: one presa in carico per identifier and mailbox, however often the
        // envelope arrives.
        let earlier = match self.shared.store.backend().events_of_pec_id(&d.identificativo).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("cannot read the registry: {e}; tempfailing");
                return Status::Tempfail;
            }
        };
        let taken: Vec<String> = earlier
            .iter()
            .filter(|r| r.kind() == Some(EventType::TakeChargeEmitted))
            .flat_map(|r| r.recipient_list())
            .collect();
        let fresh: Vec<String> = local.iter().filter(|r| !taken.iter().any(|t| t.eq_ignore_ascii_case(r))).cloned().collect();
        if fresh.is_empty() {
            tracing::info!(recipients = ?local, "genuine transport envelope already taken in charge for these mailboxes: delivered again, no second presa in carico");
            return Status::Continue;
        }
        let local = &fresh[..];
        let now = engine.now();
        let tx = crate::delivery::worker::transaction_of(v);
        let message_id = engine.new_identifier(&now);
        let built = tokio::task::block_in_place(|| {
            build::build_notice(
                &engine.provider,
                &tx,
                &NoticeParams { instant: now, message_id: &message_id, seed: &Engine::random(16) },
                &Notice::PresaInCarico { ricezione: local, mail_receipt: &v.mail_receipt },
                &engine.signer,
            )
        });
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot build the presa in carico: {e}; tempfailing");
                return Status::Tempfail;
            }
        };
        let mut event = event_about(v, now, EventType::TakeChargeEmitted, local.to_vec());
        event.generated_ids = vec![message_id];
        event.queue_id = Some(queue_id.to_string());
        event.details = serde_json::json!({
            "receipt_type": d.ricevuta.map(|r| r.as_str()),
            "to": v.to,
            "cc": v.cc,
            "mail_receipt": v.mail_receipt,
            "accepted_at": d.data.to_rfc3339(),
            // What a bounce of this envelope must name (decisions.md 19).
            "envelope_sender": m.mail_from,
        });
        let record = Record {
            event,
            outbox: vec![NewOutboxMessage {
                kind: "presa-in-carico".into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![v.mail_receipt.clone()],
                message: built.to_bytes(),
                hold_for_queue_id: None,
            }],
            // Same provider (decisions.md 7): our own transaction learns it at once.
            state: local
                .iter()
                .map(|r| StateUpdate::TakenInCharge { pec_id: d.identificativo.clone(), recipient: r.clone(), at: chrono::Utc::now() })
                .collect(),
            idempotency_key: Some(format!("pic:{}:{}", d.identificativo, local.join(",").to_ascii_lowercase())),
        };
        if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
            tracing::error!("cannot record the presa in carico: {e}; tempfailing");
            return Status::Tempfail;
        }
        tracing::info!(from_provider = %v.provider, recipients = ?local, "genuine transport envelope: presa in carico to {}", v.mail_receipt);
        Status::Continue
    }

    /// Ordinary mail for mailboxes whose holders redirect it (decisions.md 8): the original,
    /// unwrapped, goes to each chosen ordinary address through the outbox, recorded with the
    /// decision, and those mailboxes leave the transaction (unless `removed` already).
    #[allow(clippy::too_many_arguments)]
    async fn redirect(
        &mut self,
        queue_id: &str,
        m: &Message,
        raw: &[u8],
        redirecting: &[(String, String)],
        reason: &str,
        removed: bool,
        actions: &impl ContextActions,
    ) -> Result<(), Status> {
        let engine = self.runtime.engine.clone();
        for (mailbox, to) in redirecting {
            let mut event = NewEvent::new(engine.now(), EventType::Reception);
            event.sender = Some(m.mail_from.clone());
            event.recipients = vec![mailbox.clone()];
            event.queue_id = Some(queue_id.to_string());
            event.subject = crate::pec::access::read_headers(raw).and_then(|f| f.subject);
            event.details = serde_json::json!({
                "policy": "redirect",
                "redirect_to": to,
                "reason": reason,
                "client": self.client,
            });
            let record = Record {
                event,
                outbox: vec![NewOutboxMessage {
                    kind: "redirect".into(),
                    mail_from: m.mail_from.clone(),
                    rcpts: vec![to.clone()],
                    message: raw.to_vec(),
                    hold_for_queue_id: None,
                }],
                state: Vec::new(),
                idempotency_key: Some(format!("redirect:{queue_id}:{}", mailbox.to_ascii_lowercase())),
            };
            if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
                tracing::error!(queue_id, "cannot record the redirect: {e}; tempfailing");
                return Err(Status::Tempfail);
            }
            if !removed && let Err(e) = actions.delete_recipient(format!("<{mailbox}>")).await {
                tracing::error!(queue_id, "cannot remove the redirected recipient: {e}; tempfailing");
                return Err(Status::Tempfail);
            }
            tracing::info!(queue_id, %mailbox, redirect_to = %to, "ordinary mail redirected, unwrapped, as the holder chose");
        }
        Ok(())
    }

    /// A genuine envelope carrying a virus (pec-format.md §4.2): not delivered; one
    /// rilevazione-virus per local recipient to the sender provider's service mailbox, and
    /// the message kept in the quarantine for the retention period.
    async fn virus_at_reception(
        &mut self,
        queue_id: &str,
        local: &[String],
        v: &GenuinePec,
        engine: &Engine,
        raw: &[u8],
        signature: &str,
    ) -> Status {
        let d = &v.daticert;
        let now = engine.now();
        let tx = crate::delivery::worker::transaction_of(v);
        let errore_esteso = format!("5.7.1 - {} - virus rilevato: {signature}", engine.provider.name);
        let mut outbox = Vec::new();
        let mut ids = Vec::new();
        for r in local {
            let message_id = engine.new_identifier(&now);
            let built = tokio::task::block_in_place(|| {
                build::build_notice(
                    &engine.provider,
                    &tx,
                    &NoticeParams { instant: now, message_id: &message_id, seed: &Engine::random(16) },
                    &Notice::RilevazioneVirus { consegna: r, mail_receipt: &v.mail_receipt, errore_esteso: &errore_esteso },
                    &engine.signer,
                )
            });
            match built {
                Ok(b) => outbox.push(NewOutboxMessage {
                    kind: "rilevazione-virus".into(),
                    mail_from: engine.provider.system_address.clone(),
                    rcpts: vec![v.mail_receipt.clone()],
                    message: b.to_bytes(),
                    hold_for_queue_id: None,
                }),
                Err(e) => {
                    tracing::error!("cannot build the rilevazione-virus: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
            ids.push(message_id);
        }
        let quarantine = crate::store::model::NewQuarantine {
            pec_id: Some(d.identificativo.clone()),
            reason: format!("virus at reception: {signature}"),
            path: None,
            content: Some(raw.to_vec()),
        };
        if let Err(e) = self.shared.store.backend().quarantine_add(&quarantine, chrono::Utc::now()).await {
            tracing::error!("cannot quarantine the infected envelope: {e}; tempfailing");
            return Status::Tempfail;
        }
        let mut event = event_about(v, now, EventType::Virus, local.to_vec());
        event.generated_ids = ids;
        event.queue_id = Some(queue_id.to_string());
        event.details = serde_json::json!({ "virus": signature, "point": "reception", "mail_receipt": v.mail_receipt });
        let record = Record {
            event,
            outbox,
            state: Vec::new(),
            idempotency_key: Some(format!("virus-rx:{}:{}", d.identificativo, local.join(",").to_ascii_lowercase())),
        };
        if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
            tracing::error!("cannot record the virus: {e}; tempfailing");
            return Status::Tempfail;
        }
        tracing::warn!(virus = %signature, from_provider = %v.provider, recipients = ?local, "virus in a genuine envelope: not delivered, rilevazione-virus to {}", v.mail_receipt);
        Status::Discard
    }

    /// A rilevazione-virus about one of our own envelopes: our user gets the
    /// errore-consegna per virus (`X-VerificaSicurezza: errore`), recorded with the failure.
    fn virus_notice_for_sender(&self, v: &GenuinePec, engine: &Engine) -> Result<(Vec<NewOutboxMessage>, Vec<String>), build::BuildError> {
        let d = &v.daticert;
        let now = engine.now();
        let mut tx = crate::delivery::worker::transaction_of(v);
        if tx.to.is_empty() {
            tx.to = engine.typed(&d.consegna.iter().cloned().collect::<Vec<_>>());
        }
        let esteso = d.errore_esteso.clone().unwrap_or_else(|| "virus".to_string());
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for r in d.consegna.iter() {
            let message_id = engine.new_identifier(&now);
            let built = build::build_notice(
                &engine.provider,
                &tx,
                &NoticeParams { instant: now, message_id: &message_id, seed: &Engine::random(16) },
                &Notice::ErroreConsegnaVirus { consegna: r, errore_esteso: &esteso },
                &engine.signer,
            )?;
            out.push(NewOutboxMessage {
                kind: "errore-consegna-virus".into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![d.mittente.clone()],
                message: built.to_bytes(),
                hold_for_queue_id: None,
            });
            ids.push(message_id);
        }
        Ok((out, ids))
    }

    async fn genuine_notice(&mut self, queue_id: &str, m: &Message, v: &GenuinePec, engine: &Engine) -> Status {
        let d = &v.daticert;
        let span = tracing::info_span!("reception", queue_id, pec_id = %d.identificativo);
        let _g = span.enter();
        let now = chrono::Utc::now();
        // decisions.md 14: receipts about our own envelopes feed the transaction first.
        let ours = engine.is_local(&d.mittente);
        let (event_type, state) = match d.tipo {
            Tipo::PresaInCarico if ours => (
                EventType::TakeChargeReceived,
                d.ricezione
                    .iter()
                    .map(|r| StateUpdate::TakenInCharge { pec_id: d.identificativo.clone(), recipient: r.clone(), at: now })
                    .collect(),
            ),
            Tipo::AvvenutaConsegna if ours => (
                EventType::DeliveryReceiptReceived,
                d.consegna
                    .iter()
                    .map(|r| StateUpdate::Delivered { pec_id: d.identificativo.clone(), recipient: r.clone(), at: now })
                    .collect(),
            ),
            Tipo::ErroreConsegna | Tipo::RilevazioneVirus if ours => {
                let reason = match d.tipo {
                    Tipo::RilevazioneVirus => format!("virus: {}", d.errore_esteso.clone().unwrap_or_default()),
                    _ => d.errore_esteso.clone().unwrap_or_else(|| d.errore.as_str().to_string()),
                };
                (
                    EventType::NonDeliveryReceived,
                    d.consegna
                        .iter()
                        .map(|r| StateUpdate::Failed {
                            pec_id: d.identificativo.clone(),
                            recipient: r.clone(),
                            at: now,
                            reason: reason.clone(),
                        })
                        .collect(),
                )
            }
            _ => (EventType::Reception, Vec::new()),
        };
        // Our user learns of the virus found at the recipient's provider (pec-format.md §4.2).
        let (outbox, generated) = if d.tipo == Tipo::RilevazioneVirus && ours {
            match tokio::task::block_in_place(|| self.virus_notice_for_sender(v, engine)) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("cannot build the errore-consegna per virus: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
        } else {
            (Vec::new(), Vec::new())
        };
        let mut event = event_about(v, engine.now(), event_type, m.rcpts.clone());
        event.queue_id = Some(queue_id.to_string());
        event.details = serde_json::json!({ "tipo": d.tipo.as_str(), "errore": d.errore.as_str() });
        let key = format!("rx:{}:{}:{}", d.tipo.as_str(), d.identificativo, v.message_id);
        event.generated_ids = generated;
        let record = Record { event, outbox, state, idempotency_key: Some(key) };
        if let Err(e) = self.shared.store.record(&record, now).await {
            tracing::error!("cannot record the incoming notice: {e}; tempfailing");
            return Status::Tempfail;
        }
        tracing::info!(tipo = %d.tipo, from_provider = %v.provider, "genuine notice: delivered unchanged");
        Status::Continue
    }

    #[allow(clippy::too_many_arguments)]
    async fn anomaly(
        &mut self,
        queue_id: &str,
        m: &Message,
        local: &[String],
        raw: &[u8],
        reason: &str,
        code: &str,
        claimed_pec: bool,
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        let engine = self.runtime.engine.clone();
        let config = self.runtime.config.clone();
        if local.is_empty() {
            // Not for us (a relay attempt Postfix would refuse anyway): leave it alone.
            tracing::info!(queue_id, from = %m.mail_from, "not genuine PEC, no local recipient: unchanged");
            return Status::Continue;
        }
        let refusing: Vec<&String> = local
            .iter()
            .filter(|r| config.policy.ordinary_mail_for(r) == OrdinaryMailPolicy::Refuse)
            .collect();
        let redirecting: Vec<(String, String)> = local
            .iter()
            .filter(|r| config.policy.ordinary_mail_for(r) == OrdinaryMailPolicy::Redirect)
            .filter_map(|r| config.policy.redirect_for(r).map(|to| (r.clone(), to)))
            .collect();
        let now = engine.now();
        let mut event = NewEvent::new(now, EventType::Anomaly);
        event.sender = Some(m.mail_from.clone());
        event.recipients = local.to_vec();
        event.queue_id = Some(queue_id.to_string());
        event.details = serde_json::json!({
            "reason": reason,
            "reason_code": code,
            "claimed_pec": claimed_pec,
            "refused": !refusing.is_empty(),
            "client": self.client,
        });
        if refusing.len() == local.len() {
            let record = Record { event, outbox: Vec::new(), state: Vec::new(), idempotency_key: None };
            if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
                tracing::error!(queue_id, "cannot record the refusal: {e}; tempfailing");
                return Status::Tempfail;
            }
            tracing::info!(queue_id, from = %m.mail_from, %reason, reason_code = code, "refused: the mailbox accepts only certified mail");
            return refuse(reply, "550", "5.7.1", "this mailbox accepts only certified mail (PEC); the message is not a valid PEC message");
        }
        if !refusing.is_empty() {
            // Mixed policies in one transaction: at end of data a milter answers for the
            // whole message, so refuse it naming the mailboxes that accept only PEC; the
            // sender can send again to the others.
            tracing::info!(queue_id, refusing = ?refusing, "refused: some recipients accept only certified mail");
            let list = refusing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return refuse(reply, "550", "5.7.1", &format!("{list} accept only certified mail (PEC); send to them separately"));
        }
        let local: Vec<String> = if redirecting.is_empty() {
            local.to_vec()
        } else {
            match self.redirect(queue_id, m, raw, &redirecting, reason, false, actions).await {
                Ok(()) => {}
                Err(status) => return status,
            }
            let rest: Vec<String> = local.iter().filter(|r| !redirecting.iter().any(|(x, _)| x == *r)).cloned().collect();
            if rest.is_empty() {
                tracing::info!(queue_id, "every PEC recipient redirects ordinary mail: nothing for the PEC mailboxes");
                // Other (non-PEC) recipients, if any, still get the message unchanged.
                return if m.rcpts.iter().all(|r| engine.is_local(r)) { Status::Discard } else { Status::Continue };
            }
            rest
        };
        let local = &local[..];
        event.recipients = local.to_vec();
        // The text the recipient reads; the technical reason stays in the registry.
        let why = if code == NOT_ADDRESSED {
            NOT_ADDRESSED_TEXT
        } else if claimed_pec {
            "il messaggio non ha superato i controlli di posta certificata"
        } else {
            "messaggio di posta ordinaria, non certificata"
        };
        let Ok(Wrapped { built, id: anomaly_id, sender, subject, original_message_id }) = wrap_anomaly(&engine, queue_id, m, raw, local, why, now) else {
            return Status::Tempfail;
        };
        if let Err(e) = replace_message(actions, &m.headers, &built.headers, &built.body).await {
            tracing::error!(queue_id, "cannot replace the message: {e}; tempfailing");
            return Status::Tempfail;
        }
        event.subject = subject;
        event.generated_ids = vec![anomaly_id.clone()];
        event.details["message_id"] = serde_json::json!(original_message_id);
        let record = Record { event, outbox: Vec::new(), state: Vec::new(), idempotency_key: None };
        if let Err(e) = self.shared.store.record(&record, chrono::Utc::now()).await {
            tracing::error!(queue_id, "cannot record the anomaly: {e}; tempfailing");
            return Status::Tempfail;
        }
        tracing::info!(queue_id, anomaly_id = %anomaly_id, from = %sender, %reason, reason_code = code, "wrapped in a busta di anomalia");
        Status::Continue
    }
}
