//! The bundled `lz4` filter in real pools: `[lz4, ram]` keeps every kind of page bit-exact,
//! compresses what compresses, keeps same-filled pages as markers, treats incompressible pages
//! as `on_incompressible` says (also after a hot swap of that setting), and refuses a config
//! it does not know — in a host, and through a real `tmem serve`.

use serde_json::json;
use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch};
use tmem_host::workload::{self, PageClass};
use tmem_host::{BackendSpec, LoadOutcome, Pool, RejectReason, StoreOutcome};

use crate::common::{ServeProcess, host, spec, tagged_page, temp_dir};

/// What kind of page each offset of the test gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text-like (the workload generator's text pages).
    Compressible,
    /// Random bytes: LZ4 makes them larger.
    Random,
    /// One 8-byte word repeated (zero pages included).
    SameFilled,
}

const PAGES: u64 = 300;

fn kind(offset: u64) -> Kind {
    match offset % 3 {
        0 => Kind::Compressible,
        1 => Kind::Random,
        _ => Kind::SameFilled,
    }
}

/// The page at `offset`, different for every offset (and `round`).
fn page(offset: u64, round: u64) -> Vec<u8> {
    let index = offset * 7 + round;
    let pick = |class: PageClass| (index..).find(|&i| workload::class_of(round + 1, i) == class).unwrap();
    match kind(offset) {
        Kind::Compressible => workload::page(round + 1, pick(PageClass::Text), 4096),
        Kind::Random => workload::page(round + 1, pick(PageClass::Random), 4096),
        Kind::SameFilled if offset.is_multiple_of(2) => vec![0; 4096],
        Kind::SameFilled => (offset ^ round << 32).to_le_bytes().iter().copied().cycle().take(4096).collect(),
    }
}

fn lz4(config: serde_json::Value) -> Vec<BackendSpec> {
    vec![BackendSpec::with_config("lz4", config), BackendSpec::new("ram")]
}

fn load(pool: &Pool, offset: u64) -> Option<Vec<u8>> {
    let mut page = vec![0; 4096];
    match pool.load(offset, &mut page).unwrap() {
        LoadOutcome::Absent => None,
        LoadOutcome::Loaded { .. } => Some(page),
    }
}

fn count(kind_wanted: Kind) -> u64 {
    (0..PAGES).filter(|&o| kind(o) == kind_wanted).count() as u64
}

#[test]
fn every_kind_of_page_round_trips_and_compressible_pages_are_compressed() {
    let host = host();
    let pool = host.create_pool(spec("lz4"), &lz4(json!({}))).unwrap();
    for offset in 0..PAGES {
        let expected = match kind(offset) {
            Kind::Random => StoreOutcome::Rejected(RejectReason::CompressPoor),
            Kind::Compressible | Kind::SameFilled => StoreOutcome::Stored,
        };
        assert_eq!(pool.store(offset, &page(offset, 0)).unwrap(), expected, "offset {offset} ({:?})", kind(offset));
    }
    let c = pool.counters();
    assert_eq!(c.reject_compress_poor, count(Kind::Random), "on_incompressible = reject (the default)");
    assert_eq!(c.same_filled_pages, count(Kind::SameFilled));
    assert_eq!(c.stored_incompressible_pages, 0);
    assert_eq!(pool.curr_pages(), count(Kind::Compressible) + count(Kind::SameFilled));
    for offset in 0..PAGES {
        match kind(offset) {
            Kind::Random => assert_eq!(load(&pool, offset), None, "a refused page is absent"),
            _ => assert!(load(&pool, offset) == Some(page(offset, 0)), "offset {offset} differs"),
        }
    }
    assert_eq!(pool.counters().decompress_fail, 0);
    // Same-filled pages are 13-byte markers; text pages are kept compressed (these, words
    // picked at random, to about 60% under lz4: see the next test for structured data).
    let raw = count(Kind::Compressible) * 4096;
    let stored = pool.counters().pool_total_size - count(Kind::SameFilled) * 13;
    assert!(stored < raw * 2 / 3, "{stored} bytes for {raw} bytes of text pages");

    // The same text through `[zstd, ram]`, for scale: lz4 trades ratio for speed.
    let zstd = host.create_pool(spec("zstd"), &[BackendSpec::new("zstd"), BackendSpec::new("ram")]).unwrap();
    for offset in (0..PAGES).filter(|&o| kind(o) == Kind::Compressible) {
        assert_eq!(zstd.store(offset, &page(offset, 0)).unwrap(), StoreOutcome::Stored);
    }
    let by_zstd = zstd.counters().pool_total_size;
    assert!(by_zstd < stored, "zstd {by_zstd} B, lz4 {stored} B");
}

