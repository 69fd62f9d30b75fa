//! The milter adapter: Postfix talks to it, it talks to the PEC engine.
//!
//! `callbacks` is a thin translation of milter events into calls on a [`Session`]; every
//! decision lives in `session`. Any internal error is logged with the Postfix queue id
//! and answered `Tempfail`, so Postfix keeps the message and retries: nothing passes
//! through unprocessed.

mod callbacks;
mod internal;
mod reception;
mod session;
mod rewrite;
mod spool;

pub use callbacks::callbacks;
pub use session::{Role, Session};
