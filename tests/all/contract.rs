//! The frontswap contract (contract.md §2-5), table-driven: every test runs against every
//! bundled chain.

use std::sync::Arc;
use std::thread;

use serde_json::json;
use tmem_host::frontend::{Frontend, FrontendKind};
use tmem_host::pool::ShrinkError;
use tmem_host::workload::{self, PageClass};
use tmem_host::{BackendSpec, LoadOutcome, OpError, Pool, PoolLimits, PoolModes, RejectReason, StoreOutcome};

use crate::common::{bundled_chains, host, spec, tagged_page};

fn for_each_chain(test: impl Fn(&str, Arc<Pool>)) {
    let host = host();
    for (i, (name, chain)) in bundled_chains().into_iter().enumerate() {
        let pool = host.create_pool(spec(&format!("p{i}")), &chain).unwrap();
        test(name, pool);
    }
}

/// Whether `chain` starts with a compression filter (`zstd` or `lz4`).
fn compresses(chain: &str) -> bool {
    chain.starts_with("[zstd") || chain.starts_with("[lz4")
}

/// Whether `chain` refuses pages that compress poorly (a compression filter, not `store_raw`).
fn rejects_poor_pages(chain: &str) -> bool {
    compresses(chain) && !chain.contains("store_raw")
}

fn load(pool: &Pool, offset: u64) -> Option<Vec<u8>> {
    let mut page = vec![0; pool.page_size() as usize];
    match pool.load(offset, &mut page).unwrap() {
        LoadOutcome::Absent => None,
        LoadOutcome::Loaded { .. } => Some(page),
    }
}

#[test]
fn realistic_pages_round_trip_and_rejections_leave_nothing_behind() {
    for_each_chain(|chain, pool| {
        let n = 600;
        let (mut stored, mut rejected_poor) = (0, 0);
        for i in 0..n {
            let page = workload::page(11, i, 4096);
            match pool.store(i, &page).unwrap() {
                StoreOutcome::Stored => stored += 1,
                StoreOutcome::Rejected(RejectReason::CompressPoor) => rejected_poor += 1,
                other => panic!("{chain}: unexpected {other:?}"),
            }
        }
        let random = (0..n).filter(|&i| workload::class_of(11, i) == PageClass::Random).count() as u64;
        let zero = (0..n).filter(|&i| workload::class_of(11, i) == PageClass::Zero).count() as u64;
        let c = pool.counters();
        if rejects_poor_pages(chain) {
            assert_eq!(rejected_poor, random, "{chain}: exactly the random pages compress poorly");
            assert_eq!(c.reject_compress_poor, random);
            assert_eq!(c.same_filled_pages, zero, "{chain}: zero pages are markers");
        } else {
            assert_eq!(rejected_poor, 0, "{chain}");
        }
        if chain.contains("store_raw") {
            assert_eq!(c.stored_incompressible_pages, random, "{chain}: random pages stored raw");
        }
        assert_eq!(c.succ_stores, stored);
        assert_eq!(c.failed_stores, rejected_poor);
        assert_eq!(pool.curr_pages(), stored);
        for i in 0..n {
            let expected = workload::page(11, i, 4096);
            match load(&pool, i) {
                Some(page) => assert!(page == expected, "{chain}: page {i} differs"),
                None => assert_eq!(workload::class_of(11, i), PageClass::Random, "{chain}: page {i} missing"),
            }
        }
        assert_eq!(pool.counters().loads, stored);
        let bytes = pool.counters().pool_total_size;
        if compresses(chain) {
            // zstd keeps these pages in under half their size; lz4 (faster) in under two thirds.
            let limit = if chain.starts_with("[lz4") { stored * 4096 * 2 / 3 } else { stored * 4096 / 2 };
            assert!(bytes < limit, "{chain}: {bytes} bytes for {stored} pages is not compressed");
        } else {
            assert_eq!(bytes, stored * 4096, "{chain}: ram keeps pages as they are");
        }
    });
}

#[test]
fn absent_pages_load_as_absent_and_do_not_count() {
    for_each_chain(|chain, pool| {
        let mut page = vec![7u8; 4096];
        assert_eq!(pool.load(123, &mut page).unwrap(), LoadOutcome::Absent, "{chain}");
        assert_eq!(page, vec![7u8; 4096], "{chain}: an absent load writes nothing");
        assert_eq!(pool.counters().loads, 0);
        assert_eq!(pool.counters().load_failures, 0);
    });
}