#[test]
fn structured_pages_compress_to_less_than_half() {
    let host = host();
    let pool = host.create_pool(spec("records"), &lz4(json!({}))).unwrap();
    // Records as a program keeps them: fixed fields, a counter, a few states.
    let records = |offset: u64| -> Vec<u8> {
        let states = ["cold", "warm", "hot", "evicted"];
        (0..)
            .flat_map(|i: u64| {
                let id = offset * 1000 + i;
                format!(
                    "{{\"id\": {id}, \"state\": \"{}\", \"owner\": \"pool-{}\"}}\n",
                    states[(id % 4) as usize],
                    id % 7
                )
                .into_bytes()
            })
            .take(4096)
            .collect()
    };
    for offset in 0..100 {
        assert_eq!(pool.store(offset, &records(offset)).unwrap(), StoreOutcome::Stored);
    }
    let stored = pool.counters().pool_total_size;
    assert!(stored < 100 * 4096 / 2, "{stored} bytes for 100 pages of records");
    assert!((0..100).all(|o| load(&pool, o) == Some(records(o))), "a page differs");
}

#[test]
fn store_raw_keeps_incompressible_pages_and_a_swap_changes_that_while_pages_stay_readable() {
    let host = host();
    let pool = host.create_pool(spec("raw"), &lz4(json!({"on_incompressible": "store_raw"}))).unwrap();
    for offset in 0..PAGES {
        assert_eq!(pool.store(offset, &page(offset, 0)).unwrap(), StoreOutcome::Stored, "offset {offset}");
    }
    let c = pool.counters();
    assert_eq!((c.stored_incompressible_pages, c.reject_compress_poor), (count(Kind::Random), 0));
    assert_eq!(pool.curr_pages(), PAGES);
    assert!((0..PAGES).all(|o| load(&pool, o) == Some(page(o, 0))), "a page differs");

    // Hot swap to `reject` (and another cut-off): the raw pages stored by generation 1 stay
    // readable; new random pages are refused, and a refused overwrite drops the old copy.
    let patch = PoolPatch {
        backends: Some(vec![
            BackendRequest::with_config("lz4", json!({"on_incompressible": "reject", "max_compressed_bytes": 3500})),
            BackendRequest::new("ram"),
        ]),
        ..Default::default()
    };
    host.update_pool("raw", &patch).unwrap();
    assert_eq!(pool.generations().len(), 2);
    assert!((0..PAGES).all(|o| load(&pool, o) == Some(page(o, 0))), "a page stored before the swap differs");
    let random = (0..PAGES).find(|&o| kind(o) == Kind::Random).unwrap();
    assert_eq!(pool.store(random, &page(random, 1)).unwrap(), StoreOutcome::Rejected(RejectReason::CompressPoor));
    assert_eq!(load(&pool, random), None, "no stale page after a refused overwrite");
    let text = (0..PAGES).find(|&o| kind(o) == Kind::Compressible).unwrap();
    assert_eq!(pool.store(text, &page(text, 1)).unwrap(), StoreOutcome::Stored);
    assert_eq!(load(&pool, text), Some(page(text, 1)));
}

