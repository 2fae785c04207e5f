//! The host page store: the capability through which a store plugin keeps page bytes in host
//! memory, so that they outlive any plugin instance (a trapped instance is thrown away with
//! its linear memory; these bytes are not).
//!
//! One [`PageShard`] per pool shard, keyed by page offset. A shard is only ever touched while
//! its pool shard is locked, so its mutex is never contended; it exists so that the plugin
//! instance (through its host functions) and the pool (to purge after a plugin fault) can
//! both reach the same bytes. Every byte kept is accounted in the pool's `pool_total_size`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::stats::PoolStats;

/// Bytes of one pool shard, by offset.
#[derive(Debug)]
pub struct PageShard {
    pages: Mutex<HashMap<u64, Box<[u8]>, foldhash::fast::RandomState>>,
    /// The owning pool's stats: every byte kept is counted in `pool_total_size`.
    stats: Arc<PoolStats>,
}

impl PageShard {
    /// An empty shard that accounts into `stats`.
    pub fn new(stats: Arc<PoolStats>) -> Self {
        PageShard { pages: Mutex::new(HashMap::default()), stats }
    }

    fn bytes_added(&self, n: usize) {
        PoolStats::add(&self.stats.counters.pool_total_size, n as u64);
    }

    fn bytes_removed(&self, n: usize) {
        PoolStats::sub(&self.stats.counters.pool_total_size, n as u64);
    }

    /// Keeps a copy of `bytes` under `offset`, replacing what was there.
    pub fn put(&self, offset: u64, bytes: &[u8]) {
        let old = self.pages.lock().insert(offset, bytes.into());
        self.bytes_added(bytes.len());
        if let Some(old) = old {
            self.bytes_removed(old.len());
        }
    }

    /// Calls `read` with the bytes under `offset`, if any.
    pub fn with<R>(&self, offset: u64, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.pages.lock().get(&offset).map(|bytes| read(bytes))
    }

    /// Drops `offset`; returns whether anything was there.
    pub fn delete(&self, offset: u64) -> bool {
        match self.pages.lock().remove(&offset) {
            Some(old) => {
                self.bytes_removed(old.len());
                true
            }
            None => false,
        }
    }

    /// Drops everything in this shard.
    pub fn clear(&self) {
        let mut pages = self.pages.lock();
        let bytes: usize = pages.values().map(|b| b.len()).sum();
        pages.clear();
        pages.shrink_to_fit();
        self.bytes_removed(bytes);
    }

    /// How many offsets this shard keeps.
    pub fn len(&self) -> usize {
        self.pages.lock().len()
    }

    /// Whether this shard keeps nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_accounted_through_replace_delete_and_clear() {
        let stats = Arc::new(PoolStats::default());
        let shard = PageShard::new(stats.clone());
        let gauge = || stats.counters.snapshot().pool_total_size;
        shard.put(1, &[1; 100]);
        shard.put(2, &[2; 50]);
        assert_eq!(gauge(), 150);
        shard.put(1, &[3; 10]);
        assert_eq!(gauge(), 60);
        assert_eq!(shard.with(1, |b| b.to_vec()), Some(vec![3; 10]));
        assert!(shard.delete(2));
        assert!(!shard.delete(2));
        assert_eq!(gauge(), 10);
        shard.clear();
        assert_eq!(gauge(), 0);
        assert!(shard.is_empty());
    }
}
