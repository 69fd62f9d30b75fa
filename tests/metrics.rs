//! The Prometheus endpoint of `pecora serve` (`[metrics] listen`): off unless configured,
//! and when on, the scrape-time gauges read from the registry the daemon uses.

use std::io::{Read, Write};
use std::process::{Child, Command};
use std::time::Duration;

use pecora::store::{EventType, NewEvent, NewOutboxMessage, Record, Store};

#[path = "common/cli.rs"]
mod cli;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pki.rs"]
mod pki;

use cli::{assert_said, pecora};
use daemon::free_port;

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn serve_exposes_registry_gauges_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let url = format!("sqlite:{}/registry.db", d.display());

    // Before the daemon starts: one acceptance with its receipt held for the queue
    // confirmation, one anomaly recorded 30 hours ago, one delivery written by another host.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&url).await.unwrap();
        let now = chrono::Utc::now();
        let at = now.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
        for (ty, held, when, host) in [
            (EventType::Acceptance, true, now, "t1"),
            (
                EventType::Anomaly,
                false,
                now - chrono::Duration::hours(30),
                "t1",
            ),
            (EventType::Delivery, false, now, "other-host"),
        ] {
            let outbox = if held {
                vec![NewOutboxMessage {
                    kind: "accettazione".into(),
                    mail_from: "posta-certificata@pec.alpha.test".into(),
                    rcpts: vec!["mario@pec.alpha.test".into()],
                    message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
                    hold_for_queue_id: Some("4XyZ".into()),
                }]
            } else {
                vec![]
            };
            let rec = Record {
                event: NewEvent::new(at, ty),
                outbox,
                state: vec![],
                idempotency_key: None,
            };
            store
                .clone()
                .with_host(host)
                .record(&rec, when)
                .await
                .unwrap();
        }
    });

    let (milter, metrics) = (free_port(), free_port());
    let config = pki::config(
        d,
        &format!(
            "[listen]\nmilter = \"inet:127.0.0.1:{milter}\"\ndelivery_spool = \"{0}/delivered\"\n[store]\nurl = \"{url}\"\ncheckpoint_dir = \"{0}/cp\"\n\
             [limits]\nspool_dir = \"{0}/spool\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            d.display()
        ),
    );
    // One delivery event the daemon set aside earlier.
    std::fs::create_dir_all(d.join("delivered/bad")).unwrap();
    std::fs::write(d.join("delivered/bad/1700000000.7.x~y"), "version=1\n").unwrap();
    let log = d.join("serve.log");
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_pecora"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut body = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(r) = get(metrics, "/metrics") {
            body = r;
            break;
        }
    }
    assert!(
        body.starts_with("HTTP/1.1 200 OK\r\n"),
        "{body}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        "# TYPE pecora_outbox_backlog gauge",
        "pecora_outbox_backlog 1",
        r#"pecora_outbox_messages{status="held"} 1"#,
        r#"pecora_outbox_messages{status="pending"} 0"#,
        r#"pecora_outbox_oldest_seconds{status="pending"} 0"#,
        r#"pecora_registry_events_24h{type="acceptance"} 1"#,
        r#"pecora_registry_events_24h{type="anomaly"} 0"#,
        r#"pecora_registry_events_24h{type="delivery"} 0"#,
        "pecora_registry_up 1",
        r#"pecora_delivery_spool_entries{dir="bad"} 1"#,
        r#"pecora_delivery_spool_entries{dir="new"} 0"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{body}");
    }
    let age: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("pecora_index_age_seconds "))
        .expect("pecora_index_age_seconds")
        .parse()
        .unwrap();
    assert!((0.0..3600.0).contains(&age), "{age}");
    // The held receipt was recorded just before the daemon started.
    let held: i64 = lines
        .iter()
        .find_map(|l| l.strip_prefix(r#"pecora_outbox_oldest_seconds{status="held"} "#))
        .expect("pecora_outbox_oldest_seconds{status=\"held\"}")
        .parse()
        .unwrap();
    assert!((0..600).contains(&held), "{held}");
    assert!(get(metrics, "/").unwrap().starts_with("HTTP/1.1 404 "));

    // One submission through the daemon's milter: the counters move.
    let status = tokio::runtime::Runtime::new().unwrap().block_on(submit(&format!("127.0.0.1:{milter}")));
    assert_eq!(status, indymilter_test::Status::Continue, "{}", std::fs::read_to_string(&log).unwrap());
    let body = get(metrics, "/metrics").unwrap();
    let lines: Vec<&str> = body.lines().collect();
    for expected in [
        r#"pecora_messages_total{kind="ordinaria",outcome="passed",point="accesso"} 1"#,
        r#"pecora_receipts_total{tipo="accettazione"} 1"#,
        r#"pecora_processing_seconds_count{point="accesso"} 1"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{body}");
    }
}

/// One access-point transaction, as Postfix's submission listener would drive it.
async fn submit(milter: &str) -> indymilter_test::Status {
    let headers = [
        ("From", " alice@pec.alpha.test"),
        ("To", " bob@pec.beta.test"),
        ("Subject", " Misurato"),
        ("Message-ID", " <metric-1@mua>"),
        ("Date", " Tue, 01 Dec 2026 10:00:00 +0100"),
    ];
    daemon::submit_access(milter, "4METRIC1", &headers, &["bob@pec.beta.test"], "Testo.\r\n").await.expect("an answer")
}

#[test]
fn a_bad_metrics_address_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let check = |metrics: &str| {
        let config = pki::config(d, metrics);
        (pecora().arg("--config").arg(&config).arg("check").output().unwrap(), config)
    };
    let (o, config) = check("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("listen ="))
        .unwrap()
        + 1;
    assert_said(&o, 1, &[&format!("pecora.toml:{line}: key `metrics.listen`: name a port")]);
    assert_said(&check("[metrics]\nlisten = \"localhost:9489\"\n").0, 1, &["metrics.listen"]);
    assert_said(&check("").0, 0, &[]);
}

/// `pecora_verification_failures_total` moves when the reception point's check refuses a
/// message that claims to be PEC (the engine's own path, not a hand-made increment), and
/// not for ordinary mail.
#[test]
fn a_refused_pec_message_counts_as_a_verification_failure() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let config = pecora::config::Config::load(&pki::config(dir.path(), "")).unwrap();
    let engine = pecora::runtime::engine::Engine::load(&config).unwrap();
    let count = |code: &str| {
        let want = format!("pecora_verification_failures_total{{reason=\"{code}\"}} ");
        pecora::runtime::metrics::global()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&want).map(|n| n.parse::<u64>().unwrap()))
            .unwrap_or(0)
    };
    // A real Sogei envelope with one byte of its invoice changed: it claims to be PEC.
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/negative/sogei-2018-busta-one-byte-altered.eml"
    ))
    .unwrap();
    let code = match engine.verify_incoming(&raw, &engine.now()) {
        pecora::runtime::engine::Incoming::NotGenuine { claimed_pec: true, code, .. } => code,
        _ => panic!("the altered envelope must be refused as claimed PEC"),
    };
    assert_eq!(count(code), 1);
    engine.verify_incoming(&raw, &engine.now());
    assert_eq!(count(code), 2);
    // Ordinary mail is no verification failure.
    let before = pecora::runtime::metrics::global().render();
    let ordinary = b"From: a@example.com\r\nTo: b@pec.alpha.test\r\nSubject: ciao\r\n\r\nciao\r\n";
    assert!(matches!(
        engine.verify_incoming(ordinary, &engine.now()),
        pecora::runtime::engine::Incoming::NotGenuine { claimed_pec: false, .. }
    ));
    let after = pecora::runtime::metrics::global().render();
    let failures = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("pecora_verification_failures_total{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(failures(&before), failures(&after));
}
