//! One milter connection: what Postfix told us about it and about the message in flight.
//! The PEC decisions (access point, reception point) are taken here, at end of message.

use std::ffi::CString;
use std::sync::Arc;

use indymilter::{ContextActions, SetErrorReply, SocketInfo, Status};

use super::rewrite::replace_message;
use super::spool::Spool;
use crate::config::Config;
use crate::runtime::engine::Engine;
use crate::pec::access::{self, AccessRefusal, OriginalHeaders, Submission};
use crate::pec::build::{self, Notice, NoticeParams, Original, Transaction};
use crate::pec::types::Recipient;
use crate::runtime::state::{Runtime, Shared};
use crate::store::model::{EventType, NewEvent, NewOutboxMessage, Record, StateUpdate};

/// Most header bytes one message may carry before it is refused.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Which PEC point a Postfix listener is, from its `milter_macro_daemon_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Authenticated submission (587/465): `PEC-ACCESSO`.
    Access,
    /// The MX listener (25): `PEC-RICEZIONE`.
    Reception,
    /// Postfix's own mail through `non_smtpd_milters` (bounces, `postsuper -r`, local
    /// `sendmail`): `PEC-INTERNO`, the main.cf `milter_macro_daemon_name`.
    Internal,
}

impl Role {
    pub fn from_daemon_name(name: &str) -> Option<Role> {
        match name {
            n if n.eq_ignore_ascii_case("PEC-ACCESSO") => Some(Role::Access),
            n if n.eq_ignore_ascii_case("PEC-RICEZIONE") => Some(Role::Reception),
            n if n.eq_ignore_ascii_case("PEC-INTERNO") => Some(Role::Internal),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Access => "access",
            Role::Reception => "reception",
            Role::Internal => "internal",
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
    /// The whole message as Postfix passes it on: the header block (written at the first
    /// body chunk, or at end of message when there is no body), then the body, CRLF line
    /// endings. One buffer, so end of message needs no second copy to join them.
    pub body: Spool,
    /// Length of the header block at the start of `body`, once written.
    block_len: Option<usize>,
    /// A transaction at the MX past the spool threshold holds one of the
    /// `limits.max_large_transactions` permits until it ends.
    large: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The envelope check failed at MAIL: every RCPT is refused, and one notice goes to the
    /// authenticated mailbox when the transaction ends.
    envelope_refusal: Option<AccessRefusal>,
    refused_rcpts: Vec<String>,
}

/// The Postfix listener a milter connection comes from, from its connect macros.
///
/// Postfix >= 3.2 sends `{daemon_addr}` and `{daemon_port}` from smtpd and from cleanup's
/// milter emulation alike (cleanup's are the original smtpd's for `postsuper -r` of SMTP
/// mail, 127.0.0.1 and port 0 for bounces and local submissions), so they name a listener
/// but cannot tell SMTP from Postfix's own mail. `{client_resolve}` and
/// `{client_connections}` can: smtpd always defines them, cleanup never does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listener<'a> {
    pub addr: Option<&'a str>,
    pub port: Option<&'a str>,
    pub client_resolve: Option<&'a str>,
    pub client_connections: Option<&'a str>,
}

impl Listener<'_> {
    /// Whether the connection comes from an smtpd listener, i.e. from an SMTP client.
    pub fn is_smtpd(&self) -> bool {
        self.client_resolve.is_some() || self.client_connections.is_some()
    }
}

impl std::fmt::Display for Listener<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (None, None) => f.write_str("an unnamed listener"),
            (addr, port) => write!(f, "{}:{}", addr.unwrap_or("?"), port.unwrap_or("?")),
        }
    }
}

/// Per-connection state.
pub struct Session {
    pub runtime: Arc<Runtime>,
    pub shared: Arc<Shared>,
    pub role: Option<Role>,
    pub client: String,
    pub message: Option<Message>,
    /// The MTA sends headers without waiting for a reply (SMFIP_NR_HDR was negotiated).
    pub noreply_header: bool,
    /// A header's verdict other than Continue, kept for the next stage that replies (the
    /// first body chunk or end of message) when headers get no reply.
    deferred: Option<Status>,
}

