//! `pecora keys`: the provider signing key and certificate.
//!
//! `generate` creates a new RSA signing key and a certificate signing request carrying
//! the subject and extensions of the PEC certificate profile (pec-format §7.2), ready for
//! the certification authority (AgID in production). `show` inspects the certificate in
//! use: identity, SHA-1 fingerprint in the form the provider index stores it
//! (`providerCertificateHash`), conformance to the profile, and how long it has left. It
//! exits 1 when the certificate is expired or inside the warning window, so that cron can
//! run it and mail whatever it prints.
//!
//! The clap types ([`KeysCommand`]) are wired into the binary as `pecora keys`; [`run`]
//! does the work.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use foreign_types::ForeignTypeRef;
use openssl::asn1::{Asn1ObjectRef, Asn1Time};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder, X509NameRef, X509Ref, X509Req, X509ReqBuilder};

/// Local part of the system address every PEC message is sent from (pec-format §7.1).
pub const SYSTEM_LOCAL_PART: &str = "posta-certificata";
/// Common name prefix of provider certificates (pec-format §7.2 and current practice).
pub const COMMON_NAME_PREFIX: &str = "Posta Certificata";
/// Upper bound of X.520 `commonName` and `organizationName` (RFC 5280 ub-common-name,
/// ub-organization-name).
const NAME_MAX: usize = 64;
/// File names `generate` writes inside `--out`.
pub const KEY_FILE: &str = "signing.key";
/// See [`KEY_FILE`].
pub const CSR_FILE: &str = "signing.csr";

/// `pecora keys`: the provider signing key and certificate.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a signing key and a certificate signing request (CSR) with the PEC profile.
    ///
    /// Writes DIR/signing.key (mode 0600; never overwritten) and DIR/signing.csr with
    /// subject C=IT, O=NAME, CN=Posta Certificata NAME, subjectAltName
    /// posta-certificata@DOMAIN, KeyUsage critical digitalSignature, extended key usage
    /// emailProtection and a subject key identifier (pec-format §7.2). Send the CSR to the
    /// certification authority; put the certificate where `keys.certificate` says.
    Generate(GenerateArgs),
    /// Show the signing certificate, check it against the PEC profile, warn before it expires.
    ///
    /// Prints subject, issuer, serial, validity, the SHA-1 fingerprint as the provider
    /// index stores it (providerCertificateHash) and the profile checks of pec-format §7.2.
    /// Exit status 0 when valid for more than --warn-days days and conformant, 1 when
    /// expired, not yet valid, expiring inside the window or not conformant, 2 when the
    /// certificate or configuration cannot be read. Run it daily from cron.
    Show(ShowArgs),
    /// Create a CA dedicated to the provider's users' client certificates (login with a
    /// digital certificate; for testing and small providers).
    ///
    /// Writes DIR/users-ca.pem and DIR/users-ca.key (mode 0600). Give users-ca.pem to Postfix
    /// as smtpd_tls_CAfile on submission/smtps and to Dovecot as ssl_ca, and list its CN in
    /// pecora.toml certificates.issuers.
    UserCa(crate::cmd::usercert::UserCaArgs),
    /// Issue a user's client certificate from the users' CA: subject CN and rfc822Name are
    /// the mailbox, extended key usage clientAuth.
    ///
    /// Writes DIR/MAILBOX.pem and DIR/MAILBOX.key (mode 0600); hand both to the holder
    /// (e.g. as PKCS#12: openssl pkcs12 -export -in MAILBOX.pem -inkey MAILBOX.key).
    UserCert(crate::cmd::usercert::UserCertArgs),
}

/// Options of `pecora keys generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Directory to write signing.key and signing.csr into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Provider name exactly as in the provider index (providerName); goes into O and CN.
    #[arg(long, value_name = "NAME")]
    pub provider_name: String,
    /// PEC domain of the system address posta-certificata@DOMAIN (subjectAltName).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: String,
    /// RSA key size in bits.
    #[arg(long, value_name = "BITS", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(2048..=8192))]
    pub bits: u32,
}

/// Options of `pecora keys show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Certificate to inspect (PEM or DER); default: `keys.certificate` of the configuration.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Warn (and exit 1) when the certificate expires within this many days.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub warn_days: u32,
}

