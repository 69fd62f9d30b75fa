//! Crash safety, proved with SIGKILL on a real `pecora serve` process.
//!
//! Each test starts the binary Cargo built with its own configuration (SQLite registry in a
//! temporary directory, the milter on a loopback port, the injection endpoint pointed at a
//! fake SMTP listener the test controls), drives one access-point transaction through the
//! milter socket the way Postfix does (indymilter-test speaks the milter protocol over TCP),
//! and kills the daemon at one of the moments where a crash hurts most:
//!
//! | point           | how                                              | promise checked       |
//! |-----------------|--------------------------------------------------|-----------------------|
//! | `after-record`  | failpoint: event and outbox committed, Postfix   | the receipt goes out  |
//! |                 | not yet answered                                 | once after restart    |
//! | `before-inject` | failpoint: outbox message leased, no connection  | once, after restart   |
//! | `during-inject` | the fake listener SIGKILLs pecora when it sends  | once, after restart   |
//! |                 | DATA, before any byte of the message             |                       |
//! | `after-inject`  | failpoint: listener said 250 to the final dot,   | once: the mail log    |
//! |                 | row not yet marked sent                          | says Postfix has it   |
//!
//! After the kill the daemon is started again without the failpoint; the test checks what
//! reached the injection listener, that the registry holds exactly one acceptance row
//! (`pecora log search --json`), that the chain still verifies (`pecora log verify`), and the
//! outbox row's final state.
//!
//! Leases: a message the dead worker had claimed is still leased to it. The restarted
//! daemon (same host, same worker name) ends its own old leases when its worker starts, so
//! the message goes out at once, not after the 5-minute lease another host would wait for.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use daemon::{Daemon, OnData, ServeSetup, Sink, cli, header, killed_by_sigkill};
use indymilter_test::Status;

const HEADERS: &[(&str, &str)] = &[
    ("From", "Alice <alice@pec.alpha.test>"),
    ("To", "bob@pec.beta.test"),
    ("Subject", "Crash test"),
    ("Message-ID", "<crash-1@mua>"),
];

/// One test's world: a directory with keys, index and configuration, and the sink.
struct World {
    setup: ServeSetup,
    sink: Sink,
}

impl World {
    fn new(mode: OnData) -> World {
        World::make(mode, false)
    }

    /// A world whose sink writes a mail log as Postfix does, which pecora follows
    /// (`[postfix] maillog`): the acceptance is held until the test logs that Postfix
    /// queued the submission ([`World::log_queued`]).
    fn with_maillog(mode: OnData) -> World {
        World::make(mode, true)
    }

    fn make(mode: OnData, maillog: bool) -> World {
        let setup = ServeSetup::new();
        let log = setup.path("maillog");
        let sink = if maillog { Sink::start_logging(mode, &log) } else { Sink::start(mode) };
        let postfix = if maillog {
            std::fs::write(&log, "").unwrap();
            format!("[postfix]\nmaillog = \"{}\"\nsyslog_name = \"{}\"\n", log.display(), daemon::SINK_SYSLOG_NAME)
        } else {
            String::new()
        };
        setup.configure(None, &sink.addr.to_string(), &postfix);
        World { setup, sink }
    }

