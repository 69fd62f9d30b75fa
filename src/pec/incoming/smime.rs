//! The S/MIME layer of the verifier (pec-format.md §1.5, §7.1; decisions.md 15): finding the
//! signed content and the detached CMS signature of a top-level multipart/signed, checking
//! the signature, reading the signingTime, checking the signer certificate's validity
//! period, its chain to a configured CA bundle and its revocation by configured CRLs, and
//! opening the opaque signed-data of the signed index (`.p7m`, §6). Pure: bytes and an
//! instant in, facts out; never panics on garbage.
//!
//! The signed content is taken byte-exact between the boundary delimiters and verified as it
//! is and, if that fails, canonicalised to CRLF as S/MIME requires (real messages are stored
//! with LF or mixed line ends). What is parsed afterwards is exactly what verified.

use std::borrow::Cow;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use foreign_types::ForeignTypeRef;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags, Pkcs7Ref};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{CrlStatus, X509, X509Crl, X509Ref, X509StoreContext, X509VerifyResult};

/// Why the S/MIME layer could not produce a verified signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmimeError {
    #[error("its Content-Type is {0}, not multipart/signed")]
    NotMultipartSigned(String),
    #[error("its Content-Type is {0}, not application/pkcs7-mime")]
    NotPkcs7Mime(String),
    #[error("its header has {0} Content-Type fields")]
    DuplicateContentType(usize),
    #[error("the multipart/signed has no boundary parameter")]
    NoBoundary,
    #[error("the multipart/signed body holds no part delimited by its boundary")]
    NoSignedContent,
    #[error("the multipart/signed body has no signature part")]
    NoSignaturePart,
    #[error("the multipart/signed body has {0} parts instead of 2")]
    ExtraParts(usize),
    #[error("the signature part is {0:?}, not application/pkcs7-signature")]
    WrongSignatureType(String),
    #[error("the signature part cannot be decoded: {0}")]
    SignatureEncoding(String),
    #[error("the signature is not a readable CMS/PKCS#7 structure")]
    SignatureUnreadable,
    #[error("the CMS structure is not signed-data")]
    NotSignedData,
    #[error("the CMS structure has {0} signers instead of 1")]
    SignerCount(usize),
    #[error("the signature carries no signer certificate")]
    NoSignerCertificate,
    #[error("the signature does not match the signed content")]
    Mismatch,
    #[error("the signed-data carries no content")]
    NoContent,
    #[error("cannot set up signature verification: {0}")]
    Internal(String),
}

/// The parts of a top-level multipart/signed, as found in the raw bytes.
#[derive(Debug, Clone)]
pub struct SignedParts<'a> {
    /// The first body part, byte-exact as stored (headers and body of the signed entity).
    pub content: &'a [u8],
    /// The signature, decoded to DER.
    pub signature_der: Vec<u8>,
}

/// The facts of a verified CMS signature.
#[derive(Debug, Clone)]
pub struct SignatureInfo {
    /// The signer certificate.
    pub signer: X509,
    /// Every certificate embedded in the CMS (the signer included): the untrusted
    /// intermediates for chain building.
    pub certificates: Vec<X509>,
    /// True when the signature verified only after canonicalising the content to CRLF.
    pub canonicalised: bool,
}

/// SHA-1 of a certificate's DER in uppercase hex, as `providerCertificateHash` lists it.
pub fn certificate_sha1(cert: &X509Ref) -> String {
    cert.digest(MessageDigest::sha1())
        .map(hex::encode_upper)
        .unwrap_or_default()
}

/// A verified top-level multipart/signed message.
#[derive(Debug, Clone)]
pub struct VerifiedSmime<'a> {
    pub signature: SignatureInfo,
    /// The content exactly as it verified (the raw part, or its CRLF canonical form).
    pub signed_content: Cow<'a, [u8]>,
}

// ---------------------------------------------------------------------------------------
// Raw MIME helpers
// ---------------------------------------------------------------------------------------

/// Splits an entity into its header block and the offset where the body starts. The header
/// ends at the first empty line (CRLF or LF); without one the whole input is header.
pub fn split_header(raw: &[u8]) -> (&[u8], usize) {
    let mut pos = 0;
    while pos < raw.len() {
        let end = match raw[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => raw.len(),
        };
        let line = &raw[pos..end];
        if line == b"\n" || line == b"\r\n" {
            return (&raw[..pos], end);
        }
        pos = end;
    }
    (raw, raw.len())
}

