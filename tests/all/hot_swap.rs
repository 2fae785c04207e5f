//! Hot swap: a pool's plugin replaced by another version while it serves, and back. The
//! fixture `versioned` (plugins/versioned-v1 and -v2) stores pages in a different format per
//! version and refuses the other's, so a page read through the wrong version fails loudly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch};
use tmem_host::stats::Op;
use tmem_host::workload::Rng;
use tmem_host::{BackendSpec, LoadOutcome, StoreOutcome};

use crate::common::{ServeProcess, host, spec, tagged_page, temp_dir};

fn versioned(version: &str) -> BackendSpec {
    BackendSpec { version: Some(version.into()), ..BackendSpec::new("versioned") }
}

fn register_both_versions(host: &tmem_host::Host) {
    for fixture in ["tmem_plugin_versioned_v1", "tmem_plugin_versioned_v2"] {
        host.add_plugin(None, &tmem_host::bundled::built(fixture).unwrap()).unwrap();
    }
}

/// A page that names its offset and its version number, so a stale or torn page shows.
fn page(offset: u64, version: u64) -> Vec<u8> {
    tagged_page((offset << 32) | version)
}

#[test]
fn swapping_versions_under_concurrent_load_loses_and_misreads_nothing() {
    const THREADS: u64 = 4;
    const OFFSETS_PER_THREAD: u64 = 256;
    let host = Arc::new(host());
    register_both_versions(&host);
    let pool = host.create_pool(spec("swap"), &[versioned("1.0.0"), BackendSpec::new("ram")]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, stop, operations) = (pool.clone(), stop.clone(), operations.clone());
            std::thread::spawn(move || {
                // This thread owns offsets t, t + THREADS, ...: its model is the truth for them.
                let offsets: Vec<u64> = (0..OFFSETS_PER_THREAD).map(|i| i * THREADS + t).collect();
                let mut model: Vec<Option<u64>> = vec![None; offsets.len()];
                let mut rng = Rng::new(t + 1);
                let mut buf = vec![0u8; 4096];
                let mut version = 0;
                while !stop.load(Ordering::Relaxed) {
                    let i = (rng.below(offsets.len() as u64)) as usize;
                    let offset = offsets[i];
                    match rng.below(10) {
                        0..=4 => {
                            version += 1;
                            match pool.store(offset, &page(offset, version)).unwrap() {
                                StoreOutcome::Stored => model[i] = Some(version),
                                other => panic!("store refused: {other:?}"),
                            }
                        }
                        5..=8 => match (pool.load(offset, &mut buf), model[i]) {
                            (Ok(LoadOutcome::Loaded { .. }), Some(v)) => {
                                assert!(buf == page(offset, v), "offset {offset}: not the latest stored version {v}")
                            }
                            (Ok(LoadOutcome::Absent), None) => {}
                            (other, expected) => panic!("offset {offset}: load gave {other:?}, expected {expected:?}"),
                        },
                        _ => {
                            assert_eq!(pool.invalidate_page(offset).unwrap(), model[i].is_some());
                            model[i] = None;
                        }
                    }
                    operations.fetch_add(1, Ordering::Relaxed);
                }
                (offsets, model)
            })
        })
        .collect();

    // Swap back and forth while the workers run: v1 → v2 → v1 → v2 ...
    let mut generations_seen = 0;
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(150));
        let version = if round % 2 == 0 { "2.0.0" } else { "1.0.0" };
        let patch =
            PoolPatch { backends: Some(vec![versioned(version), BackendRequest::new("ram")]), ..Default::default() };
        host.update_pool("swap", &patch).unwrap();
        generations_seen = generations_seen.max(pool.generations().len());
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);

    let mut present = 0;
    let mut buf = vec![0u8; 4096];
    for worker in workers {
        let (offsets, model) = worker.join().expect("a worker saw a lost or misread page");
        for (offset, expected) in offsets.into_iter().zip(model) {
            match expected {
                Some(v) => {
                    assert_eq!(pool.load(offset, &mut buf).unwrap(), LoadOutcome::Loaded { exclusive: false });
                    assert!(buf == page(offset, v), "offset {offset} after the swaps");
                    present += 1;
                }
                None => assert_eq!(pool.load(offset, &mut buf).unwrap(), LoadOutcome::Absent),
            }
        }
    }
    let counters = pool.counters();
    assert_eq!(counters.load_failures, 0);
    assert_eq!(counters.stored_pages, present);
    assert!(operations.load(Ordering::Relaxed) > 1000, "the workers ran: {}", operations.load(Ordering::Relaxed));
    assert!(generations_seen >= 2, "old generations held pages while new stores used the new one");
    assert_eq!(pool.current_generation().id, 9);
    assert_eq!(
        pool.chain().links()[0].module.manifest().version,
        "1.0.0",
        "the last swap (round 7) went back to 1.0.0"
    );
    assert!(pool.latency(Op::Load).count() > 0);

    // Overwrite everything: every old generation drains and is dropped.
    for offset in 0..THREADS * OFFSETS_PER_THREAD {
        pool.store(offset, &page(offset, 0)).unwrap();
    }
    let generations = pool.generations();
    assert_eq!(generations.len(), 1, "only the current generation is left");
    assert_eq!(generations[0].1, THREADS * OFFSETS_PER_THREAD);
}

