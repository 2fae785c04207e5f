//! A pool: one named frontswap area with its own page map, counters, limits, modes and
//! backend chain. This file is the frontswap contract (`../shared/reference/contract.md`) in
//! code: store with the duplicate-store rule, load (exclusive or not), invalidate_page,
//! invalidate_area, shrink, curr_pages, and capacity limits with zswap's hysteresis.
//!
//! # Concurrency
//!
//! A pool is split into shards by offset. Each shard has its own lock, its own part of the
//! map, its own host page store shard and its own plugin instances, so operations on offsets
//! in different shards run in parallel, and operations on one offset are serialized by its
//! shard's lock (linearizable). Pool-wide numbers (stored pages, bytes) are atomics; a limit
//! check may therefore overshoot by at most one page per shard under concurrent stores.
//!
//! # Hot swap: generations
//!
//! A pool's chain can be replaced while it serves ([`Pool::swap_chain`]): each chain a pool
//! has had is a *generation* with an increasing id, and every map entry records the
//! generation that stored it. New stores use the current generation; a load or invalidate
//! of an older page runs through the generation that stored it, so a new plugin version
//! never has to read an old version's format. A shard drops an old generation's instances
//! when its last page there is gone. Operations already inside a shard when the swap
//! happens finish on the generation they started with (they hold the shard's lock).
//!
//! # Canary: new code is verified before it is trusted
//!
//! A generation the pool has not verified — a hot swap, or a new pool on an uploaded plugin —
//! starts with a **canary** ([`Canary`]): its first `canary_stores` stores (over all shards)
//! are read back through the chain and compared with the page before they are acknowledged.
//! A mismatch, or plugin faults in more than a tenth of them, **rolls the pool back**: the
//! previous generation's chain becomes current again (as a new generation: ids only grow), or a
//! new pool's stores are disabled; the page being verified is refused (the frontend keeps
//! it). The reason is in [`Pool::canary`], the log, and `canary_rollbacks`.
//!
//! # A new generation is recorded before it is current
//!
//! A page names the generation that stored it, and a restart reads it only through a
//! generation the catalog lists. So a swap (or a rollback) first starts the new chain, then
//! has the pool's [`ChainRecorder`] (the host's catalog) record it, and only then makes it
//! current: no store can be acknowledged under a generation a crash would forget. A record
//! that fails leaves the old chain current (a rollback that cannot be recorded disables stores
//! instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tmem_api::abi::status;

use crate::chain::{Chain, ChainContext, ChainError, ChainInstances, EncodedKind, GetFailure, PutFailure};
use crate::frontend::{Frontend, FrontendDetails};
use crate::memory::arena::PageArena;
use crate::page_index::PageEntry;
use crate::page_store::{PageShard, PutRefusal, ShardPlace};
use crate::persist::{DiskError, Durability, MAX_FLUSH_INTERVAL, PoolDisk};
use crate::plugin::engine::{InstanceLimit, Reservation};
use crate::plugin::{PluginEngine, SandboxLimits};
use crate::stats::{CounterSnapshot, FaultRecord, HistogramSnapshot, Op, PoolStats};
use crate::tier::{IDLE_UNITS, Promote, Tier, TierError, TierPass};

/// Stores a canary verifies unless the pool says otherwise.
pub const DEFAULT_CANARY_STORES: u32 = 256;

/// The smallest page size a pool accepts.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// The largest page size a pool accepts.
pub const MAX_PAGE_SIZE: u32 = 2 << 20;

/// Capacity limits, changeable at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most pages the pool holds (`None`: no limit).
    pub max_pages: Option<u64>,
    /// Most bytes the backend may use (`pool_total_size`; `None`: no limit).
    pub max_bytes: Option<u64>,
    /// Once a limit is hit, stores are refused until usage is below this percentage of it
    /// (zswap's `accept_threshold_percent`).
    pub accept_threshold_percent: u8,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits { max_pages: None, max_bytes: None, accept_threshold_percent: 90 }
    }
}

/// The modes of contract.md §3, changeable at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolModes {
    /// Stores are reported as "also write it to your device"; the pool may drop such pages.
    pub writethrough: bool,
    /// A successful load also removes the page.
    pub exclusive_gets: bool,
}

/// The result of a store: an expected outcome, never an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The page is in the pool.
    Stored,
    /// The page is in the pool, and the frontend must also write it to its device.
    StoredWritethrough,
    /// The pool refused the page; the frontend writes it to its own device. Any older copy
    /// of the offset is gone (the duplicate-store rule).
    Rejected(RejectReason),
}

/// Why a store was refused (each has a counter of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The pool is at a limit (`pool_limit_hit`).
    PoolLimit,
    /// The page compressed poorly (`reject_compress_poor`).
    CompressPoor,
    /// The compressor failed (`reject_compress_fail`).
    CompressFail,
    /// No room could be allocated (`reject_alloc_fail`).
    AllocFail,
    /// A plugin faulted (`reject_plugin_fault`).
    PluginFault,
    /// A remote backend is unreachable (`remote_unavailable`).
    Unavailable,
    /// The pool is disabled (`reject_disabled`).
    Disabled,
}

impl RejectReason {
    /// The reason's name, as in the counters and the API.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::PoolLimit => "pool_limit_hit",
            RejectReason::CompressPoor => "reject_compress_poor",
            RejectReason::CompressFail => "reject_compress_fail",
            RejectReason::AllocFail => "reject_alloc_fail",
            RejectReason::PluginFault => "reject_plugin_fault",
            RejectReason::Unavailable => "remote_unavailable",
            RejectReason::Disabled => "reject_disabled",
        }
    }

    fn from_status(code: u32) -> Self {
        match code {
            status::REJECT_COMPRESS_POOR => RejectReason::CompressPoor,
            status::REJECT_COMPRESS_FAIL => RejectReason::CompressFail,
            status::REJECT_ALLOC_FAIL => RejectReason::AllocFail,
            _ => RejectReason::Unavailable,
        }
    }
}

/// The result of a load of a page that can be served or is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The offset's bit is clear: nothing was called, nothing was written.
    Absent,
    /// The page was written to the caller's buffer.
    Loaded {
        /// The load also removed the page (exclusive gets): the frontend must treat it as dirty.
        exclusive: bool,
    },
}

/// Errors of the data-path operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The buffer is not one page long.
    #[error("page is {got} bytes, but pool '{pool}' has {expected}-byte pages")]
    WrongPageSize {
        /// The pool.
        pool: String,
        /// The pool's page size.
        expected: u32,
        /// The buffer's length.
        got: usize,
    },
    /// A record for a store-only pool is empty or longer than the store can take.
    #[error("a record is {got} bytes, but pool '{pool}' takes 1 to {max}")]
    WrongRecordSize {
        /// The pool.
        pool: String,
        /// The largest record.
        max: usize,
        /// The record's length.
        got: usize,
    },
    /// Records (already encoded pages) go only to a pool whose chain is a lone store.
    #[error(
        "pool '{0}' has filters in its chain; records (already encoded pages) need a pool that is a lone store, e.g. [ram]"
    )]
    NotARecordPool(String),
    /// The pool is another pool's lower tier: only that pool reads and writes it.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// A page the map says is present could not be produced: data loss, counted in
    /// `load_failures`. The page stays present (the failure may be transient).
    #[error("load of offset {offset} in pool '{pool}' failed: {reason}")]
    LoadFailed {
        /// The pool.
        pool: String,
        /// The offset.
        offset: u64,
        /// What went wrong.
        reason: GetFailure,
    },
    /// The pool is a block device's (its offsets are the device's pages): only the device
    /// writes it.
    #[error(
        "pool '{pool}' belongs to {device}: its offsets are the device's pages, so only the device may change them (detach the device, or use another pool)"
    )]
    OwnedByDevice {
        /// The pool.
        pool: String,
        /// The device, as it named itself when it claimed the pool.
        device: String,
    },
    /// The change was made in the pool's map but its database could not flush it: it may be
    /// undone by a crash. The pool has disabled its stores; the host's log has the detail. For
    /// an exclusive load, the caller's buffer holds the page (it is out of the map).
    #[error(
        "pool '{pool}': {op} of offset {offset} is not durable: the pool's database could not be flushed (stores are disabled)"
    )]
    NotDurable {
        /// The pool.
        pool: String,
        /// The operation: "invalidate", "exclusive load", "invalidate_area".
        op: &'static str,
        /// The offset (0 for invalidate_area).
        offset: u64,
    },
}

/// Why a shrink could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShrinkError {
    /// Pages can leave a non-writethrough pool only through a frontend that takes them back.
    #[error("pool '{0}' has no connected frontend to take pages back, and it is not writethrough")]
    NoFrontend(String),
    /// Dropping pages could not be made durable (the pool's database cannot flush).
    #[error(transparent)]
    Op(#[from] OpError),
}

/// Why a pool could not be created, restored or changed. Every kind but [`PoolError::Disk`]
/// is the client's mistake (a setting that makes no sense, a chain that will not run) and
/// says what to do; [`PoolError::Disk`] is the host's own storage failing.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A name that is not acceptable.
    #[error("pool name {0:?} must be 1-64 characters of ASCII letters, digits, '-', '_' and '.'")]
    BadName(String),
    /// A name starting with '.'.
    #[error("pool name {0:?} must not start with '.'")]
    HiddenName(String),
    /// A page size that is not a power of two in range.
    #[error("page size {0} must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}")]
    BadPageSize(u32),
    /// An accept threshold out of range.
    #[error("accept_threshold_percent {0} must be from 1 to 100")]
    BadAcceptThreshold(u8),
    /// A weight out of range.
    #[error("weight {0} must be from 1 to {MAX_WEIGHT}")]
    BadWeight(u16),
    /// A limit of 0.
    #[error("a limit of 0 would refuse every store; leave it unset (null) for no limit")]
    ZeroLimit,
    /// A byte limit on a store that keeps its bytes elsewhere.
    #[error(
        "max_bytes cannot apply to a remote store (its bytes are on the remote, which has its own limits); use max_pages"
    )]
    ByteLimitOnRemote,
    /// Sandbox limits out of range.
    #[error(
        "sandbox memory_bytes {memory_bytes} must be from 1 MiB to 4 GiB and call_timeout_ms {call_timeout_ms} from 1 to 60000"
    )]
    BadSandbox {
        /// The memory cap asked for.
        memory_bytes: u64,
        /// The call timeout asked for, in ms.
        call_timeout_ms: u64,
    },
    /// A shard count that is not a power of two up to 1024.
    #[error("shards {0} must be a power of two up to 1024")]
    BadShards(usize),
    /// A periodic flush interval out of range.
    #[error("flush_interval_ms {} must be from 1 to {}", .0.as_millis(), MAX_FLUSH_INTERVAL.as_millis())]
    BadFlushInterval(Duration),
    /// `flush_interval_ms` with a durability that is not periodic; `hint` says what to change.
    #[error("flush_interval_ms applies only to periodic durability{hint}")]
    FlushIntervalNotPeriodic {
        /// The end of the message: what to set, if anything.
        hint: &'static str,
    },
    /// Durability settings in the config of a pool that is not persistent.
    #[error("durability and flush_interval_ms apply only to persistent pools (a store granted \"storage\", e.g. sled)")]
    DurabilityNeedsStorage,
    /// A durability change for a live pool that is not persistent.
    #[error("pool '{0}' is not persistent (its store is not granted storage); durability does not apply")]
    NotPersistent(String),
    /// A persistent pool on a host without a data dir.
    #[error("a persistent pool (a store granted storage) needs a host with a data dir")]
    NeedsDataDir,
    /// A hot swap that changes the chain's plugins or their order (`plugins`: the chain's).
    #[error(
        "a hot swap keeps the chain's plugins and their order ({plugins}) and changes only versions and configs; \
         to change the plugins, create a new pool"
    )]
    SwapChangesPlugins {
        /// The plugins of the current chain, in order.
        plugins: String,
    },
    /// A hot swap to a chain whose store is persistent when the pool's is not, or back.
    #[error("a hot swap cannot change whether the pool's store is persistent")]
    SwapChangesPersistence,
    /// A database given for a pool whose store is not granted storage, or none for one that is.
    #[error("a pool has a database exactly when its store is granted storage")]
    DatabaseMismatch,
    /// A kept pool with no chain generation.
    #[error("a restored pool needs a chain")]
    NoGeneration,
    /// The chain was refused or could not start.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The catalog could not record a swap's new generation: the pool keeps its chain.
    #[error(transparent)]
    NotRecorded(#[from] crate::catalog::CatalogError),
    /// The host's plugin instance slots cannot hold the pool's instances.
    #[error(transparent)]
    InstanceLimit(#[from] InstanceLimit),
    /// The lower tier was refused.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// The pool's database failed: the host's fault, not the client's.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// What a shrink did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShrinkReport {
    /// Pages before.
    pub before: u64,
    /// Pages after.
    pub after: u64,
    /// Pages a frontend took back.
    pub written_back: u64,
    /// Writethrough pages dropped (their durable copy is the frontend's).
    pub dropped: u64,
}

/// What a new pool is made of. `backends` is resolved to a [`Chain`] by the host.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Name (1-64 of ASCII letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Page size: a power of two from 4096 to 2 MiB.
    pub page_size: u32,
    /// Limits.
    pub limits: PoolLimits,
    /// Modes.
    pub modes: PoolModes,
    /// Sandbox limits for every plugin instance of the pool.
    pub sandbox: SandboxLimits,
    /// Number of shards (a power of two); `None`: from the number of CPUs.
    pub shards: Option<usize>,
    /// Whether stores are accepted from the start.
    pub enabled: bool,
    /// When changes reach the disk, for a pool whose store is granted `storage`.
    pub durability: Durability,
    /// Whether every page's checksum is kept and checked on every load (on unless turned off
    /// explicitly).
    pub integrity: bool,
    /// Stores of an unverified generation read back and compared before they are
    /// acknowledged (0: no canary).
    pub canary_stores: u32,
    /// The pool's lower tier (the host pairs the pools).
    pub tier: Option<crate::tier::TierSpec>,
    /// Its weight when the memory governor asks pools to shrink (1 to [`MAX_WEIGHT`]).
    pub weight: u16,
}

