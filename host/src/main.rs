//! The `tmem` binary: a thin command line over `tmem-host`. `tmem serve` runs a host; the
//! client commands (`tmem plugin|pool|page ...`) live in [`tmem_host::cli`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tmem_host::server::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "tmem",
    version,
    about = "Transcendent memory in userspace: frontswap pools backed by sandboxed Wasm plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host.
    Serve {
        /// Address of the HTTP listener.
        #[arg(long, default_value = "127.0.0.1:7411", env = "TMEM_LISTEN")]
        listen: SocketAddr,
        /// Directory for the host's state.
        #[arg(long, default_value = "tmem-data", env = "TMEM_DATA_DIR")]
        data_dir: PathBuf,
        /// Create a `[zstd, ram]` pool named `demo` at start.
        #[arg(long)]
        demo_pool: bool,
        /// Also serve as a memory server for other hosts' `remote` stores on this address
        /// (peers authenticate with this host's API token). Off by default.
        #[arg(long, value_name = "ADDR", env = "TMEM_PEER_LISTEN")]
        peer_listen: Option<SocketAddr>,
        /// The frontends' Unix socket [default: DATA_DIR/tmem.sock].
        #[arg(long, value_name = "PATH", env = "TMEM_SOCKET")]
        socket: Option<PathBuf>,
        /// Lock all of the host's memory (mlockall) at start: needed when this machine's own
        /// kernel swaps to the host's NBD devices (ublk devices lock it themselves).
        #[arg(long)]
        mlock: bool,
    },
    /// Run a host and a verified workload in a userfaultfd region 4x larger than its
    /// resident limit, over a `[zstd, ram]` pool (needs root for userfaultfd).
    Demo {
        /// Address of the host's HTTP listener (the dashboard shows the run live).
        #[arg(long, default_value = "127.0.0.1:7411", env = "TMEM_LISTEN")]
        listen: SocketAddr,
        /// Directory for the host's state.
        #[arg(long, default_value = "tmem-data", env = "TMEM_DATA_DIR")]
        data_dir: PathBuf,
        /// How long the workload runs.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Size of the region in MiB (a quarter of it may be resident).
        #[arg(long, default_value_t = 64)]
        region_mib: usize,
        /// After the workload, keep the host serving (API, dashboard) until Ctrl-C / SIGTERM.
        #[arg(long)]
        then_serve: bool,
    },
    #[command(flatten)]
    Client(tmem_host::cli::ClientCommand),
}

fn main() -> ExitCode {
    tmem_host::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { listen, data_dir, demo_pool, peer_listen, socket, mlock } => {
            serve(ServeConfig { listen, data_dir, demo_pool, peer_listen, socket, mlock })
        }
        Command::Demo { listen, data_dir, seconds, region_mib, then_serve } => {
            let config = tmem_host::demo::DemoConfig { listen, data_dir, seconds, region_mib, then_serve };
            return match tmem_host::demo::run(&config) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("tmem demo: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Client(command) => return tmem_host::cli::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tmem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(server::serve(&config, server::shutdown_signal()))
}
