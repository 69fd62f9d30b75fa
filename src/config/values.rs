//! Typed configuration values with their own textual syntax: durations, byte sizes,
//! sockets and the ordinary-mail policy.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A duration written as `90s`, `15m`, `12h`, `1d` or a combination such as `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
    pub fn std(&self) -> std::time::Duration {
        self.0
    }
    pub fn chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let mut total_ms: u128 = 0;
        let mut num = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit: String = std::iter::once(c)
                .chain(std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphabetic())))
                .collect();
            if num.is_empty() {
                return Err(format!("`{s}`: a number must come before `{unit}`"));
            }
            let n: u128 = num.parse().map_err(|_| format!("`{s}`: number too large"))?;
            num.clear();
            let ms = match unit.as_str() {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)")),
            };
            total_ms = total_ms.saturating_add(n.saturating_mul(ms));
        }
        if !num.is_empty() {
            return Err(format!("`{s}`: add a unit (s, m, h or d) after {num}"));
        }
        let ms = u64::try_from(total_ms).map_err(|_| format!("`{s}`: too long"))?;
        Ok(Duration(std::time::Duration::from_millis(ms)))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        if s == 0 {
            write!(f, "{}ms", self.0.as_millis())
        } else if s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// A size in bytes, written `30MB` (decimal), `512KiB` (binary) or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!("`{s}`: expected a number such as 30MB"));
        }
        let n: u64 = num.parse().map_err(|_| format!("`{s}`: number too large"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            u => return Err(format!("`{s}`: unknown unit `{u}` (use B, KB, MB, GB, KiB, MiB or GiB)")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("`{s}`: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// A socket, in Postfix's milter syntax: `unix:/path` or `inet:host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    Unix(PathBuf),
    Inet(String),
}

impl FromStr for SocketSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("`{s}`: a unix socket needs an absolute path"));
            }
            Ok(SocketSpec::Unix(p.into()))
        } else if let Some(a) = s.strip_prefix("inet:") {
            match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(SocketSpec::Inet(a.to_string()))
                }
                _ => Err(format!("`{s}`: expected inet:host:port")),
            }
        } else {
            Err(format!("`{s}`: expected unix:/path or inet:host:port"))
        }
    }
}

impl<'de> Deserialize<'de> for SocketSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketSpec::Inet(a) => write!(f, "inet:{a}"),
        }
    }
}

impl SocketSpec {
    /// How Postfix's `smtpd_milters` / `non_smtpd_milters` should name this socket. Postfix
    /// daemons work in their queue directory, chrooted or not, so a socket under
    /// `queue_directory` is named relative to it (`unix:pecora/milter.sock`): the one form
    /// both a chrooted and an unchrooted smtpd or cleanup resolve to the same file. Any
    /// other socket keeps its absolute path, which only unchrooted services reach.
    pub fn postfix_form(&self, queue_directory: &std::path::Path) -> String {
        match self {
            SocketSpec::Unix(p) => match p.strip_prefix(queue_directory) {
                Ok(rel) if !queue_directory.as_os_str().is_empty() && !rel.as_os_str().is_empty() => {
                    format!("unix:{}", rel.display())
                }
                _ => self.to_string(),
            },
            SocketSpec::Inet(_) => self.to_string(),
        }
    }

    /// Whether a Postfix milter list (`smtpd_milters` and the like: entries separated by
    /// commas or spaces, possibly `{ name, option=... }` groups) names this socket, in its
    /// absolute or its queue-directory-relative form.
    pub fn named_in_postfix_list(&self, list: &str, queue_directory: &std::path::Path) -> bool {
        let forms = [self.to_string(), self.postfix_form(queue_directory)];
        postfix_list_entries(list).any(|w| forms.iter().any(|f| f == w))
    }
}

/// The words of a Postfix milter list (`smtpd_milters` and the like): entries separated by
/// commas or spaces, possibly inside `{ name, option=... }` groups.
pub fn postfix_list_entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(|c: char| c == ',' || c == '{' || c == '}' || c.is_whitespace()).filter(|w| !w.is_empty())
}

/// Whether `name` can be a Postfix `syslog_name`: one token of letters, digits, `-`, `_`,
/// `.` and `/`.
pub fn valid_syslog_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// The optional `antivirus.clamd` key treats "" as "not configured".
pub(super) fn deserialize_optional_socket<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketSpec>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() { Ok(None) } else { s.parse().map(Some).map_err(serde::de::Error::custom) }
}

/// What happens to ordinary (non-PEC) mail that reaches a PEC mailbox (decisions.md 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrdinaryMailPolicy {
    /// Wrap it in a busta di anomalia and deliver it.
    #[default]
    Anomaly,
    /// Refuse it at SMTP with 5.7.1.
    Refuse,
    /// Deliver it, unwrapped, to the ordinary address the holder chose (`redirect_to`), and
    /// keep nothing in the PEC mailbox.
    Redirect,
}
