//! The peer host (`tmem serve --peer-listen ADDR`, off by default): other tmem hosts'
//! `remote` stores keep their pages in this host's pools over the peer protocol
//! ([`tmem_api::peer`]: binary, length-prefixed, pipelined).
//!
//! A connection starts with HELLO carrying a peer token of a pool whose chain is a lone store
//! (e.g. `[ram]`) and that pool's name (never this host's admin token: see
//! [`crate::credentials`]); a revoked token ends the connection at its next request. Every
//! later request is a record operation on that
//! pool ([`Pool::store_record`](crate::pool::Pool::store_record) and friends), so the pool's
//! limits, counters and the duplicate-store rule apply to peers as to anyone. Requests are
//! answered in order, one response each. A malformed or oversized frame gets an ERROR and the
//! connection is closed; no stored page is touched by a bad frame.
//!
//! The listener is bounded like every other ([`crate::listen`]): a cap on connections, where a
//! connection whose HELLO has not been accepted is evicted first and closed after the
//! handshake deadline, and a HELLO read with a limit of [`peer::MAX_HELLO_BODY`].
//!
//! With the host's TLS ([`crate::tls`], `tmem serve --tls-cert/--tls-key`) every connection
//! is TLS from its first byte (`tmems://` on the remote store's side): the TLS handshake, then
//! HELLO inside it, both within the handshake deadline; a plain client's bytes fail the
//! handshake and it is closed before anything of the protocol is read. Without TLS the
//! listener must be on loopback, unless `tmem serve --insecure-plain-tcp` (`server.rs`).

use std::future::Future;
use std::sync::Arc;

use tmem_api::rest::TokenScope;
use tmem_api::{peer, wire};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::host::Host;
use crate::listen::{Evicted, Gate, ListenerLimits, Ticket};
use crate::pool::{Pool, StoreOutcome};
use crate::rest::auth::ApiToken;
use crate::tls::TlsServer;
use crate::wire_io::read_frame;

/// Serves peers on `listener`, within `limits` (over `tls` when given: then only over TLS),
/// until `shutdown` completes.
pub async fn serve_peers(
    host: Arc<Host>,
    token: ApiToken,
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()>,
) {
    let token = Arc::new(token);
    let gate = Gate::new(limits, "a peer connection");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    // A full listener evicts its oldest connection that has not said HELLO,
                    // or (every one has) closes this one.
                    let Some(admitted) = gate.admit() else { continue };
                    let (host, token, tls) = (host.clone(), token.clone(), tls.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve_stream(host, &token, stream, tls, admitted, limits).await {
                            tracing::warn!(%from, "peer connection closed: {e}");
                        }
                    });
                }
                Err(e) => crate::listen::accept_failed(&e, "a peer connection").await,
            },
            () = &mut shutdown => break,
        }
    }
}

async fn send(
    writer: &mut BufWriter<impl AsyncWrite + Unpin>,
    kind: u8,
    id: u32,
    payload: &[u8],
) -> Result<(), String> {
    let mut frame = Vec::with_capacity(wire::HEADER_LEN + payload.len());
    wire::frame(&mut frame, peer::MAX_BODY, kind, id, &[payload]).map_err(|e| e.to_string())?;
    writer.write_all(&frame).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())
}

/// One connection: plain, or its TLS handshake first (within the handshake deadline, and
/// given up when the connection is evicted).
async fn serve_stream(
    host: Arc<Host>,
    token: &ApiToken,
    stream: TcpStream,
    tls: Option<Arc<TlsServer>>,
    (ticket, mut evicted): (Ticket, Evicted),
    limits: ListenerLimits,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        let (read, write) = stream.into_split();
        return serve_connection(host, token, read, write, (ticket, evicted), limits).await;
    };
    let started = tokio::time::Instant::now();
    let session = tokio::select! {
        session = tokio::time::timeout(limits.handshake_timeout, tls.accept_async(stream)) => match session {
            Ok(session) => session.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("no TLS handshake within {:?}", limits.handshake_timeout)),
        },
        () = evicted.wait() => return Err("evicted: the listener is full and this connection had not said HELLO".into()),
    };
    // HELLO gets what the TLS handshake left of the deadline.
    let limits =
        ListenerLimits { handshake_timeout: limits.handshake_timeout.saturating_sub(started.elapsed()), ..limits };
    let (read, write) = tokio::io::split(session);
    serve_connection(host, token, read, write, (ticket, evicted), limits).await
}

