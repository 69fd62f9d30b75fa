//! Local users and groups, read from /etc/passwd and /etc/group.

/// The name of a numeric id in /etc/passwd (`file` = passwd) or /etc/group.
fn name_of(file: &str, id: u32) -> Option<String> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
    })
}

pub fn user_name(uid: u32) -> Option<String> {
    name_of("/etc/passwd", uid)
}

pub fn group_name(gid: u32) -> Option<String> {
    name_of("/etc/group", gid)
}

/// A local user's uid, primary gid and supplementary gids, from /etc/passwd and /etc/group.
pub fn user_ids(name: &str) -> Option<(u32, Vec<u32>)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let prefix = format!("{name}:");
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&prefix))?
        .split(':')
        .collect();
    let uid: u32 = fields.get(2)?.parse().ok()?;
    let mut gids: Vec<u32> = vec![fields.get(3)?.parse().ok()?];
    if let Ok(group) = std::fs::read_to_string("/etc/group") {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse()
            {
                gids.push(g);
            }
        }
    }
    Some((uid, gids))
}
