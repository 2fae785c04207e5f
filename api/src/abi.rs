//! The plugin ABI, version 1: the one contract between the tmem host and a Wasm plugin.
//!
//! This module is the single place where the ABI is defined. The host (`tmem-host`) and the
//! guest SDK (`tmem-sdk`) both build on these names and numbers; nothing else does.
//!
//! # Shape
//!
//! A plugin is a **core WebAssembly module** (built for `wasm32-unknown-unknown`). It gets no
//! WASI at all: no files, network, clock, environment or randomness. Everything it may do
//! outside its own linear memory is an import from the module [`HOST_MODULE`] (`"tmem"`), and
//! the host refuses, at load time, a module that imports anything else.
//!
//! A plugin is one of two [kinds](crate::manifest::PluginKind):
//!
//! - a **filter** transforms pages on their way to the store and back (compression);
//! - a **store** keeps the encoded bytes of a page under its offset. A store does not keep bytes
//!   in its own linear memory (that dies with the instance when the plugin traps); it hands them
//!   to a host capability such as the host page store ([`import::PAGES_PUT`] and friends). This
//!   is how tmem guarantees that no acknowledged page is lost because a plugin failed.
//!
//! # Exports every plugin has
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the plugin's linear memory |
//! | [`export::ABI_MARKER`] | `() -> ()` | says "I speak ABI v1"; never called |
//! | [`export::MANIFEST`] | `() -> i64` | [`packed`] pointer and length of the manifest, UTF-8 JSON ([`crate::manifest::Manifest`]) |
//! | [`export::ALLOC`] | `(len: i32) -> i32` | allocates `len` bytes in the guest, for the config passed to `init` |
//! | [`export::INIT`] | `(cfg_ptr: i32, cfg_len: i32, page_size: i32) -> i64` | builds the plugin from its config (a JSON object whose keys the host has checked against the manifest). Returns a [`packed`] status; on failure the guest wrote a UTF-8 message to the output buffer |
//! | [`export::IO_IN`] | `() -> i32` | address of the input buffer, [`io_capacity`] bytes, valid after `init` |
//! | [`export::IO_OUT`] | `() -> i32` | address of the output buffer, [`io_capacity`] bytes |
//!
//! # Filter exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | [`export::FILTER_ENCODE`] | `(len: i32) -> i64` | input `len` bytes in IO_IN; output in IO_OUT; status one of [`status::OK`], [`status::OK_SAME_FILLED`], [`status::OK_INCOMPRESSIBLE`], or a `REJECT_*` |
//! | [`export::FILTER_DECODE`] | `(len: i32) -> i64` | the inverse, output length in the result; status [`status::OK`] or [`status::DECODE_FAILED`]. The host checks that the chain's first filter decodes to exactly a page |
//!
//! # Store exports
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | [`export::STORE_PUT`] | `(offset: i64, len: i32) -> i64` | keep IO_IN's `len` bytes under `offset` (the host has already dropped any old copy) |
//! | [`export::STORE_GET`] | `(offset: i64) -> i64` | write the bytes kept under `offset` to IO_OUT; [`status::NOT_FOUND`] if none, [`status::UNAVAILABLE`] if the backend cannot be reached, [`status::DECODE_FAILED`] if the kept bytes fail the store's integrity check |
//! | [`export::STORE_DELETE`] | `(offset: i64) -> i64` | drop `offset`; dropping an absent offset is not an error |
//! | [`export::STORE_CLEAR`] | `() -> i64` | drop everything the pool holds |
//!
//! # Host imports (module `"tmem"`)
//!
//! | import | signature | meaning |
//! |---|---|---|
//! | [`import::LOG`] | `(level: i32, ptr: i32, len: i32) -> ()` | a log line (rate-limited, truncated to 1 KiB) |
//! | [`import::PAGES_PUT`] | `(offset: i64, ptr: i32, len: i32) -> i32` | host page store: keep bytes as the record of the page being stored; 0, or [`pages::ALLOC_FAILED`] |
//! | [`import::PAGES_GET`] | `(offset: i64, ptr: i32, cap: i32) -> i32` | copy the bytes to `ptr`; their length, or [`pages::ABSENT`] / [`pages::TOO_SMALL`] |
//! | [`import::PAGES_DELETE`] | `(offset: i64) -> i32` | during the delete of `offset`: 1 if it has a record, else 0 (the host drops it) |
//! | [`import::PAGES_CLEAR`] | `() -> ()` | during a clear: nothing (the host drops every record) |
//! | [`import::NET_CONNECT`] | `(addr_ptr: i32, addr_len: i32) -> i32` | open a TCP connection to `host:port` (UTF-8); a handle, or a negative [`net`] code |
//! | [`import::NET_SEND`] | `(handle: i32, ptr: i32, len: i32) -> i32` | send all `len` bytes; `len`, or a negative [`net`] code |
//! | [`import::NET_RECV`] | `(handle: i32, ptr: i32, cap: i32) -> i32` | receive 1 to `cap` bytes; their number, 0 when the peer closed, or a negative [`net`] code |
//! | [`import::NET_CLOSE`] | `(handle: i32) -> ()` | close a connection |
//!
//! Only stores may import `pages_*` and `net_*`: a filter that does is refused at load time.
//!
//! **The host owns the records' lifecycle.** `pages_put` is accepted only inside
//! [`export::STORE_PUT`] and only for the offset being stored, at most [`io_capacity`] bytes,
//! charged to the pool's `max_bytes` and the host's memory budget at the put; a second put in
//! the same call replaces the first. Anything else returns [`pages::ALLOC_FAILED`] (and the
//! store fails). The record becomes the page's only if the put call returns OK. When a page is
//! invalidated, overwritten, taken by an exclusive load or cleared, the host drops its record
//! itself right after calling [`export::STORE_DELETE`] / [`export::STORE_CLEAR`], whatever the
//! plugin does there.
//!
//! # Capabilities
//!
//! What a plugin may do beyond computing is granted per pool
//! ([`crate::manifest::Capability`]): the manifest lists what it needs, the pool config must
//! grant exactly that.
//!
//! - `storage`: the `pages_*` imports keep bytes in the pool's own database on disk, not in
//!   host memory.
//! - `network`: the `net_*` imports work, for exactly the endpoints in the plugin's config key
//!   `endpoints` — URLs `scheme://host:port[,host:port…][/path]`; every `host:port` listed is
//!   granted, nothing else (a connect to another address returns [`net::DENIED`]). Every
//!   connect, send and receive is bounded by the config key `timeout_ms` (default 1000) and
//!   by the call's deadline, which for such plugins is the pool's call timeout plus
//!   `timeout_ms`. Connections belong to the instance and close with it.
//!
//! # Results
//!
//! Every call that returns `i64` returns a [`packed`] pair: the high 32 bits are a [`status`]
//! code, the low 32 bits a length (of the output in IO_OUT). A call that traps, overruns its
//! deadline, exceeds its memory cap, returns an unknown status or a length past the buffer is a
//! *plugin fault*: the host drops the instance and fails the operation safely.
//!
//! # Versioning
//!
//! The version is in the marker export's name ([`export::ABI_MARKER`]). A host refuses a
//! module that exports the marker of another version, naming both versions. Adding an export
//! or import, or changing any signature or status meaning, makes a new version.