async fn serve_connection(
    host: Arc<Host>,
    token: &ApiToken,
    read: impl AsyncRead + Unpin,
    write: impl AsyncWrite + Unpin,
    (mut ticket, mut evicted): (Ticket, Evicted),
    limits: ListenerLimits,
) -> Result<(), String> {
    let (mut reader, mut writer) =
        (BufReader::with_capacity(64 << 10, read), BufWriter::with_capacity(64 << 10, write));
    let hello = tokio::select! {
        read = tokio::time::timeout(limits.handshake_timeout, read_frame(&mut reader, peer::MAX_HELLO_BODY)) => match read {
            Ok(read) => read.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("no HELLO within {:?}", limits.handshake_timeout)),
        },
        () = evicted.wait() => return Err("evicted: the listener is full and this connection had not said HELLO".into()),
    };
    let Some(body) = hello else {
        return Ok(());
    };
    let (kind, id, payload) = wire::parse_body(&body).map_err(|e| e.to_string())?;
    let hello = if kind == peer::HELLO {
        peer::parse_hello(payload).map_err(|e| format!("bad HELLO: {e}"))
    } else {
        Err("the first frame must be HELLO".into())
    };
    let accepted = hello.and_then(|(presented, pool_name)| {
        let session = host.credentials().authenticate(presented, pool_name, TokenScope::Peer, token).map_err(|e| {
            format!("{e}: peers authenticate with a peer token of the pool (tmem token create POOL --scope peer)")
        })?;
        let pool = host.frontend_pool(pool_name).map_err(|e| e.to_string())?;
        if pool.chain().links().len() != 1 {
            return Err(format!("pool '{pool_name}' has filters; a peer pool must be a lone store, e.g. [ram]"));
        }
        pool.check_writer().map_err(|e| e.to_string())?;
        if !ticket.establish() {
            return Err("evicted before its HELLO was accepted".to_string());
        }
        Ok((pool, session))
    });
    let (pool, session) = match accepted {
        Ok(accepted) => accepted,
        Err(message) => {
            send(&mut writer, peer::ERROR, id, message.as_bytes()).await?;
            return Err(message);
        }
    };
    send(&mut writer, peer::OK, id, &pool.page_size().to_le_bytes()).await?;
    tracing::info!(pool = %pool.name(), "peer connected");
    loop {
        let body = match read_frame(&mut reader, peer::MAX_BODY).await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(()),
            Err(e) => {
                let e = e.to_string();
                let _ = send(&mut writer, peer::ERROR, 0, e.as_bytes()).await;
                return Err(e);
            }
        };
        // A destroyed pool is not served any longer, even to a connection that had it.
        let current = host.pool(pool.name()).ok().filter(|p| Arc::ptr_eq(p, &pool));
        let (kind, id, response) = match (wire::parse_body(&body), current) {
            (Err(e), _) => (peer::ERROR, 0, e.to_string().into_bytes()),
            // A revoked token (or a destroyed pool's: its tokens go with it) ends the connection.
            (Ok((_, id, _)), _) if session.is_revoked() => {
                let message = "the token this connection said HELLO with was revoked";
                let _ = send(&mut writer, peer::ERROR, id, message.as_bytes()).await;
                return Err(message.into());
            }
            (Ok((_, id, _)), None) => (peer::ERROR, id, b"the pool no longer exists".to_vec()),
            // A block device attached to the pool since: it owns the pool now.
            (Ok((_, id, _)), Some(pool)) if pool.check_writer().is_err() => {
                (peer::ERROR, id, pool.check_writer().err().map(|e| e.to_string()).unwrap_or_default().into_bytes())
            }
            (Ok((kind, id, payload)), Some(pool)) => {
                // Pool operations are short and bounded by the plugins' deadlines: run them on
                // this worker (tokio moves its other tasks away) instead of a thread hop.
                let (kind, response) = tokio::task::block_in_place(|| handle(&pool, kind, payload));
                (kind, id, response)
            }
        };
        send(&mut writer, kind, id, &response).await?;
    }
}

/// One request on the pool: the response kind and payload.
fn handle(pool: &Pool, kind: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    let error = |message: String| (peer::ERROR, message.into_bytes());
    match kind {
        peer::PUT => match peer::parse_offset(payload) {
            Ok((offset, record)) => match pool.store_record(offset, record) {
                Ok(StoreOutcome::Rejected(reason)) => (peer::REJECTED, reason.name().as_bytes().to_vec()),
                Ok(_) => (peer::OK, Vec::new()),
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(e.to_string()),
        },
        peer::GET => match peer::parse_offset(payload) {
            Ok((offset, _)) => match pool.load_record(offset) {
                Ok(Some(record)) => (peer::DATA, record),
                Ok(None) => (peer::NOT_FOUND, Vec::new()),
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(e.to_string()),
        },
        peer::DELETE => match peer::parse_offset(payload) {
            Ok((offset, _)) => match pool.invalidate_page(offset) {
                Ok(_) => (peer::OK, Vec::new()),
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(e.to_string()),
        },
        peer::CLEAR => match pool.invalidate_area() {
            Ok(()) => (peer::OK, Vec::new()),
            Err(e) => error(e.to_string()),
        },
        other => error(format!("unknown request kind {other}")),
    }
}
