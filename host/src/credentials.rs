//! Scoped credentials: per-pool tokens for frontends and for peers, beside the admin token.
//!
//! The admin token (`DATA_DIR/token`, `rest::auth`) does everything on the REST API. It is
//! never needed elsewhere: an application's region or device attaches with a **frontend
//! token** of its pool, and another host's `remote` store with a **peer token** of its pool.
//! Each is created through the API (`POST /api/v1/pools/{name}/tokens`, `tmem token create`),
//! shown once, and revocable (`DELETE .../tokens/{id}`).
//!
//! # Rules
//!
//! - **Stored hashed.** The host keeps only a token's SHA-256 (in the catalog's `credentials`
//!   tree, and in memory), never the token: a copied catalog authenticates nobody. Tokens are
//!   256 random bits, so a plain hash is enough (no password stretching to do).
//! - **One pool, one kind.** A frontend token attaches frontends to its pool only; a peer
//!   token serves peers of its pool only. The admin token is accepted for frontends (the
//!   operator's own tools) but **never from a peer**: a remote host never holds another host's
//!   admin token.
//! - **Revocation is immediate.** A revoked token authenticates nothing new, and connections
//!   it authenticated end at their next request ([`Session::is_revoked`], one atomic load).
//!   Destroying a pool revokes its tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tmem_api::rest::{TokenInfo, TokenScope};

use crate::catalog::{Catalog, CatalogError};

/// Why a credential could not be created, found or used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No token of that id on that pool.
    #[error("pool '{pool}' has no token '{id}'")]
    NotFound {
        /// The pool.
        pool: String,
        /// The id asked for.
        id: String,
    },
    /// The label is too long or not printable.
    #[error("a token's label is at most 128 printable characters")]
    BadLabel,
    /// The system had no randomness for a new token.
    #[error("no randomness for a new token: {0}")]
    Randomness(getrandom::Error),
    /// The catalog could not be written: nothing changed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Why a connection was refused (its message goes back to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token of this host (or a revoked one).
    #[error("wrong token")]
    Unknown,
    /// A token of another pool.
    #[error("this token is for pool '{0}'")]
    OtherPool(String),
    /// A token of the other kind.
    #[error("this is a {0} token")]
    OtherScope(&'static str),
    /// The admin token, presented by a peer.
    #[error(
        "peers present a peer token of the pool (tmem token create POOL --scope peer); the admin token never leaves its host"
    )]
    AdminFromPeer,
}

/// What the catalog keeps of a token: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRecord {
    /// The token's id (public: it names the token in listings and revocation).
    pub id: String,
    /// The pool it opens.
    pub pool: String,
    /// What it may do.
    pub scope: TokenScope,
    /// The operator's note.
    #[serde(default)]
    pub label: String,
    /// Seconds since the epoch when it was made.
    pub created_unix: u64,
    /// SHA-256 of the token, hex.
    pub sha256: String,
}

/// A live credential: its record and whether it has been revoked.
#[derive(Debug)]
struct Credential {
    record: CredentialRecord,
    revoked: AtomicBool,
}

/// What authenticated a connection: the admin token, or a scoped token that may be revoked
/// while the connection lives.
#[derive(Debug, Clone)]
pub struct Session(Option<Arc<Credential>>);

impl Session {
    /// A session opened by the admin token (never revoked while the host runs).
    pub fn admin() -> Session {
        Session(None)
    }

    /// Whether the token that opened this session has been revoked since: the connection
    /// must end.
    pub fn is_revoked(&self) -> bool {
        self.0.as_ref().is_some_and(|c| c.revoked.load(Ordering::Acquire))
    }
}

/// The host's scoped tokens, by hash.
#[derive(Debug, Default)]
pub struct Credentials {
    by_digest: RwLock<HashMap<[u8; 32], Arc<Credential>>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn scope_name(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Frontend => "frontend",
        TokenScope::Peer => "peer",
    }
}

fn info(record: &CredentialRecord, token: Option<String>) -> TokenInfo {
    TokenInfo {
        id: record.id.clone(),
        pool: record.pool.clone(),
        scope: record.scope,
        label: record.label.clone(),
        created_unix: record.created_unix,
        token,
    }
}

