//! The milter socket as packaged, on the lab: in Postfix's queue directory, in a
//! set-group-id directory of Postfix's group (2750), the socket 0660. Real Postfix reaches
//! it by the queue-relative name `unix:pecora/milter.sock` (the one a chrooted daemon
//! needs too); a process with only Postfix's primary group can connect, which is all a
//! Postfix daemon is sure to have; another local user cannot; `doctor` agrees.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

#[path = "common/access.rs"]
mod access;
#[path = "common/lab.rs"]
mod lab;
use access::connect_as;
use lab::{Lab, subject};

fn gid_of(group: &str) -> u32 {
    let out = Command::new("getent").args(["group", group]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split(':').nth(2).unwrap().trim().parse().unwrap()
}

#[test]
fn postfix_and_only_postfix_reaches_the_packaged_milter_socket() {
    let lab = Lab::up();
    let alpha = lab.alpha();
    let sock = std::path::PathBuf::from(alpha["milter"].as_str().unwrap().strip_prefix("unix:").expect("a unix milter socket"));
    let queue = Lab::path(&alpha["dir"]).join("queue");
    assert_eq!(sock, queue.join("pecora/milter.sock"), "the lab uses the packaged layout");

    // The layout: the directory set-group-id of Postfix's group, the socket inheriting it.
    let postfix_gid = gid_of(&String::from_utf8_lossy(&Command::new("id").args(["-gn", "postfix"]).output().unwrap().stdout).trim().to_string());
    let dir = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o7777, 0o2750);
    assert_eq!(dir.gid(), postfix_gid);
    let s = std::fs::metadata(&sock).unwrap();
    assert_eq!(s.permissions().mode() & 0o777, 0o660);
    assert_eq!(s.gid(), postfix_gid, "the socket takes the directory's group");

    // Postfix's user with its primary group alone connects; nobody does not.
    connect_as("postfix", "postfix", &sock).expect("Postfix's user must reach the milter");
    let denied = connect_as("nobody", "nogroup", &sock).expect_err("another local user reached the milter");
    assert!(denied.contains("Permission denied"), "{denied}");

    // Real Postfix names it relative to its queue directory, and uses it: a message through
    // the access point gets its acceptance, the envelope reaches beta.
    let pf = Lab::path(&alpha["postfix_dir"]);
    let postconf = |k: &str| {
        let o = Command::new("postconf").arg("-c").arg(&pf).args(["-h", k]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(postconf("non_smtpd_milters"), "unix:pecora/milter.sock");
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let beta = lab.beta();
    let bob = beta["users"][0]["address"].as_str().unwrap();
    let out = lab.send(alpha, "starttls", 0, mario, &[bob], &[("Subject", "Per socket")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let got = lab.wait_for(beta, &beta["users"][0], "imaps", |m| !m.is_empty());
    assert_eq!(subject(&got[0]), "POSTA CERTIFICATA: Per socket");
    let receipts = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| m.len() >= 2);
    let mut subjects: Vec<String> = receipts.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["ACCETTAZIONE: Per socket", "CONSEGNA: Per socket"]);
    let maillog = Lab::log(&Lab::path(&alpha["maillog"]));
    assert!(!maillog.contains("connect to Milter service"), "{maillog}");

    // doctor, on the lab's pecora and Postfix, finds the socket right.
    let out = Command::new(env!("CARGO_BIN_EXE_pecora"))
        .arg("--config")
        .arg(Lab::path(&alpha["config_file"]))
        .arg("doctor")
        .arg("--postfix-dir")
        .arg(&pf)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("only Postfix (and root) can reach the milter socket"), "{report}");
    assert!(report.contains("non_smtpd_milters includes pecora (unix:pecora/milter.sock)"), "{report}");
    assert!(!report.contains("cannot reach pecora's milter socket"), "{report}");
    assert!(!report.contains("listens on TCP"), "{report}");
}
