//! Benchmark of persistent pools, with the in-memory chain as the baseline in the same run.
//!
//! `cargo bench -p tmem-host --bench persistence` (or `-- --pages N`). Realistic page
//! contents (15% zero, 15% random, 70% text-like), zstd level 3 in front of each store.
//! Reports stores/s and loads/s for `[zstd, ram]` (baseline), `[zstd, sled]` with periodic
//! durability (100 ms) and with sync durability, from 1 and from 4 threads (sync stores from
//! several threads share flushes: group commit), and each one's ratio to the baseline.

use std::sync::Arc;
use std::time::Instant;

use tmem_api::rest::{BackendRequest, Durability, PoolConfig};
use tmem_host::plugin::EngineOptions;
use tmem_host::{Host, HostConfig, LoadOutcome, Pool, StoreOutcome, workload};

const PAGE: usize = 4096;

struct Figures {
    stores_per_s: f64,
    loads_per_s: f64,
    stored: u64,
}

/// Stores `pages` pages from `threads` threads (each its own offsets), then loads them back.
fn run(pool: &Arc<Pool>, pages: u64, threads: u64) -> Figures {
    let per_thread = pages / threads;
    let time = |work: &(dyn Fn(u64) -> u64 + Sync)| {
        let start = Instant::now();
        let done: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || work(t))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        (done, start.elapsed().as_secs_f64())
    };
    let (stored, store_secs) = time(&|t| {
        let mut page = vec![0u8; PAGE];
        let mut stored = 0;
        for i in 0..per_thread {
            let offset = t * per_thread + i;
            workload::fill_page(7, offset, &mut page);
            if pool.store(offset, &page).unwrap() == StoreOutcome::Stored {
                stored += 1;
            }
        }
        stored
    });
    let (_, load_secs) = time(&|t| {
        let mut page = vec![0u8; PAGE];
        let mut loaded = 0;
        for i in 0..per_thread {
            if pool.load(t * per_thread + i, &mut page).unwrap() != LoadOutcome::Absent {
                loaded += 1;
            }
        }
        loaded
    });
    Figures { stores_per_s: (per_thread * threads) as f64 / store_secs, loads_per_s: stored as f64 / load_secs, stored }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pages: u64 = args
        .iter()
        .position(|a| a == "--pages")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("tmem-bench-persistence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let host =
        Host::new(HostConfig { data_dir: Some(dir.clone()), engine: EngineOptions::default(), ..Default::default() })
            .expect("host");
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    let configs: Vec<(&str, PoolConfig, u64)> = vec![
        (
            "[zstd, ram] (baseline)",
            PoolConfig::new("ram", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]),
            pages,
        ),
        (
            "[zstd, sled] periodic 100 ms",
            PoolConfig {
                durability: Some(Durability::Periodic),
                flush_interval_ms: Some(100),
                ..PoolConfig::new("periodic", vec![BackendRequest::new("zstd"), sled.clone()])
            },
            pages,
        ),
        (
            "[zstd, sled] sync",
            PoolConfig {
                durability: Some(Durability::Sync),
                ..PoolConfig::new("sync", vec![BackendRequest::new("zstd"), sled])
            },
            (pages / 10).max(400),
        ),
    ];
    println!(
        "tmem persistence benchmark: 4 KiB pages, mixed contents (15% zero, 15% random, 70% text), data dir {}",
        dir.display()
    );
    println!();
    let mut baseline: [Option<(f64, f64)>; 2] = [None, None];
    for (label, config, pages) in configs {
        for (slot, threads) in [1u64, 4].into_iter().enumerate() {
            let mut config = config.clone();
            config.name = format!("{}-{threads}", config.name);
            let pool = host.create_pool_from(&config).expect("pool");
            let f = run(&pool, pages, threads);
            let (store_base, load_base) = *baseline[slot].get_or_insert((f.stores_per_s, f.loads_per_s));
            println!(
                "{label:<30} {threads} thread{}  {:>9.0} stores/s  {:>9.0} loads/s   vs baseline: stores {:>5.2}x slower, loads {:>5.2}x slower  ({} pages stored, {} on disk/in memory)",
                if threads == 1 { " " } else { "s" },
                f.stores_per_s,
                f.loads_per_s,
                store_base / f.stores_per_s,
                load_base / f.loads_per_s,
                f.stored,
                human(pool.counters().pool_total_size),
            );
            drop(pool);
            host.destroy_pool(&config.name).expect("destroy");
        }
    }
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
