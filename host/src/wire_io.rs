//! Frames ([`tmem_api::wire`]) read from async streams: the one reader of the frontend socket
//! ([`crate::frontend::socket`]) and the peer host ([`crate::peer`]); the blocking twin is
//! [`tmem_api::wire::read_frame`].

use std::io;

use tmem_api::wire;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one frame and returns its body (`[kind][id][payload]`), or `None` when the stream
/// ends before the next frame's length. The length is checked against `max_body` (an
/// [`io::ErrorKind::InvalidData`] error carrying the [`wire::WireError`]) before the body is
/// allocated; a stream that ends inside the body is an error ("truncated frame").
pub(crate) async fn read_frame(reader: &mut (impl AsyncRead + Unpin), max_body: usize) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    Ok(read_frame_into(reader, max_body, &mut body).await?.then_some(body))
}

/// [`read_frame`] into `body`, reusing its capacity (a connection's frames then allocate
/// nothing once its buffer has grown to its largest frame); `false` when the stream ends
/// before the next frame's length.
///
/// The buffer grows with the bytes that actually arrive, never by what the length field
/// claims: a client that announces a 64 MiB frame and sends nothing costs nothing.
pub(crate) async fn read_frame_into(
    reader: &mut (impl AsyncRead + Unpin),
    max_body: usize,
    body: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut field = [0u8; wire::LEN_BYTES];
    match reader.read_exact(&mut field).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = wire::body_len(field, max_body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    body.clear();
    let read = (&mut *reader).take(len as u64).read_to_end(body).await;
    match read {
        Ok(n) if n == len => Ok(true),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated frame: the stream ended after {n} of {len} bytes"),
        )),
        Err(e) => Err(io::Error::new(e.kind(), format!("truncated frame: {e}"))),
    }
}
