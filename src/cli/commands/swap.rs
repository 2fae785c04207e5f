//! `tmem swap on|off|status`: a pool as this machine's swap, in one command — what
//! zram-generator and zramctl do for zram. The pool and its block device are made through the
//! REST API like `tmem pool create` and `tmem pool attach` (a ublk device is built by
//! [`DeclaredDevice::ublk`], as a config file's `[[swap]]` is, and an existing pool or device
//! is compared with what is asked by the same functions the host's declared config uses);
//! the kernel's side — `mkswap`, swapon(2), swapoff(2), `nbd-client` — is done here, so the CLI
//! must run on the host's machine, as root.
//!
//! `on` first decides what is missing ([`plan`], a pure function of what exists), checks
//! everything it can before making anything (root, the host, the device's size, room for the
//! backing file, a block driver), then does only the missing steps: running it twice changes
//! nothing the second time and says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tmem_api::client::ClientError;
use tmem_api::rest::{
    AttachRequest, BackendRequest, Durability, FrontendInfo, FrontendKind, PluginInfo, PoolConfig, PoolInfo, TierConfig,
};
use tmem_host::declared::{self, DeclaredDevice};

use super::Session;
use crate::cli::args::{Chain, SwapCommand, SwapOffArgs, SwapOnArgs, SwapSize, SwapTransport};
use crate::cli::system::{self, SwapArea, SystemError};
use crate::cli::{CliError, Done, render};

/// Swap pages are the kernel's: 4 KiB.
const PAGE_SIZE: u64 = 4096;

/// `--size` when the device is made and none is given: half the RAM, as zram-generator.
const DEFAULT_SIZE: SwapSize = SwapSize::PercentOfRam(50);

/// `--chain` when the pool is made and none is given: zram's default codec, in memory.
const DEFAULT_CHAIN: &str = "lz4,ram";

/// What the host keeps per stored page in its index (`PageEntry`), charged to its memory.
const INDEX_BYTES_PER_PAGE: u64 = 16;

/// Runs a `tmem swap` subcommand; `data_dir` is the host's data dir (where its token is).
pub(super) fn run(session: &Session, data_dir: &Path, command: SwapCommand) -> Result<Done, CliError> {
    match command {
        SwapCommand::On(args) => on(session, data_dir, args),
        SwapCommand::Off(args) => off(session, data_dir, args),
        SwapCommand::Status => status(session, data_dir),
    }
}

/// A step `tmem swap on` takes, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the lower tier's pool.
    CreateLower,
    /// Create the pool.
    CreatePool,
    /// Attach the block device.
    Attach,
    /// Connect the NBD export to a kernel device (`nbd-client`).
    Connect,
    /// `mkswap` the device.
    Mkswap,
    /// `swapon` it.
    Swapon,
}

/// What exists when `tmem swap on` starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Existing {
    /// The lower tier's pool exists (or none is asked for).
    pub lower: bool,
    /// The pool exists.
    pub pool: bool,
    /// The pool has a block device.
    pub device: bool,
    /// The device is an NBD export connected to a kernel device.
    pub connected: bool,
    /// That kernel device is an active swap area.
    pub active: bool,
}

/// The steps that make a swap device out of what exists; empty when it is on already.
pub fn plan(existing: Existing, transport: FrontendKind) -> Vec<Step> {
    if existing.active {
        return Vec::new();
    }
    let mut steps = Vec::new();
    if !existing.pool && !existing.lower {
        steps.push(Step::CreateLower);
    }
    if !existing.pool {
        steps.push(Step::CreatePool);
    }
    if !existing.device {
        steps.push(Step::Attach);
    }
    if transport == FrontendKind::Nbd && !(existing.device && existing.connected) {
        steps.push(Step::Connect);
    }
    // A device that is not an active swap area is (re)made one: after a reboot an in-memory
    // pool's device comes back empty, and a swap area that was turned off holds nothing.
    steps.extend([Step::Mkswap, Step::Swapon]);
    steps
}

