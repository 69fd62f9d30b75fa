//! Delivery status notifications (RFC 3464), as Postfix writes its bounces: which message
//! they are about and what happened to each recipient. Pure: bytes in, facts out.
//!
//! decisions.md 13: a bounce of a transport envelope becomes a signed errore-consegna; this
//! module only reads the bounce.

use mail_parser::{MessageParser, MimeHeaders, PartType};

use crate::pec::types::Errore;

/// One recipient block of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `Final-Recipient`, without the `rfc822;` type: the address Postfix tried to deliver
    /// to. A block without one is ignored.
    pub recipient: String,
    /// `Original-Recipient`, when present: the ORCPT the sender of the bounced message gave,
    /// or Postfix's record of the address before rewriting. Only informative: the sender
    /// chose it, so it never binds a bounce to a transaction (decisions.md 19).
    pub original: Option<String>,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded` (lowercase).
    pub action: String,
    /// The enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// `Diagnostic-Code` without its type (`smtp;`), unfolded.
    pub diagnostic: Option<String>,
}

impl RecipientStatus {
    pub fn failed(&self) -> bool {
        self.action == "failed"
    }

    /// The daticert `errore` for this failure: `no-dest` for a bad mailbox (X.1.1),
    /// `no-dominio` for a bad or unresolvable destination (X.1.2, X.4.4), else `altro`.
    pub fn errore(&self) -> Errore {
        let detail = self.status.split_once('.').map(|(_, d)| d).unwrap_or("");
        match detail {
            "1.1" => Errore::NoDest,
            "1.2" | "4.4" => Errore::NoDominio,
            _ => Errore::Altro,
        }
    }

    /// `errore-esteso`: the status code, the reporting provider and the diagnostic, in the
    /// form real providers use (`5.1.1 - FAKE Pec S.p.A. - indirizzo non valido`).
    pub fn errore_esteso(&self, provider: &str) -> String {
        let mut s = format!("{} - {provider}", self.status);
        if let Some(d) = &self.diagnostic {
            s.push_str(" - ");
            s.push_str(d);
        }
        // One line, bounded: it goes into XML and a text body (both escape it).
        let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        s.chars().take(900).collect()
    }
}

/// A parsed delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Reporting-MTA`, without the `dns;` type.
    pub reporting_mta: Option<String>,
    /// `X-Postfix-Queue-ID`: the Postfix queue id of the message that bounced.
    pub queue_id: Option<String>,
    /// `X-Postfix-Sender`, without the `rfc822;` type: that message's envelope sender.
    pub sender: Option<String>,
    pub recipients: Vec<RecipientStatus>,
    /// Message-ID of the returned message (or returned headers), without angle brackets.
    /// Only informative: the author of the bounced message chose it (decisions.md 19).
    pub original_message_id: Option<String>,
}

/// Splits `Name: value` fields (with continuation lines) into lowercase names and unfolded
/// values, one group per blank-line-separated block.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !cur.is_empty() {
                groups.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = cur.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            cur.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Drops an address-type or diagnostic-type prefix such as `rfc822;` or `smtp;`.
fn without_type(v: &str) -> String {
    match v.split_once(';') {
        Some((t, rest)) if !t.contains('@') && !t.contains(' ') => rest.trim(),
        _ => v.trim(),
    }
    .trim_matches(['<', '>'])
    .to_string()
}

