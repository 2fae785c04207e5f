//! The counters of contract.md §4, per pool, and latency histograms per operation.
//!
//! Counters are relaxed atomics bumped on the data path; readers take a [`CounterSnapshot`].
//! Names are exactly the kernel's debugfs names (frontswap and zswap) where one exists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters of one pool.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter (each one atomically, not all together).
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl CounterSnapshot {
            /// Every counter with its name, in declaration order.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// Every counter's name and its one-line documentation, in declaration order.
            pub const HELP: &'static [(&'static str, &'static str)] = &[$((stringify!($name), concat!($($doc),*)),)*];

            /// Adds `other` into `self` (for host-wide totals).
            pub fn accumulate(&mut self, other: &CounterSnapshot) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Successful loads (frontswap `loads`).
    loads,
    /// Stores that succeeded (frontswap `succ_stores`).
    succ_stores,
    /// Stores that were rejected, for any reason (frontswap `failed_stores`).
    failed_stores,
    /// Invalidations of present pages (frontswap `invalidates`).
    invalidates,
    /// Stores rejected because the pool was at its limit (zswap `pool_limit_hit`).
    pool_limit_hit,
    /// Stores rejected because the page compressed poorly (zswap `reject_compress_poor`).
    reject_compress_poor,
    /// Stores rejected because the compressor failed (zswap `reject_compress_fail`).
    reject_compress_fail,
    /// Stores rejected because no room could be allocated (zswap `reject_alloc_fail`).
    reject_alloc_fail,
    /// Stores rejected because a plugin trapped, overran its deadline or its memory cap.
    reject_plugin_fault,
    /// Stores rejected because a remote backend (a peer, Redis) could not be reached in time.
    remote_unavailable,
    /// Stores rejected because the pool was disabled.
    reject_disabled,
    /// Stores to an offset that was already present (zswap `duplicate_entry`).
    duplicate_entry,
    /// Loads whose bytes did not decode (zswap `decompress_fail`).
    decompress_fail,
    /// Loads of present pages that no backend could produce: data loss, surfaced loudly.
    load_failures,
    /// Loads whose bytes, decoded by the chain, did not match the checksum of the page as it
    /// was stored: a plugin returned wrong bytes. Refused (counted in `load_failures` too),
    /// never handed out.
    integrity_failures,
    /// Pages handed back to a frontend by shrink (zswap `written_back_pages`).
    written_back_pages,
    /// Writethrough pages the pool dropped to make room (their durable copy is elsewhere).
    reclaimed_pages,
    /// Pages held now (zswap `stored_pages`).
    stored_pages,
    /// Pages held now as a same-filled marker (zswap `same_filled_pages`).
    same_filled_pages,
    /// Pages held now uncompressed because they did not compress (zswap `stored_incompressible_pages`).
    stored_incompressible_pages,
    /// Bytes the backend really uses for the pool's pages now (zswap `pool_total_size`).
    pool_total_size,
    /// Plugin calls that trapped, overran the deadline or hit the memory cap.
    plugin_faults,
    /// Plugin instances re-created after a fault.
    instance_restarts,
    /// Canaries that failed: the pool went back to its previous chain (or, a new pool,
    /// stopped taking stores).
    canary_rollbacks,
    /// Pages the tiers' mover moved from this pool down to its lower tier.
    tier_demoted_pages,
    /// Pages a load brought back up from this pool's lower tier.
    tier_promoted_pages,
}

/// The counters that are levels (they go down as well as up); the others only grow.
pub const GAUGES: [&str; 4] = ["stored_pages", "same_filled_pages", "stored_incompressible_pages", "pool_total_size"];

/// One operation's latency distribution: log-linear buckets (4 per power of two, so any
/// reported quantile is within 19% of the truth), lock-free to record.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

const SUB_BITS: u32 = 2;
const BUCKETS: usize = (64 << SUB_BITS) as usize;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < (1 << SUB_BITS) {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    let sub = (ns >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (((exp - SUB_BITS + 1) << SUB_BITS) as u64 + sub) as usize
}

/// The largest value that falls into bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < (1 << SUB_BITS) {
        return i;
    }
    let exp = (i >> SUB_BITS) + SUB_BITS as u64 - 1;
    let sub = i & ((1 << SUB_BITS) - 1);
    let low = (1u64 << exp) + (sub << (exp - SUB_BITS as u64));
    low + (1u64 << (exp - SUB_BITS as u64)) - 1
}

