//! `tmem serve` as a systemd service runs it: a config file (`--config`) declaring settings,
//! pools and swap devices, and the readiness protocol on `$NOTIFY_SOCKET` — here a Unix
//! datagram socket the test binds in systemd's place.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::temp_dir;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `tmem serve --config CONFIG ARGS` with `$NOTIFY_SOCKET` set to `notify`.
fn spawn(config: &Path, notify: &Path, args: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env_remove("TMEM_TOKEN")
        .env_remove("TMEM_DATA_DIR")
        .env_remove("TMEM_LISTEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("tmem binary runs")
}

/// The next datagram on `socket`, as text (panics after `limit`).
fn next_state(socket: &UnixDatagram, limit: Duration, log: &Path) -> String {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!("no notification within {limit:?} ({e}); log:\n{}", std::fs::read_to_string(log).unwrap()),
    }
}

fn sigterm(child: &mut Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ready_comes_after_the_declared_pools_exist_and_the_api_answers_and_a_restart_keeps_them() {
    let dir = temp_dir("systemd-ready");
    let data = dir.join("data");
    let port = free_port();
    let config = dir.join("tmem.toml");
    // The upper pool is listed first: its lower tier must still be created before it.
    std::fs::write(
        &config,
        format!(
            r#"
[serve]
listen = "127.0.0.1:{port}"
data_dir = "{}"
memory_limit = "256M"

[[pool]]
name = "fast"
backends = [{{ plugin = "zstd", config = {{ level = 1 }} }}, {{ plugin = "ram" }}]
max_pages = 1000
tier = {{ lower = "slow", idle_seconds = 60 }}

[[pool]]
name = "slow"
backends = [{{ plugin = "ram" }}]
"#,
            data.display()
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("serve.log");

    let mut server = Killed(spawn(&config, &notify_path, &[], &log));
    let state = next_state(&notify, Duration::from_secs(120), &log);
    assert!(state.lines().any(|l| l == "READY=1"), "{state}");
    assert!(state.contains("STATUS=serving 2 pools"), "{state}");
    // At READY, once: the API answers and the declared pools are there (no retry: READY
    // must not come before either).
    let token = std::fs::read_to_string(data.join("token")).unwrap().trim().to_string();
    let client = tmem_api::client::Client::new(&format!("http://127.0.0.1:{port}"), Some(token.clone()));
    assert!(client.health().is_ok(), "the API answers at READY");
    let pools = client.pools().unwrap();
    let mut names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["fast", "slow"]);
    let fast = client.pool("fast").unwrap();
    assert_eq!(fast.max_pages, Some(1000));
    assert_eq!(fast.tier.as_ref().map(|t| t.config.lower.as_str()), Some("slow"));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("declared pool exists"));

    sigterm(&mut server.0);
    let state = next_state(&notify, Duration::from_secs(30), &log);
    assert!(state.lines().any(|l| l == "STOPPING=1"), "{state}");
    assert!(server.0.wait().unwrap().success());

    // Again, with a flag overriding the file's listen address: the pools are kept (not
    // created twice, which would fail the start), the flag wins.
    let other_port = free_port();
    let listen = format!("127.0.0.1:{other_port}");
    let mut server = Killed(spawn(&config, &notify_path, &["--listen", &listen], &log));
    let state = next_state(&notify, Duration::from_secs(120), &log);
    assert!(state.lines().any(|l| l == "READY=1"), "{state}");
    let client = tmem_api::client::Client::new(&format!("http://{listen}"), Some(token));
    assert_eq!(client.pools().unwrap().len(), 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("declared pool exists") && !text.contains("other settings"), "{text}");
    sigterm(&mut server.0);
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_declared_swap_device_without_ublk_fails_the_start_clearly_and_is_never_ready() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("skipped: this machine has ublk, so the declared device would really be created");
        return;
    }
    let dir = temp_dir("systemd-noublk");
    let data = dir.join("data");
    let config = dir.join("tmem.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[serve]
listen = "127.0.0.1:0"
data_dir = "{data}"

[[pool]]
name = "swap"
backends = [{{ plugin = "ram" }}]

[[swap]]
pool = "swap"
ublk_id = 7
size = "16M"
backing = "{data}/swap.backing"
"#,
            data = data.display()
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("serve.log");
    let mut server = Killed(spawn(&config, &notify_path, &[], &log));
    let status = server.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("cannot attach the declared block device of pool 'swap'")
            && text.contains("/dev/ublk-control is missing"),
        "{text}"
    );
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    assert!(notify.recv(&mut buf).is_err(), "no READY=1 from a start that failed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_config_file_fails_the_start_naming_the_file_and_line() {
    let dir = temp_dir("systemd-invalid");
    let config = dir.join("tmem.toml");
    std::fs::write(&config, "[serve]\ndata_dir = \"/nonexistent/tmem\"\nmemroy_limit = \"20%\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tmem")).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("invalid config file {}", config.display()))
            && stderr.contains("line 3")
            && stderr.contains("memroy_limit"),
        "{stderr}"
    );
    assert!(!Path::new("/nonexistent/tmem").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
