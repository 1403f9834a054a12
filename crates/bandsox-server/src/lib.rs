//! The HTTP API server: BandSox-compatible REST routes over [`bandsox_core::Manager`], with
//! RFC 9457 problem+json errors. Secure by default: without authentication it only listens
//! on loopback addresses.

pub mod auth;
pub mod cluster;
pub mod dashboard;
pub mod discovery;
pub mod docs;
pub mod error;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod listen;
pub mod observe;
pub mod openapi;
pub mod origin;
mod redact;
pub mod resolve;
pub mod routes;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;

use bandsox_core::Manager;

pub use listen::ConnLimits;
pub use routes::{proxy_router, router, AppState};

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on non-loopback address {0} without authentication; use --host 127.0.0.1, or pass --insecure-no-auth if you really want an open server")]
    InsecureBind(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--public-url must be an http:// or https:// URL without a path, got `{0}`")]
    PublicUrl(String),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] bandsox_cluster::ClusterError),
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Port of the guest proxy listener on the same address (`0`: any free port; `None`: no
    /// proxy listener).
    pub proxy_port: Option<u16>,
    /// The URL clients reach the API under, when it is not the listen address (behind a TLS
    /// proxy): its origin is accepted as our own, and https makes the session cookie `Secure`.
    pub public_url: Option<String>,
    /// The URL clients reach the proxy listener under, when it is not `http://<host>:<port>`.
    pub public_proxy_url: Option<String>,
    /// Allow a non-loopback address although no authentication is configured.
    pub insecure_no_auth: bool,
    /// Requests that may run at once on one VM before 429.
    pub max_ops_per_vm: usize,
    /// Bytes of request bodies all requests together may hold in memory.
    pub body_budget_bytes: usize,
    /// Header and body timeouts and the connection cap of each listener.
    pub conn: ConnLimits,
    /// Write an access log line per request.
    pub access_log: bool,
    /// Serve `/metrics` without credentials on this address too.
    pub metrics_addr: Option<SocketAddr>,
    /// Join a cluster (`--cluster`); `None`: a single host.
    pub cluster: Option<cluster::ClusterOptions>,
}

impl ServeOptions {
    /// Defaults for `addr`: the proxy on the next port, the limits' defaults.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            proxy_port: Some(addr.port().wrapping_add(1)),
            public_url: None,
            public_proxy_url: None,
            insecure_no_auth: false,
            max_ops_per_vm: limits::DEFAULT_MAX_OPS_PER_VM,
            body_budget_bytes: limits::DEFAULT_BODY_BUDGET,
            conn: ConnLimits::default(),
            access_log: true,
            metrics_addr: None,
            cluster: None,
        }
    }
}

/// `scheme://authority` of an http(s) URL without a path (trailing `/` allowed).
fn origin_of(url: &str) -> Result<String, ServerError> {
    let bad = || ServerError::PublicUrl(url.to_owned());
    let u = url.trim_end_matches('/');
    let (scheme, rest) = u.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err(bad());
    }
    Ok(format!("{scheme}://{}", rest.to_ascii_lowercase()))
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Binds the API listener (and the proxy listener) and serves until `shutdown` resolves.
/// VMs keep running when the server stops.
pub async fn serve(
    manager: Arc<Manager>,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let auth_enabled = manager
        .store()
        .auth_enabled()
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
    if !opts.addr.ip().is_loopback() && !opts.insecure_no_auth && !auth_enabled {
        return Err(ServerError::InsecureBind(opts.addr));
    }
    let public_origin = opts.public_url.as_deref().map(origin_of).transpose()?;
    let public_proxy = opts
        .public_proxy_url
        .as_deref()
        .map(origin_of)
        .transpose()?;
    let api = bind(opts.addr).await?;
    let proxy = match opts.proxy_port {
        Some(port) => Some(bind(SocketAddr::new(opts.addr.ip(), port)).await?),
        None => None,
    };
    let proxy_addr = proxy.as_ref().and_then(|p| p.local_addr().ok());
    let metrics = match opts.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let mut state = AppState::new(manager);
    state.observer = observe::observer(opts.access_log);
    state.insecure_no_auth = opts.insecure_no_auth;
    state.vm_ops = Arc::new(limits::OpLimiter::new(opts.max_ops_per_vm));
    state.body_budget = Arc::new(limits::BodyBudget::new(opts.body_budget_bytes));
    state.secure_cookies = public_origin
        .as_deref()
        .is_some_and(|o| o.starts_with("https://"));
    state.public_origin = public_origin;
    state.proxy.public_url = public_proxy;
    if let Some(p) = &proxy {
        state.proxy.port = p.local_addr()?.port();
    }
    tracing::info!(addr = %api.local_addr()?, "bandsox API and dashboard listening");
    if !dashboard::built() {
        tracing::warn!("this binary has no dashboard (web/dist was missing at build time): / serves a placeholder; run `npm ci && npm run build` in web/ and rebuild");
    }
    // Joined after every listener is bound, so a node never advertises an address it could
    // not take; left (lease revoked) when the server stops.
    if let Some(c) = &opts.cluster {
        state.cluster = Some(cluster::ClusterNode::join(state.manager.clone(), c).await?);
    }
    let stop = listen::stop_on(shutdown);
    let proxy_task = match proxy {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "guest port proxy listening");
            let app = proxy_router(state.clone());
            let stop = stop.clone();
            Some(tokio::spawn(listen::serve(listener, app, opts.conn, stop)))
        }
        None => None,
    };
    if let Some(listener) = metrics {
        tracing::info!(addr = %listener.local_addr()?, "metrics listening (no credentials)");
        let app = routes::metrics_router(state.clone());
        tokio::spawn(listen::serve(listener, app, opts.conn, stop.clone()));
    }
    // Local clients (the Python SDK's local mode) find this server through the storage root.
    let _server_file = discovery::ServerFile::write(
        state.manager.storage().root(),
        api.local_addr()?,
        proxy_addr,
    )
    .map_err(|e| tracing::warn!(error = %e, "cannot write server.json in the storage root"))
    .ok();
    let node = state.cluster.clone();
    let served = listen::serve(api, router(state), opts.conn, stop).await;
    if let Some(node) = node {
        node.leave().await;
    }
    served?;
    if let Some(t) = proxy_task {
        t.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}
