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