/// The header fields of a header block, unfolded, in order: (name, value). Names keep their
/// case (compare with `eq_ignore_ascii_case`); values are trimmed, with folding whitespace
/// joined. Bytes that are not UTF-8 are replaced. Lines without a colon are skipped.
pub fn header_fields(block: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            let name = name.trim_end();
            if !name.is_empty() && !name.contains(' ') {
                out.push((name.to_string(), value.trim().to_string()));
            }
        }
    }
    out
}

/// Every value of a header field, by case-insensitive name.
pub fn header_values<'h>(fields: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The first value of a header field, by case-insensitive name.
pub fn header_value<'h>(fields: &'h [(String, String)], name: &str) -> Option<&'h str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses a Content-Type value into its lowercase `type/subtype` and its parameters
/// (lowercase names, unquoted values).
pub fn content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            pieces.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    pieces.push(cur);
    let mime = pieces
        .first()
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let params = pieces
        .iter()
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (mime, params)
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The body parts of a multipart body delimited by `boundary`, as byte ranges relative to
/// `body`. Each range excludes the line break that belongs to the following delimiter
/// (RFC 2046 §5.1.1). A part not closed by a delimiter runs to the end of the body.
pub fn multipart_ranges(body: &[u8], boundary: &str) -> Vec<std::ops::Range<usize>> {
    let dash: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let end = match body[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => body.len(),
        };
        let line = &body[pos..end];
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if let Some(rest) = trimmed.strip_prefix(dash.as_slice()) {
            let (close, rest) = match rest.strip_prefix(b"--") {
                Some(r) => (true, r),
                None => (false, rest),
            };
            if rest.iter().all(|b| *b == b' ' || *b == b'\t') {
                if let Some(s) = start.take() {
                    // The line break before the delimiter belongs to the delimiter.
                    let mut e = pos.max(s);
                    if e > s && body[e - 1] == b'\n' {
                        e -= 1;
                        if e > s && body[e - 1] == b'\r' {
                            e -= 1;
                        }
                    }
                    parts.push(s..e);
                }
                if close {
                    return parts;
                }
                start = Some(end);
            }
        }
        pos = end;
    }
    if let Some(s) = start {
        parts.push(s..body.len());
    }
    parts
}

/// Converts every bare LF to CRLF (and leaves CRLF alone): the S/MIME canonical form.
pub fn canonical_crlf(data: &[u8]) -> Cow<'_, [u8]> {
    let needs = data
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'));
    if !needs {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 40);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    Cow::Owned(out)
}

fn decode_base64_lenient(text: &[u8]) -> Result<Vec<u8>, String> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if clean.is_empty() {
        return Err("the part is empty".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
        .map_err(|e| format!("bad base64 ({e})"))
}

// ---------------------------------------------------------------------------------------
// multipart/signed
// ---------------------------------------------------------------------------------------

/// Finds the top-level multipart/signed and returns its signed content (byte-exact) and
/// decoded signature. Does not verify anything. Exactly two body parts (RFC 1847 §2.1): a
/// third part would be content outside the signature that a mail reader may show.
pub fn split_signed(raw: &[u8]) -> Result<SignedParts<'_>, SmimeError> {
    let (head, body_at) = split_header(raw);
    let fields = header_fields(head);
    let types = header_values(&fields, "Content-Type");
    if types.len() > 1 {
        return Err(SmimeError::DuplicateContentType(types.len()));
    }
    let (mime, params) = content_type(types.first().copied().unwrap_or(""));
    if mime != "multipart/signed" {
        return Err(SmimeError::NotMultipartSigned(if mime.is_empty() {
            "absent (text/plain)".into()
        } else {
            mime
        }));
    }
    let boundary = param(&params, "boundary")
        .filter(|b| !b.is_empty())
        .ok_or(SmimeError::NoBoundary)?;
    let body = &raw[body_at..];
    let ranges = multipart_ranges(body, boundary);
    let first = ranges.first().ok_or(SmimeError::NoSignedContent)?.clone();
    let second = ranges.get(1).ok_or(SmimeError::NoSignaturePart)?.clone();
    if ranges.len() > 2 {
        return Err(SmimeError::ExtraParts(ranges.len()));
    }
    let sig_part = &body[second];
    let (sig_head, sig_body_at) = split_header(sig_part);
    let sig_fields = header_fields(sig_head);
    let (sig_type, _) = content_type(header_value(&sig_fields, "Content-Type").unwrap_or(""));
    if sig_type != "application/pkcs7-signature" && sig_type != "application/x-pkcs7-signature" {
        return Err(SmimeError::WrongSignatureType(sig_type));
    }
    let cte = header_value(&sig_fields, "Content-Transfer-Encoding")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let sig_body = &sig_part[sig_body_at..];
    let signature_der = if cte != "base64" && sig_body.first() == Some(&0x30) {
        sig_body.to_vec()
    } else {
        decode_base64_lenient(sig_body).map_err(SmimeError::SignatureEncoding)?
    };
    Ok(SignedParts {
        content: &body[first],
        signature_der,
    })
}

