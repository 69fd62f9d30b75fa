//! A provider identity for tests: a self-signed signing certificate with the system
//! address, its key (mode 0600), a two-provider index, and a configuration file around them.

use std::path::Path;
use std::process::Command;

/// Writes key.pem, cert.pem and index.ldif for "Alpha PEC" (pec.alpha.test) into `dir`.
pub fn provider(dir: &Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj"])
        .arg("/C=IT/O=Alpha PEC/CN=Posta Certificata Alpha")
        .args(["-addext", "subjectAltName=email:posta-certificata@pec.alpha.test"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        dir.join("index.ldif"),
        "dn: o=postacert\no: postacert\n\n\
         dn: providerName=Alpha PEC,o=postacert\nproviderName: Alpha PEC\nmailReceipt: servizio@pec.alpha.test\n\
         managedDomains: pec.alpha.test\n\n\
         dn: providerName=Beta PEC,o=postacert\nproviderName: Beta PEC\nmailReceipt: servizio@pec.beta.test\n\
         managedDomains: pec.beta.test\n",
    )
    .unwrap();
}

/// Writes pecora.toml in `dir` for the identity above, with `extra` TOML appended.
pub fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let d = dir.display();
    // Never the system's /var/lib/pecora: checkpoints go to the test's directory.
    let store = if extra.contains("[store]") { String::new() } else { format!("[store]\ncheckpoint_dir = \"{d}/checkpoints\"\n") };
    let text = format!(
        "[provider]\nname = \"Alpha PEC\"\ndomains = [\"pec.alpha.test\"]\nhost_id = \"t1\"\n\
         [keys]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n\
         [index]\nfile = \"{d}/index.ldif\"\n{store}{extra}"
    );
    let path = dir.join("pecora.toml");
    std::fs::write(&path, text).unwrap();
    path
}
