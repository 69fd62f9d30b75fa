//! Verifying an incoming message at the reception point (pec-format.md §4.2, decisions.md
//! 15): the provider index, the daticert parser, and the checks that make a message
//! genuine PEC. Pure: bytes and an instant in, a verdict out.
//!
//! A message is genuine only if, in this order:
//! 1. it is S/MIME signed: a top-level multipart/signed with a readable detached CMS
//!    signature carrying one signer and its certificate;
//! 2. the signer certificate's SHA-1 is listed in the index (`providerCertificateHash`) and
//!    the same entry's `providerCertificate` is that very certificate;
//! 3. the signature is valid over the signed content, the certificate was within its
//!    validity period at the instant checked (arrival at the reception point, the CMS
//!    signingTime for `pecora verify`), its chain validates to the configured CA bundle at
//!    that instant, and no configured CRL revokes it;
//! 4. its MIME structure has one reading only (no duplicate `boundary` or other parameter,
//!    no RFC 2231 continuation, no header name with white space before the colon, no repeated
//!    Content-Type, Content-Disposition or Content-Transfer-Encoding: see `structure`), the
//!    signed content carries a well-formed daticert.xml (and a postacert.eml for a transport
//!    envelope), and every unsigned outer header that states a fact (X-Trasporto,
//!    X-Ricevuta, X-TipoRicevuta, X-VerificaSicurezza, X-Riferimento-Message-ID, Subject, To,
//!    Cc, Reply-To, Date, and the envelope's Message-ID) agrees with it;
//! 5. the single From: address belongs to a domain the signer's provider manages.
//!
//! Every fact the caller uses comes from the signed content. Each failure has its own
//! [`Reason`].

mod daticert_xml;
mod index;
/// Public for the fuzz targets (fuzz/fuzz_targets/mime.rs): the raw MIME helpers.
pub mod smime;
mod structure;

use chrono::{DateTime, Utc};
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::daticert::Daticert;
use super::types::{Errore, Instant, ReceiptType, Tipo};

pub use daticert_xml::DaticertError;
pub use index::{CertificateLookup, IndexError, ProviderEntry, ProviderIndex, ldif_entry};
pub use smime::{TrustAnchors, header_fields, split_header};

/// A genuine PEC message and the facts taken from its signed content.
#[derive(Debug, Clone)]
pub struct GenuinePec {
    pub daticert: Daticert,
    /// Name of the signing provider (from the index).
    pub provider: String,
    /// Its service mailbox (`mailReceipt`).
    pub mail_receipt: String,
    /// A virus notice: the signed daticert says `errore="virus"` (the outer
    /// `X-VerificaSicurezza: errore`, when present, must agree).
    pub virus: bool,
    /// To and Cc of the original, from the signed postacert.eml (envelopes).
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// The signed postacert.eml (envelopes): what a completa or breve delivery receipt
    /// carries.
    pub postacert: Option<Vec<u8>>,
    /// The message's own Message-ID (without brackets). On a transport envelope it was
    /// checked to equal the daticert `identificativo`.
    pub message_id: String,
    /// DER of the signer certificate.
    pub signer_der: Vec<u8>,
}

