//! Building half of the PEC engine, checked from outside:
//! (a) `openssl smime -verify -CAfile ca.pem` accepts every message,
//! (b) its daticert.xml validates with `xmllint --dtdvalid daticert.dtd`,
//! (c) `tests/tools/check_mime.py` (Python's email package) sees the expected MIME tree, no
//!     defects and no malformed header line,
//! (d) golden files pin the exact headers and signed content (`UPDATE_GOLDEN=1` rewrites them,
//! and that run fails: only a run against the committed files passes).
//!
//! The test PKI (CA + provider certificate with the profile of pec-format.md §7.2) is
//! generated per run, so the golden files pin everything but the signature part; the
//! signature itself is deterministic for a given key (checked by a unit test in sign.rs).
//!
//! Needs the `openssl`, `xmllint` (libxml2-utils), `python3` and `sha1sum` commands.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::TimeZone;
use pecora::pec::build::{
    self, Anomaly, Built, Deadline, Notice, NoticeParams, Original, Provider, Transaction,
};
use pecora::pec::sign::Signer;
use pecora::pec::{Errore, Instant, ReceiptType, Recipient, RecipientType};

#[path = "common/certs.rs"]
mod certs;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
const CHECK_MIME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/check_mime.py");

struct Pki {
    dir: tempfile::TempDir,
    signer: Signer,
}

/// A throwaway CA and a provider certificate with the §7.2 profile: KeyUsage critical
/// digitalSignature, SKI, AKI, SAN rfc822Name, no BasicConstraints.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        // From 2000-01-01 to ten years from now.
        let (from, to) = (946_684_800, chrono::Utc::now().timestamp() + 3650 * 86_400);
        let ca = certs::ca("CA di Prova PEC", None, 1, from, to);
        let (cert, k) = certs::leaf(&ca, 2, "Posta Certificata Gestore di Prova", "posta-certificata@pec.prova.it", from, to);
        let ca = ca.cert;

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.to_pem().unwrap()).unwrap();
        let signer = Signer::from_pem(
            &cert.to_pem().unwrap(),
            &k.private_key_to_pem_pkcs8().unwrap(),
            Some(&ca.to_pem().unwrap()),
        )
        .unwrap();
        Pki { dir, signer }
    })
}

fn instant(h: u32, m: u32, s: u32) -> Instant {
    chrono::FixedOffset::east_opt(3600)
        .unwrap()
        .with_ymd_and_hms(2024, 12, 5, h, m, s)
        .unwrap()
}

fn provider() -> Provider {
    Provider {
        name: "Gestore di Prova S.p.A.".into(),
        domain: "pec.prova.it".into(),
        system_address: "posta-certificata@pec.prova.it".into(),
    }
}

const ATTACHMENT_A: &[u8] = b"%PDF-1.4\n\x00\x01\x02\xff binary data of the first attachment\n";
const ATTACHMENT_B: &str = "Seconda riga è qui\r\nterza = riga\r\n";

/// A client submission with two attachments (base64 and quoted-printable).
fn original() -> Vec<u8> {
    use base64::Engine as _;
    let a = base64::engine::general_purpose::STANDARD.encode(ATTACHMENT_A);
    format!(
        "Received: from client.example (client.example [192.0.2.1])\r\n\tby mx.pec.prova.it (Postfix) with ESMTPSA id 4ABC;\r\n\tThu, 5 Dec 2024 00:02:09 +0100\r\n\
From: Mario Rossi <mario.rossi@pec.prova.it>\r\n\
To: Anna Bianchi <anna.bianchi@pec.altro.it>, info@example.com\r\n\
Cc: carlo@pec.altro.it\r\n\
Subject: Fattura dicembre\r\n\
Date: Thu, 5 Dec 2024 00:02:09 +0100\r\n\
Message-ID: <client-1234@pec.prova.it>\r\n\
X-TipoRicevuta: breve\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"CLIENT\"\r\n\r\n\
--CLIENT\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nIn allegato la fattura.\r\n\
--CLIENT\r\nContent-Type: application/pdf; name=\"fattura.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"fattura.pdf\"\r\n\r\n{a}\r\n\
--CLIENT\r\nContent-Type: text/plain; charset=iso-8859-1; name=\"note.txt\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\
Content-Disposition: attachment; filename=\"note.txt\"\r\n\r\nSeconda riga =E8 qui\r\nterza =3D riga\r\n\r\n\
--CLIENT--\r\n"
    )
    .into_bytes()
}