impl LatencyHistogram {
    /// Records one operation.
    pub fn record(&self, elapsed: Duration) {
        let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
    /// Sum of all recorded latencies, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Number of recorded operations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0.0..=1.0) in nanoseconds: the upper edge of the bucket holding it.
    /// `None` when nothing was recorded.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        None
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram): the
    /// distribution of one interval.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().zip(&earlier.counts).map(|(now, then)| now.saturating_sub(*then)).collect(),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// Non-empty buckets as `(upper bound in ns, count)`, for exposition.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (bucket_upper(i), *n))
    }
}

/// The operations that have a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `store`.
    Store,
    /// `load`.
    Load,
    /// `invalidate_page`.
    InvalidatePage,
    /// `invalidate_area`.
    InvalidateArea,
    /// A page moved down to the lower tier (decode, store below, drop here).
    Demote,
    /// A page brought back up from the lower tier (store here, drop below).
    Promote,
}

impl Op {
    /// Every operation, in a fixed order.
    pub const ALL: [Op; 6] = [Op::Store, Op::Load, Op::InvalidatePage, Op::InvalidateArea, Op::Demote, Op::Promote];

    /// The operation's name in counters and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Op::Store => "store",
            Op::Load => "load",
            Op::InvalidatePage => "invalidate_page",
            Op::InvalidateArea => "invalidate_area",
            Op::Demote => "tier_demote",
            Op::Promote => "tier_promote",
        }
    }
}

/// A plugin fault as the statistics keep it (what the API shows as the pool's last fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// The plugin's name.
    pub plugin: String,
    /// The fault's kind (`trap`, `timeout`, …).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// Everything a pool measures.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// The counters.
    pub counters: Counters,
    latency: [LatencyHistogram; Op::ALL.len()],
    /// The most recent plugin fault.
    pub last_fault: parking_lot::Mutex<Option<FaultRecord>>,
    /// Faults by plugin name and fault kind (a rare path, so a plain lock).
    pub faults_by_plugin: parking_lot::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
}

impl PoolStats {
    /// The histogram of `op`.
    pub fn latency(&self, op: Op) -> &LatencyHistogram {
        &self.latency[op as usize]
    }

    /// Adds `by` to a counter.
    pub fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Subtracts `by` from a gauge-like counter.
    pub fn sub(counter: &AtomicU64, by: u64) {
        counter.fetch_sub(by, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX / 2]) {
            let b = bucket_of(ns);
            assert!(b >= last || ns > 100_000, "bucket order at {ns}");
            last = b;
            assert!(bucket_upper(b) >= ns, "{ns} above its bucket's upper bound {}", bucket_upper(b));
            if b > 0 {
                assert!(bucket_upper(b - 1) < ns, "{ns} belongs in an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.quantile_ns(0.5).unwrap() as f64;
        let p99 = s.quantile_ns(0.99).unwrap() as f64;
        assert!((500_000.0..=500_000.0 * 1.19).contains(&p50), "p50 {p50}");
        assert!((990_000.0..=990_000.0 * 1.19).contains(&p99), "p99 {p99}");
        assert_eq!(LatencyHistogram::default().snapshot().quantile_ns(0.5), None);
    }

    #[test]
    fn an_interval_holds_only_what_was_recorded_after_the_earlier_snapshot() {
        let h = LatencyHistogram::default();
        for _ in 0..100 {
            h.record(Duration::from_micros(1));
        }
        let earlier = h.snapshot();
        for _ in 0..10 {
            h.record(Duration::from_millis(1));
        }
        let interval = h.snapshot().since(&earlier);
        assert_eq!(interval.count(), 10);
        assert_eq!(interval.sum_ns, 10_000_000);
        let p50 = interval.quantile_ns(0.5).unwrap();
        assert!(
            (1_000_000..=1_190_000).contains(&p50),
            "the interval's median is the 1 ms ops, not the 1 µs ones: {p50}"
        );
    }

    #[test]
    fn snapshots_name_every_counter_and_accumulate() {
        let c = Counters::default();
        PoolStats::add(&c.succ_stores, 3);
        let mut total = CounterSnapshot::default();
        total.accumulate(&c.snapshot());
        total.accumulate(&c.snapshot());
        assert_eq!(total.succ_stores, 6);
        let named = c.snapshot().named();
        assert!(named.contains(&("succ_stores", 3)));
        assert!(named.iter().any(|(n, _)| *n == "reject_plugin_fault"));
    }
}
