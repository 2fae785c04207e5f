//! Tiered pools on a real host with the real plugins: an upper pool (`[lz4, ram]`) that owns a
//! lower one (`[zstd(level 9), ram]`, or `[zstd, sled]` across a restart), its idle pages moved
//! down by mover passes the tests run themselves (`Host::run_tier_passes`; the host's own mover
//! thread is off), the frontswap contract across the two tiers, and the pair through a real
//! `tmem serve` (REST, `/metrics`, the frontend socket).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tmem_api::rest::{BackendRequest, PoolConfig, Promote, TierConfig};
use tmem_frontend::client::{FrontendClient, Op, OpResult};
use tmem_host::plugin::EngineOptions;
use tmem_host::tier::TierError;
use tmem_host::workload::{self, PageClass};
use tmem_host::{Host, HostConfig, HostError, LoadOutcome, OpError, Pool, RejectReason, StoreOutcome};

const IDLE_SECONDS: u64 = 1;

/// A host whose mover runs only when the test asks.
fn host() -> Host {
    Host::new(HostConfig {
        engine: EngineOptions { max_instances: 200, ..Default::default() },
        manual_tier_passes: true,
        ..Default::default()
    })
    .expect("host starts")
}

fn lower_config(name: &str) -> PoolConfig {
    let zstd = BackendRequest::with_config("zstd", json!({"level": 9}));
    PoolConfig { shards: Some(4), ..PoolConfig::new(name, vec![zstd, BackendRequest::new("ram")]) }
}

fn upper_config(name: &str, lower: &str, promote: Promote) -> PoolConfig {
    PoolConfig {
        shards: Some(4),
        // Never under budget pressure (that is its own test).
        tier: Some(TierConfig { promote, pressure_percent: 100, ..TierConfig::new(lower, IDLE_SECONDS) }),
        ..PoolConfig::new(name, vec![BackendRequest::new("lz4"), BackendRequest::new("ram")])
    }
}

/// An upper pool `[lz4, ram]` over a lower pool `[zstd(level 9), ram]`.
fn pair(host: &Host, promote: Promote) -> (Arc<Pool>, Arc<Pool>) {
    let lower = host.create_pool_from(&lower_config("cold")).expect("lower pool");
    let upper = host.create_pool_from(&upper_config("hot", "cold", promote)).expect("upper pool");
    (upper, lower)
}

/// A text-like page (what swap mostly holds), different for every offset and `round`.
fn page(offset: u64, round: u64) -> Vec<u8> {
    let index = (offset * 11 + round * 7919..).find(|&i| workload::class_of(5, i) == PageClass::Text).unwrap();
    workload::page(5, index, 4096)
}

fn load(pool: &Pool, offset: u64) -> Option<Vec<u8>> {
    let mut out = vec![0; 4096];
    match pool.load(offset, &mut out).expect("load") {
        LoadOutcome::Absent => None,
        LoadOutcome::Loaded { .. } => Some(out),
    }
}

/// Stores `pages` pages, lets them all go idle except those `hot` keeps loading, and runs the
/// mover: a first pass takes the stores' reference bits, the second (after `idle_seconds`)
/// sees who is idle. Returns what the second pass did.
fn age_and_demote(host: &Host, upper: &Pool, pages: u64, hot: impl Fn(u64) -> bool) -> tmem_host::tier::TierPass {
    for o in 0..pages {
        assert_eq!(upper.store(o, &page(o, 0)).unwrap(), StoreOutcome::Stored);
    }
    host.run_tier_passes();
    let until = Instant::now() + Duration::from_millis(IDLE_SECONDS * 1000 + 150);
    loop {
        // The hot pages keep being loaded while the rest goes idle.
        for o in (0..pages).filter(|&o| hot(o)) {
            assert_eq!(load(upper, o).as_deref(), Some(&page(o, 0)[..]), "hot page {o}");
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let passes = host.run_tier_passes();
    assert_eq!(passes.len(), 1, "one tiered pool");
    passes[0].1
}

#[test]
fn idle_pages_move_down_and_shrink_while_the_hot_quarter_stays_up() {
    const PAGES: u64 = 2000;
    let host = host();
    let (upper, lower) = pair(&host, Promote::OnLoad);
    let hot = |o: u64| o.is_multiple_of(4);
    let cold_pages = (0..PAGES).filter(|&o| !hot(o)).count() as u64;

    // Every page in the upper pool first: what they take there, and in the arena.
    for o in 0..PAGES {
        assert_eq!(upper.store(o, &page(o, 0)).unwrap(), StoreOutcome::Stored);
    }
    let upper_before = upper.counters().pool_total_size;
    let arena_before = host.page_arena().stats().object_bytes;
    assert_eq!(lower.counters().pool_total_size, 0);
    upper.invalidate_area().unwrap();

    let pass = age_and_demote(&host, &upper, PAGES, hot);
    assert_eq!((pass.scanned, pass.idle, pass.demoted, pass.kept), (PAGES, cold_pages, cold_pages, 0));
    let c = upper.counters();
    assert_eq!(c.tier_demoted_pages, cold_pages);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES - cold_pages, cold_pages));
    for o in 0..PAGES {
        assert_eq!(upper.holds(o), hot(o), "offset {o}: the hot pages stay up, the rest went down");
        assert!(upper.contains(o));
    }
    // The idle-age histogram: the pages left up are the hot ones, just used.
    let ages = upper.tier().unwrap().idle_age();
    assert_eq!(ages.first().map(|&(_, n)| n), Some(PAGES - cold_pages), "{ages:?}");
    assert_eq!(ages.last(), Some(&(None, PAGES - cold_pages)));

    // The bytes: the cold pages took (upper before − upper after) in lz4, now `lower` in zstd.
    let upper_after = upper.counters().pool_total_size;
    let lower_after = lower.counters().pool_total_size;
    let arena_after = host.page_arena().stats().object_bytes;
    let cold_lz4 = upper_before - upper_after;
    let ratio = cold_lz4 as f64 / lower_after as f64;
    eprintln!(
        "tiers: {PAGES} pages, {cold_pages} demoted; pool_total_size before {upper_before} B (upper only), after {upper_after} + {lower_after} = {} B; \
         cold pages {cold_lz4} B in lz4 -> {lower_after} B in zstd(9) (x{ratio:.2}); arena objects {arena_before} -> {arena_after} B; \
         demotion mean {:.1} us",
        upper_after + lower_after,
        upper.latency(tmem_host::stats::Op::Demote).sum_ns as f64 / cold_pages as f64 / 1000.0,
    );
    assert!(ratio > 1.15, "zstd(9) keeps the cold pages in fewer bytes than lz4 (x{ratio:.2})");
    assert!(upper_after + lower_after < upper_before, "both tiers together hold less than the upper did");
    let saved = upper_before - (upper_after + lower_after);
    assert!(
        arena_before - arena_after >= saved * 9 / 10,
        "the arena's stored bytes drop as pool_total_size does: {arena_before} -> {arena_after}, {saved} saved"
    );
    assert_eq!(upper.latency(tmem_host::stats::Op::Demote).count(), cold_pages);

    // Every page reads back bit-exact through the upper pool; a load brings a cold page up.
    for o in 0..PAGES {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
    let c = upper.counters();
    assert_eq!(c.tier_promoted_pages, cold_pages);
    assert_eq!(c.load_failures, 0);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES, 0));
    assert_eq!(lower.counters().pool_total_size, 0);
    assert!((0..PAGES).all(|o| upper.holds(o)));
}

