//! `pecora doctor`: checks the running setup and says what is wrong and how to fix it.
//!
//! Each check yields a finding: OK, a warning, or a failure with the fix. The exit status
//! is 1 when anything failed, so monitoring can run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Config, SocketSpec};

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
    fn ok(check: &'static str, message: impl Into<String>) -> Finding {
        Finding { level: Level::Ok, check, message: message.into(), fix: None }
    }
    fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Warn, check, message: message.into(), fix: Some(fix.into()) }
    }
    fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Fail, check, message: message.into(), fix: Some(fix.into()) }
    }
}

/// Postfix's effective configuration, read with `postconf`.
#[derive(Debug, Default)]
pub struct PostfixConfig {
    /// main.cf, with defaults (`postconf`).
    pub main: BTreeMap<String, String>,
    /// master.cf services: (service/type, command, -o overrides).
    pub services: Vec<Service>,
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: String,
    pub command: String,
    pub overrides: BTreeMap<String, String>,
}

impl PostfixConfig {
    /// Reads the configuration of the Postfix instance in `dir` (default /etc/postfix).
    pub fn read(dir: Option<&Path>) -> Result<PostfixConfig, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            let mut c = Command::new("postconf");
            if let Some(d) = dir {
                c.arg("-c").arg(d);
            }
            let out = c.args(args).output().map_err(|e| format!("cannot run postconf: {e}"))?;
            if !out.status.success() {
                return Err(format!("postconf failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let main = run(&[])?
            .lines()
            .filter_map(|l| l.split_once(" = ").or_else(|| l.strip_suffix(" =").map(|k| (k, ""))))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let services = parse_master(&run(&["-M", "-f"])?);
        Ok(PostfixConfig { main, services, config_dir: dir.map(Path::to_path_buf) })
    }

    /// A parameter's value for a service: its -o override, else main.cf.
    pub fn param<'a>(&'a self, service: &'a Service, name: &str) -> &'a str {
        service
            .overrides
            .get(name)
            .or_else(|| self.main.get(name))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Parses `postconf -M -f` output: one service per logical line, `-o` overrides folded in.
pub fn parse_master(text: &str) -> Vec<Service> {
    let mut logical: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = logical.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            logical.push(line.trim().to_string());
        }
    }
    logical
        .iter()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let mut overrides = BTreeMap::new();
            let mut i = 8;
            while i < fields.len() {
                if fields[i] == "-o" {
                    if let Some((k, v)) = fields.get(i + 1).and_then(|kv| kv.split_once('=')) {
                        overrides.insert(k.to_string(), v.to_string());
                    }
                    i += 2;
                } else if let Some((k, v)) = fields[i].strip_prefix("-o").and_then(|kv| kv.split_once('=')) {
                    overrides.insert(k.to_string(), v.to_string());
                    i += 1;
                } else {
                    i += 1;
                }
            }
            Some(Service {
                name: fields[0].to_string(),
                kind: fields[1].to_string(),
                command: fields[7].to_string(),
                overrides,
            })
        })
        .collect()
}

