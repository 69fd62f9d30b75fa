//! Prometheus metrics and their optional HTTP endpoint (`[metrics] listen`).
//!
//! The families, all prefixed `pecora_`:
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `pecora_messages_total` | counter | `point` (accesso, ricezione, interno), `kind` (what the top-level headers claim, a [`MessageKind::label`] token), `outcome` (passed, refused, tempfail, discarded) |
//! | `pecora_receipts_total` | counter | `tipo`: the kind of each message pecora queued in the outbox (accettazione, avvenuta-consegna, alert-email, ...) |
//! | `pecora_outbox_refused_total` | counter | `reason` (unsealed, bad-seal): outbox rows not injected because they carry no valid seal (crate::store::seal) |
//! | `pecora_outbox_backlog` | gauge | — (messages in the outbox not yet handed to Postfix) |
//! | `pecora_verification_failures_total` | counter | `reason` |
//! | `pecora_timer_notices_total` | counter | `deadline` (e.g. `12h`, `24h`) |
//! | `pecora_processing_seconds` | histogram | `point` |
//! | `pecora_outbox_messages` | gauge | `status` (held, pending, failed), read from the registry at scrape time |
//! | `pecora_outbox_oldest_seconds` | gauge | `status` (held, pending): how long the oldest message in that state has waited, 0 when none; read at scrape time |
//! | `pecora_registry_events_24h` | gauge | `type` (an [`EventType`] token): rows this host wrote in the last 24 h, read at scrape time |
//! | `pecora_registry_up` | gauge | — (1 when the last scrape could read the registry) |
//! | `pecora_index_age_seconds` | gauge | — (age of the provider index file, from its modification time) |
//! | `pecora_delivery_spool_entries` | gauge | `dir` (new: delivery events waiting; bad: events set aside, each a stored message whose receipt needs a look), counted at scrape time |
//!
//! The scrape-time gauges come from a [`ScrapeSource`]: two `GROUP BY` counts on indexed
//! columns over a separate read-only connection (SQLite) or a short-lived one (PostgreSQL),
//! at most once every [`REFRESH_INTERVAL`] however often the endpoint is scraped. For a
//! registry shared by several hosts the outbox gauges are the shared outbox; the event
//! counts are this host's rows only, so they add up across hosts.
//!
//! The counters and the histogram are for the PEC points to update as they work (they show
//! up once they have a series); the scrape-time gauges come from the registry.
//!
//! Label values must come from small fixed sets (enum tokens, never addresses or
//! identifiers), so that the number of series stays bounded.
//!
//! The endpoint is a minimal HTTP/1.x responder meant for localhost: `GET /metrics`
//! answers the text exposition format, anything else 404; requests are capped at
//! [`MAX_REQUEST_BYTES`], connections at [`MAX_CONNECTIONS`] and each exchange at
//! [`REQUEST_TIMEOUT`]. It is built on the `prometheus` crate (without its protobuf and
//! push features: a few small dependencies, mostly already in the tree) for the registry
//! and the exposition encoder, so escaping and histogram buckets follow the format.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::pec::types::{MessageKind, Tipo};
use crate::store::EventType;
use crate::store::counts::{RegistryCounts, read_counts};

/// Largest request head accepted (request line plus headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed to read a request and write the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Buckets of `pecora_processing_seconds`: from a fast milter callback to a large
/// message signed and spooled.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// The registry is read at most this often; scrapes in between get the last values.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Time allowed to read the registry counts during a scrape.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(3);
/// The outbox states reported by `pecora_outbox_messages` (sent and cancelled rows are
/// history, not backlog).
pub const OUTBOX_STATES: [&str; 3] = ["held", "pending", "failed"];

/// The PEC point a message went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Punto di accesso (submission).
    Accesso,
    /// Punto di ricezione (MX).
    Ricezione,
    /// Punto di consegna (Dovecot hook).
    Consegna,
    /// Postfix's own mail through non_smtpd_milters (bounces, re-injected mail).
    Interno,
}

