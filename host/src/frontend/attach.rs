//! Block devices attached to pools through the API (`POST /api/v1/pools/{name}/frontends`):
//! checking a request, creating the device and its NBD server, keeping the attachment in the
//! catalog, detaching, and bringing attachments back when the host restarts.
//!
//! # Rules
//!
//! - A pool has at most one block device: a pool is one swap area (contract.md §1), and the
//!   device's page `p` is the pool's offset `p`.
//! - A backing file and a socket path serve one device at a time (the backing file is also
//!   `flock`ed, so another process cannot share it either).
//! - A Unix socket is mode 0600. A TCP export **requires TLS** (NBD's `STARTTLS`, with the
//!   host's `tmem serve --tls-cert/--tls-key` or `--tls-psk`: [`crate::tls`]); a plain one is
//!   served only when the request says `insecure_no_tls`, with a warning in the log each time
//!   it starts. A TCP address must also be loopback unless the request says `allow_remote`.
//! - **Paths are confined** ([`AllowedPaths`]): a backing file and a socket path must lie under
//!   a path the operator allows (`tmem serve --allow-path`; the data dir always), checked after
//!   symlinks are resolved, at attach and again at restore. The API token alone cannot make the
//!   host (often root) create, truncate or zero a file elsewhere.
//! - **Detach** is swapoff: the server stops (open connections are closed), the device's pages
//!   are invalidated in the pool, and the backing file is left as it is. **Destroying a pool**
//!   detaches its device first.
//! - **Host restart**: every attachment is in the catalog and is served again at the same
//!   address. Over a persistent pool the device resumes with its contents (the pool's pages,
//!   and the backing file's); over a pool that keeps pages in memory only, the pool restarts
//!   empty, so the device restarts empty too (like a swap device after a reboot) and says so
//!   in the log — half a device would be worse than none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tmem_api::rest::AttachRequest;

use super::device::{BlockDevice, OpenError, Start};
use super::nbd::{Export, Listen, NbdServer};
use super::ublk::{self, UblkServer};
use super::{DeviceDetails, Frontend, FrontendDetails, FrontendKind};
use crate::catalog::{CatalogError, FrontendRecord};
use crate::host::{Host, HostError};
use crate::listen::ListenerLimits;
use crate::pool::Pool;
use crate::tls::TlsServer;
use crate::unix_access::UnixAccess;

/// The longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why an attach or detach was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// No such pool (or another host error).
    #[error(transparent)]
    Host(#[from] HostError),
    /// The request cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
    /// A kind of frontend this host cannot serve yet.
    #[error("{0}")]
    Unsupported(String),
    /// Something the request needs is taken: `code` says what.
    #[error("{message}")]
    Conflict {
        /// `frontend_exists`, `backing_in_use`, `address_in_use` or `ublk_device_exists`.
        code: &'static str,
        /// What and by whom.
        message: String,
    },
    /// A backing file or socket path outside every path the host allows.
    #[error(
        "{what} {path} is outside the paths this host allows ({allowed}); start `tmem serve` with --allow-path to allow another"
    )]
    PathNotAllowed {
        /// `backing` or `socket`.
        what: &'static str,
        /// The path as asked for.
        path: String,
        /// The allowed paths, for the message.
        allowed: String,
    },
    /// No attachment of that id on that pool.
    #[error("pool '{pool}' has no block device '{id}'")]
    NotFound {
        /// The pool.
        pool: String,
        /// The id asked for.
        id: String,
    },
    /// The catalog could not be written: nothing changed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// One attached block device: the device, its server, and what was asked for.
struct Attached {
    id: String,
    pool: Arc<Pool>,
    /// The request as kept: paths as given, a TCP port 0 replaced by the one bound.
    request: AttachRequest,
    /// The backing file, its directory resolved (to tell two spellings of one file apart).
    backing: PathBuf,
    device: Arc<BlockDevice>,
    server: Mutex<Transport>,
    uri: String,
}

/// What serves a device.
enum Transport {
    Nbd(NbdServer),
    /// `None` once stopped.
    Ublk(Option<UblkServer>),
}

