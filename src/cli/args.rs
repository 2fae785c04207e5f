//! What clap parses — the [`Cli`] parser and every subcommand, `serve` and `demo` as well as
//! the client groups `plugin`, `pool` and `page` — and, as a second step, the conversion of the
//! parsed arguments into the settings the host and the REST API take ([`ServeConfig`],
//! [`DemoConfig`], [`PoolConfig`], [`PoolPatch`], [`AttachRequest`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgGroup, Args, Parser, Subcommand};
use serde_json::{Map, Value};
use tmem_api::rest::{
    AttachRequest, BackendRequest, Durability, FrontendKind, PoolConfig, PoolPatch, Promote, SandboxConfig, TierConfig,
};
use tmem_host::MemoryLimit;
use tmem_host::demo::DemoConfig;
use tmem_host::listen::ServeLimits;
use tmem_host::memory::governor::{GovernorConfig, Reserve};
use tmem_host::server::ServeConfig;
use tmem_host::tls::TlsFiles;

use super::config::{ConfigError, ConfigFile};

/// Where `tmem serve` listens unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7411";

/// `tmem serve --listen`'s default.
const DEFAULT_LISTEN: &str = "127.0.0.1:7411";

/// `tmem serve --max-instances`'s default.
const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// The sandbox defaults of the host, used when only one of the two sandbox options is given.
const DEFAULT_SANDBOX: SandboxConfig = SandboxConfig { memory_bytes: 64 << 20, call_timeout_ms: 100 };

// ----- arguments -----

/// The `tmem` command line.
#[derive(Parser)]
#[command(
    name = "tmem",
    version,
    about = "Transcendent memory in userspace: frontswap pools backed by sandboxed Wasm plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `tmem`.
#[derive(Subcommand)]
pub enum Command {
    /// Run the host.
    Serve(Box<ServeArgs>),
    /// Run a host and a verified workload in a userfaultfd region 4x larger than its
    /// resident limit, over a `[zstd, ram]` pool (needs root for userfaultfd).
    Demo(DemoArgs),
    // The client groups: `plugin`, `pool`, `page`.
    #[command(flatten)]
    Client(Box<ClientCommand>),
    /// Write the man pages or the shell completions of `tmem` (for packaging).
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[arg(value_enum)]
        what: Generated,
        /// The directory to write into (created if missing).
        out_dir: PathBuf,
    },
}

/// What `tmem generate` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    /// `tmem.1` and one page per subcommand (`tmem-serve.1`, ...).
    Man,
    /// `tmem.bash`, `_tmem` (zsh) and `tmem.fish`.
    Completions,
}

/// `tmem serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A config file (TOML): `[serve]` settings named as these flags, `[[pool]]` pools and
    /// `[[swap]]` ublk devices created at start if missing. A flag given here (or its
    /// variable) overrides the file.
    #[arg(long, value_name = "FILE", env = "TMEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP listener: the API, the dashboard, /metrics [default:
    /// 127.0.0.1:7411]. With --tls-cert it serves HTTPS only, on loopback too (clients use
    /// https://); without, plain HTTP, refused beyond loopback unless --insecure-plain-tcp.
    #[arg(long, env = "TMEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the host's state [default: tmem-data].
    #[arg(long, env = "TMEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Create a `[zstd, ram]` pool named `demo` at start.
    #[arg(long)]
    pub demo_pool: bool,
    /// Also serve as a peer host for other hosts' `remote` stores on this address
    /// (peers authenticate with a peer token of a pool: `tmem token create POOL --scope peer`).
    /// Off by default.
    #[arg(long, value_name = "ADDR", env = "TMEM_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// The frontends' Unix socket [default: DATA_DIR/tmem.sock].
    #[arg(long, value_name = "PATH", env = "TMEM_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Lock all of the host's memory (mlockall) at start: needed when this machine's own
    /// kernel swaps to the host's NBD devices (ublk devices lock it themselves).
    #[arg(long)]
    pub mlock: bool,
    /// The most memory the host keeps for pages (stored bytes and what finds them): a size
    /// (`2G`), a share of RAM (`20%`), or `none` [default: 20%, as zswap's max_pool_percent].
    /// A store past it is refused and the frontend keeps the page.
    #[arg(long, value_name = "SIZE|N%|none", value_parser = parse_memory_limit, env = "TMEM_MEMORY_LIMIT")]
    pub memory_limit: Option<MemoryLimit>,
    /// The memory governor: the budget follows the machine — lowered (stores refused, tiered
    /// pools demote, pools with a frontend shrink) when MemAvailable nears the reserve or
    /// memory pressure (PSI) rises, raised again when it falls; never above --memory-limit.
    /// `PATCH /api/v1/memory` changes it at run time.
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = parse_on_off, env = "TMEM_GOVERNOR")]
    pub governor: bool,
    /// MemAvailable the governor keeps for the rest of the machine: a size (`1G`) or a share
    /// of RAM (`5%`) [default: the larger of 5% of RAM and 256 MiB — 10% of RAM below 2.5 GiB].
    #[arg(long, value_name = "SIZE|N%", value_parser = parse_reserve, env = "TMEM_GOVERNOR_RESERVE")]
    pub governor_reserve: Option<Reserve>,
    /// Memory pressure (PSI `some avg10`, percent) at or above which the governor lowers
    /// the budget's target.
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0, env = "TMEM_GOVERNOR_PSI_HIGH")]
    pub governor_psi_high: f64,
    /// Memory pressure (PSI `some avg10`, percent) below which it raises it again.
    #[arg(long, value_name = "PERCENT", default_value_t = 2.0, env = "TMEM_GOVERNOR_PSI_LOW")]
    pub governor_psi_low: f64,
    /// Plugin instances the host can have at once. A pool reserves one per shard and plugin
    /// of each chain it runs when it is created (or hot-swapped) and is refused if they are
    /// not free [default: 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=100_000), env = "TMEM_MAX_INSTANCES")]
    pub max_instances: Option<u32>,
    /// The most connections each listener serves at once (the HTTP API, the frontend socket,
    /// the peer listener, each NBD export). A full listener evicts its oldest connection that
    /// has not authenticated (or finished its handshake); established ones are never cut
    /// [default: 256 each, 1024 for the frontend socket].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000), env = "TMEM_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// Seconds a new connection has to authenticate or finish its handshake before it is
    /// closed, on every listener; on the HTTP API also the longest a keep-alive connection
    /// waits idle for its next request [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600), env = "TMEM_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<u64>,
    /// A path under which the API may name block devices' backing files and sockets, besides
    /// the data dir (repeat it, or separate paths with commas). A directory, or one file or
    /// device (a raw disk as a backing store). Anything else is refused (403
    /// `path_not_allowed`): the API token alone cannot make the host write a file elsewhere.
    #[arg(long, value_name = "PATH", value_delimiter = ',', env = "TMEM_ALLOW_PATHS")]
    pub allow_path: Vec<PathBuf>,
    /// The key file (32 bytes, mode 0600; made when first needed) that seals the secrets pool
    /// configs keep in the catalog, such as a remote store's peer token [default: the systemd
    /// credential tmem-secrets.key if the service has one, else DATA_DIR.key beside the data dir].
    #[arg(long, value_name = "PATH", env = "TMEM_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// The host's TLS certificate chain (PEM, leaf first) for its TCP listeners: the HTTP
    /// listener serves HTTPS only (on loopback too: one rule; its clients must trust the
    /// certificate's CA, and the certificate must name the host they reach it by, e.g.
    /// IP:127.0.0.1 for https://127.0.0.1:7411); NBD exports over TCP require
    /// TLS (NBD STARTTLS), with this certificate or --tls-psk keys; the peer listener is
    /// tmems://.
    #[arg(long, value_name = "FILE", requires = "tls_key", env = "TMEM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "TMEM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): TLS clients of NBD exports and of the peer listener must
    /// present a certificate one of them signed. The HTTP listener asks for none (its clients
    /// authenticate with the API token).
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "TMEM_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Pre-shared keys for TLS-PSK on NBD exports: a psktool file, `username:hexkey` per line
    /// (as nbdkit's --tls-psk; libnbd's tls-psk-file, QEMU's tls-creds-psk). Not for the
    /// HTTP listener, which is HTTPS with --tls-cert only.
    #[arg(long, value_name = "FILE", env = "TMEM_TLS_PSK")]
    pub tls_psk: Option<PathBuf>,
    /// CA certificates (PEM) this host trusts, besides the system's, for the TLS servers its
    /// remote stores reach (tmems:// peers, rediss:// Redis).
    #[arg(long, value_name = "FILE", env = "TMEM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Allow plain TCP beyond loopback where TLS is otherwise required: a --listen or
    /// --peer-listen address without --tls-cert, remote stores' tmem:// and redis://
    /// endpoints. The API token, pages and credentials then cross the network in clear text
    /// (the host logs an INSECURE warning).
    #[arg(long, env = "TMEM_INSECURE_PLAIN_TCP")]
    pub insecure_plain_tcp: bool,
    /// Serve the API over HTTPS on loopback too (with --tls-cert). Beyond loopback it is
    /// HTTPS whenever the host has a certificate; on loopback it stays plain HTTP unless this
    /// is given, so local tools (the CLI, tmem-swap.service) keep working when a certificate
    /// is added for NBD exports and peers.
    #[arg(long, requires = "tls_cert", env = "TMEM_API_TLS")]
    pub api_tls: bool,
    /// Users (names or uids) besides the host's own and root who may connect to its Unix
    /// sockets (the frontend socket, NBD exports on a socket): the sockets then belong to
    /// --socket-group with mode 0660 and each connection's peer is checked (SO_PEERCRED).
    /// Without it sockets are mode 0600.
    #[arg(long, value_name = "USER", value_delimiter = ',', requires = "socket_group", env = "TMEM_SOCKET_USERS")]
    pub socket_users: Vec<String>,
    /// The group the Unix sockets belong to with --socket-users (its members reach the
    /// socket file; only the listed users are served). Put the sockets in a directory the
    /// group can enter.
    #[arg(long, value_name = "GROUP", requires = "socket_users", env = "TMEM_SOCKET_GROUP")]
    pub socket_group: Option<String>,
}

