//! `/api/v1/plugins`: upload (validated and content-addressed), list, show, remove.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use tmem_api::rest::{ErrorBody, PluginInfo, PluginVersion};
use utoipa::IntoParams;

use super::error::{ApiError, Json, Path, Query, blocking};
use crate::host::Host;
use crate::plugin::PluginModule;

/// What the API shows of one registered version.
pub(crate) fn version_info(host: &Host, name: &str, module: &PluginModule) -> PluginVersion {
    let manifest = module.manifest();
    PluginVersion {
        name: name.into(),
        sha256: module.sha256().into(),
        kind: manifest.kind.to_string(),
        abi: manifest.abi,
        size: module.size() as u64,
        version: manifest.version.to_string(),
        description: manifest.description.to_string(),
        config: manifest.config.iter().map(|k| serde_json::to_value(k).expect("a config key serializes")).collect(),
        capabilities: manifest.capabilities.iter().map(|c| c.name().to_string()).collect(),
        bundled: host.is_bundled(name, module),
        used_by: host.users_of(module),
    }
}

fn plugin_info(host: &Host, name: &str, versions: &[PluginModule]) -> PluginInfo {
    PluginInfo { name: name.into(), versions: versions.iter().map(|m| version_info(host, name, m)).collect() }
}

/// Query of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The name to register under (default: the name in the plugin's manifest): 1-64 ASCII
    /// letters, digits, `-` and `_`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    name: Option<String>,
}

/// Uploads a plugin module.
#[utoipa::path(
    post, path = "/api/v1/plugins", tag = "plugins",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The module bytes"),
    responses(
        (status = 201, description = "Registered as a new version", body = PluginVersion),
        (status = 200, description = "These bytes were already registered under this name", body = PluginVersion),
        (status = 400, description = "Not a tmem plugin: not Wasm, wrong ABI, missing exports, bad manifest (`invalid_plugin`); or no `name` given and the manifest's name is not a valid plugin name (`invalid_plugin_name`)", body = ErrorBody),
        (status = 413, description = "Over the size limit (`plugin_too_large`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): nothing is registered", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn upload_plugin(
    State(host): State<Arc<Host>>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginVersion>), ApiError> {
    let body = body.map_err(|r| {
        let limit = host.engine().options().max_module_bytes;
        match ApiError::from(r) {
            e if e.status == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(e.status, "plugin_too_large", format!("plugin is over the limit of {limit} bytes"))
            }
            e => e,
        }
    })?;
    blocking(move || {
        let registered = host.upload(query.name.as_deref(), &body)?;
        let status = if registered.new { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, Json(version_info(&host, &registered.name, &registered.module))))
    })
    .await
}

/// Lists every plugin and its versions.
#[utoipa::path(
    get, path = "/api/v1/plugins", tag = "plugins",
    responses((status = 200, body = Vec<PluginInfo>)),
    security(("token" = []))
)]
pub async fn list_plugins(State(host): State<Arc<Host>>) -> Json<Vec<PluginInfo>> {
    Json(host.plugins().iter().map(|(name, versions)| plugin_info(&host, name, versions)).collect())
}

/// One plugin with all its versions, oldest first.
#[utoipa::path(
    get, path = "/api/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    responses((status = 200, body = PluginInfo), (status = 404, description = "No such plugin (`plugin_not_found`)", body = ErrorBody)),
    security(("token" = []))
)]
pub async fn get_plugin(State(host): State<Arc<Host>>, Path(name): Path<String>) -> Result<Json<PluginInfo>, ApiError> {
    let versions = host.versions(&name);
    if versions.is_empty() {
        return Err(crate::host::HostError::UnknownPlugin(name).into());
    }
    Ok(Json(plugin_info(&host, &name, &versions)))
}

/// Query of a removal.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Remove only this version (version string or sha256 prefix); default: every version.
    version: Option<String>,
}

/// Removes a plugin (or one version of it), unless a pool uses it or it is bundled.
#[utoipa::path(
    delete, path = "/api/v1/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such plugin (`plugin_not_found`) or version (`plugin_version_not_found`)", body = ErrorBody),
        (status = 409, description = "A pool uses it (`plugin_in_use`), or it is built into the binary (`plugin_bundled`)", body = ErrorBody),
        (status = 500, description = "The catalog cannot be written (`catalog`): nothing is removed", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn delete_plugin(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        host.remove_plugin(&name, query.version.as_deref())?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
