//! NBD over TLS (`STARTTLS`), driven by real clients no one here wrote — `nbdinfo` (libnbd)
//! and `qemu-io` (QEMU), both GnuTLS — against a real `tmem serve` with an X.509 certificate
//! (made here with the `openssl` CLI), client certificates and a psktool-format key file; and
//! the refusals: a plain client, a wrong key, an unknown user, a client without a certificate
//! when one is required, a plain TCP export without the insecure flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tmem_api::rest::{AttachRequest, BackendRequest, FrontendInfo, FrontendKind, PoolConfig};

use crate::common::{ServeProcess, run, temp_dir};

const MIB: u64 = 1 << 20;

/// Certificates and keys for one test, under one directory.
pub(crate) struct Pki {
    /// The host's certificate and key.
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    /// The CA that signed every certificate here.
    pub(crate) ca_cert: PathBuf,
    /// A client's directory as libnbd and QEMU read it: `ca-cert.pem`, `client-cert.pem`,
    /// `client-key.pem`.
    client_dir: PathBuf,
    /// A client's directory with the CA only (no client certificate).
    ca_only_dir: PathBuf,
    /// `keys.psk` (`alice:KEY`) in a directory of its own (QEMU's tls-creds-psk reads
    /// `DIR/keys.psk`).
    psk_dir: PathBuf,
    /// The same user with another key.
    wrong_psk: PathBuf,
}

fn openssl(args: &[&str]) {
    run("openssl", args);
}

/// The key options of every key made here: P-256.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A certificate and its key (`DIR/NAME-cert.pem`, `DIR/NAME-key.pem`) for subject `cn` with
/// the extensions `ext` (openssl's extfile lines), signed by the CA [`pki`] made in `dir`.
pub(crate) fn issue_certificate(dir: &Path, name: &str, cn: &str, ext: &str) -> (PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name).display().to_string();
    let (ca_key, ca_cert) = (p("ca-key.pem"), p("ca-cert.pem"));
    let (key, csr, cert, extfile) = (
        p(&format!("{name}-key.pem")),
        p(&format!("{name}.csr")),
        p(&format!("{name}-cert.pem")),
        p(&format!("{name}.ext")),
    );
    std::fs::write(&extfile, ext).unwrap();
    let mut req = vec!["req"];
    req.extend(EC_KEY);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
    openssl(&req);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &extfile,
    ]);
    (PathBuf::from(cert), PathBuf::from(key))
}

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and PSK files.
pub(crate) fn pki(dir: &Path) -> Pki {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC_KEY);
    let (ca_key, ca_cert) = (p("ca-key.pem"), p("ca-cert.pem"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_cert, "-subj", "/CN=tmem test CA", "-days", "2"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(&ca);
    let issue = |name: &str, cn: &str, ext: &str| issue_certificate(dir, name, cn, ext);
    let (server_cert, server_key) = issue(
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    );
    let (client_cert, client_key) = issue(
        "client",
        "/CN=tmem test client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    );
    let client_dir = dir.join("client");
    let ca_only_dir = dir.join("ca-only");
    for d in [&client_dir, &ca_only_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(&ca_cert, d.join("ca-cert.pem")).unwrap();
    }
    std::fs::copy(&client_cert, client_dir.join("client-cert.pem")).unwrap();
    std::fs::copy(&client_key, client_dir.join("client-key.pem")).unwrap();
    let psk_dir = dir.join("psk");
    std::fs::create_dir_all(&psk_dir).unwrap();
    let key = run("openssl", &["rand", "-hex", "32"]);
    std::fs::write(psk_dir.join("keys.psk"), format!("alice:{}\n", key.trim())).unwrap();
    let wrong_psk = dir.join("wrong.psk");
    std::fs::write(&wrong_psk, "alice:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    Pki { server_cert, server_key, ca_cert: PathBuf::from(ca_cert), client_dir, ca_only_dir, psk_dir, wrong_psk }
}

/// Runs `tool` expecting it to fail; returns what it printed.
fn fails(tool: &str, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{tool} {args:?} succeeded where it must be refused:\n{text}");
    assert_ne!(output.status.code(), Some(124), "{tool} {args:?} hung instead of being refused");
    text
}

fn tcp_request(dir: &Path, size: u64) -> AttachRequest {
    AttachRequest {
        kind: FrontendKind::Nbd,
        size_bytes: size,
        backing: dir.join("backing.img").display().to_string(),
        socket: None,
        listen: Some("127.0.0.1:0".into()),
        allow_remote: false,
        insecure_no_tls: false,
        ublk_id: None,
    }
}

/// A server started with `tls_args`, a `[zstd, ram]` pool `t` and its TCP export.
fn export(dir: &Path, tls_args: &[&str], ca: &Path) -> (ServeProcess, FrontendInfo) {
    let mut args = vec!["--allow-path", dir.to_str().unwrap()];
    args.extend(tls_args);
    // With a certificate the API is HTTPS too: its client trusts the test CA.
    let server = ServeProcess::start_https(&dir.join("data"), &args, ca, None);
    let client = server.client();
    let pool = PoolConfig::new("t", vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]);
    client.create_pool(&pool).unwrap();
    let attached = client.attach_frontend("t", &tcp_request(dir, 64 * MIB)).unwrap();
    (server, attached)
}

/// `host:port` of an export.
fn address(attached: &FrontendInfo) -> String {
    attached.device.as_ref().and_then(|d| d.listen.clone()).expect("a TCP export")
}

/// qemu-io through a TLS credentials object (`tls-creds-x509` or `tls-creds-psk`).
fn qemu_io_tls(addr: &str, creds: &str, commands: &[&str]) -> Vec<String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut args = vec![
        "--object".to_string(),
        creds.to_string(),
        "--image-opts".to_string(),
        format!("driver=nbd,host={host},port={port},tls-creds=tls0"),
    ];
    for c in commands {
        args.extend(["-c".to_string(), c.to_string()]);
    }
    args
}

fn qemu_io_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("qemu-io", &args);
    assert!(!out.contains("failed") && !out.contains("error"), "qemu-io reported a failure:\n{out}");
    out
}

