//! Login with a digital certificate on the lab: alpha's holder firma@ has no password, only
//! a client certificate from alpha's users' CA (made with `pecora keys user-ca` and
//! `user-cert`). She submits over STARTTLS and SMTPS and reads over IMAPS and POP3S with
//! SASL EXTERNAL; her certificate cannot send as another mailbox; a certificate from a CA
//! alpha does not trust is no login anywhere, even from a CA that carries the trusted CA's
//! exact name (refused by Postfix's and Dovecot's signature check, since pecora's own
//! issuer-name check would let it through), nor is an expired certificate from the trusted
//! CA.

use std::path::PathBuf;
use std::time::Duration;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

fn pair(v: &serde_json::Value) -> (PathBuf, PathBuf) {
    (Lab::path(&v["cert"]), Lab::path(&v["key"]))
}

#[test]
fn a_certificate_holder_sends_and_reads_and_cannot_pass_for_someone_else() {
    let lab = Lab::up();
    let (alpha, gamma) = (lab.alpha(), lab.gamma());
    let certs = &alpha["client_certificates"];
    let firma = certs["user"].as_str().unwrap();
    let (cert, key) = pair(&certs["trusted"]);
    let (bad_cert, bad_key) = pair(&certs["untrusted"]);
    let (impostor_cert, impostor_key) = pair(&certs["impostor"]);
    let (expired_cert, expired_key) = pair(&certs["expired"]);
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();

    // Submission with the certificate alone, on both access listeners.
    for (tls, subj) in [("starttls", "Firmato STARTTLS"), ("smtps", "Firmato SMTPS")] {
        let out = lab.send_with_certificate(alpha, tls, &cert, &key, firma, &[paolo], &[("Subject", subj)], "x");
        assert!(out.status.success(), "{tls}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| m.len() >= 2);
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert!(String::from_utf8_lossy(m).contains(&format!("Per conto di: {firma}")));
    }

    // The certificate names firma: sending as mario is refused, with the notice to firma.
    let out = lab.send_with_certificate(alpha, "starttls", &cert, &key, mario, &[paolo], &[("Subject", "Finto mario")], "x");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("5.7.1") && transcript.contains(firma), "{transcript}");
    let out = lab.send_with_certificate(alpha, "starttls", &cert, &key, firma, &[paolo], &[("From", mario), ("Subject", "Finto From")], "x");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // A certificate from an unknown CA is no login: refused as unauthenticated.
    let out = lab.send_with_certificate(alpha, "starttls", &bad_cert, &bad_key, firma, &[paolo], &[("Subject", "Ignoto")], "x");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("530 5.7.0"), "{transcript}");

    // The impostor's CA has the trusted CA's exact name, so pecora's issuer check alone
    // would take its certificate for firma's: the TLS layer must refuse it, and the same
    // goes for an expired certificate from the trusted CA. On both access listeners.
    for (what, c, k) in [("impostor", &impostor_cert, &impostor_key), ("expired", &expired_cert, &expired_key)] {
        for tls in ["starttls", "smtps"] {
            let out = lab.send_with_certificate(alpha, tls, c, k, firma, &[paolo], &[("Subject", "Ignoto")], "x");
            let transcript = String::from_utf8_lossy(&out.stdout);
            assert!(!out.status.success(), "{what} {tls}: {transcript}");
            assert!(transcript.contains("530 5.7.0"), "{what} {tls}: {transcript}");
        }
    }
    // A message sent after every refused attempt: once it is in paolo's mailbox, the
    // refused ones had all their chance to arrive.
    let out = lab.send_with_certificate(alpha, "starttls", &cert, &key, firma, &[paolo], &[("Subject", "Dopo i rifiuti")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // firma reads her receipts over IMAPS and POP3S with the certificate.
    let start = std::time::Instant::now();
    let wanted = |m: &[Vec<u8>]| m.len() >= 5;
    let mut msgs = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        msgs = lab.fetch_with_certificate(alpha, &cert, &key, "imaps").expect("IMAPS with the certificate");
        if wanted(&msgs) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![
            "ACCETTAZIONE: Dopo i rifiuti",
            "ACCETTAZIONE: Firmato SMTPS",
            "ACCETTAZIONE: Firmato STARTTLS",
            // Refused at RCPT (MAIL FROM is not the certificate's mailbox): no DATA, so no
            // Subject to quote.
            "AVVISO DI NON ACCETTAZIONE:",
            "AVVISO DI NON ACCETTAZIONE: Finto From",
        ],
    );
    let pop = lab.fetch_with_certificate(alpha, &cert, &key, "pop3s").expect("POP3S with the certificate");
    assert_eq!(pop.len(), 5);
    // Nothing from the refused attempts reached paolo: only what was sent before and after.
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| m.iter().any(|x| subject(x) == "POSTA CERTIFICATA: Dopo i rifiuti"));
    let mut subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["POSTA CERTIFICATA: Dopo i rifiuti", "POSTA CERTIFICATA: Firmato SMTPS", "POSTA CERTIFICATA: Firmato STARTTLS"]
    );

    // The untrusted, the impostor's and the expired certificate open no mailbox either.
    for (what, c, k) in [("untrusted", &bad_cert, &bad_key), ("impostor", &impostor_cert, &impostor_key), ("expired", &expired_cert, &expired_key)] {
        for proto in ["imaps", "pop3s"] {
            let e = lab.fetch_with_certificate(alpha, c, k, proto).expect_err("refused");
            assert!(e.contains("uthentication failed") || e.contains("-ERR"), "{what} {proto}: {e}");
        }
    }
}
