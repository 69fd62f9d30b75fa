//! The Italian human-readable texts of every PEC message (decisions.md 3): a
//! `multipart/alternative` with text/plain and text/html, quoted-printable, ISO-8859-1 when
//! every character fits, else UTF-8. The words follow the real Aruba/Namirial ("opec") texts
//! of pec-format.md §1.6; the timeout texts render RFC 6109 §3.1.6 in Italian.
//!
//! The texts are informative: consumers parse only daticert.xml. Every value is sanitised
//! (no control characters) and the HTML escapes everything and references nothing external.

use super::mime;
use super::types::{Instant, ReceiptType, Recipient, RecipientType};

/// The facts every text quotes.
#[derive(Debug, Clone, Copy)]
pub struct TextFacts<'a> {
    /// The instant of this message (acceptance, delivery, …) in the provider zone.
    pub instant: &'a Instant,
    /// The original Subject (decoded).
    pub subject: &'a str,
    /// The original sender address.
    pub sender: &'a str,
    /// To and Cc recipients of the original, with their type.
    pub recipients: &'a [Recipient],
    /// The PEC identifier of the transport envelope.
    pub identificativo: &'a str,
}

/// Which text to write, with its own facts.
#[derive(Debug, Clone, Copy)]
pub enum TextKind<'a> {
    /// Busta di trasporto.
    Trasporto,
    /// Busta di anomalia; `reason` says what was wrong with the received message.
    Anomalia { reason: &'a str },
    /// Ricevuta di accettazione.
    Accettazione,
    /// Avviso di non accettazione for formal reasons.
    NonAccettazione { reason: &'a str },
    /// Avviso di non accettazione per virus.
    NonAccettazioneVirus { reason: &'a str },
    /// Ricevuta di presa in carico for the covered recipients.
    PresaInCarico { ricezione: &'a [String] },
    /// Ricevuta di avvenuta consegna.
    AvvenutaConsegna {
        consegna: &'a str,
        variant: ReceiptType,
    },
    /// Avviso di mancata consegna.
    ErroreConsegna { consegna: &'a str, errore: &'a str },
    /// Avviso di mancata consegna per virus.
    ErroreConsegnaVirus { consegna: &'a str, errore: &'a str },
    /// Avviso di mancata consegna per superamento dei tempi massimi, after `hours` (12 or 24).
    Preavviso { consegna: &'a str, hours: u8 },
    /// Avviso di rilevazione virus (to the sender provider).
    RilevazioneVirus { consegna: &'a str, errore: &'a str },
}

/// A rendered text: title, plain lines, HTML lines (already escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texts {
    pub title: String,
    pub plain: String,
    pub html: String,
}

fn clean(s: &str) -> String {
    mime::sanitize_header_value(s)
}

fn tag_of(recipients: &[Recipient], addr: &str) -> RecipientType {
    recipients
        .iter()
        .find(|r| r.address.eq_ignore_ascii_case(addr))
        .map(|r| r.kind)
        .unwrap_or_default()
}

fn when(t: &Instant) -> String {
    format!(
        "Il giorno {} alle ore {} ({})",
        t.format("%d/%m/%Y"),
        t.format("%H:%M:%S"),
        super::types::zona(t)
    )
}

/// Escapes text for HTML: markup characters and every non-ASCII character as a numeric
/// reference, so the HTML part is pure ASCII.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push(' '),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("&#{};", c as u32)),
        }
    }
    out
}