/// What can go wrong in `pecora keys`.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// `generate` never replaces an existing key or request.
    #[error("{} already exists: move it away first (pecora never overwrites a key)", .0.display())]
    Exists(PathBuf),
    /// The provider name cannot go into the certificate subject.
    #[error("provider name {0:?}: {1}")]
    ProviderName(String, &'static str),
    /// The domain is not a valid DNS domain name.
    #[error("domain {0:?} is not a valid domain name")]
    Domain(String),
    /// The file is neither a PEM nor a DER X.509 certificate.
    #[error("{}: not a PEM or DER X.509 certificate ({source})", path.display())]
    Certificate { path: PathBuf, source: ErrorStack },
    /// The configuration file is unreadable or lacks what is needed.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// OpenSSL failed while building the key or the request.
    #[error("OpenSSL: {0}")]
    Openssl(#[from] ErrorStack),
}

impl KeysError {
    fn io(path: &Path, source: io::Error) -> KeysError {
        KeysError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Runs `pecora keys`. `config_path` is the `--config` file: `show` takes the certificate
/// path, provider name and system address from it (loosely: only those keys are read, so
/// a half-configured host can still inspect its certificate).
pub fn run(cmd: KeysCommand, config_path: &Path) -> ExitCode {
    match cmd {
        KeysCommand::Generate(args) => {
            match generate(&args.out, &args.provider_name, &args.domain, args.bits) {
                Ok(files) => {
                    println!("wrote {} (mode 0600)", files.key.display());
                    println!("wrote {}", files.csr.display());
                    println!(
                        "next: send {} to the certification authority; install the certificate \
                         as keys.certificate and the key as keys.private_key, owned by the \
                         pecora user (chown pecora: {}); publish the certificate in the \
                         provider index well before the old one expires",
                        files.csr.display(),
                        files.key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pecora: {e}");
                    ExitCode::from(2)
                }
            }
        }
        KeysCommand::UserCa(a) => match crate::cmd::usercert::run_ca(&a) {
            Ok((c, k)) => {
                println!("wrote {} and {} (mode 0600)", c.display(), k.display());
                println!("next: list \"{}\" in pecora.toml certificates.issuers", a.name);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pecora: {e}");
                ExitCode::from(2)
            }
        },
        KeysCommand::UserCert(a) => match crate::cmd::usercert::run_cert(&a) {
            Ok((c, k)) => {
                println!("wrote {} and {} (mode 0600)", c.display(), k.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pecora: {e}");
                ExitCode::from(2)
            }
        },
        KeysCommand::Show(args) => {
            let now = chrono::Utc::now().timestamp();
            let stdout = io::stdout();
            match show(&args, config_path, now, &mut stdout.lock()) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("pecora: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------
// generate

/// Paths written by [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFiles {
    /// The private key, PKCS#8 PEM, mode 0600.
    pub key: PathBuf,
    /// The certificate signing request, PEM.
    pub csr: PathBuf,
}

/// Generates an RSA key of `bits` bits and a CSR for `provider_name` / `domain` in `out`.
/// Refuses to replace existing files.
pub fn generate(
    out: &Path,
    provider_name: &str,
    domain: &str,
    bits: u32,
) -> Result<GeneratedFiles, KeysError> {
    validate_provider_name(provider_name)?;
    let domain = validate_domain(domain)?;
    let key_path = out.join(KEY_FILE);
    let csr_path = out.join(CSR_FILE);
    for p in [&key_path, &csr_path] {
        if p.symlink_metadata().is_ok() {
            return Err(KeysError::Exists(p.clone()));
        }
    }
    let key = PKey::from_rsa(Rsa::generate(bits)?)?;
    let req = build_csr(&key, provider_name, &domain)?;
    let key_pem = key.private_key_to_pem_pkcs8()?;
    let csr_pem = req.to_pem()?;

    fs::create_dir_all(out).map_err(|e| KeysError::io(out, e))?;
    write_new(&key_path, &key_pem, 0o600)?;
    if let Err(e) = write_new(&csr_path, &csr_pem, 0o644) {
        // Leave no orphan key behind: nobody has seen it yet.
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(GeneratedFiles {
        key: key_path,
        csr: csr_path,
    })
}

/// Writes a file that must not exist yet, with `mode` regardless of the umask.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), KeysError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeysError::Exists(path.to_owned()),
            _ => KeysError::io(path, e),
        })?;
    // The umask can only remove bits; set the mode explicitly so 0644 stays 0644.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| KeysError::io(path, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| KeysError::io(path, e))
}

fn validate_provider_name(name: &str) -> Result<(), KeysError> {
    let err = |why| Err(KeysError::ProviderName(name.to_owned(), why));
    if name.trim().is_empty() {
        return err("empty");
    }
    if name.trim() != name {
        return err("leading or trailing spaces (it must match providerName exactly)");
    }
    if name.chars().any(char::is_control) {
        return err("control characters");
    }
    if name.chars().count() > NAME_MAX {
        return err("longer than 64 characters, the limit of an X.509 organizationName");
    }
    Ok(())
}

/// Checks a DNS domain (letters, digits, hyphens; at least two labels) and lower-cases it.
fn validate_domain(domain: &str) -> Result<String, KeysError> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.len() > 253 || d.split('.').count() < 2 || !d.split('.').all(label_ok) {
        return Err(KeysError::Domain(domain.to_owned()));
    }
    Ok(d)
}

/// The subject common name: `Posta Certificata <provider>`, or just `Posta Certificata`
/// when that would exceed 64 characters (the provider name is in O anyway).
pub fn common_name(provider_name: &str) -> String {
    let cn = format!("{COMMON_NAME_PREFIX} {provider_name}");
    if cn.chars().count() <= NAME_MAX {
        cn
    } else {
        COMMON_NAME_PREFIX.to_owned()
    }
}

/// Builds and signs (SHA-256) the certificate request of the PEC profile for `key`.
pub fn build_csr(
    key: &PKey<Private>,
    provider_name: &str,
    domain: &str,
) -> Result<X509Req, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COUNTRYNAME, "IT")?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, provider_name)?;
    name.append_entry_by_nid(Nid::COMMONNAME, &common_name(provider_name))?;
    let name = name.build();

    let mut req = X509ReqBuilder::new()?;
    req.set_version(0)?;
    req.set_subject_name(&name)?;
    req.set_pubkey(key)?;
    let mut exts = Stack::new()?;
    exts.push(KeyUsage::new().critical().digital_signature().build()?)?;
    exts.push(ExtendedKeyUsage::new().email_protection().build()?)?;
    // The CA computes the final SKI; requesting it documents the key identifier to expect.
    exts.push(SubjectKeyIdentifier::new().build(&req.x509v3_context(None))?)?;
    exts.push(
        SubjectAlternativeName::new()
            .email(&format!("{SYSTEM_LOCAL_PART}@{domain}"))
            .build(&req.x509v3_context(None))?,
    )?;
    req.add_extensions(&exts)?;
    req.sign(key, MessageDigest::sha256())?;
    Ok(req.build())
}

// ------------------------------------------------------------------------------------
// show

/// What the configuration says the certificate must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    /// `keys.certificate`.
    pub certificate: Option<PathBuf>,
    /// `provider.name`: must be in the subject CN or O.
    pub provider_name: Option<String>,
    /// `provider.system_address`, or `posta-certificata@<first domain>`: must be in the SAN.
    pub system_address: Option<String>,
}

/// Reads only the keys `show` needs from the configuration file, without the full
/// validation of `pecora check` (which would refuse a host whose key files are missing).
pub fn read_expectations(config_path: &Path) -> Result<Expectations, KeysError> {
    let cfg_err = |message: String| KeysError::Config {
        path: config_path.to_owned(),
        message,
    };
    let text = fs::read_to_string(config_path).map_err(|e| KeysError::io(config_path, e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| cfg_err(e.message().to_owned()))?;
    let section = |s: &str| table.get(s).and_then(toml::Value::as_table);
    let string = |s: &str, k: &str| {
        section(s)
            .and_then(|t| t.get(k))
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
    };
    let first_domain = section("provider")
        .and_then(|t| t.get("domains"))
        .and_then(toml::Value::as_array)
        .and_then(|a| a.first())
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    Ok(Expectations {
        certificate: string("keys", "certificate").map(PathBuf::from),
        provider_name: string("provider", "name"),
        system_address: string("provider", "system_address")
            .or_else(|| first_domain.map(|d| format!("{SYSTEM_LOCAL_PART}@{d}"))),
    })
}

/// Loads a PEM or DER certificate.
pub fn load_certificate(path: &Path) -> Result<X509, KeysError> {
    let bytes = fs::read(path).map_err(|e| KeysError::io(path, e))?;
    X509::from_pem(&bytes)
        .or_else(|pem_err| X509::from_der(&bytes).map_err(|_| pem_err))
        .map_err(|source| KeysError::Certificate {
            path: path.to_owned(),
            source,
        })
}

/// `pecora keys show`, writing the report to `out`. Returns the exit status (0 or 1).
pub fn show(
    args: &ShowArgs,
    config_path: &Path,
    now: i64,
    out: &mut dyn Write,
) -> Result<u8, KeysError> {
    let expect = match (&args.cert, read_expectations(config_path)) {
        (_, Ok(e)) => e,
        // An explicit certificate can be inspected without any configuration.
        (Some(_), Err(_)) => Expectations::default(),
        (None, Err(e)) => return Err(e),
    };
    let path = match (&args.cert, &expect.certificate) {
        (Some(p), _) | (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(KeysError::Config {
                path: config_path.to_owned(),
                message: "no keys.certificate; pass --cert FILE".into(),
            });
        }
    };
    let cert = load_certificate(&path)?;
    let report = inspect(&cert, now, args.warn_days, &expect)?;
    let text = report.render(&path);
    out.write_all(text.as_bytes())
        .map_err(|e| KeysError::io(Path::new("<stdout>"), e))?;
    Ok(report.exit_status())
}

/// Severity of one profile note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteLevel {
    /// Conformant.
    Ok,
    /// A SHOULD of the profile, or weak cryptography.
    Warn,
    /// A MUST of the profile (pec-format §7.1–7.2) is violated.
    Fail,
}

/// One conformance check of the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileNote {
    /// How serious.
    pub level: NoteLevel,
    /// What was found.
    pub text: String,
}

