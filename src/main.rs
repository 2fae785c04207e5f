//! The `tmem` binary: `tmem serve` runs a host, `tmem demo` runs a host and a verified
//! workload, and the client commands (`tmem plugin|pool|page ...`) talk to a running host over
//! the REST API. This file parses, dispatches and turns outcomes into exit codes; the command
//! line itself lives in [`cli`], the host in `tmem-host`.
//!
//! Exit codes: 0 on success, 1 when the server (or anything else) says no or the demo read a
//! page back wrong, 2 for usage errors (clap's own), [`EXIT_REJECTED`] when a page store was
//! rejected (an expected outcome of frontswap, not an error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};
use cli::{Done, commands};

/// Counts heap allocations per thread, so `/metrics` can show what the I/O threads allocate.
#[global_allocator]
static ALLOCATOR: tmem_host::memory::alloc_count::CountingAllocator =
    tmem_host::memory::alloc_count::CountingAllocator::system();

/// The exit code of a store the pool rejected.
const EXIT_REJECTED: u8 = 3;

fn main() -> ExitCode {
    tmem_host::telemetry::init();
    match Cli::parse().command {
        Command::Serve(args) => match args.into_config().map_err(anyhow::Error::from).and_then(|c| commands::serve(&c))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tmem: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo(args) => match commands::demo(&args.into_config()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("tmem demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Generate { what, out_dir } => match cli::generate::generate(what, &out_dir) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tmem generate: cannot write into {}: {e}", out_dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Client(command) => match commands::execute(*command) {
            Ok(Done::Ok) => ExitCode::SUCCESS,
            Ok(Done::Rejected) => ExitCode::from(EXIT_REJECTED),
            Err(e) => {
                eprintln!("tmem: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
