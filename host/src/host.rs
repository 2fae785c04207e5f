//! The host: one plugin engine, the plugin registry (every version of every plugin, bundled
//! or uploaded) and the named pools. This is the library API everything else (the REST API,
//! the frontends, the tests) drives in-process.
//!
//! With a data dir, the host keeps its uploaded plugins and its pools' configs in the
//! [`Catalog`] and restores them when it starts: every change is on disk before the call
//! returns. A pool's config is kept with its plugin versions pinned by sha256, so a restart
//! (or an upgrade that bundles newer plugins) never changes which code reads a pool's pages.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tmem_api::manifest::ConfigValueKind;
use tmem_api::rest::{
    BackendRequest, Durability as ApiDurability, PoolConfig, PoolPatch, Promote as ApiPromote, SandboxConfig,
    TierConfig, TokenInfo, TokenScope,
};

use crate::catalog::{Catalog, CatalogError, GenerationRecord, PoolRecord};
use crate::chain::{Chain, ChainError, ChainLink};
use crate::credentials::{CredentialError, Credentials};
use crate::memory::arena::{ArenaConfig, PageArena};
use crate::memory::budget::MemoryBudget;
use crate::memory::governor::{Governor, GovernorConfig};
use crate::persist::{DEFAULT_FLUSH_INTERVAL, DiskError, Durability, PoolDisk};
use crate::plugin::{EngineOptions, PluginEngine, PluginLoadError, PluginModule, SandboxLimits};
use crate::pool::{Generation, Pool, PoolError, PoolLimits, PoolModes, PoolSpec};
use crate::secrets::{SEALED_PREFIX, SecretError, SecretSealer};
use crate::stats::CounterSnapshot;
use crate::tier::{Promote, Tier, TierError, TierPass, TierSpec};

/// The arena of a host whose budget is `limit` bytes: address space for the larger of the
/// budget and the machine's RAM (so a limit raised at run time has room; at most the arena's
/// largest reservation), and a headroom of max(16 MiB, 2% of the budget), at most a quarter of
/// it.
fn arena_config(limit: u64) -> ArenaConfig {
    let ram = ram_bytes().unwrap_or(1 << 30);
    let reserve = limit.max(ram).clamp(16 << 20, crate::memory::arena::MAX_RESERVE as u64);
    let span = crate::memory::arena::SPAN_BYTES as u64;
    // The headroom follows the budget, but no budget (`none`) is not a reason to commit the
    // whole reserve ahead: what RAM there is bounds it.
    let basis = limit.min(ram);
    let headroom = (16u64 << 20).max(basis / 50).min(basis / 4).max(span);
    ArenaConfig { reserve_bytes: reserve as usize, headroom_bytes: headroom as usize }
}

/// How to build a host.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Where the host keeps its state (the catalog of plugins and pools, the compiled-code
    /// cache). `None`: nothing on disk, nothing restored.
    pub data_dir: Option<PathBuf>,
    /// Engine options; `cache_dir` defaults to `DATA_DIR/cache/modules`.
    pub engine: EngineOptions,
    /// The host's memory budget for pages ([`MemoryLimit::default`]: a share of RAM).
    pub memory_limit: MemoryLimit,
    /// The key that seals the secrets the catalog keeps ([`crate::secrets`]); `None`:
    /// `DATA_DIR.key`, beside the data dir.
    pub secrets_key: Option<PathBuf>,
    /// No mover thread: tiered pools move pages only when [`Host::run_tier_passes`] is
    /// called (tests, which must not depend on timing).
    pub manual_tier_passes: bool,
    /// The memory governor's settings ([`crate::memory::governor`]); `None`: off (the
    /// library's default; `tmem serve` turns it on), switchable at run time.
    pub governor: Option<GovernorConfig>,
    /// No governor thread: the governor acts only when [`Governor::observe`] is called with
    /// readings (tests, which cannot create real memory pressure on a shared machine).
    pub manual_governor: bool,
}

/// How much memory the host may keep for pages: stored bytes and what it keeps to find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// This many bytes.
    Bytes(u64),
    /// This percentage (1–100) of the machine's RAM (`MemTotal`).
    PercentOfRam(u8),
    /// No limit (only when asked: the host may then use all the machine's memory).
    Unlimited,
}

impl Default for MemoryLimit {
    /// 20% of RAM, as zswap's `max_pool_percent`.
    fn default() -> Self {
        MemoryLimit::PercentOfRam(DEFAULT_MEMORY_PERCENT)
    }
}

/// The smallest budget: one headroom's worth.
pub const MIN_MEMORY_LIMIT: u64 = 16 << 20;

/// The default budget, in percent of RAM (zswap's `max_pool_percent`).
pub const DEFAULT_MEMORY_PERCENT: u8 = 20;

/// The machine's RAM in bytes (`MemTotal`), or `None` if `/proc/meminfo` does not say.
pub fn ram_bytes() -> Option<u64> {
    crate::memory::MemInfo::read().map(|m| m.total_bytes)
}

impl MemoryLimit {
    /// The limit in bytes (`u64::MAX`: none). A share of RAM on a machine whose RAM cannot be
    /// read is a share of 1 GiB.
    pub fn bytes(self) -> u64 {
        match self {
            MemoryLimit::Bytes(bytes) => bytes,
            MemoryLimit::PercentOfRam(percent) => ram_bytes().unwrap_or(1 << 30) / 100 * percent.min(100) as u64,
            MemoryLimit::Unlimited => u64::MAX,
        }
    }
}

/// One link of a pool's backend chain, as asked for: the API's type (plugin, optional
/// version or sha256, config, grants).
pub type BackendSpec = BackendRequest;

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
    /// A plugin built into this binary cannot be removed.
    #[error("plugin '{plugin}' version {version} is built into this tmem binary and cannot be removed")]
    PluginBundled {
        /// The plugin.
        plugin: String,
        /// The bundled version.
        version: String,
    },
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
    /// The pool's settings were refused (the client's mistake). Never [`PoolError::Chain`],
    /// [`PoolError::Disk`] or [`PoolError::NotRecorded`] when made by `From`: those become
    /// [`HostError::Chain`], [`HostError::Disk`] and [`HostError::Catalog`].
    #[error(transparent)]
    Pool(PoolError),
    /// The backend chain was refused, or a plugin of it would not start.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A persistent pool's database failed (the host's disk): nothing was created or
    /// changed, or, for a durability change, the pool is as the error left it.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The catalog could not be written: the change was not made (or, for a change to a
    /// live pool, made but not kept).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A secret of a pool's config could not be sealed for the catalog, or opened from it.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A scoped token could not be made, found or revoked.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The operating system gave no random bytes (for a pool database's or a device's name).
    #[error("no randomness: {0}")]
    Randomness(getrandom::Error),
    /// The memory budget cannot hold a new persistent pool's database cache.
    #[error(
        "a persistent pool's database cache needs {needed} bytes of the host's memory budget; {free} are free (raise --memory-limit or PATCH /api/v1/memory)"
    )]
    BudgetForCache {
        /// The cache's bytes.
        needed: u64,
        /// Bytes of the budget not charged.
        free: u64,
    },
    /// A new pool's plugin instances need more of the host's memory budget than is free.
    #[error(
        "the pool's plugin instances need {needed} bytes of the host's memory budget; {free} are free (raise --memory-limit or PATCH /api/v1/memory, or give the pool fewer shards)"
    )]
    BudgetForPlugins {
        /// The instances' linear memories, in bytes.
        needed: u64,
        /// Bytes of the budget not charged before they started.
        free: u64,
    },
    /// A lower tier was refused, or a lower tier was used directly.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// A memory budget below [`MIN_MEMORY_LIMIT`].
    #[error("a memory limit of {0} bytes is too small: at least {MIN_MEMORY_LIMIT} bytes (16 MiB)")]
    MemoryLimitTooSmall(u64),
}

