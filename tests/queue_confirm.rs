//! decisions.md 18 and issue 13 item 11: `pecora serve` follows the mail log and releases or
//! cancels a held acceptance only on lines of its own Postfix instance's cleanup and qmgr
//! (`<syslog_name>/qmgr[<pid>]`). Lines of another instance, of another program, or without
//! a pid, written to the same log and naming the held queue id, change nothing.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use pecora::store::{EventType, NewEvent, NewOutboxMessage, Record, Store};

#[path = "common/pki.rs"]
mod pki;
#[path = "common/daemon.rs"]
mod daemon;
use daemon::{Daemon, free_port};

fn sql(db: &std::path::Path, query: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(query).output().expect("sqlite3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const RELEASE: &str = "4jfFtL1zw0z1SZCR";
const CANCEL: &str = "4jfFtL0vP4z1SZCS";

/// The host id of the daemon these tests run (tests/common/pki.rs).
const HOST: &str = "t1";

/// Records, in the SQLite registry at `url`, one acceptance per `(pec id, queue id)` whose
/// receipt waits for Postfix's word on that queue id, as host `host` records them.
fn held_acceptances(url: &str, host: &str, held: &[(&str, &str)]) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(url).await.unwrap().with_host(host);
        let now = chrono::Utc::now();
        for (pec_id, qid) in held {
            let mut event = NewEvent::new(now.fixed_offset(), EventType::Acceptance);
            event.pec_id = Some(pec_id.to_string());
            event.sender = Some("mario.rossi@pec.alpha.test".into());
            event.recipients = vec!["luca.verdi@pec.beta.test".into()];
            event.queue_id = Some(qid.to_string());
            let rec = Record {
                event,
                outbox: vec![NewOutboxMessage {
                    kind: "accettazione".into(),
                    mail_from: "posta-certificata@pec.alpha.test".into(),
                    rcpts: vec!["mario.rossi@pec.alpha.test".into()],
                    message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
                    hold_for_queue_id: Some(qid.to_string()),
                }],
                state: vec![],
                idempotency_key: None,
            };
            store.record(&rec, now).await.unwrap();
        }
    });
}

/// A configuration following `maillog` as Postfix instance `postfix-pec`, with `extra`
/// lines in its `[postfix]` section; returns it and the milter's address.
fn config_following(d: &std::path::Path, url: &str, maillog: &std::path::Path, extra: &str) -> (std::path::PathBuf, String) {
    let milter = free_port();
    let config = pki::config(
        d,
        &format!(
            "[listen]\nmilter = \"inet:127.0.0.1:{milter}\"\n[store]\nurl = \"{url}\"\ncheckpoint_dir = \"{0}/cp\"\n\
             [limits]\nspool_dir = \"{0}/spool\"\n[inject]\nendpoint = \"inet:127.0.0.1:{1}\"\n\
             [postfix]\nmaillog = \"{2}\"\nsyslog_name = \"postfix-pec\"\n{extra}",
            d.display(),
            free_port(),
            maillog.display()
        ),
    );
    (config, format!("127.0.0.1:{milter}"))
}

