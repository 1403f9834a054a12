//! `bandsox serve`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use bandsox_core::{Limits, Manager, ManagerConfig, VmmChoice};
use bandsox_server::ServeOptions;
use clap::Args;

use super::{core_error, storage};
use crate::client::CliError;
use crate::CliResult;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Storage root [env: BANDSOX_STORAGE] [default: /var/lib/bandsox].
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication (dangerous).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Seconds a VM may take to boot before create fails.
    #[arg(long, default_value_t = 90)]
    boot_timeout: u64,
    /// Most vCPUs one VM may have.
    #[arg(long, default_value_t = Limits::default().max_vcpu)]
    max_vcpu: u32,
    /// Most memory one VM may have, in MiB.
    #[arg(long, default_value_t = Limits::default().max_mem_mib)]
    max_mem_mib: u32,
    /// Largest writable disk of one VM, in MiB.
    #[arg(long, default_value_t = Limits::default().max_disk_mib)]
    max_disk_mib: u64,
    /// Most VMs that may exist at once (any state); more answer 429 `limit_reached`.
    #[arg(long, default_value_t = Limits::default().max_vms)]
    max_vms: usize,
    /// Requests that may run at once on one VM; more answer 429 `too_many_operations`.
    #[arg(long, default_value_t = bandsox_server::limits::DEFAULT_MAX_OPS_PER_VM)]
    max_ops_per_vm: usize,
    /// VMM backend: `auto` (Firecracker when its binary is found and KVM runs ordinary
    /// guests, else QEMU), `firecracker` or `qemu` [env: BANDSOX_VMM] [default: auto].
    #[arg(long, value_parser = ["auto", "firecracker", "qemu"])]
    vmm: Option<String>,
    /// Nameservers for guests, comma-separated IPv4 addresses [default: the host's
    /// non-loopback resolvers, else 1.1.1.1,8.8.8.8].
    #[arg(long, value_delimiter = ',')]
    dns: Vec<std::net::Ipv4Addr>,
    /// Build no template in the background after a cold create (by default one is built, so
    /// the next create of that image and shape restores it; templates that exist are used
    /// either way) [env: BANDSOX_AUTO_TEMPLATE=0].
    #[arg(long)]
    no_auto_template: bool,
    /// Keep N VMs of IMAGE restored from its template and paused, so a create of that image
    /// and shape is a resume: IMAGE[:VCPUxMEM_MIB]=N, e.g. `bandsox/busybox=2` or
    /// `alpine:3.19:2x256=1` (other shape fields are the create defaults). Repeatable.
    #[arg(long = "warm-pool", value_name = "IMAGE[:SHAPE]=N")]
    warm_pools: Vec<String>,
    /// Most memory all warm-pool VMs together may be given, in MiB.
    #[arg(long, default_value_t = 2048)]
    warm_pool_mem_mib: u64,
    /// Build templates in the background (the default; wins over BANDSOX_AUTO_TEMPLATE=0).
    #[arg(long, hide = true, conflicts_with = "no_auto_template")]
    auto_template: bool,
    /// Port of the guest port proxy (`/api/vms/ID/ports/PORT/...`), a listener of its own so
    /// guest pages never share the API's origin; 0 picks a free port [default: --port + 1].
    #[arg(long)]
    proxy_port: Option<u16>,
    /// Run no guest port proxy.
    #[arg(long, conflicts_with = "proxy_port")]
    no_proxy: bool,
    /// The URL clients reach this server under when it is not the listen address (behind a
    /// TLS proxy), e.g. https://bandsox.example.com: its origin counts as the server's own,
    /// and https marks the session cookie Secure.
    #[arg(long)]
    public_url: Option<String>,
    /// The URL clients reach the guest proxy under, when it is not http://HOST:PROXY_PORT.
    #[arg(long)]
    public_proxy_url: Option<String>,
    /// Most connections open at once on each listener; more are closed at once.
    #[arg(long, default_value_t = bandsox_server::ConnLimits::default().max_connections)]
    max_connections: usize,
    /// Milliseconds a client may take to send a request's headers (also closes idle
    /// keep-alive connections).
    #[arg(long, default_value_t = bandsox_server::ConnLimits::default().header_timeout.as_millis() as u64)]
    header_timeout_ms: u64,
    /// Log lines as `text` (for people) or `json` (one object a line, for collectors).
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// No access log line per request.
    #[arg(long)]
    no_access_log: bool,
    /// Also serve Prometheus metrics at http://ADDR/metrics without credentials (an address
    /// only your scraper reaches, e.g. 127.0.0.1:9464); on the API port `/metrics` needs
    /// credentials when auth is on.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Milliseconds a request body may stall before the request fails with 408.
    #[arg(long, default_value_t = bandsox_server::ConnLimits::default().body_idle_timeout.as_millis() as u64)]
    body_timeout_ms: u64,
    /// Join a cluster coordinated through these etcd members (comma-separated http:// URLs,
    /// e.g. http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379); see
    /// docs/CLUSTER.md. Without it the server is a single host.
    #[arg(long, help_heading = "Cluster")]
    cluster: Option<String>,
    /// This node's name in the cluster (a-z, 0-9, '-', '_', '.').
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    node_name: Option<String>,
    /// Where the other nodes reach this node's API, http://ADDR:PORT.
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    advertise: Option<String>,
    /// A file holding the secret every node of the cluster shares (at least 16 bytes; its
    /// trailing newline is ignored).
    #[arg(long, requires = "cluster", help_heading = "Cluster")]
    cluster_secret_file: Option<PathBuf>,
    /// Seconds of the node's etcd lease: a node that stops renewing it for this long is
    /// shown down and its VMs lost.
    #[arg(long, requires = "cluster", default_value_t = bandsox_cluster::membership::DEFAULT_LEASE_TTL_S, help_heading = "Cluster")]
    cluster_lease_ttl: u64,
}

