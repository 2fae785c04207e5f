//! TLS for the host's TCP listeners and connections, with OpenSSL: the host's identity
//! (`tmem serve --tls-cert/--tls-key`, an X.509 certificate chain and its key, PEM), the
//! client certificates it asks for (`--tls-client-ca`: clients must present a certificate
//! that CA signed), and pre-shared keys (`--tls-psk`: a psktool file of `username:hexkey` lines, as nbdkit's
//! `--tls-psk`). OpenSSL because it has external PSK (`SSL_CTX_set_psk_server_callback`, TLS
//! 1.2 and 1.3), which rustls has not: libnbd, QEMU and nbdkit all speak TLS-PSK.
//!
//! The client side, [`TlsClient`], is one per process ([`client`]; set by `tmem serve` with
//! [`set_client`] before any pool is restored): what the `network` capability uses for a
//! plugin's connections to `tmems://` and `rediss://` endpoints (`plugin/net.rs`) — it trusts
//! the system's CAs and `--tls-ca`, checks the server's name, and presents the host's own
//! certificate when a server asks for one.
//!
//! [`TlsServer`] is what a listener holds: one context, shared by every connection; a
//! connection's TLS session is made by [`TlsServer::accept`] over its socket. Records are
//! encrypted and decrypted in the connection's OpenSSL buffers, allocated during the handshake
//! and kept (the openssl crate's `SSL_MODE_RELEASE_BUFFERS` is turned off: with it each
//! record took them again). What OpenSSL 3's record layer still allocates itself — a few
//! small blocks per record, freed at once — is counted and bounded by `tests/all/io_path.rs`.
//!
//! # OpenSSL's memory
//!
//! OpenSSL is C: its `malloc`s would not pass through Rust's global allocator, and so not
//! through the I/O path's allocation counters ([`crate::memory::alloc_count`]). Before its
//! first allocation, [`route_allocations`] points OpenSSL's allocator
//! (`CRYPTO_set_mem_functions`) at Rust's, so whatever OpenSSL allocates on an I/O thread is
//! counted like the rest (`tests/all/io_path.rs` measures the NBD path over TLS).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion};

/// A TLS session over a stream `S` (made by [`TlsServer::accept`] or [`TlsClient::connect`]).
pub type TlsStream<S> = SslStream<S>;

/// A TLS session over a tokio stream `S` (made by [`TlsServer::accept_async`]).
pub type AsyncTlsStream<S> = tokio_openssl::SslStream<S>;

/// The files a host's TLS is made of (all `None`: no TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The host's certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) clients' certificates must chain to: with it, a client without
    /// a certificate it signed is refused.
    pub client_ca: Option<PathBuf>,
    /// Pre-shared keys: `username:hexkey` lines (psktool's format).
    pub psk: Option<PathBuf>,
    /// CA certificates (PEM) the host trusts, besides the system's, for the servers it
    /// connects to (`tmems://` peers, `rediss://` Redis).
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file of the server side is given (`ca` is the client side's only).
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.client_ca.is_some() || self.psk.is_some()
    }
}

/// Why the host's TLS cannot be set up, or a connection's TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The files given do not make a usable configuration.
    #[error("{0}")]
    Config(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the PSK file is not `username:hexkey`.
    #[error("{path} line {line}: {why}")]
    Psk {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// OpenSSL refused a file or a setting.
    #[error("{what}: {source}")]
    OpenSsl {
        /// What was being done.
        what: String,
        /// OpenSSL's errors.
        source: openssl::error::ErrorStack,
    },
    /// A connection's TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

/// The longest PSK accepted (bytes): OpenSSL's `PSK_MAX_PSK_LEN`.
const MAX_PSK: usize = 256;

/// Parses a psktool file: one `username:hexkey` per line (blank lines ignored).
pub fn parse_psk_file(path: &Path, text: &str) -> Result<HashMap<String, Vec<u8>>, TlsError> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let err = |why: &str| TlsError::Psk { path: path.to_path_buf(), line: i + 1, why: why.to_string() };
        let (user, hexkey) = line.split_once(':').ok_or_else(|| err("not username:hexkey"))?;
        if user.is_empty() {
            return Err(err("empty username"));
        }
        let key = hex::decode(hexkey.trim()).map_err(|_| err("the key is not hexadecimal"))?;
        if key.is_empty() || key.len() > MAX_PSK {
            return Err(err(&format!("a key must be 1 to {MAX_PSK} bytes")));
        }
        keys.insert(user.to_string(), key);
    }
    if keys.is_empty() {
        return Err(TlsError::Psk { path: path.to_path_buf(), line: 0, why: "no keys".into() });
    }
    Ok(keys)
}

