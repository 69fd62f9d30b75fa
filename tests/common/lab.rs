//! A lab for one test: `lab/up` in a temporary directory (its own free ports), the state it
//! writes, real clients (swaks for SMTP, Python's imaplib/poplib for IMAPS/POP3S), and
//! `lab/down` when dropped, whatever the test's outcome.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub state: serde_json::Value,
}

impl Lab {
    /// Brings a lab up, without the webmail; panics with the script's output when it cannot.
    pub fn up() -> Lab {
        Self::up_with(&["--no-webmail"])
    }

    /// Brings a lab up with each provider's webmail (Roundcube and the pecora plugin).
    pub fn up_with_webmail() -> Lab {
        Self::up_with(&[])
    }

    fn up_with(args: &[&str]) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("pecora-lab")
            .tempdir()
            .unwrap();
        // Traversable like a real /var/spool: the only barrier a test of access rights
        // meets must be the one the product sets.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(format!("{REPO}/lab/up"))
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .env("PECORA_BIN", env!("CARGO_BIN_EXE_pecora"))
            .output()
            .expect("run lab/up");
        if !out.status.success() {
            // lab/up stops what it started when it fails; make sure of it before the
            // directory goes away.
            let _ = Command::new(format!("{REPO}/lab/down"))
                .arg("--dir")
                .arg(dir.path())
                .output();
            panic!(
                "lab/up failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let state =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        Lab { dir, state }
    }

    pub fn alpha(&self) -> &serde_json::Value {
        &self.state["providers"][0]
    }
    pub fn beta(&self) -> &serde_json::Value {
        &self.state["providers"][1]
    }
    pub fn gamma(&self) -> &serde_json::Value {
        &self.state["ordinary"]
    }

    pub fn path(v: &serde_json::Value) -> PathBuf {
        PathBuf::from(v.as_str().unwrap_or_default())
    }

    /// Sends one message with swaks: `tls` is "starttls" (submission) or "smtps".
    pub fn send(
        &self,
        host: &serde_json::Value,
        tls: &str,
        user: usize,
        from: &str,
        to: &[&str],
        headers: &[(&str, &str)],
        body: &str,
    ) -> Output {
        self.send_with(host, tls, user, from, to, headers, body, &[])
    }

    /// As [`Lab::send`], with more swaks arguments (e.g. `--attach @FILE`).
    #[allow(clippy::too_many_arguments)]
    pub fn send_with(
        &self,
        host: &serde_json::Value,
        tls: &str,
        user: usize,
        from: &str,
        to: &[&str],
        headers: &[(&str, &str)],
        body: &str,
        extra: &[&str],
    ) -> Output {
        let u = &host["users"][user];
        let port = if tls == "smtps" {
            &host["smtps_port"]
        } else {
            &host["submission_port"]
        };
        let mut c = Command::new("swaks");
        c.arg("--server").arg(format!("127.0.0.1:{port}"));
        c.arg(if tls == "smtps" {
            "--tls-on-connect"
        } else {
            "--tls"
        });
        c.args(["--tls-verify", "--tls-ca-path"])
            .arg(Self::path(&host["ca_file"]));
        c.args(["--auth", "PLAIN", "--auth-user"])
            .arg(u["address"].as_str().unwrap());
        c.arg("--auth-password")
            .arg(u["password"].as_str().unwrap());
        c.args(["--from", from, "--to", &to.join(",")]);
        for (n, v) in headers {
            c.arg("--header").arg(format!("{n}: {v}"));
        }
        c.args(["--body", body, "--timeout", "60"]);
        c.args(extra);
        c.output().expect("swaks")
    }

    /// Every message in a user's INBOX, over IMAPS or POP3S ("imaps" / "pop3s").
    pub fn fetch(
        &self,
        host: &serde_json::Value,
        user: &serde_json::Value,
        proto: &str,
    ) -> Vec<Vec<u8>> {
        let out_dir = tempfile::tempdir().unwrap();
        let port = &host[format!("{proto}_port").as_str()];
        let out = Command::new("python3")
            .arg(format!("{REPO}/tests/tools/mailbox.py"))
            .arg(proto)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(user["address"].as_str().unwrap())
            .arg(user["password"].as_str().unwrap())
            .arg(Self::path(&host["ca_file"]))
            .arg(out_dir.path())
            .output()
            .expect("mailbox.py");
        assert!(
            out.status.success(),
            "mailbox.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<_> = std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
        });
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// Checks a message's S/MIME signature with `openssl smime -verify` against the lab CA
    /// (someone else's code than pecora's verifier).
    pub fn smime_verify(&self, raw: &[u8]) {
        let f = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        std::fs::write(f.path(), raw).unwrap();
        let out = Command::new("openssl")
            .args(["smime", "-verify", "-CAfile"])
            .arg(Self::path(&self.alpha()["ca_file"]))
            .arg("-in")
            .arg(f.path())
            .args(["-out", "/dev/null"])
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl smime -verify: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every message in the INBOX of a client certificate's holder, logged in with SASL
    /// EXTERNAL; `Err` with the client's complaint when the login is refused.
    pub fn fetch_with_certificate(&self, host: &serde_json::Value, cert: &Path, key: &Path, proto: &str) -> Result<Vec<Vec<u8>>, String> {
        let out_dir = tempfile::tempdir().unwrap();
        let port = &host[format!("{proto}_port").as_str()];
        let out = Command::new("python3")
            .arg(format!("{REPO}/tests/tools/mailbox.py"))
            .args([proto, "127.0.0.1", &port.to_string(), "-", "-"])
            .arg(Self::path(&host["ca_file"]))
            .arg(out_dir.path())
            .env("MAILBOX_CERT", cert)
            .env("MAILBOX_KEY", key)
            .output()
            .expect("mailbox.py");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let mut files: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()));
        Ok(files.iter().map(|p| std::fs::read(p).unwrap()).collect())
    }

