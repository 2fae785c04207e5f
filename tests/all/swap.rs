//! `tmem swap on|off|status` against a real `tmem serve`, run as a user would run the binary.
//! This machine has no ublk or NBD driver, so what runs here is what needs none: the status
//! table and JSON over a block device served as an NBD export (written by qemu-io, a real NBD
//! client), `off` keeping or dropping the pool (and the lower tier and backing file `on`
//! makes), and `on`'s refusals — each before anything is made. The kernel's side (mkswap,
//! swapon, live swapping across a host restart) runs in the guest: `tests/guest/swap-restart.sh`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tmem_api::rest::{BackendRequest, PoolConfig, TierConfig};

use crate::cli::{run, tmem, tmem_at};
use crate::common::{ServeProcess, qemu_io, temp_dir};

/// The pools the host has, by name.
fn pool_names(server: &ServeProcess) -> Vec<String> {
    server.client().pools().unwrap().into_iter().map(|p| p.name).collect()
}

/// Attaches an NBD export of `size` to `pool` with its backing file at `backing`; returns its
/// socket.
fn attach_nbd(server: &ServeProcess, pool: &str, size: &str, backing: &Path) -> String {
    let socket = server.data_dir.join(format!("{pool}.sock"));
    let (socket, backing) = (socket.to_str().unwrap(), backing.to_str().unwrap());
    server.cli(&["pool", "attach", pool, "--nbd-socket", socket, "--size", size, "--backing", backing]);
    socket.to_string()
}

