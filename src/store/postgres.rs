//! The PostgreSQL backend: a connection pool (deadpool) over tokio-postgres. Appends lock
//! the one-row `registry_chain_head` (`SELECT … FOR UPDATE`) inside their transaction, so
//! hosts sharing the database never fork the chain; outbox claims use
//! `FOR UPDATE SKIP LOCKED`, so two workers never take the same message.
//!
//! Connections are plain TCP or a UNIX socket (`host=/run/postgresql` in the URL); TLS to
//! the database is not supported yet.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::checkpoint::Checkpoint;
use super::model::*;
use super::sql::{self, Cols, Param, pg};
use super::{POSTGRES_MIGRATIONS, RegistryBackend, StoreError, chain};

/// Advisory lock key serialising migrations across hosts ("pecoramg").
const MIGRATION_LOCK: i64 = 0x7065_636f_7261_6d67;

impl Cols for tokio_postgres::Row {
    fn i64_at(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text_at(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_at(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn bytes_at(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

pub struct PgBackend {
    pool: Pool,
    /// How long opening one connection may take.
    connect_timeout: Duration,
    /// The schema version found at open, before migrating.
    migrated_from: i64,
}

fn pool_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pool(e.to_string())
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn rows<T>(
    rows: Vec<tokio_postgres::Row>,
    map: fn(&tokio_postgres::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

/// How long a new connection may take, TCP and PostgreSQL's start-up together, when the
/// URL sets no `connect_timeout`: a server that accepts and never answers (a hung host, a
/// wrong port behind a proxy) would otherwise hold pecora's start, and every milter session
/// that needs a fresh connection, for ever.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a free connection when all are in use: past it the milter
/// answers tempfail and Postfix retries, rather than sessions piling up behind a stuck
/// server.
const POOL_WAIT: Duration = Duration::from_secs(60);

impl PgBackend {
    pub async fn open(url: &str) -> Result<PgBackend, StoreError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        let connect_timeout = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        let mgr = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(pool_err)?;
        let mut backend = PgBackend { pool, connect_timeout, migrated_from: 0 };
        backend.migrated_from = backend.migrate().await?;
        Ok(backend)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => StoreError::Pool(format!(
                "PostgreSQL did not complete a connection within {:?} (connect_timeout in the store URL; default {DEFAULT_CONNECT_TIMEOUT:?})",
                self.connect_timeout
            )),
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                StoreError::Pool(format!("every PostgreSQL connection of the pool stayed busy for {POOL_WAIT:?}"))
            }
            other => pool_err(other),
        })
    }

    /// Migrates; returns the schema version found before.
    async fn migrate(&self) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             applied_at TEXT NOT NULL)",
        )
        .await?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        let known = POSTGRES_MIGRATIONS.last().map_or(0, |m| m.version);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for m in POSTGRES_MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &ts(Utc::now())],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(current)
    }

    async fn query(
        &self,
        text: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&pg(text)).await?;
        Ok(client.query(&stmt, params).await?)
    }

    async fn execute(&self, text: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&pg(text)).await?;
        Ok(client.execute(&stmt, params).await?)
    }
}

async fn apply_state(
    tx: &deadpool_postgres::Transaction<'_>,
    u: &StateUpdate,
    now: &str,
) -> Result<u64, StoreError> {
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
            let n = tx
                .execute(
                    &pg(sql::INSERT_TRANSACTION),
                    &[
                        &clean(pec_id),
                        &clean_opt(client_msgid),
                        &clean(sender),
                        &clean_opt(subject),
                        &clean_opt(queue_id),
                        &ts(event_time.with_timezone(&Utc)),
                        &event_time.format("%:z").to_string(),
                        &now,
                    ],
                )
                .await?;
            for r in recipients {
                tx.execute(
                    &pg(sql::INSERT_RECIPIENT),
                    &[&clean(pec_id), &clean(&r.address), &r.kind.as_str()],
                )
                .await?;
            }
            n.max(1)
        }
        StateUpdate::EnvelopeSent { pec_id, at } => {
            tx.execute(&pg(sql::ENVELOPE_SENT), &[pec_id, &ts(*at)])
                .await?
        }
        StateUpdate::TakenInCharge {
            pec_id,
            recipient,
            at,
        } => {
            tx.execute(
                &pg(&sql::recipient_stamp("taken_in_charge_at")),
                &[pec_id, recipient, &ts(*at)],
            )
            .await?
        }
        StateUpdate::Delivered {
            pec_id,
            recipient,
            at,
        } => {
            tx.execute(
                &pg(&sql::recipient_stamp("delivered_at")),
                &[pec_id, recipient, &ts(*at)],
            )
            .await?
        }
        StateUpdate::Failed {
            pec_id,
            recipient,
            at,
            reason,
        } => {
            tx.execute(
                &pg(sql::RECIPIENT_FAILED),
                &[pec_id, recipient, &ts(*at), &clean(reason)],
            )
            .await?
        }
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
            tx.execute(
                &pg(&sql::recipient_stamp(col)),
                &[pec_id, recipient, &ts(*at)],
            )
            .await?
        }
    })
}

