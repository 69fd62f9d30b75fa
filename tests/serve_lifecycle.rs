//! `pecora serve` under a service manager: a SIGHUP while the daemon is still starting
//! (`systemctl reload` right after a start, a logrotate postrotate at boot) neither ends it
//! (systemd counts a death by SIGHUP as a clean exit, so `Restart=on-failure` would leave the
//! milter down) nor is mistaken for anything else; and with `Type=notify` the daemon says
//! READY=1 only once its milter socket accepts connections, and STOPPING=1 when told to stop.

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pki.rs"]
mod pki;
use daemon::{BIN, free_port};

fn hup(pid: u32) {
    assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
}

/// A provider in `dir` whose configuration has its milter on a free loopback port, the
/// registry at `store` (a URL) and `extra` at its end: the configuration file and the
/// milter's address.
fn configure(dir: &Path, store: &str, extra: &str) -> (PathBuf, String) {
    let d = dir.display();
    pki::provider(dir);
    let milter = format!("127.0.0.1:{}", free_port());
    let config = pki::config(
        dir,
        &format!(
            "[listen]\nmilter = \"inet:{milter}\"\ndelivery_spool = \"{d}/delivered\"\n\
             [store]\nurl = \"{store}\"\ncheckpoint_dir = \"{d}/checkpoints\"\n\
             [limits]\nspool_dir = \"{d}/spool\"\n{extra}"
        ),
    );
    (config, milter)
}

/// `pecora serve` with `config`, not waiting for anything, its output in `log`: with
/// `notify` as its `NOTIFY_SOCKET` (none without), and `env` besides.
fn serve(config: &Path, log: &Path, notify: Option<&Path>, env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).arg("serve").env_remove("NOTIFY_SOCKET");
    if let Some(socket) = notify {
        cmd.env("NOTIFY_SOCKET", socket);
    }
    cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap()
}

/// Waits (at most 30 s) for the daemon to end by itself; else stops it and fails with
/// `still` and its log.
fn ended(child: &mut Child, log: &Path, still: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{still}:\n{}", text(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the daemon has written to `log` so far.
fn text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap()
}

/// The registry is a PostgreSQL server that accepts the connection and never answers: the
/// daemon waits there, in the middle of its start, for as long as the test wants.
#[test]
fn a_sighup_while_starting_does_not_end_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (config, _) = configure(dir.path(), &format!("postgres://pecora@{}/pecora", silent.local_addr().unwrap()), "");
    let log = dir.path().join("serve.log");
    let mut child = serve(&config, &log, None, &[]);
    // The daemon has read its configuration and keys and waits for the registry.
    silent.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let held = loop {
        match silent.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!("pecora serve ended before opening the registry ({st}):\n{}", text(&log));
                }
                assert!(start.elapsed() < Duration::from_secs(20), "pecora never connected to the registry");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };

    hup(child.id());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a SIGHUP during the start ended pecora:\n{}",
        text(&log)
    );

    // The registry goes away: the daemon ends as it says, by itself, not by the signal.
    drop(held);
    drop(silent);
    let st = ended(&mut child, &log, "pecora still waits for a registry that is gone");
    let text = text(&log);
    assert_eq!((st.code(), st.signal()), (Some(2), None), "{text}");
    assert!(text.contains("cannot open the registry"), "{text}");
}

/// `Type=notify`: READY=1 (with a STATUS naming the milter socket) comes when the socket
/// already accepts, a SIGHUP right after it is a reload, and SIGTERM brings STOPPING=1.
#[test]
fn the_service_manager_hears_ready_once_the_milter_listens_and_stopping_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (config, milter) = configure(dir.path(), &format!("sqlite:{}/registry.db", dir.path().display()), "");
    let socket = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let log = dir.path().join("serve.log");
    let mut child = serve(&config, &log, Some(&socket), &[]);
    let said = |what: &str| {
        let mut buf = [0u8; 4096];
        let n = manager
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} from pecora ({e}):\n{}", text(&log)));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let ready = said("READY=1");
    // Checked at once: the socket must already be open when the manager hears READY.
    let connected = TcpStream::connect(&milter);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.lines().any(|l| l == format!("STATUS=milter on inet:{milter}")), "{ready:?}");
    assert!(connected.is_ok(), "READY=1 before the milter socket accepts: {connected:?}");
    drop(connected);

    hup(child.id());
    let start = Instant::now();
    while !text(&log).contains("configuration reloaded") {
        assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended pecora:\n{}", text(&log));
        assert!(start.elapsed() < Duration::from_secs(20), "no reload:\n{}", text(&log));
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let stopping = said("STOPPING=1");
    assert_eq!(stopping.trim(), "STOPPING=1");
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}:\n{}", text(&log));
}

/// A worker task that dies (here the mail log's follower, by a panic failpoint) does not
/// leave a daemon that takes mail while nobody settles its held receipts: the panic is
/// logged as an error, the daemon shuts down cleanly and exits with an error, and systemd's
/// `Restart=on-failure` starts it again.
#[test]
fn a_worker_that_dies_stops_the_daemon_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("maillog"), "").unwrap();
    let (config, _) = configure(
        dir.path(),
        &format!("sqlite:{d}/registry.db"),
        &format!("[postfix]\nmaillog = \"{d}/maillog\"\nsyslog_name = \"postfix\"\n"),
    );
    let log = dir.path().join("serve.log");
    let mut child = serve(&config, &log, None, &[("PECORA_FAILPOINT", "queue-confirm-panic")]);
    let st = ended(&mut child, &log, "pecora still runs without its mail log follower");
    let text = text(&log);
    assert_eq!((st.code(), st.signal()), (Some(1), None), "{text}");
    let line = |what: &str| text.lines().any(|l| l.contains("ERROR") && l.contains(what));
    assert!(line("panic: ") && line("failpoint queue-confirm-panic reached"), "{text}");
    assert!(line("the queue_confirm worker stopped (panicked: failpoint queue-confirm-panic reached)"), "{text}");
    assert!(line("shut down because a worker stopped"), "{text}");
}
