//! What `COPY` and `ADD` read: a build context (an uploaded tar, unpacked with the same safe
//! unpacker image layers use), `.dockerignore`, and the files a step takes from a tree,
//! packed as one tar at their destination paths.
//!
//! Sources never leave their tree: `..` past the root and symbolic links that point out of it
//! (or anywhere absolute) are refused when a source path goes through them; symbolic links
//! inside a copied folder are copied as links, never followed.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{CoreError, Result};

/// How many symbolic links one source path may go through.
const MAX_HOPS: usize = 40;

/// The `.dockerignore` rules of a context: Docker's syntax (`*`, `?`, `[…]`, `**`, `!` to
/// re-include, `#` comments); the last rule that matches a path or one of its parents wins.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (include, pat) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let comps: Vec<String> = pat
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(str::to_owned)
                    .collect();
                (!comps.is_empty()).then_some((!include, comps))
            })
            .collect();
        Self { rules }
    }

    /// Reads `<root>/.dockerignore` (no file: nothing ignored).
    pub fn of_dir(root: &Path) -> Self {
        fs::read_to_string(root.join(".dockerignore"))
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// True when `rel` (relative to the context root) is left out.
    pub fn is_ignored(&self, rel: &Path) -> bool {
        let comps: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let mut ignored = false;
        for (exclude, pat) in &self.rules {
            if (1..=comps.len()).any(|k| path_match(pat, &comps[..k])) {
                ignored = *exclude;
            }
        }
        ignored
    }
}

/// A pattern's components against a path's, `**` matching any number of components.
fn path_match(pat: &[String], path: &[String]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|k| path_match(rest, &path[k..])),
        Some((p, rest)) => {
            !path.is_empty()
                && glob_match(p.as_bytes(), path[0].as_bytes())
                && path_match(rest, &path[1..])
        }
    }
}

/// True when `s` has a glob character.
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// One path component against a glob (`*`, `?`, `[a-z]`, `[!x]`/`[^x]`, `\` escapes).
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match pat.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| glob_match(&pat[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && glob_match(&pat[1..], &s[1..]),
        Some(b'[') => {
            let Some((&c, rest)) = s.split_first() else {
                return false;
            };
            let mut i = 1;
            let negate = matches!(pat.get(1), Some(b'!' | b'^'));
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            while i < pat.len() && (first || pat[i] != b']') {
                first = false;
                let lo = pat[i];
                if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&h| h != b']') {
                    hit |= lo <= c && c <= pat[i + 2];
                    i += 3;
                } else {
                    hit |= lo == c;
                    i += 1;
                }
            }
            if i >= pat.len() {
                // No closing bracket: a literal `[`.
                return c == b'[' && glob_match(&pat[1..], rest);
            }
            hit != negate && glob_match(&pat[i + 1..], rest)
        }
        Some(b'\\') if pat.len() > 1 => {
            s.first() == Some(&pat[1]) && glob_match(&pat[2..], &s[1..])
        }
        Some(&p) => s.first() == Some(&p) && glob_match(&pat[1..], &s[1..]),
    }
}

fn escapes(what: &str) -> CoreError {
    CoreError::InvalidInput(format!("`{what}` is outside the build context"))
}

/// The normal components of `p`, `..` applied; `None` when it climbs above the root.
fn clean(p: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c.to_owned()),
        }
    }
    Some(out)
}

/// Follows `rel` (components below `root`) the way the source path names it: symbolic links
/// on the way are followed when they are relative and stay inside the root.
fn resolve(root: &Path, rel: &[String], what: &str) -> Result<Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: Vec<String> = rel.iter().rev().cloned().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        let mut here = done.clone();
        here.push(c);
        let path = join(root, &here);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                let target = fs::read_link(&path)?;
                let target = target.to_string_lossy();
                if hops > MAX_HOPS || target.starts_with('/') {
                    return Err(CoreError::InvalidInput(format!(
                        "`{what}` goes through a symbolic link out of the build context"
                    )));
                }
                // The link's target replaces it, relative to the folder holding it.
                let mut base = done.join("/");
                base.push('/');
                base.push_str(&target);
                let cleaned = clean(&base).ok_or_else(|| {
                    CoreError::InvalidInput(format!(
                        "`{what}` goes through a symbolic link out of the build context"
                    ))
                })?;
                done.clear();
                todo.extend(cleaned.into_iter().rev());
            }
            _ => done = here,
        }
    }
    Ok(done)
}

