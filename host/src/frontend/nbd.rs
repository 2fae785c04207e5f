//! An NBD server for one [`BlockDevice`]: the fixed-newstyle protocol of
//! `NetworkBlockDevice/nbd` `doc/proto.md`, on a Unix socket or TCP (loopback unless the
//! attachment allows otherwise). Useful to any kernel with the `nbd` module and to QEMU and
//! libnbd users directly.
//!
//! # What is spoken
//!
//! - Handshake: fixed newstyle, `NO_ZEROES`. Options: `EXPORT_NAME`, `ABORT`, `LIST`,
//!   `INFO`/`GO` (export size and flags, name, description, and block sizes: minimum and
//!   preferred the pool's page size, maximum [`MAX_PAYLOAD`]), `STRUCTURED_REPLY`,
//!   `LIST_META_CONTEXT`/`SET_META_CONTEXT` (`base:allocation`), `STARTTLS` on an export
//!   with TLS (below; elsewhere `ERR_POLICY`); other options are `ERR_UNSUP`.
//! - Export names: the pool's name, and `""` (the default export).
//! - Transmission flags: `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM`, `SEND_WRITE_ZEROES`,
//!   `SEND_FAST_ZERO`, `CAN_MULTI_CONN` (one device behind every connection: a flush on any
//!   connection covers every write any of them had answered), and `SEND_DF` with structured
//!   replies (a read is always one chunk).
//! - Commands: `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `BLOCK_STATUS`.
//!
//! The protocol's constants and the decoding of what a client sends (flags, option headers
//! and payloads, request headers) are [`tmem_api::nbd`], where they are fuzzed; this module
//! is the server around them.
//!
//! # TLS
//!
//! An export with [`Export::tls`] *requires* TLS, as nbdkit's `--tls=require`: before
//! `STARTTLS` succeeds, every option but `STARTTLS` and `ABORT` is answered `ERR_TLS_REQD`
//! (and `EXPORT_NAME`, which cannot be answered with an error, ends the connection); after
//! `STARTTLS`'s `ACK` the TLS handshake runs on the connection ([`crate::tls`]: X.509, client
//! certificates, PSK), within the handshake's deadline, and the options go on inside it.
//! Bytes the client sent after `STARTTLS` but before its handshake end the connection (they
//! would be read as plain text: the STARTTLS injection attack). TCP exports have TLS unless
//! they were attached with `insecure_no_tls` ([`super::attach`]); Unix sockets have none
//! (the socket's mode is their protection).
//!
//! # Bad input
//!
//! A request that is well framed but wrong (unaligned, out of range, unknown command or flag,
//! too long) gets an error reply — `EINVAL`, or `ENOSPC` for a change past the end — and the
//! connection goes on. A stream that cannot be framed (bad magic, a write longer than
//! [`MAX_PAYLOAD`], an absurd option) is answered by closing the connection: the protocol
//! allows a hard disconnect when the peer breaks a mandatory rule, and nothing else on the
//! stream can be trusted. Either way no page is touched by a request that was refused.
//!
//! # Bounds
//!
//! Each export's listener is a [`Gate`] ([`crate::listen`]): at most
//! [`ListenerLimits::max_connections`] connections; a connection still in its handshake is
//! evicted first when a newcomer finds the export full, and closed when its handshake takes
//! longer than [`ListenerLimits::handshake_timeout`] (a deadline for the whole handshake, not
//! per read). An established connection is never cut for being idle: an idle swap device is
//! normal. A failed `accept` for want of descriptors or memory backs off.
//!
//! # Threads and buffers
//!
//! Each connection has its own thread with blocking I/O (pool operations block: plugin calls
//! under deadlines, database and backing-file syncs), like nbdkit. Requests are read through a
//! 256 KiB buffer, so a pipelining client's requests arrive many per `read(2)`; replies
//! collect in one output buffer that is written when the next request is not already buffered
//! (before the thread could block), so a burst of replies costs one `write(2)`. Read data is
//! loaded straight into the output buffer; buffers are reused, so the steady state allocates
//! nothing per request. Over TLS the same buffers go through the connection's OpenSSL
//! session, whose record buffers are made during its handshake and kept; OpenSSL 3's record
//! layer itself still takes and frees about 4.5 small blocks (~250 bytes) per request, which
//! `tests/all/io_path.rs` measures and bounds.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

