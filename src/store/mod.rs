//! The registry (pec-format.md §7.4) and the operational state around it.
//!
//! One [`Store`] over one of two backends, chosen by URL: SQLite (`sqlite:/path/file.db`,
//! the default; `sqlite::memory:` for tests) or PostgreSQL (`postgres://user:pass@host/db`),
//! which several pecora hosts can share. Both are created and upgraded by the versioned
//! migrations in `migrations/`.
//!
//! Tables (chained, append-only): `registry_events` (one row per event, each carrying the
//! hash of the previous row), `registry_chain_head`, `registry_checkpoints` (signed chain
//! heads). Operational, changed by design and not chained: `transaction_state`,
//! `recipient_state` (per-envelope and per-recipient progress the timers read),
//! `outbox_messages` (every generated message, written with its event before any submission
//! attempt), `quarantine_entries`.
//!
//! No function here reads the clock: every operation takes `now`.

pub mod chain;
pub mod checkpoint;
pub mod counts;
pub mod failpoint;
pub mod leader;
pub mod model;
pub mod outbox;
pub mod seal;
mod postgres;
mod sql;
mod sqlite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use chain::{GENESIS, Problem};
pub use checkpoint::{Checkpoint, CheckpointVerifier};
pub use leader::Leader;
pub use model::*;

use crate::pec::sign::Signer;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL {0:?}: use sqlite:/path/file.db or postgres://user@host/db")]
    BadUrl(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error("corrupt value in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("the registry does not verify: {0}")]
    Tampered(Problem),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store task failed: {0}")]
    Task(String),
    #[error("the registry schema is version {found}, newer than this pecora knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
}

/// One versioned migration.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("migrations/sqlite/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "outbox_seal",
        sql: include_str!("migrations/sqlite/0002_outbox_seal.sql"),
    },
];

pub(crate) const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry",
        sql: include_str!("migrations/postgres/0001_registry.sql"),
    },
    Migration {
        version: 2,
        name: "outbox_seal",
        sql: include_str!("migrations/postgres/0002_outbox_seal.sql"),
    },
];

/// The schema version that brought outbox seals.
pub const SEAL_MIGRATION: i64 = 2;

