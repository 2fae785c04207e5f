//! The REST API's request and response bodies (`/api/v1`), with their OpenAPI schemas.
//!
//! The host's handlers, the typed client ([`crate::client`]), the CLI and the tests all use
//! these types, so the wire format is defined once, here. Requests refuse unknown fields, so
//! a typo in a pool config is an error instead of a silently ignored setting.
//!
//! Conventions: JSON everywhere except page bodies (raw bytes, `application/octet-stream`);
//! sizes in bytes, durations in milliseconds; absent optional limits mean "no limit"; every
//! error is an [`ErrorBody`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{KnownFormat, SchemaFormat};

/// The path prefix of every versioned route.
pub const API_PREFIX: &str = "/api/v1";

/// What a pool name may be: 1-64 ASCII letters, digits, `-`, `_` and `.`, not starting with
/// `.` (the host refuses anything else with `invalid_pool`).
pub const POOL_NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";

/// What a plugin name may be: 1-64 ASCII letters, digits, `-` and `_` (the host refuses
/// anything else with `invalid_plugin_name`).
pub const PLUGIN_NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The page sizes a pool may have: the powers of two from 4 KiB to 2 MiB.
pub const PAGE_SIZES: [u32; 10] = [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152];

/// The shard counts a pool may have: the powers of two up to 1024.
pub const SHARD_COUNTS: [u32; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The capabilities a pool may grant a plugin.
pub const GRANTS: [&str; 2] = ["storage", "network"];

/// An integer that is one of `values` (or `null`, which means absent, when `nullable`).
fn integer_enum(values: &[u32], nullable: bool, description: &str) -> Schema {
    let mut allowed: Vec<Value> = values.iter().map(|&v| Value::from(v)).collect();
    let schema_type = if nullable {
        allowed.push(Value::Null);
        SchemaType::from_iter([Type::Integer, Type::Null])
    } else {
        SchemaType::Type(Type::Integer)
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .enum_values(Some(allowed))
        .description(Some(description))
        .into()
}

fn page_size_schema() -> Schema {
    integer_enum(&PAGE_SIZES, false, "A power of two from 4096 to 2 MiB.")
}

fn shards_schema() -> Schema {
    integer_enum(&SHARD_COUNTS, true, "Shards: a power of two up to 1024; absent: chosen from the number of CPUs.")
}

fn attach_kind_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["nbd", "ublk"]))
        .description(Some(
            "`nbd`, or `ublk` (where the kernel has the ublk driver: refused with `unsupported_frontend` otherwise)",
        ))
        .into()
}

fn grants_schema() -> Schema {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(GRANTS)))
        .unique_items(true)
        .description(Some(
            "Capabilities granted to this plugin beyond the sandbox: exactly those its manifest asks for \
             (e.g. `[\"storage\"]` for the `sled` store), or the pool is refused.",
        ))
        .into()
}

/// The one shape of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `unauthorized`, `pool_not_found`, `invalid_plugin`, ...
    pub code: String,
    /// What happened and, where it helps, what to do.
    pub message: String,
}

// ----- plugins -----

/// One version of a plugin, as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginVersion {
    /// The name it is registered under.
    pub name: String,
    /// Hex sha256 of the module bytes: the version's identity.
    pub sha256: String,
    /// `filter` or `store`.
    pub kind: String,
    /// The plugin ABI version it was built for.
    pub abi: u32,
    /// Module size in bytes.
    pub size: u64,
    /// The version the plugin gives itself.
    pub version: String,
    /// One line about what it does.
    pub description: String,
    /// The config keys it accepts (key, doc, type, range, default).
    #[schema(value_type = Vec<Object>)]
    pub config: Vec<Value>,
    /// Capabilities it needs (a pool must grant them), e.g. `["storage"]`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Built into this `tmem` binary.
    pub bundled: bool,
    /// Pools whose chain uses this version now (including pages still held by an old
    /// version after a hot swap).
    pub used_by: Vec<String>,
}

/// A plugin name and every version of it, oldest first (the last is the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    /// The registered name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<PluginVersion>,
}

// ----- pools -----

/// One link of a backend chain, as asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    /// A registered plugin name.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub plugin: String,
    /// Its version string, or its sha256 (or 8+ leading hex digits). Absent: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The plugin's config object; keys it leaves out take their defaults.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Object)]
    pub config: Value,
    /// Capabilities granted to this plugin beyond the sandbox: exactly those its manifest
    /// asks for (e.g. `["storage"]` for the `sled` store), or the pool is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = grants_schema)]
    pub grants: Vec<String>,
}

