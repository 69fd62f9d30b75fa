//! The delivery spool is hostile input (issue 13, item 8): whoever may write it (Dovecot's
//! mail user, any member of the spool's group) can leave a FIFO, a symbolic link to
//! /dev/zero or to another event, a huge sparse file, or a name whose user decodes to
//! `../`. A running `pecora serve` must move each aside to bad/ with the reason logged,
//! never hang or read without bound, never hand such a user name to Dovecot, and go on
//! processing genuine events.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pki.rs"]
mod pki;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon::{Daemon, free_port};

fn event(user: &str, uid: u32) -> String {
    format!("version=1\nuser={user}\nmailbox=INBOX\nuidvalidity=1700000000\nuid={uid}\nmessage_id=<opec.{uid}@pec.alpha.test>\ntime=946684800\n")
}

/// Waits (20 s at most) until `done` holds; panics with the daemon's log otherwise.
fn wait_until(d: &Daemon, what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}; pecora's log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A `pecora serve` with a spool in `dir` (delivered/{tmp,new,bad}) and no Dovecot: a
/// user name that reached Dovecot would fail as transient and stay in new/. `delivery`:
/// the rest of its [delivery] section.
fn serve(dir: &Path, delivery: &str) -> Daemon {
    let d = dir.display();
    pki::provider(dir);
    let spool = dir.join("delivered");
    for sub in ["tmp", "new", "bad"] {
        std::fs::create_dir_all(spool.join(sub)).unwrap();
    }
    let milter = format!("127.0.0.1:{}", free_port());
    let config = pki::config(
        dir,
        &format!(
            "[listen]\nmilter = \"inet:{milter}\"\ndelivery_spool = \"{d}/delivered\"\n\
             [store]\nurl = \"sqlite:{d}/registry.db\"\ncheckpoint_dir = \"{d}/checkpoints\"\n\
             [inject]\nendpoint = \"inet:127.0.0.1:{}\"\nhelo = \"spool.test\"\n\
             [limits]\nspool_dir = \"{d}/spool\"\n\
             [delivery]\ndoveadm_socket = \"{d}/no-doveadm\"\n{delivery}\n",
            free_port()
        ),
    );
    Daemon::start(&config, &milter, &dir.join("pecora.log"), &[])
}

#[test]
fn hostile_spool_entries_go_to_bad_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = serve(dir.path(), "poll_interval = \"100ms\"");
    let spool = dir.path().join("delivered");
    let new = spool.join("new");
    let bad = spool.join("bad");

    // A genuine event first: the worker runs (no reception record: processed, no receipt).
    std::fs::write(new.join("1700000000.1.luca@pec.beta.test"), event("luca@pec.beta.test", 1)).unwrap();
    wait_until(&d, "the first genuine event was not processed", || !exists(&new.join("1700000000.1.luca@pec.beta.test")));
    assert!(!exists(&bad.join("1700000000.1.luca@pec.beta.test")));

    // The hostile entries, and a genuine event sorted after all of them.
    let real = dir.path().join("real-event");
    std::fs::write(&real, event("luca@pec.beta.test", 2)).unwrap();
    let fifo = new.join("1700000000.2.fifo@pec.beta.test");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o660) }, 0, "mkfifo");
    std::os::unix::fs::symlink("/dev/zero", new.join("1700000000.3.zero@pec.beta.test")).unwrap();
    std::os::unix::fs::symlink(&real, new.join("1700000000.4.link@pec.beta.test")).unwrap();
    let huge = std::fs::File::create(new.join("1700000000.5.huge@pec.beta.test")).unwrap();
    huge.set_len(100 << 20).unwrap();
    drop(huge);
    // `../../etc/passwd` by the file name alone (an empty file), and by the content.
    std::fs::write(new.join("1700000000.6.=2E=2E=2F=2E=2E=2Fetc=2Fpasswd"), "").unwrap();
    std::fs::write(new.join("1700000000.7.dots@pec.beta.test"), event("..%2F..%2Fetc%2Fpasswd", 7)).unwrap();
    let genuine = new.join("1700000000.9.luca@pec.beta.test");
    std::fs::write(&genuine, event("luca@pec.beta.test", 9)).unwrap();

    let hostile = [
        ("1700000000.2.fifo@pec.beta.test", "not a regular file but a FIFO"),
        ("1700000000.3.zero@pec.beta.test", "not a regular file but a symbolic link"),
        ("1700000000.4.link@pec.beta.test", "not a regular file but a symbolic link"),
        ("1700000000.5.huge@pec.beta.test", "104857600 bytes, more than an event may hold"),
        ("1700000000.6.=2E=2E=2F=2E=2E=2Fetc=2Fpasswd", "invalid field file name"),
        ("1700000000.7.dots@pec.beta.test", "invalid field user: \"../../etc/passwd\""),
    ];
    wait_until(&d, "the genuine event after the hostile entries was not processed", || !exists(&genuine));
    assert!(!exists(&bad.join("1700000000.9.luca@pec.beta.test")), "the genuine event went to bad/");
    wait_until(&d, "the hostile entries did not all leave new/", || hostile.iter().all(|(n, _)| !exists(&new.join(n))));
    // Each "moved to bad/" line is written once its rename is done: it may trail the file.
    let logged = |log: &str, name: &str, why: &str| log.lines().any(|l| l.contains(name) && l.contains(why) && l.contains("moved to bad/"));
    wait_until(&d, "a hostile entry's reason was not logged", || {
        let log = d.log_text();
        hostile.iter().all(|(n, why)| logged(&log, n, why))
    });
    let log = d.log_text();
    for (name, why) in hostile {
        assert!(exists(&bad.join(name)), "{name} not in bad/: {:?}", std::fs::read_dir(&bad).unwrap().collect::<Vec<_>>());
        assert!(logged(&log, name, why), "no logged reason ({why}) for {name}:\n{log}");
    }
    // What the link pointed to is untouched; the links themselves were moved.
    assert_eq!(std::fs::read_to_string(&real).unwrap(), event("luca@pec.beta.test", 2));
    assert!(std::fs::symlink_metadata(bad.join("1700000000.3.zero@pec.beta.test")).unwrap().file_type().is_symlink());
    // No user name that could steer a path went to Dovecot.
    assert!(!log.contains("no-doveadm"), "pecora asked Dovecot about a refused event:\n{log}");

    // And the worker is still there for the next one.
    let next = new.join("1700000000.10.luca@pec.beta.test");
    std::fs::write(&next, event("luca@pec.beta.test", 10)).unwrap();
    wait_until(&d, "the worker stopped after the hostile entries", || !exists(&next));
    let mut d = d;
    assert!(d.running(), "pecora died:\n{}", d.log_text());
}

