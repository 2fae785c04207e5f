//! The `tmem` binary: a thin command line over `tmem-host`. `tmem serve` runs a host; the
//! client commands (`tmem plugin|pool|page ...`) live in [`tmem_host::cli`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tmem_host::server::{self, ServeConfig};

#[derive(Parser)]
#[command(name = "tmem", version, about = "Transcendent memory in userspace: frontswap pools backed by sandboxed Wasm plugins")]
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
    },
    #[command(flatten)]
    Client(tmem_host::cli::ClientCommand),
}

fn main() -> ExitCode {
    tmem_host::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { listen, data_dir, demo_pool, peer_listen, socket } => {
            serve(ServeConfig { listen, data_dir, demo_pool, peer_listen, socket })
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
    runtime.block_on(server::serve(&config, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
