//! `/api/v1/pools/{name}/frontends`: every frontend of a pool in one shape — list (socket
//! connections and block devices), attach a block device (NBD on a Unix socket or TCP address,
//! or ublk, with a backing file), detach one.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use tmem_api::rest::{AttachRequest, BlockDeviceInfo, ErrorBody, FrontendInfo};

use super::error::{ApiError, Json, Path, blocking};
use crate::frontend::attach::{AttachError, BlockDevices};
use crate::frontend::{FrontendDetails, FrontendKind};
use crate::host::Host;
use crate::pool::Pool;

/// A frontend as the API shows it.
pub fn frontend_info(pool: &Pool, f: FrontendDetails) -> FrontendInfo {
    FrontendInfo {
        id: f.id,
        kind: f.kind,
        pool: pool.name().to_string(),
        name: f.name,
        address: f.address,
        counters: f.counters.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        device: f.device.map(|d| BlockDeviceInfo {
            export_name: d.export_name,
            size_bytes: d.size_bytes,
            block_size: d.block_size,
            backing: d.backing,
            socket: d.socket,
            listen: d.listen,
            ublk_id: d.ublk_id,
            connections: d.connections,
        }),
    }
}

/// Every frontend of `pool`, as the API shows them.
pub fn frontend_infos(pool: &Pool) -> Vec<FrontendInfo> {
    pool.frontend_details().into_iter().map(|f| frontend_info(pool, f)).collect()
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::Host(e) => e.into(),
            AttachError::Invalid(m) => ApiError::bad_request("invalid_frontend", m),
            AttachError::Unsupported(m) => ApiError::bad_request("unsupported_frontend", m),
            AttachError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            e @ AttachError::PathNotAllowed { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "path_not_allowed", e.to_string())
            }
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
        (status = 201, description = "Attached; `address` is the client URI", body = FrontendInfo),
        (status = 400, description = "A size that is not a multiple of the pool's page size, a path whose directory does not exist, an address that cannot be listened on, `socket` and `listen` both or neither for NBD, `ublk_id` for NBD, a socket or address for ublk, a non-loopback address without `allow_remote`, a TCP address without `insecure_no_tls` on a host without TLS, `insecure_no_tls` without a TCP address (`invalid_frontend`); `ublk` on a machine whose kernel has no ublk driver, a refusal that depends on the machine (`unsupported_frontend`)", body = ErrorBody),
        (status = 403, description = "The backing file or socket path is outside the paths the host allows (`path_not_allowed`; `tmem serve --allow-path`)", body = ErrorBody),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "The pool has a device (`frontend_exists`), the backing file or address is taken (`backing_in_use`, `address_in_use`), the ublk device number exists — live, or waiting for the program that made it (`ublk_device_exists`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`), no randomness (`internal`): nothing is attached", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn attach_frontend(
    State(devices): State<Arc<BlockDevices>>,
    Path(name): Path<String>,
    Json(request): Json<AttachRequest>,
) -> Result<(StatusCode, Json<FrontendInfo>), ApiError> {
    blocking(move || {
        let attached = devices.attach(&name, &request)?;
        let pool = devices.host().pool(&name)?;
        Ok((StatusCode::CREATED, Json(frontend_info(&pool, attached))))
    })
    .await
}

/// Every frontend of the pool: connections on the frontend socket and block devices.
#[utoipa::path(
    get, path = "/api/v1/pools/{name}/frontends", tag = "frontends",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = Vec<FrontendInfo>), (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody)),
    security(("token" = []))
)]
pub async fn list_frontends(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<FrontendInfo>>, ApiError> {
    let pool = host.pool(&name)?;
    Ok(Json(frontend_infos(&pool)))
}

/// Detaches a block device (swapoff): its server stops, its pages leave the pool; the backing
/// file stays. A socket frontend detaches by closing its connection: its id is refused here.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}/frontends/{id}", tag = "frontends",
    params(("name" = String, Path, description = "Pool name"), ("id" = String, Path, description = "Frontend id")),
    responses(
        (status = 204, description = "Detached"),
        (status = 404, description = "No such pool or frontend", body = ErrorBody),
        (status = 409, description = "A socket frontend (`frontend_not_detachable`): it detaches by closing its connection", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): the device stays", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn detach_frontend(
    State(devices): State<Arc<BlockDevices>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let pool = devices.host().pool(&name)?;
        if pool.frontend_details().iter().any(|f| f.id == id && f.kind == FrontendKind::Socket) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "frontend_not_detachable",
                format!("frontend {id} is a socket connection: it detaches by closing its connection"),
            ));
        }
        devices.detach(&name, &id)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