/// `tmem demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the host's HTTP listener (the dashboard shows the run live): loopback only,
    /// the demo's API being plain HTTP.
    #[arg(long, default_value = "127.0.0.1:7411", env = "TMEM_LISTEN")]
    pub listen: SocketAddr,
    /// Directory for the host's state.
    #[arg(long, default_value = "tmem-data", env = "TMEM_DATA_DIR")]
    pub data_dir: PathBuf,
    /// How long the workload runs.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Size of the region in MiB (a quarter of it may be resident).
    #[arg(long, default_value_t = 64)]
    pub region_mib: usize,
    /// After the workload, keep the host serving (API, dashboard) until Ctrl-C / SIGTERM.
    #[arg(long)]
    pub then_serve: bool,
    /// Prefetch along sequential and strided fault trends in the region (the summary shows
    /// its coverage and accuracy).
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = parse_on_off)]
    pub prefetch: bool,
}

/// The client subcommands of `tmem`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register, list and remove plugins (Wasm backends).
    Plugin(PluginArgs),
    /// Create, inspect, change and remove pools.
    Pool(PoolArgs),
    /// Store, load and invalidate pages of a pool.
    Page(PageArgs),
    /// Make, list and revoke a pool's scoped tokens (for its frontends and its peers).
    Token(TokenArgs),
    /// Use a pool as this machine's swap: on, off, status (root; the host on this machine).
    Swap(SwapArgs),
}

/// How to reach the server and how to print; accepted anywhere after the group's name.
#[derive(Debug, Clone, Args)]
pub struct ConnectOptions {
    /// URL of the tmem server: http://HOST:PORT, or https://HOST:PORT when it has a
    /// certificate (`tmem serve --tls-cert`).
    #[arg(long, global = true, help_heading = "Client options", value_name = "URL", env = "TMEM_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API token [default: read from DATA_DIR/token].
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        value_name = "TOKEN",
        env = "TMEM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The server's data directory, where it wrote its API token.
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        value_name = "DIR",
        env = "TMEM_DATA_DIR",
        default_value = "tmem-data"
    )]
    pub data_dir: PathBuf,
    /// CA certificates (PEM) trusted for an https:// server, besides the system's (the
    /// server's certificate must also name the URL's host).
    #[arg(long, global = true, help_heading = "Client options", value_name = "FILE", env = "TMEM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Print the server's JSON response instead of a human-readable view.
    #[arg(long, global = true, help_heading = "Client options")]
    pub json: bool,
}

/// `tmem plugin ...`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(flatten)]
    pub connect: ConnectOptions,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The plugin subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Register a Wasm plugin module (a new version if the name exists).
    Upload {
        /// The `.wasm` file.
        file: PathBuf,
        /// Register under this name instead of the one in the plugin's manifest.
        #[arg(long)]
        name: Option<String>,
    },
    /// List every plugin version.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a plugin's versions and config keys.
    Show {
        /// The plugin name.
        name: String,
    },
    /// Remove a plugin, or one version of it.
    #[command(visible_alias = "remove")]
    Rm {
        /// The plugin name.
        name: String,
        /// Only this version (version string or sha256 prefix).
        #[arg(long)]
        version: Option<String>,
    },
}

