//! The client half of the `tmem` command line: `tmem plugin|pool|page ...`, run against a
//! `tmem serve` over the REST API with [`tmem_api::client`].
//!
//! The binary flattens [`ClientCommand`] into its own subcommands and hands it to [`run`],
//! which returns the exit code: 0 on success, 1 when the server (or anything else) says no,
//! 3 when a page store was rejected (an expected outcome of frontswap, not an error), and 2
//! for usage errors (clap's own).
//!
//! Every group (`plugin`, `pool`, `page`) takes the connection options anywhere after its
//! name: `--server URL` (`TMEM_SERVER`), `--token TOKEN` (`TMEM_TOKEN`) or else the token the
//! server wrote to `--data-dir DIR/token` (`TMEM_DATA_DIR`), and `--json` to print the
//! server's JSON instead of tables.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;
use serde_json::{Map, Value};
use tmem_api::client::{Client, ClientError};
use tmem_api::manifest::{ConfigKey, ConfigValueKind};
use tmem_api::rest::{
    AttachRequest, BackendInfo, BackendRequest, Durability, FrontendKind, PluginInfo, PluginVersion, PoolConfig,
    PoolInfo, PoolPatch, SandboxConfig, StoreResult,
};

/// Where `tmem serve` listens unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7411";

/// The exit code of a store the pool rejected.
pub const EXIT_REJECTED: u8 = 3;

/// The sandbox defaults of the host, used when only one of the two sandbox options is given.
const DEFAULT_SANDBOX: SandboxConfig = SandboxConfig { memory_bytes: 64 << 20, call_timeout_ms: 100 };

// ----- arguments -----

/// The client subcommands of `tmem`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register, list and remove plugins (Wasm backends).
    Plugin(PluginArgs),
    /// Create, inspect, change and remove pools.
    Pool(PoolArgs),
    /// Store, load and invalidate pages of a pool.
    Page(PageArgs),
}

/// How to reach the server and how to print; accepted anywhere after the group's name.
#[derive(Debug, Clone, Args)]
pub struct ConnectOptions {
    /// URL of the tmem server.
    #[arg(long, global = true, help_heading = "Client options", value_name = "URL", env = "TMEM_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// API token [default: read from DATA_DIR/token].
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        value_name = "TOKEN",
        env = "TMEM_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The server's data directory, where it wrote its API token.
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        value_name = "DIR",
        env = "TMEM_DATA_DIR",
        default_value = "tmem-data"
    )]
    data_dir: PathBuf,
    /// Print the server's JSON response instead of a human-readable view.
    #[arg(long, global = true, help_heading = "Client options")]
    json: bool,
}

/// `tmem plugin ...`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(flatten)]
    connect: ConnectOptions,
    #[command(subcommand)]
    command: PluginCommand,
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
    connect: ConnectOptions,
    #[command(subcommand)]
    command: PoolCommand,
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
    /// Change a pool's settings, or hot swap its chain.
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
    name: String,
    /// Serve a ublk device, /dev/ublkbN (the host needs the ublk_drv module and root).
    #[arg(long)]
    ublk: bool,
    /// With --ublk: the device number N to create (default: the next free one).
    #[arg(long, value_name = "N", requires = "ublk")]
    ublk_id: Option<u32>,
    /// Serve NBD on a Unix socket at this absolute path.
    #[arg(long, value_name = "PATH")]
    nbd_socket: Option<PathBuf>,
    /// Serve NBD on this TCP address, e.g. 127.0.0.1:10809 (loopback unless --allow-remote).
    #[arg(long, value_name = "ADDR")]
    nbd_listen: Option<String>,
    /// Accept a --nbd-listen address beyond loopback (NBD has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// The device size, a multiple of the pool's page size, e.g. `1G`.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: u64,
    /// The backing file for pages the pool refuses (absolute path; created if missing).
    #[arg(long, value_name = "PATH")]
    backing: PathBuf,
}