fn join(root: &Path, comps: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(comps);
    p
}

/// The paths (relative to `root`, resolved) that `sources` name: plain paths or globs, each
/// inside the root. Ignored paths are left out; a source that names nothing is an error.
pub fn resolve_sources(root: &Path, sources: &[String], ignore: &Ignore) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for src in sources {
        let comps = clean(src).ok_or_else(|| escapes(src))?;
        // Expand component by component; globs list the folder they are in.
        let mut found: Vec<Vec<String>> = vec![Vec::new()];
        for comp in &comps {
            let mut next = Vec::new();
            for base in &found {
                if has_glob(comp) {
                    let dir = join(root, base);
                    let Ok(entries) = fs::read_dir(&dir) else {
                        continue;
                    };
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| glob_match(comp.as_bytes(), n.as_bytes()))
                        .collect();
                    names.sort();
                    for n in names {
                        let mut p = base.clone();
                        p.push(n);
                        next.push(resolve(root, &p, src)?);
                    }
                } else {
                    let mut p = base.clone();
                    p.push(comp.clone());
                    next.push(resolve(root, &p, src)?);
                }
            }
            found = next;
        }
        let before = out.len();
        for f in found {
            let rel: PathBuf = f.iter().collect();
            if fs::symlink_metadata(root.join(&rel)).is_ok()
                && (rel.as_os_str().is_empty() || !ignore.is_ignored(&rel))
            {
                out.push(rel);
            }
        }
        if out.len() == before {
            return Err(CoreError::InvalidInput(format!(
                "`{src}`: no such file in the build context (or it is excluded by .dockerignore)"
            )));
        }
    }
    Ok(out)
}

/// How copied entries are owned and moded in the tar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
    /// `--chmod`: the mode of every copied file and folder.
    pub mode: Option<u32>,
}

/// A `COPY` packed as one tar whose entries sit at their destination paths.
#[derive(Debug, Default)]
pub struct Packed {
    /// Destination paths written at the top (for `--chown` by name).
    pub tops: Vec<String>,
    /// `ADD` archives: (where the tar put the archive, the folder to unpack it into).
    pub archives: Vec<(String, String)>,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Packs `rels` (from [`resolve_sources`]) of `root` into the tar `out` for destination
/// `dest` (absolute). `dest_is_dir`: the destination exists as a folder. With `add`, local
/// tar archives are placed aside to be unpacked into the destination folder.
#[allow(clippy::too_many_arguments)]
pub fn pack(
    root: &Path,
    rels: &[PathBuf],
    dest: &str,
    dest_is_dir: bool,
    owner: Owner,
    add: bool,
    ignore: &Ignore,
    out: &Path,
) -> Result<Packed> {
    let mut b = tar::Builder::new(io::BufWriter::new(File::create(out)?));
    b.follow_symlinks(false);
    let mut packed = Packed::default();
    let into_dir = dest.ends_with('/') || dest_is_dir || rels.len() > 1;
    let dest = dest.trim_end_matches('/');
    for (n, rel) in rels.iter().enumerate() {
        let src = root.join(rel);
        let meta = fs::symlink_metadata(&src)?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.is_dir() {
            // A folder's contents go into the destination, as Docker does.
            walk(&mut b, root, rel, dest, owner, ignore, &mut packed)?;
            continue;
        }
        let target = if into_dir || name.is_empty() {
            format!("{dest}/{name}")
        } else {
            dest.to_owned()
        };
        if add && meta.is_file() && is_archive(&src) {
            let aside = format!("/.bandsox-add-{n}");
            append(&mut b, &src, &meta, &aside, Owner::default(), &mut packed)?;
            packed
                .archives
                .push((aside, if into_dir { dest.to_owned() } else { target }));
            continue;
        }
        append(&mut b, &src, &meta, &target, owner, &mut packed)?;
        packed.tops.push(target);
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(packed)
}

/// Adds the contents of folder `rel` under `target`, depth first, links as links.
fn walk<W: io::Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    target: &str,
    owner: Owner,
    ignore: &Ignore,
    packed: &mut Packed,
) -> Result<()> {
    visit(
        root,
        rel,
        &|child| ignore.is_ignored(child),
        &mut |child, path, meta| {
            let below = child.strip_prefix(rel).unwrap_or(child);
            let t = format!("{target}/{}", below.to_string_lossy());
            if below.components().count() == 1 {
                packed.tops.push(t.clone());
            }
            append(b, path, meta, &t, owner, packed)
        },
    )
}

/// Calls `f(relative path, path, metadata)` for everything below folder `rel` of `root`,
/// depth first in name order (tars and digests repeat), folders before their contents;
/// `skip` leaves a path and everything under it out.
fn visit(
    root: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path) -> bool,
    f: &mut dyn FnMut(&Path, &Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    for name in children(&root.join(rel))? {
        let child = rel.join(&name);
        if skip(&child) {
            continue;
        }
        let path = root.join(&child);
        let meta = fs::symlink_metadata(&path)?;
        f(&child, &path, &meta)?;
        if meta.is_dir() {
            visit(root, &child, skip, f)?;
        }
    }
    Ok(())
}

/// One entry: a folder, a regular file or a symbolic link (other kinds are skipped).
fn append<W: io::Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    meta: &fs::Metadata,
    target: &str,
    owner: Owner,
    packed: &mut Packed,
) -> Result<()> {
    let ft = meta.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_uid(owner.uid);
    h.set_gid(owner.gid);
    h.set_mtime(meta.mtime().max(0) as u64);
    let mode = owner.mode.unwrap_or(meta.permissions().mode() & 0o7777);
    h.set_mode(mode);
    let path = target.trim_start_matches('/');
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, format!("{path}/"), io::empty())?;
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, path, fs::read_link(src)?)?;
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        packed.bytes += meta.len();
        b.append_data(&mut h, path, File::open(src)?)?;
    }
    Ok(())
}

