//! pecora's milter in-process for tests that play Postfix with indymilter-test: our provider
//! "Alpha PEC" (pec.alpha.test, tests/common/pki.rs) in an index with other providers whose
//! signing identities the test holds, a SQLite registry, and a scripted SMTP server standing
//! in for the injection listener that keeps every message pecora sends.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use indymilter_test::{MacroStage, Status, TestConnection};
use pecora::config::Config;
use pecora::runtime::engine::Engine;
use pecora::pec::build::Provider;
use pecora::pec::incoming;
use pecora::pec::sign::Signer;
use pecora::runtime::state::Shared;
use pecora::daemon::serve::{run_milter, spawn_workers};
use pecora::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "pki.rs"]
mod pki;

/// What the injection listener received: RCPT TO addresses and DATA.
pub type Injected = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A scripted SMTP server that accepts everything and keeps each message's DATA.
pub async fn fake_injector() -> (String, Injected) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got: Injected = Arc::new(Mutex::new(Vec::new()));
    serve_injector(l, got.clone());
    (addr, got)
}

/// Serves the scripted SMTP server on `l`, keeping what it receives in `store`.
pub fn serve_injector(l: tokio::net::TcpListener, store: Injected) {
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 fake\r\n").await.unwrap();
                let mut rcpts = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    if cmd.starts_with("RCPT TO:") {
                        rcpts.push(line[8..].trim().trim_matches(['<', '>']).to_string());
                    }
                    if cmd.starts_with("DATA") {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).await.unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(&line);
                        }
                        store.lock().unwrap().push((std::mem::take(&mut rcpts), data));
                        w.write_all(b"250 2.0.0 Ok: queued as FAKE1\r\n").await.unwrap();
                    } else if cmd.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    }
                }
            });
        }
    });
}

/// Another PEC provider the test signs as: its builder identity and signer.
pub struct OtherProvider {
    pub provider: Provider,
    pub signer: Signer,
    pub mail_receipt: String,
}

/// A self-signed signing identity for `name` managing `domain`, written to `dir`.
fn identity(dir: &Path, name: &str, domain: &str) -> (OtherProvider, Vec<u8>) {
    let stem = domain.replace('.', "_");
    let (key, cert) = (dir.join(format!("{stem}.key")), dir.join(format!("{stem}.pem")));
    let system = format!("posta-certificata@{domain}");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj"])
        .arg(format!("/C=IT/O={name}/CN=Posta Certificata {name}"))
        .args(["-addext", &format!("subjectAltName=email:{system}")])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = std::fs::read(&cert).unwrap();
    let signer = Signer::from_pem(&pem, &std::fs::read(&key).unwrap(), None).unwrap();
    let der = signer.certificate().to_der().unwrap();
    let mail_receipt = format!("servizio@{domain}");
    let provider = Provider { name: name.to_string(), domain: domain.to_string(), system_address: system };
    (OtherProvider { provider, signer, mail_receipt }, der)
}

pub struct Milter {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub injected: Injected,
    /// Keeps the configuration, keys and registry alive for the test.
    pub dir: tempfile::TempDir,
    /// The other providers, in the order of `start`'s `others`.
    pub others: Vec<OtherProvider>,
    pub store: Store,
    /// The daemon's shared state (configuration, engine, registry) as the milter uses it.
    pub shared: Arc<Shared>,
}

