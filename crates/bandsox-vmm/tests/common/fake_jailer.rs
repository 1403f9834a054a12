//! A fake jailer (v1.16.1) over a fake cgroup host.
//!
//! It parses its command line with the real grammar ([`super::fake_args`]) and then follows
//! the real jailer's order, with its error messages (stderr: the message, then
//! `Error: <Debug>`; exit code 1):
//!
//! 1. `Env::new`: the id (`[A-Za-z0-9-]`, 1–64), `--exec-file` and `--chroot-base-dir`
//!    canonicalised, uid/gid numbers, `--parent-cgroup` relative, `--cgroup-version` a `u8`,
//!    and every `--cgroup <file>=<value>` checked against the host: the hierarchy of that
//!    version must exist, and the file's controller must be offered (v2: in the root's
//!    `cgroup.controllers`; v1: a mount whose options name it). A v2 request on a hybrid host
//!    fails here with `Controller cpu is unavailable`, as the real one does.
//! 2. The jail root `<base>/<exec-name>/<id>/root` is created and the exec file copied in.
//! 3. The network namespace file is opened; the cgroups are written: each VM cgroup directory
//!    is made, v1 values are first inherited from the parent (the file must exist for that
//!    controller), v2 controllers enabled in every `cgroup.subtree_control` up from the parent,
//!    then the value is written (the kernel's syntax is checked: `EINVAL` otherwise) and the
//!    jailer's pid attached. The fake host is plain directories: the control files are modelled,
//!    and every write is appended to the log `cgroup_log` instead.
//! 4. `root/dev`, `root/dev/net`, `root/run` are made (no chroot or device nodes: the fake runs
//!    unprivileged-compatible, as the caller), the pid file `<root>/<exec-name>.pid` is
//!    created (`create_new`), and the copy runs as `/<exec-name> --id <id> --start-time-us ..
//!    --start-time-cpu-us .. --parent-cpu-time-us .. <args after -->` with an empty
//!    environment: as a child that the jailer leaves behind (`--new-pid-ns`; the pid file holds
//!    the child's pid) or by exec (the pid file holds the jailer's own).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::fake_args::{self, Parsed};
use super::fake_fc::Config;

/// Which cgroup hierarchies a fake host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Unified v2 at `<dir>/cg` with `cpuset cpu io memory pids`.
    V2,
    /// v1 controllers `cpu,cpuacct` and `memory` (and `cpuset`, `pids`); no v2.
    V1,
    /// This project's lab host: v1 controllers and an empty v2 hierarchy at `cg/unified`.
    Hybrid,
    /// No cgroups mounted at all.
    None,
}

/// Lays out a fake host under `dir`; returns its mount table (for the driver's
/// `cgroup_mounts` and the fake jailer).
pub fn make_host(dir: &Path, kind: HostKind) -> PathBuf {
    let cg = dir.join("cg");
    std::fs::create_dir_all(dir).unwrap();
    let mut table = String::from("/dev/vda / ext4 rw,relatime 0 0\n");
    let v2 = |path: &Path, controllers: &str, table: &mut String| {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
        table.push_str(&format!(
            "cgroup2 {} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n",
            path.display()
        ));
    };
    let v1 = |table: &mut String| {
        for (name, options) in [
            ("cpu,cpuacct", "cpu,cpuacct"),
            ("memory", "memory"),
            ("cpuset", "cpuset"),
            ("pids", "pids"),
        ] {
            let p = cg.join(name);
            std::fs::create_dir_all(&p).unwrap();
            table.push_str(&format!(
                "cgroup {} cgroup rw,nosuid,nodev,noexec,relatime,{options} 0 0\n",
                p.display()
            ));
        }
    };
    match kind {
        HostKind::V2 => v2(&cg, "cpuset cpu io memory pids", &mut table),
        HostKind::V1 => v1(&mut table),
        HostKind::Hybrid => {
            v1(&mut table);
            v2(&cg.join("unified"), "hugetlb", &mut table);
        }
        HostKind::None => {}
    }
    let mounts = dir.join("mounts");
    std::fs::write(&mounts, table).unwrap();
    mounts
}

/// A jailer error: its `Display` message and `Debug` form.
struct JailerError(String, String);

