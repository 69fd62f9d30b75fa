// The provider index of the real fixtures' signers, shared through `include!` by
// tests/verify_props.rs and fuzz/fuzz_targets/verify.rs (the fuzz crate cannot use
// tests/common as a module). Paths are written in full: the includer's `use` lines stay its own.

/// A real fixture's signer certificate (DER) and the domain of its From: address.
fn signer_and_from_domain(raw: &[u8]) -> (Vec<u8>, String) {
    let (p7, _) = openssl::pkcs7::Pkcs7::from_smime(raw).unwrap();
    let signer = p7
        .signers(&openssl::stack::Stack::new().unwrap(), openssl::pkcs7::Pkcs7Flags::empty())
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .to_owned();
    let der = signer.to_der().unwrap();
    let text = String::from_utf8_lossy(raw);
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
    (der, domain)
}

/// Adds `domains` to the signer `der` in `signers`, listing it when new.
fn add_signer(signers: &mut Vec<(Vec<u8>, Vec<String>)>, der: Vec<u8>, domains: Vec<String>) {
    match signers.iter_mut().find(|(d, _)| *d == der) {
        Some((_, known)) => known.extend(domains),
        None => signers.push((der, domains)),
    }
}

/// The index listing each signer, named P1, P2... in order, under its domains.
fn signers_index(signers: &[(Vec<u8>, Vec<String>)]) -> pecora::pec::incoming::ProviderIndex {
    let mut ldif = String::new();
    for (n, (der, domains)) in signers.iter().enumerate() {
        let mut domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        domains.sort();
        domains.dedup();
        ldif.push_str(&pecora::pec::incoming::ldif_entry(&format!("P{}", n + 1), &[der], "s@x.it", &domains));
        ldif.push('\n');
    }
    pecora::pec::incoming::ProviderIndex::from_ldif(&ldif).unwrap()
}
