//! daticert.xml, the certification data of every PEC message but the anomaly envelope
//! (pec-format.md §3). Pure: the model, its XML form and its parser.

use super::types::{Errore, Instant, ReceiptType, Recipient, Tipo};

/// The whole content of a daticert.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daticert {
    pub tipo: Tipo,
    pub errore: Errore,
    /// `<mittente>`: the From address of the original.
    pub mittente: String,
    /// One `<destinatari>` per To/Cc address of the original.
    pub destinatari: Vec<Recipient>,
    /// `<risposte>`: Reply-To of the original, or the sender when it had none.
    pub risposte: String,
    /// `<oggetto>`: Subject of the original (optional in the DTD).
    pub oggetto: Option<String>,
    /// `<gestore-emittente>`: the emitting provider's descriptive name.
    pub gestore_emittente: String,
    /// `<data zona>` / `<giorno>` / `<ora>`.
    pub data: Instant,
    /// `<identificativo>`: the PEC msgid, without angle brackets.
    pub identificativo: String,
    /// `<msgid>`: the client's Message-ID with angle brackets.
    pub msgid: Option<String>,
    /// `<ricevuta tipo>`: envelopes and delivery receipts.
    pub ricevuta: Option<ReceiptType>,
    /// `<consegna>`: delivery, non-delivery, virus, timeout notices.
    pub consegna: Option<String>,
    /// `<ricezione>`: presa-in-carico, one per covered recipient.
    pub ricezione: Vec<String>,
    /// `<errore-esteso>`.
    pub errore_esteso: Option<String>,
}
