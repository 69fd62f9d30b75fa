//! SMTP client, and the injector: how pecora hands the messages it generates (receipts, notices) to
//! Postfix, through the dedicated listener that runs no milter.
//!
//! A deliberately small SMTP client (RFC 5321): greeting, EHLO, optional STARTTLS or TLS
//! and AUTH PLAIN, MAIL, RCPT, DATA with dot stuffing, QUIT. The injector speaks plain SMTP
//! over a UNIX socket (the default: only pecora may write to it) or TCP on loopback; the
//! same client with TLS and AUTH drives the tests and the benchmark.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::config::SocketSpec;

/// Why a submission failed, and whether trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot reach the injection listener {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("injection listener I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("injection listener timed out during {0}")]
    Timeout(&'static str),
    #[error("injection listener answered {code} to {stage}: {text}")]
    Refused { stage: &'static str, code: u16, text: String },
    #[error("injection listener sent a malformed reply: {0:?}")]
    Protocol(String),
    #[error("TLS error: {0}")]
    Tls(String),
}

impl SubmitError {
    /// Temporary failures (network, 4xx) are retried; 5xx answers are permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            SubmitError::Refused { code, .. } => *code < 500,
            _ => true,
        }
    }
}

/// One SMTP reply: code and the text of all its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

/// How the client protects the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP (the injection listener on a UNIX socket or loopback).
    None,
    /// STARTTLS after the first EHLO (submission, port 587).
    StartTls,
    /// TLS from the first byte (smtps, port 465).
    Tls,
}

/// Options of a client session.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub helo: String,
    pub security: Security,
    /// CA file to verify the server certificate with; `None` uses the system store.
    pub ca_file: Option<std::path::PathBuf>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// SASL PLAIN login and password.
    pub auth: Option<(String, String)>,
    pub timeout: Duration,
}

