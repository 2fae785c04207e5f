//! [`FrontendClient`]: a frontend's connection to a pool over the host's Unix socket, speaking
//! the frontend protocol ([`tmem_api::frontend`]).
//!
//! One connection is shared by any number of threads: each request gets an id, a reader
//! thread hands every answer to the thread waiting for it, so requests from several threads
//! are pipelined on the socket. Operations travel in batches (one frame, one round trip, for
//! up to [`MAX_BATCH`] pages, fewer of large pages). When the host shrinks the pool it sends a take-back request;
//! a worker thread takes those pages ([`Op::Take`]) and hands each to the sink registered with
//! [`FrontendClient::on_take_back`] — the frontend's own device — then tells the host how many
//! it took. Without a sink, nothing is taken (the host's shrink then reports no progress).
//!
//! ```no_run
//! use tmem_frontend::client::{FrontendClient, Op, OpResult};
//! let client = FrontendClient::connect("tmem-data/tmem.sock".as_ref(), "TOKEN", "demo", "my-app")?;
//! let page = vec![7u8; client.page_size()];
//! let results = client.batch(&[Op::Store(1, &page), Op::Load(1)])?;
//! assert!(matches!(results[1], OpResult::Loaded { .. }));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tmem_api::frontend::{self as proto, MAX_BODY};
pub use tmem_api::frontend::{MAX_BATCH, Op};
use tmem_api::wire::{self, Reader, WireError};

use crate::{PageBackend, Stored};

/// The answer to one op of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Stored.
    Stored,
    /// Stored; keep your own copy too (writethrough).
    StoredWritethrough,
    /// Refused (the reason is a counter name); keep the page yourself.
    Rejected(String),
    /// The page.
    Loaded {
        /// The load also removed it (exclusive gets, or a take).
        exclusive: bool,
        /// One page.
        page: Vec<u8>,
    },
    /// No page there.
    Absent,
    /// Invalidated; whether a page was there.
    Invalidated(bool),
    /// The op failed (a present page that could not be produced: data loss, reported).
    Failed(String),
}

/// Receives the pages the host hands back when it shrinks the pool: `(offset, page)`.
pub type TakeBackSink = Box<dyn FnMut(u64, &[u8]) + Send>;

type Reply = io::Result<(u8, Vec<u8>)>;

struct Shared {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u32, SyncSender<Reply>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    sink: Mutex<Option<TakeBackSink>>,
    page_size: usize,
}

/// A connection to one pool.
pub struct FrontendClient {
    shared: Arc<Shared>,
    flags: u8,
    reader: Option<JoinHandle<()>>,
    taker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FrontendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendClient").field("page_size", &self.shared.page_size).finish_non_exhaustive()
    }
}

/// The host's next frame; its end of the connection is an error here.
fn read_frame(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    wire::read_frame(stream, MAX_BODY)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the host closed the connection"))
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A frame this client cannot build (over [`MAX_BODY`], a string over 65535 bytes).
fn unsendable(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

impl Shared {
    fn send(&self, kind: u8, id: u32, payload: &[&[u8]]) -> io::Result<()> {
        let mut frame = Vec::new();
        wire::frame(&mut frame, MAX_BODY, kind, id, payload).map_err(unsendable)?;
        self.writer.lock().expect("writer lock").write_all(&frame)
    }

    /// Sends a request whose frame `build` writes in place (after its header), and waits for
    /// the answer.
    fn call(&self, kind: u8, build: impl FnOnce(&mut Vec<u8>)) -> Reply {
        if self.closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the connection to the host is closed"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !proto::HOST_ID_BIT;
        let mut frame = Vec::new();
        let start = wire::begin(&mut frame, kind, id);
        build(&mut frame);
        wire::finish(&mut frame, start, MAX_BODY).map_err(unsendable)?;
        let (tx, rx) = sync_channel(1);
        self.pending.lock().expect("pending lock").insert(id, tx);
        if let Err(e) = self.writer.lock().expect("writer lock").write_all(&frame) {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(e);
        }
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::BrokenPipe, "the connection to the host closed")))
    }

    fn batch(&self, ops: &[Op<'_>]) -> io::Result<Vec<OpResult>> {
        let mut results = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(proto::max_batch(self.page_size)) {
            if let Some(Op::Store(_, page)) =
                chunk.iter().find(|op| matches!(op, Op::Store(_, page) if page.len() != self.page_size))
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a page is {} bytes, the pool's are {}", page.len(), self.page_size),
                ));
            }
            let (kind, answer) = self.call(proto::BATCH, |frame| {
                frame.reserve(2 + chunk.len() * (9 + self.page_size));
                frame.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
                for op in chunk {
                    proto::put_op(frame, op);
                }
            })?;
            if kind == proto::ERROR {
                let message = Reader::new(&answer).str16("the message").unwrap_or("(unreadable)").to_string();
                return Err(io::Error::other(format!("the host refused the batch: {message}")));
            }
            if kind != proto::RESULTS {
                return Err(invalid("unexpected answer to a batch"));
            }
            results.extend(parse_results(&answer, chunk.len(), self.page_size).map_err(invalid)?);
        }
        Ok(results)
    }
}

