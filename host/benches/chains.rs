//! Data-path benchmark of the backend chains, with its baselines measured in the same run.
//!
//! `cargo bench -p tmem-host --bench chains` (or `-- --pages N`). One thread, realistic page
//! contents (15% zero, 15% random, 70% text-like). For each chain it reports stores/s and
//! loads/s through the host (Wasm plugins), the same work done natively in Rust (same zstd
//! level or the same lz4 crate, same same-filled rule, same map of boxed bytes), the ratio
//! Wasm/native (time per page), the compression ratio, lz4 against zstd-3, and host bytes per stored page beyond the stored bytes (the
//! heap, counted by a global allocator with `malloc_usable_size` plus glibc's 8-byte chunk
//! header, and the page arena's slots, whose class rounding is overhead too).
//! It also measures what the epoch deadline checks cost on the zstd chain.
//!
//! `-- --scale` instead measures how the host scales with the number of pages: `[ram]` at 10k
//! and 1M pages, `[zstd, ram]` at 10k, 1M and 10M compressible pages (10M raw pages would not
//! fit a 24 GiB machine), `[lz4, ram]` at 10k and 1M compressible pages, each with stores/s and loads/s, their ratio to the 10k rate (flat is
//! the goal: within 10%), and what the host keeps per page beyond the stored bytes (the page
//! index, class rounding, the heap). Takes some minutes and up to ~6 GiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use serde_json::json;
use tmem_host::plugin::EngineOptions;
use tmem_host::workload;
use tmem_host::{BackendSpec, Host, HostConfig, LoadOutcome, MemoryLimit, PoolSpec, StoreOutcome};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

