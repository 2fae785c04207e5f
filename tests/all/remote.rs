//! The bundled `remote` store against real remotes: a second `tmem serve` acting as memory
//! server (peer mode), a real `redis-server`, and a real 3-node Redis Cluster — round trips,
//! invalidation, a remote that dies (stores refused fast, loads failing loudly, nothing hangs)
//! and comes back (recovery without a restart), and an address the pool was not granted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tmem_api::client::Client;
use tmem_api::rest::{BackendRequest, PoolConfig, PoolPatch};

use crate::common::{ServeProcess, tagged_page, temp_dir};
use crate::peer::{free_port, memory_server, peer_token};

/// A `[zstd, remote]` pool config reaching `endpoints`.
pub fn remote_pool(name: &str, endpoints: &[String], token: &str) -> PoolConfig {
    let remote = BackendRequest {
        grants: vec!["network".into()],
        config: json!({"endpoints": endpoints, "timeout_ms": 200, "token": token}),
        ..BackendRequest::new("remote")
    };
    let mut config = PoolConfig::new(name, vec![BackendRequest::new("zstd"), remote]);
    config.shards = Some(2);
    config
}

pub(crate) fn counter(client: &Client, pool: &str, name: &str) -> u64 {
    client.pool(pool).unwrap().counters[name]
}

/// Stores, reads back, overwrites and invalidates through `pool` on `client`.
pub(crate) fn round_trips(client: &Client, pool: &str, pages: u64) {
    for offset in 0..pages {
        let r = client.put_page(pool, offset, &tagged_page(offset)).unwrap();
        assert_eq!(r.outcome, "stored", "offset {offset}: {r:?}");
    }
    for offset in (0..pages).step_by(3) {
        client.put_page(pool, offset, &tagged_page(offset + 1_000_000)).unwrap();
    }
    for offset in (1..pages).step_by(7) {
        assert!(client.remove_page(pool, offset).unwrap());
    }
    for offset in 0..pages + 5 {
        let expected = match offset {
            o if o >= pages => None,
            o if o % 7 == 1 => None,
            o if o % 3 == 0 => Some(tagged_page(o + 1_000_000)),
            o => Some(tagged_page(o)),
        };
        assert_eq!(client.get_page(pool, offset).unwrap(), expected, "offset {offset}");
    }
}

/// Expects the remote to be gone: stores refused quickly, loads failing loudly, no hang.
fn remote_is_down(client: &Client, pool: &str, stored_offset: u64) {
    let started = Instant::now();
    for offset in 10_000..10_020 {
        let op = Instant::now();
        let r = client.put_page(pool, offset, &tagged_page(offset)).unwrap();
        assert_eq!((r.outcome.as_str(), r.reason.as_deref()), ("rejected", Some("remote_unavailable")));
        assert!(op.elapsed() < Duration::from_secs(2), "a store waited {:?}", op.elapsed());
    }
    assert!(started.elapsed() < Duration::from_secs(5), "20 refused stores took {:?}", started.elapsed());
    let op = Instant::now();
    let err = client.get_page(pool, stored_offset).unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(500), Some("load_failed")), "{err}");
    assert!(op.elapsed() < Duration::from_secs(2), "a load waited {:?}", op.elapsed());
    assert!(counter(client, pool, "load_failures") >= 1);
    assert!(counter(client, pool, "remote_unavailable") >= 20);
}

