//! The verifier (`pecora::pec::incoming`) against the real messages of tests/fixtures:
//! every real PEC message is genuine at its CMS signingTime with exactly the daticert facts
//! it carries; every negative sample is refused with its own reason; and changing any
//! unsigned outer header that states a fact, or the index, or the instant, is caught with the
//! matching reason. The index is built from the signer certificates the fixtures carry (read
//! here with OpenSSL's own S/MIME parser, independently of the verifier's).

use std::collections::BTreeSet;
use std::process::Command;

use chrono::{DateTime, Utc};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::X509;
use pecora::pec::incoming::{self, ProviderIndex, Reason, TrustAnchors, Verdict};
use pecora::pec::{Instant, ReceiptType, RecipientType, Tipo};

#[path = "common/cli.rs"]
mod cli;

use std::ffi::OsStr;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn instant(s: &str) -> Instant {
    DateTime::parse_from_rfc3339(s).unwrap()
}

/// The signer certificate and the other certificates of a fixture's CMS.
fn cms_certificates(raw: &[u8]) -> (X509, Vec<X509>) {
    let (p7, _) = Pkcs7::from_smime(raw).unwrap();
    let none = Stack::new().unwrap();
    let signer = p7
        .signers(&none, Pkcs7Flags::empty())
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .to_owned();
    let all: Vec<X509> = p7
        .signed()
        .unwrap()
        .certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_owned())
        .collect();
    let others = all
        .into_iter()
        .filter(|c| c.to_der().unwrap() != signer.to_der().unwrap())
        .collect();
    (signer, others)
}

fn from_domain(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("from:"))
        .unwrap();
    line.rsplit_once('@')
        .unwrap()
        .1
        .trim_end_matches(['>', ' ', '\r'])
        .to_ascii_lowercase()
}

const REAL: [&str; 9] = [
    "aruba-2014-accettazione.eml",
    "aruba-2014-avvenuta-consegna.eml",
    "aruba-2014-busta-trasporto-1.eml",
    "aruba-2014-busta-trasporto-2.eml",
    "aruba-2018-accettazione.eml",
    "aruba-2018-avvenuta-consegna.eml",
    "aruba-2023-busta-trasporto.eml",
    "sogei-2018-busta-trasporto-breve-1.eml",
    "sogei-2018-busta-trasporto-breve-2.eml",
];

/// An index (LDIF text, parsed) listing every distinct signer of the real fixtures, each
/// under the domain of its From: address and the domains of the mailboxes its receipts
/// certify (decisions.md 23: a receipt counts only from the recipient's provider, and these
/// real providers do manage those domains). Provider names: "Provider <n> (<domain>)".
fn index_text() -> String {
    let mut signers: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
    for f in REAL {
        let raw = fixture(&format!("real/{f}"));
        let der = cms_certificates(&raw).0.to_der().unwrap();
        let mut domains = vec![from_domain(&raw)];
        if let Some(c) = EXPECT.iter().find(|e| e.file == f).and_then(|e| e.consegna) {
            domains.push(c.rsplit_once('@').unwrap().1.to_ascii_lowercase());
        }
        match signers.iter_mut().find(|(d, _)| *d == der) {
            Some((_, known)) => known.extend(domains),
            None => signers.push((der, domains)),
        }
    }
    let mut ldif = String::from("version: 1\ndn: o=postacert\nobjectclass: top\no: postacert\n");
    for (n, (der, mut domains)) in signers.into_iter().enumerate() {
        let first = domains[0].clone();
        domains.sort();
        domains.dedup();
        let name = format!("Provider {} ({first})", n + 1);
        ldif.push('\n');
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        ldif.push_str(&incoming::ldif_entry(&name, &[&der], &format!("servizio@{first}"), &domains));
    }
    ldif
}

fn index() -> ProviderIndex {
    ProviderIndex::from_ldif(&index_text()).unwrap()
}

fn at_signing_time(raw: &[u8]) -> Instant {
    incoming::signing_time(raw)
        .expect("a signingTime")
        .fixed_offset()
}

fn reason(v: Verdict) -> (bool, Reason) {
    match v {
        Verdict::NotGenuine { claimed, reason } => (claimed, reason),
        Verdict::Genuine(g) => panic!("unexpectedly genuine: {}", g.daticert.identificativo),
    }
}