/// Why a message is not genuine PEC: one variant per failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("ordinary mail: no X-Trasporto or X-Ricevuta header")]
    OrdinaryMail,
    #[error("the message is not S/MIME signed: {0}")]
    NotSigned(String),
    #[error("the signature cannot be read: {0}")]
    MalformedSignature(String),
    #[error("the signature carries no signer certificate")]
    NoSignerCertificate,
    #[error("the signature does not match the signed content")]
    BadSignature,
    #[error("the signer certificate (SHA-1 {sha1}) is not in the provider index")]
    UnknownSigner { sha1: String },
    #[error(
        "the provider index lists the signer's SHA-1 {sha1} for {provider}, but that entry's providerCertificate is a different certificate"
    )]
    SignerNotMatchingIndex { provider: String, sha1: String },
    #[error("the signer certificate was not yet valid at {at} (valid from {not_before})")]
    CertificateNotYetValid {
        at: DateTime<Utc>,
        not_before: DateTime<Utc>,
    },
    #[error("the signer certificate had expired at {at} (valid until {not_after})")]
    CertificateExpired {
        at: DateTime<Utc>,
        not_after: DateTime<Utc>,
    },
    #[error("the signer certificate's validity dates cannot be read")]
    CertificateUnreadable,
    #[error("the signer certificate does not chain to the configured CA bundle at {at}: {detail}")]
    ChainInvalid { at: DateTime<Utc>, detail: String },
    #[error("the certificate {subject} (serial {serial}) was revoked on {since}")]
    Revoked {
        subject: String,
        serial: String,
        since: DateTime<Utc>,
    },
    #[error(
        "revocation cannot be checked: no configured CRL covers the signer certificate's issuer {issuer}"
    )]
    RevocationUnknown { issuer: String },
    #[error(
        "revocation cannot be checked: the CRL of {issuer} was out of date at {at} (next update {next_update})"
    )]
    CrlOutOfDate {
        issuer: String,
        at: DateTime<Utc>,
        next_update: DateTime<Utc>,
    },
    #[error("the signed content is not a readable MIME message")]
    SignedContentUnreadable,
    #[error("daticert.xml is missing from the signed content")]
    MissingDaticert,
    #[error("daticert.xml is malformed: {0}")]
    MalformedDaticert(DaticertError),
    #[error("the transport envelope carries no postacert.eml in its signed content")]
    MissingPostacert,
    #[error("the MIME structure can be read in more than one way: {0}")]
    AmbiguousStructure(String),
    #[error("the header field {header} appears {count} times")]
    DuplicateHeader { header: &'static str, count: usize },
    #[error("the outer header {header} says {outer:?} but the signed daticert says {signed:?}")]
    HeaderMismatch {
        header: &'static str,
        outer: String,
        signed: String,
    },
    #[error("the From: header does not hold exactly one address")]
    FromNotSingleAddress,
    #[error("the From: domain {domain:?} is not managed by the signer's provider {provider}")]
    FromDomainNotManaged { domain: String, provider: String },
    #[error(
        "the notice settles {recipient}, whose domain is not managed by its signer {provider}"
    )]
    NotRecipientsProvider { recipient: String, provider: String },
    #[error("internal error while verifying: {0}")]
    Internal(String),
}

impl Reason {
    /// A short stable code for logs and JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::OrdinaryMail => "ordinary-mail",
            Reason::NotSigned(_) => "not-signed",
            Reason::MalformedSignature(_) => "malformed-signature",
            Reason::NoSignerCertificate => "no-signer-certificate",
            Reason::BadSignature => "bad-signature",
            Reason::UnknownSigner { .. } => "unknown-signer",
            Reason::SignerNotMatchingIndex { .. } => "signer-not-matching-index",
            Reason::CertificateNotYetValid { .. } => "certificate-not-yet-valid",
            Reason::CertificateExpired { .. } => "certificate-expired",
            Reason::CertificateUnreadable => "certificate-unreadable",
            Reason::ChainInvalid { .. } => "chain-invalid",
            Reason::Revoked { .. } => "revoked",
            Reason::RevocationUnknown { .. } => "revocation-unknown",
            Reason::CrlOutOfDate { .. } => "crl-out-of-date",
            Reason::SignedContentUnreadable => "signed-content-unreadable",
            Reason::MissingDaticert => "missing-daticert",
            Reason::MalformedDaticert(_) => "malformed-daticert",
            Reason::MissingPostacert => "missing-postacert",
            Reason::AmbiguousStructure(_) => "ambiguous-structure",
            Reason::DuplicateHeader { .. } => "duplicate-header",
            Reason::HeaderMismatch { .. } => "header-mismatch",
            Reason::FromNotSingleAddress => "from-not-single-address",
            Reason::FromDomainNotManaged { .. } => "from-domain-not-managed",
            Reason::NotRecipientsProvider { .. } => "not-recipients-provider",
            Reason::Internal(_) => "internal",
        }
    }
}

/// The reception point's verdict.
#[derive(Debug, Clone)]
pub enum Verdict {
    Genuine(Box<GenuinePec>),
    /// Not genuine PEC; `claimed` when it carries PEC headers (a forgery or damage) rather
    /// than being plain ordinary mail.
    NotGenuine {
        claimed: bool,
        reason: Reason,
    },
}

/// Reads a certificate in PEM or DER (the index signer, a CA).
pub fn certificate_from_bytes(data: &[u8]) -> Result<openssl::x509::X509, String> {
    openssl::x509::X509::from_pem(data)
        .or_else(|_| openssl::x509::X509::from_der(data))
        .map_err(|_| "not an X.509 certificate (PEM or DER)".to_string())
}

/// The CMS signingTime of the message's signature, read without verifying anything:
/// `pecora verify` checks an archived message's certificate at this instant (decisions.md
/// 15); [`verify`] then checks that the signature, signingTime included, is genuine.
pub fn signing_time(raw: &[u8]) -> Option<DateTime<Utc>> {
    smime::multipart_signing_time(raw)
}

