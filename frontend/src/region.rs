//! [`Region`]: an anonymous memory region under userfaultfd whose cold pages live in a pool —
//! frontswap for one mapping of one process.
//!
//! The application gets a pointer to `len` bytes of ordinary anonymous private memory. At most
//! `resident_limit` of its pages are in RAM; the others are in the pool behind a
//! [`PageBackend`] (offset = page index in the region) or, when the pool refuses them, in a
//! backing file the region owns (frontswap's swap device). Pages come back on first touch,
//! through userfaultfd.
//!
//! # Threads
//!
//! - The **reader** polls the userfaultfd and moves every message (page faults, `REMOVE`
//!   events) into an in-memory inbox, under the inbox lock.
//! - The **handler** does all the work, one message at a time: it resolves faults (zero-fill,
//!   load, `UFFDIO_COPY`), tracks dirty pages, evicts, applies `REMOVE` events and the pages the
//!   host hands back ([`Region::take_back`]). It owns the page table, the backend and the file,
//!   so the order of operations on one page is simply program order.
//!
//! Why two threads: the handler evicts with `madvise(MADV_DONTNEED)`, and on a range
//! registered with `UFFD_FEATURE_EVENT_REMOVE` that call *blocks until someone reads the
//! `REMOVE` event it generates*. A handler that also read the uffd would wait for itself. The
//! handler registers each of its own discards in advance and ignores the matching event.
//!
//! # Where a page lives
//!
//! Every page has exactly one authoritative copy: **resident** (and then maybe also a still
//! valid copy elsewhere, if the page is clean), or **nowhere** (never written, or discarded by
//! the application: reads as zeros, no backend call), or in the **pool**, or in the **file**, or
//! in both (a writethrough pool: the file copy is the durable one, the pool may drop its copy
//! at will), or **held** in memory (a handed-back page the file could not take). Moving a page to
//! the pool punches it out of the file; a page written to the file is no longer in the pool
//! (a `Rejected` store already dropped the old copy — the duplicate-store rule); a page the
//! application discards is invalidated in both. A load is served from the page's location
//! only, so a stale copy elsewhere is never read.
//!
//! # Dirty tracking (write-protect)
//!
//! The range is registered in `MISSING` and `WP` mode. A page installed for a read fault is
//! installed write-protected (`UFFDIO_COPY_MODE_WP`, or `UFFDIO_ZEROPAGE` then
//! `UFFDIO_WRITEPROTECT`, since the zero page has no WP mode): it is **clean** — its copy in the
//! pool or file (or "nowhere" for zeros) is still valid. The first write raises a WP fault; the
//! handler marks the page **dirty** and lifts the protection. A page installed for a write
//! fault is dirty from the start. Evicting a clean page is a plain discard, with no store.
//! Write-protect is required: without it an eviction could not keep a concurrent write from
//! landing between the copy-out and the discard, so [`Region::new`] refuses a kernel without it.
//!
//! # Eviction: a clock with write-fault hints
//!
//! Userspace cannot read the accessed bits, so the clock runs over resident pages in the order
//! they were faulted in, with a software "referenced" bit that is set when a page is installed
//! and on every WP fault. The hand gives a referenced page a second chance (clears the bit
//! and moves on); a dirty page getting its second chance is also write-protected again, so
//! its next write faults and marks it referenced once more (a write sample that costs one
//! minor fault per clock revolution). Pages that are only read cannot signal use: they survive
//! one revolution after their fault, then go; bringing one back is a load of a clean page
//! (cheap: nothing to store on the next eviction).
//!
//! The handler evicts *before* installing a page when `resident_limit` is reached, in batches
//! (`resident_limit / 8`, 1 to 64 pages): clean victims are discarded; dirty ones are
//! write-protected first (so a write that arrives during the eviction faults and waits for the
//! handler, which is busy evicting: the write is applied after the page comes back), copied
//! out, stored with one [`PageBackend::store_many`] call, then discarded. All-zero dirty pages
//! are not stored at all (they become "nowhere"). `Rejected` pages go to the file at
//! `offset * page_size`; `KeptWritethrough` pages go there too. A page whose store and file
//! write both fail stays resident.
//!
//! # The application's own `MADV_DONTNEED` (and `MADV_FREE`)
//!
//! Arrives as a `REMOVE` event; every page of the range is invalidated (pool and file) and
//! refaults as zeros. The kernel refuses `UFFDIO_COPY`/`ZEROPAGE`/`WRITEPROTECT` with `EAGAIN`
//! while such a call is in flight; the handler then applies any `REMOVE` already read and
//! retries. Installs and copy-outs run under the inbox lock after applying every `REMOVE`
//! read so far: the reader cannot read a new one meanwhile, so a page the application has
//! just discarded is never refilled with its old contents. (`MADV_FREE`d pages the kernel
//! has not reclaimed yet stay mapped but are no longer tracked.)
//!
//! # Other gotchas handled
//!
//! - `UFFDIO_COPY` failing with `EEXIST` (the page is already there: two threads faulted on
//!   it) is followed by `UFFDIO_WAKE`, or the faulting thread would sleep forever. Every fault
//!   message ends in an ioctl that wakes.
//! - The uffd is **not** `UFFD_USER_MODE_ONLY`: kernel accesses to the region (`read(2)` into
//!   it, `write(2)` from it, `O_DIRECT`) fault and are served like the application's own.
//! - Before copying a dirty page out, the handler checks `/proc/self/pagemap` that it is
//!   still mapped (a page the application discarded behind the handler's back would make the
//!   handler fault on its own region and wait for itself).
//! - The mapping is `MADV_NOHUGEPAGE` (pages are tracked one by one) and `MADV_DONTFORK`: a
//!   forked child does not inherit the registration, so it would read evicted pages as zeros;
//!   with `DONTFORK` it has no mapping at all (fork + exec is unaffected).
//! - A page the pool says is absent although the region stored it may be in flight to
//!   [`Region::take_back`] (the host takes pages before handing them back): the handler waits
//!   up to two seconds for it. A load that fails is retried 5 times over about 300 ms. A page
//!   that cannot be produced is **data loss**: counted (`load_failures`), logged as an error,
//!   and the address is poisoned (`UFFDIO_POISON`: SIGBUS on access, `EFAULT` for a kernel
//!   access, until the application discards the page) where the kernel supports it,
//!   zero-filled otherwise.
//!
//! # Prefetch (on unless [`RegionConfig::prefetch`] is off)
//!
//! Every missing fault feeds a majority-trend detector ([`crate::prefetch`], Leap's): the
//! delta (in pages) most of the recent faults moved by. With a trend `d`, the fault at page `p`
//! also brings the pages at `p + d`, `p + 2d`, … up to the prefetch amount (4 at first,
//! doubling while prefetched pages are used, up to 64; halving when fewer than half are) that
//! are not resident and whose copy is in the pool, in the file, or nowhere (zeros; never a
//! held or lost page, nor a pool page when the pool has exclusive gets). Random access has no
//! trend and pays only the detector's O(1) bookkeeping.
//!
//! - **Bounded by the resident limit**: a prefetch is at most half the limit; the handler makes
//!   room for the faulting page and the prefetch before loading, and prefetches fewer (the
//!   nearest first) if eviction freed less.
//! - **One round trip**: the faulting page (when it is in the pool) and the pool's prefetch
//!   pages are one [`PageBackend::load_many`] batch; file pages are read, zeros filled in, all
//!   into a staging buffer allocated with the region (nothing is allocated per fault).
//! - **The faulting thread first**: its page gets its own `UFFDIO_COPY`, which wakes it; it
//!   waits for the shared batch (the one wait it cannot avoid) but not for the prefetched
//!   pages' copies. Those follow, one `UFFDIO_COPY` per run of adjacent pages, under the
//!   inbox lock (a page the application discarded meanwhile is dropped): loaded pages
//!   write-protected (clean); zeros writable (dirty, so a write scan over fresh memory takes
//!   no fault at all; still all zero at eviction, they are dropped without a store). A thread that reaches one of them first faults, is woken by the run's copy,
//!   and is counted `prefetch_late`.
//! - Prefetched pages are ordinary resident pages, but enter the clock unreferenced: one never
//!   used is the first victim (`prefetch_wasted`).
//! - **Use is inferred** (userspace cannot read accessed bits): a prefetched page is used
//!   (`prefetch_hits`, a missing fault avoided) when it is written (its WP fault), or when a
//!   later missing fault lands beyond it along its trend, by 1 to twice the largest prefetch
//!   steps (the access stream went through it). The last pages of a scan that ends there count as unused, so
//!   [`RegionStats::prefetch_coverage`] and [`RegionStats::prefetch_accuracy`] are lower bounds.
//!
//! # What the owner decides
//!
//! The application must not `munmap`, `mremap` or fork-share the region (no `UNMAP`/`REMAP`/
//! `FORK` events are requested); everything else — any thread, any access, `mprotect`,
//! `MADV_DONTNEED` — is fine.
//!
//! Dropping a region stops its threads, closes the uffd and unmaps the memory; it does **not**
//! invalidate its pages in the pool (the owner may want to keep them). Use
//! [`Region::into_backend`] to get the backend back and call
//! [`PageBackend::invalidate_area`] (swapoff) yourself. If the pool has exclusive gets, say so
//! with [`Region::set_exclusive_loads`]: a page loaded from such a pool is no longer there,
//! so the region must treat it as dirty.
//!
//! # Why raw ioctls and not the `userfaultfd` crate
//!
//! The crate's 0.8 API has no `UFFDIO_COPY_MODE_WP` (installing a page write-protected in
//! one atomic step), no `UFFDIO_POISON`, and needs bindgen and libclang at build time. The ABI
//! is small and stable, so it is declared here (`sys`) and driven through `libc`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backing::BackingFile;
use crate::locations::{Location, PageLocations, StoreResult};
use crate::prefetch::{Amount, Trend};
use crate::{PageBackend, Stored};

/// The error text when userfaultfd is not available to this process.
const PERMISSION_HINT: &str = "userfaultfd needs root or access to /dev/userfaultfd (or vm.unprivileged_userfaultfd=1)";

/// How long a fault on a page the pool no longer has waits for it to arrive through
/// [`Region::take_back`].
const TAKE_BACK_WAIT: Duration = Duration::from_secs(2);

/// Fault latency samples kept (the most recent ones).
const LATENCY_SAMPLES: usize = 1 << 16;

/// The most pages one prefetch brings (besides the faulting page).
pub const PREFETCH_MAX: usize = 64;

/// The userfaultfd ABI (include/uapi/linux/userfaultfd.h), as much as the region uses.
mod sys {
    pub const UFFD_API: u64 = 0xAA;

    /// `_IOC(dir, 0xAA, nr, size)` in the generic encoding (x86, arm64, riscv, loongarch).
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
    }
    const IOC_NONE: u64 = 0;
    const IOC_READ: u64 = 2;
    const IOC_READ_WRITE: u64 = 3;

    pub const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, 0x00, 0);
    pub const UFFDIO_API: u64 = ioc(IOC_READ_WRITE, 0x3F, size_of::<UffdioApi>());
    pub const UFFDIO_REGISTER: u64 = ioc(IOC_READ_WRITE, 0x00, size_of::<UffdioRegister>());
    pub const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
    pub const UFFDIO_COPY: u64 = ioc(IOC_READ_WRITE, 0x03, size_of::<UffdioCopy>());
    pub const UFFDIO_ZEROPAGE: u64 = ioc(IOC_READ_WRITE, 0x04, size_of::<UffdioZeropage>());
    pub const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ_WRITE, 0x06, size_of::<UffdioWriteprotect>());
    pub const UFFDIO_POISON: u64 = ioc(IOC_READ_WRITE, 0x08, size_of::<UffdioPoison>());

    /// Bits of `UffdioRegister::ioctls`: which range ioctls the registration allows.
    pub const IOCTL_WAKE: u64 = 1 << 0x02;
    pub const IOCTL_COPY: u64 = 1 << 0x03;
    pub const IOCTL_ZEROPAGE: u64 = 1 << 0x04;
    pub const IOCTL_WRITEPROTECT: u64 = 1 << 0x06;
    pub const IOCTL_POISON: u64 = 1 << 0x08;

    pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
    pub const FEATURE_POISON: u64 = 1 << 14;

    pub const REGISTER_MODE_MISSING: u64 = 1 << 0;
    pub const REGISTER_MODE_WP: u64 = 1 << 1;

    pub const COPY_MODE_WP: u64 = 1 << 1;
    pub const ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
    pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    pub const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

    pub const EVENT_PAGEFAULT: u8 = 0x12;
    pub const EVENT_REMOVE: u8 = 0x15;
    pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

    /// `struct uffd_msg` is 32 bytes: `event: u8`, 7 reserved, then a 24-byte union whose
    /// first two u64 are (`flags`, `address`) for a page fault and (`start`, `end`) for REMOVE.
    pub const MSG_SIZE: usize = 32;

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioCopy {
        pub dst: u64,
        pub src: u64,
        pub len: u64,
        pub mode: u64,
        pub copy: i64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioZeropage {
        pub range: UffdioRange,
        pub mode: u64,
        pub zeropage: i64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioWriteprotect {
        pub range: UffdioRange,
        pub mode: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct UffdioPoison {
        pub range: UffdioRange,
        pub mode: u64,
        pub updated: i64,
    }
}

/// How a [`Region`] is set up.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Bytes of the region: a nonzero multiple of the system page size (which must also be the
    /// pool's page size).
    pub len: usize,
    /// At most this many pages are resident at once (at least 1).
    pub resident_limit: usize,
    /// Where the region's backing file is created (unlinked at once: `O_TMPFILE`, or create
    /// and unlink). Pages the pool refuses live there.
    pub backing_dir: PathBuf,
    /// Prefetch along a sequential or strided fault trend (see the [module docs](self)).
    /// [`RegionConfig::new`] turns it on.
    pub prefetch: bool,
}

impl RegionConfig {
    /// A region of `len` bytes holding at most `resident_limit` pages in RAM, its backing
    /// file in `backing_dir`, with prefetch on.
    pub fn new(len: usize, resident_limit: usize, backing_dir: PathBuf) -> RegionConfig {
        RegionConfig { len, resident_limit, backing_dir, prefetch: true }
    }
}

/// Fault latency, from the moment the reader thread read the fault message to the ioctl that
/// resolved it (copy, zero-fill, unprotect or wake) returning — eviction included when the
/// fault had to make room. Over the most recent 65 536 faults of the kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Faults in the sample.
    pub count: u64,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// Slowest, nanoseconds.
    pub max_ns: u64,
}

