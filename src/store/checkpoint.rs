//! Signed checkpoints: the chain head (seq and hash) at an instant, signed with the provider
//! key as a detached CMS (the same signer as the PEC messages), stored in the
//! `registry_checkpoints` table and exported as two files that can be kept off the host:
//!
//! ```text
//! pecora-checkpoint-000000001234-20260301T000000Z.txt   the signed text (CRLF)
//! pecora-checkpoint-000000001234-20260301T000000Z.p7s   detached CMS, DER
//! ```
//!
//! `openssl cms -verify -binary -inform DER -in X.p7s -content X.txt -certfile provider.pem
//! -noverify` checks one by hand.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

use super::StoreError;
use super::model::ts;
use crate::pec::sign::Signer;

/// First line of every checkpoint text.
const MAGIC: &str = "pecora-registry-checkpoint: 1";

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// Table id (0 for one read from a file).
    pub id: i64,
    /// The last row covered.
    pub seq: i64,
    /// That row's hash.
    pub head_hash: String,
    /// When it was written ([`ts`] form).
    pub created_at: String,
    pub host: String,
    /// The signed text.
    pub content: String,
    /// Detached CMS over `content`, DER.
    #[serde(skip)]
    pub cms: Vec<u8>,
}

/// The signed text.
pub fn checkpoint_text(seq: i64, head_hash: &str, created_at: &str, host: &str) -> String {
    format!("{MAGIC}\r\nseq: {seq}\r\nhead: {head_hash}\r\ntime: {created_at}\r\nhost: {host}\r\n")
}

/// Parses the signed text back into (seq, head, time, host).
pub fn parse_text(text: &str) -> Option<(i64, String, String, String)> {
    let mut lines = text.split("\r\n");
    if lines.next()? != MAGIC {
        return None;
    }
    let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_string);
    let seq = field("seq: ")?.parse().ok()?;
    let head = field("head: ")?;
    let time = field("time: ")?;
    let host = field("host: ")?;
    Some((seq, head, time, host))
}

/// Builds and signs a checkpoint for `(seq, head_hash)` at `now`.
pub fn sign(
    signer: &Signer,
    seq: i64,
    head_hash: &str,
    now: DateTime<Utc>,
    host: &str,
) -> Result<Checkpoint, StoreError> {
    let created_at = ts(now);
    let content = checkpoint_text(seq, head_hash, &created_at, host);
    let cms = signer
        .sign_detached(content.as_bytes(), &now.fixed_offset())
        .map_err(|e| StoreError::Checkpoint(format!("cannot sign: {e}")))?;
    Ok(Checkpoint {
        id: 0,
        seq,
        head_hash: head_hash.to_string(),
        created_at,
        host: host.to_string(),
        content,
        cms,
    })
}

/// Checks checkpoint signatures against the provider certificates (current and past ones:
/// a checkpoint signed before a key rollover still verifies).
pub struct CheckpointVerifier {
    certs: Vec<X509>,
}

impl CheckpointVerifier {
    pub fn new(certs: Vec<X509>) -> CheckpointVerifier {
        CheckpointVerifier { certs }
    }

    /// Reads every certificate in the given PEM files.
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<CheckpointVerifier, StoreError> {
        let mut certs = Vec::new();
        for p in paths {
            let pem = std::fs::read(p).map_err(|source| StoreError::Io {
                path: p.clone(),
                source,
            })?;
            let mut found = X509::stack_from_pem(&pem).map_err(|e| {
                StoreError::Checkpoint(format!("{}: not a PEM certificate: {e}", p.display()))
            })?;
            if found.is_empty() {
                return Err(StoreError::Checkpoint(format!(
                    "{}: no certificate",
                    p.display()
                )));
            }
            certs.append(&mut found);
        }
        Ok(CheckpointVerifier { certs })
    }

    /// Checks the signature (made by one of our certificates, no other) and that the signed
    /// text says what the checkpoint's fields say. Returns the reason when it does not hold.
    pub fn check(&self, cp: &Checkpoint) -> Result<(), String> {
        match parse_text(&cp.content) {
            Some((seq, head, time, _))
                if seq == cp.seq && head == cp.head_hash && time == cp.created_at => {}
            Some(_) => return Err("the signed text does not match the stored fields".into()),
            None => return Err("the signed text is malformed".into()),
        }
        let run = || -> Result<(), openssl::error::ErrorStack> {
            let mut cms = CmsContentInfo::from_der(&cp.cms)?;
            let mut stack = Stack::new()?;
            for c in &self.certs {
                stack.push(c.clone())?;
            }
            let store = X509StoreBuilder::new()?.build();
            // NOINTERN: the signer must be one of our certificates, not one carried in the
            // CMS; no chain validation (our own certificate is the trust anchor).
            cms.verify(
                Some(&stack),
                Some(&store),
                Some(cp.content.as_bytes()),
                None,
                CMSOptions::NOINTERN | CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY,
            )
        };
        run().map_err(|e| format!("bad signature: {e}"))
    }
}

/// The base name of a checkpoint's exported files.
pub fn file_stem(cp: &Checkpoint) -> String {
    let time = super::model::parse_ts(&cp.created_at)
        .map(|t| t.format("%Y%m%dT%H%M%S%6fZ").to_string())
        .unwrap_or_else(|| cp.created_at.replace([':', '-', '.'], ""));
    format!("pecora-checkpoint-{:012}-{time}", cp.seq)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes the two files of a checkpoint into `dir` (created if missing).
pub fn export(cp: &Checkpoint, dir: &Path) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let stem = file_stem(cp);
    write_atomic(&dir.join(format!("{stem}.p7s")), &cp.cms)?;
    let txt = dir.join(format!("{stem}.txt"));
    write_atomic(&txt, cp.content.as_bytes())?;
    Ok(txt)
}

/// Reads every exported checkpoint in `dir`. A `.txt` without its `.p7s` (or unreadable
/// text) comes back with an empty signature, so verification reports it. Each comes with
/// its file name.
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Checkpoint)>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "txt")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pecora-checkpoint-"))
        })
        .collect();
    names.sort();
    for txt in names {
        let content = std::fs::read(&txt).map_err(|source| StoreError::Io {
            path: txt.clone(),
            source,
        })?;
        let content = String::from_utf8_lossy(&content).into_owned();
        let cms = std::fs::read(txt.with_extension("p7s")).unwrap_or_default();
        let (seq, head_hash, created_at, host) =
            parse_text(&content).unwrap_or((-1, String::new(), String::new(), String::new()));
        out.push((
            txt.display().to_string(),
            Checkpoint {
                id: 0,
                seq,
                head_hash,
                created_at,
                host,
                content,
                cms,
            },
        ));
    }
    Ok(out)
}
