//! Milter callbacks: adapt indymilter events to [`Session`] calls. No policy here.

use std::ffi::{CStr, CString};
use std::sync::Arc;

use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, Macros, NegotiateContext, ProtoOpts,
    SocketInfo, Status,
};

use super::session::{Listener, Session};
use crate::runtime::state::Shared;

/// Reads a macro as a string.
pub(super) fn macro_str(macros: &Macros, name: &CStr) -> Option<String> {
    macros.get(name).map(|v| v.to_string_lossy().into_owned())
}

/// The Postfix queue id, or "NONE" before Postfix has assigned one.
pub(super) fn queue_id(macros: &Macros) -> String {
    macro_str(macros, c"i").unwrap_or_else(|| "NONE".into())
}

/// The milter callbacks, each one line of adaptation.
pub fn callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let on_negotiate = shared.clone();
    Callbacks::new()
        .on_negotiate(move |cx, actions, opts| {
            let shared = on_negotiate.clone();
            Box::pin(negotiate(cx, actions, opts, shared))
        })
        .on_connect(|cx, host, socket| Box::pin(connect(cx, host, socket)))
        .on_mail(|cx, args| Box::pin(mail(cx, args)))
        .on_rcpt(|cx, args| Box::pin(rcpt(cx, args)))
        .on_header(|cx, name, value| Box::pin(header(cx, name, value)))
        .on_body(|cx, chunk| Box::pin(body(cx, chunk)))
        .on_eom(|cx| Box::pin(eom(cx)))
        .on_abort(|cx| Box::pin(abort(cx)))
        .on_close(|cx| Box::pin(close(cx)))
}

/// Every session needs to rewrite the whole message (envelope, anomaly), so it asks for the
/// header and body actions and exact header whitespace; an MTA that cannot offer them is
/// refused, which makes Postfix apply milter_default_action (tempfail).
async fn negotiate(
    cx: &mut NegotiateContext<Session>,
    offered: Actions,
    opts: ProtoOpts,
    shared: Arc<Shared>,
) -> Status {
    let needed = Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::REPLACE_BODY;
    if !offered.contains(needed) || !opts.contains(ProtoOpts::LEADING_SPACE) {
        tracing::error!(
            "the MTA does not offer header and body replacement with exact header whitespace; \
             refusing the milter session (Postfix will apply milter_default_action)"
        );
        return Status::Reject;
    }
    // DELETE_RCPT: a mailbox that redirects ordinary mail leaves the transaction.
    cx.requested_actions |= needed | (offered & (Actions::QUARANTINE | Actions::DELETE_RCPT));
    cx.requested_opts |= ProtoOpts::LEADING_SPACE;
    // One round trip fewer per header: Postfix (milter protocol 6) sends the headers without
    // waiting, and a header's verdict (a header section over the limit) is answered at the
    // first body chunk or at end of message instead (Session::header_noreply).
    let noreply_header = opts.contains(ProtoOpts::NOREPLY_HEADER);
    if noreply_header {
        cx.requested_opts |= ProtoOpts::NOREPLY_HEADER;
    }
    // Our lists replace Postfix's per stage, so they name everything the session reads.
    let m = &mut cx.requested_macros;
    // {daemon_addr} and {daemon_port} name the listener; {client_resolve} and
    // {client_connections} come from smtpd only, never from cleanup's emulation for
    // Postfix's own mail: they tell an SMTP listener from non_smtpd_milters (session::Listener).
    m.insert(
        MacroStage::Connect,
        c"j {daemon_name} {daemon_addr} {daemon_port} {client_addr} {client_name} {client_resolve} {client_connections}"
            .into(),
    );
    m.insert(
        MacroStage::Mail,
        c"{auth_authen} {auth_type} {mail_addr} {cert_subject} {cert_issuer} {tls_version}".into(),
    );
    m.insert(MacroStage::Data, c"i".into());
    m.insert(MacroStage::Eom, c"i".into());
    let mut session = Session::new(shared.snapshot(), shared.clone());
    session.noreply_header = noreply_header;
    cx.data = Some(session);
    Status::Continue
}

macro_rules! session {
    ($cx:expr) => {
        match $cx.data.as_mut() {
            Some(s) => s,
            None => {
                tracing::error!(queue_id = %queue_id(&$cx.macros), "milter session state missing");
                return Status::Tempfail;
            }
        }
    };
}

async fn connect(cx: &mut Context<Session>, host: CString, socket: SocketInfo) -> Status {
    let daemon = macro_str(&cx.macros, c"{daemon_name}");
    let addr = macro_str(&cx.macros, c"{daemon_addr}");
    let port = macro_str(&cx.macros, c"{daemon_port}");
    let resolve = macro_str(&cx.macros, c"{client_resolve}");
    let connections = macro_str(&cx.macros, c"{client_connections}");
    let listener = Listener {
        addr: addr.as_deref(),
        port: port.as_deref(),
        client_resolve: resolve.as_deref(),
        client_connections: connections.as_deref(),
    };
    let session = session!(cx);
    session.connect(&host.to_string_lossy(), &socket, daemon.as_deref(), listener)
}

async fn mail(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    let login = macro_str(&cx.macros, c"{auth_authen}");
    // Postfix sets these only for a client certificate it verified.
    let cert = macro_str(&cx.macros, c"{cert_issuer}").zip(macro_str(&cx.macros, c"{cert_subject}"));
    let Some(session) = cx.data.as_mut() else {
        tracing::error!("milter session state missing at MAIL");
        return Status::Tempfail;
    };
    session.mail(&args, login, cert, &mut cx.reply).await
}

async fn rcpt(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    let Some(session) = cx.data.as_mut() else {
        tracing::error!("milter session state missing at RCPT");
        return Status::Tempfail;
    };
    session.rcpt(&args, &mut cx.reply)
}

async fn header(cx: &mut Context<Session>, name: CString, value: CString) -> Status {
    let id = queue_id(&cx.macros);
    session!(cx).header_noreply(&id, name.as_bytes(), value.as_bytes())
}

async fn body(cx: &mut Context<Session>, chunk: Bytes) -> Status {
    let id = queue_id(&cx.macros);
    let Some(session) = cx.data.as_mut() else {
        tracing::error!(queue_id = %id, "milter session state missing at body");
        return Status::Tempfail;
    };
    session.body(&id, &chunk, &mut cx.reply).await
}

async fn eom(cx: &mut EomContext<Session>) -> Status {
    let id = queue_id(&cx.macros);
    let Some(session) = cx.data.as_mut() else {
        tracing::error!(queue_id = %id, "milter session state missing at end of message");
        return Status::Tempfail;
    };
    session.end_of_message(&id, &cx.actions, &mut cx.reply).await
}

async fn abort(cx: &mut Context<Session>) -> Status {
    if let Some(s) = cx.data.as_mut() {
        s.abort().await;
    }
    Status::Continue
}

async fn close(cx: &mut Context<Session>) -> Status {
    if let Some(s) = cx.data.as_mut() {
        s.finish_transaction().await;
    }
    cx.data = None;
    Status::Continue
}