/// The certificate whose S/MIME signature over `raw` is valid: the signature alone, with
/// no index, chain or time check (how the milter recognises a message it signed itself).
pub fn verified_signer(raw: &[u8]) -> Option<openssl::x509::X509> {
    smime::verify_multipart_signed(raw).ok().map(|v| v.signature.signer)
}

/// Verifies `raw` with the signer certificate checked at `at` (the arrival instant at the
/// reception point; the CMS signingTime for an archived message, see [`signing_time`]).
pub fn verify(raw: &[u8], index: &ProviderIndex, at: &Instant) -> Verdict {
    // decisions.md 23: a receipt about mailboxes its signer does not manage is no receipt.
    match check(raw, index, at.with_timezone(&Utc)).and_then(|g| match check_issuer_manages_recipients(&g, index) {
        Ok(()) => Ok(g),
        Err(reason) => Err(Failed { claimed: true, reason }),
    }) {
        Ok(g) => Verdict::Genuine(Box::new(g)),
        Err(Failed { claimed, reason }) => Verdict::NotGenuine { claimed, reason },
    }
}

struct Failed {
    claimed: bool,
    reason: Reason,
}

impl From<Reason> for Failed {
    fn from(reason: Reason) -> Failed {
        Failed {
            claimed: true,
            reason,
        }
    }
}

/// Outer header fields that must appear at most once.
const SINGLE: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Date",
    "Subject",
    "Message-ID",
    "X-Trasporto",
    "X-Ricevuta",
    "X-TipoRicevuta",
    "X-Riferimento-Message-ID",
    "X-VerificaSicurezza",
];

/// Checks 1 to 3 (pec-format.md §4): the message is S/MIME signed, the signature holds over
/// the signed content, its signer is a provider of the index, and the signer certificate
/// was valid and trusted at `at`.
fn authenticate<'r, 'i>(
    raw: &'r [u8],
    index: &'i ProviderIndex,
    at: DateTime<Utc>,
) -> Result<(smime::VerifiedSmime<'r>, &'i ProviderEntry), Failed> {
    // 1 and 3: signature existence and validity over the signed content.
    let verified = smime::verify_multipart_signed(raw).map_err(|e| {
        use smime::SmimeError as E;
        Failed::from(match e {
            E::NotMultipartSigned(_) | E::NoBoundary | E::NoSignedContent | E::NoSignaturePart => {
                Reason::NotSigned(e.to_string())
            }
            E::DuplicateContentType(n) => Reason::DuplicateHeader {
                header: "Content-Type",
                count: n,
            },
            E::ExtraParts(_)
            | E::NotPkcs7Mime(_)
            | E::WrongSignatureType(_)
            | E::SignatureEncoding(_)
            | E::SignatureUnreadable
            | E::NotSignedData
            | E::SignerCount(_)
            | E::NoContent => Reason::MalformedSignature(e.to_string()),
            E::NoSignerCertificate => Reason::NoSignerCertificate,
            E::Mismatch => Reason::BadSignature,
            E::Internal(m) => Reason::Internal(m),
        })
    })?;
    let signer = &verified.signature.signer;
    let der = signer
        .to_der()
        .map_err(|e| Reason::Internal(e.to_string()))?;

    // 2: signature origin.
    let provider = match index.lookup_certificate(&der) {
        CertificateLookup::Listed(p) => p,
        CertificateLookup::HashOnly(p) => {
            return Err(Reason::SignerNotMatchingIndex {
                provider: p.name.clone(),
                sha1: smime::certificate_sha1(signer),
            }
            .into());
        }
        CertificateLookup::NotListed => {
            return Err(Reason::UnknownSigner {
                sha1: smime::certificate_sha1(signer),
            }
            .into());
        }
    };

    // 3: temporal validity, chain, revocation.
    let (not_before, not_after) =
        smime::validity_period(signer).ok_or(Reason::CertificateUnreadable)?;
    if at < not_before {
        return Err(Reason::CertificateNotYetValid { at, not_before }.into());
    }
    if at > not_after {
        return Err(Reason::CertificateExpired { at, not_after }.into());
    }
    smime::check_trust(signer, &verified.signature.certificates, &index.trust, at).map_err(
        |e| {
            use smime::TrustError as T;
            Failed::from(match e {
                T::Chain(detail) => Reason::ChainInvalid { at, detail },
                T::Revoked {
                    subject,
                    serial,
                    since,
                } => Reason::Revoked {
                    subject,
                    serial,
                    since,
                },
                T::NoCrl { issuer } => Reason::RevocationUnknown { issuer },
                T::CrlOutOfDate {
                    issuer,
                    next_update,
                } => Reason::CrlOutOfDate {
                    issuer,
                    at,
                    next_update,
                },
                T::Internal(m) => Reason::Internal(m),
            })
        },
    )?;

    Ok((verified, provider))
}

