//! The provider index ("Indice dei gestori di PEC", pec-format.md §6): read from its LDIF
//! (RFC 6109 schema) or from the CMS signed `.p7m` that wraps it, and queried by domain,
//! address and certificate. It also carries the optional trust anchors (CA bundle, CRLs) the
//! verifier checks the signer's chain against. Pure: bytes in, lookups out.
//!
//! LDIF handled: `version:` line, `#` comments (folded too), line folding (a line starting
//! with one space continues the previous one), `attr: value`, `attr:: base64`, attribute
//! options (`providerCertificate;binary`), case-insensitive attribute names, CRLF or LF,
//! entries separated by blank lines, the `o=postacert` root, `providerName=…` entries and
//! `providerUnit=…,providerName=…` secondary environments (each its own entry with its own
//! certificates and domains).

use base64::Engine as _;
use openssl::x509::X509;

use super::smime::{self, SmimeError, TrustAnchors};
use crate::pec::types::RecipientType;

/// One provider entry (a main or a secondary operating environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderEntry {
    /// `providerName`.
    pub name: String,
    /// `providerCertificateHash` values, uppercase hex.
    pub hashes: Vec<String>,
    /// `providerCertificate;binary` values, DER.
    pub certificates: Vec<Vec<u8>>,
    /// `mailReceipt`: the service mailbox for presa-in-carico and rilevazione-virus.
    pub mail_receipt: String,
    /// `managedDomains`, lowercase.
    pub domains: Vec<String>,
    /// `providerUnit` of a secondary environment, `None` for the main one.
    pub unit: Option<String>,
}

impl ProviderEntry {
    /// True when `domain` (any case, trailing dot ignored) is among this entry's managedDomains.
    pub fn manages(&self, domain: &str) -> bool {
        let d = domain.trim().trim_end_matches('.');
        !d.is_empty() && self.domains.iter().any(|m| m.eq_ignore_ascii_case(d))
    }
}

/// How a certificate stands in the index (pec-format.md §4.2 step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateLookup<'a> {
    /// Its SHA-1 is listed and the same entry's providerCertificate equals it.
    Listed(&'a ProviderEntry),
    /// Its SHA-1 is listed by this entry, but no providerCertificate of the entry equals it.
    HashOnly(&'a ProviderEntry),
    /// Its SHA-1 is listed nowhere.
    NotListed,
}

/// Why an index could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("LDIF line {line}: {message}")]
    Ldif { line: usize, message: String },
    #[error("the index lists no provider")]
    NoProviders,
    #[error("the index is not UTF-8 text")]
    NotUtf8,
    #[error("the signed index (.p7m) cannot be verified: {0}")]
    P7m(#[from] SmimeError),
    #[error(
        "the signed index is signed by the certificate with SHA-1 {found}, not by the configured index signer (SHA-1 {expected})"
    )]
    WrongSigner { expected: String, found: String },
    #[error(
        "an index signer certificate is configured but the index is a plain LDIF, not a signed .p7m"
    )]
    Unsigned,
    #[error(
        "the index is a signed .p7m: its signer certificate must be configured to verify it (index.signer_certificate; --index-signer for pecora verify)"
    )]
    NoSigner,
}

/// The provider index, with the trust anchors the verifier checks signers against.
#[derive(Debug, Clone, Default)]
pub struct ProviderIndex {
    pub providers: Vec<ProviderEntry>,
    /// CA bundle and CRLs (decisions.md 15); empty: no chain or revocation check.
    pub trust: TrustAnchors,
}

fn ldif_err(line: usize, message: impl Into<String>) -> IndexError {
    IndexError::Ldif {
        line,
        message: message.into(),
    }
}

impl ProviderIndex {
    /// The same index, checking signer chains against `trust`.
    pub fn with_trust(mut self, trust: TrustAnchors) -> ProviderIndex {
        self.trust = trust;
        self
    }

