//! A fake tmem peer host speaking the peer protocol.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tmem_api::{peer, wire};
use tmem_sdk::{GetError, Reject, Store};

use super::{PAGE, load, page, remote};
use crate::breaker::SKIPPED_STORES;

const TOKEN: &str = "secret";
const POOL: &str = "pool-b";

#[derive(Default)]
struct State {
    pages: HashMap<u64, Vec<u8>>,
    /// Requests after HELLO.
    requests: usize,
    connections: usize,
    /// PUTs of more bytes than this are REJECTED.
    reject_over: Option<usize>,
    /// Answer with a request id off by one.
    wrong_ids: bool,
    streams: Vec<TcpStream>,
}

struct FakePeer {
    addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakePeer {
    fn start() -> FakePeer {
        FakePeer::bind("127.0.0.1:0")
    }

    /// A server on `addr` (to come back where a killed one was).
    fn bind(addr: &str) -> FakePeer {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let mut s = state.lock().unwrap();
                    s.connections += 1;
                    s.streams.push(stream.try_clone().unwrap());
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, state));
                }
            })
        };
        FakePeer { addr, state, stop, accept: Some(accept) }
    }

    fn url(&self) -> String {
        format!("tmem://{}/{POOL}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stops listening and cuts every connection.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.state().streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    wire::read_frame(s, peer::MAX_BODY).ok().flatten()
}

/// Appends a response frame.
fn respond(out: &mut Vec<u8>, kind: u8, id: u32, payload: &[&[u8]]) {
    wire::frame(out, peer::MAX_BODY, kind, id, payload).unwrap();
}

fn serve(mut s: TcpStream, state: Arc<Mutex<State>>) {
    let mut out = Vec::new();
    let Some(hello) = read_frame(&mut s) else { return };
    let (kind, id, payload) = wire::parse_body(&hello).unwrap();
    assert_eq!((kind, id), (peer::HELLO, 0));
    let (token, pool) = peer::parse_hello(payload).unwrap();
    if token != TOKEN || pool != POOL {
        respond(&mut out, peer::ERROR, id, &[b"bad token or pool"]);
        let _ = s.write_all(&out);
        return;
    }
    respond(&mut out, peer::OK, id, &[&(PAGE as u32).to_le_bytes()]);
    if s.write_all(&out).is_err() {
        return;
    }
    while let Some(body) = read_frame(&mut s) {
        let (kind, id, payload) = wire::parse_body(&body).unwrap();
        let mut st = state.lock().unwrap();
        st.requests += 1;
        let reply_id = if st.wrong_ids { id.wrapping_add(1) } else { id };
        out.clear();
        match kind {
            peer::PUT => {
                let (offset, bytes) = peer::parse_offset(payload).unwrap();
                if st.reject_over.is_some_and(|max| bytes.len() > max) {
                    respond(&mut out, peer::REJECTED, reply_id, &[b"reject_alloc_fail"]);
                } else {
                    st.pages.insert(offset, bytes.to_vec());
                    respond(&mut out, peer::OK, reply_id, &[]);
                }
            }
            peer::GET => {
                let (offset, _) = peer::parse_offset(payload).unwrap();
                match st.pages.get(&offset) {
                    Some(bytes) => respond(&mut out, peer::DATA, reply_id, &[bytes]),
                    None => respond(&mut out, peer::NOT_FOUND, reply_id, &[]),
                }
            }
            peer::DELETE => {
                let (offset, _) = peer::parse_offset(payload).unwrap();
                st.pages.remove(&offset);
                respond(&mut out, peer::OK, reply_id, &[]);
            }
            peer::CLEAR => {
                st.pages.clear();
                respond(&mut out, peer::OK, reply_id, &[]);
            }
            _ => respond(&mut out, peer::ERROR, reply_id, &[b"unknown request"]),
        }
        drop(st);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

#[test]
fn pages_round_trip_through_a_memory_server() {
    let server = FakePeer::start();
    let mut store = remote(&[server.url()], TOKEN);
    for offset in 0..200u64 {
        store.put(offset, &page(offset, 100 + offset as usize * 20)).unwrap();
    }
    assert_eq!(server.state().pages.len(), 200);
    for offset in 0..200u64 {
        assert_eq!(load(&mut store, offset).unwrap(), page(offset, 100 + offset as usize * 20));
    }
    assert_eq!(load(&mut store, 1000), Err(GetError::NotFound));
    store.delete(7);
    store.delete(7);
    assert_eq!(load(&mut store, 7), Err(GetError::NotFound));
    assert_eq!(load(&mut store, 8).unwrap(), page(8, 260));
    // Overwrite.
    store.put(8, b"new").unwrap();
    assert_eq!(load(&mut store, 8).unwrap(), b"new");
    store.clear();
    assert!(server.state().pages.is_empty());
    assert_eq!(load(&mut store, 8), Err(GetError::NotFound));
    assert_eq!(server.state().connections, 1, "one connection, reused");
}

#[test]
fn a_rejected_put_is_alloc_fail_and_leaves_the_endpoint_usable() {
    let server = FakePeer::start();
    server.state().reject_over = Some(1000);
    let mut store = remote(&[server.url()], TOKEN);
    assert_eq!(store.put(1, &page(1, 2000)), Err(Reject::AllocFail));
    // Not a failure of the endpoint: the next store goes through at once.
    store.put(2, &page(2, 500)).unwrap();
    assert_eq!(load(&mut store, 2).unwrap(), page(2, 500));
    assert_eq!(load(&mut store, 1), Err(GetError::NotFound));
}

#[test]
fn a_wrong_token_or_pool_makes_the_endpoint_unavailable() {
    let server = FakePeer::start();
    let mut store = remote(&[server.url()], "wrong");
    assert_eq!(store.put(1, b"x"), Err(Reject::Unavailable));
    assert_eq!(load(&mut store, 1), Err(GetError::Unavailable));
    let mut store = remote(&[format!("tmem://{}/other-pool", server.addr)], TOKEN);
    assert_eq!(load(&mut store, 1), Err(GetError::Unavailable));
    assert!(server.state().pages.is_empty());
}

#[test]
fn a_response_with_the_wrong_id_or_too_many_bytes_is_never_returned_as_a_page() {
    let server = FakePeer::start();
    let mut store = remote(&[server.url()], TOKEN);
    store.put(1, &page(1, PAGE)).unwrap();
    server.state().wrong_ids = true;
    assert_eq!(load(&mut store, 1), Err(GetError::Unavailable));
    server.state().wrong_ids = false;
    // The connection was dropped; the next operation opens a new one.
    assert_eq!(load(&mut store, 1).unwrap(), page(1, PAGE));
    assert_eq!(server.state().connections, 2);

    // More bytes than the caller's buffer: unavailable, and the connection stays in step.
    server.state().pages.insert(2, vec![7; 10_000]);
    let mut out = vec![0u8; PAGE + 4096];
    assert_eq!(store.get(2, &mut out), Err(GetError::Unavailable));
    assert_eq!(load(&mut store, 1).unwrap(), page(1, PAGE));
}

#[test]
fn a_dead_server_makes_stores_fail_fast_until_the_breaker_lets_one_through() {
    let mut server = FakePeer::start();
    let addr = server.addr.clone();
    let mut store = remote(&[server.url()], TOKEN);
    store.put(1, b"one").unwrap();
    server.kill();
    // The first store after the server died finds out (and trips the breaker).
    assert_eq!(store.put(2, b"two"), Err(Reject::Unavailable));
    // A new server where the old one was: the next stores do not even try to reach it.
    let server = FakePeer::bind(&addr);
    for i in 0..SKIPPED_STORES {
        assert_eq!(store.put(10 + i as u64, b"x"), Err(Reject::Unavailable));
    }
    let st = server.state();
    assert_eq!((st.connections, st.requests), (0, 0), "no network while the breaker is open");
    drop(st);
    store.put(3, b"three").unwrap();
    assert_eq!(server.state().requests, 1);
    assert_eq!(load(&mut store, 3).unwrap(), b"three");
}

#[test]
fn loads_still_try_and_a_successful_load_closes_the_breaker() {
    let mut server = FakePeer::start();
    let addr = server.addr.clone();
    let mut store = remote(&[server.url()], TOKEN);
    store.put(1, b"one").unwrap();
    server.kill();
    assert_eq!(load(&mut store, 1), Err(GetError::Unavailable));
    assert_eq!(store.put(2, b"two"), Err(Reject::Unavailable), "the failed load tripped the breaker");
    let server = FakePeer::bind(&addr);
    // A load is owed its page: it tries even with the breaker open (this server lost it).
    assert_eq!(load(&mut store, 1), Err(GetError::NotFound));
    assert_eq!(server.state().requests, 1);
    // ... and its success closed the breaker.
    store.put(2, b"two").unwrap();
    // Deletes also try.
    store.delete(2);
    assert!(server.state().pages.is_empty());
}

#[test]
fn replicas_all_confirm_a_put_and_any_serves_a_get() {
    let mut a = FakePeer::start();
    let b = FakePeer::start();
    let mut store = remote(&[a.url(), b.url()], TOKEN);
    for offset in 0..50u64 {
        store.put(offset, &page(offset, 300)).unwrap();
    }
    assert_eq!((a.state().pages.len(), b.state().pages.len()), (50, 50));
    assert_eq!(load(&mut store, 5).unwrap(), page(5, 300));
    assert_eq!(b.state().requests, 50, "a get is served by the first replica");

    // Only one replica has it (the other lost it): still found.
    a.state().pages.remove(&6);
    assert_eq!(load(&mut store, 6).unwrap(), page(6, 300));

    store.delete(7);
    assert!(!a.state().pages.contains_key(&7) && !b.state().pages.contains_key(&7));

    // One replica refuses: the put is refused, and the other does not keep the page.
    b.state().reject_over = Some(1000);
    assert_eq!(store.put(100, &page(100, 2000)), Err(Reject::AllocFail));
    assert!(!a.state().pages.contains_key(&100));
    b.state().reject_over = None;

    // One replica dies: gets are served by the other, puts are refused.
    a.kill();
    assert_eq!(load(&mut store, 8).unwrap(), page(8, 300));
    assert_eq!(store.put(101, b"x"), Err(Reject::Unavailable));
    assert!(!b.state().pages.contains_key(&101));
    let before = b.state().requests;
    assert_eq!(load(&mut store, 9).unwrap(), page(9, 300));
    assert_eq!(b.state().requests, before + 1, "the live replica is asked first once the other failed");

    store.clear();
    assert!(b.state().pages.is_empty());
}
