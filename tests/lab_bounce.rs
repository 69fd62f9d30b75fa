//! decisions.md 19 on the lab: a Postfix bounce becomes a signed errore-consegna only when it
//! returns an envelope we sent or took in charge (its queue id, envelope sender and
//! Final-Recipient as recorded), never because of what the bounced message's author wrote.
//!
//! The attack (issue 13, item 1): an outsider with no account sends ordinary mail whose
//! Message-ID is the PEC identifier of a real transaction, with `ORCPT=rfc822;<a real
//! recipient of it>`, to a mailbox whose delivery fails. Before, the provider's own bounce
//! of that mail was matched to the transaction by Message-ID and Original-Recipient, and the
//! real sender got a signed AVVISO DI MANCATA CONSEGNA for a recipient who had the message
//! and a CONSEGNA.
//!
//! Since the shipped main.cf offers no DSN, Postfix refuses the ORCPT itself (501 5.7.1):
//! the outsider's client tries it, then sends without it, and the Message-ID attack goes on;
//! Postfix's bounce then names the address of the RCPT as Original-Recipient.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject, top_headers};

/// One top-level header of a raw message, unfolded, or "".
fn header(raw: &[u8], name: &str) -> String {
    let top = top_headers(raw).replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " ");
    top.lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default()
}

/// daticert.xml of a signed notice (its <consegna>, the recipient it names).
fn consegna(raw: &[u8]) -> String {
    let msg = mail_parser::MessageParser::default().parse(raw).expect("a MIME message");
    use mail_parser::MimeHeaders;
    let xml = msg
        .parts
        .iter()
        .find(|p| p.attachment_name() == Some("daticert.xml"))
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .unwrap_or_default();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("daticert: {e}\n{xml}"));
    doc.descendants().find(|n| n.has_tag_name("consegna")).and_then(|n| n.text()).unwrap_or_default().to_string()
}

/// A plain SMTP client on a provider's MX, as anyone on the Internet: no TLS, no AUTH.
/// `rcpts` are `(address, ORCPT)`: an ORCPT is refused (the MX offers no DSN), and the
/// recipient is given again without it. Returns the transcript; panics unless the message
/// was accepted.
fn smtp_as_outsider(port: u64, mail_from: &str, rcpts: &[(&str, Option<&str>)], message: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port as u16)).expect("connect to the MX");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut transcript = String::new();
    let mut read = |transcript: &mut String| -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("read a reply");
            transcript.push_str("<- ");
            transcript.push_str(&line);
            let done = line.len() < 4 || line.as_bytes()[3] != b'-';
            reply.push_str(&line);
            if done || line.is_empty() {
                return reply;
            }
        }
    };
    let say = |w: &mut TcpStream, transcript: &mut String, line: &str| {
        transcript.push_str(&format!("-> {line}\n"));
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    };
    let expect = |reply: &str, code: &str, transcript: &str| {
        assert!(reply.starts_with(code), "expected {code}:\n{transcript}");
    };
    let greeting = read(&mut transcript);
    expect(&greeting, "220", &transcript);
    say(&mut w, &mut transcript, "EHLO outsider.example");
    let ehlo = read(&mut transcript);
    expect(&ehlo, "250", &transcript);
    assert!(!ehlo.lines().any(|l| l.get(4..).is_some_and(|k| k.trim() == "DSN")), "the MX offers DSN: {transcript}");
    say(&mut w, &mut transcript, &format!("MAIL FROM:<{mail_from}>"));
    let reply = read(&mut transcript);
    expect(&reply, "250", &transcript);
    for (rcpt, orcpt) in rcpts {
        if let Some(o) = orcpt {
            say(&mut w, &mut transcript, &format!("RCPT TO:<{rcpt}> ORCPT=rfc822;{o}"));
            let reply = read(&mut transcript);
            expect(&reply, "501 5.7.1", &transcript);
        }
        say(&mut w, &mut transcript, &format!("RCPT TO:<{rcpt}>"));
        let reply = read(&mut transcript);
        expect(&reply, "250", &transcript);
    }
    say(&mut w, &mut transcript, "DATA");
    let reply = read(&mut transcript);
    expect(&reply, "354", &transcript);
    let body = message.replace("\r\n", "\n").replace('\n', "\r\n");
    transcript.push_str("-> (message)\n");
    w.write_all(body.as_bytes()).unwrap();
    say(&mut w, &mut transcript, ".");
    let reply = read(&mut transcript);
    expect(&reply, "250", &transcript);
    say(&mut w, &mut transcript, "QUIT");
    let _ = read(&mut transcript);
    transcript
}