/// A busta di anomalia (pec-format.md §1.2 row 2) signed by a provider of the index: the
/// provider says that the message it wraps is not certified, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyEnvelope {
    /// The provider that signed the envelope (its providerName in the index).
    pub provider: String,
    /// The error the envelope's signed text gives (the line after "Tali dati non sono
    /// stati certificati per il seguente errore:"), when the text has one.
    pub reason: Option<String>,
}

/// When `raw` is a busta di anomalia (`X-Trasporto: errore`) whose signature passes checks
/// 1 to 3 at `at`, who signed it and the reason it states; None otherwise (not an anomaly
/// envelope, or one that no provider of the index signed: then it proves nothing).
pub fn anomaly(raw: &[u8], index: &ProviderIndex, at: &Instant) -> Option<AnomalyEnvelope> {
    let (head, _) = smime::split_header(raw);
    let fields = smime::header_fields(head);
    let values = smime::header_values(&fields, "X-Trasporto");
    if values.len() != 1 || !values[0].trim().eq_ignore_ascii_case("errore") {
        return None;
    }
    let (verified, provider) = authenticate(raw, index, at.with_timezone(&Utc)).ok()?;
    let inner = MessageParser::default().parse(&verified.signed_content[..])?;
    let reason = (0..)
        .map_while(|i| inner.body_text(i))
        .find_map(|text| anomaly_reason(&text));
    Some(AnomalyEnvelope {
        provider: provider.name.clone(),
        reason,
    })
}

/// The reason line of an anomaly envelope's text (pecora's text and RFC 6109's model).
fn anomaly_reason(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| l.starts_with("Tali dati non sono stati certificati"))?;
    lines.find(|l| !l.is_empty()).map(str::to_string)
}

