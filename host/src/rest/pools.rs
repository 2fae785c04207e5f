//! `/api/v1/pools`: create, list, show, change (limits, modes, hot swap), destroy; and the
//! pages of a pool (store, load, invalidate one or all) and shrink.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use tmem_api::rest::{
    AreaInvalidated, BackendInfo, CanaryInfo, CreatePoolQuery, ErrorBody, FaultInfo, GenerationInfo, LatencySummary,
    PoolCheck, PoolConfig, PoolInfo, PoolPatch, ShrinkRequest, ShrinkResult, StoreResult,
};

use super::error::{ApiError, Json, Path, Query, blocking};
use crate::chain::Chain;
use crate::frontend::attach::BlockDevices;
use crate::host::{Host, pool_config};
use crate::pool::{LoadOutcome, Pool, StoreOutcome};
use crate::stats::Op;
use tmem_api::rest::{IdleAgeBucket, TierInfo};

fn backends_info(chain: &Chain) -> Vec<BackendInfo> {
    chain
        .links()
        .iter()
        .map(|l| BackendInfo {
            plugin: l.plugin.clone(),
            version: l.module.manifest().version.to_string(),
            sha256: l.module.sha256().into(),
            kind: l.module.kind().to_string(),
            config: l.shown_config(),
            grants: l.grants.iter().map(|c| c.name().to_string()).collect(),
        })
        .collect()
}

/// Everything the API shows about a pool.
pub(crate) fn pool_info(pool: &Pool) -> PoolInfo {
    let config = pool_config(pool);
    let current = pool.current_generation();
    let latency = Op::ALL
        .iter()
        .map(|&op| {
            let h = pool.latency(op);
            let us = |ns: Option<u64>| ns.unwrap_or(0) as f64 / 1000.0;
            let count = h.count();
            let mean_us = if count == 0 { 0.0 } else { h.sum_ns as f64 / count as f64 / 1000.0 };
            (
                op.name().to_string(),
                LatencySummary { count, mean_us, p50_us: us(h.quantile_ns(0.5)), p99_us: us(h.quantile_ns(0.99)) },
            )
        })
        .collect();
    PoolInfo {
        name: pool.name().into(),
        page_size: pool.page_size(),
        backends: backends_info(&current.chain),
        generations: pool
            .generations_seen()
            .into_iter()
            .map(|(g, pages)| GenerationInfo {
                id: g.id,
                current: g.id == current.id,
                pages,
                backends: backends_info(&g.chain),
            })
            .collect(),
        max_pages: config.max_pages,
        max_bytes: config.max_bytes,
        accept_threshold_percent: config.accept_threshold_percent,
        writethrough: config.writethrough,
        exclusive_gets: config.exclusive_gets,
        enabled: config.enabled,
        full: pool.is_full(),
        shards: pool.shard_count() as u32,
        sandbox: config.sandbox.expect("a live pool's config names its sandbox"),
        persistent: pool.is_persistent(),
        integrity: config.integrity,
        canary_stores: config.canary_stores,
        instance_slots: pool.instance_slots(),
        canary: pool.canary().map(|c| CanaryInfo {
            generation: c.generation,
            state: c.state.name().into(),
            stores: c.stores,
            verified: c.verified,
            faults: c.faults,
            reason: c.reason,
            previous: c.previous.map(|g| g.id),
            replaced_by: c.replaced_by,
        }),
        durability: config.durability,
        flush_interval_ms: config.flush_interval_ms,
        frontends: super::frontends::frontend_infos(pool),
        uptime_seconds: pool.created().elapsed().as_secs(),
        counters: pool.counters().named().into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        latency,
        tier: pool.tier().map(|tier| TierInfo {
            config: crate::host::tier_config(&tier.spec),
            lower_pages: tier.lower.curr_pages(),
            idle_age: tier
                .idle_age()
                .into_iter()
                .map(|(bound, pages)| IdleAgeBucket { le_seconds: bound.map(|b| b.as_secs_f64()), pages })
                .collect(),
        }),
        tier_of: pool.upper(),
        last_fault: pool.last_fault().map(|fault| FaultInfo {
            plugin: fault.plugin,
            kind: fault.kind.into(),
            message: fault.message,
        }),
    }
}

