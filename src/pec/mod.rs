//! The PEC message engine: pure format code. No network, no database, no clock: time and
//! randomness are passed in, and messages come in as bytes.

pub mod access;
pub mod daticert;
pub mod dsn;
pub mod types;
pub mod mime;
pub mod text;
pub mod sign;
pub mod ident;
pub mod incoming;
pub mod brief;
pub mod build;

pub use daticert::Daticert;
pub use types::*;
