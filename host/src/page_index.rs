//! [`PageIndex`]: everything the host knows about the pages of one pool shard — the frontswap
//! map's bit, how and by which chain generation a page was stored, where its record lies in
//! the arena, its checksum — in one 16-byte [`PageEntry`] per page.
//!
//! # Layout
//!
//! A pool shard holds the offsets `shard + k × shards`; the index keys them by `k` (the offset
//! shifted right by the shard bits), so a block device's or a region's offsets — dense from 0 —
//! become dense keys. Keys below [`DENSE_KEYS`] live in **chunks**: flat tables of
//! [`CHUNK_ENTRIES`] entries (1 KiB), allocated from the host's [`PageArena`] the first time one
//! of their keys is stored and freed when their last entry goes — zram's flat table, grown by
//! pieces, with no per-page key, pointer or allocator header. Larger keys (a client that uses
//! offsets as hashes) go to a **sparse** hash map. A chunk directory entry serves 64 pages.
//!
//! # Memory
//!
//! Chunks come from the arena: committed ahead, locked, charged to the host's budget, and
//! refused (the store is refused) rather than allocated under pressure. The two hash maps (the
//! chunk directory and the sparse map) live on the heap; their growth is charged to the same
//! budget before it happens and refused past it. A dense pool costs 16 bytes per page plus a
//! directory entry per 64 pages; a client storing one page per chunk pays 1 KiB per page, out of
//! the same budget as its pages.

use std::collections::HashMap;
use std::sync::Arc;

use crate::memory::arena::{Handle, PageArena};

/// Bytes per page of index.
pub const ENTRY_BYTES: usize = std::mem::size_of::<PageEntry>();
/// Entries of one chunk.
pub const CHUNK_ENTRIES: usize = 1 << CHUNK_BITS;
const CHUNK_BITS: u32 = 6;
const CHUNK_BYTES: usize = CHUNK_ENTRIES * ENTRY_BYTES;
/// Keys (offsets shifted right by the shard bits) below this are kept in chunks; above, in
/// the sparse map. With 64 shards this covers 2^30 pages (4 TiB of 4 KiB pages).
pub const DENSE_KEYS: u64 = 1 << 24;

/// The largest record length an entry can name.
pub const MAX_RECORD_LEN: usize = LEN_MASK as usize;

const LEN_MASK: u32 = (1 << 22) - 1;
const KIND_SHIFT: u32 = 22;
const KIND_MASK: u32 = 0b11 << KIND_SHIFT;
const PRESENT: u32 = 1 << 24;
const CHECKED: u32 = 1 << 25;
const HAS_RECORD: u32 = 1 << 26;
/// Set by every use of the page (a store, a load), cleared by the tiers' mover as it ages it.
const REFERENCED: u32 = 1 << 27;
const AGE_SHIFT: u32 = 28;
const AGE_MASK: u32 = 0b1111 << AGE_SHIFT;
/// The largest age an entry counts to (it saturates there).
pub const MAX_AGE: u8 = 15;

/// What the host keeps about one present page: 16 bytes.
///
/// `bits`: record length (22 bits, up to 4 MiB: a record is at most a page of the largest
/// size), encoded kind (2 bits), present, checked (`checksum` is meaningful), has-record
/// (`record` names an arena object), referenced and a 4-bit age (the tiers' clock: see
/// [`PageIndex::age`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PageEntry {
    record: u32,
    bits: u32,
    generation: u32,
    checksum: u32,
}

impl std::fmt::Debug for PageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageEntry")
            .field("kind", &self.kind())
            .field("generation", &self.generation)
            .field("checksum", &self.checksum())
            .field("record", &self.record())
            .finish()
    }
}

impl PageEntry {
    /// A present page stored by `generation` as `kind` (a 2-bit code), with the checksum of
    /// the bytes the frontend gave, if the pool checks them.
    pub fn new(kind: u8, generation: u32, checksum: Option<u32>) -> PageEntry {
        let mut bits = PRESENT | REFERENCED | ((kind as u32) << KIND_SHIFT & KIND_MASK);
        if checksum.is_some() {
            bits |= CHECKED;
        }
        PageEntry { record: 0, bits, generation, checksum: checksum.unwrap_or(0) }
    }