#[test]
fn status_shows_each_block_device_with_its_pages_ratio_and_memory() {
    let server = ServeProcess::start(&temp_dir("swap-status"), &[]);
    let empty = run(&mut tmem_at(&server), &["swap", "status"]).ok();
    assert_eq!(empty, "no swap device: `tmem swap on` makes one\n");
    assert_eq!(run(&mut tmem_at(&server), &["swap", "status", "--json"]).json(), Value::Array(vec![]));

    server.cli(&["pool", "create", "swap", "--backend", "lz4", "--backend", "ram"]);
    server.cli(&["pool", "create", "other", "--backend", "ram"]); // no device: not listed
    let backing = server.data_dir.join("swap.img");
    let socket = attach_nbd(&server, "swap", "64M", &backing);
    let uri = format!("nbd+unix:///?socket={socket}");
    // 4 MiB of one byte (compresses very well), then 4 MiB of zeros written as data.
    qemu_io(&uri, &["write -P 0xab 0 4M", "write -P 0 4M 4M"]);

    let pool = server.client().pool("swap").unwrap();
    let (stored, records) = (pool.counters["stored_pages"], pool.counters["pool_total_size"]);
    assert_eq!(stored, 2048, "every page written is in the pool");
    let json = run(&mut tmem_at(&server), &["swap", "status", "--json"]).json();
    let devices = json.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{json}");
    let device = &devices[0];
    assert_eq!(device["device"], uri.as_str(), "no kernel device is connected: the export's address");
    assert_eq!(device["pool"], "swap");
    assert_eq!(device["kind"], "nbd");
    assert_eq!(device["size_bytes"], 64 << 20);
    assert_eq!(device["stored_pages"], stored);
    assert_eq!(device["data_bytes"], stored * 4096);
    assert_eq!(device["compressed_bytes"], records);
    let ratio = device["ratio"].as_f64().unwrap();
    assert!((ratio - (stored * 4096) as f64 / records as f64).abs() < 1e-9, "{ratio}");
    assert!(ratio > 20.0, "same-filled pages are markers: {ratio}");
    assert_eq!(device["memory_bytes"], records + 16 * stored, "in-memory records and the index");
    assert_eq!(device["backing"], backing.to_str().unwrap());
    assert_eq!(device["backing_pages"], 0);
    assert_eq!(device["swap"], Value::Null, "not an active swap area (/proc/swaps)");

    let table = run(&mut tmem_at(&server), &["swap", "status"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for column in ["DEVICE", "POOL", "DISKSIZE", "PAGES", "DATA", "COMPR", "RATIO", "MEM-USED", "SWAP-USED", "PRIO"] {
        assert!(lines[0].contains(column), "{table}");
    }
    let cells: Vec<&str> = lines[1].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(cells[0], uri);
    assert_eq!(cells[1], "swap");
    assert!(cells.contains(&"64 MiB") && cells.contains(&"2048") && cells.contains(&"8 MiB"), "{table}");
    assert!(cells.contains(&format!("{ratio:.2}").as_str()), "{table}");
    assert_eq!(&cells[cells.len() - 2..], ["-", "-"], "no swap use or priority: {table}");
}

#[test]
fn on_refuses_clearly_before_it_makes_anything() {
    let server = ServeProcess::start(&temp_dir("swap-on"), &[]);
    let on = |args: &[&str]| {
        let r = run(tmem_at(&server).arg("swap").arg("on"), args);
        assert_ne!(r.code, 0, "tmem swap on {args:?} succeeded: {}", r.text());
        r.stderr
    };
    // Sizes: not whole pages, nothing, too small, a share of RAM out of range, a typo.
    assert!(on(&["--size", "5000"]).contains("--size 5000 is not a multiple of the page size (4096 bytes)"));
    assert!(on(&["--size", "0"]).contains("a swap device of 0 bytes holds nothing"));
    assert!(on(&["--size", "8K"]).contains("a swap area needs at least 40 KiB"));
    assert!(on(&["--size", "500%"]).contains("not a share of RAM from 1% to 400%"));
    assert!(on(&["--size", "4Q"]).contains("unknown size suffix"));
    assert!(on(&["--chain", ","]).contains("an empty chain"));
    // No room for the backing file, reserved at the device's size: 64 TiB here.
    let message = on(&["--size", "64T"]);
    let backing = server.data_dir.join("swap.swap");
    assert!(
        message.contains(&format!("no room for the backing file {}", backing.display()))
            && message.contains("70368744177664 bytes"),
        "{message}"
    );
    // The same, on a backing file the user names.
    let elsewhere = temp_dir("swap-on-backing").join("big.swap");
    let message = on(&["--size", "64T", "--backing", elsewhere.to_str().unwrap()]);
    assert!(message.contains(&format!("no room for the backing file {}", elsewhere.display())), "{message}");
    // No block driver: this machine has neither ublk_drv nor nbd (a machine with one of them
    // goes on to make the swap device, which is the guest's test).
    if !Path::new("/dev/ublk-control").exists() && !Path::new("/sys/block/nbd0").exists() {
        let message = on(&["--size", "64M"]);
        assert!(message.contains("no block driver for a swap device: ublk is not available"), "{message}");
        assert!(message.contains("/dev/ublk-control is missing"), "{message}");
        assert!(message.contains("and NBD, the fallback, is not either"), "{message}");
        let message = on(&["--size", "64M", "--transport", "nbd"]);
        assert!(message.contains("NBD is not available"), "{message}");
        let message = on(&["--size", "64M", "--transport", "ublk"]);
        assert!(message.contains("ublk is not available: /dev/ublk-control is missing"), "{message}");
    } else {
        eprintln!("this machine has a ublk or NBD driver: the no-driver refusal is not exercised");
    }
    // Nothing was made by any of them: no pool, no backing file.
    assert!(pool_names(&server).is_empty(), "{:?}", pool_names(&server));
    assert!(!backing.exists() && !elsewhere.exists());

    // Not root: a user without privileges is told so, before anything.
    if crate::common::run("id", &["-u"]).trim() == "0" {
        let r = run(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_tmem")])
                .env("TMEM_SERVER", &server.url)
                .env("TMEM_TOKEN", &server.token)
                .current_dir("/"),
            &["swap", "on", "--size", "64M"],
        );
        assert_eq!(r.code, 1, "{}", r.text());
        assert!(r.stderr.contains("tmem swap on needs root"), "{}", r.stderr);
    }

    // The host not running: said so, with what to do.
    let r = run(&mut tmem(), &["swap", "on", "--size", "64M", "--server", "127.0.0.1:1", "--token", "t"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot reach tmem at http://127.0.0.1:1") && r.stderr.contains("is `tmem serve` running?"),
        "{}",
        r.stderr
    );
    let r = run(&mut tmem(), &["swap", "status", "--server", "127.0.0.1:1", "--token", "t"]);
    assert!(r.code == 1 && r.stderr.contains("is `tmem serve` running?"), "{}", r.stderr);
}

#[test]
fn on_uses_an_existing_pool_and_device_as_they_are() {
    let server = ServeProcess::start(&temp_dir("swap-existing"), &[]);
    server.cli(&["pool", "create", "swap", "--backend", "zstd", "--backend", "ram"]);
    let backing = server.data_dir.join("mine.img");
    attach_nbd(&server, "swap", "32M", &backing);
    let before = server.client().pool("swap").unwrap();
    let other = server.data_dir.join("other.img");
    let r = run(
        tmem_at(&server).args([
            "swap",
            "on",
            "--size",
            "64M",
            "--chain",
            "lz4,ram",
            "--backing",
            other.to_str().unwrap(),
        ]),
        &[],
    );
    // The differences are named; the pool and its device are kept as they are.
    assert!(r.stderr.contains("pool swap exists with other settings (backends): used as it is"), "{}", r.stderr);
    assert!(r.stderr.contains("exists with another size, backing: used as it is"), "{}", r.stderr);
    if !Path::new("/sys/block/nbd0").exists() {
        // Its device is an NBD export, and this machine has no NBD driver to connect it.
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("NBD is not available"), "{}", r.stderr);
    }
    // Without options, the pool and device are taken as they are: nothing to name.
    let r = run(tmem_at(&server).args(["swap", "on"]), &[]);
    assert!(!r.stderr.contains("used as it is"), "{}", r.stderr);
    let after = server.client().pool("swap").unwrap();
    assert_eq!((after.backends, after.frontends.len()), (before.backends, 1));
    assert_eq!(after.frontends[0].id, before.frontends[0].id);
}

#[test]
fn off_turns_off_detaches_and_keeps_or_drops_the_pool() {
    let server = ServeProcess::start(&temp_dir("swap-off"), &[]);
    let off = |args: &[&str]| run(tmem_at(&server).args(["swap", "off"]), args).ok();

    // No pool: nothing to do, and said so (running `off` twice is not an error).
    assert_eq!(off(&[]), "there is no pool swap, so no swap on it: nothing changed\n");

    // --keep-pool: the device goes, the pool and its pages' settings stay.
    server.cli(&["pool", "create", "swap", "--backend", "lz4", "--backend", "ram"]);
    let default_backing = server.data_dir.join("swap.swap");
    attach_nbd(&server, "swap", "16M", &default_backing);
    let id = server.client().pool("swap").unwrap().frontends[0].id.clone();
    let out = off(&["--keep-pool"]);
    assert_eq!(out, format!("pool swap is no swap any more:\n  detached {id}\n  kept pool swap\n"));
    assert!(server.client().pool("swap").unwrap().frontends.is_empty());
    assert!(default_backing.exists(), "a kept pool keeps its backing file");

    // Dropped: the pool, and the backing file at the default place (what `on` made).
    attach_nbd(&server, "swap", "16M", &default_backing);
    let out = off(&[]);
    assert!(out.contains("removed pool swap") && out.contains("removed its backing file"), "{out}");
    assert!(pool_names(&server).is_empty());
    assert!(!default_backing.exists());

    // A tiered pool `on --tier` made (NAME over NAME-lower) goes with its lower tier; a
    // backing file the user named stays.
    let client = server.client();
    client
        .create_pool(&PoolConfig::new("fast-lower", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]))
        .unwrap();
    client
        .create_pool(&PoolConfig {
            tier: Some(TierConfig::new("fast-lower", 60)),
            ..PoolConfig::new("fast", vec![BackendRequest::new("lz4"), BackendRequest::new("ram")])
        })
        .unwrap();
    let named = server.data_dir.join("named.img");
    attach_nbd(&server, "fast", "16M", &named);
    // The lower tier is not the swap: it is named through its upper pool.
    let r = run(tmem_at(&server).args(["swap", "off", "fast-lower"]), &[]);
    assert!(r.code == 1 && r.stderr.contains("pool fast-lower is the lower tier of pool fast"), "{}", r.stderr);
    let out = off(&["fast"]);
    assert!(out.contains("removed pool fast\n") && out.contains("removed pool fast-lower (its lower tier)"), "{out}");
    assert!(!out.contains("backing file"), "{out}");
    assert!(pool_names(&server).is_empty());
    assert!(named.exists());
}
