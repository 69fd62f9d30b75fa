//! Bounded memory at the MX (issue 13, item 12): at most `limits.max_large_transactions`
//! transactions whose message passed the spool threshold are in progress at the reception
//! point; one more is answered 451 4.3.2 as soon as its body passes the threshold, while
//! the ones in progress complete and small messages are not held up. indymilter-test plays
//! Postfix, as in tests/milter_access.rs.

use std::sync::Arc;

use indymilter_test::{MacroStage, Status, TestConnection};
use pecora::config::Config;
use pecora::runtime::engine::Engine;
use pecora::runtime::state::Shared;
use pecora::daemon::serve::run_milter;
use pecora::store::Store;

#[path = "common/pki.rs"]
mod pki;

struct Milter {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Milter {
    /// A milter with a 1 KiB spool threshold and room for two large transactions.
    async fn start() -> Milter {
        let dir = tempfile::tempdir().unwrap();
        pki::provider(dir.path());
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        let path = pki::config(
            dir.path(),
            &format!(
                "[inject]\nendpoint = \"inet:127.0.0.1:9\"\n\
                 [limits]\nspool_dir = \"{d}/spool\"\nspool_threshold = 1024\nmax_large_transactions = 2\n"
            ),
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.limits.max_large_transactions, 2);
        let engine = Engine::load(&config).unwrap();
        let store = Store::open(&format!("sqlite:{d}/registry.db")).await.unwrap();
        let shared = Arc::new(Shared::new(config, engine, store, path));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_milter(listener, shared, stopped));
        Milter { addr, stop: Some(stop), task, _dir: dir }
    }

