//! `pecora doctor`: checks the running setup and says what is wrong and how to fix it.
//!
//! Each check yields a finding: OK, a warning, or a failure with the fix. A configuration
//! that does not validate is reported finding by finding, and the checks that do not need
//! it (Postfix, Dovecot, clock; keys, index and registry as far as the file parses) still
//! run, so a fresh install gets the whole list at once.
//!
//! Exit status: 0 nothing failed (warnings allowed), 1 something failed, 2 usage or
//! environment error (a directory given on the command line does not exist).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime};

use crate::adapters::postfix::{PostfixConfig, Service};
use crate::adapters::system::{group_name, user_ids};
use crate::config::{Config, ConfigError, SocketSpec};

/// Index older than this: a warning (the update runs daily).
pub const INDEX_WARN_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Index older than this: a failure.
pub const INDEX_FAIL_AGE: Duration = Duration::from_secs(30 * 86_400);

/// A group of checks, for `--skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckGroup {
    Keys,
    Index,
    Registry,
    Milter,
    Postfix,
    Dovecot,
    Clock,
}

/// `pecora doctor` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DoctorArgs {
    /// Postfix configuration directory to inspect (postconf -c DIR).
    #[arg(long, value_name = "DIR")]
    pub postfix_dir: Option<PathBuf>,
    /// Dovecot configuration file to inspect (doveconf -c FILE) [default: Dovecot's own].
    #[arg(long, value_name = "FILE")]
    pub dovecot_config: Option<PathBuf>,
    /// Skip a group of checks; repeat for several (e.g. --skip dovecot on a host without it).
    #[arg(long, value_name = "CHECK", value_enum)]
    pub skip: Vec<CheckGroup>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub message: String,
    /// How to fix it, for warnings and failures.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            check,
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Warn,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Fail,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

fn postconf_command(pf: &PostfixConfig) -> String {
    match &pf.config_dir {
        Some(d) => format!("postconf -c {}", d.display()),
        None => "postconf".into(),
    }
}

/// The Postfix checks that need no pecora configuration: fail-closed milter, 24 h queue
/// lifetime, Postfix's own mail through the milter (decisions.md 13 and 17), no catch-all.
pub fn check_postfix_common(pf: &PostfixConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = "postfix";
    let main = |k: &str| pf.main.get(k).map(String::as_str).unwrap_or("");
    let postconf = postconf_command(pf);

    if main("milter_default_action") == "tempfail" {
        out.push(Finding::ok(
            c,
            "milter_default_action = tempfail: no mail passes while pecora is down",
        ));
    } else {
        out.push(Finding::fail(
            c,
            format!(
                "milter_default_action = {}: mail would pass unsigned while pecora is down",
                main("milter_default_action")
            ),
            format!("{postconf} -e milter_default_action=tempfail && postfix reload"),
        ));
    }
    for key in ["maximal_queue_lifetime", "bounce_queue_lifetime"] {
        match parse_postfix_time(main(key)) {
            Some(s) if s <= 86_400 => out.push(Finding::ok(
                c,
                format!("{key} = {} (at most 24 h)", main(key)),
            )),
            _ => out.push(Finding::fail(
                c,
                format!(
                    "{key} = {}: PEC traffic may wait at most 24 h in a queue",
                    main(key)
                ),
                format!("{postconf} -e {key}=1d"),
            )),
        }
    }
    if list_contains(main("internal_mail_filter_classes"), "bounce") {
        out.push(Finding::ok(c, "internal_mail_filter_classes includes bounce: bounces of transport envelopes reach pecora"));
    } else {
        out.push(Finding::fail(
            c,
            format!("internal_mail_filter_classes = {}: Postfix's bounces bypass pecora, so senders get a plain DSN instead of a signed errore-consegna (decisions.md 13)", main("internal_mail_filter_classes")),
            format!("{postconf} -e internal_mail_filter_classes=bounce"),
        ));
    }
    if main("milter_macro_daemon_name") == "PEC-INTERNO" {
        out.push(Finding::ok(
            c,
            "milter_macro_daemon_name = PEC-INTERNO: pecora recognises Postfix's own mail",
        ));
    } else {
        out.push(Finding::fail(
            c,
            format!("milter_macro_daemon_name = {}: pecora cannot tell Postfix's own mail (bounces, re-queued mail) and tempfails it", main("milter_macro_daemon_name")),
            format!("{postconf} -e milter_macro_daemon_name=PEC-INTERNO (master.cf overrides it per PEC listener)"),
        ));
    }
    // decisions.md 21: Postfix must not make up the From: of a submission that has none.
    if main("always_add_missing_headers") == "yes" {
        out.push(Finding::fail(
            c,
            "always_add_missing_headers = yes: Postfix adds a From: to a submission without one, so pecora certifies it instead of refusing it (decisions.md 21)",
            format!("{postconf} -e always_add_missing_headers=no"),
        ));
    }
    if !main("remote_header_rewrite_domain").is_empty() {
        out.push(Finding::fail(
            c,
            format!("remote_header_rewrite_domain = {}: Postfix adds a From: to a submission without one, so pecora certifies it instead of refusing it (decisions.md 21)", main("remote_header_rewrite_domain")),
            format!("{postconf} -e remote_header_rewrite_domain="),
        ));
    }
    out.extend(check_bare_newlines(pf));
    out.extend(check_unauth_pipelining(pf));
    out.extend(check_no_dsn(pf));
    if !main("luser_relay").is_empty() {
        out.push(Finding::fail(
            c,
            format!("luser_relay = {}: a catch-all", main("luser_relay")),
            format!("{postconf} -e luser_relay="),
        ));
    }
    out
}

/// SMTP smuggling: every smtpd listener refuses (or at least never ends DATA on) a bare LF,
/// and exempts no client.
fn check_bare_newlines(pf: &PostfixConfig) -> Vec<Finding> {
    let c = "postfix";
    let postconf = postconf_command(pf);
    let mut out = Vec::new();
    let mut lax = Vec::new();
    for s in pf.services.iter().filter(|s| s.command == "smtpd") {
        let id = format!("{}/{}", s.name, s.kind);
        let mode = pf.param(s, "smtpd_forbid_bare_newline");
        if !matches!(mode.to_ascii_lowercase().as_str(), "reject" | "normalize" | "yes") {
            lax.push(id.clone());
            // The MX normalizes, as the shipped master.cf has it: ordinary mail from a
            // sloppy client still arrives (as an anomaly); the access listeners refuse.
            let fix = if pf.param(s, "milter_macro_daemon_name") == "PEC-RICEZIONE" {
                format!("{postconf} -P {id}/smtpd_forbid_bare_newline=normalize")
            } else {
                set_for_listener(&postconf, s, &id, "smtpd_forbid_bare_newline", "reject", " smtpd_forbid_bare_newline_reject_code=521")
            };
            out.push(Finding::fail(
                c,
                format!("{id}: smtpd_forbid_bare_newline = {mode}: a bare LF ends a line, so a client can smuggle a second message behind <LF>.<LF>"),
                fix,
            ));
            continue;
        }
        let exempt = pf.param(s, "smtpd_forbid_bare_newline_exclusions");
        if !exempt.trim().is_empty() {
            out.push(Finding::warn(
                c,
                format!("{id}: smtpd_forbid_bare_newline_exclusions = {exempt}: clients matching it may still send bare LFs and smuggle messages"),
                format!("{postconf} -e smtpd_forbid_bare_newline_exclusions="),
            ));
        }
    }
    if lax.is_empty() {
        out.push(Finding::ok(c, "smtpd_forbid_bare_newline is on for every smtpd listener: no SMTP smuggling with bare LFs"));
    }
    out
}

/// The command that sets `name = value` for listener `s` (named `id`): in master.cf when
/// the listener overrides the parameter there (main.cf would not reach it), else in main.cf
/// together with the main.cf settings `more` (" name=value" each) that go with it.
fn set_for_listener(postconf: &str, s: &Service, id: &str, name: &str, value: &str, more: &str) -> String {
    if s.overrides.contains_key(name) {
        format!("{postconf} -P {id}/{name}={value}")
    } else {
        format!("{postconf} -e {name}={value}{more}")
    }
}

/// One setting every smtpd listener must have: `bad` tells, of the listener and the value it
/// sees, the finding when the value is wrong (given the listener's id and the postconf
/// command); `ok` is said when no listener is wrong.
fn check_every_smtpd(
    pf: &PostfixConfig,
    name: &str,
    ok: &str,
    bad: impl Fn(&Service, &str, &str, &str) -> Option<Finding>,
) -> Vec<Finding> {
    let postconf = postconf_command(pf);
    let out: Vec<Finding> = pf
        .services
        .iter()
        .filter(|s| s.command == "smtpd")
        .filter_map(|s| bad(s, &format!("{}/{}", s.name, s.kind), &pf.param(s, name), &postconf))
        .collect();
    if out.is_empty() {
        vec![Finding::ok("postfix", ok)]
    } else {
        out
    }
}