/// The device's size in bytes: a multiple of the page size.
pub fn device_size(size: SwapSize, mem_total: u64) -> Result<u64, CliError> {
    let bytes = match size {
        SwapSize::Bytes(n) if n % PAGE_SIZE != 0 => {
            return Err(CliError::Message(format!(
                "--size {n} is not a multiple of the page size ({PAGE_SIZE} bytes): use e.g. {}",
                n / PAGE_SIZE * PAGE_SIZE + PAGE_SIZE
            )));
        }
        SwapSize::Bytes(n) => n,
        SwapSize::PercentOfRam(p) => {
            let share = u128::from(mem_total) * u128::from(p) / 100;
            u64::try_from(share).unwrap_or(u64::MAX) / PAGE_SIZE * PAGE_SIZE
        }
    };
    if bytes < 10 * PAGE_SIZE {
        // mkswap refuses fewer than 10 pages.
        return Err(CliError::Message(format!(
            "--size gives a device of {bytes} bytes: a swap area needs at least 40 KiB"
        )));
    }
    Ok(bytes)
}

/// The pool's block device (a pool has at most one).
fn block_device(info: &PoolInfo) -> Option<&FrontendInfo> {
    info.frontends.iter().find(|f| matches!(f.kind, FrontendKind::Nbd | FrontendKind::Ublk))
}

/// Where `tmem swap on` records which `/dev/nbdN` it connected a pool's export to.
fn nbd_state_file(data_dir: &Path, pool: &str) -> PathBuf {
    data_dir.join(format!("{pool}.nbd-device"))
}

/// The kernel's block device of an attached device: `/dev/ublkbN`, or the `/dev/nbdN` that
/// `tmem swap on` connected (if it still is).
fn kernel_device(device: &FrontendInfo, data_dir: &Path) -> Option<String> {
    match device.kind {
        FrontendKind::Ublk => Some(device.address.clone()),
        FrontendKind::Nbd => {
            let path = std::fs::read_to_string(nbd_state_file(data_dir, &device.pool)).ok()?;
            let path = path.trim().to_string();
            let name = Path::new(&path).file_name()?.to_str()?.to_string();
            Path::new("/sys/block").join(name).join("pid").exists().then_some(path)
        }
        FrontendKind::Socket => None,
    }
}

/// The attach request an attached device was made with (for comparing with a new one).
fn attached_request(device: &FrontendInfo) -> Option<AttachRequest> {
    let d = device.device.as_ref()?;
    Some(AttachRequest {
        kind: device.kind,
        size_bytes: d.size_bytes,
        backing: d.backing.clone(),
        socket: d.socket.clone(),
        listen: d.listen.clone(),
        allow_remote: false,
        insecure_no_tls: false,
        ublk_id: d.ublk_id,
    })
}

/// A pool's settings as `POST /api/v1/pools` would take them (for comparing with a new one).
fn config_of(info: &PoolInfo) -> PoolConfig {
    let backends = info.backends.iter().map(|b| BackendRequest::new(&b.plugin)).collect();
    PoolConfig {
        page_size: info.page_size,
        max_pages: info.max_pages,
        max_bytes: info.max_bytes,
        accept_threshold_percent: info.accept_threshold_percent,
        writethrough: info.writethrough,
        exclusive_gets: info.exclusive_gets,
        enabled: info.enabled,
        integrity: info.integrity,
        shards: Some(info.shards),
        tier: info.tier.as_ref().map(|t| t.config.clone()),
        ..PoolConfig::new(&info.name, backends)
    }
}

/// `chain` with `storage` granted to each link whose plugin asks for it (the persistent
/// `sled`): the pool's own database under the data dir, nothing wider. Other capabilities
/// (`network`) need a config of their own and are granted only by name (`remote+network`).
/// The config of a pool `tmem swap on` makes: `chain`'s backends (storage granted where asked)
/// and, when the pool is persistent, `written` durability — a swapped page must survive the
/// host's crash (the kernel keeps the device, the next host serves it), never a power loss
/// (swap does not outlive a reboot), so a swap-out never waits on the file system's journal.
fn swap_pool_config(name: &str, chain: &Chain, plugins: &[PluginInfo]) -> PoolConfig {
    let backends = with_storage(chain, plugins);
    let persistent = backends.iter().any(|b| b.grants.iter().any(|g| g == "storage"));
    PoolConfig { durability: persistent.then_some(Durability::Written), ..PoolConfig::new(name, backends) }
}

fn with_storage(chain: &Chain, plugins: &[PluginInfo]) -> Vec<BackendRequest> {
    chain
        .0
        .iter()
        .cloned()
        .map(|mut link| {
            let asks = plugins
                .iter()
                .filter(|p| p.name == link.plugin)
                .flat_map(|p| p.versions.last())
                .any(|v| v.capabilities.iter().any(|c| c == "storage"));
            if asks && link.grants.is_empty() {
                link.grants.push("storage".into());
            }
            link
        })
        .collect()
}