impl Credentials {
    /// The credentials the catalog keeps (none without one). A record that cannot be read
    /// is logged and skipped: it authenticates nobody.
    pub fn restore(catalog: Option<&Catalog>) -> Result<Credentials, CatalogError> {
        let credentials = Credentials::default();
        if let Some(catalog) = catalog {
            let mut map = credentials.by_digest.write();
            for record in catalog.credentials()? {
                let Some(digest) = hex::decode(&record.sha256).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()) else {
                    tracing::error!(id = %record.id, "a kept token's hash cannot be read; it is ignored");
                    continue;
                };
                map.insert(digest, Arc::new(Credential { record, revoked: AtomicBool::new(false) }));
            }
        }
        Ok(credentials)
    }

    /// Makes a token for `pool` with `scope`, keeps its hash (in the catalog first, when
    /// there is one), and returns it — the only time the token itself is seen.
    pub fn create(
        &self,
        catalog: Option<&Catalog>,
        pool: &str,
        scope: TokenScope,
        label: &str,
    ) -> Result<TokenInfo, CredentialError> {
        if label.chars().count() > 128 || label.chars().any(char::is_control) {
            return Err(CredentialError::BadLabel);
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(CredentialError::Randomness)?;
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).map_err(CredentialError::Randomness)?;
        // The prefix says what a token is where it turns up (a config file, a log).
        let token = format!("tmem_{}_{}", scope_name(scope), hex::encode(secret));
        let digest = digest(&token);
        let record = CredentialRecord {
            id: format!("tok-{}", hex::encode(id)),
            pool: pool.to_string(),
            scope,
            label: label.to_string(),
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            sha256: hex::encode(digest),
        };
        if let Some(catalog) = catalog {
            catalog.put_credential(&record)?;
        }
        let shown = info(&record, Some(token));
        self.by_digest.write().insert(digest, Arc::new(Credential { record, revoked: AtomicBool::new(false) }));
        Ok(shown)
    }

    /// The tokens of `pool` (without the tokens themselves), oldest first.
    pub fn list(&self, pool: &str) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> =
            self.by_digest.read().values().filter(|c| c.record.pool == pool).map(|c| info(&c.record, None)).collect();
        tokens.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        tokens
    }

    /// Revokes token `id` of `pool`: forgotten (in the catalog first), and every connection
    /// it opened ends at its next request.
    pub fn revoke(&self, catalog: Option<&Catalog>, pool: &str, id: &str) -> Result<(), CredentialError> {
        let mut map = self.by_digest.write();
        let Some(digest) = map.iter().find(|(_, c)| c.record.pool == pool && c.record.id == id).map(|(d, _)| *d) else {
            return Err(CredentialError::NotFound { pool: pool.to_string(), id: id.to_string() });
        };
        if let Some(catalog) = catalog {
            catalog.remove_credential(id)?;
        }
        if let Some(credential) = map.remove(&digest) {
            credential.revoked.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Revokes every token of `pool` (the pool is being destroyed).
    pub fn revoke_pool(&self, catalog: Option<&Catalog>, pool: &str) -> Result<(), CredentialError> {
        let ids: Vec<String> = self.list(pool).into_iter().map(|t| t.id).collect();
        for id in ids {
            self.revoke(catalog, pool, &id)?;
        }
        Ok(())
    }

    /// Checks a token a frontend or peer presented for `pool`: a scoped token of that pool
    /// and scope, or (frontends only) the admin token.
    pub fn authenticate(
        &self,
        presented: &str,
        pool: &str,
        scope: TokenScope,
        admin: &crate::rest::auth::ApiToken,
    ) -> Result<Session, AuthError> {
        if admin.matches(presented.trim()) {
            return match scope {
                TokenScope::Frontend => Ok(Session::admin()),
                TokenScope::Peer => Err(AuthError::AdminFromPeer),
            };
        }
        // A lookup by the hash of a 256-bit secret: its timing says nothing about the secret.
        let map = self.by_digest.read();
        let credential = map.get(&digest(presented)).ok_or(AuthError::Unknown)?;
        if credential.record.pool != pool {
            return Err(AuthError::OtherPool(credential.record.pool.clone()));
        }
        if credential.record.scope != scope {
            return Err(AuthError::OtherScope(scope_name(credential.record.scope)));
        }
        Ok(Session(Some(credential.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::auth::ApiToken;

    #[test]
    fn tokens_open_their_pool_and_scope_only_and_revocation_ends_sessions() {
        let credentials = Credentials::default();
        let admin = ApiToken::new("admin-secret");
        let frontend = credentials.create(None, "a", TokenScope::Frontend, "app").unwrap();
        let peer = credentials.create(None, "a", TokenScope::Peer, "").unwrap();
        let (frontend_token, peer_token) = (frontend.token.clone().unwrap(), peer.token.clone().unwrap());
        assert!(frontend_token.starts_with("tmem_frontend_") && peer_token.starts_with("tmem_peer_"));

        let session = credentials.authenticate(&frontend_token, "a", TokenScope::Frontend, &admin).unwrap();
        assert!(!session.is_revoked());
        assert_eq!(
            credentials.authenticate(&frontend_token, "b", TokenScope::Frontend, &admin).unwrap_err(),
            AuthError::OtherPool("a".into())
        );
        assert_eq!(
            credentials.authenticate(&frontend_token, "a", TokenScope::Peer, &admin).unwrap_err(),
            AuthError::OtherScope("frontend")
        );
        assert!(credentials.authenticate(&peer_token, "a", TokenScope::Peer, &admin).is_ok());
        assert_eq!(credentials.authenticate("nope", "a", TokenScope::Peer, &admin).unwrap_err(), AuthError::Unknown);
        assert!(credentials.authenticate("admin-secret", "a", TokenScope::Frontend, &admin).is_ok());
        assert_eq!(
            credentials.authenticate("admin-secret", "a", TokenScope::Peer, &admin).unwrap_err(),
            AuthError::AdminFromPeer
        );

        let listed = credentials.list("a");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t.token.is_none()), "listings never show a token");
        credentials.revoke(None, "a", &frontend.id).unwrap();
        assert!(session.is_revoked(), "a live session sees its token revoked");
        assert_eq!(
            credentials.authenticate(&frontend_token, "a", TokenScope::Frontend, &admin).unwrap_err(),
            AuthError::Unknown
        );
        assert!(matches!(credentials.revoke(None, "a", &frontend.id), Err(CredentialError::NotFound { .. })));
        credentials.revoke_pool(None, "a").unwrap();
        assert!(credentials.list("a").is_empty());
        assert!(matches!(
            credentials.create(None, "a", TokenScope::Peer, "bad\nlabel"),
            Err(CredentialError::BadLabel)
        ));
    }
}