    /// Parses the LDIF text of the index.
    pub fn from_ldif(text: &str) -> Result<ProviderIndex, IndexError> {
        // 1. Unfold into logical lines, remembering where each starts; drop comments.
        let mut logical: Vec<(usize, String)> = Vec::new();
        let mut in_comment = false;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if let Some(cont) = line.strip_prefix(' ') {
                if in_comment {
                    continue;
                }
                match logical.last_mut() {
                    Some((_, last)) if !last.is_empty() => last.push_str(cont),
                    _ => {
                        return Err(ldif_err(
                            n,
                            "a continuation line (leading space) with nothing to continue",
                        ));
                    }
                }
                continue;
            }
            in_comment = line.starts_with('#');
            if !in_comment {
                logical.push((n, line.to_string()));
            }
        }
        // 2. Group into entries and read attributes.
        let mut providers = Vec::new();
        let mut entry: Vec<(usize, String, Vec<u8>)> = Vec::new();
        let mut first_entry = true;
        for (n, line) in logical {
            if line.trim().is_empty() {
                if !entry.is_empty() {
                    providers.extend(provider_from(&entry)?);
                    entry.clear();
                    first_entry = false;
                }
                continue;
            }
            if line == "-" {
                continue;
            }
            let Some((name, rest)) = line.split_once(':') else {
                return Err(ldif_err(n, format!("not an attribute line: {line:.60}")));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(ldif_err(n, "an attribute line without a name"));
            }
            let value = if let Some(b64) = rest.strip_prefix(':') {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim().as_bytes())
                    .map_err(|e| ldif_err(n, format!("{name}: bad base64 value ({e})")))?
            } else if rest.starts_with('<') {
                return Err(ldif_err(
                    n,
                    format!("{name}: URL values (:<) are not supported"),
                ));
            } else {
                rest.trim_start_matches(' ').trim_end().as_bytes().to_vec()
            };
            if first_entry && entry.is_empty() && name.eq_ignore_ascii_case("version") {
                continue;
            }
            entry.push((n, name.to_string(), value));
        }
        if !entry.is_empty() {
            providers.extend(provider_from(&entry)?);
        }
        if providers.is_empty() {
            return Err(IndexError::NoProviders);
        }
        Ok(ProviderIndex {
            providers,
            trust: TrustAnchors::default(),
        })
    }

    /// Parses the LDIF from bytes (UTF-8, an optional BOM).
    pub fn from_ldif_bytes(bytes: &[u8]) -> Result<ProviderIndex, IndexError> {
        let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
            .map_err(|_| IndexError::NotUtf8)?;
        ProviderIndex::from_ldif(text)
    }

    /// Loads the CMS signed `.p7m` form (DER, PEM, base64 or S/MIME `application/pkcs7-mime`)
    /// whose signer must be exactly `signer`, the configured index signer; the signed
    /// content is the LDIF.
    pub fn from_p7m(data: &[u8], signer: &X509) -> Result<ProviderIndex, IndexError> {
        let (content, info) = smime::verify_opaque(data, std::slice::from_ref(signer))?;
        let expected = signer.to_der().unwrap_or_default();
        if info.signer.to_der().unwrap_or_default() != expected {
            return Err(IndexError::WrongSigner {
                expected: smime::certificate_sha1(signer),
                found: smime::certificate_sha1(&info.signer),
            });
        }
        ProviderIndex::from_ldif_bytes(&content)
    }

    /// Whether `data` reads as a plain LDIF (rather than a signed `.p7m`): after an optional
    /// BOM and whitespace it starts with `dn:`, `version:` or a `#` comment.
    pub fn looks_like_ldif(data: &[u8]) -> bool {
        let s = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
        let s = &s[s
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(s.len())..];
        let starts = |p: &[u8]| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p);
        starts(b"dn:") || starts(b"version:") || starts(b"#")
    }

    /// Loads an index file of either form, told apart by its content: with a configured
    /// `signer` it must be a signed `.p7m` verified against it; without one, a plain LDIF (a
    /// `.p7m` is then refused: its signature could not be checked).
    pub fn load(data: &[u8], signer: Option<&X509>) -> Result<ProviderIndex, IndexError> {
        match (signer, ProviderIndex::looks_like_ldif(data)) {
            (Some(_), true) => Err(IndexError::Unsigned),
            (Some(s), false) => ProviderIndex::from_p7m(data, s),
            (None, true) => ProviderIndex::from_ldif_bytes(data),
            (None, false) => Err(IndexError::NoSigner),
        }
    }

    /// The provider entry managing `domain` (case-insensitive).
    pub fn provider_for_domain(&self, domain: &str) -> Option<&ProviderEntry> {
        self.providers.iter().find(|p| p.manages(domain))
    }

    /// `certificato` when the address's domain is managed by a provider, else `esterno`.
    pub fn recipient_type(&self, address: &str) -> RecipientType {
        let a = address.trim().trim_start_matches('<').trim_end_matches('>');
        match a
            .rsplit_once('@')
            .and_then(|(_, d)| self.provider_for_domain(d))
        {
            Some(_) => RecipientType::Certificato,
            None => RecipientType::Esterno,
        }
    }

    /// Where a certificate (DER) stands: listed (hash and DER), hash only, or not listed.
    pub fn lookup_certificate(&self, der: &[u8]) -> CertificateLookup<'_> {
        let sha1 = hex::encode_upper(openssl::sha::sha1(der));
        let mut hash_only = None;
        for p in &self.providers {
            if p.hashes.iter().any(|h| h.eq_ignore_ascii_case(&sha1)) {
                if p.certificates.iter().any(|c| c.as_slice() == der) {
                    return CertificateLookup::Listed(p);
                }
                hash_only.get_or_insert(p);
            }
        }
        hash_only.map_or(CertificateLookup::NotListed, CertificateLookup::HashOnly)
    }

    /// The provider whose entry lists this certificate: its SHA-1 among
    /// providerCertificateHash and equal to one of the same entry's providerCertificate.
    pub fn provider_for_certificate(&self, der: &[u8]) -> Option<&ProviderEntry> {
        match self.lookup_certificate(der) {
            CertificateLookup::Listed(p) => Some(p),
            _ => None,
        }
    }
}

