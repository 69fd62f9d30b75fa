//! Builders of the eleven PEC messages (pec-format.md §1.3–§1.5, §2.3): the transport and
//! anomaly envelopes and every notice, signed (decisions.md 2).
//!
//! Every builder returns a [`Built`]: the top-level header fields as (name, value) pairs and
//! the body bytes, separately, because the milter replaces headers and body with different
//! calls; [`Built::to_bytes`] gives the whole message for injection. Header values are folded
//! with LF + space (`"a\n b"`), the form Postfix expects from a milter; `to_bytes` writes CRLF.
//! The body always uses CRLF.
//!
//! MIME layout (§1.5):
//! ```text
//! multipart/signed; protocol="application/pkcs7-signature"; micalg="sha-256"
//! ├── multipart/mixed
//! │   ├── multipart/alternative (text/plain + text/html, quoted-printable)
//! │   ├── application/xml daticert.xml (base64)        (not in the anomaly envelope)
//! │   └── message/rfc822 postacert.eml                  (envelopes, completa/breve receipts)
//! └── application/pkcs7-signature smime.p7s
//! ```
//!
//! Inputs are borrowed; the original message (possibly a 50 MB memory map) is copied exactly
//! once, into the output body, and only normalised (bare LF → CRLF) when it is not already
//! canonical.

use std::borrow::Cow;

use super::daticert::Daticert;
use super::mime::{self, MimeError};
use super::sign::{self, SignError, Signer};
use super::text::{self, TextFacts, TextKind};
use super::types::{Errore, Instant, ReceiptType, Recipient, Tipo};

/// The emitting provider: the one that signs this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// `<gestore-emittente>`: descriptive name, as in the provider index (`providerName`).
    pub name: String,
    /// Provider mail domain (right side of PEC identifiers).
    pub domain: String,
    /// The system address: From of notices and address of envelopes, e.g.
    /// `posta-certificata@pec.example.it`. Must match the certificate's rfc822Name.
    pub system_address: String,
}

/// The facts of the original transaction, as the transport envelope certified them. The
/// access point fills it from the submitted message; the reception and delivery points from
/// the verified envelope's daticert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The one instant of acceptance (decisions.md 6), in the provider zone: envelope Date,
    /// acceptance receipt and envelope daticert.
    pub instant: Instant,
    /// The PEC identifier (envelope Message-ID), without angle brackets.
    pub identificativo: String,
    /// The client's Message-ID with angle brackets; when the client set none, the access point
    /// generates one (see [`rewrite_original`]) and passes it here.
    pub client_msgid: String,
    /// The original sender (From address).
    pub sender: String,
    /// To recipients, typed.
    pub to: Vec<Recipient>,
    /// Cc recipients, typed.
    pub cc: Vec<Recipient>,
    /// Reply-To address of the original, if it had one.
    pub reply_to: Option<String>,
    /// The original Subject, decoded.
    pub subject: Option<String>,
    /// `X-TipoRicevuta` of the original; `None` when absent (which means completa).
    pub receipt: Option<ReceiptType>,
}

impl Transaction {
    fn recipients(&self) -> Vec<Recipient> {
        self.to.iter().chain(self.cc.iter()).cloned().collect()
    }
}

/// The original message: either raw bytes (headers, blank line, body), or the split form a
/// milter holds (header fields as received from Postfix, LF-folded, and the CRLF body).
#[derive(Debug, Clone, Copy)]
pub enum Original<'a> {
    Raw(&'a [u8]),
    Split {
        headers: &'a [(String, Vec<u8>)],
        body: &'a [u8],
    },
}

/// Per-notice data: the notice's own instant (delivery time, …), its own fresh Message-ID
/// (without angle brackets) and the random seed for MIME boundaries.
#[derive(Debug, Clone, Copy)]
pub struct NoticeParams<'a> {
    pub instant: Instant,
    pub message_id: &'a str,
    pub seed: &'a [u8],
}

/// Which deadline a `preavviso-errore-consegna` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    H12,
    H24,
}

/// The nine notices, with their own extras.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// #3 ricevuta di accettazione.
    Accettazione,
    /// #4 avviso di non accettazione (formal); `errore="altro"`.
    NonAccettazione { errore_esteso: &'a str },
    /// #5 avviso di non accettazione per virus; `errore="virus"`, `X-VerificaSicurezza: errore`.
    NonAccettazioneVirus { errore_esteso: &'a str },
    /// #6 ricevuta di presa in carico, one `<ricezione>` per covered local recipient, sent to
    /// the sender provider's `mailReceipt`.
    PresaInCarico {
        ricezione: &'a [String],
        mail_receipt: &'a str,
    },
    /// #7 ricevuta di avvenuta consegna for `consegna`. `variant` comes from
    /// [`receipt_variant`]; `postacert` is the postacert.eml of the received envelope, needed
    /// for completa and breve.
    AvvenutaConsegna {
        consegna: &'a str,
        variant: ReceiptType,
        postacert: Option<&'a [u8]>,
    },
    /// #8 avviso di mancata consegna; `errore` is no-dest, no-dominio or altro.
    ErroreConsegna {
        consegna: &'a str,
        errore: Errore,
        errore_esteso: &'a str,
    },
    /// #11 avviso di mancata consegna per virus; `errore="virus"`, `X-VerificaSicurezza: errore`.
    ErroreConsegnaVirus {
        consegna: &'a str,
        errore_esteso: &'a str,
    },
    /// #9 avviso di mancata consegna per superamento dei tempi massimi; `errore="altro"`.
    Preavviso {
        consegna: &'a str,
        deadline: Deadline,
        errore_esteso: Option<&'a str>,
    },
    /// #10 avviso di rilevazione virus, to the sender provider's `mailReceipt`, with
    /// `X-Mittente`; `errore="virus"`.
    RilevazioneVirus {
        consegna: &'a str,
        mail_receipt: &'a str,
        errore_esteso: &'a str,
    },
}

/// The data of an anomaly envelope besides the received message.
#[derive(Debug, Clone, Copy)]
pub struct Anomaly<'a> {
    /// Arrival instant, provider zone.
    pub instant: Instant,
    /// The anomaly's own Message-ID (without angle brackets), a new identifier: never the
    /// received message's, which its sender chose (decisions.md 19).
    pub message_id: &'a str,
    /// Sender of the received message (From address, or the envelope sender).
    pub sender: &'a str,
    /// Its Subject, decoded.
    pub subject: Option<&'a str>,
    /// Its recipients, for the text.
    pub recipients: &'a [Recipient],
    /// Why it is not a valid PEC message (for the text), e.g. "messaggio non di posta certificata".
    pub reason: &'a str,
    /// Random seed for MIME boundaries.
    pub seed: &'a [u8],
}