impl BackendRequest {
    /// The newest version of `plugin` with its defaults.
    pub fn new(plugin: &str) -> Self {
        BackendRequest { plugin: plugin.into(), version: None, config: Value::Null, grants: Vec::new() }
    }

    /// The newest version of `plugin` with a config.
    pub fn with_config(plugin: &str, config: Value) -> Self {
        BackendRequest { config, ..BackendRequest::new(plugin) }
    }
}

/// When a persistent pool acknowledges a change relative to the disk (`docs/durability.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A store, invalidate or invalidate_area is acknowledged only once it is on disk
    /// (concurrent changes share one flush: group commit).
    Sync,
    /// Changes are acknowledged at once and flushed every `flush_interval_ms`; a crash loses
    /// at most that window, never tears a page.
    Periodic,
    /// A change is acknowledged once the pool's database has written it to the kernel (group
    /// commit, as `sync`), without waiting for the disk: it survives a crash or kill of the
    /// host, not a power loss. For swap, which never outlives a reboot (`tmem swap on` makes
    /// its pool so): no swap-out then waits on the file system's journal.
    Written,
}

fn default_page_size() -> u32 {
    4096
}

fn default_accept_threshold() -> u8 {
    90
}

fn yes() -> bool {
    true
}

/// Sandbox limits for each plugin instance of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Linear memory an instance may have, all memories together: 1 MiB to 4 GiB.
    #[schema(minimum = 1048576, maximum = 4294967296_u64)]
    pub memory_bytes: u64,
    /// Longest a single plugin call may run: 1 to 60000 ms.
    #[schema(minimum = 1, maximum = 60000)]
    pub call_timeout_ms: u64,
}

/// A pool's configuration: the body of `POST /api/v1/pools`, and what the host persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "swap", "backends": [{"plugin": "zstd", "config": {"level": 3}}, {"plugin": "ram"}], "max_pages": 262144}))]
pub struct PoolConfig {
    /// 1-64 of ASCII letters, digits, `-`, `_`, `.`, not starting with `.`.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub name: String,
    /// A power of two from 4096 to 2 MiB.
    #[serde(default = "default_page_size")]
    #[schema(schema_with = page_size_schema)]
    pub page_size: u32,
    /// Filters first, then exactly one store, e.g. `[{"plugin": "zstd"}, {"plugin": "ram"}]`.
    #[schema(min_items = 1)]
    pub backends: Vec<BackendRequest>,
    /// Most pages held (at least 1); absent or null: no limit.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_pages: Option<u64>,
    /// Most bytes the store may use (`pool_total_size`, at least 1); absent or null: no limit.
    /// Not for a remote store (one granted `network`): its bytes are on the remote.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_bytes: Option<u64>,
    /// After hitting a limit, refuse stores until usage is below this percentage of it (1 to
    /// 100).
    #[serde(default = "default_accept_threshold")]
    #[schema(minimum = 1, maximum = 100)]
    pub accept_threshold_percent: u8,
    /// Every stored page is also written by the frontend to its device.
    #[serde(default)]
    pub writethrough: bool,
    /// A load also removes the page.
    #[serde(default)]
    pub exclusive_gets: bool,
    /// Whether stores are accepted.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Shards (a power of two up to 1024); absent: chosen from the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = shards_schema)]
    pub shards: Option<u32>,
    /// Sandbox limits; absent: the host's defaults (64 MiB, 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxConfig>,
    /// Persistent pools only (a store granted `storage`): `sync` (the default) or `periodic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// With `periodic` (and only then): the flush interval (1 to 60000 ms; default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60000)]
    pub flush_interval_ms: Option<u64>,
    /// End-to-end page integrity: the host keeps a checksum (crc32c) of every page as the
    /// frontend gave it and checks it on every load, so a plugin that returns wrong bytes
    /// causes a failed load (`integrity_failures`), never wrong data. On unless set to `false`.
    #[serde(default = "yes")]
    pub integrity: bool,
    /// How many stores of a new, unverified chain (a hot swap, or a new pool on an uploaded
    /// plugin) are read back and compared before they are acknowledged; a mismatch or too
    /// many faults roll the pool back. 0: no canary.
    #[serde(default = "default_canary_stores")]
    pub canary_stores: u32,
    /// A lower tier: another pool (same page size, empty, no frontend) that this pool owns
    /// from now on and moves its idle pages into. Absent: none. Added, changed or removed
    /// later with `PATCH` (`PoolPatch::tier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierConfig>,
    /// The pool's weight, 1 to 1000 (absent: 100), when the memory governor makes pools give
    /// memory back: each shrinks in proportion to its usage divided by its weight, so a pool
    /// of weight 200 gives back half as much per byte held as one of weight 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<u16>,
}