fn parse_results(payload: &[u8], expected: usize, page_size: usize) -> Result<Vec<OpResult>, WireError> {
    let mut r = Reader::new(payload);
    let count = r.u16("the result count")? as usize;
    if count != expected {
        return Err(WireError::Invalid("not one result per op"));
    }
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        results.push(match r.u8("a result")? {
            proto::R_STORED => OpResult::Stored,
            proto::R_STORED_WRITETHROUGH => OpResult::StoredWritethrough,
            proto::R_REJECTED => OpResult::Rejected(r.str16("the reason")?.to_string()),
            proto::R_LOADED => {
                let exclusive = r.u8("the flags")? & 1 == 1;
                OpResult::Loaded { exclusive, page: r.bytes(page_size, "a loaded page")?.to_vec() }
            }
            proto::R_ABSENT => OpResult::Absent,
            proto::R_INVALIDATED => OpResult::Invalidated(r.u8("was present")? == 1),
            proto::R_FAILED => OpResult::Failed(r.str16("the message")?.to_string()),
            value => return Err(WireError::Unknown { what: "result", value }),
        });
    }
    Ok(results)
}

impl FrontendClient {
    /// Connects to the host's socket, authenticates with `token` (a frontend token of `pool`,
    /// or the host's API token), and attaches to
    /// `pool` as frontend `name` (shown by the host's API).
    pub fn connect(socket: &Path, token: &str, pool: &str, name: &str) -> io::Result<FrontendClient> {
        let mut stream = UnixStream::connect(socket).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot connect to the tmem socket {}: {e}", socket.display()))
        })?;
        let hello = proto::hello_payload(token, pool, name).map_err(unsendable)?;
        let mut frame = Vec::new();
        // The host reads a HELLO only up to its own, small limit (it is not authenticated yet).
        wire::frame(&mut frame, proto::MAX_HELLO_BODY, proto::HELLO, 0, &[&hello]).map_err(unsendable)?;
        stream.write_all(&frame)?;
        let body = read_frame(&mut stream)?;
        let (kind, _, payload) = wire::parse_body(&body).map_err(invalid)?;
        let mut r = Reader::new(payload);
        if kind == proto::ERROR {
            let message = r.str16("the message").unwrap_or("(unreadable)");
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the host refused to attach: {message}"),
            ));
        }
        if kind != proto::ATTACHED {
            return Err(invalid("unexpected answer to HELLO"));
        }
        let page_size = r.u32("the page size").map_err(invalid)? as usize;
        let flags = r.u8("the flags").map_err(invalid)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream.try_clone()?),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            sink: Mutex::new(None),
            page_size,
        });
        let (take_tx, take_rx) = channel::<(u32, Vec<u64>)>();
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tmem-frontend-rx".into())
                .spawn(move || run_reader(stream, &shared, take_tx))?
        };
        let taker = {
            let shared = shared.clone();
            std::thread::Builder::new().name("tmem-take-back".into()).spawn(move || run_taker(&shared, take_rx))?
        };
        Ok(FrontendClient { shared, flags, reader: Some(reader), taker: Some(taker) })
    }

    /// Bytes per page of the pool.
    pub fn page_size(&self) -> usize {
        self.shared.page_size
    }

    /// The pool was writethrough when this frontend attached (each store also says so).
    pub fn writethrough(&self) -> bool {
        self.flags & proto::FLAG_WRITETHROUGH != 0
    }

    /// The pool had exclusive gets when this frontend attached.
    pub fn exclusive_gets(&self) -> bool {
        self.flags & proto::FLAG_EXCLUSIVE_GETS != 0
    }

    /// Runs `ops` in as few round trips as possible (batches of up to [`MAX_BATCH`] ops, fewer
    /// of large pages: `tmem_api::frontend::max_batch`); one
    /// result per op, in order. Safe to call from several threads at once (pipelined).
    pub fn batch(&self, ops: &[Op<'_>]) -> io::Result<Vec<OpResult>> {
        self.shared.batch(ops)
    }

    /// Registers where pages the host hands back (shrink) go.
    pub fn on_take_back(&self, sink: TakeBackSink) {
        *self.shared.sink.lock().expect("sink lock") = Some(sink);
    }

    fn one(&self, op: Op<'_>) -> io::Result<OpResult> {
        Ok(self.batch(&[op])?.remove(0))
    }
}

impl PageBackend for FrontendClient {
    fn page_size(&self) -> usize {
        self.shared.page_size
    }

