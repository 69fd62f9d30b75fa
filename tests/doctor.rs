//! `pecora doctor` against scratch setups: a complete one (the Postfix and Dovecot fragments
//! applied by `pecora setup` to scratch directories, a registry with a signed checkpoint, an
//! index listing our certificate) passes with warnings only; each broken piece is a
//! failure naming its fix; configuration errors are findings and the other checks go on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pecora::store::{NewEvent, Store};

#[path = "common/cli.rs"]
mod cli;
#[path = "common/pki.rs"]
mod pki;
use cli::{pecora, said};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");


fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", said(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scratch PEC host in `d`: keys, an index listing our certificate, pecora.toml, a
/// registry with a checkpoint, Postfix and Dovecot configured by `pecora setup`.
struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
    postfix: PathBuf,
    dovecot: PathBuf,
    /// Keeps the milter socket answering.
    milter: Option<std::os::unix::net::UnixListener>,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        pki::provider(&d);
        let der = openssl::x509::X509::from_pem(&std::fs::read(d.join("cert.pem")).unwrap())
            .unwrap()
            .to_der()
            .unwrap();
        let index = format!(
            "dn: o=postacert\no: postacert\n\n{}\n{}",
            pecora::pec::incoming::ldif_entry(
                "Alpha PEC",
                &[&der],
                "servizio@pec.alpha.test",
                &["pec.alpha.test"]
            ),
            pecora::pec::incoming::ldif_entry(
                "Beta PEC",
                &[b"not our certificate"],
                "servizio@pec.beta.test",
                &["pec.beta.test"]
            ),
        );
        std::fs::write(d.join("index.ldif"), index).unwrap();
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        // Run as root, doctor checks the directory for the daemon's user `pecora` when that
        // user exists (the package leaves it behind on purge): give it the directory.
        if Command::new("getent")
            .args(["passwd", "pecora"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            ok(Command::new("chown")
                .arg("pecora:")
                .arg(d.join("checkpoints")));
        }
        let config = pki::config(
            &d,
            &format!(
                "[listen]\nmilter = \"unix:{0}/queue/pecora/milter.sock\"\ndelivery_spool = \"{0}/delivered\"\n\
                 [store]\nurl = \"sqlite:{0}/registry.db\"\ncheckpoint_dir = \"{0}/checkpoints\"\n\
                 [inject]\nendpoint = \"unix:{0}/queue/public/pecora-inject\"\n\
                 [delivery]\ndoveadm_socket = \"{0}/pecora-doveadm\"\n",
                d.display()
            ),
        );

        // The index installed as `index update` does, with its TLS policy map beside it.
        ok(pecora()
            .arg("--config")
            .arg(&config)
            .args(["index", "update", "--no-reload", "--url"])
            .arg(format!("file://{}/index.ldif", d.display())));
        assert!(d.join("index.ldif.tls_policy").is_file());

        // The registry: three rows, a signed checkpoint (also exported), one more row.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = Store::open(&format!("sqlite:{}/registry.db", d.display()))
                .await
                .unwrap()
                .with_host("t1");
            let at =
                chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
            let event = |subject: &str| NewEvent {
                subject: Some(subject.into()),
                sender: Some("mario@pec.alpha.test".into()),
                ..NewEvent::new(at, pecora::store::EventType::Acceptance)
            };
            for s in ["one", "two", "three"] {
                store.append(event(s), chrono::Utc::now()).await.unwrap();
            }
            let signer = pecora::pec::sign::Signer::from_pem(
                &std::fs::read(d.join("cert.pem")).unwrap(),
                &std::fs::read(d.join("key.pem")).unwrap(),
                None,
            )
            .unwrap();
            store
                .checkpoint(&signer, chrono::Utc::now(), Some(&d.join("checkpoints")))
                .await
                .unwrap();
            store
                .append(event("four"), chrono::Utc::now())
                .await
                .unwrap();
        });

        // Postfix and Dovecot, from the shipped fragments.
        let postfix = d.join("postfix");
        std::fs::create_dir_all(&postfix).unwrap();
        let master = [
            "/etc/postfix/master.cf",
            "/usr/share/postfix/master.cf.dist",
        ]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("Postfix is not installed (tests/run installs it)");
        std::fs::copy(master, postfix.join("master.cf")).unwrap();
        // The packaged layout: the milter socket in the queue directory, which setup
        // turns into the name Postfix uses (relative to it, as chrooted daemons need).
        std::fs::create_dir_all(d.join("queue")).unwrap();
        std::fs::write(
            postfix.join("main.cf"),
            format!("compatibility_level = 3.6\nqueue_directory = {}/queue\n", d.display()),
        )
        .unwrap();
        let tls = |c: &mut Command| -> String {
            ok(c.arg("--tls-cert")
                .arg(d.join("cert.pem"))
                .arg("--tls-key")
                .arg(d.join("key.pem")))
        };
        tls(pecora()
            .arg("--config")
            .arg(&config)
            .args([
                "setup",
                "postfix",
                "--apply",
                "--fragments",
                ROOT,
                "--mailbox-map",
                "hash:/etc/postfix/pec-mailboxes",
                "--maillog-file",
            ])
            .arg(d.join("maillog"))
            .arg("--logrotate")
            .arg(d.join("no-logrotate.d/rule"))
            .arg("--postfix-dir")
            .arg(&postfix));
        // What postlogd would have written by now (setup set maillog_file, and pecora.toml
        // to match).
        std::fs::write(d.join("maillog"), "").unwrap();
        let dovecot = d.join("dovecot");
        std::fs::create_dir_all(dovecot.join("conf.d")).unwrap();
        std::fs::write(
            dovecot.join("dovecot.conf"),
            format!(
                "base_dir = {0}/run\nstate_dir = {0}/state\n!include conf.d/*.conf\n",
                dovecot.display()
            ),
        )
        .unwrap();
        tls(pecora()
            .arg("--config")
            .arg(&config)
            .args([
                "setup",
                "dovecot",
                "--apply",
                "--fragments",
                ROOT,
                "--dovecot-dir",
            ])
            .arg(&dovecot));

        // setup --apply made the socket's directory: set-group-id of Postfix's group.
        let postfix_gid: u32 = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("postfix:").and_then(|r| r.split(':').nth(1)).and_then(|g| g.parse().ok()))
            .expect("a postfix group");
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let sock_dir = std::fs::metadata(d.join("queue/pecora")).expect("setup --apply makes the socket directory");
        assert_eq!((sock_dir.mode() & 0o7777, sock_dir.gid()), (0o2750, postfix_gid));
        // The rest of the path is traversable, as /var/spool/postfix is.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let milter = Some(std::os::unix::net::UnixListener::bind(d.join("queue/pecora/milter.sock")).unwrap());
        // As pecora does: the socket 0660 (its group comes from the directory).
        std::fs::set_permissions(d.join("queue/pecora/milter.sock"), std::fs::Permissions::from_mode(0o660)).unwrap();
        // Dovecot's doveadm listener for pecora: 0600, pecora's, greeting without a password.
        let doveadm = std::os::unix::net::UnixListener::bind(d.join("pecora-doveadm")).unwrap();
        std::fs::set_permissions(d.join("pecora-doveadm"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if Command::new("getent").args(["passwd", "pecora"]).output().is_ok_and(|o| o.status.success()) {
            ok(Command::new("chown").arg("pecora:").arg(d.join("pecora-doveadm")));
        }
        std::thread::spawn(move || {
            // As Dovecot does: the handshake at once, then the client's VERSION line.
            for mut conn in doveadm.incoming().flatten() {
                use std::io::{BufRead, Write};
                let _ = conn.write_all(b"+\n");
                let mut version = String::new();
                let _ = std::io::BufReader::new(&conn).read_line(&mut version);
            }
        });
        Host {
            dir,
            config,
            postfix,
            dovecot,
            milter,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn doctor(&self) -> Output {
        self.doctor_with(&self.config)
    }

    fn doctor_with(&self, config: &Path) -> Output {
        pecora()
            .arg("--config")
            .arg(config)
            .args(["doctor", "--skip", "clock", "--postfix-dir"])
            .arg(&self.postfix)
            .arg("--dovecot-config")
            .arg(self.dovecot.join("dovecot.conf"))
            .output()
            .unwrap()
    }

    fn postconf(&self, args: &[&str]) {
        ok(Command::new("postconf")
            .arg("-c")
            .arg(&self.postfix)
            .args(args));
    }
}

/// Asserts the report has a line starting with `tag` and `check` that contains `text`.
fn has(report: &str, tag: &str, check: &str, text: &str) {
    let prefix = format!("[{tag:<4}] {check:<8} ");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(text)),
        "no `{prefix}…{text}…` line in\n{report}"
    );
}