/// A digest of what `rels` hold (names, kinds, modes, link targets and contents, folders
/// recursively, ignored paths left out): the step cache's key of a `COPY`.
pub fn digest(root: &Path, rels: &[PathBuf], ignore: &Ignore) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    fn add(h: &mut Sha256, root: &Path, rel: &Path, ignore: &Ignore) -> Result<()> {
        let path = root.join(rel);
        let meta = fs::symlink_metadata(&path)?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0", meta.mode()).as_bytes());
        if meta.file_type().is_symlink() {
            h.update(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            io::copy(&mut File::open(&path)?, h)?;
        } else if meta.is_dir() {
            for n in children(&path)? {
                let child = rel.join(n);
                if !ignore.is_ignored(&child) {
                    add(h, root, &child, ignore)?;
                }
            }
        }
        h.update([0xff]);
        Ok(())
    }
    let mut h = Sha256::new();
    for rel in rels {
        add(&mut h, root, rel, ignore)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The names in folder `dir`, sorted (walks are deterministic: tars and digests repeat).
fn children(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names)
}

/// A tar archive (plain, gzip, bzip2 or xz) by its first bytes, as `ADD` decides.
fn is_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let n = File::open(path)
        .and_then(|mut f| io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || (n >= 262 && &head[257..262] == b"ustar")
}

/// Packs context folder `dir` into a tar (what `bandsox build DIR` uploads): everything
/// `.dockerignore` keeps, plus the Dockerfile and `.dockerignore` themselves; `extra` adds
/// one more file (a Dockerfile from outside the folder) under the given name.
pub fn pack_dir<W: io::Write>(dir: &Path, extra: Option<(&str, &[u8])>, out: W) -> Result<W> {
    let ignore = Ignore::of_dir(dir);
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut packed = Packed::default();
    let skip = |child: &Path| {
        // The Dockerfile and .dockerignore go along even when ignored, as Docker sends them.
        let kept = child == Path::new(".dockerignore") || child == Path::new("Dockerfile");
        ignore.is_ignored(child) && !kept
    };
    visit(dir, Path::new(""), &skip, &mut |child, path, meta| {
        let owner = Owner {
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mode: None,
        };
        append(
            &mut b,
            path,
            meta,
            &child.to_string_lossy(),
            owner,
            &mut packed,
        )
    })?;
    if let Some((name, bytes)) = extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes)?;
    }
    Ok(b.into_inner()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("*.txt", "a.txt", true),
            ("*.txt", "a.md", false),
            ("a?c", "abc", true),
            ("[a-c]x", "bx", true),
            ("[!a-c]x", "bx", false),
            ("[^a]x", "zx", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[", "[", true),
        ] {
            assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), want, "{p} {s}");
        }
    }

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse("# comment\nnode_modules\n*.log\n!keep.log\n**/secret\n/build/\n");
        for (path, want) in [
            ("node_modules", true),
            ("node_modules/x/y.js", true),
            ("src/node_modules", false),
            ("a.log", true),
            ("keep.log", false),
            ("deep/er/secret", true),
            ("secret", true),
            ("build/out", true),
            ("src/main.rs", false),
        ] {
            assert_eq!(ig.is_ignored(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn sources_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ctx");
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("dir/sub/c"), "c").unwrap();
        fs::write(d.path().join("outside"), "secret").unwrap();
        symlink("../outside", root.join("out-rel")).unwrap();
        symlink("/etc/passwd", root.join("out-abs")).unwrap();
        symlink("dir/sub", root.join("in")).unwrap();
        let none = Ignore::default();
        let r = |s: &[&str]| {
            resolve_sources(
                &root,
                &s.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                &none,
            )
        };
        assert_eq!(
            r(&["*.txt"]).unwrap(),
            vec![PathBuf::from("a.txt"), PathBuf::from("b.txt")]
        );
        assert_eq!(r(&["in/c"]).unwrap(), vec![PathBuf::from("dir/sub/c")]);
        assert_eq!(
            r(&["./dir/../a.txt"]).unwrap(),
            vec![PathBuf::from("a.txt")]
        );
        for bad in ["../outside", "dir/../../outside", "out-rel", "out-abs"] {
            let e = r(&[bad]).unwrap_err().to_string();
            assert!(
                e.contains("outside the build context") || e.contains("out of the build"),
                "{bad}: {e}"
            );
        }
        assert!(r(&["missing"])
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        let ig = Ignore::parse("b.txt\n");
        let only = resolve_sources(&root, &["*.txt".into()], &ig).unwrap();
        assert_eq!(only, vec![PathBuf::from("a.txt")]);
    }

    #[test]
    fn packs_at_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ctx");
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("f"), "file").unwrap();
        fs::write(root.join("dir/sub/c"), "c").unwrap();
        fs::write(root.join("dir/skip.log"), "x").unwrap();
        symlink("/etc/passwd", root.join("dir/link")).unwrap();
        // Patterns are anchored at the root: `*.log` would not reach dir/skip.log.
        let ig = Ignore::parse("**/*.log\n");
        let out = d.path().join("copy.tar");
        let rels = vec![PathBuf::from("f"), PathBuf::from("dir")];
        let owner = Owner {
            uid: 7,
            gid: 8,
            mode: None,
        };
        let p = pack(&root, &rels, "/app", false, owner, false, &ig, &out).unwrap();
        assert_eq!(p.tops, vec!["/app/f", "/app/link", "/app/sub"]);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 7);
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, vec!["app/f", "app/link", "app/sub/", "app/sub/c"]);
        // One file to a file name.
        let p = pack(
            &root,
            &[PathBuf::from("f")],
            "/x/renamed",
            false,
            owner,
            false,
            &ig,
            &out,
        )
        .unwrap();
        assert_eq!(p.tops, vec!["/x/renamed"]);
    }

    #[test]
    fn packs_a_context_folder() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::create_dir_all(root.join("node_modules/x")).unwrap();
        fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(
            root.join(".dockerignore"),
            "node_modules\nDockerfile\n*.log\n",
        )
        .unwrap();
        fs::write(root.join("src/deep/main.rs"), "fn main() {}").unwrap();
        fs::write(root.join("node_modules/x/i.js"), "x").unwrap();
        fs::write(root.join("build.log"), "x").unwrap();
        symlink("deep/main.rs", root.join("src/link")).unwrap();
        let tar = pack_dir(root, Some(("Dockerfile.extra", b"FROM a\n")), Vec::new()).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            let kind = e.header().entry_type();
            names.push(format!("{} {kind:?}", e.path().unwrap().display()));
        }
        // Ignored paths are left out, the Dockerfile and .dockerignore go along anyway.
        assert_eq!(
            names,
            vec![
                ".dockerignore Regular",
                "Dockerfile Regular",
                "src/ Directory",
                "src/deep/ Directory",
                "src/deep/main.rs Regular",
                "src/link Symlink",
                "Dockerfile.extra Regular",
            ]
        );
    }
}