/// The operations each backend implements; [`Store`] adds the logic common to both
/// (verification, checkpoints, retention). Every call is one database transaction.
#[async_trait]
pub trait RegistryBackend: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn kind(&self) -> &'static str;
    /// The schema version after migrations.
    async fn schema_version(&self) -> Result<i64, StoreError>;
    /// Appends the event (chained), its outbox messages and state updates atomically;
    /// with a known idempotency key writes nothing and returns the earlier result.
    /// `seals[i]` is the seal of `rec.outbox[i]` (see [`seal`]).
    async fn record(
        &self,
        rec: &Record,
        seals: &[Option<String>],
        now: DateTime<Utc>,
        host: &str,
    ) -> Result<RecordOutcome, StoreError>;
    /// The schema version found when this handle opened the database, before migrating.
    fn migrated_from(&self) -> i64;
    /// Pending or held outbox rows (what is still to be injected), sealed or not, with an
    /// empty `message` ([`RegistryBackend::outbox_get`] reads one whole).
    async fn outbox_queued(&self) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Rows created at `since` or later that the worker refused to inject for their seal,
    /// with an empty `message`.
    async fn outbox_refused_since(&self, since: DateTime<Utc>) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Sets the seal of a row that has none; whether it did.
    async fn outbox_set_seal(&self, id: i64, seal: &str) -> Result<bool, StoreError>;
    /// Rows of `status`, the newest first, at most `limit`, with an empty `message`.
    async fn outbox_with_status(&self, status: OutboxStatus, limit: usize) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Puts a failed row back in the queue, due at `now`, with `seal`; whether it was failed.
    async fn outbox_retry_failed(&self, id: i64, seal: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    async fn events_after(&self, after_seq: i64, limit: usize)
    -> Result<Vec<EventRow>, StoreError>;
    async fn event(&self, seq: i64) -> Result<Option<EventRow>, StoreError>;
    /// The stored chain head: last seq and hash.
    async fn chain_head(&self) -> Result<(i64, String), StoreError>;
    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<i64, StoreError>;
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    async fn search(&self, q: &SearchQuery) -> Result<Vec<EventRow>, StoreError>;
    /// Rows whose PEC id, client msgid, queue id or a generated id equals `id`.
    async fn events_by_identifier(&self, id: &str) -> Result<Vec<EventRow>, StoreError>;
    async fn events_of_pec_id(&self, pec_id: &str) -> Result<Vec<EventRow>, StoreError>;
    /// Rows recorded under exactly this Postfix queue id (unlike [`events_by_identifier`],
    /// which also matches ids a sender chose), oldest first.
    ///
    /// [`events_by_identifier`]: RegistryBackend::events_by_identifier
    async fn events_of_queue_id(&self, queue_id: &str) -> Result<Vec<EventRow>, StoreError>;
    /// Rows of one type recorded in `[from, until)` after `after_seq`, oldest first, at
    /// most `limit`.
    async fn events_of_type_between(
        &self,
        kind: EventType,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError>;
    /// The smallest seq recorded at or after `t`.
    async fn first_seq_recorded_since(&self, t: DateTime<Utc>) -> Result<Option<i64>, StoreError>;
    /// Removes rows up to `cut_seq`, checkpoints before it, and operational rows older than
    /// `cutoff`.
    async fn purge(&self, cut_seq: i64, cutoff: DateTime<Utc>) -> Result<PurgeReport, StoreError>;
    /// A number never returned before by any host sharing this store.
    async fn next_unique(&self) -> Result<i64, StoreError>;
    /// Leases up to `limit` due messages to `owner` until `now + lease`.
    async fn outbox_claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// False when `owner` no longer holds the message (its lease expired and another took it).
    async fn outbox_mark_sent(
        &self,
        id: i64,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// `retry_at: Some`: try again then; `None`: give up (status `failed`).
    async fn outbox_mark_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;
    /// Releases the messages `host` holds for `queue_id`; returns how many. (A queue id is
    /// unique on one host only: another host sharing the registry may hold its own.)
    async fn outbox_release_held(
        &self,
        host: &str,
        queue_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Releases the messages held for each of `queue_ids`, in one transaction where the
    /// backend can (one fsync for all the queue ids one read of the mail log confirmed);
    /// returns how many for each, in order.
    async fn outbox_release_held_many(
        &self,
        host: &str,
        queue_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut released = Vec::with_capacity(queue_ids.len());
        for q in queue_ids {
            released.push(self.outbox_release_held(host, q, now).await?);
        }
        Ok(released)
    }
    /// Cancels the messages `host` holds for `queue_id`; returns how many.
    async fn outbox_cancel_held(&self, host: &str, queue_id: &str, reason: &str) -> Result<u64, StoreError>;
    /// Ends the leases `owner` holds: called by a worker when it starts, so that what a
    /// crashed process of the same host had claimed is sent again at once rather than
    /// after the lease. Only one worker per owner name may run.
    async fn outbox_release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// The queue ids that `host` holds messages for, each with its oldest `created_at`.
    async fn outbox_held_queue_ids(&self, host: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Held rows of every host: (host, rows, the oldest row's creation time).
    async fn outbox_held_by_host(&self) -> Result<Vec<(String, i64, String)>, StoreError>;
    async fn outbox_get(&self, id: i64) -> Result<Option<OutboxMessage>, StoreError>;
    /// Recipients due for `notice`: envelope sent at or before `sent_before` (see
    /// [`Store::due_notices`]).
    async fn due_notices(
        &self,
        notice: NoticeKind,
        sent_before: DateTime<Utc>,
    ) -> Result<Vec<DueNotice>, StoreError>;
    async fn transaction(&self, pec_id: &str) -> Result<Option<TransactionState>, StoreError>;
    async fn quarantine_add(
        &self,
        q: &NewQuarantine,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
}

/// The registry handle: cheap to clone, shared by the milter, the workers and the CLI.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn RegistryBackend>,
    host: String,
    url: String,
    /// Seals the outbox rows this handle writes, and lets the worker check them. Shared by
    /// every clone, so a reload that brings a new signing key reaches them all
    /// ([`Store::rotate_outbox_key`]).
    outbox_keys: Option<Arc<std::sync::RwLock<Arc<seal::OutboxKeys>>>>,
    /// Wakes this process's outbox worker when a message becomes due (recorded, or released
    /// from a hold), so it need not wait for its next poll.
    outbox_due: Arc<tokio::sync::Notify>,
    /// Told what this handle wrote and refused (the daemon's metrics); see [`Observer`].
    observer: Option<Arc<dyn Observer>>,
}

/// Whoever counts what the store does (the daemon's metrics, `crate::runtime::metrics`):
/// the store tells it, and knows nothing of what it does with that.
pub trait Observer: Send + Sync {
    /// An outbox message of `kind` (accettazione, avvenuta-consegna, alert-email...) was
    /// recorded with its event (not on a replay of the same record).
    fn outbox_recorded(&self, kind: &str);
    /// A timer notice was recorded, for the deadline `deadline` (`12h`, `24h`).
    fn timer_notice_recorded(&self, deadline: &str);
    /// The outbox worker did not inject a row: `reason` is `unsealed` or `bad-seal`.
    fn outbox_row_refused(&self, reason: &str);
}

/// How the two URL forms map to backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A file path, or `:memory:`.
    Sqlite(String),
    Postgres(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            Ok(StoreUrl::Sqlite(path.to_string()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(url.to_string()))
        } else {
            Err(StoreError::BadUrl(url.to_string()))
        }
    }
}

/// What [`Store::outbox_retry`] did.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    /// Back in the queue (the row as it was).
    Queued(OutboxMessage),
    NotFound,
    /// Not a failed row: only those are retried.
    NotFailed(OutboxStatus),
    /// No configured key verifies its seal: pecora did not queue it, or the key that did is
    /// not listed.
    Unsealed,
    /// The handle has no outbox key.
    NoKey,
}

/// The result of [`Store::outbox_seal_report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Rows still to be injected (pending or held).
    pub queued: usize,
    /// Of those, the rows only a previous key's seal covers.
    pub by_previous_key: usize,
    /// Of those, the ids of the rows no key's seal covers: the worker will refuse them.
    pub unverifiable: Vec<i64>,
    /// Ids of the rows the worker refused for their seal, since the time asked about.
    pub refused: Vec<i64>,
}

/// The result of [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    pub first_seq: Option<i64>,
    pub last_seq: i64,
    /// The verified starting point: 0 (the first row ever) or the retention cut.
    pub anchor_seq: i64,
    /// Signed checkpoints the chain was checked against.
    pub checkpoints_checked: usize,
    /// Checkpoints older than the anchor (their rows are purged), not checked.
    pub checkpoints_before_anchor: usize,
    /// True when checkpoint signatures were checked (a certificate was given).
    pub signatures_checked: bool,
    /// Rows after the last checkpoint: no signature covers them.
    pub unsigned_tail: i64,
    /// The first problem, or `None` when everything holds.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Rows read per page while verifying.
const PAGE: usize = 5_000;

impl Store {
    /// Opens (creating when needed) the store at `url` and brings its schema up to date.
    /// The host name recorded in rows is this machine's name; see [`Store::with_host`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let backend: Arc<dyn RegistryBackend> = match StoreUrl::parse(url)? {
            StoreUrl::Sqlite(path) => Arc::new(sqlite::SqliteBackend::open(&path).await?),
            StoreUrl::Postgres(url) => Arc::new(postgres::PgBackend::open(&url).await?),
        };
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string());
        Ok(Store {
            backend,
            host,
            url: url.to_string(),
            outbox_keys: None,
            outbox_due: Arc::new(tokio::sync::Notify::new()),
            observer: None,
        })
    }

    /// Tells `observer` what this handle (and its clones) record and refuse.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Store {
        self.observer = Some(observer);
        self
    }

    /// The observer set with [`Store::with_observer`], if any.
    pub(crate) fn observer(&self) -> Option<&dyn Observer> {
        self.observer.as_deref()
    }

    /// Names the host in the rows this handle writes (and in its outbox leases).
    pub fn with_host(mut self, host: impl Into<String>) -> Store {
        self.host = host.into();
        self
    }

    /// The rows this host wrote that carry Postfix queue id `queue_id`. A queue id is
    /// unique on one host only (Postfix's short ids come from an inode number and the
    /// time): in a registry several hosts share, another host's row with the same id is
    /// another message, and must not be cancelled or bound to a bounce here.
    pub async fn events_of_queue_id(&self, queue_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let mut rows = self.backend.events_of_queue_id(queue_id).await?;
        rows.retain(|r| r.host == self.host);
        Ok(rows)
    }

    /// Seals every outbox row this handle writes with `key`, and makes the outbox worker
    /// of this handle inject only rows whose seal verifies (see [`seal`]).
    pub fn with_outbox_key(self, key: seal::OutboxKey) -> Store {
        self.with_outbox_keys(seal::OutboxKeys::new(key, Vec::new()))
    }

    /// [`Store::with_outbox_key`], where the seals of previous signing keys also verify.
    pub fn with_outbox_keys(mut self, keys: seal::OutboxKeys) -> Store {
        self.outbox_keys = Some(Arc::new(std::sync::RwLock::new(Arc::new(keys))));
        self
    }

    /// The keys outbox rows are sealed and checked with, when set.
    pub fn outbox_keys(&self) -> Option<Arc<seal::OutboxKeys>> {
        self.outbox_keys.as_ref().map(|k| k.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// After a reload: rows are sealed with `next` from now on, for this handle and every
    /// clone, while the seals of the keys this process sealed with (and of `configured`, the
    /// configured previous keys) still verify ([`seal::OutboxKeys::rotated`]). Returns
    /// whether the sealing key changed and how many keys verify no more; nothing is done when
    /// no key was set.
    pub fn rotate_outbox_key(&self, next: seal::OutboxKey, configured: Vec<seal::OutboxKey>) -> (bool, usize) {
        let Some(lock) = &self.outbox_keys else { return (false, 0) };
        let mut keys = lock.write().unwrap_or_else(|p| p.into_inner());
        let changed = *keys.current() != next;
        let rotated = keys.rotated(next, configured);
        let revoked = keys.revoked_in(&rotated);
        *keys = Arc::new(rotated);
        (changed, revoked)
    }

    /// At the upgrade that brought seals: when this handle itself migrated the schema from
    /// before seals, seals the rows the older version left pending or held (they are ours:
    /// nobody had a chance to add any since the migration). Later, never: an unsealed row
    /// is then refused at injection. Returns how many rows it sealed.
    pub async fn seal_unsealed(&self) -> Result<usize, StoreError> {
        let Some(key) = self.outbox_keys() else { return Ok(0) };
        if self.backend.migrated_from() >= SEAL_MIGRATION {
            return Ok(0);
        }
        let mut n = 0;
        // One message in memory at a time.
        for listed in self.backend.outbox_queued().await?.into_iter().filter(|m| m.seal.is_none()) {
            let Some(m) = self.backend.outbox_get(listed.id).await? else { continue };
            let s = key.seal(&m.kind, &m.mail_from, &m.rcpts, &m.message);
            if self.backend.outbox_set_seal(m.id, &s).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// What the outbox's seals say now, for `pecora doctor`: the queued rows each key
    /// verifies, the queued rows none does (the worker will refuse them), and the rows
    /// refused since `since`. `None` when this handle has no outbox key.
    pub async fn outbox_seal_report(&self, since: DateTime<Utc>) -> Result<Option<SealReport>, StoreError> {
        let Some(keys) = self.outbox_keys() else { return Ok(None) };
        let mut report = SealReport::default();
        for listed in self.backend.outbox_queued().await? {
            // One message in memory at a time; a row sent meanwhile no longer counts.
            let Some(m) = self.backend.outbox_get(listed.id).await? else { continue };
            if !matches!(m.status, OutboxStatus::Pending | OutboxStatus::Held) {
                continue;
            }
            report.queued += 1;
            match keys.verify_row(&m) {
                Some(seal::SealedBy::Current) => {}
                Some(seal::SealedBy::Previous) => report.by_previous_key += 1,
                None => report.unverifiable.push(m.id),
            }
        }
        report.refused = self.backend.outbox_refused_since(since).await?.into_iter().map(|m| m.id).collect();
        Ok(Some(report))
    }

    /// `pecora outbox retry`: puts the failed row `id` back in the queue, due now, when its
    /// seal shows pecora queued it (under the current key or a previous one; it is sealed
    /// again with the current key, so the daemon needs no previous key for it).
    pub async fn outbox_retry(&self, id: i64, now: DateTime<Utc>) -> Result<RetryOutcome, StoreError> {
        let Some(keys) = self.outbox_keys() else { return Ok(RetryOutcome::NoKey) };
        let Some(m) = self.backend.outbox_get(id).await? else { return Ok(RetryOutcome::NotFound) };
        if m.status != OutboxStatus::Failed {
            return Ok(RetryOutcome::NotFailed(m.status));
        }
        if keys.verify_row(&m).is_none() {
            return Ok(RetryOutcome::Unsealed);
        }
        let seal = keys.seal(&m.kind, &m.mail_from, &m.rcpts, &m.message);
        Ok(if self.backend.outbox_retry_failed(id, &seal, now).await? {
            self.outbox_wake();
            RetryOutcome::Queued(m)
        } else {
            // Changed meanwhile (another retry).
            RetryOutcome::NotFailed(self.backend.outbox_get(id).await?.map_or(OutboxStatus::Failed, |m| m.status))
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Tells this process's outbox worker that a message is due now.
    pub fn outbox_wake(&self) {
        self.outbox_due.notify_one();
    }

    /// Completes when [`Store::outbox_wake`] was called (since the last time it completed).
    pub async fn outbox_woken(&self) {
        self.outbox_due.notified().await;
    }

    /// The backend, for the primitive operations.
    pub fn backend(&self) -> &dyn RegistryBackend {
        self.backend.as_ref()
    }

    /// Records an event with its outbox messages and state updates in one transaction
    /// (see [`RegistryBackend::record`]).
    pub async fn record(
        &self,
        rec: &Record,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome, StoreError> {
        let keys = self.outbox_keys();
        let seals: Vec<Option<String>> = rec
            .outbox
            .iter()
            .map(|m| keys.as_ref().map(|k| k.seal(&m.kind, &m.mail_from, &m.rcpts, &m.message)))
            .collect();
        let outcome = self.backend.record(rec, &seals, now, &self.host).await?;
        if !outcome.replayed && rec.outbox.iter().any(|o| o.hold_for_queue_id.is_none()) {
            self.outbox_wake();
        }
        if let Some(m) = self.observer().filter(|_| !outcome.replayed) {
            for o in &rec.outbox {
                m.outbox_recorded(&o.kind);
            }
            match rec.event.event_type {
                EventType::TimerNotice12h => m.timer_notice_recorded("12h"),
                EventType::TimerNotice24h => m.timer_notice_recorded("24h"),
                _ => {}
            }
        }
        Ok(outcome)
    }

    /// Records a lone event.
    pub async fn append(
        &self,
        event: NewEvent,
        now: DateTime<Utc>,
    ) -> Result<RecordOutcome, StoreError> {
        let rec = Record {
            event,
            outbox: Vec::new(),
            state: Vec::new(),
            idempotency_key: None,
        };
        self.record(&rec, now).await
    }

    /// Recipients due for the 12 h notice (`min_age` = the 12 h timeout) or the 24 h
    /// notice (`min_age` = the earliest moment it may go, 22 h or more): `certificato`
    /// recipients whose envelope was sent at least `min_age` before `now`, with no delivery
    /// and no failure; for 12 h also no take-charge and no notice yet; for 24 h no 24 h
    /// notice yet.
    pub async fn due_notices(
        &self,
        notice: NoticeKind,
        now: DateTime<Utc>,
        min_age: Duration,
    ) -> Result<Vec<DueNotice>, StoreError> {
        self.backend.due_notices(notice, before(now, min_age)).await
    }

    /// The whole history of one message: every row sharing a PEC id with the rows that
    /// name `id` (a PEC id, client msgid, queue id or generated id; angle brackets ignored).
    pub async fn history(&self, id: &str) -> Result<Vec<EventRow>, StoreError> {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        let direct = self.backend.events_by_identifier(id).await?;
        let mut by_seq: BTreeMap<i64, EventRow> = BTreeMap::new();
        let mut pec_ids: Vec<String> = Vec::new();
        for r in direct {
            if let Some(p) = &r.pec_id
                && !pec_ids.contains(p)
            {
                pec_ids.push(p.clone());
            }
            by_seq.insert(r.seq, r);
        }
        for p in &pec_ids {
            for r in self.backend.events_of_pec_id(p).await? {
                by_seq.insert(r.seq, r);
            }
        }
        Ok(by_seq.into_values().collect())
    }

    /// Checks the whole chain: every row's hash, the links, the sequence, every checkpoint
    /// (from the table and from `extra`, e.g. an off-host copy of the exported files), the
    /// retention cut and the stored head. Without a verifier, checkpoint signatures are not
    /// checked (the report says so).
    pub async fn verify(
        &self,
        verifier: Option<&CheckpointVerifier>,
        extra: &[(String, Checkpoint)],
    ) -> Result<VerifyReport, StoreError> {
        let mut all: Vec<(String, Checkpoint)> = self
            .backend
            .checkpoints()
            .await?
            .into_iter()
            .map(|c| (format!("#{} (registry table, row {})", c.id, c.seq), c))
            .collect();
        all.extend(extra.iter().cloned());

        let mut report = VerifyReport {
            rows: 0,
            first_seq: None,
            last_seq: 0,
            anchor_seq: 0,
            checkpoints_checked: 0,
            checkpoints_before_anchor: 0,
            signatures_checked: verifier.is_some(),
            unsigned_tail: 0,
            problem: None,
        };

        let mut points: BTreeMap<i64, chain::TrustedPoint> = BTreeMap::new();
        for (source, cp) in &all {
            if let Some(v) = verifier
                && let Err(reason) = v.check(cp)
            {
                report.problem = Some(Problem::CheckpointForged {
                    source: source.clone(),
                    reason,
                });
                return Ok(report);
            }
            match points.get(&cp.seq) {
                Some(p) if p.hash != cp.head_hash => {
                    report.problem = Some(Problem::CheckpointsDisagree { seq: cp.seq });
                    return Ok(report);
                }
                Some(_) => {}
                None => {
                    points.insert(
                        cp.seq,
                        chain::TrustedPoint {
                            seq: cp.seq,
                            hash: cp.head_hash.clone(),
                            source: source.clone(),
                        },
                    );
                }
            }
        }

        let first = self
            .backend
            .events_after(i64::MIN, 1)
            .await?
            .into_iter()
            .next();
        report.first_seq = first.as_ref().map(|r| r.seq);
        let (anchor_seq, anchor_hash) = match &first {
            None => (0, GENESIS.to_string()),
            Some(r) if r.seq <= 1 => (0, GENESIS.to_string()),
            Some(r) => match points.get(&(r.seq - 1)) {
                Some(p) => (p.seq, p.hash.clone()),
                None => {
                    report.problem = Some(Problem::HeadMissing {
                        first_retained: r.seq,
                    });
                    return Ok(report);
                }
            },
        };
        report.anchor_seq = anchor_seq;
        report.checkpoints_before_anchor = points.range(..anchor_seq).count();
        let points: BTreeMap<i64, chain::TrustedPoint> = points.split_off(&anchor_seq);
        report.checkpoints_checked = points.range(anchor_seq + 1..).count();

        let mut walker = chain::Walker::new(anchor_seq, &anchor_hash, points);
        let mut after = i64::MIN;
        'pages: loop {
            let page = self.backend.events_after(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                if !walker.feed(r) {
                    break 'pages;
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        walker.finish();
        report.rows = walker.rows;
        report.last_seq = walker.last_seq;
        report.unsigned_tail = walker.unsigned_tail();
        if let Some(p) = walker.problem.take() {
            report.problem = Some(p);
            return Ok(report);
        }
        if anchor_seq > 0 && walker.purge_cut != Some(anchor_seq) {
            report.problem = Some(Problem::HeadMissing {
                first_retained: anchor_seq + 1,
            });
            return Ok(report);
        }
        let (head_seq, head_hash) = self.backend.chain_head().await?;
        if head_seq != walker.last_seq || (head_seq > 0 && head_hash != walker.last_hash) {
            report.problem = Some(Problem::HeadRecordMismatch {
                head_seq,
                last_seq: walker.last_seq,
            });
        }
        Ok(report)
    }

    /// Verifies the rows written since the latest checkpoint (whose signature is checked
    /// with the signer's certificate) and returns the head they lead to. A full walk when
    /// there is no checkpoint yet.
    async fn verified_head(&self, signer: &Signer) -> Result<(i64, String), StoreError> {
        let verifier = CheckpointVerifier::new(signer.own_certificates());
        let Some(cp) = self.backend.latest_checkpoint().await? else {
            let report = self.verify(Some(&verifier), &[]).await?;
            if let Some(p) = report.problem {
                return Err(StoreError::Tampered(p));
            }
            let seq = report.last_seq;
            let hash = match self.backend.event(seq).await? {
                Some(r) => r.hash,
                None => GENESIS.to_string(),
            };
            return Ok((seq, hash));
        };
        if let Err(reason) = verifier.check(&cp) {
            return Err(StoreError::Tampered(Problem::CheckpointForged {
                source: format!("#{} (registry table, row {})", cp.id, cp.seq),
                reason,
            }));
        }
        let mut walker = chain::Walker::new(cp.seq, &cp.head_hash, BTreeMap::new());
        let mut after = cp.seq;
        loop {
            let page = self.backend.events_after(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                if !walker.feed(r) {
                    break;
                }
            }
            if let Some(p) = walker.problem.take() {
                return Err(StoreError::Tampered(p));
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok((walker.last_seq, walker.last_hash))
    }

    /// Writes a checkpoint now: verifies the rows since the previous one, signs the head
    /// with the provider key, stores it and, with `export_dir`, writes its files there.
    pub async fn checkpoint(
        &self,
        signer: &Signer,
        now: DateTime<Utc>,
        export_dir: Option<&Path>,
    ) -> Result<Checkpoint, StoreError> {
        let (seq, hash) = self.verified_head(signer).await?;
        self.write_checkpoint(signer, seq, &hash, now, export_dir)
            .await
    }

    async fn write_checkpoint(
        &self,
        signer: &Signer,
        seq: i64,
        hash: &str,
        now: DateTime<Utc>,
        export_dir: Option<&Path>,
    ) -> Result<Checkpoint, StoreError> {
        let mut cp = checkpoint::sign(signer, seq, hash, now, &self.host)?;
        cp.id = self.backend.insert_checkpoint(&cp).await?;
        if let Some(dir) = export_dir {
            checkpoint::export(&cp, dir)?;
        }
        Ok(cp)
    }

    /// Writes a checkpoint when the latest one is at least `interval` old (or none exists).
    pub async fn checkpoint_if_due(
        &self,
        signer: &Signer,
        now: DateTime<Utc>,
        interval: Duration,
        export_dir: Option<&Path>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        if let Some(cp) = self.backend.latest_checkpoint().await?
            && let Some(t) = parse_ts(&cp.created_at)
            && t > before(now, interval)
        {
            return Ok(None);
        }
        self.checkpoint(signer, now, export_dir).await.map(Some)
    }

    /// The retention job: removes registry rows recorded more than `retention` before
    /// `now`, with the checkpoints, finished outbox messages, transaction state and
    /// quarantine entries (and their files) of that age.
    ///
    /// Before deleting it verifies the whole chain (a tampered registry is never purged, so
    /// a purge cannot launder an edit), writes a signed checkpoint at the last row to go,
    /// and appends a `retention-purge` row naming that cut, so verification afterwards
    /// starts from that checkpoint and knows the missing rows were purged, not deleted.
    pub async fn purge(
        &self,
        signer: &Signer,
        now: DateTime<Utc>,
        retention: Duration,
        export_dir: Option<&Path>,
    ) -> Result<PurgeReport, StoreError> {
        let cutoff = before(now, retention);
        let (head_seq, _) = self.backend.chain_head().await?;
        let cut = match self.backend.first_seq_recorded_since(cutoff).await? {
            Some(s) => s - 1,
            None => head_seq,
        };
        let first = self
            .backend
            .events_after(i64::MIN, 1)
            .await?
            .into_iter()
            .next();
        let already_gone = first.as_ref().map_or(head_seq, |r| r.seq - 1);
        let mut report = if cut > already_gone {
            let verifier = CheckpointVerifier::new(signer.own_certificates());
            let v = self.verify(Some(&verifier), &[]).await?;
            if let Some(p) = v.problem {
                return Err(StoreError::Tampered(p));
            }
            let row = self.backend.event(cut).await?.ok_or(StoreError::Corrupt {
                what: "registry_events",
                detail: format!("row {cut} vanished during the purge"),
            })?;
            self.write_checkpoint(signer, cut, &row.hash, now, export_dir)
                .await?;
            let mut ev = NewEvent::new(now.fixed_offset(), EventType::RetentionPurge);
            ev.details = serde_json::json!({ "cut_seq": cut, "cutoff": ts(cutoff) });
            let rec = Record {
                event: ev,
                outbox: Vec::new(),
                state: Vec::new(),
                idempotency_key: None,
            };
            self.record(&rec, now).await?;
            self.backend.purge(cut, cutoff).await?
        } else {
            // No registry row is old enough; operational rows may still be.
            self.backend.purge(already_gone.min(0), cutoff).await?
        };
        for p in &report.quarantine_paths {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %p, error = %e, "cannot remove quarantined file"),
            }
        }
        if cut <= already_gone {
            report.cut_seq = 0;
        }
        Ok(report)
    }

    /// Tries to become the leader (the one host that runs the timers and the retention
    /// job). `Ok(None)`: another host leads now; try again later.
    pub async fn try_lead(&self, name: &str) -> Result<Option<Leader>, StoreError> {
        Leader::try_acquire(&self.url, name).await
    }
}