/// What each real fixture certifies, from its daticert.xml, and when it was signed.
struct Expect {
    file: &'static str,
    tipo: Tipo,
    identificativo: &'static str,
    msgid: &'static str,
    mittente: &'static str,
    destinatari: &'static [&'static str],
    oggetto: &'static str,
    data: &'static str,
    gestore: &'static str,
    ricevuta: Option<ReceiptType>,
    consegna: Option<&'static str>,
    signing_time: &'static str,
    to: &'static [&'static str],
}

const EXPECT: [Expect; 9] = [
    Expect {
        file: "aruba-2014-accettazione.eml",
        tipo: Tipo::Accettazione,
        identificativo: "opec275.20141114182632.23219.07.1.48@pec.aruba.it",
        msgid: "<1415985992.182905912399292.346704098667155-openerp-private@elbati-Vostro-3550>",
        mittente: "l.battistini@pec.it",
        destinatari: &["thinkstudio@pec.it"],
        oggetto: "test private",
        data: "2014-11-14T18:26:32+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: None,
        consegna: None,
        signing_time: "2014-11-14T17:26:32Z",
        to: &[],
    },
    Expect {
        file: "aruba-2014-avvenuta-consegna.eml",
        tipo: Tipo::AvvenutaConsegna,
        identificativo: "opec275.20141114182632.23219.07.1.48@pec.aruba.it",
        msgid: "<1415985992.182905912399292.346704098667155-openerp-private@elbati-Vostro-3550>",
        mittente: "l.battistini@pec.it",
        destinatari: &["thinkstudio@pec.it"],
        oggetto: "test private",
        data: "2014-11-14T18:26:32+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: Some(ReceiptType::Completa),
        consegna: Some("thinkstudio@pec.it"),
        signing_time: "2014-11-14T17:26:32Z",
        to: &["thinkstudio@pec.it"],
    },
    Expect {
        file: "aruba-2014-busta-trasporto-1.eml",
        tipo: Tipo::PostaCertificata,
        identificativo: "opec275.20141107165200.03048.08.1.17@pec.aruba.it",
        msgid: "<NEOEQO$8B558E13C0664DE7004C1EFB790D1A09@pec.it>",
        mittente: "thinkstudio@pec.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "Re: archetipo",
        data: "2014-11-07T16:52:00+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: Some(ReceiptType::Completa),
        consegna: None,
        signing_time: "2014-11-07T15:52:01Z",
        to: &["l.battistini@pec.it"],
    },
    Expect {
        file: "aruba-2014-busta-trasporto-2.eml",
        tipo: Tipo::PostaCertificata,
        identificativo: "opec275.20141127151216.06559.08.1.17@pec.aruba.it",
        msgid: "<1417097534.920250892639160.712427135196036-openerp-private@master>",
        mittente: "thinkstudio@pec.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "Re: test",
        data: "2014-11-27T15:12:16+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: Some(ReceiptType::Completa),
        consegna: None,
        signing_time: "2014-11-27T14:12:16Z",
        to: &["l.battistini@pec.it"],
    },
    Expect {
        file: "aruba-2018-accettazione.eml",
        tipo: Tipo::Accettazione,
        identificativo: "opec288.20181113163926.01838.310.1.63@pec.aruba.it",
        msgid: "<1542123565.921546936035156.464602125997431-openerp-8-fatturapa.attachment.out@elbati-Vostro-3550>",
        mittente: "l.battistini@pec.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "IT03339130126_00009.xml",
        data: "2018-11-13T16:39:26+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: None,
        consegna: None,
        signing_time: "2018-11-13T15:39:26Z",
        to: &[],
    },
    Expect {
        file: "aruba-2018-avvenuta-consegna.eml",
        tipo: Tipo::AvvenutaConsegna,
        identificativo: "opec288.20181113163926.01838.310.1.63@pec.aruba.it",
        msgid: "<1542123565.921546936035156.464602125997431-openerp-8-fatturapa.attachment.out@elbati-Vostro-3550>",
        mittente: "l.battistini@pec.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "IT03339130126_00009.xml",
        data: "2018-11-13T16:39:27+01:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: Some(ReceiptType::Completa),
        consegna: Some("l.battistini@pec.it"),
        signing_time: "2018-11-13T15:39:27Z",
        to: &["l.battistini@pec.it"],
    },
    Expect {
        file: "aruba-2023-busta-trasporto.eml",
        tipo: Tipo::PostaCertificata,
        identificativo: "opec21010.20230818173714.75133.134.1.56@pec.aruba.it",
        msgid: "<RZLFE1$D00882600B2330420CAE7B3643F81CDD@pec.datamanagementitalia.it>",
        mittente: "sviluppo@pec.datamanagementitalia.it",
        destinatari: &["sviluppo@pec.datamanagementitalia.it"],
        oggetto: "[XDCR] xdcr_2022_02_00583.txt",
        data: "2023-08-18T17:37:14+02:00",
        gestore: "ARUBA PEC S.p.A.",
        ricevuta: Some(ReceiptType::Completa),
        consegna: None,
        signing_time: "2023-08-18T15:37:13Z",
        to: &["sviluppo@pec.datamanagementitalia.it"],
    },
    Expect {
        file: "sogei-2018-busta-trasporto-breve-1.eml",
        tipo: Tipo::PostaCertificata,
        identificativo: "opec288.20181208122618.17535.2665.1.3@pcert.sogei.it",
        msgid: "<4163125586355393.1544268377979@pec.fatturapa.it>",
        mittente: "sdi03@pec.fatturapa.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "Invio File 7339338 (SIMULAZIONE)",
        data: "2018-12-08T12:26:18+01:00",
        gestore: "Sogei SpA",
        ricevuta: Some(ReceiptType::Breve),
        consegna: None,
        signing_time: "2018-12-08T11:26:18Z",
        to: &["l.battistini@pec.it"],
    },
    Expect {
        file: "sogei-2018-busta-trasporto-breve-2.eml",
        tipo: Tipo::PostaCertificata,
        identificativo: "opec288.20181113164732.05177.8374.1.1@pcert.sogei.it",
        msgid: "<5168561142842364.1542124052746@pec.fatturapa.it>",
        mittente: "sdi03@pec.fatturapa.it",
        destinatari: &["l.battistini@pec.it"],
        oggetto: "Ricevuta di consegna 6782414 (SIMULAZIONE)",
        data: "2018-11-13T16:47:32+01:00",
        gestore: "Sogei SpA",
        ricevuta: Some(ReceiptType::Breve),
        consegna: None,
        signing_time: "2018-11-13T15:47:33Z",
        to: &["l.battistini@pec.it"],
    },
];

