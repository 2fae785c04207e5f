//! [`MemoryBudget`]: the most memory the host keeps for pages, and what it keeps now.
//!
//! Everything the host holds for pages is charged here before it is held — the arena's
//! committed spans (stored bytes and their headroom), per-page index memory, persistent
//! pools' database caches, plugin instances' linear memories — and released when given back. A charge that would pass the limit is refused: the caller refuses the
//! store (frontswap's way), it never allocates past the budget. The limit changes at run time;
//! lowering it below what is held refuses new charges until enough is released.
//!
//! The limit enforced is the **effective** one: the smaller of the operator's limit
//! (`--memory-limit`, `PATCH /api/v1/memory`) and the memory governor's target
//! ([`crate::memory::governor`]), if it has one. Both are kept and reported; charging reads
//! only the effective limit (one atomic load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The host's memory budget for pages. Lock-free: charging is one compare-and-swap.
#[derive(Debug)]
pub struct MemoryBudget {
    /// The effective limit: min(`operator`, `target`). The only one charging reads.
    limit: AtomicU64,
    /// The operator's limit (`u64::MAX`: none).
    operator: AtomicU64,
    /// The governor's target (`u64::MAX`: none, the governor is off).
    target: AtomicU64,
    /// Serializes changes of `operator` and `target`, so `limit` is always their minimum.
    changes: parking_lot::Mutex<()>,
    used: AtomicU64,
    refused: AtomicU64,
    /// Of `used`, the linear memories of plugin instances ([`MemoryBudget::try_charge_plugin`]).
    plugins: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`u64::MAX`: none), nothing charged.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit: AtomicU64::new(limit),
            operator: AtomicU64::new(limit),
            target: AtomicU64::new(u64::MAX),
            changes: parking_lot::Mutex::new(()),
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            plugins: AtomicU64::new(0),
        }
    }

    /// Charges `bytes` if the limit allows; `false` (nothing charged) if not.
    pub fn try_charge(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let charged = self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
            used.checked_add(bytes).filter(|&after| after <= limit)
        });
        if charged.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        charged.is_ok()
    }

    /// Charges `bytes` whatever the limit: for memory already taken (a heap table that grew a
    /// little past its estimate). Use [`MemoryBudget::try_charge`] before taking memory.
    pub fn force_charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Charges `bytes` if the limit allows, as a [`Charge`] that gives them back when dropped.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        self.try_charge(bytes).then(|| Charge { budget: self.clone(), bytes })
    }

    /// Charges `bytes` whatever the limit (memory that must be held: a restored pool's
    /// database cache), as a [`Charge`].
    pub fn charge_anyway(self: &Arc<Self>, bytes: u64) -> Charge {
        self.force_charge(bytes);
        Charge { budget: self.clone(), bytes }
    }

    /// Charges `bytes` of a plugin instance's linear memory if the limit allows (a memory grown
    /// by a call: refused past the budget, the call then faults and nothing is taken).
    pub fn try_charge_plugin(&self, bytes: u64) -> bool {
        let charged = self.try_charge(bytes);
        if charged {
            self.plugins.fetch_add(bytes, Ordering::Relaxed);
        }
        charged
    }

    /// Charges `bytes` of a plugin instance's linear memory whatever the limit: an instance's
    /// start (its initial memory and what `init` grows), which a pool needs to serve at all —
    /// a fresh instance after a fault replaces one whose memory was just given back.
    pub fn force_charge_plugin(&self, bytes: u64) {
        self.force_charge(bytes);
        self.plugins.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `bytes` of plugin memory charged earlier (an instance dropped).
    pub fn release_plugin(&self, bytes: u64) {
        self.plugins.fetch_sub(bytes, Ordering::Relaxed);
        self.release(bytes);
    }

    /// Of [`MemoryBudget::used`], bytes of plugin instances' linear memories.
    pub fn plugin_bytes(&self) -> u64 {
        self.plugins.load(Ordering::Relaxed)
    }

    /// Gives back `bytes` charged earlier.
    pub fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "released {bytes} of {before} charged bytes");
    }

    /// The effective limit, in bytes: the smaller of the operator's limit and the governor's
    /// target. This is what charges are held to.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// The operator's limit, in bytes (`u64::MAX`: none).
    pub fn operator_limit(&self) -> u64 {
        self.operator.load(Ordering::Relaxed)
    }

    /// The governor's target, in bytes; `None` while no governor sets one.
    pub fn target(&self) -> Option<u64> {
        Some(self.target.load(Ordering::Relaxed)).filter(|&t| t != u64::MAX)
    }

    /// Changes the operator's limit. What is already charged stays; new charges see the new
    /// effective limit.
    pub fn set_limit(&self, limit: u64) {
        let _changes = self.changes.lock();
        self.operator.store(limit, Ordering::Relaxed);
        self.limit.store(limit.min(self.target.load(Ordering::Relaxed)), Ordering::Relaxed);
    }

    /// Sets (or, with `None`, clears) the governor's target. What is already charged stays.
    pub fn set_target(&self, target: Option<u64>) {
        let _changes = self.changes.lock();
        let target = target.unwrap_or(u64::MAX);
        self.target.store(target, Ordering::Relaxed);
        self.limit.store(target.min(self.operator.load(Ordering::Relaxed)), Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Bytes charged to a [`MemoryBudget`] for as long as this lives.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_limit_and_resume_after_a_release_or_a_raise() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41));
        assert!(budget.try_charge(40));
        assert_eq!((budget.used(), budget.refused()), (100, 1));
        budget.release(50);
        assert!(budget.try_charge(50));
        budget.set_limit(50);
        assert!(!budget.try_charge(1), "over a lowered limit nothing new is charged");
        budget.release(60);
        assert!(budget.try_charge(10));
        assert!(!MemoryBudget::new(10).try_charge(u64::MAX), "no overflow");
    }

    #[test]
    fn the_effective_limit_is_the_smaller_of_the_operators_and_the_governors() {
        let budget = MemoryBudget::new(100);
        assert_eq!((budget.limit(), budget.operator_limit(), budget.target()), (100, 100, None));
        budget.set_target(Some(40));
        assert_eq!((budget.limit(), budget.operator_limit(), budget.target()), (40, 100, Some(40)));
        assert!(budget.try_charge(40) && !budget.try_charge(1), "the target is enforced");
        budget.set_limit(30);
        assert_eq!(budget.limit(), 30, "a lower operator limit wins");
        budget.set_limit(200);
        assert_eq!(budget.limit(), 40, "a raised operator limit stays under the target");
        budget.set_target(None);
        assert_eq!(budget.limit(), 200);
        assert!(budget.try_charge(1));
    }
}
