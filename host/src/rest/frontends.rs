//! `/api/v1/pools/{name}/frontends`: block devices over a pool — attach (an NBD server on a
//! Unix socket or TCP address, with a backing file), list, detach.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use tmem_api::rest::{AttachRequest, AttachedFrontend, ErrorBody};

use super::error::{ApiError, Json, Path, blocking};
use crate::frontend::attach::AttachError;
use crate::host::Host;

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::Host(e) => e.into(),
            AttachError::Invalid(m) => ApiError::bad_request("invalid_frontend", m),
            AttachError::Unsupported(m) => ApiError::bad_request("unsupported_frontend", m),
            AttachError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            e @ AttachError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "frontend_not_found", e.to_string())
            }
            AttachError::Catalog(e) => e.into(),
        }
    }
}

/// Attaches a block device to the pool: an NBD server whose every write is a store, every
/// read a load, every discard an invalidate; pages the pool refuses go to the backing file.
#[utoipa::path(
    post, path = "/api/v1/pools/{name}/frontends", tag = "frontends",
    params(("name" = String, Path, description = "Pool name")),
    request_body = AttachRequest,
    responses(
        (status = 201, description = "Attached; `address` is the client URI", body = AttachedFrontend),
        (status = 400, description = "A bad size, path or address (`invalid_frontend`); `ublk` (`unsupported_frontend`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The pool has a device (`frontend_exists`), the backing file or address is taken (`backing_in_use`, `address_in_use`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`), no randomness (`internal`): nothing is attached", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn attach_frontend(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Json(request): Json<AttachRequest>,
) -> Result<(StatusCode, Json<AttachedFrontend>), ApiError> {
    blocking(move || {
        let attached = host.block_devices().attach(&host, &name, &request)?;
        Ok((StatusCode::CREATED, Json(attached)))
    })
    .await
}

/// The pool's block devices.
#[utoipa::path(
    get, path = "/api/v1/pools/{name}/frontends", tag = "frontends",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = Vec<AttachedFrontend>), (status = 404, body = ErrorBody)),
    security(("token" = []))
)]
pub async fn list_frontends(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<AttachedFrontend>>, ApiError> {
    host.pool(&name)?;
    Ok(Json(host.block_devices().list(&name)))
}

/// Detaches a block device (swapoff): its server stops, its pages leave the pool; the backing
/// file stays.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}/frontends/{id}", tag = "frontends",
    params(("name" = String, Path, description = "Pool name"), ("id" = String, Path, description = "Attachment id")),
    responses(
        (status = 204, description = "Detached"),
        (status = 404, description = "No such pool or attachment", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): the device stays", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn detach_frontend(
    State(host): State<Arc<Host>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        host.block_devices().detach(&host, &name, &id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
