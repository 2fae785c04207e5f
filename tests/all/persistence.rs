//! Persistent pools (`[zstd, sled]`, the store granted `storage`): pages, invalidations and
//! chain generations survive a host restart; grants are checked; a destroyed pool's database
//! is gone. The crash tests (SIGKILL of a real `tmem serve`) are in `crash.rs`.

use serde_json::json;
use tmem_api::rest::{BackendRequest, Durability, PoolConfig, PoolPatch};
use tmem_host::{Host, HostConfig, LoadOutcome, StoreOutcome};

use crate::common::{tagged_page, temp_dir};

fn host_on(dir: &std::path::Path) -> Host {
    Host::new(HostConfig {
        data_dir: Some(dir.to_path_buf()),
        engine: tmem_host::plugin::EngineOptions { max_instances: 200, ..Default::default() },
        ..Default::default()
    })
    .expect("host starts")
}

fn sled() -> BackendRequest {
    BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") }
}

fn persistent(name: &str) -> PoolConfig {
    let mut config = PoolConfig::new(name, vec![BackendRequest::new("zstd"), sled()]);
    config.shards = Some(4);
    config
}

fn page_of(pool: &tmem_host::Pool, offset: u64) -> Option<Vec<u8>> {
    let mut page = vec![0u8; pool.page_size() as usize];
    match pool.load(offset, &mut page).expect("load works") {
        LoadOutcome::Loaded { .. } => Some(page),
        LoadOutcome::Absent => None,
    }
}

