//! `pecora setup postfix|dovecot` (and `roundcube`, in setup_roundcube.rs): the shipped Postfix and Dovecot fragments
//! (`postfix/main.cf.in`, `postfix/master.cf.in`, `dovecot/pecora.conf.in`, installed under
//! `/usr/share/pecora/`) with their `@PLACEHOLDER@`s filled from pecora.toml and the command
//! line, printed (default) or applied (`--apply`).
//!
//! Postfix changes go through `postconf -e` (main.cf), `postconf -M` (a master.cf service
//! line) and `postconf -P` (its `-o` overrides); `--postfix-dir DIR` targets another
//! instance (`postconf -c DIR`). The Dovecot fragment is written as a `conf.d` file. Before
//! changing anything `--apply` copies every file it touches to `<file>.pecora-<time>`, names
//! each change, and checks the result (`postfix check`, `doveconf -n`), restoring the copies
//! when the check fails. It never reloads Postfix or Dovecot.
//!
//! Every placeholder has an option; a placeholder without a value, or one this pecora does
//! not know, is an error that lists them all.
//!
//! Exit status: 0 printed or applied, 1 applied but the check failed (the previous files
//! were restored), 2 usage or environment error (placeholders, files, postconf).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::adapters::postfix::{postconf, run_postconf, shell_quote};
use crate::config::{Config, SocketSpec};

use super::fragments::{
    Values, Written, backup_path, fragments_dir, provenance, put_back, render, slot,
    strip_instructions, warn_missing_files, write_with_backup,
};


/// The `setup` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SetupCommand {
    /// Print (or apply with --apply) the postconf commands of postfix/main.cf.in and
    /// postfix/master.cf.in, placeholders filled.
    Postfix(PostfixArgs),
    /// Print (or write with --apply) dovecot/pecora.conf.in, placeholders filled, as a
    /// conf.d file.
    Dovecot(DovecotArgs),
    /// Print (or write with --apply) the Roundcube settings (webmail/roundcube/config.inc.php.in)
    /// and the nginx site (webmail/nginx/pecora-webmail.conf.in) of the webmail, with the
    /// pecora plugin, placeholders filled.
    Roundcube(crate::cmd::setup_roundcube::RoundcubeArgs),
}

/// Options both targets share.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Make the changes instead of printing them (a backup of every file touched is kept).
    #[arg(long)]
    pub apply: bool,
    /// Directory holding the fragments (postfix/*.in, dovecot/*.in) [default: /usr/share/pecora,
    /// else the source tree pecora was built from].
    #[arg(long, value_name = "DIR")]
    pub fragments: Option<PathBuf>,
    /// @TLS_CERT@: this host's TLS certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// @TLS_KEY@: this host's TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// @DOVECOT_AUTH@: Dovecot's auth socket for Postfix's SASL.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/spool/postfix/private/auth"
    )]
    pub dovecot_auth: String,
    /// @DOVECOT_LMTP@: Dovecot's LMTP socket Postfix delivers to.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/spool/postfix/private/dovecot-lmtp"
    )]
    pub dovecot_lmtp: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PostfixArgs {
    #[command(flatten)]
    pub common: Common,
    /// Postfix configuration directory to change (postconf -c DIR) [default: Postfix's own].
    #[arg(long, value_name = "DIR")]
    pub postfix_dir: Option<PathBuf>,
    /// @PEC_DOMAINS@: the PEC domains, comma-separated [default: pecora.toml provider.domains].
    #[arg(long, value_name = "DOMAINS", value_delimiter = ',')]
    pub domains: Vec<String>,
    /// @MAILBOX_MAP@: the table of existing PEC mailboxes, e.g. hash:/etc/postfix/pec-mailboxes.
    #[arg(long, value_name = "MAP")]
    pub mailbox_map: Option<String>,
    /// @TLS_CA@: CA bundle that verifies other providers' TLS certificates [default: the
    /// system bundle].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// @TLS_POLICY_MAP@: the TLS policy map `pecora index update` writes (decisions.md 22)
    /// [default: texthash:<index.file>.tls_policy of pecora.toml].
    #[arg(long, value_name = "MAP")]
    pub tls_policy_map: Option<String>,
    /// @MILTER@: pecora's milter socket in Postfix syntax [default: pecora.toml listen.milter].
    #[arg(long, value_name = "SOCKET")]
    pub milter: Option<String>,
    /// @SUBMISSION@: the submission service (port 587).
    #[arg(long, value_name = "SERVICE", default_value = "submission")]
    pub submission: String,
    /// @SMTPS@: the implicit-TLS submission service (port 465).
    #[arg(long, value_name = "SERVICE", default_value = "smtps")]
    pub smtps: String,
    /// @MX@: the MX service (port 25); its master.cf line is replaced.
    #[arg(long, value_name = "SERVICE", default_value = "smtp")]
    pub mx: String,
    /// The file Postfix itself logs to (main.cf maillog_file, written by postlogd), which
    /// pecora reads to hold each acceptance until Postfix queued the message (decisions.md
    /// 18). Given: set it. Not given: Postfix's maillog_file when it has one, else a
    /// syslog mail log that exists (/var/log/mail.log, /var/log/maillog), else
    /// /var/log/postfix.log is set. [postfix] maillog in pecora.toml is set to match.
    #[arg(long, value_name = "FILE")]
    pub maillog_file: Option<PathBuf>,
    /// The logrotate(8) rule written for Postfix's own log (rotated with `create 0640 root
    /// pecora`, then `postfix reload`), when its directory exists and no rule there names the
    /// log already.
    #[arg(long, value_name = "FILE", default_value = "/etc/logrotate.d/pecora-postfix-log")]
    pub logrotate: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DovecotArgs {
    #[command(flatten)]
    pub common: Common,
    /// Dovecot's configuration directory (dovecot.conf and conf.d/).
    #[arg(long, value_name = "DIR", default_value = "/etc/dovecot")]
    pub dovecot_dir: PathBuf,
    /// The file --apply writes [default: DOVECOT_DIR/conf.d/90-pecora.conf].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// @QUOTA@: the size of every PEC mailbox.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    pub quota: String,
    /// @HOOK@: the installed pecora-delivered.lua [default: FRAGMENTS/dovecot/pecora-delivered.lua].
    #[arg(long, value_name = "FILE")]
    pub hook: Option<String>,
    /// @DELIVERY_SPOOL@: where the hook drops events [default: pecora.toml listen.delivery_spool].
    #[arg(long, value_name = "DIR")]
    pub delivery_spool: Option<String>,
    /// @IMAPS_PORT@.
    #[arg(long, value_name = "PORT", default_value_t = 993)]
    pub imaps_port: u16,
    /// @POP3S_PORT@.
    #[arg(long, value_name = "PORT", default_value_t = 995)]
    pub pop3s_port: u16,
    /// @DOVEADM_SOCKET@: the doveadm listener reserved for pecora [default: pecora.toml
    /// delivery.doveadm_socket].
    #[arg(long, value_name = "PATH")]
    pub doveadm_socket: Option<String>,
    /// @PECORA_USER@: the user pecora runs as, the one owner of that listener.
    #[arg(long, value_name = "USER", default_value = "pecora")]
    pub pecora_user: String,
    /// @SPOOL_GROUP@: the group of the delivery spool, which Dovecot's LMTP gets to run the
    /// hook (the package makes pecora-delivery).
    #[arg(long, value_name = "GROUP", default_value = "pecora-delivery")]
    pub spool_group: String,
}

/// Runs a `setup` subcommand.
pub fn run(cmd: SetupCommand, config_path: &Path) -> ExitCode {
    let config = read_config(config_path);
    let code = match cmd {
        SetupCommand::Postfix(a) => postfix(&a, config.as_ref(), config_path),
        SetupCommand::Dovecot(a) => dovecot(&a, config.as_ref()),
        SetupCommand::Roundcube(a) => crate::cmd::setup_roundcube::roundcube(&a, config.as_ref()),
    };
    ExitCode::from(code)
}

/// pecora.toml as far as it parses: setup needs no valid keys or index, only values.
fn read_config(path: &Path) -> Option<Config> {
    match std::fs::read_to_string(path) {
        Ok(text) => match Config::parse(path, &text) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("pecora: note: {e}; using the command line only");
                None
            }
        },
        Err(e) => {
            eprintln!(
                "pecora: note: {}: {e}; using the command line only",
                path.display()
            );
            None
        }
    }
}