/// `No such file or directory (os error 2)`.
fn os_error(e: &std::io::Error) -> String {
    e.to_string()
}

fn io_debug(e: &std::io::Error) -> String {
    format!("{e:?}")
}

impl JailerError {
    fn write(path: &Path, e: std::io::Error) -> Self {
        Self(
            format!("Failed to write to {}: {}", path.display(), os_error(&e)),
            format!("Write({:?}, {})", path, io_debug(&e)),
        )
    }
    fn read(path: &Path, e: std::io::Error) -> Self {
        Self(
            format!(
                "Failed to read file {} into a string: {}",
                path.display(),
                os_error(&e)
            ),
            format!("ReadToString({:?}, {})", path, io_debug(&e)),
        )
    }
    fn controller(c: &str) -> Self {
        Self(
            format!("Controller {c} is unavailable"),
            format!("CgroupControllerUnavailable({c:?})"),
        )
    }
    fn hierarchy(what: &str) -> Self {
        Self(
            format!("Hierarchy not found: {what}"),
            format!("CgroupHierarchyMissing({what:?})"),
        )
    }
    fn canonicalize(p: &str, e: std::io::Error) -> Self {
        Self(
            format!("Failed to canonicalize path {p}: {}", os_error(&e)),
            format!("Canonicalize({p:?}, {})", io_debug(&e)),
        )
    }
    fn file_open(p: &Path, e: std::io::Error) -> Self {
        Self(
            format!("Failed to open file {}: {}", p.display(), os_error(&e)),
            format!("FileOpen({:?}, {})", p, io_debug(&e)),
        )
    }
    fn simple(msg: String, debug: String) -> Self {
        Self(msg, debug)
    }
}

/// The fake jailer's `main`: returns the exit code (or does not return: exec).
pub fn main(argv: Vec<String>, config: &Config) -> i32 {
    if let Some(log) = &config.jailer_argv {
        let _ = std::fs::write(log, argv[1..].join("\n") + "\n");
    }
    let args = match fake_args::parse(fake_args::JAILER, &argv) {
        Ok(Parsed::Help) => {
            println!("Jailer v{}\n", fake_args::VERSION);
            println!("{}\n", fake_args::help(fake_args::JAILER));
            println!(
                "Any arguments after the -- separator will be supplied to the jailed binary.\n"
            );
            return 0;
        }
        Ok(Parsed::Version) => {
            println!("Jailer v{}\n", fake_args::VERSION);
            return 0;
        }
        Ok(Parsed::Run(a)) => a,
        Err(e) => {
            eprintln!("Failed to parse arguments: {e}");
            eprintln!("Error: ArgumentParsing({})", e.debug());
            return 1;
        }
    };
    match run(&args, config) {
        Ok(()) => 0,
        Err(JailerError(msg, debug)) => {
            eprintln!("{msg}");
            eprintln!("Error: {debug}");
            1
        }
    }
}

/// One cgroup the jailer makes: hierarchy root, VM directory, v1 or v2, `(file, value)`s.
struct Group {
    root: PathBuf,
    location: PathBuf,
    v1: bool,
    properties: Vec<(String, String)>,
}