#[test]
fn a_duplicate_store_replaces_or_drops_the_old_page_never_keeps_it() {
    for_each_chain(|chain, pool| {
        // Replaced.
        assert_eq!(pool.store(5, &tagged_page(1)).unwrap(), StoreOutcome::Stored);
        assert_eq!(pool.store(5, &tagged_page(2)).unwrap(), StoreOutcome::Stored);
        assert_eq!(load(&pool, 5), Some(tagged_page(2)), "{chain}");
        assert_eq!(pool.counters().duplicate_entry, 1);
        assert_eq!(pool.curr_pages(), 1);

        // Rejected second store (disabled pool): the old copy is gone too.
        pool.set_enabled(false);
        assert_eq!(pool.store(5, &tagged_page(3)).unwrap(), StoreOutcome::Rejected(RejectReason::Disabled));
        assert_eq!(load(&pool, 5), None, "{chain}: stale data after a rejected duplicate store");
        assert_eq!(pool.curr_pages(), 0);
        assert_eq!(pool.counters().pool_total_size, 0, "{chain}: the old bytes were freed");
        pool.set_enabled(true);

        // Rejected because the new page compresses poorly.
        if rejects_poor_pages(chain) {
            assert_eq!(pool.store(9, &tagged_page(4)).unwrap(), StoreOutcome::Stored);
            let noise =
                workload::page(3, (0..).find(|&i| workload::class_of(3, i) == PageClass::Random).unwrap(), 4096);
            assert_eq!(pool.store(9, &noise).unwrap(), StoreOutcome::Rejected(RejectReason::CompressPoor));
            assert_eq!(load(&pool, 9), None, "{chain}: stale data after a poorly compressing duplicate");
        }
    });
}

#[test]
fn a_duplicate_store_into_a_full_pool_still_drops_the_old_page() {
    let host = host();
    for (i, (chain, backends)) in bundled_chains().into_iter().enumerate() {
        let mut spec = spec(&format!("full{i}"));
        spec.limits = PoolLimits { max_pages: Some(2), max_bytes: None, accept_threshold_percent: 50 };
        let pool = host.create_pool(spec, &backends).unwrap();
        pool.store(1, &tagged_page(1)).unwrap();
        pool.store(2, &tagged_page(2)).unwrap();
        assert_eq!(pool.store(3, &tagged_page(3)).unwrap(), StoreOutcome::Rejected(RejectReason::PoolLimit), "{chain}");
        // Pool is full (hysteresis holds until below 50% of 2 = 1 page): a duplicate store to
        // 2 drops the old copy first, and is then refused too.
        assert_eq!(
            pool.store(2, &tagged_page(22)).unwrap(),
            StoreOutcome::Rejected(RejectReason::PoolLimit),
            "{chain}"
        );
        assert_eq!(load(&pool, 2), None, "{chain}: stale page kept by a full pool");
        assert_eq!(load(&pool, 1), Some(tagged_page(1)));
    }
}

#[test]
fn invalidate_page_counts_only_present_pages_and_invalidate_area_clears_all() {
    for_each_chain(|chain, pool| {
        assert!(!pool.invalidate_page(1).unwrap(), "{chain}");
        assert_eq!(pool.counters().invalidates, 0);
        for i in 0..100 {
            pool.store(i, &tagged_page(i)).unwrap();
        }
        assert!(pool.invalidate_page(1).unwrap());
        assert!(!pool.invalidate_page(1).unwrap());
        assert_eq!(pool.counters().invalidates, 1);
        assert_eq!(load(&pool, 1), None);
        assert_eq!(pool.curr_pages(), 99);
        pool.invalidate_area().unwrap();
        assert_eq!(pool.curr_pages(), 0, "{chain}");
        assert_eq!(pool.counters().pool_total_size, 0, "{chain}: backend emptied");
        assert!((0..100).all(|i| load(&pool, i).is_none()), "{chain}");
        // The area is usable again afterwards.
        pool.store(1, &tagged_page(77)).unwrap();
        assert_eq!(load(&pool, 1), Some(tagged_page(77)));
    });
}

