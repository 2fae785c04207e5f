//! The frontend socket: frontends (userfaultfd regions, block devices) reach pools over a Unix
//! socket (`DATA_DIR/tmem.sock`, mode 0600; `tmem serve --socket PATH` to move it) speaking the
//! frontend protocol ([`tmem_api::frontend`]): batched, pipelined, binary.
//!
//! A connection attaches to one pool (HELLO with a frontend token of that pool, or the host's
//! API token: [`crate::credentials`]; a revoked token ends it at its next frame) and becomes one of the pool's
//! [`Frontend`]s: the pool's shrink asks it to take pages back (a TAKE_BACK frame; the client
//! takes them with batched take ops and answers TAKEN). Every batch is decoded completely
//! before any op runs, so a malformed frame does nothing but earn an ERROR and a closed
//! connection. A frontend that disconnects is detached; its pool keeps every page it stored.
//!
//! # Bounds
//!
//! The listener is a [`Gate`]: at most [`ListenerLimits::max_connections`] connections, a
//! connection that has not attached (HELLO with the token) is evicted first when it is full
//! and closed after [`ListenerLimits::handshake_timeout`], and the HELLO is read with a limit
//! of [`proto::MAX_HELLO_BODY`] (every frame's buffer grows with the bytes that arrive, not with
//! its length field). A batch whose answer could exceed [`MAX_BODY`] is refused before any of
//! its ops runs ([`proto::answer_bound`]). Frames the host sends on its own (TAKE_BACK) queue
//! in a bounded queue of [`OUTGOING_FRAMES`]: a frontend that does not read makes the
//! shrink asking it wait, then give up, instead of growing the host's memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tmem_api::frontend::{self as proto, MAX_BODY, Op};
use tmem_api::rest::TokenScope;
use tmem_api::wire::{self, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{Sender, channel, error::TrySendError};

use super::{Frontend, FrontendKind};
use crate::credentials::Session;
use crate::host::Host;
use crate::listen::{Gate, ListenerLimits};
use crate::memory::alloc_count::{self, Role};
use crate::pool::{LoadOutcome, OpError, Pool, StoreOutcome};
use crate::rest::auth::ApiToken;
use crate::unix_access::UnixAccess;
use crate::wire_io::{read_frame, read_frame_into};

/// How long the host waits for a frontend to take pages back before giving up on it.
pub const TAKE_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames the host sends on its own (ATTACHED, ERROR, TAKE_BACK) that may wait for one
/// connection's writer; a sender finding the queue full waits (a shrink, up to
/// [`TAKE_BACK_TIMEOUT`]) or drops an error frame it was sending on the way out.
pub const OUTGOING_FRAMES: usize = 16;

/// The default socket path in a data dir.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("tmem.sock")
}

/// Binds the socket (replacing a stale socket from an earlier run) with mode 0600. Anything
/// else at the path is left alone: the host refuses to start rather than delete a file.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    bind_with(path, &UnixAccess::private())
}

