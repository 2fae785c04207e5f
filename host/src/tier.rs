//! Tiered pools: a pool (the **upper** tier) may own another pool of the same page size (its
//! **lower** tier) and move its idle pages there, through the lower pool's chain — e.g. from
//! `[lz4, ram]` to `[zstd(level 9), ram]` or to `[zstd, sled]`.
//!
//! # The pair
//!
//! The two pools share one offset space, and only the upper pool writes into the lower one:
//! frontends, the page API and peers are refused on an owned pool ([`TierError::Owned`], from
//! [`Host::frontend_pool`](crate::Host::frontend_pool)). Every operation of the upper pool
//! ([`Pool`]) sees both tiers: a load that misses the upper map is served from the lower one
//! (and, with [`Promote::OnLoad`], stored up again); a store, invalidate or invalidate_area
//! drops the lower copy too; an exclusive load removes it from the lower pool.
//!
//! # Ages
//!
//! Every page's index entry has a reference bit and a 4-bit age
//! ([`PageEntry::age`](crate::page_index::PageEntry::age)): a use sets the bit (a word
//! written in place, no allocation); each mover pass ages the pages of a pool by the
//! [`Tier::unit`]s elapsed since its last pass (an eighth of `idle_seconds`), or resets a
//! referenced page to 0 — a CLOCK. A page is demoted once its age reaches
//! [`IDLE_UNITS`]: it has not been used for at least `idle_seconds` (and at most one pass
//! more).
//!
//! **Budget pressure**: while the host's memory budget is at least `pressure_percent` full,
//! each pass also moves down the oldest younger pages (the oldest age present below
//! [`IDLE_UNITS`], one age per pass — the coldest first), never a page used since the last
//! pass; and the clock runs at least one unit a pass, so a long `idle_seconds` cannot leave
//! every page at age 0 while the budget is short.
//! The budget's limit here is the effective one, so the memory governor's target drives this
//! too ([`crate::memory::governor`]: a target below what is held puts every tiered pool under
//! pressure, and the governor runs one pass as under pressure before it lowers the target).
//!
//! # The mover
//!
//! [`Pool::run_tier_pass`] is one pass over a pool; the host's mover thread runs one over
//! every tiered pool each [`MOVER_TICK`] (tests run them by hand: `HostConfig::manual_tier_passes`).
//! A page is decoded through the upper chain under its shard's lock, stored through the lower
//! pool's chain **without** it (a lower tier on disk may wait on memory, memory on swap-out,
//! and swap-out on the I/O path that needs this very lock: with a page cache to fill, a
//! lower-tier store under the lock deadlocked a guest swapping under global pressure), then
//! dropped from the upper pool under the lock if its entry is unchanged — else the copy below
//! is dropped. A reader sees the page up until then; one that misses it up (it was dropped
//! meanwhile) does not look below while it is moving. If the lower pool refuses the page, it
//! stays up. The mover thread is an I/O flusher.
//!
//! **Lock order**: the upper pool's tiering lock (`Pool::lock_tiering`: held by a pass, by
//! `invalidate_area` and by a change of the pool's tier), then the tier's mover state, then an
//! upper shard, then the lower pool's shards (and its own tiering lock, for `invalidate_area`)
//! — upper before lower, always (the mover's lower store holds no upper shard); pairs have no
//! cycles ([`TierError::Cycle`]), so this order is total.
//!
//! **Crash safety**: a persistent upper pool needs a persistent lower pool
//! ([`TierError::LowerNotPersistent`]); a page is durable in the lower pool (a `sync` lower
//! pool's store returns once it is on disk; a `periodic` one is flushed) before it is dropped
//! from a persistent upper pool, and a promoted page is durable up before it is dropped down.
//! A crash in between leaves the page in both databases; when the pair is restored, the upper
//! copy wins and the lower one is dropped, so a restart finds each page in exactly one place.
//! An in-memory upper pool restarts empty, and so does its lower tier (its copies of pages
//! the frontend no longer has are dropped when the pair is restored).
//!
//! # Changing a tier at run time
//!
//! `PATCH /api/v1/pools/NAME` with `"tier"` ([`Host::update_pool`](crate::Host::update_pool))
//! adds a tier (the lower pool checked as at creation), changes its settings (a new [`Tier`]
//! over the same lower pool: pages keep their ages, counted in the new units), moves it to
//! another lower pool while no page is below ([`TierError::PagesBelow`]), or removes it. A
//! removal first brings every page below back up (`Pool::promote_all`, each page as a
//! promotion does it, durable up before it is dropped below), bounded by what the upper pool
//! takes: if a page cannot come up, the tier stays and the refusal
//! ([`TierError::StillBelow`]) says how many pages are still below (those that came up stay
//! up). Then the lower pool is an ordinary pool again. A change holds the pool's tiering lock
//! (no pass, no `invalidate_area` meanwhile), is recorded in the catalog before it is live,
//! and takes effect under every shard's lock at once (`Pool::replace_tier`): an operation
//! sees the old tier or the new one for its whole course, never both.
//!
//! # Not yet
//!
//! `curr_pages`, `stored_pages` and shrink count a pool's own pages only (the pages below are
//! the lower pool's; [`Pool::pages_with_tiers`] counts both). Records (a peer's pages, already
//! encoded, shorter than a page) are not moved down. A pass ages a shard under its lock in one
//! go, so a store or load in that shard waits for a walk of its index (unmeasured). A tier's
//! removal holds the pool's mover (and the host's control-plane lock) while it brings every
//! page below up: about as long as loading them all once, unbounded in time for a big tier.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::page_index::MAX_AGE;
use crate::pool::Pool;

