//! The host: one plugin engine, the plugin registry (every version of every plugin, bundled
//! or uploaded) and the named pools. This is the library API everything else (the REST API,
//! the frontends, the tests) drives in-process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use crate::chain::{Chain, ChainLink};
use crate::plugin::{EngineOptions, PluginEngine, PluginLoadError, PluginModule};
use crate::pool::{Pool, PoolSpec};
use crate::stats::CounterSnapshot;

/// How to build a host.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Where the host keeps its state (compiled-code cache, ...). `None`: nothing on disk.
    pub data_dir: Option<PathBuf>,
    /// Engine options; `cache_dir` defaults to `DATA_DIR/cache/modules`.
    pub engine: EngineOptions,
}

/// One link of a pool's backend chain, as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    /// Registered plugin name.
    pub plugin: String,
    /// A version string, or a sha256 (or a prefix of 8+ hex digits); `None`: the newest.
    pub version: Option<String>,
    /// The plugin's config object (`null`: all defaults).
    pub config: Value,
}

impl BackendSpec {
    /// The newest version of `plugin` with its default config.
    pub fn new(plugin: &str) -> Self {
        BackendSpec { plugin: plugin.into(), version: None, config: Value::Null }
    }

    /// The same with a config.
    pub fn with_config(plugin: &str, config: Value) -> Self {
        BackendSpec { plugin: plugin.into(), version: None, config }
    }
}

/// Errors of the host's management operations (not of the data path).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A module was refused.
    #[error(transparent)]
    PluginLoad(#[from] PluginLoadError),
    /// No plugin of that name.
    #[error("no plugin named '{0}' is registered")]
    UnknownPlugin(String),
    /// No such version of a plugin.
    #[error("plugin '{plugin}' has no version '{version}' (it has: {known})")]
    UnknownVersion {
        /// The plugin.
        plugin: String,
        /// The version asked for.
        version: String,
        /// The versions there are.
        known: String,
    },
    /// A plugin name that is not acceptable.
    #[error("plugin name {0:?} must be 1-64 characters of ASCII letters, digits, '-' and '_'")]
    BadPluginName(String),
    /// A plugin is used by pools and cannot be removed.
    #[error("plugin '{plugin}' is used by pools: {pools}")]
    PluginInUse {
        /// The plugin.
        plugin: String,
        /// The pools using it.
        pools: String,
    },
    /// A pool of that name exists.
    #[error("a pool named '{0}' already exists")]
    PoolExists(String),
    /// No pool of that name.
    #[error("no pool named '{0}'")]
    PoolNotFound(String),
    /// The pool spec or chain was refused.
    #[error("{0}")]
    InvalidPool(String),
}

/// The host.
pub struct Host {
    engine: Arc<PluginEngine>,
    plugins: RwLock<BTreeMap<String, Vec<PluginModule>>>,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("data_dir", &self.data_dir).finish()
    }
}

fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Host {
    /// Builds a host with the bundled plugins registered.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let mut engine_options = config.engine;
        if engine_options.cache_dir.is_none() {
            engine_options.cache_dir = config.data_dir.as_ref().map(|d| d.join("cache").join("modules"));
        }
        let host = Host {
            engine: Arc::new(PluginEngine::new(engine_options)?),
            plugins: RwLock::new(BTreeMap::new()),
            pools: RwLock::new(BTreeMap::new()),
            data_dir: config.data_dir,
        };
        for bytes in crate::bundled::ALL {
            let module = host.add_plugin(None, bytes)?;
            tracing::debug!(plugin = %module.manifest().name, sha256 = module.sha256(), "bundled plugin registered");
        }
        Ok(host)
    }

    /// The plugin engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The data directory, if any.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    // ----- plugins -----

    /// Validates and registers a module under `name` (default: the name its manifest gives).
    /// The same bytes twice is idempotent; new bytes under a known name add a version.
    pub fn add_plugin(&self, name: Option<&str>, bytes: &[u8]) -> Result<PluginModule, HostError> {
        let module = self.engine.load(bytes)?;
        let name = name.unwrap_or(&module.manifest().name).to_string();
        if !valid_plugin_name(&name) {
            return Err(HostError::BadPluginName(name));
        }
        let mut plugins = self.plugins.write();
        let versions = plugins.entry(name).or_default();
        if let Some(same) = versions.iter().find(|m| m.sha256() == module.sha256()) {
            return Ok(same.clone());
        }
        versions.push(module.clone());
        Ok(module)
    }

    /// Every registered plugin with its versions, oldest first.
    pub fn plugins(&self) -> Vec<(String, Vec<PluginModule>)> {
        self.plugins.read().iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// One version of a plugin: by version string or sha256 (prefix of 8+), or the newest.
    pub fn plugin(&self, name: &str, version: Option<&str>) -> Result<PluginModule, HostError> {
        let plugins = self.plugins.read();
        let versions = plugins.get(name).ok_or_else(|| HostError::UnknownPlugin(name.into()))?;
        let Some(wanted) = version else {
            return Ok(versions.last().expect("a registered name has a version").clone());
        };
        let by_sha = wanted.len() >= 8 && wanted.chars().all(|c| c.is_ascii_hexdigit());
        versions
            .iter()
            .rev()
            .find(|m| m.manifest().version == wanted || (by_sha && m.sha256().starts_with(&wanted.to_ascii_lowercase())))
            .cloned()
            .ok_or_else(|| HostError::UnknownVersion {
                plugin: name.into(),
                version: wanted.into(),
                known: versions
                    .iter()
                    .map(|m| format!("{} ({})", m.manifest().version, &m.sha256()[..12]))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Removes every version of a plugin, unless a pool uses it.
    pub fn remove_plugin(&self, name: &str) -> Result<(), HostError> {
        let mut plugins = self.plugins.write();
        let versions = plugins.get(name).ok_or_else(|| HostError::UnknownPlugin(name.into()))?;
        let users: Vec<String> = self
            .pools
            .read()
            .values()
            .filter(|p| p.chain().links().iter().any(|l| versions.iter().any(|v| v.sha256() == l.module.sha256())))
            .map(|p| p.name().to_string())
            .collect();
        if !users.is_empty() {
            return Err(HostError::PluginInUse { plugin: name.into(), pools: users.join(", ") });
        }
        plugins.remove(name);
        Ok(())
    }

    // ----- pools -----

    /// Resolves a backend chain against the registry and checks it.
    pub fn resolve_chain(&self, backends: &[BackendSpec]) -> Result<Chain, HostError> {
        let links = backends
            .iter()
            .map(|b| {
                let module = self.plugin(&b.plugin, b.version.as_deref())?;
                ChainLink::new(module, &b.config).map_err(|e| HostError::InvalidPool(e.0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Chain::new(links).map_err(|e| HostError::InvalidPool(e.0))
    }

    /// Creates a pool (the frontswap init): checks the spec and the chain, starts every plugin
    /// once with its config, and registers the pool under its name.
    pub fn create_pool(&self, spec: PoolSpec, backends: &[BackendSpec]) -> Result<Arc<Pool>, HostError> {
        spec.check().map_err(HostError::InvalidPool)?;
        if self.pools.read().contains_key(&spec.name) {
            return Err(HostError::PoolExists(spec.name));
        }
        let chain = self.resolve_chain(backends)?;
        let name = spec.name.clone();
        let pool = Arc::new(Pool::new(spec, chain, self.engine.clone()).map_err(HostError::InvalidPool)?);
        let mut pools = self.pools.write();
        if pools.contains_key(&name) {
            return Err(HostError::PoolExists(name));
        }
        pools.insert(name.clone(), pool.clone());
        tracing::info!(pool = %name, chain = %pool.chain().describe(), page_size = pool.page_size(), "pool created");
        Ok(pool)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Result<Arc<Pool>, HostError> {
        self.pools.read().get(name).cloned().ok_or_else(|| HostError::PoolNotFound(name.into()))
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.read().values().cloned().collect()
    }

    /// Destroys a pool: invalidate_area, then it is gone. Operations still holding the pool
    /// finish on it; nothing new can find it.
    pub fn destroy_pool(&self, name: &str) -> Result<(), HostError> {
        let pool = self.pools.write().remove(name).ok_or_else(|| HostError::PoolNotFound(name.into()))?;
        pool.invalidate_area();
        tracing::info!(pool = %name, "pool destroyed");
        Ok(())
    }

    /// Pages held now, over all pools (frontswap's `curr_pages`).
    pub fn curr_pages(&self) -> u64 {
        self.pools.read().values().map(|p| p.curr_pages()).sum()
    }

    /// Every counter summed over all pools.
    pub fn totals(&self) -> CounterSnapshot {
        let mut total = CounterSnapshot::default();
        for pool in self.pools.read().values() {
            total.accumulate(&pool.counters());
        }
        total
    }
}