/// `tmem pool ...`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    pub connect: ConnectOptions,
    #[command(subcommand)]
    pub command: PoolCommand,
}

/// The pool subcommands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Create(PoolCreateArgs),
    /// List pools.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a pool's configuration, chain, counters and latency.
    Show {
        /// The pool name.
        name: String,
    },
    /// Change a pool's settings or its lower tier (--tier, --no-tier), or hot swap its chain.
    Set(PoolSetArgs),
    /// Remove a pool and every page it holds.
    #[command(visible_alias = "remove")]
    Rm {
        /// The pool name.
        name: String,
    },
    /// Hand pages back until the pool holds at most N.
    Shrink {
        /// The pool name.
        name: String,
        /// The number of pages to keep at most.
        #[arg(long, value_name = "N")]
        target_pages: u64,
    },
    /// Attach a block device (an NBD server) whose pages live in the pool.
    Attach(PoolAttachArgs),
    /// Detach a block device (its pages leave the pool; the backing file stays).
    Detach {
        /// The pool name.
        name: String,
        /// The attachment id (`tmem pool attach` printed it; `tmem pool show` lists it).
        id: String,
    },
}

/// `tmem pool attach`: the transport (an NBD server's socket or address, or a ublk device),
/// the size, the backing file.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("where").required(true).args(["nbd_socket", "nbd_listen", "ublk"])))]
pub struct PoolAttachArgs {
    /// The pool name.
    pub name: String,
    /// Serve a ublk device, /dev/ublkbN (the host needs the ublk_drv module and root).
    #[arg(long)]
    pub ublk: bool,
    /// With --ublk: the device number N to create (default: the next free one).
    #[arg(long, value_name = "N", requires = "ublk")]
    pub ublk_id: Option<u32>,
    /// Serve NBD on a Unix socket at this absolute path.
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Serve NBD on this TCP address, e.g. 127.0.0.1:10809 (loopback unless --allow-remote).
    /// Clients must use TLS: the host needs --tls-cert/--tls-key or --tls-psk, unless
    /// --insecure-no-tls.
    #[arg(long, value_name = "ADDR")]
    pub nbd_listen: Option<String>,
    /// Accept a --nbd-listen address beyond loopback.
    #[arg(long, requires = "nbd_listen")]
    pub allow_remote: bool,
    /// Serve --nbd-listen in clear text, without TLS: anyone who reaches the address, or
    /// watches the network, reads and writes the device (the host logs a warning).
    #[arg(long, requires = "nbd_listen")]
    pub insecure_no_tls: bool,
    /// The device size, a multiple of the pool's page size, e.g. `1G`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: u64,
    /// The backing file for pages the pool refuses (absolute path; created if missing).
    #[arg(long, value_name = "PATH")]
    pub backing: PathBuf,
}

/// `tmem pool create`.
#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    /// The pool name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// One link of the chain, in order: filters, then one store.
    /// Syntax: PLUGIN[@VERSION][+GRANT...][:KEY=VALUE[,KEY=VALUE...]], e.g. `zstd:level=1`,
    /// `ram`, `sled+storage` (the persistent store, granted storage).
    #[arg(long = "backend", value_name = "SPEC", required = true, value_parser = parse_backend)]
    pub backends: Vec<BackendRequest>,
    /// Persistent pools: `sync` (acknowledge once on disk; the default) or `periodic`.
    #[arg(long, value_name = "sync|written|periodic", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Persistent pools with periodic durability: flush interval in ms [default: 1000].
    #[arg(long, value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// Bytes per page: a power of two from 4K to 2M [default: 4096].
    #[arg(long, value_name = "SIZE", value_parser = parse_page_size)]
    pub page_size: Option<u32>,
    /// Most pages held [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_pages: Option<u64>,
    /// Most bytes the store may use, e.g. `64M` [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: Option<u64>,
    /// After hitting a limit, refuse stores until usage is below this percentage [default: 90].
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub accept_threshold: Option<u8>,
    /// Every stored page is also written to the frontend's device.
    #[arg(long)]
    pub writethrough: bool,
    /// A load also removes the page.
    #[arg(long)]
    pub exclusive_gets: bool,
    /// Shards, a power of two [default: chosen from the CPUs].
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Its weight, 1 to 1000, when the memory governor makes pools give memory back: each
    /// gives back in proportion to its usage divided by its weight [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub weight: Option<u16>,
    /// A lower tier: pages idle this long move down to the pool LOWER (made beforehand, empty).
    /// Syntax: LOWER[:idle_seconds=N,promote=on_load|never,pressure_percent=P], e.g.
    /// `cold:idle_seconds=30` [idle_seconds 60, promote on_load, pressure_percent 90].
    #[arg(long, value_name = "SPEC", value_parser = parse_tier)]
    pub tier: Option<TierConfig>,
    /// Create the pool refusing stores.
    #[arg(long)]
    pub disabled: bool,
    /// Linear memory each plugin instance may have, e.g. `32M` [default: 64M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub sandbox_memory: Option<u64>,
    /// Longest a single plugin call may run, in milliseconds [default: 100].
    #[arg(long, value_name = "MS")]
    pub call_timeout_ms: Option<u64>,
}

/// `tmem pool set`: at least one change.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("change").required(true).multiple(true)),
    override_usage = "tmem pool set <NAME> <CHANGE>... [OPTIONS]"
)]
pub struct PoolSetArgs {
    /// The pool name.
    pub name: String,
    /// New page limit, or `none`.
    #[arg(long, value_name = "N|none", value_parser = parse_page_limit, group = "change")]
    pub max_pages: Option<Limit>,
    /// New byte limit (e.g. `64M`), or `none`.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_byte_limit, group = "change")]
    pub max_bytes: Option<Limit>,
    /// New accept threshold, in percent.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, group = "change")]
    pub accept_threshold: Option<u8>,
    /// Writethrough on or off.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new(), group = "change")]
    pub writethrough: Option<bool>,
    /// Exclusive gets on or off.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new(), group = "change")]
    pub exclusive_gets: Option<bool>,
    /// Accept stores.
    #[arg(long, group = "change", conflicts_with = "disable")]
    pub enable: bool,
    /// Refuse stores.
    #[arg(long, group = "change")]
    pub disable: bool,
    /// Hot swap: the whole chain again, same plugins in the same order, each at the version
    /// and config wanted (syntax as for `pool create`).
    #[arg(long = "backend", value_name = "SPEC", value_parser = parse_backend, group = "change")]
    pub backends: Vec<BackendRequest>,
    /// Persistent pools: `sync` or `periodic`.
    #[arg(long, value_name = "sync|written|periodic", value_parser = parse_durability, group = "change")]
    pub durability: Option<Durability>,
    /// Persistent pools with periodic durability: flush interval in ms.
    #[arg(long, value_name = "MS", group = "change")]
    pub flush_interval_ms: Option<u64>,
    /// Add a lower tier, or change its settings: LOWER[:idle_seconds=N,promote=on_load|never,
    /// pressure_percent=P] (as for `pool create`). Settings not given keep their current
    /// values while LOWER stays the pool's lower tier [else: idle_seconds 60, promote on_load,
    /// pressure_percent 90]. LOWER can change only while no page is below.
    #[arg(long, value_name = "SPEC", value_parser = parse_tier_setting, group = "change", conflicts_with = "no_tier")]
    pub tier: Option<TierSetting>,
    /// Remove the lower tier: every page below comes back up first (refused, with how many
    /// pages are below, if they cannot all come up); the lower pool is then an ordinary pool.
    #[arg(long, group = "change")]
    pub no_tier: bool,
}

