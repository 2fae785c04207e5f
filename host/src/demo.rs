//! `tmem demo`: the whole system in one command. It starts a host (API, dashboard routes and
//! the frontend socket, like `tmem serve`), creates a `[zstd, ram]` pool `demo`, and runs an
//! application-like workload in a userfaultfd [`Region`] four times larger than its resident
//! limit: realistic page contents (15% zero, 15% random, 70% text), random access and
//! sequential sweeps (bursts of 256 pages, 30% of the accesses), some pages discarded by the "application" (`MADV_DONTNEED`). Every page read is
//! checked against the version last written. It prints a line a second and a summary; the
//! run succeeds only if no page ever read back wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use tmem_api::client::Client;
use tmem_api::rest::{BackendRequest, PoolConfig};
use tmem_frontend::client::FrontendClient;
use tmem_frontend::region::{Region, RegionConfig};

use crate::server::{self, ServeConfig};
use crate::workload::{self, Rng};

/// Settings of `tmem demo`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The host's HTTP listener.
    pub listen: SocketAddr,
    /// The host's data dir.
    pub data_dir: PathBuf,
    /// How long the workload runs.
    pub seconds: u64,
    /// Size of the region, MiB (the resident limit is a quarter of it).
    pub region_mib: usize,
    /// After the workload, keep the host serving until Ctrl-C / SIGTERM.
    pub then_serve: bool,
    /// The region prefetches along fault trends ([`RegionConfig::prefetch`]).
    pub prefetch: bool,
}

/// What a demo run did.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Page writes by the workload.
    pub writes: u64,
    /// Page reads checked.
    pub verified: u64,
    /// Reads that did not match.
    pub mismatches: u64,
    /// Pages the application discarded.
    pub discarded: u64,
}

/// The page content of `(index, version)`: version 0 is a page never written (zeros).
fn expected_page(index: u64, version: u32, page: &mut [u8]) {
    if version == 0 {
        page.fill(0);
    } else {
        workload::fill_page(version as u64, index, page);
    }
}

