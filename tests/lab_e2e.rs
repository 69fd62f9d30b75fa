//! End to end on the lab: real Postfix, Dovecot and pecora on loopback, real clients
//! (swaks over STARTTLS and SMTPS with AUTH, Python's imaplib and poplib over TLS), every
//! resulting message checked with `openssl smime -verify`.

use std::process::Command;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

#[test]
fn pec_submission_to_an_ordinary_domain_over_starttls_and_smtps() {
    let lab = Lab::up();
    let (alpha, gamma) = (lab.alpha(), lab.gamma());
    let sender = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let paolo = gamma["users"][0]["address"].as_str().unwrap().to_string();

    for (tls, subj) in [("starttls", "Prova STARTTLS"), ("smtps", "Prova SMTPS")] {
        let out = lab.send(
            alpha,
            tls,
            0,
            &sender,
            &[&paolo],
            &[("Subject", subj)],
            "Buongiorno.",
        );
        assert!(
            out.status.success(),
            "{tls}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // gamma receives the signed transport envelopes, read back over IMAPS and POP3S.
    let want = |m: &[Vec<u8>]| m.len() >= 2;
    for proto in ["imaps", "pop3s"] {
        let msgs = lab.wait_for(gamma, &gamma["users"][0], proto, want);
        let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
        assert!(
            subjects.contains(&"POSTA CERTIFICATA: Prova STARTTLS".to_string()),
            "{proto}: {subjects:?}"
        );
        assert!(
            subjects.contains(&"POSTA CERTIFICATA: Prova SMTPS".to_string()),
            "{proto}: {subjects:?}"
        );
        for m in &msgs {
            let text = String::from_utf8_lossy(m);
            assert!(text.contains("X-Trasporto: posta-certificata"));
            assert!(text.contains("Per conto di: mario.rossi@pec.alpha.test"));
            lab.smime_verify(m);
        }
    }

    // The sender gets one signed acceptance per message, tagging gamma "posta ordinaria".
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| m.len() >= 2);
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert!(
        subjects.contains(&"ACCETTAZIONE: Prova STARTTLS".to_string()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"ACCETTAZIONE: Prova SMTPS".to_string()),
        "{subjects:?}"
    );
    for m in &msgs {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains("X-Ricevuta: accettazione"));
        assert!(text.contains("posta ordinaria"), "{text}");
        lab.smime_verify(m);
    }

    // The registry has the whole story, and its chain verifies.
    let config = Lab::path(&alpha["config_file"]);
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(&config)
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Prova STARTTLS") && text.contains("Prova SMTPS"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(&config)
        .args(["log", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "log verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn spoofed_sender_is_refused_and_gets_a_signed_notice() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let login = alpha["users"][0]["address"].as_str().unwrap();
    let other = alpha["users"][1]["address"].as_str().unwrap();
    let paolo = lab.gamma()["users"][0]["address"].as_str().unwrap();
    let out = lab.send(
        alpha,
        "starttls",
        0,
        login,
        &[paolo],
        &[("From", other), ("Subject", "Falso")],
        "x",
    );
    assert!(!out.status.success());
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        transcript.contains("5.7.1") && transcript.contains(other),
        "{transcript}"
    );
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(msgs.len(), 1);
    assert_eq!(subject(&msgs[0]), "AVVISO DI NON ACCETTAZIONE: Falso");
    lab.smime_verify(&msgs[0]);
    // Nothing reached the other mailbox or gamma.
    assert!(lab.fetch(alpha, &alpha["users"][1], "imaps").is_empty());
}

#[test]
fn with_pecora_down_postfix_tempfails_and_nothing_passes() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    lab.stop_pecora(alpha);
    let login = alpha["users"][0]["address"].as_str().unwrap();
    let paolo = lab.gamma()["users"][0]["address"].as_str().unwrap();
    // Both access listeners answer 4xx: milter_default_action = tempfail.
    for tls in ["starttls", "smtps"] {
        let out = lab.send(
            alpha,
            tls,
            0,
            login,
            &[paolo],
            &[("Subject", "Senza pecora")],
            "x",
        );
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{tls}: {transcript}");
        // swaks marks a failure `<**` (or `<~*` inside TLS): it must be a 4xx, never a 5xx.
        let failures: Vec<&str> = transcript
            .lines()
            .filter(|l| l.starts_with("<** ") || l.starts_with("<~* "))
            .collect();
        assert!(
            !failures.is_empty() && failures.iter().all(|l| l[4..].starts_with('4')),
            "{tls}: a temporary failure, not a refusal: {transcript}"
        );
        assert!(!transcript.contains("queued as"), "{tls}: {transcript}");
    }
    // The MX listener too: mail from gamma stays in gamma's queue, deferred with a 4xx.
    let gamma = lab.gamma();
    let out = lab.send(
        gamma,
        "starttls",
        0,
        paolo,
        &[login],
        &[("Subject", "Verso alpha")],
        "x",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let maillog = Lab::path(&gamma["maillog"]);
    let start = std::time::Instant::now();
    while !Lab::log(&maillog).contains("status=deferred") && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = Lab::log(&maillog);
    let deferred = log
        .lines()
        .find(|l| l.contains("status=deferred"))
        .unwrap_or_default();
    assert!(
        deferred.contains(" 451 4.7.1 "),
        "gamma's delivery to alpha is deferred: {log}"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    lab.flush();
    assert!(
        lab.fetch(gamma, &gamma["users"][0], "imaps").is_empty(),
        "nothing passed through"
    );
    assert!(
        lab.fetch(alpha, &alpha["users"][0], "imaps").is_empty(),
        "nothing passed through"
    );
}

#[test]
fn only_pecora_may_use_the_injection_listener() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let socket = Lab::inject_socket(alpha).to_string_lossy().into_owned();
    let rcpt = alpha["users"][0]["address"].as_str().unwrap();
    // pecora's user (root in the lab) is served: the listener works and takes the recipient.
    let out = Command::new("swaks")
        .args([
            "--socket",
            &socket,
            "--from",
            "posta-certificata@pec.alpha.test",
            "--to",
            rcpt,
            "--quit-after",
            "RCPT",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("<-  250 2.1.5"),
        "{said}"
    );
    // Another local user cannot even connect.
    let out = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            "swaks",
            "--socket",
            &socket,
            "--from",
            "posta-certificata@pec.alpha.test",
            "--to",
            rcpt,
        ])
        .args([
            "--header",
            "X-Ricevuta: avvenuta-consegna",
            "--header",
            "Subject: CONSEGNA: falso",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Permission denied"), "{said}");
    // The lab's own directories are open to everyone: the barrier is Postfix's public/.
    let public = std::path::Path::new(&socket).parent().unwrap();
    let ok = Command::new("runuser")
        .args(["-u", "nobody", "--", "ls"])
        .arg(public.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "nobody can reach the queue directory itself"
    );
    // pecora's user sends a whole message afterwards: once it is in the mailbox, the
    // listener has delivered what it was given, and the forged receipt is not there.
    let out = Command::new("swaks")
        .args(["--socket", &socket, "--from", "posta-certificata@pec.alpha.test", "--to", rcpt])
        .args(["--header", "Subject: Ammesso"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| !m.is_empty());
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, ["Ammesso"]);
}

#[test]
fn pec_between_two_providers_and_within_one() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let anna = alpha["users"][1]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    for (tls, subj) in [
        ("starttls", "Tra gestori STARTTLS"),
        ("smtps", "Tra gestori SMTPS"),
    ] {
        let out = lab.send(
            alpha,
            tls,
            0,
            &mario,
            &[&luca, &anna],
            &[("To", &format!("{luca}, {anna}")), ("Subject", subj)],
            "Buongiorno.",
        );
        assert!(
            out.status.success(),
            "{tls}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // beta verified the envelopes and delivered them: read over IMAPS and POP3S.
    for proto in ["imaps", "pop3s"] {
        let msgs = lab.wait_for(beta, &beta["users"][0], proto, |m| m.len() >= 2);
        let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
        assert!(
            subjects.contains(&"POSTA CERTIFICATA: Tra gestori STARTTLS".into()),
            "{proto}: {subjects:?}"
        );
        assert!(
            subjects.contains(&"POSTA CERTIFICATA: Tra gestori SMTPS".into()),
            "{proto}: {subjects:?}"
        );
        msgs.iter().for_each(|m| lab.smime_verify(m));
    }
    // alpha's own recipient got them too (same provider, decisions.md 7).
    let msgs = lab.wait_for(alpha, &alpha["users"][1], "imaps", |m| m.len() >= 2);
    assert_eq!(msgs.len(), 2);
    // alpha's service mailbox gets a presa in carico from beta and one from alpha itself,
    // per message; every one signed.
    let msgs = lab.wait_for(alpha, &alpha["service"], "imaps", |m| m.len() >= 4);
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.starts_with("PRESA IN CARICO: Tra gestori"))
            .count(),
        4,
        "{subjects:?}"
    );
    msgs.iter().for_each(|m| lab.smime_verify(m));
    let from_beta = msgs
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("posta-certificata@pec.beta.test"))
        .count();
    assert_eq!(from_beta, 2);
    // The sender has both acceptances.
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "pop3s", |m| m.len() >= 2);
    assert_eq!(
        msgs.iter()
            .filter(|m| subject(m).starts_with("ACCETTAZIONE: Tra gestori"))
            .count(),
        2
    );
    // Between the providers mail went over STARTTLS, each verifying the other's certificate.
    for (from, to) in [(alpha, beta), (beta, alpha)] {
        let log = Lab::log(&Lab::path(&from["maillog"]));
        let verified = format!(
            "Verified TLS connection established to 127.0.0.1[127.0.0.1]:{}",
            to["smtp_port"]
        );
        assert!(
            log.contains(&verified),
            "{} -> {}: {log}",
            from["domain"],
            to["domain"]
        );
    }

    // An IMAP APPEND never counts as a delivery: giulia appends a copy of the genuine
    // envelope luca received into her own INBOX; no CONSEGNA names her for it. The proof
    // that the delivery pipeline ran after the APPEND: a message really sent to her
    // afterwards brings its CONSEGNA naming her.
    let giulia = &beta["users"][1];
    let giulia_addr = giulia["address"].as_str().unwrap().to_string();
    let envelope = lab
        .fetch(beta, &beta["users"][0], "imaps")
        .into_iter()
        .find(|m| subject(m) == "POSTA CERTIFICATA: Tra gestori STARTTLS")
        .expect("luca's envelope");
    let copy = lab.dir.path().join("append.eml");
    std::fs::write(&copy, &envelope).unwrap();
    let append = r#"
