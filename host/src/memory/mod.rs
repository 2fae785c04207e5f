//! The host's own memory: a budget that bounds what it keeps for pages, an arena that holds
//! them, and the measurement that proves the I/O path neither allocates nor faults.
//!
//! - [`budget`] — [`MemoryBudget`](budget::MemoryBudget): the limit and what is charged to it.
//! - [`arena`] — [`PageArena`](arena::PageArena): stored page bytes in size classes over
//!   committed spans, allocated without a fault or a heap allocation.
//! - [`governor`] — [`Governor`](governor::Governor): the budget's target from the machine's
//!   `MemAvailable` and memory pressure (PSI); the effective limit is min(operator's, target).
//! - [`alloc_count`] — per-thread heap-allocation counters (a counting global allocator the
//!   `tmem` binary installs) and the allocations and page faults of the I/O threads by role.
//!
//! And the process set-up of a host that serves its own kernel's swap: its memory locked and
//! its code read in ([`lock_process_memory`]), stacks touched ahead ([`prefault_stack`]), I/O
//! threads whose allocations never wait on I/O ([`become_io_flusher`]).

use std::io;

pub mod alloc_count;
pub mod arena;
pub mod budget;
pub mod governor;

/// The machine's memory as `/proc/meminfo` states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`, in bytes.
    pub total_bytes: u64,
    /// `MemAvailable`, in bytes.
    pub available_bytes: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo`; `None` if it cannot be read or lacks a field.
    pub fn read() -> Option<MemInfo> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |name: &str| {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some(MemInfo { total_bytes: kib("MemTotal:")? * 1024, available_bytes: kib("MemAvailable:")? * 1024 })
    }
}

/// `prctl(PR_SET_IO_FLUSHER, 1)` (Linux 5.6).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Marks the calling thread as part of writing pages out (`PR_SET_IO_FLUSHER`): its memory
/// allocations never wait for I/O, so a thread serving swap I/O cannot wait on itself. Needs
/// `CAP_SYS_RESOURCE`; without it the thread serves as before (logged at debug level).
pub fn become_io_flusher() {
    prefault_stack();
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        tracing::debug!("PR_SET_IO_FLUSHER: {}", io::Error::last_os_error());
    }
}

/// Locks every page of this process, present and future, in memory (once per process; later
/// calls report the first one's outcome). A process that serves its own kernel's swap must
/// never be swapped out itself: the kernel would swap the server's pages through the server
/// and stall. `MCL_ONFAULT` locks pages as they are touched, so the large address-space
/// reservations of the Wasm runtime are not populated up front.
pub fn lock_process_memory() -> io::Result<()> {
    static LOCKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOCKED
        .get_or_init(|| {
            // SAFETY: mlockall takes flags only.
            let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
            if rc == 0 {
                // MCL_ONFAULT locks only what is touched: code not yet run (the binary's and
                // the libraries' text) would be read from disk on its first call — a page-cache
                // allocation that may wait on reclaim, that is, on this host. Bring it all in.
                let populated = lock_file_mappings();
                MEMORY_LOCKED.store(true, std::sync::atomic::Ordering::Release);
                prefault_stack();
                tracing::info!(populated_mib = populated >> 20, "process memory locked (mlockall, code populated): the kernel can swap to this host's block devices");
                Ok(())
            } else {
                Err(io::Error::last_os_error().to_string())
            }
        })
        .clone()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot lock the host's memory (mlockall: {e}); a swap device whose server can be swapped out deadlocks — run as root or raise RLIMIT_MEMLOCK"),
            )
        })
}

/// Locks (and so reads in) every file mapping of the process: the binary, its libraries, and
/// whatever was mapped since (a plugin module's cached code). Returns the bytes locked.
pub fn lock_file_mappings() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
    let mut locked = 0;
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let path = fields.nth(3).unwrap_or("");
        if !path.starts_with('/') || !perms.starts_with('r') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        // SAFETY: a range this process has mapped; mlock only pins and populates it.
        if unsafe { libc::mlock(start as *const libc::c_void, end - start) } == 0 {
            locked += end - start;
        }
    }
    locked
}

/// Bytes of stack every I/O thread touches ahead ([`prefault_stack`]).
const PREFAULT_STACK_BYTES: usize = 256 << 10;

/// Whether [`lock_process_memory`] locked the process's memory.
static MEMORY_LOCKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`lock_process_memory`] locked the process's memory (the host serves swap).
pub fn is_locked() -> bool {
    MEMORY_LOCKED.load(std::sync::atomic::Ordering::Acquire)
}

/// Makes `len` bytes at `start` resident and writable now (`MADV_POPULATE_WRITE`, Linux
/// 5.14), without changing them: a page of it touched later takes no fault. Best effort.
pub fn populate_writable(start: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096usize;
    let first = (start as usize) & !(page - 1);
    let end = (start as usize + len).div_ceil(page) * page;
    if end > first {
        // SAFETY: advice over memory this process owns; POPULATE_WRITE never changes contents.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, MADV_POPULATE_WRITE) };
    }
}

/// Once the process's memory is locked: touches the next [`PREFAULT_STACK_BYTES`] of the
/// calling thread's stack, so that its stack never takes a page fault — an allocation —
/// later, while it serves swap I/O. (Unlocked, it does nothing: the pages would only be
/// resident for no use.)
#[inline(never)]
pub fn prefault_stack() {
    if !MEMORY_LOCKED.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let mut probe = [0u8; PREFAULT_STACK_BYTES];
    // SAFETY: a plain volatile write into a local array (the compiler must not drop it).
    unsafe { std::ptr::write_volatile(probe.as_mut_ptr().add(PREFAULT_STACK_BYTES - 1), 1) };
    for page in probe.chunks_mut(4096) {
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 1) };
    }
    std::hint::black_box(&probe);
}
