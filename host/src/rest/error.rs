//! The REST API's one error shape, [`ApiError`] (serialized as
//! `tmem_api::rest::ErrorBody`), how every failure of the host maps to an HTTP
//! status and a stable code, and the extractors that turn axum's own rejections (bad JSON,
//! bad path, over-long body) into the same shape.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tmem_api::rest::{ErrorBody, ErrorDetail};

use crate::host::HostError;
use crate::plugin::PluginLoadError;
use crate::pool::{OpError, ShrinkError};

/// An error response: status, stable code, message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code, e.g. `pool_not_found`.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 500: something in the host itself went wrong.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The host error as it concerns a pool's chain: an unknown plugin or version in a pool
    /// config is a bad request (400), not a missing resource.
    pub fn in_pool_config(e: HostError) -> Self {
        match e {
            HostError::UnknownPlugin(_) => ApiError::bad_request("unknown_plugin", e.to_string()),
            HostError::UnknownVersion { .. } => ApiError::bad_request("unknown_plugin_version", e.to_string()),
            other => other.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            HostError::PluginLoad(PluginLoadError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "plugin_too_large")
            }
            HostError::PluginLoad(_) => (StatusCode::BAD_REQUEST, "invalid_plugin"),
            HostError::UnknownPlugin(_) => (StatusCode::NOT_FOUND, "plugin_not_found"),
            HostError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "plugin_version_not_found"),
            HostError::BadPluginName(_) => (StatusCode::BAD_REQUEST, "invalid_plugin_name"),
            HostError::PluginBundled { .. } => (StatusCode::CONFLICT, "plugin_bundled"),
            HostError::PluginInUse { .. } => (StatusCode::CONFLICT, "plugin_in_use"),
            HostError::PoolExists(_) => (StatusCode::CONFLICT, "pool_exists"),
            HostError::PoolNotFound(_) => (StatusCode::NOT_FOUND, "pool_not_found"),
            HostError::InvalidPool(_) => (StatusCode::BAD_REQUEST, "invalid_pool"),
            HostError::Catalog(_) => (StatusCode::INTERNAL_SERVER_ERROR, "catalog"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::WrongPageSize { .. } => ApiError::bad_request("wrong_page_size", e.to_string()),
            OpError::WrongRecordSize { .. } => ApiError::bad_request("wrong_record_size", e.to_string()),
            OpError::NotARecordPool(_) => ApiError::bad_request("not_a_record_pool", e.to_string()),
            OpError::LoadFailed { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "load_failed", e.to_string())
            }
        }
    }
}

impl From<ShrinkError> for ApiError {
    fn from(e: ShrinkError) -> Self {
        ApiError::new(StatusCode::CONFLICT, "no_frontend", e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(b) => b.into(),
            other => ApiError::bad_request("invalid_json", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is too large: {}", r.body_text()),
            )
        } else {
            ApiError::bad_request("invalid_body", r.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

/// `axum::Json`, with rejections as [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path`, with rejections as [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query`, with rejections as [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Runs blocking host work (plugin calls, compilation, the catalog) off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the request's work failed: {e}")))?
}