fn default_canary_stores() -> u32 {
    256
}

/// Whether a load through the upper pool brings a demoted page back up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    /// A load of a demoted page stores it in the upper pool again (if the upper pool takes
    /// it) and drops it from the lower one.
    #[default]
    OnLoad,
    /// A demoted page is served from the lower pool and stays there.
    Never,
}

/// The smallest `idle_seconds` of a tier.
pub const MIN_IDLE_SECONDS: u64 = 1;
/// The largest `idle_seconds` of a tier (a week).
pub const MAX_IDLE_SECONDS: u64 = 7 * 24 * 3600;

/// A pool's lower tier (`PoolConfig::tier`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The lower pool's name. It must exist, have the same page size, be empty, have no
    /// frontend, and not be the lower tier of another pool; the pair shares one offset
    /// space, and only this pool writes into it.
    pub lower: String,
    /// A page not loaded or stored for this long moves to the lower pool (1 to 604800).
    #[schema(minimum = 1, maximum = 604800)]
    pub idle_seconds: u64,
    /// `on_load` (default): a load of a demoted page brings it back up; `never`.
    #[serde(default)]
    pub promote: Promote,
    /// When the host's memory budget is at least this full (1 to 100 percent; default 90),
    /// pages idle for less than `idle_seconds` move down too, the coldest first.
    #[serde(default = "default_pressure_percent")]
    #[schema(minimum = 1, maximum = 100)]
    pub pressure_percent: u8,
}

fn default_pressure_percent() -> u8 {
    90
}

impl TierConfig {
    /// `lower` as the lower tier, pages moving down after `idle_seconds`, with the defaults.
    pub fn new(lower: &str, idle_seconds: u64) -> Self {
        TierConfig {
            lower: lower.into(),
            idle_seconds,
            promote: Promote::default(),
            pressure_percent: default_pressure_percent(),
        }
    }
}

impl PoolConfig {
    /// A config with defaults and the given chain.
    pub fn new(name: &str, backends: Vec<BackendRequest>) -> Self {
        PoolConfig {
            name: name.into(),
            page_size: default_page_size(),
            backends,
            max_pages: None,
            max_bytes: None,
            accept_threshold_percent: default_accept_threshold(),
            writethrough: false,
            exclusive_gets: false,
            enabled: true,
            shards: None,
            sandbox: None,
            durability: None,
            flush_interval_ms: None,
            integrity: true,
            canary_stores: default_canary_stores(),
            tier: None,
            weight: None,
        }
    }
}

/// Tells "absent" (keep) from `null` (clear) for a nullable field of a PATCH body.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `PATCH /api/v1/pools/{name}`: every field optional; absent fields keep their
/// value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPatch {
    /// New page limit (at least 1); `null` removes the limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    pub max_pages: Option<Option<u64>>,
    /// New byte limit (at least 1; not for a remote store); `null` removes the limit.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    pub max_bytes: Option<Option<u64>>,
    /// New accept threshold (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub accept_threshold_percent: Option<u8>,
    /// Writethrough on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writethrough: Option<bool>,
    /// Exclusive gets on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_gets: Option<bool>,
    /// Accept stores or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Hot swap: the same plugins in the same order, each at the version and config wanted.
    /// New stores use the new chain at once; pages stored before stay readable through the
    /// chain that stored them until they are invalidated or overwritten. A secret config value
    /// given as `"<secret>"` (how the API shows it) keeps its current value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub backends: Option<Vec<BackendRequest>>,
    /// Persistent pools: change the durability mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Persistent pools in `periodic` mode: change the flush interval (1 to 60000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60000)]
    pub flush_interval_ms: Option<u64>,
    /// The pool's lower tier. An object adds one (the lower pool is checked as at creation:
    /// it exists, has the same page size, is empty, has no frontend, is no other pool's lower
    /// tier, makes no cycle, and is persistent if this pool is) or changes its settings
    /// (`idle_seconds`, `promote`, `pressure_percent`; a different `lower` only while no page
    /// is below). `null` removes it: every page below is first brought back up (each durable
    /// up before it leaves the lower pool); if one cannot come up (this pool's limits, the
    /// memory budget), the tier stays and the answer (409 `tier_conflict`) says how many pages
    /// are still below. Then the lower pool is an ordinary pool again. The tier changes before
    /// the other fields of the same body (a refused change leaves them as they were): raise a
    /// limit for a removal in an earlier `PATCH`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TierConfig>)]
    pub tier: Option<Option<TierConfig>>,
}

