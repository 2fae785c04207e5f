//! [`MemoryBudget`]: the most memory the host keeps for pages, and what it keeps now.
//!
//! Everything the host holds for pages is charged here before it is held — the arena's
//! committed spans (stored bytes and their headroom), per-page index memory — and released
//! when given back. A charge that would pass the limit is refused: the caller refuses the
//! store (frontswap's way), it never allocates past the budget. The limit changes at run time;
//! lowering it below what is held refuses new charges until enough is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The host's memory budget for pages. Lock-free: charging is one compare-and-swap.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicU64,
    used: AtomicU64,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`u64::MAX`: none), nothing charged.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit: AtomicU64::new(limit), used: AtomicU64::new(0), refused: AtomicU64::new(0) }
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

    /// Gives back `bytes` charged earlier.
    pub fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "released {bytes} of {before} charged bytes");
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit. What is already charged stays; new charges see the new limit.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed)
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
}
