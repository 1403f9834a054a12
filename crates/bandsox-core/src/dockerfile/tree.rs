//! `FROM scratch` stages: a tree on the host with no guest to run `chown` or `tar` in, so
//! `--chown` names are resolved from the tree's own `/etc/passwd` and `/etc/group`, and `ADD`
//! archives are unpacked by the host's safe unpacker.

use std::fs;
use std::path::Path;

use super::context::Owner;
use super::parse::bad;
use crate::error::Result;

/// Largest `/etc/passwd` or `/etc/group` read to resolve `--chown` names.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// `owner` with `--chown=spec` (`user[:group]`, names or numbers) resolved against `tree`'s
/// `/etc/passwd` and `/etc/group`. A user without a group takes the user's id as the group
/// id, as Docker does.
pub fn resolve_owner(tree: &Path, spec: &str, owner: Owner) -> Result<Owner> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match user.parse::<u64>() {
        Ok(n) => n,
        Err(_) => lookup(tree, "passwd", user)?,
    };
    let gid = match group {
        None => uid,
        Some(g) => match g.parse::<u64>() {
            Ok(n) => n,
            Err(_) => lookup(tree, "group", g)?,
        },
    };
    Ok(Owner { uid, gid, ..owner })
}

/// The id (third field) of `name` in `/etc/{file}` of `tree`. The file and `/etc` must be
/// what the stage put there, not symbolic links (which would point at the host's files).
fn lookup(tree: &Path, file: &str, name: &str) -> Result<u64> {
    let etc = tree.join("etc");
    let path = etc.join(file);
    let real = |p: &Path| fs::symlink_metadata(p).map(|m| !m.file_type().is_symlink());
    match (real(&etc), real(&path)) {
        (Ok(true), Ok(true)) => {}
        (Ok(false), _) | (_, Ok(false)) => {
            return Err(bad(format!(
                "--chown={name}: /etc/{file} of this FROM scratch stage is a symbolic link; \
                 COPY the file itself, or use numeric ids"
            )))
        }
        _ => {
            return Err(bad(format!(
                "--chown={name}: this FROM scratch stage has no /etc/{file} to resolve the \
                 name in; COPY one in first, or use numeric ids"
            )))
        }
    }
    if fs::metadata(&path)?.len() > MAX_ACCOUNT_FILE {
        return Err(bad(format!("/etc/{file} of this stage is too large")));
    }
    let text = fs::read(&path)?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let (n, _, id) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| id.parse::<u64>().ok()).flatten()
        })
        .next()
        .ok_or_else(|| {
            let what = if file == "passwd" { "user" } else { "group" };
            bad(format!(
                "--chown: no {what} `{name}` in /etc/{file} of this FROM scratch stage"
            ))
        })
}

/// Unpacks the `ADD` archive that the copy placed at `aside` in `tree` into folder `into` of
/// the tree, then removes it. The archive is first unpacked into `scratch` (an empty folder)
/// by the safe layer unpacker (plain, gzip or zstd tar; entries keep their modes, setuid
/// included, and numeric owners), then packed again under `into` and applied onto the tree
/// by the same unpacker, which resolves `into` inside the tree (links the stage placed are
/// followed within it, never out of it).
pub fn unpack_archive(tree: &Path, aside: &str, into: &str, scratch: &Path) -> Result<()> {
    let archive = tree.join(aside.trim_start_matches('/'));
    fs::create_dir_all(scratch)?;
    bandsox_image::unpack::apply_layer_file(scratch, &archive, None).map_err(|e| {
        bad(format!(
            "ADD in a FROM scratch stage unpacks plain, gzip and zstd tar archives only: {e}"
        ))
    })?;
    let tar = scratch.with_extension("tar");
    {
        let mut b = tar::Builder::new(std::io::BufWriter::new(fs::File::create(&tar)?));
        b.follow_symlinks(false);
        let prefix = into.trim_matches('/');
        b.append_dir_all(if prefix.is_empty() { "." } else { prefix }, scratch)?;
        b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    }
    bandsox_image::unpack::apply_layer_file(tree, &tar, None)
        .map_err(|e| bad(format!("ADD into {into}: {e}")))?;
    fs::remove_file(&archive)?;
    fs::remove_file(&tar)?;
    fs::remove_dir_all(scratch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_names_come_from_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        assert!(
            resolve_owner(t, "app", Owner::default()).is_err(),
            "no /etc/passwd"
        );
        fs::create_dir(t.join("etc")).unwrap();
        fs::write(
            t.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1234:99::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(t.join("etc/group"), "root:x:0:\nstaff:x:2345:app\n").unwrap();
        let o = |spec: &str| resolve_owner(t, spec, Owner::default()).map(|o| (o.uid, o.gid));
        assert_eq!(o("app:staff").unwrap(), (1234, 2345));
        assert_eq!(o("app").unwrap(), (1234, 1234));
        assert_eq!(o("7:staff").unwrap(), (7, 2345));
        assert_eq!(o("app:8").unwrap(), (1234, 8));
        let e = o("ghost").unwrap_err().to_string();
        assert!(e.contains("no user `ghost`"), "{e}");
        let e = o("app:nogroup").unwrap_err().to_string();
        assert!(e.contains("no group `nogroup`"), "{e}");
        // A link to the host's file is not read.
        fs::remove_file(t.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("etc/passwd")).unwrap();
        let e = o("root").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