/// Demotes every page of `pages` (none is hot).
fn all_down(host: &Host, upper: &Pool, lower: &Pool, pages: u64) {
    let pass = age_and_demote(host, upper, pages, |_| false);
    assert_eq!(pass.demoted, pages);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, pages));
}

#[test]
fn a_store_replaces_a_demoted_copy_even_when_it_is_refused() {
    let host = host();
    let (upper, lower) = pair(&host, Promote::Never);
    all_down(&host, &upper, &lower, 16);
    assert_eq!(upper.store(3, &page(3, 1)).unwrap(), StoreOutcome::Stored);
    assert_eq!(lower.curr_pages(), 15, "the demoted copy went before the new store");
    assert!(upper.holds(3));
    assert_eq!(load(&upper, 3).as_deref(), Some(&page(3, 1)[..]), "the new page, never the demoted one");
    assert_eq!(upper.counters().duplicate_entry, 1);

    // Refused (the pool is disabled): the old copy below is gone all the same.
    upper.set_enabled(false);
    assert_eq!(upper.store(5, &page(5, 1)).unwrap(), StoreOutcome::Rejected(RejectReason::Disabled));
    assert_eq!(load(&upper, 5), None, "no stale page after a refused store");
    assert!(!upper.contains(5));
    assert_eq!(lower.curr_pages(), 14);
    assert_eq!(upper.counters().duplicate_entry, 2);
}

#[test]
fn invalidate_and_invalidate_area_clear_both_tiers() {
    let host = host();
    let (upper, lower) = pair(&host, Promote::OnLoad);
    all_down(&host, &upper, &lower, 32);
    for o in 32..40 {
        upper.store(o, &page(o, 0)).unwrap();
    }
    assert!(upper.invalidate_page(7).unwrap(), "a demoted page is present");
    assert!(!upper.invalidate_page(7).unwrap(), "and then it is not");
    assert_eq!(load(&upper, 7), None);
    assert_eq!(lower.curr_pages(), 31);
    assert_eq!(upper.counters().invalidates, 1);
    assert!(upper.invalidate_page(33).unwrap(), "an upper page as before");

    upper.invalidate_area().unwrap();
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, 0));
    assert_eq!(lower.counters().pool_total_size, 0);
    assert!((0..40).all(|o| load(&upper, o).is_none()));
}

#[test]
fn an_exclusive_get_takes_a_demoted_page_out_of_the_lower_tier() {
    let host = host();
    let (upper, lower) = pair(&host, Promote::OnLoad);
    all_down(&host, &upper, &lower, 8);
    upper.set_modes(tmem_host::PoolModes { exclusive_gets: true, ..upper.modes() });
    let mut out = vec![0; 4096];
    assert_eq!(upper.load(2, &mut out).unwrap(), LoadOutcome::Loaded { exclusive: true });
    assert_eq!(out, page(2, 0));
    assert!(!upper.contains(2), "gone from both tiers");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, 7), "not promoted: it left");
    assert_eq!(upper.load(2, &mut out).unwrap(), LoadOutcome::Absent);
    assert_eq!(upper.counters().tier_promoted_pages, 0);
}

#[test]
fn promotion_follows_the_policy() {
    let host = host();
    let (upper, lower) = pair(&host, Promote::Never);
    all_down(&host, &upper, &lower, 8);
    assert_eq!(load(&upper, 1).as_deref(), Some(&page(1, 0)[..]));
    assert!(!upper.holds(1), "promote: never — served from below, stays below");
    assert_eq!(lower.curr_pages(), 8);

    let host = self::host();
    let (upper, lower) = pair(&host, Promote::OnLoad);
    all_down(&host, &upper, &lower, 8);
    assert_eq!(load(&upper, 1).as_deref(), Some(&page(1, 0)[..]));
    assert!(upper.holds(1), "promote: on_load — back up");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (1, 7), "in exactly one tier");
    assert_eq!(upper.counters().tier_promoted_pages, 1);
    // Up again, it is young: the next pass leaves it there.
    assert_eq!(host.run_tier_passes()[0].1.demoted, 0);
    assert!(upper.holds(1));
}

#[test]
fn a_page_the_lower_tier_refuses_stays_up() {
    let host = host();
    let lower = host
        .create_pool_from(&PoolConfig { max_pages: Some(5), accept_threshold_percent: 100, ..lower_config("cold") })
        .unwrap();
    let upper = host.create_pool_from(&upper_config("hot", "cold", Promote::OnLoad)).unwrap();
    let pass = age_and_demote(&host, &upper, 12, |_| false);
    assert_eq!((pass.idle, pass.demoted, pass.kept), (12, 5, 7));
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (7, 5));
    for o in 0..12 {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
}

#[test]
fn the_lower_tier_is_written_only_by_its_upper_pool() {
    let host = host();
    let (upper, lower) = pair(&host, Promote::OnLoad);
    let owned = |e: &HostError| matches!(e, HostError::Tier(TierError::Owned { pool, upper }) if pool == "cold" && upper == "hot");
    let e = host.frontend_pool("cold").unwrap_err();
    assert!(owned(&e), "{e:?}");
    assert_eq!(e.to_string(), "pool 'cold' is the lower tier of pool 'hot': only 'hot' reads and writes it");
    assert!(matches!(lower.store(1, &page(1, 0)), Err(OpError::Tier(TierError::Owned { .. }))));
    assert!(matches!(lower.store_record(1, b"x"), Err(OpError::Tier(TierError::Owned { .. }))));
    assert_eq!(lower.curr_pages(), 0);
    assert!(host.frontend_pool("hot").is_ok());
    let e = host.destroy_pool("cold").unwrap_err();
    assert!(matches!(e, HostError::Tier(TierError::LowerInUse { .. })), "{e:?}");

    // The upper pool gone, the lower one is an ordinary pool again.
    host.destroy_pool("hot").unwrap();
    assert_eq!(lower.owner(), None);
    assert_eq!(host.frontend_pool("cold").unwrap().store(1, &page(1, 0)).unwrap(), StoreOutcome::Stored);
    assert!(upper.is_retired());
}