impl Transport {
    fn connections(&self) -> (u64, u64) {
        match self {
            Transport::Nbd(server) => (server.connections(), server.connections_total()),
            Transport::Ublk(server) => (u64::from(server.is_some()), 1),
        }
    }
}

impl Frontend for Attached {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn kind(&self) -> FrontendKind {
        self.request.kind
    }

    fn name(&self) -> String {
        self.id.clone()
    }

    fn address(&self) -> String {
        self.uri.clone()
    }

    fn take_back(&self, _pool: &Pool, offsets: &[u64]) -> u64 {
        self.device.take_back(offsets)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = self.device.counters();
        let (open, total) = self.server.lock().connections();
        counters.push(("connections", open));
        counters.push(("connections_total", total));
        counters
    }

    fn device(&self) -> Option<DeviceDetails> {
        Some(DeviceDetails {
            export_name: self.pool.name().to_string(),
            size_bytes: self.device.size(),
            block_size: self.device.block_size(),
            backing: self.request.backing.clone(),
            socket: self.request.socket.clone(),
            listen: self.request.listen.clone(),
            ublk_id: self.request.ublk_id,
            connections: self.server.lock().connections().0,
        })
    }
}

impl Attached {
    /// Stops serving and lets go of the pool (not the pages: see [`Attached::release`]). A
    /// ublk device is deleted when `for_good` (detach); otherwise (the host is stopping) it
    /// stays for the next host process to take over (user recovery).
    fn stop(self: &Arc<Self>, for_good: bool) {
        match &mut *self.server.lock() {
            Transport::Nbd(server) => server.stop(),
            Transport::Ublk(server) => {
                if let Some(server) = server.take() {
                    if for_good {
                        server.delete();
                    } else {
                        tracing::info!(device = %server.path(), "ublk device left for the next host process to take over");
                        std::mem::forget(server);
                    }
                }
            }
        }
        let as_frontend: Arc<dyn Frontend> = self.clone();
        self.pool.detach_frontend(&as_frontend);
    }
}

/// The block devices of a host, by attachment id. They sit above the [`Host`] (which knows
/// nothing of them): whoever owns the host owns its block devices, restores them at start and
/// detaches a pool's device before destroying the pool ([`BlockDevices::destroy_pool`]).
pub struct BlockDevices {
    host: Arc<Host>,
    /// The bounds of each NBD export's listener.
    nbd_limits: ListenerLimits,
    /// Where backing files and sockets may be.
    allowed: AllowedPaths,
    /// The TLS every TCP export requires (`None`: the host has none, and only exports attached
    /// with `insecure_no_tls` may listen on TCP).
    tls: Option<Arc<TlsServer>>,
    /// Who may connect to exports on a Unix socket.
    unix_access: UnixAccess,
    attached: Mutex<BTreeMap<String, Arc<Attached>>>,
    /// Serializes attach and detach, so checks and the catalog see one change at a time.
    changes: Mutex<()>,
}

impl std::fmt::Debug for BlockDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevices").field("attached", &self.attached.lock().keys().collect::<Vec<_>>()).finish()
    }
}

/// Where the API may name backing files and sockets: a path is allowed when, symlinks
/// resolved, it is one of the roots or lies under one. A root may be a directory or a single
/// file or device (a raw disk given whole as a backing store, `--allow-path /dev/vdb`).
#[derive(Debug, Clone, Default)]
pub struct AllowedPaths {
    /// Canonical paths.
    roots: Vec<PathBuf>,
}

