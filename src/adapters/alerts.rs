//! New-PEC alerts (issue: delivery point): after a PEC message is stored in a mailbox whose
//! holder asked for it, a short plain e-mail to an ordinary address and/or a JSON POST to a
//! webhook. Both say who sent what and when, never the content. They travel through the
//! outbox like every message pecora generates, so they are retried and never lost.
//!
//! A webhook rides the outbox as a message whose single recipient is `webhook:<URL>` and
//! whose bytes are the JSON body; [`crate::store::outbox`]'s submitter posts it instead of
//! injecting it. Only pecora writes outbox rows.

use crate::pec::mime;
use crate::pec::types::Instant;

/// The outbox recipient prefix that marks a webhook.
pub const WEBHOOK_PREFIX: &str = "webhook:";

/// What an alert says.
#[derive(Debug, Clone)]
pub struct Delivered<'a> {
    pub mailbox: &'a str,
    pub sender: &'a str,
    pub subject: Option<&'a str>,
    pub pec_id: &'a str,
    pub at: Instant,
}

/// The alert e-mail: plain text, from the provider's system address.
pub fn email(system_address: &str, to: &str, d: &Delivered<'_>, message_id: &str) -> Result<Vec<u8>, mime::MimeError> {
    let subject = d.subject.unwrap_or("");
    let mut out = Vec::new();
    let headers = [
        ("Date", mime::rfc5322_date(&d.at)),
        ("From", mime::mailbox("From", Some("Posta certificata"), system_address)?),
        ("To", mime::mailbox("To", None, to)?),
        ("Subject", mime::unstructured("Subject", "Nuovo messaggio PEC da ", &mime::sanitize_address(d.sender))),
        ("Message-ID", mime::angle(message_id)),
        ("Auto-Submitted", "auto-generated".to_string()),
        ("MIME-Version", "1.0".to_string()),
        ("Content-Type", "text/plain; charset=UTF-8".to_string()),
        ("Content-Transfer-Encoding", "quoted-printable".to_string()),
    ];
    for (n, v) in &headers {
        mime::push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    let text = format!(
        "Nella casella di posta certificata {} e' stato consegnato un messaggio.\r\n\r\n\
         Mittente: {}\r\nOggetto: {}\r\nData: {}\r\nIdentificativo: {}\r\n\r\n\
         Il contenuto si legge solo dalla casella di posta certificata.\r\n",
        mime::sanitize_address(d.mailbox),
        mime::sanitize_address(d.sender),
        mime::sanitize_header_value(subject),
        d.at.format("%d/%m/%Y %H:%M:%S %z"),
        mime::sanitize_msg_id(d.pec_id),
    );
    out.extend_from_slice(&mime::quoted_printable(text.as_bytes()));
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The webhook's JSON body.
pub fn webhook_body(d: &Delivered<'_>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": "pec-delivered",
        "mailbox": d.mailbox,
        "sender": d.sender,
        "subject": d.subject,
        "pec_id": d.pec_id,
        "time": d.at.to_rfc3339(),
    }))
    .unwrap_or_default()
}

/// The webhook URL of an outbox message, if it is one.
pub fn webhook_target(rcpts: &[String]) -> Option<&str> {
    match rcpts {
        [one] => one.strip_prefix(WEBHOOK_PREFIX),
        _ => None,
    }
}

/// Why a webhook POST failed; `temporary` means try again later.
#[derive(Debug, Clone)]
pub struct PostError {
    pub temporary: bool,
    pub message: String,
}

/// Posts `body` to `url` (10 s overall). 2xx is success; 4xx (other than 408 and 429) is a
/// permanent failure; anything else is temporary.
pub async fn post(url: &str, body: Vec<u8>) -> Result<(), PostError> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        match agent.post(&url).header("Content-Type", "application/json").send(&body[..]) {
            Ok(_) => Ok(()),
            Err(ureq::Error::StatusCode(code)) => Err(PostError {
                temporary: !(400..500).contains(&code) || code == 408 || code == 429,
                message: format!("{url} answered HTTP {code}"),
            }),
            Err(e) => Err(PostError { temporary: true, message: format!("{url}: {e}") }),
        }
    })
    .await
    .unwrap_or_else(|e| Err(PostError { temporary: true, message: format!("webhook task failed: {e}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Delivered<'static> {
        Delivered {
            mailbox: "luca.verdi@pec.beta.test",
            sender: "mario.rossi@pec.alpha.test",
            subject: Some("Contratto\r\nBcc: x@y"),
            pec_id: "opec.1@pec.alpha.test",
            at: chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00+01:00").unwrap(),
        }
    }

    #[test]
    fn the_email_says_who_and_when_and_cannot_be_injected() {
        let m = email("posta-certificata@pec.beta.test", "luca@mail.gamma.test", &facts(), "a1@pec.beta.test").unwrap();
        let text = String::from_utf8(m).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Subject: Nuovo messaggio PEC da mario.rossi@pec.alpha.test"));
        assert!(head.contains("To: luca@mail.gamma.test"));
        assert!(!head.contains("Bcc"), "{head}");
        assert!(body.contains("Mittente: mario.rossi@pec.alpha.test"));
        assert!(body.contains("01/12/2026 10:00:00 +0100"));
        assert!(!body.lines().any(|l| l.starts_with("Bcc:")), "{body}");
    }

    #[test]
    fn webhook_body_and_target() {
        let v: serde_json::Value = serde_json::from_slice(&webhook_body(&facts())).unwrap();
        assert_eq!(v["mailbox"], "luca.verdi@pec.beta.test");
        assert_eq!(v["time"], "2026-12-01T10:00:00+01:00");
        assert_eq!(webhook_target(&["webhook:http://x/y".into()]), Some("http://x/y"));
        assert_eq!(webhook_target(&["a@b".into()]), None);
        assert_eq!(webhook_target(&["webhook:http://x".into(), "a@b".into()]), None);
    }
}
