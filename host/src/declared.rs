//! The declared state of a host: pools and swap devices an operator's config file
//! (`/etc/tmem/tmem.toml`, parsed by the binary) asks for, applied by `tmem serve` at every
//! start — after the catalog is restored, before readiness is announced — so that a reboot
//! brings swap back without anyone calling the API.
//!
//! Applying is additive and never destructive:
//! - a declared pool that is missing is created (lower tiers before the pools that name them);
//!   one that exists is left as it is, with a warning naming each setting that differs from
//!   the declaration (its pages are live: changing it is the operator's call, through the API);
//! - a declared swap device whose pool has no block device is attached, through the same
//!   [`BlockDevices::attach`] the REST API uses; a pool that already has one (restored from the
//!   catalog, or a user-recovered ublk device) keeps it, with a warning if it differs.
//!
//! Any failure fails the start, naming the pool: a swap service that silently comes up
//! without its swap device would be worse.

use std::collections::HashSet;

use tmem_api::rest::{AttachRequest, FrontendKind, PoolConfig};

use crate::frontend::attach::{AttachError, BlockDevices};
use crate::host::{HostError, pool_config};

/// What the config file declares.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Pools to create if missing, as the API's `POST /api/v1/pools` takes them.
    pub pools: Vec<PoolConfig>,
    /// Block devices to attach if their pool has none.
    pub devices: Vec<DeclaredDevice>,
}

/// A block device (a swap device) declared for a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredDevice {
    /// The pool it stores into.
    pub pool: String,
    /// What to attach, as the API's `POST /api/v1/pools/{name}/frontends` takes it.
    pub request: AttachRequest,
}

impl DeclaredDevice {
    /// A swap device: a ublk device `/dev/ublkbN` (N = `ublk_id`, or the next free one) of
    /// `size_bytes` over `pool`, the pages the pool refuses going to `backing`. What a config
    /// file's `[[swap]]` and `tmem swap on` both attach.
    pub fn ublk(pool: &str, size_bytes: u64, backing: &str, ublk_id: Option<u32>) -> DeclaredDevice {
        DeclaredDevice {
            pool: pool.into(),
            request: AttachRequest {
                kind: FrontendKind::Ublk,
                size_bytes,
                backing: backing.into(),
                socket: None,
                listen: None,
                allow_remote: false,
                insecure_no_tls: false,
                ublk_id,
            },
        }
    }

    /// What of the declaration an attached device (as it was requested) does not have, by
    /// name: `kind`, `size`, `backing`, `ublk_id` (only when the declaration names one).
    pub fn differences(&self, attached: &AttachRequest) -> Vec<&'static str> {
        let wanted = &self.request;
        let checks = [
            ("kind", attached.kind != wanted.kind),
            ("size", attached.size_bytes != wanted.size_bytes),
            ("backing", attached.backing != wanted.backing),
            ("ublk_id", wanted.ublk_id.is_some() && attached.ublk_id != wanted.ublk_id),
        ];
        checks.into_iter().filter(|(_, d)| *d).map(|(name, _)| name).collect()
    }
}

/// Why the declared state could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DeclaredError {
    /// A declared pool could not be created.
    #[error("cannot create the declared pool '{pool}': {source}")]
    Pool {
        /// The pool.
        pool: String,
        /// Why.
        source: HostError,
    },
    /// A declared device could not be attached.
    #[error("cannot attach the declared block device of pool '{pool}': {source}")]
    Device {
        /// The pool.
        pool: String,
        /// Why.
        source: AttachError,
    },
    /// The catalog keeps a block device for the pool that could not be served at this start
    /// (the log says why); attaching another would make two.
    #[error(
        "pool '{pool}' has a kept block device '{id}' that could not be served at this start (see the log above); not attaching another"
    )]
    Unserved {
        /// The pool.
        pool: String,
        /// The kept attachment's id.
        id: String,
    },
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

