//! Crash points for the crash-safety tests (`tests/crash.rs`).
//!
//! A failpoint is a named place in the code where a crash is most harmful. With the
//! environment variable `PECORA_FAILPOINT=<name>` (several names separated by commas), the
//! process kills itself with SIGKILL when it reaches that place: no destructor, no buffered
//! write, no database rollback on the way out, exactly like a power-cut of the process or
//! `kill -9`. Without the variable every point is a no-op (one look at a cached value).
//! The code is always compiled in, so the binary tested is the binary shipped.
//!
//! The points:
//!
//! - `after-record`: the access point has recorded the acceptance event with its outbox
//!   message (committed), and has not yet answered Postfix (`src/milter/session.rs`).
//! - `before-inject`: the outbox worker has leased a message and has not yet connected to
//!   the injection listener (`src/store/outbox.rs`).
//! - `after-inject`: the injection listener has answered 250 to the final dot (Postfix owns
//!   the message) and the outbox row is not yet marked sent (`src/store/outbox.rs`). This is
//!   the window where the outbox is at-least-once: the message goes out again when the lease
//!   expires.
//!
//! - `queue-confirm-panic`: not a kill but a panic, in the task that follows the mail log
//!   (`src/daemon/queue_confirm.rs`), for the test that a worker task dying makes the whole
//!   daemon stop with an error, so that its supervisor starts it again (`tests/serve_lifecycle.rs`).
//!
//! A crash in the middle of DATA (before the final dot) needs no failpoint: the tests' fake
//! injection listener sends SIGKILL itself at that moment.

use std::sync::OnceLock;

/// The environment variable naming the armed failpoints.
pub const ENV: &str = "PECORA_FAILPOINT";

/// Every failpoint name the code knows.
pub const POINTS: [&str; 4] = ["after-record", "before-inject", "after-inject", "queue-confirm-panic"];

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether `name` is armed in this process.
pub fn is_armed(name: &str) -> bool {
    armed().iter().any(|a| a == name)
}

/// Reaching panic point `name`: when it is armed, the calling task panics here.
pub fn panic_here(name: &str) {
    if is_armed(name) {
        panic!("failpoint {name} reached");
    }
}

/// Reaching failpoint `name`: when it is armed, the process dies of SIGKILL here.
pub fn hit(name: &str) {
    if is_armed(name) {
        die(name);
    }
}

#[cold]
fn die(name: &str) -> ! {
    // stderr is unbuffered: this line is written before the signal.
    eprintln!("pecora: failpoint {name} reached: SIGKILL");
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    if pid > 0 {
        // SAFETY: kill(2) on our own pid with a valid signal number; it has no memory
        // effects on this process, and SIGKILL cannot be caught, so it does not return
        // (except on failure, handled below).
        unsafe {
            kill(pid, SIGKILL);
        }
    }
    // Only if the signal could not be sent: still die without cleanup.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_points_do_nothing() {
        // The test process never sets PECORA_FAILPOINT to a real point name.
        for p in POINTS {
            if !is_armed(p) {
                hit(p);
                panic_here(p);
            }
        }
        assert!(!is_armed("no-such-point"));
    }
}