/// The Postfix checks: fail-closed milter, PEC listeners with SASL and TLS, injection
/// listener without milter, 24 h queue lifetime, no forwarding on PEC domains.
pub fn check_postfix(pf: &PostfixConfig, config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = "postfix";
    let main = |k: &str| pf.main.get(k).map(String::as_str).unwrap_or("");
    let postconf = match &pf.config_dir {
        Some(d) => format!("postconf -c {}", d.display()),
        None => "postconf".into(),
    };

    if main("milter_default_action") == "tempfail" {
        out.push(Finding::ok(c, "milter_default_action = tempfail: no mail passes while pecora is down"));
    } else {
        out.push(Finding::fail(
            c,
            format!("milter_default_action = {}: mail would pass unsigned while pecora is down", main("milter_default_action")),
            format!("{postconf} -e milter_default_action=tempfail && postfix reload"),
        ));
    }
    for key in ["maximal_queue_lifetime", "bounce_queue_lifetime"] {
        match parse_postfix_time(main(key)) {
            Some(s) if s <= 86_400 => out.push(Finding::ok(c, format!("{key} = {} (at most 24 h)", main(key)))),
            _ => out.push(Finding::fail(
                c,
                format!("{key} = {}: PEC traffic may wait at most 24 h in a queue", main(key)),
                format!("{postconf} -e {key}=1d"),
            )),
        }
    }

    let milter_socket = match &config.listen.milter {
        SocketSpec::Unix(p) => format!("unix:{}", p.display()),
        SocketSpec::Inet(a) => format!("inet:{a}"),
    };
    let smtpd: Vec<&Service> = pf.services.iter().filter(|s| s.command == "smtpd").collect();
    let mut access = 0;
    let mut reception = 0;
    for s in &smtpd {
        let id = format!("{}/{}", s.name, s.kind);
        let milters = pf.param(s, "smtpd_milters");
        let daemon = pf.param(s, "milter_macro_daemon_name");
        let ours = milters.contains(&milter_socket);
        let no_milters = milters.trim().is_empty() || pf.param(s, "receive_override_options").contains("no_milters");
        match daemon {
            "PEC-ACCESSO" => {
                access += 1;
                if !ours {
                    out.push(Finding::fail(c, format!("{id} is the access point but its smtpd_milters ({milters}) do not include pecora ({milter_socket})"), format!("{postconf} -P {id}/smtpd_milters={milter_socket}")));
                }
                if pf.param(s, "smtpd_sasl_auth_enable") != "yes" {
                    out.push(Finding::fail(c, format!("{id}: SASL authentication is off on the access point"), format!("{postconf} -P {id}/smtpd_sasl_auth_enable=yes")));
                }
                let tls = pf.param(s, "smtpd_tls_security_level") == "encrypt" || pf.param(s, "smtpd_tls_wrappermode") == "yes";
                if !tls {
                    out.push(Finding::fail(c, format!("{id}: TLS is not mandatory on the access point"), format!("{postconf} -P {id}/smtpd_tls_security_level=encrypt (or smtpd_tls_wrappermode=yes for smtps)")));
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
            _ if ours => out.push(Finding::fail(
                c,
                format!("{id} calls pecora without milter_macro_daemon_name PEC-ACCESSO or PEC-RICEZIONE (pecora tempfails it)"),
                format!("{postconf} -P {id}/milter_macro_daemon_name=PEC-ACCESSO (submission) or =PEC-RICEZIONE (MX)"),
            )),
            _ if !no_milters => {}
            _ => {}
        }
    }
    if access == 0 {
        out.push(Finding::fail(c, "no submission listener is marked PEC-ACCESSO", "add the submission and smtps services of /usr/share/pecora/postfix/master.cf"));
    } else {
        out.push(Finding::ok(c, format!("{access} access-point listener(s) with SASL, TLS and the milter")));
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
        match smtpd.iter().find(|s| s.name == inject || s.name.ends_with(&format!("/{inject}")) || inject.ends_with(&s.name)) {
            Some(s) if pf.param(s, "smtpd_milters").trim().is_empty() => {
                out.push(Finding::ok(c, format!("injection listener {} runs no milter", s.name)))
            }
            Some(s) => out.push(Finding::fail(c, format!("injection listener {} runs milters: pecora's receipts would be wrapped again", s.name), format!("{postconf} -P {}/{}/smtpd_milters= {}/{}/receive_override_options=no_milters", s.name, s.kind, s.name, s.kind))),
            None => out.push(Finding::fail(c, format!("no master.cf smtpd service for the injection endpoint {}", config.inject.endpoint), "add the pecora-inject service of /usr/share/pecora/postfix/master.cf")),
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
            out.push(Finding::warn(c, format!("PEC domain {d} is not in virtual_mailbox_domains"), format!("{postconf} -e 'virtual_mailbox_domains = {d}'")));
        }
    }
    if !main("luser_relay").is_empty() {
        out.push(Finding::fail(c, format!("luser_relay = {}: a catch-all", main("luser_relay")), format!("{postconf} -e luser_relay=")));
    }
    out.extend(check_alias_maps(main("virtual_alias_maps"), &config.provider.domains));
    out
}

fn list_contains(list: &str, item: &str) -> bool {
    list.split([',', ' ']).any(|x| x.trim().eq_ignore_ascii_case(item))
}

/// Reads the source files of file-based alias maps and reports aliases, forwards or
/// catch-alls on PEC domains. Database-backed maps cannot be listed; they get a warning.
fn check_alias_maps(maps: &str, domains: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for map in maps.split([',', ' ']).map(str::trim).filter(|m| !m.is_empty()) {
        let Some((kind, path)) = map.split_once(':') else { continue };
        match kind {
            "hash" | "lmdb" | "btree" | "cdb" | "texthash" | "inline" => {
                let text = if kind == "inline" {
                    path.trim_matches(['{', '}']).replace(',', "\n")
                } else {
                    match std::fs::read_to_string(path) {
                        Ok(t) => t,
                        Err(e) => {
                            out.push(Finding::warn("postfix", format!("cannot read alias map {path}: {e}"), "check the file"));
                            continue;
                        }
                    }
                };
                for line in text.lines() {
                    let key = line.split_whitespace().next().unwrap_or("");
                    if key.starts_with('#') {
                        continue;
                    }
                    if let Some(d) = domains.iter().find(|d| key.to_ascii_lowercase().ends_with(&format!("@{}", d.to_ascii_lowercase())) || key.eq_ignore_ascii_case(d)) {
                        out.push(Finding::fail("postfix", format!("{map}: `{key}` redirects mail of PEC domain {d} (alias, forward or catch-all)"), format!("remove `{key}` from {path}")));
                    }
                }
            }
            _ => out.push(Finding::warn("postfix", format!("alias map {map} cannot be listed: make sure it has no entries for PEC domains"), "review the map by hand")),
        }
    }
    out
}

/// Postfix time units: s (default), m, h, d, w.
fn parse_postfix_time(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    Some(n * match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    })
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
            out.push(Finding::fail(c, format!("cannot load {}: {e}", config.keys.certificate.display()), "put the PEM certificate there"));
            return out;
        }
        (_, Err(e)) => {
            out.push(Finding::fail(c, format!("cannot load {}: {e}", config.keys.private_key.display()), "put the PEM private key there, mode 0600, owned by pecora"));
            return out;
        }
    };
    match cert.public_key() {
        Ok(pk) if pk.public_eq(&key) => out.push(Finding::ok(c, "signing key and certificate match")),
        _ => out.push(Finding::fail(c, "the signing key does not belong to the certificate", "install the matching pair")),
    }
    let Ok(now_t) = Asn1Time::from_unix(now) else { return out };
    if cert.not_before() > now_t {
        out.push(Finding::fail(c, format!("certificate not valid before {}", cert.not_before()), "check the clock or the certificate"));
    } else if cert.not_after() < now_t {
        out.push(Finding::fail(c, format!("certificate expired on {}", cert.not_after()), "renew it (pecora keys) and publish the new one in the index"));
    } else {
        let days = now_t.diff(cert.not_after()).map(|d| d.days).unwrap_or(0);
        if days < 60 {
            out.push(Finding::warn(c, format!("certificate expires in {days} days ({})", cert.not_after()), "renew it now: the new certificate must reach the index well before the old one expires"));
        } else {
            out.push(Finding::ok(c, format!("certificate valid until {} ({days} days)", cert.not_after())));
        }
    }
    let system = config.system_address();
    let san_ok = cert
        .subject_alt_names()
        .map(|names| names.iter().any(|n| n.email().is_some_and(|e| e.eq_ignore_ascii_case(&system))))
        .unwrap_or(false);
    if san_ok {
        out.push(Finding::ok(c, format!("certificate names the system address {system}")));
    } else {
        out.push(Finding::warn(c, format!("certificate subjectAltName does not list {system}"), "the system address must match the certificate (pec-format §7.1)"));
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
        Err(e) => Finding::fail("milter", format!("nothing answers on {spec}: {e}"), "start it: systemctl start pecora (Postfix tempfails PEC mail meanwhile)"),
    }
}

