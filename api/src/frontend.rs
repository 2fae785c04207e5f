//! The frontend protocol: how a frontend (an application's userfaultfd region, a block
//! device) talks to the host's pools over the local Unix socket (`DATA_DIR/tmem.sock`, mode
//! 0600, or `tmem serve --socket PATH`). Binary, length-prefixed, batched and pipelined; the
//! one definition both sides use (the host in `host/src/frontend/socket.rs`, the client in
//! `tmem_frontend::client`).
//!
//! # Frames
//!
//! Framing, ids, pipelining and `str16` are the shared ones of [`wire`], with a body of at
//! most [`MAX_BODY`] bytes. The client numbers its requests; the host answers each with one
//! frame carrying the same id, in order, so a client may send many before reading.
//! The host may also send [`TAKE_BACK`] at any time (with its own ids, [`HOST_ID_BIT`] set).
//!
//! # Client → host
//!
//! | kind | payload | answer |
//! |---|---|---|
//! | [`HELLO`] | `[version u8 = 1][token: str16][pool: str16][frontend name: str16]` | [`ATTACHED`] `[page size u32][flags u8]` ([`FLAG_WRITETHROUGH`], [`FLAG_EXCLUSIVE_GETS`]) or [`ERROR`] (then closed) |
//! | [`BATCH`] | `[count u16]` then `count` ops, each `[op u8][offset u64]` and, for [`OP_STORE`], one page of bytes | [`RESULTS`] `[count u16]` then one result per op, in order |
//! | [`TAKEN`] | `[count u64]` — the answer to a [`TAKE_BACK`] (same id): how many pages it took | — |
//!
//! Ops: [`OP_STORE`], [`OP_LOAD`], [`OP_TAKE`] (load and invalidate in one step, whatever the
//! pool's mode: for taking pages back), [`OP_INVALIDATE`], [`OP_INVALIDATE_AREA`] (offset
//! ignored). A batch holds at most [`MAX_BATCH`] ops, and fewer for large pages
//! ([`max_batch`]: the request and its answer must fit a frame).
//!
//! Results: [`R_STORED`], [`R_STORED_WRITETHROUGH`] (the frontend must also write the page to
//! its device), [`R_REJECTED`] `[reason: str16]` (the frontend keeps the page itself; any older
//! copy in the pool is gone), [`R_LOADED`] `[flags u8: 1 = exclusive][one page]`,
//! [`R_ABSENT`], [`R_INVALIDATED`] `[was present u8]`, [`R_FAILED`] `[message: str16]` (a
//! load that could not be served: data loss reported loudly, or a bad op).
//!
//! # Host → client
//!
//! [`TAKE_BACK`] `[count u32][offsets u64…]`: the host is shrinking the pool; the frontend
//! takes these offsets back ([`OP_TAKE`]), keeps them on its own device, and answers
//! [`TAKEN`] with the same id. [`ERROR`] `[message: str16]`: a malformed frame (the host then
//! closes the connection; nothing stored is touched).
//!
//! # Security
//!
//! The socket file is mode 0600 (only the host's user can connect), and HELLO must carry a
//! frontend token of the pool (or the host's API token): one user cannot attach to — or
//! read — another's pool.

use crate::wire::{self, Reader, WireError};

/// Highest body length accepted: a batch of pages must fit (a frame of 64 MiB).
pub const MAX_BODY: usize = 64 << 20;
/// The longest HELLO body the host reads: a connection's first frame is read before it has
/// authenticated, so it may not make the host allocate more than this (a token, a pool name
/// and a frontend name are short).
pub const MAX_HELLO_BODY: usize = 16 << 10;
/// The longest message a result carries ([`R_REJECTED`]'s reason, [`R_FAILED`]'s message):
/// longer ones are cut, so the largest answer a batch can have is known before it runs
/// ([`answer_bound`]).
pub const MAX_RESULT_MESSAGE: usize = 1024;
/// The protocol version in HELLO.
pub const VERSION: u8 = 1;
/// The most ops in one batch.
pub const MAX_BATCH: usize = 4096;

/// Request: attach to a pool.
pub const HELLO: u8 = 1;
/// Request: a batch of operations.
pub const BATCH: u8 = 2;
/// Answer to a TAKE_BACK.
pub const TAKEN: u8 = 3;

/// Answer to HELLO.
pub const ATTACHED: u8 = 128;
/// Answer to BATCH.
pub const RESULTS: u8 = 129;
/// From the host: take these offsets back.
pub const TAKE_BACK: u8 = 130;
/// An error (then the connection is closed).
pub const ERROR: u8 = 131;

/// The pool is writethrough.
pub const FLAG_WRITETHROUGH: u8 = 1;
/// The pool has exclusive gets.
pub const FLAG_EXCLUSIVE_GETS: u8 = 2;

