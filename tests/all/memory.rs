//! The host's memory budget, on a real `tmem serve`: `--memory-limit` bounds what in-memory
//! pools keep (stores past it are refused, the frontend keeps the page, nothing stored is
//! lost), the budget is reported by the API, `/metrics` and every stats sample, and it changes
//! at run time.

use tmem_api::client::ClientError;
use tmem_api::rest::{BackendRequest, MemoryPatch, PoolConfig};
use tmem_host::workload;

use crate::common::{ServeProcess, rss, temp_dir};

const MIB: u64 = 1 << 20;

/// A page that does not compress (the `ram` store keeps it whole).
fn page(i: u64) -> Vec<u8> {
    workload::page(0x6d656d, i, 4096)
}

#[test]
fn the_budget_bounds_stored_pages_and_changes_at_run_time() {
    let server = ServeProcess::start(&temp_dir("memory-budget"), &["--memory-limit", "32M"]);
    let client = server.client();
    let memory = client.memory().unwrap();
    assert_eq!(memory.limit_bytes, Some(32 * MIB));
    assert!(memory.used_bytes <= 32 * MIB && memory.headroom_bytes > 0, "{memory:?}");
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let before = rss(server.child.id());

    // Store until the budget refuses (the grower may refill the headroom a few times).
    let mut stored = 0u64;
    let mut refused = 0u64;
    for i in 0..12_000u64 {
        let result = client.put_page("p", i, &page(i)).unwrap();
        match result.outcome.as_str() {
            "stored" => stored += 1,
            "rejected" => {
                assert_eq!(result.reason.as_deref(), Some("reject_alloc_fail"), "{result:?}");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    let memory = client.memory().unwrap();
    assert!(refused > 0, "32 MiB cannot hold 12,000 4 KiB pages: {memory:?}");
    assert!(memory.used_bytes <= 32 * MIB, "{memory:?}");
    assert!(memory.stored_bytes == stored * 4096 && memory.objects == stored, "{memory:?} for {stored} pages");
    assert!(stored >= 6_000, "most of the budget holds pages: {stored} stored, {memory:?}");
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown <= 40 * MIB, "the host grew by {} MiB for a 32 MiB budget", grown / MIB);
    // Every acknowledged page reads back; the refused ones are absent.
    let pool = client.pool("p").unwrap();
    assert_eq!(pool.counters["stored_pages"], stored);
    for i in (0..12_000u64).step_by(97) {
        if let Some(bytes) = client.get_page("p", i).unwrap() {
            assert_eq!(bytes, page(i), "page {i}");
        }
    }

    // The budget in /metrics and in the stats sample.
    let metrics = client.request("GET", "/metrics", None, false).unwrap().1;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains(&format!("tmem_memory_limit_bytes {}", 32 * MIB)), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("tmem_memory_refused_total ") && !l.ends_with(" 0")));
    assert_eq!(client.stats().unwrap().host.memory.limit_bytes, Some(32 * MIB));

    // Raised at run time: stores are accepted again.
    let raised = client.set_memory(&MemoryPatch { limit_bytes: Some(64 * MIB), ..Default::default() }).unwrap();
    assert_eq!(raised.limit_bytes, Some(64 * MIB));
    let mut accepted = false;
    for attempt in 0..200 {
        if client.put_page("p", 20_000 + attempt, &page(attempt)).unwrap().outcome == "stored" {
            accepted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(accepted, "a raised budget takes stores again");

    // Bad patches are refused with the reason; the budget stays.
    for bad in [
        MemoryPatch::default(),
        MemoryPatch { limit_bytes: Some(MIB), ..Default::default() },
        MemoryPatch { limit_percent: Some(0), ..Default::default() },
        MemoryPatch { limit_bytes: Some(64 * MIB), unlimited: true, ..Default::default() },
    ] {
        match client.set_memory(&bad) {
            Err(ClientError::Api { status: 400, code, .. }) => assert_eq!(code, "invalid_memory_limit"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(client.memory().unwrap().limit_bytes, Some(64 * MIB));
    let unlimited = client.set_memory(&MemoryPatch { unlimited: true, ..Default::default() }).unwrap();
    assert_eq!(unlimited.limit_bytes, None);
}

#[test]
fn a_bad_memory_limit_is_refused_at_start() {
    let dir = temp_dir("memory-bad-flag");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["serve", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0", "--memory-limit", "0%"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("say `none` for no limit"), "{out:?}");
}

#[test]
fn fragmentation_is_bounded_after_a_random_half_is_invalidated_and_other_sizes_refill() {
    use tmem_host::memory::arena::ArenaStats;
    let host = tmem_host::Host::new(tmem_host::HostConfig::default()).unwrap();
    let pool = host.create_pool(tmem_host::PoolSpec::new("frag"), &[tmem_host::BackendSpec::new("ram")]).unwrap();
    let record = |o: u64, len: usize| workload::page(0xf7a9, o, 4096)[..len].to_vec();
    // Fill with 700-byte records, invalidate a random half, refill with 1500-byte ones.
    for o in 0..40_000u64 {
        pool.store_record(o, &record(o, 700)).unwrap();
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut kept = Vec::new();
    for o in 0..40_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x & 1 == 0 {
            assert!(pool.invalidate_page(o).unwrap());
        } else {
            kept.push(o);
        }
    }
    for o in 100_000..120_000u64 {
        pool.store_record(o, &record(o, 1500)).unwrap();
    }
    // What the arena's runs hold, against the live stored bytes and the index.
    let ratio = |s: ArenaStats| s.run_bytes as f64 / (s.object_bytes + s.index_chunk_bytes + s.index_heap_bytes) as f64;
    let before = host.page_arena().stats();
    assert!(ratio(before) > 1.25, "half-empty runs of the first size: the bound fails without compaction: {before:?}");
    let report = host.compact_memory();
    let after = host.page_arena().stats();
    assert!(ratio(after) <= 1.25, "{:.2} after {report:?}: {after:?}", ratio(after));
    assert!(report.moved > 0 && report.freed_bytes > 0, "{report:?}");
    // Every record is still there, byte for byte, and the pool goes on storing.
    for &o in &kept {
        assert_eq!(pool.load_record(o).unwrap(), Some(record(o, 700)), "record {o}");
    }
    for o in 100_000..120_000u64 {
        assert_eq!(pool.load_record(o).unwrap(), Some(record(o, 1500)), "record {o}");
    }
    pool.store_record(7, &record(7, 900)).unwrap();
    assert_eq!(pool.load_record(7).unwrap(), Some(record(7, 900)));
    println!("fragmentation: {:.2} -> {:.2} ({report:?})", ratio(before), ratio(after));
}

#[test]
fn a_persistent_pools_database_cache_is_charged_to_the_budget() {
    let server = ServeProcess::start(&temp_dir("memory-cache"), &["--memory-limit", "64M"]);
    let client = server.client();
    let sled = || BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    // 64 MiB of cache cannot fit a 64 MiB budget that already holds the arena's headroom.
    let err = client.create_pool(&PoolConfig::new("disk", vec![sled()])).unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("memory_budget")), "{err}");
    assert!(err.to_string().contains("--memory-limit"), "{err}");
    assert!(client.pools().unwrap().is_empty(), "nothing half-created");
    client.set_memory(&MemoryPatch { limit_bytes: Some(256 * MIB), ..Default::default() }).unwrap();
    let before = client.memory().unwrap().used_bytes;
    client.create_pool(&PoolConfig::new("disk", vec![sled()])).unwrap();
    let with_pool = client.memory().unwrap().used_bytes;
    assert!(with_pool >= before + 64 * MIB, "{before} -> {with_pool}");
    client.remove_pool("disk").unwrap();
    let after = client.memory().unwrap().used_bytes;
    assert!(after + 64 * MIB <= with_pool, "destroying the pool gives the cache back: {with_pool} -> {after}");
}
