//! SIGHUP on a real `pecora serve`: the configuration is re-read, and a milter session in
//! progress finishes on the configuration it started with; the next session gets the new
//! one. Played at the reception point with ordinary mail for a PEC mailbox: the policy
//! changes from `anomaly` (wrapped, accepted) to `refuse` (550) while a session is open.

use indymilter_test::{EomAction, Status, TestConnection};
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/milter.rs"]
mod milter;
#[path = "common/pki.rs"]
mod pki;
use daemon::{Daemon, OnData, Sink, free_port};

const ORDINARY: &[u8] = b"From: paolo@mail.gamma.test\r\nTo: bob@pec.alpha.test\r\nSubject: Posta ordinaria\r\n\
Message-ID: <ordinaria@gamma>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0100\r\n\r\nCiao.\r\n";

async fn session(addr: &str) -> TestConnection {
    use indymilter_test::MacroStage;
    let mut c = TestConnection::open(addr).await.expect("milter connect");
    c.macros(MacroStage::Connect, [("{daemon_name}", "PEC-RICEZIONE")]).await.unwrap();
    assert_eq!(c.connect("mx.gamma.test", [127, 0, 0, 1]).await.unwrap(), Status::Continue);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_progress_finishes_on_the_configuration_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    pki::provider(dir.path());
    let sink = Sink::start(OnData::Accept);
    let addr = format!("127.0.0.1:{}", free_port());
    let base = format!(
        "[listen]\nmilter = \"inet:{addr}\"\ndelivery_spool = \"{d}/delivered\"\n\
         [store]\nurl = \"sqlite:{d}/registry.db\"\ncheckpoint_dir = \"{d}/checkpoints\"\n\
         [inject]\nendpoint = \"inet:{}\"\n[limits]\nspool_dir = \"{d}/spool\"\n",
        sink.addr
    );
    let config = pki::config(dir.path(), &base);
    let log = dir.path().join("serve.log");
    let daemon = Daemon::start(&config, &addr, &log, &[]);

    // A session opens under the default policy (anomaly) and gets as far as RCPT.
    let mut old = session(&addr).await;
    // The holder now refuses ordinary mail: SIGHUP, and the daemon says it reloaded.
    pki::config(dir.path(), &format!("{base}[policy]\nordinary_mail = \"refuse\"\n"));
    let reloads = |t: &str| t.matches("configuration reloaded").count();
    let before = reloads(&daemon.log_text());
    assert!(std::process::Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap().success());
    let start = Instant::now();
    while reloads(&daemon.log_text()) == before {
        assert!(start.elapsed() < Duration::from_secs(20), "no reload:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new session gets the new rule: refused.
    let mut new = session(&addr).await;
    let (_, st) = milter::transaction(&mut new, None, "paolo@mail.gamma.test", &["bob@pec.alpha.test"], ORDINARY, "NEW1").await;
    assert!(
        matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("5.7.1")),
        "the session after the reload: {st:?}"
    );
    let _ = new.close().await;

    // The session in progress finishes on the old one: wrapped as an anomaly, accepted.
    let (a, st) = milter::transaction(&mut old, None, "paolo@mail.gamma.test", &["bob@pec.alpha.test"], ORDINARY, "OLD1").await;
    assert_eq!(st, Status::Continue, "the session begun before the reload");
    assert!(a.actions.iter().any(|x| matches!(x, EomAction::ReplaceBody { .. })), "wrapped: {a:?}");
    assert!(
        a.actions.iter().any(|x| matches!(x, EomAction::AddHeader { name, value }
            if name.to_string_lossy().eq_ignore_ascii_case("X-Trasporto") && value.to_string_lossy().contains("errore"))),
        "a busta di anomalia: {a:?}"
    );
    let _ = old.close().await;
    drop(daemon);
}
