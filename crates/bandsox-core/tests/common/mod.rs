//! Shared helpers of the VM tests: a prepared storage root per test and a leak check.
//!
//! The kernel assets and the default image are built once per test binary (with the real
//! `bandsox init` code) into a template; each test gets its own storage root with hard links
//! to those files and its own database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bandsox_core::init::{initialise, InitRequest};
use bandsox_core::Storage;

mod cleanup;
pub use cleanup::processes_mentioning;

/// The static guest agent: `BANDSOX_AGENT_BIN`, else cargo's static-target output.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BANDSOX_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/bandsox-agent");
    assert!(
        p.is_file(),
        "static agent missing at {}: run scripts/test (it builds it) or set BANDSOX_AGENT_BIN",
        p.display()
    );
    p
}

fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        // Shared across runs of one checkout: `bandsox init` is idempotent and rebuilds when
        // the agent changes. Keyed by the checkout so two worktrees never rebuild each other's.
        let key = env!("CARGO_MANIFEST_DIR")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let dir = std::env::temp_dir().join(format!("bandsox-test-template-{key:016x}"));
        initialise(&InitRequest {
            storage: Storage::new(&dir).unwrap(),
            kernel: None,
            agent_bin: agent_bin(),
            busybox: Some("/bin/busybox".into()),
            skip_kernel: false,
            rootfs: None,
            force: false,
        })
        .expect("bandsox init of the test template");
        dir
    })
}

/// A storage root of its own, removed on drop.
pub struct TestStorage {
    pub dir: tempfile::TempDir,
    pub storage: Storage,
}

impl TestStorage {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestStorage {
    /// VMMs outlive the manager by design (they survive server restarts), so a test that
    /// fails half-way would leave them running: kill whatever still names this root.
    fn drop(&mut self) {
        cleanup::clean_root(self.dir.path());
    }
}

/// A fresh, initialised storage root.
pub fn fresh_storage() -> TestStorage {
    let t = template();
    let dir = tempfile::Builder::new().prefix("bsx").tempdir().unwrap();
    link_tree(t, dir.path());
    let storage = Storage::new(dir.path()).unwrap();
    TestStorage { dir, storage }
}

/// Recreates `from` under `to`: directories made, the database copied, other files hard-linked.
fn link_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            link_tree(&src, &dst);
        } else if entry
            .file_name()
            .to_string_lossy()
            .starts_with("bandsox.db")
        {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            std::fs::hard_link(&src, &dst).unwrap();
        }
    }
}

/// Asserts that nothing of the VM `id` is left: no process naming its directory, no files.
pub fn assert_vm_gone(root: &Path, id: &str) {
    let vm_dir = root.join("vms").join(id);
    assert!(
        !vm_dir.exists(),
        "VM directory {} left behind",
        vm_dir.display()
    );
    let procs = processes_mentioning(&vm_dir);
    assert!(procs.is_empty(), "processes left for VM {id}: {procs:?}");
}

/// Asserts that no process mentions the storage root and no VM directory is left.
pub fn assert_storage_clean(root: &Path) {
    let procs = processes_mentioning(root);
    assert!(
        procs.is_empty(),
        "processes left under {}: {procs:?}",
        root.display()
    );
    let left: Vec<_> = std::fs::read_dir(root.join("vms")).unwrap().collect();
    assert!(left.is_empty(), "VM directories left: {left:?}");
}