/// Retries `op` until it succeeds (the store's breaker lets a store through after a while,
/// or after a load succeeded); panics after `tries`.
fn eventually(tries: usize, mut op: impl FnMut() -> bool) {
    for _ in 0..tries {
        if op() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("did not recover after {tries} tries");
}

#[test]
fn a_pool_keeps_its_pages_in_another_hosts_pool_and_survives_it_going_away() {
    let peer_port = free_port();
    let b_dir = temp_dir("remote-b");
    let b = memory_server(&b_dir, peer_port);
    // B keeps A's pages in a persistent pool, so they are still there after B restarts.
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    b.client().create_pool(&PoolConfig::new("for-a", vec![sled])).unwrap();
    let a = ServeProcess::start(&temp_dir("remote-a"), &[]);
    let client = a.client();
    let endpoint = format!("tmem://127.0.0.1:{peer_port}/for-a");
    // A peer token of B's pool (kept hashed in B's catalog: it must survive B's restart below).
    let token = peer_token(&b, "for-a");
    client.create_pool(&remote_pool("far", std::slice::from_ref(&endpoint), &token)).unwrap();
    round_trips(&client, "far", 120);
    let held = counter(&client, "far", "stored_pages");
    assert_eq!(counter(&b.client(), "for-a", "stored_pages"), held, "B holds exactly A's pages");
    assert!(counter(&b.client(), "for-a", "pool_total_size") < held * 4096 / 2, "B keeps A's compressed bytes");

    // A hot swap that sends back the config as the API shows it (the token as "<secret>", as
    // the dashboard does) keeps the token: stores through the new generation still reach B.
    let shown = client.pool("far").unwrap().backends;
    assert_eq!(shown[1].config["token"], "<secret>", "the API never shows the token");
    let backends = shown
        .iter()
        .map(|b| {
            let mut config = b.config.clone();
            if b.plugin == "remote" {
                config.insert("timeout_ms".into(), 300.into());
            }
            BackendRequest {
                plugin: b.plugin.clone(),
                version: Some(b.sha256.clone()),
                config: config.into(),
                grants: b.grants.clone(),
            }
        })
        .collect();
    let swapped = client.update_pool("far", &PoolPatch { backends: Some(backends), ..Default::default() }).unwrap();
    assert_eq!(swapped.generations.len(), 2, "the changed timeout made a new generation");
    assert_eq!(
        client.put_page("far", 4000, &tagged_page(4000)).unwrap().outcome,
        "stored",
        "the token survived the swap"
    );
    assert_eq!(client.get_page("far", 4000).unwrap(), Some(tagged_page(4000)));
    // The same "<secret>" with another endpoint is refused: the token does not follow a
    // config to a new address; it must be given again.
    let moved = shown
        .iter()
        .map(|b| {
            let mut config = b.config.clone();
            if b.plugin == "remote" {
                config.insert("endpoints".into(), serde_json::json!(["tmem://127.0.0.1:9/for-a"]));
            }
            BackendRequest { plugin: b.plugin.clone(), version: None, config: config.into(), grants: b.grants.clone() }
        })
        .collect();
    let err = client.update_pool("far", &PoolPatch { backends: Some(moved), ..Default::default() }).unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("endpoints changed"), "{err}");
    assert_eq!(client.pool("far").unwrap().generations.len(), 2, "nothing swapped");

    // A wrong token is refused at the first store, not silently.
    client.create_pool(&remote_pool("badtoken", std::slice::from_ref(&endpoint), "not-the-token")).unwrap();
    let r = client.put_page("badtoken", 1, &tagged_page(1)).unwrap();
    assert_eq!(r.reason.as_deref(), Some("remote_unavailable"));

    // B dies: stores are refused fast, loads fail loudly, nothing hangs.
    let b_token = b.token.clone();
    drop(b);
    remote_is_down(&client, "far", 2);
    // B comes back on the same address: A recovers without a restart, every page intact.
    let b = memory_server(&b_dir, peer_port);
    assert_eq!(b.token, b_token);
    eventually(200, || client.get_page("far", 2).is_ok());
    assert_eq!(client.get_page("far", 2).unwrap(), Some(tagged_page(2)));
    eventually(200, || client.put_page("far", 5000, &tagged_page(5000)).unwrap().outcome == "stored");
    assert_eq!(client.get_page("far", 5000).unwrap(), Some(tagged_page(5000)));
    // invalidate_area on A empties A's part of B.
    client.invalidate_area("far").unwrap();
    assert_eq!(counter(&b.client(), "for-a", "stored_pages"), 0);
}

#[test]
fn several_hosts_share_one_memory_server() {
    let peer_port = free_port();
    let b = memory_server(&temp_dir("remote-shared-b"), peer_port);
    for name in ["for-a1", "for-a2"] {
        b.client().create_pool(&PoolConfig::new(name, vec![BackendRequest::new("ram")])).unwrap();
    }
    let hosts: Vec<ServeProcess> =
        (0..2).map(|i| ServeProcess::start(&temp_dir(&format!("remote-a{i}")), &[])).collect();
    for (i, host) in hosts.iter().enumerate() {
        let endpoint = format!("tmem://127.0.0.1:{peer_port}/for-a{}", i + 1);
        let token = peer_token(&b, &format!("for-a{}", i + 1));
        host.client().create_pool(&remote_pool("far", &[endpoint], &token)).unwrap();
    }
    std::thread::scope(|s| {
        for host in &hosts {
            s.spawn(move || round_trips(&host.client(), "far", 60));
        }
    });
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(
            counter(&b.client(), &format!("for-a{}", i + 1), "stored_pages"),
            counter(&host.client(), "far", "stored_pages")
        );
    }
}

