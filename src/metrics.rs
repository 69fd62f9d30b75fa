//! Prometheus metrics and their optional HTTP endpoint (`[metrics] listen`).
//!
//! The families, all prefixed `pecora_`:
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `pecora_messages_total` | counter | `point` (accesso, ricezione, consegna), `kind` (a [`MessageKind::label`]), `outcome` |
//! | `pecora_receipts_total` | counter | `tipo` (the daticert `tipo` of the receipt emitted) |
//! | `pecora_outbox_backlog` | gauge | — (messages in the outbox not yet handed to Postfix) |
//! | `pecora_verification_failures_total` | counter | `reason` |
//! | `pecora_timer_notices_total` | counter | `deadline` (e.g. `12h`, `24h`) |
//! | `pecora_processing_seconds` | histogram | `point` |
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
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::pec::types::{MessageKind, Tipo};

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

/// The PEC point a message went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Punto di accesso (submission).
    Accesso,
    /// Punto di ricezione (MX).
    Ricezione,
    /// Punto di consegna (Dovecot hook).
    Consegna,
}

impl Point {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Point::Accesso => "accesso",
            Point::Ricezione => "ricezione",
            Point::Consegna => "consegna",
        }
    }
}

/// Every metric pecora exports, in one registry.
pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    receipts: IntCounterVec,
    outbox_backlog: IntGauge,
    verification_failures: IntCounterVec,
    timer_notices: IntCounterVec,
    processing_seconds: HistogramVec,
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
        registry.register(Box::new(verification_failures.clone()))?;
        registry.register(Box::new(timer_notices.clone()))?;
        registry.register(Box::new(processing_seconds.clone()))?;
        Ok(Metrics {
            registry,
            messages,
            receipts,
            outbox_backlog,
            verification_failures,
            timer_notices,
            processing_seconds,
        })
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

/// Binds `addr` and serves `metrics` on it until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    serve_on(listener, metrics).await
}

/// Serves `metrics` on an already bound listener (tests bind port 0 and read the address).
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
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
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await {
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
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
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
        let server = tokio::spawn(serve_on(listener, Arc::clone(&m)));

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
