//! The remote store over TLS, between real processes: a `tmem serve` whose `[zstd, remote]`
//! pool keeps its pages on a peer host over `tmems://` (the peer listener with the host's
//! certificate) and in a real `redis-server --tls-port` over `rediss://`, the host making the
//! TLS sessions for the sandboxed plugin. And the refusals: a plain client at a TLS peer
//! listener, a server whose certificate the host does not trust, plain endpoints beyond
//! loopback and a plain peer listener beyond loopback without `--insecure-plain-tcp`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tmem_api::rest::{BackendRequest, PoolConfig};
use tmem_api::{peer, wire};

use crate::common::{ServeProcess, tagged_page, temp_dir};
use crate::nbd_tls::pki;
use crate::peer::{free_port, peer_token};
use crate::remote::{counter, remote_pool, round_trips};

#[test]
fn a_remote_pool_over_tmems_stores_and_loads_and_plain_or_untrusting_clients_are_refused() {
    let dir = temp_dir("remote-tmems");
    let pki = pki(&dir);
    let (cert, key, ca) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.ca_cert.to_str().unwrap());
    let peer_port = free_port();
    // (With its certificate, B's API is HTTPS too.)
    let b = ServeProcess::start_https(
        &dir.join("b"),
        &["--peer-listen", &format!("127.0.0.1:{peer_port}"), "--tls-cert", cert, "--tls-key", key],
        &pki.ca_cert,
        None,
    );
    b.client().create_pool(&PoolConfig::new("mem", vec![BackendRequest::new("ram")])).unwrap();
    let token = peer_token(&b, "mem");

    // A trusts the CA that signed B's certificate: its pool's pages live on B, over TLS.
    let a = ServeProcess::start(&dir.join("a"), &["--tls-ca", ca]);
    let client = a.client();
    let endpoint = format!("tmems://127.0.0.1:{peer_port}/mem");
    client.create_pool(&remote_pool("r", std::slice::from_ref(&endpoint), &token)).unwrap();
    round_trips(&client, "r", 60);
    let stored = counter(&client, "r", "stored_pages");
    assert!(stored > 0);
    assert_eq!(b.client().pool("mem").unwrap().counters["stored_pages"], stored, "the pages are on B");

    // A plain client at B's TLS listener: its HELLO is not TLS, and no protocol answer comes.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut frame = Vec::new();
    wire::frame(&mut frame, peer::MAX_BODY, peer::HELLO, 1, &[&peer::hello_payload(&token, "mem").unwrap()]).unwrap();
    plain.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a plain HELLO got something other than a TLS alert or nothing: {answer:?}"
    );
    // A plain remote store at the TLS listener is refused too: its stores fail.
    let c = ServeProcess::start(&dir.join("c"), &[]);
    let plain_endpoint = format!("tmem://127.0.0.1:{peer_port}/mem");
    c.client().create_pool(&remote_pool("plain", &[plain_endpoint], &token)).unwrap();
    assert_ne!(c.client().put_page("plain", 1, &tagged_page(1)).unwrap().outcome, "stored");
    // A host that does not trust B's CA (only the system's) stores nothing there.
    c.client().create_pool(&remote_pool("untrusting", &[endpoint], &token)).unwrap();
    assert_ne!(c.client().put_page("untrusting", 1, &tagged_page(1)).unwrap().outcome, "stored");
    assert_eq!(b.client().pool("mem").unwrap().counters["stored_pages"], stored, "nothing more reached B");
}

/// A `redis-server` serving TLS only (`--port 0 --tls-port PORT`) with the test CA's server
/// certificate, killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    ca: String,
}

impl TlsRedis {
    fn start(dir: &Path, cert: &str, key: &str, ca: &str) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/install-deps.sh --test)");
        let redis = TlsRedis { child, port, ca: ca.to_string() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.cli(&["ping"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server with TLS on {port} did not start (built without TLS?)");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.ca, "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pages_live_in_a_tls_redis_over_rediss_and_plain_redis_cannot_reach_it() {
    let dir = temp_dir("remote-rediss");
    let pki = pki(&dir);
    let (cert, key, ca) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.ca_cert.to_str().unwrap());
    let redis = TlsRedis::start(&dir, cert, key, ca);
    let a = ServeProcess::start(&dir.join("a"), &["--tls-ca", ca]);
    let client = a.client();
    client.create_pool(&remote_pool("r", &[format!("rediss://127.0.0.1:{}/ns1", redis.port)], "")).unwrap();
    round_trips(&client, "r", 60);
    let stored = counter(&client, "r", "stored_pages");
    assert!(stored > 0);
    assert_eq!(redis.cli(&["dbsize"]), stored.to_string(), "one key per page, over TLS");
    // Plain RESP at the TLS port: refused, nothing stored.
    client.create_pool(&remote_pool("plain", &[format!("redis://127.0.0.1:{}/ns2", redis.port)], "")).unwrap();
    assert_ne!(client.put_page("plain", 1, &tagged_page(1)).unwrap().outcome, "stored");
    assert_eq!(redis.cli(&["dbsize"]), stored.to_string());
}

#[test]
fn plain_tcp_beyond_loopback_needs_the_insecure_flag() {
    let dir = temp_dir("remote-plain-remote");
    let a = ServeProcess::start(&dir.join("a"), &[]);
    // 192.0.2.0/24 is TEST-NET-1: never reached; the refusal comes before any connect.
    let refused = a.client().create_pool(&remote_pool("far", &["tmem://192.0.2.1:7001/mem".into()], "t")).unwrap_err();
    assert!(refused.to_string().contains("--insecure-plain-tcp"), "{refused}");
    let refused = a.client().create_pool(&remote_pool("far", &["redis://192.0.2.1:6379/n".into()], "")).unwrap_err();
    assert!(refused.to_string().contains("--insecure-plain-tcp"), "{refused}");
    drop(a);
    let insecure = ServeProcess::start(&dir.join("b"), &["--insecure-plain-tcp"]);
    insecure.client().create_pool(&remote_pool("far", &["tmem://192.0.2.1:7001/mem".into()], "t")).unwrap();

    // A peer listener beyond loopback without TLS: `tmem serve` refuses to start.
    let out = Command::new("timeout")
        .args(["30", env!("CARGO_BIN_EXE_tmem"), "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("c"))
        .args(["--peer-listen", &format!("0.0.0.0:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--insecure-plain-tcp"), "{}: {stderr}", out.status);

    // A peer listener over TLS with pre-shared keys only: remote stores check a certificate.
    let psk = dir.join("keys.psk");
    std::fs::write(&psk, "alice:00112233445566778899aabbccddeeff\n").unwrap();
    let out = Command::new("timeout")
        .args(["30", env!("CARGO_BIN_EXE_tmem"), "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("d"))
        .args(["--peer-listen", &format!("127.0.0.1:{}", free_port()), "--tls-psk", psk.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs --tls-cert"), "{}: {stderr}", out.status);
}
