//! Shared helpers: hosts sized for tests, the bundled chains, fixtures.

use std::time::Duration;

use serde_json::json;
use tmem_host::plugin::{EngineOptions, SandboxLimits};
use tmem_host::{BackendSpec, Host, HostConfig, PoolSpec};

/// A host with no data dir and a modest number of instance slots (tests run in parallel).
pub fn host() -> Host {
    Host::new(HostConfig {
        data_dir: None,
        engine: EngineOptions { max_instances: 200, ..Default::default() },
    })
    .expect("host starts")
}

/// Every bundled chain the contract must hold for, by name.
pub fn bundled_chains() -> Vec<(&'static str, Vec<BackendSpec>)> {
    vec![
        ("[ram]", vec![BackendSpec::new("ram")]),
        ("[zstd, ram]", vec![BackendSpec::new("zstd"), BackendSpec::new("ram")]),
        (
            "[zstd(store_raw), ram]",
            vec![BackendSpec::with_config("zstd", json!({"on_incompressible": "store_raw"})), BackendSpec::new("ram")],
        ),
    ]
}

/// A pool spec with 4 shards (so tests exercise several) and quick plugin deadlines.
pub fn spec(name: &str) -> PoolSpec {
    let mut spec = PoolSpec::new(name);
    spec.shards = Some(4);
    spec.sandbox = SandboxLimits { call_timeout: Duration::from_millis(50), memory_bytes: 16 << 20, ..Default::default() };
    spec
}

/// A compressible page that names `tag` all over, so a torn or stale page is recognisable.
pub fn tagged_page(tag: u64) -> Vec<u8> {
    format!("<page {tag:016x}> ").bytes().cycle().take(4096).collect()
}

/// Registers the `misbehave` fixture (built from `plugins/misbehave`) on `host`.
pub fn register_misbehave(host: &Host) {
    let bytes = tmem_host::bundled::built("tmem_plugin_misbehave").expect("fixture was built by host/build.rs");
    host.add_plugin(None, &bytes).expect("fixture loads");
}
