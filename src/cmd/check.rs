//! `pecora verify`: tells a lawyer or a sysadmin whether a saved message is genuine PEC,
//! and what it certifies. It needs no configuration file: only the provider index.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::pec::incoming::{self, ProviderIndex, Verdict};
use crate::pec::types::Instant;

/// Verify saved PEC messages (.eml) against a provider index.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The provider index (LDIF). Default: index.file of the configuration.
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
    /// Print one JSON object per file (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The messages to verify.
    #[arg(required = true, value_name = "FILE.eml")]
    pub files: Vec<PathBuf>,
}

/// The instant the signer certificate is checked at for an archived message: the
/// certified instant of its daticert (the transaction's one time value), or now when the
/// message has none.
fn certified_instant(raw: &[u8]) -> Option<Instant> {
    let (_, content) = openssl::pkcs7::Pkcs7::from_smime(raw).ok()?;
    let inner = mail_parser::MessageParser::default().parse(content.as_deref()?)?;
    let part = inner.parts.iter().find(|p| {
        mail_parser::MimeHeaders::attachment_name(*p).is_some_and(|n| n.eq_ignore_ascii_case("daticert.xml"))
    })?;
    crate::pec::Daticert::parse(part.contents()).ok().map(|d| d.data)
}

/// Runs the command; `default_index` comes from the configuration when there is one.
pub fn run(args: &VerifyArgs, default_index: Option<PathBuf>) -> ExitCode {
    let Some(index_path) = args.index.clone().or(default_index) else {
        eprintln!("pecora verify: no provider index: pass --index FILE");
        return ExitCode::from(2);
    };
    let index = match std::fs::read(&index_path)
        .map_err(|e| e.to_string())
        .and_then(|b| ProviderIndex::from_ldif(&String::from_utf8_lossy(&b)))
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pecora verify: {}: {e}", index_path.display());
            return ExitCode::from(2);
        }
    };
    let mut all_genuine = true;
    for file in &args.files {
        let raw = match std::fs::read(file) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pecora verify: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let (at, at_source) = match certified_instant(&raw) {
            Some(t) => (t, "daticert instant"),
            None => (crate::pec::types::to_zone(chrono::Utc::now(), chrono_tz::Europe::Rome), "now"),
        };
        let verdict = incoming::verify(&raw, &index, &at);
        let genuine = matches!(verdict, Verdict::Genuine(_));
        all_genuine &= genuine;
        if args.json {
            println!("{}", json_line(file, &verdict, &at, at_source));
        } else {
            print_text(file, &verdict, &at, at_source);
        }
    }
    if all_genuine { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn json_line(file: &std::path::Path, v: &Verdict, at: &Instant, at_source: &str) -> String {
    let obj = match v {
        Verdict::Genuine(g) => {
            let d = &g.daticert;
            serde_json::json!({
                "file": file.display().to_string(),
                "genuine": true,
                "reason": null,
                "kind": d.tipo.as_str(),
                "virus": g.virus,
                "identificativo": d.identificativo,
                "msgid": d.msgid,
                "sender": d.mittente,
                "recipients": d.destinatari.iter().map(|r| serde_json::json!({"address": r.address, "type": r.kind.as_str()})).collect::<Vec<_>>(),
                "provider": g.provider,
                "date": d.data.to_rfc3339(),
                "receipt_type": d.ricevuta.map(|r| r.as_str()),
                "errore": d.errore.as_str(),
                "consegna": d.consegna,
                "checked_at": at.to_rfc3339(),
                "checked_at_source": at_source,
            })
        }
        Verdict::NotGenuine { claimed, reason } => serde_json::json!({
            "file": file.display().to_string(),
            "genuine": false,
            "reason": reason,
            "kind": if *claimed { "unverified" } else { "ordinaria" },
            "identificativo": null, "msgid": null, "sender": null, "recipients": [],
            "provider": null, "date": null, "receipt_type": null,
            "checked_at": at.to_rfc3339(),
            "checked_at_source": at_source,
        }),
    };
    obj.to_string()
}

fn print_text(file: &std::path::Path, v: &Verdict, at: &Instant, at_source: &str) {
    println!("{}", file.display());
    match v {
        Verdict::Genuine(g) => {
            let d = &g.daticert;
            println!("  type:               {}{}", d.tipo, if g.virus { " (virus)" } else { "" });
            println!("  PEC identifier:     {}", d.identificativo);
            println!("  client message id:  {}", d.msgid.as_deref().unwrap_or("-"));
            println!("  sender:             {}", d.mittente);
            for r in &d.destinatari {
                println!("  recipient:          {} ({})", r.address, r.kind.text_tag());
            }
            println!("  issued by:          {} (index: {})", d.gestore_emittente, g.provider);
            println!("  date:               {} {}", d.data.format("%d/%m/%Y %H:%M:%S"), crate::pec::types::zona(&d.data));
            if let Some(r) = d.ricevuta {
                println!("  receipt requested:  {r}");
            }
            if let Some(c) = &d.consegna {
                println!("  delivery to:        {c}");
            }
            if let Some(e) = &d.errore_esteso {
                println!("  error:              {} ({e})", d.errore);
            }
            println!("  certificate checked at {} ({at_source})", at.format("%d/%m/%Y %H:%M:%S %z"));
            println!("  VERDICT: GENUINE PEC");
        }
        Verdict::NotGenuine { reason, .. } => {
            println!("  certificate checked at {} ({at_source})", at.format("%d/%m/%Y %H:%M:%S %z"));
            println!("  VERDICT: NOT GENUINE: {reason}");
        }
    }
    println!();
}