/// A canary (`PoolInfo::canary`): a new chain generation's first stores, read back and
/// compared before they are acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CanaryInfo {
    /// The generation under test.
    pub generation: u32,
    /// `running`, `passed`, `rolled_back` (the previous chain is current again) or `disabled`
    /// (a new pool's canary failed: stores are refused).
    pub state: String,
    /// Stores it verifies in all.
    pub stores: u64,
    /// Stores verified so far.
    pub verified: u64,
    /// Plugin faults among its stores.
    pub faults: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The generation it replaced (absent: a new pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u32>,
    /// After a rollback: the generation that runs the previous chain now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<u32>,
}

/// One link of a pool's chain as it runs: the version pinned by sha256, the full config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackendInfo {
    /// The plugin name.
    pub plugin: String,
    /// Its version string.
    pub version: String,
    /// The module's sha256.
    pub sha256: String,
    /// `filter` or `store`.
    pub kind: String,
    /// The complete config, defaults filled in.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Capabilities granted to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

/// A chain a pool has used that still holds pages (after a hot swap), or the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationInfo {
    /// Increases with every swap.
    pub id: u32,
    /// Whether new stores use it.
    pub current: bool,
    /// Pages it holds.
    pub pages: u64,
    /// Its links.
    pub backends: Vec<BackendInfo>,
}

/// A frontend of a pool — a connection on the frontend socket, or a block device the host
/// serves: `GET /api/v1/pools/{name}/frontends` lists every one, pool details embed them, and
/// `POST .../frontends` answers with the block device it attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FrontendInfo {
    /// Unique on this host: a block device's attachment id (`nbd-…`, `ublk-…`), or `socket-N`
    /// for a socket connection. `DELETE /api/v1/pools/{name}/frontends/{id}` detaches a block
    /// device.
    pub id: String,
    /// `socket`, `nbd` or `ublk`.
    pub kind: FrontendKind,
    /// The pool.
    pub pool: String,
    /// The name it attached with (a socket frontend's HELLO name; a block device's id).
    pub name: String,
    /// Where it is reached: a block device's client address (`nbd+unix:///?socket=PATH`,
    /// `nbd://HOST:PORT`, `/dev/ublkbN`); for a socket connection, the host's frontend socket.
    pub address: String,
    /// Its counters (socket: batches, stores, rejected, loads, absent, invalidates,
    /// taken_back, ...; block device: reads, writes, discards, to_backing, pool_pages, ...).
    pub counters: BTreeMap<String, u64>,
    /// Block devices only: the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<BlockDeviceInfo>,
}

/// A block device as attached (part of [`FrontendInfo`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockDeviceInfo {
    /// The export name clients may ask for (the empty default export works too).
    pub export_name: String,
    /// Bytes.
    pub size_bytes: u64,
    /// Every request is aligned to it (the pool's page size).
    pub block_size: u32,
    /// The backing file.
    pub backing: String,
    /// The Unix socket, if it listens on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The TCP address (port resolved), if it listens on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The ublk device number N of `/dev/ublkbN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ublk_id: Option<u32>,
    /// Connections open now.
    pub connections: u64,
}

/// Latency of one operation, from the pool's histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatencySummary {
    /// Operations recorded.
    pub count: u64,
    /// Mean, in microseconds.
    pub mean_us: f64,
    /// Median upper bound, in microseconds.
    pub p50_us: f64,
    /// 99th percentile upper bound, in microseconds.
    pub p99_us: f64,
}

