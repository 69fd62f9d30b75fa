//! The shipped configuration fragments (`postfix/`, `dovecot/`, `webmail/`, installed under
//! `/usr/share/pecora/`): where they are, their `@PLACEHOLDER@`s and how they are filled, and
//! the backup a `--apply` makes of every file it changes. Used by `pecora setup postfix|dovecot`
//! (setup.rs) and `pecora setup roundcube` (setup_roundcube.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the packages install the fragments.
pub const SHARE_DIR: &str = "/usr/share/pecora";

/// One placeholder: its value (or none yet) and the option that sets it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub value: Option<String>,
    pub option: &'static str,
}

/// The placeholder values, by name.
pub type Values = BTreeMap<&'static str, Slot>;

pub fn slot(value: Option<String>, option: &'static str) -> Slot {
    Slot {
        value: value.filter(|v| !v.trim().is_empty()),
        option,
    }
}

/// The `@NAME@` placeholders of `text` (names of capitals, digits and `_`), with the
/// 1-based line of each occurrence.
pub fn placeholders(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut p = 0;
        while let Some(start) = line[p..].find('@').map(|o| o + p) {
            let end = b[start + 1..]
                .iter()
                .position(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_'));
            match end {
                Some(n) if n > 0 && b[start + 1 + n] == b'@' => {
                    out.push((line[start + 1..start + 1 + n].to_string(), i + 1));
                    p = start + n + 2;
                }
                _ => p = start + 1,
            }
            if p >= line.len() {
                break;
            }
        }
    }
    out
}

/// Replaces every placeholder of `text` with its value. Errors list every unknown
/// placeholder and every one without a value, with the option that sets it.
pub fn render(text: &str, values: &Values, source: &Path) -> Result<String, Vec<String>> {
    let mut errors = Vec::new();
    for (name, line) in placeholders(text) {
        let msg = match values.get(name.as_str()) {
            None => format!(
                "{}:{line}: unknown placeholder @{name}@ (this pecora has no value for it)",
                source.display()
            ),
            Some(Slot {
                value: None,
                option,
            }) => format!("@{name}@ has no value: pass {option}"),
            Some(_) => continue,
        };
        if !errors.contains(&msg) {
            errors.push(msg);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = text.to_string();
    for (name, s) in values {
        if let Some(v) = &s.value {
            out = out.replace(&format!("@{name}@"), v);
        }
    }
    Ok(out)
}

/// The directory with `postfix/` and `dovecot/` fragments.
pub fn fragments_dir(option: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = option {
        return Ok(d.to_path_buf());
    }
    for d in [SHARE_DIR, env!("CARGO_MANIFEST_DIR")] {
        if Path::new(d).join("postfix/main.cf.in").is_file() {
            return Ok(PathBuf::from(d));
        }
    }
    Err(format!(
        "no fragments in {SHARE_DIR}: pass --fragments DIR (the pecora source tree, or where they are installed)"
    ))
}

/// Notes the files a value names that do not exist (yet): neither `postfix check` nor
/// `doveconf -n` looks at them, but the daemons fail to start without them.
pub fn warn_missing_files(values: &Values, names: &[&str]) {
    for name in names {
        if let Some(Slot { value: Some(v), .. }) = values.get(name)
            && !Path::new(v).exists()
        {
            eprintln!("pecora: note: @{name}@ = {v} does not exist (yet)");
        }
    }
}

/// `<file>.pecora-<local time>`, with a counter when that name is taken (two runs within
/// one second never overwrite a backup).
pub fn backup_path(file: &Path) -> PathBuf {
    let base = format!(
        "{}.pecora-{}",
        file.display(),
        chrono::Local::now().format("%Y%m%dT%H%M%S")
    );
    let mut p = PathBuf::from(&base);
    let mut n = 1;
    while p.exists() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}