impl Point {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Point::Accesso => "accesso",
            Point::Ricezione => "ricezione",
            Point::Consegna => "consegna",
            Point::Interno => "interno",
        }
    }
}

/// Every metric pecora exports, in one registry.
pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    receipts: IntCounterVec,
    outbox_refused: IntCounterVec,
    outbox_backlog: IntGauge,
    verification_failures: IntCounterVec,
    timer_notices: IntCounterVec,
    processing_seconds: HistogramVec,
    outbox_messages: IntGaugeVec,
    outbox_oldest: IntGaugeVec,
    registry_events_24h: IntGaugeVec,
    registry_up: IntGauge,
    index_age_seconds: Gauge,
    delivery_spool: IntGaugeVec,
}

static GLOBAL: LazyLock<Arc<Metrics>> = LazyLock::new(|| {
    // The names and labels are constants checked by the unit tests: this cannot fail.
    Arc::new(Metrics::new().expect("metric definitions are valid"))
});

/// The process-wide metrics the daemon updates and the endpoint serves.
pub fn global() -> &'static Arc<Metrics> {
    &GLOBAL
}

impl Metrics {
    /// A fresh registry with every family registered (tests use their own).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new(
                "pecora_messages_total",
                "Messages processed, by PEC point, kind and outcome.",
            ),
            &["point", "kind", "outcome"],
        )?;
        let receipts = IntCounterVec::new(
            Opts::new(
                "pecora_receipts_total",
                "Receipts and notices emitted, by daticert tipo.",
            ),
            &["tipo"],
        )?;
        let outbox_refused = IntCounterVec::new(
            Opts::new(
                "pecora_outbox_refused_total",
                "Outbox rows not injected because their seal is missing or wrong.",
            ),
            &["reason"],
        )?;
        let outbox_backlog = IntGauge::with_opts(Opts::new(
            "pecora_outbox_backlog",
            "Generated messages in the outbox not yet accepted by Postfix.",
        ))?;
        let verification_failures = IntCounterVec::new(
            Opts::new(
                "pecora_verification_failures_total",
                "Incoming PEC messages that failed verification, by reason.",
            ),
            &["reason"],
        )?;
        let timer_notices = IntCounterVec::new(
            Opts::new(
                "pecora_timer_notices_total",
                "Time-limit notices emitted, by deadline.",
            ),
            &["deadline"],
        )?;
        let processing_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pecora_processing_seconds",
                "Time to process one message, by PEC point.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["point"],
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(receipts.clone()))?;
        registry.register(Box::new(outbox_backlog.clone()))?;
        registry.register(Box::new(outbox_refused.clone()))?;
        registry.register(Box::new(verification_failures.clone()))?;
        registry.register(Box::new(timer_notices.clone()))?;
        let outbox_messages = IntGaugeVec::new(
            Opts::new(
                "pecora_outbox_messages",
                "Outbox messages by status (held for the queue confirmation, pending, failed).",
            ),
            &["status"],
        )?;
        let outbox_oldest = IntGaugeVec::new(
            Opts::new(
                "pecora_outbox_oldest_seconds",
                "Seconds the oldest outbox message held for the queue confirmation, or pending injection, has waited (0 when none).",
            ),
            &["status"],
        )?;
        let registry_events_24h = IntGaugeVec::new(
            Opts::new(
                "pecora_registry_events_24h",
                "Registry events this host recorded in the last 24 hours, by type.",
            ),
            &["type"],
        )?;
        let registry_up = IntGauge::with_opts(Opts::new(
            "pecora_registry_up",
            "1 when the last scrape could read the registry, 0 when it could not.",
        ))?;
        let index_age_seconds = Gauge::with_opts(Opts::new(
            "pecora_index_age_seconds",
            "Seconds since the provider index file was last written (pecora index update).",
        ))?;
        registry.register(Box::new(processing_seconds.clone()))?;
        registry.register(Box::new(outbox_messages.clone()))?;
        registry.register(Box::new(outbox_oldest.clone()))?;
        registry.register(Box::new(registry_events_24h.clone()))?;
        registry.register(Box::new(registry_up.clone()))?;
        registry.register(Box::new(index_age_seconds.clone()))?;
        let delivery_spool = IntGaugeVec::new(
            Opts::new(
                "pecora_delivery_spool_entries",
                "Entries of the delivery spool: dir=new, events waiting for the daemon; dir=bad, events it set aside (its log says why).",
            ),
            &["dir"],
        )?;
        registry.register(Box::new(delivery_spool.clone()))?;
        Ok(Metrics {
            registry,
            messages,
            receipts,
            outbox_backlog,
            outbox_refused,
            verification_failures,
            timer_notices,
            processing_seconds,
            outbox_messages,
            outbox_oldest,
            registry_events_24h,
            registry_up,
            index_age_seconds,
            delivery_spool,
        })
    }

    /// Sets the scrape-time registry gauges from one reading, taken at `now`.
    pub fn set_registry(&self, counts: &RegistryCounts, now: chrono::DateTime<chrono::Utc>) {
        let get = |list: &[(String, i64)], key: &str| {
            list.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, n)| *n)
                .sum::<i64>()
        };
        for status in OUTBOX_STATES {
            self.outbox_messages
                .with_label_values(&[status])
                .set(get(&counts.outbox, status));
        }
        self.outbox_backlog
            .set(get(&counts.outbox, "held") + get(&counts.outbox, "pending"));
        for status in ["held", "pending"] {
            let age = counts
                .outbox_oldest
                .iter()
                .filter(|(s, _)| s == status)
                .filter_map(|(_, t)| crate::store::model::parse_ts(t))
                .map(|t| (now - t).num_seconds().max(0))
                .max()
                .unwrap_or(0);
            self.outbox_oldest.with_label_values(&[status]).set(age);
        }
        // Every known type gets a series (0 included), so dashboards see stable series;
        // unknown tokens are not exported (bounded labels).
        for t in EventType::ALL {
            self.registry_events_24h
                .with_label_values(&[t.as_str()])
                .set(get(&counts.events_24h, t.as_str()));
        }
        self.registry_up.set(1);
    }

    /// The registry could not be read: `pecora_registry_up` drops to 0, the other gauges
    /// keep their last values.
    pub fn set_registry_down(&self) {
        self.registry_up.set(0);
    }

    /// How many entries the delivery spool's `new/` and `bad/` hold.
    pub fn set_delivery_spool(&self, new: i64, bad: i64) {
        self.delivery_spool.with_label_values(&["new"]).set(new);
        self.delivery_spool.with_label_values(&["bad"]).set(bad);
    }

    /// The age of the provider index, in seconds.
    pub fn set_index_age(&self, seconds: f64) {
        self.index_age_seconds.set(seconds);
    }

    /// One message processed at `point`: `outcome` is a fixed token such as `accepted`,
    /// `refused`, `anomaly`, `tempfail`.
    pub fn message(&self, point: Point, kind: &MessageKind, outcome: &str) {
        self.messages
            .with_label_values(&[point.as_str(), &kind.label(), outcome])
            .inc();
    }

    /// One receipt or notice of type `tipo` emitted.
    pub fn receipt(&self, tipo: Tipo) {
        self.receipts.with_label_values(&[tipo.as_str()]).inc();
    }

    /// One message processed at `point`, with `kind` and `outcome` as fixed tokens (the
    /// milter's claimed-kind label and its answer).
    pub fn message_labelled(&self, point: Point, kind: &str, outcome: &str) {
        self.messages.with_label_values(&[point.as_str(), kind, outcome]).inc();
    }

    /// One message pecora generated and queued in the outbox, by its kind (a fixed token:
    /// `accettazione`, `avvenuta-consegna`, `alert-email`, ...).
    pub fn receipt_kind(&self, kind: &str) {
        self.receipts.with_label_values(&[kind]).inc();
    }

    /// An outbox row refused before injection (`unsealed` or `bad-seal`).
    pub fn outbox_refused(&self, reason: &str) {
        self.outbox_refused.with_label_values(&[reason]).inc();
    }

    /// The current number of outbox messages waiting to be sent.
    pub fn set_outbox_backlog(&self, n: u64) {
        self.outbox_backlog
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One incoming message failed verification; `reason` is a fixed token such as
    /// `signature`, `unknown-signer`, `header-mismatch`, `daticert`.
    pub fn verification_failure(&self, reason: &str) {
        self.verification_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// One time-limit notice emitted for `deadline` (`12h`, `24h`).
    pub fn timer_notice(&self, deadline: &str) {
        self.timer_notices.with_label_values(&[deadline]).inc();
    }

    /// How long processing one message at `point` took.
    pub fn observe_processing(&self, point: Point, elapsed: Duration) {
        self.processing_seconds
            .with_label_values(&[point.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format (version 0.0.4) of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding to a Vec only fails on metric families that violate the format, which
        // the registry never produces; an empty answer would show it.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The store tells the metrics what it recorded and refused.
impl crate::store::Observer for Metrics {
    fn outbox_recorded(&self, kind: &str) {
        self.receipt_kind(kind);
    }

    fn timer_notice_recorded(&self, deadline: &str) {
        self.timer_notice(deadline);
    }

    fn outbox_row_refused(&self, reason: &str) {
        self.outbox_refused(reason);
    }
}

/// Where the scrape-time gauges come from: the registry URL, this host's name in its rows,
/// and the provider index file.
pub struct ScrapeSource {
    store_url: String,
    host: String,
    index_file: Option<PathBuf>,
    delivery_spool: Option<PathBuf>,
    last: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl ScrapeSource {
    pub fn new(
        store_url: impl Into<String>,
        host: impl Into<String>,
        index_file: Option<PathBuf>,
    ) -> ScrapeSource {
        ScrapeSource {
            store_url: store_url.into(),
            host: host.into(),
            index_file,
            delivery_spool: None,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Also counts the entries of the delivery spool at `dir` at scrape time.
    pub fn with_delivery_spool(mut self, dir: PathBuf) -> ScrapeSource {
        self.delivery_spool = Some(dir);
        self
    }

    /// Updates the scrape-time gauges of `metrics`, unless that was done less than
    /// [`REFRESH_INTERVAL`] ago.
    pub async fn refresh(&self, metrics: &Metrics) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return;
        }
        *last = Some(std::time::Instant::now());
        if let Some(f) = &self.index_file {
            match std::fs::metadata(f).and_then(|m| m.modified()) {
                Ok(t) => metrics.set_index_age(
                    std::time::SystemTime::now()
                        .duration_since(t)
                        .unwrap_or_default()
                        .as_secs_f64(),
                ),
                Err(e) => {
                    tracing::debug!(file = %f.display(), error = %e, "metrics: cannot stat the index")
                }
            }
        }
        if let Some(dir) = &self.delivery_spool {
            // Not made yet (the delivery worker makes it when it starts): nothing in it.
            let count = |sub: &str| match std::fs::read_dir(dir.join(sub)) {
                Ok(rd) => Ok(rd.count() as i64),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e),
            };
            match (count("new"), count("bad")) {
                (Ok(new), Ok(bad)) => metrics.set_delivery_spool(new, bad),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "metrics: cannot read the delivery spool")
                }
            }
        }
        let since = crate::store::ts(chrono::Utc::now() - chrono::Duration::hours(24));
        match tokio::time::timeout(
            REGISTRY_TIMEOUT,
            read_counts(&self.store_url, &since, &self.host),
        )
        .await
        {
            Ok(Ok(Some(c))) => metrics.set_registry(&c, chrono::Utc::now()),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: cannot read the registry");
                metrics.set_registry_down();
            }
            Err(_) => {
                tracing::warn!("metrics: reading the registry timed out");
                metrics.set_registry_down();
            }
        }
    }
}

/// Binds `addr` and serves `metrics` on it until the task is dropped; `source` adds the
/// scrape-time registry gauges.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    source: Option<Arc<ScrapeSource>>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    serve_on(listener, metrics, source).await
}

/// Serves `metrics` on an already bound listener (tests bind port 0 and read the address).
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    source: Option<Arc<ScrapeSource>>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match Arc::clone(&slots).acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => return Ok(()),
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, source.as_deref()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (query string ignored).
    Metrics,
    /// Any other method or path.
    NotFound,
    /// Not HTTP, or larger than [`MAX_REQUEST_BYTES`].
    Bad,
}

