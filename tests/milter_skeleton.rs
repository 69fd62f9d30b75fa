//! The milter on the protocol level (indymilter-test as the MTA): role placement from the
//! listener's daemon name, fail-closed behaviour, and whole-message collection.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use indymilter_test::{MacroStage, Status, TestConnection};
use pecora::config::Config;
use pecora::serve::{Shared, run_milter};

fn config(dir: &Path) -> Config {
    for f in ["cert.pem", "index.ldif"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    std::fs::write(dir.join("key.pem"), "x").unwrap();
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let d = dir.display();
    let text = format!(
        "[provider]\nname = \"Alpha\"\ndomains = [\"pec.alpha.test\"]\n\
         [keys]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n\
         [index]\nfile = \"{d}/index.ldif\"\n\
         [limits]\nspool_dir = \"{d}/spool\"\nspool_threshold = 64\n"
    );
    let path = dir.join("pecora.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

struct Milter {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Milter {
    async fn start() -> Milter {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let shared = Arc::new(Shared::new(config, dir.path().join("pecora.toml")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_milter(listener, shared, stopped));
        Milter { addr, stop: Some(stop), task, _dir: dir }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

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
async fn access_point_collects_a_large_message_and_answers() {
    let milter = Milter::start().await;
    let mut c = TestConnection::open(milter.addr).await.unwrap();
    c.macros(MacroStage::Connect, [("{daemon_name}", "PEC-ACCESSO")]).await.unwrap();
    assert_eq!(c.connect("mua.example", [127, 0, 0, 1]).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Mail, [("{auth_authen}", "alice@pec.alpha.test")]).await.unwrap();
    assert_eq!(c.mail(["<alice@pec.alpha.test>"]).await.unwrap(), Status::Continue);
    assert_eq!(c.rcpt(["<bob@pec.beta.test>"]).await.unwrap(), Status::Continue);
    c.macros(MacroStage::Data, [("i", "4XyZ1")]).await.unwrap();
    assert_eq!(c.header("From", "alice@pec.alpha.test").await.unwrap(), Status::Continue);
    // Larger than the 64-byte spool threshold: goes to disk and still completes.
    let body = "line of text\r\n".repeat(10_000);
    assert_eq!(c.body(body).await.unwrap(), Status::Continue);
    let (actions, status) = c.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    c.close().await.unwrap();
    milter.shutdown().await;
}
