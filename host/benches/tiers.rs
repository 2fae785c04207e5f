//! Tiered pools benchmark (issue 17), its baselines measured in the same run.
//!
//! `cargo bench -p tmem-host --bench tiers [-- --pages N]` (default 100,000 pages of 4 KiB:
//! 15% zero, 15% random, 70% text-like, as the chains bench). One thread. It measures:
//!
//! - **Demotion**: every page stored into an upper `[lz4, ram]` pool whose lower tier is
//!   `[zstd, ram]`, left idle, then moved down by mover passes run on this thread: pages/s and
//!   the mover's CPU time per page (`getrusage(RUSAGE_THREAD)`), against storing the same
//!   pages straight into a `[zstd, ram]` pool (what a demotion does beyond a decode).
//! - **Promotion**: every page loaded back through the upper pool (promoted on load): pages/s,
//!   against loading them from a single `[lz4, ram]` pool (where they never left).
//! - **Memory**: what the pages take once demoted (both tiers' stored bytes, and the arena's
//!   slots and index) against a single `[lz4, ram]` pool holding them all, and against zram
//!   with lz4 given the same pages (`mm_stat`: `compr_data_size`, `mem_used_total` plus zram's
//!   16-byte table entry per page) — when `/sys/block/zram0` is there, unused, and we are root.
//!
//! Every page is read back and compared. Timings are one run on a noisy machine: ratios within
//! the run are what to compare.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tmem_api::rest::{BackendRequest, PoolConfig, Promote, TierConfig};
use tmem_host::workload;
use tmem_host::{Host, HostConfig, LoadOutcome, MemoryLimit, Pool, StoreOutcome};

const PAGE: usize = 4096;
/// Distinct page contents, reused round-robin (as the chains bench).
const DISTINCT: u64 = 4096;

fn host() -> Host {
    Host::new(HostConfig { memory_limit: MemoryLimit::Unlimited, manual_tier_passes: true, ..Default::default() })
        .expect("host starts")
}

/// Incompressible pages are kept whole, as zram keeps them (the filters' default refuses them).
fn raw_when_incompressible(codec: &str) -> BackendRequest {
    BackendRequest::with_config(codec, json!({"on_incompressible": "store_raw"}))
}

fn lz4_ram() -> Vec<BackendRequest> {
    vec![raw_when_incompressible("lz4"), BackendRequest::new("ram")]
}

