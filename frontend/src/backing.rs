//! [`BackingFile`]: a frontend's own device for the pages a pool refuses — frontswap's swap
//! device. Page `p` lives at byte `p * page_size`. It comes in two kinds:
//!
//! - **Reserved** ([`BackingFile::open`], the host's block devices — a device the kernel may
//!   swap to): like a swap file, the whole file is allocated *and written* (zeros) when the
//!   device is attached, then read and written with `O_DIRECT`. The path may also name a block
//!   device (a partition, as zram's `backing_dev`), claimed exclusively (`O_EXCL`): the most
//!   robust choice for a machine's swap, because a small `O_DIRECT` write to a raw block
//!   device allocates nothing at all (its bio lives on the stack), while a file's goes through
//!   the file system's bio pool, which the kernel's own swap-out shares. A page write then takes no
//!   page cache and changes no file-system metadata (no block allocation, no unwritten-extent
//!   conversion, no journal transaction): under global memory pressure a buffered write
//!   allocated page cache in direct reclaim that could only make progress through the very
//!   device being served (issue 14's livelock). A page that leaves the file is overwritten
//!   with zeros rather than punched (a punch is a journal transaction), and only when the
//!   file may hold bytes for it (one bit per page); after a restart, the pages holding
//!   nonzero bytes are found by reading the file once. Timestamps: mount the file system with
//!   `lazytime`, or an `mtime` update can still wait for the journal.
//! - **Sparse** ([`BackingFile::temporary`], the userfaultfd region; and a named file where
//!   `O_DIRECT` is not supported): buffered I/O, and a page that leaves the file is punched
//!   out, so its allocated ranges are exactly the pages it holds.
//!
//! Both answer [`BackingFile::allocated`] — the pages that may hold data — so the block device
//! rebuilds its map the same way from either.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// `O_DIRECT` buffers, offsets and lengths are aligned to this (the largest logical block
/// size in use; a page size below it keeps a file sparse and buffered).
const DIRECT_ALIGN: usize = 4096;

/// The unit in which a reserved file is written with zeros or scanned at open.
const FILL_CHUNK: usize = 1 << 20;

/// Bounce buffers made ahead for callers whose page is not [`DIRECT_ALIGN`]-aligned (an NBD
/// request's payload): one per concurrent I/O thread is all that is ever taken.
const BOUNCE_BUFFERS: usize = 8;

/// A file of pages (see the module docs for its two kinds).
#[derive(Debug)]
pub struct BackingFile {
    file: File,
    page_size: u64,
    direct: Option<Direct>,
    /// Fault injection for tests ([`BackingFile::fail_syncs_for_testing`]): every
    /// [`BackingFile::sync_data`] fails while set. Never set otherwise.
    fail_syncs: std::sync::atomic::AtomicBool,
}

/// A reserved file's `O_DIRECT` side.
#[derive(Debug)]
struct Direct {
    file: File,
    /// Bit `p`: the file may hold nonzero bytes for page `p` (it was written and not zeroed
    /// since).
    written: Box<[AtomicU64]>,
    /// One page of zeros, aligned: what a page that leaves the file is overwritten with.
    zeros: AlignedBuf,
    /// Aligned pages for unaligned callers, taken and put back.
    bounce: Mutex<Vec<AlignedBuf>>,
}

impl BackingFile {
    /// An unlinked read-write sparse file in `dir` (`O_TMPFILE`, or a unique name unlinked at
    /// once where the file system has no `O_TMPFILE`): nothing is left behind when it is
    /// closed.
    pub fn temporary(dir: &Path, page_size: usize) -> io::Result<BackingFile> {
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("creating the backing file in {}: {e}", dir.display()));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
        {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let name =
                    dir.join(format!(".tmem-region-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&name)
                    .map_err(context)?;
                std::fs::remove_file(&name).map_err(context)?;
                file
            }
            Err(e) => return Err(context(e)),
        };
        Ok(BackingFile { file, page_size: page_size as u64, direct: None, fail_syncs: Default::default() })
    }

