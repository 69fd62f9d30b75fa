//! The PEC message engine: pure format code. No network, no database, no clock: time and
//! randomness are passed in, and messages come in as bytes.

pub mod access;
pub mod daticert;
pub mod types;

pub use daticert::Daticert;
pub use types::*;
