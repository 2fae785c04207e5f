//! The peer host (`tmem serve --peer-listen`) spoken to directly over its binary protocol:
//! authentication, record round trips, and bad input (truncated and oversized frames, a
//! wrong token, an unknown or unsuitable pool) — each a clear ERROR, none losing a page.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tmem_api::rest::{BackendRequest, CreateTokenRequest, PoolConfig, TokenScope};
use tmem_api::{peer, wire};

use crate::common::{ServeProcess, temp_dir};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A peer host with a `[ram]` pool `mem` and a `[zstd, ram]` pool `filtered`.
pub fn memory_server(dir: &std::path::Path, peer_port: u16) -> ServeProcess {
    let server = ServeProcess::start(dir, &["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
    let client = server.client();
    if client.pool("mem").is_err() {
        client.create_pool(&PoolConfig::new("mem", vec![BackendRequest::new("ram")])).unwrap();
        client
            .create_pool(&PoolConfig::new("filtered", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]))
            .unwrap();
    }
    server
}

/// A new peer token of `pool` on `server`.
pub fn peer_token(server: &ServeProcess, pool: &str) -> String {
    let request = CreateTokenRequest { scope: TokenScope::Peer, label: "test".into() };
    server.client().create_token(pool, &request).unwrap().token.expect("a new token is shown")
}

struct Peer {
    stream: TcpStream,
    next_id: u32,
}

impl Peer {
    fn connect(port: u16) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer { stream, next_id: 1 }
    }

    fn send(&mut self, kind: u8, payload: &[&[u8]]) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = Vec::new();
        wire::frame(&mut frame, peer::MAX_BODY, kind, id, payload).unwrap();
        self.stream.write_all(&frame).unwrap();
        id
    }

    /// The next response `(kind, id, payload)`, or `None` if the server closed.
    fn response(&mut self) -> Option<(u8, u32, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.stream.read_exact(&mut body).ok()?;
        let (kind, id, payload) = wire::parse_body(&body).unwrap();
        Some((kind, id, payload.to_vec()))
    }

    fn call(&mut self, kind: u8, payload: &[&[u8]]) -> (u8, Vec<u8>) {
        let id = self.send(kind, payload);
        let (kind, got, payload) = self.response().expect("a response");
        assert_eq!(got, id, "responses carry the request id");
        (kind, payload)
    }

    fn hello(port: u16, token: &str, pool: &str) -> (Peer, u8, Vec<u8>) {
        let mut peer = Peer::connect(port);
        let (kind, payload) = peer.call(peer::HELLO, &[&peer::hello_payload(token, pool).unwrap()]);
        (peer, kind, payload)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_peer_host_keeps_records_and_refuses_bad_input_clearly() {
    let port = free_port();
    let server = memory_server(&temp_dir("peer"), port);
    let token = peer_token(&server, "mem");

    // Authentication and pool choice: a peer token of that very pool, never the admin token.
    let (_, kind, message) = Peer::hello(port, "wrong", "mem");
    assert_eq!((kind, text(&message).contains("wrong token")), (peer::ERROR, true));
    let (_, kind, message) = Peer::hello(port, &server.token, "mem");
    assert_eq!((kind, text(&message).contains("admin token never leaves its host")), (peer::ERROR, true));
    let (_, kind, message) = Peer::hello(port, &token, "nope");
    assert_eq!((kind, text(&message).contains("this token is for pool 'mem'")), (peer::ERROR, true));
    let frontend_token = server
        .client()
        .create_token("mem", &CreateTokenRequest { scope: TokenScope::Frontend, label: String::new() })
        .unwrap()
        .token
        .unwrap();
    let (_, kind, message) = Peer::hello(port, &frontend_token, "mem");
    assert_eq!((kind, text(&message).contains("this is a frontend token")), (peer::ERROR, true));
    let (_, kind, message) = Peer::hello(port, &peer_token(&server, "filtered"), "filtered");
    assert_eq!((kind, text(&message).contains("lone store")), (peer::ERROR, true));
    let mut not_hello = Peer::connect(port);
    assert_eq!(not_hello.call(peer::GET, &[&1u64.to_le_bytes()]).0, peer::ERROR);

    // Records: any length up to the page size + 4 KiB, pipelined.
    let (mut p, kind, page_size) = Peer::hello(port, &token, "mem");
    assert_eq!((kind, page_size), (peer::OK, 4096u32.to_le_bytes().to_vec()));
    let ids: Vec<u32> =
        (0..50u64).map(|o| p.send(peer::PUT, &[&o.to_le_bytes(), &vec![o as u8 + 1; 100 + o as usize]])).collect();
    for id in ids {
        assert_eq!(p.response().map(|(k, i, _)| (k, i)), Some((peer::OK, id)), "pipelined responses in order");
    }
    assert_eq!(p.call(peer::GET, &[&7u64.to_le_bytes()]), (peer::DATA, vec![8u8; 107]));
    assert_eq!(p.call(peer::GET, &[&999u64.to_le_bytes()]).0, peer::NOT_FOUND);
    assert_eq!(p.call(peer::DELETE, &[&7u64.to_le_bytes()]).0, peer::OK);
    assert_eq!(p.call(peer::GET, &[&7u64.to_le_bytes()]).0, peer::NOT_FOUND);
    let (kind, message) = p.call(peer::PUT, &[&1u64.to_le_bytes(), &vec![0u8; 4096 + 4097]]);
    assert_eq!((kind, text(&message).contains("takes 1 to 8192")), (peer::ERROR, true));
    assert_eq!(
        p.call(peer::GET, &[&1u64.to_le_bytes()]),
        (peer::DATA, vec![2u8; 101]),
        "a refused record keeps the old one"
    );
    let (kind, message) = p.call(peer::GET, &[b"short"]);
    assert_eq!((kind, text(&message).contains("shorter than an offset")), (peer::ERROR, true));
    assert_eq!(p.call(99, &[]).0, peer::ERROR);
    let info = server.client().pool("mem").unwrap();
    assert_eq!((info.counters["stored_pages"], info.counters["succ_stores"]), (49, 50));

    // An oversized frame: an ERROR, then the connection is closed; nothing stored is lost.
    p.stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let (kind, _, message) = p.response().expect("an error response");
    assert_eq!((kind, text(&message).contains("frame of")), (peer::ERROR, true));
    assert!(p.response().is_none(), "closed after a bad frame");
    // A truncated frame (the writer dies mid-frame): nothing happens to the pool.
    let (mut t, _, _) = Peer::hello(port, &token, "mem");
    let mut frame = Vec::new();
    wire::frame(&mut frame, peer::MAX_BODY, peer::PUT, 1, &[&3u64.to_le_bytes(), &[9u8; 500]]).unwrap();
    t.stream.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(t);
    std::thread::sleep(Duration::from_millis(200));
    let (mut p, _, _) = Peer::hello(port, &token, "mem");
    assert_eq!(p.call(peer::GET, &[&3u64.to_le_bytes()]), (peer::DATA, vec![4u8; 103]));
    assert_eq!(server.client().pool("mem").unwrap().counters["stored_pages"], 49);

    // A revoked token: its open connection ends at its next request, and it opens no new one.
    let made = server.client().create_token("mem", &CreateTokenRequest { scope: TokenScope::Peer, label: "q".into() });
    let made = made.unwrap();
    let other = made.token.clone().unwrap();
    let (mut q, kind, _) = Peer::hello(port, &other, "mem");
    assert_eq!(kind, peer::OK);
    server.client().revoke_token("mem", &made.id).unwrap();
    let (kind, message) = q.call(peer::GET, &[&3u64.to_le_bytes()]);
    assert_eq!((kind, text(&message).contains("revoked")), (peer::ERROR, true));
    assert!(q.response().is_none(), "closed after the revocation");
    assert_eq!(Peer::hello(port, &other, "mem").1, peer::ERROR);

    // CLEAR empties the pool; a destroyed pool is not served even to an open connection (its
    // tokens are revoked with it).
    assert_eq!(p.call(peer::CLEAR, &[]).0, peer::OK);
    assert_eq!(server.client().pool("mem").unwrap().counters["stored_pages"], 0);
    server.client().remove_pool("mem").unwrap();
    let (kind, message) = p.call(peer::GET, &[&3u64.to_le_bytes()]);
    assert_eq!((kind, text(&message).contains("revoked")), (peer::ERROR, true));
}
