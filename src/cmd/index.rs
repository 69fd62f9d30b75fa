//! `pecora index update`: fetch the provider index (pec-format.md §6) from `index.url`,
//! check it the way the daemon loads it, swap it in atomically and tell the daemon.
//!
//! The index comes over HTTPS with client-certificate authentication (`index.client_certificate`,
//! `index.client_key`), or from a `file://` URL (an offline mirror, the tests). A signed `.p7m`
//! is verified against `index.signer_certificate`, exactly as at daemon start. Nothing is
//! replaced when anything fails: the download, the signature, the LDIF, the trust anchors, or
//! the sanity check that refuses an index listing less than half the providers of the current
//! one (`--force` overrides it). The new file is written next to `index.file`, synced and
//! renamed over it; the previous copy stays as `<index.file>.prev`.
//!
//! HTTP client: `ureq` with `native-tls`, which on Linux is the OpenSSL pecora already links
//! (no second TLS stack), system trust roots, a global timeout and a size cap.
//!
//! With the index, `update` writes the Postfix TLS policy map of decisions.md 22 next to it
//! (`<index.file>.tls_policy`, see [`tls_policy_map`]): every domain another provider
//! manages is reached over TLS only. It is a `texthash:` table, which Postfix reads as text
//! when a process starts: no `postmap` run (which would need Postfix's tools and rights
//! here), and the new map is in force as Postfix's smtp processes are recycled.
//!
//! Exit status: 0 updated or unchanged, 1 the fetched index was refused (does not load, or
//! loses too many providers), 2 usage or environment error (configuration, download, write,
//! signalling the daemon).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::config::{self, Config};
use crate::pec::incoming::ProviderIndex;

/// The largest index accepted (the national index is a few megabytes).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// The `index` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IndexCommand {
    /// Fetch the provider index from index.url, check it as the daemon loads it, replace
    /// index.file atomically (keeping <file>.prev) and tell the running daemon to reload.
    ///
    /// Exit status: 0 updated or unchanged, 1 the fetched index was refused (it does not
    /// load, or lists less than half the providers of the current one), 2 usage or
    /// environment error (configuration, download, write, signal).
    Update(UpdateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    /// Fetch from this URL instead of index.url: https://… or file:///path.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Replace the index even when the new one lists less than half the providers of the
    /// current one.
    #[arg(long)]
    pub force: bool,
    /// Send SIGHUP to the pid in this file (instead of systemd's MainPID of --unit).
    #[arg(long, value_name = "FILE", conflicts_with = "no_reload")]
    pub pid_file: Option<PathBuf>,
    /// The systemd unit whose main process is told to reload.
    #[arg(long, value_name = "UNIT", default_value = "pecora.service")]
    pub unit: String,
    /// Do not tell the running daemon (it loads the new index at its next start or SIGHUP).
    #[arg(long)]
    pub no_reload: bool,
    /// Give up the download after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
}

/// Runs an `index` subcommand.
pub fn run(cmd: IndexCommand, config_path: &Path) -> ExitCode {
    match cmd {
        IndexCommand::Update(args) => ExitCode::from(update(&args, config_path)),
    }
}

/// Loads the configuration for `index update`: only the `[index]` section must be valid, and
/// the current `index.file` may be missing (the first update creates it). Other problems
/// are printed as warnings.
fn load_config(path: &Path) -> Result<Config, u8> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!(
            "pecora: {}: cannot read the configuration file: {e}",
            path.display()
        );
        2
    })?;
    let config = Config::parse(path, &text).map_err(|e| {
        eprintln!("pecora: {e}");
        1
    })?;
    if let Err(errors) = config.validate(&text) {
        let mut fatal = false;
        for e in &errors {
            match e.key.as_deref() {
                Some("index.file") => {}
                Some(k) if k.starts_with("index.") => {
                    eprintln!("pecora: {e}");
                    fatal = true;
                }
                _ => eprintln!("pecora: warning (not needed by index update): {e}"),
            }
        }
        if fatal {
            return Err(1);
        }
    }
    Ok(config)
}

/// Loads an index the way the daemon does (`engine::index_with_trust`): a plain LDIF, or
/// a signed `.p7m` verified against `index.signer_certificate`, with the CA bundle and CRLs
/// it checks signers against.
pub fn load_index(data: &[u8], index: &config::Index) -> Result<ProviderIndex, String> {
    crate::runtime::engine::index_with_trust(
        data,
        &index.file,
        index.signer_certificate.as_deref(),
        index.ca_bundle.as_deref(),
        &index.crls,
    )
    .map_err(|e| e.to_string())
}