fn lower_name(pool: &str) -> String {
    format!("{pool}-lower")
}

fn area<'a>(swaps: &'a [SwapArea], path: &str) -> Option<&'a SwapArea> {
    swaps.iter().find(|s| s.path == path)
}

fn on(session: &Session, data_dir: &Path, args: SwapOnArgs) -> Result<Done, CliError> {
    let client = &session.client;
    let fail = |e: ClientError| session.fail(e);
    let name = args.name.clone();
    // Checks, in the order a user fixes them; nothing is made before the last one.
    let size = device_size(args.size.unwrap_or(DEFAULT_SIZE), system::mem_total()?)?;
    system::require_root("on")?;
    let pools = client.pools().map_err(fail)?;
    let data_dir =
        std::path::absolute(data_dir).map_err(|source| SystemError::Io { path: data_dir.to_path_buf(), source })?;
    let current = pools.iter().find(|p| p.name == name);
    if let Some(owner) = current.and_then(|p| p.tier_of.as_ref()) {
        return Err(CliError::Message(format!("pool {name} is the lower tier of pool {owner}: name that one")));
    }
    let device = current.and_then(block_device);
    let kernel_path = device.and_then(|d| kernel_device(d, &data_dir));
    let swaps = system::swaps()?;
    let active = kernel_path.as_deref().and_then(|p| area(&swaps, p));
    let lower = lower_name(&name);
    let existing = Existing {
        lower: args.tier.is_none() || pools.iter().any(|p| p.name == lower),
        pool: current.is_some(),
        device: device.is_some(),
        connected: kernel_path.is_some(),
        active: active.is_some(),
    };
    if let Some(area) = active {
        session.say(&format!(
            "pool {name} is already swap on {} (priority {}, {} of {} in use): nothing changed",
            area.path,
            area.priority,
            render::human_bytes(area.used_kib * 1024),
            render::human_bytes(area.size_kib * 1024)
        ))?;
        return Ok(Done::Ok);
    }

    let backing = match &args.backing {
        Some(path) => std::path::absolute(path).map_err(|source| SystemError::Io { path: path.clone(), source })?,
        None => data_dir.join(format!("{name}.swap")),
    };
    let backing_text = backing.display().to_string();
    let plugins = client.plugins().map_err(fail)?;
    let chain = match &args.chain {
        Some(chain) => chain.clone(),
        None => crate::cli::args::parse_chain(DEFAULT_CHAIN).map_err(CliError::Message)?,
    };
    let mut config = swap_pool_config(&name, &chain, &plugins);
    if args.tier.is_some() {
        config.tier = Some(TierConfig::new(&lower, args.tier_idle));
    }
    if let Some(info) = current {
        // Only what was asked for is compared: `tmem swap on` alone takes the pool as it is.
        let asked = |setting: &&str| match *setting {
            "backends" => args.chain.is_some(),
            "tier" => args.tier.is_some(),
            _ => false,
        };
        let differs: Vec<_> = declared::differences(&config_of(info), &config).into_iter().filter(asked).collect();
        if !differs.is_empty() {
            eprintln!(
                "tmem: pool {name} exists with other settings ({}): used as it is (`tmem swap off {name}` first to make it anew)",
                differs.join(", ")
            );
        }
    }
    let transport = match device {
        Some(d) => {
            if let Some(request) = attached_request(d) {
                let wanted = DeclaredDevice::ublk(&name, size, &backing_text, args.ublk_id);
                let asked = |setting: &&str| match *setting {
                    "size" => args.size.is_some(),
                    "backing" => args.backing.is_some(),
                    "kind" => false, // --transport picks one where the kernel has both
                    _ => true,
                };
                let differs: Vec<_> = wanted.differences(&request).into_iter().filter(asked).collect();
                if !differs.is_empty() {
                    eprintln!(
                        "tmem: pool {name}'s block device {} exists with another {}: used as it is",
                        d.id,
                        differs.join(", ")
                    );
                }
            }
            d.kind
        }
        None => {
            system::check_room(&backing, size)?;
            choose_transport(args.transport)?
        }
    };
    let nbd_client = match transport {
        FrontendKind::Nbd => {
            Some(system::nbd_available().map_err(|why| SystemError::Unavailable { transport: "NBD", why })?)
        }
        _ => None,
    };

    let steps = plan(existing, transport);
    let mut done = Vec::new();
    let mut attached = device.cloned();
    let mut path = kernel_path;
    for step in steps {
        match step {
            Step::CreateLower => {
                let tier = args.tier.as_ref().expect("a lower tier is made only when asked for");
                client.create_pool(&swap_pool_config(&lower, tier, &plugins)).map_err(fail)?;
                done.push(format!("created pool {lower} (the lower tier)"));
            }
            Step::CreatePool => {
                client.create_pool(&config).map_err(fail)?;
                done.push(format!("created pool {name}"));
            }
            Step::Attach => {
                let request = match transport {
                    FrontendKind::Nbd => AttachRequest {
                        kind: FrontendKind::Nbd,
                        size_bytes: size,
                        backing: backing_text.clone(),
                        socket: Some(data_dir.join(format!("{name}.nbd")).display().to_string()),
                        listen: None,
                        allow_remote: false,
                        insecure_no_tls: false,
                        ublk_id: None,
                    },
                    _ => DeclaredDevice::ublk(&name, size, &backing_text, args.ublk_id).request,
                };
                let info = client.attach_frontend(&name, &request).map_err(fail)?;
                if info.kind == FrontendKind::Ublk {
                    path = Some(info.address.clone());
                }
                done.push(format!("attached {} ({}, backing file {backing_text})", info.id, render::human_bytes(size)));
                attached = Some(info);
            }
            Step::Connect => {
                let info = attached.as_ref().expect("the device is attached before it is connected");
                let socket = info.device.as_ref().and_then(|d| d.socket.clone()).ok_or_else(|| {
                    CliError::Message(format!("pool {name}'s NBD device {} has no Unix socket to connect", info.id))
                })?;
                let kernel = system::free_nbd_device()
                    .ok_or_else(|| CliError::Message("every /dev/nbdN is in use (modprobe nbd nbds_max=N)".into()))?;
                let kernel_text = kernel.display().to_string();
                let client_path = nbd_client.as_ref().expect("checked above").display().to_string();
                system::run(&client_path, &["-unix", &socket, &kernel_text, "-block-size", "4096", "-swap"])?;
                std::fs::write(nbd_state_file(&data_dir, &name), format!("{kernel_text}\n"))
                    .map_err(|source| SystemError::Io { path: nbd_state_file(&data_dir, &name), source })?;
                done.push(format!("connected {kernel_text} to it with nbd-client"));
                path = Some(kernel_text);
            }
            Step::Mkswap => {
                let path = path.as_deref().expect("the kernel device is known after attach and connect");
                system::wait_for_device(Path::new(path), Duration::from_secs(10))?;
                system::run("mkswap", &[path])?;
                done.push(format!("mkswap {path}"));
            }
            Step::Swapon => {
                let path = path.as_deref().expect("the kernel device is known after attach and connect");
                system::swapon(path, u16::try_from(args.priority).ok())?;
                let priority = match args.priority {
                    -1 => "the kernel's next default priority".to_string(),
                    n => format!("priority {n}"),
                };
                done.push(format!("swapon {path} ({priority}, discard)"));
            }
        }
    }
    let path = path.unwrap_or_default();
    session.say(&format!("pool {name} is swap on {path}:\n  {}", done.join("\n  ")))?;
    if transport == FrontendKind::Nbd {
        eprintln!(
            "tmem: note: over NBD the host must lock its memory (`tmem serve --mlock`, `mlock = true` in tmem.toml), or swapping can stall"
        );
    }
    Ok(Done::Ok)
}