/// What a region has done so far ([`Region::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Faults on pages that were not mapped.
    pub missing_faults: u64,
    /// Write faults on write-protected (clean) pages.
    pub wp_faults: u64,
    /// Missing faults served with the zero page, with no backend call.
    pub zero_fills: u64,
    /// Pages loaded from the pool.
    pub pool_loads: u64,
    /// Pages loaded from the backing file.
    pub file_loads: u64,
    /// Pages loaded from memory (handed back while the file could not take them).
    pub held_loads: u64,
    /// Pages offered to the pool.
    pub stores: u64,
    /// `store_many` calls (each carries a batch of evicted pages).
    pub store_calls: u64,
    /// Pages the pool kept (including writethrough).
    pub stored_in_pool: u64,
    /// Pages the pool refused, written to the backing file instead.
    pub rejected_to_file: u64,
    /// Pages the pool kept in writethrough mode, also written to the backing file.
    pub writethrough_to_file: u64,
    /// Pages written to the backing file because the store call failed.
    pub store_errors_to_file: u64,
    /// Pages installed by prefetch (not faulted on); those read from the pool or the file are
    /// also in `pool_loads`/`file_loads` (zeros are in neither).
    pub prefetched_pages: u64,
    /// Prefetched pages the application used before they were evicted: each a missing fault
    /// avoided. "Used" is inferred (userspace cannot read accessed bits): a write to the page,
    /// or a later fault of the same trend beyond it (the access stream went through it).
    pub prefetch_hits: u64,
    /// Prefetched pages the application faulted on anyway, while the prefetch was being
    /// installed (right, but too late to avoid the fault; not in `prefetch_hits`).
    pub prefetch_late: u64,
    /// Prefetched pages evicted or discarded with no sign of use.
    pub prefetch_wasted: u64,
    /// `load_many` calls made to prefetch (one round trip each, the faulting page included).
    pub prefetch_batches: u64,
    /// `UFFDIO_COPY` calls that installed prefetched pages (one per contiguous run).
    pub prefetch_copies: u64,
    /// Clean pages evicted without a store (their copy elsewhere was still valid).
    pub clean_drops: u64,
    /// Dirty all-zero pages evicted without a store (they refault as zero-fills).
    pub zero_drops: u64,
    /// Dirty pages evicted.
    pub dirty_evictions: u64,
    /// Pages the application discarded (`MADV_DONTNEED`/`MADV_FREE`).
    pub app_discarded_pages: u64,
    /// `invalidate` calls made on the backend.
    pub invalidates: u64,
    /// Pages the host handed back that the region kept ([`Region::take_back`]).
    pub take_backs: u64,
    /// Handed-back pages ignored because they were not the region's current copy.
    pub stale_take_backs: u64,
    /// Pages that could not be produced on a fault: data loss (logged as errors).
    pub load_failures: u64,
    /// Backend or file errors (each logged).
    pub io_errors: u64,
    /// Pages resident now.
    pub resident_pages: u64,
    /// Pages whose copy is in the pool now (including writethrough pages).
    pub pool_pages: u64,
    /// Pages whose copy is in the backing file now (including writethrough pages).
    pub file_pages: u64,
    /// Missing-fault latency.
    pub missing_fault_latency: LatencySummary,
    /// Write-protect-fault latency.
    pub wp_fault_latency: LatencySummary,
}

impl RegionStats {
    /// Prefetch coverage: the share of the missing faults the workload would have taken that
    /// prefetch avoided, `prefetch_hits / (missing_faults + prefetch_hits)` (0 with no faults).
    pub fn prefetch_coverage(&self) -> f64 {
        let total = self.missing_faults + self.prefetch_hits;
        if total == 0 { 0.0 } else { self.prefetch_hits as f64 / total as f64 }
    }

    /// Prefetch accuracy: the share of prefetched pages that were used,
    /// `prefetch_hits / prefetched_pages` (0 when nothing was prefetched).
    pub fn prefetch_accuracy(&self) -> f64 {
        if self.prefetched_pages == 0 { 0.0 } else { self.prefetch_hits as f64 / self.prefetched_pages as f64 }
    }
}

/// An anonymous memory region whose cold pages live in a pool (see the [module docs](self)).
pub struct Region {
    base: usize,
    len: usize,
    page_size: usize,
    shared: Arc<Shared>,
    stop_fd: OwnedFd,
    reader: Option<JoinHandle<()>>,
    handler: Option<JoinHandle<Box<dyn PageBackend>>>,
    uffd: Option<OwnedFd>,
    mapping: Option<Mapping>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &(self.base as *const u8))
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// Maps the region, registers it with userfaultfd, creates the backing file and starts
    /// the fault-handling threads.
    ///
    /// Errors: a bad config (`InvalidInput`), a backend page size that is not the system's,
    /// no permission to use userfaultfd (`PermissionDenied`, naming what is missing), a kernel
    /// without write-protect or `REMOVE` events (`Unsupported`), or a backing directory that
    /// cannot hold a file.
    pub fn new(backend: Box<dyn PageBackend>, config: RegionConfig) -> io::Result<Region> {
        let page_size = system_page_size();
        if config.len == 0 || !config.len.is_multiple_of(page_size) {
            return Err(invalid_input(format!(
                "region length {} is not a nonzero multiple of the page size {page_size}",
                config.len
            )));
        }
        let pages = config.len / page_size;
        if pages > u32::MAX as usize {
            return Err(invalid_input(format!("region of {pages} pages is too large")));
        }
        if config.resident_limit == 0 {
            return Err(invalid_input("resident_limit must be at least 1".to_string()));
        }
        if backend.page_size() != page_size {
            return Err(invalid_input(format!(
                "the pool's page size {} is not the system page size {page_size}",
                backend.page_size()
            )));
        }

        let (uffd, poison_feature) = open_configured_uffd()?;
        let mapping = Mapping::new(config.len)?;
        let base = mapping.ptr as usize;
        // Best effort: tracking is per 4 KiB page, and a forked child must not see a mapping
        // that is no longer registered (it would read evicted pages as zeros).
        // SAFETY: madvise on our own fresh mapping; these advices change no contents.
        unsafe {
            libc::madvise(mapping.ptr, config.len, libc::MADV_NOHUGEPAGE);
            libc::madvise(mapping.ptr, config.len, libc::MADV_DONTFORK);
        }
        let mut register = sys::UffdioRegister {
            range: sys::UffdioRange { start: base as u64, len: config.len as u64 },
            mode: sys::REGISTER_MODE_MISSING | sys::REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, which `register` is.
        unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_REGISTER, &mut register) }.map_err(|e| {
            io::Error::new(e.kind(), format!("registering the region with userfaultfd (missing + write-protect): {e}"))
        })?;
        let needed = sys::IOCTL_WAKE | sys::IOCTL_COPY | sys::IOCTL_ZEROPAGE | sys::IOCTL_WRITEPROTECT;
        if register.ioctls & needed != needed {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "userfaultfd on this kernel lacks copy/zeropage/writeprotect for anonymous memory (ioctls {:#x})",
                    register.ioctls
                ),
            ));
        }
        let poison = poison_feature && register.ioctls & sys::IOCTL_POISON != 0;

        let file = BackingFile::temporary(&config.backing_dir, page_size)?;
        let pagemap = File::open("/proc/self/pagemap").ok();
        // SAFETY: eventfd returns a new descriptor or -1; nothing else is passed.
        let stop_raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop_raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `stop_raw` is a fresh descriptor that nothing else owns.
        let stop_fd = unsafe { OwnedFd::from_raw_fd(stop_raw) };

        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            stats: Mutex::new(SharedStats::default()),
            exclusive_loads: AtomicBool::new(false),
        });
        let handler = Handler {
            uffd: uffd.as_raw_fd(),
            base,
            page_size,
            limit: config.resident_limit,
            batch: (config.resident_limit / 8).clamp(1, 64),
            pages: vec![Page::default(); pages],
            clock: VecDeque::new(),
            resident: 0,
            held: HashMap::new(),
            self_discards: HashMap::new(),
            pending_invalidates: Vec::new(),
            backend,
            locations: PageLocations::new(pages as u64, file),
            pagemap,
            poison,
            shared: Arc::clone(&shared),
            stats: RegionStats::default(),
            buf: vec![0; page_size],
            prefetch: Prefetch::new(config.prefetch, config.resident_limit, page_size),
        };
        let reader = {
            let shared = Arc::clone(&shared);
            let (uffd, stop) = (uffd.as_raw_fd(), stop_fd.as_raw_fd());
            std::thread::Builder::new()
                .name("tmem-uffd-reader".into())
                .spawn(move || run_reader(uffd, stop, &shared))?
        };
        let mut region = Region {
            base,
            len: config.len,
            page_size,
            shared,
            stop_fd,
            reader: Some(reader),
            handler: None,
            uffd: Some(uffd),
            mapping: Some(mapping),
        };
        // On a spawn failure, `region`'s Drop stops the reader and unmaps.
        region.handler =
            Some(std::thread::Builder::new().name("tmem-uffd-handler".into()).spawn(move || handler.run())?);
        Ok(region)
    }

    /// The first byte of the region (page aligned). Valid until the region is dropped; any
    /// access from any thread (or from the kernel, e.g. `read(2)` into it) is served.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }

    /// Bytes in the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a region has at least one page); for symmetry with [`Region::len`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Copies `buf.len()` bytes at `offset` out of the region, from the calling thread (so it
    /// faults like the application would). Concurrent writers of the same bytes make the
    /// result a mix of old and new bytes, never undefined behaviour.
    ///
    /// # Panics
    /// If the range is not inside the region.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check_range(offset, buf.len());
        // SAFETY: the range is inside the live mapping (checked), which stays mapped while
        // `self` is borrowed.
        unsafe { copy_from_region((self.base + offset) as *const u8, buf) }
    }

    /// Copies `data` into the region at `offset`, from the calling thread.
    ///
    /// # Panics
    /// If the range is not inside the region.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check_range(offset, data.len());
        // SAFETY: as in `read`.
        unsafe { copy_into_region(data, (self.base + offset) as *mut u8) }
    }

    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}+{len} is outside the region of {} bytes",
            self.len
        );
    }

    /// The host shrank the pool and handed back the page at `offset` (a page index). The
    /// region keeps it — in its backing file, or in memory if the file cannot take it — if it
    /// is the copy the region last stored there; a page that is not (the region has stored a
    /// newer version since, or discarded it) is ignored and counted (`stale_take_backs`).
    ///
    /// The region recognizes its own copy by a 64-bit hash of the bytes it stored.
    ///
    /// Never waits for the fault handler or the backend: the page is queued and applied by the
    /// handler before any later fault, so this is safe to call from a transport's own thread
    /// while the handler is in the middle of a store.
    pub fn take_back(&self, offset: u64, page: &[u8]) -> io::Result<()> {
        if page.len() != self.page_size {
            return Err(invalid_input(format!(
                "a handed-back page of {} bytes (page size {})",
                page.len(),
                self.page_size
            )));
        }
        if offset >= (self.len / self.page_size) as u64 {
            return Err(invalid_input(format!("offset {offset} is outside the region")));
        }
        lock(&self.shared.inbox).take_backs.push((offset, page.to_vec()));
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Whether the pool has exclusive gets (a load removes the page from the pool): a page
    /// loaded from such a pool is treated as dirty. Off by default.
    pub fn set_exclusive_loads(&self, exclusive: bool) {
        self.shared.exclusive_loads.store(exclusive, Ordering::Relaxed);
    }

    /// Counters and fault latencies so far (published by the handler after each message, so
    /// a fault that has just been resolved may not be counted yet).
    pub fn stats(&self) -> RegionStats {
        let stats = lock(&self.shared.stats);
        let mut out = stats.counters.clone();
        out.missing_fault_latency = stats.missing.summary();
        out.wp_fault_latency = stats.wp.summary();
        out
    }

    /// Stops the region (as dropping it does) and returns its backend, so the owner can
    /// invalidate the region's pages in the pool ([`PageBackend::invalidate_area`]) or keep
    /// them. Fails only if the fault handler panicked (the backend went with it).
    pub fn into_backend(mut self) -> io::Result<Box<dyn PageBackend>> {
        self.shutdown().ok_or_else(|| io::Error::other("the region's fault handler panicked"))
    }

    fn shutdown(&mut self) -> Option<Box<dyn PageBackend>> {
        lock(&self.shared.inbox).stop = true;
        self.shared.wake.notify_all();
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let backend = self.handler.take().and_then(|h| h.join().ok());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // Closing the uffd releases any thread still waiting on a fault (only possible through
        // raw pointers used after the owner started dropping the region), then unmap.
        self.uffd.take();
        self.mapping.take();
        backend
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The anonymous mapping; unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by the region; the pointer is only an address.
unsafe impl Send for Mapping {}
// SAFETY: as above; every access goes through atomics or the kernel.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created; the threads that used it
        // have been joined.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// State shared by the region, the reader and the handler.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Signalled when the inbox gets something.
    wake: Condvar,
    stats: Mutex<SharedStats>,
    exclusive_loads: AtomicBool,
}

/// Messages read from the uffd, not handled yet, and handed-back pages not applied yet.
/// The reader reads the uffd *while holding this lock*, so a REMOVE event read by the kernel
/// is in here before anyone else can take the lock.
#[derive(Default)]
struct Inbox {
    events: VecDeque<Event>,
    /// How many of `events` are REMOVEs.
    removes: usize,
    take_backs: Vec<(u64, Vec<u8>)>,
    stop: bool,
}

enum Event {
    Fault { addr: u64, write: bool, wp: bool, at: Instant },
    Remove { start: u64, end: u64 },
}

#[derive(Default)]
struct SharedStats {
    counters: RegionStats,
    missing: Samples,
    wp: Samples,
}

#[derive(Default)]
struct Samples {
    ring: Vec<u64>,
    next: usize,
}

impl Samples {
    fn push(&mut self, ns: u64) {
        if self.ring.len() < LATENCY_SAMPLES {
            self.ring.push(ns);
        } else {
            self.ring[self.next] = ns;
            self.next = (self.next + 1) % LATENCY_SAMPLES;
        }
    }

    fn summary(&self) -> LatencySummary {
        if self.ring.is_empty() {
            return LatencySummary::default();
        }
        let mut sorted = self.ring.clone();
        sorted.sort_unstable();
        let at = |q: usize| sorted[(sorted.len() - 1) * q / 100];
        LatencySummary { count: sorted.len() as u64, p50_ns: at(50), p99_ns: at(99), max_ns: sorted[sorted.len() - 1] }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, Default)]
struct Page {
    resident: bool,
    /// Resident and different from its copy at `loc`.
    dirty: bool,
    /// Resident and write-protected (always true for a clean resident page).
    wp: bool,
    /// The clock's second-chance bit.
    referenced: bool,
    /// Bumped whenever residency changes or the application discards the page; clock
    /// entries and in-flight decisions carry it to notice they are stale.
    generation: u32,
    /// Hash of the bytes last stored in the pool (to recognize them when handed back).
    hash: u64,
    /// Resident, installed by prefetch, and not known to be used yet.
    prefetched: bool,
}

/// A page considered for prefetch.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    page: u32,
    /// The trend it is prefetched along.
    delta: i64,
    /// The page's generation when it was loaded (a change means the application discarded it).
    generation: u32,
    /// Its page in `Prefetch::staging`.
    slot: u32,
    /// Where it is read from.
    from: Location,
    state: CandidateState,
}

