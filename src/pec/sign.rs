//! S/MIME signing of every message pecora emits (decisions.md 2): `multipart/signed;
//! protocol="application/pkcs7-signature"; micalg="sha-256"`, a detached CMS SignedData with
//! RSA/SHA-256, the signer certificate (and the configured chain) inside, and signed
//! attributes contentType, signingTime, messageDigest (plus the SMIMECapabilities OpenSSL adds).
//!
//! signingTime is the transaction instant passed in, never the system clock: the SignerInfo is
//! created with `CMS_PARTIAL`, the attribute is added before the content is
//! digested (`CMS_dataFinal`), and OpenSSL only adds
//! its own signingTime when none is present. With a fixed instant, key and content the
//! signature is deterministic (RSA PKCS#1 v1.5), which the tests rely on.

use std::ffi::{c_int, c_uint, c_void};
use std::ptr;

use foreign_types::ForeignType;
use openssl::asn1::Asn1Time;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::stack::Stack;
use openssl::x509::X509;

use super::mime;
use super::types::Instant;

/// Preamble of the multipart/signed body, as real providers write it.
pub const PREAMBLE: &str = "This is an S/MIME signed message";

/// Value of the top-level Content-Type for a given boundary.
pub fn content_type(boundary: &str) -> String {
    format!(
        "multipart/signed; protocol=\"application/pkcs7-signature\";\n micalg=\"sha-256\"; boundary=\"{boundary}\""
    )
}

/// Signing errors.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read signer material: {0}")]
    Pem(openssl::error::ErrorStack),
    #[error("the private key does not match the signer certificate")]
    KeyMismatch,
    #[error("the content to sign is not canonical (a bare LF or CR)")]
    NotCanonical,
    #[error("content too large to sign ({0} bytes)")]
    TooLarge(usize),
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// The provider's signing identity.
pub struct Signer {
    cert: X509,
    key: PKey<Private>,
    chain: Vec<X509>,
    /// Certificates this provider signed with before (a renewal): they still verify what
    /// they signed, such as registry checkpoints; nothing is signed with them.
    previous: Vec<X509>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.cert.subject_name())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

// OpenSSL functions the `openssl-sys` crate does not declare; libcrypto is linked by it.
unsafe extern "C" {
    fn CMS_add1_signer(
        cms: *mut openssl_sys::CMS_ContentInfo,
        signer: *mut openssl_sys::X509,
        pk: *mut openssl_sys::EVP_PKEY,
        md: *const openssl_sys::EVP_MD,
        flags: c_uint,
    ) -> *mut c_void;
    fn CMS_signed_add1_attr_by_NID(
        si: *mut c_void,
        nid: c_int,
        typ: c_int,
        bytes: *const c_void,
        len: c_int,
    ) -> c_int;
    fn CMS_dataInit(
        cms: *mut openssl_sys::CMS_ContentInfo,
        icont: *mut openssl_sys::BIO,
    ) -> *mut openssl_sys::BIO;
    fn CMS_dataFinal(cms: *mut openssl_sys::CMS_ContentInfo, bio: *mut openssl_sys::BIO) -> c_int;
}

/// True when the concatenation of `parts` is canonical CRLF ([`is_canonical`]).
pub fn parts_are_canonical(parts: &[&[u8]]) -> bool {
    let mut prev = 0u8;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        if (b == b'\n') != (prev == b'\r') {
            return false;
        }
        prev = b;
    }
    prev != b'\r'
}

const V_ASN1_GENERALIZEDTIME: c_int = 24;

impl Signer {
    /// A signer from parsed material; fails when the key does not belong to the certificate.
    pub fn new(cert: X509, key: PKey<Private>, chain: Vec<X509>) -> Result<Signer, SignError> {
        let public = cert.public_key()?;
        if !public.public_eq(&key) {
            return Err(SignError::KeyMismatch);
        }
        Ok(Signer { cert, key, chain, previous: Vec::new() })
    }

