//! [`PageShard`]: the pages of one pool shard — the shard's [`PageIndex`] (the frontswap map,
//! one 16-byte entry per page) and the **records** a store keeps through the host page store
//! capability (`pages_put` / `pages_get` / `pages_delete` / `pages_clear`), so that they outlive
//! any plugin instance (a trapped instance is thrown away with its linear memory; these bytes
//! are not).
//!
//! # The host owns the record lifecycle
//!
//! A store plugin is not trusted with the lifetime of what it keeps:
//!
//! - During a store of offset `o` ([`PageShard::begin_put`]), `pages_put` is accepted for `o`
//!   only, at most one I/O buffer long, and charged at the moment of the put: to the pool's
//!   `max_bytes` and, through the arena, to the host's memory budget. Anything else is refused
//!   (the store fails) and remembered as a [`PutRefusal`]. Outside a store, `pages_put` is
//!   refused.
//! - The record joins the index only when the store succeeds ([`PageShard::commit_put`]);
//!   a failed store drops it ([`PageShard::abort_put`]).
//! - On invalidate, overwrite, exclusive load and invalidate_area the host removes the entry
//!   and its record itself ([`PageShard::remove`], [`PageShard::drain`]), whatever the plugin's
//!   `delete`/`clear` did: `pages_delete` and `pages_clear` only report. A restart therefore
//!   never brings back a page the host invalidated or overwrote.
//!
//! # Backings
//!
//! - **memory** (every store by default): a record is an object in the host's [`PageArena`]
//!   named by the page's index entry; `pool_total_size` counts record bytes.
//! - **disk** (a store granted `storage`): a record lives in the shard's tree of the pool's
//!   own sled database ([`crate::persist`]), key = offset (big-endian), value =
//!   `[kind | 0x80][generation: u32 LE][checksum: u32 LE][the plugin's bytes]`: the host's own
//!   header says how the page was encoded, by which chain generation, and what the frontend's
//!   bytes summed to, so a restarted host rebuilds the index from the records alone
//!   ([`PageShard::recover`]) and still checks every page. Records of tmem 0.1 have a 5-byte
//!   header without checksum (`kind` below 0x80): they are read, unchecked.
//!   `pool_total_size` is the database's size on disk.
//!
//! A shard is only ever touched while its pool shard is locked; the mutex exists so that the
//! plugin instance (through its host functions) and the pool can both reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::memory::arena::{Handle, MAX_OBJECT, PageArena};
use crate::page_index::{IndexFull, PageEntry, PageIndex};
use crate::stats::PoolStats;

/// Bytes of the host header of a disk record with a checksum.
const DISK_HEADER: usize = 9;
/// Bytes of the header of a tmem 0.1 disk record (no checksum).
const DISK_HEADER_V0: usize = 5;
/// Set in a disk record's first byte when its header carries a checksum.
const DISK_CHECKED: u8 = 0x80;

/// What the host records about a page beside its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMeta {
    /// How the chain encoded it (`EncodedKind` as a byte).
    pub kind: u8,
    /// The chain generation that stored it.
    pub generation: u32,
    /// The checksum of the bytes the frontend gave (`None`: the pool does not check).
    pub checksum: Option<u32>,
}

/// Why a store plugin's `pages_put` was refused (the store then fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutRefusal {
    /// Not during a store, or for another offset than the one being stored.
    ForeignOffset,
    /// Longer than the store's I/O buffer.
    TooLong,
    /// The pool's `max_bytes` would be passed.
    PoolLimit,
    /// No arena memory (the host's budget), or no room in the index.
    NoMemory,
    /// The pool's database failed.
    Disk,
}

/// The store operation the shard's store plugin is inside now: what its `pages_*` calls may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreOp {
    Idle,
    Put { offset: u64, meta: PageMeta },
    Delete { offset: u64 },
}

/// The record a store put during the current store.
#[derive(Debug, Clone, Copy)]
enum Staged {
    /// An arena object (`None`: an empty record).
    Memory(Option<(Handle, usize)>),
    /// Written to the database.
    Disk,
}

