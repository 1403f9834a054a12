//! cgroup limits for jailed VMMs on any host: cgroup v2 with the `cpu` and `memory`
//! controllers, cgroup v1 controllers, or a hybrid of both (v1 controllers next to a v2
//! hierarchy that has none, like Debian hosts booted with `systemd.unified_cgroup_hierarchy=0`).
//!
//! [`CgroupHost::detect`] reads the mount table the way the jailer does (`/proc/mounts`: the
//! first `cgroup2` mount and the controllers its `cgroup.controllers` offers; every `cgroup`
//! v1 mount and the controllers in its options). [`CgroupHost::plan`] picks the version that
//! can apply both limits and spells them in that version's files, which the jailer writes
//! under `<hierarchy>/<exec-name>/<id>`:
//!
//! | limit | v2 | v1 |
//! | --- | --- | --- |
//! | CPU: `vcpu` cores | `cpu.max=<vcpu × 100000> 100000` | `cpu.cfs_period_us=100000`, `cpu.cfs_quota_us=<vcpu × 100000>` |
//! | memory: guest + 256 MiB | `memory.max=<bytes>` | `memory.limit_in_bytes=<bytes>` |
//!
//! (v1's `cpu.shares` is a relative weight, not a limit, so the CFS quota stands in for v2's
//! `cpu.max`.) When neither version offers both controllers, the plan names what is missing
//! and the driver refuses to start unless the operator chose [`CgroupLimits::Optional`].
//! [`CgroupHost::vm_dirs`] lists every directory the jailer may have made for a VM, so the
//! driver removes them whichever version was used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The mount table the jailer reads (its own `/proc/mounts`, the same as ours).
pub const MOUNTS: &str = "/proc/self/mounts";

/// CFS period of the CPU limit, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// Memory allowed beyond the guest's: the VMM itself and the page cache of its disks.
const MEM_OVERHEAD_MIB: u64 = 256;
/// The controllers the limits need, in the order they are reported.
const NEEDED: [&str; 2] = ["cpu", "memory"];

/// Whether a VM may start when its cgroup limits cannot be applied
/// (`BANDSOX_FC_CGROUP_LIMITS=required|optional`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupLimits {
    /// Refuse to start (the default).
    #[default]
    Required,
    /// Start with whatever limits can be applied, logging a warning naming what is missing.
    Optional,
}

impl CgroupLimits {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "required" => Some(Self::Required),
            "optional" => Some(Self::Optional),
            _ => None,
        }
    }
}

/// A cgroup v1 hierarchy: its mount point and the controllers bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct V1Mount {
    dir: PathBuf,
    controllers: BTreeSet<String>,
}

/// The cgroup hierarchies of this host, as the jailer sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupHost {
    /// The first `cgroup2` mount and the controllers available at its root.
    v2: Option<(PathBuf, BTreeSet<String>)>,
    v1: Vec<V1Mount>,
}

/// The jailer's cgroup arguments for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    /// `--cgroup-version`; `None`: no cgroup arguments at all (nothing can be applied).
    pub version: Option<u8>,
    /// `--cgroup` values (`<file>=<value>`), in the order they are written.
    pub settings: Vec<String>,
    /// Needed controllers the chosen version does not offer.
    pub missing: Vec<&'static str>,
}

impl CgroupHost {
    /// Reads the mount table at `mounts` (and the v2 root's `cgroup.controllers`). An
    /// unreadable table is a host without cgroups.
    pub fn detect(mounts: &Path) -> Self {
        match std::fs::read_to_string(mounts) {
            Ok(table) => Self::parse(&table, |dir| {
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default()
            }),
            Err(e) => {
                tracing::warn!(mounts = %mounts.display(), error = %e, "cannot read the mount table; assuming no cgroups");
                Self::default()
            }
        }
    }

