//! Hostile plugins, written directly against ABI v1 in WAT (a hostile author does not use the
//! SDK), against real hosts: each one is refused or contained, host memory stays bounded, no
//! wrong byte is ever returned, and a restart resurrects nothing.

use tmem_api::abi;
use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch, SandboxConfig};
use tmem_host::chain::GetFailure;
use tmem_host::pool::{CanaryState, OpError};
use tmem_host::{BackendSpec, Host, LoadOutcome, RejectReason, StoreOutcome};

use crate::common::{ServeProcess, host, rss, spec, tagged_page, temp_dir};

const MIB: u64 = 1 << 20;
/// Where the raw plugins keep their I/O buffers (each `io_capacity(4096)` = 8 KiB long).
const IO_IN: i32 = 65536;
const IO_OUT: i32 = 131072;

/// A plugin module in WAT: the ABI's common exports, a manifest of `kind` asking for `caps`
/// (a JSON array), the host page store imports for a store, and `funcs`.
fn raw_plugin_version(name: &str, version: &str, kind: &str, caps: &str, funcs: &str) -> Vec<u8> {
    raw_plugin_with_config(name, version, kind, caps, "[]", funcs)
}

/// [`raw_plugin_version`] with the manifest's config keys (a JSON array).
fn raw_plugin_with_config(name: &str, version: &str, kind: &str, caps: &str, config: &str, funcs: &str) -> Vec<u8> {
    let manifest = format!(
        r#"{{"abi":1,"name":"{name}","version":"{version}","kind":"{kind}","description":"hostile fixture","config":{config},"capabilities":{caps}}}"#
    );
    let net_imports = if caps.contains("network") {
        r#"(import "tmem" "net_connect" (func $connect (param i32 i32) (result i32)))
           (import "tmem" "net_send" (func $send (param i32 i32 i32) (result i32)))
           (import "tmem" "net_recv" (func $recv (param i32 i32 i32) (result i32)))"#
    } else {
        ""
    };
    let imports = if kind == "store" {
        r#"(import "tmem" "log" (func $log (param i32 i32 i32)))
           (import "tmem" "pages_put" (func $put (param i64 i32 i32) (result i32)))
           (import "tmem" "pages_get" (func $get (param i64 i32 i32) (result i32)))
           (import "tmem" "pages_delete" (func $delete (param i64) (result i32)))"#
    } else {
        ""
    };
    wat::parse_str(format!(
        r#"(module
            {imports}
            {net_imports}
            (memory (export "memory") 4)
            (global $calls (mut i32) (i32.const 0))
            (data (i32.const 1024) "{data}")
            (func (export "tmem_abi_v1"))
            (func (export "tmem_manifest") (result i64) (i64.const {packed}))
            (func (export "tmem_alloc") (param i32) (result i32) (i32.const 4096))
            (func (export "tmem_init") (param i32 i32 i32) (result i64) (i64.const 0))
            (func (export "tmem_io_in") (result i32) (i32.const {IO_IN}))
            (func (export "tmem_io_out") (result i32) (i32.const {IO_OUT}))
            {funcs})"#,
        data = manifest.replace('"', "\\\""),
        packed = abi::pack(1024, manifest.len() as u32),
    ))
    .unwrap()
}

/// A store over the host page store; `before_put` runs first in every put (with a local `$i
/// i64`), `delete` is the body of its delete.
fn store(name: &str, caps: &str, before_put: &str, delete: &str) -> Vec<u8> {
    store_with_config(name, caps, "[]", before_put, delete, "")
}

