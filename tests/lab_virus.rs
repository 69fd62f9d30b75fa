//! Viruses on the lab, with a real clamd whose signature database the lab writes (the
//! EICAR test string as a body signature). beta scans, alpha does not: a virus submitted at
//! beta is refused there; one submitted at alpha is caught by beta's reception point.

use std::process::Command;

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
    // A clean message sent after the virus: once it has reached mario, the refused one had
    // every chance to; only the clean one is there.
    let out = lab.send(beta, "starttls", 0, luca, &[mario], &[("Subject", "Senza virus")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| !m.is_empty());
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, ["POSTA CERTIFICATA: Senza virus"], "nothing of the virus reached the recipient");
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

    // Nothing was delivered to luca, no delivery receipt came back, and beta kept the
    // message. The proof that the pipeline ran: a clean message sent afterwards is
    // delivered to luca and its CONSEGNA reaches mario; the virus has neither.
    let out = lab.send(alpha, "starttls", 0, mario, &[luca], &[("Subject", "Senza virus")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| {
        m.iter().any(|x| subject(x) == "CONSEGNA: Senza virus")
    });
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert!(subjects.iter().any(|s| s == "CONSEGNA: Senza virus"), "{subjects:?}");
    assert_eq!(subjects.iter().filter(|s| s.starts_with("CONSEGNA: ")).count(), 1, "{subjects:?}");
    let at_luca: Vec<String> = lab.fetch(beta, &beta["users"][0], "imaps").iter().map(|m| subject(m)).collect();
    assert_eq!(at_luca, ["POSTA CERTIFICATA: Senza virus"]);
    assert_eq!(msgs.iter().filter(|m| subject(m).starts_with("AVVISO DI MANCATA CONSEGNA PER VIRUS: ")).count(), 1);
    assert_eq!(quarantined(beta), 1);
}

/// clamd down: beta scans at both points, so a submission at beta's access point is
/// answered 451 (tempfail, nothing accepted) and an envelope from alpha is tempfailed at
/// beta's MX, deferred in alpha's queue, and delivered once clamd is back.
#[test]
fn clamd_down_is_a_tempfail_at_both_points() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let clamd = lab.dir.path().join("clamd");
    let pid: u64 = std::fs::read_to_string(clamd.join("clamd.pid")).unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").arg(pid.to_string()).status().unwrap().success());
    let start = std::time::Instant::now();
    while lab::alive(pid) {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "clamd does not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The access point: 451, nothing accepted.
    let out = lab.send(beta, "starttls", 0, luca, &[mario], &[("Subject", "Senza antivirus")], "x");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("451 4.7.1 virus scan temporarily unavailable"), "{transcript}");

    // The reception point: alpha (which does not scan) accepts; beta's MX answers 451 and
    // alpha's Postfix defers the envelope.
    let out = lab.send(alpha, "starttls", 0, mario, &[luca], &[("Subject", "In attesa di clamd")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let maillog = Lab::path(&alpha["maillog"]);
    let deferred = |log: &str| {
        log.lines().any(|l| l.contains(&format!("to=<{luca}>")) && l.contains("status=deferred") && l.contains("451 4.7.1"))
    };
    let start = std::time::Instant::now();
    while !deferred(&Lab::log(&maillog)) {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no deferral in alpha's log:\n{}", Lab::log(&maillog));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(lab.fetch(beta, &beta["users"][0], "imaps").is_empty());

    // clamd back: the deferred envelope arrives, so it was tempfailed, not lost.
    let out = std::fs::OpenOptions::new().append(true).create(true).open(clamd.join("clamd.out")).unwrap();
    Command::new("setsid")
        .arg("clamd")
        .arg(format!("--config-file={}", clamd.join("clamd.conf").display()))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(clamd.join("clamd.sock")).is_err() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "clamd does not come back");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    lab.flush();
    let msgs = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, ["POSTA CERTIFICATA: In attesa di clamd"]);
    // And the access point takes mail again.
    let out = lab.send(beta, "starttls", 0, luca, &[mario], &[("Subject", "Con antivirus")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
