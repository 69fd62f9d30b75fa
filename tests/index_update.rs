//! `pecora index update`: fetch (file:// and HTTPS with a client certificate), check as the
//! daemon loads it, swap in atomically, keep the previous copy, refuse what would hurt,
//! and make a running daemon reload.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

#[path = "common/cli.rs"]
mod cli;
#[path = "common/pki.rs"]
mod pki;
use cli::{assert_said, pecora, said};


/// An index of `n` providers (p0.test … p{n-1}.test).
fn ldif(n: usize) -> String {
    let mut s = String::from("dn: o=postacert\no: postacert\n");
    for i in 0..n {
        s.push_str(&format!(
            "\ndn: providerName=P{i},o=postacert\nproviderName: P{i}\nmailReceipt: r@p{i}.test\nmanagedDomains: p{i}.test\n"
        ));
    }
    s
}

/// A configuration whose index lives in `dir/state/` (not created yet) and is fetched from
/// `url`; `extra` goes into the [index] section.
fn setup(dir: &Path, url: &str, index_name: &str, extra: &str) -> PathBuf {
    pki::provider(dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let path = pki::config(dir, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("file = \"{}/index.ldif\"\n", dir.display()),
        &format!(
            "file = \"{}/state/{index_name}\"\nurl = \"{url}\"\n{extra}",
            dir.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn update(config: &Path, args: &[&str]) -> Output {
    pecora()
        .arg("--config")
        .arg(config)
        .args(["index", "update"])
        .args(args)
        .output()
        .unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn file_url_installs_keeps_previous_and_refuses_bad_or_shrunk_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("published.ldif");
    std::fs::write(&src, ldif(4)).unwrap();
    let config = setup(
        dir.path(),
        &format!("file://{}", src.display()),
        "index.ldif",
        "",
    );
    let installed = dir.path().join("state/index.ldif");
    let prev = dir.path().join("state/index.ldif.prev");

    // First copy: written, readable by the daemon's group and others (public data).
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &["4 providers (first copy)"]);
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), ldif(4));
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!prev.exists());

    // The same content again: unchanged, but the modification time says it was checked.
    assert!(
        Command::new("touch")
            .args(["-d", "10 days ago"])
            .arg(&installed)
            .status()
            .unwrap()
            .success()
    );
    let old = mtime(&installed);
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &["unchanged (4 providers)"]);
    assert!(mtime(&installed).duration_since(old).unwrap() > Duration::from_secs(9 * 86_400));

    // Garbage, and an LDIF with no provider: refused (1), the index untouched.
    for bad in ["this is not an index\n", "dn: o=postacert\no: postacert\n"] {
        std::fs::write(&src, bad).unwrap();
        let o = update(&config, &["--no-reload"]);
        assert_said(&o, 1, &["refused", "is kept"]);
        assert_eq!(std::fs::read_to_string(&installed).unwrap(), ldif(4));
    }

    // Losing more than half the providers: refused unless --force.
    std::fs::write(&src, ldif(1)).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 1, &["lists 1 providers, the current one 4"]);
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), ldif(4));
    // Half is allowed.
    std::fs::write(&src, ldif(2)).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &["2 providers (4 before)"]);
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), ldif(4));
    std::fs::write(&src, ldif(0) + "\ndn: providerName=Solo,o=postacert\nproviderName: Solo\nmailReceipt: r@s.test\nmanagedDomains: s.test\n").unwrap();
    let o = update(&config, &["--no-reload", "--force"]);
    assert_said(&o, 0, &[]);
    assert!(
        std::fs::read_to_string(&installed)
            .unwrap()
            .contains("Solo")
    );
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), ldif(2));
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}"); // the index, .prev and the TLS policy map

    // Environment errors (2): nothing to fetch, plain http, no URL at all.
    let o = update(
        &config,
        &[
            "--no-reload",
            "--url",
            &format!("file://{}/missing.ldif", dir.path().display()),
        ],
    );
    assert_said(&o, 2, &[]);
    let o = update(
        &config,
        &["--no-reload", "--url", "http://127.0.0.1:1/index.ldif"],
    );
    assert_said(&o, 2, &["https://"]);
    let text = std::fs::read_to_string(&config).unwrap();
    let no_url: String = text
        .lines()
        .filter(|l| !l.starts_with("url ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, no_url).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 2, &["no index.url"]);
}

/// Signs `content` as a CMS signed-data DER (.p7m) with a fresh key; returns the signer
/// certificate path.
fn sign(dir: &Path, name: &str, content: &Path, out: &Path) -> PathBuf {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if !cert.exists() {
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", said(&o));
    }
    let o = Command::new("openssl")
        .args([
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-outform",
            "DER",
            "-signer",
        ])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-in")
        .arg(content)
        .arg("-out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    cert
}

#[test]
fn signed_index_is_checked_against_the_configured_signer() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("published.ldif");
    std::fs::write(&plain, ldif(3)).unwrap();
    let p7m = dir.path().join("published.ldif.p7m");
    let signer = sign(dir.path(), "agid", &plain, &p7m);
    let config = setup(
        dir.path(),
        &format!("file://{}", p7m.display()),
        "index.ldif.p7m",
        &format!("signer_certificate = \"{}\"\n", signer.display()),
    );
    let installed = dir.path().join("state/index.ldif.p7m");
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &[]);
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&p7m).unwrap()
    );

    // Signed by the right signer, then its content altered (one domain renamed, same
    // length): the signature no longer covers it, refused, the good copy stays.
    std::fs::write(&plain, ldif(4)).unwrap();
    sign(dir.path(), "agid", &plain, &p7m);
    let mut der = std::fs::read(&p7m).unwrap();
    let at = der
        .windows(b"managedDomains: p3.test".len())
        .position(|w| w == b"managedDomains: p3.test")
        .expect("the LDIF is embedded in the .p7m");
    der[at + b"managedDomains: ".len()] = b'x';
    std::fs::write(&p7m, &der).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 1, &["signature"]);
    assert_eq!(installed_content(&installed), ldif(3));

    // Signed by someone else, or not signed at all: refused, the good copy stays.
    std::fs::write(&plain, ldif(4)).unwrap();
    sign(dir.path(), "intruder", &plain, &p7m);
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 1, &["not by the configured index signer"]);
    let o = update(
        &config,
        &[
            "--no-reload",
            "--url",
            &format!("file://{}", plain.display()),
        ],
    );
    assert_said(&o, 1, &["plain LDIF"]);
    // The installed copy is still the one the right signer signed.
    assert_eq!(installed_content(&installed), ldif(3));
}

