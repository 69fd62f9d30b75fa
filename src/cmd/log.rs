//! `pecora log …`: search the registry, show one message's history, verify the chain.
//!
//! Independent of the configuration module: the caller passes the store URL, the provider
//! certificate(s) and the checkpoint export directory.
//!
//! Exit status of `verify`: 0 the chain and every checkpoint hold, 1 something was changed,
//! inserted or deleted (the first row is named), 2 the registry (or a certificate, or the
//! checkpoint directory) cannot be read. `search` and `show` exit 0, 1 when `show` finds
//! nothing, 2 on errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use crate::store::checkpoint::{self, CheckpointVerifier};
use crate::store::{EventRow, SearchQuery, Store, StoreError, VerifyReport};

/// The `log` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LogCommand {
    /// Search the registry; without filters, list the most recent transactions.
    Search {
        /// PEC identifier (angle brackets optional).
        #[arg(long)]
        pec_id: Option<String>,
        /// The client's Message-ID of the original.
        #[arg(long)]
        msgid: Option<String>,
        /// Sender address (case-insensitive).
        #[arg(long)]
        sender: Option<String>,
        /// One recipient address (case-insensitive).
        #[arg(long)]
        recipient: Option<String>,
        /// Text contained in the subject (case-insensitive).
        #[arg(long)]
        subject: Option<String>,
        /// From this instant: YYYY-MM-DD (Italian time) or RFC 3339.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Up to this instant (a date includes that whole day).
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        /// At most this many registry rows are read.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The whole history of one message, by PEC id, msgid, queue id or a generated id.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Recompute the chain and check the signed checkpoints.
    Verify {
        /// Provider certificate (PEM) that signed the checkpoints; repeat for past ones.
        #[arg(long = "cert", value_name = "FILE")]
        certs: Vec<PathBuf>,
        /// Also check the exported checkpoint files in this directory (an off-host copy).
        #[arg(long, value_name = "DIR")]
        checkpoint_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// What `run` needs from the configuration; the command line overrides `certs` and
/// `checkpoint_dir` when given there.
#[derive(Debug, Clone, Default)]
pub struct LogContext {
    pub store_url: String,
    pub certs: Vec<PathBuf>,
    pub checkpoint_dir: Option<PathBuf>,
}

/// Runs a `log` command, printing to stdout and errors to stderr.
pub async fn run(cmd: LogCommand, ctx: &LogContext) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let code = run_to(cmd, ctx, &mut out).await;
    ExitCode::from(code)
}

/// [`run`] writing to `out`; returns the exit status.
pub async fn run_to(cmd: LogCommand, ctx: &LogContext, out: &mut dyn Write) -> u8 {
    let result = match cmd {
        LogCommand::Search {
            pec_id,
            msgid,
            sender,
            recipient,
            subject,
            from,
            until,
            limit,
            json,
        } => {
            let from = match from.as_deref().map(|s| parse_date(s, false)).transpose() {
                Ok(v) => v,
                Err(e) => return usage(&e),
            };
            let until = match until.as_deref().map(|s| parse_date(s, true)).transpose() {
                Ok(v) => v,
                Err(e) => return usage(&e),
            };
            let q = SearchQuery {
                pec_id,
                client_msgid: msgid,
                sender,
                recipient,
                subject,
                from,
                until,
                limit,
            };
            search(ctx, &q, json, out).await
        }
        LogCommand::Show { id, json } => show(ctx, &id, json, out).await,
        LogCommand::Verify {
            certs,
            checkpoint_dir,
            json,
        } => {
            let certs = if certs.is_empty() {
                ctx.certs.clone()
            } else {
                certs
            };
            let dir = checkpoint_dir.or_else(|| ctx.checkpoint_dir.clone());
            verify(ctx, &certs, dir, json, out).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pecora log: {e}");
            2
        }
    }
}

fn usage(e: &str) -> u8 {
    eprintln!("pecora log: {e}");
    2
}

/// `YYYY-MM-DD` (Europe/Rome; with `end`, the end of that day) or RFC 3339.
pub fn parse_date(s: &str, end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD or RFC 3339)"))?;
    let d = if end {
        d.succ_opt()
            .ok_or_else(|| format!("{s:?} is out of range"))?
    } else {
        d
    };
    let midnight = d
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| format!("{s:?} is out of range"))?;
    chrono_tz::Europe::Rome
        .from_local_datetime(&midnight)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{s:?} does not exist in Italian time"))
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: PathBuf::from("<stdout>"),
        source: e,
    }
}

