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

use crate::persist::Durability;
use crate::pool::{LoadOutcome, OpError, Pool, StoreOutcome};

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
    page_size: usize,
    page_shift: u32,
    pages: u64,
    /// Where each page is, with the backing file.
    locations: PageLocations,
    counters: Counters,
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
        let backing = BackingFile::open(backing, size, page_size as usize, start == Start::Resume).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                OpenError::BackingInUse(format!("backing file {e}"))
            } else {
                OpenError::Backing(format!("backing file {path}: {e}"))
            }
        })?;
        if !pool.reserve_offsets(pages) {
            tracing::warn!(pool = %pool.name(), "the memory budget refused the page index room for the device's pages ahead: it grows as pages come, on the I/O path");
        }
        let device = BlockDevice {
            pool,
            page_size: page_size as usize,
            page_shift: page_size.trailing_zeros(),
            pages,
            locations: PageLocations::new(pages, backing),
            counters: Counters::default(),
        };
        match start {
            Start::Empty => device.forget_pool_pages().map_err(|e| OpenError::Backing(e.to_string()))?,
            Start::Resume => {
                device.rebuild_map().map_err(|e| OpenError::Backing(format!("backing file {path}: {e}")))?
            }
        }
        Ok(device)
    }

    /// Invalidates whatever the pool holds at the device's offsets (a new device reads zeros).
    fn forget_pool_pages(&self) -> Result<(), OpError> {
        if self.pool.curr_pages() == 0 {
            return Ok(());
        }
        for p in 0..self.pages {
            self.pool.invalidate_page(p)?;
        }
        Ok(())
    }

    /// Rebuilds the map after a restart: the pool's pages first (a store the pool accepted is
    /// newer than any backing copy, which is cleared unless the pool is writethrough), then
    /// the backing file's allocated pages.
    fn rebuild_map(&self) -> std::io::Result<()> {
        let writethrough = self.pool.modes().writethrough;
        let mut in_backing = vec![false; self.pages as usize];
        for (first, count) in self.locations.backing().allocated(self.pages)? {
            for p in first..(first + count).min(self.pages) {
                in_backing[p as usize] = true;
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
                (false, true) => slot.relocate(Location::Backing),
                (false, false) => {}
            }
        }
        Ok(())
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
        match slot.location() {
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
                Ok(LoadOutcome::Absent) => match slot.pool_lost(Location::Lost) {
                    // A writethrough page the pool reclaimed: the backing copy is the page.
                    Location::Backing => self.read_backing(&slot, page),
                    _ => Err(self.io_error(format!(
                        "page {p} is no longer in pool '{}' (invalidated behind the device's back)",
                        self.pool.name()
                    ))),
                },
                Err(e @ OpError::NotDurable { .. }) => {
                    // The pool let go of the page (its buffer holds it) but could not make
                    // that durable: the device still keeps the page, and the read fails.
                    if slot.pool_let_go() != Location::Backing {
                        let _ = slot.write_backing(page, Location::Backing, Location::Lost);
                    }
                    Err(self.io_error(e.to_string()))
                }
                Err(e) => Err(self.io_error(e.to_string())),
            },
        }
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
        slot.place(result, page, Location::Lost).map(drop).map_err(|e| {
            self.io_error(format!("page {p} could not be written to the backing file ({result:?} by the pool): {e}"))
        })
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
            let dropped = if slot.location().in_pool() { self.pool.invalidate_page(p).map(drop) } else { Ok(()) };
            // Gone from the pool's map either way; a removal that is not durable fails the
            // request (the pool has disabled its stores).
            slot.relocate(to);
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
            && disk.durability() != Durability::Sync
        {
            disk.flush().map_err(|e| self.io_error(e.to_string()))?;
        }
        self.locations.backing().sync_data().map_err(|e| self.io_error(format!("fdatasync of the backing file: {e}")))
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

    /// Takes the pool's pages at `offsets` into the backing file (the pool's shrink): each is
    /// taken out of the pool (load and invalidate in one step) and written to the file.
    /// Offsets beyond the device, or not in the pool, are skipped. Returns how many moved.
    pub fn take_back(&self, offsets: &[u64]) -> u64 {
        let mut page = vec![0u8; self.page_size];
        let mut taken = 0;
        for &p in offsets.iter().filter(|&&p| p < self.pages) {
            let mut slot = self.locations.lock(p);
            match slot.location() {
                Location::PoolAndBacking => {
                    match self.pool.invalidate_page(p) {
                        Ok(true) => taken += 1,
                        Ok(false) => {}
                        Err(e) => {
                            let _ = self.io_error(e.to_string());
                        }
                    }
                    slot.relocate(Location::Backing);
                }
                Location::Pool => match self.pool.take(p, &mut page) {
                    Ok(LoadOutcome::Loaded { .. }) => {
                        match slot.write_backing(&page, Location::Backing, Location::Pool) {
                            Ok(()) => taken += 1,
                            Err(e) => {
                                // Give the page back to the pool rather than lose it.
                                let back = self.pool.store(p, &page);
                                if !matches!(back, Ok(StoreOutcome::Stored | StoreOutcome::StoredWritethrough)) {
                                    slot.relocate(Location::Lost);
                                }
                                let _ = self.io_error(format!("taking page {p} back into the backing file: {e}"));
                            }
                        }
                    }
                    Ok(LoadOutcome::Absent) => slot.relocate(Location::Lost),
                    Err(e @ OpError::NotDurable { .. }) => {
                        // Out of the pool's map (the page is in `page`), not durably: the
                        // device keeps it all the same.
                        let _ = slot.write_backing(&page, Location::Backing, Location::Lost);
                        let _ = self.io_error(e.to_string());
                    }
                    Err(e) => {
                        let _ = self.io_error(e.to_string());
                    }
                },
                _ => {}
            }
        }
        bump(&self.counters.taken_back, taken);
        taken
    }

    /// Swapoff for the device: every page it has in the pool is invalidated (the backing file
    /// is left as it is; it is the user's file).
    pub fn release(&self) {
        for p in 0..self.pages {
            let mut slot = self.locations.lock(p);
            if slot.location().in_pool()
                && let Err(e) = self.pool.invalidate_page(p)
            {
                let _ = self.io_error(e.to_string());
            }
            slot.relocate(Location::Nowhere);
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
