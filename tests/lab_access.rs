//! The access point and the Postfix listeners on the lab (issue 13, items 5, 3 and 13), with
//! real Postfix, Dovecot and pecora:
//! - envelope and headers agree (decisions.md 21): a To:/Cc: address that is no RCPT, an
//!   RCPT missing from To:/Cc:, a message without From: are each refused with the reason
//!   and a signed non-accettazione, and nobody they name is certified or taken in charge;
//! - an smtpd listener that calls pecora without a PEC role of its own (it inherits main.cf's
//!   PEC-INTERNO) is tempfailed with a log line naming it, while Postfix's own bounces still
//!   become errore-consegna notices;
//! - SMTP smuggling with bare LFs: submission refuses bare LFs; the MX normalizes them, so
//!   what hides behind <LF>.<LF> stays content of the one message (an anomaly), never a
//!   second transaction.
//! - Neither the MX nor submission offers DSN: nobody's NOTIFY=NEVER suppresses the bounce
//!   behind an avviso di mancata consegna.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

fn address(v: &serde_json::Value) -> &str {
    v["address"].as_str().unwrap()
}

/// swaks to alpha's submission listener, logged in as `user`, with the raw message in
/// `data` (swaks adds nothing to it).
fn submit_raw(lab: &Lab, host: &serde_json::Value, user: &serde_json::Value, rcpts: &[&str], data: &str) -> Output {
    let file = lab.dir.path().join(format!("raw-{}.eml", rand_suffix()));
    std::fs::write(&file, data).unwrap();
    Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{}", host["submission_port"]))
        .args(["--tls", "--tls-verify", "--tls-ca-path"])
        .arg(Lab::path(&host["ca_file"]))
        .args(["--auth", "PLAIN", "--auth-user", address(user), "--auth-password"])
        .arg(user["password"].as_str().unwrap())
        .args(["--from", address(user), "--to", &rcpts.join(",")])
        .arg("--data")
        .arg(&file)
        .args(["--timeout", "60"])
        .output()
        .expect("swaks")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The lines swaks marks as a failure (`<**`, or `<~*` inside TLS), without the mark.
fn failures(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("<** ") || l.starts_with("<~* "))
        .map(|l| l[4..].to_string())
        .collect()
}

/// The daticert.xml of a signed PEC message.
fn daticert(raw: &[u8]) -> String {
    use mail_parser::{MessageParser, MimeHeaders};
    let msg = MessageParser::default().parse(raw).expect("a MIME message");
    msg.parts
        .iter()
        .find(|p| p.attachment_name() == Some("daticert.xml"))
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .unwrap_or_default()
}

fn subjects(msgs: &[Vec<u8>]) -> Vec<String> {
    msgs.iter().map(|m| subject(m)).collect()
}