    /// Opens (creating it, mode 0600, if missing) the file at `path` for a device of `len`
    /// bytes, takes an exclusive lock on it (`flock`: a file another device or process holds
    /// is refused with `WouldBlock`), and makes it a reserved file of `len` bytes: allocated
    /// (`fallocate`; a disk without room for it is refused here, `StorageFull`, not at the
    /// first page that needs it) and written through. With `keep` false every byte is zeroed
    /// (a new device reads zeros); with `keep` true the pages already in it stay, and the file
    /// is read once to learn which hold data. Where the file system has no `O_DIRECT` (or the
    /// page size is below its alignment) the file is sparse and buffered instead, with a
    /// warning.
    pub fn open(path: &Path, len: u64, page_size: usize, keep: bool) -> io::Result<BackingFile> {
        if std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type())) {
            return BackingFile::open_block_device(path, len, page_size, keep);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another device or process", path.display()),
                )
            } else {
                e
            });
        }
        let mut backing =
            BackingFile { file, page_size: page_size as u64, direct: None, fail_syncs: Default::default() };
        let direct = if page_size.is_multiple_of(DIRECT_ALIGN) {
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(path)
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        };
        match direct {
            Ok(direct) => {
                backing.reserve(direct, len, keep)?;
                return Ok(backing);
            }
            Err(e) => tracing::warn!(
                "backing file {}: no O_DIRECT here ({e}); the file stays sparse and buffered, and writing a page \
                 to it may allocate page cache under memory pressure",
                path.display()
            ),
        }
        let old_len = backing.file.metadata()?.len();
        if !keep && old_len > 0 {
            backing.punch_bytes(0, old_len)?;
        }
        backing.file.set_len(len)?;
        Ok(backing)
    }

    /// A block device as the backing (see the module docs): claimed with `O_EXCL` (a mounted
    /// or otherwise claimed device is refused, `WouldBlock`), at least `len` bytes long, its
    /// first `len` bytes used as a reserved file's.
    fn open_block_device(path: &Path, len: u64, page_size: usize, keep: bool) -> io::Result<BackingFile> {
        if !page_size.is_multiple_of(DIRECT_ALIGN) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a block device as backing needs pages of a multiple of {DIRECT_ALIGN} bytes, not {page_size}"),
            ));
        }
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_EXCL | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is in use (mounted or claimed)", path.display()),
                    )
                } else {
                    e
                }
            })?;
        let size = io::Seek::seek(&mut &direct, io::SeekFrom::End(0))?;
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("block device {} has {size} bytes, the device needs {len}", path.display()),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(path)?;
        let mut backing =
            BackingFile { file, page_size: page_size as u64, direct: None, fail_syncs: Default::default() };
        backing.reserve(direct, len, keep)?;
        Ok(backing)
    }

    /// Makes the file reserved (see [`BackingFile::open`]) over `direct`, its `O_DIRECT`
    /// descriptor.
    fn reserve(&mut self, direct: File, len: u64, keep: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let block_device = std::os::unix::fs::FileTypeExt::is_block_device(&self.file.metadata()?.file_type());
        if !block_device {
            if self.file.metadata()?.len() > len {
                self.file.set_len(len)?;
            }
            // SAFETY: fallocate on our own descriptor; mode 0 allocates (and extends to `len`).
            if unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) } != 0 {
                let e = io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                    io::Error::new(io::ErrorKind::StorageFull, format!("no room for {len} bytes of backing file: {e}"))
                } else {
                    io::Error::new(e.kind(), format!("reserving {len} bytes (fallocate): {e}"))
                });
            }
        }
        let pages = len / self.page_size;
        let mut fill = AlignedBuf::zeroed(FILL_CHUNK);
        // Allocated is not enough: a write into an unwritten extent converts it, a journal
        // transaction. Write zeros wherever the file does not hold written data yet (all of
        // it for a new device; a block device has no holes).
        let to_zero = match (keep, block_device) {
            (false, _) => vec![(0, len)],
            (true, false) => self.holes(len)?,
            (true, true) => Vec::new(),
        };
        for (start, end) in to_zero {
            let mut at = start;
            while at < end {
                let n = (end - at).min(FILL_CHUNK as u64) as usize;
                direct.write_all_at(&fill.as_slice()[..n], at)?;
                at += n as u64;
            }
        }
        let written: Box<[AtomicU64]> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        if keep {
            // Which pages hold data: read the file once.
            let page_size = self.page_size as usize;
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(FILL_CHUNK as u64) as usize;
                direct.read_exact_at(&mut fill.as_mut_slice()[..n], at)?;
                for (i, page) in fill.as_slice()[..n].chunks_exact(page_size).enumerate() {
                    if page.iter().any(|&b| b != 0) {
                        let p = at / self.page_size + i as u64;
                        written[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Relaxed);
                    }
                }
                at += n as u64;
            }
        }
        // The allocation and the conversions are made durable now, not by the first fsync
        // under pressure.
        direct.sync_all()?;
        let page_size = self.page_size as usize;
        self.direct = Some(Direct {
            file: direct,
            written,
            zeros: AlignedBuf::zeroed(page_size),
            bounce: Mutex::new((0..BOUNCE_BUFFERS).map(|_| AlignedBuf::zeroed(page_size)).collect()),
        });
        Ok(())
    }

    /// The byte ranges of the first `len` bytes that are holes (`SEEK_HOLE`/`SEEK_DATA`; an
    /// unwritten extent reads as a hole on ext4 and xfs).
    fn holes(&self, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let data = self.data_ranges(len)?;
        let mut holes = Vec::new();
        let mut at = 0;
        for (start, end) in data {
            if start > at {
                holes.push((at, start));
            }
            at = end;
        }
        if at < len {
            holes.push((at, len));
        }
        Ok(holes)
    }

    /// The byte ranges of the first `len` bytes that hold data, found with
    /// `SEEK_DATA`/`SEEK_HOLE`.
    fn data_ranges(&self, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let fd = self.file.as_raw_fd();
        let mut ranges = Vec::new();
        let mut at = 0u64;
        while at < len {
            // SAFETY: lseek on our own descriptor.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(e);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let (data, hole) = (data as u64, (hole as u64).min(len));
            if data >= len {
                break;
            }
            ranges.push((data, hole));
            at = hole.max(data + 1);
        }
        Ok(ranges)
    }

    /// Whether the file is reserved (written with `O_DIRECT`; see the module docs).
    pub fn is_reserved(&self) -> bool {
        self.direct.is_some()
    }

    /// Reads page `p` into `buf` (one page long).
    pub fn read_page(&self, p: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = p * self.page_size;
        let Some(direct) = &self.direct else {
            return self.file.read_exact_at(buf, at);
        };
        if is_aligned(buf) {
            return direct.file.read_exact_at(buf, at);
        }
        let mut bounce = direct.take_bounce(buf.len());
        let read = direct.file.read_exact_at(bounce.as_mut_slice(), at);
        if read.is_ok() {
            buf.copy_from_slice(bounce.as_slice());
        }
        direct.bounce.lock().push(bounce);
        read
    }

    /// Writes page `p` (`bytes` is one page long).
    pub fn write_page(&self, p: u64, bytes: &[u8]) -> io::Result<()> {
        let at = p * self.page_size;
        let Some(direct) = &self.direct else {
            return self.file.write_all_at(bytes, at);
        };
        // Marked first: a write that fails halfway may still have changed the file.
        direct.mark(p, true);
        if is_aligned(bytes) {
            return direct.file.write_all_at(bytes, at);
        }
        let mut bounce = direct.take_bounce(bytes.len());
        bounce.as_mut_slice().copy_from_slice(bytes);
        let written = direct.file.write_all_at(bounce.as_slice(), at);
        direct.bounce.lock().push(bounce);
        written
    }

    /// Takes `count` pages from page `p` out of the file: they read as zeros after. A sparse
    /// file punches them (they take no space); a reserved one overwrites with zeros each of
    /// them it may hold data for.
    pub fn punch(&self, p: u64, count: u64) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return self.punch_bytes(p * self.page_size, count * self.page_size);
        };
        for page in p..p + count {
            if direct.is_marked(page) {
                direct.file.write_all_at(direct.zeros.as_slice(), page * self.page_size)?;
                direct.mark(page, false);
            }
        }
        Ok(())
    }

    fn punch_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own descriptor.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn sync_data(&self) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::Relaxed) {
            return Err(io::Error::other("injected fdatasync failure (test)"));
        }
        match &self.direct {
            Some(direct) => direct.file.sync_data(),
            None => self.file.sync_data(),
        }
    }

    /// **Test-only** fault injection: while `fail` is set, [`BackingFile::sync_data`] fails
    /// as a failing disk's `fdatasync` would (for tests of what is made durable in which
    /// order; nothing else sets it).
    #[doc(hidden)]
    pub fn fail_syncs_for_testing(&self, fail: bool) {
        self.fail_syncs.store(fail, Ordering::Relaxed);
    }

    /// The pages of the first `pages` that may hold data, as `(first, count)` runs: the
    /// allocated ranges of a sparse file, the written pages of a reserved one.
    pub fn allocated(&self, pages: u64) -> io::Result<Vec<(u64, u64)>> {
        if let Some(direct) = &self.direct {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for p in (0..pages).filter(|&p| direct.is_marked(p)) {
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == p => *count += 1,
                    _ => runs.push((p, 1)),
                }
            }
            return Ok(runs);
        }
        let runs = self.data_ranges(pages * self.page_size)?;
        Ok(runs
            .into_iter()
            .map(|(data, hole)| {
                let first = data / self.page_size;
                (first, hole.div_ceil(self.page_size) - first)
            })
            .collect())
    }
}