    fn is_present(&self) -> bool {
        self.bits & PRESENT != 0
    }

    /// The encoded kind's code.
    pub fn kind(&self) -> u8 {
        ((self.bits & KIND_MASK) >> KIND_SHIFT) as u8
    }

    /// The chain generation that stored the page.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The checksum of the page as the frontend gave it, if the pool checks pages.
    pub fn checksum(&self) -> Option<u32> {
        (self.bits & CHECKED != 0).then_some(self.checksum)
    }

    /// Whether the page was used since the tiers' mover last aged it.
    pub fn referenced(&self) -> bool {
        self.bits & REFERENCED != 0
    }

    /// How many of its pool's age units the page has been idle (saturating at [`MAX_AGE`]),
    /// as of the mover's last pass; 0 for a page used since.
    pub fn age(&self) -> u8 {
        if self.referenced() { 0 } else { ((self.bits & AGE_MASK) >> AGE_SHIFT) as u8 }
    }

    /// The page's record in the arena and its length, if the store kept one there.
    pub fn record(&self) -> Option<(Handle, usize)> {
        (self.bits & HAS_RECORD != 0).then(|| (Handle::from_bits(self.record), (self.bits & LEN_MASK) as usize))
    }

    /// The entry with `record` (an arena object of `len` ≤ [`MAX_RECORD_LEN`] bytes), or none.
    pub fn with_record(mut self, record: Option<(Handle, usize)>) -> PageEntry {
        self.bits &= !(HAS_RECORD | LEN_MASK);
        self.record = 0;
        if let Some((handle, len)) = record {
            assert!(len <= MAX_RECORD_LEN, "record of {len} bytes");
            self.record = handle.to_bits();
            self.bits |= HAS_RECORD | len as u32;
        }
        self
    }
}

/// The index could not take a new entry: no arena memory for a chunk, or no budget for a map
/// to grow. The store is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no memory for the page index")]
pub struct IndexFull;

/// A chunk: its arena object and how many of its entries are present.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    handle: Handle,
    live: u32,
}

type Map<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// The index of one pool shard. Not thread-safe by itself: its owner locks it.
pub struct PageIndex {
    arena: Arc<PageArena>,
    shift: u32,
    chunks: Map<Chunk>,
    sparse: Map<PageEntry>,
    /// Heap bytes charged to the budget for the two maps' tables.
    charged: u64,
    len: usize,
    /// Chunks the chunk map keeps room for whatever it holds ([`PageIndex::reserve_dense`]):
    /// a drain (`invalidate_area`) keeps that room, touched, so the device that reserved it
    /// still never grows the map on its I/O path.
    reserved_chunks: usize,
}

impl std::fmt::Debug for PageIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageIndex").field("len", &self.len).field("chunks", &self.chunks.len()).finish()
    }
}

/// Heap bytes of a hash map table with room for `capacity` items of `item` bytes (hashbrown:
/// a power-of-two number of buckets, 7/8 of them usable, one control byte each).
fn table_bytes(capacity: usize, item: usize) -> u64 {
    if capacity == 0 { 0 } else { ((capacity * 8 / 7).next_power_of_two() * (item + 1)) as u64 }
}

static ZERO_CHUNK: [u8; CHUNK_BYTES] = [0; CHUNK_BYTES];

impl PageIndex {
    /// An empty index for a shard of a pool with `shards` shards (a power of two), keeping
    /// its chunks in `arena`.
    pub fn new(arena: Arc<PageArena>, shards: usize) -> PageIndex {
        assert!(shards.is_power_of_two());
        PageIndex {
            arena,
            shift: shards.trailing_zeros(),
            chunks: Map::default(),
            sparse: Map::default(),
            charged: 0,
            len: 0,
            reserved_chunks: 0,
        }
    }

    fn key(&self, offset: u64) -> u64 {
        offset >> self.shift
    }

    /// How many pages are present.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no page is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the index holds: its chunks and its maps' tables.
    pub fn bytes(&self) -> u64 {
        (self.chunks.len() * CHUNK_BYTES) as u64 + self.charged
    }

