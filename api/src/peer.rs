//! The peer protocol: how a `remote` store on one tmem host keeps pages in a pool of another,
//! its **peer host** (`tmem serve --peer-listen ADDR`; RAMster's remote RAM). Binary,
//! length-prefixed, pipelined; the one definition both sides use.
//!
//! # Frames
//!
//! Framing, request ids, pipelining and `str16` are the shared ones of [`wire`], with a body
//! of at most [`MAX_BODY`] bytes. The server answers every request with exactly one response
//! carrying the same request id, in the order the requests arrived.
//!
//! | kind | request | payload |
//! |---|---|---|
//! | [`HELLO`] | first frame of a connection | `[version u8 = 1][token: str16][pool name: str16]` |
//! | [`PUT`] | keep bytes under an offset | `[offset u64 LE][bytes]` (the client's encoded page) |
//! | [`GET`] | fetch them | `[offset u64 LE]` |
//! | [`DELETE`] | drop an offset | `[offset u64 LE]` |
//! | [`CLEAR`] | drop everything of the pool | — |
//!
//! | kind | response | payload |
//! |---|---|---|
//! | [`OK`] | done (HELLO accepted, PUT kept, DELETE/CLEAR done) | `[page size u32 LE]` for HELLO, else nothing |
//! | [`DATA`] | GET found | the bytes |
//! | [`NOT_FOUND`] | GET found nothing | — |
//! | [`REJECTED`] | PUT refused (the pool is full, ...) | the reason, UTF-8 (a counter name) |
//! | [`ERROR`] | the request was wrong (bad token, unknown pool, malformed frame) | a message, UTF-8; the server closes the connection after a HELLO error |
//!
//! The token is a peer token of that pool on the serving host (`tmem token create POOL --scope
//! peer`), never its admin token. The pool must be a
//! chain of one store (e.g. `[ram]`): the client already encoded the pages; the server keeps
//! the bytes as they come (at most the pool's page size plus 4 KiB per record) under the
//! pool's frontswap rules (limits, counters, the duplicate-store rule).

use crate::wire::{self, Reader, WireError};

/// Highest body length accepted (a 2 MiB page plus headers).
pub const MAX_BODY: usize = (2 << 20) + 8192;

/// The longest HELLO body a server reads: a connection's first frame is read before it has
/// authenticated, so it may not make the server allocate more than this (a token and a pool
/// name are short).
pub const MAX_HELLO_BODY: usize = 16 << 10;
/// The protocol version sent in HELLO.
pub const VERSION: u8 = 1;

/// Request: authenticate and pick the pool.
pub const HELLO: u8 = 1;
/// Request: keep bytes.
pub const PUT: u8 = 2;
/// Request: fetch bytes.
pub const GET: u8 = 3;
/// Request: drop an offset.
pub const DELETE: u8 = 4;
/// Request: drop everything.
pub const CLEAR: u8 = 5;

/// Response: done.
pub const OK: u8 = 128;
/// Response: the bytes.
pub const DATA: u8 = 129;
/// Response: nothing there.
pub const NOT_FOUND: u8 = 130;
/// Response: the pool refused the bytes.
pub const REJECTED: u8 = 131;
/// Response: the request was wrong.
pub const ERROR: u8 = 132;

/// The HELLO payload.
pub fn hello_payload(token: &str, pool: &str) -> Result<Vec<u8>, WireError> {
    let mut payload = vec![VERSION];
    wire::put_str16(&mut payload, token)?;
    wire::put_str16(&mut payload, pool)?;
    Ok(payload)
}

/// Splits a HELLO payload into `(token, pool)`.
pub fn parse_hello(payload: &[u8]) -> Result<(&str, &str), WireError> {
    let mut r = Reader::new(payload);
    let version = r.u8("the version")?;
    if version != VERSION {
        return Err(WireError::Version { protocol: "peer", got: version, supported: VERSION });
    }
    let (token, pool) = (r.str16("the token")?, r.str16("the pool name")?);
    r.end("the pool name")?;
    Ok((token, pool))
}

/// The offset at the start of a payload, and the rest.
pub fn parse_offset(payload: &[u8]) -> Result<(u64, &[u8]), WireError> {
    let mut r = Reader::new(payload);
    Ok((r.u64("an offset")?, r.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        wire::frame(&mut out, MAX_BODY, PUT, 7, &[&42u64.to_le_bytes(), b"page"]).unwrap();
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        let (kind, id, payload) = wire::parse_body(&out[4..]).unwrap();
        assert_eq!((kind, id), (PUT, 7));
        assert_eq!(parse_offset(payload).unwrap(), (42, &b"page"[..]));
        assert_eq!(parse_hello(&hello_payload("secret", "pool-b").unwrap()).unwrap(), ("secret", "pool-b"));
        assert!(parse_hello(&[1, 5, 0, b'a']).is_err());
        assert!(wire::parse_body(&[1, 2]).is_err());
    }

    #[test]
    fn hello_is_the_same_bytes_as_ever_and_checked() {
        // `[version][token len u16][token][pool len u16][pool]`, as the protocol always was.
        assert_eq!(hello_payload("ab", "p").unwrap(), [VERSION, 2, 0, b'a', b'b', 1, 0, b'p']);
        let long = "t".repeat(wire::MAX_STR16 + 1);
        assert!(matches!(hello_payload(&long, "p"), Err(WireError::TooLong { .. })), "never a wrapped length");
        assert_eq!(
            parse_hello(&[2, 0, 0, 0, 0]),
            Err(WireError::Version { protocol: "peer", got: 2, supported: VERSION })
        );
        assert_eq!(
            parse_hello(&[VERSION, 0, 0, 0, 0, 9]),
            Err(WireError::Trailing { what: "the pool name", extra: 1 })
        );
        assert_eq!(parse_offset(b"short").unwrap_err().to_string(), "truncated: shorter than an offset");
    }
}