impl Direct {
    fn is_marked(&self, p: u64) -> bool {
        self.written.get((p / 64) as usize).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    fn mark(&self, p: u64, written: bool) {
        if let Some(word) = self.written.get((p / 64) as usize) {
            if written {
                word.fetch_or(1 << (p % 64), Ordering::Relaxed);
            } else {
                word.fetch_and(!(1 << (p % 64)), Ordering::Relaxed);
            }
        }
    }

    /// An aligned page for an unaligned caller: one made ahead, or (more concurrent callers
    /// than [`BOUNCE_BUFFERS`]) a new one that joins them when put back.
    fn take_bounce(&self, len: usize) -> AlignedBuf {
        let bounce = self.bounce.lock().pop();
        bounce.filter(|b| b.len == len).unwrap_or_else(|| AlignedBuf::zeroed(len))
    }
}

fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && bytes.len().is_multiple_of(DIRECT_ALIGN)
}

/// Heap bytes aligned for `O_DIRECT`, zeroed and touched when made (so using them later takes
/// no page fault).
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an owned heap allocation, like a `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`as_slice`).
unsafe impl Sync for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN).expect("a page-sized layout")
    }

    fn zeroed(len: usize) -> AlignedBuf {
        let layout = AlignedBuf::layout(len);
        // SAFETY: a nonzero-sized layout.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut buf = AlignedBuf { ptr, len };
        // Touch every page now (a fresh zeroed allocation may be untouched mapped memory).
        for page in buf.as_mut_slice().chunks_mut(DIRECT_ALIGN) {
            // SAFETY: a byte of our own allocation.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
        }
        buf
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialized bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), AlignedBuf::layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("tmem-backing-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn allocated_bytes(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
    }

    #[test]
    fn pages_round_trip_and_punched_pages_leave_the_allocated_runs() {
        let path = path("round-trip");
        let file = BackingFile::open(&path, 64 * 4096, 4096, false).unwrap();
        assert!(file.is_reserved(), "this test's file system ({}) has O_DIRECT", path.display());
        assert!(BackingFile::open(&path, 64 * 4096, 4096, false).unwrap_err().kind() == io::ErrorKind::WouldBlock);
        // Reserved like a swap file: every block allocated before the first page is written.
        assert!(allocated_bytes(&path) >= 64 * 4096, "{} bytes allocated", allocated_bytes(&path));
        assert!(file.allocated(64).unwrap().is_empty(), "a new device holds nothing");
        for p in [3u64, 4, 5, 40] {
            file.write_page(p, &[p as u8; 4096]).unwrap();
        }
        let mut buf = vec![0u8; 4096];
        file.read_page(40, &mut buf).unwrap();
        assert_eq!(buf, vec![40u8; 4096]);
        file.punch(4, 1).unwrap();
        file.read_page(4, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
        assert_eq!(file.allocated(64).unwrap(), [(3, 1), (5, 1), (40, 1)]);
        drop(file);

        // A restart keeps the pages and finds them by reading the file.
        let kept = BackingFile::open(&path, 64 * 4096, 4096, true).unwrap();
        assert_eq!(kept.allocated(64).unwrap(), [(3, 1), (5, 1), (40, 1)]);
        kept.read_page(5, &mut buf).unwrap();
        assert_eq!(buf, vec![5u8; 4096]);
        drop(kept);
        let reopened = BackingFile::open(&path, 64 * 4096, 4096, false).unwrap();
        assert!(reopened.allocated(64).unwrap().is_empty(), "a new device starts with no data");
        reopened.read_page(40, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096], "a new device reads zeros");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unaligned_pages_go_through_bounce_buffers() {
        let path = path("unaligned");
        let file = BackingFile::open(&path, 16 * 4096, 4096, false).unwrap();
        // One byte in: never 4096-aligned.
        let mut bytes = vec![0u8; 4097];
        bytes[1..].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        file.write_page(7, &bytes[1..]).unwrap();
        let mut back = vec![0u8; 4097];
        file.read_page(7, &mut back[1..]).unwrap();
        assert_eq!(back[1..], bytes[1..]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_resumed_sparse_file_is_filled_and_keeps_its_pages() {
        // A file from a sparse backing (or an older tmem): holes are written with zeros, the
        // data stays, and a page reads back as it was.
        let path = path("legacy");
        {
            let file = std::fs::File::create(&path).unwrap();
            file.set_len(32 * 4096).unwrap();
            file.write_all_at(&[9u8; 4096], 10 * 4096).unwrap();
        }
        assert!(allocated_bytes(&path) < 32 * 4096);
        let file = BackingFile::open(&path, 32 * 4096, 4096, true).unwrap();
        assert!(allocated_bytes(&path) >= 32 * 4096);
        assert_eq!(file.allocated(32).unwrap(), [(10, 1)]);
        let mut buf = vec![0u8; 4096];
        file.read_page(10, &mut buf).unwrap();
        assert_eq!(buf, vec![9u8; 4096]);
        std::fs::remove_file(&path).unwrap();
    }

    /// A loop device over a file (root and `losetup` needed: CI runs as root), detached and
    /// removed on drop.
    struct LoopDevice {
        device: String,
        image: std::path::PathBuf,
    }

    impl LoopDevice {
        fn new(name: &str, len: u64) -> Option<LoopDevice> {
            let image = path(name);
            std::fs::File::create(&image).unwrap().set_len(len).unwrap();
            let out = std::process::Command::new("losetup").args(["--find", "--show"]).arg(&image).output().ok()?;
            if !out.status.success() {
                eprintln!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
                return None;
            }
            Some(LoopDevice { device: String::from_utf8(out.stdout).unwrap().trim().to_string(), image })
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").arg("-d").arg(&self.device).status();
            let _ = std::fs::remove_file(&self.image);
        }
    }

    #[test]
    fn a_block_device_backs_pages_claimed_exclusively() {
        let is_root = unsafe { libc::geteuid() } == 0;
        let Some(dev) = LoopDevice::new("loop", 1 << 20) else {
            assert!(!is_root, "root could not set up a loop device");
            eprintln!("skipped: no loop device without root");
            return;
        };
        let path = Path::new(&dev.device);
        assert!(BackingFile::open(path, 2 << 20, 4096, false).unwrap_err().kind() == io::ErrorKind::StorageFull);
        let file = BackingFile::open(path, 64 * 4096, 4096, false).unwrap();
        assert!(file.is_reserved());
        assert_eq!(BackingFile::open(path, 64 * 4096, 4096, false).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        file.write_page(9, &[7u8; 4096]).unwrap();
        file.write_page(11, &[8u8; 4096]).unwrap();
        file.punch(11, 1).unwrap();
        drop(file);
        let kept = BackingFile::open(path, 64 * 4096, 4096, true).unwrap();
        assert_eq!(kept.allocated(64).unwrap(), [(9, 1)]);
        let mut buf = vec![0u8; 4096];
        kept.read_page(9, &mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 4096]);
        drop(kept);
        let fresh = BackingFile::open(path, 64 * 4096, 4096, false).unwrap();
        fresh.read_page(9, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096], "a new device on the same disk reads zeros");
    }

    #[test]
    fn a_temporary_file_is_sparse_and_punched() {
        let dir = std::env::temp_dir();
        let file = BackingFile::temporary(&dir, 4096).unwrap();
        assert!(!file.is_reserved());
        for p in [3u64, 4, 5, 40] {
            file.write_page(p, &[p as u8; 4096]).unwrap();
        }
        file.punch(4, 1).unwrap();
        let mut buf = vec![0u8; 4096];
        file.read_page(4, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
        // tmpfs and ext4 report page-granular holes; some file systems round up, never down.
        let runs = file.allocated(64).unwrap();
        for p in [3u64, 5, 40] {
            assert!(runs.iter().any(|&(f, n)| (f..f + n).contains(&p)), "page {p} in {runs:?}");
        }
        assert!(!runs.iter().any(|&(f, n)| (f..f + n).contains(&4)), "page 4 punched: {runs:?}");
    }
}
