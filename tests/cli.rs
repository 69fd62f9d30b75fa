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
    for word in ["serve", "check", "doctor", "log", "Exit status"] {
        assert!(help.contains(word), "{help}");
    }
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