/// Rows of one event type in a provider's registry.
fn registry_count(host: &serde_json::Value, event_type: &str) -> usize {
    let out = Command::new("sqlite3")
        .arg(Lab::path(&host["registry"]["path_or_url"]))
        .arg(format!("SELECT count(*) FROM registry_events WHERE event_type = '{event_type}'"))
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_provoked_bounce_never_becomes_an_errore_consegna_for_a_real_transaction() {
    let lab = Lab::up();
    let (alpha, beta, gamma) = (lab.alpha(), lab.beta(), lab.gamma());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let giulia = beta["users"][1]["address"].as_str().unwrap().to_string();
    let paolo = gamma["users"][0]["address"].as_str().unwrap().to_string();

    // A real transaction: mario -> luca, delivered, with its CONSEGNA.
    let out = lab.send(alpha, "starttls", 0, &mario, &[&luca], &[("Subject", "Contratto")], "Il contratto firmato.");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // (The ACCETTAZIONE waits for qmgr's line in alpha's mail log: issue 13 item 11 on a
    // real Postfix, whose syslog_name pecora finds by itself.)
    let both = |m: &[Vec<u8>]| ["ACCETTAZIONE: Contratto", "CONSEGNA: Contratto"].iter().all(|s| m.iter().any(|m| subject(m) == *s));
    let at_mario = lab.wait_for(alpha, &alpha["users"][0], "imaps", both);
    assert!(both(&at_mario), "{:?}", at_mario.iter().map(|m| subject(m)).collect::<Vec<_>>());
    let at_luca = lab.fetch(beta, &beta["users"][0], "imaps");
    let envelope = at_luca.iter().find(|m| subject(m) == "POSTA CERTIFICATA: Contratto").expect("luca has the envelope");
    // The PEC identifier, as any recipient of the envelope sees it.
    let pec_id = header(envelope, "Message-ID");
    assert!(pec_id.starts_with('<') && pec_id.ends_with("@pec.alpha.test>"), "{pec_id}");

    // The attack, on both providers: ordinary mail from an outsider, carrying the PEC id as
    // its Message-ID, to piena@ (1 KB quota: delivery fails), trying ORCPT naming luca.
    let forged = |to: &str| {
        format!(
            "From: {paolo}\nTo: {to}\nSubject: Provocazione\nMessage-ID: {pec_id}\nDate: Sat, 5 Dec 2026 10:00:00 +0100\n\n{}\n",
            "Posta ordinaria che non entra nella casella.\n".repeat(60)
        )
    };
    // At beta, the recipient's provider (it took the envelope in charge); giulia also gets
    // the anomaly, so its identifier can be read.
    let transcript = smtp_as_outsider(
        beta["smtp_port"].as_u64().unwrap(),
        &paolo,
        &[("piena@pec.beta.test", Some(&luca)), (&giulia, Some(&luca))],
        &forged("piena@pec.beta.test"),
    );
    // At alpha, the sender's provider (it accepted the envelope).
    let transcript_alpha = smtp_as_outsider(
        alpha["smtp_port"].as_u64().unwrap(),
        &paolo,
        &[("piena@pec.alpha.test", Some(&luca))],
        &forged("piena@pec.alpha.test"),
    );

    // Both bounces reach the outsider as the plain DSNs they are: not discarded, not signed.
    let start = Instant::now();
    let mut at_paolo = Vec::new();
    while start.elapsed() < Duration::from_secs(90) {
        at_paolo = lab.fetch(gamma, &gamma["users"][0], "imaps");
        if at_paolo.iter().filter(|m| subject(m).starts_with("Undelivered Mail")).count() >= 2 {
            break;
        }
        lab.flush();
        std::thread::sleep(Duration::from_millis(500));
    }
    let dsns: Vec<&Vec<u8>> = at_paolo.iter().filter(|m| subject(m).starts_with("Undelivered Mail")).collect();
    assert_eq!(
        dsns.len(),
        2,
        "{:?}\nbeta:\n{transcript}\nalpha:\n{transcript_alpha}\nbeta's pecora:\n{}\nalpha's pecora:\n{}",
        at_paolo.iter().map(|m| subject(m)).collect::<Vec<_>>(),
        Lab::log(&Lab::path(&beta["pecora_log"])),
        Lab::log(&Lab::path(&alpha["pecora_log"])),
    );
    for d in &dsns {
        let top = top_headers(d);
        assert!(top.contains("multipart/report"), "{top}");
        assert!(!top.contains("X-Ricevuta") && !top.contains("multipart/signed"), "{top}");
    }
    let text = Lab::log(&Lab::path(&beta["pecora_log"]));
    assert!(text.contains("bounce not bound to a transport envelope of ours"), "{text}");

    // The anomaly giulia got has an identifier of its own, not the transaction's.
    let at_giulia = lab.wait_for(beta, &beta["users"][1], "imaps", |m| !m.is_empty());
    let anomaly = at_giulia.iter().find(|m| subject(m) == "ANOMALIA MESSAGGIO: Provocazione").expect("giulia has the anomaly");
    let anomaly_id = header(anomaly, "Message-ID");
    assert!(anomaly_id.ends_with("@pec.beta.test>") && anomaly_id != pec_id, "{anomaly_id} vs {pec_id}");

    // An unbound bounce to one of our PEC mailboxes (the outsider wrote giulia's address
    // as MAIL FROM) is ordinary mail: it arrives wrapped in a busta di anomalia, no receipt.
    smtp_as_outsider(beta["smtp_port"].as_u64().unwrap(), &giulia, &[("piena@pec.beta.test", Some(&luca))], &forged("piena@pec.beta.test"));
    let is_wrapped_dsn = |m: &Vec<u8>| subject(m).starts_with("ANOMALIA MESSAGGIO: Undelivered Mail");
    let at_giulia = lab.wait_for(beta, &beta["users"][1], "imaps", |m| m.iter().any(is_wrapped_dsn));
    let wrapped = at_giulia.iter().find(|m| is_wrapped_dsn(m)).unwrap_or_else(|| {
        panic!("{:?}\n{}", at_giulia.iter().map(|m| subject(m)).collect::<Vec<_>>(), Lab::log(&Lab::path(&beta["pecora_log"])))
    });
    assert_eq!(header(wrapped, "X-Trasporto"), "errore");
    assert!(header(wrapped, "X-Ricevuta").is_empty());
    // To a mailbox that refuses ordinary mail, it is dropped (and recorded), not refused:
    // a refusal of Postfix's own bounce would reach nobody and keep it in the queue.
    let config = Lab::path(&beta["config_file"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[policy.mailboxes.\"{luca}\"]\nordinary_mail = \"refuse\"\n"));
    std::fs::write(&config, text).unwrap();
    lab.reload_pecora(beta);
    smtp_as_outsider(beta["smtp_port"].as_u64().unwrap(), &luca, &[("piena@pec.beta.test", Some(&luca))], &forged("piena@pec.beta.test"));
    let unbound = || Lab::log(&Lab::path(&beta["pecora_log"])).matches("bounce not bound").count();
    let start = Instant::now();
    while unbound() < 3 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(unbound(), 3, "{}", Lab::log(&Lab::path(&beta["pecora_log"])));
    let start = Instant::now();
    let mut queue = lab.postfix_tool(beta, "postqueue", &["-j"]);
    while !queue.trim().is_empty() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(300));
        queue = lab.postfix_tool(beta, "postqueue", &["-j"]);
    }
    assert!(queue.trim().is_empty(), "nothing left in beta's queue: {queue}");
    let at_luca: Vec<String> = lab.fetch(beta, &beta["users"][0], "imaps").iter().map(|m| subject(m)).collect();
    assert_eq!(at_luca, ["POSTA CERTIFICATA: Contratto"]);
    let text = Lab::log(&Lab::path(&beta["pecora_log"]));
    assert!(text.contains("the mailbox accepts only certified mail: bounce discarded"), "{text}");

    // Genuine bounces of real envelopes still become signed errore-consegna: an over-quota
    // failure at beta (its bounce of the envelope it took in charge), a recipient refused at
    // RCPT (alpha's bounce of the envelope it sent).
    for (rcpt, subj) in [("piena@pec.beta.test", "Verso piena"), ("nessuno@pec.beta.test", "Verso nessuno")] {
        let out = lab.send(alpha, "starttls", 0, &mario, &[rcpt], &[("Subject", subj)], "x");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let avvisi = |m: &[Vec<u8>]| m.iter().filter(|m| subject(m).starts_with("AVVISO DI MANCATA CONSEGNA: ")).cloned().collect::<Vec<_>>();
    let at_mario = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| avvisi(m).len() >= 2);
    std::thread::sleep(Duration::from_secs(2));
    let at_mario = {
        let again = lab.fetch(alpha, &alpha["users"][0], "imaps");
        if again.len() >= at_mario.len() { again } else { at_mario }
    };
    let got = avvisi(&at_mario);
    let named: Vec<String> = got.iter().map(|m| consegna(m)).collect();
    let subjects: Vec<String> = got.iter().map(|m| subject(m)).collect();
    // Exactly the two genuine failures: nothing names luca, nothing is about "Contratto".
    assert_eq!(got.len(), 2, "{subjects:?} {named:?}");
    assert!(named.contains(&"piena@pec.beta.test".to_string()) && named.contains(&"nessuno@pec.beta.test".to_string()), "{named:?}");
    assert!(!named.iter().any(|n| n.eq_ignore_ascii_case(&luca)), "{named:?}");
    assert!(!subjects.iter().any(|s| s.contains("Contratto")), "{subjects:?}");
    for m in &got {
        lab.smime_verify(m);
    }
    // The registries agree: one non-delivery at each provider, the genuine one.
    assert_eq!(registry_count(beta, "non-delivery"), 1);
    assert_eq!(registry_count(alpha, "non-delivery"), 1);
    // luca's transaction stays delivered.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&alpha["config_file"]))
        .args(["log", "search", "--json", "--subject", "Contratto"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!log.contains("non-delivery") && !log.contains("non_delivery"), "{log}");
}