/// [`bind`], the socket's group and mode as `access` says.
pub fn bind_with(path: &Path, access: &UnixAccess) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!("{} exists and is not a socket: choose another --socket path", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("the frontend socket {} is in use by another tmem serve", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind the frontend socket {}: {e}", path.display()))?;
    access.apply(path).map_err(|e| anyhow::anyhow!("cannot set the frontend socket's owner and mode: {e}"))?;
    Ok(listener)
}

/// Counters of one connected frontend.
#[derive(Debug, Default)]
struct FrontendCounters {
    batches: AtomicU64,
    stores: AtomicU64,
    rejected: AtomicU64,
    loads: AtomicU64,
    absent: AtomicU64,
    invalidates: AtomicU64,
    taken_back: AtomicU64,
}

/// A frontend connected through the socket.
pub struct SocketFrontend {
    /// `socket-N`, unique on this host.
    id: String,
    name: String,
    /// The socket's path (what listings show as its address).
    address: Arc<str>,
    connected: Instant,
    frames: Sender<Vec<u8>>,
    next_id: AtomicU32,
    waiting: Mutex<HashMap<u32, mpsc::SyncSender<u64>>>,
    counters: FrontendCounters,
    /// What authenticated the connection: a revoked token ends it at its next frame.
    session: Session,
}

impl Frontend for SocketFrontend {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn kind(&self) -> FrontendKind {
        FrontendKind::Socket
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn address(&self) -> String {
        self.address.to_string()
    }

    fn take_back(&self, _pool: &Pool, offsets: &[u64]) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) | proto::HOST_ID_BIT;
        let mut frame = Vec::with_capacity(wire::HEADER_LEN + 4 + offsets.len() * 8);
        let start = wire::begin(&mut frame, proto::TAKE_BACK, id);
        // A count beyond u32 could never fit the frame: `finish` refuses it below.
        frame.extend_from_slice(&u32::try_from(offsets.len()).unwrap_or(u32::MAX).to_le_bytes());
        for offset in offsets {
            frame.extend_from_slice(&offset.to_le_bytes());
        }
        if let Err(e) = wire::finish(&mut frame, start, MAX_BODY) {
            tracing::warn!(frontend = %self.name, "cannot ask for {} pages back in one frame: {e}", offsets.len());
            return 0;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.waiting.lock().insert(id, tx);
        let deadline = Instant::now() + TAKE_BACK_TIMEOUT;
        // Backpressure: the connection's queue is bounded; a frontend that does not read its
        // frames makes this shrink wait (this is a blocking thread), then give up on it.
        loop {
            match self.frames.try_send(frame) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    frame = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    if matches!(e, TrySendError::Full(_)) {
                        tracing::warn!(frontend = %self.name, "a frontend does not read its frames: no pages taken back");
                    }
                    self.waiting.lock().remove(&id);
                    return 0;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let taken = rx.recv_timeout(left).unwrap_or_else(|_| {
            tracing::warn!(frontend = %self.name, "a frontend did not take pages back in time");
            0
        });
        self.waiting.lock().remove(&id);
        self.counters.taken_back.fetch_add(taken, Ordering::Relaxed);
        taken
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("batches", get(&c.batches)),
            ("stores", get(&c.stores)),
            ("rejected", get(&c.rejected)),
            ("loads", get(&c.loads)),
            ("absent", get(&c.absent)),
            ("invalidates", get(&c.invalidates)),
            ("taken_back", get(&c.taken_back)),
            ("connected_seconds", self.connected.elapsed().as_secs()),
        ]
    }
}

/// Serves frontends on `listener`, within `limits`, to the peers `access` admits, until
/// `shutdown` completes.
pub async fn serve_frontends(
    host: Arc<Host>,
    token: ApiToken,
    listener: UnixListener,
    limits: ListenerLimits,
    access: UnixAccess,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let gate = Gate::new(limits, "a frontend connection");
    let token = Arc::new(token);
    let address: Arc<str> = match listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)) {
        Some(path) => path.display().to_string().into(),
        None => "unnamed socket".into(),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(why) = access.admits_stream(&stream) {
                        tracing::warn!("frontend connection refused: {why}");
                        continue;
                    }
                    // A full listener evicts its oldest connection that has not attached, or
                    // (every one attached) closes this one.
                    let Some(admitted) = gate.admit() else { continue };
                    let (host, token, address) = (host.clone(), token.clone(), address.clone());
                    tokio::spawn(alloc_count::scoped(Role::Socket, async move {
                        if let Err(e) = serve_connection(host, &token, address, stream, admitted, limits).await {
                            tracing::info!("frontend connection closed: {e}");
                        }
                    }));
                }
                Err(e) => crate::listen::accept_failed(&e, "a frontend").await,
            },
            () = &mut shutdown => break,
        }
    }
}