fn fails(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("[FAIL]")).collect()
}

#[test]
fn a_complete_scratch_setup_passes_with_warnings_only() {
    let host = Host::new();
    let o = host.doctor();
    let report = said(&o);
    assert_eq!(o.status.code(), Some(0), "{report}");
    assert!(fails(&report).is_empty(), "{report}");
    has(&report, "ok", "config", "is valid");
    has(&report, "ok", "keys", "signing key and certificate match");
    has(&report, "ok", "index", "updated 0 hours ago");
    has(&report, "ok", "index", "loads: 2 provider entries");
    has(
        &report,
        "ok",
        "index",
        "pec.alpha.test is listed under `Alpha PEC` with our certificate (SHA-1 ",
    );
    has(
        &report,
        "WARN",
        "trust",
        "no index.ca_bundle and no index.crls",
    );
    has(
        &report,
        "ok",
        "registry",
        "the registry chain verifies: 4 rows, 1 signed checkpoint(s), 1 row(s) after the last one",
    );
    has(&report, "ok", "registry", "checkpoints are exported to");
    has(&report, "ok", "milter", "pecora answers on unix:");
    has(&report, "ok", "postfix", "milter_default_action = tempfail");
    has(
        &report,
        "ok",
        "postfix",
        "non_smtpd_milters includes pecora",
    );
    has(
        &report,
        "ok",
        "postfix",
        "internal_mail_filter_classes includes bounce",
    );
    has(
        &report,
        "ok",
        "postfix",
        "milter_macro_daemon_name = PEC-INTERNO",
    );
    has(&report, "ok", "postfix", "2 access-point listener(s)");
    has(&report, "ok", "tls", "requires TLS (encrypt) for all 1 domains of other providers");
    has(&report, "ok", "postfix", "smtp_tls_policy_maps includes");
    has(
        &report,
        "ok",
        "postfix",
        "injection listener pecora-inject runs no milter",
    );
    has(
        &report,
        "ok",
        "dovecot",
        "no Sieve on LMTP or LDA deliveries",
    );
    has(&report, "ok", "dovecot", "delivery hook loaded for LMTP");
    has(&report, "ok", "dovecot", "Dovecot's doveadm server answers pecora on");
    has(&report, "ok", "milter", "only Postfix (and root) can reach the milter socket");
    assert!(
        !report.contains("[ok  ] clock") && !report.contains("[WARN] clock"),
        "--skip clock: {report}"
    );

    // A milter socket every local user may use: anyone could claim any login.
    {
        use std::os::unix::fs::PermissionsExt;
        let sock = host.path("queue/pecora/milter.sock");
        let dir = sock.parent().unwrap().to_path_buf();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let report = said(&host.doctor());
        has(&report, "FAIL", "milter", "every local user can connect to");
        // And one Postfix cannot reach.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
        let report = said(&host.doctor());
        has(&report, "FAIL", "milter", "Postfix (user postfix) cannot connect to");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
    }

    // Postfix names the socket by its absolute path: the stock cleanup runs chrooted in
    // the queue directory and would look for it inside the queue directory.
    assert!(report.contains("non_smtpd_milters includes pecora (unix:pecora/milter.sock)"), "{report}");
    let absolute = format!("non_smtpd_milters=unix:{}", host.path("queue/pecora/milter.sock").display());
    host.postconf(&["-e", &absolute]);
    let report = said(&host.doctor());
    has(&report, "FAIL", "postfix", "cleanup/unix runs chrooted in");
    assert!(report.contains("fix: name the socket relative to the queue directory: unix:pecora/milter.sock"), "{report}");
    // Unchrooted, the absolute path works too.
    host.postconf(&["-F", "cleanup/unix/chroot=n"]);
    let report = said(&host.doctor());
    assert!(!report.contains("runs chrooted in"), "{report}");
    host.postconf(&["-F", "cleanup/unix/chroot=y"]);
    host.postconf(&["-e", "non_smtpd_milters=unix:pecora/milter.sock"]);

    // The delivery spool: not there before pecora serve first runs; then what the daemon
    // set aside, and what nobody processed, are warnings.
    has(&report, "WARN", "dovecot", "does not exist yet");
    for sub in ["tmp", "new", "bad"] {
        std::fs::create_dir_all(host.path("delivered").join(sub)).unwrap();
    }
    has(&said(&host.doctor()), "ok", "dovecot", "nothing waiting, nothing set aside");
    std::fs::write(host.path("delivered/bad/1700000000.7.x~y"), "version=1\n").unwrap();
    std::fs::write(host.path("delivered/new/1700000000.8.x~z"), "version=1\n").unwrap();
    let o = host.doctor();
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    has(&said(&o), "WARN", "dovecot", "1 delivery event(s) set aside in");
    assert!(!said(&o).contains("waiting in"), "a fresh event is not stale: {}", said(&o));
    assert!(Command::new("touch").args(["-d", "20 minutes ago"]).arg(host.path("delivered/new/1700000000.8.x~z")).status().unwrap().success());
    has(&said(&host.doctor()), "WARN", "dovecot", "1 delivery event(s) waiting in");
    std::fs::remove_dir_all(host.path("delivered")).unwrap();

    // A stale index: a warning after 7 days, a failure after 30.
    let touch = |age: &str| {
        assert!(
            Command::new("touch")
                .args(["-d", age])
                .arg(host.path("index.ldif"))
                .status()
                .unwrap()
                .success()
        )
    };
    touch("10 days ago");
    let o = host.doctor();
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    has(&said(&o), "WARN", "index", "was last updated 10 days ago");
    touch("40 days ago");
    let o = host.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    has(&said(&o), "FAIL", "index", "was last updated 40 days ago");
    assert_eq!(fails(&said(&o)).len(), 1, "{}", said(&o));
}