/// Postfix 3.9's default, off in 3.7: a client sending commands ahead of the replies where
/// SMTP forbids it is disconnected. A warning: the bare-LF refusal is what stops smuggling
/// itself.
fn check_unauth_pipelining(pf: &PostfixConfig) -> Vec<Finding> {
    let name = "smtpd_forbid_unauth_pipelining";
    check_every_smtpd(pf, name, "smtpd_forbid_unauth_pipelining is on for every smtpd listener", |s, id, v, postconf| {
        (!v.eq_ignore_ascii_case("yes")).then(|| {
            Finding::warn(
                "postfix",
                format!("{id}: {name} = {v}: a client may send commands ahead of the replies where SMTP does not allow it"),
                set_for_listener(postconf, s, id, name, "yes", ""),
            )
        })
    })
}

/// No smtpd listener offers DSN: a client's NOTIFY=NEVER would suppress the bounce that
/// becomes the signed avviso di mancata consegna (at the access point, or relayed by the
/// sender's provider to the MX), and NOTIFY=SUCCESS would send Postfix's plain reports.
fn check_no_dsn(pf: &PostfixConfig) -> Vec<Finding> {
    let name = "smtpd_discard_ehlo_keywords";
    check_every_smtpd(pf, name, "no smtpd listener offers DSN: every failure is bounced, and becomes a signed avviso", |s, id, v, postconf| {
        (!list_contains(v, "dsn")).then(|| {
            Finding::fail(
                "postfix",
                format!("{id}: {name} = {v}: DSN is offered, so a client's NOTIFY=NEVER suppresses the bounce pecora turns into the avviso di mancata consegna (decisions.md 13)"),
                set_for_listener(postconf, s, id, name, "silent-discard,dsn", ""),
            )
        })
    })
}

/// The Postfix checks against pecora's configuration: PEC listeners with SASL, TLS and the
/// milter, Postfix's own mail through the milter, the injection listener without milter,
/// no forwarding on PEC domains.
pub fn check_postfix(pf: &PostfixConfig, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = "postfix";
    let main = |k: &str| pf.main.get(k).map(String::as_str).unwrap_or("");
    let postconf = postconf_command(pf);

    let queue_dir = PathBuf::from(main("queue_directory"));
    let spec = &config.listen.milter;
    // How Postfix should name the socket (relative to the queue directory when under it).
    let milter_socket = spec.postfix_form(&queue_dir);
    let names_ours = |list: &str| spec.named_in_postfix_list(list, &queue_dir);
    // A chrooted daemon resolves every unix: path inside the queue directory: only the
    // relative form of a socket under it reaches pecora.
    let relative = milter_socket.starts_with("unix:") && !milter_socket.starts_with("unix:/");
    let chroot_blind = |s: &Service, list: &str| {
        s.chroot && names_ours(list) && !(relative && crate::config::postfix_list_entries(list).any(|w| w == milter_socket))
    };
    for s in pf.services.iter().filter(|s| s.command == "smtpd" || s.command == "cleanup") {
        let list = pf.param(s, if s.command == "cleanup" { "non_smtpd_milters" } else { "smtpd_milters" });
        if chroot_blind(s, list) {
            let fix = if relative {
                format!("name the socket relative to the queue directory: {milter_socket}")
            } else {
                format!("put listen.milter under queue_directory ({}), e.g. {}/pecora/milter.sock, or run {}/{} unchrooted", queue_dir.display(), queue_dir.display(), s.name, s.kind)
            };
            out.push(Finding::fail(
                c,
                format!("{}/{} runs chrooted in {} and cannot reach pecora's milter socket as {list}", s.name, s.kind, queue_dir.display()),
                fix,
            ));
        }
    }
    if names_ours(main("non_smtpd_milters")) {
        out.push(Finding::ok(
            c,
            format!("non_smtpd_milters includes pecora ({milter_socket})"),
        ));
    } else {
        out.push(Finding::fail(
            c,
            format!("non_smtpd_milters = {}: bounces and re-queued mail do not reach pecora ({milter_socket}) (decisions.md 13 and 17)", main("non_smtpd_milters")),
            format!("{postconf} -e non_smtpd_milters={milter_socket}"),
        ));
    }
    let smtpd: Vec<&Service> = pf
        .services
        .iter()
        .filter(|s| s.command == "smtpd")
        .collect();
    let mut access = 0;
    let mut reception = 0;
    for s in &smtpd {
        let id = format!("{}/{}", s.name, s.kind);
        let milters = pf.param(s, "smtpd_milters");
        let daemon = pf.param(s, "milter_macro_daemon_name");
        let ours = names_ours(milters);
        let no_milters = milters.trim().is_empty()
            || pf
                .param(s, "receive_override_options")
                .contains("no_milters");
        match daemon {
            "PEC-ACCESSO" => {
                access += 1;
                if !ours {
                    out.push(Finding::fail(c, format!("{id} is the access point but its smtpd_milters ({milters}) do not include pecora ({milter_socket})"), format!("{postconf} -P {id}/smtpd_milters={milter_socket}")));
                }
                if pf.param(s, "smtpd_sasl_auth_enable") != "yes" {
                    out.push(Finding::fail(c, format!("{id}: SASL authentication is off on the access point"), format!("{postconf} -P {id}/smtpd_sasl_auth_enable=yes")));
                }
                // XCLIENT LOGIN= sets the SASL login pecora reads from {auth_authen}, with
                // no password: a listed client submits, and gets receipts signed, as anyone.
                let xclient = pf.param(s, "smtpd_authorized_xclient_hosts");
                if !xclient.trim().is_empty() {
                    out.push(Finding::warn(c, format!("{id}: smtpd_authorized_xclient_hosts = {xclient}: these clients may name any login with XCLIENT, without a password, and pecora certifies their mail as that holder's"), format!("list only a front end that authenticates every user itself, or: {postconf} -P {id}/smtpd_authorized_xclient_hosts=")));
                }
                let tls = pf.param(s, "smtpd_tls_security_level") == "encrypt" || pf.param(s, "smtpd_tls_wrappermode") == "yes";
                if !tls {
                    out.push(Finding::fail(c, format!("{id}: TLS is not mandatory on the access point"), format!("{postconf} -P {id}/smtpd_tls_security_level=encrypt (or smtpd_tls_wrappermode=yes for smtps)")));
                }
                // decisions.md 21: cleanup would add a From: to a submission without one
                // for a client it treats as local, and pecora would see that From:.
                let local = pf.param(s, "local_header_rewrite_clients");
                if !local.trim().is_empty() {
                    out.push(Finding::fail(c, format!("{id}: local_header_rewrite_clients = {local}: Postfix adds a missing From: to submissions from these clients, so pecora certifies a message its sender sent without From: (decisions.md 21)"), format!("{postconf} -P {id}/local_header_rewrite_clients=")));
                }
                if !pf.param(s, "smtpd_client_restrictions").contains("permit_sasl_authenticated")
                    && !pf.param(s, "smtpd_relay_restrictions").contains("permit_sasl_authenticated")
                {
                    out.push(Finding::warn(c, format!("{id}: no permit_sasl_authenticated in the client or relay restrictions"), format!("{postconf} -P {id}/smtpd_client_restrictions=permit_sasl_authenticated,reject")));
                }
            }
            "PEC-RICEZIONE" => {
                reception += 1;
                if !ours {
                    out.push(Finding::fail(c, format!("{id} is the reception point but its smtpd_milters ({milters}) do not include pecora"), format!("{postconf} -P {id}/smtpd_milters={milter_socket}")));
                }
            }
            _ if ours => {
                let how = if s.overrides.contains_key("milter_macro_daemon_name") {
                    format!("milter_macro_daemon_name {daemon}")
                } else {
                    format!("no milter_macro_daemon_name of its own (it inherits main.cf's {daemon})")
                };
                let what = if daemon == "PEC-INTERNO" {
                    "PEC-INTERNO is the role of Postfix's own mail, which mail from an SMTP client never gets, so pecora tempfails every message on this listener"
                } else {
                    "neither PEC-ACCESSO nor PEC-RICEZIONE, so pecora tempfails every message on this listener"
                };
                out.push(Finding::fail(
                    c,
                    format!("{id} calls pecora with {how}: {what}"),
                    format!("{postconf} -P {id}/milter_macro_daemon_name=PEC-ACCESSO (submission) or =PEC-RICEZIONE (MX), or take pecora out of its smtpd_milters"),
                ))
            }
            _ if !no_milters => {}
            _ => {}
        }
    }
    if access == 0 {
        out.push(Finding::fail(
            c,
            "no submission listener is marked PEC-ACCESSO",
            "add the submission and smtps services of /usr/share/pecora/postfix/master.cf",
        ));
    } else {
        out.push(Finding::ok(
            c,
            format!("{access} access-point listener(s) with SASL, TLS and the milter"),
        ));
    }
    if reception == 0 {
        out.push(Finding::fail(c, "no MX listener is marked PEC-RICEZIONE: incoming mail is not verified", format!("{postconf} -P smtp/inet/milter_macro_daemon_name=PEC-RICEZIONE smtp/inet/smtpd_milters={milter_socket}")));
    }

    // The injection listener: the one smtpd pecora submits to; it must run no milter.
    let inject = match &config.inject.endpoint {
        SocketSpec::Unix(p) => p.file_name().map(|f| f.to_string_lossy().into_owned()),
        SocketSpec::Inet(a) => Some(a.clone()),
    };
    if let Some(inject) = inject {
        match smtpd.iter().find(|s| {
            s.name == inject || s.name.ends_with(&format!("/{inject}")) || inject.ends_with(&s.name)
        }) {
            Some(s) if pf.param(s, "smtpd_milters").trim().is_empty() => out.push(Finding::ok(
                c,
                format!("injection listener {} runs no milter", s.name),
            )),
            Some(s) => out.push(Finding::fail(
                c,
                format!(
                    "injection listener {} runs milters: pecora's receipts would be wrapped again",
                    s.name
                ),
                format!(
                    "{postconf} -P {}/{}/smtpd_milters= {}/{}/receive_override_options=no_milters",
                    s.name, s.kind, s.name, s.kind
                ),
            )),
            None => out.push(Finding::fail(
                c,
                format!(
                    "no master.cf smtpd service for the injection endpoint {}",
                    config.inject.endpoint
                ),
                "add the pecora-inject service of /usr/share/pecora/postfix/master.cf",
            )),
        }
    }

    // decisions.md 10: no forwarding of PEC mail.
    for d in &config.provider.domains {
        for key in ["mydestination", "virtual_alias_domains", "relay_domains"] {
            if list_contains(main(key), d) {
                out.push(Finding::fail(c, format!("PEC domain {d} is in {key}: PEC domains hold only PEC mailboxes delivered by Dovecot"), format!("remove {d} from {key}; list it in virtual_mailbox_domains")));
            }
        }
        if !list_contains(main("virtual_mailbox_domains"), d) {
            out.push(Finding::warn(
                c,
                format!("PEC domain {d} is not in virtual_mailbox_domains"),
                format!("{postconf} -e 'virtual_mailbox_domains = {d}'"),
            ));
        }
    }
    out.extend(check_alias_maps(
        main("virtual_alias_maps"),
        &config.provider.domains,
    ));
    out
}

