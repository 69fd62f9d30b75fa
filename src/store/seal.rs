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
//! like a forged one.
//!
//! A change of signing key changes the secret. Rows still queued then carry the old key's
//! seal, and refusing them would lose those receipts. So the worker also accepts the seal of
//! a previous key ([`OutboxKeys`]): the daemon keeps its old key when a reload brings a new
//! one, and reads `keys.previous_private_keys` at start, so a restart after the change
//! still sends what the old key sealed. New rows are always sealed with the current key.

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

    /// The key of a previous signing key, given as PEM: it only verifies seals.
    pub fn from_private_key_pem(pem: &[u8]) -> Result<OutboxKey, SignError> {
        let key = openssl::pkey::PKey::private_key_from_pem(pem)?;
        crate::pec::sign::derive_secret(&key, PURPOSE).map(OutboxKey)
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

impl PartialEq for OutboxKey {
    fn eq(&self, other: &OutboxKey) -> bool {
        openssl::memcmp::eq(&self.0, &other.0)
    }
}

/// The key new rows are sealed with, and the keys of previous signing keys whose seals
/// still verify (the rows they sealed may still be queued).
#[derive(Debug, Clone)]
pub struct OutboxKeys {
    current: OutboxKey,
    previous: Vec<OutboxKey>,
    /// The keys this process sealed with before a reload replaced them (also in
    /// `previous`): the rows they sealed may still be queued, and no configuration names
    /// them yet.
    replaced: Vec<OutboxKey>,
}

/// Which key a seal verified under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedBy {
    Current,
    Previous,
}

impl OutboxKeys {
    /// `current` seals; every key of `previous` (minus `current`) verifies too.
    pub fn new(current: OutboxKey, previous: Vec<OutboxKey>) -> OutboxKeys {
        let mut keys = OutboxKeys { current, previous: Vec::new(), replaced: Vec::new() };
        for k in previous {
            keys.add_previous(k);
        }
        keys
    }

    pub fn current(&self) -> &OutboxKey {
        &self.current
    }

    /// How many previous keys still verify.
    pub fn previous_len(&self) -> usize {
        self.previous.len()
    }