impl Milter {
    /// pecora as Alpha PEC, with `others` ((name, domain)) in the index beside it, each with
    /// a signing certificate of its own; `extra` TOML goes into the configuration.
    pub async fn start(others: &[(&str, &str)], extra: &str) -> Milter {
        let (inject, injected) = fake_injector().await;
        let dir = tempfile::tempdir().unwrap();
        pki::provider(dir.path());
        let alpha_der = openssl::x509::X509::from_pem(&std::fs::read(dir.path().join("cert.pem")).unwrap()).unwrap().to_der().unwrap();
        let mut ldif = String::from("version: 1\ndn: o=postacert\nobjectclass: top\no: postacert\n\n");
        ldif.push_str(&incoming::ldif_entry("Alpha PEC", &[&alpha_der], "servizio@pec.alpha.test", &["pec.alpha.test"]));
        let mut list = Vec::new();
        for (name, domain) in others {
            let (p, der) = identity(dir.path(), name, domain);
            ldif.push('\n');
            ldif.push_str(&incoming::ldif_entry(name, &[&der], &p.mail_receipt, &[domain]));
            list.push(p);
        }
        std::fs::write(dir.path().join("index.ldif"), ldif).unwrap();
        let d = dir.path().display();
        let path = pki::config(
            dir.path(),
            &format!("[inject]\nendpoint = \"inet:{inject}\"\n[limits]\nspool_dir = \"{d}/spool\"\n{extra}"),
        );
        let config = Config::load(&path).unwrap();
        let engine = Engine::load(&config).unwrap();
        let url = format!("sqlite:{d}/registry.db");
        let store = Store::open(&url).await.unwrap();
        let shared = Arc::new(Shared::new(config, engine, store, path));
        let (workers_stop, workers_stopped) = tokio::sync::watch::channel(false);
        let _workers = spawn_workers(&shared, workers_stopped);
        let handle = shared.clone();
        std::mem::forget(workers_stop);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_milter(listener, shared, stopped));
        let store = Store::open(&url).await.unwrap();
        Milter { addr, stop: Some(stop), task, injected, dir, others: list, store, shared: handle }
    }

    /// A connection on the listener named `daemon` (PEC-ACCESSO, PEC-RICEZIONE…).
    pub async fn session(&self, daemon: &str) -> TestConnection {
        self.session_with(TestConnection::configure(), daemon).await
    }

    pub async fn session_with(&self, builder: indymilter_test::TestConnectionBuilder, daemon: &str) -> TestConnection {
        let mut c = builder.open_tcp(self.addr).await.unwrap();
        c.macros(MacroStage::Connect, [("{daemon_name}", daemon)]).await.unwrap();
        let st = c.connect("mx.example", [127, 0, 0, 1]).await.unwrap();
        assert_eq!(st, Status::Continue);
        c
    }

    /// Waits until `n` messages reached the fake injection listener (at most 10 s).
    pub async fn injected(&self, n: usize) -> Vec<(Vec<String>, String)> {
        for _ in 0..200 {
            if self.injected.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.injected.lock().unwrap().clone()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Plays a whole transaction: MAIL, RCPTs, each header of `raw` and its body, end of data
/// with queue id `queue_id`. Returns the actions and the final status.
pub async fn transaction(
    c: &mut TestConnection,
    login: Option<&str>,
    from: &str,
    rcpts: &[&str],
    raw: &[u8],
    queue_id: &str,
) -> (indymilter_test::EomActions, Status) {
    if let Some(l) = login {
        c.macros(MacroStage::Mail, [("{auth_authen}", l)]).await.unwrap();
    }
    let st = c.mail([format!("<{from}>")]).await.unwrap();
    assert_eq!(st, Status::Continue, "MAIL");
    for r in rcpts {
        let st = c.rcpt([format!("<{r}>")]).await.unwrap();
        assert_eq!(st, Status::Continue, "RCPT {r}");
    }
    c.macros(MacroStage::Data, [("i", queue_id)]).await.unwrap();
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().unwrap();
            last.1.push('\n');
            last.1.push_str(line);
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.to_string(), v.to_string()));
        }
    }
    for (n, v) in &fields {
        c.header(n.as_str(), v.as_str()).await.unwrap();
    }
    c.body(body.replace('\n', "\r\n")).await.unwrap();
    c.macros(MacroStage::Eom, [("i", queue_id)]).await.unwrap();
    c.eom().await.unwrap()
}
