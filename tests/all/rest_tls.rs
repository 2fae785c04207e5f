//! The REST listener over HTTPS, between real processes: a `tmem serve` with a certificate
//! (made with the `openssl` CLI) serves its API, dashboard and metrics over HTTPS only, which
//! the `tmem` CLI (`--server https://… --tls-ca`), the API client and `curl --cacert` speak;
//! and the refusals: plain HTTP at the HTTPS listener, clients that do not trust the server's
//! CA or whose URL its certificate does not name, connections that never finish their TLS
//! handshake, and a plain REST listener beyond loopback without `--insecure-plain-tcp`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tmem_api::client::Client;

use crate::common::{ServeProcess, run, temp_dir};
use crate::nbd_tls::{issue_certificate, pki};

/// Runs the `tmem` CLI with `args` and no TMEM_* variable of the caller's.
fn tmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(args)
        .env_remove("TMEM_SERVER")
        .env_remove("TMEM_TOKEN")
        .env_remove("TMEM_TLS_CA")
        .env_remove("TMEM_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The port of `url` (`scheme://127.0.0.1:PORT`).
fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A `tmem serve` with the test PKI's certificate (for 127.0.0.1 and localhost), its log
/// in `DIR/serve.log`.
fn https_server(dir: &Path, extra: &[&str]) -> ServeProcess {
    let pki = pki(dir);
    let mut args = vec!["--tls-cert", pki.server_cert.to_str().unwrap(), "--tls-key", pki.server_key.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServeProcess::start_https(&dir.join("data"), &args, &pki.ca_cert, Some(&dir.join("serve.log")))
}

#[test]
fn the_cli_the_client_and_curl_speak_https_and_plain_http_is_refused() {
    let dir = temp_dir("rest-tls");
    let server = https_server(&dir, &[]);
    let (url, ca) = (server.url.clone(), server.ca.clone().unwrap());
    assert!(url.starts_with("https://"));
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(log.contains(&format!("dashboard at {url}/")), "the log shows the https:// address:\n{log}");

    // The CLI over https, trusting the test CA with --tls-ca: creates and lists a pool.
    let data_dir = server.data_dir.to_str().unwrap().to_string();
    let ca_arg = ca.to_str().unwrap();
    let connect = ["--server", &url, "--tls-ca", ca_arg, "--data-dir", &data_dir];
    let created = tmem(&[&["pool", "create", "over-tls", "--backend", "ram"][..], &connect].concat());
    assert!(created.status.success(), "tmem pool create over https: {}", text(&created.stderr));
    let listed = tmem(&[&["pool", "ls"][..], &connect].concat());
    assert!(listed.status.success(), "tmem pool ls over https: {}", text(&listed.stderr));
    assert!(text(&listed.stdout).lines().any(|l| l.starts_with("over-tls ")), "{}", text(&listed.stdout));
    // `tmem swap status` (as `swap on`/`off`) talks to the host through the same client.
    let status = tmem(&[&["swap", "status"][..], &connect].concat());
    assert!(status.status.success(), "tmem swap status over https: {}", text(&status.stderr));
    // TMEM_TLS_CA does what --tls-ca does (the variable `tmem serve --tls-ca` reads too).
    assert!(server.cli(&["pool", "show", "over-tls"]).contains("over-tls"));
    // The API client, with the same connector, sees the pool.
    assert_eq!(server.client().pool("over-tls").unwrap().name, "over-tls");

    // curl, another TLS client, with the CA: the stats with the token, 401 without it.
    let stats = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--cacert",
            ca_arg,
            "-H",
            &format!("Authorization: Bearer {}", server.token),
            &format!("{url}/api/v1/stats"),
        ],
    );
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("the stats are JSON");
    assert_eq!(stats["host"]["pools"], 1, "{stats}");
    let status = run(
        "curl",
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca_arg, &format!("{url}/api/v1/stats")],
    );
    assert_eq!(status, "401");
    // curl without the CA (the system's only) refuses the server.
    let untrusting = Command::new("curl").args(["-sS", &format!("{url}/healthz")]).output().unwrap();
    // (60: the certificate is not trusted; 77: this machine has no CA bundle at all.)
    assert!(
        matches!(untrusting.status.code(), Some(60 | 77)),
        "curl: {:?} {}",
        untrusting.status,
        text(&untrusting.stderr)
    );

    // Plain HTTP at the HTTPS listener: a 400 `https_required` and nothing else — through the
    // API client, and as raw bytes (the token never reaches the API).
    let plain = format!("http://127.0.0.1:{}", port(&url));
    let refused = Client::new(&plain, Some(server.token.clone())).pools().unwrap_err();
    assert_eq!(refused.code(), Some("https_required"), "{refused}");
    assert_eq!(refused.status(), Some(400));
    let mut raw = TcpStream::connect(("127.0.0.1", port(&url))).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(raw, "GET /api/v1/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", server.token).unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("https_required"), "{answer}");
    assert!(!answer.contains("over-tls"), "a plain request was served: {answer}");
    // The CLI at an http:// URL says what to do.
    let wrong_scheme = tmem(&["pool", "ls", "--server", &plain, "--data-dir", &data_dir]);
    assert!(!wrong_scheme.status.success());
    assert!(text(&wrong_scheme.stderr).contains("use an https:// URL"), "{}", text(&wrong_scheme.stderr));
}