/// A built message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Trace fields (`Return-Path`, `Received`) copied from the original, in order. A milter
    /// leaves the original's trace fields in place and does not add these.
    pub trace: Vec<(String, String)>,
    /// Every other top-level field, in order. Values LF-folded, no trailing line break.
    pub headers: Vec<(String, String)>,
    /// The body (multipart/signed), CRLF.
    pub body: Vec<u8>,
}

impl Built {
    /// The whole message in wire form (CRLF).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 2048);
        for (n, v) in self.trace.iter().chain(self.headers.iter()) {
            mime::push_header(&mut out, n, v);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The first top-level field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A built message whose body is in pieces: the bytes pecora wrote and, borrowed where
/// they lie, the bytes of the message it embeds, so a large message is never copied (the
/// milter hands the pieces to Postfix one after the other). [`BuiltParts::joined`] is the
/// same message as one [`Built`].
pub struct BuiltParts<'a> {
    pub trace: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// The body (multipart/signed, CRLF) as consecutive pieces.
    pub body: Vec<Cow<'a, [u8]>>,
}

impl BuiltParts<'_> {
    /// The whole message in wire form (CRLF), as [`Built::to_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_len() + 2048);
        for (n, v) in self.trace.iter().chain(self.headers.iter()) {
            mime::push_header(&mut out, n, v);
        }
        out.extend_from_slice(b"\r\n");
        for p in &self.body {
            out.extend_from_slice(p);
        }
        out
    }

    pub fn joined(self) -> Built {
        Built { trace: self.trace, headers: self.headers, body: join(self.body) }
    }

    /// The first top-level field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(|p| p.len()).sum()
    }
}

/// Errors of the builders.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the transaction has no To/Cc recipient (daticert needs at least one)")]
    NoRecipients,
    #[error("a {0:?} receipt needs the postacert.eml of the envelope")]
    MissingPostacert(ReceiptType),
    #[error("errore {0} is not valid for this notice")]
    BadErrore(Errore),
    #[error(transparent)]
    Header(#[from] MimeError),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Receipt variant for one recipient (pec-format.md §3.5, RFC 6109 §3.3.2): with completa (or
/// none requested) To recipients get completa and Cc recipients sintetica; with breve, To get
/// breve and Cc sintetica; with sintetica everyone gets sintetica. A recipient in both To and
/// Cc, or in neither (ambiguous, e.g. Bcc), is treated as primary.
pub fn receipt_variant(requested: ReceiptType, in_to: bool, in_cc: bool) -> ReceiptType {
    match requested {
        ReceiptType::Sintetica => ReceiptType::Sintetica,
        _ if in_cc && !in_to => ReceiptType::Sintetica,
        r => r,
    }
}

// ---------------------------------------------------------------------------------------
// Header fields of the original

/// A header field of the original: name and raw value (after the colon, folding kept).
struct Field<'a> {
    name: Cow<'a, str>,
    value: &'a [u8],
    /// The whole raw field (name, colon, value, line end) when read from raw bytes.
    raw: Option<&'a [u8]>,
}

/// Splits a raw message into header fields and the body (after the blank line). A message
/// without a blank line is all header.
fn split_raw(msg: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut fields = Vec::new();
    let mut i = 0usize;
    let mut start = 0usize;
    let body_start;
    loop {
        // i is at the start of a line.
        if i >= msg.len() {
            if start < i {
                push_field(&mut fields, &msg[start..i]);
            }
            body_start = msg.len();
            break;
        }
        let eol = msg[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(msg.len(), |p| i + p + 1);
        let line = &msg[i..eol];
        let blank = line == b"\n" || line == b"\r\n";
        let continuation = matches!(line.first(), Some(b' ') | Some(b'\t'));
        if blank {
            if start < i {
                push_field(&mut fields, &msg[start..i]);
            }
            body_start = eol;
            break;
        }
        if !continuation && start < i {
            push_field(&mut fields, &msg[start..i]);
            start = i;
        }
        i = eol;
    }
    (fields, &msg[body_start.min(msg.len())..])
}

fn push_field<'a>(fields: &mut Vec<Field<'a>>, raw: &'a [u8]) {
    match raw.iter().position(|&b| b == b':') {
        Some(colon) => {
            let name = String::from_utf8_lossy(&raw[..colon]).trim().to_string();
            fields.push(Field {
                name: Cow::Owned(name),
                value: &raw[colon + 1..],
                raw: Some(raw),
            });
        }
        // A line without a colon is not a header field; keep it as an unnamed field so the
        // rewritten original loses nothing.
        None => fields.push(Field {
            name: Cow::Borrowed(""),
            value: raw,
            raw: Some(raw),
        }),
    }
}