struct State {
    index: PageIndex,
    op: StoreOp,
    staged: Option<Staged>,
    refusal: Option<PutRefusal>,
}

/// The pages of one pool shard: the index and the records.
pub struct PageShard {
    state: Mutex<State>,
    arena: Arc<PageArena>,
    /// The shard's tree in the pool's database, when the store is granted `storage`.
    disk: Option<sled::Tree>,
    /// This shard's number: a page's offset is its index key, shifted, ORed with it.
    shard: u64,
    /// The longest record a put may keep (the store's I/O buffer).
    max_record: usize,
    /// The pool's `max_bytes` (`u64::MAX`: none), shared with the pool.
    max_bytes: Arc<AtomicU64>,
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

/// Where a shard sits in its pool, and the pool's shared limits.
#[derive(Debug, Clone)]
pub struct ShardPlace {
    /// The shard's number.
    pub shard: usize,
    /// The pool's shard count (a power of two).
    pub shards: usize,
    /// The longest record a put may keep.
    pub max_record: usize,
    /// The pool's `max_bytes`, shared.
    pub max_bytes: Arc<AtomicU64>,
}

impl PageShard {
    /// An empty shard at `place`, its index and (without `disk`) its records in `arena`;
    /// with `disk`, records in that tree.
    pub fn new(place: ShardPlace, stats: Arc<PoolStats>, arena: Arc<PageArena>, disk: Option<sled::Tree>) -> Self {
        PageShard {
            state: Mutex::new(State {
                index: PageIndex::new(arena.clone(), place.shards),
                op: StoreOp::Idle,
                staged: None,
                refusal: None,
            }),
            arena,
            disk,
            shard: place.shard as u64,
            max_record: place.max_record.min(MAX_OBJECT),
            max_bytes: place.max_bytes,
            stats,
        }
    }

    /// Whether the records are on disk.
    pub fn is_persistent(&self) -> bool {
        self.disk.is_some()
    }

    // ----- the host's side -----

    /// A store of `offset` begins: its store may put a record for `offset`, recorded with `meta`.
    pub fn begin_put(&self, offset: u64, meta: PageMeta) {
        let mut state = self.state.lock();
        debug_assert!(state.staged.is_none());
        state.op = StoreOp::Put { offset, meta };
        state.refusal = None;
    }

    /// A delete of `offset` begins (the host removes the page after it, whatever it does).
    pub fn begin_delete(&self, offset: u64) {
        self.state.lock().op = StoreOp::Delete { offset };
    }

    /// The store of `offset` succeeded: its entry (with the record the store put, if any)
    /// joins the index. `Err` (the record dropped, the store must fail) if the index has no room.
    pub fn commit_put(&self, offset: u64) -> Result<(), PutRefusal> {
        let mut state = self.state.lock();
        let StoreOp::Put { offset: staged_offset, meta } = state.op else {
            panic!("commit_put without begin_put");
        };
        assert_eq!(staged_offset, offset);
        state.op = StoreOp::Idle;
        let staged = state.staged.take();
        let record = match staged {
            Some(Staged::Memory(record)) => record,
            _ => None,
        };
        let entry = PageEntry::new(meta.kind, meta.generation, meta.checksum).with_record(record);
        match state.index.insert(offset, entry) {
            Ok(old) => {
                if let Some(old) = old {
                    // The pool removes a page before storing it again; should one remain,
                    // its record must not leak.
                    self.free_record(&old);
                }
                Ok(())
            }
            Err(IndexFull) => {
                self.drop_staged(offset, staged);
                Err(PutRefusal::NoMemory)
            }
        }
    }

    /// The store failed: the record it put (if any) is dropped. Returns why a put was refused
    /// during it, if one was.
    pub fn abort_put(&self, offset: u64) -> Option<PutRefusal> {
        let mut state = self.state.lock();
        state.op = StoreOp::Idle;
        let staged = state.staged.take();
        self.drop_staged(offset, staged);
        state.refusal.take()
    }