/// Strips the angle brackets of a MAIL/RCPT argument.
fn address_arg(args: &[CString]) -> String {
    let raw = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    let t = raw.trim();
    t.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or(t).to_string()
}

/// The header block as the message had it: `Name:value` lines, CRLF.
pub(super) fn header_block(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for &b in value {
            if b == b'\n' {
                out.extend_from_slice(b"\r\n");
            } else if b != b'\r' {
                out.push(b);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// What the top-level headers claim the message is, as a bounded metrics label (nothing
/// here is trusted: the verifier decides).
fn claimed_kind(headers: &[(String, Vec<u8>)]) -> &'static str {
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
    };
    match (value("X-Trasporto").as_deref(), value("X-Ricevuta")) {
        (Some("posta-certificata"), _) => "posta-certificata",
        (Some("errore"), _) => "anomalia",
        (Some(_), _) => "other",
        (None, Some(r)) => crate::pec::types::Tipo::parse(&r).map(|t| t.as_str()).unwrap_or("other"),
        (None, None) => "ordinaria",
    }
}

fn recipients_of(tx: &Transaction) -> Vec<String> {
    tx.to.iter().chain(tx.cc.iter()).map(|r| r.address.clone()).collect()
}

/// SMTP reply text must not carry `%` unescaped (Postfix un-escapes `%%`) nor line breaks.
fn reply_text(s: &str) -> String {
    s.replace(['\r', '\n'], " ").replace('%', "%%")
}

pub(super) fn refuse(reply: &mut impl SetErrorReply, code: &str, xcode: &str, text: &str) -> Status {
    match reply.set_error_reply(code, Some(xcode), [reply_text(text).as_str()]) {
        Ok(()) if code.starts_with('4') => Status::Tempfail,
        Ok(()) => Status::Reject,
        Err(_) if code.starts_with('4') => Status::Tempfail,
        Err(_) => Status::Reject,
    }
}

impl Session {
    pub fn new(runtime: Arc<Runtime>, shared: Arc<Shared>) -> Session {
        Session {
            runtime,
            shared,
            role: None,
            client: String::new(),
            message: None,
            noreply_header: false,
            deferred: None,
        }
    }

    fn config(&self) -> &Config {
        &self.runtime.config
    }

    fn engine(&self) -> &Engine {
        &self.runtime.engine
    }

    /// `listener` names the Postfix listener and tells smtpd from cleanup's milter emulation
    /// for Postfix's own mail (`non_smtpd_milters`).
    pub fn connect(&mut self, host: &str, socket: &SocketInfo, daemon: Option<&str>, listener: Listener<'_>) -> Status {
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
                listener = %listener,
                "unknown milter_macro_daemon_name; set -o milter_macro_daemon_name=PEC-ACCESSO \
                 on submission/smtps, PEC-RICEZIONE on the MX listener, and \
                 milter_macro_daemon_name=PEC-INTERNO in main.cf; tempfailing"
            );
            return Status::Tempfail;
        }
        if self.role == Some(Role::Internal) && listener.is_smtpd() {
            // The internal role is main.cf's default, which every smtpd listener without
            // its own -o milter_macro_daemon_name inherits (a global smtpd_milters, the
            // smtpd behind postscreen...). Mail from an SMTP client never gets it.
            self.role = None;
            tracing::error!(
                client = %self.client,
                daemon_name = %daemon,
                listener = %listener,
                "the smtpd listener on {listener} calls pecora with milter_macro_daemon_name={daemon}, \
                 the role of Postfix's own mail; mail over SMTP never gets it: set \
                 -o milter_macro_daemon_name=PEC-ACCESSO (submission/smtps) or PEC-RICEZIONE (MX) \
                 on that master.cf service, or remove pecora from its smtpd_milters; tempfailing"
            );
            return Status::Tempfail;
        }
        tracing::debug!(client = %self.client, role = ?self.role, listener = %listener, "milter connect");
        Status::Continue
    }

    pub async fn mail(
        &mut self,
        args: &[CString],
        login: Option<String>,
        cert: Option<(String, String)>,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        self.finish_transaction().await;
        self.deferred = None;
        let mut login = login.filter(|l| !l.is_empty());
        if login.is_none() && self.role == Some(Role::Access) {
            // No SASL login: a verified client certificate from a users' CA may stand in.
            if let Some((issuer, subject)) = &cert {
                login = self.config().certificates.identity(issuer, subject);
                match &login {
                    Some(l) => tracing::info!(client = %self.client, %issuer, %subject, login = %l, "authenticated by client certificate"),
                    None => tracing::info!(client = %self.client, %issuer, %subject, "client certificate not accepted as a login"),
                }
            }
        }
        let mut m = Message {
            login,
            mail_from: address_arg(args),
            ..Default::default()
        };
        if self.role == Some(Role::Access) {
            match access::check_envelope(m.login.as_deref(), &m.mail_from) {
                Ok(()) => {}
                Err(AccessRefusal::NotAuthenticated) => {
                    tracing::info!(client = %self.client, from = %m.mail_from, "refused: not authenticated");
                    let r = AccessRefusal::NotAuthenticated;
                    let (code, xcode) = r.smtp_codes();
                    return refuse(reply, code, xcode, &r.to_string());
                }
                Err(r) => {
                    // Refused at each RCPT (we need the recipients for the notice).
                    tracing::info!(client = %self.client, login = ?m.login, from = %m.mail_from, "refused: {r}");
                    m.envelope_refusal = Some(r);
                }
            }
        }
        self.message = Some(m);
        Status::Continue
    }

    pub fn rcpt(&mut self, args: &[CString], reply: &mut impl SetErrorReply) -> Status {
        let Some(m) = self.message.as_mut() else { return Status::Continue };
        let rcpt = address_arg(args);
        if let Some(r) = &m.envelope_refusal {
            let (_, xcode) = r.smtp_codes();
            let text = r.to_string();
            m.refused_rcpts.push(rcpt);
            return refuse(reply, "553", xcode, &text);
        }
        m.rcpts.push(rcpt);
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

    /// [`Session::header`] under SMFIP_NR_HDR: the verdict of a header that is not Continue
    /// is kept (the first one) and given at the next stage that replies.
    pub fn header_noreply(&mut self, queue_id: &str, name: &[u8], value: &[u8]) -> Status {
        let verdict = self.header(queue_id, name, value);
        if !self.noreply_header {
            return verdict;
        }
        if !matches!(verdict, Status::Continue) && self.deferred.is_none() {
            self.deferred = Some(verdict);
        }
        Status::Noreply
    }

    pub async fn body(&mut self, queue_id: &str, chunk: &[u8], reply: &mut impl SetErrorReply) -> Status {
        if let Some(verdict) = self.deferred.take() {
            // A header refused the message: nothing of its body is kept.
            return verdict;
        }
        let threshold = self.config().limits.spool_threshold.0;
        let dir = self.config().limits.spool_dir.clone();
        let cap = self.config().limits.max_large_transactions;
        let reception = self.role == Some(Role::Reception);
        let permits = self.shared.large_transactions.clone();
        let client = self.client.clone();
        let Some(m) = self.message.as_mut() else {
            tracing::error!(queue_id, "body outside a transaction");
            return Status::Tempfail;
        };
        // Spooling to disk is blocking I/O; it is small and sequential per chunk.
        let spooled = tokio::task::block_in_place(|| {
            if m.block_len.is_none() {
                // Every header came before the first body chunk.
                let block = header_block(&m.headers);
                m.body.append(&block, threshold, &dir)?;
                m.block_len = Some(block.len());
            }
            m.body.append(chunk, threshold, &dir)
        });
        if let Err(e) = spooled {
            tracing::error!(queue_id, error = %e, spool_dir = %dir.display(), "cannot spool message body");
            return Status::Tempfail;
        }
        if reception && m.large.is_none() && m.body.len() > threshold {
            match permits.try_acquire_owned() {
                Ok(p) => m.large = Some(p),
                Err(_) => {
                    tracing::warn!(queue_id, %client, from = %m.mail_from, max_large_transactions = cap,
                        "tempfailed: too many large messages in progress at the MX");
                    m.body = Spool::new();
                    return refuse(
                        reply,
                        "451",
                        "4.3.2",
                        "too many large messages in progress here; try again later",
                    );
                }
            }
        }
        Status::Continue
    }

    pub async fn end_of_message(
        &mut self,
        queue_id: &str,
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        if let Some(verdict) = self.deferred.take() {
            return verdict;
        }
        let Some(m) = self.message.take() else {
            tracing::error!(queue_id, "end of message outside a transaction");
            return Status::Tempfail;
        };
        let mut m = m;
        if m.block_len.is_none() {
            // No body at all: the message is its header block.
            let threshold = self.config().limits.spool_threshold.0;
            let dir = self.config().limits.spool_dir.clone();
            let block = header_block(&m.headers);
            if let Err(e) = tokio::task::block_in_place(|| m.body.append(&block, threshold, &dir)) {
                tracing::error!(queue_id, error = %e, "cannot spool the message");
                return Status::Tempfail;
            }
            m.block_len = Some(block.len());
        }
        let split = m.block_len.unwrap_or(0);
        let large = matches!(m.body, super::spool::Spool::File { .. });
        // The one copy of the message pecora reads: memory for a small one, a read-only map
        // of the spool file (file pages, not heap) for a large one.
        let raw = match m.body.bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id, "cannot read the spooled message: {e}");
                return Status::Tempfail;
            }
        };
        let (block, body) = raw.split_at(split.min(raw.len()));
        let started = std::time::Instant::now();
        let status = match self.role {
            Some(Role::Access) => self.access_point(queue_id, &m, block, body, actions, reply).await,
            Some(Role::Reception) => self.reception_point(queue_id, &m, &raw, actions, reply).await,
            Some(Role::Internal) => self.internal(queue_id, &m, &raw, actions, reply).await,
            None => {
                tracing::error!(queue_id, "listener without a PEC role; tempfailing");
                Status::Tempfail
            }
        };
        if let Some(role) = self.role {
            let point = match role {
                Role::Access => crate::runtime::metrics::Point::Accesso,
                Role::Reception => crate::runtime::metrics::Point::Ricezione,
                Role::Internal => crate::runtime::metrics::Point::Interno,
            };
            let outcome = match status {
                Status::Continue | Status::Accept => "passed",
                Status::Reject => "refused",
                Status::Tempfail => "tempfail",
                Status::Discard => "discarded",
                _ => "other",
            };
            let metrics = crate::runtime::metrics::global();
            metrics.message_labelled(point, claimed_kind(&m.headers), outcome);
            metrics.observe_processing(point, started.elapsed());
        }
        if large {
            // A large message's buffers (OpenSSL's while verifying or signing, the
            // envelope's pieces) are freed by now: hand the memory back to the system, or
            // the allocator keeps it for the daemon's lifetime.
            drop(raw);
            drop(m);
            super::spool::release_freed_memory();
        }
        status
    }

    pub async fn abort(&mut self) {
        self.deferred = None;
        self.finish_transaction().await;
    }

    /// Ends the transaction in flight: an envelope refusal earns its notice now, when every
    /// refused recipient is known.
    pub async fn finish_transaction(&mut self) {
        let Some(m) = self.message.take() else { return };
        let (Some(refusal), Some(login)) = (m.envelope_refusal, m.login) else { return };
        if m.refused_rcpts.is_empty() {
            return;
        }
        let facts = OriginalHeaders {
            from: m.mail_from.clone(),
            to: m.refused_rcpts.clone(),
            cc: Vec::new(),
            reply_to: None,
            subject: None,
            message_id: None,
            receipt_type: None,
        };
        self.send_non_acceptance("NONE", &login, &facts, &refusal, false).await;
    }

    /// The access point (pec-format §4.1): checks, then the busta di trasporto replaces the
    /// message and the ricevuta di accettazione goes to the sender.
    async fn access_point(
        &mut self,
        queue_id: &str,
        m: &Message,
        block: &[u8],
        body: &[u8],
        actions: &impl ContextActions,
        reply: &mut impl SetErrorReply,
    ) -> Status {
        let limits = access::Limits {
            max_recipients: self.config().limits.max_recipients,
            max_size_times_recipients: self.config().limits.max_size_times_recipients.0,
        };
        let submission = Submission {
            login: m.login.as_deref(),
            mail_from: &m.mail_from,
            rcpts: &m.rcpts,
            header_block: &block,
            size: (block.len() + body.len()) as u64,
        };
        let facts = match access::check_message(&submission, limits) {
            Ok(h) => h,
            Err(refusal) => {
                tracing::info!(queue_id, login = ?m.login, from = %m.mail_from, "refused: {refusal}");
                if let (true, Some(login)) = (refusal.deserves_notice(), m.login.as_deref()) {
                    let facts = access::read_headers(&block).unwrap_or_else(|| OriginalHeaders {
                        from: m.mail_from.clone(),
                        to: m.rcpts.clone(),
                        cc: Vec::new(),
                        reply_to: None,
                        subject: None,
                        message_id: None,
                        receipt_type: None,
                    });
                    self.send_non_acceptance(queue_id, login, &facts, &refusal, false).await;
                }
                let (code, xcode) = refusal.smtp_codes();
                return refuse(reply, code, xcode, &refusal.to_string());
            }
        };

        if let Some(clamd) = &self.config().antivirus.clamd {
            match crate::adapters::clamd::Clamd::new(clamd.clone()).scan(&[block, body]).await {
                Ok(crate::adapters::clamd::ScanResult::Clean) => {}
                Ok(crate::adapters::clamd::ScanResult::Infected(sig)) => {
                    tracing::warn!(queue_id, login = ?m.login, virus = %sig, "refused: virus");
                    // The infected message is kept for the retention period (pec-format §4.1).
                    let mut raw = Vec::with_capacity(block.len() + body.len());
                    raw.extend_from_slice(block);
                    raw.extend_from_slice(body);
                    let q = crate::store::model::NewQuarantine {
                        pec_id: None,
                        reason: format!("virus at the access point: {sig}; login {}; queue id {queue_id}", m.login.as_deref().unwrap_or("")),
                        path: None,
                        content: Some(raw),
                    };
                    if let Err(e) = self.shared.store.backend().quarantine_add(&q, chrono::Utc::now()).await {
                        tracing::error!(queue_id, "cannot quarantine the infected message: {e}; tempfailing");
                        return Status::Tempfail;
                    }
                    let login = m.login.clone().unwrap_or_default();
                    let refusal_text = format!("virus found: {sig}");
                    self.send_non_acceptance_text(queue_id, &login, &facts, &refusal_text, true).await;
                    return refuse(reply, "550", "5.7.1", &format!("message refused: it contains a virus ({sig})"));
                }
                Err(e) => {
                    tracing::error!(queue_id, "virus scan failed: {e}; tempfailing");
                    return refuse(reply, "451", "4.7.1", "virus scan temporarily unavailable, try again later");
                }
            }
        }

        let engine = self.engine();
        let instant = engine.now();
        let pec_id = engine.new_identifier(&instant);
        let client_msgid = facts
            .message_id
            .clone()
            .unwrap_or_else(|| format!("<{}>", engine.new_identifier(&instant)));
        let tx = Transaction {
            instant,
            identificativo: pec_id.clone(),
            client_msgid,
            sender: facts.from.clone(),
            to: engine.typed(&facts.to),
            cc: engine.typed(&facts.cc),
            reply_to: facts.reply_to.clone(),
            subject: facts.subject.clone(),
            receipt: facts.receipt_type,
        };

        // Parsing and signing are CPU work: keep them off the async workers' queues.
        let built = tokio::task::block_in_place(|| {
            let envelope = build::build_envelope_parts(
                &engine.provider,
                &tx,
                Original::Split { headers: &m.headers, body: &body },
                &Engine::random(16),
                &engine.signer,
            )?;
            let receipt_id = engine.new_identifier(&instant);
            let acceptance = build::build_notice(
                &engine.provider,
                &tx,
                &NoticeParams { instant, message_id: &receipt_id, seed: &Engine::random(16) },
                &Notice::Accettazione,
                &engine.signer,
            )?;
            Ok::<_, build::BuildError>((envelope, acceptance))
        });
        // Same provider (decisions.md 7): for our own recipients this host is also the
        // reception point, so the presa in carico to our service mailbox goes out with the
        // acceptance.
        let local: Vec<String> = recipients_of(&tx).into_iter().filter(|r| engine.is_local(r)).collect();
        let take_charge = if local.is_empty() {
            None
        } else {
            let receipt_id = engine.new_identifier(&instant);
            let mail_receipt = engine.own_mail_receipt();
            match tokio::task::block_in_place(|| {
                build::build_notice(
                    &engine.provider,
                    &tx,
                    &NoticeParams { instant, message_id: &receipt_id, seed: &Engine::random(16) },
                    &Notice::PresaInCarico { ricezione: &local, mail_receipt: &mail_receipt },
                    &engine.signer,
                )
            }) {
                Ok(b) => Some((b, mail_receipt)),
                Err(e) => {
                    tracing::error!(queue_id, pec_id = %pec_id, "cannot build the presa in carico: {e}; tempfailing");
                    return Status::Tempfail;
                }
            }
        };
        let (envelope, acceptance) = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id, pec_id = %pec_id, "cannot build the transport envelope: {e}; tempfailing");
                return Status::Tempfail;
            }
        };
        if let Err(e) = replace_message(actions, &m.headers, &envelope.headers, &envelope.body).await {
            tracing::error!(queue_id, pec_id = %pec_id, "cannot replace the message: {e}; tempfailing");
            return Status::Tempfail;
        }
        let recipients: Vec<&Recipient> = tx.to.iter().chain(tx.cc.iter()).collect();
        tracing::info!(
            queue_id,
            pec_id = %pec_id,
            login = ?m.login,
            from = %tx.sender,
            recipients = ?recipients.iter().map(|r| format!("{} ({})", r.address, r.kind)).collect::<Vec<_>>(),
            size = body.len(),
            "accepted: busta di trasporto signed"
        );
        let login = m.login.clone().unwrap_or(tx.sender.clone());
        let mut event = NewEvent::new(instant, EventType::Acceptance);
        event.pec_id = Some(pec_id.clone());
        event.client_msgid = Some(tx.client_msgid.trim_matches(['<', '>']).to_string());
        event.sender = Some(tx.sender.clone());
        event.recipients = recipients.iter().map(|r| r.address.clone()).collect();
        event.subject = tx.subject.clone();
        event.generated_ids = vec![pec_id.clone(), acceptance.header("Message-ID").unwrap_or("").trim_matches(['<', '>', ' ']).to_string()];
        event.provider = Some(engine.provider.name.clone());
        event.queue_id = Some(queue_id.to_string());
        event.details = serde_json::json!({
            "login": login,
            "recipient_types": recipients.iter().map(|r| (r.address.clone(), r.kind.as_str())).collect::<std::collections::BTreeMap<_, _>>(),
            "size": body.len(),
        });
        let now = chrono::Utc::now();
        // decisions.md 18: with the mail log configured, the receipts wait until Postfix
        // logs that it queued this message (crate::daemon::queue_confirm).
        let hold = self.config().postfix.maillog.as_ref().map(|_| queue_id.to_string());
        let record = Record {
            event,
            outbox: vec![NewOutboxMessage {
                kind: "accettazione".into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![login],
                message: acceptance.to_bytes(),
                hold_for_queue_id: hold.clone(),
            }],
            state: vec![
                StateUpdate::Accepted {
                    pec_id: pec_id.clone(),
                    client_msgid: Some(tx.client_msgid.clone()),
                    sender: tx.sender.clone(),
                    subject: tx.subject.clone(),
                    queue_id: Some(queue_id.to_string()),
                    event_time: instant,
                    recipients: recipients.iter().map(|r| (*r).clone()).collect(),
                },
                StateUpdate::EnvelopeSent { pec_id: pec_id.clone(), at: now },
            ],
            idempotency_key: Some(format!("acc:{pec_id}")),
        };
        let mut record = record;
        if let Some((pic, mail_receipt)) = take_charge {
            record.outbox.push(NewOutboxMessage {
                kind: "presa-in-carico".into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![mail_receipt.clone()],
                message: pic.to_bytes(),
                hold_for_queue_id: hold.clone(),
            });
            for r in &local {
                record.state.push(StateUpdate::TakenInCharge { pec_id: pec_id.clone(), recipient: r.clone(), at: now });
            }
            record.event.details["take_charge"] = serde_json::json!({ "recipients": local, "mail_receipt": mail_receipt });
        }
        // Recorded (with the receipt in the outbox) before Postfix hears yes: if the
        // registry cannot take it, the message is tempfailed and nothing was promised.
        if let Err(e) = self.shared.store.record(&record, now).await {
            tracing::error!(queue_id, pec_id = %pec_id, "cannot record the acceptance: {e}; tempfailing");
            return Status::Tempfail;
        }
        crate::store::failpoint::hit("after-record");
        Status::Continue
    }

    async fn send_non_acceptance(&self, queue_id: &str, login: &str, facts: &OriginalHeaders, refusal: &AccessRefusal, virus: bool) {
        self.send_non_acceptance_text(queue_id, login, facts, &refusal.to_string(), virus).await
    }

    /// Builds and sends a signed non-accettazione to the authenticated mailbox only
    /// (decisions.md 1).
    async fn send_non_acceptance_text(&self, queue_id: &str, login: &str, facts: &OriginalHeaders, reason: &str, virus: bool) {
        let engine = self.engine();
        let instant = engine.now();
        let pec_id = engine.new_identifier(&instant);
        let mut to = engine.typed(&facts.to);
        if to.is_empty() && facts.cc.is_empty() {
            to = engine.typed(std::slice::from_ref(&login.to_string()));
        }
        let tx = Transaction {
            instant,
            identificativo: pec_id.clone(),
            client_msgid: facts.message_id.clone().unwrap_or_else(|| format!("<{}>", engine.new_identifier(&instant))),
            sender: login.to_string(),
            to,
            cc: engine.typed(&facts.cc),
            reply_to: None,
            subject: facts.subject.clone(),
            receipt: None,
        };
        let notice = if virus {
            Notice::NonAccettazioneVirus { errore_esteso: reason }
        } else {
            Notice::NonAccettazione { errore_esteso: reason }
        };
        let message_id = engine.new_identifier(&instant);
        let built = tokio::task::block_in_place(|| {
            build::build_notice(
                &engine.provider,
                &tx,
                &NoticeParams { instant, message_id: &message_id, seed: &Engine::random(16) },
                &notice,
                &engine.signer,
            )
        });
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id, "cannot build the non-accettazione: {e}");
                return;
            }
        };
        let mut event = NewEvent::new(instant, if virus { EventType::Virus } else { EventType::NonAcceptance });
        event.pec_id = Some(pec_id.clone());
        event.client_msgid = facts.message_id.as_ref().map(|m| m.trim_matches(['<', '>']).to_string());
        event.sender = Some(facts.from.clone());
        event.recipients = facts.to.iter().chain(facts.cc.iter()).cloned().collect();
        event.subject = facts.subject.clone();
        event.generated_ids = vec![message_id.clone()];
        event.provider = Some(engine.provider.name.clone());
        event.queue_id = (queue_id != "NONE").then(|| queue_id.to_string());
        event.details = serde_json::json!({ "login": login, "reason": reason });
        let record = Record {
            event,
            outbox: vec![NewOutboxMessage {
                kind: if virus { "non-accettazione-virus" } else { "non-accettazione" }.into(),
                mail_from: engine.provider.system_address.clone(),
                rcpts: vec![login.to_string()],
                message: built.to_bytes(),
                hold_for_queue_id: None,
            }],
            state: Vec::new(),
            idempotency_key: Some(format!("nonacc:{pec_id}")),
        };
        match self.shared.store.record(&record, chrono::Utc::now()).await {
            Ok(_) => tracing::info!(queue_id, pec_id = %pec_id, to = login, "non-accettazione recorded for sending"),
            Err(e) => tracing::error!(queue_id, "cannot record the non-accettazione: {e}"),
        }
    }
}
