//! The daemon's loaded PEC identity: who we are, the key we sign with, the provider index.
//! Built from a validated [`Config`] at start and again on every reload; a reload that
//! cannot load the key or the index keeps the running engine.

use std::sync::Arc;

use crate::config::Config;
use crate::pec::build::Provider;
use crate::pec::sign::Signer;
use crate::pec::incoming::{self, GenuinePec, ProviderIndex, Verdict};
use crate::pec::types::{Instant, Recipient, RecipientType, Tipo};

/// Everything the PEC points need besides the message itself.
pub struct Engine {
    pub provider: Provider,
    pub signer: Signer,
    pub time_zone: chrono_tz::Tz,
    pub host_id: String,
    /// Our own PEC domains (lowercase).
    pub domains: Vec<String>,
    /// The provider index.
    pub index: ProviderIndex,
    /// The outbox keys of `keys.previous_private_keys`: rows they sealed before the signing
    /// key changed are still injected (crate::store::seal). They sign nothing.
    pub previous_outbox_keys: Vec<crate::store::seal::OutboxKey>,
}

/// What the reception point makes of an incoming message.
pub enum Incoming {
    /// A genuine transport envelope.
    Envelope(Box<GenuinePec>),
    /// A genuine notice (receipt or avviso).
    Notice(Box<GenuinePec>),
    /// Not genuine PEC; `claimed_pec` when it carries PEC headers; `code` is the reason's
    /// stable code ([`incoming::Reason::code`]).
    NotGenuine { claimed_pec: bool, reason: String, code: &'static str },
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("signing key or certificate: {0}")]
    Signer(#[from] crate::pec::sign::SignError),
    #[error("provider index {path}: {message}")]
    Index { path: String, message: String },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|source| EngineError::Read { path: path.display().to_string(), source })
}

/// The provider index named by the configuration: [`index_with_trust`] on `index.file`.
fn load_index(config: &crate::config::Index) -> Result<ProviderIndex, EngineError> {
    index_with_trust(
        &read(&config.file)?,
        &config.file,
        config.signer_certificate.as_deref(),
        config.ca_bundle.as_deref(),
        &config.crls,
    )
}

/// A provider index, plain LDIF or signed `.p7m` (told apart by content; a `.p7m` is
/// verified against the certificate in `signer`), with the trust anchors of `ca_bundle` and
/// `crls` (decisions.md 15). `source` names the data in errors. The one loader of the
/// daemon, `pecora index update`, `doctor` and `pecora verify`.
pub fn index_with_trust(
    data: &[u8],
    source: &std::path::Path,
    signer: Option<&std::path::Path>,
    ca_bundle: Option<&std::path::Path>,
    crls: &[std::path::PathBuf],
) -> Result<ProviderIndex, EngineError> {
    let bad = |path: &std::path::Path, message: String| EngineError::Index { path: path.display().to_string(), message };
    let signer = match signer {
        Some(p) => Some(incoming::certificate_from_bytes(&read(p)?).map_err(|m| bad(p, m))?),
        None => None,
    };
    let index = ProviderIndex::load(data, signer.as_ref()).map_err(|e| bad(source, e.to_string()))?;
    let mut trust = incoming::TrustAnchors::default();
    if let Some(p) = ca_bundle {
        trust.add_ca_bundle(&read(p)?).map_err(|m| bad(p, m))?;
    }
    for p in crls {
        trust.add_crls(&read(p)?).map_err(|m| bad(p, m))?;
    }
    Ok(index.with_trust(trust))
}

