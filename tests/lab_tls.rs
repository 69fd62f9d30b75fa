//! TLS between providers (pec-format §4.2, decisions.md 22) on the lab: each provider's
//! Postfix reads the policy map `pecora index update` wrote from the index. An active
//! attacker who strips STARTTLS from beta's MX gets nothing: alpha defers the envelope,
//! saying why, instead of delivering it in clear; once beta offers TLS again, the same
//! envelope goes out over a verified connection.

use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

/// Waits (at most 60 s) until `pred` holds for the text of `path`.
fn wait_log(path: &std::path::Path, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = Lab::log(path);
        if pred(&text) || start.elapsed() > Duration::from_secs(60) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn beta_without_starttls_is_not_reached_in_clear() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());

    // The map alpha's Postfix reads: beta's domain, certificate verified; not ours, not the
    // ordinary domain.
    let map = std::fs::read_to_string(Lab::path(&alpha["tls_policy_map"])).unwrap();
    let entries: Vec<&str> = map.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(entries, vec!["pec.beta.test secure match=pec.beta.test:.pec.beta.test"], "{map}");
    let maps = lab.postfix_tool(alpha, "postconf", &["-h", "smtp_tls_policy_maps"]);
    assert!(maps.contains(&format!("texthash:{}", alpha["tls_policy_map"].as_str().unwrap())), "{maps}");

    // The attacker's work: beta's MX no longer offers STARTTLS.
    let mx = format!("127.0.0.1:{}/inet", beta["smtp_port"]);
    lab.postfix_tool(beta, "postconf", &["-P", &format!("{mx}/smtpd_tls_security_level=none")]);
    lab.postfix_tool(beta, "postfix", &["reload"]);
    std::thread::sleep(Duration::from_secs(1));

    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let luca_user = &beta["users"][0];
    let luca = luca_user["address"].as_str().unwrap();
    let out = lab.send(alpha, "starttls", 0, mario, &[luca], &[("To", luca), ("Subject", "Mai in chiaro")], "riservato");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let log = wait_log(&Lab::path(&alpha["maillog"]), |t| t.contains("TLS is required, but was not offered"));
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("TLS is required, but was not offered")).collect();
    assert!(!refused.is_empty(), "alpha's log shows no TLS refusal:\n{log}");
    assert!(refused.iter().all(|l| l.contains("status=deferred") || !l.contains("status=")), "{refused:?}");
    assert!(log.lines().any(|l| l.contains(luca) && l.contains("status=deferred") && l.contains("TLS is required")), "{log}");
    assert!(!log.lines().any(|l| l.contains(luca) && l.contains("status=sent")), "delivered in clear:\n{log}");
    let queue = lab.postfix_tool(alpha, "postqueue", &["-j"]);
    assert!(queue.contains(luca), "the envelope is not waiting in alpha's queue: {queue}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.fetch(beta, luca_user, "imaps").is_empty(), "beta received the envelope");
    let beta_log = Lab::log(&Lab::path(&beta["maillog"]));
    assert!(!beta_log.contains("Mai in chiaro") && !beta_log.lines().any(|l| l.contains(luca) && l.contains("status=sent")), "{beta_log}");

    // STARTTLS back: the deferred envelope leaves over a verified TLS connection.
    lab.postfix_tool(beta, "postconf", &["-P", "-X", &format!("{mx}/smtpd_tls_security_level")]);
    lab.postfix_tool(beta, "postfix", &["reload"]);
    std::thread::sleep(Duration::from_secs(1));
    lab.postfix_tool(alpha, "postqueue", &["-f"]);
    let msgs = lab.wait_for(beta, luca_user, "imaps", |m| m.iter().any(|m| subject(m).contains("Mai in chiaro")));
    assert!(msgs.iter().any(|m| subject(m) == "POSTA CERTIFICATA: Mai in chiaro"), "{:?}", msgs.iter().map(|m| subject(m)).collect::<Vec<_>>());
    let log = Lab::log(&Lab::path(&alpha["maillog"]));
    let port = beta["smtp_port"].to_string();
    assert!(
        log.lines().any(|l| l.contains("Verified TLS connection established to 127.0.0.1") && l.contains(&port)),
        "no verified TLS connection to beta in alpha's log:\n{log}"
    );
}
