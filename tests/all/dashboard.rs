//! The web dashboard: its files served by `tmem serve` itself, the endpoints made for it (live
//! statistics, the dry run of a pool config), and the whole dashboard in a real headless
//! Chromium (`web-ui/tests/`, Playwright with Debian's chromium) against a real host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tmem_api::client::Client;
use tmem_api::rest::{BackendRequest, PoolConfig, StatsSample};
use tmem_frontend::client::FrontendClient;

use crate::common::{ServeProcess, tagged_page, temp_dir};

fn zstd_ram(name: &str) -> PoolConfig {
    PoolConfig::new(name, vec![BackendRequest::new("zstd"), BackendRequest::new("ram")])
}

/// Opens `GET /api/v1/stats/stream` on a plain socket and returns a reader of its events.
fn open_stream(server: &ServeProcess, query: &str) -> (u16, BufReader<TcpStream>) {
    let address = server.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        socket,
        "GET /api/v1/stats/stream{query} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        server.token
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" {
            break;
        }
    }
    (code, reader)
}

/// The next event's sample (chunked transfer framing lines and keep-alive comments skipped).
fn next_sample(reader: &mut BufReader<TcpStream>) -> StatsSample {
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            return serde_json::from_str(data).unwrap_or_else(|e| panic!("a sample: {e}: {data}"));
        }
    }
}

#[test]
fn stats_and_the_stream_report_levels_rates_and_interval_latency() {
    let server = ServeProcess::start(&temp_dir("stats"), &[]);
    let client = server.client();
    client.create_pool(&zstd_ram("z")).unwrap();
    for offset in 0..50 {
        client.put_page("z", offset, &tagged_page(offset)).unwrap();
    }
    let stats = client.stats().unwrap();
    let z = stats.pools.iter().find(|p| p.name == "z").expect("pool z in the stats");
    assert_eq!((z.stored_pages, z.counters["succ_stores"], stats.host.curr_pages), (50, 50, 50));
    assert!(z.compression_ratio.unwrap() > 2.0, "tagged pages compress: {:?}", z.compression_ratio);
    assert_eq!(z.latency["store"].count, 50, "a one-shot sample covers the pool's life");
    assert!(z.rates.is_empty(), "a one-shot sample has no interval");
    assert_eq!(stats.host.pools, 1);

    let (status, mut events) = open_stream(&server, "?interval_ms=200");
    assert_eq!(status, 200);
    let first = next_sample(&mut events);
    assert_eq!(first.interval_ms, 0);
    for offset in 50..80 {
        client.put_page("z", offset, &tagged_page(offset)).unwrap();
    }
    client.get_page("z", 1).unwrap().expect("page 1");
    // Samples keep coming; together, the ones after the first account for exactly the 30
    // stores and the load made in between.
    let (mut stores, mut loads) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stores < 30 || loads < 1 {
        assert!(Instant::now() < deadline, "the stream did not report the operations: {stores} stores, {loads} loads");
        let sample = next_sample(&mut events);
        assert!(sample.interval_ms > 0);
        let z = &sample.pools[0];
        let stores_per_second = z.rates["succ_stores"];
        stores += z.latency["store"].count;
        loads += z.latency["load"].count;
        assert!(stores_per_second >= 0.0);
        if z.latency["store"].count > 0 {
            assert!(stores_per_second > 0.0 && z.latency["store"].p99_us >= z.latency["store"].p50_us);
        }
    }
    assert_eq!((stores, loads), (30, 1));

    let (status, mut reader) = open_stream(&server, "?interval_ms=5");
    assert_eq!(status, 400);
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    assert!(body.contains("invalid_interval"), "{body}");
}

#[test]
fn a_dry_run_checks_a_pool_config_exactly_as_create_would_and_creates_nothing() {
    let server = ServeProcess::start(&temp_dir("dry-run"), &["--demo-pool"]);
    let client = server.client();
    let check = client.check_pool(&zstd_ram("fresh")).unwrap();
    assert!(check.valid);
    assert_eq!(check.backends.iter().map(|b| b.plugin.as_str()).collect::<Vec<_>>(), ["zstd", "ram"]);
    assert!(check.backends[0].config.contains_key("level"), "defaults filled in: {:?}", check.backends[0].config);
    assert!(client.pool("fresh").is_err(), "a dry run creates nothing");

    let cases = [
        (zstd_ram("demo"), 409, "pool_exists"),
        (zstd_ram("bad name"), 400, "invalid_pool"),
        (
            PoolConfig::new(
                "x",
                vec![BackendRequest::with_config("zstd", json!({"level": 99})), BackendRequest::new("ram")],
            ),
            400,
            "invalid_pool",
        ),
        (PoolConfig::new("x", vec![BackendRequest::new("sled")]), 400, "invalid_pool"),
        (PoolConfig::new("x", vec![BackendRequest::new("nope")]), 400, "unknown_plugin"),
    ];
    for (config, status, code) in cases {
        let dry = client.check_pool(&config).unwrap_err();
        let real = client.create_pool(&config).unwrap_err();
        assert_eq!((dry.status(), dry.code()), (Some(status), Some(code)), "{config:?}");
        assert_eq!(dry.to_string(), real.to_string(), "the dry run answers exactly as the create");
    }
    assert_eq!(client.pools().unwrap().len(), 1);
}