impl Candidate {
    /// Its contents are zeros (no copy anywhere).
    fn zeros(&self) -> bool {
        matches!(self.from, Location::Nowhere | Location::Zero)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CandidateState {
    /// Not loaded (or not installable): left to fault as usual.
    #[default]
    Skip,
    /// Loaded into its staging slot, to install.
    Loaded,
    Installed,
}

/// The handler's prefetch state; every buffer is allocated at region creation.
struct Prefetch {
    enabled: bool,
    trend: Trend,
    amount: Amount,
    /// This fault's candidates, in trend order until loaded, then by page.
    candidates: Vec<Candidate>,
    offsets: Vec<u64>,
    found: Vec<bool>,
    /// `PREFETCH_MAX + 1` pages: the batch's pages (the faulting page first when it is in
    /// it), then the pages read from the backing file.
    staging: Vec<u8>,
    /// Prefetched pages not known to be used yet, with the trend they were prefetched along
    /// (at most `2 * cap`: when full, one is forgotten).
    outstanding: Vec<(u32, i64)>,
    /// How far (in trend steps) a later fault may be beyond a prefetched page to count as
    /// having gone through it.
    reach: i64,
    /// Pages the last prefetch installed, and how many of them were used so far.
    issued: usize,
    used: usize,
}

impl Prefetch {
    fn new(enabled: bool, resident_limit: usize, page_size: usize) -> Prefetch {
        // Never more than half of what the region may hold, so a prefetch cannot push out the
        // pages the application is using.
        let cap = if enabled { (resident_limit / 2).min(PREFETCH_MAX) } else { 0 };
        let slots = if cap == 0 { 0 } else { cap + 1 };
        Prefetch {
            enabled: cap > 0,
            trend: Trend::default(),
            amount: Amount::new(cap),
            candidates: Vec::with_capacity(cap),
            offsets: Vec::with_capacity(slots),
            found: vec![false; slots],
            staging: vec![0; slots * page_size],
            outstanding: Vec::with_capacity(2 * cap),
            reach: 2 * cap as i64,
            issued: 0,
            used: 0,
        }
    }
}

/// What a fault installs.
enum Content {
    Zero,
    /// The page is in `Handler::buf`; `dirty` if it has no other valid copy any more.
    Data {
        dirty: bool,
    },
    Lost,
}

/// The outcome of a step run under the inbox lock.
enum Quiet<R> {
    Done(R),
    /// EAGAIN: an `madvise` of the application is in flight; retry once it is through.
    Again,
}

/// The fault handler thread's state: everything about pages.
struct Handler {
    uffd: RawFd,
    base: usize,
    page_size: usize,
    limit: usize,
    batch: usize,
    pages: Vec<Page>,
    /// Resident pages in fault order, with the generation they were installed in.
    clock: VecDeque<(u32, u32)>,
    resident: usize,
    held: HashMap<u32, Vec<u8>>,
    /// Pages the handler discarded itself whose REMOVE event has not been seen yet (per page:
    /// the kernel splits one `madvise` into one event per VMA it crosses).
    self_discards: HashMap<u32, u32>,
    /// Pool copies to invalidate before the next store.
    pending_invalidates: Vec<u32>,
    backend: Box<dyn PageBackend>,
    /// Where each non-resident page's authoritative copy is (or the still-valid copy of a
    /// clean resident page), with the backing file.
    locations: PageLocations,
    pagemap: Option<File>,
    poison: bool,
    shared: Arc<Shared>,
    stats: RegionStats,
    buf: Vec<u8>,
    prefetch: Prefetch,
}

impl Handler {
    fn run(mut self) -> Box<dyn PageBackend> {
        let shared = Arc::clone(&self.shared);
        loop {
            let (event, take_backs) = {
                let mut inbox = lock(&shared.inbox);
                while !inbox.stop && inbox.events.is_empty() && inbox.take_backs.is_empty() {
                    inbox = shared.wake.wait(inbox).unwrap_or_else(PoisonError::into_inner);
                }
                if inbox.stop {
                    break;
                }
                let event = inbox.events.pop_front();
                if matches!(event, Some(Event::Remove { .. })) {
                    inbox.removes -= 1;
                }
                (event, std::mem::take(&mut inbox.take_backs))
            };
            self.flush_invalidates();
            self.apply_take_backs(take_backs);
            let sample = match event {
                Some(Event::Remove { start, end }) => {
                    self.apply_remove(start, end);
                    None
                }
                Some(Event::Fault { addr, write, wp, at }) => {
                    let p = (addr as usize).wrapping_sub(self.base) / self.page_size;
                    if p >= self.pages.len() {
                        tracing::error!("tmem region: a fault at {addr:#x}, outside the region");
                        None
                    } else if wp {
                        self.handle_wp(p);
                        Some((true, at.elapsed()))
                    } else {
                        self.handle_missing(p, write);
                        Some((false, at.elapsed()))
                    }
                }
                None => None,
            };
            self.publish(sample);
        }
        // The application's discards reach the pool even when the region stops right after.
        self.flush_invalidates();
        self.backend
    }

    fn stopping(&self) -> bool {
        lock(&self.shared.inbox).stop
    }

    fn publish(&mut self, sample: Option<(bool, Duration)>) {
        self.stats.resident_pages = self.resident as u64;
        let mut shared = lock(&self.shared.stats);
        let at = self.locations.counts();
        (self.stats.pool_pages, self.stats.file_pages) = (at.pool, at.backing);
        shared.counters = self.stats.clone();
        if let Some((wp, took)) = sample {
            let ns = took.as_nanos().min(u64::MAX as u128) as u64;
            if wp { shared.wp.push(ns) } else { shared.missing.push(ns) }
        }
    }

    /// Runs `step` under the inbox lock, after applying every REMOVE read so far, and again
    /// while it says [`Quiet::Again`]. `None` if the region is stopping.
    fn quietly<R>(&mut self, mut step: impl FnMut(&mut Self) -> Quiet<R>) -> Option<R> {
        let shared = Arc::clone(&self.shared);
        loop {
            let mut inbox = lock(&shared.inbox);
            if inbox.stop {
                return None;
            }
            if inbox.removes > 0 {
                let mut removes = Vec::new();
                inbox.events.retain(|e| match *e {
                    Event::Remove { start, end } => {
                        removes.push((start, end));
                        false
                    }
                    Event::Fault { .. } => true,
                });
                inbox.removes = 0;
                for (start, end) in removes {
                    self.apply_remove(start, end);
                }
            }
            match step(self) {
                Quiet::Done(r) => return Some(r),
                Quiet::Again => {
                    // The application's madvise is waiting for the reader, or just got its
                    // event read and is about to finish: let both happen.
                    drop(shared.wake.wait_timeout(inbox, Duration::from_micros(200)));
                }
            }
        }
    }

    // ---- faults ----

    fn handle_missing(&mut self, p: usize, write: bool) {
        self.stats.missing_faults += 1;
        let mut trend = self.observe_fault(p);
        loop {
            if self.pages[p].resident {
                if self.present(p) {
                    // Another thread faulted on it first (or the application reached a
                    // prefetched page while its run was being installed).
                    if self.pages[p].prefetched {
                        self.pages[p].prefetched = false;
                        self.stats.prefetch_late += 1;
                        self.prefetch.used += 1;
                    }
                    self.wake(p);
                    return;
                }
                // Discarded behind the table's back (an application madvise racing with a
                // fault on the same page): its contents are gone, as the application asked.
                self.forget_resident(p);
            }
            self.prefetch.candidates.clear();
            if let Some(delta) = trend.take() {
                self.plan_prefetch(p, delta);
            }
            let need = 1 + self.prefetch.candidates.len();
            if self.resident + need > self.limit {
                self.make_room(need);
                if self.stopping() {
                    return;
                }
                // Eviction may have freed less: prefetch less (the nearest pages first).
                let room = self.limit.saturating_sub(self.resident + 1);
                self.prefetch.candidates.truncate(room);
            }
            let generation = self.pages[p].generation;
            let content = if self.prefetch.candidates.is_empty() { self.fetch(p) } else { self.fetch_with_prefetch(p) };
            let done = self.quietly(|s| {
                if s.pages[p].generation != generation {
                    return Quiet::Done(false); // discarded meanwhile: decide again
                }
                s.install(p, write, &content)
            });
            match done {
                Some(true) => {
                    // The faulting thread is awake (its page had its own UFFDIO_COPY); now
                    // the prefetched runs.
                    if self.prefetch.candidates.iter().any(|c| c.state == CandidateState::Loaded) {
                        self.quietly(Self::install_prefetched);
                    }
                    return;
                }
                None => return,
                Some(false) => continue,
            }
        }
    }

    // ---- prefetch ----

    /// Bookkeeping of a missing fault at `p`: the pages of the last prefetch this fault went
    /// past along its trend were used; then the trend now, if prefetch is on.
    fn observe_fault(&mut self, p: usize) -> Option<i64> {
        if !self.prefetch.enabled {
            return None;
        }
        let mut i = 0;
        while i < self.prefetch.outstanding.len() {
            let (q, delta) = self.prefetch.outstanding[i];
            let steps = (p as i64 - q as i64) / delta;
            if !self.pages[q as usize].prefetched {
                // Used (written) or evicted meanwhile.
                self.prefetch.outstanding.swap_remove(i);
            } else if (1..=self.prefetch.reach).contains(&steps) {
                self.prefetch.outstanding.swap_remove(i);
                self.prefetch_used(q as usize);
            } else {
                i += 1;
            }
        }
        self.prefetch.trend.record(p as u64)
    }

    /// Prefetched page `q` was used (if it still counts as prefetched).
    fn prefetch_used(&mut self, q: usize) {
        let page = &mut self.pages[q];
        if page.prefetched && page.resident {
            page.prefetched = false;
            self.stats.prefetch_hits += 1;
            self.prefetch.used += 1;
        }
    }

    /// Chooses the pages to prefetch along `delta` from `p` (into `prefetch.candidates`): of
    /// the next `amount` positions, those not resident whose copy is in the pool or the file.
    fn plan_prefetch(&mut self, p: usize, delta: i64) {
        let pf = &mut self.prefetch;
        // The last prefetch's outcome sizes this one.
        pf.amount.feedback(pf.issued, pf.used.min(pf.issued));
        (pf.issued, pf.used) = (0, 0);
        let exclusive = self.shared.exclusive_loads.load(Ordering::Relaxed);
        for step in 1..=pf.amount.get() {
            let q = p as i64 + step as i64 * delta;
            if q < 0 || q >= self.pages.len() as i64 {
                break;
            }
            let q = q as usize;
            if self.pages[q].resident {
                continue;
            }
            let location = self.locations.get(q as u64);
            let eligible = match location {
                // A pool with exclusive gets gives its copy away on a load: only pages the
                // application faults on are taken from it.
                Location::Pool => !exclusive,
                // Zeros (a page never written, discarded, or dropped as all-zero) cost no I/O.
                Location::Backing | Location::PoolAndBacking | Location::Nowhere | Location::Zero => true,
                Location::Held | Location::Lost => false,
            };
            if eligible {
                pf.candidates.push(Candidate {
                    page: q as u32,
                    delta,
                    generation: 0,
                    slot: 0,
                    from: location,
                    state: CandidateState::Skip,
                });
            }
        }
    }

    /// [`Handler::fetch`] of `p`, with the candidates loaded into `prefetch.staging` (slot
    /// `i + 1` for the `i`-th candidate by page, so a run of adjacent pages is one contiguous
    /// source): the pool's in the same `load_many` batch as `p` (one round trip), the file's
    /// read from it, zeros filled in.
    fn fetch_with_prefetch(&mut self, p: usize) -> Content {
        let ps = self.page_size;
        self.flush_invalidates();
        let exclusive = self.shared.exclusive_loads.load(Ordering::Relaxed);
        let pf = &mut self.prefetch;
        pf.candidates.sort_unstable_by_key(|c| c.page);
        pf.offsets.clear();
        let p_in_batch = self.locations.get(p as u64) == Location::Pool;
        if p_in_batch {
            pf.offsets.push(p as u64);
        }
        for (i, c) in pf.candidates.iter_mut().enumerate() {
            c.generation = self.pages[c.page as usize].generation;
            c.from = self.locations.get(c.page as u64);
            c.state = CandidateState::Skip;
            c.slot = i as u32 + 1;
            if c.from == Location::Pool && !exclusive {
                pf.offsets.push(c.page as u64);
            }
        }
        let in_batch = pf.offsets.len();
        let mut p_loaded = false;
        if in_batch > 0 {
            self.stats.prefetch_batches += 1;
            let result =
                self.backend.load_many(&pf.offsets, &mut pf.staging[..in_batch * ps], &mut pf.found[..in_batch]);
            match result {
                Ok(()) => {
                    if p_in_batch && pf.found[0] {
                        self.buf.copy_from_slice(&pf.staging[..ps]);
                        self.stats.pool_loads += 1;
                        p_loaded = true;
                    }
                    // Each page from its batch position to its slot, from the last: a slot is
                    // never before its batch position, nor the batch position of a page not
                    // moved yet.
                    let mut at = in_batch;
                    for c in pf.candidates.iter_mut().rev() {
                        if c.from != Location::Pool || exclusive {
                            continue;
                        }
                        at -= 1;
                        if pf.found[at] {
                            let slot = c.slot as usize;
                            if slot != at {
                                pf.staging.copy_within(at * ps..(at + 1) * ps, slot * ps);
                            }
                            c.state = CandidateState::Loaded;
                            self.stats.pool_loads += 1;
                        }
                    }
                }
                Err(e) => {
                    // Only the prefetch is lost; the faulting page is loaded alone below.
                    self.stats.io_errors += 1;
                    tracing::warn!("tmem region: loading {in_batch} pages to prefetch them: {e}");
                }
            }
        }
        for c in pf.candidates.iter_mut() {
            let slot = &mut pf.staging[c.slot as usize * ps..(c.slot as usize + 1) * ps];
            match c.from {
                Location::Nowhere | Location::Zero => {
                    slot.fill(0);
                    c.state = CandidateState::Loaded;
                }
                Location::Backing | Location::PoolAndBacking => {
                    match self.locations.lock(c.page as u64).read_backing(slot) {
                        Ok(()) => {
                            c.state = CandidateState::Loaded;
                            self.stats.file_loads += 1;
                        }
                        Err(e) => {
                            self.stats.io_errors += 1;
                            tracing::warn!(
                                "tmem region: reading page {} from the backing file to prefetch it: {e}",
                                c.page
                            );
                        }
                    }
                }
                Location::Pool | Location::Held | Location::Lost => {}
            }
        }
        if !p_loaded {
            return self.fetch(p);
        }
        if !exclusive {
            return Content::Data { dirty: false };
        }
        let rest = self.locations.lock(p as u64).pool_let_go();
        Content::Data { dirty: rest == Location::Nowhere }
    }

    /// Installs the loaded candidates (under the inbox lock), write-protected (clean) — zeros
    /// writable (dirty) —: one `UFFDIO_COPY` per run of pages adjacent in the region and in
    /// the staging buffer, of one kind. A candidate the application discarded meanwhile is
    /// dropped.
    fn install_prefetched(&mut self) -> Quiet<()> {
        let ps = self.page_size;
        let valid = |s: &Self, c: &Candidate| {
            let page = s.pages[c.page as usize];
            c.state == CandidateState::Loaded && !page.resident && page.generation == c.generation
        };
        let mut i = 0;
        while i < self.prefetch.candidates.len() {
            let first = self.prefetch.candidates[i];
            if !valid(self, &first) {
                if first.state == CandidateState::Loaded {
                    self.prefetch.candidates[i].state = CandidateState::Skip;
                }
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < self.prefetch.candidates.len() {
                let (prev, c) = (self.prefetch.candidates[j - 1], self.prefetch.candidates[j]);
                if c.page != prev.page + 1 || c.slot != prev.slot + 1 || c.zeros() != prev.zeros() || !valid(self, &c) {
                    break;
                }
                j += 1;
            }
            let n = j - i;
            let mut copy = sys::UffdioCopy {
                dst: (self.base + first.page as usize * ps) as u64,
                src: self.prefetch.staging[first.slot as usize * ps..].as_ptr() as u64,
                len: (n * ps) as u64,
                // Wakes only a thread that faulted on one of these pages meanwhile. Zeros are
                // installed writable (dirty): a write to them takes no fault at all.
                mode: if first.zeros() { 0 } else { sys::COPY_MODE_WP },
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY with a `struct uffdio_copy` whose source is `n` pages of
            // the staging buffer (slots `first.slot..first.slot + n`, inside it) and whose
            // destination is `n` pages of our registered range.
            let r = unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_COPY, &mut copy) };
            let copied = if r.is_ok() { n } else { (copy.copy.max(0) as usize / ps).min(n) };
            if copied > 0 {
                self.stats.prefetch_copies += 1;
            }
            for k in i..i + copied {
                let c = self.prefetch.candidates[k];
                self.prefetch.candidates[k].state = CandidateState::Installed;
                self.mark_installed(c.page as usize, c.zeros());
                let page = &mut self.pages[c.page as usize];
                // Not referenced: an unused prefetched page is the clock's first victim.
                page.referenced = false;
                page.prefetched = true;
                let outstanding = &mut self.prefetch.outstanding;
                if outstanding.len() == outstanding.capacity() {
                    outstanding.swap_remove(0);
                }
                outstanding.push((c.page, c.delta));
                self.prefetch.issued += 1;
                self.stats.prefetched_pages += 1;
            }
            match r {
                Ok(()) => i = j,
                Err(e) if is_eagain(&e) => return Quiet::Again,
                Err(e) => {
                    // EEXIST (mapped already) or a failure: that page faults as usual.
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        tracing::warn!("tmem region: installing prefetched page {}: {e}", first.page as usize + copied);
                    }
                    if i + copied < j {
                        self.prefetch.candidates[i + copied].state = CandidateState::Skip;
                    }
                    i = (i + copied + 1).min(j);
                }
            }
        }
        Quiet::Done(())
    }

    /// Installs `content` at page `p` (under the inbox lock).
    fn install(&mut self, p: usize, write: bool, content: &Content) -> Quiet<bool> {
        let result = match content {
            Content::Lost => {
                let r = if self.poison { self.uffd_poison(p) } else { self.uffd_zeropage(p, true) };
                match r {
                    Err(e) if is_eagain(&e) => return Quiet::Again,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.wake(p),
                    Err(e) => self.fail_and_wake(p, "installing a lost page", &e),
                    Ok(()) if self.poison => {}
                    Ok(()) => self.mark_installed(p, true),
                }
                return Quiet::Done(true);
            }
            Content::Zero if write => self.uffd_zeropage(p, true).map(|()| true),
            Content::Zero => match self.uffd_zeropage(p, false) {
                Ok(()) => {
                    // The zero page has no WP mode: protect it before waking the thread.
                    let protected = match self.uffd_wp(p, true, false) {
                        Ok(()) => true,
                        Err(e) => {
                            if !is_eagain(&e) {
                                tracing::warn!("tmem region: write-protecting a zero page: {e}");
                            }
                            false // unprotected, so treated as dirty
                        }
                    };
                    self.wake(p);
                    Ok(!protected)
                }
                Err(e) => Err(e),
            },
            Content::Data { dirty } => {
                let dirty = write || *dirty;
                let r = self.uffd_copy(p, !dirty);
                r.map(|()| dirty)
            }
        };
        match result {
            Ok(dirty) => {
                match content {
                    Content::Zero => self.stats.zero_fills += 1,
                    Content::Data { .. } | Content::Lost => {}
                }
                self.mark_installed(p, dirty);
            }
            Err(e) if is_eagain(&e) => return Quiet::Again,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Mapped already: whatever is there is newer than our view; keep it, as dirty.
                self.wake(p);
                self.mark_installed(p, true);
            }
            Err(e) => self.fail_and_wake(p, "installing a page", &e),
        }
        Quiet::Done(true)
    }

