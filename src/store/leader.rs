//! Leader election: only one host runs the timers and the retention job.
//!
//! On PostgreSQL the leader holds a session-level advisory lock on a dedicated connection
//! (not from the pool): when the host dies or its connection drops, PostgreSQL releases the
//! lock and another host's next [`Leader::try_acquire`] succeeds. On SQLite (one host by
//! construction) the leader holds an exclusive `flock` on `<database>.<name>.leader`, which keeps
//! two daemons started on the same file from both running the jobs.

use std::fs::File;
use std::path::PathBuf;

use tokio_postgres::NoTls;

use super::{StoreError, StoreUrl};

/// A held leadership. Dropping it gives leadership up.
pub struct Leader {
    inner: Inner,
}

enum Inner {
    Postgres {
        client: tokio_postgres::Client,
        task: tokio::task::JoinHandle<()>,
        key: i64,
    },
    Sqlite {
        _file: Option<File>,
        path: Option<PathBuf>,
    },
}

/// The advisory lock key of a leadership name (FNV-1a, 64 bits).
pub fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("pecora-leader:{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Leader {
    /// Tries once to become the leader for `name` on the store at `url`. `Ok(None)` when
    /// another host (or handle) leads.
    pub async fn try_acquire(url: &str, name: &str) -> Result<Option<Leader>, StoreError> {
        match StoreUrl::parse(url)? {
            StoreUrl::Sqlite(path) if path == ":memory:" => Ok(Some(Leader {
                inner: Inner::Sqlite {
                    _file: None,
                    path: None,
                },
            })),
            StoreUrl::Sqlite(path) => {
                let tag: String = name
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(32)
                    .collect();
                let lock = PathBuf::from(format!("{path}.{tag}.leader"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock)
                    .map_err(|source| StoreError::Io {
                        path: lock.clone(),
                        source,
                    })?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(Leader {
                        inner: Inner::Sqlite {
                            _file: Some(file),
                            path: Some(lock),
                        },
                    })),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(source)) => {
                        Err(StoreError::Io { path: lock, source })
                    }
                }
            }
            StoreUrl::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "leader connection to PostgreSQL ended");
                    }
                });
                let key = lock_key(name);
                let got: bool = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await?
                    .try_get(0)?;
                if got {
                    Ok(Some(Leader {
                        inner: Inner::Postgres { client, task, key },
                    }))
                } else {
                    task.abort();
                    Ok(None)
                }
            }
        }
    }

    /// True while the leadership still holds: on PostgreSQL the connection is alive and the
    /// lock still ours. Check it before each leader-only job; on `false`, drop this handle
    /// and go back to trying.
    pub async fn still_leader(&self) -> bool {
        match &self.inner {
            Inner::Sqlite { .. } => true,
            Inner::Postgres { client, key, .. } => {
                if client.is_closed() {
                    return false;
                }
                let held = client
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                         AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1",
                        &[key],
                    )
                    .await;
                matches!(held.and_then(|r| r.try_get::<_, i64>(0)), Ok(n) if n > 0)
            }
        }
    }

    /// The PostgreSQL server process holding the lock (for operators and tests).
    pub async fn backend_pid(&self) -> Option<i32> {
        match &self.inner {
            Inner::Postgres { client, .. } => client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .ok()?
                .try_get(0)
                .ok(),
            Inner::Sqlite { .. } => None,
        }
    }

    /// The lock file, on SQLite.
    pub fn lock_file(&self) -> Option<&std::path::Path> {
        match &self.inner {
            Inner::Sqlite { path, .. } => path.as_deref(),
            Inner::Postgres { .. } => None,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Inner::Postgres { task, .. } = &self.inner {
            // Dropping the client closes the connection, which releases the lock; the task
            // ends with it.
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_name() {
        assert_ne!(lock_key("timers"), lock_key("retention"));
        assert_eq!(lock_key("timers"), lock_key("timers"));
    }
}