/// Applies `declared` to the host behind `devices`: creates missing pools, attaches missing
/// devices. Returns how many pools were created and devices attached.
pub fn apply(devices: &BlockDevices, declared: &Declared) -> Result<(usize, usize), DeclaredError> {
    let host = devices.host();
    let lower: HashSet<&str> =
        declared.pools.iter().filter_map(|p| p.tier.as_ref().map(|t| t.lower.as_str())).collect();
    // Lower tiers first: a pool's tier must exist when the pool is created.
    let (first, then): (Vec<&PoolConfig>, Vec<&PoolConfig>) =
        declared.pools.iter().partition(|p| lower.contains(p.name.as_str()));
    let mut created = 0;
    for wanted in first.into_iter().chain(then) {
        match host.pool(&wanted.name) {
            Ok(existing) => {
                let differs = differences(&pool_config(&existing), wanted);
                if differs.is_empty() {
                    tracing::info!(pool = %wanted.name, "declared pool exists");
                } else {
                    tracing::warn!(pool = %wanted.name, differs = %differs.join(", "), "declared pool exists with other settings: left as it is (change it through the API)");
                }
            }
            Err(_) => {
                host.create_pool_from(wanted)
                    .map_err(|source| DeclaredError::Pool { pool: wanted.name.clone(), source })?;
                tracing::info!(pool = %wanted.name, "declared pool created");
                created += 1;
            }
        }
    }
    let kept = match host.catalog() {
        Some(catalog) => catalog.frontends()?,
        None => Vec::new(),
    };
    let mut attached = 0;
    for wanted in &declared.devices {
        if let Some((id, request)) = devices.device_of(&wanted.pool) {
            let differs = wanted.differences(&request);
            if !differs.is_empty() {
                tracing::warn!(pool = %wanted.pool, %id, differs = %differs.join(", "), "declared block device differs from the attached one: left as it is (detach it through the API to change it)");
            } else {
                tracing::info!(pool = %wanted.pool, %id, "declared block device is attached");
            }
            continue;
        }
        if let Some(record) = kept.iter().find(|r| r.pool == wanted.pool) {
            return Err(DeclaredError::Unserved { pool: wanted.pool.clone(), id: record.id.clone() });
        }
        let details = devices
            .attach(&wanted.pool, &wanted.request)
            .map_err(|source| DeclaredError::Device { pool: wanted.pool.clone(), source })?;
        tracing::info!(pool = %wanted.pool, device = ?details, "declared block device attached");
        attached += 1;
    }
    Ok((created, attached))
}

/// The settings `wanted` states that `existing` does not have, by name. Settings `wanted`
/// leaves to the host (shards, sandbox, plugin versions) are not compared. (`tmem swap on`
/// reports an existing pool's differences with it too.)
pub fn differences(existing: &PoolConfig, wanted: &PoolConfig) -> Vec<&'static str> {
    let mut differs = Vec::new();
    let plugins = |c: &PoolConfig| c.backends.iter().map(|b| b.plugin.clone()).collect::<Vec<_>>();
    if plugins(existing) != plugins(wanted) {
        differs.push("backends");
    }
    let checks: [(&'static str, bool); 10] = [
        ("page_size", existing.page_size != wanted.page_size),
        ("max_pages", existing.max_pages != wanted.max_pages),
        ("max_bytes", existing.max_bytes != wanted.max_bytes),
        ("accept_threshold_percent", existing.accept_threshold_percent != wanted.accept_threshold_percent),
        ("writethrough", existing.writethrough != wanted.writethrough),
        ("exclusive_gets", existing.exclusive_gets != wanted.exclusive_gets),
        ("enabled", existing.enabled != wanted.enabled),
        ("integrity", existing.integrity != wanted.integrity),
        ("shards", wanted.shards.is_some() && existing.shards != wanted.shards),
        ("tier", existing.tier.as_ref().map(|t| &t.lower) != wanted.tier.as_ref().map(|t| &t.lower)),
    ];
    differs.extend(checks.into_iter().filter(|(_, d)| *d).map(|(name, _)| name));
    differs
}

#[cfg(test)]
mod tests {
    use tmem_api::rest::BackendRequest;

    use super::*;

    #[test]
    fn differences_name_what_the_declaration_states_otherwise() {
        let existing = PoolConfig::new("swap", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]);
        assert!(differences(&existing, &existing.clone()).is_empty());
        let mut wanted = existing.clone();
        wanted.max_pages = Some(10);
        wanted.backends = vec![BackendRequest::new("ram")];
        assert_eq!(differences(&existing, &wanted), ["backends", "max_pages"]);
        // Settings left to the host are not compared.
        let mut shown = existing.clone();
        shown.shards = Some(8);
        assert!(differences(&shown, &existing).is_empty());
    }
}
