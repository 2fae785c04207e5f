//! [`PageLocations`]: where each page of a frontend is — the one implementation of the rules
//! every frontend that owns a backing file follows (the userfaultfd region, and the host's
//! block devices).
//!
//! A page of a frontend is in exactly one [`Location`]: nowhere (zeros), zero (explicitly
//! written zeros), the pool, the backing file, both (a writethrough pool: the file copy is the
//! durable one, the pool may drop its copy at will), held in the frontend's memory, or lost.
//! The map keeps one byte per page, the gauges of how many pages are where, and the backing
//! file itself, because the rules below tie the two together:
//!
//! - **Leaving the file clears it.** A page whose location stops including the backing file
//!   has its stale copy taken out ([`BackingFile::punch`]: punched from a sparse file, zeroed
//!   in a reserved one), so the file never holds a copy the map does not name. (A failed
//!   punch only leaves a stale copy behind: the map, not the file, says where a page is.)
//! - **Placement by store outcome** ([`PageSlot::place`]): stored → the pool (a stale file
//!   copy punched); stored writethrough → the pool and the file (the file write failing leaves
//!   it in the pool alone); refused, or an outcome the frontend never learnt → the file. A
//!   file write that fails there leaves the page in the caller's `lost` location: by the
//!   duplicate-store rule the pool no longer has an older copy.
//! - **Exclusive loads** ([`PageSlot::pool_let_go`]): a pool that hands its copy over keeps
//!   nothing, so a writethrough page falls back to its file copy and any other page now lives
//!   only in the caller's hands (the caller keeps it: a block device writes it to the file, a
//!   region keeps it resident and dirty).
//! - **Lost pages** ([`PageSlot::pool_lost`]): the pool has no copy of a page the map puts
//!   there. A writethrough page is read from its file copy; any other page is lost — a read
//!   of it fails until it is written again, never zeros.
//!
//! # Concurrency
//!
//! The map is split into shards by page index, each behind its own lock; [`PageLocations::lock`]
//! returns a [`PageSlot`] that holds page `p`'s shard from the decision to the update, so a
//! caller that does its pool call while holding the slot serializes every operation on that
//! page. The gauges are atomics, read without any lock.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::backing::BackingFile;

/// Where a page's current contents are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Location {
    /// Never written, or discarded: reads zeros.
    #[default]
    Nowhere,
    /// Written as zeros (write-zeroes): reads zeros, takes no space.
    Zero,
    /// In the pool only.
    Pool,
    /// In the backing file only.
    Backing,
    /// Writethrough: the backing copy is durable, the pool's may be reclaimed.
    PoolAndBacking,
    /// In the frontend's own memory (a page handed back while the file could not take it).
    Held,
    /// The pool lost a page only it held: reads fail until the page is written again.
    Lost,
}

impl Location {
    /// The pool has (or had, for writethrough) a copy.
    pub fn in_pool(self) -> bool {
        matches!(self, Location::Pool | Location::PoolAndBacking)
    }

    /// The backing file has a copy.
    pub fn in_backing(self) -> bool {
        matches!(self, Location::Backing | Location::PoolAndBacking)
    }

    /// Reads as zeros without touching the pool or the file.
    pub fn reads_as_zero(self) -> bool {
        matches!(self, Location::Nowhere | Location::Zero)
    }
}

/// What the pool did with a page the frontend stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    /// The pool keeps it.
    Stored,
    /// The pool keeps it, and the frontend must keep its own copy too.
    StoredWritethrough,
    /// The pool refused it.
    Rejected,
    /// The frontend never learnt (a transport error): the pool may or may not have it, so the
    /// caller invalidates it there and never reads it from the pool again.
    Unknown,
}

/// How many pages are where (gauges, kept by every relocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationCounts {
    /// Pages with a copy in the pool (writethrough pages included).
    pub pool: u64,
    /// Pages with a copy in the backing file (writethrough pages included).
    pub backing: u64,
    /// Pages written as zeros.
    pub zero: u64,
    /// Pages held in the frontend's memory.
    pub held: u64,
    /// Pages lost by the pool.
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Gauges {
    pool: AtomicU64,
    backing: AtomicU64,
    zero: AtomicU64,
    held: AtomicU64,
    lost: AtomicU64,
}

