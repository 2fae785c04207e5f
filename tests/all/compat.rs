//! Compatibility: a data dir written by the previous release (0.1.0, commit 33c39c2) restores
//! unchanged. `tests/fixtures/datadir-v0.1.tar.gz` was made by the old `tmem serve` through
//! `tests/fixtures/make-datadir-v0.1.sh`, which documents what it holds and the formulas of
//! its pages: an uploaded plugin in two versions, an in-memory pool, persistent pools with
//! sync and periodic durability, two hot-swapped pools with pages in both generations (a
//! config swap, a plugin-version swap), and an NBD device over a persistent pool with pages
//! in the pool and in its backing file. The current `tmem serve` must bring back every pool
//! with the same config and chain (same versions, by sha256), every persistent page bit-exact,
//! the plugins, and the device at its socket with the data written.
//!
//! The archive holds absolute paths (the device's socket and backing file), so it is always
//! extracted to `/tmp/tmem-compat-v0.1`, one test at a time (a lock file in /tmp).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tmem_api::client::Client;
use tmem_api::rest::{FrontendKind, PoolInfo};

use crate::common::{ServeProcess, qemu_io, run, temp_dir};

const ROOT: &str = "/tmp/tmem-compat-v0.1";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-v0.1.tar.gz");
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// `text(P, i)` of the fixture script: its line repeated, cut to a page.
fn text_page(pool: &str, i: u64) -> Vec<u8> {
    format!("tmem compat v0.1 pool {pool} page {i}\n").bytes().cycle().take(PAGE).collect()
}

/// `fill(b)`: a same-filled page.
fn fill_page(byte: u8) -> Vec<u8> {
    vec![byte; PAGE]
}

/// `lcg(s, n)`: incompressible bytes.
fn lcg(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = (x * 1103515245 + 12345) % (1 << 31);
            (x >> 16) as u8
        })
        .collect()
}

/// Pool `disk`'s page `i`.
fn disk_page(i: u64) -> Vec<u8> {
    if i % 16 == 15 { fill_page(i as u8) } else { text_page("disk", i) }
}

/// What the NBD device over pool `blk` holds: 4 MiB written as the fixture script says.
fn device_image() -> Vec<u8> {
    let mut image = vec![0u8; 4 * MIB];
    for b in 0..128 {
        image[b * PAGE..(b + 1) * PAGE].copy_from_slice(&text_page("blk", b as u64));
    }
    image[512 << 10..576 << 10].copy_from_slice(&lcg(1, 64 << 10));
    image[MIB..MIB + (512 << 10)].fill(0xa5);
    image
}

/// Holds the fixed path for this test (released when dropped).
fn lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/tmem-compat-v0.1.lock")
        .expect("lock file");
    // SAFETY: flock(2) on a descriptor we own.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
    file
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// What must not change across the upgrade, from a pool's JSON (old or new): its config, its
/// chain and every generation's chain (plugins, versions, sha256, configs, grants).
fn config_and_chain(pool: &Value) -> Value {
    let mut kept = serde_json::Map::new();
    for key in [
        "name",
        "page_size",
        "backends",
        "max_pages",
        "max_bytes",
        "accept_threshold_percent",
        "writethrough",
        "exclusive_gets",
        "enabled",
        "shards",
        "sandbox",
        "persistent",
        "durability",
        "flush_interval_ms",
    ] {
        kept.insert(key.into(), pool.get(key).cloned().unwrap_or(Value::Null));
    }
    let generations = pool["generations"].as_array().unwrap().iter();
    kept.insert(
        "generations".into(),
        generations.map(|g| Value::from_iter([g["id"].clone(), g["backends"].clone()])).collect(),
    );
    Value::Object(kept)
}

/// Per generation: (version of the first link, config level or null, pages).
fn generations(pool: &PoolInfo) -> Vec<(String, Value, u64)> {
    pool.generations
        .iter()
        .map(|g| {
            (g.backends[0].version.clone(), g.backends[0].config.get("level").cloned().unwrap_or(Value::Null), g.pages)
        })
        .collect()
}

fn server_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The server restored every pool and the device without a complaint: no error, and no
/// warning but the one an in-memory pool gets.
fn check_log(log: &Path) {
    let text = server_log(log);
    for line in text.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")) {
        assert!(
            line.contains("WARN") && line.contains("starts empty pool=mem "),
            "unexpected in the server's log: {line}\n{text}"
        );
    }
    assert!(text.contains("block device restored pool=blk"), "{text}");
}