fn list_contains(list: &str, item: &str) -> bool {
    list.split([',', ' '])
        .any(|x| x.trim().eq_ignore_ascii_case(item))
}

/// Reads the source files of file-based alias maps and reports aliases, forwards or
/// catch-alls on PEC domains. Database-backed maps cannot be listed; they get a warning.
fn check_alias_maps(maps: &str, domains: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for map in maps
        .split([',', ' '])
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let Some((kind, path)) = map.split_once(':') else {
            continue;
        };
        match kind {
            "hash" | "lmdb" | "btree" | "cdb" | "texthash" | "inline" => {
                let text = if kind == "inline" {
                    path.trim_matches(['{', '}']).replace(',', "\n")
                } else {
                    match crate::adapters::system::read_text_lossy(path) {
                        Ok(t) => t,
                        Err(e) => {
                            out.push(Finding::warn(
                                "postfix",
                                format!("cannot read alias map {path}: {e}"),
                                "check the file",
                            ));
                            continue;
                        }
                    }
                };
                for line in text.lines() {
                    let key = line.split_whitespace().next().unwrap_or("");
                    if key.starts_with('#') {
                        continue;
                    }
                    if let Some(d) = domains.iter().find(|d| {
                        key.to_ascii_lowercase()
                            .ends_with(&format!("@{}", d.to_ascii_lowercase()))
                            || key.eq_ignore_ascii_case(d)
                    }) {
                        out.push(Finding::fail("postfix", format!("{map}: `{key}` redirects mail of PEC domain {d} (alias, forward or catch-all)"), format!("remove `{key}` from {path}")));
                    }
                }
            }
            _ => out.push(Finding::warn(
                "postfix",
                format!(
                    "alias map {map} cannot be listed: make sure it has no entries for PEC domains"
                ),
                "review the map by hand",
            )),
        }
    }
    out
}

/// Postfix time units: s (default), m, h, d, w.
fn parse_postfix_time(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    Some(
        n * match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return None,
        },
    )
}

/// Signing key and certificate: they match, the certificate is valid now and for a while.
pub fn check_keys(config: &Config, now: i64) -> Vec<Finding> {
    use openssl::asn1::Asn1Time;
    let c = "keys";
    let mut out = Vec::new();
    let cert = std::fs::read(&config.keys.certificate)
        .map_err(|e| e.to_string())
        .and_then(|b| openssl::x509::X509::from_pem(&b).map_err(|e| e.to_string()));
    let key = std::fs::read(&config.keys.private_key)
        .map_err(|e| e.to_string())
        .and_then(|b| openssl::pkey::PKey::private_key_from_pem(&b).map_err(|e| e.to_string()));
    let (cert, key) = match (cert, key) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) => {
            out.push(Finding::fail(
                c,
                format!("cannot load {}: {e}", config.keys.certificate.display()),
                "put the PEM certificate there",
            ));
            return out;
        }
        (_, Err(e)) => {
            out.push(Finding::fail(
                c,
                format!("cannot load {}: {e}", config.keys.private_key.display()),
                "put the PEM private key there, mode 0600, owned by pecora",
            ));
            return out;
        }
    };
    match cert.public_key() {
        Ok(pk) if pk.public_eq(&key) => {
            out.push(Finding::ok(c, "signing key and certificate match"))
        }
        _ => out.push(Finding::fail(
            c,
            "the signing key does not belong to the certificate",
            "install the matching pair",
        )),
    }
    let Ok(now_t) = Asn1Time::from_unix(now) else {
        return out;
    };
    if cert.not_before() > now_t {
        out.push(Finding::fail(
            c,
            format!("certificate not valid before {}", cert.not_before()),
            "check the clock or the certificate",
        ));
    } else if cert.not_after() < now_t {
        out.push(Finding::fail(
            c,
            format!("certificate expired on {}", cert.not_after()),
            "renew it (pecora keys) and publish the new one in the index",
        ));
    } else {
        let days = now_t.diff(cert.not_after()).map(|d| d.days).unwrap_or(0);
        if days < 60 {
            out.push(Finding::warn(c, format!("certificate expires in {days} days ({})", cert.not_after()), "renew it now: the new certificate must reach the index well before the old one expires"));
        } else {
            out.push(Finding::ok(
                c,
                format!("certificate valid until {} ({days} days)", cert.not_after()),
            ));
        }
    }
    let system = config.system_address();
    let san_ok = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .any(|n| n.email().is_some_and(|e| e.eq_ignore_ascii_case(&system)))
        })
        .unwrap_or(false);
    if san_ok {
        out.push(Finding::ok(
            c,
            format!("certificate names the system address {system}"),
        ));
    } else {
        out.push(Finding::warn(
            c,
            format!("certificate subjectAltName does not list {system}"),
            "the system address must match the certificate (pec-format §7.1)",
        ));
    }
    out
}

/// Whether something answers on the milter socket (the daemon is running).
pub fn check_milter_reachable(spec: &SocketSpec) -> Finding {
    let timeout = std::time::Duration::from_secs(2);
    let result = match spec {
        SocketSpec::Unix(p) => std::os::unix::net::UnixStream::connect(p).map(|_| ()),
        SocketSpec::Inet(a) => std::net::ToSocketAddrs::to_socket_addrs(a.as_str())
            .and_then(|mut it| it.next().ok_or_else(|| std::io::Error::other("no address")))
            .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, timeout).map(|_| ())),
    };
    match result {
        Ok(()) => Finding::ok("milter", format!("pecora answers on {spec}")),
        Err(e) => Finding::fail(
            "milter",
            format!("nothing answers on {spec}: {e}"),
            "start it: systemctl start pecora (Postfix tempfails PEC mail meanwhile)",
        ),
    }
}