/// `tmem pool create`.
#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    /// The pool name (letters, digits, `-`, `_`, `.`).
    name: String,
    /// One link of the chain, in order: filters, then one store.
    /// Syntax: PLUGIN[@VERSION][+GRANT...][:KEY=VALUE[,KEY=VALUE...]], e.g. `zstd:level=1`,
    /// `ram`, `sled+storage` (the persistent store, granted storage).
    #[arg(long = "backend", value_name = "SPEC", required = true, value_parser = parse_backend)]
    backends: Vec<BackendRequest>,
    /// Persistent pools: `sync` (acknowledge once on disk; the default) or `periodic`.
    #[arg(long, value_name = "sync|periodic", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Persistent pools with periodic durability: flush interval in ms [default: 1000].
    #[arg(long, value_name = "MS")]
    flush_interval_ms: Option<u64>,
    /// Bytes per page: a power of two from 4K to 2M [default: 4096].
    #[arg(long, value_name = "SIZE", value_parser = parse_page_size)]
    page_size: Option<u32>,
    /// Most pages held [default: no limit].
    #[arg(long, value_name = "N")]
    max_pages: Option<u64>,
    /// Most bytes the store may use, e.g. `64M` [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// After hitting a limit, refuse stores until usage is below this percentage [default: 90].
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    accept_threshold: Option<u8>,
    /// Every stored page is also written to the frontend's device.
    #[arg(long)]
    writethrough: bool,
    /// A load also removes the page.
    #[arg(long)]
    exclusive_gets: bool,
    /// Shards, a power of two [default: chosen from the CPUs].
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// Create the pool refusing stores.
    #[arg(long)]
    disabled: bool,
    /// Linear memory each plugin instance may have, e.g. `32M` [default: 64M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    sandbox_memory: Option<u64>,
    /// Longest a single plugin call may run, in milliseconds [default: 100].
    #[arg(long, value_name = "MS")]
    call_timeout_ms: Option<u64>,
}

/// `tmem pool set`: at least one change.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("change").required(true).multiple(true)),
    override_usage = "tmem pool set <NAME> <CHANGE>... [OPTIONS]"
)]
pub struct PoolSetArgs {
    /// The pool name.
    name: String,
    /// New page limit, or `none`.
    #[arg(long, value_name = "N|none", value_parser = parse_page_limit, group = "change")]
    max_pages: Option<Limit>,
    /// New byte limit (e.g. `64M`), or `none`.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_byte_limit, group = "change")]
    max_bytes: Option<Limit>,
    /// New accept threshold, in percent.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, group = "change")]
    accept_threshold: Option<u8>,
    /// Writethrough on or off.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new(), group = "change")]
    writethrough: Option<bool>,
    /// Exclusive gets on or off.
    #[arg(long, value_name = "true|false", value_parser = BoolishValueParser::new(), group = "change")]
    exclusive_gets: Option<bool>,
    /// Accept stores.
    #[arg(long, group = "change", conflicts_with = "disable")]
    enable: bool,
    /// Refuse stores.
    #[arg(long, group = "change")]
    disable: bool,
    /// Hot swap: the whole chain again, same plugins in the same order, each at the version
    /// and config wanted (syntax as for `pool create`).
    #[arg(long = "backend", value_name = "SPEC", value_parser = parse_backend, group = "change")]
    backends: Vec<BackendRequest>,
    /// Persistent pools: `sync` or `periodic`.
    #[arg(long, value_name = "sync|periodic", value_parser = parse_durability, group = "change")]
    durability: Option<Durability>,
    /// Persistent pools with periodic durability: flush interval in ms.
    #[arg(long, value_name = "MS", group = "change")]
    flush_interval_ms: Option<u64>,
}