    fn drop_staged(&self, offset: u64, staged: Option<Staged>) {
        match staged {
            Some(Staged::Memory(record)) => self.free_bytes(record),
            Some(Staged::Disk) => self.disk_remove(offset),
            None => {}
        }
    }

    /// The entry of `offset`, if the page is present.
    pub fn entry(&self, offset: u64) -> Option<PageEntry> {
        self.state.lock().index.get(offset)
    }

    /// Whether `offset` is present.
    pub fn contains(&self, offset: u64) -> bool {
        self.state.lock().index.contains(offset)
    }

    /// Makes room ahead in the index for every offset below `offsets` (see
    /// [`PageIndex::reserve_dense`]); `false` if the budget refused.
    pub fn reserve_offsets(&self, offsets: u64) -> bool {
        self.state.lock().index.reserve_dense(offsets).is_ok()
    }

    /// Removes the page `offset`: its entry and its record (in memory or on disk).
    pub fn remove(&self, offset: u64) -> Option<PageEntry> {
        let mut state = self.state.lock();
        state.op = StoreOp::Idle;
        let old = state.index.remove(offset)?;
        self.free_record(&old);
        if self.disk.is_some() {
            self.disk_remove(offset);
        }
        Some(old)
    }

    /// Removes every page, calling `f` with each entry, and every record.
    pub fn drain(&self, mut f: impl FnMut(&PageEntry)) {
        let mut state = self.state.lock();
        state.op = StoreOp::Idle;
        state.index.drain(|entry| {
            self.free_record(&entry);
            f(&entry);
        });
        if let Some(tree) = &self.disk
            && let Err(e) = tree.clear()
        {
            tracing::error!("pool database clear failed: {e}");
        }
    }

    /// Marks `offset` used (the tiers' reference bit), if it is present.
    pub fn touch(&self, offset: u64) {
        self.state.lock().index.touch(offset)
    }

    /// One pass of the tiers' clock over the shard's pages (see [`PageIndex::age`]).
    pub fn age(&self, units: u8, f: impl FnMut(u64, u8)) {
        self.state.lock().index.age(units, self.shard, f)
    }

    /// Up to `n` present offsets, appended to `out`.
    pub fn some_offsets(&self, n: usize, out: &mut Vec<u64>) {
        self.state.lock().index.some_offsets(n, self.shard, out)
    }

    /// Pages present.
    pub fn len(&self) -> usize {
        self.state.lock().index.len()
    }

    /// Whether no page is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the records that lie in runs the arena is draining (a compaction) into other
    /// runs; returns how many moved.
    pub fn relocate_records(&self) -> u64 {
        let mut state = self.state.lock();
        let mut moved = 0;
        state.index.for_each_mut(|entry| {
            if let Some((handle, len)) = entry.record()
                && self.arena.is_draining(handle)
                && let Some(new) = self.arena.relocate(handle, len)
            {
                *entry = entry.with_record(Some((new, len)));
                moved += 1;
            }
        });
        moved
    }

    fn free_record(&self, entry: &PageEntry) {
        self.free_bytes(entry.record());
    }

    fn free_bytes(&self, record: Option<(Handle, usize)>) {
        if let Some((handle, len)) = record {
            self.arena.free(handle, len);
            PoolStats::sub(&self.stats.counters.pool_total_size, len as u64);
        }
    }

    fn disk_remove(&self, offset: u64) {
        if let Some(tree) = &self.disk
            && let Err(e) = tree.remove(key(offset))
        {
            tracing::error!(offset, "pool database delete failed: {e}");
        }
    }

