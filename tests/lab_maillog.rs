//! Issue 19 / decisions.md 18 on a fresh install: a lab provider whose Postfix starts from
//! Debian 12's stock main.cf and master.cf, with no syslog daemon (nothing on this machine
//! listens on /dev/log, as on a stock Debian 12 that logs to the journal only) and pecora's
//! shipped `[postfix]` defaults, configured only by `pecora setup postfix --apply`. A
//! message Postfix refuses after pecora's milter said yes earns no ricevuta di
//! accettazione; a normal one earns exactly one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "common/cli.rs"]
mod cli;
#[path = "common/lab.rs"]
mod lab;
use cli::said;
use lab::{Lab, REPO, subject};

fn pecora(config: &Path) -> Command {
    let mut c = cli::pecora();
    c.arg("--config").arg(config);
    c
}

/// `pecora doctor`'s line for the acceptance hold (other groups skipped: the lab is no
/// packaged host).
fn doctor_hold(config: &Path, pf: &Path) -> String {
    let o = pecora(config)
        .args(["doctor", "--postfix-dir"])
        .arg(pf)
        .args(["--skip", "keys", "--skip", "index", "--skip", "registry", "--skip", "milter", "--skip", "dovecot", "--skip", "clock"])
        .output()
        .unwrap();
    let report = said(&o);
    let mut lines = report.lines();
    let mut out = String::new();
    while let Some(l) = lines.next() {
        if l.contains("] hold ") {
            out.push_str(l);
            out.push('\n');
            if let Some(fix) = lines.clone().next().filter(|f| f.trim_start().starts_with("fix:")) {
                out.push_str(fix);
                out.push('\n');
            }
        }
    }
    assert!(!out.is_empty(), "no hold finding in\n{report}");
    out
}

