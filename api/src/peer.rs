//! The peer protocol: how a `remote` store on one tmem host keeps pages in a pool of another
//! (`tmem serve --peer-listen ADDR`, RAMster's memory server). Binary, length-prefixed,
//! pipelined; the one definition both sides use.
//!
//! # Frames
//!
//! Every message is a frame: `[body length: u32 LE][body]`, body at most [`MAX_BODY`] bytes.
//! A body is `[kind: u8][request id: u32 LE][payload]`. The server answers every request with
//! exactly one response carrying the same request id, in the order the requests arrived, so a
//! client may send many requests before reading (pipelining).
//!
//! | kind | request | payload |
//! |---|---|---|
//! | [`HELLO`] | first frame of a connection | `[version u8 = 1][token len u16 LE][token][pool len u16 LE][pool name]` |
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
//! The token is the serving host's API token (compared in constant time). The pool must be a
//! chain of one store (e.g. `[ram]`): the client already encoded the pages; the server keeps
//! the bytes as they come (at most the pool's page size plus 4 KiB per record) under the
//! pool's frontswap rules (limits, counters, the duplicate-store rule).

/// Highest body length accepted (a 2 MiB page plus headers).
pub const MAX_BODY: usize = (2 << 20) + 8192;

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

/// Appends a frame of `kind` with `id` and `payload` parts to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, id: u32, payload: &[&[u8]]) {
    let body_len = 5 + payload.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    for part in payload {
        out.extend_from_slice(part);
    }
}

/// The HELLO payload.
pub fn hello_payload(token: &str, pool: &str) -> Vec<u8> {
    let mut p = vec![VERSION];
    p.extend_from_slice(&(token.len() as u16).to_le_bytes());
    p.extend_from_slice(token.as_bytes());
    p.extend_from_slice(&(pool.len() as u16).to_le_bytes());
    p.extend_from_slice(pool.as_bytes());
    p
}

/// Splits a HELLO payload into `(token, pool)`.
pub fn parse_hello(payload: &[u8]) -> Result<(&str, &str), &'static str> {
    let bad = "malformed HELLO";
    let (&version, rest) = payload.split_first().ok_or(bad)?;
    if version != VERSION {
        return Err("unsupported peer protocol version");
    }
    let (token, rest) = take_str(rest).ok_or(bad)?;
    let (pool, rest) = take_str(rest).ok_or(bad)?;
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok((token, pool))
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let text = core::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((text, &bytes[2 + len..]))
}

/// A parsed body: `(kind, request id, payload)`.
pub fn parse_body(body: &[u8]) -> Result<(u8, u32, &[u8]), &'static str> {
    if body.len() < 5 {
        return Err("frame body shorter than its header");
    }
    Ok((body[0], u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")), &body[5..]))
}

/// The offset at the start of a payload, and the rest.
pub fn parse_offset(payload: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let bytes = payload.get(..8).ok_or("payload shorter than an offset")?;
    Ok((u64::from_le_bytes(bytes.try_into().expect("8 bytes")), &payload[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        frame(&mut out, PUT, 7, &[&42u64.to_le_bytes(), b"page"]);
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        let (kind, id, payload) = parse_body(&out[4..]).unwrap();
        assert_eq!((kind, id), (PUT, 7));
        assert_eq!(parse_offset(payload).unwrap(), (42, &b"page"[..]));
        assert_eq!(parse_hello(&hello_payload("secret", "pool-b")).unwrap(), ("secret", "pool-b"));
        assert!(parse_hello(&[1, 5, 0, b'a']).is_err());
        assert!(parse_body(&[1, 2]).is_err());
    }
}
