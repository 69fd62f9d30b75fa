//! Running the pecora binary under test.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The pecora binary Cargo built for these tests.
pub fn pecora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pecora"))
}

/// Standard output then standard error, as one text.
pub fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Asserts that the command exited with `code` and that what it said contains each of
/// `says`; a failure shows what it said.
pub fn assert_said(o: &Output, code: i32, says: &[&str]) {
    let text = said(o);
    assert_eq!(o.status.code(), Some(code), "{text}");
    for s in says {
        assert!(text.contains(s), "{s:?} not said:\n{text}");
    }
}

/// `pecora verify --json ARGS...` without a configuration file: its exit code, the JSON
/// line it printed per file, and its standard error.
pub fn verify_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = pecora()
        .args(["--config", "/nonexistent.toml", "verify", "--json"])
        .args(args)
        .output()
        .unwrap();
    let lines = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    (out.status.code(), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}
