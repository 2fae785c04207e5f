//! Every listener of a real `tmem serve` against floods (issue 16, item 2): the HTTP API, the
//! frontend socket, the peer listener, and NBD exports on a Unix socket and on TCP. Each is
//! flooded past its cap (`--max-connections 8`) with connections that say nothing and
//! connections that stop in the middle of their handshake; a real client still gets in within
//! a second (the flood's pending connections are evicted for it), and every flooding
//! connection is closed once the handshake deadline (`--handshake-timeout 2`) has passed. An
//! established NBD connection is never cut for being idle.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tmem_api::rest::{AttachRequest, BackendRequest, FrontendKind, PoolConfig};
use tmem_api::{frontend as proto, peer, wire};
use tmem_frontend::client::{FrontendClient, Op, OpResult};

use crate::common::{ServeProcess, run, tagged_page, temp_dir};

/// The cap every listener of these servers has.
const CAP: usize = 8;
/// The handshake deadline, seconds.
const HANDSHAKE_SECONDS: u64 = 2;
/// Flooding connections of each sort: together three times the cap.
const FLOOD: usize = 12;
/// How long a real client may take to get in (a generous bound for a loaded machine: it is
/// served at once, by evicting a flooder).
const GETS_IN: Duration = Duration::from_secs(1);
/// By when every flooding connection must have been closed (the deadline is 2 s).
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

fn bounded_server(tag: &str, extra: &[&str]) -> ServeProcess {
    let cap = CAP.to_string();
    let timeout = HANDSHAKE_SECONDS.to_string();
    let mut args = vec!["--max-connections", &cap, "--handshake-timeout", &timeout];
    args.extend_from_slice(extra);
    ServeProcess::start(&temp_dir(tag), &args)
}

/// A flooding connection.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn tcp(port: u16) -> Conn {
        Conn::Tcp(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    fn unix(path: &std::path::Path) -> Conn {
        Conn::Unix(UnixStream::connect(path).unwrap())
    }

    fn write(&mut self, bytes: &[u8]) {
        // A flooder the server already closed may fail to write: that is fine.
        let _ = match self {
            Conn::Tcp(s) => s.write_all(bytes),
            Conn::Unix(s) => s.write_all(bytes),
        };
    }

    /// Reads (and drops) what the server sends until it closes the connection, or `deadline`.
    fn closed_by(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let read = match self {
                Conn::Tcp(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(&mut buf)),
                Conn::Unix(s) => s.set_read_timeout(Some(left)).and_then(|()| s.read(&mut buf)),
            };
            match read {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true, // reset
            }
        }
    }
}

/// Opens `FLOOD` silent connections and `FLOOD` that send `half` (the start of a handshake)
/// and stop.
fn flood(connect: impl Fn() -> Conn, half: &[u8]) -> Vec<Conn> {
    let mut conns = Vec::new();
    for _ in 0..FLOOD {
        conns.push(connect());
        let mut half_open = connect();
        half_open.write(half);
        conns.push(half_open);
    }
    // Let the server accept them all before the real client comes.
    std::thread::sleep(Duration::from_millis(300));
    conns
}

/// Every flooding connection is closed by the server within [`CLOSED_WITHIN`] of `since`.
fn assert_flood_closed(conns: Vec<Conn>, since: Instant, what: &str) {
    let deadline = since + CLOSED_WITHIN;
    for (i, mut conn) in conns.into_iter().enumerate() {
        assert!(conn.closed_by(deadline), "{what}: flooding connection {i} still open after {CLOSED_WITHIN:?}");
    }
}

/// Runs `f`, which must succeed, and asserts it took at most [`GETS_IN`].
fn gets_in<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(started.elapsed() <= GETS_IN, "{what} took {:?} to get in past the flood", started.elapsed());
    out
}

