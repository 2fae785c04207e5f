//! The host's own memory: a budget that bounds what it keeps for pages, an arena that holds
//! them, and the measurement that proves the I/O path neither allocates nor faults.
//!
//! - [`budget`] — [`MemoryBudget`](budget::MemoryBudget): the limit and what is charged to it.
//! - [`arena`] — [`PageArena`](arena::PageArena): stored page bytes in size classes over
//!   committed spans, allocated without a fault or a heap allocation.
//! - [`alloc_count`] — per-thread heap-allocation counters (a counting global allocator the
//!   `tmem` binary installs) and the allocations and page faults of the I/O threads by role.

pub mod alloc_count;
pub mod arena;
pub mod budget;

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
    crate::frontend::prefault_stack();
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        tracing::debug!("PR_SET_IO_FLUSHER: {}", std::io::Error::last_os_error());
    }
}
