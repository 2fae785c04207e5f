//! `tmem pool create|ls|show|set|rm|shrink|attach|detach`: the pools of a running host and
//! their block devices.

use super::Session;
use crate::cli::args::PoolCommand;
use crate::cli::render::{chain, human_bytes, pages, pool_table, pool_view};
use crate::cli::{CliError, Done};

/// Runs a `tmem pool` subcommand.
pub(super) fn run(session: &Session, command: PoolCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PoolCommand::Create(args) => {
            let config = args.into_config();
            let info = client.create_pool(&config).map_err(|e| session.fail(e))?;
            session.show(&info, |info| {
                format!("created pool {} ({}-byte pages): {}\n", info.name, info.page_size, chain(&info.backends))
            })?;
        }
        PoolCommand::Ls => {
            let pools = client.pools().map_err(|e| session.fail(e))?;
            session.show(&pools, |pools| pool_table(pools))?;
        }
        PoolCommand::Show { name } => {
            let info = client.pool(&name).map_err(|e| session.fail(e))?;
            session.show(&info, pool_view)?;
        }
        PoolCommand::Set(args) => {
            let name = args.name.clone();
            // `--tier` settings not given keep the current ones: read them first.
            let current = match &args.tier {
                Some(_) => client.pool(&name).map_err(|e| session.fail(e))?.tier.map(|t| t.config),
                None => None,
            };
            let patch = args.into_patch(current.as_ref());
            let info = client.update_pool(&name, &patch).map_err(|e| session.fail(e))?;
            session.show(&info, pool_view)?;
        }
        PoolCommand::Rm { name } => {
            client.remove_pool(&name).map_err(|e| session.fail(e))?;
            session.say(&format!("removed pool {name}"))?;
        }
        PoolCommand::Attach(args) => {
            let name = args.name.clone();
            let attached = client.attach_frontend(&name, &args.into_request()).map_err(|e| session.fail(e))?;
            session.show(&attached, |a| {
                let (size, block) = a.device.as_ref().map_or((0, 0), |d| (d.size_bytes, d.block_size));
                format!(
                    "attached block device {} to pool {name}: {} ({}, {block}-byte blocks)\n",
                    a.id,
                    a.address,
                    human_bytes(size),
                )
            })?;
        }
        PoolCommand::Detach { name, id } => {
            client.detach_frontend(&name, &id).map_err(|e| session.fail(e))?;
            session.say(&format!("detached block device {id} from pool {name}"))?;
        }
        PoolCommand::Shrink { name, target_pages } => {
            let result = client.shrink(&name, target_pages).map_err(|e| session.fail(e))?;
            session.show(&result, |r| {
                format!(
                    "shrank pool {name} from {} to {} ({} written back, {} dropped)\n",
                    pages(r.before),
                    pages(r.after),
                    r.written_back,
                    r.dropped
                )
            })?;
        }
    }
    Ok(Done::Ok)
}
