//! `tmem serve`: a [`Host`] behind an HTTP listener serving the [`rest`](crate::rest) router,
//! and, when asked, the peer listener for other hosts' remote stores ([`peer`](crate::peer)).
//!
//! [`serve`] binds, runs until the shutdown future completes (the binary passes Ctrl-C /
//! SIGTERM), and then stops both listeners gracefully.
//!
//! The HTTP listener is served here with hyper directly (not `axum::serve`) so that it is
//! bounded like every other listener ([`crate::listen`]): a connection cap where a connection
//! that has not yet made a request with the API token is evicted first, and hyper's
//! header-read timeout (the handshake deadline: a request head must arrive in time, and a
//! keep-alive connection idle that long is closed).
//!
//! # HTTPS
//!
//! With a certificate (`--tls-cert/--tls-key`) the HTTP listener speaks HTTPS only when it
//! listens beyond loopback, or on loopback too with `--api-tls` ([`ServeConfig::api_tls`]);
//! a loopback listener stays plain HTTP by default, so local tools (the CLI, `tmem swap` in
//! `tmem-swap.service`) keep working when a certificate is added for NBD exports and peers —
//! loopback traffic crosses no network, and the token still guards it. Its TLS context is the
//! certificate's alone: no PSK (browsers and curl have none) and no client certificates (the API token
//! authenticates; `--tls-client-ca` is for NBD and the peer listener). The TLS handshake is
//! part of a connection's handshake: it must end within the listener's handshake deadline,
//! and a connection still in it is pending (evicted first by a full listener). A client that
//! speaks plain HTTP to it gets a plain `400` saying so ([`HTTPS_REQUIRED`]) and is closed.
//!
//! Without a certificate the listener is plain HTTP, which [`serve`] refuses beyond loopback
//! unless `--insecure-plain-tcp` (as the peer listener): the token and the pages would cross
//! the network in clear text.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::declared::Declared;
use crate::frontend::attach::{AllowedPaths, BlockDevices};
use crate::host::{BackendSpec, Host, HostConfig, MemoryLimit};
use crate::listen::{Evicted, Gate, ListenerLimits, ServeLimits, Ticket};
use crate::memory::governor::GovernorConfig;
use crate::pool::PoolSpec;
use crate::rest::AppState;
use crate::rest::auth::{ApiToken, TOKEN_ENV, TokenSource};
use crate::tls::{TlsClient, TlsFiles, TlsServer};
use crate::unix_access::UnixAccess;

/// Settings of `tmem serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address of the HTTP listener (loopback by default).
    pub listen: SocketAddr,
    /// Where the host keeps its state.
    pub data_dir: PathBuf,
    /// Create a `[zstd, ram]` pool named `demo` at start.
    pub demo_pool: bool,
    /// Address of the peer listener for other hosts' remote stores (`None`: off).
    pub peer_listen: Option<SocketAddr>,
    /// The frontend socket (`None`: `DATA_DIR/tmem.sock`).
    pub socket: Option<PathBuf>,
    /// Lock the process's memory at start ([`crate::frontend::lock_process_memory`]).
    pub mlock: bool,
    /// The host's memory budget for pages.
    pub memory_limit: MemoryLimit,
    /// The memory governor (`enabled: false`: off; see [`crate::memory::governor`]).
    pub governor: GovernorConfig,
    /// Plugin instances the host can have at once (pools reserve theirs when created).
    pub max_instances: u32,
    /// The bounds of every listener: connection caps and handshake deadlines.
    pub limits: ServeLimits,
    /// Paths besides the data dir under which the API may name block devices' backing files
    /// and sockets ([`AllowedPaths`]).
    pub allowed_paths: Vec<PathBuf>,
    /// The key file that seals the secrets the catalog keeps ([`crate::secrets`]); `None`: a
    /// systemd credential `tmem-secrets.key` if the service has one, else `DATA_DIR.key`.
    pub secrets_key: Option<PathBuf>,
    /// Pools and block devices to create at start if missing (the config file's
    /// `[[pool]]` and `[[swap]]`: [`crate::declared`]).
    pub declared: Declared,
    /// The host's TLS for its TCP listeners and connections ([`crate::tls`]; none set: no
    /// TLS, and TCP NBD exports only with `insecure_no_tls`). With a certificate the HTTP
    /// listener is HTTPS.
    pub tls: TlsFiles,
    /// Users (names or uids) besides the host's own and root who may connect to its Unix
    /// sockets (the frontend socket, NBD exports on a socket); with `socket_group`, the group
    /// the sockets are given to (mode 0660). Empty: sockets are 0600 ([`UnixAccess`]).
    pub socket_users: Vec<String>,
    /// The group of the sockets when `socket_users` is set.
    pub socket_group: Option<String>,
    /// Allow plain TCP beyond loopback where TLS is otherwise required: an HTTP listener or a
    /// peer listener without TLS, remote stores' `tmem://` and `redis://` endpoints. Logged
    /// as a warning.
    pub insecure_plain_tcp: bool,
    /// The HTTP listener is HTTPS on loopback too (with a certificate; beyond loopback it is
    /// HTTPS whenever there is one).
    pub api_tls: bool,
}