/// The values of the Postfix fragments.
pub fn postfix_values(a: &PostfixArgs, config: Option<&Config>, queue_directory: &Path) -> Values {
    let c = &a.common;
    let domains = if a.domains.is_empty() {
        config.map(|c| c.provider.domains.join(", "))
    } else {
        Some(a.domains.join(", "))
    };
    let system_ca = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .map(str::to_owned);
    let mut v = Values::new();
    v.insert(
        "DOVECOT_AUTH",
        slot(Some(c.dovecot_auth.clone()), "--dovecot-auth"),
    );
    v.insert(
        "DOVECOT_LMTP",
        slot(Some(c.dovecot_lmtp.clone()), "--dovecot-lmtp"),
    );
    v.insert(
        "PEC_DOMAINS",
        slot(domains, "--domains (or provider.domains in pecora.toml)"),
    );
    v.insert("MAILBOX_MAP", slot(a.mailbox_map.clone(), "--mailbox-map"));
    v.insert("TLS_CERT", slot(c.tls_cert.clone(), "--tls-cert"));
    v.insert("TLS_KEY", slot(c.tls_key.clone(), "--tls-key"));
    let providers_ca = config.and_then(|c| c.index.tls_ca_bundle.as_ref()).map(|p| p.display().to_string());
    v.insert("TLS_CA", slot(a.tls_ca.clone().or(providers_ca).or(system_ca), "--tls-ca"));
    v.insert(
        "TLS_POLICY_MAP",
        slot(
            a.tls_policy_map.clone().or_else(|| {
                config.map(|c| format!("texthash:{}", crate::cmd::index::tls_policy_path(&c.index.file).display()))
            }),
            "--tls-policy-map (or index.file in pecora.toml)",
        ),
    );
    v.insert(
        "MILTER",
        slot(
            a.milter
                .clone()
                .or_else(|| config.map(|c| c.listen.milter.postfix_form(queue_directory))),
            "--milter (or listen.milter in pecora.toml)",
        ),
    );
    v.insert(
        "SUBMISSION",
        slot(Some(a.submission.clone()), "--submission"),
    );
    v.insert("SMTPS", slot(Some(a.smtps.clone()), "--smtps"));
    v.insert("MX", slot(Some(a.mx.clone()), "--mx"));
    v
}

/// The values of the Dovecot fragment.
pub fn dovecot_values(a: &DovecotArgs, config: Option<&Config>, fragments: &Path) -> Values {
    let c = &a.common;
    let hook = a.hook.clone().unwrap_or_else(|| {
        fragments
            .join("dovecot/pecora-delivered.lua")
            .display()
            .to_string()
    });
    let mut v = Values::new();
    v.insert("TLS_CERT", slot(c.tls_cert.clone(), "--tls-cert"));
    v.insert("TLS_KEY", slot(c.tls_key.clone(), "--tls-key"));
    v.insert("QUOTA", slot(Some(a.quota.clone()), "--quota"));
    v.insert("HOOK", slot(Some(hook), "--hook"));
    v.insert(
        "DELIVERY_SPOOL",
        slot(
            a.delivery_spool
                .clone()
                .or_else(|| config.map(|c| c.listen.delivery_spool.display().to_string())),
            "--delivery-spool (or listen.delivery_spool in pecora.toml)",
        ),
    );
    v.insert(
        "DOVECOT_LMTP",
        slot(Some(c.dovecot_lmtp.clone()), "--dovecot-lmtp"),
    );
    v.insert(
        "DOVECOT_AUTH",
        slot(Some(c.dovecot_auth.clone()), "--dovecot-auth"),
    );
    v.insert(
        "IMAPS_PORT",
        slot(Some(a.imaps_port.to_string()), "--imaps-port"),
    );
    v.insert(
        "POP3S_PORT",
        slot(Some(a.pop3s_port.to_string()), "--pop3s-port"),
    );
    v.insert(
        "DOVEADM_SOCKET",
        slot(
            a.doveadm_socket.clone().or_else(|| {
                config.and_then(|c| c.delivery.doveadm_socket.as_ref().map(|p| p.display().to_string()))
            }),
            "--doveadm-socket (or delivery.doveadm_socket in pecora.toml)",
        ),
    );
    v.insert("PECORA_USER", slot(Some(a.pecora_user.clone()), "--pecora-user"));
    v.insert("SPOOL_GROUP", slot(Some(a.spool_group.clone()), "--spool-group"));
    v
}



/// The non-comment lines of a fragment, placeholders rendered: comments may mention
/// placeholders (the header lists them) and are never applied.
fn settings_text(path: &Path, values: &Values) -> Result<String, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    render(&body, values, path)
}

/// `name = value` settings of a main.cf fragment (continuation lines folded in).
pub fn parse_main(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// One master.cf service of a fragment: the service line (the eight fields and any command
/// arguments) and its `-o name=value` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterEntry {
    pub name: String,
    pub kind: String,
    pub line: String,
    pub overrides: Vec<(String, String)>,
}