#[test]
fn only_this_instances_cleanup_and_qmgr_settle_a_held_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let db = d.join("registry.db");
    let url = format!("sqlite:{}", db.display());

    // Two acceptances whose receipts wait for Postfix's word on their queue ids.
    held_acceptances(&url, HOST, &[("opec.0@pec.alpha.test", RELEASE), ("opec.1@pec.alpha.test", CANCEL)]);
    // Another host sharing the registry holds receipts for the same queue ids (a queue id
    // is unique on one host only): this host's log settles this host's receipts alone.
    held_acceptances(&url, "t2", &[("opec.2@pec.alpha.test", RELEASE), ("opec.3@pec.alpha.test", CANCEL)]);

    // The log already holds foreign lines about both ids (it is read from its start).
    let maillog = d.join("maillog");
    let ts = "Dec  5 10:00:00 mx.pec.alpha.test";
    let mut foreign = String::new();
    for (qid, tail) in [
        (RELEASE, "from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)"),
        (CANCEL, "milter-reject: END-OF-MESSAGE from x: 5.7.1 forged"),
    ] {
        for tag in [
            // Another instance, Postfix's default name, a listener's override.
            "postfix-other/qmgr[4242]",
            "postfix-other/cleanup[4242]",
            "postfix/qmgr[4242]",
            "postfix/cleanup[4242]",
            "postfix-pec/pec-mx/cleanup[4242]",
            // This instance's name without a pid.
            "postfix-pec/qmgr",
            "postfix-pec/cleanup",
            "postfix-pec/qmgr[]",
            // Other programs.
            "postfix-pec/smtpd[4242]",
            "postfix-pec/postlog[4242]",
            "logger[4242]: postfix-pec/qmgr[4242]",
            "logger[4242]: postfix-pec/cleanup[4242]",
        ] {
            // A tag without "[pid]" ends with ": " like syslog writes it.
            let sep = if tag.ends_with(']') { "]: " } else { ": " };
            let tag = tag.strip_suffix(']').unwrap_or(tag);
            foreign.push_str(&format!("{ts} {tag}{sep}{qid}: {tail}\n"));
        }
    }
    std::fs::write(&maillog, &foreign).unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "");
    let log = d.join("serve.log");
    let _daemon = Daemon::start(&config, &milter, &log, &[]);
    let status = |qid: &str| status_of(&db, qid, HOST);
    let cancellations = || sql(&db, "SELECT count(*) FROM registry_events WHERE event_type = 'non-acceptance'");

    // The follower read the log at start (and reads it again when it grows, and every 5 s):
    // the foreign lines change nothing.
    std::thread::sleep(Duration::from_secs(3));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status(RELEASE), "held", "{text}");
    assert_eq!(status(CANCEL), "held", "{text}");
    assert_eq!(cancellations(), "0", "{text}");
    assert!(!text.contains("receipts released") && !text.contains("receipts cancelled"), "{text}");

    // Still held: more foreign lines written while pecora follows the log.
    let mut f = std::fs::OpenOptions::new().append(true).open(&maillog).unwrap();
    f.write_all(foreign.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(RELEASE), "held");
    assert_eq!(status(CANCEL), "held");

    // This instance's qmgr and cleanup, with their pids, settle them.
    writeln!(f, "{ts} postfix-pec/qmgr[7275]: {RELEASE}: from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)").unwrap();
    writeln!(f, "{ts} postfix-pec/cleanup[7585]: {CANCEL}: milter-reject: END-OF-MESSAGE from x: 5.7.1 refused").unwrap();
    drop(f);
    let start = Instant::now();
    while (status(RELEASE) == "held" || status(CANCEL) != "cancelled") && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled_in = start.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // At once: the log's growth woke the follower (inotify), well before its 5 s backstop.
    assert!(!text.contains("cannot watch the mail log"), "{text}");
    assert!(settled_in < Duration::from_millis(1500), "settled {settled_in:?} after the lines were written: {text}");
    assert_ne!(status(RELEASE), "held", "{text}");
    assert_ne!(status(RELEASE), "cancelled", "{text}");
    assert_eq!(status(CANCEL), "cancelled", "{text}");
    assert_eq!(cancellations(), "1", "{text}");
    assert_eq!(status_of(&db, RELEASE, "t2"), "held", "another host's receipt released: {text}");
    assert_eq!(status_of(&db, CANCEL, "t2"), "held", "another host's receipt cancelled: {text}");
    let cancelled_pec = sql(&db, "SELECT pec_id FROM registry_events WHERE event_type = 'non-acceptance'");
    assert_eq!(cancelled_pec, "opec.1@pec.alpha.test");
}

/// The status of the receipt host `host` holds for queue id `qid`.
fn status_of(db: &std::path::Path, qid: &str, host: &str) -> String {
    sql(
        db,
        &format!(
            "SELECT o.status FROM outbox_messages o JOIN registry_events e ON e.seq = o.event_seq \
             WHERE o.queue_id = '{qid}' AND e.host = '{host}'"
        ),
    )
}

/// decisions.md 18: a receipt held for a queue id that Postfix never logs (the message was
/// lost after the milter, or the log is not Postfix's) is cancelled once `confirm_timeout`
/// has passed since it was recorded, with the reason in the registry; never sent.
#[test]
fn a_queue_id_that_never_appears_cancels_the_receipt_after_confirm_timeout() {
    const NEVER: &str = "4jfFtL2xQ9z1SZCT";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let db = d.join("registry.db");
    let url = format!("sqlite:{}", db.display());
    held_acceptances(&url, HOST, &[("opec.never@pec.alpha.test", NEVER)]);
    // Another host's receipt for the same queue id: its log is not this one.
    held_acceptances(&url, "t2", &[("opec.elsewhere@pec.alpha.test", NEVER)]);
    // A log of this instance that keeps growing, with other ids only.
    let maillog = d.join("maillog");
    let ts = "Dec  5 10:00:00 mx.pec.alpha.test";
    std::fs::write(&maillog, format!("{ts} postfix-pec/qmgr[7275]: 4jfOTHER1z1SZCA: from=<a@pec.alpha.test>, size=1, nrcpt=1 (queue active)\n")).unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "confirm_timeout = \"4s\"\n");
    let log = d.join("serve.log");
    let started = Instant::now();
    let _daemon = Daemon::start(&config, &milter, &log, &[]);
    let status = || status_of(&db, NEVER, HOST);

    // Before the timeout it stays held, however the log grows.
    std::thread::sleep(Duration::from_secs(2));
    let mut f = std::fs::OpenOptions::new().append(true).open(&maillog).unwrap();
    writeln!(f, "{ts} postfix-pec/qmgr[7275]: 4jfOTHER2z1SZCB: from=<a@pec.alpha.test>, size=1, nrcpt=1 (queue active)").unwrap();
    drop(f);
    if started.elapsed() < Duration::from_secs(3) {
        assert_eq!(status(), "held", "cancelled before confirm_timeout");
    }
    while status() != "cancelled" && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status(), "cancelled", "{text}");
    let why = sql(&db, "SELECT details FROM registry_events WHERE event_type = 'non-acceptance'");
    assert!(why.contains("never appeared in the mail log"), "{why}");
    assert_eq!(status_of(&db, NEVER, "t2"), "held", "another host's receipt cancelled: {text}");
}