/// The doveadm listener pecora reads delivered messages through: a socket of mode 0600
/// (Dovecot then asks no password), owned by pecora's user, answering the handshake, and
/// running `fetch` only (dovecot/pecora.conf.in: `doveadm_allowed_commands=fetch`).
pub fn check_doveadm_socket(delivery: &crate::config::Delivery) -> Finding {
    let c = "dovecot";
    let fix = "pecora setup dovecot --apply (service pecora-doveadm and its listener), then doveadm reload";
    let Some(path) = &delivery.doveadm_socket else {
        return Finding::warn(
            c,
            format!("delivery.doveadm_socket is empty: pecora runs `{}` to read delivered messages, which works only if pecora runs as root or the mail owner", delivery.doveadm.join(" ")),
            "set delivery.doveadm_socket (the default /run/dovecot/pecora-doveadm) and add its listener",
        );
    };
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Finding::fail(c, format!("no doveadm listener for pecora at {shown} ({e}): no avvenuta-consegna can be emitted"), fix),
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !meta.file_type().is_socket() {
        return Finding::fail(c, format!("{shown} is not a socket"), fix);
    }
    if meta.mode() & 0o777 != 0o600 {
        return Finding::fail(
            c,
            format!("the doveadm listener {shown} has mode {:o}: Dovecot then asks for a password pecora does not hold{}", meta.mode() & 0o777, if meta.mode() & 0o007 != 0 { ", and other local users may reach it" } else { "" }),
            "mode = 0600 in its unix_listener (dovecot/pecora.conf.in)",
        );
    }
    if let Some((uid, _)) = daemon_user()
        && meta.uid() != uid
    {
        return Finding::fail(
            c,
            format!("the doveadm listener {shown} belongs to uid {}, not to pecora: pecora cannot connect", meta.uid()),
            "user = pecora in its unix_listener (dovecot/pecora.conf.in)",
        );
    }
    check_doveadm_server(path)
}

/// Whether the doveadm server on `path` answers the handshake without a password and runs
/// nothing but `fetch`: after the handshake, a command pecora never sends (and Dovecot does
/// not have): a server limited to fetch closes the connection; any other answers it
/// ("-": unknown command).
pub fn check_doveadm_server(path: &Path) -> Finding {
    use std::io::{BufRead, Write};
    let c = "dovecot";
    let fix = "pecora setup dovecot --apply (service pecora-doveadm and its listener), then doveadm reload";
    let shown = path.display();
    let talk = std::os::unix::net::UnixStream::connect(path).and_then(|mut s| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        s.write_all(b"VERSION\tdoveadm-server\t1\t0\n")?;
        let mut r = std::io::BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        if line.trim_end() != "+" {
            return Ok((line, String::new()));
        }
        let mut answer = String::new();
        // A closed connection (an error on writing or reading) is the refusal.
        let _ = s.write_all(b"\t\tpecora-doctor-probe\n").and_then(|_| r.read_line(&mut answer));
        Ok((line, answer))
    });
    match talk.as_ref().map(|(g, a)| (g.trim_end(), a.as_str())) {
        Ok(("+", "")) => Finding::ok(c, format!("Dovecot's doveadm server answers pecora on {shown}, without a password and for pecora only, and runs fetch only")),
        Ok(("+", _)) => Finding::warn(
            c,
            format!("Dovecot's doveadm server on {shown} runs any doveadm command (expunge, save, mailbox delete...), not only the fetch pecora needs"),
            "serve the listener with `executable = doveadm-server -o doveadm_allowed_commands=fetch` in a service of its own (pecora setup dovecot --apply), then doveadm reload",
        ),
        Ok((other, _)) => Finding::fail(c, format!("the doveadm listener {shown} answered {other:?} instead of +"), fix),
        Err(e) => Finding::fail(c, format!("cannot talk to the doveadm listener {shown}: {e}"), "start Dovecot"),
    }
}

/// Least privilege: pecora's user needs group postdrop (Postfix's public/ directory) and
/// pecora-delivery (the delivery spool), and nothing that opens mailboxes: group `mail`
/// opens every mailbox in /var/mail. `groups`: the names of its groups.
pub fn check_daemon_groups(groups: &[String]) -> Option<Finding> {
    groups.iter().any(|g| g == "mail").then(|| {
        Finding::warn(
            "dovecot",
            "user pecora is in group mail, which opens every mailbox in /var/mail: pecora needs only postdrop and pecora-delivery",
            "gpasswd -d pecora mail, then systemctl restart pecora",
        )
    })
}

/// Clock synchronisation, from systemd-timesyncd or chrony where available.
pub fn check_clock() -> Finding {
    if let Ok(o) = Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
    {
        if o.status.success() {
            return match String::from_utf8_lossy(&o.stdout).trim() {
                "yes" => Finding::ok("clock", "system clock synchronised (timedatectl)"),
                _ => Finding::fail(
                    "clock",
                    "system clock not synchronised: receipts carry legal time",
                    "enable systemd-timesyncd or chrony",
                ),
            };
        }
    }
    if let Ok(o) = Command::new("chronyc").arg("tracking").output() {
        if o.status.success() {
            let t = String::from_utf8_lossy(&o.stdout);
            return if t.contains("Leap status     : Normal") {
                Finding::ok("clock", "system clock synchronised (chrony)")
            } else {
                Finding::fail(
                    "clock",
                    "chrony reports the clock is not synchronised",
                    "check chronyc sources",
                )
            };
        }
    }
    Finding::warn(
        "clock",
        "cannot tell whether the clock is synchronised (no timedatectl or chronyc)",
        "install chrony or systemd-timesyncd",
    )
}

/// Reads and validates pecora.toml. Returns the configuration as far as it parses (valid or
/// not: the checks that need only some of its values still run) and a finding per problem.
pub fn check_config(path: &Path) -> (Option<Config>, Vec<Finding>) {
    let c = "config";
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return (
                None,
                vec![Finding::fail(
                    c,
                    format!("cannot read {shown}: {e}"),
                    "create it (the package installs a commented /etc/pecora/pecora.toml) or pass --config FILE",
                )],
            );
        }
    };
    let config = match Config::parse(path, &text) {
        Ok(c) => c,
        Err(e) => return (None, vec![config_finding(&e)]),
    };
    match config.validate(&text) {
        Ok(()) => (
            Some(config),
            vec![Finding::ok(c, format!("{shown} is valid"))],
        ),
        Err(errors) => (Some(config), errors.iter().map(config_finding).collect()),
    }
}

fn config_finding(e: &ConfigError) -> Finding {
    Finding::fail(
        "config",
        e.to_string(),
        "fix the file (pecora check validates it; man pecora.toml)",
    )
}

/// The provider index: fresh (updated within [`INDEX_WARN_AGE`], at worst
/// [`INDEX_FAIL_AGE`]), loads as the daemon loads it, and lists each of our domains with
/// our signing certificate (providerCertificateHash and providerCertificate).
pub fn check_index(config: &Config, now: SystemTime) -> Vec<Finding> {
    let c = "index";
    let file = &config.index.file;
    let mut out = Vec::new();
    let update_fix =
        "pecora index update (index.url); daily: systemctl enable --now pecora-index-update.timer";
    let modified = match std::fs::metadata(file).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::fail(
                c,
                format!("cannot read the provider index {}: {e}", file.display()),
                update_fix,
            ));
            return out;
        }
    };
    let age = now.duration_since(modified).unwrap_or_default();
    let days = age.as_secs() / 86_400;
    let hours = age.as_secs() / 3600;
    if age > INDEX_FAIL_AGE {
        out.push(Finding::fail(c, format!("{} was last updated {days} days ago: senders and signers added since are unknown (the index is updated daily)", file.display()), update_fix));
    } else if age > INDEX_WARN_AGE {
        out.push(Finding::warn(
            c,
            format!(
                "{} was last updated {days} days ago (the index is updated daily)",
                file.display()
            ),
            update_fix,
        ));
    } else {
        out.push(Finding::ok(
            c,
            format!("{} updated {hours} hours ago", file.display()),
        ));
    }
    let index = match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|d| crate::cmd::index::load_index(&d, &config.index))
    {
        Ok(i) => i,
        Err(e) => {
            out.push(Finding::fail(
                c,
                format!(
                    "{} does not load: {e} (pecora refuses to start with it)",
                    file.display()
                ),
                update_fix,
            ));
            return out;
        }
    };
    out.push(Finding::ok(
        c,
        format!(
            "{} loads: {} provider entries",
            file.display(),
            index.providers.len()
        ),
    ));

    let ours = std::fs::read(&config.keys.certificate)
        .ok()
        .and_then(|b| openssl::x509::X509::from_pem(&b).ok())
        .and_then(|x| x.to_der().ok());
    for d in &config.provider.domains {
        let Some(entry) = index.provider_for_domain(d) else {
            out.push(Finding::fail(c, format!("the index lists no provider for {d}: other providers treat our PEC mail as ordinary mail"), "have the domain published in the national index (managedDomains of our entry), then pecora index update"));
            continue;
        };
        let Some(der) = &ours else {
            out.push(Finding::warn(
                c,
                format!(
                    "{d} is listed under `{}`, but our certificate cannot be read to compare",
                    entry.name
                ),
                "see the keys findings",
            ));
            continue;
        };
        let sha1 = hex::encode_upper(openssl::sha::sha1(der));
        let listed_hash = entry.hashes.iter().any(|h| h.eq_ignore_ascii_case(&sha1));
        let listed_der = entry.certificates.iter().any(|c| c == der);
        if listed_hash && listed_der {
            out.push(Finding::ok(
                c,
                format!(
                    "{d} is listed under `{}` with our certificate (SHA-1 {sha1})",
                    entry.name
                ),
            ));
        } else {
            let what = if listed_hash {
                "lists its SHA-1 but not the certificate itself"
            } else {
                "does not list it"
            };
            out.push(Finding::fail(
                c,
                format!("the index entry `{}` for {d} {what}: our signing certificate has SHA-1 {sha1}, so other providers reject our envelopes and receipts", entry.name),
                "publish the certificate in the index (providerCertificate and providerCertificateHash of our entry), then pecora index update",
            ));
        }
        if !entry.name.eq_ignore_ascii_case(&config.provider.name) {
            out.push(Finding::warn(c, format!("provider.name `{}` differs from the index's providerName `{}` for {d}", config.provider.name, entry.name), "set provider.name exactly as in the index: it is the gestore-emittente of every daticert"));
        }
    }
    out
}

