//! Property tests of the verifier and the daticert parser: arbitrary and mutated input never
//! makes them panic, and no change to a byte of the signed content of a real PEC message
//! ever verifies as genuine.

use std::sync::OnceLock;

use pecora::pec::Daticert;
use pecora::pec::incoming::{self, ProviderIndex, Reason, Verdict};
use proptest::prelude::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

include!("common/real_signers.rs");

struct Real {
    name: String,
    raw: Vec<u8>,
    /// Where the signed content (the first part of the multipart/signed) lies.
    content: std::ops::Range<usize>,
    /// End of the outer header.
    header_end: usize,
    at: pecora::pec::Instant,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The signed content's range, found from the outer boundary (independently of the
/// verifier's own splitter).
fn content_range(raw: &[u8]) -> (std::ops::Range<usize>, usize) {
    let text = String::from_utf8_lossy(raw);
    let header_end = find(raw, b"\n\n", 0)
        .unwrap_or(usize::MAX)
        .min(find(raw, b"\r\n\r\n", 0).unwrap_or(usize::MAX));
    let ct = text[..header_end]
        .to_ascii_lowercase()
        .find("boundary=")
        .unwrap();
    let rest = &text[ct + "boundary=".len()..];
    let boundary: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| *c != '"' && *c != ';' && !c.is_whitespace())
        .collect();
    let delim = format!("--{boundary}");
    let first = find(raw, delim.as_bytes(), header_end).unwrap();
    let start = find(raw, b"\n", first).unwrap() + 1;
    let next = find(raw, format!("\n{delim}").as_bytes(), start).unwrap();
    let end = if raw[next - 1] == b'\r' {
        next - 1
    } else {
        next
    };
    (start..end, header_end)
}

