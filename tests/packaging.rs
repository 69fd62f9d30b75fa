//! The .deb and .rpm packages: built from this repository, the .deb installed on this
//! machine, checked file by file, removed and purged; the .rpm's file list compared
//! with the .deb's.
//!
//! Needs root (CI is root), dpkg, `rpm` (Debian's package) and the packaging tools, which
//! `packaging/build --tools` installs from crates.io when missing. The packages are built
//! the way the README says, by `packaging/build` (a release build, then cargo-deb and
//! cargo-generate-rpm), in a target directory of their own (`target/package`), so the
//! release build never waits for the lock `cargo test` holds on `target/`. `tests/run`
//! starts that release build in the background before the suite, so by the time this
//! test runs it is done or nearly; alone, this test builds it (a few minutes).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[path = "common/access.rs"]
mod access;
#[path = "common/pki.rs"]
mod pki;
use access::connect_as;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).stdout == b"0\n"
}

fn id_of(kind: &str, name: &str) -> u32 {
    let line = ok(Command::new("getent").args([kind, name]));
    line.split(':')
        .nth(2)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("getent {kind} {name}: {line}"))
}

/// Asserts owner, group and permission bits (including set-group-id) of a path.
fn assert_owned(path: &str, user: &str, group: &str, mode: u32) {
    let md = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(md.uid(), id_of("passwd", user), "{path} owner");
    assert_eq!(md.gid(), id_of("group", group), "{path} group");
    assert_eq!(
        md.permissions().mode() & 0o7777,
        mode,
        "{path} mode {:o}",
        md.permissions().mode()
    );
}

/// Regular files of a repository directory, as the names the package must carry.
fn repo_files(dir: &str) -> BTreeSet<String> {
    fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn package_installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "pecora"]))
        .stdout
        .starts_with(b"install ok")
}

/// Purges the package if a failed assertion left it installed.
struct PurgeOnDrop;
impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "pecora"]).output();
    }
}

fn one_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one .{ext} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