/// Downloads (or reads) the index at `url`.
pub fn fetch(url: &str, index: &config::Index, timeout: Duration) -> Result<Vec<u8>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(format!(
                "{url}: a file URL needs an absolute path (file:///path/index.ldif)"
            ));
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_INDEX_BYTES {
            return Err(format!(
                "{}: larger than {MAX_INDEX_BYTES} bytes",
                path.display()
            ));
        }
        return std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    }
    if !url.starts_with("https://") {
        return Err(format!(
            "{url}: the index is fetched over https:// (or file:// from a local mirror)"
        ));
    }
    use ureq::tls::{
        Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, TlsProvider,
    };
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier);
    match (&index.client_certificate, &index.client_key) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err("index.client_key is set but index.client_certificate is not".into());
        }
        (Some(cert_path), key_path) => {
            let cert_pem = std::fs::read(cert_path)
                .map_err(|e| format!("index.client_certificate {}: {e}", cert_path.display()))?;
            let key_path = key_path.as_ref().unwrap_or(cert_path);
            let key_pem = std::fs::read(key_path)
                .map_err(|e| format!("index.client_key {}: {e}", key_path.display()))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&cert_pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "index.client_certificate {}: no PEM certificate",
                    cert_path.display()
                ));
            }
            // Any key form OpenSSL reads (PKCS#1, PKCS#8, SEC1), handed over as PKCS#8,
            // the form native-tls takes.
            let pkcs8 = openssl::pkey::PKey::private_key_from_pem(&key_pem)
                .and_then(|k| k.private_key_to_pem_pkcs8())
                .map_err(|e| {
                    format!(
                        "index.client_key {}: not a PEM private key: {e}",
                        key_path.display()
                    )
                })?;
            let key = PrivateKey::from_pem(&pkcs8)
                .map_err(|e| format!("index.client_key {}: {e}", key_path.display()))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs, key)));
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .https_only(true)
        .max_redirects(5)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent(format!("pecora/{}", crate::VERSION))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status.as_u16() != 200 {
        return Err(format!("{url}: the server answered {status}"));
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_INDEX_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))
}

/// What `update` did, for the report and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The fetched index equals the current file (its modification time was refreshed).
    Unchanged { providers: usize },
    /// The new index was written; `previous` is the provider count of the old one (when it
    /// loaded), `kept` whether an old file was kept as `<file>.prev`.
    Replaced {
        providers: usize,
        previous: Option<usize>,
        kept: bool,
    },
}

/// Fetches, checks and installs the index; returns the exit status.
pub fn update(args: &UpdateArgs, config_path: &Path) -> u8 {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(url) = args.url.clone().or_else(|| config.index.url.clone()) else {
        eprintln!(
            "pecora: no index.url in {} (or --url): nowhere to fetch the index from",
            config_path.display()
        );
        return 2;
    };
    let data = match fetch(&url, &config.index, Duration::from_secs(args.timeout)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pecora: cannot fetch the provider index: {e}");
            eprintln!(
                "pecora: the current index {} is kept",
                config.index.file.display()
            );
            return 2;
        }
    };
    match install(&data, &config.index, args.force) {
        Ok(outcome) => {
            let file = config.index.file.display();
            // The policy map follows the index installed, changed or not (a first run after
            // an upgrade, or a new index.tls_ca_bundle, writes it too).
            match write_tls_policy(&config) {
                Ok((path, domains)) => println!(
                    "{}: TLS required for {domains} domains of other providers ({})",
                    path.display(),
                    tls_level(&config.index)
                ),
                Err(e) => {
                    eprintln!("pecora: cannot write the TLS policy map: {e}");
                    return 2;
                }
            }
            match outcome {
                Outcome::Unchanged { providers } => {
                    println!("{file}: unchanged ({providers} providers), fetched from {url}");
                    return 0;
                }
                Outcome::Replaced {
                    providers,
                    previous,
                    kept,
                } => {
                    let was = match (previous, kept) {
                        (Some(n), _) => format!("{n} before"),
                        (None, true) => "the previous file did not load".to_owned(),
                        (None, false) => "first copy".to_owned(),
                    };
                    let prev = if kept {
                        format!("; previous copy in {file}.prev")
                    } else {
                        String::new()
                    };
                    println!("{file}: updated from {url}: {providers} providers ({was}){prev}");
                }
            }
        }
        Err(InstallError::Refused(why)) => {
            eprintln!("pecora: the fetched index is refused: {why}");
            eprintln!(
                "pecora: the current index {} is kept",
                config.index.file.display()
            );
            return 1;
        }
        Err(InstallError::Io(why)) => {
            eprintln!("pecora: cannot install the new index: {why}");
            eprintln!(
                "pecora: the current index {} is kept",
                config.index.file.display()
            );
            return 2;
        }
    }
    if args.no_reload {
        println!(
            "not telling the daemon (--no-reload): it loads the new index at its next start or SIGHUP"
        );
        return 0;
    }
    match reload(args) {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err(e) => {
            eprintln!("pecora: the index was updated but the daemon was not told: {e}");
            2
        }
    }
}