// ----- OpenSSL's allocations through Rust's allocator -----

/// Bytes before each block handed to OpenSSL: its size (for `realloc` and `free`), keeping
/// the block 16-byte aligned as `malloc`'s are.
const HEADER: usize = 16;

unsafe extern "C" {
    // OpenSSL 1.1+: `int CRYPTO_set_mem_functions(m, r, f)`; 0 once OpenSSL has allocated.
    fn CRYPTO_set_mem_functions(
        m: unsafe extern "C" fn(usize, *const std::ffi::c_char, std::ffi::c_int) -> *mut std::ffi::c_void,
        r: unsafe extern "C" fn(
            *mut std::ffi::c_void,
            usize,
            *const std::ffi::c_char,
            std::ffi::c_int,
        ) -> *mut std::ffi::c_void,
        f: unsafe extern "C" fn(*mut std::ffi::c_void, *const std::ffi::c_char, std::ffi::c_int),
    ) -> std::ffi::c_int;
    // `SSL_CTX_clear_mode` is this macro's expansion in ssl.h.
    fn SSL_CTX_ctrl(
        ctx: *mut std::ffi::c_void,
        cmd: std::ffi::c_int,
        larg: std::ffi::c_long,
        parg: *mut std::ffi::c_void,
    ) -> std::ffi::c_long;
}

/// `SSL_CTRL_CLEAR_MODE` (ssl.h).
const SSL_CTRL_CLEAR_MODE: std::ffi::c_int = 78;
/// `SSL_MODE_RELEASE_BUFFERS` (ssl.h).
const SSL_MODE_RELEASE_BUFFERS: std::ffi::c_long = 0x10;

fn layout(size: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

unsafe extern "C" fn ossl_malloc(size: usize, _: *const std::ffi::c_char, _: std::ffi::c_int) -> *mut std::ffi::c_void {
    let Some(layout) = layout(size) else { return std::ptr::null_mut() };
    // SAFETY: `layout` has a nonzero size (HEADER at least).
    let block = unsafe { std::alloc::alloc(layout) };
    if block.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the block has HEADER bytes before what OpenSSL gets, aligned for a usize.
    unsafe {
        (block as *mut usize).write(size);
        block.add(HEADER) as *mut std::ffi::c_void
    }
}

unsafe extern "C" fn ossl_realloc(
    ptr: *mut std::ffi::c_void,
    size: usize,
    file: *const std::ffi::c_char,
    line: std::ffi::c_int,
) -> *mut std::ffi::c_void {
    if ptr.is_null() {
        // SAFETY: as malloc.
        return unsafe { ossl_malloc(size, file, line) };
    }
    let Some(new) = layout(size) else { return std::ptr::null_mut() };
    // SAFETY: `ptr` came from `ossl_malloc`/`ossl_realloc`: its block starts HEADER bytes
    // before it and holds its size there.
    unsafe {
        let block = (ptr as *mut u8).sub(HEADER);
        let old = layout((block as *const usize).read()).expect("a size this allocator stored");
        let block = std::alloc::realloc(block, old, new.size());
        if block.is_null() {
            return std::ptr::null_mut();
        }
        (block as *mut usize).write(size);
        block.add(HEADER) as *mut std::ffi::c_void
    }
}

unsafe extern "C" fn ossl_free(ptr: *mut std::ffi::c_void, _: *const std::ffi::c_char, _: std::ffi::c_int) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: as in `ossl_realloc`.
    unsafe {
        let block = (ptr as *mut u8).sub(HEADER);
        let old = layout((block as *const usize).read()).expect("a size this allocator stored");
        std::alloc::dealloc(block, old);
    }
}