    /// A signer from PEM: certificate, private key and an optional bundle of chain
    /// certificates (intermediates, leaf first order not required).
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        chain_pem: Option<&[u8]>,
    ) -> Result<Signer, SignError> {
        let cert = X509::from_pem(cert_pem).map_err(SignError::Pem)?;
        let key = PKey::private_key_from_pem(key_pem).map_err(SignError::Pem)?;
        let chain = match chain_pem {
            Some(p) if !p.iter().all(u8::is_ascii_whitespace) => {
                X509::stack_from_pem(p).map_err(SignError::Pem)?
            }
            _ => Vec::new(),
        };
        Signer::new(cert, key, chain)
    }

    /// The signer certificate.
    pub fn certificate(&self) -> &X509 {
        &self.cert
    }

    /// The same signer, knowing the certificates it signed with before a renewal.
    pub fn with_previous(mut self, previous: Vec<X509>) -> Signer {
        self.previous = previous;
        self
    }

    /// Every certificate of ours that may have signed something we keep (registry
    /// checkpoints): the current one first, then the previous ones.
    pub fn own_certificates(&self) -> Vec<X509> {
        std::iter::once(self.cert.clone()).chain(self.previous.iter().cloned()).collect()
    }

    /// A 32-byte secret for `purpose`, derived from the private key (HMAC-SHA256 keyed with
    /// its DER encoding): every host holding the signing key derives the same one, and
    /// nobody else can. The outbox seals its rows with it (crate::store::seal).
    pub fn derive_secret(&self, purpose: &[u8]) -> Result<[u8; 32], SignError> {
        derive_secret(&self.key, purpose)
    }

    /// DER of a detached CMS SignedData over `content` (which must be canonical CRLF), SHA-256,
    /// with `signing_time` as the signingTime attribute.
    pub fn sign_detached(
        &self,
        content: &[u8],
        signing_time: &Instant,
    ) -> Result<Vec<u8>, SignError> {
        self.sign_detached_parts(&[content], signing_time)
    }

    /// [`Signer::sign_detached`] over the concatenation of `parts`, streamed into the digest
    /// piece by piece: a large embedded message is signed where it lies, never joined.
    pub fn sign_detached_parts(
        &self,
        parts: &[&[u8]],
        signing_time: &Instant,
    ) -> Result<Vec<u8>, SignError> {
        if !parts_are_canonical(parts) {
            return Err(SignError::NotCanonical);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        c_int::try_from(total).map_err(|_| SignError::TooLarge(total))?;
        let flags = CMSOptions::DETACHED | CMSOptions::BINARY | CMSOptions::PARTIAL;
        let mut certs = Stack::<X509>::new()?;
        for c in &self.chain {
            certs.push(c.clone())?;
        }
        let cms = CmsContentInfo::sign(
            None,
            None::<&PKeyRef<Private>>,
            if self.chain.is_empty() {
                None
            } else {
                Some(&certs)
            },
            None,
            flags,
        )?;
        let time = Asn1Time::from_unix(signing_time.timestamp())?;
        // RFC 5652 §11.3: UTCTime for 1950–2049, GeneralizedTime otherwise; ASN1_TIME_set
        // (behind from_unix) makes the same choice, so the type tag matches the content.
        let year = chrono::Datelike::year(&signing_time.naive_utc());
        let time_type = if (1950..2050).contains(&year) {
            openssl_sys::V_ASN1_UTCTIME
        } else {
            V_ASN1_GENERALIZEDTIME
        };
        // SAFETY: every pointer comes from a live owned openssl object (cms, cert, key, time)
        // or from OpenSSL itself (the SignerInfo, owned by `cms`); the data BIO borrows
        // `content`, which outlives it, and is freed before returning. Return values are
        // checked before use.
        unsafe {
            let si = CMS_add1_signer(
                cms.as_ptr(),
                self.cert.as_ptr(),
                self.key.as_ptr(),
                openssl_sys::EVP_sha256(),
                flags.bits(),
            );
            if si.is_null() {
                return Err(openssl::error::ErrorStack::get().into());
            }
            if CMS_signed_add1_attr_by_NID(
                si,
                openssl_sys::NID_pkcs9_signingTime,
                time_type,
                time.as_ptr() as *const c_void,
                -1,
            ) <= 0
            {
                return Err(openssl::error::ErrorStack::get().into());
            }
            // What CMS_final does with CMS_BINARY, the content written in pieces: the
            // digest BIO chain of a detached signature (ending in a null sink), then the
            // signature over the digest.
            let sink = CMS_dataInit(cms.as_ptr(), ptr::null_mut());
            if sink.is_null() {
                return Err(openssl::error::ErrorStack::get().into());
            }
            for part in parts {
                for chunk in part.chunks(1 << 20) {
                    // chunk.len() <= 1 MiB fits a c_int.
                    let n = openssl_sys::BIO_write(sink, chunk.as_ptr() as *const c_void, chunk.len() as c_int);
                    if n != chunk.len() as c_int {
                        openssl_sys::BIO_free_all(sink);
                        return Err(openssl::error::ErrorStack::get().into());
                    }
                }
            }
            openssl_sys::BIO_ctrl(sink, openssl_sys::BIO_CTRL_FLUSH, 0, ptr::null_mut());
            let ok = CMS_dataFinal(cms.as_ptr(), sink);
            openssl_sys::BIO_free_all(sink);
            if ok <= 0 {
                return Err(openssl::error::ErrorStack::get().into());
            }
        }
        Ok(cms.to_der()?)
    }
}

/// True when every LF is preceded by CR and every CR followed by LF.
pub fn is_canonical(data: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in data {
        if (b == b'\n') != (prev == b'\r') {
            return false;
        }
        prev = b;
    }
    prev != b'\r'
}

