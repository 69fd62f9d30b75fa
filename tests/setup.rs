//! `pecora setup postfix|dovecot|roundcube` against scratch configuration directories: what it prints,
//! what `--apply` changes (read back with `postconf -c DIR` and `doveconf -c FILE`), its
//! backups, and that a failure puts the files back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/cli.rs"]
mod cli;
#[path = "common/pki.rs"]
mod pki;
use cli::{pecora, said};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");


fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A scratch Postfix configuration directory: the system's master.cf (the stock services)
/// and a minimal main.cf.
pub fn scratch_postfix(dir: &Path) -> PathBuf {
    assert!(
        have("postconf") && have("postfix"),
        "Postfix is not installed (tests/run installs it)"
    );
    let pf = dir.join("postfix");
    std::fs::create_dir_all(&pf).unwrap();
    let master = [
        "/etc/postfix/master.cf",
        "/usr/share/postfix/master.cf.dist",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .expect("a stock master.cf");
    std::fs::copy(master, pf.join("master.cf")).unwrap();
    std::fs::write(pf.join("main.cf"), "compatibility_level = 3.6\n").unwrap();
    pf
}

fn postconf(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("postconf")
        .arg("-c")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "postconf {args:?}: {}", said(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn setup(config: &Path, what: &str, args: &[&str]) -> Output {
    pecora()
        .arg("--config")
        .arg(config)
        .args(["setup", what, "--fragments", ROOT])
        .args(args)
        .output()
        .unwrap()
}

fn backups(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{prefix}.pecora-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn postfix_fragments_are_printed_then_applied_to_a_scratch_instance() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let config = pki::config(
        dir.path(),
        "[listen]\nmilter = \"unix:/run/pecora-test/milter.sock\"\n",
    );
    let pf = scratch_postfix(dir.path());
    let pfs = pf.to_str().unwrap();
    let original_main = std::fs::read(pf.join("main.cf")).unwrap();
    let original_master = std::fs::read(pf.join("master.cf")).unwrap();

    // Placeholders without a value: every one named with its option, nothing changed.
    let o = setup(&config, "postfix", &["--postfix-dir", pfs, "--apply"]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    for missing in [
        "@MAILBOX_MAP@ has no value: pass --mailbox-map",
        "@TLS_CERT@ has no value: pass --tls-cert",
        "@TLS_KEY@ has no value: pass --tls-key",
    ] {
        assert!(said(&o).contains(missing), "{missing}: {}", said(&o));
    }
    // pecora.toml filled these.
    assert!(
        !said(&o).contains("@PEC_DOMAINS@") && !said(&o).contains("@MILTER@"),
        "{}",
        said(&o)
    );
    assert_eq!(std::fs::read(pf.join("main.cf")).unwrap(), original_main);

    let tls_cert = format!("{}/tls.pem", dir.path().display());
    let tls_key = format!("{}/tls.key", dir.path().display());
    let tls_policy_map = format!("texthash:{}/index.ldif.tls_policy", dir.path().display());
    let values = [
        "--postfix-dir",
        pfs,
        "--mailbox-map",
        "hash:/etc/postfix/pec-mailboxes",
        "--tls-cert",
        &tls_cert,
        "--tls-key",
        &tls_key,
        "--tls-ca",
        "/etc/ssl/certs/ca-certificates.crt",
    ];

    // Printing changes nothing and shows the postconf commands, with what they replace.
    let o = setup(&config, "postfix", &values);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let script = String::from_utf8_lossy(&o.stdout);
    for line in [
        format!("postconf -c {pfs} -e milter_default_action=tempfail"),
        format!("postconf -c {pfs} -e non_smtpd_milters=unix:/run/pecora-test/milter.sock"),
        format!("postconf -c {pfs} -e maximal_queue_lifetime=1d # now: 5d"),
        format!(
            "postconf -c {pfs} -M -e 'smtp/inet=smtp inet n - n - - smtpd' # now: smtp inet n - y - - smtpd"
        ),
        format!("postconf -c {pfs} -P -e smtp/inet/milter_macro_daemon_name=PEC-RICEZIONE"),
        format!("postconf -c {pfs} -P -e pecora-inject/unix/smtpd_milters="),
    ] {
        assert!(
            script.lines().any(|l| l.starts_with(&line)),
            "missing {line:?} in\n{script}"
        );
    }
    assert_eq!(std::fs::read(pf.join("main.cf")).unwrap(), original_main);
    assert_eq!(
        std::fs::read(pf.join("master.cf")).unwrap(),
        original_master
    );

    // Applying (Postfix's own log in the test's directory, not in /var/log): every change
    // named, backups of both files, Postfix's check passes.
    let own_log = dir.path().join("postfix.log");
    let no_logrotate = dir.path().join("no-logrotate.d/rule");
    let apply = [&values[..], &["--maillog-file", own_log.to_str().unwrap(), "--logrotate", no_logrotate.to_str().unwrap(), "--apply"]].concat();
    let o = setup(&config, "postfix", &apply);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let report = said(&o);
    assert!(
        report.contains("changed: main.cf: maximal_queue_lifetime = 1d (was: 5d)"),
        "{report}"
    );
    assert!(report.contains("changed: master.cf: smtp/inet: smtp inet n - n - - smtpd (was: smtp inet n - y - - smtpd)"), "{report}");
    assert!(
        report.contains(
            "added:   master.cf: submission/inet: -o milter_macro_daemon_name=PEC-ACCESSO"
        ),
        "{report}"
    );
    assert!(report.contains("postfix check passed"), "{report}");
    let main_backups = backups(&pf, "main.cf");
    let master_backups = backups(&pf, "master.cf");
    assert_eq!((main_backups.len(), master_backups.len()), (1, 1));
    assert_eq!(std::fs::read(&main_backups[0]).unwrap(), original_main);
    assert_eq!(std::fs::read(&master_backups[0]).unwrap(), original_master);
    let check = Command::new("postfix")
        .arg("-c")
        .arg(&pf)
        .arg("check")
        .output()
        .unwrap();
    assert!(check.status.success(), "postfix check: {}", said(&check));

    for (param, value) in [
        ("milter_default_action", "tempfail"),
        ("non_smtpd_milters", "unix:/run/pecora-test/milter.sock"),
        ("internal_mail_filter_classes", "bounce"),
        ("milter_macro_daemon_name", "PEC-INTERNO"),
        ("virtual_mailbox_domains", "pec.alpha.test"),
        ("virtual_mailbox_maps", "hash:/etc/postfix/pec-mailboxes"),
        ("smtpd_tls_cert_file", tls_cert.as_str()),
        ("maximal_queue_lifetime", "1d"),
        ("bounce_queue_lifetime", "1d"),
        // SMTP smuggling: a bare LF is refused (the access listeners; the MX normalizes, below),
        // no client exempt.
        ("smtpd_forbid_bare_newline", "reject"),
        ("smtpd_forbid_bare_newline_reject_code", "521"),
        ("smtpd_forbid_bare_newline_exclusions", ""),
        // No DSN: a client's NOTIFY=NEVER would suppress the bounce behind an avviso.
        ("smtpd_discard_ehlo_keywords", "silent-discard, dsn"),
        // decisions.md 21: Postfix makes up no From: for a submission without one.
        ("always_add_missing_headers", "no"),
        // decisions.md 22: the map `pecora index update` writes beside the index.
        ("smtp_tls_policy_maps", tls_policy_map.as_str()),
        ("smtp_tls_security_level", "may"),
    ] {
        assert_eq!(postconf(&pf, &["-h", param]), value, "{param}");
    }
    for (spec, value) in [
        (
            "submission/inet/smtpd_milters",
            "unix:/run/pecora-test/milter.sock",
        ),
        ("submission/inet/milter_macro_daemon_name", "PEC-ACCESSO"),
        ("submission/inet/smtpd_tls_security_level", "encrypt"),
        ("smtps/inet/smtpd_tls_wrappermode", "yes"),
        ("smtp/inet/milter_macro_daemon_name", "PEC-RICEZIONE"),
        // Ordinary mail with bare LFs is received (and wrapped as an anomaly), DATA still
        // ends only at <CR><LF>.<CR><LF>.
        // (The access listeners override nothing: main.cf's reject, above.)
        ("smtp/inet/smtpd_forbid_bare_newline", "normalize"),
        (
            "smtp/inet/smtpd_milters",
            "unix:/run/pecora-test/milter.sock",
        ),
        ("pecora-inject/unix/receive_override_options", "no_milters"),
    ] {
        assert_eq!(postconf(&pf, &["-P", "-h", spec]), value, "{spec}");
    }
    // No client of the access listeners counts as local for header rewriting, so cleanup
    // adds no missing From: there (the default would for loopback clients).
    for service in ["submission/inet", "smtps/inet"] {
        assert_eq!(
            postconf(&pf, &["-P", &format!("{service}/local_header_rewrite_clients")]),
            format!("{service}/local_header_rewrite_clients ="),
        );
    }
    assert_eq!(
        postconf(&pf, &["-P", "pecora-inject/unix/smtpd_milters"]),
        "pecora-inject/unix/smtpd_milters ="
    );
    // The stock MX line was replaced, not duplicated; other stock services are untouched.
    assert_eq!(postconf(&pf, &["-M", "smtp/inet"]).lines().count(), 1);
    assert!(postconf(&pf, &["-M", "smtp/inet"]).starts_with("smtp       inet  n       -       n"));
    assert!(!postconf(&pf, &["-M", "pickup/unix"]).is_empty());

    // decisions.md 18: Postfix gets a log of its own (printed: the default, on a host with
    // no syslog mail log, as here and on a stock Debian 12), made before postlogd would make
    // it 0600 root, and pecora.toml reads it.
    let syslog = ["/var/log/mail.log", "/var/log/maillog"].iter().any(|p| Path::new(p).exists());
    if !syslog {
        assert!(script.contains(&format!("postconf -c {pfs} -e maillog_file=/var/log/postfix.log # now empty")), "{script}");
        assert!(script.contains(&format!("# {}: [postfix] maillog = \"/var/log/postfix.log\" (--apply writes it)", config.display())), "{script}");
    }
    let own = own_log.display();
    assert!(report.contains(&format!("changed: main.cf: maillog_file = {own} (was empty)")), "{report}");
    assert!(report.contains(&format!("changed: main.cf: maillog_file_prefixes = /var, /dev/stdout, {}", dir.path().display())), "{report}");
    assert!(report.contains(&format!("changed: {own}: created, mode 640")), "{report}");
    assert!(report.contains(&format!("changed: {}: [postfix] maillog = {own}", config.display())), "{report}");
    // The instance named by --postfix-dir is the one pecora asks (syslog_name, hold queue).
    assert!(report.contains(&format!("changed: {}: [postfix] config_dir = {pfs}", config.display())), "{report}");
    assert_eq!(postconf(&pf, &["-h", "maillog_file"]), own.to_string());
    assert!(!postconf(&pf, &["-M", "postlog/unix-dgram"]).is_empty());
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&own_log).unwrap().mode() & 0o777, 0o640);
    }
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.ends_with(&format!("\n[postfix]\nconfig_dir = \"{pfs}\"\nmaillog = \"{own}\"\n")), "{toml}");
    assert_eq!(backups(dir.path(), "pecora.toml").len(), 1);

    // Again: nothing to change, no new backup.
    let o = setup(&config, "postfix", &apply);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(said(&o).contains("nothing to change"), "{}", said(&o));
    assert!(said(&o).contains(&format!("[postfix] maillog = {own} already")), "{}", said(&o));
    assert!(said(&o).contains(&format!("[postfix] config_dir = {pfs} already")), "{}", said(&o));
    assert_eq!(backups(dir.path(), "pecora.toml").len(), 1);
    assert_eq!(backups(&pf, "main.cf").len(), 1);

    // An admin's change to one override is put back, and only that one.
    postconf(&pf, &["-P", "submission/inet/smtpd_tls_security_level=may"]);
    let o = setup(&config, "postfix", &apply);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(
        said(&o).contains(
            "changed: master.cf: submission/inet: -o smtpd_tls_security_level=encrypt (was: may)"
        ),
        "{}",
        said(&o)
    );
    assert!(said(&o).contains("1 change(s)"), "{}", said(&o));
    assert_eq!(
        postconf(
            &pf,
            &["-P", "-h", "submission/inet/smtpd_tls_security_level"]
        ),
        "encrypt"
    );
}

