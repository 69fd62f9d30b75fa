//! What the PEC points share while the daemon runs: the engine (configuration loaded into
//! keys, index and provider), the runtime state every session and task holds, and the
//! metrics they update. Below the points, above the store and the adapters.

pub mod engine;
pub mod injection_log;
pub mod metrics;
pub mod state;