/// Points OpenSSL's allocator at Rust's global allocator (once; before OpenSSL's first
/// allocation, or not at all). `true` when OpenSSL's allocations go through it.
pub fn route_allocations() -> bool {
    static ROUTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROUTED.get_or_init(|| {
        // SAFETY: three functions with OpenSSL's signatures, which pair every block with its
        // own size; OpenSSL refuses (0) once it has allocated with others.
        unsafe { CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free) == 1 }
    })
}

/// The server side of the host's TLS: one context every connection of every listener shares.
pub struct TlsServer {
    acceptor: SslAcceptor,
    /// What it offers, for logs: `x509`, `psk` or `x509+psk`, and client certificates.
    summary: String,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").field("summary", &self.summary).finish()
    }
}

fn openssl(what: impl Into<String>) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError {
    let what = what.into();
    move |source| TlsError::OpenSsl { what, source }
}

impl TlsServer {
    /// The server made of `files`; `None` when no file is given. A certificate needs its key
    /// (and the reverse); `ca` needs a certificate; at least a certificate or a PSK file.
    pub fn load(files: &TlsFiles) -> Result<Option<Arc<TlsServer>>, TlsError> {
        if !files.is_set() {
            return Ok(None);
        }
        if !route_allocations() {
            tracing::warn!("OpenSSL allocated before tmem could route its allocations: they are not counted");
        }
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(openssl("cannot create a TLS context"))?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(openssl("TLS versions"))?;
        // The openssl crate turns on SSL_MODE_RELEASE_BUFFERS, which frees a connection's
        // record buffers whenever they are empty and allocates them again on the next record
        // (7 allocations, 42 KB, per NBD request): a connection keeps its buffers instead.
        // SAFETY: SSL_CTX_clear_mode on the context the builder owns.
        unsafe {
            SSL_CTX_ctrl(builder.as_ptr().cast(), SSL_CTRL_CLEAR_MODE, SSL_MODE_RELEASE_BUFFERS, std::ptr::null_mut())
        };
        let mut offers = Vec::new();
        match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                builder
                    .set_certificate_chain_file(cert)
                    .map_err(openssl(format!("cannot load the certificate {}", cert.display())))?;
                builder
                    .set_private_key_file(key, SslFiletype::PEM)
                    .map_err(openssl(format!("cannot load the private key {}", key.display())))?;
                builder.check_private_key().map_err(openssl("the private key does not match the certificate"))?;
                offers.push("x509");
            }
            (None, None) => {}
            _ => return Err(TlsError::Config("--tls-cert and --tls-key go together".into())),
        }
        if let Some(ca) = &files.client_ca {
            if files.cert.is_none() {
                return Err(TlsError::Config(
                    "--tls-client-ca (client certificates) needs --tls-cert and --tls-key".into(),
                ));
            }
            builder.set_ca_file(ca).map_err(openssl(format!("cannot load the CA certificates {}", ca.display())))?;
            builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            offers.push("client certificates required");
        }
        if let Some(path) = &files.psk {
            let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.clone(), source })?;
            let keys = parse_psk_file(path, &text)?;
            // TLS 1.2 PSK needs PSK cipher suites (the intermediate list has none), preferred
            // to certificate ones: only a client with a key offers them, and a client with a
            // key may have no certificate to check ours with. (TLS 1.3 uses its usual suites.)
            let ciphers = "ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:\
                           PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM";
            builder.set_cipher_list(ciphers).map_err(openssl("PSK cipher suites"))?;
            builder.set_options(openssl::ssl::SslOptions::CIPHER_SERVER_PREFERENCE);
            builder.set_psk_server_callback(move |_ssl, identity, out| {
                let Some(key) = identity.and_then(|id| std::str::from_utf8(id).ok()).and_then(|id| keys.get(id)) else {
                    // An unknown identity: no key, the handshake fails.
                    return Ok(0);
                };
                if key.len() > out.len() {
                    return Ok(0);
                }
                out[..key.len()].copy_from_slice(key);
                Ok(key.len())
            });
            offers.push("psk");
        }
        if files.cert.is_none() && files.psk.is_none() {
            return Err(TlsError::Config("TLS needs --tls-cert and --tls-key, or --tls-psk".into()));
        }
        Ok(Some(Arc::new(TlsServer { acceptor: builder.build(), summary: offers.join(", ") })))
    }

    /// What it offers, for logs.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Runs the server side of a TLS handshake over a tokio `stream` (the caller bounds it).
    pub async fn accept_async<S>(&self, stream: S) -> Result<AsyncTlsStream<S>, TlsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let handshake = |e: &dyn std::fmt::Display| TlsError::Handshake(e.to_string());
        let ssl = Ssl::new(self.acceptor.context()).map_err(|e| handshake(&e))?;
        let mut stream = tokio_openssl::SslStream::new(ssl, stream).map_err(|e| handshake(&e))?;
        std::pin::Pin::new(&mut stream).accept().await.map_err(|e| handshake(&e))?;
        Ok(stream)
    }

    /// Runs the server side of a TLS handshake over `stream` (its deadline is the socket's
    /// timeouts, set by the caller).
    pub fn accept<S: Read + Write>(&self, stream: S) -> Result<SslStream<S>, TlsError> {
        use openssl::ssl::HandshakeError;
        self.acceptor.accept(stream).map_err(|e| match e {
            HandshakeError::SetupFailure(e) => TlsError::Handshake(e.to_string()),
            HandshakeError::Failure(m) | HandshakeError::WouldBlock(m) => TlsError::Handshake(m.error().to_string()),
        })
    }
}