fn check(raw: &[u8], index: &ProviderIndex, at: DateTime<Utc>) -> Result<GenuinePec, Failed> {
    let (head, _) = smime::split_header(raw);
    let fields = smime::header_fields(head);
    let one = |name: &str| smime::header_value(&fields, name);
    if one("X-Trasporto").is_none() && one("X-Ricevuta").is_none() {
        return Err(Failed {
            claimed: false,
            reason: Reason::OrdinaryMail,
        });
    }

    let (verified, provider) = authenticate(raw, index, at)?;
    let signer = &verified.signature.signer;
    let der = signer
        .to_der()
        .map_err(|e| Reason::Internal(e.to_string()))?;

    // 4: formal correctness. One reading of the structure first: what is parsed here is
    // what Dovecot and the mail client show.
    if let Some(found) = structure::ambiguity(raw) {
        return Err(Reason::AmbiguousStructure(found).into());
    }
    // Only the XML part is parsed for facts (pec-format.md §1.5).
    let inner = MessageParser::default()
        .parse(&verified.signed_content[..])
        .ok_or(Reason::SignedContentUnreadable)?;
    let mut daticert_xml = None;
    let mut postacert: Option<Vec<u8>> = None;
    // `inner.parts` holds the parts of the signed entity itself; the parts of an attached
    // message (postacert.eml) live in its own nested message and are never looked at here.
    for part in inner.parts.iter() {
        let name = part
            .attachment_name()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name == "daticert.xml" && daticert_xml.is_none() {
            daticert_xml = Some(part.contents().to_vec());
        } else if name == "postacert.eml" && postacert.is_none() {
            postacert = match &part.body {
                PartType::Message(m) => Some(m.raw_message().to_vec()),
                _ => Some(part.contents().to_vec()),
            };
        }
    }
    let xml = daticert_xml.ok_or(Reason::MissingDaticert)?;
    let daticert = Daticert::parse(&xml).map_err(Reason::MalformedDaticert)?;
    let envelope = daticert.tipo == Tipo::PostaCertificata;
    if envelope && postacert.is_none() {
        return Err(Reason::MissingPostacert.into());
    }

    // The unsigned outer headers must agree with the signed daticert.
    for name in SINGLE {
        let count = smime::header_values(&fields, name).len();
        if count > 1 {
            return Err(Reason::DuplicateHeader {
                header: name,
                count,
            }
            .into());
        }
    }
    let outer = MessageParser::default()
        .parse_headers(raw)
        .ok_or(Reason::FromNotSingleAddress)?;
    let original = postacert
        .as_deref()
        .and_then(|p| MessageParser::default().parse_headers(p));
    agree_with_daticert(&|n| one(n).map(str::to_string), outer.subject(), &daticert)?;
    // The sender provider's service mailbox, where presa in carico and rilevazione virus go.
    let service = daticert
        .mittente
        .rsplit_once('@')
        .and_then(|(_, d)| index.provider_for_domain(d))
        .map(|p| p.mail_receipt.clone());
    agree_on_addresses_and_date(
        &|n| one(n).map(str::to_string),
        &outer,
        original.as_ref(),
        &daticert,
        service.as_deref(),
        at,
    )?;

    // 5: the From: domain belongs to the signer's provider.
    let from: Vec<String> = outer
        .from()
        .map(|a| {
            a.iter()
                .map(|x| x.address().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let [from] = from.as_slice() else {
        return Err(Reason::FromNotSingleAddress.into());
    };
    let from_domain = from
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    if !provider.manages(&from_domain) {
        return Err(Reason::FromDomainNotManaged {
            domain: from_domain,
            provider: provider.name.clone(),
        }
        .into());
    }

    let (to, cc) = match &original {
        Some(p) => (addresses(p.to()), addresses(p.cc())),
        None => (Vec::new(), Vec::new()),
    };
    Ok(GenuinePec {
        virus: daticert.errore == Errore::Virus,
        message_id: one("Message-ID").map(bare_id).unwrap_or_default(),
        provider: provider.name.clone(),
        mail_receipt: provider.mail_receipt.clone(),
        daticert,
        to,
        cc,
        postacert,
        signer_der: der,
    })
}

/// A message identifier without angle brackets and whitespace.
fn bare_id(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// The Subject prefixes a provider writes for each tipo (pec-format.md §1.3), longest first.
fn subject_prefixes(tipo: Tipo) -> &'static [&'static str] {
    match tipo {
        Tipo::PostaCertificata => &["POSTA CERTIFICATA: "],
        Tipo::Accettazione => &["ACCETTAZIONE: "],
        Tipo::NonAccettazione => &[
            "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
            "AVVISO DI NON ACCETTAZIONE: ",
        ],
        Tipo::PresaInCarico => &["PRESA IN CARICO: "],
        Tipo::AvvenutaConsegna => &["CONSEGNA: "],
        Tipo::ErroreConsegna => &[
            "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
            "AVVISO DI MANCATA CONSEGNA: ",
        ],
        Tipo::PreavvisoErroreConsegna => &["AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: "],
        Tipo::RilevazioneVirus => &["PROBLEMA DI SICUREZZA: "],
    }
}

/// Whether the decoded outer Subject is `<prefix><oggetto>`. Compared character by
/// character, whitespace removed (folding and RFC 2047 encoded-word boundaries change only
/// whitespace), the prefix case-insensitively. Every other character must be the same one,
/// so a Cyrillic or full-width look-alike letter, or a word added in such letters, is a
/// disagreement. The one tolerance is for a lossy charset conversion of the 8-bit subject
/// on the way: a run of non-ASCII characters of the oggetto may stand in the Subject as a
/// run of U+FFFD or `?` (what a conversion writes for a character it cannot represent).
fn subject_agrees(subject: &str, tipo: Tipo, oggetto: Option<&str>) -> bool {
    let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<Vec<char>>();
    let subject = norm(subject);
    let oggetto = norm(oggetto.unwrap_or(""));
    subject_prefixes(tipo).iter().any(|p| {
        let p = norm(p);
        subject.len() >= p.len()
            && subject[..p.len()]
                .iter()
                .zip(&p)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            && same_text_but_lost_characters(&subject[p.len()..], &oggetto)
    })
}

/// `shown` equals `signed`, except that a run of non-ASCII characters of `signed` may be a
/// run of U+FFFD or `?` in `shown`.
fn same_text_but_lost_characters(shown: &[char], signed: &[char]) -> bool {
    if shown == signed {
        return true;
    }
    let lost = |c: &char| *c == '\u{FFFD}' || *c == '?';
    let (mut i, mut j) = (0, 0);
    while i < shown.len() && j < signed.len() {
        if shown[i] == signed[j] {
            i += 1;
            j += 1;
        } else if lost(&shown[i]) && !signed[j].is_ascii() {
            while i < shown.len() && lost(&shown[i]) {
                i += 1;
            }
            while j < signed.len() && !signed[j].is_ascii() {
                j += 1;
            }
        } else {
            return false;
        }
    }
    i == shown.len() && j == signed.len()
}

/// The addresses of an address header, as written.
fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address().map(str::to_string))
            .collect()
    })
    .unwrap_or_default()
}

