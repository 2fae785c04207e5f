//! The `network` capability's host side: TCP connections a store plugin may open, to exactly
//! the endpoints its pool granted, every operation bounded by the grant's timeout and by the
//! plugin call's own deadline (so a dead peer costs at most the timeout, and never traps the
//! instance by overrunning its deadline while the host waits).
//!
//! The grant ([`NetPolicy`]) is derived when the pool is created from the plugin's config:
//! `endpoints` (URLs `scheme://host:port[,host:port…][/path]`; every `host:port` is granted)
//! and `timeout_ms`. A connect to any other address is refused with `net::DENIED` — compared
//! as text, so a plugin cannot reach an address by another spelling or through DNS games.
//!
//! # TLS
//!
//! An endpoint of a TLS scheme (`tmems://`, `rediss://`, `rediss-cluster://`) grants
//! its addresses *over TLS only*: the host makes the TLS session itself when the plugin
//! connects ([`crate::tls::client`]: the system's CAs and `tmem serve --tls-ca`, the server's
//! name checked), and the plugin reads and writes clear bytes through it — it never sees a
//! key and cannot send around the session. An address listed both ways gets TLS. A plain
//! endpoint (`tmem://`, `redis://`) beyond loopback is refused unless the host runs with
//! `--insecure-plain-tcp`: pages and credentials do not cross a network in clear text.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tmem_api::abi::net as code;

use crate::tls::{TlsClient, TlsStream};

/// The default of `timeout_ms` when a plugin's config has none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest `timeout_ms` a grant may set.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// What a pool grants a plugin with the `network` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    /// `host:port` texts the plugin may connect to.
    pub allowed: Vec<String>,
    /// Those of them reached over TLS only.
    pub tls: Vec<String>,
    /// Bound of every connect, send and receive.
    pub timeout: Duration,
}

