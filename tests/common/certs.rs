//! Certificates made here for the tests that need a PKI of their own (tests/engine_build.rs,
//! tests/verify_trust.rs): CAs, and provider signing certificates with the profile of
//! pec-format.md §7.2 (KeyUsage critical digitalSignature, SKI, AKI, SAN rfc822Name, no
//! BasicConstraints). Validity is given in seconds since the epoch.
#![allow(dead_code)]

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509Name, X509NameBuilder};

pub fn name(cn: &str) -> X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_text("C", "IT").unwrap();
    n.append_entry_by_text("O", "Gestore di Prova S.p.A.")
        .unwrap();
    n.append_entry_by_text("CN", cn).unwrap();
    n.build()
}

pub fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

pub fn serial(n: u32) -> Asn1Integer {
    BigNum::from_u32(n).unwrap().to_asn1_integer().unwrap()
}

pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// A CA certificate, self-signed when `issuer` is None.
pub fn ca(cn: &str, issuer: Option<&Ca>, serial_no: u32, from: i64, to: i64) -> Ca {
    let k = key();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial(serial_no)).unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(issuer.map_or(&name(cn), |i| i.cert.subject_name()))
        .unwrap();
    b.set_pubkey(&k).unwrap();
    b.set_not_before(&Asn1Time::from_unix(from).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(to).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some(i) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&i.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    b.sign(issuer.map_or(&k, |i| &i.key), MessageDigest::sha256())
        .unwrap();
    Ca {
        cert: b.build(),
        key: k,
    }
}

/// A provider signing certificate (§7.2 profile) named `cn`, for the mailbox `email`.
pub fn leaf(issuer: &Ca, serial_no: u32, cn: &str, email: &str, from: i64, to: i64) -> (X509, PKey<Private>) {
    let k = key();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial(serial_no)).unwrap();
    b.set_subject_name(&name(cn))
        .unwrap();
    b.set_issuer_name(issuer.cert.subject_name()).unwrap();
    b.set_pubkey(&k).unwrap();
    b.set_not_before(&Asn1Time::from_unix(from).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(to).unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .unwrap(),
    )
    .unwrap();
    let ctx = b.x509v3_context(Some(&issuer.cert), None);
    let ski = SubjectKeyIdentifier::new().build(&ctx).unwrap();
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&ctx)
        .unwrap();
    let san = SubjectAlternativeName::new()
        .email(email)
        .build(&ctx)
        .unwrap();
    b.append_extension(ski).unwrap();
    b.append_extension(aki).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&issuer.key, MessageDigest::sha256()).unwrap();
    (b.build(), k)
}