    fn mark_installed(&mut self, p: usize, dirty: bool) {
        let page = &mut self.pages[p];
        if !page.resident {
            self.resident += 1;
        }
        page.resident = true;
        page.dirty = dirty;
        page.wp = !dirty;
        page.referenced = true;
        page.prefetched = false;
        page.generation = page.generation.wrapping_add(1);
        self.clock.push_back((p as u32, page.generation));
        if self.clock.len() > 4 * self.limit.max(self.resident) + 64 {
            let pages = &self.pages;
            self.clock.retain(|&(q, g)| pages[q as usize].resident && pages[q as usize].generation == g);
        }
    }

    fn forget_resident(&mut self, p: usize) {
        let page = &mut self.pages[p];
        if page.resident {
            self.resident -= 1;
        }
        if page.prefetched {
            self.stats.prefetch_wasted += 1;
        }
        page.prefetched = false;
        page.resident = false;
        page.dirty = false;
        page.wp = false;
        page.referenced = false;
        page.generation = page.generation.wrapping_add(1);
    }

    fn fail_and_wake(&mut self, p: usize, what: &str, e: &io::Error) {
        tracing::error!("tmem region: {what} at page {p}: {e}");
        self.stats.io_errors += 1;
        self.wake(p);
    }

    /// Gets the contents of non-resident page `p` (into `self.buf`).
    fn fetch(&mut self, p: usize) -> Content {
        let deadline = Instant::now() + TAKE_BACK_WAIT;
        loop {
            match self.locations.get(p as u64) {
                Location::Nowhere | Location::Zero => return Content::Zero,
                Location::Lost => return self.lost(p, "the pool lost it"),
                Location::Held => {
                    self.buf.copy_from_slice(&self.held[&(p as u32)]);
                    self.stats.held_loads += 1;
                    return Content::Data { dirty: false };
                }
                Location::Backing => {
                    let read = self.locations.lock(p as u64).read_backing(&mut self.buf);
                    return match read {
                        Ok(()) => {
                            self.stats.file_loads += 1;
                            Content::Data { dirty: false }
                        }
                        Err(e) => self.lost(p, &format!("reading it from the backing file: {e}")),
                    };
                }
                loc @ (Location::Pool | Location::PoolAndBacking) => {
                    self.flush_invalidates();
                    let mut error = None;
                    for attempt in 0..5 {
                        match self.backend.load(p as u64, &mut self.buf) {
                            Ok(true) => {
                                self.stats.pool_loads += 1;
                                if !self.shared.exclusive_loads.load(Ordering::Relaxed) {
                                    return Content::Data { dirty: false };
                                }
                                // The pool gave its copy away.
                                let rest = self.locations.lock(p as u64).pool_let_go();
                                return Content::Data { dirty: rest == Location::Nowhere };
                            }
                            Ok(false) => {
                                error = None;
                                break;
                            }
                            Err(e) => {
                                self.stats.io_errors += 1;
                                error = Some(e);
                                std::thread::sleep(Duration::from_millis(10 << attempt));
                            }
                        }
                    }
                    if loc == Location::PoolAndBacking {
                        // Writethrough: the pool may have dropped its copy; the file has it.
                        self.locations.lock(p as u64).pool_lost(Location::Lost);
                        continue;
                    }
                    if let Some(e) = error {
                        return self.lost(p, &format!("loading it from the pool: {e}"));
                    }
                    // Absent: the host may have taken it and be about to hand it back.
                    if Instant::now() >= deadline {
                        return self.lost(p, "the pool has no page there");
                    }
                    let take_backs = {
                        let shared = Arc::clone(&self.shared);
                        let mut inbox = lock(&shared.inbox);
                        if inbox.stop {
                            return Content::Zero;
                        }
                        if inbox.take_backs.is_empty() {
                            inbox = shared
                                .wake
                                .wait_timeout(inbox, Duration::from_millis(5))
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        std::mem::take(&mut inbox.take_backs)
                    };
                    self.apply_take_backs(take_backs);
                }
            }
        }
    }

    fn lost(&mut self, p: usize, why: &str) -> Content {
        self.stats.load_failures += 1;
        let what = if self.poison { "poisoned (SIGBUS on access)" } else { "zero-filled" };
        tracing::error!("tmem region: DATA LOSS: page {p} could not be produced ({why}); the page is {what}");
        // Whatever the pool may still hold there is left alone (for forensics; a later store
        // of the page replaces it).
        self.relocate(p, Location::Nowhere);
        Content::Lost
    }

    fn handle_wp(&mut self, p: usize) {
        self.stats.wp_faults += 1;
        // A write to a prefetched page: used.
        self.prefetch_used(p);
        let unprotected = self.quietly(|s| match s.uffd_wp(p, false, true) {
            Ok(()) => Quiet::Done(true),
            Err(e) if is_eagain(&e) => Quiet::Again,
            Err(e) => {
                s.fail_and_wake(p, "lifting write protection", &e);
                Quiet::Done(false)
            }
        });
        // A page the table has no longer (evicted while the writer waited) refaults as missing.
        if unprotected == Some(true) && self.pages[p].resident {
            let page = &mut self.pages[p];
            page.dirty = true;
            page.wp = false;
            page.referenced = true;
        }
    }

    // ---- eviction ----

    /// Evicts a batch of pages so that `need` more fit under the limit.
    fn make_room(&mut self, need: usize) {
        let ps = self.page_size;
        for _round in 0..4 {
            if self.resident + need <= self.limit {
                return;
            }
            let want = self.resident + need + self.batch - 1 - self.limit;
            let mut victims = self.pick_victims(want);
            if victims.is_empty() {
                return;
            }
            // Phase 1, under the inbox lock: protect the dirty victims, copy them out.
            let mut dirty: Vec<u32> = Vec::new();
            let mut clean: Vec<u32> = Vec::new();
            let mut data: Vec<u8> = Vec::new();
            let done = self.quietly(|s| {
                dirty.clear();
                clean.clear();
                data.clear();
                victims.retain(|&p| s.pages[p as usize].resident);
                for &p in &victims {
                    let page = s.pages[p as usize];
                    if page.dirty && !page.wp {
                        match s.uffd_wp(p as usize, true, false) {
                            Ok(()) => s.pages[p as usize].wp = true,
                            Err(e) if is_eagain(&e) => return Quiet::Again,
                            Err(e) => {
                                tracing::warn!("tmem region: write-protecting page {p} to evict it: {e}")
                            }
                        }
                    }
                }
                for &p in &victims {
                    let page = s.pages[p as usize];
                    if !page.dirty {
                        clean.push(p);
                    } else if page.wp {
                        if !s.present(p as usize) {
                            s.forget_resident(p as usize);
                            continue;
                        }
                        let at = data.len();
                        data.resize(at + ps, 0);
                        // SAFETY: page `p` is inside the mapping, mapped (checked just now,
                        // and no REMOVE can be read while we hold the inbox lock) and
                        // write-protected, so nothing writes it during the copy.
                        unsafe { copy_from_region((s.base + p as usize * ps) as *const u8, &mut data[at..]) };
                        dirty.push(p);
                    }
                }
                Quiet::Done(())
            });
            if done.is_none() {
                return;
            }
            // Victims that could not be protected stay resident.
            for &p in &victims {
                let page = self.pages[p as usize];
                if page.resident && page.dirty && !page.wp {
                    self.clock.push_back((p, page.generation));
                }
            }

            // Phase 2: store the dirty ones.
            self.flush_invalidates();
            let mut evicted: Vec<u32> = Vec::with_capacity(clean.len() + dirty.len());
            let mut to_store: Vec<(u32, &[u8])> = Vec::new();
            for (i, &p) in dirty.iter().enumerate() {
                let bytes = &data[i * ps..(i + 1) * ps];
                if bytes.iter().all(|&b| b == 0) {
                    if self.locations.get(p as u64).in_pool() {
                        self.pending_invalidates.push(p);
                    }
                    self.relocate(p as usize, Location::Nowhere);
                    self.stats.zero_drops += 1;
                    evicted.push(p);
                } else {
                    to_store.push((p, bytes));
                }
            }
            self.stats.dirty_evictions += dirty.len() as u64;
            if !to_store.is_empty() {
                let batch: Vec<(u64, &[u8])> = to_store.iter().map(|&(p, bytes)| (p as u64, bytes)).collect();
                self.stats.store_calls += 1;
                self.stats.stores += batch.len() as u64;
                let outcomes = match self.backend.store_many(&batch) {
                    Ok(outcomes) if outcomes.len() == batch.len() => Some(outcomes),
                    Ok(outcomes) => {
                        self.stats.io_errors += 1;
                        tracing::error!(
                            "tmem region: {} outcomes for a store of {} pages",
                            outcomes.len(),
                            batch.len()
                        );
                        None
                    }
                    Err(e) => {
                        self.stats.io_errors += 1;
                        tracing::error!(
                            "tmem region: storing {} pages: {e}; keeping them in the backing file",
                            batch.len()
                        );
                        None
                    }
                };
                for (i, &(p, bytes)) in to_store.iter().enumerate() {
                    let result = match outcomes.as_ref().map(|o| &o[i]) {
                        Some(Stored::Kept) => StoreResult::Stored,
                        Some(Stored::KeptWritethrough) => StoreResult::StoredWritethrough,
                        Some(Stored::Rejected(_)) => StoreResult::Rejected,
                        None => {
                            // Unknown whether the pool has it: never read it from there again.
                            self.pending_invalidates.push(p);
                            StoreResult::Unknown
                        }
                    };
                    if matches!(result, StoreResult::Stored | StoreResult::StoredWritethrough) {
                        self.stats.stored_in_pool += 1;
                        self.pages[p as usize].hash = page_hash(bytes);
                    }
                    // A page the file cannot take where it must is nowhere: it stays resident.
                    let placed = match self.locations.lock(p as u64).place(result, bytes, Location::Nowhere) {
                        Ok(location) => {
                            match (result, location) {
                                (StoreResult::StoredWritethrough, _) => self.stats.writethrough_to_file += 1,
                                (StoreResult::Rejected, _) => self.stats.rejected_to_file += 1,
                                (StoreResult::Unknown, _) => self.stats.store_errors_to_file += 1,
                                (StoreResult::Stored, _) => {}
                            }
                            true
                        }
                        Err(e) => {
                            self.stats.io_errors += 1;
                            tracing::error!("tmem region: writing page {p} to the backing file: {e}");
                            // A writethrough page left in the pool alone is still placed.
                            result == StoreResult::StoredWritethrough
                        }
                    };
                    if placed {
                        evicted.push(p);
                    } else {
                        // Nowhere to put it: it stays resident (and dirty).
                        let generation = self.pages[p as usize].generation;
                        self.clock.push_back((p, generation));
                    }
                }
            }

            // Phase 3: drop them from memory.
            self.stats.clean_drops += clean.len() as u64;
            evicted.extend_from_slice(&clean);
            for &p in &evicted {
                self.forget_resident(p as usize);
            }
            evicted.sort_unstable();
            let mut i = 0;
            while i < evicted.len() {
                let mut j = i + 1;
                while j < evicted.len() && evicted[j] == evicted[j - 1] + 1 {
                    j += 1;
                }
                self.discard(evicted[i] as usize, j - i);
                i = j;
            }
        }
    }

    /// Runs the clock hand until it has `n` victims (or has gone round twice).
    fn pick_victims(&mut self, n: usize) -> Vec<u32> {
        let mut victims = Vec::with_capacity(n);
        let mut budget = 2 * self.clock.len() + 1;
        while victims.len() < n && budget > 0 {
            budget -= 1;
            let Some((p, generation)) = self.clock.pop_front() else { break };
            let page = self.pages[p as usize];
            if !page.resident || page.generation != generation {
                continue; // stale entry
            }
            if page.referenced {
                self.pages[p as usize].referenced = false;
                if page.dirty && !page.wp && self.uffd_wp(p as usize, true, false).is_ok() {
                    // Re-arm: the next write faults and marks the page referenced again.
                    self.pages[p as usize].wp = true;
                }
                self.clock.push_back((p, generation));
                continue;
            }
            victims.push(p);
        }
        victims
    }

    /// Discards `count` pages from `first` with `MADV_DONTNEED`, expecting the REMOVE event.
    fn discard(&mut self, first: usize, count: usize) {
        for p in first..first + count {
            *self.self_discards.entry(p as u32).or_insert(0) += 1;
        }
        let start = self.base + first * self.page_size;
        // SAFETY: the range is inside our mapping and holds only pages the table has just
        // marked non-resident (their contents are stored, or were clean copies).
        let r = unsafe { libc::madvise(start as *mut libc::c_void, count * self.page_size, libc::MADV_DONTNEED) };
        if r != 0 {
            let e = io::Error::last_os_error();
            self.consume_self_discard(first, first + count);
            tracing::error!("tmem region: discarding {count} evicted pages: {e}");
            self.stats.io_errors += 1;
        }
    }

    /// If every page of `first..last` has a discard of the handler's own outstanding, the
    /// REMOVE event for them is that discard's: consumes it and says so.
    fn consume_self_discard(&mut self, first: usize, last: usize) -> bool {
        if first >= last || !(first..last).all(|p| self.self_discards.contains_key(&(p as u32))) {
            return false;
        }
        for p in first..last {
            let n = self.self_discards.get_mut(&(p as u32)).expect("checked");
            *n -= 1;
            if *n == 0 {
                self.self_discards.remove(&(p as u32));
            }
        }
        true
    }

    // ---- the application's discards and the host's take-backs ----

    fn apply_remove(&mut self, start: u64, end: u64) {
        let ps = self.page_size as u64;
        let base = self.base as u64;
        let first = ((start.max(base) - base) / ps) as usize;
        let last = (end.saturating_sub(base).div_ceil(ps)).min(self.pages.len() as u64) as usize;
        if self.consume_self_discard(first, last) {
            return;
        }
        for p in first..last {
            let page = self.pages[p];
            let loc = self.locations.get(p as u64);
            if page.resident || loc != Location::Nowhere {
                self.stats.app_discarded_pages += 1;
            }
            if loc.in_pool() {
                self.pending_invalidates.push(p as u32);
            }
            self.relocate(p, Location::Nowhere);
            self.forget_resident(p);
        }
    }

    fn apply_take_backs(&mut self, take_backs: Vec<(u64, Vec<u8>)>) {
        for (offset, bytes) in take_backs {
            let p = offset as usize;
            let page = self.pages[p];
            let loc = self.locations.get(offset);
            if !loc.in_pool() || page_hash(&bytes) != page.hash {
                self.stats.stale_take_backs += 1;
                continue;
            }
            self.stats.take_backs += 1;
            if loc == Location::PoolAndBacking {
                self.relocate(p, Location::Backing);
            } else if page.resident && page.dirty {
                // The resident copy is newer; the pool's is gone.
                self.relocate(p, Location::Nowhere);
            } else if let Err(e) = self.locations.lock(offset).write_backing(&bytes, Location::Backing, Location::Held)
            {
                self.stats.io_errors += 1;
                tracing::error!("tmem region: writing page {p} to the backing file: {e}");
                self.held.insert(p as u32, bytes);
            }
        }
    }

    fn flush_invalidates(&mut self) {
        for p in std::mem::take(&mut self.pending_invalidates) {
            self.stats.invalidates += 1;
            if let Err(e) = self.backend.invalidate(p as u64) {
                self.stats.io_errors += 1;
                tracing::warn!("tmem region: invalidating page {p} in the pool: {e}");
            }
        }
    }

    /// Moves page `p`'s copy to `to` (its file copy punched if `to` has none), dropping a held
    /// copy it no longer has (a pool copy is the caller's business: the pool may already have
    /// dropped it).
    fn relocate(&mut self, p: usize, to: Location) {
        let mut slot = self.locations.lock(p as u64);
        if slot.location() == Location::Held && to != Location::Held {
            self.held.remove(&(p as u32));
        }
        slot.relocate(to);
    }

    /// Whether page `p` is mapped (or swapped out by the kernel), per /proc/self/pagemap.
    fn present(&self, p: usize) -> bool {
        let Some(pagemap) = &self.pagemap else { return true };
        let mut entry = [0u8; 8];
        let at = ((self.base / self.page_size + p) * 8) as u64;
        match pagemap.read_exact_at(&mut entry, at) {
            Ok(()) => u64::from_ne_bytes(entry) & (3 << 62) != 0,
            Err(_) => true,
        }
    }

    // ---- ioctls ----

    fn range(&self, p: usize) -> sys::UffdioRange {
        sys::UffdioRange { start: (self.base + p * self.page_size) as u64, len: self.page_size as u64 }
    }

    /// Copies `self.buf` into page `p`, write-protected if `protect`, and wakes the waiters.
    fn uffd_copy(&self, p: usize, protect: bool) -> io::Result<()> {
        let range = self.range(p);
        let mut copy = sys::UffdioCopy {
            dst: range.start,
            src: self.buf.as_ptr() as u64,
            len: range.len,
            mode: if protect { sys::COPY_MODE_WP } else { 0 },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY with a `struct uffdio_copy` whose source is `self.buf`, one
        // readable page, and whose destination is one page of our registered range.
        unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_COPY, &mut copy) }
    }

