//! Prefetch policy for a [`Region`](crate::region::Region): Leap's majority trend (ATC'20).
//!
//! - [`Trend`] keeps the deltas between the last [`HISTORY`] missing faults (in pages, signed)
//!   and finds the **majority delta** with a Boyer–Moore vote, first over the most recent 4
//!   deltas, then 8, then all 16 (Leap's growing window: a new trend is found within 3 faults,
//!   an old one survives some noise). A delta is a trend only if it is nonzero and holds a
//!   strict majority of the window looked at; random access has none, so it prefetches
//!   nothing and pays only this O(1) bookkeeping (at most 16 + 16 + 8 + 8 + 4 + 4 comparisons).
//! - [`Amount`] is how many pages to prefetch along a trend: it starts at [`Amount::INITIAL`],
//!   doubles (up to a cap) when every page of the previous prefetch was used, and halves
//!   (down to 1) when fewer than half were.
//!
//! The region decides what "used" means (userspace cannot read accessed bits, see the region's
//! module docs) and which of the pages along the trend it can actually prefetch.

/// Deltas remembered.
pub const HISTORY: usize = 16;

/// The recent fault deltas and the trend among them.
#[derive(Debug, Clone, Default)]
pub struct Trend {
    /// Ring of the most recent deltas; `next` is where the next one goes.
    deltas: [i64; HISTORY],
    len: usize,
    next: usize,
    last: Option<u64>,
}

impl Trend {
    /// Records a missing fault at page `page` and returns the majority delta of the recent
    /// faults, if there is one (never 0).
    pub fn record(&mut self, page: u64) -> Option<i64> {
        if let Some(last) = self.last.replace(page) {
            let delta = page.wrapping_sub(last) as i64;
            self.deltas[self.next] = delta;
            self.next = (self.next + 1) % HISTORY;
            self.len = (self.len + 1).min(HISTORY);
        }
        self.current()
    }

    /// The majority delta now (see the module docs).
    pub fn current(&self) -> Option<i64> {
        let mut window = 4;
        loop {
            let w = window.min(self.len);
            if w >= 2
                && let Some(delta) = self.majority(w)
            {
                return Some(delta);
            }
            if window >= self.len || window >= HISTORY {
                return None;
            }
            window *= 2;
        }
    }

    /// The `i`-th most recent delta (0 = newest).
    fn recent(&self, i: usize) -> i64 {
        self.deltas[(self.next + HISTORY - 1 - i) % HISTORY]
    }

    /// Boyer–Moore majority vote over the `w` most recent deltas, then a check that the
    /// candidate really holds more than half of them.
    fn majority(&self, w: usize) -> Option<i64> {
        let (mut candidate, mut count) = (0i64, 0usize);
        for i in 0..w {
            let d = self.recent(i);
            if count == 0 {
                candidate = d;
                count = 1;
            } else if d == candidate {
                count += 1;
            } else {
                count -= 1;
            }
        }
        let votes = (0..w).filter(|&i| self.recent(i) == candidate).count();
        (candidate != 0 && votes * 2 > w).then_some(candidate)
    }
}

/// How many pages the next prefetch brings (see the module docs).
#[derive(Debug, Clone)]
pub struct Amount {
    n: usize,
    cap: usize,
}

impl Amount {
    /// The first prefetch's size.
    pub const INITIAL: usize = 4;

    /// Starts at [`Amount::INITIAL`] (or `cap`, if smaller), never above `cap`.
    pub fn new(cap: usize) -> Amount {
        Amount { n: Amount::INITIAL.min(cap), cap }
    }

    /// Pages to prefetch now.
    pub fn get(&self) -> usize {
        self.n
    }

    /// The outcome of the previous prefetch: `used` of its `issued` pages were used.
    pub fn feedback(&mut self, issued: usize, used: usize) {
        if issued == 0 {
            return;
        }
        if used >= issued {
            self.n = (self.n * 2).min(self.cap);
        } else if used * 2 < issued {
            self.n = (self.n / 2).max(1).min(self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(trend: &mut Trend, pages: impl IntoIterator<Item = u64>) -> Option<i64> {
        let mut last = None;
        for p in pages {
            last = trend.record(p);
        }
        last
    }

    #[test]
    fn sequential_strided_and_backwards_scans_have_a_trend() {
        let mut t = Trend::default();
        assert_eq!(t.record(100), None, "one fault is no trend");
        assert_eq!(t.record(101), None, "one delta is no trend");
        assert_eq!(t.record(102), Some(1));
        assert_eq!(feed(&mut Trend::default(), (0..40).map(|i| 7 + 4 * i)), Some(4));
        assert_eq!(feed(&mut Trend::default(), (0..40).map(|i| 1000 - i)), Some(-1));
        assert_eq!(feed(&mut Trend::default(), (0..40).map(|i| 1000 - 3 * i)), Some(-3));
    }

    #[test]
    fn random_access_has_no_trend() {
        let mut t = Trend::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut trends = 0;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if t.record(x % 65_536).is_some() {
                trends += 1;
            }
        }
        assert_eq!(trends, 0);
        // The same page over and over is no direction to prefetch in.
        assert_eq!(feed(&mut Trend::default(), [5; 10]), None);
    }

    #[test]
    fn a_trend_that_changes_is_followed_within_a_few_faults() {
        let mut t = Trend::default();
        assert_eq!(feed(&mut t, 0..32), Some(1));
        // Now backwards from 500: the jump is one odd delta, then -1s.
        let mut seen = Vec::new();
        for p in (480..=500).rev() {
            seen.push(t.record(p));
        }
        assert_eq!(seen[0], Some(1), "one odd delta does not break the old trend");
        assert_eq!(seen[3], Some(-1), "three faults into the new direction: {seen:?}");
        assert!(seen[3..].iter().all(|&d| d == Some(-1)));
        // Then strided by +4: within 3 faults.
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(t.record(2000 + 4 * i));
        }
        assert_eq!(seen[3], Some(4), "{seen:?}");
    }

    #[test]
    fn a_trend_survives_some_noise() {
        let mut t = Trend::default();
        feed(&mut t, 0..20);
        // Interleaved: a scan with an unrelated fault every fifth time (two odd deltas each).
        let mut p = 20;
        let mut found = 0;
        for i in 0..40 {
            let r = if i % 5 == 4 {
                t.record(50_000 + i)
            } else {
                p += 1;
                t.record(p)
            };
            found += usize::from(r == Some(1));
        }
        assert!(found >= 20, "{found}");
    }

    #[test]
    fn the_amount_grows_on_hits_and_shrinks_on_waste() {
        let mut a = Amount::new(64);
        assert_eq!(a.get(), 4);
        a.feedback(4, 4);
        assert_eq!(a.get(), 8);
        for _ in 0..10 {
            a.feedback(a.get(), a.get());
        }
        assert_eq!(a.get(), 64, "capped");
        a.feedback(64, 40);
        assert_eq!(a.get(), 64, "more than half used: unchanged");
        a.feedback(64, 10);
        assert_eq!(a.get(), 32);
        for _ in 0..10 {
            a.feedback(a.get(), 0);
        }
        assert_eq!(a.get(), 1, "never below one");
        a.feedback(0, 0);
        assert_eq!(a.get(), 1);
        assert_eq!(Amount::new(2).get(), 2, "the cap bounds the start");
        assert_eq!(Amount::new(0).get(), 0);
    }
}
