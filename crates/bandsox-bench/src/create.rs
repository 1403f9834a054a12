//! `bench/create`: VM creation must not depend on image size, and pull+convert must not be
//! slower than the obvious tools.
//!
//! 1. Create-to-first-exec (create a VM, run `true`) from a cached 50 MiB image and a cached
//!    1 GiB image, alternating A B A B; the ratio of medians (goal ≤ 1.2).
//! 2. Pull + convert of a multi-layer image from a local `docker-registry`, ours
//!    (`images::pull` into an empty cache) next to `skopeo copy` + `tar -x` per layer +
//!    `mkfs.ext4 -d` of the same image (goal ≤ 1.0×).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{median, row};
use anyhow::{bail, Context, Result};
use bandsox_core::images;
use bandsox_core::{CreateVm, Manager, ManagerConfig, Storage};
use bandsox_image::oci::{write_layout, LayoutLayer, NoProgress};
use bandsox_image::pull::PullOptions;
use bandsox_image::unpack::Compression;
use bandsox_protocol::ExecRequest;

const MIB: usize = 1 << 20;

pub async fn run(runs: usize, templates_only: bool) -> Result<()> {
    crate::util::in_scratch("create", |work| async move {
        run_in(&work, runs, templates_only).await
    })
    .await
}

async fn run_in(work: &Path, runs: usize, templates_only: bool) -> Result<()> {
    let storage = crate::util::prepare_storage(work)?;
    let mut config = ManagerConfig::new(storage.clone());
    // The first-create row measures a cold create with its background template build.
    config.auto_template = true;
    let mgr = Manager::open(config).await?;
    let (backend, accel) = mgr.backend();
    if templates_only {
        return templates(&mgr, runs, backend, accel).await;
    }

    // 1. Cached images of 50 MiB and 1 GiB: busybox root plus incompressible filler.
    for (name, mib) in [("bench/small", 50usize), ("bench/large", 1024)] {
        let dir = work.join(name.replace('/', "-"));
        bandsox_image::rootfs::build_busybox_rootfs(Path::new("/bin/busybox"), &dir)?;
        write_filler(&dir.join("filler"), mib * MIB)?;
        let t = Instant::now();
        images::import_dir(
            mgr.store(),
            &storage,
            name,
            &dir,
            serde_json::json!({"Env": ["PATH=/bin:/usr/bin"]}),
        )?;
        eprintln!(
            "imported {name} ({mib} MiB) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        std::fs::remove_dir_all(&dir)?;
    }
    let mut small = Vec::new();
    let mut large = Vec::new();
    for i in 0..runs + 1 {
        let a = create_first_exec(&mgr, "bench/small", Some(false)).await?;
        let b = create_first_exec(&mgr, "bench/large", Some(false)).await?;
        eprintln!(
            "run {i}: 50 MiB {:.3} s, 1 GiB {:.3} s",
            a.as_secs_f64(),
            b.as_secs_f64()
        );
        if i > 0 {
            small.push(a);
            large.push(b);
        }
    }
    let (ms, ml) = (median(&mut small), median(&mut large));

    // 2. Pull + convert from a local registry next to skopeo + tar + mkfs.
    let registry = Registry::start(work)?;
    let layout = work.join("layout");
    let layers: Vec<LayoutLayer> = (0..4)
        .map(|i| {
            Ok(LayoutLayer {
                tar: layer_tar(i, 24 * MIB)?,
                compression: Compression::Gzip,
            })
        })
        .collect::<Result<_>>()?;
    write_layout(&layout, &layers, serde_json::json!({}), "v1")?;
    drop(layers);
    let reference = format!("127.0.0.1:{}/bench/multi:v1", registry.port);
    run_tool(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{reference}")),
    )?;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for i in 0..runs.min(5) + 1 {
        let a = pull_convert(&mgr, &storage, &reference).await?;
        let b = baseline(work, &reference)?;
        eprintln!(
            "pull run {i}: ours {:.3} s, skopeo+tar+mkfs {:.3} s",
            a.as_secs_f64(),
            b.as_secs_f64()
        );
        if i > 0 {
            ours.push(a);
            base.push(b);
        }
    }
    let (mo, mb) = (median(&mut ours), median(&mut base));

    println!("bench/create  backend={backend} accel={accel} runs={runs} (median; min..max)");
    println!("| measurement | median s | min s | max s |");
    println!("| --- | --- | --- | --- |");
    row("create -> first exec, 50 MiB image (cached)", ms, &small);
    row("create -> first exec, 1 GiB image (cached)", ml, &large);
    println!(
        "| ratio 1 GiB / 50 MiB (goal <= 1.2) | {:.2} | | |",
        ml.as_secs_f64() / ms.as_secs_f64()
    );
    row(
        "pull + convert, 4 x 24 MiB gzip layers (bandsox)",
        mo,
        &ours,
    );
    row("skopeo copy + tar -x + mkfs.ext4 -d (baseline)", mb, &base);
    println!(
        "| ratio bandsox / baseline (goal <= 1.0) | {:.2} | | |",
        mo.as_secs_f64() / mb.as_secs_f64()
    );
    templates(&mgr, runs, backend, accel).await
}

/// 3. Templates: the first create of an image (cold boot, template built behind it), then
///    cold create next to template create, alternating A B A B (default busybox image, the
///    default shape: 1 vCPU, 128 MiB, networking on).
async fn templates(mgr: &Arc<Manager>, runs: usize, backend: &str, accel: &str) -> Result<()> {
    let image = "bandsox/busybox";
    let mut first = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..runs + 1 {
        for t in mgr.list_templates()? {
            mgr.delete_template(&t.id)?;
        }
        let f = create_first_exec(mgr, image, None).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while mgr.list_templates()?.is_empty() {
            if Instant::now() > deadline {
                bail!("the template was never built");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let a = create_first_exec(mgr, image, Some(false)).await?;
        let b = create_first_exec(mgr, image, None).await?;
        eprintln!(
            "template run {i}: first create {:.3} s, cold {:.3} s, template {:.3} s",
            f.as_secs_f64(),
            a.as_secs_f64(),
            b.as_secs_f64()
        );
        if i > 0 {
            first.push(f);
            cold.push(a);
            warm.push(b);
        }
    }
    // Warm pool of the same image and shape (the template is built): each run waits for a
    // ready pool VM, then creates.
    let shape = bandsox_core::TemplateShape {
        vcpu: 1,
        mem_mib: 128,
        disk_size_mib: 4096,
        enable_networking: true,
    };
    mgr.set_pool(bandsox_core::PoolSpec {
        image: image.into(),
        shape: shape.clone(),
        size: 1,
    })?;
    let mut pooled = Vec::new();
    for i in 0..runs + 1 {
        let deadline = Instant::now() + Duration::from_secs(300);
        while mgr.pools()?.first().map_or(0, |p| p.ready) < 1 {
            if Instant::now() > deadline {
                bail!("the warm pool never filled");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let p = create_first_exec(mgr, image, None).await?;
        eprintln!(
            "warm-pool run {i}: create -> first exec {:.3} s",
            p.as_secs_f64()
        );
        if i > 0 {
            pooled.push(p);
        }
    }
    mgr.set_pool(bandsox_core::PoolSpec {
        image: image.into(),
        shape,
        size: 0,
    })?;
    mgr.drain_pools().await;
    let mp = median(&mut pooled);
    let (mf, mc, mw) = (median(&mut first), median(&mut cold), median(&mut warm));
    println!(
        "bench/create templates  backend={backend} accel={accel} runs={runs} (median; min..max)"
    );
    println!("| measurement | median s | min s | max s |");
    println!("| --- | --- | --- | --- |");
    row("cold create -> first exec (template off)", mc, &cold);
    row("template create -> first exec", mw, &warm);
    println!(
        "| ratio template / cold (goal <= 0.15) | {:.2} | | |",
        mw.as_secs_f64() / mc.as_secs_f64()
    );
    row("warm-pool create -> first exec (p50)", mp, &pooled);
    println!(
        "| ratio warm-pool / cold (goal <= 0.03) | {:.3} | | |",
        mp.as_secs_f64() / mc.as_secs_f64()
    );
    row("first create (cold + template built behind it)", mf, &first);
    println!(
        "| ratio first / cold (goal <= 1.10) | {:.2} | | |",
        mf.as_secs_f64() / mc.as_secs_f64()
    );
    Ok(())
}

async fn create_first_exec(
    mgr: &Arc<Manager>,
    image: &str,
    template: Option<bool>,
) -> Result<Duration> {
    let t = Instant::now();
    let vm = mgr
        .create_vm(CreateVm {
            template,
            ..CreateVm::new(image)
        })
        .await?;
    let out = mgr
        .exec(
            &vm.id,
            ExecRequest {
                argv: Some(vec!["/bin/true".into()]),
                timeout_ms: Some(30_000),
                ..Default::default()
            },
            None,
            1 << 16,
        )
        .await?;
    let d = t.elapsed();
    mgr.delete_vm(&vm.id).await?;
    if out.status.exit_code != Some(0) {
        bail!("first exec failed: {:?}", out.status);
    }
    Ok(d)
}

/// Pull into an empty cache (no blobs, no disk) and convert.
async fn pull_convert(mgr: &Arc<Manager>, storage: &Storage, reference: &str) -> Result<Duration> {
    if let Ok(info) = images::inspect(mgr.store(), storage, reference) {
        let _ = info;
        images::remove(mgr.store(), storage, reference).await?;
    }
    let _ = std::fs::remove_dir_all(images::blobs_dir(storage));
    sync_drop_caches();
    let t = Instant::now();
    images::pull(
        mgr.store(),
        storage,
        reference,
        &PullOptions::default(),
        true,
        Arc::new(NoProgress),
    )
    .await?;
    Ok(t.elapsed())
}

fn baseline(work: &Path, reference: &str) -> Result<Duration> {
    let dir = work.join("baseline");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root"))?;
    sync_drop_caches();
    let t = Instant::now();
    run_tool(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", dir.join("oci").display())),
    )?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci/index.json"))?)?;
    let mdigest = index["manifests"][0]["digest"].as_str().context("index")?;
    let blob = |d: &str| {
        dir.join("oci/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(mdigest))?)?;
    for l in manifest["layers"].as_array().context("layers")? {
        let d = l["digest"].as_str().context("digest")?;
        run_tool(
            Command::new("tar")
                .arg("-xzf")
                .arg(blob(d))
                .arg("-C")
                .arg(dir.join("root")),
        )?;
    }
    bandsox_image::rootfs::make_ext4_from_dir(
        &dir.join("root"),
        &dir.join("disk.ext4"),
        "baseline",
    )?;
    let d = t.elapsed();
    std::fs::remove_dir_all(&dir)?;
    Ok(d)
}

fn sync_drop_caches() {
    let _ = Command::new("sync").status();
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Deterministic incompressible bytes (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_filler(path: &Path, len: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..len.div_ceil(16 * MIB) {
        let n = (len - i * 16 * MIB).min(16 * MIB);
        f.write_all(&pseudo_random(n, 7 + i as u64))?;
    }
    f.flush()?;
    Ok(())
}

/// A layer of many files (mixed sizes, half compressible) totalling about `bytes`.
fn layer_tar(index: usize, bytes: usize) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut total = 0;
    let mut n = 0;
    while total < bytes {
        let size = [512, 4096, 65536, 1 << 20][n % 4];
        let data = if n % 2 == 0 {
            pseudo_random(size, (index * 100_000 + n) as u64)
        } else {
            vec![b'a' + (n % 26) as u8; size]
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(
            &mut h,
            format!("l{index}/d{}/f{n}", n % 32),
            data.as_slice(),
        )?;
        total += size;
        n += 1;
    }
    Ok(b.into_inner()?)
}

struct Registry {
    port: u16,
    child: std::process::Child,
}

impl Registry {
    fn start(work: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                work.join("registry").display()
            ),
        )?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("docker-registry (apt install docker-registry)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("registry did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { port, child })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
