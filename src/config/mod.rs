//! The configuration model: parse (TOML into typed values), validate (facts about the host:
//! files, keys, zones) and reload (SIGHUP swaps the whole validated model atomically).
//!
//! Every error names the file, the line and the key, so a sysadmin can fix it at once.

mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use values::{ByteSize, Duration, OrdinaryMailPolicy, SocketSpec, postfix_list_entries, valid_syslog_name};

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/pecora/pecora.toml";

/// The whole configuration, as read from the file and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub provider: Provider,
    pub keys: Keys,
    pub index: Index,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub inject: Inject,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timers: Timers,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub antivirus: Antivirus,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub alerts: Alerts,
    #[serde(default)]
    pub certificates: Certificates,
    #[serde(default)]
    pub postfix: PostfixLog,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub metrics: Metrics,
    /// The file this configuration was read from (not a key).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub system_address: Option<String>,
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    #[serde(default)]
    pub host_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    #[serde(default)]
    pub chain: Vec<PathBuf>,
    /// Certificates this provider signed with before a renewal (or that other hosts of a
    /// shared registry sign with): checkpoints they signed still verify. Never used to sign.
    #[serde(default)]
    pub previous_certificates: Vec<PathBuf>,
    /// Signing keys this provider used before the current one: receipts they sealed into
    /// the outbox before the change are still sent. Never used to sign.
    #[serde(default)]
    pub previous_private_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub file: PathBuf,
    #[serde(default)]
    pub signer_certificate: Option<PathBuf>,
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// CA bundle that verifies other providers' MX certificates (decisions.md 22): when
    /// set, the TLS policy map `index update` writes asks for `secure`, else `encrypt`.
    #[serde(default)]
    pub tls_ca_bundle: Option<PathBuf>,
    /// With `secure`: also accept a certificate that names the MX host Postfix reached
    /// (`match=hostname:D:.D`), for providers that host their customers' domains on MX
    /// hosts of their own name. Off by default: an MX name from plain DNS lets a DNS forger
    /// choose the name the certificate must carry.
    #[serde(default)]
    pub tls_match_mx_host: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_milter")]
    pub milter: SocketSpec,
    #[serde(default = "default_delivery_spool")]
    pub delivery_spool: PathBuf,
}