#[test]
fn a_tier_config_is_checked() {
    let host = host();
    host.create_pool_from(&lower_config("cold")).unwrap();
    let refused = |config: PoolConfig| host.create_pool_from(&config).unwrap_err();
    let tier = |e: HostError| match e {
        HostError::Tier(e) => e,
        other => panic!("not a tier error: {other:?}"),
    };
    assert_eq!(tier(refused(upper_config("hot", "nope", Promote::OnLoad))), TierError::LowerNotFound("nope".into()));
    assert_eq!(tier(refused(upper_config("hot", "hot", Promote::OnLoad))), TierError::ItsOwnLower("hot".into()));
    let mut idle0 = upper_config("hot", "cold", Promote::OnLoad);
    idle0.tier.as_mut().unwrap().idle_seconds = 0;
    assert_eq!(tier(refused(idle0)), TierError::BadIdle(0));
    let mut pressure0 = upper_config("hot", "cold", Promote::OnLoad);
    pressure0.tier.as_mut().unwrap().pressure_percent = 0;
    assert_eq!(tier(refused(pressure0)), TierError::BadPressure(0));
    let big = PoolConfig { page_size: 8192, ..upper_config("hot", "cold", Promote::OnLoad) };
    assert_eq!(tier(refused(big)), TierError::PageSize { lower: "cold".into(), lower_size: 4096, upper_size: 8192 });
    let wt = host.create_pool_from(&PoolConfig { writethrough: true, ..lower_config("wt") }).unwrap();
    assert_eq!(
        tier(refused(upper_config("hot", "wt", Promote::OnLoad))),
        TierError::Writethrough { upper: "hot".into(), lower: "wt".into() }
    );
    drop(wt);
    let full = host.create_pool_from(&lower_config("full")).unwrap();
    full.store(0, &page(0, 0)).unwrap();
    assert_eq!(tier(refused(upper_config("hot", "full", Promote::OnLoad))), TierError::LowerNotEmpty("full".into()));

    host.create_pool_from(&upper_config("hot", "cold", Promote::OnLoad)).unwrap();
    assert_eq!(
        tier(refused(upper_config("hot2", "cold", Promote::OnLoad))),
        TierError::AlreadyOwned { lower: "cold".into(), upper: "hot".into() }
    );
    // Tiers stack: `top` over `hot` over `cold`.
    let top = host.create_pool_from(&upper_config("top", "hot", Promote::OnLoad));
    assert!(top.is_ok(), "a chain of tiers: {top:?}");
    // The API shows and keeps the pairing.
    let config = tmem_host::host::pool_config(&host.pool("hot").unwrap());
    assert_eq!(config.tier, Some(TierConfig { pressure_percent: 100, ..TierConfig::new("cold", 1) }));
}

fn host_on(dir: &std::path::Path) -> Host {
    Host::new(HostConfig {
        data_dir: Some(dir.to_path_buf()),
        engine: EngineOptions { max_instances: 200, ..Default::default() },
        manual_tier_passes: true,
        ..Default::default()
    })
    .expect("host starts")
}

fn sled_chain(filter: BackendRequest) -> Vec<BackendRequest> {
    vec![filter, BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") }]
}

#[test]
fn a_persistent_pair_finds_every_page_in_exactly_one_tier_after_a_restart() {
    const PAGES: u64 = 200;
    let dir = crate::common::temp_dir("tiers-restart");
    let hot = |o: u64| o.is_multiple_of(4);
    let lower = PoolConfig {
        shards: Some(4),
        ..PoolConfig::new("cold", sled_chain(BackendRequest::with_config("zstd", json!({"level": 9}))))
    };
    let upper =
        PoolConfig { backends: sled_chain(BackendRequest::new("lz4")), ..upper_config("hot", "cold", Promote::OnLoad) };
    {
        let host = host_on(&dir);
        let lower = host.create_pool_from(&lower).unwrap();
        let upper = host.create_pool_from(&upper).unwrap();
        assert!(upper.is_persistent() && lower.is_persistent());
        let pass = age_and_demote(&host, &upper, PAGES, hot);
        assert_eq!(pass.demoted, PAGES * 3 / 4);
        assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES / 4, PAGES * 3 / 4));
    }
    let host = host_on(&dir);
    let (upper, lower) = (host.pool("hot").unwrap(), host.pool("cold").unwrap());
    assert_eq!(upper.tier().map(|t| t.lower.name().to_string()), Some("cold".into()), "the pair is restored");
    assert!(matches!(host.frontend_pool("cold"), Err(HostError::Tier(TierError::Owned { .. }))));
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES / 4, PAGES * 3 / 4));
    for o in 0..PAGES {
        assert_eq!(upper.holds(o), hot(o), "offset {o} is where it was");
        assert_eq!(upper.holds(o), !lower.holds(o), "offset {o} is in exactly one tier");
    }
    for o in 0..PAGES {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES, 0), "every cold page was promoted on load");
}

#[test]
fn an_in_memory_upper_pool_restarts_empty_and_so_does_its_lower_tier() {
    let dir = crate::common::temp_dir("tiers-restart-memory");
    let lower = PoolConfig { shards: Some(4), ..PoolConfig::new("cold", sled_chain(BackendRequest::new("zstd"))) };
    {
        let host = host_on(&dir);
        let lower = host.create_pool_from(&lower).unwrap();
        let upper = host.create_pool_from(&upper_config("hot", "cold", Promote::OnLoad)).unwrap();
        all_down(&host, &upper, &lower, 20);
    }
    let host = host_on(&dir);
    let (upper, lower) = (host.pool("hot").unwrap(), host.pool("cold").unwrap());
    assert!(upper.tier().is_some(), "the pair is restored");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, 0), "no page of a pool that restarted empty stays below");
    assert!((0..20).all(|o| load(&upper, o).is_none()));
}

#[test]
fn through_tmem_serve_the_api_shows_the_pair_and_refuses_the_lower_pool() {
    let dir = crate::common::temp_dir("tiers-serve");
    let serve = crate::common::ServeProcess::start(&dir, &[]);
    let client = serve.client();
    client.create_pool(&lower_config("cold")).unwrap();
    let refused = client.create_pool(&upper_config("hot", "nope", Promote::OnLoad)).unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(400), Some("invalid_tier")), "{refused}");
    let info = client.create_pool(&upper_config("hot", "cold", Promote::Never)).unwrap();
    let tier = info.tier.expect("the pool shows its tier");
    assert_eq!(
        tier.config,
        TierConfig { promote: Promote::Never, pressure_percent: 100, ..TierConfig::new("cold", 1) }
    );
    assert_eq!(client.pool("cold").unwrap().tier_of.as_deref(), Some("hot"));
    let again = client.create_pool(&upper_config("hot2", "cold", Promote::OnLoad)).unwrap_err();
    assert_eq!((again.status(), again.code()), (Some(409), Some("tier_conflict")), "{again}");

    for e in [
        client.put_page("cold", 1, &page(1, 0)).unwrap_err(),
        client.get_page("cold", 1).unwrap_err(),
        client.remove_page("cold", 1).unwrap_err(),
        client.invalidate_area("cold").unwrap_err(),
        client.remove_pool("cold").unwrap_err(),
    ] {
        assert_eq!((e.status(), e.code()), (Some(409), Some("pool_is_lower_tier")), "{e}");
    }
    // The frontend socket: the lower pool turns a frontend away; the upper pool serves it.
    let socket = dir.join("tmem.sock");
    let err = FrontendClient::connect(&socket, &serve.token, "cold", "app").unwrap_err();
    assert!(err.to_string().contains("pool 'cold' is the lower tier of pool 'hot'"), "{err}");
    let frontend = FrontendClient::connect(&socket, &serve.token, "hot", "app").unwrap();
    let stored = frontend.batch(&[Op::Store(7, &page(7, 0)), Op::Load(7)]).unwrap();
    assert_eq!(stored[0], OpResult::Stored);
    assert_eq!(stored[1], OpResult::Loaded { exclusive: false, page: page(7, 0) });
    assert_eq!(client.put_page("hot", 1, &page(1, 0)).unwrap().outcome, "stored");
    assert_eq!(client.get_page("hot", 1).unwrap().as_deref(), Some(&page(1, 0)[..]));
    let openapi = client.openapi().unwrap();
    for schema in ["TierConfig", "Promote", "TierInfo", "IdleAgeBucket"] {
        assert!(openapi["components"]["schemas"][schema].is_object(), "the OpenAPI document has {schema}");
    }
    let metrics = client.metrics().unwrap();
    for line in
        ["tmem_pool_tier_demoted_pages_total{pool=\"hot\"} 0", "tmem_pool_tier_info{pool=\"hot\",lower=\"cold\""]
    {
        assert!(metrics.contains(line), "/metrics has {line}");
    }
    assert!(metrics.contains("tmem_pool_op_duration_seconds_count{pool=\"hot\",op=\"tier_demote\"}"));
    // The pair survives a restart of the server (in-memory pools: restored empty, paired).
    assert!(serve.stop());
    let serve = crate::common::ServeProcess::start(&dir, &[]);
    assert_eq!(serve.client().pool("cold").unwrap().tier_of.as_deref(), Some("hot"));
}

