//! Who may reach a unix socket: a connection attempt as another local user.

use std::path::Path;
use std::process::Command;

/// Connects to the unix socket `path` as `user` with `group` as its only group (no
/// supplementary groups: all a Postfix daemon is sure to have is its primary group).
/// Ok, or the error the attempt reported.
pub fn connect_as(user: &str, group: &str, path: &Path) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([&format!("--reuid={user}"), &format!("--regid={group}"), "--clear-groups", "--"])
        // The system Python: a per-user one (pyenv shims) is not executable by `user`.
        .args(["/usr/bin/python3", "-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])"])
        .arg(path)
        .output()
        .expect("setpriv (util-linux) and python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or_default().to_string())
    }
}