/// The LDIF inside an installed .p7m (its signature checked, not its chain).
fn installed_content(p7m: &Path) -> String {
    let o = Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"])
        .arg(p7m)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", said(&o));
}

/// HTTPS with client-certificate authentication, against `openssl s_server -WWW` that
/// demands a certificate from its own test CA; the server's CA reaches pecora through
/// SSL_CERT_FILE (OpenSSL's system trust store override).
#[test]
fn https_download_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Index CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign,cRLSign",
        ],
        d,
    );
    std::fs::write(
        d.join("srv.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for (name, ext) in [("srv", Some("srv.ext")), ("cli", None)] {
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
            d,
        );
        let (csr, pem) = (format!("{name}.csr"), format!("{name}.pem"));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
        ];
        if let Some(e) = ext {
            args.extend(["-extfile", e]);
        }
        openssl(&args, d);
    }
    // The client key in the traditional PKCS#1 form: pecora converts it.
    openssl(
        &[
            "rsa",
            "-in",
            "cli.key",
            "-traditional",
            "-out",
            "cli-rsa.key",
        ],
        d,
    );
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("igpec.ldif"), ldif(2)).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("openssl")
            .args([
                "s_server",
                "-WWW",
                "-quiet",
                "-Verify",
                "1",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("-cert")
            .arg(d.join("srv.pem"))
            .arg("-key")
            .arg(d.join("srv.key"))
            .arg("-CAfile")
            .arg(d.join("ca.pem"))
            .current_dir(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "openssl s_server did not start");

    let url = format!("https://localhost:{port}/igpec.ldif");
    let run = |config: &Path, ca: bool| {
        let mut c = pecora();
        c.arg("--config")
            .arg(config)
            .args(["index", "update", "--no-reload", "--url", &url]);
        if ca {
            c.env("SSL_CERT_FILE", d.join("ca.pem"));
        }
        c.output().unwrap()
    };
    let site = tempfile::tempdir().unwrap();
    let without = setup(site.path(), "https://unused.invalid/", "index.ldif", "");
    let o = run(&without, true);
    // No client certificate.
    assert_said(&o, 2, &[]);
    assert!(!site.path().join("state/index.ldif").exists());

    let with = setup(
        site.path(),
        "https://unused.invalid/",
        "index.ldif",
        &format!(
            "client_certificate = \"{}/cli.pem\"\nclient_key = \"{}/cli-rsa.key\"\n",
            d.display(),
            d.display()
        ),
    );
    // The server's certificate must verify: without its CA, no download.
    let o = run(&with, false);
    // An untrusted server.
    assert_said(&o, 2, &["certificate verify failed"]);
    let o = run(&with, true);
    assert_said(&o, 0, &[]);
    assert_eq!(
        std::fs::read_to_string(site.path().join("state/index.ldif")).unwrap(),
        ldif(2)
    );
}

/// With --pid-file the running daemon gets SIGHUP and reloads, new index included.
#[test]
fn running_daemon_is_told_to_reload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("published.ldif");
    std::fs::write(&src, ldif(3)).unwrap();
    let config = setup(d, &format!("file://{}", src.display()), "index.ldif", "");
    // The daemon needs an index to start with: pki's two providers.
    std::fs::copy(d.join("index.ldif"), d.join("state/index.ldif")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[store]\n", &format!("[listen]\nmilter = \"inet:127.0.0.1:{port}\"\n[store]\nurl = \"sqlite:{}/registry.db\"\n", d.display()))
            + &format!("[limits]\nspool_dir = \"{}/spool\"\n", d.display()),
    )
    .unwrap();
    let log = d.join("serve.log");
    let child = pecora()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _daemon = Server(child);
    let wait_log = |needle: &str| {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(needle)
        })
    };
    assert!(
        wait_log("pecora starting"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    let pid_file = d.join("pecora.pid");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let o = update(&config, &["--pid-file", pid_file.to_str().unwrap()]);
    assert_said(&o, 0, &[&format!("pid {pid}")]);
    assert!(
        wait_log("configuration reloaded"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // A pid file naming no process: the index is in place, but the command says the daemon
    // was not told (2).
    std::fs::write(&src, ldif(4)).unwrap();
    std::fs::write(&pid_file, "999999999\n").unwrap();
    let o = update(&config, &["--pid-file", pid_file.to_str().unwrap()]);
    assert_said(&o, 2, &["was not told"]);
    assert_eq!(
        std::fs::read_to_string(d.join("state/index.ldif")).unwrap(),
        ldif(4)
    );
}

/// decisions.md 22: next to the index, a Postfix TLS policy map of every domain another
/// provider manages (never ours, never an ordinary domain): `encrypt` without a CA bundle
/// for providers' TLS, `secure` (the certificate must name the domain) with one; rewritten
/// with each update, even when the index itself is unchanged.
#[test]
fn the_tls_policy_map_lists_every_other_providers_domain() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("published.ldif");
    let index = "dn: o=postacert\no: postacert\n\n\
         dn: providerName=Alpha PEC,o=postacert\nproviderName: Alpha PEC\nmailReceipt: servizio@pec.alpha.test\n\
         managedDomains: pec.alpha.test\nmanagedDomains: pec.alpha-bis.test\n\n\
         dn: providerName=Beta PEC,o=postacert\nproviderName: Beta PEC\nmailReceipt: servizio@pec.beta.test\n\
         managedDomains: pec.beta.test\nmanagedDomains: PEC.Comune-Esempio.IT\n\n\
         dn: providerName=Gamma PEC,o=postacert\nproviderName: Gamma PEC\nmailReceipt: servizio@gammapec.test\n\
         managedDomains: gammapec.test\nmanagedDomains: bad domain\n";
    std::fs::write(&src, index).unwrap();
    let url = format!("file://{}", src.display());
    let config = setup(dir.path(), &url, "index.ldif", "");
    let map = dir.path().join("state/index.ldif.tls_policy");

    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &["TLS required for 3 domains of other providers (encrypt)", "`bad domain`", "left out"]);
    let text = std::fs::read_to_string(&map).unwrap();
    let entries: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(entries, vec!["gammapec.test encrypt", "pec.beta.test encrypt", "pec.comune-esempio.it encrypt"], "{text}");
    // Postfix reads it as it is: texthash, no postmap; public like the index.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&map).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(!dir.path().join("state/index.ldif.tls_policy.prev").exists());

    // A CA bundle for providers' TLS: `secure`, the certificate naming the domain or a host
    // under it; the index is unchanged but the map follows the configuration.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[index]\n",
        &format!("[index]\ntls_ca_bundle = \"{}\"\n", dir.path().join("cert.pem").display()),
    );
    std::fs::write(&config, text).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &["unchanged"]);
    let text = std::fs::read_to_string(&map).unwrap();
    let entries: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        vec![
            "gammapec.test secure match=gammapec.test:.gammapec.test",
            "pec.beta.test secure match=pec.beta.test:.pec.beta.test",
            "pec.comune-esempio.it secure match=pec.comune-esempio.it:.pec.comune-esempio.it",
        ],
        "{text}"
    );

    // Providers that host customers' domains on MX hosts of their own name: the operator
    // may accept a certificate naming the MX host too.
    let text = std::fs::read_to_string(&config).unwrap().replace("[index]\n", "[index]\ntls_match_mx_host = true\n");
    std::fs::write(&config, &text).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &[]);
    let mapped = std::fs::read_to_string(&map).unwrap();
    assert!(mapped.lines().any(|l| l == "pec.beta.test secure match=hostname:pec.beta.test:.pec.beta.test"), "{mapped}");
    std::fs::write(&config, text.replace("tls_match_mx_host = true\n", "")).unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 0, &[]);

    // Postfix parses it: postmap -q on the texthash table finds beta's entry.
    {
        let pf = dir.path().join("postfix");
        std::fs::create_dir_all(&pf).unwrap();
        std::fs::write(pf.join("main.cf"), "compatibility_level = 3.6\n").unwrap();
        let q = Command::new("postmap")
            .arg("-c")
            .arg(&pf)
            .args(["-q", "pec.beta.test"])
            .arg(format!("texthash:{}", map.display()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), "secure match=pec.beta.test:.pec.beta.test", "{}", said(&q));
    }

    // A refused index leaves the map as it was.
    let before = std::fs::read(&map).unwrap();
    std::fs::write(&src, "not ldif").unwrap();
    let o = update(&config, &["--no-reload"]);
    assert_said(&o, 1, &[]);
    assert_eq!(std::fs::read(&map).unwrap(), before);
}
