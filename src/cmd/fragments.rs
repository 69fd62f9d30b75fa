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

/// A fragment's text without its leading block of `comment` lines: the instructions about
/// its placeholders, for whoever installs it by hand.
pub fn strip_instructions<'a>(text: &'a str, comment: &str) -> &'a str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with(comment) {
            offset += line.len();
        } else {
            break;
        }
    }
    &text[offset..]
}

/// The header written above a rendered fragment, in `comment` lines: `what` wrote it with
/// `command`, from `source`, with the values of the placeholders `template` uses; and that
/// it is written again, not edited.
pub fn provenance(comment: &str, what: &str, command: &str, source: &Path, values: &Values, template: &str) -> String {
    let used: Vec<String> = placeholders(template).into_iter().map(|(n, _)| n).collect();
    let mut out = format!(
        "{comment} pecora: {what} by `{command}` from\n{comment} {}\n{comment} with these values:\n",
        source.display()
    );
    for (name, s) in values {
        if used.iter().any(|u| u == name) {
            out.push_str(&format!("{comment}   @{name}@ = {}\n", s.value.as_deref().unwrap_or("")));
        }
    }
    out.push_str(&format!("{comment} Run `{command} --apply` again after upgrading pecora instead of editing it.\n"));
    out
}

/// What [`write_with_backup`] did.
pub enum Written {
    /// The file held the text already: left alone.
    Unchanged,
    /// Written, after a copy of the file it replaced (none when there was no file).
    Changed { backup: Option<PathBuf> },
}

/// Writes `text` to `target` atomically (mode 0644), after copying the file it replaces to
/// [`backup_path`]; a file that holds `text` already is left alone. Says each step on
/// standard output; an error names the file.
pub fn write_with_backup(target: &Path, text: &str) -> Result<Written, String> {
    let previous = std::fs::read(target).ok();
    if previous.as_deref() == Some(text.as_bytes()) {
        println!("{}: unchanged", target.display());
        return Ok(Written::Unchanged);
    }
    let backup = match &previous {
        Some(_) => {
            let b = backup_path(target);
            std::fs::copy(target, &b).map_err(|e| format!("cannot back up {}: {e}", target.display()))?;
            println!("backup: {} -> {}", target.display(), b.display());
            Some(b)
        }
        None => None,
    };
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".pecora-").tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.as_file().sync_all()?;
        tmp.persist(target).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    println!("{} {}", if previous.is_some() { "replaced:" } else { "written: " }, target.display());
    Ok(Written::Changed { backup })
}

/// Undoes [`write_with_backup`]: the backup copied back, or the file it created removed.
pub fn put_back(target: &Path, backup: Option<&Path>) -> std::io::Result<()> {
    match backup {
        Some(b) => std::fs::copy(b, target).map(|_| ()),
        None => std::fs::remove_file(target),
    }
}
