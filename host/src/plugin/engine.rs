//! The one wasmtime `Engine` of a host: its configuration (pooling allocator, epoch
//! interruption, no WASI), the epoch ticker that enforces call deadlines, the linker with the
//! host functions, the on-disk cache of compiled code, and the loading of modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, Module, OptLevel, PoolingAllocationConfig};

use super::instance::{InstanceSpec, PluginFault, PluginInstance, PluginState, define_host_functions};
use super::limits::SandboxLimits;
use super::module::{self, PluginLoadError, PluginModule};

/// How to build the engine. The defaults suit a production host.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled code is cached (`None`: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// Interval of the epoch ticker: the resolution of call deadlines.
    pub epoch_tick: Duration,
    /// Deadlines on (the default). Off only to measure what they cost.
    pub epoch_interruption: bool,
    /// Live plugin instances the host can have at once (pooling allocator slots).
    pub max_instances: u32,
    /// The largest memory cap any pool may give an instance.
    pub max_memory_bytes: usize,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            epoch_tick: Duration::from_millis(1),
            epoch_interruption: true,
            max_instances: 1000,
            max_memory_bytes: 1 << 30,
            max_module_bytes: 16 << 20,
        }
    }
}

/// Slots kept back from pools' reservations for the host's own short-lived instances (a
/// manifest probe when a plugin is uploaded).
const PROBE_SLOTS: u32 = 8;

/// The engine's instance slots, reserved by pools before they need them: a pool reserves a
/// slot for every instance it may hold (shards × links, per live chain generation), so an
/// instance that faulted can always be created again, and one pool cannot take the slots of
/// another.
#[derive(Debug)]
pub struct InstanceSlots {
    limit: u32,
    reserved: std::sync::atomic::AtomicU32,
}

/// Not enough instance slots left for what a pool needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the host's plugin instance limit is reached: this needs {needed} instance slots (shards × plugins), {available} of {limit} are free; use fewer shards, destroy a pool, or start tmem serve with a larger --max-instances"
)]
pub struct InstanceLimit {
    /// Slots asked for.
    pub needed: u32,
    /// Slots free.
    pub available: u32,
    /// The host's limit for pools.
    pub limit: u32,
}

impl InstanceSlots {
    /// Reserves `n` slots, given back when the reservation is dropped.
    pub fn reserve(self: &Arc<Self>, n: u32) -> Result<Reservation, InstanceLimit> {
        let reserved = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |r| {
            r.checked_add(n).filter(|&after| after <= self.limit)
        });
        match reserved {
            Ok(_) => Ok(Reservation { slots: self.clone(), n }),
            Err(r) => Err(InstanceLimit { needed: n, available: self.limit.saturating_sub(r), limit: self.limit }),
        }
    }

    /// Slots pools may reserve.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Slots reserved now.
    pub fn reserved(&self) -> u32 {
        self.reserved.load(Ordering::Relaxed)
    }
}

/// Instance slots reserved by a pool; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    slots: Arc<InstanceSlots>,
    n: u32,
}

