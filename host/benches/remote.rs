//! Benchmark of the `remote` store, with the local chain as the baseline in the same run.
//!
//! `cargo bench -p tmem-host --bench remote` (or `-- --pages N`). One thread, realistic page
//! contents (15% zero, 15% random, 70% text), zstd level 3 in front of each store. Reports
//! stores/s, loads/s and p50/p99 latency for `[zstd, ram]` (baseline), `[zstd, remote]` to a
//! peer host (a second in-process host serving the peer protocol on loopback) and
//! `[zstd, remote]` to a `redis-server` on loopback (skipped if none is installed), with each
//! one's ratio to the baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tmem_api::rest::{BackendRequest, PoolConfig};
use tmem_host::rest::auth::ApiToken;
use tmem_host::{Host, HostConfig, LoadOutcome, Pool, StoreOutcome, workload};

const PAGE: usize = 4096;

struct Figures {
    stores_per_s: f64,
    loads_per_s: f64,
    store_p50: Duration,
    store_p99: Duration,
    load_p50: Duration,
    load_p99: Duration,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn run(pool: &Pool, pages: u64) -> Figures {
    let mut page = vec![0u8; PAGE];
    let mut store_times = Vec::with_capacity(pages as usize);
    let started = Instant::now();
    let mut stored = Vec::new();
    for offset in 0..pages {
        workload::fill_page(11, offset, &mut page);
        let t = Instant::now();
        let outcome = pool.store(offset, &page).expect("store");
        store_times.push(t.elapsed());
        if outcome == StoreOutcome::Stored {
            stored.push(offset);
        }
    }
    let store_secs = started.elapsed().as_secs_f64();
    let mut load_times = Vec::with_capacity(stored.len());
    let started = Instant::now();
    for &offset in &stored {
        let t = Instant::now();
        assert_ne!(pool.load(offset, &mut page).expect("load"), LoadOutcome::Absent);
        load_times.push(t.elapsed());
    }
    let load_secs = started.elapsed().as_secs_f64();
    store_times.sort();
    load_times.sort();
    Figures {
        stores_per_s: pages as f64 / store_secs,
        loads_per_s: stored.len() as f64 / load_secs,
        store_p50: percentile(&store_times, 0.5),
        store_p99: percentile(&store_times, 0.99),
        load_p50: percentile(&load_times, 0.5),
        load_p99: percentile(&load_times, 0.99),
    }
}

fn remote(name: &str, endpoint: String, token: &str) -> PoolConfig {
    let remote = BackendRequest {
        grants: vec!["network".into()],
        config: json!({"endpoints": [endpoint], "timeout_ms": 1000, "token": token}),
        ..BackendRequest::new("remote")
    };
    PoolConfig::new(name, vec![BackendRequest::new("zstd"), remote])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pages: u64 = args
        .iter()
        .position(|a| a == "--pages")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);

    // The peer host: a second host with a [ram] pool, serving peers on loopback.
    let server = Arc::new(Host::new(HostConfig::default()).expect("host"));
    server.create_pool_from(&PoolConfig::new("mem", vec![BackendRequest::new("ram")])).expect("pool");
    let token = "bench-token";
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let peer_addr = listener.local_addr().unwrap();
    runtime.spawn(tmem_host::peer::serve_peers(
        server.clone(),
        ApiToken::new(token),
        listener,
        tmem_host::listen::ListenerLimits::PEER,
        None,
        std::future::pending(),
    ));

    // Redis, if installed.
    let redis_port = free_port();
    let redis = std::process::Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok();
    if redis.is_some() {
        std::thread::sleep(Duration::from_millis(300));
    }

    let host = Host::new(HostConfig::default()).expect("host");
    let mut chains = vec![
        (
            "[zstd, ram] (baseline)",
            PoolConfig::new("local", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]),
        ),
        ("[zstd, remote] to a peer host", remote("peer", format!("tmem://{peer_addr}/mem"), token)),
    ];
    if redis.is_some() {
        chains.push(("[zstd, remote] to Redis", remote("redis", format!("redis://127.0.0.1:{redis_port}/bench"), "")));
    }
    println!(
        "tmem remote benchmark: {pages} pages of 4 KiB, one thread, mixed contents (15% zero, 15% random, 70% text), loopback"
    );
    println!();
    let mut baseline = None;
    for (label, config) in chains {
        let pool = host.create_pool_from(&config).expect("pool");
        let f = run(&pool, pages);
        let (store_base, load_base) = *baseline.get_or_insert((f.stores_per_s, f.loads_per_s));
        println!(
            "{label:<32} {:>8.0} stores/s (p50 {:>6.1} µs, p99 {:>7.1} µs)  {:>8.0} loads/s (p50 {:>6.1} µs, p99 {:>7.1} µs)  vs baseline: stores {:>5.2}x, loads {:>5.2}x slower",
            f.stores_per_s,
            f.store_p50.as_secs_f64() * 1e6,
            f.store_p99.as_secs_f64() * 1e6,
            f.loads_per_s,
            f.load_p50.as_secs_f64() * 1e6,
            f.load_p99.as_secs_f64() * 1e6,
            store_base / f.stores_per_s,
            load_base / f.loads_per_s,
        );
    }
    if redis.is_none() {
        println!("(redis-server not installed: the Redis line is skipped)");
    }
    if let Some(mut redis) = redis {
        let _ = redis.kill();
        let _ = redis.wait();
    }
}
