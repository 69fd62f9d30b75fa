//! The Dovecot delivery hook (dovecot/pecora-delivered.lua) run by a real Lua 5.4, the
//! version Debian's Dovecot 2.3 links, with a stand-in for the `user` object and the
//! MessageNew event Dovecot hands it. Whatever the user name, the event file lands in the
//! spool's new/ and nowhere else, its name keeps to a safe set, and pecora's decoder reads
//! back exactly the user the hook was given, or refuses a name that could steer a path.

use std::path::{Path, PathBuf};
use std::process::Command;

use pecora::delivery::{DeliveryEvent, Spool};

const HOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dovecot/pecora-delivered.lua");

/// Runs the hook for one stored message of `user` with the spool `spool`.
fn run_hook(spool: &Path, user: &str) {
    let harness = r#"
dofile(arg[1])
local spool, name = arg[2], arg[3]
local user = { username = name }
function user:plugin_getenv(k) if k == "pecora_spool" then return spool end end
local ctx = dovecot_lua_notify_begin_txn(user)
dovecot_lua_notify_event_message_new(ctx, { uid_validity = 1700000000, uid = 7, mailbox = "INBOX", message_id = "<opec.1@pec.alpha.test>" })
dovecot_lua_notify_end_txn(ctx, true)
"#;
    let script = spool.parent().unwrap().join("harness.lua");
    std::fs::write(&script, harness).unwrap();
    let out = Command::new("lua5.4")
        .arg(&script)
        .arg(HOOK)
        .arg(spool)
        .arg(user)
        .output()
        .expect("lua5.4 (Debian package lua5.4; tests/run installs it)");
    assert!(out.status.success(), "{user:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn every_user_name_stays_inside_the_spool_and_decodes_back() {
    // (user name, whether pecora accepts it)
    let cases: &[(&str, bool)] = &[
        ("mario.rossi@pec.beta.test", true),
        ("luca", true),
        ("a b=c%d+e@x", true),
        ("josé@pec.beta.test", true),
        ("'\"<>;$(id)`@x", true),
        ("../../../../tmp/pecora-hook-escape", false),
        ("..", false),
        ("a..b@x", false),
        ("a/b@x", false),
        ("a\nb@x", false),
        ("a\tb\r@x", false),
        ("a\u{7f}b@x", false),
    ];
    for (user, accepted) in cases {
        let root = tempfile::tempdir().unwrap();
        // The spool one level down, so an escape by `..` would land in `root`.
        let dir = root.path().join("spool");
        Spool::new(&dir).ensure().unwrap();
        run_hook(&dir, user);

        let found = tree(root.path());
        let new: Vec<&PathBuf> = found.iter().filter(|p| p.parent() == Some(Path::new("spool/new"))).collect();
        assert_eq!(new.len(), 1, "{user:?}: {found:?}");
        let expected: Vec<PathBuf> = ["harness.lua", "spool", "spool/bad", "spool/new", "spool/tmp"].iter().map(PathBuf::from).chain([new[0].clone()]).collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(found, expected, "{user:?}: the hook wrote outside new/");

        let name = new[0].file_name().unwrap().to_str().expect("an ASCII name");
        let rest = name.strip_prefix("1700000000.7.").unwrap_or_else(|| panic!("{name}"));
        assert!(
            rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"@_+.-=".contains(&b)) && !rest.contains(".."),
            "{user:?}: unsafe file name {name:?}"
        );
        assert!(!Path::new("/tmp/pecora-hook-escape").exists());

        // pecora reads the file back, and the name alone, to the same user, or refuses both.
        let by_name = DeliveryEvent::from_file_name(name);
        let read = Spool::read(&dir.join(new[0].strip_prefix("spool").unwrap())).unwrap();
        if *accepted {
            let by_name = by_name.unwrap_or_else(|| panic!("{user:?}: {name} refused"));
            assert_eq!(by_name.user, *user);
            assert_eq!((by_name.uidvalidity, by_name.uid), (1700000000, 7));
            let e = read.unwrap_or_else(|e| panic!("{user:?}: {e}"));
            assert_eq!(e.user, *user);
            assert_eq!(e.mailbox, "INBOX");
            assert_eq!(e.pec_id(), "opec.1@pec.alpha.test");
        } else {
            assert!(by_name.is_none(), "{user:?}: {name} accepted");
            assert!(read.is_err(), "{user:?}: the file's content accepted");
        }
    }
}

#[test]
fn the_hook_does_not_write_through_a_link_left_in_tmp() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("spool");
    Spool::new(&dir).ensure().unwrap();
    let target = root.path().join("precious");
    std::fs::write(&target, "keep me").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("tmp/1700000000.7.luca@x")).unwrap();
    run_hook(&dir, "luca@x");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(dir.join("new/1700000000.7.luca@x").is_file());
}