    /// How many of these keys verify no more in `next` (a previous key dropped by a reload).
    pub fn revoked_in(&self, next: &OutboxKeys) -> usize {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|k| **k != next.current && !next.previous.contains(k))
            .count()
    }

    fn add_previous(&mut self, k: OutboxKey) {
        if k != self.current && !self.previous.contains(&k) {
            self.previous.push(k);
        }
    }

    /// These keys after a reload: `next` seals from now on; the keys this process sealed
    /// with so far keep verifying (rows they sealed may still be queued), and so do the keys
    /// `configured` lists. A previous key the configuration no longer lists, and this
    /// process never sealed with, verifies no more: removing a key and reloading revokes it.
    pub fn rotated(&self, next: OutboxKey, configured: Vec<OutboxKey>) -> OutboxKeys {
        let mut keys = OutboxKeys::new(next, configured);
        for k in std::iter::once(&self.current).chain(&self.replaced) {
            keys.add_previous(k.clone());
            if *k != keys.current && !keys.replaced.contains(k) {
                keys.replaced.push(k.clone());
            }
        }
        keys
    }

    /// The seal of a new row, with the current key.
    pub fn seal(&self, kind: &str, mail_from: &str, rcpts: &[String], message: &[u8]) -> String {
        self.current.seal(kind, mail_from, rcpts, message)
    }

    /// Under which key the seal of the outbox row `m` verifies: `None` when it has none, or
    /// none of these keys made it.
    pub fn verify_row(&self, m: &crate::store::model::OutboxMessage) -> Option<SealedBy> {
        self.verify(m.seal.as_deref()?, &m.kind, &m.mail_from, &m.rcpts, &m.message)
    }

    /// Under which key `seal` verifies, if any.
    pub fn verify(&self, seal: &str, kind: &str, mail_from: &str, rcpts: &[String], message: &[u8]) -> Option<SealedBy> {
        if self.current.verify(seal, kind, mail_from, rcpts, message) {
            Some(SealedBy::Current)
        } else if self.previous.iter().any(|k| k.verify(seal, kind, mail_from, rcpts, message)) {
            Some(SealedBy::Previous)
        } else {
            None
        }
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

    #[test]
    fn previous_keys_verify_and_never_seal() {
        let (old, new, other) = (OutboxKey::from_bytes([1; 32]), OutboxKey::from_bytes([2; 32]), OutboxKey::from_bytes([3; 32]));
        let rcpts = vec!["a@x.test".to_string()];
        let by_old = old.seal("accettazione", "p@x.test", &rcpts, b"msg");
        let keys = OutboxKeys::new(new.clone(), vec![old.clone(), new.clone(), old.clone()]);
        assert_eq!(keys.previous_len(), 1);
        assert_eq!(keys.verify(&by_old, "accettazione", "p@x.test", &rcpts, b"msg"), Some(SealedBy::Previous));
        assert_eq!(keys.verify(&by_old, "accettazione", "p@x.test", &rcpts, b"msh"), None);
        let sealed = keys.seal("accettazione", "p@x.test", &rcpts, b"msg");
        assert!(new.verify(&sealed, "accettazione", "p@x.test", &rcpts, b"msg"));
        assert!(!old.verify(&sealed, "accettazione", "p@x.test", &rcpts, b"msg"));
        // Without the old key, its seal is a forgery like any other.
        assert_eq!(OutboxKeys::new(new.clone(), vec![]).verify(&by_old, "accettazione", "p@x.test", &rcpts, b"msg"), None);
        // A reload to a third key, the first still listed: the second seals no more but
        // verifies, and so does the first.
        let reloaded = keys.rotated(other.clone(), vec![old.clone()]);
        assert_eq!(reloaded.verify(&sealed, "accettazione", "p@x.test", &rcpts, b"msg"), Some(SealedBy::Previous));
        assert_eq!(reloaded.verify(&by_old, "accettazione", "p@x.test", &rcpts, b"msg"), Some(SealedBy::Previous));
        assert!(other.verify(&reloaded.seal("accettazione", "p@x.test", &rcpts, b"msg"), "accettazione", "p@x.test", &rcpts, b"msg"));
        // A reload that keeps the key: what this process sealed with stays, and the old
        // key, which the configuration no longer lists, is revoked.
        assert_eq!(keys.rotated(new.clone(), vec![old.clone()]).previous_len(), 1);
        let kept = keys.rotated(new.clone(), vec![]);
        assert_eq!(kept.previous_len(), 0);
        assert_eq!(kept.verify(&by_old, "accettazione", "p@x.test", &rcpts, b"msg"), None);
        assert_eq!(kept.verify(&sealed, "accettazione", "p@x.test", &rcpts, b"msg"), Some(SealedBy::Current));
    }

    /// A reload revokes a previous key the configuration no longer lists, but never one
    /// this process sealed with: those rows are its own and may still be queued.
    #[test]
    fn a_reload_keeps_the_keys_it_sealed_with_and_drops_unlisted_ones() {
        let (old, second, third, fourth) =
            (OutboxKey::from_bytes([1; 32]), OutboxKey::from_bytes([2; 32]), OutboxKey::from_bytes([3; 32]), OutboxKey::from_bytes([4; 32]));
        let rcpts = vec!["a@x.test".to_string()];
        let seal = |k: &OutboxKey| k.seal("accettazione", "p@x.test", &rcpts, b"msg");
        let check = |keys: &OutboxKeys, s: &str| keys.verify(s, "accettazione", "p@x.test", &rcpts, b"msg");
        // Started with `second`, `old` listed as previous.
        let start = OutboxKeys::new(second.clone(), vec![old.clone()]);
        // Reloaded to `third`, `old` still listed: all three verify.
        let r1 = start.rotated(third.clone(), vec![old.clone()]);
        assert_eq!(check(&r1, &seal(&old)), Some(SealedBy::Previous));
        assert_eq!(check(&r1, &seal(&second)), Some(SealedBy::Previous));
        // Reloaded to `fourth`, nothing listed: `old` (a leaked key, say) is revoked; the two
        // this process sealed with are not.
        let r2 = r1.rotated(fourth.clone(), vec![]);
        assert_eq!(check(&r2, &seal(&old)), None);
        assert_eq!(r1.revoked_in(&r2), 1);
        assert_eq!(start.revoked_in(&r1), 0);
        assert_eq!(check(&r2, &seal(&second)), Some(SealedBy::Previous));
        assert_eq!(check(&r2, &seal(&third)), Some(SealedBy::Previous));
        assert_eq!(check(&r2, &seal(&fourth)), Some(SealedBy::Current));
        assert_eq!(r2.previous_len(), 2);
        // Back to `second`: it seals again, and is no previous key.
        let r3 = r2.rotated(second.clone(), vec![]);
        assert_eq!(check(&r3, &seal(&second)), Some(SealedBy::Current));
        assert_eq!(r3.previous_len(), 2);
        assert_eq!(check(&r3, &seal(&old)), None);
    }
}
