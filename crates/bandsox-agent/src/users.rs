//! Users and groups from the image's `/etc/passwd` and `/etc/group`, read directly: the agent is
//! a static glibc binary and cannot load NSS modules.

use std::fs;

use bandsox_protocol::{ErrorBody, ErrorCode};

/// Who a program runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (always includes `gid`).
    pub groups: Vec<u32>,
    pub home: String,
    pub shell: String,
}

/// Resolves `spec` (a name, or a numeric uid) against `passwd` and `group` file contents.
pub fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<User, ErrorBody> {
    let numeric = spec.parse::<u32>().ok();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u32>().ok()?;
        let gid = f[3].parse::<u32>().ok()?;
        (f[0] == spec || numeric == Some(uid)).then(|| User {
            name: f[0].to_owned(),
            uid,
            gid,
            groups: Vec::new(),
            home: f[5].to_owned(),
            shell: f[6].to_owned(),
        })
    });
    let mut user = match (entry, numeric) {
        (Some(u), _) => u,
        // A bare uid that the image does not name still works (like `docker run -u 1234`).
        (None, Some(uid)) => User {
            name: uid.to_string(),
            uid,
            gid: uid,
            groups: Vec::new(),
            home: "/".to_owned(),
            shell: "/bin/sh".to_owned(),
        },
        (None, None) => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownUser,
                format!("user `{spec}` is not in the image's /etc/passwd"),
            ))
        }
    };
    user.groups.push(user.gid);
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == user.name) && !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(user)
}

/// Resolves `spec` against the guest's `/etc/passwd` and `/etc/group`.
pub fn resolve(spec: &str) -> Result<User, ErrorBody> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_in(spec, &passwd, &group)
}

/// The login shell of root from `/etc/passwd` when it exists, else `/bin/sh`.
pub fn default_shell() -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    resolve_in("0", &passwd, "")
        .ok()
        .map(|u| u.shell)
        .filter(|s| !s.is_empty() && std::path::Path::new(s).exists())
        .unwrap_or_else(|| "/bin/sh".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\nusers:x:100:alice\n";

    #[test]
    fn by_name_uid_and_groups() {
        let a = resolve_in("alice", PASSWD, GROUP).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.groups, vec![1000, 10, 100]);
        assert_eq!(resolve_in("1000", PASSWD, GROUP).unwrap().name, "alice");
        assert_eq!(resolve_in("4321", PASSWD, GROUP).unwrap().uid, 4321);
        assert_eq!(
            resolve_in("mallory", PASSWD, GROUP).unwrap_err().code,
            ErrorCode::UnknownUser
        );
    }
}
