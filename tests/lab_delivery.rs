//! The delivery point on the lab (issue: delivery and non-delivery receipts): real Postfix,
//! real Dovecot with pecora's Lua hook, real pecora on two providers. Every receipt is read
//! back over IMAPS, checked with `openssl smime -verify`, and parsed with mail-parser.

use std::process::Command;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders, PartType};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

/// What a receipt says, read with mail-parser from its signed content.
#[derive(Debug)]
struct Receipt {
    subject: String,
    from: String,
    x_ricevuta: String,
    x_tipo_ricevuta: Option<String>,
    daticert: String,
    /// postacert.eml, when attached.
    postacert: Option<Vec<u8>>,
}

fn header(msg: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    msg.headers()
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .and_then(|h| h.value.as_text().map(|s| s.trim().to_string()))
}

fn read_receipt(raw: &[u8]) -> Receipt {
    let outer = MessageParser::default().parse(raw).expect("a MIME message");
    let mut daticert = String::new();
    let mut postacert = None;
    for part in outer.parts.iter() {
        match part.attachment_name() {
            Some("daticert.xml") => daticert = String::from_utf8_lossy(part.contents()).into_owned(),
            Some("postacert.eml") => {
                postacert = Some(match &part.body {
                    PartType::Message(m) => m.raw_message().to_vec(),
                    _ => part.contents().to_vec(),
                })
            }
            _ => {}
        }
    }
    Receipt {
        subject: subject(raw),
        from: outer.from().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or_default().to_string(),
        x_ricevuta: header(&outer, "X-Ricevuta").unwrap_or_default(),
        x_tipo_ricevuta: header(&outer, "X-TipoRicevuta"),
        daticert,
        postacert,
    }
}

/// The text of one element of daticert.xml.
fn element(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants().find(|n| n.has_tag_name(name)).and_then(|n| n.text()).map(str::to_string)
}

fn attribute(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.root_element().attribute(name).map(str::to_string)
}

fn receipts(msgs: &[Vec<u8>], prefix: &str) -> Vec<Receipt> {
    msgs.iter().filter(|m| subject(m).starts_with(prefix)).map(|m| read_receipt(m)).collect()
}