fn original_parts<'a>(original: &Original<'a>) -> (Vec<Field<'a>>, &'a [u8]) {
    match *original {
        Original::Raw(msg) => split_raw(msg),
        Original::Split { headers, body } => (
            headers
                .iter()
                .map(|(n, v)| Field {
                    name: Cow::Borrowed(n.as_str()),
                    value: v.as_slice(),
                    raw: None,
                })
                .collect(),
            body,
        ),
    }
}

/// The raw value of a field as a one-string header value: LF-folded, leading white space
/// trimmed, NUL and lone CR dropped.
fn field_value(f: &Field<'_>) -> String {
    let s = String::from_utf8_lossy(f.value);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' | '\0' => {}
            c => out.push(c),
        }
    }
    let out = out.trim_end_matches('\n').trim_start_matches([' ', '\t']);
    // A continuation line must start with white space: guaranteed by the parsers; enforce
    // anyway so no copied value can start a new field.
    out.split('\n')
        .enumerate()
        .map(|(i, l)| {
            if i > 0 && !l.starts_with([' ', '\t']) {
                format!(" {l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find_field<'a, 'b>(fields: &'b [Field<'a>], name: &str) -> Option<&'b Field<'a>> {
    fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

fn is_trace(name: &str) -> bool {
    name.eq_ignore_ascii_case("Received") || name.eq_ignore_ascii_case("Return-Path")
}

/// Writes one field of the original in wire form (CRLF), normalising line ends.
fn write_field(out: &mut Vec<u8>, f: &Field<'_>) {
    match f.raw {
        Some(raw) => mime::push_crlf_normalised(out, raw),
        None => {
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            if !matches!(f.value.first(), Some(b' ') | Some(b'\t')) {
                out.push(b' ');
            }
            mime::push_crlf_normalised(out, f.value);
            if !f.value.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    // A raw field at the very end of a header-only message may lack its line end.
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// postacert.eml of the transport envelope (pec-format.md §2.3): the original with every
/// `Message-ID` and `X-Riferimento-Message-ID` removed, then `Message-ID: <pec_id>` and
/// `X-Riferimento-Message-ID: <client msgid>` appended to the header, line ends made CRLF.
/// Everything else is kept byte for byte.
///
/// When the client set no Message-ID, the access point generates a reference for it (with
/// [`super::ident::pec_identifier`] and fresh random bytes, so it differs from the PEC id)
/// and passes it as `client_msgid`: X-Riferimento-Message-ID and daticert `<msgid>` are then
/// always present and always differ from the PEC identifier.
pub fn rewrite_original(original: &[u8], pec_id: &str, client_msgid: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(original.len() + 256);
    write_rewritten(&mut out, &Original::Raw(original), pec_id, client_msgid);
    out
}

fn write_rewritten(out: &mut Vec<u8>, original: &Original<'_>, pec_id: &str, client_msgid: &str) {
    let body = write_rewritten_head(out, original, pec_id, client_msgid);
    mime::push_crlf_normalised(out, body);
}

/// The header section of [`write_rewritten`]; returns the original's body, to follow it
/// normalised to CRLF.
fn write_rewritten_head<'a>(out: &mut Vec<u8>, original: &Original<'a>, pec_id: &str, client_msgid: &str) -> &'a [u8] {
    let (fields, body) = original_parts(original);
    for f in &fields {
        if f.name.eq_ignore_ascii_case("Message-ID")
            || f.name.eq_ignore_ascii_case("X-Riferimento-Message-ID")
        {
            continue;
        }
        write_field(out, f);
    }
    mime::push_header(out, "Message-ID", &mime::angle(pec_id));
    mime::push_header(out, "X-Riferimento-Message-ID", &mime::angle(client_msgid));
    out.extend_from_slice(b"\r\n");
    body
}

// ---------------------------------------------------------------------------------------
// Body assembly

/// Header fields as (name, LF-folded value) pairs.
pub type Fields = Vec<(String, String)>;

/// What goes into the multipart/mixed besides the texts.
enum Attached<'a> {
    None,
    /// Bytes to embed as postacert.eml as they are (normalised to CRLF).
    Bytes(&'a [u8]),
    /// The original, rewritten on the fly as postacert.eml of a transport envelope.
    Rewritten {
        original: Original<'a>,
        pec_id: &'a str,
        client_msgid: &'a str,
    },
}

struct BodyParts<'a> {
    texts: text::Texts,
    daticert: Option<String>,
    attached: Attached<'a>,
}

/// Byte slices that the boundaries must avoid, and the transfer class of the attachment.
fn attached_slices<'a>(a: &'a Attached<'a>, buf: &'a Option<Cow<'a, [u8]>>) -> Vec<&'a [u8]> {
    let mut v: Vec<&[u8]> = Vec::new();
    match a {
        Attached::None => {}
        Attached::Bytes(_) => {
            if let Some(b) = buf {
                v.push(b);
            }
        }
        Attached::Rewritten { original, .. } => match original {
            Original::Raw(m) => v.push(m),
            Original::Split { headers, body } => {
                for (n, h) in headers.iter() {
                    v.push(n.as_bytes());
                    v.push(h);
                }
                v.push(body);
            }
        },
    }
    v
}

/// Writes the signed body and returns it with the extra top-level fields (MIME-Version,
/// Content-Type, Content-Transfer-Encoding when not 7bit).
fn assemble<'a>(
    parts: BodyParts<'a>,
    seed: &[u8],
    signer: &Signer,
    at: &Instant,
) -> Result<(Fields, Vec<Cow<'a, [u8]>>), BuildError> {
    // Canonical copy of plain attached bytes only when needed.
    let normalised: Option<Cow<'_, [u8]>> = match &parts.attached {
        Attached::Bytes(b) if sign::is_canonical(b) => Some(Cow::Borrowed(b)),
        Attached::Bytes(b) => {
            let mut v = Vec::with_capacity(b.len() + b.len() / 32);
            mime::push_crlf_normalised(&mut v, b);
            Some(Cow::Owned(v))
        }
        _ => None,
    };
    let avoid = attached_slices(&parts.attached, &normalised);
    let (b_signed, next) = mime::boundary_avoiding(seed, 0, &avoid);
    let (b_mixed, next) = mime::boundary_avoiding(seed, next, &avoid);
    let (b_alt, _) = mime::boundary_avoiding(seed, next, &avoid);

    // The body in pieces: what is written here, and the embedded message borrowed where it
    // lies when it goes in unchanged (canonical CRLF), so a large one is never copied.
    let mut pieces: Vec<Cow<'a, [u8]>> = Vec::new();
    let mut body = Vec::with_capacity(16 * 1024);
    let start = sign::begin(&mut body, &b_signed);

    // The class of the embedded message decides the CTE of every enclosing entity. Lines are
    // CRLF after normalisation, so only 8-bit bytes, NUL or overlong lines matter.
    let class = match (&parts.attached, &normalised) {
        (Attached::Bytes(_), Some(b)) => mime::transfer_class(b),
        (Attached::Rewritten { original, .. }, _) => class_of_original(original),
        _ => "7bit",
    };
    body.extend_from_slice(b"Content-Type: multipart/mixed;\r\n boundary=\"");
    body.extend_from_slice(b_mixed.as_bytes());
    body.extend_from_slice(b"\"\r\n");
    if class != "7bit" {
        body.extend_from_slice(format!("Content-Transfer-Encoding: {class}\r\n").as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    // Text part.
    delimiter(&mut body, &b_mixed);
    text::write_alternative(&mut body, &parts.texts, &b_alt);
    // daticert.xml.
    if let Some(xml) = &parts.daticert {
        body.extend_from_slice(b"\r\n");
        delimiter(&mut body, &b_mixed);
        body.extend_from_slice(
            b"Content-Type: application/xml; name=\"daticert.xml\"\r\n\
Content-Disposition: inline; filename=\"daticert.xml\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n",
        );
        body.extend_from_slice(&mime::base64_lines(xml.as_bytes()));
    }
    // postacert.eml.
    let has_attachment = !matches!(parts.attached, Attached::None);
    if has_attachment {
        body.extend_from_slice(b"\r\n");
        delimiter(&mut body, &b_mixed);
        body.extend_from_slice(
            format!(
                "Content-Type: message/rfc822; name=\"postacert.eml\"\r\n\
Content-Disposition: inline; filename=\"postacert.eml\"\r\n\
Content-Transfer-Encoding: {class}\r\n\r\n"
            )
            .as_bytes(),
        );
        let mut borrow = |body: &mut Vec<u8>, b: &'a [u8]| {
            pieces.push(Cow::Owned(std::mem::replace(body, Vec::with_capacity(4 * 1024))));
            pieces.push(Cow::Borrowed(b));
        };
        match (&parts.attached, &normalised) {
            (Attached::Bytes(b), Some(Cow::Borrowed(_))) => borrow(&mut body, b),
            (Attached::Bytes(_), Some(n)) => body.extend_from_slice(n),
            (Attached::Bytes(_), None) | (Attached::None, _) => {}
            (Attached::Rewritten { original, pec_id, client_msgid }, _) => {
                let original_body = write_rewritten_head(&mut body, original, pec_id, client_msgid);
                if sign::is_canonical(original_body) {
                    borrow(&mut body, original_body);
                } else {
                    mime::push_crlf_normalised(&mut body, original_body);
                }
            }
        }
    }
    // The CRLF before a delimiter belongs to it: the embedded bytes stay exactly as written.
    body.extend_from_slice(b"\r\n--");
    body.extend_from_slice(b_mixed.as_bytes());
    body.extend_from_slice(b"--\r\n");
    pieces.push(Cow::Owned(body));
    // Signed where the pieces lie: the first from the start of the signed entity.
    let content: Vec<&[u8]> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| if i == 0 { &p[start..] } else { &p[..] })
        .collect();
    let der = signer.sign_detached_parts(&content, at)?;
    let mut tail = Vec::with_capacity(4 * 1024);
    sign::push_signature(&mut tail, &b_signed, &der);
    pieces.push(Cow::Owned(tail));

    let mut headers = vec![
        ("MIME-Version".to_string(), "1.0".to_string()),
        ("Content-Type".to_string(), sign::content_type(&b_signed)),
    ];
    if class != "7bit" {
        headers.push(("Content-Transfer-Encoding".to_string(), class.to_string()));
    }
    Ok((headers, pieces))
}

/// The pieces of a body, joined.
fn join(pieces: Vec<Cow<'_, [u8]>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for p in &pieces {
        out.extend_from_slice(p);
    }
    out
}

fn delimiter(body: &mut Vec<u8>, b: &str) {
    body.extend_from_slice(b"--");
    body.extend_from_slice(b.as_bytes());
    body.extend_from_slice(b"\r\n");
}

/// Transfer class of the rewritten original without materialising it: bare LFs do not count
/// (they become CRLF), 8-bit bytes give 8bit, NUL or a line over 998 octets gives binary.
fn class_of_original(original: &Original<'_>) -> &'static str {
    fn class(data: &[u8]) -> &'static str {
        let mut eight = false;
        let mut col = 0usize;
        for &b in data {
            match b {
                0 => return "binary",
                b'\n' | b'\r' => col = 0,
                _ => {
                    col += 1;
                    if col > mime::MAX_LINE {
                        return "binary";
                    }
                    eight |= b >= 0x80;
                }
            }
        }
        if eight { "8bit" } else { "7bit" }
    }
    match original {
        Original::Raw(m) => class(m),
        Original::Split { headers, body } => headers
            .iter()
            .map(|(n, v)| mime::wider_class(class(n.as_bytes()), class(v)))
            .fold(class(body), mime::wider_class),
    }
}

// ---------------------------------------------------------------------------------------
// Builders

fn daticert_for(
    p: &Provider,
    tx: &Transaction,
    tipo: Tipo,
    errore: Errore,
    at: &Instant,
) -> Daticert {
    Daticert {
        tipo,
        errore,
        mittente: tx.sender.clone(),
        destinatari: tx.recipients(),
        risposte: tx.reply_to.clone().unwrap_or_else(|| tx.sender.clone()),
        oggetto: tx.subject.clone(),
        gestore_emittente: p.name.clone(),
        data: *at,
        identificativo: mime::sanitize_msg_id(&tx.identificativo),
        msgid: Some(mime::angle(&tx.client_msgid)),
        ricevuta: None,
        consegna: None,
        ricezione: Vec::new(),
        errore_esteso: None,
    }
}

fn per_conto_di(p: &Provider, sender: &str) -> Result<String, BuildError> {
    let display = format!("Per conto di: {}", mime::sanitize_address(sender));
    Ok(mime::mailbox("From", Some(&display), &p.system_address)?)
}

/// Builds the transport envelope (#1) around `original`: headers of §1.4(1), the rewritten
/// original as postacert.eml (see [`rewrite_original`]), daticert `posta-certificata`.
/// To, Cc and Reply-To are copied from the original (Reply-To set to the sender when absent);
/// its Received and Return-Path go to [`Built::trace`]. The seed gives the MIME boundaries.
pub fn build_envelope(
    p: &Provider,
    tx: &Transaction,
    original: Original<'_>,
    seed: &[u8],
    signer: &Signer,
) -> Result<Built, BuildError> {
    build_envelope_parts(p, tx, original, seed, signer).map(BuiltParts::joined)
}

/// [`build_envelope`] with the body in pieces, the original's body borrowed (see
/// [`BuiltParts`]).
pub fn build_envelope_parts<'a>(
    p: &Provider,
    tx: &'a Transaction,
    original: Original<'a>,
    seed: &[u8],
    signer: &Signer,
) -> Result<BuiltParts<'a>, BuildError> {
    if tx.to.is_empty() && tx.cc.is_empty() {
        return Err(BuildError::NoRecipients);
    }
    let (fields, _) = original_parts(&original);
    let trace = fields
        .iter()
        .filter(|f| is_trace(&f.name))
        .map(|f| (f.name.to_string(), field_value(f)))
        .collect();
    let mut headers = Vec::new();
    headers.push(("Date".to_string(), mime::rfc5322_date(&tx.instant)));
    headers.push((
        "Subject".to_string(),
        mime::unstructured(
            "Subject",
            "POSTA CERTIFICATA: ",
            tx.subject.as_deref().unwrap_or(""),
        ),
    ));
    headers.push(("From".to_string(), per_conto_di(p, &tx.sender)?));
    for name in ["To", "Cc"] {
        for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)) {
            headers.push((name.to_string(), field_value(f)));
        }
    }
    let reply_to = match find_field(&fields, "Reply-To") {
        Some(f) => field_value(f),
        None => mime::mailbox("Reply-To", None, &tx.sender)?,
    };
    headers.push(("Reply-To".to_string(), reply_to));
    headers.push(("Message-ID".to_string(), mime::angle(&tx.identificativo)));
    headers.push((
        "X-Riferimento-Message-ID".to_string(),
        mime::angle(&tx.client_msgid),
    ));
    headers.push(("X-Trasporto".to_string(), "posta-certificata".to_string()));
    if let Some(r) = tx.receipt {
        headers.push(("X-TipoRicevuta".to_string(), r.as_str().to_string()));
    }
    let mut d = daticert_for(p, tx, Tipo::PostaCertificata, Errore::Nessuno, &tx.instant);
    d.ricevuta = Some(tx.receipt.unwrap_or_default());
    let recipients = tx.recipients();
    let facts = TextFacts {
        instant: &tx.instant,
        subject: tx.subject.as_deref().unwrap_or(""),
        sender: &tx.sender,
        recipients: &recipients,
        identificativo: &tx.identificativo,
    };
    let parts = BodyParts {
        texts: text::texts(&facts, &TextKind::Trasporto),
        daticert: Some(d.to_xml()),
        attached: Attached::Rewritten {
            original,
            pec_id: &tx.identificativo,
            client_msgid: &tx.client_msgid,
        },
    };
    let (mime_headers, body) = assemble(parts, seed, signer, &tx.instant)?;
    headers.extend(mime_headers);
    Ok(BuiltParts {
        trace,
        headers,
        body,
    })
}