/// Builds the texts of one message.
pub fn texts(f: &TextFacts<'_>, kind: &TextKind<'_>) -> Texts {
    let subject = clean(f.subject);
    let sender = clean(f.sender);
    let id = clean(f.identificativo);
    let tagged: Vec<String> = f
        .recipients
        .iter()
        .map(|r| format!("{} (\"{}\")", clean(&r.address), r.kind.text_tag()))
        .collect();
    let plain_rcpts: Vec<String> = f.recipients.iter().map(|r| clean(&r.address)).collect();
    let when = when(f.instant);
    let daticert_note =
        "L'allegato daticert.xml contiene informazioni di servizio sulla trasmissione";
    let original_note = "Il messaggio originale è incluso in allegato, per aprirlo cliccare sul file \"postacert.eml\".";

    let (title, mut lines): (&str, Vec<String>) = match *kind {
        TextKind::Trasporto => {
            let mut l = vec![
                "Messaggio di posta certificata".into(),
                String::new(),
                format!("{when} il messaggio"),
                format!("\"{subject}\" è stato inviato da \"{sender}\""),
                "indirizzato a:".into(),
            ];
            l.extend(plain_rcpts.iter().cloned());
            l.extend([
                String::new(),
                "Il messaggio originale è incluso in allegato.".into(),
                format!("Identificativo messaggio: {id}"),
            ]);
            ("Messaggio di posta certificata", l)
        }
        TextKind::Anomalia { reason } => {
            let mut l = vec![
                "Anomalia nel messaggio".into(),
                String::new(),
                format!("{when} è stato ricevuto"),
                format!("il messaggio \"{subject}\" inviato da \"{sender}\""),
                "e indirizzato a:".into(),
            ];
            l.extend(plain_rcpts.iter().cloned());
            l.extend([
                "Tali dati non sono stati certificati per il seguente errore:".into(),
                clean(reason),
                "Il messaggio originale è incluso in allegato.".into(),
            ]);
            ("Anomalia nel messaggio", l)
        }
        TextKind::Accettazione => {
            let mut l = vec![
                format!(
                    "-- Ricevuta di accettazione del messaggio indirizzato a {} --",
                    tagged.join(", ")
                ),
                String::new(),
                format!("{when} il messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                "ed indirizzato a:".into(),
            ];
            l.extend(tagged.iter().cloned());
            l.extend([
                "è stato accettato dal sistema ed inoltrato.".into(),
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ]);
            ("Ricevuta di accettazione", l)
        }
        TextKind::NonAccettazione { reason } | TextKind::NonAccettazioneVirus { reason } => {
            let virus = matches!(kind, TextKind::NonAccettazioneVirus { .. });
            let mut l = vec![
                if virus {
                    "-- Avviso di non accettazione per virus --".into()
                } else {
                    "-- Avviso di non accettazione --".into()
                },
                String::new(),
                format!("{when} nel messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                "ed indirizzato a:".into(),
            ];
            l.extend(tagged.iter().cloned());
            if virus {
                l.push("è stato rilevato un problema di sicurezza (virus) che ne impedisce l'accettazione:".into());
            } else {
                l.push(
                    "è stato rilevato un problema che ne impedisce l'accettazione a causa di:"
                        .into(),
                );
            }
            l.extend([
                clean(reason),
                "Il messaggio non è stato accettato.".into(),
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ]);
            (
                if virus {
                    "Avviso di non accettazione per virus"
                } else {
                    "Avviso di non accettazione"
                },
                l,
            )
        }
        TextKind::PresaInCarico { ricezione } => {
            let mut l = vec![
                "-- Ricevuta di presa in carico --".into(),
                String::new(),
                format!("{when} il messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                "e indirizzato a:".into(),
            ];
            l.extend(ricezione.iter().map(|a| clean(a)));
            l.extend([
                "è stato accettato dal sistema.".into(),
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ]);
            ("Ricevuta di presa in carico", l)
        }
        TextKind::AvvenutaConsegna { consegna, variant } => {
            let c = clean(consegna);
            let tag = tag_of(f.recipients, consegna).text_tag();
            let mut l = vec![
                format!(
                    "-- Ricevuta di avvenuta consegna del messaggio indirizzato a {c} \"{tag}\" --"
                ),
                String::new(),
                format!("{when} il messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                format!("ed indirizzato a \"{c}\""),
                "è stato correttamente consegnato al destinatario.".into(),
                format!("Identificativo del messaggio: {id}"),
            ];
            match variant {
                ReceiptType::Completa => l.push(original_note.into()),
                ReceiptType::Breve => l.push(
                    "Il messaggio originale è incluso in allegato (file \"postacert.eml\"); \
                     gli eventuali allegati sono sostituiti dalla loro impronta (file \".hash\")."
                        .into(),
                ),
                ReceiptType::Sintetica => {}
            }
            l.push(daticert_note.into());
            ("Ricevuta di avvenuta consegna", l)
        }
        TextKind::ErroreConsegna { consegna, errore }
        | TextKind::ErroreConsegnaVirus { consegna, errore } => {
            let virus = matches!(kind, TextKind::ErroreConsegnaVirus { .. });
            let mut l = vec![
                if virus {
                    "--Avviso di mancata consegna per virus--".into()
                } else {
                    "--Avviso di mancata consegna del messaggio--".into()
                },
                String::new(),
                format!("{when} nel messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                format!("e destinato all'utente \"{}\"", clean(consegna)),
            ];
            if virus {
                l.push("è stato rilevato un problema di sicurezza (virus):".into());
            } else {
                l.push("è stato rilevato il seguente errore:".into());
            }
            l.extend([
                clean(errore),
                "Il messaggio non è stato consegnato.".into(),
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ]);
            (
                if virus {
                    "Avviso di mancata consegna per virus"
                } else {
                    "Avviso di mancata consegna"
                },
                l,
            )
        }
        TextKind::Preavviso { consegna, hours } => {
            let mut l = vec![
                "--Avviso di mancata consegna per superamento dei tempi massimi--".into(),
                String::new(),
                format!("{when} il messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                format!("e destinato all'utente \"{}\"", clean(consegna)),
            ];
            if hours >= 24 {
                l.extend([
                    "non è stato consegnato entro 24 ore dal suo invio.".into(),
                    "La transazione si considera conclusa con esito negativo.".into(),
                ]);
            } else {
                l.extend([
                    format!("non è stato consegnato nelle prime {hours} ore dal suo invio."),
                    "Il sistema provvederà ad inviare un ulteriore avviso di mancata consegna".into(),
                    "qualora nelle successive 12 ore non pervenga conferma di consegna dal destinatario.".into(),
                ]);
            }
            l.extend([
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ]);
            (
                "Avviso di mancata consegna per superamento dei tempi massimi",
                l,
            )
        }
        TextKind::RilevazioneVirus { consegna, errore } => {
            let l = vec![
                "-- Avviso di rilevazione virus --".into(),
                String::new(),
                format!("{when} nel messaggio con Oggetto"),
                format!("\"{subject}\" inviato da \"{sender}\""),
                format!("e destinato all'utente \"{}\"", clean(consegna)),
                "è stato rilevato un problema di sicurezza (virus):".into(),
                clean(errore),
                "Il messaggio non è stato consegnato.".into(),
                format!("Identificativo del messaggio: {id}"),
                daticert_note.into(),
            ];
            ("Avviso di rilevazione virus", l)
        }
    };
    lines.push(String::new());
    let plain = lines.join("\n");
    let mut html = String::with_capacity(plain.len() * 2);
    html.push_str("<html>\n<head><title>");
    html.push_str(&html_escape(title));
    html.push_str("</title></head>\n<body>\n<h3>");
    html.push_str(&html_escape(title));
    html.push_str("</h3>\n<hr><br>\n");
    // The first plain line repeats the title in another form; the HTML starts after it.
    for line in lines.iter().skip(2) {
        html.push_str(&html_escape(line));
        html.push_str("<br>\n");
    }
    html.push_str("</body>\n</html>\n");
    Texts {
        title: title.to_string(),
        plain,
        html,
    }
}

/// Charset for a text part: `iso-8859-1` when every character fits, else `utf-8`, with the
/// text encoded accordingly.
pub fn encode_charset(text: &str) -> (&'static str, Vec<u8>) {
    if mime::fits_latin1(text) {
        ("iso-8859-1", text.chars().map(|c| c as u32 as u8).collect())
    } else {
        ("utf-8", text.as_bytes().to_vec())
    }
}

/// Writes the `multipart/alternative` entity (headers and body, CRLF) of `t` with `boundary`.
pub fn write_alternative(out: &mut Vec<u8>, t: &Texts, boundary: &str) {
    out.extend_from_slice(b"Content-Type: multipart/alternative;\r\n boundary=\"");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\"\r\n\r\n");
    for (sub, text) in [("plain", &t.plain), ("html", &t.html)] {
        let (charset, bytes) = encode_charset(text);
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(
            format!(
                "\r\nContent-Type: text/{sub}; charset=\"{charset}\"\r\n\
Content-Disposition: inline\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&mime::quoted_printable(&bytes));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn facts<'a>(t: &'a Instant, r: &'a [Recipient], subject: &'a str) -> TextFacts<'a> {
        TextFacts {
            instant: t,
            subject,
            sender: "a@pec.a.it",
            recipients: r,
            identificativo: "x.1@pec.a.it",
        }
    }

    #[test]
    fn acceptance_wording() {
        let t = chrono::FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2018, 11, 13, 16, 39, 26)
            .unwrap();
        let r = [Recipient {
            address: "b@pec.b.it".into(),
            kind: RecipientType::Certificato,
        }];
        let x = texts(&facts(&t, &r, "Test PEC"), &TextKind::Accettazione);
        assert!(x.plain.contains(
            "Il giorno 13/11/2018 alle ore 16:39:26 (+0100) il messaggio con Oggetto\n\"Test PEC\" inviato da \"a@pec.a.it\"\ned indirizzato a:\nb@pec.b.it (\"posta certificata\")\nè stato accettato dal sistema ed inoltrato."
        ), "{}", x.plain);
        assert!(x.html.contains("&egrave;") || x.html.contains("&#232;"));
    }

    #[test]
    fn html_is_escaped_and_ascii() {
        let t = chrono::Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .unwrap()
            .fixed_offset();
        let r = [Recipient {
            address: "<b>@x.it".into(),
            kind: RecipientType::Esterno,
        }];
        let x = texts(
            &facts(&t, &r, "<script>alert(1)</script> Привет €"),
            &TextKind::Trasporto,
        );
        assert!(!x.html.contains("<script>"));
        assert!(x.html.contains("&lt;b&gt;@x.it"));
        assert!(x.html.is_ascii());
        assert!(!x.html.contains("http") && !x.html.contains("src="));
        assert_eq!(encode_charset(&x.plain).0, "utf-8");
        assert_eq!(encode_charset("è").0, "iso-8859-1");
    }

    #[test]
    fn timeout_texts_differ() {
        let t = chrono::Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .unwrap()
            .fixed_offset();
        let r = [];
        let a = texts(
            &facts(&t, &r, "s"),
            &TextKind::Preavviso {
                consegna: "b@x.it",
                hours: 12,
            },
        );
        let b = texts(
            &facts(&t, &r, "s"),
            &TextKind::Preavviso {
                consegna: "b@x.it",
                hours: 24,
            },
        );
        assert!(a.plain.contains("prime 12 ore"));
        assert!(b.plain.contains("entro 24 ore") && b.plain.contains("esito negativo"));
    }
}