import imaplib, ssl, sys
host, port, user, password, cafile, path = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
with imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx) as m:
    m.login(user, password)
    typ, data = m.append("INBOX", None, None, open(path, "rb").read())
    assert typ == "OK", data
"#;
    let out = Command::new("python3")
        .args(["-c", append, "127.0.0.1", &beta["imaps_port"].to_string(), &giulia_addr])
        .arg(giulia["password"].as_str().unwrap())
        .arg(Lab::path(&beta["ca_file"]))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "IMAP APPEND: {}", String::from_utf8_lossy(&out.stderr));
    let appended = lab.fetch(beta, giulia, "imaps");
    assert_eq!(appended.len(), 1, "the APPEND stored the copy");
    let out = lab.send(alpha, "starttls", 0, &mario, &[&giulia_addr], &[("Subject", "Dopo l'APPEND")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        m.iter().any(|x| subject(x) == "CONSEGNA: Dopo l'APPEND")
    });
    let consegne: Vec<&Vec<u8>> = msgs.iter().filter(|m| subject(m).starts_with("CONSEGNA: ")).collect();
    let naming_giulia: Vec<String> = consegne
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains(&giulia_addr))
        .map(|m| subject(m))
        .collect();
    assert_eq!(naming_giulia, ["CONSEGNA: Dopo l'APPEND"], "an APPEND is no delivery");
}

