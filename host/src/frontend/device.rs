//! [`BlockDevice`]: a block device of `size` bytes over one pool — frontswap again, at the block
//! layer. Page `p` of the device (bytes `p * page_size ..`) is offset `p` of the pool; a write
//! is a store, a read a load, a discard an invalidate. The page size of the pool is the
//! device's block size, and every request must be aligned to it (anything else is
//! [`BlockError::Invalid`], EINVAL on the wire).
//!
//! # Where a page lives
//!
//! The device keeps one [`Location`] per page in a [`PageLocations`] (shared with the
//! userfaultfd region, which owns the placement rules): nowhere (never written or discarded:
//! reads zeros), zero (written with write-zeroes: reads zeros), the pool, the backing file,
//! both (a writethrough pool), or lost (the pool no longer has a page only it held: reads fail
//! with EIO until the page is written again, so lost data is never turned into zeros).
//!
//! - **write** → store. Stored: the page is in the pool and a stale copy in the backing file
//!   is cleared (zeroed: the file is reserved, see `tmem_frontend::backing`). Stored writethrough: also written to the backing file. Rejected (the
//!   pool is full, the page did not compress, a plugin faulted…): written to the backing
//!   file — by the duplicate-store rule the pool no longer has an older copy.
//! - **read** → load from the pool, or the backing file, or zeros. An exclusive load (the pool
//!   let go of the page) moves the page to the backing file.
//! - **discard** → invalidate (pool and backing file, cleared); **write-zeroes** → the same
//!   plus a zero marker.
//! - **flush** (and FUA) → the pool's durability barrier (a persistent pool with periodic
//!   durability flushes its database; a sync pool already acknowledged only what is on disk)
//!   and `fdatasync` of the backing file.
//! - **take back** (the pool's shrink) → pages move from the pool to the backing file.
//!
//! # Power loss: the order of moves (persistent pools)
//!
//! A persistent pool's copy of a page outlives a power loss, and so does what `fdatasync`
//! made durable in the backing file; the page cache does not. So for a device over a
//! persistent pool, **a page leaves the pool only once its new place is durable**:
//!
//! - an exclusive read and a take-back read the page (the pool keeps it), write it to the
//!   backing file, `fdatasync`, and only then invalidate it in the pool;
//! - a write over a page only the pool holds writes the new version to the backing file and
//!   `fdatasync`s **before** the store (the pool may refuse it, and the duplicate-store rule
//!   then drops the old version durably); a stored page's file copy is then cleared;
//! - a writethrough page's file copy is `fdatasync`ed before the write is acknowledged: the
//!   pool may drop its own copy at will (reclaim), durably;
//! - before a discard drops a page from the pool, every file copy cleared because a page moved
//!   into the pool alone is made durable (`fdatasync`): an older version cannot come back;
//! - a page that becomes **lost** is recorded in the pool's database (flushed) before the
//!   request returns, and a restart reads it as EIO again; the record goes (after the page's
//!   new copy is durable) when the page is written or discarded.
//!
//! At any moment of a power loss the page is then in the pool (the old version, for a write
//! not yet acknowledged: a restart prefers the pool's copy over the file's) or durable in the
//! file, or recorded lost — never in neither place, never zeros. A backing file that cannot
//! take or sync a page leaves it in the pool (a write fails with EIO first). A device over a
//! pool that keeps pages in memory moves pages without the `fdatasync` (a power loss takes
//! that pool's pages anyway).
//!
//! # Concurrency
//!
//! The map is split into shards by page index, each behind its own lock; every operation on a
//! page holds its shard's lock from the decision to the map update, so operations on one page
//! are serialized (linearizable) and different pages proceed in parallel — any number of
//! connections may share one device. A request spanning many pages takes the pages one at a
//! time: like a real disk, a multi-page write is not atomic.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tmem_frontend::backing::BackingFile;
use tmem_frontend::locations::{Location, PageLocations, PageSlot, StoreResult};

use crate::pool::{LoadOutcome, Pool, StoreOutcome};

/// The largest device: the map costs one byte per page (256 MiB of map for 1 TiB of 4 KiB pages).
pub const MAX_DEVICE_BYTES: u64 = 1 << 40;

/// The largest block size a device offers (NBD's minimum block size is at most 64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;

/// Why a request failed; each maps to one NBD error number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not aligned to the block size, or a read past the end (EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// A write, discard or write-zeroes past the end (ENOSPC).
    #[error("{0}")]
    NoSpace(String),
    /// The pool or the backing file failed (EIO); counted in `errors`.
    #[error("{0}")]
    Io(String),
}

impl BlockError {
    /// The errno the block protocols carry.
    pub fn errno(&self) -> u32 {
        match self {
            BlockError::Invalid(_) => libc::EINVAL as u32,
            BlockError::NoSpace(_) => libc::ENOSPC as u32,
            BlockError::Io(_) => libc::EIO as u32,
        }
    }
}

/// Why a device could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A size or pool the device cannot have.
    #[error("{0}")]
    Invalid(String),
    /// Another device or process holds the backing file.
    #[error("{0}")]
    BackingInUse(String),
    /// The backing file cannot be created, opened or sized.
    #[error("{0}")]
    Backing(String),
}