/// `tmem swap ...`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    #[command(flatten)]
    pub connect: ConnectOptions,
    #[command(subcommand)]
    pub command: SwapCommand,
}

/// The swap subcommands.
#[derive(Debug, Subcommand)]
pub enum SwapCommand {
    /// Make a pool this machine's swap: create the pool if missing, attach a ublk device
    /// (/dev/ublkbN; NBD through nbd-client where ublk_drv is missing) if it has none, mkswap,
    /// swapon with the priority and discard. Running it again changes nothing. A pool or device
    /// that exists (made before, restored by the host, declared in its config file) is used as
    /// it is; options that differ from it are named.
    On(SwapOnArgs),
    /// swapoff (the kernel takes its pages back), detach the device, remove the pool (and the
    /// lower tier and backing file `swap on` made) unless --keep-pool.
    Off(SwapOffArgs),
    /// The swap devices the host serves: device, size, pages stored, compressed bytes, ratio,
    /// memory used, swap in use and priority (from /proc/swaps), like zramctl.
    Status,
}

/// `tmem swap on`.
#[derive(Debug, Args)]
pub struct SwapOnArgs {
    /// The pool's name (made if missing; an existing one is used as it is).
    #[arg(long, default_value = "swap")]
    pub name: String,
    /// The device's capacity, what the kernel may swap to it: a size (`4G`) or a share of RAM
    /// (`50%`). The pool's memory is bounded by the host's budget; pages beyond it go to the
    /// backing file, which is reserved at this size.
    /// [default: 50%, or the existing device's]
    #[arg(long, value_name = "SIZE|N%", value_parser = parse_swap_size)]
    pub size: Option<SwapSize>,
    /// The pool's chain, comma-separated, each link as for `pool create --backend`
    /// (`zstd:level=3,ram`); a store that asks for storage (`sled`) is granted it [default:
    /// lz4,ram, or the existing pool's].
    #[arg(long, value_name = "CHAIN", value_parser = parse_chain)]
    pub chain: Option<Chain>,
    /// A lower tier for the pool, as a chain (`zstd,sled`): pool NAME-lower, made with it;
    /// pages idle for --tier-idle seconds move down.
    #[arg(long, value_name = "CHAIN", value_parser = parse_chain)]
    pub tier: Option<Chain>,
    /// With --tier: seconds a page stays idle before it moves to the lower tier.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, requires = "tier",
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub tier_idle: u64,
    /// The swap priority (as swapon -p), 0 to 32767: higher is used first (zram-generator's
    /// default is 100); -1: the kernel's next default (negative) priority.
    #[arg(long, value_name = "N", default_value_t = 100, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-1..=32767))]
    pub priority: i32,
    /// The backing file (or a block device) for the pages the pool refuses: an absolute path
    /// under the host's data dir or one of its --allow-path [default: DATA_DIR/NAME.swap].
    #[arg(long, value_name = "PATH")]
    pub backing: Option<PathBuf>,
    /// ublk, nbd (through nbd-client), or auto: ublk where the kernel has ublk_drv, else NBD.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: SwapTransport,
    /// With ublk: the device number N of /dev/ublkbN [default: the next free one].
    #[arg(long, value_name = "N")]
    pub ublk_id: Option<u32>,
}

/// `tmem swap off`.
#[derive(Debug, Args)]
pub struct SwapOffArgs {
    /// The pool's name.
    #[arg(default_value = "swap")]
    pub name: String,
    /// Keep the pool (and its lower tier): only turn the swap off and detach the device.
    #[arg(long)]
    pub keep_pool: bool,
}

/// `tmem swap on --size`: bytes, or a share of RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapSize {
    /// This many bytes.
    Bytes(u64),
    /// This percentage of MemTotal (1 to 400).
    PercentOfRam(u16),
}

/// A chain given as one comma-separated argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain(pub Vec<BackendRequest>);

/// How `tmem swap on` reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SwapTransport {
    /// ublk where /dev/ublk-control exists (after `modprobe ublk_drv`), else NBD.
    Auto,
    /// A ublk device, /dev/ublkbN.
    Ublk,
    /// An NBD export of the host on a Unix socket, connected to /dev/nbdN by nbd-client.
    Nbd,
}

/// `tmem token ...`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub connect: ConnectOptions,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: printed this once (the host keeps only its hash).
    Create {
        /// The pool it opens.
        pool: String,
        /// What it may do: attach frontends (`frontend`) or serve the pool to another host's
        /// remote store (`peer`).
        #[arg(long, value_enum, default_value = "frontend")]
        scope: TokenScopeArg,
        /// A note: who holds it, what for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a pool's tokens (ids, scopes, labels; never the tokens).
    #[command(visible_alias = "list")]
    Ls {
        /// The pool.
        pool: String,
    },
    /// Revoke a token: it opens nothing new, and its connections end.
    #[command(visible_alias = "revoke")]
    Rm {
        /// The pool.
        pool: String,
        /// The token's id (`tok-...`).
        id: String,
    },
}

/// `--scope`, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenScopeArg {
    /// Attach frontends to the pool.
    Frontend,
    /// Serve the pool to another host's remote store.
    Peer,
}

/// `tmem page ...`.
#[derive(Debug, Args)]
pub struct PageArgs {
    #[command(flatten)]
    pub connect: ConnectOptions,
    #[command(subcommand)]
    pub command: PageCommand,
}