/// decisions.md 18: doctor fails when the acceptance hold is off or its log is not the one
/// Postfix writes, missing or stale, and warns about a log a syslog daemon writes.
#[test]
fn the_acceptance_hold_and_its_log_are_checked() {
    let host = Host::new();
    let log = host.path("maillog");
    let report = said(&host.doctor());
    has(&report, "ok", "hold", &format!("acceptance receipts wait for Postfix's own log {}", log.display()));
    let text = std::fs::read_to_string(&host.config).unwrap();
    // setup wrote the log and the instance (--postfix-dir) into [postfix].
    assert!(
        text.contains(&format!("[postfix]\nconfig_dir = \"{}\"\nmaillog = \"{}\"", host.postfix.display(), log.display())),
        "{text}"
    );

    // The hold off: a fresh pecora.toml without [postfix] maillog.
    let off = host.path("off.toml");
    std::fs::write(&off, text.replace(&format!("maillog = \"{}\"", log.display()), "")).unwrap();
    let o = host.doctor_with(&off);
    let report = said(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    has(&report, "FAIL", "hold", "[postfix] maillog is not set: the acceptance hold is off");
    assert!(report.contains("fix: pecora setup postfix --apply"), "{report}");

    // pecora reads another file than the one Postfix writes.
    let other = host.path("other.toml");
    std::fs::write(&other, text.replace(&format!("maillog = \"{}\"", log.display()), "maillog = \"/var/log/mail.log\"")).unwrap();
    let report = said(&host.doctor_with(&other));
    has(&report, "FAIL", "hold", &format!("Postfix writes its log to {} (maillog_file), not to [postfix] maillog /var/log/mail.log", log.display()));

    // Missing.
    std::fs::remove_file(&log).unwrap();
    let report = said(&host.doctor());
    has(&report, "FAIL", "hold", "acceptance receipts stay held");
    assert!(report.contains("fix: postfix reload (postlogd creates the file"), "{report}");

    // Stale: Postfix took mail in an hour after the log's last line.
    std::fs::write(&log, "").unwrap();
    std::fs::create_dir_all(host.path("queue/incoming")).unwrap();
    assert!(Command::new("touch").args(["-d", "1 hour ago"]).arg(&log).status().unwrap().success());
    let report = said(&host.doctor());
    has(&report, "FAIL", "hold", "is stale: Postfix handled mail 59 minute(s) after its last line");
    assert!(Command::new("touch").arg(&log).status().unwrap().success());
    let report = said(&host.doctor());
    has(&report, "ok", "hold", "Postfix's own log");

    // Unreadable by the daemon's user (checked for user pecora when it exists; root reads
    // anything): postlogd's own 0600 root, as after `postfix logrotate`.
    if Command::new("getent").args(["passwd", "pecora"]).output().is_ok_and(|o| o.status.success()) {
        use std::os::unix::fs::PermissionsExt;
        ok(Command::new("chown").arg("root:root").arg(&log));
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).unwrap();
        let report = said(&host.doctor());
        has(&report, "FAIL", "hold", "the pecora user cannot read [postfix] maillog");
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // Postfix logs through syslog, and pecora reads that file: it works, with a warning.
    host.postconf(&["-X", "maillog_file"]);
    let o = host.doctor();
    let report = said(&o);
    has(&report, "WARN", "hold", "is written by a syslog daemon: any local user can add lines to it");
    assert!(report.contains("--maillog-file /var/log/postfix.log"), "{report}");
    assert!(!report.lines().any(|l| l.starts_with("[FAIL] hold")), "{report}");
}

#[test]
fn each_broken_piece_is_a_failure_with_its_fix() {
    let mut host = Host::new();
    let d = host.dir.path().to_path_buf();

    // The index lists our domain with another certificate.
    std::fs::write(
        host.path("index.ldif"),
        format!(
            "dn: o=postacert\no: postacert\n\n{}",
            pecora::pec::incoming::ldif_entry(
                "Alpha PEC",
                &[b"old certificate"],
                "s@pec.alpha.test",
                &["pec.alpha.test"]
            )
        ),
    )
    .unwrap();
    // A registry row changed behind pecora's back.
    let db = rusqlite::Connection::open(host.path("registry.db")).unwrap();
    assert_eq!(
        db.execute(
            "UPDATE registry_events SET subject = 'forged' WHERE seq = 2",
            []
        )
        .unwrap(),
        1
    );
    drop(db);
    // The checkpoint directory is a file.
    std::fs::remove_dir_all(host.path("checkpoints")).unwrap();
    std::fs::write(host.path("checkpoints"), "").unwrap();
    // Sieve on LMTP deliveries.
    let conf = host.dovecot.join("dovecot.conf");
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf).unwrap()
            + "protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}\n",
    )
    .unwrap();
    // Postfix's own mail bypasses pecora.
    host.postconf(&[
        "-e",
        "non_smtpd_milters=",
        "internal_mail_filter_classes=",
        "milter_macro_daemon_name=$myhostname",
    ]);
    // pecora is not running.
    host.milter = None;
    // Dovecot's listener for pecora open to everyone (and so asking for a password).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(host.path("pecora-doveadm"), std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    let o = host.doctor();
    let report = said(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    has(
        &report,
        "FAIL",
        "index",
        "the index entry `Alpha PEC` for pec.alpha.test does not list it: our signing certificate has SHA-1",
    );
    has(
        &report,
        "FAIL",
        "registry",
        "the registry does not verify (first bad row: 2): row 2 was changed",
    );
    has(&report, "FAIL", "registry", "is not a directory");
    has(
        &report,
        "FAIL",
        "dovecot",
        "Sieve is enabled for lmtp deliveries",
    );
    has(
        &report,
        "FAIL",
        "postfix",
        "non_smtpd_milters = : bounces and re-queued mail do not reach pecora",
    );
    has(
        &report,
        "FAIL",
        "postfix",
        "internal_mail_filter_classes = : Postfix's bounces bypass pecora",
    );
    has(
        &report,
        "FAIL",
        "postfix",
        "milter_macro_daemon_name = $myhostname: pecora cannot tell Postfix's own mail",
    );
    has(&report, "FAIL", "milter", "nothing answers on unix:");
    assert!(
        report.contains("fix: postconf -c ")
            && report.contains("-e internal_mail_filter_classes=bounce"),
        "{report}"
    );
    assert!(
        report.contains("fix: remove sieve from mail_plugins"),
        "{report}"
    );
    has(
        &report,
        "FAIL",
        "dovecot",
        "has mode 666: Dovecot then asks for a password pecora does not hold, and other local users may reach it",
    );
    // The index was replaced by hand, not by `index update`: its TLS policy map is stale.
    has(&report, "FAIL", "tls", "is older than the index");
    assert_eq!(fails(&report).len(), 10, "{report}");

    // An inet milter socket: a warning of its own (the Postfix listeners, which name the
    // unix socket, now fail too).
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace(
            &format!("milter = \"unix:{}/queue/pecora/milter.sock\"", d.display()),
            "milter = \"inet:127.0.0.1:1\"",
        ),
    )
    .unwrap();
    let report = said(&host.doctor());
    has(
        &report,
        "WARN",
        "milter",
        "the milter listens on TCP 127.0.0.1:1: any local user can connect to it",
    );
    has(
        &report,
        "FAIL",
        "postfix",
        "do not include pecora (inet:127.0.0.1:1)",
    );
}