/// A pool's weight unless its config says otherwise.
pub const DEFAULT_WEIGHT: u16 = 100;
/// The largest weight.
pub const MAX_WEIGHT: u16 = 1000;

impl PoolSpec {
    /// A spec with defaults: 4096-byte pages, no limits, no modes.
    pub fn new(name: impl Into<String>) -> Self {
        PoolSpec {
            name: name.into(),
            page_size: 4096,
            limits: PoolLimits::default(),
            modes: PoolModes::default(),
            sandbox: SandboxLimits::default(),
            shards: None,
            enabled: true,
            durability: Durability::Sync,
            integrity: true,
            canary_stores: DEFAULT_CANARY_STORES,
            tier: None,
            weight: DEFAULT_WEIGHT,
        }
    }

    /// Checks everything that does not involve plugins.
    pub fn check(&self) -> Result<(), PoolError> {
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(PoolError::BadWeight(self.weight));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(PoolError::BadName(self.name.clone()));
        }
        if !self.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(PoolError::BadPageSize(self.page_size));
        }
        self.limits.check()?;
        if !self.sandbox.in_range() {
            return Err(PoolError::BadSandbox {
                memory_bytes: self.sandbox.memory_bytes as u64,
                call_timeout_ms: self.sandbox.call_timeout.as_millis().min(u64::MAX as u128) as u64,
            });
        }
        if self.name.starts_with('.') {
            return Err(PoolError::HiddenName(self.name.clone()));
        }
        if let Some(n) = self.shards
            && (!n.is_power_of_two() || n > 1024)
        {
            return Err(PoolError::BadShards(n));
        }
        if let Some(tier) = &self.tier {
            tier.check(&self.name)?;
        }
        self.durability.check()
    }

    /// The number of shards the pool will have (`shards`, or two per CPU, 4 to 64).
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            (cpus * 2).next_power_of_two().clamp(4, 64)
        })
    }
}

/// A store that keeps bytes elsewhere (granted `network`) has no `pool_total_size` on this
/// host, so a byte limit could never apply: it is refused rather than silently ignored.
fn check_byte_limit(chain: &Chain, limits: &PoolLimits) -> Result<(), PoolError> {
    let remote = chain.links().last().is_some_and(|l| l.grants.contains(&tmem_api::manifest::Capability::Network));
    if remote && limits.max_bytes.is_some() {
        return Err(PoolError::ByteLimitOnRemote);
    }
    Ok(())
}

impl PoolLimits {
    /// Checks the limits make sense.
    pub fn check(&self) -> Result<(), PoolError> {
        if !(1..=100).contains(&self.accept_threshold_percent) {
            return Err(PoolError::BadAcceptThreshold(self.accept_threshold_percent));
        }
        if self.max_pages == Some(0) || self.max_bytes == Some(0) {
            return Err(PoolError::ZeroLimit);
        }
        Ok(())
    }
}

/// A backend chain of a pool, numbered: the current one, or an older one still holding pages.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Increases by one with every swap; the first chain is 1.
    pub id: u32,
    /// The chain.
    pub chain: Arc<Chain>,
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryState {
    /// Stores are being verified.
    Running,
    /// Every store it was to verify round-tripped exactly.
    Passed,
    /// It failed, and the previous generation's chain is current again.
    RolledBack,
    /// It failed on a new pool (no previous generation): stores are disabled.
    Disabled,
}

impl CanaryState {
    /// As the API names it.
    pub fn name(self) -> &'static str {
        match self {
            CanaryState::Running => "running",
            CanaryState::Passed => "passed",
            CanaryState::RolledBack => "rolled_back",
            CanaryState::Disabled => "disabled",
        }
    }
}

/// The canary of the last generation that had one.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The generation under test.
    pub generation: u32,
    /// The generation it replaced (`None`: a new pool).
    pub previous: Option<Arc<Generation>>,
    /// Stores to verify in all.
    pub stores: u64,
    /// Stores verified so far.
    pub verified: u64,
    /// Plugin faults among its stores and verifications.
    pub faults: u64,
    /// Where it stands.
    pub state: CanaryState,
    /// Why it failed.
    pub reason: Option<String>,
    /// After a rollback: the generation that runs the previous chain now.
    pub replaced_by: Option<u32>,
}

/// A generation's instance slots, and how many shards have a slot for it.
struct GenerationHold {
    shards: usize,
    reservation: Reservation,
}

/// What records a pool's new generation durably (the host's catalog) **before** it becomes
/// current: called with the pool and the generation about to be current, by a swap and by a
/// canary's rollback. An error keeps the old generation current.
pub type ChainRecorder = Box<dyn Fn(&Pool, &Generation) -> Result<(), crate::catalog::CatalogError> + Send + Sync>;

/// A generation started in shard 0 and not current yet (see [`Pool::prepare`]). Holds the
/// pool's swap lock, so no other generation can be prepared until it is committed or dropped;
/// dropped, it gives its instance slots back.
struct Prepared<'a> {
    _serial: parking_lot::MutexGuard<'a, ()>,
    generation: Generation,
    instances: ChainInstances,
    reservation: Reservation,
    verify: bool,
}

/// A generation's live instances in one shard, and how many of the shard's pages it holds.
struct GenerationSlot {
    id: u32,
    chain: Arc<Chain>,
    instances: ChainInstances,
    held: u64,
}

struct Shard {
    /// Generations with pages in this shard, oldest first; the last is the newest this shard
    /// has used (kept even when empty).
    generations: Vec<GenerationSlot>,
    /// The frontswap map of this shard (offset → how, by which generation, with which
    /// checksum it was stored) and the records its store keeps in the host.
    pages: Arc<PageShard>,
    /// Where a canary reads a page back to (allocated while a canary runs, then dropped).
    scratch: Vec<u8>,
    /// The page the tiers' mover is copying down from this shard, without its lock (see
    /// [`Pool::demote`]): a load that misses the map for it must not look below, where a copy
    /// of a page dropped meanwhile may sit until the mover takes it back.
    moving: Option<u64>,
    /// The pool's lower tier as this shard's operations see it: changed only under every
    /// shard's lock at once ([`Pool::replace_tier`]), so an operation sees one tier (or none)
    /// for its whole course, and no lock more is taken on the I/O path.
    tier: Option<Arc<Tier>>,
}

/// What statistics readers see of a shard (see [`Pool::shard_views`]).
#[derive(Debug, Clone, Default)]
struct ShardView {
    /// Linear memory of its plugin instances.
    memory_bytes: u64,
    /// Its generations and the pages each holds here.
    generations: Vec<(Generation, u64)>,
}

impl ShardView {
    fn of(shard: &Shard) -> ShardView {
        ShardView {
            memory_bytes: shard.generations.iter().map(|g| g.instances.memory_bytes() as u64).sum(),
            generations: shard
                .generations
                .iter()
                .map(|slot| (Generation { id: slot.id, chain: slot.chain.clone() }, slot.held))
                .collect(),
        }
    }
}

impl Shard {
    /// The slot of the current generation, created on the first store after a swap.
    fn current_slot(&mut self, pool: &Pool) -> usize {
        let want = pool.current_id.load(Ordering::Acquire);
        if self.generations.last().map(|g| g.id) != Some(want) {
            let current = pool.current.read().clone();
            if let Some(at) = self.generations.iter().position(|g| g.id == current.id) {
                // It holds pages here already: it becomes the last again.
                let slot = self.generations.remove(at);
                self.generations.push(slot);
                return self.generations.len() - 1;
            }
            self.generations.push(GenerationSlot {
                id: current.id,
                instances: ChainInstances::new(current.chain.links().len()),
                chain: current.chain.clone(),
                held: 0,
            });
            pool.slot_added(current.id);
        }
        self.generations.len() - 1
    }

    /// The slot of generation `id`, which holds at least one page of this shard.
    fn slot_of(&self, id: u32) -> usize {
        self.generations.iter().position(|g| g.id == id).expect("a stored page's generation has a slot")
    }

    /// Counts a page out of its generation; an old generation left empty is dropped (with
    /// its plugin instances).
    fn release(&mut self, slot: usize, pool: &Pool) {
        self.generations[slot].held -= 1;
        let newest_here = slot + 1 == self.generations.len();
        let current = self.generations[slot].id == pool.current_id.load(Ordering::Acquire);
        // The newest generation this shard used stays while it is the pool's current one.
        if self.generations[slot].held == 0 && !(newest_here && current) {
            let gone = self.generations.remove(slot);
            pool.slot_removed(gone.id);
        }
    }
}