// The protocol's constants and the decoding of what a client sends.
use tmem_api::nbd::*;

use super::device::{BlockDevice, BlockError};
use crate::listen::{Gate, ListenerLimits, Ticket};
use crate::memory::alloc_count::{IoThread, Role};
use crate::tls::TlsServer;
use crate::unix_access::UnixAccess;

pub use tmem_api::nbd::MAX_PAYLOAD;

/// The most connections one export serves at once by default ([`ListenerLimits::NBD`]).
pub const MAX_CONNECTIONS: usize = ListenerLimits::NBD.max_connections;

/// The one metadata context served, and its id.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;

/// Options one connection may send before it must choose an export.
const MAX_OPTIONS: u32 = 1024;
/// Replies are written at least every this many requests, so a pipelining client gets its
/// first answers (and sends its next requests) while later ones are still being served,
/// instead of client and server taking turns over whole batches.
const FLUSH_EVERY: u32 = 4;
/// Block-status descriptors in one reply.
const MAX_EXTENTS: usize = 1024;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (mode 0600).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// What is exported: the device and the name clients ask for.
#[derive(Debug)]
pub struct Export {
    /// The device.
    pub device: Arc<BlockDevice>,
    /// The export name (besides `""`, the default export).
    pub name: String,
    /// Shown to clients that ask (`NBD_INFO_DESCRIPTION`).
    pub description: String,
    /// TLS, required of every client (`None`: plain).
    pub tls: Option<Arc<TlsServer>>,
    /// On a Unix socket: its group and mode, and which peers are served.
    pub access: UnixAccess,
}

/// The live connections of a server: a handle to shut each down, and its thread.
type Connections = Mutex<HashMap<u64, (Box<dyn Fn() + Send>, Option<JoinHandle<()>>)>>;

/// A running server; stopped (every connection closed, the socket file removed) by
/// [`NbdServer::stop`] or when dropped.
pub struct NbdServer {
    listen: Listen,
    /// The listening socket, shared with the accept thread: [`NbdServer::stop`] shuts it down
    /// to wake that thread, so its descriptor stays open as long as the server.
    listener: Arc<Listener>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
    accepted: Arc<AtomicU64>,
    /// Its clients must use TLS.
    tls: bool,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer").field("listen", &self.listen).finish()
    }
}

/// One side of a connection: a Unix or TCP stream.
trait Stream: Read + Write + Send + Sync + 'static {
    fn duplicate(&self) -> io::Result<Self>
    where
        Self: Sized;
    fn shut(&self);
    /// Sets the socket's read and write timeouts (`None`: block for ever).
    fn timeouts(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

impl Stream for TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

/// What a connection reads and writes through: the socket, or a TLS session over it.
enum Transport<S: Stream> {
    Plain(S),
    Tls(crate::tls::TlsStream<S>),
    /// Between the two, while the TLS handshake has the socket.
    Switching,
}

impl<S: Stream> Read for Transport<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
            Transport::Switching => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<S: Stream> Write for Transport<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
            Transport::Switching => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
            Transport::Switching => Ok(()),
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// Binds a Unix socket at `path` (mode 0600, or as `access` says). A stale socket file
/// (nothing answers) is replaced; a live one, or a path that is not a socket, is refused.
fn bind_unix(path: &std::path::Path, access: &UnixAccess) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a live server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    access.apply(path)?;
    Ok(listener)
}