    fn uffd_zeropage(&self, p: usize, wake: bool) -> io::Result<()> {
        let mut zero = sys::UffdioZeropage {
            range: self.range(p),
            mode: if wake { 0 } else { sys::ZEROPAGE_MODE_DONTWAKE },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE with a `struct uffdio_zeropage` over one page of our range.
        unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_ZEROPAGE, &mut zero) }
    }

    /// Sets (`protect`) or lifts write protection on page `p`; lifting wakes if `wake`.
    fn uffd_wp(&self, p: usize, protect: bool, wake: bool) -> io::Result<()> {
        // Protecting never wakes, and the kernel refuses WP together with DONTWAKE.
        let mode = match (protect, wake) {
            (true, _) => sys::WRITEPROTECT_MODE_WP,
            (false, true) => 0,
            (false, false) => sys::WRITEPROTECT_MODE_DONTWAKE,
        };
        let mut wp = sys::UffdioWriteprotect { range: self.range(p), mode };
        // SAFETY: UFFDIO_WRITEPROTECT with a `struct uffdio_writeprotect` over one page of our range.
        unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_WRITEPROTECT, &mut wp) }
    }

    fn uffd_poison(&self, p: usize) -> io::Result<()> {
        let mut poison = sys::UffdioPoison { range: self.range(p), mode: 0, updated: 0 };
        // SAFETY: UFFDIO_POISON with a `struct uffdio_poison` over one page of our range.
        unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_POISON, &mut poison) }
    }

    fn wake(&self, p: usize) {
        let mut range = self.range(p);
        // SAFETY: UFFDIO_WAKE with a `struct uffdio_range` over one page of our range.
        if let Err(e) = unsafe { uffd_ioctl(self.uffd, sys::UFFDIO_WAKE, &mut range) } {
            tracing::error!("tmem region: waking the threads faulting on page {p}: {e}");
        }
    }
}

