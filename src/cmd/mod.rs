//! Operator commands (logic; the clap wiring is in main.rs).

pub mod check;
pub mod doctor;
pub mod fragments;
pub mod index;
pub mod keys;
pub mod log;
pub mod outbox;
pub mod receipt;
pub mod setup;
pub mod usercert;
pub mod setup_roundcube;