fn listing(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(format!("{FIXTURES}/{dir}"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_real_fixture_has_an_expectation() {
    let expected: BTreeSet<String> = EXPECT.iter().map(|e| e.file.to_string()).collect();
    assert_eq!(
        listing("real"),
        expected,
        "a real fixture without per-fixture assertions (or a missing one)"
    );
    assert_eq!(
        REAL.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        expected
    );
}

#[test]
fn every_real_fixture_is_genuine_at_its_signing_time_with_its_exact_daticert() {
    let index = index();
    for e in &EXPECT {
        let raw = fixture(&format!("real/{}", e.file));
        let signed_at =
            incoming::signing_time(&raw).unwrap_or_else(|| panic!("{}: no signingTime", e.file));
        assert_eq!(signed_at, utc(e.signing_time), "{}", e.file);
        let g = match incoming::verify(&raw, &index, &signed_at.fixed_offset()) {
            Verdict::Genuine(g) => g,
            Verdict::NotGenuine { reason, .. } => panic!("{}: {reason}", e.file),
        };
        let d = &g.daticert;
        let f = e.file;
        assert_eq!(d.tipo, e.tipo, "{f}");
        assert_eq!(d.errore, pecora::pec::Errore::Nessuno, "{f}");
        assert_eq!(d.identificativo, e.identificativo, "{f}");
        assert_eq!(d.msgid.as_deref(), Some(e.msgid), "{f}");
        assert_eq!(d.mittente, e.mittente, "{f}");
        assert_eq!(d.risposte, e.mittente, "{f}");
        let dest: Vec<(&str, RecipientType)> = d
            .destinatari
            .iter()
            .map(|r| (r.address.as_str(), r.kind))
            .collect();
        let want: Vec<(&str, RecipientType)> = e
            .destinatari
            .iter()
            .map(|a| (*a, RecipientType::Certificato))
            .collect();
        assert_eq!(dest, want, "{f}");
        assert_eq!(d.oggetto.as_deref(), Some(e.oggetto), "{f}");
        assert_eq!(d.data.to_rfc3339(), e.data, "{f}: data, with its zona");
        assert_eq!(d.gestore_emittente, e.gestore, "{f}");
        assert_eq!(d.ricevuta, e.ricevuta, "{f}");
        assert_eq!(d.consegna.as_deref(), e.consegna, "{f}");
        assert!(d.ricezione.is_empty() && d.errore_esteso.is_none(), "{f}");
        // Facts of the signer and of the signed postacert.eml.
        let domain = from_domain(&raw);
        assert!(
            g.provider.ends_with(&format!("({domain})")),
            "{f}: {}",
            g.provider
        );
        assert_eq!(g.mail_receipt, format!("servizio@{domain}"), "{f}");
        assert!(!g.virus, "{f}");
        assert_eq!(
            g.signer_der,
            cms_certificates(&raw).0.to_der().unwrap(),
            "{f}"
        );
        assert_eq!(g.to, e.to, "{f}");
        assert!(g.cc.is_empty(), "{f}");
        let envelope = e.tipo == Tipo::PostaCertificata;
        assert_eq!(
            g.postacert.is_some(),
            envelope || e.tipo == Tipo::AvvenutaConsegna,
            "{f}"
        );
        if envelope {
            assert_eq!(
                g.message_id, e.identificativo,
                "{f}: the envelope's Message-ID is the PEC identifier"
            );
        } else {
            assert_ne!(
                g.message_id, e.identificativo,
                "{f}: a notice has its own Message-ID"
            );
        }
    }
}

#[test]
fn every_real_fixture_is_refused_outside_its_certificate_validity() {
    let index = index();
    for f in REAL {
        let raw = fixture(&format!("real/{f}"));
        // Checked on arrival today, each signer certificate has long expired.
        let (claimed, r) = reason(incoming::verify(
            &raw,
            &index,
            &instant("2030-01-01T00:00:00+01:00"),
        ));
        assert!(claimed, "{f}");
        match r {
            Reason::CertificateExpired { at, not_after } => {
                assert_eq!(at, utc("2029-12-31T23:00:00Z"), "{f}");
                assert!(
                    not_after < at && not_after > utc("2016-01-01T00:00:00Z"),
                    "{f}: {not_after}"
                );
            }
            other => panic!("{f}: {other:?}"),
        }
        let (_, r) = reason(incoming::verify(
            &raw,
            &index,
            &instant("2010-01-01T00:00:00+01:00"),
        ));
        assert!(
            matches!(r, Reason::CertificateNotYetValid { .. }),
            "{f}: {r:?}"
        );
    }
}

#[test]
fn every_negative_fixture_is_refused_with_its_own_reason() {
    let index = index();
    type Check = fn(&Reason) -> bool;
    let expect: [(&str, Check); 9] = [
        (
            "redacted-accettazione-no-signature.eml",
            |r| matches!(r, Reason::NotSigned(m) if m.contains("no signature part")),
        ),
        (
            "redacted-errore-consegna-no-signature.eml",
            |r| matches!(r, Reason::NotSigned(m) if m.contains("no signature part")),
        ),
        (
            "redacted-accettazione-truncated-signature.eml",
            |r| matches!(r, Reason::MalformedSignature(m) if m.contains("base64")),
        ),
        (
            "redacted-errore-consegna-truncated-signature.eml",
            |r| matches!(r, Reason::MalformedSignature(m) if m.contains("base64")),
        ),
        (
            "redacted-avvenuta-consegna-broken-signature.eml",
            |r| matches!(r, Reason::MalformedSignature(m) if m.contains("base64")),
        ),
        (
            "redacted-busta-trasporto-broken-signature.eml",
            |r| matches!(r, Reason::MalformedSignature(m) if m.contains("base64")),
        ),
        ("sogei-2018-busta-one-byte-altered.eml", |r| {
            *r == Reason::BadSignature
        }),
        ("sogei-2018-busta-attachment-replaced.eml", |r| {
            *r == Reason::BadSignature
        }),
        ("sogei-2019-busta-anonymised-no-daticert.eml", |r| {
            *r == Reason::BadSignature
        }),
    ];
    assert_eq!(
        listing("negative"),
        expect.iter().map(|(f, _)| f.to_string()).collect(),
        "a negative fixture without an expected reason"
    );
    for (f, check) in expect {
        let raw = fixture(&format!("negative/{f}"));
        // At the instant the messages claim: a time check can never be what refuses them.
        let at = instant("2018-12-08T12:26:18+01:00");
        let (claimed, r) = reason(incoming::verify(&raw, &index, &at));
        assert!(claimed, "{f}: carries PEC headers");
        assert!(check(&r), "{f}: {r:?}");
    }
}

/// A real fixture with one unsigned outer header line replaced (the signature stays valid).
fn with_header(file: &str, old: &str, new: &str) -> Vec<u8> {
    let raw = fixture(&format!("real/{file}"));
    let crlf = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(usize::MAX);
    let lf = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(usize::MAX);
    let head_end = crlf.min(lf);
    let at = raw
        .windows(old.len())
        .position(|w| w == old.as_bytes())
        .unwrap_or_else(|| panic!("{file}: no {old:?}"));
    assert!(at < head_end, "{file}: {old:?} is not in the outer header");
    [&raw[..at], new.as_bytes(), &raw[at + old.len()..]].concat()
}

fn verdict_of(raw: &[u8]) -> (bool, Reason) {
    reason(incoming::verify(raw, &index(), &at_signing_time(raw)))
}

fn mismatch(raw: &[u8]) -> &'static str {
    match verdict_of(raw) {
        (true, Reason::HeaderMismatch { header, .. }) => header,
        other => panic!("{other:?}"),
    }
}

#[test]
fn outer_headers_must_agree_with_the_signed_daticert() {
    let acc = "aruba-2014-accettazione.eml";
    let busta = "sogei-2018-busta-trasporto-breve-1.eml";
    // The untouched messages are genuine (so each refusal below is the edit's doing).
    for f in [acc, busta] {
        let raw = fixture(&format!("real/{f}"));
        assert!(
            matches!(
                incoming::verify(&raw, &index(), &at_signing_time(&raw)),
                Verdict::Genuine(_)
            ),
            "{f}"
        );
    }
    assert_eq!(
        mismatch(&with_header(
            acc,
            "X-Ricevuta: accettazione",
            "X-Ricevuta: avvenuta-consegna"
        )),
        "X-Ricevuta"
    );
    assert_eq!(
        mismatch(&with_header(
            acc,
            "X-Ricevuta: accettazione",
            "X-Trasporto: posta-certificata"
        )),
        "X-Trasporto"
    );
    assert_eq!(
        mismatch(&with_header(
            busta,
            "X-Trasporto: posta-certificata",
            "X-Ricevuta: accettazione"
        )),
        "X-Ricevuta"
    );
    assert_eq!(
        mismatch(&with_header(
            busta,
            "X-Trasporto: posta-certificata",
            "X-Trasporto: errore"
        )),
        "X-Trasporto"
    );
    assert_eq!(
        mismatch(&with_header(
            acc,
            "Subject: ACCETTAZIONE: test private",
            "Subject: ACCETTAZIONE: test public"
        )),
        "Subject"
    );
    assert_eq!(
        mismatch(&with_header(
            acc,
            "Subject: ACCETTAZIONE: test",
            "Subject: CONSEGNA: test"
        )),
        "Subject"
    );
    assert_eq!(
        mismatch(&with_header(
            busta,
            "X-Riferimento-Message-ID: <4163125586",
            "X-Riferimento-Message-ID: <4163125587"
        )),
        "X-Riferimento-Message-ID"
    );
    assert_eq!(
        mismatch(&with_header(
            busta,
            "Message-ID: <opec288.20181208122618.17535.2665.1.3@",
            "Message-ID: <opec288.20181208122618.17535.2665.1.4@"
        )),
        "Message-ID"
    );
    assert_eq!(
        mismatch(&with_header(
            busta,
            "X-Tiporicevuta: breve",
            "X-Tiporicevuta: completa"
        )),
        "X-TipoRicevuta"
    );
    assert_eq!(
        mismatch(&with_header(
            acc,
            "X-Ricevuta: accettazione",
            "X-Ricevuta: accettazione\r\nX-VerificaSicurezza: errore"
        )),
        "X-VerificaSicurezza"
    );
    // Harmless differences are not disagreements: case of the token, folding of the Subject.
    let folded = with_header(
        acc,
        "Subject: ACCETTAZIONE: test private",
        "Subject: ACCETTAZIONE: test\r\n private",
    );
    assert!(matches!(
        incoming::verify(&folded, &index(), &at_signing_time(&folded)),
        Verdict::Genuine(_)
    ));
    let upper = with_header(acc, "X-Ricevuta: accettazione", "X-Ricevuta: ACCETTAZIONE");
    assert!(matches!(
        incoming::verify(&upper, &index(), &at_signing_time(&upper)),
        Verdict::Genuine(_)
    ));

    // A second X-Ricevuta (a mail reader might show either) and a second From.
    let twice = with_header(
        acc,
        "X-Ricevuta: accettazione",
        "X-Ricevuta: accettazione\r\nX-Ricevuta: avvenuta-consegna",
    );
    assert_eq!(
        verdict_of(&twice),
        (
            true,
            Reason::DuplicateHeader {
                header: "X-Ricevuta",
                count: 2
            }
        )
    );
    // Without any PEC header the message is ordinary mail, not a forgery.
    let plain = with_header(acc, "X-Ricevuta: accettazione", "X-Mailer: x");
    assert_eq!(verdict_of(&plain), (false, Reason::OrdinaryMail));
}

/// Issue 13 item 9: To, Cc, Reply-To and Date of the outer header must agree with the
/// signed content as real providers write them, and a look-alike letter is an edit.
#[test]
fn to_cc_reply_to_date_and_subject_look_alikes_must_agree_too() {
    let busta = "sogei-2018-busta-trasporto-breve-1.eml";
    let cons = "aruba-2018-avvenuta-consegna.eml";
    let genuine = |raw: &[u8]| {
        matches!(
            incoming::verify(raw, &index(), &at_signing_time(raw)),
            Verdict::Genuine(_)
        )
    };
    // Harmless: another display name, the same instant written in another zone.
    assert!(genuine(&with_header(
        busta,
        "\nTo: l.battistini@pec.it",
        "\nTo: \"Lorenzo B.\" <L.Battistini@pec.it>"
    )));
    assert!(genuine(&with_header(
        busta,
        "Date: Sat, 8 Dec 2018 12:26:18 +0100",
        "Date: Sat, 8 Dec 2018 11:26:18 +0000"
    )));
    let cases: [(&str, &str, &str, &str); 12] = [
        // A Cyrillic а (U+0430) in the envelope's To, in its Reply-To, in a notice's To.
        (busta, "\nTo: l.battistini@pec.it", "\nTo: l.b\u{430}ttistini@pec.it", "To"),
        (busta, "\nTo: l.battistini@pec.it", "\nTo: l.battistini@pec.it, giulia.neri@pec.it", "To"),
        (busta, "\nTo: l.battistini@pec.it", "\nTo: l.battistini@pec.it\r\nCc: giulia.neri@pec.it", "Cc"),
        (busta, "Reply-To: sdi03@pec.fatturapa.it", "Reply-To: sdi03@pec.fatturap\u{430}.it", "Reply-To"),
        (busta, "Reply-To: sdi03@pec.fatturapa.it", "Reply-To: mallory@evil.example", "Reply-To"),
        (busta, "Date: Sat, 8 Dec 2018 12:26:18 +0100", "Date: Sat, 8 Dec 2018 12:26:18 +0000", "Date"),
        (busta, "Date: Sat, 8 Dec 2018 12:26:18 +0100", "Date: yesterday", "Date"),
        (cons, "\nTo: l.battistini@pec.it", "\nTo: l.b\u{430}ttistini@pec.it", "To"),
        (cons, "\nTo: l.battistini@pec.it", "\nTo: l.battistini@pec.it\r\nCc: giulia.neri@pec.it", "Cc"),
        (cons, "Date: Tue, 13 Nov 2018 16:39:27 +0100", "Date: Tue, 13 Nov 2018 16:39:28 +0100", "Date"),
        // Subject: a Cyrillic е (U+0435) for e; a word added in full-width letters.
        (
            busta,
            "Subject: POSTA CERTIFICATA: Invio File",
            "Subject: POSTA CERTIFICATA: Invio Fil\u{435}",
            "Subject",
        ),
        (
            cons,
            "Subject: CONSEGNA: IT03339130126_00009.xml",
            "Subject: =?UTF-8?Q?CONSEGNA:_IT03339130126=5F00009.xml_=EF=BC=AE=EF=BC=AF?=",
            "Subject",
        ),
    ];
    for (file, old, new, header) in cases {
        assert_eq!(mismatch(&with_header(file, old, new)), header, "{file}: {new}");
    }
    // A receipt reproduced from the registry (decisions.md 11) is dated when it was copied:
    // later than its daticert, never earlier, never after it arrived.
    let copy = |date: &str| {
        with_header(
            cons,
            "Date: Tue, 13 Nov 2018 16:39:27 +0100",
            &format!("Date: {date}\r\nX-Pecora-Copia-Di: <opec288.20181113163927.28978.421.1.413.72@pec.aruba.it>"),
        )
    };
    assert!(genuine(&copy("Tue, 13 Nov 2018 16:40:27 +0100")));
    assert_eq!(mismatch(&copy("Tue, 13 Nov 2018 16:39:26 +0100")), "Date");
    assert_eq!(mismatch(&copy("Wed, 14 Nov 2018 16:39:27 +0100")), "Date");
    let twice = with_header(busta, "\nTo: l.battistini@pec.it", "\nTo: l.battistini@pec.it\r\nTo: giulia.neri@pec.it");
    assert_eq!(
        verdict_of(&twice),
        (true, Reason::DuplicateHeader { header: "To", count: 2 })
    );
}

#[test]
fn the_from_domain_must_belong_to_the_signer() {
    let busta = "sogei-2018-busta-trasporto-breve-1.eml";
    let other = with_header(
        busta,
        "<posta-certificata@pcert.sogei.it>",
        "<posta-certificata@pec.aruba.it>",
    );
    match verdict_of(&other) {
        (true, Reason::FromDomainNotManaged { domain, provider }) => {
            assert_eq!(domain, "pec.aruba.it");
            assert!(provider.ends_with("(pcert.sogei.it)"), "{provider}");
        }
        v => panic!("{v:?}"),
    }
    let two = with_header(
        busta,
        "<posta-certificata@pcert.sogei.it>",
        "<posta-certificata@pcert.sogei.it>, <x@evil.example>",
    );
    assert_eq!(verdict_of(&two), (true, Reason::FromNotSingleAddress));
    let dup = with_header(
        busta,
        "From: \"Per conto di",
        "From: <posta-certificata@pcert.sogei.it>\r\nFrom: \"Per conto di",
    );
    assert_eq!(
        verdict_of(&dup),
        (
            true,
            Reason::DuplicateHeader {
                header: "From",
                count: 2
            }
        )
    );
}

#[test]
fn the_signer_must_be_the_certificate_the_index_lists() {
    let f = "aruba-2018-accettazione.eml";
    let raw = fixture(&format!("real/{f}"));
    let at = at_signing_time(&raw);
    let der = cms_certificates(&raw).0.to_der().unwrap();
    let sha1 = hex::encode_upper(openssl::sha::sha1(&der));
    // Not listed at all.
    let other = ProviderIndex::from_ldif(&incoming::ldif_entry(
        "Other",
        &[b"not this one"],
        "s@o.it",
        &["pec.aruba.it"],
    ))
    .unwrap();
    assert_eq!(
        reason(incoming::verify(&raw, &other, &at)),
        (true, Reason::UnknownSigner { sha1: sha1.clone() })
    );
    // The hash listed, with another certificate in providerCertificate.
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b"another certificate")
    };
    let forged = ProviderIndex::from_ldif(&format!(
        "dn: providerName=Aruba,o=postacert\nproviderName: Aruba\nproviderCertificateHash: {}\nproviderCertificate;binary:: {b64}\nmailReceipt: s@pec.aruba.it\nmanagedDomains: pec.aruba.it\n",
        sha1.to_lowercase()
    ))
    .unwrap();
    assert_eq!(
        reason(incoming::verify(&raw, &forged, &at)),
        (
            true,
            Reason::SignerNotMatchingIndex {
                provider: "Aruba".into(),
                sha1
            }
        )
    );
}