/// decisions.md 22: the TLS policy map is missing, older than the index, short of a
/// provider's domain or weaker than `secure` with a CA bundle, or not read by Postfix.
#[test]
fn a_missing_stale_or_short_tls_policy_map_fails() {
    let host = Host::new();
    let map = host.path("index.ldif.tls_policy");
    let good = std::fs::read_to_string(&map).unwrap();
    assert!(good.lines().any(|l| l == "pec.beta.test encrypt"), "{good}");
    assert!(!good.contains("pec.alpha.test"), "{good}");

    std::fs::remove_file(&map).unwrap();
    let o = host.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    has(&said(&o), "FAIL", "tls", "no TLS policy map");
    assert!(said(&o).contains("fix: pecora index update"), "{}", said(&o));

    // Written before the index last changed.
    std::fs::write(&map, &good).unwrap();
    assert!(Command::new("touch").args(["-d", "1 hour ago"]).arg(&map).status().unwrap().success());
    let o = host.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    has(&said(&o), "FAIL", "tls", "is older than the index");

    // Missing a provider's domain, or asking only `may` for it.
    std::fs::write(&map, "# empty\n").unwrap();
    let o = host.doctor();
    has(&said(&o), "FAIL", "tls", "does not cover 1 domains of other providers: pec.beta.test");
    std::fs::write(&map, "pec.beta.test may\n").unwrap();
    let o = host.doctor();
    has(&said(&o), "FAIL", "tls", "asks less than `encrypt` for pec.beta.test (may)");

    // With a CA bundle for providers' TLS, `encrypt` is not enough.
    std::fs::write(&map, &good).unwrap();
    let text = std::fs::read_to_string(&host.config).unwrap().replace(
        "[index]\n",
        &format!("[index]\ntls_ca_bundle = \"{}\"\n", host.path("cert.pem").display()),
    );
    let with_ca = host.path("with-ca.toml");
    std::fs::write(&with_ca, text).unwrap();
    let o = host.doctor_with(&with_ca);
    has(&said(&o), "FAIL", "tls", "asks less than `secure` for pec.beta.test (encrypt)");
    // index update then writes `secure`, and doctor is content.
    ok(pecora().arg("--config").arg(&with_ca).args(["index", "update", "--no-reload", "--url"])
        .arg(format!("file://{}", host.path("index.ldif").display())));
    assert!(std::fs::read_to_string(&map).unwrap().lines().any(|l| l == "pec.beta.test secure match=pec.beta.test:.pec.beta.test"));
    let o = host.doctor_with(&with_ca);
    has(&said(&o), "ok", "tls", "requires TLS (secure) for all 1 domains");

    // Postfix not reading it.
    host.postconf(&["-e", "smtp_tls_policy_maps="]);
    let o = host.doctor_with(&with_ca);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    has(&said(&o), "FAIL", "postfix", "Postfix does not read");
}

