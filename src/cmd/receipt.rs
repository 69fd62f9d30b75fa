//! `pecora receipt reproduce`: a receipt the user lost, issued again from the registry
//! (decisions.md 11, pec-format.md §7.4).
//!
//! The registry keeps the facts of every receipt pecora emitted (who, to whom, what, when,
//! which identifiers), never the message. From those facts this command builds a NEW signed
//! message of the same kind, whose daticert.xml and text carry the original event's data and
//! instant (`<giorno>`, `<ora>`, `zona`), addressed as the original was, and:
//!
//! - a fresh `Message-ID` (it is a new message) and `Date:` the moment of the copy;
//! - the header `X-Pecora-Copia-Di: <Message-ID of the original receipt>`, which marks it a
//!   copy and names what it copies. The Subject is left exactly as the original had it:
//!   PEC readers, and pecora's own verifier, require the Subject to be the kind's literal
//!   prefix plus the daticert `<oggetto>` (decisions.md 15), so a "COPIA" prefix would make
//!   the copy fail verification;
//! - a CMS signature made now, with signingTime now: the copy does not pretend to have been
//!   signed at the original instant (which would also fail verification after a key
//!   renewal). The daticert and the text are what certify the original instant;
//! - no postacert.eml: the registry keeps no content, so a reproduced avvenuta-consegna is
//!   always of the `sintetica` kind (the registry row of the copy names the original kind).
//!
//! The copy is recorded as a `receipt-reproduced` event, with its outbox message to the
//! original receipt's recipient (the running daemon sends it), or, with `--output FILE`,
//! written to a file instead of sent (and still recorded).
//!
//! Reproducible: accettazione, avviso di non accettazione (also for virus), presa in carico
//! (the one this host's reception point emitted for another provider's envelope), avvenuta
//! consegna and errore consegna (emitted here), preavviso di mancata consegna (12 h and
//! 24 h). Receipts other providers emitted (their presa in carico or consegna of our
//! envelopes) are theirs to reproduce: pecora cannot sign them.
//!
//! Facts the registry does not keep, and what the copy says instead:
//! - the original's Reply-To (daticert `<risposte>`): the `reply_to` detail when the row
//!   has one, else the sender;
//! - recipient types: the acceptance row's `recipient_types` detail when present, else the
//!   provider index as it is now (as the bounce and delivery paths do);
//! - the client's Message-ID when the client set none and pecora generated one for a
//!   non-acceptance: the PEC id in angle brackets.
//!
//! Exit status: 0 reproduced; 1 nothing reproducible found for the identifier (or it
//! cannot be built); 2 usage or environment error, including an identifier that matches
//! several receipts (narrow it with --type, --recipient or --event).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::runtime::engine::Engine;
use crate::pec::build::{self, Built, Deadline, Notice, NoticeParams, Transaction};
use crate::pec::types::{Errore, Instant, ReceiptType, Recipient, RecipientType};
use crate::store::{EventRow, EventType, NewEvent, NewOutboxMessage, Record, Store, StoreError};

/// The header that marks a reproduced receipt and names the original's Message-ID.
pub const COPY_HEADER: &str = "X-Pecora-Copia-Di";