/// A page is demoted once it has been idle this many of its tier's units.
pub const IDLE_UNITS: u8 = 8;
/// How often the host's mover passes over every tiered pool.
pub const MOVER_TICK: Duration = Duration::from_secs(1);
/// Most pages one pass demotes per shard (the rest wait for the next pass): bounds the
/// mover's buffer and the time a pass spends on one pool.
pub const MAX_DEMOTIONS_PER_SHARD: usize = 4096;
/// The idle-age histogram's bounds, in units (then one more bucket: every page).
pub const AGE_BOUNDS: [u8; 4] = [2, 4, 8, 12];

/// Whether a load through the upper pool brings a demoted page back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Promote {
    /// Stored up again (if the upper pool takes it), then dropped from the lower pool.
    #[default]
    OnLoad,
    /// Served from the lower pool, where it stays.
    Never,
}

/// A lower tier as a new pool asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSpec {
    /// The lower pool's name.
    pub lower: String,
    /// How long a page stays unused before it moves down.
    pub idle: Duration,
    /// The promotion policy.
    pub promote: Promote,
    /// When the host's memory budget is at least this full (percent), the mover also moves
    /// younger pages down, the coldest first.
    pub pressure_percent: u8,
}

/// Why a lower tier was refused (or an owned pool was used directly).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    /// `idle_seconds` out of range.
    #[error("tier idle_seconds {0} must be a whole number from {min} to {max}", min = tmem_api::rest::MIN_IDLE_SECONDS, max = tmem_api::rest::MAX_IDLE_SECONDS)]
    BadIdle(u64),
    /// `pressure_percent` out of range.
    #[error("tier pressure_percent {0} must be from 1 to 100")]
    BadPressure(u8),
    /// A pool cannot be its own lower tier.
    #[error("pool '{0}' cannot be its own lower tier")]
    ItsOwnLower(String),
    /// The lower pool does not exist.
    #[error("the lower tier '{0}' is not a pool; create it first")]
    LowerNotFound(String),
    /// The two pools' page sizes differ.
    #[error("the lower tier '{lower}' has {lower_size}-byte pages, but this pool has {upper_size}-byte pages")]
    PageSize {
        /// The lower pool.
        lower: String,
        /// Its page size.
        lower_size: u32,
        /// The upper pool's page size.
        upper_size: u32,
    },
    /// The lower pool is already some pool's lower tier.
    #[error("pool '{lower}' is already the lower tier of pool '{upper}'")]
    AlreadyOwned {
        /// The lower pool.
        lower: String,
        /// Its owner.
        upper: String,
    },
    /// The lower pool has frontends, which would write into the pair's offset space.
    #[error("pool '{0}' has connected frontends; a lower tier is written only by its upper pool")]
    LowerHasFrontends(String),
    /// The lower pool holds pages, which would appear as the upper pool's.
    #[error("pool '{0}' holds pages; a new lower tier must be empty")]
    LowerNotEmpty(String),
    /// The pairing would make a cycle of tiers.
    #[error("pool '{lower}' has '{upper}' below it: tiers cannot form a cycle")]
    Cycle {
        /// The lower pool asked for.
        lower: String,
        /// The upper pool.
        upper: String,
    },
    /// A persistent upper pool over an in-memory lower one: a demoted page would not survive
    /// a restart.
    #[error("pool '{upper}' is persistent, so its lower tier must be too ('{lower}' keeps pages in memory)")]
    LowerNotPersistent {
        /// The upper pool.
        upper: String,
        /// The lower pool.
        lower: String,
    },
    /// A writethrough lower pool under an upper pool that is not: the lower pool could drop
    /// a demoted page whose only copy it holds.
    #[error(
        "pool '{lower}' is writethrough (it may drop pages) but its upper pool '{upper}' is not; \
         make both writethrough or neither"
    )]
    Writethrough {
        /// The upper pool.
        upper: String,
        /// The lower pool.
        lower: String,
    },
    /// A pool that is a lower tier was used directly (a frontend, the page API, a peer).
    #[error("pool '{pool}' is the lower tier of pool '{upper}': only '{upper}' reads and writes it")]
    Owned {
        /// The lower pool.
        pool: String,
        /// Its owner.
        upper: String,
    },
    /// The lower tier cannot change to another pool while pages are below.
    #[error(
        "pool '{upper}' has {pages} pages below in its lower tier '{lower}': the tier can move to \
         another pool only while none is below (remove it first, with \"tier\": null, which brings them up)"
    )]
    PagesBelow {
        /// The upper pool.
        upper: String,
        /// Its lower pool now.
        lower: String,
        /// Pages below.
        pages: u64,
    },
    /// The tier cannot be removed: pages below could not all come back up.
    #[error(
        "pool '{upper}' keeps its lower tier '{lower}': {pages} pages are still below and cannot \
         all come back up ({why}); {promoted} came up and stay up. Make room in '{upper}' (its \
         max_pages or max_bytes, the host's memory budget) and try again"
    )]
    StillBelow {
        /// The upper pool.
        upper: String,
        /// Its lower pool.
        lower: String,
        /// Pages still below.
        pages: u64,
        /// Pages that came up before one could not.
        promoted: u64,
        /// Why.
        why: String,
    },
    /// A lower tier cannot be destroyed while its upper pool exists.
    #[error("pool '{pool}' is the lower tier of pool '{upper}'; destroy '{upper}' first")]
    LowerInUse {
        /// The lower pool.
        pool: String,
        /// Its owner.
        upper: String,
    },
}

