//! Operator commands (logic; the clap wiring is in main.rs).

pub mod check;
pub mod index;
pub mod log;
pub mod receipt;
pub mod setup;
pub mod setup_roundcube;
