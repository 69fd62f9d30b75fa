//! Login with a digital certificate on the lab: alpha's holder firma@ has no password, only
//! a client certificate from alpha's users' CA (made with `pecora keys user-ca` and
//! `user-cert`). She submits over STARTTLS and SMTPS and reads over IMAPS and POP3S with
//! SASL EXTERNAL; her certificate cannot send as another mailbox; a certificate from a CA
//! alpha does not trust is no login anywhere.

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

    // firma reads her receipts over IMAPS and POP3S with the certificate.
    let start = std::time::Instant::now();
    let wanted = |m: &[Vec<u8>]| m.len() >= 4;
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
            "ACCETTAZIONE: Firmato SMTPS",
            "ACCETTAZIONE: Firmato STARTTLS",
            // Refused at RCPT (MAIL FROM is not the certificate's mailbox): no DATA, so no
            // Subject to quote.
            "AVVISO DI NON ACCETTAZIONE:",
            "AVVISO DI NON ACCETTAZIONE: Finto From",
        ],
    );
    let pop = lab.fetch_with_certificate(alpha, &cert, &key, "pop3s").expect("POP3S with the certificate");
    assert_eq!(pop.len(), 4);
    // Nothing from the refused attempts reached paolo.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.fetch(gamma, &gamma["users"][0], "imaps").len(), 2);

    // The untrusted certificate opens no mailbox either.
    for proto in ["imaps", "pop3s"] {
        let e = lab.fetch_with_certificate(alpha, &bad_cert, &bad_key, proto).expect_err("refused");
        assert!(e.contains("uthentication failed") || e.contains("-ERR"), "{proto}: {e}");
    }
}