/// The most recent plugin fault of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FaultInfo {
    /// The plugin.
    pub plugin: String,
    /// `deadline`, `memory_cap`, `memory_budget`, `trap`, `protocol`, `init_refused` or
    /// `instantiate`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// Everything about one pool: `GET /api/v1/pools/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    /// Name.
    pub name: String,
    /// Bytes per page.
    pub page_size: u32,
    /// The current chain.
    pub backends: Vec<BackendInfo>,
    /// Every chain that holds pages or takes new ones (more than one after a hot swap).
    pub generations: Vec<GenerationInfo>,
    /// Page limit.
    pub max_pages: Option<u64>,
    /// Byte limit.
    pub max_bytes: Option<u64>,
    /// Accept threshold after hitting a limit (1 to 100).
    #[schema(minimum = 1, maximum = 100)]
    pub accept_threshold_percent: u8,
    /// Writethrough mode.
    pub writethrough: bool,
    /// Exclusive gets.
    pub exclusive_gets: bool,
    /// Stores accepted.
    pub enabled: bool,
    /// A limit was hit and stores are refused until usage falls below the threshold.
    pub full: bool,
    /// Shards.
    pub shards: u32,
    /// Sandbox limits of its plugin instances.
    pub sandbox: SandboxConfig,
    /// Whether stored pages survive a host restart (only with a persistent store).
    pub persistent: bool,
    /// Whether every page is checksummed on store and checked on load.
    pub integrity: bool,
    /// Stores a canary verifies for a new chain.
    pub canary_stores: u32,
    /// Plugin instance slots the pool holds (one per shard and plugin of each chain it runs).
    pub instance_slots: u32,
    /// The last canary: the generation it verifies or verified, and where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
    /// Persistent pools: the durability mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Persistent pools in `periodic` mode: the flush interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval_ms: Option<u64>,
    /// Connected frontends, with their own counters.
    pub frontends: Vec<FrontendInfo>,
    /// Seconds since the pool was created (or restored) in this host process.
    pub uptime_seconds: u64,
    /// Every counter of contract.md §4 and the host's own, by name.
    pub counters: BTreeMap<String, u64>,
    /// Latency per operation (`store`, `load`, `invalidate_page`, `invalidate_area`).
    pub latency: BTreeMap<String, LatencySummary>,
    /// The most recent plugin fault, if any.
    pub last_fault: Option<FaultInfo>,
    /// The pool's lower tier, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierInfo>,
    /// The upper pool that owns this one as its lower tier (only it writes into this pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_of: Option<String>,
}

/// A pool's lower tier as it runs (`PoolInfo::tier`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TierInfo {
    /// The config.
    pub config: TierConfig,
    /// Pages the lower pool holds for this one now.
    pub lower_pages: u64,
    /// How long this pool's own pages have been idle, as of the mover's last pass (after its
    /// moves): pages whose idle time is below each bound (`le_seconds`, cumulative; the last
    /// bound is `null`: all of them).
    pub idle_age: Vec<IdleAgeBucket>,
}

/// One bucket of a tier's idle-age histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IdleAgeBucket {
    /// The bound in seconds; `null`: no bound (every page).
    pub le_seconds: Option<f64>,
    /// Pages idle less than the bound.
    pub pages: u64,
}

// ----- frontends -----

/// What kind of frontend: a connection on the frontend socket, or a block device's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// A connection on the host's frontend socket (the frontend protocol: userfaultfd regions
    /// and other `tmem-frontend` clients). Such frontends connect themselves: they cannot be
    /// attached through the API.
    Socket,
    /// An NBD server (fixed newstyle) on a Unix socket or a TCP address.
    Nbd,
    /// A ublk device (`/dev/ublkbN`, Linux 6.0+ with `ublk_drv`) served by the host itself.
    Ublk,
}

/// The body of `POST /api/v1/pools/{name}/frontends`: a block device over the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// `nbd` or `ublk` (`socket` frontends connect themselves and are refused here).
    #[schema(schema_with = attach_kind_schema)]
    pub kind: FrontendKind,
    /// The device's size: a nonzero multiple of the pool's page size (its block size).
    #[schema(minimum = 4096)]
    pub size_bytes: u64,
    /// Absolute path of the backing file that takes the pages the pool refuses (created if
    /// missing; reserved like a swap file: `size_bytes` allocated and written with zeros at
    /// attach, then written with `O_DIRECT`; one device per file), or of a block device of at
    /// least `size_bytes` (a partition, claimed exclusively: the robust choice for swap).
    #[schema(pattern = "^/.*[^/]$")]
    pub backing: String,
    /// NBD on a Unix socket at this absolute path (mode 0600, at most 107 bytes). Exactly one
    /// of `socket` and `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/.*[^/]$", max_length = 107)]
    pub socket: Option<String>,
    /// NBD on this TCP address, e.g. `127.0.0.1:10809` (port 0: any free port). Clients must
    /// use TLS (NBD's `STARTTLS`: the host's `--tls-cert`/`--tls-key` certificate or
    /// `--tls-psk` keys) unless `insecure_no_tls`; only loopback addresses unless
    /// `allow_remote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Allow a `listen` address beyond loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote: bool,
    /// Serve the `listen` address in clear text, without TLS: anyone who reaches it (and,
    /// beyond loopback, anyone who watches the network) reads and writes the device. Logged
    /// as a warning whenever the export starts. Only with `listen`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_tls: bool,
    /// ublk: the device number N of `/dev/ublkbN` to create; absent: the next free one. (The
    /// host records the number it got, and takes the same device over after a restart.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ublk_id: Option<u32>,
}

