//! `tmem serve`: a [`Host`] behind an HTTP listener. For now the listener answers only the
//! open health endpoint; the REST API arrives under `/api/v1`.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and stop
//! the server at will; the binary passes Ctrl-C / SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::host::{BackendSpec, Host, HostConfig};
use crate::pool::PoolSpec;

/// Settings of `tmem serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address of the HTTP listener (loopback by default).
    pub listen: SocketAddr,
    /// Where the host keeps its state.
    pub data_dir: PathBuf,
    /// Create a `[zstd, ram]` pool named `demo` at start.
    pub demo_pool: bool,
}

/// The HTTP routes, with no socket: tests can call it directly.
pub fn router(host: Arc<Host>) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(host)
}

async fn healthz(State(host): State<Arc<Host>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "pools": host.pools().len(),
        "curr_pages": host.curr_pages(),
    }))
}

/// Builds the host described by `config`.
pub fn build_host(config: &ServeConfig) -> anyhow::Result<Arc<Host>> {
    std::fs::create_dir_all(&config.data_dir)?;
    let host = Arc::new(Host::new(HostConfig { data_dir: Some(config.data_dir.clone()), ..Default::default() })?);
    if config.demo_pool {
        let backends = [BackendSpec::new("zstd"), BackendSpec::new("ram")];
        host.create_pool(PoolSpec::new("demo"), &backends)?;
    }
    Ok(host)
}

/// Serves `host` on `listener` until `shutdown` completes.
pub async fn run(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "tmem listening (health at /healthz)");
    axum::serve(listener, router(host)).with_graceful_shutdown(shutdown).await?;
    tracing::info!("tmem stopped");
    Ok(())
}