/// The TLS policy map of decisions.md 22 (`<index.file>.tls_policy`): present, no older
/// than the index, and listing every domain of another provider at `secure` (with
/// index.tls_ca_bundle) or at least `encrypt`.
pub fn check_tls_policy(config: &Config) -> Vec<Finding> {
    let c = "tls";
    let fix = "pecora index update (it writes the map from the index it installs)";
    let path = crate::cmd::index::tls_policy_path(&config.index.file);
    let shown = path.display();
    let Ok(data) = std::fs::read(&config.index.file) else {
        return Vec::new(); // the index findings say why
    };
    let Ok(index) = crate::cmd::index::load_index(&data, &config.index) else {
        return Vec::new();
    };
    let text = match crate::adapters::system::read_text_lossy(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding::fail(c, format!("no TLS policy map {shown} ({e}): mail to other providers may go in clear (decisions.md 22)"), fix)];
        }
    };
    let mut out = Vec::new();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(map), Some(idx)) = (modified(&path), modified(&config.index.file))
        && map < idx
    {
        out.push(Finding::fail(c, format!("{shown} is older than the index {}: it may miss providers added since", config.index.file.display()), fix));
    }
    let entries = crate::cmd::index::parse_tls_policy(&text);
    let (domains, _) = crate::cmd::index::other_providers_domains(&index, &config.provider);
    let want = crate::cmd::index::tls_level(&config.index);
    let strong = ["encrypt", "verify", "secure", "dane-only", "fingerprint"];
    let mut missing = Vec::new();
    let mut weak = Vec::new();
    for d in &domains {
        match entries.get(d).map(String::as_str) {
            None => missing.push(d.as_str()),
            Some(l) if want == "secure" && l != "secure" => weak.push(format!("{d} ({l})")),
            Some(l) if !strong.contains(&l) => weak.push(format!("{d} ({l})")),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        out.push(Finding::fail(c, format!("{shown} does not cover {} domains of other providers: {}", missing.len(), missing.join(", ")), fix));
    }
    if !weak.is_empty() {
        out.push(Finding::fail(c, format!("{shown} asks less than `{want}` for {}", weak.join(", ")), fix));
    }
    if out.is_empty() {
        out.push(Finding::ok(c, format!("{shown} requires TLS ({want}) for all {} domains of other providers", domains.len())));
    }
    out
}

/// Postfix reads the TLS policy map pecora writes (decisions.md 22).
fn check_tls_policy_wired(pf: &PostfixConfig, config: &Config) -> Finding {
    let c = "postfix";
    let path = crate::cmd::index::tls_policy_path(&config.index.file);
    let maps = pf.main.get("smtp_tls_policy_maps").map(String::as_str).unwrap_or("");
    let wired = crate::config::postfix_list_entries(maps)
        .any(|m| m.trim_end_matches('}').trim_end_matches(',').ends_with(&format!(":{}", path.display())));
    if wired {
        Finding::ok(c, format!("smtp_tls_policy_maps includes {}", path.display()))
    } else {
        Finding::fail(
            c,
            format!("smtp_tls_policy_maps = {maps}: Postfix does not read {}, so mail to other providers may go in clear (decisions.md 22)", path.display()),
            format!("{} -e smtp_tls_policy_maps=texthash:{} (pecora setup postfix --apply)", postconf_command(pf), path.display()),
        )
    }
}

/// Trust anchors for other providers' signers (decisions.md 15): a warning when neither a
/// CA bundle nor CRLs are configured.
pub fn check_trust(config: &Config) -> Finding {
    let c = "trust";
    match (&config.index.ca_bundle, config.index.crls.is_empty()) {
        (None, true) => Finding::warn(
            c,
            "no index.ca_bundle and no index.crls: other providers' signers are trusted on the index alone, without chain or revocation checks",
            "set index.ca_bundle (AgID's bundle in production) and index.crls (decisions.md 15)",
        ),
        (Some(b), true) => Finding::ok(
            c,
            format!(
                "signer chains are checked against {} (no CRLs: revocation is not checked)",
                b.display()
            ),
        ),
        (None, false) => Finding::ok(
            c,
            format!(
                "revocation is checked against {} CRL file(s) (no CA bundle: chains are not checked)",
                config.index.crls.len()
            ),
        ),
        (Some(b), false) => Finding::ok(
            c,
            format!(
                "signer chains are checked against {} and {} CRL file(s)",
                b.display(),
                config.index.crls.len()
            ),
        ),
    }
}

/// The registry opens and its chain verifies against the stored and exported checkpoints
/// (signatures checked with our certificate). A SQLite file that does not exist yet is not
/// created here (doctor often runs as root; the daemon must own the file).
pub async fn check_registry(config: &Config) -> Vec<Finding> {
    use crate::store::{CheckpointVerifier, Store, StoreUrl};
    let c = "registry";
    let url = &config.store.url;
    if let Ok(StoreUrl::Sqlite(path)) = StoreUrl::parse(url)
        && path != ":memory:"
        && !Path::new(&path).exists()
    {
        return vec![Finding::warn(
            c,
            format!("the registry {path} does not exist yet"),
            "it is created when pecora serve first starts",
        )];
    }
    let store = match Store::open(url).await {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::fail(
                c,
                format!("cannot open the registry {url}: {e}"),
                "check store.url, the database server and its credentials",
            )];
        }
    };
    let mut out = Vec::new();
    let verifier =
        match CheckpointVerifier::from_pem_files(
            &std::iter::once(config.keys.certificate.clone()).chain(config.keys.previous_certificates.iter().cloned()).collect::<Vec<_>>(),
        ) {
            Ok(v) => Some(v),
            Err(e) => {
                out.push(Finding::warn(
                    c,
                    format!("checkpoint signatures not checked: {e}"),
                    "see the keys findings",
                ));
                None
            }
        };
    let dir = &config.store.checkpoint_dir;
    let extra = if dir.is_dir() {
        match crate::store::checkpoint::load_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                out.push(Finding::warn(
                    c,
                    format!(
                        "cannot read the exported checkpoints in {}: {e}",
                        dir.display()
                    ),
                    "check the directory",
                ));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    match store.verify(verifier.as_ref(), &extra).await {
        Ok(r) => match &r.problem {
            None => out.push(Finding::ok(
                c,
                format!("the registry chain verifies: {} rows, {} signed checkpoint(s), {} row(s) after the last one", r.rows, r.checkpoints_checked, r.unsigned_tail),
            )),
            Some(p) => {
                let row = p.first_row().map(|n| format!(" (first bad row: {n})")).unwrap_or_default();
                out.push(Finding::fail(c, format!("the registry does not verify{row}: {p}"), "pecora log verify --checkpoint-dir <off-host copy>; keep the database as it is for the investigation"));
            }
        },
        Err(e) => out.push(Finding::fail(c, format!("cannot verify the registry: {e}"), "pecora log verify says more")),
    }
    out.extend(check_held_receipts(config, &store).await);
    out.extend(check_outbox_seals(config, store).await);
    out
}