/// Services of a master.cf fragment.
pub fn parse_master_fragment(text: &str) -> Result<Vec<MasterEntry>, String> {
    let mut out: Vec<MasterEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with([' ', '\t']) {
            if fields.len() < 8 {
                return Err(format!(
                    "line {}: a master.cf service needs eight fields: {line}",
                    i + 1
                ));
            }
            out.push(MasterEntry {
                name: fields[0].into(),
                kind: fields[1].into(),
                line: String::new(),
                overrides: Vec::new(),
            });
        }
        let Some(entry) = out.last_mut() else {
            return Err(format!("line {}: an option line before any service", i + 1));
        };
        let mut words = fields.iter();
        while let Some(w) = words.next() {
            if *w == "-o" {
                let kv = words
                    .next()
                    .ok_or_else(|| format!("line {}: -o without a value", i + 1))?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("line {}: -o {kv}: not name=value", i + 1))?;
                entry.overrides.push((k.to_string(), v.to_string()));
            } else {
                if !entry.line.is_empty() {
                    entry.line.push(' ');
                }
                entry.line.push_str(w);
            }
        }
    }
    Ok(out)
}

/// One `postconf` invocation of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Arguments after `postconf [-c DIR]`.
    pub args: Vec<String>,
    /// What it changes, for the report: `main.cf: name` or `master.cf: name/type`.
    pub what: String,
}

/// The `postconf` steps that apply both Postfix fragments.
pub fn postfix_plan(main: &[(String, String)], master: &[MasterEntry]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (k, v) in main {
        steps.push(Step {
            args: vec!["-e".into(), format!("{k}={v}")],
            what: format!("main.cf: {k} = {v}"),
        });
    }
    for m in master {
        let id = format!("{}/{}", m.name, m.kind);
        steps.push(Step {
            args: vec!["-M".into(), "-e".into(), format!("{id}={}", m.line)],
            what: format!("master.cf: {id}: {}", m.line),
        });
        for (k, v) in &m.overrides {
            steps.push(Step {
                args: vec!["-P".into(), "-e".into(), format!("{id}/{k}={v}")],
                what: format!("master.cf: {id}: -o {k}={v}"),
            });
        }
    }
    steps
}

fn postconf_prefix(dir: Option<&Path>) -> String {
    match dir {
        Some(d) => format!("postconf -c {}", shell_quote(&d.display().to_string())),
        None => "postconf".into(),
    }
}

/// The current state of what a step changes, as postconf shows it, in the form [`wanted`]
/// gives (None: absent, or postconf could not tell).
fn current(dir: Option<&Path>, step: &Step) -> Option<String> {
    let spec = step.args.last()?;
    let (key, _) = spec.split_once('=')?;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let show = |args: &[&str]| -> Option<String> {
        let out = postconf(dir).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match step.args[0].as_str() {
        "-e" => show(&["-h", key]).map(|v| norm(&v)),
        // The service line alone: its -o overrides are separate steps.
        "-M" => show(&["-M", key]).filter(|v| !v.is_empty()).map(|v| {
            let v = norm(&v);
            match v.find(" -o ") {
                Some(i) => v[..i].to_string(),
                None => v,
            }
        }),
        // `name/type/param = value`, nothing when the override is absent.
        "-P" => show(&["-P", key])
            .filter(|v| !v.is_empty())
            .map(|v| norm(v.split_once(" =").map_or("", |(_, x)| x))),
        _ => None,
    }
}

/// What a step would set, in the form `current` reports it.
fn wanted(step: &Step) -> Option<String> {
    let spec = step.args.last()?;
    let (_, value) = spec.split_once('=')?;
    Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Postfix's own log file when none is configured and no syslog mail log exists.
pub const DEFAULT_MAILLOG_FILE: &str = "/var/log/postfix.log";

/// Where a syslog daemon writes mail logs (Debian's rsyslog, then Red Hat's).
pub const SYSLOG_MAILLOGS: &[&str] = &["/var/log/mail.log", "/var/log/maillog"];

/// The master.cf line of Postfix's logging service (as in Postfix's stock master.cf).
pub const POSTLOG_SERVICE: &str = "postlog unix-dgram n - n - 1 postlogd";

/// The mail log pecora follows, and what Postfix needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaillogPlan {
    /// The file for `[postfix] maillog`.
    pub file: PathBuf,
    /// `postconf` steps: maillog_file, its prefix, the postlog service.
    pub steps: Vec<Step>,
    /// The file is written by a syslog daemon, not by Postfix (any local user can add
    /// lines to it with logger(1)).
    pub syslog: bool,
}

/// Postfix's logging as `postconf` reports it.
#[derive(Debug, Clone, Default)]
pub struct PostfixLogging {
    /// `maillog_file` (empty: Postfix logs through syslog).
    pub maillog_file: String,
    /// `maillog_file_prefixes`.
    pub prefixes: String,
    /// master.cf has the `postlog/unix-dgram` service.
    pub postlog_service: bool,
}

/// Chooses the log that confirms queued messages (decisions.md 18): the `--maillog-file`
/// given; else Postfix's `maillog_file`; else a syslog mail log that exists (`syslog_logs`),
/// left as it is so a host already logging there keeps doing so; else Postfix's own
/// `maillog_file` at [`DEFAULT_MAILLOG_FILE`], which needs no syslog daemon.
pub fn maillog_plan(now: &PostfixLogging, explicit: Option<&Path>, syslog_logs: &[&Path]) -> Result<MaillogPlan, String> {
    let set = |file: &Path| -> Result<MaillogPlan, String> {
        let text = file.to_str().filter(|t| file.is_absolute() && !t.contains(char::is_whitespace) && !t.contains(','));
        let Some(text) = text else {
            return Err(format!("--maillog-file {}: an absolute path without spaces or commas", file.display()));
        };
        let mut steps = Vec::new();
        if now.maillog_file != text {
            steps.push(Step { args: vec!["-e".into(), format!("maillog_file={text}")], what: format!("main.cf: maillog_file = {text}") });
        }
        let prefixes: Vec<&str> = now.prefixes.split([',', ' ', '\t']).filter(|p| !p.is_empty()).collect();
        if !prefixes.iter().any(|p| text.starts_with(p)) {
            let dir = file.parent().map(|p| p.display().to_string()).unwrap_or_else(|| "/".into());
            let value = prefixes.iter().copied().chain([dir.as_str()]).collect::<Vec<_>>().join(", ");
            steps.push(Step { args: vec!["-e".into(), format!("maillog_file_prefixes={value}")], what: format!("main.cf: maillog_file_prefixes = {value}") });
        }
        if !now.postlog_service {
            steps.push(Step {
                args: vec!["-M".into(), "-e".into(), format!("postlog/unix-dgram={POSTLOG_SERVICE}")],
                what: format!("master.cf: postlog/unix-dgram: {POSTLOG_SERVICE}"),
            });
        }
        Ok(MaillogPlan { file: file.to_path_buf(), steps, syslog: false })
    };
    if let Some(f) = explicit {
        return set(f);
    }
    let current = now.maillog_file.trim();
    if !current.is_empty() {
        if current.starts_with("/dev/") {
            return Err(format!("Postfix logs to {current} (maillog_file), which pecora cannot read back: pass --maillog-file FILE"));
        }
        return set(Path::new(current));
    }
    if let Some(log) = syslog_logs.iter().find(|p| p.is_file()) {
        return Ok(MaillogPlan { file: log.to_path_buf(), steps: Vec::new(), syslog: true });
    }
    set(Path::new(DEFAULT_MAILLOG_FILE))
}

/// Postfix's logging settings, read with `postconf`.
fn postfix_logging(dir: Option<&Path>) -> Result<PostfixLogging, String> {
    let get = |name: &str| run_postconf(dir, &["-h".into(), name.into()]).map(|v| v.trim().to_string());
    Ok(PostfixLogging {
        maillog_file: get("maillog_file")?,
        prefixes: get("maillog_file_prefixes")?,
        postlog_service: run_postconf(dir, &["-M".into(), "postlog/unix-dgram".into()]).is_ok_and(|o| !o.trim().is_empty()),
    })
}

/// `text` (a pecora.toml) with the path `key` of `[postfix]` set to `file`, comments and
/// layout kept: an active `key = …` line of the table is replaced; otherwise the line goes
/// after a commented-out `#key = …` of the table, else right after `[postfix]`; a file
/// without the table gets it at the end.
pub fn set_toml_postfix(text: &str, key: &str, file: &Path) -> Result<String, String> {
    let path = file.to_str().ok_or_else(|| format!("{}: not UTF-8", file.display()))?;
    let line = format!("{key} = {}", toml_edit::Value::from(path).to_string().trim());
    let lines: Vec<&str> = text.lines().collect();
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let key_of = |l: &str| -> Option<(bool, String)> {
        let t = l.trim_start();
        let (commented, t) = match t.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, t),
        };
        let (k, _) = t.split_once('=')?;
        Some((commented, k.trim().to_string()))
    };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match lines.iter().position(|l| l.trim() == "[postfix]") {
        None => {
            if !text.is_empty() && !text.ends_with("\n\n") {
                out.push(String::new());
            }
            out.push("[postfix]".into());
            out.push(line);
        }
        Some(h) => {
            let end = lines[h + 1..].iter().position(|l| is_header(l)).map_or(lines.len(), |i| h + 1 + i);
            let section = h + 1..end;
            let active = section.clone().find(|&i| key_of(lines[i]) == Some((false, key.into())));
            let commented = section.clone().find(|&i| key_of(lines[i]) == Some((true, key.into())));
            match (active, commented) {
                (Some(i), _) => out[i] = line,
                (None, Some(i)) => out.insert(i + 1, line),
                (None, None) => out.insert(h + 1, line),
            }
        }
    }
    let mut new = out.join("\n");
    new.push('\n');
    // The result must say what we meant, and nothing else may have changed meaning.
    let doc: toml_edit::DocumentMut = new.parse().map_err(|e| format!("the edited pecora.toml does not parse: {e}"))?;
    if doc.get("postfix").and_then(|t| t.get(key)).and_then(|v| v.as_str()) != Some(path) {
        return Err(format!("pecora.toml: [postfix] {key} could not be set (is postfix a table?)"));
    }
    Ok(new)
}

