//! The tmem host: the frontswap contract for named pools, with each pool's backend chain run
//! as sandboxed WebAssembly plugins.
//!
//! # Layout
//!
//! - [`host`] — [`Host`]: the plugin registry and the named pools; the library entry point.
//! - [`pool`] — [`Pool`]: one frontswap area; the contract (duplicate-store rule, exclusive
//!   gets, writethrough, limits with hysteresis, shrink) lives here.
//! - [`chain`] — a pool's backend chain (filters, then a store) and its per-shard instances,
//!   with the plugin fault policy.
//! - [`plugin`] — the Wasm runtime: engine, module loading and validation, instances, limits.
//! - [`memory`] — the host's page memory: the budget that bounds it, the arena that holds it,
//!   and the allocation and page-fault counters of the I/O path.
//! - [`page_index`] — [`PageIndex`](page_index::PageIndex): 16 bytes per page of a pool shard
//!   (map bit, kind, generation, record, checksum), in flat chunks from the arena.
//! - [`page_store`] — a pool shard's pages: the index, the records a store keeps through the
//!   host page store capability (the host owns their lifecycle), and the page checksums.
//! - [`stats`] — the counters of contract.md §4 and latency histograms.
//! - [`catalog`] — what a data dir keeps of a host: uploaded plugins, pool configs (sled).
//! - [`rest`] — the REST API, `/healthz`, `/metrics` and the OpenAPI document (axum).
//! - [`demo`] — `tmem demo`: a host plus a userfaultfd workload, verified page by page.
//! - [`frontend`] — everything that hands pages to a pool: the frontend socket, block devices
//!   (the block-device core, NBD, ublk) and their attachments.
//! - [`peer`] — the peer role: this host's pools serving other hosts' `remote` stores.
//! - [`persist`] — persistent pools' databases and durability (group commit, periodic flush).
//! - [`server`] — `tmem serve`: the HTTP listener around a host.
//! - [`declared`] — the pools and swap devices a config file declares, applied at start.
//! - [`notify`] — systemd's readiness protocol (`READY=1`, `STOPPING=1` on `$NOTIFY_SOCKET`).
//! - [`bundled`] — the plugins built from `plugins/` and embedded in the binary.
//! - [`workload`] — realistic page contents, for the demo, benchmarks and tests.
//! - [`tier`] — tiered pools: a pool's lower tier, the pages' ages and the mover.
//! - [`telemetry`] — logging set-up.
//! - [`wire_io`] — frames of the frontend and peer protocols read from async streams.
//! - [`listen`] — what every listener shares: a connection cap where the unauthenticated are
//!   evicted first, handshake deadlines, backing off when descriptors run out.
//! - [`tls`] — TLS for the TCP listeners and connections (OpenSSL): the host's X.509
//!   identity, client certificates, pre-shared keys, the client side of remote stores.
//! - [`unix_access`] — who may connect to the Unix sockets: 0600, or a group and an
//!   allowed-users list checked with `SO_PEERCRED`.

pub mod bundled;
pub mod catalog;
pub mod chain;
pub mod credentials;
pub mod declared;
pub mod demo;
pub mod frontend;
pub mod host;
pub mod listen;
pub mod memory;
pub mod notify;
pub mod page_index;
pub mod page_store;
pub mod peer;
pub mod persist;
pub mod plugin;
pub mod pool;
pub mod rest;
pub mod secrets;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod tier;
pub mod tls;
pub mod unix_access;
pub mod wire_io;
pub mod workload;

pub use host::{BackendSpec, Host, HostConfig, HostError, MemoryLimit};
pub use pool::{LoadOutcome, OpError, Pool, PoolLimits, PoolModes, PoolSpec, RejectReason, StoreOutcome};
