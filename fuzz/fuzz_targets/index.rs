//! Fuzzes the provider index loader (`ProviderIndex::load`, pec-format.md §6): the plain LDIF
//! parser, and the signed `.p7m` reader (DER, PEM, base64 or S/MIME pkcs7-mime, opened with
//! OpenSSL) against a configured index signer. Besides "never panics": a loaded index answers
//! its lookups, and an index signed by anyone but the configured signer is never loaded.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};
use pecora::pec::incoming::ProviderIndex;

/// A throwaway index signer: no input can carry its signature, so no `.p7m` may load.
fn signer() -> &'static X509 {
    static S: OnceLock<X509> = OnceLock::new();
    S.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "fuzz index signer").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = ProviderIndex::load(data, None) {
        let _ = index.provider_for_domain("pec.alpha.test");
        let _ = index.recipient_type("mario.rossi@pec.alpha.test");
        let _ = index.lookup_certificate(data);
        let _ = index.provider_for_certificate(data);
    }
    assert!(
        ProviderIndex::load(data, Some(signer())).is_err(),
        "an index loaded though no input can be signed by the configured signer"
    );
});
