//! The reception point on the lab against a replay (issue 13 item 2, decisions.md 20): a
//! genuine busta di trasporto, fetched from its recipient's mailbox and resent by anyone to
//! the provider's port 25 for another mailbox, certifies nothing for that mailbox; resent to
//! its own recipient, it earns no second receipt.

use std::process::Command;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject, top_headers};

/// The pecora registry of a provider, read with pecora's own store.
fn events_of(host: &serde_json::Value, pec_id: &str) -> Vec<pecora::store::model::EventRow> {
    let url = format!("sqlite:{}", host["registry"]["path_or_url"].as_str().unwrap());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = pecora::store::Store::open(&url).await.unwrap();
        store.backend().events_of_pec_id(pec_id).await.unwrap()
    })
}

fn message_id(raw: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse_headers(raw)
        .and_then(|m| m.message_id().map(str::to_string))
        .unwrap()
}

/// Resends `raw` as it is (swaks `--data`) to `host`'s MX listener (port 25's role), as
/// anyone on the Internet could.
fn resend(host: &serde_json::Value, raw: &[u8], from: &str, to: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), raw).unwrap();
    let out = Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{}", host["smtp_port"]))
        .args(["--from", from, "--to", to, "--timeout", "60", "--data"])
        .arg(format!("@{}", file.path().display()))
        .output()
        .expect("swaks");
    assert!(out.status.success(), "resend to {to}: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_replayed_envelope_certifies_nobody_it_was_not_addressed_to() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let (luca, giulia) = (&beta["users"][0], &beta["users"][1]);
    let (luca_addr, giulia_addr) = (luca["address"].as_str().unwrap(), giulia["address"].as_str().unwrap());
    assert_eq!((luca_addr, giulia_addr), ("luca.verdi@pec.beta.test", "giulia.neri@pec.beta.test"));

    // The genuine exchange: mario -> luca, with beta's presa in carico and CONSEGNA.
    let out = lab.send(alpha, "starttls", 0, &mario, &[luca_addr], &[("Subject", "Replay")], "Buongiorno.");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let got = lab.wait_for(beta, luca, "imaps", |m| !m.is_empty());
    assert_eq!(got.len(), 1);
    let envelope = got[0].clone();
    assert_eq!(subject(&envelope), "POSTA CERTIFICATA: Replay");
    let pec_id = message_id(&envelope);
    let consegna = |m: &Vec<u8>| subject(m) == "CONSEGNA: Replay";
    lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| m.iter().any(consegna));

    // Anyone holding the envelope resends it, unchanged, to giulia at beta's port 25.
    resend(beta, &envelope, &mario, giulia_addr);
    let got = lab.wait_for(beta, giulia, "imaps", |m| !m.is_empty());
    assert_eq!(got.len(), 1);
    let top = top_headers(&got[0]);
    assert!(subject(&got[0]).starts_with("ANOMALIA MESSAGGIO: "), "{}", subject(&got[0]));
    assert!(top.contains("X-Trasporto: errore") && !top.contains("X-Trasporto: posta-certificata"), "{top}");
    lab.smime_verify(&got[0]);

    // And again to luca: delivered, but no second receipt of any kind.
    resend(beta, &envelope, &mario, luca_addr);
    lab.wait_for(beta, luca, "imaps", |m| m.len() >= 2);
    // The delivery worker has had its chance at the second copy.
    std::thread::sleep(std::time::Duration::from_secs(5));
    lab.flush();
    std::thread::sleep(std::time::Duration::from_secs(3));

    // At alpha: one CONSEGNA, one presa in carico from beta, and nothing names giulia.
    let sender_box = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert_eq!(sender_box.iter().filter(|m| consegna(m)).count(), 1, "{:?}", sender_box.iter().map(|m| subject(m)).collect::<Vec<_>>());
    let service_box = lab.fetch(alpha, &alpha["service"], "imaps");
    let presa: Vec<&Vec<u8>> = service_box.iter().filter(|m| subject(m) == "PRESA IN CARICO: Replay").collect();
    assert_eq!(presa.len(), 1, "{:?}", service_box.iter().map(|m| subject(m)).collect::<Vec<_>>());
    for m in sender_box.iter().chain(&service_box) {
        assert!(!String::from_utf8_lossy(m).contains(giulia_addr), "a receipt names giulia: {}", subject(m));
    }

    // beta's registry: giulia only as an anomaly; luca taken in charge and delivered once.
    let rows = events_of(beta, &pec_id);
    let of = |kind: &str| rows.iter().filter(|r| r.event_type == kind).map(|r| r.recipient_list()).collect::<Vec<_>>();
    assert_eq!(of("take-charge-emitted"), [[luca_addr]], "{rows:?}");
    assert_eq!(of("delivery"), [[luca_addr]], "{rows:?}");
    for r in &rows {
        assert!(!r.recipient_list().iter().any(|x| x == giulia_addr), "giulia in {r:?}");
    }
}
