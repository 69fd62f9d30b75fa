//! Where a cell's CPU went: every process's user and system time read from `/proc` before
//! and after, summed by program. A process that exited in between is counted through its
//! parent's `cutime`/`cstime` (Postfix's and Dovecot's masters reap their children).

use std::collections::BTreeMap;

/// One process's CPU seconds at one instant.
#[derive(Clone)]
struct Proc {
    label: String,
    own: f64,
    /// Children it reaped (`cutime` + `cstime`).
    reaped: f64,
}

/// Every process's CPU seconds at one instant, by pid.
#[derive(Default, Clone)]
pub struct Snapshot {
    by_pid: BTreeMap<u32, Proc>,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (comm, ppid, own seconds, reaped children's seconds) of one process.
fn stat(pid: u32, hz: f64) -> Option<(String, u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses; it ends at the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields after comm, 0-based: 1 ppid, 11 utime, 12 stime, 13 cutime, 14 cstime.
    let f = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / hz;
    let ppid = rest.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((comm, ppid, f(11) + f(12), f(13) + f(14)))
}

/// Reads every process's times now. A process is labelled by its program, prefixed with
/// its family when its parent is Postfix's master (`postfix/lmtp`) or Dovecot's
/// (`dovecot/lmtp`); kernel workers, whose names change with their work, are one label.
pub fn snapshot() -> Snapshot {
    let hz = ticks_per_second();
    let mut raw = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Snapshot::default() };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(s) = stat(pid, hz) {
            raw.insert(pid, s);
        }
    }
    let family = |ppid: u32| match raw.get(&ppid).map(|p| p.0.as_str()) {
        Some("master") => "postfix/",
        Some("dovecot") => "dovecot/",
        _ => "",
    };
    let by_pid = raw
        .iter()
        .map(|(&pid, (comm, ppid, own, reaped))| {
            let label = if comm.starts_with("kworker") || comm.starts_with("ksoftirq") {
                "kernel workers".to_string()
            } else {
                format!("{}{comm}", family(*ppid))
            };
            (pid, Proc { label, own: *own, reaped: *reaped })
        })
        .collect();
    Snapshot { by_pid }
}

/// CPU seconds spent between two snapshots, by label, largest first (labels under 1 % of
/// the total folded into "other"). A process that exited in between shows as "<parent>
/// exited children" (Postfix's and Dovecot's masters reap theirs).
pub fn spent(before: &Snapshot, after: &Snapshot) -> Vec<(String, f64)> {
    let mut by_label: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, a) in &after.by_pid {
        let b = before.by_pid.get(pid);
        *by_label.entry(a.label.clone()).or_insert(0.0) += a.own - b.map_or(0.0, |b| b.own);
        let reaped = a.reaped - b.map_or(0.0, |b| b.reaped);
        // The benchmark's own children (postqueue, doveadm) are its measuring, not the cell's work.
        if reaped > 0.0 && *pid != std::process::id() {
            *by_label.entry(format!("{} exited children", a.label)).or_insert(0.0) += reaped;
        }
    }
    // A process alive before and gone after: its time is in its parent's reaped figure,
    // whole; what it had spent before must come off.
    for (pid, b) in &before.by_pid {
        if !after.by_pid.contains_key(pid) {
            *by_label.entry(format!("{} (exited)", b.label)).or_insert(0.0) -= b.own;
        }
    }
    let mut v: Vec<(String, f64)> = by_label.into_iter().filter(|(_, d)| d.abs() > 1e-9).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = v.iter().map(|x| x.1.max(0.0)).sum();
    let (mut keep, mut other) = (Vec::new(), 0.0);
    for (k, d) in v {
        if d.abs() < total * 0.01 { other += d } else { keep.push((k, d)) }
    }
    if other.abs() > 1e-9 {
        keep.push(("other".into(), other));
    }
    keep
}

/// One line: total CPU milliseconds per message and the largest shares.
pub fn per_message(spent: &[(String, f64)], messages: usize) -> String {
    let n = messages.max(1) as f64;
    let total: f64 = spent.iter().map(|x| x.1).sum();
    let parts: Vec<String> = spent.iter().map(|(k, d)| format!("{k} {:.2}", d * 1000.0 / n)).collect();
    format!("{:.2} ms CPU/msg: {}", total * 1000.0 / n, parts.join(", "))
}
