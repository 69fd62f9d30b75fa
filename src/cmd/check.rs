//! `pecora verify`: tells a lawyer or a sysadmin whether a saved message is genuine PEC,
//! and what it certifies. It needs no configuration file: only the provider index.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::pec::incoming::{self, AnomalyEnvelope, ProviderIndex, Verdict};
use crate::pec::types::Instant;

/// Verify saved PEC messages (.eml) against a provider index.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The provider index: plain LDIF, or the signed .p7m (then --index-signer is needed).
    /// Default: index.file of the configuration.
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
    /// The certificate (PEM or DER) that must have signed a .p7m index.
    #[arg(long, value_name = "FILE")]
    pub index_signer: Option<PathBuf>,
    /// CA bundle (PEM): the signer's chain must validate to it at the instant checked.
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// A CRL file (PEM or DER); repeat for several. Revocation is then checked.
    #[arg(long = "crl", value_name = "FILE")]
    pub crls: Vec<PathBuf>,
    /// Print one JSON object per file (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The messages to verify; `-` reads one message from standard input.
    #[arg(required = true, value_name = "FILE.eml")]
    pub files: Vec<PathBuf>,
}

/// Where the instant the signer certificate is checked at comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckedAt {
    /// The CMS signingTime of the message's signature (decisions.md 15: an archived
    /// message is judged at the time it was signed).
    SigningTime,
    /// The signature carries no signingTime: the current time.
    Now,
}

impl CheckedAt {
    fn code(self) -> &'static str {
        match self {
            CheckedAt::SigningTime => "signing-time",
            CheckedAt::Now => "now",
        }
    }

    fn text(self) -> &'static str {
        match self {
            CheckedAt::SigningTime => "the CMS signingTime of the signature",
            CheckedAt::Now => "now: the signature carries no signingTime",
        }
    }
}

/// The instant the signer certificate is checked at for an archived message: the CMS
/// signingTime of its signature, or now when it has none.
fn check_instant(raw: &[u8]) -> (Instant, CheckedAt) {
    match incoming::signing_time(raw) {
        Some(t) => (crate::pec::types::to_zone(t, chrono_tz::Europe::Rome), CheckedAt::SigningTime),
        None => (crate::pec::types::to_zone(chrono::Utc::now(), chrono_tz::Europe::Rome), CheckedAt::Now),
    }
}

/// The index and its trust anchors, from the files named on the command line.
fn load_index(args: &VerifyArgs, index_path: &std::path::Path) -> Result<ProviderIndex, String> {
    let data = std::fs::read(index_path).map_err(|e| format!("{}: {e}", index_path.display()))?;
    crate::runtime::engine::index_with_trust(&data, index_path, args.index_signer.as_deref(), args.ca_bundle.as_deref(), &args.crls)
        .map_err(|e| e.to_string())
}

/// Runs the command; `default_index` comes from the configuration when there is one.
pub fn run(args: &VerifyArgs, default_index: Option<PathBuf>) -> ExitCode {
    let Some(index_path) = args.index.clone().or(default_index) else {
        eprintln!("pecora verify: no provider index: pass --index FILE");
        return ExitCode::from(2);
    };
    let index = match load_index(args, &index_path) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pecora verify: {e}");
            return ExitCode::from(2);
        }
    };
    let mut all_genuine = true;
    for file in &args.files {
        let read = if file.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf).map(|_| buf)
        } else {
            std::fs::read(file)
        };
        let raw = match read {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pecora verify: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let (at, at_source) = check_instant(&raw);
        let verdict = incoming::verify(&raw, &index, &at);
        let genuine = matches!(verdict, Verdict::Genuine(_));
        all_genuine &= genuine;
        // A busta di anomalia is not certified mail, but a genuine one says who found the
        // wrapped message not certified, and why.
        let anomaly = if genuine { None } else { incoming::anomaly(&raw, &index, &at) };
        if args.json {
            println!("{}", json_line(file, &verdict, anomaly.as_ref(), &at, at_source));
        } else {
            print_text(file, &verdict, anomaly.as_ref(), &at, at_source);
        }
    }
    if all_genuine { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn json_line(
    file: &std::path::Path,
    v: &Verdict,
    anomaly: Option<&AnomalyEnvelope>,
    at: &Instant,
    at_source: CheckedAt,
) -> String {
    let obj = match v {
        Verdict::Genuine(g) => {
            let d = &g.daticert;
            serde_json::json!({
                "file": file.display().to_string(),
                "genuine": true,
                "reason": null,
                "reason_code": null,
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
                "checked_at_source": at_source.code(),
            })
        }
        Verdict::NotGenuine { claimed, reason } => serde_json::json!({
            "file": file.display().to_string(),
            "genuine": false,
            "reason": reason.to_string(),
            "reason_code": reason.code(),
            "kind": if anomaly.is_some() { "anomalia" } else if *claimed { "unverified" } else { "ordinaria" },
            "identificativo": null, "msgid": null, "sender": null, "recipients": [],
            "provider": anomaly.map(|a| a.provider.as_str()), "date": null, "receipt_type": null,
            "anomaly": anomaly.map(|a| serde_json::json!({"provider": a.provider, "reason": a.reason})),
            "checked_at": at.to_rfc3339(),
            "checked_at_source": at_source.code(),
        }),
    };
    obj.to_string()
}

fn print_text(file: &std::path::Path, v: &Verdict, anomaly: Option<&AnomalyEnvelope>, at: &Instant, at_source: CheckedAt) {
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
            println!("  certificate checked at {} ({})", at.format("%d/%m/%Y %H:%M:%S %z"), at_source.text());
            println!("  VERDICT: GENUINE PEC");
        }
        Verdict::NotGenuine { reason, .. } => {
            if let Some(a) = anomaly {
                println!("  busta di anomalia:  signed by {}", a.provider);
                println!("  anomaly reason:     {}", a.reason.as_deref().unwrap_or("-"));
            }
            println!("  certificate checked at {} ({})", at.format("%d/%m/%Y %H:%M:%S %z"), at_source.text());
            println!("  VERDICT: NOT GENUINE: {reason}");
        }
    }
    println!();
}
