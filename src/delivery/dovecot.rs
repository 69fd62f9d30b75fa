//! Reading a stored message back from Dovecot with `doveadm fetch`, so the delivery point
//! works on exactly the bytes the mailbox holds.

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

/// The argument vector of `doveadm fetch` for one message.
pub fn fetch_args(doveadm: &[String], user: &str, mailbox: &str, uid: u32) -> Vec<String> {
    let mut v: Vec<String> = doveadm.to_vec();
    v.extend(["-f", "pager", "fetch", "-u", user, "text", "mailbox", mailbox, "uid"].map(String::from));
    v.push(uid.to_string());
    v
}

/// Takes the message out of doveadm's pager output: `text:` on its own line, the message,
/// then a form feed line after each record. `None` when doveadm printed no record.
pub fn parse_pager(out: &[u8]) -> Option<Vec<u8>> {
    let rest = out.strip_prefix(b"text:\n").or_else(|| out.strip_prefix(b"text: \n"))?;
    // The record ends with "\n\x0c\n" (one record: the last one in the output).
    let body = rest
        .strip_suffix(b"\n\x0c\n")
        .or_else(|| rest.strip_suffix(b"\x0c\n"))
        .unwrap_or(rest);
    Some(body.to_vec())
}

/// Fetches the whole stored message `uid` of `mailbox` for `user`.
pub async fn fetch(doveadm: &[String], user: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>, FetchError> {
    let args = fetch_args(doveadm, user, mailbox, uid);
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
    match parse_pager(&out.stdout) {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(FetchError::Gone { mailbox: mailbox.to_string(), uid }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pager_output() {
        assert_eq!(parse_pager(b"text:\nA: b\n\nbody\n\x0c\n").unwrap(), b"A: b\n\nbody");
        assert_eq!(parse_pager(b"text:\nA: b\n\nform\x0cfeed\n\x0c\n").unwrap(), b"A: b\n\nform\x0cfeed");
        assert_eq!(parse_pager(b""), None);
        assert_eq!(
            fetch_args(&["doveadm".into(), "-c".into(), "/x".into()], "u@d", "INBOX", 7).join(" "),
            "doveadm -c /x -f pager fetch -u u@d text mailbox INBOX uid 7"
        );
    }
}