/// Where the certificate stands in its validity period at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// notBefore is in the future.
    NotYetValid,
    /// Valid, with more than the warning window left.
    Valid { days_left: i32 },
    /// Valid, but expiring within the warning window.
    ExpiringSoon { days_left: i32 },
    /// notAfter is in the past.
    Expired,
}

/// One extension as found in the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionInfo {
    /// Its NID (`Nid::UNDEF` for unknown OIDs).
    pub nid: Nid,
    /// Short name or dotted OID.
    pub name: String,
    /// The critical flag.
    pub critical: bool,
}

/// Everything `show` prints about a certificate.
#[derive(Debug, Clone)]
pub struct CertReport {
    pub subject: String,
    pub issuer: String,
    /// Serial number, upper-case hex.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// SHA-1 of the DER certificate, upper-case hex without separators: the
    /// `providerCertificateHash` of the provider index.
    pub sha1: String,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256: String,
    /// Public key description, e.g. `RSA 2048 bits`.
    pub key: String,
    /// Signature algorithm long name.
    pub signature_algorithm: String,
    /// rfc822Name entries of the subjectAltName.
    pub emails: Vec<String>,
    /// Key usage bits set (empty when the extension is absent).
    pub key_usage: Vec<&'static str>,
    pub extensions: Vec<ExtensionInfo>,
    pub validity: Validity,
    pub warn_days: u32,
    pub notes: Vec<ProfileNote>,
}