/// `tmem page ...`.
#[derive(Debug, Args)]
pub struct PageArgs {
    #[command(flatten)]
    connect: ConnectOptions,
    #[command(subcommand)]
    command: PageCommand,
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

// ----- running -----

/// Runs a client command and returns the process's exit code; errors are printed to
/// standard error as `tmem: MESSAGE`.
pub fn run(command: ClientCommand) -> ExitCode {
    match execute(command) {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Rejected) => ExitCode::from(EXIT_REJECTED),
        Err(e) => {
            eprintln!("tmem: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that did not fail ended.
enum Done {
    Ok,
    /// A store was rejected.
    Rejected,
}

/// Why a command failed, as the user should read it.
#[derive(Debug)]
enum CliError {
    /// The server said no: `MESSAGE (CODE, HTTP STATUS)`.
    Api(ClientError),
    /// No answer from the server.
    Unreachable { url: String, reason: String },
    /// Anything else, already phrased.
    Message(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api(e) => write!(f, "{e}"),
            CliError::Unreachable { url, reason } => {
                write!(f, "cannot reach tmem at {url}: {reason} (is `tmem serve` running?)")
            }
            CliError::Message(m) => f.write_str(m),
        }
    }
}

/// A connected client and the output mode.
struct Session {
    client: Client,
    json: bool,
}

impl Session {
    fn open(options: ConnectOptions) -> Result<Session, CliError> {
        let token = match options.token.filter(|t| !t.trim().is_empty()) {
            Some(token) => token.trim().to_string(),
            None => read_token(&options.data_dir)?,
        };
        let server = server_url(&options.server)?;
        Ok(Session { client: Client::new(&server, Some(token)), json: options.json })
    }

    /// Turns a client error into what the user reads.
    fn fail(&self, error: ClientError) -> CliError {
        match error {
            ClientError::Transport(reason) => CliError::Unreachable { url: self.client.base_url().to_string(), reason },
            ClientError::Decode(_) => CliError::Message(error.to_string()),
            api @ ClientError::Api { .. } => CliError::Api(api),
        }
    }

    /// Prints `value` as JSON in `--json` mode, else `human(value)`.
    fn show<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        if self.json {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::Message(format!("cannot print the response as JSON: {e}")))?;
            emit(&format!("{text}\n"))
        } else {
            emit(&human(value))
        }
    }

    /// Prints a confirmation (not in `--json` mode: an empty response has no JSON).
    fn say(&self, line: &str) -> Result<(), CliError> {
        if self.json { Ok(()) } else { emit(&format!("{line}\n")) }
    }
}

/// The server's base URL; `host:port` alone means `http://host:port`.
fn server_url(server: &str) -> Result<String, CliError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(CliError::Message("no server URL: pass --server URL or set TMEM_SERVER".into()));
    }
    Ok(if server.contains("://") { server.to_string() } else { format!("http://{server}") })
}

fn read_token(data_dir: &Path) -> Result<String, CliError> {
    let path = data_dir.join("token");
    let missing = || {
        CliError::Message(format!(
            "no API token: set TMEM_TOKEN, pass --token, or point --data-dir at the server's data dir ({} not found)",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(missing()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(CliError::Message(format!("cannot read the API token from {}: {e}", path.display()))),
    }
}

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a message.
fn emit(text: &str) -> Result<(), CliError> {
    write_stdout(text.as_bytes())
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Message(format!("cannot write to standard output: {e}"))),
    }
}

fn execute(command: ClientCommand) -> Result<Done, CliError> {
    match command {
        ClientCommand::Plugin(PluginArgs { connect, command }) => plugin(&Session::open(connect)?, command),
        ClientCommand::Pool(PoolArgs { connect, command }) => pool(&Session::open(connect)?, command),
        ClientCommand::Page(PageArgs { connect, command }) => page(&Session::open(connect)?, command),
    }
}

fn plugin(session: &Session, command: PluginCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PluginCommand::Upload { file, name } => {
            let wasm =
                std::fs::read(&file).map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))?;
            let version = client.upload_plugin(name.as_deref(), &wasm).map_err(|e| session.fail(e))?;
            session.show(&version, |v| {
                format!(
                    "registered plugin {} {} ({}, sha256 {}, {})\n",
                    v.name,
                    v.version,
                    v.kind,
                    short_sha(&v.sha256),
                    human_bytes(v.size)
                )
            })?;
        }
        PluginCommand::Ls => {
            let plugins = client.plugins().map_err(|e| session.fail(e))?;
            session.show(&plugins, |plugins| plugin_table(plugins))?;
        }
        PluginCommand::Show { name } => {
            let info = client.plugin(&name).map_err(|e| session.fail(e))?;
            session.show(&info, plugin_view)?;
        }
        PluginCommand::Rm { name, version } => {
            client.remove_plugin(&name, version.as_deref()).map_err(|e| session.fail(e))?;
            match version {
                Some(version) => session.say(&format!("removed plugin {name} version {version}"))?,
                None => session.say(&format!("removed plugin {name}"))?,
            }
        }
    }
    Ok(Done::Ok)
}