/// A pool. Shared as `Arc<Pool>`; every operation takes `&self`.
pub struct Pool {
    name: String,
    page_size: u32,
    /// The generation new stores use; `current_id` mirrors its id for a lock-free check.
    current: RwLock<Arc<Generation>>,
    current_id: std::sync::atomic::AtomicU32,
    sandbox: SandboxLimits,
    engine: Arc<PluginEngine>,
    shards: Box<[Mutex<Shard>]>,
    /// What readers that must not wait (the REST API, the dashboard's sampler, `/metrics`)
    /// last saw of each shard: see [`Pool::shard_views`].
    shard_views: Box<[Mutex<ShardView>]>,
    stats: Arc<PoolStats>,
    max_pages: AtomicU64,
    /// Shared with the shards' page stores, which charge each record to it as it is put.
    max_bytes: Arc<AtomicU64>,
    accept_threshold_percent: AtomicU8,
    writethrough: AtomicBool,
    exclusive_gets: AtomicBool,
    enabled: AtomicBool,
    /// Set when a limit was hit; cleared when usage falls below the accept threshold.
    full: AtomicBool,
    /// Whether pages are checksummed when stored and checked when loaded.
    integrity: bool,
    /// Set when the pool is destroyed.
    retired: AtomicBool,
    /// How many stores a canary verifies (0: none).
    canary_stores: u32,
    /// Its weight when the memory governor asks pools to shrink.
    weight: u16,
    /// The id of the generation whose stores are verified now (0: none): the lock-free check
    /// of the store path. Set while a canary runs and until a failed one is replaced.
    canary_generation: std::sync::atomic::AtomicU32,
    /// The last canary.
    canary: Mutex<Option<Canary>>,
    /// The instance slots of each generation some shard runs (or the current one), and how
    /// many shards run it.
    holds: Mutex<std::collections::HashMap<u32, GenerationHold>>,
    /// Records a new generation before it becomes current (the host's catalog).
    recorder: std::sync::OnceLock<ChainRecorder>,
    /// The block device that owns the pool (claim serial, device name), if one does.
    /// Invariant: while set, the pool's offsets are the device's pages and every other writer
    /// (socket frontends, the page API, peers) is refused at its entry point
    /// ([`Pool::check_writer`]); `owned` mirrors it for a lock-free check per batch.
    owner: Mutex<Option<(u64, String)>>,
    owned: AtomicBool,
    /// Serializes swaps and rollbacks from the start of a new generation to its commit.
    swapping: Mutex<()>,
    frontends: RwLock<Vec<Arc<dyn Frontend>>>,
    created: Instant,
    /// The pool's own database, when its store is granted `storage`.
    disk: Option<Arc<PoolDisk>>,
    /// The host's arena (its budget tells the tiers' mover about memory pressure).
    arena: Arc<PageArena>,
    /// The pool's lower tier as readers off the I/O path see it (the host, the API, the
    /// mover); each shard has its own copy ([`Shard::tier`]). Changed by
    /// [`Pool::replace_tier`] only.
    tier: RwLock<Option<Arc<Tier>>>,
    /// Serializes the mover's passes, `invalidate_area` and changes of the pool's tier: a
    /// pass or an `invalidate_area` reads the tier under it, so a change never meets either
    /// half-way.
    tiering: Mutex<()>,
    /// The upper pool that owns this one as its lower tier (`is_lower` mirrors it lock-free).
    upper: Mutex<Option<String>>,
    is_lower: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).field("chain", &self.chain().describe()).finish()
    }
}

const UNLIMITED: u64 = u64::MAX;

impl Pool {
    /// Creates the pool (init: the map starts empty) and instantiates its whole chain once,
    /// so a config the plugins refuse is reported now, not when the first page arrives. A
    /// pool whose store is granted `storage` needs `disk`, its own (empty) database. With
    /// `verify` (a chain with uploaded plugins), its first stores run under a canary.
    pub(crate) fn new(
        spec: PoolSpec,
        chain: Chain,
        engine: Arc<PluginEngine>,
        arena: Arc<PageArena>,
        disk: Option<Arc<PoolDisk>>,
        verify: bool,
    ) -> Result<Self, PoolError> {
        let pool = Pool::empty(spec, Arc::new(chain.clone()), engine, arena, disk)?;
        pool.install(Arc::new(chain), None, verify)?;
        Ok(pool)
    }

    /// Brings back a persistent pool after a restart: its chain generations (oldest first,
    /// the last is current) are started with their recorded ids, then the map, the gauges and
    /// each generation's page count are rebuilt from the records in `disk`. Records of a
    /// generation not listed cannot be decoded: they are dropped, with an error logged.
    pub(crate) fn restore(
        spec: PoolSpec,
        generations: Vec<(u32, Chain)>,
        engine: Arc<PluginEngine>,
        arena: Arc<PageArena>,
        disk: Arc<PoolDisk>,
    ) -> Result<Self, PoolError> {
        let (_, current) = generations.last().ok_or(PoolError::NoGeneration)?;
        let pool = Pool::empty(spec, Arc::new(current.clone()), engine, arena, Some(disk))?;
        let mut installed = Vec::new();
        for (id, chain) in generations {
            let chain = Arc::new(chain);
            pool.commit(pool.prepare(chain.clone(), Some(id), false)?);
            installed.push((id, chain));
        }
        let mut dropped = 0u64;
        for (i, shard) in pool.shards.iter().enumerate() {
            let mut shard = shard.lock();
            if i > 0 {
                // Shard 0 has every generation's warmed-up slot; the others start them lazily
                // (or below, ahead, when the host serves swap).
                shard.generations = installed
                    .iter()
                    .map(|(id, chain)| {
                        pool.slot_added(*id);
                        GenerationSlot {
                            id: *id,
                            chain: chain.clone(),
                            instances: ChainInstances::new(chain.links().len()),
                            held: 0,
                        }
                    })
                    .collect();
            }
            for (offset, meta) in shard.pages.recover() {
                let Some(slot) = shard.generations.iter().position(|g| g.id == meta.generation) else {
                    shard.pages.remove(offset);
                    dropped += 1;
                    continue;
                };
                shard.generations[slot].held += 1;
                pool.remember(EncodedKind::from_code(meta.kind));
            }
            let newest = shard.generations.len() - 1;
            let mut i = 0;
            shard.generations.retain(|g| {
                i += 1;
                let keep = g.held > 0 || i - 1 == newest;
                if !keep {
                    pool.slot_removed(g.id);
                }
                keep
            });
        }
        if dropped > 0 {
            tracing::error!(pool = %pool.name, dropped, "DATA LOSS: pages stored by an unknown chain generation were dropped");
        }
        pool.start_every_shard();
        Ok(pool)
    }

    fn empty(
        spec: PoolSpec,
        chain: Arc<Chain>,
        engine: Arc<PluginEngine>,
        arena: Arc<PageArena>,
        disk: Option<Arc<PoolDisk>>,
    ) -> Result<Self, PoolError> {
        spec.check()?;
        if chain.is_persistent() != disk.is_some() {
            return Err(PoolError::DatabaseMismatch);
        }
        check_byte_limit(&chain, &spec.limits)?;
        let stats = Arc::new(PoolStats::default());
        let max_bytes = Arc::new(AtomicU64::new(spec.limits.max_bytes.unwrap_or(UNLIMITED)));
        let shard_count = spec.shard_count();
        let shards = (0..shard_count)
            .map(|i| {
                let tree = disk.as_ref().map(|disk| disk.shard_tree(i)).transpose()?;
                let place = ShardPlace {
                    shard: i,
                    shards: shard_count,
                    max_record: tmem_api::abi::io_capacity(spec.page_size) as usize,
                    max_bytes: max_bytes.clone(),
                };
                let pages = PageShard::new(place, stats.clone(), arena.clone(), tree);
                Ok(Mutex::new(Shard {
                    generations: Vec::new(),
                    pages: Arc::new(pages),
                    scratch: Vec::new(),
                    moving: None,
                    tier: None,
                }))
            })
            .collect::<Result<_, DiskError>>()?;
        if let Some(disk) = &disk {
            disk.set_durability(spec.durability);
        }
        Ok(Pool {
            name: spec.name,
            page_size: spec.page_size,
            current: RwLock::new(Arc::new(Generation { id: 0, chain: chain.clone() })),
            current_id: Default::default(),
            sandbox: spec.sandbox,
            engine,
            shard_views: (0..shard_count).map(|_| Mutex::default()).collect(),
            shards,
            stats,
            max_pages: AtomicU64::new(spec.limits.max_pages.unwrap_or(UNLIMITED)),
            max_bytes,
            accept_threshold_percent: AtomicU8::new(spec.limits.accept_threshold_percent),
            writethrough: AtomicBool::new(spec.modes.writethrough),
            exclusive_gets: AtomicBool::new(spec.modes.exclusive_gets),
            enabled: AtomicBool::new(spec.enabled),
            full: AtomicBool::new(false),
            integrity: spec.integrity,
            retired: AtomicBool::new(false),
            canary_stores: spec.canary_stores,
            weight: spec.weight,
            canary_generation: Default::default(),
            canary: Mutex::new(None),
            holds: Mutex::default(),
            recorder: std::sync::OnceLock::new(),
            swapping: Mutex::new(()),
            owner: Mutex::new(None),
            owned: AtomicBool::new(false),
            frontends: RwLock::new(Vec::new()),
            created: Instant::now(),
            disk,
            arena,
            tier: RwLock::new(None),
            tiering: Mutex::new(()),
            upper: Mutex::new(None),
            is_lower: AtomicBool::new(false),
        })
    }

    /// Makes `chain` the current generation: new stores use it at once (under a canary);
    /// pages stored by earlier generations stay readable through them until they are gone.
    /// Every plugin of the new chain is started once first, so a chain that cannot start
    /// changes nothing; then the pool's recorder (the catalog) records the new generation,
    /// and only then is it current — a record that fails changes nothing either
    /// ([`PoolError::NotRecorded`]). Returns the new generation's id.
    pub fn swap_chain(&self, chain: Arc<Chain>) -> Result<u32, PoolError> {
        if chain.is_persistent() != self.disk.is_some() {
            return Err(PoolError::SwapChangesPersistence);
        }
        self.install_recorded(chain, true)
    }

    /// Starts `chain`, has the recorder record it, and makes it current (the next id).
    fn install_recorded(&self, chain: Arc<Chain>, verify: bool) -> Result<u32, PoolError> {
        let prepared = self.prepare(chain, None, verify)?;
        // Invariant: recorded before current. Until `commit`, stores keep using the old
        // generation, so none can be acknowledged under an id a crash would forget.
        if let Some(record) = self.recorder.get() {
            record(self, &prepared.generation)?;
        }
        let id = self.commit(prepared);
        self.start_every_shard();
        Ok(id)
    }

    /// Starts `chain` and makes it the current generation, as `id` or as the next id; with
    /// `verify`, under a canary (when the pool has one). Not recorded: for a pool being made
    /// or restored, which nothing can store into yet.
    fn install(&self, chain: Arc<Chain>, id: Option<u32>, verify: bool) -> Result<u32, PoolError> {
        let prepared = self.prepare(chain, id, verify)?;
        let id = self.commit(prepared);
        self.start_every_shard();
        Ok(id)
    }

    /// Starts the current generation's instances in every shard now, rather than on each
    /// shard's first store — on an I/O thread, under the memory pressure that sent the page,
    /// where instantiating allocates and faults (see `PluginInstance::make_resident`), and
    /// where its memory would be charged to the budget while the governor may be trying to
    /// free some. A pool's plugin memory is thus charged whole when it is made (and checked
    /// against the budget by `Host::create_pool`). A link that cannot start here starts (or
    /// faults) on first use as before.
    fn start_every_shard(&self) {
        for shard in self.shards.iter().skip(1) {
            let mut shard = shard.lock();
            let slot = shard.current_slot(self);
            let Shard { generations, pages, .. } = &mut *shard;
            let GenerationSlot { id, chain, instances, .. } = &mut generations[slot];
            let chain = chain.clone();
            if let Err((i, fault)) = instances.warm_up(&self.context(*id, &chain, pages)) {
                tracing::warn!(pool = %self.name, plugin = %chain.links()[i].plugin, "starting an instance ahead: {fault}");
            }
        }
    }