fn footprint(ptr: *mut u8) -> i64 {
    // SAFETY: `ptr` came from the system allocator and is live.
    unsafe { libc::malloc_usable_size(ptr as *mut libc::c_void) as i64 + 8 }
}

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(footprint(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(footprint(ptr), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(footprint(ptr), Ordering::Relaxed);
        // SAFETY: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            LIVE.fetch_add(footprint(ptr), Ordering::Relaxed);
        } else {
            LIVE.fetch_add(footprint(p), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PAGE: usize = 4096;
const DISTINCT: u64 = 4096;

struct Run {
    stores_per_s: f64,
    loads_per_s: f64,
    stored: u64,
    stored_bytes: u64,
    heap_per_page: f64,
}

impl Run {
    /// The figures of one run: `attempted` stores took `store_secs`, the `stored` pages
    /// (`stored_bytes` in the backend) loaded back in `load_secs`, and the heap grew by `heap`.
    fn new(attempted: u64, stored: u64, store_secs: f64, load_secs: f64, stored_bytes: u64, heap: f64) -> Self {
        Run {
            stores_per_s: attempted as f64 / store_secs,
            loads_per_s: stored as f64 / load_secs,
            stored,
            stored_bytes,
            heap_per_page: (heap - stored_bytes as f64) / stored as f64,
        }
    }
}

fn pages() -> Vec<Vec<u8>> {
    (0..DISTINCT).map(|i| workload::page(2024, i, PAGE)).collect()
}

/// How the measured pool differs from the default.
#[derive(Clone, Copy, Default)]
struct Variant {
    /// Page checksums off (`integrity: false`).
    unchecked: bool,
    /// Every measured store under a canary (read back and compared).
    canary: bool,
}

fn through_host(engine: EngineOptions, chain: &[BackendSpec], pages: &[Vec<u8>], n: u64) -> Run {
    through_host_as(engine, chain, pages, n, Variant::default())
}

fn through_host_as(engine: EngineOptions, chain: &[BackendSpec], pages: &[Vec<u8>], n: u64, variant: Variant) -> Run {
    let config = HostConfig {
        data_dir: None,
        engine,
        memory_limit: MemoryLimit::Unlimited,
        secrets_key: None,
        manual_tier_passes: false,
        governor: None,
        manual_governor: false,
    };
    let host = Host::new(config).unwrap();
    let mut spec = PoolSpec::new("bench");
    spec.integrity = !variant.unchecked;
    spec.canary_stores = n as u32 + 64;
    let pool = host.create_pool(spec, chain).unwrap();
    if variant.canary {
        // A hot swap to the same chain: a new generation, under a canary for the whole run.
        pool.swap_chain(pool.chain()).unwrap();
    }
    // Warm every shard's instances before measuring memory.
    for i in 0..64 {
        pool.store(i, &pages[0]).unwrap();
        pool.invalidate_page(i).unwrap();
    }
    let live_before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut stored = 0;
    for i in 0..n {
        if pool.store(i, &pages[(i % DISTINCT) as usize]).unwrap() == StoreOutcome::Stored {
            stored += 1;
        }
    }
    let store_secs = start.elapsed().as_secs_f64();
    // The host's heap (the index's hash tables, anything else) plus the arena slots holding
    // the stored bytes (their class rounding included) and the index's chunks: what the host
    // keeps for the pages.
    let arena = host.page_arena().stats();
    let heap =
        (LIVE.load(Ordering::Relaxed) - live_before) as f64 + arena.slot_bytes as f64 + arena.index_chunk_bytes as f64;
    let stored_bytes = pool.counters().pool_total_size;
    let mut page = vec![0u8; PAGE];
    let start = Instant::now();
    let mut loaded = 0;
    for i in 0..n {
        if let LoadOutcome::Loaded { .. } = pool.load(i, &mut page).unwrap() {
            loaded += 1;
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    assert_eq!(loaded, stored);
    Run::new(n, stored, store_secs, load_secs, stored_bytes, heap)
}

/// What the native baseline does to a page before keeping it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// Keeps the page as it is (the `[ram]` baseline).
    Copy,
    /// zstd level 3, the `zstd` filter's library and settings.
    Zstd,
    /// LZ4 blocks by `lz4_flex` without its safe-only features, as the `lz4` filter builds it.
    Lz4,
}

/// The compressors' state, kept across pages as the filters keep theirs.
struct Codecs {
    zstd_c: zstd::bulk::Compressor<'static>,
    zstd_d: zstd::bulk::Decompressor<'static>,
    lz4_table: lz4_flex::block::CompressTable,
}

impl Codecs {
    fn new() -> Self {
        let mut zstd_c = zstd::bulk::Compressor::new(3).unwrap();
        zstd_c.include_checksum(false).unwrap();
        zstd_c.include_contentsize(false).unwrap();
        zstd_c.include_dictid(false).unwrap();
        let zstd_d = zstd::bulk::Decompressor::new().unwrap();
        Codecs { zstd_c, zstd_d, lz4_table: lz4_flex::block::CompressTable::default() }
    }

    /// The compression filters' rule, natively: same-filled marker, else compress, reject if poor.
    fn encode(&mut self, codec: Codec, page: &[u8], out: &mut [u8]) -> Option<usize> {
        let first = &page[..8];
        if page.chunks_exact(8).all(|w| w == first) {
            out[0] = 2;
            out[1..5].copy_from_slice(&(page.len() as u32).to_le_bytes());
            out[5..13].copy_from_slice(first);
            return Some(13);
        }
        let n = match codec {
            Codec::Zstd => self.zstd_c.compress_to_buffer(page, &mut out[1..]).ok()?,
            Codec::Lz4 => lz4_flex::block::compress_into_with_table(page, &mut out[1..], &mut self.lz4_table).ok()?,
            Codec::Copy => unreachable!("a copy is not encoded"),
        };
        (n <= 2990).then(|| {
            out[0] = 1;
            n + 1
        })
    }

    fn decode(&mut self, codec: Codec, data: &[u8], page: &mut [u8]) {
        match (data[0], codec) {
            (1, Codec::Zstd) => assert_eq!(self.zstd_d.decompress_to_buffer(&data[1..], page).unwrap(), page.len()),
            (1, Codec::Lz4) => assert_eq!(lz4_flex::block::decompress_into(&data[1..], page).unwrap(), page.len()),
            _ => {
                for chunk in page.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&data[5..13]);
                }
            }
        }
    }
}

fn native(codec: Codec, pages: &[Vec<u8>], n: u64) -> Run {
    let mut codecs = Codecs::new();
    let mut map: HashMap<u64, Box<[u8]>, foldhash::fast::RandomState> = HashMap::default();
    let mut out = vec![0u8; PAGE + 4096];
    let live_before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut stored_bytes = 0;
    for i in 0..n {
        let page = &pages[(i % DISTINCT) as usize];
        let bytes: &[u8] = if codec == Codec::Copy {
            page
        } else {
            match codecs.encode(codec, page, &mut out) {
                Some(len) => &out[..len],
                None => continue,
            }
        };
        stored_bytes += bytes.len() as u64;
        map.insert(i, bytes.into());
    }
    let store_secs = start.elapsed().as_secs_f64();
    let heap = (LIVE.load(Ordering::Relaxed) - live_before) as f64;
    let mut page = vec![0u8; PAGE];
    let start = Instant::now();
    for i in 0..n {
        if let Some(bytes) = map.get(&i) {
            if codec == Codec::Copy {
                page.copy_from_slice(bytes);
            } else {
                codecs.decode(codec, bytes, &mut page);
            }
            std::hint::black_box(&page);
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    Run::new(n, map.len() as u64, store_secs, load_secs, stored_bytes, heap)
}

/// Seconds per page, a store and a load.
fn per_page(r: &Run) -> f64 {
    1.0 / r.stores_per_s + 1.0 / r.loads_per_s
}

fn print(name: &str, r: &Run) {
    println!(
        "{name:<34} {:>11.0} stores/s {:>11.0} loads/s  ratio {:>4.2}  heap overhead {:>5.1} B/page  ({} stored)",
        r.stores_per_s,
        r.loads_per_s,
        (r.stored * PAGE as u64) as f64 / r.stored_bytes.max(1) as f64,
        r.heap_per_page,
        r.stored
    );
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
    let ram = [BackendSpec::new("ram")];
    let zstd_ram = [BackendSpec::with_config("zstd", json!({"level": 3})), BackendSpec::new("ram")];
    let lz4_ram = [BackendSpec::new("lz4"), BackendSpec::new("ram")];
    if args.iter().any(|a| a == "--scale") {
        return scale(&ram, &zstd_ram, &lz4_ram);
    }
    let pages = pages();
    println!("tmem chain benchmark: {n} pages of 4 KiB, one thread, mixed contents (15% zero, 15% random, 70% text)\n");

    let native_ram = native(Codec::Copy, &pages, n);
    let wasm_ram = through_host(EngineOptions::default(), &ram, &pages, n);
    let native_zstd = native(Codec::Zstd, &pages, n);
    let wasm_zstd = through_host(EngineOptions::default(), &zstd_ram, &pages, n);
    let wasm_zstd_no_epoch =
        through_host(EngineOptions { epoch_interruption: false, ..Default::default() }, &zstd_ram, &pages, n);
    let native_lz4 = native(Codec::Lz4, &pages, n);
    let wasm_lz4 = through_host(EngineOptions::default(), &lz4_ram, &pages, n);

    print("native copy into a map (baseline)", &native_ram);
    print("tmem [ram]", &wasm_ram);
    print("native zstd-3 + map (baseline)", &native_zstd);
    print("tmem [zstd, ram]", &wasm_zstd);
    print("tmem [zstd, ram], no epoch checks", &wasm_zstd_no_epoch);
    print("native lz4 + map (baseline)", &native_lz4);
    print("tmem [lz4, ram]", &wasm_lz4);
    // The check's cost is a few percent of a [ram] page: measured as the best of three
    // alternating runs with and without it, so a noisy moment does not decide it.
    let unchecked = Variant { unchecked: true, ..Default::default() };
    let best = |a: Run, b: Run| if per_page(&a) <= per_page(&b) { a } else { b };
    let (mut checked, mut wasm_ram_unchecked) = (
        through_host(EngineOptions::default(), &ram, &pages, n),
        through_host_as(EngineOptions::default(), &ram, &pages, n, unchecked),
    );
    for _ in 0..2 {
        checked = best(checked, through_host(EngineOptions::default(), &ram, &pages, n));
        wasm_ram_unchecked =
            best(wasm_ram_unchecked, through_host_as(EngineOptions::default(), &ram, &pages, n, unchecked));
    }
    print("tmem [ram], integrity on (best of 3)", &checked);
    print("tmem [ram], integrity off (best of 3)", &wasm_ram_unchecked);
    let canary = Variant { canary: true, ..Default::default() };
    let wasm_zstd_canary = through_host_as(EngineOptions::default(), &zstd_ram, &pages, n, canary);
    print("tmem [zstd, ram], every store a canary", &wasm_zstd_canary);

    let ratio = |native: f64, wasm: f64| native / wasm;
    println!();
    println!(
        "Wasm/native time per page, [ram]:       store {:.2}x  load {:.2}x",
        ratio(native_ram.stores_per_s, wasm_ram.stores_per_s),
        ratio(native_ram.loads_per_s, wasm_ram.loads_per_s)
    );
    println!(
        "Wasm/native time per page, [zstd, ram]: store {:.2}x  load {:.2}x   (goal <= 1.5x)",
        ratio(native_zstd.stores_per_s, wasm_zstd.stores_per_s),
        ratio(native_zstd.loads_per_s, wasm_zstd.loads_per_s)
    );
    println!(
        "Wasm/native time per page, [lz4, ram]:  store {:.2}x  load {:.2}x",
        ratio(native_lz4.stores_per_s, wasm_lz4.stores_per_s),
        ratio(native_lz4.loads_per_s, wasm_lz4.loads_per_s)
    );
    let compression = |r: &Run| (r.stored * PAGE as u64) as f64 / r.stored_bytes.max(1) as f64;
    println!(
        "[lz4, ram] against [zstd, ram]:         stores/s {:.2}x  loads/s {:.2}x  ratio {:.2} against {:.2}, {} against {} pages kept",
        wasm_lz4.stores_per_s / wasm_zstd.stores_per_s,
        wasm_lz4.loads_per_s / wasm_zstd.loads_per_s,
        compression(&wasm_lz4),
        compression(&wasm_zstd),
        wasm_lz4.stored,
        wasm_zstd.stored
    );
    println!(
        "epoch deadline cost on [zstd, ram]:     store {:+.1}%  load {:+.1}%",
        (wasm_zstd_no_epoch.stores_per_s / wasm_zstd.stores_per_s - 1.0) * 100.0,
        (wasm_zstd_no_epoch.loads_per_s / wasm_zstd.loads_per_s - 1.0) * 100.0
    );
    println!(
        "integrity check (crc32c) on [ram]:     store+load {:+.1}% of the time per page (goal <= 8%)",
        (per_page(&checked) / per_page(&wasm_ram_unchecked) - 1.0) * 100.0
    );
    println!(
        "canary on [zstd, ram]:                 {:.2} us more per verified store ({:+.1}%)",
        (1.0 / wasm_zstd_canary.stores_per_s - 1.0 / wasm_zstd.stores_per_s) * 1e6,
        (wasm_zstd.stores_per_s / wasm_zstd_canary.stores_per_s - 1.0) * 100.0
    );
    println!(
        "[ram] stores/s on one core: {:.0} (goal >= 500000); host heap per page beyond stored bytes: [ram] {:.1} B, [zstd, ram] {:.1} B (goal <= 64)",
        wasm_ram.stores_per_s, wasm_ram.heap_per_page, wasm_zstd.heap_per_page
    );
}

/// Pages that compress well (text-like, ~10:1 with zstd-3): the 10M-page run's contents.
fn compressible_pages() -> Vec<Vec<u8>> {
    (0..DISTINCT)
        .map(|i| {
            let words = ["swap ", "page ", "cold ", "tmem ", "pool ", "zram ", "host ", "data "];
            let mut page = Vec::with_capacity(PAGE);
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while page.len() < PAGE {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                page.extend_from_slice(words[(x % 8) as usize].as_bytes());
            }
            page.truncate(PAGE);
            page
        })
        .collect()
}

fn scale(ram: &[BackendSpec], zstd_ram: &[BackendSpec], lz4_ram: &[BackendSpec]) {
    println!("tmem scale benchmark: rates and bytes per page as pools grow (one thread)\n");
    let mixed = pages();
    let text = compressible_pages();
    /// A chain's name, its links, the pages it stores, the pool sizes it is measured at.
    type ScaleRun<'a> = (&'a str, &'a [BackendSpec], &'a [Vec<u8>], &'a [u64]);
    let runs: [ScaleRun<'_>; 3] = [
        ("[ram], mixed pages", ram, &mixed, &[10_000, 1_000_000]),
        ("[zstd, ram], compressible pages", zstd_ram, &text, &[10_000, 1_000_000, 10_000_000]),
        ("[lz4, ram], compressible pages", lz4_ram, &text, &[10_000, 1_000_000]),
    ];
    for (name, chain, pages, sizes) in runs {
        let mut base: Option<Run> = None;
        for &n in sizes {
            let r = through_host(EngineOptions::default(), chain, pages, n);
            let (store_ratio, load_ratio) = match &base {
                Some(b) => (r.stores_per_s / b.stores_per_s, r.loads_per_s / b.loads_per_s),
                None => (1.0, 1.0),
            };
            println!(
                "{name:<32} {n:>10} pages: {:>9.0} stores/s ({store_ratio:.2}x of 10k) {:>9.0} loads/s ({load_ratio:.2}x)  \
                 {:>5.1} B/page beyond {:.0} stored B/page",
                r.stores_per_s,
                r.loads_per_s,
                r.heap_per_page,
                r.stored_bytes as f64 / r.stored.max(1) as f64,
            );
            base.get_or_insert(r);
        }
    }
}