impl From<PoolError> for HostError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Chain(e) => HostError::Chain(e),
            PoolError::Disk(e) => HostError::Disk(e),
            PoolError::NotRecorded(e) => HostError::Catalog(e),
            PoolError::Tier(e) => HostError::Tier(e),
            e => HostError::Pool(e),
        }
    }
}

/// A module registered by [`Host::upload`].
#[derive(Debug, Clone)]
pub struct Registered {
    /// The name it is registered under.
    pub name: String,
    /// The version.
    pub module: PluginModule,
    /// Whether these bytes were new under this name (else the call changed nothing).
    pub new: bool,
}

/// The host.
pub struct Host {
    engine: Arc<PluginEngine>,
    /// What the host may keep for pages, and what it keeps now.
    budget: Arc<MemoryBudget>,
    /// Where in-memory pools keep their bytes (charged to `budget`).
    arena: Arc<PageArena>,
    /// Moves the budget's target with the machine's memory.
    governor: Arc<Governor>,
    plugins: RwLock<BTreeMap<String, Vec<PluginModule>>>,
    pools: Arc<RwLock<BTreeMap<String, Arc<Pool>>>>,
    data_dir: Option<PathBuf>,
    catalog: Option<Arc<Catalog>>,
    /// The modules built into this binary, by sha256.
    bundled: Arc<HashMap<String, &'static [u8]>>,
    /// Serializes control-plane changes, so the catalog is written in the order they happen.
    changes: Mutex<()>,
    /// The pools' scoped tokens (frontend and peer), by hash.
    credentials: Credentials,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("data_dir", &self.data_dir).finish()
    }
}

fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Host {
    /// Builds a host: registers the plugins kept in the catalog (if there is a data dir),
    /// then the bundled ones, then restores the pools kept in the catalog. A kept pool that
    /// cannot be restored is logged and left in the catalog, untouched.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let mut engine_options = config.engine;
        if engine_options.cache_dir.is_none() {
            engine_options.cache_dir = config.data_dir.as_ref().map(|d| d.join("cache").join("modules"));
        }
        let catalog = match &config.data_dir {
            Some(dir) => {
                let key = config.secrets_key.clone().unwrap_or_else(|| SecretSealer::default_path(dir));
                Some(Arc::new(Catalog::open(&dir.join("catalog"), SecretSealer::new(key))?))
            }
            None => None,
        };
        let credentials = Credentials::restore(catalog.as_deref())?;
        let budget = Arc::new(MemoryBudget::new(config.memory_limit.bytes()));
        let arena = Arc::new(PageArena::new(arena_config(budget.limit()), budget.clone())?);
        arena.grow();
        arena.spawn_grower()?;
        if let Some(governor) = &config.governor {
            governor.check().map_err(|e| anyhow::anyhow!("memory governor: {e}"))?;
        }
        let pools: Arc<RwLock<BTreeMap<String, Arc<Pool>>>> = Arc::default();
        let arena_of = Arc::downgrade(&arena);
        let unheld = Box::new(move || {
            arena_of.upgrade().map_or(0, |arena| {
                let stats = arena.stats();
                let free_slots = stats.run_bytes.saturating_sub(stats.slot_bytes + stats.index_chunk_bytes);
                stats.headroom_bytes + free_slots
            })
        });
        let (arena_of, pools_of) = (Arc::downgrade(&arena), Arc::downgrade(&pools));
        let compact_arena = Box::new(move || {
            if let (Some(arena), Some(pools)) = (arena_of.upgrade(), pools_of.upgrade()) {
                let pools: Vec<Arc<Pool>> = pools.read().values().cloned().collect();
                compact(&pools, &arena);
            }
        });
        let governor = Arc::new(Governor::new(
            config.governor.unwrap_or(GovernorConfig { enabled: false, ..Default::default() }),
            budget.clone(),
            unheld,
            compact_arena,
            Arc::downgrade(&pools),
        ));
        let mut host = Host {
            engine: Arc::new(PluginEngine::new(engine_options)?.with_budget(budget.clone())),
            budget,
            arena,
            governor,
            plugins: RwLock::new(BTreeMap::new()),
            pools,
            data_dir: config.data_dir,
            catalog,
            bundled: Arc::default(),
            changes: Mutex::new(()),
            credentials,
        };
        if let Some(catalog) = &host.catalog {
            for stored in catalog.modules()? {
                match host.engine.load(&stored.bytes) {
                    Ok(module) => {
                        host.register(&stored.name, module);
                    }
                    Err(e) => tracing::error!(plugin = %stored.name, "a kept plugin module no longer loads: {e}"),
                }
            }
        }
        for &bytes in crate::bundled::ALL {
            let module = host.engine.load(bytes)?;
            Arc::get_mut(&mut host.bundled).expect("not shared yet").insert(module.sha256().to_string(), bytes);
            let name = module.manifest().name.to_string();
            tracing::debug!(plugin = %name, sha256 = module.sha256(), "bundled plugin registered");
            host.register(&name, module);
        }
        host.restore_pools()?;
        spawn_compactor(Arc::downgrade(&host.pools), Arc::downgrade(&host.arena))?;
        if !config.manual_tier_passes {
            crate::tier::spawn_mover(Arc::downgrade(&host.pools))?;
        }
        if !config.manual_governor {
            Governor::spawn(&host.governor)?;
        }
        Ok(host)
    }

    fn restore_pools(&self) -> Result<(), CatalogError> {
        let Some(catalog) = &self.catalog else { return Ok(()) };
        let records = catalog.pools()?;
        for record in &records {
            let name = record.config.name.clone();
            match self.restore_pool(record) {
                Ok(pool) if pool.is_persistent() => {
                    self.pools.write().insert(name.clone(), pool.clone());
                    tracing::info!(pool = %name, chain = %pool.chain().describe(), pages = pool.curr_pages(), "persistent pool restored");
                }
                Ok(pool) => {
                    self.pools.write().insert(name.clone(), pool.clone());
                    tracing::warn!(
                        pool = %name,
                        chain = %pool.chain().describe(),
                        "pool restored; its store keeps pages in memory only, so it starts empty"
                    );
                }
                Err(e) => {
                    tracing::error!(pool = %name, "a kept pool could not be restored (its record stays in the catalog): {e}")
                }
            }
        }
        // Every pool is back: the pairs are made again.
        for record in &records {
            let Some(tier) = &record.config.tier else { continue };
            let Ok(upper) = self.pool(&record.config.name) else { continue };
            let paired = tier_spec(tier).and_then(|spec| {
                let lower = self.check_tier(
                    upper.name(),
                    upper.page_size(),
                    upper.is_persistent(),
                    upper.modes(),
                    &spec,
                    true,
                )?;
                Ok((spec, lower))
            });
            match paired {
                Ok((spec, lower)) => {
                    if !upper.is_persistent() && lower.curr_pages() > 0 {
                        // The upper pool restarted empty: what is below belongs to no page.
                        if let Err(e) = lower.invalidate_area() {
                            tracing::warn!(pool = %lower.name(), "{e}");
                        }
                    }
                    upper.set_tier(Tier::new(lower, spec, upper.page_size()));
                    let dropped = upper.reconcile_tier();
                    if dropped > 0 {
                        tracing::warn!(pool = %upper.name(), dropped, "tiers: copies left below by an interrupted promotion were dropped");
                    }
                    tracing::info!(pool = %upper.name(), lower = %tier.lower, "tier restored");
                }
                Err(e) => {
                    tracing::error!(pool = %upper.name(), lower = %tier.lower, "the pool's lower tier could not be restored; it runs without: {e}")
                }
            }
        }
        Ok(())
    }

    /// Checks that `spec` can be the lower tier of the pool `upper` (of `page_size`-byte
    /// pages, persistent or not, with `modes`); returns the lower pool. `restoring`: the lower
    /// pool may hold pages (they are the pair's).
    fn check_tier(
        &self,
        upper: &str,
        page_size: u32,
        persistent: bool,
        modes: PoolModes,
        spec: &TierSpec,
        restoring: bool,
    ) -> Result<Arc<Pool>, TierError> {
        spec.check(upper)?;
        let lower = self.pool(&spec.lower).map_err(|_| TierError::LowerNotFound(spec.lower.clone()))?;
        if lower.page_size() != page_size {
            return Err(TierError::PageSize {
                lower: spec.lower.clone(),
                lower_size: lower.page_size(),
                upper_size: page_size,
            });
        }
        if let Some(owner) = lower.upper() {
            return Err(TierError::AlreadyOwned { lower: spec.lower.clone(), upper: owner });
        }
        // Walk down from the lower pool: meeting the upper one would close a cycle.
        let mut below = lower.tier().map(|t| t.lower.clone());
        while let Some(pool) = below {
            if pool.name() == upper {
                return Err(TierError::Cycle { lower: spec.lower.clone(), upper: upper.into() });
            }
            below = pool.tier().map(|t| t.lower.clone());
        }
        if persistent && !lower.is_persistent() {
            return Err(TierError::LowerNotPersistent { upper: upper.into(), lower: spec.lower.clone() });
        }
        if lower.modes().writethrough && !modes.writethrough {
            return Err(TierError::Writethrough { upper: upper.into(), lower: spec.lower.clone() });
        }
        if !restoring {
            if !lower.frontends().is_empty() {
                return Err(TierError::LowerHasFrontends(spec.lower.clone()));
            }
            if lower.curr_pages() > 0 {
                return Err(TierError::LowerNotEmpty(spec.lower.clone()));
            }
        }
        Ok(lower)
    }

    /// A pool for a frontend, the page API or a peer: refused if it is another pool's lower
    /// tier (only its upper pool reads and writes it).
    pub fn frontend_pool(&self, name: &str) -> Result<Arc<Pool>, HostError> {
        let pool = self.pool(name)?;
        pool.check_not_owned().map_err(|_| {
            HostError::Tier(TierError::Owned { pool: name.into(), upper: pool.upper().unwrap_or_default() })
        })?;
        Ok(pool)
    }

    /// Runs one mover pass over every tiered pool now (see [`Pool::run_tier_pass`]); what
    /// each did, by pool name.
    pub fn run_tier_passes(&self) -> Vec<(String, TierPass)> {
        self.pools().iter().filter(|p| p.tier().is_some()).map(|p| (p.name().to_string(), p.run_tier_pass())).collect()
    }

    fn restore_pool(&self, record: &PoolRecord) -> Result<Arc<Pool>, HostError> {
        // Secrets were sealed when the record was written: open them (or fail whole).
        let mut record = record.clone();
        if let Some(catalog) = &self.catalog {
            let sealer = catalog.sealer();
            open_secrets(sealer, &mut record.config.backends)?;
            for generation in &mut record.generations {
                open_secrets(sealer, &mut generation.backends)?;
            }
        }
        let record = &record;
        let spec = pool_spec(&record.config)?;
        spec.check()?;
        let Some(database) = &record.database else {
            let chain = self.resolve_chain(&record.config.backends)?;
            let verify = !self.all_bundled(&chain);
            let pool = Arc::new(Pool::new(spec, chain, self.engine.clone(), self.arena.clone(), None, verify)?);
            self.watch(&pool);
            return Ok(pool);
        };
        let dir = self.pools_dir()?.join(database);
        if !dir.is_dir() {
            return Err(DiskError::Missing(dir).into());
        }
        let generations = record
            .generations
            .iter()
            .map(|g| Ok((g.id, self.resolve_chain(&g.backends)?)))
            .collect::<Result<Vec<_>, HostError>>()?;
        let disk = PoolDisk::open(&dir, spec.durability)?;
        // Its pages are on disk and must be served: the cache is charged even past the budget.
        let charge = self.budget.charge_anyway(crate::persist::CACHE_BYTES);
        if self.budget.used() > self.budget.limit() {
            tracing::warn!(pool = %spec.name, "restoring this persistent pool's database cache takes the host past its memory budget");
        }
        disk.hold_cache_charge(charge);
        let pool = Arc::new(Pool::restore(spec, generations, self.engine.clone(), self.arena.clone(), disk)?);
        self.watch(&pool);
        Ok(pool)
    }

    fn pools_dir(&self) -> Result<PathBuf, HostError> {
        let data_dir = self.data_dir.as_ref().ok_or(HostError::Pool(PoolError::NeedsDataDir))?;
        Ok(data_dir.join("pools"))
    }

    /// The plugin engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The host's memory budget for pages.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// The limit in bytes, if it is acceptable (at least [`MIN_MEMORY_LIMIT`]).
    pub fn check_memory_limit(&self, limit: MemoryLimit) -> Result<u64, HostError> {
        let bytes = limit.bytes();
        if bytes < MIN_MEMORY_LIMIT {
            return Err(HostError::MemoryLimitTooSmall(bytes));
        }
        Ok(bytes)
    }

    /// The memory governor: its settings, readings and decisions.
    pub fn governor(&self) -> &Arc<Governor> {
        &self.governor
    }

    /// Changes the memory budget at run time (and the arena's headroom with it). What is
    /// stored stays; stores past a lowered limit are refused until usage falls below it.
    pub fn set_memory_limit(&self, limit: MemoryLimit) -> Result<(), HostError> {
        let bytes = self.check_memory_limit(limit)?;
        self.budget.set_limit(bytes);
        self.arena.set_headroom(arena_config(bytes).headroom_bytes);
        tracing::info!(limit = ?limit, bytes, "memory budget changed");
        Ok(())
    }

    /// Compacts the page arena now: the least-used runs of each size class are emptied into
    /// the others (every pool's records moved, one shard at a time) and their memory goes back.
    pub fn compact_memory(&self) -> CompactionReport {
        compact(&self.pools(), &self.arena)
    }

    /// The arena in-memory pools keep their bytes in.
    pub fn page_arena(&self) -> &Arc<PageArena> {
        &self.arena
    }

    /// The data directory, if any.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// The catalog, if the host has a data dir.
    pub(crate) fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_deref()
    }

    // ----- plugins -----

    fn register(&self, name: &str, module: PluginModule) -> PluginModule {
        let mut plugins = self.plugins.write();
        let versions = plugins.entry(name.to_string()).or_default();
        if let Some(same) = versions.iter().find(|m| m.sha256() == module.sha256()) {
            return same.clone();
        }
        versions.push(module.clone());
        module
    }

    /// Validates and registers a module under `name` (default: the name its manifest gives).
    /// The same bytes twice is idempotent; new bytes under a known name add a version. With
    /// a catalog the module is on disk before it is registered: nothing is half-registered.
    pub fn add_plugin(&self, name: Option<&str>, bytes: &[u8]) -> Result<PluginModule, HostError> {
        self.upload(name, bytes).map(|r| r.module)
    }

    /// [`Host::add_plugin`], saying under which name and whether the version is new.
    pub fn upload(&self, name: Option<&str>, bytes: &[u8]) -> Result<Registered, HostError> {
        let module = self.engine.load(bytes)?;
        let name = name.unwrap_or(&module.manifest().name).to_string();
        if !valid_plugin_name(&name) {
            return Err(HostError::BadPluginName(name));
        }
        let _changes = self.changes.lock();
        if let Some(same) = self.versions(&name).into_iter().find(|m| m.sha256() == module.sha256()) {
            return Ok(Registered { name, module: same, new: false });
        }
        if let Some(catalog) = &self.catalog
            && !self.is_bundled(&name, &module)
        {
            catalog.add_module(&name, bytes)?;
        }
        tracing::info!(plugin = %name, version = %module.manifest().version, sha256 = module.sha256(), "plugin registered");
        let module = self.register(&name, module);
        Ok(Registered { name, module, new: true })
    }

    /// Every version registered under `name`, oldest first (empty if none).
    pub fn versions(&self, name: &str) -> Vec<PluginModule> {
        self.plugins.read().get(name).cloned().unwrap_or_default()
    }

    /// Every registered plugin with its versions, oldest first.
    pub fn plugins(&self) -> Vec<(String, Vec<PluginModule>)> {
        self.plugins.read().iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// Whether `module`, registered under `name`, is built into this binary (the same bytes
    /// uploaded under another name are an ordinary plugin).
    pub fn is_bundled(&self, name: &str, module: &PluginModule) -> bool {
        is_bundled_in(&self.bundled, name, module)
    }

    /// Whether a chain runs only plugins built into this binary (a new pool on it needs no
    /// canary: the binary's own plugins are tested with it).
    fn all_bundled(&self, chain: &Chain) -> bool {
        chain.links().iter().all(|l| self.is_bundled(&l.plugin, &l.module))
    }

    /// Has the catalog record every new generation of `pool` (a swap, a canary's rollback)
    /// before it becomes current.
    fn watch(&self, pool: &Pool) {
        let Some(catalog) = self.catalog.clone() else { return };
        let bundled = self.bundled.clone();
        pool.set_recorder(Box::new(move |pool, next| keep_pool(&catalog, &bundled, pool, Some(next), None)));
    }

    /// Names of the pools with a generation (current, or holding pages) that runs `module`.
    pub fn users_of(&self, module: &PluginModule) -> Vec<String> {
        self.pools()
            .iter()
            .filter(|p| {
                p.generations()
                    .iter()
                    .any(|(g, _)| g.chain.links().iter().any(|l| l.module.sha256() == module.sha256()))
            })
            .map(|p| p.name().to_string())
            .collect()
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
            .find(|m| {
                m.manifest().version == wanted || (by_sha && m.sha256().starts_with(&wanted.to_ascii_lowercase()))
            })
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

    /// Removes one version of a plugin (`version`), or every version of it — unless a pool
    /// uses one of them or one is built into this binary.
    pub fn remove_plugin(&self, name: &str, version: Option<&str>) -> Result<(), HostError> {
        let _changes = self.changes.lock();
        let doomed = match version {
            Some(v) => vec![self.plugin(name, Some(v))?],
            None => {
                let all = self.versions(name);
                if all.is_empty() {
                    return Err(HostError::UnknownPlugin(name.into()));
                }
                all
            }
        };
        if let Some(bundled) = doomed.iter().find(|m| self.is_bundled(name, m)) {
            return Err(HostError::PluginBundled {
                plugin: name.into(),
                version: bundled.manifest().version.to_string(),
            });
        }
        let mut users: Vec<String> = doomed.iter().flat_map(|m| self.users_of(m)).collect();
        users.sort();
        users.dedup();
        if !users.is_empty() {
            return Err(HostError::PluginInUse { plugin: name.into(), pools: users.join(", ") });
        }
        let shas: Vec<&str> = doomed.iter().map(|m| m.sha256()).collect();
        if let Some(catalog) = &self.catalog {
            catalog.remove_modules(name, |bytes| shas.contains(&sha256_hex(bytes).as_str()))?;
        }
        let mut plugins = self.plugins.write();
        if let Some(versions) = plugins.get_mut(name) {
            versions.retain(|m| !shas.contains(&m.sha256()));
            if versions.is_empty() {
                plugins.remove(name);
            }
        }
        tracing::info!(plugin = %name, versions = doomed.len(), "plugin removed");
        Ok(())
    }

    // ----- pools -----

    /// Resolves a backend chain against the registry and checks it.
    pub fn resolve_chain(&self, backends: &[BackendSpec]) -> Result<Chain, HostError> {
        let links = backends
            .iter()
            .map(|b| {
                let module = self.plugin(&b.plugin, b.version.as_deref())?;
                Ok(ChainLink::new(&b.plugin, module, &b.config, &b.grants)?)
            })
            .collect::<Result<Vec<_>, HostError>>()?;
        Ok(Chain::new(links)?)
    }

    /// Creates a pool (the frontswap init): checks the spec and the chain, starts every plugin
    /// once with its config, keeps its config in the catalog, and registers it by name.
    pub fn create_pool(&self, spec: PoolSpec, backends: &[BackendSpec]) -> Result<Arc<Pool>, HostError> {
        let _changes = self.changes.lock();
        let chain = self.check_new_pool(&spec, backends)?;
        let name = spec.name.clone();
        let disk = if chain.is_persistent() {
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix).map_err(HostError::Randomness)?;
            let dir = self.pools_dir()?.join(format!("{name}-{}", hex::encode(suffix)));
            let charge = self.budget.charge(crate::persist::CACHE_BYTES).ok_or(HostError::BudgetForCache {
                needed: crate::persist::CACHE_BYTES,
                free: self.budget.limit().saturating_sub(self.budget.used()),
            })?;
            let disk = PoolDisk::open(&dir, spec.durability)?;
            disk.hold_cache_charge(charge);
            Some(disk)
        } else {
            None
        };
        let verify = !self.all_bundled(&chain);
        let tier = spec.tier.clone();
        let plugins_before = self.budget.plugin_bytes();
        let created = Pool::new(spec, chain, self.engine.clone(), self.arena.clone(), disk.clone(), verify)
            .map_err(HostError::from)
            .map(Arc::new)
            .and_then(|pool| {
                // Instances start whatever the budget (see `plugin::limits::MemoryCap`), every
                // shard's as the pool is made: a new pool they overdraw is refused (dropping it
                // gives their memory back). Held to the operator's limit, not to the governor's
                // target: a target lowered by passing pressure refuses stores, not pools (nor
                // `tmem serve --demo-pool` at start).
                let needed = self.budget.plugin_bytes().saturating_sub(plugins_before);
                let held = self.budget.used().saturating_sub(needed);
                let free = self.budget.operator_limit().saturating_sub(held);
                if needed > free {
                    return Err(HostError::BudgetForPlugins { needed, free });
                }
                if let Some(tier) = tier {
                    // Checked in `check_new_pool`, under the same `changes` lock.
                    let lower = self.pool(&tier.lower)?;
                    pool.set_tier(Tier::new(lower, tier, pool.page_size()));
                }
                match self.keep(&pool) {
                    Ok(()) => Ok(pool),
                    Err(e) => {
                        if let Some(tier) = pool.tier() {
                            tier.lower.set_upper(None);
                        }
                        Err(e)
                    }
                }
            });
        let pool = match created {
            Ok(pool) => pool,
            Err(e) => {
                if let Some(disk) = disk {
                    disk.remove_when_dropped();
                }
                return Err(e);
            }
        };
        self.watch(&pool);
        self.pools.write().insert(name.clone(), pool.clone());
        tracing::info!(pool = %name, chain = %pool.chain().describe(), page_size = pool.page_size(), persistent = pool.is_persistent(), "pool created");
        Ok(pool)
    }

    /// Everything `create_pool` checks before it creates anything: the spec, the name being
    /// free, the chain. Returns the resolved chain.
    fn check_new_pool(&self, spec: &PoolSpec, backends: &[BackendSpec]) -> Result<Chain, HostError> {
        spec.check()?;
        if self.pools.read().contains_key(&spec.name) {
            return Err(HostError::PoolExists(spec.name.clone()));
        }
        let chain = self.resolve_chain(backends)?;
        if let Some(tier) = &spec.tier {
            self.check_tier(&spec.name, spec.page_size, chain.is_persistent(), spec.modes, tier, false)?;
        }
        Ok(chain)
    }

    /// The spec an API config asks for, with the checks only an API config needs.
    fn spec_from(config: &PoolConfig) -> Result<PoolSpec, HostError> {
        let persistent = config.backends.last().is_some_and(|b| b.grants.iter().any(|g| g == "storage"));
        if !persistent && (config.durability.is_some() || config.flush_interval_ms.is_some()) {
            return Err(PoolError::DurabilityNeedsStorage.into());
        }
        Ok(pool_spec(config)?)
    }

    /// Creates a pool from its API config.
    pub fn create_pool_from(&self, config: &PoolConfig) -> Result<Arc<Pool>, HostError> {
        self.create_pool(Self::spec_from(config)?, &config.backends)
    }

    /// Checks an API config as [`Host::create_pool_from`] would, creating nothing (a dry
    /// run); returns the chain it would run.
    pub fn check_pool_config(&self, config: &PoolConfig) -> Result<Chain, HostError> {
        self.check_new_pool(&Self::spec_from(config)?, &config.backends)
    }

    /// Writes a pool's record to the catalog, pinning the bundled modules it runs (so a later
    /// binary with newer bundled plugins still has them).
    fn keep(&self, pool: &Pool) -> Result<(), HostError> {
        let Some(catalog) = &self.catalog else { return Ok(()) };
        Ok(keep_pool(catalog, &self.bundled, pool, None, None)?)
    }

    /// [`Host::keep`] with the pool's tier as it is about to be (`tier`), recorded before the
    /// change is made live.
    fn keep_with_tier(&self, pool: &Pool, tier: Option<&TierSpec>) -> Result<(), HostError> {
        let Some(catalog) = &self.catalog else { return Ok(()) };
        Ok(keep_pool(catalog, &self.bundled, pool, None, Some(tier.map(tier_config)))?)
    }

    /// Checks what a patch's `tier` asks of the pool `pool` (with `modes` after the patch);
    /// returns the change to make, if any (see [`Host::change_tier`]).
    fn check_tier_patch(
        &self,
        pool: &Pool,
        modes: PoolModes,
        patch: &Option<Option<TierConfig>>,
    ) -> Result<Option<TierChange>, HostError> {
        let Some(wanted) = patch else { return Ok(None) };
        let current = pool.tier();
        let Some(config) = wanted else {
            return Ok(current.map(|_| TierChange::Remove));
        };
        let spec = tier_spec(config)?;
        spec.check(pool.name())?;
        match current {
            Some(tier) if tier.spec.lower == spec.lower => {
                if tier.lower.modes().writethrough && !modes.writethrough {
                    return Err(TierError::Writethrough { upper: pool.name().into(), lower: spec.lower }.into());
                }
                Ok((tier.spec != spec).then_some(TierChange::Settings(spec)))
            }
            _ => {
                let lower =
                    self.check_tier(pool.name(), pool.page_size(), pool.is_persistent(), modes, &spec, false)?;
                Ok(Some(TierChange::Lower(spec, lower)))
            }
        }
    }

    /// Makes a checked tier change, race-free with the mover (the pool's tiering lock: no
    /// pass, no `invalidate_area` meanwhile) and with I/O (the tier changes under every
    /// shard's lock at once). The catalog records the new tier before it is live, once
    /// nothing below contradicts it: a removal first brings every page below back up, and
    /// a new lower pool is taken only while nothing is below the old one.
    fn change_tier(&self, pool: &Pool, change: TierChange) -> Result<(), HostError> {
        let _tiering = pool.lock_tiering();
        let current = pool.tier();
        match change {
            TierChange::Settings(spec) => {
                let Some(current) = current else { return Ok(()) };
                self.keep_with_tier(pool, Some(&spec))?;
                pool.replace_tier(Some(Tier::new(current.lower.clone(), spec, pool.page_size())));
                tracing::info!(pool = %pool.name(), lower = %current.lower.name(), "tier settings changed");
            }
            TierChange::Lower(spec, lower) => {
                if let Some(current) = &current {
                    let pages = current.lower.pages_with_tiers();
                    if pages > 0 {
                        return Err(TierError::PagesBelow {
                            upper: pool.name().into(),
                            lower: current.lower.name().into(),
                            pages,
                        }
                        .into());
                    }
                }
                self.keep_with_tier(pool, Some(&spec))?;
                let name = spec.lower.clone();
                pool.replace_tier(Some(Tier::new(lower, spec, pool.page_size())));
                tracing::info!(pool = %pool.name(), lower = %name, "tier added");
            }
            TierChange::Remove => {
                let Some(current) = current else { return Ok(()) };
                let lower = current.lower.name().to_string();
                let still_below = |promoted: u64, pages: u64, why: String| -> HostError {
                    TierError::StillBelow { upper: pool.name().into(), lower: lower.clone(), pages, promoted, why }
                        .into()
                };
                let below = current.lower.pages_with_tiers();
                if let Some(max) = pool.limits().max_pages
                    && pool.curr_pages() + below > max
                {
                    // Known before a page moves: refused as it is.
                    let why = format!("max_pages {max}; {} are up", pool.curr_pages());
                    return Err(still_below(0, below, why));
                }
                let promoted =
                    pool.promote_all(&current).map_err(|(promoted, pages, why)| still_below(promoted, pages, why))?;
                let left = current.lower.pages_with_tiers();
                if left > 0 {
                    return Err(still_below(promoted, left, "pages went below meanwhile".into()));
                }
                self.keep_with_tier(pool, None)?;
                pool.replace_tier(None);
                tracing::info!(pool = %pool.name(), lower, promoted, "tier removed; every page below came up");
            }
        }
        Ok(())
    }

    /// Changes a pool's limits, modes, enabled state and (hot swap) chain. Everything is
    /// checked before anything changes; a swap keeps the plugins and their order and may
    /// change their versions and configs.
    pub fn update_pool(&self, name: &str, patch: &PoolPatch) -> Result<Arc<Pool>, HostError> {
        let _changes = self.changes.lock();
        let pool = self.pool(name)?;
        let mut limits = pool.limits();
        if let Some(max_pages) = patch.max_pages {
            limits.max_pages = max_pages;
        }
        if let Some(max_bytes) = patch.max_bytes {
            limits.max_bytes = max_bytes;
        }
        if let Some(percent) = patch.accept_threshold_percent {
            limits.accept_threshold_percent = percent;
        }
        limits.check()?;
        let durability = patched_durability(&pool, patch)?;
        let writethrough = patch.writethrough.unwrap_or(pool.modes().writethrough);
        let tier_change = self.check_tier_patch(&pool, PoolModes { writethrough, ..pool.modes() }, &patch.tier)?;
        if let Some(tier) = pool.tier()
            && patch.tier.is_none()
            && tier.lower.modes().writethrough
            && !writethrough
        {
            return Err(TierError::Writethrough { upper: name.into(), lower: tier.lower.name().into() }.into());
        }
        if let Some(upper) = pool.upper().and_then(|upper| self.pool(&upper).ok())
            && writethrough
            && !upper.modes().writethrough
        {
            return Err(TierError::Writethrough { upper: upper.name().into(), lower: name.into() }.into());
        }
        let mut swap = None;
        if let Some(backends) = &patch.backends {
            let current = pool.chain();
            let names: Vec<&str> = current.links().iter().map(|l| l.plugin.as_str()).collect();
            let wanted: Vec<&str> = backends.iter().map(|b| b.plugin.as_str()).collect();
            if names != wanted {
                return Err(PoolError::SwapChangesPlugins { plugins: names.join(", ") }.into());
            }
            let backends = backends
                .iter()
                .zip(current.links())
                .map(|(b, link)| Ok(BackendSpec { config: link.keep_secrets(&b.config)?, ..b.clone() }))
                .collect::<Result<Vec<BackendSpec>, ChainError>>()
                .map_err(PoolError::Chain)?;
            let chain = self.resolve_chain(&backends)?;
            let unchanged = chain.links().iter().zip(current.links()).all(|(a, b)| a.same_as(b));
            if !unchanged {
                swap = Some(chain);
            }
        }
        // The tier first: a removal whose pages cannot all come up changes nothing else.
        if let Some(change) = tier_change {
            self.change_tier(&pool, change)?;
        }
        if let Some(chain) = swap {
            let generation = pool.swap_chain(Arc::new(chain))?;
            tracing::info!(pool = %name, generation, chain = %pool.chain().describe_versions(), "pool chain swapped");
        }
        pool.set_limits(limits)?;
        let mut modes = pool.modes();
        modes.writethrough = patch.writethrough.unwrap_or(modes.writethrough);
        modes.exclusive_gets = patch.exclusive_gets.unwrap_or(modes.exclusive_gets);
        pool.set_modes(modes);
        if let Some(enabled) = patch.enabled {
            pool.set_enabled(enabled);
        }
        if let Some(durability) = durability {
            pool.set_durability(durability)?;
        }
        self.keep(&pool)?;
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

    /// Destroys a pool: it is forgotten by the catalog, then invalidate_area, then it is gone.
    /// (A pool's block devices are detached first by their owner:
    /// [`BlockDevices::destroy_pool`](crate::frontend::attach::BlockDevices::destroy_pool).) Operations still holding the pool finish on it; nothing new can find it.
    pub fn destroy_pool(&self, name: &str) -> Result<(), HostError> {
        let _changes = self.changes.lock();
        if let Some(upper) = self.pool(name)?.upper() {
            return Err(TierError::LowerInUse { pool: name.into(), upper }.into());
        }
        // Its tokens go first: a pool of the same name made later opens to none of them.
        self.credentials.revoke_pool(self.catalog.as_deref(), name)?;
        if let Some(catalog) = &self.catalog {
            catalog.remove_pool(name)?;
        }
        let pool = self.pools.write().remove(name).ok_or_else(|| HostError::PoolNotFound(name.into()))?;
        // Frontends still holding the pool are turned away from now on (a store into a pool
        // nobody can reach again would be acknowledged and lost).
        pool.retire();
        if let Err(e) = pool.invalidate_area() {
            // Its database is deleted with it: nothing can come back.
            tracing::warn!(pool = %name, "{e}");
        }
        if let Some(tier) = pool.tier() {
            // Its pages below went with invalidate_area: the lower pool is free again.
            tier.lower.set_upper(None);
        }
        if let Some(disk) = pool.disk() {
            // The directory goes when the last operation still holding the pool is done.
            disk.remove_when_dropped();
        }
        tracing::info!(pool = %name, "pool destroyed");
        Ok(())
    }

    /// Makes a scoped token for pool `name` (see [`crate::credentials`]): the answer is the
    /// only place the token itself appears.
    pub fn create_token(&self, name: &str, scope: TokenScope, label: &str) -> Result<TokenInfo, HostError> {
        let _changes = self.changes.lock();
        self.pool(name)?;
        Ok(self.credentials.create(self.catalog.as_deref(), name, scope, label)?)
    }

    /// The scoped tokens of pool `name`, without the tokens themselves.
    pub fn tokens(&self, name: &str) -> Result<Vec<TokenInfo>, HostError> {
        self.pool(name)?;
        Ok(self.credentials.list(name))
    }

    /// Revokes token `id` of pool `name`: it opens nothing new, and what it opened ends.
    pub fn revoke_token(&self, name: &str, id: &str) -> Result<(), HostError> {
        let _changes = self.changes.lock();
        self.pool(name)?;
        Ok(self.credentials.revoke(self.catalog.as_deref(), name, id)?)
    }

    /// The pools' scoped tokens, for the listeners that check them.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
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

/// `zstd 0.1.0 → ram 0.1.0`, for logs.
/// The durability a PATCH asks for, checked against the pool (`None`: unchanged).
fn patched_durability(pool: &Pool, patch: &PoolPatch) -> Result<Option<Durability>, PoolError> {
    if patch.durability.is_none() && patch.flush_interval_ms.is_none() {
        return Ok(None);
    }
    let Some(current) = pool.durability() else {
        return Err(PoolError::NotPersistent(pool.name().into()));
    };
    let durability = match (patch.durability, patch.flush_interval_ms) {
        (Some(ApiDurability::Sync), Some(_)) => {
            return Err(PoolError::FlushIntervalNotPeriodic { hint: "" });
        }
        (Some(ApiDurability::Sync), None) => Durability::Sync,
        (Some(ApiDurability::Written), Some(_)) => {
            return Err(PoolError::FlushIntervalNotPeriodic { hint: "" });
        }
        (Some(ApiDurability::Written), None) => Durability::Written,
        (Some(ApiDurability::Periodic), ms) => Durability::Periodic(ms.map_or_else(
            || match current {
                Durability::Periodic(interval) => interval,
                Durability::Sync | Durability::Written => DEFAULT_FLUSH_INTERVAL,
            },
            Duration::from_millis,
        )),
        (None, Some(ms)) => match current {
            Durability::Periodic(_) => Durability::Periodic(Duration::from_millis(ms)),
            Durability::Sync | Durability::Written => {
                return Err(PoolError::FlushIntervalNotPeriodic { hint: "; set \"durability\": \"periodic\" too" });
            }
        },
        (None, None) => unreachable!("checked above"),
    };
    durability.check()?;
    Ok(Some(durability))
}

/// A chain's links as API backends, pinned by sha256.
fn pinned_backends(chain: &Chain) -> Vec<BackendRequest> {
    chain
        .links()
        .iter()
        .map(|l| BackendRequest {
            plugin: l.plugin.clone(),
            version: Some(l.module.sha256().into()),
            config: Value::Object(l.config.clone()),
            grants: l.grants.iter().map(|c| c.name().to_string()).collect(),
        })
        .collect()
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionReport {
    /// Runs it set out to empty.
    pub runs_drained: usize,
    /// Records it moved.
    pub moved: u64,
    /// Bytes of runs it emptied: back to the free spans — the headroom, and beyond twice the
    /// headroom, to the kernel and the budget.
    pub freed_bytes: u64,
}

/// One compaction of `arena` over `pools`. One at a time (the compactor thread, the memory
/// governor after a shrink and `Host::compact_memory` may each start one).
fn compact(pools: &[Arc<Pool>], arena: &PageArena) -> CompactionReport {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock();
    let before = arena.stats().run_bytes;
    let runs_drained = arena.begin_compaction();
    if runs_drained == 0 {
        return CompactionReport::default();
    }
    let moved = pools.iter().map(|pool| pool.relocate_records()).sum();
    // The emptied runs' spans are free spans now; the grower releases what is beyond the
    // headroom on its next round.
    arena.end_compaction();
    let freed_bytes = before.saturating_sub(arena.stats().run_bytes);
    tracing::info!(runs_drained, moved, freed_mib = freed_bytes >> 20, "page arena compacted");
    CompactionReport { runs_drained, moved, freed_bytes }
}

/// How often the compactor looks at the arena.
const COMPACT_EVERY: Duration = Duration::from_secs(5);

/// Compacts the arena whenever the memory its runs hold beyond their live slots passes a
/// quarter of them (and 16 MiB); stops when the host is gone.
fn spawn_compactor(
    pools: std::sync::Weak<RwLock<BTreeMap<String, Arc<Pool>>>>,
    arena: std::sync::Weak<PageArena>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("tmem-compact".into()).spawn(move || {
        // A compaction allocates (its lists of runs) while it holds arena class locks and
        // shard locks the I/O path takes: its reclaim must never wait on swap-out to this
        // very host (a guest swapping to a tiered pool hung so, the compactor in
        // swap_writepage). As an I/O flusher its allocations do not wait on I/O.
        crate::memory::become_io_flusher();
        loop {
            std::thread::sleep(COMPACT_EVERY);
            let (Some(pools), Some(arena)) = (pools.upgrade(), arena.upgrade()) else { return };
            let stats = arena.stats();
            let wasted = stats.run_bytes.saturating_sub(stats.slot_bytes + stats.index_chunk_bytes);
            if wasted > (16 << 20).max(stats.run_bytes / 4) {
                let pools: Vec<Arc<Pool>> = pools.read().values().cloned().collect();
                compact(&pools, &arena);
            }
        }
    })?;
    Ok(())
}

fn is_bundled_in(bundled: &HashMap<String, &'static [u8]>, name: &str, module: &PluginModule) -> bool {
    bundled.contains_key(module.sha256()) && *module.manifest().name == *name
}

/// Writes a pool's record to the catalog, pinning the bundled modules it runs (so a later
/// binary with newer bundled plugins still has them). With `next`, the record names `next` as
/// the current chain (and, for a persistent pool, lists it last among the generations): a
/// generation about to become current is recorded first.
fn keep_pool(
    catalog: &Catalog,
    bundled: &HashMap<String, &'static [u8]>,
    pool: &Pool,
    next: Option<&Generation>,
    tier: Option<Option<TierConfig>>,
) -> Result<(), CatalogError> {
    let mut generations = if pool.is_persistent() { pool.generations() } else { Vec::new() };
    let current = next.map_or_else(|| pool.chain(), |g| g.chain.clone());
    if let Some(next) = next.filter(|_| pool.is_persistent()) {
        generations.retain(|(g, _)| g.id != next.id);
        generations.push((next.clone(), 0));
    }
    for link in generations.iter().flat_map(|(g, _)| g.chain.links()).chain(current.links()) {
        if is_bundled_in(bundled, &link.plugin, &link.module) {
            catalog.add_module(&link.plugin, bundled[link.module.sha256()])?;
        }
    }
    let sealed = |chain: &Chain| -> Result<Vec<BackendRequest>, CatalogError> {
        let mut backends = pinned_backends(chain);
        seal_secrets(catalog.sealer(), chain, &mut backends)?;
        Ok(backends)
    };
    let mut config = PoolConfig { backends: sealed(&current)?, ..pool_config(pool) };
    if let Some(tier) = tier {
        config.tier = tier;
    }
    catalog.put_pool(&PoolRecord {
        config,
        database: pool.disk().and_then(|d| d.dir().file_name()).map(|n| n.to_string_lossy().into_owned()),
        generations: generations
            .iter()
            .map(|(g, _)| Ok(GenerationRecord { id: g.id, backends: sealed(&g.chain)? }))
            .collect::<Result<_, CatalogError>>()?,
    })?;
    Ok(())
}

/// Seals every secret value (a manifest key of kind `secret`) of `backends`, the links of
/// `chain` as the catalog will keep them.
fn seal_secrets(sealer: &SecretSealer, chain: &Chain, backends: &mut [BackendRequest]) -> Result<(), SecretError> {
    for (link, backend) in chain.links().iter().zip(backends) {
        let Value::Object(config) = &mut backend.config else { continue };
        for key in link.module.manifest().config.iter().filter(|k| k.value == ConfigValueKind::Secret) {
            if let Some(Value::String(secret)) = config.get_mut(key.key.as_ref())
                && !secret.is_empty()
                && !secret.starts_with(SEALED_PREFIX)
            {
                *secret = sealer.seal(secret)?;
            }
        }
    }
    Ok(())
}

/// Opens every sealed value of `backends` (as the catalog kept them).
fn open_secrets(sealer: &SecretSealer, backends: &mut [BackendRequest]) -> Result<(), SecretError> {
    for backend in backends {
        let Value::Object(config) = &mut backend.config else { continue };
        for value in config.values_mut() {
            if let Value::String(text) = value
                && text.starts_with(SEALED_PREFIX)
            {
                *text = sealer.open(text)?;
            }
        }
    }
    Ok(())
}

/// The pool spec an API config asks for.
pub fn pool_spec(config: &PoolConfig) -> Result<PoolSpec, PoolError> {
    let mut spec = PoolSpec::new(config.name.clone());
    spec.page_size = config.page_size;
    spec.limits = PoolLimits {
        max_pages: config.max_pages,
        max_bytes: config.max_bytes,
        accept_threshold_percent: config.accept_threshold_percent,
    };
    spec.modes = PoolModes { writethrough: config.writethrough, exclusive_gets: config.exclusive_gets };
    spec.enabled = config.enabled;
    spec.integrity = config.integrity;
    spec.canary_stores = config.canary_stores;
    spec.weight = config.weight.unwrap_or(crate::pool::DEFAULT_WEIGHT);
    spec.shards = config.shards.map(|n| n as usize);
    spec.tier = config.tier.as_ref().map(tier_spec).transpose()?;
    if let Some(sandbox) = config.sandbox {
        spec.sandbox = SandboxLimits {
            memory_bytes: usize::try_from(sandbox.memory_bytes).unwrap_or(usize::MAX),
            call_timeout: Duration::from_millis(sandbox.call_timeout_ms),
            ..SandboxLimits::default()
        };
    }
    spec.durability = match (config.durability, config.flush_interval_ms) {
        (None | Some(ApiDurability::Sync), None) => Durability::Sync,
        (Some(ApiDurability::Written), None) => Durability::Written,
        (Some(ApiDurability::Periodic), ms) => {
            Durability::Periodic(ms.map_or(DEFAULT_FLUSH_INTERVAL, Duration::from_millis))
        }
        (_, Some(_)) => {
            return Err(PoolError::FlushIntervalNotPeriodic { hint: " (\"durability\": \"periodic\")" });
        }
    };
    Ok(spec)
}

/// A live pool's config as the API shows it and the catalog keeps it: every setting
/// explicit, every plugin version pinned by sha256.
pub fn pool_config(pool: &Pool) -> PoolConfig {
    let limits = pool.limits();
    let modes = pool.modes();
    let sandbox = pool.sandbox();
    PoolConfig {
        name: pool.name().into(),
        page_size: pool.page_size(),
        backends: pinned_backends(&pool.chain()),
        max_pages: limits.max_pages,
        max_bytes: limits.max_bytes,
        accept_threshold_percent: limits.accept_threshold_percent,
        writethrough: modes.writethrough,
        exclusive_gets: modes.exclusive_gets,
        enabled: pool.enabled(),
        shards: Some(pool.shard_count() as u32),
        sandbox: Some(SandboxConfig {
            memory_bytes: sandbox.memory_bytes as u64,
            call_timeout_ms: sandbox.call_timeout.as_millis() as u64,
        }),
        durability: pool.durability().map(|d| match d {
            Durability::Sync => ApiDurability::Sync,
            Durability::Written => ApiDurability::Written,
            Durability::Periodic(_) => ApiDurability::Periodic,
        }),
        flush_interval_ms: match pool.durability() {
            Some(Durability::Periodic(interval)) => Some(interval.as_millis() as u64),
            _ => None,
        },
        integrity: pool.integrity(),
        canary_stores: pool.canary_stores(),
        tier: pool.tier().map(|tier| tier_config(&tier.spec)),
        weight: Some(pool.weight()).filter(|&w| w != crate::pool::DEFAULT_WEIGHT),
    }
}

/// A tier change a `PATCH` asks for, checked ([`Host::change_tier`] makes it).
enum TierChange {
    /// The same lower pool, other settings.
    Settings(TierSpec),
    /// A lower pool where there was none or another one (checked as at creation).
    Lower(TierSpec, Arc<Pool>),
    /// No tier any more.
    Remove,
}

/// The tier an API config asks for.
fn tier_spec(config: &TierConfig) -> Result<TierSpec, TierError> {
    let idle = Duration::from_secs(config.idle_seconds);
    let spec = TierSpec {
        lower: config.lower.clone(),
        idle,
        promote: match config.promote {
            ApiPromote::OnLoad => Promote::OnLoad,
            ApiPromote::Never => Promote::Never,
        },
        pressure_percent: config.pressure_percent,
    };
    Ok(spec)
}

/// A tier as the API shows it and the catalog keeps it.
pub fn tier_config(spec: &TierSpec) -> TierConfig {
    TierConfig {
        lower: spec.lower.clone(),
        idle_seconds: spec.idle.as_secs(),
        promote: match spec.promote {
            Promote::OnLoad => ApiPromote::OnLoad,
            Promote::Never => ApiPromote::Never,
        },
        pressure_percent: spec.pressure_percent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_the_catalog_cannot_record_leaves_the_old_chain_current_and_stores_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("tmem-host-unit-swap-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = || HostConfig { data_dir: Some(dir.clone()), ..Default::default() };
        let sled = BackendSpec { grants: vec!["storage".into()], ..BackendSpec::new("sled") };
        let zstd = |level: u32| BackendSpec::with_config("zstd", serde_json::json!({ "level": level }));
        let page = |tag: u8| (0..4096u32).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect::<Vec<u8>>();
        {
            let host = Host::new(config()).unwrap();
            let pool = host.create_pool(PoolSpec::new("p"), &[zstd(3), sled.clone()]).unwrap();
            pool.store(0, &page(0)).unwrap();
            let before = pool.current_generation();

            host.catalog().unwrap().fail_writes(true);
            let patch = PoolPatch { backends: Some(vec![zstd(9), sled.clone()]), ..Default::default() };
            let refused = host.update_pool("p", &patch);
            assert!(matches!(refused, Err(HostError::Catalog(_))), "{refused:?}");
            let after = pool.current_generation();
            assert_eq!(after.id, before.id, "a swap the catalog did not record became current");
            assert_eq!(after.chain.describe_versions(), before.chain.describe_versions());
            assert_eq!(pool.instance_slots(), before.chain.links().len() as u32 * pool.shard_count() as u32);

            // Acknowledged now, under the generation the catalog knows: it survives a restart.
            host.catalog().unwrap().fail_writes(false);
            assert_eq!(pool.store(1, &page(1)).unwrap(), crate::pool::StoreOutcome::Stored);
            // A swap that is recorded becomes current; its stores survive too.
            host.update_pool("p", &patch).unwrap();
            assert_eq!(pool.current_generation().id, before.id + 1);
            assert_eq!(pool.store(2, &page(2)).unwrap(), crate::pool::StoreOutcome::Stored);
        }
        let host = Host::new(config()).unwrap();
        let pool = host.pool("p").unwrap();
        let mut buf = vec![0u8; 4096];
        for offset in 0..3u64 {
            assert_eq!(
                pool.load(offset, &mut buf).unwrap(),
                crate::pool::LoadOutcome::Loaded { exclusive: false },
                "offset {offset}"
            );
            assert_eq!(buf, page(offset as u8), "offset {offset}");
        }
        drop(pool);
        drop(host);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_arena_headroom_follows_the_budget_and_no_budget_is_bounded_by_ram() {
        let ram = ram_bytes().unwrap_or(1 << 30);
        assert_eq!(arena_config(512 << 20).headroom_bytes, 16 << 20, "2% of 512 MiB is under the 16 MiB floor");
        assert_eq!(arena_config(10 << 30).headroom_bytes as u64, (10u64 << 30) / 50);
        let unlimited = arena_config(u64::MAX).headroom_bytes as u64;
        assert!(unlimited <= ram / 4 && unlimited <= (ram / 50).max(16 << 20), "{unlimited} of {ram} bytes of RAM");
    }
}