/// Op: store one page.
pub const OP_STORE: u8 = 1;
/// Op: load one page.
pub const OP_LOAD: u8 = 2;
/// Op: load and invalidate one page.
pub const OP_TAKE: u8 = 3;
/// Op: invalidate one page.
pub const OP_INVALIDATE: u8 = 4;
/// Op: invalidate every page.
pub const OP_INVALIDATE_AREA: u8 = 5;

/// Result: stored.
pub const R_STORED: u8 = 0;
/// Result: stored; also write it to your device.
pub const R_STORED_WRITETHROUGH: u8 = 1;
/// Result: refused, with the reason.
pub const R_REJECTED: u8 = 2;
/// Result: the page follows.
pub const R_LOADED: u8 = 3;
/// Result: no page there.
pub const R_ABSENT: u8 = 4;
/// Result: invalidated (was it present).
pub const R_INVALIDATED: u8 = 5;
/// Result: the op failed, with a message.
pub const R_FAILED: u8 = 6;

/// Host-assigned ids (TAKE_BACK) have this bit set, so they never meet a client's.
pub const HOST_ID_BIT: u32 = 1 << 31;

/// The most ops one batch may carry for pages of `page_size` bytes: [`MAX_BATCH`], or fewer
/// where that many stored pages (in the request) or loaded pages (in the answer) would not
/// fit a frame of [`MAX_BODY`].
pub fn max_batch(page_size: usize) -> usize {
    // Per op at most `[op][offset][page]` in a request, `[result][flags][page]` or
    // `[result][message]` in an answer.
    ((MAX_BODY - wire::BODY_HEADER - 2) / (9 + page_size).max(3 + MAX_RESULT_MESSAGE)).clamp(1, MAX_BATCH)
}

/// The most bytes the answer to a batch of `ops` can take for pages of `page_size` bytes
/// (the RESULTS body, with its header): a loaded page per load or take, a result message of
/// at most [`MAX_RESULT_MESSAGE`] bytes per other op. The host refuses a batch whose bound is
/// over [`MAX_BODY`] before running any of it.
pub fn answer_bound<'a>(ops: impl IntoIterator<Item = Op<'a>>, page_size: usize) -> usize {
    let per_op = |op: Op<'_>| match op {
        Op::Load(_) | Op::Take(_) => 2 + page_size,
        _ => 1 + 2 + MAX_RESULT_MESSAGE,
    };
    ops.into_iter().fold(wire::BODY_HEADER + 2, |sum, op| sum.saturating_add(per_op(op)))
}

/// The HELLO payload.
pub fn hello_payload(token: &str, pool: &str, name: &str) -> Result<Vec<u8>, WireError> {
    let mut payload = vec![VERSION];
    for text in [token, pool, name] {
        wire::put_str16(&mut payload, text)?;
    }
    Ok(payload)
}

/// Splits a HELLO payload into `(token, pool, frontend name)`.
pub fn parse_hello(payload: &[u8]) -> Result<(&str, &str, &str), WireError> {
    let mut r = Reader::new(payload);
    let version = r.u8("the version")?;
    if version != VERSION {
        return Err(WireError::Version { protocol: "frontend", got: version, supported: VERSION });
    }
    Ok((r.str16("the token")?, r.str16("the pool name")?, r.str16("the frontend name")?))
}

/// One op of a batch, as decoded by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Store the page.
    Store(u64, &'a [u8]),
    /// Load a page.
    Load(u64),
    /// Load and invalidate a page.
    Take(u64),
    /// Invalidate a page.
    Invalidate(u64),
    /// Invalidate every page.
    InvalidateArea,
}

/// Decodes a BATCH payload for a pool of `page_size` pages. Every op is checked before any
/// is returned, so a malformed batch does nothing at all.
pub fn parse_batch(payload: &[u8], page_size: usize) -> Result<Vec<Op<'_>>, WireError> {
    Ok(batch_ops(payload, page_size)?.collect())
}

/// A checked BATCH payload's ops, decoded (again) as they are iterated: a batch served
/// without allocating ([`batch_ops`]).
#[derive(Debug, Clone)]
pub struct BatchOps<'a> {
    ops: Reader<'a>,
    left: usize,
    page_size: usize,
}

/// Checks a BATCH payload for a pool of `page_size` pages — every op, before any is
/// returned, so a malformed batch does nothing at all — and returns its ops.
pub fn batch_ops(payload: &[u8], page_size: usize) -> Result<BatchOps<'_>, WireError> {
    let mut r = Reader::new(payload);
    let count = r.u16("the batch count")? as usize;
    if count > MAX_BATCH {
        return Err(WireError::TooLong { what: "a batch", len: count, max: MAX_BATCH });
    }
    let ops = BatchOps { ops: r.clone(), left: count, page_size };
    for _ in 0..count {
        decode_op(&mut r, page_size)?;
    }
    r.end("the last op")?;
    Ok(ops)
}

