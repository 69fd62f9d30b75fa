//! The verifier with a PKI generated here: a root CA, an intermediate ("CA PEC di Prova",
//! like AgID CA1), a provider certificate, a second one that the intermediate revokes, and
//! a stranger CA. Covers the optional CA bundle and CRLs (decisions.md 15), the signed
//! `.p7m` index (pec-format.md §6) loaded by `Engine::load`, `pecora verify`'s trust
//! options, and the reasons that need a signature over content of our choosing.

use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{AuthorityKeyIdentifier, CrlNumber};
use openssl::x509::{X509, X509Crl, X509CrlBuilder, X509RevokedBuilder};
use pecora::pec::build::{self, Notice, NoticeParams, Original, Provider, Transaction};
use pecora::pec::incoming::{
    self, DaticertError, IndexError, ProviderIndex, Reason, TrustAnchors, Verdict,
};
use pecora::pec::sign::Signer;
use pecora::pec::{Errore, Instant, ReceiptType, Recipient, RecipientType, Tipo};

#[path = "common/certs.rs"]
mod certs;
#[path = "common/cli.rs"]
mod cli;

use std::ffi::OsStr;

use certs::{Ca, serial};

const DOMAIN: &str = "pec.prova.test";

fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 10, 0, 0).unwrap()
}

fn rome(at: DateTime<Utc>) -> Instant {
    pecora::pec::types::to_zone(at, chrono_tz::Europe::Rome)
}

/// A CA certificate valid from 2020 to 2040, self-signed when `issuer` is None.
fn ca(cn: &str, issuer: Option<&Ca>, serial_no: u32) -> Ca {
    certs::ca(cn, issuer, serial_no, t(2020, 1, 1).timestamp(), t(2040, 1, 1).timestamp())
}

/// A provider signing certificate with the profile of pec-format.md §7.2.
fn leaf(
    issuer: &Ca,
    serial_no: u32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (X509, PKey<Private>) {
    certs::leaf(
        issuer,
        serial_no,
        &format!("Posta Certificata Prova {serial_no}"),
        &format!("posta-certificata@{DOMAIN}"),
        from.timestamp(),
        to.timestamp(),
    )
}

/// A CRL of `issuer`'s name, signed with `signing_key`, revoking `(serial, date)` pairs.
fn crl(
    issuer: &X509,
    signing_key: &PKey<Private>,
    last: DateTime<Utc>,
    next: DateTime<Utc>,
    revoked: &[(u32, DateTime<Utc>)],
) -> X509Crl {
    let mut b = X509CrlBuilder::new().unwrap();
    b.set_issuer_name(issuer.subject_name()).unwrap();
    b.set_last_update(&Asn1Time::from_unix(last.timestamp()).unwrap())
        .unwrap();
    b.set_next_update(&Asn1Time::from_unix(next.timestamp()).unwrap())
        .unwrap();
    let dummy = X509::builder().unwrap();
    b.append_extension(
        AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&dummy.x509v3_context(Some(issuer), None))
            .unwrap(),
    )
    .unwrap();
    b.append_extension(
        CrlNumber::new(BigNum::from_u32(1).unwrap())
            .unwrap()
            .build()
            .unwrap(),
    )
    .unwrap();
    for (s, when) in revoked {
        let mut r = X509RevokedBuilder::new().unwrap();
        r.set_serial_number(&serial(*s)).unwrap();
        r.set_revocation_date(&Asn1Time::from_unix(when.timestamp()).unwrap())
            .unwrap();
        b.add_revoked(r.build()).unwrap();
    }
    b.sign(signing_key, MessageDigest::sha256()).unwrap();
    b.build().unwrap()
}

const REVOKED_ON: (i32, u32, u32) = (2025, 6, 1);

struct Pki {
    root: Ca,
    inter: Ca,
    stranger: Ca,
    good: (X509, PKey<Private>),
    revoked: (X509, PKey<Private>),
    /// The intermediate's CRL: revokes serial 3 on REVOKED_ON; current 2025-08-01..2025-10-01.
    crl_pem: Vec<u8>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = ca("Radice di Prova", None, 1);
        let inter = ca("CA PEC di Prova", Some(&root), 2);
        let stranger = ca("CA Estranea", None, 9);
        let good = leaf(&inter, 2, t(2024, 1, 1), t(2039, 1, 1));
        let revoked = leaf(&inter, 3, t(2024, 1, 1), t(2039, 1, 1));
        let (y, m, d) = REVOKED_ON;
        let crl_pem = crl(
            &inter.cert,
            &inter.key,
            t(2025, 8, 1),
            t(2025, 10, 1),
            &[(3, t(y, m, d))],
        )
        .to_pem()
        .unwrap();
        Pki {
            root,
            inter,
            stranger,
            good,
            revoked,
            crl_pem,
        }
    })
}

fn signer(cert: &(X509, PKey<Private>)) -> Signer {
    Signer::new(
        cert.0.clone(),
        cert.1.clone(),
        vec![pki().inter.cert.clone()],
    )
    .unwrap()
}