/// The plugin ABI version this crate describes.
pub const ABI_VERSION: u32 = 1;

/// The module that all host imports come from.
pub const HOST_MODULE: &str = "tmem";

/// Prefix of the ABI marker export; the version number follows it.
pub const ABI_MARKER_PREFIX: &str = "tmem_abi_v";

/// Export names.
pub mod export {
    /// Marker export that names the ABI version (`() -> ()`).
    pub const ABI_MARKER: &str = "tmem_abi_v1";
    /// The plugin's linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i64`: packed pointer and length of the JSON manifest.
    pub const MANIFEST: &str = "tmem_manifest";
    /// `(len: i32) -> i32`: guest allocation.
    pub const ALLOC: &str = "tmem_alloc";
    /// `(cfg_ptr: i32, cfg_len: i32, page_size: i32) -> i64`.
    pub const INIT: &str = "tmem_init";
    /// `() -> i32`: the input buffer.
    pub const IO_IN: &str = "tmem_io_in";
    /// `() -> i32`: the output buffer.
    pub const IO_OUT: &str = "tmem_io_out";
    /// Filter: `(len: i32) -> i64`.
    pub const FILTER_ENCODE: &str = "tmem_filter_encode";
    /// Filter: `(len: i32) -> i64`.
    pub const FILTER_DECODE: &str = "tmem_filter_decode";
    /// Store: `(offset: i64, len: i32) -> i64`.
    pub const STORE_PUT: &str = "tmem_store_put";
    /// Store: `(offset: i64) -> i64`.
    pub const STORE_GET: &str = "tmem_store_get";
    /// Store: `(offset: i64) -> i64`.
    pub const STORE_DELETE: &str = "tmem_store_delete";
    /// Store: `() -> i64`.
    pub const STORE_CLEAR: &str = "tmem_store_clear";
}

