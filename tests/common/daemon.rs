//! A real `pecora serve` process for a test (the binary Cargo built, started with its own
//! configuration file and environment), a fake injection listener that stores what pecora
//! submits, and the command line around them.
//!
//! Every process started here is killed (by its pid, SIGKILL) and reaped when its handle
//! drops, whatever the test's outcome.
//!
//! [`ServeSetup`] uses tests/common/pki.rs: a test that includes this file includes that
//! one too, as `mod pki`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pecora");

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sends SIGKILL to a process we started.
pub fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
}

/// A test provider's `pecora serve` before it starts: a directory holding the keys and
/// index of tests/common/pki.rs and the configuration, and a free milter address.
pub struct ServeSetup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub milter: String,
}

impl ServeSetup {
    /// The directory with the keys and index; the configuration is written by
    /// [`ServeSetup::configure`].
    pub fn new() -> ServeSetup {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::provider(dir.path());
        let milter = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("pecora.toml");
        ServeSetup { dir, config, milter }
    }

    /// Writes the configuration: the milter, the delivery spool, the spool of large
    /// messages, injection to `inject` (`host:port`), and the registry at `store_url` (None:
    /// SQLite in the directory) with its checkpoints there. `[store]` comes last, so `extra`
    /// may begin with more of its keys before its own sections.
    pub fn configure(&self, store_url: Option<&str>, inject: &str, extra: &str) {
        let d = self.dir.path().display();
        let url = store_url.map_or_else(|| format!("sqlite:{d}/registry.db"), str::to_string);
        let milter = &self.milter;
        crate::pki::config(
            self.dir.path(),
            &format!(
                "[listen]\nmilter = \"inet:{milter}\"\ndelivery_spool = \"{d}/delivered\"\n\
                 [inject]\nendpoint = \"inet:{inject}\"\n\
                 [limits]\nspool_dir = \"{d}/spool\"\n\
                 [store]\nurl = \"{url}\"\ncheckpoint_dir = \"{d}/checkpoints\"\n{extra}"
            ),
        );
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon's output.
    pub fn log(&self) -> PathBuf {
        self.path("pecora.log")
    }

    /// Starts the daemon with `env` added to its environment.
    pub fn start(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&self.config, &self.milter, &self.log(), env)
    }

    /// Runs `pecora --config CONFIG ARGS...`: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli(&self.config, args)
    }
}

/// One access-point transaction, as Postfix's submission listener drives it: alice of
/// pec.alpha.test (the pki.rs provider), logged in, sends `headers` and `body` to `rcpts`
/// under the queue id `queue_id`. The end-of-message status, or `None` when the milter
/// connection broke before a reply.
pub async fn submit_access(milter: &str, queue_id: &str, headers: &[(&str, &str)], rcpts: &[&str], body: &str) -> Option<indymilter_test::Status> {
    use indymilter_test::{MacroStage, Status, TestConnection};
    let mut c = TestConnection::open(milter).await.expect("milter connect");
    c.macros(MacroStage::Connect, [("{daemon_name}", "PEC-ACCESSO")])
        .await
        .unwrap();
    assert_eq!(
        c.connect("mua.example", [127, 0, 0, 1]).await.unwrap(),
        Status::Continue
    );
    c.macros(
        MacroStage::Mail,
        [("{auth_authen}", "alice@pec.alpha.test")],
    )
    .await
    .unwrap();
    assert_eq!(
        c.mail(["<alice@pec.alpha.test>"]).await.unwrap(),
        Status::Continue
    );
    for r in rcpts {
        assert_eq!(c.rcpt([format!("<{r}>")]).await.unwrap(), Status::Continue);
    }
    c.macros(MacroStage::Data, [("i", queue_id)]).await.unwrap();
    for (n, v) in headers {
        c.header(*n, *v).await.unwrap();
    }
    c.body(body.to_string()).await.unwrap();
    c.macros(MacroStage::Eom, [("i", queue_id)]).await.unwrap();
    match c.eom().await {
        Ok((_, status)) => {
            let _ = c.close().await;
            Some(status)
        }
        Err(_) => None,
    }
}

