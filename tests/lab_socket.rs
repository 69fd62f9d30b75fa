//! The milter socket as packaged, on the lab: in Postfix's queue directory, in a
//! set-group-id directory of Postfix's group (2750), the socket 0660. Real Postfix reaches
//! it by the queue-relative name `unix:pecora/milter.sock` (the one a chrooted daemon
//! needs too); a process with only Postfix's primary group can connect, which is all a
//! Postfix daemon is sure to have; another local user cannot; `doctor` agrees.
//! And Dovecot's doveadm listener reserved for pecora (dovecot/pecora.conf.in): mode 0600,
//! so its unprivileged owner is served without a password and nobody else connects; and
//! its server runs `fetch` only, so even its owner cannot expunge, save, import, look up
//! users or delete a mailbox through it (issue 13, item 9).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

#[path = "common/access.rs"]
mod access;
#[path = "common/lab.rs"]
mod lab;
use access::{connect_as, python_as};
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

/// Runs a doveadm-server conversation on `socket` as `user` (only group `group`): the
/// greeting line, then, when it is `+`, the answer to `fetch -u mailbox_user 'hdr.message-id'
/// mailbox INBOX all`.
fn doveadm_as(user: &str, group: &str, socket: &Path, mailbox_user: &str) -> Result<String, String> {
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rb')\n\
s.sendall(b'VERSION\\tdoveadm-server\\t1\\t0\\n'); g=f.readline()\n\
if g!=b'+\\n': print(g); sys.exit(0)\n\
s.sendall(('\\t'+sys.argv[2]+'\\tfetch\\thdr.message-id\\tmailbox\\tINBOX\\tall\\n').encode())\n\
print(f.readline().decode().strip()); print(f.readline().decode().strip())\n";
    python_as(user, group, script, &[socket.as_os_str(), mailbox_user.as_ref()])
}

#[test]
fn only_its_owner_reads_mailboxes_through_the_doveadm_listener() {
    let lab = Lab::up();
    let (alpha, beta) = (lab.alpha(), lab.beta());
    let dovecot = Lab::path(&beta["dovecot_conf"]);
    let socket = dovecot.parent().unwrap().join("pecora-doveadm");
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "Dovecot serves a 0600 listener without a password");
    let owner = String::from_utf8(Command::new("id").args(["-u", "pecoralab"]).output().unwrap().stdout).unwrap();
    assert_eq!(m.uid().to_string(), owner.trim());

    // A delivered envelope, certified by beta's pecora through that listener.
    let mario = alpha["users"][0]["address"].as_str().unwrap();
    let bob = beta["users"][0]["address"].as_str().unwrap();
    let out = lab.send(alpha, "starttls", 0, mario, &[bob], &[("Subject", "Per doveadm")], "x");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let receipts = lab.wait_for(alpha, &alpha["users"][0], "imaps", |m| m.iter().any(|r| subject(r) == "CONSEGNA: Per doveadm"));
    assert!(!receipts.is_empty());
    let stored = lab.fetch(beta, &beta["users"][0], "imaps");
    let id = mail_parser::MessageParser::default().parse(&stored[0]).and_then(|m| m.message_id().map(str::to_string)).expect("a Message-ID");

    // Its owner, unprivileged, is served at once, without a password.
    let said = doveadm_as("pecoralab", "pecoralab", &socket, bob).expect("the listener's owner connects");
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some(format!("<{id}>").as_str()), "{said}");
    assert_eq!(lines.next(), Some("+"), "{said}");
    // Another local user cannot even connect.
    let denied = doveadm_as("nobody", "nogroup", &socket, bob).expect_err("another user reached the doveadm listener");
    assert!(denied.contains("Permission denied"), "{denied}");

    // Commands pecora never sends are refused, even to the listener's owner: Dovecot closes
    // the connection without running them (no `+` or `-` answer).
    let refused: &[&[&str]] = &[
        &["", bob, "expunge", "mailbox", "INBOX", "all"],
        &["", bob, "mailbox", "delete", "INBOX"],
        &["", bob, "flags", "add", "\\Deleted", "mailbox", "INBOX", "all"],
        &["", bob, "save", "-m", "INBOX"],
        &["", bob, "import", "maildir:/tmp", "", "all"],
        &["", "", "user", bob],
        &["", bob, "copy", "Trash", "user", bob, "mailbox", "INBOX", "all"],
    ];
    for args in refused {
        let answer = doveadm_command_as("pecoralab", "pecoralab", &socket, args).expect("the owner connects");
        assert_eq!(answer, "", "{args:?} was answered: {answer:?}");
    }
    let log = Lab::log(&Lab::path(&beta["dovecot_log"]));
    for name in ["expunge", "mailbox", "flags", "save", "import", "user", "copy"] {
        assert!(log.contains(&format!("isn't allowed to use command: {name}")), "{name} not refused in Dovecot's log:\n{log}");
    }
    // The message is still there, unflagged, and fetch still works.
    let said = doveadm_as("pecoralab", "pecoralab", &socket, bob).expect("the listener's owner connects");
    assert_eq!(said.lines().next(), Some(format!("<{id}>").as_str()), "{said}");
    assert_eq!(lab.fetch(beta, &beta["users"][0], "imaps").len(), 1);

    // doctor's check finds the server limited to fetch.
    let f = pecora::cmd::doctor::check_doveadm_server(&socket);
    assert_eq!(f.level, pecora::cmd::doctor::Level::Ok, "{f:?}");
    assert!(f.message.contains("runs fetch only"), "{f:?}");
}

/// Sends one doveadm-server request (`args`, tab-separated) on `socket` as `user` (only
/// group `group`) after the handshake; everything the server answers until it closes the
/// connection or is silent for 10 s.
fn doveadm_command_as(user: &str, group: &str, socket: &Path, args: &[&str]) -> Result<String, String> {
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10); f=s.makefile('rb')\n\
s.sendall(b'VERSION\\tdoveadm-server\\t1\\t0\\n'); g=f.readline()\n\
if g!=b'+\\n': print('greeting', g); sys.exit(0)\n\
s.sendall(('\\t'.join(sys.argv[2:])+'\\n').encode())\n\
try: out=f.read()\n\
except socket.timeout: out=b'(silent)'\n\
sys.stdout.write(out.decode(errors='replace'))\n";
    let mut argv: Vec<&std::ffi::OsStr> = vec![socket.as_os_str()];
    argv.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    python_as(user, group, script, &argv)
}
