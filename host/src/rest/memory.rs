//! `/api/v1/memory`: the host's memory budget for pages and what is charged to it, and the
//! memory governor that moves its target — read them, change them at run time.

use std::sync::Arc;

use axum::extract::State;
use tmem_api::rest::{ErrorBody, GovernorInfo, GovernorPatch, MemoryInfo, MemoryPatch};

use super::error::{ApiError, Json};
use crate::host::{Host, MemoryLimit};
use crate::memory::governor::{GovernorConfig, Reserve};

/// The host's memory as the API shows it.
pub fn memory_info(host: &Host) -> MemoryInfo {
    let budget = host.memory_budget();
    let arena = host.page_arena().stats();
    MemoryInfo {
        limit_bytes: Some(budget.operator_limit()).filter(|&l| l != u64::MAX),
        effective_limit_bytes: Some(budget.limit()).filter(|&l| l != u64::MAX),
        governor: Some(governor_info(host)),
        used_bytes: budget.used(),
        headroom_bytes: arena.headroom_bytes,
        stored_bytes: arena.object_bytes,
        slot_bytes: arena.slot_bytes,
        objects: arena.objects,
        index_bytes: arena.index_chunk_bytes + arena.index_heap_bytes,
        plugin_bytes: budget.plugin_bytes(),
        fragmentation_bytes: arena.run_bytes.saturating_sub(arena.slot_bytes + arena.index_chunk_bytes),
        compacted_records: arena.relocated,
        refused: arena.refused,
    }
}

/// The governor as the API shows it.
pub fn governor_info(host: &Host) -> GovernorInfo {
    let status = host.governor().status();
    let config = status.config;
    let last = status.last.filter(|_| config.enabled);
    GovernorInfo {
        enabled: config.enabled,
        target_bytes: host.memory_budget().target(),
        reserve_bytes: status.reserve_bytes,
        reserve_percent: match config.reserve {
            Reserve::PercentOfRam(p) => Some(p),
            Reserve::Auto | Reserve::Bytes(_) => None,
        },
        psi_high: config.psi_high,
        psi_low: config.psi_low,
        floor_bytes: config.floor_bytes,
        mem_available_bytes: status.readings.meminfo.map(|m| m.available_bytes),
        psi_some_avg10: status.readings.psi.map(|p| p.some_avg10),
        psi_full_avg10: status.readings.psi.map(|p| p.full_avg10),
        psi_trigger: status.psi_trigger,
        last_decision: last.map(|v| v.decision.name().to_string()),
        last_reason: last.map(|v| v.reason.name().to_string()),
        last_decision_age_seconds: status.last_at.map(|at| at.elapsed().as_secs_f64()),
        lowers: status.lowers,
        raises: status.raises,
        shrinks: status.shrinks,
        shrunk_pages: status.shrunk_pages,
        demoted_pages: status.demoted_pages,
    }
}

/// The governor's settings with `patch` applied (not checked yet).
fn patched(mut config: GovernorConfig, patch: &GovernorPatch) -> Result<GovernorConfig, ApiError> {
    let bad = |message: &str| ApiError::bad_request("invalid_governor", message.to_string());
    if let Some(enabled) = patch.enabled {
        config.enabled = enabled;
    }
    match (patch.reserve_bytes, patch.reserve_percent) {
        (Some(_), Some(_)) => return Err(bad("give reserve_bytes or reserve_percent, not both")),
        (Some(bytes), None) => config.reserve = Reserve::Bytes(bytes),
        (None, Some(percent)) => config.reserve = Reserve::PercentOfRam(percent),
        (None, None) => {}
    }
    if let Some(high) = patch.psi_high {
        config.psi_high = high;
    }
    if let Some(low) = patch.psi_low {
        config.psi_low = low;
    }
    if let Some(floor) = patch.floor_bytes {
        config.floor_bytes = floor;
    }
    config.check().map_err(|e| ApiError::bad_request("invalid_governor", e.to_string()))?;
    Ok(config)
}

/// The host's memory budget for pages and what is charged to it, and the governor.
#[utoipa::path(
    get, path = "/api/v1/memory", tag = "stats",
    responses((status = 200, body = MemoryInfo), (status = 401, body = ErrorBody)),
    security(("token" = []))
)]
pub async fn get_memory(State(host): State<Arc<Host>>) -> Json<MemoryInfo> {
    Json(memory_info(&host))
}

/// Changes the host's memory budget, the governor's settings, or both. What is stored stays;
/// stores past a lowered limit are refused (the frontend keeps the page) until usage falls
/// below it. Nothing changes unless every part of the body is acceptable.
#[utoipa::path(
    patch, path = "/api/v1/memory", tag = "stats",
    request_body = MemoryPatch,
    responses(
        (status = 200, description = "The new budget", body = MemoryInfo),
        (status = 400, description = "Not exactly one of the limit fields (nor `governor` alone), or a limit below 16 MiB (`invalid_memory_limit`); governor settings that do not fit together, e.g. `psi_low` above `psi_high` or both reserves (`invalid_governor`)", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn patch_memory(
    State(host): State<Arc<Host>>,
    Json(patch): Json<MemoryPatch>,
) -> Result<Json<MemoryInfo>, ApiError> {
    let limit = match (patch.limit_bytes, patch.limit_percent, patch.unlimited) {
        (Some(bytes), None, false) => Some(MemoryLimit::Bytes(bytes)),
        (None, Some(percent @ 1..=100), false) => Some(MemoryLimit::PercentOfRam(percent)),
        (None, None, true) => Some(MemoryLimit::Unlimited),
        (None, None, false) if patch.governor.is_some() => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_memory_limit",
                "give exactly one of limit_bytes, limit_percent (1 to 100) and unlimited: true, or governor settings"
                    .to_string(),
            ));
        }
    };
    let governor = match &patch.governor {
        Some(changes) => Some(patched(host.governor().config(), changes)?),
        None => None,
    };
    if let Some(limit) = limit {
        host.check_memory_limit(limit)?;
    }
    if let Some(config) = governor {
        host.governor().set_config(config).map_err(|e| ApiError::bad_request("invalid_governor", e.to_string()))?;
    }
    if let Some(limit) = limit {
        host.set_memory_limit(limit)?;
    }
    Ok(Json(memory_info(&host)))
}
