//! The memory governor on a real host with the real plugins: the budget's target moved by
//! readings the test injects (`Governor::observe`), and what follows — stores refused past a
//! lowered target, pools with a socket frontend shrunk by weight (pages taken back over the
//! real frontend socket), a tiered pool's coldest pages moved down, stores let in again after a
//! raise, and all of it in `GET /api/v1/memory`'s body and `/metrics`. Then the real
//! `tmem-governor` thread of a real `tmem serve`, reading this machine's `/proc`.
//!
//! Why injected readings: real global memory pressure (PSI rising, MemAvailable falling)
//! cannot be created safely on a shared machine, so the host runs without its governor
//! thread (`HostConfig::manual_governor`) and the test hands the policy the readings a
//! machine under pressure would give. Everything after the readings — the policy, the
//! budget, the mover pass, the shrink, the take-back over the socket — is the real code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tmem_api::client::ClientError;
use tmem_api::rest::{BackendRequest, GovernorPatch, MemoryPatch, PoolConfig, TierConfig};
use tmem_frontend::client::{FrontendClient, Op, OpResult};
use tmem_host::memory::MemInfo;
use tmem_host::memory::governor::{Decision, GovernorConfig, Psi, Readings, Reason};
use tmem_host::plugin::EngineOptions;
use tmem_host::workload::{self, PageClass};
use tmem_host::{Host, HostConfig, MemoryLimit, RejectReason, StoreOutcome};

use crate::common::{ServeProcess, temp_dir};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TOKEN: &str = "governor-token";
/// The operator's limit of the in-process host: room for the lower tier's database cache
/// (64 MiB, charged to the budget) and the pages.
const LIMIT: u64 = 160 * MIB;

/// A text-like page (what swap mostly holds: it compresses), different for every `i`.
fn page(i: u64) -> Vec<u8> {
    let index = (i * 11..).find(|&n| workload::class_of(5, n) == PageClass::Text).unwrap();
    workload::page(5, index, 4096)
}

/// A 16 GiB machine with `available` bytes available and `some` percent of memory pressure.
fn readings(available: u64, some: f64) -> Readings {
    Readings {
        meminfo: Some(MemInfo { total_bytes: 16 * GIB, available_bytes: available }),
        psi: Some(Psi { some_avg10: some, full_avg10: some / 2.0 }),
    }
}

fn calm() -> Readings {
    readings(12 * GIB, 0.0)
}

fn pressure() -> Readings {
    readings(12 * GIB, 40.0)
}

