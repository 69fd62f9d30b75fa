//! Submission benchmark on the lab: messages per second and added latency of the PEC
//! milter, at 1 and 20 concurrent sessions, 10 KB and 1 MB messages, against the same
//! submission listener with the milter on and off; and the peak RSS of pecora while a
//! 50 MB message goes through, at the access point (alpha's submission) and at the MX
//! (ordinary mail to beta's port 25, wrapped in a busta di anomalia).
//!
//! The milter cells are honest comparisons: both listeners submit to the lab's sink domain
//! (`sink.bench.test`, Postfix's discard transport on alpha), so with the milter on or off
//! nothing reaches beta's MX and the rest of the machine does the same work; both providers'
//! Postfix queues and pecora outboxes are drained before every cell, and the submitting
//! user's INBOX emptied; each cell runs `--repeats` times (3), off and on interleaved, and
//! prints the median and the spread.
//!
//! Two rates per cell: messages per second while the clients submitted (the milter's
//! cost as a client sees it), and sustained, counted until every queue is empty again (the
//! accettazione injected and delivered by Dovecot, the discards done): the cost a busy
//! server pays. Under them, the CPU milliseconds per message each program spent (from
//! /proc, until the queues were empty), which is where the difference goes.
//!
//! Run: `lab/up && cargo bench --bench submit` (or `-- --state FILE --messages N
//! --repeats N`; `--only-big` for the peak-RSS measurements alone, `--only-mx` for the MX
//! one, `--no-big` for the milter cells alone). It prints numbers and ratios; it asserts
//! nothing (speed is measured, not tested).

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::Route;
use pecora::config::SocketSpec;
use pecora::adapters::inject::{ClientOptions, Security, SmtpClient};

struct Args {
    state: PathBuf,
    messages: usize,
    big: bool,
    only_big: bool,
    /// Only the MX measurement (on a freshly started lab, so nothing else moved beta's peak).
    only_mx: bool,
    /// Runs of each milter cell (off and on interleaved).
    repeats: usize,
    /// Sessions of the milter cells.
    sessions: Vec<usize>,
    /// Message sizes of the milter cells.
    sizes: Vec<usize>,
    /// 50 MB messages sent at once to beta's MX after the single ones (0: none).
    concurrent_mx: usize,
}

fn args() -> Args {
    let mut a = Args {
        state: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/state.json")),
        messages: 200,
        big: true,
        only_big: false,
        only_mx: false,
        repeats: 3,
        sessions: vec![1, 20],
        sizes: vec![10_000, 1_000_000],
        concurrent_mx: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--state" => a.state = it.next().map(PathBuf::from).unwrap_or(a.state),
            "--messages" => a.messages = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.messages),
            "--no-big" => a.big = false,
            "--repeats" => a.repeats = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.repeats).max(1),
            "--sessions" => a.sessions = list(it.next()).unwrap_or(a.sessions),
            "--sizes" => a.sizes = list(it.next()).unwrap_or(a.sizes),
            "--concurrent-mx" => a.concurrent_mx = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.concurrent_mx),
            "--only-big" => a.only_big = true,
            "--only-mx" => {
                a.only_big = true;
                a.only_mx = true;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// A comma-separated list of numbers.
fn list(v: Option<String>) -> Option<Vec<usize>> {
    v?.split(',').map(|x| x.trim().parse().ok()).collect()
}

fn message(from: &str, to: &str, size: usize, n: usize) -> Vec<u8> {
    common::message(from, to, &format!("bench {n}"), &format!("bench.{n}.{}@lab", std::process::id()), size)
}

/// Sends `count` messages over `sessions` parallel connections; returns each transaction's
/// latency and the wall time. Every session connects, says STARTTLS and logs in before the
/// clock starts, so the wall time is the transactions' alone (not smtpd's process start-up
/// and TLS handshakes).
async fn run(t: &Route, sessions: usize, count: usize, size: usize) -> Result<Timed, String> {
    let (opts, endpoint) = (t.client(), t.endpoint());
    // Twice: once every session is logged in, and once the CPU figures are taken.
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let per = count / sessions + usize::from(s < count % sessions);
        let (opts, endpoint, ready, go) = (opts.clone(), endpoint.clone(), ready.clone(), go.clone());
        let (from, to) = (t.user.clone(), t.to.clone());
        tasks.push(tokio::spawn(async move {
            let client = SmtpClient::connect(&endpoint, &opts).await.map_err(|e| e.to_string());
            ready.wait().await;
            go.wait().await;
            let mut client = client?;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let body = message(&from, &to, size, s * 1_000_000 + i);
                let t0 = Instant::now();
                client.send(&from, std::slice::from_ref(&to), &body).await.map_err(|e| e.to_string())?;
                lat.push(t0.elapsed());
            }
            let done = Instant::now();
            client.quit().await;
            Ok::<_, String>((lat, done))
        }));
    }
    // Every session is connected and logged in: the CPU counted from here is the
    // transactions' (and the work they leave queued), not the handshakes'.
    ready.wait().await;
    let cpu_before = common::cpu::snapshot();
    go.wait().await;
    let start = Instant::now();
    let mut all = Vec::new();
    let mut end = start;
    for t in tasks {
        let (lat, done) = t.await.map_err(|e| e.to_string())??;
        all.extend(lat);
        end = end.max(done);
    }
    Ok(Timed { latencies: all, wall: end - start, start, cpu_before })
}