/// The page subcommands.
#[derive(Debug, Subcommand)]
pub enum PageCommand {
    /// Store one page; exits with 3 if the pool rejects it.
    Put {
        /// The pool name.
        pool: String,
        /// The page's offset (decimal, or hex with `0x`).
        #[arg(value_parser = parse_offset)]
        offset: u64,
        /// A file of exactly one page; `-` or absent: standard input.
        file: Option<PathBuf>,
    },
    /// Load one page: its bytes to standard output or a file.
    Get {
        /// The pool name.
        pool: String,
        /// The page's offset (decimal, or hex with `0x`).
        #[arg(value_parser = parse_offset)]
        offset: u64,
        /// Write the page to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Invalidate one page, or every page of the pool with `--all`.
    #[command(visible_alias = "remove")]
    Rm {
        /// The pool name.
        pool: String,
        /// The page's offset (decimal, or hex with `0x`).
        #[arg(value_parser = parse_offset, required_unless_present = "all")]
        offset: Option<u64>,
        /// Every page of the pool (frontswap's invalidate_area).
        #[arg(long, conflicts_with = "offset")]
        all: bool,
    },
}

/// A limit that may be removed: `None` is "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

// ----- settings -----

impl ServeArgs {
    /// The settings of `tmem serve`: the flags, over the config file's `[serve]` if
    /// `--config` names one, with the file's pools and devices to apply at start.
    pub fn into_config(self) -> Result<ServeConfig, ConfigError> {
        let ServeArgs {
            config,
            listen,
            data_dir,
            demo_pool,
            peer_listen,
            socket,
            mlock,
            memory_limit,
            governor,
            governor_reserve,
            governor_psi_high,
            governor_psi_low,
            max_instances,
            max_connections,
            handshake_timeout,
            allow_path,
            secrets_key,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_psk,
            tls_ca,
            insecure_plain_tcp,
            api_tls,
            socket_users,
            socket_group,
        } = self;
        let file = match config {
            Some(path) => ConfigFile::load(&path)?,
            None => ConfigFile::default(),
        };
        let declared = file.declared();
        let serve = file.serve;
        let max_connections = max_connections.or(serve.max_connections);
        let handshake_timeout = handshake_timeout.or(serve.handshake_timeout);
        Ok(ServeConfig {
            listen: listen.or(serve.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a socket address")),
            data_dir: data_dir.or(serve.data_dir).unwrap_or_else(|| PathBuf::from("tmem-data")),
            demo_pool,
            peer_listen: peer_listen.or(serve.peer_listen),
            socket: socket.or(serve.socket),
            mlock: mlock || serve.mlock,
            memory_limit: memory_limit.or(serve.memory_limit).unwrap_or_default(),
            governor: GovernorConfig {
                enabled: governor,
                reserve: governor_reserve.unwrap_or_default(),
                psi_high: governor_psi_high,
                psi_low: governor_psi_low,
                ..Default::default()
            },
            max_instances: max_instances.or(serve.max_instances).unwrap_or(DEFAULT_MAX_INSTANCES),
            limits: ServeLimits::overridden(
                max_connections.map(|n| n as usize),
                handshake_timeout.map(std::time::Duration::from_secs),
            ),
            allowed_paths: serve.allow_path.into_iter().chain(allow_path).collect(),
            secrets_key: secrets_key.or(serve.secrets_key),
            tls: TlsFiles {
                cert: tls_cert.or(serve.tls_cert),
                key: tls_key.or(serve.tls_key),
                client_ca: tls_client_ca.or(serve.tls_client_ca),
                psk: tls_psk.or(serve.tls_psk),
                ca: tls_ca.or(serve.tls_ca),
            },
            insecure_plain_tcp: insecure_plain_tcp || serve.insecure_plain_tcp,
            api_tls: api_tls || serve.api_tls,
            socket_users: if socket_users.is_empty() { serve.socket_users } else { socket_users },
            socket_group: socket_group.or(serve.socket_group),
            declared,
        })
    }
}

impl DemoArgs {
    /// The settings of the demo run.
    pub fn into_config(self) -> DemoConfig {
        let DemoArgs { listen, data_dir, seconds, region_mib, then_serve, prefetch } = self;
        DemoConfig { listen, data_dir, seconds, region_mib, then_serve, prefetch }
    }
}

impl PoolCreateArgs {
    pub fn into_config(self) -> PoolConfig {
        let mut config = PoolConfig::new(&self.name, self.backends);
        if let Some(page_size) = self.page_size {
            config.page_size = page_size;
        }
        config.max_pages = self.max_pages;
        config.max_bytes = self.max_bytes;
        if let Some(threshold) = self.accept_threshold {
            config.accept_threshold_percent = threshold;
        }
        config.writethrough = self.writethrough;
        config.exclusive_gets = self.exclusive_gets;
        config.enabled = !self.disabled;
        config.shards = self.shards;
        config.weight = self.weight;
        config.tier = self.tier;
        config.durability = self.durability;
        config.flush_interval_ms = self.flush_interval_ms;
        if self.sandbox_memory.is_some() || self.call_timeout_ms.is_some() {
            config.sandbox = Some(SandboxConfig {
                memory_bytes: self.sandbox_memory.unwrap_or(DEFAULT_SANDBOX.memory_bytes),
                call_timeout_ms: self.call_timeout_ms.unwrap_or(DEFAULT_SANDBOX.call_timeout_ms),
            });
        }
        config
    }
}

impl PoolAttachArgs {
    pub fn into_request(self) -> AttachRequest {
        AttachRequest {
            kind: if self.ublk { FrontendKind::Ublk } else { FrontendKind::Nbd },
            size_bytes: self.size,
            backing: self.backing.display().to_string(),
            socket: self.nbd_socket.map(|p| p.display().to_string()),
            listen: self.nbd_listen,
            allow_remote: self.allow_remote,
            insecure_no_tls: self.insecure_no_tls,
            ublk_id: self.ublk_id,
        }
    }
}

impl PoolSetArgs {
    /// The patch; `current`: the pool's tier now (what `--tier` settings not given keep).
    pub fn into_patch(self, current: Option<&TierConfig>) -> PoolPatch {
        PoolPatch {
            max_pages: self.max_pages.map(|l| l.0),
            max_bytes: self.max_bytes.map(|l| l.0),
            accept_threshold_percent: self.accept_threshold,
            writethrough: self.writethrough,
            exclusive_gets: self.exclusive_gets,
            enabled: if self.enable {
                Some(true)
            } else if self.disable {
                Some(false)
            } else {
                None
            },
            backends: if self.backends.is_empty() { None } else { Some(self.backends) },
            durability: self.durability,
            flush_interval_ms: self.flush_interval_ms,
            tier: if self.no_tier { Some(None) } else { self.tier.map(|t| Some(t.resolve(current))) },
        }
    }
}

// ----- parsing -----

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "sync" => Ok(Durability::Sync),
        "periodic" => Ok(Durability::Periodic),
        "written" => Ok(Durability::Written),
        other => Err(format!("`{other}` is not a durability mode (sync, written or periodic)")),
    }
}