impl AllowedPaths {
    /// The given roots, each resolved now (a root that does not exist is an error: it could
    /// not be checked against later).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> std::io::Result<AllowedPaths> {
        let mut resolved = Vec::new();
        for root in roots {
            let canonical = root
                .canonicalize()
                .map_err(|e| std::io::Error::new(e.kind(), format!("allowed path {}: {e}", root.display())))?;
            if !resolved.contains(&canonical) {
                resolved.push(canonical);
            }
        }
        Ok(AllowedPaths { roots: resolved })
    }

    /// The roots, resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `path` resolved (see [`resolve`]), if it is allowed.
    fn check(&self, path: &str, what: &'static str) -> Result<PathBuf, AttachError> {
        let resolved = resolve(Path::new(path), what)?;
        // The file itself may be a symlink, even one to a file not created yet: what is opened
        // (or created) is where the chain of links ends.
        let mut target = resolved.clone();
        for _ in 0..40 {
            let Ok(link) = std::fs::read_link(&target) else { break };
            let next = target.parent().map_or(link.clone(), |dir| dir.join(&link));
            target = resolve(&next, what)?;
        }
        if std::fs::read_link(&target).is_ok() {
            return Err(AttachError::Invalid(format!("{what} {path}: too many levels of symbolic links")));
        }
        if self.roots.iter().any(|root| target.starts_with(root)) {
            Ok(resolved)
        } else {
            let allowed = self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
            Err(AttachError::PathNotAllowed { what, path: path.to_string(), allowed })
        }
    }
}

/// The resolved form of a path that may not exist yet: its directory canonicalized.
fn resolve(path: &Path, what: &str) -> Result<PathBuf, AttachError> {
    if !path.is_absolute() {
        return Err(AttachError::Invalid(format!("{what} {} must be an absolute path", path.display())));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(AttachError::Invalid(format!("{what} {} must name a file", path.display())));
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| AttachError::Invalid(format!("{what} {}: its directory cannot be used: {e}", path.display())))?;
    Ok(dir.join(name))
}

/// Where a device is served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Nbd(Listen),
    /// `/dev/ublkbN`: the number asked for (`None`: the next free one).
    Ublk(Option<u32>),
}

fn place_of(request: &AttachRequest, allowed: &AllowedPaths) -> Result<Place, AttachError> {
    match request.kind {
        FrontendKind::Socket => Err(AttachError::Invalid(
            "socket frontends connect themselves to the frontend socket; attach takes \"nbd\" or \"ublk\"".into(),
        )),
        FrontendKind::Nbd if request.ublk_id.is_some() => {
            Err(AttachError::Invalid("ublk_id applies to \"kind\": \"ublk\" only".into()))
        }
        FrontendKind::Nbd => listen_of(request, allowed).map(Place::Nbd),
        FrontendKind::Ublk if request.socket.is_some() || request.listen.is_some() || request.allow_remote => {
            Err(AttachError::Invalid(
                "a ublk device is /dev/ublkbN on this host: it takes no socket, listen or allow_remote".into(),
            ))
        }
        FrontendKind::Ublk => {
            if !Path::new("/dev/ublk-control").exists() {
                return Err(AttachError::Unsupported(
                    "this kernel has no ublk driver (/dev/ublk-control is missing: modprobe ublk_drv, Linux 6.0+); \
                     use \"kind\": \"nbd\""
                        .into(),
                ));
            }
            Ok(Place::Ublk(request.ublk_id))
        }
    }
}

fn listen_of(request: &AttachRequest, allowed: &AllowedPaths) -> Result<Listen, AttachError> {
    match (&request.socket, &request.listen) {
        (Some(socket), None) => {
            let path = allowed.check(socket, "socket")?;
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(AttachError::Invalid(format!(
                    "socket path {socket} is longer than {MAX_SOCKET_PATH} bytes"
                )));
            }
            Ok(Listen::Unix(path))
        }
        (None, Some(listen)) => {
            let addr: SocketAddr = listen.parse().map_err(|e| {
                AttachError::Invalid(format!(
                    "listen {listen:?} is not an IP address and port (e.g. 127.0.0.1:10809): {e}"
                ))
            })?;
            if !addr.ip().is_loopback() && !request.allow_remote {
                return Err(AttachError::Invalid(format!(
                    "listen {addr} is not a loopback address; NBD has no authentication or encryption, so anyone who reaches it \
                     can read and write the device: set \"allow_remote\": true to mean it"
                )));
            }
            Ok(Listen::Tcp(addr))
        }
        _ => Err(AttachError::Invalid(
            "give exactly one of \"socket\" (a Unix socket path) and \"listen\" (a TCP address)".into(),
        )),
    }
}