/// The cluster options, checked before anything starts.
fn cluster_options(
    a: &ServeArgs,
) -> Result<Option<bandsox_server::cluster::ClusterOptions>, CliError> {
    let Some(members) = &a.cluster else {
        return Ok(None);
    };
    bandsox_cluster::etcd::parse_members(members).map_err(cluster_error)?;
    let need = |flag: &str| {
        CliError::new(format!("--cluster needs {flag}"))
            .with_hint("pass --node-name NAME --advertise http://ADDR:PORT --cluster-secret-file FILE (see docs/CLUSTER.md)")
    };
    let node_name = a.node_name.clone().ok_or_else(|| need("--node-name"))?;
    let advertise = a.advertise.clone().ok_or_else(|| need("--advertise"))?;
    let secret_file = a
        .cluster_secret_file
        .as_ref()
        .ok_or_else(|| need("--cluster-secret-file"))?;
    let secret = std::fs::read_to_string(secret_file)
        .map_err(|e| {
            CliError::new(format!(
                "cannot read --cluster-secret-file {}: {e}",
                secret_file.display()
            ))
        })?
        .trim_end_matches(['\n', '\r'])
        .to_owned();
    if a.cluster_lease_ttl == 0 || a.cluster_lease_ttl > 300 {
        return Err(CliError::new(
            "--cluster-lease-ttl must be 1 to 300 seconds",
        ));
    }
    let opts = bandsox_server::cluster::ClusterOptions {
        members: members.clone(),
        node_name,
        advertise,
        secret,
        lease_ttl_s: a.cluster_lease_ttl,
    };
    bandsox_server::cluster::check(&opts).map_err(cluster_error)?;
    Ok(Some(opts))
}

fn cluster_error(e: bandsox_cluster::ClusterError) -> CliError {
    let mut err = CliError::new(e.to_string());
    if let Some(h) = e.hint() {
        err = err.with_hint(h);
    }
    err
}

