//! Virus scanning through clamd's INSTREAM command (clamd(8)): the message streams in
//! length-prefixed chunks over clamd's UNIX or TCP socket; clamd answers `stream: OK`,
//! `stream: <signature> FOUND` or an error.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::SocketSpec;

/// clamd's default StreamMaxLength is 25 MB; chunks are much smaller than that.
const CHUNK: usize = 64 * 1024;

/// The outcome of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    Clean,
    /// A virus was found; the signature name as clamd reports it.
    Infected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot reach clamd at {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("clamd I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("clamd timed out")]
    Timeout,
    #[error("clamd could not scan the message: {0}")]
    Clamd(String),
}

/// A clamd client.
#[derive(Debug, Clone)]
pub struct Clamd {
    pub endpoint: SocketSpec,
    pub timeout: Duration,
}

impl Clamd {
    pub fn new(endpoint: SocketSpec) -> Clamd {
        Clamd { endpoint, timeout: Duration::from_secs(120) }
    }

    /// Scans the message given as consecutive parts (header block, body), streaming each
    /// without joining them. Any failure is an error: the caller tempfails rather than let
    /// an unscanned message through.
    pub async fn scan(&self, data: &[&[u8]]) -> Result<ScanResult, ScanError> {
        let endpoint = self.endpoint.to_string();
        tokio::time::timeout(self.timeout, async {
            match &self.endpoint {
                SocketSpec::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p)
                        .await
                        .map_err(|source| ScanError::Connect { endpoint, source })?;
                    instream(s, data).await
                }
                SocketSpec::Inet(a) => {
                    let s = tokio::net::TcpStream::connect(a)
                        .await
                        .map_err(|source| ScanError::Connect { endpoint, source })?;
                    instream(s, data).await
                }
            }
        })
        .await
        .map_err(|_| ScanError::Timeout)?
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, data: &[&[u8]]) -> Result<ScanResult, ScanError> {
    s.write_all(b"zINSTREAM\0").await?;
    for chunk in data.iter().flat_map(|part| part.chunks(CHUNK)) {
        s.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        s.write_all(chunk).await?;
    }
    s.write_all(&0u32.to_be_bytes()).await?;
    s.flush().await?;
    let mut answer = Vec::new();
    (&mut s).take(4096).read_to_end(&mut answer).await?;
    parse_answer(&answer)
}

fn parse_answer(raw: &[u8]) -> Result<ScanResult, ScanError> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    let body = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if body == "OK" {
        Ok(ScanResult::Clean)
    } else if let Some(sig) = body.strip_suffix(" FOUND") {
        Ok(ScanResult::Infected(sig.trim().to_string()))
    } else {
        Err(ScanError::Clamd(body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse_answer(b"stream: OK\0").unwrap(), ScanResult::Clean);
        assert_eq!(
            parse_answer(b"stream: Eicar-Test-Signature FOUND\0").unwrap(),
            ScanResult::Infected("Eicar-Test-Signature".into())
        );
        assert!(parse_answer(b"INSTREAM size limit exceeded. ERROR\0").is_err());
        assert!(parse_answer(b"").is_err());
    }

    #[tokio::test]
    async fn streams_in_chunks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zINSTREAM\0");
            let mut total = Vec::new();
            loop {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).await.unwrap();
                let n = u32::from_be_bytes(len) as usize;
                if n == 0 {
                    break;
                }
                let mut buf = vec![0; n];
                s.read_exact(&mut buf).await.unwrap();
                total.extend(buf);
            }
            let verdict: &[u8] = if total.windows(5).any(|w| w == b"EICAR") {
                b"stream: Test FOUND\0"
            } else {
                b"stream: OK\0"
            };
            s.write_all(verdict).await.unwrap();
            total.len()
        });
        let c = Clamd::new(SocketSpec::Inet(addr.to_string()));
        let mut data = vec![b'a'; 200_000];
        data.extend_from_slice(b"EICAR");
        assert_eq!(c.scan(&[&data[..100], &data[100..]]).await.unwrap(), ScanResult::Infected("Test".into()));
        assert_eq!(server.await.unwrap(), 200_005);
    }
}
