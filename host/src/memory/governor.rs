//! The memory **governor**: the host's budget follows the machine. It reads how much memory
//! the machine has (`/proc/meminfo` `MemAvailable`) and how much it stalls for memory
//! (`/proc/pressure/memory`, PSI), computes a **target** for the host's memory budget, and
//! applies it: the budget enforces min(operator's limit, target) ([`MemoryBudget::limit`]).
//!
//! # The policy ([`decide`], a pure function)
//!
//! - **Room.** The host may hold what it holds now plus what the machine has available, less
//!   a **reserve** kept for the rest of the machine (default max(5% of RAM, min(256 MiB, 10% of
//!   RAM))):
//!   `room = used + MemAvailable − reserve`. A target above the room is lowered to it at once
//!   (reason `reserve`): the host gives way before the machine has to swap.
//! - **Pressure.** When PSI `some avg10` is at or above the **high** watermark (default 10%),
//!   the target goes to `min(target, used)` less a step (10% of used, at least 1 MiB) each
//!   interval (reason `psi_high`).
//! - **Calm.** When `some avg10` is below the **low** watermark (default 2%) — or there is no
//!   PSI on this kernel — and the room allows, the target is raised by a step (10% of the
//!   operator's limit, or of RAM if there is none; at least 1 MiB), never above the room
//!   (reason `calm`).
//! - **Between the watermarks** the target holds (hysteresis, reason `between_watermarks`);
//!   with no readings at all it holds too (`no_readings`). The first look sets the target to
//!   the room (`start`), or lowers it from there under pressure.
//! - Never below the **floor** (default 0), nor a floor above the operator's limit.
//!
//! # Acting on it ([`Governor::observe`])
//!
//! The target is stored into the budget (one atomic: nothing is added on the store/load path;
//! the budget already refuses a charge past its limit, so stores past a lowered target are
//! refused and the frontend keeps the page). On the governor's own thread: when the new target
//! is below what the pools hold, every tiered pool first gets a mover pass as under pressure
//! (its coldest pages go down while the lower tier can still be charged for them; once the
//! target is set, the budget is "under pressure" for the mover thread too, whatever the
//! tier's `pressure_percent`); then, while the pools still hold more than the effective
//! limit, the pools that can shrink — a socket or block frontend to take pages back, or
//! writethrough — are asked to ([`Pool::shrink`]), largest first, each for its share of the
//! excess: **its usage divided by its weight** (a pool's `weight`, 1–1000, default 100), over
//! the sum of those. Pools that cannot
//! shrink (no frontend, not writethrough), persistent pools (their pages are on disk, not in
//! the budget) and lower tiers (written only by their upper pool) are skipped.
//!
//! # Invariants
//!
//! - The effective limit is never above the operator's limit; turning the governor off
//!   restores the operator's limit exactly.
//! - The governor never drops a page a frontend does not have: it shrinks only through
//!   [`Pool::shrink`] (take-back, or a writethrough pool's copies).
//! - Its thread (`tmem-governor`) is the only one that reads `/proc` for it; the I/O path
//!   never waits for it.
//! - What holds no page — the arena's committed-ahead headroom, the free slots of its runs —
//!   is not counted as usage to shed; after a shrink the arena is compacted so the freed
//!   slots go back to the budget.
//!
//! # The thread
//!
//! Where the kernel allows it, a PSI trigger (`some 150000 2000000`: 150 ms of stall in 2 s)
//! is written to an open `/proc/pressure/memory` and the thread `poll`s it for `POLLPRI`, so
//! rising pressure wakes it at once; it also wakes every [`TRIGGERED_INTERVAL`]. Without a
//! trigger it polls every [`POLL_INTERVAL`]. Tests drive [`Governor::observe`] with injected
//! [`Readings`] instead (`HostConfig::manual_governor`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::MemInfo;
use super::budget::MemoryBudget;
use crate::pool::Pool;

