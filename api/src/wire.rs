//! The framing the frontend protocol ([`frontend`](crate::frontend)) and the peer protocol
//! ([`peer`](crate::peer)) share: building and reading frames, and reading their payloads.
//! Each protocol module says what its kinds and payloads are; this one says how they travel.
//!
//! # Frames
//!
//! Every message is one frame, `[body length: u32 LE][body]`, and every body is
//! `[kind: u8][id: u32 LE][payload]`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | body length ([`LEN_BYTES`]), u32 LE: [`BODY_HEADER`] (5) to the protocol's `MAX_BODY` |
//! | 4 | kind: what the message is (the protocol's constants) |
//! | 5..9 | id, u32 LE |
//! | 9.. ([`HEADER_LEN`]) | payload: the body's other bytes, laid out as the kind says |
//!
//! The id pairs an answer with its request: each request is answered by exactly one frame
//! carrying the same id, in the order the requests arrived, so a client may send many
//! requests before reading (pipelining).
//!
//! Integers are little-endian. A `str16` is `[length: u16 LE][UTF-8 bytes]` (at most
//! [`MAX_STR16`] bytes).
//!
//! # Checked lengths
//!
//! A length is never truncated or wrapped. Building: [`finish`] and [`frame`] refuse a body
//! over the protocol's maximum (or over `u32::MAX`) and [`put_str16`] a string over
//! [`MAX_STR16`] bytes, with a [`WireError`]; only [`put_str16_lossy`], for human-readable
//! messages, shortens its text (at a character boundary). Reading: [`body_len`] refuses a
//! length field outside `5..=max_body` before anything is allocated for it, and every
//! [`Reader`] read says when the bytes ran out instead of panicking.
//!
//! # Using it
//!
//! - Building: [`begin`] → append the payload in place → [`finish`]; or [`frame`] with the
//!   payload's parts at hand. Frames can follow each other in one buffer.
//! - Reading a stream: [`read_frame`] (blocking, any [`std::io::Read`]; the host has the async
//!   twin), or [`parse_header`] for the first [`HEADER_LEN`] bytes when the payload is read
//!   into a buffer of the caller's.
//! - Reading a body: [`parse_body`], then a [`Reader`] over the payload.

use std::fmt;
use std::io::{self, Read};

/// Bytes of the length field that starts every frame.
pub const LEN_BYTES: usize = 4;
/// Bytes of a body's header (kind and id): the shortest body there is.
pub const BODY_HEADER: usize = 5;
/// Bytes from the start of a frame to its payload: length, kind and id.
pub const HEADER_LEN: usize = LEN_BYTES + BODY_HEADER;
/// The most bytes a `str16` holds.
pub const MAX_STR16: usize = u16::MAX as usize;

