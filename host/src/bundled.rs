//! The plugins bundled into the host binary, built from `plugins/` by `host/build.rs`.

/// The `zstd` compression filter.
pub const ZSTD: &[u8] = include_bytes!(concat!(env!("TMEM_BUILT_PLUGINS_DIR"), "/tmem_plugin_zstd.wasm"));

/// The `lz4` compression filter (fast; zram's default codec).
pub const LZ4: &[u8] = include_bytes!(concat!(env!("TMEM_BUILT_PLUGINS_DIR"), "/tmem_plugin_lz4.wasm"));

/// The `ram` store.
pub const RAM: &[u8] = include_bytes!(concat!(env!("TMEM_BUILT_PLUGINS_DIR"), "/tmem_plugin_ram.wasm"));

/// The `sled` persistent store (needs the `storage` grant).
pub const SLED: &[u8] = include_bytes!(concat!(env!("TMEM_BUILT_PLUGINS_DIR"), "/tmem_plugin_sled.wasm"));

/// The `remote` store: a peer host, Redis or Redis Cluster (needs the `network` grant).
pub const REMOTE: &[u8] = include_bytes!(concat!(env!("TMEM_BUILT_PLUGINS_DIR"), "/tmem_plugin_remote.wasm"));

/// Every bundled plugin, registered by every host at start.
pub const ALL: &[&[u8]] = &[ZSTD, LZ4, RAM, SLED, REMOTE];

/// Where this build put every plugin of `plugins/`, test fixtures included (for tests and
/// benchmarks; a deployed binary needs only the embedded ones above).
pub const BUILT_PLUGINS_DIR: &str = env!("TMEM_BUILT_PLUGINS_DIR");

/// The bytes of a built plugin or fixture by crate name, e.g. `tmem_plugin_misbehave`.
pub fn built(name: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(std::path::Path::new(BUILT_PLUGINS_DIR).join(format!("{name}.wasm")))
}