/// How often the thread looks without a PSI trigger.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the thread looks when a PSI trigger wakes it on pressure.
pub const TRIGGERED_INTERVAL: Duration = Duration::from_secs(2);
/// The PSI trigger: 150 ms of `some` stall within a 2 s window (a multiple of 2 s, so an
/// unprivileged process may set it on Linux 6.5+).
pub const PSI_TRIGGER: &str = "some 150000 2000000";
/// The smallest step, up or down.
pub const MIN_STEP: u64 = 1 << 20;
/// The default reserve's floor: 256 MiB, or a tenth of RAM on a machine smaller than 2.5 GiB
/// (half of a 512 MiB machine kept idle would leave its swap no room).
pub const DEFAULT_RESERVE_MIN: u64 = 256 << 20;
/// Weighted shares are bytes × this / weight (so a weight of 1000 still leaves precision).
const WEIGHT_SCALE: u128 = 1000;
/// Decisions of the same kind are logged at most this often (a change of kind always is).
const LOG_EVERY: Duration = Duration::from_secs(30);

/// What the governor keeps for the rest of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reserve {
    /// max(5% of RAM, min(256 MiB, 10% of RAM)).
    #[default]
    Auto,
    /// This many bytes.
    Bytes(u64),
    /// This share of RAM (0–100).
    PercentOfRam(u8),
}

impl Reserve {
    /// The reserve in bytes on a machine of `total` bytes of RAM.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Reserve::Auto => (total / 20).max(DEFAULT_RESERVE_MIN.min(total / 10)),
            Reserve::Bytes(bytes) => bytes,
            Reserve::PercentOfRam(percent) => total / 100 * percent.min(100) as u64,
        }
    }
}

/// The governor's policy settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GovernorConfig {
    /// Whether it sets a target at all (off: the operator's limit alone).
    pub enabled: bool,
    /// MemAvailable kept for the rest of the machine.
    pub reserve: Reserve,
    /// PSI `some avg10` (percent) at or above which the target is lowered.
    pub psi_high: f64,
    /// PSI `some avg10` (percent) below which the target may be raised.
    pub psi_low: f64,
    /// The target never goes below this many bytes.
    pub floor_bytes: u64,
    /// A step, in percent (down: of what is used; up: of the operator's limit, or RAM).
    pub step_percent: u8,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            enabled: true,
            reserve: Reserve::Auto,
            psi_high: 10.0,
            psi_low: 2.0,
            floor_bytes: 0,
            step_percent: 10,
        }
    }
}

/// Why a governor setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GovernorConfigError {
    /// A watermark outside 0–100, or the low one above the high one.
    #[error("PSI watermarks must satisfy 0 <= psi_low <= psi_high <= 100 (got low {low}, high {high})")]
    Watermarks {
        /// The low watermark.
        low: f64,
        /// The high watermark.
        high: f64,
    },
    /// A reserve share above 100%.
    #[error("a reserve of {0}% of RAM is more than all of it")]
    ReservePercent(u8),
    /// A step outside 1–100%.
    #[error("a governor step must be from 1 to 100 percent (got {0})")]
    Step(u8),
}

impl GovernorConfig {
    /// Checks the settings against each other.
    pub fn check(&self) -> Result<(), GovernorConfigError> {
        let (low, high) = (self.psi_low, self.psi_high);
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high && high <= 100.0) {
            return Err(GovernorConfigError::Watermarks { low, high });
        }
        if let Reserve::PercentOfRam(p @ 101..) = self.reserve {
            return Err(GovernorConfigError::ReservePercent(p));
        }
        if !(1..=100).contains(&self.step_percent) {
            return Err(GovernorConfigError::Step(self.step_percent));
        }
        Ok(())
    }
}

/// Memory pressure as `/proc/pressure/memory` states it (percent of wall time stalled).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Psi {
    /// `some avg10`: some task stalled on memory, over the last 10 s.
    pub some_avg10: f64,
    /// `full avg10`: every non-idle task stalled, over the last 10 s.
    pub full_avg10: f64,
}

impl Psi {
    /// Parses the file's text; `None` if it has no `some` line.
    pub fn parse(text: &str) -> Option<Psi> {
        let avg10 = |kind: &str| {
            let line = text.lines().find(|l| l.starts_with(kind))?;
            line.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse::<f64>().ok()
        };
        Some(Psi { some_avg10: avg10("some ")?, full_avg10: avg10("full ").unwrap_or(0.0) })
    }

    /// Reads `/proc/pressure/memory`; `None` if the kernel has no PSI (or it is off).
    pub fn read() -> Option<Psi> {
        Psi::parse(&std::fs::read_to_string("/proc/pressure/memory").ok()?)
    }
}

/// What the governor reads each interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Readings {
    /// `/proc/meminfo`, if it could be read.
    pub meminfo: Option<MemInfo>,
    /// `/proc/pressure/memory`, if the kernel has it.
    pub psi: Option<Psi>,
}