#[test]
fn postfix_apply_failure_restores_the_files_and_unknown_placeholders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let config = pki::config(dir.path(), "");
    let pf = scratch_postfix(dir.path());
    let pfs = pf.to_str().unwrap();
    let original_main = std::fs::read(pf.join("main.cf")).unwrap();
    let original_master = std::fs::read(pf.join("master.cf")).unwrap();

    // A fragment tree whose main.cf ends with a setting postconf refuses.
    let frag = dir.path().join("fragments");
    for sub in ["postfix", "dovecot"] {
        std::fs::create_dir_all(frag.join(sub)).unwrap();
        for e in std::fs::read_dir(Path::new(ROOT).join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), frag.join(sub).join(e.file_name())).unwrap();
        }
    }
    let main_in = frag.join("postfix/main.cf.in");
    let good = std::fs::read_to_string(&main_in).unwrap();
    let args = [
        "--postfix-dir",
        pfs,
        "--mailbox-map",
        "hash:/x",
        "--tls-cert",
        "/c.pem",
        "--tls-key",
        "/k.pem",
        "--apply",
    ];
    let run = || {
        pecora()
            .arg("--config")
            .arg(&config)
            .args(["setup", "postfix", "--fragments"])
            .arg(&frag)
            .args(args)
            .output()
            .unwrap()
    };

    std::fs::write(&main_in, format!("{good}not a valid name = 1\n")).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("postconf -e 'not a valid name=1' failed"),
        "{}",
        said(&o)
    );
    assert!(said(&o).contains("restored"), "{}", said(&o));
    assert_eq!(std::fs::read(pf.join("main.cf")).unwrap(), original_main);
    assert_eq!(
        std::fs::read(pf.join("master.cf")).unwrap(),
        original_master
    );

    // A placeholder this pecora does not know: refused before anything is touched.
    std::fs::write(
        &main_in,
        format!("{good}smtpd_banner = @NEW_THING@ @OTHER@\n"),
    )
    .unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("unknown placeholder @NEW_THING@")
            && said(&o).contains("unknown placeholder @OTHER@"),
        "{}",
        said(&o)
    );
    assert_eq!(std::fs::read(pf.join("main.cf")).unwrap(), original_main);
}

