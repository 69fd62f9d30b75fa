//! Issue 14: every delivery receipt on time under load. 50 PEC messages from alpha to one
//! beta mailbox over 20 parallel SMTP sessions: Dovecot stores them concurrently (and then
//! often reports uid 0 to the Lua hook), yet every message gets exactly one CONSEGNA at the
//! sender, through the hook's event, within a bounded time, and none through the
//! reconciliation sweep (which, on the lab, only looks at envelopes taken in charge more
//! than 5 minutes ago; the registry says `found_by=reconciliation` for what it certifies).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, count_by_subject};

const MESSAGES: usize = 50;
const SESSIONS: usize = 20;
/// How long after the last submission every CONSEGNA must be in the sender's mailbox.
const BOUND: Duration = Duration::from_secs(90);

fn sqlite(db: &std::path::Path, query: &str) -> String {
    let out = Command::new("sqlite3").args(["-cmd", ".timeout 10000"]).arg(db).arg(query).output().unwrap();
    assert!(out.status.success(), "{query}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn fifty_deliveries_to_one_mailbox_over_twenty_sessions_each_get_one_consegna_without_the_sweep() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let subjects: Vec<String> = (0..MESSAGES).map(|i| format!("Carico {i:02}")).collect();

    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..SESSIONS)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= MESSAGES {
                            return failed;
                        }
                        let out = lab.send(alpha, "starttls", 0, &mario, &[&luca], &[("Subject", &subjects[i])], "Prova di carico.");
                        if !out.status.success() {
                            failed.push(format!("{}: {}", subjects[i], String::from_utf8_lossy(&out.stdout)));
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let submitted = started.elapsed();
    assert!(failures.is_empty(), "submissions refused:\n{}", failures.join("\n"));
    let last_submission = Instant::now();

    // Every CONSEGNA reaches mario within BOUND of the last submission (and every
    // ACCETTAZIONE, which the acceptance release sends; timed apart).
    let mut msgs;
    let (mut waited, mut accepted_in) = (None, None);
    loop {
        msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
        if waited.is_none() && count_by_subject(&msgs, "CONSEGNA: ").len() >= MESSAGES {
            waited = Some(last_submission.elapsed());
        }
        if accepted_in.is_none() && count_by_subject(&msgs, "ACCETTAZIONE: ").len() >= MESSAGES {
            accepted_in = Some(last_submission.elapsed());
        }
        if (waited.is_some() && accepted_in.is_some()) || last_submission.elapsed() > BOUND {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let waited = waited.unwrap_or_else(|| last_submission.elapsed());
    let beta_log = Lab::log(&Lab::path(&beta["pecora_log"]));
    let no_uid = beta_log.matches("Dovecot told no uid").count();
    eprintln!(
        "{MESSAGES} submissions over {SESSIONS} sessions in {submitted:?}; every CONSEGNA in {waited:?} after the last, every ACCETTAZIONE in {accepted_in:?}; \
         events Dovecot reported without a uid, resolved by Message-ID: {no_uid}"
    );
    let consegna = count_by_subject(&msgs, "CONSEGNA: ");
    let accettazione = count_by_subject(&msgs, "ACCETTAZIONE: ");
    let missing: Vec<&String> = subjects.iter().filter(|s| !consegna.contains_key(*s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {MESSAGES} CONSEGNA missing {waited:?} after the last submission: {missing:?}\nbeta's pecora log:\n{}",
        missing.len(),
        beta_log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect::<Vec<_>>().join("\n")
    );
    for s in &subjects {
        assert_eq!(consegna.get(s), Some(&1), "CONSEGNA: {s}");
        assert_eq!(accettazione.get(s), Some(&1), "ACCETTAZIONE: {s}");
    }
    // One envelope each in luca's mailbox.
    let stored = count_by_subject(&lab.fetch(beta, &beta["users"][0], "imaps"), "POSTA CERTIFICATA: ");
    for s in &subjects {
        assert_eq!(stored.get(s), Some(&1), "POSTA CERTIFICATA: {s}");
    }

    // The hook's events certified them all: none by the sweep, one delivery each.
    let db = Lab::path(&beta["registry"]["path_or_url"]);
    assert_eq!(sqlite(&db, "SELECT count(*) FROM registry_events WHERE event_type = 'delivery'"), MESSAGES.to_string());
    assert_eq!(sqlite(&db, "SELECT count(*) FROM registry_events WHERE event_type = 'delivery' AND details LIKE '%reconciliation%'"), "0");
    assert!(!beta_log.contains("found by reconciliation"), "the sweep certified a delivery");
    // No event lost, none left or set aside, none retried as "uid 0".
    let spool = Lab::path(&beta["delivery_spool"]);
    for sub in ["new", "bad", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(spool.join(sub)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{sub}/ holds {left:?}");
    }
    assert!(!beta_log.contains("kept for a retry"), "{beta_log}");
    let dovecot_log = Lab::log(&Lab::path(&beta["dovecot_log"]));
    assert!(!dovecot_log.contains("cannot publish"), "the hook lost an event:\n{dovecot_log}");
}
