//! Restart safety: a `tmem serve` restarted on the same data dir (after SIGTERM or SIGKILL)
//! comes back with the same plugins and pools, versions pinned.

use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch};

use crate::common::{ServeProcess, tagged_page, temp_dir};

#[test]
fn plugins_and_pools_come_back_after_a_restart_and_after_a_kill() {
    let dir = temp_dir("restart");
    let server = ServeProcess::start(&dir, &["--demo-pool"]);
    let client = server.client();
    let v1 = tmem_host::bundled::built("tmem_plugin_versioned_v1").unwrap();
    let v2 = tmem_host::bundled::built("tmem_plugin_versioned_v2").unwrap();
    client.upload_plugin(Some("fmt"), &v1).unwrap();
    client.upload_plugin(Some("fmt"), &v2).unwrap();
    let mut a = PoolConfig::new(
        "a",
        vec![
            BackendRequest { version: Some("1.0.0".into()), ..BackendRequest::new("fmt") },
            BackendRequest::new("ram"),
        ],
    );
    a.max_pages = Some(500);
    a.exclusive_gets = true;
    client.create_pool(&a).unwrap();
    let mut b = PoolConfig::new(
        "b",
        vec![
            BackendRequest { config: serde_json::json!({"level": 7}), ..BackendRequest::new("zstd") },
            BackendRequest::new("ram"),
        ],
    );
    b.page_size = 8192;
    b.writethrough = true;
    client.create_pool(&b).unwrap();
    client.create_pool(&PoolConfig::new("doomed", vec![BackendRequest::new("ram")])).unwrap();
    client.remove_pool("doomed").unwrap();
    // Hot swap a to 2.0.0 and change a limit: the catalog keeps the latest state.
    let swap = PoolPatch {
        backends: Some(vec![
            BackendRequest { version: Some("2.0.0".into()), ..BackendRequest::new("fmt") },
            BackendRequest::new("ram"),
        ]),
        max_pages: Some(Some(600)),
        enabled: Some(false),
        ..Default::default()
    };
    client.update_pool("a", &swap).unwrap();
    client.put_page("demo", 1, &tagged_page(1)).unwrap();
    // Two persistent pools, one of them running the uploaded plugin.
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    client.create_pool(&PoolConfig::new("disk1", vec![BackendRequest::new("fmt"), sled.clone()])).unwrap();
    let mut disk2 = PoolConfig::new("disk2", vec![BackendRequest::new("zstd"), sled]);
    disk2.durability = Some(tmem_api::rest::Durability::Periodic);
    disk2.flush_interval_ms = Some(60_000); // only the clean stop (SIGTERM) flushes these
    client.create_pool(&disk2).unwrap();
    for offset in 0..20 {
        client.put_page("disk1", offset, &tagged_page(offset)).unwrap();
        client.put_page("disk2", offset, &tagged_page(offset + 100)).unwrap();
    }
    client.remove_page("disk1", 3).unwrap();
    let before: Vec<_> = client.pools().unwrap();
    let plugins_before = client.plugins().unwrap();
    let token = server.token.clone();
    assert!(server.stop(), "SIGTERM stops tmem serve cleanly");

    let server = ServeProcess::start(&dir, &["--demo-pool"]);
    assert_eq!(server.token, token, "the token file is reused");
    let client = server.client();
    let after = client.pools().unwrap();
    assert_eq!(after.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b", "demo", "disk1", "disk2"]);
    for offset in 0..20 {
        let expected = (offset != 3).then(|| tagged_page(offset));
        assert_eq!(client.get_page("disk1", offset).unwrap(), expected, "disk1 offset {offset}");
        assert_eq!(client.get_page("disk2", offset).unwrap(), Some(tagged_page(offset + 100)), "disk2 offset {offset}");
    }
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.backends, new.backends, "pool {}: same versions (by sha256) and configs", old.name);
        assert_eq!(
            (
                old.page_size,
                old.max_pages,
                old.max_bytes,
                old.accept_threshold_percent,
                old.writethrough,
                old.exclusive_gets,
                old.enabled,
                old.shards
            ),
            (
                new.page_size,
                new.max_pages,
                new.max_bytes,
                new.accept_threshold_percent,
                new.writethrough,
                new.exclusive_gets,
                new.enabled,
                new.shards
            ),
            "pool {}",
            old.name
        );
        assert_eq!(
            (old.persistent, old.durability, old.flush_interval_ms),
            (new.persistent, new.durability, new.flush_interval_ms)
        );
        let expected_pages = if new.persistent { old.counters["stored_pages"] } else { 0 };
        assert_eq!(
            new.counters["stored_pages"], expected_pages,
            "pool {}: persistent pools come back whole, ram pools empty",
            new.name
        );
    }
    assert_eq!(after[0].backends[0].version, "2.0.0");
    assert_eq!(after[0].max_pages, Some(600));
    assert!(!after[0].enabled);
    assert_eq!(client.get_page("demo", 1).unwrap(), None);
    assert_eq!(
        client.plugins().unwrap().iter().map(|p| (&p.name, p.versions.len())).collect::<Vec<_>>(),
        plugins_before.iter().map(|p| (&p.name, p.versions.len())).collect::<Vec<_>>()
    );

    // Changes after the restart survive a SIGKILL (every change is on disk before the answer).
    client.remove_pool("b").unwrap();
    client.update_pool("a", &PoolPatch { enabled: Some(true), ..Default::default() }).unwrap();
    client.remove_plugin("fmt", Some("1.0.0")).unwrap();
    client.put_page("disk1", 19, &tagged_page(19)).unwrap();
    drop(server); // SIGKILL
    let server = ServeProcess::start(&dir, &[]);
    let client = server.client();
    let names: Vec<String> = client.pools().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["a", "demo", "disk1", "disk2"]);
    assert_eq!(client.get_page("disk1", 19).unwrap(), Some(tagged_page(19)), "pages survive the SIGKILL too");
    assert!(client.pool("a").unwrap().enabled);
    assert_eq!(
        client.plugin("fmt").unwrap().versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
        ["2.0.0"]
    );
    assert!(client.put_page("a", 3, &tagged_page(3)).unwrap().outcome == "stored");
    assert_eq!(client.get_page("a", 3).unwrap().as_deref(), Some(&tagged_page(3)[..]));
    let _ = std::fs::remove_dir_all(&dir);
}
