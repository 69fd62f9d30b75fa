//! The webmail on the lab (issue 16): Roundcube from Debian's packages with the pecora
//! plugin, behind the lab's own nginx and php-fpm over HTTPS, driven by headless Chromium
//! through Selenium (tests/webmail/scenarios.py): a PEC composed in the browser with each
//! receipt type, the received PEC with pecora's verdict and the original content, a forged
//! copy the holder appended (headers claim PEC, pecora says no), no verdict without pecora,
//! an anomaly marked not certified, the timeline of a sent message's receipts (consegna,
//! sintetica, non-delivery), and the Italian texts.
//! The screenshots stay in target/webmail-screenshots/.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, REPO, subject, top_headers};

/// Roundcube's server and nginx's answer for `url`, verified against the lab CA.
fn https_status(url: &str, ca: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import ssl, sys, urllib.request\n\
             ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
             r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=30)\n\
             print(r.status, 'rcmloginuser' in r.read().decode())",
        )
        .args([url, ca])
        .output()
        .expect("python3");
    format!("{}{}", String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim())
}

#[test]
fn webmail_shows_pec_in_a_real_browser() {
    let lab = Lab::up_with_webmail();
    let (alpha, beta, gamma) = (lab.alpha(), lab.beta(), lab.gamma());

    // Each provider has its own webmail over HTTPS, with a certificate of the lab CA.
    for p in [alpha, beta] {
        let url = p["webmail_url"].as_str().expect("webmail_url in state.json");
        assert!(url.starts_with("https://localhost:"), "{url}");
        assert_eq!(https_status(url, p["ca_file"].as_str().unwrap()), "200 True", "{url} serves Roundcube's login");
    }
    // The web server's user runs `pecora verify`, and must not be able to read a signing key.
    let key = alpha["signing_key"].as_str().unwrap();
    let read = Command::new("runuser").args(["-u", "www-data", "--", "cat", key]).output().unwrap();
    assert!(!read.status.success(), "www-data can read {key}");

    // An ordinary message from gamma to beta's holder: beta wraps it in a busta di anomalia.
    let luca = beta["users"][0]["address"].as_str().unwrap();
    let out = lab.send(gamma, "starttls", 0, "paolo@mail.gamma.test", &[luca], &[("Subject", "Posta ordinaria")], "Ciao da gamma.");
    assert!(out.status.success(), "swaks: {}", String::from_utf8_lossy(&out.stdout));

    let shots = format!("{REPO}/target/webmail-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    // Debian's python3, where python3-selenium is (not a python3 earlier on PATH).
    let mut child = Command::new("/usr/bin/python3")
        .arg(format!("{REPO}/tests/webmail/scenarios.py"))
        .arg(lab.dir.path().join("state.json"))
        .arg(&shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run tests/webmail/scenarios.py");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        lines.push(line);
    }
    let status = child.wait().unwrap();
    println!("webmail screenshots: {shots}");
    assert!(
        status.success(),
        "the browser scenarios failed ({status}); screenshots in {shots}; webmail logs in {}/webmail",
        lab.dir.path().display()
    );
    let checks = lines.iter().filter(|l| l.starts_with("check: ")).count();
    assert!(checks >= 31, "only {checks} checks ran:\n{}", lines.join("\n"));
    assert!(std::path::Path::new(&format!("{shots}/received-pec.png")).exists());

    // Independently of the webmail: the consegna of the message sent with "sintetica" is a
    // sintetica receipt (no copy of the original), the other one a completa (with it).
    let mario = &alpha["users"][0];
    let inbox = lab.fetch_imaps(alpha, mario);
    let find = |s: &str| {
        inbox
            .iter()
            .find(|m| subject(m) == s)
            .unwrap_or_else(|| panic!("no {s:?} in mario's INBOX"))
    };
    let sintetica = find("CONSEGNA: PEC sintetica dal browser");
    assert!(top_headers(sintetica).contains("X-TipoRicevuta: sintetica"), "{}", top_headers(sintetica));
    let text = String::from_utf8_lossy(sintetica);
    assert!(!text.contains("postacert.eml"), "{text}");
    let completa = find("CONSEGNA: Prima PEC dal browser");
    assert!(!top_headers(completa).contains("X-TipoRicevuta: sintetica"), "{}", top_headers(completa));
    assert!(String::from_utf8_lossy(completa).contains("postacert.eml"));

    // lab/down stops the webmail too: no process of this lab's nginx or php-fpm (masters
    // and workers, found through the masters' process groups) is left.
    let webmail_dir = lab.dir.path().join("webmail");
    let mut pids = Vec::new();
    for pidfile in ["nginx.pid", "php-fpm.pid"] {
        let pid = std::fs::read_to_string(webmail_dir.join(pidfile)).unwrap_or_else(|e| panic!("{pidfile}: {e}"));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
        let pgid = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(2).unwrap().to_string();
        let group = Command::new("pgrep").args(["-g", &pgid]).output().unwrap();
        let found: Vec<u64> = String::from_utf8_lossy(&group.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert!(found.len() >= 2, "{pidfile}: a master and its workers, found {found:?}");
        pids.extend(found);
    }
    let down = Command::new(format!("{REPO}/lab/down")).arg("--dir").arg(lab.dir.path()).output().unwrap();
    assert!(down.status.success());
    let left: Vec<u64> = pids.into_iter().filter(|p| lab::alive(*p)).collect();
    assert!(left.is_empty(), "still running after lab/down: {left:?}");
}