impl Engine {
    /// Loads the key pair and the index named by the configuration.
    pub fn load(config: &Config) -> Result<Engine, EngineError> {
        let cert = read(&config.keys.certificate)?;
        let key = read(&config.keys.private_key)?;
        let mut chain = Vec::new();
        for c in &config.keys.chain {
            chain.extend(read(c)?);
        }
        let mut previous = Vec::new();
        for p in &config.keys.previous_certificates {
            let pem = read(p)?;
            previous.extend(openssl::x509::X509::stack_from_pem(&pem).map_err(crate::pec::sign::SignError::Pem)?);
        }
        let signer = Signer::from_pem(&cert, &key, (!chain.is_empty()).then_some(&chain[..]))?.with_previous(previous);
        let mut previous_outbox_keys = Vec::new();
        for p in &config.keys.previous_private_keys {
            previous_outbox_keys.push(crate::store::seal::OutboxKey::from_private_key_pem(&read(p)?)?);
        }
        let index = load_index(&config.index)?;
        let domains: Vec<String> = config.provider.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        Ok(Engine {
            provider: Provider {
                name: config.provider.name.clone(),
                domain: domains.first().cloned().unwrap_or_default(),
                system_address: config.system_address(),
            },
            signer,
            time_zone: config.time_zone(),
            host_id: config.host_id(),
            domains,
            index,
            previous_outbox_keys,
        })
    }

    /// The current instant in the provider's zone (the caller's clock; the format code has
    /// none).
    pub fn now(&self) -> Instant {
        crate::pec::types::to_zone(chrono::Utc::now(), self.time_zone)
    }

    /// `certificato` when the address's domain is a PEC domain in the index, else `esterno`.
    pub fn recipient_type(&self, address: &str) -> RecipientType {
        self.index.recipient_type(address)
    }

    /// Verifies a message that arrived at `at` (the reception point's check). A notice that
    /// would settle mailboxes its signer does not manage is not genuine here (decisions.md
    /// 23, [`incoming::check_issuer_manages_recipients`]).
    pub fn verify_incoming(&self, raw: &[u8], at: &Instant) -> Incoming {
        let verdict = incoming::verify(raw, &self.index, at);
        match verdict {
            Verdict::Genuine(g) if g.daticert.tipo == Tipo::PostaCertificata => Incoming::Envelope(g),
            Verdict::Genuine(g) => Incoming::Notice(g),
            Verdict::NotGenuine { claimed, reason } => {
                if claimed {
                    crate::runtime::metrics::global().verification_failure(reason.code());
                }
                Incoming::NotGenuine { claimed_pec: claimed, reason: reason.to_string(), code: reason.code() }
            }
        }
    }

    /// Whether `raw` carries a valid S/MIME signature made with our own certificate: a
    /// message we signed earlier and Postfix shows us again (`postsuper -r`, decisions.md
    /// 17). Only the signature is checked, not the PEC format.
    pub fn signed_by_us(&self, raw: &[u8]) -> bool {
        let Ok(ours) = self.signer.certificate().to_der() else { return false };
        incoming::verified_signer(raw).and_then(|c| c.to_der().ok()).is_some_and(|der| der == ours)
    }

    /// Our own service mailbox (the index's mailReceipt for our domain).
    pub fn own_mail_receipt(&self) -> String {
        self.index
            .provider_for_domain(&self.provider.domain)
            .map(|p| p.mail_receipt.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| self.provider.system_address.clone())
    }

    pub fn typed(&self, addresses: &[String]) -> Vec<Recipient> {
        addresses
            .iter()
            .map(|a| Recipient { address: a.clone(), kind: self.recipient_type(a) })
            .collect()
    }

    /// Whether an address belongs to one of our own PEC domains.
    pub fn is_local(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    }

    /// Fresh random bytes for identifiers and MIME boundaries.
    pub fn random(n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        // The OpenSSL CSPRNG; it only fails when the system has no entropy source at all.
        if openssl::rand::rand_bytes(&mut b).is_err() {
            let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default().to_le_bytes();
            for (i, x) in b.iter_mut().enumerate() {
                *x = t[i % 8] ^ (i as u8).wrapping_mul(151);
            }
        }
        b
    }

    /// A new PEC identifier for this host.
    pub fn new_identifier(&self, at: &Instant) -> String {
        crate::pec::ident::pec_identifier(at, &self.host_id, &Engine::random(16), &self.provider.domain)
            .unwrap_or_else(|_| format!("pecora.{}.{}@{}", at.format("%Y%m%d%H%M%S"), hex::encode(Engine::random(16)), self.provider.domain))
    }
}

/// Shared handle.
pub type SharedEngine = Arc<Engine>;
