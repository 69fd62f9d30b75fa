//! What the lab benchmarks (submit.rs, e2e.rs) share: the route a MUA of alpha submits by,
//! read from lab/up's state.json, and the messages sent over it.

#[allow(dead_code)] // submit.rs uses it, e2e.rs not
pub mod cpu;

use std::path::PathBuf;
use std::time::Duration;

use pecora::adapters::inject::{ClientOptions, Security};
use pecora::config::SocketSpec;

/// lab/up's state.json; exits (2) when it cannot be read.
pub fn read_state(path: &std::path::Path) -> serde_json::Value {
    match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot read {}: {e}\nbring the lab up first: lab/up", path.display());
            std::process::exit(2);
        }
    }
}

/// alpha's first user submitting to beta's first user on one of alpha's submission ports.
#[derive(Clone)]
pub struct Route {
    pub port: u16,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
    pub to: String,
}

impl Route {
    /// The route on `alpha[port_key]` (0 when the state has no such port).
    pub fn from_state(alpha: &serde_json::Value, beta: &serde_json::Value, port_key: &str) -> Route {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        Route {
            port: alpha[port_key].as_u64().unwrap_or(0) as u16,
            ca: PathBuf::from(s(&alpha["ca_file"])),
            user: s(&alpha["users"][0]["address"]),
            password: s(&alpha["users"][0]["password"]),
            to: s(&beta["users"][0]["address"]),
        }
    }

    /// As a MUA submits: STARTTLS, then login as the route's user.
    pub fn client(&self) -> ClientOptions {
        ClientOptions {
            helo: "bench.lab".into(),
            security: Security::StartTls,
            ca_file: Some(self.ca.clone()),
            server_name: "localhost".into(),
            auth: Some((self.user.clone(), self.password.clone())),
            timeout: Duration::from_secs(300),
        }
    }

    pub fn endpoint(&self) -> SocketSpec {
        SocketSpec::Inet(format!("127.0.0.1:{}", self.port))
    }
}

/// A plain-text message of at least `size` bytes.
pub fn message(from: &str, to: &str, subject: &str, message_id: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}