/// Why `install` did not replace the index.
#[derive(Debug)]
pub enum InstallError {
    /// The new index is not acceptable (exit 1).
    Refused(String),
    /// The file system failed us (exit 2).
    Io(String),
}

/// Checks `data` as the daemon would load it and, when acceptable, replaces `index.file`
/// atomically (temporary file in the same directory, fsync, previous copy linked to
/// `<file>.prev`, rename, fsync of the directory).
pub fn install(data: &[u8], index: &config::Index, force: bool) -> Result<Outcome, InstallError> {
    let new = load_index(data, index).map_err(InstallError::Refused)?;
    let providers = new.providers.len();
    let file = &index.file;
    let current = std::fs::read(file).ok();
    if current.as_deref() == Some(data) {
        // Nothing new; the modification time tells `doctor` the index was checked today.
        std::fs::File::options()
            .write(true)
            .open(file)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| InstallError::Io(format!("{}: {e}", file.display())))?;
        return Ok(Outcome::Unchanged { providers });
    }
    let previous = current
        .as_deref()
        .and_then(|d| load_index(d, index).ok())
        .map(|i| i.providers.len());
    if let Some(old) = previous
        && providers * 2 < old
        && !force
    {
        return Err(InstallError::Refused(format!(
            "it lists {providers} providers, the current one {old}: refusing to drop more than half \
             (check the source; --force replaces it anyway)"
        )));
    }
    let kept = current.is_some();
    write_atomically(file, data).map_err(InstallError::Io)?;
    Ok(Outcome::Replaced {
        providers,
        previous,
        kept,
    })
}

/// Where `index update` writes the Postfix TLS policy map: `<index.file>.tls_policy`.
pub fn tls_policy_path(index_file: &Path) -> PathBuf {
    let mut p = index_file.as_os_str().to_owned();
    p.push(".tls_policy");
    PathBuf::from(p)
}

/// The policy level for other providers (decisions.md 22): `secure` (certificate verified)
/// with a CA bundle for their TLS certificates, `encrypt` without.
pub fn tls_level(index: &config::Index) -> &'static str {
    if index.tls_ca_bundle.is_some() { "secure" } else { "encrypt" }
}

/// The domains other providers manage: every `managedDomains` value of every entry that is
/// not ours (ours: named `provider.name`, or managing one of `provider.domains`), minus our
/// own domains; lowercase, sorted, once each. A value that is not a plain domain name
/// (it would break the table) is left out and returned apart.
pub fn other_providers_domains(index: &ProviderIndex, provider: &config::Provider) -> (Vec<String>, Vec<String>) {
    let ours = |d: &str| provider.domains.iter().any(|o| o.eq_ignore_ascii_case(d));
    let mut domains = std::collections::BTreeSet::new();
    let mut bad = Vec::new();
    for p in &index.providers {
        if p.name.eq_ignore_ascii_case(&provider.name) || p.domains.iter().any(|d| ours(d)) {
            continue;
        }
        for d in &p.domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let plain = !d.is_empty()
                && !d.starts_with('.')
                && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !plain {
                bad.push(d);
            } else if !ours(&d) {
                domains.insert(d);
            }
        }
    }
    (domains.into_iter().collect(), bad)
}