fn new_id(kind: FrontendKind) -> Result<String, AttachError> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(HostError::Randomness)?;
    let prefix = match kind {
        FrontendKind::Nbd => "nbd",
        FrontendKind::Ublk => "ublk",
        FrontendKind::Socket => "socket",
    };
    Ok(format!("{prefix}-{}", hex::encode(bytes)))
}

impl BlockDevices {
    /// The block devices of `host`, with every attachment its catalog keeps served again (one
    /// that cannot be served is logged and stays in the catalog); backing files and sockets
    /// only under the host's data dir (none without one).
    pub fn restore(host: Arc<Host>) -> std::io::Result<BlockDevices> {
        let allowed = AllowedPaths::new(host.data_dir().map(Path::to_path_buf))?;
        Ok(Self::restore_with(host, ListenerLimits::NBD, allowed, None, UnixAccess::private()))
    }

    /// [`BlockDevices::restore`], with each NBD export's listener bounded by `nbd_limits`,
    /// backing files and sockets confined to `allowed`, TCP exports' TLS `tls`, and Unix
    /// exports' access `unix_access`.
    pub fn restore_with(
        host: Arc<Host>,
        nbd_limits: ListenerLimits,
        allowed: AllowedPaths,
        tls: Option<Arc<TlsServer>>,
        unix_access: UnixAccess,
    ) -> BlockDevices {
        let devices = BlockDevices {
            host,
            nbd_limits,
            allowed,
            tls,
            unix_access,
            attached: Default::default(),
            changes: Default::default(),
        };
        devices.restore_catalog();
        devices
    }

    /// The host they serve.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The block device attached to pool `pool_name`, if it has one being served: its id and
    /// the request it was attached with.
    pub fn device_of(&self, pool_name: &str) -> Option<(String, AttachRequest)> {
        let attached = self.attached.lock();
        attached.values().find(|a| a.pool.name() == pool_name).map(|a| (a.id.clone(), a.request.clone()))
    }

    /// Attaches a block device to pool `pool_name` as `request` asks, keeps it in the catalog,
    /// and returns it as listings show it.
    pub fn attach(&self, pool_name: &str, request: &AttachRequest) -> Result<FrontendDetails, AttachError> {
        let _changes = self.changes.lock();
        let host = &self.host;
        let pool = host.frontend_pool(pool_name)?;

        let backing = self.allowed.check(&request.backing, "backing")?;
        let place = place_of(request, &self.allowed)?;
        self.tls_of(request, &place)?;
        {
            let attached = self.attached.lock();
            for other in attached.values() {
                if other.pool.name() == pool.name() {
                    return Err(AttachError::Conflict {
                        code: "frontend_exists",
                        message: format!(
                            "pool '{pool_name}' already has block device {} (a pool is one swap area: create another pool for another device)",
                            other.id
                        ),
                    });
                }
                if other.backing == backing {
                    return Err(AttachError::Conflict {
                        code: "backing_in_use",
                        message: format!(
                            "backing file {} is in use by block device {} of pool '{}'",
                            request.backing,
                            other.id,
                            other.pool.name()
                        ),
                    });
                }
                let taken = match (&*other.server.lock(), &place) {
                    (Transport::Nbd(server), Place::Nbd(listen)) => server.listen() == listen,
                    (Transport::Ublk(_), Place::Ublk(Some(id))) => other.request.ublk_id == Some(*id),
                    _ => false,
                };
                if taken {
                    return Err(AttachError::Conflict {
                        code: "address_in_use",
                        message: format!(
                            "{} is in use by block device {} of pool '{}'",
                            other.uri,
                            other.id,
                            other.pool.name()
                        ),
                    });
                }
            }
        }
        // A device number that exists belongs to someone: a live device, or one whose server
        // went away and waits to take it over (user recovery) — another program's, or a host
        // of another data dir. Starting afresh would delete it with its pages; only a restore
        // from this catalog takes over a device (`resume`).
        if let Place::Ublk(Some(n)) = place
            && ublk::exists(n)
        {
            return Err(AttachError::Conflict {
                code: "ublk_device_exists",
                message: format!(
                    "{} exists (live, or waiting for the program that made it to take it over); choose another ublk_id or leave it out",
                    ublk::device_path(n)
                ),
            });
        }
        let attached = self.start(new_id(request.kind)?, pool, request.clone(), backing, &place, Start::Empty)?;
        if let Some(catalog) = host.catalog() {
            let record = FrontendRecord {
                id: attached.id.clone(),
                pool: pool_name.to_string(),
                request: attached.request.clone(),
            };
            if let Err(e) = catalog.put_frontend(&record) {
                attached.stop(true);
                return Err(e.into());
            }
        }
        let info = FrontendDetails::of(attached.as_ref());
        tracing::info!(pool = %pool_name, id = %attached.id, address = %attached.uri, size = attached.device.size(), "block device attached");
        self.attached.lock().insert(attached.id.clone(), attached);
        Ok(info)
    }