/// The `receipt` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReceiptCommand {
    /// Issue again, as a new signed copy, a receipt the user lost (decisions.md 11).
    ///
    /// ID is a PEC identifier, the client's Message-ID, a Postfix queue id or the
    /// Message-ID of the lost receipt (angle brackets optional). The copy carries the
    /// original's daticert data and instant, a fresh Message-ID and the header
    /// X-Pecora-Copia-Di naming the original; it goes to the original receipt's
    /// recipient through the outbox (the daemon sends it), or to FILE with --output.
    /// Exit 0 reproduced, 1 nothing reproducible found, 2 usage or environment error (also
    /// when ID matches several receipts: choose with --type, --recipient or --event).
    Reproduce(ReproduceArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReproduceArgs {
    /// PEC id, client Message-ID, queue id or the lost receipt's Message-ID.
    pub id: String,
    /// Which receipt, when the message has several.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<ReceiptKind>,
    /// The recipient a per-recipient receipt (consegna, errore, preavviso, presa in
    /// carico) is about.
    #[arg(long, value_name = "ADDRESS")]
    pub recipient: Option<String>,
    /// The registry row (seq, as `pecora log show` prints it) of the receipt's event.
    #[arg(long, value_name = "SEQ")]
    pub event: Option<i64>,
    /// Write the signed copy to FILE instead of sending it (it is still recorded).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The receipts pecora can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptKind {
    Accettazione,
    NonAccettazione,
    PresaInCarico,
    AvvenutaConsegna,
    ErroreConsegna,
    #[value(alias = "preavviso")]
    PreavvisoErroreConsegna,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Accettazione => "accettazione",
            ReceiptKind::NonAccettazione => "non-accettazione",
            ReceiptKind::PresaInCarico => "presa-in-carico",
            ReceiptKind::AvvenutaConsegna => "avvenuta-consegna",
            ReceiptKind::ErroreConsegna => "errore-consegna",
            ReceiptKind::PreavvisoErroreConsegna => "preavviso-errore-consegna",
        }
    }

    /// The receipt a registry event emitted, if it is one pecora signed.
    pub fn of_event(t: EventType) -> Option<ReceiptKind> {
        Some(match t {
            EventType::Acceptance => ReceiptKind::Accettazione,
            EventType::NonAcceptance | EventType::Virus => ReceiptKind::NonAccettazione,
            EventType::TakeChargeEmitted => ReceiptKind::PresaInCarico,
            EventType::Delivery => ReceiptKind::AvvenutaConsegna,
            EventType::NonDelivery => ReceiptKind::ErroreConsegna,
            EventType::TimerNotice12h | EventType::TimerNotice24h => {
                ReceiptKind::PreavvisoErroreConsegna
            }
            _ => return None,
        })
    }
}

/// What to reproduce.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub id: String,
    pub kind: Option<ReceiptKind>,
    pub recipient: Option<String>,
    pub event: Option<i64>,
}

/// Why nothing was reproduced.
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    #[error("no registry row for {0}")]
    Unknown(String),
    #[error("{id}: no reproducible receipt matches{filters} (registry rows: {found})")]
    NoReceipt {
        id: String,
        filters: String,
        found: String,
    },
    #[error("{id} matches {n} receipts; choose one with --type, --recipient or --event:\n{list}")]
    Ambiguous { id: String, n: usize, list: String },
    #[error("the {kind} of registry row {seq} cannot be reproduced: {reason}")]
    Unreproducible {
        kind: &'static str,
        seq: i64,
        reason: String,
    },
    #[error("registry: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
}

impl ReproduceError {
    /// The exit status: 1 nothing (reproducible) found, 2 usage or environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReproduceError::Unknown(_)
            | ReproduceError::NoReceipt { .. }
            | ReproduceError::Unreproducible { .. } => 1,
            ReproduceError::Ambiguous { .. } | ReproduceError::Store(_) | ReproduceError::Io(_) => {
                2
            }
        }
    }
}

/// Where the copy went.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "to")]
pub enum Destination {
    /// Queued in the outbox for the daemon to send.
    Outbox { rcpts: Vec<String>, outbox_id: i64 },
    /// Written to a file.
    File { path: PathBuf },
}

/// A reproduced receipt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reproduced {
    pub kind: ReceiptKind,
    /// The registry row of the original receipt's event.
    pub original_seq: i64,
    pub original_event_type: String,
    /// The original event's instant (what the copy's daticert says), RFC 3339.
    pub original_instant: String,
    /// The original receipt's Message-ID (without angle brackets), when the row names it.
    pub original_message_id: Option<String>,
    pub pec_id: Option<String>,
    /// The copy's own Message-ID (without angle brackets).
    pub message_id: String,
    /// The registry row recording the copy.
    pub seq: i64,
    pub destination: Destination,
    /// The recipients of the original receipt (who the copy is for).
    pub receipt_rcpts: Vec<String>,
    #[serde(skip)]
    pub message: Vec<u8>,
}