#[test]
fn a_data_dir_written_by_v0_1_restores_unchanged() {
    let _lock = lock();
    let root = PathBuf::from(ROOT);
    let _ = std::fs::remove_dir_all(&root);
    run("tar", &["-xzf", FIXTURE, "-C", "/tmp"]);
    let old_pools = read_json(&root.join("old-pools.json"));
    let old_plugins = read_json(&root.join("old-plugins.json"));
    let old_devices = read_json(&root.join("old-frontends.json"));
    let scratch = temp_dir("compat");
    let log = scratch.join("serve-1.log");

    // v0.1 kept the device's backing file and socket beside the data dir, not in it: since
    // paths are confined, an upgrade names that directory (`--allow-path`), or the log says why
    // the device is not served.
    let server = ServeProcess::start_logged(&root.join("data"), &["--allow-path", ROOT], Some(&log));
    let client = server.client();
    check_restored(&client, &old_pools, &old_plugins, &old_devices, &scratch, &log);

    // The restored pools keep serving, and what the new code writes into the old data dir it
    // restores in turn.
    let extra = text_page("custom", 100);
    assert_eq!(client.put_page("custom", 100, &extra).unwrap().outcome, "stored");
    qemu_io(&format!("nbd+unix:///?socket={ROOT}/blk.nbd"), &["write -P 0x3c 2M 64k", "flush"]);
    assert!(server.stop(), "SIGTERM stops the new tmem serve cleanly:\n{}", server_log(&log));
    check_log(&log);

    let log = scratch.join("serve-2.log");
    let server = ServeProcess::start_logged(&root.join("data"), &["--allow-path", ROOT], Some(&log));
    let client = server.client();
    let pools = client.pools().unwrap();
    assert_eq!(pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["blk", "custom", "disk", "mem", "swapped"]);
    let custom = client.pool("custom").unwrap();
    assert_eq!(generations(&custom), [("1.0.0".into(), Value::Null, 16), ("2.0.0".into(), Value::Null, 17)]);
    assert_eq!(client.get_page("custom", 100).unwrap(), Some(extra));
    for i in 0..32 {
        assert_eq!(client.get_page("custom", i).unwrap(), Some(text_page("custom", i)), "custom page {i}");
    }
    for i in 0..64 {
        assert_eq!(client.get_page("disk", i).unwrap(), Some(disk_page(i)), "disk page {i}");
    }
    qemu_io(
        &format!("nbd+unix:///?socket={ROOT}/blk.nbd"),
        &["read -P 0xa5 1M 512k", "read -P 0x3c 2M 64k", "read -P 0 1536k 512k", "read -P 0 3M 1M"],
    );
    assert!(server.stop(), "SIGTERM stops the new tmem serve cleanly:\n{}", server_log(&log));
    check_log(&log);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Everything the old server had, checked on the new one just after it restored the data dir.
fn check_restored(
    client: &Client,
    old_pools: &Value,
    old_plugins: &Value,
    old_devices: &Value,
    scratch: &Path,
    log: &Path,
) {
    let pools = client.pools().unwrap();
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["blk", "custom", "disk", "mem", "swapped"], "every pool is back:\n{}", server_log(log));

    // Same config and chain as the old server showed, generation by generation.
    for (old, new) in old_pools.as_array().unwrap().iter().zip(&pools) {
        let new_json = serde_json::to_value(new).unwrap();
        assert_eq!(config_and_chain(old), config_and_chain(&new_json), "pool {}: config and chain", new.name);
        let old_stored = old["counters"]["stored_pages"].as_u64().unwrap();
        let expected = if new.persistent { old_stored } else { 0 };
        assert_eq!(
            new.counters["stored_pages"], expected,
            "pool {}: persistent pools whole, ram pools empty",
            new.name
        );
        if new.persistent {
            let old_pages: Vec<u64> =
                old["generations"].as_array().unwrap().iter().map(|g| g["pages"].as_u64().unwrap()).collect();
            let new_pages: Vec<u64> = new.generations.iter().map(|g| g.pages).collect();
            assert_eq!(old_pages, new_pages, "pool {}: pages per generation", new.name);
        }
    }
    // And what the fixture script made, independently of the old server's answers.
    let pool = |name: &str| pools.iter().find(|p| p.name == name).unwrap();
    let mem = pool("mem");
    assert_eq!(
        (mem.max_pages, mem.accept_threshold_percent, mem.exclusive_gets, mem.shards, mem.persistent),
        (Some(4096), 80, true, 2, false)
    );
    assert_eq!(
        mem.backends.iter().map(|b| (b.plugin.as_str(), b.config.get("level"))).collect::<Vec<_>>(),
        [("zstd", Some(&Value::from(3))), ("ram", None)]
    );
    assert_eq!(client.get_page("mem", 0).unwrap(), None, "an in-memory pool restarts empty");
    for name in ["blk", "custom", "disk", "swapped"] {
        let p = pool(name);
        assert!(p.persistent, "{name} is persistent");
        assert_eq!(p.backends.last().unwrap().plugin, "sled");
        assert_eq!(p.backends.last().unwrap().grants, ["storage"]);
    }
    assert_eq!(pool("disk").durability, Some(tmem_api::rest::Durability::Sync));
    assert_eq!(
        (pool("swapped").durability, pool("swapped").flush_interval_ms),
        (Some(tmem_api::rest::Durability::Periodic), Some(250))
    );
    assert_eq!(pool("blk").max_pages, Some(160));
    assert_eq!(
        generations(pool("swapped")),
        [("0.1.0".into(), Value::from(1), 32), ("0.1.0".into(), Value::from(9), 32)],
        "swapped: a config hot swap, both generations"
    );
    assert_eq!(
        generations(pool("custom")),
        [("1.0.0".into(), Value::Null, 16), ("2.0.0".into(), Value::Null, 16)],
        "custom: a plugin-version hot swap, both generations"
    );
    assert!(pool("custom").generations.iter().all(|g| g.backends[0].plugin == "versioned"));

    // Every persistent page, bit-exact, through the generation that stored it.
    for i in 0..64 {
        assert_eq!(client.get_page("disk", i).unwrap(), Some(disk_page(i)), "disk page {i}");
        assert_eq!(client.get_page("swapped", i).unwrap(), Some(text_page("swapped", i)), "swapped page {i}");
    }
    for i in 0..32 {
        assert_eq!(client.get_page("custom", i).unwrap(), Some(text_page("custom", i)), "custom page {i}");
    }
    assert_eq!(client.get_page("disk", 64).unwrap(), None);
    for name in ["disk", "swapped", "custom"] {
        let counters = &client.pool(name).unwrap().counters;
        assert_eq!((counters["load_failures"], counters["decompress_fail"]), (0, 0), "pool {name}: {counters:?}");
    }

    // Plugins: the uploaded ones with both versions, and every version a pool runs (the
    // bundled modules the old pools pinned), with the same sha256 and users.
    let plugins = client.plugins().unwrap();
    let versioned = plugins.iter().find(|p| p.name == "versioned").expect("the uploaded plugin is listed");
    assert_eq!(
        versioned.versions.iter().map(|v| (v.version.as_str(), v.bundled)).collect::<Vec<_>>(),
        [("1.0.0", false), ("2.0.0", false)]
    );
    for old in old_plugins.as_array().unwrap() {
        for old_version in old["versions"].as_array().unwrap() {
            let uploaded = !old_version["bundled"].as_bool().unwrap();
            let used = !old_version["used_by"].as_array().unwrap().is_empty();
            if !uploaded && !used {
                continue; // a bundled version no pool runs may change with the binary
            }
            let sha256 = old_version["sha256"].as_str().unwrap();
            let name = old["name"].as_str().unwrap();
            let new = plugins
                .iter()
                .filter(|p| p.name == name)
                .flat_map(|p| &p.versions)
                .find(|v| v.sha256 == sha256)
                .unwrap_or_else(|| panic!("plugin {name} {sha256} is still registered"));
            assert_eq!(new.version, old_version["version"].as_str().unwrap(), "{name} {sha256}");
            assert_eq!(serde_json::to_value(&new.used_by).unwrap(), old_version["used_by"], "{name} {sha256}: used by");
        }
    }

    // The block device: the same attachment, served again at its socket, its pages where
    // they were (pool and backing file), its data as written.
    let old_device = &old_devices[0];
    let frontends = client.frontends("blk").unwrap();
    assert_eq!(frontends.len(), 1, "{frontends:?}\n{}", server_log(log));
    let device = &frontends[0];
    let socket = format!("{ROOT}/blk.nbd");
    assert_eq!(
        (device.id.as_str(), device.kind, device.pool.as_str(), device.address.as_str()),
        (old_device["id"].as_str().unwrap(), FrontendKind::Nbd, "blk", old_device["address"].as_str().unwrap())
    );
    assert_eq!(device.address, format!("nbd+unix:///?socket={socket}"));
    let info = device.device.as_ref().expect("a block device");
    assert_eq!(
        (info.size_bytes, info.block_size, info.backing.as_str(), info.socket.as_deref()),
        (4 * MIB as u64, 4096, format!("{ROOT}/blk.img").as_str(), Some(socket.as_str()))
    );
    let old_counters = &old_pools[0]["frontends"][0]["counters"];
    assert_eq!(
        (device.counters["pool_pages"], device.counters["backing_pages"]),
        (old_counters["pool_pages"].as_u64().unwrap(), old_counters["backing_pages"].as_u64().unwrap()),
        "the device's pages are where they were"
    );
    assert_eq!((device.counters["pool_pages"], device.counters["backing_pages"]), (160, 112));
    let back = scratch.join("device.img");
    run("nbdcopy", &[&device.address, back.to_str().unwrap()]);
    let read = std::fs::read(&back).unwrap();
    let expected = device_image();
    assert_eq!(read.len(), expected.len());
    if let Some(block) =
        (0..read.len() / PAGE).find(|b| read[b * PAGE..(b + 1) * PAGE] != expected[b * PAGE..(b + 1) * PAGE])
    {
        panic!("the device's block {block} differs from what was written");
    }
    qemu_io(&device.address, &["read -P 0xa5 1M 512k", "read -P 0 1536k 512k"]);
    let counters = &client.frontends("blk").unwrap()[0].counters;
    assert_eq!((counters["errors"], counters["lost_pages"]), (0, 0), "{counters:?}");
    assert!(counters["from_backing"] >= 112, "reads came from the backing file too: {counters:?}");
}