#[test]
fn a_ca_bundle_checks_the_real_chains_at_the_signing_time() {
    // aruba-2018 is signed under "AgID CA1", aruba-2014 under "DigitPA CA1": both
    // intermediates travel inside the CMS and serve as trust anchors (partial chain).
    let agid = cms_certificates(&fixture("real/aruba-2018-accettazione.eml")).1;
    let digitpa = cms_certificates(&fixture("real/aruba-2014-accettazione.eml")).1;
    assert_eq!(agid.len(), 1);
    assert_eq!(digitpa.len(), 1);
    let trust = |ca: &X509| {
        let mut t = TrustAnchors::default();
        t.add_ca_bundle(&ca.to_pem().unwrap()).unwrap();
        index().with_trust(t)
    };
    let with_agid = trust(&agid[0]);
    let with_digitpa = trust(&digitpa[0]);
    for f in [
        "aruba-2018-accettazione.eml",
        "aruba-2023-busta-trasporto.eml",
        "sogei-2018-busta-trasporto-breve-1.eml",
    ] {
        let raw = fixture(&format!("real/{f}"));
        let at = at_signing_time(&raw);
        assert!(
            matches!(incoming::verify(&raw, &with_agid, &at), Verdict::Genuine(_)),
            "{f}"
        );
        let (claimed, r) = reason(incoming::verify(&raw, &with_digitpa, &at));
        assert!(
            claimed
                && matches!(&r, Reason::ChainInvalid { detail, .. } if detail.contains("issuer")),
            "{f}: {r:?}"
        );
    }
    let raw = fixture("real/aruba-2014-busta-trasporto-1.eml");
    let at = at_signing_time(&raw);
    assert!(matches!(
        incoming::verify(&raw, &with_digitpa, &at),
        Verdict::Genuine(_)
    ));
    assert!(matches!(
        reason(incoming::verify(&raw, &with_agid, &at)).1,
        Reason::ChainInvalid { .. }
    ));
}

