//! The host page store: the capability through which a store plugin keeps page bytes outside
//! its own linear memory, so that they outlive any plugin instance (a trapped instance is
//! thrown away with its linear memory; these bytes are not).
//!
//! One [`PageShard`] per pool shard, keyed by page offset, with one of two backings:
//!
//! - **memory** (every store by default): the bytes in the host's [`PageArena`] (charged to the
//!   host's memory budget; a record the arena cannot take is refused, never allocated on the
//!   heap), by offset; every byte kept is accounted in the pool's `pool_total_size`.
//! - **disk** (a store granted `storage`): the shard's tree in the pool's own sled database
//!   ([`crate::persist`]). Each record is `[kind: u8][generation: u32 LE][the plugin's bytes]`,
//!   key = offset (big-endian): the host's own header says how the page was encoded and by
//!   which chain generation, so a restarted host rebuilds the pool's map from the records
//!   alone ([`PageShard::recover`]), and one record insert is one atomic change.
//!   `pool_total_size` is the database's size on disk.
//!
//! A shard is only ever touched while its pool shard is locked; the mutex (memory backing)
//! exists so that the plugin instance (through its host functions) and the pool (to purge
//! after a plugin fault) can both reach the same bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::memory::arena::{Handle, MAX_OBJECT, PageArena};
use crate::stats::PoolStats;

/// Bytes of the host header of a disk record.
const DISK_HEADER: usize = 5;

/// What the host records about a page next to its bytes (disk backing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMeta {
    /// How the chain encoded it (`EncodedKind` as a byte).
    pub kind: u8,
    /// The chain generation that stored it.
    pub generation: u32,
}

/// A record kept in the arena: where, and how long (an empty record has no object).
#[derive(Debug, Clone, Copy)]
struct InArena {
    handle: Option<Handle>,
    len: u32,
}

enum Backing {
    Memory {
        arena: Arc<PageArena>,
        records: Mutex<HashMap<u64, InArena, foldhash::fast::RandomState>>,
    },
    Disk {
        tree: sled::Tree,
        /// The header of the next put, staged by the chain before it calls the store
        /// (packed: kind << 32 | generation).
        staged: AtomicU64,
    },
}

/// Bytes of one pool shard, by offset.
pub struct PageShard {
    backing: Backing,
    /// The owning pool's stats (memory backing accounts every byte in `pool_total_size`).
    stats: Arc<PoolStats>,
}

impl std::fmt::Debug for PageShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_persistent() { "PageShard(disk)" } else { "PageShard(memory)" })
    }
}

fn key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

impl PageShard {
    /// An empty in-memory shard keeping its bytes in `arena`, accounting into `stats`.
    pub fn new(stats: Arc<PoolStats>, arena: Arc<PageArena>) -> Self {
        PageShard { backing: Backing::Memory { arena, records: Mutex::new(HashMap::default()) }, stats }
    }

    /// A shard kept in `tree`.
    pub fn on_disk(tree: sled::Tree, stats: Arc<PoolStats>) -> Self {
        PageShard { backing: Backing::Disk { tree, staged: AtomicU64::new(0) }, stats }
    }

    /// Whether the bytes are on disk.
    pub fn is_persistent(&self) -> bool {
        matches!(self.backing, Backing::Disk { .. })
    }

    /// Sets the header the next put records (disk backing; ignored in memory).
    pub fn stage(&self, meta: PageMeta) {
        if let Backing::Disk { staged, .. } = &self.backing {
            staged.store((meta.kind as u64) << 32 | meta.generation as u64, Ordering::Relaxed);
        }
    }

    fn bytes_added(&self, n: usize) {
        PoolStats::add(&self.stats.counters.pool_total_size, n as u64);
    }

    fn bytes_removed(&self, n: usize) {
        PoolStats::sub(&self.stats.counters.pool_total_size, n as u64);
    }