/// [`store`] with the manifest's config keys and `extra` module fields (data segments).
fn store_with_config(name: &str, caps: &str, config: &str, before_put: &str, delete: &str, extra: &str) -> Vec<u8> {
    raw_plugin_with_config(
        name,
        "1",
        "store",
        caps,
        config,
        &format!(
            r#"(func (export "tmem_store_put") (param $o i64) (param $len i32) (result i64) (local $i i64)
                 {before_put}
                 (if (call $put (local.get $o) (i32.const {IO_IN}) (local.get $len))
                   (then (return (i64.const {alloc_fail}))))
                 (i64.const 0))
               (func (export "tmem_store_get") (param $o i64) (result i64) (local $n i32)
                 (local.set $n (call $get (local.get $o) (i32.const {IO_OUT}) (i32.const 8192)))
                 (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i64.const {not_found}))))
                 (i64.extend_i32_u (local.get $n)))
               (func (export "tmem_store_delete") (param $o i64) (result i64) {delete} (i64.const 0))
               (func (export "tmem_store_clear") (result i64) (i64.const 0))
               {extra}"#,
            alloc_fail = abi::pack(abi::status::REJECT_ALLOC_FAIL, 0),
            not_found = abi::pack(abi::status::NOT_FOUND, 0),
        ),
    )
}

/// `pages_put` of 4 KiB under the `n` offsets after the one being stored (`n` = 0: forever).
fn flood(n: u64) -> String {
    let more = if n == 0 {
        "(br $next)".to_string()
    } else {
        format!("(br_if $next (i64.le_u (local.get $i) (i64.const {n})))")
    };
    format!(
        r#"(local.set $i (i64.const 1))
           (loop $next
             (drop (call $put (i64.add (local.get $o) (local.get $i)) (i32.const {IO_IN}) (i32.const 4096)))
             (local.set $i (i64.add (local.get $i) (i64.const 1)))
             {more})"#
    )
}

const HONEST_DELETE: &str = "(drop (call $delete (local.get $o)))";

/// The config keys of a store granted `network`.
const NET_CONFIG: &str = r#"[{"key":"endpoints","doc":"where","type":"string_list"},{"key":"timeout_ms","doc":"bound","type":"integer","min":1,"max":60000,"default":1000}]"#;

/// An identity filter; `on_encode`/`on_decode` run after the copy (`$flip` flips a bit of the
/// output, `$calls` counts).
fn filter(name: &str, on_encode: &str, on_decode: &str) -> Vec<u8> {
    filter_version(name, "1", on_encode, on_decode)
}

/// [`filter`] with a version.
fn filter_version(name: &str, version: &str, on_encode: &str, on_decode: &str) -> Vec<u8> {
    raw_plugin_version(
        name,
        version,
        "filter",
        "[]",
        &format!(
            r#"(func $copy (param $len i32) (memory.copy (i32.const {IO_OUT}) (i32.const {IO_IN}) (local.get $len)))
               (func $flip (i32.store8 (i32.const {byte}) (i32.xor (i32.load8_u (i32.const {byte})) (i32.const 1))))
               (func (export "tmem_filter_encode") (param $len i32) (result i64)
                 (call $copy (local.get $len)) {on_encode} (i64.extend_i32_u (local.get $len)))
               (func (export "tmem_filter_decode") (param $len i32) (result i64)
                 (call $copy (local.get $len)) {on_decode} (i64.extend_i32_u (local.get $len)))"#,
            byte = IO_OUT + 100,
        ),
    )
}

const FLIP: &str = "(call $flip)";
const FLIP_AFTER_100: &str = "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.gt_u (global.get $calls) (i32.const 100)) (then (call $flip)))";

fn stored(result: &tmem_api::rest::StoreResult) -> bool {
    result.outcome == "stored"
}