fn transaction(subject: &str, receipt: Option<ReceiptType>) -> Transaction {
    Transaction {
        instant: instant(0, 2, 10),
        identificativo: "pecora.20241205000210.mx1.0011223344556677@pec.prova.it".into(),
        client_msgid: "<client-1234@pec.prova.it>".into(),
        sender: "mario.rossi@pec.prova.it".into(),
        to: vec![
            Recipient {
                address: "anna.bianchi@pec.altro.it".into(),
                kind: RecipientType::Certificato,
            },
            Recipient {
                address: "info@example.com".into(),
                kind: RecipientType::Esterno,
            },
        ],
        cc: vec![Recipient {
            address: "carlo@pec.altro.it".into(),
            kind: RecipientType::Certificato,
        }],
        reply_to: None,
        subject: Some(subject.into()),
        receipt,
    }
}

fn params(msgid: &'static str) -> NoticeParams<'static> {
    NoticeParams {
        instant: instant(0, 2, 11),
        message_id: msgid,
        seed: b"fixed seed for tests",
    }
}

/// All fifteen cases (eleven types, receipt variants split out).
fn cases() -> Vec<(&'static str, Built, Vec<&'static str>)> {
    let p = provider();
    let s = &pki().signer;
    let orig = original();
    let tx = transaction("Fattura dicembre", Some(ReceiptType::Breve));
    let tx_c = transaction("Fattura dicembre", None);
    let envelope =
        build::build_envelope(&p, &tx_c, Original::Raw(&orig), b"fixed seed for tests", s).unwrap();
    let postacert = build::rewrite_original(&orig, &tx.identificativo, &tx.client_msgid);
    let ricezione = vec![
        "anna.bianchi@pec.altro.it".to_string(),
        "carlo@pec.altro.it".to_string(),
    ];
    let ricezione: &'static [String] = Box::leak(ricezione.into_boxed_slice());
    let postacert: &'static [u8] = Box::leak(postacert.into_boxed_slice());
    let alt = [
        "    multipart/alternative",
        "      text/plain",
        "      text/html",
    ];
    let tree = |daticert: bool, postacert: bool| {
        let mut t = vec!["multipart/signed", "  multipart/mixed"];
        t.extend(alt);
        if daticert {
            t.push("    application/xml [daticert.xml]");
        }
        if postacert {
            t.push("    message/rfc822 [postacert.eml]");
        }
        t.push("  application/pkcs7-signature [smime.p7s]");
        t
    };
    let notice = |tx: &Transaction, msgid: &'static str, n: Notice<'_>| {
        build::build_notice(&p, tx, &params(msgid), &n, s).unwrap()
    };
    let anomaly = build::build_anomaly(
        &p,
        &Anomaly {
            instant: instant(0, 3, 0),
            message_id: "anomalia-1@pec.prova.it",
            sender: "someone@example.com",
            subject: Some("Ciao"),
            recipients: &[Recipient { address: "anna.bianchi@pec.altro.it".into(), kind: RecipientType::Certificato }],
            reason: "messaggio non di posta certificata",
            seed: b"anomaly seed",
        },
        b"Received: from x by y; Thu, 5 Dec 2024 00:02:59 +0100\r\nFrom: someone@example.com\r\nTo: anna.bianchi@pec.altro.it\r\nSubject: Ciao\r\nMessage-ID: <ordinary-1@example.com>\r\n\r\nciao\r\n",
        s,
    )
    .unwrap();
    vec![
        ("busta-trasporto", envelope, tree(true, true)),
        (
            "busta-trasporto-breve",
            build::build_envelope(&p, &tx, Original::Raw(&orig), b"fixed seed for tests", s)
                .unwrap(),
            tree(true, true),
        ),
        ("busta-anomalia", anomaly, tree(false, true)),
        (
            "accettazione",
            notice(&tx, "n1@pec.prova.it", Notice::Accettazione),
            tree(true, false),
        ),
        (
            "non-accettazione",
            notice(
                &tx,
                "n2@pec.prova.it",
                Notice::NonAccettazione {
                    errore_esteso: "destinatario in Bcc non ammesso",
                },
            ),
            tree(true, false),
        ),
        (
            "non-accettazione-virus",
            notice(
                &tx,
                "n3@pec.prova.it",
                Notice::NonAccettazioneVirus {
                    errore_esteso: "Eicar-Test-Signature",
                },
            ),
            tree(true, false),
        ),
        (
            "presa-in-carico",
            notice(
                &tx,
                "n4@pec.altro.it",
                Notice::PresaInCarico {
                    ricezione,
                    mail_receipt: "ricevute@pec.prova.it",
                },
            ),
            tree(true, false),
        ),
        (
            "avvenuta-consegna-completa",
            notice(
                &tx_c,
                "n5@pec.altro.it",
                Notice::AvvenutaConsegna {
                    consegna: "anna.bianchi@pec.altro.it",
                    variant: ReceiptType::Completa,
                    postacert: Some(postacert),
                },
            ),
            tree(true, true),
        ),
        (
            "avvenuta-consegna-breve",
            notice(
                &tx,
                "n6@pec.altro.it",
                Notice::AvvenutaConsegna {
                    consegna: "anna.bianchi@pec.altro.it",
                    variant: build::receipt_variant(ReceiptType::Breve, true, false),
                    postacert: Some(postacert),
                },
            ),
            tree(true, true),
        ),
        (
            "avvenuta-consegna-sintetica",
            notice(
                &tx,
                "n7@pec.altro.it",
                Notice::AvvenutaConsegna {
                    consegna: "carlo@pec.altro.it",
                    variant: build::receipt_variant(ReceiptType::Breve, false, true),
                    postacert: Some(postacert),
                },
            ),
            tree(true, false),
        ),
        (
            "errore-consegna",
            notice(
                &tx,
                "n8@pec.altro.it",
                Notice::ErroreConsegna {
                    consegna: "anna.bianchi@pec.altro.it",
                    errore: Errore::NoDest,
                    errore_esteso: "5.1.1 - Gestore di Prova S.p.A. - indirizzo non valido",
                },
            ),
            tree(true, false),
        ),
        (
            "errore-consegna-virus",
            notice(
                &tx,
                "n9@pec.prova.it",
                Notice::ErroreConsegnaVirus {
                    consegna: "anna.bianchi@pec.altro.it",
                    errore_esteso: "virus rilevato",
                },
            ),
            tree(true, false),
        ),
        (
            "preavviso-errore-consegna-12h",
            notice(
                &tx,
                "n10@pec.prova.it",
                Notice::Preavviso {
                    consegna: "anna.bianchi@pec.altro.it",
                    deadline: Deadline::H12,
                    errore_esteso: None,
                },
            ),
            tree(true, false),
        ),
        (
            "preavviso-errore-consegna-24h",
            notice(
                &tx,
                "n11@pec.prova.it",
                Notice::Preavviso {
                    consegna: "anna.bianchi@pec.altro.it",
                    deadline: Deadline::H24,
                    errore_esteso: Some("4.4.1 - nessuna ricevuta di consegna"),
                },
            ),
            tree(true, false),
        ),
        (
            "rilevazione-virus",
            notice(
                &tx,
                "n12@pec.altro.it",
                Notice::RilevazioneVirus {
                    consegna: "anna.bianchi@pec.altro.it",
                    mail_receipt: "ricevute@pec.prova.it",
                    errore_esteso: "Eicar-Test-Signature",
                },
            ),
            tree(true, false),
        ),
    ]
}

fn write_tmp(name: &str, data: &[u8]) -> PathBuf {
    let p = pki().dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn smime_verify(path: &Path) -> Result<(), String> {
    let ca = pki().dir.path().join("ca.pem");
    let out = Command::new("openssl")
        .args(["smime", "-verify", "-CAfile"])
        .arg(&ca)
        .arg("-in")
        .arg(path)
        .args(["-out", "/dev/null"])
        .output()
        .expect("openssl command");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn check_mime(path: &Path, save: Option<&Path>) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(CHECK_MIME).arg(path);
    if let Some(dir) = save {
        cmd.arg("--save-attachments").arg(dir);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "check_mime.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn xmllint_valid(xml: &str, tag: &str) -> Result<(), String> {
    let p = write_tmp(&format!("{tag}-daticert.xml"), xml.as_bytes());
    let out = Command::new("xmllint")
        .args(["--noout", "--dtdvalid"])
        .arg(format!("{FIXTURES}/daticert.dtd"))
        .arg(&p)
        .output()
        .expect("xmllint command");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Headers plus the signed content (the multipart/mixed entity), i.e. the message without
/// the signature part, which depends on the per-run test key.
fn golden_view(b: &Built) -> Vec<u8> {
    let bytes = b.to_bytes();
    let ct = b.header("Content-Type").unwrap();
    let boundary = ct
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    let open = format!("--{boundary}\r\n");
    let close = format!("\r\n--{boundary}\r\nContent-Type: application/pkcs7-signature");
    let head_end = find(&bytes, b"\r\n\r\n").unwrap() + 4;
    let start = find(&bytes, open.as_bytes()).unwrap() + open.len();
    let end = find(&bytes, close.as_bytes()).unwrap();
    let mut v = bytes[..head_end].to_vec();
    v.extend_from_slice(b"[... preamble and opening delimiter ...]\r\n");
    v.extend_from_slice(&bytes[start..end]);
    v.extend_from_slice(b"\r\n[... signature part ...]\r\n");
    v
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[test]
fn every_type_verifies_validates_parses_and_matches_golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, built, expected_tree) in cases() {
        let bytes = built.to_bytes();
        let path = write_tmp(&format!("{name}.eml"), &bytes);
        // (a) signature and chain.
        if let Err(e) = smime_verify(&path) {
            failures.push(format!("{name}: openssl smime -verify failed: {e}"));
        }
        // (c) MIME structure with an independent parser.
        let j = check_mime(&path, None);
        let tree: Vec<String> = j["tree"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        println!("{name}:\n  {}", tree.join("\n  "));
        if tree != expected_tree {
            failures.push(format!("{name}: tree {tree:#?} != {expected_tree:#?}"));
        }
        for key in ["defects", "bad_header_lines"] {
            if !j[key].as_array().unwrap().is_empty() {
                failures.push(format!("{name}: {key}: {}", j[key]));
            }
        }
        // (b) daticert against the DTD (none in the anomaly envelope).
        match j["daticert"].as_str() {
            Some(x) => {
                if let Err(e) = xmllint_valid(x, name) {
                    failures.push(format!("{name}: xmllint: {e}"));
                }
            }
            None if name == "busta-anomalia" => {}
            None => failures.push(format!("{name}: no daticert.xml")),
        }
        // Texts are present and decodable.
        if j["texts"]["plain"].as_str().is_none_or(str::is_empty)
            || j["texts"]["html"].as_str().is_none()
        {
            failures.push(format!("{name}: texts missing"));
        }
        // (d) golden file.
        let golden = Path::new(GOLDEN).join(format!("{name}.eml"));
        let view = golden_view(&built);
        if update {
            std::fs::create_dir_all(GOLDEN).unwrap();
            std::fs::write(&golden, &view).unwrap();
        } else {
            match std::fs::read(&golden) {
                Ok(g) if g == view => {}
                Ok(_) => failures.push(format!(
                    "{name}: differs from {} (UPDATE_GOLDEN=1 to accept)",
                    golden.display()
                )),
                Err(e) => failures.push(format!("{name}: {}: {e}", golden.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Rewriting the golden files proves nothing about them: the run that rewrites them
    // fails, so that only a run against the committed files can pass.
    assert!(
        !update,
        "UPDATE_GOLDEN: golden files rewritten in {GOLDEN}; review `git diff tests/golden` \
         and run again without UPDATE_GOLDEN"
    );
}

/// A top-level header value, unfolded.
fn header(b: &Built, name: &str) -> String {
    b.header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .replace('\n', "")
}

#[test]
fn literal_headers_of_each_type() {
    let cases = cases();
    let get = |n: &str| &cases.iter().find(|c| c.0 == n).unwrap().1;
    let env = get("busta-trasporto");
    assert_eq!(header(env, "X-Trasporto"), "posta-certificata");
    assert_eq!(
        header(env, "Subject"),
        "POSTA CERTIFICATA: Fattura dicembre"
    );
    assert_eq!(
        header(env, "From"),
        "\"Per conto di: mario.rossi@pec.prova.it\" <posta-certificata@pec.prova.it>"
    );
    assert_eq!(header(env, "Reply-To"), "mario.rossi@pec.prova.it");
    assert_eq!(
        header(env, "To"),
        "Anna Bianchi <anna.bianchi@pec.altro.it>, info@example.com"
    );
    assert_eq!(header(env, "Cc"), "carlo@pec.altro.it");
    assert_eq!(
        header(env, "Message-ID"),
        "<pecora.20241205000210.mx1.0011223344556677@pec.prova.it>"
    );
    assert_eq!(
        header(env, "X-Riferimento-Message-ID"),
        "<client-1234@pec.prova.it>"
    );
    assert_eq!(header(env, "Date"), "Thu, 5 Dec 2024 00:02:10 +0100");
    assert!(env.header("X-TipoRicevuta").is_none());
    assert_eq!(env.trace.len(), 1);
    assert_eq!(env.trace[0].0, "Received");
    assert!(header(env, "Content-Type").starts_with(
        "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=\"sha-256\"; boundary=\""
    ));
    assert_eq!(
        header(get("busta-trasporto-breve"), "X-TipoRicevuta"),
        "breve"
    );

    let an = get("busta-anomalia");
    assert_eq!(header(an, "X-Trasporto"), "errore");
    assert_eq!(header(an, "Subject"), "ANOMALIA MESSAGGIO: Ciao");
    // Its own identifier, never the wrapped message's (decisions.md 19), which stays inside.
    assert_eq!(header(an, "Message-ID"), "<anomalia-1@pec.prova.it>");
    assert!(!an.headers.iter().any(|(_, v)| v.contains("ordinary-1@example.com")));
    assert!(String::from_utf8_lossy(&an.body).contains("Message-ID: <ordinary-1@example.com>"));
    assert_eq!(header(an, "To"), "anna.bianchi@pec.altro.it");
    assert!(an.header("X-Riferimento-Message-ID").is_none());

    let expect = [
        (
            "accettazione",
            "accettazione",
            "ACCETTAZIONE: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "non-accettazione",
            "non-accettazione",
            "AVVISO DI NON ACCETTAZIONE: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "non-accettazione-virus",
            "non-accettazione",
            "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
            "mario.rossi@pec.prova.it",
            true,
        ),
        (
            "presa-in-carico",
            "presa-in-carico",
            "PRESA IN CARICO: ",
            "ricevute@pec.prova.it",
            false,
        ),
        (
            "avvenuta-consegna-completa",
            "avvenuta-consegna",
            "CONSEGNA: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "avvenuta-consegna-breve",
            "avvenuta-consegna",
            "CONSEGNA: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "avvenuta-consegna-sintetica",
            "avvenuta-consegna",
            "CONSEGNA: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "errore-consegna",
            "errore-consegna",
            "AVVISO DI MANCATA CONSEGNA: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "errore-consegna-virus",
            "errore-consegna",
            "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
            "mario.rossi@pec.prova.it",
            true,
        ),
        (
            "preavviso-errore-consegna-12h",
            "preavviso-errore-consegna",
            "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "preavviso-errore-consegna-24h",
            "preavviso-errore-consegna",
            "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
            "mario.rossi@pec.prova.it",
            false,
        ),
        (
            "rilevazione-virus",
            "rilevazione-virus",
            "PROBLEMA DI SICUREZZA: ",
            "ricevute@pec.prova.it",
            false,
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (case, tipo, prefix, to, virus) in expect {
        let b = get(case);
        assert_eq!(header(b, "X-Ricevuta"), tipo, "{case}");
        assert_eq!(
            header(b, "Subject"),
            format!("{prefix}Fattura dicembre"),
            "{case}"
        );
        assert_eq!(
            header(b, "From"),
            "posta-certificata@pec.prova.it",
            "{case}"
        );
        assert_eq!(header(b, "To"), to, "{case}");
        assert_eq!(
            header(b, "X-Riferimento-Message-ID"),
            "<client-1234@pec.prova.it>",
            "{case}"
        );
        assert_eq!(
            header(b, "Date"),
            "Thu, 5 Dec 2024 00:02:11 +0100",
            "{case}"
        );
        assert_eq!(
            b.header("X-VerificaSicurezza") == Some("errore"),
            virus,
            "{case}"
        );
        assert!(
            ids.insert(header(b, "Message-ID")),
            "{case}: Message-ID reused"
        );
        assert!(b.header("X-Trasporto").is_none());
        assert!(b.trace.is_empty());
    }
    assert_eq!(
        header(get("rilevazione-virus"), "X-Mittente"),
        "mario.rossi@pec.prova.it"
    );
    assert_eq!(
        header(get("avvenuta-consegna-breve"), "X-TipoRicevuta"),
        "breve"
    );
    assert_eq!(
        header(get("avvenuta-consegna-sintetica"), "X-TipoRicevuta"),
        "sintetica"
    );
}

#[test]
fn daticert_content_per_type() {
    for (name, built, _) in cases() {
        let path = write_tmp(&format!("dc-{name}.eml"), &built.to_bytes());
        let j = check_mime(&path, None);
        let Some(x) = j["daticert"].as_str() else {
            continue;
        };
        assert!(
            x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<postacert tipo=\""),
            "{name}"
        );
        assert!(x.contains("<identificativo>pecora.20241205000210.mx1.0011223344556677@pec.prova.it</identificativo>"));
        assert!(
            x.contains("<msgid>&lt;client-1234@pec.prova.it&gt;</msgid>"),
            "{name}"
        );
        assert!(x.contains("<risposte>mario.rossi@pec.prova.it</risposte>"));
        assert!(x.contains("<destinatari tipo=\"esterno\">info@example.com</destinatari>"));
        let want = match name {
            "busta-trasporto" => "<postacert tipo=\"posta-certificata\" errore=\"nessuno\">",
            "accettazione" => "<postacert tipo=\"accettazione\" errore=\"nessuno\">",
            "non-accettazione" => "<postacert tipo=\"non-accettazione\" errore=\"altro\">",
            "non-accettazione-virus" => "<postacert tipo=\"non-accettazione\" errore=\"virus\">",
            "errore-consegna" => "<postacert tipo=\"errore-consegna\" errore=\"no-dest\">",
            "errore-consegna-virus" => "<postacert tipo=\"errore-consegna\" errore=\"virus\">",
            "rilevazione-virus" => "<postacert tipo=\"rilevazione-virus\" errore=\"virus\">",
            _ => "<postacert tipo=\"",
        };
        assert!(x.contains(want), "{name}: {x}");
        if name == "busta-trasporto" {
            assert!(x.contains("<ricevuta tipo=\"completa\" />"));
            assert!(x.contains("<ora>00:02:10</ora>") && x.contains("<data zona=\"+0100\">"));
        }
        if name == "presa-in-carico" {
            assert!(x.contains("<ricezione>anna.bianchi@pec.altro.it</ricezione>\n        <ricezione>carlo@pec.altro.it</ricezione>"));
        }
        if name.starts_with("avvenuta-consegna") {
            assert!(x.contains("<consegna>"), "{name}");
            let v = name.rsplit('-').next().unwrap();
            assert!(x.contains(&format!("<ricevuta tipo=\"{v}\" />")), "{name}");
        }
    }
}

#[test]
fn envelope_postacert_is_the_rewritten_original() {
    let p = provider();
    let tx = transaction("Fattura dicembre", None);
    let orig = original();
    let env = build::build_envelope(&p, &tx, Original::Raw(&orig), b"s", &pki().signer).unwrap();
    let body = env.body.clone();
    let rewritten = build::rewrite_original(&orig, &tx.identificativo, &tx.client_msgid);
    // The embedded message is byte for byte the rewritten original, followed by the CRLF
    // that belongs to the closing delimiter.
    let at = find(&body, &rewritten).expect("postacert embedded verbatim");
    assert_eq!(
        &body[at + rewritten.len()..at + rewritten.len() + 4],
        b"\r\n--"
    );
    let r = String::from_utf8_lossy(&rewritten);
    assert!(r.contains("Message-ID: <pecora.20241205000210.mx1.0011223344556677@pec.prova.it>\r\nX-Riferimento-Message-ID: <client-1234@pec.prova.it>\r\n\r\n"));
    assert!(!r.contains("\nMessage-ID: <client-1234"));
    // The split (milter) form gives the same envelope.
    let (head, body_part) = orig.split_at(find(&orig, b"\r\n\r\n").unwrap() + 4);
    let head = String::from_utf8_lossy(&head[..head.len() - 2]).replace("\r\n", "\n");
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive('\n') {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().unwrap();
            last.1.extend_from_slice(line.as_bytes());
        } else {
            let (n, v) = line.split_once(':').unwrap();
            fields.push((n.to_string(), v.as_bytes().to_vec()));
        }
    }
    for f in &mut fields {
        if f.1.ends_with(b"\n") {
            f.1.pop();
        }
    }
    let split = build::build_envelope(
        &p,
        &tx,
        Original::Split {
            headers: &fields,
            body: body_part,
        },
        b"s",
        &pki().signer,
    )
    .unwrap();
    assert_eq!(split.headers, env.headers);
    assert_eq!(split.body, env.body);
}

#[test]
fn breve_hashes_equal_sha1sum_of_decoded_attachments() {
    let cases = cases();
    let breve = &cases
        .iter()
        .find(|c| c.0 == "avvenuta-consegna-breve")
        .unwrap()
        .1;
    let path = write_tmp("breve-check.eml", &breve.to_bytes());
    let j = check_mime(&path, None);
    let hashes = j["hash_parts"].as_object().unwrap();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    // Save the original's attachments with Python and hash them with sha1sum.
    let dir = pki().dir.path().join("attachments");
    std::fs::create_dir_all(&dir).unwrap();
    let orig_path = write_tmp("original.eml", &original());
    check_mime(&orig_path, Some(&dir));
    for (file, expected_bytes) in [
        ("fattura.pdf", ATTACHMENT_A.to_vec()),
        ("note.txt", {
            ATTACHMENT_B
                .chars()
                .map(|c| c as u32 as u8)
                .collect::<Vec<u8>>()
        }),
    ] {
        let saved = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(saved, expected_bytes, "{file} decoded differently");
        let out = Command::new("sha1sum")
            .arg(dir.join(file))
            .output()
            .expect("sha1sum");
        let sum = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let got = hashes[&format!("{file}.hash")].as_str().unwrap();
        assert_eq!(got, sum, "{file}");
        assert_eq!(got.len(), 40);
        assert!(
            got.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    // The structure is kept: the unnamed text part is still there.
    let pc = j["postacert"].as_str().unwrap();
    assert!(pc.contains("In allegato la fattura."));
    assert!(!pc.contains("JVBERi0")); // base64 of the PDF is gone
}

#[test]
fn hostile_values_stay_contained() {
    let p = provider();
    let s = &pki().signer;
    let long = "x".repeat(2000);
    let long_words = "parola ".repeat(300);
    let subjects = [
        "a < b & c ]]> d \"q\" 'a'",
        "evil\r\nBcc: victim@example.com\r\nX-Ricevuta: accettazione",
        "Привет € 日本",
        long.as_str(),
        long_words.as_str(),
        "nul\0byte and \u{1} control",
        "=?UTF-8?B?ZmFrZQ==?= not an encoded word",
    ];
    for (i, subj) in subjects.iter().enumerate() {
        let mut tx = transaction(subj, Some(ReceiptType::Completa));
        tx.sender = "mario<&>\r\nBcc: x@y.it@pec.prova.it".into();
        tx.reply_to = Some("r]]>eply@pec.prova.it".into());
        tx.to[0].address = "anna&<>\"'@pec.altro.it".into();
        let orig = original();
        let built = [
            build::build_envelope(&p, &tx, Original::Raw(&orig), b"h", s).unwrap(),
            build::build_notice(&p, &tx, &params("h@pec.prova.it"), &Notice::Accettazione, s)
                .unwrap(),
        ];
        for (k, b) in built.iter().enumerate() {
            let path = write_tmp(&format!("hostile-{i}-{k}.eml"), &b.to_bytes());
            smime_verify(&path).unwrap_or_else(|e| panic!("{i}/{k}: {e}"));
            let j = check_mime(&path, None);
            assert!(
                j["bad_header_lines"].as_array().unwrap().is_empty(),
                "{i}/{k}: {}",
                j["bad_header_lines"]
            );
            assert!(
                j["defects"].as_array().unwrap().is_empty(),
                "{i}/{k}: {}",
                j["defects"]
            );
            let names: Vec<String> = j["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
                .collect();
            assert!(
                !names.contains(&"bcc".to_string()),
                "{i}/{k}: injected header"
            );
            assert_eq!(
                names.iter().filter(|n| *n == "x-ricevuta").count(),
                if k == 1 { 1 } else { 0 }
            );
            let x = j["daticert"].as_str().unwrap();
            xmllint_valid(x, &format!("hostile-{i}-{k}"))
                .unwrap_or_else(|e| panic!("{i}/{k}: {e}\n{x}"));
            assert!(!x.contains("]]>"));
            // The decoded subject keeps the text (controls become spaces or vanish).
            let decoded = j["subject"].as_str().unwrap();
            let clean: String = subj.chars().filter(|c| !c.is_control()).collect();
            let dec: String = decoded.chars().filter(|c| !c.is_whitespace()).collect();
            let want: String = clean.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(dec.ends_with(&want), "{i}/{k}: subject {decoded:?}");
        }
    }
}

#[test]
fn notice_refuses_what_it_cannot_build() {
    let p = provider();
    let s = &pki().signer;
    let tx = transaction("s", None);
    let r = build::build_notice(
        &p,
        &tx,
        &params("x@pec.prova.it"),
        &Notice::AvvenutaConsegna {
            consegna: "a@b.it",
            variant: ReceiptType::Completa,
            postacert: None,
        },
        s,
    );
    assert!(matches!(
        r,
        Err(build::BuildError::MissingPostacert(ReceiptType::Completa))
    ));
    let r = build::build_notice(
        &p,
        &tx,
        &params("x@pec.prova.it"),
        &Notice::ErroreConsegna {
            consegna: "a@b.it",
            errore: Errore::Nessuno,
            errore_esteso: "",
        },
        s,
    );
    assert!(matches!(
        r,
        Err(build::BuildError::BadErrore(Errore::Nessuno))
    ));
    let mut empty = tx.clone();
    empty.to.clear();
    empty.cc.clear();
    let r = build::build_notice(
        &p,
        &empty,
        &params("x@pec.prova.it"),
        &Notice::Accettazione,
        s,
    );
    assert!(matches!(r, Err(build::BuildError::NoRecipients)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn well_formed(x: &str) -> Result<usize, String> {
        let mut r = quick_xml::Reader::from_str(x);
        let mut n = 0;
        loop {
            match r.read_event() {
                Ok(quick_xml::events::Event::Eof) => return Ok(n),
                Ok(_) => n += 1,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn arbitrary_subjects_and_addresses_never_break_xml_or_headers(
            subject in any::<String>(),
            sender in "[ -~\r\n\u{0}]{0,80}",
            rcpt in any::<String>(),
        ) {
            let p = provider();
            let mut tx = transaction(&subject, None);
            tx.sender = sender.clone();
            tx.to[0].address = rcpt.clone();
            let b = build::build_notice(&p, &tx, &params("p@pec.prova.it"), &Notice::Accettazione, &pki().signer);
            let b = match b {
                Ok(b) => b,
                // Only an unfoldable address (To is the sender) may be refused.
                Err(build::BuildError::Header(_)) => return Ok(()),
                Err(e) => panic!("{e}"),
            };
            let bytes = b.to_bytes();
            let head_end = find(&bytes, b"\r\n\r\n").unwrap();
            let head = &bytes[..head_end + 2];
            let mut names = Vec::new();
            for line in head.split(|&c| c == b'\n') {
                if line.is_empty() { continue; }
                prop_assert!(line.ends_with(b"\r"), "bare LF in header");
                let line = &line[..line.len() - 1];
                prop_assert!(!line.contains(&b'\r') && !line.contains(&0));
                prop_assert!(line.len() <= 998);
                if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                    let colon = line.iter().position(|&c| c == b':');
                    prop_assert!(colon.is_some(), "not a field: {:?}", String::from_utf8_lossy(line));
                    names.push(String::from_utf8_lossy(&line[..colon.unwrap()]).to_string());
                }
            }
            let expected = ["Date", "Subject", "From", "To", "Message-ID", "X-Riferimento-Message-ID",
                            "X-Ricevuta", "MIME-Version", "Content-Type"];
            prop_assert_eq!(names, expected.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            // The daticert model serialises to well-formed XML with the escaped subject.
            let d = pecora::pec::Daticert {
                tipo: pecora::pec::Tipo::Accettazione,
                errore: Errore::Nessuno,
                mittente: sender,
                destinatari: vec![Recipient { address: rcpt, kind: RecipientType::Certificato }],
                risposte: "r@x.it".into(),
                oggetto: Some(subject.clone()),
                gestore_emittente: "G".into(),
                data: instant(1, 2, 3),
                identificativo: "i@x.it".into(),
                msgid: Some("<m@x>".into()),
                ricevuta: None,
                consegna: None,
                ricezione: vec![],
                errore_esteso: None,
            };
            let x = d.to_xml();
            prop_assert!(well_formed(&x).is_ok(), "{:?}", well_formed(&x));
            prop_assert!(!x.contains("]]>"));
        }
    }
}

#[test]
fn brief_transform_survives_real_and_broken_messages() {
    for dir in ["real", "negative"] {
        for entry in std::fs::read_dir(format!("{FIXTURES}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            let raw = std::fs::read(&path).unwrap();
            let out = pecora::pec::brief::transform(&raw);
            // The signed envelope keeps its structure: the signature part is never replaced,
            // daticert.xml and postacert.eml (named parts) are.
            let text = String::from_utf8_lossy(&out);
            if text.contains("filename=\"postacert.eml\"") && dir == "real" {
                panic!("{}: postacert.eml not replaced", path.display());
            }
            if dir == "real" {
                assert!(
                    text.contains("smime.p7s"),
                    "{}: signature part lost",
                    path.display()
                );
            }
            assert!(mail_parser::MessageParser::default().parse(&out).is_some());
            // Truncations of a real message never panic.
            for cut in [1usize, 17, 333, raw.len() / 2, raw.len().saturating_sub(5)] {
                let _ = pecora::pec::brief::transform(&raw[..cut.min(raw.len())]);
            }
        }
    }
}

/// A 50 MB original is wrapped, and its brief form made, in linear time, and the envelope
/// verifies with openssl. Runs in every `cargo test` (about 10 s in a debug build on the CI
/// machine, 2026-12-05); the bound is generous (a quadratic copy would take hours at 50 MB).
#[test]
fn large_original() {
    let bound = std::time::Duration::from_secs(120);
    let mut orig = original();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    orig.truncate(orig.len() - b"--CLIENT--\r\n".len());
    orig.extend_from_slice(b"--CLIENT\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    while orig.len() < 50 << 20 {
        orig.extend_from_slice(line);
    }
    orig.extend_from_slice(b"--CLIENT--\r\n");
    let t = std::time::Instant::now();
    let tx = transaction("big", None);
    let env =
        build::build_envelope(&provider(), &tx, Original::Raw(&orig), b"s", &pki().signer).unwrap();
    let took = t.elapsed();
    println!("envelope of {} bytes in {took:?}", env.body.len());
    assert!(took < bound, "envelope of a 50 MB original took {took:?}");
    assert!(env.body.len() > orig.len(), "the envelope carries the whole original");
    let t = std::time::Instant::now();
    let b = pecora::pec::brief::transform(&orig);
    let took = t.elapsed();
    println!("brief of {} bytes in {took:?} -> {} bytes", orig.len(), b.len());
    assert!(took < bound, "brief form of a 50 MB original took {took:?}");
    // The brief form replaces the 50 MB attachment by its hash.
    assert!(b.len() < 64 << 10, "brief form of {} bytes", b.len());
    let path = write_tmp("large.eml", &env.to_bytes());
    smime_verify(&path).unwrap();
}
