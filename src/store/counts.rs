//! Counts read from the registry for the daemon's scrape-time gauges (runtime/metrics.rs):
//! outbox messages by status and this host's events of the last 24 h, by plain `GROUP BY`
//! queries on a connection of their own. The registry's SQL stays in the store.

use std::time::Duration;

use super::StoreUrl;

/// One reading of the registry: `(token, count)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryCounts {
    /// Outbox messages by status (held, pending, failed).
    pub outbox: Vec<(String, i64)>,
    /// When the oldest outbox message still held or pending was created, by status (a
    /// registry timestamp; no entry when none is).
    pub outbox_oldest: Vec<(String, String)>,
    /// Events recorded by this host in the last 24 h, by type.
    pub events_24h: Vec<(String, i64)>,
}

const OUTBOX_SQL: &str = "SELECT status, COUNT(*) FROM outbox_messages \
     WHERE status IN ('held', 'pending', 'failed') GROUP BY status";
const OUTBOX_OLDEST_SQL: &str = "SELECT status, MIN(created_at) FROM outbox_messages \
     WHERE status IN ('held', 'pending') GROUP BY status";

/// The counts, read with plain `GROUP BY` queries on a connection of our own (read-only for
/// SQLite), so a scrape never waits behind the milter's writes on the store's connection.
/// `None` for an in-memory registry (nothing to read from another connection).
pub async fn read_counts(
    url: &str,
    since: &str,
    host: &str,
) -> Result<Option<RegistryCounts>, String> {
    match StoreUrl::parse(url).map_err(|e| e.to_string())? {
        StoreUrl::Sqlite(path) if path == ":memory:" => Ok(None),
        StoreUrl::Sqlite(path) => {
            let (since, host) = (since.to_owned(), host.to_owned());
            tokio::task::spawn_blocking(move || sqlite_counts(&path, &since, &host))
                .await
                .map_err(|e| e.to_string())?
                .map(Some)
        }
        StoreUrl::Postgres(url) => postgres_counts(&url, since, host).await.map(Some),
    }
}

fn sqlite_counts(path: &str, since: &str, host: &str) -> Result<RegistryCounts, String> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{path}: {e}"))?;
    conn.busy_timeout(Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    Ok(RegistryCounts {
        outbox: sqlite_pairs(&conn, OUTBOX_SQL, &[])?,
        outbox_oldest: sqlite_pairs(&conn, OUTBOX_OLDEST_SQL, &[])?,
        events_24h: sqlite_pairs(
            &conn,
            "SELECT event_type, COUNT(*) FROM registry_events \
             WHERE recorded_at >= ?1 AND host = ?2 GROUP BY event_type",
            &[&since, &host],
        )?,
    })
}

/// The rows of `sql` as (token, value) pairs.
fn sqlite_pairs<T: rusqlite::types::FromSql>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<(String, T)>, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, T>(1)?)))
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// The rows of `sql` as (token, value) pairs.
async fn postgres_pairs<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<(String, T)>, String> {
    client
        .query(sql, params)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| Ok((r.try_get::<_, String>(0).map_err(|e| e.to_string())?, r.try_get::<_, T>(1).map_err(|e| e.to_string())?)))
        .collect()
}

async fn postgres_counts(url: &str, since: &str, host: &str) -> Result<RegistryCounts, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let result = async {
        Ok(RegistryCounts {
            outbox: postgres_pairs(&client, &OUTBOX_SQL.replace("COUNT(*)", "COUNT(*)::BIGINT"), &[]).await?,
            outbox_oldest: postgres_pairs(&client, OUTBOX_OLDEST_SQL, &[]).await?,
            events_24h: postgres_pairs(
                &client,
                "SELECT event_type, COUNT(*)::BIGINT FROM registry_events \
                 WHERE recorded_at >= $1 AND host = $2 GROUP BY event_type",
                &[&since, &host],
            )
            .await?,
        })
    }
    .await;
    drop(client);
    conn.abort();
    result
}

