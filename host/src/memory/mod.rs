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
