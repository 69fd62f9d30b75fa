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
    /// Events recorded by this host in the last 24 h, by type.
    pub events_24h: Vec<(String, i64)>,
}

const OUTBOX_SQL: &str = "SELECT status, COUNT(*) FROM outbox_messages \
     WHERE status IN ('held', 'pending', 'failed') GROUP BY status";

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
    let pairs =
        |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<Vec<(String, i64)>, String> {
            let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
            let rows = stmt
                .query_map(params, |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(|e| e.to_string())?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
    Ok(RegistryCounts {
        outbox: pairs(OUTBOX_SQL, &[])?,
        events_24h: pairs(
            "SELECT event_type, COUNT(*) FROM registry_events \
             WHERE recorded_at >= ?1 AND host = ?2 GROUP BY event_type",
            &[&since, &host],
        )?,
    })
}

async fn postgres_counts(url: &str, since: &str, host: &str) -> Result<RegistryCounts, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(connection);
    let pairs = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<(String, i64)>, String> {
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, String>(0).map_err(|e| e.to_string())?,
                    r.try_get::<_, i64>(1).map_err(|e| e.to_string())?,
                ))
            })
            .collect()
    };
    let result = async {
        let outbox = pairs(
            client
                .query(&OUTBOX_SQL.replace("COUNT(*)", "COUNT(*)::BIGINT"), &[])
                .await
                .map_err(|e| e.to_string())?,
        )?;
        let events_24h = pairs(
            client
                .query(
                    "SELECT event_type, COUNT(*)::BIGINT FROM registry_events \
                     WHERE recorded_at >= $1 AND host = $2 GROUP BY event_type",
                    &[&since, &host],
                )
                .await
                .map_err(|e| e.to_string())?,
        )?;
        Ok(RegistryCounts { outbox, events_24h })
    }
    .await;
    drop(client);
    conn.abort();
    result
}