    /// Rebuilds the index from the database's records (disk backing; nothing in memory) and
    /// returns every page's offset and header: what a restarted host rebuilds the pool from.
    /// Records too short to have a header are dropped; so is a record the index has no room
    /// for (logged as data loss).
    pub fn recover(&self) -> Vec<(u64, PageMeta)> {
        let Some(tree) = &self.disk else { return Vec::new() };
        let mut state = self.state.lock();
        let mut found = Vec::new();
        for entry in tree.iter() {
            let (record_key, record) = match entry {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::error!("reading a pool database failed: {e}");
                    continue;
                }
            };
            let Some((meta, _)) = parse_disk_record(&record).filter(|_| record_key.len() == 8) else {
                tracing::error!(key = ?record_key, "dropping a malformed record from a pool database");
                let _ = tree.remove(record_key);
                continue;
            };
            let offset = u64::from_be_bytes(record_key.as_ref().try_into().expect("8 bytes"));
            if state.index.insert(offset, PageEntry::new(meta.kind, meta.generation, meta.checksum)).is_err() {
                tracing::error!(offset, "DATA LOSS: no memory to index a page of a pool database; dropped");
                let _ = tree.remove(record_key);
                continue;
            }
            found.push((offset, meta));
        }
        found
    }

    // ----- the store plugin's side (host functions) -----

    /// `pages_put`: keeps a copy of `bytes` under `offset` for the store being run. `false`
    /// (the reason remembered for [`PageShard::abort_put`]) if refused.
    pub fn put(&self, offset: u64, bytes: &[u8]) -> bool {
        let mut state = self.state.lock();
        let refusal = match self.try_put(&mut state, offset, bytes) {
            Ok(()) => return true,
            Err(refusal) => refusal,
        };
        // Logged once per store operation: a plugin may try many times.
        if refusal == PutRefusal::ForeignOffset && state.refusal.is_none() {
            tracing::warn!(offset, op = ?state.op, "a store plugin put a record for a page it was not storing: refused");
        }
        state.refusal.get_or_insert(refusal);
        false
    }

    fn try_put(&self, state: &mut State, offset: u64, bytes: &[u8]) -> Result<(), PutRefusal> {
        let StoreOp::Put { offset: storing, meta } = state.op else { return Err(PutRefusal::ForeignOffset) };
        if storing != offset {
            return Err(PutRefusal::ForeignOffset);
        }
        if bytes.len() > self.max_record {
            return Err(PutRefusal::TooLong);
        }
        // A second put of the same store replaces the first.
        let previous = state.staged.take();
        self.drop_staged(offset, previous);
        if let Some(tree) = &self.disk {
            let mut record = Vec::with_capacity(DISK_HEADER + bytes.len());
            record.push(meta.kind | if meta.checksum.is_some() { DISK_CHECKED } else { 0 });
            record.extend_from_slice(&meta.generation.to_le_bytes());
            record.extend_from_slice(&meta.checksum.unwrap_or(0).to_le_bytes());
            record.extend_from_slice(bytes);
            return match tree.insert(key(offset), record) {
                Ok(_) => {
                    state.staged = Some(Staged::Disk);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!("pool database write failed: {e}");
                    Err(PutRefusal::Disk)
                }
            };
        }
        if bytes.is_empty() {
            state.staged = Some(Staged::Memory(None));
            return Ok(());
        }
        let total = &self.stats.counters.pool_total_size;
        if total.load(Ordering::Relaxed).saturating_add(bytes.len() as u64) > self.max_bytes.load(Ordering::Relaxed) {
            return Err(PutRefusal::PoolLimit);
        }
        let handle = self.arena.alloc(bytes).ok_or(PutRefusal::NoMemory)?;
        PoolStats::add(total, bytes.len() as u64);
        state.staged = Some(Staged::Memory(Some((handle, bytes.len()))));
        Ok(())
    }