fn is_eagain(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

fn page_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// The reader thread: moves uffd messages into the inbox until told to stop.
fn run_reader(uffd: RawFd, stop: RawFd, shared: &Shared) {
    let mut buf = vec![0u8; sys::MSG_SIZE * 64];
    loop {
        let mut fds = [
            libc::pollfd { fd: uffd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: polls two live descriptors through a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("tmem region: polling the userfaultfd: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                tracing::error!("tmem region: the userfaultfd failed; faults are no longer served");
                return;
            }
            continue;
        }
        let mut inbox = lock(&shared.inbox);
        let mut got = false;
        loop {
            // SAFETY: reads into our buffer, at most its length.
            let r = unsafe { libc::read(uffd, buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    _ => {
                        tracing::error!("tmem region: reading the userfaultfd: {e}");
                        break;
                    }
                }
            }
            if r == 0 {
                break;
            }
            let at = Instant::now();
            for msg in buf[..r as usize].chunks_exact(sys::MSG_SIZE) {
                let word = |i: usize| u64::from_ne_bytes(msg[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
                match msg[0] {
                    sys::EVENT_PAGEFAULT => {
                        let flags = word(0);
                        inbox.events.push_back(Event::Fault {
                            addr: word(1),
                            write: flags & sys::PAGEFAULT_FLAG_WRITE != 0,
                            wp: flags & sys::PAGEFAULT_FLAG_WP != 0,
                            at,
                        });
                    }
                    sys::EVENT_REMOVE => {
                        inbox.events.push_back(Event::Remove { start: word(0), end: word(1) });
                        inbox.removes += 1;
                    }
                    other => tracing::warn!("tmem region: unexpected userfaultfd event {other:#x}"),
                }
                got = true;
            }
        }
        drop(inbox);
        if got {
            shared.wake.notify_all();
        }
    }
}

/// Runs a userfaultfd ioctl.
///
/// # Safety
/// `arg` must be the structure `request` takes, and any addresses inside it must be valid for
/// what the request does with them.
unsafe fn uffd_ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` is what `request` expects; it is live for the call.
    let r = unsafe { libc::ioctl(fd, request as libc::Ioctl, arg as *mut T) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Opens a userfaultfd (non-blocking, close-on-exec, kernel faults included).
fn open_uffd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let device = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/userfaultfd");
    let raw = match &device {
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument.
        Ok(dev) => unsafe { libc::ioctl(dev.as_raw_fd(), sys::USERFAULTFD_IOC_NEW as libc::Ioctl, flags) },
        // SAFETY: the userfaultfd syscall takes only the flags.
        Err(_) => unsafe { libc::syscall(libc::SYS_userfaultfd, flags) as libc::c_int },
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        let denied = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            || device.as_ref().err().is_some_and(|d| d.kind() == io::ErrorKind::PermissionDenied);
        if denied {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{PERMISSION_HINT}: {e}")));
        }
        return Err(io::Error::new(e.kind(), format!("creating a userfaultfd: {e}")));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens the region's userfaultfd with the features it needs; whether poisoning is available.
fn open_configured_uffd() -> io::Result<(OwnedFd, bool)> {
    // A uffd takes one UFFDIO_API call: ask a throwaway one what this kernel supports.
    let probe = open_uffd()?;
    let mut api = sys::UffdioApi { api: sys::UFFD_API, features: 0, ioctls: 0 };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { uffd_ioctl(probe.as_raw_fd(), sys::UFFDIO_API, &mut api) }
        .map_err(|e| io::Error::new(e.kind(), format!("userfaultfd handshake: {e}")))?;
    drop(probe);
    let needed = sys::FEATURE_PAGEFAULT_FLAG_WP | sys::FEATURE_EVENT_REMOVE;
    if api.features & needed != needed {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "userfaultfd on this kernel lacks write-protect faults or REMOVE events (features {:#x}); Linux 5.7 or later is needed",
                api.features
            ),
        ));
    }
    let poison = api.features & sys::FEATURE_POISON != 0;
    let uffd = open_uffd()?;
    let mut api = sys::UffdioApi {
        api: sys::UFFD_API,
        features: needed | if poison { sys::FEATURE_POISON } else { 0 },
        ioctls: 0,
    };
    // SAFETY: as above.
    unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_API, &mut api) }
        .map_err(|e| io::Error::new(e.kind(), format!("userfaultfd handshake: {e}")))?;
    Ok((uffd, poison))
}

fn system_page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Copies region memory at `src` into `dst`, with relaxed atomic loads (so a concurrent writer
/// is a race on values, not undefined behaviour).
///
/// # Safety
/// `src..src + dst.len()` must be inside a live mapping.
unsafe fn copy_from_region(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    while i < n && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: in bounds (caller); any address is aligned for a u8.
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: in bounds (caller) and 8-aligned (the loop above).
        let word = unsafe { AtomicU64::from_ptr(src.add(i).cast_mut().cast::<u64>()) }.load(Ordering::Relaxed);
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: in bounds (caller).
        dst[i] = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
        i += 1;
    }
}

/// Copies `src` into region memory at `dst`, with relaxed atomic stores.
///
/// # Safety
/// `dst..dst + src.len()` must be inside a live mapping.
unsafe fn copy_into_region(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let mut i = 0;
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: in bounds (caller).
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
        // SAFETY: in bounds (caller) and 8-aligned (the loop above).
        unsafe { AtomicU64::from_ptr(dst.add(i).cast::<u64>()) }.store(word, Ordering::Relaxed);
        i += 8;
    }
    while i < n {
        // SAFETY: in bounds (caller).
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
}

/// Fault latency of a bare userfaultfd handler: **the baseline of the frontend benchmark**
/// (`host/benches/frontend.rs`), what a [`Region`] fault costs beyond the kernel's own round
/// trip.
///
/// Maps `pages` fresh anonymous pages, registers them in `MISSING` mode only, and starts one
/// handler thread that answers every fault with a `UFFDIO_COPY` of a constant page — no pool,
/// no eviction, no write-protect, no page table. The calling thread then reads each page once,
/// copying it out as [`Region::read`] does, and times each read from the application's side
/// (fault, handler wake-up, copy, wake of the faulting thread, the 4 KiB copy out).
///
/// Returns `(p50_ns, p99_ns)` over the `pages` reads (at least one page is used). Errors: no
/// permission to use userfaultfd (`PermissionDenied`), or a kernel refusing the registration
/// or a copy.
pub fn bare_copy_fault_latency(pages: usize) -> io::Result<(u64, u64)> {
    let pages = pages.max(1);
    let page_size = system_page_size();
    let uffd = open_uffd()?;
    let mut api = sys::UffdioApi { api: sys::UFFD_API, features: 0, ioctls: 0 };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_API, &mut api) }
        .map_err(|e| io::Error::new(e.kind(), format!("userfaultfd handshake: {e}")))?;
    let len = pages * page_size;
    let mapping = Mapping::new(len)?;
    let base = mapping.ptr as usize;
    // SAFETY: madvise on our own fresh mapping (as the region does); no contents change.
    unsafe { libc::madvise(mapping.ptr, len, libc::MADV_NOHUGEPAGE) };
    let mut register = sys::UffdioRegister {
        range: sys::UffdioRange { start: base as u64, len: len as u64 },
        mode: sys::REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, which `register` is.
    unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_REGISTER, &mut register) }
        .map_err(|e| io::Error::new(e.kind(), format!("registering with userfaultfd (missing): {e}")))?;
    if register.ioctls & sys::IOCTL_COPY == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "userfaultfd on this kernel cannot copy into anonymous memory",
        ));
    }

    // The handler owns the uffd: when it stops (done, or an error) the descriptor closes, the
    // registration goes with it, and a thread still faulting is released (zero-filled).
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new().name("tmem-uffd-bare".into()).spawn(move || -> io::Result<()> {
            let source = vec![0x5Au8; page_size];
            let mut buf = vec![0u8; sys::MSG_SIZE * 64];
            let mut served = 0;
            while served < pages && !stop.load(Ordering::Relaxed) {
                let mut fd = libc::pollfd { fd: uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: polls one live descriptor.
                if unsafe { libc::poll(&mut fd, 1, 100) } <= 0 {
                    continue;
                }
                // SAFETY: reads into our buffer, at most its length.
                let r = unsafe { libc::read(uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                        continue;
                    }
                    return Err(io::Error::new(e.kind(), format!("reading the userfaultfd: {e}")));
                }
                for msg in buf[..r as usize].chunks_exact(sys::MSG_SIZE) {
                    if msg[0] != sys::EVENT_PAGEFAULT {
                        continue;
                    }
                    let addr = u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes"));
                    let mut copy = sys::UffdioCopy {
                        dst: addr & !(page_size as u64 - 1),
                        src: source.as_ptr() as u64,
                        len: page_size as u64,
                        mode: 0,
                        copy: 0,
                    };
                    // SAFETY: UFFDIO_COPY with a `struct uffdio_copy` whose source is one
                    // readable page and whose destination is the faulting page of the range.
                    match unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_COPY, &mut copy) } {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            let mut range = sys::UffdioRange { start: copy.dst, len: page_size as u64 };
                            // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range` inside the range.
                            unsafe { uffd_ioctl(uffd.as_raw_fd(), sys::UFFDIO_WAKE, &mut range) }?;
                        }
                        Err(e) => return Err(io::Error::new(e.kind(), format!("UFFDIO_COPY: {e}"))),
                    }
                    served += 1;
                }
            }
            Ok(())
        })?
    };

    let mut page = vec![0u8; page_size];
    let mut samples = Vec::with_capacity(pages);
    for p in 0..pages {
        let started = Instant::now();
        // SAFETY: page `p` is inside the live mapping, unmapped only after this loop.
        unsafe { copy_from_region((base + p * page_size) as *const u8, &mut page) };
        samples.push(started.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        std::hint::black_box(&page);
    }
    stop.store(true, Ordering::Relaxed);
    handler.join().map_err(|_| io::Error::other("the bare fault handler panicked"))??;
    drop(mapping);
    if page[0] != 0x5A {
        return Err(io::Error::other("the bare fault handler did not serve the faults (pages read as zeros)"));
    }
    samples.sort_unstable();
    let at = |q: usize| samples[(samples.len() - 1) * q / 100];
    Ok((at(50), at(99)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The first byte that makes the test pool refuse a page ("incompressible").
    const REJECT: u8 = 0xEE;

    /// An in-memory pool: the frontswap contract (duplicate stores replace, refused stores drop
    /// the old copy), pages starting with [`REJECT`] refused, optional writethrough, and a
    /// record of every call.
    #[derive(Default)]
    struct MemPool {
        pages: HashMap<u64, Vec<u8>>,
        writethrough: bool,
        store_calls: usize,
        stored: Vec<u64>,
        loaded: Vec<u64>,
        invalidated: Vec<u64>,
        invalidate_areas: usize,
        load_many_calls: usize,
    }

    #[derive(Clone, Default)]
    struct MemBackend(Arc<Mutex<MemPool>>);

    impl MemBackend {
        fn pool(&self) -> std::sync::MutexGuard<'_, MemPool> {
            self.0.lock().unwrap()
        }
    }

    impl PageBackend for MemBackend {
        fn page_size(&self) -> usize {
            system_page_size()
        }

        fn store_many(&mut self, pages: &[(u64, &[u8])]) -> io::Result<Vec<Stored>> {
            let mut pool = self.pool();
            pool.store_calls += 1;
            Ok(pages
                .iter()
                .map(|&(offset, page)| {
                    assert_eq!(page.len(), system_page_size());
                    pool.stored.push(offset);
                    pool.pages.remove(&offset);
                    if page[0] == REJECT {
                        Stored::Rejected("reject_compress_poor".into())
                    } else {
                        pool.pages.insert(offset, page.to_vec());
                        if pool.writethrough { Stored::KeptWritethrough } else { Stored::Kept }
                    }
                })
                .collect())
        }

        fn load(&mut self, offset: u64, page: &mut [u8]) -> io::Result<bool> {
            let mut pool = self.pool();
            pool.loaded.push(offset);
            match pool.pages.get(&offset) {
                Some(bytes) => {
                    page.copy_from_slice(bytes);
                    Ok(true)
                }
                None => Ok(false),
            }
        }

        fn load_many(&mut self, offsets: &[u64], pages: &mut [u8], found: &mut [bool]) -> io::Result<()> {
            self.pool().load_many_calls += 1;
            for (i, &offset) in offsets.iter().enumerate() {
                found[i] = self.load(offset, &mut pages[i * ps()..(i + 1) * ps()])?;
            }
            Ok(())
        }

        fn invalidate(&mut self, offset: u64) -> io::Result<()> {
            let mut pool = self.pool();
            pool.invalidated.push(offset);
            pool.pages.remove(&offset);
            Ok(())
        }

        fn invalidate_area(&mut self) -> io::Result<()> {
            let mut pool = self.pool();
            pool.invalidate_areas += 1;
            pool.pages.clear();
            Ok(())
        }
    }

    fn uffd_available() -> bool {
        let ok = OpenOptions::new().read(true).write(true).open("/dev/userfaultfd").is_ok();
        if !ok {
            println!("skipped: no userfaultfd access");
        }
        ok
    }

    fn ps() -> usize {
        system_page_size()
    }

    fn region(pages: usize, resident_limit: usize, backend: &MemBackend) -> Region {
        region_with(pages, resident_limit, backend, true)
    }

    fn region_with(pages: usize, resident_limit: usize, backend: &MemBackend, prefetch: bool) -> Region {
        let config = RegionConfig { prefetch, ..RegionConfig::new(pages * ps(), resident_limit, std::env::temp_dir()) };
        Region::new(Box::new(backend.clone()), config).expect("region")
    }

    /// A small deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn fill(&mut self, bytes: &mut [u8]) {
            for chunk in bytes.chunks_mut(8) {
                let v = self.next().to_ne_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }

    /// The application's view, mirrored: writes go to both, reads are compared.
    struct Shadow<'a> {
        region: &'a Region,
        bytes: Vec<u8>,
    }

    impl<'a> Shadow<'a> {
        fn new(region: &'a Region) -> Self {
            Shadow { region, bytes: vec![0; region.len()] }
        }

        fn write(&mut self, offset: usize, data: &[u8]) {
            self.region.write(offset, data);
            self.bytes[offset..offset + data.len()].copy_from_slice(data);
        }

        /// Writes a whole page of random bytes, starting with `first`.
        fn write_page(&mut self, rng: &mut Rng, p: usize, first: u8) {
            let mut page = vec![0; ps()];
            rng.fill(&mut page);
            page[0] = first;
            self.write(p * ps(), &page);
        }

        fn check(&self, offset: usize, len: usize) {
            let mut got = vec![0; len];
            self.region.read(offset, &mut got);
            let want = &self.bytes[offset..offset + len];
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "byte {} (page {}) reads {:#x}, last written {:#x}",
                    offset + at,
                    (offset + at) / ps(),
                    got[at],
                    want[at]
                );
            }
        }

        fn check_page(&self, p: usize) {
            self.check(p * ps(), ps());
        }

        fn check_all(&self) {
            for p in 0..self.bytes.len() / ps() {
                self.check_page(p);
            }
        }
    }

    fn discard(region: &Region, first: usize, count: usize) {
        // SAFETY: the range is inside the region.
        let r = unsafe { libc::madvise(region.as_ptr().add(first * ps()).cast(), count * ps(), libc::MADV_DONTNEED) };
        assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
    }

    #[test]
    fn random_and_sequential_access_reads_what_was_written() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let (pages, limit, written) = (256, 64, 200);
        let region = region(pages, limit, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let rejected = |p: usize| p % 7 == 3;
        let first = |p: usize| if rejected(p) { REJECT } else { 1 + (p % 200) as u8 };

        // Sequential: write pages 0..200 (pages 200..256 are never written).
        for p in 0..written {
            shadow.write_page(&mut rng, p, first(p));
        }
        shadow.check_all();
        // Random: partial writes (never byte 0, which says whether the pool refuses the
        // page) and whole-page reads, including of never-written pages.
        for _ in 0..3000 {
            let p = rng.below(pages);
            if p < written && rng.below(2) == 0 {
                let at = 1 + rng.below(ps() - 1);
                let len = 1 + rng.below(ps() - at);
                let mut data = vec![0; len];
                rng.fill(&mut data);
                shadow.write(p * ps() + at, &data);
            } else {
                shadow.check_page(p);
            }
        }
        shadow.check_all();

        let stats = region.stats();
        println!("{stats:#?}");
        assert!(stats.resident_pages <= limit as u64, "{stats:#?}");
        assert!(stats.stores > 0 && stats.store_calls < stats.stores, "evictions are batched: {stats:#?}");
        assert!(stats.pool_loads > 0 && stats.file_loads > 0, "{stats:#?}");
        assert!(stats.rejected_to_file > 0 && stats.zero_fills > 0 && stats.wp_faults > 0, "{stats:#?}");
        assert!(stats.clean_drops > 0, "{stats:#?}");
        assert_eq!(stats.load_failures + stats.io_errors, 0, "{stats:#?}");
        assert!(
            stats.missing_fault_latency.count > 0
                && stats.missing_fault_latency.p50_ns <= stats.missing_fault_latency.p99_ns
        );
        {
            let pool = backend.pool();
            // Never-written pages cost no backend call; refused pages are not in the pool.
            for p in written..pages {
                let p = p as u64;
                assert!(!pool.stored.contains(&p) && !pool.loaded.contains(&p), "page {p} went to the pool");
            }
            assert!(pool.pages.keys().all(|&p| !rejected(p as usize)));
            assert_eq!(stats.pool_pages, pool.pages.len() as u64);
        }

        // The application discards pages 10..40 (some resident, most not): zeros from now on,
        // and the pool and file lose them.
        discard(&region, 10, 30);
        shadow.bytes[10 * ps()..40 * ps()].fill(0);
        let loads_before = backend.pool().loaded.len();
        for p in 10..40 {
            shadow.check_page(p);
        }
        // (Reading them in order may prefetch the pages after them: those are loaded.)
        let loaded_since = backend.pool().loaded[loads_before..].to_vec();
        assert!(loaded_since.iter().all(|p| !(10..40).contains(p)), "discarded pages are not loaded: {loaded_since:?}");
        assert!((10..40).all(|p| !backend.pool().pages.contains_key(&p)));
        let stats = region.stats();
        assert_eq!(stats.app_discarded_pages, 30, "{stats:#?}");
        // They work as ordinary pages afterwards.
        for p in 10..40 {
            shadow.write_page(&mut rng, p, first(p));
        }
        shadow.check_all();
        assert_eq!(region.stats().load_failures, 0);
    }

    #[test]
    fn clean_pages_are_dropped_without_a_store() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(64, 16, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(7);
        for p in 0..64 {
            shadow.write_page(&mut rng, p, 1);
        }
        shadow.check_all(); // the last dirty pages are stored here
        let (stores, drops) = (region.stats().stores, region.stats().clean_drops);
        for _ in 0..2 {
            shadow.check_all();
        }
        let stats = region.stats();
        assert_eq!(stats.stores, stores, "reading stores nothing: {stats:#?}");
        assert!(stats.clean_drops >= drops + 2 * 48, "{stats:#?}");
        // A page written after being read back is dirty again and stored again.
        shadow.write(5 * ps() + 9, b"dirty again");
        for p in 16..64 {
            shadow.check_page(p);
        }
        shadow.check_page(5);
        assert!(backend.pool().stored.iter().filter(|&&p| p == 5).count() >= 2);
    }

    #[test]
    fn zero_pages_read_then_written_are_not_lost() {
        if !uffd_available() {
            return;
        }
        // Without prefetch every first read is a zero-fill fault and every write then a WP
        // fault; with it, most zero pages come in prefetched, writable.
        for prefetch in [false, true] {
            let backend = MemBackend::default();
            let region = region_with(32, 4, &backend, prefetch);
            let mut shadow = Shadow::new(&region);
            let mut rng = Rng(3);
            // Read first (zero page, write-protected), then write: the WP fault marks it dirty.
            for p in 0..32 {
                shadow.check_page(p);
                shadow.write_page(&mut rng, p, 2);
            }
            shadow.check_all();
            // Pages written with zeros are dropped, not stored, and read back as zeros.
            let zeros = vec![0u8; ps()];
            for p in 0..8 {
                shadow.write(p * ps(), &zeros);
            }
            shadow.check_all();
            let stats = region.stats();
            assert!(stats.zero_drops >= 8, "{stats:#?}");
            if prefetch {
                // Prefetched zeros are writable: their writes take no fault.
                assert!(stats.prefetched_pages > 0 && stats.wp_faults < 32, "{stats:#?}");
            } else {
                assert!(stats.wp_faults >= 32 && stats.zero_fills >= 32, "{stats:#?}");
            }
            assert_eq!(stats.load_failures, 0);
        }
    }

    #[test]
    fn handed_back_pages_read_back() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(64, 8, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(11);
        for p in 0..64 {
            shadow.write_page(&mut rng, p, 3);
        }
        // The host shrinks the pool: it takes pages (load + invalidate) and hands them back.
        let mut handed = 0;
        for p in 0..40u64 {
            let taken = backend.pool().pages.remove(&p);
            if let Some(page) = taken {
                region.take_back(p, &page).unwrap();
                handed += 1;
            }
        }
        assert!(handed >= 30);
        // A stale copy (not what the region stored) is ignored.
        let stale_page = backend.pool().pages.keys().copied().find(|&p| p >= 40).unwrap();
        region.take_back(stale_page, &vec![0xAB; ps()]).unwrap();
        // A page the host took is still in flight while the application faults on it.
        let late = backend.pool().pages.keys().copied().find(|&p| p >= 40 && p != stale_page).unwrap();
        let late_page = backend.pool().pages.remove(&late).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                region.take_back(late, &late_page).unwrap();
            });
            shadow.check_page(late as usize);
        });
        shadow.check_all();
        let stats = region.stats();
        assert_eq!(stats.take_backs, handed + 1, "{stats:#?}");
        assert_eq!(stats.stale_take_backs, 1, "{stats:#?}");
        assert!(stats.file_loads >= handed, "{stats:#?}");
        assert_eq!(stats.load_failures, 0, "{stats:#?}");
        assert!(region.take_back(0, &[0; 3]).is_err());
        assert!(region.take_back(64, &vec![0; ps()]).is_err());
    }

    #[test]
    fn writethrough_pages_survive_the_pool_dropping_them() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        backend.pool().writethrough = true;
        let region = region(48, 8, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(5);
        for p in 0..48 {
            shadow.write_page(&mut rng, p, 4);
        }
        let stats = region.stats();
        assert!(stats.writethrough_to_file > 0 && stats.file_pages == stats.writethrough_to_file, "{stats:#?}");
        // The pool reclaims every writethrough page: they come from the file.
        backend.pool().pages.clear();
        shadow.check_all();
        let stats = region.stats();
        assert!(stats.file_loads > 0 && stats.load_failures == 0, "{stats:#?}");
    }

    #[test]
    fn concurrent_application_threads() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let (pages, limit) = (192, 32);
        let region = region(pages, limit, &backend);
        std::thread::scope(|s| {
            for t in 0..2usize {
                let region = &region;
                s.spawn(move || {
                    let mine = t * pages / 2..(t + 1) * pages / 2;
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ t as u64);
                    let mut shadow = vec![0u8; region.len()];
                    let mut page = vec![0u8; ps()];
                    for _ in 0..3000 {
                        let p = mine.start + rng.below(mine.len());
                        let range = p * ps()..(p + 1) * ps();
                        if rng.below(2) == 0 {
                            rng.fill(&mut page);
                            if rng.below(5) == 0 {
                                page[0] = REJECT;
                            }
                            region.write(range.start, &page);
                            shadow[range].copy_from_slice(&page);
                        } else {
                            region.read(range.start, &mut page);
                            assert!(page == shadow[range], "thread {t}: page {p} differs");
                        }
                    }
                    for p in mine {
                        let range = p * ps()..(p + 1) * ps();
                        region.read(range.start, &mut page);
                        assert!(page == shadow[range], "thread {t}: page {p} differs at the end");
                    }
                });
            }
        });
        let stats = region.stats();
        assert!(stats.resident_pages <= limit as u64 && stats.stores > 0, "{stats:#?}");
        assert_eq!(stats.load_failures + stats.io_errors, 0, "{stats:#?}");
    }

    #[test]
    fn application_discards_race_with_faults() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let (pages, limit) = (128, 24);
        let region = region(pages, limit, &backend);
        std::thread::scope(|s| {
            // Thread 0 writes and reads its pages; thread 1 writes its pages, discards them
            // with madvise (in flight while thread 0's faults are resolved: EAGAIN, retried)
            // and checks they read as zeros.
            for t in 0..2usize {
                let region = &region;
                s.spawn(move || {
                    let mine = t * pages / 2..(t + 1) * pages / 2;
                    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ t as u64);
                    let mut shadow = vec![0u8; region.len()];
                    let mut page = vec![0u8; ps()];
                    for round in 0..1500 {
                        let p = mine.start + rng.below(mine.len());
                        let range = p * ps()..(p + 1) * ps();
                        match (t, rng.below(3)) {
                            (1, 0) if round % 2 == 0 => {
                                let count = 1 + rng.below(4.min(mine.end - p));
                                discard(region, p, count);
                                shadow[p * ps()..(p + count) * ps()].fill(0);
                            }
                            (_, 0 | 1) => {
                                rng.fill(&mut page);
                                region.write(range.start, &page);
                                shadow[range].copy_from_slice(&page);
                            }
                            _ => {
                                region.read(range.start, &mut page);
                                assert!(page == shadow[range], "thread {t}: page {p} differs");
                            }
                        }
                    }
                    for p in mine {
                        let range = p * ps()..(p + 1) * ps();
                        region.read(range.start, &mut page);
                        assert!(page == shadow[range], "thread {t}: page {p} differs at the end");
                    }
                });
            }
        });
        let stats = region.stats();
        assert!(stats.app_discarded_pages > 0 && stats.stores > 0, "{stats:#?}");
        assert_eq!(stats.load_failures + stats.io_errors, 0, "{stats:#?}");
    }

    #[test]
    fn kernel_accesses_fault_like_user_accesses() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(32, 4, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(9);
        for p in 0..32 {
            shadow.write_page(&mut rng, p, 5);
        }
        let mut fds = [0; 2];
        // SAFETY: creates a pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the pipe descriptors are fresh and owned here.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // write(2) from an evicted page: the kernel's read of it faults and is served.
        // SAFETY: page 0 is inside the region.
        let n = unsafe { libc::write(tx.as_raw_fd(), region.as_ptr().cast(), ps()) };
        assert_eq!(n, ps() as isize, "{}", io::Error::last_os_error());
        let mut got = vec![0u8; ps()];
        // SAFETY: reads into a buffer of that length.
        assert_eq!(unsafe { libc::read(rx.as_raw_fd(), got.as_mut_ptr().cast(), ps()) }, ps() as isize);
        assert!(got == shadow.bytes[..ps()]);
        // read(2) into an evicted page and into a clean resident one: the kernel's write faults.
        let mut incoming = vec![0u8; ps()];
        for p in [1usize, 1] {
            rng.fill(&mut incoming);
            // SAFETY: writes a buffer of that length.
            assert_eq!(unsafe { libc::write(tx.as_raw_fd(), incoming.as_ptr().cast(), ps()) }, ps() as isize);
            // SAFETY: page `p` is inside the region.
            let n = unsafe { libc::read(rx.as_raw_fd(), region.as_ptr().add(p * ps()).cast(), ps()) };
            assert_eq!(n, ps() as isize, "{}", io::Error::last_os_error());
            shadow.bytes[p * ps()..(p + 1) * ps()].copy_from_slice(&incoming);
        }
        shadow.check_all();
        assert_eq!(region.stats().load_failures, 0);
    }

    #[test]
    fn evictions_across_split_mappings() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(64, 16, &backend);
        // The application splits the mapping into several VMAs (any flag change does): one
        // discard of contiguous victims then arrives as one REMOVE event per VMA.
        for p in [5usize, 20, 21, 40] {
            // SAFETY: one page inside the region; MADV_DOFORK changes only fork behaviour.
            assert_eq!(unsafe { libc::madvise(region.as_ptr().add(p * ps()).cast(), ps(), libc::MADV_DOFORK) }, 0);
        }
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(17);
        for _ in 0..2 {
            for p in 0..64 {
                shadow.write_page(&mut rng, p, 7);
            }
            shadow.check_all();
        }
        let stats = region.stats();
        assert_eq!(stats.app_discarded_pages, 0, "{stats:#?}");
        assert_eq!(stats.load_failures, 0, "{stats:#?}");
    }

    #[test]
    fn a_lost_page_is_counted_and_poisoned() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(16, 2, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(19);
        for p in 0..16 {
            shadow.write_page(&mut rng, p, 8);
        }
        // The pool loses page 0 and nothing hands it back.
        assert!(backend.pool().pages.remove(&0).is_some());
        let mut fds = [0; 2];
        // SAFETY: creates a pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the pipe descriptors are fresh and owned here.
        let (_rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A kernel access (an application access would get SIGBUS) fails instead of reading
        // made-up contents.
        // SAFETY: page 0 is inside the region.
        let n = unsafe { libc::write(tx.as_raw_fd(), region.as_ptr().cast(), ps()) };
        let error = io::Error::last_os_error();
        // (Counters are published once the handler is done with a message.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while region.stats().load_failures == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let poisoned = region.stats().load_failures == 1;
        assert!(poisoned, "{:#?}", region.stats());
        assert_eq!(n, -1, "a poisoned page was read");
        assert_eq!(error.raw_os_error(), Some(libc::EFAULT));
        // Discarding the page makes it usable again; the others are intact.
        discard(&region, 0, 1);
        shadow.bytes[..ps()].fill(0);
        shadow.check_all();
    }

    /// Writes every page of `region` (random bytes), so all but the last `resident_limit` or so
    /// are in the pool, and returns the shadow.
    fn filled(region: &Region) -> Shadow<'_> {
        let mut shadow = Shadow::new(region);
        let mut rng = Rng(0x5eed);
        for p in 0..region.len() / ps() {
            shadow.write_page(&mut rng, p, 1 + (p % 200) as u8);
        }
        shadow
    }

    /// Reads `order`'s pages, checking every byte; the stats' change over the reads.
    fn read_pass(shadow: &Shadow<'_>, order: impl IntoIterator<Item = usize>) -> RegionStats {
        let before = shadow.region.stats();
        for p in order {
            shadow.check_page(p);
        }
        // The handler publishes after each message; the last one may lag a little.
        std::thread::sleep(Duration::from_millis(20));
        let after = shadow.region.stats();
        RegionStats {
            missing_faults: after.missing_faults - before.missing_faults,
            pool_loads: after.pool_loads - before.pool_loads,
            prefetched_pages: after.prefetched_pages - before.prefetched_pages,
            prefetch_hits: after.prefetch_hits - before.prefetch_hits,
            prefetch_late: after.prefetch_late - before.prefetch_late,
            prefetch_wasted: after.prefetch_wasted - before.prefetch_wasted,
            prefetch_batches: after.prefetch_batches - before.prefetch_batches,
            prefetch_copies: after.prefetch_copies - before.prefetch_copies,
            load_failures: after.load_failures,
            io_errors: after.io_errors,
            ..RegionStats::default()
        }
    }

    #[test]
    fn prefetch_covers_sequential_strided_and_backward_scans() {
        if !uffd_available() {
            return;
        }
        let (pages, limit) = (1024, 256);
        for (name, order) in [
            ("sequential", (0..pages).collect::<Vec<_>>()),
            ("backwards", (0..pages).rev().collect()),
            ("every 4th page", (0..pages).step_by(4).collect()),
        ] {
            let backend = MemBackend::default();
            let region = region(pages, limit, &backend);
            let shadow = filled(&region);
            let pool_calls = backend.pool().load_many_calls;
            let d = read_pass(&shadow, order.iter().copied());
            println!("{name}: {d:#?}");
            assert!(d.prefetch_coverage() >= 0.8, "{name}: coverage {:.2}: {d:#?}", d.prefetch_coverage());
            assert!(d.prefetch_accuracy() >= 0.8, "{name}: accuracy {:.2}: {d:#?}", d.prefetch_accuracy());
            assert_eq!(d.load_failures + d.io_errors, 0, "{name}: {d:#?}");
            // One batch (one round trip) per prefetch, the faulting page included.
            assert_eq!(backend.pool().load_many_calls - pool_calls, d.prefetch_batches as usize, "{name}");
            assert!(d.prefetch_batches <= d.missing_faults, "{name}: {d:#?}");
            if name != "every 4th page" {
                // Contiguous runs: far fewer copies than pages.
                assert!(d.prefetch_copies * 4 <= d.prefetched_pages, "{name}: {d:#?}");
            }
            assert!(region.stats().resident_pages <= limit as u64);
            shadow.check_all();
        }
    }

    #[test]
    fn random_access_prefetches_almost_nothing() {
        if !uffd_available() {
            return;
        }
        let (pages, limit) = (1024, 256);
        let backend = MemBackend::default();
        let region = region(pages, limit, &backend);
        let shadow = filled(&region);
        let mut rng = Rng(99);
        let order: Vec<usize> = (0..3000).map(|_| rng.below(pages)).collect();
        let d = read_pass(&shadow, order);
        println!("random: {d:#?}");
        assert!(d.missing_faults > 1000, "{d:#?}");
        assert!(d.prefetched_pages * 20 <= d.missing_faults, "at most 5% of the faults: {d:#?}");
        assert_eq!(d.load_failures + d.io_errors, 0, "{d:#?}");
        shadow.check_all();
    }

    #[test]
    fn prefetch_off_prefetches_nothing() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region_with(512, 128, &backend, false);
        let shadow = filled(&region);
        let d = read_pass(&shadow, 0..512);
        assert_eq!((d.prefetched_pages, d.prefetch_batches, d.prefetch_coverage()), (0, 0, 0.0), "{d:#?}");
        assert!(d.missing_faults >= 384, "{d:#?}");
        assert_eq!(backend.pool().load_many_calls, 0);
    }

    #[test]
    fn prefetched_pages_written_discarded_or_evicted_stay_right() {
        if !uffd_available() {
            return;
        }
        // A small resident limit: prefetched pages are evicted, written, discarded.
        let (pages, limit) = (256, 16);
        let backend = MemBackend::default();
        let region = region(pages, limit, &backend);
        let mut shadow = filled(&region);
        let mut rng = Rng(3);
        for round in 0..4 {
            for p in 0..pages {
                match rng.below(10) {
                    0 => shadow.write(p * ps() + 100, &[round as u8 + 1; 64]),
                    1 if p + 2 < pages => {
                        // Discard a page ahead of the scan (maybe prefetched just now).
                        discard(&region, p + 2, 1);
                        shadow.bytes[(p + 2) * ps()..(p + 3) * ps()].fill(0);
                    }
                    _ => shadow.check_page(p),
                }
            }
        }
        shadow.check_all();
        let stats = region.stats();
        println!("{stats:#?}");
        assert!(stats.prefetched_pages > 0 && stats.prefetch_hits > 0, "{stats:#?}");
        assert!(stats.resident_pages <= limit as u64, "{stats:#?}");
        assert_eq!(stats.load_failures + stats.io_errors, 0, "{stats:#?}");
    }

    #[test]
    fn the_owner_gets_the_backend_back() {
        if !uffd_available() {
            return;
        }
        let backend = MemBackend::default();
        let region = region(16, 2, &backend);
        let mut shadow = Shadow::new(&region);
        let mut rng = Rng(13);
        for p in 0..16 {
            shadow.write_page(&mut rng, p, 6);
        }
        let mut back = region.into_backend().unwrap();
        assert!(!backend.pool().pages.is_empty(), "dropping a region does not invalidate its pages");
        back.invalidate_area().unwrap();
        assert!(backend.pool().pages.is_empty());
        assert_eq!(backend.pool().invalidate_areas, 1);
    }

    #[test]
    fn without_access_the_error_names_what_is_missing() {
        if uffd_available() {
            return; // run the test binary as an unprivileged user to exercise this
        }
        let config = RegionConfig::new(ps(), 1, std::env::temp_dir());
        let err = Region::new(Box::new(MemBackend::default()), config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("/dev/userfaultfd"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let backend = MemBackend::default();
        let config = |len, resident_limit| RegionConfig::new(len, resident_limit, std::env::temp_dir());
        let err = Region::new(Box::new(backend.clone()), config(ps() + 1, 4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Region::new(Box::new(backend.clone()), config(ps(), 0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
