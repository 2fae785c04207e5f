//! Against a real `redis-server` and a real three-node Redis Cluster, when installed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tmem_sdk::{GetError, Reject, Store};

use super::{load, page, remote};
use crate::breaker::SKIPPED_STORES;
use crate::slot::key_slot;

/// Whether `redis-server` and `redis-cli` are on PATH; prints the skip otherwise.
fn have_redis() -> bool {
    let found = |tool: &str| Command::new("which").arg(tool).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    let ok = found("redis-server") && found("redis-cli");
    if !ok {
        println!("skipped: redis-server not installed");
    }
    ok
}

/// A port that is free, and (for a cluster node) whose bus port, `port + 10000`, is free too.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = std::process::id().wrapping_mul(7919) ^ now.subsec_nanos();
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20000 + (seed.wrapping_add(n.wrapping_mul(7577)) % 25000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

/// One `redis-server` in its own temporary directory; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tmem-remote-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "-::1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT ARGS...`, its output trimmed.
    fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// The keys of `namespace` on this server (`SCAN`, not redirected in a cluster).
    fn keys(&self, namespace: &str) -> usize {
        self.cli(&["--scan", "--pattern", &format!("tmem:{namespace}:*")]).lines().filter(|l| !l.is_empty()).count()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pages_round_trip_through_redis_and_clear_keeps_other_namespaces() {
    if !have_redis() {
        return;
    }
    let server = RedisServer::start(&[]);
    let mut store = remote(&[format!("redis://{}/swap-a", server.addr())], "");
    let mut other = remote(&[format!("redis://{}/swap-b", server.addr())], "");
    for offset in 0..300u64 {
        store.put(offset, &page(offset, 50 + offset as usize * 13)).unwrap();
    }
    other.put(1, b"other").unwrap();
    assert_eq!(server.keys("swap-a"), 300);
    for offset in 0..300u64 {
        assert_eq!(load(&mut store, offset).unwrap(), page(offset, 50 + offset as usize * 13));
    }
    assert_eq!(server.cli(&["get", "tmem:swap-b:1"]), "other", "the key layout is tmem:NAMESPACE:OFFSET");
    for offset in (0..300u64).step_by(2) {
        store.delete(offset);
    }
    assert_eq!(load(&mut store, 0), Err(GetError::NotFound));
    assert_eq!(load(&mut store, 1).unwrap(), page(1, 63));
    assert_eq!(server.keys("swap-a"), 150);

    // A page larger than the read buffer, read into a larger output buffer.
    let big = page(9, 70_000);
    store.put(9, &big).unwrap();
    let mut out = vec![0u8; 80_000];
    assert_eq!(store.get(9, &mut out), Ok(70_000));
    assert_eq!(out[..70_000], big[..]);
    let mut small = vec![0u8; 8192];
    assert_eq!(store.get(9, &mut small), Err(GetError::Unavailable), "more than the buffer is never a page");
    assert_eq!(load(&mut store, 1).unwrap(), page(1, 63), "and the connection stays in step");

    store.clear();
    assert_eq!(server.keys("swap-a"), 0);
    assert_eq!(server.cli(&["dbsize"]), "1", "only the other namespace's key is left");
    assert_eq!(load(&mut other, 1).unwrap(), b"other");
}

#[test]
fn redis_auth_uses_the_token() {
    if !have_redis() {
        return;
    }
    let server = RedisServer::start(&["--requirepass", "s3cret"]);
    let url = format!("redis://{}/ns", server.addr());
    let mut store = remote(std::slice::from_ref(&url), "s3cret");
    store.put(1, b"one").unwrap();
    assert_eq!(load(&mut store, 1).unwrap(), b"one");
    let mut wrong = remote(std::slice::from_ref(&url), "nope");
    assert_eq!(wrong.put(2, b"two"), Err(Reject::Unavailable));
    assert_eq!(load(&mut wrong, 1), Err(GetError::Unavailable));
    let mut none = remote(&[url], "");
    assert_eq!(load(&mut none, 1), Err(GetError::Unavailable), "NOAUTH");
}

#[test]
fn redis_out_of_memory_is_alloc_fail_not_a_failure() {
    if !have_redis() {
        return;
    }
    let server = RedisServer::start(&["--maxmemory-policy", "noeviction"]);
    let used: u64 = server
        .cli(&["info", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    assert_eq!(server.cli(&["config", "set", "maxmemory", &(used + 256 * 1024).to_string()]), "OK");
    let mut store = remote(&[format!("redis://{}/ns", server.addr())], "");
    let mut full = 0;
    let refused = loop {
        assert!(full < 1000, "redis fills up");
        match store.put(full, &page(full, 4096)) {
            Ok(()) => full += 1,
            Err(reject) => break reject,
        }
    };
    assert_eq!(refused, Reject::AllocFail);
    assert_eq!(store.put(full, &page(full, 4096)), Err(Reject::AllocFail), "no breaker: it asked again");
    // Not an endpoint failure: once there is room, the very next store is taken.
    for o in 0..full {
        store.delete(o);
    }
    store.put(full, &page(full, 4096)).unwrap();
}

#[test]
fn a_dead_redis_makes_stores_fail_fast() {
    if !have_redis() {
        return;
    }
    let server = RedisServer::start(&[]);
    let port = server.port;
    let mut store = remote(&[format!("redis://{}/ns", server.addr())], "");
    store.put(1, b"one").unwrap();
    drop(server);
    assert_eq!(store.put(2, b"two"), Err(Reject::Unavailable));
    let server = RedisServer::start_on(port, &[]);
    let connections = || -> u64 {
        let stats = server.cli(&["info", "stats"]);
        stats.lines().find_map(|l| l.strip_prefix("total_connections_received:")).unwrap().trim().parse().unwrap()
    };
    let before = connections();
    for i in 0..SKIPPED_STORES {
        assert_eq!(store.put(10 + i as u64, b"x"), Err(Reject::Unavailable));
    }
    assert_eq!(connections(), before + 1, "only redis-cli connected");
    assert_eq!(server.cli(&["dbsize"]), "0");
    store.put(3, b"three").unwrap();
    assert_eq!(load(&mut store, 3).unwrap(), b"three");
}

/// Three masters, no replicas; slots spread by `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                RedisServer::start_on(
                    port,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "5000"],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out =
            create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            while !(n.cli(&["cluster", "info"]).contains("cluster_state:ok")
                && n.cli(&["cluster", "slots"]).lines().filter(|l| l.starts_with("127.0.0.1")).count() == 3)
            {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cluster { nodes }
    }

    fn url(&self, namespace: &str) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!("redis-cluster://{}/{namespace}", addrs.join(","))
    }

    fn node_of(&self, addr: &str) -> &RedisServer {
        self.nodes.iter().find(|n| n.addr() == addr).expect("a listed node")
    }
}

fn slot_of(namespace: &str, offset: u64) -> u16 {
    key_slot(format!("tmem:{namespace}:{offset}").as_bytes())
}

#[test]
fn redis_cluster() {
    if !have_redis() {
        return;
    }
    let cluster = Cluster::start();
    let ns = "swap";
    let mut store = remote(&[cluster.url(ns)], "");
    let mut other = remote(&[cluster.url("other")], "");

    // Pages spread over every master.
    for offset in 0..300u64 {
        store.put(offset, &page(offset, 1000)).unwrap();
    }
    other.put(1, b"other").unwrap();
    let per_node: Vec<usize> = cluster.nodes.iter().map(|n| n.keys(ns)).collect();
    assert_eq!(per_node.iter().sum::<usize>(), 300);
    assert!(per_node.iter().all(|&k| k > 50), "keys spread over the masters: {per_node:?}");
    for offset in 0..300u64 {
        assert_eq!(load(&mut store, offset).unwrap(), page(offset, 1000));
        let owner = store.test_redis().test_owner(slot_of(ns, offset)).unwrap().to_string();
        assert_eq!(
            cluster.node_of(&owner).cli(&["exists", &format!("tmem:{ns}:{offset}")]),
            "1",
            "the map names the owner"
        );
    }
    for offset in (0..300u64).step_by(3) {
        store.delete(offset);
    }
    assert_eq!(load(&mut store, 0), Err(GetError::NotFound));
    assert_eq!(cluster.nodes.iter().map(|n| n.keys(ns)).sum::<usize>(), 200);

    // A stale map (every slot on the first node): MOVED redirects fix it as they come.
    store.test_redis().test_point_all_slots_at(0);
    for offset in 0..300u64 {
        let expected = if offset % 3 == 0 { Err(GetError::NotFound) } else { Ok(page(offset, 1000)) };
        assert_eq!(load(&mut store, offset), expected, "offset {offset}");
    }
    let moved = (0..300u64)
        .filter(|&o| store.test_redis().test_owner(slot_of(ns, o)) != Some(&cluster.nodes[0].addr()))
        .count();
    assert!(moved > 100, "MOVED updated the map ({moved} keys now elsewhere)");
    store.test_redis().test_point_all_slots_at(1);
    store.put(0, &page(0, 1000)).unwrap();
    assert_eq!(load(&mut store, 0).unwrap(), page(0, 1000));

    // Listed under another spelling (the cluster announces 127.0.0.1): matched by node id.
    let by_name: Vec<String> = cluster.nodes.iter().map(|n| format!("localhost:{}", n.port)).collect();
    let mut named = remote(&[format!("redis-cluster://{}/{ns}", by_name.join(","))], "");
    for offset in 1..30u64 {
        let expected = if offset % 3 == 0 { Err(GetError::NotFound) } else { Ok(page(offset, 1000)) };
        assert_eq!(load(&mut named, offset), expected, "offset {offset} through localhost");
    }

    // Only one node listed: the others' slots are unavailable (the host would deny them), the
    // listed node's are fine.
    let mut one = remote(&[format!("redis-cluster://{}/{ns}", cluster.nodes[0].addr())], "");
    let _ = load(&mut one, 1); // loads the slot map
    let mine = (1..300u64).find(|&o| o % 3 != 0 && one.test_redis().test_owner(slot_of(ns, o)).is_some());
    let theirs = (1..300u64).find(|&o| o % 3 != 0 && one.test_redis().test_owner(slot_of(ns, o)).is_none()).unwrap();
    assert_eq!(load(&mut one, theirs), Err(GetError::Unavailable));
    assert_eq!(load(&mut one, mine.unwrap()).unwrap(), page(mine.unwrap(), 1000));

    // Clear: every master, this namespace only.
    store.clear();
    assert_eq!(cluster.nodes.iter().map(|n| n.keys(ns)).sum::<usize>(), 0);
    assert_eq!(cluster.nodes.iter().map(|n| n.keys("other")).sum::<usize>(), 1);
    assert_eq!(load(&mut other, 1).unwrap(), b"other");

    // A slot migrating from A to B: new keys are ASKed over to B; once B owns the slot,
    // A answers MOVED.
    let offset = 5000u64;
    let slot = slot_of(ns, offset);
    let a = cluster.node_of(store.test_redis().test_owner(slot).unwrap());
    let b = cluster.nodes.iter().find(|n| n.port != a.port).unwrap();
    let (a_id, b_id) = (a.cli(&["cluster", "myid"]), b.cli(&["cluster", "myid"]));
    assert_eq!(b.cli(&["cluster", "setslot", &slot.to_string(), "importing", &a_id]), "OK");
    assert_eq!(a.cli(&["cluster", "setslot", &slot.to_string(), "migrating", &b_id]), "OK");
    store.put(offset, &page(offset, 1000)).unwrap();
    assert_eq!((a.keys(ns), b.keys(ns)), (0, 1), "ASK sent the new key to the importing node");
    assert_eq!(load(&mut store, offset).unwrap(), page(offset, 1000));
    assert_eq!(store.test_redis().test_owner(slot), Some(a.addr().as_str()), "ASK does not change the map");
    for n in &cluster.nodes {
        assert_eq!(n.cli(&["cluster", "setslot", &slot.to_string(), "node", &b_id]), "OK");
    }
    assert_eq!(load(&mut store, offset).unwrap(), page(offset, 1000));
    assert_eq!(store.test_redis().test_owner(slot), Some(b.addr().as_str()), "MOVED updated the map");
    store.delete(offset);
    assert_eq!(b.keys(ns), 0);
}
