//! PEC message identifiers (pec-format.md §2.3, decisions.md 5):
//! `<unique part>@<provider mail domain>`, stored and passed around without angle brackets.
//!
//! The unique part is `pecora.<yyyymmddHHMMSS>.<host tag>.<random hex>`: the instant makes it
//! readable and ordered like the real `opec…` ids, the host tag keeps hosts sharing a registry
//! apart, and the caller's random bytes (at least 8) make it unique within one second on one
//! host. Only `[A-Za-z0-9.]` is used, so the id is a valid dot-atom everywhere.

use super::types::Instant;

/// How every identifier [`pec_identifier`] builds begins.
pub const PREFIX: &str = "pecora.";

/// Whether `id` has the shape of an identifier [`pec_identifier`] builds for the provider
/// whose mail domain is `domain`: pecora's own, never one a sender chose elsewhere.
pub fn is_own_identifier(id: &str, domain: &str) -> bool {
    id.starts_with(PREFIX)
        && id.rsplit_once('@').is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain.strip_suffix('.').unwrap_or(domain)))
        && is_valid_identifier(id)
}

/// Fewest random bytes accepted (64 bits).
pub const MIN_RANDOM: usize = 8;

/// Errors of the identifier builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("at least {MIN_RANDOM} random bytes are needed, got {0}")]
    NotEnoughRandom(usize),
    #[error("invalid provider mail domain {0:?}")]
    BadDomain(String),
}

/// Builds a PEC identifier (without angle brackets).
///
/// `host_tag` is reduced to its ASCII letters and digits (at most 32); `random` must hold at
/// least [`MIN_RANDOM`] bytes (16 are used at most); `domain` must be a DNS name.
pub fn pec_identifier(
    instant: &Instant,
    host_tag: &str,
    random: &[u8],
    domain: &str,
) -> Result<String, IdentError> {
    if random.len() < MIN_RANDOM {
        return Err(IdentError::NotEnoughRandom(random.len()));
    }
    if !valid_domain(domain) {
        return Err(IdentError::BadDomain(domain.to_string()));
    }
    let tag: String = host_tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let tag = if tag.is_empty() { "h".to_string() } else { tag };
    let rnd = hex::encode(&random[..random.len().min(16)]);
    Ok(format!(
        "{PREFIX}{}.{tag}.{rnd}@{}",
        instant.format("%Y%m%d%H%M%S"),
        domain.to_ascii_lowercase()
    ))
}

/// True for a plausible DNS domain: labels of `[A-Za-z0-9-]`, 1–63 chars, not starting or
/// ending with `-`, at least two labels, at most 253 chars.
pub fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() || d.len() > 253 || !d.contains('.') {
        return false;
    }
    d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// True when `id` has the form this module produces or any real PEC id has: a local part of
/// `[A-Za-z0-9.$_-]` and a valid domain, no angle brackets.
pub fn is_valid_identifier(id: &str) -> bool {
    match id.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 128
                && local
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._$-".contains(&b))
                && valid_domain(domain)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t() -> Instant {
        chrono::FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2024, 12, 5, 0, 2, 10)
            .unwrap()
    }

    #[test]
    fn builds_the_documented_form() {
        let id = pec_identifier(&t(), "mx-1.example", &[0xab; 10], "pec.example.it").unwrap();
        assert_eq!(
            id,
            "pecora.20241205000210.mx1example.abababababababababab@pec.example.it"
        );
        let (local, _) = id.split_once('@').unwrap();
        assert!(
            local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        );
        assert!(is_valid_identifier(&id));
    }

    #[test]
    fn different_random_gives_different_ids() {
        let a = pec_identifier(&t(), "h", &[1; 8], "pec.example.it").unwrap();
        let b = pec_identifier(&t(), "h", &[2; 8], "pec.example.it").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_weak_random_and_bad_domains() {
        assert_eq!(
            pec_identifier(&t(), "h", &[1; 4], "a.it"),
            Err(IdentError::NotEnoughRandom(4))
        );
        assert!(pec_identifier(&t(), "h", &[1; 8], "a.it>\r\nX: y").is_err());
        assert!(pec_identifier(&t(), "h", &[1; 8], "localhost").is_err());
        assert!(!is_valid_identifier("<a@b.it>"));
    }
}