fn local_time(r: &EventRow) -> String {
    r.instant().map_or_else(
        || r.event_time.clone(),
        |t| t.format("%d/%m/%Y %H:%M:%S %z").to_string(),
    )
}

/// One transaction in search output: the rows sharing a PEC id (or a lone row without).
#[derive(serde::Serialize)]
struct TransactionView<'a> {
    pec_id: Option<&'a str>,
    client_msgid: Option<&'a str>,
    sender: Option<&'a str>,
    recipients: Vec<String>,
    subject: Option<&'a str>,
    first_event_time: String,
    last_event: &'a str,
    events: Vec<&'a EventRow>,
}

async fn search(
    ctx: &LogContext,
    q: &SearchQuery,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, StoreError> {
    let store = Store::open(&ctx.store_url).await?;
    let rows = store.backend().search(q).await?;
    // Newest first; group by PEC id keeping the order of each transaction's newest row.
    let mut groups: Vec<Vec<&EventRow>> = Vec::new();
    for r in &rows {
        match r.pec_id.as_deref().and_then(|p| {
            groups
                .iter()
                .position(|g| g[0].pec_id.as_deref() == Some(p))
        }) {
            Some(i) => groups[i].push(r),
            None => groups.push(vec![r]),
        }
    }
    let views: Vec<TransactionView<'_>> = groups
        .into_iter()
        .map(|mut g| {
            g.reverse(); // oldest first
            let first = g[0];
            let pick = |f: fn(&EventRow) -> Option<&str>| g.iter().find_map(|r| f(r));
            TransactionView {
                pec_id: first.pec_id.as_deref(),
                client_msgid: pick(|r| r.client_msgid.as_deref()),
                sender: pick(|r| r.sender.as_deref()),
                recipients: g
                    .iter()
                    .map(|r| r.recipient_list())
                    .find(|l| !l.is_empty())
                    .unwrap_or_default(),
                subject: pick(|r| r.subject.as_deref()),
                first_event_time: local_time(first),
                last_event: &g[g.len() - 1].event_type,
                events: g,
            }
        })
        .collect();
    if json {
        serde_json::to_writer_pretty(&mut *out, &views).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else if views.is_empty() {
        writeln!(out, "no matching registry rows").map_err(io)?;
    } else {
        for v in &views {
            writeln!(
                out,
                "{}  {}  {} -> {}  {:?}  [{}]",
                v.first_event_time,
                v.pec_id.unwrap_or("-"),
                v.sender.unwrap_or("-"),
                if v.recipients.is_empty() {
                    "-".to_string()
                } else {
                    v.recipients.join(", ")
                },
                v.subject.unwrap_or(""),
                v.events
                    .iter()
                    .map(|e| e.event_type.as_str())
                    .collect::<Vec<_>>()
                    .join(" > "),
            )
            .map_err(io)?;
        }
    }
    Ok(0)
}

async fn show(
    ctx: &LogContext,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, StoreError> {
    let store = Store::open(&ctx.store_url).await?;
    let rows = store.history(id).await?;
    let mut states = Vec::new();
    for r in &rows {
        if let Some(p) = &r.pec_id
            && !states
                .iter()
                .any(|s: &crate::store::TransactionState| &s.pec_id == p)
            && let Some(s) = store.backend().transaction(p).await?
        {
            states.push(s);
        }
    }
    if json {
        let v = serde_json::json!({ "events": rows, "transactions": states });
        serde_json::to_writer_pretty(&mut *out, &v).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else if rows.is_empty() {
        writeln!(out, "no registry rows for {id}").map_err(io)?;
    } else {
        for r in &rows {
            writeln!(out, "#{} {}  {}", r.seq, local_time(r), r.event_type).map_err(io)?;
            let mut field = |name: &str, v: Option<&str>| -> Result<(), StoreError> {
                match v {
                    Some(v) if !v.is_empty() => writeln!(out, "    {name:<14}{v}").map_err(io),
                    _ => Ok(()),
                }
            };
            field("pec id", r.pec_id.as_deref())?;
            field("msgid", r.client_msgid.as_deref())?;
            field("sender", r.sender.as_deref())?;
            field("recipients", Some(&r.recipient_list().join(", ")))?;
            field("subject", r.subject.as_deref())?;
            field("generated", Some(&r.generated_id_list().join(", ")))?;
            field("provider", r.provider.as_deref())?;
            field("queue id", r.queue_id.as_deref())?;
            field("host", Some(&r.host))?;
            if r.details != "{}" {
                field("details", Some(&r.details))?;
            }
        }
        for s in &states {
            writeln!(out, "state of {}:", s.pec_id).map_err(io)?;
            writeln!(
                out,
                "    envelope sent {}",
                s.envelope_sent_at.as_deref().unwrap_or("-")
            )
            .map_err(io)?;
            for r in &s.recipients {
                writeln!(
                    out,
                    "    {} ({}): taken in charge {}, delivered {}, failed {}{}, 12h notice {}, 24h notice {}",
                    r.recipient,
                    r.recipient_type,
                    r.taken_in_charge_at.as_deref().unwrap_or("-"),
                    r.delivered_at.as_deref().unwrap_or("-"),
                    r.failed_at.as_deref().unwrap_or("-"),
                    r.failure.as_deref().map(|f| format!(" ({f})")).unwrap_or_default(),
                    r.notice_12h_at.as_deref().unwrap_or("-"),
                    r.notice_24h_at.as_deref().unwrap_or("-"),
                )
                .map_err(io)?;
            }
        }
    }
    Ok(if rows.is_empty() { 1 } else { 0 })
}

async fn verify(
    ctx: &LogContext,
    certs: &[PathBuf],
    dir: Option<PathBuf>,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, StoreError> {
    if certs.is_empty() {
        eprintln!(
            "pecora log verify: give the provider certificate (--cert FILE) to check the checkpoints"
        );
        return Ok(2);
    }
    let verifier = CheckpointVerifier::from_pem_files(certs)?;
    let extra = match &dir {
        Some(d) => checkpoint::load_dir(d)?,
        None => Vec::new(),
    };
    let store = Store::open(&ctx.store_url).await?;
    let report = store.verify(Some(&verifier), &extra).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(|e| io(e.into()))?;
        writeln!(out).map_err(io)?;
    } else {
        write_report(&report, out).map_err(io)?;
    }
    Ok(if report.ok() { 0 } else { 1 })
}

fn write_report(r: &VerifyReport, out: &mut dyn Write) -> std::io::Result<()> {
    match &r.problem {
        None => {
            writeln!(
                out,
                "registry OK: {} rows ({}–{}), {} signed checkpoints checked{}",
                r.rows,
                r.first_seq.unwrap_or(0),
                r.last_seq,
                r.checkpoints_checked,
                if r.anchor_seq > 0 {
                    format!(", starting at the retention cut after row {}", r.anchor_seq)
                } else {
                    String::new()
                }
            )?;
            if r.unsigned_tail > 0 {
                writeln!(
                    out,
                    "note: the last {} rows are after the latest checkpoint; no signature covers them yet",
                    r.unsigned_tail
                )?;
            }
        }
        Some(p) => {
            writeln!(out, "registry TAMPERED: {p}")?;
            if let Some(seq) = p.first_row() {
                writeln!(out, "first row concerned: {seq}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_italian_days() {
        assert_eq!(
            parse_date("2026-01-15", false).unwrap().to_rfc3339(),
            "2026-01-14T23:00:00+00:00"
        );
        assert_eq!(
            parse_date("2026-07-15", true).unwrap().to_rfc3339(),
            "2026-07-15T22:00:00+00:00"
        );
        assert!(parse_date("15/01/2026", false).is_err());
        assert_eq!(
            parse_date("2026-01-15T10:00:00Z", false)
                .unwrap()
                .to_rfc3339(),
            "2026-01-15T10:00:00+00:00"
        );
    }
}
