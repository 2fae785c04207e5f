//! `tmem serve` and `tmem demo`: the commands that run a host in this process (over
//! [`tmem_host::server`] and [`tmem_host::demo`]) rather than talk to one.

use tmem_host::demo::DemoConfig;
use tmem_host::server::{self, ServeConfig};

/// Runs a host until Ctrl-C or SIGTERM.
pub fn serve(config: &ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(server::serve(config, server::shutdown_signal()))
}

/// Runs the demo; `Ok(true)` when every page read back right.
pub fn demo(config: &DemoConfig) -> anyhow::Result<bool> {
    tmem_host::demo::run(config)
}
