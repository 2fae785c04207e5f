//! A pool's backend chain: zero or more filters, then exactly one store (nbdkit's layering),
//! checked when the pool is created. And the live instances of a chain in one pool shard,
//! which run a page through the chain and turn every plugin failure into a safe outcome.
//!
//! Fault policy (per chain link, per shard): a faulting instance is dropped at once and never
//! re-entered; the next operation creates a fresh one. After [`BACKOFF_AFTER`] consecutive
//! faults, creating a new instance waits out an exponential backoff (10 ms doubling to 5 s),
//! during which stores are refused with `plugin_fault` without calling the plugin. Loads and
//! invalidations ignore the backoff: a load is owed its page, and an invalidate must happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tmem_api::abi::status;
use tmem_api::manifest::{Capability, ConfigError, PluginKind};

use crate::page_store::{PageMeta, PageShard};
use crate::plugin::net::{NetConfigError, NetPolicy};
use crate::plugin::{PluginEngine, PluginFault, PluginInstance, PluginModule, SandboxLimits};

/// How the API shows a secret config value; sent back in a hot swap, it keeps the value.
pub const SECRET_SHOWN: &str = "<secret>";

/// Where a plugin granted `network` gets its `token` when the pool config leaves it empty:
/// the peer host's token, set in the environment of this host — used only for the endpoints
/// named in [`PEER_TOKEN_ENDPOINTS_ENV`].
pub const PEER_TOKEN_ENV: &str = "TMEM_PEER_TOKEN";

/// The `host:port` addresses (comma-separated) that [`PEER_TOKEN_ENV`]'s token may be sent to:
/// a link gets the token only if every address it may connect to is named here.
pub const PEER_TOKEN_ENDPOINTS_ENV: &str = "TMEM_PEER_TOKEN_ENDPOINTS";

/// The environment's peer token, if the operator named every one of `addresses` for it.
fn env_peer_token(addresses: &[String]) -> Option<String> {
    let token = std::env::var(PEER_TOKEN_ENV).ok().filter(|t| !t.is_empty())?;
    let named = std::env::var(PEER_TOKEN_ENDPOINTS_ENV).unwrap_or_default();
    let token = token_for(token, &named, addresses);
    if token.is_none() {
        tracing::warn!(
            endpoints = ?addresses,
            "{PEER_TOKEN_ENV} is set but not used: name these endpoints in {PEER_TOKEN_ENDPOINTS_ENV} to send it there"
        );
    }
    token
}

/// `token`, if every one of `addresses` is in `named` (comma-separated `host:port`s).
fn token_for(token: String, named: &str, addresses: &[String]) -> Option<String> {
    let named: Vec<&str> = named.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    (!addresses.is_empty() && addresses.iter().all(|a| named.contains(&a.as_str()))).then_some(token)
}
use crate::stats::{FaultRecord, PoolStats};

/// Consecutive faults of one link after which re-instantiation backs off.
pub const BACKOFF_AFTER: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One link of a chain: a plugin version and its checked config.
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// The name the plugin is registered under (usually its manifest's name).
    pub plugin: String,
    /// The plugin version.
    pub module: PluginModule,
    /// The complete config (defaults filled in), checked against the manifest.
    pub config: Map<String, Value>,
    /// The capabilities the pool grants it: exactly those its manifest asks for.
    pub grants: Vec<Capability>,
    /// The network grant (endpoints, timeout), when `network` is granted.
    pub net: Option<NetPolicy>,
    /// The config as the instance gets it (an empty `token` of a network plugin filled from
    /// [`PEER_TOKEN_ENV`]; never shown or kept).
    config_text: String,
}