#[async_trait]
impl RegistryBackend for PgBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        let r = self
            .query("SELECT MAX(version) FROM schema_migrations", &[])
            .await?;
        r.first().map_or(Ok(0), |r| r.i64_at(0))
    }

    async fn record(
        &self,
        rec: &Record,
        seals: &[Option<String>],
        now: DateTime<Utc>,
        host: &str,
    ) -> Result<RecordOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let head = tx
            .query_one(&format!("{} FOR UPDATE", sql::SELECT_HEAD), &[])
            .await?;
        let (head_seq, head_hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
        if let Some(key) = &rec.idempotency_key
            && let Some(found) = tx.query_opt(&pg(sql::EVENT_BY_KEY), &[key]).await?
        {
            let seq: i64 = found.try_get(0)?;
            let ids = tx.query(&pg(sql::OUTBOX_IDS_OF_EVENT), &[&seq]).await?;
            let outbox_ids = ids.iter().map(|r| r.i64_at(0)).collect::<Result<_, _>>()?;
            tx.rollback().await?;
            return Ok(RecordOutcome {
                seq,
                outbox_ids,
                replayed: true,
                unmatched_updates: 0,
            });
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
        let mut bound: Vec<&(dyn ToSql + Sync)> = vec![&row.seq];
        bound.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
        tx.execute(&pg(sql::INSERT_EVENT), &bound).await?;
        tx.execute(&pg(sql::UPDATE_HEAD), &[&row.seq, &row.hash])
            .await?;
        let now_s = ts(now);
        let mut outbox_ids = Vec::new();
        for (i, m) in rec.outbox.iter().enumerate() {
            let seal = seals.get(i).cloned().flatten();
            let status = if m.hold_for_queue_id.is_some() {
                "held"
            } else {
                "pending"
            };
            let r = tx
                .query_one(
                    &pg(sql::INSERT_OUTBOX),
                    &[
                        &row.seq,
                        &m.kind,
                        &m.mail_from,
                        &json_list(&m.rcpts),
                        &m.message,
                        &status,
                        &m.hold_for_queue_id,
                        &now_s,
                        &seal,
                    ],
                )
                .await?;
            outbox_ids.push(r.i64_at(0)?);
        }
        let mut unmatched_updates = 0;
        for u in &rec.state {
            if apply_state(&tx, u, &now_s).await? == 0 {
                unmatched_updates += 1;
            }
        }
        tx.commit().await?;
        Ok(RecordOutcome {
            seq: row.seq,
            outbox_ids,
            replayed: false,
            unmatched_updates,
        })
    }

    async fn events_after(&self, after_seq: i64, n: usize) -> Result<Vec<EventRow>, StoreError> {
        rows(
            self.query(&sql::events_after(), &[&after_seq, &limit(n)])
                .await?,
            sql::event_row,
        )
    }

    async fn event(&self, seq: i64) -> Result<Option<EventRow>, StoreError> {
        Ok(rows(
            self.query(&sql::event_by_seq(), &[&seq]).await?,
            sql::event_row,
        )?
        .into_iter()
        .next())
    }

    async fn chain_head(&self) -> Result<(i64, String), StoreError> {
        let r = self.query(sql::SELECT_HEAD, &[]).await?;
        let r = r.first().ok_or(StoreError::Corrupt {
            what: "registry_chain_head",
            detail: "no row".into(),
        })?;
        Ok((r.i64_at(0)?, r.text_at(1)?))
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<i64, StoreError> {
        let r = self
            .query(
                sql::INSERT_CHECKPOINT,
                &[
                    &cp.seq,
                    &cp.head_hash,
                    &cp.created_at,
                    &cp.host,
                    &cp.content,
                    &cp.cms,
                ],
            )
            .await?;
        r.first().map_or(
            Err(StoreError::Corrupt {
                what: "registry_checkpoints",
                detail: "no id".into(),
            }),
            |r| r.i64_at(0),
        )
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        rows(
            self.query(&sql::checkpoints(), &[]).await?,
            sql::checkpoint_row,
        )
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(rows(
            self.query(&sql::latest_checkpoint(), &[]).await?,
            sql::checkpoint_row,
        )?
        .into_iter()
        .next())
    }

    async fn search(&self, q: &SearchQuery) -> Result<Vec<EventRow>, StoreError> {
        let (text, params) = sql::search(q);
        let boxed: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(s) => Box::new(s),
                    Param::Int(i) => Box::new(i),
                }
            })
            .collect();
        let bound: Vec<&(dyn ToSql + Sync)> = boxed
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        rows(self.query(&text, &bound).await?, sql::event_row)
    }

    async fn events_by_identifier(&self, id: &str) -> Result<Vec<EventRow>, StoreError> {
        let pattern = sql::json_element_pattern(id);
        rows(
            self.query(&sql::events_by_identifier(), &[&id, &pattern])
                .await?,
            sql::event_row,
        )
    }

    async fn events_of_pec_id(&self, pec_id: &str) -> Result<Vec<EventRow>, StoreError> {
        rows(
            self.query(&sql::events_of_pec_id(), &[&pec_id]).await?,
            sql::event_row,
        )
    }

    async fn events_of_queue_id(&self, queue_id: &str) -> Result<Vec<EventRow>, StoreError> {
        rows(self.query(&sql::events_of_queue_id(), &[&queue_id]).await?, sql::event_row)
    }

    async fn events_of_type_between(
        &self,
        kind: EventType,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        after_seq: i64,
        n: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        rows(
            self.query(&sql::events_of_type_between(), &[&ts(from), &ts(until), &kind.as_str(), &after_seq, &limit(n)])
                .await?,
            sql::event_row,
        )
    }

    async fn first_seq_recorded_since(&self, t: DateTime<Utc>) -> Result<Option<i64>, StoreError> {
        let r = self.query(sql::FIRST_SEQ_SINCE, &[&ts(t)]).await?;
        match r.first() {
            Some(r) => Ok(r.try_get(0)?),
            None => Ok(None),
        }
    }

    async fn purge(&self, cut_seq: i64, cutoff: DateTime<Utc>) -> Result<PurgeReport, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Appends wait while rows go.
        tx.execute(&format!("{} FOR UPDATE", sql::SELECT_HEAD), &[])
            .await?;
        let cutoff = ts(cutoff);
        let paths = tx
            .query(&pg(sql::QUARANTINE_PATHS_BEFORE), &[&cutoff])
            .await?;
        let quarantine_paths = paths
            .iter()
            .map(|r| r.text_at(0))
            .collect::<Result<_, _>>()?;
        let events = tx.execute(&pg(sql::PURGE_EVENTS), &[&cut_seq]).await?;
        let checkpoints = tx.execute(&pg(sql::PURGE_CHECKPOINTS), &[&cut_seq]).await?;
        let outbox = tx.execute(&pg(sql::PURGE_OUTBOX), &[&cut_seq]).await?;
        tx.execute(&pg(sql::PURGE_RECIPIENTS), &[&cutoff]).await?;
        let transactions = tx.execute(&pg(sql::PURGE_TRANSACTIONS), &[&cutoff]).await?;
        let quarantine = tx.execute(&pg(sql::PURGE_QUARANTINE), &[&cutoff]).await?;
        tx.commit().await?;
        Ok(PurgeReport {
            cut_seq,
            events,
            checkpoints,
            outbox,
            transactions,
            quarantine,
            quarantine_paths,
        })
    }

    async fn next_unique(&self) -> Result<i64, StoreError> {
        let r = self.query("SELECT nextval('unique_counter')", &[]).await?;
        r.first().map_or(
            Err(StoreError::Corrupt {
                what: "unique_counter",
                detail: "no value".into(),
            }),
            |r| r.i64_at(0),
        )
    }

    async fn outbox_claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let text = sql::claim("FOR UPDATE SKIP LOCKED");
        let r = self
            .query(
                &text,
                &[&owner, &ts(after(now, lease)), &ts(now), &limit(n)],
            )
            .await?;
        let mut out = rows(r, sql::outbox_row)?;
        out.sort_by_key(|m| (m.next_attempt_at.clone(), m.id));
        Ok(out)
    }

    async fn outbox_mark_sent(
        &self,
        id: i64,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .execute(sql::MARK_SENT, &[&id, &owner, &ts(now)])
            .await?
            == 1)
    }

    async fn outbox_mark_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let error = clean(error);
        Ok(match retry_at {
            Some(t) => {
                self.execute(sql::MARK_RETRY, &[&id, &owner, &ts(t), &error])
                    .await?
            }
            None => {
                self.execute(sql::MARK_FAILED, &[&id, &owner, &error])
                    .await?
            }
        } == 1)
    }

    async fn outbox_release_held(
        &self,
        host: &str,
        queue_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.execute(sql::RELEASE_HELD, &[&queue_id, &ts(now), &host])
            .await
    }

    async fn outbox_cancel_held(&self, host: &str, queue_id: &str, reason: &str) -> Result<u64, StoreError> {
        self.execute(sql::CANCEL_HELD, &[&queue_id, &clean(reason), &host])
            .await
    }

    async fn outbox_release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        self.execute(sql::RELEASE_OWN_LEASES, &[&owner]).await
    }

    async fn outbox_held_queue_ids(&self, host: &str) -> Result<Vec<(String, String)>, StoreError> {
        let r = self.query(sql::HELD_QUEUE_IDS, &[&host]).await?;
        r.iter()
            .map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?)))
            .collect()
    }

    async fn outbox_held_by_host(&self) -> Result<Vec<(String, i64, String)>, StoreError> {
        let r = self.query(sql::HELD_BY_HOST, &[]).await?;
        r.iter()
            .map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?, row.try_get::<_, String>(2)?)))
            .collect()
    }

    fn migrated_from(&self) -> i64 {
        self.migrated_from
    }

    async fn outbox_queued(&self) -> Result<Vec<OutboxMessage>, StoreError> {
        rows(self.query(&sql::outbox_queued(), &[]).await?, sql::outbox_row)
    }

    async fn outbox_refused_since(&self, since: DateTime<Utc>) -> Result<Vec<OutboxMessage>, StoreError> {
        rows(self.query(&sql::outbox_refused_since(), &[&ts(since)]).await?, sql::outbox_row)
    }

    async fn outbox_set_seal(&self, id: i64, seal: &str) -> Result<bool, StoreError> {
        Ok(self.execute(sql::SET_SEAL, &[&id, &seal]).await? == 1)
    }

    async fn outbox_with_status(&self, status: OutboxStatus, n: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        rows(self.query(&sql::outbox_with_status(), &[&status.as_str(), &limit(n)]).await?, sql::outbox_row)
    }

    async fn outbox_retry_failed(&self, id: i64, seal: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.execute(sql::RETRY_FAILED, &[&id, &ts(now), &seal]).await? == 1)
    }

    async fn outbox_get(&self, id: i64) -> Result<Option<OutboxMessage>, StoreError> {
        Ok(rows(
            self.query(&sql::outbox_by_id(), &[&id]).await?,
            sql::outbox_row,
        )?
        .into_iter()
        .next())
    }

    async fn due_notices(
        &self,
        notice: NoticeKind,
        sent_before: DateTime<Utc>,
    ) -> Result<Vec<DueNotice>, StoreError> {
        let text = sql::due_notices(notice == NoticeKind::TwelveHours);
        rows(self.query(&text, &[&ts(sent_before)]).await?, sql::due_row)
    }

    async fn transaction(&self, pec_id: &str) -> Result<Option<TransactionState>, StoreError> {
        let pec_id = pec_id.trim().trim_start_matches('<').trim_end_matches('>');
        let found = self.query(sql::TRANSACTION_BY_ID, &[&pec_id]).await?;
        let Some(r) = found.first() else {
            return Ok(None);
        };
        let recipients = rows(
            self.query(sql::RECIPIENTS_OF, &[&pec_id]).await?,
            sql::recipient_row,
        )?;
        Ok(Some(TransactionState {
            pec_id: r.text_at(0)?,
            client_msgid: r.opt_at(1)?,
            sender: r.text_at(2)?,
            subject: r.opt_at(3)?,
            queue_id: r.opt_at(4)?,
            event_time: r.text_at(5)?,
            event_zone: r.text_at(6)?,
            accepted_at: r.opt_at(7)?,
            envelope_sent_at: r.opt_at(8)?,
            recipients,
        }))
    }

    async fn quarantine_add(
        &self,
        q: &NewQuarantine,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let r = self
            .query(
                sql::INSERT_QUARANTINE,
                &[
                    &clean_opt(&q.pec_id),
                    &clean(&q.reason),
                    &clean_opt(&q.path),
                    &q.content,
                    &ts(now),
                ],
            )
            .await?;
        r.first().map_or(
            Err(StoreError::Corrupt {
                what: "quarantine_entries",
                detail: "no id".into(),
            }),
            |r| r.i64_at(0),
        )
    }
}
