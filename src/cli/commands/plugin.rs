//! `tmem plugin upload|ls|show|rm`: the plugin registry of a running host.

use super::Session;
use crate::cli::args::PluginCommand;
use crate::cli::render::{human_bytes, plugin_table, plugin_view, short_sha};
use crate::cli::{CliError, Done};

/// Runs a `tmem plugin` subcommand.
pub(super) fn run(session: &Session, command: PluginCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PluginCommand::Upload { file, name } => {
            let wasm =
                std::fs::read(&file).map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))?;
            let version = client.upload_plugin(name.as_deref(), &wasm).map_err(|e| session.fail(e))?;
            session.show(&version, |v| {
                format!(
                    "registered plugin {} {} ({}, sha256 {}, {})\n",
                    v.name,
                    v.version,
                    v.kind,
                    short_sha(&v.sha256),
                    human_bytes(v.size)
                )
            })?;
        }
        PluginCommand::Ls => {
            let plugins = client.plugins().map_err(|e| session.fail(e))?;
            session.show(&plugins, |plugins| plugin_table(plugins))?;
        }
        PluginCommand::Show { name } => {
            let info = client.plugin(&name).map_err(|e| session.fail(e))?;
            session.show(&info, plugin_view)?;
        }
        PluginCommand::Rm { name, version } => {
            client.remove_plugin(&name, version.as_deref()).map_err(|e| session.fail(e))?;
            match version {
                Some(version) => session.say(&format!("removed plugin {name} version {version}"))?,
                None => session.say(&format!("removed plugin {name}"))?,
            }
        }
    }
    Ok(Done::Ok)
}
