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

/// The shared fixtures (`../shared/fixtures` beside the repository), or `$PECORA_FIXTURES`
/// for a checkout elsewhere (a git worktree).
fn real_dir() -> std::path::PathBuf {
    std::env::var_os("PECORA_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures").into())
        .join("real")
}

struct Setup {
    index: ProviderIndex,
    /// (tipo, identificativo, data) of every real message's daticert.
    certified: BTreeSet<(String, String, String)>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let mut ldif = String::new();
        let mut signers = BTreeSet::new();
        let mut raws = Vec::new();
        let dir = real_dir();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the shared fixtures, {}: {e} (set PECORA_FIXTURES)", dir.display()))
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
            if signers.insert(der.clone()) {
                ldif.push_str(&incoming::ldif_entry(
                    &format!("P{}", signers.len()),
                    &[&der],
                    "s@x.it",
                    &[&domain],
                ));
                ldif.push('\n');
            }
            raws.push(raw);
        }
        let index = ProviderIndex::from_ldif(&ldif).unwrap();
        let mut certified = BTreeSet::new();
        for raw in &raws {
            let at = incoming::signing_time(raw).unwrap().fixed_offset();
            match incoming::verify(raw, &index, &at) {
                Verdict::Genuine(g) => {
                    certified.insert(key(&g.daticert));
                }
                Verdict::NotGenuine { reason, .. } => {
                    panic!("a real fixture does not verify: {reason}")
                }
            }
        }
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