/// `plugin[@version][+grant...][:key=value[,key=value...]]`; values are JSON when they parse
/// as JSON (numbers, `true`, arrays, quoted strings), else strings. (A version with `+` build
/// metadata is given by its sha256 prefix instead.)
fn parse_backend(spec: &str) -> Result<BackendRequest, String> {
    let (head, config) = match spec.split_once(':') {
        Some((head, config)) => (head, Some(config)),
        None => (spec, None),
    };
    let mut parts = head.split('+');
    let head = parts.next().unwrap_or_default();
    let grants: Vec<String> = parts.map(str::to_string).collect();
    if grants.iter().any(String::is_empty) {
        return Err(format!("an empty grant in `{spec}` (expected PLUGIN+GRANT, e.g. sled+storage)"));
    }
    let (plugin, version) = match head.split_once('@') {
        Some((plugin, version)) => (plugin, Some(version)),
        None => (head, None),
    };
    if plugin.is_empty() {
        return Err("the plugin name is missing (expected PLUGIN[@VERSION][:KEY=VALUE,...])".into());
    }
    if version == Some("") {
        return Err(format!("the version after `{plugin}@` is missing"));
    }
    let mut request = BackendRequest::new(plugin);
    request.version = version.map(str::to_string);
    request.grants = grants;
    if let Some(config) = config {
        let mut object = Map::new();
        for pair in split_top_level(config) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!("`{pair}` is not KEY=VALUE"));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("`{pair}` has no key"));
            }
            let value = value.trim();
            let value = serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.to_string()));
            if object.insert(key.to_string(), value).is_some() {
                return Err(format!("config key `{key}` is given twice"));
            }
        }
        if object.is_empty() {
            return Err(format!("no config after `{head}:`"));
        }
        request.config = Value::Object(object);
    }
    Ok(request)
}

/// `LOWER[:idle_seconds=N,promote=on_load|never,pressure_percent=P]`: a pool's lower tier
/// (ranges are checked by the host, which says why it refuses).
pub(crate) fn parse_tier(spec: &str) -> Result<TierConfig, String> {
    Ok(parse_tier_setting(spec)?.resolve(None))
}

/// A `--tier` of `pool set`: the settings given, the others to be filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSetting {
    /// The lower pool.
    pub lower: String,
    /// Settings given.
    pub idle_seconds: Option<u64>,
    /// Promotion policy given.
    pub promote: Option<Promote>,
    /// Pressure threshold given.
    pub pressure_percent: Option<u8>,
}

impl TierSetting {
    /// The whole tier: the settings given, else `current`'s if it has the same lower pool,
    /// else the defaults.
    pub fn resolve(self, current: Option<&TierConfig>) -> TierConfig {
        let base =
            current.filter(|c| c.lower == self.lower).cloned().unwrap_or_else(|| TierConfig::new(&self.lower, 60));
        TierConfig {
            lower: self.lower,
            idle_seconds: self.idle_seconds.unwrap_or(base.idle_seconds),
            promote: self.promote.unwrap_or(base.promote),
            pressure_percent: self.pressure_percent.unwrap_or(base.pressure_percent),
        }
    }
}

/// [`parse_tier`], keeping which settings were given.
pub(crate) fn parse_tier_setting(spec: &str) -> Result<TierSetting, String> {
    let (lower, settings) = spec.split_once(':').unwrap_or((spec, ""));
    if lower.is_empty() {
        return Err("the lower pool's name is missing (expected LOWER[:idle_seconds=N,...])".into());
    }
    let mut tier = TierSetting { lower: lower.into(), idle_seconds: None, promote: None, pressure_percent: None };
    for pair in settings.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("`{pair}` is not KEY=VALUE"));
        };
        let number = |what: &str| value.trim().parse::<u64>().map_err(|_| format!("{what} `{value}` is not a number"));
        match key.trim() {
            "idle_seconds" => tier.idle_seconds = Some(number("idle_seconds")?),
            "pressure_percent" => {
                tier.pressure_percent = Some(
                    u8::try_from(number("pressure_percent")?)
                        .map_err(|_| format!("pressure_percent `{value}` is over 100"))?,
                )
            }
            "promote" => {
                tier.promote = Some(match value.trim() {
                    "on_load" => Promote::OnLoad,
                    "never" => Promote::Never,
                    other => return Err(format!("promote `{other}` is neither on_load nor never")),
                })
            }
            other => return Err(format!("unknown tier setting `{other}` (idle_seconds, promote, pressure_percent)")),
        }
    }
    Ok(tier)
}

/// Splits on commas that are outside brackets, braces and double quotes, so array values
/// (`endpoints=["a","b"]`) stay whole.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 0);
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// A byte count with an optional binary suffix: `4096`, `4K`, `64M`, `1G`, `2MiB`, `512B`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a size (e.g. 4096, 64K, 64M, 1G)"));
    }
    let number: u64 = digits.parse().map_err(|e| format!("`{digits}`: {e}"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size suffix `{other}` (use K, M, G or T)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

/// `tmem swap on --size`: `4G` or `50%`.
fn parse_swap_size(text: &str) -> Result<SwapSize, String> {
    let text = text.trim();
    if let Some(digits) = text.strip_suffix('%') {
        return match digits.trim().parse::<u16>() {
            Ok(p @ 1..=400) => Ok(SwapSize::PercentOfRam(p)),
            _ => Err(format!("`{text}` is not a share of RAM from 1% to 400%")),
        };
    }
    match parse_size(text)? {
        0 => Err("a swap device of 0 bytes holds nothing".into()),
        n => Ok(SwapSize::Bytes(n)),
    }
}

/// A chain as one argument: links separated by commas, each as `--backend` takes it. A
/// comma followed by `KEY=VALUE` continues the link before it (`zstd:level=3,on_incompressible=store_raw,ram`).
pub(crate) fn parse_chain(text: &str) -> Result<Chain, String> {
    let mut links: Vec<String> = Vec::new();
    for part in split_top_level(text) {
        let part = part.trim();
        let continues = part.split_once('=').is_some_and(|(key, _)| !key.contains([':', '+', '@']));
        match links.last_mut() {
            Some(last) if continues && last.contains(':') => {
                last.push(',');
                last.push_str(part);
            }
            _ => links.push(part.to_string()),
        }
    }
    if links.is_empty() {
        return Err("an empty chain: name its plugins, a store last (lz4,ram)".into());
    }
    links.iter().map(|l| parse_backend(l)).collect::<Result<_, _>>().map(Chain)
}

fn parse_page_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    u32::try_from(size).map_err(|_| format!("a page size of {size} bytes is too large"))
}

fn parse_percent(text: &str) -> Result<u8, String> {
    let digits = text.trim().trim_end_matches('%');
    match digits.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100")),
    }
}

fn parse_limit(text: &str, parse: impl Fn(&str) -> Result<u64, String>) -> Result<Limit, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "none" | "unlimited" => Ok(Limit(None)),
        _ => parse(text).map(|n| Limit(Some(n))),
    }
}