impl ChainLink {
    /// A link with its config checked against the plugin's manifest.
    /// A link with its config checked against the plugin's manifest, and its grants against
    /// the capabilities the manifest asks for (each needed one granted, nothing more).
    pub fn new(plugin: &str, module: PluginModule, config: &Value, grants: &[String]) -> Result<Self, ChainError> {
        let config = module.manifest().resolve_config(config)?;
        let needed = &module.manifest().capabilities;
        let mut granted = Vec::new();
        for grant in grants {
            let capability = Capability::from_name(grant)
                .ok_or_else(|| ChainError::UnknownCapability { plugin: plugin.into(), grant: grant.clone() })?;
            if !needed.contains(&capability) {
                return Err(ChainError::CapabilityNotUsed { plugin: plugin.into(), grant: grant.clone() });
            }
            if !granted.contains(&capability) {
                granted.push(capability);
            }
        }
        if let Some(&missing) = needed.iter().find(|c| !granted.contains(c)) {
            return Err(ChainError::CapabilityNotGranted { plugin: plugin.into(), capability: missing });
        }
        let mut instance_config = config.clone();
        let net = if granted.contains(&Capability::Network) {
            let policy = NetPolicy::from_config(plugin, &config)?;
            if instance_config.get("token").and_then(Value::as_str) == Some("")
                && let Some(token) = env_peer_token(&policy.allowed)
            {
                instance_config.insert("token".into(), Value::String(token));
            }
            Some(policy)
        } else {
            None
        };
        let config_text = Value::Object(instance_config).to_string();
        Ok(ChainLink { plugin: plugin.into(), module, config, grants: granted, net, config_text })
    }

    /// The config for people: secret values replaced by [`SECRET_SHOWN`].
    pub fn shown_config(&self) -> Map<String, Value> {
        let mut shown = self.config.clone();
        for key in self.module.manifest().config.iter() {
            if key.value == tmem_api::manifest::ConfigValueKind::Secret
                && shown.get(key.key.as_ref()).and_then(Value::as_str).is_some_and(|s| !s.is_empty())
            {
                shown.insert(key.key.to_string(), Value::String(SECRET_SHOWN.into()));
            }
        }
        shown
    }

    /// `config` with every secret given as [`SECRET_SHOWN`] replaced by this link's current
    /// value, so a config read from the API and sent back (a hot swap) keeps its secrets — only
    /// while it sends them to the same place: a secret is kept only if `endpoints` is unchanged
    /// (a new destination needs the secret again, or the token would follow the config there).
    pub fn keep_secrets(&self, config: &Value) -> Result<Value, ChainError> {
        let mut config = config.clone();
        let same_endpoints = config.get("endpoints") == self.config.get("endpoints");
        if let Value::Object(map) = &mut config {
            for (key, value) in map.iter_mut() {
                if value.as_str() == Some(SECRET_SHOWN) && self.config.contains_key(key) {
                    let is_secret = self
                        .module
                        .manifest()
                        .config
                        .iter()
                        .any(|k| k.key == key.as_str() && k.value == tmem_api::manifest::ConfigValueKind::Secret);
                    if is_secret {
                        if !same_endpoints {
                            return Err(ChainError::SecretForNewEndpoints {
                                plugin: self.plugin.clone(),
                                key: key.clone(),
                            });
                        }
                        *value = self.config[key].clone();
                    }
                }
            }
        }
        Ok(config)
    }

    /// Whether two links run the same module with the same config and grants.
    pub fn same_as(&self, other: &ChainLink) -> bool {
        self.module.sha256() == other.module.sha256() && self.config == other.config && self.grants == other.grants
    }
}

