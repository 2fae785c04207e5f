//! The store against servers: a fake tmem peer host (peer protocol), and, when installed,
//! a real `redis-server` and a real three-node Redis Cluster.

mod peer;
mod redis;

use tmem_sdk::Store;

use crate::{Remote, RemoteConfig};

const PAGE: usize = 4096;

/// A store for `endpoints` (`token` may be empty), as the host would build it.
fn remote(endpoints: &[String], token: &str) -> Remote {
    let config = RemoteConfig { endpoints: endpoints.to_vec(), timeout_ms: 200, token: token.into() };
    Remote::new(config, PAGE).unwrap_or_else(|e| panic!("new({endpoints:?}): {e}"))
}

/// Deterministic, offset-specific page contents.
fn page(offset: u64, len: usize) -> Vec<u8> {
    let mut x = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The page at `offset`, or the error.
fn load(store: &mut Remote, offset: u64) -> Result<Vec<u8>, tmem_sdk::GetError> {
    let mut out = vec![0u8; tmem_api::abi::io_capacity(PAGE as u32) as usize];
    let n = store.get(offset, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn config_errors_are_reported_by_new() {
    let err = |endpoints: &[&str]| {
        let config = RemoteConfig {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            timeout_ms: 200,
            token: String::new(),
        };
        Remote::new(config, PAGE).err().expect("refused")
    };
    assert!(err(&[]).contains("empty"));
    assert!(err(&["tmem://127.0.0.1:1/p", "redis://127.0.0.1:2/n"]).contains("mixes"));
    assert!(err(&["redis://127.0.0.1:2"]).contains("namespace"));
    // Nothing connects in `new`: an unreachable endpoint is not a config error.
    let config = RemoteConfig { endpoints: vec!["tmem://127.0.0.1:1/p".into()], timeout_ms: 200, token: String::new() };
    assert!(Remote::new(config, PAGE).is_ok());
}

#[test]
fn the_manifest_asks_for_the_network() {
    use tmem_sdk::Capability;
    assert_eq!(<Remote as Store>::CAPABILITIES, &[Capability::Network]);
    let keys: Vec<&str> = <Remote as Store>::CONFIG.iter().map(|k| k.key.as_ref()).collect();
    assert_eq!(keys, ["endpoints", "timeout_ms", "token"]);
}

#[test]
fn resp_lines_split_anywhere_are_read_whole() {
    use std::io::Write;
    use tmem_sdk::net::Connection;

    use crate::resp::{Reply, RespConn};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        for piece in [&b"+O"[..], b"K\r", b"\n$5\r\nhel", b"lo\r\n*2\r\n:7\r", b"\n$-1\r\n$3\r\nabc\r\n-ERR x\r\n"] {
            s.write_all(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let mut c = RespConn::new(Connection::connect(&addr).unwrap());
    assert_eq!(c.reply(None).unwrap(), Reply::Status("OK".into()));
    assert_eq!(c.reply(None).unwrap(), Reply::Bulk(Some(b"hello".to_vec())));
    assert_eq!(c.reply(None).unwrap(), Reply::Array(Some(vec![Reply::Int(7), Reply::Bulk(None)])));
    let mut small = [0u8; 2];
    assert_eq!(c.reply(Some(&mut small)).unwrap(), Reply::TooLong);
    assert_eq!(c.reply(None).unwrap(), Reply::Error("ERR x".into()));
    server.join().unwrap();
}
