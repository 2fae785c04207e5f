//! Modules the host must refuse at load time, each with a message that says what is wrong,
//! and the bundled plugins' manifests and compiled-code cache.

use tmem_host::plugin::PluginLoadError;
use tmem_host::{Host, HostConfig, HostError};

use crate::common::host;

fn refuse(host: &Host, bytes: &[u8]) -> (PluginLoadError, String) {
    match host.add_plugin(Some("bad"), bytes) {
        Err(HostError::PluginLoad(e)) => {
            let text = e.to_string();
            (e, text)
        }
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(m) => panic!("accepted a bad module: {m:?}"),
    }
}

/// A minimal module in the text format with the common exports of ABI v1, plus `extra`.
fn module(marker: &str, imports: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            {imports}
            (memory (export "memory") 1)
            (func (export "{marker}"))
            (func (export "tmem_manifest") (result i64) (i64.const 0))
            (func (export "tmem_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "tmem_init") (param i32 i32 i32) (result i64) (i64.const 0))
            (func (export "tmem_io_in") (result i32) (i32.const 0))
            (func (export "tmem_io_out") (result i32) (i32.const 0))
            {extra})"#
    ))
    .unwrap()
}

#[test]
fn garbage_truncated_and_component_bytes_are_refused() {
    let host = host();
    let (e, text) = refuse(&host, b"hello, I am not wasm");
    assert!(matches!(e, PluginLoadError::NotWasm(_)) && text.contains("magic"), "{text}");
    let (e, _) = refuse(&host, &[]);
    assert!(matches!(e, PluginLoadError::NotWasm(_)));
    let truncated = &tmem_host::bundled::ZSTD[..5000];
    let (e, text) = refuse(&host, truncated);
    assert!(matches!(e, PluginLoadError::Invalid(_)), "{text}");
    let (e, text) = refuse(&host, b"\0asm\x0d\0\x01\0rest");
    assert_eq!(e, PluginLoadError::IsComponent, "{text}");
    assert!(host.plugins().iter().all(|(name, _)| name != "bad"), "nothing half-registered");
}

#[test]
fn wrong_abi_versions_and_missing_markers_are_named() {
    let host = host();
    let (e, text) = refuse(&host, &module("tmem_abi_v2", "", ""));
    assert_eq!(e, PluginLoadError::WrongAbi { found: "2".into() });
    assert!(text.contains("v2") && text.contains("speaks v1"), "{text}");
    let (e, text) = refuse(&host, &module("something_else", "", ""));
    assert_eq!(e, PluginLoadError::MissingAbiMarker, "{text}");
    assert!(text.contains("tmem_abi_v1"), "{text}");
}

#[test]
fn forbidden_imports_and_bad_exports_are_named() {
    let host = host();
    let wasi = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#;
    let (e, text) = refuse(&host, &module("tmem_abi_v1", wasi, ""));
    assert!(matches!(e, PluginLoadError::ForbiddenImport { .. }) && text.contains("WASI"), "{text}");
    let unknown = r#"(import "tmem" "open_file" (func))"#;
    let (_, text) = refuse(&host, &module("tmem_abi_v1", unknown, ""));
    assert!(text.contains("tmem::open_file") && text.contains("does not provide"), "{text}");
    let wrong_sig = r#"(import "tmem" "pages_put" (func (param i32)))"#;
    let (_, text) = refuse(&host, &module("tmem_abi_v1", wrong_sig, ""));
    assert!(text.contains("signature"), "{text}");
    let no_init = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "tmem_abi_v1"))
           (func (export "tmem_manifest") (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let (e, text) = refuse(&host, &no_init);
    assert!(matches!(e, PluginLoadError::BadExport { name: "tmem_alloc", .. }), "{text}");
    // A manifest that is not JSON.
    let (e, text) = refuse(&host, &module("tmem_abi_v1", "", ""));
    assert!(matches!(e, PluginLoadError::BadManifest(_)), "{text}");
}

#[test]
fn a_filter_may_not_use_the_page_store() {
    let host = host();
    let manifest = r#"{"abi":1,"name":"sneaky","version":"1","kind":"filter","description":"","config":[]}"#;
    let patched = wat::parse_str(format!(
        r#"(module
            (import "tmem" "pages_get" (func (param i64 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 1024) "{data}")
            (func (export "tmem_abi_v1"))
            (func (export "tmem_manifest") (result i64) (i64.const {packed}))
            (func (export "tmem_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "tmem_init") (param i32 i32 i32) (result i64) (i64.const 0))
            (func (export "tmem_io_in") (result i32) (i32.const 0))
            (func (export "tmem_io_out") (result i32) (i32.const 0))
            (func (export "tmem_filter_encode") (param i32) (result i64) (i64.const 0))
            (func (export "tmem_filter_decode") (param i32) (result i64) (i64.const 0)))"#,
        data = manifest.replace('"', "\\\""),
        packed = (1024i64 << 32) | manifest.len() as i64,
    ))
    .unwrap();
    let (e, text) = refuse(&host, &patched);
    assert!(matches!(e, PluginLoadError::ForbiddenImport { .. }) && text.contains("only store plugins"), "{text}");
}

#[test]
fn bundled_plugins_describe_themselves_and_reregistering_is_idempotent() {
    let host = host();
    let zstd = host.plugin("zstd", None).unwrap();
    let m = zstd.manifest();
    assert_eq!((m.abi, m.kind.to_string().as_str()), (1, "filter"));
    let keys: Vec<&str> = m.config.iter().map(|k| k.key.as_ref()).collect();
    assert_eq!(keys, ["level", "max_compressed_bytes", "on_incompressible"]);
    assert_eq!(host.plugin("ram", None).unwrap().kind().to_string(), "store");
    let again = host.add_plugin(None, tmem_host::bundled::ZSTD).unwrap();
    assert_eq!(again.sha256(), zstd.sha256());
    assert_eq!(host.plugins().iter().find(|(n, _)| n == "zstd").unwrap().1.len(), 1);
    // By sha256 prefix, and under another name (a new version of an uploaded plugin).
    assert_eq!(host.plugin("zstd", Some(&zstd.sha256()[..10])).unwrap().sha256(), zstd.sha256());
    host.add_plugin(Some("my-ram"), tmem_host::bundled::RAM).unwrap();
    assert!(host.plugin("my-ram", None).is_ok());
    host.create_pool(crate::common::spec("uses"), &[tmem_host::BackendSpec::new("my-ram")]).unwrap();
    let err = host.remove_plugin("my-ram", None).unwrap_err().to_string();
    assert!(err.contains("used by pools: uses"), "{err}");
    host.destroy_pool("uses").unwrap();
    host.remove_plugin("my-ram", None).unwrap();
}

#[test]
fn compiled_code_is_cached_on_disk_and_reused() {
    let dir = std::env::temp_dir().join(format!("tmem-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || HostConfig { data_dir: Some(dir.clone()), ..Default::default() };
    let first = Host::new(config()).unwrap();
    let cache = dir.join("cache").join("modules");
    let entries = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries(), tmem_host::bundled::ALL.len());
    drop(first);
    let second = Host::new(config()).unwrap();
    assert_eq!(entries(), tmem_host::bundled::ALL.len(), "reused, not recompiled");
    let pool = second
        .create_pool(
            crate::common::spec("c"),
            &[tmem_host::BackendSpec::new("zstd"), tmem_host::BackendSpec::new("ram")],
        )
        .unwrap();
    assert_eq!(pool.store(1, &crate::common::tagged_page(1)).unwrap(), tmem_host::StoreOutcome::Stored);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    std::fs::remove_dir_all(&dir).unwrap();
}