#[test]
fn a_lowered_target_refuses_stores_shrinks_and_demotes_and_a_raise_lets_stores_in() {
    let dir = temp_dir("governor");
    let host = Arc::new(
        Host::new(HostConfig {
            data_dir: Some(dir.join("data")),
            engine: EngineOptions { max_instances: 200, ..Default::default() },
            memory_limit: MemoryLimit::Bytes(LIMIT),
            manual_tier_passes: true,
            governor: Some(GovernorConfig::default()),
            manual_governor: true,
            ..Default::default()
        })
        .expect("host starts"),
    );
    let budget = host.memory_budget().clone();

    // The frontend socket, in-process, and a frontend that takes pages back.
    let socket = dir.join("tmem.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = {
        let _entered = runtime.enter();
        tmem_host::frontend::socket::bind(&socket).expect("socket binds")
    };
    runtime.spawn(tmem_host::frontend::socket::serve_frontends(
        host.clone(),
        tmem_host::rest::auth::ApiToken::new(TOKEN),
        listener,
        tmem_host::listen::ListenerLimits::FRONTEND,
        tmem_host::unix_access::UnixAccess::private(),
        std::future::pending(),
    ));
    let pool = host.create_pool_from(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).expect("pool p");
    let frontend = FrontendClient::connect(&socket, TOKEN, "p", "governor-test").expect("frontend attaches");
    let taken = Arc::new(AtomicU64::new(0));
    let sink = taken.clone();
    frontend.on_take_back(Box::new(move |_offset, page| {
        assert_eq!(page.len(), 4096);
        sink.fetch_add(1, Ordering::Relaxed);
    }));
    // A second pool with a frontend, as large, of four times the weight: it gives back a
    // quarter as much.
    let heavy = host
        .create_pool_from(&PoolConfig { weight: Some(400), ..PoolConfig::new("q", vec![BackendRequest::new("ram")]) })
        .expect("pool q");
    let heavy_frontend = FrontendClient::connect(&socket, TOKEN, "q", "governor-test-q").expect("frontend attaches");
    let heavy_taken = Arc::new(AtomicU64::new(0));
    let sink = heavy_taken.clone();
    heavy_frontend.on_take_back(Box::new(move |_offset, _page| {
        sink.fetch_add(1, Ordering::Relaxed);
    }));
    let pages: Vec<Vec<u8>> = (0..3000).map(page).collect();
    for client in [&frontend, &heavy_frontend] {
        for chunk in (0..3000u64).collect::<Vec<_>>().chunks(100) {
            let ops: Vec<Op<'_>> = chunk.iter().map(|&i| Op::Store(i, &pages[i as usize])).collect();
            for result in client.batch(&ops).unwrap() {
                assert!(matches!(result, OpResult::Stored), "{result:?}");
            }
        }
    }
    assert_eq!((pool.curr_pages(), heavy.curr_pages()), (3000, 3000));
    assert_eq!(heavy.weight(), 400);
    for bad in [0, 1001] {
        let config = PoolConfig { weight: Some(bad), ..PoolConfig::new("w", vec![BackendRequest::new("ram")]) };
        let refused = host.create_pool_from(&config).expect_err("a weight out of range");
        assert!(refused.to_string().contains("weight"), "{refused}");
    }

    // A tiered pair, written in-process; no frontend, so it cannot shrink — it demotes, to a
    // lower tier on disk (what a demotion frees of the budget: an in-memory lower tier needs
    // budget of its own, which a lowered target refuses).
    let zstd = BackendRequest::with_config("zstd", json!({"level": 3}));
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    host.create_pool_from(&PoolConfig::new("cold", vec![zstd, sled])).expect("lower pool");
    let hot = host
        .create_pool_from(&PoolConfig {
            tier: Some(TierConfig { pressure_percent: 100, ..TierConfig::new("cold", 1) }),
            ..PoolConfig::new("hot", vec![BackendRequest::new("lz4"), BackendRequest::new("ram")])
        })
        .expect("upper pool");
    for i in 0..500 {
        assert_eq!(hot.store(i, &page(10_000 + i)).unwrap(), StoreOutcome::Stored);
    }
    // The mover's first pass clears the pages' reference bits; then a few of the tier's
    // units (idle_seconds / 8) pass: the pages have aged, none is idle yet.
    host.run_tier_passes();
    std::thread::sleep(Duration::from_millis(400));

    // Calm: the target is above the operator's limit, which alone holds stores.
    let governor = host.governor();
    let verdict = governor.observe(calm());
    assert!(verdict.target >= LIMIT, "{verdict:?}");
    assert_eq!(budget.limit(), LIMIT);
    let info = tmem_host::rest::memory::memory_info(&host);
    let gov = info.governor.clone().expect("the governor is reported");
    assert!(gov.enabled && gov.target_bytes == Some(verdict.target), "{gov:?}");
    assert_eq!((info.limit_bytes, info.effective_limit_bytes), (Some(LIMIT), Some(LIMIT)));
    assert_eq!((gov.mem_available_bytes, gov.psi_some_avg10), (Some(12 * GIB), Some(0.0)));
    assert_eq!(taken.load(Ordering::Relaxed), 0, "nothing shrunk while calm");

    // Pressure: the target goes below what is held; the tiered pool demotes, the pool with a
    // frontend gives pages back through the socket.
    let used_before = budget.used();
    let verdict = governor.observe(pressure());
    assert_eq!((verdict.decision, verdict.reason), (Decision::Lower, Reason::PsiHigh));
    assert!(budget.limit() < used_before && budget.operator_limit() == LIMIT, "{verdict:?}");
    let status = governor.status();
    assert!(
        status.demoted_pages > 0 && hot.tier().unwrap().lower.curr_pages() > 0,
        "the tiered pool demoted: {status:?} {:?}",
        hot.tier().unwrap().last_pass()
    );
    assert!(status.shrinks >= 1 && status.shrunk_pages > 0, "{status:?}");
    let back = taken.load(Ordering::Relaxed);
    assert!(
        back > 0 && pool.curr_pages() < 3000,
        "pages went back to the frontend: {back}, {} left",
        pool.curr_pages()
    );
    assert_eq!(pool.curr_pages() + back, 3000, "every page that left went to the frontend");
    let heavy_back = heavy_taken.load(Ordering::Relaxed);
    assert_eq!(heavy.curr_pages() + heavy_back, 3000);
    assert!(heavy_back > 0 && heavy_back * 3 < back, "by weight: {heavy_back} of q (400) vs {back} of p (100)");

    // Between the watermarks: the target holds, and nothing more is shrunk — what the
    // shrink freed counts at once (free slots are not usage), even before the arena gives
    // the memory back.
    let verdict = governor.observe(readings(12 * GIB, 5.0));
    assert_eq!((verdict.decision, verdict.reason), (Decision::Hold, Reason::BetweenWatermarks));
    assert_eq!(governor.status().shrinks, status.shrinks, "no second shrink for the same excess");
    assert_eq!(taken.load(Ordering::Relaxed), back);

    // More pressure: down to nothing; new stores are refused (after what the arena had
    // committed ahead and the slots the shrink freed).
    for _ in 0..20 {
        governor.observe(pressure());
    }
    assert_eq!(budget.target(), Some(0));
    assert_eq!(budget.limit(), 0);
    let mut refused = 0;
    for i in 0..8000u64 {
        match pool.store(100_000 + i, &page(20_000 + i)).unwrap() {
            StoreOutcome::Rejected(RejectReason::AllocFail) => refused += 1,
            StoreOutcome::Rejected(other) => panic!("{other:?}"),
            _ => {}
        }
    }
    assert!(refused > 0, "a target of 0 refuses stores");
    // (8,000 pages are 32 MiB: under the operator's limit alone, each would have been taken.)

    // Calm again: raised by steps (10% of the operator's limit each) back above it.
    let mut raises = 0;
    while budget.limit() < LIMIT {
        let verdict = governor.observe(calm());
        assert_eq!(verdict.decision, Decision::Raise);
        raises += 1;
        assert!(raises <= 11, "back to the operator's limit in ten steps");
    }
    assert!(raises >= 9, "raised by steps, not at once: {raises}");
    let mut accepted = false;
    for attempt in 0..300 {
        if pool.store(200_000 + attempt, &page(30_000 + attempt)).unwrap() == StoreOutcome::Stored {
            accepted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(accepted, "a raised target takes stores again");

    // Reported: GET /api/v1/memory's body and /metrics.
    let info = tmem_host::rest::memory::memory_info(&host);
    let gov = info.governor.expect("reported");
    assert!(gov.lowers >= 2 && gov.raises >= 9 && gov.shrinks >= 1, "{gov:?}");
    assert_eq!(gov.last_decision.as_deref(), Some("raise"));
    assert_eq!(gov.last_reason.as_deref(), Some("calm"));
    assert_eq!(info.effective_limit_bytes, Some(LIMIT));
    let metrics = tmem_host::rest::metrics::render(&host);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
            .to_string()
    };
    assert_eq!(value("tmem_governor_effective_limit_bytes"), (LIMIT).to_string());
    assert_eq!(value("tmem_governor_target_bytes"), budget.target().unwrap().to_string());
    assert_eq!(value("tmem_memory_psi_some_avg10"), "0");
    assert_eq!(value("tmem_governor_enabled"), "1");
    assert_eq!(value("tmem_governor_decisions_total{decision=\"shrink\"}"), gov.shrinks.to_string());

    // Off: the operator's limit alone, at once.
    governor.set_config(GovernorConfig { enabled: false, ..GovernorConfig::default() }).unwrap();
    assert_eq!((budget.target(), budget.limit()), (None, LIMIT));
    assert_eq!(governor.observe(pressure()).decision, Decision::Off);
    assert_eq!(budget.limit(), LIMIT, "an off governor lowers nothing");
}

#[test]
fn the_governor_thread_reads_this_machine_and_the_api_switches_it() {
    let server = ServeProcess::start(&temp_dir("governor-serve"), &["--memory-limit", "64M"]);
    let client = server.client();
    // The thread reads /proc within its first interval.
    let mut memory = client.memory().unwrap();
    for _ in 0..100 {
        if memory.governor.as_ref().is_some_and(|g| g.last_decision.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        memory = client.memory().unwrap();
    }
    let governor = memory.governor.clone().expect("reported");
    assert!(governor.enabled, "on by default: {governor:?}");
    assert!(governor.mem_available_bytes.is_some_and(|b| b > 0), "{governor:?}");
    if std::path::Path::new("/proc/pressure/memory").exists() {
        let some = governor.psi_some_avg10.expect("this machine has PSI");
        assert!((0.0..=100.0).contains(&some), "{governor:?}");
    }
    assert!(governor.reserve_bytes >= 256 * MIB, "{governor:?}");
    assert!(governor.target_bytes.is_some(), "{governor:?}");
    assert_eq!(memory.limit_bytes, Some(64 * MIB));
    assert!(memory.effective_limit_bytes.is_some_and(|e| e <= 64 * MIB), "{memory:?}");
    let metrics = String::from_utf8(client.request("GET", "/metrics", None, false).unwrap().1).unwrap();
    for name in ["tmem_governor_target_bytes ", "tmem_governor_effective_limit_bytes ", "tmem_memory_available_bytes "]
    {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }

    // Switched off through the API: the operator's limit alone.
    let off = MemoryPatch {
        governor: Some(GovernorPatch { enabled: Some(false), ..Default::default() }),
        ..Default::default()
    };
    let memory = client.set_memory(&off).unwrap();
    let governor = memory.governor.unwrap();
    assert!(!governor.enabled && governor.target_bytes.is_none(), "{governor:?}");
    assert_eq!(memory.effective_limit_bytes, Some(64 * MIB));
    // Knobs and a limit in one body; on again.
    let on = MemoryPatch {
        limit_bytes: Some(128 * MIB),
        governor: Some(GovernorPatch {
            enabled: Some(true),
            reserve_percent: Some(1),
            psi_high: Some(30.0),
            psi_low: Some(5.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let memory = client.set_memory(&on).unwrap();
    let governor = memory.governor.unwrap();
    assert_eq!(memory.limit_bytes, Some(128 * MIB));
    assert!(governor.enabled && governor.psi_high == 30.0 && governor.psi_low == 5.0, "{governor:?}");
    assert_eq!(governor.reserve_percent, Some(1));
    // Refused, with nothing changed: watermarks crossed, two reserves, nothing at all.
    for (bad, code) in [
        (GovernorPatch { psi_low: Some(50.0), ..Default::default() }, "invalid_governor"),
        (
            GovernorPatch { reserve_bytes: Some(GIB), reserve_percent: Some(5), ..Default::default() },
            "invalid_governor",
        ),
    ] {
        let patch = MemoryPatch { limit_bytes: Some(32 * MIB), governor: Some(bad), ..Default::default() };
        match client.set_memory(&patch) {
            Err(ClientError::Api { status: 400, code: got, .. }) => assert_eq!(got, code),
            other => panic!("{other:?}"),
        }
    }
    let memory = client.memory().unwrap();
    assert_eq!(memory.limit_bytes, Some(128 * MIB), "a refused body changes nothing");
    assert_eq!(memory.governor.unwrap().psi_low, 5.0);

    // `--governor off` at start.
    let server = ServeProcess::start(&temp_dir("governor-off"), &["--governor", "off"]);
    let governor = server.client().memory().unwrap().governor.unwrap();
    assert!(!governor.enabled && governor.target_bytes.is_none(), "{governor:?}");
}
