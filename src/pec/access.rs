//! The access point's checks (pec-format.md §4.1, decisions.md 1): who may send, and whether
//! the message is formally a valid PEC submission. Pure: the caller passes the SMTP envelope
//! and the header block it collected; nothing here talks to the network.

use mail_parser::{Address, HeaderName, MessageParser};

use super::types::ReceiptType;

/// What the access point knows about a submission.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// SASL login (or the mailbox a client certificate maps to), if any.
    pub login: Option<&'a str>,
    /// MAIL FROM, without angle brackets.
    pub mail_from: &'a str,
    /// RCPT TO addresses, without angle brackets.
    pub rcpts: &'a [String],
    /// The raw header block of the message (`Name: value` lines, folded, CRLF or LF).
    pub header_block: &'a [u8],
    /// Size of the whole message in bytes.
    pub size: u64,
}

/// Limits of the provider (DM art. 12: at least 50 recipients and 30 MB).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_recipients: u32,
    pub max_size_times_recipients: u64,
}

/// The facts about the original message every PEC message needs, read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalHeaders {
    /// The single `From:` address.
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub reply_to: Option<String>,
    /// Decoded subject.
    pub subject: Option<String>,
    /// The client's Message-ID, with angle brackets, if it set one.
    pub message_id: Option<String>,
    /// `X-TipoRicevuta`: `None` when absent or not one of the three values (completa).
    pub receipt_type: Option<ReceiptType>,
}

/// Why a submission is refused. Each has its SMTP answer and its text for the notice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefusal {
    #[error("authentication required: PEC mail can only be sent after logging in")]
    NotAuthenticated,
    #[error("the envelope sender <{mail_from}> is not the authenticated mailbox <{login}>")]
    MailFromMismatch { login: String, mail_from: String },
    #[error("the message header cannot be parsed")]
    Unparseable,
    #[error("the message has no From: header: PEC mail names its sender in exactly one From:")]
    NoFrom,
    #[error("the message must have exactly one From: header, it has {0}")]
    FromHeaderCount(usize),
    #[error("the From: header must hold exactly one address, it holds {0}")]
    FromAddressCount(usize),
    #[error("the From: address <{from}> is not the authenticated mailbox <{login}>")]
    FromMismatch { login: String, from: String },
    #[error("the message must have at least one recipient in To:")]
    NoTo,
    #[error("the recipient <{0}> is not listed in To: or Cc: (blind copies are not allowed in PEC)")]
    RecipientNotInHeaders(String),
    #[error("the To:/Cc: address <{0}> is not a recipient of the SMTP envelope (RCPT TO): the headers and the envelope must name the same recipients")]
    HeaderRecipientNotInEnvelope(String),
    #[error("Bcc: must be empty in PEC mail")]
    Bcc,
    #[error("too many recipients: {count}, at most {max} are allowed")]
    TooManyRecipients { count: usize, max: u32 },
    #[error("message too large: {size} bytes x {recipients} recipients exceeds {max} bytes")]
    TooLarge { size: u64, recipients: usize, max: u64 },
}

impl AccessRefusal {
    /// SMTP reply code and enhanced status code.
    pub fn smtp_codes(&self) -> (&'static str, &'static str) {
        match self {
            AccessRefusal::NotAuthenticated => ("530", "5.7.0"),
            AccessRefusal::TooLarge { .. } => ("552", "5.3.4"),
            AccessRefusal::TooManyRecipients { .. } => ("550", "5.5.3"),
            _ => ("550", "5.7.1"),
        }
    }

    /// Whether a signed non-accettazione goes to the authenticated mailbox (decisions.md 1:
    /// never for an authentication failure, and never to an unauthenticated address).
    pub fn deserves_notice(&self) -> bool {
        !matches!(self, AccessRefusal::NotAuthenticated)
    }
}

