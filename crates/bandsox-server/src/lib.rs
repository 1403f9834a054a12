//! The HTTP API server: BandSox-compatible REST routes over [`bandsox_core::Manager`], with
//! RFC 9457 problem+json errors. Secure by default: without authentication it only listens
//! on loopback addresses.

pub mod auth;
pub mod error;
pub mod limits;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use bandsox_core::Manager;

pub use routes::{router, AppState};

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
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Allow a non-loopback address although no authentication is configured.
    pub insecure_no_auth: bool,
    /// Requests that may run at once on one VM before 429.
    pub max_ops_per_vm: usize,
}

/// Binds and serves until `shutdown` resolves. VMs keep running when the server stops.
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
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: opts.addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr()?, "bandsox API listening");
    let mut state = AppState::new(manager);
    state.insecure_no_auth = opts.insecure_no_auth;
    state.vm_ops = Arc::new(limits::OpLimiter::new(opts.max_ops_per_vm));
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
