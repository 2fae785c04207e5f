//! `/api/v1/pools/{name}/tokens`: a pool's scoped tokens (see [`crate::credentials`]) —
//! create one (the answer is the only place the token appears), list them, revoke one.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use tmem_api::rest::{CreateTokenRequest, ErrorBody, TokenInfo};

use super::error::{ApiError, Json, Path, blocking};
use crate::host::Host;

/// Makes a token that attaches frontends to the pool (`frontend`) or serves the pool to
/// another host's `remote` store (`peer`). The token is in this answer only: the host keeps
/// its hash.
#[utoipa::path(
    post, path = "/api/v1/pools/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Pool name")),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Made; `token` is shown this once", body = TokenInfo),
        (status = 400, description = "A label over 128 characters or with control characters (`invalid_token`)", body = ErrorBody),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`), no randomness (`internal`): no token was made", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn create_token(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Json(request): Json<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenInfo>), ApiError> {
    blocking(move || Ok((StatusCode::CREATED, Json(host.create_token(&name, request.scope, &request.label)?)))).await
}

/// The pool's scoped tokens, oldest first, without the tokens themselves.
#[utoipa::path(
    get, path = "/api/v1/pools/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = Vec<TokenInfo>),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn list_tokens(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(host.tokens(&name)?))
}

/// Revokes a token: it opens nothing new, and the connections it opened end at their next
/// request.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}/tokens/{id}", tag = "tokens",
    params(("name" = String, Path, description = "Pool name"), ("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such pool (`pool_not_found`) or token (`token_not_found`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): the token stays", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn revoke_token(
    State(host): State<Arc<Host>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        host.revoke_token(&name, &id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