#[test]
fn under_budget_pressure_the_coldest_younger_pages_go_first() {
    let host = host();
    host.create_pool_from(&lower_config("cold")).unwrap();
    let mut config = upper_config("hot", "cold", Promote::Never);
    *config.tier.as_mut().unwrap() = TierConfig { pressure_percent: 50, ..TierConfig::new("cold", 4) };
    let upper = host.create_pool_from(&config).unwrap();
    let budget = host.memory_budget();
    let relaxed = u64::MAX - 1;
    budget.set_limit(relaxed);
    let unit = upper.tier().unwrap().unit();
    // Three groups: `a` idle since the first pass, `b` since the second, `c` since the third.
    let group = |o: u64| o % 3;
    for o in 0..60 {
        upper.store(o, &page(o, 0)).unwrap();
    }
    let pass = |host: &Host| host.run_tier_passes()[0].1;
    pass(&host);
    for used in [1, 2] {
        std::thread::sleep(unit + unit / 10);
        for o in (0..60).filter(|&o| group(o) >= used) {
            load(&upper, o).unwrap();
        }
        let p = pass(&host);
        assert_eq!((p.pressure, p.demoted), (false, 0), "no pressure, nothing idle for idle_seconds yet: {p:?}");
    }
    // Pressure: the budget two-thirds used.
    budget.set_limit(budget.used() * 3 / 2);
    let first = pass(&host);
    assert!(first.pressure);
    assert_eq!((first.idle, first.demoted), (0, 20), "only the coldest third: {first:?}");
    assert!((0..60).all(|o| upper.holds(o) == (group(o) != 0)));
    let second = pass(&host);
    assert_eq!((second.idle, second.demoted), (0, 20), "then the next coldest: {second:?}");
    assert!((0..60).all(|o| upper.holds(o) == (group(o) == 2)), "the pages used last stay up");
    // Passes come faster than the clock's unit (the governor's, or a long idle_seconds):
    // under pressure each still counts a unit, so the pages not used since the last pass go,
    // and a page used meanwhile stays — until it has rested a pass itself.
    let used_again = |o: u64| group(o) == 2 && o.is_multiple_of(2);
    for o in (0..60).filter(|&o| used_again(o)) {
        load(&upper, o).unwrap();
    }
    let third = pass(&host);
    assert_eq!((third.idle, third.demoted), (0, 10), "the rested ones: {third:?}");
    assert!((0..60).all(|o| upper.holds(o) == used_again(o)), "the pages used since the last pass stay up");
    let fourth = pass(&host);
    assert_eq!((fourth.idle, fourth.demoted), (0, 10), "then the rest: {fourth:?}");
    assert!((0..60).all(|o| !upper.holds(o)));
    budget.set_limit(relaxed);
    for o in 0..60 {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
}

#[test]
fn writethrough_pages_may_be_dropped_below_but_never_served_wrong() {
    let host = host();
    let lower = host
        .create_pool_from(&PoolConfig {
            writethrough: true,
            max_pages: Some(4),
            accept_threshold_percent: 100,
            ..lower_config("cold")
        })
        .unwrap();
    let mut config = upper_config("hot", "cold", Promote::Never);
    config.writethrough = true;
    let upper = host.create_pool_from(&config).unwrap();
    for o in 0..12 {
        assert_eq!(upper.store(o, &page(o, 0)).unwrap(), StoreOutcome::StoredWritethrough);
    }
    let pass = demote_what_is_stored(&host);
    assert_eq!(pass.demoted + pass.kept, 12, "{pass:?}");
    // A writethrough lower tier at its limit makes room by dropping pages of the shard it
    // stores into (what it cannot make room for stays up).
    let reclaimed = lower.counters().reclaimed_pages;
    assert!(reclaimed > 0 && pass.demoted > 4, "{pass:?}, {reclaimed} reclaimed");
    assert_eq!(lower.curr_pages(), pass.demoted - reclaimed);
    let mut served = 0;
    for o in 0..12 {
        // The frontend has every page on its device (writethrough): a page may be gone, never wrong.
        if let Some(got) = load(&upper, o) {
            assert_eq!(got, page(o, 0), "offset {o}");
            served += 1;
        }
    }
    assert_eq!(served, upper.curr_pages() + lower.curr_pages());
    // Neither side of the pair may turn the other's guarantee off.
    let patch = |writethrough| tmem_api::rest::PoolPatch { writethrough: Some(writethrough), ..Default::default() };
    let e = host.update_pool("hot", &patch(false)).unwrap_err();
    assert!(matches!(e, HostError::Tier(TierError::Writethrough { .. })), "{e:?}");
    host.update_pool("cold", &patch(false)).unwrap();
    host.update_pool("hot", &patch(false)).unwrap();
    let e = host.update_pool("cold", &patch(true)).unwrap_err();
    assert!(matches!(e, HostError::Tier(TierError::Writethrough { .. })), "{e:?}");
}

/// [`age_and_demote`] for the pages already stored, none hot.
fn demote_what_is_stored(host: &Host) -> tmem_host::tier::TierPass {
    host.run_tier_passes();
    std::thread::sleep(Duration::from_millis(IDLE_SECONDS * 1000 + 150));
    host.run_tier_passes()[0].1
}

/// One racing worker's pages of `upper` — offsets `k × threads + t` — and the round each was
/// last stored at (`None`: invalidated). Every operation checks what the pool answers.
struct RacingPages {
    upper: Arc<Pool>,
    offsets: Vec<u64>,
    round: Vec<Option<u64>>,
}

impl RacingPages {
    /// Worker `t`'s pages, each stored at round 0.
    fn stored(upper: Arc<Pool>, t: u64, threads: u64, per_thread: u64) -> RacingPages {
        let offsets: Vec<u64> = (0..per_thread).map(|k| k * threads + t).collect();
        for &o in &offsets {
            assert_eq!(upper.store(o, &page(o, 0)).unwrap(), StoreOutcome::Stored);
        }
        let round = vec![Some(0u64); offsets.len()];
        RacingPages { upper, offsets, round }
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Page `i` loads as the last page stored, or absent.
    fn check(&self, i: usize) {
        let o = self.offsets[i];
        assert_eq!(
            load(&self.upper, o),
            self.round[i].map(|r| page(o, r)),
            "offset {o}: the last page stored, or absent"
        );
    }

    fn check_all(&self) {
        (0..self.len()).for_each(|i| self.check(i));
    }

    fn invalidate(&mut self, i: usize) {
        assert_eq!(self.upper.invalidate_page(self.offsets[i]).unwrap(), self.round[i].is_some());
        self.round[i] = None;
    }

    /// One operation on page `i` by `choice`: an invalidate (1 in 8), a store of its next
    /// round (2 in 8) or a check.
    fn op(&mut self, i: usize, choice: u64) {
        match choice % 8 {
            0 => self.invalidate(i),
            1..=2 => {
                let (o, r) = (self.offsets[i], self.round[i].map_or(1, |r| r + 1));
                assert_eq!(self.upper.store(o, &page(o, r)).unwrap(), StoreOutcome::Stored);
                self.round[i] = Some(r);
            }
            _ => self.check(i),
        }
    }
}

#[test]
fn loads_and_stores_racing_the_mover_always_see_the_last_page() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 64;
    let host = Arc::new(host());
    let (upper, lower) = pair(&host, Promote::OnLoad);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                host.run_tier_passes();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let upper = upper.clone();
            std::thread::spawn(move || {
                // This thread's offsets; the first half stays busy, the second goes idle
                // (and down), then comes back up.
                let mut pages = RacingPages::stored(upper.clone(), t, THREADS, PER_THREAD);
                let half = pages.len() / 2;
                // Until the mover has moved a good part of the idle halves down (it must within
                // the deadline, however slow the machine).
                let deadline = Instant::now() + Duration::from_secs(60);
                let moved = || upper.counters().tier_demoted_pages >= THREADS * PER_THREAD / 4;
                let mut step = t;
                // A few pages of the idle half are dropped while the mover may be copying them
                // down (it stores below without their shard's lock): absent at once, and after.
                let mut idle_drops = PER_THREAD / 8;
                while !moved() {
                    assert!(Instant::now() < deadline, "the mover moved nothing down in a minute");
                    step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if idle_drops > 0 && (step >> 40).is_multiple_of(64) {
                        idle_drops -= 1;
                        let j = half + (step >> 33) as usize % half;
                        pages.invalidate(j);
                        pages.check(j);
                        continue;
                    }
                    pages.op((step >> 33) as usize % half, step >> 20);
                }
                // The idle half is (mostly) down by now: every page of it reads back.
                pages.check_all();
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker saw the wrong page");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    mover.join().unwrap();
    let c = upper.counters();
    assert!(c.tier_demoted_pages > 0 && c.tier_promoted_pages > 0, "the mover raced the workers: {c:?}");
    assert_eq!(c.load_failures, 0);
    let stored = (0..THREADS * PER_THREAD).filter(|&o| upper.contains(o)).count() as u64;
    assert_eq!(upper.curr_pages() + lower.curr_pages(), stored, "every page in exactly one tier");
    assert!((0..THREADS * PER_THREAD).all(|o| !(upper.holds(o) && lower.holds(o))));
}

// ----- changing a pool's tier at run time (`PATCH … "tier"`) -----

fn patch_tier(tier: Option<TierConfig>) -> tmem_api::rest::PoolPatch {
    tmem_api::rest::PoolPatch { tier: Some(tier), ..Default::default() }
}

/// A tier over `lower` as the tests make them (never under budget pressure).
fn tier_over(lower: &str) -> TierConfig {
    TierConfig { pressure_percent: 100, ..TierConfig::new(lower, IDLE_SECONDS) }
}

fn tier_error(e: HostError) -> TierError {
    match e {
        HostError::Tier(e) => e,
        other => panic!("not a tier error: {other:?}"),
    }
}

#[test]
fn a_tier_is_added_changed_and_removed_at_run_time() {
    const PAGES: u64 = 64;
    let host = host();
    let lower = host.create_pool_from(&lower_config("cold")).unwrap();
    let upper =
        host.create_pool_from(&PoolConfig { tier: None, ..upper_config("hot", "cold", Promote::OnLoad) }).unwrap();
    for o in 0..PAGES {
        assert_eq!(upper.store(o, &page(o, 0)).unwrap(), StoreOutcome::Stored);
    }
    // Every check of creation.
    let refused = |tier: TierConfig| tier_error(host.update_pool("hot", &patch_tier(Some(tier))).unwrap_err());
    assert_eq!(refused(tier_over("nope")), TierError::LowerNotFound("nope".into()));
    assert_eq!(refused(tier_over("hot")), TierError::ItsOwnLower("hot".into()));
    assert_eq!(refused(TierConfig { idle_seconds: 0, ..tier_over("cold") }), TierError::BadIdle(0));
    assert_eq!(refused(TierConfig { pressure_percent: 0, ..tier_over("cold") }), TierError::BadPressure(0));
    host.create_pool_from(&PoolConfig { page_size: 8192, ..lower_config("big") }).unwrap();
    assert_eq!(
        refused(tier_over("big")),
        TierError::PageSize { lower: "big".into(), lower_size: 8192, upper_size: 4096 }
    );
    let full = host.create_pool_from(&lower_config("full")).unwrap();
    full.store(0, &page(0, 0)).unwrap();
    assert_eq!(refused(tier_over("full")), TierError::LowerNotEmpty("full".into()));
    host.create_pool_from(&lower_config("taken")).unwrap();
    host.create_pool_from(&upper_config("other", "taken", Promote::OnLoad)).unwrap();
    assert_eq!(refused(tier_over("taken")), TierError::AlreadyOwned { lower: "taken".into(), upper: "other".into() });
    host.destroy_pool("other").unwrap();
    host.create_pool_from(&PoolConfig { writethrough: true, ..lower_config("wt") }).unwrap();
    assert_eq!(refused(tier_over("wt")), TierError::Writethrough { upper: "hot".into(), lower: "wt".into() });
    assert!(upper.tier().is_none() && lower.upper().is_none(), "a refused tier changes nothing");
    // No tier to remove: nothing to do.
    host.update_pool("hot", &patch_tier(None)).unwrap();

    // Added: the pages up stay up; the lower pool is owned from now on.
    host.update_pool("hot", &patch_tier(Some(tier_over("cold")))).unwrap();
    assert_eq!(upper.tier().map(|t| t.lower.name().to_string()), Some("cold".into()));
    assert!(matches!(host.frontend_pool("cold"), Err(HostError::Tier(TierError::Owned { .. }))));
    assert_eq!(tmem_host::host::pool_config(&upper).tier, Some(tier_over("cold")));
    assert_eq!(
        tier_error(host.update_pool("cold", &patch_tier(Some(tier_over("hot")))).unwrap_err()),
        TierError::Cycle { lower: "hot".into(), upper: "cold".into() }
    );
    all_down(&host, &upper, &lower, PAGES);

    // Settings: the pages below stay below, the new policy applies at once.
    let never = TierConfig { promote: Promote::Never, idle_seconds: 5, ..tier_over("cold") };
    host.update_pool("hot", &patch_tier(Some(never.clone()))).unwrap();
    assert_eq!(tmem_host::host::pool_config(&upper).tier, Some(never.clone()));
    assert_eq!(upper.tier().unwrap().unit(), Duration::from_secs(5) / 8);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, PAGES));
    assert_eq!(load(&upper, 1).as_deref(), Some(&page(1, 0)[..]));
    assert!(!upper.holds(1), "promote: never, now");

    // Another lower pool only while nothing is below.
    host.create_pool_from(&lower_config("colder")).unwrap();
    assert_eq!(
        refused(tier_over("colder")),
        TierError::PagesBelow { upper: "hot".into(), lower: "cold".into(), pages: PAGES }
    );

    // A removal whose pages cannot all come up: refused before a page moves (max_pages) …
    host.update_pool("hot", &tmem_api::rest::PoolPatch { max_pages: Some(Some(PAGES / 2)), ..Default::default() })
        .unwrap();
    let e = tier_error(host.update_pool("hot", &patch_tier(None)).unwrap_err());
    assert!(matches!(e, TierError::StillBelow { pages: PAGES, promoted: 0, .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("{PAGES} pages are still below")), "{e}");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, PAGES));
    // … or part-way (max_bytes): those that came up stay up, the rest below, the tier stays.
    let room =
        tmem_api::rest::PoolPatch { max_pages: Some(None), max_bytes: Some(Some(24 << 10)), ..Default::default() };
    host.update_pool("hot", &room).unwrap();
    let e = tier_error(host.update_pool("hot", &patch_tier(None)).unwrap_err());
    let TierError::StillBelow { pages, promoted, .. } = e else { panic!("{e:?}") };
    assert!(promoted > 0 && pages > 0 && promoted + pages == PAGES, "{promoted} up, {pages} below");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (promoted, pages), "each page in exactly one tier");
    assert!(upper.tier().is_some() && lower.upper().as_deref() == Some("hot"), "the tier stays");
    assert_eq!(tmem_host::host::pool_config(&upper).tier, Some(never));
    for o in 0..PAGES {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }

    // Removed: every page comes up, the lower pool is an ordinary pool again.
    host.update_pool("hot", &tmem_api::rest::PoolPatch { max_bytes: Some(None), ..Default::default() }).unwrap();
    let promoted_before = upper.counters().tier_promoted_pages;
    host.update_pool("hot", &patch_tier(None)).unwrap();
    assert!(upper.tier().is_none() && lower.upper().is_none());
    assert_eq!(tmem_host::host::pool_config(&upper).tier, None);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES, 0));
    assert_eq!(upper.counters().tier_promoted_pages - promoted_before, PAGES - promoted);
    for o in 0..PAGES {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
    assert_eq!(upper.counters().load_failures, 0);
    let cold = host.frontend_pool("cold").expect("no longer owned");
    assert_eq!(cold.store(1, &page(1, 9)).unwrap(), StoreOutcome::Stored);
    assert_eq!(refused(tier_over("cold")), TierError::LowerNotEmpty("cold".into()), "an ordinary pool, with a page");
    cold.invalidate_page(1).unwrap();

    // Another lower pool, then back to the first while nothing is below: each is freed in turn.
    host.update_pool("hot", &patch_tier(Some(tier_over("colder")))).unwrap();
    assert_eq!(host.pool("colder").unwrap().upper().as_deref(), Some("hot"));
    host.update_pool("hot", &patch_tier(Some(tier_over("cold")))).unwrap();
    assert_eq!(host.pool("colder").unwrap().upper(), None);
    assert_eq!(lower.upper().as_deref(), Some("hot"));
    assert!(host.destroy_pool("colder").is_ok());
}