/// Why a chain was refused: the client's mistake (a bad config, grant or shape, or a plugin
/// that will not start with it), except [`ChainError::NoInstance`], which is the host's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The config was refused by the plugin's manifest (an unknown key, a wrong type, a value
    /// out of range).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A kept secret (`"<secret>"`) in a config whose endpoints changed.
    #[error(
        "'{plugin}': {key} is given as \"<secret>\" but endpoints changed; a secret is kept only for the endpoints it was given for — give {key} again"
    )]
    SecretForNewEndpoints {
        /// The plugin.
        plugin: String,
        /// The secret's config key.
        key: String,
    },
    /// A grant names no capability there is.
    #[error("unknown capability '{grant}' granted to '{plugin}' (capabilities: {})", capability_names())]
    UnknownCapability {
        /// The plugin.
        plugin: String,
        /// The grant as given.
        grant: String,
    },
    /// A capability is granted that the plugin's manifest does not ask for.
    #[error("plugin '{plugin}' does not use the '{grant}' capability; grant a plugin only what its manifest asks for")]
    CapabilityNotUsed {
        /// The plugin.
        plugin: String,
        /// The grant as given.
        grant: String,
    },
    /// A capability the plugin's manifest asks for is not granted.
    #[error(
        "plugin '{plugin}' needs the '{capability}' capability; grant it with \"grants\": [\"{capability}\"] on that backend"
    )]
    CapabilityNotGranted {
        /// The plugin.
        plugin: String,
        /// What it needs.
        capability: Capability,
    },
    /// The network grant its config asks for makes no sense (endpoints, timeout).
    #[error(transparent)]
    Network(#[from] NetConfigError),
    /// No links at all.
    #[error("a backend chain needs at least a store (e.g. [\"ram\"])")]
    Empty,
    /// The last link is a filter.
    #[error("a backend chain must end with a store, but '{0}' is a filter")]
    EndsWithFilter(String),
    /// A store before the last link.
    #[error("'{0}' is a store, so it must be the last link of the chain (only filters may come before the store)")]
    StoreNotLast(String),
    /// A plugin refused its config when it started (`init`).
    #[error("plugin '{plugin}' refused its config: {message}")]
    InitRefused {
        /// The plugin.
        plugin: String,
        /// What it said.
        message: String,
    },
    /// A plugin faulted when it started (a trap, the deadline, the memory cap, the ABI).
    #[error("plugin '{plugin}' could not start: {fault}")]
    StartFault {
        /// The plugin.
        plugin: String,
        /// How.
        fault: PluginFault,
    },
    /// The host could not create an instance (its instance slots are exhausted, ...): not
    /// the plugin's fault, and it may work later.
    #[error("plugin '{plugin}' could not start: {fault}")]
    NoInstance {
        /// The plugin.
        plugin: String,
        /// The [`PluginFault::Instantiate`].
        fault: PluginFault,
    },
}

impl ChainError {
    /// Why `plugin` failed to start.
    pub fn start(plugin: &str, fault: PluginFault) -> Self {
        let plugin = plugin.to_string();
        match fault {
            PluginFault::InitRefused(message) => ChainError::InitRefused { plugin, message },
            fault @ PluginFault::Instantiate(_) => ChainError::NoInstance { plugin, fault },
            fault => ChainError::StartFault { plugin, fault },
        }
    }
}

fn capability_names() -> String {
    let known: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
    known.join(", ")
}

/// A checked chain: filters, then one store.
#[derive(Debug, Clone)]
pub struct Chain {
    links: Vec<ChainLink>,
}

impl Chain {
    /// Checks the shape: at least one link, every link but the last a filter, the last a store.
    pub fn new(links: Vec<ChainLink>) -> Result<Self, ChainError> {
        let Some((last, filters)) = links.split_last() else {
            return Err(ChainError::Empty);
        };
        if last.module.kind() != PluginKind::Store {
            return Err(ChainError::EndsWithFilter(last.plugin.clone()));
        }
        if let Some(store) = filters.iter().find(|l| l.module.kind() != PluginKind::Filter) {
            return Err(ChainError::StoreNotLast(store.plugin.clone()));
        }
        Ok(Chain { links })
    }

    /// The links, filters first, the store last.
    pub fn links(&self) -> &[ChainLink] {
        &self.links
    }

    /// Whether the store keeps its pages on disk (it is granted `storage`).
    pub fn is_persistent(&self) -> bool {
        self.links.last().is_some_and(|l| l.grants.contains(&Capability::Storage))
    }