#[test]
fn ordinary_and_forged_mail_reaches_a_pec_mailbox_only_as_an_anomaly() {
    let lab = Lab::up();
    let (beta, gamma) = (lab.beta(), lab.gamma());
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let out = lab.send(
        gamma,
        "starttls",
        0,
        paolo,
        &[luca],
        &[("Subject", "Posta ordinaria")],
        "ciao",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A forged receipt: PEC headers, no valid signature.
    let forged = [
        ("Subject", "CONSEGNA: Contratto"),
        ("X-Ricevuta", "avvenuta-consegna"),
        ("From", "posta-certificata@pec.alpha.test"),
    ];
    let out = lab.send(gamma, "starttls", 0, paolo, &[luca], &forged, "falso");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let msgs = lab.wait_for(beta, &beta["users"][0], "imaps", |m| m.len() >= 2);
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        let text = String::from_utf8_lossy(m);
        assert!(
            subject(m).starts_with("ANOMALIA MESSAGGIO: "),
            "{}",
            subject(m)
        );
        assert!(text.contains("X-Trasporto: errore"));
        lab.smime_verify(m);
    }
    // The forgery never reaches the mailbox as a receipt: its X-Ricevuta is only inside.
    let forged_msg = msgs
        .iter()
        .find(|m| subject(m).contains("CONSEGNA: Contratto"))
        .expect("forged one wrapped");
    let text = String::from_utf8_lossy(forged_msg);
    let top = text.split("\r\n\r\n").next().unwrap();
    assert!(!top.contains("X-Ricevuta"), "{top}");
}