fn error_frame(id: u32, message: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    let start = wire::begin(&mut frame, proto::ERROR, id);
    wire::put_str16_lossy(&mut frame, message);
    wire::finish(&mut frame, start, MAX_BODY).expect("a str16 fits a frame");
    frame
}

/// The HELLO's body, or `None` at the end of the stream: read within the handshake deadline,
/// unless the connection is evicted first, and never longer than [`proto::MAX_HELLO_BODY`].
async fn read_hello(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    evicted: &mut crate::listen::Evicted,
    limits: ListenerLimits,
) -> Result<Option<Vec<u8>>, String> {
    tokio::select! {
        read = tokio::time::timeout(limits.handshake_timeout, read_frame(reader, proto::MAX_HELLO_BODY)) => match read {
            Ok(read) => read.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no HELLO within {:?}", limits.handshake_timeout)),
        },
        () = evicted.wait() => Err("evicted: the listener is full and this connection had not attached".into()),
    }
}

async fn serve_connection(
    host: Arc<Host>,
    token: &ApiToken,
    address: Arc<str>,
    stream: UnixStream,
    (mut ticket, mut evicted): (crate::listen::Ticket, crate::listen::Evicted),
    limits: ListenerLimits,
) -> Result<(), String> {
    let (read, write) = stream.into_split();
    // Small until the connection has attached: an unauthenticated client costs little.
    let mut hello_reader = BufReader::with_capacity(4 << 10, read);
    let Some(body) = read_hello(&mut hello_reader, &mut evicted, limits).await? else { return Ok(()) };
    // RESULTS frames are written by the batch loop itself, from its own buffer; the other
    // frames (ATTACHED, ERROR, a shrink's TAKE_BACK from another thread) go through the writer.
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let (frames, mut outgoing) = channel::<Vec<u8>>(OUTGOING_FRAMES);
    let writer_half = write.clone();
    let writer = tokio::spawn(alloc_count::scoped(Role::Socket, async move {
        while let Some(frame) = outgoing.recv().await {
            if writer_half.lock().await.write_all(&frame).await.is_err() {
                break;
            }
        }
    }));
    let attached = attach(&host, token, address, &body, frames.clone()).and_then(|attached| {
        if ticket.establish() { Ok(attached) } else { Err("evicted before it attached".to_string()) }
    });
    let (pool, frontend) = match attached {
        Ok(attached) => attached,
        Err(message) => {
            let _ = frames.try_send(error_frame(0, &message));
            drop(frames);
            let _ = writer.await;
            return Err(message);
        }
    };
    // Attached: now the connection's buffers grow to what batches need (bytes the HELLO
    // reader had already buffered — a pipelining client's first batch — are kept).
    let buffered = hello_reader.buffer().to_vec();
    let mut reader = BufReader::with_capacity(1 << 20, std::io::Cursor::new(buffered).chain(hello_reader.into_inner()));
    let as_frontend: Arc<dyn Frontend> = frontend.clone();
    pool.attach_frontend(as_frontend.clone());
    tracing::info!(pool = %pool.name(), frontend = %frontend.name, "frontend attached");
    let result = serve_batches(&mut reader, &write, &pool, &frontend).await;
    drop(write);
    pool.detach_frontend(&as_frontend);
    frontend.waiting.lock().clear();
    tracing::info!(pool = %pool.name(), frontend = %frontend.name, "frontend detached");
    if let Err(message) = &result {
        let _ = frames.try_send(error_frame(0, message));
    }
    // The writer ends (and the socket closes) once every sender of its frames is gone: ours
    // and the frontend's (a shrink still holding the frontend gets no answer, and gives up).
    drop((frames, frontend, as_frontend));
    let _ = writer.await;
    result
}

