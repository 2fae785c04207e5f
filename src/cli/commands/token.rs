//! `tmem token create|ls|rm`: a pool's scoped tokens on a running host.

use tmem_api::rest::{CreateTokenRequest, TokenInfo, TokenScope};

use super::Session;
use crate::cli::args::{TokenCommand, TokenScopeArg};
use crate::cli::{CliError, Done};

fn scope_name(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Frontend => "frontend",
        TokenScope::Peer => "peer",
    }
}

/// Runs a `tmem token` subcommand.
pub(super) fn run(session: &Session, command: TokenCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        TokenCommand::Create { pool, scope, label } => {
            let scope = match scope {
                TokenScopeArg::Frontend => TokenScope::Frontend,
                TokenScopeArg::Peer => TokenScope::Peer,
            };
            let made = client.create_token(&pool, &CreateTokenRequest { scope, label }).map_err(|e| session.fail(e))?;
            // The token alone on stdout, so `TOKEN=$(tmem token create p)` works; what it is
            // on stderr.
            session.show(&made, |t| format!("{}\n", t.token.as_deref().unwrap_or_default()))?;
            if !session.json {
                eprintln!(
                    "{} token {} for pool {pool}: shown this once (the host keeps only its hash)",
                    scope_name(made.scope),
                    made.id
                );
            }
        }
        TokenCommand::Ls { pool } => {
            let tokens = client.tokens(&pool).map_err(|e| session.fail(e))?;
            session.show(&tokens, |tokens: &Vec<TokenInfo>| {
                let mut text = format!("{:<18} {:<9} {:<12} LABEL\n", "ID", "SCOPE", "CREATED");
                for t in tokens {
                    text += &format!("{:<18} {:<9} {:<12} {}\n", t.id, scope_name(t.scope), t.created_unix, t.label);
                }
                text
            })?;
        }
        TokenCommand::Rm { pool, id } => {
            client.revoke_token(&pool, &id).map_err(|e| session.fail(e))?;
            session.say(&format!("revoked token {id} of pool {pool}"))?;
        }
    }
    Ok(Done::Ok)
}