#[test]
fn the_dashboard_is_served_by_the_host_with_a_strict_policy() {
    let server = ServeProcess::start(&temp_dir("assets"), &[]);
    let page = ureq::get(&server.url).call().unwrap();
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers().get(name).map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header(&page, "content-type").as_deref(), Some("text/html; charset=utf-8"));
    let csp = header(&page, "content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options").as_deref(), Some("nosniff"));
    let html = page.into_body().read_to_string().unwrap();
    assert!(html.contains("/assets/js/main.js"));

    let script = ureq::get(&format!("{}/assets/js/main.js", server.url)).call().unwrap();
    assert_eq!(header(&script, "content-type").as_deref(), Some("text/javascript; charset=utf-8"));
    let etag = header(&script, "etag").expect("an ETag");
    let again = ureq::get(&format!("{}/assets/js/main.js", server.url)).header("If-None-Match", &etag).call().unwrap();
    assert_eq!(again.status(), 304, "an unchanged file is not sent again");

    let chart = ureq::get(&format!("{}/assets/vendor/uPlot.esm.js", server.url)).call().unwrap();
    assert!(chart.into_body().read_to_string().unwrap().contains("uPlot"));
    let missing = Client::new(&server.url, None).request("GET", "/assets/nope.js", None, false).unwrap();
    assert_eq!(missing.0, 404);
    assert!(String::from_utf8_lossy(&missing.1).contains("\"not_found\""));
}

// ----- the real browser -----

fn web_ui() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web-ui")
}

/// Attaches a frontend to `pool` as soon as the browser has created it, and keeps it until
/// `done`: shrink sends it pages; returns how many it took back.
fn frontend_for(server: &ServeProcess, pool: &'static str, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let client = server.client();
    let socket = server.data_dir.join("tmem.sock");
    let token = server.token.clone();
    std::thread::spawn(move || {
        while client.pool(pool).is_err() {
            if done.load(Ordering::Relaxed) {
                return 0;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let device =
            FrontendClient::connect(&socket, &token, pool, "dashboard-test-device").expect("the frontend attaches");
        let taken = Arc::new(AtomicU64::new(0));
        let sink = taken.clone();
        device.on_take_back(Box::new(move |_offset, page| {
            assert_eq!(page.len(), 4096);
            sink.fetch_add(1, Ordering::Relaxed);
        }));
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        taken.load(Ordering::Relaxed)
    })
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && web_ui().join("node_modules/playwright-core").exists(),
        "the browser test needs Debian's chromium ({chromium}) and web-ui/node_modules: run scripts/install-deps.sh --test"
    );
    let server = ServeProcess::start(&temp_dir("browser"), &["--demo-pool"]);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let plugin = |name: &str| Path::new(tmem_host::bundled::BUILT_PLUGINS_DIR).join(format!("{name}.wasm"));
    let done = Arc::new(AtomicBool::new(false));
    let frontend = frontend_for(&server, "web", done.clone());
    let output = std::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", "tests/"])
        .current_dir(web_ui())
        .env("TMEM_URL", &server.url)
        .env("TMEM_TOKEN", &server.token)
        .env("TMEM_PLUGIN_V1", plugin("tmem_plugin_versioned_v1"))
        .env("TMEM_PLUGIN_V2", plugin("tmem_plugin_versioned_v2"))
        .env("TMEM_ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs (scripts/install-deps.sh --test installs it)");
    done.store(true, Ordering::Relaxed);
    let taken_back = frontend.join().expect("the frontend thread");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}\nscreenshots and the console log: {}", artifacts.display());
    assert!(output.status.success(), "the browser test failed:\n{report}");
    assert!(taken_back > 0, "the shrink clicked in the browser sent pages to the frontend");
    let shots = std::fs::read_dir(&artifacts)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(shots >= 10, "screenshots of every page: {shots}");
}