impl CertReport {
    /// 1 when expired, not yet valid, inside the warning window or not conformant; else 0.
    pub fn exit_status(&self) -> u8 {
        let time_bad = !matches!(self.validity, Validity::Valid { .. });
        let profile_bad = self.notes.iter().any(|n| n.level == NoteLevel::Fail);
        u8::from(time_bad || profile_bad)
    }

    /// The human-readable report.
    pub fn render(&self, path: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Certificate   {}", path.display());
        let _ = writeln!(s, "Subject       {}", self.subject);
        let _ = writeln!(s, "Issuer        {}", self.issuer);
        let _ = writeln!(s, "Serial        {}", self.serial);
        let _ = writeln!(s, "Not before    {}", self.not_before);
        let left = match self.validity {
            Validity::Valid { days_left } | Validity::ExpiringSoon { days_left } => {
                format!(" ({days_left} days left)")
            }
            Validity::Expired => " (EXPIRED)".into(),
            Validity::NotYetValid => String::new(),
        };
        let _ = writeln!(s, "Not after     {}{left}", self.not_after);
        let _ = writeln!(
            s,
            "SHA-1         {}  (providerCertificateHash in the index)",
            self.sha1
        );
        let _ = writeln!(s, "SHA-256       {}", self.sha256);
        let _ = writeln!(
            s,
            "Key           {}, signed with {}",
            self.key, self.signature_algorithm
        );
        let emails = if self.emails.is_empty() {
            "(none)".into()
        } else {
            self.emails.join(", ")
        };
        let _ = writeln!(s, "Addresses     {emails}");
        let ku = if self.key_usage.is_empty() {
            "(absent)".into()
        } else {
            self.key_usage.join(", ")
        };
        let _ = writeln!(s, "Key usage     {ku}");
        let exts: Vec<String> = self
            .extensions
            .iter()
            .map(|e| {
                if e.critical {
                    format!("{} (critical)", e.name)
                } else {
                    e.name.clone()
                }
            })
            .collect();
        let _ = writeln!(s, "Extensions    {}", exts.join(", "));
        let _ = writeln!(s, "Profile (pec-format §7.2):");
        for n in &self.notes {
            let tag = match n.level {
                NoteLevel::Ok => "ok  ",
                NoteLevel::Warn => "WARN",
                NoteLevel::Fail => "FAIL",
            };
            let _ = writeln!(s, "  [{tag}] {}", n.text);
        }
        match self.validity {
            Validity::Valid { .. } => {}
            Validity::ExpiringSoon { days_left } => {
                let _ = writeln!(
                    s,
                    "WARNING: the certificate expires in {days_left} days ({}), within the \
                     {}-day window: renew it now (pecora keys generate) and publish the new \
                     one in the provider index well before this one expires",
                    self.not_after, self.warn_days
                );
            }
            Validity::Expired => {
                let _ = writeln!(
                    s,
                    "WARNING: the certificate EXPIRED on {}: every message signed with it is \
                     rejected by other providers; install the renewed certificate now",
                    self.not_after
                );
            }
            Validity::NotYetValid => {
                let _ = writeln!(
                    s,
                    "WARNING: the certificate is not valid before {}: check the clock or wait",
                    self.not_before
                );
            }
        }
        s
    }
}