    /// Names of the links, e.g. `[zstd, ram]`, for logs.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.links.iter().map(|l| l.plugin.as_str()).collect();
        format!("[{}]", names.join(", "))
    }

    /// The chain with each plugin's version, for the log: `zstd 0.1.0 → ram 0.1.0`.
    pub fn describe_versions(&self) -> String {
        let links: Vec<String> =
            self.links.iter().map(|l| format!("{} {}", l.plugin, l.module.manifest().version)).collect();
        links.join(" → ")
    }
}

/// What a pool shard hands to its chain for one operation.
pub(crate) struct ChainContext<'a> {
    pub(crate) engine: &'a PluginEngine,
    pub(crate) chain: &'a Chain,
    pub(crate) limits: SandboxLimits,
    pub(crate) page_size: u32,
    pub(crate) pages: &'a Arc<PageShard>,
    pub(crate) stats: &'a PoolStats,
    pub(crate) pool: &'a str,
    /// The generation whose chain this is (recorded with each page kept on disk).
    pub(crate) generation: u32,
}

/// How the chain encoded a stored page (for the pool's gauges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedKind {
    /// Stored normally (compressed, or kept as is by a plain store).
    Normal,
    /// A same-filled marker.
    SameFilled,
    /// Passed on raw because it did not compress.
    Incompressible,
}

impl EncodedKind {
    /// As recorded on disk.
    pub fn code(self) -> u8 {
        match self {
            EncodedKind::Normal => 0,
            EncodedKind::SameFilled => 1,
            EncodedKind::Incompressible => 2,
        }
    }

    /// From its code (an unknown code reads as `Normal`: it only affects gauges).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => EncodedKind::SameFilled,
            2 => EncodedKind::Incompressible,
            _ => EncodedKind::Normal,
        }
    }
}

/// Why a store did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PutFailure {
    /// A plugin refused the page (an expected outcome), with the ABI status.
    Refused(u32),
    /// A plugin faulted.
    Fault(PluginFault),
}

/// Why a load of a present page could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetFailure {
    /// The store has no bytes for a page the map says is present.
    #[error("the store has no bytes for the page")]
    Missing,
    /// The store's backend is unreachable.
    #[error("the store's backend is unreachable")]
    Unavailable,
    /// A filter could not decode the bytes, or they did not decode to a page.
    #[error("the stored bytes did not decode to a page")]
    Decode,
    /// A plugin faulted (after the retry on a fresh instance).
    #[error("{0}")]
    Fault(PluginFault),
    /// The chain produced bytes that are not the page it was given: their checksum differs.
    #[error("the chain returned bytes that differ from the page it stored (checksum mismatch)")]
    Integrity,
}

struct Slot {
    instance: Option<PluginInstance>,
    consecutive_faults: u32,
    retry_after: Option<Instant>,
    created_before: bool,
}

/// The live instances of a chain in one pool shard: one slot per link, filled on demand.
pub(crate) struct ChainInstances {
    slots: Vec<Slot>,
}

impl ChainInstances {
    pub(crate) fn new(links: usize) -> Self {
        ChainInstances {
            slots: (0..links)
                .map(|_| Slot { instance: None, consecutive_faults: 0, retry_after: None, created_before: false })
                .collect(),
        }
    }

