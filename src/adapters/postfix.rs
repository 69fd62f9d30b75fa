//! Postfix, as pecora reads and changes its configuration: `postconf` runs, and the
//! effective main.cf and master.cf it shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Quotes for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn postconf(dir: Option<&Path>) -> Command {
    let mut c = Command::new("postconf");
    if let Some(d) = dir {
        c.arg("-c").arg(d);
    }
    c
}

/// Runs postconf; its standard output, or its error.
pub fn run_postconf(dir: Option<&Path>, args: &[String]) -> Result<String, String> {
    let out = postconf(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run postconf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postconf {} failed: {}",
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The queue ids `postqueue -j` lists, each with its queue (`hold`, `active`, `deferred`,
/// `incoming`, `maildrop`): the messages Postfix has committed. Run with the daemon's
/// environment, so without `dir` `MAIL_CONFIG` picks the instance as for postconf.
pub fn queued_ids(dir: Option<&Path>) -> Result<Vec<(String, String)>, String> {
    let mut c = Command::new("postqueue");
    if let Some(d) = dir {
        c.arg("-c").arg(d);
    }
    let out = c.arg("-j").output().map_err(|e| format!("cannot run postqueue: {e}"))?;
    if !out.status.success() {
        return Err(format!("postqueue -j failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(parse_postqueue_json(&String::from_utf8_lossy(&out.stdout)))
}

/// `postqueue -j` output (one JSON object per line) as (queue name, queue id) pairs; lines
/// that are not such objects are skipped.
pub fn parse_postqueue_json(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("queue_name")?.as_str()?.to_string(), v.get("queue_id")?.as_str()?.to_string())))
        .collect()
}

/// Postfix's effective configuration, read with `postconf`.
#[derive(Debug, Default)]
pub struct PostfixConfig {
    /// main.cf, with defaults (`postconf`).
    pub main: BTreeMap<String, String>,
    /// master.cf services: (service/type, command, -o overrides).
    pub services: Vec<Service>,
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: String,
    pub command: String,
    /// The fifth column: the daemon runs chrooted in the queue directory (`-` is `n`
    /// since Postfix 3.0).
    pub chroot: bool,
    pub overrides: BTreeMap<String, String>,
}

impl PostfixConfig {
    /// Reads the configuration of the Postfix instance in `dir` (default /etc/postfix).
    pub fn read(dir: Option<&Path>) -> Result<PostfixConfig, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            run_postconf(dir, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        let main = run(&[])?
            .lines()
            .filter_map(|l| {
                l.split_once(" = ")
                    .or_else(|| l.strip_suffix(" =").map(|k| (k, "")))
            })
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let services = parse_master(&run(&["-M", "-f"])?);
        Ok(PostfixConfig {
            main,
            services,
            config_dir: dir.map(Path::to_path_buf),
        })
    }

    /// A parameter's value for a service: its -o override, else main.cf.
    pub fn param<'a>(&'a self, service: &'a Service, name: &str) -> &'a str {
        service
            .overrides
            .get(name)
            .or_else(|| self.main.get(name))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Parses `postconf -M -f` output: one service per logical line, `-o` overrides folded in.
pub fn parse_master(text: &str) -> Vec<Service> {
    let mut logical: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = logical.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            logical.push(line.trim().to_string());
        }
    }
    logical
        .iter()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let mut overrides = BTreeMap::new();
            let mut i = 8;
            while i < fields.len() {
                if fields[i] == "-o" {
                    if let Some((k, v)) = fields.get(i + 1).and_then(|kv| kv.split_once('=')) {
                        overrides.insert(k.to_string(), v.to_string());
                    }
                    i += 2;
                } else if let Some((k, v)) = fields[i]
                    .strip_prefix("-o")
                    .and_then(|kv| kv.split_once('='))
                {
                    overrides.insert(k.to_string(), v.to_string());
                    i += 1;
                } else {
                    i += 1;
                }
            }
            Some(Service {
                name: fields[0].to_string(),
                kind: fields[1].to_string(),
                command: fields[7].to_string(),
                chroot: fields[4] == "y",
                overrides,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_postqueue_j_lists() {
        let text = concat!(
            r#"{"queue_name": "hold", "queue_id": "4jhb1q0YZmz1V83h", "arrival_time": 1765000000, "message_size": 1234, "forced_expire": false, "sender": "a@b", "recipients": [{"address": "c@d"}]}"#, "\n",
            r#"{"queue_name": "deferred", "queue_id": "4jhb1q0YZmz1V83i", "recipients": []}"#, "\n",
            "postqueue: warning: not JSON\n",
            r#"{"queue_id": "NOQUEUE"}"#, "\n",
        );
        assert_eq!(
            parse_postqueue_json(text),
            vec![("hold".to_string(), "4jhb1q0YZmz1V83h".to_string()), ("deferred".to_string(), "4jhb1q0YZmz1V83i".to_string())]
        );
    }

    #[test]
    fn master_cf_services_and_overrides() {
        let text = "smtp       inet  n       -       n       -       -       smtpd\n    -o milter_macro_daemon_name=PEC-RICEZIONE\n    -o smtpd_milters=inet:127.0.0.1:8890\n# comment\npickup     unix  n       -       n       60      1       pickup\n";
        let s = parse_master(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "smtp");
        assert_eq!(s[0].command, "smtpd");
        assert_eq!(s[0].overrides["milter_macro_daemon_name"], "PEC-RICEZIONE");
        assert_eq!(s[1].command, "pickup");
    }
}