fn details_of(row: &EventRow) -> serde_json::Value {
    serde_json::from_str(&row.details).unwrap_or(serde_json::Value::Null)
}

fn detail_str(d: &serde_json::Value, key: &str) -> Option<String> {
    d.get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

fn detail_list(d: &serde_json::Value, key: &str) -> Vec<String> {
    d.get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn angle_msgid(row: &EventRow) -> String {
    match &row.client_msgid {
        Some(m) if !m.trim_matches(['<', '>', ' ']).is_empty() => {
            format!("<{}>", m.trim().trim_matches(['<', '>']))
        }
        _ => format!("<{}>", row.pec_id.clone().unwrap_or_default()),
    }
}

/// The candidates of one message's history, filtered.
fn candidates<'a>(rows: &'a [EventRow], sel: &Selector) -> Vec<(&'a EventRow, ReceiptKind)> {
    rows.iter()
        .filter_map(|r| r.kind().and_then(ReceiptKind::of_event).map(|k| (r, k)))
        .filter(|(r, k)| {
            sel.kind.is_none_or(|want| want == *k)
                && sel.event.is_none_or(|s| s == r.seq)
                && sel.recipient.as_deref().is_none_or(|want| {
                    r.recipient_list()
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(want.trim()))
                })
        })
        .collect()
}

/// Whether `id` is the Message-ID of the receipt the row's event emitted.
fn names_receipt(r: &EventRow, id: &str) -> bool {
    r.generated_id_list()
        .iter()
        .any(|g| g == id && Some(g) != r.pec_id.as_ref())
}

fn describe(r: &EventRow, k: ReceiptKind) -> String {
    format!(
        "  --event {}  {}  {}  {}",
        r.seq,
        k.as_str(),
        r.instant()
            .map_or_else(|| r.event_time.clone(), |t| t.to_rfc3339()),
        r.recipient_list().join(", ")
    )
}

/// Finds the one receipt `sel` designates in the registry.
pub async fn find(
    store: &Store,
    sel: &Selector,
) -> Result<(EventRow, ReceiptKind, Vec<EventRow>), ReproduceError> {
    let id = sel
        .id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    let rows = store.history(&id).await?;
    if rows.is_empty() {
        return Err(ReproduceError::Unknown(id));
    }
    let mut found = candidates(&rows, sel);
    // The lost receipt's own Message-ID designates that receipt alone; so does the
    // Message-ID of an earlier copy of it.
    let copied: Vec<i64> = rows
        .iter()
        .filter(|r| r.kind() == Some(EventType::ReceiptReproduced) && names_receipt(r, &id))
        .filter_map(|r| details_of(r).get("original_seq").and_then(|v| v.as_i64()))
        .collect();
    if found.iter().any(|(r, _)| names_receipt(r, &id)) {
        found.retain(|(r, _)| names_receipt(r, &id));
    } else if !copied.is_empty() {
        found.retain(|(r, _)| copied.contains(&r.seq));
    }
    match found.len() {
        0 => {
            let mut filters = String::new();
            if let Some(k) = sel.kind {
                filters.push_str(&format!(" --type {}", k.as_str()));
            }
            if let Some(r) = &sel.recipient {
                filters.push_str(&format!(" --recipient {r}"));
            }
            if let Some(s) = sel.event {
                filters.push_str(&format!(" --event {s}"));
            }
            let found = rows
                .iter()
                .map(|r| format!("#{} {}", r.seq, r.event_type))
                .collect::<Vec<_>>()
                .join(", ");
            Err(ReproduceError::NoReceipt { id, filters, found })
        }
        1 => {
            let (r, k) = found[0];
            let r = r.clone();
            Ok((r, k, rows))
        }
        n => Err(ReproduceError::Ambiguous {
            id,
            n,
            list: found
                .iter()
                .map(|(r, k)| describe(r, *k))
                .collect::<Vec<_>>()
                .join("\n"),
        }),
    }
}

