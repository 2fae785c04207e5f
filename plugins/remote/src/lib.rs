//! `remote`, the bundled remote store: pages kept in another machine's memory — tmem memory
//! servers (RAMster-style, over the peer protocol of [`tmem_api::peer`]), one Redis/Valkey
//! server, or a Redis Cluster.
//!
//! The store keeps the bytes its chain's filters produced (e.g. zstd-compressed pages) on the
//! remote side, under the page's offset. Nothing is kept in the plugin's memory or in the host
//! page store, so a trapped instance loses nothing either: the next instance reconnects.
//!
//! # Grant
//!
//! The plugin needs the `network` capability, and the pool's config lists where it may go:
//!
//! ```json
//! {"plugin": "remote", "grants": ["network"],
//!  "config": {"endpoints": ["tmem://10.0.0.2:7070/swap-a"], "timeout_ms": 200, "token": "..."}}
//! ```
//!
//! The host lets the plugin connect to exactly the `HOST:PORT` texts in `endpoints` (compared
//! as text), and bounds every connect, send and receive by `timeout_ms`.
//!
//! # Config
//!
//! - `endpoints` — URLs, all of one kind:
//!   - `tmem://HOST:PORT/POOL` — a pool (a chain of one store, e.g. `[ram]`) on a tmem memory
//!     server (`tmem serve --peer-listen`). Several such URLs are **replicas**: a put goes to
//!     every one and is acknowledged only when all confirmed; a get is served by the first
//!     replica that answers with the page; delete and clear go to all.
//!   - `redis://HOST:PORT/NAMESPACE` — one Redis or Valkey server. Pages are the keys
//!     `tmem:NAMESPACE:OFFSET` (`SET`, `GET`, `DEL`; clear is `SCAN MATCH tmem:NAMESPACE:*`
//!     plus `UNLINK`). Give every pool its own namespace.
//!   - `redis-cluster://HOST:PORT,HOST:PORT,.../NAMESPACE` — a Redis Cluster. **List every
//!     node**: the plugin may only reach listed addresses, so a master that is not listed
//!     (or a redirect to one) makes its slots unavailable. The slot map comes from
//!     `CLUSTER SLOTS` at the first use; keys carry no hash tag, so pages spread over all
//!     masters; `MOVED` updates the map (at most 5 redirects per command), `ASK` is followed
//!     once with `ASKING`; the map is asked for again after a node fails (and, while no listed
//!     node answers, at most once per 64 operations). If the cluster
//!     announces its nodes under other addresses than the URL (NAT, hostnames), listed nodes
//!     are matched by their node ids (`CLUSTER MYID`).
//!
//!   `tmems://`, `rediss://` and `rediss-cluster://` are the same over **TLS**, which the host
//!   makes itself when the plugin connects (the plugin sees clear bytes, never a key): the
//!   server's certificate must chain to the system's CAs or `tmem serve --tls-ca` and name
//!   the host as written. A plain URL beyond loopback is refused by the host unless it runs
//!   with `--insecure-plain-tcp`.
//!
//!   An empty list, a URL without pool or namespace, tmem and Redis URLs mixed, or more than
//!   one Redis URL is refused when the pool is created.
//! - `timeout_ms` — 1 to 60000, default 200: the bound of every network operation (enforced
//!   by the host).
//! - `token` — secret: a peer token of the pool on the peer host (tmem://; `tmem token create
//!   POOL --scope peer` there) or the Redis password
//!   (`AUTH`); empty for none.
//!
//! # Failure semantics
//!
//! A refused store is cheap (the frontend writes the page to its own swap device instead); a
//! store that waits for a dead backend is not. So every endpoint (replica, Redis server,
//! cluster node) has a **circuit breaker**: after a failure — a network error, a timeout, a
//! protocol error or an unexpected answer — its connection is dropped and the next 64 stores
//! to it are refused with `Unavailable` without touching the network; then one store tries
//! again. The breaker counts *operations*, not time, because a plugin has no clock (the
//! sandbox has none). A load or delete that succeeds on the endpoint closes its breaker at
//! once; loads and deletes are never skipped (a load is owed its page), they make one attempt.
//!
//! - put: `Unavailable` if the backend cannot be reached (or any replica's breaker is open);
//!   `AllocFail` if it refuses the page (a peer host's `REJECTED`, Redis `OOM`). A put
//!   that only some replicas took is refused and deleted from those (best effort).
//! - get: `NotFound` if the backend answers that it has nothing (every replica, for
//!   replicas); `Unavailable` if it cannot be reached, or answers with more bytes than a
//!   record can have. A wrong page is never returned: every response is checked for its kind
//!   and request id (peer protocol) and read in order on its own connection (Redis).
//! - delete, clear: one attempt each; a failure only trips the breaker (the host's map is the
//!   authority, so a leftover copy is never read: a later store overwrites it).