    /// Appends qmgr's line saying the submission (queue id 4CRASH1) is in the queue.
    fn log_queued(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.setup.path("maillog")).unwrap();
        writeln!(
            f,
            "Dec  5 10:00:00 sink {}/qmgr[4243]: 4CRASH1: from=<alice@pec.alpha.test>, size=1, nrcpt=1 (queue active)",
            daemon::SINK_SYSLOG_NAME
        )
        .unwrap();
    }

    fn start(&self, failpoint: Option<&str>) -> Daemon {
        let env: Vec<(&str, &str)> = failpoint
            .map(|f| vec![("PECORA_FAILPOINT", f)])
            .unwrap_or_default();
        self.setup.start(&env)
    }

    fn db(&self) -> PathBuf {
        self.setup.path("registry.db")
    }

    /// Runs SQL on the registry with the sqlite3 client (waiting for pecora's locks).
    fn sql(&self, sql: &str) -> String {
        sqlite(&self.db(), sql)
    }

    /// `status|attempts|kind` of every outbox row.
    fn outbox(&self) -> Vec<String> {
        self.sql("SELECT status, attempts, kind FROM outbox_messages ORDER BY id")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The acceptance rows of the registry, through the command line.
    fn acceptances(&self) -> Vec<serde_json::Value> {
        let (code, out, err) = self.setup.cli(&["log", "search", "--json"]);
        assert_eq!(code, 0, "pecora log search: {err}");
        let views: Vec<serde_json::Value> = serde_json::from_str(&out).expect("search JSON");
        views
            .iter()
            .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["event_type"] == "acceptance")
            .collect()
    }

    fn assert_chain_verifies(&self) {
        let (code, out, err) = self.setup.cli(&["log", "verify"]);
        assert_eq!(code, 0, "pecora log verify after the crash: {out}{err}");
    }
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's access-point transaction (queue id 4CRASH1). `None` when the milter
/// connection broke before a reply.
async fn submit(milter: &str) -> Option<Status> {
    daemon::submit_access(milter, "4CRASH1", HEADERS, &["bob@pec.beta.test"], &"Testo del messaggio.\r\n".repeat(50)).await
}

/// The one acceptance the sink should hold, checked as a receipt of this transaction.
fn assert_acceptance(m: &daemon::Stored, acc: &Acceptance) {
    assert_eq!(m.rcpts, ["alice@pec.alpha.test"]);
    assert_eq!(header(&m.data, "X-Ricevuta"), "accettazione");
    assert_eq!(header(&m.data, "X-Riferimento-Message-ID"), "<crash-1@mua>");
    assert_eq!(header(&m.data, "Subject"), "ACCETTAZIONE: Crash test");
    assert_eq!(
        header(&m.data, "Message-ID"),
        format!("<{}>", acc.receipt_id),
        "the receipt is the one the registry row {} names",
        acc.pec_id
    );
}

/// The registry's acceptance row: the PEC id and the Message-ID of its receipt.
#[derive(Debug, PartialEq, Eq)]
struct Acceptance {
    pec_id: String,
    receipt_id: String,
}

/// The registry's single acceptance row.
fn single_acceptance(w: &World) -> Acceptance {
    let acc = w.acceptances();
    assert_eq!(acc.len(), 1, "exactly one acceptance row: {acc:#?}");
    assert_eq!(acc[0]["queue_id"], "4CRASH1");
    let generated: Vec<String> =
        serde_json::from_str(acc[0]["generated_ids"].as_str().unwrap()).unwrap();
    Acceptance {
        pec_id: acc[0]["pec_id"].as_str().unwrap().to_string(),
        receipt_id: generated[1].clone(),
    }
}

/// Waits (20 s at most) for the daemon to die by SIGKILL, and for its log to say it reached
/// `failpoint` (None: the sink killed it).
fn assert_killed(d: &mut Daemon, failpoint: Option<&str>) {
    let st = d.wait_exit(Duration::from_secs(20)).expect("pecora died");
    assert!(killed_by_sigkill(&st), "killed by SIGKILL, not {st}");
    if let Some(f) = failpoint {
        assert!(d.log_text().contains(&format!("failpoint {f} reached")));
    }
}