impl NbdServer {
    /// Binds `listen` and starts serving `export` on a thread of its own, within `limits`. A
    /// TCP port 0 is given a free port ([`NbdServer::listen`] says which).
    pub fn start(export: Arc<Export>, listen: &Listen, limits: ListenerLimits) -> io::Result<NbdServer> {
        let (listener, listen) = match listen {
            Listen::Unix(path) => (Listener::Unix(bind_unix(path, &export.access)?), Listen::Unix(path.clone())),
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                let bound = listener.local_addr()?;
                (Listener::Tcp(listener), Listen::Tcp(bound))
            }
        };
        let listener = Arc::new(listener);
        let tls = export.tls.is_some();
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Connections> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stopping, connections, accepted) = (stopping.clone(), connections.clone(), accepted.clone());
            let listener = listener.clone();
            let gate = Gate::new(limits, "an NBD connection");
            std::thread::Builder::new().name("tmem-nbd-accept".into()).spawn(move || match &*listener {
                Listener::Unix(l) => {
                    let access = export.access.clone();
                    accept_loop(export, &gate, &stopping, &connections, &accepted, || {
                        loop {
                            let (s, _) = l.accept()?;
                            match access.admits_stream(&s) {
                                Ok(()) => return Ok(s),
                                Err(why) => tracing::warn!("NBD connection refused: {why}"),
                            }
                        }
                    })
                }
                Listener::Tcp(l) => accept_loop(export, &gate, &stopping, &connections, &accepted, || {
                    let (s, _) = l.accept()?;
                    s.set_nodelay(true)?;
                    Ok(s)
                }),
            })?
        };
        Ok(NbdServer { listen, listener, stopping, accept: Some(accept), connections, accepted, tls })
    }

    /// Where it listens (a TCP port 0 resolved).
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The URI clients use: `nbd+unix:///?socket=PATH`, `nbds://HOST:PORT` (TLS required) or
    /// `nbd://HOST:PORT`.
    pub fn uri(&self) -> String {
        match &self.listen {
            Listen::Unix(path) => format!("nbd+unix:///?socket={}", path.display()),
            Listen::Tcp(addr) if self.tls => format!("nbds://{addr}"),
            Listen::Tcp(addr) => format!("nbd://{addr}"),
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.lock().len() as u64
    }

    /// Connections accepted since the server started.
    pub fn connections_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes every connection (a request being served finishes first) and
    /// removes the socket file. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop: on Linux, shutting a listening socket down makes a blocked
        // `accept` (and every later one) fail with EINVAL. Not with a connection of our own:
        // one to the listening address does not always arrive (a socket file someone removed,
        // a broadcast address such as 127.255.255.255 that binds but refuses connections, no
        // descriptor left), and then the accept thread, and this join, waited for ever.
        // SAFETY: shutdown(2) on a descriptor `self.listener` owns and keeps open until it is
        // dropped, after the accept thread has ended.
        if unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
            tracing::warn!(listen = ?self.listen, "cannot shut the NBD listener down: {}", io::Error::last_os_error());
        }
        let _ = accept.join();
        let live: Vec<_> = self.connections.lock().drain().collect();
        for (_, (shut, _)) in &live {
            shut();
        }
        for (_, (_, thread)) in live {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        if let Listen::Unix(path) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<S: Stream>(
    export: Arc<Export>,
    gate: &Gate,
    stopping: &AtomicBool,
    connections: &Arc<Connections>,
    accepted: &AtomicU64,
    mut accept: impl FnMut() -> io::Result<S>,
) {
    let mut next_id = 0u64;
    loop {
        let stream = accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                crate::listen::accept_failed_blocking(&e, "an NBD connection");
                continue;
            }
        };
        let Ok(handle) = stream.duplicate() else { continue };
        let handle = Arc::new(handle);
        // A full export evicts its oldest connection still in its handshake (shut down: its
        // thread's read ends), or, when every connection is established, closes this one.
        let evict = handle.clone();
        let Some(ticket) = gate.admit_with(Box::new(move || evict.shut())) else { continue };
        accepted.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        let id = next_id;
        let mut live = connections.lock();
        live.insert(id, (Box::new(move || handle.shut()), None));
        let (export, registry) = (export.clone(), connections.clone());
        let handshake_timeout = gate.limits().handshake_timeout;
        let thread = std::thread::Builder::new().name(format!("tmem-nbd-{id}")).spawn(move || {
            super::become_io_flusher();
            let _io_thread = IoThread::enter(Role::Nbd);
            if let Err(e) = serve_connection(&export, stream, ticket, handshake_timeout) {
                tracing::info!(export = %export.name, "NBD connection closed: {e}");
            }
            registry.lock().remove(&id);
        });
        match thread {
            Ok(thread) => {
                if let Some(entry) = live.get_mut(&id) {
                    entry.1 = Some(thread);
                }
            }
            Err(e) => {
                live.remove(&id);
                tracing::warn!("cannot start an NBD connection thread: {e}");
            }
        }
    }
}