#[test]
fn a_store_flooding_other_offsets_is_refused_and_grows_no_host_memory() {
    let server = ServeProcess::start(&temp_dir("hostile-flood"), &[]);
    let client = server.client();
    // 10,000 puts of 4 KiB under foreign offsets per store (40 MB a store, were they kept),
    // then its own put.
    client.upload_plugin(Some("flood"), &store("flood", "[]", &flood(10_000), HONEST_DELETE)).unwrap();
    // Foreign puts until the deadline.
    client.upload_plugin(Some("flood-forever"), &store("flood-forever", "[]", &flood(0), HONEST_DELETE)).unwrap();
    // A generous deadline: the flood must finish on a loaded machine, to store its own page.
    let sandbox = Some(SandboxConfig { memory_bytes: 64 * MIB, call_timeout_ms: 5000 });
    client
        .create_pool(&PoolConfig { sandbox, ..PoolConfig::new("flood", vec![BackendRequest::new("flood")]) })
        .unwrap();
    client.create_pool(&PoolConfig::new("forever", vec![BackendRequest::new("flood-forever")])).unwrap();
    client.create_pool(&PoolConfig::new("bystander", vec![BackendRequest::new("ram")])).unwrap();
    for o in 0..8 {
        assert!(stored(&client.put_page("bystander", o, &tagged_page(o)).unwrap()));
    }
    let before = rss(server.child.id());
    for o in 0..32u64 {
        let result = client.put_page("flood", o, &tagged_page(o)).unwrap();
        assert!(stored(&result), "its own page is kept: {result:?}");
    }
    for o in 0..4u64 {
        let result = client.put_page("forever", o, &tagged_page(o)).unwrap();
        // Its faults fail the new pool's canary after three stores: then it is disabled.
        let reason = result.reason.as_deref().unwrap_or_default();
        assert!(["reject_plugin_fault", "reject_disabled"].contains(&reason), "{result:?}");
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown < 32 * MIB, "320,000 foreign puts of 4 KiB grew the host by {} MiB", grown / MIB);
    println!(
        "flood: host RSS grew {:.1} MiB over 320,000 foreign puts and 4 deadline-long floods",
        grown as f64 / MIB as f64
    );
    let flood = client.pool("flood").unwrap();
    assert_eq!(flood.counters["stored_pages"], 32);
    assert_eq!(flood.counters["pool_total_size"], 32 * 4096, "only the pages it stores are kept");
    assert_eq!(client.pool("forever").unwrap().counters["pool_total_size"], 0);
    for o in 0..32u64 {
        assert_eq!(client.get_page("flood", o).unwrap(), Some(tagged_page(o)), "page {o}");
    }
    for o in 0..4u64 {
        assert_eq!(client.get_page("forever", o).unwrap(), None, "a refused store keeps nothing");
    }
    for o in 0..8 {
        assert_eq!(client.get_page("bystander", o).unwrap(), Some(tagged_page(o)), "other pools untouched");
    }
}

#[test]
fn a_store_whose_delete_does_not_delete_resurrects_nothing_after_a_restart() {
    let dir = temp_dir("hostile-liar");
    let liar = store("liar", r#"["storage"]"#, "", "");
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    client.upload_plugin(Some("liar"), &liar).unwrap();
    let backend = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("liar") };
    client.create_pool(&PoolConfig::new("liar", vec![backend])).unwrap();
    for o in 0..20u64 {
        assert!(stored(&client.put_page("liar", o, &tagged_page(o)).unwrap()));
    }
    for o in 0..10u64 {
        assert!(client.remove_page("liar", o).unwrap(), "page {o} was present");
    }
    for o in 10..15u64 {
        assert!(stored(&client.put_page("liar", o, &tagged_page(1000 + o)).unwrap()), "overwrite {o}");
    }
    assert!(server.stop(), "a clean stop");
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    assert_eq!(client.pool("liar").unwrap().counters["stored_pages"], 10);
    for o in 0..10u64 {
        assert_eq!(client.get_page("liar", o).unwrap(), None, "invalidated page {o} came back");
    }
    for o in 10..15u64 {
        assert_eq!(client.get_page("liar", o).unwrap(), Some(tagged_page(1000 + o)), "overwritten page {o}");
    }
    for o in 15..20u64 {
        assert_eq!(client.get_page("liar", o).unwrap(), Some(tagged_page(o)), "page {o}");
    }
}