#[test]
fn the_access_point_certifies_only_the_smtp_recipients_and_requires_a_from() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = &alpha["users"][0];
    let anna = address(&alpha["users"][1]);
    let luca = address(&beta["users"][0]);
    let giulia = address(&beta["users"][1]);
    let from = address(mario);

    // (RCPTs, To:, Subject, what the refusal must name)
    let cases: [(&[&str], String, &str, Vec<&str>); 3] = [
        // A local address in To: that is no RCPT: it would be listed in the acceptance and
        // get alpha's own presa in carico for a message it never receives.
        (&[luca], format!("{luca}, {anna}"), "To locale in piu", vec![anna, "not a recipient of the SMTP envelope"]),
        // A remote address in To: that is no RCPT.
        (&[anna], format!("{anna}, {giulia}"), "To remoto in piu", vec![giulia, "not a recipient of the SMTP envelope"]),
        // An RCPT missing from To:/Cc: (a blind copy).
        (&[luca, anna], luca.to_string(), "RCPT non in To", vec![anna, "is not listed in To: or Cc:"]),
    ];
    for (rcpts, to, subj, reason) in &cases {
        let out = lab.send(alpha, "starttls", 0, from, rcpts, &[("To", to), ("Subject", subj)], "Buongiorno.");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{subj}: accepted: {said}");
        let f = failures(&out);
        assert!(
            f.len() == 1 && f[0].starts_with("550 5.7.1 ") && reason.iter().all(|r| f[0].contains(r)),
            "{subj}: {said}"
        );
        assert!(!said.contains("queued as"), "{subj}: {said}");
    }
    // No From: at all. Postfix would add one for a client it treats as local (loopback is,
    // by default): the shipped access listeners treat no client so, and pecora refuses.
    let out = submit_raw(
        &lab,
        alpha,
        mario,
        &[luca],
        &format!("To: {luca}\r\nSubject: Senza From\r\nMessage-ID: <senza-from@mua.test>\r\n\r\nBuongiorno.\r\n"),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let f = failures(&out);
    assert!(f.len() == 1 && f[0].starts_with("550 5.7.1 ") && f[0].contains("no From: header"), "{said}");

    // A message that agrees, sent last: once it is delivered and taken in charge, anything
    // the refused ones had let through would have arrived before it.
    let good = "Concorde";
    let out = lab.send(alpha, "starttls", 0, from, &[luca, anna], &[("To", luca), ("Cc", anna), ("Subject", good)], "Buongiorno.");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The sender: four signed non-accettazione notices and one acceptance.
    let msgs = lab.wait_for(alpha, mario, "imaps", |m| m.len() >= 5);
    let got = subjects(&msgs);
    for subj in ["To locale in piu", "To remoto in piu", "RCPT non in To", "Senza From"] {
        assert_eq!(
            got.iter().filter(|s| **s == format!("AVVISO DI NON ACCETTAZIONE: {subj}")).count(),
            1,
            "{got:?}"
        );
    }
    assert!(got.contains(&format!("ACCETTAZIONE: {good}")), "{got:?}");
    // Besides those, only the delivery receipts of the good message.
    assert!(
        got.iter().all(|s| s.starts_with("AVVISO DI NON ACCETTAZIONE: ") || s.ends_with(&format!(": {good}"))),
        "{got:?}"
    );
    for m in &msgs {
        lab.smime_verify(m);
    }
    // The notice names the disagreement in its certified data.
    let notice = msgs.iter().find(|m| subject(m) == "AVVISO DI NON ACCETTAZIONE: To locale in piu").unwrap();
    let xml = daticert(notice);
    assert!(xml.contains("not a recipient of the SMTP envelope") && xml.contains(anna), "{xml}");

    // The recipients: only the message that agrees, as POSTA CERTIFICATA.
    let luca_msgs = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    let anna_msgs = lab.wait_for(alpha, &alpha["users"][1], "imaps", |m| !m.is_empty());
    // Both presa in carico of the good message (alpha's for anna, beta's for luca).
    let service = lab.wait_for(alpha, &alpha["service"], "imaps", |m| m.len() >= 2);
    std::thread::sleep(Duration::from_secs(2));
    lab.flush();
    std::thread::sleep(Duration::from_secs(1));
    let want = vec![format!("POSTA CERTIFICATA: {good}")];
    assert_eq!(subjects(&lab.fetch(beta, &beta["users"][0], "imaps")), want, "luca");
    assert_eq!(subjects(&luca_msgs), want, "luca");
    assert_eq!(subjects(&lab.fetch(alpha, &alpha["users"][1], "imaps")), want, "anna");
    assert_eq!(subjects(&anna_msgs), want, "anna");
    assert!(lab.fetch(beta, &beta["users"][1], "imaps").is_empty(), "giulia");
    // No presa in carico for anything refused: two for the good message, nothing else.
    assert!(service.len() >= 2, "{:?}", subjects(&service));
    let service = lab.fetch(alpha, &alpha["service"], "imaps");
    assert_eq!(subjects(&service), vec![format!("PRESA IN CARICO: {good}"); 2]);
    assert!(lab.fetch(beta, &beta["service"], "imaps").is_empty());
}

/// A free TCP port on loopback (free when this returns; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One SMTP reply (multi-line ones joined), or "" when the server closed the connection.
fn reply(r: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// The smuggling attempt: a message whose DATA hides, behind <LF>.<LF>, a second
/// transaction for `victim`; its lines end in bare LFs, as a relay that passes them along
/// would forward them.
fn smuggling_data(from: &str, rcpt: &str, victim: &str, forged_from: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {rcpt}\r\nSubject: Contrabbando\r\n\r\nprima parte\r\n\n.\nMAIL FROM:<{forged_from}>\nRCPT TO:<{victim}>\nDATA\nFrom: {forged_from}\nTo: {victim}\nSubject: Contrabbandato\n\nnon dovrebbe arrivare\n\r\n.\r\n"
    )
    .into_bytes()
}