/// Reads a bounce. `None` when the message is not a delivery status notification
/// (`multipart/report; report-type=delivery-status` with a `message/delivery-status` part).
pub fn parse(raw: &[u8]) -> Option<Report> {
    let msg = MessageParser::default().parse(raw)?;
    let ct = msg.content_type()?;
    if !(ct.ctype().eq_ignore_ascii_case("multipart") && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))) {
        return None;
    }
    let mut status_text: Option<String> = None;
    let mut original_message_id = None;
    for part in msg.parts.iter().skip(1) {
        let Some(pct) = part.content_type() else { continue };
        let sub = pct.subtype().unwrap_or("").to_ascii_lowercase();
        let top = pct.ctype().to_ascii_lowercase();
        let body = raw.get(part.offset_body as usize..part.offset_end as usize).unwrap_or(&[]);
        match (top.as_str(), sub.as_str()) {
            ("message", "delivery-status") | ("message", "global-delivery-status") if status_text.is_none() => {
                status_text = Some(String::from_utf8_lossy(body).into_owned());
            }
            ("message", "rfc822") | ("message", "global") if original_message_id.is_none() => {
                original_message_id = match &part.body {
                    PartType::Message(m) => m.message_id().map(str::to_string),
                    _ => MessageParser::default().parse_headers(body).and_then(|m| m.message_id().map(str::to_string)),
                };
            }
            ("text", "rfc822-headers") | ("message", "global-headers") if original_message_id.is_none() => {
                original_message_id = MessageParser::default().parse_headers(body).and_then(|m| m.message_id().map(str::to_string));
            }
            _ => {}
        }
    }
    let groups = field_groups(&status_text?);
    let mut groups = groups.into_iter();
    let per_message = groups.next().unwrap_or_default();
    let field = |name: &str| per_message.iter().find(|(n, _)| n == name).map(|(_, v)| without_type(v));
    let reporting_mta = field("reporting-mta");
    let queue_id = field("x-postfix-queue-id").filter(|q| !q.is_empty());
    let sender = field("x-postfix-sender");
    let recipients = groups
        .filter_map(|g| {
            let get = |name: &str| g.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            let recipient = get("final-recipient").map(|v| without_type(&v)).filter(|r| !r.is_empty())?;
            let original = get("original-recipient").map(|v| without_type(&v));
            Some(RecipientStatus {
                recipient,
                original,
                action: get("action").unwrap_or_default().to_ascii_lowercase(),
                status: get("status").unwrap_or_default().split_whitespace().next().unwrap_or("").to_string(),
                diagnostic: get("diagnostic-code").map(|v| without_type(&v)),
            })
        })
        .collect();
    Some(Report { reporting_mta, queue_id, sender, recipients, original_message_id: original_message_id.map(|m| m.trim_matches(['<', '>']).to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX_BOUNCE: &str = "From: MAILER-DAEMON@mx.pec.alpha.test (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: mario.rossi@pec.alpha.test\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"ABC/mx\"\r
\r
This is a MIME-encapsulated message.\r
\r
--ABC/mx\r
Content-Description: Notification\r
Content-Type: text/plain; charset=us-ascii\r
\r
I'm sorry to have to inform you that your message could not be delivered.\r
\r
--ABC/mx\r
Content-Description: Delivery report\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.pec.alpha.test\r
X-Postfix-Queue-ID: 4Xy\r
X-Postfix-Sender: rfc822; mario.rossi@pec.alpha.test\r
Arrival-Date: Tue,  1 Dec 2026 10:00:00 +0100 (CET)\r
\r
Final-Recipient: rfc822; nobody@pec.beta.test\r
Original-Recipient: rfc822;nobody@pec.beta.test\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; 127.0.0.1\r
Diagnostic-Code: smtp; 550 5.1.1 <nobody@pec.beta.test>: Recipient address\r
    rejected: User unknown in virtual mailbox table\r
\r
Final-Recipient: rfc822; luca.verdi@pec.beta.test\r
Action: delivered\r
Status: 2.0.0\r
\r
Original-Recipient: rfc822; giulia.neri@pec.beta.test\r
Action: failed\r
Status: 5.1.1\r
\r
--ABC/mx\r
Content-Description: Undelivered Message Headers\r
Content-Type: text/rfc822-headers\r
\r
Message-ID: <opec.20261201.abc@pec.alpha.test>\r
Subject: POSTA CERTIFICATA: prova\r
\r
--ABC/mx--\r
";

    #[test]
    fn reads_a_postfix_bounce() {
        let r = parse(POSTFIX_BOUNCE.as_bytes()).unwrap();
        assert_eq!(r.reporting_mta.as_deref(), Some("mx.pec.alpha.test"));
        assert_eq!(r.original_message_id.as_deref(), Some("opec.20261201.abc@pec.alpha.test"));
        assert_eq!(r.queue_id.as_deref(), Some("4Xy"));
        assert_eq!(r.sender.as_deref(), Some("mario.rossi@pec.alpha.test"));
        // A block with an Original-Recipient and no Final-Recipient names nobody: the
        // sender of the bounced message chose that address (decisions.md 19).
        assert_eq!(r.recipients.len(), 2, "{:?}", r.recipients);
        let f = &r.recipients[0];
        assert_eq!(f.recipient, "nobody@pec.beta.test");
        assert!(f.failed());
        assert_eq!(f.status, "5.1.1");
        assert_eq!(f.errore(), Errore::NoDest);
        assert_eq!(
            f.diagnostic.as_deref(),
            Some("550 5.1.1 <nobody@pec.beta.test>: Recipient address rejected: User unknown in virtual mailbox table")
        );
        assert!(f.errore_esteso("Alpha").starts_with("5.1.1 - Alpha - 550 5.1.1"));
        assert!(!r.recipients[1].failed());
    }

    #[test]
    fn classifies_status_codes() {
        let s = |status: &str| RecipientStatus { recipient: "a@b".into(), original: None, action: "failed".into(), status: status.into(), diagnostic: None };
        assert_eq!(s("5.1.2").errore(), Errore::NoDominio);
        assert_eq!(s("5.4.4").errore(), Errore::NoDominio);
        assert_eq!(s("5.2.2").errore(), Errore::Altro);
        assert_eq!(s("5.7.1").errore(), Errore::Altro);
        assert_eq!(s("garbage").errore(), Errore::Altro);
    }

    #[test]
    fn ordinary_mail_is_not_a_report() {
        assert!(parse(b"Subject: hi\r\n\r\nbody\r\n").is_none());
        assert!(parse(b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\r\n--x--\r\n").is_none());
        assert!(parse(b"").is_none());
    }
}