impl Readings {
    /// Reads both files now.
    pub fn read() -> Readings {
        Readings { meminfo: MemInfo::read(), psi: Psi::read() }
    }
}

/// The state the policy decides from, besides the readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgeted {
    /// Bytes the host holds for pages (the arena's headroom not counted).
    pub used: u64,
    /// The operator's limit (`u64::MAX`: none).
    pub operator_limit: u64,
    /// The current target (`u64::MAX`: none yet).
    pub target: u64,
}

/// What the governor decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The target went down.
    Lower,
    /// The target went up.
    Raise,
    /// The target stayed.
    Hold,
    /// The governor is off: no target.
    Off,
}

impl Decision {
    /// The decision's name in the API and the log.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Lower => "lower",
            Decision::Raise => "raise",
            Decision::Hold => "hold",
            Decision::Off => "off",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// PSI `some avg10` at or above the high watermark.
    PsiHigh,
    /// MemAvailable would fall below the reserve.
    Reserve,
    /// PSI below the low watermark (or no PSI) and room to grow.
    Calm,
    /// Already at the room (or the operator's limit): nothing to raise.
    AtCeiling,
    /// PSI between the watermarks: hold (hysteresis).
    BetweenWatermarks,
    /// Neither file could be read.
    NoReadings,
    /// The first look: the target starts at the room.
    Start,
    /// The governor is off.
    Disabled,
}

impl Reason {
    /// The reason's name in the API and the log.
    pub fn name(self) -> &'static str {
        match self {
            Reason::PsiHigh => "psi_high",
            Reason::Reserve => "reserve",
            Reason::Calm => "calm",
            Reason::AtCeiling => "at_ceiling",
            Reason::BetweenWatermarks => "between_watermarks",
            Reason::NoReadings => "no_readings",
            Reason::Start => "start",
            Reason::Disabled => "disabled",
        }
    }
}

/// The policy's answer: the new target, what was decided and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The new target (`u64::MAX`: none).
    pub target: u64,
    /// What was decided.
    pub decision: Decision,
    /// Why.
    pub reason: Reason,
}

/// **The policy**: from the readings, what the host holds, the operator's limit and the
/// current target, the next target (see the module's documentation). Pure.
pub fn decide(readings: &Readings, state: &Budgeted, config: &GovernorConfig) -> Verdict {
    let Budgeted { used, operator_limit, target: current } = *state;
    if !config.enabled {
        return Verdict { target: u64::MAX, decision: Decision::Off, reason: Reason::Disabled };
    }
    if readings.meminfo.is_none() && readings.psi.is_none() {
        return Verdict { target: current, decision: Decision::Hold, reason: Reason::NoReadings };
    }
    let percent = |of: u64, p: u8| (of as u128 * p as u128 / 100) as u64;
    let total = readings.meminfo.map_or(0, |m| m.total_bytes);
    // What the host may hold while the machine keeps its reserve (no meminfo: no bound).
    let room = readings.meminfo.map_or(u64::MAX, |m| {
        used.saturating_add(m.available_bytes).saturating_sub(config.reserve.bytes(m.total_bytes))
    });
    let floor = config.floor_bytes.min(operator_limit);
    let verdict = |target: u64, decision, reason| Verdict { target: target.max(floor), decision, reason };
    let some = readings.psi.map(|p| p.some_avg10);
    if some.is_some_and(|s| s >= config.psi_high) {
        let step = percent(used, config.step_percent).max(MIN_STEP);
        let target = current.min(used).saturating_sub(step).min(room).max(floor);
        let decision = if target < current { Decision::Lower } else { Decision::Hold };
        return verdict(target, decision, Reason::PsiHigh);
    }
    if current == u64::MAX {
        // The first look: the target starts at the room.
        return verdict(room, Decision::Hold, Reason::Start);
    }
    if room < current {
        return verdict(room, Decision::Lower, Reason::Reserve);
    }
    if some.is_none_or(|s| s < config.psi_low) {
        let basis = if operator_limit != u64::MAX {
            operator_limit
        } else if total > 0 {
            total
        } else {
            used
        };
        let step = percent(basis, config.step_percent).max(MIN_STEP);
        let target = current.saturating_add(step).min(room);
        if target > current {
            return verdict(target, Decision::Raise, Reason::Calm);
        }
        return verdict(current, Decision::Hold, Reason::AtCeiling);
    }
    verdict(current, Decision::Hold, Reason::BetweenWatermarks)
}