/// What was wrong with a frame or a payload: the one error of both protocols' codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A frame body of `len` bytes, outside `5..=max` (read from a length field, or being
    /// built over the protocol's maximum or over `u32::MAX`).
    FrameLength {
        /// The body's length.
        len: usize,
        /// The protocol's largest body.
        max: usize,
    },
    /// A count or length over its limit (a `str16` of more than 65535 bytes, a batch of too
    /// many ops).
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The bytes ended before `what`.
    Truncated {
        /// What was missing.
        what: &'static str,
    },
    /// `what` is not UTF-8.
    BadUtf8 {
        /// The string.
        what: &'static str,
    },
    /// A code this side does not know: a frame kind, an op, a result.
    Unknown {
        /// What the code is of.
        what: &'static str,
        /// The code.
        value: u8,
    },
    /// Bytes left over after `what`, which should have ended the payload.
    Trailing {
        /// The last thing read.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A HELLO of a protocol version this side does not speak.
    Version {
        /// The protocol ("frontend", "peer").
        protocol: &'static str,
        /// The version sent.
        got: u8,
        /// The version this side speaks.
        supported: u8,
    },
    /// A value the message's rules do not allow.
    Invalid(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameLength { len, max } => {
                write!(f, "frame of {len} bytes (a body is {BODY_HEADER} to {max} bytes)")
            }
            WireError::TooLong { what, len, max } => write!(f, "{what} is {len} long (at most {max})"),
            WireError::Truncated { what } => write!(f, "truncated: shorter than {what}"),
            WireError::BadUtf8 { what } => write!(f, "{what} is not UTF-8"),
            WireError::Unknown { what, value } => write!(f, "unknown {what} {value}"),
            WireError::Trailing { what, extra } => write!(f, "{extra} bytes after {what}"),
            WireError::Version { protocol, got, supported } => {
                write!(f, "{protocol} protocol version {got} is not supported (this side speaks {supported})")
            }
            WireError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for WireError {}

/// The largest body a frame may have under `max_body`: never more than a u32 can say.
fn limit(max_body: usize) -> usize {
    max_body.min(u32::MAX as usize)
}

/// Where a frame being built starts in its buffer; [`finish`] takes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a frame begun must be finished (its length is still zero)"]
pub struct FrameStart(usize);

/// Starts a frame of `kind` and `id` at the end of `out` (which may hold earlier frames), so
/// its payload can be appended in place; [`finish`] writes its length.
pub fn begin(out: &mut Vec<u8>, kind: u8, id: u32) -> FrameStart {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    FrameStart(start)
}

/// Completes the frame [`begin`] started: everything appended to `out` since is its payload.
/// A body over `max_body` (or over `u32::MAX`) is refused with [`WireError::FrameLength`], and
/// the unfinished frame is removed from `out`.
pub fn finish(out: &mut Vec<u8>, start: FrameStart, max_body: usize) -> Result<(), WireError> {
    let len = out.len() - start.0 - LEN_BYTES;
    match u32::try_from(len) {
        Ok(field) if len <= limit(max_body) => {
            out[start.0..start.0 + LEN_BYTES].copy_from_slice(&field.to_le_bytes());
            Ok(())
        }
        _ => {
            out.truncate(start.0);
            Err(WireError::FrameLength { len, max: limit(max_body) })
        }
    }
}

/// Appends a whole frame of `kind` and `id` whose payload is `payload`'s parts, one after
/// the other; checked like [`finish`] (before anything is copied).
pub fn frame(out: &mut Vec<u8>, max_body: usize, kind: u8, id: u32, payload: &[&[u8]]) -> Result<(), WireError> {
    let len = BODY_HEADER + payload.iter().map(|part| part.len()).sum::<usize>();
    if len > limit(max_body) {
        return Err(WireError::FrameLength { len, max: limit(max_body) });
    }
    out.reserve(LEN_BYTES + len);
    let start = begin(out, kind, id);
    for part in payload {
        out.extend_from_slice(part);
    }
    finish(out, start, max_body)
}

/// Appends a `str16`, or refuses text over [`MAX_STR16`] bytes.
pub fn put_str16(out: &mut Vec<u8>, text: &str) -> Result<(), WireError> {
    let len = u16::try_from(text.len()).map_err(|_| WireError::TooLong {
        what: "a str16",
        len: text.len(),
        max: MAX_STR16,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Appends a human-readable message as a `str16`, cut (at a character boundary) to its first
/// [`MAX_STR16`] bytes if longer.
pub fn put_str16_lossy(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_STR16);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    put_str16(out, &text[..end]).expect("cut to fit a str16");
}

/// The body length a frame's length field announces, refused unless `5..=max_body`: check it
/// before allocating anything for the body.
pub fn body_len(field: [u8; LEN_BYTES], max_body: usize) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(field) as usize;
    if (BODY_HEADER..=limit(max_body)).contains(&len) {
        Ok(len)
    } else {
        Err(WireError::FrameLength { len, max: limit(max_body) })
    }
}

/// A frame's header, read before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The kind.
    pub kind: u8,
    /// The id.
    pub id: u32,
    /// How many payload bytes follow.
    pub payload_len: usize,
}

/// Parses the first [`HEADER_LEN`] bytes of a frame, its length checked by [`body_len`].
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_body: usize) -> Result<Header, WireError> {
    let (field, body) = bytes.split_at(LEN_BYTES);
    let len = body_len(field.try_into().expect("4 bytes"), max_body)?;
    let (kind, id, _) = parse_body(body)?;
    Ok(Header { kind, id, payload_len: len - BODY_HEADER })
}

/// Splits a frame body into `(kind, id, payload)`.
pub fn parse_body(body: &[u8]) -> Result<(u8, u32, &[u8]), WireError> {
    let mut r = Reader::new(body);
    let kind = r.u8("a frame header")?;
    let id = r.u32("a frame header")?;
    Ok((kind, id, r.rest()))
}

/// Reads one frame from `reader` and returns its body (ready for [`parse_body`]), or `None`
/// when the stream ends before the next frame's length. The length is checked against
/// `max_body` ([`body_len`], an [`io::ErrorKind::InvalidData`] error carrying the
/// [`WireError`]) before the body is allocated; a stream that ends inside the body is an
/// error ("truncated frame").
pub fn read_frame<R: Read + ?Sized>(reader: &mut R, max_body: usize) -> io::Result<Option<Vec<u8>>> {
    let mut field = [0u8; LEN_BYTES];
    match reader.read_exact(&mut field) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = body_len(field, max_body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| io::Error::new(e.kind(), format!("truncated frame: {e}")))?;
    Ok(Some(body))
}

/// A cursor over a payload that never panics: every read says when the bytes ran out. `what`
/// names the thing being read, for the error ("an offset", "the token").
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Every byte not read yet (the cursor is then at the end).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.bytes(N, what)?.try_into().expect("N bytes"))
    }

    /// A byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.array(what).map(u16::from_le_bytes)
    }

    /// A little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `str16`.
    pub fn str16(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let len = self.u16(what)? as usize;
        core::str::from_utf8(self.bytes(len, what)?).map_err(|_| WireError::BadUtf8 { what })
    }

    /// Refuses bytes left over after `what`, the last thing the payload holds.
    pub fn end(&self, what: &'static str) -> Result<(), WireError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(WireError::Trailing { what, extra }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic stream of pseudo-random numbers (xorshift), for the fuzz-style checks
    /// that run in every test run.
    pub(crate) fn xorshift() -> impl FnMut() -> u64 {
        let mut seed = 0x9e3779b97f4a7c15u64;
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn frames_round_trip_through_build_and_read() {
        let mut out = Vec::new();
        frame(&mut out, 64, 2, 7, &[&42u64.to_le_bytes(), b"page"]).unwrap();
        let start = begin(&mut out, 130, 1 << 31);
        put_str16(&mut out, "héllo").unwrap();
        out.extend_from_slice(&9u32.to_le_bytes());
        finish(&mut out, start, 64).unwrap();
        assert_eq!(&out[..HEADER_LEN], &[17, 0, 0, 0, 2, 7, 0, 0, 0], "the bytes of a frame's header");

        let header = parse_header(out[..HEADER_LEN].try_into().unwrap(), 64).unwrap();
        assert_eq!(header, Header { kind: 2, id: 7, payload_len: 12 });
        let mut stream = &out[..];
        let body = read_frame(&mut stream, 64).unwrap().unwrap();
        let (kind, id, payload) = parse_body(&body).unwrap();
        assert_eq!((kind, id, payload.len()), (2, 7, 12));
        let mut r = Reader::new(payload);
        assert_eq!((r.u64("an offset").unwrap(), r.rest()), (42, &b"page"[..]));
        r.end("the page").unwrap();

        let body = read_frame(&mut stream, 64).unwrap().unwrap();
        let (kind, id, payload) = parse_body(&body).unwrap();
        assert_eq!((kind, id), (130, 1 << 31));
        let mut r = Reader::new(payload);
        assert_eq!(r.str16("a greeting"), Ok("héllo"));
        assert_eq!(r.end("a greeting"), Err(WireError::Trailing { what: "a greeting", extra: 4 }));
        assert_eq!(r.u32("a count"), Ok(9));
        assert!(read_frame(&mut stream, 64).unwrap().is_none(), "a clean end between frames");
    }

    #[test]
    fn lengths_are_checked_never_wrapped() {
        let mut out = vec![1, 2, 3];
        assert_eq!(frame(&mut out, 10, 1, 1, &[&[0; 6]]), Err(WireError::FrameLength { len: 11, max: 10 }));
        let start = begin(&mut out, 1, 1);
        out.extend_from_slice(&[0; 6]);
        assert_eq!(finish(&mut out, start, 10), Err(WireError::FrameLength { len: 11, max: 10 }));
        assert_eq!(out, [1, 2, 3], "a refused frame leaves nothing behind");
        frame(&mut out, 10, 1, 1, &[&[0; 5]]).unwrap();
        assert_eq!(out.len(), 3 + 4 + 10);

        let long = "x".repeat(MAX_STR16 + 1);
        assert_eq!(
            put_str16(&mut out, &long),
            Err(WireError::TooLong { what: "a str16", len: MAX_STR16 + 1, max: MAX_STR16 })
        );
        let mut cut = Vec::new();
        put_str16_lossy(&mut cut, &format!("{}é", "x".repeat(MAX_STR16 - 1)));
        assert_eq!(Reader::new(&cut).str16("a message").map(str::len), Ok(MAX_STR16 - 1), "cut before the é");

        for field in [0u32, 4, 11, u32::MAX] {
            let error = body_len(field.to_le_bytes(), 10).unwrap_err();
            assert_eq!(error, WireError::FrameLength { len: field as usize, max: 10 });
            let mut stream = &field.to_le_bytes()[..];
            let error = read_frame(&mut stream, 10).unwrap_err();
            assert_eq!((error.kind(), error.to_string().starts_with("frame of")), (io::ErrorKind::InvalidData, true));
        }
        assert_eq!(body_len(5u32.to_le_bytes(), 10), Ok(5));
        let mut cut_short = &[10, 0, 0, 0, 1, 2][..];
        assert!(read_frame(&mut cut_short, 10).unwrap_err().to_string().contains("truncated frame"));
    }

    #[test]
    fn readers_refuse_what_is_short_or_not_utf8() {
        assert_eq!(parse_body(&[1, 2]), Err(WireError::Truncated { what: "a frame header" }));
        let mut r = Reader::new(&[3, 0, 0xff, 0xfe, 0xfd]);
        assert_eq!(r.clone().str16("a name"), Err(WireError::BadUtf8 { what: "a name" }));
        assert_eq!(r.bytes(6, "six bytes"), Err(WireError::Truncated { what: "six bytes" }));
        assert_eq!(r.u64("an offset").unwrap_err().to_string(), "truncated: shorter than an offset");
        assert_eq!(r.remaining(), 5, "a failed read consumes nothing");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_readers() {
        let mut next = xorshift();
        for _ in 0..20_000 {
            let len = (next() % 32) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_body(&bytes);
            let mut stream = &bytes[..];
            let _ = read_frame(&mut stream, 16);
            let mut r = Reader::new(&bytes);
            let _ = r.str16("s");
            let _ = r.u64("n");
            let _ = r.end("n");
        }
    }
}
