//! Outbox seals: the outbox worker injects only what pecora itself queued.
//!
//! The outbox lives in the registry, which several hosts may share (PostgreSQL): whoever
//! can write that database could otherwise queue any message, from any sender, to any PEC
//! mailbox, and the injection listener (which runs no milter) would pass it. So every row is
//! written with a seal, HMAC-SHA256 over its kind, envelope sender, recipients and message
//! bytes, keyed with a secret derived from the provider signing key
//! ([`crate::pec::sign::Signer::derive_secret`]): every host of the provider holds that
//! key, the database does not. The worker checks the seal before each injection; a row
//! without a valid one is never injected but marked failed, with the reason logged and
//! counted (`pecora_outbox_refused_total`).
//!
//! Rows queued by a version without seals (before migration 2) carry none. The daemon that
//! applies the migration seals the rows then pending or held, at once, before its workers
//! start ([`crate::store::Store::seal_unsealed`]); any unsealed row found later is refused
//! like a forged one. A change of signing key invalidates the seals of rows still queued:
//! let the outbox drain before replacing the key.

use crate::pec::sign::{SignError, Signer};

/// What the secret is for: a new purpose, a new secret.
const PURPOSE: &[u8] = b"pecora outbox seal v1";

/// The key outbox rows are sealed with.
#[derive(Clone)]
pub struct OutboxKey([u8; 32]);

impl std::fmt::Debug for OutboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxKey(..)")
    }
}

impl OutboxKey {
    /// The key of the provider whose signing key `signer` holds.
    pub fn from_signer(signer: &Signer) -> Result<OutboxKey, SignError> {
        signer.derive_secret(PURPOSE).map(OutboxKey)
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> OutboxKey {
        OutboxKey(bytes)
    }

    /// The seal of a row: lowercase hex HMAC-SHA256 over each field, length-prefixed.
    pub fn seal(&self, kind: &str, mail_from: &str, rcpts: &[String], message: &[u8]) -> String {
        hex::encode(self.mac(kind, mail_from, rcpts, message))
    }

    /// Whether `seal` is the seal of that row (compared in constant time).
    pub fn verify(&self, seal: &str, kind: &str, mail_from: &str, rcpts: &[String], message: &[u8]) -> bool {
        let Ok(given) = hex::decode(seal.trim()) else { return false };
        let want = self.mac(kind, mail_from, rcpts, message);
        given.len() == want.len() && openssl::memcmp::eq(&given, &want)
    }

    fn mac(&self, kind: &str, mail_from: &str, rcpts: &[String], message: &[u8]) -> Vec<u8> {
        // The key and digest are fixed and valid: OpenSSL's HMAC cannot fail here short of
        // an allocation failure, which aborts anyway.
        let key = openssl::pkey::PKey::hmac(&self.0).expect("HMAC key");
        let mut mac = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).expect("HMAC-SHA256");
        let mut field = |b: &[u8]| {
            mac.update(&(b.len() as u64).to_be_bytes()).expect("HMAC update");
            mac.update(b).expect("HMAC update");
        };
        field(kind.as_bytes());
        field(mail_from.as_bytes());
        field(&(rcpts.len() as u64).to_be_bytes());
        for r in rcpts {
            field(r.as_bytes());
        }
        field(message);
        mac.sign_to_vec().expect("HMAC final")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_every_field() {
        let k = OutboxKey::from_bytes([7; 32]);
        let rcpts = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        let s = k.seal("accettazione", "p@x.test", &rcpts, b"msg");
        assert!(k.verify(&s, "accettazione", "p@x.test", &rcpts, b"msg"));
        assert!(!k.verify(&s, "redirect", "p@x.test", &rcpts, b"msg"));
        assert!(!k.verify(&s, "accettazione", "q@x.test", &rcpts, b"msg"));
        assert!(!k.verify(&s, "accettazione", "p@x.test", &rcpts[..1], b"msg"));
        assert!(!k.verify(&s, "accettazione", "p@x.test", &["a@x.testb@x.test".to_string()], b"msg"));
        assert!(!k.verify(&s, "accettazione", "p@x.test", &rcpts, b"msg2"));
        assert!(!k.verify("", "accettazione", "p@x.test", &rcpts, b"msg"));
        assert!(!k.verify("zz", "accettazione", "p@x.test", &rcpts, b"msg"));
        assert!(!OutboxKey::from_bytes([8; 32]).verify(&s, "accettazione", "p@x.test", &rcpts, b"msg"));
    }
}