/// Where the secrets key is: as configured, else the systemd credential
/// (`LoadCredential=tmem-secrets.key:…`), else `None` (beside the data dir).
fn secrets_key(config: &ServeConfig) -> Option<PathBuf> {
    config.secrets_key.clone().or_else(|| {
        let credential = PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join("tmem-secrets.key");
        credential.exists().then_some(credential)
    })
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
        TokenSource::Created(path) => {
            tracing::info!(path = %path.display(), "API token created (mode 0600); clients send it as `Authorization: Bearer TOKEN`")
        }
    }
    let host = Arc::new(Host::new(HostConfig {
        data_dir: Some(config.data_dir.clone()),
        memory_limit: config.memory_limit,
        engine: crate::plugin::EngineOptions { max_instances: config.max_instances, ..Default::default() },
        secrets_key: secrets_key(config),
        manual_tier_passes: false,
        governor: Some(config.governor),
        manual_governor: false,
    })?);
    if config.demo_pool && host.pool("demo").is_err() {
        let backends = [BackendSpec::new("zstd"), BackendSpec::new("ram")];
        host.create_pool(PoolSpec::new("demo"), &backends)?;
    }
    Ok((host, token))
}

/// Serves `host` on `listener` until `shutdown` completes.
pub async fn serve(config: &ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if config.mlock {
        crate::frontend::lock_process_memory()?;
    }
    // The TLS client first: restoring pools checks their remote endpoints against it.
    let client = TlsClient::new(&config.tls, config.insecure_plain_tcp).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    if !crate::tls::set_client(client) {
        tracing::warn!("the process's TLS client was set before: --tls-ca and --insecure-plain-tcp may not apply");
    }
    if config.insecure_plain_tcp {
        tracing::warn!(
            "INSECURE: --insecure-plain-tcp: remote stores may send pages and credentials in clear text beyond loopback, \
             and the HTTP listener and a peer listener without TLS may listen beyond it"
        );
    }
    // The HTTP listener's TLS: the certificate's alone (see the module's doc).
    let https = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) if config.api_tls || !config.listen.ip().is_loopback() => {
            let files = TlsFiles { cert: Some(cert.clone()), key: Some(key.clone()), ..TlsFiles::default() };
            TlsServer::load(&files).map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        }
        _ => None,
    };
    if https.is_none() && !config.listen.ip().is_loopback() && !config.insecure_plain_tcp {
        anyhow::bail!(
            "--listen {} is beyond loopback and this host has no certificate: the API token, pages and the dashboard \
             would cross the network in clear text; give --tls-cert and --tls-key (the API is then HTTPS), \
             listen on loopback (127.0.0.1), or --insecure-plain-tcp",
            config.listen
        );
    }
    let (host, token) = build_host(config)?;
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let listener = bind(config.listen).await?;
    let peer_listener = match config.peer_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let socket = config.socket.clone().unwrap_or_else(|| crate::frontend::socket::default_socket(&config.data_dir));
    let access = UnixAccess::new(&config.socket_users, config.socket_group.as_deref())?;
    let frontends = crate::frontend::socket::bind_with(&socket, &access)?;
    // Block devices sit above the host: restored here, detached before their pool is destroyed.
    let allowed =
        AllowedPaths::new(std::iter::once(config.data_dir.clone()).chain(config.allowed_paths.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("{e} (--allow-path)"))?;
    tracing::info!(paths = ?allowed.roots(), "block devices' backing files and sockets are confined to these paths");
    let tls = TlsServer::load(&config.tls).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    if config.peer_listen.is_some() && tls.is_some() && config.tls.cert.is_none() {
        // Remote stores authenticate the peer host by its certificate; they have no PSK.
        anyhow::bail!(
            "--peer-listen over TLS needs --tls-cert and --tls-key: remote stores (tmems://) check a certificate"
        );
    }
    if let Some(peer_addr) = config.peer_listen
        && tls.is_none()
        && !peer_addr.ip().is_loopback()
        && !config.insecure_plain_tcp
    {
        anyhow::bail!(
            "--peer-listen {peer_addr} is beyond loopback and this host has no TLS: peers' pages and tokens would cross the \
             network in clear text; give --tls-cert and --tls-key (peers then use tmems://), or --insecure-plain-tcp"
        );
    }
    match &tls {
        Some(tls) => tracing::info!(offers = tls.summary(), "TLS configured: TCP NBD exports require it"),
        None => {
            tracing::info!("no TLS configured (--tls-cert/--tls-key, --tls-psk): TCP NBD exports need insecure_no_tls")
        }
    }
    let devices =
        Arc::new(BlockDevices::restore_with(host.clone(), config.limits.nbd, allowed, tls.clone(), access.clone()));
    // The declared pools and devices, after the catalog's (which may already hold them).
    let (created, attached) = crate::declared::apply(&devices, &config.declared)?;
    if created + attached > 0 {
        tracing::info!(pools = created, devices = attached, "declared config applied");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        crate::notify::notify_logged("STOPPING=1\nSTATUS=stopping: block devices stay for the next start");
        let _ = stop.send(true);
    });
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let addr = listener.local_addr()?;
    let scheme = if https.is_some() { "https" } else { "http" };
    if !addr.ip().is_loopback() {
        if https.is_some() {
            tracing::info!(%addr, "the API listens beyond loopback over HTTPS: anyone who can reach it and has the token controls the host");
        } else {
            tracing::warn!(%addr, "INSECURE: the API listens beyond loopback without TLS (--insecure-plain-tcp): the API token and pages cross the network in clear text, and anyone who has the token controls the host");
        }
    }
    let peers = match peer_listener {
        Some(peer_listener) => {
            let peer_addr = peer_listener.local_addr()?;
            if tls.is_none() && !peer_addr.ip().is_loopback() {
                tracing::warn!(%peer_addr, "INSECURE: the peer listener is beyond loopback without TLS (--insecure-plain-tcp): pages and peer tokens cross the network in clear text");
            }
            let scheme = if tls.is_some() { "tmems" } else { "tmem" };
            tracing::info!(%peer_addr, "peer listener: other hosts' remote stores may keep pages here ({scheme}://{peer_addr}/POOL)");
            Some(tokio::spawn(crate::peer::serve_peers(
                host.clone(),
                token.clone(),
                peer_listener,
                config.limits.peer,
                tls.clone(),
                until_stopped(),
            )))
        }
        None => None,
    };
    if access.is_shared() {
        tracing::info!(socket = %socket.display(), users = ?config.socket_users, group = ?config.socket_group, "frontend socket listening (mode 0660, the group's; peers checked with SO_PEERCRED)");
    } else {
        tracing::info!(socket = %socket.display(), "frontend socket listening (mode 0600)");
    }
    let frontend_task = tokio::spawn(crate::frontend::socket::serve_frontends(
        host.clone(),
        token.clone(),
        frontends,
        config.limits.frontend,
        access.clone(),
        until_stopped(),
    ));
    tracing::info!(%addr, "tmem listening: dashboard at {scheme}://{addr}/ (sign in with the API token), API at /api/v1, health at /healthz, metrics at /metrics");
    let router = crate::rest::router(AppState::new(devices.clone()), token.clone());
    // Every pool and device is restored, the declared ones applied, every listener bound (and
    // accepting into its backlog): systemd may start what is ordered after tmem (swap).
    crate::notify::notify_logged(&format!("READY=1\nSTATUS=serving {} pools on {addr}", host.pools().len()));
    serve_http(listener, router, token, config.limits.rest, https, until_stopped()).await;
    if let Some(peers) = peers {
        let _ = peers.await;
    }
    let _ = frontend_task.await;
    // Block devices stop serving; they stay in the catalog and are served again at the next start.
    devices.stop_all();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("tmem stopped");
    Ok(())
}