    /// Bytes of linear memory of the live instances.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.iter().filter_map(|s| s.instance.as_ref()).map(PluginInstance::memory_bytes).sum()
    }

    /// Creates every link's instance, reporting the first link that cannot start.
    pub(crate) fn warm_up(&mut self, cx: &ChainContext<'_>) -> Result<(), (usize, PluginFault)> {
        (0..self.slots.len()).try_for_each(|i| self.ensure(cx, i, false).map_err(|f| (i, f)))
    }

    /// Makes sure link `i` has a live instance.
    fn ensure(&mut self, cx: &ChainContext<'_>, i: usize, respect_backoff: bool) -> Result<(), PluginFault> {
        let slot = &mut self.slots[i];
        if slot.instance.is_some() {
            return Ok(());
        }
        if respect_backoff && slot.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(PluginFault::Instantiate("backing off after repeated faults".into()));
        }
        let link = &cx.chain.links[i];
        let pages = (link.module.kind() == PluginKind::Store).then(|| cx.pages.clone());
        match cx.engine.instantiate(&link.module, cx.limits, cx.page_size, &link.config_text, pages, link.net.as_ref())
        {
            Ok(instance) => {
                if slot.created_before {
                    PoolStats::add(&cx.stats.counters.instance_restarts, 1);
                }
                slot.created_before = true;
                slot.instance = Some(instance);
                Ok(())
            }
            Err(fault) => {
                self.fault(cx, i, &fault);
                Err(fault)
            }
        }
    }

    /// Drops link `i`'s instance after a fault, counts it, and arms the backoff.
    fn fault(&mut self, cx: &ChainContext<'_>, i: usize, fault: &PluginFault) {
        let slot = &mut self.slots[i];
        slot.instance = None;
        slot.consecutive_faults += 1;
        if slot.consecutive_faults >= BACKOFF_AFTER {
            let shift = (slot.consecutive_faults - BACKOFF_AFTER).min(16);
            slot.retry_after = Some(Instant::now() + (BACKOFF_FIRST * (1 << shift)).min(BACKOFF_MAX));
        }
        PoolStats::add(&cx.stats.counters.plugin_faults, 1);
        let plugin = cx.chain.links[i].plugin.clone();
        tracing::warn!(
            pool = cx.pool,
            plugin = %plugin,
            kind = fault.kind(),
            consecutive = slot.consecutive_faults,
            "plugin fault: {fault}"
        );
        *cx.stats.faults_by_plugin.lock().entry((plugin.clone(), fault.kind())).or_default() += 1;
        *cx.stats.last_fault.lock() = Some(FaultRecord { plugin, kind: fault.kind(), message: fault.to_string() });
    }

    fn succeeded(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.consecutive_faults = 0;
        slot.retry_after = None;
    }

    fn live(&mut self, i: usize) -> &mut PluginInstance {
        self.slots[i].instance.as_mut().expect("ensure() created it")
    }

    /// Copies link `from`'s first `len` output bytes into link `to`'s input.
    fn pass(&mut self, from: usize, to: usize, len: usize) {
        let (a, b) = if from < to {
            let (a, b) = self.slots.split_at_mut(to);
            (&a[from], &mut b[0])
        } else {
            let (a, b) = self.slots.split_at_mut(from);
            (&b[0], &mut a[to])
        };
        let src = a.instance.as_ref().expect("live").output(len);
        b.instance.as_mut().expect("live").input(len).copy_from_slice(src);
    }

    /// Runs one plugin call on link `i`, handling a fault.
    fn call<R>(
        &mut self,
        cx: &ChainContext<'_>,
        i: usize,
        respect_backoff: bool,
        f: impl FnOnce(&mut PluginInstance) -> Result<R, PluginFault>,
    ) -> Result<R, PluginFault> {
        self.ensure(cx, i, respect_backoff)?;
        match f(self.live(i)) {
            Ok(r) => {
                self.succeeded(i);
                Ok(r)
            }
            Err(fault) => {
                self.fault(cx, i, &fault);
                Err(fault)
            }
        }
    }

    /// Encodes `page` through the filters and puts it into the store under `offset`, its
    /// record (if the store keeps one in the host page store) staged with `checksum`; the
    /// caller commits or aborts it (`PageShard::commit_put` / `abort_put`).
    pub(crate) fn put(
        &mut self,
        cx: &ChainContext<'_>,
        offset: u64,
        page: &[u8],
        checksum: Option<u32>,
    ) -> Result<EncodedKind, PutFailure> {
        let store = self.slots.len() - 1;
        let mut kind = EncodedKind::Normal;
        self.ensure(cx, 0, true).map_err(PutFailure::Fault)?;
        self.live(0).input(page.len()).copy_from_slice(page);
        let mut len = page.len();
        for i in 0..store {
            let (code, out) = self.call(cx, i, true, |f| f.encode(len)).map_err(PutFailure::Fault)?;
            match code {
                status::OK => {}
                status::OK_SAME_FILLED => kind = EncodedKind::SameFilled,
                status::OK_INCOMPRESSIBLE => kind = EncodedKind::Incompressible,
                refused => return Err(PutFailure::Refused(refused)),
            }
            self.ensure(cx, i + 1, true).map_err(PutFailure::Fault)?;
            self.pass(i, i + 1, out);
            len = out;
        }
        cx.pages.begin_put(offset, PageMeta { kind: kind.code(), generation: cx.generation, checksum });
        match self.call(cx, store, true, |s| s.put(offset, len)).map_err(PutFailure::Fault)? {
            status::OK => Ok(kind),
            refused => Err(PutFailure::Refused(refused)),
        }
    }

    /// Gets the bytes under `offset` from the store and decodes them through the filters
    /// (last to first) into `page`. A plugin fault is retried once on a fresh instance.
    /// `exact`: the result must fill `out` (a page); else it may be shorter (a record of a
    /// store-only pool). Returns the length written.
    pub(crate) fn get(
        &mut self,
        cx: &ChainContext<'_>,
        offset: u64,
        out: &mut [u8],
        exact: bool,
    ) -> Result<usize, GetFailure> {
        match self.get_once(cx, offset, out, exact) {
            Err(GetFailure::Fault(_)) => self.get_once(cx, offset, out, exact),
            other => other,
        }
    }

    fn get_once(
        &mut self,
        cx: &ChainContext<'_>,
        offset: u64,
        out: &mut [u8],
        exact: bool,
    ) -> Result<usize, GetFailure> {
        let store = self.slots.len() - 1;
        let (code, mut len) = self.call(cx, store, false, |s| s.get(offset)).map_err(GetFailure::Fault)?;
        match code {
            status::OK => {}
            status::NOT_FOUND => return Err(GetFailure::Missing),
            status::DECODE_FAILED => return Err(GetFailure::Decode),
            _ => return Err(GetFailure::Unavailable),
        }
        let mut holder = store;
        for i in (0..store).rev() {
            self.ensure(cx, i, false).map_err(GetFailure::Fault)?;
            self.pass(holder, i, len);
            let (code, out) = self.call(cx, i, false, |f| f.decode(len)).map_err(GetFailure::Fault)?;
            if code != status::OK {
                return Err(GetFailure::Decode);
            }
            (holder, len) = (i, out);
        }
        if len > out.len() || (exact && len != out.len()) {
            return Err(GetFailure::Decode);
        }
        out[..len].copy_from_slice(self.live(holder).output(len));
        Ok(len)
    }

    /// Tells the store `offset` is gone (a remote store deletes its copy). Whatever the store
    /// does or returns — a fault included — the caller then removes the page and its record
    /// from the shard itself (`PageShard::remove`): an invalidate always happens.
    pub(crate) fn delete(&mut self, cx: &ChainContext<'_>, offset: u64) {
        let store = self.slots.len() - 1;
        cx.pages.begin_delete(offset);
        let _ = self.call(cx, store, false, |s| s.delete(offset));
    }

    /// Tells the store everything is gone; the caller then drains the shard
    /// (`PageShard::drain`), whatever the store did.
    pub(crate) fn clear(&mut self, cx: &ChainContext<'_>) {
        let store = self.slots.len() - 1;
        let _ = self.call(cx, store, false, |s| s.clear());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environments_token_goes_only_to_endpoints_named_for_it() {
        let addresses = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let named = "10.0.0.1:7001, 10.0.0.2:7001";
        let ok = token_for("t".into(), named, &addresses(&["10.0.0.1:7001", "10.0.0.2:7001"]));
        assert_eq!(ok.as_deref(), Some("t"));
        assert_eq!(token_for("t".into(), named, &addresses(&["10.0.0.1:7001", "evil.example:7001"])), None);
        assert_eq!(token_for("t".into(), "", &addresses(&["10.0.0.1:7001"])), None, "nothing named, nothing sent");
        assert_eq!(token_for("t".into(), named, &[]), None);
    }
}
