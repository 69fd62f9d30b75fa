//! One milter connection: what Postfix told us about it and about the message in flight.
//! The PEC decisions (access point, reception point) are taken here, at end of message.

use std::ffi::CString;
use std::sync::Arc;

use indymilter::{ContextActions, SetErrorReply, SocketInfo, Status};

use super::spool::Spool;
use crate::config::Config;
use crate::serve::Shared;

/// Most header bytes one message may carry before it is refused.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Which PEC point a Postfix listener is, from its `milter_macro_daemon_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Authenticated submission (587/465): `PEC-ACCESSO`.
    Access,
    /// The MX listener (25): `PEC-RICEZIONE`.
    Reception,
}

impl Role {
    pub fn from_daemon_name(name: &str) -> Option<Role> {
        match name {
            n if n.eq_ignore_ascii_case("PEC-ACCESSO") => Some(Role::Access),
            n if n.eq_ignore_ascii_case("PEC-RICEZIONE") => Some(Role::Reception),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Access => "access",
            Role::Reception => "reception",
        }
    }
}

/// The message in flight.
#[derive(Default)]
pub struct Message {
    /// SASL login (`{auth_authen}`), if the client authenticated.
    pub login: Option<String>,
    /// MAIL FROM, without angle brackets.
    pub mail_from: String,
    /// RCPT TO addresses, without angle brackets, in order.
    pub rcpts: Vec<String>,
    /// Headers as Postfix showed them: name and value (LF folding, leading space kept).
    pub headers: Vec<(String, Vec<u8>)>,
    header_bytes: usize,
    /// The body, CRLF line endings.
    pub body: Spool,
}

/// Per-connection state.
pub struct Session {
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub role: Option<Role>,
    pub client: String,
    pub message: Option<Message>,
}

/// Strips the angle brackets of a MAIL/RCPT argument.
fn address_arg(args: &[CString]) -> String {
    let raw = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    let t = raw.trim();
    t.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(t).to_string()
}

impl Session {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>) -> Session {
        Session { config, shared, role: None, client: String::new(), message: None }
    }

    pub fn connect(&mut self, host: &str, socket: &SocketInfo, daemon: Option<&str>) -> Status {
        self.client = match socket {
            SocketInfo::Inet(a) => format!("{host}[{}]", a.ip()),
            _ => host.to_string(),
        };
        let daemon = daemon.unwrap_or("");
        self.role = Role::from_daemon_name(daemon);
        if self.role.is_none() {
            // Fail closed: a listener we cannot place must not pass mail through.
            tracing::error!(
                client = %self.client,
                daemon_name = %daemon,
                "unknown milter_macro_daemon_name; set -o milter_macro_daemon_name=PEC-ACCESSO \
                 on submission/smtps or PEC-RICEZIONE on the MX listener; tempfailing"
            );
            return Status::Tempfail;
        }
        tracing::debug!(client = %self.client, role = ?self.role, "milter connect");
        Status::Continue
    }

    pub fn mail(&mut self, args: &[CString], login: Option<String>) -> Status {
        self.message = Some(Message {
            login: login.filter(|l| !l.is_empty()),
            mail_from: address_arg(args),
            ..Default::default()
        });
        Status::Continue
    }

    pub fn rcpt(&mut self, args: &[CString]) -> Status {
        if let Some(m) = self.message.as_mut() {
            m.rcpts.push(address_arg(args));
        }
        Status::Continue
    }

    pub fn header(&mut self, queue_id: &str, name: &[u8], value: &[u8]) -> Status {
        let Some(m) = self.message.as_mut() else {
            tracing::error!(queue_id, "header outside a transaction");
            return Status::Tempfail;
        };
        m.header_bytes += name.len() + value.len() + 4;
        if m.header_bytes > MAX_HEADER_BYTES {
            tracing::warn!(queue_id, "header section larger than {MAX_HEADER_BYTES} bytes");
            return Status::Reject;
        }
        m.headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        Status::Continue
    }

    pub async fn body(&mut self, queue_id: &str, chunk: &[u8]) -> Status {
        let threshold = self.config.limits.spool_threshold.0;
        let dir = self.config.limits.spool_dir.clone();
        let Some(m) = self.message.as_mut() else {
            tracing::error!(queue_id, "body outside a transaction");
            return Status::Tempfail;
        };
        // Spooling to disk is blocking I/O; it is small and sequential per chunk.
        match tokio::task::block_in_place(|| m.body.append(chunk, threshold, &dir)) {
            Ok(()) => Status::Continue,
            Err(e) => {
                tracing::error!(queue_id, error = %e, spool_dir = %dir.display(), "cannot spool message body");
                Status::Tempfail
            }
        }
    }

    pub async fn end_of_message(
        &mut self,
        queue_id: &str,
        _actions: &impl ContextActions,
        _reply: &mut impl SetErrorReply,
    ) -> Status {
        let Some(m) = self.message.take() else {
            tracing::error!(queue_id, "end of message outside a transaction");
            return Status::Tempfail;
        };
        let role = self.role.map(Role::as_str).unwrap_or("unknown");
        tracing::info!(
            queue_id,
            role,
            client = %self.client,
            login = m.login.as_deref().unwrap_or(""),
            from = %m.mail_from,
            rcpts = ?m.rcpts,
            size = m.body.len(),
            "message accepted unchanged (PEC processing is not enabled in this build)"
        );
        Status::Continue
    }

    pub fn abort(&mut self) {
        self.message = None;
    }
}
