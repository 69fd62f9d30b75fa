//! A delivery the Dovecot hook never announced: the message is stored but its event cannot
//! reach pecora's spool (here `new/` refuses the mail user, so the hook's rename fails after
//! the commit). The reconciliation sweep finds the stored copy in Dovecot through pecora's
//! doveadm listener and certifies it once; later sweeps send nothing more.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[path = "common/lab.rs"]
mod lab;
use lab::{Lab, subject};

#[test]
fn a_delivery_the_hook_never_announced_is_certified_once() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let config = Lab::path(&beta["config_file"]);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "poll_interval = \"200ms\"",
        "poll_interval = \"200ms\"\nreconcile_interval = \"1s\"\nreconcile_after = \"1s\"",
    );
    assert!(text.contains("reconcile_interval"), "the lab's [delivery] section changed");
    std::fs::write(&config, text).unwrap();
    lab.reload_pecora(beta);

    // The hook cannot finish its event: new/ belongs to root, mode 0500.
    let new = Lab::path(&beta["delivery_spool"]).join("new");
    std::os::unix::fs::chown(&new, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o500)).unwrap();

    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let bob = beta["users"][0]["address"].as_str().unwrap();
    let out = lab.send(alpha, "starttls", 0, mario, &[bob], &[("Subject", "Senza evento")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stored = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(subject(&stored[0]), "POSTA CERTIFICATA: Senza evento");

    let consegna = |msgs: &[Vec<u8>]| msgs.iter().filter(|m| subject(m) == "CONSEGNA: Senza evento").count();
    let msgs = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| consegna(m) >= 1);
    assert_eq!(consegna(&msgs), 1);

    // The event really was lost: nothing reached new/, the hook left its file in tmp/.
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 0);
    assert!(std::fs::read_dir(Lab::path(&beta["delivery_spool"]).join("tmp")).unwrap().count() >= 1);
    let log = Lab::log(&Lab::path(&beta["pecora_log"]));
    assert!(log.contains("found by reconciliation"), "{log}");

    // Later sweeps find the delivery recorded and send nothing more.
    let start = Instant::now();
    let seen = Lab::log(&Lab::path(&beta["pecora_log"])).matches("found by reconciliation").count();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(Lab::log(&Lab::path(&beta["pecora_log"])).matches("found by reconciliation").count(), seen);
    assert!(start.elapsed() >= Duration::from_secs(4));
    let msgs = lab.fetch(alpha, &alpha["users"][0], "imaps");
    assert_eq!(consegna(&msgs), 1, "one receipt only");
}
