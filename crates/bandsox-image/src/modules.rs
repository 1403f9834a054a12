//! Kernel module selection: which `.ko` files the initramfs carries, and in which order the
//! agent loads them, taken from `modules.dep` (as written by `depmod -b`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::ImageError;

/// Modules the guest needs: virtio transport and devices (block, net, console/serial, rng),
/// the virtio vsock stack, and overlayfs. Their dependencies are added by
/// [`resolve_load_order`]; those built into a kernel are skipped.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
    "overlay",
];

/// The canonical module name of a name or a module file name: basename, without `.ko` (and any
/// compression suffix), with `-` replaced by `_`.
pub fn module_name(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let stem = match base.find(".ko") {
        Some(i) => &base[..i],
        None => base,
    };
    stem.replace('-', "_")
}

/// Given an unpacked kernel tree's `lib/modules/<ver>` dir (with `modules.dep`, produced by
/// `depmod -b`), returns the .ko paths of `wanted` (names with '-' and '_' equivalent) plus their
/// dependencies, in a valid load order (deps first, no duplicates). A wanted module listed in
/// `modules.builtin` is skipped; one neither builtin nor present is an error naming it.
pub fn resolve_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, ImageError> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_path).map_err(|e| {
        ImageError::ModulesDep(format!(
            "cannot read {} ({e}); run `depmod -b <root> <version>` first",
            dep_path.display()
        ))
    })?;
    let builtin: HashSet<String> = match fs::read_to_string(modules_dir.join("modules.builtin")) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| module_name(l.trim()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => {
            return Err(ImageError::io(
                format!("read {}", modules_dir.join("modules.builtin").display()),
                e,
            ))
        }
    };

    // name -> (relative path, dependency names)
    let mut graph: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for (lineno, line) in dep_text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (module, deps) = line.split_once(':').ok_or_else(|| {
            ImageError::ModulesDep(format!("line {}: missing ':' in {line:?}", lineno + 1))
        })?;
        let module = module.trim();
        let deps = deps.split_whitespace().map(module_name).collect();
        graph.insert(module_name(module), (module.to_owned(), deps));
    }

    let mut order = Vec::new();
    let mut done = HashSet::new();
    for name in wanted {
        let name = module_name(name);
        if graph.contains_key(&name) {
            visit(&name, &graph, &mut done, &mut Vec::new(), &mut order)?;
        } else if !builtin.contains(&name) {
            return Err(ImageError::ModuleNotFound {
                name,
                dir: modules_dir.to_path_buf(),
            });
        }
    }
    Ok(order.into_iter().map(|rel| modules_dir.join(rel)).collect())
}

/// Depth-first post-order walk: every dependency lands in `order` before its dependents.
fn visit(
    name: &str,
    graph: &HashMap<String, (String, Vec<String>)>,
    done: &mut HashSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), ImageError> {
    if done.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(ImageError::ModulesDep(format!(
            "dependency cycle: {} -> {name}",
            path.join(" -> ")
        )));
    }
    let (rel, deps) = graph.get(name).ok_or_else(|| {
        ImageError::ModulesDep(format!(
            "`{name}` is a dependency of `{}` but has no entry",
            path.last().map(String::as_str).unwrap_or("?")
        ))
    })?;
    path.push(name.to_owned());
    for dep in deps {
        visit(dep, graph, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_owned());
    order.push(rel.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
";

    fn tree(dep: &str, builtin: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("modules.dep"), dep).unwrap();
        fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        dir
    }

    fn names(dir: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| {
                assert!(p.starts_with(dir));
                module_name(&p.to_string_lossy())
            })
            .collect()
    }

    #[test]
    fn dependencies_come_first_without_duplicates() {
        let dir = tree(
            DEP,
            "kernel/fs/ext4/ext4.ko\nkernel/fs/overlayfs/overlay.ko\n",
        );
        let wanted = [
            "virtio_net",
            "virtio-rng",
            "vmw_vsock_virtio_transport",
            "virtio_mmio",
            "virtio_ring",
            "ext4",
            "overlay",
        ];
        let got = names(
            dir.path(),
            &resolve_load_order(dir.path(), &wanted).unwrap(),
        );
        assert_eq!(
            got,
            [
                "failover",
                "net_failover",
                "virtio_ring",
                "virtio",
                "virtio_net",
                "virtio_rng",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "virtio_mmio",
            ]
        );
        let pos = |n: &str| got.iter().position(|g| g == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_mmio"));
    }

    #[test]
    fn the_file_name_is_kept() {
        let dir = tree(DEP, "");
        let got = resolve_load_order(dir.path(), &["virtio_rng"]).unwrap();
        assert_eq!(
            got.last().unwrap(),
            &dir.path()
                .join("kernel/drivers/char/hw_random/virtio-rng.ko")
        );
    }

    #[test]
    fn missing_module_is_named() {
        let dir = tree(DEP, "kernel/fs/ext4/ext4.ko\n");
        let err = resolve_load_order(dir.path(), &["virtio_blk"]).unwrap_err();
        assert!(
            matches!(&err, ImageError::ModuleNotFound { name, .. } if name == "virtio_blk"),
            "{err}"
        );
        assert!(err.to_string().contains("virtio_blk"));
    }

    #[test]
    fn cycles_and_missing_dep_files_are_errors() {
        let dir = tree("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert!(matches!(
            resolve_load_order(dir.path(), &["a"]),
            Err(ImageError::ModulesDep(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        let err = resolve_load_order(empty.path(), &["a"]).unwrap_err();
        assert!(err.to_string().contains("depmod"), "{err}");
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("foo-bar.ko.xz"), "foo_bar");
        assert_eq!(module_name("vsock"), "vsock");
    }
}
