//! Registry benchmark: how many events per second the registry takes, each recorded as the
//! access point records an acceptance (one chained event, one sealed outbox row holding a
//! ~4 KB receipt, two state updates, an idempotency key), each durable before `record`
//! returns (SQLite in WAL mode with synchronous=FULL).
//!
//! Run: `cargo bench --bench registry [-- --events N --tasks 1,20 --repeats 3 --url URL]`.
//! Without `--url`, a fresh SQLite file in a temporary directory (on /tmp's file system:
//! pass `--dir DIR` to measure another disk). It prints numbers; it asserts nothing.

use std::sync::Arc;
use std::time::Instant;

use pecora::pec::types::{Recipient, RecipientType};
use pecora::store::model::{EventType, NewEvent, NewOutboxMessage, Record, StateUpdate};
use pecora::store::Store;

struct Args {
    events: usize,
    tasks: Vec<usize>,
    repeats: usize,
    url: Option<String>,
    dir: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args { events: 2_000, tasks: vec![1, 20], repeats: 3, url: None, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--events" => a.events = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.events),
            "--repeats" => a.repeats = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.repeats).max(1),
            "--tasks" => {
                a.tasks = it
                    .next()
                    .and_then(|v| v.split(',').map(|x| x.trim().parse().ok()).collect())
                    .unwrap_or(a.tasks)
            }
            "--url" => a.url = it.next(),
            "--dir" => a.dir = it.next().map(Into::into),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// An acceptance as the access point records it.
fn acceptance(task: usize, i: usize) -> Record {
    let now = chrono::Utc::now();
    let instant = now.fixed_offset();
    let pec_id = format!("opec.bench.{task}.{i}.{}@pec.alpha.test", std::process::id());
    let rcpt = Recipient { address: "luca.verdi@pec.beta.test".into(), kind: RecipientType::Certificato };
    let mut event = NewEvent::new(instant, EventType::Acceptance);
    event.pec_id = Some(pec_id.clone());
    event.client_msgid = Some(format!("bench.{task}.{i}@lab"));
    event.sender = Some("mario.rossi@pec.alpha.test".into());
    event.recipients = vec![rcpt.address.clone()];
    event.subject = Some(format!("bench {task} {i}"));
    event.generated_ids = vec![pec_id.clone(), format!("receipt.{task}.{i}@pec.alpha.test")];
    event.provider = Some("Alpha PEC S.p.A.".into());
    event.queue_id = Some(format!("4Q{task:04}{i:06}"));
    event.details = serde_json::json!({ "login": "mario.rossi@pec.alpha.test", "size": 10_000 });
    Record {
        event,
        outbox: vec![NewOutboxMessage {
            kind: "accettazione".into(),
            mail_from: "posta-certificata@pec.alpha.test".into(),
            rcpts: vec!["mario.rossi@pec.alpha.test".into()],
            message: vec![b'x'; 4_096],
            hold_for_queue_id: Some(format!("4Q{task:04}{i:06}")),
        }],
        state: vec![
            StateUpdate::Accepted {
                pec_id: pec_id.clone(),
                client_msgid: Some(format!("<bench.{task}.{i}@lab>")),
                sender: "mario.rossi@pec.alpha.test".into(),
                subject: Some(format!("bench {task} {i}")),
                queue_id: Some(format!("4Q{task:04}{i:06}")),
                event_time: instant,
                recipients: vec![rcpt],
            },
            StateUpdate::EnvelopeSent { pec_id: pec_id.clone(), at: now },
        ],
        idempotency_key: Some(format!("acc:{pec_id}")),
    }
}

/// Records `events` acceptances over `tasks` concurrent callers; returns events per second.
async fn run(store: &Arc<Store>, tasks: usize, events: usize, round: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let per = events / tasks + usize::from(t < events % tasks);
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                let rec = acceptance(round * 1_000 + t, i);
                store.record(&rec, chrono::Utc::now()).await.expect("record");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    events as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[tokio::main]
async fn main() {
    let a = args();
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let url = a.url.clone().unwrap_or_else(|| format!("sqlite:{}", tmp.path().join("registry.db").display()));
    let store = Store::open(&url).await.expect("open the registry").with_host("bench");
    // Sealed outbox rows, as serve writes them.
    let store = Arc::new(store.with_outbox_key(pecora::store::seal::OutboxKey::from_bytes([7; 32])));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "registry benchmark: {url}; {} events per run, {} runs; {} build; {cores} cores; load average {}",
        a.events,
        a.repeats,
        if cfg!(debug_assertions) { "debug" } else { "release" },
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("{:>6} {:>30}", "tasks", "events/s median [min-max]");
    let mut round = 0;
    for &tasks in &a.tasks {
        let mut rates = Vec::new();
        for _ in 0..a.repeats {
            round += 1;
            rates.push(run(&store, tasks.max(1), a.events, round).await);
        }
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("{tasks:>6} {:>30}", format!("{:.0} [{lo:.0}-{hi:.0}]", median(rates)));
    }
    match store.verify(None, &[]).await {
        Ok(r) if r.ok() => println!("chain verified"),
        Ok(r) => println!("chain verification FAILED: {:?}", r.problem),
        Err(e) => println!("chain verification failed: {e}"),
    }
}
