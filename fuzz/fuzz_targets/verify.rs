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
use pecora::pec::Daticert;
use pecora::pec::incoming::{self, ProviderIndex, Verdict};

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/real");

include!("../../tests/common/real_signers.rs");

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
            let (der, domain) = signer_and_from_domain(&raw);
            add_signer(&mut signers, der, vec![domain]);
            raws.push(raw);
        }
        // decisions.md 23: a real receipt's signer manages the mailboxes it certifies. The
        // verifier names such a mailbox when the index does not say so; the signer gets its
        // domain, and the index is built again (a few rounds at most).
        let mut index = signers_index(&signers);
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
            index = signers_index(&signers);
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