/// The row that certifies the whole transaction (every recipient): the presa in carico
/// this host's reception point emitted or the acceptance, in the order the receipt's
/// producer looks for them (the bounce path prefers the acceptance, the delivery point
/// reads what the reception point took in charge).
fn transaction_row(rows: &[EventRow], acceptance_first: bool) -> Option<&EventRow> {
    let (first, second) = if acceptance_first {
        (EventType::Acceptance, EventType::TakeChargeEmitted)
    } else {
        (EventType::TakeChargeEmitted, EventType::Acceptance)
    };
    rows.iter()
        .find(|r| r.kind() == Some(first))
        .or_else(|| rows.iter().find(|r| r.kind() == Some(second)))
}

/// The typed recipients a row certifies: to and cc from the presa in carico details, or
/// the acceptance's list with its recorded types.
fn recipients_of(engine: &Engine, row: &EventRow) -> Vec<Recipient> {
    let d = details_of(row);
    let (to, cc) = (detail_list(&d, "to"), detail_list(&d, "cc"));
    let list: Vec<String> = if !to.is_empty() || !cc.is_empty() {
        to.into_iter().chain(cc).collect()
    } else {
        row.recipient_list()
    };
    let types = d.get("recipient_types").and_then(|v| v.as_object());
    list.into_iter()
        .map(|a| {
            let recorded = types
                .and_then(|t| t.get(&a))
                .and_then(|v| v.as_str())
                .and_then(RecipientType::parse);
            Recipient {
                kind: recorded.unwrap_or_else(|| engine.recipient_type(&a)),
                address: a,
            }
        })
        .collect()
}

/// The facts of the original transaction as the receipt `row` certified them.
fn transaction_for(
    engine: &Engine,
    row: &EventRow,
    rows: &[EventRow],
    kind: ReceiptKind,
    instant: Instant,
) -> Transaction {
    let d = details_of(row);
    let sender = row.sender.clone().unwrap_or_default();
    let (sender, to): (String, Vec<Recipient>) = match kind {
        ReceiptKind::Accettazione | ReceiptKind::PresaInCarico => {
            (sender, recipients_of(engine, row))
        }
        ReceiptKind::NonAccettazione => {
            // The notice names the authenticated mailbox as the sender (decisions.md 1).
            let login = detail_str(&d, "login").unwrap_or(sender);
            let mut to = engine.typed(&row.recipient_list());
            if to.is_empty() {
                to = engine.typed(std::slice::from_ref(&login));
            }
            (login, to)
        }
        ReceiptKind::PreavvisoErroreConsegna => (
            sender,
            row.recipient_list()
                .into_iter()
                .map(|a| Recipient {
                    address: a,
                    kind: RecipientType::Certificato,
                })
                .collect(),
        ),
        ReceiptKind::AvvenutaConsegna | ReceiptKind::ErroreConsegna => {
            let to = match transaction_row(rows, kind == ReceiptKind::ErroreConsegna) {
                Some(t) => recipients_of(engine, t),
                None => engine.typed(&row.recipient_list()),
            };
            (sender, to)
        }
    };
    let reply_to = detail_str(&d, "reply_to").or_else(|| {
        transaction_row(rows, kind == ReceiptKind::ErroreConsegna)
            .and_then(|t| detail_str(&details_of(t), "reply_to"))
    });
    Transaction {
        instant,
        identificativo: row.pec_id.clone().unwrap_or_default(),
        client_msgid: angle_msgid(row),
        sender,
        to,
        cc: Vec::new(),
        reply_to,
        subject: row.subject.clone(),
        receipt: None,
    }
}

