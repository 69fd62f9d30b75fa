//! The access point on the milter protocol level (indymilter-test plays Postfix): role
//! placement, fail-closed behaviour, the anti-spoofing and formal checks, and the busta di
//! trasporto that replaces an accepted message. Generated receipts are captured by a
//! scripted SMTP server standing in for the injection listener.

use std::process::Command;
use std::sync::{Arc, Mutex};

use indymilter_test::{MacroStage, Status, TestConnection};
use pecora::config::Config;
use pecora::runtime::engine::Engine;
use pecora::runtime::state::Shared;
use pecora::daemon::serve::{run_milter, spawn_workers};
use pecora::store::Store;

#[path = "common/pki.rs"]
mod pki;
#[path = "common/milter.rs"]
mod milter;
use milter::{fake_injector, serve_injector};

struct Milter {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    injected: Arc<Mutex<Vec<(Vec<String>, String)>>>,
    dir: tempfile::TempDir,
}

impl Milter {
    async fn start() -> Milter {
        let (inject, injected) = fake_injector().await;
        Milter::start_with(inject, injected).await
    }

    async fn start_with(inject: String, injected: Arc<Mutex<Vec<(Vec<String>, String)>>>) -> Milter {
        let dir = tempfile::tempdir().unwrap();
        pki::provider(dir.path());
        let d = dir.path().display();
        let path = pki::config(
            dir.path(),
            &format!("[inject]\nendpoint = \"inet:{inject}\"\n[limits]\nspool_dir = \"{d}/spool\"\nspool_threshold = 1024\n"),
        );
        let config = Config::load(&path).unwrap();
        let engine = Engine::load(&config).unwrap();
        let store = Store::open(&format!("sqlite:{}/registry.db", dir.path().display())).await.unwrap();
        let shared = Arc::new(Shared::new(config, engine, store, path));
        let (workers_stop, workers_stopped) = tokio::sync::watch::channel(false);
        let _workers = spawn_workers(&shared, workers_stopped);
        std::mem::forget(workers_stop);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_milter(listener, shared, stopped));
        Milter { addr, stop: Some(stop), task, injected, dir }
    }

    async fn session(&self, daemon: &str) -> TestConnection {
        let mut c = TestConnection::open(self.addr).await.unwrap();
        c.macros(MacroStage::Connect, [("{daemon_name}", daemon)]).await.unwrap();
        let st = c.connect("mua.example", [127, 0, 0, 1]).await.unwrap();
        assert_eq!(st, Status::Continue);
        c
    }

    /// Waits until `n` messages reached the fake injection listener.
    async fn injected(&self, n: usize) -> Vec<(Vec<String>, String)> {
        for _ in 0..200 {
            if self.injected.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.injected.lock().unwrap().clone()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn submit(c: &mut TestConnection, login: Option<&str>, from: &str, rcpts: &[&str], headers: &[(&str, &str)], body: &str) -> Status {
    if let Some(l) = login {
        c.macros(MacroStage::Mail, [("{auth_authen}", l)]).await.unwrap();
    }
    let st = c.mail([format!("<{from}>")]).await.unwrap();
    if st != Status::Continue {
        return st;
    }
    for r in rcpts {
        let st = c.rcpt([format!("<{r}>")]).await.unwrap();
        if st != Status::Continue {
            return st;
        }
    }
    c.macros(MacroStage::Data, [("i", "4Q1")]).await.unwrap();
    for (n, v) in headers {
        c.header(*n, *v).await.unwrap();
    }
    c.body(body.replace('\n', "\r\n")).await.unwrap();
    c.macros(MacroStage::Eom, [("i", "4Q1")]).await.unwrap();
    c.eom().await.unwrap().1
}

const HEADERS: &[(&str, &str)] = &[
    ("From", "Alice <alice@pec.alpha.test>"),
    ("To", "bob@pec.beta.test"),
    ("Cc", "carol@mail.gamma.test"),
    ("Subject", "Contratto"),
    ("Message-ID", "<m1@mua>"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_listener_is_tempfailed_not_passed_through() {
    let milter = Milter::start().await;
    let mut c = TestConnection::open(milter.addr).await.unwrap();
    c.macros(MacroStage::Connect, [("{daemon_name}", "mx.example")]).await.unwrap();
    let status = c.connect("client.example", [127, 0, 0, 1]).await.unwrap();
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    c.close().await.unwrap();
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_mail_never_gets_the_internal_role() {
    let milter = Milter::start().await;
    // An smtpd listener without its own milter_macro_daemon_name inherits main.cf's
    // PEC-INTERNO; smtpd always defines {client_resolve} and {client_connections}.
    let mut c = TestConnection::open(milter.addr).await.unwrap();
    c.macros(
        MacroStage::Connect,
        [
            ("{daemon_name}", "PEC-INTERNO"),
            ("{daemon_addr}", "192.0.2.1"),
            ("{daemon_port}", "25"),
            ("{client_resolve}", "OK"),
            ("{client_connections}", "1"),
        ],
    )
    .await
    .unwrap();
    let status = c.connect("client.example", [192, 0, 2, 7]).await.unwrap();
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    c.close().await.unwrap();

    // cleanup's emulation for Postfix's own mail (a bounce) defines {daemon_addr} and
    // {daemon_port} too (Postfix >= 3.2), never {client_resolve}: it keeps the internal role
    // and its message is processed.
    let mut c = TestConnection::open(milter.addr).await.unwrap();
    c.macros(
        MacroStage::Connect,
        [("{daemon_name}", "PEC-INTERNO"), ("{daemon_addr}", "127.0.0.1"), ("{daemon_port}", "0")],
    )
    .await
    .unwrap();
    assert_eq!(c.connect("localhost", [127, 0, 0, 1]).await.unwrap(), Status::Continue);
    assert_eq!(c.mail(["<>"]).await.unwrap(), Status::Continue);
    assert_eq!(c.rcpt(["<alice@pec.alpha.test>"]).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Data, [("i", "4Q9")]).await.unwrap();
    c.header("From", "MAILER-DAEMON@mx.pec.alpha.test").await.unwrap();
    c.header("Subject", "Undelivered Mail Returned to Sender").await.unwrap();
    c.body("not about any envelope of ours\r\n").await.unwrap();
    c.macros(MacroStage::Eom, [("i", "4Q9")]).await.unwrap();
    let (_, status) = c.eom().await.unwrap();
    assert!(!matches!(status, Status::Tempfail { .. }), "{status:?}");
    c.close().await.unwrap();
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_message_becomes_a_signed_transport_envelope() {
    let milter = Milter::start().await;
    let mut c = milter.session("PEC-ACCESSO").await;
    c.macros(MacroStage::Mail, [("{auth_authen}", "alice@pec.alpha.test")]).await.unwrap();
    assert_eq!(c.mail(["<alice@pec.alpha.test>"]).await.unwrap(), Status::Continue);
    for r in ["<bob@pec.beta.test>", "<carol@mail.gamma.test>"] {
        assert_eq!(c.rcpt([r]).await.unwrap(), Status::Continue);
    }
    c.macros(MacroStage::Data, [("i", "4Q1")]).await.unwrap();
    for (n, v) in HEADERS {
        c.header(*n, *v).await.unwrap();
    }
    c.header("X-Ricevuta", "avvenuta-consegna").await.unwrap();
    // Larger than the spool threshold: goes through the temporary file.
    c.body("line of text\r\n".repeat(1000)).await.unwrap();
    c.macros(MacroStage::Eom, [("i", "4Q1")]).await.unwrap();
    let (actions, status) = c.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    // Every original header is deleted, the user's X-Ricevuta included…
    for name in ["From", "To", "Subject", "Message-ID", "X-Ricevuta"] {
        assert!(actions.has_delete_header(name, 1), "{name} not deleted: {actions:?}");
    }
    // …and the envelope's headers take their place.
    assert!(actions.has_add_header("X-Trasporto", " posta-certificata"), "{actions:?}");
    assert!(actions.has_add_header("X-Riferimento-Message-ID", " <m1@mua>"));
    assert!(actions.has_add_header("Subject", " POSTA CERTIFICATA: Contratto"));
    let body: Vec<u8> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            indymilter_test::EomAction::ReplaceBody { chunk } => Some(chunk.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!body.is_empty(), "body replaced");
    // The whole new message verifies with someone else's code: openssl smime.
    let mut msg = String::new();
    for a in &actions.actions {
        if let indymilter_test::EomAction::AddHeader { name, value } = a {
            msg.push_str(&format!("{}:{}\r\n", name.to_string_lossy(), value.to_string_lossy().replace('\n', "\r\n")));
        }
    }
    msg.push_str("\r\n");
    let mut bytes = msg.into_bytes();
    bytes.extend_from_slice(&body);
    let file = milter.dir.path().join("envelope.eml");
    std::fs::write(&file, &bytes).unwrap();
    let v = Command::new("openssl")
        .args(["smime", "-verify", "-CAfile"])
        .arg(milter.dir.path().join("cert.pem"))
        .arg("-in")
        .arg(&file)
        .args(["-out", "/dev/null"])
        .output()
        .unwrap();
    assert!(v.status.success(), "openssl smime -verify: {}", String::from_utf8_lossy(&v.stderr));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("name=\"postacert.eml\""));
    assert!(text.contains("X-Ricevuta: avvenuta-consegna"), "the user's header stays inside postacert.eml");

    // The signed acceptance goes to the sender, through the injection listener.
    let got = milter.injected(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, ["alice@pec.alpha.test"]);
    assert!(got[0].1.contains("X-Ricevuta: accettazione"));
    assert!(got[0].1.contains("Subject: ACCETTAZIONE: Contratto"));
    assert!(got[0].1.contains("tipo=\"esterno\"") || got[0].1.contains("posta ordinaria"));
    c.close().await.unwrap();
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofing_and_formal_errors_are_refused_with_reasons() {
    let milter = Milter::start().await;

    // No login: refused at MAIL, no notice.
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, None, "alice@pec.alpha.test", &["bob@pec.beta.test"], HEADERS, "x\n").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("530 5.7.0")), "{st:?}");
    c.close().await.unwrap();

    // A From that is not the login.
    let mut c = milter.session("PEC-ACCESSO").await;
    let spoof = [("From", "mallory@pec.alpha.test"), ("To", "bob@pec.beta.test"), ("Subject", "x")];
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test"], &spoof, "x\n").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("5.7.1") && m.to_string_lossy().contains("mallory")), "{st:?}");
    c.close().await.unwrap();

    // A MAIL FROM that is not the login: refused at RCPT, notice at the end.
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "bob@pec.alpha.test", &["bob@pec.beta.test"], HEADERS, "x\n").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("553 5.7.1")), "{st:?}");
    c.close().await.unwrap();

    // A blind copy: a RCPT not in To/Cc.
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test", "dave@pec.beta.test"], HEADERS, "x\n").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("dave@pec.beta.test")), "{st:?}");
    c.close().await.unwrap();

    // Three signed non-accettazione notices, all to the authenticated mailbox only.
    let got = milter.injected(3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for (rcpts, data) in &got {
        assert_eq!(rcpts, &["alice@pec.alpha.test"]);
        assert!(data.contains("X-Ricevuta: non-accettazione"), "{data}");
        assert!(data.contains("AVVISO DI NON ACCETTAZIONE: "));
    }
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_envelope_must_name_the_same_recipients() {
    let milter = Milter::start().await;
    // To: and Cc: name carol, who is no RCPT: refused, with one notice to the sender.
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test"], HEADERS, "x\n").await;
    assert!(
        matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("550 5.7.1")
            && m.to_string_lossy().contains("carol@mail.gamma.test")
            && m.to_string_lossy().contains("not a recipient of the SMTP envelope")),
        "{st:?}"
    );
    c.close().await.unwrap();
    // No From: at all.
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test", "carol@mail.gamma.test"], &HEADERS[1..], "x\n").await;
    assert!(matches!(&st, Status::Reject { message: Some(m) } if m.to_string_lossy().contains("no From: header")), "{st:?}");
    c.close().await.unwrap();
    let got = milter.injected(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for (rcpts, data) in &got {
        assert_eq!(rcpts, &["alice@pec.alpha.test"]);
        assert!(data.contains("X-Ricevuta: non-accettazione"), "{data}");
    }
    // Nothing was recorded as accepted.
    let store = Store::open(&format!("sqlite:{}/registry.db", milter.dir.path().display())).await.unwrap();
    assert!(store.history("4Q1").await.unwrap().iter().all(|e| e.event_type != "acceptance"));
    milter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_survives_an_injection_outage_and_is_recorded() {
    // The injection listener is down when the message is accepted…
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let milter = Milter::start_with(format!("127.0.0.1:{port}"), got.clone()).await;
    let mut c = milter.session("PEC-ACCESSO").await;
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test", "carol@mail.gamma.test"], HEADERS, "hello\n").await;
    assert_eq!(st, Status::Continue);
    c.close().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(got.lock().unwrap().is_empty());
    // …and comes back: the receipt kept in the outbox goes out, exactly once.
    serve_injector(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap(), got.clone());
    let sent = milter.injected(1).await;
    assert_eq!(sent.len(), 1);
    assert!(sent[0].1.contains("X-Ricevuta: accettazione"));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(got.lock().unwrap().len(), 1, "no duplicate receipt");

    // The registry holds the acceptance with its queue id and typed recipients.
    let store = Store::open(&format!("sqlite:{}/registry.db", milter.dir.path().display())).await.unwrap();
    let history = store.history("4Q1").await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].event_type, "acceptance");
    let pec_id = history[0].pec_id.clone().unwrap();
    let state = store.backend().transaction(&pec_id).await.unwrap().unwrap();
    let types: Vec<_> = state.recipients.iter().map(|r| (r.recipient.as_str(), r.recipient_type.as_str())).collect();
    assert!(types.contains(&("bob@pec.beta.test", "certificato")), "{types:?}");
    assert!(types.contains(&("carol@mail.gamma.test", "esterno")), "{types:?}");
    milter.shutdown().await;
}

/// Headers go without a reply (SMFIP_NR_HDR, one round trip fewer per header), and a
/// header section over the limit is still refused: at the first body chunk, or at end of
/// message when there is no body. The next transaction on the connection is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_get_no_reply_and_an_oversized_header_section_is_still_refused() {
    use indymilter_test::ProtoOpts;
    let milter = Milter::start().await;
    let mut c = milter.session("PEC-ACCESSO").await;
    assert!(c.negotiated_opts().contains(ProtoOpts::NOREPLY_HEADER), "{:?}", c.negotiated_opts());
    let big = "x".repeat(60_000);
    for with_body in [true, false] {
        c.macros(MacroStage::Mail, [("{auth_authen}", "alice@pec.alpha.test")]).await.unwrap();
        assert_eq!(c.mail(["<alice@pec.alpha.test>"]).await.unwrap(), Status::Continue);
        assert_eq!(c.rcpt(["<bob@pec.beta.test>"]).await.unwrap(), Status::Continue);
        c.macros(MacroStage::Data, [("i", "4QBIG")]).await.unwrap();
        for (n, v) in &HEADERS[..2] {
            assert_eq!(c.header(*n, *v).await.unwrap(), Status::Noreply);
        }
        // 20 × 60 KB: over the 1 MiB the header section may take.
        for _ in 0..20 {
            assert_eq!(c.header("X-Padding", big.as_str()).await.unwrap(), Status::Noreply);
        }
        let st = if with_body {
            c.body("x\r\n").await.unwrap()
        } else {
            c.macros(MacroStage::Eom, [("i", "4QBIG")]).await.unwrap();
            c.eom().await.unwrap().1
        };
        assert!(matches!(st, Status::Reject { .. }), "body {with_body}: {st:?}");
        c.abort().await.unwrap();
    }
    // The same connection goes on: a normal message is accepted and replaced.
    let headers = [HEADERS[0], HEADERS[1], HEADERS[3], HEADERS[4]];
    let st = submit(&mut c, Some("alice@pec.alpha.test"), "alice@pec.alpha.test", &["bob@pec.beta.test"], &headers, "Buongiorno.\n").await;
    assert_eq!(st, Status::Continue);
    c.close().await.unwrap();
    milter.shutdown().await;
}
