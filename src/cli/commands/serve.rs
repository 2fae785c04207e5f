//! `tmem serve` and `tmem demo`: the commands that run a host in this process (over
//! [`tmem_host::server`] and [`tmem_host::demo`]) rather than talk to one.

use tmem_host::demo::DemoConfig;
use tmem_host::server::{self, ServeConfig};

/// Runs a host until Ctrl-C or SIGTERM.
pub fn serve(config: &ServeConfig) -> anyhow::Result<()> {
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