/// Classifies a complete request head (everything before the blank line).
fn classify(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or(target);
    if method == "GET" && path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

/// Reads one request head (bounded) and writes the answer; the connection is then closed.
async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    source: Option<&ScrapeSource>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let request = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // closed before a full request: nothing to answer
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break if end > MAX_REQUEST_BYTES {
                Request::Bad
            } else {
                classify(&head[..end])
            };
        }
        if head.len() > MAX_REQUEST_BYTES {
            break Request::Bad;
        }
    };
    if let (Request::Metrics, Some(source)) = (&request, source) {
        source.refresh(metrics).await;
    }
    let (status, content_type, body) = match request {
        Request::Metrics => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Drain what the client may still be sending (bounded), so that closing with unread
    // data does not reset the connection before the client has read the answer.
    let mut drained = 0usize;
    while drained < 16 * MAX_REQUEST_BYTES {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn definitions_are_valid() {
        let m = Metrics::new().unwrap();
        // Every family shows up once it has a series; the gauge always does.
        assert!(m.render().contains("pecora_outbox_backlog 0"));
        assert!(
            global()
                .render()
                .contains("# TYPE pecora_outbox_backlog gauge")
        );
    }

    /// The scrape-time gauges count what a real registry holds: held and pending outbox
    /// messages, and this host's events of the last 24 h only.
    #[tokio::test]
    async fn registry_gauges_count_outbox_and_recent_events() {
        use crate::store::{NewEvent, NewOutboxMessage, Record, Store};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("r.db").display());
        let store = Store::open(&url).await.unwrap().with_host("h1");
        let now = chrono::Utc::now();
        let at = now.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
        let outbox = |hold: Option<&str>| NewOutboxMessage {
            kind: "accettazione".into(),
            mail_from: "posta-certificata@pec.alpha.test".into(),
            rcpts: vec!["a@pec.alpha.test".into()],
            message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
            hold_for_queue_id: hold.map(str::to_owned),
        };
        for (ty, hold, when, host) in [
            (EventType::Acceptance, Some("Q1"), now, "h1"),
            (EventType::Acceptance, None, now, "h1"),
            (
                EventType::Anomaly,
                None,
                now - chrono::Duration::hours(30),
                "h1",
            ),
            (EventType::Delivery, None, now, "h2"),
        ] {
            let rec = Record {
                event: NewEvent::new(at, ty),
                outbox: vec![outbox(hold)],
                state: vec![],
                idempotency_key: None,
            };
            store
                .clone()
                .with_host(host)
                .record(&rec, when)
                .await
                .unwrap();
        }
        let since = crate::store::ts(now - chrono::Duration::hours(24));
        let c = read_counts(&url, &since, "h1").await.unwrap().unwrap();
        let m = Metrics::new().unwrap();
        // Read ten seconds after the rows were written: the held one has waited 10 s, the
        // oldest pending one (the anomaly's, 30 h ago) 30 h and 10 s.
        m.set_registry(&c, now + chrono::Duration::seconds(10));
        let text = m.render();
        for expected in [
            "pecora_outbox_backlog 4",
            r#"pecora_outbox_oldest_seconds{status="held"} 10"#,
            r#"pecora_outbox_oldest_seconds{status="pending"} 108010"#,
            r#"pecora_outbox_messages{status="held"} 1"#,
            r#"pecora_outbox_messages{status="pending"} 3"#,
            r#"pecora_outbox_messages{status="failed"} 0"#,
            r#"pecora_registry_events_24h{type="acceptance"} 2"#,
            r#"pecora_registry_events_24h{type="anomaly"} 0"#,
            r#"pecora_registry_events_24h{type="delivery"} 0"#,
            "pecora_registry_up 1",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "missing {expected:?} in\n{text}"
            );
        }
        assert!(
            read_counts("sqlite::memory:", &since, "h1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            read_counts(
                &format!("sqlite:{}/missing/x.db", dir.path().display()),
                &since,
                "h1"
            )
            .await
            .is_err()
        );
    }

    #[test]
    fn request_heads_are_classified() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Request::Metrics
        );
        assert_eq!(classify(b"GET /metrics?x=1 HTTP/1.0"), Request::Metrics);
        assert_eq!(classify(b"POST /metrics HTTP/1.1"), Request::NotFound);
        assert_eq!(classify(b"GET / HTTP/1.1"), Request::NotFound);
        assert_eq!(classify(b"GET /metrics"), Request::Bad);
        assert_eq!(classify(b"hello there you all"), Request::Bad);
        assert_eq!(classify(b"GET /metrics SMTP/1.0"), Request::Bad);
        assert_eq!(classify(&[0xff, 0xfe]), Request::Bad);
    }

    #[tokio::test]
    async fn endpoint_serves_the_exposition_format() {
        let m = Arc::new(Metrics::new().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_on(listener, Arc::clone(&m), None));

        m.message(Point::Accesso, &MessageKind::BustaTrasporto, "accepted");
        m.message(Point::Accesso, &MessageKind::BustaTrasporto, "accepted");
        m.message(Point::Ricezione, &MessageKind::Ordinary, "anomaly");
        m.receipt(Tipo::Accettazione);
        m.receipt(Tipo::AvvenutaConsegna);
        m.set_outbox_backlog(7);
        m.verification_failure("unknown-signer");
        m.timer_notice("12h");
        m.observe_processing(Point::Accesso, Duration::from_millis(30));
        m.observe_processing(Point::Accesso, Duration::from_secs(2));

        let resp = get(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let lines: Vec<&str> = body.lines().collect();
        for expected in [
            "# TYPE pecora_messages_total counter",
            r#"pecora_messages_total{kind="posta-certificata",outcome="accepted",point="accesso"} 2"#,
            r#"pecora_messages_total{kind="ordinaria",outcome="anomaly",point="ricezione"} 1"#,
            r#"pecora_receipts_total{tipo="accettazione"} 1"#,
            r#"pecora_receipts_total{tipo="avvenuta-consegna"} 1"#,
            "# TYPE pecora_outbox_backlog gauge",
            "pecora_outbox_backlog 7",
            r#"pecora_verification_failures_total{reason="unknown-signer"} 1"#,
            r#"pecora_timer_notices_total{deadline="12h"} 1"#,
            "# TYPE pecora_processing_seconds histogram",
            r#"pecora_processing_seconds_bucket{point="accesso",le="0.025"} 0"#,
            r#"pecora_processing_seconds_bucket{point="accesso",le="0.05"} 1"#,
            r#"pecora_processing_seconds_bucket{point="accesso",le="2.5"} 2"#,
            r#"pecora_processing_seconds_bucket{point="accesso",le="+Inf"} 2"#,
            r#"pecora_processing_seconds_count{point="accesso"} 2"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{body}");
        }
        let sum = lines
            .iter()
            .find_map(|l| l.strip_prefix(r#"pecora_processing_seconds_sum{point="accesso"} "#))
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 2.03).abs() < 1e-9, "{sum}");

        // Anything but GET /metrics is 404; garbage and oversized heads are 400.
        assert!(
            get(addr, b"GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404 ")
        );
        assert!(
            get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404 ")
        );
        assert!(
            get(addr, b"nonsense\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400 ")
        );
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES + 10));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(get(addr, &big).await.starts_with("HTTP/1.1 400 "));

        server.abort();
    }
}