#[test]
fn dovecot_fragment_is_printed_then_written_as_a_conf_d_file() {
    assert!(
        have("doveconf"),
        "Dovecot is not installed (tests/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let config = pki::config(
        d,
        &format!("[listen]\ndelivery_spool = \"{}/delivered\"\n", d.display()),
    );
    let dc = d.join("dovecot");
    std::fs::create_dir_all(dc.join("conf.d")).unwrap();
    let conf = dc.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {0}/run\nstate_dir = {0}/state\n!include conf.d/*.conf\n",
            dc.display()
        ),
    )
    .unwrap();
    let cert = d.join("cert.pem");
    let key = d.join("key.pem");
    let values = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--dovecot-dir",
        dc.to_str().unwrap(),
        "--hook",
        "/usr/share/pecora/dovecot/pecora-delivered.lua",
    ];

    let o = setup(&config, "dovecot", &["--dovecot-dir", dc.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("@TLS_CERT@ has no value: pass --tls-cert"),
        "{}",
        said(&o)
    );

    let o = setup(&config, "dovecot", &values);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains(&format!("ssl_cert = <{}\n", cert.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("pecora_spool = {}/delivered\n", d.display())),
        "{text}"
    );
    assert!(
        text.contains(
            "push_notification_driver = lua:file=/usr/share/pecora/dovecot/pecora-delivered.lua\n"
        ),
        "{text}"
    );
    assert!(text.contains("#   @QUOTA@ = 1G\n"), "{text}");
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains('@')),
        "{text}"
    );
    assert!(
        !dc.join("conf.d/90-pecora.conf").exists(),
        "printing wrote a file"
    );

    let o = setup(&config, "dovecot", &[&values[..], &["--apply"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let target = dc.join("conf.d/90-pecora.conf");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), text);
    let doveconf = |args: &[&str]| {
        let o = Command::new("doveconf")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", said(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let lmtp = doveconf(&["-f", "protocol=lmtp", "-h", "mail_plugins"]);
    assert!(
        lmtp.split_whitespace()
            .any(|p| p == "push_notification_lua"),
        "{lmtp}"
    );
    assert!(!lmtp.split_whitespace().any(|p| p == "sieve"), "{lmtp}");
    assert_eq!(doveconf(&["-h", "plugin/quota_rule"]), "*:storage=1G");
    // The doveadm listener reserved for pecora: its own, mode 0600 (no password needed),
    // served by a doveadm server of its own that runs fetch only.
    let doveadm = doveconf(&["service/pecora-doveadm"]);
    assert!(
        doveadm.contains("unix_listener /run/dovecot/pecora-doveadm {")
            && doveadm.contains("mode = 0600")
            && doveadm.contains("user = pecora")
            && doveadm.contains("executable = doveadm-server -o doveadm_allowed_commands=fetch"),
        "{doveadm}"
    );
    // LMTP, which runs the hook, gets the spool's group.
    assert_eq!(doveconf(&["-f", "protocol=lmtp", "-h", "mail_access_groups"]), "pecora-delivery");

    let o = setup(&config, "dovecot", &[&values[..], &["--apply"]].concat());
    assert!(said(&o).contains("unchanged"), "{}", said(&o));
    assert!(backups(&dc.join("conf.d"), "90-pecora.conf").is_empty());

    // A new value replaces the file and keeps the old one beside it (outside *.conf).
    let o = setup(
        &config,
        "dovecot",
        &[&values[..], &["--apply", "--quota", "2G"]].concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert_eq!(doveconf(&["-h", "plugin/quota_rule"]), "*:storage=2G");
    let kept = backups(&dc.join("conf.d"), "90-pecora.conf");
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), text);

    // When Dovecot refuses the result, the previous file is put back (exit 1).
    let with_2g = std::fs::read_to_string(&target).unwrap();
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf).unwrap() + "no_such_dovecot_setting = 1\n",
    )
    .unwrap();
    let o = setup(
        &config,
        "dovecot",
        &[&values[..], &["--apply", "--quota", "3G"]].concat(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(said(&o).contains("put back"), "{}", said(&o));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), with_2g);
}

#[test]
fn a_milter_socket_in_the_queue_directory_gets_its_directory_and_a_relative_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let queue = d.join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let config = pki::config(d, &format!("[listen]\nmilter = \"unix:{}/pecora/milter.sock\"\n", queue.display()));
    let pf = scratch_postfix(d);
    std::fs::write(pf.join("main.cf"), format!("compatibility_level = 3.6\nqueue_directory = {}\n", queue.display())).unwrap();
    let pfs = pf.to_str().unwrap();
    let tls = format!("{}/cert.pem", d.display());
    let log = format!("{}/postfix.log", d.display());
    let rule = format!("{}/no-logrotate.d/rule", d.display());
    let values = ["--postfix-dir", pfs, "--mailbox-map", "hash:/etc/postfix/pec-mailboxes", "--tls-cert", &tls, "--tls-key", &tls, "--maillog-file", &log, "--logrotate", &rule];
    let group = String::from_utf8(Command::new("id").args(["-gn", "postfix"]).output().unwrap().stdout).unwrap();
    let group = group.trim();

    // Printed: the directory to make, then Postfix's name for the socket.
    let o = setup(&config, "postfix", &values);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let text = said(&o);
    let sock_dir = queue.join("pecora");
    assert!(
        text.lines().any(|l| l.starts_with("install -d -o ")
            && l.contains(&format!(" -g {group} -m 2750 {} # absent", sock_dir.display()))),
        "{text}"
    );
    assert!(text.contains("-e non_smtpd_milters=unix:pecora/milter.sock"), "{text}");
    assert!(text.contains("-P -e submission/inet/smtpd_milters=unix:pecora/milter.sock"), "{text}");
    assert!(!sock_dir.exists(), "printing changed nothing");

    // Applied: made, set-group-id of Postfix's group; a wrong mode is corrected.
    let o = setup(&config, "postfix", &[&values[..], &["--apply"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(said(&o).contains("changed: milter socket directory 2750 "), "{}", said(&o));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = |name: &str| -> u32 {
        let out = Command::new("getent").args(["group", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().trim().parse().unwrap()
    };
    let m = std::fs::metadata(&sock_dir).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2750, gid(group)));
    assert_eq!(postconf(&pf, &["-h", "non_smtpd_milters"]), "unix:pecora/milter.sock");
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = setup(&config, "postfix", &[&values[..], &["--apply"]].concat());
    assert!(said(&o).contains("(was: 777 "), "{}", said(&o));
    assert_eq!(std::fs::metadata(&sock_dir).unwrap().mode() & 0o7777, 0o2750);
    // In place: nothing to say about it.
    let o = setup(&config, "postfix", &[&values[..], &["--apply"]].concat());
    assert!(!said(&o).contains("milter socket directory"), "{}", said(&o));
}

#[test]
fn roundcube_settings_and_nginx_site_are_printed_then_applied() {
    assert!(have("php"), "PHP is not installed (tests/run installs php-fpm, which brings it)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::provider(d);
    let config = pki::config(d, "");
    let rc = d.join("roundcube");
    let plugins = d.join("plugins");
    std::fs::create_dir_all(&rc).unwrap();
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(rc.join("config.inc.php"), "<?php\n$config = [];\n$config['plugins'] = ['archive'];\n").unwrap();
    let site = d.join("pecora-webmail");
    let values = [
        "--mail-host",
        "mail.pec.example.it",
        "--server-name",
        "webmail.pec.example.it",
        "--tls-cert",
        "/etc/ssl/webmail.pem",
        "--tls-key",
        "/etc/ssl/webmail.key",
        "--roundcube-dir",
        rc.to_str().unwrap(),
        "--roundcube-plugins",
        plugins.to_str().unwrap(),
        "--nginx-site",
        site.to_str().unwrap(),
    ];

    // Without the webmail's name and certificate: the options to pass, nothing written.
    let o = setup(&config, "roundcube", &["--mail-host", "mail.pec.example.it"]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    for want in ["@SERVER_NAME@ has no value: pass --server-name", "@TLS_CERT@ has no value: pass --tls-cert"] {
        assert!(said(&o).contains(want), "{}", said(&o));
    }
    // A value that would break out of its PHP string is refused.
    let o = setup(&config, "roundcube", &[&values[..], &["--product-name", "x'; system('id'); '"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(said(&o).contains("@PRODUCT_NAME@"), "{}", said(&o));

    let o = setup(&config, "roundcube", &values);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for want in [
        "$config['imap_host'] = 'ssl://mail.pec.example.it:993';",
        "$config['smtp_host'] = 'tls://mail.pec.example.it:587';",
        "'peer_name' => 'mail.pec.example.it',",
        "$config['pecora_bin'] = '/usr/bin/pecora';",
        "server_name webmail.pec.example.it;",
        "ssl_certificate /etc/ssl/webmail.pem;",
        "listen 443 ssl;",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    // pecora.toml's index and provider name fill the rest.
    assert!(text.contains(&format!("$config['pecora_index'] = '{}/index.ldif';", d.display())), "{text}");
    assert!(text.contains("$config['product_name'] = 'Alpha PEC - Webmail PEC';"), "{text}");
    assert!(text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("//")).all(|l| !l.contains('@')), "{text}");
    assert!(!rc.join("pecora.inc.php").exists() && !site.exists(), "printing wrote a file");

    let o = setup(&config, "roundcube", &[&values[..], &["--apply"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(rc.join("pecora.inc.php").is_file());
    assert!(std::fs::read_to_string(&site).unwrap().contains("fastcgi_pass unix:/run/php/php-fpm.sock;"));
    assert_eq!(std::fs::read_link(plugins.join("pecora")).unwrap(), Path::new(ROOT).join("webmail/roundcube/pecora"));
    assert_eq!(backups(&rc, "config.inc.php").len(), 1, "the changed config.inc.php is backed up");
    // Roundcube's configuration, read by PHP as Roundcube reads it: ours included, the
    // plugin added to the administrator's list.
    let php = Command::new("php")
        .arg("-r")
        .arg(format!(
            "include '{}/config.inc.php'; echo json_encode([$config['imap_host'], $config['plugins'], $config['imap_conn_options']['ssl']['verify_peer']]);",
            rc.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&php.stdout),
        r#"["ssl:\/\/mail.pec.example.it:993",["archive","pecora"],true]"#,
        "{}",
        said(&php)
    );
    // Again: nothing changes, the include is not added twice.
    let o = setup(&config, "roundcube", &[&values[..], &["--apply"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(said(&o).contains("includes pecora.inc.php already"), "{}", said(&o));
    assert_eq!(backups(&rc, "config.inc.php").len(), 1);
    assert_eq!(std::fs::read_to_string(rc.join("config.inc.php")).unwrap().matches("pecora.inc.php").count(), 1);
}
