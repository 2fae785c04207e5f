//! The NBD protocol's wire decoding, as the host's NBD server speaks it
//! (`NetworkBlockDevice/nbd` `doc/proto.md`, fixed newstyle): the constants, and pure
//! functions over bytes for what a client sends — the client flags, option headers, the
//! `INFO`/`GO` and meta-context option payloads, and the transmission request header — with
//! their encoders (what a client, a test or a fuzz target builds). The server itself (sockets,
//! replies, the block device) is `tmem_host`'s `frontend::nbd`.
//!
//! NBD is big-endian throughout, unlike tmem's own protocols ([`wire`](crate::wire)).
//!
//! # What a client sends
//!
//! | when | bytes | decoder |
//! |---|---|---|
//! | after the server's greeting | `[client flags u32]` ([`FLAG_FIXED_NEWSTYLE`], [`FLAG_NO_ZEROES`]) | [`parse_client_flags`] |
//! | each option | `[IHAVEOPT u64][option u32][data length u32]` then the data (at most [`MAX_OPTION_DATA`] bytes) | [`parse_option_header`] |
//! | `INFO`/`GO` data | `[name length u32][name][count u16][info u16 × count]` | [`parse_info`] |
//! | `LIST_META_CONTEXT`/`SET_META_CONTEXT` data | `[name length u32][name][count u32]` then `count × [length u32][query]` | [`parse_meta_context`] |
//! | each request | `[REQUEST_MAGIC u32][flags u16][command u16][handle u64][offset u64][length u32]`, then `length` bytes for a `WRITE` (at most [`MAX_PAYLOAD`]) | [`parse_request`], [`Request::write_payload`] |
//!
//! A decoder refuses what cannot be framed (a bad magic, unknown client flags, option data
//! over [`MAX_OPTION_DATA`], a write over [`MAX_PAYLOAD`]) — the server then hangs up — and a
//! malformed option payload, which the server answers with `ERR_INVALID`. No length field
//! is trusted beyond the bytes at hand: nothing is allocated for one.

use std::fmt;

/// The largest request (read or write) a client may send: the maximum block size the server
/// advertises.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Option data longer than this ends the connection (no legitimate option comes close).
pub const MAX_OPTION_DATA: u32 = 64 << 10;

/// The server's greeting: `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// The newstyle greeting's second magic, and every option's.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// The magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag (server and client): fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag (server and client): no 124 zero bytes after `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Every client flag the server knows.
pub const CLIENT_FLAGS: u32 = (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) as u32;

/// Option: choose an export and start transmission (no reply on failure: hang up).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the handshake.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and start transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: choose metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: an export (to `LIST`).
pub const REP_SERVER: u32 = 2;
/// Option reply: an info (to `INFO`/`GO`).
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option error: not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Option error: refused by policy.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Option error: malformed.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Option error: TLS is required first (`STARTTLS`).
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// Option error: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

/// Info: the export's size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info: the export's name.
pub const INFO_NAME: u16 = 1;
/// Info: the export's description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info: block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags are meaningful.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: `FLUSH` is served.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the `FUA` command flag is served.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: `TRIM` is served.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `WRITE_ZEROES` is served.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: the `DF` command flag is served.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: every connection sees one device.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: the `FAST_ZERO` command flag is served.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (the payload follows the header).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: discard.
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: forced unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag (`WRITE_ZEROES`): do not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag (`READ`): do not fragment the reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag (`BLOCK_STATUS`): one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag (`WRITE_ZEROES`): fail rather than be slow.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: the last chunk.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Structured reply chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply chunk: block status.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply chunk: an error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Block status: a hole.
pub const STATE_HOLE: u32 = 1;
/// Block status: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Bytes of an option header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;

/// What a client sent that cannot be accepted. Its text is what the server logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdError {
    /// Client flags the server does not know (the handshake ends).
    ClientFlags(u32),
    /// An option header without [`IHAVEOPT`] (the handshake ends).
    OptionMagic(u64),
    /// Option data over [`MAX_OPTION_DATA`] (the handshake ends).
    OptionTooLong {
        /// The option.
        option: u32,
        /// Its data length.
        len: u32,
    },
    /// A request header without [`REQUEST_MAGIC`] (the connection ends).
    RequestMagic(u32),
    /// A write over [`MAX_PAYLOAD`] (the connection ends: its payload cannot be skipped).
    WriteTooLong(u32),
    /// An option payload that is malformed (answered with `ERR_INVALID`; the handshake goes
    /// on), or one too long to build; says which.
    Malformed(&'static str),
}

impl fmt::Display for NbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdError::ClientFlags(flags) => write!(f, "unknown client flags {flags:#x}"),
            NbdError::OptionMagic(magic) => write!(f, "bad option magic {magic:#x}"),
            NbdError::OptionTooLong { option, len } => write!(f, "option {option} with {len} bytes of data"),
            NbdError::RequestMagic(magic) => write!(f, "bad request magic {magic:#x}"),
            NbdError::WriteTooLong(len) => {
                write!(f, "a write of {len} bytes (the maximum block size is {MAX_PAYLOAD})")
            }
            NbdError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for NbdError {}