/// Key usage bits as OpenSSL reports them (`X509_get_key_usage`), with their names.
const KEY_USAGE_BITS: [(u32, &str); 9] = [
    (0x0080, "digitalSignature"),
    (0x0040, "nonRepudiation"),
    (0x0020, "keyEncipherment"),
    (0x0010, "dataEncipherment"),
    (0x0008, "keyAgreement"),
    (0x0004, "keyCertSign"),
    (0x0002, "cRLSign"),
    (0x0001, "encipherOnly"),
    (0x8000, "decipherOnly"),
];

/// Lists the extensions of `cert` with their critical flags.
pub fn extensions(cert: &X509Ref) -> Vec<ExtensionInfo> {
    let mut out = Vec::new();
    // SAFETY: `cert` is a valid X509 for the whole call; X509_get_ext returns an internal
    // pointer (not owned) valid while `cert` lives, and the ASN1_OBJECT is borrowed from it.
    unsafe {
        let n = openssl_sys::X509_get_ext_count(cert.as_ptr());
        for i in 0..n {
            let ext = openssl_sys::X509_get_ext(cert.as_ptr(), i);
            if ext.is_null() {
                continue;
            }
            let obj = openssl_sys::X509_EXTENSION_get_object(ext);
            if obj.is_null() {
                continue;
            }
            let obj = Asn1ObjectRef::from_ptr(obj);
            out.push(ExtensionInfo {
                nid: obj.nid(),
                name: object_name(obj),
                critical: openssl_sys::X509_EXTENSION_get_critical(ext) > 0,
            });
        }
    }
    out
}

/// Key usage names, or empty when the extension is absent.
fn key_usage(cert: &X509Ref, exts: &[ExtensionInfo]) -> Vec<&'static str> {
    if !exts.iter().any(|e| e.nid == Nid::KEY_USAGE) {
        return Vec::new();
    }
    // SAFETY: `cert` is valid; the call only fills OpenSSL's cached extension flags.
    let bits = unsafe { openssl_sys::X509_get_key_usage(cert.as_ptr()) };
    KEY_USAGE_BITS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|&(_, n)| n)
        .collect()
}

/// Short name of a known OID (`CN`, `keyUsage`), dotted form of an unknown one.
fn object_name(obj: &Asn1ObjectRef) -> String {
    match obj.nid() {
        Nid::UNDEF => obj.to_string(),
        nid => nid
            .short_name()
            .map(str::to_owned)
            .unwrap_or_else(|_| obj.to_string()),
    }
}

