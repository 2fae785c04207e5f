//! The REST API (`/api/v1`), the open endpoints (`/healthz`, `/metrics`) and the OpenAPI
//! document, assembled into one axum router.
//!
//! Every `/api/v1` route needs the API token ([`auth`]); every error has one JSON shape
//! ([`error`]). Handlers are thin: they parse, call the [`Host`] (blocking work runs on
//! tokio's blocking pool), and shape the answer with the types of `tmem_api::rest`. The
//! OpenAPI document is generated from the handlers' annotations by utoipa, so a route cannot
//! exist without being documented.
//!
//! Layers, outermost first: request tracing, a per-request timeout, the body size limit,
//! then (on `/api/v1` only) the token check.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod frontends;
pub mod live_stats;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod plugins;
pub mod pools;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tmem_api::rest::{ErrorBody, Health};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::auth::ApiToken;
use self::error::{ApiError, Json};
use crate::frontend::attach::BlockDevices;
use crate::host::Host;
use crate::pool::MAX_PAGE_SIZE;

/// How long one request may take before it is answered with 503 `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(OpenApi)]
#[openapi(
    info(title = "tmem", description = "Frontswap pools backed by sandboxed WebAssembly plugins: the control plane and a page API."),
    components(schemas(ErrorBody)),
    modifiers(&BearerToken),
    tags(
        (name = "plugins", description = "Plugin modules: upload, list, remove"),
        (name = "frontends", description = "Frontends of a pool: socket connections and block devices (NBD, ublk)"),
        (name = "pools", description = "Pools: create, configure, hot swap, destroy"),
        (name = "tokens", description = "Scoped tokens of a pool: for its frontends and its peers"),
        (name = "pages", description = "Pages of a pool, for scripting and tests"),
        (name = "stats", description = "Live statistics of every pool, for dashboards"),
    )
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of `/api/v1`.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "pools",
    responses((status = 200, description = "This document", body = Object)),
    security(("token" = []))
)]
async fn openapi_json(Extension(doc): Extension<Arc<serde_json::Value>>) -> axum::Json<serde_json::Value> {
    axum::Json((*doc).clone())
}

/// The versioned API routes and their OpenAPI document.
fn api_routes() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(plugins::list_plugins, plugins::upload_plugin))
        .routes(routes!(plugins::get_plugin, plugins::delete_plugin))
        .routes(routes!(pools::list_pools, pools::create_pool))
        .routes(routes!(pools::get_pool, pools::patch_pool, pools::delete_pool))
        .routes(routes!(frontends::list_frontends, frontends::attach_frontend))
        .routes(routes!(frontends::detach_frontend))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(pools::put_page, pools::get_page, pools::delete_page))
        .routes(routes!(pools::invalidate_area))
        .routes(routes!(pools::shrink))
        .routes(routes!(live_stats::stats))
        .routes(routes!(live_stats::stats_stream))
        .routes(routes!(memory::get_memory, memory::patch_memory))
        .routes(routes!(openapi_json))
        .split_for_parts()
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`: generated from the
/// annotations, then completed ([`openapi::complete`]).
pub fn openapi() -> serde_json::Value {
    document(api_routes().1)
}

fn document(generated: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(&generated).expect("the OpenAPI document serializes");
    openapi::complete(&mut doc);
    doc
}

async fn healthz(State(host): State<Arc<Host>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pools: host.pools().len() as u64,
        curr_pages: host.curr_pages(),
    })
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {}s", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

/// What every handler may reach: the host, and the block devices that sit above it (handlers
/// extract either one with `State<Arc<Host>>` or `State<Arc<BlockDevices>>`).
#[derive(Clone, Debug)]
pub struct AppState {
    /// The host: plugins and pools.
    pub host: Arc<Host>,
    /// The host's block devices.
    pub devices: Arc<BlockDevices>,
}

impl AppState {
    /// The state of a router over `devices` and the host they serve.
    pub fn new(devices: Arc<BlockDevices>) -> AppState {
        AppState { host: devices.host().clone(), devices }
    }
}

impl FromRef<AppState> for Arc<Host> {
    fn from_ref(state: &AppState) -> Arc<Host> {
        state.host.clone()
    }
}

impl FromRef<AppState> for Arc<BlockDevices> {
    fn from_ref(state: &AppState) -> Arc<BlockDevices> {
        state.devices.clone()
    }
}

/// Every route of `tmem serve`, with no socket (tests can drive it directly).
pub fn router(state: AppState, token: ApiToken) -> axum::Router {
    let host = state.host.clone();
    let (api, doc) = api_routes();
    let doc = Arc::new(document(doc));
    let body_limit = host.engine().options().max_module_bytes.max(MAX_PAGE_SIZE as usize) + 1;
    // `layer`, not `route_layer`: the token is checked for a wrong method too (a 405 would
    // otherwise tell an unauthenticated client which routes exist).
    let api = api
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(doc))
        .layer(middleware::from_fn_with_state(Arc::new(token), auth::require_token));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .merge(dashboard::routes())
        .merge(api)
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(time_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG))
                // Error statuses are answers (a 507 is a refused page, a 404 an absent one);
                // what went wrong inside the host is logged where it happens.
                .on_failure(()),
        )
}