    fn chunk_entries<R>(&self, handle: Handle, f: impl FnOnce(&mut [PageEntry]) -> R) -> R {
        // SAFETY: the chunk is this index's own arena object, `CHUNK_BYTES` long, and the index
        // is reached only through `&mut self` or `&self` of its locked owner: no other borrow
        // of the chunk is alive.
        unsafe {
            self.arena.with_mut(handle, CHUNK_BYTES, |bytes| {
                assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<PageEntry>(), 0);
                // SAFETY: `CHUNK_BYTES` bytes, aligned for `PageEntry`, which is plain old
                // data (every bit pattern is a valid value).
                f(std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<PageEntry>(), CHUNK_ENTRIES))
            })
        }
    }

    /// The entry of `offset`, if the page is present.
    pub fn get(&self, offset: u64) -> Option<PageEntry> {
        let key = self.key(offset);
        if key < DENSE_KEYS {
            let chunk = self.chunks.get(&(key >> CHUNK_BITS))?;
            let entry = self.chunk_entries(chunk.handle, |e| e[key as usize % CHUNK_ENTRIES]);
            entry.is_present().then_some(entry)
        } else {
            self.sparse.get(&key).copied()
        }
    }

    /// Whether `offset` is present.
    pub fn contains(&self, offset: u64) -> bool {
        self.get(offset).is_some()
    }

    /// Charges the growth of a map table from `before` to `after` bytes; `false` if the budget
    /// refuses.
    fn charge(&mut self, before: u64, after: u64) -> bool {
        if after <= before {
            return true;
        }
        let ok = self.arena.charge_index_heap(after - before, false);
        if ok {
            self.charged += after - before;
        }
        ok
    }

    /// Releases what the maps no longer hold (after a shrink).
    fn settle(&mut self) {
        let now = table_bytes(self.chunks.capacity(), 16) + table_bytes(self.sparse.capacity(), 24);
        if now < self.charged {
            self.arena.release_index_heap(self.charged - now);
            self.charged = now;
        }
    }

    /// Makes room for one more item in `map` (reserving it, charged), or refuses.
    fn reserve_one<V>(&mut self, which: fn(&mut PageIndex) -> &mut Map<V>, item: usize) -> Result<(), IndexFull> {
        let map = which(self);
        if map.len() < map.capacity() {
            return Ok(());
        }
        let capacity = map.len() + map.capacity().max(4);
        self.grow_to(which, item, capacity)
    }

    /// Grows `map` to room for `capacity` items of `item` bytes: the table's estimated growth
    /// charged first (refused past the budget), then whatever the table really grew beyond it.
    fn grow_to<V>(
        &mut self,
        which: fn(&mut PageIndex) -> &mut Map<V>,
        item: usize,
        capacity: usize,
    ) -> Result<(), IndexFull> {
        let map = which(self);
        let before = table_bytes(map.capacity(), item);
        let estimate = table_bytes(capacity, item);
        if !self.charge(before, estimate) {
            return Err(IndexFull);
        }
        let map = which(self);
        let additional = capacity.saturating_sub(map.len());
        map.reserve(additional);
        let real = table_bytes(map.capacity(), item);
        if real > estimate {
            self.charged += real - estimate;
            self.arena.charge_index_heap(real - estimate, true);
        }
        Ok(())
    }

    /// Makes room ahead for the chunks of every offset below `offsets` (a block device's
    /// size in pages): a store into the device then never grows the chunk map on the I/O
    /// path. Charged like any growth; refused past the budget (the map then grows on demand).
    pub fn reserve_dense(&mut self, offsets: u64) -> Result<(), IndexFull> {
        let keys = offsets.div_ceil(1 << self.shift).min(DENSE_KEYS);
        let chunks = keys.div_ceil(CHUNK_ENTRIES as u64) as usize;
        if self.chunks.capacity() >= chunks {
            return Ok(());
        }
        self.grow_to(|i| &mut i.chunks, 16, chunks)?;
        self.touch_chunk_table();
        self.reserved_chunks = self.reserved_chunks.max(chunks);
        Ok(())
    }

    /// Writes every page of the chunk map's table now. `HashMap::reserve` allocates the buckets
    /// without touching them, and under `mlockall(MCL_ONFAULT)` an I/O thread's first insert
    /// into an untouched bucket page then takes a page fault — which may wait on reclaim that
    /// waits on this very host (the global-pressure guest scenario hung so, its ublk queue
    /// thread faulting in hashbrown's insert). Fills the table with keys no chunk has, then
    /// clears it (which keeps the table and leaves no tombstones) and puts the real chunks
    /// back. Off the I/O path: a device's attach.
    fn touch_chunk_table(&mut self) {
        let room = self.chunks.capacity();
        let kept: Vec<(u64, Chunk)> = self.chunks.drain().collect();
        for i in 0..room as u64 {
            self.chunks.insert(u64::MAX - i, Chunk { handle: Handle::from_bits(0), live: 0 });
        }
        self.chunks.clear();
        self.chunks.extend(kept);
        debug_assert!(self.chunks.capacity() >= room, "touching the table never shrinks it");
    }

    /// Inserts or replaces the entry of `offset`; returns the entry it replaced.
    pub fn insert(&mut self, offset: u64, entry: PageEntry) -> Result<Option<PageEntry>, IndexFull> {
        let entry = PageEntry { bits: entry.bits | PRESENT, ..entry };
        let key = self.key(offset);
        if key >= DENSE_KEYS {
            if !self.sparse.contains_key(&key) {
                self.reserve_one(|i| &mut i.sparse, 24)?;
            }
            let old = self.sparse.insert(key, entry);
            if old.is_none() {
                self.len += 1;
            }
            return Ok(old);
        }
        let chunk_key = key >> CHUNK_BITS;
        let handle = match self.chunks.get(&chunk_key) {
            Some(chunk) => chunk.handle,
            None => {
                self.reserve_one(|i| &mut i.chunks, 16)?;
                let handle = self.arena.alloc_index(&ZERO_CHUNK).ok_or(IndexFull)?;
                self.chunks.insert(chunk_key, Chunk { handle, live: 0 });
                handle
            }
        };
        let old = self.chunk_entries(handle, |e| std::mem::replace(&mut e[key as usize % CHUNK_ENTRIES], entry));
        if old.is_present() {
            return Ok(Some(old));
        }
        self.chunks.get_mut(&chunk_key).expect("just found").live += 1;
        self.len += 1;
        Ok(None)
    }

    /// Removes the entry of `offset`; returns it if the page was present.
    pub fn remove(&mut self, offset: u64) -> Option<PageEntry> {
        let key = self.key(offset);
        if key >= DENSE_KEYS {
            let old = self.sparse.remove(&key)?;
            self.len -= 1;
            return Some(old);
        }
        let chunk_key = key >> CHUNK_BITS;
        let chunk = *self.chunks.get(&chunk_key)?;
        let old = self.chunk_entries(chunk.handle, |e| std::mem::take(&mut e[key as usize % CHUNK_ENTRIES]));
        if !old.is_present() {
            return None;
        }
        self.len -= 1;
        if chunk.live == 1 {
            self.chunks.remove(&chunk_key);
            self.arena.free_index(chunk.handle, CHUNK_BYTES);
        } else {
            self.chunks.get_mut(&chunk_key).expect("found").live -= 1;
        }
        Some(old)
    }

    /// Marks `offset` used (the tiers' reference bit), if it is present. Writes one word in
    /// place: no allocation.
    pub fn touch(&mut self, offset: u64) {
        let key = self.key(offset);
        if key >= DENSE_KEYS {
            if let Some(entry) = self.sparse.get_mut(&key) {
                entry.bits |= REFERENCED;
            }
            return;
        }
        if let Some(chunk) = self.chunks.get(&(key >> CHUNK_BITS)) {
            self.chunk_entries(chunk.handle, |e| {
                let entry = &mut e[key as usize % CHUNK_ENTRIES];
                if entry.is_present() {
                    entry.bits |= REFERENCED;
                }
            });
        }
    }

    /// One pass of the tiers' clock over every present page: a page used since the last pass
    /// (referenced) gets age 0 and its bit cleared; any other page ages by `units`, saturating
    /// at [`MAX_AGE`]. Then `f` sees each page's offset (of shard `shard`) and new age. A page
    /// is thus never older than its idle time, and at most one pass younger.
    pub fn age(&mut self, units: u8, shard: u64, mut f: impl FnMut(u64, u8)) {
        let step = |entry: &mut PageEntry| {
            let age = if entry.bits & REFERENCED != 0 {
                0
            } else {
                (((entry.bits & AGE_MASK) >> AGE_SHIFT) as u8).saturating_add(units).min(MAX_AGE)
            };
            entry.bits = (entry.bits & !(REFERENCED | AGE_MASK)) | (age as u32) << AGE_SHIFT;
            age
        };
        let shift = self.shift;
        for (&chunk_key, chunk) in &self.chunks {
            self.chunk_entries(chunk.handle, |e| {
                for (i, entry) in e.iter_mut().enumerate().filter(|(_, e)| e.is_present()) {
                    let age = step(entry);
                    f(((chunk_key << CHUNK_BITS | i as u64) << shift) | shard, age);
                }
            });
        }
        for (&key, entry) in self.sparse.iter_mut() {
            let age = step(entry);
            f((key << shift) | shard, age);
        }
    }

    /// Up to `n` present offsets (in no particular order), appended to `out`.
    pub fn some_offsets(&self, n: usize, shard: u64, out: &mut Vec<u64>) {
        let start = out.len();
        let offset = |key: u64| (key << self.shift) | shard;
        for (&chunk_key, chunk) in &self.chunks {
            if out.len() - start >= n {
                return;
            }
            self.chunk_entries(chunk.handle, |e| {
                for (i, entry) in e.iter().enumerate() {
                    if entry.is_present() && out.len() - start < n {
                        out.push(offset(chunk_key << CHUNK_BITS | i as u64));
                    }
                }
            });
        }
        out.extend(self.sparse.keys().take(n.saturating_sub(out.len() - start)).map(|&k| offset(k)));
    }

    /// Calls `f` with every present page's entry, which it may change (its presence stays).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut PageEntry)) {
        for chunk in self.chunks.values() {
            self.chunk_entries(chunk.handle, |e| {
                for entry in e.iter_mut().filter(|e| e.is_present()) {
                    f(entry);
                    entry.bits |= PRESENT;
                }
            });
        }
        for entry in self.sparse.values_mut() {
            f(entry);
        }
    }

    /// Removes every entry, calling `f` with each, and gives every chunk back to the arena.
    pub fn drain(&mut self, mut f: impl FnMut(PageEntry)) {
        let chunks: Vec<Chunk> = self.chunks.drain().map(|(_, c)| c).collect();
        for chunk in chunks {
            self.chunk_entries(chunk.handle, |e| e.iter().filter(|e| e.is_present()).for_each(|e| f(*e)));
            self.arena.free_index(chunk.handle, CHUNK_BYTES);
        }
        self.sparse.drain().for_each(|(_, e)| f(e));
        self.len = 0;
        // Room reserved for a device stays (the table is neither freed nor moved: its pages
        // stay touched); the rest goes back.
        self.chunks.shrink_to(self.reserved_chunks);
        self.sparse.shrink_to_fit();
        self.settle();
    }
}