/// `C=IT, O=…, CN=…` in certificate order.
fn name_line(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = object_name(e.object());
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn name_values(name: &X509NameRef, nid: Nid) -> Vec<String> {
    name.entries_by_nid(nid)
        .filter_map(|e| e.data().to_string().ok())
        .collect()
}

/// Inspects `cert` at unix time `now`: identity, fingerprints, validity against the
/// `warn_days` window, and the profile checks of pec-format §7.1–7.2.
pub fn inspect(
    cert: &X509Ref,
    now: i64,
    warn_days: u32,
    expect: &Expectations,
) -> Result<CertReport, KeysError> {
    let exts = extensions(cert);
    let ku = key_usage(cert, &exts);
    let emails: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.email().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let now_t = Asn1Time::from_unix(now)?;
    let validity = if cert.not_before() > now_t {
        Validity::NotYetValid
    } else if cert.not_after() <= now_t {
        Validity::Expired
    } else {
        let days_left = now_t.diff(cert.not_after())?.days;
        if i64::from(days_left) < i64::from(warn_days) {
            Validity::ExpiringSoon { days_left }
        } else {
            Validity::Valid { days_left }
        }
    };

    let pkey = cert.public_key()?;
    let key = match pkey.id() {
        openssl::pkey::Id::RSA => format!("RSA {} bits", pkey.bits()),
        openssl::pkey::Id::EC => format!("EC {} bits", pkey.bits()),
        other => format!("key type {} ({} bits)", other.as_raw(), pkey.bits()),
    };
    let sig_nid = cert.signature_algorithm().object().nid();
    let signature_algorithm = sig_nid
        .long_name()
        .map(str::to_owned)
        .unwrap_or_else(|_| cert.signature_algorithm().object().to_string());

    let notes = profile_notes(cert, &exts, &ku, &emails, expect, &pkey, sig_nid);
    Ok(CertReport {
        subject: name_line(cert.subject_name()),
        issuer: name_line(cert.issuer_name()),
        serial: cert.serial_number().to_bn()?.to_hex_str()?.to_uppercase(),
        not_before: cert.not_before().to_string(),
        not_after: cert.not_after().to_string(),
        sha1: hex::encode_upper(cert.digest(MessageDigest::sha1())?),
        sha256: hex::encode_upper(cert.digest(MessageDigest::sha256())?),
        key,
        signature_algorithm,
        emails,
        key_usage: ku,
        extensions: exts,
        validity,
        warn_days,
        notes,
    })
}

/// The checks of pec-format §7.2 (and the §7.1 address match), one note each.
fn profile_notes(
    cert: &X509Ref,
    exts: &[ExtensionInfo],
    ku: &[&str],
    emails: &[String],
    expect: &Expectations,
    pkey: &PKey<openssl::pkey::Public>,
    sig_nid: Nid,
) -> Vec<ProfileNote> {
    let mut notes = Vec::new();
    let mut note = |level, text: String| notes.push(ProfileNote { level, text });
    let find = |nid: Nid| exts.iter().find(|e| e.nid == nid);
    let subject = cert.subject_name();

    // Provider name in CN or O.
    let names: Vec<String> = name_values(subject, Nid::COMMONNAME)
        .into_iter()
        .chain(name_values(subject, Nid::ORGANIZATIONNAME))
        .collect();
    match &expect.provider_name {
        Some(p) => {
            let p_low = p.to_lowercase();
            if names.iter().any(|n| n.to_lowercase().contains(&p_low)) {
                note(
                    NoteLevel::Ok,
                    format!("provider name {p:?} is in the subject CN or O"),
                );
            } else {
                note(
                    NoteLevel::Fail,
                    format!(
                        "provider name {p:?} (provider.name) is in neither the subject CN nor O"
                    ),
                );
            }
        }
        None if names.is_empty() => note(
            NoteLevel::Fail,
            "the subject has neither CN nor O: the provider name must be in one".into(),
        ),
        None => note(
            NoteLevel::Ok,
            "subject has CN/O (no provider.name configured to compare)".into(),
        ),
    }

    // subjectAltName rfc822Name, non-critical; system address among them.
    match find(Nid::SUBJECT_ALT_NAME) {
        None => note(
            NoteLevel::Fail,
            "no subjectAltName: the system address must be an rfc822Name there".into(),
        ),
        Some(_) if emails.is_empty() => note(
            NoteLevel::Fail,
            "subjectAltName has no rfc822Name (e-mail address)".into(),
        ),
        Some(e) if e.critical => note(
            NoteLevel::Fail,
            "subjectAltName is critical; the profile wants it non-critical".into(),
        ),
        Some(_) => note(
            NoteLevel::Ok,
            format!("subjectAltName rfc822Name {}", emails.join(", ")),
        ),
    }
    if let Some(addr) = &expect.system_address {
        if emails.iter().any(|e| e.eq_ignore_ascii_case(addr)) {
            note(
                NoteLevel::Ok,
                format!("system address {addr} is in the subjectAltName"),
            );
        } else {
            note(
                NoteLevel::Fail,
                format!(
                    "system address {addr} is not in the subjectAltName: other providers will reject our messages (§7.1)"
                ),
            );
        }
    }
    if subject
        .entries_by_nid(Nid::PKCS9_EMAILADDRESS)
        .next()
        .is_some()
    {
        note(
            NoteLevel::Warn,
            "the subject DN carries an e-mail address; the profile says it SHOULD NOT".into(),
        );
    }

    // KeyUsage critical digitalSignature.
    match find(Nid::KEY_USAGE) {
        None => note(
            NoteLevel::Fail,
            "no KeyUsage extension (must be critical, digitalSignature)".into(),
        ),
        Some(e) if !e.critical => note(NoteLevel::Fail, "KeyUsage is not critical".into()),
        Some(_) if !ku.contains(&"digitalSignature") => {
            note(NoteLevel::Fail, "KeyUsage lacks digitalSignature".into())
        }
        Some(_) => note(NoteLevel::Ok, "KeyUsage critical, digitalSignature".into()),
    }
    // Key identifiers, non-critical.
    for (nid, label) in [
        (Nid::AUTHORITY_KEY_IDENTIFIER, "AuthorityKeyIdentifier"),
        (Nid::SUBJECT_KEY_IDENTIFIER, "SubjectKeyIdentifier"),
    ] {
        match find(nid) {
            None => note(NoteLevel::Fail, format!("no {label} extension")),
            Some(e) if e.critical => note(NoteLevel::Fail, format!("{label} is critical")),
            Some(_) => note(NoteLevel::Ok, format!("{label} present, non-critical")),
        }
    }
    // No BasicConstraints; nothing else critical.
    if find(Nid::BASIC_CONSTRAINTS).is_some() {
        note(
            NoteLevel::Fail,
            "BasicConstraints is present; the profile forbids it".into(),
        );
    } else {
        note(NoteLevel::Ok, "no BasicConstraints".into());
    }
    let known = [
        Nid::KEY_USAGE,
        Nid::AUTHORITY_KEY_IDENTIFIER,
        Nid::SUBJECT_KEY_IDENTIFIER,
        Nid::SUBJECT_ALT_NAME,
        Nid::BASIC_CONSTRAINTS,
    ];
    let other_critical: Vec<&str> = exts
        .iter()
        .filter(|e| e.critical && !known.contains(&e.nid))
        .map(|e| e.name.as_str())
        .collect();
    if !other_critical.is_empty() {
        note(
            NoteLevel::Fail,
            format!(
                "critical extensions the profile does not allow: {}",
                other_critical.join(", ")
            ),
        );
    }

    // Cryptography (current practice: RSA-2048, sha256WithRSAEncryption).
    if pkey.id() == openssl::pkey::Id::RSA && pkey.bits() < 2048 {
        note(
            NoteLevel::Warn,
            format!("RSA key of {} bits; use at least 2048", pkey.bits()),
        );
    }
    if matches!(
        sig_nid,
        Nid::SHA1WITHRSAENCRYPTION | Nid::MD5WITHRSAENCRYPTION
    ) {
        note(
            NoteLevel::Warn,
            "signed with a SHA-1/MD5 algorithm; current certificates use sha256WithRSAEncryption"
                .into(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;
    use openssl::x509::X509Builder;
    use openssl::x509::extension::{AuthorityKeyIdentifier, BasicConstraints};

    const NOW: i64 = 1_795_000_000; // 2026-11-19

    fn key() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    /// A self-signed certificate valid from NOW-1d for `days`, with the §7.2 profile
    /// unless `basic_constraints` adds the forbidden extension.
    fn cert(days: u32, basic_constraints: bool) -> X509 {
        let key = key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("C", "IT").unwrap();
        name.append_entry_by_text("O", "Example PEC S.p.A.")
            .unwrap();
        name.append_entry_by_text("CN", "Posta Certificata Example PEC S.p.A.")
            .unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(0xABCD).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(NOW - 86_400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(NOW + i64::from(days) * 86_400 + 3600).unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(ski).unwrap();
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(aki).unwrap();
        let san = SubjectAlternativeName::new()
            .email("posta-certificata@pec.example.it")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        if basic_constraints {
            b.append_extension(BasicConstraints::new().critical().build().unwrap())
                .unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn expect() -> Expectations {
        Expectations {
            certificate: None,
            provider_name: Some("Example PEC S.p.A.".into()),
            system_address: Some("posta-certificata@pec.example.it".into()),
        }
    }

    #[test]
    fn csr_has_profile_subject_and_extensions() {
        let k = key();
        let req = build_csr(&k, "Example PEC S.p.A.", "pec.example.it").unwrap();
        assert!(req.verify(&k).unwrap());
        let subject = name_line(req.subject_name());
        assert_eq!(
            subject,
            "C=IT, O=Example PEC S.p.A., CN=Posta Certificata Example PEC S.p.A."
        );
        let exts = req.extensions().unwrap();
        let nids: Vec<Nid> = exts
            .iter()
            .map(|e| {
                // SAFETY: the extension is owned by the stack for the closure's duration.
                let obj = unsafe {
                    Asn1ObjectRef::from_ptr(openssl_sys::X509_EXTENSION_get_object(e.as_ptr()))
                };
                obj.nid()
            })
            .collect();
        assert!(nids.contains(&Nid::KEY_USAGE));
        assert!(nids.contains(&Nid::SUBJECT_ALT_NAME));
        assert!(nids.contains(&Nid::SUBJECT_KEY_IDENTIFIER));
        assert!(!nids.contains(&Nid::BASIC_CONSTRAINTS));
        let text = String::from_utf8(req.to_text().unwrap()).unwrap();
        assert!(
            text.contains("email:posta-certificata@pec.example.it"),
            "{text}"
        );
        assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: KeysCommand,
    }

    #[test]
    fn command_line_parses() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "keys",
            "generate",
            "--out",
            "/etc/pecora",
            "--provider-name",
            "Acme S.p.A.",
            "--domain",
            "pec.acme.it",
        ])
        .unwrap();
        match cli.cmd {
            KeysCommand::Generate(g) => {
                assert_eq!(g.bits, 2048);
                assert_eq!(g.provider_name, "Acme S.p.A.");
            }
            _ => panic!("expected generate"),
        }
        assert!(
            Cli::try_parse_from([
                "keys",
                "generate",
                "--out",
                "d",
                "--provider-name",
                "A",
                "--domain",
                "a.it",
                "--bits",
                "1024"
            ])
            .is_err()
        );
        match Cli::try_parse_from(["keys", "show", "--warn-days", "30"])
            .unwrap()
            .cmd
        {
            KeysCommand::Show(s) => assert_eq!((s.cert, s.warn_days), (None, 30)),
            _ => panic!("expected show"),
        }
    }

    #[test]
    fn long_provider_names_keep_cn_within_limits() {
        let name = "A".repeat(60);
        assert_eq!(common_name(&name), "Posta Certificata");
        assert_eq!(common_name("Acme"), "Posta Certificata Acme");
        assert!(validate_provider_name(&"B".repeat(65)).is_err());
        assert!(validate_provider_name(" Acme").is_err());
        assert!(validate_provider_name("").is_err());
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(validate_domain("PEC.Example.it").unwrap(), "pec.example.it");
        for bad in ["localhost", "a..it", "-a.it", "a b.it", "x@y.it", ""] {
            assert!(validate_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generate_writes_private_key_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let files = generate(&out, "Example PEC S.p.A.", "pec.example.it", 2048).unwrap();
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = PKey::private_key_from_pem(&fs::read(&files.key).unwrap()).unwrap();
        let req = X509Req::from_pem(&fs::read(&files.csr).unwrap()).unwrap();
        assert!(req.verify(&key).unwrap());
        let before = fs::read(&files.key).unwrap();
        match generate(&out, "Example PEC S.p.A.", "pec.example.it", 2048) {
            Err(KeysError::Exists(p)) => assert_eq!(p, files.key),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&files.key).unwrap(), before);
    }

    #[test]
    fn conformant_certificate_with_time_left_passes() {
        let c = cert(400, false);
        let r = inspect(&c, NOW, 60, &expect()).unwrap();
        assert_eq!(r.validity, Validity::Valid { days_left: 400 });
        assert_eq!(r.exit_status(), 0, "{:#?}", r.notes);
        assert!(
            r.notes.iter().all(|n| n.level == NoteLevel::Ok),
            "{:#?}",
            r.notes
        );
        assert_eq!(r.serial, "ABCD");
        assert_eq!(r.sha1.len(), 40);
        assert_eq!(r.sha1, r.sha1.to_uppercase());
        assert_eq!(r.key_usage, vec!["digitalSignature"]);
    }

    #[test]
    fn expiring_certificate_exits_1_with_a_warning() {
        let c = cert(10, false);
        let r = inspect(&c, NOW, 60, &expect()).unwrap();
        assert_eq!(r.validity, Validity::ExpiringSoon { days_left: 10 });
        assert_eq!(r.exit_status(), 1);
        assert!(
            r.render(Path::new("x.crt"))
                .contains("WARNING: the certificate expires in 10 days")
        );
        // The same certificate is fine with a shorter window.
        assert_eq!(inspect(&c, NOW, 5, &expect()).unwrap().exit_status(), 0);
        // And expired a month later.
        let later = inspect(&c, NOW + 30 * 86_400, 60, &expect()).unwrap();
        assert_eq!(later.validity, Validity::Expired);
        assert!(later.render(Path::new("x.crt")).contains("EXPIRED"));
    }

    #[test]
    fn profile_violations_are_reported() {
        let c = cert(400, true);
        let wrong = Expectations {
            certificate: None,
            provider_name: Some("Other Provider".into()),
            system_address: Some("posta-certificata@other.it".into()),
        };
        let r = inspect(&c, NOW, 60, &wrong).unwrap();
        let fails: Vec<&str> = r
            .notes
            .iter()
            .filter(|n| n.level == NoteLevel::Fail)
            .map(|n| n.text.as_str())
            .collect();
        assert_eq!(fails.len(), 3, "{fails:#?}");
        assert!(fails.iter().any(|f| f.contains("BasicConstraints")));
        assert!(fails.iter().any(|f| f.contains("Other Provider")));
        assert!(
            fails
                .iter()
                .any(|f| f.contains("posta-certificata@other.it"))
        );
        assert_eq!(r.exit_status(), 1);
    }

    #[test]
    fn expectations_come_from_the_config_loosely() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pecora.toml");
        fs::write(&p, "[provider]\nname = \"Acme\"\ndomains = [\"pec.acme.it\"]\n[keys]\ncertificate = \"/x/y.crt\"\n[unknown]\nz = 1\n").unwrap();
        let e = read_expectations(&p).unwrap();
        assert_eq!(e.certificate.as_deref(), Some(Path::new("/x/y.crt")));
        assert_eq!(e.provider_name.as_deref(), Some("Acme"));
        assert_eq!(
            e.system_address.as_deref(),
            Some("posta-certificata@pec.acme.it")
        );
        fs::write(&p, "[provider\n").unwrap();
        assert!(matches!(
            read_expectations(&p),
            Err(KeysError::Config { .. })
        ));
    }
}