/// One connection: its buffered input, its pending output, the negotiated options.
struct Connection<'a, S: Stream> {
    export: &'a Export,
    /// Reads, through a buffer; replies are written through it too (`get_mut`).
    input: BufReader<Transport<S>>,
    /// The socket again, for its timeouts.
    socket: S,
    /// TLS is negotiated.
    tls: bool,
    out: Vec<u8>,
    payload: Vec<u8>,
    structured: bool,
    no_zeroes: bool,
    meta_context: bool,
    /// When the handshake must be over (`None` once it is: transmission has no deadline).
    deadline: Option<Instant>,
}

/// Why a connection ends.
enum End {
    /// The client said goodbye (ABORT, DISC) or went away between messages.
    Clean,
    /// The stream broke or the client broke the protocol.
    Broken(String),
}

impl From<NbdError> for End {
    fn from(e: NbdError) -> Self {
        End::Broken(e.to_string())
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Broken(e.to_string())
    }
}

fn serve_connection<S: Stream>(
    export: &Export,
    stream: S,
    mut ticket: Ticket,
    handshake_timeout: Duration,
) -> Result<(), String> {
    let socket = stream.duplicate().map_err(|e| e.to_string())?;
    let mut conn = Connection {
        export,
        input: BufReader::with_capacity(256 << 10, Transport::Plain(stream)),
        socket,
        tls: false,
        out: Vec::with_capacity(64 << 10),
        payload: Vec::new(),
        structured: false,
        no_zeroes: false,
        meta_context: false,
        deadline: Some(Instant::now() + handshake_timeout),
    };
    conn.socket.timeouts(Some(handshake_timeout)).map_err(|e| e.to_string())?;
    let result = conn
        .negotiate()
        .and_then(|()| {
            // Established: no deadline from now on (an idle swap device is normal), and never
            // evicted. A connection evicted just before this point ends instead.
            conn.deadline = None;
            conn.socket.timeouts(None)?;
            if ticket.establish() { Ok(()) } else { Err(End::Broken("evicted during its handshake".into())) }
        })
        .and_then(|()| {
            conn.buffers_for_transmission();
            conn.transmit()
        });
    match result {
        // A client that said goodbye may already be gone: a last reply it misses is fine.
        Ok(()) | Err(End::Clean) => {
            let _ = conn.flush();
            Ok(())
        }
        Err(End::Broken(why)) => Err(why),
    }
}

/// Bytes of write payload a connection has room for ahead: more than the largest request a
/// kernel's NBD client sends by default (`max_sectors_kb` 1280).
const PAYLOAD_AHEAD: usize = 2 << 20;