fn run(args: &fake_args::Args, config: &Config) -> Result<(), JailerError> {
    let id = args.single("id").unwrap_or_default();
    if let Err(e) = super::fake_fc::validate_instance_id(id) {
        return Err(JailerError::simple(
            format!("Invalid instance ID: {}", e.0),
            format!("InvalidInstanceId({})", e.1),
        ));
    }
    let exec_file = args.single("exec-file").unwrap_or_default();
    let exec_path =
        std::fs::canonicalize(exec_file).map_err(|e| JailerError::canonicalize(exec_file, e))?;
    if !exec_path.is_file() {
        return Err(JailerError::simple(
            format!("{} is not a file", exec_path.display()),
            format!("NotAFile({exec_path:?})"),
        ));
    }
    let exec_name = exec_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let base = args.single("chroot-base-dir").unwrap_or_default();
    let base_path = std::fs::canonicalize(base).map_err(|e| JailerError::canonicalize(base, e))?;
    if !base_path.is_dir() {
        return Err(JailerError::simple(
            format!("{} is not a directory", base_path.display()),
            format!("NotADirectory({base_path:?})"),
        ));
    }
    let root = base_path.join(&exec_name).join(id).join("root");
    for (name, which) in [("uid", "Uid"), ("gid", "Gid")] {
        let v = args.single(name).unwrap_or_default();
        if v.parse::<u32>().is_err() {
            return Err(JailerError::simple(
                format!("Invalid {name}: {v}"),
                format!("{which}({v:?})"),
            ));
        }
    }
    let parent = args
        .single("parent-cgroup")
        .unwrap_or(&exec_name)
        .to_string();
    if Path::new(&parent).components().any(|c| {
        matches!(
            c,
            Component::CurDir | Component::ParentDir | Component::RootDir
        )
    }) {
        return Err(JailerError::simple(
            "Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'"
                .into(),
            "CgroupInvalidParentPath".into(),
        ));
    }
    let version_arg = args.single("cgroup-version").unwrap_or_default();
    let version: u8 = version_arg.parse().map_err(|_| {
        JailerError::simple(
            format!("{version_arg} is an invalid cgroup version specifier"),
            format!("CgroupInvalidVersion({version_arg:?})"),
        )
    })?;
    let host = Mounts::read(&config.mounts);
    let settings = args.multiple("cgroup");
    if settings.is_empty() && version == 2 {
        // No limits: the jailer only joins an existing parent cgroup.
        host.hierarchies(version)?;
    }
    let mut groups: Vec<Group> = Vec::new();
    if !settings.is_empty() {
        host.hierarchies(version)?;
        for cg in settings {
            let parts: Vec<&str> = cg.split('=').collect();
            if parts.len() != 2 || parts[1].is_empty() {
                return Err(JailerError::simple(
                    format!("Invalid format for cgroups: {cg}"),
                    format!("CgroupFormat({cg:?})"),
                ));
            }
            let file = parts[0];
            if Path::new(file).components().any(|c| {
                matches!(
                    c,
                    Component::CurDir | Component::ParentDir | Component::RootDir
                )
            }) {
                return Err(JailerError::simple(
                    format!("Cgroup invalid file: {cg}"),
                    format!("CgroupInvalidFile({cg:?})"),
                ));
            }
            let Some((controller, _)) = file.split_once('.') else {
                return Err(JailerError::simple(
                    format!("Cgroup invalid file: {file}"),
                    format!("CgroupInvalidFile({file:?})"),
                ));
            };
            let hierarchy = if version == 1 {
                host.v1_dir(controller)
                    .ok_or_else(|| JailerError::controller(controller))?
            } else {
                let (dir, offered) = host
                    .v2
                    .as_ref()
                    .ok_or_else(|| JailerError::hierarchy("cgroupsv2 hierarchy missing"))?;
                if !offered.iter().any(|c| c == controller) {
                    return Err(JailerError::controller(controller));
                }
                dir.clone()
            };
            let location = hierarchy.join(&parent).join(id);
            let g = match groups.iter_mut().position(|g| g.location == location) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(Group {
                        root: hierarchy.clone(),
                        location,
                        v1: version == 1,
                        properties: Vec::new(),
                    });
                    groups.last_mut().unwrap()
                }
            };
            g.properties.push((file.to_string(), parts[1].to_string()));
        }
    }
    for r in args.multiple("resource-limit") {
        let ok = r.split_once('=').is_some_and(|(name, v)| {
            matches!(name, "fsize" | "no-file") && v.parse::<u64>().is_ok()
        });
        if !ok {
            return Err(JailerError::simple(
                format!("Invalid resource argument: {r}"),
                format!("ResLimitArgument({r:?})"),
            ));
        }
    }

    // main: the chroot directory, then `Env::run`.
    std::fs::create_dir_all(&root).map_err(|e| {
        JailerError::simple(
            format!(
                "Failed to create directory {}: {}",
                root.display(),
                os_error(&e)
            ),
            format!("CreateDir({root:?}, {})", io_debug(&e)),
        )
    })?;
    let copy = root.join(&exec_name);
    let _ = std::fs::remove_file(&copy);
    if std::fs::hard_link(&exec_path, &copy).is_err() {
        std::fs::copy(&exec_path, &copy).map_err(|e| {
            JailerError::simple(
                format!(
                    "Failed to copy {} to {}: {}",
                    exec_path.display(),
                    copy.display(),
                    os_error(&e)
                ),
                format!("Copy({exec_path:?}, {copy:?}, {})", io_debug(&e)),
            )
        })?;
    }
    if let Some(ns) = args.single("netns") {
        std::fs::File::open(ns).map_err(|e| JailerError::file_open(Path::new(ns), e))?;
    }
    let log = CgroupLog(config.cgroup_log.clone());
    for g in &groups {
        g.write_values(&log)?;
    }
    for g in &groups {
        let file = g.location.join(if g.v1 { "tasks" } else { "cgroup.procs" });
        log.write(&file, &std::process::id().to_string());
    }
    for d in ["dev", "dev/net", "run"] {
        let _ = std::fs::create_dir_all(root.join(d));
    }

    let pid_file = root.join(format!("{exec_name}.pid"));
    let mut cmd = std::process::Command::new(&copy);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
        .to_string();
    cmd.arg0(format!("/{exec_name}"))
        .args(["--id", id])
        .args(["--start-time-us", &now_us])
        .args(["--start-time-cpu-us", "0"])
        .args(["--parent-cpu-time-us", "0"])
        .args(&args.extra)
        .env_clear()
        .env("FAKE_FC_CONFIG", &config.path)
        .env("FAKE_FC_CHROOT", &root)
        .current_dir(&root);
    let write_pid = |pid: u32| -> Result<(), JailerError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pid_file)
            .map_err(|e| JailerError::file_open(&pid_file, e))?;
        write!(f, "{pid}").map_err(|e| JailerError::write(&pid_file, e))
    };
    if args.flag("new-pid-ns") {
        let child = cmd.spawn().map_err(|e| {
            JailerError::simple(
                format!("Failed cloning into a new child process: {}", os_error(&e)),
                format!("Clone({})", io_debug(&e)),
            )
        })?;
        write_pid(child.id())
    } else {
        write_pid(std::process::id())?;
        let e = cmd.exec();
        Err(JailerError::simple(
            format!("Failed to exec into Firecracker: {}", os_error(&e)),
            format!("Exec({})", io_debug(&e)),
        ))
    }
}

