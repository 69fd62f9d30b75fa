//! Who may reach a unix socket: attempts made as another local user.

use std::path::Path;
use std::process::Command;

/// Runs the Python `script` with `args` as `user`, with `group` as its only group (no
/// supplementary groups: all a Postfix daemon is sure to have is its primary group).
/// Its standard output, or the last line of its error.
pub fn python_as(user: &str, group: &str, script: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args([&format!("--reuid={user}"), &format!("--regid={group}"), "--clear-groups", "--"])
        // The system Python: a per-user one (pyenv shims) is not executable by `user`.
        .args(["/usr/bin/python3", "-c", script])
        .args(args)
        .output()
        .expect("setpriv (util-linux) and python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or_default().to_string())
    }
}

/// Connects to the unix socket `path` as `user` with `group` as its only group.
pub fn connect_as(user: &str, group: &str, path: &Path) -> Result<(), String> {
    python_as(user, group, "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])", &[path.as_os_str()])
        .map(|_| ())
}