// ----- the client side -----

/// The host's TLS client: what its outgoing connections trust and present.
pub struct TlsClient {
    connector: SslConnector,
    /// Remote stores may reach plain `tmem://` and `redis://` endpoints beyond loopback
    /// (`tmem serve --insecure-plain-tcp`).
    allow_plain_remote: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("allow_plain_remote", &self.allow_plain_remote).finish()
    }
}

static CLIENT: std::sync::OnceLock<Arc<TlsClient>> = std::sync::OnceLock::new();

impl TlsClient {
    /// The client of `files`: the system's CAs and `files.ca` trusted, `files.cert`/`key`
    /// presented when a server asks for a certificate.
    pub fn new(files: &TlsFiles, allow_plain_remote: bool) -> Result<TlsClient, TlsError> {
        route_allocations();
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(openssl("cannot create a TLS client context"))?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(openssl("TLS versions"))?;
        if let Some(ca) = &files.ca {
            builder.set_ca_file(ca).map_err(openssl(format!("cannot load the CA certificates {}", ca.display())))?;
        }
        if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
            builder
                .set_certificate_chain_file(cert)
                .map_err(openssl(format!("cannot load the certificate {}", cert.display())))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(openssl(format!("cannot load the private key {}", key.display())))?;
        }
        // SAFETY: as in `TlsServer::load`.
        unsafe {
            SSL_CTX_ctrl(builder.as_ptr().cast(), SSL_CTRL_CLEAR_MODE, SSL_MODE_RELEASE_BUFFERS, std::ptr::null_mut())
        };
        Ok(TlsClient { connector: builder.build(), allow_plain_remote })
    }

    /// Runs the client side of a TLS handshake with `host` (a name or an IP address, which
    /// the server's certificate must name) over `stream` (its deadline is the socket's
    /// timeouts, set by the caller).
    pub fn connect<S: Read + Write>(&self, host: &str, stream: S) -> Result<TlsStream<S>, TlsError> {
        use openssl::ssl::HandshakeError;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.connector.connect(host, stream).map_err(|e| match e {
            HandshakeError::SetupFailure(e) => TlsError::Handshake(e.to_string()),
            HandshakeError::Failure(m) | HandshakeError::WouldBlock(m) => {
                let verify = m.ssl().verify_result();
                if verify == openssl::x509::X509VerifyResult::OK {
                    TlsError::Handshake(m.error().to_string())
                } else {
                    TlsError::Handshake(format!("the server's certificate: {verify}"))
                }
            }
        })
    }

    /// Whether plain endpoints beyond loopback are allowed.
    pub fn allows_plain_remote(&self) -> bool {
        self.allow_plain_remote
    }
}

// ----- HTTPS for the REST client -----

