//! `tmem serve` as a real process on a loopback port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_starts_with_the_demo_pool_answers_health_and_stops_on_sigterm() {
    let port = free_port();
    let data_dir = std::env::temp_dir().join(format!("tmem-serve-test-{}", std::process::id()));
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_tmem"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--demo-pool", "--data-dir"])
            .arg(&data_dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        match http_get(port, "/healthz") {
            Ok(response) if response.starts_with("HTTP/1.1 200") => break response,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("tmem serve did not come up: {other:?}"),
        }
    };
    assert!(body.contains(r#""status":"ok""#) && body.contains(r#""pools":1"#), "{body}");
    assert!(data_dir.join("cache/modules").read_dir().unwrap().count() >= 2, "compiled plugins cached");
    // SIGTERM: a graceful stop with exit status 0.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc_kill(server.0.id() as i32, 15) };
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn serve_refuses_an_address_in_use_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data_dir = std::env::temp_dir().join(format!("tmem-serve-busy-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