/// The device's counters (shown as the frontend's counters of its pool).
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    flushes: AtomicU64,
    fua: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Pages the pool refused, written to the backing file.
    to_backing: AtomicU64,
    /// Page reads served from the backing file.
    from_backing: AtomicU64,
    /// Page reads of zeros (never written, discarded or write-zeroed pages).
    zero_reads: AtomicU64,
    /// Writethrough copies written to the backing file.
    writethrough_copies: AtomicU64,
    /// Pages moved to the backing file by the pool's shrink.
    taken_back: AtomicU64,
    /// Pages an exclusive load took out of the pool, kept in the backing file.
    exclusive_to_backing: AtomicU64,
    /// Requests that failed with EIO.
    errors: AtomicU64,
    /// Requests refused as malformed (unaligned, out of range).
    invalid_requests: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A block device over a pool. Shared as `Arc<BlockDevice>` by every connection serving it.
pub struct BlockDevice {
    pool: Arc<Pool>,
    /// The device's claim on the pool ([`Pool::claim`]): no other writer may change its pages.
    claim: u64,
    page_size: usize,
    page_shift: u32,
    pages: u64,
    /// Where each page is, with the backing file.
    locations: PageLocations,
    counters: Counters,
    /// Backing copies cleared (zeroed or punched) because their page moved into a persistent
    /// pool alone, so far; and how many of them an `fdatasync` has made durable. Invariant: a
    /// persistent pool drops such a page only once this is settled, or a power loss could
    /// bring the cleared (older) copy back in its place.
    cleared: AtomicU64,
    cleared_synced: AtomicU64,
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice").field("pool", &self.pool.name()).field("pages", &self.pages).finish()
    }
}

/// How a device starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// An empty device: the backing file is emptied and any page the pool holds at the
    /// device's offsets is invalidated.
    Empty,
    /// The same device again after a host restart (a persistent pool): pages the pool holds
    /// are the device's, and so are the pages the backing file holds that the pool does not.
    Resume,
}

