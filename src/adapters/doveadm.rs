//! Reading a stored message back from Dovecot with `doveadm fetch`, so the delivery point
//! works on exactly the bytes the mailbox holds, and certifies the time Dovecot saved them.
//!
//! pecora sends Dovecot one command only, `fetch`; the listener the shipped fragment
//! reserves for pecora (dovecot/pecora.conf.in) refuses every other one.

use std::process::Stdio;

/// Why a stored message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("the message is no longer in the mailbox (uid {uid} of {mailbox})")]
    Gone { mailbox: String, uid: u32 },
}

impl FetchError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, FetchError::Gone { .. })
    }
}

/// A stored message as Dovecot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unix time Dovecot saved it (`date.saved`), when Dovecot tells one.
    pub saved: Option<i64>,
    /// Its bytes.
    pub raw: Vec<u8>,
}

/// The fields pecora fetches of a delivered message: when Dovecot saved it, and its bytes.
const FETCH_FIELDS: &str = "date.saved.unixtime text";

/// A `date.saved.unixtime` value; Dovecot prints 0 (or nothing) when it has none.
fn saved_time(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok().filter(|t| *t > 0)
}

/// The argument vector of `doveadm fetch` for one message.
pub fn fetch_args(doveadm: &[String], user: &str, mailbox: &str, uid: u32) -> Vec<String> {
    let mut v: Vec<String> = doveadm.to_vec();
    v.extend(["-f", "pager", "fetch", "-u", user, FETCH_FIELDS, "mailbox", mailbox, "uid"].map(String::from));
    v.push(uid.to_string());
    v
}

/// Takes the record out of doveadm's pager output for [`FETCH_FIELDS`]:
/// `date.saved.unixtime: N` on a line, `text:` on its own line, the message, then a form
/// feed line after each record. `None` when doveadm printed no record.
pub fn parse_pager(out: &[u8]) -> Option<StoredMessage> {
    let (saved, out) = match out.strip_prefix(b"date.saved.unixtime:") {
        Some(rest) => {
            let end = rest.iter().position(|b| *b == b'\n')?;
            (saved_time(&rest[..end]), &rest[end + 1..])
        }
        None => (None, out),
    };
    let rest = out.strip_prefix(b"text:\n").or_else(|| out.strip_prefix(b"text: \n"))?;
    // The record ends with "\n\x0c\n" (one record: the last one in the output).
    let body = rest
        .strip_suffix(b"\n\x0c\n")
        .or_else(|| rest.strip_suffix(b"\x0c\n"))
        .unwrap_or(rest);
    Some(StoredMessage { saved, raw: body.to_vec() })
}

/// Fetches the whole stored message `uid` of `mailbox` for `user`, and the time Dovecot
/// saved it, through pecora's doveadm-server socket when one is configured, else with the
/// doveadm command.
pub async fn fetch(delivery: &crate::config::Delivery, user: &str, mailbox: &str, uid: u32) -> Result<StoredMessage, FetchError> {
    match &delivery.doveadm_socket {
        Some(socket) => fetch_from_server(socket, user, mailbox, uid).await,
        None => fetch_with_command(&delivery.doveadm, user, mailbox, uid).await,
    }
}

/// Dovecot's tab escaping (`str_tabescape`): the protocol's fields never hold a raw TAB,
/// CR or LF.
pub fn tab_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\0' => out.push_str("\x010"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`tab_escape`] on bytes (a message need not be UTF-8).
pub fn tab_unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0x01 && i + 1 < b.len() {
            out.push(match b[i + 1] {
                b'0' => 0,
                b'1' => 0x01,
                b't' => b'\t',
                b'r' => b'\r',
                b'n' => b'\n',
                other => other,
            });
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The most a doveadm-server answer may take (a 50 MB message, escaped, with room).
const MAX_ANSWER: u64 = 256 << 20;

/// One command on the doveadm server listening on `socket`, in Dovecot's own protocol: the
/// VERSION handshake, one line of tab-escaped arguments (`flags`, user, command, its
/// arguments); the answer is one line of tab-escaped values, each followed by a TAB, then
/// `+` or `-REASON`. A listener of mode 0600 needs no password; any other mode makes
/// Dovecot ask for one, which pecora does not hold. Returns the values.
pub async fn server_request(socket: &std::path::Path, args: &[&str]) -> Result<Vec<Vec<u8>>, FetchError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let command = format!("doveadm-server {} {}", socket.display(), args[1..].join(" "));
    let failed = |why: String| FetchError::Failed { command: command.clone(), status: "error".into(), stderr: why };
    let talk = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| FetchError::Spawn { command: command.clone(), source })?;
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r.take(MAX_ANSWER));
        w.write_all(b"VERSION\tdoveadm-server\t1\t0\n").await.map_err(|e| failed(e.to_string()))?;
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await.map_err(|e| failed(e.to_string()))?;
        match line.as_slice() {
            b"+\n" => {}
            b"-\n" => {
                return Err(failed(format!(
                    "Dovecot asks for a password: make its listener {} mode 0600, owned by pecora's user (dovecot/pecora.conf.in)",
                    socket.display()
                )));
            }
            other => return Err(failed(format!("unexpected greeting {:?}", String::from_utf8_lossy(other)))),
        }
        let request = args.iter().map(|a| tab_escape(a)).collect::<Vec<_>>().join("\t") + "\n";
        w.write_all(request.as_bytes()).await.map_err(|e| failed(e.to_string()))?;
        let mut output = Vec::new();
        r.read_until(b'\n', &mut output).await.map_err(|e| failed(e.to_string()))?;
        if output.last() != Some(&b'\n') {
            return Err(failed("the answer was cut short (or exceeds 256 MB)".into()));
        }
        let mut status = Vec::new();
        r.read_until(b'\n', &mut status).await.map_err(|e| failed(e.to_string()))?;
        match status.as_slice() {
            b"+\n" => {}
            s => {
                let why = String::from_utf8_lossy(s).trim().trim_start_matches('-').to_string();
                return Err(failed(match why.as_str() {
                    "NOUSER" => format!("Dovecot knows no user {}", args.get(1).unwrap_or(&"")),
                    "" => "the command failed (see Dovecot's log)".into(),
                    other => format!("the command failed: {other}"),
                }));
            }
        }
        output.pop();
        let values = output.strip_suffix(b"\t").unwrap_or(&output);
        if values.is_empty() {
            return Ok(Vec::new());
        }
        Ok(values.split(|b| *b == b'\t').map(tab_unescape).collect())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(120), talk).await {
        Ok(r) => r,
        Err(_) => Err(failed("no answer within 120 s".into())),
    }
}

