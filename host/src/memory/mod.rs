//! The host's own memory: what it costs and where it comes from.
//!
//! - [`alloc_count`] — per-thread heap-allocation counters (a counting global allocator the
//!   `tmem` binary installs) and the allocations and page faults of the I/O threads by role,
//!   the measurement behind "nothing allocates or faults on the I/O path" (issue 14).

pub mod alloc_count;
