//! tmem's integration tests: one binary (wasmtime's layout), one module per boundary. They
//! drive real components: the real Wasm plugins built from `plugins/`, a real host, a real
//! `tmem serve` process on a loopback port.

mod api;
mod architecture;
mod cli;
mod common;
mod compat;
mod contract;
mod crash;
mod dashboard;
mod demo;
mod errors;
mod frontend;
mod governor;
mod hostile;
mod hot_swap;
mod io_path;
mod kernel_swap;
mod listeners;
mod lz4;
mod memory;
mod nbd;
mod nbd_tls;
mod openapi_fuzz;
mod peer;
mod persistence;
mod plugin_faults;
mod plugin_loading;
mod remote;
mod remote_tls;
mod rest_tls;
mod restart;
mod serve;
mod swap;
mod systemd;
mod tiers;
mod tokens;
mod unix_access;

/// Counts heap allocations per thread, as the `tmem` binary does.
#[global_allocator]
static ALLOCATOR: tmem_host::memory::alloc_count::CountingAllocator =
    tmem_host::memory::alloc_count::CountingAllocator::system();
