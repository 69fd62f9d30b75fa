//! The code map (README, "Code map") as a test: `src/` is built in floors, and a module may
//! use its own floor and the floors below it, never one above. This reads every `src/**.rs`
//! file as text, finds the `crate::...` paths it names outside comments (in `use` trees as
//! elsewhere), and fails on a path that climbs, or on a folder or file the table does not
//! place, so that an import cycle between roles cannot come back unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The floors, lowest first: each entry is a top-level module of the crate (a folder or a
/// file under `src/`), and its floor. Modules on one floor may use each other.
const FLOORS: &[(&str, u8)] = &[
    // The pure PEC format: no I/O, no clock.
    ("pec", 0),
    // The configuration model.
    ("config", 1),
    // Talking to other programs: SMTP injection, clamd, alert webhooks, postconf,
    // users and groups, doveadm.
    ("adapters", 2),
    // The registry: chain, checkpoints, outbox.
    ("store", 3),
    // What the points share while the daemon runs: engine, state, metrics.
    ("runtime", 4),
    // The points.
    ("milter", 5),
    ("delivery", 5),
    // `pecora serve`: listeners, timers, the mail log follower, logging.
    ("daemon", 6),
    // The operator commands.
    ("cmd", 7),
];

/// The crate root's own items (`crate::NAME`, `crate::VERSION`) and the root files.
const ROOT: &[&str] = &["NAME", "VERSION"];

fn floor_of(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without its comments (line and block) and string literals, which may mention
/// paths without using them.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' && !(i > 0 && (b[i - 1] == b'\'' || b[i - 1] == b'#')) {
            // A string literal (raw strings start with r#" or r", handled below).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"r#\"") {
            let end = text[i + 3..].find("\"#").map_or(b.len(), |p| i + 3 + p + 2);
            i = end;
            out.push_str("\"\"");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The first segment of every `crate::` path in `code`, `use crate::{a::x, b}` included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(p) = rest.find("crate::") {
        let before = rest[..p].chars().next_back();
        rest = &rest[p + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `some_crate::`
        }
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            // A use tree: the first segment of each top-level branch.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(first_segment(&item));
        } else {
            found.insert(first_segment(rest_trim));
        }
    }
    found.remove("");
    found.remove("self");
    found
}

fn first_segment(s: &str) -> String {
    s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every use of a module above the user's floor, as `file -> crate::module`, and every
/// top-level module the table does not place.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
        let first = parts.next().unwrap();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary stand above every floor
        }
        let Some(own) = floor_of(&module) else {
            bad.push(format!("src/{}: module `{module}` has no floor in tests/layering.rs", rel.display()));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for used in crate_paths(&code) {
            if ROOT.contains(&used.as_str()) || used == module {
                continue;
            }
            match floor_of(&used) {
                None => bad.push(format!("src/{} uses crate::{used}, which has no floor", rel.display())),
                Some(f) if f > own => bad.push(format!(
                    "src/{} (floor {own}, {module}) uses crate::{used} (floor {f}): a lower floor may not use a higher one",
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    bad
}

#[test]
fn lower_floors_never_use_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "the layering of src/ is broken:\n{}", bad.join("\n"));
}

/// The module a file defines, as path segments below the crate (`src/cmd/setup.rs` is
/// `["cmd", "setup"]`, `src/store/mod.rs` is `["store"]`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
    if stem != "mod" {
        parts.push(stem);
    }
    parts
}

/// Every full path a `crate::` or `super::` path in `code` names, use trees expanded, as
/// segments below the crate.
fn full_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    fn tree(s: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix;
        let mut seg = String::new();
        while i < s.len() {
            let c = s[i] as char;
            if c.is_alphanumeric() || c == '_' {
                seg.push(c);
                i += 1;
            } else if s[i..].starts_with(b"::") {
                path.push(std::mem::take(&mut seg));
                i += 2;
            } else if c == '{' {
                i += 1;
                loop {
                    while i < s.len() && (s[i] as char).is_whitespace() {
                        i += 1;
                    }
                    if i < s.len() && s[i] == b'}' {
                        return i + 1;
                    }
                    i = tree(s, i, path.clone(), out);
                    while i < s.len() && (s[i] as char).is_whitespace() {
                        i += 1;
                    }
                    match s.get(i) {
                        Some(b',') => i += 1,
                        Some(b'}') => return i + 1,
                        _ => return i,
                    }
                }
            } else {
                break;
            }
        }
        if !seg.is_empty() {
            path.push(seg);
        }
        out.push(path);
        i
    }
    let b = code.as_bytes();
    let mut out = Vec::new();
    // `super` of a file is its folder's module; of a mod.rs, the folder's parent.
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    for (start, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(p) = code[from..].find(start) {
            let at = from + p;
            from = at + start.len();
            if at > 0 && ((b[at - 1] as char).is_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':') {
                continue;
            }
            let mut found = Vec::new();
            tree(b, from, base.clone(), &mut found);
            out.extend(found);
        }
    }
    out
}