/// Builds the anomaly envelope (#2): `X-Trasporto: errore`, the received message whole as
/// postacert.eml, no daticert. To and Cc are inherited from the received message; Reply-To
/// is inherited or set to the sender; Received/Return-Path go to [`Built::trace`]. Unlike
/// RFC 6109 §3.2.2, the Message-ID is not inherited but the anomaly's own
/// ([`Anomaly::message_id`]): the received one is whatever its sender wrote, a PEC
/// identifier of someone else's transaction included (decisions.md 19). It stays readable
/// in postacert.eml.
pub fn build_anomaly(
    p: &Provider,
    a: &Anomaly<'_>,
    received: &[u8],
    signer: &Signer,
) -> Result<Built, BuildError> {
    build_anomaly_parts(p, a, received, signer).map(BuiltParts::joined)
}

/// [`build_anomaly`] with the body in pieces, the received message borrowed (see
/// [`BuiltParts`]).
pub fn build_anomaly_parts<'a>(
    p: &Provider,
    a: &Anomaly<'_>,
    received: &'a [u8],
    signer: &Signer,
) -> Result<BuiltParts<'a>, BuildError> {
    let (fields, _) = split_raw(received);
    let trace = fields
        .iter()
        .filter(|f| is_trace(&f.name))
        .map(|f| (f.name.to_string(), field_value(f)))
        .collect();
    let mut headers = Vec::new();
    headers.push(("Date".to_string(), mime::rfc5322_date(&a.instant)));
    headers.push((
        "Subject".to_string(),
        mime::unstructured("Subject", "ANOMALIA MESSAGGIO: ", a.subject.unwrap_or("")),
    ));
    headers.push(("From".to_string(), per_conto_di(p, a.sender)?));
    for name in ["To", "Cc"] {
        for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)) {
            headers.push((name.to_string(), field_value(f)));
        }
    }
    let reply_to = match find_field(&fields, "Reply-To") {
        Some(f) => field_value(f),
        None => mime::mailbox("Reply-To", None, a.sender)?,
    };
    headers.push(("Reply-To".to_string(), reply_to));
    headers.push(("Message-ID".to_string(), mime::angle(a.message_id)));
    headers.push(("X-Trasporto".to_string(), "errore".to_string()));
    let facts = TextFacts {
        instant: &a.instant,
        subject: a.subject.unwrap_or(""),
        sender: a.sender,
        recipients: a.recipients,
        identificativo: "",
    };
    let parts = BodyParts {
        texts: text::texts(&facts, &TextKind::Anomalia { reason: a.reason }),
        daticert: None,
        attached: Attached::Bytes(received),
    };
    let (mime_headers, body) = assemble(parts, a.seed, signer, &a.instant)?;
    headers.extend(mime_headers);
    Ok(BuiltParts {
        trace,
        headers,
        body,
    })
}