// ----- tokens -----

/// What a scoped token may do (the admin token, `DATA_DIR/token`, does everything on the REST
/// API and nothing a scoped token does for another host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Attach frontends (regions, devices: the frontend socket's HELLO) to the pool.
    Frontend,
    /// Serve the pool to another host's `remote` store (the peer protocol's HELLO).
    Peer,
}

/// The body of `POST /api/v1/pools/{name}/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token may do.
    pub scope: TokenScope,
    /// A note for the operator (who holds it, what for): at most 128 printable characters.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub label: String,
}

/// A scoped token of a pool, as listings show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Its id (names it in listings and revocation; not a secret).
    pub id: String,
    /// The pool it opens.
    pub pool: String,
    /// What it may do.
    pub scope: TokenScope,
    /// The operator's note.
    pub label: String,
    /// When it was made, in seconds since the epoch.
    pub created_unix: u64,
    /// The token itself: only in the answer that created it (the host keeps only its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

// ----- pages -----

/// What happened to a stored page: `PUT /api/v1/pools/{name}/pages/{offset}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoreResult {
    /// `stored`, `stored_writethrough` or `rejected`.
    pub outcome: String,
    /// Why it was rejected (the counter's name, e.g. `pool_limit_hit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `POST /api/v1/pools/{name}/shrink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShrinkRequest {
    /// Bring the pool down to at most this many pages.
    pub target_pages: u64,
}

/// What a shrink did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShrinkResult {
    /// Pages before.
    pub before: u64,
    /// Pages after.
    pub after: u64,
    /// Pages a frontend took back.
    pub written_back: u64,
    /// Writethrough pages dropped.
    pub dropped: u64,
}

/// What `DELETE /api/v1/pools/{name}/pages` dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AreaInvalidated {
    /// Pages the pool held before.
    pub pages: u64,
}

/// The query of `POST /api/v1/pools`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreatePoolQuery {
    /// Check the config completely (plugins, versions, config keys and values, grants, limits,
    /// the name being free) and answer 200 [`PoolCheck`] without creating anything: what a
    /// form uses to validate as the user types.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer of a dry run of `POST /api/v1/pools`: the config is valid (an invalid one is a
/// 400/409 [`ErrorBody`], exactly as the real create would answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolCheck {
    /// Always `true`.
    pub valid: bool,
    /// The chain as it would run: versions resolved, config defaults filled in.
    pub backends: Vec<BackendInfo>,
}

// ----- live statistics -----

/// The query of `GET /api/v1/stats/stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsStreamQuery {
    /// Milliseconds between samples, 100 to 60000 (default 1000).
    #[serde(default = "default_stats_interval")]
    #[param(minimum = 100, maximum = 60000)]
    pub interval_ms: u64,
}

fn default_stats_interval() -> u64 {
    1000
}

/// Host-wide totals of one [`StatsSample`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostTotals {
    /// Pools.
    pub pools: u64,
    /// Pages held over all pools (frontswap `curr_pages`).
    pub curr_pages: u64,
    /// Bytes the stores use for those pages, over all pools.
    pub pool_total_size: u64,
    /// Linear memory of every live plugin instance.
    pub plugin_memory_bytes: u64,
    /// Plugin faults since start, over all pools.
    pub plugin_faults: u64,
    /// Loads refused since start because a plugin returned wrong bytes, over all pools.
    #[serde(default)]
    pub integrity_failures: u64,
    /// Plugin instance slots pools may reserve (`tmem serve --max-instances`, less a few the
    /// host keeps for itself).
    #[serde(default)]
    pub instance_slots_limit: u64,
    /// Instance slots the pools hold (one per shard and plugin of each chain they run).
    #[serde(default)]
    pub instance_slots_reserved: u64,
    /// Connected frontends, over all pools.
    pub frontends: u64,
    /// The host's memory for pages: its budget and what it holds.
    #[serde(default)]
    pub memory: MemoryInfo,
}