fn reals() -> &'static [Real] {
    static R: OnceLock<Vec<Real>> = OnceLock::new();
    R.get_or_init(|| {
        let mut out = Vec::new();
        for e in std::fs::read_dir(format!("{FIXTURES}/real")).unwrap() {
            let path = e.unwrap().path();
            let raw = std::fs::read(&path).unwrap();
            let (content, header_end) = content_range(&raw);
            let at = incoming::signing_time(&raw).unwrap().fixed_offset();
            out.push(Real {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                raw,
                content,
                header_end,
                at,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    })
}

/// The domains of the mailboxes a real receipt certifies (`consegna`, `ricezione` of its
/// daticert.xml), read with an independent MIME parser.
fn certified_domains(raw: &[u8]) -> Vec<String> {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default().parse(raw).unwrap();
    let mut out = Vec::new();
    // daticert.xml is an inline part, not an attachment: look at every part.
    for part in msg.parts.iter() {
        if part.attachment_name().is_some_and(|n| n.eq_ignore_ascii_case("daticert.xml")) {
            if let Ok(d) = Daticert::parse(part.contents()) {
                for a in d.consegna.iter().chain(d.ricezione.iter()) {
                    if let Some((_, dom)) = a.rsplit_once('@') {
                        out.push(dom.trim_end_matches('>').to_ascii_lowercase());
                    }
                }
            }
        }
    }
    out
}

fn index() -> &'static ProviderIndex {
    static I: OnceLock<ProviderIndex> = OnceLock::new();
    I.get_or_init(|| {
        // Each distinct signer, under the domain of its From: and (decisions.md 23) the
        // domains of the mailboxes its receipts certify.
        let mut signers: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        for r in reals() {
            let (der, domain) = signer_and_from_domain(&r.raw);
            let mut domains = vec![domain];
            domains.extend(certified_domains(&r.raw));
            add_signer(&mut signers, der, domains);
        }
        signers_index(&signers)
    })
}

#[test]
fn the_unmutated_fixtures_are_genuine() {
    // The baseline of the mutation properties below.
    assert_eq!(reals().len(), 9);
    for r in reals() {
        assert!(
            matches!(
                incoming::verify(&r.raw, index(), &r.at),
                Verdict::Genuine(_)
            ),
            "{}",
            r.name
        );
        assert!(
            r.content.start > r.header_end && r.content.end > r.content.start + 100,
            "{}",
            r.name
        );
    }
}

fn instant() -> pecora::pec::Instant {
    chrono::DateTime::parse_from_rfc3339("2018-11-13T16:39:26+01:00").unwrap()
}

const DATICERT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<postacert tipo="avvenuta-consegna" errore="nessuno">
    <intestazione>
        <mittente>l.battistini@pec.it</mittente>
        <destinatari tipo="certificato">l.battistini@pec.it</destinatari>
        <destinatari tipo="esterno">x@example.com</destinatari>
        <risposte>l.battistini@pec.it</risposte>
        <oggetto>IT03339130126_00009.xml</oggetto>
    </intestazione>
    <dati>
        <gestore-emittente>ARUBA PEC S.p.A.</gestore-emittente>
        <data zona="+0100">
            <giorno>13/11/2018</giorno>
            <ora>16:39:27</ora>
        </data>
        <identificativo>opec288.20181113163926.01838.310.1.63@pec.aruba.it</identificativo>
        <msgid>&lt;1542123565@elbati&gt;</msgid>
        <ricevuta tipo="completa" />
        <consegna>l.battistini@pec.it</consegna>
    </dati>
</postacert>
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_nor_verify(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(!matches!(incoming::verify(&raw, index(), &instant()), Verdict::Genuine(_)));
        let _ = incoming::signing_time(&raw);
        let _ = Daticert::parse(&raw);
        let _ = ProviderIndex::from_ldif_bytes(&raw);
        let _ = ProviderIndex::load(&raw, None);
    }

    #[test]
    fn arbitrary_parts_of_a_signed_pec_shape_never_verify(
        content in proptest::collection::vec(any::<u8>(), 0..2048),
        signature in "[A-Za-z0-9+/=\r\n]{0,1200}",
        header in prop::sample::select(vec!["X-Trasporto: posta-certificata", "X-Ricevuta: accettazione", "X-Ricevuta: x"]),
    ) {
        let raw = [
            format!("{header}\r\nFrom: posta-certificata@pec.aruba.it\r\nContent-Type: multipart/signed; boundary=\"b\"\r\n\r\n--b\r\n").as_bytes(),
            &content,
            b"\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n",
            signature.as_bytes(),
            b"\r\n--b--\r\n",
        ]
        .concat();
        match incoming::verify(&raw, index(), &instant()) {
            Verdict::Genuine(_) => prop_assert!(false, "random content verified"),
            Verdict::NotGenuine { claimed, .. } => prop_assert!(claimed),
        }
    }

    #[test]
    fn any_changed_byte_of_the_signed_content_is_refused(which in 0usize..9, pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let r = &reals()[which];
        let mut raw = r.raw.clone();
        let at = r.content.start + pos.index(r.content.len());
        raw[at] ^= flip;
        match incoming::verify(&raw, index(), &r.at) {
            Verdict::Genuine(_) => prop_assert!(false, "{}: byte {at} changed ({:#04x} -> {:#04x}) still genuine", r.name, r.raw[at], raw[at]),
            Verdict::NotGenuine { claimed, reason } => {
                prop_assert!(claimed);
                prop_assert!(
                    matches!(reason, Reason::BadSignature | Reason::MalformedSignature(_) | Reason::NotSigned(_)),
                    "{}: byte {}: {:?}", r.name, at, reason
                );
            }
        }
    }

    #[test]
    fn changed_or_cut_messages_never_panic(which in 0usize..9, edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let r = &reals()[which];
        let mut raw = r.raw.clone();
        for (i, b) in &edits {
            let at = i.index(raw.len());
            raw[at] = *b;
        }
        let _ = incoming::verify(&raw, index(), &r.at);
        // Anywhere in the header, where nothing is signed.
        let mut head = r.raw.clone();
        for (i, b) in &edits {
            head[i.index(r.header_end)] = *b;
        }
        let _ = incoming::verify(&head, index(), &r.at);
        let _ = incoming::verify(&r.raw[..cut.index(r.raw.len())], index(), &r.at);
    }

    #[test]
    fn mutated_daticerts_never_panic_and_what_parses_round_trips(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut xml = DATICERT.as_bytes().to_vec();
        for (i, b) in &edits {
            let at = i.index(xml.len());
            xml[at] = *b;
        }
        if let Ok(d) = Daticert::parse(&xml) {
            // The builder writes TAB, CR and LF in values as spaces (daticert.rs), so what it
            // writes parses back to a daticert that it writes identically.
            let written = d.to_xml();
            let again = Daticert::parse(written.as_bytes());
            prop_assert!(again.is_ok(), "{}: {:?}", written, again);
            let again = again.unwrap();
            prop_assert_eq!(again.to_xml(), written);
            prop_assert_eq!((again.tipo, again.errore, again.data, again.ricevuta), (d.tipo, d.errore, d.data, d.ricevuta));
            prop_assert_eq!(again.destinatari.len(), d.destinatari.len());
        }
    }

    #[test]
    fn arbitrary_text_as_daticert_never_panics(text in "\\PC{0,600}") {
        let _ = Daticert::parse(text.as_bytes());
        let wrapped = format!("<postacert tipo=\"accettazione\"><intestazione>{text}</intestazione><dati>{text}</dati></postacert>");
        let _ = Daticert::parse(wrapped.as_bytes());
    }
}

#[test]
fn the_daticert_sample_parses() {
    let d = Daticert::parse(DATICERT.as_bytes()).unwrap();
    assert_eq!(d.destinatari.len(), 2);
    assert_eq!(Daticert::parse(d.to_xml().as_bytes()).unwrap(), d);
}