/// Serves `router` on `listener` within `limits`, over HTTPS when `tls` is given, until
/// `shutdown` completes, then closes every connection gracefully (a request being served is
/// answered first).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    token: ApiToken,
    limits: ListenerLimits,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Gate::new(limits, "an HTTP connection");
    let token = Arc::new(token);
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // A full listener evicts its oldest connection that has not made a request
                    // with the token, or (every one has) closes this one.
                    let Some(admitted) = gate.admit() else { continue };
                    let _ = stream.set_nodelay(true);
                    let (router, token, closed) = (router.clone(), token.clone(), closed.clone());
                    match &tls {
                        None => connections.spawn(serve_http_connection(stream, router, token, admitted, limits, closed)),
                        Some(tls) => connections.spawn(serve_https_connection(stream, tls.clone(), router, token, admitted, limits, closed)),
                    };
                }
                Err(e) => crate::listen::accept_failed(&e, "an HTTP connection").await,
            },
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// Whether `request` presents the API token (`Authorization: Bearer TOKEN`): what makes an
/// HTTP connection established (the REST middleware checks every request on its own).
fn presents_token<B>(request: &axum::http::Request<B>, token: &ApiToken) -> bool {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .is_some_and(|candidate| token.matches(candidate.trim()))
}

/// The body of the `400` a plain HTTP client at the HTTPS listener is answered (then the
/// connection closes): an API error, code `https_required`.
pub const HTTPS_REQUIRED: &str =
    r#"{"error":{"code":"https_required","message":"this listener speaks HTTPS: use an https:// URL"}}"#;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// [`serve_http_connection`] after a TLS handshake: both within the handshake deadline, the