#[test]
fn clients_that_do_not_trust_the_certificate_or_whose_url_it_does_not_name_refuse_the_server() {
    let dir = temp_dir("rest-tls-untrusted");
    let server = https_server(&dir, &[]);
    let data_dir = server.data_dir.to_str().unwrap().to_string();

    // No --tls-ca: the system's CAs did not sign the test CA; nothing reaches the API.
    let untrusting =
        tmem(&["pool", "create", "never", "--backend", "ram", "--server", &server.url, "--data-dir", &data_dir]);
    let stderr = text(&untrusting.stderr);
    assert!(!untrusting.status.success(), "the CLI trusted an unknown CA");
    assert!(stderr.contains("the server's certificate") && stderr.contains("--tls-ca"), "{stderr}");
    assert!(server.client().pool("never").is_err(), "the pool was created through an untrusted connection");
    // A CA file that signed nothing of the server's: refused as well.
    let other = temp_dir("rest-tls-other-ca");
    let other_pki = pki(&other);
    let wrong_ca = other_pki.ca_cert.to_str().unwrap();
    let out = tmem(&["pool", "ls", "--server", &server.url, "--tls-ca", wrong_ca, "--data-dir", &data_dir]);
    assert!(!out.status.success() && text(&out.stderr).contains("the server's certificate"), "{}", text(&out.stderr));

    // A CA file that is not there: said so, before any connection.
    let missing = dir.join("no-such-ca.pem");
    let out =
        tmem(&["pool", "ls", "--server", &server.url, "--tls-ca", missing.to_str().unwrap(), "--data-dir", &data_dir]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot load the CA certificates"), "{stderr}");

    // A certificate the right CA signed, for another name: the host name is checked.
    let (cert, key) = issue_certificate(
        &dir,
        "far",
        "/CN=elsewhere.example",
        "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
    );
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let ca_cert = p(&dir.join("ca-cert.pem"));
    let misnamed_dir = p(&dir.join("misnamed"));
    let (out, _, _) = probe_serve(
        &dir,
        "misnamed",
        "127.0.0.1:0",
        &["--tls-cert", &p(&cert), "--tls-key", &p(&key), "--api-tls"],
        |port| {
            let https_url = format!("https://127.0.0.1:{port}");
            tmem(&["pool", "ls", "--server", &https_url, "--tls-ca", &ca_cert, "--data-dir", &misnamed_dir])
        },
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "the CLI accepted a certificate for elsewhere.example at 127.0.0.1");
    assert!(stderr.contains("mismatch"), "{stderr}");
}

#[test]
fn tls_handshakes_are_bounded_by_the_listeners_deadline_and_cap() {
    let dir = temp_dir("rest-tls-bounds");
    let server = https_server(&dir, &["--max-connections", "4", "--handshake-timeout", "2"]);
    let port = port(&server.url);
    // Connections that never start their TLS handshake, or stop in the middle of it.
    let mut silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A TLS record header announcing a ClientHello that never comes.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    // The listener is full of pending connections: a real client evicts one and gets in.
    let started = Instant::now();
    assert_eq!(server.client().pools().unwrap().len(), 0);
    assert!(started.elapsed() < Duration::from_secs(2), "the client waited {:?}", started.elapsed());
    silent.push(half);
    // Every stalled connection is closed by the deadline (2 s; a generous bound here).
    for conn in &mut silent {
        conn.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let started = Instant::now();
        let result = conn.read_to_end(&mut Vec::new());
        let closed = match &result {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "a stalled handshake was kept open: {result:?} after {:?}", started.elapsed());
    }
}

/// The address `tmem serve` logged it listens on (`addr=IP:PORT` of the `tmem listening` line).
fn listening_port(log: &Path, child: &mut std::process::Child) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("tmem listening")) {
            let addr = line.rsplit("addr=").next().unwrap().trim();
            return addr.rsplit(':').next().unwrap().parse().unwrap();
        }
        assert!(child.try_wait().unwrap().is_none(), "tmem serve exited:\n{text}");
        assert!(Instant::now() < deadline, "tmem serve did not come up:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `tmem serve` (data dir `dir/NAME`, log `dir/NAME.log`) on `listen` with `extra`,
/// runs `probe` with its port, and stops it: the probe's answer, the port and the log.
fn probe_serve<T>(
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
    probe: impl FnOnce(u16) -> T,
) -> (T, u16, String) {
    let log = dir.join(format!("{name}.log"));
    let mut child = serve(&dir.join(name), listen, extra, &log);
    let port = listening_port(&log, &mut child);
    let answer = probe(port);
    let _ = child.kill();
    let _ = child.wait();
    (answer, port, std::fs::read_to_string(&log).unwrap())
}

/// `tmem serve` on `listen` with `extra` arguments, its log (RUST_LOG=info) in `log`.
fn serve(dir: &Path, listen: &str, extra: &[&str], log: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .env_remove("TMEM_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn plain_rest_beyond_loopback_needs_the_insecure_flag_and_https_does_not() {
    let dir = temp_dir("rest-tls-beyond-loopback");
    // No certificate, no flag: `tmem serve` refuses to start, and says what to do.
    let out = Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_tmem"), "serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.join("refused"))
        .env_remove("TMEM_INSECURE_PLAIN_TCP")
        .env_remove("TMEM_TLS_CERT")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && out.status.code() != Some(124), "{}: {stderr}", out.status);
    assert!(stderr.contains("beyond loopback") && stderr.contains("--insecure-plain-tcp"), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // With --insecure-plain-tcp: it serves plain HTTP there, and says INSECURE.
    let (health, _, text_log) = probe_serve(&dir, "insecure", "0.0.0.0:0", &["--insecure-plain-tcp"], |port| {
        ureq::get(&format!("http://127.0.0.1:{port}/healthz")).call()
    });
    assert!(health.is_ok(), "{health:?}");
    assert!(
        text_log.lines().any(|l| l.contains("INSECURE") && l.contains("API listens beyond loopback without TLS")),
        "{text_log}"
    );

    // With a certificate: HTTPS there, no flag needed, no INSECURE warning about the API.
    let pki = pki(&dir);
    let (cert, key) = (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap());
    let (stats, port, text_log) =
        probe_serve(&dir, "https", "0.0.0.0:0", &["--tls-cert", cert, "--tls-key", key], |port| {
            Command::new("curl")
                .args(["-sS", "--fail", "--cacert", pki.ca_cert.to_str().unwrap()])
                .arg(format!("https://127.0.0.1:{port}/healthz"))
                .output()
        });
    let stats = stats.unwrap();
    assert!(stats.status.success(), "curl over https: {}", text(&stats.stderr));
    assert!(text_log.contains(&format!("dashboard at https://0.0.0.0:{port}/")), "{text_log}");
    assert!(!text_log.contains("INSECURE"), "{text_log}");

    // On loopback with the same certificate the API stays plain HTTP (local tools go on
    // working), unless --api-tls asks for HTTPS there too.
    let plain_get = |port: u16| ureq::get(&format!("http://127.0.0.1:{port}/healthz")).call();
    let (plain, port, text_log) =
        probe_serve(&dir, "loopback", "127.0.0.1:0", &["--tls-cert", cert, "--tls-key", key], plain_get);
    assert!(plain.is_ok(), "{plain:?}");
    assert!(text_log.contains(&format!("dashboard at http://127.0.0.1:{port}/")), "{text_log}");
    let (plain, port, text_log) = probe_serve(
        &dir,
        "loopback-tls",
        "127.0.0.1:0",
        &["--tls-cert", cert, "--tls-key", key, "--api-tls"],
        plain_get,
    );
    assert!(plain.is_err(), "plain HTTP at an --api-tls listener: {plain:?}");
    assert!(text_log.contains(&format!("dashboard at https://127.0.0.1:{port}/")), "{text_log}");
}