#[test]
fn removing_a_tier_brings_up_the_pages_of_every_tier_below() {
    const PAGES: u64 = 24;
    let host = host();
    let (hot, cold) = pair(&host, Promote::Never);
    let top = host.create_pool_from(&upper_config("top", "hot", Promote::Never)).unwrap();
    for o in 0..PAGES {
        top.store(o, &page(o, 0)).unwrap();
    }
    // Passes over both pairs, idle_seconds apart: everything goes down one tier, then what
    // reached `hot` (young there) goes on down to `cold`.
    host.run_tier_passes();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(IDLE_SECONDS * 1000 + 150));
        host.run_tier_passes();
    }
    assert_eq!(top.curr_pages(), 0);
    assert!(cold.curr_pages() > 0, "pages two tiers down: {} in hot, {} in cold", hot.curr_pages(), cold.curr_pages());
    host.update_pool("top", &patch_tier(None)).unwrap();
    assert_eq!((top.curr_pages(), hot.curr_pages(), cold.curr_pages()), (PAGES, 0, 0));
    assert_eq!(hot.upper(), None);
    assert_eq!(hot.tier().map(|t| t.lower.name().to_string()), Some("cold".into()), "hot keeps its own tier");
    for o in 0..PAGES {
        assert_eq!(load(&top, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
}

#[test]
fn a_tier_changed_at_run_time_is_kept_across_restarts() {
    const PAGES: u64 = 40;
    let dir = crate::common::temp_dir("tiers-patch-restart");
    let lower = PoolConfig {
        shards: Some(4),
        ..PoolConfig::new("cold", sled_chain(BackendRequest::with_config("zstd", json!({"level": 9}))))
    };
    let upper = PoolConfig {
        backends: sled_chain(BackendRequest::new("lz4")),
        tier: None,
        ..upper_config("hot", "cold", Promote::OnLoad)
    };
    let never = TierConfig { promote: Promote::Never, idle_seconds: 5, ..tier_over("cold") };
    {
        let host = host_on(&dir);
        let lower = host.create_pool_from(&lower).unwrap();
        let upper = host.create_pool_from(&upper).unwrap();
        // A persistent pool cannot take an in-memory lower tier, at run time either.
        host.create_pool_from(&lower_config("ram")).unwrap();
        assert_eq!(
            tier_error(host.update_pool("hot", &patch_tier(Some(tier_over("ram")))).unwrap_err()),
            TierError::LowerNotPersistent { upper: "hot".into(), lower: "ram".into() }
        );
        host.update_pool("hot", &patch_tier(Some(tier_over("cold")))).unwrap();
        all_down(&host, &upper, &lower, PAGES);
    }
    {
        let host = host_on(&dir);
        let (upper, lower) = (host.pool("hot").unwrap(), host.pool("cold").unwrap());
        assert_eq!(tmem_host::host::pool_config(&upper).tier, Some(tier_over("cold")), "the added tier is kept");
        assert_eq!(lower.upper().as_deref(), Some("hot"));
        assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, PAGES));
        host.update_pool("hot", &patch_tier(Some(never.clone()))).unwrap();
    }
    {
        let host = host_on(&dir);
        let (upper, lower) = (host.pool("hot").unwrap(), host.pool("cold").unwrap());
        assert_eq!(tmem_host::host::pool_config(&upper).tier, Some(never), "the changed settings are kept");
        assert_eq!((upper.curr_pages(), lower.curr_pages()), (0, PAGES));
        host.update_pool("hot", &patch_tier(None)).unwrap();
        assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES, 0));
    }
    let host = host_on(&dir);
    let (upper, lower) = (host.pool("hot").unwrap(), host.pool("cold").unwrap());
    assert_eq!(tmem_host::host::pool_config(&upper).tier, None, "the removal is kept");
    assert!(upper.tier().is_none() && lower.upper().is_none());
    assert!(host.frontend_pool("cold").is_ok(), "an ordinary pool after a restart too");
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (PAGES, 0));
    for o in 0..PAGES {
        assert_eq!(load(&upper, o).as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
    drop((upper, lower, host));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tier_changes_racing_stores_loads_and_the_mover_never_serve_a_wrong_page() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const THREADS: u64 = 3;
    const PER_THREAD: u64 = 64;
    const CYCLES: u64 = 6;
    let host = Arc::new(host());
    let (upper, lower) = pair(&host, Promote::OnLoad);
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let mover = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                host.run_tier_passes();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Settings changed, the tier removed (every page below brought up), added again, over
    // and over, while the workers store, load and invalidate.
    let changer = {
        let (host, stop, cycles, lower) = (host.clone(), stop.clone(), cycles.clone(), lower.clone());
        std::thread::spawn(move || {
            let mut removed_with_pages_below = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(IDLE_SECONDS * 1000 + 800));
                let never = TierConfig { promote: Promote::Never, ..tier_over("cold") };
                host.update_pool("hot", &patch_tier(Some(never))).expect("settings");
                std::thread::sleep(Duration::from_millis(200));
                host.update_pool("hot", &patch_tier(Some(tier_over("cold")))).expect("settings back");
                removed_with_pages_below += (lower.curr_pages() > 0) as u64;
                host.update_pool("hot", &patch_tier(None)).expect("every page comes up");
                assert_eq!(lower.curr_pages(), 0, "nothing left below");
                assert_eq!(lower.upper(), None);
                std::thread::sleep(Duration::from_millis(50));
                host.update_pool("hot", &patch_tier(Some(tier_over("cold")))).expect("added again");
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            removed_with_pages_below
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (upper, cycles) = (upper.clone(), cycles.clone());
            std::thread::spawn(move || {
                // The first half of this thread's offsets is busy, the second idle but for a
                // rare touch (one op in 4096: a load of a page below brings it up).
                let mut pages = RacingPages::stored(upper, t, THREADS, PER_THREAD);
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut step = t + 1;
                while cycles.load(Ordering::Relaxed) < CYCLES {
                    assert!(Instant::now() < deadline, "{CYCLES} tier cycles did not finish in two minutes");
                    step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let half = pages.len() / 2;
                    let i = if (step >> 52) == 0 {
                        half + (step >> 33) as usize % half
                    } else {
                        (step >> 33) as usize % half
                    };
                    pages.op(i, step >> 20);
                    if step.is_multiple_of(16) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                pages.check_all();
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker saw the wrong page");
    }
    stop.store(true, Ordering::Relaxed);
    let removed_with_pages_below = changer.join().expect("a tier change failed");
    mover.join().unwrap();
    let c = upper.counters();
    assert!(removed_with_pages_below > 0, "a removal found pages below");
    assert!(c.tier_demoted_pages > 0 && c.tier_promoted_pages > 0, "pages moved both ways: {c:?}");
    assert_eq!(c.load_failures, 0);
    let stored = (0..THREADS * PER_THREAD).filter(|&o| upper.contains(o)).count() as u64;
    assert_eq!(upper.curr_pages() + lower.curr_pages(), stored, "every page in exactly one tier");
    assert!((0..THREADS * PER_THREAD).all(|o| !(upper.holds(o) && lower.holds(o))));
}

/// Waits (polling) until `done`, or panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn through_tmem_serve_a_tier_is_patched_by_the_api_and_the_cli() {
    const PAGES: u64 = 32;
    let dir = crate::common::temp_dir("tiers-serve-patch");
    let serve = crate::common::ServeProcess::start(&dir, &[]);
    let client = serve.client();
    client.create_pool(&lower_config("cold")).unwrap();
    client.create_pool(&PoolConfig { tier: None, ..upper_config("hot", "cold", Promote::OnLoad) }).unwrap();
    let refused = client.update_pool("hot", &patch_tier(Some(tier_over("nope")))).unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(400), Some("invalid_tier")), "{refused}");
    client.create_pool(&lower_config("full")).unwrap();
    client.put_page("full", 0, &page(0, 0)).unwrap();
    let refused = client.update_pool("hot", &patch_tier(Some(tier_over("full")))).unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(409), Some("tier_conflict")), "{refused}");

    // Added by the CLI; its settings changed by the CLI (those not given kept).
    let shown = serve.cli(&["pool", "set", "hot", "--tier", "cold:idle_seconds=1,pressure_percent=100"]);
    assert!(shown.contains("lower tier cold"), "{shown}");
    assert_eq!(client.pool("cold").unwrap().tier_of.as_deref(), Some("hot"));
    serve.cli(&["pool", "set", "hot", "--tier", "cold:promote=never"]);
    let tier = client.pool("hot").unwrap().tier.expect("a tier").config;
    assert_eq!(tier, TierConfig { promote: Promote::Never, ..tier_over("cold") });

    // The host's mover moves the pages down.
    for o in 0..PAGES {
        assert_eq!(client.put_page("hot", o, &page(o, 0)).unwrap().outcome, "stored");
    }
    wait_for(Duration::from_secs(30), "every page down", || {
        client.pool("cold").unwrap().counters["stored_pages"] == PAGES
    });

    // A removal that cannot bring every page up: 409, with the count; the tier stays.
    let two = tmem_api::rest::PoolPatch { max_pages: Some(Some(2)), ..Default::default() };
    client.update_pool("hot", &two).unwrap();
    let refused = client.update_pool("hot", &patch_tier(None)).unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(409), Some("tier_conflict")), "{refused}");
    assert!(refused.to_string().contains(&format!("{PAGES} pages are still below")), "{refused}");
    assert!(client.pool("hot").unwrap().tier.is_some());
    // Another lower pool while pages are below: 409.
    client.create_pool(&lower_config("colder")).unwrap();
    let refused = client.update_pool("hot", &patch_tier(Some(tier_over("colder")))).unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(409), Some("tier_conflict")), "{refused}");

    // Removed by the CLI: every page up, the lower pool ordinary again.
    client.update_pool("hot", &tmem_api::rest::PoolPatch { max_pages: Some(None), ..Default::default() }).unwrap();
    let shown = serve.cli(&["pool", "set", "hot", "--no-tier"]);
    assert!(shown.contains("tier") && !shown.contains("lower tier cold"), "{shown}");
    let (hot, cold) = (client.pool("hot").unwrap(), client.pool("cold").unwrap());
    assert!(hot.tier.is_none() && cold.tier_of.is_none());
    assert_eq!((hot.counters["stored_pages"], cold.counters["stored_pages"]), (PAGES, 0));
    for o in 0..PAGES {
        assert_eq!(client.get_page("hot", o).unwrap().as_deref(), Some(&page(o, 0)[..]), "offset {o}");
    }
    assert_eq!(client.put_page("cold", 1, &page(1, 0)).unwrap().outcome, "stored", "cold takes pages itself now");
    // The schema has the new field.
    let openapi = client.openapi().unwrap();
    assert!(openapi["components"]["schemas"]["PoolPatch"]["properties"]["tier"].is_object());
}