    /// Parses a mount table; `controllers` reads a v2 root's `cgroup.controllers`.
    pub fn parse(table: &str, controllers: impl Fn(&Path) -> String) -> Self {
        let mut host = Self::default();
        for line in table.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // `<source> <dir> <type> <options> 0 0`; the jailer only takes sources of
            // `[a-z2]*` (`cgroup`, `cgroup2`, `none`).
            let [source, dir, fstype, options, "0", "0"] = f[..] else {
                continue;
            };
            if !source.bytes().all(|b| b.is_ascii_lowercase() || b == b'2') {
                continue;
            }
            let dir = PathBuf::from(dir);
            match fstype {
                // The jailer uses the first v2 mount only.
                "cgroup2" if host.v2.is_none() => {
                    let set = controllers(&dir)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    host.v2 = Some((dir, set));
                }
                "cgroup" => host.v1.push(V1Mount {
                    dir,
                    controllers: options.split(',').map(str::to_owned).collect(),
                }),
                _ => {}
            }
        }
        host
    }

    /// The v1 hierarchy `controller` is bound to (the first mount naming it, as the jailer
    /// looks it up).
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|m| m.controllers.contains(controller))
            .map(|m| m.dir.as_path())
    }

    fn v2_has(&self, controller: &str) -> bool {
        self.v2
            .as_ref()
            .is_some_and(|(_, c)| c.contains(controller))
    }

    /// The limits for a VM of `vcpu` vCPUs and `mem_mib` MiB in the best version this host
    /// has: v2 if it offers both controllers, else v1 if it does, else whichever offers more.
    pub fn plan(&self, vcpu: u32, mem_mib: u32) -> CgroupPlan {
        let quota_us = u64::from(vcpu.max(1)) * CPU_PERIOD_US;
        let mem_bytes = (u64::from(mem_mib) + MEM_OVERHEAD_MIB) << 20;
        let v2: Vec<_> = NEEDED.into_iter().filter(|c| self.v2_has(c)).collect();
        let v1: Vec<_> = NEEDED
            .into_iter()
            .filter(|c| self.v1_dir(c).is_some())
            .collect();
        let (version, usable) =
            if v2.len() == NEEDED.len() || (!v2.is_empty() && v2.len() >= v1.len()) {
                (Some(2), v2)
            } else if !v1.is_empty() {
                (Some(1), v1)
            } else {
                (None, Vec::new())
            };
        let mut settings = Vec::new();
        for c in &usable {
            match (version, *c) {
                (Some(2), "cpu") => settings.push(format!("cpu.max={quota_us} {CPU_PERIOD_US}")),
                (Some(2), "memory") => settings.push(format!("memory.max={mem_bytes}")),
                (Some(1), "cpu") => {
                    settings.push(format!("cpu.cfs_period_us={CPU_PERIOD_US}"));
                    settings.push(format!("cpu.cfs_quota_us={quota_us}"));
                }
                (Some(1), "memory") => settings.push(format!("memory.limit_in_bytes={mem_bytes}")),
                _ => {}
            }
        }
        CgroupPlan {
            version,
            settings,
            missing: NEEDED.into_iter().filter(|c| !usable.contains(c)).collect(),
        }
    }

    /// Why `missing` cannot be used here (for the error or warning).
    pub fn describe_missing(&self, missing: &[&str]) -> String {
        let v2 = match &self.v2 {
            Some((dir, c)) if c.is_empty() => {
                format!(
                    "the cgroup v2 hierarchy at {} has no controllers",
                    dir.display()
                )
            }
            Some((dir, c)) => format!(
                "the cgroup v2 hierarchy at {} offers only {}",
                dir.display(),
                c.iter().cloned().collect::<Vec<_>>().join(" ")
            ),
            None => "no cgroup v2 hierarchy is mounted".into(),
        };
        let v1 = if self.v1.is_empty() {
            "no cgroup v1 hierarchy is mounted".to_string()
        } else {
            "no cgroup v1 hierarchy has it".to_string()
        };
        format!(
            "controller {} unavailable ({v2}; {v1})",
            missing
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    }

    /// Every directory the jailer may create for VM `id` under the parent cgroup `parent`
    /// (its exec file's name): `<hierarchy>/<parent>/<id>` in the v2 hierarchy and in the v1
    /// hierarchies of the needed controllers.
    pub fn vm_dirs(&self, parent: &str, id: &str) -> Vec<PathBuf> {
        let mut roots: Vec<&Path> = Vec::new();
        if let Some((dir, _)) = &self.v2 {
            roots.push(dir);
        }
        for c in NEEDED {
            if let Some(dir) = self.v1_dir(c) {
                if !roots.contains(&dir) {
                    roots.push(dir);
                }
            }
        }
        roots.iter().map(|r| r.join(parent).join(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's lab host: v1 controllers, an empty v2 hierarchy.
    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const V2: &str =
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n";
    const V1_COMBINED: &str = "\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
";

    fn host(table: &str, v2_controllers: &str) -> CgroupHost {
        let c = v2_controllers.to_string();
        CgroupHost::parse(table, move |_| c.clone())
    }

    #[test]
    fn v2_with_controllers_uses_cpu_max_and_memory_max() {
        let p = host(V2, "cpuset cpu io memory hugetlb pids rdma misc\n").plan(2, 256);
        assert_eq!(p.version, Some(2));
        assert_eq!(
            p.settings,
            ["cpu.max=200000 100000", "memory.max=536870912"]
        );
        assert!(p.missing.is_empty());
        assert_eq!(
            host(V2, "cpu memory").vm_dirs("firecracker", "a"),
            [PathBuf::from("/sys/fs/cgroup/firecracker/a")]
        );
    }

    #[test]
    fn hybrid_host_uses_v1_files_in_both_hierarchies() {
        // The v2 hierarchy offers only hugetlb: the jailer's v2 mode would fail with
        // `Controller cpu is unavailable`.
        let h = host(HYBRID, "hugetlb\n");
        let p = h.plan(1, 128);
        assert_eq!(p.version, Some(1));
        assert_eq!(
            p.settings,
            [
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=100000",
                "memory.limit_in_bytes=402653184"
            ]
        );
        assert!(p.missing.is_empty());
        assert_eq!(
            h.vm_dirs("firecracker", "vm-1"),
            [
                PathBuf::from("/sys/fs/cgroup/unified/firecracker/vm-1"),
                PathBuf::from("/sys/fs/cgroup/cpu/firecracker/vm-1"),
                PathBuf::from("/sys/fs/cgroup/memory/firecracker/vm-1"),
            ]
        );
    }

    #[test]
    fn combined_v1_mount_is_found_by_its_options() {
        let h = host(V1_COMBINED, "");
        assert_eq!(h.plan(4, 1024).version, Some(1));
        assert_eq!(
            h.vm_dirs("fc", "x"),
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/fc/x"),
                PathBuf::from("/sys/fs/cgroup/memory/fc/x"),
            ]
        );
    }

    #[test]
    fn missing_controllers_are_named() {
        let h = host("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "");
        let p = h.plan(1, 128);
        assert_eq!((p.version, p.settings.len()), (None, 0));
        assert_eq!(p.missing, ["cpu", "memory"]);
        let why = h.describe_missing(&p.missing);
        assert!(why.contains("`cpu` and `memory`"), "{why}");
        assert!(
            why.contains("/sys/fs/cgroup/unified has no controllers"),
            "{why}"
        );

        // Only memory in v2, nothing in v1: memory is limited, cpu is reported missing.
        let p = host(V2, "memory pids").plan(1, 128);
        assert_eq!(p.version, Some(2));
        assert_eq!(p.settings, ["memory.max=402653184"]);
        assert_eq!(p.missing, ["cpu"]);
        assert_eq!(CgroupHost::default().plan(1, 1).missing, ["cpu", "memory"]);
    }

    #[test]
    fn first_v2_mount_wins_and_odd_lines_are_skipped() {
        let table = "\
garbage
cgroup2 /first cgroup2 rw 0 0
cgroup2 /second cgroup2 rw 0 0
/dev/vda / ext4 rw 0 0
";
        let h = CgroupHost::parse(table, |d| {
            if d == Path::new("/first") {
                "cpu memory".into()
            } else {
                String::new()
            }
        });
        assert_eq!(h.plan(1, 1).version, Some(2));
        assert_eq!(h.vm_dirs("f", "i"), [PathBuf::from("/first/f/i")]);
    }

    #[test]
    fn policy_parses() {
        assert_eq!(
            CgroupLimits::parse("required"),
            Some(CgroupLimits::Required)
        );
        assert_eq!(
            CgroupLimits::parse("optional"),
            Some(CgroupLimits::Optional)
        );
        assert_eq!(CgroupLimits::parse("off"), None);
        assert_eq!(CgroupLimits::default(), CgroupLimits::Required);
    }
}
