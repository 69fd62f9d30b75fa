//! Local users and groups, read from /etc/passwd and /etc/group, and text files an
//! administrator writes.

/// A text file an administrator or another program writes (/etc/passwd, a Postfix map): read
/// whole, with bytes that are not UTF-8 replaced, so that a Latin-1 comment or GECOS field
/// ("Niccolò" as written by an older tool) does not make the whole file unreadable.
pub fn read_text_lossy(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The name of a numeric id in /etc/passwd (`file` = passwd) or /etc/group.
fn name_of(file: &str, id: u32) -> Option<String> {
    name_in(&read_text_lossy(file).ok()?, id)
}

/// The name of numeric id `id` in the text of /etc/passwd or /etc/group.
fn name_in(text: &str, id: u32) -> Option<String> {
    text.lines().find_map(|l| {
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
    ids_in(&read_text_lossy("/etc/passwd").ok()?, read_text_lossy("/etc/group").ok().as_deref(), name)
}

/// [`user_ids`] from the text of /etc/passwd and, when readable, /etc/group.
fn ids_in(passwd: &str, group: Option<&str>, name: &str) -> Option<(u32, Vec<u32>)> {
    let prefix = format!("{name}:");
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&prefix))?
        .split(':')
        .collect();
    let uid: u32 = fields.get(2)?.parse().ok()?;
    let mut gids: Vec<u32> = vec![fields.get(3)?.parse().ok()?];
    if let Some(group) = group {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A GECOS field in Latin-1 elsewhere in /etc/passwd does not hide user pecora.
    #[test]
    fn a_file_that_is_not_utf8_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, b"nicco:x:1000:1000:Niccol\xf2 Rossi:/home/nicco:/bin/bash\npecora:x:998:997::/var/lib/pecora:/usr/sbin/nologin\n").unwrap();
        let group = dir.path().join("group");
        std::fs::write(&group, b"postdrop:x:105:pecora\nufficio:x:1001:nicco # segreter\xeca\n").unwrap();
        let passwd = read_text_lossy(&passwd).unwrap();
        let group = read_text_lossy(&group).unwrap();
        assert_eq!(ids_in(&passwd, Some(&group), "pecora"), Some((998, vec![997, 105])));
        assert_eq!(name_in(&passwd, 1000).as_deref(), Some("nicco"));
        assert_eq!(name_in(&group, 105).as_deref(), Some("postdrop"));
        assert_eq!(ids_in(&passwd, None, "nobody"), None);
    }
}
