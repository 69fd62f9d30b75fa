//! Ordinary mail reaching PEC mailboxes under the three per-mailbox policies (decisions.md
//! 8): anomaly (default), refuse and redirect, changed with SIGHUP and no restart, checked in
//! the mailboxes over IMAPS; every decision is in the registry.

use std::process::Command;
use std::time::Duration;

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject, top_headers};

#[test]
fn ordinary_mail_is_wrapped_refused_or_redirected_as_each_mailbox_chose() {
    let lab = Lab::up();
    let (beta, gamma) = (lab.beta(), lab.gamma());
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let giulia = beta["users"][1]["address"].as_str().unwrap();
    let send = |to: &str, subj: &str| {
        let out = lab.send(gamma, "starttls", 0, paolo, &[to], &[("Subject", subj)], "Posta ordinaria.");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    };

    // The default: a busta di anomalia.
    send(luca, "Prima");
    let msgs = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(subject(&msgs[0]), "ANOMALIA MESSAGGIO: Prima");

    // luca now refuses ordinary mail, giulia has it redirected to paolo: a reload, no restart.
    let config = Lab::path(&beta["config_file"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[policy.mailboxes.\"{luca}\"]\nordinary_mail = \"refuse\"\n\n[policy.mailboxes.\"{giulia}\"]\nordinary_mail = \"redirect\"\nredirect_to = \"{paolo}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    lab.reload_pecora(beta);

    send(luca, "Seconda");
    send(giulia, "Terza");

    // paolo gets his redirected message back unwrapped, and the bounce for luca's refusal.
    let msgs = lab.wait_for(gamma, &gamma["users"][0], "imaps", |m| m.len() >= 2);
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    let redirected = msgs.iter().find(|m| subject(m) == "Terza").unwrap_or_else(|| panic!("{subjects:?}"));
    let top = top_headers(redirected);
    assert!(!top.contains("X-Trasporto") && !top.contains("X-Ricevuta"), "unwrapped: {top}");
    assert!(String::from_utf8_lossy(redirected).contains("Posta ordinaria."));
    let bounce = msgs
        .iter()
        .find(|m| subject(m).starts_with("Undelivered Mail"))
        .unwrap_or_else(|| panic!("{subjects:?}"));
    let bounce = String::from_utf8_lossy(bounce);
    assert!(bounce.contains("5.7.1") && bounce.contains("accepts only certified mail"), "{bounce}");

    // Neither PEC mailbox got anything more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.fetch(beta, &beta["users"][0], "imaps").len(), 1);
    assert!(lab.fetch(beta, &beta["users"][1], "imaps").is_empty());

    // Every decision is recorded.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(&config)
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("\\\"policy\\\":\\\"redirect\\\"") || log.contains("redirect_to"), "{log}");
    assert!(log.contains("refused"), "{log}");
    assert_eq!(log.matches("\"event_type\": \"anomaly\"").count(), 2, "{log}");
}
