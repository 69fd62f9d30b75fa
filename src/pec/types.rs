//! Domain vocabulary shared by every part of the PEC engine.
//!
//! Literal tokens (`posta-certificata`, `avvenuta-consegna`, …) are the exact strings of
//! pec-format.md §2 and §3; they are written exactly so and matched case-insensitively.

use std::fmt;

/// The `tipo` attribute of daticert.xml: which PEC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tipo {
    Accettazione,
    NonAccettazione,
    PresaInCarico,
    AvvenutaConsegna,
    PostaCertificata,
    ErroreConsegna,
    PreavvisoErroreConsegna,
    RilevazioneVirus,
}

impl Tipo {
    pub const ALL: [Tipo; 8] = [
        Tipo::Accettazione,
        Tipo::NonAccettazione,
        Tipo::PresaInCarico,
        Tipo::AvvenutaConsegna,
        Tipo::PostaCertificata,
        Tipo::ErroreConsegna,
        Tipo::PreavvisoErroreConsegna,
        Tipo::RilevazioneVirus,
    ];

    /// The literal token, as written in daticert `tipo` and in `X-Ricevuta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tipo::Accettazione => "accettazione",
            Tipo::NonAccettazione => "non-accettazione",
            Tipo::PresaInCarico => "presa-in-carico",
            Tipo::AvvenutaConsegna => "avvenuta-consegna",
            Tipo::PostaCertificata => "posta-certificata",
            Tipo::ErroreConsegna => "errore-consegna",
            Tipo::PreavvisoErroreConsegna => "preavviso-errore-consegna",
            Tipo::RilevazioneVirus => "rilevazione-virus",
        }
    }

    /// Case-insensitive parse of the literal token.
    pub fn parse(s: &str) -> Option<Tipo> {
        let s = s.trim();
        Tipo::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Tipo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `errore` attribute of daticert.xml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Errore {
    #[default]
    Nessuno,
    NoDest,
    NoDominio,
    Virus,
    Altro,
}

impl Errore {
    pub const ALL: [Errore; 5] =
        [Errore::Nessuno, Errore::NoDest, Errore::NoDominio, Errore::Virus, Errore::Altro];

    pub fn as_str(self) -> &'static str {
        match self {
            Errore::Nessuno => "nessuno",
            Errore::NoDest => "no-dest",
            Errore::NoDominio => "no-dominio",
            Errore::Virus => "virus",
            Errore::Altro => "altro",
        }
    }

    pub fn parse(s: &str) -> Option<Errore> {
        let s = s.trim();
        Errore::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Errore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receipt type requested by the sender (`X-TipoRicevuta`, daticert `<ricevuta tipo>`).
/// Absent means `completa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptType {
    #[default]
    Completa,
    Breve,
    Sintetica,
}

impl ReceiptType {
    pub const ALL: [ReceiptType; 3] =
        [ReceiptType::Completa, ReceiptType::Breve, ReceiptType::Sintetica];

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Completa => "completa",
            ReceiptType::Breve => "breve",
            ReceiptType::Sintetica => "sintetica",
        }
    }

    pub fn parse(s: &str) -> Option<ReceiptType> {
        let s = s.trim();
        ReceiptType::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for ReceiptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `destinatari tipo`: is the recipient's domain a PEC domain (in the index) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientType {
    #[default]
    Certificato,
    Esterno,
}

impl RecipientType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientType::Certificato => "certificato",
            RecipientType::Esterno => "esterno",
        }
    }

    pub fn parse(s: &str) -> Option<RecipientType> {
        match s.trim() {
            t if t.eq_ignore_ascii_case("certificato") => Some(RecipientType::Certificato),
            t if t.eq_ignore_ascii_case("esterno") => Some(RecipientType::Esterno),
            _ => None,
        }
    }

    /// The tag of the human-readable texts: `posta certificata` / `posta ordinaria`.
    pub fn text_tag(self) -> &'static str {
        match self {
            RecipientType::Certificato => "posta certificata",
            RecipientType::Esterno => "posta ordinaria",
        }
    }
}

impl fmt::Display for RecipientType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recipient of the original message, with its type from the provider index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(rename = "type")]
    pub kind: RecipientType,
}

/// The kind of a message as the classifier sees it (pec-format.md §11): which of the
/// eleven PEC messages, or ordinary mail. The verifier decides the kind from the signed
/// daticert `tipo`; the classifier from the top-level headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    /// `X-Trasporto: posta-certificata`.
    BustaTrasporto,
    /// `X-Trasporto: errore`.
    BustaAnomalia,
    /// `X-Ricevuta: <tipo>`; `virus` is true when `X-VerificaSicurezza: errore` is present.
    Notice { tipo: Tipo, virus: bool },
    /// No PEC header at the top level.
    Ordinary,
}

impl MessageKind {
    /// A short stable label used in logs, JSON output and the registry.
    pub fn label(&self) -> String {
        match self {
            MessageKind::BustaTrasporto => "posta-certificata".into(),
            MessageKind::BustaAnomalia => "anomalia".into(),
            MessageKind::Notice { tipo, virus: false } => tipo.as_str().into(),
            MessageKind::Notice { tipo, virus: true } => format!("{}-virus", tipo.as_str()),
            MessageKind::Ordinary => "ordinaria".into(),
        }
    }
}

/// The one instant of a transaction (decisions.md 6), already converted to the provider's
/// zone. The format code never reads a clock: callers pass this in.
pub type Instant = chrono::DateTime<chrono::FixedOffset>;

/// Converts a UTC instant to the given IANA zone (default Europe/Rome) as a fixed offset.
pub fn to_zone(utc: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> Instant {
    utc.with_timezone(&tz).fixed_offset()
}

/// `zona` as daticert writes it: `+0100`.
pub fn zona(t: &Instant) -> String {
    t.format("%z").to_string()
}

/// Headers that only pecora may set at the top level of a PEC message.
pub const PEC_HEADERS: [&str; 6] = [
    "X-Trasporto",
    "X-Ricevuta",
    "X-Riferimento-Message-ID",
    "X-VerificaSicurezza",
    "X-Mittente",
    "X-TipoRicevuta",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_case_insensitively() {
        for t in Tipo::ALL {
            assert_eq!(Tipo::parse(&t.as_str().to_uppercase()), Some(t));
        }
        for e in Errore::ALL {
            assert_eq!(Errore::parse(e.as_str()), Some(e));
        }
        assert_eq!(ReceiptType::parse(" Breve "), Some(ReceiptType::Breve));
        assert_eq!(RecipientType::parse("ESTERNO"), Some(RecipientType::Esterno));
        assert_eq!(Tipo::parse("mancata-consegna"), None);
    }
}
