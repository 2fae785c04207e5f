//! The `tmem` command line, by concern:
//!
//! - [`args`] — what clap parses: the [`Cli`](args::Cli) parser and every subcommand (`serve`,
//!   `demo`, `plugin`, `pool`, `page`, `token`, `swap`), the value parsers, and the conversion of parsed
//!   arguments into the settings the host and the REST API take.
//! - [`commands`] — what each command does: `serve` and `demo` run a host in this process; the
//!   client groups (`plugin`, `pool`, `page`, one file each) talk to a running `tmem serve`
//!   over [`tmem_api::client`].
//! - [`config`] — the config file of `tmem serve --config` (`[serve]`, `[[pool]]`, `[[swap]]`).
//! - [`generate`] — `tmem generate man|completions DIR` (hidden): man pages and completions.
//! - [`render`] — what the client commands print: tables, `key: value` views, `--json`, human
//!   sizes and durations.
//! - [`system`] — the machine's side of `tmem swap`: `/proc/swaps`, `MemTotal`, the block
//!   drivers, free space, and the tools it runs (`mkswap`, `swapon`, `swapoff`, `nbd-client`).
//!
//! The client groups take the connection options anywhere after their name: `--server URL`
//! (`TMEM_SERVER`), `--token TOKEN` (`TMEM_TOKEN`) or else the token the server wrote to
//! `--data-dir DIR/token` (`TMEM_DATA_DIR`), and `--json` to print the server's JSON instead
//! of tables.

pub mod args;
pub mod commands;
pub mod config;
pub mod generate;
pub mod render;
pub mod system;

use std::fmt;

use tmem_api::client::ClientError;

/// How a client command that did not fail ended.
pub enum Done {
    /// Done as asked.
    Ok,
    /// A store was rejected.
    Rejected,
}

/// Why a client command failed, as the user should read it.
#[derive(Debug)]
pub enum CliError {
    /// The server said no: `MESSAGE (CODE, HTTP STATUS)`.
    Api(ClientError),
    /// No answer from the server.
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What the transport said.
        reason: String,
    },
    /// Anything else, already phrased.
    Message(String),
    /// The machine cannot do what `tmem swap` asks.
    System(system::SystemError),
}

impl From<system::SystemError> for CliError {
    fn from(error: system::SystemError) -> Self {
        CliError::System(error)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api(e) => write!(f, "{e}"),
            CliError::Unreachable { url, reason } if reason.starts_with("TLS handshake failed") => write!(
                f,
                "cannot reach tmem at {url}: {reason} (its certificate must chain to the system's CAs or \
                 --tls-ca/TMEM_TLS_CA, and name the URL's host)"
            ),
            CliError::Unreachable { url, reason } => {
                write!(f, "cannot reach tmem at {url}: {reason} (is `tmem serve` running?)")
            }
            CliError::Message(m) => f.write_str(m),
            CliError::System(e) => write!(f, "{e}"),
        }
    }
}