/// What the governor reports (the API's `governor` object).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GovernorStatus {
    /// The settings in force.
    pub config: GovernorConfig,
    /// The reserve in bytes, as last computed.
    pub reserve_bytes: u64,
    /// The last readings.
    pub readings: Readings,
    /// The last verdict (`None` before the first).
    pub last: Option<Verdict>,
    /// When the last verdict was made.
    pub last_at: Option<Instant>,
    /// Whether the thread is woken by a PSI trigger (else it polls).
    pub psi_trigger: bool,
    /// Times the target was lowered.
    pub lowers: u64,
    /// Times it was raised.
    pub raises: u64,
    /// Pool shrinks asked for (one per pool asked).
    pub shrinks: u64,
    /// Pages those shrinks took out of the pools.
    pub shrunk_pages: u64,
    /// Mover passes run because usage exceeded the target.
    pub tier_passes: u64,
    /// Pages those passes moved down.
    pub demoted_pages: u64,
}

/// The host's governor: its settings, its last readings and decision, and what it acts on.
pub struct Governor {
    budget: Arc<MemoryBudget>,
    /// Of the budget's used bytes, those that hold no page: the arena's free headroom and
    /// the free slots of its partly used runs.
    unheld: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Compacts the arena (after a shrink, so the freed slots go back to the budget).
    compact: Box<dyn Fn() + Send + Sync>,
    pools: Weak<RwLock<BTreeMap<String, Arc<Pool>>>>,
    status: Mutex<GovernorStatus>,
    /// Serializes observations (the thread's and a test's, or a settings change's).
    observing: Mutex<LogState>,
    /// Bumped by every settings change (the thread re-reads at once).
    generation: AtomicU64,
}

/// The log's rate limit.
#[derive(Default)]
struct LogState {
    last: Option<(Decision, Reason, Instant)>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor").field("status", &*self.status.lock()).finish()
    }
}