fn pool(session: &Session, command: PoolCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PoolCommand::Create(args) => {
            let config = args.into_config();
            let info = client.create_pool(&config).map_err(|e| session.fail(e))?;
            session.show(&info, |info| {
                format!("created pool {} ({}-byte pages): {}\n", info.name, info.page_size, chain(&info.backends))
            })?;
        }
        PoolCommand::Ls => {
            let pools = client.pools().map_err(|e| session.fail(e))?;
            session.show(&pools, |pools| pool_table(pools))?;
        }
        PoolCommand::Show { name } => {
            let info = client.pool(&name).map_err(|e| session.fail(e))?;
            session.show(&info, pool_view)?;
        }
        PoolCommand::Set(args) => {
            let name = args.name.clone();
            let info = client.update_pool(&name, &args.into_patch()).map_err(|e| session.fail(e))?;
            session.show(&info, pool_view)?;
        }
        PoolCommand::Rm { name } => {
            client.remove_pool(&name).map_err(|e| session.fail(e))?;
            session.say(&format!("removed pool {name}"))?;
        }
        PoolCommand::Attach(args) => {
            let name = args.name.clone();
            let attached = client.attach_frontend(&name, &args.into_request()).map_err(|e| session.fail(e))?;
            session.show(&attached, |a| {
                let (size, block) = a.device.as_ref().map_or((0, 0), |d| (d.size_bytes, d.block_size));
                format!(
                    "attached block device {} to pool {name}: {} ({}, {block}-byte blocks)\n",
                    a.id,
                    a.address,
                    human_bytes(size),
                )
            })?;
        }
        PoolCommand::Detach { name, id } => {
            client.detach_frontend(&name, &id).map_err(|e| session.fail(e))?;
            session.say(&format!("detached block device {id} from pool {name}"))?;
        }
        PoolCommand::Shrink { name, target_pages } => {
            let result = client.shrink(&name, target_pages).map_err(|e| session.fail(e))?;
            session.show(&result, |r| {
                format!(
                    "shrank pool {name} from {} to {} ({} written back, {} dropped)\n",
                    pages(r.before),
                    pages(r.after),
                    r.written_back,
                    r.dropped
                )
            })?;
        }
    }
    Ok(Done::Ok)
}

fn page(session: &Session, command: PageCommand) -> Result<Done, CliError> {
    let client = &session.client;
    match command {
        PageCommand::Put { pool, offset, file } => {
            let page_size = client.pool(&pool).map_err(|e| session.fail(e))?.page_size;
            let page = read_page(file.as_deref(), &pool, page_size)?;
            let result = client.put_page(&pool, offset, &page).map_err(|e| session.fail(e))?;
            session.show(&result, |r| format!("{}\n", store_outcome(r)))?;
            if result.outcome == "rejected" {
                return Ok(Done::Rejected);
            }
        }
        PageCommand::Get { pool, offset, output } => {
            let Some(page) = client.get_page(&pool, offset).map_err(|e| session.fail(e))? else {
                return Err(CliError::Message("page not present".into()));
            };
            match output {
                Some(path) if path.as_os_str() != "-" => std::fs::write(&path, &page)
                    .map_err(|e| CliError::Message(format!("cannot write {}: {e}", path.display())))?,
                _ => write_stdout(&page)?,
            }
        }
        PageCommand::Rm { pool, offset: _, all: true } => {
            let dropped = client.invalidate_area(&pool).map_err(|e| session.fail(e))?;
            session.show(&dropped, |d| format!("dropped {} from pool {pool}\n", pages(d.pages)))?;
        }
        PageCommand::Rm { pool, offset: Some(offset), all: false } => {
            if !client.remove_page(&pool, offset).map_err(|e| session.fail(e))? {
                return Err(CliError::Message("page not present".into()));
            }
            session.say(&format!("removed page {offset} from pool {pool}"))?;
        }
        PageCommand::Rm { offset: None, all: false, .. } => {
            // clap requires one of the two; kept as a message rather than a panic.
            return Err(CliError::Message("give an OFFSET or --all".into()));
        }
    }
    Ok(Done::Ok)
}