impl TierSpec {
    /// Checks what does not involve the lower pool.
    pub fn check(&self, upper: &str) -> Result<(), TierError> {
        let secs = self.idle.as_secs();
        if !(tmem_api::rest::MIN_IDLE_SECONDS..=tmem_api::rest::MAX_IDLE_SECONDS).contains(&secs)
            || self.idle.subsec_nanos() != 0
        {
            return Err(TierError::BadIdle(secs));
        }
        if !(1..=100).contains(&self.pressure_percent) {
            return Err(TierError::BadPressure(self.pressure_percent));
        }
        if self.lower == upper {
            return Err(TierError::ItsOwnLower(upper.into()));
        }
        Ok(())
    }
}

/// What the mover keeps between its passes over one pool.
pub(crate) struct MoverState {
    /// Where the clock stood at the last pass (advanced by whole units only).
    pub last: Instant,
    /// The offsets one pass found idle in one shard (preallocated, bounded).
    pub victims: Vec<u64>,
    /// A page decoded from the upper chain on its way down (preallocated).
    pub page: Vec<u8>,
}

/// A pool's lower tier, as the upper pool runs it.
pub struct Tier {
    /// The lower pool.
    pub lower: Arc<Pool>,
    /// The config it was made with.
    pub spec: TierSpec,
    /// What the mover keeps between passes (the passes themselves are serialized with
    /// `invalidate_area` and tier changes by the upper pool's tiering lock).
    pub(crate) mover: Mutex<MoverState>,
    /// Pages per age (0 to [`MAX_AGE`]) at the last pass.
    ages: [AtomicU64; MAX_AGE as usize + 1],
    /// The last pass's report.
    last_pass: RwLock<TierPass>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier").field("lower", &self.lower.name()).field("spec", &self.spec).finish()
    }
}