/// `pecora verify` checks an archived message at its CMS signingTime and says so.
#[test]
fn pecora_verify_checks_archived_messages_at_the_signing_time() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("index.ldif");
    std::fs::write(&idx, index_text()).unwrap();
    let file = format!("{FIXTURES}/real/aruba-2014-avvenuta-consegna.eml");
    let negative = format!("{FIXTURES}/negative/sogei-2018-busta-one-byte-altered.eml");
    let (code, lines, err) = cli::verify_json(&[OsStr::new("--index"), idx.as_os_str(), OsStr::new(&file), OsStr::new(&negative)]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["genuine"], true, "{}", lines[0]);
    assert_eq!(lines[0]["checked_at_source"], "signing-time");
    assert_eq!(lines[0]["checked_at"], "2014-11-14T18:26:32+01:00");
    assert_eq!(lines[0]["kind"], "avvenuta-consegna");
    assert_eq!(lines[1]["genuine"], false);
    assert_eq!(lines[1]["reason_code"], "bad-signature");
    assert_eq!(
        lines[1]["reason"],
        "the signature does not match the signed content"
    );
    assert_eq!(lines[1]["checked_at_source"], "signing-time");
    assert_eq!(lines[1]["checked_at"], "2018-12-08T12:26:18+01:00");

    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .args(["verify", "--index"])
        .arg(&idx)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("certificate checked at 14/11/2014 18:26:32 +0100 (the CMS signingTime of the signature)"), "{text}");
    assert!(text.contains("VERDICT: GENUINE PEC"), "{text}");
}

