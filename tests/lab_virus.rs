//! Viruses on the lab, with a real clamd whose signature database the lab writes (the
//! EICAR test string as a body signature). beta scans, alpha does not: a virus submitted at
//! beta is refused there; one submitted at alpha is caught by beta's reception point.

use std::process::Command;
use std::time::Duration;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject, top_headers};

const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn quarantined(host: &serde_json::Value) -> i64 {
    let out = Command::new("sqlite3")
        .arg(Lab::path(&host["registry"]["path_or_url"]))
        .arg("select count(*) from quarantine_entries")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn eicar_file(lab: &Lab) -> String {
    let f = lab.dir.path().join("eicar.com");
    std::fs::write(&f, EICAR).unwrap();
    format!("@{}", f.display())
}

#[test]
fn a_virus_at_the_access_point_is_refused_noticed_and_quarantined() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let attach = eicar_file(&lab);
    let out = lab.send_with(beta, "starttls", 0, luca, &[mario], &[("Subject", "Con virus")], "x", &["--attach", &attach]);
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("5.7.1") && transcript.contains("virus"), "{transcript}");
    let msgs = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(msgs.len(), 1);
    assert_eq!(subject(&msgs[0]), "AVVISO DI NON ACCETTAZIONE PER VIRUS: Con virus");
    let top = top_headers(&msgs[0]);
    assert!(top.contains("X-Ricevuta: non-accettazione") && top.contains("X-VerificaSicurezza: errore"), "{top}");
    lab.smime_verify(&msgs[0]);
    assert_eq!(quarantined(beta), 1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.fetch(alpha, &alpha["users"][0], "imaps").is_empty(), "nothing reached the recipient");
}

#[test]
fn a_virus_caught_at_reception_brings_rilevazione_virus_and_errore_consegna() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let attach = eicar_file(&lab);
    // alpha does not scan: it accepts and signs the envelope.
    let out = lab.send_with(alpha, "starttls", 0, mario, &[luca], &[("Subject", "Virus sfuggito")], "x", &["--attach", &attach]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // alpha's service mailbox gets beta's signed rilevazione-virus, naming the sender.
    let msgs = lab.wait_for(alpha, &alpha["service"], "imaps", |m| {
        m.iter().any(|x| subject(x).starts_with("PROBLEMA DI SICUREZZA: "))
    });
    let rv = msgs.iter().find(|x| subject(x).starts_with("PROBLEMA DI SICUREZZA: ")).expect("rilevazione-virus");
    let top = top_headers(rv);
    assert!(top.contains("X-Ricevuta: rilevazione-virus"), "{top}");
    assert!(top.contains("X-Mittente: ") && top.contains(mario), "{top}");
    assert!(top.contains("posta-certificata@pec.beta.test"), "{top}");
    lab.smime_verify(rv);

    // mario gets alpha's errore-consegna for virus.
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        m.iter().any(|x| subject(x).starts_with("AVVISO DI MANCATA CONSEGNA PER VIRUS: "))
    });
    let ec = msgs
        .iter()
        .find(|x| subject(x).starts_with("AVVISO DI MANCATA CONSEGNA PER VIRUS: "))
        .unwrap_or_else(|| panic!("{:?}", msgs.iter().map(|m| subject(m)).collect::<Vec<_>>()));
    assert_eq!(subject(ec), "AVVISO DI MANCATA CONSEGNA PER VIRUS: Virus sfuggito");
    let top = top_headers(ec);
    assert!(top.contains("X-Ricevuta: errore-consegna") && top.contains("X-VerificaSicurezza: errore"), "{top}");
    assert!(top.contains("posta-certificata@pec.alpha.test"), "{top}");
    lab.smime_verify(ec);

    // Nothing was delivered to luca, no delivery receipt came back, and beta kept the message.
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.fetch(beta, &beta["users"][0], "imaps").is_empty());
    let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert!(!msgs.iter().any(|m| subject(m).starts_with("CONSEGNA: ")));
    assert_eq!(msgs.iter().filter(|m| subject(m).starts_with("AVVISO DI MANCATA CONSEGNA PER VIRUS: ")).count(), 1);
    assert_eq!(quarantined(beta), 1);
}