fn empty_store() -> Result<(Stack<X509>, X509Store), SmimeError> {
    let stack = Stack::new().map_err(|e| SmimeError::Internal(e.to_string()))?;
    let store = X509StoreBuilder::new()
        .map_err(|e| SmimeError::Internal(e.to_string()))?
        .build();
    Ok((stack, store))
}

fn parse_signed_data(der: &[u8]) -> Result<Pkcs7, SmimeError> {
    let p7 = Pkcs7::from_der(der).map_err(|_| SmimeError::SignatureUnreadable)?;
    if p7.signed().is_none() {
        return Err(SmimeError::NotSignedData);
    }
    Ok(p7)
}

/// The one signer certificate of `p7` (looked up among the embedded certificates and
/// `extra`). PEC messages and the index carry exactly one SignerInfo.
fn the_signer(p7: &Pkcs7Ref, extra: &Stack<X509>) -> Result<X509, SmimeError> {
    let count = signer_info_count(p7);
    if count != 1 {
        return Err(SmimeError::SignerCount(count));
    }
    let signers = p7
        .signers(extra, Pkcs7Flags::empty())
        .map_err(|_| SmimeError::NoSignerCertificate)?;
    signers
        .iter()
        .next()
        .map(|c| c.to_owned())
        .ok_or(SmimeError::NoSignerCertificate)
}

fn signature_facts(p7: &Pkcs7Ref, signer: X509, canonicalised: bool) -> SignatureInfo {
    let certificates = p7
        .signed()
        .and_then(|s| s.certificates())
        .map(|s| s.iter().map(|c| c.to_owned()).collect())
        .unwrap_or_default();
    SignatureInfo {
        signer,
        certificates,
        canonicalised,
    }
}

/// Verifies a detached CMS signature (DER) over `content`: first as given, then
/// canonicalised to CRLF. Only the signature is checked here (no index, no chain, no time).
pub fn verify_detached(signature_der: &[u8], content: &[u8]) -> Result<SignatureInfo, SmimeError> {
    let p7 = parse_signed_data(signature_der)?;
    let (certs, store) = empty_store()?;
    // A signer certificate must be present before we call it a mismatch.
    let signer = the_signer(&p7, &certs)?;
    // OpenSSL 3.0's PKCS7_verify leaks a copy of the content BIO when a digest algorithm
    // of the SignedData cannot be set up (found by fuzzing: a remote sender could grow the
    // daemon by some hundred bytes per message). Such a signature could not verify anyway.
    if !digests_usable(&p7) {
        return Err(SmimeError::Mismatch);
    }
    let flags = Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY;
    if p7
        .verify(&certs, &store, Some(content), None, flags)
        .is_ok()
    {
        return Ok(signature_facts(&p7, signer, false));
    }
    let canonical = canonical_crlf(content);
    if matches!(canonical, Cow::Owned(_))
        && p7
            .verify(&certs, &store, Some(&canonical), None, flags)
            .is_ok()
    {
        return Ok(signature_facts(&p7, signer, true));
    }
    Err(SmimeError::Mismatch)
}

/// Finds the top-level multipart/signed and verifies its signature over the signed content.
pub fn verify_multipart_signed(raw: &[u8]) -> Result<VerifiedSmime<'_>, SmimeError> {
    let parts = split_signed(raw)?;
    let signature = verify_detached(&parts.signature_der, parts.content)?;
    let signed_content = if signature.canonicalised {
        Cow::Owned(canonical_crlf(parts.content).into_owned())
    } else {
        Cow::Borrowed(parts.content)
    };
    Ok(VerifiedSmime {
        signature,
        signed_content,
    })
}