    /// Starts `chain` in shard 0 as generation `id` (or the next id), not current yet.
    fn prepare(&self, chain: Arc<Chain>, id: Option<u32>, verify: bool) -> Result<Prepared<'_>, PoolError> {
        let serial = self.swapping.lock();
        let id = id.unwrap_or_else(|| self.current.read().id + 1);
        // Every instance the generation may have (a chain in every shard) has its slot first.
        let reservation = self.engine.slots().reserve((self.shards.len() * chain.links().len()) as u32)?;
        let mut instances = ChainInstances::new(chain.links().len());
        {
            let shard = self.shards[0].lock();
            instances
                .warm_up(&self.context(id, &chain, &shard.pages))
                .map_err(|(i, fault)| ChainError::start(&chain.links()[i].plugin, fault))?;
        }
        Ok(Prepared { _serial: serial, generation: Generation { id, chain }, instances, reservation, verify })
    }

    /// Makes a prepared generation current; returns its id.
    fn commit(&self, prepared: Prepared<'_>) -> u32 {
        let Prepared { _serial, generation: Generation { id, chain }, instances, reservation, verify } = prepared;
        // Shard 0's lock: no store in shard 0 can see the new id before its warmed-up slot is
        // in place.
        let mut shard = self.shards[0].lock();
        self.holds.lock().insert(id, GenerationHold { shards: 1, reservation });
        let previous = std::mem::replace(&mut *self.current.write(), Arc::new(Generation { id, chain: chain.clone() }));
        let previous_id = previous.id;
        if verify && self.canary_stores > 0 {
            *self.canary.lock() = Some(Canary {
                generation: id,
                previous: (previous.id > 0).then_some(previous),
                stores: self.canary_stores as u64,
                verified: 0,
                faults: 0,
                state: CanaryState::Running,
                reason: None,
                replaced_by: None,
            });
            self.canary_generation.store(id, Ordering::Release);
        } else {
            self.canary_generation.store(0, Ordering::Release);
        }
        self.current_id.store(id, Ordering::Release);
        shard.generations.push(GenerationSlot { id, chain, instances, held: 0 });
        drop(shard);
        // The generation it replaced gives its slots back if no shard runs it any more.
        let mut holds = self.holds.lock();
        if holds.get(&previous_id).is_some_and(|h| h.shards == 0) {
            holds.remove(&previous_id);
        }
        id
    }

    /// A shard made a slot for generation `id`.
    fn slot_added(&self, id: u32) {
        if let Some(hold) = self.holds.lock().get_mut(&id) {
            hold.shards += 1;
        }
    }

    /// A shard dropped its slot for generation `id`: with no shard left running it, an old
    /// generation gives its instance slots back.
    fn slot_removed(&self, id: u32) {
        let mut holds = self.holds.lock();
        if let Some(hold) = holds.get_mut(&id) {
            hold.shards -= 1;
            if hold.shards == 0 && id != self.current_id.load(Ordering::Acquire) {
                holds.remove(&id);
            }
        }
    }

    /// Moves the pool's records out of the runs the arena is draining (a compaction, see
    /// [`PageArena::begin_compaction`]); returns how many moved. Each shard is locked in turn,
    /// briefly: stores and loads of other shards go on.
    pub fn relocate_records(&self) -> u64 {
        self.shards.iter().map(|shard| shard.lock().pages.relocate_records()).sum()
    }

    /// Instance slots the pool holds now (for every generation a shard runs).
    pub fn instance_slots(&self) -> u32 {
        self.holds.lock().values().map(|h| h.reservation.slots()).sum()
    }

    /// How many stores a canary verifies.
    pub fn canary_stores(&self) -> u32 {
        self.canary_stores
    }

    /// Its weight when the memory governor asks pools to shrink (1 to [`MAX_WEIGHT`]).
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// The last canary: the generation it verifies or verified, and where it stands.
    pub fn canary(&self) -> Option<Canary> {
        self.canary.lock().clone()
    }

    /// Sets what records a new generation before it becomes current (once): the host's
    /// catalog.
    pub fn set_recorder(&self, recorder: ChainRecorder) {
        let _ = self.recorder.set(recorder);
    }

    /// Counts one store of `generation` verified under its canary (`fault`: the store or its
    /// read-back faulted). Returns why the canary fails now, if it does.
    fn canary_counts(&self, generation: u32, fault: bool) -> Option<String> {
        let mut canary = self.canary.lock();
        let c = canary.as_mut().filter(|c| c.generation == generation && c.state == CanaryState::Running)?;
        if fault {
            c.faults += 1;
            // More than a tenth of its stores faulted (at least 3): the new code is not fit.
            if c.faults >= 3 && c.faults * 10 > c.verified + c.faults {
                return Some(format!("{} of its first {} stores faulted", c.faults, c.verified + c.faults));
            }
            return None;
        }
        c.verified += 1;
        if c.verified >= c.stores {
            c.state = CanaryState::Passed;
            self.canary_generation.store(0, Ordering::Release);
            tracing::info!(pool = %self.name, generation, stores = c.verified, "canary passed: the generation is verified");
        }
        None
    }

    /// The canary of `generation` failed for `reason`: the previous generation's chain becomes
    /// current again (a new pool's stores are disabled). Called without any shard locked.
    fn roll_back(&self, generation: u32, reason: String) {
        let previous = {
            let mut canary = self.canary.lock();
            let Some(c) = canary.as_mut().filter(|c| c.generation == generation && c.state == CanaryState::Running)
            else {
                return; // Another store already rolled it back.
            };
            c.reason = Some(reason.clone());
            c.state = if c.previous.is_some() { CanaryState::RolledBack } else { CanaryState::Disabled };
            c.previous.clone()
        };
        PoolStats::add(&self.stats.counters.canary_rollbacks, 1);
        let chain = self.chain().describe_versions();
        match previous {
            // Recorded before it is current, as a swap is; a rollback that cannot be recorded
            // (or started) disables stores rather than run unrecorded.
            Some(previous) => match self.install_recorded(previous.chain.clone(), false) {
                Ok(id) => {
                    if let Some(c) = self.canary.lock().as_mut() {
                        c.replaced_by = Some(id);
                    }
                    tracing::error!(pool = %self.name, generation, %chain, rolled_back_to = previous.id, now = id, "canary failed, pool rolled back: {reason}");
                }
                Err(e) => {
                    self.enabled.store(false, Ordering::Relaxed);
                    tracing::error!(pool = %self.name, generation, %chain, "canary failed and the previous chain cannot start again or be recorded ({e}); stores disabled: {reason}");
                }
            },
            None => {
                self.enabled.store(false, Ordering::Relaxed);
                self.canary_generation.store(0, Ordering::Release);
                tracing::error!(pool = %self.name, generation, %chain, "canary failed on a new pool; stores disabled: {reason}");
                // The catalog keeps the pool disabled across a restart.
                if let Some(record) = self.recorder.get()
                    && let Err(e) = record(self, &self.current_generation())
                {
                    tracing::error!(pool = %self.name, "the catalog could not record the disabled pool: {e}");
                }
            }
        }
    }

    fn context<'a>(&'a self, generation: u32, chain: &'a Chain, pages: &'a Arc<PageShard>) -> ChainContext<'a> {
        ChainContext {
            engine: &self.engine,
            chain,
            limits: self.sandbox,
            page_size: self.page_size,
            pages,
            stats: &self.stats,
            pool: &self.name,
            generation,
        }
    }

    /// After a change: with a sync database, returns once the change is on disk. A database
    /// that cannot flush disables the pool (stores are refused from then on) and says so.
    fn make_durable(&self) -> Result<(), ()> {
        let Some(disk) = &self.disk else { return Ok(()) };
        disk.make_durable().map_err(|e| {
            if self.enabled.swap(false, Ordering::Relaxed) {
                tracing::error!(pool = %self.name, "pool disabled: its database cannot be flushed: {e}");
            }
        })
    }

    /// Whether pages are checksummed when stored and checked when loaded.
    pub fn integrity(&self) -> bool {
        self.integrity
    }

    /// Whether stored pages survive a restart (the store is granted `storage`).
    pub fn is_persistent(&self) -> bool {
        self.disk.is_some()
    }

    /// The pool's database, if it is persistent.
    pub fn disk(&self) -> Option<&Arc<PoolDisk>> {
        self.disk.as_ref()
    }

    /// The durability mode (persistent pools).
    pub fn durability(&self) -> Option<Durability> {
        self.disk.as_ref().map(|d| d.durability())
    }

    /// Changes the durability mode of a persistent pool.
    pub fn set_durability(&self, durability: Durability) -> Result<(), PoolError> {
        let disk = self.disk.as_ref().ok_or_else(|| PoolError::NotPersistent(self.name.clone()))?;
        durability.check()?;
        disk.set_durability(durability);
        Ok(())
    }

    fn shard_of(&self, offset: u64) -> &Mutex<Shard> {
        &self.shards[(offset as usize) & (self.shards.len() - 1)]
    }

    fn check_len(&self, len: usize) -> Result<(), OpError> {
        if len == self.page_size as usize {
            Ok(())
        } else {
            Err(OpError::WrongPageSize { pool: self.name.clone(), expected: self.page_size, got: len })
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per page.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The current backend chain (the one new stores use).
    pub fn chain(&self) -> Arc<Chain> {
        self.current.read().chain.clone()
    }

    /// The current generation.
    pub fn current_generation(&self) -> Arc<Generation> {
        self.current.read().clone()
    }

    /// Every generation that holds pages, and the current one, with the pages each holds,
    /// oldest first. Exact: it waits for each shard (the catalog needs every generation with
    /// pages). Readers that must not wait use [`Pool::generations_seen`].
    pub fn generations(&self) -> Vec<(Generation, u64)> {
        let views: Vec<ShardView> = self.shards.iter().map(|shard| ShardView::of(&shard.lock())).collect();
        self.merge_generations(views)
    }

    /// [`Pool::generations`] as [`Pool::shard_views`] see them: never waits on a shard.
    pub fn generations_seen(&self) -> Vec<(Generation, u64)> {
        self.merge_generations(self.shard_views())
    }

    /// What each shard holds now, or — for a shard locked by an operation (a plugin call, which
    /// a remote store may stretch to its timeout) — what it held when last seen free: a
    /// reader of statistics never waits on a plugin call. Views lag by at most one operation
    /// per busy shard.
    fn shard_views(&self) -> Vec<ShardView> {
        let take = |(shard, seen): (&Mutex<Shard>, &Mutex<ShardView>)| match shard.try_lock() {
            Some(shard) => {
                let view = ShardView::of(&shard);
                drop(shard);
                *seen.lock() = view.clone();
                view
            }
            None => seen.lock().clone(),
        };
        self.shards.iter().zip(self.shard_views.iter()).map(take).collect()
    }

    fn merge_generations(&self, views: Vec<ShardView>) -> Vec<(Generation, u64)> {
        let current = self.current_generation();
        let mut all: Vec<(Generation, u64)> = vec![((*current).clone(), 0)];
        for (generation, held) in views.into_iter().flat_map(|v| v.generations) {
            match all.iter_mut().find(|(g, _)| g.id == generation.id) {
                Some((_, total)) => *total += held,
                None if held > 0 => all.push((generation, held)),
                None => {}
            }
        }
        all.sort_by_key(|(g, _)| g.id);
        all
    }

    /// The sandbox limits of the pool's plugin instances.
    pub fn sandbox(&self) -> SandboxLimits {
        self.sandbox
    }

    /// How many shards the pool has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// When the pool was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    // ----- the contract -----

    /// Offers a page. See contract.md §2: if the offset is present, the old copy is dropped
    /// from every backend first, so whatever happens next, stale data cannot be returned.
    pub fn store(&self, offset: u64, page: &[u8]) -> Result<StoreOutcome, OpError> {
        self.check_len(page.len())?;
        self.check_not_owned()?;
        Ok(self.store_bytes(offset, page))
    }

    /// The largest record a store-only pool takes (its store's I/O buffer).
    pub fn max_record(&self) -> usize {
        tmem_api::abi::io_capacity(self.page_size) as usize
    }

    fn check_record_pool(&self) -> Result<(), OpError> {
        if self.chain().links().len() == 1 { Ok(()) } else { Err(OpError::NotARecordPool(self.name.clone())) }
    }

    /// Stores a **record**: bytes another host's chain already encoded (1 byte up to
    /// [`Pool::max_record`]), kept as they are by a pool whose chain is a lone store — how a
    /// peer host keeps its peers' pages. Every rule of [`Pool::store`] applies.
    pub fn store_record(&self, offset: u64, record: &[u8]) -> Result<StoreOutcome, OpError> {
        self.check_not_owned()?;
        self.check_record_pool()?;
        if record.is_empty() || record.len() > self.max_record() {
            return Err(OpError::WrongRecordSize {
                pool: self.name.clone(),
                max: self.max_record(),
                got: record.len(),
            });
        }
        Ok(self.store_bytes(offset, record))
    }

    /// Loads a record stored by [`Pool::store_record`] (`None`: absent).
    pub fn load_record(&self, offset: u64) -> Result<Option<Vec<u8>>, OpError> {
        self.check_record_pool()?;
        let mut buf = vec![0u8; self.max_record()];
        let exclusive = self.exclusive_gets.load(Ordering::Relaxed);
        // An exclusive load whose removal is not durable still hands the record over: the
        // peer holds the only sure copy now (the pool has disabled itself and logged it).
        Ok(self.load_into(offset, &mut buf, exclusive, false)?.map(|(len, _)| {
            buf.truncate(len);
            buf
        }))
    }

    fn store_bytes(&self, offset: u64, page: &[u8]) -> StoreOutcome {
        let start = Instant::now();
        let mut shard = self.shard_of(offset).lock();
        let mut replaced = shard.pages.entry(offset).is_some();
        if let Some(old) = shard.pages.entry(offset) {
            // The duplicate-store rule: invalidate before trying the new store.
            PoolStats::add(&self.stats.counters.duplicate_entry, 1);
            self.drop_stored(&mut shard, offset, old);
        } else if let Some(tier) = &shard.tier
            && tier.lower.invalidate_inner(offset).unwrap_or(true)
        {
            // The same rule across tiers: a demoted copy goes before the new store is tried
            // (under this shard's lock, so no load sees it in between).
            PoolStats::add(&self.stats.counters.duplicate_entry, 1);
            replaced = true;
        }
        let (mut outcome, canary_failed) = self.try_store(&mut shard, offset, page);
        let stored_entry = shard.pages.entry(offset);
        drop(shard);
        if let Some((generation, why)) = canary_failed {
            self.roll_back(generation, why);
        }
        let stored = !matches!(outcome, StoreOutcome::Rejected(_));
        if (stored || replaced) && self.make_durable().is_err() {
            // A sync pool acknowledges only what is on disk (the dropped old copy included).
            // A store that is not is refused, and its page leaves the map: a refused page the
            // map still named would be served after the frontend kept its own copy.
            if stored {
                outcome = StoreOutcome::Rejected(RejectReason::AllocFail);
                let mut shard = self.shard_of(offset).lock();
                // Only if it is still this store's page (another store of the offset may have
                // replaced it meanwhile, with its own outcome).
                if let Some(entry) = shard.pages.entry(offset).filter(|e| Some(*e) == stored_entry) {
                    self.drop_stored(&mut shard, offset, entry);
                }
            }
        }
        let c = &self.stats.counters;
        match outcome {
            StoreOutcome::Rejected(reason) => {
                PoolStats::add(&c.failed_stores, 1);
                PoolStats::add(self.reason_counter(reason), 1);
            }
            _ => PoolStats::add(&c.succ_stores, 1),
        }
        self.stats.latency(Op::Store).record(start.elapsed());
        outcome
    }

    /// Drops a present page (`entry` is its entry): the generation that stored it is told,
    /// then the host removes the entry and the record itself, whatever the store did.
    fn drop_stored(&self, shard: &mut Shard, offset: u64, entry: PageEntry) {
        let slot = shard.slot_of(entry.generation());
        let GenerationSlot { chain, instances, .. } = &mut shard.generations[slot];
        instances.delete(&self.context(entry.generation(), chain, &shard.pages), offset);
        shard.pages.remove(offset);
        shard.release(slot, self);
        self.forget(EncodedKind::from_code(entry.kind()));
    }

    /// Tries the store in a locked shard; also returns a canary failure (the generation and
    /// why), for the caller to roll back once the shard is unlocked.
    fn try_store(&self, shard: &mut Shard, offset: u64, page: &[u8]) -> (StoreOutcome, Option<(u32, String)>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return (StoreOutcome::Rejected(RejectReason::Disabled), None);
        }
        if !self.admit(shard) {
            return (StoreOutcome::Rejected(RejectReason::PoolLimit), None);
        }
        let slot = shard.current_slot(self);
        let Shard { generations, pages, scratch, .. } = shard;
        let GenerationSlot { id, chain, instances, held } = &mut generations[slot];
        let cx = self.context(*id, chain, pages);
        let checksum = self.integrity.then(|| crc32c::crc32c(page));
        let under_canary = self.canary_generation.load(Ordering::Acquire) == *id;
        if !under_canary && !scratch.is_empty() {
            *scratch = Vec::new();
        }
        let kind = match instances.put(&cx, offset, page, checksum) {
            Ok(kind) => kind,
            Err(failure) => {
                let canary_failed = match (&failure, under_canary) {
                    (PutFailure::Fault(_), true) => self.canary_counts(*id, true).map(|why| (*id, why)),
                    _ => None,
                };
                // Whatever a failed put left behind in the page store goes: the map bit is
                // clear, so those bytes could only leak. A put the host refused says why.
                let reason = match (pages.abort_put(offset), failure) {
                    (Some(PutRefusal::PoolLimit), _) => RejectReason::PoolLimit,
                    (Some(PutRefusal::NoMemory | PutRefusal::Disk), _) => RejectReason::AllocFail,
                    (Some(PutRefusal::ForeignOffset | PutRefusal::TooLong), _) => RejectReason::PluginFault,
                    (None, PutFailure::Refused(code)) => RejectReason::from_status(code),
                    (None, PutFailure::Fault(_)) => RejectReason::PluginFault,
                };
                return (StoreOutcome::Rejected(reason), canary_failed);
            }
        };
        if pages.commit_put(offset).is_err() {
            // No room to index the page: the store is told it is gone, and refused.
            instances.delete(&cx, offset);
            pages.remove(offset);
            return (StoreOutcome::Rejected(RejectReason::AllocFail), None);
        }
        if under_canary {
            // The canary: read the page back through the new chain before acknowledging it.
            scratch.resize(self.max_record(), 0);
            let back = instances.get(&cx, offset, scratch, false);
            let verdict = match back {
                Ok(len) if scratch[..len] == *page => Ok(()),
                Ok(_) => Err((RejectReason::PluginFault, Some(format!("offset {offset} read back different bytes")))),
                Err(GetFailure::Fault(_)) => Err((RejectReason::PluginFault, self.canary_counts(*id, true))),
                Err(GetFailure::Unavailable) => Err((RejectReason::Unavailable, None)),
                Err(other) => {
                    Err((RejectReason::PluginFault, Some(format!("offset {offset} did not read back: {other}"))))
                }
            };
            if let Err((reason, failed)) = verdict {
                // Not acknowledged: the page goes, through the generation that stored it.
                instances.delete(&cx, offset);
                pages.remove(offset);
                return (StoreOutcome::Rejected(reason), failed.map(|why| (*id, why)));
            }
            self.canary_counts(*id, false);
        }
        *held += 1;
        self.remember(kind);
        let outcome = if self.writethrough.load(Ordering::Relaxed) {
            StoreOutcome::StoredWritethrough
        } else {
            StoreOutcome::Stored
        };
        (outcome, None)
    }

    fn reason_counter(&self, reason: RejectReason) -> &AtomicU64 {
        let c = &self.stats.counters;
        match reason {
            RejectReason::PoolLimit => &c.pool_limit_hit,
            RejectReason::CompressPoor => &c.reject_compress_poor,
            RejectReason::CompressFail => &c.reject_compress_fail,
            RejectReason::AllocFail => &c.reject_alloc_fail,
            RejectReason::PluginFault => &c.reject_plugin_fault,
            RejectReason::Unavailable => &c.remote_unavailable,
            RejectReason::Disabled => &c.reject_disabled,
        }
    }

    /// Capacity check with zswap's hysteresis. A writethrough pool first reclaims pages of
    /// this shard (their durable copy is the frontend's) before refusing.
    fn admit(&self, shard: &mut Shard) -> bool {
        if self.at_limit() && self.writethrough.load(Ordering::Relaxed) {
            self.reclaim(shard);
        }
        if self.at_limit() {
            self.full.store(true, Ordering::Relaxed);
            return false;
        }
        if self.full.load(Ordering::Relaxed) {
            if !self.below_accept_threshold() {
                return false;
            }
            self.full.store(false, Ordering::Relaxed);
        }
        true
    }

    fn usage(&self) -> (u64, u64) {
        (self.stats.counters.stored_pages.load(Ordering::Relaxed), self.total_size())
    }

    /// `pool_total_size`: bytes kept in host memory, or the database's size on disk.
    fn total_size(&self) -> u64 {
        match &self.disk {
            Some(disk) => disk.size_on_disk(),
            None => self.stats.counters.pool_total_size.load(Ordering::Relaxed),
        }
    }

    fn at_limit(&self) -> bool {
        let (pages, bytes) = self.usage();
        pages >= self.max_pages.load(Ordering::Relaxed) || bytes >= self.max_bytes.load(Ordering::Relaxed)
    }

    fn below_accept_threshold(&self) -> bool {
        let (pages, bytes) = self.usage();
        let pct = self.accept_threshold_percent.load(Ordering::Relaxed) as u128;
        let below = |used: u64, limit: u64| limit == UNLIMITED || (used as u128) * 100 < limit as u128 * pct;
        below(pages, self.max_pages.load(Ordering::Relaxed)) && below(bytes, self.max_bytes.load(Ordering::Relaxed))
    }

    /// Drops writethrough pages of one shard until the pool is below its accept threshold
    /// (at most 32 per call, so one store never does unbounded work).
    fn reclaim(&self, shard: &mut Shard) {
        let mut victims = Vec::with_capacity(32);
        shard.pages.some_offsets(32, &mut victims);
        for offset in victims {
            if self.below_accept_threshold() {
                break;
            }
            if let Some(entry) = shard.pages.entry(offset) {
                self.drop_stored(shard, offset, entry);
                PoolStats::add(&self.stats.counters.reclaimed_pages, 1);
            }
        }
    }

    /// Counts a page in (`held = true`) or out of the pool's gauges.
    fn account(&self, kind: EncodedKind, held: bool) {
        let c = &self.stats.counters;
        let bump = |gauge: &AtomicU64| if held { PoolStats::add(gauge, 1) } else { PoolStats::sub(gauge, 1) };
        bump(&c.stored_pages);
        match kind {
            EncodedKind::SameFilled => bump(&c.same_filled_pages),
            EncodedKind::Incompressible => bump(&c.stored_incompressible_pages),
            EncodedKind::Normal => {}
        }
    }

    fn remember(&self, kind: EncodedKind) {
        self.account(kind, true)
    }

    fn forget(&self, kind: EncodedKind) {
        self.account(kind, false)
    }

    /// Loads the page last stored at `offset` into `page`. An absent offset calls no backend.
    /// With exclusive gets the page is also removed, and the outcome says so.
    pub fn load(&self, offset: u64, page: &mut [u8]) -> Result<LoadOutcome, OpError> {
        self.load_inner(offset, page, self.exclusive_gets.load(Ordering::Relaxed))
    }

    fn load_inner(&self, offset: u64, page: &mut [u8], exclusive: bool) -> Result<LoadOutcome, OpError> {
        self.check_len(page.len())?;
        Ok(match self.load_into(offset, page, exclusive, true)? {
            Some((_, false)) => {
                return Err(OpError::NotDurable { pool: self.name.clone(), op: "exclusive load", offset });
            }
            Some(_) => LoadOutcome::Loaded { exclusive },
            None => LoadOutcome::Absent,
        })
    }

    /// Loads without removing the page, whatever the mode: the first half of a move a frontend
    /// makes durable in its new place before the page leaves the pool ([`Pool::taken`]).
    pub fn load_keeping(&self, offset: u64, page: &mut [u8]) -> Result<LoadOutcome, OpError> {
        self.load_inner(offset, page, false)
    }

    /// The second half of such a move: the page is durable elsewhere, so it leaves the pool
    /// (an invalidate; with `written_back`, a shrink's, counted in `written_back_pages`).
    pub fn taken(&self, offset: u64, written_back: bool) -> Result<bool, OpError> {
        let present = self.invalidate_page(offset)?;
        if present && written_back {
            PoolStats::add(&self.stats.counters.written_back_pages, 1);
        }
        Ok(present)
    }

    /// Loads and invalidates in one step, whatever the mode: how a frontend takes a page back
    /// when the host shrinks the pool. Counted in `written_back_pages`.
    pub fn take(&self, offset: u64, page: &mut [u8]) -> Result<LoadOutcome, OpError> {
        let outcome = self.load_inner(offset, page, true)?;
        if outcome != LoadOutcome::Absent {
            PoolStats::add(&self.stats.counters.written_back_pages, 1);
        }
        Ok(outcome)
    }

    /// Loads into `out` (exactly filling it when `exact`); the length and whether an exclusive
    /// load's removal is durable, or `None` if absent.
    fn load_into(
        &self,
        offset: u64,
        out: &mut [u8],
        exclusive: bool,
        exact: bool,
    ) -> Result<Option<(usize, bool)>, OpError> {
        let start = Instant::now();
        let mut shard = self.shard_of(offset).lock();
        let Some(entry) = shard.pages.entry(offset) else {
            let Some(tier) = shard.tier.clone() else { return Ok(None) };
            if shard.moving == Some(offset) {
                // Dropped (invalidated, taken) while the mover copied it down: absent.
                return Ok(None);
            }
            let got = self.load_lower(&tier, &mut shard, offset, out, exclusive, exact);
            drop(shard);
            if let Ok(Some(_)) = got {
                PoolStats::add(&self.stats.counters.loads, 1);
                self.stats.latency(Op::Load).record(start.elapsed());
            }
            return got;
        };
        if shard.tier.is_some() && !exclusive {
            shard.pages.touch(offset);
        }
        let slot = shard.slot_of(entry.generation());
        let Shard { generations, pages, .. } = &mut *shard;
        let GenerationSlot { chain, instances, .. } = &mut generations[slot];
        let result =
            instances.get(&self.context(entry.generation(), chain, pages), offset, out, exact).and_then(|len| {
                match entry.checksum() {
                    Some(sum) if crc32c::crc32c(&out[..len]) != sum => Err(GetFailure::Integrity),
                    _ => Ok(len),
                }
            });
        if result.is_err() {
            // Whatever a failed load left in the caller's buffer (a corrupt decode) is not
            // the page: no caller may see it.
            out.fill(0);
        }
        let described = result.is_err().then(|| chain.describe_versions());
        let removed = result.is_ok() && exclusive;
        if removed {
            self.drop_stored(&mut shard, offset, entry);
        }
        drop(shard);
        // A removal the database cannot make durable is reported to the caller (a crash could
        // bring the page back); the page is in `out` all the same, and out of the map.
        let durable = !removed || self.make_durable().is_ok();
        let c = &self.stats.counters;
        self.stats.latency(Op::Load).record(start.elapsed());
        match result {
            Ok(len) => {
                PoolStats::add(&c.loads, 1);
                Ok(Some((len, durable)))
            }
            Err(reason) => {
                PoolStats::add(&c.load_failures, 1);
                match reason {
                    GetFailure::Decode => PoolStats::add(&c.decompress_fail, 1),
                    GetFailure::Integrity => PoolStats::add(&c.integrity_failures, 1),
                    _ => {}
                }
                let (chain, generation) = (described.as_deref().unwrap_or_default(), entry.generation());
                tracing::error!(pool = %self.name, offset, chain, generation, "DATA LOSS RISK: load of a present page failed: {reason}");
                Err(OpError::LoadFailed { pool: self.name.clone(), offset, reason })
            }
        }
    }

    /// Drops one page; returns whether it was present (only then is it counted). A page
    /// demoted to the lower tier is dropped there. The page is gone from the map either way;
    /// an error says its removal is not on disk (a sync pool whose database cannot flush), so a
    /// crash may bring it back.
    pub fn invalidate_page(&self, offset: u64) -> Result<bool, OpError> {
        self.invalidate_inner(offset)
    }

    fn invalidate_inner(&self, offset: u64) -> Result<bool, OpError> {
        let start = Instant::now();
        let mut shard = self.shard_of(offset).lock();
        let Some(entry) = shard.pages.entry(offset) else {
            let dropped = match &shard.tier {
                Some(tier) => tier.lower.invalidate_inner(offset),
                None => Ok(false),
            };
            drop(shard);
            if dropped.as_ref().is_ok_and(|&d| d) {
                PoolStats::add(&self.stats.counters.invalidates, 1);
                self.stats.latency(Op::InvalidatePage).record(start.elapsed());
            }
            return dropped;
        };
        self.drop_stored(&mut shard, offset, entry);
        drop(shard);
        let durable = self.make_durable();
        PoolStats::add(&self.stats.counters.invalidates, 1);
        self.stats.latency(Op::InvalidatePage).record(start.elapsed());
        durable.map_err(|()| OpError::NotDurable { pool: self.name.clone(), op: "invalidate", offset })?;
        Ok(true)
    }

    /// Drops every page (swapoff): the map is cleared and every backend emptied, the lower
    /// tier's too. An error says the clearing is not on disk (see [`Pool::invalidate_page`]).
    pub fn invalidate_area(&self) -> Result<(), OpError> {
        let start = Instant::now();
        // No mover pass runs meanwhile (it could move a page of a shard not yet cleared
        // into a lower tier already cleared), and the tier does not change.
        let _tiering = self.tiering.lock();
        let tier = self.tier();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard { generations, pages, .. } = &mut *shard;
            if pages.is_empty() {
                continue;
            }
            for GenerationSlot { id, chain, instances, held } in generations.iter_mut() {
                instances.clear(&self.context(*id, chain, pages));
                *held = 0;
            }
            let newest = generations.len().saturating_sub(1);
            for gone in generations.drain(..newest) {
                self.slot_removed(gone.id);
            }
            pages.drain(|entry| self.forget(EncodedKind::from_code(entry.kind())));
        }
        let below = match &tier {
            Some(tier) => tier.lower.invalidate_area(),
            None => Ok(()),
        };
        let durable = self.make_durable();
        self.stats.latency(Op::InvalidateArea).record(start.elapsed());
        durable.map_err(|()| OpError::NotDurable { pool: self.name.clone(), op: "invalidate_area", offset: 0 })?;
        below
    }

    /// Pages held now.
    pub fn curr_pages(&self) -> u64 {
        self.stats.counters.stored_pages.load(Ordering::Relaxed)
    }

    /// Pages held now by this pool and the tiers below it (what the pool's frontends have
    /// stored and not yet taken back or invalidated).
    pub fn pages_with_tiers(&self) -> u64 {
        self.curr_pages() + self.tier().map_or(0, |tier| tier.lower.pages_with_tiers())
    }

    /// Makes room ahead in every shard's index for the offsets below `offsets` (a block
    /// device's pages), so that its stores never grow an index map on the I/O path. `false`
    /// if the budget refused (the maps then grow on demand).
    pub fn reserve_offsets(&self, offsets: u64) -> bool {
        self.shards.iter().all(|shard| shard.lock().pages.reserve_offsets(offsets))
    }

    /// Whether `offset` is present (its bit is set), in this pool or its lower tier.
    pub fn contains(&self, offset: u64) -> bool {
        let shard = self.shard_of(offset).lock();
        shard.pages.contains(offset) || shard.tier.as_ref().is_some_and(|tier| tier.lower.contains(offset))
    }

    /// Whether `offset` is present in this pool itself (not in its lower tier).
    pub fn holds(&self, offset: u64) -> bool {
        self.shard_of(offset).lock().pages.contains(offset)
    }

    // ----- tiers -----

    /// The pool's lower tier, if it has one.
    pub fn tier(&self) -> Option<Arc<Tier>> {
        self.tier.read().clone()
    }

    /// Makes `tier` the pool's lower tier (a new pool's, or a restored pair's: the host has
    /// checked the pair) and marks the lower pool owned by this one.
    pub(crate) fn set_tier(&self, tier: Tier) {
        let _tiering = self.tiering.lock();
        self.replace_tier(Some(tier));
    }

    /// Holds off the mover's passes and `invalidate_area` on this pool while the host changes
    /// its tier ([`Pool::replace_tier`], [`Pool::promote_all`]).
    pub(crate) fn lock_tiering(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.tiering.lock()
    }

    /// Makes `tier` the pool's lower tier, or none; returns the one it replaces. The caller
    /// holds [`Pool::lock_tiering`] (no pass is under way) and has checked the pair, and no
    /// page may be below a tier whose lower pool changes ([`Pool::promote_all`]). The new
    /// lower pool is marked owned by this one first; then every shard's lock is taken at
    /// once (in order: nothing else holds two) and the tier changes in all of them, so an
    /// operation sees the old tier or the new one for its whole course; then a lower pool
    /// that is no longer one is freed (an ordinary pool again).
    pub(crate) fn replace_tier(&self, tier: Option<Tier>) -> Option<Arc<Tier>> {
        let new = tier.map(Arc::new);
        if let Some(tier) = &new {
            tier.lower.set_upper(Some(&self.name));
            self.arena.reserve_for_demotions();
        }
        let mut shards: Vec<_> = self.shards.iter().map(|shard| shard.lock()).collect();
        for shard in shards.iter_mut() {
            shard.tier = new.clone();
        }
        let old = std::mem::replace(&mut *self.tier.write(), new.clone());
        drop(shards);
        if let Some(old) = &old
            && new.as_ref().is_none_or(|new| !Arc::ptr_eq(&new.lower, &old.lower))
        {
            old.lower.set_upper(None);
        }
        old
    }

    /// Brings every page below back up (the pages of the lower pool and of the tiers below
    /// it), before the tier is removed: each one as a promotion does it, under its shard's
    /// lock — stored up, durable up, then dropped below — so it is in exactly one tier at
    /// any moment a crash may pick. The caller holds [`Pool::lock_tiering`] (no pass moves a
    /// page down meanwhile; frontends keep storing and loading). Returns how many came up;
    /// `Err(below)`: a page could not come up (this pool refused it: its limits, the memory
    /// budget, its database, disabled; or it could not be read below) — those that did stay
    /// up, and `below` pages are still below: `Err((promoted, below, why))`.
    pub(crate) fn promote_all(&self, tier: &Tier) -> Result<u64, (u64, u64, String)> {
        let mut promoted = 0;
        let mut page = vec![0u8; self.page_size as usize];
        let mut offsets = Vec::new();
        let mut below = Some(tier.lower.clone());
        while let Some(pool) = below {
            for shard in pool.shards.iter() {
                offsets.clear();
                shard.lock().pages.some_offsets(usize::MAX, &mut offsets);
                for &offset in &offsets {
                    match self.promote_one(tier, offset, &mut page) {
                        Ok(up) => promoted += up as u64,
                        Err(why) => return Err((promoted, tier.lower.pages_with_tiers(), why)),
                    }
                }
            }
            below = pool.tier().map(|t| t.lower.clone());
        }
        Ok(promoted)
    }

    /// One page of [`Pool::promote_all`]: `Ok(true)` it came up, `Ok(false)` nothing to do
    /// (gone meanwhile, or held up already: the copy below is dropped, as a restore does).
    fn promote_one(&self, tier: &Tier, offset: u64, page: &mut [u8]) -> Result<bool, String> {
        let start = Instant::now();
        let mut shard = self.shard_of(offset).lock();
        if shard.pages.entry(offset).is_some() {
            let _ = tier.lower.invalidate_inner(offset);
            return Ok(false);
        }
        match tier.lower.load_into(offset, page, false, true) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::error!(pool = %self.name, offset, "tiers: a page below could not be read to bring it up: {e}");
                return Err(format!("offset {offset} could not be read below: {e}"));
            }
        }
        let (outcome, canary_failed) = self.try_store(&mut shard, offset, page);
        if matches!(outcome, StoreOutcome::Rejected(_)) {
            drop(shard);
            if let Some((generation, why)) = canary_failed {
                self.roll_back(generation, why);
            }
            let why = match outcome {
                StoreOutcome::Rejected(reason) => reason.name(),
                _ => "refused",
            };
            tracing::warn!(pool = %self.name, offset, why, "tiers: a page below could not come up");
            return Err(format!("this pool refused offset {offset}: {why}"));
        }
        if self.make_durable().is_err() {
            if let Some(entry) = shard.pages.entry(offset) {
                self.drop_stored(&mut shard, offset, entry);
            }
            return Err("this pool's database cannot flush".into());
        }
        let _ = tier.lower.invalidate_inner(offset);
        drop(shard);
        PoolStats::add(&self.stats.counters.tier_promoted_pages, 1);
        self.stats.latency(Op::Promote).record(start.elapsed());
        Ok(true)
    }

    /// Marks the pool owned by `upper` (its lower tier), or by nobody.
    pub(crate) fn set_upper(&self, upper: Option<&str>) {
        *self.upper.lock() = upper.map(str::to_string);
        self.is_lower.store(upper.is_some(), Ordering::Release);
    }

    /// The upper pool that owns this one as its lower tier.
    pub fn upper(&self) -> Option<String> {
        self.upper.lock().clone()
    }

    /// Refuses direct use of a pool that is another pool's lower tier.
    pub fn check_not_owned(&self) -> Result<(), OpError> {
        if !self.is_lower.load(Ordering::Acquire) {
            return Ok(());
        }
        let upper = self.upper().unwrap_or_default();
        Err(TierError::Owned { pool: self.name.clone(), upper }.into())
    }

    /// A load that missed this pool's map, in its locked `shard`: served from the lower tier
    /// (which removes it, with `exclusive`). With [`Promote::OnLoad`] the page is stored up
    /// again, then dropped from the lower tier — durable up before it goes down; if this pool
    /// refuses it, it stays down. Either way it is in exactly one map when the lock drops.
    fn load_lower(
        &self,
        tier: &Tier,
        shard: &mut Shard,
        offset: u64,
        out: &mut [u8],
        exclusive: bool,
        exact: bool,
    ) -> Result<Option<(usize, bool)>, OpError> {
        // `durable`: whether an exclusive load's removal below is on disk.
        let Some((len, durable)) = tier.lower.load_into(offset, out, exclusive, exact)? else {
            return Ok(None);
        };
        let promote = tier.spec.promote == Promote::OnLoad
            && !exclusive
            && len == self.page_size as usize
            // A canary's verdict needs the unlocked shard to act on: promotion waits for it.
            && self.canary_generation.load(Ordering::Acquire) == 0;
        if !promote {
            return Ok(Some((len, durable)));
        }
        let start = Instant::now();
        let (outcome, _) = self.try_store(shard, offset, &out[..len]);
        if matches!(outcome, StoreOutcome::Rejected(_)) {
            return Ok(Some((len, durable)));
        }
        if self.make_durable().is_err() {
            // Not durable up: it stays down only.
            if let Some(entry) = shard.pages.entry(offset) {
                self.drop_stored(shard, offset, entry);
            }
            return Ok(Some((len, durable)));
        }
        let _ = tier.lower.invalidate_inner(offset);
        PoolStats::add(&self.stats.counters.tier_promoted_pages, 1);
        self.stats.latency(Op::Promote).record(start.elapsed());
        Ok(Some((len, durable)))
    }

    /// One pass of the tiers' mover over this pool: ages every page by the units elapsed
    /// since the last pass (see [`crate::page_index::PageIndex::age`]) and demotes those idle
    /// for the tier's `idle_seconds`, at most [`crate::tier::MAX_DEMOTIONS_PER_SHARD`] per
    /// shard. Nothing for a pool without a tier. Allocates nothing: the victims and the page
    /// buffer are the tier's, preallocated.
    pub fn run_tier_pass(&self) -> TierPass {
        let _tiering = self.tiering.lock();
        let Some(tier) = self.tier() else { return TierPass::default() };
        self.tier_pass(&tier, self.under_pressure(&tier))
    }

    /// Whether the mover thread should run a pass now: a unit has elapsed since the last one
    /// (a pass ages pages by whole units), or the budget is under pressure (every tick: a
    /// pass then counts a unit anyway).
    pub fn tier_pass_due(&self) -> bool {
        self.tier().is_some_and(|tier| tier.due() || self.under_pressure(&tier))
    }

    /// A mover pass as under budget pressure whatever the budget says: the memory governor's,
    /// run before it lowers the budget's target below what is held (so the lower tier can
    /// still be charged for what it takes).
    pub fn run_tier_pass_under_pressure(&self) -> TierPass {
        let _tiering = self.tiering.lock();
        let Some(tier) = self.tier() else { return TierPass::default() };
        self.tier_pass(&tier, true)
    }

    /// A pass; the caller holds the `tiering` lock, and `tier` is the pool's tier.
    fn tier_pass(&self, tier: &Tier, pressure: bool) -> TierPass {
        let mut guard = tier.mover.lock();
        let state = &mut *guard;
        let unit = tier.unit().max(Duration::from_millis(1));
        let elapsed = state.last.elapsed();
        let units = (elapsed.as_nanos() / unit.as_nanos()).min(crate::page_index::MAX_AGE as u128) as u32;
        if units == crate::page_index::MAX_AGE as u32 {
            state.last = Instant::now();
        } else {
            state.last += unit * units;
        }
        let mut ages = [0u64; crate::page_index::MAX_AGE as usize + 1];
        // Under pressure the clock runs at least a unit a pass (as the kernel's LRU ages faster
        // under reclaim): with a long `idle_seconds`, pages not used since the last pass must
        // still be told from those just used.
        let units = if pressure { units.max(1) } else { units };
        let mut pass = TierPass { pressure, ..TierPass::default() };
        // Every page ages; those idle for `idle_seconds` go down.
        for shard in self.shards.iter() {
            state.victims.clear();
            let victims = &mut state.victims;
            shard.lock().pages.age(units as u8, |offset, age| {
                ages[age as usize] += 1;
                pass.scanned += 1;
                if age >= IDLE_UNITS {
                    pass.idle += 1;
                    if victims.len() < victims.capacity() {
                        victims.push(offset);
                    }
                }
            });
            self.demote_all(tier, state, IDLE_UNITS, &mut pass, &mut ages);
        }
        // Under budget pressure, the coldest of the younger pages go too: the oldest age
        // present, one age per pass (never a page used since the last pass).
        let coldest = (1..IDLE_UNITS).rev().find(|&age| ages[age as usize] > 0);
        if let (true, Some(threshold)) = (pass.pressure, coldest) {
            pass.threshold = threshold;
            for shard in self.shards.iter() {
                state.victims.clear();
                let victims = &mut state.victims;
                // Ages by nothing: reads the ages (and resets pages used meanwhile to 0).
                shard.lock().pages.age(0, |offset, age| {
                    if age >= threshold && victims.len() < victims.capacity() {
                        victims.push(offset);
                    }
                });
                self.demote_all(tier, state, threshold, &mut pass, &mut ages);
            }
        }
        tier.publish(&ages, pass);
        pass
    }

    /// Demotes the victims the mover found in one shard (those still `threshold` old); a
    /// page moved down leaves the pass's count of pages per age.
    fn demote_all(
        &self,
        tier: &Tier,
        state: &mut crate::tier::MoverState,
        threshold: u8,
        pass: &mut TierPass,
        ages: &mut [u64],
    ) {
        for &offset in state.victims.iter() {
            match self.demote(tier, offset, threshold, &mut state.page) {
                Some(Ok(age)) => {
                    pass.demoted += 1;
                    ages[age as usize] = ages[age as usize].saturating_sub(1);
                }
                Some(Err(())) => pass.kept += 1,
                None => {}
            }
        }
    }

    /// Whether the host's memory budget is at least the tier's `pressure_percent` full.
    fn under_pressure(&self, tier: &Tier) -> bool {
        let budget = self.arena.budget();
        let limit = budget.limit();
        limit != u64::MAX && budget.used() as u128 * 100 >= limit as u128 * tier.spec.pressure_percent as u128
    }

    /// Moves one idle page down: decoded through the chain that stored it (under its shard's
    /// lock), stored through the lower pool's chain (durable there first, if this pool is
    /// persistent) **without the shard's lock** — a lower tier on disk may wait on memory,
    /// memory may wait on swap-out, and swap-out on this shard's I/O path — then, under the
    /// lock again, dropped here if its entry is unchanged (not used, stored, taken or dropped
    /// meanwhile), else the copy below is dropped. Meanwhile the page is served from here, and
    /// a load that misses it (dropped meanwhile) does not look below ([`Shard::moving`]).
    /// `Some(Ok(age))`: it moved, at that age; `Some(Err(()))`: it stays up (the lower pool
    /// refused it, or it could not be read back whole); `None`: it was used or dropped since
    /// the scan.
    fn demote(&self, tier: &Tier, offset: u64, threshold: u8, page: &mut [u8]) -> Option<Result<u8, ()>> {
        let start = Instant::now();
        let Ok(entry) = self.copy_for_demotion(offset, threshold, page)? else {
            return Some(Err(()));
        };
        let stored = !matches!(
            crate::memory::arena::demoting(|| tier.lower.store_bytes(offset, page)),
            StoreOutcome::Rejected(_)
        );
        // Not durable down: it must not leave a persistent upper pool.
        let flush_failed = || match (&self.disk, tier.lower.disk()) {
            (Some(_), Some(lower)) => !lower.durability().flushes_each_change() && lower.flush().is_err(),
            _ => false,
        };
        let durable = stored && !flush_failed();
        let mut shard = self.shard_of(offset).lock();
        shard.moving = None;
        let unchanged = shard.pages.entry(offset) == Some(entry);
        if !(durable && unchanged) {
            if stored {
                let _ = tier.lower.invalidate_inner(offset);
            }
            return if durable { None } else { Some(Err(())) };
        }
        self.drop_stored(&mut shard, offset, entry);
        drop(shard);
        let _ = self.make_durable();
        PoolStats::add(&self.stats.counters.tier_demoted_pages, 1);
        self.stats.latency(Op::Demote).record(start.elapsed());
        Some(Ok(entry.age()))
    }

    /// The first step of [`Pool::demote`], under the shard's lock: the page at `offset`, still
    /// `threshold` old, decoded into `page` and marked moving; its entry. `None`: used or
    /// dropped since the scan; `Some(Err(()))`: it could not be read back whole.
    fn copy_for_demotion(&self, offset: u64, threshold: u8, page: &mut [u8]) -> Option<Result<PageEntry, ()>> {
        let mut shard = self.shard_of(offset).lock();
        let entry = shard.pages.entry(offset)?;
        if entry.age() < threshold {
            return None;
        }
        let slot = shard.slot_of(entry.generation());
        let Shard { generations, pages, .. } = &mut *shard;
        let GenerationSlot { chain, instances, .. } = &mut generations[slot];
        let decoded = instances.get(&self.context(entry.generation(), chain, pages), offset, page, false);
        match decoded {
            Ok(len) if len == page.len() && entry.checksum().is_none_or(|sum| crc32c::crc32c(page) == sum) => {}
            // A record (a peer's page, already encoded) shorter than a page stays where it is.
            Ok(len) if len < page.len() => return Some(Err(())),
            _ => {
                // Not served wrong: the next load of it fails (and is counted) as it would have.
                tracing::warn!(pool = %self.name, offset, "tiers: an idle page did not read back whole; it stays up");
                return Some(Err(()));
            }
        }
        shard.moving = Some(offset);
        Some(Ok(entry))
    }

    /// Drops the lower tier's copies of pages this pool holds (left by a crash between a
    /// promotion's two steps): the upper copy wins. Run when the pair is restored.
    pub(crate) fn reconcile_tier(&self) -> u64 {
        let Some(tier) = self.tier() else { return 0 };
        let mut dropped = 0;
        let mut offsets = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            offsets.clear();
            shard.pages.some_offsets(usize::MAX, &mut offsets);
            for &offset in &offsets {
                if tier.lower.invalidate_inner(offset).unwrap_or(true) {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// "Partial swapoff": brings pages out of the pool until it holds at most `target_pages`.
    /// A writethrough pool drops pages (the frontend has them); otherwise connected frontends
    /// take them back.
    pub fn shrink(&self, target_pages: u64) -> Result<ShrinkReport, ShrinkError> {
        let mut report = ShrinkReport { before: self.curr_pages(), ..Default::default() };
        let frontend = self.frontends.read().first().cloned();
        if report.before > target_pages && frontend.is_none() && !self.writethrough.load(Ordering::Relaxed) {
            return Err(ShrinkError::NoFrontend(self.name.clone()));
        }
        while self.curr_pages() > target_pages {
            let want = (self.curr_pages() - target_pages).min(256) as usize;
            let victims = self.pick(want);
            if victims.is_empty() {
                break;
            }
            let progress = if self.writethrough.load(Ordering::Relaxed) {
                let mut dropped = 0;
                for &offset in &victims {
                    dropped += self.invalidate_page(offset)? as u64;
                }
                report.dropped += dropped;
                dropped
            } else {
                // What the frontend says it took is not trusted: progress is what left the
                // pool (a frontend that claims pages and takes none cannot keep this looping).
                let frontend = frontend.as_ref().expect("checked above");
                let before = self.curr_pages();
                let claimed = frontend.take_back(self, &victims);
                let taken = before.saturating_sub(self.curr_pages());
                if claimed != taken {
                    tracing::warn!(pool = %self.name, frontend = %frontend.name(), claimed, taken, "a frontend's TAKEN count is not what it took");
                }
                report.written_back += taken;
                taken
            };
            if progress == 0 {
                break;
            }
        }
        report.after = self.curr_pages();
        Ok(report)
    }

    fn pick(&self, want: usize) -> Vec<u64> {
        let mut victims = Vec::with_capacity(want);
        for shard in self.shards.iter() {
            let per_shard = want.div_ceil(self.shards.len()).max(1);
            shard.lock().pages.some_offsets(per_shard.min(want - victims.len()), &mut victims);
            if victims.len() >= want {
                break;
            }
        }
        victims
    }

    /// Connects a frontend (shrink will ask it to take pages back).
    pub fn attach_frontend(&self, frontend: Arc<dyn Frontend>) {
        self.frontends.write().push(frontend);
    }

    /// Disconnects a frontend.
    pub fn detach_frontend(&self, frontend: &Arc<dyn Frontend>) {
        self.frontends.write().retain(|f| !Arc::ptr_eq(f, frontend));
    }

    /// Names of the connected frontends.
    pub fn frontends(&self) -> Vec<String> {
        self.frontends.read().iter().map(|f| f.name()).collect()
    }

    /// The connected frontends, with their counters and (block devices) attachments.
    pub fn frontend_details(&self) -> Vec<FrontendDetails> {
        self.frontends.read().iter().map(|f| FrontendDetails::of(f.as_ref())).collect()
    }

    // ----- settings -----

    /// The current limits.
    pub fn limits(&self) -> PoolLimits {
        let opt = |v: u64| (v != UNLIMITED).then_some(v);
        PoolLimits {
            max_pages: opt(self.max_pages.load(Ordering::Relaxed)),
            max_bytes: opt(self.max_bytes.load(Ordering::Relaxed)),
            accept_threshold_percent: self.accept_threshold_percent.load(Ordering::Relaxed),
        }
    }

    /// Changes the limits at runtime. Pages above a lowered limit stay; new stores are
    /// refused until usage falls below the accept threshold.
    pub fn set_limits(&self, limits: PoolLimits) -> Result<(), PoolError> {
        limits.check()?;
        check_byte_limit(&self.chain(), &limits)?;
        self.max_pages.store(limits.max_pages.unwrap_or(UNLIMITED), Ordering::Relaxed);
        self.max_bytes.store(limits.max_bytes.unwrap_or(UNLIMITED), Ordering::Relaxed);
        self.accept_threshold_percent.store(limits.accept_threshold_percent, Ordering::Relaxed);
        Ok(())
    }

    /// The current modes.
    pub fn modes(&self) -> PoolModes {
        PoolModes {
            writethrough: self.writethrough.load(Ordering::Relaxed),
            exclusive_gets: self.exclusive_gets.load(Ordering::Relaxed),
        }
    }

    /// Changes the modes at runtime.
    pub fn set_modes(&self, modes: PoolModes) {
        self.writethrough.store(modes.writethrough, Ordering::Relaxed);
        self.exclusive_gets.store(modes.exclusive_gets, Ordering::Relaxed);
    }

    /// A block device claims the pool (`device` names it in the errors other writers get).
    /// Returns the claim's serial, for [`Pool::unclaim`]; an error if another device owns it.
    pub fn claim(&self, device: &str) -> Result<u64, OpError> {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let mut owner = self.owner.lock();
        if let Some((_, other)) = &*owner {
            return Err(OpError::OwnedByDevice { pool: self.name.clone(), device: other.clone() });
        }
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        *owner = Some((serial, device.to_string()));
        self.owned.store(true, Ordering::Release);
        Ok(serial)
    }

    /// Ends the claim `serial` (a later claim by another device is left alone).
    pub fn unclaim(&self, serial: u64) {
        let mut owner = self.owner.lock();
        if owner.as_ref().is_some_and(|(s, _)| *s == serial) {
            *owner = None;
            self.owned.store(false, Ordering::Release);
        }
    }

    /// The block device that owns the pool, if one does.
    pub fn owner(&self) -> Option<String> {
        self.owner.lock().as_ref().map(|(_, device)| device.clone())
    }

    /// Whether a writer other than the pool's block device may change it: an error naming
    /// the device if a device owns the pool. Every entry point of another writer (socket
    /// frontend, page API, peer) calls it before an operation that could change a page.
    pub fn check_writer(&self) -> Result<(), OpError> {
        if !self.owned.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.owner() {
            Some(device) => Err(OpError::OwnedByDevice { pool: self.name.clone(), device }),
            None => Ok(()),
        }
    }

    /// Marks the pool destroyed: stores are refused from now on, and frontends that still
    /// hold it end their connections ([`Pool::is_retired`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Whether the pool was destroyed.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether stores are accepted at all.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Enables or disables stores (loads and invalidates always work; a destroyed pool stays
    /// disabled).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled && !self.is_retired(), Ordering::Relaxed);
    }

    /// Whether a limit was hit and stores are refused until usage falls below the threshold.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    // ----- observation -----

    /// Every counter.
    pub fn counters(&self) -> CounterSnapshot {
        CounterSnapshot { pool_total_size: self.total_size(), ..self.stats.counters.snapshot() }
    }

    /// The most recent plugin fault: the plugin's name and what happened.
    pub fn last_fault(&self) -> Option<FaultRecord> {
        self.stats.last_fault.lock().clone()
    }

    /// Plugin faults so far by plugin name and fault kind.
    pub fn faults_by_plugin(&self) -> Vec<(String, &'static str, u64)> {
        self.stats.faults_by_plugin.lock().iter().map(|((plugin, kind), n)| (plugin.clone(), *kind, *n)).collect()
    }

    /// Bytes of linear memory of the pool's live plugin instances (all shards, generations),
    /// as [`Pool::shard_views`] see them: never waits on a shard.
    pub fn plugin_memory_bytes(&self) -> u64 {
        self.shard_views().iter().map(|v| v.memory_bytes).sum()
    }

    /// The latency histogram of `op`.
    pub fn latency(&self, op: Op) -> HistogramSnapshot {
        self.stats.latency(op).snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{BackendSpec, Host, HostConfig};

    /// A host with a data dir (removed on drop) and a sync `[zstd, sled]` pool "p".
    pub(crate) struct Persistent {
        pub host: Host,
        pub dir: std::path::PathBuf,
    }

    impl Persistent {
        pub fn new(tag: &str) -> Persistent {
            let dir = std::env::temp_dir().join(format!("tmem-pool-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let host = Host::new(HostConfig { data_dir: Some(dir.clone()), ..Default::default() }).unwrap();
            let sled = BackendSpec { grants: vec!["storage".into()], ..BackendSpec::new("sled") };
            let mut spec = PoolSpec::new("p");
            spec.shards = Some(2);
            host.create_pool(spec, &[BackendSpec::new("zstd"), sled]).unwrap();
            Persistent { host, dir }
        }

        pub fn pool(&self) -> Arc<Pool> {
            self.host.pool("p").unwrap()
        }
    }

    impl Drop for Persistent {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn page(tag: u8) -> Vec<u8> {
        (0..4096u32).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
    }

    #[test]
    fn a_change_whose_flush_fails_is_reported_and_a_store_whose_flush_fails_leaves_the_map() {
        let p = Persistent::new("flush-fails");
        let pool = p.pool();
        for offset in 0..4 {
            assert_eq!(pool.store(offset, &page(offset as u8)).unwrap(), StoreOutcome::Stored);
        }
        pool.disk().unwrap().fail_flushes(true);

        // A store that is not on disk is refused, and its page is not in the map.
        assert_eq!(pool.store(9, &page(9)).unwrap(), StoreOutcome::Rejected(RejectReason::AllocFail));
        assert!(!pool.contains(9), "a refused store's page stays in the map");
        assert!(!pool.enabled(), "a pool whose database cannot flush disables its stores");
        let mut buf = vec![0u8; 4096];
        assert_eq!(pool.load(9, &mut buf).unwrap(), LoadOutcome::Absent);

        // Invalidate, exclusive load and invalidate_area say their change is not durable.
        assert!(matches!(pool.invalidate_page(0), Err(OpError::NotDurable { op: "invalidate", offset: 0, .. })));
        pool.set_modes(PoolModes { exclusive_gets: true, writethrough: false });
        let loaded = pool.load(1, &mut buf);
        assert!(matches!(loaded, Err(OpError::NotDurable { op: "exclusive load", offset: 1, .. })), "{loaded:?}");
        assert_eq!(buf, page(1), "the page an exclusive load took is handed over all the same");
        assert!(matches!(pool.invalidate_area(), Err(OpError::NotDurable { op: "invalidate_area", .. })));

        // Once the disk flushes again, the same operations succeed.
        pool.disk().unwrap().fail_flushes(false);
        assert_eq!(pool.invalidate_page(3), Ok(false));
        pool.set_enabled(true);
        assert_eq!(pool.store(3, &page(3)).unwrap(), StoreOutcome::Stored);
        assert_eq!(pool.invalidate_page(3), Ok(true));
    }
}