/// Writes paths of `[postfix]` into pecora.toml (one backup beside it, owner and mode
/// kept).
fn write_toml_postfix(config_path: &Path, settings: &[(&str, &Path)]) -> Result<Option<PathBuf>, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let text = std::fs::read_to_string(config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let mut new = text.clone();
    for (key, path) in settings {
        new = set_toml_postfix(&new, key, path)?;
    }
    if new == text {
        return Ok(None);
    }
    let meta = std::fs::metadata(config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let backup = backup_path(config_path);
    std::fs::copy(config_path, &backup).map_err(|e| format!("cannot back up {}: {e}", config_path.display()))?;
    let dir = config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".pecora-").tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, new.as_bytes())?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()))?;
        tmp.as_file().sync_all()?;
        tmp.persist(config_path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    Ok(Some(backup))
}

/// Postfix's own log file made readable by user pecora, before postlogd makes it: Postfix
/// 3.7's postlogd creates a missing file 0600 root, and appends to an existing one without
/// changing its owner or mode. So the file is made 0640, group pecora (when that user
/// exists), or given that group and mode when pecora cannot read it. A file a syslog daemon
/// writes is left alone. What changed, if anything.
pub fn prepare_log_file(file: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let gid = crate::adapters::system::user_ids("pecora").and_then(|(_, g)| g.first().copied());
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(file)
                .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o640)).map_err(|e| format!("{}: {e}", file.display()))?;
            if let Some(g) = gid {
                std::os::unix::fs::fchown(&f, None, Some(g)).map_err(|e| format!("{}: {e}", file.display()))?;
            }
            return Ok(Some(format!("created, mode 640{}", if gid.is_some() { ", group pecora" } else { "" })));
        }
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let Some(g) = gid else { return Ok(None) };
    let readable = meta.mode() & 0o004 != 0 || (meta.gid() == g && meta.mode() & 0o040 != 0);
    if readable {
        return Ok(None);
    }
    std::os::unix::fs::chown(file, None, Some(g)).map_err(|e| format!("cannot give {} to group pecora: {e}", file.display()))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode((meta.mode() & 0o700) | 0o040))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Some(format!("group pecora may read it (was mode {:o})", meta.mode() & 0o7777)))
}

/// What `--apply` says about the log, and pecora.toml's `[postfix] maillog` made to match.
fn apply_maillog(plan: &MaillogPlan, a: &PostfixArgs, config: Option<&Config>, config_path: &Path) -> u8 {
    if plan.syslog {
        println!("{}", syslog_note(&plan.file));
    } else {
        match prepare_log_file(&plan.file) {
            Ok(Some(what)) => println!("changed: {}: {what}", plan.file.display()),
            Ok(None) => {}
            Err(e) => {
                eprintln!("pecora: {e}");
                return 2;
            }
        }
        match write_logrotate(&a.logrotate, &plan.file, a.postfix_dir.as_deref()) {
            Ok(Some(what)) => println!("{what}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("pecora: {e}");
                return 2;
            }
        }
    }
    let Some(config) = config else {
        eprintln!(
            "pecora: {} did not parse: set [postfix] maillog = \"{}\" there yourself, or the acceptance hold stays off",
            config_path.display(),
            plan.file.display()
        );
        return 2;
    };
    // The log, and the instance (its syslog_name, and its queue for messages put on hold)
    // when --postfix-dir named one.
    let mut settings: Vec<(&str, &Path)> = Vec::new();
    if config.postfix.maillog.as_deref() == Some(plan.file.as_path()) {
        println!("{}: [postfix] maillog = {} already", config_path.display(), plan.file.display());
    } else {
        settings.push(("maillog", &plan.file));
    }
    if let Some(dir) = a.postfix_dir.as_deref() {
        if config.postfix.config_dir.as_deref() == Some(dir) {
            println!("{}: [postfix] config_dir = {} already", config_path.display(), dir.display());
        } else {
            settings.push(("config_dir", dir));
        }
    }
    if settings.is_empty() {
        return 0;
    }
    match write_toml_postfix(config_path, &settings) {
        Ok(backup) => {
            if let Some(b) = backup {
                println!("backup: {} -> {}", config_path.display(), b.display());
            }
            for (key, path) in &settings {
                let why = if *key == "maillog" {
                    "acceptance receipts wait for Postfix's log"
                } else {
                    "the Postfix instance pecora asks: its syslog_name, its hold queue"
                };
                println!("changed: {}: [postfix] {key} = {} ({why}; then: systemctl reload pecora)", config_path.display(), path.display());
            }
            0
        }
        Err(e) => {
            eprintln!("pecora: {e}");
            2
        }
    }
}

