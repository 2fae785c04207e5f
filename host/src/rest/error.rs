//! The REST API's one error shape, [`ApiError`] (serialized as
//! `tmem_api::rest::ErrorBody`), how every failure of the host maps to an HTTP
//! status and a stable code, and the extractors that turn axum's own rejections (bad JSON,
//! bad path, over-long body) into the same shape.
//!
//! # Codes
//!
//! The client's mistakes are 4xx and their message says what to change. Failures of the host
//! itself are 5xx: their message names the kind of failure and nothing more (no paths, no
//! database or OS error text); the full detail is in the host's log (`tracing::error!`).
//!
//! | Status | Code | When |
//! |---|---|---|
//! | 400 | `invalid_json`, `invalid_body`, `invalid_path`, `invalid_query` | the request does not parse |
//! | 400 | `invalid_plugin`, `invalid_plugin_name` | an upload is not a tmem plugin, or its name is bad |
//! | 400 | `invalid_pool` | a pool's settings or chain are refused (name, page size, limits, shards, durability, a config the manifest refuses, a grant, the chain's shape, a plugin that refuses its config or faults when it starts) |
//! | 400 | `unknown_plugin`, `unknown_plugin_version` | a pool config names a plugin or version that is not registered |
//! | 400 | `wrong_page_size`, `wrong_record_size`, `not_a_record_pool` | a page or record does not fit the pool |
//! | 400 | `invalid_frontend`, `unsupported_frontend` | a block device request cannot be served |
//! | 400 | `invalid_interval` | a stats stream interval out of range |
//! | 401 | `unauthorized` | no or a wrong API token |
//! | 404 | `not_found`, `pool_not_found`, `plugin_not_found`, `plugin_version_not_found`, `page_not_found`, `frontend_not_found` | no such route or thing |
//! | 405 | `method_not_allowed` | |
//! | 409 | `pool_exists`, `plugin_bundled`, `plugin_in_use`, `no_frontend`, `frontend_exists`, `backing_in_use`, `address_in_use` | a conflict with what exists |
//! | 413 | `plugin_too_large`, `body_too_large` | over a size limit |
//! | 415 | `unsupported_media_type` | a JSON body without `Content-Type: application/json` |
//! | 500 | `storage_error` | a persistent pool's database failed (it cannot be created, opened or flushed) |
//! | 500 | `catalog` | the host could not read or write its catalog; the change was not made (or, for a live pool, not kept) |
//! | 500 | `load_failed` | a present page could not be produced |
//! | 500 | `internal` | anything else inside the host (no randomness, a failed worker) |
//! | 503 | `no_capacity` | the host cannot start another plugin instance now; retrying later can help |
//! | 503 | `timeout` | the request took longer than the host allows |

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tmem_api::rest::{ErrorBody, ErrorDetail};

use crate::catalog::CatalogError;
use crate::chain::ChainError;
use crate::credentials::CredentialError;
use crate::host::HostError;
use crate::persist::DiskError;
use crate::plugin::PluginLoadError;
use crate::pool::{OpError, PoolError, ShrinkError};
use crate::tier::TierError;

/// The message of `storage_error`.
pub const STORAGE_ERROR_MESSAGE: &str = "the pool's storage failed; see the host's log";
/// The message of `catalog`.
pub const CATALOG_ERROR_MESSAGE: &str = "the host could not read or write its catalog; see the host's log";
/// The message of `internal` when the host has no randomness.
pub const NO_RANDOMNESS_MESSAGE: &str = "the host could not get random bytes; see the host's log";
/// The message of `no_capacity`.
pub const NO_CAPACITY_MESSAGE: &str =
    "the host cannot start another plugin instance now; retry later, or destroy pools it no longer needs";