/// Lowercase, sorted, deduplicated: how two address lists are compared.
fn address_set<S: AsRef<str>>(list: &[S]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|a| a.as_ref().trim().to_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// To, Cc, Reply-To and Date of the outer header against the signed content (issue 13 item
/// 9), as real providers write them (pec-format.md §1.4):
/// - a transport envelope keeps the original's To and Cc: the same addresses as the signed
///   postacert.eml (display names may differ); its Reply-To is the original's, or the
///   sender (`<risposte>`, `<mittente>`);
/// - a notice goes to the sender (`<mittente>`), or for presa in carico and rilevazione
///   virus to the sender provider's service mailbox; it has no Cc; a Reply-To can only name
///   `<risposte>` or `<mittente>`;
/// - Date, when present, is the daticert's instant (`<data>`, decisions.md 6), to the second;
///   on a reproduced receipt (decisions.md 11, marked by [`COPY_MARK`]) it is the moment of
///   the copy, so it may be later than the daticert instant, but never earlier, nor later
///   than `at` (the arrival, or the signingTime for an archived message) plus
///   [`CLOCK_SKEW`].
///
/// Absent To (notices), Reply-To and Date state nothing and pass.
fn agree_on_addresses_and_date(
    one: &dyn Fn(&str) -> Option<String>,
    outer: &mail_parser::Message<'_>,
    original: Option<&mail_parser::Message<'_>>,
    d: &Daticert,
    service: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), Reason> {
    let mismatch = |header: &'static str, outer: String, signed: String| {
        Err(Reason::HeaderMismatch {
            header,
            outer,
            signed,
        })
    };
    let shown = |name: &str| one(name).unwrap_or_default();
    let within = |list: &[String], allowed: &[String]| {
        let allowed = address_set(allowed);
        address_set(list).iter().all(|a| allowed.contains(a))
    };
    let mut reply_allowed = vec![d.risposte.clone(), d.mittente.clone()];
    if d.tipo == Tipo::PostaCertificata {
        let original = original.ok_or(Reason::MissingPostacert)?;
        for (header, outer_list, signed_list) in [
            ("To", addresses(outer.to()), addresses(original.to())),
            ("Cc", addresses(outer.cc()), addresses(original.cc())),
        ] {
            if address_set(&outer_list) != address_set(&signed_list) {
                return mismatch(
                    header,
                    shown(header),
                    format!("{header} of postacert.eml: {}", signed_list.join(", ")),
                );
            }
        }
        reply_allowed.extend(addresses(original.reply_to()));
    } else {
        let mut to_allowed = vec![d.mittente.clone()];
        if matches!(d.tipo, Tipo::PresaInCarico | Tipo::RilevazioneVirus) {
            to_allowed.extend(service.map(str::to_string));
        }
        if !within(&addresses(outer.to()), &to_allowed) {
            return mismatch("To", shown("To"), to_allowed.join(" or "));
        }
        if one("Cc").is_some() {
            return mismatch("Cc", shown("Cc"), format!("a {} has no Cc", d.tipo));
        }
    }
    if !within(&addresses(outer.reply_to()), &reply_allowed) {
        return mismatch("Reply-To", shown("Reply-To"), reply_allowed.join(" or "));
    }
    if let Some(date) = one("Date") {
        let signed = d.data.timestamp();
        let shown = outer.date().map(|t| t.to_timestamp());
        let agrees = match shown {
            Some(t) if t == signed => true,
            Some(t) if d.tipo != Tipo::PostaCertificata && one(COPY_MARK).is_some() => {
                t > signed && t <= at.timestamp() + CLOCK_SKEW
            }
            _ => false,
        };
        if !agrees {
            return mismatch("Date", date, format!("data {}", d.data.to_rfc3339()));
        }
    }
    Ok(())
}

/// The header that marks a receipt reproduced from the registry (decisions.md 11; written
/// by `pecora receipt reproduce`, `cmd::receipt::COPY_HEADER`).
const COPY_MARK: &str = "X-Pecora-Copia-Di";

/// How far in the future of its arrival a reproduced receipt's Date may be: clock skew
/// between providers, in seconds.
const CLOCK_SKEW: i64 = 300;

