//! tmem peer hosts ([`tmem_api::peer`]): one lazily opened connection per replica.

use tmem_api::{peer, wire};
use tmem_sdk::net::{Connection, NetError};
use tmem_sdk::{GetError, Reject, log};

use crate::Fail;
use crate::breaker::Breaker;
use crate::url::PeerUrl;

/// A response to one request.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    /// `OK`.
    Ok,
    /// `DATA`, copied into the caller's buffer.
    Data(usize),
    /// `DATA` that did not fit the caller's buffer (read and dropped).
    TooLong,
    /// `NOT_FOUND`.
    NotFound,
    /// `REJECTED`, with its reason.
    Rejected(String),
}

struct Open {
    conn: Connection,
    next_id: u32,
    /// HELLO was sent with the first request; its answer comes first.
    hello_pending: bool,
}

struct Replica {
    url: PeerUrl,
    conn: Option<Open>,
    breaker: Breaker,
}

/// The replicas of a pool on tmem peer hosts.
pub struct Peers {
    replicas: Vec<Replica>,
    token: String,
    /// Outgoing frames (reused).
    tx: Vec<u8>,
    /// Payloads that are not page data (reused).
    scratch: Vec<u8>,
}

impl Peers {
    /// Replicas for `urls`; nothing connects until the first operation.
    pub fn new(urls: Vec<PeerUrl>, token: String, page_size: usize) -> Peers {
        Peers {
            replicas: urls.into_iter().map(|url| Replica { url, conn: None, breaker: Breaker::default() }).collect(),
            token,
            tx: Vec::with_capacity(page_size + 64),
            scratch: Vec::new(),
        }
    }

    /// Sends one request to replica `i`, opening its connection first if needed; the id.
    fn send(&mut self, i: usize, kind: u8, payload: &[&[u8]]) -> Result<u32, Fail> {
        let r = &mut self.replicas[i];
        self.tx.clear();
        if r.conn.is_none() {
            let hello = peer::hello_payload(&self.token, &r.url.pool)?;
            let conn = Connection::connect(&r.url.addr)?;
            wire::frame(&mut self.tx, peer::MAX_BODY, peer::HELLO, 0, &[&hello])?;
            r.conn = Some(Open { conn, next_id: 1, hello_pending: true });
        }
        let open = r.conn.as_mut().expect("opened above");
        let id = open.next_id;
        open.next_id = open.next_id.wrapping_add(1).max(1);
        wire::frame(&mut self.tx, peer::MAX_BODY, kind, id, payload)?;
        open.conn.send_all(&self.tx)?;
        Ok(id)
    }

    /// Reads the response to request `id` from replica `i` (DATA goes into `out`).
    fn receive(&mut self, i: usize, id: u32, out: Option<&mut [u8]>) -> Result<Response, Fail> {
        let open = self.replicas[i].conn.as_mut().ok_or(Fail::Net(NetError::Closed))?;
        if open.hello_pending {
            let (kind, hello_id, len) = header(&mut open.conn)?;
            read_payload(&mut open.conn, len, &mut self.scratch)?;
            match kind {
                peer::OK if hello_id == 0 && len >= 4 => open.hello_pending = false,
                peer::ERROR => {
                    return Err(Fail::Protocol(format!(
                        "the server refused HELLO for pool {:?}: {}",
                        self.replicas[i].url.pool,
                        String::from_utf8_lossy(&self.scratch)
                    )));
                }
                _ => return Err(Fail::Protocol(format!("unexpected answer to HELLO (kind {kind}, id {hello_id})"))),
            }
        }
        let (kind, got, len) = header(&mut open.conn)?;
        if got != id {
            return Err(Fail::Protocol(format!("response id {got} does not match request id {id}")));
        }
        match (kind, out) {
            (peer::DATA, Some(out)) if len <= out.len() => {
                open.conn.recv_exact(&mut out[..len])?;
                Ok(Response::Data(len))
            }
            (peer::DATA, Some(_)) => {
                read_payload(&mut open.conn, len, &mut self.scratch)?;
                Ok(Response::TooLong)
            }
            (kind, _) => {
                read_payload(&mut open.conn, len, &mut self.scratch)?;
                let text = || String::from_utf8_lossy(&self.scratch).into_owned();
                match kind {
                    peer::OK => Ok(Response::Ok),
                    peer::NOT_FOUND => Ok(Response::NotFound),
                    peer::REJECTED => Ok(Response::Rejected(text())),
                    peer::ERROR => Err(Fail::Protocol(format!("the server answered ERROR: {}", text()))),
                    other => Err(Fail::Protocol(format!("unexpected response kind {other}"))),
                }
            }
        }
    }

    /// Records a failure of replica `i`: drops its connection at once (so its handle is closed
    /// before any new connection could reuse it) and trips its breaker.
    fn failed(&mut self, i: usize, why: &Fail) {
        let r = &mut self.replicas[i];
        r.conn = None;
        r.breaker.trip(&r.url.addr, why);
    }