/// connection pending (evictable) meanwhile and closed at once if the listener closes.
async fn serve_https_connection(
    stream: tokio::net::TcpStream,
    tls: Arc<TlsServer>,
    router: axum::Router,
    token: Arc<ApiToken>,
    (ticket, mut evicted): (Ticket, Evicted),
    limits: ListenerLimits,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before its TLS handshake".to_string());
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            let mut stream = stream;
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTTPS_REQUIRED}",
                HTTPS_REQUIRED.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Read what the client sent (its request) until it closes: closing with it unread
            // would reset the connection, and the client might lose the answer.
            let mut sink = [0u8; 4096];
            let mut left = 64usize << 10;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return Err("plain HTTP at the HTTPS listener: answered 400 https_required".to_string());
        }
        tls.accept_async(stream).await.map_err(|e| e.to_string())
    };
    let stream = tokio::select! {
        done = tokio::time::timeout(limits.handshake_timeout, handshake) => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!("HTTPS connection closed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("HTTPS connection closed: no TLS handshake within {:?}", limits.handshake_timeout);
                return;
            }
        },
        () = evicted.wait() => return,
        _ = closing.wait_for(|closing| *closing) => return,
    };
    serve_http_connection(stream, router, token, (ticket, evicted), limits, closing).await;
}

async fn serve_http_connection<S>(
    stream: S,
    router: axum::Router,
    token: Arc<ApiToken>,
    (ticket, mut evicted): (Ticket, Evicted),
    limits: ListenerLimits,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ticket = Arc::new(parking_lot::Mutex::new(ticket));
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        if !ticket.lock().is_established() && presents_token(&request, &token) {
            ticket.lock().establish();
        }
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.handshake_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection closed: {e}");
                }
                return;
            }
            // Dropping the connection closes it.
            () = evicted.wait() => return,
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