impl Gauges {
    fn moved(&self, from: Location, to: Location) {
        let step = |gauge: &AtomicU64, was: bool, is: bool| match (was, is) {
            (false, true) => {
                gauge.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                gauge.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        };
        step(&self.pool, from.in_pool(), to.in_pool());
        step(&self.backing, from.in_backing(), to.in_backing());
        step(&self.zero, from == Location::Zero, to == Location::Zero);
        step(&self.held, from == Location::Held, to == Location::Held);
        step(&self.lost, from == Location::Lost, to == Location::Lost);
    }
}

const SHARD_BITS: u32 = 6;
const SHARDS: u64 = 1 << SHARD_BITS;

/// Where each page of a frontend is, with the frontend's backing file. See the module docs for
/// the rules it keeps.
pub struct PageLocations {
    pages: u64,
    /// `shards[p % SHARDS][p / SHARDS]` is page `p`'s location.
    shards: Box<[Mutex<Vec<Location>>]>,
    backing: BackingFile,
    gauges: Gauges,
}

impl std::fmt::Debug for PageLocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageLocations").field("pages", &self.pages).field("counts", &self.counts()).finish()
    }
}

impl PageLocations {
    /// `pages` pages, all [`Location::Nowhere`], over `backing`.
    pub fn new(pages: u64, backing: BackingFile) -> PageLocations {
        let per_shard = pages.div_ceil(SHARDS) as usize;
        PageLocations {
            pages,
            shards: (0..SHARDS).map(|_| Mutex::new(vec![Location::Nowhere; per_shard])).collect(),
            backing,
            gauges: Gauges::default(),
        }
    }

    /// Pages in the map.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The backing file (to read a page, sync, or list what it holds).
    pub fn backing(&self) -> &BackingFile {
        &self.backing
    }

    /// Locks page `p` (`p < pages`) until the returned slot is dropped.
    pub fn lock(&self, p: u64) -> PageSlot<'_> {
        debug_assert!(p < self.pages, "page {p} of {}", self.pages);
        PageSlot { map: self, p, shard: self.shards[(p & (SHARDS - 1)) as usize].lock() }
    }

    /// Page `p`'s location now (a snapshot: it may change as soon as this returns).
    pub fn get(&self, p: u64) -> Location {
        self.lock(p).location()
    }

    /// Moves page `p` to `to` (see [`PageSlot::relocate`]).
    pub fn relocate(&self, p: u64, to: Location) {
        self.lock(p).relocate(to)
    }

    /// How many pages are where.
    pub fn counts(&self) -> LocationCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = &self.gauges;
        LocationCounts {
            pool: get(&g.pool),
            backing: get(&g.backing),
            zero: get(&g.zero),
            held: get(&g.held),
            lost: get(&g.lost),
        }
    }
}

/// Page `p` of a [`PageLocations`], locked: every operation on the page is serialized while a
/// slot is alive.
pub struct PageSlot<'a> {
    map: &'a PageLocations,
    p: u64,
    shard: MutexGuard<'a, Vec<Location>>,
}

