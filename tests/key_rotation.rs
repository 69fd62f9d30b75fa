//! A new signing key on a real `pecora serve` loses no receipt already queued.
//!
//! Outbox rows are sealed with a secret derived from the signing key (src/store/seal.rs),
//! and the worker refuses any row whose seal does not verify. Here the injection listener
//! is down, so the acceptance receipts stay queued, while the operator replaces the key:
//! first with SIGHUP (the daemon keeps the old key's seals valid and seals new rows with
//! the new key), then with a restart that lists the old key in
//! `keys.previous_private_keys`. Once the listener is back, both receipts go out, each
//! signed with the key in force when it was made. A third receipt, queued under a key the
//! next restart does not list, is refused and never injected, until the operator lists the
//! key and puts it back with `pecora outbox retry`. `pecora doctor` says at each step what
//! the outbox's seals hold.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pki.rs"]
mod pki;

use std::time::{Duration, Instant};

use daemon::{Daemon, OnData, ServeSetup, Sink, free_port, header};
use indymilter_test::Status;

fn headers(n: u32) -> Vec<(&'static str, String)> {
    vec![
        ("From", "Alice <alice@pec.alpha.test>".to_string()),
        ("To", "bob@pec.beta.test".to_string()),
        ("Subject", format!("Rotazione {n}")),
        ("Message-ID", format!("<rotation-{n}@mua>")),
    ]
}

async fn submit(milter: &str, n: u32) {
    let h = headers(n);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let st = daemon::submit_access(milter, &format!("4ROT{n}"), &h, &["bob@pec.beta.test"], "Testo.\r\n").await;
    assert_eq!(st, Some(Status::Continue), "submission {n}");
}

/// Moves the key pair aside as `old-NAME` and makes a new one in its place.
fn new_key(setup: &ServeSetup, name: &str) {
    for f in ["key.pem", "cert.pem"] {
        std::fs::rename(setup.path(f), setup.path(&format!("{name}-{f}"))).unwrap();
    }
    pki::provider(setup.dir.path());
}

