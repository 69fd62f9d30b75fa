//! Two `pecora serve` daemons sharing one PostgreSQL registry (a private server this test
//! starts; see tests/common/pg.rs): exactly one runs the housekeeping (checkpoints,
//! retention, timers), and when that one is killed with SIGKILL the other takes over within
//! a bounded time.
//!
//! Who leads is read from outside, twice: each daemon's log line "this host now runs
//! checkpoints, retention and timers", and PostgreSQL's own lock table (`pg_locks`: the
//! granted advisory lock on the housekeeping key, whose backend's client port,
//! `pg_stat_activity.client_port`, `ss` maps to the pecora process holding that socket).
//!
//! And the new leader does the work, not only the talking: after the takeover it writes
//! registry checkpoints into its own directory, and a transaction that becomes overdue gets
//! its time-limit notice from it (the registry row carries its host id) through the outbox.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/pki.rs"]
mod pki;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemon::{Daemon, OnData, ServeSetup, Sink, killed_by_sigkill};

const LEADER_LINE: &str = "this host now runs checkpoints, retention and timers";

/// Most time allowed between the leader's death and the other host's takeover. The
/// housekeeping loop retries every `timers.interval` (1 s here); PostgreSQL releases a dead
/// session's advisory lock as soon as it sees the connection close.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);

struct Host {
    setup: ServeSetup,
}

impl Host {
    fn new(name: &str, url: &str, inject: &str) -> Host {
        let setup = ServeSetup::new();
        setup.configure(
            Some(url),
            inject,
            "checkpoint_interval = \"2s\"\n\
             [timers]\ninterval = \"1s\"\ntake_charge = \"3s\"\ndelivery_min = \"5s\"\ndelivery = \"6s\"\n",
        );
        // pki::config names the host t1; each daemon needs its own host_id.
        let text = std::fs::read_to_string(&setup.config)
            .unwrap()
            .replace("host_id = \"t1\"", &format!("host_id = \"{name}\""));
        std::fs::write(&setup.config, text).unwrap();
        Host { setup }
    }

    fn log(&self) -> PathBuf {
        self.setup.log()
    }

    fn start(&self) -> Daemon {
        self.setup.start(&[])
    }

    /// How many times this host's log says it became the leader.
    fn times_leader(&self) -> usize {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .matches(LEADER_LINE)
            .count()
    }

    /// Takes the other host's signing key and certificate: the hosts of one provider sign
    /// with its one identity (and each verifies the other's checkpoints with it).
    fn share_keys_of(&self, other: &Host) {
        for f in ["key.pem", "cert.pem"] {
            std::fs::copy(other.setup.path(f), self.setup.path(f)).unwrap();
        }
    }

    /// How many registry checkpoints this host's log says it wrote.
    fn checkpoints_written(&self) -> usize {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .matches("registry checkpoint written")
            .count()
    }

