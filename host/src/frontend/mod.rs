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

pub use crate::memory::{become_io_flusher, lock_process_memory, prefault_stack};