    /// Sends with swaks, logged in by a TLS client certificate instead of SASL.
    #[allow(clippy::too_many_arguments)]
    pub fn send_with_certificate(
        &self,
        host: &serde_json::Value,
        tls: &str,
        cert: &Path,
        key: &Path,
        from: &str,
        to: &[&str],
        headers: &[(&str, &str)],
        body: &str,
    ) -> Output {
        let port = if tls == "smtps" { &host["smtps_port"] } else { &host["submission_port"] };
        let mut c = Command::new("swaks");
        c.arg("--server").arg(format!("127.0.0.1:{port}"));
        c.arg(if tls == "smtps" { "--tls-on-connect" } else { "--tls" });
        c.args(["--tls-verify", "--tls-ca-path"]).arg(Self::path(&host["ca_file"]));
        c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        c.args(["--from", from, "--to", &to.join(",")]);
        for (n, v) in headers {
            c.arg("--header").arg(format!("{n}: {v}"));
        }
        c.args(["--body", body, "--timeout", "60"]);
        c.output().expect("swaks")
    }

    /// Every message in a user's INBOX, read over IMAPS.
    pub fn fetch_imaps(&self, host: &serde_json::Value, user: &serde_json::Value) -> Vec<Vec<u8>> {
        self.fetch(host, user, "imaps")
    }

    /// Every message in a user's INBOX, read over POP3S (left on the server).
    pub fn fetch_pop3s(&self, host: &serde_json::Value, user: &serde_json::Value) -> Vec<Vec<u8>> {
        self.fetch(host, user, "pop3s")
    }

    /// The path of a provider's injection socket (its `inject_endpoint` without `unix:`).
    pub fn inject_socket(host: &serde_json::Value) -> PathBuf {
        PathBuf::from(
            host["inject_endpoint"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("unix:"),
        )
    }

    /// Stops a provider's pecora (SIGTERM) and waits, at most 10 s, until it is gone.
    pub fn stop_pecora(&self, host: &serde_json::Value) {
        let pid = host["pecora_pid"]
            .as_u64()
            .expect("a provider has pecora_pid");
        assert!(
            Command::new("kill")
                .arg(pid.to_string())
                .status()
                .expect("kill")
                .success(),
            "pecora {pid} was not running"
        );
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "pecora {pid} did not stop");
    }