// ---------------------------------------------------------------------------------------
// Opaque signed-data (.p7m)
// ---------------------------------------------------------------------------------------

/// Reads an opaque signed-data in any usual wrapping: DER, PEM (`PKCS7`/`CMS`), bare
/// base64, or an S/MIME `application/(x-)pkcs7-mime` message.
fn read_opaque(data: &[u8]) -> Result<Pkcs7, SmimeError> {
    let start = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(data.len());
    let trimmed = &data[start..];
    if trimmed.first() == Some(&0x30) {
        return parse_signed_data(trimmed);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let text = String::from_utf8_lossy(trimmed);
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = decode_base64_lenient(b64.as_bytes()).map_err(SmimeError::SignatureEncoding)?;
        return parse_signed_data(&der);
    }
    // An S/MIME message: a header with Content-Type application/(x-)pkcs7-mime.
    let (head, body_at) = split_header(data);
    let fields = header_fields(head);
    if body_at < data.len()
        && let Some(ct) = header_value(&fields, "Content-Type")
    {
        let (mime, _) = content_type(ct);
        if mime != "application/pkcs7-mime" && mime != "application/x-pkcs7-mime" {
            return Err(SmimeError::NotPkcs7Mime(mime));
        }
        let body = &data[body_at..];
        let cte = header_value(&fields, "Content-Transfer-Encoding")
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let der = if cte != "base64" && body.first() == Some(&0x30) {
            body.to_vec()
        } else {
            decode_base64_lenient(body).map_err(SmimeError::SignatureEncoding)?
        };
        return parse_signed_data(&der);
    }
    let der = decode_base64_lenient(trimmed).map_err(SmimeError::SignatureEncoding)?;
    parse_signed_data(&der)
}

/// Verifies an opaque signed-data and returns its content and signature facts. `extra`
/// certificates are searched for the signer besides those inside the CMS. Only the
/// signature is checked (no chain, no time).
pub fn verify_opaque(data: &[u8], extra: &[X509]) -> Result<(Vec<u8>, SignatureInfo), SmimeError> {
    let p7 = read_opaque(data)?;
    let (mut certs, store) = empty_store()?;
    for c in extra {
        certs
            .push(c.clone())
            .map_err(|e| SmimeError::Internal(e.to_string()))?;
    }
    let signer = the_signer(&p7, &certs)?;
    if is_detached(&p7) {
        return Err(SmimeError::NoContent);
    }
    let mut out = Vec::new();
    p7.verify(
        &certs,
        &store,
        None,
        Some(&mut out),
        Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY,
    )
    .map_err(|_| SmimeError::Mismatch)?;
    Ok((out, signature_facts(&p7, signer, false)))
}

const PKCS7_OP_GET_DETACHED_SIGNATURE: std::os::raw::c_int = 2;

unsafe extern "C" {
    // PKCS7_get_detached() is a macro over PKCS7_ctrl, which openssl-sys does not bind; it
    // is part of libcrypto's stable API (1.0 to 3.x).
    fn PKCS7_ctrl(
        p7: *mut openssl_sys::PKCS7,
        cmd: std::os::raw::c_int,
        larg: std::os::raw::c_long,
        parg: *mut std::os::raw::c_char,
    ) -> std::os::raw::c_long;
}

fn is_detached(p7: &Pkcs7Ref) -> bool {
    // SAFETY: PKCS7_ctrl with PKCS7_OP_GET_DETACHED_SIGNATURE only reads the structure (it
    // is signed-data, checked by parse_signed_data); p7 is a valid PKCS7 owned by the caller.
    unsafe {
        PKCS7_ctrl(
            p7.as_ptr(),
            PKCS7_OP_GET_DETACHED_SIGNATURE,
            0,
            std::ptr::null_mut(),
        ) == 1
    }
}

// ---------------------------------------------------------------------------------------
// signingTime and certificate time checks
// ---------------------------------------------------------------------------------------

/// Converts an ASN.1 time to UTC.
pub fn asn1_to_utc(t: &Asn1TimeRef) -> Option<DateTime<Utc>> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    DateTime::from_timestamp(i64::from(d.days) * 86_400 + i64::from(d.secs), 0)
}