/// Why an exchange with a remote (a peer host or Redis) failed; the connection is
/// dropped (and, for stores, the endpoint's breaker tripped).
#[derive(Debug)]
pub enum Fail {
    /// The network operation failed.
    Net(tmem_sdk::net::NetError),
    /// The server said something this client does not accept (or a frame could not be built).
    Protocol(String),
}

impl From<tmem_sdk::net::NetError> for Fail {
    fn from(e: tmem_sdk::net::NetError) -> Fail {
        Fail::Net(e)
    }
}

impl From<tmem_api::wire::WireError> for Fail {
    fn from(e: tmem_api::wire::WireError) -> Fail {
        Fail::Protocol(e.to_string())
    }
}

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Fail::Net(e) => write!(f, "{e}"),
            Fail::Protocol(m) => write!(f, "{m}"),
        }
    }
}

mod breaker;
mod peer;
mod redis;
mod resp;
mod slot;
mod url;

#[cfg(test)]
mod tests;

use serde::Deserialize;
use tmem_sdk::{Capability, ConfigKey, GetError, Reject, Store, config};

use url::{Target, parse_endpoints};

/// The remote store.
pub struct Remote {
    backend: Backend,
}

enum Backend {
    Peers(peer::Peers),
    Redis(redis::Redis),
}

/// The plugin's config (see the crate docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `tmem://`, `redis://` or `redis-cluster://` URLs.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The bound of every network operation; the host enforces it.
    #[serde(default = "default_timeout")]
    pub timeout_ms: i64,
    /// A peer token of the pool on the peer host, or the Redis password; empty for none.
    #[serde(default)]
    pub token: String,
}

fn default_timeout() -> i64 {
    200
}

impl Store for Remote {
    const NAME: &'static str = "remote";
    const DESCRIPTION: &'static str = "pages kept on other machines: tmem peer hosts (replicated), Redis/Valkey or a Redis Cluster (needs the network grant)";
    const CONFIG: &'static [ConfigKey] = &[
        config::string_list(
            "endpoints",
            "where pages go: tmem://HOST:PORT/POOL (one or more replicas), or one redis://HOST:PORT/NAMESPACE, \
             or one redis-cluster://HOST:PORT,HOST:PORT,.../NAMESPACE listing every node",
        ),
        config::integer("timeout_ms", "bound of every connect, send and receive, in milliseconds", 1, 60000, 200),
        config::secret(
            "token",
            "a peer token of the pool on the peer host (tmem://) or the Redis password (AUTH); empty for none",
        ),
    ];
    const CAPABILITIES: &'static [Capability] = &[Capability::Network];
    type Config = RemoteConfig;

    fn new(config: RemoteConfig, page_size: usize) -> Result<Self, String> {
        if !(1..=60000).contains(&config.timeout_ms) {
            return Err(format!("timeout_ms must be from 1 to 60000, got {}", config.timeout_ms));
        }
        let backend = match parse_endpoints(&config.endpoints)? {
            Target::Peers(urls) => Backend::Peers(peer::Peers::new(urls, config.token, page_size)),
            Target::Redis { addr, namespace } => {
                Backend::Redis(redis::Redis::single(addr, namespace, config.token, page_size))
            }
            Target::Cluster { addrs, namespace } => {
                Backend::Redis(redis::Redis::cluster(addrs, namespace, config.token, page_size))
            }
        };
        Ok(Remote { backend })
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        match &mut self.backend {
            Backend::Peers(p) => p.put(offset, data),
            Backend::Redis(r) => r.put(offset, data),
        }
    }

    fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        match &mut self.backend {
            Backend::Peers(p) => p.get(offset, out),
            Backend::Redis(r) => r.get(offset, out),
        }
    }

    fn delete(&mut self, offset: u64) {
        match &mut self.backend {
            Backend::Peers(p) => p.delete(offset),
            Backend::Redis(r) => r.delete(offset),
        }
    }

    fn clear(&mut self) {
        match &mut self.backend {
            Backend::Peers(p) => p.clear(),
            Backend::Redis(r) => r.clear(),
        }
    }
}

tmem_sdk::export_store!(Remote);

#[cfg(test)]
impl Remote {
    fn test_redis(&mut self) -> &mut redis::Redis {
        match &mut self.backend {
            Backend::Redis(r) => r,
            Backend::Peers(_) => panic!("not a Redis backend"),
        }
    }
}