impl Drop for PageIndex {
    /// The chunks and the charged table bytes go back with the index.
    fn drop(&mut self) {
        self.drain(|_| {});
        self.arena.release_index_heap(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::arena::tests::test_arena;

    #[test]
    fn reserving_a_dense_range_keeps_every_entry_and_its_room() {
        let arena = test_arena();
        let mut index = PageIndex::new(arena, 1);
        for o in 0..300u64 {
            index.insert(o * 7, PageEntry::new(1, 2, Some(o as u32))).unwrap();
        }
        index.reserve_dense(1 << 20).unwrap();
        let room = index.chunks.capacity();
        assert!(room >= (1u64 << 20).div_ceil(CHUNK_ENTRIES as u64) as usize);
        for o in 0..300u64 {
            assert_eq!(index.get(o * 7).map(|e| e.checksum()), Some(Some(o as u32)), "offset {}", o * 7);
        }
        assert_eq!(index.len(), 300);
        // The room is still there: filling the reserved range grows no map.
        for o in 0..(1u64 << 20) {
            index.insert(o, PageEntry::new(1, 2, None)).unwrap();
        }
        assert_eq!(index.chunks.capacity(), room);
    }

    #[test]
    fn an_entry_is_sixteen_bytes_and_round_trips_its_fields() {
        assert_eq!(ENTRY_BYTES, 16);
        let e = PageEntry::new(2, 77, Some(0xdead_beef));
        assert_eq!((e.kind(), e.generation(), e.checksum(), e.record()), (2, 77, Some(0xdead_beef), None));
        let h = Handle::from_bits(12345);
        let e = e.with_record(Some((h, MAX_RECORD_LEN)));
        assert_eq!(e.record(), Some((h, MAX_RECORD_LEN)));
        assert_eq!((e.kind(), e.checksum()), (2, Some(0xdead_beef)));
        assert_eq!(PageEntry::new(1, 1, None).checksum(), None);
        assert_eq!(e.with_record(None).record(), None);
    }

    #[test]
    fn the_clock_ages_idle_pages_and_a_touch_makes_a_page_young_again() {
        let arena = test_arena();
        let shards = 2u64;
        let mut index = PageIndex::new(arena.clone(), shards as usize);
        let offsets: Vec<u64> = (0..100).map(|k| k * shards + 1).chain([(DENSE_KEYS + 5) * shards + 1]).collect();
        for &o in &offsets {
            index.insert(o, PageEntry::new(1, 3, Some(9))).unwrap();
        }
        let ages = |index: &mut PageIndex, units| {
            let mut seen = Vec::new();
            index.age(units, 1, |o, age| seen.push((o, age)));
            seen.sort();
            seen
        };
        // A new page was just used: the first pass only clears its bit.
        assert!(ages(&mut index, 3).iter().all(|&(_, age)| age == 0));
        let seen = ages(&mut index, 3);
        assert_eq!(seen.iter().map(|&(o, _)| o).collect::<Vec<_>>(), offsets, "every offset comes back");
        assert!(seen.iter().all(|&(_, age)| age == 3));
        index.touch(offsets[7]);
        index.touch(offsets[100]);
        index.touch(offsets[0] + 2 * shards * 1000); // absent: nothing happens
        assert_eq!(index.get(offsets[7]).unwrap().age(), 0);
        let seen = ages(&mut index, 20);
        for (o, age) in seen {
            let young = o == offsets[7] || o == offsets[100];
            assert_eq!(age, if young { 0 } else { MAX_AGE }, "offset {o}");
        }
        let e = index.get(offsets[3]).unwrap();
        assert_eq!(
            (e.kind(), e.generation(), e.checksum(), e.age()),
            (1, 3, Some(9), MAX_AGE),
            "ageing keeps the rest"
        );
        assert_eq!(index.len(), 101);
    }

    #[test]
    fn dense_and_sparse_offsets_insert_replace_remove_and_drain() {
        let arena = test_arena();
        let shards = 4u64;
        let mut index = PageIndex::new(arena.clone(), shards as usize);
        let dense: Vec<u64> = (0..1000).map(|k| k * shards + 3).collect();
        let sparse: Vec<u64> = (0..50).map(|k| (DENSE_KEYS + k * 7919) * shards + 3).collect();
        for (i, &o) in dense.iter().chain(&sparse).enumerate() {
            assert_eq!(index.insert(o, PageEntry::new(0, i as u32, None)), Ok(None));
        }
        assert_eq!(index.len(), 1050);
        assert_eq!(index.chunks.len(), 1000usize.div_ceil(CHUNK_ENTRIES), "1000 dense keys fill 16 chunks");
        assert_eq!(index.get(dense[5]).map(|e| e.generation()), Some(5));
        assert_eq!(index.get(sparse[2]).map(|e| e.generation()), Some(1002));
        assert_eq!(index.get(dense[999] + shards), None, "the next offset of the shard is absent");
        let old = index.insert(dense[5], PageEntry::new(1, 99, Some(7))).unwrap();
        assert_eq!(old.map(|e| e.generation()), Some(5));
        assert_eq!(index.len(), 1050);
        index.for_each_mut(|e| {
            if e.generation() == 99 {
                *e = e.with_record(Some((Handle::from_bits(9), 10)))
            }
        });
        assert_eq!(index.get(dense[5]).unwrap().record(), Some((Handle::from_bits(9), 10)));
        let mut seen = Vec::new();
        index.some_offsets(usize::MAX, 3, &mut seen);
        seen.sort();
        let mut all: Vec<u64> = dense.iter().chain(&sparse).copied().collect();
        all.sort();
        assert_eq!(seen, all, "every offset comes back from its key");
        let mut some = Vec::new();
        index.some_offsets(70, 3, &mut some);
        assert_eq!(some.len(), 70);
        assert!(some.iter().all(|&o| index.contains(o)));
        for &o in &dense[..CHUNK_ENTRIES] {
            assert!(index.remove(o).is_some());
        }
        assert_eq!(index.remove(dense[0]), None);
        assert_eq!(index.chunks.len(), 15, "an emptied chunk goes back to the arena");
        let mut drained = 0;
        index.drain(|_| drained += 1);
        assert_eq!(drained, 1050 - CHUNK_ENTRIES);
        assert!(index.is_empty());
        drop(index);
        let stats = arena.stats();
        assert_eq!((stats.index_chunk_bytes, stats.index_heap_bytes), (0, 0), "every chunk and table went back");
    }

    #[test]
    fn a_dense_pool_costs_sixteen_bytes_a_page() {
        let arena = test_arena();
        let mut index = PageIndex::new(arena.clone(), 1);
        let pages = 64 * CHUNK_ENTRIES as u64;
        for o in 0..pages {
            index.insert(o, PageEntry::new(0, 1, Some(o as u32))).unwrap();
        }
        let per_page = index.bytes() as f64 / pages as f64;
        assert!(per_page < 16.6, "{per_page} bytes per page");
    }

    #[test]
    fn room_reserved_for_a_device_means_no_map_growth_while_it_fills() {
        let arena = test_arena();
        let budget = arena.budget().clone();
        let shards = 4u64;
        let mut index = PageIndex::new(arena.clone(), shards as usize);
        let pages = 200 * CHUNK_ENTRIES as u64 * shards;
        let used = budget.used();
        index.reserve_dense(pages).unwrap();
        assert!(budget.used() > used, "the room is charged");
        let capacity = index.chunks.capacity();
        assert!(capacity >= 200);
        // This shard's offsets (3 mod 4) of the whole device.
        for o in (3..pages).step_by(shards as usize) {
            index.insert(o, PageEntry::new(0, 1, None)).unwrap();
        }
        assert_eq!(index.chunks.len(), 200);
        assert_eq!(index.chunks.capacity(), capacity, "the chunk map never grew while the device filled");
        // An invalidate_area drains the index; the device's room stays, and filling it again
        // grows nothing either.
        assert!(arena.stats().index_chunk_bytes >= 200 * CHUNK_BYTES as u64);
        index.drain(|_| {});
        assert_eq!(index.chunks.capacity(), capacity, "the drain kept the reserved room");
        assert_eq!(arena.stats().index_chunk_bytes, 0, "the chunks themselves went back to the arena");
        for o in (3..pages).step_by(shards as usize) {
            index.insert(o, PageEntry::new(0, 1, None)).unwrap();
        }
        assert_eq!(index.chunks.capacity(), capacity, "refilled after the drain without growing");
    }

    #[test]
    fn map_growth_is_charged_and_refused_past_the_budget() {
        let arena = test_arena();
        let budget = arena.budget().clone();
        let mut index = PageIndex::new(arena.clone(), 1);
        let used = budget.used();
        for k in 0..1000 {
            index.insert(DENSE_KEYS + k, PageEntry::new(0, 1, None)).unwrap();
        }
        assert!(budget.used() > used, "the sparse map's table is charged");
        budget.set_limit(budget.used());
        let mut refused = false;
        for k in 1000..100_000 {
            if index.insert(DENSE_KEYS + k, PageEntry::new(0, 1, None)).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "growth past the budget is refused");
        budget.set_limit(u64::MAX);
        let charged = index.charged;
        drop(index);
        assert!(charged > 0);
    }
}
