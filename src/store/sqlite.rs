//! The SQLite backend: one connection in WAL mode with `synchronous=FULL`, used from
//! blocking tasks; appends run in `BEGIN IMMEDIATE` transactions, so the chain is
//! serialised even with other processes (the CLI) on the same file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::checkpoint::Checkpoint;
use super::model::*;
use super::sql::{self, Cols, Param};
use super::{RegistryBackend, SQLITE_MIGRATIONS, StoreError, chain};

/// Statements parsed once per connection and kept in rusqlite's statement cache, instead
/// of at every call: SQLite's parser had been 7 % of pecora's CPU at the access point.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// A `BEGIN IMMEDIATE` transaction on cached statements, for the paths every submission
/// takes (rusqlite's `Transaction` parses BEGIN and COMMIT at every call). Rolled back
/// when dropped uncommitted, as rusqlite's is.
struct Immediate<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl<'c> Immediate<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Immediate<'c>> {
        conn.exec("BEGIN IMMEDIATE", [])?;
        Ok(Immediate { conn, committed: false })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.exec("COMMIT", [])?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for Immediate<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.conn.is_autocommit() {
            let _ = self.conn.exec("ROLLBACK", []);
        }
    }
}

/// How many statements a connection keeps parsed (rusqlite's default is 16; pecora has
/// about 60, a dozen on the milter's path).
const STATEMENT_CACHE: usize = 128;

impl Cols for rusqlite::Row<'_> {
    fn i64_at(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn text_at(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_at(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn bytes_at(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
}

pub struct SqliteBackend {
    conn: Arc<Mutex<Connection>>,
    /// The schema version found at open, before migrating.
    migrated_from: i64,
    /// Records waiting for the group commit (see [`SqliteBackend::record`]).
    commits: Arc<Mutex<GroupCommit>>,
}

/// One record waiting for its commit, and where its outcome goes.
struct PendingRecord {
    rec: Record,
    seals: Vec<Option<String>>,
    now: DateTime<Utc>,
    host: String,
    done: tokio::sync::oneshot::Sender<Result<RecordOutcome, StoreError>>,
}

/// The group commit's queue: records that arrive while a commit is being written wait
/// for the next one, which takes them all in one transaction and one fsync.
#[derive(Default)]
struct GroupCommit {
    pending: Vec<PendingRecord>,
    /// A writer task is running and will take `pending`.
    writing: bool,
}

/// Most records one group commit takes.
const MAX_GROUP: usize = 256;

/// Should the writer panic: clears the writer flag and drops the records queued behind it,
/// so their callers get an error, never a wait without end.
struct WriterGuard(Arc<Mutex<GroupCommit>>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
            q.writing = false;
            q.pending.clear();
        }
    }
}

/// The group-commit writer: takes what is queued, writes it in one transaction, answers
/// each caller after the commit, until the queue is empty. It holds the connection only
/// while it writes (a weak reference otherwise), so a caller that drops the backend after
/// its answer closes the database then, as with a plain blocking task.
fn group_writer(conn: std::sync::Weak<Mutex<Connection>>, queue: Arc<Mutex<GroupCommit>>) {
    let _guard = WriterGuard(queue.clone());
    loop {
        let batch: Vec<PendingRecord> = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.pending.is_empty() {
                q.writing = false;
                return;
            }
            let n = q.pending.len().min(MAX_GROUP);
            q.pending.drain(..n).collect()
        };
        let answers = match conn.upgrade() {
            Some(conn) => match conn.lock() {
                Ok(mut c) => commit_group(&mut c, batch),
                Err(_) => fail_all(batch, &"SQLite connection poisoned"),
            },
            None => fail_all(batch, &"the registry was closed"),
        };
        for (done, outcome) in answers {
            let _ = done.send(outcome);
        }
    }
}

type Answer = (
    tokio::sync::oneshot::Sender<Result<RecordOutcome, StoreError>>,
    Result<RecordOutcome, StoreError>,
);