/// The logrotate(8) rule for Postfix's own log: rotated weekly, a new file made 0640 of
/// `group` before Postfix reopens it (`postfix reload`; postlogd would make it 0600 root).
pub fn logrotate_rule(file: &Path, group: &str, postfix_dir: Option<&Path>) -> String {
    let dir = postfix_dir.map(|d| format!(" -c {}", shell_quote(&d.display().to_string()))).unwrap_or_default();
    format!(
        "# Written by `pecora setup postfix`: Postfix's own log (main.cf maillog_file), which pecora\n\
         # reads to send an acceptance only for mail Postfix queued. The new file is made before\n\
         # Postfix reopens it, readable by group {group} (Postfix would make it 0600 root).\n\
         {file} {{\n    weekly\n    rotate 52\n    compress\n    delaycompress\n    missingok\n    notifempty\n    \
         create 0640 root {group}\n    postrotate\n        postfix{dir} reload >/dev/null 2>&1 || true\n    endscript\n}}\n",
        file = file.display()
    )
}

/// Writes the logrotate rule at `target` unless its directory is missing (no logrotate) or
/// a rule there, that one included, names `file` already (never overwritten: logrotate
/// would read a backup beside it as one more rule); what was done.
pub fn write_logrotate(target: &Path, file: &Path, postfix_dir: Option<&Path>) -> Result<Option<String>, String> {
    let Some(dir) = target.parent().filter(|d| d.is_dir()) else { return Ok(None) };
    let name = file.display().to_string();
    let existing = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| crate::adapters::system::read_text_lossy(p).is_ok_and(|t| t.split_whitespace().any(|w| w == name)));
    if let Some(o) = existing {
        return Ok((o != target).then(|| format!("{} already rotates {name}: left as it is", o.display())));
    }
    let group = if crate::adapters::system::user_ids("pecora").is_some() { "pecora" } else { "root" };
    if target.exists() {
        return Err(format!("{} exists and does not rotate {name}: move it away, or pass --logrotate FILE", target.display()));
    }
    std::fs::write(target, logrotate_rule(file, group, postfix_dir)).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    Ok(Some(format!("written: {} (rotates {name} with create 0640 root {group}, then postfix reload)", target.display())))
}

fn syslog_note(file: &Path) -> String {
    format!(
        "note: Postfix logs through syslog to {0}: pecora reads it (user pecora needs read access), but any local user can add lines there (logger -t 'postfix/qmgr[1]' …); Postfix's own log is safer: pecora setup postfix --apply --maillog-file {DEFAULT_MAILLOG_FILE}",
        file.display()
    )
}