/// Who received the original receipt.
fn receipt_rcpts(row: &EventRow, kind: ReceiptKind) -> Vec<String> {
    let d = details_of(row);
    let sender = row.sender.clone().unwrap_or_default();
    let one = match kind {
        ReceiptKind::Accettazione => detail_str(&d, "login").unwrap_or(sender),
        ReceiptKind::NonAccettazione => detail_str(&d, "login").unwrap_or(sender),
        ReceiptKind::PresaInCarico => detail_str(&d, "mail_receipt").unwrap_or_default(),
        _ => sender,
    };
    if one.is_empty() {
        Vec::new()
    } else {
        vec![one]
    }
}

/// Builds the signed copy of the receipt of `row` (not recorded, not sent).
pub fn build_copy(
    engine: &Engine,
    row: &EventRow,
    kind: ReceiptKind,
    rows: &[EventRow],
    now: DateTime<Utc>,
    message_id: &str,
) -> Result<Built, ReproduceError> {
    let fail = |reason: String| ReproduceError::Unreproducible {
        kind: kind.as_str(),
        seq: row.seq,
        reason,
    };
    let instant = row.instant().ok_or_else(|| {
        fail(format!(
            "unreadable instant {:?} {:?}",
            row.event_time, row.event_zone
        ))
    })?;
    let tx = transaction_for(engine, row, rows, kind, instant);
    let d = details_of(row);
    let recipient = row.recipient_list().into_iter().next().unwrap_or_default();
    let reason = detail_str(&d, "reason").unwrap_or_default();
    let ricezione = row.recipient_list();
    let mail_receipt = detail_str(&d, "mail_receipt").unwrap_or_default();
    let errore_esteso = match kind {
        ReceiptKind::ErroreConsegna => match detail_str(&d, "status") {
            Some(status) => crate::pec::dsn::RecipientStatus {
                recipient: recipient.clone(),
                original: None,
                action: "failed".into(),
                status,
                diagnostic: detail_str(&d, "diagnostic"),
            }
            .errore_esteso(row.provider.as_deref().unwrap_or(&engine.provider.name)),
            None => detail_str(&d, "errore_esteso").unwrap_or_default(),
        },
        _ => String::new(),
    };
    let notice = match kind {
        ReceiptKind::Accettazione => Notice::Accettazione,
        ReceiptKind::NonAccettazione if row.kind() == Some(EventType::Virus) => {
            Notice::NonAccettazioneVirus {
                errore_esteso: &reason,
            }
        }
        ReceiptKind::NonAccettazione => Notice::NonAccettazione {
            errore_esteso: &reason,
        },
        ReceiptKind::PresaInCarico => {
            if mail_receipt.is_empty() {
                return Err(fail(
                    "the row does not name the mailReceipt it went to".into(),
                ));
            }
            Notice::PresaInCarico {
                ricezione: &ricezione,
                mail_receipt: &mail_receipt,
            }
        }
        // No content is kept: the copy is the kind without postacert.eml.
        ReceiptKind::AvvenutaConsegna => Notice::AvvenutaConsegna {
            consegna: &recipient,
            variant: ReceiptType::Sintetica,
            postacert: None,
        },
        ReceiptKind::ErroreConsegna => Notice::ErroreConsegna {
            consegna: &recipient,
            errore: detail_str(&d, "errore")
                .and_then(|e| Errore::parse(&e))
                .unwrap_or(Errore::Altro),
            errore_esteso: &errore_esteso,
        },
        ReceiptKind::PreavvisoErroreConsegna => Notice::Preavviso {
            consegna: &recipient,
            deadline: if row.kind() == Some(EventType::TimerNotice12h) {
                Deadline::H12
            } else {
                Deadline::H24
            },
            errore_esteso: None,
        },
    };
    let mut built = build::build_notice(
        &engine.provider,
        &tx,
        &NoticeParams {
            instant,
            message_id,
            seed: &Engine::random(16),
        },
        &notice,
        &engine.signer,
    )
    .map_err(|e| fail(e.to_string()))?;
    let now_local = crate::pec::types::to_zone(now, engine.time_zone);
    resign(&mut built, engine, &now_local).map_err(fail)?;
    // Date: when the copy was made; the original instant is in the daticert and text.
    for (n, v) in built.headers.iter_mut() {
        if n.eq_ignore_ascii_case("Date") {
            *v = crate::pec::mime::rfc5322_date(&now_local);
        }
    }
    let original = row.generated_id_list().last().cloned();
    if let Some(orig) = original.filter(|o| !o.is_empty() && Some(o) != row.pec_id.as_ref()) {
        let at = built
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case("MIME-Version"))
            .unwrap_or(built.headers.len());
        built.headers.insert(
            at,
            (COPY_HEADER.to_string(), crate::pec::mime::angle(&orig)),
        );
    }
    Ok(built)
}