fn fail_all(batch: Vec<PendingRecord>, e: &dyn std::fmt::Display) -> Vec<Answer> {
    batch
        .into_iter()
        .map(|p| (p.done, Err(StoreError::Task(format!("SQLite commit: {e}")))))
        .collect()
}

/// Writes `batch` in one `BEGIN IMMEDIATE` transaction, each record in a savepoint of its
/// own (a record that fails is rolled back alone and its caller gets the error), then
/// commits once. The answers are sent by the caller after the commit is durable; an error
/// from the commit itself goes to every record of the batch.
fn commit_group(c: &mut Connection, batch: Vec<PendingRecord>) -> Vec<Answer> {
    let tx = match Immediate::begin(c) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, &e),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for p in &batch {
        // rusqlite's Savepoint would parse these three statements again for every record.
        let outcome = match tx.exec("SAVEPOINT record", []) {
            Ok(_) => match record_in(&tx, &p.rec, &p.seals, p.now, &p.host) {
                Ok(o) => tx.exec("RELEASE record", []).map(|_| o).map_err(StoreError::from),
                Err(e) => {
                    let _ = tx.exec("ROLLBACK TO record", []);
                    let _ = tx.exec("RELEASE record", []);
                    Err(e)
                }
            },
            Err(e) => Err(e.into()),
        };
        outcomes.push(outcome);
    }
    if let Err(e) = tx.commit() {
        return fail_all(batch, &e);
    }
    batch.into_iter().map(|p| p.done).zip(outcomes).collect()
}

/// One record inside the caller's transaction: the chained event (or the existing one for
/// a replayed idempotency key), its outbox rows and its state updates.
fn record_in(
    tx: &Connection,
    rec: &Record,
    seals: &[Option<String>],
    now: DateTime<Utc>,
    host: &str,
) -> Result<RecordOutcome, StoreError> {
    let (head_seq, head_hash): (i64, String) =
        tx.row(sql::SELECT_HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if let Some(key) = &rec.idempotency_key {
        let existing: Option<i64> = tx
            .row(sql::EVENT_BY_KEY, [key], |r| r.get(0))
            .optional()?;
        if let Some(seq) = existing {
            let mut stmt = tx.prepare_cached(sql::OUTBOX_IDS_OF_EVENT)?;
            let outbox_ids = collect(&mut stmt, [seq], |r| r.i64_at(0))?;
            return Ok(RecordOutcome {
                seq,
                outbox_ids,
                replayed: true,
                unmatched_updates: 0,
            });
        }
    }
    let row = chain::seal(
        &rec.event,
        head_seq,
        &head_hash,
        now,
        host,
        rec.idempotency_key.as_deref(),
    );
    let mut values = sql::event_params(&row);
    values.remove(0);
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&row.seq];
    bound.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
    tx.exec(sql::INSERT_EVENT, bound.as_slice())?;
    tx.exec(sql::UPDATE_HEAD, params![row.seq, row.hash])?;
    let now_s = ts(now);
    let mut outbox_ids = Vec::new();
    for (i, m) in rec.outbox.iter().enumerate() {
        let seal = seals.get(i).cloned().flatten();
        let status = if m.hold_for_queue_id.is_some() {
            "held"
        } else {
            "pending"
        };
        let id: i64 = tx.row(
            sql::INSERT_OUTBOX,
            params![
                row.seq,
                m.kind,
                m.mail_from,
                json_list(&m.rcpts),
                m.message,
                status,
                m.hold_for_queue_id,
                now_s,
                seal
            ],
            |r| r.get(0),
        )?;
        outbox_ids.push(id);
    }
    let mut unmatched_updates = 0;
    for u in &rec.state {
        if apply_state(tx, u, &now_s)? == 0 {
            unmatched_updates += 1;
        }
    }
    Ok(RecordOutcome {
        seq: row.seq,
        outbox_ids,
        replayed: false,
        unmatched_updates,
    })
}