    /// Starts a provider's pecora again, as lab/up does (its pid file updated, so lab/down
    /// stops it), and waits until its milter answers. Returns the new pid.
    pub fn start_pecora(&self, host: &serde_json::Value) -> u64 {
        let config = Self::path(&host["config_file"]);
        let dir = config.parent().unwrap().to_path_buf();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("pecora.log")).unwrap();
        let child = Command::new("setsid")
            .arg(env!("CARGO_BIN_EXE_pecora"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pecora");
        let pid = child.id() as u64;
        std::fs::write(dir.join("pecora.pid"), format!("{pid}\n")).unwrap();
        let milter = host["milter"].as_str().unwrap_or_default().to_string();
        let start = Instant::now();
        while !milter_answers(&milter) {
            assert!(start.elapsed() < Duration::from_secs(20), "pecora did not come back on {milter}");
            std::thread::sleep(Duration::from_millis(100));
        }
        pid
    }

    /// Sends SIGHUP to a provider's pecora and waits (at most 10 s) until it logs the reload.
    pub fn reload_pecora(&self, host: &serde_json::Value) {
        let config = Self::path(&host["config_file"]);
        let pid = std::fs::read_to_string(config.parent().unwrap().join("pecora.pid")).unwrap();
        let log = Self::path(&host["pecora_log"]);
        let before = Self::log(&log).matches("configuration reloaded").count();
        assert!(Command::new("kill").args(["-HUP", pid.trim()]).status().unwrap().success());
        let start = Instant::now();
        while Self::log(&log).matches("configuration reloaded").count() == before {
            assert!(start.elapsed() < Duration::from_secs(10), "no reload: {}", Self::log(&log));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a Postfix command-line tool (postconf, postsuper, postqueue, postfix) on a
    /// provider's instance; panics when it fails.
    pub fn postfix_tool(&self, host: &serde_json::Value, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .arg("-c")
            .arg(Self::path(&host["postfix_dir"]))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (at most 60 s) until `pred` holds for the messages of a mailbox.
    pub fn wait_for(
        &self,
        host: &serde_json::Value,
        user: &serde_json::Value,
        proto: &str,
        pred: impl Fn(&[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let start = Instant::now();
        loop {
            let msgs = self.fetch(host, user, proto);
            if pred(&msgs) || start.elapsed() > Duration::from_secs(60) {
                return msgs;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Flushes every queue, so deferred mail is retried now.
    pub fn flush(&self) {
        for h in [self.alpha(), self.beta(), self.gamma()] {
            let _ = Command::new("postqueue")
                .arg("-c")
                .arg(Self::path(&h["postfix_dir"]))
                .arg("-f")
                .output();
        }
    }

    pub fn log(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(format!("{REPO}/lab/down"))
            .arg("--dir")
            .arg(self.dir.path())
            .output();
    }
}

/// How many messages there are of each subject that starts with `prefix` (the rest of the
/// subject as key).
pub fn count_by_subject(msgs: &[Vec<u8>], prefix: &str) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for m in msgs {
        if let Some(rest) = subject(m).strip_prefix(prefix) {
            *out.entry(rest.to_string()).or_default() += 1;
        }
    }
    out
}

/// Whether a process runs (exists and is not a zombie waiting for its parent).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The top-level header block of a raw message (up to the first blank line).
pub fn top_headers(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n\r\n").next().unwrap_or("").split("\n\n").next().unwrap_or("").to_string()
}

// `header(raw, name)`: shared with daemon.rs.
include!("header.rs");

/// The Subject of a raw message, unfolded, or "".
pub fn subject(raw: &[u8]) -> String {
    header(&String::from_utf8_lossy(raw), "Subject")
}

/// Whether something accepts connections on a milter socket (`unix:/path` or
/// `inet:host:port`).
pub fn milter_answers(spec: &str) -> bool {
    match spec.strip_prefix("unix:") {
        Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
        None => std::net::TcpStream::connect(spec.trim_start_matches("inet:")).is_ok(),
    }
}