/// decisions.md 23 in the verifier itself (the reception point and `pecora verify` alike): a
/// real CONSEGNA counts only from the provider that manages the mailbox it certifies. With
/// its signer listed for its own domain only, the same bytes are no receipt.
#[test]
fn a_real_receipt_counts_only_from_the_recipients_provider() {
    let raw = fixture("real/aruba-2014-avvenuta-consegna.eml");
    let at = at_signing_time(&raw);
    assert!(matches!(incoming::verify(&raw, &index(), &at), Verdict::Genuine(_)));
    let der = cms_certificates(&raw).0.to_der().unwrap();
    let own_domain_only = ProviderIndex::from_ldif(&format!(
        "version: 1\ndn: o=postacert\nobjectclass: top\no: postacert\n\n{}",
        incoming::ldif_entry("Aruba", &[&der], "servizio@pec.aruba.it", &[&from_domain(&raw)])
    ))
    .unwrap();
    match incoming::verify(&raw, &own_domain_only, &at) {
        Verdict::NotGenuine { claimed, reason } => {
            assert!(claimed);
            assert_eq!(reason.code(), "not-recipients-provider", "{reason}");
            assert!(reason.to_string().contains("thinkstudio@pec.it"), "{reason}");
        }
        Verdict::Genuine(_) => panic!("a receipt from a provider that does not manage pec.it settled it"),
    }
}