impl BlockDevice {
    /// A device of `size` bytes over `pool` with its backing file at `backing` (created if
    /// missing, locked, sized to `size`). `size` must be a nonzero multiple of the pool's page
    /// size, at most [`MAX_DEVICE_BYTES`].
    pub fn new(pool: Arc<Pool>, size: u64, backing: &Path, start: Start) -> Result<BlockDevice, OpenError> {
        let page_size = pool.page_size();
        if page_size > MAX_BLOCK_SIZE {
            return Err(OpenError::Invalid(format!(
                "pool '{}' has {page_size}-byte pages; a block device needs pages of at most {MAX_BLOCK_SIZE} bytes",
                pool.name()
            )));
        }
        if size == 0 || !size.is_multiple_of(page_size as u64) || size > MAX_DEVICE_BYTES {
            return Err(OpenError::Invalid(format!(
                "size_bytes {size} must be a nonzero multiple of the pool's page size ({page_size}) and at most {MAX_DEVICE_BYTES}"
            )));
        }
        let pages = size / page_size as u64;
        let path = backing.display().to_string();
        // Invariant: the pool's offsets are this device's pages from here on; the claim ends
        // with `release` (detach) or when the device is dropped.
        let claim = pool
            .claim(&format!("the block device over {path}"))
            .map_err(|e| OpenError::Invalid(format!("{e} (a pool is one device's swap area)")))?;
        let unclaim = |pool: &Pool, e| {
            pool.unclaim(claim);
            e
        };
        let backing = BackingFile::open(backing, size, page_size as usize, start == Start::Resume)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    OpenError::BackingInUse(format!("backing file {e}"))
                } else {
                    OpenError::Backing(format!("backing file {path}: {e}"))
                }
            })
            .map_err(|e| unclaim(&pool, e))?;
        if !pool.reserve_offsets(pages) {
            tracing::warn!(pool = %pool.name(), "the memory budget refused the page index room for the device's pages ahead: it grows as pages come, on the I/O path");
        }
        let device = BlockDevice {
            pool,
            claim,
            page_size: page_size as usize,
            page_shift: page_size.trailing_zeros(),
            pages,
            locations: PageLocations::new(pages, backing),
            counters: Counters::default(),
            cleared: AtomicU64::new(0),
            cleared_synced: AtomicU64::new(0),
        };
        match start {
            Start::Empty => device.forget_pool_pages().map_err(OpenError::Backing)?,
            Start::Resume => {
                device.rebuild_map().map_err(|e| OpenError::Backing(format!("backing file {path}: {e}")))?
            }
        }
        Ok(device)
    }

    /// Invalidates whatever the pool holds at the device's offsets (a new device reads zeros),
    /// and forgets the lost pages an earlier device over the pool recorded.
    fn forget_pool_pages(&self) -> Result<(), String> {
        if let Some(disk) = self.pool.disk() {
            disk.clear_lost().map_err(|e| e.to_string())?;
        }
        if self.pool.curr_pages() == 0 {
            return Ok(());
        }
        for p in 0..self.pages {
            self.pool.invalidate_page(p).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Rebuilds the map after a restart: the pool's pages first (a store the pool accepted is
    /// newer than any backing copy, which is cleared unless the pool is writethrough), then
    /// the pages recorded lost (EIO until written again, whatever the file holds), then the
    /// backing file's allocated pages.
    fn rebuild_map(&self) -> std::io::Result<()> {
        let writethrough = self.pool.modes().writethrough;
        let mut in_backing = vec![false; self.pages as usize];
        for (first, count) in self.locations.backing().allocated(self.pages)? {
            for p in first..(first + count).min(self.pages) {
                in_backing[p as usize] = true;
            }
        }
        let disk = self.pool.disk();
        let mut lost = vec![false; self.pages as usize];
        for p in disk.map(|d| d.lost_pages()).transpose().map_err(std::io::Error::other)?.unwrap_or_default() {
            if let Some(l) = lost.get_mut(p as usize) {
                *l = true;
            }
        }
        for p in 0..self.pages {
            let mut slot = self.locations.lock(p);
            match (self.pool.contains(p), in_backing[p as usize]) {
                (true, true) if writethrough => slot.relocate(Location::PoolAndBacking),
                (true, true) => {
                    // In both: the pool's store is newer, the file's copy stale.
                    let _ = self.locations.backing().punch(p, 1);
                    slot.relocate(Location::Pool);
                }
                (true, false) => slot.relocate(Location::Pool),
                (false, backing) if lost[p as usize] => {
                    if backing {
                        // Whatever the file holds is not the page (the map never named it):
                        // taken out as the page goes to lost.
                        slot.relocate(Location::Backing);
                    }
                    slot.relocate(Location::Lost);
                }
                (false, true) => slot.relocate(Location::Backing),
                (false, false) => {}
            }
            if lost[p as usize] && slot.location() != Location::Lost {
                // Written again into the pool before the crash: no longer lost.
                disk.expect("lost pages come from the disk").set_lost(p, false).map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Whether the device orders its moves for power loss: a persistent pool's copy of a page
    /// outlives a crash, so a page leaves it only once its new place is durable (see the
    /// module docs). A pool that keeps pages in memory loses them all in a crash anyway.
    fn ordered(&self) -> bool {
        self.pool.is_persistent()
    }

    /// `fdatasync` of the backing file: every page written to it so far is durable.
    fn sync_backing(&self) -> Result<(), BlockError> {
        let cleared = self.cleared.load(Ordering::Acquire);
        self.locations
            .backing()
            .sync_data()
            .map_err(|e| self.io_error(format!("fdatasync of the backing file: {e}")))?;
        self.cleared_synced.fetch_max(cleared, Ordering::Release);
        Ok(())
    }

    /// Counts a backing copy cleared by a move `was` → `now` that leaves a persistent pool's
    /// page in the pool alone.
    fn note_cleared(&self, was: Location, now: Location) {
        if self.ordered() && was.in_backing() && !now.in_backing() {
            self.cleared.fetch_add(1, Ordering::Release);
        }
    }

    /// Makes every such clearing durable before a page leaves the pool for nowhere.
    fn settle_cleared(&self) -> Result<(), BlockError> {
        if self.cleared.load(Ordering::Acquire) > self.cleared_synced.load(Ordering::Acquire) {
            self.sync_backing()?;
        }
        Ok(())
    }

    /// Records on disk that page `p` became lost (`was` → `now`), or is lost no longer, for a
    /// persistent pool: a lost page reads as EIO after a restart too, never as zeros.
    fn keep_lost(&self, p: u64, was: Location, now: Location) -> Result<(), BlockError> {
        let (lost_before, lost_now) = (was == Location::Lost, now == Location::Lost);
        let Some(disk) = self.pool.disk().filter(|_| lost_before != lost_now) else { return Ok(()) };
        if lost_before && now.in_backing() {
            // The page's new copy is durable before the record that it was lost goes.
            self.sync_backing()?;
        }
        disk.set_lost(p, lost_now).map_err(|e| self.io_error(format!("recording whether page {p} is lost: {e}")))
    }

    /// The pool the device stores into.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.pages << self.page_shift
    }

    /// The block size: every request is aligned to it (the pool's page size).
    pub fn block_size(&self) -> u32 {
        self.page_size as u32
    }

    /// Checks a request and returns its first page and page count. Unaligned requests and
    /// reads past the end are `Invalid`; changes past the end are `NoSpace`.
    fn pages_of(&self, offset: u64, len: u64, changes: bool) -> Result<(u64, u64), BlockError> {
        let mask = self.page_size as u64 - 1;
        let refuse = |e: BlockError| {
            bump(&self.counters.invalid_requests, 1);
            Err(e)
        };
        if offset & mask != 0 || len & mask != 0 {
            return refuse(BlockError::Invalid(format!(
                "offset {offset} and length {len} must be multiples of the block size {}",
                self.page_size
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok((offset >> self.page_shift, len >> self.page_shift)),
            _ if changes => refuse(BlockError::NoSpace(format!(
                "{len} bytes at {offset} go past the end of the {}-byte device",
                self.size()
            ))),
            _ => refuse(BlockError::Invalid(format!(
                "{len} bytes at {offset} go past the end of the {}-byte device",
                self.size()
            ))),
        }
    }

    fn io_error(&self, message: String) -> BlockError {
        bump(&self.counters.errors, 1);
        tracing::error!(pool = %self.pool.name(), "block device: {message}");
        BlockError::Io(message)
    }

    /// Reads `buf.len()` bytes at `offset` (both aligned to the block size).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let (first, count) = self.pages_of(offset, buf.len() as u64, false)?;
        bump(&self.counters.reads, 1);
        bump(&self.counters.bytes_read, buf.len() as u64);
        for (i, page) in buf.chunks_exact_mut(self.page_size).enumerate().take(count as usize) {
            self.read_page(first + i as u64, page)?;
        }
        Ok(())
    }

    fn read_page(&self, p: u64, page: &mut [u8]) -> Result<(), BlockError> {
        let mut slot = self.locations.lock(p);
        let was = slot.location();
        let read = match was {
            Location::Nowhere | Location::Zero => {
                page.fill(0);
                bump(&self.counters.zero_reads, 1);
                Ok(())
            }
            Location::Backing => self.read_backing(&slot, page),
            Location::Lost | Location::Held => Err(self.io_error(format!(
                "page {p} was lost by pool '{}' (see its load_failures and logs)",
                self.pool.name()
            ))),
            // A persistent pool never lets go of a page by itself (its exclusive loads are
            // moves made in order, see `read_moving`).
            Location::Pool | Location::PoolAndBacking if self.ordered() => {
                if self.pool.modes().exclusive_gets {
                    self.read_moving(p, &mut slot, page)
                } else {
                    match self.pool.load_keeping(p, page) {
                        Ok(LoadOutcome::Loaded { .. }) => Ok(()),
                        Ok(LoadOutcome::Absent) => self.pool_lost(p, &mut slot, page),
                        Err(e) => Err(self.io_error(e.to_string())),
                    }
                }
            }
            Location::Pool | Location::PoolAndBacking => match self.pool.load(p, page) {
                Ok(LoadOutcome::Loaded { exclusive: false }) => Ok(()),
                Ok(LoadOutcome::Loaded { exclusive: true }) => {
                    // The pool let go of the page: the device keeps it.
                    if slot.pool_let_go() == Location::Backing {
                        return Ok(());
                    }
                    bump(&self.counters.exclusive_to_backing, 1);
                    slot.write_backing(page, Location::Backing, Location::Lost).map_err(|e| {
                        self.io_error(format!(
                            "page {p} left the pool (exclusive load) and could not be written to the backing file: {e}"
                        ))
                    })
                }
                Ok(LoadOutcome::Absent) => self.pool_lost(p, &mut slot, page),
                Err(e) => Err(self.io_error(e.to_string())),
            },
        };
        self.keep_lost(p, was, slot.location())?;
        read
    }

    /// The pool has no copy of a page the map puts there: a writethrough page is read from its
    /// backing copy; any other is lost.
    fn pool_lost(&self, p: u64, slot: &mut PageSlot<'_>, page: &mut [u8]) -> Result<(), BlockError> {
        match slot.pool_lost(Location::Lost) {
            Location::Backing => self.read_backing(slot, page),
            _ => Err(self.io_error(format!(
                "page {p} is no longer in pool '{}' (invalidated behind the device's back)",
                self.pool.name()
            ))),
        }
    }

    /// An exclusive read of a persistent pool's page: the page is read (the pool keeps it),
    /// written to the backing file and made durable there (`fdatasync`), and only then
    /// invalidated in the pool — at every moment of a power loss one of the two holds it.
    /// If the file cannot take it, the page simply stays in the pool (the read still succeeds).
    fn read_moving(&self, p: u64, slot: &mut PageSlot<'_>, page: &mut [u8]) -> Result<(), BlockError> {
        match self.pool.load_keeping(p, page) {
            Ok(LoadOutcome::Loaded { .. }) => {}
            Ok(LoadOutcome::Absent) => return self.pool_lost(p, slot, page),
            Err(e) => return Err(self.io_error(e.to_string())),
        }
        let was = slot.location();
        if was == Location::Pool
            && let Err(e) = slot.write_backing(page, Location::PoolAndBacking, Location::Pool)
        {
            let _ = self.io_error(format!("page {p} stays in the pool: the backing file cannot take it: {e}"));
            return Ok(());
        }
        if self.sync_backing().is_err() {
            slot.relocate(was);
            return Ok(());
        }
        if was == Location::Pool {
            bump(&self.counters.exclusive_to_backing, 1);
        }
        // Durable in the file: the page leaves the pool. A removal the pool cannot make
        // durable is reported (the pool disables its stores); the file copy is the page.
        if let Err(e) = self.pool.taken(p, false) {
            let _ = self.io_error(e.to_string());
        }
        slot.relocate(Location::Backing);
        Ok(())
    }

    fn read_backing(&self, slot: &PageSlot<'_>, page: &mut [u8]) -> Result<(), BlockError> {
        bump(&self.counters.from_backing, 1);
        slot.read_backing(page).map_err(|e| self.io_error(format!("reading a page from the backing file: {e}")))
    }

    /// Writes `data` at `offset` (both aligned to the block size); with `fua`, durable before
    /// it returns.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), BlockError> {
        let (first, _) = self.pages_of(offset, data.len() as u64, true)?;
        bump(&self.counters.writes, 1);
        bump(&self.counters.bytes_written, data.len() as u64);
        for (i, page) in data.chunks_exact(self.page_size).enumerate() {
            self.write_page(first + i as u64, page)?;
        }
        if fua {
            bump(&self.counters.fua, 1);
            self.make_durable()?;
        }
        Ok(())
    }

    fn write_page(&self, p: u64, page: &[u8]) -> Result<(), BlockError> {
        let mut slot = self.locations.lock(p);
        let was = slot.location();
        if self.ordered() && was == Location::Pool {
            return self.overwrite_ordered(p, &mut slot, page);
        }
        let result = match self.pool.store(p, page).map_err(|e| self.io_error(e.to_string()))? {
            StoreOutcome::Stored => StoreResult::Stored,
            StoreOutcome::StoredWritethrough => {
                bump(&self.counters.writethrough_copies, 1);
                StoreResult::StoredWritethrough
            }
            StoreOutcome::Rejected(_) => {
                bump(&self.counters.to_backing, 1);
                StoreResult::Rejected
            }
        };
        // A refused page whose file write fails is gone until written again: by the
        // duplicate-store rule the pool no longer has an older copy.
        let mut placed = slot.place(result, page, Location::Lost).map(drop).map_err(|e| {
            self.io_error(format!("page {p} could not be written to the backing file ({result:?} by the pool): {e}"))
        });
        if self.ordered() && slot.location() == Location::PoolAndBacking && placed.is_ok() {
            // A writethrough page's file copy is what lets the pool drop its own at will
            // (reclaim, durably): it is durable before the write is acknowledged. If it
            // cannot be, the page is the pool's alone, and the write fails.
            if let Err(e) = self.sync_backing() {
                slot.relocate(Location::Pool);
                placed = Err(e);
            }
        }
        self.note_cleared(was, slot.location());
        self.keep_lost(p, was, slot.location())?;
        placed
    }

    /// A write over a page only a persistent pool holds. The pool may refuse the new version,
    /// and by the duplicate-store rule it then drops the old one — durably. So the new version
    /// is written to the backing file and made durable there (`fdatasync`) **first**: at every
    /// moment of a power loss the pool holds the old version or the file the new one (a
    /// restart prefers the pool's copy), never neither. A file that cannot take the page fails
    /// the write before the pool is touched (the old version stays).
    fn overwrite_ordered(&self, p: u64, slot: &mut PageSlot<'_>, page: &[u8]) -> Result<(), BlockError> {
        slot.write_backing(page, Location::PoolAndBacking, Location::Pool).map_err(|e| {
            self.io_error(format!("page {p} could not be written to the backing file ahead of the pool: {e}"))
        })?;
        if let Err(e) = self.sync_backing() {
            slot.relocate(Location::Pool);
            return Err(e);
        }
        let outcome = self.pool.store(p, page);
        match outcome {
            // The file copy goes (cleared); the pool's is the page.
            Ok(StoreOutcome::Stored) => {
                slot.relocate(Location::Pool);
                self.note_cleared(Location::PoolAndBacking, Location::Pool);
            }
            Ok(StoreOutcome::StoredWritethrough) => bump(&self.counters.writethrough_copies, 1),
            Ok(StoreOutcome::Rejected(_)) => {
                bump(&self.counters.to_backing, 1);
                slot.relocate(Location::Backing);
            }
            // Only a wrong page size, which a device never sends: the pool is untouched.
            Err(e) => {
                slot.relocate(Location::Pool);
                return Err(self.io_error(e.to_string()));
            }
        }
        Ok(())
    }

    /// Discards `len` bytes at `offset`: the pages read as zeros and take no space.
    pub fn discard(&self, offset: u64, len: u64, fua: bool) -> Result<(), BlockError> {
        bump(&self.counters.discards, 1);
        self.drop_pages(offset, len, Location::Nowhere, fua)
    }

    /// Writes zeros over `len` bytes at `offset`: the pages are dropped and marked zero.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), BlockError> {
        bump(&self.counters.write_zeroes, 1);
        self.drop_pages(offset, len, Location::Zero, fua)
    }

    fn drop_pages(&self, offset: u64, len: u64, to: Location, fua: bool) -> Result<(), BlockError> {
        let (first, count) = self.pages_of(offset, len, true)?;
        for p in first..first + count {
            let mut slot = self.locations.lock(p);
            let was = slot.location();
            if self.ordered() && was.in_pool() {
                // An older copy this page had in the file is durably cleared before the pool
                // durably drops the page (else a power loss could bring that copy back).
                self.settle_cleared()?;
            }
            let dropped = if was.in_pool() { self.pool.invalidate_page(p).map(drop) } else { Ok(()) };
            // Gone from the pool's map either way; a removal that is not durable fails the
            // request (the pool has disabled its stores).
            slot.relocate(to);
            self.keep_lost(p, was, to)?;
            dropped.map_err(|e| self.io_error(e.to_string()))?;
        }
        if fua {
            bump(&self.counters.fua, 1);
            self.make_durable()?;
        }
        Ok(())
    }

    /// A durability barrier: every change acknowledged so far is on disk — in the pool's
    /// database (persistent pools) and in the backing file.
    pub fn flush(&self) -> Result<(), BlockError> {
        bump(&self.counters.flushes, 1);
        self.make_durable()
    }

    fn make_durable(&self) -> Result<(), BlockError> {
        if let Some(disk) = self.pool.disk()
            && !disk.durability().flushes_each_change()
        {
            disk.flush().map_err(|e| self.io_error(e.to_string()))?;
        }
        self.sync_backing()
    }

    /// Runs of pages from `offset` (at most `len` bytes, aligned) as `(bytes, reads_as_zero)`,
    /// for block-status queries: a page nowhere or write-zeroed reads as zeros and takes no
    /// space. At most `max_runs` runs.
    pub fn extents(&self, offset: u64, len: u64, max_runs: usize) -> Result<Vec<(u64, bool)>, BlockError> {
        let (first, count) = self.pages_of(offset, len, false)?;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for p in first..first + count {
            let zero = self.locations.get(p).reads_as_zero();
            if let Some((bytes, z)) = runs.last_mut()
                && *z == zero
            {
                *bytes += self.page_size as u64;
            } else if runs.len() == max_runs {
                break;
            } else {
                runs.push((self.page_size as u64, zero));
            }
        }
        Ok(runs)
    }

    /// Takes the pool's pages at `offsets` into the backing file (the pool's shrink). Each is
    /// read (the pool keeps it), written to the file, made durable there (`fdatasync`, for a
    /// persistent pool, whose copy would outlive a power loss) and only then invalidated in
    /// the pool: a page the file cannot take stays in the pool. Offsets beyond the device, or
    /// not in the pool, are skipped. Returns how many moved.
    pub fn take_back(&self, offsets: &[u64]) -> u64 {
        let mut page = vec![0u8; self.page_size];
        let mut taken = 0;
        for &p in offsets.iter().filter(|&&p| p < self.pages) {
            let mut slot = self.locations.lock(p);
            let was = slot.location();
            if !was.in_pool() {
                continue;
            }
            match self.pool.load_keeping(p, &mut page) {
                Ok(LoadOutcome::Loaded { .. }) => {}
                Ok(LoadOutcome::Absent) => {
                    slot.pool_lost(Location::Lost);
                    let _ = self.keep_lost(p, was, slot.location());
                    continue;
                }
                Err(e) => {
                    let _ = self.io_error(e.to_string());
                    continue;
                }
            }
            if was == Location::Pool
                && let Err(e) = slot.write_backing(&page, Location::PoolAndBacking, Location::Pool)
            {
                let _ = self.io_error(format!("taking page {p} back into the backing file: {e}"));
                continue;
            }
            if self.ordered() && self.sync_backing().is_err() {
                slot.relocate(was);
                continue;
            }
            match self.pool.taken(p, true) {
                Ok(present) => taken += present as u64,
                // Out of the pool's map, not durably (reported; the pool disables its
                // stores): the file copy is durable, and it is the page.
                Err(e) => {
                    let _ = self.io_error(e.to_string());
                    taken += 1;
                }
            }
            slot.relocate(Location::Backing);
        }
        bump(&self.counters.taken_back, taken);
        taken
    }

    /// Swapoff for the device: every page it has in the pool is invalidated and no page is
    /// lost any more (the backing file is left as it is; it is the user's file).
    pub fn release(&self) {
        self.pool.unclaim(self.claim);
        for p in 0..self.pages {
            let mut slot = self.locations.lock(p);
            if slot.location().in_pool()
                && let Err(e) = self.pool.invalidate_page(p)
            {
                let _ = self.io_error(e.to_string());
            }
            slot.relocate(Location::Nowhere);
        }
        if let Some(disk) = self.pool.disk()
            && let Err(e) = disk.clear_lost()
        {
            let _ = self.io_error(e.to_string());
        }
    }

    /// The device's counters, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let at = self.locations.counts();
        vec![
            ("size_bytes", self.size()),
            ("block_size", self.page_size as u64),
            ("reads", get(&c.reads)),
            ("writes", get(&c.writes)),
            ("discards", get(&c.discards)),
            ("write_zeroes", get(&c.write_zeroes)),
            ("flushes", get(&c.flushes)),
            ("fua", get(&c.fua)),
            ("bytes_read", get(&c.bytes_read)),
            ("bytes_written", get(&c.bytes_written)),
            ("to_backing", get(&c.to_backing)),
            ("from_backing", get(&c.from_backing)),
            ("zero_reads", get(&c.zero_reads)),
            ("writethrough_copies", get(&c.writethrough_copies)),
            ("exclusive_to_backing", get(&c.exclusive_to_backing)),
            ("taken_back", get(&c.taken_back)),
            ("errors", get(&c.errors)),
            ("invalid_requests", get(&c.invalid_requests)),
            ("pool_pages", at.pool),
            ("backing_pages", at.backing),
            ("zero_pages", at.zero),
            ("lost_pages", at.lost),
        ]
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        self.pool.unclaim(self.claim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{BackendSpec, Host, HostConfig};
    use crate::pool::{PoolModes, PoolSpec};

    fn device(tag: &str, modes: PoolModes, max_pages: Option<u64>) -> (Host, BlockDevice, std::path::PathBuf) {
        let host = Host::new(HostConfig::default()).unwrap();
        let mut spec = PoolSpec::new(tag);
        spec.modes = modes;
        spec.limits.max_pages = max_pages;
        spec.shards = Some(2);
        let pool = host.create_pool(spec, &[BackendSpec::new("ram")]).unwrap();
        let path = std::env::temp_dir().join(format!("tmem-block-unit-{tag}-{}", std::process::id()));
        let device = BlockDevice::new(pool, 64 * 4096, &path, Start::Empty).unwrap();
        (host, device, path)
    }

    /// A device of 16 pages over a sync `[zstd, sled]` pool "p" of a host with a data dir;
    /// [`Persistent::restart`] makes both again over the same data dir and backing file.
    struct Persistent {
        dir: std::path::PathBuf,
        host: Option<Host>,
        device: Option<BlockDevice>,
    }

    impl Persistent {
        fn new(tag: &str, modes: PoolModes) -> Persistent {
            let dir = std::env::temp_dir().join(format!("tmem-block-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let host = Host::new(HostConfig { data_dir: Some(dir.join("data")), ..Default::default() }).unwrap();
            let sled = BackendSpec { grants: vec!["storage".into()], ..BackendSpec::new("sled") };
            let mut spec = PoolSpec::new("p");
            spec.modes = modes;
            spec.shards = Some(2);
            let pool = host.create_pool(spec, &[BackendSpec::new("zstd"), sled]).unwrap();
            let device = BlockDevice::new(pool, 16 * 4096, &dir.join("backing"), Start::Empty).unwrap();
            Persistent { dir, host: Some(host), device: Some(device) }
        }

        fn device(&self) -> &BlockDevice {
            self.device.as_ref().unwrap()
        }

        /// A restart: the device and the host go, and come back (the device resumes).
        fn restart(&mut self) {
            self.device = None;
            self.host = None;
            let host = Host::new(HostConfig { data_dir: Some(self.dir.join("data")), ..Default::default() }).unwrap();
            let pool = host.pool("p").unwrap();
            self.device = Some(BlockDevice::new(pool, 16 * 4096, &self.dir.join("backing"), Start::Resume).unwrap());
            self.host = Some(host);
        }
    }

    impl Drop for Persistent {
        fn drop(&mut self) {
            self.device = None;
            self.host = None;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn tagged(tag: u8) -> Vec<u8> {
        (0..4096u32).map(|i| (i as u8).wrapping_mul(13) ^ tag).collect()
    }

    #[test]
    fn a_persistent_pool_keeps_a_page_until_its_backing_copy_is_durable() {
        let t = Persistent::new("ordered", PoolModes::default());
        let device = t.device();
        let pool = device.pool().clone();
        for p in 0..4u64 {
            device.write(p * 4096, &tagged(p as u8), false).unwrap();
        }
        assert_eq!(pool.curr_pages(), 4);
        let mut buf = vec![0u8; 4096];
        // The backing file cannot make anything durable: no page may leave the pool.
        device.locations.backing().fail_syncs_for_testing(true);

        // Take-back (the pool's shrink).
        assert_eq!(device.take_back(&[0]), 0, "a page was taken back though its file copy is not durable");
        assert!(pool.contains(0), "take-back removed a page from the pool before its file copy was durable");

        // An exclusive load.
        pool.set_modes(PoolModes { exclusive_gets: true, writethrough: false });
        device.read(4096, &mut buf).unwrap();
        assert_eq!(buf, tagged(1));
        assert!(pool.contains(1), "an exclusive load removed a page before its file copy was durable");
        pool.set_modes(PoolModes::default());

        // A store the pool refuses over a page it holds (its old copy would be dropped).
        pool.set_enabled(false);
        assert!(device.write(2 * 4096, &tagged(20), false).is_err(), "the new version is not durable anywhere");
        assert!(pool.contains(2), "a refused store dropped the old version before the new one was durable");
        device.read(2 * 4096, &mut buf).unwrap();
        assert_eq!(buf, tagged(2), "the old version stays");

        // With a disk that syncs, each move completes.
        device.locations.backing().fail_syncs_for_testing(false);
        device.write(2 * 4096, &tagged(20), false).unwrap();
        assert!(!pool.contains(2));
        assert_eq!(device.take_back(&[0]), 1);
        assert!(!pool.contains(0));
        pool.set_enabled(true);
        for (p, want) in [(0u64, tagged(0)), (1, tagged(1)), (2, tagged(20)), (3, tagged(3))] {
            device.read(p * 4096, &mut buf).unwrap();
            assert_eq!(buf, want, "page {p}");
        }
    }

    #[test]
    fn a_discard_never_lets_an_older_backing_copy_come_back() {
        let t = Persistent::new("discard-stale", PoolModes::default());
        let device = t.device();
        let pool = device.pool().clone();
        // Version A goes to the file (the pool refuses it), version B to the pool: A's file
        // copy is cleared, but not durably yet.
        pool.set_enabled(false);
        device.write(0, &tagged(0xa), false).unwrap();
        pool.set_enabled(true);
        device.write(0, &tagged(0xb), false).unwrap();
        assert!(pool.contains(0));
        // Dropping B from the pool durably while A's clearing is not durable would let a
        // power loss bring A back: with no fdatasync possible, the discard fails first.
        device.locations.backing().fail_syncs_for_testing(true);
        assert!(device.discard(0, 4096, false).is_err(), "B left the pool while A could come back");
        assert!(pool.contains(0));
        device.locations.backing().fail_syncs_for_testing(false);
        device.discard(0, 4096, false).unwrap();
        assert!(!pool.contains(0));
        let mut buf = vec![1u8; 4096];
        device.read(0, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
    }

    #[test]
    fn a_writethrough_copy_is_durable_before_the_write_is_acknowledged() {
        let t = Persistent::new("wt-durable", PoolModes { writethrough: true, exclusive_gets: false });
        let device = t.device();
        device.locations.backing().fail_syncs_for_testing(true);
        // The pool may reclaim a writethrough page at will, durably: its file copy must be
        // durable first, or the write is not acknowledged.
        assert!(
            device.write(0, &tagged(1), false).is_err(),
            "a writethrough copy that is not durable was acknowledged"
        );
        assert_eq!(counter(device, "backing_pages"), 0);
        device.locations.backing().fail_syncs_for_testing(false);
        device.write(0, &tagged(1), false).unwrap();
        assert_eq!((counter(device, "pool_pages"), counter(device, "backing_pages")), (1, 1));
    }

    #[test]
    fn a_lost_page_of_a_persistent_pool_stays_lost_across_a_restart() {
        let mut t = Persistent::new("lost-restart", PoolModes::default());
        t.device().write(0, &tagged(1), false).unwrap();
        t.device().write(4096, &tagged(2), false).unwrap();
        // The pool loses page 0 behind the device's back: it reads as EIO from then on.
        t.device().pool().invalidate_page(0).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(t.device().read(0, &mut buf), Err(BlockError::Io(_))));
        t.restart();
        assert!(
            matches!(t.device().read(0, &mut buf), Err(BlockError::Io(_))),
            "a lost page read as {:?} after a restart",
            &buf[..8]
        );
        assert_eq!(counter(t.device(), "lost_pages"), 1);
        t.device().read(4096, &mut buf).unwrap();
        assert_eq!(buf, tagged(2));
        // Written again, it is found again — after a restart too.
        t.device().write(0, &tagged(3), false).unwrap();
        t.restart();
        t.device().read(0, &mut buf).unwrap();
        assert_eq!(buf, tagged(3));
        assert_eq!(counter(t.device(), "lost_pages"), 0);
    }

    fn counter(device: &BlockDevice, name: &str) -> u64 {
        device.counters().into_iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn writethrough_pages_are_in_both_places_and_survive_the_pool_dropping_them() {
        let (_host, device, path) = device("wt", PoolModes { writethrough: true, exclusive_gets: false }, None);
        device.write(0, &[7u8; 8192], false).unwrap();
        assert_eq!((counter(&device, "pool_pages"), counter(&device, "backing_pages")), (2, 2));
        // The pool may drop writethrough pages at will: the backing copy serves the read.
        device.pool().invalidate_page(1).unwrap();
        let mut buf = vec![0u8; 8192];
        device.read(0, &mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 8192]);
        assert_eq!((counter(&device, "pool_pages"), counter(&device, "from_backing")), (1, 1));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_exclusive_load_keeps_the_page_in_the_backing_file() {
        let (_host, device, path) = device("excl", PoolModes { writethrough: false, exclusive_gets: true }, None);
        device.write(4096, &[9u8; 4096], false).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            device.read(4096, &mut buf).unwrap();
            assert_eq!(buf, vec![9u8; 4096]);
        }
        assert_eq!(device.pool().curr_pages(), 0);
        assert_eq!((counter(&device, "exclusive_to_backing"), counter(&device, "backing_pages")), (1, 1));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_page_invalidated_behind_the_device_reads_as_an_error_not_as_zeros() {
        let (_host, device, path) = device("lost", PoolModes::default(), None);
        device.write(0, &[1u8; 4096], false).unwrap();
        device.pool().invalidate_area().unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(device.read(0, &mut buf), Err(BlockError::Io(_))));
        assert!(matches!(device.read(0, &mut buf), Err(BlockError::Io(_))), "it stays lost");
        assert_eq!(counter(&device, "lost_pages"), 1);
        device.write(0, &[2u8; 4096], false).unwrap();
        device.read(0, &mut buf).unwrap();
        assert_eq!(buf, vec![2u8; 4096]);
        assert_eq!(counter(&device, "lost_pages"), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn requests_are_checked_before_any_page_is_touched() {
        let (_host, device, path) = device("check", PoolModes::default(), Some(4));
        let mut buf = vec![0u8; 4096];
        assert!(matches!(device.read(512, &mut buf), Err(BlockError::Invalid(_))));
        assert!(matches!(device.read(64 * 4096, &mut buf), Err(BlockError::Invalid(_))));
        assert!(matches!(device.write(63 * 4096, &[0; 8192], false), Err(BlockError::NoSpace(_))));
        assert!(matches!(device.discard(u64::MAX - 4095, 4096, false), Err(BlockError::NoSpace(_))));
        assert_eq!(counter(&device, "writes"), 0);
        // Past the pool's limit, pages go to the backing file; extents see data and holes.
        device.write(0, &[5u8; 8 * 4096], true).unwrap();
        assert!(counter(&device, "to_backing") >= 4);
        device.write_zeroes(4096, 4096, false).unwrap();
        assert_eq!(
            device.extents(0, 16 * 4096, 8).unwrap(),
            vec![(4096, false), (4096, true), (6 * 4096, false), (8 * 4096, true)]
        );
        assert_eq!(device.extents(0, 16 * 4096, 1).unwrap(), vec![(4096, false)]);
        std::fs::remove_file(path).unwrap();
    }
}