fn http_port(server: &ServeProcess) -> u16 {
    server.url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn the_http_api_serves_a_client_through_a_flood_and_closes_the_flood() {
    let server = bounded_server("listen-rest", &[]);
    let port = http_port(&server);
    let started = Instant::now();
    let conns = flood(|| Conn::tcp(port), b"GET /api/v1/pools HTTP/1.1\r\nHost: x\r\n");
    // A fresh client (a new connection: the flood fills the cap) with the token.
    let pools = gets_in("the REST client", || server.client().pools().unwrap());
    assert!(pools.is_empty());
    assert_flood_closed(conns, started, "REST");
    // And still serving afterwards, through the CLI too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["pool", "list", "--server", &server.url, "--token", &server.token])
        .env_remove("TMEM_TOKEN")
        .env_remove("TMEM_SERVER")
        .env_remove("TMEM_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "the CLI after the flood: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_frontend_socket_serves_a_frontend_through_a_flood_and_closes_the_flood() {
    let server = bounded_server("listen-fe", &[]);
    server.client().create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let socket = server.data_dir.join("tmem.sock");
    let started = Instant::now();
    // Half-open: a HELLO frame of 10000 bytes announced, 100 sent.
    let mut half = 10_000u32.to_le_bytes().to_vec();
    half.extend_from_slice(&[proto::HELLO; 100]);
    let conns = flood(|| Conn::unix(&socket), &half);
    // A HELLO that claims 64 MiB is refused at once (nothing is allocated for it): it is
    // read before the connection has authenticated.
    let mut liar = Conn::unix(&socket);
    liar.write(&(proto::MAX_BODY as u32).to_le_bytes());
    assert!(liar.closed_by(Instant::now() + GETS_IN), "a 64 MiB HELLO is refused at once");
    let client = gets_in("the frontend client", || {
        FrontendClient::connect(&socket, &server.token, "p", "real").expect("a real frontend attaches")
    });
    let page = tagged_page(1);
    assert_eq!(client.batch(&[Op::Store(1, &page)]).unwrap(), [OpResult::Stored]);
    assert_flood_closed(conns, started, "frontend socket");
    // The attached frontend outlived the handshake deadline: it is established, not cut.
    assert_eq!(client.batch(&[Op::Load(1)]).unwrap(), [OpResult::Loaded { exclusive: false, page }]);
}

/// Says HELLO to the peer listener; the answer's kind.
fn peer_hello(port: u16, token: &str, pool: &str) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frame = Vec::new();
    wire::frame(&mut frame, peer::MAX_BODY, peer::HELLO, 1, &[&peer::hello_payload(token, pool).unwrap()]).unwrap();
    stream.write_all(&frame).unwrap();
    let body = wire::read_frame(&mut stream, peer::MAX_BODY).unwrap().expect("an answer");
    let (kind, _, _) = wire::parse_body(&body).unwrap();
    (stream, kind)
}

#[test]
fn the_peer_listener_serves_a_peer_through_a_flood_and_closes_the_flood() {
    let peer_port = crate::peer::free_port();
    let listen = format!("127.0.0.1:{peer_port}");
    let server = bounded_server("listen-peer", &["--peer-listen", &listen]);
    server.client().create_pool(&PoolConfig::new("mem", vec![BackendRequest::new("ram")])).unwrap();
    let token = crate::peer::peer_token(&server, "mem");
    let started = Instant::now();
    let mut half = 1000u32.to_le_bytes().to_vec();
    half.extend_from_slice(&[peer::HELLO; 10]);
    let conns = flood(|| Conn::tcp(peer_port), &half);
    let mut liar = Conn::tcp(peer_port);
    liar.write(&(peer::MAX_BODY as u32).to_le_bytes());
    assert!(liar.closed_by(Instant::now() + GETS_IN), "a 2 MiB HELLO is refused at once");
    let (_peer, kind) = gets_in("the peer", || peer_hello(peer_port, &token, "mem"));
    assert_eq!(kind, peer::OK);
    assert_flood_closed(conns, started, "peer listener");
}

/// An NBD client's handshake up to transmission (fixed newstyle, `OPT_GO` of the default
/// export): the connection and the export's size.
fn nbd_session(conn: Conn) -> (Conn, u64) {
    let mut stream: Box<dyn ReadWrite> = match &conn {
        Conn::Tcp(s) => Box::new(s.try_clone().unwrap()),
        Conn::Unix(s) => Box::new(s.try_clone().unwrap()),
    };
    let mut hello = [0u8; 18];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"IHAVEOPT");
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&6u32.to_be_bytes());
    go.extend_from_slice(&[0; 6]);
    stream.write_all(&go).unwrap();
    let mut size = 0;
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let mut data = vec![0u8; u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize];
        stream.read_exact(&mut data).unwrap();
        match kind {
            1 => break,
            3 if data[..2] == [0, 0] => size = u64::from_be_bytes(data[2..10].try_into().unwrap()),
            3 => {}
            other => panic!("unexpected option reply {other:#x}"),
        }
    }
    (conn, size)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A 4 KiB read at offset 0 on an established NBD connection: its error number.