fn sha1sum(path: &std::path::Path) -> String {
    let out = Command::new("sha1sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn delivery_receipts_follow_the_requested_type_and_to_cc() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let giulia = beta["users"][1]["address"].as_str().unwrap().to_string();
    let attachment = lab.dir.path().join("contratto.pdf");
    let mut content = b"%PDF-1.4\n% contratto di prova\n".to_vec();
    content.extend((0..4000u32).map(|i| (i * 7 % 251) as u8));
    std::fs::write(&attachment, &content).unwrap();
    let digest = sha1sum(&attachment);
    let attach = format!("@{}", attachment.display());

    for (tipo, subj) in [(None, "Consegna completa"), (Some("breve"), "Consegna breve"), (Some("sintetica"), "Consegna sintetica")] {
        let mut headers = vec![("To", luca.as_str()), ("Cc", giulia.as_str()), ("Subject", subj)];
        if let Some(t) = tipo {
            headers.push(("X-TipoRicevuta", t));
        }
        let out = lab.send_with(
            alpha,
            "starttls",
            0,
            &mario,
            &[&luca, &giulia],
            &headers,
            "In allegato il contratto.",
            &["--attach-type", "application/pdf", "--attach", &attach],
        );
        assert!(out.status.success(), "{subj}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    // Three messages, two recipients each: six delivery receipts for mario.
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| receipts(m, "CONSEGNA: ").len() >= 6);
    let got = receipts(&msgs, "CONSEGNA: ");
    assert_eq!(got.len(), 6, "{:?}", msgs.iter().map(|m| subject(m)).collect::<Vec<_>>());
    for m in msgs.iter().filter(|m| subject(m).starts_with("CONSEGNA: ")) {
        lab.smime_verify(m);
    }
    let find = |subj: &str, who: &str| {
        got.iter()
            .find(|r| r.subject == format!("CONSEGNA: {subj}") && element(&r.daticert, "consegna").as_deref() == Some(who))
            .unwrap_or_else(|| panic!("no receipt for {subj} / {who}: {got:#?}"))
    };
    for r in &got {
        assert_eq!(r.x_ricevuta, "avvenuta-consegna");
        assert!(r.from.contains("posta-certificata@pec.beta.test"), "{}", r.from);
        assert_eq!(attribute(&r.daticert, "tipo").as_deref(), Some("avvenuta-consegna"));
        assert_eq!(element(&r.daticert, "mittente").as_deref(), Some(mario.as_str()));
        assert_eq!(element(&r.daticert, "gestore-emittente").as_deref(), Some("Beta PEC S.p.A."), "{}", r.daticert);
    }

    // completa (requested or by default): To gets the whole message, Cc a sintetica.
    let r = find("Consegna completa", &luca);
    assert_eq!(r.x_tipo_ricevuta.as_deref(), Some("completa"));
    let original = r.postacert.as_ref().expect("completa carries postacert.eml");
    let parsed = MessageParser::default().parse(original).unwrap();
    let att = parsed.attachments().find(|a| a.attachment_name() == Some("contratto.pdf")).expect("the attachment");
    assert_eq!(att.contents(), &content[..]);
    let r = find("Consegna completa", &giulia);
    assert_eq!(r.x_tipo_ricevuta.as_deref(), Some("sintetica"));
    assert!(r.postacert.is_none());

    // breve: the attachment is replaced by its SHA-1, as sha1sum prints it.
    let r = find("Consegna breve", &luca);
    assert_eq!(r.x_tipo_ricevuta.as_deref(), Some("breve"));
    let original = r.postacert.as_ref().expect("breve carries the hashed message");
    let parsed = MessageParser::default().parse(original).unwrap();
    assert!(parsed.attachments().all(|a| a.attachment_name() != Some("contratto.pdf")));
    let hash = parsed
        .attachments()
        .find(|a| a.attachment_name() == Some("contratto.pdf.hash"))
        .expect("contratto.pdf.hash");
    assert_eq!(String::from_utf8_lossy(hash.contents()).trim().to_ascii_lowercase(), digest);
    assert_eq!(find("Consegna breve", &giulia).x_tipo_ricevuta.as_deref(), Some("sintetica"));

    // sintetica: everybody.
    for who in [&luca, &giulia] {
        let r = find("Consegna sintetica", who);
        assert_eq!(r.x_tipo_ricevuta.as_deref(), Some("sintetica"));
        assert!(r.postacert.is_none());
    }

    // Exactly once: nothing more arrives, and the spool is empty.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receipts(&lab.fetch(alpha, &alpha["users"][0], "imaps"), "CONSEGNA: ").len(), 6);
    let spool = Lab::path(&beta["delivery_spool"]).join("new");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);

    // beta's registry holds the six deliveries, and its chain verifies.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&beta["config_file"]))
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("\"event_type\": \"delivery\"").count(), 6, "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&beta["config_file"]))
        .args(["log", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // alpha's registry tells the whole story of one message: accepted, taken in charge
    // and delivered (the receipts it received, decisions.md 14).
    let receipt = got.iter().find(|r| r.subject == "CONSEGNA: Consegna breve").unwrap();
    let pec_id = element(&receipt.daticert, "identificativo").expect("identificativo");
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&alpha["config_file"]))
        .args(["log", "show", &pec_id])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{history}{}", String::from_utf8_lossy(&out.stderr));
    for step in ["acceptance", "take-charge-received", "delivery-receipt-received"] {
        assert!(history.contains(step), "{step} missing from the history:\n{history}");
    }

    // Someone edits a delivery row behind pecora's back (sqlite3, as root could): the
    // chain names the row.
    let db = Lab::path(&beta["registry"]["path_or_url"]);
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE registry_events SET recipients = '[\"altro@pec.beta.test\"]' WHERE seq = (SELECT min(seq) FROM registry_events WHERE event_type = 'delivery'); SELECT min(seq) FROM registry_events WHERE event_type = 'delivery';")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seq = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&beta["config_file"]))
        .args(["log", "verify"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("row {seq}")) || said.contains(&format!("seq {seq}")), "{said}");
}

#[test]
fn undeliverable_envelopes_bring_a_signed_errore_consegna_and_no_plain_dsn() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    // Unknown to beta's Postfix: refused at RCPT, so alpha's own bounce is converted.
    let nobody = "nessuno@pec.beta.test";
    // Known to beta's Postfix, unknown to its Dovecot: LMTP refuses it at beta, whose
    // bounce beta converts (decisions.md 13).
    let absent = "assente@pec.beta.test";
    for (rcpt, subj) in [(nobody, "Verso nessuno"), (absent, "Verso assente")] {
        let out = lab.send(alpha, "starttls", 0, &mario, &[rcpt], &[("Subject", subj)], "x");
        assert!(out.status.success(), "{subj}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        receipts(m, "AVVISO DI MANCATA CONSEGNA: ").len() >= 2
    });
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    let got = receipts(&msgs, "AVVISO DI MANCATA CONSEGNA: ");
    assert_eq!(got.len(), 2, "{subjects:?}");
    for m in msgs.iter().filter(|m| subject(m).starts_with("AVVISO DI MANCATA CONSEGNA: ")) {
        lab.smime_verify(m);
    }
    let by = |who: &str| {
        got.iter()
            .find(|r| element(&r.daticert, "consegna").as_deref() == Some(who))
            .unwrap_or_else(|| panic!("no errore-consegna for {who}: {got:#?}"))
    };
    let r = by(nobody);
    assert_eq!(r.subject, "AVVISO DI MANCATA CONSEGNA: Verso nessuno");
    assert_eq!(r.x_ricevuta, "errore-consegna");
    assert!(r.from.contains("posta-certificata@pec.alpha.test"), "the sender's provider emits it: {}", r.from);
    assert_eq!(attribute(&r.daticert, "errore").as_deref(), Some("no-dest"), "{}", r.daticert);
    let esteso = element(&r.daticert, "errore-esteso").unwrap_or_default();
    assert!(esteso.starts_with("5.1.1 - "), "{esteso}");
    let r = by(absent);
    assert_eq!(r.subject, "AVVISO DI MANCATA CONSEGNA: Verso assente");
    assert!(r.from.contains("posta-certificata@pec.beta.test"), "the recipient's delivery point emits it: {}", r.from);
    assert_eq!(attribute(&r.daticert, "errore").as_deref(), Some("no-dest"), "{}", r.daticert);
    // The plain DSNs never reached the sender.
    std::thread::sleep(Duration::from_secs(2));
    let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert!(
        !msgs.iter().any(|m| subject(m).contains("Undelivered Mail")),
        "{:?}",
        msgs.iter().map(|m| subject(m)).collect::<Vec<_>>()
    );
    assert_eq!(receipts(&msgs, "AVVISO DI MANCATA CONSEGNA: ").len(), 2);
    // alpha's transaction state knows both failures.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&alpha["config_file"]))
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"non_delivery\"") || text.contains("\"non-delivery\""), "{text}");
}

