//! The frontend socket: frontends (userfaultfd regions, block devices) reach pools over a Unix
//! socket (`DATA_DIR/tmem.sock`, mode 0600; `tmem serve --socket PATH` to move it) speaking the
//! frontend protocol ([`tmem_api::frontend`]): batched, pipelined, binary.
//!
//! A connection attaches to one pool (HELLO with the API token) and becomes one of the pool's
//! [`Frontend`]s: the pool's shrink asks it to take pages back (a TAKE_BACK frame; the client
//! takes them with batched take ops and answers TAKEN). Every batch is decoded completely
//! before any op runs, so a malformed frame does nothing but earn an ERROR and a closed
//! connection. A frontend that disconnects is detached; its pool keeps every page it stored.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tmem_api::frontend::{self as wire, Op, Reader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::{Frontend, FrontendKind};
use crate::host::Host;
use crate::pool::{LoadOutcome, Pool, StoreOutcome};
use crate::rest::auth::ApiToken;

/// How long the host waits for a frontend to take pages back before giving up on it.
pub const TAKE_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The default socket path in a data dir.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("tmem.sock")
}

/// Binds the socket (replacing a stale file from an earlier run) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("the frontend socket {} is in use by another tmem serve", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind the frontend socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
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
    frames: UnboundedSender<Vec<u8>>,
    next_id: AtomicU32,
    waiting: Mutex<HashMap<u32, mpsc::SyncSender<u64>>>,
    counters: FrontendCounters,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) | wire::HOST_ID_BIT;
        let (tx, rx) = mpsc::sync_channel(1);
        self.waiting.lock().insert(id, tx);
        let mut payload = Vec::with_capacity(4 + offsets.len() * 8);
        payload.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
        for offset in offsets {
            payload.extend_from_slice(&offset.to_le_bytes());
        }
        let mut frame = Vec::new();
        wire::frame(&mut frame, wire::TAKE_BACK, id, &[&payload]);
        if self.frames.send(frame).is_err() {
            self.waiting.lock().remove(&id);
            return 0;
        }
        let taken = rx.recv_timeout(TAKE_BACK_TIMEOUT).unwrap_or_else(|_| {
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

/// Serves frontends on `listener` until `shutdown` completes.
pub async fn serve_frontends(
    host: Arc<Host>,
    token: ApiToken,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
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
                    let (host, token, address) = (host.clone(), token.clone(), address.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(host, &token, address, stream).await {
                            tracing::info!("frontend connection closed: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("accepting a frontend failed: {e}"),
            },
            () = &mut shutdown => break,
        }
    }
}

/// Reads one length-prefixed frame body (`[len u32 LE][body]`, 5 to `max_body` bytes) — the
/// framing the frontend and peer protocols share; `None` at a clean end of stream (between
/// frames).
pub(crate) async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    max_body: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(5..=max_body).contains(&len) {
        return Err(format!("frame of {len} bytes (a body is 5 to {max_body} bytes)"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| format!("truncated frame: {e}"))?;
    Ok(Some(body))
}

fn error_frame(id: u32, message: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    wire::put_str(&mut payload, message);
    let mut frame = Vec::new();
    wire::frame(&mut frame, wire::ERROR, id, &[&payload]);
    frame
}

async fn serve_connection(
    host: Arc<Host>,
    token: &ApiToken,
    address: Arc<str>,
    stream: UnixStream,
) -> Result<(), String> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(1 << 20, read);
    let (frames, mut outgoing) = unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let Some(body) = read_frame(&mut reader, wire::MAX_BODY).await? else { return Ok(()) };
    let attached = attach(&host, token, address, &body, frames.clone());
    let (pool, frontend) = match attached {
        Ok(attached) => attached,
        Err(message) => {
            let _ = frames.send(error_frame(0, &message));
            drop(frames);
            let _ = writer.await;
            return Err(message);
        }
    };
    let as_frontend: Arc<dyn Frontend> = frontend.clone();
    pool.attach_frontend(as_frontend.clone());
    tracing::info!(pool = %pool.name(), frontend = %frontend.name, "frontend attached");
    let result = serve_batches(&mut reader, &pool, &frontend).await;
    pool.detach_frontend(&as_frontend);
    frontend.waiting.lock().clear();
    tracing::info!(pool = %pool.name(), frontend = %frontend.name, "frontend detached");
    if let Err(message) = &result {
        let _ = frames.send(error_frame(0, message));
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
    frames: UnboundedSender<Vec<u8>>,
) -> Result<(Arc<Pool>, Arc<SocketFrontend>), String> {
    let (kind, id, payload) = wire::parse_body(body).map_err(|e| e.0.to_string())?;
    if kind != wire::HELLO {
        return Err("the first frame must be HELLO".into());
    }
    let mut r = Reader::new(payload);
    let hello = (|| Ok::<_, wire::Malformed>((r.u8("version")?, r.str("token")?, r.str("pool")?, r.str("name")?)))();
    let (version, presented, pool_name, name) = hello.map_err(|e| format!("malformed HELLO: {}", e.0))?;
    if version != wire::VERSION {
        return Err(format!(
            "frontend protocol version {version} is not supported (this host speaks {})",
            wire::VERSION
        ));
    }
    if !token.matches(presented) {
        return Err("wrong token: frontends authenticate with the host's API token".into());
    }
    let pool = host.pool(pool_name).map_err(|e| e.to_string())?;
    let modes = pool.modes();
    let flags = if modes.writethrough { wire::FLAG_WRITETHROUGH } else { 0 }
        | if modes.exclusive_gets { wire::FLAG_EXCLUSIVE_GETS } else { 0 };
    let mut frame = Vec::new();
    wire::frame(&mut frame, wire::ATTACHED, id, &[&pool.page_size().to_le_bytes(), &[flags]]);
    frames.send(frame).map_err(|_| "the connection closed".to_string())?;
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
    });
    Ok((pool, frontend))
}

async fn serve_batches(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    pool: &Arc<Pool>,
    frontend: &Arc<SocketFrontend>,
) -> Result<(), String> {
    let page_size = pool.page_size() as usize;
    while let Some(body) = read_frame(reader, wire::MAX_BODY).await? {
        let (kind, id, payload) = wire::parse_body(&body).map_err(|e| e.0.to_string())?;
        match kind {
            wire::BATCH => {
                let ops = wire::parse_batch(payload, page_size).map_err(|e| format!("malformed batch: {}", e.0))?;
                // Pool operations are short and bounded by the plugins' deadlines: run them on
                // this worker (tokio moves its other tasks away) rather than hop threads.
                let frame = tokio::task::block_in_place(|| run_batch(pool, &frontend.counters, id, &ops, page_size));
                frontend.frames.send(frame).map_err(|_| "the connection closed".to_string())?;
            }
            wire::TAKEN => {
                let taken = Reader::new(payload).u64("taken count").map_err(|e| e.0.to_string())?;
                if let Some(waiting) = frontend.waiting.lock().remove(&id) {
                    let _ = waiting.send(taken);
                }
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
    }
    Ok(())
}

/// Runs a decoded batch and encodes its RESULTS frame (loaded pages written in place).
fn run_batch(pool: &Pool, counters: &FrontendCounters, id: u32, ops: &[Op<'_>], page_size: usize) -> Vec<u8> {
    let loads = ops.iter().filter(|op| matches!(op, Op::Load(_) | Op::Take(_))).count();
    let mut out = Vec::with_capacity(11 + ops.len() * 2 + loads * (page_size + 1));
    wire::begin_frame(&mut out, wire::RESULTS, id);
    out.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    counters.batches.fetch_add(1, Ordering::Relaxed);
    let mut page = vec![0u8; page_size];
    for op in ops {
        match *op {
            Op::Store(offset, bytes) => {
                counters.stores.fetch_add(1, Ordering::Relaxed);
                match pool.store(offset, bytes) {
                    Ok(StoreOutcome::Stored) => out.push(wire::R_STORED),
                    Ok(StoreOutcome::StoredWritethrough) => out.push(wire::R_STORED_WRITETHROUGH),
                    Ok(StoreOutcome::Rejected(reason)) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        out.push(wire::R_REJECTED);
                        wire::put_str(&mut out, reason.name());
                    }
                    Err(e) => failed(&mut out, &e.to_string()),
                }
            }
            Op::Load(offset) | Op::Take(offset) => {
                counters.loads.fetch_add(1, Ordering::Relaxed);
                let result =
                    if matches!(op, Op::Take(_)) { pool.take(offset, &mut page) } else { pool.load(offset, &mut page) };
                match result {
                    Ok(LoadOutcome::Loaded { exclusive }) => {
                        out.push(wire::R_LOADED);
                        out.push(exclusive as u8);
                        out.extend_from_slice(&page);
                    }
                    Ok(LoadOutcome::Absent) => {
                        counters.absent.fetch_add(1, Ordering::Relaxed);
                        out.push(wire::R_ABSENT);
                    }
                    Err(e) => failed(&mut out, &e.to_string()),
                }
            }
            Op::Invalidate(offset) => {
                counters.invalidates.fetch_add(1, Ordering::Relaxed);
                out.push(wire::R_INVALIDATED);
                out.push(pool.invalidate_page(offset) as u8);
            }
            Op::InvalidateArea => {
                let present = pool.curr_pages() > 0;
                pool.invalidate_area();
                out.push(wire::R_INVALIDATED);
                out.push(present as u8);
            }
        }
    }
    wire::finish_frame(&mut out);
    out
}

fn failed(out: &mut Vec<u8>, message: &str) {
    out.push(wire::R_FAILED);
    wire::put_str(out, message);
}