fn signer_info_count(p7: &Pkcs7Ref) -> usize {
    // SAFETY: p7 is a live PKCS7; PKCS7_get_signer_info returns NULL for non-signed types
    // or a stack owned by p7, only read here.
    unsafe {
        let infos = openssl_sys::PKCS7_get_signer_info(p7.as_ptr());
        if infos.is_null() {
            return 0;
        }
        usize::try_from(openssl_sys::OPENSSL_sk_num(
            infos as *const openssl_sys::OPENSSL_STACK,
        ))
        .unwrap_or(0)
    }
}

/// Whether every digest algorithm the SignedData lists (`digestAlgorithms`, what
/// PKCS7_dataInit sets up before any signature is checked) is one this OpenSSL can compute.
fn digests_usable(p7: &Pkcs7Ref) -> bool {
    let Some(signed) = p7.signed() else {
        return false;
    };
    // SAFETY: `signed` is the live signed-data of `p7`; md_algs is a stack owned by it (or
    // NULL), each element an X509_ALGOR whose OID X509_ALGOR_get0 only reads. Nothing is
    // kept beyond this call.
    let nids: Vec<i32> = unsafe {
        let algs = (*signed.as_ptr()).md_algs;
        if algs.is_null() {
            return true;
        }
        let stack = algs as *const openssl_sys::OPENSSL_STACK;
        (0..openssl_sys::OPENSSL_sk_num(stack))
            .map(|i| {
                let alg = openssl_sys::OPENSSL_sk_value(stack, i) as *const openssl_sys::X509_ALGOR;
                if alg.is_null() {
                    return openssl_sys::NID_undef;
                }
                let mut oid: *const openssl_sys::ASN1_OBJECT = std::ptr::null();
                openssl_sys::X509_ALGOR_get0(&mut oid, std::ptr::null_mut(), std::ptr::null_mut(), alg);
                if oid.is_null() {
                    openssl_sys::NID_undef
                } else {
                    openssl_sys::OBJ_obj2nid(oid)
                }
            })
            .collect()
    };
    nids.into_iter().all(|nid| {
        MessageDigest::from_nid(openssl::nid::Nid::from_raw(nid))
            .is_some_and(|md| openssl::hash::Hasher::new(md).is_ok())
    })
}

/// The CMS `signingTime` signed attribute of the first signer, if present.
pub fn signing_time(p7: &Pkcs7Ref) -> Option<DateTime<Utc>> {
    // SAFETY: every pointer comes from OpenSSL accessors on the live `p7` and is checked
    // for NULL before use; nothing is freed or kept beyond this call. The ASN1_TYPE's
    // string is an ASN1_TIME exactly when its type is UTCTime or GeneralizedTime.
    unsafe {
        let infos = openssl_sys::PKCS7_get_signer_info(p7.as_ptr());
        if infos.is_null() {
            return None;
        }
        let stack = infos as *const openssl_sys::OPENSSL_STACK;
        if openssl_sys::OPENSSL_sk_num(stack) < 1 {
            return None;
        }
        let si = openssl_sys::OPENSSL_sk_value(stack, 0) as *mut openssl_sys::PKCS7_SIGNER_INFO;
        if si.is_null() {
            return None;
        }
        let attr =
            openssl_sys::PKCS7_get_signed_attribute(si as _, openssl_sys::NID_pkcs9_signingTime);
        if attr.is_null() {
            return None;
        }
        let kind = (*attr).type_;
        if kind != openssl_sys::V_ASN1_UTCTIME && kind != openssl_sys::V_ASN1_GENERALIZEDTIME {
            return None;
        }
        let s = (*attr).value.asn1_string;
        if s.is_null() {
            return None;
        }
        asn1_to_utc(Asn1TimeRef::from_ptr(s as *mut openssl_sys::ASN1_TIME))
    }
}

/// The signingTime of the detached signature of a top-level multipart/signed, without
/// verifying anything.
pub fn multipart_signing_time(raw: &[u8]) -> Option<DateTime<Utc>> {
    let parts = split_signed(raw).ok()?;
    let p7 = parse_signed_data(&parts.signature_der).ok()?;
    signing_time(&p7)
}

/// The validity period of a certificate, in UTC.
pub fn validity_period(cert: &X509Ref) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    Some((
        asn1_to_utc(cert.not_before())?,
        asn1_to_utc(cert.not_after())?,
    ))
}

// ---------------------------------------------------------------------------------------
// Chain validation and revocation
// ---------------------------------------------------------------------------------------