impl ClientOptions {
    pub fn plain(helo: impl Into<String>) -> ClientOptions {
        ClientOptions {
            helo: helo.into(),
            security: Security::None,
            ca_file: None,
            server_name: String::new(),
            auth: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// An open SMTP session, ready for transactions.
pub struct SmtpClient {
    conn: Conn<Box<dyn Stream>>,
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO, and does STARTTLS/TLS and AUTH as asked.
    pub async fn connect(endpoint: &SocketSpec, opts: &ClientOptions) -> Result<SmtpClient, SubmitError> {
        let name = endpoint.to_string();
        let connect = async {
            match endpoint {
                SocketSpec::Unix(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Stream>),
                SocketSpec::Inet(addr) => tokio::net::TcpStream::connect(addr).await.map(|s| {
                    // Commands are small writes answered one by one: no Nagle delay.
                    let _ = s.set_nodelay(true);
                    Box::new(s) as Box<dyn Stream>
                }),
            }
        };
        let mut stream = tokio::time::timeout(opts.timeout, connect)
            .await
            .map_err(|_| SubmitError::Timeout("connect"))?
            .map_err(|source| SubmitError::Connect { endpoint: name, source })?;
        if opts.security == Security::Tls {
            stream = tls_wrap(stream, opts).await?;
        }
        let mut conn = Conn { io: BufReader::new(stream), timeout: opts.timeout };
        conn.expect("greeting", 220).await?;
        conn.command("EHLO", &format!("EHLO {}", opts.helo), 250).await?;
        if opts.security == Security::StartTls {
            conn.command("STARTTLS", "STARTTLS", 220).await?;
            let plain = conn.io.into_inner();
            conn = Conn { io: BufReader::new(tls_wrap(plain, opts).await?), timeout: opts.timeout };
            conn.command("EHLO", &format!("EHLO {}", opts.helo), 250).await?;
        }
        if let Some((user, pass)) = &opts.auth {
            use base64::Engine as _;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            conn.command("AUTH", &format!("AUTH PLAIN {token}"), 235).await?;
        }
        Ok(SmtpClient { conn })
    }

    /// One mail transaction on the open session.
    pub async fn send(&mut self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Result<Reply, SubmitError> {
        self.conn.transaction(mail_from, rcpts, message).await
    }

    /// Resets the session between transactions (RSET): also proves it still answers.
    pub async fn reset(&mut self) -> Result<(), SubmitError> {
        self.conn.command("RSET", "RSET", 250).await.map(|_| ())
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        let _ = self.conn.command("QUIT", "QUIT", 221).await;
    }
}

async fn tls_wrap(stream: Box<dyn Stream>, opts: &ClientOptions) -> Result<Box<dyn Stream>, SubmitError> {
    use openssl::ssl::{SslConnector, SslMethod};
    let tls_err = |e: &dyn std::fmt::Display| SubmitError::Tls(e.to_string());
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_err(&e))?;
    if let Some(ca) = &opts.ca_file {
        builder.set_ca_file(ca).map_err(|e| tls_err(&e))?;
    }
    let ssl = builder
        .build()
        .configure()
        .and_then(|c| c.into_ssl(&opts.server_name))
        .map_err(|e| tls_err(&e))?;
    let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(|e| tls_err(&e))?;
    tokio::time::timeout(opts.timeout, std::pin::Pin::new(&mut tls).connect())
        .await
        .map_err(|_| SubmitError::Timeout("TLS handshake"))?
        .map_err(|e| tls_err(&e))?;
    Ok(Box::new(tls))
}

/// The injector: its settings, and the session the last submission left open.
#[derive(Clone)]
pub struct Injector {
    pub endpoint: SocketSpec,
    pub helo: String,
    pub timeout: Duration,
    /// One session kept open between submissions, with when it was last used: a receipt
    /// per submission made the access point open (greeting, EHLO, QUIT) one SMTP session
    /// per message, and Postfix start an smtpd session for each.
    idle: std::sync::Arc<std::sync::Mutex<Option<(SmtpClient, std::time::Instant)>>>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector").field("endpoint", &self.endpoint).field("helo", &self.helo).finish_non_exhaustive()
    }
}

/// A kept session idle longer than this is closed rather than reused (Postfix's smtpd
/// would time it out at `smtpd_timeout`, 300 s by default, and it holds an smtpd process).
const IDLE_REUSE: Duration = Duration::from_secs(30);

impl Injector {
    pub fn new(endpoint: SocketSpec, helo: String) -> Injector {
        Injector { endpoint, helo, timeout: Duration::from_secs(60), idle: Default::default() }
    }

    /// Submits one message. On success returns the final reply (Postfix puts the queue id
    /// in it: "250 2.0.0 Ok: queued as 4XyZ…").
    ///
    /// The session of the previous submission is reused when it is recent and answers
    /// RSET; if it does not, nothing of this message was sent on it, and a new session is
    /// opened. A failure after that is this message's (no second attempt here: the outbox
    /// decides, with the injection record, whether Postfix took it).
    pub async fn submit(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Result<Reply, SubmitError> {
        // A session idle too long is dropped, closed without a QUIT: Postfix may have timed
        // it out, and its answer would be waited for as long as `timeout`.
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take().filter(|(_, used)| used.elapsed() < IDLE_REUSE);
        let reused = match kept {
            Some((mut client, _)) => match client.reset().await {
                Ok(()) => Some(client),
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoint, "kept injection session no longer answers ({e}): opening a new one");
                    None
                }
            },
            None => None,
        };
        let mut client = match reused {
            Some(c) => c,
            None => {
                let mut opts = ClientOptions::plain(self.helo.clone());
                opts.timeout = self.timeout;
                SmtpClient::connect(&self.endpoint, &opts).await?
            }
        };
        let reply = client.send(mail_from, rcpts, message).await?;
        // The message is queued: keep the session for the next one (QUIT it if another
        // submission kept one meanwhile).
        let extra = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.as_ref() {
                None => {
                    *idle = Some((client, std::time::Instant::now()));
                    None
                }
                Some(_) => Some(client),
            }
        };
        if let Some(c) = extra {
            c.quit().await;
        }
        Ok(reply)
    }
}

pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn<S> {
    io: BufReader<S>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn transaction(&mut self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Result<Reply, SubmitError> {
        self.command("MAIL FROM", &format!("MAIL FROM:<{}>", clean(mail_from)), 250).await?;
        for r in rcpts {
            self.command("RCPT TO", &format!("RCPT TO:<{}>", clean(r)), 250).await?;
        }
        self.command("DATA", "DATA", 354).await?;
        let data = dot_stuff(message);
        tokio::time::timeout(self.timeout, async {
            self.io.get_mut().write_all(&data).await?;
            self.io.get_mut().write_all(b".\r\n").await?;
            self.io.get_mut().flush().await
        })
        .await
        .map_err(|_| SubmitError::Timeout("message data"))??;
        self.expect("end of data", 250).await
    }

    async fn command(&mut self, stage: &'static str, line: &str, want: u16) -> Result<Reply, SubmitError> {
        tokio::time::timeout(self.timeout, async {
            self.io.get_mut().write_all(line.as_bytes()).await?;
            self.io.get_mut().write_all(b"\r\n").await?;
            self.io.get_mut().flush().await
        })
        .await
        .map_err(|_| SubmitError::Timeout(stage))??;
        self.expect(stage, want).await
    }

    async fn expect(&mut self, stage: &'static str, want: u16) -> Result<Reply, SubmitError> {
        let reply = tokio::time::timeout(self.timeout, read_reply(&mut self.io))
            .await
            .map_err(|_| SubmitError::Timeout(stage))??;
        if reply.code / 100 == want / 100 {
            Ok(reply)
        } else {
            Err(SubmitError::Refused { stage, code: reply.code, text: reply.text })
        }
    }
}

/// Addresses come from our own signed messages, but never let one carry a line break.
fn clean(addr: &str) -> String {
    addr.chars().filter(|c| !c.is_control() && *c != '<' && *c != '>').collect()
}

async fn read_reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Reply, SubmitError> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(SubmitError::Protocol("connection closed".into()));
        }
        if line.len() > 2000 {
            return Err(SubmitError::Protocol("reply line too long".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| SubmitError::Protocol(line.to_string()))?;
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(line.get(4..).unwrap_or(""));
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(Reply { code, text });
        }
    }
}

/// CRLF line endings, a leading dot doubled, and a final CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 2);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                at_line_start = true;
                continue;
            }
            b'\n' | b'\r' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The queue id in Postfix's end-of-data reply, if it says one.