/// Why a network grant could not be derived from a plugin's config (the client's mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// The config has no `endpoints` list.
    #[error("plugin '{0}' has the network capability but no `endpoints` config key listing what it may reach")]
    NoEndpointsKey(String),
    /// An endpoint is not `scheme://...`.
    #[error("endpoint {url:?} of plugin '{plugin}' is not a URL (scheme://host:port[/path])")]
    NotAUrl {
        /// The plugin.
        plugin: String,
        /// The endpoint as given.
        url: String,
    },
    /// An endpoint's authority has an address that is not `host:port`.
    #[error("endpoint {url:?} of plugin '{plugin}': {address:?} is not host:port")]
    NotHostPort {
        /// The plugin.
        plugin: String,
        /// The endpoint as given.
        url: String,
        /// The address in it.
        address: String,
    },
    /// `endpoints` is empty.
    #[error("plugin '{0}' needs at least one endpoint in `endpoints`")]
    NoEndpoints(String),
    /// `timeout_ms` is not a number from 1 to [`MAX_TIMEOUT_MS`].
    #[error("plugin '{0}': timeout_ms must be from 1 to 60000")]
    BadTimeout(String),
    /// A plain endpoint beyond loopback, on a host that does not allow it.
    #[error(
        "endpoint {url:?} of plugin '{plugin}' is plain text beyond loopback: use TLS (tmems://, rediss://, \
         rediss-cluster://), or start `tmem serve` with --insecure-plain-tcp to send pages and credentials in clear"
    )]
    PlainRemote {
        /// The plugin.
        plugin: String,
        /// The endpoint as given.
        url: String,
    },
    /// The host's TLS client could not be set up.
    #[error("plugin '{plugin}': TLS: {message}")]
    Tls {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// The schemes whose endpoints are reached over TLS only.
const TLS_SCHEMES: [&str; 3] = ["tmems", "rediss", "rediss-cluster"];

/// Whether `host` (of `host:port`) is a loopback address or `localhost`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl NetPolicy {
    /// The grant a plugin's resolved config asks for: every `host:port` of its `endpoints`.
    pub fn from_config(plugin: &str, config: &Map<String, Value>) -> Result<NetPolicy, NetConfigError> {
        let endpoints = config
            .get("endpoints")
            .and_then(Value::as_array)
            .ok_or_else(|| NetConfigError::NoEndpointsKey(plugin.into()))?;
        let mut allowed = Vec::new();
        let mut tls = Vec::new();
        let mut plain_remote = None;
        for endpoint in endpoints {
            let url = endpoint.as_str().unwrap_or_default();
            let (scheme, rest) = url
                .split_once("://")
                .ok_or_else(|| NetConfigError::NotAUrl { plugin: plugin.into(), url: url.into() })?;
            let secure = TLS_SCHEMES.contains(&scheme);
            let authority = rest.split('/').next().unwrap_or_default();
            for address in authority.split(',') {
                let port_ok = address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(NetConfigError::NotHostPort {
                        plugin: plugin.into(),
                        url: url.into(),
                        address: address.into(),
                    });
                }
                if !allowed.iter().any(|a| a == address) {
                    allowed.push(address.to_string());
                }
                if secure && !tls.iter().any(|a| a == address) {
                    tls.push(address.to_string());
                }
                if !secure && !address.rsplit_once(':').is_some_and(|(host, _)| is_loopback(host)) {
                    plain_remote.get_or_insert_with(|| url.to_string());
                }
            }
        }
        if allowed.is_empty() {
            return Err(NetConfigError::NoEndpoints(plugin.into()));
        }
        let timeout = match config.get("timeout_ms") {
            Some(ms) => Duration::from_millis(
                ms.as_u64()
                    .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                    .ok_or_else(|| NetConfigError::BadTimeout(plugin.into()))?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        if let Some(url) = plain_remote {
            let client = crate::tls::client()
                .map_err(|e| NetConfigError::Tls { plugin: plugin.into(), message: e.to_string() })?;
            if !client.allows_plain_remote() {
                return Err(NetConfigError::PlainRemote { plugin: plugin.into(), url });
            }
        }
        Ok(NetPolicy { allowed, tls, timeout })
    }
}

/// One connection: a socket, or a TLS session over one.
#[derive(Debug)]
enum Connection {
    Plain(TcpStream),
    Tls(TlsStream<TcpStream>),
}

impl Connection {
    fn socket(&self) -> &TcpStream {
        match self {
            Connection::Plain(s) => s,
            Connection::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(s) => s.read(buf),
            Connection::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(s) => s.write(buf),
            Connection::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Plain(s) => s.flush(),
            Connection::Tls(s) => s.flush(),
        }
    }
}

/// The connections of one instance, and the deadline of its current call.
#[derive(Debug)]
pub(crate) struct NetAccess {
    policy: NetPolicy,
    connections: Vec<Option<Connection>>,
    /// When the current plugin call must be over (set as each call starts).
    pub(crate) deadline: Instant,
}

fn failure(e: &std::io::Error) -> i32 {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => code::TIMEOUT,
        _ => code::FAILED,
    }
}

impl NetAccess {
    pub(crate) fn new(policy: NetPolicy, deadline: Instant) -> Self {
        NetAccess { policy, connections: Vec::new(), deadline }
    }

    /// Time left for one operation: the grant's timeout, cut to what the call has left
    /// (minus a margin, so the plugin can still answer before its deadline).
    fn budget(&self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?.checked_sub(Duration::from_millis(2))?;
        let budget = left.min(self.policy.timeout);
        (!budget.is_zero()).then_some(budget)
    }