impl Default for Listen {
    fn default() -> Self {
        Listen { milter: default_milter(), delivery_spool: default_delivery_spool() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    #[serde(default = "default_store_url")]
    pub url: String,
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Duration,
    #[serde(default = "default_checkpoint_dir")]
    pub checkpoint_dir: PathBuf,
    #[serde(default = "default_retention")]
    pub retention: Duration,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            url: default_store_url(),
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_dir: default_checkpoint_dir(),
            retention: default_retention(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    #[serde(default = "default_inject")]
    pub endpoint: SocketSpec,
    #[serde(default)]
    pub helo: Option<String>,
}

impl Default for Inject {
    fn default() -> Self {
        Inject { endpoint: default_inject(), helo: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_recipients")]
    pub max_recipients: u32,
    #[serde(default = "default_max_size_times_recipients")]
    pub max_size_times_recipients: ByteSize,
    #[serde(default = "default_spool_threshold")]
    pub spool_threshold: ByteSize,
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Most transactions at the MX (PEC-RICEZIONE) whose message passed `spool_threshold`
    /// in progress at once; one more is answered 451 4.3.2 (memory stays bounded).
    #[serde(default = "default_max_large_transactions")]
    pub max_large_transactions: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recipients: default_max_recipients(),
            max_size_times_recipients: default_max_size_times_recipients(),
            spool_threshold: default_spool_threshold(),
            spool_dir: default_spool_dir(),
            max_large_transactions: default_max_large_transactions(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timers {
    #[serde(default = "default_take_charge")]
    pub take_charge: Duration,
    #[serde(default = "default_delivery")]
    pub delivery: Duration,
    #[serde(default = "default_delivery_min")]
    pub delivery_min: Duration,
    #[serde(default = "default_timer_interval")]
    pub interval: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            take_charge: default_take_charge(),
            delivery: default_delivery(),
            delivery_min: default_delivery_min(),
            interval: default_timer_interval(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub ordinary_mail: OrdinaryMailPolicy,
    #[serde(default)]
    pub domains: BTreeMap<String, PolicyOverride>,
    #[serde(default)]
    pub mailboxes: BTreeMap<String, PolicyOverride>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    #[serde(default)]
    pub ordinary_mail: Option<OrdinaryMailPolicy>,
    /// With `ordinary_mail = "redirect"`: the ordinary address that receives the mail.
    #[serde(default)]
    pub redirect_to: Option<String>,
}

impl Policy {
    /// The ordinary-mail policy for one mailbox: its own override, else its domain's, else
    /// the global default. Addresses and domains compare case-insensitively.
    pub fn ordinary_mail_for(&self, address: &str) -> OrdinaryMailPolicy {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let find = |map: &BTreeMap<String, PolicyOverride>, key: &str| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .and_then(|(_, v)| v.ordinary_mail)
        };
        find(&self.mailboxes, &address)
            .or_else(|| find(&self.domains, domain))
            .unwrap_or(self.ordinary_mail)
    }

    /// Where ordinary mail for `address` goes under `redirect`: the mailbox's own
    /// `redirect_to`, else its domain's.
    pub fn redirect_for(&self, address: &str) -> Option<String> {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let find = |map: &BTreeMap<String, PolicyOverride>, key: &str| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .and_then(|(_, v)| v.redirect_to.clone())
        };
        find(&self.mailboxes, &address).or_else(|| find(&self.domains, domain))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Antivirus {
    /// Empty disables scanning.
    #[serde(default, deserialize_with = "values::deserialize_optional_socket")]
    pub clamd: Option<SocketSpec>,
}

/// Where pecora learns that Postfix queued a message it accepted (decisions.md 18).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostfixLog {
    /// Postfix's mail log (e.g. /var/log/mail.log, or main.cf maillog_file). When set, each
    /// acceptance receipt waits in the outbox until qmgr logs the message's queue id, and
    /// is cancelled (with a registry record) when Postfix logs that it refused it.
    #[serde(default)]
    pub maillog: Option<PathBuf>,
    /// A receipt whose queue id never shows up in the log in this time is cancelled and
    /// the fact recorded (default 1d, Postfix's queue lifetime for PEC).
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: Duration,
    /// The `syslog_name` of the Postfix instance whose mail pecora filters: only lines of
    /// its `cleanup` and `qmgr` (`<syslog_name>/qmgr[<pid>]:`) confirm or cancel a held
    /// receipt. Unset: what `postconf -xh syslog_name` says, else `postfix`.
    #[serde(default)]
    pub syslog_name: Option<String>,
    /// The instance's configuration directory, for `postconf -c` and `postqueue -c`.
    /// Unset: Postfix's default (or `MAIL_CONFIG` in pecora's environment).
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
}

impl Default for PostfixLog {
    fn default() -> Self {
        PostfixLog { maillog: None, confirm_timeout: default_confirm_timeout(), syslog_name: None, config_dir: None }
    }
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Login with a TLS client certificate at the access point (issue: digital certificates).
/// Postfix hands the milter only the subject and issuer CNs, and only for a certificate it
/// verified against `smtpd_tls_CAfile`, which must be a CA dedicated to the provider's users.
/// Off while `issuers` is empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificates {
    /// The CNs of the CAs whose certificates are logins.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// `"issuer CN/subject CN" = "mailbox"`, for certificates whose subject CN is not the
    /// mailbox address itself.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

impl Certificates {
    /// The mailbox a verified client certificate logs in as: the mapped one, else the
    /// subject CN when it is an address; `None` when the issuer is not a users' CA.
    pub fn identity(&self, issuer_cn: &str, subject_cn: &str) -> Option<String> {
        let (issuer, subject) = (issuer_cn.trim(), subject_cn.trim());
        if issuer.is_empty() || subject.is_empty() || !self.issuers.iter().any(|i| i.trim() == issuer) {
            return None;
        }
        let key = format!("{issuer}/{subject}");
        if let Some((_, m)) = self.map.iter().find(|(k, _)| k.as_str() == key) {
            return Some(m.to_ascii_lowercase());
        }
        match subject.rsplit_once('@') {
            Some((l, d)) if !l.is_empty() && is_domain(d) => Some(subject.to_ascii_lowercase()),
            _ => None,
        }
    }
}

/// New-PEC alerts: per mailbox, after each delivered PEC message, a short plain e-mail to
/// an ordinary address and/or an HTTP POST to a webhook (an SMS gateway, say). Neither
/// carries the message's content.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    #[serde(default)]
    pub mailboxes: BTreeMap<String, MailboxAlert>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxAlert {
    /// An ordinary address that gets a short notice (sender, subject, time).
    #[serde(default)]
    pub email: Option<String>,
    /// An http:// or https:// URL that gets a JSON POST with the same facts.
    #[serde(default)]
    pub webhook: Option<String>,
}

impl Alerts {
    /// The alert settings of one mailbox (addresses compare case-insensitively).
    pub fn for_mailbox(&self, address: &str) -> Option<&MailboxAlert> {
        self.mailboxes.iter().find(|(k, _)| k.eq_ignore_ascii_case(address)).map(|(_, v)| v)
    }
}

/// The delivery point: how pecora reads back a message Dovecot stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// Dovecot's doveadm-server listener reserved for pecora (`service pecora-doveadm {
    /// unix_listener ... { mode = 0600, user = pecora } }` in dovecot/pecora.conf.in):
    /// pecora asks it for stored messages itself, as its own unprivileged user. Empty:
    /// run the `doveadm` command instead.
    #[serde(default = "default_doveadm_socket", deserialize_with = "deserialize_optional_path")]
    pub doveadm_socket: Option<PathBuf>,
    /// The doveadm command line, before `-f pager fetch`, used when `doveadm_socket` is
    /// empty: e.g. `["doveadm"]` or `["doveadm", "-c", "/etc/dovecot/dovecot.conf"]`. It
    /// must run as root or the mail owner.
    #[serde(default = "default_doveadm")]
    pub doveadm: Vec<String>,
    /// How often the delivery spool is read when inotify cannot watch it (otherwise each
    /// file landing in `new/` wakes the worker at once).
    #[serde(default = "default_delivery_poll")]
    pub poll_interval: Duration,
    /// With inotify watching the spool, how often it is read all the same (a backstop).
    #[serde(default = "default_delivery_rescan")]
    pub rescan_interval: Duration,
    /// How often pecora looks for messages stored without a hook event (0s: never).
    #[serde(default = "default_reconcile")]
    pub reconcile_interval: Duration,
    /// How long after the presa in carico a missing delivery is looked for in Dovecot.
    #[serde(default = "default_reconcile")]
    pub reconcile_after: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            doveadm_socket: default_doveadm_socket(),
            doveadm: default_doveadm(),
            poll_interval: default_delivery_poll(),
            rescan_interval: default_delivery_rescan(),
            reconcile_interval: default_reconcile(),
            reconcile_after: default_reconcile(),
        }
    }
}

fn default_reconcile() -> Duration {
    Duration::from_secs(300)
}

fn default_doveadm_socket() -> Option<PathBuf> {
    Some("/run/dovecot/pecora-doveadm".into())
}

/// "" means "not set".
fn deserialize_optional_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(if s.trim().is_empty() { None } else { Some(PathBuf::from(s)) })
}

fn default_doveadm() -> Vec<String> {
    vec!["doveadm".into()]
}
fn default_delivery_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_delivery_rescan() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Text, level: default_log_level() }
    }
}

/// The optional Prometheus endpoint (`[metrics]`); absent `listen` = off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port of the HTTP endpoint, e.g. `127.0.0.1:9489`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

fn default_time_zone() -> String {
    "Europe/Rome".into()
}
fn default_milter() -> SocketSpec {
    SocketSpec::Unix("/var/spool/postfix/pecora/milter.sock".into())
}
fn default_delivery_spool() -> PathBuf {
    "/var/spool/pecora/delivered".into()
}
fn default_store_url() -> String {
    "sqlite:/var/lib/pecora/registry.db".into()
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(86_400)
}
fn default_checkpoint_dir() -> PathBuf {
    "/var/lib/pecora/checkpoints".into()
}
fn default_retention() -> Duration {
    // 30 months, counted generously as 913 days.
    Duration::from_secs(913 * 86_400)
}
fn default_inject() -> SocketSpec {
    SocketSpec::Unix("/var/spool/postfix/public/pecora-inject".into())
}
fn default_max_recipients() -> u32 {
    50
}
fn default_max_size_times_recipients() -> ByteSize {
    ByteSize(30_000_000)
}
fn default_spool_threshold() -> ByteSize {
    ByteSize(1_000_000)
}
fn default_max_large_transactions() -> u32 {
    8
}
fn default_spool_dir() -> PathBuf {
    "/var/spool/pecora/tmp".into()
}
fn default_take_charge() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_delivery() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_delivery_min() -> Duration {
    Duration::from_secs(22 * 3600)
}
fn default_timer_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_log_level() -> String {
    "info".into()
}

/// A configuration error, with where it is.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem sits on a line of the file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `keys.private_key`.
    pub key: Option<String>,
    pub message: String,
    /// The file could not be read at all (an environment error, not a misconfiguration).
    pub unreadable: bool,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates the file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_owned(),
                line: None,
                key: None,
                message: format!("cannot read the configuration file: {e}"),
                unreadable: true,
            }]
        })?;
        let config = Config::parse(path, &text).map_err(|e| vec![e])?;
        config.validate(&text)?;
        Ok(config)
    }

    /// Parses TOML text into the model. Unknown keys and badly typed values fail here, with
    /// the line taken from the parser's span.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        match toml::from_str::<Config>(text) {
            Ok(mut c) => {
                c.path = path.to_owned();
                Ok(c)
            }
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                let key = e.span().and_then(|s| key_at(text, s.start));
                Err(ConfigError {
                    file: path.to_owned(),
                    line,
                    key,
                    message: e.message().trim().to_string(),
                    unreadable: false,
                })
            }
        }
    }

    /// The system address: configured, or `posta-certificata@<first domain>`.
    pub fn system_address(&self) -> String {
        match &self.provider.system_address {
            Some(a) => a.clone(),
            None => format!(
                "posta-certificata@{}",
                self.provider.domains.first().map(String::as_str).unwrap_or("localhost")
            ),
        }
    }

    /// The provider's time zone (validated at load).
    pub fn time_zone(&self) -> chrono_tz::Tz {
        self.provider.time_zone.parse().unwrap_or(chrono_tz::Europe::Rome)
    }

    /// The host tag that keeps identifiers unique across hosts.
    pub fn host_id(&self) -> String {
        self.provider.host_id.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.split('.').next().unwrap_or("host").to_string())
                .unwrap_or_else(|| "host".into())
        })
    }

    /// Whether `domain` is one of this host's PEC domains.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.provider.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Checks facts the parser cannot: values in range, files present, key permissions.
    /// Returns every problem found, not just the first.
    pub fn validate(&self, text: &str) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key: &str, message: String| {
            errors.push(ConfigError {
                file: self.path.clone(),
                line: line_of_key(text, key),
                key: Some(key.to_string()),
                message,
                unreadable: false,
            })
        };

        if self.provider.name.trim().is_empty() {
            err("provider.name", "must not be empty".into());
        }
        if self.provider.domains.is_empty() {
            err("provider.domains", "list at least one PEC mail domain".into());
        }
        for d in &self.provider.domains {
            if !is_domain(d) {
                err("provider.domains", format!("`{d}` is not a valid domain name"));
            }
        }
        if let Some(a) = &self.provider.system_address {
            match a.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && is_domain(domain) => {
                    if !self.is_local_domain(domain) {
                        err(
                            "provider.system_address",
                            format!("`{a}` is not in one of provider.domains"),
                        );
                    }
                }
                _ => err("provider.system_address", format!("`{a}` is not a mail address")),
            }
        }
        if self.provider.time_zone.parse::<chrono_tz::Tz>().is_err() {
            err(
                "provider.time_zone",
                format!("unknown time zone `{}` (use an IANA name such as Europe/Rome)", self.provider.time_zone),
            );
        }
        if let Some(h) = &self.provider.host_id {
            if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                err("provider.host_id", "use letters, digits and '-' only".into());
            }
        }

        check_readable(&self.keys.certificate, "keys.certificate", &mut err);
        check_private_key(&self.keys.private_key, "keys.private_key", &mut err);
        for k in &self.keys.previous_private_keys {
            check_private_key(k, "keys.previous_private_keys", &mut err);
        }
        for c in &self.keys.chain {
            check_readable(c, "keys.chain", &mut err);
        }
        for c in &self.keys.previous_certificates {
            check_readable(c, "keys.previous_certificates", &mut err);
        }
        for (section, map) in [("policy.mailboxes", &self.policy.mailboxes), ("policy.domains", &self.policy.domains)] {
            for (name, o) in map {
                let key = format!("{section}.{name}");
                match (&o.ordinary_mail, &o.redirect_to) {
                    (Some(OrdinaryMailPolicy::Redirect), None) if self.policy.redirect_for(name).is_none() => {
                        err(&key, "ordinary_mail = \"redirect\" needs redirect_to = \"an ordinary address\"".into())
                    }
                    (_, Some(to)) => match to.rsplit_once('@') {
                        Some((l, d)) if !l.is_empty() && is_domain(d) => {
                            if self.is_local_domain(d) {
                                err(&key, format!("redirect_to `{to}` is on a PEC domain: ordinary mail must never become PEC (decisions.md 10)"));
                            }
                        }
                        _ => err(&key, format!("redirect_to `{to}` is not a mail address")),
                    },
                    _ => {}
                }
            }
        }
        if self.policy.ordinary_mail == OrdinaryMailPolicy::Redirect {
            err("policy.ordinary_mail", "\"redirect\" is set per mailbox or domain, with its own redirect_to".into());
        }
        if let Some(d) = &self.postfix.config_dir {
            if !d.join("main.cf").is_file() {
                err("postfix.config_dir", format!("{} holds no main.cf: not a Postfix configuration directory", d.display()));
            }
        }
        if let Some(n) = &self.postfix.syslog_name {
            if !valid_syslog_name(n) {
                err("postfix.syslog_name", format!("`{n}` is not a syslog name (letters, digits, '-', '_', '.' and '/', no spaces)"));
            }
        }
        for (k, m) in &self.certificates.map {
            let key = format!("certificates.map.{k}");
            match k.split_once('/') {
                Some((i, _)) if self.certificates.issuers.iter().any(|x| x.trim() == i.trim()) => {}
                Some(_) => err(&key, "the issuer CN before '/' is not in certificates.issuers".into()),
                None => err(&key, "write the key as \"issuer CN/subject CN\"".into()),
            }
            match m.rsplit_once('@') {
                Some((l, d)) if !l.is_empty() && self.is_local_domain(d) => {}
                _ => err(&key, format!("`{m}` is not a mailbox of provider.domains")),
            }
        }
        for (mailbox, a) in &self.alerts.mailboxes {
            let key = format!("alerts.mailboxes.{mailbox}");
            if let Some(e) = &a.email {
                match e.rsplit_once('@') {
                    Some((l, d)) if !l.is_empty() && is_domain(d) => {
                        if self.is_local_domain(d) {
                            err(&key, format!("email `{e}` is on a PEC domain: alerts go to an ordinary address"));
                        }
                    }
                    _ => err(&key, format!("email `{e}` is not a mail address")),
                }
            }
            if let Some(w) = &a.webhook {
                if !(w.starts_with("http://") || w.starts_with("https://")) {
                    err(&key, format!("webhook `{w}` must be an http:// or https:// URL"));
                }
            }
        }
        if let Some(p) = &self.delivery.doveadm_socket
            && !p.is_absolute()
        {
            err("delivery.doveadm_socket", format!("`{}`: give an absolute path (or \"\" to run the doveadm command)", p.display()));
        }
        if self.delivery.doveadm.first().is_none_or(|c| c.trim().is_empty()) {
            err("delivery.doveadm", "name the doveadm command, e.g. [\"doveadm\"]".into());
        }
        if self.delivery.poll_interval.std().is_zero() {
            err("delivery.poll_interval", "must be longer than zero".into());
        }
        if self.delivery.rescan_interval.std().is_zero() {
            err("delivery.rescan_interval", "must be longer than zero".into());
        }
        check_readable(&self.index.file, "index.file", &mut err);
        let is_p7m = self
            .index
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("p7m"));
        if is_p7m && self.index.signer_certificate.is_none() {
            err(
                "index.signer_certificate",
                "index.file is a signed .p7m: name the certificate that signs it".into(),
            );
        }
        if let Some(p) = &self.index.signer_certificate {
            check_readable(p, "index.signer_certificate", &mut err);
        }
        if let Some(p) = &self.index.ca_bundle {
            check_readable(p, "index.ca_bundle", &mut err);
        }
        if let Some(p) = &self.index.tls_ca_bundle {
            check_readable(p, "index.tls_ca_bundle", &mut err);
        }
        for p in &self.index.crls {
            check_readable(p, "index.crls", &mut err);
        }

        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            err(
                "store.url",
                format!("`{}`: use sqlite:/path/file.db or postgres://user@host/db", self.store.url),
            );
        }
        if self.store.checkpoint_interval.is_zero() {
            err("store.checkpoint_interval", "must be longer than zero".into());
        }

        if self.limits.max_large_transactions == 0 {
            err("limits.max_large_transactions", "at least 1: with 0 no message larger than spool_threshold is ever received".into());
        }
        if self.limits.max_recipients < 50 {
            err("limits.max_recipients", "the law requires at least 50 recipients".into());
        }
        if self.limits.max_size_times_recipients.0 < 30_000_000 {
            err(
                "limits.max_size_times_recipients",
                "the law requires at least 30MB (size x recipients)".into(),
            );
        }

        if self.timers.delivery_min > self.timers.delivery {
            err("timers.delivery_min", "must not exceed timers.delivery".into());
        }
        if self.timers.take_charge > self.timers.delivery {
            err("timers.take_charge", "must not exceed timers.delivery".into());
        }
        if self.timers.interval.is_zero() {
            err("timers.interval", "must be longer than zero".into());
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            err("log.level", format!("invalid filter: {e}"));
        }
        if self.metrics.listen.is_some_and(|a| a.port() == 0) {
            err("metrics.listen", "name a port, e.g. 127.0.0.1:9489".into());
        }

        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn check_readable(path: &Path, key: &str, err: &mut impl FnMut(&str, String)) {
    if let Err(e) = std::fs::File::open(path) {
        err(key, format!("cannot read {}: {e}", path.display()));
    }
}