#[test]
fn a_stock_debian_postfix_configured_by_setup_holds_acceptance_until_queued() {
    let lab = Lab::up();
    let (alpha, gamma) = (lab.alpha(), lab.gamma());
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let paolo = gamma["users"][0]["address"].as_str().unwrap();
    let pf = Lab::path(&alpha["postfix_dir"]);
    let d = Lab::path(&alpha["dir"]);
    let config = Lab::path(&alpha["config_file"]);
    let postconf = |args: &[&str]| lab.postfix_tool(alpha, "postconf", args).trim().to_string();

    // ---- Debian 12's stock Postfix configuration. The lab keeps only what makes it an
    // instance on loopback (its own queue, host name, routing to beta and gamma); it has no
    // chroot jail, and port 25 is not its to take.
    let instance: Vec<String> = [
        "queue_directory", "data_directory", "mail_owner", "setgid_group", "myhostname", "mydomain",
        "mydestination", "inet_interfaces", "inet_protocols", "mynetworks", "multi_instance_directories",
        "alias_maps", "alias_database", "transport_maps", "smtpd_relay_restrictions",
    ]
    .iter()
    .map(|k| format!("{k} = {}", postconf(&["-h", k])))
    .collect();
    lab.postfix_tool(alpha, "postfix", &["stop"]);
    lab.stop_pecora(alpha);
    let stock_main = std::fs::read_to_string("/usr/share/postfix/main.cf.debian").expect("Debian's main.cf");
    std::fs::write(pf.join("main.cf"), format!("{stock_main}\n# pecora lab: this instance on loopback.\n{}\n", instance.join("\n"))).unwrap();
    let stock_master = std::fs::read_to_string("/usr/share/postfix/master.cf.dist").unwrap();
    let master: Vec<&str> = stock_master.lines().filter(|l| !l.starts_with("smtp      inet")).collect();
    std::fs::write(pf.join("master.cf"), master.join("\n") + "\n").unwrap();
    postconf(&["-F", "*/*/chroot = n"]);
    assert_eq!(postconf(&["-h", "maillog_file"]), "", "stock: Postfix logs through syslog");
    // A site policy that refuses some messages after every milter ran: cleanup inspects the
    // headers pecora's milter writes with milter_header_checks.
    // Another holds some for review: Postfix keeps them in its hold queue.
    std::fs::write(
        pf.join("after_milter"),
        "/^Subject: POSTA CERTIFICATA: Rifiutato dopo il milter/ REJECT refused by site policy\n\
         /^Subject: POSTA CERTIFICATA: Trattenuto/ HOLD held for review\n",
    )
    .unwrap();
    postconf(&["-e", &format!("milter_header_checks = regexp:{}", pf.join("after_milter").display())]);
    // pecora.toml with the shipped [postfix] defaults: no mail log named.
    let toml = std::fs::read_to_string(&config).unwrap();
    let lab_line = format!("maillog = \"{}\"", d.join("maillog").display());
    assert!(toml.contains(&lab_line), "{toml}");
    std::fs::write(&config, toml.replace(&lab_line, "#maillog = \"/var/log/mail.log\"")).unwrap();
    lab.postfix_tool(alpha, "postfix", &["start"]);
    lab.start_pecora(alpha);

    // As installed: the hold is off, and doctor says so with the fix.
    let hold = doctor_hold(&config, &pf);
    assert!(hold.starts_with("[FAIL] hold     [postfix] maillog is not set: the acceptance hold is off"), "{hold}");
    assert!(hold.contains("fix: pecora setup postfix --apply"), "{hold}");

    // ---- `pecora setup postfix --apply`, then `postfix reload` and a pecora reload, as it
    // says. The log goes under /var (in Postfix's default maillog_file_prefixes) in a
    // directory of this test's own rather than the default /var/log/postfix.log.
    let logdir = tempfile::Builder::new().prefix("pecora-maillog").tempdir_in("/var/tmp").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(logdir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let maillog: PathBuf = logdir.path().join("postfix.log");
    let rules = logdir.path().join("logrotate.d");
    std::fs::create_dir(&rules).unwrap();
    let rule = rules.join("pecora-postfix-log");
    let ca = Lab::path(&alpha["ca_file"]);
    let dc = d.join("dovecot");
    let port = |k: &str| format!("127.0.0.1:{}", alpha[k]);
    let o = pecora(&config)
        .args(["setup", "postfix", "--apply", "--fragments", REPO, "--postfix-dir"])
        .arg(&pf)
        .arg("--maillog-file")
        .arg(&maillog)
        .arg("--logrotate")
        .arg(&rule)
        .args(["--mx", &port("smtp_port"), "--submission", &port("submission_port"), "--smtps", &port("smtps_port")])
        .args(["--milter", "unix:pecora/milter.sock"])
        .arg("--mailbox-map")
        .arg(format!("texthash:{}", pf.join("vmailbox").display()))
        .arg("--tls-cert")
        .arg(Lab::path(&alpha["tls_cert"]))
        .arg("--tls-key")
        .arg(Lab::path(&alpha["tls_key"]))
        .arg("--tls-ca")
        .arg(&ca)
        .arg("--tls-policy-map")
        .arg(format!("pipemap:{{texthash:{}, texthash:{}}}", pf.join("tls_nexthops").display(), Lab::path(&alpha["tls_policy_map"]).display()))
        .arg("--dovecot-auth")
        .arg(dc.join("auth-client"))
        .arg("--dovecot-lmtp")
        .arg(dc.join("lmtp"))
        .output()
        .unwrap();
    let report = said(&o);
    assert_eq!(o.status.code(), Some(0), "{report}");
    assert!(report.contains(&format!("changed: main.cf: maillog_file = {} (was empty)", maillog.display())), "{report}");
    assert!(report.contains(&format!("changed: {}: [postfix] maillog = {}", config.display(), maillog.display())), "{report}");
    assert_eq!(postconf(&["-h", "maillog_file"]), maillog.display().to_string());
    lab.postfix_tool(alpha, "postfix", &["reload"]);
    lab.reload_pecora(alpha);

    // ---- One message the site policy refuses after pecora signed it, one it lets through.
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Rifiutato dopo il milter")], "no");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{transcript}");
    assert!(transcript.contains("refused by site policy"), "{}", &transcript[transcript.len().saturating_sub(1500)..]);
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Accodato")], "si");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let user = &alpha["users"][0];
    lab.wait_for(alpha, user, "imaps", |m| !m.is_empty());
    // Time for a wrongly released second receipt to arrive too.
    std::thread::sleep(Duration::from_secs(4));
    let subjects: Vec<String> = lab.fetch(alpha, user, "imaps").iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, vec!["ACCETTAZIONE: Accodato"], "pecora log:\n{}", Lab::log(&Lab::path(&alpha["pecora_log"])));

    // pecora did accept (sign) the refused one: its receipt was held, then cancelled, and the
    // registry says why.
    let db = Lab::path(&alpha["registry"]["path_or_url"]);
    let rows = Command::new("sqlite3").arg(&db).arg("SELECT kind || ':' || status FROM outbox_messages WHERE kind = 'accettazione' ORDER BY id").output().unwrap();
    let rows = String::from_utf8_lossy(&rows.stdout).into_owned();
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["accettazione:cancelled", "accettazione:sent"], "{rows}\n{}", Lab::log(&maillog));
    let log = pecora(&config).args(["log", "search", "--json"]).output().unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("Postfix did not queue the accepted message"), "{log}");

    // Postfix's own log, written by postlogd with no syslog daemon, is what decided.
    let text = Lab::log(&maillog);
    assert!(text.contains("postfix/qmgr[") && text.contains("refused by site policy"), "{text}");
    let hold = doctor_hold(&config, &pf);
    assert!(hold.starts_with(&format!("[ok  ] hold     acceptance receipts wait for Postfix's own log {}", maillog.display())), "{hold}");

    // ---- Rotation by the logrotate rule setup wrote (postlogd alone would make the new
    // file 0600 root): the new file is one pecora's group reads, and the hold goes on.
    assert!(report.contains(&format!("written: {}", rule.display())), "{report}");
    let out = Command::new("logrotate").arg("-f").arg("-s").arg(logdir.path().join("state")).arg(&rule).output().expect("logrotate");
    assert!(out.status.success(), "logrotate: {}", said(&out));
    let rotated: Vec<String> = std::fs::read_dir(logdir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(rotated.iter().any(|n| n == "postfix.log.1"), "{rotated:?}");
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&maillog).unwrap().mode() & 0o777, 0o640);
    }
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Dopo la rotazione")], "si");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, user, "imaps", |m| m.len() >= 2);
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects, vec!["ACCETTAZIONE: Accodato", "ACCETTAZIONE: Dopo la rotazione"], "pecora log:\n{}", Lab::log(&Lab::path(&alpha["pecora_log"])));
    assert!(Lab::log(&maillog).contains("postfix/qmgr["), "Postfix writes the new file after its reload");
    let hold = doctor_hold(&config, &pf);
    assert!(hold.starts_with("[ok  ] hold "), "{hold}");

    // ---- A message the site policy holds for review: cleanup logs the HOLD while it still
    // receives the message, qmgr never logs it, and it waits in the hold queue. Postfix has
    // it, so its acceptance goes out (the queue, not the log line, says it was committed).
    let out = lab.send(alpha, "starttls", 0, mario, &[paolo], &[("Subject", "Trattenuto")], "si");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let msgs = lab.wait_for(alpha, user, "imaps", |m| m.len() >= 3);
    let subjects: Vec<String> = msgs.iter().map(|m| subject(m)).collect();
    assert_eq!(subjects.get(2).map(String::as_str), Some("ACCETTAZIONE: Trattenuto"), "pecora log:\n{}", Lab::log(&Lab::path(&alpha["pecora_log"])));
    let queue = lab.postfix_tool(alpha, "postqueue", &["-j"]);
    assert!(queue.contains(r#""queue_name": "hold""#), "{queue}");
    assert!(Lab::log(&maillog).contains("milter-header-hold:"), "{}", Lab::log(&maillog));
    assert!(Lab::log(&Lab::path(&alpha["pecora_log"])).contains("Postfix holds the message in its queue"));
    lab.postfix_tool(alpha, "postsuper", &["-d", "ALL", "hold"]);
}