/// Reads exactly one page from `file` (standard input for `-` or none).
fn read_page(file: Option<&Path>, pool: &str, page_size: u32) -> Result<Vec<u8>, CliError> {
    let (source, reader): (String, Box<dyn Read>) = match file {
        Some(path) if path.as_os_str() != "-" => {
            let f = File::open(path).map_err(|e| CliError::Message(format!("cannot open {}: {e}", path.display())))?;
            (path.display().to_string(), Box::new(f))
        }
        _ => ("standard input".to_string(), Box::new(io::stdin())),
    };
    let mut page = Vec::with_capacity(page_size as usize);
    // One byte more than a page tells "too long" from "exactly a page".
    reader
        .take(u64::from(page_size) + 1)
        .read_to_end(&mut page)
        .map_err(|e| CliError::Message(format!("cannot read {source}: {e}")))?;
    if page.len() > page_size as usize {
        return Err(CliError::Message(format!(
            "{source} holds more than one page: pool {pool} takes {page_size}-byte pages"
        )));
    }
    if page.len() < page_size as usize {
        return Err(CliError::Message(format!(
            "{source} holds {} bytes, not a page: pool {pool} takes {page_size}-byte pages",
            page.len()
        )));
    }
    Ok(page)
}

impl PoolCreateArgs {
    fn into_config(self) -> PoolConfig {
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
    fn into_request(self) -> AttachRequest {
        AttachRequest {
            kind: if self.ublk { FrontendKind::Ublk } else { FrontendKind::Nbd },
            size_bytes: self.size,
            backing: self.backing.display().to_string(),
            socket: self.nbd_socket.map(|p| p.display().to_string()),
            listen: self.nbd_listen,
            allow_remote: self.allow_remote,
            ublk_id: self.ublk_id,
        }
    }
}

impl PoolSetArgs {
    fn into_patch(self) -> PoolPatch {
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
        }
    }
}

// ----- parsing -----

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "sync" => Ok(Durability::Sync),
        "periodic" => Ok(Durability::Periodic),
        other => Err(format!("`{other}` is not a durability mode (sync or periodic)")),
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
fn parse_size(text: &str) -> Result<u64, String> {
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

// ----- human output -----

/// Column alignment in a [`Table`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns of text aligned for a terminal, with a header row.
struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| lines.iter().map(|cells| cells.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for cells in lines {
            let mut line = String::new();
            for (i, (cell, (_, align))) in cells.iter().zip(&self.columns).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
#[derive(Default)]
struct Fields {
    lines: Vec<(String, String)>,
}

impl Fields {
    fn add(&mut self, key: &str, value: impl fmt::Display) {
        self.lines.push((key.to_string(), value.to_string()));
    }

    fn render(&self, indent: &str) -> String {
        let width = self.lines.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.lines {
            let pad = " ".repeat(width - key.chars().count());
            out.push_str(format!("{indent}{key}:{pad}  {value}").trim_end());
            out.push('\n');
        }
        out
    }
}

/// `512 B`, `4 KiB`, `1.5 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// Microseconds, in the unit that reads best.
fn human_micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `1 page`, `2 pages`.
fn pages(n: u64) -> String {
    if n == 1 { "1 page".into() } else { format!("{n} pages") }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() { "-".into() } else { items.join(", ") }
}

/// `zstd 0.1.0 → ram 0.1.0`.
fn chain(backends: &[BackendInfo]) -> String {
    backends.iter().map(|b| format!("{} {}", b.plugin, b.version)).collect::<Vec<_>>().join(" → ")
}

/// `zstd 0.1.0 (level=1 ...) → ram 0.1.0`: generations of a hot swap may differ only in
/// config.
fn chain_with_config(backends: &[BackendInfo]) -> String {
    let link = |b: &BackendInfo| match config_text(&b.config) {
        config if config.is_empty() => format!("{} {}", b.plugin, b.version),
        config => format!("{} {} ({config})", b.plugin, b.version),
    };
    backends.iter().map(link).collect::<Vec<_>>().join(" → ")
}

/// `level=1 on_incompressible=reject`: strings bare, everything else as JSON.
fn config_text(config: &Map<String, Value>) -> String {
    config
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn store_outcome(result: &StoreResult) -> String {
    match (result.outcome.as_str(), &result.reason) {
        ("stored", _) => "stored".into(),
        ("stored_writethrough", _) => "stored (writethrough)".into(),
        ("rejected", Some(reason)) => format!("rejected: {reason}"),
        (outcome, Some(reason)) => format!("{outcome}: {reason}"),
        (outcome, None) => outcome.into(),
    }
}

fn plugin_table(plugins: &[PluginInfo]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("VERSION", Align::Left),
        ("KIND", Align::Left),
        ("SHA256", Align::Left),
        ("SIZE", Align::Right),
        ("SOURCE", Align::Left),
        ("USED BY", Align::Left),
    ]);
    for plugin in plugins {
        for v in &plugin.versions {
            table.row(vec![
                plugin.name.clone(),
                v.version.clone(),
                v.kind.clone(),
                short_sha(&v.sha256).to_string(),
                human_bytes(v.size),
                if v.bundled { "bundled" } else { "uploaded" }.to_string(),
                or_dash(&v.used_by),
            ]);
        }
    }
    table.render()
}

fn plugin_view(info: &PluginInfo) -> String {
    let mut out = String::new();
    let newest = info.versions.len().saturating_sub(1);
    for (i, v) in info.versions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&plugin_version_view(v, i == newest));
    }
    if info.versions.is_empty() {
        out.push_str(&format!("{}: no versions\n", info.name));
    }
    out
}