fn index_ldif() -> String {
    let p = pki();
    incoming::ldif_entry(
        "Gestore di Prova S.p.A.",
        &[&p.good.0.to_der().unwrap(), &p.revoked.0.to_der().unwrap()],
        &format!("servizio@{DOMAIN}"),
        // The recipients' domain too: the receipts these tests build certify mailboxes
        // there, and a receipt counts only from the provider that manages them (decisions.md
        // 23).
        &[DOMAIN, "pec.altro.test"],
    )
}

fn index(trust: TrustAnchors) -> ProviderIndex {
    ProviderIndex::from_ldif(&index_ldif())
        .unwrap()
        .with_trust(trust)
}

fn anchors(cas: &[&X509], crls: &[&[u8]]) -> TrustAnchors {
    let mut t = TrustAnchors::default();
    for c in cas {
        t.add_ca_bundle(&c.to_pem().unwrap()).unwrap();
    }
    for c in crls {
        t.add_crls(c).unwrap();
    }
    t
}

fn provider() -> Provider {
    Provider {
        name: "Gestore di Prova S.p.A.".into(),
        domain: DOMAIN.into(),
        system_address: format!("posta-certificata@{DOMAIN}"),
    }
}

fn transaction(at: DateTime<Utc>) -> Transaction {
    Transaction {
        instant: rome(at),
        identificativo: format!("opec.{}.1@{DOMAIN}", at.timestamp()),
        client_msgid: "<m1@client.example>".into(),
        sender: format!("mario.rossi@{DOMAIN}"),
        to: vec![Recipient {
            address: "anna@pec.altro.test".into(),
            kind: RecipientType::Certificato,
        }],
        cc: vec![],
        reply_to: None,
        subject: Some("Fattura però n. 12".into()),
        receipt: Some(ReceiptType::Breve),
    }
}

const ORIGINAL: &[u8] = b"From: mario.rossi@pec.prova.test\r\nTo: anna@pec.altro.test\r\nSubject: =?UTF-8?Q?Fattura_per=C3=B2_n=2E_12?=\r\nMessage-ID: <m1@client.example>\r\n\r\nCiao\r\n";

/// A transport envelope signed by `cert` at `at`.
fn envelope(cert: &(X509, PKey<Private>), at: DateTime<Utc>) -> Vec<u8> {
    build::build_envelope(
        &provider(),
        &transaction(at),
        Original::Raw(ORIGINAL),
        b"seed",
        &signer(cert),
    )
    .unwrap()
    .to_bytes()
}

fn verdict(
    raw: &[u8],
    index: &ProviderIndex,
    at: DateTime<Utc>,
) -> Result<Box<incoming::GenuinePec>, (bool, Reason)> {
    match incoming::verify(raw, index, &rome(at)) {
        Verdict::Genuine(g) => Ok(g),
        Verdict::NotGenuine { claimed, reason } => Err((claimed, reason)),
    }
}

fn refused(raw: &[u8], index: &ProviderIndex, at: DateTime<Utc>) -> Reason {
    match verdict(raw, index, at) {
        Ok(g) => panic!("unexpectedly genuine: {}", g.daticert.identificativo),
        Err((claimed, r)) => {
            assert!(claimed);
            r
        }
    }
}

#[test]
fn our_own_messages_verify_with_every_tipo_and_their_facts() {
    let at = t(2025, 9, 1);
    let idx = index(anchors(&[&pki().root.cert], &[&pki().crl_pem]));
    let env = envelope(&pki().good, at);
    let g = verdict(&env, &idx, at).unwrap();
    assert_eq!(g.daticert.tipo, Tipo::PostaCertificata);
    assert_eq!(g.daticert.ricevuta, Some(ReceiptType::Breve));
    assert_eq!(g.daticert.oggetto.as_deref(), Some("Fattura però n. 12"));
    assert_eq!(g.provider, "Gestore di Prova S.p.A.");
    assert_eq!(g.to, ["anna@pec.altro.test"]);
    assert!(g.postacert.is_some() && !g.virus);
    let postacert = g.postacert.clone().unwrap();
    let tx = transaction(at);
    let recv = vec!["anna@pec.altro.test".to_string()];
    // Presa in carico and rilevazione virus go to the sender provider's service mailbox
    // (pec-format.md §1.4), the index's mailReceipt for mario.rossi's domain.
    let notices: Vec<(Notice<'_>, Tipo, bool)> = vec![
        (Notice::Accettazione, Tipo::Accettazione, false),
        (
            Notice::NonAccettazione {
                errore_esteso: "formato",
            },
            Tipo::NonAccettazione,
            false,
        ),
        (
            Notice::NonAccettazioneVirus {
                errore_esteso: "virus",
            },
            Tipo::NonAccettazione,
            true,
        ),
        (
            Notice::PresaInCarico {
                ricezione: &recv,
                mail_receipt: "servizio@pec.prova.test",
            },
            Tipo::PresaInCarico,
            false,
        ),
        (
            Notice::AvvenutaConsegna {
                consegna: "anna@pec.altro.test",
                variant: ReceiptType::Completa,
                postacert: Some(&postacert),
            },
            Tipo::AvvenutaConsegna,
            false,
        ),
        (
            Notice::AvvenutaConsegna {
                consegna: "anna@pec.altro.test",
                variant: ReceiptType::Breve,
                postacert: Some(&postacert),
            },
            Tipo::AvvenutaConsegna,
            false,
        ),
        (
            Notice::ErroreConsegna {
                consegna: "anna@pec.altro.test",
                errore: Errore::NoDest,
                errore_esteso: "5.1.1",
            },
            Tipo::ErroreConsegna,
            false,
        ),
        (
            Notice::ErroreConsegnaVirus {
                consegna: "anna@pec.altro.test",
                errore_esteso: "virus",
            },
            Tipo::ErroreConsegna,
            true,
        ),
        (
            Notice::Preavviso {
                consegna: "anna@pec.altro.test",
                deadline: build::Deadline::H12,
                errore_esteso: None,
            },
            Tipo::PreavvisoErroreConsegna,
            false,
        ),
        (
            Notice::RilevazioneVirus {
                consegna: "anna@pec.altro.test",
                mail_receipt: "servizio@pec.prova.test",
                errore_esteso: "virus",
            },
            Tipo::RilevazioneVirus,
            true,
        ),
    ];
    for (i, (n, tipo, virus)) in notices.iter().enumerate() {
        let id = format!("notice{i}@{DOMAIN}");
        let params = NoticeParams {
            instant: rome(at),
            message_id: &id,
            seed: b"seed",
        };
        let raw = build::build_notice(&provider(), &tx, &params, n, &signer(&pki().good))
            .unwrap()
            .to_bytes();
        let g = verdict(&raw, &idx, at).unwrap_or_else(|e| panic!("{tipo}: {e:?}"));
        assert_eq!((g.daticert.tipo, g.virus), (*tipo, *virus), "{tipo}");
        assert_eq!(g.message_id, id);
        assert_eq!(g.daticert.identificativo, tx.identificativo);
    }
}