impl Governor {
    /// A governor of `budget` over `pools`; `unheld` says how many of the budget's used bytes
    /// hold no page (committed ahead, or free slots), `compact` compacts the arena. Sets no
    /// target until it first observes.
    pub fn new(
        config: GovernorConfig,
        budget: Arc<MemoryBudget>,
        unheld: Box<dyn Fn() -> u64 + Send + Sync>,
        compact: Box<dyn Fn() + Send + Sync>,
        pools: Weak<RwLock<BTreeMap<String, Arc<Pool>>>>,
    ) -> Governor {
        Governor {
            budget,
            unheld,
            compact,
            pools,
            status: Mutex::new(GovernorStatus {
                config,
                reserve_bytes: 0,
                readings: Readings::default(),
                last: None,
                last_at: None,
                psi_trigger: false,
                lowers: 0,
                raises: 0,
                shrinks: 0,
                shrunk_pages: 0,
                tier_passes: 0,
                demoted_pages: 0,
            }),
            observing: Mutex::new(LogState::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// What it reports now.
    pub fn status(&self) -> GovernorStatus {
        *self.status.lock()
    }

    /// The settings in force.
    pub fn config(&self) -> GovernorConfig {
        self.status.lock().config
    }

    /// Changes the settings (checked first). Turning it off clears the target at once; other
    /// changes take effect at the next observation (the thread is woken for it).
    pub fn set_config(&self, config: GovernorConfig) -> Result<(), GovernorConfigError> {
        config.check()?;
        self.status.lock().config = config;
        if !config.enabled {
            self.budget.set_target(None);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        tracing::info!(?config, "memory governor settings changed");
        Ok(())
    }

    /// Bytes the pools hold: the budget's used bytes less what holds no page (the arena's
    /// free headroom and free slots). A shrink lowers it at once, so the governor does not
    /// shrink again for memory a compaction has yet to give back.
    fn held(&self) -> u64 {
        self.budget.used().saturating_sub((self.unheld)())
    }

    /// One round with these readings: decide, set the budget's target, and, if the pools
    /// still hold more than the effective limit, demote (tiered pools) and shrink. The
    /// thread calls it with what it read; tests call it with readings of their own.
    pub fn observe(&self, readings: Readings) -> Verdict {
        let mut log = self.observing.lock();
        let config = self.config();
        let state = Budgeted {
            used: self.held(),
            operator_limit: self.budget.operator_limit(),
            target: self.budget.target().unwrap_or(u64::MAX),
        };
        let verdict = decide(&readings, &state, &config);
        if verdict.target < state.used {
            // The target goes below what is held: tiered pools move their coldest pages down
            // first, while the lower tiers can still be charged for what they take.
            self.demote();
        }
        self.budget.set_target((verdict.target != u64::MAX).then_some(verdict.target));
        {
            let mut status = self.status.lock();
            status.readings = readings;
            status.reserve_bytes = readings.meminfo.map_or(0, |m| config.reserve.bytes(m.total_bytes));
            status.last = Some(verdict);
            status.last_at = Some(Instant::now());
            match verdict.decision {
                Decision::Lower => status.lowers += 1,
                Decision::Raise => status.raises += 1,
                Decision::Hold | Decision::Off => {}
            }
        }
        let now = Instant::now();
        let repeat = log.last.is_some_and(|(d, r, at)| {
            (d, r) == (verdict.decision, verdict.reason) && now.duration_since(at) < LOG_EVERY
        });
        let quiet = matches!(verdict.decision, Decision::Hold | Decision::Off)
            && log.last.is_some_and(|(d, _, _)| d == verdict.decision);
        if !repeat && !quiet {
            tracing::info!(
                decision = verdict.decision.name(),
                reason = verdict.reason.name(),
                target_mib = (verdict.target != u64::MAX).then_some(verdict.target >> 20),
                effective_limit_mib = self.budget.limit() >> 20,
                used_mib = state.used >> 20,
                mem_available_mib = readings.meminfo.map(|m| m.available_bytes >> 20),
                psi_some_avg10 = readings.psi.map(|p| p.some_avg10),
                "memory governor"
            );
            log.last = Some((verdict.decision, verdict.reason, now));
        }
        if config.enabled && self.held() > self.budget.limit() {
            self.relieve();
        }
        verdict
    }

    /// The live pools.
    fn pools(&self) -> Vec<Arc<Pool>> {
        let Some(pools) = self.pools.upgrade() else { return Vec::new() };
        pools.read().values().filter(|p| !p.is_retired()).cloned().collect()
    }

    /// A mover pass, as under budget pressure, over every tiered pool: the coldest pages go
    /// down (the mover thread's own passes are under pressure too once the target is below
    /// what is held).
    fn demote(&self) {
        let mut demoted = 0;
        for pool in self.pools().iter().filter(|p| p.tier().is_some()) {
            let pass = pool.run_tier_pass_under_pressure();
            demoted += pass.demoted;
            let mut status = self.status.lock();
            status.tier_passes += 1;
            status.demoted_pages += pass.demoted;
        }
        if demoted > 0 {
            // The slots the pages left up are scattered over the arena's runs: compacting
            // gives whole spans back, to the reserve demotions draw on and to the budget.
            (self.compact)();
        }
    }

    /// The pools hold more than the effective limit: shrinks, largest pool first, each for
    /// its share of the excess.
    fn relieve(&self) {
        let pools = self.pools();
        let excess = self.held().saturating_sub(self.budget.limit());
        if excess == 0 {
            return;
        }
        // Pools that can give pages back, with the bytes they hold and their share: bytes
        // held divided by weight.
        let mut candidates: Vec<(u64, u128, &Arc<Pool>)> = pools
            .iter()
            .filter(|p| !p.is_persistent() && p.upper().is_none() && p.curr_pages() > 0)
            .filter(|p| p.modes().writethrough || !p.frontends().is_empty())
            .map(|p| {
                let bytes = p.counters().pool_total_size.max(1);
                (bytes, bytes as u128 * WEIGHT_SCALE / p.weight().max(1) as u128, p)
            })
            .collect();
        candidates.sort_by_key(|&(bytes, _, _)| std::cmp::Reverse(bytes));
        let total: u128 = candidates.iter().map(|(_, weighted, _)| weighted).sum();
        let mut shrunk = 0;
        for (bytes, weighted, pool) in candidates {
            let pages = pool.curr_pages();
            let share = (excess as u128 * weighted).div_ceil(total.max(1));
            let shed = (share * pages as u128).div_ceil(bytes as u128).min(pages as u128) as u64;
            if shed == 0 {
                continue;
            }
            match pool.shrink(pages - shed) {
                Ok(report) => {
                    let out = report.before.saturating_sub(report.after);
                    tracing::info!(pool = %pool.name(), asked = shed, shrunk = out, "memory governor: pool shrunk");
                    let mut status = self.status.lock();
                    status.shrinks += 1;
                    status.shrunk_pages += out;
                    shrunk += out;
                }
                Err(e) => tracing::debug!(pool = %pool.name(), "memory governor: shrink skipped: {e}"),
            }
        }
        if shrunk > 0 {
            // The freed slots are scattered over the arena's runs: compacting empties runs,
            // whose spans go back to the budget (and the kernel).
            (self.compact)();
        }
    }

    /// Starts the `tmem-governor` thread over `governor`; it stops when the governor is
    /// dropped (the host with it).
    pub fn spawn(governor: &Arc<Governor>) -> std::io::Result<()> {
        let weak = Arc::downgrade(governor);
        std::thread::Builder::new().name("tmem-governor".into()).spawn(move || {
            // It allocates while it holds pools' locks (a shrink, a mover pass), and it runs
            // exactly when memory is short: as an I/O flusher its reclaim never waits on swap-out
            // to this very host (it hung so in the global-pressure guest scenario, in
            // swap_writepage's bio mempool, the swap device's queue thread waiting behind it).
            super::become_io_flusher();
            let trigger = PsiTrigger::open();
            if let Some(governor) = weak.upgrade() {
                governor.status.lock().psi_trigger = trigger.is_some();
                tracing::info!(psi_trigger = trigger.is_some(), "memory governor thread started");
            }
            loop {
                let Some(governor) = weak.upgrade() else { return };
                if governor.config().enabled {
                    governor.observe(Readings::read());
                } else if governor.budget.target().is_some() {
                    governor.budget.set_target(None);
                }
                let generation = governor.generation.load(Ordering::Relaxed);
                drop(governor);
                let deadline = Instant::now() + if trigger.is_some() { TRIGGERED_INTERVAL } else { POLL_INTERVAL };
                // Wake on the trigger, a settings change, or the interval (in slices, so a
                // dropped host ends the thread soon).
                while Instant::now() < deadline {
                    let slice = Duration::from_millis(250);
                    let fired = match &trigger {
                        Some(trigger) => trigger.wait(slice),
                        None => {
                            std::thread::sleep(slice);
                            false
                        }
                    };
                    let changed = weak.upgrade().map(|g| g.generation.load(Ordering::Relaxed) != generation);
                    if fired || changed != Some(false) {
                        break;
                    }
                }
            }
        })?;
        Ok(())
    }
}

/// An open `/proc/pressure/memory` with a trigger written to it.
struct PsiTrigger {
    file: std::fs::File,
}

impl PsiTrigger {
    /// Opens the file and writes [`PSI_TRIGGER`]; `None` where the kernel (or the process's
    /// privileges) does not allow it.
    fn open() -> Option<PsiTrigger> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open("/proc/pressure/memory").ok()?;
        match file.write_all(format!("{PSI_TRIGGER}\0").as_bytes()) {
            Ok(()) => Some(PsiTrigger { file }),
            Err(e) => {
                tracing::info!("memory governor: no PSI trigger ({e}); polling every {POLL_INTERVAL:?}");
                None
            }
        }
    }

    /// Waits up to `timeout` for the trigger; whether it fired.
    fn wait(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd { fd: self.file.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one pollfd over a descriptor this struct owns.
        let n = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
        if n > 0 && fd.revents & libc::POLLERR != 0 {
            // The file is gone (cannot happen for /proc, but never spin on it).
            std::thread::sleep(timeout);
            return false;
        }
        n > 0 && fd.revents & libc::POLLPRI != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn readings(available: u64, some: Option<f64>) -> Readings {
        Readings {
            meminfo: Some(MemInfo { total_bytes: 16 * GIB, available_bytes: available }),
            psi: some.map(|some_avg10| Psi { some_avg10, full_avg10: some_avg10 / 2.0 }),
        }
    }

    fn state(used: u64, operator: u64, target: u64) -> Budgeted {
        Budgeted { used, operator_limit: operator, target }
    }

    #[test]
    fn psi_parses_the_kernels_text_and_a_missing_file_is_none() {
        let text = "some avg10=12.50 avg60=3.00 avg300=0.06 total=18615763\nfull avg10=4.25 avg60=0.01 avg300=0.05 total=6861668\n";
        assert_eq!(Psi::parse(text), Some(Psi { some_avg10: 12.5, full_avg10: 4.25 }));
        assert_eq!(Psi::parse("some avg10=1.00 avg60=0 avg300=0 total=1\n").map(|p| p.full_avg10), Some(0.0));
        assert_eq!(Psi::parse(""), None);
        assert_eq!(Psi::parse("garbage"), None);
    }

    #[test]
    fn high_pressure_lowers_the_target_below_what_is_used_by_a_step() {
        let config = GovernorConfig::default();
        let v = decide(&readings(8 * GIB, Some(25.0)), &state(GIB, 4 * GIB, u64::MAX), &config);
        assert_eq!((v.decision, v.reason), (Decision::Lower, Reason::PsiHigh));
        assert_eq!(v.target, GIB - GIB / 10, "10% of used below used");
        // Again: another step down from the target.
        let v = decide(&readings(8 * GIB, Some(25.0)), &state(GIB, 4 * GIB, v.target), &config);
        assert_eq!(v.target, GIB - GIB / 10 - GIB / 10);
        // Exactly at the watermark counts as high.
        let v = decide(&readings(8 * GIB, Some(10.0)), &state(GIB, 4 * GIB, 2 * GIB), &config);
        assert_eq!(v.decision, Decision::Lower);
    }

    #[test]
    fn the_reserve_bounds_the_target_and_low_pressure_raises_it_by_steps() {
        let config = GovernorConfig::default();
        // 16 GiB of RAM: the reserve is 5% (819 MiB). 1 GiB used, 1 GiB available: room is
        // 2 GiB less the reserve.
        let reserve = Reserve::Auto.bytes(16 * GIB);
        assert_eq!(reserve, 16 * GIB / 20);
        assert_eq!(Reserve::Auto.bytes(2 * GIB), 2 * GIB / 10, "a tenth on a small machine");
        assert_eq!(Reserve::Auto.bytes(4 * GIB), 256 * MIB);
        assert_eq!(Reserve::Auto.bytes(512 * MIB), 512 * MIB / 10);
        let v = decide(&readings(GIB, Some(0.0)), &state(GIB, 4 * GIB, 4 * GIB), &config);
        assert_eq!((v.decision, v.reason, v.target), (Decision::Lower, Reason::Reserve, 2 * GIB - reserve));
        let v = decide(&readings(GIB, Some(0.0)), &state(GIB, 4 * GIB, u64::MAX), &config);
        assert_eq!(
            (v.decision, v.reason, v.target),
            (Decision::Hold, Reason::Start, 2 * GIB - reserve),
            "the first look"
        );
        // Less available than the reserve: the target goes below what is used (shed).
        let v = decide(&readings(100 * MIB, Some(0.0)), &state(GIB, 4 * GIB, 2 * GIB), &config);
        assert_eq!(v.target, GIB + 100 * MIB - reserve);
        assert!(v.target < GIB);
        // Calm and room: raised by 10% of the operator's limit per step, up to the room.
        let v = decide(&readings(8 * GIB, Some(0.5)), &state(GIB, 4 * GIB, GIB), &config);
        assert_eq!((v.decision, v.reason, v.target), (Decision::Raise, Reason::Calm, GIB + 4 * GIB / 10));
        let v = decide(&readings(GIB, Some(0.5)), &state(GIB, 4 * GIB, 2 * GIB - reserve - MIB), &config);
        assert_eq!(v.target, 2 * GIB - reserve, "never above the room");
        let v = decide(&readings(GIB, Some(0.5)), &state(GIB, 4 * GIB, 2 * GIB - reserve), &config);
        assert_eq!((v.decision, v.reason), (Decision::Hold, Reason::AtCeiling));
        // No operator limit: steps of 10% of RAM.
        let v = decide(&readings(8 * GIB, None), &state(0, u64::MAX, GIB), &config);
        assert_eq!(v.target, GIB + 16 * GIB / 10);
    }

    #[test]
    fn between_the_watermarks_the_target_holds() {
        let config = GovernorConfig::default();
        for some in [2.0, 5.0, 9.99] {
            let v = decide(&readings(8 * GIB, Some(some)), &state(GIB, 4 * GIB, GIB / 2), &config);
            assert_eq!(
                (v.decision, v.reason, v.target),
                (Decision::Hold, Reason::BetweenWatermarks, GIB / 2),
                "{some}"
            );
        }
        // ... unless the reserve is threatened.
        let v = decide(&readings(GIB, Some(5.0)), &state(GIB, 4 * GIB, 4 * GIB), &config);
        assert_eq!(v.reason, Reason::Reserve);
    }

    #[test]
    fn the_floor_holds_and_never_exceeds_the_operators_limit() {
        let config = GovernorConfig { floor_bytes: 512 * MIB, ..Default::default() };
        let v = decide(&readings(0, Some(90.0)), &state(600 * MIB, 4 * GIB, 600 * MIB), &config);
        assert_eq!((v.decision, v.target), (Decision::Lower, 512 * MIB));
        let v = decide(&readings(0, Some(90.0)), &state(600 * MIB, 100 * MIB, 600 * MIB), &config);
        assert_eq!(v.target, 100 * MIB, "a floor above the operator's limit is the limit");
        // Default floor 0: it may ask to shed everything.
        let v = decide(&readings(0, Some(90.0)), &state(MIB / 2, 4 * GIB, MIB), &GovernorConfig::default());
        assert_eq!(v.target, 0);
        // At the floor, pressure holds.
        let v = decide(&readings(0, Some(90.0)), &state(MIB / 2, 4 * GIB, 0), &GovernorConfig::default());
        assert_eq!((v.decision, v.reason, v.target), (Decision::Hold, Reason::PsiHigh, 0));
    }

    #[test]
    fn without_psi_it_works_from_memavailable_and_without_readings_it_holds() {
        let config = GovernorConfig::default();
        let v = decide(&readings(8 * GIB, None), &state(GIB, 4 * GIB, GIB), &config);
        assert_eq!(v.decision, Decision::Raise, "no PSI file: calm unless the reserve says otherwise");
        let v = decide(&readings(GIB / 2, None), &state(GIB, 4 * GIB, 4 * GIB), &config);
        assert_eq!(v.reason, Reason::Reserve);
        let v = decide(&Readings::default(), &state(GIB, 4 * GIB, 3 * GIB), &config);
        assert_eq!((v.decision, v.reason, v.target), (Decision::Hold, Reason::NoReadings, 3 * GIB));
        // PSI without meminfo: no room bound, raised towards (and past) the operator's limit.
        let only_psi = Readings { meminfo: None, psi: Some(Psi::default()) };
        let v = decide(&only_psi, &state(GIB, 4 * GIB, GIB), &config);
        assert_eq!(v.decision, Decision::Raise);
    }

    #[test]
    fn off_means_no_target_and_bad_settings_are_refused() {
        let config = GovernorConfig { enabled: false, ..Default::default() };
        let v = decide(&readings(0, Some(99.0)), &state(GIB, 4 * GIB, GIB), &config);
        assert_eq!((v.decision, v.target), (Decision::Off, u64::MAX));
        assert!(GovernorConfig::default().check().is_ok());
        let bad = GovernorConfig { psi_low: 20.0, psi_high: 10.0, ..Default::default() };
        assert!(matches!(bad.check(), Err(GovernorConfigError::Watermarks { .. })));
        let bad = GovernorConfig { psi_high: f64::NAN, ..Default::default() };
        assert!(bad.check().is_err());
        let bad = GovernorConfig { reserve: Reserve::PercentOfRam(101), ..Default::default() };
        assert_eq!(bad.check(), Err(GovernorConfigError::ReservePercent(101)));
    }

    #[test]
    fn the_governor_moves_the_budgets_effective_limit_and_off_restores_the_operators() {
        let budget = Arc::new(MemoryBudget::new(4 * GIB));
        let governor =
            Governor::new(GovernorConfig::default(), budget.clone(), Box::new(|| 0), Box::new(|| ()), Weak::new());
        assert!(budget.try_charge(GIB));
        let v = governor.observe(readings(8 * GIB, Some(50.0)));
        assert_eq!(budget.limit(), v.target);
        assert!(budget.limit() < GIB && budget.operator_limit() == 4 * GIB);
        assert!(!budget.try_charge(1), "stores past the lowered target are refused");
        assert_eq!(governor.status().lowers, 1);
        governor.set_config(GovernorConfig { enabled: false, ..Default::default() }).unwrap();
        assert_eq!((budget.limit(), budget.target()), (4 * GIB, None));
        assert!(budget.try_charge(1));
    }
}