#[test]
fn a_swap_over_http_keeps_old_pages_readable_and_rolls_back() {
    let server = ServeProcess::start(&temp_dir("swap-http"), &[]);
    let client = server.client();
    for fixture in ["tmem_plugin_versioned_v1", "tmem_plugin_versioned_v2"] {
        client.upload_plugin(None, &tmem_host::bundled::built(fixture).unwrap()).unwrap();
    }
    let mut config = PoolConfig::new("s", vec![versioned("1.0.0"), BackendRequest::new("ram")]);
    config.shards = Some(2);
    client.create_pool(&config).unwrap();
    for offset in 0..10 {
        client.put_page("s", offset, &page(offset, 1)).unwrap();
    }

    let info = client
        .update_pool(
            "s",
            &PoolPatch { backends: Some(vec![versioned("2.0.0"), BackendRequest::new("ram")]), ..Default::default() },
        )
        .unwrap();
    assert_eq!(info.backends[0].version, "2.0.0");
    let gens: Vec<(bool, u64, String)> =
        info.generations.iter().map(|g| (g.current, g.pages, g.backends[0].version.clone())).collect();
    assert_eq!(gens, [(false, 10, "1.0.0".to_string()), (true, 0, "2.0.0".to_string())]);
    for offset in 0..5 {
        client.put_page("s", offset, &page(offset, 2)).unwrap();
    }
    for offset in 0..10 {
        let expected = if offset < 5 { page(offset, 2) } else { page(offset, 1) };
        assert_eq!(client.get_page("s", offset).unwrap().as_deref(), Some(&expected[..]), "offset {offset}");
    }
    // Version 1.0.0 is still in use (it holds pages), so it cannot be removed.
    let plugin = client.plugin("versioned").unwrap();
    assert!(plugin.versions.iter().all(|v| v.used_by == ["s"]), "{:?}", plugin.versions);
    assert_eq!(client.remove_plugin("versioned", Some("1.0.0")).unwrap_err().code(), Some("plugin_in_use"));

    // A swap to a config the plugin refuses changes nothing.
    let refused = json!({"backends": [{"plugin": "versioned"}, {"plugin": "ram", "config": {"bogus": 1}}]});
    let (status, _) = client
        .request("PATCH", "/api/v1/pools/s", Some(("application/json", refused.to_string().as_bytes())), true)
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(client.pool("s").unwrap().generations.len(), 2);

    // Roll back to 1.0.0: new stores use it, every page still reads back.
    let info = client
        .update_pool(
            "s",
            &PoolPatch { backends: Some(vec![versioned("1.0.0"), BackendRequest::new("ram")]), ..Default::default() },
        )
        .unwrap();
    assert_eq!(info.backends[0].version, "1.0.0");
    client.put_page("s", 9, &page(9, 3)).unwrap();
    for offset in 0..10 {
        let expected = match offset {
            0..5 => page(offset, 2),
            9 => page(offset, 3),
            _ => page(offset, 1),
        };
        assert_eq!(client.get_page("s", offset).unwrap().as_deref(), Some(&expected[..]), "offset {offset}");
    }
    assert_eq!(client.pool("s").unwrap().counters["load_failures"], 0);
    // Once the 2.0.0 pages are gone, 2.0.0 is unused and removable.
    for offset in 0..5 {
        assert!(client.remove_page("s", offset).unwrap());
    }
    client.remove_plugin("versioned", Some("2.0.0")).unwrap();
}
