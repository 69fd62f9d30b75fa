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

/// A provider's directory whose SQLite registry holds, recorded by this host, the
/// acceptances `held` (pec id, queue id) waiting for Postfix's word: the directory, the
/// registry file and its URL.
fn provider_holding(held: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let db = dir.path().join("registry.db");
    let url = format!("sqlite:{}", db.display());
    held_acceptances(&url, HOST, held);
    (dir, db, url)
}

/// Waits while `still` holds, at most `limit`; how long it waited.
fn wait_while(limit: Duration, still: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while still() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// What `pecora doctor` says, without the checks that need a real Postfix and Dovecot.
fn doctor(config: &std::path::Path) -> String {
    let (_, out, _) = daemon::cli(config, &["doctor", "--skip", "postfix", "--skip", "dovecot", "--skip", "milter", "--skip", "clock", "--skip", "index"]);
    out
}

/// A stand-in `postqueue` running `script`, in a directory of `d`: the PATH that puts it
/// first.
fn stand_in_postqueue(d: &std::path::Path, script: &str) -> String {
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("postqueue");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
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
    // Two acceptances whose receipts wait for Postfix's word on their queue ids.
    let (dir, db, url) = provider_holding(&[("opec.0@pec.alpha.test", RELEASE), ("opec.1@pec.alpha.test", CANCEL)]);
    let d = dir.path();
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
    let settled_in = wait_while(Duration::from_secs(20), || status(RELEASE) == "held" || status(CANCEL) != "cancelled");
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
    let (dir, db, url) = provider_holding(&[("opec.never@pec.alpha.test", NEVER)]);
    let d = dir.path();
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

    // Nobody settles t2's receipt here. Two days on, doctor says so, with the likely cause.
    assert!(!doctor(&config).contains("receipt(s) held for host"), "{}", doctor(&config));
    sql(&db, "UPDATE outbox_messages SET created_at = '2026-01-01T00:00:00.000000Z' WHERE status = 'held'");
    let said = doctor(&config);
    assert!(said.contains("1 receipt(s) held for host t2 since 2026-01-01T00:00:00.000000Z, past [postfix] confirm_timeout"), "{said}");
    assert!(said.contains("if this host was called t2 before, set provider.host_id = \"t2\""), "{said}");
}

/// Postfix queued the message and logged it, and then the log was rotated while pecora was
/// down (an upgrade at the hour of logrotate): the line is in `maillog.1`, not in the new
/// file. At start pecora reads the last rotated file first, so the receipt goes out instead
/// of being cancelled at `confirm_timeout` as a message Postfix never queued.
#[test]
fn a_line_rotated_away_while_pecora_was_down_still_releases_the_receipt() {
    const ROTATED: &str = "4jfFtL3rOtz1SZCU";
    let (dir, db, url) = provider_holding(&[("opec.rotated@pec.alpha.test", ROTATED)]);
    let d = dir.path();
    let ts = "Dec  5 10:00:00 mx.pec.alpha.test";
    let maillog = d.join("maillog");
    std::fs::write(
        d.join("maillog.1"),
        format!("{ts} postfix-pec/qmgr[7275]: {ROTATED}: from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)\n"),
    )
    .unwrap();
    std::fs::write(&maillog, format!("{ts} postfix-pec/qmgr[7275]: 4jfOTHER3z1SZCC: from=<a@pec.alpha.test>, size=1, nrcpt=1 (queue active)\n")).unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "");
    let log = d.join("serve.log");
    let _daemon = Daemon::start(&config, &milter, &log, &[]);
    wait_while(Duration::from_secs(20), || status_of(&db, ROTATED, HOST) == "held");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(["pending", "sent", "failed"].contains(&status_of(&db, ROTATED, HOST).as_str()), "still held: {text}");
    assert!(text.contains("reading the mail log's last rotated file first"), "{text}");
    assert_eq!(sql(&db, "SELECT count(*) FROM registry_events WHERE event_type = 'non-acceptance'"), "0", "{text}");
}

/// A shared syslog file holds other programs' lines, not always UTF-8: one of them before
/// qmgr's line must not stop the follower there (it used to fail on it and start the log
/// again at every pass, so no later line was ever read).
#[test]
fn a_line_that_is_not_utf8_does_not_stop_the_follower() {
    const AFTER: &str = "4jfFtL4uTfz1SZCV";
    let (dir, db, url) = provider_holding(&[("opec.utf8@pec.alpha.test", AFTER)]);
    let d = dir.path();
    let ts = "Dec  5 10:00:00 mx.pec.alpha.test";
    let maillog = d.join("maillog");
    let mut text = format!("{ts} dovecot[99]: imap(mario): Subject ").into_bytes();
    text.extend_from_slice(b"caf\xe9 \xff\xfe\n");
    text.extend_from_slice(format!("{ts} postfix-pec/qmgr[7275]: {AFTER}: from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)\n").as_bytes());
    std::fs::write(&maillog, text).unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "");
    let log = d.join("serve.log");
    let _daemon = Daemon::start(&config, &milter, &log, &[]);
    wait_while(Duration::from_secs(20), || status_of(&db, AFTER, HOST) == "held");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_ne!(status_of(&db, AFTER, HOST), "held", "{said}");
    assert!(!said.contains("reading the mail log"), "{said}");
}

