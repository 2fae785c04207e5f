//! Misbehaving plugins (the `misbehave` fixture, built from `plugins/misbehave`): each fault
//! gets its specific error, the host keeps serving other pools, and acknowledged pages survive.

use std::time::{Duration, Instant};

use serde_json::json;
use tmem_host::plugin::EngineOptions;
use tmem_host::{BackendSpec, Host, HostConfig, LoadOutcome, MemoryLimit, OpError, Pool, RejectReason, StoreOutcome};

use crate::common::{host, register_misbehave, spec, tagged_page};

fn misbehaving_pool(host: &Host, name: &str, config: serde_json::Value, with_zstd: bool) -> std::sync::Arc<Pool> {
    let mode = config["mode"].as_str().map(str::to_string);
    let mut chain = vec![BackendSpec::with_config("misbehave", config)];
    if with_zstd {
        chain.insert(0, BackendSpec::new("zstd"));
    }
    let mut spec = spec(name);
    spec.shards = Some(1); // one instance, so call counts are predictable
    // No canary: its read-backs would be calls too (the canary's own tests are in hostile.rs).
    spec.canary_stores = 0;
    spec.sandbox.call_timeout = match mode.as_deref() {
        // The deadline is the point: keep it short so the test is quick.
        Some("loop") => Duration::from_millis(50),
        // A memory bomb must meet its memory cap, not its deadline: faulting 16 MiB in can take
        // long on a loaded machine.
        Some("bomb") => Duration::from_secs(10),
        _ => spec.sandbox.call_timeout,
    };
    host.create_pool(spec, &chain).unwrap()
}

fn load(pool: &Pool, offset: u64) -> Result<Option<Vec<u8>>, OpError> {
    let mut page = vec![0; 4096];
    Ok(match pool.load(offset, &mut page)? {
        LoadOutcome::Absent => None,
        LoadOutcome::Loaded { .. } => Some(page),
    })
}

/// A healthy pool on the same host, checked after each fault.
fn healthy(host: &Host) -> std::sync::Arc<Pool> {
    let pool = host.create_pool(spec("healthy"), &[BackendSpec::new("zstd"), BackendSpec::new("ram")]).unwrap();
    pool.store(1, &tagged_page(1)).unwrap();
    pool
}

fn assert_still_serving(pool: &Pool, round: u64) {
    assert_eq!(pool.store(round + 100, &tagged_page(round)).unwrap(), StoreOutcome::Stored);
    assert_eq!(load(pool, round + 100).unwrap(), Some(tagged_page(round)));
    assert_eq!(load(pool, 1).unwrap(), Some(tagged_page(1)));
}