fn nbd_read(conn: &mut Conn) -> u32 {
    let mut request = 0x2560_9513u32.to_be_bytes().to_vec();
    request.extend_from_slice(&[0, 0, 0, 0]); // flags, READ
    request.extend_from_slice(&7u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(&4096u32.to_be_bytes());
    let mut reply = [0u8; 16 + 4096];
    let mut read = |stream: &mut dyn ReadWrite| {
        stream.write_all(&request).unwrap();
        stream.read_exact(&mut reply[..16]).unwrap();
    };
    match conn {
        Conn::Tcp(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            read(s)
        }
        Conn::Unix(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            read(s)
        }
    }
    let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
    if error == 0 {
        let data = &mut reply[16..];
        match conn {
            Conn::Tcp(s) => s.read_exact(data).unwrap(),
            Conn::Unix(s) => s.read_exact(data).unwrap(),
        }
    }
    error
}

fn nbd_flood(tcp: bool) {
    let server = bounded_server(if tcp { "listen-nbd-tcp" } else { "listen-nbd-unix" }, &[]);
    let dir = server.data_dir.clone();
    let client = server.client();
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let request = AttachRequest {
        kind: FrontendKind::Nbd,
        size_bytes: 16 << 20,
        backing: dir.join("backing.img").display().to_string(),
        socket: (!tcp).then(|| dir.join("nbd.sock").display().to_string()),
        listen: tcp.then(|| "127.0.0.1:0".to_string()),
        allow_remote: false,
        // The hand-written client here speaks plain NBD: the bounds are what is tested.
        insecure_no_tls: tcp,
        ublk_id: None,
    };
    let attached = client.attach_frontend("p", &request).unwrap();
    let uri = attached.address.clone();
    let connect = || -> Conn {
        if tcp {
            let port = uri.rsplit(':').next().unwrap().parse().unwrap();
            Conn::tcp(port)
        } else {
            Conn::unix(&dir.join("nbd.sock"))
        }
    };
    // An established connection that then sits idle past the handshake deadline (a swap
    // device nobody swaps to right now).
    let (mut idle, size) = nbd_session(connect());
    assert_eq!(size, 16 << 20);
    std::thread::sleep(Duration::from_secs(HANDSHAKE_SECONDS + 1));
    let started = Instant::now();
    // Half-open: the client flags and half an option header.
    let mut half = 3u32.to_be_bytes().to_vec();
    half.extend_from_slice(b"IHAVE");
    let conns = flood(connect, &half);
    gets_in("nbdinfo", || run("nbdinfo", &["--size", &uri]));
    assert_eq!(nbd_read(&mut idle), 0, "the idle established connection still serves after the flood");
    assert_flood_closed(conns, started, if tcp { "NBD over TCP" } else { "NBD over a Unix socket" });
    assert_eq!(nbd_read(&mut idle), 0, "and after the flood was closed");
}

#[test]
fn an_nbd_export_on_a_unix_socket_serves_nbdinfo_through_a_flood_and_keeps_its_idle_client() {
    nbd_flood(false);
}

#[test]
fn an_nbd_export_on_tcp_serves_nbdinfo_through_a_flood_and_keeps_its_idle_client() {
    nbd_flood(true);
}
