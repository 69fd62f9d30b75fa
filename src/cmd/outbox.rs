//! `pecora outbox …`: what the outbox holds, and failed messages put back in the queue.
//!
//! The outbox is where every message pecora generates (receipts, notices, anomaly
//! redirects) waits until Postfix has taken it. The daemon gives a message up after a
//! permanent refusal of the injection listener, after its last attempt (about two days
//! of retries), or when its seal does not verify (a replaced signing key not
//! listed in `keys.previous_private_keys`, or a row written behind pecora's back). Once the
//! cause is fixed, `retry` puts such a message back: only a failed one, and only when its
//! seal shows that pecora queued it. It is sealed again with the current key.
//!
//! Exit status: `list` 0, 2 when the registry cannot be read; `retry` 0 when every message
//! given was queued again, 1 when one was not (not found, not failed, seal not ours), 2 on
//! environment errors (registry, signing key).

use std::process::ExitCode;

use crate::config::Config;
use crate::store::model::{OutboxMessage, OutboxStatus};
use crate::store::seal::{OutboxKey, OutboxKeys};
use crate::store::{RetryOutcome, Store};

/// The `outbox` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OutboxCommand {
    /// List outbox messages of one status, the newest first.
    List {
        /// failed (given up), pending (waiting for a worker), held (waiting for Postfix's
        /// queue confirmation), sent or cancelled.
        #[arg(long, default_value = "failed", value_parser = ["failed", "pending", "held", "sent", "cancelled"])]
        status: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per message (JSON Lines).
        #[arg(long)]
        json: bool,
    },
    /// Put failed messages back in the queue, due now, once their cause is fixed.
    ///
    /// Only failed messages whose seal a configured key verifies (the signing key or one of
    /// keys.previous_private_keys) are queued again. Their attempts restart; the first one
    /// asks the mail log whether an earlier attempt reached Postfix after all, so that the
    /// recipient does not get it twice. Needs the signing key: run as root or pecora.
    Retry {
        /// Outbox ids, as `outbox list` and the daemon's log name them.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
}

/// Runs one `outbox` command on the registry of `config`.
pub async fn run(cmd: OutboxCommand, config: &Config) -> ExitCode {
    let store = match Store::open(&config.store.url).await {
        Ok(s) => s.with_host(config.host_id()),
        Err(e) => {
            eprintln!("pecora: cannot open the registry {}: {e}", config.store.url);
            return ExitCode::from(2);
        }
    };
    match cmd {
        OutboxCommand::List { status, limit, json } => list(&store, &status, limit, json).await,
        OutboxCommand::Retry { ids } => {
            let keys = match keys(config) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("pecora: {e}");
                    return ExitCode::from(2);
                }
            };
            retry(&store.with_outbox_keys(keys), &ids).await
        }
    }
}

/// The outbox key of the PEM private key at `path` (the signing key, or one of
/// `keys.previous_private_keys`); the error names the file.
fn key_file(path: &std::path::Path) -> Result<OutboxKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    OutboxKey::from_private_key_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// Which configured key file could not be made an outbox key, and why.
#[derive(Debug)]
pub enum KeysError {
    /// `keys.private_key` (often: not readable by the user running the command).
    Current(String),
    /// One of `keys.previous_private_keys`.
    Previous(String),
}

impl std::fmt::Display for KeysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeysError::Current(e) => write!(f, "keys.private_key: {e}"),
            KeysError::Previous(e) => write!(f, "keys.previous_private_keys: {e}"),
        }
    }
}

/// The outbox keys the configuration names: the signing key's, which seals, and those of
/// `keys.previous_private_keys`, which only verify.
pub fn keys(config: &Config) -> Result<OutboxKeys, KeysError> {
    let current = key_file(&config.keys.private_key).map_err(KeysError::Current)?;
    let previous = config
        .keys
        .previous_private_keys
        .iter()
        .map(|p| key_file(p).map_err(KeysError::Previous))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OutboxKeys::new(current, previous))
}

async fn list(store: &Store, status: &str, limit: usize, json: bool) -> ExitCode {
    let status = match status {
        "failed" => OutboxStatus::Failed,
        "pending" => OutboxStatus::Pending,
        "held" => OutboxStatus::Held,
        "sent" => OutboxStatus::Sent,
        _ => OutboxStatus::Cancelled,
    };
    let rows = match store.backend().outbox_with_status(status, limit).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pecora: cannot read the outbox: {e}");
            return ExitCode::from(2);
        }
    };
    for m in &rows {
        if json {
            match serde_json::to_string(m) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("pecora: {e}");
                    return ExitCode::from(2);
                }
            }
        } else {
            println!("{}", line(m));
        }
    }
    if !json && rows.is_empty() {
        println!("no {} outbox message", status.as_str());
    }
    ExitCode::SUCCESS
}

/// One message as a line of text: every field an operator needs to decide, on one line,
/// with the control characters of what came from outside made visible.
fn line(m: &OutboxMessage) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    format!(
        "{id}  {status}  {kind}  created {created}{queue}  attempts {attempts}{next}  from {from}  to {to}{error}",
        id = m.id,
        status = m.status.as_str(),
        kind = clean(&m.kind),
        created = clean(&m.created_at),
        // A held message waits for this Postfix queue id in the mail log: what to grep for.
        queue = m.queue_id.as_deref().map(|q| format!("  queue id {}", clean(q))).unwrap_or_default(),
        attempts = m.attempts,
        // A pending message that failed before is tried again then.
        next = (m.status == OutboxStatus::Pending && m.attempts > 0)
            .then(|| format!("  next attempt {}", clean(&m.next_attempt_at)))
            .unwrap_or_default(),
        from = clean(&m.mail_from),
        to = clean(&m.rcpts.join(", ")),
        error = m.last_error.as_deref().map(|e| format!("  ({})", clean(e))).unwrap_or_default(),
    )
}

async fn retry(store: &Store, ids: &[i64]) -> ExitCode {
    let mut all = true;
    for &id in ids {
        match store.outbox_retry(id, chrono::Utc::now()).await {
            Ok(RetryOutcome::Queued(m)) => {
                println!("{id}: queued again ({} to {})", m.kind, m.rcpts.join(", "));
            }
            Ok(RetryOutcome::NotFound) => {
                all = false;
                println!("{id}: no such outbox message");
            }
            Ok(RetryOutcome::NotFailed(s)) => {
                all = false;
                println!("{id}: not retried: it is {}, and only failed messages are", s.as_str());
            }
            Ok(RetryOutcome::Unsealed) => {
                all = false;
                println!(
                    "{id}: not retried: no configured key verifies its seal. If the signing key was replaced, \
                     list the old one in keys.previous_private_keys; otherwise pecora did not queue it"
                );
            }
            Ok(RetryOutcome::NoKey) => {
                eprintln!("pecora: no outbox key");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("pecora: {id}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if all { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