#[test]
fn deb_installs_removes_and_purges_and_rpm_carries_the_same_files() {
    assert!(
        is_root(),
        "tests/packaging.rs installs the .deb with dpkg and needs root (CI runs as root); \
         run it as root or skip it with `cargo test -- --skip deb_installs`"
    );
    for tool in ["dpkg", "dpkg-deb", "rpm", "gzip"] {
        assert!(
            run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                .status
                .success(),
            "{tool} is missing: apt-get install -y rpm dpkg-dev"
        );
    }
    ok(Command::new(Path::new(ROOT).join("packaging/build")).arg("--tools"));

    // A pecora installed by hand (README) is not ours to purge. (Tests that run the
    // daemon with default paths may leave /var/lib/pecora/checkpoints behind; that is
    // not a registry.)
    if !package_installed() {
        assert!(
            !Path::new("/var/lib/pecora/registry.db").exists(),
            "/var/lib/pecora/registry.db exists but the pecora package is not installed: \
             refusing to install and purge over someone's registry"
        );
    }
    let _purge = PurgeOnDrop;
    if package_installed() {
        ok(Command::new("dpkg").args(["--purge", "pecora"]));
    }

    // ---- build: `packaging/build --deb`, as the README says.
    let out = tempfile::tempdir().unwrap();
    let target = Path::new(ROOT).join("target/package");
    for old in ["debian", "generate-rpm"] {
        let _ = fs::remove_dir_all(target.join(old));
    }
    ok(Command::new(Path::new(ROOT).join("packaging/build"))
        .current_dir(ROOT)
        .env("CARGO_TARGET_DIR", &target)
        .arg("--deb"));
    let built_deb = one_file(&target.join("debian"), "deb");
    let deb = out.path().join(built_deb.file_name().unwrap());
    fs::copy(&built_deb, &deb).unwrap();
    // The binary packaged is the release build's.
    let built = target.join("release/pecora");
    assert!(built.exists(), "{} missing after packaging/build", built.display());

    let control = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(control.contains("Package: pecora"), "{control}");
    assert!(control.contains("Depends: adduser"), "{control}");
    // The webmail is optional: Roundcube, nginx and PHP are only suggested.
    for line in control.lines().filter(|l| l.trim_start().starts_with("Depends:") || l.trim_start().starts_with("Recommends:")) {
        assert!(!["roundcube", "nginx", "php"].iter().any(|w| line.contains(w)), "{line}");
    }
    assert!(control.lines().any(|l| l.trim_start().starts_with("Suggests:") && l.contains("roundcube")), "{control}");
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let deb_files: BTreeSet<String> = contents
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();

    // ---- install
    // An earlier package put pecora in group mail: this one takes it out (the user outlives
    // a purge, so it may be there already).
    if run(Command::new("getent").args(["passwd", "pecora"])).status.success() {
        ok(Command::new("usermod").args(["--append", "--groups", "mail", "pecora"]));
    }
    // The way the README says: `apt install ./pecora_*.deb` (apt resolves the Depends).
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    ok(Command::new("apt-get")
        .current_dir(out.path())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .arg(format!("./{name}")));
    assert!(package_installed());
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "pecora"]));
    assert!(conffiles.contains("/etc/pecora/pecora.toml"), "{conffiles}");

    // Files.
    assert_owned("/usr/sbin/pecora", "root", "root", 0o755);
    assert_owned("/lib/systemd/system/pecora.service", "root", "root", 0o644);
    assert_eq!(
        fs::read_to_string("/lib/systemd/system/pecora.service").unwrap(),
        fs::read_to_string(Path::new(ROOT).join("packaging/pecora.service")).unwrap()
    );
    assert_owned("/etc/pecora", "root", "pecora", 0o750);
    assert_owned("/etc/pecora/pecora.toml", "root", "pecora", 0o640);
    assert_eq!(
        fs::read_to_string("/etc/pecora/pecora.toml").unwrap(),
        fs::read_to_string(Path::new(ROOT).join("config/pecora.toml")).unwrap()
    );
    for dir in [
        "postfix",
        "dovecot",
        "webmail/nginx",
        "webmail/roundcube",
        "webmail/roundcube/pecora",
        "webmail/roundcube/pecora/localization",
        "webmail/roundcube/pecora/skins/elastic",
    ] {
        let shipped: BTreeSet<String> = fs::read_dir(format!("/usr/share/pecora/{dir}"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(shipped, repo_files(dir), "/usr/share/pecora/{dir}");
        for f in &shipped {
            let installed = format!("/usr/share/pecora/{dir}/{f}");
            assert_owned(&installed, "root", "root", 0o644);
            assert_eq!(
                fs::read(&installed).unwrap(),
                fs::read(Path::new(ROOT).join(dir).join(f)).unwrap(),
                "{installed}"
            );
        }
    }
    assert!(Path::new("/usr/share/pecora/dovecot/pecora-delivered.lua").is_file());
    for (page, source) in [
        ("/usr/share/man/man8/pecora.8.gz", "packaging/pecora.8"),
        (
            "/usr/share/man/man5/pecora.toml.5.gz",
            "packaging/pecora.toml.5",
        ),
    ] {
        let text = ok(Command::new("gzip").args(["-dc", page]));
        assert_eq!(
            text,
            fs::read_to_string(Path::new(ROOT).join(source)).unwrap(),
            "{page}"
        );
    }
    assert!(Path::new("/usr/share/doc/pecora/README.md").is_file());
    let copyright = fs::read_to_string("/usr/share/doc/pecora/copyright").unwrap();
    assert!(
        copyright.contains("GNU GENERAL PUBLIC LICENSE"),
        "copyright lacks the licence"
    );

    // The user and its groups.
    let passwd = ok(Command::new("getent").args(["passwd", "pecora"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.get(5), Some(&"/var/lib/pecora"), "{passwd}");
    assert!(
        fields
            .get(6)
            .is_some_and(|s| s.ends_with("nologin") || s.ends_with("false")),
        "{passwd}"
    );
    assert_eq!(
        fields.get(3).and_then(|g| g.parse::<u32>().ok()),
        Some(id_of("group", "pecora"))
    );
    // Least privilege: the delivery spool's own group, not `mail` (every mailbox in
    // /var/mail).
    let groups = ok(Command::new("id").args(["-nG", "pecora"]));
    assert!(
        groups.split_whitespace().any(|g| g == "pecora-delivery"),
        "pecora not in group pecora-delivery: {groups}"
    );
    assert!(
        !groups.split_whitespace().any(|g| g == "mail"),
        "pecora is in group mail: {groups}"
    );
    if run(Command::new("getent").args(["group", "postdrop"]))
        .status
        .success()
    {
        assert!(
            groups.split_whitespace().any(|g| g == "postdrop"),
            "pecora not in postdrop: {groups}"
        );
    }

    // Directories.
    assert_owned("/var/lib/pecora", "pecora", "pecora", 0o750);
    assert_owned("/var/lib/pecora/checkpoints", "pecora", "pecora", 0o750);
    assert_owned("/var/spool/pecora", "pecora", "pecora-delivery", 0o750);
    assert_owned("/var/spool/pecora/tmp", "pecora", "pecora", 0o700);
    for d in ["", "/tmp", "/new", "/bad"] {
        assert_owned(
            &format!("/var/spool/pecora/delivered{d}"),
            "pecora",
            "pecora-delivery",
            0o2770,
        );
    }

    // The milter socket's directory: in Postfix's queue directory (chrooted daemons reach
    // it), set-group-id of Postfix's group. The installed daemon, run as user pecora the
    // way the unit runs it, makes its socket there; Postfix's user with its primary group
    // alone (all a Postfix daemon is sure to have) connects, another local user cannot.
    let postfix_group = ok(Command::new("id").args(["-gn", "postfix"])).trim().to_string();
    assert_owned("/var/spool/postfix/pecora", "pecora", &postfix_group, 0o2750);
    packaged_socket_serves_postfix_only(&postfix_group);

    // The units parse (no running systemd here: offline verification only). systemd-analyze
    // comes with Debian's `systemd` package, which tests/run installs: its absence fails.
    assert!(
        run(Command::new("sh").args(["-c", "command -v systemd-analyze"]))
            .status
            .success(),
        "systemd-analyze is missing: apt-get install -y systemd (tests/run installs it)"
    );
    for unit in [
        "pecora.service",
        "pecora-index-update.service",
        "pecora-index-update.timer",
    ] {
        let path = format!("/lib/systemd/system/{unit}");
        assert!(Path::new(&path).is_file(), "{path} not installed");
        let v = run(Command::new("systemd-analyze").args(["verify", &path]));
        let err = String::from_utf8_lossy(&v.stderr);
        assert!(
            v.status.success() && !err.contains(&format!("{unit}:")),
            "systemd-analyze verify {unit}:\n{err}"
        );
    }

    // The installed binary runs.
    let version = ok(Command::new("/usr/sbin/pecora").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("pecora {}", env!("CARGO_PKG_VERSION"))
    );
    // Nothing is configured: doctor reports it (exit 1) and does not crash.
    let doctor = run(Command::new("/usr/sbin/pecora").args([
        "--config",
        "/etc/pecora/pecora.toml",
        "doctor",
    ]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
    assert_eq!(doctor.status.code(), Some(1), "doctor:\n{said}");
    assert!(!said.contains("panicked"), "doctor crashed:\n{said}");
    assert!(
        said.contains("/etc/pecora/signing.crt"),
        "doctor does not name the missing certificate:\n{said}"
    );

    // Reinstalling (the upgrade path of the scripts) keeps a changed configuration.
    let mut changed = fs::read_to_string("/etc/pecora/pecora.toml").unwrap();
    changed.push_str("# changed by the admin\n");
    fs::write("/etc/pecora/pecora.toml", &changed).unwrap();
    ok(Command::new("dpkg").arg("--install").arg(&deb));
    assert_eq!(
        fs::read_to_string("/etc/pecora/pecora.toml").unwrap(),
        changed
    );
    assert_owned("/etc/pecora/pecora.toml", "root", "pecora", 0o640);

    // Data written while installed.
    fs::write("/var/lib/pecora/registry.db", b"x").unwrap();
    fs::write("/etc/pecora/signing.key", b"not really a key").unwrap();

    // ---- remove: program gone, configuration and data kept.
    ok(Command::new("dpkg").args(["--remove", "pecora"]));
    for gone in [
        "/usr/sbin/pecora",
        "/lib/systemd/system/pecora.service",
        "/usr/share/pecora",
        "/usr/share/man/man8/pecora.8.gz",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after remove");
    }
    for kept in [
        "/etc/pecora/pecora.toml",
        "/var/lib/pecora/registry.db",
        "/var/spool/pecora/delivered/new",
    ] {
        assert!(Path::new(kept).exists(), "{kept} removed by dpkg --remove");
    }

    // ---- purge: configuration, registry and spool gone; the admin's key stays.
    ok(Command::new("dpkg").args(["--purge", "pecora"]));
    for gone in [
        "/etc/pecora/pecora.toml",
        "/var/lib/pecora",
        "/var/spool/pecora",
        "/var/spool/postfix/pecora",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    assert!(
        Path::new("/etc/pecora/signing.key").exists(),
        "purge deleted the signing key"
    );
    fs::remove_file("/etc/pecora/signing.key").unwrap();
    fs::remove_dir("/etc/pecora").unwrap();
    assert!(!package_installed());

    // ---- rpm: the same files, with RPM's conventions for man pages and the licence.
    ok(Command::new(Path::new(ROOT).join("packaging/build"))
        .current_dir(ROOT)
        .env("CARGO_TARGET_DIR", &target)
        .arg("--rpm"));
    let rpm = one_file(&target.join("generate-rpm"), "rpm");
    let listed = ok(Command::new("rpm").arg("-qlp").arg(&rpm));
    let rpm_files: BTreeSet<String> = listed.lines().map(str::to_owned).collect();
    let expected: BTreeSet<String> = deb_files
        .iter()
        .map(|f| match f.as_str() {
            "/usr/share/doc/pecora/copyright" => "/usr/share/licenses/pecora/LICENSE".to_owned(),
            man if man.starts_with("/usr/share/man/") => man.trim_end_matches(".gz").to_owned(),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(rpm_files, expected, "rpm -qlp vs dpkg-deb --contents");
    let suggests = ok(Command::new("rpm").args(["-qp", "--suggests"]).arg(&rpm));
    assert!(suggests.contains("roundcube"), "{suggests}");
    let requires = ok(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm));
    assert!(!requires.contains("roundcube"), "{requires}");
    let config = ok(Command::new("rpm").arg("-qcp").arg(&rpm));
    assert_eq!(config.trim(), "/etc/pecora/pecora.toml");
    let scripts = ok(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    for needle in [
        "useradd --system",
        "/var/spool/pecora/delivered",
        "systemctl stop pecora.service",
    ] {
        assert!(
            scripts.contains(needle),
            "rpm scriptlets lack {needle:?}:\n{scripts}"
        );
    }
}

/// Runs the installed pecora as user pecora with its default milter socket and checks who
/// can reach that socket.
fn packaged_socket_serves_postfix_only(postfix_group: &str) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    pki::provider(w);
    let config = pki::config(
        w,
        &format!(
            "[store]\nurl = \"sqlite:{0}/registry.db\"\ncheckpoint_dir = \"{0}/checkpoints\"\n\
             [limits]\nspool_dir = \"{0}/spool\"\n",
            w.display()
        ),
    );
    ok(Command::new("chown").args(["-R", "pecora:pecora"]).arg(w));
    let log = fs::File::create(w.join("pecora.log")).unwrap();
    let mut daemon = Command::new("setpriv")
        .args(["--reuid=pecora", "--regid=pecora", "--init-groups", "--"])
        .arg("/usr/sbin/pecora")
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Stop(&mut daemon);
    let sock = Path::new("/var/spool/postfix/pecora/milter.sock");
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        let said = fs::read_to_string(w.join("pecora.log")).unwrap_or_default();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20) && daemon.0.try_wait().unwrap().is_none(),
            "the installed pecora did not open {}:\n{said}",
            sock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let md = fs::metadata(sock).unwrap();
    assert_eq!(md.uid(), id_of("passwd", "pecora"), "socket owner");
    assert_eq!(md.gid(), id_of("group", postfix_group), "socket group");
    assert_eq!(md.permissions().mode() & 0o777, 0o660, "socket mode");
    connect_as("postfix", postfix_group, sock).expect("Postfix's user must reach the milter");
    let denied = connect_as("nobody", "nogroup", sock).expect_err("another local user reached the milter");
    assert!(denied.contains("Permission denied"), "{denied}");
    drop(daemon);
}