fn wait_log(d: &Daemon, what: &str, limit: Duration) {
    let start = Instant::now();
    while !d.log_text().contains(what) {
        assert!(start.elapsed() < limit, "no {what:?} in the log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `pecora doctor` says, with the checks that need a real Postfix and Dovecot skipped.
fn doctor(setup: &ServeSetup) -> String {
    let (_, out, err) = setup.cli(&["doctor", "--skip", "postfix", "--skip", "dovecot", "--skip", "milter", "--skip", "clock", "--skip", "index"]);
    format!("{out}{err}")
}

/// Stops the daemon the way systemd does, and waits for it.
fn stop(mut d: Daemon) {
    assert!(std::process::Command::new("kill").args(["-TERM", &d.pid().to_string()]).status().unwrap().success());
    assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "pecora serve did not stop:\n{}", d.log_text());
}

/// The signer's certificate of a stored receipt, as `openssl smime -pk7out | pkcs7
/// -print_certs` prints it: compared with the PEM of the key pair in force.
fn signed_by(data: &str, cert_pem: &std::path::Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, data).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["smime", "-verify", "-noverify", "-in"])
        .arg(&msg)
        .arg("-signer")
        .arg(dir.path().join("signer.pem"))
        .args(["-out", "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl smime -verify: {}", String::from_utf8_lossy(&out.stderr));
    let signer = openssl::x509::X509::from_pem(&std::fs::read(dir.path().join("signer.pem")).unwrap()).unwrap();
    let expected = openssl::x509::X509::from_pem(&std::fs::read(cert_pem).unwrap()).unwrap();
    signer.to_der().unwrap() == expected.to_der().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_queued_before_a_key_change_still_go_out() {
    let setup = ServeSetup::new();
    // Nobody listens here: every injection fails and is retried later.
    let down = format!("127.0.0.1:{}", free_port());
    setup.configure(None, &down, "");
    let d = setup.start(&[]);
    submit(&setup.milter, 1).await;

    // The key is replaced while the receipt waits: SIGHUP.
    new_key(&setup, "first");
    assert!(std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap().success());
    wait_log(&d, "configuration reloaded", Duration::from_secs(20));
    assert!(d.log_text().contains("new signing key"), "{}", d.log_text());
    submit(&setup.milter, 2).await;
    stop(d);
    // The old key is not listed yet: doctor says the first receipt would be refused.
    let said = doctor(&setup);
    assert!(said.contains("1 queued outbox message(s) carry a seal no configured key verifies"), "{said}");
    assert!(said.contains("keys.previous_private_keys"), "{said}");
    // Both wait, the first after a failed attempt, with when it is tried again.
    let (code, out, _) = setup.cli(&["outbox", "list", "--status", "pending"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.contains("pending  accettazione") && l.contains("  next attempt ")), "{out}");

    // Restart with the listener back and the first key listed as a previous one.
    let sink = Sink::start(OnData::Accept);
    setup.configure(None, &sink.addr, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let previous = format!("[keys]\nprevious_private_keys = [\"{}\"]\n", setup.path("first-key.pem").display());
    std::fs::write(&setup.config, text.replacen("[keys]\n", &previous, 1)).unwrap();
    let said = doctor(&setup);
    assert!(said.contains("every queued outbox message (2) carries pecora's seal"), "{said}");
    assert!(said.contains("1 queued outbox message(s) are sealed by a previous signing key"), "{said}");
    let d = setup.start(&[]);
    let got = sink.wait_for(2, Duration::from_secs(60));
    assert_eq!(got.len(), 2, "both receipts go out:\n{}", d.log_text());
    let by_subject = |n: u32| {
        got.iter()
            .find(|m| header(&m.data, "Subject") == format!("ACCETTAZIONE: Rotazione {n}"))
            .unwrap_or_else(|| panic!("no receipt for submission {n}: {got:?}"))
    };
    // Each receipt is signed with the key in force when it was made.
    assert!(signed_by(&by_subject(1).data, &setup.path("first-cert.pem")));
    assert!(signed_by(&by_subject(2).data, &setup.path("cert.pem")));
    assert!(!d.log_text().contains("outbox row refused"), "{}", d.log_text());

    // A third receipt waits, the key changes again, and the restart forgets the second key:
    // the row it sealed cannot be told from a forged one and is refused.
    stop(d);
    setup.configure(None, &down, "");
    let d = setup.start(&[]);
    submit(&setup.milter, 3).await;
    stop(d);
    new_key(&setup, "second");
    setup.configure(None, &sink.addr, "");
    let d = setup.start(&[]);
    wait_log(&d, "outbox row refused", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.count(), 2, "nothing more was injected:\n{}", d.log_text());
    assert!(d.log_text().contains("its seal does not match"), "{}", d.log_text());
    stop(d);
    let said = doctor(&setup);
    assert!(said.contains("1 outbox message(s) created in the last 7 days were refused for their seal"), "{said}");

    // The operator lists the failed message, and puts it back once the old key is listed.
    let (code, out, _) = setup.cli(&["outbox", "list"]);
    assert_eq!(code, 0, "{out}");
    let failed: Vec<&str> = out.lines().collect();
    assert_eq!(failed.len(), 1, "{out}");
    assert!(failed[0].contains("failed  accettazione") && failed[0].contains("not injected: its seal does not match"), "{out}");
    let id = failed[0].split_whitespace().next().unwrap().to_string();
    let (code, out, _) = setup.cli(&["outbox", "retry", &id]);
    assert_eq!(code, 1, "without the key that sealed it: {out}");
    assert!(out.contains("no configured key verifies its seal"), "{out}");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let previous = format!("[keys]\nprevious_private_keys = [\"{}\"]\n", setup.path("second-key.pem").display());
    std::fs::write(&setup.config, config.replacen("[keys]\n", &previous, 1)).unwrap();
    let (code, out, _) = setup.cli(&["outbox", "retry", &id, "999"]);
    assert_eq!(code, 1, "999 does not exist: {out}");
    assert!(out.contains(&format!("{id}: queued again (accettazione to alice@pec.alpha.test)")) && out.contains("999: no such outbox message"), "{out}");
    let (code, out, _) = setup.cli(&["outbox", "retry", &id]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("it is pending, and only failed messages are"), "{out}");
    // Sealed again with the current key: the daemon sends it without the old key listed.
    std::fs::write(&setup.config, &config).unwrap();
    let d = setup.start(&[]);
    let got = sink.wait_for(3, Duration::from_secs(60));
    assert_eq!(got.len(), 3, "the retried receipt goes out:\n{}", d.log_text());
    assert_eq!(header(&got[2].data, "Subject"), "ACCETTAZIONE: Rotazione 3");
    assert!(signed_by(&got[2].data, &setup.path("second-cert.pem")), "signed when it was made");
    stop(d);
    let (_, out, _) = setup.cli(&["outbox", "list"]);
    assert_eq!(out.trim(), "no failed outbox message");

    // A previous key taken off the list is revoked by a reload, not only by a restart.
    let listed = std::fs::read_to_string(&setup.config).unwrap().replacen("[keys]\n", &previous, 1);
    std::fs::write(&setup.config, &listed).unwrap();
    let d = setup.start(&[]);
    std::fs::write(&setup.config, config).unwrap();
    // The log file is the one every start of this test appended to: wait for one more
    // "configuration reloaded" than it already holds.
    let reloads = || d.log_text().matches("configuration reloaded").count();
    let before = reloads();
    assert!(std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap().success());
    let start = Instant::now();
    while reloads() == before {
        assert!(start.elapsed() < Duration::from_secs(20), "no reload:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log_text().contains("previous signing keys no longer in keys.previous_private_keys: outbox rows they sealed are refused from now on"),
        "{}",
        d.log_text()
    );
    stop(d);
}