/// Appends every cgroup file write (`{"path", "value"}`) to the fake host's log.
struct CgroupLog(Option<PathBuf>);

impl CgroupLog {
    fn write(&self, path: &Path, value: &str) {
        if let Some(log) = &self.0 {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "{}", json!({ "path": path, "value": value }));
            }
        }
    }
}

impl Group {
    fn write_values(&self, log: &CgroupLog) -> Result<(), JailerError> {
        std::fs::create_dir_all(&self.location).map_err(|e| {
            JailerError::simple(
                format!(
                    "Failed to create directory {}: {}",
                    self.location.display(),
                    os_error(&e)
                ),
                format!("CreateDir({:?}, {})", self.location, io_debug(&e)),
            )
        })?;
        let parent = self
            .location
            .parent()
            .unwrap_or(&self.location)
            .to_path_buf();
        let mut enabled: Vec<&str> = Vec::new();
        for (file, value) in &self.properties {
            let controller = file.split('.').next().unwrap_or_default();
            if self.v1 {
                // inherit_from_parent: the parent's file must exist for this controller.
                let parent_file = parent.join(file);
                if !control_file_exists(file, true) {
                    return Err(JailerError::read(
                        &parent_file,
                        std::io::Error::from_raw_os_error(libc::ENOENT),
                    ));
                }
            } else if !enabled.contains(&controller) {
                // Enable the controller in every cgroup.subtree_control from the root down.
                let mut dirs: Vec<&Path> = parent
                    .ancestors()
                    .take_while(|d| d.starts_with(&self.root))
                    .collect();
                dirs.reverse();
                for d in dirs {
                    log.write(&d.join("cgroup.subtree_control"), &format!("+{controller}"));
                }
                enabled.push(controller);
            }
            let target = self.location.join(file);
            if !control_file_exists(file, self.v1) {
                return Err(JailerError::write(
                    &target,
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                ));
            }
            if !value_is_valid(file, value) {
                return Err(JailerError::write(
                    &target,
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                ));
            }
            log.write(&target, value);
        }
        Ok(())
    }
}