#[test]
fn exclusive_gets_remove_the_page_and_say_so() {
    for_each_chain(|chain, pool| {
        pool.set_modes(PoolModes { writethrough: false, exclusive_gets: true });
        pool.store(8, &tagged_page(8)).unwrap();
        let mut page = vec![0; 4096];
        assert_eq!(pool.load(8, &mut page).unwrap(), LoadOutcome::Loaded { exclusive: true }, "{chain}");
        assert_eq!(page, tagged_page(8));
        assert_eq!(pool.load(8, &mut page).unwrap(), LoadOutcome::Absent, "{chain}");
        assert_eq!(pool.curr_pages(), 0);
        assert_eq!(pool.counters().pool_total_size, 0);
        pool.set_modes(PoolModes::default());
        pool.store(8, &tagged_page(9)).unwrap();
        assert_eq!(pool.load(8, &mut page).unwrap(), LoadOutcome::Loaded { exclusive: false });
        assert_eq!(pool.load(8, &mut page).unwrap(), LoadOutcome::Loaded { exclusive: false });
    });
}

#[test]
fn writethrough_reports_it_and_reclaims_instead_of_refusing() {
    for_each_chain(|chain, pool| {
        pool.set_modes(PoolModes { writethrough: true, exclusive_gets: false });
        pool.set_limits(PoolLimits { max_pages: Some(50), max_bytes: None, accept_threshold_percent: 90 }).unwrap();
        for i in 0..200 {
            assert_eq!(pool.store(i, &tagged_page(i)).unwrap(), StoreOutcome::StoredWritethrough, "{chain}: store {i}");
        }
        let c = pool.counters();
        assert!(pool.curr_pages() <= 50, "{chain}: {} pages", pool.curr_pages());
        assert_eq!(c.reclaimed_pages, 200 - pool.curr_pages(), "{chain}");
        // Loads are still served from the pool; dropped pages are simply absent.
        let present = (0..200).filter(|&i| match load(&pool, i) {
            Some(page) => {
                assert_eq!(page, tagged_page(i), "{chain}: page {i}");
                true
            }
            None => false,
        });
        assert_eq!(present.count() as u64, pool.curr_pages());
    });
}

#[test]
fn limits_refuse_stores_until_usage_falls_below_the_accept_threshold() {
    for_each_chain(|chain, pool| {
        pool.set_limits(PoolLimits { max_pages: Some(10), max_bytes: None, accept_threshold_percent: 50 }).unwrap();
        for i in 0..10 {
            assert_eq!(pool.store(i, &tagged_page(i)).unwrap(), StoreOutcome::Stored, "{chain}");
        }
        assert_eq!(pool.store(10, &tagged_page(10)).unwrap(), StoreOutcome::Rejected(RejectReason::PoolLimit));
        assert!(pool.is_full());
        for i in 0..5 {
            pool.invalidate_page(i).unwrap();
        }
        // 5 pages: not below 50% of 10 yet.
        assert_eq!(
            pool.store(10, &tagged_page(10)).unwrap(),
            StoreOutcome::Rejected(RejectReason::PoolLimit),
            "{chain}"
        );
        pool.invalidate_page(5).unwrap();
        assert_eq!(pool.store(10, &tagged_page(10)).unwrap(), StoreOutcome::Stored, "{chain}: below threshold again");
        assert!(!pool.is_full());
        assert_eq!(pool.counters().pool_limit_hit, 2);

        // A byte limit, raised at runtime (a remote store's bytes are elsewhere: refused).
        pool.invalidate_area().unwrap();
        if chain.contains("remote") {
            let err = pool
                .set_limits(PoolLimits { max_pages: None, max_bytes: Some(1), accept_threshold_percent: 90 })
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_bytes cannot apply to a remote store"), "{err}");
            return;
        }
        pool.set_limits(PoolLimits { max_pages: None, max_bytes: Some(1), accept_threshold_percent: 90 }).unwrap();
        pool.store(1, &tagged_page(1)).unwrap();
        assert_eq!(pool.store(2, &tagged_page(2)).unwrap(), StoreOutcome::Rejected(RejectReason::PoolLimit), "{chain}");
        pool.set_limits(PoolLimits { max_pages: None, max_bytes: Some(1 << 30), accept_threshold_percent: 90 })
            .unwrap();
        assert_eq!(pool.store(2, &tagged_page(2)).unwrap(), StoreOutcome::Stored, "{chain}");
        assert!(pool.set_limits(PoolLimits { max_pages: Some(0), ..Default::default() }).is_err());
    });
}