/// `pecora doctor` calls this host's receipts late once they have waited for the mail log
/// for over 10 minutes, long before `confirm_timeout` (a day) decides: their senders are
/// waiting for a ricevuta di accettazione.
#[test]
fn doctor_calls_receipts_held_for_minutes_late() {
    let (dir, db, url) = provider_holding(&[("opec.late@pec.alpha.test", "4jfFtL5lAtz1SZCW")]);
    let d = dir.path();
    let maillog = d.join("maillog");
    std::fs::write(&maillog, "").unwrap();
    let (config, _) = config_following(d, &url, &maillog, "");
    // Just recorded: nothing to say.
    let said = doctor(&config);
    assert!(!said.contains("held for Postfix's word"), "{said}");
    // Twenty minutes on.
    let ago = pecora::store::ts(chrono::Utc::now() - chrono::Duration::minutes(20));
    sql(&db, &format!("UPDATE outbox_messages SET created_at = '{ago}' WHERE status = 'held'"));
    let said = doctor(&config);
    assert!(
        said.contains(&format!("1 receipt(s) of this host held for Postfix's word for over 10 minutes (the oldest since {ago})")),
        "{said}"
    );
    assert!(!said.contains("past [postfix] confirm_timeout"), "{said}");
    // The operator lists it, with the queue id to look for in the mail log.
    let (code, out, _) = daemon::cli(&config, &["outbox", "list", "--status", "held"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("held  accettazione  created {ago}  queue id 4jfFtL5lAtz1SZCW  attempts 0  from ")), "{out}");
}

/// At `confirm_timeout`, a receipt whose queue id the mail log never named is cancelled only
/// when Postfix's queue does not list the message either: a message `postqueue -j` still
/// shows (deferred, say) was queued, and its log line went missing, so its receipt goes out.
/// A stand-in `postqueue` first in PATH plays Postfix's queue here, in Postfix's own JSON.
#[test]
fn a_message_postfix_still_lists_is_not_cancelled_at_confirm_timeout() {
    const LISTED: &str = "4jfFtL6dEfz1SZCX";
    const GONE: &str = "4jfFtL7gOnz1SZCY";
    let (dir, db, url) = provider_holding(&[("opec.listed@pec.alpha.test", LISTED), ("opec.gone@pec.alpha.test", GONE)]);
    let d = dir.path();
    let path = stand_in_postqueue(
        d,
        &format!(
            "#!/bin/sh\n[ \"$1\" = -j ] || [ \"$3\" = -j ] || exit 64\n\
             echo '{{\"queue_name\": \"deferred\", \"queue_id\": \"{LISTED}\", \"arrival_time\": 1733450000, \"message_size\": 6462, \"sender\": \"mario.rossi@pec.alpha.test\", \"recipients\": [{{\"address\": \"luca.verdi@pec.beta.test\", \"delay_reason\": \"connect to mx.pec.beta.test: Connection refused\"}}]}}'\n"
        ),
    );
    let maillog = d.join("maillog");
    std::fs::write(&maillog, "").unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "confirm_timeout = \"2s\"\n");
    let log = d.join("serve.log");
    let _daemon = Daemon::start(&config, &milter, &log, &[("PATH", &path)]);
    wait_while(Duration::from_secs(30), || status_of(&db, LISTED, HOST) == "held" || status_of(&db, GONE, HOST) == "held");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(["pending", "sent", "failed"].contains(&status_of(&db, LISTED, HOST).as_str()), "{text}");
    assert!(text.contains("the mail log never named this queue id, but Postfix's queue lists the message: receipts released"), "{text}");
    assert_eq!(status_of(&db, GONE, HOST), "cancelled", "{text}");
    let why = sql(&db, "SELECT pec_id, details FROM registry_events WHERE event_type = 'non-acceptance'");
    assert!(why.starts_with("opec.gone@pec.alpha.test|") && why.contains("and Postfix's queue does not list it"), "{why}");
}

/// `postqueue -j` that never answers (a stuck `showq`) does not stop the follower: after 30 s
/// it goes on without the listing, and a queue id qmgr logs meanwhile is released. The
/// message put on hold stays held, waiting for a listing that comes.
#[test]
fn a_postqueue_that_never_answers_does_not_stop_the_follower() {
    const ON_HOLD: &str = "4jfFtL8hLdz1SZCZ";
    const QUEUED: &str = "4jfFtL9qUdz1SZDA";
    let (dir, db, url) = provider_holding(&[("opec.onhold@pec.alpha.test", ON_HOLD), ("opec.queued@pec.alpha.test", QUEUED)]);
    let d = dir.path();
    let path = stand_in_postqueue(d, "#!/bin/sh\nexec sleep 600\n");
    let ts = "Dec  6 03:10:00 mx.pec.alpha.test";
    let maillog = d.join("maillog");
    std::fs::write(&maillog, format!("{ts} postfix-pec/cleanup[1]: {ON_HOLD}: hold: header Subject: x from localhost[127.0.0.1]; from=<a@b> to=<c@d>: held for review\n")).unwrap();

    let (config, milter) = config_following(d, &url, &maillog, "");
    let log = d.join("serve.log");
    let _daemon = Daemon::start(&config, &milter, &log, &[("PATH", &path)]);
    // The follower is now waiting for postqueue; qmgr logs the other message.
    std::thread::sleep(Duration::from_secs(1));
    let mut f = std::fs::OpenOptions::new().append(true).open(&maillog).unwrap();
    writeln!(f, "{ts} postfix-pec/qmgr[7275]: {QUEUED}: from=<mario.rossi@pec.alpha.test>, size=6462, nrcpt=1 (queue active)").unwrap();
    drop(f);
    wait_while(Duration::from_secs(60), || status_of(&db, QUEUED, HOST) == "held");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_ne!(status_of(&db, QUEUED, HOST), "held", "the follower stayed stuck behind postqueue: {text}");
    assert!(text.contains("postqueue -j did not answer within 30s"), "{text}");
    assert_eq!(status_of(&db, ON_HOLD, HOST), "held", "{text}");
}
