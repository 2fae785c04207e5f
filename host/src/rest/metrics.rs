//! `GET /metrics`: every pool's counters, latency histograms, plugin faults and memory, and the
//! I/O threads' allocations and page faults, in the Prometheus text format (version 0.0.4).
//! Labels are bounded: `pool`, `plugin`, `op`, `kind`, `role` take only as many values as
//! there are pools, chain links, operations, fault kinds and I/O roles.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::host::Host;
use crate::memory::alloc_count::{self, IoCounters, Role};
use crate::stats::{CounterSnapshot, GAUGES, Op};

/// Latency bucket bounds: powers of four from 1 µs (2^10 ns) to about 1 s (2^30 ns). The
/// host's histogram buckets are aligned to powers of two, so these counts are exact.
const LATENCY_BOUNDS_LOG2_NS: [u32; 11] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

/// Escapes a label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the exposition text.
pub fn render(host: &Host) -> String {
    let pools = host.pools();
    let mut out = String::with_capacity(4096 + pools.len() * 8192);
    let w = &mut out;
    let _ = writeln!(w, "# HELP tmem_build_info The running tmem version.\n# TYPE tmem_build_info gauge");
    let _ = writeln!(w, "tmem_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(w, "# HELP tmem_pools Pools of this host.\n# TYPE tmem_pools gauge\ntmem_pools {}", pools.len());
    let versions: usize = host.plugins().iter().map(|(_, v)| v.len()).sum();
    let _ = writeln!(
        w,
        "# HELP tmem_plugin_versions Registered plugin versions.\n# TYPE tmem_plugin_versions gauge\ntmem_plugin_versions {versions}"
    );

    let memory = super::memory::memory_info(host);
    if let Some(limit) = memory.limit_bytes {
        let _ = writeln!(
            w,
            "# HELP tmem_memory_limit_bytes The operator's memory budget for pages (--memory-limit; the governor may hold stores to less: tmem_governor_effective_limit_bytes).\n# TYPE tmem_memory_limit_bytes gauge\ntmem_memory_limit_bytes {limit}"
        );
    }
    for (metric, help, value) in [
        (
            "tmem_memory_used_bytes",
            "Bytes charged to the memory budget (the arena's committed memory, database caches, plugin instances' memories).",
            memory.used_bytes,
        ),
        (
            "tmem_memory_headroom_bytes",
            "Of the used bytes, memory committed ahead for the next stores.",
            memory.headroom_bytes,
        ),
        ("tmem_memory_stored_bytes", "Bytes of the records stored in the arena.", memory.stored_bytes),
        (
            "tmem_memory_slot_bytes",
            "Bytes of the arena's slots holding them (stored plus class rounding).",
            memory.slot_bytes,
        ),
        ("tmem_memory_objects", "Records in the arena.", memory.objects),
        ("tmem_memory_index_bytes", "Bytes of the pools' page indexes (charged to the budget).", memory.index_bytes),
        (
            "tmem_memory_plugin_bytes",
            "Of the used bytes, the linear memories of the pools' plugin instances.",
            memory.plugin_bytes,
        ),
        (
            "tmem_memory_fragmentation_bytes",
            "Bytes the arena's runs hold beyond their objects (free slots of partly used runs).",
            memory.fragmentation_bytes,
        ),
        (
            "tmem_instance_slots_limit",
            "Plugin instance slots pools may reserve (--max-instances, less the host's own).",
            host.engine().slots().limit() as u64,
        ),
        (
            "tmem_instance_slots_reserved",
            "Plugin instance slots the pools hold (one per shard and plugin of each chain they run).",
            host.engine().slots().reserved() as u64,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {value}");
    }
    governor_metrics(w, &memory);
    let _ = writeln!(
        w,
        "# HELP tmem_memory_refused_total Stores refused for want of budget or committed memory.\n# TYPE tmem_memory_refused_total counter\ntmem_memory_refused_total {}",
        memory.refused
    );

    let snapshots: Vec<(String, Vec<(&str, u64)>)> =
        pools.iter().map(|p| (label(p.name()), p.counters().named())).collect();
    for (i, (name, help)) in CounterSnapshot::HELP.iter().enumerate() {
        let gauge = GAUGES.contains(name);
        let metric = if gauge { format!("tmem_pool_{name}") } else { format!("tmem_pool_{name}_total") };
        let metric = if *name == "pool_total_size" { "tmem_pool_total_size_bytes".to_string() } else { metric };
        let _ = writeln!(w, "# HELP {metric} {}", help.trim());
        let _ = writeln!(w, "# TYPE {metric} {}", if gauge { "gauge" } else { "counter" });
        for (pool, counters) in &snapshots {
            let _ = writeln!(w, "{metric}{{pool=\"{pool}\"}} {}", counters[i].1);
        }
    }

    let _ = writeln!(w, "# HELP tmem_pool_plugin_memory_bytes Linear memory of the pool's live plugin instances.");
    let _ = writeln!(w, "# TYPE tmem_pool_plugin_memory_bytes gauge");
    for pool in &pools {
        let _ = writeln!(
            w,
            "tmem_pool_plugin_memory_bytes{{pool=\"{}\"}} {}",
            label(pool.name()),
            pool.plugin_memory_bytes()
        );
    }

    let _ = writeln!(
        w,
        "# HELP tmem_pool_tier_idle_pages Pages of a tiered pool idle less than `le` seconds, as of the tiers' mover's last pass (cumulative).\n# TYPE tmem_pool_tier_idle_pages gauge"
    );
    for pool in &pools {
        let Some(tier) = pool.tier() else { continue };
        for (bound, pages) in tier.idle_age() {
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.as_secs_f64().to_string());
            let _ = writeln!(w, "tmem_pool_tier_idle_pages{{pool=\"{}\",le=\"{le}\"}} {pages}", label(pool.name()));
        }
    }
    let _ =
        writeln!(w, "# HELP tmem_pool_tier_info A tiered pool and its lower tier.\n# TYPE tmem_pool_tier_info gauge");
    for pool in &pools {
        if let Some(tier) = pool.tier() {
            let _ = writeln!(
                w,
                "tmem_pool_tier_info{{pool=\"{}\",lower=\"{}\",idle_seconds=\"{}\"}} 1",
                label(pool.name()),
                label(tier.lower.name()),
                tier.spec.idle.as_secs()
            );
        }
    }

    let _ = writeln!(w, "# HELP tmem_pool_plugin_info The plugins of each pool's current chain (position 0 first).");
    let _ = writeln!(w, "# TYPE tmem_pool_plugin_info gauge");
    for pool in &pools {
        for (position, link) in pool.chain().links().iter().enumerate() {
            let _ = writeln!(
                w,
                "tmem_pool_plugin_info{{pool=\"{}\",plugin=\"{}\",version=\"{}\",sha256=\"{}\",position=\"{position}\"}} 1",
                label(pool.name()),
                label(&link.plugin),
                label(&link.module.manifest().version),
                link.module.sha256()
            );
        }
    }

    let _ = writeln!(
        w,
        "# HELP tmem_plugin_faults_total Plugin faults by pool, plugin and kind (deadline, memory_cap, trap, ...)."
    );
    let _ = writeln!(w, "# TYPE tmem_plugin_faults_total counter");
    for pool in &pools {
        for (plugin, kind, n) in pool.faults_by_plugin() {
            let _ = writeln!(
                w,
                "tmem_plugin_faults_total{{pool=\"{}\",plugin=\"{}\",kind=\"{kind}\"}} {n}",
                label(pool.name()),
                label(&plugin)
            );
        }
    }

    let _ = writeln!(w, "# HELP tmem_pool_op_duration_seconds Latency of pool operations inside the host.");
    let _ = writeln!(w, "# TYPE tmem_pool_op_duration_seconds histogram");
    for pool in &pools {
        let name = label(pool.name());
        for op in Op::ALL {
            let h = pool.latency(op);
            let buckets: Vec<(u64, u64)> = h.buckets().collect();
            for log2 in LATENCY_BOUNDS_LOG2_NS {
                let bound = 1u64 << log2;
                let below: u64 = buckets.iter().filter(|(upper, _)| *upper < bound).map(|(_, n)| n).sum();
                let _ = writeln!(
                    w,
                    "tmem_pool_op_duration_seconds_bucket{{pool=\"{name}\",op=\"{}\",le=\"{}\"}} {below}",
                    op.name(),
                    bound as f64 / 1e9
                );
            }
            let _ = writeln!(
                w,
                "tmem_pool_op_duration_seconds_bucket{{pool=\"{name}\",op=\"{}\",le=\"+Inf\"}} {}",
                op.name(),
                h.count()
            );
            let _ = writeln!(
                w,
                "tmem_pool_op_duration_seconds_sum{{pool=\"{name}\",op=\"{}\"}} {}",
                op.name(),
                h.sum_ns as f64 / 1e9
            );
            let _ = writeln!(
                w,
                "tmem_pool_op_duration_seconds_count{{pool=\"{name}\",op=\"{}\"}} {}",
                op.name(),
                h.count()
            );
        }
    }
    io_threads(w);
    out
}

/// The memory governor: its target against the operator's and the effective limit, the
/// machine's readings, its decisions.
fn governor_metrics(w: &mut String, memory: &tmem_api::rest::MemoryInfo) {
    let gauge = |w: &mut String, metric: &str, help: &str, value: String| {
        let _ = writeln!(w, "# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {value}");
    };
    let Some(governor) = &memory.governor else { return };
    gauge(
        w,
        "tmem_governor_enabled",
        "Whether the memory governor sets a target (1) or not (0).",
        (governor.enabled as u8).to_string(),
    );
    if let Some(target) = governor.target_bytes {
        gauge(w, "tmem_governor_target_bytes", "The memory governor's target for the budget.", target.to_string());
    }
    if let Some(limit) = memory.effective_limit_bytes {
        gauge(
            w,
            "tmem_governor_effective_limit_bytes",
            "The limit stores are held to: the smaller of the operator's limit and the governor's target.",
            limit.to_string(),
        );
    }
    gauge(
        w,
        "tmem_governor_reserve_bytes",
        "MemAvailable the governor keeps for the rest of the machine.",
        governor.reserve_bytes.to_string(),
    );
    if let Some(available) = governor.mem_available_bytes {
        gauge(
            w,
            "tmem_memory_available_bytes",
            "The machine's MemAvailable, as the governor last read it.",
            available.to_string(),
        );
    }
    if let Some(some) = governor.psi_some_avg10 {
        gauge(
            w,
            "tmem_memory_psi_some_avg10",
            "Memory pressure (PSI some avg10, percent), as the governor last read it.",
            some.to_string(),
        );
    }
    if let Some(full) = governor.psi_full_avg10 {
        gauge(
            w,
            "tmem_memory_psi_full_avg10",
            "Memory pressure (PSI full avg10, percent), as the governor last read it.",
            full.to_string(),
        );
    }
    let _ = writeln!(
        w,
        "# HELP tmem_governor_decisions_total The memory governor's target changes and the pool shrinks it asked for.\n# TYPE tmem_governor_decisions_total counter"
    );
    for (decision, n) in [("lower", governor.lowers), ("raise", governor.raises), ("shrink", governor.shrinks)] {
        let _ = writeln!(w, "tmem_governor_decisions_total{{decision=\"{decision}\"}} {n}");
    }
    let _ = writeln!(
        w,
        "# HELP tmem_governor_shrunk_pages_total Pages the governor's shrinks took out of pools.\n# TYPE tmem_governor_shrunk_pages_total counter\ntmem_governor_shrunk_pages_total {}",
        governor.shrunk_pages
    );
    let _ = writeln!(
        w,
        "# HELP tmem_governor_demoted_pages_total Pages tiered pools moved down because usage exceeded the governor's target.\n# TYPE tmem_governor_demoted_pages_total counter\ntmem_governor_demoted_pages_total {}",
        governor.demoted_pages
    );
}

/// The I/O threads by role (`memory::alloc_count`): what they allocated, their page faults and
/// the operations they served, so allocations per op is one division.
fn io_threads(w: &mut String) {
    let _ = writeln!(
        w,
        "# HELP tmem_io_thread_counting 1 if this process counts heap allocations (the tmem binary does); with 0 the allocation counters stay 0.\n# TYPE tmem_io_thread_counting gauge\ntmem_io_thread_counting {}",
        u8::from(alloc_count::counting())
    );
    let roles: Vec<(Role, IoCounters)> = Role::ALL.iter().map(|&role| (role, role.counters())).collect();
    for (metric, kind, help, value) in IO_SERIES {
        let _ = writeln!(w, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (role, counters) in &roles {
            let _ = writeln!(w, "{metric}{{role=\"{}\"}} {}", role.name(), value(counters));
        }
    }
}

/// One series of [`io_threads`]: name, type, help, and its value for a role.
type IoSeries = (&'static str, &'static str, &'static str, fn(&IoCounters) -> u64);

const IO_SERIES: [IoSeries; 8] = [
    (
        "tmem_io_threads",
        "gauge",
        "I/O threads (NBD connections, ublk queues) or socket connection tasks live now.",
        |c| c.live,
    ),
    (
        "tmem_io_thread_ops_total",
        "counter",
        "Operations served by the I/O threads: NBD and ublk requests, frontend-socket batch ops.",
        |c| c.ops,
    ),
    (
        "tmem_io_thread_allocations_total",
        "counter",
        "Heap allocations (alloc, alloc_zeroed) made by the I/O threads.",
        |c| c.alloc.allocations,
    ),
    ("tmem_io_thread_reallocations_total", "counter", "Heap reallocations made by the I/O threads.", |c| {
        c.alloc.reallocations
    }),
    ("tmem_io_thread_deallocations_total", "counter", "Heap deallocations made by the I/O threads.", |c| {
        c.alloc.deallocations
    }),
    (
        "tmem_io_thread_alloc_bytes_total",
        "counter",
        "Bytes asked for by the I/O threads' allocations and reallocations.",
        |c| c.alloc.alloc_bytes,
    ),
    ("tmem_io_thread_minor_faults_total", "counter", "Minor page faults taken by the I/O threads.", |c| c.minor_faults),
    ("tmem_io_thread_major_faults_total", "counter", "Major page faults taken by the I/O threads.", |c| c.major_faults),
];

/// The handler (open like `/healthz`: it carries no page contents).
pub async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || render(&host)).await.unwrap_or_default();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