/// A running `pecora serve`.
pub struct Daemon {
    child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
    pub milter: String,
}

impl Daemon {
    /// Starts `pecora --config CONFIG serve` with `env` added to the environment, output
    /// appended to `log`, and waits (20 s at most) until the milter socket `milter`
    /// (`host:port`) accepts connections.
    pub fn start(config: &Path, milter: &str, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open daemon log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("PECORA_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start pecora serve");
        let mut d = Daemon {
            child,
            config: config.to_owned(),
            log: log.to_owned(),
            milter: milter.to_string(),
        };
        let start = Instant::now();
        while TcpStream::connect(milter).is_err() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!(
                    "pecora serve exited at start ({st}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pecora serve did not open {milter}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) for the process to end by itself and returns how it ended.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) -> ExitStatus {
        sigkill(self.child.id());
        self.child.wait().expect("reap pecora")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sigkill(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// True when the status says the process was killed by SIGKILL.
pub fn killed_by_sigkill(st: &ExitStatus) -> bool {
    st.signal() == Some(9)
}

/// Runs the pecora command line (not `serve`) and returns exit code, stdout, stderr.
pub fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("PECORA_FAILPOINT")
        .output()
        .expect("run pecora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the fake injection listener does when a client sends DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnData {
    /// Accept the message (stored when the final dot arrives, before the 250, as Postfix
    /// commits it).
    Accept,
    /// The first time: SIGKILL the process whose pid is in [`Sink::victim`] instead of
    /// answering 354, so it dies with DATA sent and no byte of the message written; the
    /// half transaction is discarded as Postfix discards it. Later times: accept.
    KillOnce,
}

/// One message the sink stored: the RCPT TO addresses and the DATA (dot-unstuffed, CRLF).
#[derive(Debug, Clone)]
pub struct Stored {
    pub rcpts: Vec<String>,
    pub data: String,
}

/// The `syslog_name` the sink writes its mail log lines under ([`Sink::start_logging`]).
pub const SINK_SYSLOG_NAME: &str = "postfix-sink";

/// A fake injection listener: plain SMTP on loopback, one thread per connection.
pub struct Sink {
    pub addr: String,
    pub stored: Arc<Mutex<Vec<Stored>>>,
    /// DATA commands seen (transactions that got as far as DATA).
    pub data_commands: Arc<AtomicU32>,
    /// The pid the sink kills in [`OnData::KillOnce`] mode.
    pub victim: Arc<AtomicU32>,
    pub killed: Arc<AtomicU32>,
    /// While true, a new connection waits for its greeting: a test holds the injection back
    /// until the milter has answered (the outbox worker is woken as the acceptance is
    /// recorded, and could otherwise reach a failpoint before the milter's reply is out).
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    /// The connection threads: a failed assertion in one is propagated to the test by
    /// [`Sink::check`] (called by every reader of the sink, and on drop).
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Sink {
    pub fn start(mode: OnData) -> Sink {
        Sink::start_with(mode, None)
    }

    /// A sink that also writes a mail log the way Postfix does, under the `syslog_name`
    /// [`SINK_SYSLOG_NAME`]: for each message it takes, cleanup's
    /// `<queue id>: message-id=<…>` and qmgr's `<queue id>: from=<…>`, before its 250.
    pub fn start_logging(mode: OnData, maillog: &Path) -> Sink {
        Sink::start_with(mode, Some(maillog.to_path_buf()))
    }

    fn start_with(mode: OnData, maillog: Option<PathBuf>) -> Sink {
        let maillog = Arc::new(maillog);
        let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = l.local_addr().unwrap().to_string();
        let sink = Sink {
            addr,
            stored: Arc::new(Mutex::new(Vec::new())),
            data_commands: Arc::new(AtomicU32::new(0)),
            victim: Arc::new(AtomicU32::new(0)),
            killed: Arc::new(AtomicU32::new(0)),
            hold: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
        };
        let (stored, datas, victim, killed, threads, hold) = (
            sink.stored.clone(),
            sink.data_commands.clone(),
            sink.victim.clone(),
            sink.killed.clone(),
            sink.threads.clone(),
            sink.hold.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (stored, datas, victim, killed, maillog, hold) = (
                    stored.clone(),
                    datas.clone(),
                    victim.clone(),
                    killed.clone(),
                    maillog.clone(),
                    hold.clone(),
                );
                let h = std::thread::spawn(move || {
                    while hold.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    // An I/O error is the client going away; a panic is a failed assertion.
                    let _ = serve(conn, mode, &stored, &datas, &victim, &killed, maillog.as_deref());
                });
                threads.lock().unwrap_or_else(|e| e.into_inner()).push(h);
            }
        });
        sink
    }

    /// Joins the connection threads that have ended and re-raises, in the test's thread,
    /// the panic of any of them.
    pub fn check(&self) {
        let done: Vec<std::thread::JoinHandle<()>> = {
            let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            let (done, running) = std::mem::take(&mut *threads)
                .into_iter()
                .partition(|h| h.is_finished());
            *threads = running;
            done
        };
        for h in done {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    pub fn count(&self) -> usize {
        self.check();
        self.stored.lock().unwrap().len()
    }

    pub fn messages(&self) -> Vec<Stored> {
        self.check();
        self.stored.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until at least `n` messages are stored; returns them all.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Stored> {
        let start = Instant::now();
        while self.count() < n && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.messages()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

fn serve(
    conn: TcpStream,
    mode: OnData,
    stored: &Mutex<Vec<Stored>>,
    datas: &AtomicU32,
    victim: &AtomicU32,
    killed: &AtomicU32,
    maillog: Option<&Path>,
) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 sink ESMTP\r\n")?;
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.to_ascii_uppercase();
        if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            w.write_all(b"250-sink\r\n250 8BITMIME\r\n")?;
        } else if cmd.starts_with("MAIL FROM:") {
            rcpts.clear();
            w.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if cmd.starts_with("RCPT TO:") {
            rcpts.push(line[8..].trim().trim_matches(['<', '>']).to_string());
            w.write_all(b"250 2.1.5 Ok\r\n")?;
        } else if cmd.starts_with("DATA") {
            datas.fetch_add(1, Ordering::SeqCst);
            if mode == OnData::KillOnce && killed.load(Ordering::SeqCst) == 0 {
                let pid = victim.load(Ordering::SeqCst);
                assert!(pid > 0, "the sink has no pid to kill");
                killed.store(pid, Ordering::SeqCst);
                sigkill(pid);
                // The client is gone: whatever comes now is not a message.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                }
            }
            w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    // Connection lost before the final dot: nothing is queued.
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                let l = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(l);
            }
            let mut stored = stored.lock().unwrap();
            let qid = format!("SINK{:06}", stored.len() + 1);
            if let Some(path) = maillog {
                let msgid = header(&data, "Message-ID");
                let mut log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                let tag = format!("Dec  5 10:00:00 sink {SINK_SYSLOG_NAME}");
                writeln!(log, "{tag}/cleanup[4242]: {qid}: message-id={msgid}")?;
                writeln!(log, "{tag}/qmgr[4243]: {qid}: from=<x@y>, size={}, nrcpt={} (queue active)", data.len(), rcpts.len())?;
            }
            stored.push(Stored {
                rcpts: std::mem::take(&mut rcpts),
                data,
            });
            drop(stored);
            w.write_all(format!("250 2.0.0 Ok: queued as {qid}\r\n").as_bytes())?;
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 Ok\r\n")?;
        }
    }
}

// `header(raw, name)`: shared with lab.rs.
include!("header.rs");