/// An error response: status, stable code, message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code, e.g. `pool_not_found`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// For the host's log only, never in the body: what exactly failed (a server failure).
    detail: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), detail: None }
    }

    /// A failure of the host itself: the body says `message` (the kind of failure), the
    /// host's log says `detail` (paths, database and OS errors: never shown to the client).
    pub fn server(status: StatusCode, code: &'static str, message: &str, detail: impl std::fmt::Display) -> Self {
        ApiError { detail: Some(detail.to_string()), ..ApiError::new(status, code, message) }
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
            tracing::error!(code = self.code, "{}", self.detail.as_deref().unwrap_or(&self.message));
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
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
            HostError::MemoryLimitTooSmall(_) => (StatusCode::BAD_REQUEST, "invalid_memory_limit"),
            HostError::BudgetForCache { .. } | HostError::BudgetForPlugins { .. } => {
                (StatusCode::CONFLICT, "memory_budget")
            }
            HostError::Pool(e) => return e.into(),
            HostError::Chain(e) => return e.into(),
            HostError::Disk(e) => return e.into(),
            HostError::Catalog(e) => return e.into(),
            HostError::Tier(e) => return e.into(),
            HostError::Randomness(_) | HostError::Credential(CredentialError::Randomness(_)) => {
                return ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal", NO_RANDOMNESS_MESSAGE, message);
            }
            HostError::Credential(CredentialError::Catalog(e)) => return e.into(),
            HostError::Secret(_) => {
                return ApiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "secrets",
                    "the host could not seal or open a secret of the pool's config (its secrets key); see its log",
                    message,
                );
            }
            HostError::Credential(CredentialError::NotFound { .. }) => (StatusCode::NOT_FOUND, "token_not_found"),
            HostError::Credential(CredentialError::BadLabel) => (StatusCode::BAD_REQUEST, "invalid_token"),
        };
        ApiError::new(status, code, message)
    }
}

/// A lower tier refused: 400 `invalid_tier` for a config that cannot be, 409 for a pairing
/// the pools' state refuses now (`tier_conflict`) and for direct use of an owned pool
/// (`pool_is_lower_tier`).
impl From<TierError> for ApiError {
    fn from(e: TierError) -> Self {
        let message = e.to_string();
        match e {
            TierError::Owned { .. } | TierError::LowerInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "pool_is_lower_tier", message)
            }
            TierError::AlreadyOwned { .. }
            | TierError::LowerHasFrontends(_)
            | TierError::LowerNotEmpty(_)
            | TierError::PagesBelow { .. }
            | TierError::StillBelow { .. } => ApiError::new(StatusCode::CONFLICT, "tier_conflict", message),
            _ => ApiError::bad_request("invalid_tier", message),
        }
    }
}

/// A pool's settings were refused: 400 `invalid_pool`, with the reason; a chain or disk
/// failure inside it as [`ChainError`] and [`DiskError`] map.
impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Chain(e) => e.into(),
            PoolError::Disk(e) => e.into(),
            PoolError::NotRecorded(e) => e.into(),
            PoolError::InstanceLimit(_) => ApiError::new(StatusCode::CONFLICT, "instance_limit", e.to_string()),
            PoolError::Tier(e) => e.into(),
            e => ApiError::bad_request("invalid_pool", e.to_string()),
        }
    }
}

/// A chain was refused: 400 `invalid_pool`, with the reason; or the host had no room for a
/// plugin instance: 503 `no_capacity`.
impl From<ChainError> for ApiError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::NoInstance { .. } => {
                ApiError::server(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", NO_CAPACITY_MESSAGE, e)
            }
            e => ApiError::bad_request("invalid_pool", e.to_string()),
        }
    }
}

/// A pool's database failed: 500 `storage_error`; the detail goes to the log only.
impl From<DiskError> for ApiError {
    fn from(e: DiskError) -> Self {
        ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", STORAGE_ERROR_MESSAGE, e)
    }
}

/// The catalog failed: 500 `catalog`; the detail goes to the log only.
impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "catalog", CATALOG_ERROR_MESSAGE, e)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::WrongPageSize { .. } => ApiError::bad_request("wrong_page_size", e.to_string()),
            OpError::WrongRecordSize { .. } => ApiError::bad_request("wrong_record_size", e.to_string()),
            OpError::NotARecordPool(_) => ApiError::bad_request("not_a_record_pool", e.to_string()),
            OpError::Tier(e) => e.into(),
            OpError::LoadFailed { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "load_failed", e.to_string())
            }
            OpError::OwnedByDevice { .. } => ApiError::new(StatusCode::CONFLICT, "pool_owned", e.to_string()),
            OpError::NotDurable { .. } => {
                ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", STORAGE_ERROR_MESSAGE, e)
            }
        }
    }
}

