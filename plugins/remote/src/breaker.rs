//! The per-endpoint circuit breaker, counted in operations because a plugin has no clock.

use tmem_sdk::log;

/// Stores refused without touching the network after an endpoint failed.
pub const SKIPPED_STORES: u32 = 64;

/// Makes stores to a failed endpoint fail fast.
///
/// After a failure the next [`SKIPPED_STORES`] store attempts to the endpoint are refused
/// without touching the network; then one is tried again (and trips the breaker again if it
/// fails too). A load or delete that succeeds on the endpoint closes the breaker at once. Loads
/// and deletes are never skipped: a load is owed its page.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Store attempts still to refuse.
    skip: u32,
    /// Whether the endpoint is considered down (for logging transitions only).
    down: bool,
}

impl Breaker {
    /// Whether a store may use the endpoint now; a refused attempt counts down the breaker.
    pub fn allow_store(&mut self) -> bool {
        if self.skip == 0 {
            true
        } else {
            self.skip -= 1;
            false
        }
    }

    /// Whether stores are being refused.
    pub fn is_open(&self) -> bool {
        self.skip > 0
    }

    /// Records a failure of the endpoint `addr`.
    pub fn trip(&mut self, addr: &str, why: &dyn core::fmt::Display) {
        if !self.down {
            log::warn(&format!(
                "remote endpoint {addr} failed ({why}); refusing stores to it for the next {SKIPPED_STORES} attempts"
            ));
        }
        self.down = true;
        self.skip = SKIPPED_STORES;
    }

    /// Records a success of the endpoint `addr`.
    pub fn succeed(&mut self, addr: &str) {
        if self.down {
            log::info(&format!("remote endpoint {addr} answers again"));
        }
        self.down = false;
        self.skip = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_a_fixed_number_of_stores_then_tries_again() {
        let mut b = Breaker::default();
        assert!(b.allow_store());
        b.trip("x:1", &"boom");
        assert!(b.is_open());
        for _ in 0..SKIPPED_STORES {
            assert!(!b.allow_store());
        }
        assert!(b.allow_store());
        b.trip("x:1", &"boom");
        assert!(!b.allow_store());
        b.succeed("x:1");
        assert!(b.allow_store() && !b.is_open());
    }
}
