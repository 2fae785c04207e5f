//! `tmem serve` and `tmem demo`: the commands that run a host in this process (over
//! [`tmem_host::server`] and [`tmem_host::demo`]) rather than talk to one.

use tmem_host::demo::DemoConfig;
use tmem_host::server::{self, ServeConfig};

/// Runs a host until Ctrl-C or SIGTERM.
pub fn serve(config: &ServeConfig) -> anyhow::Result<()> {
    if config.mlock {
        // A host that serves this machine's swap: the main thread becomes an I/O flusher
        // before any other thread starts, and every thread inherits it — the runtime's, the
        // pools' flushers and sled's own I/O threads (`sled-io-N`, which write its log with
        // buffered writes): an allocation in any of them never waits on swap-out, which would
        // wait on this very host (the guest's swap-restart hung so, sled's I/O thread in
        // direct reclaim writing a page out to the ublk device this host serves).
        tmem_host::frontend::become_io_flusher();
    }
    // The runtime's threads serve the frontend socket and the control plane: with memory
    // locked (--mlock, or a ublk device), their stacks are touched ahead like the I/O threads'.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(tmem_host::frontend::prefault_stack)
        .build()?;
    runtime.block_on(server::serve(config, server::shutdown_signal()))
}

/// Runs the demo; `Ok(true)` when every page read back right.
pub fn demo(config: &DemoConfig) -> anyhow::Result<bool> {
    tmem_host::demo::run(config)
}