/// A pool on one shard whose chain is `[filter, ram]`.
fn filtered_pool(host: &Host, name: &str, filter_wasm: &[u8], integrity: bool) -> std::sync::Arc<tmem_host::Pool> {
    host.add_plugin(Some(name), filter_wasm).unwrap();
    let mut spec = spec(name);
    spec.shards = Some(1);
    spec.integrity = integrity;
    // The load-time check is what these tests prove: no canary to catch the filter first.
    spec.canary_stores = 0;
    host.create_pool(spec, &[BackendSpec::new(name), BackendSpec::new("ram")]).unwrap()
}

fn integrity_failure(result: Result<LoadOutcome, OpError>) -> bool {
    matches!(result, Err(OpError::LoadFailed { reason: GetFailure::Integrity, .. }))
}

#[test]
fn a_filter_that_corrupts_pages_causes_failed_loads_never_wrong_bytes() {
    let host = host();
    for (name, encode, decode) in [("bad-decode", "", FLIP), ("bad-encode", FLIP, "")] {
        let pool = filtered_pool(&host, name, &filter(name, encode, decode), true);
        let mut buf = vec![0u8; 4096];
        for o in 0..10u64 {
            assert!(pool.store(o, &tagged_page(o)).is_ok());
        }
        for o in 0..10u64 {
            assert!(integrity_failure(pool.load(o, &mut buf)), "{name}: page {o}");
            assert_ne!(buf, tagged_page(o));
            assert!(buf.iter().all(|&b| b == 0), "{name}: the corrupt bytes are not left in the buffer");
        }
        let c = pool.counters();
        assert_eq!((c.integrity_failures, c.load_failures, c.loads), (10, 10, 0), "{name}: {c:?}");
        assert!(pool.contains(3), "the page stays present: a failure is not a drop");
    }
}

#[test]
fn corruption_that_starts_after_a_hundred_calls_is_caught_from_the_first_bad_load() {
    let host = host();
    let pool = filtered_pool(&host, "late", &filter("late", "", FLIP_AFTER_100), true);
    let mut buf = vec![0u8; 4096];
    for o in 0..150u64 {
        assert!(pool.store(o, &tagged_page(o)).is_ok());
    }
    for o in 0..150u64 {
        let result = pool.load(o, &mut buf);
        if o < 100 {
            assert!(result.is_ok() && buf == tagged_page(o), "decode call {} is honest", o + 1);
        } else {
            assert!(integrity_failure(result), "decode call {} corrupts", o + 1);
        }
    }
    assert_eq!(pool.counters().integrity_failures, 50);
}

#[test]
fn with_integrity_turned_off_the_same_filter_hands_out_wrong_bytes() {
    // The check is what protects: the explicit opt-out shows it.
    let host = host();
    let pool = filtered_pool(&host, "unchecked", &filter("unchecked", "", FLIP), false);
    assert!(!pool.integrity());
    pool.store(1, &tagged_page(1)).unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(pool.load(1, &mut buf).is_ok());
    assert_ne!(buf, tagged_page(1), "an unchecked pool trusts its chain");
}