#[test]
fn pages_invalidations_and_generations_survive_a_restart() {
    let dir = temp_dir("persist");
    let zero = vec![0u8; 4096];
    {
        let host = host_on(&dir);
        let pool = host.create_pool_from(&persistent("p")).unwrap();
        assert!(pool.is_persistent());
        for offset in 0..200 {
            assert_eq!(pool.store(offset, &tagged_page(offset)).unwrap(), StoreOutcome::Stored);
        }
        pool.store(500, &zero).unwrap();
        for offset in 0..50 {
            assert!(pool.invalidate_page(offset).unwrap());
        }
        for offset in 50..60 {
            pool.store(offset, &tagged_page(offset + 1000)).unwrap();
        }
        // A hot swap (zstd at another level): old pages stay on disk under generation 1.
        let swap = PoolPatch {
            backends: Some(vec![BackendRequest::with_config("zstd", json!({"level": 9})), sled()]),
            ..Default::default()
        };
        host.update_pool("p", &swap).unwrap();
        for offset in 190..210 {
            pool.store(offset, &tagged_page(offset + 2000)).unwrap();
        }
        assert_eq!(pool.generations().len(), 2);
        // A second persistent pool and a ram pool alongside.
        let other = host.create_pool_from(&persistent("q")).unwrap();
        other.store(7, &tagged_page(7)).unwrap();
        host.create_pool_from(&PoolConfig::new("r", vec![BackendRequest::new("ram")]))
            .unwrap()
            .store(1, &zero)
            .unwrap();
    }
    let host = host_on(&dir);
    let pool = host.pool("p").unwrap();
    let expected = |offset: u64| match offset {
        0..50 => None,
        50..60 => Some(tagged_page(offset + 1000)),
        190..210 => Some(tagged_page(offset + 2000)),
        60..190 => Some(tagged_page(offset)),
        500 => Some(zero.clone()),
        _ => None,
    };
    for offset in 0..600 {
        assert_eq!(page_of(&pool, offset), expected(offset), "offset {offset}");
    }
    let c = pool.counters();
    assert_eq!((c.stored_pages, c.same_filled_pages, c.load_failures), (161, 1, 0));
    assert!(c.pool_total_size > 0, "bytes on disk are reported");
    let generations = pool.generations();
    assert_eq!(generations.iter().map(|(g, n)| (g.id, *n)).collect::<Vec<_>>(), [(1, 141), (2, 20)]);
    assert_eq!(pool.chain().links()[0].config["level"], 9);
    assert_eq!(page_of(&host.pool("q").unwrap(), 7), Some(tagged_page(7)));
    assert_eq!(host.pool("r").unwrap().curr_pages(), 0, "ram pools come back empty");

    // Destroying a persistent pool deletes its database.
    let db_dirs = || std::fs::read_dir(dir.join("pools")).unwrap().count();
    assert_eq!(db_dirs(), 2);
    host.destroy_pool("q").unwrap();
    assert_eq!(db_dirs(), 1);
    drop((pool, host));
    let host = host_on(&dir);
    assert!(host.pool("q").is_err());
    assert_eq!(host.pool("p").unwrap().curr_pages(), 161);
    host.pool("p").unwrap().invalidate_area().unwrap();
    drop(host);
    assert_eq!(host_on(&dir).pool("p").unwrap().curr_pages(), 0, "invalidate_area is persistent");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grants_and_durability_are_checked_at_creation() {
    let dir = temp_dir("grants");
    let host = host_on(&dir);
    let refuse = |config: PoolConfig, needle: &str| {
        let err = host.create_pool_from(&config).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    };
    refuse(PoolConfig::new("a", vec![BackendRequest::new("sled")]), "needs the 'storage' capability");
    refuse(
        PoolConfig::new("a", vec![BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("ram") }]),
        "does not use the 'storage' capability",
    );
    refuse(
        PoolConfig::new("a", vec![BackendRequest { grants: vec!["teleport".into()], ..BackendRequest::new("sled") }]),
        "unknown capability 'teleport'",
    );
    refuse(
        PoolConfig::new(
            "a",
            vec![BackendRequest { grants: vec!["storage".into(), "network".into()], ..BackendRequest::new("sled") }],
        ),
        "does not use the 'network' capability",
    );
    refuse(
        PoolConfig { durability: Some(Durability::Periodic), ..PoolConfig::new("a", vec![BackendRequest::new("ram")]) },
        "only to persistent pools",
    );
    refuse(PoolConfig { flush_interval_ms: Some(10), ..persistent("a") }, "only to periodic");
    refuse(
        PoolConfig { durability: Some(Durability::Periodic), flush_interval_ms: Some(0), ..persistent("a") },
        "flush_interval_ms 0",
    );
    refuse(PoolConfig::new("..", vec![BackendRequest::new("ram")]), "must not start with '.'");
    assert!(host.pools().is_empty());
    assert!(
        !dir.join("pools").exists() || std::fs::read_dir(dir.join("pools")).unwrap().count() == 0,
        "refused pools leave no database"
    );

    // Durability changes at runtime; a swap cannot make a pool (non-)persistent.
    let pool = host
        .create_pool_from(&PoolConfig {
            durability: Some(Durability::Periodic),
            flush_interval_ms: Some(50),
            ..persistent("p")
        })
        .unwrap();
    assert_eq!(pool.durability(), Some(tmem_host::persist::Durability::Periodic(std::time::Duration::from_millis(50))));
    host.update_pool("p", &PoolPatch { durability: Some(Durability::Sync), ..Default::default() }).unwrap();
    assert_eq!(pool.durability(), Some(tmem_host::persist::Durability::Sync));
    let err =
        host.update_pool("p", &PoolPatch { flush_interval_ms: Some(5), ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("only to periodic"), "{err}");
    let to_ram = PoolPatch {
        backends: Some(vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]),
        ..Default::default()
    };
    assert!(host.update_pool("p", &to_ram).is_err());

    // Without a data dir there is nowhere to persist.
    let bare = crate::common::host();
    let err = bare.create_pool_from(&persistent("x")).unwrap_err().to_string();
    assert!(err.contains("needs a host with a data dir"), "{err}");
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalidated_pages_space_is_reclaimed_under_churn() {
    let dir = temp_dir("space");
    let host = host_on(&dir);
    let mut config = PoolConfig::new("churn", vec![sled()]);
    config.shards = Some(2);
    let pool = host.create_pool_from(&config).unwrap();
    let mut rng = tmem_host::workload::Rng::new(5);
    let mut page = vec![0u8; 4096];
    let mut sizes = Vec::new();
    for round in 0..8u64 {
        for i in 0..1000 {
            page.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            pool.store(round * 1000 + i, &page).unwrap();
        }
        pool.invalidate_area().unwrap();
        sizes.push(pool.counters().pool_total_size);
    }
    // Eight rounds wrote 8 x 4 MiB of incompressible pages; with the space of invalidated
    // records reused, the database stays near one round's size (sled allocates in segments).
    eprintln!("size on disk after each round of 1000 stores + invalidate_area: {sizes:?}");
    assert!(sizes[0] > 0);
    assert!(*sizes.last().unwrap() < 2 * sizes[0], "space is reused, not accumulated: {sizes:?}");
    drop((pool, host));
    let _ = std::fs::remove_dir_all(&dir);
}
