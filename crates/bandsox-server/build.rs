//! Embeds the dashboard's build output (`web/dist`, made by `npm run build` in `web/`) into
//! the binary. Without it (no npm on this machine) the server still builds and serves a
//! placeholder page that says how to build the dashboard.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, base, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push((rel.to_string_lossy().replace('\\', "/"), p));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = manifest.join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-env-changed=BANDSOX_WEB_DIST");
    let dist = std::env::var_os("BANDSOX_WEB_DIST").map_or(dist, PathBuf::from);
    let mut files = Vec::new();
    walk(&dist, &dist, &mut files);
    files.sort();
    let built = files.iter().any(|(p, _)| p == "index.html");
    if !built {
        println!(
            "cargo:warning=web/dist is missing: the dashboard will be a placeholder page (run `npm ci && npm run build` in web/, or scripts/setup)"
        );
        files.clear();
    }
    let mut src =
        format!("/// Whether the dashboard was built.\npub const BUILT: bool = {built};\n");
    src.push_str("/// `(path, bytes)` of every file of the dashboard build.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &files {
        let _ = writeln!(
            src,
            "    ({rel:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("web_assets.rs");
    // A new file, not a rewrite: a target directory copied with hard links (`cp -al`) must not
    // change the copy it was made from.
    let _ = std::fs::remove_file(&out);
    std::fs::write(out, src).expect("write web_assets.rs");
}