/// Cycles between modules of different files, at the grain of a folder's files (`cmd::setup`,
/// `runtime::state`, `pec`): each as the list of its members. A file's own submodules, and a
/// folder's mod.rs with its files, are one piece of code and do not count.
fn module_cycles(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: Vec<(PathBuf, Vec<String>)> = files
        .iter()
        .map(|f| (f.clone(), module_of(f.strip_prefix(src).unwrap())))
        .filter(|(_, m)| m != &["lib"] && m != &["main"])
        .collect();
    let known: BTreeSet<&Vec<String>> = modules.iter().map(|(_, m)| m).collect();
    let unit = |m: &[String]| m.iter().take(2).cloned().collect::<Vec<_>>().join("::");
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (file, module) in &modules {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for path in full_paths(&code, module) {
            let Some(target) = (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|p| known.contains(p)) else {
                continue;
            };
            let (a, b) = (unit(module), unit(&target));
            let nested = |x: &str, y: &str| x == y || y.starts_with(&format!("{x}::"));
            if !nested(&a, &b) && !nested(&b, &a) {
                edges.insert((a, b));
            }
        }
    }
    // Strongly connected components (Tarjan) with more than one member.
    let nodes: BTreeSet<String> = edges.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    let nodes: Vec<String> = nodes.into_iter().collect();
    let index_of = |n: &str| nodes.iter().position(|x| x == n).unwrap();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (a, b) in &edges {
        next[index_of(a)].push(index_of(b));
    }
    struct Tarjan<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        counter: usize,
        found: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.counter);
            self.low[v] = self.counter;
            self.counter += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.next[v].clone() {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let n = nodes.len();
    let mut t = Tarjan { next: &next, index: vec![None; n], low: vec![0; n], stack: Vec::new(), on_stack: vec![false; n], counter: 0, found: Vec::new() };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    let mut cycles: Vec<Vec<String>> = t
        .found
        .into_iter()
        .map(|c| {
            let mut names: Vec<String> = c.into_iter().map(|i| nodes[i].clone()).collect();
            names.sort();
            names
        })
        .collect();
    cycles.sort();
    cycles
}

#[test]
fn no_import_cycle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cycles = module_cycles(&src);
    assert!(cycles.is_empty(), "modules that use each other (directly or around a loop): {cycles:#?}");
}

#[test]
fn a_cycle_within_a_floor_is_reported() {
    let dir = std::env::temp_dir().join(format!("pecora-cycles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("cmd")).unwrap();
    std::fs::write(dir.join("cmd/mod.rs"), "pub mod doctor;\npub mod setup;\n").unwrap();
    std::fs::write(dir.join("cmd/setup.rs"), "use crate::cmd::{doctor::user_ids, index};\nuse super::mod_item;\n").unwrap();
    std::fs::write(dir.join("cmd/doctor.rs"), "fn f() { super::setup::run_postconf(); }\n").unwrap();
    std::fs::write(dir.join("pec.rs"), "").unwrap();
    let cycles = module_cycles(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cycles, [["cmd::doctor", "cmd::setup"]]);
}

#[test]
fn every_floor_names_a_module_of_the_crate() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for (module, _) in FLOORS {
        assert!(lib.contains(&format!("pub mod {module};")), "src/lib.rs declares no module `{module}`");
    }
}

#[test]
fn the_reader_finds_paths_in_use_trees_and_skips_comments() {
    let code = code_only(
        "use crate::{store::{Store, model::X}, pec};\n// crate::daemon in a comment\n/* crate::cmd */\nlet s = \"crate::milter\";\nfn f() { crate::runtime::x(); }\nuse other_crate::y;\n",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["pec", "runtime", "store"]);
}

#[test]
fn a_climbing_import_is_reported() {
    let dir = std::env::temp_dir().join(format!("pecora-layering-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("store/mod.rs"), "use crate::pec::x;\nfn f() { crate::runtime::metrics::global(); }\n").unwrap();
    std::fs::write(dir.join("pec.rs"), "use crate::{config::Config};\n").unwrap();
    std::fs::write(dir.join("serve.rs"), "").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].contains("src/pec.rs") && bad[0].contains("crate::config"), "{bad:#?}");
    assert!(bad[1].contains("`serve` has no floor"), "{bad:#?}");
    assert!(bad[2].contains("src/store/mod.rs") && bad[2].contains("crate::runtime"), "{bad:#?}");
}