fn plugin_version_view(v: &PluginVersion, default: bool) -> String {
    let mut fields = Fields::default();
    fields.add("name", &v.name);
    fields.add("version", if default { format!("{} (default)", v.version) } else { v.version.clone() });
    fields.add("sha256", &v.sha256);
    fields.add("kind", &v.kind);
    fields.add("abi", v.abi);
    fields.add("size", human_bytes(v.size));
    fields.add("source", if v.bundled { "bundled" } else { "uploaded" });
    fields.add("used by", or_dash(&v.used_by));
    fields.add("description", &v.description);
    let mut out = fields.render("");
    if v.config.is_empty() {
        out.push_str("config:       none\n");
        return out;
    }
    out.push_str("config:\n");
    let mut table = Table::new(&[
        ("KEY", Align::Left),
        ("TYPE", Align::Left),
        ("DEFAULT", Align::Left),
        ("RANGE", Align::Left),
        ("DOC", Align::Left),
    ]);
    for entry in &v.config {
        match serde_json::from_value::<ConfigKey>(entry.clone()) {
            Ok(key) => {
                let (kind, default, range) = match &key.value {
                    ConfigValueKind::Integer { min, max, default } => {
                        ("integer", default.to_string(), format!("{min}..={max}"))
                    }
                    ConfigValueKind::Bool { default } => ("bool", default.to_string(), String::new()),
                    ConfigValueKind::Enum { values, default } => (
                        "enum",
                        default.to_string(),
                        values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("|"),
                    ),
                    ConfigValueKind::StringList => ("strings", "[]".to_string(), String::new()),
                    ConfigValueKind::Secret => ("secret", "\"\"".to_string(), String::new()),
                };
                table.row(vec![key.key.to_string(), kind.into(), default, range, key.doc.to_string()]);
            }
            // A newer server may describe keys this client does not know: show them raw.
            Err(_) => table.row(vec![entry.to_string(), String::new(), String::new(), String::new(), String::new()]),
        }
    }
    for line in table.render().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn counter(info: &PoolInfo, name: &str) -> u64 {
    info.counters.get(name).copied().unwrap_or(0)
}

fn limits(info: &PoolInfo) -> String {
    let mut parts = Vec::new();
    if let Some(pages) = info.max_pages {
        parts.push(format!("{pages} pages"));
    }
    if let Some(bytes) = info.max_bytes {
        parts.push(human_bytes(bytes));
    }
    or_dash(&parts)
}

fn modes(info: &PoolInfo) -> String {
    let mut parts = Vec::new();
    if info.writethrough {
        parts.push("writethrough".to_string());
    }
    if info.exclusive_gets {
        parts.push("exclusive-gets".to_string());
    }
    if info.persistent {
        parts.push("persistent".to_string());
    }
    or_dash(&parts)
}

fn state(info: &PoolInfo) -> &'static str {
    match (info.enabled, info.full) {
        (false, _) => "disabled",
        (true, true) => "full",
        (true, false) => "enabled",
    }
}