/// A memory budget: `2G` (a size), `20%` (a share of RAM), `none`/`0` (no limit).
pub(crate) fn parse_memory_limit(text: &str) -> Result<MemoryLimit, String> {
    let text = text.trim();
    match text.to_ascii_lowercase().as_str() {
        "none" | "unlimited" | "0" => return Ok(MemoryLimit::Unlimited),
        _ => {}
    }
    if text.ends_with('%') {
        return match parse_percent(text)? {
            0 => Err("a memory limit of 0% would refuse every page: say `none` for no limit".into()),
            p => Ok(MemoryLimit::PercentOfRam(p)),
        };
    }
    parse_size(text).map(MemoryLimit::Bytes)
}

/// `on` or `off`.
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("`{text}` is not `on` or `off`")),
    }
}

/// The governor's reserve: `1G` (a size) or `5%` (a share of RAM).
fn parse_reserve(text: &str) -> Result<Reserve, String> {
    if text.trim().ends_with('%') {
        return parse_percent(text).map(Reserve::PercentOfRam);
    }
    parse_size(text).map(Reserve::Bytes)
}

fn parse_page_limit(text: &str) -> Result<Limit, String> {
    parse_limit(text, |t| t.trim().parse::<u64>().map_err(|_| format!("`{t}` is not a page count or `none`")))
}

fn parse_byte_limit(text: &str) -> Result<Limit, String> {
    parse_limit(text, parse_size)
}

