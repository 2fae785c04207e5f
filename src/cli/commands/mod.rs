//! What each command does, one file per noun: [`serve`](mod@serve) (`tmem serve` and
//! `tmem demo`, which run a host in this process), and the client groups [`plugin`], [`pool`],
//! [`page`], [`token`] and [`swap`], which talk to a running `tmem serve` over [`tmem_api::client`]. This file
//! holds what the client groups share: the [`Session`] (a connected client and the output
//! mode) and [`execute`], which runs a client command.

mod page;
mod plugin;
mod pool;
mod serve;
mod swap;
mod token;

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tmem_api::client::{Client, ClientError};
use tmem_host::tls::{TlsClient, TlsFiles, https_connector};

pub use serve::{demo, serve};
pub use swap::SwapDevice;

use super::args::{ClientCommand, ConnectOptions, PageArgs, PluginArgs, PoolArgs, SwapArgs, TokenArgs};
use super::{CliError, Done, render};

/// Runs a client command against the server its connection options name.
pub fn execute(command: ClientCommand) -> Result<Done, CliError> {
    match command {
        ClientCommand::Plugin(PluginArgs { connect, command }) => plugin::run(&Session::open(connect)?, command),
        ClientCommand::Pool(PoolArgs { connect, command }) => pool::run(&Session::open(connect)?, command),
        ClientCommand::Page(PageArgs { connect, command }) => page::run(&Session::open(connect)?, command),
        ClientCommand::Token(TokenArgs { connect, command }) => token::run(&Session::open(connect)?, command),
        ClientCommand::Swap(SwapArgs { connect, command }) => {
            let data_dir = connect.data_dir.clone();
            swap::run(&Session::open(connect)?, &data_dir, command)
        }
    }
}

/// A connected client and the output mode.
struct Session {
    client: Client,
    json: bool,
}

impl Session {
    fn open(options: ConnectOptions) -> Result<Session, CliError> {
        let token = match options.token.filter(|t| !t.trim().is_empty()) {
            Some(token) => token.trim().to_string(),
            None => read_token(&options.data_dir)?,
        };
        let server = server_url(&options.server)?;
        let client = if server.starts_with("https://") {
            // OpenSSL, as the host's own TLS client: the system's CAs and --tls-ca, the name checked.
            let files = TlsFiles { ca: options.tls_ca.clone(), ..TlsFiles::default() };
            let tls = TlsClient::new(&files, false).map_err(|e| CliError::Message(format!("TLS: {e} (--tls-ca)")))?;
            Client::with_connector(&server, Some(token), https_connector(Arc::new(tls)))
        } else {
            Client::new(&server, Some(token))
        };
        Ok(Session { client, json: options.json })
    }

    /// Turns a client error into what the user reads.
    fn fail(&self, error: ClientError) -> CliError {
        match error {
            ClientError::Transport(reason) => CliError::Unreachable { url: self.client.base_url().to_string(), reason },
            ClientError::Decode(_) => CliError::Message(error.to_string()),
            api @ ClientError::Api { .. } => CliError::Api(api),
        }
    }

    /// Prints `value` as JSON in `--json` mode, else `human(value)`.
    fn show<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        render::show(self.json, value, human)
    }

    /// Prints a confirmation (not in `--json` mode: an empty response has no JSON).
    fn say(&self, line: &str) -> Result<(), CliError> {
        render::say(self.json, line)
    }
}

/// The server's base URL; `host:port` alone means `http://host:port`.
fn server_url(server: &str) -> Result<String, CliError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(CliError::Message("no server URL: pass --server URL or set TMEM_SERVER".into()));
    }
    Ok(if server.contains("://") { server.to_string() } else { format!("http://{server}") })
}

fn read_token(data_dir: &Path) -> Result<String, CliError> {
    let path = data_dir.join("token");
    let missing = || {
        CliError::Message(format!(
            "no API token: set TMEM_TOKEN, pass --token, or point --data-dir at the server's data dir ({} not found)",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(missing()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(CliError::Message(format!("cannot read the API token from {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_gets_a_scheme_if_it_has_none() {
        assert_eq!(server_url("127.0.0.1:7411").unwrap(), "http://127.0.0.1:7411");
        assert_eq!(server_url(" https://tmem.example/ ").unwrap(), "https://tmem.example/");
        assert!(server_url("").unwrap_err().to_string().contains("--server"));
    }

    #[test]
    fn a_missing_token_file_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("tmem-cli-no-token-{}", std::process::id()));
        let message = read_token(&dir).unwrap_err().to_string();
        assert!(message.starts_with("no API token: set TMEM_TOKEN, pass --token"), "{message}");
        assert!(message.contains("token not found"), "{message}");
    }
}