fn postfix(a: &PostfixArgs, config: Option<&Config>, config_path: &Path) -> u8 {
    let fragments = match fragments_dir(a.common.fragments.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    let dir = a.postfix_dir.as_deref();
    if let Some(d) = dir
        && !d.join("main.cf").is_file()
    {
        eprintln!(
            "pecora: {}: no main.cf there (--postfix-dir names a Postfix configuration directory)",
            d.display()
        );
        return 2;
    }
    let queue_directory = match run_postconf(dir, &["-h".into(), "queue_directory".into()]) {
        Ok(q) => PathBuf::from(q.trim()),
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    let values = postfix_values(a, config, &queue_directory);
    let socket_dir = match a.milter {
        Some(_) => None,
        None => config.and_then(|c| socket_dir_plan(&c.listen.milter, &queue_directory, dir)),
    };
    warn_missing_files(&values, &["TLS_CERT", "TLS_KEY", "TLS_CA"]);
    let main_in = fragments.join("postfix/main.cf.in");
    let master_in = fragments.join("postfix/master.cf.in");
    let mut errors = Vec::new();
    let main = settings_text(&main_in, &values)
        .map_err(|e| errors.extend(e))
        .ok();
    let master = settings_text(&master_in, &values)
        .map_err(|e| errors.extend(e))
        .ok();
    let (Some(main), Some(master)) = (main, master) else {
        for e in errors.iter().fold(Vec::<&String>::new(), |mut acc, e| {
            if !acc.contains(&e) {
                acc.push(e);
            }
            acc
        }) {
            eprintln!("pecora: {e}");
        }
        return 2;
    };
    let master = match parse_master_fragment(&master) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pecora: {}: {e}", master_in.display());
            return 2;
        }
    };
    let mut steps = postfix_plan(&parse_main(&main), &master);
    // decisions.md 18: a log of Postfix's own for the acceptance hold.
    let syslog_logs: Vec<&Path> = SYSLOG_MAILLOGS.iter().map(Path::new).collect();
    let log_plan = match postfix_logging(dir).and_then(|now| maillog_plan(&now, a.maillog_file.as_deref(), &syslog_logs)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    steps.extend(log_plan.steps.iter().cloned());
    let prefix = postconf_prefix(dir);

    if !a.common.apply {
        println!(
            "# pecora setup postfix: the changes of {} and {}.",
            main_in.display(),
            master_in.display()
        );
        println!(
            "# Review them, then run this script or `pecora setup postfix --apply`; then `postfix reload`."
        );
        if let Some(sd) = &socket_dir {
            let note = match &sd.now {
                Some(n) if *n == sd.wanted() => " # unchanged".to_string(),
                Some(n) => format!(" # now: {n}"),
                None => " # absent".to_string(),
            };
            println!("{}{note}", sd.command());
        }
        for s in &steps {
            let now = current(dir, s);
            let note = match (&now, wanted(s)) {
                (Some(n), Some(w)) if *n == w => " # unchanged".to_string(),
                (Some(n), _) if n.is_empty() => " # now empty".to_string(),
                (Some(n), _) => format!(" # now: {n}"),
                (None, _) => String::new(),
            };
            println!(
                "{prefix} {}{note}",
                s.args
                    .iter()
                    .map(|x| shell_quote(x))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if !log_plan.syslog && !log_plan.file.exists() {
            // postlogd would make it 0600 root: made first, pecora can read it.
            println!("install -m 640 -g pecora /dev/null {}", shell_quote(&log_plan.file.display().to_string()));
        }
        if !log_plan.syslog && a.logrotate.parent().is_some_and(Path::is_dir) {
            println!("# {}: a logrotate rule for {} (--apply writes it unless a rule names it)", a.logrotate.display(), log_plan.file.display());
        }
        let toml_now = config.and_then(|c| c.postfix.maillog.clone());
        let note = if toml_now.as_deref() == Some(log_plan.file.as_path()) { " # unchanged" } else { "" };
        println!(
            "# {}: [postfix] maillog = \"{}\"{note} (--apply writes it)",
            config_path.display(),
            log_plan.file.display()
        );
        if let Some(dir) = a.postfix_dir.as_deref() {
            let note = if config.and_then(|c| c.postfix.config_dir.as_deref()) == Some(dir) { " # unchanged" } else { "" };
            println!("# {}: [postfix] config_dir = \"{}\"{note} (--apply writes it)", config_path.display(), dir.display());
        }
        if log_plan.syslog {
            println!("# {}", syslog_note(&log_plan.file));
        }
        return 0;
    }

    // --apply: find what differs, back up, change, check, restore on failure.
    let mut todo = Vec::new();
    // `postconf -M` replaces a whole entry, -o overrides included: after it, every override
    // of that service is set again.
    let mut replaced: Vec<String> = Vec::new();
    for s in &steps {
        let before = current(dir, s);
        let service = s
            .args
            .last()
            .and_then(|a| a.split_once('='))
            .map(|(key, _)| key.split('/').take(2).collect::<Vec<_>>().join("/"));
        let again = s.args[0] == "-P" && service.as_ref().is_some_and(|id| replaced.contains(id));
        if again || before.is_none() || before != wanted(s) {
            if s.args[0] == "-M" {
                replaced.extend(service);
            }
            todo.push((s, if again { None } else { before }));
        }
    }
    if let Some(sd) = &socket_dir {
        match sd.apply() {
            Ok(None) => {}
            Ok(Some(was)) => println!("changed: milter socket directory {} (was: {was})", sd.wanted()),
            Err(e) => {
                eprintln!("pecora: {e}");
                return 2;
            }
        }
    }
    let unchanged = steps.len() - todo.len();
    if todo.is_empty() {
        println!("nothing to change: all {unchanged} settings are in place");
        return apply_maillog(&log_plan, a, config, config_path);
    }
    let conf_dir = match dir {
        Some(d) => d.to_path_buf(),
        None => match run_postconf(None, &["-h".into(), "config_directory".into()]) {
            Ok(d) => PathBuf::from(d.trim()),
            Err(e) => {
                eprintln!("pecora: {e}");
                return 2;
            }
        },
    };
    let mut backups = Vec::new();
    for f in ["main.cf", "master.cf"] {
        let src = conf_dir.join(f);
        let dst = backup_path(&src);
        if let Err(e) = std::fs::copy(&src, &dst) {
            eprintln!("pecora: cannot back up {}: {e}", src.display());
            return 2;
        }
        println!("backup: {} -> {}", src.display(), dst.display());
        backups.push((src, dst));
    }
    let restore = |backups: &[(PathBuf, PathBuf)]| {
        for (src, dst) in backups {
            match std::fs::copy(dst, src) {
                Ok(_) => eprintln!("pecora: restored {} from {}", src.display(), dst.display()),
                Err(e) => eprintln!(
                    "pecora: CANNOT RESTORE {} from {}: {e}",
                    src.display(),
                    dst.display()
                ),
            }
        }
    };
    let mut changed = 0;
    for (s, before) in todo {
        if let Err(e) = run_postconf(dir, &s.args) {
            eprintln!("pecora: {e}");
            restore(&backups);
            return 2;
        }
        changed += 1;
        match before {
            Some(b) if b.is_empty() => println!("changed: {} (was empty)", s.what),
            Some(b) => println!("changed: {} (was: {b})", s.what),
            None => println!("added:   {}", s.what),
        }
    }
    println!("{changed} change(s), {unchanged} setting(s) already in place");
    // Postfix's own consistency check of the result.
    let mut check = Command::new("postfix");
    if let Some(d) = dir {
        check.arg("-c").arg(d);
    }
    match check.arg("check").output() {
        Ok(o) if o.status.success() => {
            let warnings = String::from_utf8_lossy(&o.stderr);
            for w in warnings.lines().filter(|l| !l.trim().is_empty()) {
                println!("postfix check: {w}");
            }
            println!(
                "postfix check passed; now run: postfix{} reload (pecora does not)",
                dir.map(|d| format!(" -c {}", shell_quote(&d.display().to_string())))
                    .unwrap_or_default()
            );
            apply_maillog(&log_plan, a, config, config_path)
        }
        Ok(o) => {
            eprintln!(
                "pecora: postfix check failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            restore(&backups);
            1
        }
        Err(e) => {
            println!(
                "cannot run `postfix check` ({e}): check the result yourself before reloading Postfix"
            );
            apply_maillog(&log_plan, a, config, config_path)
        }
    }
}

/// The directory of a milter socket that lives in Postfix's queue directory (the packaged
/// layout): owned by pecora's user, of Postfix's group (the primary group of `mail_owner`,
/// which every Postfix daemon runs with), mode 2750. The set-group-id bit gives the socket
/// pecora creates there Postfix's group, and pecora makes it 0660: Postfix can connect,
/// other local users cannot even enter the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDir {
    pub path: PathBuf,
    /// pecora's user (`pecora` when it exists, else the directory's present owner).
    pub owner: (String, u32),
    /// Postfix's group.
    pub group: (String, u32),
    /// Mode, owner and group now, as `wanted` writes them; None when it does not exist.
    pub now: Option<String>,
}

impl SocketDir {
    pub const MODE: u32 = 0o2750;

    pub fn wanted(&self) -> String {
        format!("{:o} {}:{}", Self::MODE, self.owner.0, self.group.0)
    }

    /// The shell command that makes it.
    pub fn command(&self) -> String {
        format!(
            "install -d -o {} -g {} -m {:o} {}",
            shell_quote(&self.owner.0),
            shell_quote(&self.group.0),
            Self::MODE,
            shell_quote(&self.path.display().to_string())
        )
    }

    /// Creates or corrects the directory; what it was, when something changed.
    pub fn apply(&self) -> Result<Option<String>, String> {
        use std::os::unix::fs::PermissionsExt;
        if self.now.as_deref() == Some(self.wanted().as_str()) {
            return Ok(None);
        }
        let p = &self.path;
        if self.now.is_none() {
            std::fs::create_dir(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        }
        std::os::unix::fs::chown(p, Some(self.owner.1), Some(self.group.1))
            .map_err(|e| format!("cannot give {} to {}:{}: {e}", p.display(), self.owner.0, self.group.0))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(Self::MODE))
            .map_err(|e| format!("cannot set mode {:o} on {}: {e}", Self::MODE, p.display()))?;
        Ok(Some(self.now.clone().unwrap_or_else(|| "absent".into())))
    }
}

/// The socket directory to manage, when `milter` is a unix socket in its own directory
/// under `queue_directory` (never the queue directory itself, nor one of Postfix's own
/// directories there). None otherwise: a socket elsewhere is the admin's to place.
pub fn socket_dir_plan(milter: &SocketSpec, queue_directory: &Path, postfix_dir: Option<&Path>) -> Option<SocketDir> {
    use std::os::unix::fs::MetadataExt;
    let SocketSpec::Unix(sock) = milter else { return None };
    let path = sock.parent()?.to_path_buf();
    let rel = path.strip_prefix(queue_directory).ok()?;
    const POSTFIX_DIRS: &[&str] = &[
        "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
        "maildrop", "pid", "private", "public", "saved", "trace", "etc", "lib", "usr", "dev",
    ];
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    if POSTFIX_DIRS.contains(&first.as_str()) {
        return None;
    }
    let mail_owner = run_postconf(postfix_dir, &["-h".into(), "mail_owner".into()])
        .map(|o| o.trim().to_string())
        .unwrap_or_else(|_| "postfix".into());
    let (_, gids) = crate::adapters::system::user_ids(&mail_owner)?;
    let gid = *gids.first()?;
    let group = (crate::adapters::system::group_name(gid).unwrap_or_else(|| gid.to_string()), gid);
    let meta = std::fs::metadata(&path).ok();
    let owner = match crate::adapters::system::user_ids("pecora") {
        Some((uid, _)) => ("pecora".to_string(), uid),
        None => {
            let uid = meta.as_ref().map_or(0, |m| m.uid());
            (crate::adapters::system::user_name(uid).unwrap_or_else(|| uid.to_string()), uid)
        }
    };
    let now = meta.map(|m| {
        use std::os::unix::fs::PermissionsExt;
        format!(
            "{:o} {}:{}",
            m.permissions().mode() & 0o7777,
            crate::adapters::system::user_name(m.uid()).unwrap_or_else(|| m.uid().to_string()),
            crate::adapters::system::group_name(m.gid()).unwrap_or_else(|| m.gid().to_string())
        )
    });
    Some(SocketDir { path, owner, group, now })
}


/// The rendered Dovecot fragment, with a header naming its source and values.
pub fn dovecot_fragment(source: &Path, values: &Values) -> Result<String, Vec<String>> {
    let text =
        std::fs::read_to_string(source).map_err(|e| vec![format!("{}: {e}", source.display())])?;
    let template = strip_instructions(&text, "#");
    let body = render(template, values, source)?;
    let mut out = provenance(
        "#",
        "Dovecot settings for a PEC point, written",
        "pecora setup dovecot",
        source,
        values,
        template,
    );
    out.push_str(body.strip_prefix('\n').unwrap_or(&body));
    Ok(out)
}

fn dovecot(a: &DovecotArgs, config: Option<&Config>) -> u8 {
    let fragments = match fragments_dir(a.common.fragments.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    let values = dovecot_values(a, config, &fragments);
    warn_missing_files(&values, &["TLS_CERT", "TLS_KEY", "HOOK"]);
    let source = fragments.join("dovecot/pecora.conf.in");
    let text = match dovecot_fragment(&source, &values) {
        Ok(t) => t,
        Err(errors) => {
            for e in errors {
                eprintln!("pecora: {e}");
            }
            return 2;
        }
    };
    if !a.common.apply {
        print!("{text}");
        return 0;
    }
    let target = a
        .output
        .clone()
        .unwrap_or_else(|| a.dovecot_dir.join("conf.d/90-pecora.conf"));
    let backup = match write_with_backup(&target, &text) {
        Ok(Written::Unchanged) => return 0,
        Ok(Written::Changed { backup }) => backup,
        Err(e) => {
            eprintln!("pecora: {e}");
            return 2;
        }
    };
    let conf = a.dovecot_dir.join("dovecot.conf");
    if !conf.is_file() {
        println!(
            "{} does not exist: include {} from your dovecot.conf, check it with `doveconf -n`",
            conf.display(),
            target.display()
        );
        return 0;
    }
    match Command::new("doveconf")
        .arg("-c")
        .arg(&conf)
        .arg("-n")
        .output()
    {
        Ok(o) if o.status.success() => {
            println!("doveconf -n passed; now run: systemctl reload dovecot (pecora does not)");
            0
        }
        Ok(o) => {
            eprintln!(
                "pecora: doveconf -c {} -n failed: {}",
                conf.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            match put_back(&target, backup.as_deref()) {
                Ok(()) => eprintln!("pecora: {} put back as it was", target.display()),
                Err(e) => eprintln!("pecora: CANNOT put back {}: {e}", target.display()),
            }
            1
        }
        Err(e) => {
            println!(
                "cannot run doveconf ({e}): check the result yourself before reloading Dovecot"
            );
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::fragments::placeholders;

    #[test]
    fn placeholders_are_found_with_their_lines() {
        let p =
            placeholders("a = @ONE@ and @TWO_2@\n# mail@example.it @ x\nb=@lower@ @THREE@@FOUR@\n");
        let names: Vec<(&str, usize)> = p.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        assert_eq!(
            names,
            vec![("ONE", 1), ("TWO_2", 1), ("THREE", 3), ("FOUR", 3)]
        );
    }

    #[test]
    fn render_lists_unknown_and_missing_placeholders() {
        let mut v = Values::new();
        v.insert("A", slot(Some("1".into()), "--a"));
        v.insert("B", slot(None, "--b"));
        let err = render("x=@A@ @B@ @C@ @B@\n", &v, Path::new("f.in")).unwrap_err();
        assert_eq!(
            err,
            vec![
                "@B@ has no value: pass --b".to_string(),
                "f.in:1: unknown placeholder @C@ (this pecora has no value for it)".to_string()
            ]
        );
        v.insert("B", slot(Some("two".into()), "--b"));
        v.insert("C", slot(Some("3".into()), "--c"));
        assert_eq!(
            render("x=@A@ @B@ @C@ @B@\n", &v, Path::new("f.in")).unwrap(),
            "x=1 two 3 two\n"
        );
    }

    #[test]
    fn master_fragment_services_and_overrides() {
        let m = parse_master_fragment(
            "sub inet n - n - - smtpd\n  # why\n  -o a=1\n  -o b=\n\nx unix n - n - - smtpd -v\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].line, "sub inet n - n - - smtpd");
        assert_eq!(
            m[0].overrides,
            vec![("a".into(), "1".into()), ("b".into(), String::new())]
        );
        assert_eq!(m[1].line, "x unix n - n - - smtpd -v");
        assert!(parse_master_fragment("  -o a=1\n").is_err());
        assert!(parse_master_fragment("short inet n\n").is_err());
    }

    /// decisions.md 18 on a fresh host: Postfix's own log when Postfix has none and no syslog
    /// daemon writes one; a host that logs to a syslog file keeps it; an explicit file wins.
    #[test]
    fn the_mail_log_pecora_follows() {
        let dir = tempfile::tempdir().unwrap();
        let syslog = dir.path().join("mail.log");
        let absent = dir.path().join("none.log");
        let stock = PostfixLogging { maillog_file: String::new(), prefixes: "/var, /dev/stdout".into(), postlog_service: true };
        let whats = |p: &MaillogPlan| p.steps.iter().map(|s| s.what.clone()).collect::<Vec<_>>();

        // Stock Debian 12: no maillog_file, no syslog daemon.
        let p = maillog_plan(&stock, None, &[&absent]).unwrap();
        assert_eq!(p.file, Path::new(DEFAULT_MAILLOG_FILE));
        assert!(!p.syslog);
        assert_eq!(whats(&p), ["main.cf: maillog_file = /var/log/postfix.log"]);
        assert_eq!(p.steps[0].args, ["-e", "maillog_file=/var/log/postfix.log"]);
        // Without the postlog service, Postfix would not start: it is added.
        let p = maillog_plan(&PostfixLogging { postlog_service: false, ..stock.clone() }, None, &[&absent]).unwrap();
        assert_eq!(whats(&p)[1], format!("master.cf: postlog/unix-dgram: {POSTLOG_SERVICE}"));

        // A syslog daemon already writes a mail log: Postfix's logging is left alone.
        std::fs::write(&syslog, "").unwrap();
        let p = maillog_plan(&stock, None, &[&absent, &syslog]).unwrap();
        assert_eq!((p.file.as_path(), p.syslog, p.steps.len()), (syslog.as_path(), true, 0));

        // Postfix's own maillog_file wins over any syslog file, and is kept as it is.
        let own = PostfixLogging { maillog_file: "/var/log/pf.log".into(), ..stock.clone() };
        let p = maillog_plan(&own, None, &[&syslog]).unwrap();
        assert_eq!((p.file.as_path(), p.syslog, p.steps.len()), (Path::new("/var/log/pf.log"), false, 0));
        // Except /dev/stdout and the like, which cannot be read back.
        let stdout = PostfixLogging { maillog_file: "/dev/stdout".into(), ..stock.clone() };
        assert!(maillog_plan(&stdout, None, &[]).unwrap_err().contains("--maillog-file"));

        // An explicit file is set, even where a syslog file exists; outside the prefixes,
        // its directory is added to them.
        let p = maillog_plan(&stock, Some(Path::new("/srv/log/postfix.log")), &[&syslog]).unwrap();
        assert_eq!(
            whats(&p),
            ["main.cf: maillog_file = /srv/log/postfix.log", "main.cf: maillog_file_prefixes = /var, /dev/stdout, /srv/log"]
        );
        let p = maillog_plan(&own, Some(Path::new("/var/log/pf.log")), &[]).unwrap();
        assert!(p.steps.is_empty());
        assert!(maillog_plan(&stock, Some(Path::new("relative.log")), &[]).is_err());
        assert!(maillog_plan(&stock, Some(Path::new("/var/log/a b.log")), &[]).is_err());
    }

    #[test]
    fn pecora_toml_gets_the_mail_log_with_its_comments_kept() {
        let set_toml_maillog = |text: &str, file: &Path| set_toml_postfix(text, "maillog", file);
        let f = Path::new("/var/log/postfix.log");
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pecora.toml")).unwrap();
        let out = set_toml_maillog(&shipped, f).unwrap();
        // One line added, right after the commented-out example; everything else as it was.
        assert_eq!(out.lines().count(), shipped.lines().count() + 1);
        let at = out.lines().position(|l| l == "maillog = \"/var/log/postfix.log\"").unwrap();
        assert!(out.lines().nth(at - 1).unwrap().starts_with("#maillog"), "{out}");
        let c = crate::config::Config::parse(Path::new("pecora.toml"), &out).unwrap();
        assert_eq!(c.postfix.maillog.as_deref(), Some(f));
        // Again: unchanged. Another file: the active line is replaced, not duplicated.
        assert_eq!(set_toml_maillog(&out, f).unwrap(), out);
        let other = set_toml_maillog(&out, Path::new("/var/log/mail.log")).unwrap();
        assert_eq!(other.matches("\nmaillog = ").count(), 1);
        assert!(other.contains("maillog = \"/var/log/mail.log\"\n"));
        // No [postfix] table: it is added at the end; one without the key gets it first.
        let out = set_toml_maillog("[provider]\nname = \"x\"\n", f).unwrap();
        assert_eq!(out, "[provider]\nname = \"x\"\n\n[postfix]\nmaillog = \"/var/log/postfix.log\"\n");
        let out = set_toml_maillog("[postfix]\nconfirm_timeout = \"1d\"\n[log]\nmaillog = 1\n", f).unwrap();
        assert_eq!(out, "[postfix]\nmaillog = \"/var/log/postfix.log\"\nconfirm_timeout = \"1d\"\n[log]\nmaillog = 1\n");
        // A path that needs escaping stays one TOML string.
        let odd = Path::new("/var/log/a\"b\\c.log");
        let out = set_toml_maillog("[postfix]\n", odd).unwrap();
        let doc: toml_edit::DocumentMut = out.parse().unwrap();
        assert_eq!(doc["postfix"]["maillog"].as_str(), Some("/var/log/a\"b\\c.log"));
    }

    /// Postfix's own log rotated so that pecora can still read the new file; a rule that
    /// already names the log is left alone, and nothing is written without logrotate.
    #[test]
    fn a_logrotate_rule_for_postfix_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("logrotate.d");
        let target = rules.join("pecora-postfix-log");
        let log = Path::new("/var/log/postfix.log");
        assert_eq!(write_logrotate(&target, log, None).unwrap(), None, "no logrotate.d: nothing");
        std::fs::create_dir(&rules).unwrap();
        let said = write_logrotate(&target, log, Some(Path::new("/etc/postfix-pec"))).unwrap().unwrap();
        assert!(said.starts_with("written: "), "{said}");
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.contains("/var/log/postfix.log {\n") && text.contains("    create 0640 root "), "{text}");
        assert!(text.contains("        postfix -c /etc/postfix-pec reload >/dev/null 2>&1 || true\n"), "{text}");
        // Again: in place, nothing said.
        assert_eq!(write_logrotate(&target, log, None).unwrap(), None);
        // Another rule names it: left alone.
        std::fs::remove_file(&target).unwrap();
        std::fs::write(rules.join("postfix"), "/var/log/postfix.log /var/log/other.log {\n}\n").unwrap();
        assert!(write_logrotate(&target, log, None).unwrap().unwrap().contains("already rotates"));
        assert!(!target.exists());
        // Our name taken by something else: an error, not an overwrite.
        std::fs::write(&target, "/var/log/x.log {}\n").unwrap();
        assert!(write_logrotate(&target, Path::new("/var/log/y.log"), None).is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("-e"), "-e");
        assert_eq!(shell_quote("a=b c"), "'a=b c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