impl From<ShrinkError> for ApiError {
    fn from(e: ShrinkError) -> Self {
        match e {
            ShrinkError::NoFrontend(_) => ApiError::new(StatusCode::CONFLICT, "no_frontend", e.to_string()),
            ShrinkError::Op(e) => e.into(),
        }
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

/// A JSON body (`axum::Json`'s content-type and syntax checks), with rejections as
/// [`ApiError`].
///
/// A number with a zero fraction (`5.0`, `1e3`) is an integer, as JSON Schema (and so the
/// OpenAPI document) says: it is read as one wherever an integer is expected, up to 2^53
/// (beyond that a float is not exact). serde alone would refuse `5.0` for a `u64`.
///
/// An object is only ever given as an object: serde would also read a struct from an array of
/// its fields in order (`[null, null]` as a pool patch that clears both limits).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned + serde::Serialize, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut value) = axum::Json::<serde_json::Value>::from_request(request, state).await?;
        integral_floats_as_integers(&mut value);
        let invalid = |path: &str, what: &dyn std::fmt::Display| {
            let at = if path == "." || path.is_empty() { String::new() } else { format!("{path}: ") };
            ApiError::bad_request(
                "invalid_json",
                format!("Failed to deserialize the JSON body into the target type: {at}{what}"),
            )
        };
        let parsed: T =
            serde_path_to_error::deserialize(&value).map_err(|e| invalid(&e.path().to_string(), e.inner()))?;
        let read = serde_json::to_value(&parsed).map_err(|e| invalid("", &e))?;
        if let Some(path) = object_given_as_array(&value, &read, String::new()) {
            return Err(invalid(&path, &"invalid type: sequence, expected an object"));
        }
        Ok(Json(parsed))
    }
}