pub fn queue_id_of(reply: &Reply) -> Option<String> {
    let pos = reply.text.find("queued as ")?;
    let id: String = reply.text[pos + 10..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn dot_stuffing_and_line_endings() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n");
        assert_eq!(dot_stuff(b""), b"");
        assert_eq!(dot_stuff(b"x\ry"), b"x\r\ny\r\n");
    }

    #[test]
    fn queue_id_from_postfix_reply() {
        let r = Reply { code: 250, text: "2.0.0 Ok: queued as 4XyZabc123".into() };
        assert_eq!(queue_id_of(&r).as_deref(), Some("4XyZabc123"));
        assert_eq!(queue_id_of(&Reply { code: 250, text: "Ok".into() }), None);
    }

    /// A scripted SMTP server: answers each command with the next reply, records input.
    async fn fake_server(replies: Vec<&'static str>) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let (addr, task) = fake_server_sessions(vec![replies]).await;
        (addr, tokio::spawn(async move { task.await.unwrap().concat() }))
    }

    /// One script per connection, accepted one after the other; the input of each. A
    /// script that runs out closes its connection.
    async fn fake_server_sessions(scripts: Vec<Vec<&'static str>>) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut sessions = Vec::new();
            for replies in scripts {
                let (mut s, _) = l.accept().await.unwrap();
                let mut seen = Vec::new();
                let mut replies = replies.into_iter();
                s.write_all(replies.next().unwrap().as_bytes()).await.unwrap();
                let mut buf = [0u8; 65536];
                let mut in_data = false;
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let ends_data = in_data && seen.ends_with(b"\r\n.\r\n");
                    if in_data && !ends_data {
                        continue;
                    }
                    in_data = false;
                    if seen.ends_with(b"DATA\r\n") {
                        in_data = true;
                    }
                    match replies.next() {
                        Some(r) => s.write_all(r.as_bytes()).await.unwrap(),
                        None => break,
                    }
                }
                sessions.push(seen);
            }
            sessions
        });
        (addr, task)
    }

    const TRANSACTION: [&str; 4] = ["250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 2.0.0 Ok: queued as Q1\r\n"];

    #[tokio::test]
    async fn the_next_submission_reuses_the_session_after_rset() {
        let mut script = vec!["220 hi\r\n", "250 hello\r\n"];
        script.extend(TRANSACTION);
        script.push("250 2.0.0 reset\r\n");
        script.extend(TRANSACTION);
        let (addr, task) = fake_server_sessions(vec![script]).await;
        let mut inj = Injector::new(SocketSpec::Inet(addr.to_string()), "h".into());
        inj.timeout = Duration::from_secs(5);
        inj.submit("a@b", &["c@d".into()], b"one").await.unwrap();
        inj.submit("a@b", &["c@d".into()], b"two").await.unwrap();
        drop(inj);
        let sessions = task.await.unwrap();
        assert_eq!(sessions.len(), 1);
        let seen = String::from_utf8(sessions[0].clone()).unwrap();
        assert_eq!(seen.matches("EHLO").count(), 1, "{seen}");
        assert!(seen.contains("one\r\n.\r\nRSET\r\nMAIL FROM:<a@b>\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn a_kept_session_that_no_longer_answers_is_replaced_before_anything_is_sent() {
        // The first session ends after its transaction (Postfix timed it out, say): the
        // RSET gets no answer, and the message goes whole on a new session.
        let mut first = vec!["220 hi\r\n", "250 hello\r\n"];
        first.extend(TRANSACTION);
        let mut second = vec!["220 hi\r\n", "250 hello\r\n"];
        second.extend(TRANSACTION);
        let (addr, task) = fake_server_sessions(vec![first, second]).await;
        let mut inj = Injector::new(SocketSpec::Inet(addr.to_string()), "h".into());
        inj.timeout = Duration::from_secs(5);
        inj.submit("a@b", &["c@d".into()], b"one").await.unwrap();
        let reply = inj.submit("a@b", &["c@d".into()], b"two").await.unwrap();
        assert_eq!(queue_id_of(&reply).as_deref(), Some("Q1"));
        drop(inj);
        let sessions: Vec<String> = task.await.unwrap().into_iter().map(|s| String::from_utf8(s).unwrap()).collect();
        assert_eq!(sessions.len(), 2);
        assert!(!sessions[0].contains("two"), "{}", sessions[0]);
        assert!(sessions[1].contains("two\r\n.\r\n"), "{}", sessions[1]);
    }

    #[tokio::test]
    async fn a_failed_transaction_does_not_keep_its_session() {
        let (addr, task) = fake_server_sessions(vec![
            vec!["220 hi\r\n", "250 hello\r\n", "250 ok\r\n", "451 4.3.0 later\r\n"],
            vec!["220 hi\r\n", "250 hello\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "250 2.0.0 Ok: queued as Q2\r\n"],
        ])
        .await;
        let mut inj = Injector::new(SocketSpec::Inet(addr.to_string()), "h".into());
        inj.timeout = Duration::from_secs(5);
        assert!(inj.submit("a@b", &["c@d".into()], b"one").await.is_err());
        inj.submit("a@b", &["c@d".into()], b"two").await.unwrap();
        drop(inj);
        let sessions = task.await.unwrap();
        assert_eq!(sessions.len(), 2);
        assert!(!String::from_utf8_lossy(&sessions[1]).contains("RSET"));
    }

    #[tokio::test]
    async fn submits_a_message() {
        let (addr, task) = fake_server(vec![
            "220 hi\r\n",
            "250-hello\r\n250 PIPELINING\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 2.0.0 Ok: queued as ABC123\r\n",
            "221 bye\r\n",
        ])
        .await;
        let inj = Injector::new(SocketSpec::Inet(addr.to_string()), "pecora.test".into());
        let reply = inj.submit("posta-certificata@pec.a.test", &["x@pec.a.test".into()], b"Subject: t\n\n.hidden\n").await.unwrap();
        assert_eq!(queue_id_of(&reply).as_deref(), Some("ABC123"));
        drop(inj); // closes the session it kept for the next submission
        let seen = String::from_utf8(task.await.unwrap()).unwrap();
        assert!(seen.contains("MAIL FROM:<posta-certificata@pec.a.test>\r\n"));
        assert!(seen.contains("\r\n..hidden\r\n.\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn refusal_is_permanent_or_temporary_by_code() {
        let (addr, _t) = fake_server(vec!["220 hi\r\n", "250 hello\r\n", "451 4.3.0 try later\r\n"]).await;
        let inj = Injector::new(SocketSpec::Inet(addr.to_string()), "h".into());
        let e = inj.submit("a@b", &["c@d".into()], b"x").await.unwrap_err();
        assert!(e.is_temporary(), "{e}");
        let (addr, _t) = fake_server(vec!["220 hi\r\n", "250 hello\r\n", "250 ok\r\n", "550 5.1.1 no\r\n"]).await;
        let inj = Injector::new(SocketSpec::Inet(addr.to_string()), "h".into());
        let e = inj.submit("a@b", &["c@d".into()], b"x").await.unwrap_err();
        assert!(!e.is_temporary(), "{e}");
        assert!(e.to_string().contains("550"));
    }

    #[tokio::test]
    async fn unreachable_listener_is_temporary() {
        let inj = Injector::new(SocketSpec::Unix("/nonexistent/pecora-inject".into()), "h".into());
        assert!(inj.submit("a@b", &["c@d".into()], b"x").await.unwrap_err().is_temporary());
    }
}