#[test]
fn each_kind_of_fault_on_store_is_reported_as_itself_and_loses_no_page() {
    let host = host();
    register_misbehave(&host);
    let other = healthy(&host);
    let cases = [("loop", "deadline"), ("bomb", "memory_cap"), ("trap", "trap")];
    for (round, (mode, kind)) in cases.into_iter().enumerate() {
        for with_zstd in [false, true] {
            let name = format!("{mode}-{with_zstd}");
            let pool = misbehaving_pool(&host, &name, json!({"mode": mode, "op": "put", "after": 3}), with_zstd);
            for i in 0..3 {
                assert_eq!(pool.store(i, &tagged_page(i)).unwrap(), StoreOutcome::Stored);
            }
            let started = Instant::now();
            assert_eq!(
                pool.store(3, &tagged_page(3)).unwrap(),
                StoreOutcome::Rejected(RejectReason::PluginFault),
                "{name}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "{name}: the fault took {:?}", started.elapsed());
            let fault = pool.last_fault().expect("fault recorded");
            assert_eq!((fault.plugin.as_str(), fault.kind), ("misbehave", kind), "{name}: {}", fault.message);
            let c = pool.counters();
            assert_eq!((c.plugin_faults, c.reject_plugin_fault, c.failed_stores), (1, 1, 1), "{name}");
            // Every acknowledged page survives the dropped instance.
            for i in 0..3 {
                assert_eq!(load(&pool, i).unwrap(), Some(tagged_page(i)), "{name}: page {i} lost");
            }
            assert_eq!(load(&pool, 3).unwrap(), None);
            // A fresh instance serves stores again (its call count starts over).
            assert_eq!(pool.store(4, &tagged_page(4)).unwrap(), StoreOutcome::Stored, "{name}");
            assert_eq!(pool.counters().instance_restarts, 1, "{name}");
            assert_still_serving(&other, round as u64 * 2 + with_zstd as u64);
            host.destroy_pool(&name).unwrap();
        }
    }
}

/// Issue 14: plugin instances' linear memories are charged to the host's memory budget — a
/// plugin whose own cap is far above the budget still cannot make the host hold more.
#[test]
fn a_plugin_cannot_grow_the_host_past_its_memory_budget() {
    const MIB: u64 = 1 << 20;
    let host = Host::new(HostConfig {
        memory_limit: MemoryLimit::Bytes(96 * MIB),
        engine: EngineOptions { max_instances: 200, ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    register_misbehave(&host);
    let budget = host.memory_budget().clone();
    assert_eq!(budget.plugin_bytes(), 0, "no pool, no instance");
    let mut spec = spec("bomb");
    spec.shards = Some(1);
    spec.canary_stores = 0;
    spec.sandbox.memory_bytes = 512 << 20; // the plugin's own cap would allow 512 MiB
    spec.sandbox.call_timeout = Duration::from_secs(10);
    let config = json!({"mode": "bomb", "op": "put", "after": 3});
    let pool = host.create_pool(spec, &[BackendSpec::with_config("misbehave", config)]).unwrap();
    let started = budget.plugin_bytes();
    assert!(started >= 64 << 10, "the instance's memory is charged: {started} bytes");
    for i in 0..3 {
        assert_eq!(pool.store(i, &tagged_page(i)).unwrap(), StoreOutcome::Stored);
    }
    // The fourth store hoards 1 MiB blocks until the budget, not the cap, stops it.
    assert_eq!(pool.store(3, &tagged_page(3)).unwrap(), StoreOutcome::Rejected(RejectReason::PluginFault));
    let fault = pool.last_fault().expect("fault recorded");
    assert_eq!(fault.kind, "memory_budget", "{}", fault.message);
    assert!(budget.refused() > 0);
    assert!(budget.used() <= budget.limit(), "{} bytes held of {}", budget.used(), budget.limit());
    assert!(budget.plugin_bytes() <= started, "the faulted instance gave its memory back: {}", budget.plugin_bytes());
    for i in 0..3 {
        assert_eq!(load(&pool, i).unwrap(), Some(tagged_page(i)), "page {i} lost");
    }
    // A fresh instance serves again, within the budget.
    assert_eq!(pool.store(4, &tagged_page(4)).unwrap(), StoreOutcome::Stored);
    drop(pool);
    host.destroy_pool("bomb").unwrap();
    assert_eq!(budget.plugin_bytes(), 0, "a destroyed pool's instances are given back");
}

/// A new pool whose instances would overdraw the budget is refused, and holds nothing.
#[test]
fn a_pool_whose_instances_overdraw_the_budget_is_refused() {
    const MIB: u64 = 1 << 20;
    let host = Host::new(HostConfig { memory_limit: MemoryLimit::Bytes(32 * MIB), ..Default::default() }).unwrap();
    let budget = host.memory_budget().clone();
    let mut many = spec("many");
    many.shards = Some(64);
    let err = host.create_pool(many, &[BackendSpec::new("zstd"), BackendSpec::new("ram")]).unwrap_err();
    assert!(matches!(err, tmem_host::HostError::BudgetForPlugins { .. }), "{err}");
    assert!(err.to_string().contains("plugin instances"), "{err}");
    assert_eq!(budget.plugin_bytes(), 0, "nothing held after the refusal");
    assert!(host.pool("many").is_err());
    let mut few = spec("few");
    few.shards = Some(1);
    host.create_pool(few, &[BackendSpec::new("zstd"), BackendSpec::new("ram")]).unwrap();
    assert!(budget.plugin_bytes() > 0 && budget.used() <= budget.limit());
}

#[test]
fn a_faulting_duplicate_store_still_drops_the_old_page() {
    let host = host();
    register_misbehave(&host);
    let pool = misbehaving_pool(&host, "dup", json!({"mode": "trap", "op": "put", "after": 1}), true);
    assert_eq!(pool.store(7, &tagged_page(1)).unwrap(), StoreOutcome::Stored);
    assert_eq!(pool.store(7, &tagged_page(2)).unwrap(), StoreOutcome::Rejected(RejectReason::PluginFault));
    assert_eq!(load(&pool, 7).unwrap(), None, "stale data after a faulting duplicate store");
    assert_eq!(pool.counters().pool_total_size, 0, "nothing leaked in the page store");
}

#[test]
fn a_load_fault_is_retried_once_on_a_fresh_instance() {
    let host = host();
    register_misbehave(&host);
    // get #2 of every instance traps: the retry (get #1 of a fresh instance) succeeds.
    let pool = misbehaving_pool(&host, "retry", json!({"mode": "trap", "op": "get", "after": 1}), true);
    pool.store(1, &tagged_page(1)).unwrap();
    assert_eq!(load(&pool, 1).unwrap(), Some(tagged_page(1)));
    assert_eq!(load(&pool, 1).unwrap(), Some(tagged_page(1)), "retried on a fresh instance");
    let c = pool.counters();
    assert_eq!((c.plugin_faults, c.instance_restarts, c.load_failures, c.loads), (1, 1, 0, 2));
}

#[test]
fn a_load_that_keeps_faulting_is_a_loud_load_failure_and_the_page_stays() {
    let host = host();
    register_misbehave(&host);
    let pool = misbehaving_pool(&host, "lost", json!({"mode": "loop", "op": "get"}), false);
    pool.store(1, &tagged_page(1)).unwrap();
    let started = Instant::now();
    let err = load(&pool, 1).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "two deadlines, not a hang: {:?}", started.elapsed());
    assert!(matches!(err, OpError::LoadFailed { offset: 1, .. }), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    let c = pool.counters();
    assert_eq!((c.load_failures, c.plugin_faults, c.loads), (1, 2, 0));
    assert!(pool.contains(1), "the page is still present: the failure may be transient");
    // Loads of absent pages never call the plugin at all.
    assert_eq!(load(&pool, 2).unwrap(), None);
    assert_eq!(pool.counters().plugin_faults, 2);
}

#[test]
fn an_invalidate_whose_plugin_faults_still_happens() {
    let host = host();
    register_misbehave(&host);
    let pool = misbehaving_pool(&host, "inv", json!({"mode": "trap", "op": "delete"}), false);
    pool.store(1, &tagged_page(1)).unwrap();
    pool.store(2, &tagged_page(2)).unwrap();
    assert!(pool.invalidate_page(1).unwrap());
    assert_eq!(load(&pool, 1).unwrap(), None);
    assert_eq!(pool.counters().pool_total_size, 4096, "the host dropped the bytes itself");
    assert_eq!(load(&pool, 2).unwrap(), Some(tagged_page(2)));
}

#[test]
fn repeated_faults_back_off_instead_of_spinning() {
    let host = host();
    register_misbehave(&host);
    let pool = misbehaving_pool(&host, "backoff", json!({"mode": "trap", "op": "put"}), false);
    for i in 0..tmem_host::chain::BACKOFF_AFTER as u64 {
        assert_eq!(pool.store(i, &tagged_page(i)).unwrap(), StoreOutcome::Rejected(RejectReason::PluginFault));
    }
    let faults = pool.counters().plugin_faults;
    assert_eq!(pool.store(9, &tagged_page(9)).unwrap(), StoreOutcome::Rejected(RejectReason::PluginFault));
    assert_eq!(pool.counters().plugin_faults, faults, "during the backoff the plugin is not called");
}

#[test]
fn a_plugin_that_refuses_its_config_fails_pool_creation() {
    let host = host();
    register_misbehave(&host);
    let err = host
        .create_pool(spec("refused"), &[BackendSpec::with_config("misbehave", json!({"mode": "fail_init"}))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused its config") && err.contains("refusing to start"), "{err}");
    assert!(host.pool("refused").is_err());
}

#[test]
fn statistics_readers_never_wait_on_a_plugin_call() {
    // A shard is locked across each plugin call, and a call may last its whole deadline (a
    // remote store's may last its timeout): the pool's page, the dashboard's samples and
    // /metrics must answer meanwhile, from what the shard held when last seen free.
    let server = crate::common::ServeProcess::start(&crate::common::temp_dir("faults-readers"), &[]);
    let client = server.client();
    let wasm = tmem_host::bundled::built("tmem_plugin_misbehave").expect("fixture was built by host/build.rs");
    client.upload_plugin(None, &wasm).unwrap();
    let looping = tmem_api::rest::BackendRequest {
        config: json!({"mode": "loop", "op": "put", "after": 1}),
        ..tmem_api::rest::BackendRequest::new("misbehave")
    };
    let mut config = tmem_api::rest::PoolConfig::new("slow", vec![looping]);
    config.shards = Some(1);
    config.canary_stores = 0;
    config.sandbox = Some(tmem_api::rest::SandboxConfig { memory_bytes: 64 << 20, call_timeout_ms: 4000 });
    client.create_pool(&config).unwrap();
    assert_eq!(client.put_page("slow", 1, &tagged_page(1)).unwrap().outcome, "stored");
    let shown = client.pool("slow").unwrap();

    let url = server.url.clone();
    let token = server.token.clone();
    let slow_store = std::thread::spawn(move || {
        let client = tmem_api::client::Client::new(&url, Some(token));
        client.put_page("slow", 2, &tagged_page(2)).map(|r| r.outcome)
    });
    // Give the store time to enter its call (it then holds the shard for ≥ 4 s).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let info = client.pool("slow").unwrap();
    let stats = client.stats().unwrap();
    let metrics = client.metrics().unwrap();
    assert!(!slow_store.is_finished(), "the readers answered while the plugin call still held the shard");
    assert_eq!(info.generations.len(), shown.generations.len());
    assert_eq!(info.generations[0].pages, 1, "the shard as last seen: one page");
    assert!(stats.pools.iter().any(|p| p.name == "slow"));
    assert!(metrics.contains("pool=\"slow\""));
    // The looping call ends at its deadline: the store is refused, nothing is lost.
    let outcome = slow_store.join().unwrap().unwrap();
    assert_ne!(outcome, "stored");
    assert_eq!(client.get_page("slow", 1).unwrap(), Some(tagged_page(1)));
}
