//! The 12 h / 24 h limits on the lab (pec-format.md §5, decisions.md 9, 14), with timers
//! of seconds: the sender's provider (alpha) reads the transaction state that beta's
//! receipts update. An envelope beta never takes in charge (beta's pecora is stopped) gets
//! both notices; one beta takes in charge but never delivers gets only the final one.

use std::time::Duration;

use mail_parser::MessageParser;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

const PREFIX: &str = "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ";

/// The Date of a message, in seconds since the epoch.
fn date_of(raw: &[u8]) -> i64 {
    let m = MessageParser::default().parse(raw).unwrap();
    m.date().unwrap_or_else(|| panic!("no Date: {}", subject(raw))).to_timestamp()
}

fn text_of(raw: &[u8]) -> String {
    let m = MessageParser::default().parse(raw).unwrap();
    m.body_text(0).map(|t| t.into_owned()).unwrap_or_default()
}

#[test]
fn time_limit_notices_follow_the_transaction_state() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let giulia = beta["users"][1]["address"].as_str().unwrap();

    // Seconds instead of hours, by a reload.
    let config = Lab::path(&alpha["config_file"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[timers]\ntake_charge = \"4s\"\ndelivery_min = \"8s\"\ndelivery = \"10s\"\ninterval = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    lab.reload_pecora(alpha);

    // B: beta takes it in charge but holds it before the mailbox.
    lab.postfix_tool(beta, "postconf", &["-e", "defer_transports = lmtp"]);
    lab.postfix_tool(beta, "postfix", &["reload"]);
    let out = lab.send(alpha, "starttls", 0, mario, &[giulia], &[("Subject", "Preso ma non consegnato")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let service = lab.wait_for(alpha, &alpha["service"], "imaps", |m| {
        m.iter().any(|x| subject(x) == "PRESA IN CARICO: Preso ma non consegnato")
    });
    assert!(service.iter().any(|x| subject(x) == "PRESA IN CARICO: Preso ma non consegnato"));

    // A: beta's pecora is down, so beta's MX tempfails and nothing is taken in charge.
    lab.stop_pecora(beta);
    let out = lab.send(alpha, "starttls", 0, mario, &[luca], &[("Subject", "Mai preso")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        m.iter().filter(|x| subject(x).starts_with(PREFIX)).count() >= 3
    });
    // Give a wrongly repeated notice the time to show up.
    std::thread::sleep(Duration::from_secs(3));
    let msgs = {
        let again = lab.fetch(alpha, &alpha["users"][0], "imaps");
        if again.len() >= msgs.len() { again } else { msgs }
    };
    let notices: Vec<(String, String)> = msgs
        .iter()
        .filter(|x| subject(x).starts_with(PREFIX))
        .map(|x| (subject(x), text_of(x)))
        .collect();
    let of = |s: &str| notices.iter().filter(|(subj, _)| subj == &format!("{PREFIX}{s}")).map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let a = of("Mai preso");
    assert_eq!(a.len(), 2, "{notices:#?}");
    assert!(a.iter().any(|t| t.contains("prime 12 ore")), "{a:#?}");
    assert!(a.iter().any(|t| t.contains("entro 24 ore") && t.contains("esito negativo")), "{a:#?}");
    let b = of("Preso ma non consegnato");
    assert_eq!(b.len(), 1, "only the final notice after a presa in carico: {notices:#?}");
    assert!(b[0].contains("entro 24 ore"), "{}", b[0]);
    // Each notice is dated after its limit, counted from the transaction's own time (the
    // Date of its ACCETTAZIONE, whole seconds as both Dates are): the first after
    // take_charge (4 s), the final never before delivery_min (8 s).
    let accepted = msgs
        .iter()
        .find(|x| subject(x) == "ACCETTAZIONE: Mai preso")
        .map(|x| date_of(x))
        .expect("the ACCETTAZIONE of \"Mai preso\"");
    for m in msgs.iter().filter(|x| subject(x) == format!("{PREFIX}Mai preso")) {
        let after = date_of(m) - accepted;
        if text_of(m).contains("prime 12 ore") {
            assert!(after >= 4, "the 12 h notice came {after} s after the acceptance");
        } else {
            assert!(after >= 8, "the final notice came {after} s after the acceptance");
        }
    }
    for m in msgs.iter().filter(|x| subject(x).starts_with(PREFIX)) {
        let head = String::from_utf8_lossy(m);
        let head = head.split("\r\n\r\n").next().unwrap();
        assert!(head.contains("X-Ricevuta: preavviso-errore-consegna"), "{head}");
    }
}