/// Decisions.md 23: a presa in carico, avvenuta consegna, errore consegna or rilevazione
/// virus settles the mailboxes it names (`<ricezione>`, `<consegna>`) only when its signer
/// is the provider whose managedDomains contain each mailbox's domain. The one other
/// provider that may report on a transaction is the sender's own: an errore consegna it
/// made from a Postfix bounce (decisions.md 13) names a recipient it could not reach.
/// Other notices (acceptance, non-acceptance, the timeout notice) come from the sender's
/// provider, which the From check (step 5) already binds to the signer.
pub fn check_issuer_manages_recipients(
    g: &GenuinePec,
    index: &ProviderIndex,
) -> Result<(), Reason> {
    let d = &g.daticert;
    let named: Vec<&String> = match d.tipo {
        Tipo::PresaInCarico => d.ricezione.iter().collect(),
        Tipo::AvvenutaConsegna | Tipo::ErroreConsegna | Tipo::RilevazioneVirus => {
            d.consegna.iter().collect()
        }
        _ => return Ok(()),
    };
    let signer = match index.lookup_certificate(&g.signer_der) {
        CertificateLookup::Listed(p) => p,
        _ => return Err(Reason::Internal("the signer is no longer in the index".into())),
    };
    let domain = |a: &str| {
        a.trim()
            .trim_end_matches('>')
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    };
    let senders_own = d.tipo == Tipo::ErroreConsegna && signer.manages(&domain(&d.mittente));
    for r in named {
        if !signer.manages(&domain(r)) && !senders_own {
            return Err(Reason::NotRecipientsProvider {
                recipient: r.clone(),
                provider: signer.name.clone(),
            });
        }
    }
    Ok(())
}