#[test]
fn the_chain_must_validate_to_the_ca_bundle() {
    let p = pki();
    let at = t(2025, 9, 1);
    let raw = envelope(&p.good, at);
    assert!(
        verdict(&raw, &index(TrustAnchors::default()), at).is_ok(),
        "no bundle: no chain check"
    );
    assert!(
        verdict(&raw, &index(anchors(&[&p.root.cert], &[])), at).is_ok(),
        "root, intermediate from the CMS"
    );
    assert!(
        verdict(&raw, &index(anchors(&[&p.inter.cert], &[])), at).is_ok(),
        "the intermediate alone is an anchor"
    );
    match refused(&raw, &index(anchors(&[&p.stranger.cert], &[])), at) {
        Reason::ChainInvalid { at: when, detail } => {
            assert_eq!(when, at);
            assert!(detail.contains("issuer"), "{detail}");
        }
        r => panic!("{r:?}"),
    }
    // A signer outside its validity period at arrival, with or without a bundle.
    for trust in [TrustAnchors::default(), anchors(&[&p.root.cert], &[])] {
        assert!(matches!(
            refused(&raw, &index(trust.clone()), t(2023, 6, 1)),
            Reason::CertificateNotYetValid { .. }
        ));
        assert!(matches!(
            refused(&raw, &index(trust), t(2039, 6, 1)),
            Reason::CertificateExpired { .. }
        ));
    }
    // A signer the stranger CA issued, listed in the index: the index alone is not enough.
    let rogue = leaf(&p.stranger, 7, t(2024, 1, 1), t(2030, 1, 1));
    let raw = build::build_envelope(
        &provider(),
        &transaction(at),
        Original::Raw(ORIGINAL),
        b"seed",
        &Signer::new(rogue.0.clone(), rogue.1.clone(), vec![]).unwrap(),
    )
    .unwrap()
    .to_bytes();
    let listed = ProviderIndex::from_ldif(&incoming::ldif_entry(
        "Rogue",
        &[&rogue.0.to_der().unwrap()],
        "s@x.it",
        &[DOMAIN],
    ))
    .unwrap();
    assert!(verdict(&raw, &listed, at).is_ok());
    assert!(matches!(
        refused(&raw, &listed.with_trust(anchors(&[&p.root.cert], &[])), at),
        Reason::ChainInvalid { .. }
    ));
}

#[test]
fn crls_revoke_from_the_revocation_date_on() {
    let p = pki();
    let (y, m, d) = REVOKED_ON;
    let revoked_on = t(y, m, d);
    let with_crl = index(anchors(&[&p.root.cert], &[&p.crl_pem]));
    let after = t(2025, 9, 1);
    // Arrival after the revocation.
    match refused(&envelope(&p.revoked, after), &with_crl, after) {
        Reason::Revoked {
            subject,
            serial,
            since,
        } => {
            assert!(subject.contains("Posta Certificata Prova 3"), "{subject}");
            assert_eq!(serial, "03");
            assert_eq!(since, revoked_on);
        }
        r => panic!("{r:?}"),
    }
    // The good certificate passes the same CRL; without CRLs the revoked one passes too.
    assert!(verdict(&envelope(&p.good, after), &with_crl, after).is_ok());
    assert!(
        verdict(
            &envelope(&p.revoked, after),
            &index(anchors(&[&p.root.cert], &[])),
            after
        )
        .is_ok()
    );
    // Signed and checked before the revocation (an archived message): still genuine.
    let before = t(2025, 1, 15);
    assert!(verdict(&envelope(&p.revoked, before), &with_crl, before).is_ok());
    // CRLs without a CA bundle are trusted as configured files.
    assert!(matches!(
        refused(
            &envelope(&p.revoked, after),
            &index(anchors(&[], &[&p.crl_pem])),
            after
        ),
        Reason::Revoked { .. }
    ));
}

