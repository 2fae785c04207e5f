//! Block frontends: block devices whose pages live in a pool — frontswap at the block layer.
//! A kernel (or QEMU, or any libnbd program) reads and writes the device; every write is a
//! store, every read a load, every discard an invalidate, and the pages the pool refuses go
//! to the device's own backing file, exactly as frontswap's swap device took them.
//!
//! # Layout
//!
//! - [`device`] — [`BlockDevice`](device::BlockDevice): the transport-independent core (the
//!   per-page map of where each page lives, the backing file, flush, shrink's take-back).
//! - [`nbd`] — [`NbdServer`](nbd::NbdServer): the NBD transport (fixed newstyle, structured
//!   replies, Unix socket or TCP).
//! - [`ublk`] — [`UblkServer`](ublk::UblkServer): the ublk transport (`/dev/ublkbN`, served
//!   through the kernel's ublk driver; locked memory, user recovery).
//! - [`attach`] — [`BlockDevices`](attach::BlockDevices): devices attached through the API,
//!   kept in the catalog and served again after a restart.

pub mod attach;
pub mod device;
pub mod nbd;
pub mod ublk;
