//! The access point's limits and Postfix's own mail on the lab: too many recipients and
//! size × recipients are refused with a signed non-accettazione; a message pecora signed
//! and Postfix re-queues (`postsuper -r`) is never wrapped twice (decisions.md 17).

use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

#[test]
fn too_many_recipients_and_too_large_are_refused_with_a_notice() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    // 51 recipients, one over the configured (and legal minimum) 50.
    let many: Vec<String> = (0..51).map(|i| format!("utente{i}@mail.gamma.test")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let to = many.join(", ");
    let out = lab.send(alpha, "starttls", 0, mario, &refs, &[("To", &to), ("Subject", "Troppi")], "x");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("5.5.3") && transcript.contains("too many recipients: 51"), "{transcript}");

    // 12 recipients x ~5 MB = ~60 MB, over the lab's 55 MB.
    let twelve: Vec<String> = (0..12).map(|i| format!("utente{i}@mail.gamma.test")).collect();
    let refs: Vec<&str> = twelve.iter().map(String::as_str).collect();
    let big = lab.dir.path().join("grande.bin");
    std::fs::write(&big, vec![b'a'; 3_700_000]).unwrap();
    let attach = format!("@{}", big.display());
    let out = lab.send_with(alpha, "starttls", 0, mario, &refs, &[("To", &twelve.join(", ")), ("Subject", "Troppo grande")], "x", &["--attach", &attach]);
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(transcript.contains("5.3.4") && transcript.contains("message too large"), "{}", &transcript[transcript.len().saturating_sub(2000)..]);

    // One signed notice per refusal, to the sender only.
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| m.len() >= 2);
    let mut subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["AVVISO DI NON ACCETTAZIONE: Troppi", "AVVISO DI NON ACCETTAZIONE: Troppo grande"]);
    // Nothing of the refused messages went out: a message sent after them reaches its
    // recipient alone.
    let gamma = lab.gamma();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Nei limiti")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| !m.is_empty());
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, ["POSTA CERTIFICATA: Nei limiti"]);
}

#[test]
fn a_requeued_envelope_is_not_wrapped_twice() {
    let lab = Lab::up();
    let (alpha, gamma) = (lab.alpha(), lab.gamma());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    // alpha keeps the envelope in its queue...
    lab.postfix_tool(alpha, "postconf", &["-e", "defer_transports = smtp"]);
    lab.postfix_tool(alpha, "postfix", &["reload"]);
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Rimesso in coda")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let start = Instant::now();
    loop {
        let q = lab.postfix_tool(alpha, "postqueue", &["-j"]);
        if q.contains(paolo) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the envelope never waited in alpha's queue: {q}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...re-queues it through cleanup and the non-SMTP milter (pecora)...
    lab.postfix_tool(alpha, "postsuper", &["-r", "ALL"]);
    std::thread::sleep(Duration::from_secs(1));
    // ...then lets it go.
    lab.postfix_tool(alpha, "postconf", &["-e", "defer_transports ="]);
    lab.postfix_tool(alpha, "postfix", &["reload"]);
    lab.postfix_tool(alpha, "postqueue", &["-f"]);
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(msgs.len(), 1);
    assert_eq!(subject(&msgs[0]), "POSTA CERTIFICATA: Rimesso in coda");
    let text = String::from_utf8_lossy(&msgs[0]);
    assert_eq!(text.matches("X-Trasporto: posta-certificata").count(), 1, "wrapped once");
    assert!(!text.contains("ANOMALIA"));
    // Postfix itself did not run the milter again on `postsuper -r` here; an operator who
    // re-injects a saved envelope with sendmail does go through it (non_smtpd_milters),
    // and pecora passes its own signed message unchanged.
    let saved = lab.dir.path().join("envelope.eml");
    std::fs::write(&saved, &msgs[0]).unwrap();
    let out = std::process::Command::new("sendmail")
        .env("MAIL_CONFIG", Lab::path(&alpha["postfix_dir"]))
        .args(["-f", mario, paolo])
        .stdin(std::fs::File::open(&saved).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| m.len() >= 2);
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert_eq!(subject(m), "POSTA CERTIFICATA: Rimesso in coda");
        assert_eq!(String::from_utf8_lossy(m).matches("X-Trasporto: posta-certificata").count(), 1, "wrapped once");
    }
    let log = Lab::log(&Lab::path(&alpha["pecora_log"]));
    let maillog = Lab::log(&Lab::path(&alpha["maillog"]));
    assert!(log.contains("signed by us already (re-queued): passed unchanged"), "{log}\n{maillog}");

    // An ordinary local user may not use sendmail on a PEC host (authorized_submit_users).
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("MAIL_CONFIG={}", Lab::path(&alpha["postfix_dir"]).display()))
        .args(["sendmail", "-f", mario, paolo])
        .stdin(std::fs::File::open(&saved).unwrap())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("is not allowed to submit mail"), "{said}");
    // A message submitted after it arrives; the refused one does not.
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Dopo sendmail")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| {
        m.iter().any(|x| subject(x) == "POSTA CERTIFICATA: Dopo sendmail")
    });
    assert_eq!(msgs.len(), 3, "nothing more reached paolo: {:?}", msgs.iter().map(|m| subject(m)).collect::<Vec<_>>());
}

#[test]
fn no_acceptance_for_a_message_postfix_refuses_after_the_milter() {
    let lab = Lab::up();
    let (alpha, gamma) = (lab.alpha(), lab.gamma());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    // The signed envelope is larger than the original: a 14 KB message passes smtpd's
    // size check, pecora accepts it, then cleanup refuses the 20 KB+ envelope.
    lab.postfix_tool(alpha, "postconf", &["-e", "message_size_limit = 20000"]);
    lab.postfix_tool(alpha, "postfix", &["reload"]);
    let body = "a".repeat(70) + "\n";
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Rifiutato dopo")], &body.repeat(200));
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(transcript.contains("552 5.3.4"), "{}", &transcript[transcript.len().saturating_sub(1500)..]);
    // A message Postfix did queue gets its receipt, released by the log line.
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Accodato")], "breve");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| !m.is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let msgs = if msgs.len() > 1 { msgs } else { lab.fetch(alpha, &alpha["users"][0], "imaps") };
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, vec!["ACCETTAZIONE: Accodato"], "no acceptance for the refused one");
    // The registry says why the first acceptance was never sent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&alpha["config_file"]))
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("Postfix did not queue the accepted message"), "{log}");
    let db = Lab::path(&alpha["registry"]["path_or_url"]);
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT kind || ':' || status FROM outbox_messages ORDER BY id")
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout);
    assert!(rows.lines().any(|l| l == "accettazione:cancelled"), "{rows}");
    assert!(rows.lines().any(|l| l == "accettazione:sent"), "{rows}");
}