/// Import names (all in [`HOST_MODULE`]).
pub mod import {
    /// `(level: i32, ptr: i32, len: i32) -> ()`.
    pub const LOG: &str = "log";
    /// `(offset: i64, ptr: i32, len: i32) -> i32`.
    pub const PAGES_PUT: &str = "pages_put";
    /// `(offset: i64, ptr: i32, cap: i32) -> i32`.
    pub const PAGES_GET: &str = "pages_get";
    /// `(offset: i64) -> i32`.
    pub const PAGES_DELETE: &str = "pages_delete";
    /// `() -> ()`.
    pub const PAGES_CLEAR: &str = "pages_clear";
    /// `(addr_ptr: i32, addr_len: i32) -> i32`.
    pub const NET_CONNECT: &str = "net_connect";
    /// `(handle: i32, ptr: i32, len: i32) -> i32`.
    pub const NET_SEND: &str = "net_send";
    /// `(handle: i32, ptr: i32, cap: i32) -> i32`.
    pub const NET_RECV: &str = "net_recv";
    /// `(handle: i32) -> ()`.
    pub const NET_CLOSE: &str = "net_close";
}

/// Results of the network imports (negative; a non-negative result is a handle or a length).
pub mod net {
    /// `net_connect`: the address is not one the pool granted (or the plugin has no grant).
    pub const DENIED: i32 = -1;
    /// The connection could not be made, or it broke.
    pub const FAILED: i32 = -2;
    /// The operation did not finish within the grant's `timeout_ms` (or the call's deadline).
    pub const TIMEOUT: i32 = -3;
    /// `net_connect`: the instance has too many open connections.
    pub const TOO_MANY: i32 = -4;
    /// Not an open handle.
    pub const BAD_HANDLE: i32 = -5;
    /// The most connections one instance may hold open.
    pub const MAX_CONNECTIONS: usize = 64;
}

/// Results of the host page store imports.
pub mod pages {
    /// `pages_put`: the host could not allocate room for the bytes.
    pub const ALLOC_FAILED: i32 = -1;
    /// `pages_get`: nothing is kept under that offset.
    pub const ABSENT: i32 = -1;
    /// `pages_get`: the buffer is smaller than the kept bytes.
    pub const TOO_SMALL: i32 = -2;
}

/// Log levels for [`import::LOG`].
pub mod log_level {
    /// Errors.
    pub const ERROR: i32 = 1;
    /// Warnings.
    pub const WARN: i32 = 2;
    /// Information.
    pub const INFO: i32 = 3;
    /// Debugging detail.
    pub const DEBUG: i32 = 4;
}

/// Status codes in the high half of a [`packed`] result.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// Filter encode: the page is one repeated 8-byte word, encoded as a marker.
    pub const OK_SAME_FILLED: u32 = 1;
    /// Filter encode: the page did not compress well and is passed on raw (`store_raw`).
    pub const OK_INCOMPRESSIBLE: u32 = 2;
    /// Encode refused: compresses too poorly (zswap's `reject_compress_poor`).
    pub const REJECT_COMPRESS_POOR: u32 = 16;
    /// Encode refused: the compressor failed (zswap's `reject_compress_fail`).
    pub const REJECT_COMPRESS_FAIL: u32 = 17;
    /// Refused: no room could be allocated (zswap's `reject_alloc_fail`).
    pub const REJECT_ALLOC_FAIL: u32 = 18;
    /// Refused: the backend is unreachable (a remote store that is down).
    pub const REJECT_UNAVAILABLE: u32 = 19;
    /// Store get: nothing is kept under that offset.
    pub const NOT_FOUND: u32 = 32;
    /// Filter decode: the bytes do not decode to a page (zswap's `decompress_fail`). Store get:
    /// the kept bytes fail the store's integrity check.
    pub const DECODE_FAILED: u32 = 33;
    /// Store get: the backend could not be reached.
    pub const UNAVAILABLE: u32 = 34;
    /// Init: the configuration was refused; the message is in the output buffer.
    pub const INIT_FAILED: u32 = 48;
}

/// Packs a status and a length into one `i64` result.
pub const fn pack(status: u32, len: u32) -> i64 {
    (((status as u64) << 32) | len as u64) as i64
}

/// Splits a packed `i64` result into `(status, len)`.
pub const fn packed(result: i64) -> (u32, u32) {
    let bits = result as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// Bytes in each of the two I/O buffers for a pool of `page_size`: room for a page, a page's
/// worst-case encoding (raw plus a header) and a message.
pub const fn io_capacity(page_size: u32) -> u32 {
    page_size + 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_status_and_extreme_lengths() {
        for status in [status::OK, status::REJECT_UNAVAILABLE, status::INIT_FAILED, u32::MAX] {
            for len in [0, 1, 4096, u32::MAX] {
                assert_eq!(packed(pack(status, len)), (status, len));
            }
        }
    }

    #[test]
    fn marker_names_the_version() {
        assert_eq!(export::ABI_MARKER, format!("{ABI_MARKER_PREFIX}{ABI_VERSION}"));
    }
}