fn collect<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(map(r)?);
    }
    Ok(out)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteBackend {
    /// Opens `path` (`:memory:` for a private in-memory database) and migrates it.
    pub async fn open(path: &str) -> Result<SqliteBackend, StoreError> {
        let path = path.to_string();
        let conn = tokio::task::spawn_blocking(move || -> Result<(Connection, i64), StoreError> {
            let mut conn = if path == ":memory:" {
                Connection::open_in_memory()?
            } else {
                Connection::open(&path)?
            };
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            let _mode: String = conn.row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
            let from = migrate(&mut conn)?;
            Ok((conn, from))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let (conn, migrated_from) = conn;
        Ok(SqliteBackend {
            conn: Arc::new(Mutex::new(conn)),
            migrated_from,
            commits: Arc::default(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("SQLite connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Migrates; returns the schema version found before.
fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = tx.row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = SQLITE_MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for m in SQLITE_MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql)?;
        tx.exec(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, ts(Utc::now())],
        )?;
    }
    tx.commit()?;
    Ok(current)
}

/// Applies one state update; returns the rows it touched.
fn apply_state(
    tx: &Connection,
    u: &StateUpdate,
    now: &str,
) -> Result<usize, StoreError> {
    Ok(match u {
        StateUpdate::Accepted {
            pec_id,
            client_msgid,
            sender,
            subject,
            queue_id,
            event_time,
            recipients,
        } => {
            let n = tx.exec(
                sql::INSERT_TRANSACTION,
                params![
                    pec_id,
                    client_msgid,
                    sender,
                    subject.as_deref().map(clean),
                    queue_id,
                    ts(event_time.with_timezone(&Utc)),
                    event_time.format("%:z").to_string(),
                    now
                ],
            )?;
            for r in recipients {
                tx.exec(
                    sql::INSERT_RECIPIENT,
                    params![pec_id, r.address, r.kind.as_str()],
                )?;
            }
            n.max(1)
        }
        StateUpdate::EnvelopeSent { pec_id, at } => {
            tx.exec(sql::ENVELOPE_SENT, params![pec_id, ts(*at)])?
        }
        StateUpdate::TakenInCharge {
            pec_id,
            recipient,
            at,
        } => tx.exec(
            &sql::recipient_stamp("taken_in_charge_at"),
            params![pec_id, recipient, ts(*at)],
        )?,
        StateUpdate::Delivered {
            pec_id,
            recipient,
            at,
        } => tx.exec(
            &sql::recipient_stamp("delivered_at"),
            params![pec_id, recipient, ts(*at)],
        )?,
        StateUpdate::Failed {
            pec_id,
            recipient,
            at,
            reason,
        } => tx.exec(
            sql::RECIPIENT_FAILED,
            params![pec_id, recipient, ts(*at), clean(reason)],
        )?,
        StateUpdate::NoticeSent {
            pec_id,
            recipient,
            notice,
            at,
        } => {
            let col = match notice {
                NoticeKind::TwelveHours => "notice_12h_at",
                NoticeKind::TwentyFourHours => "notice_24h_at",
            };
            tx.exec(
                &sql::recipient_stamp(col),
                params![pec_id, recipient, ts(*at)],
            )?
        }
    })
}

#[async_trait]
impl RegistryBackend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(
                c.row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    async fn record(
        &self,
        rec: &Record,
        seals: &[Option<String>],
        now: DateTime<Utc>,
        host: &str,
    ) -> Result<RecordOutcome, StoreError> {
        // Group commit: concurrent records share one transaction and one fsync; each
        // caller still hears its outcome only once its record is durable.
        let (done, outcome) = tokio::sync::oneshot::channel();
        let pending = PendingRecord {
            rec: rec.clone(),
            seals: seals.to_vec(),
            now,
            host: host.to_string(),
            done,
        };
        let start_writer = {
            let mut q = self.commits.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push(pending);
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            let (conn, queue) = (Arc::downgrade(&self.conn), self.commits.clone());
            tokio::task::spawn_blocking(move || group_writer(conn, queue));
        }
        outcome
            .await
            .map_err(|_| StoreError::Task("the registry writer stopped".into()))?
    }

    async fn events_after(&self, after_seq: i64, n: usize) -> Result<Vec<EventRow>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql::events_after())?;
            collect(&mut stmt, params![after_seq, limit(n)], |r| {
                sql::event_row(r)
            })
        })
        .await
    }

    async fn event(&self, seq: i64) -> Result<Option<EventRow>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::event_by_seq())?;
            Ok(collect(&mut stmt, [seq], |r| sql::event_row(r))?
                .into_iter()
                .next())
        })
        .await
    }

    async fn chain_head(&self) -> Result<(i64, String), StoreError> {
        self.run(|c| Ok(c.row(sql::SELECT_HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))?))
            .await
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<i64, StoreError> {
        let cp = cp.clone();
        self.run(move |c| {
            Ok(c.row(
                sql::INSERT_CHECKPOINT,
                params![
                    cp.seq,
                    cp.head_hash,
                    cp.created_at,
                    cp.host,
                    cp.content,
                    cp.cms
                ],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(&sql::checkpoints())?;
            collect(&mut stmt, [], |r| sql::checkpoint_row(r))
        })
        .await
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(&sql::latest_checkpoint())?;
            Ok(collect(&mut stmt, [], |r| sql::checkpoint_row(r))?
                .into_iter()
                .next())
        })
        .await
    }

    async fn search(&self, q: &SearchQuery) -> Result<Vec<EventRow>, StoreError> {
        let (text, params) = sql::search(q);
        self.run(move |c| {
            let mut stmt = c.prepare(&text)?;
            let bound: Vec<Box<dyn rusqlite::ToSql>> = params
                .into_iter()
                .map(|p| -> Box<dyn rusqlite::ToSql> {
                    match p {
                        Param::Text(s) => Box::new(s),
                        Param::Int(i) => Box::new(i),
                    }
                })
                .collect();
            collect(&mut stmt, rusqlite::params_from_iter(bound.iter()), |r| {
                sql::event_row(r)
            })
        })
        .await
    }

    async fn events_by_identifier(&self, id: &str) -> Result<Vec<EventRow>, StoreError> {
        let id = id.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::events_by_identifier())?;
            let pattern = sql::json_element_pattern(&id);
            collect(&mut stmt, params![id, pattern], |r| sql::event_row(r))
        })
        .await
    }

    async fn events_of_pec_id(&self, pec_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let pec_id = pec_id.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::events_of_pec_id())?;
            collect(&mut stmt, [pec_id], |r| sql::event_row(r))
        })
        .await
    }

    async fn events_of_queue_id(&self, queue_id: &str) -> Result<Vec<EventRow>, StoreError> {
        let queue_id = queue_id.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql::events_of_queue_id())?;
            collect(&mut stmt, [queue_id], |r| sql::event_row(r))
        })
        .await
    }

    async fn events_of_type_between(
        &self,
        kind: EventType,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        after_seq: i64,
        n: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql::events_of_type_between())?;
            collect(&mut stmt, params![ts(from), ts(until), kind.as_str(), after_seq, limit(n)], |r| sql::event_row(r))
        })
        .await
    }

    async fn first_seq_recorded_since(&self, t: DateTime<Utc>) -> Result<Option<i64>, StoreError> {
        self.run(move |c| Ok(c.row(sql::FIRST_SEQ_SINCE, [ts(t)], |r| r.get(0))?))
            .await
    }

    async fn purge(&self, cut_seq: i64, cutoff: DateTime<Utc>) -> Result<PurgeReport, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let cutoff = ts(cutoff);
            let quarantine_paths = {
                let mut stmt = tx.prepare_cached(sql::QUARANTINE_PATHS_BEFORE)?;
                collect(&mut stmt, [&cutoff], |r| r.text_at(0))?
            };
            let report = PurgeReport {
                cut_seq,
                events: tx.exec(sql::PURGE_EVENTS, [cut_seq])? as u64,
                checkpoints: tx.exec(sql::PURGE_CHECKPOINTS, [cut_seq])? as u64,
                outbox: tx.exec(sql::PURGE_OUTBOX, [cut_seq])? as u64,
                transactions: {
                    tx.exec(sql::PURGE_RECIPIENTS, [&cutoff])?;
                    tx.exec(sql::PURGE_TRANSACTIONS, [&cutoff])? as u64
                },
                quarantine: tx.exec(sql::PURGE_QUARANTINE, [&cutoff])? as u64,
                quarantine_paths,
            };
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    async fn next_unique(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Ok(c.row(
                "UPDATE unique_counter SET value = value + 1 WHERE id = 1 RETURNING value",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn outbox_claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let owner = owner.to_string();
        self.run(move |c| {
            let tx = Immediate::begin(c)?;
            let mut out = {
                let mut stmt = tx.prepare_cached(&sql::claim(""))?;
                collect(
                    &mut stmt,
                    params![owner, ts(after(now, lease)), ts(now), limit(n)],
                    |r| sql::outbox_row(r),
                )?
            };
            tx.commit()?;
            out.sort_by_key(|m| (m.next_attempt_at.clone(), m.id));
            Ok(out)
        })
        .await
    }

    async fn outbox_mark_sent(
        &self,
        id: i64,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        self.run(move |c| Ok(c.exec(sql::MARK_SENT, params![id, owner, ts(now)])? == 1))
            .await
    }

    async fn outbox_mark_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_string();
        let error = clean(error);
        self.run(move |c| {
            Ok(match retry_at {
                Some(t) => c.exec(sql::MARK_RETRY, params![id, owner, ts(t), error])?,
                None => c.exec(sql::MARK_FAILED, params![id, owner, error])?,
            } == 1)
        })
        .await
    }

    async fn outbox_release_held(
        &self,
        host: &str,
        queue_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (q, host) = (queue_id.to_string(), host.to_string());
        self.run(move |c| Ok(c.exec(sql::RELEASE_HELD, params![q, ts(now), host])? as u64))
            .await
    }

    async fn outbox_release_held_many(
        &self,
        host: &str,
        queue_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<u64>, StoreError> {
        let (queue_ids, host) = (queue_ids.to_vec(), host.to_string());
        self.run(move |c| {
            let tx = Immediate::begin(c)?;
            let mut released = Vec::with_capacity(queue_ids.len());
            for q in &queue_ids {
                released.push(tx.exec(sql::RELEASE_HELD, params![q, ts(now), host])? as u64);
            }
            tx.commit()?;
            Ok(released)
        })
        .await
    }

    async fn outbox_cancel_held(&self, host: &str, queue_id: &str, reason: &str) -> Result<u64, StoreError> {
        let (q, reason, host) = (queue_id.to_string(), clean(reason), host.to_string());
        self.run(move |c| Ok(c.exec(sql::CANCEL_HELD, params![q, reason, host])? as u64))
            .await
    }

    async fn outbox_release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        self.run(move |c| Ok(c.exec(sql::RELEASE_OWN_LEASES, params![owner])? as u64)).await
    }

    async fn outbox_held_queue_ids(&self, host: &str) -> Result<Vec<(String, String)>, StoreError> {
        let host = host.to_string();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::HELD_QUEUE_IDS)?;
            collect(&mut stmt, [host], |r| Ok((r.text_at(0)?, r.text_at(1)?)))
        })
        .await
    }

    async fn outbox_held_by_host(&self) -> Result<Vec<(String, i64, String)>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(sql::HELD_BY_HOST)?;
            collect(&mut stmt, [], |r| Ok((r.text_at(0)?, r.i64_at(1)?, r.text_at(2)?)))
        })
        .await
    }

    fn migrated_from(&self) -> i64 {
        self.migrated_from
    }

    async fn outbox_queued(&self) -> Result<Vec<OutboxMessage>, StoreError> {
        self.run(|c| {
            let mut stmt = c.prepare(&sql::outbox_queued())?;
            collect(&mut stmt, [], |r| sql::outbox_row(r))
        })
        .await
    }

    async fn outbox_refused_since(&self, since: DateTime<Utc>) -> Result<Vec<OutboxMessage>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::outbox_refused_since())?;
            collect(&mut stmt, params![ts(since)], |r| sql::outbox_row(r))
        })
        .await
    }

    async fn outbox_set_seal(&self, id: i64, seal: &str) -> Result<bool, StoreError> {
        let seal = seal.to_string();
        self.run(move |c| Ok(c.exec(sql::SET_SEAL, params![id, seal])? == 1)).await
    }

    async fn outbox_with_status(&self, status: OutboxStatus, n: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::outbox_with_status())?;
            collect(&mut stmt, params![status.as_str(), limit(n)], |r| sql::outbox_row(r))
        })
        .await
    }

    async fn outbox_retry_failed(&self, id: i64, seal: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let seal = seal.to_string();
        self.run(move |c| Ok(c.exec(sql::RETRY_FAILED, params![id, ts(now), seal])? == 1)).await
    }

    async fn outbox_get(&self, id: i64) -> Result<Option<OutboxMessage>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::outbox_by_id())?;
            Ok(collect(&mut stmt, [id], |r| sql::outbox_row(r))?
                .into_iter()
                .next())
        })
        .await
    }

    async fn due_notices(
        &self,
        notice: NoticeKind,
        sent_before: DateTime<Utc>,
    ) -> Result<Vec<DueNotice>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare(&sql::due_notices(notice == NoticeKind::TwelveHours))?;
            collect(&mut stmt, [ts(sent_before)], |r| sql::due_row(r))
        })
        .await
    }

    async fn transaction(&self, pec_id: &str) -> Result<Option<TransactionState>, StoreError> {
        let pec_id = pec_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql::TRANSACTION_BY_ID)?;
            let mut found = collect(&mut stmt, [&pec_id], |r| {
                Ok(TransactionState {
                    pec_id: r.text_at(0)?,
                    client_msgid: r.opt_at(1)?,
                    sender: r.text_at(2)?,
                    subject: r.opt_at(3)?,
                    queue_id: r.opt_at(4)?,
                    event_time: r.text_at(5)?,
                    event_zone: r.text_at(6)?,
                    accepted_at: r.opt_at(7)?,
                    envelope_sent_at: r.opt_at(8)?,
                    recipients: Vec::new(),
                })
            })?;
            let Some(mut t) = found.pop() else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(sql::RECIPIENTS_OF)?;
            t.recipients = collect(&mut stmt, [&pec_id], |r| sql::recipient_row(r))?;
            Ok(Some(t))
        })
        .await
    }

    async fn quarantine_add(
        &self,
        q: &NewQuarantine,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let q = q.clone();
        self.run(move |c| {
            Ok(c.row(
                sql::INSERT_QUARANTINE,
                params![q.pec_id, clean(&q.reason), q.path, q.content, ts(now)],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(c: &Connection) -> i64 {
        c.row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn an_immediate_transaction_commits_or_rolls_back_when_dropped() {
        let c = Connection::open_in_memory().unwrap();
        c.exec("CREATE TABLE t (x INTEGER)", []).unwrap();
        {
            let tx = Immediate::begin(&c).unwrap();
            tx.exec("INSERT INTO t VALUES (1)", []).unwrap();
            // dropped uncommitted
        }
        assert!(c.is_autocommit(), "the transaction was left open");
        assert_eq!(count(&c), 0);
        let tx = Immediate::begin(&c).unwrap();
        tx.exec("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&c), 1);
        // A second BEGIN inside an open one fails, and leaves the first untouched.
        let tx = Immediate::begin(&c).unwrap();
        assert!(Immediate::begin(&c).is_err());
        tx.exec("INSERT INTO t VALUES (3)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&c), 2);
    }
}
