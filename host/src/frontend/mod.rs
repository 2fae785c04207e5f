//! Frontends: everything that hands pages to a pool — the frontend socket, and block devices
//! whose pages live in a pool (frontswap at the block layer: a kernel, QEMU or any libnbd
//! program reads and writes the device; every write is a store, every read a load, every
//! discard an invalidate, and the pages the pool refuses go to the device's own backing file,
//! exactly as frontswap's swap device took them).
//!
//! # Layout
//!
//! - this module — [`Frontend`], what a pool sees of any frontend (shrink asks it to take pages
//!   back), and the process-wide set-up of hosts that serve their own kernel's swap
//!   ([`lock_process_memory`], [`become_io_flusher`]).
//! - [`socket`] — the frontends' Unix socket (the frontend protocol, `tmem_api::frontend`): the
//!   transport of `tmem_frontend::FrontendClient` and so of userfaultfd regions.
//! - [`device`] — [`BlockDevice`](device::BlockDevice): the transport-independent block-device
//!   core (requests to page operations over `tmem_frontend::PageLocations`, the backing file,
//!   flush, shrink's take-back).
//! - [`nbd`] — [`NbdServer`](nbd::NbdServer): the NBD transport (fixed newstyle, structured
//!   replies, Unix socket or TCP).
//! - [`ublk`] — [`UblkServer`](ublk::UblkServer): the ublk transport (`/dev/ublkbN`, served
//!   through the kernel's ublk driver; locked memory, user recovery).
//! - [`attach`] — [`BlockDevices`](attach::BlockDevices): devices attached through the API,
//!   kept in the catalog and served again after a restart.

pub mod attach;
pub mod device;
pub mod nbd;
pub mod socket;
pub mod ublk;

use std::io;

pub use tmem_api::rest::FrontendKind;

use crate::pool::Pool;

/// A frontend of a pool, as the pool sees it: shrink asks it to take pages back, listings
/// describe it. Every frontend implements it — a socket connection ([`socket`]) and a block
/// device ([`attach`]) — so the API lists them all in one shape.
pub trait Frontend: Send + Sync {
    /// Unique on this host: a block device's attachment id, or `socket-N`.
    fn id(&self) -> String;

    /// What kind of frontend this is.
    fn kind(&self) -> FrontendKind;

    /// The name it attached with (for logs and listings).
    fn name(&self) -> String;

    /// Where it is reached (a block device's client address, or the frontend socket's path).
    fn address(&self) -> String;

    /// Takes the pages at `offsets` back from `pool` (each with [`Pool::take`], which
    /// loads and invalidates in one step) and keeps them on its own device. Returns how many
    /// it took; offsets no longer present are skipped.
    fn take_back(&self, pool: &Pool, offsets: &[u64]) -> u64;

    /// The frontend's own counters, by name (shown by the API).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A block device's details; `None` for other frontends.
    fn device(&self) -> Option<DeviceDetails> {
        None
    }
}

/// A frontend as listings show it: what [`Frontend`] says of itself, in one value.
#[derive(Debug, Clone)]
pub struct FrontendDetails {
    /// [`Frontend::id`].
    pub id: String,
    /// [`Frontend::kind`].
    pub kind: FrontendKind,
    /// [`Frontend::name`].
    pub name: String,
    /// [`Frontend::address`].
    pub address: String,
    /// [`Frontend::counters`].
    pub counters: Vec<(&'static str, u64)>,
    /// [`Frontend::device`].
    pub device: Option<DeviceDetails>,
}

impl FrontendDetails {
    /// Everything `frontend` says of itself.
    pub fn of(frontend: &dyn Frontend) -> FrontendDetails {
        FrontendDetails {
            id: frontend.id(),
            kind: frontend.kind(),
            name: frontend.name(),
            address: frontend.address(),
            counters: frontend.counters(),
            device: frontend.device(),
        }
    }
}

/// A block device the host serves, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDetails {
    /// The NBD export name.
    pub export_name: String,
    /// Bytes.
    pub size_bytes: u64,
    /// The block size (the pool's page size).
    pub block_size: u32,
    /// The backing file, as given.
    pub backing: String,
    /// The NBD Unix socket, if any.
    pub socket: Option<String>,
    /// The NBD TCP address (port resolved), if any.
    pub listen: Option<String>,
    /// The ublk device number, if any.
    pub ublk_id: Option<u32>,
    /// Connections open now.
    pub connections: u64,
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
                let populated = populate_file_mappings();
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

/// Locks (and so reads in) every file-backed mapping of the process — the executable's and
/// the shared libraries' code and read-only data; returns the bytes locked.
fn populate_file_mappings() -> usize {
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

pub use crate::memory::become_io_flusher;
