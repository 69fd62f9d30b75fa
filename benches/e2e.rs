//! End-to-end benchmark on the lab (issue 14): whole PEC transactions, timed from the
//! submission at alpha until the CONSEGNA is in the sender's mailbox, at 1 and 20
//! concurrent sessions; and the same for the bare twin path, alpha's submission listener
//! without the milter to beta's MX without the milter (lab/up's bench twins), timed until
//! the message is in the recipient's mailbox, delivered by the same Dovecot.
//!
//! At one session it measures twice: one transaction at a time (the next submission once
//! the previous CONSEGNA arrived: the latency of a lone transaction) and back to back (the
//! next submission as soon as Postfix said 250, so transactions queue behind each other).
//! For each cell it prints transactions per second (messages over the time from the first
//! submission to the last arrival), p50 and p99 of the end-to-end time, and for the PEC
//! path how many CONSEGNA never came (left to the reconciliation sweep) and how many the
//! registry says the sweep certified. Arrivals are seen in the Maildir (`new/` and `cur/`),
//! read every 10 ms.
//!
//! Run: `lab/up && cargo bench --bench e2e` (or `-- --state FILE --messages N` for N messages
//! per cell at 20 sessions, N/2 at one session; `--wait SECONDS` to wait for arrivals).
//! It prints numbers; it asserts nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::Route;
use pecora::adapters::inject::SmtpClient;

struct Args {
    state: PathBuf,
    messages: usize,
    wait: Duration,
}

fn args() -> Args {
    let mut a = Args {
        state: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/state.json")),
        messages: 60,
        wait: Duration::from_secs(180),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--state" => a.state = it.next().map(PathBuf::from).unwrap_or(a.state),
            "--messages" => a.messages = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.messages),
            "--wait" => a.wait = it.next().and_then(|n| n.parse().ok()).map(Duration::from_secs).unwrap_or(a.wait),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// The Subject of the first header block of a stored message (unfolded, undecoded).
fn subject_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            return value;
        }
        if line.len() > 8 && line[..8].eq_ignore_ascii_case("subject:") {
            value = Some(line[8..].trim().to_string());
        }
    }
    value
}

