use super::*;
use std::io::Write;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cert.pem", "index.ldif"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Fixture { dir }
    }

    fn write(&self, body: &str) -> PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            "[provider]\nname = \"Alpha\"\ndomains = [\"pec.alpha.test\"]\n\n\
             [keys]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n\n\
             [index]\nfile = \"{d}/index.ldif\"\n{body}"
        );
        let p = self.dir.path().join("pecora.toml");
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        p
    }
}

#[test]
fn minimal_file_gets_defaults() {
    let f = Fixture::new();
    let c = Config::load(&f.write("")).unwrap();
    assert_eq!(c.system_address(), "posta-certificata@pec.alpha.test");
    assert_eq!(c.limits.max_recipients, 50);
    assert_eq!(c.timers.take_charge, Duration::from_secs(12 * 3600));
    // The 24 h limit, and the 22 h before which no final notice goes (pec-format.md §5).
    assert_eq!(c.timers.delivery, Duration::from_secs(24 * 3600));
    assert_eq!(c.timers.delivery_min, Duration::from_secs(22 * 3600));
    assert_eq!(c.timers.interval, Duration::from_secs(60));
    assert_eq!(c.time_zone(), chrono_tz::Europe::Rome);
    assert!(c.antivirus.clamd.is_none());
    assert_eq!(c.listen.milter, SocketSpec::Unix("/var/spool/postfix/pecora/milter.sock".into()));
}

#[test]
fn shipped_sample_parses() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pecora.toml"));
    let text = std::fs::read_to_string(path).unwrap();
    let c = Config::parse(path, &text).expect("the commented sample must parse");
    assert_eq!(c.policy.ordinary_mail, OrdinaryMailPolicy::Anomaly);
    assert_eq!(c.store.retention, Duration::from_secs(913 * 86_400));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let f = Fixture::new();
    let p = f.write("\n[limits]\nmax_recipients = 60\nmax_recipents = 70\n");
    let e = &Config::load(&p).unwrap_err()[0];
    assert_eq!(e.line, Some(14), "{e}");
    assert_eq!(e.key.as_deref(), Some("limits.max_recipents"), "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
    assert!(e.to_string().starts_with(&p.display().to_string()));
}

#[test]
fn invalid_value_names_line_and_key() {
    let f = Fixture::new();
    let p = f.write("\n[timers]\ntake_charge = \"12 hours\"\n");
    let e = &Config::load(&p).unwrap_err()[0];
    assert_eq!(e.line, Some(13), "{e}");
    assert_eq!(e.key.as_deref(), Some("timers.take_charge"), "{e}");
}

#[test]
fn validation_errors_are_all_reported_with_lines() {
    let f = Fixture::new();
    let p = f.write("\n[limits]\nmax_recipients = 10\n\n[provider.x]\n");
    // [provider.x] is an unknown table: parse error first.
    assert!(Config::load(&p).is_err());
    let p = f.write("\n[limits]\nmax_recipients = 10\nmax_size_times_recipients = \"1MB\"\n");
    let errs = Config::load(&p).unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| (e.key.clone().unwrap(), e.line)).collect();
    assert!(keys.contains(&("limits.max_recipients".into(), Some(13))), "{keys:?}");
    assert!(keys.contains(&("limits.max_size_times_recipients".into(), Some(14))), "{keys:?}");
}

#[test]
fn world_readable_private_key_is_refused() {
    let f = Fixture::new();
    let key = f.dir.path().join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let errs = Config::load(&f.write("")).unwrap_err();
    assert!(errs.iter().any(|e| e.key.as_deref() == Some("keys.private_key")
        && e.message.contains("chmod 600")));
}

#[test]
fn previous_private_keys_are_checked_like_the_key() {
    let f = Fixture::new();
    let old = f.dir.path().join("old.pem");
    std::fs::write(&old, "x").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = f.write("");
    let text = std::fs::read_to_string(&p).unwrap().replacen(
        "[keys]\n",
        &format!("[keys]\nprevious_private_keys = [\"{}\", \"{}/missing.pem\"]\n", old.display(), f.dir.path().display()),
        1,
    );
    std::fs::write(&p, text).unwrap();
    let errs = Config::load(&p).unwrap_err();
    let msgs: Vec<String> = errs.iter().filter(|e| e.key.as_deref() == Some("keys.previous_private_keys")).map(|e| e.message.clone()).collect();
    assert_eq!(msgs.len(), 2, "{errs:?}");
    assert!(msgs[0].contains("chmod 600") && msgs[0].contains("old.pem"), "{msgs:?}");
    assert!(msgs[1].contains("cannot read") && msgs[1].contains("missing.pem"), "{msgs:?}");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&p).unwrap().replace(&format!(", \"{}/missing.pem\"", f.dir.path().display()), "");
    std::fs::write(&p, text).unwrap();
    assert_eq!(Config::load(&p).unwrap().keys.previous_private_keys, vec![old]);
}

#[test]
fn postfix_config_dir_must_hold_main_cf() {
    let f = Fixture::new();
    let d = f.dir.path().display().to_string();
    let errs = Config::load(&f.write(&format!("[postfix]\nconfig_dir = \"{d}\"\n"))).unwrap_err();
    assert!(errs.iter().any(|e| e.key.as_deref() == Some("postfix.config_dir") && e.message.contains("no main.cf")), "{errs:?}");
    std::fs::write(f.dir.path().join("main.cf"), "").unwrap();
    assert!(Config::load(&f.write(&format!("[postfix]\nconfig_dir = \"{d}\"\n"))).is_ok());
}

