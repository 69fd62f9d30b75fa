//! `pecora keys user-ca` and `pecora keys user-cert`: a CA dedicated to the provider's
//! users and the client certificates it issues, for login with a digital certificate on
//! submission (Postfix), IMAPS and POP3S (Dovecot). For testing and for small providers; a
//! provider with its own CA uses that instead (README, "Login with a digital certificate").
//!
//! A user certificate carries the mailbox as its subject CN (what Postfix hands the milter
//! and what Dovecot takes as the user name) and as an rfc822Name, with the clientAuth
//! extended key usage.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier, AuthorityKeyIdentifier};
use openssl::x509::{X509, X509NameBuilder};

/// Options of `pecora keys user-ca`.
#[derive(Debug, Clone, Args)]
pub struct UserCaArgs {
    /// Directory to write users-ca.pem and users-ca.key (mode 0600) into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The CA's common name; list it in pecora.toml certificates.issuers.
    #[arg(long, value_name = "CN")]
    pub name: String,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    pub days: u32,
}

/// Options of `pecora keys user-cert`.
#[derive(Debug, Clone, Args)]
pub struct UserCertArgs {
    /// The mailbox the certificate logs in as (its subject CN and rfc822Name).
    #[arg(long, value_name = "ADDRESS")]
    pub mailbox: String,
    /// The users' CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// The users' CA key (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_key: PathBuf,
    /// Directory to write <mailbox>.pem and <mailbox>.key (mode 0600) into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 730)]
    pub days: u32,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum UserCertError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} exists already; pecora never overwrites keys or certificates")]
    Exists(PathBuf),
    #[error("`{0}` is not a mail address")]
    Mailbox(String),
    #[error("the CA name must be 1 to 64 printable characters")]
    Name,
    #[error("the CA key does not belong to the CA certificate")]
    Mismatch,
    #[error(transparent)]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), UserCertError> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => UserCertError::Exists(path.to_owned()),
        _ => UserCertError::Io(path.to_owned(), e),
    })?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| UserCertError::Io(path.to_owned(), e))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(|e| UserCertError::Io(path.to_owned(), e))
}

fn serial() -> Result<Asn1Integer, UserCertError> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

/// A self-signed CA for users' client certificates.
pub fn make_ca(name: &str, days: u32) -> Result<(X509, PKey<Private>), UserCertError> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(UserCertError::Name);
    }
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_text("CN", name)?;
    let n = n.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&n)?;
    b.set_issuer_name(&n)?;
    b.set_pubkey(&key)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(days)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

/// A client certificate for `mailbox`, issued by the users' CA.
pub fn issue(ca: &X509, ca_key: &PKey<Private>, mailbox: &str, days: u32) -> Result<(X509, PKey<Private>), UserCertError> {
    let mailbox = mailbox.trim().to_ascii_lowercase();
    match mailbox.rsplit_once('@') {
        Some((l, d)) if !l.is_empty() && d.contains('.') && !mailbox.chars().any(|c| c.is_whitespace() || c.is_control()) => {}
        _ => return Err(UserCertError::Mailbox(mailbox)),
    }
    if !ca.public_key()?.public_eq(ca_key) {
        return Err(UserCertError::Mismatch);
    }
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_text("CN", &mailbox)?;
    let n = n.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&n)?;
    b.set_issuer_name(ca.subject_name())?;
    b.set_pubkey(&key)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(days)?);
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().client_auth().email_protection().build()?)?;
    let san = SubjectAlternativeName::new().email(&mailbox).build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(san)?;
    let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(aki)?;
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

/// `pecora keys user-ca`.
pub fn run_ca(a: &UserCaArgs) -> Result<(PathBuf, PathBuf), UserCertError> {
    let (cert, key) = make_ca(&a.name, a.days)?;
    write_pair(&a.out, "users-ca", &cert, &key)
}

/// Writes `DIR/NAME.pem` (0644) and `DIR/NAME.key` (0600), creating DIR; refuses to
/// replace either file.
fn write_pair(dir: &Path, name: &str, cert: &X509, key: &PKey<Private>) -> Result<(PathBuf, PathBuf), UserCertError> {
    fs::create_dir_all(dir).map_err(|e| UserCertError::Io(dir.to_path_buf(), e))?;
    let (cp, kp) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    for p in [&cp, &kp] {
        if p.symlink_metadata().is_ok() {
            return Err(UserCertError::Exists(p.clone()));
        }
    }
    write_new(&kp, &key.private_key_to_pem_pkcs8()?, 0o600)?;
    write_new(&cp, &cert.to_pem()?, 0o644)?;
    Ok((cp, kp))
}

/// `pecora keys user-cert`.
pub fn run_cert(a: &UserCertArgs) -> Result<(PathBuf, PathBuf), UserCertError> {
    let read = |p: &Path| fs::read(p).map_err(|e| UserCertError::Io(p.to_owned(), e));
    let ca = X509::from_pem(&read(&a.ca_cert)?)?;
    let ca_key = PKey::private_key_from_pem(&read(&a.ca_key)?)?;
    let (cert, key) = issue(&ca, &ca_key, &a.mailbox, a.days)?;
    write_pair(&a.out, &a.mailbox.trim().to_ascii_lowercase(), &cert, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::X509StoreContext;
    use openssl::x509::store::X509StoreBuilder;

    #[test]
    fn issued_certificates_verify_against_their_ca_only() {
        let (ca, ca_key) = make_ca("Alpha PEC Utenti CA", 30).unwrap();
        let (cert, _) = issue(&ca, &ca_key, "Mario.Rossi@pec.alpha.test", 30).unwrap();
        let cn = cert.subject_name().entries().next().unwrap().data().to_string().unwrap();
        assert_eq!(cn, "mario.rossi@pec.alpha.test");
        let verify = |anchor: &X509| {
            let mut s = X509StoreBuilder::new().unwrap();
            s.add_cert(anchor.clone()).unwrap();
            let s = s.build();
            let mut ctx = X509StoreContext::new().unwrap();
            ctx.init(&s, &cert, &Stack::new().unwrap(), |c| c.verify_cert()).unwrap()
        };
        assert!(verify(&ca));
        let (other, _) = make_ca("Other CA", 30).unwrap();
        assert!(!verify(&other));
        assert!(matches!(issue(&ca, &ca_key, "not-an-address", 1), Err(UserCertError::Mailbox(_))));
        let (_, wrong_key) = make_ca("X", 1).unwrap();
        assert!(matches!(issue(&ca, &wrong_key, "a@b.it", 1), Err(UserCertError::Mismatch)));
    }
}