#[test]
fn concurrent_stores_loads_and_invalidates_from_several_threads_verify() {
    for_each_chain(|chain, pool| {
        let threads = 3u64;
        let per_thread = 1500u64;
        thread::scope(|s| {
            for t in 0..threads {
                let pool = &pool;
                s.spawn(move || {
                    // Each thread owns offsets ≡ t (mod threads) and knows their latest version.
                    let mut latest = std::collections::HashMap::new();
                    for step in 0..per_thread {
                        let offset = (step * 7919 % 200) * threads + t;
                        match step % 5 {
                            0..=2 => {
                                let tag = (t << 48) | step;
                                assert_eq!(pool.store(offset, &tagged_page(tag)).unwrap(), StoreOutcome::Stored);
                                latest.insert(offset, Some(tag));
                            }
                            3 => {
                                let expected = latest.get(&offset).copied().flatten().map(tagged_page);
                                assert_eq!(load(pool, offset), expected, "{chain}: offset {offset}");
                            }
                            _ => {
                                pool.invalidate_page(offset).unwrap();
                                latest.insert(offset, None);
                            }
                        }
                    }
                    for (offset, tag) in latest {
                        assert_eq!(load(pool, offset), tag.map(tagged_page), "{chain}: final offset {offset}");
                    }
                });
            }
        });
    });
}

#[test]
fn same_offset_operations_are_linearizable_no_torn_or_mixed_pages() {
    for_each_chain(|chain, pool| {
        thread::scope(|s| {
            for t in 0..3u64 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..400 {
                        pool.store(42, &tagged_page(t * 1000 + i)).unwrap();
                    }
                });
            }
            let pool = &pool;
            s.spawn(move || {
                for _ in 0..1000 {
                    if let Some(page) = load(pool, 42) {
                        let tag = u64::from_str_radix(std::str::from_utf8(&page[6..22]).unwrap(), 16).unwrap();
                        assert_eq!(page, tagged_page(tag), "{chain}: torn page");
                    }
                }
            });
        });
        assert_eq!(pool.curr_pages(), 1);
    });
}

#[test]
fn wrong_page_sizes_are_clear_errors_and_change_nothing() {
    for_each_chain(|chain, pool| {
        pool.store(1, &tagged_page(1)).unwrap();
        let err = pool.store(1, &[0u8; 100]).unwrap_err();
        assert!(matches!(err, OpError::WrongPageSize { expected: 4096, got: 100, .. }), "{chain}: {err}");
        assert!(err.to_string().contains("4096-byte pages"), "{err}");
        assert!(pool.load(1, &mut [0u8; 8192]).is_err());
        assert_eq!(load(&pool, 1), Some(tagged_page(1)), "{chain}: a bad request lost a page");
    });
}

#[test]
fn pools_with_bad_specs_or_chains_are_refused_with_the_reason() {
    let host = host();
    let ram = || vec![BackendSpec::new("ram")];
    let cases: Vec<(tmem_host::PoolSpec, Vec<BackendSpec>, &str)> = vec![
        (
            {
                let mut s = spec("a");
                s.page_size = 5000;
                s
            },
            ram(),
            "power of two",
        ),
        (
            {
                let mut s = spec("a");
                s.page_size = 2048;
                s
            },
            ram(),
            "from 4096",
        ),
        (spec("bad name!"), ram(), "pool name"),
        (spec("a"), vec![], "at least a store"),
        (spec("a"), vec![BackendSpec::new("zstd")], "must end with a store"),
        (spec("a"), vec![BackendSpec::new("ram"), BackendSpec::new("ram")], "must be the last link"),
        (spec("a"), vec![BackendSpec::new("nope")], "no plugin named 'nope'"),
        (
            spec("a"),
            vec![BackendSpec::with_config("zstd", json!({"levle": 1})), BackendSpec::new("ram")],
            "no config key 'levle'",
        ),
        (
            spec("a"),
            vec![BackendSpec::with_config("zstd", json!({"level": 99})), BackendSpec::new("ram")],
            "from -7 to 19",
        ),
        (
            spec("a"),
            vec![BackendSpec { version: Some("9.9.9".into()), ..BackendSpec::new("ram") }],
            "no version '9.9.9'",
        ),
    ];
    for (spec, chain, reason) in cases {
        let err = host.create_pool(spec, &chain).unwrap_err().to_string();
        assert!(err.contains(reason), "expected '{reason}' in: {err}");
    }
    assert!(host.pools().is_empty(), "nothing half-created remains");
    host.create_pool(spec("a"), &ram()).unwrap();
    assert!(host.create_pool(spec("a"), &ram()).unwrap_err().to_string().contains("already exists"));
    host.destroy_pool("a").unwrap();
    assert!(host.pool("a").is_err());
}

