// Header parsing shared, through `include!`, by tests/common/daemon.rs and
// tests/common/lab.rs (a test includes either or both as modules of its own).

/// The value of the first header field `name` of a raw message (unfolded), or "".
pub fn header(raw: &str, name: &str) -> String {
    let mut out: Option<String> = None;
    let mut inside = false;
    for line in raw.lines() {
        if line.is_empty() {
            break;
        }
        if inside && line.starts_with([' ', '\t']) {
            if let Some(o) = out.as_mut() {
                o.push(' ');
                o.push_str(line.trim());
            }
            continue;
        }
        inside = out.is_none()
            && line.len() > name.len()
            && line.as_bytes()[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name);
        if inside {
            out = Some(line[name.len() + 1..].trim().to_string());
        }
    }
    out.unwrap_or_default()
}