/// The host's memory for pages (`GET /api/v1/memory`, and in every stats sample): the budget
/// and what is charged to it. In-memory pools keep their bytes in the host's arena; the arena
/// holds memory committed ahead (its headroom), so a store never waits for the kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryInfo {
    /// The operator's budget in bytes (`--memory-limit`, `PATCH`); absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// The limit stores are held to: the smaller of `limit_bytes` and the governor's target;
    /// absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_limit_bytes: Option<u64>,
    /// The memory governor: its settings, its last readings and decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<GovernorInfo>,
    /// Bytes charged to the budget now: the arena's committed memory (its headroom included),
    /// persistent pools' database caches, plugin instances' linear memories.
    pub used_bytes: u64,
    /// Of `used_bytes`, memory committed ahead for the next stores.
    pub headroom_bytes: u64,
    /// Bytes of the records stored in the arena (over all in-memory pools).
    pub stored_bytes: u64,
    /// Bytes the arena's size-class slots hold for them (`stored_bytes` plus rounding).
    pub slot_bytes: u64,
    /// Records in the arena.
    pub objects: u64,
    /// Bytes of the pools' page indexes (16 per page in a dense pool, e.g. a block device),
    /// charged to the budget: their chunks in the arena, their hash tables on the heap.
    pub index_bytes: u64,
    /// Of `used_bytes`, the linear memories of the pools' plugin instances (a call that would
    /// grow one past the budget faults with `memory_budget`).
    #[serde(default)]
    pub plugin_bytes: u64,
    /// Bytes the arena's runs hold beyond their objects and index chunks (free slots in
    /// partly used runs): what compaction, run when it passes a quarter of the runs, gets back.
    #[serde(default)]
    pub fragmentation_bytes: u64,
    /// Records moved by compactions so far.
    #[serde(default)]
    pub compacted_records: u64,
    /// Stores the arena could not take for want of budget or committed memory (each one a
    /// refused store: the frontend kept the page).
    pub refused: u64,
}

/// The memory governor as `GET /api/v1/memory` reports it: the budget's target follows the
/// machine's `MemAvailable` and memory pressure (PSI); stores are held to the smaller of the
/// operator's limit and the target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GovernorInfo {
    /// Whether it sets a target.
    pub enabled: bool,
    /// The target in bytes; absent while it is off (or has not looked yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bytes: Option<u64>,
    /// MemAvailable it keeps for the rest of the machine, in bytes.
    pub reserve_bytes: u64,
    /// The reserve as configured, if a share of RAM (else absent: bytes or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_percent: Option<u8>,
    /// PSI `some avg10` (percent) at or above which the target is lowered.
    pub psi_high: f64,
    /// PSI `some avg10` (percent) below which the target may be raised.
    pub psi_low: f64,
    /// The target never goes below this.
    pub floor_bytes: u64,
    /// The last `MemAvailable` read, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_bytes: Option<u64>,
    /// The last PSI `some avg10` read (absent: no PSI on this kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_some_avg10: Option<f64>,
    /// The last PSI `full avg10` read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_full_avg10: Option<f64>,
    /// Whether a PSI trigger wakes it (else it polls every second).
    pub psi_trigger: bool,
    /// The last decision: `lower`, `raise`, `hold` or `off`; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    /// Why: `psi_high`, `reserve`, `calm`, `at_ceiling`, `between_watermarks`, `start`,
    /// `no_readings` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// Seconds since the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_age_seconds: Option<f64>,
    /// Times the target was lowered.
    pub lowers: u64,
    /// Times it was raised.
    pub raises: u64,
    /// Pool shrinks it asked for (take-back to frontends, or writethrough drops).
    pub shrinks: u64,
    /// Pages those shrinks took out of the pools.
    pub shrunk_pages: u64,
    /// Pages tiered pools' mover passes moved down because usage exceeded the target.
    pub demoted_pages: u64,
}

/// Changes to the memory governor (`PATCH /api/v1/memory`'s `governor`): every field
/// optional, the others stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GovernorPatch {
    /// On or off (off: the operator's limit alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// MemAvailable kept for the rest of the machine, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_bytes: Option<u64>,
    /// ... or as a share of RAM, 0 to 100 (not with `reserve_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub reserve_percent: Option<u8>,
    /// PSI `some avg10` (percent, 0 to 100) at or above which the target is lowered; at
    /// least `psi_low`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub psi_high: Option<f64>,
    /// PSI `some avg10` (percent, 0 to 100) below which the target may be raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub psi_low: Option<f64>,
    /// The target never goes below this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_bytes: Option<u64>,
}