    /// An MX session with one ordinary message to a PEC mailbox, up to its headers.
    async fn open(&self, n: usize) -> TestConnection {
        let mut c = TestConnection::open(self.addr).await.unwrap();
        c.macros(MacroStage::Connect, [("{daemon_name}", "PEC-RICEZIONE")]).await.unwrap();
        assert_eq!(c.connect("outside.example", [192, 0, 2, 1]).await.unwrap(), Status::Continue);
        assert_eq!(c.mail(["<someone@outside.example>"]).await.unwrap(), Status::Continue);
        assert_eq!(c.rcpt(["<bob@pec.alpha.test>"]).await.unwrap(), Status::Continue);
        let id = format!("4Q{n}");
        c.macros(MacroStage::Data, [("i", id.as_str())]).await.unwrap();
        for (name, value) in [
            ("From", "someone@outside.example".to_string()),
            ("To", "bob@pec.alpha.test".to_string()),
            ("Subject", format!("grande {n}")),
            ("Message-ID", format!("<m{n}@outside.example>")),
        ] {
            assert_eq!(c.header(name, value).await.unwrap(), Status::Noreply);
        }
        c
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// 64 KiB of text, well past the 1 KiB threshold.
fn big_chunk() -> String {
    "riga di testo di un messaggio grande, ordinario\r\n".repeat(1300)
}

async fn finish(c: &mut TestConnection, n: usize) -> Status {
    let id = format!("4Q{n}");
    c.macros(MacroStage::Eom, [("i", id.as_str())]).await.unwrap();
    let (actions, status) = c.eom().await.unwrap();
    if status == Status::Continue {
        // Ordinary mail: wrapped in a busta di anomalia.
        assert!(actions.has_add_header("X-Trasporto", " errore"), "{actions:?}");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_past_the_cap_are_tempfailed_the_others_complete() {
    let milter = Milter::start().await;

    // Two large transactions in progress: both take their body.
    let mut first = milter.open(1).await;
    let mut second = milter.open(2).await;
    assert_eq!(first.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(second.body(big_chunk()).await.unwrap(), Status::Continue);

    // A third (and fourth) one is refused for now as soon as its body passes the threshold.
    for n in [3, 4] {
        let mut third = milter.open(n).await;
        // Below the threshold it goes on...
        assert_eq!(third.body("poche righe\r\n").await.unwrap(), Status::Continue);
        // ...past it, 451 4.3.2 with the reason.
        let st = third.body(big_chunk()).await.unwrap();
        match &st {
            Status::Tempfail { message: Some(m) } => {
                let m = m.to_string_lossy();
                assert!(m.starts_with("451 4.3.2 "), "{m}");
                assert!(m.contains("too many large messages in progress here; try again later"), "{m}");
            }
            other => panic!("transaction {n} past the cap: {other:?}"),
        }
        third.close().await.unwrap();
    }

    // A small message is not held up by the cap.
    let mut small = milter.open(5).await;
    assert_eq!(small.body("Buongiorno.\r\n").await.unwrap(), Status::Continue);
    assert_eq!(finish(&mut small, 5).await, Status::Continue);
    small.close().await.unwrap();

    // The two in progress complete, the second with more body first.
    assert_eq!(second.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(finish(&mut first, 1).await, Status::Continue);
    assert_eq!(finish(&mut second, 2).await, Status::Continue);

    // Their permits are back: two more large ones go through, one after the other on the
    // same connection too.
    let mut again = milter.open(6).await;
    assert_eq!(again.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(finish(&mut again, 6).await, Status::Continue);
    assert_eq!(again.mail(["<someone@outside.example>"]).await.unwrap(), Status::Continue);
    assert_eq!(again.rcpt(["<bob@pec.alpha.test>"]).await.unwrap(), Status::Continue);
    again.macros(MacroStage::Data, [("i", "4Q7")]).await.unwrap();
    assert_eq!(again.header("Subject", "ancora").await.unwrap(), Status::Noreply);
    assert_eq!(again.body(big_chunk()).await.unwrap(), Status::Continue);
    let mut other = milter.open(8).await;
    assert_eq!(other.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(finish(&mut again, 7).await, Status::Continue);
    assert_eq!(finish(&mut other, 8).await, Status::Continue);

    // An aborted large transaction gives its permit back too.
    let mut aborted = milter.open(9).await;
    assert_eq!(aborted.body(big_chunk()).await.unwrap(), Status::Continue);
    aborted.abort().await.unwrap();
    let mut a = milter.open(10).await;
    let mut b = milter.open(11).await;
    assert_eq!(a.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(b.body(big_chunk()).await.unwrap(), Status::Continue);
    assert_eq!(finish(&mut a, 10).await, Status::Continue);
    assert_eq!(finish(&mut b, 11).await, Status::Continue);

    for c in [first, second, again, other, aborted, a, b] {
        c.close().await.unwrap();
    }
    milter.shutdown().await;
}

/// The access point is not limited by the MX's cap (its senders are authenticated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_for_the_mx_only() {
    let milter = Milter::start().await;
    let mut held = Vec::new();
    for n in 0..2 {
        let mut c = milter.open(n).await;
        assert_eq!(c.body(big_chunk()).await.unwrap(), Status::Continue);
        held.push(c);
    }
    let mut c = TestConnection::open(milter.addr).await.unwrap();
    c.macros(MacroStage::Connect, [("{daemon_name}", "PEC-ACCESSO")]).await.unwrap();
    assert_eq!(c.connect("mua.example", [127, 0, 0, 1]).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Mail, [("{auth_authen}", "alice@pec.alpha.test")]).await.unwrap();
    assert_eq!(c.mail(["<alice@pec.alpha.test>"]).await.unwrap(), Status::Continue);
    assert_eq!(c.rcpt(["<bob@pec.beta.test>"]).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Data, [("i", "4QA")]).await.unwrap();
    for (n, v) in [("From", "alice@pec.alpha.test"), ("To", "bob@pec.beta.test"), ("Subject", "Grande"), ("Message-ID", "<a@mua>")] {
        c.header(n, v).await.unwrap();
    }
    assert_eq!(c.body(big_chunk()).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Eom, [("i", "4QA")]).await.unwrap();
    let (actions, status) = c.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(actions.has_add_header("X-Trasporto", " posta-certificata"), "{actions:?}");
    c.close().await.unwrap();
    for c in held {
        c.close().await.unwrap();
    }
    milter.shutdown().await;
}