fn decode_op<'a>(r: &mut Reader<'a>, page_size: usize) -> Result<Op<'a>, WireError> {
    let op = r.u8("an op")?;
    let offset = r.u64("an offset")?;
    Ok(match op {
        OP_STORE => Op::Store(offset, r.bytes(page_size, "a stored page (one page of bytes)")?),
        OP_LOAD => Op::Load(offset),
        OP_TAKE => Op::Take(offset),
        OP_INVALIDATE => Op::Invalidate(offset),
        OP_INVALIDATE_AREA => Op::InvalidateArea,
        _ => return Err(WireError::Unknown { what: "op", value: op }),
    })
}

impl<'a> Iterator for BatchOps<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        self.left = self.left.checked_sub(1)?;
        Some(decode_op(&mut self.ops, self.page_size).expect("checked by batch_ops"))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for BatchOps<'_> {}

/// Encodes one op into a BATCH payload being built (after its count).
pub fn put_op(out: &mut Vec<u8>, op: &Op<'_>) {
    let (code, offset, page) = match *op {
        Op::Store(offset, page) => (OP_STORE, offset, Some(page)),
        Op::Load(offset) => (OP_LOAD, offset, None),
        Op::Take(offset) => (OP_TAKE, offset, None),
        Op::Invalidate(offset) => (OP_INVALIDATE, offset, None),
        Op::InvalidateArea => (OP_INVALIDATE_AREA, 0, None),
    };
    out.push(code);
    out.extend_from_slice(&offset.to_le_bytes());
    if let Some(page) = page {
        out.extend_from_slice(page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_malformed_ones_do_nothing() {
        let page = [7u8; 4096];
        let ops = [Op::Store(3, &page), Op::Load(3), Op::Take(4), Op::Invalidate(5), Op::InvalidateArea];
        let mut payload = (ops.len() as u16).to_le_bytes().to_vec();
        for op in &ops {
            put_op(&mut payload, op);
        }
        assert_eq!(parse_batch(&payload, 4096).unwrap(), ops);
        // Every truncation is refused (never a panic, never a partial batch).
        for cut in 0..payload.len() {
            assert!(parse_batch(&payload[..cut], 4096).is_err(), "cut at {cut}");
        }
        assert!(parse_batch(&payload, 8192).is_err(), "a page of the wrong size");
        let mut extra = payload.clone();
        extra.push(0);
        assert!(parse_batch(&extra, 4096).is_err());
        assert_eq!(
            parse_batch(&[0xff, 0xff], 4096),
            Err(WireError::TooLong { what: "a batch", len: 0xffff, max: MAX_BATCH })
        );
    }

    #[test]
    fn hello_round_trips_and_batches_fit_a_frame() {
        let hello = hello_payload("token", "pool", "name").unwrap();
        assert_eq!(&hello[..8], [VERSION, 5, 0, b't', b'o', b'k', b'e', b'n'], "str16s after the version");
        assert_eq!(parse_hello(&hello), Ok(("token", "pool", "name")));
        assert_eq!(parse_hello(&[9]), Err(WireError::Version { protocol: "frontend", got: 9, supported: VERSION }));
        assert!(parse_hello(&hello[..hello.len() - 1]).is_err());
        assert_eq!(max_batch(4096), MAX_BATCH, "small pages: the whole batch");
        for page_size in [4096, 16 << 10, 64 << 10, 2 << 20] {
            let most = max_batch(page_size);
            assert!(2 + most * (9 + page_size) <= MAX_BODY - wire::BODY_HEADER, "{page_size}-byte pages");
        }
        assert_eq!(max_batch(2 << 20), 31);
        for page_size in [4096, 256 << 10, 2 << 20] {
            let most = max_batch(page_size);
            let takes = vec![Op::Take(0); most];
            assert!(answer_bound(takes.iter().copied(), page_size) <= MAX_BODY, "{page_size}-byte takes");
            let invalidates = vec![Op::Invalidate(0); most];
            assert!(answer_bound(invalidates.iter().copied(), page_size) <= MAX_BODY, "{page_size}-byte invalidates");
            let one_more = vec![Op::Take(0); most + 1];
            assert!(
                most == MAX_BATCH || answer_bound(one_more.iter().copied(), page_size) > MAX_BODY,
                "max_batch is the most that fits for {page_size}-byte pages"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders() {
        // A deterministic corpus of mutations (the fuzz-style check that runs in every test run).
        let mut next = wire::tests::xorshift();
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 2 && next().is_multiple_of(2) {
                bytes[0] = (next() % 4) as u8;
                bytes[1] = 0;
            }
            let _ = parse_batch(&bytes, 16);
            let _ = parse_hello(&bytes);
        }
    }
}
