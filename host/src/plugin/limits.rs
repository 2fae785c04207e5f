//! Sandbox limits of one plugin instance: a memory cap across all of its memories and tables,
//! a deadline for every call — and the host's memory budget, which every byte of an instance's
//! linear memory is charged to ([`MemoryCap`]).

use std::sync::Arc;
use std::time::Duration;

use crate::memory::budget::MemoryBudget;

/// The limits a pool gives each of its plugin instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Bytes of linear memory an instance may have, all memories together.
    pub memory_bytes: usize,
    /// How long one call into the plugin may run before it is interrupted.
    pub call_timeout: Duration,
    /// How long instantiation and `init` may run (a plugin may build tables there).
    pub init_timeout: Duration,
}

/// The smallest memory cap a pool may give its instances.
pub const MIN_MEMORY_BYTES: usize = 1 << 20;
/// The largest memory cap (a 32-bit linear memory's size).
pub const MAX_MEMORY_BYTES: usize = 4 << 30;
/// The longest call timeout a pool may give its instances.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl SandboxLimits {
    /// Whether the limits are in range: memory 1 MiB to 4 GiB, call timeout 1 ms to 60 s.
    pub fn in_range(&self) -> bool {
        (MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&self.memory_bytes)
            && (Duration::from_millis(1)..=MAX_CALL_TIMEOUT).contains(&self.call_timeout)
    }
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_millis(100),
            init_timeout: Duration::from_secs(2),
        }
    }
}

/// The wasmtime resource limiter of one instance. It refuses growth past the cap with an
/// error (which traps the instance at once) and remembers that it did, so the fault can be
/// reported as a memory-cap hit rather than as an anonymous trap.
///
/// **Invariant**: every byte of `used` is charged to the host's budget (when the engine has
/// one) and given back when the instance is dropped. While the instance starts (instantiation,
/// `init`, making it resident) the charge is taken whatever the budget: a pool must be able to
/// run its chain, and a fresh instance after a fault replaces memory just given back; the
/// host refuses a new pool whose start left the budget overdrawn. Growth during a call is
/// refused past the budget: the call faults (`memory_budget`), the instance is dropped, and
/// its memory goes back — a plugin cannot make the host hold more than its budget.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) limit: usize,
    /// Bytes of all memories together (wasmtime asks here for initial sizes too).
    pub(crate) used: usize,
    pub(crate) hit: bool,
    /// The host's budget, charged for `used`; `None`: uncharged (a manifest probe, or an
    /// engine without a budget — benchmarks, unit tests).
    budget: Option<Arc<MemoryBudget>>,
    /// Growth is charged whatever the budget (the instance is starting).
    pub(crate) starting: bool,
    /// Growth was refused because the budget was full.
    pub(crate) budget_hit: bool,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize, budget: Option<Arc<MemoryBudget>>) -> Self {
        MemoryCap { limit, used: 0, hit: false, budget, starting: true, budget_hit: false }
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release_plugin(self.used as u64);
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.hit = true;
            wasmtime::bail!("plugin memory cap of {} bytes exceeded (wanted {total})", self.limit);
        }
        if let Some(budget) = &self.budget {
            if total > self.used {
                let grow = (total - self.used) as u64;
                if self.starting {
                    budget.force_charge_plugin(grow);
                } else if !budget.try_charge_plugin(grow) {
                    self.budget_hit = true;
                    wasmtime::bail!("the host's memory budget cannot hold {grow} more bytes of plugin memory");
                }
            } else {
                budget.release_plugin((self.used - total) as u64);
            }
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > 100_000 {
            self.hit = true;
            wasmtime::bail!("plugin table of {desired} elements exceeds the cap of 100000");
        }
        Ok(true)
    }
}