/// The body of `PATCH /api/v1/memory`: a new budget, exactly one of the limit fields, and/or
/// `governor` changes. What is already stored stays; stores past the new limit are refused
/// until usage falls below it. (The "exactly one" rule is in the OpenAPI document as a `oneOf`, which the host's
/// `rest::openapi` adds.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryPatch {
    /// A limit in bytes (at least 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 16777216)]
    pub limit_bytes: Option<u64>,
    /// A limit as a share of the machine's RAM, 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub limit_percent: Option<u8>,
    /// No limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// Changes to the memory governor (with a new budget, or alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<GovernorPatch>,
}

/// Latency of one operation over a sample's interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LatencyWindow {
    /// Operations in the interval.
    pub count: u64,
    /// Median upper bound, in microseconds (0 when nothing ran).
    pub p50_us: f64,
    /// 99th percentile upper bound, in microseconds (0 when nothing ran).
    pub p99_us: f64,
}

/// One pool in a [`StatsSample`]: its levels, every counter, and what changed in the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolSample {
    /// The pool.
    pub name: String,
    /// Pages held now.
    pub stored_pages: u64,
    /// Bytes the store uses for them.
    pub pool_total_size: u64,
    /// Page bytes held per byte used (`stored_pages × page_size / pool_total_size`); `null`
    /// while the pool is empty.
    pub compression_ratio: Option<f64>,
    /// A limit was hit and stores are refused until usage falls below the threshold.
    pub full: bool,
    /// Stores accepted.
    pub enabled: bool,
    /// Linear memory of its live plugin instances.
    pub plugin_memory_bytes: u64,
    /// Connected frontends.
    pub frontends: u64,
    /// Every counter (contract.md §4 and the host's own), by name, since the pool started.
    pub counters: BTreeMap<String, u64>,
    /// Per second over the interval, for every counter that only grows (`succ_stores`,
    /// `loads`, `failed_stores`, `pool_limit_hit`, ...); empty in the first sample of a stream.
    pub rates: BTreeMap<String, f64>,
    /// Latency per operation (`store`, `load`, `invalidate_page`, `invalidate_area`) over the
    /// interval; over the pool's life in the first sample of a stream.
    pub latency: BTreeMap<String, LatencyWindow>,
}

/// A snapshot of every pool's statistics: `GET /api/v1/stats`, and each event of
/// `GET /api/v1/stats/stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsSample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Milliseconds since the stream's previous sample (0 for the first, and for `GET /stats`).
    pub interval_ms: u64,
    /// Host-wide totals.
    pub host: HostTotals,
    /// Every pool, by name.
    pub pools: Vec<PoolSample>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The host's version.
    pub version: String,
    /// Number of pools.
    pub pools: u64,
    /// Pages held over all pools.
    pub curr_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pool_config_fills_defaults_and_refuses_unknown_fields() {
        let c: PoolConfig = serde_json::from_value(json!({"name": "p", "backends": [{"plugin": "ram"}]})).unwrap();
        assert_eq!(c, PoolConfig::new("p", vec![BackendRequest::new("ram")]));
        let typo = serde_json::from_value::<PoolConfig>(json!({"name": "p", "backends": [], "max_page": 3}));
        assert!(typo.unwrap_err().to_string().contains("unknown field `max_page`"));
        let round = serde_json::to_value(&c).unwrap();
        assert_eq!(serde_json::from_value::<PoolConfig>(round).unwrap(), c);
    }

    #[test]
    fn a_patch_tells_absent_from_null() {
        let p: PoolPatch = serde_json::from_value(json!({"max_pages": null, "writethrough": true})).unwrap();
        assert_eq!(p.max_pages, Some(None));
        assert_eq!(p.max_bytes, None);
        assert_eq!(p.writethrough, Some(true));
        let p: PoolPatch = serde_json::from_value(json!({"max_bytes": 5})).unwrap();
        assert_eq!(p.max_bytes, Some(Some(5)));
        assert_eq!(serde_json::from_value::<PoolPatch>(serde_json::to_value(&p).unwrap()).unwrap(), p);
    }
}