fn pool_table(pools: &[PoolInfo]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PAGE", Align::Right),
        ("CHAIN", Align::Left),
        ("PAGES", Align::Right),
        ("BYTES", Align::Right),
        ("LIMIT", Align::Left),
        ("MODES", Align::Left),
        ("STATE", Align::Left),
    ]);
    for info in pools {
        table.row(vec![
            info.name.clone(),
            human_bytes(u64::from(info.page_size)),
            chain(&info.backends),
            counter(info, "stored_pages").to_string(),
            human_bytes(counter(info, "pool_total_size")),
            limits(info),
            modes(info),
            state(info).to_string(),
        ]);
    }
    table.render()
}

fn pool_view(info: &PoolInfo) -> String {
    let mut fields = Fields::default();
    fields.add("name", &info.name);
    fields.add(
        "state",
        if info.full { "full (refusing stores until usage falls below the threshold)" } else { state(info) },
    );
    fields.add("page size", info.page_size);
    fields.add("max pages", info.max_pages.map_or("none".to_string(), |p| p.to_string()));
    fields.add("max bytes", info.max_bytes.map_or("none".to_string(), |b| format!("{} ({b})", human_bytes(b))));
    fields.add("accept threshold", format!("{}%", info.accept_threshold_percent));
    fields.add("writethrough", yes_no(info.writethrough));
    fields.add("exclusive gets", yes_no(info.exclusive_gets));
    fields.add(
        "persistent",
        match (info.durability, info.flush_interval_ms) {
            (Some(Durability::Periodic), Some(ms)) => format!("yes, periodic durability (flushed every {ms} ms)"),
            (Some(_), _) => "yes, sync durability (acknowledged once on disk)".to_string(),
            (None, _) => "no (pages are lost when the host stops)".to_string(),
        },
    );
    fields.add("shards", info.shards);
    fields.add(
        "sandbox",
        format!("{} memory, {} ms per call", human_bytes(info.sandbox.memory_bytes), info.sandbox.call_timeout_ms),
    );
    let frontends: Vec<String> = info
        .frontends
        .iter()
        .map(|f| {
            let counter = |k: &str| f.counters.get(k).copied().unwrap_or(0);
            match (&f.device, &f.address) {
                (Some(_), address) => format!(
                    "{} at {address} ({} writes, {} reads, {} to backing, {} taken back)",
                    f.name,
                    counter("writes"),
                    counter("reads"),
                    counter("to_backing"),
                    counter("taken_back")
                ),
                (None, _) => format!(
                    "{} ({} stores, {} loads, {} taken back)",
                    f.name,
                    counter("stores"),
                    counter("loads"),
                    counter("taken_back")
                ),
            }
        })
        .collect();
    fields.add("frontends", or_dash(&frontends));
    fields.add("uptime", human_duration(info.uptime_seconds));
    fields.add(
        "last fault",
        info.last_fault.as_ref().map_or("none".to_string(), |f| format!("{} {}: {}", f.plugin, f.kind, f.message)),
    );
    let mut out = fields.render("");

    out.push_str("chain:\n");
    out.push_str(&indent(&backend_table(&info.backends), "  "));
    if info.generations.len() > 1 {
        out.push_str("generations:\n");
        let mut table = Table::new(&[("ID", Align::Left), ("PAGES", Align::Right), ("CHAIN", Align::Left)]);
        for generation in &info.generations {
            let id =
                if generation.current { format!("{} (current)", generation.id) } else { generation.id.to_string() };
            table.row(vec![id, generation.pages.to_string(), chain_with_config(&generation.backends)]);
        }
        out.push_str(&indent(&table.render(), "  "));
    }

    out.push_str("counters:\n");
    let mut counters = Fields::default();
    for (name, value) in &info.counters {
        if name == "pool_total_size" {
            counters.add(name, format!("{value} ({})", human_bytes(*value)));
        } else {
            counters.add(name, value);
        }
    }
    out.push_str(&counters.render("  "));

    out.push_str("latency:\n");
    let mut table = Table::new(&[
        ("OP", Align::Left),
        ("COUNT", Align::Right),
        ("MEAN", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
    ]);
    // The contract's order first, then anything else the server reports.
    let known = ["store", "load", "invalidate_page", "invalidate_area"];
    let others: BTreeSet<&String> = info.latency.keys().filter(|k| !known.contains(&k.as_str())).collect();
    let ops = known.iter().map(|k| k.to_string()).chain(others.into_iter().cloned());
    for op in ops {
        match info.latency.get(&op) {
            Some(l) if l.count > 0 => table.row(vec![
                op,
                l.count.to_string(),
                human_micros(l.mean_us),
                human_micros(l.p50_us),
                human_micros(l.p99_us),
            ]),
            Some(_) => table.row(vec![op, "0".into(), "-".into(), "-".into(), "-".into()]),
            None => {}
        }
    }
    out.push_str(&indent(&table.render(), "  "));
    out
}

fn backend_table(backends: &[BackendInfo]) -> String {
    let mut table = Table::new(&[
        ("PLUGIN", Align::Left),
        ("VERSION", Align::Left),
        ("SHA256", Align::Left),
        ("KIND", Align::Left),
        ("CONFIG", Align::Left),
    ]);
    for b in backends {
        table.row(vec![
            b.plugin.clone(),
            b.version.clone(),
            short_sha(&b.sha256).to_string(),
            b.kind.clone(),
            config_text(&b.config),
        ]);
    }
    table.render()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("tmem").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
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
        let patch = args.into_patch();
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

    #[test]
    fn a_server_url_gets_a_scheme_if_it_has_none() {
        assert_eq!(server_url("127.0.0.1:7411").unwrap(), "http://127.0.0.1:7411");
        assert_eq!(server_url(" https://tmem.example/ ").unwrap(), "https://tmem.example/");
        assert!(server_url("").unwrap_err().to_string().contains("--server"));
    }

    #[test]
    fn a_missing_token_file_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("tmem-cli-no-token-{}", std::process::id()));
        let message = read_token(&dir).unwrap_err().to_string();
        assert!(message.starts_with("no API token: set TMEM_TOKEN, pass --token"), "{message}");
        assert!(message.contains("token not found"), "{message}");
    }

    #[test]
    fn tables_align_columns_by_characters() {
        let mut table = Table::new(&[("NAME", Align::Left), ("CHAIN", Align::Left), ("PAGES", Align::Right)]);
        table.row(vec!["demo".into(), "zstd 0.1.0 → ram 0.1.0".into(), "7".into()]);
        table.row(vec!["a-longer-name".into(), "ram 0.1.0".into(), "1234".into()]);
        assert_eq!(
            table.render(),
            "NAME           CHAIN                   PAGES\n\
             demo           zstd 0.1.0 → ram 0.1.0      7\n\
             a-longer-name  ram 0.1.0                1234\n"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 30), "3 GiB");
        assert_eq!(human_micros(12.34), "12.3 µs");
        assert_eq!(human_micros(2500.0), "2.50 ms");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3725), "1h 2m");
        assert_eq!(human_duration(90061), "1d 1h");
    }

    #[test]
    fn store_outcomes_read_well() {
        let r = |outcome: &str, reason: Option<&str>| StoreResult {
            outcome: outcome.into(),
            reason: reason.map(Into::into),
        };
        assert_eq!(store_outcome(&r("stored", None)), "stored");
        assert_eq!(store_outcome(&r("stored_writethrough", None)), "stored (writethrough)");
        assert_eq!(store_outcome(&r("rejected", Some("pool_limit_hit"))), "rejected: pool_limit_hit");
    }
}
