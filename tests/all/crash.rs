//! Crash safety of persistent pools: a real `tmem serve` with a `[zstd, sled]` pool under
//! concurrent stores, overwrites and invalidates is killed with SIGKILL at random moments and
//! restarted on the same data dir, again and again; after each restart every offset is
//! checked against what the clients were told.
//!
//! - `sync`: every acknowledged store reads back bit-exact (the latest acknowledged version),
//!   every acknowledged invalidate stays absent; only an operation in flight at the kill may
//!   have gone either way.
//! - `written` (a swap pool's): the same across a SIGKILL — acknowledged changes are in the
//!   kernel's page cache, which the kill does not touch (a power loss could lose them; the
//!   guest's `power-loss` scenario cuts `sync` pools only).
//! - `periodic`: the pool is as it was at a moment no earlier than the flush window (plus
//!   slack for a loaded machine) before the kill — per offset, a state it really had then or
//!   later; never a torn page, never a version older than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tmem_api::client::Client;
use tmem_api::rest::{BackendRequest, Durability, PoolConfig};
use tmem_host::workload::Rng;

use crate::common::{ServeProcess, tagged_page, temp_dir};

const THREADS: u64 = 4;
const OFFSETS_PER_THREAD: u64 = 48;
const OFFSETS: u64 = THREADS * OFFSETS_PER_THREAD;

/// A page that names its offset and version: a stale or torn page cannot pass for another.
fn page(offset: u64, version: u64) -> Vec<u8> {
    tagged_page((offset << 32) | version)
}

/// What one offset went through, as its client saw it.
#[derive(Debug, Clone, Default)]
struct OffsetLog {
    /// `(acknowledged at, state after)`: `Some(version)` stored, `None` invalidated.
    acked: Vec<(Instant, Option<u64>)>,
    /// An operation sent but not answered when the server died: its state if it happened.
    in_flight: Option<Option<u64>>,
}

impl OffsetLog {
    /// The states this offset may be found in after a crash at `kill`, if every change
    /// acknowledged before `horizon` is durable.
    fn allowed(&self, horizon: Instant) -> Vec<Option<u64>> {
        let base = self.acked.iter().rev().find(|(t, _)| *t <= horizon).and_then(|(_, s)| *s);
        let mut allowed = vec![base];
        allowed.extend(self.acked.iter().filter(|(t, _)| *t > horizon).map(|(_, s)| *s));
        if let Some(state) = self.in_flight {
            allowed.push(state);
            allowed.push(None); // an in-flight store that was refused drops the old copy
        }
        allowed
    }
}

fn pool_config(durability: Durability) -> PoolConfig {
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    let mut config = PoolConfig::new("crash", vec![BackendRequest::new("zstd"), sled]);
    config.shards = Some(4);
    config.durability = Some(durability);
    if durability == Durability::Periodic {
        config.flush_interval_ms = Some(100);
    }
    config
}

/// Drives one client thread's offsets until `stop` or until the server is gone.
fn drive(
    client: Client,
    thread: u64,
    logs: Vec<OffsetLog>,
    next_version: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<OffsetLog>, u64) {
    let mut logs = logs;
    let mut rng = Rng::new(thread * 7919 + next_version);
    let mut version = next_version;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(OFFSETS_PER_THREAD) as usize;
        let offset = i as u64 * THREADS + thread;
        let store = rng.below(10) < 7;
        version += 1;
        let state = if store { Some(version) } else { None };
        logs[i].in_flight = Some(state);
        let answered = if store {
            client.put_page("crash", offset, &page(offset, version)).map(|r| {
                assert_eq!(r.outcome, "stored", "offset {offset}: {r:?}");
            })
        } else {
            client.remove_page("crash", offset).map(drop)
        };
        match answered {
            Ok(()) => {
                logs[i].in_flight = None;
                logs[i].acked.push((Instant::now(), state));
            }
            Err(_) => break, // the server is gone: this operation stays in flight
        }
    }
    (logs, version)
}