/// The instant a daticert.xml certifies (`<data zona><giorno><ora>`).
fn certified_instant(xml: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let doc = roxmltree::Document::parse(xml).expect("daticert.xml");
    let data = doc.descendants().find(|n| n.has_tag_name("data")).expect("<data>");
    let text = |name: &str| data.children().find(|n| n.has_tag_name(name)).and_then(|n| n.text()).unwrap_or_default().to_string();
    let s = format!("{} {} {}", text("giorno"), text("ora"), data.attribute("zona").unwrap_or_default());
    chrono::DateTime::parse_from_str(&s, "%d/%m/%Y %H:%M:%S %z").unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Also issue 13, item 7: the certified delivery time is the time Dovecot saved the message,
/// not the event's `time=` nor its file's mtime, which whoever writes the spool can set.
#[test]
fn a_message_stored_while_pecora_is_down_gets_its_receipt_once_pecora_returns() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let giulia = beta["users"][1]["address"].as_str().unwrap().to_string();
    // beta takes the envelope in charge but holds it before delivery.
    lab.postfix_tool(beta, "postconf", &["-e", "defer_transports = lmtp"]);
    lab.postfix_tool(beta, "postfix", &["reload"]);
    let out = lab.send(alpha, "starttls", 0, &mario, &[&luca, &giulia], &[("Subject", "Dopo il riavvio")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let start = Instant::now();
    while lab.postfix_tool(beta, "postqueue", &["-j"]).trim().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "the envelope never reached beta's queue");
        std::thread::sleep(Duration::from_millis(200));
    }
    // pecora stops; Dovecot stores the message meanwhile.
    lab.stop_pecora(beta);
    lab.postfix_tool(beta, "postconf", &["-e", "defer_transports ="]);
    lab.postfix_tool(beta, "postfix", &["reload"]);
    let before_store = chrono::Utc::now();
    lab.postfix_tool(beta, "postqueue", &["-f"]);
    let stored = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(stored.len(), 1);
    assert_eq!(lab.wait_for(beta, &beta["users"][1], "imaps", |m| !m.is_empty()).len(), 1);
    let after_store = chrono::Utc::now();
    let spool = Lab::path(&beta["delivery_spool"]).join("new");
    let mut events: Vec<_> = std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().path()).collect();
    events.sort();
    assert_eq!(events.len(), 2, "the hook left one event per mailbox: {events:?}");
    let name_of = |p: &std::path::PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    // The hook's names: UIDVALIDITY.UID.TOKEN.USER~MESSAGEID.
    let for_luca = events.iter().find(|p| name_of(p).contains(&format!(".{luca}~"))).expect("luca's event").clone();
    let for_giulia = events.iter().find(|p| name_of(p).contains(&format!(".{giulia}~"))).expect("giulia's event").clone();
    let event = std::fs::read(&for_luca).unwrap();
    // Forged times, within a week (which pecora once took from the event): luca's event
    // loses its content (as for a pecora that may not read the hook's 0600 file: the file
    // name alone must do) and its mtime says two days ago; giulia's says `time=` three days
    // ago and its mtime a day ahead.
    let day = 86400;
    let now = chrono::Utc::now().timestamp();
    let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t as u64);
    std::fs::write(&for_luca, b"").unwrap();
    std::fs::File::options().write(true).open(&for_luca).unwrap().set_modified(at(now - 2 * day)).unwrap();
    let text = String::from_utf8(std::fs::read(&for_giulia).unwrap()).unwrap();
    let forged: String = text.lines().filter(|l| !l.starts_with("time=")).map(|l| format!("{l}\n")).collect::<String>() + &format!("time={}\n", now - 3 * day);
    std::fs::write(&for_giulia, forged).unwrap();
    std::fs::File::options().write(true).open(&for_giulia).unwrap().set_modified(at(now + day)).unwrap();
    // A link to giulia's event under another name (issue 13, item 8): set aside, not read.
    let link = spool.join(format!("{}.99.{giulia}", name_of(&for_giulia).split('.').next().unwrap()));
    std::os::unix::fs::symlink(&for_giulia, &link).unwrap();
    // Time passes before pecora returns, so the time of processing is not the time stored.
    std::thread::sleep(Duration::from_secs(8));
    assert!(receipts(&lab.fetch(alpha, &alpha["users"][0], "imaps"), "CONSEGNA: ").is_empty());

    // pecora returns: the receipts go, once each, dated when Dovecot stored the message.
    let restarted = chrono::Utc::now();
    lab.start_pecora(beta);
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| receipts(m, "CONSEGNA: ").len() >= 2);
    let got = receipts(&msgs, "CONSEGNA: ");
    assert_eq!(got.len(), 2);
    let slack = chrono::Duration::seconds(2);
    for r in &got {
        let t = certified_instant(&r.daticert);
        assert!(
            t >= before_store - slack && t <= after_store + slack && t < restarted - chrono::Duration::seconds(4),
            "CONSEGNA for {:?} certifies {t}, not the storage between {before_store} and {after_store} (pecora back at {restarted}):\n{}",
            element(&r.daticert, "consegna"),
            r.daticert
        );
    }
    // The registry's delivery events carry the same time.
    let db = Lab::path(&beta["registry"]["path_or_url"]);
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(&db)
        .arg("SELECT event_time FROM registry_events WHERE event_type = 'delivery'")
        .output()
        .unwrap();
    let rows: Vec<chrono::DateTime<chrono::Utc>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| chrono::DateTime::parse_from_rfc3339(l.trim()).unwrap_or_else(|e| panic!("{l}: {e}")).to_utc())
        .collect();
    assert_eq!(rows.len(), 2, "{}", String::from_utf8_lossy(&out.stderr));
    for t in rows {
        assert!(t >= before_store - slack && t <= after_store + slack, "registry delivery at {t}, stored between {before_store} and {after_store}");
    }
    let bad = Lab::path(&beta["delivery_spool"]).join("bad");
    assert!(std::fs::symlink_metadata(bad.join(name_of(&link))).is_ok_and(|m| m.file_type().is_symlink()), "the link was not set aside");

    // The event is replayed (the hook ran twice, or a person copied it back): nothing more.
    std::fs::write(&for_luca, &event).unwrap();
    let start = Instant::now();
    while for_luca.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "the replayed event was not consumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receipts(&lab.fetch(alpha, &alpha["users"][0], "imaps"), "CONSEGNA: ").len(), 2);
}