/// Where `given` holds an array in a place where what was read from it (`read`, serialized
/// back) is an object, if anywhere.
fn object_given_as_array(given: &serde_json::Value, read: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match (given, read) {
        (Value::Array(_), Value::Object(_)) => Some(path),
        (Value::Object(given), Value::Object(read)) => read.iter().find_map(|(key, read)| {
            let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            given.get(key).and_then(|given| object_given_as_array(given, read, at))
        }),
        (Value::Array(given), Value::Array(read)) => given
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (given, read))| object_given_as_array(given, read, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Rewrites every float in `value` that is an exact integer (zero fraction, magnitude at most
/// 2^53) as that integer.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    const EXACT: f64 = (1u64 << 53) as f64;
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().expect("an f64 number");
            if f.fract() == 0.0 && f.abs() <= EXACT {
                *value = if f < 0.0 { serde_json::Value::from(f as i64) } else { serde_json::Value::from(f as u64) };
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

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
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request's work failed; see the host's log",
            format!("the request's work failed: {e}"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use tmem_api::manifest::{Capability, ConfigError};

    use super::*;
    use crate::frontend::attach::AttachError;
    use crate::plugin::PluginFault;
    use crate::plugin::net::NetConfigError;

    /// A path and an OS/database message that must never reach a response body.
    const SECRET_DIR: &str = "/srv/secret-data-dir/pools/p-0a1b2c3d";
    const SECRET_TEXT: &str = "INTERNAL-DETAIL-xyzzy";

    fn secret_dir() -> PathBuf {
        PathBuf::from(SECRET_DIR)
    }

    /// The response as a client sees it: status, and the body's code and message.
    fn answer(e: impl Into<ApiError>) -> (StatusCode, String, String, String) {
        let response = e.into().into_response();
        let status = response.status();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let body: ErrorBody = serde_json::from_str(&text).unwrap();
        (status, body.error.code, body.error.message, text)
    }

    /// A client's mistake: `status` and `code`, and the message is the error's own text.
    fn assert_client(e: impl Into<ApiError> + std::fmt::Display, status: StatusCode, code: &str) {
        let text = e.to_string();
        let (got_status, got_code, message, _) = answer(e);
        assert_eq!((got_status, got_code.as_str()), (status, code), "{text}");
        assert_eq!(message, text, "a client error keeps its message");
    }

    /// A server failure: `status`, `code` and `message`; the body holds no internal text,
    /// the log (the detail) all of it.
    fn assert_server(e: impl Into<ApiError> + std::fmt::Display, status: StatusCode, code: &str, message: &str) {
        let text = e.to_string();
        let api = e.into();
        let detail = api.detail.clone().expect("a server failure has a detail for the log");
        assert!(!detail.is_empty() && text.ends_with(&detail), "the full detail goes to the log: {detail}");
        let (got_status, got_code, got_message, body) = answer(api);
        assert_eq!((got_status, got_code.as_str(), got_message.as_str()), (status, code, message), "{text}");
        for internal in [SECRET_DIR, "secret-data-dir", SECRET_TEXT, "sled", "os error", "catalog:"] {
            assert!(!body.contains(internal), "the body leaks {internal:?}: {body}");
        }
    }

    #[test]
    fn pool_settings_refused_are_400_invalid_pool_with_their_message() {
        let kinds = [
            PoolError::BadName("bad name!".into()),
            PoolError::HiddenName(".x".into()),
            PoolError::BadPageSize(5000),
            PoolError::BadAcceptThreshold(0),
            PoolError::ZeroLimit,
            PoolError::ByteLimitOnRemote,
            PoolError::BadShards(3),
            PoolError::BadSandbox { memory_bytes: 0, call_timeout_ms: u64::MAX },
            PoolError::BadFlushInterval(Duration::ZERO),
            PoolError::FlushIntervalNotPeriodic { hint: "" },
            PoolError::DurabilityNeedsStorage,
            PoolError::NotPersistent("p".into()),
            PoolError::NeedsDataDir,
            PoolError::SwapChangesPlugins { plugins: "zstd, ram".into() },
            PoolError::SwapChangesPersistence,
            PoolError::DatabaseMismatch,
            PoolError::NoGeneration,
        ];
        for e in kinds {
            assert_client(HostError::from(e), StatusCode::BAD_REQUEST, "invalid_pool");
        }
        assert_client(PoolError::BadPageSize(5000), StatusCode::BAD_REQUEST, "invalid_pool");
        // The messages tests/all/api.rs and the docs rely on.
        assert!(PoolError::BadName("a b".into()).to_string().starts_with("pool name \"a b\" must be 1-64 characters"));
        assert_eq!(
            PoolError::BadFlushInterval(Duration::from_secs(61)).to_string(),
            "flush_interval_ms 61000 must be from 1 to 60000"
        );
        assert!(PoolError::ZeroLimit.to_string().contains("limit of 0"));
    }

    #[test]
    fn chains_refused_are_400_invalid_pool_with_their_message() {
        let kinds = [
            ChainError::Config(ConfigError("plugin 'zstd' has no config key 'levle'".into())),
            ChainError::UnknownCapability { plugin: "ram".into(), grant: "disk".into() },
            ChainError::CapabilityNotUsed { plugin: "ram".into(), grant: "storage".into() },
            ChainError::CapabilityNotGranted { plugin: "sled".into(), capability: Capability::Storage },
            ChainError::Network(NetConfigError::NoEndpoints("remote".into())),
            ChainError::Empty,
            ChainError::EndsWithFilter("zstd".into()),
            ChainError::StoreNotLast("ram".into()),
            ChainError::InitRefused { plugin: "misbehave".into(), message: "refusing to start".into() },
            ChainError::StartFault { plugin: "misbehave".into(), fault: PluginFault::Trap("unreachable".into()) },
        ];
        for e in kinds {
            assert_client(e.clone(), StatusCode::BAD_REQUEST, "invalid_pool");
            assert_client(HostError::from(e.clone()), StatusCode::BAD_REQUEST, "invalid_pool");
            assert_client(HostError::from(PoolError::Chain(e)), StatusCode::BAD_REQUEST, "invalid_pool");
        }
        assert!(ChainError::Empty.to_string().contains("at least a store"));
        assert!(ChainError::EndsWithFilter("zstd".into()).to_string().contains("must end with a store"));
    }

    #[test]
    fn no_room_for_a_plugin_instance_is_503_no_capacity_without_the_runtime_text() {
        let e = ChainError::start("zstd", PluginFault::Instantiate(format!("pooling allocator: {SECRET_TEXT}")));
        assert!(matches!(e, ChainError::NoInstance { .. }));
        assert_server(e.clone(), StatusCode::SERVICE_UNAVAILABLE, "no_capacity", NO_CAPACITY_MESSAGE);
        assert_server(HostError::from(e), StatusCode::SERVICE_UNAVAILABLE, "no_capacity", NO_CAPACITY_MESSAGE);
        // Any other start failure is the plugin's (the client's) doing.
        assert!(matches!(
            ChainError::start("x", PluginFault::InitRefused("no".into())),
            ChainError::InitRefused { .. }
        ));
        assert!(matches!(ChainError::start("x", PluginFault::MemoryCap(1)), ChainError::StartFault { .. }));
    }

    #[test]
    fn a_failing_pool_database_is_500_storage_error_without_paths_or_os_text() {
        let kinds = || {
            [
                DiskError::Open { dir: secret_dir(), source: crate::persist::io_failure(SECRET_TEXT) },
                DiskError::Shard { shard: 3, source: crate::persist::io_failure(SECRET_TEXT) },
                DiskError::Flusher(std::io::Error::other(SECRET_TEXT)),
                DiskError::Flush { dir: secret_dir(), source: crate::persist::io_failure(SECRET_TEXT) },
                DiskError::FlushFailed(crate::persist::io_failure(SECRET_TEXT)),
                DiskError::Closing,
                DiskError::Missing(secret_dir()),
            ]
        };
        for e in kinds() {
            assert_server(e, StatusCode::INTERNAL_SERVER_ERROR, "storage_error", STORAGE_ERROR_MESSAGE);
        }
        for e in kinds() {
            let e = HostError::from(PoolError::Disk(e));
            assert!(matches!(e, HostError::Disk(_)), "a pool's disk failure is the host's: {e:?}");
            assert_server(e, StatusCode::INTERNAL_SERVER_ERROR, "storage_error", STORAGE_ERROR_MESSAGE);
        }
        assert!(
            DiskError::Open { dir: secret_dir(), source: crate::persist::io_failure(SECRET_TEXT) }
                .to_string()
                .contains(SECRET_DIR)
        );
    }

    #[test]
    fn a_failing_catalog_is_500_catalog_without_paths_or_database_text() {
        let json_error = || serde_json::from_str::<u8>(SECRET_TEXT).unwrap_err();
        let kinds = || {
            [
                CatalogError::Open { dir: secret_dir(), source: crate::persist::io_failure(SECRET_TEXT) },
                CatalogError::Db(crate::persist::io_failure(SECRET_TEXT)),
                CatalogError::TruncatedModule,
                CatalogError::ModuleName,
                CatalogError::PoolRecord(json_error()),
                CatalogError::FrontendRecord(json_error()),
            ]
        };
        for e in kinds() {
            assert_server(e, StatusCode::INTERNAL_SERVER_ERROR, "catalog", CATALOG_ERROR_MESSAGE);
        }
        for e in kinds() {
            assert_server(HostError::from(e), StatusCode::INTERNAL_SERVER_ERROR, "catalog", CATALOG_ERROR_MESSAGE);
        }
        for e in kinds() {
            assert_server(AttachError::Catalog(e), StatusCode::INTERNAL_SERVER_ERROR, "catalog", CATALOG_ERROR_MESSAGE);
        }
    }

    #[test]
    fn no_randomness_is_500_internal() {
        for e in
            [HostError::Randomness(getrandom::Error::UNEXPECTED), HostError::Randomness(getrandom::Error::UNSUPPORTED)]
        {
            assert_server(e, StatusCode::INTERNAL_SERVER_ERROR, "internal", NO_RANDOMNESS_MESSAGE);
        }
        let e = AttachError::Host(HostError::Randomness(getrandom::Error::UNEXPECTED));
        assert_server(e, StatusCode::INTERNAL_SERVER_ERROR, "internal", NO_RANDOMNESS_MESSAGE);
    }

    #[test]
    fn the_other_host_errors_keep_their_status_code_and_message() {
        let cases = [
            (HostError::PluginLoad(PluginLoadError::MissingAbiMarker), StatusCode::BAD_REQUEST, "invalid_plugin"),
            (
                HostError::PluginLoad(PluginLoadError::TooLarge { size: 2, limit: 1 }),
                StatusCode::PAYLOAD_TOO_LARGE,
                "plugin_too_large",
            ),
            (HostError::UnknownPlugin("nope".into()), StatusCode::NOT_FOUND, "plugin_not_found"),
            (
                HostError::UnknownVersion { plugin: "ram".into(), version: "9".into(), known: "1".into() },
                StatusCode::NOT_FOUND,
                "plugin_version_not_found",
            ),
            (HostError::BadPluginName("a b".into()), StatusCode::BAD_REQUEST, "invalid_plugin_name"),
            (
                HostError::PluginBundled { plugin: "ram".into(), version: "1".into() },
                StatusCode::CONFLICT,
                "plugin_bundled",
            ),
            (HostError::PluginInUse { plugin: "x".into(), pools: "p".into() }, StatusCode::CONFLICT, "plugin_in_use"),
            (HostError::PoolExists("p".into()), StatusCode::CONFLICT, "pool_exists"),
            (HostError::MemoryLimitTooSmall(1), StatusCode::BAD_REQUEST, "invalid_memory_limit"),
            (HostError::PoolNotFound("p".into()), StatusCode::NOT_FOUND, "pool_not_found"),
        ];
        for (e, status, code) in cases {
            let text = e.to_string();
            let (got_status, got_code, message, _) = answer(e);
            assert_eq!((got_status, got_code.as_str()), (status, code), "{text}");
            if code != "frontend_not_found" {
                assert_eq!(message, text);
            }
        }
        // In a pool config, an unknown plugin or version is a bad request.
        assert_eq!(ApiError::in_pool_config(HostError::UnknownPlugin("x".into())).code, "unknown_plugin");
        let unknown_version = HostError::UnknownVersion { plugin: "x".into(), version: "9".into(), known: "1".into() };
        assert_eq!(ApiError::in_pool_config(unknown_version).code, "unknown_plugin_version");
        assert_eq!(ApiError::in_pool_config(HostError::from(PoolError::ZeroLimit)).code, "invalid_pool");
        let disk = HostError::from(DiskError::Closing);
        assert_eq!(ApiError::in_pool_config(disk).status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn data_path_and_frontend_errors_keep_their_status_code_and_message() {
        let op = [
            (
                OpError::WrongPageSize { pool: "p".into(), expected: 4096, got: 1 },
                StatusCode::BAD_REQUEST,
                "wrong_page_size",
            ),
            (
                OpError::WrongRecordSize { pool: "p".into(), max: 9, got: 10 },
                StatusCode::BAD_REQUEST,
                "wrong_record_size",
            ),
            (OpError::NotARecordPool("p".into()), StatusCode::BAD_REQUEST, "not_a_record_pool"),
            (
                OpError::LoadFailed { pool: "p".into(), offset: 1, reason: crate::chain::GetFailure::Missing },
                StatusCode::INTERNAL_SERVER_ERROR,
                "load_failed",
            ),
        ];
        for (e, status, code) in op {
            assert_client(e, status, code);
        }
        assert_client(ShrinkError::NoFrontend("p".into()), StatusCode::CONFLICT, "no_frontend");
        let attach = [
            (AttachError::Invalid("bad".into()), StatusCode::BAD_REQUEST, "invalid_frontend"),
            (AttachError::Unsupported("no ublk".into()), StatusCode::BAD_REQUEST, "unsupported_frontend"),
            (
                AttachError::Conflict { code: "backing_in_use", message: "taken".into() },
                StatusCode::CONFLICT,
                "backing_in_use",
            ),
            (AttachError::Host(HostError::PoolNotFound("p".into())), StatusCode::NOT_FOUND, "pool_not_found"),
            (
                AttachError::PathNotAllowed {
                    what: "backing",
                    path: "/etc/passwd".into(),
                    allowed: "/var/lib/tmem".into(),
                },
                StatusCode::FORBIDDEN,
                "path_not_allowed",
            ),
        ];
        for (e, status, code) in attach {
            assert_client(e, status, code);
        }
    }
}