fn check_private_key(path: &Path, key: &str, err: &mut impl FnMut(&str, String)) {
    match std::fs::metadata(path) {
        Err(e) => err(key, format!("cannot read {}: {e}", path.display())),
        Ok(m) => {
            if m.permissions().mode() & 0o007 != 0 {
                err(
                    key,
                    format!(
                        "{} is accessible to other users (mode {:o}); run: chmod 600 {}",
                        path.display(),
                        m.permissions().mode() & 0o777,
                        path.display()
                    ),
                );
            } else if let Err(e) = std::fs::File::open(path) {
                err(key, format!("cannot read {}: {e}", path.display()));
            }
        }
    }
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Dotted path of the key whose entry covers `offset`, found by walking the document.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text.to_string()).ok()?;
    fn walk(table: &dyn toml_edit::TableLike, prefix: &str, offset: usize) -> Option<String> {
        for (k, item) in table.iter() {
            let path = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
            let key_span = table.key(k).and_then(|k| k.span());
            if key_span.as_ref().is_some_and(|s| s.contains(&offset)) {
                return Some(path);
            }
            if let Some(t) = item.as_table_like() {
                if let Some(p) = walk(t, &path, offset) {
                    return Some(p);
                }
            }
            if item.span().is_some_and(|s| s.contains(&offset)) {
                return Some(path);
            }
        }
        None
    }
    walk(doc.as_table(), "", offset)
}

/// 1-based line of a dotted key in the document, if it is written there.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml_edit::Document::parse(text.to_string()).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            let span = table.key(part).and_then(|k| k.span()).or_else(|| table.get(part)?.span())?;
            return Some(line_of(text, span.start));
        }
        table = table.get(part)?.as_table_like()?;
    }
    None
}

#[cfg(test)]
mod tests;