/// Starts a multipart/signed body: preamble and the opening delimiter. The signed content is
/// then appended by the caller; its start offset is the returned length.
pub fn begin(body: &mut Vec<u8>, boundary: &str) -> usize {
    body.extend_from_slice(PREAMBLE.as_bytes());
    body.extend_from_slice(b"\r\n\r\n--");
    body.extend_from_slice(boundary.as_bytes());
    body.extend_from_slice(b"\r\n");
    body.len()
}

/// Signs `body[content_start..]` (the MIME entity appended after [`begin`]) and appends the
/// signature part and the closing delimiter. The content is signed exactly as written, so it
/// must be canonical CRLF.
pub fn finish(
    body: &mut Vec<u8>,
    content_start: usize,
    boundary: &str,
    signer: &Signer,
    signing_time: &Instant,
) -> Result<(), SignError> {
    let der = signer.sign_detached(&body[content_start..], signing_time)?;
    push_signature(body, boundary, &der);
    Ok(())
}

/// Appends the signature part `der` and the closing delimiter of a multipart/signed body
/// (the end of [`finish`], for content signed in pieces).
pub fn push_signature(body: &mut Vec<u8>, boundary: &str, der: &[u8]) {
    body.extend_from_slice(b"\r\n--");
    body.extend_from_slice(boundary.as_bytes());
    body.extend_from_slice(
        b"\r\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\
Content-Description: S/MIME Cryptographic Signature\r\n\r\n",
    );
    body.extend_from_slice(&mime::base64_lines(der));
    body.extend_from_slice(b"\r\n--");
    body.extend_from_slice(boundary.as_bytes());
    body.extend_from_slice(b"--\r\n");
}

/// A complete multipart/signed body around `content` (a canonical CRLF MIME entity, headers
/// included): returns the top-level Content-Type value (LF-folded) and the body bytes.
pub fn multipart_signed(
    content: &[u8],
    boundary: &str,
    signer: &Signer,
    signing_time: &Instant,
) -> Result<(String, Vec<u8>), SignError> {
    let mut body = Vec::with_capacity(content.len() + 4096);
    let start = begin(&mut body, boundary);
    body.extend_from_slice(content);
    finish(&mut body, start, boundary, signer, signing_time)?;
    Ok((content_type(boundary), body))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier};
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed throwaway signer for unit tests.
    pub(crate) fn test_signer() -> Signer {
        let rsa = Rsa::generate(2048).unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "Posta Certificata Test")
            .unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(3650).unwrap())
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
        let san = SubjectAlternativeName::new()
            .email("posta-certificata@pec.example.it")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Signer::new(b.build(), key, vec![]).unwrap()
    }

    #[test]
    fn signature_is_deterministic_and_carries_our_signing_time() {
        let s = test_signer();
        let t = chrono::FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2024, 12, 5, 0, 2, 10)
            .unwrap();
        let a = s.sign_detached(b"hello\r\n", &t).unwrap();
        let b = s.sign_detached(b"hello\r\n", &t).unwrap();
        assert_eq!(a, b);
        // UTCTime 241204230210Z (the instant in UTC) is inside the DER.
        let needle = b"241204230210Z";
        assert!(a.windows(needle.len()).any(|w| w == needle));
        let t2 = t + chrono::Duration::seconds(1);
        assert_ne!(a, s.sign_detached(b"hello\r\n", &t2).unwrap());
    }

    #[test]
    fn rejects_non_canonical_content() {
        let s = test_signer();
        let t = chrono::Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .unwrap()
            .fixed_offset();
        assert!(matches!(
            s.sign_detached(b"a\nb", &t),
            Err(SignError::NotCanonical)
        ));
    }

    #[test]
    fn key_mismatch_is_refused() {
        let a = test_signer();
        let b = test_signer();
        assert!(matches!(
            Signer::new(a.cert.clone(), b.key.clone(), vec![]),
            Err(SignError::KeyMismatch)
        ));
    }
}

/// Key bytes wiped when dropped.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned pointer to a byte of our own buffer.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// [`Signer::derive_secret`] for a private key that signs nothing (a previous signing key,
/// whose outbox seals must still verify: crate::store::seal).
pub fn derive_secret(key: &PKeyRef<Private>, purpose: &[u8]) -> Result<[u8; 32], SignError> {
    let der = zeroize_on_drop(key.private_key_to_der()?);
    let mac_key = PKey::hmac(&der.0)?;
    let mut mac = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &mac_key)?;
    mac.update(purpose)?;
    let out = mac.sign_to_vec()?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&out[..32]);
    Ok(secret)
}

fn zeroize_on_drop(v: Vec<u8>) -> Wiped {
    Wiped(v)
}