#[test]
fn bad_zone_and_socket_are_refused() {
    let f = Fixture::new();
    let errs = Config::load(&f.write("[listen]\nmilter = \"tcp:1\"\n")).unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("listen.milter"));
    let p = f.write("");
    let text = std::fs::read_to_string(&p).unwrap().replace("name = \"Alpha\"", "name = \"Alpha\"\ntime_zone = \"Mars/Olympus\"");
    std::fs::write(&p, text).unwrap();
    let errs = Config::load(&p).unwrap_err();
    assert_eq!(errs[0].key.as_deref(), Some("provider.time_zone"));
    assert_eq!(errs[0].line, Some(3));
}

#[test]
fn policy_overrides_by_mailbox_then_domain() {
    let f = Fixture::new();
    let c = Config::load(&f.write(
        "[policy]\nordinary_mail = \"anomaly\"\n[policy.domains.\"pec.alpha.test\"]\nordinary_mail = \"refuse\"\n\
         [policy.mailboxes.\"Mario@PEC.alpha.test\"]\nordinary_mail = \"anomaly\"\n",
    ))
    .unwrap();
    assert_eq!(c.policy.ordinary_mail_for("luigi@pec.alpha.test"), OrdinaryMailPolicy::Refuse);
    assert_eq!(c.policy.ordinary_mail_for("mario@pec.alpha.test"), OrdinaryMailPolicy::Anomaly);
    assert_eq!(c.policy.ordinary_mail_for("x@other.test"), OrdinaryMailPolicy::Anomaly);
}

#[test]
fn durations_and_sizes_parse() {
    assert_eq!("1h30m".parse::<Duration>().unwrap(), Duration::from_secs(5400));
    assert_eq!("250ms".parse::<Duration>().unwrap().std().as_millis(), 250);
    assert!("12".parse::<Duration>().is_err());
    assert!("12y".parse::<Duration>().is_err());
    assert_eq!("30MB".parse::<ByteSize>().unwrap(), ByteSize(30_000_000));
    assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
    assert!("MB".parse::<ByteSize>().is_err());
}

#[test]
fn client_certificates_map_to_one_mailbox_only_from_a_users_ca() {
    let mut c = Certificates { issuers: vec!["Alpha PEC Utenti CA".into()], ..Default::default() };
    c.map.insert("Alpha PEC Utenti CA/Mario Rossi".into(), "Mario.Rossi@pec.alpha.test".into());
    assert_eq!(c.identity("Alpha PEC Utenti CA", "Mario Rossi").as_deref(), Some("mario.rossi@pec.alpha.test"));
    assert_eq!(c.identity("Alpha PEC Utenti CA", "Firma@pec.alpha.test").as_deref(), Some("firma@pec.alpha.test"));
    // Another issuer, an unmapped name, or nothing at all: no login.
    assert_eq!(c.identity("Some Public CA", "firma@pec.alpha.test"), None);
    assert_eq!(c.identity("Alpha PEC Utenti CA", "Luca Verdi"), None);
    assert_eq!(c.identity("", ""), None);
    assert_eq!(Certificates::default().identity("Alpha PEC Utenti CA", "firma@pec.alpha.test"), None);
}

#[test]
fn postfix_names_a_socket_under_its_queue_directory_relatively() {
    let q = Path::new("/var/spool/postfix");
    let packaged: SocketSpec = "unix:/var/spool/postfix/pecora/milter.sock".parse().unwrap();
    assert_eq!(packaged.postfix_form(q), "unix:pecora/milter.sock");
    // A trailing slash in queue_directory changes nothing; another queue directory does.
    assert_eq!(packaged.postfix_form(Path::new("/var/spool/postfix/")), "unix:pecora/milter.sock");
    assert_eq!(packaged.postfix_form(Path::new("/var/spool/postfix-out")), "unix:/var/spool/postfix/pecora/milter.sock");
    // A look-alike prefix is not the queue directory.
    let other: SocketSpec = "unix:/var/spool/postfixes/milter.sock".parse().unwrap();
    assert_eq!(other.postfix_form(q), "unix:/var/spool/postfixes/milter.sock");
    let tcp: SocketSpec = "inet:127.0.0.1:8890".parse().unwrap();
    assert_eq!(tcp.postfix_form(q), "inet:127.0.0.1:8890");

    assert!(packaged.named_in_postfix_list("unix:pecora/milter.sock", q));
    assert!(packaged.named_in_postfix_list("inet:127.0.0.1:8891, unix:/var/spool/postfix/pecora/milter.sock", q));
    assert!(packaged.named_in_postfix_list("{ unix:pecora/milter.sock, default_action=tempfail }", q));
    assert!(!packaged.named_in_postfix_list("unix:pecora/milter.sock.old", q));
    assert!(!packaged.named_in_postfix_list("", q));
}

#[test]
fn delivery_reads_through_dovecots_listener_unless_told_otherwise() {
    let f = Fixture::new();
    let c = Config::load(&f.write("")).unwrap();
    assert_eq!(c.delivery.doveadm_socket.as_deref(), Some(Path::new("/run/dovecot/pecora-doveadm")));
    let c = Config::load(&f.write("[delivery]\ndoveadm_socket = \"\"\ndoveadm = [\"doveadm\", \"-c\", \"/x.conf\"]\n")).unwrap();
    assert_eq!(c.delivery.doveadm_socket, None);
    let e = format!("{:?}", Config::load(&f.write("[delivery]\ndoveadm_socket = \"run/x\"\n")).unwrap_err());
    assert!(e.contains("delivery.doveadm_socket"), "{e}");
}