/// The transport `--transport` asks for, where the kernel has its driver.
fn choose_transport(asked: SwapTransport) -> Result<FrontendKind, SystemError> {
    match asked {
        SwapTransport::Ublk => {
            system::ublk_available().map_err(|why| SystemError::Unavailable { transport: "ublk", why })?;
            Ok(FrontendKind::Ublk)
        }
        SwapTransport::Nbd => Ok(FrontendKind::Nbd),
        SwapTransport::Auto => match system::ublk_available() {
            Ok(()) => Ok(FrontendKind::Ublk),
            Err(ublk) => match system::nbd_available() {
                Ok(_) => {
                    eprintln!("tmem: ublk is not available ({ublk}): using NBD through nbd-client instead");
                    Ok(FrontendKind::Nbd)
                }
                Err(nbd) => Err(SystemError::NoDriver { ublk, nbd }),
            },
        },
    }
}

fn off(session: &Session, data_dir: &Path, args: SwapOffArgs) -> Result<Done, CliError> {
    let client = &session.client;
    let fail = |e: ClientError| session.fail(e);
    let name = args.name;
    system::require_root("off")?;
    let data_dir =
        std::path::absolute(data_dir).map_err(|source| SystemError::Io { path: data_dir.to_path_buf(), source })?;
    let info = match client.pool(&name) {
        Ok(info) => info,
        Err(e) if e.code() == Some("pool_not_found") => {
            session.say(&format!("there is no pool {name}, so no swap on it: nothing changed"))?;
            return Ok(Done::Ok);
        }
        Err(e) => return Err(fail(e)),
    };
    if let Some(owner) = &info.tier_of {
        return Err(CliError::Message(format!("pool {name} is the lower tier of pool {owner}: name that one")));
    }
    let mut done = Vec::new();
    let mut backing = None;
    if let Some(device) = block_device(&info) {
        backing = device.device.as_ref().map(|d| PathBuf::from(&d.backing));
        if let Some(path) = kernel_device(device, &data_dir) {
            if area(&system::swaps()?, &path).is_some() {
                system::swapoff(&path)?;
                done.push(format!("swapoff {path} (its pages are back in memory)"));
            }
            if device.kind == FrontendKind::Nbd {
                system::run("nbd-client", &["-d", &path])?;
                done.push(format!("disconnected {path}"));
            }
        }
        // The record of the NBD device `on` connected, whether or not it still is.
        let _ = std::fs::remove_file(nbd_state_file(&data_dir, &name));
        client.detach_frontend(&name, &device.id).map_err(fail)?;
        done.push(format!("detached {}", device.id));
    }
    if args.keep_pool {
        done.push(format!("kept pool {name}"));
    } else {
        client.remove_pool(&name).map_err(fail)?;
        done.push(format!("removed pool {name}"));
        let lower = lower_name(&name);
        if info.tier.as_ref().is_some_and(|t| t.config.lower == lower) {
            client.remove_pool(&lower).map_err(fail)?;
            done.push(format!("removed pool {lower} (its lower tier)"));
        }
        // The backing file `swap on` made by default goes with the pool; one the user named stays.
        if let Some(path) = backing.filter(|b| *b == data_dir.join(format!("{name}.swap")))
            && path.is_file()
        {
            std::fs::remove_file(&path).map_err(|source| SystemError::Io { path: path.clone(), source })?;
            done.push(format!("removed its backing file {}", path.display()));
        }
    }
    session.say(&format!("pool {name} is no swap any more:\n  {}", done.join("\n  ")))?;
    Ok(Done::Ok)
}

