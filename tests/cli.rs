//! The command line as a sysadmin meets it: exit statuses and messages that name the problem.

use std::process::Command;

fn pecora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pecora"))
}

#[test]
fn broken_configuration_is_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pecora.toml");
    std::fs::write(&path, "[provider]\nname = \"A\"\ndomains = [\"pec.a.test\"]\nnmae = \"typo\"\n").unwrap();
    let out = pecora().arg("--config").arg(&path).arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4", path.display())) && err.contains("nmae"), "{err}");
}

#[test]
fn missing_configuration_is_an_environment_error() {
    let out = pecora().args(["--config", "/nonexistent/pecora.toml", "serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pecora.toml"));
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    assert_eq!(pecora().arg("frobnicate").output().unwrap().status.code(), Some(2));
    let out = pecora().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check", "doctor", "log", "outbox", "Exit status"] {
        assert!(help.contains(word), "{help}");
    }
    // The outbox commands: no id, an unknown status, a missing configuration are usage or
    // environment errors.
    for args in [&["outbox", "retry"][..], &["outbox", "list", "--status", "lost"][..]] {
        assert_eq!(pecora().args(args).output().unwrap().status.code(), Some(2), "{args:?}");
    }
    let out = pecora().args(["--config", "/nonexistent/pecora.toml", "outbox", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&pecora().args(["outbox", "retry", "--help"]).output().unwrap().stdout).into_owned();
    assert!(help.contains("keys.previous_private_keys") && help.contains("mail log"), "{help}");
}

#[path = "common/pki.rs"]
mod pki;

/// `pecora serve` reloads on SIGHUP without dropping the milter socket, keeps the running
/// configuration when the new file is broken, and stops cleanly on SIGTERM.
#[test]
fn serve_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    pki::provider(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.path().display();
    let base = format!(
        "[listen]\nmilter = \"inet:127.0.0.1:{port}\"\n[store]\nurl = \"sqlite:{d}/registry.db\"\ncheckpoint_dir = \"{d}/cp\"\n[limits]\nspool_dir = \"{d}/spool\"\n"
    );
    let path = pki::config(dir.path(), &base);
    let log = dir.path().join("serve.log");
    let mut child = pecora()
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_log = |needle: &str| {
        for _ in 0..100 {
            if std::fs::read_to_string(&log).unwrap_or_default().contains(needle) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    assert!(wait_log("pecora starting"), "{}", std::fs::read_to_string(&log).unwrap());
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("milter socket open");

    std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "[policy]\nordinary_mail = \"refuse\"\n").unwrap();
    let kill = |sig: &str| assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    kill("-HUP");
    assert!(wait_log("configuration reloaded"), "{}", std::fs::read_to_string(&log).unwrap());

    std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "bogus = 1\n").unwrap();
    kill("-HUP");
    assert!(wait_log("configuration not reloaded"), "{}", std::fs::read_to_string(&log).unwrap());
    // The milter socket stayed open through both reloads (the earlier connection too).
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(conn);

    kill("-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(&log).unwrap());
    assert!(wait_log("pecora shut down"));
}

/// An index listing the signer of a real fixture (extracted with openssl) for its domain.
fn fixture_index(dir: &std::path::Path, fixture: &str, domain: &str) -> std::path::PathBuf {
    let signer = dir.join("signer.pem");
    let out = Command::new("openssl")
        .args(["smime", "-verify", "-noverify", "-in", fixture, "-signer"])
        .arg(&signer)
        .args(["-out", "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&signer).output().unwrap().stdout;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let sha1 = hex::encode_upper(openssl::sha::sha1(&der));
    let ldif = format!(
        "dn: o=postacert\no: postacert\n\ndn: providerName=Real,o=postacert\nproviderName: Real\n\
         providerCertificateHash: {sha1}\nproviderCertificate;binary:: {b64}\nmailReceipt: r@{domain}\nmanagedDomains: {domain}\n"
    );
    let path = dir.join("index.ldif");
    std::fs::write(&path, ldif).unwrap();
    path
}

#[test]
fn verify_tells_genuine_from_tampered_without_a_configuration() {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let real = format!("{fx}/real/sogei-2018-busta-trasporto-breve-1.eml");
    let dir = tempfile::tempdir().unwrap();
    let from = std::fs::read_to_string(&real).unwrap();
    let domain = from
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("from:"))
        .and_then(|l| l.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches(['>', ' ', '\r']).to_string())
        .unwrap();
    let index = fixture_index(dir.path(), &real, &domain);
    let out = pecora().args(["--config", "/nonexistent.toml", "verify", "--json", "--index"]).arg(&index).arg(&real).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["genuine"], true);
    assert_eq!(v["kind"], "posta-certificata");
    assert_eq!(v["receipt_type"], "breve");
    assert!(v["identificativo"].as_str().unwrap().contains('@'));

    let tampered = format!("{fx}/negative/sogei-2018-busta-one-byte-altered.eml");
    let out = pecora().args(["verify", "--index"]).arg(&index).arg(&real).arg(&tampered).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VERDICT: GENUINE PEC") && text.contains("VERDICT: NOT GENUINE: the signature does not match"), "{text}");

    let out = pecora().args(["--config", "/nonexistent.toml", "verify"]).arg(&real).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no index given");
}