impl<S: Stream> Connection<'_, S> {
    /// Sizes the payload and reply buffers for a kernel's requests before the first one, and,
    /// when the host serves swap (its memory locked), faults them in: growing them on a
    /// request — a write's payload, a read's reply — allocated and faulted under the very
    /// memory pressure that sent it (issue 14's NBD stacks). Larger requests still grow them.
    fn buffers_for_transmission(&mut self) {
        self.payload.reserve(PAYLOAD_AHEAD);
        // Replies are written out past 1 MiB (`transmit`), so one read more fits.
        self.out.reserve((1 << 20) + PAYLOAD_AHEAD);
        if crate::memory::is_locked() {
            crate::memory::populate_writable(self.payload.as_mut_ptr(), self.payload.capacity());
            crate::memory::populate_writable(self.out.as_mut_ptr(), self.out.capacity());
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.input.get_mut().write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; pending replies are written first if the read might
    /// block (the client may be waiting for them).
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.input.buffer().len() < buf.len() {
            if let Some(deadline) = self.deadline {
                // The handshake's deadline bounds the whole handshake, however the client
                // spreads its bytes: each read (and the flush) gets only what is left of it.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"));
                }
                self.socket.timeouts(Some(left))?;
            }
            self.flush()?;
        }
        self.input.read_exact(buf)
    }

    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads the first bytes of a message: a clean end of stream here is the client leaving.
    fn read_start<const N: usize>(&mut self) -> Result<[u8; N], End> {
        match self.read_array::<N>() {
            Ok(buf) => Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(End::Clean),
            Err(e) => Err(e.into()),
        }
    }

    // ----- handshake and options -----

    fn negotiate(&mut self) -> Result<(), End> {
        self.out.extend_from_slice(&NBDMAGIC.to_be_bytes());
        self.out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        self.out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.flush()?;
        let client_flags = parse_client_flags(self.read_start::<4>()?)?;
        self.no_zeroes = client_flags & FLAG_NO_ZEROES as u32 != 0;
        for _ in 0..MAX_OPTIONS {
            let OptionHeader { option, len } = parse_option_header(&self.read_start::<OPTION_HEADER_LEN>()?)?;
            let mut data = vec![0u8; len as usize];
            self.read_exact(&mut data)?;
            if self.option(option, &data)? {
                return Ok(());
            }
        }
        Err(End::Broken(format!("more than {MAX_OPTIONS} options without choosing an export")))
    }

    fn option_reply(&mut self, option: u32, kind: u32, data: &[&[u8]]) {
        let len: usize = data.iter().map(|d| d.len()).sum();
        self.out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        self.out.extend_from_slice(&option.to_be_bytes());
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out.extend_from_slice(&(len as u32).to_be_bytes());
        for d in data {
            self.out.extend_from_slice(d);
        }
    }

    fn option_error(&mut self, option: u32, kind: u32, message: &str) {
        self.option_reply(option, kind, &[message.as_bytes()]);
    }

    fn known_export(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.export.name.as_bytes()
    }

    fn transmission_flags(&self) -> u16 {
        let base = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO
            | TFLAG_CAN_MULTI_CONN;
        if self.structured { base | TFLAG_SEND_DF } else { base }
    }

    /// Handles one option; `true` when transmission begins.
    fn option(&mut self, option: u32, data: &[u8]) -> Result<bool, End> {
        if self.export.tls.is_some() && !self.tls && option != OPT_STARTTLS && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Err(End::Broken("EXPORT_NAME before STARTTLS on an export that requires TLS".into()));
            }
            self.option_error(option, REP_ERR_TLS_REQD, "this export requires TLS: send STARTTLS first");
            return Ok(false);
        }
        match option {
            OPT_EXPORT_NAME => {
                if !self.known_export(data) {
                    // This option cannot be answered with an error: the protocol says hang up.
                    return Err(End::Broken(format!("unknown export {:?}", String::from_utf8_lossy(data))));
                }
                self.out.extend_from_slice(&self.export.device.size().to_be_bytes());
                self.out.extend_from_slice(&self.transmission_flags().to_be_bytes());
                if !self.no_zeroes {
                    self.out.extend_from_slice(&[0u8; 124]);
                }
                return Ok(true);
            }
            OPT_ABORT => {
                self.option_reply(option, REP_ACK, &[]);
                return Err(End::Clean);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.option_error(option, REP_ERR_INVALID, "LIST takes no data");
                } else {
                    let name = self.export.name.clone();
                    self.option_reply(option, REP_SERVER, &[&(name.len() as u32).to_be_bytes(), name.as_bytes()]);
                    self.option_reply(option, REP_ACK, &[]);
                }
            }
            OPT_STARTTLS => self.starttls(data)?,
            OPT_INFO | OPT_GO => return self.info(option, data),
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    self.option_reply(option, REP_ACK, &[]);
                } else {
                    self.option_error(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data),
            _ => self.option_error(option, REP_ERR_UNSUP, "option not supported by tmem"),
        }
        Ok(false)
    }

    /// `STARTTLS`: the TLS handshake, then the options go on inside TLS.
    fn starttls(&mut self, data: &[u8]) -> Result<(), End> {
        let Some(tls) = self.export.tls.clone() else {
            self.option_error(OPT_STARTTLS, REP_ERR_POLICY, "this export does not offer TLS");
            return Ok(());
        };
        if self.tls {
            self.option_error(OPT_STARTTLS, REP_ERR_INVALID, "TLS is already negotiated");
            return Ok(());
        }
        if !data.is_empty() {
            self.option_error(OPT_STARTTLS, REP_ERR_INVALID, "STARTTLS takes no data");
            return Ok(());
        }
        self.option_reply(OPT_STARTTLS, REP_ACK, &[]);
        self.flush()?;
        if !self.input.buffer().is_empty() {
            // Plain bytes sent before the handshake would be read as if they came through TLS.
            return Err(End::Broken("data after STARTTLS before the TLS handshake".into()));
        }
        let Transport::Plain(plain) = std::mem::replace(self.input.get_mut(), Transport::Switching) else {
            return Err(End::Broken("STARTTLS on a connection that is not plain".into()));
        };
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(End::Broken("the handshake took too long".into()));
            }
            self.socket.timeouts(Some(left))?;
        }
        let session = tls.accept(plain).map_err(|e| End::Broken(e.to_string()))?;
        *self.input.get_mut() = Transport::Tls(session);
        self.tls = true;
        Ok(())
    }

    /// `INFO` and `GO`: export name, requested infos; `true` when `GO` begins transmission.
    fn info(&mut self, option: u32, data: &[u8]) -> Result<bool, End> {
        let Ok(request) = parse_info(data) else {
            self.option_error(option, REP_ERR_INVALID, "malformed INFO/GO request");
            return Ok(false);
        };
        let name = request.name;
        if !self.known_export(name) {
            let message = format!(
                "no export named {:?} (this server exports {:?})",
                String::from_utf8_lossy(name),
                self.export.name
            );
            self.option_error(option, REP_ERR_UNKNOWN, &message);
            return Ok(false);
        }
        let device = &self.export.device;
        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&device.size().to_be_bytes());
        export.extend_from_slice(&self.transmission_flags().to_be_bytes());
        self.option_reply(option, REP_INFO, &[&export]);
        let mut sizes = Vec::with_capacity(14);
        sizes.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        sizes.extend_from_slice(&device.block_size().to_be_bytes());
        sizes.extend_from_slice(&device.block_size().to_be_bytes());
        sizes.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        self.option_reply(option, REP_INFO, &[&sizes]);
        if request.wants(INFO_NAME) {
            let name = self.export.name.clone();
            self.option_reply(option, REP_INFO, &[&INFO_NAME.to_be_bytes(), name.as_bytes()]);
        }
        if request.wants(INFO_DESCRIPTION) {
            let description = self.export.description.clone();
            self.option_reply(option, REP_INFO, &[&INFO_DESCRIPTION.to_be_bytes(), description.as_bytes()]);
        }
        self.option_reply(option, REP_ACK, &[]);
        Ok(option == OPT_GO)
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) {
        if !self.structured {
            self.option_error(option, REP_ERR_INVALID, "negotiate structured replies first");
            return;
        }
        let Ok(MetaContextRequest { name, queries }) = parse_meta_context(data) else {
            self.option_error(option, REP_ERR_INVALID, "malformed meta context request");
            return;
        };
        if !self.known_export(name) {
            self.option_error(option, REP_ERR_UNKNOWN, "no such export");
            return;
        }
        let listing = option == OPT_LIST_META_CONTEXT;
        let selected = if queries.is_empty() {
            listing
        } else {
            queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes() || (listing && *q == b"base:"))
        };
        if !listing {
            self.meta_context = selected;
        }
        if selected {
            self.option_reply(
                option,
                REP_META_CONTEXT,
                &[&BASE_ALLOCATION_ID.to_be_bytes(), BASE_ALLOCATION.as_bytes()],
            );
        }
        self.option_reply(option, REP_ACK, &[]);
    }

    // ----- transmission -----

    fn transmit(&mut self) -> Result<(), End> {
        let mut unsent = 0;
        loop {
            let request = parse_request(&self.read_start::<REQUEST_LEN>()?)?;
            if request.command == CMD_DISC {
                return Err(End::Clean);
            }
            self.request(request)?;
            Role::Nbd.count_ops(1);
            unsent += 1;
            if unsent >= FLUSH_EVERY || self.out.len() >= 1 << 20 {
                self.flush()?;
            }
            if self.out.is_empty() {
                unsent = 0;
            }
        }
    }

    fn request(&mut self, request: Request) -> Result<(), End> {
        let Request { flags, command, handle, offset, len } = request;
        let allowed = match command {
            CMD_READ => CMD_FLAG_FUA | if self.structured { CMD_FLAG_DF } else { 0 },
            CMD_WRITE | CMD_TRIM | CMD_FLUSH => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => 0,
        };
        if command == CMD_WRITE {
            // The payload follows whatever we think of the request: read it to stay framed.
            let len = request.write_payload()?;
            let mut payload = std::mem::take(&mut self.payload);
            payload.resize(len, 0);
            let read = self.read_exact(&mut payload);
            self.payload = payload;
            read?;
        }
        let fua = flags & CMD_FLAG_FUA != 0;
        let invalid = |message: String| Err(BlockError::Invalid(message));
        let result = if flags & !allowed != 0 {
            invalid(format!("command {command} does not take flags {:#x}", flags & !allowed))
        } else {
            let device = self.export.device.clone();
            match command {
                CMD_READ if len > MAX_PAYLOAD => {
                    invalid(format!("a read of {len} bytes (the maximum block size is {MAX_PAYLOAD})"))
                }
                CMD_READ => return self.read(handle, offset, len),
                CMD_WRITE => device.write(offset, &self.payload, fua),
                CMD_FLUSH => device.flush(),
                CMD_TRIM => device.discard(offset, len.into(), fua),
                CMD_WRITE_ZEROES => device.write_zeroes(offset, len.into(), fua),
                CMD_BLOCK_STATUS if self.meta_context => return self.block_status(handle, offset, len, flags),
                CMD_BLOCK_STATUS => invalid("BLOCK_STATUS needs the base:allocation meta context".into()),
                other => invalid(format!("unknown command {other}")),
            }
        };
        match result {
            Ok(()) => self.simple_reply(handle, 0),
            Err(e) => self.error_reply(handle, &e),
        }
        Ok(())
    }

    fn simple_reply(&mut self, handle: u64, error: u32) {
        self.out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        self.out.extend_from_slice(&error.to_be_bytes());
        self.out.extend_from_slice(&handle.to_be_bytes());
    }

    fn chunk_header(&mut self, handle: u64, flags: u16, kind: u16, len: u32) {
        self.out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        self.out.extend_from_slice(&flags.to_be_bytes());
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out.extend_from_slice(&handle.to_be_bytes());
        self.out.extend_from_slice(&len.to_be_bytes());
    }

    /// An error: a structured error chunk with the message, or a simple reply's errno.
    fn error_reply(&mut self, handle: u64, error: &BlockError) {
        if self.structured {
            let message = error.to_string();
            let message = &message.as_bytes()[..message.len().min(4096)];
            self.chunk_header(handle, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 6 + message.len() as u32);
            self.out.extend_from_slice(&error.errno().to_be_bytes());
            self.out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            self.out.extend_from_slice(message);
        } else {
            self.simple_reply(handle, error.errno());
        }
    }

    /// A read: the data is loaded straight into the output buffer after its header, which is
    /// written only once the whole read succeeded (so a failed read is a clean error reply).
    fn read(&mut self, handle: u64, offset: u64, len: u32) -> Result<(), End> {
        let start = self.out.len();
        let header = if self.structured { 28 } else { 16 };
        self.out.resize(start + header + len as usize, 0);
        let device = self.export.device.clone();
        match device.read(offset, &mut self.out[start + header..]) {
            Ok(()) => {
                let head = &mut self.out[start..start + header];
                if self.structured {
                    let chunk_len = len + 8;
                    fill(
                        head,
                        &[
                            &STRUCTURED_REPLY_MAGIC.to_be_bytes(),
                            &REPLY_FLAG_DONE.to_be_bytes(),
                            &REPLY_TYPE_OFFSET_DATA.to_be_bytes(),
                            &handle.to_be_bytes(),
                            &chunk_len.to_be_bytes(),
                            &offset.to_be_bytes(),
                        ],
                    );
                } else {
                    fill(head, &[&SIMPLE_REPLY_MAGIC.to_be_bytes(), &0u32.to_be_bytes(), &handle.to_be_bytes()]);
                }
            }
            Err(e) => {
                self.out.truncate(start);
                self.error_reply(handle, &e);
            }
        }
        Ok(())
    }

    fn block_status(&mut self, handle: u64, offset: u64, len: u32, flags: u16) -> Result<(), End> {
        let max_runs = if flags & CMD_FLAG_REQ_ONE != 0 { 1 } else { MAX_EXTENTS };
        match self.export.device.extents(offset, len.into(), max_runs) {
            Ok(runs) if !runs.is_empty() => {
                self.chunk_header(handle, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 4 + 8 * runs.len() as u32);
                self.out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                for (bytes, zero) in runs {
                    self.out.extend_from_slice(&(bytes as u32).to_be_bytes());
                    self.out.extend_from_slice(&(if zero { STATE_HOLE | STATE_ZERO } else { 0 }).to_be_bytes());
                }
            }
            Ok(_) => self.error_reply(handle, &BlockError::Invalid("BLOCK_STATUS of zero bytes".into())),
            Err(e) => self.error_reply(handle, &e),
        }
        Ok(())
    }
}

/// Copies `parts` one after another into `buf`.
fn fill(buf: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
}