    /// The checkpoint files exported into this host's own checkpoint directory.
    fn checkpoint_files(&self) -> usize {
        std::fs::read_dir(self.setup.path("checkpoints"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn wait_leader(&self, times: usize, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.times_leader() >= times {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// The OS pids of the pecora processes holding the housekeeping leader lock in `db`. The client port of each locking backend is mapped to the process that owns that
/// socket with `ss`.
fn lock_holders(server: &pg::PgServer, db: &str) -> Vec<u32> {
    let key = pecora::store::leader::lock_key("housekeeping");
    let ports = server.psql(
        db,
        &format!(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = \
             (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((l.classid::bigint << 32) | l.objid::bigint) = {key}"
        ),
    );
    let ss = std::process::Command::new("ss")
        .args(["-tnpH"])
        .output()
        .expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
    ports
        .lines()
        .filter(|p| !p.trim().is_empty())
        .map(|port| {
            let local = format!("127.0.0.1:{} ", port.trim());
            let line = ss
                .lines()
                .find(|l| l.contains(&local) && l.contains("pecora"))
                .unwrap_or_else(|| panic!("no pecora socket on port {port}:\n{ss}"));
            let pid = line.split("pid=").nth(1).expect("pid=");
            pid.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn one_leader_and_takeover_after_sigkill() {
    let server = pg::PgServer::shared();
    let db = server.create_db();
    let url = server.url(&db);
    let sink = Sink::start(OnData::Accept);
    let (a, b) = (
        Host::new("h1", &url, &sink.addr),
        Host::new("h2", &url, &sink.addr),
    );
    b.share_keys_of(&a);

    let mut da = a.start();
    assert!(
        a.wait_leader(1, Duration::from_secs(15)).is_some(),
        "the first daemon leads:\n{}",
        da.log_text()
    );
    let db2 = b.start();
    // Several housekeeping rounds of the second daemon: it never leads while the first lives.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(b.times_leader(), 0, "two leaders:\n{}", db2.log_text());
    assert_eq!(a.times_leader(), 1);
    assert_eq!(
        lock_holders(&server, &db),
        [da.pid()],
        "PostgreSQL agrees: one lock, the first daemon's"
    );

    // The leader dies without any chance to let go.
    let st = da.kill();
    assert!(killed_by_sigkill(&st));
    let took = b
        .wait_leader(1, TAKEOVER_LIMIT)
        .unwrap_or_else(|| panic!("no takeover within {TAKEOVER_LIMIT:?}:\n{}", db2.log_text()));
    eprintln!("takeover after {took:?}");
    assert_eq!(
        lock_holders(&server, &db),
        [db2.pid()],
        "the lock moved to the second daemon"
    );

    // The new leader runs the checkpoints: it had written none while the first led.
    assert_eq!(b.checkpoint_files(), 0, "the follower exported checkpoints");
    let start = Instant::now();
    while b.checkpoints_written() == 0 || b.checkpoint_files() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new leader writes no checkpoint:\n{}",
            db2.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and the timers: an acceptance recorded now, long overdue, gets its notice from h2.
    let pec_id = "pecora.failover@pec.alpha.test";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(pecora::store::Store::open(&url)).unwrap();
    rt.block_on(record_overdue(&store, pec_id));
    let before = sink.count();
    let start = Instant::now();
    let notices = loop {
        let rows = rt.block_on(store.history(pec_id)).unwrap();
        let notices: Vec<_> = rows
            .into_iter()
            .filter(|r| r.event_type.starts_with("timer-notice-"))
            .collect();
        if !notices.is_empty() {
            break notices;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new leader runs no timer:\n{}",
            db2.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(notices.iter().all(|r| r.host == "h2"), "{notices:?}");
    let sent = sink.wait_for(before + 1, Duration::from_secs(20));
    assert!(
        sent[before..]
            .iter()
            .any(|m| daemon::header(&m.data, "Subject").starts_with("AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO")),
        "no notice injected: {sent:?}"
    );

    // The first comes back: it does not take the lead back while the second lives.
    let da2 = a.start();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        a.times_leader(),
        1,
        "the restarted daemon does not lead:\n{}",
        da2.log_text()
    );
    assert_eq!(b.times_leader(), 1);
    assert_eq!(lock_holders(&server, &db), [db2.pid()]);
}

/// An acceptance an hour old, sent to a PEC recipient who never answered: overdue for both
/// time-limit notices.
async fn record_overdue(store: &pecora::store::Store, pec_id: &str) {
    use pecora::pec::types::{Recipient, RecipientType};
    use pecora::store::model::{EventType, NewEvent, Record, StateUpdate};
    let now = chrono::Utc::now();
    let at = now - chrono::Duration::hours(1);
    let instant = pecora::pec::types::to_zone(at, chrono_tz::Europe::Rome);
    let mut event = NewEvent::new(instant, EventType::Acceptance);
    event.pec_id = Some(pec_id.into());
    let record = Record {
        event,
        outbox: vec![],
        state: vec![
            StateUpdate::Accepted {
                pec_id: pec_id.into(),
                client_msgid: Some("<failover@mua>".into()),
                sender: "alice@pec.alpha.test".into(),
                subject: Some("Dopo il failover".into()),
                queue_id: Some("4FAIL".into()),
                event_time: instant,
                recipients: vec![Recipient { address: "bob@pec.beta.test".into(), kind: RecipientType::Certificato }],
            },
            StateUpdate::EnvelopeSent { pec_id: pec_id.into(), at },
        ],
        idempotency_key: None,
    };
    store.record(&record, now).await.unwrap();
}