impl World {
    /// Starts the daemon again without a failpoint: the sink gets the acceptance `acc`
    /// (`what` says why it should), and no second copy within 2 s.
    fn restart_and_receive_once(&self, acc: &Acceptance, what: &str) -> Daemon {
        let d = self.start(None);
        let got = self.sink.wait_for(1, Duration::from_secs(20));
        assert_eq!(got.len(), 1, "{what}");
        assert_acceptance(&got[0], acc);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(self.sink.count(), 1, "and only once");
        d
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_record_the_receipt_goes_out_once_after_restart() {
    let w = World::new(OnData::Accept);
    let mut d = w.start(Some("after-record"));

    // The milter dies between committing the acceptance and answering: Postfix sees the
    // connection break (and, with milter_default_action = tempfail, tells the client 4xx).
    let status = submit(&w.setup.milter).await;
    assert_eq!(status, None, "no reply after the failpoint: {status:?}");
    assert_killed(&mut d, Some("after-record"));

    // What was committed survived: one acceptance, its receipt pending in the outbox.
    let acc = single_acceptance(&w);
    assert_eq!(w.outbox(), ["pending|0|accettazione"]);
    assert_eq!(w.sink.count(), 0);

    // Restarted, the daemon sends the receipt, once.
    let _d = w.restart_and_receive_once(&acc, "the receipt went out after the restart");
    assert_eq!(w.outbox(), ["sent|1|accettazione"]);
    assert_eq!(single_acceptance(&w), acc);
    w.assert_chain_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_inject_the_leased_receipt_goes_out_once_after_restart() {
    // With the mail log, the receipt waits for the test's word that Postfix queued the
    // submission: the worker cannot claim it, and die, before the milter has answered.
    let w = World::with_maillog(OnData::Accept);
    let mut d = w.start(Some("before-inject"));

    // The milter answers; the worker claims the receipt and dies before connecting.
    assert_eq!(submit(&w.setup.milter).await, Some(Status::Continue));
    w.log_queued();
    assert_killed(&mut d, Some("before-inject"));
    assert_eq!(w.sink.count(), 0);
    assert_eq!(w.sink.data_commands.load(Ordering::SeqCst), 0);
    let acc = single_acceptance(&w);

    let _d = w.restart_and_receive_once(&acc, "the restarted daemon sent the receipt its predecessor had claimed");
    assert_eq!(w.outbox(), ["sent|2|accettazione"]);
    assert_eq!(single_acceptance(&w), acc);
    w.assert_chain_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_inject_the_half_sent_receipt_goes_out_once_after_restart() {
    let w = World::new(OnData::KillOnce);
    let mut d = w.start(None);
    w.sink.victim.store(d.pid(), Ordering::SeqCst);

    // The worker sends MAIL, RCPT, DATA; the listener kills it there (SIGKILL) and drops
    // the half transaction, as Postfix does when the client vanishes before the final dot.
    // The listener greets only once the milter has answered.
    w.sink.hold.store(true, Ordering::SeqCst);
    assert_eq!(submit(&w.setup.milter).await, Some(Status::Continue));
    w.sink.hold.store(false, Ordering::SeqCst);
    assert_killed(&mut d, None);
    assert_eq!(w.sink.killed.load(Ordering::SeqCst), d.pid());
    assert_eq!(w.sink.data_commands.load(Ordering::SeqCst), 1);
    assert_eq!(w.sink.count(), 0, "no message was committed");
    let acc = single_acceptance(&w);

    let _d = w.restart_and_receive_once(&acc, "the restarted daemon sent the receipt its predecessor had claimed");
    assert_eq!(w.sink.data_commands.load(Ordering::SeqCst), 2);
    assert_eq!(w.outbox(), ["sent|2|accettazione"]);
    w.assert_chain_verifies();
}

/// A crash after the injection listener accepted the message and before the row is marked
/// sent: the restarted daemon finds the message's Message-ID in the mail log, logged by
/// cleanup under a queue id that qmgr then queued, so it marks the row sent instead of
/// submitting it again. The sender gets the receipt once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_inject_the_receipt_goes_out_exactly_once_after_restart() {
    let w = World::with_maillog(OnData::Accept);
    let mut d = w.start(Some("after-inject"));

    assert_eq!(submit(&w.setup.milter).await, Some(Status::Continue));
    // Postfix queued the submission: the held acceptance is released and injected.
    w.log_queued();
    assert_killed(&mut d, Some("after-inject"));
    assert_eq!(w.sink.count(), 1, "the listener had committed the receipt");
    let acc = single_acceptance(&w);
    assert_acceptance(&w.sink.messages()[0], &acc);
    assert_eq!(w.outbox(), ["pending|1|accettazione"], "not marked sent before the crash");

    let d = w.start(None);
    let start = std::time::Instant::now();
    while w.outbox() != ["sent|2|accettazione"] {
        assert!(start.elapsed() < Duration::from_secs(20), "the row was not settled: {:?}", w.outbox());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(w.sink.count(), 1, "the receipt was not submitted again");
    assert_eq!(w.sink.data_commands.load(Ordering::SeqCst), 1);
    assert!(
        d.log_text().contains("an earlier attempt had already handed this message to Postfix"),
        "{}",
        d.log_text()
    );
    assert_eq!(w.outbox(), ["sent|2|accettazione"]);
    assert_eq!(single_acceptance(&w), acc);
    w.assert_chain_verifies();
}

/// Without a mail log to look in, the outbox is at least once: the same crash sends the
/// receipt a second time (the same bytes, same Message-ID), and pecora says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_inject_without_a_mail_log_the_receipt_is_sent_again() {
    let w = World::new(OnData::Accept);
    let mut d = w.start(Some("after-inject"));

    // The listener greets only once the milter has answered: the worker cannot finish the
    // injection, and die, before the milter's reply is out.
    w.sink.hold.store(true, Ordering::SeqCst);
    assert_eq!(submit(&w.setup.milter).await, Some(Status::Continue));
    w.sink.hold.store(false, Ordering::SeqCst);
    assert_killed(&mut d, Some("after-inject"));
    assert_eq!(w.sink.count(), 1, "the listener had committed the receipt");

    let d = w.start(None);
    let got = w.sink.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "the receipt is submitted again after the restart");
    assert_eq!(got[0].data, got[1].data, "the second copy is the same message, same Message-ID");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.sink.count(), 2, "no third copy");
    assert_eq!(w.outbox(), ["sent|2|accettazione"]);
    assert!(d.log_text().contains("no mail log to tell whether an earlier attempt reached Postfix"));
    w.assert_chain_verifies();
}

/// Stops a lab provider's pecora and starts it again as lab/up does, with `failpoint`
/// armed; waits until its milter answers.
fn start_with_failpoint(lab: &lab::Lab, host: &serde_json::Value, failpoint: &str) -> std::process::Child {
    let config = lab::Lab::path(&host["config_file"]);
    lab.stop_pecora(host);
    let log_dir = config.parent().unwrap().to_path_buf();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("pecora.log"))
        .unwrap();
    let child = Command::new("setsid")
        .arg(daemon::BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("PECORA_FAILPOINT", failpoint)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(log_dir.join("pecora.pid"), format!("{}\n", child.id())).unwrap();
    let milter = host["milter"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    while !lab::milter_answers(&milter) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pecora did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// `after-inject` with real Postfix and Dovecot (the lab): alpha's pecora dies right after
/// Postfix's injection listener said 250 to the acceptance, before the outbox row is marked
/// sent. Restarted, it finds the receipt's Message-ID in Postfix's mail log (cleanup's
/// `message-id=` under a queue id qmgr queued) and marks the row sent: the sender's mailbox
/// holds one ACCETTAZIONE, and the transaction goes on to one envelope and one CONSEGNA.
#[test]
fn after_inject_with_real_postfix_the_sender_gets_one_acceptance() {
    use lab::{Lab, count_by_subject};
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let config = Lab::path(&alpha["config_file"]);
    let pecora_log = Lab::path(&alpha["pecora_log"]);

    let mut child = start_with_failpoint(&lab, alpha, "after-inject");
    let out = lab.send(alpha, "starttls", 0, &mario, &[&luca], &[("Subject", "Crash dopo l'iniezione")], "x");
    assert!(out.status.success(), "submission refused: {}", String::from_utf8_lossy(&out.stdout));
    let start = std::time::Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "pecora did not reach the failpoint");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(killed_by_sigkill(&st), "killed by SIGKILL, not {st}");
    assert!(Lab::log(&pecora_log).contains("failpoint after-inject reached"));
    let status = sqlite(&Lab::path(&alpha["registry"]["path_or_url"]), "SELECT status || '|' || attempts FROM outbox_messages WHERE kind = 'accettazione'");
    assert_eq!(status.trim(), "pending|1", "Postfix took the receipt; the row is not marked sent");

    lab.start_pecora(alpha);
    // Whatever reached alpha's MX while its milter was down was deferred: flush until the
    // CONSEGNA is in.
    let subject = "Crash dopo l'iniezione";
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        lab.flush();
        let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
        if count_by_subject(&msgs, "CONSEGNA: ").contains_key(subject) {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(5));
    lab.flush();
    std::thread::sleep(Duration::from_secs(1));
    let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert_eq!(count_by_subject(&msgs, "ACCETTAZIONE: ").get(subject), Some(&1), "one acceptance");
    assert_eq!(count_by_subject(&msgs, "CONSEGNA: ").get(subject), Some(&1), "one CONSEGNA");
    let at_luca = lab.fetch(beta, &beta["users"][0], "imaps");
    assert_eq!(count_by_subject(&at_luca, "POSTA CERTIFICATA: ").get(subject), Some(&1), "one envelope");
    let log = Lab::log(&pecora_log);
    assert!(log.contains("an earlier attempt had already handed this message to Postfix"), "{log}");
    let status = sqlite(&Lab::path(&alpha["registry"]["path_or_url"]), "SELECT status || '|' || attempts FROM outbox_messages WHERE kind = 'accettazione'");
    assert_eq!(status.trim(), "sent|2");
    let (code, out, err) = cli(&config, &["log", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `after-record` with real Postfix and Dovecot (the lab): the milter dies after recording
/// the acceptance, Postfix tempfails the client (milter_default_action = tempfail), and the
/// restarted pecora sends the recorded receipt, which reaches the sender's mailbox once.
///
/// With real mail this also shows decisions.md 18 at work: the acceptance recorded before
/// the crash is held for Postfix's queue id, Postfix never queues the message (it told the
/// client 451), so the sender never gets a receipt for it.
#[test]
fn after_record_with_real_postfix_no_receipt_for_the_unqueued_message() {
    use lab::{Lab, alive, subject};
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let mario = alpha["users"][0]["address"].as_str().unwrap().to_string();
    let luca = beta["users"][0]["address"].as_str().unwrap().to_string();
    let config = Lab::path(&alpha["config_file"]);

    // alpha's pecora again, as lab/up starts it, with the failpoint armed.
    let mut child = start_with_failpoint(&lab, alpha, "after-record");

    let out = lab.send(
        alpha,
        "starttls",
        0,
        &mario,
        &[&luca],
        &[("Subject", "Crash dopo la registrazione")],
        "x",
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "the client must not be told yes: {said}"
    );
    assert!(
        said.contains("451 4.7.1"),
        "Postfix tempfails the client: {said}"
    );
    let st = child.wait().unwrap();
    assert!(killed_by_sigkill(&st), "killed by SIGKILL, not {st}");
    assert!(!alive(u64::from(child.id())));

    // Restarted without the failpoint (lab/down will stop it through pecora.pid). The
    // receipt was recorded, held for the queue id (decisions.md 18); Postfix never queued
    // the message, so the receipt never goes out.
    lab.start_pecora(alpha);
    let is_receipt = |m: &Vec<u8>| subject(m) == "ACCETTAZIONE: Crash dopo la registrazione";
    std::thread::sleep(Duration::from_secs(5));
    lab.flush();
    std::thread::sleep(Duration::from_secs(1));
    let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert_eq!(
        msgs.iter().filter(|m| is_receipt(m)).count(),
        0,
        "no acceptance for a message Postfix did not queue"
    );
    let at_luca = lab.fetch(beta, &beta["users"][0], "imaps");
    assert!(
        !at_luca
            .iter()
            .any(|m| subject(m).contains("Crash dopo la registrazione")),
        "Postfix did not queue the message"
    );
    // Postfix logged the milter's failure for that queue id (cleanup: milter-reject ...
    // 4.7.1) while pecora was down; the restarted follower reads it and cancels the held
    // receipt, with the reason in the registry.
    let status = || {
        let out = Command::new("sqlite3")
            .arg(Lab::path(&alpha["registry"]["path_or_url"]))
            .arg("SELECT status FROM outbox_messages WHERE kind = 'accettazione'")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let start = std::time::Instant::now();
    while status() != "cancelled" && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status(), "cancelled", "the held receipt of the unqueued message is cancelled");

    let (code, out, err) = cli(
        &config,
        &["log", "search", "--json", "--subject", "Crash dopo"],
    );
    assert_eq!(code, 0, "{err}");
    let views: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let acceptances = views
        .iter()
        .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event_type"] == "acceptance")
        .count();
    assert_eq!(acceptances, 1, "{out}");
    let (code, out, err) = cli(&config, &["log", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