/// What [`run`] measured: each transaction's latency, the wall time from the first to the
/// last, when the clock started and every process's CPU then.
struct Timed {
    latencies: Vec<Duration>,
    wall: Duration,
    start: Instant,
    cpu_before: common::cpu::Snapshot,
}

/// A server of ordinary mail from outside: plain SMTP, no login.
fn outside_client() -> ClientOptions {
    ClientOptions {
        helo: "bench.outside".into(),
        security: Security::None,
        ca_file: None,
        server_name: "localhost".into(),
        auth: None,
        timeout: Duration::from_secs(300),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A `/proc/PID/status` figure in KiB (`RssAnon:`, `RssFile:`).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let a = args();
    let state = common::read_state(&a.state);
    let alpha = &state["providers"][0];
    let beta = &state["providers"][1];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mk = |key: &str| Route::from_state(alpha, beta, key);
    let (with, without) = (mk("submission_port"), mk("submission_nomilter_port"));
    if with.port == 0 || without.port == 0 {
        eprintln!("state.json lacks submission_port / submission_nomilter_port");
        std::process::exit(2);
    }

    if !a.only_big {
        let sink = |t: &Route| Route { to: SINK.to_string(), ..t.clone() };
        milter_cells(&a, &state, &sink(&with), &sink(&without)).await;
    }

    if a.big {
        let pid = alpha["pecora_pid"].as_u64().map(|p| p as u32).filter(|_| !a.only_mx);
        match pid {
            Some(pid) => {
                // Reset the peak-RSS watermark, send 50 MB, read the watermark.
                let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
                let before = peak_rss_kib(pid).unwrap_or(0);
                let r = run(&with, 1, 1, 50_000_000).await;
                let after = peak_rss_kib(pid).unwrap_or(0);
                match r {
                    Ok(timed) => println!(
                        "50 MB message: {:.1} s through the milter; pecora peak RSS {} MiB (was {} MiB before)",
                        timed.latencies[0].as_secs_f64(),
                        after / 1024,
                        before / 1024
                    ),
                    Err(e) => println!("50 MB message refused or failed: {e}"),
                }
            }
            None => println!("no pecora_pid in state.json: skipping the 50 MB peak-RSS measurement"),
        }
        // The MX: 50 MB of ordinary mail from outside, no login, to a PEC mailbox of beta.
        // First let the envelope above reach beta and leave its MX, so beta's peak is ours.
        if !a.only_mx {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let port = beta["smtp_port"].as_u64().unwrap_or(0) as u16;
        match beta["pecora_pid"].as_u64().map(|p| p as u32) {
            Some(pid) if port != 0 => {
                let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
                let before = peak_rss_kib(pid).unwrap_or(0);
                let opts = outside_client();
                let from = "mittente@esterno.example".to_string();
                let to = s(&beta["users"][0]["address"]);
                let endpoint = SocketSpec::Inet(format!("127.0.0.1:{port}"));
                let t0 = Instant::now();
                let r = match SmtpClient::connect(&endpoint, &opts).await {
                    Ok(mut c) => {
                        let body = message(&from, &to, 50_000_000, 1);
                        let r = c.send(&from, std::slice::from_ref(&to), &body).await.map(|_| ()).map_err(|e| e.to_string());
                        c.quit().await;
                        r
                    }
                    Err(e) => Err(e.to_string()),
                };
                let after = peak_rss_kib(pid).unwrap_or(0);
                match r {
                    Ok(()) => println!(
                        "50 MB message at the MX: {:.1} s through the milter; pecora peak RSS {} MiB (was {} MiB before)",
                        t0.elapsed().as_secs_f64(),
                        after / 1024,
                        before / 1024
                    ),
                    Err(e) => println!("50 MB message at the MX refused or failed: {e}"),
                }
            }
            _ => println!("no pecora_pid or smtp_port for beta in state.json: skipping the MX measurement"),
        }
        if a.concurrent_mx > 0 {
            concurrent_large_at_mx(&state, a.concurrent_mx).await;
        }
    }
}

/// The benchmark's sink: lab/up routes this domain to Postfix's discard transport.
const SINK: &str = "bench@sink.bench.test";

/// One run of one cell.
#[derive(Clone, Copy)]
struct Sample {
    /// Messages per second while the clients submitted.
    rate: f64,
    /// Messages per second until the queues were empty again.
    sustained: f64,
    p50: f64,
    p99: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// `median [min-max]` of one figure over the runs.
fn spread(v: &[f64], decimals: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} [{lo:.d$}-{hi:.d$}]", median(v.to_vec()), d = decimals)
}

/// How the figures were taken: pecora's build (from its executable's path), the client's,
/// the cores and the load when the run started.
fn describe_environment(state: &serde_json::Value) -> String {
    let pid = state["providers"][0]["pecora_pid"].as_u64().unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_else(|_| "?".into());
    let profile = if exe.contains("/release/") {
        "release"
    } else if exe.contains("/debug/") {
        "debug (figures meaningless: bring the lab up with PECORA_BIN=target/release/pecora)"
    } else {
        "unknown"
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "pecora {exe} ({profile}); client built {}; {cores} cores shared by client, Postfix, Dovecot and pecora; load average {}",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        load.join(" ")
    )
}

/// Work still in the way of the next cell: the providers' Postfix queues (the files in
/// their maildrop, incoming, active, deferred and hold directories), the outbox rows pecora has yet to hand to Postfix and the
/// delivery events it has yet to read.
fn backlog(state: &serde_json::Value) -> usize {
    let mut n = 0;
    for (i, p) in state["providers"].as_array().into_iter().flatten().enumerate() {
        if let Some(queue) = queue_directories(state).get(i).and_then(|q| q.as_ref()) {
            n += ["maildrop", "incoming", "active", "deferred", "hold"].iter().map(|sub| files_under(&queue.join(sub))).sum::<usize>();
        }
        // Delivery events Dovecot's hook wrote that pecora has yet to read.
        if let Some(spool) = p["delivery_spool"].as_str() {
            n += std::fs::read_dir(format!("{spool}/new")).map(|d| d.count()).unwrap_or(0);
        }
        if let Some(db) = p["registry"]["path_or_url"].as_str() {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            if let Ok(c) = rusqlite::Connection::open_with_flags(db, flags) {
                let _ = c.busy_timeout(Duration::from_secs(5));
                let q = "SELECT count(*) FROM outbox_messages WHERE status IN ('held', 'pending')";
                n += c.query_row(q, [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize;
            }
        }
    }
    n
}

/// Each provider's Postfix queue directory (`postconf -h queue_directory`, asked once).
fn queue_directories(state: &serde_json::Value) -> &'static [Option<PathBuf>] {
    static DIRS: std::sync::OnceLock<Vec<Option<PathBuf>>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        state["providers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let dir = p["postfix_dir"].as_str()?;
                let out = std::process::Command::new("postconf").args(["-c", dir, "-h", "queue_directory"]).output().ok()?;
                let q = String::from_utf8(out.stdout).ok()?.trim().to_string();
                (!q.is_empty()).then(|| PathBuf::from(q))
            })
            .collect()
    })
}

