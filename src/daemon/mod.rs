//! `pecora serve`: the daemon that runs the points. It binds the milter socket, starts the
//! delivery spool watch, the outbox worker, the timers and the mail log follower
//! (acceptance only for queued mail), reloads on SIGHUP and sets up logging. Nothing below
//! uses it.

pub mod logging;
pub mod queue_confirm;
pub mod serve;
pub mod timers;
