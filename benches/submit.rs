//! Submission benchmark on the lab: messages per second and added latency of the PEC
//! milter, at 1 and 20 concurrent sessions, 10 KB and 1 MB messages, against the same
//! submission listener with the milter on and off; and the peak RSS of pecora while a
//! 50 MB message goes through, at the access point (alpha's submission) and at the MX
//! (ordinary mail to beta's port 25, wrapped in a busta di anomalia).
//!
//! Run: `lab/up && cargo bench --bench submit` (or `-- --state FILE --messages N`;
//! `--only-big` for the peak-RSS measurements alone, `--only-mx` for the MX one).
//! It prints numbers and ratios; it asserts nothing (speed is measured, not tested).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pecora::config::SocketSpec;
use pecora::inject::{ClientOptions, Security, SmtpClient};

struct Args {
    state: PathBuf,
    messages: usize,
    big: bool,
    only_big: bool,
    /// Only the MX measurement (on a freshly started lab, so nothing else moved beta's peak).
    only_mx: bool,
}

fn args() -> Args {
    let mut a = Args {
        state: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/lab/state.json")),
        messages: 200,
        big: true,
        only_big: false,
        only_mx: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--state" => a.state = it.next().map(PathBuf::from).unwrap_or(a.state),
            "--messages" => a.messages = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.messages),
            "--no-big" => a.big = false,
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

struct Target {
    port: u16,
    ca: PathBuf,
    user: String,
    password: String,
    to: String,
}

fn message(from: &str, to: &str, size: usize, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: bench {n}\r\nMessage-ID: <bench.{n}.{}@lab>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// Sends `count` messages over `sessions` parallel connections; returns each transaction's
/// latency and the wall time.
async fn run(t: &Target, sessions: usize, count: usize, size: usize) -> Result<(Vec<Duration>, Duration), String> {
    let opts = ClientOptions {
        helo: "bench.lab".into(),
        security: Security::StartTls,
        ca_file: Some(t.ca.clone()),
        server_name: "localhost".into(),
        auth: Some((t.user.clone(), t.password.clone())),
        timeout: Duration::from_secs(300),
    };
    let endpoint = SocketSpec::Inet(format!("127.0.0.1:{}", t.port));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let per = count / sessions + usize::from(s < count % sessions);
        let (opts, endpoint) = (opts.clone(), endpoint.clone());
        let (from, to) = (t.user.clone(), t.to.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = SmtpClient::connect(&endpoint, &opts).await.map_err(|e| e.to_string())?;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let body = message(&from, &to, size, s * 1_000_000 + i);
                let t0 = Instant::now();
                client.send(&from, std::slice::from_ref(&to), &body).await.map_err(|e| e.to_string())?;
                lat.push(t0.elapsed());
            }
            client.quit().await;
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok((all, start.elapsed()))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let a = args();
    let state: serde_json::Value = match std::fs::read(&a.state).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot read {}: {e}\nbring the lab up first: lab/up", a.state.display());
            std::process::exit(2);
        }
    };
    let alpha = &state["providers"][0];
    let beta = &state["providers"][1];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let port = |k: &str| alpha[k].as_u64().unwrap_or(0) as u16;
    let mk = |port: u16| Target {
        port,
        ca: PathBuf::from(s(&alpha["ca_file"])),
        user: s(&alpha["users"][0]["address"]),
        password: s(&alpha["users"][0]["password"]),
        to: s(&beta["users"][0]["address"]),
    };
    let (with, without) = (mk(port("submission_port")), mk(port("submission_nomilter_port")));
    if with.port == 0 || without.port == 0 {
        eprintln!("state.json lacks submission_port / submission_nomilter_port");
        std::process::exit(2);
    }

    println!("pecora submission benchmark ({} messages per cell, 2 cores shared by client, Postfix, pecora)", a.messages);
    println!("{:>8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8}", "size", "sessions", "milter", "msg/s", "p50 ms", "p99 ms", "added p50", "ratio");
    let sizes: &[usize] = if a.only_big { &[] } else { &[10_000, 1_000_000] };
    for &size in sizes {
        let count = if size >= 1_000_000 { (a.messages / 4).max(20) } else { a.messages };
        for sessions in [1usize, 20] {
            let mut rows = Vec::new();
            for (label, t) in [("off", &without), ("on", &with)] {
                match run(t, sessions, count, size).await {
                    Ok((mut lat, wall)) => {
                        lat.sort();
                        rows.push((label, lat.len() as f64 / wall.as_secs_f64(), pct(&lat, 0.5), pct(&lat, 0.99)));
                    }
                    Err(e) => {
                        eprintln!("{size} B x {sessions} sessions, milter {label}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            let (off, on) = (rows[0], rows[1]);
            for (label, rate, p50, p99) in [off, on] {
                let added = if label == "on" { format!("{:.1}", p50 - off.2) } else { "-".into() };
                let ratio = if label == "on" { format!("{:.2}", rate / off.1) } else { "-".into() };
                println!("{size:>8} {sessions:>9} {label:>8} {rate:>10.1} {p50:>10.1} {p99:>10.1} {added:>10} {ratio:>8}");
            }
        }
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
                    Ok((lat, _)) => println!(
                        "50 MB message: {:.1} s through the milter; pecora peak RSS {} MiB (was {} MiB before)",
                        lat[0].as_secs_f64(),
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
                let opts = ClientOptions {
                    helo: "bench.outside".into(),
                    security: Security::None,
                    ca_file: None,
                    server_name: "localhost".into(),
                    auth: None,
                    timeout: Duration::from_secs(300),
                };
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
    }
}