/// Files below `dir` (Postfix's queue files, in hashed subdirectories or not). Read
/// directly, as root: asking showq (postqueue) 50 times a second while a cell drains
/// loaded Postfix with work of its own.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// How long until nothing is left queued anywhere (polled every 20 ms, at most five
/// minutes): a cell's messages per second counted until all the work it caused is done
/// (the accettazione injected and delivered, the discards) are its sustained rate.
async fn until_drained(state: &serde_json::Value, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(300);
    while backlog(state) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

/// Empties the submitting user's INBOX at alpha (doveadm expunge), so every cell delivers
/// its accettazioni into the same, empty mailbox: Dovecot's delivery into a Maildir costs
/// more the more unread messages it holds (the quota plugin's count backend has the
/// mailbox synced, and the sync reads all of new/), and a lab that kept every benchmark's
/// receipts would make each cell slower than the one before.
fn empty_mailbox(state: &serde_json::Value, user: &str) {
    let Some(conf) = state["providers"][0]["dovecot_conf"].as_str() else { return };
    let out = std::process::Command::new("doveadm")
        .args(["-c", conf, "expunge", "-u", user, "mailbox", "INBOX", "all"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("warning: doveadm expunge for {user}: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("warning: doveadm: {e}"),
    }
}

/// Waits until nothing is queued anywhere for a second (at most five minutes), then lets
/// Postfix's in_flow_delay tokens refill.
async fn drain(state: &serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < deadline {
        if backlog(state) == 0 {
            quiet += 1;
        } else {
            quiet = 0;
            // Deferred mail (a delivery that failed) would keep the queue busy for minutes.
            for p in state["providers"].as_array().into_iter().flatten() {
                if let Some(dir) = p["postfix_dir"].as_str() {
                    let _ = std::process::Command::new("postqueue").args(["-c", dir, "-f"]).output();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if quiet < 2 {
        eprintln!("warning: the queues did not drain in five minutes ({} messages left)", backlog(state));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The milter cells: 10 KB and 1 MB, 1 and 20 sessions, milter off then on, `repeats`
/// times, each run on drained queues; prints the median and the spread of each figure.
async fn milter_cells(a: &Args, state: &serde_json::Value, with: &Route, without: &Route) {
    println!("pecora submission benchmark: {} messages per cell (1 MB: a quarter), {} runs each, to {SINK} (discarded)", a.messages, a.repeats);
    println!("{}", describe_environment(state));
    println!("figures: median [min-max] over the runs; added p50 = median(on p50) - median(off p50)");
    println!(
        "{:>8} {:>8} {:>6} {:>22} {:>22} {:>22} {:>9} {:>18} {:>22} {:>18}",
        "size", "sessions", "milter", "msg/s", "p50 ms", "p99 ms", "added p50", "ratio", "sustained msg/s", "sustained ratio"
    );
    for &size in &a.sizes {
        let count = if size >= 1_000_000 { (a.messages / 4).max(20) } else { a.messages };
        for &sessions in &a.sessions {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            let (mut cpu_off, mut cpu_on) = (Vec::new(), Vec::new());
            for _ in 0..a.repeats {
                for (t, out, cpu) in [(without, &mut off, &mut cpu_off), (with, &mut on, &mut cpu_on)] {
                    drain(state).await;
                    empty_mailbox(state, &t.user);
                    match run(t, sessions, count, size).await {
                        Ok(Timed { latencies: mut lat, wall, start, cpu_before }) => {
                            // The sustained rate and the CPU include the work the cell
                            // left queued (the accettazione's injection and delivery, the
                            // discards).
                            let done = until_drained(state, start).await;
                            cpu.push(common::cpu::spent(&cpu_before, &common::cpu::snapshot()));
                            lat.sort();
                            out.push(Sample {
                                rate: lat.len() as f64 / wall.as_secs_f64(),
                                sustained: lat.len() as f64 / done.as_secs_f64(),
                                p50: pct(&lat, 0.5),
                                p99: pct(&lat, 0.99),
                            });
                        }
                        Err(e) => {
                            eprintln!("{size} B x {sessions} sessions, port {}: {e}", t.port);
                            std::process::exit(1);
                        }
                    }
                }
            }
            let col = |v: &[Sample], f: fn(&Sample) -> f64| v.iter().map(f).collect::<Vec<f64>>();
            let off_p50 = median(col(&off, |s| s.p50));
            for (label, v) in [("off", &off), ("on", &on)] {
                let (added, ratio, sustained_ratio) = if label == "on" {
                    let ratios: Vec<f64> = on.iter().zip(&off).map(|(n, f)| n.rate / f.rate).collect();
                    let sustained: Vec<f64> = on.iter().zip(&off).map(|(n, f)| n.sustained / f.sustained).collect();
                    (format!("{:.1}", median(col(v, |s| s.p50)) - off_p50), spread(&ratios, 2), spread(&sustained, 2))
                } else {
                    ("-".into(), "-".into(), "-".into())
                };
                println!(
                    "{size:>8} {sessions:>8} {label:>6} {:>22} {:>22} {:>22} {added:>9} {ratio:>18} {:>22} {sustained_ratio:>18}",
                    spread(&col(v, |s| s.rate), 1),
                    spread(&col(v, |s| s.p50), 1),
                    spread(&col(v, |s| s.p99), 1),
                    spread(&col(v, |s| s.sustained), 1),
                );
            }
            for (label, runs) in [("off", &cpu_off), ("on", &cpu_on)] {
                let mut sum: Vec<(String, f64)> = Vec::new();
                for (k, d) in runs.iter().flatten() {
                    match sum.iter_mut().find(|(n, _)| n == k) {
                        Some(e) => e.1 += d,
                        None => sum.push((k.clone(), *d)),
                    }
                }
                sum.sort_by(|x, y| y.1.total_cmp(&x.1));
                println!("{:>24} {}", format!("CPU, milter {label}:"), common::cpu::per_message(&sum, count * runs.len()));
            }
        }
    }
}

/// Several 50 MB messages of ordinary mail reaching beta's MX at once: whether pecora's
/// memory stays flat (each large message is spooled to a file and mapped, and at most
/// `limits.max_large_transactions` are in progress; the others are tempfailed, 4xx).
async fn concurrent_large_at_mx(state: &serde_json::Value, n: usize) {
    let beta = &state["providers"][1];
    let (Some(pid), Some(port)) = (beta["pecora_pid"].as_u64(), beta["smtp_port"].as_u64()) else {
        println!("no pecora_pid or smtp_port for beta in state.json: skipping the concurrent MX measurement");
        return;
    };
    drain(state).await;
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let before = peak_rss_kib(pid as u32).unwrap_or(0);
    let to = beta["users"][0]["address"].as_str().unwrap_or_default().to_string();
    // VmHWM counts the mapped spool files' pages too: watch anonymous and file-backed
    // memory apart while the messages arrive.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut anon, mut file) = (0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                anon = anon.max(status_kib(pid as u32, "RssAnon:").unwrap_or(0));
                file = file.max(status_kib(pid as u32, "RssFile:").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (anon, file)
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            let opts = outside_client();
            let from = format!("mittente{i}@esterno.example");
            let endpoint = SocketSpec::Inet(format!("127.0.0.1:{port}"));
            let mut c = SmtpClient::connect(&endpoint, &opts).await.map_err(|e| e.to_string())?;
            let body = message(&from, &to, 50_000_000, 100 + i);
            let r = c.send(&from, std::slice::from_ref(&to), &body).await.map(|_| ()).map_err(|e| e.to_string());
            c.quit().await;
            r
        }));
    }
    let (mut ok, mut refused) = (0, Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => refused.push(e),
            Err(e) => refused.push(e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (anon, file) = watcher.await.unwrap_or((0, 0));
    let after = peak_rss_kib(pid as u32).unwrap_or(0);
    println!(
        "{n} x 50 MB at once at the MX: {ok} accepted, {} refused in {:.1} s; pecora peak RSS {} MiB (was {} MiB before): \
         anonymous at most {} MiB, mapped spool files at most {} MiB",
        refused.len(),
        elapsed.as_secs_f64(),
        after / 1024,
        before / 1024,
        anon / 1024,
        file / 1024
    );
    for e in refused.iter().take(3) {
        println!("  refused: {}", e.replace(['\r', '\n'], " "));
    }
}
