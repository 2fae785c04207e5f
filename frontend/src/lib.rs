//! `tmem-frontend`: what an application links to hand
//! pages to a tmem pool.
//!
//! - [`client`] — [`FrontendClient`](client::FrontendClient): the frontend protocol
//!   (`tmem_api::frontend`) over the host's Unix socket: attach, batched store/load/invalidate,
//!   and the host's take-back requests (shrink).
//! - [`region`] — [`Region`](region::Region): an anonymous memory region under userfaultfd whose
//!   cold pages live in a pool (or, when the pool refuses them, in a backing file).
//! - [`backing`] — [`BackingFile`](backing::BackingFile): the file of pages a pool refused
//!   (reserved and written with `O_DIRECT` for a block device, sparse for a region).
//! - [`locations`] — [`PageLocations`](locations::PageLocations): where each page is (pool,
//!   backing file, both, zeros, held, lost) and the placement rules over the backing file; the
//!   one implementation shared by the region and the host's block devices.
//! - [`prefetch`] — the region's prefetch policy: a majority-trend detector over recent fault
//!   deltas (Leap) and the adaptive prefetch amount.
//!
//! [`PageBackend`] is the seam between them: a region works with any backend (the protocol
//! client, or an in-memory one in tests).

pub mod backing;
pub mod client;
pub mod locations;
pub mod prefetch;
pub mod region;

use std::io;

/// What happened to a stored page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The pool keeps it.
    Kept,
    /// The pool keeps it, and the frontend must also keep its own copy (writethrough).
    KeptWritethrough,
    /// The pool refused it (the reason is a counter name); the frontend keeps it itself.
    Rejected(String),
}

/// Where a frontend's cold pages go: a pool, seen through some transport.
pub trait PageBackend: Send {
    /// Bytes per page of the pool.
    fn page_size(&self) -> usize;

    /// Stores pages (offset, exactly one page each), in one round trip where the transport
    /// allows; one outcome per page, in order.
    fn store_many(&mut self, pages: &[(u64, &[u8])]) -> io::Result<Vec<Stored>>;

    /// Loads the page at `offset` into `page`; `false` if the pool has none there.
    fn load(&mut self, offset: u64, page: &mut [u8]) -> io::Result<bool>;

    /// Loads the pages at `offsets` in one round trip where the transport allows (the
    /// default calls [`PageBackend::load`] for each): page `i` into
    /// `pages[i * page_size..(i + 1) * page_size]`, `found[i]` set to whether the pool had it.
    /// A page the pool could not produce is reported as not found (the caller loads it again
    /// alone to learn why); an error means none of the results can be trusted.
    ///
    /// `pages` holds at least `offsets.len()` pages and `found` at least `offsets.len()` flags.
    fn load_many(&mut self, offsets: &[u64], pages: &mut [u8], found: &mut [bool]) -> io::Result<()> {
        let ps = self.page_size();
        for (i, &offset) in offsets.iter().enumerate() {
            found[i] = self.load(offset, &mut pages[i * ps..(i + 1) * ps])?;
        }
        Ok(())
    }

    /// Drops the page at `offset` (absent is fine).
    fn invalidate(&mut self, offset: u64) -> io::Result<()>;

    /// Drops every page.
    fn invalidate_area(&mut self) -> io::Result<()>;
}