    /// `pages_get`: calls `read` with the record under `offset`, if any (the one being put,
    /// during a store of it).
    pub fn with<R>(&self, offset: u64, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if let Some(tree) = &self.disk {
            return match tree.get(key(offset)) {
                Ok(Some(record)) => parse_disk_record(&record).map(|(_, bytes)| read(bytes)),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(offset, "pool database read failed: {e}");
                    None
                }
            };
        }
        let state = self.state.lock();
        let record = match (state.op, state.staged) {
            (StoreOp::Put { offset: o, .. }, Some(Staged::Memory(record))) if o == offset => record,
            _ => match state.index.get(offset) {
                Some(entry) => entry.record(),
                None => return None,
            },
        };
        Some(match record {
            Some((handle, len)) => self.arena.with(handle, len, read),
            None => read(&[]),
        })
    }

    /// `pages_delete`: reports whether `offset` has a page. The record goes when the host
    /// removes the page, right after the store's delete, whatever the store does.
    pub fn delete(&self, offset: u64) -> bool {
        let state = self.state.lock();
        matches!(state.op, StoreOp::Delete { offset: o } if o == offset) && state.index.contains(offset)
    }

    /// `pages_clear`: nothing to do — the host drains the shard right after the store's clear.
    pub fn clear(&self) {}
}

/// The header and the plugin's bytes of a disk record; `None` if too short for its header.
fn parse_disk_record(record: &[u8]) -> Option<(PageMeta, &[u8])> {
    let first = *record.first()?;
    let header = if first & DISK_CHECKED != 0 { DISK_HEADER } else { DISK_HEADER_V0 };
    if record.len() < header {
        return None;
    }
    let generation = u32::from_le_bytes(record[1..5].try_into().expect("4 bytes"));
    let checksum = (first & DISK_CHECKED != 0).then(|| u32::from_le_bytes(record[5..9].try_into().expect("4 bytes")));
    Some((PageMeta { kind: first & !DISK_CHECKED, generation, checksum }, &record[header..]))
}