#[test]
fn revocation_that_cannot_be_checked_is_a_refusal() {
    let p = pki();
    let at = t(2025, 9, 1);
    let raw = envelope(&p.good, at);
    // Only the stranger's CRL: nothing covers the signer's issuer.
    let strangers = crl(
        &p.stranger.cert,
        &p.stranger.key,
        t(2025, 8, 1),
        t(2025, 10, 1),
        &[],
    )
    .to_pem()
    .unwrap();
    match refused(&raw, &index(anchors(&[&p.root.cert], &[&strangers])), at) {
        Reason::RevocationUnknown { issuer } => {
            assert!(issuer.contains("CA PEC di Prova"), "{issuer}")
        }
        r => panic!("{r:?}"),
    }
    // A CRL in the intermediate's name but signed by another key is not the intermediate's.
    let forged = crl(
        &p.inter.cert,
        &p.stranger.key,
        t(2025, 8, 1),
        t(2025, 10, 1),
        &[],
    )
    .to_pem()
    .unwrap();
    assert!(matches!(
        refused(&raw, &index(anchors(&[&p.root.cert], &[&forged])), at),
        Reason::RevocationUnknown { .. }
    ));
    // The CRL was superseded (nextUpdate 2025-10-01) before the arrival.
    let late = t(2025, 11, 1);
    let raw = envelope(&p.good, late);
    match refused(&raw, &index(anchors(&[&p.root.cert], &[&p.crl_pem])), late) {
        Reason::CrlOutOfDate {
            issuer,
            at,
            next_update,
        } => {
            assert!(issuer.contains("CA PEC di Prova"));
            assert_eq!(at, late);
            assert_eq!(next_update, t(2025, 10, 1));
        }
        r => panic!("{r:?}"),
    }
    // Two CRLs in one PEM file: the current one counts.
    let newer = crl(
        &p.inter.cert,
        &p.inter.key,
        t(2025, 10, 1),
        t(2025, 12, 1),
        &[],
    )
    .to_pem()
    .unwrap();
    let both = [p.crl_pem.clone(), newer].concat();
    let mut trust = anchors(&[&p.root.cert], &[]);
    trust.add_crls(&both).unwrap();
    assert_eq!(trust.crls.len(), 2);
    assert!(verdict(&raw, &index(trust), late).is_ok());
    // DER works as well.
    let mut trust = anchors(&[&p.root.cert], &[]);
    trust
        .add_crls(&X509Crl::from_pem(&p.crl_pem).unwrap().to_der().unwrap())
        .unwrap();
    assert!(matches!(
        refused(
            &envelope(&p.revoked, t(2025, 9, 1)),
            &index(trust),
            t(2025, 9, 1)
        ),
        Reason::Revoked { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Content of our choosing
// ---------------------------------------------------------------------------------------

const OUTER: &str = "From: \"Per conto di: mario.rossi@pec.prova.test\" <posta-certificata@pec.prova.test>\r\n\
To: anna@pec.altro.test\r\nSubject: POSTA CERTIFICATA: Prova\r\nMessage-ID: <id1@pec.prova.test>\r\n\
X-Riferimento-Message-ID: <m1@client.example>\r\nX-Trasporto: posta-certificata\r\nMIME-Version: 1.0\r\n";

const DATICERT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<postacert tipo=\"posta-certificata\" errore=\"nessuno\">\n\
<intestazione><mittente>mario.rossi@pec.prova.test</mittente><destinatari tipo=\"certificato\">anna@pec.altro.test</destinatari>\
<risposte>mario.rossi@pec.prova.test</risposte><oggetto>Prova</oggetto></intestazione>\n<dati><gestore-emittente>Gestore di Prova S.p.A.</gestore-emittente>\
<data zona=\"+0200\"><giorno>01/09/2025</giorno><ora>12:00:00</ora></data><identificativo>id1@pec.prova.test</identificativo>\
<msgid>&lt;m1@client.example&gt;</msgid><ricevuta tipo=\"completa\"/></dati></postacert>\n";

fn part_daticert(xml: &str) -> String {
    format!(
        "--mix\r\nContent-Type: application/xml; name=\"daticert.xml\"\r\nContent-Disposition: inline; filename=\"daticert.xml\"\r\n\r\n{xml}\r\n"
    )
}

fn part_postacert(inner_extra: &str) -> String {
    format!(
        "--mix\r\nContent-Type: message/rfc822; name=\"postacert.eml\"\r\nContent-Disposition: inline; filename=\"postacert.eml\"\r\n\r\n\
         From: mario.rossi@pec.prova.test\r\nTo: anna@pec.altro.test\r\nSubject: Prova\r\n{inner_extra}\r\nCiao\r\n"
    )
}

/// A multipart/signed message with `parts` (each starting with `--mix`) as signed content.
fn signed(parts: &[String], at: DateTime<Utc>) -> Vec<u8> {
    let mut content = String::from(
        "Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\nMessaggio di posta certificata\r\n",
    );
    for p in parts {
        content.push_str(p);
    }
    content.push_str("--mix--\r\n");
    let content = content.replace("\r\n", "\n").replace('\n', "\r\n");
    let (ct, body) = pecora::pec::sign::multipart_signed(
        content.as_bytes(),
        "sig",
        &signer(&pki().good),
        &rome(at),
    )
    .unwrap();
    [
        OUTER.as_bytes(),
        format!("Content-Type: {}\r\n\r\n", ct.replace('\n', "\r\n")).as_bytes(),
        &body,
    ]
    .concat()
}

#[test]
fn formal_checks_of_the_signed_content() {
    let at = t(2025, 9, 1);
    let idx = index(TrustAnchors::default());
    // The baseline verifies, so each refusal below is the change's doing.
    let g = verdict(
        &signed(&[part_daticert(DATICERT), part_postacert("")], at),
        &idx,
        at,
    )
    .unwrap();
    assert_eq!(g.daticert.identificativo, "id1@pec.prova.test");
    assert_eq!(g.to, ["anna@pec.altro.test"]);
    assert_eq!(
        refused(&signed(&[part_daticert(DATICERT)], at), &idx, at),
        Reason::MissingPostacert
    );
    assert_eq!(
        refused(&signed(&[part_postacert("")], at), &idx, at),
        Reason::MissingDaticert
    );
    // A daticert.xml inside the attached original is the sender's, never the provider's.
    let smuggled = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\nContent-Type: application/xml; name=\"daticert.xml\"\r\n\
         Content-Disposition: attachment; filename=\"daticert.xml\"\r\n\r\n{DATICERT}\r\n--in--\r\n"
    );
    let raw = signed(&[part_postacert(&smuggled)], at);
    assert_eq!(refused(&raw, &idx, at), Reason::MissingDaticert);
    let bogus = DATICERT.replace("tipo=\"posta-certificata\"", "tipo=\"mancata-consegna\"");
    assert_eq!(
        refused(
            &signed(&[part_daticert(&bogus), part_postacert("")], at),
            &idx,
            at
        ),
        Reason::MalformedDaticert(DaticertError::BadValue {
            element: "postacert",
            attribute: "tipo",
            value: "mancata-consegna".into()
        })
    );
    let no_id = DATICERT.replace("<identificativo>id1@pec.prova.test</identificativo>", "");
    assert_eq!(
        refused(
            &signed(&[part_daticert(&no_id), part_postacert("")], at),
            &idx,
            at
        ),
        Reason::MalformedDaticert(DaticertError::MissingElement {
            parent: "dati",
            element: "identificativo"
        })
    );
    assert!(matches!(
        refused(
            &signed(&[part_daticert("<postacert"), part_postacert("")], at),
            &idx,
            at
        ),
        Reason::MalformedDaticert(DaticertError::Xml(_))
    ));
    // A third part after the signature is content nobody signed.
    let mut raw = signed(&[part_daticert(DATICERT), part_postacert("")], at);
    let close = raw.windows(7).rposition(|w| w == b"--sig--").unwrap();
    raw.splice(
        close..close + 7,
        b"--sig\r\nContent-Type: text/plain\r\n\r\nunsigned\r\n--sig--"
            .iter()
            .copied(),
    );
    assert!(
        matches!(refused(&raw, &idx, at), Reason::MalformedSignature(m) if m.contains("3 parts"))
    );
}

/// Issue 13 item 10: a signed message whose structure MIME parsers read in different ways
/// is refused, whatever pecora itself would have made of it.
#[test]
fn ambiguous_mime_structure_is_refused() {
    let at = t(2025, 9, 1);
    let idx = index(TrustAnchors::default());
    let daticert = part_daticert(DATICERT);
    assert!(verdict(&signed(&[daticert.clone(), part_postacert("")], at), &idx, at).is_ok());
    let ambiguous = |parts: &[String]| match refused(&signed(parts, at), &idx, at) {
        Reason::AmbiguousStructure(detail) => detail,
        r => panic!("{r:?}"),
    };
    // Two boundary parameters: one parser splits on the first, another on the last.
    let alternative = "--mix\r\nContent-Type: multipart/alternative; boundary=\"a1\"; boundary=\"a2\"\r\n\r\n\
        --a1\r\nContent-Type: text/plain\r\n\r\nuno\r\n--a2\r\nContent-Type: text/plain\r\n\r\ndue\r\n--a1--\r\n--a2--\r\n"
        .to_string();
    let d = ambiguous(&[alternative, daticert.clone(), part_postacert("")]);
    assert!(d.contains("2 boundary parameters"), "{d}");
    // RFC 2231 continuations on a signed part's name.
    let continued = daticert.replace("name=\"daticert.xml\"", "name*0=\"dati\"; name*1=\"cert.xml\"");
    let d = ambiguous(&[continued, part_postacert("")]);
    assert!(d.contains("name*0") && d.contains("RFC 2231"), "{d}");
    // White space before the colon of a header name.
    let spaced = daticert.replace("Content-Type: application/xml", "Content-Type : application/xml");
    let d = ambiguous(&[spaced, part_postacert("")]);
    assert!(d.contains("before the colon"), "{d}");
    // Two Content-Type fields in one part.
    let twice = daticert.replace(
        "Content-Type: application/xml",
        "Content-Type: text/plain\r\nContent-Type: application/xml",
    );
    let d = ambiguous(&[twice, part_postacert("")]);
    assert!(d.contains("2 Content-Type fields"), "{d}");
    // The attached original is the sender's: its own oddities are not the envelope's.
    let odd_original = part_postacert("Content-Type: text/plain; name*0=\"a\"; name*1=\"b\"\r\nX-Odd : 1\r\n");
    assert!(verdict(&signed(&[daticert, odd_original], at), &idx, at).is_ok());
}

/// A transport envelope whose detached PKCS#7 signature is made by `Pkcs7::sign` with `flags`.
fn pkcs7_signed(flags: Pkcs7Flags, cert: &(X509, PKey<Private>)) -> Vec<u8> {
    let content = format!(
        "Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n{}{}--mix--\r\n",
        part_daticert(DATICERT),
        part_postacert("")
    );
    let mut chain = Stack::new().unwrap();
    chain.push(pki().inter.cert.clone()).unwrap();
    let p7 = Pkcs7::sign(
        &cert.0,
        &cert.1,
        &chain,
        content.as_bytes(),
        flags | Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY,
    )
    .unwrap();
    let sig = base64::engine::general_purpose::STANDARD.encode(p7.to_der().unwrap());
    format!(
        "{OUTER}Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\"; micalg=\"sha-256\"; boundary=\"sig\"\r\n\r\n\
         --sig\r\n{content}\r\n--sig\r\nContent-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{sig}\r\n--sig--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_signature_without_its_certificate_names_no_signer() {
    let at = t(2025, 9, 1);
    let idx = index(TrustAnchors::default());
    assert!(verdict(&pkcs7_signed(Pkcs7Flags::empty(), &pki().good), &idx, at).is_ok());
    assert_eq!(
        refused(&pkcs7_signed(Pkcs7Flags::NOCERTS, &pki().good), &idx, at),
        Reason::NoSignerCertificate
    );
}

// ---------------------------------------------------------------------------------------
// The signed index
// ---------------------------------------------------------------------------------------

fn index_signer() -> &'static (X509, PKey<Private>) {
    static S: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    S.get_or_init(|| leaf(&pki().root, 50, t(2020, 1, 1), t(2039, 1, 1)))
}

fn p7m(ldif: &str, flags: Pkcs7Flags, by: &(X509, PKey<Private>)) -> Pkcs7 {
    Pkcs7::sign(
        &by.0,
        &by.1,
        &Stack::new().unwrap(),
        ldif.as_bytes(),
        flags | Pkcs7Flags::BINARY,
    )
    .unwrap()
}

#[test]
fn the_signed_index_loads_in_every_wrapping_and_only_from_its_signer() {
    let ldif = format!(
        "version: 1\ndn: o=postacert\no: postacert\n\n{}",
        index_ldif()
    );
    let signer = &index_signer().0;
    let p = p7m(&ldif, Pkcs7Flags::empty(), index_signer());
    let der = p.to_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(&der)
        .into_bytes();
    let smime_form = p.to_smime(b"", Pkcs7Flags::BINARY).unwrap();
    let no_certs = p7m(&ldif, Pkcs7Flags::NOCERTS, index_signer())
        .to_der()
        .unwrap();
    for (what, data) in [
        ("DER", der.clone()),
        ("PEM", p.to_pem().unwrap()),
        ("base64", b64),
        ("S/MIME", smime_form),
        ("DER without certificates", no_certs),
    ] {
        let idx =
            ProviderIndex::load(&data, Some(signer)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(idx.providers.len(), 1, "{what}");
        assert_eq!(idx.providers[0].name, "Gestore di Prova S.p.A.", "{what}");
        assert_eq!(idx.providers[0].certificates.len(), 2, "{what}");
    }
    // Signed by someone else.
    let other = leaf(&pki().root, 51, t(2020, 1, 1), t(2039, 1, 1));
    let by_other = p7m(&ldif, Pkcs7Flags::empty(), &other).to_der().unwrap();
    assert!(matches!(
        ProviderIndex::load(&by_other, Some(signer)),
        Err(IndexError::WrongSigner { .. })
    ));
    // One changed byte of the LDIF inside the signature.
    let needle = b"managedDomains: pec.prova.test";
    let at = der.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut tampered = der.clone();
    tampered[at + needle.len() - 1] ^= 0x01;
    assert!(matches!(
        ProviderIndex::load(&tampered, Some(signer)),
        Err(IndexError::P7m(_))
    ));
    // A detached signature carries no index.
    let detached = p7m(&ldif, Pkcs7Flags::DETACHED, index_signer())
        .to_der()
        .unwrap();
    assert!(matches!(
        ProviderIndex::load(&detached, Some(signer)),
        Err(IndexError::P7m(_))
    ));
    // The two forms are told apart by content, and each needs the right configuration.
    assert_eq!(
        ProviderIndex::load(ldif.as_bytes(), Some(signer)).unwrap_err(),
        IndexError::Unsigned
    );
    assert_eq!(
        ProviderIndex::load(&der, None).unwrap_err(),
        IndexError::NoSigner
    );
    assert!(ProviderIndex::load(ldif.as_bytes(), None).is_ok());
}

fn write_pem(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn engine_load_reads_the_signed_index_and_the_trust_anchors() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = write_pem(d, "cert.pem", &p.good.0.to_pem().unwrap());
    let key = write_pem(d, "key.pem", &p.good.1.private_key_to_pem_pkcs8().unwrap());
    let ldif = format!("dn: o=postacert\no: postacert\n\n{}", index_ldif());
    let index_p7m = write_pem(
        d,
        "igpec.ldif.p7m",
        &p7m(&ldif, Pkcs7Flags::empty(), index_signer())
            .to_der()
            .unwrap(),
    );
    let index_ldif_path = write_pem(d, "index.ldif", ldif.as_bytes());
    let isigner = write_pem(d, "index-signer.pem", &index_signer().0.to_pem().unwrap());
    let bundle = write_pem(d, "ca.pem", &p.root.cert.to_pem().unwrap());
    let crl_path = write_pem(d, "ca.crl", &p.crl_pem);
    let config = |index: &std::path::Path, extra: &str| {
        let text = format!(
            "[provider]\nname = \"Gestore di Prova S.p.A.\"\ndomains = [\"{DOMAIN}\"]\nhost_id = \"t1\"\n\
             [keys]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n[index]\nfile = \"{}\"\n{extra}",
            cert.display(),
            key.display(),
            index.display()
        );
        let path = d.join("pecora.toml");
        pecora::config::Config::parse(&path, &text).unwrap()
    };
    let trust = format!(
        "signer_certificate = \"{}\"\nca_bundle = \"{}\"\ncrls = [\"{}\"]\n",
        isigner.display(),
        bundle.display(),
        crl_path.display()
    );
    let engine = pecora::runtime::engine::Engine::load(&config(&index_p7m, &trust)).unwrap();
    assert_eq!(engine.index.providers.len(), 1);
    assert_eq!(
        (engine.index.trust.cas.len(), engine.index.trust.crls.len()),
        (1, 1)
    );
    let after = t(2025, 9, 1);
    match engine.verify_incoming(&envelope(&p.revoked, after), &rome(after)) {
        pecora::runtime::engine::Incoming::NotGenuine {
            claimed_pec: true,
            reason,
            ..
        } => assert!(reason.contains("revoked"), "{reason}"),
        _ => panic!("a revoked signer must not pass the engine"),
    }
    assert!(matches!(
        engine.verify_incoming(&envelope(&p.good, after), &rome(after)),
        pecora::runtime::engine::Incoming::Envelope(_)
    ));
    // The plain LDIF without a signer still loads; with a signer configured it is refused,
    // and a .p7m without one too.
    assert!(pecora::runtime::engine::Engine::load(&config(&index_ldif_path, "")).is_ok());
    let signer_only = format!("signer_certificate = \"{}\"\n", isigner.display());
    let err = pecora::runtime::engine::Engine::load(&config(&index_ldif_path, &signer_only))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("plain LDIF"), "{err}");
    let err = pecora::runtime::engine::Engine::load(&config(&index_p7m, ""))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("signer certificate must be configured"),
        "{err}"
    );
    let bad_bundle = format!("ca_bundle = \"{}\"\n", key.display());
    let err = pecora::runtime::engine::Engine::load(&config(&index_ldif_path, &bad_bundle))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca.pem") || err.contains("key.pem"), "{err}");
}

/// `pecora verify` with the trust options: the index signer, the CA bundle and a CRL;
/// the certificate is checked at the CMS signingTime, or now for a signature without one.
#[test]
fn pecora_verify_takes_the_trust_options() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ldif = format!("dn: o=postacert\no: postacert\n\n{}", index_ldif());
    let index_p7m = write_pem(
        d,
        "igpec.ldif.p7m",
        &p7m(&ldif, Pkcs7Flags::empty(), index_signer())
            .to_pem()
            .unwrap(),
    );
    let isigner = write_pem(d, "index-signer.pem", &index_signer().0.to_pem().unwrap());
    let bundle = write_pem(d, "ca.pem", &p.root.cert.to_pem().unwrap());
    let crl_path = write_pem(d, "ca.crl", &p.crl_pem);
    let after = t(2025, 9, 1);
    let before = t(2025, 1, 15);
    let revoked_late = write_pem(d, "revoked-late.eml", &envelope(&p.revoked, after));
    let revoked_early = write_pem(d, "revoked-early.eml", &envelope(&p.revoked, before));
    // No signingTime: checked now (the good certificate is valid until 2039).
    let no_time = write_pem(
        d,
        "no-signing-time.eml",
        &pkcs7_signed(Pkcs7Flags::NOATTR, &p.good),
    );
    assert_eq!(
        incoming::signing_time(&std::fs::read(&no_time).unwrap()),
        None
    );
    assert_eq!(
        incoming::signing_time(&std::fs::read(&revoked_late).unwrap()),
        Some(after)
    );
    let run = |files: &[&std::path::Path]| {
        let mut args = vec![
            OsStr::new("--index"),
            index_p7m.as_os_str(),
            OsStr::new("--index-signer"),
            isigner.as_os_str(),
            OsStr::new("--ca-bundle"),
            bundle.as_os_str(),
            OsStr::new("--crl"),
            crl_path.as_os_str(),
        ];
        args.extend(files.iter().map(|f| f.as_os_str()));
        cli::verify_json(&args)
    };
    let (code, lines, err) = run(&[&revoked_late, &revoked_early]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(lines[0]["reason_code"], "revoked", "{}", lines[0]);
    assert_eq!(lines[0]["checked_at_source"], "signing-time");
    assert_eq!(lines[0]["checked_at"], rome(after).to_rfc3339());
    assert_eq!(
        lines[1]["genuine"], true,
        "signed before the revocation: {}",
        lines[1]
    );
    assert_eq!(lines[1]["checked_at"], rome(before).to_rfc3339());
    let (code, lines, err) = run(&[&no_time]);
    // Now is after the CRL's nextUpdate (2025-10-01): the revocation status is unknown.
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(lines[0]["checked_at_source"], "now");
    assert_eq!(lines[0]["reason_code"], "crl-out-of-date", "{}", lines[0]);
    // Without the index signer the signed index is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .args(["verify", "--index"])
        .arg(&index_p7m)
        .arg(&no_time)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("index.signer_certificate"));
}

/// A busta di anomalia signed by `cert` at `at`, wrapping ordinary mail.
fn anomaly_envelope(cert: &(X509, PKey<Private>), at: DateTime<Utc>) -> Vec<u8> {
    let rcpts = [Recipient {
        address: "anna@pec.altro.test".into(),
        kind: RecipientType::Certificato,
    }];
    build::build_anomaly(
        &provider(),
        &build::Anomaly {
            instant: rome(at),
            message_id: "anomalia.1@pec.prova.test",
            sender: "paolo@mail.example",
            subject: Some("Posta ordinaria"),
            recipients: &rcpts,
            reason: "messaggio di posta ordinaria, non certificata",
            seed: b"seed",
        },
        b"From: paolo@mail.example\r\nTo: anna@pec.altro.test\r\nSubject: Posta ordinaria\r\n\r\nCiao\r\n",
        &signer(cert),
    )
    .unwrap()
    .to_bytes()
}

#[test]
fn an_anomaly_envelope_names_its_provider_and_reason_and_verify_reads_stdin() {
    let p = pki();
    let at = t(2025, 3, 1);
    let idx = index(TrustAnchors::default());
    let raw = anomaly_envelope(&p.good, at);
    // Not certified mail, but a genuine anomaly envelope of a provider of the index.
    assert!(matches!(incoming::verify(&raw, &idx, &rome(at)), Verdict::NotGenuine { .. }));
    assert_eq!(
        incoming::anomaly(&raw, &idx, &rome(at)),
        Some(incoming::AnomalyEnvelope {
            provider: "Gestore di Prova S.p.A.".into(),
            reason: Some("messaggio di posta ordinaria, non certificata".into()),
        })
    );
    // Whoever changes the signed text, or signs with a certificate outside the index, or
    // sends a transport envelope, gets no anomaly verdict.
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.contains("messaggio di posta ordinaria"));
    let forged = text.replacen("messaggio di posta ordinaria", "messaggio di posta ordinaria!", 1);
    assert_eq!(incoming::anomaly(forged.as_bytes(), &idx, &rome(at)), None);
    let stranger_cert = leaf(&p.stranger, 7, t(2024, 1, 1), t(2039, 1, 1));
    let unknown = build::build_anomaly(
        &provider(),
        &build::Anomaly {
            instant: rome(at),
            message_id: "anomalia.2@pec.prova.test",
            sender: "paolo@mail.example",
            subject: None,
            recipients: &[],
            reason: "x",
            seed: b"seed",
        },
        b"Subject: x\r\n\r\nx\r\n",
        &Signer::new(stranger_cert.0.clone(), stranger_cert.1.clone(), vec![p.stranger.cert.clone()]).unwrap(),
    )
    .unwrap()
    .to_bytes();
    assert_eq!(incoming::anomaly(&unknown, &idx, &rome(at)), None);
    assert_eq!(incoming::anomaly(&envelope(&p.good, at), &idx, &rome(at)), None);

    // `pecora verify --json -`: the message on standard input.
    let dir = tempfile::tempdir().unwrap();
    let ldif = dir.path().join("index.ldif");
    std::fs::write(&ldif, format!("dn: o=postacert\no: postacert\n\n{}", index_ldif())).unwrap();
    let run = |input: &[u8]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pecora"))
            .args(["--config", "/nonexistent.toml", "verify", "--json", "--index"])
            .arg(&ldif)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = run(&raw);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["file"], "-");
    assert_eq!(v["genuine"], false);
    assert_eq!(v["kind"], "anomalia", "{v}");
    assert_eq!(v["provider"], "Gestore di Prova S.p.A.");
    assert_eq!(v["anomaly"]["reason"], "messaggio di posta ordinaria, non certificata");
    let (code, v) = run(forged.as_bytes());
    assert_eq!(code, Some(1));
    assert_eq!(v["kind"], "unverified", "{v}");
    assert_eq!(v["anomaly"], serde_json::Value::Null);
    let (code, v) = run(&envelope(&p.good, at));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["kind"], "posta-certificata");
    assert_eq!(v["sender"], format!("mario.rossi@{DOMAIN}"));
}