#[test]
fn larger_page_sizes_work_end_to_end() {
    let host = host();
    for (chain, backends) in bundled_chains() {
        let mut spec = spec("big");
        spec.page_size = 65536;
        let pool = host.create_pool(spec, &backends).unwrap();
        let page: Vec<u8> = b"sixty-four kibibytes ".iter().copied().cycle().take(65536).collect();
        assert_eq!(pool.store(3, &page).unwrap(), StoreOutcome::Stored, "{chain}");
        let mut back = vec![0; 65536];
        assert_eq!(pool.load(3, &mut back).unwrap(), LoadOutcome::Loaded { exclusive: false });
        assert!(back == page, "{chain}");
        host.destroy_pool("big").unwrap();
    }
}

/// A frontend with a "device" in memory, as a block frontend's backing file would be.
struct VecDevice(parking_lot::Mutex<std::collections::HashMap<u64, Vec<u8>>>);

impl Frontend for VecDevice {
    fn id(&self) -> String {
        "vec-1".into()
    }

    fn kind(&self) -> FrontendKind {
        FrontendKind::Socket
    }

    fn name(&self) -> String {
        "test-device".into()
    }

    fn address(&self) -> String {
        "in-process".into()
    }

    fn take_back(&self, pool: &Pool, offsets: &[u64]) -> u64 {
        let mut taken = 0;
        for &offset in offsets {
            let mut page = vec![0; pool.page_size() as usize];
            if let Ok(LoadOutcome::Loaded { .. }) = pool.take(offset, &mut page) {
                self.0.lock().insert(offset, page);
                taken += 1;
            }
        }
        taken
    }
}

#[test]
fn shrink_brings_pages_back_through_the_frontend_or_drops_writethrough_pages() {
    for_each_chain(|chain, pool| {
        for i in 0..100 {
            pool.store(i, &tagged_page(i)).unwrap();
        }
        assert!(matches!(pool.shrink(10), Err(ShrinkError::NoFrontend(_))), "{chain}: no one to take pages back");
        assert_eq!(pool.curr_pages(), 100, "{chain}: a refused shrink loses nothing");

        let device = Arc::new(VecDevice(Default::default()));
        let frontend: Arc<dyn Frontend> = device.clone();
        pool.attach_frontend(frontend.clone());
        assert_eq!(pool.frontends(), vec!["test-device".to_string()]);
        let report = pool.shrink(30).unwrap();
        assert_eq!((report.before, report.after, report.written_back), (100, 30, 70), "{chain}");
        assert_eq!(pool.counters().written_back_pages, 70);
        // Every page is in exactly one place, with the right contents.
        for i in 0..100 {
            let in_pool = load(&pool, i);
            let on_device = device.0.lock().get(&i).cloned();
            assert!(in_pool.is_some() != on_device.is_some(), "{chain}: page {i} in both or neither");
            assert_eq!(in_pool.or(on_device), Some(tagged_page(i)), "{chain}: page {i}");
        }
        pool.detach_frontend(&frontend);

        pool.set_modes(PoolModes { writethrough: true, exclusive_gets: false });
        let report = pool.shrink(5).unwrap();
        assert_eq!((report.after, report.dropped), (5, 25), "{chain}");
    });
}