// ----- Redis -----

/// A `redis-server` child on a loopback port, killed when dropped.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one (no persistence); with `cluster`, as a cluster node in `dir`.
    pub fn start(dir: &Path, port: u16, cluster: bool) -> Redis {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")]);
        }
        let redis =
            Redis { child: command.spawn().expect("redis-server is installed (scripts/install-deps.sh --test)"), port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.cli(&["ping"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// Runs `redis-cli -p PORT args...` and returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn dbsize(&self) -> u64 {
        self.cli(&["dbsize"]).parse().expect("a number")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pages_live_in_redis_and_the_pool_recovers_when_redis_returns() {
    let dir = temp_dir("redis");
    let port = free_port();
    let redis = Redis::start(&dir, port, false);
    let a = ServeProcess::start(&temp_dir("redis-a"), &[]);
    let client = a.client();
    client.create_pool(&remote_pool("r", &[format!("redis://127.0.0.1:{port}/ns1")], "")).unwrap();
    round_trips(&client, "r", 120);
    assert_eq!(redis.dbsize(), counter(&client, "r", "stored_pages"), "one key per page");
    assert!(
        redis.cli(&["--scan", "--pattern", "tmem:ns1:*"]).lines().count() as u64 == redis.dbsize(),
        "keys are namespaced"
    );
    client.invalidate_area("r").unwrap();
    assert_eq!(redis.dbsize(), 0, "invalidate_area removes every key");

    client.put_page("r", 2, &tagged_page(2)).unwrap();
    drop(redis);
    remote_is_down(&client, "r", 2);
    let redis = Redis::start(&dir, port, false);
    // Redis came back empty (no persistence): the old page is gone — a loud load failure,
    // never a wrong page — and new stores work again.
    eventually(200, || client.put_page("r", 7, &tagged_page(7)).unwrap().outcome == "stored");
    assert_eq!(client.get_page("r", 7).unwrap(), Some(tagged_page(7)));
    assert_eq!(client.get_page("r", 2).unwrap_err().code(), Some("load_failed"));
    assert_eq!(redis.dbsize(), 1);
}

#[test]
fn pages_spread_over_a_redis_cluster_and_ungranted_nodes_stay_unreachable() {
    let dir = temp_dir("redis-cluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Redis> = ports.iter().map(|&p| Redis::start(&dir, p, true)).collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "redis-cli --cluster create");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok")) {
        assert!(Instant::now() < deadline, "the cluster did not become ok");
        std::thread::sleep(Duration::from_millis(100));
    }

    let a = ServeProcess::start(&temp_dir("cluster-a"), &[]);
    let client = a.client();
    client.create_pool(&remote_pool("c", &[format!("redis-cluster://{}/ns", addresses.join(","))], "")).unwrap();
    round_trips(&client, "c", 300);
    let per_node: Vec<u64> = nodes.iter().map(Redis::dbsize).collect();
    assert!(per_node.iter().all(|&n| n > 0), "pages spread over every node: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), counter(&client, "c", "stored_pages"));
    client.invalidate_area("c").unwrap();
    assert_eq!(nodes.iter().map(Redis::dbsize).sum::<u64>(), 0, "invalidate_area clears every node");

    // A pool granted only the first node: keys whose slots live elsewhere are redirected to
    // addresses the host refuses, so those stores are rejected; nothing reaches the others.
    client.create_pool(&remote_pool("one", &[format!("redis-cluster://{}/ns2", addresses[0])], "")).unwrap();
    let outcomes: Vec<String> = (0..60).map(|o| client.put_page("one", o, &tagged_page(o)).unwrap().outcome).collect();
    let stored = outcomes.iter().filter(|o| *o == "stored").count();
    assert!(stored > 0 && stored < 60, "some keys live on the granted node, most do not: {stored} of 60 stored");
    assert_eq!(nodes[0].dbsize(), stored as u64);
    assert_eq!((nodes[1].dbsize(), nodes[2].dbsize()), (0, 0), "nothing reached a node the pool was not granted");
}