/// One swap device as `tmem swap status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SwapDevice {
    /// The kernel's block device (`/dev/ublkb0`, `/dev/nbd0`), or the export's address when no
    /// kernel device is connected to it.
    pub device: String,
    /// The pool.
    pub pool: String,
    /// `ublk` or `nbd`.
    pub kind: FrontendKind,
    /// The chain, `lz4 → ram` (and the lower tier's after `+`).
    pub chain: String,
    /// The device's capacity in bytes.
    pub size_bytes: u64,
    /// Pages the pool (with its lower tier) holds.
    pub stored_pages: u64,
    /// What they would take uncompressed, in bytes.
    pub data_bytes: u64,
    /// What their records take, in bytes (`pool_total_size`).
    pub compressed_bytes: u64,
    /// `data_bytes / compressed_bytes` (absent while nothing is stored).
    pub ratio: Option<f64>,
    /// What the pool holds in the host's memory: an in-memory store's records and the page
    /// index (16 bytes a page); a persistent store's records are on disk.
    pub memory_bytes: u64,
    /// Pages in the backing file (the pool refused them).
    pub backing_pages: u64,
    /// The backing file.
    pub backing: String,
    /// The active swap area on the device (`/proc/swaps`), if it is one.
    pub swap: Option<SwapUse>,
}

/// A swap device's line of `/proc/swaps`.
#[derive(Debug, Clone, Serialize)]
pub struct SwapUse {
    /// The swap area's size in bytes.
    pub size_bytes: u64,
    /// In use, in bytes.
    pub used_bytes: u64,
    /// Its priority.
    pub priority: i32,
}

/// The figures of one pool: stored pages, record bytes, bytes in memory.
fn figures(info: &PoolInfo) -> (u64, u64, u64) {
    let counter = |name: &str| info.counters.get(name).copied().unwrap_or(0);
    let (pages, records) = (counter("stored_pages"), counter("pool_total_size"));
    let memory = pages * INDEX_BYTES_PER_PAGE + if info.persistent { 0 } else { records };
    (pages, records, memory)
}