    /// Keeps a copy of `bytes` under `offset`, replacing what was there. `false` if it could
    /// not be kept (no room in the arena or the budget, a record over a page of the largest
    /// size, a disk error); the old record is gone either way.
    pub fn put(&self, offset: u64, bytes: &[u8]) -> bool {
        match &self.backing {
            Backing::Memory { arena, records } => {
                let mut records = records.lock();
                if let Some(old) = records.remove(&offset) {
                    self.free(arena, old);
                }
                let handle = match bytes.len() {
                    0 => None,
                    len if len > MAX_OBJECT => return false,
                    _ => match arena.alloc(bytes) {
                        Some(handle) => Some(handle),
                        None => return false,
                    },
                };
                records.insert(offset, InArena { handle, len: bytes.len() as u32 });
                self.bytes_added(bytes.len());
                true
            }
            Backing::Disk { tree, staged } => {
                let staged = staged.load(Ordering::Relaxed);
                let mut record = Vec::with_capacity(DISK_HEADER + bytes.len());
                record.push((staged >> 32) as u8);
                record.extend_from_slice(&(staged as u32).to_le_bytes());
                record.extend_from_slice(bytes);
                match tree.insert(key(offset), record) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!("pool database write failed: {e}");
                        false
                    }
                }
            }
        }
    }

    fn free(&self, arena: &PageArena, record: InArena) {
        if let Some(handle) = record.handle {
            arena.free(handle, record.len as usize);
        }
        self.bytes_removed(record.len as usize);
    }

    /// Calls `read` with the bytes under `offset`, if any.
    pub fn with<R>(&self, offset: u64, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match &self.backing {
            Backing::Memory { arena, records } => {
                let records = records.lock();
                let record = *records.get(&offset)?;
                Some(match record.handle {
                    Some(handle) => arena.with(handle, record.len as usize, read),
                    None => read(&[]),
                })
            }
            Backing::Disk { tree, .. } => match tree.get(key(offset)) {
                Ok(Some(record)) if record.len() >= DISK_HEADER => Some(read(&record[DISK_HEADER..])),
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(offset, "pool database read failed: {e}");
                    None
                }
            },
        }
    }

    /// Drops `offset`; returns whether anything was there.
    pub fn delete(&self, offset: u64) -> bool {
        match &self.backing {
            Backing::Memory { arena, records } => match records.lock().remove(&offset) {
                Some(old) => {
                    self.free(arena, old);
                    true
                }
                None => false,
            },
            Backing::Disk { tree, .. } => match tree.remove(key(offset)) {
                Ok(old) => old.is_some(),
                Err(e) => {
                    tracing::error!(offset, "pool database delete failed: {e}");
                    false
                }
            },
        }
    }

    /// Drops everything in this shard.
    pub fn clear(&self) {
        match &self.backing {
            Backing::Memory { arena, records } => {
                let mut records = records.lock();
                for (_, old) in records.drain() {
                    self.free(arena, old);
                }
                records.shrink_to_fit();
            }
            Backing::Disk { tree, .. } => {
                if let Err(e) = tree.clear() {
                    tracing::error!("pool database clear failed: {e}");
                }
            }
        }
    }

    /// Whether this shard keeps nothing.
    pub fn is_empty(&self) -> bool {
        match &self.backing {
            Backing::Memory { records, .. } => records.lock().is_empty(),
            Backing::Disk { tree, .. } => tree.is_empty(),
        }
    }

    /// Every record's offset and header (disk backing; empty in memory): what a restarted
    /// host rebuilds the pool's map from. Records too short to have a header are dropped.
    pub fn recover(&self) -> Vec<(u64, PageMeta)> {
        let Backing::Disk { tree, .. } = &self.backing else { return Vec::new() };
        let mut found = Vec::new();
        for entry in tree.iter() {
            match entry {
                Ok((key, record)) if key.len() == 8 && record.len() >= DISK_HEADER => {
                    let offset = u64::from_be_bytes(key.as_ref().try_into().expect("8 bytes"));
                    let generation = u32::from_le_bytes(record[1..DISK_HEADER].try_into().expect("4 bytes"));
                    found.push((offset, PageMeta { kind: record[0], generation }));
                }
                Ok((key, _)) => {
                    tracing::error!(key = ?key, "dropping a malformed record from a pool database");
                    let _ = tree.remove(key);
                }
                Err(e) => tracing::error!("reading a pool database failed: {e}"),
            }
        }
        found
    }
}

impl Drop for PageShard {
    /// The arena is the host's: a shard's objects go back to it with the shard.
    fn drop(&mut self) {
        if matches!(self.backing, Backing::Memory { .. }) {
            self.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_accounted_through_replace_delete_and_clear() {
        let stats = Arc::new(PoolStats::default());
        let arena = crate::memory::arena::tests::test_arena();
        let shard = PageShard::new(stats.clone(), arena.clone());
        let gauge = || stats.counters.snapshot().pool_total_size;
        assert!(shard.put(1, &[1; 100]));
        shard.put(2, &[2; 50]);
        assert_eq!(gauge(), 150);
        shard.put(1, &[3; 10]);
        assert_eq!(gauge(), 60);
        assert_eq!(shard.with(1, |b| b.to_vec()), Some(vec![3; 10]));
        assert!(shard.delete(2));
        assert!(!shard.delete(2));
        assert_eq!(gauge(), 10);
        assert!(shard.put(4, &[]), "an empty record takes no object");
        assert_eq!(shard.with(4, |b| b.len()), Some(0));
        assert_eq!(arena.stats().object_bytes, 10);
        shard.clear();
        assert_eq!(gauge(), 0);
        assert!(shard.is_empty());
        assert_eq!(arena.stats().objects, 0, "the shard's objects went back to the arena");
        shard.put(9, &[9; 700]);
        drop(shard);
        assert_eq!(arena.stats().objects, 0, "and so do they when the shard is dropped");
    }

    #[test]
    fn disk_records_carry_the_staged_header_and_are_recovered() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let shard = PageShard::on_disk(db.open_tree("s").unwrap(), Arc::new(PoolStats::default()));
        shard.stage(PageMeta { kind: 2, generation: 7 });
        assert!(shard.put(5, b"five"));
        shard.stage(PageMeta { kind: 0, generation: 8 });
        assert!(shard.put(3, b"three"));
        assert_eq!(shard.with(5, |b| b.to_vec()), Some(b"five".to_vec()));
        assert_eq!(
            shard.recover(),
            vec![(3, PageMeta { kind: 0, generation: 8 }), (5, PageMeta { kind: 2, generation: 7 })]
        );
        assert!(shard.delete(3) && !shard.delete(3));
        shard.clear();
        assert!(shard.is_empty() && shard.recover().is_empty());
    }
}
