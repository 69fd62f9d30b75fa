//! Fuzzes the PEC verifier (`pecora::pec::incoming::verify`), the daticert parser and the
//! index loader with one input. The provider index lists the signers of the real fixtures,
//! so inputs grown from the seed corpus (the real messages, see README.md) reach the
//! signature, index, daticert and header checks. Besides "never panics", a genuine verdict
//! must certify exactly what one of the real messages certifies: mutations may only touch
//! what is not signed.

#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use pecora::pec::Daticert;
use pecora::pec::incoming::{self, ProviderIndex, Verdict};

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/real");

struct Setup {
    index: ProviderIndex,
    /// (tipo, identificativo, data) of every real message's daticert.
    certified: BTreeSet<(String, String, String)>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        // Each distinct signer (named P1, P2...) with the domain of its From:.
        let mut signers: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        let mut raws = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(REAL)
            .expect("tests/fixtures/real")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let raw = std::fs::read(&path).unwrap();
            let (p7, _) = Pkcs7::from_smime(&raw).unwrap();
            let signer = p7
                .signers(&Stack::new().unwrap(), Pkcs7Flags::empty())
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .to_owned();
            let der = signer.to_der().unwrap();
            let text = String::from_utf8_lossy(&raw);
            let from = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("from:"))
                .unwrap();
            let domain = from
                .rsplit_once('@')
                .unwrap()
                .1
                .trim_end_matches(['>', ' ', '\r'])
                .to_string();
            if !signers.iter().any(|(d, _)| *d == der) {
                signers.push((der, vec![domain]));
            }
            raws.push(raw);
        }
        // decisions.md 23: a real receipt's signer manages the mailboxes it certifies. The
        // verifier names such a mailbox when the index does not say so; the signer gets its
        // domain, and the index is built again (a few rounds at most).
        let build = |signers: &[(Vec<u8>, Vec<String>)]| {
            let mut ldif = String::new();
            for (n, (der, domains)) in signers.iter().enumerate() {
                let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
                ldif.push_str(&incoming::ldif_entry(&format!("P{}", n + 1), &[der], "s@x.it", &domains));
                ldif.push('\n');
            }
            ProviderIndex::from_ldif(&ldif).unwrap()
        };
        let mut index = build(&signers);
        let mut certified = BTreeSet::new();
        let mut all_genuine = false;
        for _round in 0..8 {
            certified.clear();
            let mut missing = None;
            for raw in &raws {
                let at = incoming::signing_time(raw).unwrap().fixed_offset();
                match incoming::verify(raw, &index, &at) {
                    Verdict::Genuine(g) => {
                        certified.insert(key(&g.daticert));
                    }
                    Verdict::NotGenuine { reason: incoming::Reason::NotRecipientsProvider { recipient, provider }, .. } => {
                        missing = Some((recipient, provider));
                    }
                    Verdict::NotGenuine { reason, .. } => {
                        panic!("a real fixture does not verify: {reason}")
                    }
                }
            }
            let Some((recipient, provider)) = missing else {
                all_genuine = true;
                break;
            };
            let n: usize = provider.trim_start_matches('P').parse().unwrap();
            let domain = recipient.rsplit_once('@').unwrap().1.trim_end_matches('>').to_ascii_lowercase();
            signers[n - 1].1.push(domain);
            index = build(&signers);
        }
        assert!(all_genuine, "every real fixture verifies");
        Setup { index, certified }
    })
}

fn key(d: &Daticert) -> (String, String, String) {
    (
        d.tipo.to_string(),
        d.identificativo.clone(),
        d.data.to_rfc3339(),
    )
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    // At the input's own signingTime when it has one (so expired certificates do not stop
    // the fuzzer at the time check), else at a fixed instant.
    let at = incoming::signing_time(data)
        .map(|t| t.fixed_offset())
        .unwrap_or_else(|| chrono_instant());
    if let Verdict::Genuine(g) = incoming::verify(data, &s.index, &at) {
        assert!(
            s.certified.contains(&key(&g.daticert)),
            "genuine with facts no real message certifies: {:?}",
            g.daticert
        );
    }
    let _ = Daticert::parse(data);
    let _ = ProviderIndex::load(data, None);
});

fn chrono_instant() -> pecora::pec::Instant {
    pecora::pec::Instant::parse_from_rfc3339("2018-11-13T16:39:26+01:00").unwrap()
}