fn attach(
    host: &Host,
    token: &ApiToken,
    address: Arc<str>,
    body: &[u8],
    frames: Sender<Vec<u8>>,
) -> Result<(Arc<Pool>, Arc<SocketFrontend>), String> {
    let (kind, id, payload) = wire::parse_body(body).map_err(|e| e.to_string())?;
    if kind != proto::HELLO {
        return Err("the first frame must be HELLO".into());
    }
    let (presented, pool_name, name) = proto::parse_hello(payload).map_err(|e| format!("bad HELLO: {e}"))?;
    let session = host.credentials().authenticate(presented, pool_name, TokenScope::Frontend, token).map_err(|e| {
        format!("{e}: frontends authenticate with a frontend token of the pool (tmem token create POOL) or the host's API token")
    })?;
    let pool = host.frontend_pool(pool_name).map_err(|e| e.to_string())?;
    // A block device's pool is the device's alone.
    pool.check_writer().map_err(|e| e.to_string())?;
    let modes = pool.modes();
    let flags = if modes.writethrough { proto::FLAG_WRITETHROUGH } else { 0 }
        | if modes.exclusive_gets { proto::FLAG_EXCLUSIVE_GETS } else { 0 };
    let mut frame = Vec::new();
    wire::frame(&mut frame, MAX_BODY, proto::ATTACHED, id, &[&pool.page_size().to_le_bytes(), &[flags]])
        .expect("ATTACHED fits a frame");
    // The queue is new: the first frame always fits.
    frames.try_send(frame).map_err(|_| "the connection closed".to_string())?;
    let name = if name.is_empty() { "frontend".to_string() } else { name.to_string() };
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let frontend = Arc::new(SocketFrontend {
        id: format!("socket-{}", CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1),
        name,
        address,
        connected: Instant::now(),
        frames,
        next_id: AtomicU32::new(1),
        waiting: Mutex::new(HashMap::new()),
        counters: FrontendCounters::default(),
        session,
    });
    Ok((pool, frontend))
}

