//! pecora: an Italian certified-mail (PEC) point on stock Postfix and Dovecot.
//!
//! The library exists so that the binary and the integration tests share one code base;
//! it makes no API stability promise.

// The floors of the code map (README, "Code map"), lowest first: a module uses its own
// floor and those below, never one above (tests/layering.rs checks it).
pub mod pec;
pub mod config;
pub mod adapters;
pub mod store;
pub mod runtime;
pub mod milter;
pub mod delivery;
pub mod daemon;
pub mod cmd;

pub const NAME: &str = "pecora";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
