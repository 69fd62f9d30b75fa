//! The Roundcube plugin's own files, without a lab: every PHP file parses (`php -l`), the
//! English and Italian texts have the same labels, and every label the plugin asks for
//! exists, including one per PEC kind and receipt type pecora reports.

use std::collections::BTreeSet;
use std::process::Command;

const PLUGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/webmail/roundcube/pecora");

/// The labels a Roundcube localization file defines, as PHP itself reads them.
fn labels(lang: &str) -> BTreeSet<String> {
    let out = Command::new("php")
        .arg("-r")
        .arg(format!("include '{PLUGIN}/localization/{lang}.inc'; echo implode(\"\\n\", array_keys($labels));"))
        .output()
        .expect("php (tests/run installs php-fpm, which brings it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn plugin_files_parse_and_every_label_exists_in_both_languages() {
    for f in ["pecora.php", "config.inc.php.dist", "localization/en_US.inc", "localization/it_IT.inc"] {
        let out = Command::new("php").arg("-l").arg(format!("{PLUGIN}/{f}")).output().expect("php");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let en = labels("en_US");
    let it = labels("it_IT");
    assert_eq!(en, it, "en_US and it_IT define different labels");

    let php = std::fs::read_to_string(format!("{PLUGIN}/pecora.php")).unwrap();
    let js = std::fs::read_to_string(format!("{PLUGIN}/pecora.js")).unwrap();
    let mut wanted = BTreeSet::new();
    for (text, open) in [(&php, "gettext('"), (&js, "get_label('pecora.")] {
        for piece in text.split(open).skip(1) {
            let key = piece.split('\'').next().unwrap();
            // A prefix completed at run time (kind_, receipt_, badge_) is checked below.
            if !key.ends_with('_') {
                wanted.insert(key.to_string());
            }
        }
    }
    assert!(wanted.len() > 15, "{wanted:?}");
    for t in pecora::pec::Tipo::ALL {
        wanted.insert(format!("kind_{}", t.as_str()));
        wanted.insert(format!("badge_{}", t.as_str()));
    }
    wanted.insert("badge_anomalia".into());
    for r in ["completa", "breve", "sintetica"] {
        assert!(pecora::pec::ReceiptType::parse(r).is_some(), "{r}");
        wanted.insert(format!("receipt_{r}"));
    }
    let missing: Vec<_> = wanted.difference(&en).collect();
    assert!(missing.is_empty(), "labels used but not defined: {missing:?}");
}