/// The control files the kernel gives a cgroup of each controller (the ones a jailer might be
/// asked to write).
fn control_file_exists(file: &str, v1: bool) -> bool {
    const V1: &[&str] = &[
        "cpu.shares",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
        "cpu.cfs_burst_us",
        "cpu.rt_period_us",
        "cpu.rt_runtime_us",
        "cpu.idle",
        "cpuacct.usage",
        "memory.limit_in_bytes",
        "memory.soft_limit_in_bytes",
        "memory.swappiness",
        "cpuset.cpus",
        "cpuset.mems",
        "pids.max",
    ];
    const V2: &[&str] = &[
        "cpu.max",
        "cpu.max.burst",
        "cpu.weight",
        "cpu.weight.nice",
        "cpu.idle",
        "memory.max",
        "memory.high",
        "memory.low",
        "memory.min",
        "memory.swap.max",
        "cpuset.cpus",
        "cpuset.mems",
        "io.max",
        "io.weight",
        "pids.max",
    ];
    if v1 { V1 } else { V2 }.contains(&file)
}

/// The kernel's syntax for the limit files (anything else is `EINVAL`).
fn value_is_valid(file: &str, value: &str) -> bool {
    let uint = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let period = |s: &str| {
        s.parse::<u64>()
            .is_ok_and(|p| (1000..=1_000_000).contains(&p))
    };
    match file {
        "cpu.max" => {
            let mut it = value.split(' ');
            let quota = it.next().unwrap_or_default();
            let quota_ok = quota == "max" || quota.parse::<u64>().is_ok_and(|q| q >= 1000);
            let period_ok = match it.next() {
                Some(p) => period(p),
                None => true,
            };
            quota_ok && period_ok && it.next().is_none()
        }
        "cpu.cfs_period_us" => period(value),
        "cpu.cfs_quota_us" => value == "-1" || value.parse::<u64>().is_ok_and(|q| q >= 1000),
        "cpu.shares" => value.parse::<u64>().is_ok_and(|s| s >= 2),
        "cpu.weight" => value
            .parse::<u64>()
            .is_ok_and(|w| (1..=10_000).contains(&w)),
        "memory.max" | "memory.high" | "memory.low" | "memory.min" | "memory.swap.max" => {
            value == "max" || uint(value)
        }
        "memory.limit_in_bytes" | "memory.soft_limit_in_bytes" => value == "-1" || uint(value),
        "pids.max" => value == "max" || uint(value),
        _ => !value.is_empty(),
    }
}

/// The cgroup mounts of the fake host (read like the jailer reads `/proc/mounts`).
struct Mounts {
    v2: Option<(PathBuf, Vec<String>)>,
    v1: Vec<(PathBuf, Vec<String>)>,
}

impl Mounts {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut m = Mounts {
            v2: None,
            v1: Vec::new(),
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, dir, fstype, options, "0", "0"] = f[..] else {
                continue;
            };
            match fstype {
                "cgroup2" if m.v2.is_none() => {
                    let c = std::fs::read_to_string(Path::new(dir).join("cgroup.controllers"))
                        .unwrap_or_default();
                    m.v2 = Some((
                        dir.into(),
                        c.split_whitespace().map(str::to_owned).collect(),
                    ));
                }
                "cgroup" => {
                    m.v1.push((dir.into(), options.split(',').map(str::to_owned).collect()))
                }
                _ => {}
            }
        }
        m
    }

    /// `CgroupHierarchies::new`: the version's hierarchy must be mounted (a version other
    /// than 1 or 2 has none).
    fn hierarchies(&self, version: u8) -> Result<(), JailerError> {
        let found = match version {
            1 => !self.v1.is_empty(),
            2 => self.v2.is_some(),
            _ => false,
        };
        if found {
            Ok(())
        } else {
            Err(JailerError::hierarchy(
                "No hierarchy found for this cgroup version.",
            ))
        }
    }

    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|(_, c)| c.iter().any(|x| x == controller))
            .map(|(d, _)| d.clone())
    }
}

/// Every cgroup write the fake jailer made (`(path, value)`), in order.
pub fn cgroup_writes(log: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                PathBuf::from(v["path"].as_str().unwrap_or_default()),
                v["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