/// Serves on `host` (default 127.0.0.1; without authentication only loopback addresses are
/// allowed) and `port` (default 8000).
pub fn run(a: ServeArgs, host: Option<&str>, port: Option<u16>) -> CliResult {
    let host: IpAddr = host
        .unwrap_or("127.0.0.1")
        .parse()
        .map_err(|_| CliError::new("--host must be an IP address such as 127.0.0.1"))?;
    let port = port.unwrap_or(8000);
    let build_templates = auto_template(&a)?;
    let warm_pools = a
        .warm_pools
        .iter()
        .map(|p| bandsox_core::PoolSpec::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CliError::new(format!("--warm-pool: {e}"))
                .with_hint("give IMAGE[:VCPUxMEM_MIB]=N, e.g. --warm-pool bandsox/busybox=2")
        })?;
    let cluster = cluster_options(&a)?;
    init_logging(&a.log_format);
    let storage = storage(a.storage)?;
    // One server per storage root (two would both re-attach the VMs, run their timeouts, ...):
    // the manager takes the root's lock before it opens the database or recovers anything,
    // and a second owner fails there naming the PID that holds it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let mut config = ManagerConfig::new(storage);
        config.boot_timeout = std::time::Duration::from_secs(a.boot_timeout.max(1));
        config.limits = Limits {
            max_vcpu: a.max_vcpu,
            max_mem_mib: a.max_mem_mib,
            max_disk_mib: a.max_disk_mib,
            max_vms: a.max_vms,
        };
        if !a.dns.is_empty() {
            config.dns = a.dns;
        }
        config.auto_template = build_templates;
        config.warm_pools = warm_pools;
        config.warm_pool_mem_mib = a.warm_pool_mem_mib;
        let choice = match a.vmm.as_deref() {
            Some(v) => VmmChoice::parse(v).unwrap_or_default(),
            None => VmmChoice::from_env().map_err(core_error)?,
        };
        let driver = bandsox_core::select_driver(choice, &config.storage).map_err(core_error)?;
        let manager = Manager::with_driver(config, driver)
            .await
            .map_err(core_error)?;
        let (vmm, accelerator) = manager.backend();
        tracing::info!(vmm, accelerator, "VMM backend");
        let mut opts = ServeOptions::new(SocketAddr::new(host, port));
        opts.insecure_no_auth = a.insecure_no_auth;
        opts.max_ops_per_vm = a.max_ops_per_vm;
        opts.proxy_port = if a.no_proxy {
            None
        } else {
            Some(a.proxy_port.unwrap_or_else(|| port.wrapping_add(1)))
        };
        opts.access_log = !a.no_access_log;
        opts.metrics_addr = a.metrics_listen;
        opts.public_url = a.public_url;
        opts.public_proxy_url = a.public_proxy_url;
        opts.cluster = cluster;
        opts.conn = bandsox_server::ConnLimits {
            header_timeout: std::time::Duration::from_millis(a.header_timeout_ms.max(1)),
            body_idle_timeout: std::time::Duration::from_millis(a.body_timeout_ms.max(1)),
            max_connections: a.max_connections.max(1),
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down; VMs keep running");
        };
        let served = bandsox_server::serve(manager.clone(), opts, shutdown).await;
        // Warm-pool VMs are no user VMs: they do not outlive the server.
        manager.drain_pools().await;
        served.map_err(|e| match e {
            bandsox_server::ServerError::Cluster(c) => {
                let mut err = cluster_error(c);
                err.message = format!("cannot join the cluster: {}", err.message);
                err
            }
            e => CliError::new(e.to_string()),
        })
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Background template builds: on unless `--no-auto-template` or `BANDSOX_AUTO_TEMPLATE`
/// says off; a flag wins over the variable.
fn auto_template(a: &ServeArgs) -> Result<bool, CliError> {
    if a.no_auto_template || a.auto_template {
        return Ok(a.auto_template);
    }
    match bandsox_config::get(bandsox_config::AUTO_TEMPLATE).as_deref() {
        None | Some("") => Ok(true),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(true),
            "0" | "false" | "off" | "no" => Ok(false),
            _ => Err(CliError::new(format!(
                "BANDSOX_AUTO_TEMPLATE must be 1 or 0, got `{}`",
                v.escape_debug()
            ))
            .with_hint(
                "unset it to build templates in the background, or set it to 0 to build none",
            )),
        },
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): colours only on a terminal,
/// `json` as one object a line.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