/// Trust anchors for the signer's chain (decisions.md 15): the configured CA bundle
/// (`index.ca_bundle`: AgID's in production, the lab CA in tests) and CRLs (`index.crls`).
/// Empty means no chain and no revocation check.
#[derive(Clone, Default)]
pub struct TrustAnchors {
    /// Every certificate of the bundle is a trust anchor (a root or an intermediate such as
    /// "AgID CA1": partial chains are accepted).
    pub cas: Vec<X509>,
    /// Shared: a CRL cannot be duplicated, and a big one need not be.
    pub crls: Vec<std::sync::Arc<X509Crl>>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field(
                "cas",
                &self
                    .cas
                    .iter()
                    .map(|c| {
                        c.subject_name()
                            .to_der()
                            .map(hex::encode)
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>(),
            )
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl TrustAnchors {
    /// Adds the CA certificates of a bundle: PEM (one or more) or a single DER certificate.
    pub fn add_ca_bundle(&mut self, data: &[u8]) -> Result<(), String> {
        match X509::stack_from_pem(data).ok().filter(|s| !s.is_empty()) {
            Some(c) => self.cas.extend(c),
            None => self.cas.push(
                X509::from_der(data)
                    .map_err(|_| "no certificate in the CA bundle (PEM or DER)".to_string())?,
            ),
        }
        Ok(())
    }

    /// Adds the CRLs of a file: one or more PEM CRLs, or one DER CRL.
    pub fn add_crls(&mut self, data: &[u8]) -> Result<(), String> {
        const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
        let mut found = 0;
        let mut rest = data;
        while let Some(at) = rest.windows(BEGIN.len()).position(|w| w == BEGIN) {
            let block = &rest[at..];
            const END: &[u8] = b"-----END X509 CRL-----";
            let end = block
                .windows(END.len())
                .position(|w| w == END)
                .ok_or("a PEM CRL without its END line")?
                + END.len();
            self.crls.push(
                X509Crl::from_pem(&block[..end])
                    .map_err(|e| format!("a PEM CRL cannot be read: {e}"))?
                    .into(),
            );
            found += 1;
            rest = &block[end..];
        }
        if found == 0 {
            self.crls.push(
                X509Crl::from_der(data)
                    .map_err(|_| "not a CRL (PEM or DER)".to_string())?
                    .into(),
            );
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.cas.is_empty() && self.crls.is_empty()
    }
}

/// Why the signer's chain or revocation status failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// No chain to the CA bundle at the instant checked.
    Chain(String),
    /// A certificate of the chain is on a CRL, revoked at or before the instant.
    Revoked {
        subject: String,
        serial: String,
        since: DateTime<Utc>,
    },
    /// CRLs are configured but none covers the signer certificate's issuer.
    NoCrl { issuer: String },
    /// The covering CRL was already superseded (nextUpdate) at the instant.
    CrlOutOfDate {
        issuer: String,
        next_update: DateTime<Utc>,
    },
    /// OpenSSL could not set up the check.
    Internal(String),
}

/// A distinguished name in one line, for messages.
pub fn name_text(name: &openssl::x509::X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?").to_string();
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    parts.join(", ")
}

/// Checks the signer's chain to the CA bundle at `at` (when a bundle is configured) and the
/// revocation status of the chain (when CRLs are configured). `untrusted` are the CMS's
/// embedded certificates.
pub fn check_trust(
    signer: &X509Ref,
    untrusted: &[X509],
    anchors: &TrustAnchors,
    at: DateTime<Utc>,
) -> Result<(), TrustError> {
    let chain = if anchors.cas.is_empty() {
        vec![signer.to_owned()]
    } else {
        verify_chain(signer, untrusted, anchors, at)?
    };
    if !anchors.crls.is_empty() {
        check_revocation(&chain, &anchors.crls, at)?;
    }
    Ok(())
}

fn verify_chain(
    signer: &X509Ref,
    untrusted: &[X509],
    anchors: &TrustAnchors,
    at: DateTime<Utc>,
) -> Result<Vec<X509>, TrustError> {
    let internal = |e: openssl::error::ErrorStack| {
        TrustError::Internal(format!("cannot set up chain validation: {e}"))
    };
    let mut builder = X509StoreBuilder::new().map_err(internal)?;
    for ca in &anchors.cas {
        builder.add_cert(ca.clone()).map_err(internal)?;
    }
    let mut param = X509VerifyParam::new().map_err(internal)?;
    param.set_time(at.timestamp() as _);
    param
        .set_flags(X509VerifyFlags::PARTIAL_CHAIN)
        .map_err(internal)?;
    builder.set_param(&param).map_err(internal)?;
    let store = builder.build();
    let mut stack = Stack::new().map_err(internal)?;
    for c in untrusted {
        stack.push(c.clone()).map_err(internal)?;
    }
    let mut ctx = X509StoreContext::new().map_err(internal)?;
    let outcome = ctx
        .init(&store, signer, &stack, |c| {
            if c.verify_cert()? {
                Ok(Ok(c
                    .chain()
                    .map(|s| s.iter().map(|x| x.to_owned()).collect::<Vec<_>>())
                    .unwrap_or_default()))
            } else {
                let who = c
                    .current_cert()
                    .map(|x| name_text(x.subject_name()))
                    .unwrap_or_default();
                Ok(Err((c.error(), c.error_depth(), who)))
            }
        })
        .map_err(internal)?;
    match outcome {
        Ok(chain) if !chain.is_empty() => Ok(chain),
        Ok(_) => Err(TrustError::Chain("OpenSSL returned an empty chain".into())),
        Err((e, depth, who)) => Err(TrustError::Chain(describe(e, depth, &who))),
    }
}

fn describe(e: X509VerifyResult, depth: u32, who: &str) -> String {
    let at = if who.is_empty() {
        format!("depth {depth}")
    } else {
        format!("depth {depth}, {who}")
    };
    format!("{} ({at})", e.error_string())
}

/// Revocation by the configured CRLs at `at`: for every certificate of the chain but a
/// trust anchor, the CRLs issued by its issuer (and signed by the issuer's key, when the
/// issuer certificate is in the validated chain) are looked up. The signer certificate must
/// be covered by at least one CRL current at `at`; a certificate revoked after `at` was still
/// good at `at` (an archived message signed before the revocation).
fn check_revocation(
    chain: &[X509],
    crls: &[std::sync::Arc<X509Crl>],
    at: DateTime<Utc>,
) -> Result<(), TrustError> {
    for (i, cert) in chain.iter().enumerate() {
        let issuer = chain.get(i + 1);
        if issuer.is_none() && i > 0 {
            break; // the trust anchor itself
        }
        let covering: Vec<&std::sync::Arc<X509Crl>> = crls
            .iter()
            .filter(|crl| {
                crl.issuer_name()
                    .try_cmp(cert.issuer_name())
                    .is_ok_and(|o| o.is_eq())
            })
            .filter(|crl| match issuer {
                Some(iss) => iss
                    .public_key()
                    .ok()
                    .and_then(|k| crl.verify(&k).ok())
                    .unwrap_or(false),
                None => true,
            })
            .collect();
        if covering.is_empty() {
            if i == 0 {
                return Err(TrustError::NoCrl {
                    issuer: name_text(cert.issuer_name()),
                });
            }
            continue;
        }
        let mut current = false;
        let mut latest_next = None;
        for crl in &covering {
            let next = crl.next_update().and_then(asn1_to_utc);
            if next.is_none_or(|n| n >= at) {
                current = true;
            } else {
                latest_next = latest_next.max(next);
            }
            if let CrlStatus::Revoked(r) = crl.get_by_cert(cert) {
                let since = asn1_to_utc(r.revocation_date()).unwrap_or(DateTime::<Utc>::MIN_UTC);
                if since <= at {
                    let serial = r
                        .serial_number()
                        .to_bn()
                        .ok()
                        .and_then(|b| b.to_hex_str().ok())
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    return Err(TrustError::Revoked {
                        subject: name_text(cert.subject_name()),
                        serial,
                        since,
                    });
                }
            }
        }
        if !current {
            return Err(TrustError::CrlOutOfDate {
                issuer: name_text(cert.issuer_name()),
                next_update: latest_next.unwrap_or(DateTime::<Utc>::MIN_UTC),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_ranges_exclude_the_delimiter_line_break() {
        let body = b"preamble\r\n--b\r\nA: 1\r\n\r\nx\r\n--b\nsig\n--b--\r\nepilogue";
        let r = multipart_ranges(body, "b");
        assert_eq!(r.len(), 2);
        assert_eq!(&body[r[0].clone()], b"A: 1\r\n\r\nx");
        assert_eq!(&body[r[1].clone()], b"sig");
        // An unclosed part runs to the end.
        let r = multipart_ranges(b"--b\nonly", "b");
        assert_eq!(r, vec![4..8]);
        assert!(multipart_ranges(b"no delimiter here", "b").is_empty());
        // A line that merely starts with the boundary is not a delimiter.
        let r = multipart_ranges(b"--b\nx\n--bx\ny\n--b--", "b");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn crlf_canonicalisation() {
        assert_eq!(&*canonical_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert!(matches!(canonical_crlf(b"a\r\nb"), Cow::Borrowed(_)));
        assert_eq!(&*canonical_crlf(b"\n"), b"\r\n");
    }

    #[test]
    fn content_type_parameters() {
        let (m, p) = content_type(
            "Multipart/Signed; protocol=\"application/x-pkcs7-signature\"; micalg=sha1; boundary=\"--a;b\"",
        );
        assert_eq!(m, "multipart/signed");
        assert_eq!(param(&p, "boundary"), Some("--a;b"));
        assert_eq!(param(&p, "micalg"), Some("sha1"));
    }

    #[test]
    fn headers_unfold_and_match_case_insensitively() {
        let f = header_fields(b"X-Tiporicevuta: breve\r\nContent-Type: multipart/signed;\r\n\tboundary=x\r\nx-tiporicevuta: completa\r\n");
        assert_eq!(header_value(&f, "x-tiporicevuta"), Some("breve"));
        assert_eq!(header_values(&f, "X-TIPORICEVUTA"), ["breve", "completa"]);
        assert_eq!(
            header_value(&f, "content-type"),
            Some("multipart/signed; boundary=x")
        );
    }

    #[test]
    fn structural_errors_are_named() {
        let one =
            b"Content-Type: multipart/signed; boundary=q\r\n\r\n--q\r\nA: b\r\n\r\nx\r\n--q--\r\n";
        assert_eq!(split_signed(one).err(), Some(SmimeError::NoSignaturePart));
        let three = b"Content-Type: multipart/signed; boundary=q\r\n\r\n--q\r\nA: b\r\n\r\nx\r\n--q\r\nContent-Type: application/pkcs7-signature\r\n\r\nMAA=\r\n--q\r\n\r\nextra\r\n--q--\r\n";
        assert_eq!(split_signed(three).err(), Some(SmimeError::ExtraParts(3)));
        let two_types =
            b"Content-Type: text/plain\r\nContent-Type: multipart/signed; boundary=q\r\n\r\n";
        assert_eq!(
            split_signed(two_types).err(),
            Some(SmimeError::DuplicateContentType(2))
        );
        assert!(matches!(
            split_signed(b"Subject: x\r\n\r\nhi").err(),
            Some(SmimeError::NotMultipartSigned(_))
        ));
        assert_eq!(
            split_signed(b"Content-Type: multipart/signed\r\n\r\n").err(),
            Some(SmimeError::NoBoundary)
        );
        let wrong = b"Content-Type: multipart/signed; boundary=q\r\n\r\n--q\r\n\r\nx\r\n--q\r\nContent-Type: text/plain\r\n\r\nsig\r\n--q--\r\n";
        assert_eq!(
            split_signed(wrong).err(),
            Some(SmimeError::WrongSignatureType("text/plain".into()))
        );
        let bad64 = b"Content-Type: multipart/signed; boundary=q\r\n\r\n--q\r\n\r\nx\r\n--q\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nMII...njA==\r\n--q--\r\n";
        assert!(matches!(
            split_signed(bad64).err(),
            Some(SmimeError::SignatureEncoding(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for g in [
            &b""[..],
            b"\x00\xff",
            b"Content-Type: multipart/signed\r\n\r\n",
            b"Content-Type: multipart/signed; boundary=q\r\n\r\n--q\r\nx",
        ] {
            assert!(verify_multipart_signed(g).is_err());
            assert!(verify_opaque(g, &[]).is_err());
            assert!(multipart_signing_time(g).is_none());
        }
        assert_eq!(
            verify_detached(b"\x30\x03\x02\x01\x01", b"x").err(),
            Some(SmimeError::SignatureUnreadable)
        );
    }

    #[test]
    fn crl_files_hold_one_or_more_crls() {
        let mut t = TrustAnchors::default();
        assert!(t.add_crls(b"not a crl").is_err());
        assert!(t.add_crls(b"-----BEGIN X509 CRL-----\nAAAA\n").is_err());
        assert!(t.add_ca_bundle(b"junk").is_err());
        assert!(t.is_empty());
    }
}