/// Clock synchronisation, from systemd-timesyncd or chrony where available.
pub fn check_clock() -> Finding {
    if let Ok(o) = Command::new("timedatectl").args(["show", "-p", "NTPSynchronized", "--value"]).output() {
        if o.status.success() {
            return match String::from_utf8_lossy(&o.stdout).trim() {
                "yes" => Finding::ok("clock", "system clock synchronised (timedatectl)"),
                _ => Finding::fail("clock", "system clock not synchronised: receipts carry legal time", "enable systemd-timesyncd or chrony"),
            };
        }
    }
    if let Ok(o) = Command::new("chronyc").arg("tracking").output() {
        if o.status.success() {
            let t = String::from_utf8_lossy(&o.stdout);
            return if t.contains("Leap status     : Normal") {
                Finding::ok("clock", "system clock synchronised (chrony)")
            } else {
                Finding::fail("clock", "chrony reports the clock is not synchronised", "check chronyc sources")
            };
        }
    }
    Finding::warn("clock", "cannot tell whether the clock is synchronised (no timedatectl or chronyc)", "install chrony or systemd-timesyncd")
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
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_cf_services_and_overrides() {
        let text = "smtp       inet  n       -       n       -       -       smtpd\n    -o milter_macro_daemon_name=PEC-RICEZIONE\n    -o smtpd_milters=inet:127.0.0.1:8890\n# comment\npickup     unix  n       -       n       60      1       pickup\n";
        let s = parse_master(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "smtp");
        assert_eq!(s[0].command, "smtpd");
        assert_eq!(s[0].overrides["milter_macro_daemon_name"], "PEC-RICEZIONE");
        assert_eq!(s[1].command, "pickup");
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
        let f = check_alias_maps(&format!("texthash:{}", p.display()), &["pec.alpha.test".into()]);
        assert_eq!(f.iter().filter(|f| f.level == Level::Fail).count(), 2, "{f:?}");
        let f = check_alias_maps("pgsql:/etc/postfix/x.cf", &["pec.alpha.test".into()]);
        assert_eq!(f[0].level, Level::Warn);
    }
}