impl PageSlot<'_> {
    fn slot(&mut self) -> &mut Location {
        &mut self.shard[(self.p >> SHARD_BITS) as usize]
    }

    /// The page's location.
    pub fn location(&self) -> Location {
        self.shard[(self.p >> SHARD_BITS) as usize]
    }

    /// Moves the page to `to`, keeping the gauges; a copy in the backing file that `to` does
    /// not include is punched out. A pool copy is the caller's business (the pool may already
    /// have dropped it).
    pub fn relocate(&mut self, to: Location) {
        let from = self.location();
        if from == to {
            return;
        }
        if from.in_backing() && !to.in_backing() {
            let _ = self.map.backing.punch(self.p, 1);
        }
        self.map.gauges.moved(from, to);
        *self.slot() = to;
    }

    /// Writes `page` to the backing file and moves the page to `written`; if the write fails,
    /// moves it to `failed` instead and returns the error.
    pub fn write_backing(&mut self, page: &[u8], written: Location, failed: Location) -> io::Result<()> {
        match self.map.backing.write_page(self.p, page) {
            Ok(()) => {
                self.relocate(written);
                Ok(())
            }
            Err(e) => {
                self.relocate(failed);
                Err(e)
            }
        }
    }

    /// Reads the page's backing-file copy into `page`.
    pub fn read_backing(&self, page: &mut [u8]) -> io::Result<()> {
        self.map.backing.read_page(self.p, page)
    }

    /// Places `page` by what the pool did with it (the module's placement rule). Returns where
    /// the page is now; an error means the backing file could not take a page that needed it,
    /// and the page was moved to `lost` (or, for a writethrough page, left in the pool alone).
    pub fn place(&mut self, result: StoreResult, page: &[u8], lost: Location) -> io::Result<Location> {
        let (written, failed) = match result {
            StoreResult::Stored => {
                self.relocate(Location::Pool);
                return Ok(Location::Pool);
            }
            StoreResult::StoredWritethrough => (Location::PoolAndBacking, Location::Pool),
            StoreResult::Rejected | StoreResult::Unknown => (Location::Backing, lost),
        };
        self.write_backing(page, written, failed).map(|()| written)
    }

    /// The pool handed its copy over (an exclusive load). Returns where the page still is: the
    /// backing file for a writethrough page, else [`Location::Nowhere`] — the caller now holds
    /// the only copy and must keep it.
    pub fn pool_let_go(&mut self) -> Location {
        let rest = if self.location() == Location::PoolAndBacking { Location::Backing } else { Location::Nowhere };
        self.relocate(rest);
        rest
    }

    /// The pool has no copy of a page the map puts there. A writethrough page falls back to
    /// its backing copy ([`Location::Backing`]); any other page becomes `lost`. Returns the new
    /// location.
    pub fn pool_lost(&mut self, lost: Location) -> Location {
        let to = if self.location() == Location::PoolAndBacking { Location::Backing } else { lost };
        self.relocate(to);
        to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pages: u64) -> (tempdir::Dir, PageLocations) {
        let dir = tempdir::Dir::new();
        let backing = BackingFile::temporary(dir.path(), 4096).unwrap();
        (dir, PageLocations::new(pages, backing))
    }

    /// A directory removed on drop (the crate has no tempfile dependency).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("tmem-locations-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn placement_follows_the_store_outcome_and_keeps_the_gauges() {
        let (_dir, map) = map(200);
        let page = vec![7u8; 4096];
        let mut read = vec![0u8; 4096];
        assert_eq!(map.lock(1).place(StoreResult::Stored, &page, Location::Lost).unwrap(), Location::Pool);
        assert_eq!(map.lock(2).place(StoreResult::Rejected, &page, Location::Lost).unwrap(), Location::Backing);
        assert_eq!(
            map.lock(3).place(StoreResult::StoredWritethrough, &page, Location::Lost).unwrap(),
            Location::PoolAndBacking
        );
        assert_eq!(map.lock(4).place(StoreResult::Unknown, &page, Location::Lost).unwrap(), Location::Backing);
        map.lock(2).read_backing(&mut read).unwrap();
        assert_eq!(read, page);
        assert_eq!(map.counts(), LocationCounts { pool: 2, backing: 3, ..Default::default() });

        // Stored again after a refusal: the stale file copy is punched.
        map.lock(2).place(StoreResult::Stored, &page, Location::Lost).unwrap();
        assert_eq!(map.get(2), Location::Pool);
        assert!(!map.backing().allocated(200).unwrap().iter().any(|&(first, n)| (first..first + n).contains(&2)));
        assert_eq!(map.counts(), LocationCounts { pool: 3, backing: 2, ..Default::default() });
    }

    #[test]
    fn exclusive_loads_and_lost_pages_keep_writethrough_copies() {
        let (_dir, map) = map(8);
        let page = vec![1u8; 4096];
        map.lock(0).place(StoreResult::StoredWritethrough, &page, Location::Lost).unwrap();
        map.lock(1).place(StoreResult::Stored, &page, Location::Lost).unwrap();
        assert_eq!(map.lock(0).pool_let_go(), Location::Backing);
        assert_eq!(map.lock(1).pool_let_go(), Location::Nowhere);

        map.lock(2).place(StoreResult::StoredWritethrough, &page, Location::Lost).unwrap();
        map.lock(3).place(StoreResult::Stored, &page, Location::Lost).unwrap();
        assert_eq!(map.lock(2).pool_lost(Location::Lost), Location::Backing);
        assert_eq!(map.lock(3).pool_lost(Location::Lost), Location::Lost);
        assert_eq!(map.counts(), LocationCounts { pool: 0, backing: 2, lost: 1, ..Default::default() });

        // Discarding a page with a file copy punches it.
        map.relocate(2, Location::Zero);
        assert_eq!(map.counts(), LocationCounts { pool: 0, backing: 1, zero: 1, lost: 1, held: 0 });
    }
}