// ----- kill mid-move -----

/// SIGKILL of a real `tmem serve` while its mover moves pages of a persistent pair
/// (`[lz4, sled]` over `[zstd(level 9), sled]`) down, and while loads bring them back up;
/// after each restart on the same data dir every page is in exactly one tier (the pools'
/// counts add up to what was stored), reads back bit-exact through the upper pool, and the
/// mover moves pages down again. What makes it hold: a page is durable below before it leaves
/// the upper pool, durable up before it leaves the lower one, and a restart drops the lower
/// copy of a page found in both (docs/durability.md).
#[test]
fn a_persistent_pair_survives_sigkills_mid_demotion_and_mid_promotion() {
    const PAGES: u64 = 3000;
    const THREADS: u64 = 4;
    // The share of the pages moved down (since the restart) at which each round kills; odd
    // rounds then load pages back up, and kill while they come.
    const DOWN_PERCENT: [u64; 5] = [15, 45, 70, 30, 55];
    let dir = crate::common::temp_dir("tiers-sigkill");
    let mut serve = crate::common::ServeProcess::start(&dir, &[]);
    let lower = PoolConfig {
        shards: Some(4),
        ..PoolConfig::new("cold", sled_chain(BackendRequest::with_config("zstd", json!({"level": 9}))))
    };
    let upper =
        PoolConfig { backends: sled_chain(BackendRequest::new("lz4")), ..upper_config("hot", "cold", Promote::OnLoad) };
    serve.client().create_pool(&lower).unwrap();
    serve.client().create_pool(&upper).unwrap();
    let pages: Arc<Vec<Vec<u8>>> = Arc::new((0..PAGES).map(|o| page(o, 0)).collect());
    // Each thread its share of the offsets, in an order of its own.
    let each = |client: tmem_api::client::Client, f: fn(&tmem_api::client::Client, u64, &[u8]) -> bool| {
        (0..THREADS)
            .map(|t| {
                let (client, pages) = (client.clone(), pages.clone());
                std::thread::spawn(move || {
                    let mut done = 0;
                    for o in (t..PAGES).step_by(THREADS as usize) {
                        if !f(&client, o, &pages[o as usize]) {
                            break;
                        }
                        done += 1;
                    }
                    done
                })
            })
            .collect::<Vec<_>>()
    };
    let stored: u64 = each(serve.client(), |c, o, page| {
        assert_eq!(c.put_page("hot", o, page).unwrap().outcome, "stored");
        true
    })
    .into_iter()
    .map(|t| t.join().unwrap())
    .sum();
    assert_eq!(stored, PAGES);
    let counter = |c: &tmem_api::client::Client, pool: &str, name: &str| c.pool(pool).unwrap().counters[name];
    let idle = |seconds| patch_tier(Some(TierConfig { idle_seconds: seconds, ..tier_over("cold") }));
    let mut killed_mid_promotion = 0;
    for (round, percent) in DOWN_PERCENT.into_iter().enumerate() {
        let client = serve.client();
        // The mover is at work (again, after a restart): kill once this share has moved down.
        let target = PAGES * percent / 100;
        wait_for(Duration::from_secs(300), &format!("round {round}: {target} pages moved down"), || {
            counter(&client, "hot", "tier_demoted_pages") >= target
        });
        let mut loaders = Vec::new();
        if round % 2 == 1 {
            // Loads bring pages back up while the mover moves others down: kill once some came.
            let promoted = counter(&client, "hot", "tier_promoted_pages");
            loaders = each(client.clone(), |c, o, page| match c.get_page("hot", o) {
                Ok(got) => {
                    assert_eq!(got.as_deref(), Some(page), "offset {o} read back wrong while the server ran");
                    true
                }
                Err(_) => false, // the server is gone
            });
            wait_for(Duration::from_secs(120), &format!("round {round}: pages promoted"), || {
                counter(&client, "hot", "tier_promoted_pages") >= promoted + 50 + 10 * round as u64
            });
            killed_mid_promotion += 1;
        }
        let (up, down) = (counter(&client, "hot", "stored_pages"), counter(&client, "cold", "stored_pages"));
        drop(serve); // SIGKILL, mid-move
        for loader in loaders {
            loader.join().expect("a loader saw a wrong page");
        }
        eprintln!("round {round}: killed with about {up} pages up and {down} down");
        assert!(up > 0 && down > 0, "round {round}: the kill came mid-way ({up} up, {down} down)");

        serve = crate::common::ServeProcess::start(&dir, &[]);
        let client = serve.client();
        // The mover held (a PATCH waits for a pass under way; none starts after it), so the
        // counts hold still.
        client.update_pool("hot", &idle(3600)).unwrap();
        let (hot, cold) = (client.pool("hot").unwrap(), client.pool("cold").unwrap());
        assert_eq!(hot.tier.as_ref().map(|t| t.config.lower.as_str()), Some("cold"), "round {round}: the pair is back");
        assert_eq!(cold.tier_of.as_deref(), Some("hot"));
        let (up, down) = (hot.counters["stored_pages"], cold.counters["stored_pages"]);
        assert_eq!(up + down, PAGES, "round {round}: every page in exactly one tier ({up} up, {down} down)");
        // Every page reads back bit-exact through the upper pool (and comes back up).
        let read: u64 = each(client.clone(), |c, o, page| {
            let got = c.get_page("hot", o).unwrap_or_else(|e| panic!("offset {o}: {e}"));
            assert_eq!(got.as_deref(), Some(page), "offset {o} after the kill");
            true
        })
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| panic!("round {round}: a page read back wrong")))
        .sum();
        assert_eq!(read, PAGES);
        let (hot, cold) = (client.pool("hot").unwrap(), client.pool("cold").unwrap());
        assert_eq!((hot.counters["stored_pages"], cold.counters["stored_pages"]), (PAGES, 0), "round {round}");
        assert_eq!((hot.counters["load_failures"], cold.counters["load_failures"]), (0, 0));
        // The mover again: pages move down.
        client.update_pool("hot", &idle(IDLE_SECONDS)).unwrap();
    }
    assert!(killed_mid_promotion >= 2);
    let client = serve.client();
    wait_for(Duration::from_secs(120), "pages move down after the last restart", || {
        counter(&client, "hot", "tier_demoted_pages") > 0
    });
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