fn same_mailbox(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The envelope check, at MAIL FROM: a login is required and must be the envelope sender.
pub fn check_envelope(login: Option<&str>, mail_from: &str) -> Result<(), AccessRefusal> {
    let login = login.filter(|l| !l.is_empty()).ok_or(AccessRefusal::NotAuthenticated)?;
    if !same_mailbox(login, mail_from) {
        return Err(AccessRefusal::MailFromMismatch {
            login: login.to_string(),
            mail_from: mail_from.to_string(),
        });
    }
    Ok(())
}

fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    a.map(|a| a.iter().filter_map(|x| x.address()).map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Reads the facts of the original from its header block, without judging them.
pub fn read_headers(header_block: &[u8]) -> Option<OriginalHeaders> {
    let msg = MessageParser::default().parse_headers(header_block)?;
    let receipt_type = msg
        .header_values(HeaderName::Other("X-TipoRicevuta".into()))
        .next()
        .and_then(|v| v.as_text())
        .and_then(ReceiptType::parse);
    Some(OriginalHeaders {
        from: addresses(msg.from()).into_iter().next().unwrap_or_default(),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        reply_to: addresses(msg.reply_to()).into_iter().next(),
        subject: msg.subject().map(str::to_string),
        message_id: msg.message_id().map(|id| format!("<{id}>")),
        receipt_type,
    })
}

/// Every check of §4.1 that needs the message, in the order a person would fix them.
pub fn check_message(s: &Submission<'_>, limits: Limits) -> Result<OriginalHeaders, AccessRefusal> {
    check_envelope(s.login, s.mail_from)?;
    let login = s.login.unwrap_or_default();
    let msg = MessageParser::default()
        .parse_headers(s.header_block)
        .ok_or(AccessRefusal::Unparseable)?;

    let from_headers = msg.headers().iter().filter(|h| h.name == HeaderName::From).count();
    if from_headers == 0 {
        return Err(AccessRefusal::NoFrom);
    }
    if from_headers != 1 {
        return Err(AccessRefusal::FromHeaderCount(from_headers));
    }
    let from = addresses(msg.from());
    if from.len() != 1 {
        return Err(AccessRefusal::FromAddressCount(from.len()));
    }
    if !same_mailbox(login, &from[0]) {
        return Err(AccessRefusal::FromMismatch { login: login.to_string(), from: from[0].clone() });
    }
    let to = addresses(msg.to());
    if to.is_empty() {
        return Err(AccessRefusal::NoTo);
    }
    let bcc = msg.headers().iter().filter(|h| h.name == HeaderName::Bcc);
    if bcc.clone().any(|h| !h.value.is_empty()) && !addresses(msg.bcc()).is_empty() {
        return Err(AccessRefusal::Bcc);
    }
    // decisions.md 21: the certified recipients are the SMTP recipients, so the envelope
    // and To:/Cc: must name the same mailboxes, both ways.
    let cc = addresses(msg.cc());
    for r in s.rcpts {
        if !to.iter().chain(cc.iter()).any(|a| same_mailbox(a, r)) {
            return Err(AccessRefusal::RecipientNotInHeaders(r.clone()));
        }
    }
    for a in to.iter().chain(cc.iter()) {
        if !s.rcpts.iter().any(|r| same_mailbox(a, r)) {
            return Err(AccessRefusal::HeaderRecipientNotInEnvelope(a.clone()));
        }
    }
    let count = s.rcpts.len();
    if count > limits.max_recipients as usize {
        return Err(AccessRefusal::TooManyRecipients { count, max: limits.max_recipients });
    }
    if s.size.saturating_mul(count.max(1) as u64) > limits.max_size_times_recipients {
        return Err(AccessRefusal::TooLarge {
            size: s.size,
            recipients: count,
            max: limits.max_size_times_recipients,
        });
    }
    read_headers(s.header_block).ok_or(AccessRefusal::Unparseable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_recipients: 50, max_size_times_recipients: 30_000_000 };

    fn submit(login: Option<&str>, from: &str, rcpts: &[&str], headers: &str) -> Result<OriginalHeaders, AccessRefusal> {
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        let block = headers.replace('\n', "\r\n") + "\r\n";
        check_message(
            &Submission { login, mail_from: from, rcpts: &rcpts, header_block: block.as_bytes(), size: 1000 },
            LIMITS,
        )
    }

    const OK: &str = "From: Alice <alice@pec.alpha.test>\nTo: bob@pec.beta.test\nCc: Carol <carol@mail.gamma.test>\nSubject: =?utf-8?q?Prova_=E2=82=AC?=\nMessage-ID: <m1@mua>\nX-TipoRicevuta: Breve\n";

    #[test]
    fn a_good_submission_yields_its_facts() {
        let h = submit(Some("Alice@pec.alpha.test"), "alice@PEC.alpha.test", &["bob@pec.beta.test", "carol@mail.gamma.test"], OK).unwrap();
        assert_eq!(h.from, "alice@pec.alpha.test");
        assert_eq!(h.to, ["bob@pec.beta.test"]);
        assert_eq!(h.cc, ["carol@mail.gamma.test"]);
        assert_eq!(h.subject.as_deref(), Some("Prova €"));
        assert_eq!(h.message_id.as_deref(), Some("<m1@mua>"));
        assert_eq!(h.receipt_type, Some(ReceiptType::Breve));
        assert_eq!(h.reply_to, None);
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let r = &["bob@pec.beta.test", "carol@mail.gamma.test"];
        assert_eq!(submit(None, "alice@pec.alpha.test", r, OK), Err(AccessRefusal::NotAuthenticated));
        assert!(matches!(submit(Some("alice@pec.alpha.test"), "mallory@pec.alpha.test", r, OK), Err(AccessRefusal::MailFromMismatch { .. })));
        let spoof = OK.replace("alice@pec.alpha.test>", "mallory@pec.alpha.test>");
        assert!(matches!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &spoof), Err(AccessRefusal::FromMismatch { .. })));
        let two_from = format!("{OK}From: alice@pec.alpha.test\n");
        assert_eq!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &two_from), Err(AccessRefusal::FromHeaderCount(2)));
        let two_addr = OK.replace("From: Alice <alice@pec.alpha.test>", "From: alice@pec.alpha.test, eve@pec.alpha.test");
        assert_eq!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &two_addr), Err(AccessRefusal::FromAddressCount(2)));
        let no_to = OK.replace("To: bob@pec.beta.test\n", "");
        assert_eq!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &no_to), Err(AccessRefusal::NoTo));
        let bcc = format!("{OK}Bcc: dave@pec.beta.test\n");
        assert_eq!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &bcc), Err(AccessRefusal::Bcc));
        let empty_bcc = format!("{OK}Bcc:\n");
        assert!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &empty_bcc).is_ok());
        assert_eq!(
            submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["dave@pec.beta.test"], OK),
            Err(AccessRefusal::RecipientNotInHeaders("dave@pec.beta.test".into()))
        );
        let no_from = OK.replace("From: Alice <alice@pec.alpha.test>\n", "");
        assert_eq!(submit(Some("alice@pec.alpha.test"), "alice@pec.alpha.test", r, &no_from), Err(AccessRefusal::NoFrom));
    }

    #[test]
    fn headers_and_envelope_name_the_same_recipients() {
        let alice = Some("alice@pec.alpha.test");
        // A To: address that is no RCPT (it would be certified without receiving anything).
        assert_eq!(
            submit(alice, "alice@pec.alpha.test", &["bob@pec.beta.test"], OK),
            Err(AccessRefusal::HeaderRecipientNotInEnvelope("carol@mail.gamma.test".into()))
        );
        let extra_to = OK.replace("To: bob@pec.beta.test", "To: bob@pec.beta.test, Eve <eve@pec.alpha.test>");
        let err = submit(alice, "alice@pec.alpha.test", &["bob@pec.beta.test", "carol@mail.gamma.test"], &extra_to).unwrap_err();
        assert_eq!(err, AccessRefusal::HeaderRecipientNotInEnvelope("eve@pec.alpha.test".into()));
        assert!(err.to_string().contains("<eve@pec.alpha.test>") && err.to_string().contains("RCPT TO"), "{err}");
        assert!(err.deserves_notice());
        assert_eq!(err.smtp_codes(), ("550", "5.7.1"));
        // A group naming a non-recipient counts too.
        let group = OK.replace("Cc: Carol <carol@mail.gamma.test>", "Cc: Team: carol@mail.gamma.test, dave@pec.beta.test;");
        assert_eq!(
            submit(alice, "alice@pec.alpha.test", &["bob@pec.beta.test", "carol@mail.gamma.test"], &group),
            Err(AccessRefusal::HeaderRecipientNotInEnvelope("dave@pec.beta.test".into()))
        );
        // The same mailboxes, in another case and order, with a repeat: they agree.
        let upper = OK.replace("To: bob@pec.beta.test", "To: BOB@pec.beta.test, carol@mail.gamma.test");
        assert!(submit(alice, "alice@pec.alpha.test", &["carol@MAIL.gamma.test", "bob@pec.beta.test"], &upper).is_ok());
    }

    #[test]
    fn limits() {
        let rcpts: Vec<String> = (0..51).map(|i| format!("u{i}@pec.beta.test")).collect();
        let to = format!("From: a@pec.alpha.test\nTo: {}\n", rcpts.join(", "));
        let block = to.replace('\n', "\r\n") + "\r\n";
        let s = Submission { login: Some("a@pec.alpha.test"), mail_from: "a@pec.alpha.test", rcpts: &rcpts, header_block: block.as_bytes(), size: 10 };
        assert_eq!(check_message(&s, LIMITS), Err(AccessRefusal::TooManyRecipients { count: 51, max: 50 }));
        let to = format!("From: a@pec.alpha.test\nTo: {}\n", rcpts[..50].join(", "));
        let block = to.replace('\n', "\r\n") + "\r\n";
        let s = Submission { rcpts: &rcpts[..50], size: 600_001, header_block: block.as_bytes(), ..s };
        assert!(matches!(check_message(&s, LIMITS), Err(AccessRefusal::TooLarge { .. })));
        let s = Submission { size: 600_000, ..s };
        assert!(check_message(&s, LIMITS).is_ok(), "the legal minimum must pass");
        assert_eq!(AccessRefusal::TooLarge { size: 1, recipients: 1, max: 1 }.smtp_codes(), ("552", "5.3.4"));
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [&b""[..], b"\xff\xfe\r\n", b"From:\r\n\r\n", b"From: <<<@@@>>>\r\nTo: ,,,\r\n\r\n"] {
            let _ = check_message(&Submission { login: Some("a@b"), mail_from: "a@b", rcpts: &[], header_block: junk, size: 0 }, LIMITS);
        }
    }
}
