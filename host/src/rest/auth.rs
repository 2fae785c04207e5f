//! API tokens: where the token comes from (`TMEM_TOKEN`, else `DATA_DIR/token`, created at
//! first start with mode 0600), and the middleware that requires `Authorization: Bearer
//! TOKEN` on every `/api/v1` route.
//!
//! The comparison hashes both sides first and compares the digests without early exit, so
//! response timing says nothing about how much of a guess was right.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The environment variable that sets the token (it then is not written to the data dir).
pub const TOKEN_ENV: &str = "TMEM_TOKEN";

/// The token file's name in the data dir.
pub const TOKEN_FILE: &str = "token";

/// The API token a server checks.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Where the token came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `TMEM_TOKEN`.
    Environment,
    /// An existing token file.
    File(PathBuf),
    /// A token file created now.
    Created(PathBuf),
}

impl ApiToken {
    /// A token with this value.
    pub fn new(token: &str) -> Self {
        ApiToken { digest: Sha256::digest(token.trim().as_bytes()).into() }
    }

    /// Whether `candidate` is the token, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        digest.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The server's token: `env_token` if set and not empty, else the data dir's token
    /// file, created with a fresh random token (mode 0600) if there is none.
    pub fn load_or_create(data_dir: &Path, env_token: Option<String>) -> anyhow::Result<(Self, TokenSource)> {
        if let Some(token) = env_token.filter(|t| !t.trim().is_empty()) {
            return Ok((ApiToken::new(&token), TokenSource::Environment));
        }
        let path = data_dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => {
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the API token file can be read by other users (mode {:o}); chmod 600 it", mode & 0o777);
                }
                Ok((ApiToken::new(&token), TokenSource::File(path)))
            }
            Ok(_) => anyhow::bail!("the token file {} is empty; delete it to have a new token made", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut random = [0u8; 32];
                getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
                let token = hex::encode(random);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("cannot create the token file {}: {e}", path.display()))?;
                writeln!(file, "{token}")?;
                file.sync_all()?;
                Ok((ApiToken::new(&token), TokenSource::Created(path)))
            }
            Err(e) => anyhow::bail!("cannot read the token file {}: {e}", path.display()),
        }
    }
}

/// The middleware: 401 unless the request carries `Authorization: Bearer TOKEN`.
pub async fn require_token(State(token): State<Arc<ApiToken>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match presented {
        Some(candidate) if token.matches(candidate.trim()) => next.run(request).await,
        Some(_) => unauthorized("the API token is wrong"),
        None => unauthorized(
            "this route needs `Authorization: Bearer TOKEN`; the token is in DATA_DIR/token (or TMEM_TOKEN) of the server",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"tmem\""));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_private_random_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tmem-token-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (token, source) = ApiToken::load_or_create(&dir, None).unwrap();
        assert_eq!(source, TokenSource::Created(dir.join(TOKEN_FILE)));
        let text = std::fs::read_to_string(dir.join(TOKEN_FILE)).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(std::fs::metadata(dir.join(TOKEN_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(token.matches(text.trim()) && !token.matches("nope") && !token.matches(""));
        let (again, source) = ApiToken::load_or_create(&dir, None).unwrap();
        assert_eq!(source, TokenSource::File(dir.join(TOKEN_FILE)));
        assert!(again.matches(text.trim()));
        let (env, source) = ApiToken::load_or_create(&dir, Some("from-env".into())).unwrap();
        assert_eq!(source, TokenSource::Environment);
        assert!(env.matches("from-env") && !env.matches(text.trim()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