/// Signs the content of a built multipart/signed body again, at `at` (the builder signs at
/// the notice's instant, which for a copy is in the past).
fn resign(built: &mut Built, engine: &Engine, at: &Instant) -> Result<(), String> {
    let ct = built
        .header("Content-Type")
        .ok_or("the built message has no Content-Type")?
        .to_string();
    let boundary = ct
        .split("boundary=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or("the built message has no boundary")?
        .to_string();
    let body = &built.body;
    let open = format!("\r\n--{boundary}\r\n");
    let start = crate::pec::mime::find(body, open.as_bytes()).ok_or("no first part")? + open.len();
    let sig = format!("\r\n--{boundary}\r\nContent-Type: application/pkcs7-signature");
    let end =
        crate::pec::mime::find(&body[start..], sig.as_bytes()).ok_or("no signature part")? + start;
    let (new_ct, new_body) =
        crate::pec::sign::multipart_signed(&body[start..end], &boundary, &engine.signer, at)
            .map_err(|e| e.to_string())?;
    built.body = new_body;
    for (n, v) in built.headers.iter_mut() {
        if n.eq_ignore_ascii_case("Content-Type") {
            *v = new_ct.clone();
        }
    }
    Ok(())
}

/// Finds the receipt, builds the copy, records it and queues it (or writes it to `output`).
pub async fn reproduce(
    store: &Store,
    engine: &Engine,
    sel: &Selector,
    output: Option<&Path>,
    now: DateTime<Utc>,
) -> Result<Reproduced, ReproduceError> {
    let (row, kind, rows) = find(store, sel).await?;
    let now_local = crate::pec::types::to_zone(now, engine.time_zone);
    let message_id = engine.new_identifier(&now_local);
    let built = build_copy(engine, &row, kind, &rows, now, &message_id)?;
    let bytes = built.to_bytes();
    let rcpts = receipt_rcpts(&row, kind);
    if output.is_none() && rcpts.is_empty() {
        return Err(ReproduceError::Unreproducible {
            kind: kind.as_str(),
            seq: row.seq,
            reason: "the row does not say who received the receipt; use --output".into(),
        });
    }
    let original_message_id = row
        .generated_id_list()
        .last()
        .cloned()
        .filter(|o| Some(o) != row.pec_id.as_ref());

    let mut event = NewEvent::new(now_local, EventType::ReceiptReproduced);
    event.pec_id = row.pec_id.clone();
    event.client_msgid = row.client_msgid.clone();
    event.sender = row.sender.clone();
    event.recipients = row.recipient_list();
    event.subject = row.subject.clone();
    event.generated_ids = vec![message_id.clone()];
    event.provider = Some(engine.provider.name.clone());
    let original_variant = details_of(&row)
        .get("variant")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    event.details = serde_json::json!({
        "receipt": kind.as_str(),
        "original_seq": row.seq,
        "original_event_type": row.event_type,
        "original_event_time": row.instant().map(|t| t.to_rfc3339()),
        "original_message_id": original_message_id,
        "original_variant": original_variant,
        "delivered_to": if output.is_some() { serde_json::Value::Null } else { serde_json::json!(rcpts) },
        "output": output.map(|p| p.display().to_string()),
    });

    let destination_file = match output {
        Some(path) => {
            write_file(path, &bytes)?;
            Some(path.to_path_buf())
        }
        None => None,
    };
    let record = Record {
        event,
        outbox: if destination_file.is_some() {
            Vec::new()
        } else {
            vec![NewOutboxMessage {
                kind: format!("copia-{}", kind.as_str()),
                mail_from: engine.provider.system_address.clone(),
                rcpts: rcpts.clone(),
                message: bytes.clone(),
                hold_for_queue_id: None,
            }]
        },
        state: Vec::new(),
        idempotency_key: None,
    };
    let outcome = match store.record(&record, now).await {
        Ok(o) => o,
        Err(e) => {
            // Nothing leaves without its registry row.
            if let Some(p) = &destination_file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    let destination = match destination_file {
        Some(path) => Destination::File { path },
        None => Destination::Outbox {
            rcpts: rcpts.clone(),
            outbox_id: outcome.outbox_ids.first().copied().unwrap_or_default(),
        },
    };
    Ok(Reproduced {
        kind,
        original_seq: row.seq,
        original_event_type: row.event_type.clone(),
        original_instant: row
            .instant()
            .map_or_else(|| row.event_time.clone(), |t| t.to_rfc3339()),
        original_message_id,
        pec_id: row.pec_id.clone(),
        message_id,
        seq: outcome.seq,
        destination,
        receipt_rcpts: rcpts,
        message: bytes,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReproduceError> {
    let io = |e: std::io::Error| ReproduceError::Io(format!("{}: {e}", path.display()));
    if path.as_os_str() == "-" {
        return std::io::stdout().lock().write_all(bytes).map_err(io);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Runs a `receipt` command with the loaded configuration.
pub async fn run(cmd: ReceiptCommand, config: &Config) -> ExitCode {
    let ReceiptCommand::Reproduce(args) = cmd;
    let engine = match Engine::load(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pecora receipt: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match Store::open(&config.store.url).await {
        Ok(s) => s.with_host(config.host_id()),
        Err(e) => {
            eprintln!(
                "pecora receipt: cannot open the registry {}: {e}",
                config.store.url
            );
            return ExitCode::from(2);
        }
    };
    // The daemon injects only sealed outbox rows (crate::store::seal).
    let store = match crate::store::seal::OutboxKey::from_signer(&engine.signer) {
        Ok(k) => store.with_outbox_key(k),
        Err(e) => {
            eprintln!("pecora receipt: cannot derive the outbox key from the signing key: {e}");
            return ExitCode::from(2);
        }
    };
    let sel = Selector {
        id: args.id.clone(),
        kind: args.kind,
        recipient: args.recipient.clone(),
        event: args.event,
    };
    match reproduce(
        &store,
        &engine,
        &sel,
        args.output.as_deref(),
        chrono::Utc::now(),
    )
    .await
    {
        Ok(r) => {
            let to_stdout = args.output.as_deref().is_some_and(|p| p.as_os_str() == "-");
            if args.json && !to_stdout {
                match serde_json::to_string_pretty(&r) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("pecora receipt: {e}"),
                }
            } else {
                let what = format!(
                    "{} of {} (registry row {}, {})",
                    r.kind.as_str(),
                    r.pec_id.as_deref().unwrap_or("-"),
                    r.original_seq,
                    r.original_instant
                );
                let line = match &r.destination {
                    Destination::Outbox { rcpts, outbox_id } => format!(
                        "reproduced the {what} as <{}>: queued for {} (outbox message {outbox_id}; the daemon sends it); recorded as registry row {}",
                        r.message_id,
                        rcpts.join(", "),
                        r.seq
                    ),
                    Destination::File { path } => format!(
                        "reproduced the {what} as <{}>: written to {}; recorded as registry row {}",
                        r.message_id,
                        path.display(),
                        r.seq
                    ),
                };
                if to_stdout {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pecora receipt: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