fn status(session: &Session, data_dir: &Path) -> Result<Done, CliError> {
    let pools = session.client.pools().map_err(|e| session.fail(e))?;
    let swaps = system::swaps()?;
    let data_dir =
        std::path::absolute(data_dir).map_err(|source| SystemError::Io { path: data_dir.to_path_buf(), source })?;
    let mut devices = Vec::new();
    for info in &pools {
        let Some(device) = block_device(info) else { continue };
        let lower = info.tier.as_ref().and_then(|t| pools.iter().find(|p| p.name == t.config.lower));
        let (mut pages, mut records, mut memory) = figures(info);
        let mut chain = render::chain(&info.backends);
        if let Some(lower) = lower {
            let (p, r, m) = figures(lower);
            (pages, records, memory) = (pages + p, records + r, memory + m);
            chain = format!("{chain} + {}", render::chain(&lower.backends));
        }
        let data = pages * u64::from(info.page_size);
        let kernel = kernel_device(device, &data_dir);
        let swap = kernel.as_deref().and_then(|p| area(&swaps, p)).map(|a| SwapUse {
            size_bytes: a.size_kib * 1024,
            used_bytes: a.used_kib * 1024,
            priority: a.priority,
        });
        devices.push(SwapDevice {
            device: kernel.unwrap_or_else(|| device.address.clone()),
            pool: info.name.clone(),
            kind: device.kind,
            chain,
            size_bytes: device.device.as_ref().map_or(0, |d| d.size_bytes),
            stored_pages: pages,
            data_bytes: data,
            compressed_bytes: records,
            ratio: (records > 0).then(|| data as f64 / records as f64),
            memory_bytes: memory,
            backing_pages: device.counters.get("backing_pages").copied().unwrap_or(0),
            backing: device.device.as_ref().map_or_else(String::new, |d| d.backing.clone()),
            swap,
        });
    }
    session.show(&devices, |devices| render::swap_table(devices))?;
    Ok(Done::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_does_only_what_is_missing() {
        use Step::*;
        let nothing = Existing::default();
        assert_eq!(plan(nothing, FrontendKind::Ublk), [CreateLower, CreatePool, Attach, Mkswap, Swapon]);
        let no_tier = Existing { lower: true, ..nothing };
        assert_eq!(plan(no_tier, FrontendKind::Ublk), [CreatePool, Attach, Mkswap, Swapon]);
        assert_eq!(plan(no_tier, FrontendKind::Nbd), [CreatePool, Attach, Connect, Mkswap, Swapon]);
        // A pool made by hand (or declared in tmem.toml) without a device.
        let pool = Existing { lower: true, pool: true, ..nothing };
        assert_eq!(plan(pool, FrontendKind::Ublk), [Attach, Mkswap, Swapon]);
        // A device the host restored or took over at start, not yet a swap area (after a reboot).
        let device = Existing { device: true, ..pool };
        assert_eq!(plan(device, FrontendKind::Ublk), [Mkswap, Swapon]);
        assert_eq!(plan(device, FrontendKind::Nbd), [Connect, Mkswap, Swapon]);
        assert_eq!(plan(Existing { connected: true, ..device }, FrontendKind::Nbd), [Mkswap, Swapon]);
        // On already: nothing, whatever else is said.
        let on = Existing { active: true, connected: true, ..device };
        assert!(plan(on, FrontendKind::Ublk).is_empty());
        assert!(plan(on, FrontendKind::Nbd).is_empty());
    }

    #[test]
    fn the_device_size_is_whole_pages_of_at_least_ten() {
        let gib = 1 << 30;
        assert_eq!(device_size(SwapSize::Bytes(4 * gib), 8 * gib).unwrap(), 4 * gib);
        assert_eq!(device_size(SwapSize::PercentOfRam(50), 8 * gib).unwrap(), 4 * gib);
        // A share of an odd MemTotal is rounded down to whole pages.
        assert_eq!(device_size(SwapSize::PercentOfRam(50), 1_000_001_000).unwrap() % PAGE_SIZE, 0);
        let message = device_size(SwapSize::Bytes(5000), gib).unwrap_err().to_string();
        assert!(message.contains("not a multiple of the page size") && message.contains("8192"), "{message}");
        let message = device_size(SwapSize::Bytes(4096), gib).unwrap_err().to_string();
        assert!(message.contains("at least 40 KiB"), "{message}");
        assert!(device_size(SwapSize::PercentOfRam(1), 1 << 20).is_err());
    }
}
