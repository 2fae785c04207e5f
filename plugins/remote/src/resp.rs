//! A small RESP2 client connection: commands out, replies in, bulk page data read straight into
//! the caller's buffer.

use crate::Fail;
use tmem_sdk::net::Connection;

fn protocol<T>(what: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Protocol(what.into()))
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Status(String),
    /// `-...`
    Error(String),
    /// `:...`
    Int(i64),
    /// `$...` (`None`: nil)
    Bulk(Option<Vec<u8>>),
    /// `*...` (`None`: nil)
    Array(Option<Vec<Reply>>),
    /// A bulk string that was read into the caller's buffer, of this length.
    Into(usize),
    /// A bulk string longer than the caller's buffer (read and dropped).
    TooLong,
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes buffered for reading; also the longest line accepted.
const BUFFER: usize = 16 * 1024;
/// The longest bulk string accepted (pages are at most 2 MiB plus headers).
const MAX_BULK: usize = 8 << 20;
/// The most elements an array may have.
const MAX_ARRAY: usize = 1 << 20;
/// The deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;

/// One connection to a Redis node.
pub struct RespConn {
    conn: Connection,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl RespConn {
    /// Wraps an open connection.
    pub fn new(conn: Connection) -> RespConn {
        RespConn { conn, buf: vec![0; BUFFER].into_boxed_slice(), pos: 0, end: 0 }
    }

    /// Sends bytes (one or more encoded commands).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        Ok(self.conn.send_all(bytes)?)
    }

    fn fill(&mut self) -> Result<(), Fail> {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.pos == 0 {
                return protocol("a reply line longer than 16 KiB");
            }
            self.buf.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
        }
        let n = self.conn.recv(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(())
    }

    /// One line, without its CRLF.
    fn line(&mut self) -> Result<Vec<u8>, Fail> {
        // How far past `pos` has been searched (kept across `fill`, which keeps the unread
        // bytes in order), leaving a final '\r' to be matched with the next byte.
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[self.pos + searched..self.end].windows(2).position(|w| w == b"\r\n") {
                let len = searched + i;
                let line = self.buf[self.pos..self.pos + len].to_vec();
                self.pos += len + 2;
                return Ok(line);
            }
            searched = (self.end - self.pos).saturating_sub(1);
            self.fill()?;
        }
    }

    /// Exactly `dst.len()` bytes.
    fn read_into(&mut self, dst: &mut [u8]) -> Result<(), Fail> {
        let have = (self.end - self.pos).min(dst.len());
        dst[..have].copy_from_slice(&self.buf[self.pos..self.pos + have]);
        self.pos += have;
        if have < dst.len() {
            self.conn.recv_exact(&mut dst[have..])?;
        }
        Ok(())
    }

    fn crlf(&mut self) -> Result<(), Fail> {
        let mut end = [0u8; 2];
        self.read_into(&mut end)?;
        if &end != b"\r\n" {
            return protocol("a bulk string not followed by CRLF");
        }
        Ok(())
    }

    /// One reply; a top-level bulk string goes into `into` when one is given (as
    /// [`Reply::Into`] or [`Reply::TooLong`]).
    pub fn reply(&mut self, into: Option<&mut [u8]>) -> Result<Reply, Fail> {
        self.reply_at(into, 0)
    }

    fn reply_at(&mut self, into: Option<&mut [u8]>, depth: usize) -> Result<Reply, Fail> {
        let line = self.line()?;
        let Some((&kind, rest)) = line.split_first() else { return protocol("an empty reply line") };
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> Result<i64, Fail> {
            core::str::from_utf8(rest).ok().and_then(|s| s.parse::<i64>().ok()).map_or_else(
                || protocol(format!("a bad number in reply line {:?}", String::from_utf8_lossy(&line))),
                Ok,
            )
        };
        match kind {
            b'+' => Ok(Reply::Status(text())),
            b'-' => Ok(Reply::Error(text())),
            b':' => Ok(Reply::Int(number()?)),
            b'$' => {
                let n = number()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return protocol(format!("a bulk string of {n} bytes"));
                }
                match into {
                    Some(out) if n <= out.len() => {
                        self.read_into(&mut out[..n])?;
                        self.crlf()?;
                        Ok(Reply::Into(n))
                    }
                    Some(_) => {
                        let mut sink = vec![0; n];
                        self.read_into(&mut sink)?;
                        self.crlf()?;
                        Ok(Reply::TooLong)
                    }
                    None => {
                        let mut bytes = vec![0; n];
                        self.read_into(&mut bytes)?;
                        self.crlf()?;
                        Ok(Reply::Bulk(Some(bytes)))
                    }
                }
            }
            b'*' => {
                let n = number()?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                if n as usize > MAX_ARRAY || depth >= MAX_DEPTH {
                    return protocol("an array too large or too deep");
                }
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    items.push(self.reply_at(None, depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => protocol(format!("unknown reply type {:?}", other as char)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }
}