async fn serve_batches(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    write: &tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    pool: &Arc<Pool>,
    frontend: &Arc<SocketFrontend>,
) -> Result<(), String> {
    let page_size = pool.page_size() as usize;
    // The connection's buffers, sized by its largest batch and reused: steady traffic
    // allocates nothing.
    let (mut body, mut out, mut page) = (Vec::new(), Vec::new(), vec![0u8; page_size]);
    while read_frame_into(reader, MAX_BODY, &mut body).await.map_err(|e| e.to_string())? {
        if pool.is_retired() {
            return Err(format!("pool '{}' was destroyed", pool.name()));
        }
        if frontend.session.is_revoked() {
            return Err("the token this connection attached with was revoked".into());
        }
        // A block device attached to the pool since this connection did: it owns the pool now.
        pool.check_writer().map_err(|e| e.to_string())?;
        let (kind, id, payload) = wire::parse_body(&body).map_err(|e| e.to_string())?;
        match kind {
            proto::BATCH => {
                let ops = proto::batch_ops(payload, page_size).map_err(|e| format!("malformed batch: {e}"))?;
                // The answer carries every loaded page: a batch whose answer could not fit a
                // frame is refused before any op runs (a take that ran and could not be
                // answered would lose its page), and no answer buffer grows past a frame.
                let bound = proto::answer_bound(ops.clone(), page_size);
                if bound > MAX_BODY {
                    let loads = ops.clone().filter(|op| matches!(op, Op::Load(_) | Op::Take(_))).count();
                    let most = proto::max_batch(page_size);
                    return Err(format!(
                        "batch {id} ({} ops, {loads} loads of {page_size}-byte pages) could need an answer of {bound} bytes, over {MAX_BODY}; a batch of at most {most} ops always fits (split the batch)",
                        ops.len()
                    ));
                }
                Role::Socket.count_ops(ops.len() as u64);
                // Pool operations are short and bounded by the plugins' deadlines: they run
                // on this task (no hand-off to another thread, which would allocate).
                run_batch(pool, &frontend.counters, id, ops, &mut page, &mut out)
                    .map_err(|e| format!("the answer to batch {id} does not fit a frame: {e}"))?;
                write.lock().await.write_all(&out).await.map_err(|_| "the connection closed".to_string())?;
            }
            proto::TAKEN => {
                let taken = Reader::new(payload).u64("the taken count").map_err(|e| e.to_string())?;
                if let Some(waiting) = frontend.waiting.lock().remove(&id) {
                    let _ = waiting.send(taken);
                }
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
    }
    Ok(())
}

/// Runs a checked batch and encodes its RESULTS frame into `out` (loaded pages through `page`,
/// then in place); an answer too long for a frame is an error.
fn run_batch(
    pool: &Pool,
    counters: &FrontendCounters,
    id: u32,
    ops: proto::BatchOps<'_>,
    page: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<(), wire::WireError> {
    out.clear();
    let start = wire::begin(out, proto::RESULTS, id);
    out.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    counters.batches.fetch_add(1, Ordering::Relaxed);
    for op in ops {
        match op {
            Op::Store(offset, bytes) => {
                counters.stores.fetch_add(1, Ordering::Relaxed);
                match pool.store(offset, bytes) {
                    Ok(StoreOutcome::Stored) => out.push(proto::R_STORED),
                    Ok(StoreOutcome::StoredWritethrough) => out.push(proto::R_STORED_WRITETHROUGH),
                    Ok(StoreOutcome::Rejected(reason)) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        out.push(proto::R_REJECTED);
                        put_message(out, reason.name());
                    }
                    Err(e) => failed(out, &e.to_string()),
                }
            }
            Op::Load(offset) | Op::Take(offset) => {
                counters.loads.fetch_add(1, Ordering::Relaxed);
                let result = if matches!(op, Op::Take(_)) { pool.take(offset, page) } else { pool.load(offset, page) };
                match result {
                    Ok(LoadOutcome::Loaded { exclusive }) => {
                        out.push(proto::R_LOADED);
                        out.push(exclusive as u8);
                        out.extend_from_slice(page);
                    }
                    // The page left the pool's map but its removal is not on disk (the pool
                    // disabled itself and logged it): the frontend is handed the page all the
                    // same — it holds the only sure copy now, and a FAILED answer would lose it.
                    Err(OpError::NotDurable { .. }) => {
                        out.push(proto::R_LOADED);
                        out.push(1);
                        out.extend_from_slice(page);
                    }
                    Ok(LoadOutcome::Absent) => {
                        counters.absent.fetch_add(1, Ordering::Relaxed);
                        out.push(proto::R_ABSENT);
                    }
                    Err(e) => failed(out, &e.to_string()),
                }
            }
            Op::Invalidate(offset) => {
                counters.invalidates.fetch_add(1, Ordering::Relaxed);
                match pool.invalidate_page(offset) {
                    Ok(present) => {
                        out.push(proto::R_INVALIDATED);
                        out.push(present as u8);
                    }
                    Err(e) => failed(out, &e.to_string()),
                }
            }
            Op::InvalidateArea => {
                let present = pool.pages_with_tiers() > 0;
                match pool.invalidate_area() {
                    Ok(()) => {
                        out.push(proto::R_INVALIDATED);
                        out.push(present as u8);
                    }
                    Err(e) => failed(out, &e.to_string()),
                }
            }
        }
    }
    wire::finish(out, start, MAX_BODY)
}

fn failed(out: &mut Vec<u8>, message: &str) {
    out.push(proto::R_FAILED);
    put_message(out, message);
}

/// A result's message as a `str16` of at most [`proto::MAX_RESULT_MESSAGE`] bytes (cut at a
/// character boundary), so an answer never outgrows [`proto::answer_bound`].
fn put_message(out: &mut Vec<u8>, message: &str) {
    let mut end = message.len().min(proto::MAX_RESULT_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    wire::put_str16_lossy(out, &message[..end]);
}
