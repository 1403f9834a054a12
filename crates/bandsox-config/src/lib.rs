//! Every `BANDSOX_*` environment variable bandsox reads, in one place. Each crate reads its
//! variables through [`get`] / [`get_os`] (or, for a `clap` option, names the constant in
//! `#[arg(env = ...)]`); no other code calls `std::env::var` on a `BANDSOX_` name (a test
//! checks the sources). [`VARS`] is the list `docs/CONFIGURATION.md` documents (a test checks
//! that too).

use std::ffi::OsString;

/// One variable: its name, who reads it, its default and what it does (as documented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub default: &'static str,
    pub what: &'static str,
}

macro_rules! vars {
    ($($(#[$doc:meta])* $konst:ident = $name:literal, default $default:literal, $what:literal;)*) => {
        $($(#[$doc])* pub const $konst: &str = $name;)*
        /// Every variable, in documentation order.
        pub const VARS: &[Var] = &[$(Var { name: $name, default: $default, what: $what }),*];
    };
}

vars! {
    /// The storage root (`--storage` wins).
    STORAGE = "BANDSOX_STORAGE", default "/var/lib/bandsox", "the storage root";
    /// The server the CLI talks to.
    URL = "BANDSOX_URL", default "http://127.0.0.1:8000", "the server the CLI talks to";
    /// The API key the CLI and SDKs send.
    API_KEY = "BANDSOX_API_KEY", default "~/.bandsox/credentials", "the API key sent as a bearer token";
    /// The static guest agent `init` puts into the initramfs.
    AGENT_BIN = "BANDSOX_AGENT_BIN", default "bandsox-agent next to bandsox", "the static guest agent";
    /// A Debian kernel package, or a directory holding them.
    KERNEL_DEB = "BANDSOX_KERNEL_DEB", default "/var/cache/bandsox", "the guest kernel package";
    /// `auto`, `firecracker` or `qemu`.
    VMM = "BANDSOX_VMM", default "auto", "the VMM backend";
    /// `kvm` or `tcg` (QEMU).
    ACCEL = "BANDSOX_ACCEL", default "detected", "QEMU's accelerator";
    /// The QEMU binary.
    QEMU_BIN = "BANDSOX_QEMU_BIN", default "qemu-system-x86_64 on PATH", "the QEMU binary";
    /// The Firecracker binary.
    FIRECRACKER_BIN = "BANDSOX_FIRECRACKER_BIN", default "firecracker on PATH", "the Firecracker binary";
    /// The jailer binary.
    JAILER_BIN = "BANDSOX_JAILER_BIN", default "next to firecracker", "the jailer binary";
    /// `0` runs Firecracker without the jailer.
    FC_JAILER = "BANDSOX_FC_JAILER", default "1", "whether Firecracker runs jailed";
    /// The user jailed VMMs run as.
    FC_UID = "BANDSOX_FC_UID", default "65534", "the user jailed VMMs run as";
    /// The group jailed VMMs run as.
    FC_GID = "BANDSOX_FC_GID", default "65534", "the group jailed VMMs run as";
    /// `required` or `optional`.
    FC_CGROUP_LIMITS = "BANDSOX_FC_CGROUP_LIMITS", default "required", "whether jailed VMs need their cgroup limits";
    /// Comma-separated registry hosts pulled over plain HTTP.
    INSECURE_REGISTRIES = "BANDSOX_INSECURE_REGISTRIES", default "none", "plain-HTTP registries";
    /// The most one import archive or image may unpack to, in MiB.
    MAX_UNPACKED_MIB = "BANDSOX_MAX_UNPACKED_MIB", default "16384", "the unpacked-size limit of one image";
    /// `0` turns background template builds off (`serve`'s flags win).
    AUTO_TEMPLATE = "BANDSOX_AUTO_TEMPLATE", default "1", "background template builds";
    /// The etcd binary of the cluster tests.
    ETCD_BIN = "BANDSOX_ETCD_BIN", default "etcd on PATH", "etcd for the cluster tests";
}

/// The value of `name` (one of [`VARS`]) when it is set and valid UTF-8.
pub fn get(name: &str) -> Option<String> {
    debug_assert!(known(name), "{name} is not listed in bandsox-config");
    std::env::var(name).ok()
}

/// The value of `name` (one of [`VARS`]) when it is set, as the OS gives it (paths).
pub fn get_os(name: &str) -> Option<OsString> {
    debug_assert!(known(name), "{name} is not listed in bandsox-config");
    std::env::var_os(name)
}

fn known(name: &str) -> bool {
    VARS.iter().any(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::VARS;
    use std::path::{Path, PathBuf};

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_variable_is_documented_and_only_documented_ones_exist() {
        let doc = std::fs::read_to_string(workspace().join("docs/CONFIGURATION.md")).unwrap();
        let table: String = doc
            .split("## Environment variables")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap()
            .to_owned();
        for v in VARS {
            assert!(
                table.contains(&format!("`{}`", v.name)),
                "{} is not in docs/CONFIGURATION.md",
                v.name
            );
        }
        for word in table.split('`').filter(|w| w.starts_with("BANDSOX_")) {
            let test_only = [
                "BANDSOX_BIN",
                "BANDSOX_FC_TEST_KERNEL",
                "BANDSOX_FC_TEST_INITRD",
            ];
            assert!(
                VARS.iter().any(|v| v.name == word) || test_only.contains(&word),
                "docs/CONFIGURATION.md documents {word}, which bandsox-config does not list"
            );
        }
    }

    #[test]
    fn no_other_source_reads_a_bandsox_variable() {
        let mut files = Vec::new();
        for e in std::fs::read_dir(workspace().join("crates"))
            .unwrap()
            .flatten()
        {
            if e.file_name() != "bandsox-config" {
                rust_files(&e.path().join("src"), &mut files);
            }
        }
        assert!(files.len() > 50, "{files:?}");
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for pat in ["var(\"BANDSOX_", "var_os(\"BANDSOX_", "env = \"BANDSOX_"] {
                if text.contains(pat) {
                    found.push(format!("{}: {pat}", f.display()));
                }
            }
        }
        assert!(found.is_empty(), "read outside bandsox-config: {found:?}");
    }
}
