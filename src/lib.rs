//! pecora: an Italian certified-mail (PEC) point on stock Postfix and Dovecot.
//!
//! The library exists so that the binary and the integration tests share one code base;
//! it makes no API stability promise.

pub mod adapters;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod milter;
pub mod pec;
pub mod runtime;
pub mod store;
pub mod cmd;

pub const NAME: &str = "pecora";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