/// Checks the client's flags (sent after the server's greeting) and returns them.
pub fn parse_client_flags(bytes: [u8; 4]) -> Result<u32, NbdError> {
    let flags = u32::from_be_bytes(bytes);
    if flags & !CLIENT_FLAGS != 0 {
        return Err(NbdError::ClientFlags(flags));
    }
    Ok(flags)
}

/// An option's header: which option, and how many bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Bytes of data that follow, at most [`MAX_OPTION_DATA`].
    pub len: u32,
}

/// Parses an option's header: its magic checked, its data length at most
/// [`MAX_OPTION_DATA`] (check it before reading or allocating the data).
pub fn parse_option_header(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, NbdError> {
    let magic = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(NbdError::OptionMagic(magic));
    }
    let option = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if len > MAX_OPTION_DATA {
        return Err(NbdError::OptionTooLong { option, len });
    }
    Ok(OptionHeader { option, len })
}

/// Appends an option (header and data), or refuses data over [`MAX_OPTION_DATA`].
pub fn put_option(out: &mut Vec<u8>, option: u32, data: &[u8]) -> Result<(), NbdError> {
    let len = u32::try_from(data.len()).ok().filter(|len| *len <= MAX_OPTION_DATA);
    let len = len.ok_or(NbdError::OptionTooLong { option, len: data.len().try_into().unwrap_or(u32::MAX) })?;
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// The data of an `INFO` or `GO` option: the export asked for and the infos wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// The export name (`""`: the default export).
    pub name: &'a [u8],
    /// The requested infos, two bytes each (big-endian), as sent.
    infos: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// The requested infos (`INFO_*`), in order.
    pub fn infos(&self) -> impl ExactSizeIterator<Item = u16> + 'a {
        self.infos.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Whether the client asked for `info`.
    pub fn wants(&self, info: u16) -> bool {
        self.infos().any(|i| i == info)
    }
}

/// Parses the data of an `INFO` or `GO` option.
pub fn parse_info(data: &[u8]) -> Result<InfoRequest<'_>, NbdError> {
    let malformed = NbdError::Malformed("INFO/GO request");
    let mut r = Parser(data);
    let parsed = (|| {
        let name_len = r.u32()? as usize;
        let name = r.take(name_len)?;
        let count = r.u16()? as usize;
        let infos = r.take(count * 2)?;
        r.end()?;
        Some(InfoRequest { name, infos })
    })();
    parsed.ok_or(malformed)
}

/// The data of an `INFO` or `GO` option asking for `name` and `infos`, or a refusal when it
/// would not fit an option ([`MAX_OPTION_DATA`]).
pub fn info_payload(name: &[u8], infos: &[u16]) -> Result<Vec<u8>, NbdError> {
    let len = 4 + name.len() + 2 + 2 * infos.len();
    if len > MAX_OPTION_DATA as usize {
        return Err(NbdError::Malformed("INFO/GO request (too long for an option)"));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        out.extend_from_slice(&info.to_be_bytes());
    }
    Ok(out)
}

/// The data of a `LIST_META_CONTEXT` or `SET_META_CONTEXT` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// The export name.
    pub name: &'a [u8],
    /// The context queries (e.g. `base:allocation`), in order.
    pub queries: Vec<&'a [u8]>,
}

/// Parses the data of a `LIST_META_CONTEXT` or `SET_META_CONTEXT` option. (The query count
/// is not trusted: the list grows with the queries actually present.)
pub fn parse_meta_context(data: &[u8]) -> Result<MetaContextRequest<'_>, NbdError> {
    let malformed = NbdError::Malformed("meta context request");
    let mut r = Parser(data);
    let parsed = (|| {
        let name_len = r.u32()? as usize;
        let name = r.take(name_len)?;
        let count = r.u32()? as usize;
        let mut queries = Vec::new();
        for _ in 0..count {
            let len = r.u32()? as usize;
            queries.push(r.take(len)?);
        }
        r.end()?;
        Some(MetaContextRequest { name, queries })
    })();
    parsed.ok_or(malformed)
}

