//! The Dovecot delivery hook (dovecot/pecora-delivered.lua) run by a real Lua 5.4, the
//! version Debian's Dovecot 2.3 links, with a stand-in for the `user` object and the
//! MessageNew event Dovecot hands it. Whatever the user name, the event file lands in the
//! spool's new/ and nowhere else, its name keeps to a safe set, and pecora's decoder reads
//! back exactly the user the hook was given, or refuses a name that could steer a path.
//! Events Dovecot reports with uid 0 (concurrent deliveries to one Maildir) never share a
//! name, and each name carries the Message-ID pecora finds the stored copy by.

use std::path::{Path, PathBuf};
use std::process::Command;

use pecora::delivery::{DeliveryEvent, Spool};

const HOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dovecot/pecora-delivered.lua");

/// Runs the hook for one stored message of `user` with the spool `spool`.
fn run_hook(spool: &Path, user: &str) {
    run_hook_with(spool, user, &[(7, "<opec.1@pec.alpha.test>")]);
}

/// Runs the hook for one transaction of `user` storing messages (uid, Message-ID).
fn run_hook_with(spool: &Path, user: &str, messages: &[(u32, &str)]) {
    let events: String = messages
        .iter()
        .map(|(uid, id)| {
            format!("dovecot_lua_notify_event_message_new(ctx, {{ name = \"MessageNew\", uid_validity = 1700000000, uid = {uid}, mailbox = \"INBOX\", message_id = {id:?} }})\n")
        })
        .collect();
    let harness = format!(
        r#"
dofile(arg[1])
local spool, name = arg[2], arg[3]
local user = {{ username = name }}
function user:plugin_getenv(k) if k == "pecora_spool" then return spool end end
local ctx = dovecot_lua_notify_begin_txn(user)
{events}dovecot_lua_notify_end_txn(ctx, true)
"#
    );
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
        let (token, rest) = rest.split_once('.').unwrap_or_else(|| panic!("{name}"));
        assert!(token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert!(
            rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"@_+.-=~".contains(&b)) && !rest.contains("..") && rest.matches('~').count() == 1,
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
            assert_eq!(by_name.message_id, "<opec.1@pec.alpha.test>");
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
    // The old, predictable name; the hook's names now carry a random token as well.
    std::os::unix::fs::symlink(&target, dir.join("tmp/1700000000.7.luca@x")).unwrap();
    run_hook(&dir, "luca@x");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    let new: Vec<_> = std::fs::read_dir(dir.join("new")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(new.len(), 1);
    assert!(std::fs::symlink_metadata(&new[0]).unwrap().is_file());
}

/// Issue 14: under concurrent LMTP deliveries Dovecot reports uid 0 (the Maildir uid is
/// assigned later). Before, every such event of one user was named
/// `UIDVALIDITY.0.USER`: they overwrote each other, and two processes raced on one tmp/
/// name. Each event now has a name of its own, which tells user, uid 0 and the Message-ID.
#[test]
fn events_without_a_uid_never_share_a_name_and_name_their_message() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("spool");
    Spool::new(&dir).ensure().unwrap();
    let user = "luca.verdi@pec.beta.test";
    // Two messages in one transaction, and the same two again in separate runs (separate
    // Lua states, as two LMTP processes), one of them a Message-ID too long for a name.
    let long = format!("<{}@pec.alpha.test>", "x".repeat(300));
    let ids = ["<opec.1@pec.alpha.test>", "<opec.2..~x@pec.alpha.test>"];
    run_hook_with(&dir, user, &[(0, ids[0]), (0, ids[1])]);
    for id in ids {
        run_hook_with(&dir, user, &[(0, id)]);
    }
    run_hook_with(&dir, user, &[(0, &long)]);
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0, "a tmp/ file was left");
    let names: Vec<String> = std::fs::read_dir(dir.join("new")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 5, "events overwrote each other: {names:?}");
    let mut by_id = std::collections::HashMap::<String, usize>::new();
    for name in &names {
        assert!(name.len() <= 240, "{name}");
        let e = DeliveryEvent::from_file_name(name).unwrap_or_else(|| panic!("{name} refused"));
        assert_eq!((e.user.as_str(), e.uid, e.uidvalidity), (user, 0, 1700000000));
        *by_id.entry(e.message_id.clone()).or_default() += 1;
        // The content says the same, with the Message-ID even when the name could not.
        let read = Spool::read(&dir.join("new").join(name)).unwrap().unwrap();
        assert_eq!((read.user.as_str(), read.uid), (user, 0));
        if !e.message_id.is_empty() {
            assert_eq!(read.message_id, e.message_id);
        } else {
            assert_eq!(read.message_id, long);
        }
    }
    assert_eq!(by_id.get(ids[0]), Some(&2), "{names:?}");
    assert_eq!(by_id.get(ids[1]), Some(&2), "{names:?}");
    assert_eq!(by_id.get(""), Some(&1), "the long Message-ID left out of its name: {names:?}");
}