/// What distinguishes one notice from another (pec-format.md §1.3, §1.4, §3.3).
struct NoticeSpec<'a> {
    tipo: Tipo,
    errore: Errore,
    /// Subject prefix, exact literal.
    prefix: &'static str,
    /// To: the original sender, or the sender provider's mailReceipt.
    to: &'a str,
    /// `X-VerificaSicurezza: errore` (#5 and #11).
    virus: bool,
    text: TextKind<'a>,
    ricevuta: Option<ReceiptType>,
    consegna: Option<&'a str>,
    ricezione: &'a [String],
    errore_esteso: Option<&'a str>,
}

fn notice_spec<'a>(tx: &'a Transaction, notice: &Notice<'a>) -> Result<NoticeSpec<'a>, BuildError> {
    let base = NoticeSpec {
        tipo: Tipo::Accettazione,
        errore: Errore::Nessuno,
        prefix: "ACCETTAZIONE: ",
        to: &tx.sender,
        virus: false,
        text: TextKind::Accettazione,
        ricevuta: None,
        consegna: None,
        ricezione: &[],
        errore_esteso: None,
    };
    Ok(match *notice {
        Notice::Accettazione => base,
        Notice::NonAccettazione { errore_esteso } => NoticeSpec {
            tipo: Tipo::NonAccettazione,
            errore: Errore::Altro,
            prefix: "AVVISO DI NON ACCETTAZIONE: ",
            text: TextKind::NonAccettazione {
                reason: errore_esteso,
            },
            errore_esteso: Some(errore_esteso),
            ..base
        },
        Notice::NonAccettazioneVirus { errore_esteso } => NoticeSpec {
            tipo: Tipo::NonAccettazione,
            errore: Errore::Virus,
            prefix: "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
            virus: true,
            text: TextKind::NonAccettazioneVirus {
                reason: errore_esteso,
            },
            errore_esteso: Some(errore_esteso),
            ..base
        },
        Notice::PresaInCarico {
            ricezione,
            mail_receipt,
        } => NoticeSpec {
            tipo: Tipo::PresaInCarico,
            prefix: "PRESA IN CARICO: ",
            to: mail_receipt,
            text: TextKind::PresaInCarico { ricezione },
            ricezione,
            ..base
        },
        Notice::AvvenutaConsegna {
            consegna,
            variant,
            postacert,
        } => {
            if variant != ReceiptType::Sintetica && postacert.is_none() {
                return Err(BuildError::MissingPostacert(variant));
            }
            NoticeSpec {
                tipo: Tipo::AvvenutaConsegna,
                prefix: "CONSEGNA: ",
                text: TextKind::AvvenutaConsegna { consegna, variant },
                ricevuta: Some(variant),
                consegna: Some(consegna),
                ..base
            }
        }
        Notice::ErroreConsegna {
            consegna,
            errore,
            errore_esteso,
        } => {
            if !matches!(errore, Errore::NoDest | Errore::NoDominio | Errore::Altro) {
                return Err(BuildError::BadErrore(errore));
            }
            NoticeSpec {
                tipo: Tipo::ErroreConsegna,
                errore,
                prefix: "AVVISO DI MANCATA CONSEGNA: ",
                text: TextKind::ErroreConsegna {
                    consegna,
                    errore: errore_esteso,
                },
                consegna: Some(consegna),
                errore_esteso: Some(errore_esteso),
                ..base
            }
        }
        Notice::ErroreConsegnaVirus {
            consegna,
            errore_esteso,
        } => NoticeSpec {
            tipo: Tipo::ErroreConsegna,
            errore: Errore::Virus,
            prefix: "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
            virus: true,
            text: TextKind::ErroreConsegnaVirus {
                consegna,
                errore: errore_esteso,
            },
            consegna: Some(consegna),
            errore_esteso: Some(errore_esteso),
            ..base
        },
        Notice::Preavviso {
            consegna,
            deadline,
            errore_esteso,
        } => NoticeSpec {
            tipo: Tipo::PreavvisoErroreConsegna,
            errore: Errore::Altro,
            prefix: "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
            text: TextKind::Preavviso {
                consegna,
                hours: if deadline == Deadline::H12 { 12 } else { 24 },
            },
            consegna: Some(consegna),
            errore_esteso,
            ..base
        },
        Notice::RilevazioneVirus {
            consegna,
            mail_receipt,
            errore_esteso,
        } => NoticeSpec {
            tipo: Tipo::RilevazioneVirus,
            errore: Errore::Virus,
            prefix: "PROBLEMA DI SICUREZZA: ",
            to: mail_receipt,
            text: TextKind::RilevazioneVirus {
                consegna,
                errore: errore_esteso,
            },
            consegna: Some(consegna),
            errore_esteso: Some(errore_esteso),
            ..base
        },
    })
}