/// The data of a meta-context option for `name` and `queries`, or a refusal when it would
/// not fit an option ([`MAX_OPTION_DATA`]).
pub fn meta_context_payload(name: &[u8], queries: &[&[u8]]) -> Result<Vec<u8>, NbdError> {
    let len = 4 + name.len() + 4 + queries.iter().map(|q| 4 + q.len()).sum::<usize>();
    if len > MAX_OPTION_DATA as usize {
        return Err(NbdError::Malformed("meta context request (too long for an option)"));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for query in queries {
        out.extend_from_slice(&(query.len() as u32).to_be_bytes());
        out.extend_from_slice(query);
    }
    Ok(out)
}

/// A transmission request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the stream: a write's length, checked
    /// against [`MAX_PAYLOAD`] (a longer write cannot be skipped: the stream is lost); 0 for
    /// every other command.
    pub fn write_payload(&self) -> Result<usize, NbdError> {
        match self.command {
            CMD_WRITE if self.len > MAX_PAYLOAD => Err(NbdError::WriteTooLong(self.len)),
            CMD_WRITE => Ok(self.len as usize),
            _ => Ok(0),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// Parses a transmission request's header, its magic checked.
pub fn parse_request(bytes: &[u8; REQUEST_LEN]) -> Result<Request, NbdError> {
    let magic = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(NbdError::RequestMagic(magic));
    }
    Ok(Request {
        flags: u16::from_be_bytes(bytes[4..6].try_into().expect("2 bytes")),
        command: u16::from_be_bytes(bytes[6..8].try_into().expect("2 bytes")),
        handle: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes")),
    })
}

/// Reads big-endian fields from option data; `None` when it runs short.
struct Parser<'a>(&'a [u8]);

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_fields_round_trip_and_bad_ones_are_refused_with_the_servers_words() {
        assert_eq!(parse_client_flags(3u32.to_be_bytes()), Ok(3));
        assert_eq!(parse_client_flags(4u32.to_be_bytes()).unwrap_err().to_string(), "unknown client flags 0x4");

        let mut stream = Vec::new();
        put_option(&mut stream, OPT_GO, b"data").unwrap();
        let header = parse_option_header(stream[..16].try_into().unwrap()).unwrap();
        assert_eq!(header, OptionHeader { option: OPT_GO, len: 4 });
        assert_eq!(&stream[16..], b"data");
        let mut bad = stream.clone();
        bad[0] ^= 1;
        assert!(
            parse_option_header(bad[..16].try_into().unwrap()).unwrap_err().to_string().starts_with("bad option magic")
        );
        let mut long = stream.clone();
        long[12..16].copy_from_slice(&(MAX_OPTION_DATA + 1).to_be_bytes());
        assert_eq!(
            parse_option_header(long[..16].try_into().unwrap()).unwrap_err().to_string(),
            "option 7 with 65537 bytes of data"
        );
        assert!(put_option(&mut Vec::new(), OPT_GO, &vec![0; MAX_OPTION_DATA as usize + 1]).is_err());
    }

    #[test]
    fn option_payloads_round_trip_and_every_truncation_is_refused() {
        let info = info_payload(b"pool", &[INFO_NAME, INFO_DESCRIPTION]).unwrap();
        let parsed = parse_info(&info).unwrap();
        assert_eq!(parsed.name, b"pool");
        assert_eq!(parsed.infos().collect::<Vec<_>>(), [INFO_NAME, INFO_DESCRIPTION]);
        assert!(parsed.wants(INFO_DESCRIPTION) && !parsed.wants(INFO_BLOCK_SIZE));
        for cut in 0..info.len() {
            assert_eq!(parse_info(&info[..cut]), Err(NbdError::Malformed("INFO/GO request")), "cut at {cut}");
        }
        assert_eq!(parse_info(&[info.as_slice(), &[0]].concat()).unwrap_err().to_string(), "malformed INFO/GO request");

        let meta = meta_context_payload(b"", &[b"base:allocation", b""]).unwrap();
        let parsed = parse_meta_context(&meta).unwrap();
        assert_eq!(parsed, MetaContextRequest { name: b"", queries: vec![b"base:allocation", b""] });
        for cut in 0..meta.len() {
            assert!(parse_meta_context(&meta[..cut]).is_err(), "cut at {cut}");
        }
        // A count of four billion queries in a few bytes: refused, and nothing is allocated for it.
        let absurd = [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(parse_meta_context(&absurd).is_err());
        assert!(info_payload(&vec![0; MAX_OPTION_DATA as usize], &[]).is_err());
    }

    #[test]
    fn requests_round_trip_and_writes_are_bounded() {
        let request = Request { flags: CMD_FLAG_FUA, command: CMD_WRITE, handle: 7, offset: 4096, len: 512 };
        let bytes = request.to_bytes();
        assert_eq!(&bytes[..8], [0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1]);
        assert_eq!(parse_request(&bytes), Ok(request));
        assert_eq!(request.write_payload(), Ok(512));
        let huge = Request { len: MAX_PAYLOAD + 1, ..request };
        assert_eq!(
            huge.write_payload().unwrap_err().to_string(),
            "a write of 33554433 bytes (the maximum block size is 33554432)"
        );
        assert_eq!(Request { command: CMD_READ, ..huge }.write_payload(), Ok(0), "a read carries no payload");
        let mut bad = bytes;
        bad[3] = 0;
        assert_eq!(parse_request(&bad).unwrap_err().to_string(), "bad request magic 0x25609500");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders() {
        let mut next = crate::wire::tests::xorshift();
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| if next().is_multiple_of(3) { 0 } else { next() as u8 }).collect();
            let _ = parse_info(&bytes);
            let _ = parse_meta_context(&bytes);
            if let Some(header) = bytes.first_chunk::<REQUEST_LEN>() {
                let _ = parse_request(header).map(|r| r.write_payload());
            }
        }
    }
}
