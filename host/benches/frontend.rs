//! Benchmark of the frontend path: userfaultfd fault-in latency through a pool, and the frontend
//! protocol's throughput, each with its baseline measured in the same run.
//!
//! `cargo bench -p tmem-host --bench frontend` (or `-- --region-pages N --resident N --pages N`;
//! `-- --prefetch-only` runs part 3 alone).
//! One in-process host serves the frontend protocol on a Unix socket (a tokio runtime); the
//! frontends are real `FrontendClient`s connected to it. Realistic page contents (15% zero,
//! 15% random, 70% text).
//!
//! 1. **Fault-in latency.** A `Region` of 8192 pages with a resident limit of 1024, whose backend
//!    is a `FrontendClient` attached to `[ram]`, then to `[zstd, ram]`. Every page is written
//!    once, then the non-zero pages are read in random order (zero pages are dropped on eviction
//!    and refault as zero-fills, which are not what is measured) until the region has taken more
//!    than 65 536 missing faults in the read phase, so its own latency samples (it keeps the last
//!    65 536) are all read-phase loads. Reported: the **application side** — one 4 KiB
//!    `Region::read` of a page that `mincore` says is not resident, timed by the reading thread,
//!    fault included — and the **handler side**, the region's `missing_fault_latency` (from the
//!    fault message being read to the ioctl that resolved it; eviction included). Under
//!    `[zstd, ram]` the random pages compress poorly, are refused, and come from the region's
//!    backing file instead of the pool (the counts are printed).
//!    **Baseline:** `bare_copy_fault_latency`, a bare userfaultfd handler answering every missing
//!    fault with `UFFDIO_COPY` of a fixed page (no pool, no eviction), timed the same way. Goal:
//!    p50 through `[ram]` at most 2x the baseline's.
//! 2. **Protocol throughput.** Stores/s then loads/s of 50 000 pages through
//!    `FrontendClient::batch` in batches of 64 ops and of 1 op, against a `[ram]` pool; baseline:
//!    the same work by in-process `Pool::store`/`Pool::load` on another `[ram]` pool of the same
//!    host. Goal: the protocol (64 ops a batch) at least 50% of in-process throughput.
//!
//! 3. **Prefetch.** The same region over `[ram]`, every page written, then read twice by a
//!    sequential scan of the whole region, and separately read by as many random pages, with
//!    the region's prefetch off, then on, in the same run: missing faults and wall time of the
//!    read phase, and the on/off ratios (the scan should take far fewer faults and less time;
//!    random access should be unchanged). Each alternated three times; the fastest run of
//!    each is shown. Every page read is checked.
//!
//! Fault latencies are mostly cross-thread wake-ups, so they depend on how busy the CPUs are:
//! on a VM, waking a thread on an idle CPU can cost tens of µs and dominate the bare baseline.
//! Compare runs made under the same conditions.
//!
//! The fault part needs userfaultfd (root, or access to /dev/userfaultfd); without it that part
//! is skipped and the protocol part still runs. Nothing here asserts a timing.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tmem_api::rest::{BackendRequest, PoolConfig};
use tmem_frontend::client::{FrontendClient, Op, OpResult};
use tmem_frontend::region::{LatencySummary, Region, RegionConfig, bare_copy_fault_latency};
use tmem_host::rest::auth::ApiToken;
use tmem_host::workload::{self, PageClass, Rng};
use tmem_host::{Host, HostConfig, LoadOutcome, Pool, StoreOutcome};