#[test]
fn a_persistent_pool_checks_its_pages_after_a_restart() {
    let dir = temp_dir("hostile-bitrot");
    let plain = store("plain", r#"["storage"]"#, "", HONEST_DELETE);
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    client.upload_plugin(Some("plain"), &plain).unwrap();
    let backend = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("plain") };
    client.create_pool(&PoolConfig { shards: Some(1), ..PoolConfig::new("disk", vec![backend]) }).unwrap();
    for o in 0..8u64 {
        assert!(stored(&client.put_page("disk", o, &tagged_page(o)).unwrap()));
    }
    assert!(server.stop());
    // Bit rot (or tampering) in page 5's record, behind the host's back.
    let db_dir = std::fs::read_dir(dir.join("pools"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("disk-"))
        .expect("the pool's database");
    {
        let db = sled::open(&db_dir).unwrap();
        let tree = db.open_tree("shard-0").unwrap();
        let mut record = tree.get(5u64.to_be_bytes()).unwrap().expect("page 5's record").to_vec();
        let last = record.len() - 1;
        record[last] ^= 0x40;
        tree.insert(5u64.to_be_bytes(), record).unwrap();
        db.flush().unwrap();
    }
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    let err = client.get_page("disk", 5).unwrap_err();
    assert_eq!(err.code(), Some("load_failed"), "{err}");
    for o in (0..8u64).filter(|&o| o != 5) {
        assert_eq!(client.get_page("disk", o).unwrap(), Some(tagged_page(o)), "page {o}");
    }
    assert_eq!(client.pool("disk").unwrap().counters["integrity_failures"], 1);
}

#[test]
fn sandbox_limits_out_of_range_are_refused_when_the_pool_is_created() {
    let host = host();
    for (memory_bytes, call_timeout_ms) in [(0, 100), (64 << 20, 0), (64 << 20, u64::MAX), (u64::MAX, 100)] {
        let mut config = PoolConfig::new("sandboxed", vec![BackendRequest::new("ram")]);
        config.sandbox = Some(SandboxConfig { memory_bytes, call_timeout_ms });
        let err = host.create_pool_from(&config).unwrap_err().to_string();
        assert!(err.contains("sandbox memory_bytes") && err.contains("60000"), "{err}");
    }
    assert!(host.pools().is_empty(), "nothing half-created");
}

/// `idf` 1 (an honest identity filter) and `idf` 2 (the same, but its decode corrupts from
/// its 101st call on), uploaded to `host`.
fn honest_and_late_corrupting(host: &Host) {
    host.add_plugin(Some("idf"), &filter_version("idf", "1", "", "")).unwrap();
    host.add_plugin(Some("idf"), &filter_version("idf", "2", "", FLIP_AFTER_100)).unwrap();
}

fn idf(version: &str) -> [BackendSpec; 2] {
    [BackendSpec { version: Some(version.into()), ..BackendSpec::new("idf") }, BackendSpec::new("ram")]
}

#[test]
fn a_hot_swap_to_code_that_corrupts_after_100_calls_is_rolled_back_by_its_canary() {
    let host = host();
    honest_and_late_corrupting(&host);
    let mut spec = spec("canary");
    spec.shards = Some(1);
    let pool = host.create_pool(spec, &idf("1")).unwrap();
    for o in 0..300u64 {
        assert_eq!(pool.store(o, &tagged_page(o)).unwrap(), StoreOutcome::Stored);
    }
    let first = pool.canary().expect("a new pool on an uploaded plugin has a canary");
    assert_eq!((first.generation, first.state, first.verified), (1, CanaryState::Passed, 256));

    let patch = PoolPatch {
        backends: Some(
            idf("2")
                .iter()
                .map(|b| BackendRequest { version: b.version.clone(), ..BackendRequest::new(&b.plugin) })
                .collect(),
        ),
        ..Default::default()
    };
    host.update_pool("canary", &patch).unwrap();
    assert_eq!(pool.canary().unwrap().state, CanaryState::Running);
    let mut refused = Vec::new();
    for o in 1000..1300u64 {
        match pool.store(o, &tagged_page(o)).unwrap() {
            StoreOutcome::Stored => {}
            StoreOutcome::Rejected(reason) => refused.push((o, reason)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, [(1100, RejectReason::PluginFault)], "only the store whose read-back was wrong");
    let canary = pool.canary().unwrap();
    assert_eq!((canary.generation, canary.state, canary.verified), (2, CanaryState::RolledBack, 100));
    assert_eq!(canary.previous.as_ref().map(|g| g.id), Some(1));
    assert_eq!(canary.replaced_by, Some(3), "the previous chain runs again, as generation 3");
    assert!(canary.reason.as_deref().unwrap().contains("read back different bytes"), "{canary:?}");
    assert_eq!(pool.chain().links()[0].module.manifest().version, "1");
    assert_eq!(pool.counters().canary_rollbacks, 1);
    // No wrong byte, ever: pages the bad code stored before it went bad fail their loads
    // (its decode still corrupts) or load exactly; everything else loads exactly.
    let mut buf = vec![0u8; 4096];
    for o in (0..300u64).chain(1000..1300) {
        match pool.load(o, &mut buf) {
            Ok(LoadOutcome::Loaded { .. }) => assert_eq!(buf, tagged_page(o), "page {o}"),
            Ok(LoadOutcome::Absent) => assert_eq!(o, 1100, "only the refused page is absent"),
            Err(e) => {
                assert!((1000..1100).contains(&o), "page {o}: {e}");
                assert!(integrity_failure(Err(e)));
            }
        }
    }
}

#[test]
fn a_new_pool_whose_canary_fails_takes_no_more_stores() {
    let host = host();
    honest_and_late_corrupting(&host);
    let mut spec = spec("stillborn");
    spec.shards = Some(1);
    let pool = host.create_pool(spec, &idf("2")).unwrap();
    let outcomes: Vec<StoreOutcome> = (0..110u64).map(|o| pool.store(o, &tagged_page(o)).unwrap()).collect();
    assert!(outcomes[..100].iter().all(|o| *o == StoreOutcome::Stored));
    assert_eq!(outcomes[100], StoreOutcome::Rejected(RejectReason::PluginFault));
    assert!(outcomes[101..].iter().all(|o| *o == StoreOutcome::Rejected(RejectReason::Disabled)));
    let canary = pool.canary().unwrap();
    assert_eq!((canary.state, canary.previous.is_none()), (CanaryState::Disabled, true));
    assert!(!pool.enabled());
}

#[test]
fn a_rollback_is_shown_by_the_api_and_kept_across_a_restart() {
    let dir = temp_dir("hostile-canary");
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    client.upload_plugin(Some("idf"), &filter_version("idf", "1", "", "")).unwrap();
    client.upload_plugin(Some("idf"), &filter_version("idf", "2", "", FLIP_AFTER_100)).unwrap();
    let link = |version: &str| BackendRequest { version: Some(version.into()), ..BackendRequest::new("idf") };
    let config = PoolConfig { shards: Some(1), ..PoolConfig::new("c", vec![link("1"), BackendRequest::new("ram")]) };
    client.create_pool(&config).unwrap();
    let patch = PoolPatch { backends: Some(vec![link("2"), BackendRequest::new("ram")]), ..Default::default() };
    client.update_pool("c", &patch).unwrap();
    let outcomes: Vec<String> =
        (0..120u64).map(|o| client.put_page("c", o, &tagged_page(o)).unwrap().outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "rejected").count(), 1, "{outcomes:?}");
    let info = client.pool("c").unwrap();
    let canary = info.canary.expect("the canary is shown");
    assert_eq!(
        (canary.state.as_str(), canary.generation, canary.previous, canary.replaced_by),
        ("rolled_back", 2, Some(1), Some(3))
    );
    assert!(canary.reason.unwrap().contains("read back"));
    assert_eq!(info.backends[0].version, "1");
    assert_eq!(info.counters["canary_rollbacks"], 1);
    assert!(server.stop());
    let server = ServeProcess::start(&dir, &[]);
    assert_eq!(server.client().pool("c").unwrap().backends[0].version, "1", "the catalog kept the rollback");
}

#[test]
fn bad_pointers_and_lengths_on_every_import_are_plugin_faults_that_harm_nothing() {
    let server = ServeProcess::start(&temp_dir("hostile-pointers"), &[]);
    let client = server.client();
    client.create_pool(&PoolConfig::new("bystander", vec![BackendRequest::new("ram")])).unwrap();
    for o in 0..8 {
        assert!(stored(&client.put_page("bystander", o, &tagged_page(o)).unwrap()));
    }
    let memory_end = 4 * 65536;
    let cases = [
        ("put-ptr-out", format!("(drop (call $put (local.get $o) (i32.const {}) (i32.const 4096)))", memory_end - 100)),
        ("put-ptr-negative", "(drop (call $put (local.get $o) (i32.const -1) (i32.const 4096)))".to_string()),
        ("put-len-negative", "(drop (call $put (local.get $o) (i32.const 0) (i32.const -1)))".to_string()),
        ("put-len-huge", "(drop (call $put (local.get $o) (i32.const 65536) (i32.const 0x7fffffff)))".to_string()),
        (
            "get-buffer-out",
            format!("(drop (call $get (local.get $o) (i32.const {}) (i32.const 8192)))", memory_end - 100),
        ),
        ("get-cap-negative", "(drop (call $get (local.get $o) (i32.const 0) (i32.const -5)))".to_string()),
        ("log-ptr-out", format!("(call $log (i32.const 1) (i32.const {memory_end}) (i32.const 50))")),
        ("log-ptr-negative", "(call $log (i32.const 1) (i32.const -100) (i32.const 50))".to_string()),
        ("connect-address-out", format!("(drop (call $connect (i32.const {memory_end}) (i32.const 20)))")),
        (
            "send-buffer-out",
            format!("(drop (call $send (i32.const 0) (i32.const {}) (i32.const 100)))", memory_end - 10),
        ),
        ("recv-cap-negative", "(drop (call $recv (i32.const 0) (i32.const 0) (i32.const -1)))".to_string()),
        ("trap-always", "(unreachable)".to_string()),
    ];
    let before = rss(server.child.id());
    for (name, bad_call) in &cases {
        let net = bad_call.contains("$connect") || bad_call.contains("$send") || bad_call.contains("$recv");
        let (wasm, backend) = if net {
            let wasm = store_with_config(name, r#"["network"]"#, NET_CONFIG, bad_call, HONEST_DELETE, "");
            let backend = BackendRequest {
                grants: vec!["network".into()],
                ..BackendRequest::with_config(name, serde_json::json!({"endpoints": ["tmem://127.0.0.1:9/x"]}))
            };
            (wasm, backend)
        } else {
            (store(name, "[]", bad_call, HONEST_DELETE), BackendRequest::new(name))
        };
        client.upload_plugin(Some(name), &wasm).unwrap();
        let config = PoolConfig { canary_stores: 0, ..PoolConfig::new(name, vec![backend]) };
        client.create_pool(&config).unwrap();
        for o in 0..20u64 {
            let result = client.put_page(name, o, &tagged_page(o)).unwrap();
            assert_eq!(result.reason.as_deref(), Some("reject_plugin_fault"), "{name}: {result:?}");
        }
        let pool = client.pool(name).unwrap();
        assert_eq!((pool.counters["stored_pages"], pool.counters["pool_total_size"]), (0, 0), "{name}");
        assert!(pool.counters["plugin_faults"] >= 1, "{name}: {:?}", pool.counters);
        assert!(pool.last_fault.is_some(), "{name}: the fault is reported");
    }
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown < 64 * MIB, "{} hostile pools grew the host by {} MiB", cases.len(), grown / MIB);
    println!(
        "bad pointers: host RSS grew {:.1} MiB over {} hostile pools x 20 stores",
        grown as f64 / MIB as f64,
        cases.len()
    );
    for o in 0..8 {
        assert_eq!(client.get_page("bystander", o).unwrap(), Some(tagged_page(o)), "other pools untouched");
    }
    assert!(stored(&client.put_page("bystander", 100, &tagged_page(100)).unwrap()));
}

#[test]
fn instance_slots_are_reserved_per_pool_and_given_back_by_generations_without_pages() {
    // 48 slots, 8 of them the host's own: pools may reserve 40.
    let engine = tmem_host::plugin::EngineOptions { max_instances: 48, ..Default::default() };
    let host = Host::new(tmem_host::HostConfig { engine, ..Default::default() }).unwrap();
    let slots = host.engine().slots().clone();
    assert_eq!(slots.limit(), 40);
    let sized = |name: &str, shards: usize| {
        let mut spec = spec(name);
        spec.shards = Some(shards);
        spec
    };
    let zstd = |level: i64| {
        vec![BackendSpec::with_config("zstd", serde_json::json!({ "level": level })), BackendSpec::new("ram")]
    };
    // 16 shards × 2 plugins.
    let big = host.create_pool(sized("big", 16), &zstd(1)).unwrap();
    assert_eq!((big.instance_slots(), slots.reserved()), (32, 32));
    // Another 16 do not fit: refused, naming the limit, and nothing is held for it.
    let err = host.create_pool(sized("more", 16), &[BackendSpec::new("ram")]).unwrap_err().to_string();
    assert!(
        err.contains("needs 16 instance slots") && err.contains("8 of 40 are free") && err.contains("--max-instances"),
        "{err}"
    );
    assert_eq!(slots.reserved(), 32);
    assert!(host.pool("more").is_err());
    // A hot swap needs a second set while the first generation holds pages: refused too.
    for o in 0..64u64 {
        big.store(o, &tagged_page(o)).unwrap();
    }
    let patch = PoolPatch {
        backends: Some(vec![
            BackendRequest::with_config("zstd", serde_json::json!({"level": 3})),
            BackendRequest::new("ram"),
        ]),
        ..Default::default()
    };
    let err = host.update_pool("big", &patch).unwrap_err().to_string();
    assert!(err.contains("instance slots"), "{err}");
    assert_eq!(big.generations().len(), 1, "nothing swapped");
    // A destroyed pool gives its slots back.
    let small = host.create_pool(sized("small", 4), &zstd(1)).unwrap();
    assert_eq!(slots.reserved(), 40);
    host.destroy_pool("small").unwrap();
    drop(small);
    assert_eq!(slots.reserved(), 32);
    host.destroy_pool("big").unwrap();
    drop(big);
    assert_eq!(slots.reserved(), 0);
    // A generation whose pages are all gone gives its slots back.
    let p = host.create_pool(sized("p", 4), &zstd(1)).unwrap();
    for o in 0..64u64 {
        p.store(o, &tagged_page(o)).unwrap();
    }
    host.update_pool("p", &patch).unwrap();
    assert_eq!((p.instance_slots(), slots.reserved()), (16, 16), "two generations, 4 shards x 2 plugins each");
    for o in 0..64u64 {
        assert!(p.invalidate_page(o).unwrap());
    }
    assert_eq!((p.instance_slots(), slots.reserved()), (8, 8), "the old generation's slots came back");
    p.store(1, &tagged_page(1)).unwrap();
    assert_eq!(slots.reserved(), 8);
}

#[test]
fn a_store_whose_endpoint_resolves_slowly_or_never_is_bounded_by_its_deadline() {
    let config = NET_CONFIG;
    // Its put connects to a granted name that does not resolve (or resolves slowly: the
    // system resolver may wait on an unreachable server), then keeps its page.
    let name = "slow-name.invalid:7001";
    let connect = format!(r#"(drop (call $connect (i32.const 2048) (i32.const {len})))"#, len = name.len());
    let address = format!(r#"(data (i32.const 2048) "{name}")"#);
    let wasm = store_with_config("slowdns", r#"["network"]"#, config, &connect, HONEST_DELETE, &address);
    let host = host();
    host.add_plugin(Some("slowdns"), &wasm).unwrap();
    let mut spec = spec("slowdns");
    spec.shards = Some(1);
    spec.canary_stores = 0;
    spec.sandbox.call_timeout = std::time::Duration::from_millis(200);
    let backend = BackendSpec {
        // TLS (a plain endpoint beyond loopback is refused); the name is resolved before it.
        config: serde_json::json!({"endpoints": [format!("tmems://{name}/x")], "timeout_ms": 100}),
        grants: vec!["network".into()],
        ..BackendSpec::new("slowdns")
    };
    let pool = host.create_pool(spec, &[backend]).unwrap();
    let started = std::time::Instant::now();
    for o in 0..5u64 {
        pool.store(o, &tagged_page(o)).unwrap();
    }
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "5 stores took {took:?} with a 300 ms deadline each");
}
