//! `/api/v1/memory`: the host's memory budget for pages and what is charged to it — read it,
//! change it at run time.

use std::sync::Arc;

use axum::extract::State;
use tmem_api::rest::{ErrorBody, MemoryInfo, MemoryPatch};

use super::error::{ApiError, Json};
use crate::host::{Host, MemoryLimit};

/// The host's memory as the API shows it.
pub fn memory_info(host: &Host) -> MemoryInfo {
    let budget = host.memory_budget();
    let arena = host.page_arena().stats();
    MemoryInfo {
        limit_bytes: Some(budget.limit()).filter(|&l| l != u64::MAX),
        used_bytes: budget.used(),
        headroom_bytes: arena.headroom_bytes,
        stored_bytes: arena.object_bytes,
        slot_bytes: arena.slot_bytes,
        objects: arena.objects,
        index_bytes: arena.index_chunk_bytes + arena.index_heap_bytes,
        fragmentation_bytes: arena.run_bytes.saturating_sub(arena.slot_bytes + arena.index_chunk_bytes),
        compacted_records: arena.relocated,
        refused: arena.refused,
    }
}

/// The host's memory budget for pages and what is charged to it.
#[utoipa::path(
    get, path = "/api/v1/memory", tag = "stats",
    responses((status = 200, body = MemoryInfo), (status = 401, body = ErrorBody)),
    security(("token" = []))
)]
pub async fn get_memory(State(host): State<Arc<Host>>) -> Json<MemoryInfo> {
    Json(memory_info(&host))
}

/// Changes the host's memory budget. What is stored stays; stores past a lowered limit are
/// refused (the frontend keeps the page) until usage falls below it.
#[utoipa::path(
    patch, path = "/api/v1/memory", tag = "stats",
    request_body = MemoryPatch,
    responses(
        (status = 200, description = "The new budget", body = MemoryInfo),
        (status = 400, description = "Not exactly one of the fields, or a limit below 16 MiB (`invalid_memory_limit`)", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn patch_memory(
    State(host): State<Arc<Host>>,
    Json(patch): Json<MemoryPatch>,
) -> Result<Json<MemoryInfo>, ApiError> {
    let limit = match (patch.limit_bytes, patch.limit_percent, patch.unlimited) {
        (Some(bytes), None, false) => MemoryLimit::Bytes(bytes),
        (None, Some(percent @ 1..=100), false) => MemoryLimit::PercentOfRam(percent),
        (None, None, true) => MemoryLimit::Unlimited,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_memory_limit",
                "give exactly one of limit_bytes, limit_percent (1 to 100) and unlimited: true".to_string(),
            ));
        }
    };
    host.set_memory_limit(limit)?;
    Ok(Json(memory_info(&host)))
}
