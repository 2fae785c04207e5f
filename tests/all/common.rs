//! Shared helpers: hosts sized for tests, the bundled chains, fixtures.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tmem_host::plugin::{EngineOptions, SandboxLimits};
use tmem_host::{BackendSpec, Host, HostConfig, PoolSpec};

/// A host with no data dir and a modest number of instance slots (tests run in parallel).
pub fn host() -> Host {
    Host::new(HostConfig { engine: EngineOptions { max_instances: 200, ..Default::default() }, ..Default::default() })
        .expect("host starts")
}

/// Every bundled chain the contract must hold for, by name. The remote chain reaches a fresh
/// `[ram]` pool of an in-process peer host (a second host serving the peer protocol on a
/// loopback port), one per call, so tests running in parallel never share offsets.
pub fn bundled_chains() -> Vec<(&'static str, Vec<BackendSpec>)> {
    vec![
        ("[ram]", vec![BackendSpec::new("ram")]),
        ("[zstd, ram]", vec![BackendSpec::new("zstd"), BackendSpec::new("ram")]),
        (
            "[zstd(store_raw), ram]",
            vec![BackendSpec::with_config("zstd", json!({"on_incompressible": "store_raw"})), BackendSpec::new("ram")],
        ),
        ("[zstd, remote(peer)]", vec![BackendSpec::new("zstd"), remote_to_memory_server()]),
        ("[lz4, ram]", vec![BackendSpec::new("lz4"), BackendSpec::new("ram")]),
    ]
}

struct MemoryServer {
    host: std::sync::Arc<Host>,
    address: std::net::SocketAddr,
}

const MEMORY_SERVER_TOKEN: &str = "contract-token";

fn memory_server() -> &'static MemoryServer {
    static SERVER: std::sync::OnceLock<MemoryServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let host = std::sync::Arc::new(Host::new(HostConfig::default()).expect("peer host"));
        let runtime = Box::leak(Box::new(tokio::runtime::Runtime::new().expect("runtime")));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let address = listener.local_addr().unwrap();
        let token = tmem_host::rest::auth::ApiToken::new(MEMORY_SERVER_TOKEN);
        runtime.spawn(tmem_host::peer::serve_peers(
            host.clone(),
            token,
            listener,
            tmem_host::listen::ListenerLimits::PEER,
            None,
            std::future::pending(),
        ));
        MemoryServer { host, address }
    })
}

/// A `remote` backend reaching a fresh pool of the in-process peer host.
pub fn remote_to_memory_server() -> BackendSpec {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let server = memory_server();
    let name = format!("b{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let config = tmem_api::rest::PoolConfig {
        page_size: 2 << 20, // records of any of the contract's page sizes fit
        ..tmem_api::rest::PoolConfig::new(&name, vec![BackendSpec::new("ram")])
    };
    server.host.create_pool_from(&config).expect("a peer pool");
    let token = server.host.create_token(&name, tmem_api::rest::TokenScope::Peer, "contract").expect("a peer token");
    BackendSpec {
        grants: vec!["network".into()],
        config: json!({"endpoints": [format!("tmem://{}/{name}", server.address)], "timeout_ms": 2000, "token": token.token}),
        ..BackendSpec::new("remote")
    }
}

/// A pool spec with 4 shards (so tests exercise several) and a plugin deadline long enough
/// that a loaded machine's scheduling never trips it (tests of the deadline set their own).
pub fn spec(name: &str) -> PoolSpec {
    let mut spec = PoolSpec::new(name);
    spec.shards = Some(4);
    spec.sandbox = SandboxLimits { call_timeout: Duration::from_secs(1), memory_bytes: 16 << 20, ..Default::default() };
    spec
}

/// A compressible page that names `tag` all over, so a torn or stale page is recognisable.
pub fn tagged_page(tag: u64) -> Vec<u8> {
    format!("<page {tag:016x}> ").bytes().cycle().take(4096).collect()
}

/// Registers the `misbehave` fixture (built from `plugins/misbehave`) on `host`.
pub fn register_misbehave(host: &Host) {
    let bytes = tmem_host::bundled::built("tmem_plugin_misbehave").expect("fixture was built by host/build.rs");
    host.add_plugin(None, &bytes).expect("fixture loads");
}

/// A real `tmem serve` child process on a free loopback port, with its own data dir. Killed
/// (SIGKILL) when dropped; [`ServeProcess::stop`] stops it gracefully.
pub struct ServeProcess {
    /// The child.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT` (`https://` for [`ServeProcess::start_https`]).
    pub url: String,
    /// The CA its clients trust (over HTTPS).
    pub ca: Option<std::path::PathBuf>,
    /// The data dir (kept after the process ends, so a restart can reuse it).
    pub data_dir: std::path::PathBuf,
    /// The API token the server wrote to `DATA_DIR/token`.
    pub token: String,
}