/// Builds a notice (#3–#11) about transaction `tx`, emitted and signed by provider `p`.
///
/// Headers (§1.4): Date (the notice instant), Subject (exact prefix + original subject), From
/// (the bare system address), To (sender, or mailReceipt for presa-in-carico and
/// rilevazione-virus), Message-ID (the notice's own), X-Riferimento-Message-ID, X-Ricevuta,
/// then X-VerificaSicurezza (#5, #11), X-TipoRicevuta (#7, the variant sent) or X-Mittente
/// (#10), MIME-Version, Content-Type.
pub fn build_notice(
    p: &Provider,
    tx: &Transaction,
    n: &NoticeParams<'_>,
    notice: &Notice<'_>,
    signer: &Signer,
) -> Result<Built, BuildError> {
    if tx.to.is_empty() && tx.cc.is_empty() {
        return Err(BuildError::NoRecipients);
    }
    let spec = notice_spec(tx, notice)?;
    let at = &n.instant;
    let recipients = tx.recipients();
    let facts = TextFacts {
        instant: at,
        subject: tx.subject.as_deref().unwrap_or(""),
        sender: &tx.sender,
        recipients: &recipients,
        identificativo: &tx.identificativo,
    };
    // The brief form is computed here so that it outlives the body assembly.
    let brief_buf: Option<Vec<u8>> = match *notice {
        Notice::AvvenutaConsegna {
            variant: ReceiptType::Breve,
            postacert: Some(b),
            ..
        } => Some(super::brief::transform(b)),
        _ => None,
    };
    let attached = match (*notice, &brief_buf) {
        (_, Some(b)) => Attached::Bytes(b),
        (
            Notice::AvvenutaConsegna {
                variant: ReceiptType::Completa,
                postacert: Some(b),
                ..
            },
            None,
        ) => Attached::Bytes(b),
        _ => Attached::None,
    };

    let mut d = daticert_for(p, tx, spec.tipo, spec.errore, at);
    d.ricevuta = spec.ricevuta;
    d.consegna = spec.consegna.map(str::to_string);
    d.ricezione = spec.ricezione.to_vec();
    d.errore_esteso = spec.errore_esteso.map(str::to_string);

    let mut headers = vec![
        ("Date".to_string(), mime::rfc5322_date(at)),
        (
            "Subject".to_string(),
            mime::unstructured("Subject", spec.prefix, tx.subject.as_deref().unwrap_or("")),
        ),
        (
            "From".to_string(),
            mime::mailbox("From", None, &p.system_address)?,
        ),
        ("To".to_string(), mime::mailbox("To", None, spec.to)?),
        ("Message-ID".to_string(), mime::angle(n.message_id)),
        (
            "X-Riferimento-Message-ID".to_string(),
            mime::angle(&tx.client_msgid),
        ),
        ("X-Ricevuta".to_string(), spec.tipo.as_str().to_string()),
    ];
    if spec.virus {
        headers.push(("X-VerificaSicurezza".to_string(), "errore".to_string()));
    }
    if let Some(r) = spec.ricevuta {
        headers.push(("X-TipoRicevuta".to_string(), r.as_str().to_string()));
    }
    if spec.tipo == Tipo::RilevazioneVirus {
        headers.push((
            "X-Mittente".to_string(),
            mime::mailbox("X-Mittente", None, &tx.sender)?,
        ));
    }
    let parts = BodyParts {
        texts: text::texts(&facts, &spec.text),
        daticert: Some(d.to_xml()),
        attached,
    };
    let (mime_headers, body) = assemble(parts, n.seed, signer, at)?;
    headers.extend(mime_headers);
    Ok(Built {
        trace: Vec::new(),
        headers,
        body: join(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_variant_rule() {
        use ReceiptType::*;
        assert_eq!(receipt_variant(Completa, true, false), Completa);
        assert_eq!(receipt_variant(Completa, false, true), Sintetica);
        assert_eq!(receipt_variant(Completa, true, true), Completa);
        assert_eq!(receipt_variant(Completa, false, false), Completa);
        assert_eq!(receipt_variant(Breve, true, false), Breve);
        assert_eq!(receipt_variant(Breve, false, true), Sintetica);
        assert_eq!(receipt_variant(Sintetica, true, false), Sintetica);
    }

    #[test]
    fn rewrite_replaces_message_id() {
        let m = b"From: a@x.it\nMessage-ID: <c@client>\nX-Riferimento-Message-ID: <evil>\nSubject: s\n\nbody\nline\n";
        let out = rewrite_original(m, "pec.1@pec.x.it", "<c@client>");
        assert_eq!(
            out,
            b"From: a@x.it\r\nSubject: s\r\nMessage-ID: <pec.1@pec.x.it>\r\nX-Riferimento-Message-ID: <c@client>\r\n\r\nbody\r\nline\r\n"
        );
    }

    #[test]
    fn rewrite_keeps_folded_fields_and_headerless_input() {
        let m = b"Subject: a\r\n b\r\nTo: x@y.it\r\n\r\n";
        let out = rewrite_original(m, "p@d.it", "<c@d>");
        assert!(out.starts_with(b"Subject: a\r\n b\r\nTo: x@y.it\r\nMessage-ID: <p@d.it>\r\n"));
        let out = rewrite_original(b"Subject: only", "p@d.it", "<c@d>");
        assert_eq!(
            out,
            b"Subject: only\r\nMessage-ID: <p@d.it>\r\nX-Riferimento-Message-ID: <c@d>\r\n\r\n"
        );
        let _ = rewrite_original(b"", "p@d.it", "<c@d>");
        let _ = rewrite_original(b"\r\n\r\n", "p@d.it", "<c@d>");
    }

    #[test]
    fn split_form_equals_raw_form() {
        let raw = b"From: a@x.it\r\nTo: b@y.it,\r\n c@y.it\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n";
        let headers = vec![
            ("From".to_string(), b" a@x.it".to_vec()),
            ("To".to_string(), b" b@y.it,\n c@y.it".to_vec()),
            ("Message-ID".to_string(), b" <m@x>".to_vec()),
        ];
        let mut a = Vec::new();
        write_rewritten(&mut a, &Original::Raw(raw), "p@d.it", "<m@x>");
        let mut b = Vec::new();
        write_rewritten(
            &mut b,
            &Original::Split {
                headers: &headers,
                body: b"body\r\n",
            },
            "p@d.it",
            "<m@x>",
        );
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    }

    /// The envelope in pieces borrows the original's body where it lies (no copy of a large
    /// message), its pieces join to exactly the envelope built in one buffer, and the
    /// signature streamed over the pieces verifies over the joined bytes.
    #[test]
    fn envelope_in_pieces_borrows_the_original_body_and_signs_the_same_bytes() {
        use crate::pec::types::{Recipient, RecipientType};
        let signer = crate::pec::sign::tests::test_signer();
        let p = Provider {
            name: "Alpha PEC".into(),
            domain: "pec.alpha.test".into(),
            system_address: "posta-certificata@pec.alpha.test".into(),
        };
        let instant = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:00+01:00").unwrap();
        let tx = Transaction {
            instant,
            identificativo: "opec.1@pec.alpha.test".into(),
            client_msgid: "<m1@mua>".into(),
            sender: "alice@pec.alpha.test".into(),
            to: vec![Recipient { address: "bob@pec.beta.test".into(), kind: RecipientType::Certificato }],
            cc: Vec::new(),
            reply_to: None,
            subject: Some("Contratto".into()),
            receipt: None,
        };
        let headers = vec![
            ("From".to_string(), b" alice@pec.alpha.test".to_vec()),
            ("To".to_string(), b" bob@pec.beta.test".to_vec()),
            ("Subject".to_string(), b" Contratto".to_vec()),
        ];
        let body = b"Lorem ipsum dolor sit amet.\r\n".repeat(40_000);
        let original = || Original::Split { headers: &headers, body: &body };
        let parts = build_envelope_parts(&p, &tx, original(), &[7; 16], &signer).unwrap();
        assert!(
            parts.body.iter().any(|piece| matches!(piece, Cow::Borrowed(b) if b.as_ptr() == body.as_ptr() && b.len() == body.len())),
            "the original's body is borrowed, not copied"
        );
        let owned: usize = parts.body.iter().filter(|p| matches!(p, Cow::Owned(_))).map(|p| p.len()).sum();
        assert!(owned < 64 * 1024, "{owned} bytes written besides the original");
        let whole = build_envelope(&p, &tx, original(), &[7; 16], &signer).unwrap();
        assert_eq!(parts.to_bytes(), whole.to_bytes());
        // The signed entity is everything between the first two delimiters of the signed
        // boundary; its detached signature verifies with OpenSSL.
        let joined = parts.joined();
        let ct = joined.header("Content-Type").unwrap().to_string();
        let boundary = ct.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        let delim = format!("\r\n--{boundary}\r\n");
        let b = &joined.body;
        let start = b.windows(delim.len()).position(|w| w == delim.as_bytes()).unwrap() + delim.len();
        let end_delim = format!("\r\n--{boundary}\r\n");
        let end = start + b[start..].windows(end_delim.len()).position(|w| w == end_delim.as_bytes()).unwrap();
        let content = &b[start..end];
        let again = signer.sign_detached(content, &instant).unwrap();
        let streamed = signer.sign_detached_parts(&[&content[..10], &content[10..]], &instant).unwrap();
        assert_eq!(again, streamed, "signing in pieces signs the same bytes");
        let sig_b64: String = String::from_utf8_lossy(&b[end..])
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("\r\n--")
            .next()
            .unwrap()
            .replace("\r\n", "");
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD.decode(sig_b64).unwrap();
        assert_eq!(der, again, "the envelope carries the signature of its signed entity");
    }
}
