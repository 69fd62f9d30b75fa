//! Running the pecora binary under test.

use std::process::{Command, Output};

/// The pecora binary Cargo built for these tests.
pub fn pecora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pecora"))
}

/// Standard output then standard error, as one text.
pub fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