/// The text of the TLS policy map (smtp_tls_policy_maps, texthash): one line per domain of
/// another provider. The certificate must name the domain or a host under it
/// (`match=D:.D`, Postfix's nexthop:dot-nexthop spelled out, so it holds however the
/// domain is routed); `hostname` is accepted only when `mx_host` says so
/// (`index.tls_match_mx_host`), as an MX name from plain DNS would let a DNS forger choose
/// the name (postconf(5), smtp_tls_secure_cert_match).
pub fn tls_policy_map(domains: &[String], level: &str, mx_host: bool, source: &Path) -> String {
    let mut s = format!(
        "# Written by `pecora index update` from {} (decisions.md 22): mail to these PEC\n\
         # domains of other providers goes over TLS only, never in clear. Do not edit: the next\n\
         # update rewrites it. Postfix reads it as texthash: (no postmap).\n",
        source.display()
    );
    for d in domains {
        if level == "secure" && mx_host {
            s.push_str(&format!("{d} secure match=hostname:{d}:.{d}\n"));
        } else if level == "secure" {
            s.push_str(&format!("{d} secure match={d}:.{d}\n"));
        } else {
            s.push_str(&format!("{d} {level}\n"));
        }
    }
    s
}

/// The entries of a TLS policy map: domain (lowercase) and level, comments skipped.
pub fn parse_tls_policy(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_ascii_lowercase(), w.next().unwrap_or("").to_ascii_lowercase()))
        })
        .collect()
}

/// Writes the TLS policy map of the installed index; returns its path and how many domains
/// it lists.
pub fn write_tls_policy(config: &Config) -> Result<(PathBuf, usize), String> {
    let file = &config.index.file;
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let index = load_index(&data, &config.index)?;
    let (domains, bad) = other_providers_domains(&index, &config.provider);
    for d in &bad {
        eprintln!("pecora: warning: the index lists `{d}` as a managed domain: not a domain name, left out of the TLS policy map");
    }
    let path = tls_policy_path(file);
    let text = tls_policy_map(&domains, tls_level(&config.index), config.index.tls_match_mx_host, file);
    if std::fs::read(&path).ok().as_deref() != Some(text.as_bytes()) {
        write_file_atomically(&path, text.as_bytes(), false)?;
    }
    // Stamped now, with the clock the index was stamped with (a new file gets the kernel's
    // coarser one): doctor finds the map as new as the index it was made from.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, domains.len()))
}

fn write_atomically(file: &Path, data: &[u8]) -> Result<(), String> {
    write_file_atomically(file, data, true)
}

fn write_file_atomically(file: &Path, data: &[u8], keep_previous: bool) -> Result<(), String> {
    let shown = |e: std::io::Error| format!("{}: {e}", file.display());
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".pecora-index-")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(data).map_err(shown)?;
    // The daemon must read what we write, whoever runs this: keep the old file's mode and
    // owner, else 0644 (the index is public) and the directory's owner.
    let (mode, uid, gid) = match std::fs::metadata(file) {
        Ok(m) => (m.permissions().mode() & 0o7777, m.uid(), m.gid()),
        Err(_) => {
            let d = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            (0o644, d.uid(), d.gid())
        }
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(shown)?;
    if let Err(e) = std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid)) {
        // Only root may give a file away; anyone else keeps its own.
        if e.kind() != std::io::ErrorKind::PermissionDenied {
            return Err(shown(e));
        }
    }
    tmp.as_file().sync_all().map_err(shown)?;
    if keep_previous && file.exists() {
        let mut prev = file.as_os_str().to_owned();
        prev.push(".prev");
        let prev = PathBuf::from(prev);
        let _ = std::fs::remove_file(&prev);
        if std::fs::hard_link(file, &prev).is_err() {
            std::fs::copy(file, &prev)
                .map_err(|e| format!("cannot keep the previous copy {}: {e}", prev.display()))?;
        }
    }
    tmp.persist(file).map_err(|e| shown(e.error))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(())
}

/// Sends SIGHUP to the daemon: the pid in `--pid-file`, else systemd's MainPID of the unit.
fn reload(args: &UpdateArgs) -> Result<String, String> {
    let pid = match &args.pid_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            text.trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 1)
                .ok_or_else(|| format!("{}: no process id in it", f.display()))?
        }
        None => {
            let out = Command::new("systemctl")
                .args(["show", "--property=MainPID", "--value", &args.unit])
                .output();
            let pid = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .unwrap_or(0),
                _ => 0,
            };
            if pid == 0 {
                return Ok(format!(
                    "{} is not running under systemd: pecora loads the new index when it starts (or pass --pid-file)",
                    args.unit
                ));
            }
            pid
        }
    };
    let out = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .output()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kill -HUP {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!("pecora (pid {pid}) told to reload (SIGHUP)"))
}
