//! `pecora keys`: the CSR `generate` writes is what the openssl tool and a CA see, and
//! `show` warns (exit 1) about a certificate close to expiry.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pecora::cmd::keys::{self, ShowArgs};

const PROVIDER: &str = "Example PEC S.p.A.";
const DOMAIN: &str = "pec.example.it";

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn generated_csr_verifies_and_carries_the_pec_profile() {
    let dir = tempfile::tempdir().unwrap();
    let files = keys::generate(&dir.path().join("k"), PROVIDER, DOMAIN, 2048).unwrap();
    let csr = files.csr.to_str().unwrap();

    let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    let (key_ok, key_text) = openssl(&[
        "pkey",
        "-in",
        files.key.to_str().unwrap(),
        "-noout",
        "-check",
    ]);
    assert!(key_ok, "{key_text}");

    let (verified, text) = openssl(&["req", "-in", csr, "-noout", "-verify"]);
    assert!(verified, "{text}");
    assert!(text.contains("verify OK"), "{text}");

    let (ok, text) = openssl(&["req", "-in", csr, "-noout", "-text", "-nameopt", "RFC2253"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Subject: CN=Posta Certificata Example PEC S.p.A.,O=Example PEC S.p.A.,C=IT"),
        "{text}"
    );
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        !text.contains("Non Repudiation") && !text.contains("Key Encipherment"),
        "{text}"
    );
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("X509v3 Subject Alternative Name"), "{text}");
    assert!(
        text.contains("email:posta-certificata@pec.example.it"),
        "{text}"
    );
    assert!(text.contains("E-mail Protection"), "{text}");
    assert!(!text.contains("Basic Constraints"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    // Only KeyUsage is critical.
    assert_eq!(text.matches("critical").count(), 1, "{text}");
}

/// Signs the generated CSR into a self-signed certificate valid for `days` days.
fn certificate(dir: &Path, days: u32) -> std::path::PathBuf {
    let files = keys::generate(&dir.join(format!("k{days}")), PROVIDER, DOMAIN, 2048).unwrap();
    let ext = dir.join("ext.cnf");
    fs::write(&ext, "authorityKeyIdentifier = keyid:always\n").unwrap();
    let crt = dir.join(format!("signing-{days}.crt"));
    let (ok, text) = openssl(&[
        "x509",
        "-req",
        "-in",
        files.csr.to_str().unwrap(),
        "-key",
        files.key.to_str().unwrap(),
        "-days",
        &days.to_string(),
        "-copy_extensions",
        "copyall",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    crt
}

fn config(dir: &Path, cert: &Path) -> std::path::PathBuf {
    let p = dir.join("pecora.toml");
    fs::write(
        &p,
        format!(
            "[provider]\nname = \"{PROVIDER}\"\ndomains = [\"{DOMAIN}\"]\n[keys]\ncertificate = \"{}\"\nprivate_key = \"/nonexistent\"\n",
            cert.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn show_warns_and_exits_1_ten_days_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let crt = certificate(dir.path(), 10);
    let cfg = config(dir.path(), &crt);
    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::new();
    let code = keys::show(
        &ShowArgs {
            cert: None,
            warn_days: 60,
        },
        &cfg,
        now,
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("WARNING: the certificate expires in 9 days")
            || text.contains("WARNING: the certificate expires in 10 days"),
        "{text}"
    );
    // Everything else about it is conformant: the warning is the only reason.
    assert!(!text.contains("[FAIL]"), "{text}");

    // The fingerprint is the one the provider index stores: SHA-1, upper-case hex.
    let (ok, fp) = openssl(&[
        "x509",
        "-in",
        crt.to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha1",
    ]);
    assert!(ok, "{fp}");
    let expected = fp.trim().rsplit('=').next().unwrap().replace(':', "");
    assert!(
        text.contains(&format!("SHA-1         {expected}")),
        "{expected}\n{text}"
    );

    // With a 5-day window the same certificate passes.
    let mut out = Vec::new();
    let code = keys::show(
        &ShowArgs {
            cert: Some(crt.clone()),
            warn_days: 5,
        },
        &cfg,
        now,
        &mut out,
    )
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
}

#[test]
fn show_of_a_long_lived_conformant_certificate_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let crt = certificate(dir.path(), 400);
    // No configuration at all: --cert alone is enough.
    let mut out = Vec::new();
    let code = keys::show(
        &ShowArgs {
            cert: Some(crt),
            warn_days: 60,
        },
        &dir.path().join("missing.toml"),
        chrono::Utc::now().timestamp(),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Addresses     posta-certificata@pec.example.it"),
        "{text}"
    );
    assert!(
        text.contains("[ok  ] KeyUsage critical, digitalSignature"),
        "{text}"
    );
    assert!(text.contains("[ok  ] no BasicConstraints"), "{text}");
}

#[test]
fn show_without_certificate_is_an_environment_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("absent.crt"));
    let mut out = Vec::new();
    let err = keys::show(
        &ShowArgs {
            cert: None,
            warn_days: 60,
        },
        &cfg,
        0,
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(err, keys::KeysError::Io { .. }), "{err}");
}