/// Creates a pool; with `?dry_run=true`, only checks the config (200 [`PoolCheck`], nothing
/// created), answering every error exactly as the real create would.
#[utoipa::path(
    post, path = "/api/v1/pools", tag = "pools",
    params(CreatePoolQuery),
    request_body = PoolConfig,
    responses(
        (status = 201, body = PoolInfo),
        (status = 200, description = "Dry run: the config is valid", body = PoolCheck),
        (status = 400, description = "The config names a plugin or version that is not registered (`unknown_plugin`, `unknown_plugin_version`), or the chain is refused for what its plugins are (`invalid_pool`): a config its plugin's manifest refuses, grants other than those its manifest asks for, a chain that does not end with one store, `max_bytes` on a remote store, `durability` or `flush_interval_ms` on a pool that is not persistent or `flush_interval_ms` without `durability: periodic`, a persistent pool on a host without a data dir, a plugin that refuses its config or faults when it starts. Every rule on a single field is in the schema", body = ErrorBody),
        (status = 409, description = "A pool of that name exists (`pool_exists`); the host's plugin instance slots cannot hold its instances (`instance_limit`: shards × plugins, named in the message); or the memory budget cannot hold a persistent pool's database cache (`memory_budget`)", body = ErrorBody),
        (status = 500, description = "The host failed: a persistent pool's database cannot be created (`storage_error`), the catalog cannot be written (`catalog`), no randomness (`internal`); the message names no paths or internal errors, the host's log has them", body = ErrorBody),
        (status = 503, description = "The host cannot start another plugin instance now (`no_capacity`): retry later", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn create_pool(
    State(host): State<Arc<Host>>,
    Query(query): Query<CreatePoolQuery>,
    Json(config): Json<PoolConfig>,
) -> Result<Response, ApiError> {
    blocking(move || {
        if query.dry_run {
            let chain = host.check_pool_config(&config).map_err(ApiError::in_pool_config)?;
            return Ok(Json(PoolCheck { valid: true, backends: backends_info(&chain) }).into_response());
        }
        let pool = host.create_pool_from(&config).map_err(ApiError::in_pool_config)?;
        Ok((StatusCode::CREATED, Json(pool_info(&pool))).into_response())
    })
    .await
}

/// Lists every pool.
#[utoipa::path(
    get, path = "/api/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolInfo>)),
    security(("token" = []))
)]
pub async fn list_pools(State(host): State<Arc<Host>>) -> Json<Vec<PoolInfo>> {
    Json(host.pools().iter().map(|p| pool_info(p)).collect())
}

/// One pool: config, plugin versions, counters, latency.
#[utoipa::path(
    get, path = "/api/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, body = PoolInfo), (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody)),
    security(("token" = []))
)]
pub async fn get_pool(State(host): State<Arc<Host>>, Path(name): Path<String>) -> Result<Json<PoolInfo>, ApiError> {
    let pool = host.pool(&name)?;
    Ok(Json(pool_info(&pool)))
}