/// Runs the demo; `Ok(true)` when every page read back right.
pub fn run(config: &DemoConfig) -> anyhow::Result<bool> {
    // `tmem serve`'s rule, said up front: the demo's API is plain HTTP (it has no certificate).
    anyhow::ensure!(
        config.listen.ip().is_loopback(),
        "--listen {}: the demo serves plain HTTP, on loopback only (e.g. 127.0.0.1:7411); `tmem serve` with \
         --tls-cert and --tls-key serves the API beyond it over HTTPS",
        config.listen
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_config = ServeConfig {
        listen: config.listen,
        data_dir: config.data_dir.clone(),
        demo_pool: false,
        peer_listen: None,
        socket: None,
        mlock: false,
        memory_limit: Default::default(),
        governor: Default::default(),
        max_instances: crate::plugin::EngineOptions::default().max_instances,
        limits: Default::default(),
        allowed_paths: Vec::new(),
        secrets_key: None,
        declared: Default::default(),
        tls: Default::default(),
        insecure_plain_tcp: false,
        api_tls: false,
        socket_users: Vec::new(),
        socket_group: None,
    };
    let server = runtime.spawn(async move {
        server::serve(&serve_config, async move {
            let _ = stopped.await;
        })
        .await
    });
    let outcome = drive(config);
    if config.then_serve {
        println!("the host keeps serving on http://{} (pool 'demo' keeps its pages); Ctrl-C stops it", config.listen);
        if let Ok(token) = std::fs::read_to_string(config.data_dir.join(crate::rest::auth::TOKEN_FILE)) {
            println!(
                "{}",
                dashboard_line(
                    config.listen,
                    std::env::var(crate::rest::auth::TOKEN_ENV).as_deref().unwrap_or(token.trim())
                )
            );
        }
        runtime.block_on(server::shutdown_signal());
    }
    let _ = stop.send(());
    runtime.block_on(server)??;
    outcome
}

/// The line that tells a newcomer where the dashboard is: a link that signs in (the token
/// rides in the URL fragment, which the browser never sends to the server; the dashboard moves
/// it to session storage and wipes it from the address bar).
fn dashboard_line(listen: SocketAddr, token: &str) -> String {
    format!(
        "dashboard: http://{listen}/#token={token}  (open it to watch the pool live; the link signs you in for this browser session)"
    )
}

fn drive(config: &DemoConfig) -> anyhow::Result<bool> {
    let socket = crate::frontend::socket::default_socket(&config.data_dir);
    let token_file = config.data_dir.join(crate::rest::auth::TOKEN_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(socket.exists() && token_file.exists()) {
        anyhow::ensure!(Instant::now() < deadline, "the host did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token =
        std::env::var(crate::rest::auth::TOKEN_ENV).unwrap_or(std::fs::read_to_string(&token_file)?.trim().to_string());
    let api = Client::new(&format!("http://{}", config.listen), Some(token.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.health().is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the host's API did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{}", dashboard_line(config.listen, &token));
    if api.pool("demo").is_ok() {
        api.remove_pool("demo").map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let pool = PoolConfig::new("demo", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]);
    api.create_pool(&pool).map_err(|e| anyhow::anyhow!("cannot create the demo pool: {e}"))?;

    let client = FrontendClient::connect(&socket, &token, "demo", "tmem-demo")?;
    let region_slot: Arc<OnceLock<Weak<Region>>> = Arc::default();
    let sink_slot = region_slot.clone();
    client.on_take_back(Box::new(move |offset, page| {
        if let Some(region) = sink_slot.get().and_then(Weak::upgrade) {
            let _ = region.take_back(offset, page);
        }
    }));
    let page_size = client.page_size();
    let len = config.region_mib << 20;
    let pages = (len / page_size) as u64;
    let region = Arc::new(Region::new(
        Box::new(client),
        RegionConfig {
            prefetch: config.prefetch,
            ..RegionConfig::new(len, (pages / 4) as usize, config.data_dir.clone())
        },
    )?);
    let _ = region_slot.set(Arc::downgrade(&region));
    println!(
        "tmem demo: a {} MiB region ({pages} pages, at most {} resident, prefetch {}) over pool 'demo' [zstd, ram]; API on http://{}; {} s",
        config.region_mib,
        pages / 4,
        if config.prefetch { "on" } else { "off" },
        config.listen,
        config.seconds
    );

    let mut versions = vec![0u32; pages as usize];
    let mut summary = DemoSummary::default();
    let mut rng = Rng::new(42);
    let (mut page, mut expected) = (vec![0u8; page_size], vec![0u8; page_size]);
    let started = Instant::now();
    let mut next_report = Duration::from_secs(1);
    let mut sweep = 0u64;
    while started.elapsed() < Duration::from_secs(config.seconds) {
        // 70% of the rounds touch random pages, 30% sweep on through the next 256 pages (an
        // application's scan: what prefetch is for).
        let sweeping = rng.below(10) >= 7;
        for _ in 0..256 {
            let index = if sweeping {
                sweep = (sweep + 1) % pages;
                sweep
            } else {
                rng.below(pages)
            };
            let at = index as usize * page_size;
            match rng.below(100) {
                0..45 => {
                    let version = versions[index as usize] + 1;
                    expected_page(index, version, &mut page);
                    region.write(at, &page);
                    versions[index as usize] = version;
                    summary.writes += 1;
                }
                45..99 => {
                    region.read(at, &mut page);
                    expected_page(index, versions[index as usize], &mut expected);
                    summary.verified += 1;
                    if page != expected {
                        summary.mismatches += 1;
                        eprintln!("MISMATCH at page {index} (version {})", versions[index as usize]);
                    }
                }
                _ => {
                    // The application gives the page back: it reads as zeros from now on.
                    // SAFETY: a page-aligned range inside the region's mapping.
                    unsafe { libc::madvise(region.as_ptr().add(at).cast(), page_size, libc::MADV_DONTNEED) };
                    versions[index as usize] = 0;
                    summary.discarded += 1;
                }
            }
        }
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(1);
            let s = region.stats();
            println!(
                "[{:>3}s] writes {:>8}  verified {:>8}  mismatches {}  faults {:>8}  prefetched {:>7}  resident {:>6}  in pool {:>6}  in file {:>6}  fault p50 {:.1} µs p99 {:.1} µs",
                started.elapsed().as_secs(),
                summary.writes,
                summary.verified,
                summary.mismatches,
                s.missing_faults + s.wp_faults,
                s.prefetched_pages,
                s.resident_pages,
                s.pool_pages,
                s.file_pages,
                s.missing_fault_latency.p50_ns as f64 / 1e3,
                s.missing_fault_latency.p99_ns as f64 / 1e3,
            );
        }
    }
    // A last full pass: every page must read back as last written.
    for index in 0..pages {
        region.read(index as usize * page_size, &mut page);
        expected_page(index, versions[index as usize], &mut expected);
        summary.verified += 1;
        if page != expected {
            summary.mismatches += 1;
            eprintln!("MISMATCH at page {index} in the final pass");
        }
    }
    let s = region.stats();
    let info = api.pool("demo").map_err(|e| anyhow::anyhow!("{e}"))?;
    let stored = info.counters["stored_pages"];
    let bytes = info.counters["pool_total_size"];
    let ratio = if bytes == 0 { 0.0 } else { (stored * page_size as u64) as f64 / bytes as f64 };
    println!();
    println!("summary");
    println!("  page writes            {}", summary.writes);
    println!("  pages verified         {}", summary.verified);
    println!("  mismatches             {}", summary.mismatches);
    println!("  pages discarded (app)  {}", summary.discarded);
    println!("  pages stored to pool   {} (rejected to the backing file: {})", s.stored_in_pool, s.rejected_to_file);
    println!("  pages loaded           {} from the pool, {} from the file", s.pool_loads, s.file_loads);
    println!("  pages taken back       {}", s.take_backs);
    println!("  zero-filled faults     {}", s.zero_fills);
    println!("  clean pages dropped    {} (no store needed)", s.clean_drops);
    if config.prefetch {
        println!(
            "  prefetch               coverage {:.1}% ({} of {} missing faults avoided), accuracy {:.1}% ({} of {} prefetched pages used; {} batches)",
            100.0 * s.prefetch_coverage(),
            s.prefetch_hits,
            s.missing_faults + s.prefetch_hits,
            100.0 * s.prefetch_accuracy(),
            s.prefetch_hits,
            s.prefetched_pages,
            s.prefetch_batches
        );
    } else {
        println!("  prefetch               off ({} missing faults)", s.missing_faults);
    }
    println!("  compression ratio      {ratio:.2} ({stored} pages in {:.1} MiB)", bytes as f64 / (1 << 20) as f64);
    println!(
        "  fault latency          p50 {:.1} µs, p99 {:.1} µs (missing); p50 {:.1} µs (write-protect)",
        s.missing_fault_latency.p50_ns as f64 / 1e3,
        s.missing_fault_latency.p99_ns as f64 / 1e3,
        s.wp_fault_latency.p50_ns as f64 / 1e3
    );
    println!(
        "  result                 {}",
        if summary.mismatches == 0 { "OK: every page read back as written" } else { "FAILED" }
    );
    drop(region);
    Ok(summary.mismatches == 0 && s.load_failures == 0)
}
