//! `tmem page put|get|rm`: single pages of a pool of a running host.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::Session;
use crate::cli::args::PageCommand;
use crate::cli::render::{pages, store_outcome, write_stdout};
use crate::cli::{CliError, Done};

/// Runs a `tmem page` subcommand.
pub(super) fn run(session: &Session, command: PageCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PageCommand::Put { pool, offset, file } => {
            let page_size = client.pool(&pool).map_err(|e| session.fail(e))?.page_size;
            let page = read_page(file.as_deref(), &pool, page_size)?;
            let result = client.put_page(&pool, offset, &page).map_err(|e| session.fail(e))?;
            session.show(&result, |r| format!("{}\n", store_outcome(r)))?;
            if result.outcome == "rejected" {
                return Ok(Done::Rejected);
            }
        }
        PageCommand::Get { pool, offset, output } => {
            let Some(page) = client.get_page(&pool, offset).map_err(|e| session.fail(e))? else {
                return Err(CliError::Message("page not present".into()));
            };
            match output {
                Some(path) if path.as_os_str() != "-" => std::fs::write(&path, &page)
                    .map_err(|e| CliError::Message(format!("cannot write {}: {e}", path.display())))?,
                _ => write_stdout(&page)?,
            }
        }
        PageCommand::Rm { pool, offset: _, all: true } => {
            let dropped = client.invalidate_area(&pool).map_err(|e| session.fail(e))?;
            session.show(&dropped, |d| format!("dropped {} from pool {pool}\n", pages(d.pages)))?;
        }
        PageCommand::Rm { pool, offset: Some(offset), all: false } => {
            if !client.remove_page(&pool, offset).map_err(|e| session.fail(e))? {
                return Err(CliError::Message("page not present".into()));
            }
            session.say(&format!("removed page {offset} from pool {pool}"))?;
        }
        PageCommand::Rm { offset: None, all: false, .. } => {
            // clap requires one of the two; kept as a message rather than a panic.
            return Err(CliError::Message("give an OFFSET or --all".into()));
        }
    }
    Ok(Done::Ok)
}

/// Reads exactly one page from `file` (standard input for `-` or none).
fn read_page(file: Option<&Path>, pool: &str, page_size: u32) -> Result<Vec<u8>, CliError> {
    let (source, reader): (String, Box<dyn Read>) = match file {
        Some(path) if path.as_os_str() != "-" => {
            let f = File::open(path).map_err(|e| CliError::Message(format!("cannot open {}: {e}", path.display())))?;
            (path.display().to_string(), Box::new(f))
        }
        _ => ("standard input".to_string(), Box::new(io::stdin())),
    };
    let mut page = Vec::with_capacity(page_size as usize);
    // One byte more than a page tells "too long" from "exactly a page".
    reader
        .take(u64::from(page_size) + 1)
        .read_to_end(&mut page)
        .map_err(|e| CliError::Message(format!("cannot read {source}: {e}")))?;
    if page.len() > page_size as usize {
        return Err(CliError::Message(format!(
            "{source} holds more than one page: pool {pool} takes {page_size}-byte pages"
        )));
    }
    if page.len() < page_size as usize {
        return Err(CliError::Message(format!(
            "{source} holds {} bytes, not a page: pool {pool} takes {page_size}-byte pages",
            page.len()
        )));
    }
    Ok(page)
}