/// Watches a Maildir: the first time each message whose Subject starts with `prefix` was
/// seen there, by the rest of its Subject.
struct Arrivals {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Arrivals {
    fn watch(maildir: &Path, prefix: String) -> Arrivals {
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dirs, s, halt) = ([maildir.join("new"), maildir.join("cur")], seen.clone(), stop.clone());
        std::thread::spawn(move || {
            // Files already read, by name without the flags Dovecot adds when it moves one to cur/.
            let mut read: HashSet<String> = HashSet::new();
            while !halt.load(std::sync::atomic::Ordering::SeqCst) {
                for d in &dirs {
                    let Ok(entries) = std::fs::read_dir(d) else { continue };
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().split(':').next().unwrap_or_default().to_string();
                        if read.contains(&name) {
                            continue;
                        }
                        let Ok(raw) = std::fs::read(e.path()) else { continue };
                        let now = Instant::now();
                        read.insert(name);
                        if let Some(rest) = subject_of(&raw).and_then(|s| s.strip_prefix(&prefix).map(str::to_string)) {
                            s.lock().unwrap().entry(rest).or_insert(now);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Arrivals { seen, stop }
    }

    /// Waits until every key arrived or `limit` passed; the arrival times.
    fn wait_for(&self, keys: &[String], limit: Duration) -> HashMap<String, Instant> {
        let start = Instant::now();
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if keys.iter().all(|k| seen.contains_key(k)) || start.elapsed() > limit {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    common::message(from, to, subject, &format!("{}@bench.lab", subject.replace(' ', ".")), 10_000)
}

/// Submits `keys.len()` messages (Subject `<tag> <key>`) over `sessions` connections;
/// returns when each submission started, by key, and the time of the first. With
/// `one_at_a_time`, each session submits its next message only once the previous one
/// arrived (at most `wait`).
async fn submit(
    p: &Route,
    sessions: usize,
    tag: &str,
    keys: &[String],
    one_at_a_time: Option<(Arc<Mutex<HashMap<String, Instant>>>, Duration)>,
) -> Result<(HashMap<String, Instant>, Instant), String> {
    let (opts, endpoint) = (p.client(), p.endpoint());
    let first = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let mine: Vec<String> = keys.iter().skip(s).step_by(sessions).cloned().collect();
        let (opts, endpoint, tag) = (opts.clone(), endpoint.clone(), tag.to_string());
        let (from, to) = (p.user.clone(), p.to.clone());
        let closed = one_at_a_time.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SmtpClient::connect(&endpoint, &opts).await.map_err(|e| e.to_string())?;
            let mut started = Vec::with_capacity(mine.len());
            for k in mine {
                let body = message(&from, &to, &format!("{tag} {k}"));
                let t0 = Instant::now();
                client.send(&from, std::slice::from_ref(&to), &body).await.map_err(|e| e.to_string())?;
                if let Some((seen, wait)) = &closed {
                    while !seen.lock().unwrap().contains_key(&k) && t0.elapsed() < *wait {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                started.push((k, t0));
            }
            client.quit().await;
            Ok::<_, String>(started)
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok((all, first))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// One measured cell: throughput, p50, p99 (ms), and how many never arrived.
struct Cell {
    rate: f64,
    p50: f64,
    p99: f64,
    missing: usize,
}

async fn cell(
    p: &Route,
    sessions: usize,
    one_at_a_time: bool,
    count: usize,
    tag: &str,
    watch: &Arrivals,
    wait: Duration,
) -> Result<(Cell, Vec<String>), String> {
    let mode = if one_at_a_time { "c" } else { "s" };
    let keys: Vec<String> = (0..count).map(|i| format!("{mode}{sessions}-{i:04}")).collect();
    let closed = one_at_a_time.then(|| (watch.seen.clone(), wait));
    let (started, first) = submit(p, sessions, tag, &keys, closed).await?;
    let arrived = watch.wait_for(&keys, wait);
    let mut lat = Vec::new();
    let mut last = first;
    let mut missing = Vec::new();
    for k in &keys {
        match (started.get(k), arrived.get(k)) {
            (Some(t0), Some(t1)) => {
                lat.push(t1.saturating_duration_since(*t0));
                last = last.max(*t1);
            }
            _ => missing.push(k.clone()),
        }
    }
    lat.sort();
    let span = last.saturating_duration_since(first).as_secs_f64();
    let rate = if span > 0.0 { lat.len() as f64 / span } else { 0.0 };
    Ok((Cell { rate, p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), missing: missing.len() }, missing))
}

fn sqlite(db: &str, query: &str) -> String {
    match std::process::Command::new("sqlite3").args(["-cmd", ".timeout 10000", db, query]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("(sqlite3: {})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("(sqlite3: {e})"),
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let state = common::read_state(&a.state);
    let (alpha, beta) = (&state["providers"][0], &state["providers"][1]);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mk = |port: &str| Route::from_state(alpha, beta, port);
    let (pec, bare) = (mk("submission_port"), mk("submission_nomilter_port"));
    if pec.port == 0 || bare.port == 0 || beta["smtp_nomilter_port"].as_u64().is_none() {
        eprintln!("state.json lacks submission_port / submission_nomilter_port / smtp_nomilter_port: bring the lab up again with this tree's lab/up");
        std::process::exit(2);
    }
    let maildir = |host: &serde_json::Value, user: &str| {
        let (local, domain) = user.split_once('@').unwrap_or((user, ""));
        PathBuf::from(s(&host["mail_dir"])).join(domain).join(local).join("Maildir")
    };
    let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs());
    // CONSEGNA at the sender (alpha); the bare message itself at the recipient (beta).
    let consegna = Arrivals::watch(&maildir(alpha, &pec.user), format!("CONSEGNA: e2e {run} "));
    let delivered = Arrivals::watch(&maildir(beta, &bare.to), format!("bare {run} "));

    println!(
        "pecora end-to-end benchmark: 10 KB messages from {} to {}; PEC = submission to CONSEGNA in the sender's mailbox, bare = milter-less submission to milter-less MX, until in the recipient's mailbox",
        pec.user, pec.to
    );
    println!("one at a time: the session submits its next message once the previous one arrived (one transaction in flight)");
    println!("{:>9} {:>13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>6}", "sessions", "mode", "path", "msgs", "tx/s", "p50 ms", "p99 ms", "missing", "ratio");
    let mut rows = Vec::new();
    for (sessions, one_at_a_time) in [(1usize, true), (1, false), (20, false)] {
        let count = if sessions == 1 { (a.messages / 2).max(5) } else { a.messages };
        let mode = if one_at_a_time { "one at a time" } else { "back to back" };
        let (b, _) = match cell(&bare, sessions, one_at_a_time, count, &format!("bare {run}"), &delivered, a.wait).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bare path, {sessions} sessions: {e}");
                std::process::exit(1);
            }
        };
        let (p, missing) = match cell(&pec, sessions, one_at_a_time, count, &format!("e2e {run}"), &consegna, a.wait).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("PEC path, {sessions} sessions: {e}");
                std::process::exit(1);
            }
        };
        println!("{sessions:>9} {mode:>13} {:>6} {count:>6} {:>10.2} {:>10.0} {:>10.0} {:>8} {:>6}", "bare", b.rate, b.p50, b.p99, b.missing, "-");
        println!("{sessions:>9} {mode:>13} {:>6} {count:>6} {:>10.2} {:>10.0} {:>10.0} {:>8} {:>6.2}", "PEC", p.rate, p.p50, p.p99, p.missing, p.rate / b.rate);
        if !missing.is_empty() {
            println!("          no CONSEGNA within {:?} for: {}", a.wait, missing.join(" "));
        }
        rows.push((sessions, b, p));
    }
    let db = s(&beta["registry"]["path_or_url"]);
    let swept = sqlite(&db, &format!("SELECT count(*) FROM registry_events WHERE event_type = 'delivery' AND subject LIKE 'e2e {run} %' AND details LIKE '%reconciliation%'"));
    let left: usize = rows.iter().map(|(_, _, p)| p.missing).sum();
    println!("receipts left to the sweep: {left} CONSEGNA missing; deliveries the sweep certified: {swept}");
    if let (Some((_, _, one)), Some((_, _, burst)), Some((_, b20, p20))) = (rows.first(), rows.get(1), rows.get(2)) {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "target p50 <= 1 s at one session: one at a time {:.0} ms, {}; back to back {:.0} ms, {}",
            one.p50,
            met(one.p50 <= 1000.0),
            burst.p50,
            met(burst.p50 <= 1000.0)
        );
        println!("target throughput >= 0.3 x bare at 20 sessions: {:.2} x, {}", p20.rate / b20.rate, met(p20.rate >= 0.3 * b20.rate));
        println!("target zero receipts left to the sweep: {}", met(left == 0 && swept == "0"));
    }
}