    /// Creates the device and its server and attaches it to the pool. `start` says whether
    /// the device resumes its contents; for ublk, `Start::Resume` also takes over the
    /// device the previous host process left (user recovery) when the kernel still has it.
    fn start(
        &self,
        id: String,
        pool: Arc<Pool>,
        mut request: AttachRequest,
        backing: PathBuf,
        place: &Place,
        start: Start,
    ) -> Result<Arc<Attached>, AttachError> {
        let device = BlockDevice::new(pool.clone(), request.size_bytes, &backing, start).map_err(|e| match e {
            OpenError::Invalid(m) | OpenError::Backing(m) => AttachError::Invalid(m),
            OpenError::BackingInUse(m) => AttachError::Conflict { code: "backing_in_use", message: m },
        })?;
        let device = Arc::new(device);
        let (server, uri) = match place {
            Place::Nbd(listen) => {
                let export = Arc::new(Export {
                    device: device.clone(),
                    name: pool.name().to_string(),
                    description: format!("tmem pool '{}' ({})", pool.name(), pool.chain().describe()),
                    tls: self.tls_of(&request, place)?,
                    access: self.unix_access.clone(),
                });
                let server = NbdServer::start(export, listen, self.nbd_limits).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AlreadyExists => {
                        AttachError::Conflict { code: "address_in_use", message: format!("cannot listen: {e}") }
                    }
                    _ => AttachError::Invalid(format!("cannot listen on {listen:?}: {e}")),
                })?;
                if let Listen::Tcp(addr) = server.listen() {
                    request.listen = Some(addr.to_string());
                    if request.insecure_no_tls {
                        tracing::warn!(
                            pool = %pool.name(),
                            %addr,
                            "INSECURE: this NBD export is plain TCP (insecure_no_tls): anyone who can reach it or watch \
                             the network reads and writes the device's pages, swapped memory in clear text"
                        );
                    }
                }
                let uri = server.uri();
                (Transport::Nbd(server), uri)
            }
            Place::Ublk(wanted) => {
                let recover = match wanted {
                    Some(n) if ublk::awaits_recovery(*n) => {
                        if start == Start::Resume {
                            true
                        } else {
                            // The old device's contents are gone with its pool: a fresh device.
                            ublk::delete(*n);
                            false
                        }
                    }
                    _ => false,
                };
                let server = UblkServer::start(device.clone(), *wanted, recover).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => AttachError::Unsupported(e.to_string()),
                    _ => AttachError::Invalid(format!("cannot start the ublk device: {e}")),
                })?;
                request.ublk_id = Some(server.id());
                let uri = server.path();
                (Transport::Ublk(Some(server)), uri)
            }
        };
        let attached =
            Arc::new(Attached { id, pool: pool.clone(), request, backing, device, server: Mutex::new(server), uri });
        pool.attach_frontend(attached.clone());
        Ok(attached)
    }

    /// Detaches block device `id` of pool `pool_name` (swapoff: its pages leave the pool).
    pub fn detach(&self, pool_name: &str, id: &str) -> Result<(), AttachError> {
        let _changes = self.changes.lock();
        let host = &self.host;
        let found = self.attached.lock().get(id).filter(|a| a.pool.name() == pool_name).cloned();
        let attached = found.ok_or_else(|| AttachError::NotFound { pool: pool_name.into(), id: id.into() })?;
        if let Some(catalog) = host.catalog() {
            catalog.remove_frontend(id)?;
        }
        self.attached.lock().remove(id);
        attached.stop(true);
        attached.device.release();
        tracing::info!(pool = %pool_name, id, "block device detached");
        Ok(())
    }

    /// Destroys pool `pool_name`: its block device is detached first, then the host destroys
    /// the pool.
    pub fn destroy_pool(&self, pool_name: &str) -> Result<(), AttachError> {
        let ids: Vec<String> =
            self.attached.lock().values().filter(|a| a.pool.name() == pool_name).map(|a| a.id.clone()).collect();
        for id in ids {
            self.detach(pool_name, &id)?;
        }
        Ok(self.host.destroy_pool(pool_name)?)
    }

    /// Serves again every block device the catalog keeps (at host start). One that cannot be
    /// served is logged and stays in the catalog.
    fn restore_catalog(&self) {
        let Some(catalog) = self.host.catalog() else { return };
        let records = match catalog.frontends() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("the catalog's block devices cannot be read: {e}");
                return;
            }
        };
        for record in records {
            match self.resume(&record) {
                Ok(attached) => {
                    tracing::info!(pool = %record.pool, id = %record.id, address = %attached.uri, "block device restored");
                    self.attached.lock().insert(record.id.clone(), attached);
                }
                Err(e) => {
                    tracing::error!(pool = %record.pool, id = %record.id, "a kept block device cannot be served (its record stays in the catalog): {e}")
                }
            }
        }
    }

    /// The TLS an export at `place` requires: the host's for TCP, none for a Unix socket or a
    /// TCP export attached with `insecure_no_tls` (logged loudly when served); a TCP export without TLS
    /// when the host has none, or `insecure_no_tls` where it means nothing, is refused.
    fn tls_of(&self, request: &AttachRequest, place: &Place) -> Result<Option<Arc<TlsServer>>, AttachError> {
        match place {
            Place::Nbd(Listen::Tcp(_)) if request.insecure_no_tls => Ok(None),
            Place::Nbd(Listen::Tcp(addr)) => match &self.tls {
                Some(tls) => Ok(Some(tls.clone())),
                None => Err(AttachError::Invalid(format!(
                    "listen {addr}: a TCP export requires TLS, and this host has none (start `tmem serve` with \
                     --tls-cert and --tls-key, or --tls-psk); to serve it in clear text, set \"insecure_no_tls\": true \
                     (tmem pool attach --insecure-no-tls)"
                ))),
            },
            _ if request.insecure_no_tls => {
                Err(AttachError::Invalid("insecure_no_tls applies to a TCP export (\"listen\") only".into()))
            }
            _ => Ok(None),
        }
    }

    fn resume(&self, record: &FrontendRecord) -> Result<Arc<Attached>, AttachError> {
        let pool = self.host.pool(&record.pool)?;
        let backing = self.allowed.check(&record.request.backing, "backing")?;
        let place = place_of(&record.request, &self.allowed)?;
        self.tls_of(&record.request, &place)?;
        let start = if pool.is_persistent() {
            Start::Resume
        } else {
            tracing::warn!(
                pool = %record.pool,
                id = %record.id,
                "pool keeps pages in memory only: its block device starts empty after the restart"
            );
            Start::Empty
        };
        self.start(record.id.clone(), pool, record.request.clone(), backing, &place, start)
    }

    /// Stops every server (the host is shutting down); attachments stay in the catalog and
    /// pages stay in their pools.
    pub fn stop_all(&self) {
        let all: Vec<Arc<Attached>> = std::mem::take(&mut *self.attached.lock()).into_values().collect();
        for attached in all {
            attached.stop(false);
        }
    }
}