/// The connector of a REST client ([`tmem_api::client::Client::with_connector`]) that speaks
/// `https://` through a [`TlsClient`] (the system's CAs and its `--tls-ca`, the server's name
/// checked) and `http://` as plain TCP: ureq's own TCP and CONNECT-proxy steps, then OpenSSL
/// for `https://` URLs. The `tmem` CLI's only TLS, so OpenSSL stays the one TLS library of
/// the binary (ureq's rustls and native-tls features stay off).
///
/// It is built on ureq's `unversioned` transport API (not covered by ureq's semver
/// promises): an update of ureq that changes it fails to compile here, nowhere else.
pub fn https_connector(client: Arc<TlsClient>) -> impl ureq::unversioned::transport::Connector {
    use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};
    ().chain(ConnectProxyConnector::default()).chain(TcpConnector::default()).chain(HttpsConnector { client })
}

/// The TLS step of [`https_connector`].
struct HttpsConnector {
    client: Arc<TlsClient>,
}

impl std::fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConnector").finish_non_exhaustive()
    }
}

/// ureq's transport below TLS, as a `Read + Write` stream.
type Adapter = ureq::unversioned::transport::TransportAdapter<Box<dyn ureq::unversioned::transport::Transport>>;

impl<In: ureq::unversioned::transport::Transport> ureq::unversioned::transport::Connector<In> for HttpsConnector {
    type Out = ureq::unversioned::transport::Either<In, HttpsTransport>;

    fn connect(
        &self,
        details: &ureq::unversioned::transport::ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        use ureq::unversioned::transport::{Either, LazyBuffers};
        let Some(transport) = chained else { return Ok(None) };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().ok_or(ureq::Error::Tls("an https URL without a host"))?;
        let mut adapter = Adapter::new(transport.boxed(), details.current_time.clone());
        adapter.set_timeout(details.timeout);
        let stream =
            self.client.connect(host, adapter).map_err(|e| ureq::Error::Io(std::io::Error::other(e.to_string())))?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(HttpsTransport { buffers, stream })))
    }
}

/// A TLS session of [`HttpsConnector`], as ureq's transport.
struct HttpsTransport {
    buffers: ureq::unversioned::transport::LazyBuffers,
    stream: SslStream<Adapter>,
}

impl std::fmt::Debug for HttpsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTransport").finish_non_exhaustive()
    }
}

impl ureq::unversioned::transport::Transport for HttpsTransport {
    fn buffers(&mut self) -> &mut dyn ureq::unversioned::transport::Buffers {
        &mut self.buffers
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<(), ureq::Error> {
        use ureq::unversioned::transport::Buffers;
        self.stream.get_mut().set_timeout(timeout);
        self.stream.write_all(&self.buffers.output()[..amount])?;
        Ok(())
    }

    fn await_input(&mut self, timeout: ureq::unversioned::transport::NextTimeout) -> Result<bool, ureq::Error> {
        use ureq::unversioned::transport::Buffers;
        self.stream.get_mut().set_timeout(timeout);
        let amount = self.stream.read(self.buffers.input_append_buf())?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// Sets the process's TLS client ([`client`]); the first call wins (`false` after).
pub fn set_client(client: TlsClient) -> bool {
    CLIENT.set(Arc::new(client)).is_ok()
}

/// The process's TLS client: what [`set_client`] set, else one that trusts the system's CAs,
/// presents no certificate and allows no plain endpoint beyond loopback.
pub fn client() -> Result<Arc<TlsClient>, TlsError> {
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = TlsClient::new(&TlsFiles::default(), false)?;
    Ok(CLIENT.get_or_init(|| Arc::new(client)).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_parse_as_psktool_writes_them() {
        let path = Path::new("keys.psk");
        let keys = parse_psk_file(path, "alice:00112233\n\nbob:ff\n").unwrap();
        assert_eq!(keys["alice"], vec![0, 0x11, 0x22, 0x33]);
        assert_eq!(keys["bob"], vec![0xff]);
        for bad in ["alice", ":00", "alice:zz", "alice:", ""] {
            assert!(parse_psk_file(path, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_files_no_tls_and_half_configs_are_refused() {
        assert!(TlsServer::load(&TlsFiles::default()).unwrap().is_none());
        let cert_only = TlsFiles { cert: Some("c.pem".into()), ..Default::default() };
        assert!(matches!(TlsServer::load(&cert_only), Err(TlsError::Config(_))));
    }
}