/// One provider entry as LDIF (tests, the lab): `name`, the DER certificates (their SHA-1
/// hashes are computed), `mail_receipt`, `domains`. Folded at 76 columns.
pub fn ldif_entry(name: &str, certs: &[&[u8]], mail_receipt: &str, domains: &[&str]) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        let mut width = 0;
        for c in l.chars() {
            if width == 76 {
                out.push_str("\n ");
                width = 1;
            }
            out.push(c);
            width += 1;
        }
        out.push('\n');
    };
    line(format!("dn: providerName={name},o=postacert"));
    line("objectclass: top".into());
    line("objectclass: provider".into());
    line(format!("providerName: {name}"));
    for c in certs {
        line(format!(
            "providerCertificateHash: {}",
            hex::encode_upper(openssl::sha::sha1(c))
        ));
        line(format!(
            "providerCertificate;binary:: {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        ));
    }
    line(format!("mailReceipt: {mail_receipt}"));
    for d in domains {
        line(format!("managedDomains: {d}"));
    }
    out
}

/// Turns one LDIF entry into a provider entry, or `None` for entries that are not
/// providers (the `o=postacert` root and anything without providerName/objectclass provider).
fn provider_from(entry: &[(usize, String, Vec<u8>)]) -> Result<Option<ProviderEntry>, IndexError> {
    let (first_line, dn_name, dn_value) = &entry[0];
    if !dn_name
        .split(';')
        .next()
        .unwrap_or("")
        .eq_ignore_ascii_case("dn")
    {
        return Err(ldif_err(
            *first_line,
            format!("an entry must start with dn:, not {dn_name}:"),
        ));
    }
    let dn = String::from_utf8_lossy(dn_value).trim().to_string();
    let mut p = ProviderEntry::default();
    let mut is_provider = false;
    for (n, name, value) in &entry[1..] {
        let base = name
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let text = || -> Result<String, IndexError> {
            std::str::from_utf8(value)
                .map(|s| s.trim().to_string())
                .map_err(|_| ldif_err(*n, format!("{name}: not UTF-8")))
        };
        match base.as_str() {
            "objectclass" => is_provider |= text()?.eq_ignore_ascii_case("provider"),
            "providername" => {
                p.name = text()?;
                is_provider = true;
            }
            "providerunit" => p.unit = Some(text()?),
            "providercertificatehash" => {
                let h = text()?.replace(':', "");
                if h.len() != 40 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ldif_err(
                        *n,
                        format!("providerCertificateHash {h:?} is not a SHA-1 (40 hex digits)"),
                    ));
                }
                p.hashes.push(h.to_ascii_uppercase());
            }
            "providercertificate" => p.certificates.push(value.clone()),
            "mailreceipt" => p.mail_receipt = text()?,
            "manageddomains" => p
                .domains
                .push(text()?.trim_end_matches('.').to_ascii_lowercase()),
            _ => {}
        }
    }
    if !is_provider {
        return Ok(None);
    }
    let rdn = |attr: &str| {
        dn.split(',').find_map(|rdn| {
            rdn.trim()
                .split_once('=')
                .filter(|(a, _)| a.trim().eq_ignore_ascii_case(attr))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    if p.name.is_empty() {
        p.name = rdn("providerName").unwrap_or_default();
    }
    if p.unit.is_none() {
        p.unit = rdn("providerUnit");
    }
    if p.name.is_empty() {
        return Err(ldif_err(
            *first_line,
            "a provider entry without providerName",
        ));
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "7E7AEF1059AE0F454F2643A95F69EC3556009239";

    #[test]
    fn reads_the_rfc_layout_with_folding_units_and_comments() {
        let ldif = format!(
            "version: 1\r\n# the root\r\n#  folded comment\r\n  still comment\r\ndn: o=postacert\r\nobjectclass: top\r\no: postacert\r\n\r\n\
             dn: providerName=Anon S.p.A.,o=postacert\nobjectClass: top\nobjectclass: provider\nPROVIDERNAME: Anon S.p.A.\n\
             providerCertificateHash: {}\n {}\nproviderCertificate;binary:: AQ\n ID\nproviderCertificateHash: {}\nproviderCertificate;binary:: BAU=\n\
             mailReceipt: ricevute@pec.anon.it\nmanagedDomains: PEC.Anon.IT\nmanagedDomains: cert.example.com.\n\n\
             dn: providerUnit=DR,providerName=Anon S.p.A.,o=postacert\nobjectclass: provider\nproviderName: Anon S.p.A.\n\
             mailReceipt: dr@pec.anon.it\nmanagedDomains: dr.anon.it\n",
            &HASH[..20],
            HASH[20..].to_lowercase(),
            "00".repeat(20)
        );
        let idx = ProviderIndex::from_ldif(&ldif).unwrap();
        assert_eq!(idx.providers.len(), 2);
        let p = &idx.providers[0];
        assert_eq!(p.name, "Anon S.p.A.");
        assert_eq!(p.unit, None);
        assert_eq!(p.hashes, [HASH.to_string(), "00".repeat(20)]);
        assert_eq!(p.certificates, [vec![1u8, 2, 3], vec![4, 5]]);
        assert_eq!(p.mail_receipt, "ricevute@pec.anon.it");
        assert_eq!(
            idx.recipient_type("Mario@pec.anon.it"),
            RecipientType::Certificato
        );
        assert_eq!(
            idx.recipient_type("<x@CERT.example.com>"),
            RecipientType::Certificato
        );
        assert_eq!(idx.recipient_type("x@gmail.com"), RecipientType::Esterno);
        assert_eq!(idx.recipient_type("no-at-sign"), RecipientType::Esterno);
        let unit = idx.provider_for_domain("DR.anon.it").unwrap();
        assert_eq!(unit.unit.as_deref(), Some("DR"));
        assert_eq!(unit.mail_receipt, "dr@pec.anon.it");
    }

    #[test]
    fn certificate_lookup_needs_hash_and_der() {
        let der = b"certificate bytes".to_vec();
        let listed =
            ProviderIndex::from_ldif(&ldif_entry("A", &[&der], "r@a.it", &["a.it"])).unwrap();
        assert!(matches!(
            listed.lookup_certificate(&der),
            CertificateLookup::Listed(_)
        ));
        assert!(listed.provider_for_certificate(&der).is_some());
        assert_eq!(
            listed.lookup_certificate(b"other"),
            CertificateLookup::NotListed
        );
        // The hash listed, but the entry's certificate is another one.
        let sha = hex::encode(openssl::sha::sha1(&der));
        let text = format!(
            "dn: providerName=B,o=postacert\nproviderName: B\nproviderCertificateHash: {sha}\nproviderCertificate;binary:: AQID\nmanagedDomains: b.it\n"
        );
        let hash_only = ProviderIndex::from_ldif(&text).unwrap();
        assert!(
            matches!(hash_only.lookup_certificate(&der), CertificateLookup::HashOnly(p) if p.name == "B")
        );
        assert!(hash_only.provider_for_certificate(&der).is_none());
    }

    #[test]
    fn ldif_entry_folds_and_reads_back() {
        let der = vec![0x30u8; 300];
        let text = ldif_entry(
            "Gestore Uno S.p.A.",
            &[&der],
            "r@uno.it",
            &["PEC.uno.it", "uno.it"],
        );
        assert!(text.lines().all(|l| l.len() <= 76), "{text}");
        let idx = ProviderIndex::from_ldif(&text).unwrap();
        let p = &idx.providers[0];
        assert_eq!(p.certificates, [der]);
        assert_eq!(p.domains, ["pec.uno.it", "uno.it"]);
        assert!(idx.provider_for_certificate(&p.certificates[0]).is_some());
    }

    #[test]
    fn refuses_broken_ldif() {
        assert_eq!(
            ProviderIndex::from_ldif("dn: o=postacert\no: postacert\n").unwrap_err(),
            IndexError::NoProviders
        );
        assert!(matches!(
            ProviderIndex::from_ldif(" leading continuation"),
            Err(IndexError::Ldif { line: 1, .. })
        ));
        assert!(matches!(
            ProviderIndex::from_ldif("dn: x\nnot an attribute\n"),
            Err(IndexError::Ldif { line: 2, .. })
        ));
        assert!(matches!(
            ProviderIndex::from_ldif(
                "dn: providerName=A,o=postacert\nproviderName: A\nproviderCertificate;binary:: !!!\n"
            ),
            Err(IndexError::Ldif { line: 3, .. })
        ));
        assert!(matches!(
            ProviderIndex::from_ldif(
                "dn: providerName=A,o=postacert\nproviderName: A\nproviderCertificateHash: xyz\n"
            ),
            Err(IndexError::Ldif { line: 3, .. })
        ));
        assert!(matches!(
            ProviderIndex::from_ldif("providerName: A\n"),
            Err(IndexError::Ldif { line: 1, .. })
        ));
        assert_eq!(
            ProviderIndex::from_ldif_bytes(b"\xff").unwrap_err(),
            IndexError::NotUtf8
        );
    }

    #[test]
    fn load_tells_the_two_forms_apart() {
        let ldif = ldif_entry("A", &[], "r@a.it", &["a.it"]);
        assert!(ProviderIndex::looks_like_ldif(ldif.as_bytes()));
        assert!(ProviderIndex::looks_like_ldif(
            b"\xEF\xBB\xBF\n\nversion: 1\n"
        ));
        assert!(!ProviderIndex::looks_like_ldif(b"\x30\x82\x01"));
        assert!(!ProviderIndex::looks_like_ldif(b"-----BEGIN PKCS7-----"));
        assert!(ProviderIndex::load(ldif.as_bytes(), None).is_ok());
        assert_eq!(
            ProviderIndex::load(b"\x30\x82\x01\x00", None).unwrap_err(),
            IndexError::NoSigner
        );
    }
}