impl ServeProcess {
    /// Starts `tmem serve` on `data_dir` (created if needed; an existing one is restored) with
    /// extra arguments, and waits until `/healthz` answers.
    pub fn start(data_dir: &std::path::Path, extra_args: &[&str]) -> Self {
        Self::start_logged(data_dir, extra_args, None)
    }

    /// [`ServeProcess::start`], with the server's log (`RUST_LOG=info`) written to `log`.
    pub fn start_logged(data_dir: &std::path::Path, extra_args: &[&str], log: Option<&std::path::Path>) -> Self {
        Self::spawn(data_dir, extra_args, log, None)
    }

    /// [`ServeProcess::start_logged`] for a server whose API is HTTPS (`extra_args` give it
    /// `--tls-cert` and `--tls-key`), which its clients reach trusting `ca`.
    pub fn start_https(
        data_dir: &std::path::Path,
        extra_args: &[&str],
        ca: &std::path::Path,
        log: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn(data_dir, extra_args, log, Some(ca))
    }

    fn spawn(
        data_dir: &std::path::Path,
        extra_args: &[&str],
        log: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stderr = match log {
            Some(path) => std::fs::File::create(path).expect("log file").into(),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tmem"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            // A loopback API is HTTPS only when asked (`--api-tls`).
            .args(ca.map(|_| "--api-tls"))
            .env_remove("TMEM_TOKEN")
            .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
            .stderr(stderr)
            .spawn()
            .expect("tmem binary runs");
        let scheme = if ca.is_some() { "https" } else { "http" };
        let mut server = ServeProcess {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            ca: ca.map(Into::into),
            data_dir: data_dir.into(),
            token: String::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(status) = server.child.try_wait() {
                assert!(status.is_none(), "tmem serve exited early: {status:?}");
            }
            let up = match ca {
                None => ureq::get(&format!("{}/healthz", server.url)).call().is_ok(),
                Some(_) => server.client().health().is_ok(),
            };
            if up {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "tmem serve did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.token = std::fs::read_to_string(data_dir.join("token")).expect("token file").trim().to_string();
        server
    }

    /// A client of this server with its token.
    pub fn client(&self) -> tmem_api::client::Client {
        match &self.ca {
            None => tmem_api::client::Client::new(&self.url, Some(self.token.clone())),
            Some(ca) => {
                let files = tmem_host::tls::TlsFiles { ca: Some(ca.clone()), ..Default::default() };
                let tls = tmem_host::tls::TlsClient::new(&files, false).expect("a TLS client trusting the test CA");
                let connector = tmem_host::tls::https_connector(std::sync::Arc::new(tls));
                tmem_api::client::Client::with_connector(&self.url, Some(self.token.clone()), connector)
            }
        }
    }

    /// Runs the `tmem` CLI against this server (its token read from the data dir, as a user's
    /// would be); panics with its stderr unless it succeeds, returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tmem"));
        command.args(args).env("TMEM_SERVER", &self.url).env("TMEM_DATA_DIR", &self.data_dir).env_remove("TMEM_TOKEN");
        match &self.ca {
            Some(ca) => command.env("TMEM_TLS_CA", ca),
            None => command.env_remove("TMEM_TLS_CA"),
        };
        let output = command.output().unwrap();
        assert!(output.status.success(), "tmem {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// SIGTERM, then waits; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        status.success()
    }

    /// SIGTERM, then waits at most `limit`: whether it exited successfully, or `None` when it
    /// was still running (it is then killed, so a hung shutdown fails a test instead of
    /// hanging it).
    pub fn stop_within(mut self, limit: Duration) -> Option<bool> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A fresh, empty directory under the system temp dir, unique to this test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tmem-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tool args` under a 300 s timeout; panics with its output unless it succeeds.
pub fn run(tool: &str, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .arg("300")
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run timeout {tool}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(127) {
        panic!("{tool} is not installed: run scripts/install-deps.sh --test (qemu-utils libnbd-bin fio nbdkit)");
    }
    assert!(output.status.success(), "{tool} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

/// `qemu-io` on `uri` with one `-c` per command; every command must succeed (qemu-io exits
/// non-zero on a failed command or a pattern mismatch). Returns its output.
pub fn qemu_io(uri: &str, commands: &[impl AsRef<str>]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for command in commands {
        args.extend(["-c", command.as_ref()]);
    }
    let out = run("qemu-io", &args);
    assert!(!out.contains("failed") && !out.contains("error"), "qemu-io reported a failure:\n{out}");
    out
}