/// Changes limits, modes, enabled, the lower tier (adds, changes or removes it), or
/// hot-swaps plugin versions and configs.
#[utoipa::path(
    patch, path = "/api/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    request_body = PoolPatch,
    responses(
        (status = 200, body = PoolInfo),
        (status = 400, description = "The change is refused for what the pool is (`invalid_pool`): a hot swap that changes the chain's plugins or their order or persistence, a config a plugin's manifest refuses, `max_bytes` on a remote store, `durability` or `flush_interval_ms` on a pool that is not persistent or `flush_interval_ms` without periodic durability; or it names a plugin or version that is not registered (`unknown_plugin`, `unknown_plugin_version`); or a `tier` that cannot be (`invalid_tier`): the lower pool does not exist, is the pool itself, has another page size, would close a cycle, keeps pages in memory under a persistent pool, or is writethrough under a pool that is not", body = ErrorBody),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "A hot swap needs instance slots the host does not have (`instance_limit`); or the pools' state refuses the `tier` now (`tier_conflict`): the new lower pool holds pages, has frontends or is another pool's lower tier; the lower pool would change while pages are below; or a removal could not bring every page below back up (the message says how many are still below; those that came up stay up, and the tier stays)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`)", body = ErrorBody),
        (status = 503, description = "A hot swap cannot start another plugin instance now (`no_capacity`): retry later", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn patch_pool(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Json(patch): Json<PoolPatch>,
) -> Result<Json<PoolInfo>, ApiError> {
    blocking(move || {
        let pool = host.update_pool(&name, &patch).map_err(ApiError::in_pool_config)?;
        Ok(Json(pool_info(&pool)))
    })
    .await
}

/// Destroys a pool: its block device (if any) is detached, every page is invalidated, then the
/// pool is gone.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 204, description = "Destroyed"),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "The pool is another pool's lower tier (`pool_is_lower_tier`): destroy that pool first", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): the pool stays", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn delete_pool(
    State(devices): State<Arc<BlockDevices>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        devices.destroy_pool(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Stores a page (exactly `page_size` bytes) at an offset.
#[utoipa::path(
    put, path = "/api/v1/pools/{name}/pages/{offset}", tag = "pages",
    params(("name" = String, Path, description = "Pool name"), ("offset" = u64, Path, description = "Page offset (in pages)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored (`stored` or `stored_writethrough`)", body = StoreResult),
        (status = 507, description = "Rejected; any older copy at the offset is gone", body = StoreResult),
        (status = 400, description = "Not exactly one page of the pool's page size (`wrong_page_size`)", body = ErrorBody),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "The pool belongs to a block device (`pool_owned`) or is another pool's lower tier (`pool_is_lower_tier`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn put_page(
    State(host): State<Arc<Host>>,
    Path((name, offset)): Path<(String, u64)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let pool = host.frontend_pool(&name)?;
    pool.check_writer()?;
    blocking(move || {
        let (status, result) = match pool.store(offset, &body)? {
            StoreOutcome::Stored => (StatusCode::CREATED, StoreResult { outcome: "stored".into(), reason: None }),
            StoreOutcome::StoredWritethrough => {
                (StatusCode::CREATED, StoreResult { outcome: "stored_writethrough".into(), reason: None })
            }
            StoreOutcome::Rejected(reason) => (
                StatusCode::INSUFFICIENT_STORAGE,
                StoreResult { outcome: "rejected".into(), reason: Some(reason.name().into()) },
            ),
        };
        Ok((status, Json(result)).into_response())
    })
    .await
}

fn page_not_found(pool: &str, offset: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "page_not_found", format!("pool '{pool}' holds no page at offset {offset}"))
}

/// Loads a page (with exclusive gets, this also removes it).
#[utoipa::path(
    get, path = "/api/v1/pools/{name}/pages/{offset}", tag = "pages",
    params(("name" = String, Path, description = "Pool name"), ("offset" = u64, Path, description = "Page offset (in pages)")),
    responses(
        (status = 200, description = "The page", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No page there (`page_not_found`), or no such pool", body = ErrorBody),
        (status = 409, description = "An exclusive get from a pool that belongs to a block device (`pool_owned`); the pool is another pool's lower tier (`pool_is_lower_tier`)", body = ErrorBody),
        (status = 500, description = "The page is present but could not be produced (`load_failed`), or an exclusive get's removal is not durable (`storage_error`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_page(
    State(host): State<Arc<Host>>,
    Path((name, offset)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let pool = host.frontend_pool(&name)?;
    if pool.modes().exclusive_gets {
        // An exclusive load removes the page: a change only a block device owner may make.
        pool.check_writer()?;
    }
    blocking(move || {
        let mut page = vec![0u8; pool.page_size() as usize];
        match pool.load(offset, &mut page)? {
            LoadOutcome::Absent => Err(page_not_found(&name, offset)),
            LoadOutcome::Loaded { exclusive } => Ok((
                [
                    (CONTENT_TYPE, "application/octet-stream"),
                    (HeaderName::from_static("x-tmem-exclusive"), if exclusive { "true" } else { "false" }),
                ],
                page,
            )
                .into_response()),
        }
    })
    .await
}

/// Invalidates one page.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}/pages/{offset}", tag = "pages",
    params(("name" = String, Path, description = "Pool name"), ("offset" = u64, Path, description = "Page offset (in pages)")),
    responses(
        (status = 204, description = "Invalidated"),
        (status = 404, description = "No page there, or no such pool", body = ErrorBody),
        (status = 409, description = "The pool belongs to a block device (`pool_owned`) or is another pool's lower tier (`pool_is_lower_tier`)", body = ErrorBody),
        (status = 500, description = "Invalidated, but not durably: the pool's database cannot flush (`storage_error`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn delete_page(
    State(host): State<Arc<Host>>,
    Path((name, offset)): Path<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    let pool = host.frontend_pool(&name)?;
    pool.check_writer()?;
    blocking(move || {
        if pool.invalidate_page(offset)? { Ok(StatusCode::NO_CONTENT) } else { Err(page_not_found(&name, offset)) }
    })
    .await
}

/// Invalidates every page (frontswap's invalidate_area); the pool stays.
#[utoipa::path(
    delete, path = "/api/v1/pools/{name}/pages", tag = "pages",
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, body = AreaInvalidated),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "The pool belongs to a block device (`pool_owned`) or is another pool's lower tier (`pool_is_lower_tier`)", body = ErrorBody),
        (status = 500, description = "Cleared, but not durably: the pool's database cannot flush (`storage_error`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn invalidate_area(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
) -> Result<Json<AreaInvalidated>, ApiError> {
    let pool = host.frontend_pool(&name)?;
    pool.check_writer()?;
    blocking(move || {
        let pages = pool.pages_with_tiers();
        pool.invalidate_area()?;
        Ok(Json(AreaInvalidated { pages }))
    })
    .await
}

/// Brings the pool down to at most `target_pages` (writethrough pools drop pages; others hand
/// them back to a connected frontend).
#[utoipa::path(
    post, path = "/api/v1/pools/{name}/shrink", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    request_body = ShrinkRequest,
    responses(
        (status = 200, body = ShrinkResult),
        (status = 404, description = "No such pool (`pool_not_found`)", body = ErrorBody),
        (status = 409, description = "Not writethrough and no frontend to take pages back (`no_frontend`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn shrink(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Json(request): Json<ShrinkRequest>,
) -> Result<Json<ShrinkResult>, ApiError> {
    let pool = host.pool(&name)?;
    blocking(move || {
        let r = pool.shrink(request.target_pages)?;
        Ok(Json(ShrinkResult { before: r.before, after: r.after, written_back: r.written_back, dropped: r.dropped }))
    })
    .await
}