    /// Resolves `address` within `budget`: an IP literal at once, a name on a helper thread
    /// (the system resolver has no timeout of its own), abandoned when the budget is over.
    fn resolve(address: &str, budget: Duration) -> Result<SocketAddr, i32> {
        if let Ok(socket) = address.parse::<SocketAddr>() {
            return Ok(socket);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let name = address.to_string();
        std::thread::Builder::new()
            .name("tmem-resolve".into())
            .spawn(move || {
                let _ = tx.send(name.to_socket_addrs().ok().and_then(|mut a| a.next()));
            })
            .map_err(|_| code::FAILED)?;
        match rx.recv_timeout(budget) {
            Ok(Some(socket)) => Ok(socket),
            Ok(None) => Err(code::FAILED),
            Err(_) => Err(code::TIMEOUT),
        }
    }

    pub(crate) fn connect(&mut self, address: &str) -> i32 {
        if !self.policy.allowed.iter().any(|a| a == address) {
            tracing::warn!(address, "a plugin tried to reach an address its pool did not grant");
            return code::DENIED;
        }
        let open = self.connections.iter().filter(|c| c.is_some()).count();
        if open >= code::MAX_CONNECTIONS {
            return code::TOO_MANY;
        }
        let Some(budget) = self.budget() else { return code::TIMEOUT };
        let socket = match Self::resolve(address, budget) {
            Ok(socket) => socket,
            Err(code) => return code,
        };
        // The connect gets what the resolution left.
        let Some(budget) = self.budget() else { return code::TIMEOUT };
        let stream = match TcpStream::connect_timeout(&socket, budget) {
            Ok(stream) => stream,
            Err(e) => return failure(&e),
        };
        let _ = stream.set_nodelay(true);
        let stream = if self.policy.tls.iter().any(|a| a == address) {
            match self.tls_session(address, stream) {
                Ok(session) => Connection::Tls(session),
                Err(code) => return code,
            }
        } else {
            Connection::Plain(stream)
        };
        let slot = match self.connections.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.connections.push(None);
                self.connections.len() - 1
            }
        };
        self.connections[slot] = Some(stream);
        slot as i32
    }

    /// The TLS session of a connection to `address`, its handshake within the budget.
    fn tls_session(&self, address: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>, i32> {
        let budget = self.budget().ok_or(code::TIMEOUT)?;
        stream.set_read_timeout(Some(budget)).map_err(|e| failure(&e))?;
        stream.set_write_timeout(Some(budget)).map_err(|e| failure(&e))?;
        let client: std::sync::Arc<TlsClient> = crate::tls::client().map_err(|e| {
            tracing::warn!(address, "no TLS client: {e}");
            code::FAILED
        })?;
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        client.connect(host, stream).map_err(|e| {
            tracing::warn!(address, "a plugin's TLS connection failed: {e}");
            code::FAILED
        })
    }

    fn stream(&mut self, handle: i32) -> Result<(&mut Connection, Duration), i32> {
        let budget = self.budget().ok_or(code::TIMEOUT)?;
        let stream = usize::try_from(handle)
            .ok()
            .and_then(|h| self.connections.get_mut(h))
            .and_then(Option::as_mut)
            .ok_or(code::BAD_HANDLE)?;
        Ok((stream, budget))
    }

    /// Sends all of `bytes`, all within the budget (a peer that reads slowly cannot stretch
    /// it: every write gets only what is left); a connection that fails is closed.
    pub(crate) fn send(&mut self, handle: i32, bytes: &[u8]) -> i32 {
        let mut sent = 0;
        let result = loop {
            if sent == bytes.len() {
                break Ok(());
            }
            let written = self.stream(handle).and_then(|(stream, budget)| {
                stream.socket().set_write_timeout(Some(budget)).map_err(|e| failure(&e))?;
                match stream.write(&bytes[sent..]) {
                    Ok(0) => Err(code::FAILED),
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
                    Err(e) => Err(failure(&e)),
                }
            });
            match written {
                Ok(n) => sent += n,
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => bytes.len() as i32,
            Err(e) => self.broken(handle, e),
        }
    }

    /// Receives 1 to `buf.len()` bytes (0: the peer closed).
    pub(crate) fn recv(&mut self, handle: i32, buf: &mut [u8]) -> i32 {
        let result = self.stream(handle).and_then(|(stream, budget)| {
            stream.socket().set_read_timeout(Some(budget)).map_err(|e| failure(&e))?;
            stream.read(buf).map_err(|e| failure(&e))
        });
        match result {
            Ok(n) => n as i32,
            Err(e) => self.broken(handle, e),
        }
    }

    fn broken(&mut self, handle: i32, error: i32) -> i32 {
        if error != code::BAD_HANDLE {
            self.close(handle);
        }
        error
    }

    pub(crate) fn close(&mut self, handle: i32) {
        if let Some(slot) = usize::try_from(handle).ok().and_then(|h| self.connections.get_mut(h)) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(config: Value) -> Result<NetPolicy, String> {
        NetPolicy::from_config("remote", config.as_object().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn grants_come_from_the_endpoint_urls() {
        let p = policy(json!({"endpoints": ["tmem://127.0.0.1:7001/b", "rediss-cluster://10.0.0.1:7000,10.0.0.2:7000/ns"], "timeout_ms": 250})).unwrap();
        assert_eq!(p.allowed, ["127.0.0.1:7001", "10.0.0.1:7000", "10.0.0.2:7000"]);
        assert_eq!(p.tls, ["10.0.0.1:7000", "10.0.0.2:7000"], "rediss-cluster:// is TLS, tmem:// is not");
        // Plain beyond loopback: refused (this process's TLS client allows no plain remote).
        let plain = policy(json!({"endpoints": ["tmem://10.0.0.1:7001/b"]})).unwrap_err();
        assert!(plain.contains("--insecure-plain-tcp"), "{plain}");
        assert!(
            policy(json!({"endpoints": ["redis://localhost:6379/n", "tmem://[::1]:7001/b"]})).unwrap().tls.is_empty()
        );
        assert!(policy(json!({"endpoints": ["redis://10.0.0.1:6379/n"]})).is_err());
        assert_eq!(p.timeout, Duration::from_millis(250));
        assert!(policy(json!({"endpoints": []})).unwrap_err().contains("at least one"));
        assert!(policy(json!({"endpoints": ["127.0.0.1:7001"]})).unwrap_err().contains("not a URL"));
        assert!(policy(json!({"endpoints": ["redis://nohost/x"]})).unwrap_err().contains("not host:port"));
        assert!(policy(json!({})).unwrap_err().contains("no `endpoints`"));
    }

    #[test]
    fn only_granted_addresses_are_reached_and_time_is_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let granted = listener.local_addr().unwrap().to_string();
        let p = NetPolicy { allowed: vec![granted.clone()], tls: vec![], timeout: Duration::from_millis(100) };
        let mut net = NetAccess::new(p, Instant::now() + Duration::from_secs(5));
        assert_eq!(net.connect("127.0.0.1:1"), code::DENIED);
        assert_eq!(
            net.connect(&format!("localhost:{}", listener.local_addr().unwrap().port())),
            code::DENIED,
            "another spelling is another address"
        );
        let handle = net.connect(&granted);
        assert!(handle >= 0);
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(net.send(handle, b"ping"), 4);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // Nothing to read: the receive gives up after the grant's timeout, not never.
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(net.recv(handle, &mut buf), code::TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(net.recv(handle, &mut buf), code::BAD_HANDLE, "a timed-out connection is closed");
        // The call's deadline cuts every budget.
        net.deadline = Instant::now();
        assert_eq!(net.connect(&granted), code::TIMEOUT);
    }

    #[test]
    fn a_peer_that_reads_slowly_cannot_stretch_a_send_past_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let granted = listener.local_addr().unwrap().to_string();
        // Every write alone would fit the grant's 10 s timeout: only the call's deadline
        // (0.5 s) can end the whole send.
        let p = NetPolicy { allowed: vec![granted.clone()], tls: vec![], timeout: Duration::from_secs(10) };
        let mut net = NetAccess::new(p, Instant::now() + Duration::from_secs(5));
        let handle = net.connect(&granted);
        let (mut peer, _) = listener.accept().unwrap();
        let trickle = std::thread::spawn(move || {
            // 64 KiB every 50 ms: 16 MiB would take 13 s.
            let mut buf = vec![0u8; 64 << 10];
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end {
                match peer.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        net.deadline = Instant::now() + Duration::from_millis(500);
        let started = Instant::now();
        assert_eq!(net.send(handle, &vec![7u8; 16 << 20]), code::TIMEOUT);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "the send took {took:?} for a 0.5 s deadline");
        trickle.join().unwrap();
    }

    #[test]
    fn a_name_resolves_within_the_budget_or_not_at_all() {
        // Whatever the resolver does with a name (answer, fail, or hang on an unreachable
        // server), the connect's resolution returns within its budget.
        let started = Instant::now();
        let result = NetAccess::resolve("tmem-test-name.invalid:7001", Duration::from_millis(200));
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "resolution took {:?}", started.elapsed());
        assert_eq!(NetAccess::resolve("127.0.0.1:7001", Duration::ZERO), Ok("127.0.0.1:7001".parse().unwrap()));
    }
}