#[test]
fn smtp_never_gets_the_internal_role_bare_newlines_smuggle_nothing_and_no_dsn_is_offered() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let mario = address(&alpha["users"][0]);
    let anna = address(&alpha["users"][1]);
    let paolo = address(&lab.gamma()["users"][0]);

    // ---- An smtpd listener that calls pecora with no milter_macro_daemon_name of its own:
    // it inherits main.cf's PEC-INTERNO, the role of Postfix's own mail.
    let port = free_port();
    let id = format!("127.0.0.1:{port}/inet");
    lab.postfix_tool(alpha, "postconf", &["-M", &format!("{id}=127.0.0.1:{port} inet n - n - - smtpd")]);
    lab.postfix_tool(alpha, "postconf", &["-P", &format!("{id}/syslog_name=postfix/senza-ruolo"), &format!("{id}/smtpd_milters=unix:pecora/milter.sock")]);
    assert_eq!(lab.postfix_tool(alpha, "postconf", &["-h", "milter_macro_daemon_name"]).trim(), "PEC-INTERNO");
    lab.postfix_tool(alpha, "postfix", &["reload"]);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "the new listener never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--from", paolo, "--to", mario, "--header", "Subject: Senza ruolo", "--timeout", "30"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let f = failures(&out);
    assert!(!out.status.success() && !f.is_empty() && f.iter().all(|l| l.starts_with('4')), "a temporary failure: {said}");
    assert!(!said.contains("queued as"), "{said}");
    let log = Lab::log(&Lab::path(&alpha["pecora_log"]));
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains(&format!("127.0.0.1:{port}")) && l.contains("PEC-INTERNO")),
        "a log line naming the listener: {log}"
    );

    // Postfix's own mail still has the internal role: alpha's bounce for an unknown beta
    // recipient becomes a signed errore-consegna.
    let out = lab.send(alpha, "starttls", 0, mario, &["nessuno@pec.beta.test"], &[("Subject", "Verso nessuno")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // ---- SMTP smuggling on the MX (plain): `normalize` takes the bare LFs as line ends
    // but ends DATA only at <CR><LF>.<CR><LF>, so the hidden transaction is text of the one
    // message, which pecora wraps as an anomaly for mario (ordinary mail from a sloppy
    // client still arrives). On submission (the python client below does STARTTLS and
    // AUTH): Postfix answers 521 at the first bare LF and hangs up.
    let mx = alpha["smtp_port"].as_u64().unwrap() as u16;
    let s = TcpStream::connect(("127.0.0.1", mx)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut transcript = reply(&mut r);
    for cmd in ["EHLO attaccante.test".to_string(), format!("MAIL FROM:<{paolo}>"), format!("RCPT TO:<{mario}>"), "DATA".to_string()] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let answer = reply(&mut r);
        transcript.push_str(&format!("> {cmd}\n{answer}"));
        assert!(answer.starts_with('2') || answer.starts_with("354"), "{transcript}");
    }
    w.write_all(&smuggling_data(paolo, mario, anna, "posta-certificata@pec.alpha.test")).unwrap();
    let answer = reply(&mut r);
    transcript.push_str(&answer);
    assert!(answer.starts_with("250 ") && answer.contains("queued as"), "one message, queued: {transcript}");
    w.write_all(b"QUIT\r\n").unwrap();
    let answer = reply(&mut r);
    transcript.push_str(&answer);
    assert!(answer.starts_with("221"), "the smuggled commands were never read as commands: {transcript}");

    // ---- No DSN on the MX: the sender's provider cannot relay its user's NOTIFY=NEVER,
    // which would suppress the bounce of a delivery failing here (and with it the signed
    // avviso di mancata consegna); Postfix bounces every failure.
    let s = TcpStream::connect(("127.0.0.1", mx)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut transcript = reply(&mut r);
    for (cmd, want) in [
        ("EHLO fornitore.test".to_string(), "250"),
        (format!("MAIL FROM:<{paolo}>"), "250"),
        (format!("RCPT TO:<{mario}> NOTIFY=NEVER"), "501 5.7.1"),
        (format!("RCPT TO:<{mario}> ORCPT=rfc822;{mario}"), "501 5.7.1"),
        ("QUIT".to_string(), "221"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let answer = reply(&mut r);
        transcript.push_str(&format!("> {cmd}\n{answer}"));
        assert!(answer.starts_with(want), "{cmd}: {want} expected: {transcript}");
        if cmd.starts_with("EHLO") {
            assert!(!answer.lines().any(|l| l.get(4..).is_some_and(|k| k.trim().eq_ignore_ascii_case("DSN"))), "DSN offered: {transcript}");
        }
    }

    // ---- Commands sent ahead of the replies where SMTP forbids it (behind EHLO, before
    // PIPELINING was announced): Postfix answers 554 5.5.0 and hangs up
    // (smtpd_forbid_unauth_pipelining, in the shipped main.cf fragment).
    let s = TcpStream::connect(("127.0.0.1", mx)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut transcript = reply(&mut r);
    w.write_all(format!("EHLO attaccante.test\r\nMAIL FROM:<{paolo}>\r\nRCPT TO:<{mario}>\r\n").as_bytes()).unwrap();
    loop {
        let answer = reply(&mut r);
        transcript.push_str(&answer);
        if answer.is_empty() || answer.starts_with("554") {
            break;
        }
    }
    assert!(transcript.contains("554 5.5.0") && transcript.contains("synchronization"), "{transcript}");
    assert!(!transcript.contains("250 2.1.0"), "MAIL FROM was never taken: {transcript}");

    let script = r#"
import smtplib, ssl, sys
host, port, ca, user, password, data = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), timeout=30)
s.starttls(context=ctx)
s.login(user, password)
# No DSN on submission either: a user cannot suppress the bounce behind an avviso.
assert not s.has_extn("dsn"), s.esmtp_features
code, said = s.docmd("MAIL FROM:<%s>" % user)
assert code == 250, (code, said)
code, said = s.docmd("RCPT TO:<%s> NOTIFY=NEVER" % user)
assert code == 501 and said.startswith(b"5.7.1"), (code, said)
s.rset()
s.mail(user)
s.rcpt(user)
code, _ = s.docmd("DATA")
assert code == 354, code
s.send(open(data, "rb").read())
print(*s.getreply())
"#;
    let data = lab.dir.path().join("smuggle.eml");
    std::fs::write(&data, smuggling_data(mario, mario, anna, mario)).unwrap();
    let user = &alpha["users"][0];
    let out = Command::new("python3")
        .args(["-c", script, "127.0.0.1", &alpha["submission_port"].to_string()])
        .arg(Lab::path(&alpha["ca_file"]))
        .args([address(user), user["password"].as_str().unwrap()])
        .arg(&data)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.starts_with("521 b'5.5.2") && said.contains("bare <LF>"), "{said}");

    // A control from gamma to anna, through alpha's MX: once it is there, whatever was
    // smuggled would be there too.
    let out = lab.send(lab.gamma(), "starttls", 0, paolo, &[anna], &[("Subject", "Controllo")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][1], "imaps", |m| !m.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    lab.flush();
    std::thread::sleep(Duration::from_secs(1));
    let anna_got = subjects(&lab.fetch(alpha, &alpha["users"][1], "imaps"));
    assert_eq!(anna_got, vec!["ANOMALIA MESSAGGIO: Controllo".to_string()], "{:?}", subjects(&msgs));
    // mario: the acceptance and the errore-consegna of the bounce, the MX's message as one
    // anomaly whose text carries what was hidden, nothing smuggled and nothing from the
    // listener without a role.
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        m.iter().any(|x| subject(x) == "AVVISO DI MANCATA CONSEGNA: Verso nessuno")
            && m.iter().any(|x| subject(x) == "ANOMALIA MESSAGGIO: Contrabbando")
    });
    let got = subjects(&msgs);
    assert!(got.contains(&"AVVISO DI MANCATA CONSEGNA: Verso nessuno".to_string()), "the bounce still works: {got:?}");
    let anomalies: Vec<&Vec<u8>> = msgs.iter().filter(|x| subject(x).contains("Contrabband")).collect();
    assert_eq!(anomalies.len(), 1, "one anomaly, nothing smuggled: {got:?}");
    assert_eq!(subject(anomalies[0]), "ANOMALIA MESSAGGIO: Contrabbando");
    let text = String::from_utf8_lossy(anomalies[0]);
    assert!(text.contains("RCPT TO:<") && text.contains("non dovrebbe arrivare"), "the hidden lines are the message's text:\n{text}");
    assert!(!got.iter().any(|s| s.contains("Contrabbandato") || s.contains("Senza ruolo")), "{got:?}");
    assert!(!got.iter().any(|s| s.contains("Undelivered")), "{got:?}");
    let maillog = Lab::log(&Lab::path(&alpha["maillog"]));
    assert!(maillog.matches("bare <LF> received").count() >= 1, "{maillog}");
}
