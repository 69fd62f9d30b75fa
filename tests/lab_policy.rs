//! Ordinary mail reaching PEC mailboxes under the three per-mailbox policies (decisions.md
//! 8): anomaly (default), refuse and redirect, changed with SIGHUP and no restart, checked in
//! the mailboxes over IMAPS; every decision is in the registry.

use std::process::Command;

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

    // Every decision is recorded, with its value: the first message wrapped (not refused),
    // the second refused for luca, the third redirected for giulia to paolo.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(&config)
        .args(["log", "search", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out.stdout);
    let anomalies: Vec<(&Vec<String>, &serde_json::Value)> = events
        .iter()
        .filter(|(ty, ..)| ty == "anomaly")
        .map(|(_, rcpts, d)| (rcpts, d))
        .collect();
    assert_eq!(anomalies.len(), 2, "{events:#?}");
    for (rcpts, _) in &anomalies {
        assert_eq!(rcpts.as_slice(), [luca], "{events:#?}");
    }
    let mut refused: Vec<bool> = anomalies.iter().map(|(_, d)| d["refused"].as_bool().expect("refused is a boolean")).collect();
    refused.sort();
    assert_eq!(refused, [false, true], "one wrapped, one refused: {events:#?}");
    let redirects: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(_, rcpts, d)| d["policy"] == "redirect" && rcpts.as_slice() == [giulia])
        .map(|(.., d)| d)
        .collect();
    assert_eq!(redirects.len(), 1, "{events:#?}");
    assert_eq!(redirects[0]["redirect_to"], paolo);

    // Neither PEC mailbox got anything more: the bounce and the redirected copy above show
    // beta decided on both messages, and the registry shows no other decision.
    assert_eq!(lab.fetch(beta, &beta["users"][0], "imaps").len(), 1);
    assert!(lab.fetch(beta, &beta["users"][1], "imaps").is_empty());
}

/// (event_type, recipients, details) of every registry row `pecora log search --json` shows.
fn events(json: &[u8]) -> Vec<(String, Vec<String>, serde_json::Value)> {
    let txs: serde_json::Value = serde_json::from_slice(json).expect("log search --json");
    let mut out = Vec::new();
    for tx in txs.as_array().expect("an array of transactions") {
        for e in tx["events"].as_array().expect("events") {
            let list = |v: &serde_json::Value| -> Vec<String> {
                let v = match v.as_str() {
                    Some(s) => serde_json::from_str(s).unwrap(),
                    None => v.clone(),
                };
                v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
            };
            let details = match e["details"].as_str() {
                Some(s) => serde_json::from_str(s).unwrap(),
                None => e["details"].clone(),
            };
            out.push((e["event_type"].as_str().unwrap().to_string(), list(&e["recipients"]), details));
        }
    }
    out
}