/// zstd at its default level, as a cold tier would run it.
fn zstd_ram() -> Vec<BackendRequest> {
    vec![raw_when_incompressible("zstd"), BackendRequest::new("ram")]
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid out-pointer for getrusage.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Stores pages `0..n` into `pool`; their rate (pages/s).
fn store_all(pool: &Pool, pages: &[Vec<u8>], n: u64) -> f64 {
    let start = Instant::now();
    for o in 0..n {
        assert_eq!(pool.store(o, &pages[(o % DISTINCT) as usize]).unwrap(), StoreOutcome::Stored, "store {o}");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Loads pages `0..n` from `pool`, comparing each; their rate (pages/s).
fn load_all(pool: &Pool, pages: &[Vec<u8>], n: u64) -> f64 {
    let mut out = vec![0u8; PAGE];
    let start = Instant::now();
    for o in 0..n {
        assert!(matches!(pool.load(o, &mut out).unwrap(), LoadOutcome::Loaded { .. }), "load {o}");
        assert!(out == pages[(o % DISTINCT) as usize], "page {o} read back wrong");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Bytes the host keeps for pages: the arena's slots (stored bytes and class rounding) and
/// the page index (chunks in the arena, hash tables on the heap).
fn kept_bytes(host: &Host) -> u64 {
    let stats = host.page_arena().stats();
    stats.slot_bytes + stats.index_chunk_bytes + stats.index_heap_bytes
}

/// zram with lz4 given the same pages: (compr_data_size, mem_used_total + 16 B/page), or why
/// it was skipped.
fn zram_lz4(pages: &[Vec<u8>], n: u64) -> Result<(u64, u64), String> {
    let sys = std::path::Path::new("/sys/block/zram0");
    let read = |f: &str| std::fs::read_to_string(sys.join(f)).map(|s| s.trim().to_string());
    if read("disksize").map_err(|e| format!("no /sys/block/zram0 ({e})"))? != "0" {
        return Err("/dev/zram0 is in use".into());
    }
    let write = |f: &str, v: String| std::fs::write(sys.join(f), v).map_err(|e| format!("{f}: {e} (needs root)"));
    write("comp_algorithm", "lz4".into())?;
    write("disksize", (n * PAGE as u64).to_string())?;
    let result = (|| {
        let mut dev = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open("/dev/zram0")
            .map_err(|e| format!("/dev/zram0: {e}"))?;
        // O_DIRECT wants an aligned buffer: a page-aligned allocation of one page.
        let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap();
        // SAFETY: a non-zero layout; freed below.
        let buf = unsafe { std::alloc::alloc(layout) };
        // SAFETY: `buf` is PAGE bytes, live until dealloc.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf, PAGE) };
        let mut written = Ok(());
        for o in 0..n {
            slice.copy_from_slice(&pages[(o % DISTINCT) as usize]);
            if let Err(e) = dev.write_all(slice) {
                written = Err(format!("write to /dev/zram0: {e}"));
                break;
            }
        }
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buf, layout) };
        written?;
        let stat = read("mm_stat").map_err(|e| format!("mm_stat: {e}"))?;
        let f: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        Ok((f[1], f[2] + 16 * n))
    })();
    let _ = write("reset", "1".into());
    result
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--pages")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let pages: Vec<Vec<u8>> = (0..DISTINCT).map(|i| workload::page(2024, i, PAGE)).collect();
    println!("tmem tiers benchmark: {n} pages of 4 KiB, one thread, mixed contents (15% zero, 15% random, 70% text)\n");

    // The single [lz4, ram] pool: where the pages would stay without a tier.
    let single_host = host();
    let single = single_host.create_pool_from(&PoolConfig::new("single", lz4_ram())).unwrap();
    let single_store = store_all(&single, &pages, n);
    let single_load = load_all(&single, &pages, n);
    let single_stored = single.counters().pool_total_size;
    let single_kept = kept_bytes(&single_host);
    drop(single);
    drop(single_host);

    // Straight into [zstd, ram]: the encoding half of a demotion.
    let direct_host = host();
    let direct = direct_host.create_pool_from(&PoolConfig::new("direct", zstd_ram())).unwrap();
    let direct_store = store_all(&direct, &pages, n);
    let direct_stored = direct.counters().pool_total_size;
    drop(direct);
    drop(direct_host);

    // The pair: stored up, left idle, moved down by passes on this thread, loaded back.
    let host = host();
    let lower: Arc<Pool> = host.create_pool_from(&PoolConfig::new("cold", zstd_ram())).unwrap();
    let upper = host
        .create_pool_from(&PoolConfig {
            tier: Some(TierConfig { promote: Promote::OnLoad, pressure_percent: 100, ..TierConfig::new("cold", 1) }),
            ..PoolConfig::new("hot", lz4_ram())
        })
        .unwrap();
    let tiered_store = store_all(&upper, &pages, n);
    host.run_tier_passes(); // takes the stores' reference bits
    std::thread::sleep(Duration::from_millis(1150));
    let (cpu0, start) = (thread_cpu(), Instant::now());
    let mut demoted = 0;
    while upper.curr_pages() > 0 {
        let moved: u64 = host.run_tier_passes().iter().map(|(_, p)| p.demoted).sum();
        assert!(moved > 0, "a pass moved nothing with {} pages idle up", upper.curr_pages());
        demoted += moved;
    }
    let (demote_wall, demote_cpu) = (start.elapsed(), thread_cpu() - cpu0);
    assert_eq!(demoted, n);
    let lower_stored = lower.counters().pool_total_size;
    let tiered_kept = kept_bytes(&host);
    let promote = load_all(&upper, &pages, n);
    assert_eq!((upper.curr_pages(), lower.curr_pages()), (n, 0), "every page promoted on load");

    let zram = zram_lz4(&pages, n);

    let per_page = |bytes: u64| bytes as f64 / n as f64;
    let demote_rate = demoted as f64 / demote_wall.as_secs_f64();
    println!("{:<46} {:>12} {:>12}", "", "pages/s", "ratio");
    println!("{:<46} {:>12.0} {:>12}", "store into [zstd, ram] (baseline)", direct_store, "1.00");
    println!("{:<46} {:>12.0} {:>12.2}", "demote [lz4, ram] -> [zstd, ram]", demote_rate, demote_rate / direct_store);
    println!("{:<46} {:>12.0} {:>12}", "load from [lz4, ram] (baseline)", single_load, "1.00");
    println!("{:<46} {:>12.0} {:>12.2}", "load promoting [zstd, ram] -> [lz4, ram]", promote, promote / single_load);
    println!(
        "{:<46} {:>12.0} {:>12.2}",
        "store into the tiered [lz4, ram] / single",
        tiered_store,
        tiered_store / single_store
    );
    println!(
        "\nmover: {:.1} us of CPU per demoted page ({:.0}% of one core while it ran)\n",
        demote_cpu.as_secs_f64() * 1e6 / demoted as f64,
        demote_cpu.as_secs_f64() * 100.0 / demote_wall.as_secs_f64()
    );
    println!("{:<46} {:>12} {:>12} {:>12}", "memory, per page", "stored B", "kept B", "ratio");
    println!(
        "{:<46} {:>12.0} {:>12.0} {:>12}",
        "single [lz4, ram] (baseline)",
        per_page(single_stored),
        per_page(single_kept),
        "1.00"
    );
    println!(
        "{:<46} {:>12.0} {:>12.0} {:>12.2}",
        "tiered, every page demoted to [zstd, ram]",
        per_page(lower_stored),
        per_page(tiered_kept),
        tiered_kept as f64 / single_kept as f64
    );
    println!("{:<46} {:>12.0} {:>12} {:>12}", "[zstd, ram] alone (stored only)", per_page(direct_stored), "", "");
    match zram {
        Ok((compr, used)) => println!(
            "{:<46} {:>12.0} {:>12.0} {:>12.2}\n\ntiered kept / zram-lz4 used: {:.2}x",
            "zram lz4 (compr_data_size, mem_used + table)",
            per_page(compr),
            per_page(used),
            used as f64 / single_kept as f64,
            tiered_kept as f64 / used as f64
        ),
        Err(why) => println!("zram lz4: skipped ({why})"),
    }
}