/// Held receipts nobody settles: a row held past `[postfix] confirm_timeout` (and an hour's
/// margin) would have been released or cancelled by the pecora of the host that recorded
/// it, if one ran under that name. The usual cause is a host renamed without
/// `provider.host_id`: each host settles only its own rows (Postfix queue ids are unique
/// per host only). And this host's receipts held for over [`HELD_LATE`]: late already,
/// whatever `confirm_timeout` will do with them.
async fn check_held_receipts(config: &Config, store: &crate::store::Store) -> Vec<Finding> {
    let c = "registry";
    let held = match store.backend().outbox_held_by_host().await {
        Ok(h) => h,
        Err(e) => return vec![Finding::fail(c, format!("cannot read the held receipts: {e}"), "check the database")],
    };
    let this = config.host_id();
    let limit = config.postfix.confirm_timeout.chrono() + chrono::Duration::hours(1);
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for (host, n, oldest) in held {
        let since = crate::store::model::parse_ts(&oldest);
        let stale = since.is_some_and(|t| now - t > limit);
        let late = since.is_some_and(|t| now - t > chrono::Duration::from_std(HELD_LATE).unwrap_or_default());
        if host == this && late && !stale {
            // Postfix logs a queued message at once, and a message put on hold is released
            // as soon as `postqueue -j` lists it: minutes of waiting are a mail log pecora
            // does not read (or that Postfix no longer writes).
            out.push(Finding::warn(
                c,
                format!(
                    "{n} receipt(s) of this host held for Postfix's word for over {} minutes (the oldest since {oldest}): their senders have no ricevuta di accettazione yet",
                    HELD_LATE.as_secs() / 60
                ),
                "is pecora serve running, and does Postfix log to [postfix] maillog? pecora's log says \"Postfix queued the message: receipts released\" as it reads it; see the maillog findings",
            ));
            continue;
        }
        if !stale {
            continue;
        }
        let fix = if host == this {
            "is pecora serve running, with [postfix] maillog readable? It settles them when it reads the mail log".to_string()
        } else {
            format!("if this host was called {host} before, set provider.host_id = \"{host}\" and restart pecora; if {host} is another host of this registry, its pecora is not running")
        };
        out.push(Finding::warn(
            c,
            format!("{n} receipt(s) held for host {host} since {oldest}, past [postfix] confirm_timeout: no running pecora of that name settles them (this host is {this})"),
            fix,
        ));
    }
    out
}

/// How long a receipt may wait for the mail log before `doctor` calls it late.
pub const HELD_LATE: Duration = Duration::from_secs(600);

/// How far back `doctor` reports outbox rows the daemon refused for their seal.
pub const REFUSED_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// The outbox's seals against the configured keys: queued rows no key verifies (the daemon
/// will refuse them: a replaced signing key not listed in `keys.previous_private_keys`, or
/// rows written behind pecora's back), rows only a previous key covers, and rows refused in
/// the last [`REFUSED_WINDOW`].
async fn check_outbox_seals(config: &Config, store: crate::store::Store) -> Vec<Finding> {
    use crate::cmd::outbox::KeysError;
    let c = "registry";
    let keys = match crate::cmd::outbox::keys(config) {
        Ok(k) => k,
        // The keys findings say why the key cannot be read.
        Err(KeysError::Current(e)) => return vec![Finding::warn(c, format!("outbox seals not checked: the signing key: {e}"), "run doctor as root, or see the keys findings")],
        Err(e @ KeysError::Previous(_)) => return vec![Finding::fail(c, e.to_string(), "fix or remove the entry: the daemon does not start with it")],
    };
    let store = store.with_outbox_keys(keys);
    let since = chrono::Utc::now() - chrono::Duration::from_std(REFUSED_WINDOW).unwrap_or_default();
    let report = match store.outbox_seal_report(since).await {
        Ok(Some(r)) => r,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![Finding::fail(c, format!("cannot read the outbox: {e}"), "check the database")],
    };
    let ids = |v: &[i64]| {
        let shown: Vec<String> = v.iter().take(10).map(i64::to_string).collect();
        if v.len() > 10 { format!("{}, …", shown.join(", ")) } else { shown.join(", ") }
    };
    let mut out = Vec::new();
    if !report.unverifiable.is_empty() {
        out.push(Finding::fail(
            c,
            format!(
                "{} queued outbox message(s) carry a seal no configured key verifies (outbox ids {}): the daemon will refuse to send them",
                report.unverifiable.len(),
                ids(&report.unverifiable)
            ),
            "if the signing key was replaced, list the old key in keys.previous_private_keys and restart pecora; \
             otherwise they were written behind pecora's back: keep the database as it is for the investigation",
        ));
    } else {
        out.push(Finding::ok(c, format!("every queued outbox message ({}) carries pecora's seal", report.queued)));
    }
    if report.by_previous_key > 0 {
        out.push(Finding::ok(
            c,
            format!("{} queued outbox message(s) are sealed by a previous signing key: keep keys.previous_private_keys until they are sent", report.by_previous_key),
        ));
    } else if !config.keys.previous_private_keys.is_empty() && report.unverifiable.is_empty() {
        out.push(Finding::ok(c, "no queued outbox message needs keys.previous_private_keys any more: the old keys may be removed from it"));
    }
    if !report.refused.is_empty() {
        out.push(Finding::warn(
            c,
            format!(
                "{} outbox message(s) created in the last {} days were refused for their seal (outbox ids {}); they were never sent",
                report.refused.len(),
                REFUSED_WINDOW.as_secs() / 86_400,
                ids(&report.refused)
            ),
            "pecora's log says why (\"outbox row refused\"): a replaced signing key not listed in keys.previous_private_keys, or rows written behind pecora's back",
        ));
    }
    out
}

/// A delivery event older than this in `new/` means nobody is processing the spool.
pub const SPOOL_STALE: Duration = Duration::from_secs(600);

