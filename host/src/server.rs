//! `tmem serve`: a [`Host`] behind an HTTP listener serving the [`rest`](crate::rest) router.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and stop
//! the server at will; the binary passes Ctrl-C / SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::host::{BackendSpec, Host, HostConfig};
use crate::pool::PoolSpec;
use crate::rest::auth::{ApiToken, TOKEN_ENV, TokenSource};

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

/// Builds the host described by `config` (restoring what its data dir keeps) and loads or
/// creates the API token. The data dir is created private (mode 0700) if it is new.
pub fn build_host(config: &ServeConfig) -> anyhow::Result<(Arc<Host>, ApiToken)> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", config.data_dir.display()))?;
    let (token, source) = ApiToken::load_or_create(&config.data_dir, std::env::var(TOKEN_ENV).ok())?;
    match source {
        TokenSource::Environment => tracing::info!("API token from {TOKEN_ENV}"),
        TokenSource::File(path) => tracing::info!(path = %path.display(), "API token read from the data dir"),
        TokenSource::Created(path) => tracing::info!(path = %path.display(), "API token created (mode 0600); clients send it as `Authorization: Bearer TOKEN`"),
    }
    let host = Arc::new(Host::new(HostConfig { data_dir: Some(config.data_dir.clone()), ..Default::default() })?);
    if config.demo_pool && host.pool("demo").is_err() {
        let backends = [BackendSpec::new("zstd"), BackendSpec::new("ram")];
        host.create_pool(PoolSpec::new("demo"), &backends)?;
    }
    Ok((host, token))
}

/// Serves `host` on `listener` until `shutdown` completes.
pub async fn run(
    host: Arc<Host>,
    token: ApiToken,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API listens beyond loopback: anyone who can reach it and has the token controls the host (there is no TLS)");
    }
    tracing::info!(%addr, "tmem listening: API at /api/v1, health at /healthz, metrics at /metrics");
    axum::serve(listener, crate::rest::router(host, token)).with_graceful_shutdown(shutdown).await?;
    tracing::info!("tmem stopped");
    Ok(())
}
