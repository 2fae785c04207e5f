//! The host's own memory for pages: a budget that bounds it and an arena that holds it.
//!
//! - [`budget`] — [`MemoryBudget`](budget::MemoryBudget): the limit and what is charged to it.
//! - [`arena`] — [`PageArena`](arena::PageArena): stored page bytes in size classes over
//!   committed spans, allocated without a fault or a heap allocation.

pub mod arena;
pub mod budget;