/// The delivery spool the Dovecot hook writes: events the daemon set aside in `bad/` (each
/// one a stored message whose receipt needs a look), and events left waiting in `new/` for
/// over [`SPOOL_STALE`] (the daemon is not reading the spool).
pub fn check_delivery_spool(dir: &Path, now: SystemTime) -> Vec<Finding> {
    let c = "dovecot";
    if !dir.is_dir() {
        return vec![Finding::warn(c, format!("the delivery spool {} does not exist yet", dir.display()), "pecora serve creates it when it starts")];
    }
    let entries = |sub: &str| -> Vec<(PathBuf, Option<SystemTime>)> {
        std::fs::read_dir(dir.join(sub))
            .map(|rd| rd.filter_map(Result::ok).map(|e| (e.path(), e.metadata().ok().and_then(|m| m.modified().ok()))).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let bad = entries("bad");
    if !bad.is_empty() {
        out.push(Finding::warn(
            c,
            format!("{} delivery event(s) set aside in {}: pecora could not process them (its log says why: \"moved to bad/\")", bad.len(), dir.join("bad").display()),
            "each names a stored message (uid and mailbox) whose avvenuta consegna may be missing until the reconciliation sweep certifies it: read the log, then remove the file",
        ));
    }
    let stale = entries("new")
        .iter()
        .filter(|(_, t)| t.and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > SPOOL_STALE))
        .count();
    if stale > 0 {
        out.push(Finding::warn(
            c,
            format!("{stale} delivery event(s) waiting in {} for over {} minutes: no receipt goes out for them", dir.join("new").display(), SPOOL_STALE.as_secs() / 60),
            "is pecora serve running, and may it read the spool (the hook writes as the mail user)?",
        ));
    }
    if out.is_empty() {
        out.push(Finding::ok(c, format!("delivery spool {}: nothing waiting, nothing set aside", dir.display())));
    }
    out
}

/// The user the daemon runs as (`pecora`), when it exists: uid, primary gid, other gids.
fn daemon_user() -> Option<(u32, Vec<u32>)> {
    user_ids("pecora")
}

/// Whether `uid` (with groups `gids`) may create files in a directory of `mode`, owned by
/// `owner` and `group`.
fn may_write(mode: u32, owner: u32, group: u32, uid: u32, gids: &[u32]) -> bool {
    if uid == 0 {
        return true;
    }
    if owner == uid {
        mode & 0o300 == 0o300
    } else if gids.contains(&group) {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

/// The checkpoint export directory exists and the daemon can write to it (its `pecora` user
/// when doctor runs as root and that user exists, else whoever runs doctor).
pub fn check_checkpoint_dir(config: &Config) -> Finding {
    let c = "registry";
    let dir = &config.store.checkpoint_dir;
    let running_as = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let who = match (running_as, daemon_user()) {
        (Some(0), Some(u)) => Some(u),
        _ => None,
    };
    let fix = format!(
        "mkdir -p {0} && chown pecora:pecora {0} && chmod 750 {0}",
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Finding::fail(
            c,
            format!("store.checkpoint_dir {} is not a directory", dir.display()),
            fix,
        ),
        Ok(m) => {
            let writable = match &who {
                Some((uid, gids)) => may_write(m.mode(), m.uid(), m.gid(), *uid, gids),
                None => tempfile::tempfile_in(dir).is_ok(),
            };
            let user = if who.is_some() {
                "the pecora user"
            } else {
                "this user"
            };
            if writable {
                Finding::ok(
                    c,
                    format!(
                        "checkpoints are exported to {} (writable by {user})",
                        dir.display()
                    ),
                )
            } else {
                Finding::fail(
                    c,
                    format!(
                        "{user} cannot write to store.checkpoint_dir {}: checkpoints are not exported",
                        dir.display()
                    ),
                    fix,
                )
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::warn(
            c,
            format!(
                "store.checkpoint_dir {} does not exist yet (pecora creates it at the first checkpoint)",
                dir.display()
            ),
            fix,
        ),
        Err(e) => Finding::fail(
            c,
            format!("store.checkpoint_dir {}: {e}", dir.display()),
            fix,
        ),
    }
}

/// Whether a user may use an inode of `mode` for `want` (one of 0o4 read, 0o2 write,
/// 0o1 search), by owner, group or other bits.
fn permits(mode: u32, owner: u32, group: u32, uid: u32, gids: &[u32], want: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let bits = if owner == uid {
        mode >> 6
    } else if gids.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// The unix milter socket must be reachable by Postfix's processes (they run as
/// `mail_owner` with its primary group) and by no other local user, since whoever connects
/// can claim any authenticated sender.
pub fn check_milter_socket_access(spec: &SocketSpec, mail_owner: &str) -> Option<Finding> {
    let SocketSpec::Unix(path) = spec else { return None };
    let c = "milter";
    let (uid, gids) = match user_ids(mail_owner) {
        Some((uid, gids)) => (uid, gids[..1].to_vec()),
        None => return Some(Finding::warn(c, format!("no local user {mail_owner} (Postfix's mail_owner): cannot check who may reach {}", path.display()), "check mail_owner")),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(Finding::warn(c, format!("{}: {e}", path.display()), "start pecora, then run doctor again")),
    };
    let mut chain: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    let mut p = path.parent();
    while let Some(d) = p {
        if let Ok(m) = std::fs::metadata(d) {
            chain.push((d.to_path_buf(), m));
        }
        p = d.parent();
    }
    let blocked = |u: u32, g: &[u32]| {
        chain
            .iter()
            .find(|(_, m)| !permits(m.mode(), m.uid(), m.gid(), u, g, 0o1))
            .map(|(d, m)| format!("{} ({:o} {}:{})", d.display(), m.mode() & 0o7777, m.uid(), m.gid()))
            .or_else(|| (!permits(meta.mode(), meta.uid(), meta.gid(), u, g, 0o2)).then(|| format!("the socket itself ({:o})", meta.mode() & 0o777)))
    };
    if let Some(why) = blocked(uid, &gids) {
        return Some(Finding::fail(
            c,
            format!("Postfix (user {mail_owner}) cannot connect to {}: blocked at {why}", path.display()),
            "put the socket under Postfix's queue directory in a set-group-id directory of Postfix's group, mode 2750 (the default listen.milter; `pecora setup postfix --apply` makes the directory)",
        ));
    }
    // Anyone else: a uid and gid that own nothing.
    if blocked(u32::MAX - 1, &[u32::MAX - 1]).is_none() {
        return Some(Finding::fail(
            c,
            format!("every local user can connect to {} and claim any authenticated sender", path.display()),
            "remove the other-users bits of the socket or of its directory (mode 0660 socket, 0750 directory)",
        ));
    }
    Some(Finding::ok(c, format!("only Postfix (and root) can reach the milter socket {}", path.display())))
}

/// An inet milter socket: any local user can connect and claim any {auth_authen}.
pub fn check_milter_socket(spec: &SocketSpec) -> Option<Finding> {
    match spec {
        SocketSpec::Inet(a) => Some(Finding::warn(
            "milter",
            format!(
                "the milter listens on TCP {a}: any local user can connect to it and claim any authenticated sender"
            ),
            "use the default unix socket, unix:/var/spool/postfix/pecora/milter.sock, which only Postfix's group can reach (`pecora setup postfix --apply` makes its directory)",
        )),
        SocketSpec::Unix(_) => None,
    }
}

/// Dovecot, through `doveconf`: no Sieve on LMTP (or LDA) deliveries (decisions.md 10), and
/// the delivery hook loaded for LMTP.
pub fn check_dovecot(config_file: Option<&Path>) -> Vec<Finding> {
    let c = "dovecot";
    let doveconf = |args: &[&str]| -> Result<String, String> {
        let mut cmd = Command::new("doveconf");
        if let Some(f) = config_file {
            cmd.arg("-c").arg(f);
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let lmtp = match doveconf(&["-f", "protocol=lmtp", "-h", "mail_plugins"]) {
        Ok(p) => p,
        Err(e)
            if config_file.is_none()
                && Command::new("doveconf").arg("--help").output().is_err() =>
        {
            return vec![Finding::warn(
                c,
                format!("cannot run doveconf ({e}): Dovecot not checked"),
                "run doctor where Dovecot runs, or --skip dovecot",
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                c,
                format!("doveconf cannot read the Dovecot configuration: {e}"),
                "fix the Dovecot configuration (doveconf -n)",
            )];
        }
    };
    let mut out = Vec::new();
    let has = |list: &str, p: &str| list.split_whitespace().any(|x| x == p);
    let lda = doveconf(&["-f", "protocol=lda", "-h", "mail_plugins"]).unwrap_or_default();
    for (proto, plugins) in [("lmtp", &lmtp), ("lda", &lda)] {
        if has(plugins, "sieve") {
            out.push(Finding::fail(
                c,
                format!("Sieve is enabled for {proto} deliveries (mail_plugins = {plugins}): a user's discard, redirect or vacation breaks \"stored means delivered\" on PEC mailboxes (decisions.md 10)"),
                format!("remove sieve from mail_plugins (global and in protocol {proto} {{ }})"),
            ));
        }
    }
    if !has(&lmtp, "sieve") && !has(&lda, "sieve") {
        out.push(Finding::ok(c, "no Sieve on LMTP or LDA deliveries"));
    }
    if has(&lmtp, "push_notification_lua") && has(&lmtp, "mail_lua") {
        let driver = doveconf(&["-h", "plugin/push_notification_driver"]).unwrap_or_default();
        if driver.contains("lua:") {
            out.push(Finding::ok(
                c,
                format!("delivery hook loaded for LMTP ({driver})"),
            ));
        } else {
            out.push(Finding::fail(c, format!("push_notification_driver = {driver}: the delivery hook is not the Lua script, no avvenuta-consegna goes out"), "pecora setup dovecot --apply"));
        }
    } else {
        out.push(Finding::fail(
            c,
            format!("the delivery hook is not loaded for LMTP (mail_plugins = {lmtp}): no avvenuta-consegna goes out"),
            "pecora setup dovecot --apply (mail_lua push_notification_lua in protocol lmtp)",
        ));
    }
    out
}

/// How long Postfix may have handled mail (its queue directories changed) without a line
/// in the mail log before the log counts as stale.
pub const MAILLOG_STALE_AFTER: Duration = Duration::from_secs(600);

/// decisions.md 18: the acceptance hold is on, and the log it waits for is the one this
/// Postfix writes, exists, is readable by the daemon's user and is not stale. A log a syslog
/// daemon writes works, with a warning: any local user can add lines to it.
pub fn check_hold(config: &Config, pf: Option<&PostfixConfig>) -> Vec<Finding> {
    let c = "hold";
    let setup = "pecora setup postfix --apply (Postfix's own maillog_file, and [postfix] maillog to match), then postfix reload and systemctl reload pecora";
    let Some(path) = config.postfix.maillog.as_deref() else {
        return vec![Finding::fail(
            c,
            "[postfix] maillog is not set: the acceptance hold is off, so a message Postfix refuses after pecora's milter still gets a ricevuta di accettazione (decisions.md 18)",
            setup,
        )];
    };
    let maillog_file = pf.and_then(|p| p.main.get("maillog_file")).map(|s| s.trim()).filter(|s| !s.is_empty());
    if let Some(mf) = maillog_file
        && Path::new(mf) != path
    {
        return vec![Finding::fail(
            c,
            format!(
                "Postfix writes its log to {mf} (maillog_file), not to [postfix] maillog {}: no line confirms a queued message, so every acceptance waits until confirm_timeout cancels it",
                path.display()
            ),
            format!("set [postfix] maillog = \"{mf}\" (pecora setup postfix --apply does), then systemctl reload pecora"),
        )];
    }
    let own = maillog_file.is_some();
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return vec![Finding::fail(c, format!("[postfix] maillog {} is not a file", path.display()), setup)],
        Err(e) => {
            let fix = if own {
                "postfix reload (postlogd creates the file at Postfix's next log line)".to_string()
            } else {
                setup.to_string()
            };
            return vec![Finding::fail(
                c,
                format!("[postfix] maillog {}: {e}: acceptance receipts stay held", path.display()),
                fix,
            )];
        }
    };
    // Readable by the daemon's user (when doctor runs as root and it exists), else by us.
    let running_as = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let readable = match (running_as, daemon_user()) {
        (Some(0), Some((uid, gids))) => {
            let searchable = path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).all(|a| {
                std::fs::metadata(a).is_ok_and(|m| permits(m.mode(), m.uid(), m.gid(), uid, &gids, 0o1))
            });
            searchable && permits(meta.mode(), meta.uid(), meta.gid(), uid, &gids, 0o4)
        }
        _ => std::fs::File::open(path).is_ok(),
    };
    if !readable {
        let fix = if own {
            format!("chmod 0644 {} (or give group pecora read access; Postfix 3.9 and later: maillog_file_permissions = 0644)", path.display())
        } else {
            format!(
                "let user pecora read it (e.g. setfacl -m u:pecora:r {0}, and the same in its rotation), or use Postfix's own log: pecora setup postfix --apply --maillog-file {1}",
                path.display(),
                crate::cmd::setup::DEFAULT_MAILLOG_FILE
            )
        };
        return vec![Finding::fail(
            c,
            format!("the pecora user cannot read [postfix] maillog {}: acceptance receipts stay held", path.display()),
            fix,
        )];
    }
    // Stale: Postfix took mail in (incoming/, active/ changed) well after the log's last line.
    if let Some(queue) = pf.and_then(|p| p.main.get("queue_directory")) {
        let newest = ["incoming", "active"]
            .iter()
            .filter_map(|d| std::fs::metadata(Path::new(queue).join(d)).and_then(|m| m.modified()).ok())
            .max();
        if let (Some(queued), Ok(logged)) = (newest, meta.modified())
            && let Ok(gap) = queued.duration_since(logged)
            && gap > MAILLOG_STALE_AFTER
        {
            return vec![Finding::fail(
                c,
                format!(
                    "[postfix] maillog {} is stale: Postfix handled mail {} minute(s) after its last line, so it no longer logs there",
                    path.display(),
                    gap.as_secs() / 60
                ),
                format!("point [postfix] maillog at the file Postfix logs to, or: {setup}"),
            )];
        }
    }
    if own {
        vec![Finding::ok(
            c,
            format!("acceptance receipts wait for Postfix's own log {} (maillog_file, written by postlogd)", path.display()),
        )]
    } else {
        vec![Finding::warn(
            c,
            format!(
                "[postfix] maillog {} is written by a syslog daemon: any local user can add lines to it (logger -t 'postfix/qmgr[1]' …) and release a held acceptance",
                path.display()
            ),
            format!("use Postfix's own log: pecora setup postfix --apply --maillog-file {}, then postfix reload", crate::cmd::setup::DEFAULT_MAILLOG_FILE),
        )]
    }
}

/// Runs every check and prints the report; the exit status.
pub fn run(args: &DoctorArgs, config_path: &Path) -> ExitCode {
    if let Some(d) = &args.postfix_dir
        && !d.is_dir()
    {
        eprintln!("pecora: --postfix-dir {}: not a directory", d.display());
        return ExitCode::from(2);
    }
    if let Some(f) = &args.dovecot_config
        && !f.is_file()
    {
        eprintln!("pecora: --dovecot-config {}: no such file", f.display());
        return ExitCode::from(2);
    }
    let wanted = |g: CheckGroup| !args.skip.contains(&g);
    let (config, mut findings) = check_config(config_path);
    if let Some(config) = &config {
        if wanted(CheckGroup::Keys) {
            findings.extend(check_keys(config, chrono::Utc::now().timestamp()));
        }
        if wanted(CheckGroup::Index) {
            findings.extend(check_index(config, SystemTime::now()));
            findings.extend(check_tls_policy(config));
            findings.push(check_trust(config));
        }
        if wanted(CheckGroup::Registry) {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => findings.extend(rt.block_on(check_registry(config))),
                Err(e) => findings.push(Finding::fail(
                    "registry",
                    format!("cannot start the async runtime: {e}"),
                    "retry",
                )),
            }
            findings.push(check_checkpoint_dir(config));
        }
        if wanted(CheckGroup::Milter) {
            findings.push(check_milter_reachable(&config.listen.milter));
            findings.extend(check_milter_socket(&config.listen.milter));
        }
    }
    if wanted(CheckGroup::Postfix) {
        match PostfixConfig::read(args.postfix_dir.as_deref()) {
            Ok(pf) => {
                findings.extend(check_postfix_common(&pf));
                match &config {
                    Some(config) => {
                        findings.extend(check_postfix(&pf, config));
                        findings.push(check_tls_policy_wired(&pf, config));
                        findings.extend(check_hold(config, Some(&pf)));
                        let owner = pf.main.get("mail_owner").map(String::as_str).filter(|o| !o.is_empty()).unwrap_or("postfix");
                        findings.extend(check_milter_socket_access(&config.listen.milter, owner));
                    }
                    None => findings.push(Finding::warn(
                        "postfix",
                        "listeners and milter sockets not checked: pecora.toml does not parse",
                        "fix pecora.toml",
                    )),
                }
            }
            Err(e) => {
                findings.push(Finding::fail(
                    "postfix",
                    e,
                    "pass --postfix-dir DIR for a non-default instance, or --skip postfix",
                ));
                if let Some(config) = &config {
                    findings.extend(check_hold(config, None));
                }
            }
        }
    }
    if wanted(CheckGroup::Dovecot) {
        findings.extend(check_dovecot(args.dovecot_config.as_deref()));
        if let Some(config) = &config {
            findings.push(check_doveadm_socket(&config.delivery));
            findings.extend(check_delivery_spool(&config.listen.delivery_spool, SystemTime::now()));
        }
        if let Some((_, gids)) = daemon_user() {
            let names: Vec<String> = gids.iter().filter_map(|g| group_name(*g)).collect();
            findings.extend(check_daemon_groups(&names));
        }
    }
    if wanted(CheckGroup::Clock) {
        findings.push(check_clock());
    }
    match print_report(&findings) {
        Level::Fail => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// Prints the report; returns the worst level.
pub fn print_report(findings: &[Finding]) -> Level {
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {:<8} {}", f.check, f.message);
        if let Some(fix) = &f.fix {
            println!("                fix: {fix}");
        }
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    println!(
        "{} ok, {} warning(s), {} failure(s)",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    );
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pecora_needs_no_group_mail() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_daemon_groups(&names(&["pecora", "postdrop", "pecora-delivery"])).is_none());
        let f = check_daemon_groups(&names(&["pecora", "mail", "postdrop"])).expect("a warning");
        assert!(matches!(f.level, Level::Warn), "{f:?}");
    }

    use super::*;

    #[test]
    fn write_permission_for_another_user() {
        let (owner, group, other) = (100, 200, 300);
        assert!(may_write(0o40700, owner, group, owner, &[]));
        assert!(!may_write(0o40500, owner, group, owner, &[group]));
        assert!(!may_write(0o40755, owner, group, other, &[]));
        assert!(may_write(0o40770, owner, group, other, &[7, group]));
        assert!(!may_write(0o40750, owner, group, other, &[group]));
        assert!(may_write(0o40703, owner, group, other, &[]));
        assert!(may_write(0o40500, owner, group, 0, &[]));
    }

    #[test]
    fn search_and_write_bits() {
        let (owner, group, other) = (100, 200, 300);
        assert!(permits(0o40750, owner, group, other, &[group], 0o1));
        assert!(!permits(0o40750, owner, group, other, &[7], 0o1));
        assert!(permits(0o140660, owner, group, other, &[group], 0o2));
        assert!(!permits(0o140640, owner, group, other, &[group], 0o2));
        assert!(permits(0o140606, owner, group, other, &[], 0o2));
        assert!(permits(0o140000, owner, group, 0, &[], 0o2));
    }

    #[test]
    fn postfix_times() {
        assert_eq!(parse_postfix_time("1d"), Some(86_400));
        assert_eq!(parse_postfix_time("5d"), Some(432_000));
        assert_eq!(parse_postfix_time("3600"), Some(3600));
        assert_eq!(parse_postfix_time("x"), None);
    }

    #[test]
    fn alias_maps_on_pec_domains_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("virtual");
        std::fs::write(&p, "# aliases\n@pec.alpha.test   catchall@other.test\nok@other.test  x@y\nmario@pec.alpha.test mario@gmail.test\n").unwrap();
        let f = check_alias_maps(
            &format!("texthash:{}", p.display()),
            &["pec.alpha.test".into()],
        );
        assert_eq!(
            f.iter().filter(|f| f.level == Level::Fail).count(),
            2,
            "{f:?}"
        );
        let f = check_alias_maps("pgsql:/etc/postfix/x.cf", &["pec.alpha.test".into()]);
        assert_eq!(f[0].level, Level::Warn);
    }
}