fn agree_with_daticert(
    one: &dyn Fn(&str) -> Option<String>,
    subject: Option<&str>,
    d: &Daticert,
) -> Result<(), Reason> {
    let mismatch = |header: &'static str, outer: &str, signed: String| {
        Err(Reason::HeaderMismatch {
            header,
            outer: outer.to_string(),
            signed,
        })
    };
    let envelope = d.tipo == Tipo::PostaCertificata;
    let tipo = || format!("tipo {}", d.tipo);
    if let Some(t) = one("X-Trasporto")
        && !(envelope && t.trim().eq_ignore_ascii_case("posta-certificata"))
    {
        return mismatch("X-Trasporto", &t, tipo());
    }
    if let Some(r) = one("X-Ricevuta")
        && (envelope || !r.trim().eq_ignore_ascii_case(d.tipo.as_str()))
    {
        return mismatch("X-Ricevuta", &r, tipo());
    }
    // Absent means completa on an envelope; a notice without <ricevuta> states nothing.
    if let Some(r) = one("X-TipoRicevuta")
        && let Some(e) = d.ricevuta.or(envelope.then_some(ReceiptType::Completa))
        && ReceiptType::parse(&r) != Some(e)
    {
        return mismatch(
            "X-TipoRicevuta",
            &r,
            format!("ricevuta tipo {}", e.as_str()),
        );
    }
    if let Some(v) = one("X-VerificaSicurezza")
        && !(v.trim().eq_ignore_ascii_case("errore") && d.errore == Errore::Virus)
    {
        return mismatch(
            "X-VerificaSicurezza",
            &v,
            format!("errore {}", d.errore.as_str()),
        );
    }
    if let Some(m) = one("X-Riferimento-Message-ID") {
        let signed = d.msgid.as_deref().map(bare_id).unwrap_or_default();
        if bare_id(&m) != signed {
            return mismatch("X-Riferimento-Message-ID", &m, format!("msgid <{signed}>"));
        }
    }
    // The transport envelope's Message-ID is the PEC identifier (pec-format.md §2.3).
    if envelope
        && let Some(m) = one("Message-ID")
        && bare_id(&m) != bare_id(&d.identificativo)
    {
        return mismatch(
            "Message-ID",
            &m,
            format!("identificativo {}", d.identificativo),
        );
    }
    if let Some(s) = subject
        && !subject_agrees(s, d.tipo, d.oggetto.as_deref())
    {
        let signed = format!(
            "{}{}",
            subject_prefixes(d.tipo)[0],
            d.oggetto.as_deref().unwrap_or("")
        );
        return mismatch("Subject", s, signed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_comparison_tolerates_folding_and_charset_but_not_edits() {
        let t = Tipo::AvvenutaConsegna;
        assert!(subject_agrees(
            "CONSEGNA: Fattura n. 12",
            t,
            Some("Fattura n. 12")
        ));
        assert!(subject_agrees(
            "consegna:  Fattura n.\t12",
            t,
            Some("Fattura n. 12")
        ));
        assert!(subject_agrees(
            "CONSEGNA: Fattura per\u{FFFD}",
            t,
            Some("Fattura però")
        ));
        assert!(subject_agrees("CONSEGNA: ", t, None));
        assert!(!subject_agrees(
            "CONSEGNA: Fattura n. 13",
            t,
            Some("Fattura n. 12")
        ));
        assert!(!subject_agrees(
            "ACCETTAZIONE: Fattura n. 12",
            t,
            Some("Fattura n. 12")
        ));
        assert!(!subject_agrees("Fattura n. 12", t, Some("Fattura n. 12")));
        assert!(subject_agrees(
            "AVVISO DI MANCATA CONSEGNA PER VIRUS: x",
            Tipo::ErroreConsegna,
            Some("x")
        ));
        assert!(subject_agrees(
            "AVVISO DI MANCATA CONSEGNA: x",
            Tipo::ErroreConsegna,
            Some("x")
        ));
        assert!(!subject_agrees("", Tipo::ErroreConsegna, Some("x")));
    }

    #[test]
    fn subject_look_alikes_are_disagreements() {
        let t = Tipo::PostaCertificata;
        let signed = Some("Fattura però n. 12");
        assert!(subject_agrees("POSTA CERTIFICATA: Fattura però n. 12", t, signed));
        // Lossy conversions of the 8-bit part, one or more replacement characters per letter.
        assert!(subject_agrees("POSTA CERTIFICATA: Fattura per? n. 12", t, signed));
        assert!(subject_agrees("POSTA CERTIFICATA: Fattura per\u{FFFD}\u{FFFD} n. 12", t, signed));
        // Cyrillic а (U+0430) for Latin a; full-width Ｆ; a word added in full-width letters;
        // a Cyrillic word added; a letter dropped for a replacement character.
        for shown in [
            "POSTA CERTIFICATA: F\u{430}ttura però n. 12",
            "POSTA CERTIFICATA: \u{FF26}attura però n. 12",
            "POSTA CERTIFICATA: Fattura però n. 12 \u{FF2E}\u{FF2F}\u{FF2E}",
            "POSTA CERTIFICATA: \u{41D}\u{415} Fattura però n. 12",
            "POSTA CERTIFICATA: Fattura però n. 1\u{FFFD}",
            "POSTA CERTIFICATA: Fattura perö n. 12",
            "POSTA CERTIFICATA: Fattura però n. 12?",
        ] {
            assert!(!subject_agrees(shown, t, signed), "{shown}");
        }
        // The prefix itself in look-alikes.
        assert!(!subject_agrees("P\u{41E}STA CERTIFICATA: Fattura però n. 12", t, signed));
    }

    #[test]
    fn lost_characters_stand_only_for_non_ascii_runs() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert!(same_text_but_lost_characters(&c("a?b"), &c("aèb")));
        assert!(same_text_but_lost_characters(&c("a??b"), &c("aèéb")));
        assert!(!same_text_but_lost_characters(&c("a?b"), &c("axb")));
        assert!(!same_text_but_lost_characters(&c("a?"), &c("aèb")));
        assert!(!same_text_but_lost_characters(&c("a"), &c("aè")));
    }

    #[test]
    fn ids_compare_without_brackets_or_folding() {
        assert_eq!(bare_id(" <a.b@c>\t"), "a.b@c");
        assert_eq!(bare_id("a@b"), "a@b");
    }

    #[test]
    fn every_reason_has_a_distinct_code() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let all = [
            Reason::OrdinaryMail,
            Reason::NotSigned(String::new()),
            Reason::MalformedSignature(String::new()),
            Reason::NoSignerCertificate,
            Reason::BadSignature,
            Reason::UnknownSigner {
                sha1: String::new(),
            },
            Reason::SignerNotMatchingIndex {
                provider: String::new(),
                sha1: String::new(),
            },
            Reason::CertificateNotYetValid { at, not_before: at },
            Reason::CertificateExpired { at, not_after: at },
            Reason::CertificateUnreadable,
            Reason::ChainInvalid {
                at,
                detail: String::new(),
            },
            Reason::Revoked {
                subject: String::new(),
                serial: String::new(),
                since: at,
            },
            Reason::RevocationUnknown {
                issuer: String::new(),
            },
            Reason::CrlOutOfDate {
                issuer: String::new(),
                at,
                next_update: at,
            },
            Reason::SignedContentUnreadable,
            Reason::MissingDaticert,
            Reason::MalformedDaticert(DaticertError::NotUtf8),
            Reason::MissingPostacert,
            Reason::AmbiguousStructure(String::new()),
            Reason::DuplicateHeader {
                header: "From",
                count: 2,
            },
            Reason::HeaderMismatch {
                header: "Subject",
                outer: String::new(),
                signed: String::new(),
            },
            Reason::FromNotSingleAddress,
            Reason::FromDomainNotManaged {
                domain: String::new(),
                provider: String::new(),
            },
            Reason::NotRecipientsProvider {
                recipient: String::new(),
                provider: String::new(),
            },
            Reason::Internal(String::new()),
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(Reason::code).collect();
        assert_eq!(codes.len(), all.len());
        for r in &all {
            let text = r.to_string();
            assert!(text.is_ascii() && !text.is_empty(), "{text}");
        }
    }
}