/// What one mover pass over a pool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierPass {
    /// Pages it looked at.
    pub scanned: u64,
    /// Pages it found idle for `idle_seconds` or more.
    pub idle: u64,
    /// Pages it moved down.
    pub demoted: u64,
    /// Idle pages that stayed up (the lower pool refused them, or they could not be read).
    pub kept: u64,
    /// Whether the host's budget was under pressure (`pressure_percent`).
    pub pressure: bool,
    /// Under pressure: the age (in units) down to which younger pages were moved too
    /// (0: none).
    pub threshold: u8,
}

impl Tier {
    /// The lower tier `lower` of a pool of `page_size`-byte pages.
    pub(crate) fn new(lower: Arc<Pool>, spec: TierSpec, page_size: u32) -> Tier {
        Tier {
            lower,
            spec,
            mover: Mutex::new(MoverState {
                last: Instant::now(),
                victims: Vec::with_capacity(MAX_DEMOTIONS_PER_SHARD),
                page: vec![0; page_size as usize],
            }),
            ages: Default::default(),
            last_pass: RwLock::new(TierPass::default()),
        }
    }

    /// One age unit: an eighth of `idle_seconds`.
    pub fn unit(&self) -> Duration {
        self.spec.idle / IDLE_UNITS as u32
    }

    /// Publishes a pass's pages per age and its report.
    pub(crate) fn publish(&self, ages: &[u64; MAX_AGE as usize + 1], pass: TierPass) {
        for (gauge, &n) in self.ages.iter().zip(ages) {
            gauge.store(n, Ordering::Relaxed);
        }
        *self.last_pass.write() = pass;
    }

    /// The idle-age histogram as of the last pass: (upper bound, pages idle less than it),
    /// cumulative over [`AGE_BOUNDS`]; the last bound is `None` (every page).
    pub fn idle_age(&self) -> Vec<(Option<Duration>, u64)> {
        let below = |bound: usize| self.ages[..bound].iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>();
        let mut out: Vec<(Option<Duration>, u64)> =
            AGE_BOUNDS.iter().map(|&b| (Some(self.unit() * b as u32), below(b as usize))).collect();
        out.push((None, below(self.ages.len())));
        out
    }

    /// Whether a unit has elapsed since the last pass.
    pub fn due(&self) -> bool {
        self.mover.lock().last.elapsed() >= self.unit()
    }

    /// What the last pass did.
    pub fn last_pass(&self) -> TierPass {
        *self.last_pass.read()
    }
}

/// Runs a mover pass over every tiered pool each [`MOVER_TICK`]; stops when the pools are
/// gone (the host dropped).
pub(crate) fn spawn_mover(
    pools: std::sync::Weak<RwLock<std::collections::BTreeMap<String, Arc<Pool>>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("tmem-tiers".into()).spawn(move || {
        // Its allocations (and a lower tier's page cache) must not wait on swap-out to a
        // device of these very pools.
        crate::memory::become_io_flusher();
        // Reused every tick: it grows only past the most tiered pools the host has had.
        let mut tiered: Vec<Arc<Pool>> = Vec::new();
        loop {
            std::thread::sleep(MOVER_TICK);
            let Some(pools) = pools.upgrade() else { return };
            tiered.clear();
            tiered.extend(pools.read().values().filter(|p| p.tier().is_some()).cloned());
            drop(pools);
            for pool in tiered.drain(..) {
                if !pool.is_retired() && pool.tier_pass_due() {
                    pool.run_tier_pass();
                }
            }
        }
    })?;
    Ok(())
}