const PAGE: usize = 4096;
const SEED: u64 = 23;
const TOKEN: &str = "bench";
/// Latency samples a region keeps (the most recent ones).
const REGION_SAMPLES: u64 = 65_536;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// The same percentile as the region's own summaries.
fn percentile(sorted: &[u64], q: usize) -> u64 {
    sorted[(sorted.len() - 1) * q / 100]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

struct FaultFigures {
    /// Application side: p50, p99 (ns) over `faults` reads of non-resident pages.
    app_p50: u64,
    app_p99: u64,
    faults: usize,
    /// Reads of pages that were resident (not timed into the figures).
    hits: usize,
    handler: LatencySummary,
    pool_loads: u64,
    file_loads: u64,
    rejected_to_file: u64,
}

/// Whether the page at `addr` is mapped (`mincore`), without touching it.
fn resident(addr: *mut u8) -> bool {
    let mut vec = 0u8;
    // SAFETY: one page-aligned page inside a live mapping; the result is one byte.
    let r = unsafe { libc::mincore(addr.cast(), PAGE, &mut vec) };
    r == 0 && vec & 1 == 1
}

fn fault_run(socket: &Path, pool: &str, pages: usize, resident_limit: usize) -> std::io::Result<FaultFigures> {
    let client = FrontendClient::connect(socket, TOKEN, pool, "bench-region")?;
    let config = RegionConfig::new(pages * PAGE, resident_limit, std::env::temp_dir());
    let region = Region::new(Box::new(client), config)?;
    let mut page = vec![0u8; PAGE];
    for p in 0..pages {
        workload::fill_page(SEED, p as u64, &mut page);
        region.write(p * PAGE, &page);
    }

    let mut order: Vec<usize> = (0..pages).filter(|&p| workload::class_of(SEED, p as u64) != PageClass::Zero).collect();
    let mut expected = vec![0u8; PAGE];
    let mut rng = Rng::new(SEED);
    let mut samples = Vec::new();
    let mut hits = 0;
    let before = region.stats();
    loop {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &p in &order {
            // SAFETY: page `p` is inside the region.
            let was_resident = resident(unsafe { region.as_ptr().add(p * PAGE) });
            let started = Instant::now();
            region.read(p * PAGE, &mut page);
            let ns = started.elapsed().as_nanos() as u64;
            if was_resident {
                hits += 1;
            } else {
                samples.push(ns);
            }
            workload::fill_page(SEED, p as u64, &mut expected);
            assert!(page == expected, "page {p} read back wrong through {pool}");
        }
        // (A fault's sample is published just after its page is installed: allow a few.)
        if region.stats().missing_faults - before.missing_faults > REGION_SAMPLES + 16 {
            break;
        }
    }
    // Counters are published just after a fault is resolved: let the last one land.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let after = region.stats();
    assert_eq!(after.load_failures + after.io_errors, 0, "{after:#?}");
    region.into_backend()?.invalidate_area()?;
    samples.sort_unstable();
    Ok(FaultFigures {
        app_p50: percentile(&samples, 50),
        app_p99: percentile(&samples, 99),
        faults: samples.len(),
        hits,
        handler: after.missing_fault_latency,
        pool_loads: after.pool_loads - before.pool_loads,
        file_loads: after.file_loads - before.file_loads,
        rejected_to_file: after.rejected_to_file,
    })
}

fn fault_latency(socket: &Path, pages: usize, resident_limit: usize) {
    println!(
        "1. Fault-in latency: a region of {pages} pages, resident limit {resident_limit}; every page written, then the non-zero \
         pages read in random order"
    );
    println!("   app = one 4 KiB read of a non-resident page, timed by the reading thread (fault included);");
    println!(
        "   handler = the region's missing_fault_latency (fault message read -> resolving ioctl, eviction included)"
    );
    println!();
    let bare_pages = REGION_SAMPLES as usize;
    let (bare_p50, bare_p99) = match bare_copy_fault_latency(bare_pages) {
        Ok(figures) => figures,
        Err(e) => {
            println!("   skipped: userfaultfd is not available ({e})");
            println!();
            return;
        }
    };
    println!(
        "   {:<44} app p50 {:>7.1} µs  p99 {:>7.1} µs  ({bare_pages} faults)",
        "bare userfaultfd, UFFDIO_COPY (baseline)",
        us(bare_p50),
        us(bare_p99)
    );
    for (label, pool, goal) in [("Region over [ram]", "ram", true), ("Region over [zstd, ram]", "zstd-ram", false)] {
        let f = match fault_run(socket, pool, pages, resident_limit) {
            Ok(f) => f,
            Err(e) => {
                println!("   {label:<44} failed: {e}");
                continue;
            }
        };
        let p50_ratio = f.app_p50 as f64 / bare_p50 as f64;
        println!(
            "   {label:<44} app p50 {:>7.1} µs  p99 {:>7.1} µs  ({} faults, {} resident hits)  vs bare: p50 {:.2}x, p99 {:.2}x{}",
            us(f.app_p50),
            us(f.app_p99),
            f.faults,
            f.hits,
            p50_ratio,
            f.app_p99 as f64 / bare_p99 as f64,
            if goal {
                format!("  (goal: p50 <= 2x: {})", if p50_ratio <= 2.0 { "met" } else { "NOT met" })
            } else {
                String::new()
            }
        );
        println!(
            "   {:<44} handler p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs  (its last {} samples; the read phase loaded {} pages \
             from the pool, {} from the backing file; the pool refused {} pages)",
            "",
            us(f.handler.p50_ns),
            us(f.handler.p99_ns),
            us(f.handler.max_ns),
            f.handler.count,
            f.pool_loads,
            f.file_loads,
            f.rejected_to_file
        );
    }
    println!();
}

struct PrefetchFigures {
    faults: u64,
    secs: f64,
    prefetched: u64,
    late: u64,
    wasted: u64,
    coverage: f64,
    accuracy: f64,
}

/// Writes every page of a fresh region, then reads `order` (checking every page): the read
/// phase's missing faults, wall time and prefetch figures.
fn prefetch_run(
    socket: &Path,
    pages: usize,
    resident_limit: usize,
    prefetch: bool,
    order: &[usize],
) -> std::io::Result<PrefetchFigures> {
    let client = FrontendClient::connect(socket, TOKEN, "ram", "bench-prefetch")?;
    let config = RegionConfig { prefetch, ..RegionConfig::new(pages * PAGE, resident_limit, std::env::temp_dir()) };
    let region = Region::new(Box::new(client), config)?;
    let mut page = vec![0u8; PAGE];
    for p in 0..pages {
        workload::fill_page(SEED, p as u64, &mut page);
        region.write(p * PAGE, &page);
    }
    // The check's expected pages, computed before the timing.
    let expected: Vec<u64> =
        (0..pages).map(|p| workload::page(SEED, p as u64, PAGE).iter().map(|&b| b as u64).sum()).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = region.stats();
    let started = Instant::now();
    let mut sums = Vec::with_capacity(order.len());
    for &p in order {
        region.read(p * PAGE, &mut page);
        sums.push(page.iter().map(|&b| b as u64).sum::<u64>());
    }
    let secs = started.elapsed().as_secs_f64();
    for (&p, &sum) in order.iter().zip(&sums) {
        assert_eq!(sum, expected[p], "page {p} read back wrong (prefetch {prefetch})");
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let after = region.stats();
    assert_eq!(after.load_failures + after.io_errors, 0, "{after:#?}");
    region.into_backend()?.invalidate_area()?;
    let faults = after.missing_faults - before.missing_faults;
    let hits = after.prefetch_hits - before.prefetch_hits;
    let prefetched = after.prefetched_pages - before.prefetched_pages;
    Ok(PrefetchFigures {
        faults,
        secs,
        prefetched,
        late: after.prefetch_late - before.prefetch_late,
        wasted: after.prefetch_wasted - before.prefetch_wasted,
        coverage: if faults + hits == 0 { 0.0 } else { hits as f64 / (faults + hits) as f64 },
        accuracy: if prefetched == 0 { 0.0 } else { hits as f64 / prefetched as f64 },
    })
}

fn prefetch(socket: &Path, pages: usize, resident_limit: usize) -> std::io::Result<()> {
    println!(
        "3. Prefetch: a region of {pages} pages, resident limit {resident_limit}, over [ram]; every page written, then read; prefetch off vs on"
    );
    println!();
    let mut rng = Rng::new(SEED + 1);
    let scan: Vec<usize> = (0..pages).chain(0..pages).collect();
    let random: Vec<usize> = (0..scan.len()).map(|_| rng.below(pages as u64) as usize).collect();
    for (label, order) in [("sequential scan (2 passes)", &scan), ("random pages", &random)] {
        // Alternated, three times each; the fastest run of each counts (the machine may be
        // shared: the minimum is the least disturbed).
        let (mut off, mut on) = (None::<PrefetchFigures>, None::<PrefetchFigures>);
        for _ in 0..3 {
            for (enabled, best) in [(false, &mut off), (true, &mut on)] {
                let run = prefetch_run(socket, pages, resident_limit, enabled, order)?;
                if best.as_ref().is_none_or(|b| run.secs < b.secs) {
                    *best = Some(run);
                }
            }
        }
        let (off, on) = (off.expect("ran"), on.expect("ran"));
        println!(
            "   {label:<28} off: {:>6} faults {:>8.1} ms | on: {:>6} faults {:>8.1} ms, {:>6} prefetched ({} late, {} wasted), coverage {:>5.1}%, accuracy {:>5.1}% | on/off: faults {:.3}x, time {:.2}x",
            off.faults,
            off.secs * 1e3,
            on.faults,
            on.secs * 1e3,
            on.prefetched,
            on.late,
            on.wasted,
            100.0 * on.coverage,
            100.0 * on.accuracy,
            on.faults as f64 / off.faults.max(1) as f64,
            on.secs / off.secs
        );
    }
    println!();
    Ok(())
}

struct Throughput {
    stores_per_s: f64,
    loads_per_s: f64,
}

/// Distinct realistic pages, generated before any timing.
fn page_set() -> Vec<Vec<u8>> {
    (0..4096).map(|i| workload::page(SEED, i, PAGE)).collect()
}

fn in_process(pool: &Pool, pages: u64, set: &[Vec<u8>]) -> Throughput {
    let started = Instant::now();
    let mut stored = 0u64;
    for offset in 0..pages {
        if pool.store(offset, &set[offset as usize % set.len()]).expect("store") == StoreOutcome::Stored {
            stored += 1;
        }
    }
    let store_secs = started.elapsed().as_secs_f64();
    assert_eq!(stored, pages, "the in-process pool refused pages");
    let mut page = vec![0u8; PAGE];
    let started = Instant::now();
    for offset in 0..pages {
        assert_ne!(pool.load(offset, &mut page).expect("load"), LoadOutcome::Absent);
    }
    let load_secs = started.elapsed().as_secs_f64();
    Throughput { stores_per_s: pages as f64 / store_secs, loads_per_s: pages as f64 / load_secs }
}

fn protocol(client: &FrontendClient, pages: u64, batch: u64, set: &[Vec<u8>]) -> std::io::Result<Throughput> {
    let started = Instant::now();
    for first in (0..pages).step_by(batch as usize) {
        let ops: Vec<Op<'_>> = (first..(first + batch).min(pages))
            .map(|offset| Op::Store(offset, &set[offset as usize % set.len()]))
            .collect();
        let results = client.batch(&ops)?;
        assert!(
            results.iter().all(|r| *r == OpResult::Stored),
            "the pool refused pages: {:?}",
            results.iter().find(|r| **r != OpResult::Stored)
        );
    }
    let store_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for first in (0..pages).step_by(batch as usize) {
        let ops: Vec<Op<'_>> = (first..(first + batch).min(pages)).map(Op::Load).collect();
        let results = client.batch(&ops)?;
        assert!(results.iter().all(|r| matches!(r, OpResult::Loaded { .. })), "pages missing from the pool");
    }
    let load_secs = started.elapsed().as_secs_f64();
    // Each run starts from an empty pool, as the in-process baseline does.
    client.batch(&[Op::InvalidateArea])?;
    Ok(Throughput { stores_per_s: pages as f64 / store_secs, loads_per_s: pages as f64 / load_secs })
}

fn throughput(socket: &Path, inproc: &Pool, pages: u64) -> std::io::Result<()> {
    println!("2. Protocol throughput: {pages} pages of 4 KiB, one thread, [ram] pools");
    println!();
    let set = page_set();
    let base = in_process(inproc, pages, &set);
    println!(
        "   {:<44} {:>9.0} stores/s  {:>9.0} loads/s",
        "in-process Pool::store / Pool::load (baseline)", base.stores_per_s, base.loads_per_s
    );
    let client = FrontendClient::connect(socket, TOKEN, "ram", "bench-protocol")?;
    let mut per_batch = Vec::new();
    for batch in [64, 1] {
        let t = protocol(&client, pages, batch, &set)?;
        let (stores, loads) = (100.0 * t.stores_per_s / base.stores_per_s, 100.0 * t.loads_per_s / base.loads_per_s);
        let goal = if batch == 64 {
            format!("  (goal >= 50%: {})", if stores >= 50.0 && loads >= 50.0 { "met" } else { "NOT met" })
        } else {
            String::new()
        };
        println!(
            "   {:<44} {:>9.0} stores/s  {:>9.0} loads/s  = {stores:>5.1}% / {loads:>5.1}% of in-process{goal}",
            format!("FrontendClient::batch, {batch} op{} a batch", if batch == 1 { "" } else { "s" }),
            t.stores_per_s,
            t.loads_per_s,
        );
        per_batch.push(t);
    }
    println!(
        "   batching (64 ops vs 1 op a batch) buys: stores {:.1}x, loads {:.1}x",
        per_batch[0].stores_per_s / per_batch[1].stores_per_s,
        per_batch[0].loads_per_s / per_batch[1].loads_per_s
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let region_pages = arg(&args, "--region-pages", 8192);
    let resident_limit = arg(&args, "--resident", 1024);
    let pages = arg(&args, "--pages", 50_000) as u64;

    let host = Arc::new(Host::new(HostConfig::default()).expect("host"));
    let ram = || BackendRequest::new("ram");
    host.create_pool_from(&PoolConfig::new("ram", vec![ram()])).expect("[ram] pool");
    host.create_pool_from(&PoolConfig::new("zstd-ram", vec![BackendRequest::new("zstd"), ram()]))
        .expect("[zstd, ram] pool");
    let inproc = host.create_pool_from(&PoolConfig::new("inproc", vec![ram()])).expect("in-process [ram] pool");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let socket = std::env::temp_dir().join(format!("tmem-bench-frontend-{}.sock", std::process::id()));
    let listener = {
        let _context = runtime.enter();
        tmem_host::frontend::socket::bind(&socket).expect("bind the frontend socket")
    };
    runtime.spawn(tmem_host::frontend::socket::serve_frontends(
        host.clone(),
        ApiToken::new(TOKEN),
        listener,
        tmem_host::listen::ListenerLimits::FRONTEND,
        tmem_host::unix_access::UnixAccess::private(),
        std::future::pending(),
    ));

    println!(
        "tmem frontend benchmark: one in-process host serving the frontend protocol on a Unix socket, realistic pages \
         (15% zero, 15% random, 70% text), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    let prefetch_only = args.iter().any(|a| a == "--prefetch-only");
    if !prefetch_only {
        fault_latency(&socket, region_pages, resident_limit);
    }
    if std::fs::File::open("/dev/userfaultfd").is_ok()
        && let Err(e) = prefetch(&socket, region_pages, resident_limit)
    {
        println!("   prefetch failed: {e}");
    }
    if !prefetch_only && let Err(e) = throughput(&socket, &inproc, pages) {
        println!("   protocol throughput failed: {e}");
    }
    drop(runtime);
    let _ = std::fs::remove_file(&socket);
}