/// Issue 14: an event landing in new/ wakes the worker at once (inotify), with no periodic
/// read for an hour; an event that names no stored message (Dovecot told no uid, and the
/// name carries no Message-ID) goes to bad/ with the reason, without asking Dovecot, instead
/// of being retried forever.
#[test]
fn an_event_wakes_the_worker_and_one_naming_nothing_goes_to_bad() {
    let dir = tempfile::tempdir().unwrap();
    let d = serve(dir.path(), "poll_interval = \"1h\"\nrescan_interval = \"1h\"");
    let spool = dir.path().join("delivered");
    let (new, bad) = (spool.join("new"), spool.join("bad"));
    // Past the first read of the spool at start.
    std::thread::sleep(Duration::from_millis(500));

    // As the hook publishes: written in tmp/, renamed into new/. Dovecot told no uid; the
    // name carries the Message-ID (no reception record: processed, no receipt).
    for (i, name) in ["1700000000.0.0a1b.luca@pec.beta.test~opec.1@pec.alpha.test", "1700000000.0.0a1c.luca@pec.beta.test~opec.2@pec.alpha.test"]
        .iter()
        .enumerate()
    {
        std::fs::write(spool.join("tmp").join(name), event("luca@pec.beta.test", 0).replace("opec.0", &format!("opec.{}", i + 1))).unwrap();
        let start = Instant::now();
        std::fs::rename(spool.join("tmp").join(name), new.join(name)).unwrap();
        while exists(&new.join(name)) {
            assert!(start.elapsed() < Duration::from_secs(3), "{name} not taken up within 3 s; pecora's log:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!exists(&bad.join(name)), "{name} went to bad/:\n{}", d.log_text());
    }

    // Nothing to find it by: to bad/ at once, with the reason.
    let nothing = "1700000000.0.0a1d.luca@pec.beta.test~";
    std::fs::write(new.join(nothing), "").unwrap();
    wait_until(&d, "the event naming nothing did not go to bad/", || exists(&bad.join(nothing)));
    // pecora logs "moved to bad/" once the rename is done, so the line may trail the file.
    let logged = |log: &str| {
        log.lines().any(|l| l.contains(nothing) && l.contains("Dovecot told no uid and the event names no Message-ID") && l.contains("moved to bad/"))
    };
    wait_until(&d, "no logged reason for the event set aside", || logged(&d.log_text()));
    let log = d.log_text();
    assert!(!log.contains("no-doveadm"), "pecora asked Dovecot about uid 0:\n{log}");
    let mut d = d;
    assert!(d.running(), "pecora died:\n{}", d.log_text());
}