    /// One request and its response, failures recorded.
    fn request(&mut self, i: usize, kind: u8, payload: &[&[u8]], out: Option<&mut [u8]>) -> Result<Response, Fail> {
        let result = self.send(i, kind, payload).and_then(|id| self.receive(i, id, out));
        if let Err(why) = &result {
            self.failed(i, why);
        }
        result
    }

    /// Puts on every replica; acknowledged only when all confirmed.
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), Reject> {
        let mut open = false;
        for r in &mut self.replicas {
            // Every open breaker counts this attempt.
            open |= !r.breaker.allow_store();
        }
        if open {
            return Err(Reject::Unavailable);
        }
        let key = offset.to_le_bytes();
        // Send to every replica first, then collect: the replicas work in parallel.
        let sent: Vec<Option<u32>> = (0..self.replicas.len())
            .map(|i| match self.send(i, peer::PUT, &[&key, data]) {
                Ok(id) => Some(id),
                Err(why) => {
                    self.failed(i, &why);
                    None
                }
            })
            .collect();
        let mut stored = Vec::new();
        let mut outcome = Ok(());
        for (i, id) in sent.into_iter().enumerate() {
            let Some(id) = id else {
                outcome = Err(Reject::Unavailable);
                continue;
            };
            match self.receive(i, id, None) {
                Ok(Response::Ok) => stored.push(i),
                Ok(Response::Rejected(why)) => {
                    log::debug(&format!("remote endpoint {} refused a page: {why}", self.replicas[i].url.addr));
                    if outcome.is_ok() {
                        outcome = Err(Reject::AllocFail);
                    }
                }
                Ok(other) => {
                    self.failed(i, &Fail::Protocol(format!("unexpected answer to PUT: {other:?}")));
                    outcome = Err(Reject::Unavailable);
                }
                Err(why) => {
                    self.failed(i, &why);
                    outcome = Err(Reject::Unavailable);
                }
            }
        }
        if outcome.is_err() {
            // Best effort: do not leave the refused page on the replicas that took it.
            for i in stored {
                let _ = self.request(i, peer::DELETE, &[&key], None);
            }
        }
        outcome
    }

    /// Gets from the first replica that has the page, trying replicas whose breaker is closed
    /// first.
    pub fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, GetError> {
        let key = offset.to_le_bytes();
        let mut order: Vec<usize> = (0..self.replicas.len()).collect();
        order.sort_by_key(|&i| self.replicas[i].breaker.is_open());
        let mut unavailable = false;
        for i in order {
            match self.request(i, peer::GET, &[&key], Some(&mut *out)) {
                Ok(Response::Data(len)) => {
                    self.succeeded(i);
                    return Ok(len);
                }
                Ok(Response::NotFound) => self.succeeded(i),
                Ok(Response::TooLong) => {
                    log::error(&format!(
                        "remote endpoint {} returned more bytes for offset {offset} than a record can have",
                        self.replicas[i].url.addr
                    ));
                    unavailable = true;
                }
                Ok(other) => {
                    self.failed(i, &Fail::Protocol(format!("unexpected answer to GET: {other:?}")));
                    unavailable = true;
                }
                Err(_) => unavailable = true,
            }
        }
        // Absent everywhere that answered; if some replica did not, it may hold the page.
        Err(if unavailable { GetError::Unavailable } else { GetError::NotFound })
    }

    /// Deletes on every replica (one attempt each).
    pub fn delete(&mut self, offset: u64) {
        self.everywhere(peer::DELETE, &offset.to_le_bytes());
    }

    /// Clears the pool on every replica (one attempt each).
    pub fn clear(&mut self) {
        self.everywhere(peer::CLEAR, &[]);
    }

    fn everywhere(&mut self, kind: u8, payload: &[u8]) {
        for i in 0..self.replicas.len() {
            match self.request(i, kind, &[payload], None) {
                Ok(Response::Ok) => self.succeeded(i),
                Ok(other) => {
                    self.failed(i, &Fail::Protocol(format!("unexpected answer to request kind {kind}: {other:?}")))
                }
                Err(_) => {}
            }
        }
    }

    fn succeeded(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        r.breaker.succeed(&r.url.addr);
    }
}

/// Reads a frame header: `(kind, id, payload length)`, the length checked.
fn header(conn: &mut Connection) -> Result<(u8, u32, usize), Fail> {
    let mut h = [0u8; wire::HEADER_LEN];
    conn.recv_exact(&mut h)?;
    let header = wire::parse_header(&h, peer::MAX_BODY)?;
    Ok((header.kind, header.id, header.payload_len))
}

fn read_payload(conn: &mut Connection, len: usize, into: &mut Vec<u8>) -> Result<(), Fail> {
    into.resize(len, 0);
    conn.recv_exact(into)?;
    Ok(())
}