/// Reads every offset back and checks it against the logs; returns the logs reset to what
/// was found (the truth from now on).
fn verify(client: &Client, logs: Vec<Vec<OffsetLog>>, horizon: Instant, round: usize) -> Vec<Vec<OffsetLog>> {
    let mut present = 0;
    let mut next = Vec::new();
    for (thread, thread_logs) in logs.into_iter().enumerate() {
        let mut fresh = Vec::new();
        for (i, log) in thread_logs.into_iter().enumerate() {
            let offset = i as u64 * THREADS + thread as u64;
            let found = client
                .get_page("crash", offset)
                .unwrap_or_else(|e| panic!("round {round}: load of offset {offset}: {e}"));
            let state = match found {
                None => None,
                Some(bytes) => {
                    let version = log
                        .acked
                        .iter()
                        .filter_map(|(_, s)| *s)
                        .chain(log.in_flight.flatten())
                        .find(|v| bytes == page(offset, *v));
                    Some(version.unwrap_or_else(|| {
                        panic!(
                            "round {round}: offset {offset} holds a page that was never stored there (torn or foreign)"
                        )
                    }))
                }
            };
            let allowed = log.allowed(horizon);
            assert!(
                allowed.contains(&state),
                "round {round}: offset {offset} is {state:?}; allowed {allowed:?} (acked: {:?}, in flight: {:?})",
                log.acked.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
                log.in_flight
            );
            present += state.is_some() as u64;
            fresh.push(OffsetLog { acked: vec![(Instant::now(), state)], in_flight: None });
        }
        next.push(fresh);
    }
    for offset in OFFSETS..OFFSETS + 16 {
        assert_eq!(client.get_page("crash", offset).unwrap(), None, "round {round}: offset {offset} was never stored");
    }
    let info = client.pool("crash").unwrap();
    assert_eq!(info.counters["stored_pages"], present, "round {round}: the recovered map matches the pages");
    assert_eq!(info.counters["load_failures"], 0);
    next
}

fn crash_many_times(durability: Durability, kills: usize, window: Duration, run_for: std::ops::Range<u64>) {
    let dir = temp_dir(&format!("crash-{durability:?}"));
    let mut server = ServeProcess::start(&dir, &[]);
    server.client().create_pool(&pool_config(durability)).unwrap();
    let mut logs: Vec<Vec<OffsetLog>> =
        (0..THREADS).map(|_| vec![OffsetLog::default(); OFFSETS_PER_THREAD as usize]).collect();
    let mut versions = vec![0u64; THREADS as usize];
    let mut rng = Rng::new(durability as u64 + 1);
    let mut total_ops = 0;
    for round in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = logs
            .drain(..)
            .enumerate()
            .map(|(t, thread_logs)| {
                let (client, stop, version) = (server.client(), stop.clone(), versions[t]);
                std::thread::spawn(move || drive(client, t as u64, thread_logs, version, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(run_for.start + rng.below(run_for.end - run_for.start)));
        let kill = Instant::now();
        drop(server); // SIGKILL, mid-traffic
        stop.store(true, Ordering::Relaxed);
        for (t, worker) in workers.into_iter().enumerate() {
            let (thread_logs, version) = worker.join().expect("a client thread failed");
            total_ops += thread_logs.iter().map(|l| l.acked.len()).sum::<usize>();
            versions[t] = version;
            logs.push(thread_logs);
        }
        server = ServeProcess::start(&dir, &[]);
        logs = verify(&server.client(), logs, kill - window, round);
    }
    assert!(total_ops > kills * 50, "the clients did real work: {total_ops} acknowledged operations");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sync_pools_lose_nothing_acknowledged_across_repeated_sigkills() {
    // Sync: everything acknowledged before the kill is on disk.
    crash_many_times(Durability::Sync, 6, Duration::ZERO, 300..1000);
}

#[test]
fn written_pools_lose_nothing_acknowledged_across_repeated_sigkills() {
    crash_many_times(Durability::Written, 4, Duration::ZERO, 300..1000);
}

#[test]
fn periodic_pools_lose_at_most_the_window_and_never_tear_or_go_stale() {
    // 100 ms window; the slack covers one flush and scheduling on a loaded 2-core machine.
    // Each round runs well past the window, so a pool that stopped flushing would show.
    crash_many_times(Durability::Periodic, 4, Duration::from_millis(100 + 900), 2000..3000);
}