#[test]
fn listeners_without_a_role_smuggling_and_made_up_headers_are_failures() {
    let host = Host::new();
    let report = said(&host.doctor());
    has(&report, "ok", "postfix", "smtpd_forbid_bare_newline is on for every smtpd listener");
    has(&report, "ok", "postfix", "smtpd_forbid_unauth_pipelining is on for every smtpd listener");
    has(&report, "ok", "postfix", "no smtpd listener offers DSN");

    // A listener calling pecora with main.cf's PEC-INTERNO (as behind postscreen, or with a
    // global smtpd_milters): what really happens is said.
    host.postconf(&["-M", "10025/inet=10025 inet n - n - - smtpd"]);
    host.postconf(&["-P", "10025/inet/smtpd_milters=unix:pecora/milter.sock"]);
    // A bare LF accepted on the MX, and loopback exempt everywhere.
    host.postconf(&["-P", "smtp/inet/smtpd_forbid_bare_newline=no"]);
    host.postconf(&["-e", "smtpd_forbid_bare_newline_exclusions=$mynetworks"]);
    // DSN offered on submission: a client's NOTIFY=NEVER would suppress the bounce.
    host.postconf(&["-P", "submission/inet/smtpd_discard_ehlo_keywords=silent-discard"]);
    // Pipelining where SMTP forbids it tolerated on the MX.
    host.postconf(&["-P", "smtp/inet/smtpd_forbid_unauth_pipelining=no"]);
    // Postfix adding a From: to submissions without one.
    host.postconf(&["-P", "submission/inet/local_header_rewrite_clients=permit_inet_interfaces"]);
    // A client that may name any login with XCLIENT on the smtps access listener.
    host.postconf(&["-P", "smtps/inet/smtpd_authorized_xclient_hosts=127.0.0.1"]);
    host.postconf(&["-e", "always_add_missing_headers=yes", "remote_header_rewrite_domain=domain.invalid"]);

    let o = host.doctor();
    let report = said(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    has(
        &report,
        "FAIL",
        "postfix",
        "10025/inet calls pecora with no milter_macro_daemon_name of its own (it inherits main.cf's PEC-INTERNO): PEC-INTERNO is the role of Postfix's own mail, which mail from an SMTP client never gets, so pecora tempfails every message on this listener",
    );
    has(&report, "FAIL", "postfix", "smtp/inet: smtpd_forbid_bare_newline = no: a bare LF ends a line");
    // The MX's fix is the shipped master.cf's: normalize (ordinary mail still arrives).
    assert!(report.contains("-P smtp/inet/smtpd_forbid_bare_newline=normalize"), "{report}");
    has(&report, "WARN", "postfix", "submission/inet: smtpd_forbid_bare_newline_exclusions = $mynetworks");
    has(&report, "FAIL", "postfix", "submission/inet: local_header_rewrite_clients = permit_inet_interfaces: Postfix adds a missing From:");
    assert!(report.contains("-P submission/inet/local_header_rewrite_clients="), "{report}");
    has(&report, "WARN", "postfix", "smtps/inet: smtpd_authorized_xclient_hosts = 127.0.0.1: these clients may name any login with XCLIENT");
    assert!(report.contains("-P smtps/inet/smtpd_authorized_xclient_hosts="), "{report}");
    has(&report, "FAIL", "postfix", "always_add_missing_headers = yes: Postfix adds a From:");
    has(&report, "FAIL", "postfix", "remote_header_rewrite_domain = domain.invalid: Postfix adds a From:");
    assert!(!report.contains("smtpd_forbid_bare_newline is on for every smtpd listener"), "{report}");
    has(&report, "WARN", "postfix", "smtp/inet: smtpd_forbid_unauth_pipelining = no: a client may send commands ahead of the replies");
    has(&report, "FAIL", "postfix", "submission/inet: smtpd_discard_ehlo_keywords = silent-discard: DSN is offered, so a client's NOTIFY=NEVER suppresses the bounce");
    assert!(report.contains("-P submission/inet/smtpd_discard_ehlo_keywords=silent-discard,dsn"), "{report}");
    assert!(!report.contains("no smtpd listener offers DSN"), "{report}");
    assert!(report.contains("-P smtp/inet/smtpd_forbid_unauth_pipelining=yes"), "{report}");
    assert!(!report.contains("smtpd_forbid_unauth_pipelining is on for every smtpd listener"), "{report}");
    assert_eq!(fails(&report).len(), 6, "{report}");
}

#[test]
fn configuration_errors_are_findings_and_the_other_checks_go_on() {
    let host = Host::new();
    let d = host.dir.path();

    // Valid TOML, invalid values: each problem a failure with file, line and key; the
    // checks that can still run do.
    let broken = d.join("broken.toml");
    let text = std::fs::read_to_string(&host.config).unwrap().replace(
        &format!("private_key = \"{}/key.pem\"", d.display()),
        "private_key = \"/nonexistent/signing.key\"",
    ) + "[limits]\nmax_recipients = 10\n";
    std::fs::write(&broken, &text).unwrap();
    let o = host.doctor_with(&broken);
    let report = said(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    has(&report, "FAIL", "config", &format!("{}:", broken.display()));
    has(
        &report,
        "FAIL",
        "config",
        "key `keys.private_key`: cannot read /nonexistent/signing.key",
    );
    has(
        &report,
        "FAIL",
        "config",
        "key `limits.max_recipients`: the law requires at least 50",
    );
    has(
        &report,
        "ok",
        "index",
        "pec.alpha.test is listed under `Alpha PEC`",
    );
    has(&report, "ok", "registry", "the registry chain verifies");
    has(
        &report,
        "ok",
        "postfix",
        "non_smtpd_milters includes pecora",
    );
    has(&report, "ok", "dovecot", "no Sieve");

    // Not even TOML: the checks that need no pecora.toml still run.
    std::fs::write(&broken, "[provider\nname = 1\n").unwrap();
    let o = host.doctor_with(&broken);
    let report = said(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    has(
        &report,
        "FAIL",
        "config",
        &format!("{}:1", broken.display()),
    );
    has(&report, "ok", "postfix", "milter_default_action = tempfail");
    has(
        &report,
        "WARN",
        "postfix",
        "listeners and milter sockets not checked",
    );
    has(&report, "ok", "dovecot", "no Sieve");
    assert!(
        !report.contains(" index ") && !report.contains(" registry "),
        "{report}"
    );

    // No file at all.
    let o = host.doctor_with(&d.join("missing.toml"));
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    has(&said(&o), "FAIL", "config", "cannot read");
    has(
        &said(&o),
        "ok",
        "postfix",
        "milter_default_action = tempfail",
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["doctor", "--postfix-dir", "/nonexistent/postfix"][..],
        &["doctor", "--dovecot-config", "/nonexistent/dovecot.conf"][..],
        &["doctor", "--skip", "everything"][..],
    ] {
        let o = pecora()
            .args(["--config", "/nonexistent.toml"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", said(&o));
    }
}

/// The clock check asks timedatectl, then chrony, and says which answered: run with a PATH
/// holding only stand-ins for those two tools (each checks it was asked the right question),
/// every other check skipped.
#[test]
fn the_clock_check_reads_timedatectl_then_chrony() {
    use std::os::unix::fs::PermissionsExt;
    let case = |timedatectl: Option<&str>, chronyc: Option<&str>| -> String {
        let bin = tempfile::tempdir().unwrap();
        for (name, script) in [("timedatectl", timedatectl), ("chronyc", chronyc)] {
            if let Some(script) = script {
                let p = bin.path().join(name);
                std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let o = pecora()
            .env("PATH", bin.path())
            .args(["--config", "/nonexistent.toml", "doctor"])
            .args(["--skip", "keys", "--skip", "index", "--skip", "registry", "--skip", "milter"])
            .args(["--skip", "postfix", "--skip", "dovecot"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let timedatectl = |answer: &str| {
        format!(
            "[ \"$*\" = 'show -p NTPSynchronized --value' ] || exit 64\n{answer}"
        )
    };
    let chronyc = |leap: &str| format!("[ \"$*\" = tracking ] || exit 64\necho 'Leap status     : {leap}'");
    // No systemd running: timedatectl fails, and chrony answers.
    let no_systemd = "echo 'System has not been booted with systemd' >&2; exit 1";

    let r = case(Some(&timedatectl("echo yes")), None);
    has(&r, "ok", "clock", "synchronised (timedatectl)");
    let r = case(Some(&timedatectl("echo no")), Some(&chronyc("Normal")));
    has(&r, "FAIL", "clock", "not synchronised");
    let r = case(Some(no_systemd), Some(&chronyc("Normal")));
    has(&r, "ok", "clock", "synchronised (chrony)");
    let r = case(Some(no_systemd), Some(&chronyc("Not synchronised")));
    has(&r, "FAIL", "clock", "chrony reports the clock is not synchronised");
    let r = case(None, None);
    has(&r, "WARN", "clock", "cannot tell");
}