impl Drop for PageShard {
    /// The arena is the host's: a shard's records go back to it with the shard (its index
    /// gives back its own chunks).
    fn drop(&mut self) {
        let mut state = self.state.lock();
        if let Some(Staged::Memory(record)) = state.staged.take() {
            self.free_bytes(record);
        }
        if self.disk.is_none() {
            state.index.drain(|entry| self.free_record(&entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(shards: usize, shard: usize) -> ShardPlace {
        ShardPlace { shard, shards, max_record: 8192, max_bytes: Arc::new(AtomicU64::new(u64::MAX)) }
    }

    fn meta(generation: u32) -> PageMeta {
        PageMeta { kind: 0, generation, checksum: Some(generation * 10) }
    }

    fn store(shard: &PageShard, offset: u64, bytes: &[u8], generation: u32) -> Result<(), PutRefusal> {
        shard.begin_put(offset, meta(generation));
        if !shard.put(offset, bytes) {
            return Err(shard.abort_put(offset).expect("a refusal"));
        }
        shard.commit_put(offset)
    }

    #[test]
    fn records_are_accounted_through_put_remove_and_drain() {
        let stats = Arc::new(PoolStats::default());
        let arena = crate::memory::arena::tests::test_arena();
        let shard = PageShard::new(place(1, 0), stats.clone(), arena.clone(), None);
        let gauge = || stats.counters.snapshot().pool_total_size;
        store(&shard, 1, &[1; 100], 1).unwrap();
        store(&shard, 2, &[2; 50], 1).unwrap();
        assert_eq!(gauge(), 150);
        assert!(shard.remove(1).is_some());
        store(&shard, 1, &[3; 10], 2).unwrap();
        assert_eq!(gauge(), 60);
        assert_eq!(shard.with(1, |b| b.to_vec()), Some(vec![3; 10]));
        assert_eq!(shard.entry(1).map(|e| (e.generation(), e.checksum())), Some((2, Some(20))));
        store(&shard, 4, &[], 1).unwrap();
        assert_eq!(shard.with(4, |b| b.len()), Some(0), "an empty record takes no object");
        assert_eq!(shard.len(), 3);
        let mut drained = 0;
        shard.drain(|_| drained += 1);
        assert_eq!((drained, gauge()), (3, 0));
        assert!(shard.is_empty());
        store(&shard, 9, &[9; 700], 1).unwrap();
        let stats = arena.stats();
        assert_eq!(stats.objects, 1, "one record");
        assert!(stats.index_chunk_bytes >= 1024, "and an index chunk: {stats:?}");
        drop(shard);
        assert_eq!(gauge(), 0);
        let stats = arena.stats();
        assert_eq!(
            (stats.objects, stats.index_chunk_bytes),
            (0, 0),
            "the shard's records and chunks went back: {stats:?}"
        );
    }

    #[test]
    fn a_store_owns_only_the_record_of_the_page_it_stores() {
        let stats = Arc::new(PoolStats::default());
        let arena = crate::memory::arena::tests::test_arena();
        let shard = PageShard::new(place(1, 0), stats.clone(), arena, None);
        assert!(!shard.put(5, b"outside a store"), "no put outside a store");
        shard.begin_put(5, meta(1));
        assert!(!shard.put(6, b"foreign"), "no put for another offset");
        assert!(!shard.put(5, &[0; 8193]), "no put longer than the I/O buffer");
        assert!(shard.put(5, b"first") && shard.put(5, b"second"), "a second put replaces the first");
        assert_eq!(shard.with(5, |b| b.to_vec()), Some(b"second".to_vec()));
        assert_eq!(shard.abort_put(5), Some(PutRefusal::ForeignOffset));
        assert_eq!((shard.len(), stats.counters.snapshot().pool_total_size), (0, 0), "a failed store keeps nothing");
        shard.max_bytes.store(100, Ordering::Relaxed);
        store(&shard, 1, &[1; 60], 1).unwrap();
        assert_eq!(store(&shard, 2, &[2; 60], 1), Err(PutRefusal::PoolLimit), "charged at the put");
        store(&shard, 3, b"ok", 1).unwrap();
        shard.begin_delete(3);
        assert!(!shard.delete(1) && shard.delete(3), "a delete reports only on its own page");
        assert!(shard.contains(3), "and removes nothing: the host does");
        shard.remove(3);
        assert_eq!(stats.counters.snapshot().pool_total_size, 60);
    }

    #[test]
    fn disk_records_carry_their_header_and_are_recovered_with_old_records() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("s").unwrap();
        let stats = Arc::new(PoolStats::default());
        let arena = crate::memory::arena::tests::test_arena();
        let shard = PageShard::new(place(2, 1), stats.clone(), arena.clone(), Some(tree.clone()));
        store(&shard, 5, b"five", 7).unwrap();
        store(&shard, 3, b"three", 8).unwrap();
        shard.begin_put(7, meta(9));
        assert!(shard.put(7, b"failed"));
        shard.abort_put(7);
        // A tmem 0.1 record: a 5-byte header without checksum.
        tree.insert(key(9), [&[2u8][..], &4u32.to_le_bytes(), b"old"].concat()).unwrap();
        assert_eq!(shard.with(5, |b| b.to_vec()), Some(b"five".to_vec()));
        assert_eq!(shard.with(9, |b| b.to_vec()), Some(b"old".to_vec()));
        assert_eq!(shard.with(7, |b| b.to_vec()), None, "a failed store's record is gone");
        drop(shard);
        let shard = PageShard::new(place(2, 1), stats, arena, Some(tree));
        let mut found = shard.recover();
        found.sort_by_key(|(o, _)| *o);
        assert_eq!(
            found,
            vec![
                (3, PageMeta { kind: 0, generation: 8, checksum: Some(80) }),
                (5, PageMeta { kind: 0, generation: 7, checksum: Some(70) }),
                (9, PageMeta { kind: 2, generation: 4, checksum: None }),
            ]
        );
        assert_eq!(shard.entry(3).map(|e| e.checksum()), Some(Some(80)));
        assert!(shard.remove(3).is_some());
        assert_eq!(shard.with(3, |b| b.len()), None, "the host removed the record itself");
        shard.drain(|_| {});
        assert!(shard.is_empty() && shard.recover().is_empty());
    }
}
