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

impl Daticert {
    /// The daticert.xml text, in the exact layout of real provider files (pec-format.md §3.2):
    /// `<?xml version="1.0" encoding="UTF-8"?>` prolog, no DOCTYPE, 4-space indents, LF line
    /// ends, one `<destinatari>` per address, `errore` always written, `<msgid>` with its angle
    /// brackets escaped, `<identificativo>` without brackets, `<risposte>` always present,
    /// `<ricevuta tipo="…" />`, elements in DTD order.
    ///
    /// Text is XML-escaped (`& < > " '`); characters that XML 1.0 forbids (C0 controls but
    /// TAB/LF/CR, U+FFFE, U+FFFF) are dropped and TAB/LF/CR become spaces, so no value can
    /// break the document or smuggle markup. The DTD requires at least one `<destinatari>`:
    /// callers must not build a Daticert without recipients (the builders refuse to).
    pub fn to_xml(&self) -> String {
        let mut x = String::with_capacity(1024);
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<postacert tipo=\"{}\" errore=\"{}\">\n",
            self.tipo.as_str(),
            self.errore.as_str()
        ));
        x.push_str("    <intestazione>\n");
        element(&mut x, 2, "mittente", &self.mittente);
        for d in &self.destinatari {
            x.push_str(&format!(
                "        <destinatari tipo=\"{}\">{}</destinatari>\n",
                d.kind.as_str(),
                xml_escape(&d.address)
            ));
        }
        element(&mut x, 2, "risposte", &self.risposte);
        if let Some(o) = &self.oggetto {
            element(&mut x, 2, "oggetto", o);
        }
        x.push_str("    </intestazione>\n");
        x.push_str("    <dati>\n");
        element(&mut x, 2, "gestore-emittente", &self.gestore_emittente);
        x.push_str(&format!(
            "        <data zona=\"{}\">\n",
            xml_escape(&super::types::zona(&self.data))
        ));
        element(
            &mut x,
            3,
            "giorno",
            &self.data.format("%d/%m/%Y").to_string(),
        );
        element(&mut x, 3, "ora", &self.data.format("%H:%M:%S").to_string());
        x.push_str("        </data>\n");
        // Without its brackets, nor the white space they may have hidden ("id\t<"): the
        // reader trims element text, so what is written here must read back the same
        // (found by fuzzing).
        element(
            &mut x,
            2,
            "identificativo",
            self.identificativo
                .trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace()),
        );
        if let Some(m) = &self.msgid {
            element(&mut x, 2, "msgid", m);
        }
        if let Some(r) = self.ricevuta {
            x.push_str(&format!("        <ricevuta tipo=\"{}\" />\n", r.as_str()));
        }
        if let Some(c) = &self.consegna {
            element(&mut x, 2, "consegna", c);
        }
        for r in &self.ricezione {
            element(&mut x, 2, "ricezione", r);
        }
        if let Some(e) = &self.errore_esteso {
            element(&mut x, 2, "errore-esteso", e);
        }
        x.push_str("    </dati>\n");
        x.push_str("</postacert>\n");
        x
    }
}

fn element(x: &mut String, depth: usize, name: &str, text: &str) {
    for _ in 0..depth {
        x.push_str("    ");
    }
    x.push('<');
    x.push_str(name);
    x.push('>');
    x.push_str(&xml_escape(text));
    x.push_str("</");
    x.push_str(name);
    x.push_str(">\n");
}

/// XML-escapes text for element content or a quoted attribute, dropping characters XML 1.0
/// does not allow and turning TAB/CR/LF into spaces.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\r' | '\n' => out.push(' '),
            c if (c as u32) < 0x20 => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod xml_tests {
    use super::*;
    use crate::pec::types::{Recipient, RecipientType};
    use chrono::TimeZone;

    fn sample() -> Daticert {
        Daticert {
            tipo: Tipo::PostaCertificata,
            errore: Errore::Nessuno,
            mittente: "altea.l@namirialpec.it".into(),
            destinatari: vec![
                Recipient {
                    address: "osm.ism@bedag.ch".into(),
                    kind: RecipientType::Esterno,
                },
                Recipient {
                    address: "oskiwalrus@cs.com".into(),
                    kind: RecipientType::Esterno,
                },
            ],
            risposte: "altea.l@namirialpec.it".into(),
            oggetto: Some("Norah Colly".into()),
            gestore_emittente: "Namirial S.p.A.".into(),
            data: chrono::FixedOffset::east_opt(3600)
                .unwrap()
                .with_ymd_and_hms(2024, 12, 5, 0, 2, 10)
                .unwrap(),
            identificativo: "opec21192.20241205000210.24820.46.1.184@sicurezzapostale.it".into(),
            msgid: Some("<2839ed57-e664-4020-bb69-6a8cb92d05a6@email.android.com>".into()),
            ricevuta: Some(ReceiptType::Completa),
            consegna: None,
            ricezione: vec![],
            errore_esteso: None,
        }
    }

    #[test]
    fn matches_the_real_namirial_layout() {
        let want = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<postacert tipo=\"posta-certificata\" errore=\"nessuno\">
    <intestazione>
        <mittente>altea.l@namirialpec.it</mittente>
        <destinatari tipo=\"esterno\">osm.ism@bedag.ch</destinatari>
        <destinatari tipo=\"esterno\">oskiwalrus@cs.com</destinatari>
        <risposte>altea.l@namirialpec.it</risposte>
        <oggetto>Norah Colly</oggetto>
    </intestazione>
    <dati>
        <gestore-emittente>Namirial S.p.A.</gestore-emittente>
        <data zona=\"+0100\">
            <giorno>05/12/2024</giorno>
            <ora>00:02:10</ora>
        </data>
        <identificativo>opec21192.20241205000210.24820.46.1.184@sicurezzapostale.it</identificativo>
        <msgid>&lt;2839ed57-e664-4020-bb69-6a8cb92d05a6@email.android.com&gt;</msgid>
        <ricevuta tipo=\"completa\" />
    </dati>
</postacert>
";
        assert_eq!(sample().to_xml(), want);
    }

    #[test]
    fn hostile_text_is_escaped() {
        let mut d = sample();
        d.oggetto = Some("a]]>b<c>&\"'\u{1}\u{0}\r\nd".into());
        let x = d.to_xml();
        assert!(
            x.contains("<oggetto>a]]&gt;b&lt;c&gt;&amp;&quot;&apos;  d</oggetto>"),
            "{x}"
        );
        assert!(!x.contains("]]>"));
    }
}