/// A stored message for `user` through the doveadm server on `socket`.
pub async fn fetch_from_server(socket: &std::path::Path, user: &str, mailbox: &str, uid: u32) -> Result<StoredMessage, FetchError> {
    let uid_text = uid.to_string();
    let values = server_request(socket, &["", user, "fetch", FETCH_FIELDS, "mailbox", mailbox, "uid", &uid_text]).await?;
    match values.as_slice() {
        [saved, text] if !text.is_empty() => Ok(StoredMessage { saved: saved_time(saved), raw: text.clone() }),
        _ => Err(FetchError::Gone { mailbox: mailbox.to_string(), uid }),
    }
}

/// Where a mailbox holds a message, and when Dovecot saved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub mailbox: String,
    pub uid: u32,
    /// Unix time Dovecot saved the message.
    pub saved: i64,
}

/// The copies of the message with `message_id` (angle brackets included) in any mailbox of
/// `user`: `fetch 'mailbox uid date.saved.unixtime' header Message-ID <id>`.
pub async fn locate(delivery: &crate::config::Delivery, user: &str, message_id: &str) -> Result<Vec<Located>, FetchError> {
    const FIELDS: &str = "mailbox uid date.saved.unixtime";
    let records: Vec<Vec<Vec<u8>>> = match &delivery.doveadm_socket {
        Some(socket) => server_request(socket, &["", user, "fetch", FIELDS, "header", "Message-ID", message_id])
            .await?
            .chunks(3)
            .map(<[Vec<u8>]>::to_vec)
            .collect(),
        None => {
            let mut args: Vec<String> = delivery.doveadm.to_vec();
            args.extend(["-f", "tab", "fetch", "-u", user, FIELDS, "header", "Message-ID", message_id].map(String::from));
            let out = run_command(&args).await?;
            // A header line, then one line per message, values separated by TABs.
            out.split(|b| *b == b'\n').skip(1).filter(|l| !l.is_empty()).map(|l| l.split(|b| *b == b'\t').map(<[u8]>::to_vec).collect()).collect()
        }
    };
    let text = |v: &Vec<u8>| String::from_utf8_lossy(v).trim().to_string();
    Ok(records
        .iter()
        .filter_map(|r| match r.as_slice() {
            [mailbox, uid, saved] => Some(Located { mailbox: text(mailbox), uid: text(uid).parse().ok()?, saved: text(saved).parse().ok()? }),
            _ => None,
        })
        .collect())
}

/// Runs a doveadm command line; its standard output.
async fn run_command(args: &[String]) -> Result<Vec<u8>, FetchError> {
    let command = args.join(" ");
    let (program, rest) = args.split_first().expect("doveadm command validated non-empty");
    let out = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| FetchError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(FetchError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect(),
        });
    }
    Ok(out.stdout)
}

/// Fetches the message by running the doveadm command.
pub async fn fetch_with_command(doveadm: &[String], user: &str, mailbox: &str, uid: u32) -> Result<StoredMessage, FetchError> {
    let out = run_command(&fetch_args(doveadm, user, mailbox, uid)).await?;
    match parse_pager(&out) {
        Some(m) if !m.raw.is_empty() => Ok(m),
        _ => Err(FetchError::Gone { mailbox: mailbox.to_string(), uid }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_escaping_round_trips() {
        let s = "a\tb\r\nc\x01d\x00e";
        let e = tab_escape(s);
        assert!(!e.contains(['\t', '\r', '\n']));
        assert_eq!(tab_unescape(e.as_bytes()), s.as_bytes());
        assert_eq!(tab_unescape(b"A: b\x01nX: \x01tc\x01n"), b"A: b\nX: \tc\n");
    }

    #[test]
    fn pager_output() {
        let got = parse_pager(b"date.saved.unixtime: 1700000000\ntext:\nA: b\n\nbody\n\x0c\n").unwrap();
        assert_eq!((got.saved, got.raw.as_slice()), (Some(1700000000), &b"A: b\n\nbody"[..]));
        let got = parse_pager(b"date.saved.unixtime: 0\ntext:\nA: b\n\nform\x0cfeed\n\x0c\n").unwrap();
        assert_eq!((got.saved, got.raw.as_slice()), (None, &b"A: b\n\nform\x0cfeed"[..]));
        assert_eq!(parse_pager(b"text:\nA: b\n\nbody\n\x0c\n").unwrap().raw, b"A: b\n\nbody");
        assert_eq!(parse_pager(b""), None);
        assert_eq!(
            fetch_args(&["doveadm".into(), "-c".into(), "/x".into()], "u@d", "INBOX", 7),
            ["doveadm", "-c", "/x", "-f", "pager", "fetch", "-u", "u@d", "date.saved.unixtime text", "mailbox", "INBOX", "uid", "7"]
        );
    }
}