/// A one-request-at-a-time HTTP server that answers 200 and hands each request body over.
fn webhook_sink() -> (u16, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((n, v)) = line.split_once(':') {
                    if n.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send((request_line.trim().to_string(), body));
        }
    });
    (port, rx)
}

#[test]
fn new_pec_alerts_reach_an_ordinary_mailbox_and_a_webhook() {
    let lab = Lab::up();
    let (alpha, beta, gamma) = (lab.alpha(), lab.beta(), lab.gamma());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    let (port, hooks) = webhook_sink();
    let config = Lab::path(&beta["config_file"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[alerts.mailboxes.\"{luca}\"]\nemail = \"{paolo}\"\nwebhook = \"http://127.0.0.1:{port}/sms\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    lab.reload_pecora(beta);

    let out = lab.send(alpha, "starttls", 0, mario, &[luca], &[("Subject", "Con avviso")], "Riservato: non nell'avviso.");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The webhook: one POST with the facts, not the content.
    let (request_line, body) = hooks.recv_timeout(Duration::from_secs(60)).expect("the webhook was called");
    assert_eq!(request_line, "POST /sms HTTP/1.1");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["mailbox"], luca);
    assert_eq!(v["sender"], mario);
    assert_eq!(v["subject"], "Con avviso");
    assert!(!String::from_utf8_lossy(&body).contains("Riservato"));

    // The e-mail, in paolo's ordinary mailbox.
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(msgs.len(), 1);
    assert_eq!(subject(&msgs[0]), format!("Nuovo messaggio PEC da {mario}"));
    let text = String::from_utf8_lossy(&msgs[0]);
    assert!(text.contains("Oggetto: Con avviso") && !text.contains("Riservato"), "{text}");
    // Exactly once each.
    std::thread::sleep(Duration::from_secs(2));
    assert!(hooks.try_recv().is_err());
    assert_eq!(lab.fetch(gamma, &gamma["users"][0], "imaps").len(), 1);
}

#[test]
fn an_envelope_for_a_full_mailbox_brings_errore_consegna_from_the_recipients_provider() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    // piena@ has a 1 KB quota (lab/up); any envelope is larger.
    let out = lab.send(alpha, "starttls", 0, mario, &["piena@pec.beta.test"], &[("Subject", "Casella piena")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| !receipts(m, "AVVISO DI MANCATA CONSEGNA: ").is_empty());
    let got = receipts(&msgs, "AVVISO DI MANCATA CONSEGNA: ");
    assert_eq!(got.len(), 1, "{:?}", msgs.iter().map(|m| subject(m)).collect::<Vec<_>>());
    let r = &got[0];
    assert_eq!(r.subject, "AVVISO DI MANCATA CONSEGNA: Casella piena");
    assert!(r.from.contains("posta-certificata@pec.beta.test"), "{}", r.from);
    assert_eq!(attribute(&r.daticert, "errore").as_deref(), Some("altro"), "{}", r.daticert);
    let esteso = element(&r.daticert, "errore-esteso").unwrap_or_default();
    assert!(esteso.starts_with("5.2.2 - "), "{esteso}");
    assert!(!msgs.iter().any(|m| subject(m).contains("Undelivered Mail")));
    assert!(!msgs.iter().any(|m| subject(m).starts_with("CONSEGNA: ")));
}