/// A page offset: decimal, or hex with `0x`.
fn parse_offset(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a page offset (decimal, or hex with 0x)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("tmem").chain(args.iter().copied())).map(|c| match c.command {
            Command::Client(command) => *command,
            _ => panic!("not a client command"),
        })
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tiers_parse_with_defaults_and_settings() {
        let tier = parse_tier("cold").unwrap();
        assert_eq!(
            (tier.lower.as_str(), tier.idle_seconds, tier.promote, tier.pressure_percent),
            ("cold", 60, Promote::OnLoad, 90)
        );
        let tier = parse_tier("cold:idle_seconds=5,promote=never,pressure_percent=50").unwrap();
        assert_eq!((tier.idle_seconds, tier.promote, tier.pressure_percent), (5, Promote::Never, 50));
        assert!(parse_tier("").unwrap_err().contains("missing"));
        assert!(parse_tier(":idle_seconds=5").unwrap_err().contains("missing"));
        assert!(parse_tier("cold:idle_seconds").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_tier("cold:idle_seconds=soon").unwrap_err().contains("not a number"));
        assert!(parse_tier("cold:promote=always").unwrap_err().contains("on_load"));
        assert!(parse_tier("cold:pressure_percent=300").unwrap_err().contains("over 100"));
        assert!(parse_tier("cold:colour=blue").unwrap_err().contains("unknown tier setting"));
        let ClientCommand::Pool(PoolArgs { command: PoolCommand::Create(args), .. }) =
            parse(&["pool", "create", "hot", "--backend", "lz4", "--backend", "ram", "--tier", "cold:idle_seconds=10"])
                .unwrap()
        else {
            panic!("not pool create")
        };
        assert_eq!(args.into_config().tier.map(|t| (t.lower, t.idle_seconds)), Some(("cold".into(), 10)));
    }

    #[test]
    fn backends_parse_with_versions_and_typed_config() {
        assert_eq!(parse_backend("ram").unwrap(), BackendRequest::new("ram"));
        let b = parse_backend("zstd@0.1.0:level=1,on_incompressible=store_raw").unwrap();
        assert_eq!(b.plugin, "zstd");
        assert_eq!(b.version.as_deref(), Some("0.1.0"));
        assert_eq!(b.config, json!({"level": 1, "on_incompressible": "store_raw"}));
        let b = parse_backend(r#"remote:endpoints=["a:1","b,2"],tls=true,name="x""#).unwrap();
        assert_eq!(b.config, json!({"endpoints": ["a:1", "b,2"], "tls": true, "name": "x"}));
        let b = parse_backend("zstd:level=-3").unwrap();
        assert_eq!(b.config, json!({"level": -3}));
        assert!(parse_backend("").is_err());
        assert!(parse_backend("@1").is_err());
        assert!(parse_backend("zstd@").is_err());
        assert!(parse_backend("zstd:level").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_backend("zstd:level=1,level=2").unwrap_err().contains("twice"));
        assert!(parse_backend("zstd:").is_err());
        let b = parse_backend("sled@0.1.0+storage").unwrap();
        assert_eq!(
            (b.plugin.as_str(), b.version.as_deref(), b.grants.as_slice()),
            ("sled", Some("0.1.0"), &["storage".to_string()][..])
        );
        assert!(parse_backend("sled+").unwrap_err().contains("empty grant"));
        let b = parse_backend(r#"remote+network:endpoints=["tmem://127.0.0.1:7001/for-a"],timeout_ms=200,token=abc"#)
            .unwrap();
        assert_eq!(b.grants, ["network"]);
        assert_eq!(
            b.config,
            serde_json::json!({"endpoints": ["tmem://127.0.0.1:7001/for-a"], "timeout_ms": 200, "token": "abc"})
        );
    }

    #[test]
    fn swap_sizes_and_chains_parse() {
        assert_eq!(parse_swap_size("4G"), Ok(SwapSize::Bytes(4 << 30)));
        assert_eq!(parse_swap_size("50%"), Ok(SwapSize::PercentOfRam(50)));
        assert!(parse_swap_size("0%").is_err() && parse_swap_size("401%").is_err() && parse_swap_size("0").is_err());
        let plugins = |chain: &Chain| chain.0.iter().map(|b| b.plugin.clone()).collect::<Vec<_>>();
        assert_eq!(plugins(&parse_chain("lz4,ram").unwrap()), ["lz4", "ram"]);
        // A comma followed by KEY=VALUE continues the link before it.
        let chain = parse_chain("zstd:level=3,on_incompressible=store_raw,sled+storage").unwrap();
        assert_eq!(plugins(&chain), ["zstd", "sled"]);
        assert_eq!(chain.0[0].config, serde_json::json!({"level": 3, "on_incompressible": "store_raw"}));
        assert_eq!(chain.0[1].grants, ["storage"]);
        // Array values keep their commas.
        let chain = parse_chain(r#"zstd,remote+network:endpoints=["a:1","b:2"],timeout_ms=200"#).unwrap();
        assert_eq!(chain.0[1].config["endpoints"], serde_json::json!(["a:1", "b:2"]));
        assert_eq!(chain.0[1].config["timeout_ms"], 200);
        assert!(parse_chain("").unwrap_err().contains("an empty chain"));
    }

    #[test]
    fn sizes_percentages_limits_and_offsets_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        assert_eq!(parse_page_size("2M"), Ok(2 << 20));
        assert!(parse_page_size("8G").is_err());
        assert_eq!(parse_percent("90"), Ok(90));
        assert_eq!(parse_percent("75%"), Ok(75));
        assert!(parse_percent("101").is_err());
        assert_eq!(parse_page_limit("none"), Ok(Limit(None)));
        assert_eq!(parse_page_limit("50"), Ok(Limit(Some(50))));
        assert!(parse_page_limit("5K").is_err());
        assert_eq!(parse_byte_limit("1M"), Ok(Limit(Some(1 << 20))));
        assert_eq!(parse_offset("42"), Ok(42));
        assert_eq!(parse_offset("0x1f"), Ok(31));
        assert!(parse_offset("-1").is_err());
    }

    #[test]
    fn the_governor_flags_parse_into_its_config() {
        let serve = |args: &[&str]| match Cli::try_parse_from([&["tmem", "serve"], args].concat()) {
            Ok(Cli { command: Command::Serve(args) }) => Ok(args.into_config().expect("no config file").governor),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        };
        let default = serve(&[]).unwrap();
        assert_eq!(default, GovernorConfig::default(), "on by default, with the default policy");
        assert!(default.enabled);
        let set = serve(&[
            "--governor",
            "off",
            "--governor-reserve",
            "5%",
            "--governor-psi-high",
            "20",
            "--governor-psi-low",
            "1.5",
        ])
        .unwrap();
        assert_eq!(
            set,
            GovernorConfig {
                enabled: false,
                reserve: Reserve::PercentOfRam(5),
                psi_high: 20.0,
                psi_low: 1.5,
                ..Default::default()
            }
        );
        assert_eq!(serve(&["--governor-reserve", "1G"]).unwrap().reserve, Reserve::Bytes(1 << 30));
        assert!(serve(&["--governor", "maybe"]).is_err());
        assert!(serve(&["--governor-reserve", "101%"]).is_err());
    }

    #[test]
    fn pool_create_builds_the_config() {
        let ClientCommand::Pool(PoolArgs { command: PoolCommand::Create(args), connect }) = parse(&[
            "pool",
            "create",
            "demo",
            "--backend",
            "zstd:level=1",
            "--backend",
            "ram",
            "--max-pages",
            "100",
            "--max-bytes",
            "64M",
            "--writethrough",
            "--weight",
            "250",
            "--json",
        ])
        .unwrap() else {
            panic!("not pool create")
        };
        assert!(connect.json);
        let config = args.into_config();
        let mut expected = PoolConfig::new(
            "demo",
            vec![
                BackendRequest { config: json!({"level": 1}), ..BackendRequest::new("zstd") },
                BackendRequest::new("ram"),
            ],
        );
        expected.max_pages = Some(100);
        expected.max_bytes = Some(64 << 20);
        expected.writethrough = true;
        expected.weight = Some(250);
        assert_eq!(config, expected);
        assert!(parse(&["pool", "create", "demo"]).is_err(), "a chain is required");
    }

    #[test]
    fn pool_set_builds_the_patch_and_needs_a_change() {
        let ClientCommand::Pool(PoolArgs { command: PoolCommand::Set(args), .. }) =
            parse(&["pool", "set", "demo", "--max-pages", "none", "--writethrough", "true", "--disable"]).unwrap()
        else {
            panic!("not pool set")
        };
        let patch = args.into_patch(None);
        assert_eq!(
            patch,
            PoolPatch { max_pages: Some(None), writethrough: Some(true), enabled: Some(false), ..Default::default() }
        );
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"max_pages": null, "writethrough": true, "enabled": false})
        );
        assert!(parse(&["pool", "set", "demo"]).is_err(), "nothing to change");
        assert!(parse(&["pool", "set", "demo", "--enable", "--disable"]).is_err());
    }

    fn pool_set(args: &[&str]) -> PoolSetArgs {
        let ClientCommand::Pool(PoolArgs { command: PoolCommand::Set(args), .. }) = parse(args).unwrap() else {
            panic!("not pool set")
        };
        args
    }

    #[test]
    fn pool_set_adds_changes_and_removes_a_tier() {
        // Added: the settings given, the defaults for the rest.
        let patch = pool_set(&["pool", "set", "hot", "--tier", "cold:idle_seconds=5"]).into_patch(None);
        assert_eq!(patch, PoolPatch { tier: Some(Some(TierConfig::new("cold", 5))), ..Default::default() });
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"tier": {"lower": "cold", "idle_seconds": 5, "promote": "on_load", "pressure_percent": 90}})
        );
        // Changed: the settings not given keep their current values.
        let current = TierConfig { promote: Promote::Never, pressure_percent: 70, ..TierConfig::new("cold", 30) };
        let patch = pool_set(&["pool", "set", "hot", "--tier", "cold:pressure_percent=50"]).into_patch(Some(&current));
        assert_eq!(patch.tier, Some(Some(TierConfig { pressure_percent: 50, ..current.clone() })));
        // Another lower pool: nothing carries over.
        let patch = pool_set(&["pool", "set", "hot", "--tier", "colder"]).into_patch(Some(&current));
        assert_eq!(patch.tier, Some(Some(TierConfig::new("colder", 60))));
        // Removed: `null`.
        let patch = pool_set(&["pool", "set", "hot", "--no-tier"]).into_patch(Some(&current));
        assert_eq!(patch, PoolPatch { tier: Some(None), ..Default::default() });
        assert_eq!(serde_json::to_value(&patch).unwrap(), json!({"tier": null}));
        // Either, not both; a bad spec is refused as for `pool create`.
        assert!(parse(&["pool", "set", "hot", "--tier", "cold", "--no-tier"]).is_err());
        let err = parse(&["pool", "set", "hot", "--tier", "cold:promote=always"]).unwrap_err().to_string();
        assert!(err.contains("on_load"), "{err}");
        assert!(parse(&["pool", "set", "hot", "--tier", ":idle_seconds=5"]).is_err());
    }

    #[test]
    fn connection_options_go_anywhere_after_the_group() {
        for args in [["pool", "--server", "http://h:1", "ls"], ["pool", "ls", "--server", "http://h:1"]] {
            let ClientCommand::Pool(PoolArgs { connect, .. }) = parse(&args).unwrap() else { panic!() };
            assert_eq!(connect.server, "http://h:1");
        }
        assert!(parse(&["page", "rm", "p"]).is_err(), "an offset or --all");
        assert!(parse(&["page", "rm", "p", "3", "--all"]).is_err());
        assert!(parse(&["page", "rm", "p", "--all"]).is_ok());
    }
}