#[test]
fn x509_and_psk_clients_write_and_read_back_and_the_others_are_refused() {
    let dir = temp_dir("nbd-tls");
    let pki = pki(&dir);
    let (cert, key, psk) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.psk_dir.join("keys.psk"));
    let (_server, attached) =
        export(&dir, &["--tls-cert", cert, "--tls-key", key, "--tls-psk", psk.to_str().unwrap()], &pki.ca_cert);
    let addr = address(&attached);
    assert_eq!(attached.address, format!("nbds://{addr}"), "a TLS export's URI is nbds://");

    // X.509: libnbd checks the certificate against the CA and 127.0.0.1.
    let x509_uri = format!("nbds://{addr}/?tls-certificates={}", pki.ca_only_dir.display());
    let info = run("nbdinfo", &[&x509_uri]);
    assert!(info.contains("with TLS") && info.contains("export-size: 67108864"), "{info}");
    let x509 = format!("tls-creds-x509,id=tls0,dir={},endpoint=client", pki.ca_only_dir.display());
    qemu_io_ok(&qemu_io_tls(
        &addr,
        &x509,
        &["write -P 0xab 0 1M", "write -P 0xcd 8M 64k", "flush", "read -P 0xab 0 1M"],
    ));
    // PSK: what the X.509 client wrote reads back, and the other way round.
    let psk_creds = format!("tls-creds-psk,id=tls0,dir={},username=alice,endpoint=client", pki.psk_dir.display());
    qemu_io_ok(&qemu_io_tls(
        &addr,
        &psk_creds,
        &["read -P 0xab 0 1M", "read -P 0xcd 8M 64k", "write -P 0x5a 16M 256k"],
    ));
    qemu_io_ok(&qemu_io_tls(&addr, &x509, &["read -P 0x5a 16M 256k", "read -P 0 32M 64k"]));
    let psk_uri = format!("nbds://alice@{addr}/?tls-psk-file={}", psk.display());
    let info = run("nbdinfo", &[&psk_uri]);
    assert!(info.contains("with TLS"), "{info}");

    // Refused: a plain client (every option but STARTTLS is ERR_TLS_REQD)...
    let plain = fails("qemu-io", &["-f", "raw", &format!("nbd://{addr}"), "-c", "read 0 4k"]);
    assert!(plain.contains("requires TLS"), "{plain}");
    fails("nbdinfo", &[&format!("nbd://{addr}")]);
    // ... a wrong key, and a user the host has no key for.
    fails("nbdinfo", &[&format!("nbds://alice@{addr}/?tls-psk-file={}", pki.wrong_psk.display())]);
    let mallory = dir.join("mallory.psk");
    std::fs::write(&mallory, std::fs::read_to_string(&psk).unwrap().replace("alice", "mallory")).unwrap();
    fails("nbdinfo", &[&format!("nbds://mallory@{addr}/?tls-psk-file={}", mallory.display())]);
    // The export still serves after the refusals.
    qemu_io_ok(&qemu_io_tls(&addr, &psk_creds, &["read -P 0xab 0 1M"]));
}

#[test]
fn with_a_client_ca_a_client_needs_a_certificate_it_signed() {
    let dir = temp_dir("nbd-tls-ca");
    let pki = pki(&dir);
    let (cert, key, ca) =
        (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap(), pki.ca_cert.to_str().unwrap());
    let (_server, attached) =
        export(&dir, &["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca], &pki.ca_cert);
    let addr = address(&attached);
    let with_cert = format!("tls-creds-x509,id=tls0,dir={},endpoint=client", pki.client_dir.display());
    qemu_io_ok(&qemu_io_tls(&addr, &with_cert, &["write -P 0x77 0 64k", "read -P 0x77 0 64k"]));
    let info = run("nbdinfo", &[&format!("nbds://{addr}/?tls-certificates={}", pki.client_dir.display())]);
    assert!(info.contains("with TLS"), "{info}");
    fails("nbdinfo", &[&format!("nbds://{addr}/?tls-certificates={}", pki.ca_only_dir.display())]);
}

#[test]
fn a_plain_tcp_export_needs_the_insecure_flag_and_says_so_in_the_log() {
    let dir = temp_dir("nbd-tls-insecure");
    let log = dir.join("serve.log");
    let server = ServeProcess::start_logged(&dir.join("data"), &["--allow-path", dir.to_str().unwrap()], Some(&log));
    let client = server.client();
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let request = tcp_request(&dir, 8 * MIB);
    let refused = client.attach_frontend("p", &request).unwrap_err().to_string();
    assert!(refused.contains("requires TLS"), "{refused}");
    let attached = client.attach_frontend("p", &AttachRequest { insecure_no_tls: true, ..request }).unwrap();
    let addr = address(&attached);
    assert_eq!(attached.address, format!("nbd://{addr}"));
    crate::common::qemu_io(&attached.address, &["write -P 1 0 4k", "read -P 1 0 4k"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INSECURE") && text.contains(&addr), "the plain export is logged loudly:\n{text}");
}