#[test]
fn a_config_lz4_does_not_know_is_refused() {
    let host = host();
    let cases = [
        (json!({"level": 1}), "level"),
        (json!({"on_incompressible": "drop"}), "on_incompressible"),
        (json!({"max_compressed_bytes": 0}), "max_compressed_bytes"),
        (json!({"max_compressed_bytes": "big"}), "max_compressed_bytes"),
    ];
    for (config, needle) in cases {
        let err = host.create_pool(spec("bad"), &lz4(config.clone())).unwrap_err().to_string();
        assert!(err.contains(needle), "{config}: {err}");
    }
    assert!(host.pools().is_empty());
    let m = host.plugin("lz4", None).unwrap().manifest().clone();
    assert_eq!((m.abi, m.kind.to_string().as_str()), (1, "filter"));
    let keys: Vec<&str> = m.config.iter().map(|k| k.key.as_ref()).collect();
    assert_eq!(keys, ["max_compressed_bytes", "on_incompressible"]);
}

#[test]
fn larger_pages_compress_too() {
    // 64 KiB pages: LZ4's worst case is larger than the room the host gives a filter.
    let host = host();
    let mut big = spec("big");
    big.page_size = 65536;
    let pool = host.create_pool(big, &lz4(json!({"max_compressed_bytes": 50_000}))).unwrap();
    let text: Vec<u8> = (0..16).flat_map(|i| workload::page(5, 100 + i, 4096)).collect();
    assert_eq!(pool.store(1, &text).unwrap(), StoreOutcome::Stored);
    let mut back = vec![0; 65536];
    assert_eq!(pool.load(1, &mut back).unwrap(), LoadOutcome::Loaded { exclusive: false });
    assert!(back == text);
    assert!(pool.counters().pool_total_size < 65536 * 2 / 3);
}

#[test]
fn tmem_serve_bundles_lz4_and_keeps_an_lz4_pool_across_a_restart() {
    let dir = temp_dir("lz4-serve");
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    let info = client.plugin("lz4").unwrap();
    let v = &info.versions[0];
    assert!(v.bundled && v.kind == "filter" && v.abi == 1, "{v:?}");
    let config = PoolConfig::new("fast", vec![BackendRequest::new("lz4"), BackendRequest::new("ram")]);
    let created = client.create_pool(&config).unwrap();
    assert_eq!(created.backends[0].config["on_incompressible"], "reject");
    assert_eq!(created.backends[0].config["max_compressed_bytes"], 2990);
    for offset in 0..8 {
        assert_eq!(client.put_page("fast", offset, &tagged_page(offset)).unwrap().outcome, "stored");
    }
    let noise = page(1, 0);
    let refused = client.put_page("fast", 100, &noise).unwrap();
    assert_eq!((refused.outcome.as_str(), refused.reason.as_deref()), ("rejected", Some("reject_compress_poor")));
    assert_eq!(client.get_page("fast", 3).unwrap().as_deref(), Some(&tagged_page(3)[..]));
    let total = client.pool("fast").unwrap().counters["pool_total_size"];
    assert!(total < 8 * 4096 / 4, "{total} bytes for 8 tagged pages");
    let unknown = BackendRequest::with_config("lz4", json!({"level": 3}));
    let err = client.create_pool(&PoolConfig::new("bad", vec![unknown, BackendRequest::new("ram")])).unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(400), Some("invalid_pool")), "{err}");
    assert!(server.stop());

    // The catalog kept the pool with its lz4 link (a `ram` pool starts empty again).
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    let pool = client.pool("fast").unwrap();
    assert_eq!(pool.backends.iter().map(|b| b.plugin.as_str()).collect::<Vec<_>>(), ["lz4", "ram"]);
    assert_eq!(client.put_page("fast", 1, &tagged_page(1)).unwrap().outcome, "stored");
    assert_eq!(client.get_page("fast", 1).unwrap().as_deref(), Some(&tagged_page(1)[..]));
    assert!(server.stop());
    std::fs::remove_dir_all(&dir).unwrap();
}