impl Reservation {
    /// Slots it holds.
    pub fn slots(&self) -> u32 {
        self.n
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.slots.reserved.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// The engine, shared by every pool of a host.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<PluginState>,
    options: EngineOptions,
    ticker_stop: Arc<AtomicBool>,
    slots: Arc<InstanceSlots>,
    /// The host's memory budget, charged for every pool instance's linear memory
    /// ([`super::limits::MemoryCap`]); `None`: uncharged.
    budget: Option<Arc<crate::memory::budget::MemoryBudget>>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").field("options", &self.options).finish()
    }
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(options: EngineOptions) -> anyhow::Result<Self> {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_core_instances(options.max_instances)
            .total_memories(options.max_instances)
            .total_tables(options.max_instances)
            .max_memory_size(options.max_memory_bytes);
        let mut config = Config::new();
        config
            .cranelift_opt_level(OptLevel::Speed)
            .epoch_interruption(options.epoch_interruption)
            // Linear memory is plain anonymous memory, its data segments copied in at
            // instantiation: not a copy-on-write mapping of a module image (a shared-memory
            // file, or the cached `.cwasm` itself), whose pages the kernel may evict and read
            // back — from the swap this host serves (issue 14's `shmem_swapin_folio` stacks).
            .memory_init_cow(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        define_host_functions(&mut linker)?;
        if let Some(dir) = &options.cache_dir {
            create_private_dir(dir)?;
        }
        let ticker_stop = Arc::new(AtomicBool::new(false));
        if options.epoch_interruption {
            let (engine, stop, tick) = (engine.clone(), ticker_stop.clone(), options.epoch_tick);
            std::thread::Builder::new().name("tmem-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        }
        let slots = Arc::new(InstanceSlots {
            limit: options.max_instances.saturating_sub(PROBE_SLOTS),
            reserved: Default::default(),
        });
        Ok(PluginEngine { engine, linker, options, ticker_stop, slots, budget: None })
    }

    /// The same engine, charging its pools' instances' linear memories to `budget`.
    pub fn with_budget(mut self, budget: Arc<crate::memory::budget::MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The instance slots pools reserve.
    pub fn slots(&self) -> &Arc<InstanceSlots> {
        &self.slots
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Validates, compiles (or fetches from the cache) and describes a module. Refusals say
    /// exactly what is wrong; see [`PluginLoadError`].
    pub fn load(&self, bytes: &[u8]) -> Result<PluginModule, PluginLoadError> {
        if bytes.len() > self.options.max_module_bytes {
            return Err(PluginLoadError::TooLarge { size: bytes.len(), limit: self.options.max_module_bytes });
        }
        module::check_header(bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let compiled = self.compile(&sha256, bytes)?;
        module::check_shape(&compiled)?;
        let limits = SandboxLimits::default();
        let text =
            PluginInstance::probe_manifest(&self.engine, &compiled, &self.linker, limits, self.options.epoch_tick)
                .map_err(|fault| PluginLoadError::BadManifest(format!("reading it failed: {fault}")))?;
        let manifest = module::parse_manifest(&text)?;
        module::check_kind(&compiled, &manifest)?;
        let pre = self.linker.instantiate_pre(&compiled).map_err(|e| PluginLoadError::Invalid(format!("{e:#}")))?;
        // A module deserialized from the cache is a mapping of its `.cwasm` file: its code and
        // its trap and address tables would be read from disk the first time a call touches
        // them (a trap on the I/O path under pressure did), so a host serving swap locks it.
        if crate::memory::is_locked() {
            crate::memory::lock_file_mappings();
        }
        Ok(PluginModule::new(sha256, bytes.len(), manifest, pre))
    }

    /// Creates an instance and runs its `init`.
    pub(crate) fn instantiate(
        &self,
        module: &PluginModule,
        limits: SandboxLimits,
        page_size: u32,
        config: &str,
        pages: Option<Arc<crate::page_store::PageShard>>,
        net: Option<&super::net::NetPolicy>,
    ) -> Result<PluginInstance, PluginFault> {
        let mut limits =
            SandboxLimits { memory_bytes: limits.memory_bytes.min(self.options.max_memory_bytes), ..limits };
        if let Some(net) = net {
            // Time waiting on the network is bounded by the grant's timeout; the call may
            // take that long on top of its own budget.
            limits.call_timeout += net.timeout;
            limits.init_timeout += net.timeout;
        }
        PluginInstance::new(
            &self.engine,
            InstanceSpec {
                module,
                limits,
                tick: self.options.epoch_tick,
                page_size,
                config,
                pages,
                net: net.cloned(),
                budget: self.budget.clone(),
            },
        )
    }

    fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<Module, PluginLoadError> {
        let invalid = |e: wasmtime::Error| PluginLoadError::Invalid(format!("{e:#}"));
        let Some(dir) = &self.options.cache_dir else {
            return Module::new(&self.engine, bytes).map_err(invalid);
        };
        let path = dir.join(format!("{sha256}-{:016x}.cwasm", self.compatibility_hash()));
        if path.exists() {
            // SAFETY: files in the cache directory are written only by this host (below), in a
            // directory only its user can write, and are keyed by the engine's compatibility
            // hash, so they are code this engine itself produced.
            match unsafe { Module::deserialize_file(&self.engine, &path) } {
                Ok(module) => return Ok(module),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable compiled-code cache entry: {e:#}"),
            }
        }
        let module = Module::new(&self.engine, bytes).map_err(invalid)?;
        if let Err(e) =
            module.serialize().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|code| write_atomically(&path, &code))
        {
            tracing::warn!(path = %path.display(), "could not cache compiled code: {e:#}");
        }
        Ok(module)
    }

    fn compatibility_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