    fn store_many(&mut self, pages: &[(u64, &[u8])]) -> io::Result<Vec<Stored>> {
        let ops: Vec<Op<'_>> = pages.iter().map(|&(offset, page)| Op::Store(offset, page)).collect();
        self.batch(&ops)?
            .into_iter()
            .map(|r| match r {
                OpResult::Stored => Ok(Stored::Kept),
                OpResult::StoredWritethrough => Ok(Stored::KeptWritethrough),
                OpResult::Rejected(reason) => Ok(Stored::Rejected(reason)),
                other => Err(invalid(format!("unexpected answer to a store: {other:?}"))),
            })
            .collect()
    }

    fn load(&mut self, offset: u64, page: &mut [u8]) -> io::Result<bool> {
        match self.one(Op::Load(offset))? {
            OpResult::Loaded { page: bytes, .. } => {
                page.copy_from_slice(&bytes);
                Ok(true)
            }
            OpResult::Absent => Ok(false),
            OpResult::Failed(message) => Err(io::Error::other(message)),
            other => Err(invalid(format!("unexpected answer to a load: {other:?}"))),
        }
    }

    /// One batch of loads (one round trip for up to `max_batch` pages).
    fn load_many(&mut self, offsets: &[u64], pages: &mut [u8], found: &mut [bool]) -> io::Result<()> {
        let ps = self.shared.page_size;
        let ops: Vec<Op<'_>> = offsets.iter().map(|&offset| Op::Load(offset)).collect();
        let results = self.batch(&ops)?;
        for (i, result) in results.into_iter().enumerate() {
            found[i] = match result {
                OpResult::Loaded { page, .. } => {
                    pages[i * ps..(i + 1) * ps].copy_from_slice(&page);
                    true
                }
                OpResult::Absent | OpResult::Failed(_) => false,
                other => return Err(invalid(format!("unexpected answer to a load: {other:?}"))),
            };
        }
        Ok(())
    }

    fn invalidate(&mut self, offset: u64) -> io::Result<()> {
        self.one(Op::Invalidate(offset)).map(drop)
    }

    fn invalidate_area(&mut self) -> io::Result<()> {
        self.one(Op::InvalidateArea).map(drop)
    }
}

fn run_reader(mut stream: UnixStream, shared: &Shared, take_back: Sender<(u32, Vec<u64>)>) {
    let failure = loop {
        let body = match read_frame(&mut stream) {
            Ok(body) => body,
            Err(e) => break e,
        };
        let Ok((kind, id, payload)) = wire::parse_body(&body) else { break invalid("a malformed frame from the host") };
        if kind == proto::TAKE_BACK {
            let mut r = Reader::new(payload);
            let offsets: Result<Vec<u64>, _> =
                r.u32("the count").and_then(|n| (0..n).map(|_| r.u64("an offset")).collect());
            match offsets {
                Ok(offsets) => {
                    let _ = take_back.send((id, offsets));
                }
                Err(e) => break invalid(e),
            }
            continue;
        }
        let waiting = shared.pending.lock().expect("pending lock").remove(&id);
        match waiting {
            Some(tx) => {
                let _ = tx.send(Ok((kind, payload.to_vec())));
            }
            // An ERROR for no request (a frame the host could not read): the host closes.
            None if kind == proto::ERROR => {
                break io::Error::other(Reader::new(payload).str16("the message").unwrap_or("error").to_string());
            }
            None => {}
        }
    };
    shared.closed.store(true, Ordering::Relaxed);
    let waiting: Vec<SyncSender<Reply>> =
        shared.pending.lock().expect("pending lock").drain().map(|(_, tx)| tx).collect();
    for tx in waiting {
        let _ = tx.send(Err(io::Error::new(failure.kind(), failure.to_string())));
    }
}

fn run_taker(shared: &Shared, requests: Receiver<(u32, Vec<u64>)>) {
    for (id, offsets) in requests {
        let mut taken = 0u64;
        let mut sink = shared.sink.lock().expect("sink lock");
        if let Some(sink) = sink.as_mut() {
            // One frame per batch, sized by bytes (`max_batch`: the answer's pages fit a
            // frame): a batch the host answered is handed to the sink whole. (A batch split
            // in several frames would drop the pages of the frames already answered — and
            // already taken from the pool — when a later one failed.)
            for chunk in offsets.chunks(proto::max_batch(shared.page_size)) {
                let ops: Vec<Op<'_>> = chunk.iter().map(|&o| Op::Take(o)).collect();
                let Ok(results) = shared.batch(&ops) else { break };
                for (&offset, result) in chunk.iter().zip(results) {
                    if let OpResult::Loaded { page, .. } = result {
                        sink(offset, &page);
                        taken += 1;
                    }
                }
            }
        }
        drop(sink);
        if shared.send(proto::TAKEN, id, &[&taken.to_le_bytes()]).is_err() {
            return;
        }
    }
}

impl Drop for FrontendClient {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        if let Ok(writer) = self.shared.writer.lock() {
            let _ = writer.shutdown(std::net::Shutdown::Both);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(taker) = self.taker.take() {
            let _ = taker.join();
        }
    }
}
