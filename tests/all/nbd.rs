//! Block devices over pools, served by a real `tmem serve` as NBD and driven by real clients
//! no one here wrote: `qemu-io`, `qemu-img`, `nbdinfo`, `nbdcopy`, `fio`, and `nbdkit memory`
//! as the reference server of a differential test. Plus a hand-written client for what no
//! well-behaved client sends (unaligned and out-of-range requests, garbage), and the REST and
//! CLI surface of attaching and detaching.
//!
//! The tools come from `scripts/install-deps.sh --test` (`qemu-utils libnbd-bin fio nbdkit`);
//! a missing tool fails the test with that hint rather than skipping it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tmem_api::client::{Client, ClientError};
use tmem_api::rest::{AttachRequest, BackendRequest, FrontendInfo, FrontendKind, PoolConfig};
use tmem_host::workload::Rng;

use crate::common::{ServeProcess, qemu_io, run, temp_dir};

const MIB: u64 = 1 << 20;

fn strings(commands: &[&str]) -> Vec<String> {
    commands.iter().map(|c| c.to_string()).collect()
}

/// A file of `len` bytes of data that compresses to about half (3 random words in 8, runs
/// between), so a `[zstd, ...]` pool keeps its pages.
fn data_file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed | 1);
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        let word = rng.next_u64();
        if word % 8 < 3 {
            bytes.extend_from_slice(&word.to_le_bytes());
        } else {
            bytes.extend_from_slice(&[(word >> 32) as u8; 8]);
        }
    }
    bytes.truncate(len as usize);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha256sum(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()]).split_whitespace().next().unwrap().to_string()
}

/// A server with one pool and an NBD device on a Unix socket in `dir`.
struct Device {
    server: ServeProcess,
    client: Client,
    dir: PathBuf,
    attached: FrontendInfo,
}

impl Device {
    fn new(tag: &str, pool: PoolConfig, size: u64) -> Device {
        let dir = temp_dir(tag);
        let server = ServeProcess::start(&dir.join("data"), &allow(&dir));
        let client = server.client();
        client.create_pool(&pool).unwrap();
        let attached = client.attach_frontend(&pool.name, &unix_request(&dir, size)).unwrap();
        Device { server, client, dir, attached }
    }

    fn uri(&self) -> &str {
        &self.attached.address
    }

    /// The device's counters, as the pool shows them.
    fn counters(&self) -> serde_json::Map<String, Value> {
        let info = self.client.pool(&self.attached.pool).unwrap();
        let frontend = info.frontends.iter().find(|f| f.id == self.attached.id).expect("the device is listed");
        frontend.counters.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect()
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters()[name].as_u64().unwrap()
    }

    fn pool_counter(&self, name: &str) -> u64 {
        self.client.pool(&self.attached.pool).unwrap().counters[name]
    }
}

/// `tmem serve` arguments that allow backing files and sockets under `dir` (the data dir is
/// always allowed; these tests keep their files beside it).
fn allow(dir: &Path) -> [&str; 2] {
    ["--allow-path", dir.to_str().expect("a UTF-8 temp dir")]
}

fn unix_request(dir: &Path, size: u64) -> AttachRequest {
    AttachRequest {
        kind: FrontendKind::Nbd,
        size_bytes: size,
        backing: dir.join("backing.img").display().to_string(),
        socket: Some(dir.join("nbd.sock").display().to_string()),
        listen: None,
        allow_remote: false,
        insecure_no_tls: false,
        ublk_id: None,
    }
}

fn pool(name: &str, backends: &[&str]) -> PoolConfig {
    PoolConfig::new(name, backends.iter().map(|b| BackendRequest::new(b)).collect())
}

#[test]
fn qemu_io_writes_reads_discards_zeroes_and_flushes() {
    let device = Device::new("nbd-qemu-io", pool("q", &["zstd", "ram"]), 64 * MIB);
    let uri = device.uri();
    qemu_io(
        uri,
        &strings(&[
            "write -P 0xab 0 4k",
            "read -P 0xab 0 4k",
            "write -P 0x11 1M 1M",
            "read -P 0x11 1M 1M",
            "read -P 0 4k 60k",
            "discard 1M 512k",
            "read -P 0 1M 512k",
            "read -P 0x11 1536k 512k",
            "write -z 0 4k",
            "read -P 0 0 4k",
            "write -f -P 0x22 4M 64k",
            "read -P 0x22 4M 64k",
            "flush",
            "aio_write -P 0x33 8M 64k",
            "aio_write -P 0x44 9M 64k",
            "aio_flush",
            "aio_read -P 0x33 8M 64k",
            "aio_read -P 0x44 9M 64k",
            "aio_flush",
            "write -P 0x55 63M 1M",
            "read -P 0x55 63M 1M",
        ]),
    );
    // A fresh connection sees the same device.
    qemu_io(uri, &strings(&["read -P 0x22 4M 64k", "read -P 0x55 63M 1M", "read -P 0 0 4k"]));
    for counter in ["writes", "reads", "discards", "write_zeroes", "flushes", "fua"] {
        assert!(device.counter(counter) > 0, "{counter} counted: {:?}", device.counters());
    }
    assert_eq!(device.counter("errors"), 0);
    assert!(device.pool_counter("succ_stores") >= 500);
    assert!(device.pool_counter("invalidates") >= 128, "discard and write-zeroes invalidate");
    assert_eq!(device.counter("pool_pages"), device.client.pool("q").unwrap().counters["stored_pages"]);
}

#[test]
fn nbdinfo_sees_block_sizes_flags_and_the_allocation_map() {
    let device = Device::new("nbd-info", pool("i", &["ram"]), 16 * MIB);
    let info: Value = serde_json::from_str(&run("nbdinfo", &["--json", device.uri()])).unwrap();
    assert_eq!(info["protocol"], "newstyle-fixed");
    assert_eq!(info["structured"], true);
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "i");
    assert_eq!(export["export-size"], 16 * MIB);
    assert_eq!(export["block_size_minimum"], 4096);
    assert_eq!(export["block_size_preferred"], 4096);
    assert!(export["block_size_maximum"].as_u64().unwrap() >= MIB);
    for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_fast_zero"] {
        assert_eq!(export[flag], true, "{flag}: {export}");
    }
    assert_eq!(export["is_read_only"], false);
    qemu_io(device.uri(), &strings(&["write -P 1 0 8k", "write -P 2 1M 4k"]));
    let map = run("nbdinfo", &["--map", device.uri()]);
    let lines: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..3], ["0", "8192", "0"], "{map}");
    assert_eq!(lines[1][..3], ["8192", &(MIB - 8192).to_string(), "3"], "{map}");
    assert_eq!(lines[2][..3], [MIB.to_string().as_str(), "4096", "0"], "{map}");
    // The listing names the export; an unknown export is refused without ending the server.
    assert!(run("nbdinfo", &["--list", device.uri()]).contains("export=\"i\""));
    let socket = device.attached.device.as_ref().and_then(|d| d.socket.as_deref()).unwrap();
    let status = Command::new("nbdinfo").arg(format!("nbd+unix:///nope?socket={socket}")).output().unwrap().status;
    assert!(!status.success());
    qemu_io(device.uri(), &strings(&["read -P 1 0 8k"]));
}

#[test]
fn nbdcopy_of_64_mib_in_and_out_matches_its_checksum_and_qemu_img_compare() {
    let device = Device::new("nbd-copy", pool("c", &["zstd", "ram"]), 64 * MIB);
    let source = data_file(&device.dir, "source.img", 64 * MIB, 7);
    run("nbdcopy", &[source.to_str().unwrap(), device.uri()]);
    let back = device.dir.join("back.img");
    run("nbdcopy", &[device.uri(), back.to_str().unwrap()]);
    assert_eq!(sha256sum(&source), sha256sum(&back));
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", source.to_str().unwrap(), device.uri()]);
    assert_eq!(device.pool_counter("stored_pages"), 64 * MIB / 4096, "every page is in the pool");
    assert_eq!(device.counter("errors"), 0);
}

#[test]
fn fio_verifies_random_writes_over_many_connections() {
    let device = Device::new("nbd-fio", pool("f", &["zstd", "ram"]), 32 * MIB);
    let uri = format!("--uri={}", device.uri());
    let out = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--size=32M",
            "--iodepth=16",
            "--numjobs=1",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--buffer_compress_percentage=50",
            "--refill_buffers",
            "--output-format=json",
        ],
    );
    // fio prints a line about the nbd engine before its JSON.
    let json: Value = serde_json::from_str(&out[out.find('{').expect("fio printed JSON")..]).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 32 * MIB);
    assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 32 * MIB, "the verify pass read everything back");
    // Several jobs at once: each its own connection, each its own region, each verified.
    let out = run(
        "fio",
        &[
            "--name=multi",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--size=8M",
            "--offset_increment=8M",
            "--numjobs=4",
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--do_verify=1",
            "--output-format=json",
        ],
    );
    let json: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    for job in json["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "{job}");
    }
    assert!(device.counter("connections_total") >= 5);
    assert_eq!(device.counter("errors"), 0);
}

/// Starts `nbdkit memory` on a Unix socket in `dir`; killed when dropped.
struct Nbdkit {
    child: std::process::Child,
    uri: String,
}

impl Nbdkit {
    fn memory(dir: &Path, size: u64) -> Nbdkit {
        let socket = dir.join("nbdkit.sock");
        let child = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&socket)
            .args(["memory", &size.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("nbdkit is installed (scripts/install-deps.sh --test)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "nbdkit did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Nbdkit { child, uri: format!("nbd+unix:///?socket={}", socket.display()) }
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_same_operations_leave_the_same_image_as_nbdkit_memory() {
    let size = 8 * MIB;
    // A small pool limit, so some pages go to the backing file on the way.
    let config = PoolConfig { max_pages: Some(300), ..pool("d", &["zstd", "ram"]) };
    let device = Device::new("nbd-diff", config, size);
    let reference = Nbdkit::memory(&device.dir, size);
    let mut rng = Rng::new(0x5eed);
    let mut commands = Vec::new();
    for _ in 0..400 {
        let pages = 1 + rng.below(32);
        let offset = rng.below(size / 4096 - pages) * 4096;
        let len = pages * 4096;
        commands.push(match rng.below(10) {
            0 => format!("discard {offset} {len}"),
            1 => format!("write -z {offset} {len}"),
            2 => "flush".to_string(),
            3 => format!("write -f -P {} {offset} {len}", rng.below(256)),
            // Overlapping writes in flight together may land in either order: one at a time.
            4 => format!("aio_write -P {} {offset} {len}\naio_flush", rng.below(256)),
            _ => format!("write -P {} {offset} {len}", rng.below(256)),
        });
    }
    let commands: Vec<String> =
        commands.iter().flat_map(|c| c.lines().map(str::to_string).collect::<Vec<_>>()).collect();
    for uri in [device.uri(), reference.uri.as_str()] {
        for chunk in commands.chunks(100) {
            qemu_io(uri, chunk);
        }
    }
    let ours = device.dir.join("ours.img");
    let theirs = device.dir.join("theirs.img");
    run("nbdcopy", &[device.uri(), ours.to_str().unwrap()]);
    run("nbdcopy", &[&reference.uri, theirs.to_str().unwrap()]);
    assert_eq!(sha256sum(&ours), sha256sum(&theirs), "tmem and nbdkit memory hold different images");
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", theirs.to_str().unwrap(), device.uri()]);
    assert!(device.counter("to_backing") > 0, "the pool limit sent pages to the backing file: {:?}", device.counters());
}

#[test]
fn pages_the_pool_refuses_go_to_the_backing_file_and_read_back() {
    let config = PoolConfig { max_pages: Some(64), ..pool("r", &["ram"]) };
    let device = Device::new("nbd-reject", config, 4 * MIB);
    let source = data_file(&device.dir, "source.img", 4 * MIB, 11);
    run("nbdcopy", &[source.to_str().unwrap(), device.uri()]);
    let info = device.client.pool("r").unwrap();
    assert!(info.counters["stored_pages"] <= 64);
    assert!(info.counters["pool_limit_hit"] > 0);
    let in_backing = device.counter("backing_pages");
    assert!(in_backing >= 1024 - 64, "{:?}", device.counters());
    assert_eq!(device.counter("to_backing"), device.pool_counter("failed_stores"));
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", source.to_str().unwrap(), device.uri()]);
    assert!(device.counter("from_backing") >= in_backing);
    // The backing file is reserved like a swap file (allocated whole, so a page write under
    // memory pressure changes no metadata); discarding the pages zeroes their copies in it.
    let backing = Path::new(&device.attached.device.as_ref().expect("a block device").backing);
    let allocated =
        |path: &Path| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap();
    assert_eq!(std::fs::metadata(backing).unwrap().len(), 4 * MIB);
    assert!(allocated(backing) >= 4 * MIB);
    let nonzero_pages =
        |path: &Path| std::fs::read(path).unwrap().chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
    assert_eq!(nonzero_pages(backing) as u64, in_backing, "the file holds exactly the refused pages");
    qemu_io(device.uri(), &strings(&["discard 0 4M", "read -P 0 0 4M"]));
    assert_eq!(device.counter("backing_pages"), 0);
    assert_eq!(device.pool_counter("stored_pages"), 0);
    assert_eq!(nonzero_pages(backing), 0, "discarded pages are zeroed in the backing file");
}

#[test]
fn shrink_moves_pages_from_the_pool_to_the_backing_file() {
    let device = Device::new("nbd-shrink", pool("s", &["zstd", "ram"]), 4 * MIB);
    let source = data_file(&device.dir, "source.img", MIB, 13);
    run("nbdcopy", &[source.to_str().unwrap(), device.uri()]);
    assert_eq!(device.pool_counter("stored_pages"), 256);
    let shrunk = device.client.shrink("s", 16).unwrap();
    assert_eq!((shrunk.before, shrunk.after, shrunk.written_back), (256, 16, 240));
    assert_eq!(device.counter("taken_back"), 240);
    assert_eq!(device.counter("backing_pages"), 240);
    assert_eq!(device.counter("pool_pages"), 16);
    let back = device.dir.join("back.img");
    run("nbdcopy", &[device.uri(), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap()[..MIB as usize], std::fs::read(&source).unwrap()[..]);
    // Pages written again go back to the pool, and their stale backing copies are dropped.
    run("nbdcopy", &[source.to_str().unwrap(), device.uri()]);
    assert_eq!(device.counter("backing_pages"), 0);
    assert_eq!(device.pool_counter("stored_pages"), 256);
}

/// A minimal NBD client for the requests well-behaved clients never send.
struct RawClient {
    stream: UnixStream,
}

impl RawClient {
    /// Connects and negotiates (fixed newstyle, `OPT_GO` of the default export, simple
    /// replies); returns the export size.
    fn connect(socket: &str) -> (RawClient, u64) {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 18];
        stream.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        stream.write_all(&3u32.to_be_bytes()).unwrap();
        let mut option = b"IHAVEOPT".to_vec();
        option.extend_from_slice(&7u32.to_be_bytes());
        option.extend_from_slice(&6u32.to_be_bytes());
        option.extend_from_slice(&0u32.to_be_bytes());
        option.extend_from_slice(&0u16.to_be_bytes());
        stream.write_all(&option).unwrap();
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
        (RawClient { stream }, size)
    }

    fn send(&mut self, command: u16, offset: u64, len: u32, payload: &[u8]) {
        let mut request = 0x2560_9513u32.to_be_bytes().to_vec();
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&command.to_be_bytes());
        request.extend_from_slice(&0xfeed_u64.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&len.to_be_bytes());
        request.extend_from_slice(payload);
        self.stream.write_all(&request).unwrap();
    }

    /// A simple reply's error number (a successful read's data is read and dropped).
    fn reply(&mut self, data_len: usize) -> u32 {
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(reply[8..], 0xfeed_u64.to_be_bytes());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        if error == 0 {
            let mut data = vec![0u8; data_len];
            self.stream.read_exact(&mut data).unwrap();
        }
        error
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn bad_requests_and_garbage_get_errors_and_leave_the_server_and_its_pages_intact() {
    let device = Device::new("nbd-bad", pool("b", &["zstd", "ram"]), 4 * MIB);
    qemu_io(device.uri(), &strings(&["write -P 0x5a 0 64k", "write -P 0x6b 4032k 64k"]));
    let socket = device.attached.device.as_ref().and_then(|d| d.socket.clone()).unwrap();
    let (mut c, size) = RawClient::connect(&socket);
    assert_eq!(size, 4 * MIB);
    const EINVAL: u32 = 22;
    const ENOSPC: u32 = 28;
    c.send(0, 512, 4096, &[]);
    assert_eq!(c.reply(4096), EINVAL, "an unaligned read");
    c.send(0, 0, 1000, &[]);
    assert_eq!(c.reply(1000), EINVAL, "an unaligned length");
    c.send(0, size, 4096, &[]);
    assert_eq!(c.reply(4096), EINVAL, "a read past the end");
    c.send(0, u64::MAX - 4095, 4096, &[]);
    assert_eq!(c.reply(4096), EINVAL, "an offset that overflows");
    c.send(1, size, 4096, &[0xee; 4096]);
    assert_eq!(c.reply(0), ENOSPC, "a write past the end");
    c.send(1, 4096, 512, &[0xee; 512]);
    assert_eq!(c.reply(0), EINVAL, "an unaligned write");
    c.send(4, size - 4096, 8192, &[]);
    assert_eq!(c.reply(0), ENOSPC, "a discard past the end");
    c.send(99, 0, 0, &[]);
    assert_eq!(c.reply(0), EINVAL, "an unknown command");
    c.send(7, 0, 4096, &[]);
    assert_eq!(c.reply(0), EINVAL, "block status without the meta context");
    c.send(0, 0, 4096, &[]);
    assert_eq!(c.reply(4096), 0, "the connection still works");
    // Garbage where a request should be: the server hangs up.
    c.stream.write_all(b"this is not an NBD request at all").unwrap();
    assert!(c.closed());
    // A write larger than the maximum block size: hung up on before its payload.
    let (mut c, _) = RawClient::connect(&socket);
    c.send(1, 0, u32::MAX, &[]);
    assert!(c.closed());
    // Garbage in the handshake, a truncated option, a truncated request.
    let mut garbage = UnixStream::connect(&socket).unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);
    let mut truncated = UnixStream::connect(&socket).unwrap();
    truncated.write_all(&3u32.to_be_bytes()).unwrap();
    truncated.write_all(b"IHAVEOPT\0\0\0\x07\0\0\0\x20").unwrap();
    drop(truncated);
    let (mut c, _) = RawClient::connect(&socket);
    c.stream.write_all(&0x2560_9513u32.to_be_bytes()).unwrap();
    drop(c);
    // The server is up, and the pages written before are intact.
    qemu_io(device.uri(), &strings(&["read -P 0x5a 0 64k", "read -P 0x6b 4032k 64k", "read -P 0 64k 64k"]));
    assert_eq!(device.counter("invalid_requests"), 7);
    assert_eq!(device.counter("errors"), 0);
    assert_eq!(device.server.client().health().unwrap().status, "ok");
}

fn api_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result.expect_err("the call should fail") {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("not an API error: {other}"),
    }
}

#[test]
fn attach_checks_its_request_lists_the_device_and_detach_stops_it() {
    let dir = temp_dir("nbd-attach");
    let server = ServeProcess::start(&dir.join("data"), &allow(&dir));
    let client = server.client();
    client.create_pool(&pool("a", &["ram"])).unwrap();
    client.create_pool(&pool("other", &["ram"])).unwrap();
    let good = unix_request(&dir, 8 * MIB);
    let refused = [
        (AttachRequest { size_bytes: 8 * MIB + 512, ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { size_bytes: 0, ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { backing: "relative.img".into(), ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { backing: "/no/such/dir/b.img".into(), ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { socket: None, ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { listen: Some("127.0.0.1:0".into()), ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { socket: None, listen: Some("0.0.0.0:0".into()), ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { socket: None, listen: Some("localhost".into()), ..good.clone() }, 400, "invalid_frontend"),
        // TCP needs TLS, and this host has none: only with the insecure flag; which means
        // nothing on a Unix socket.
        (AttachRequest { socket: None, listen: Some("127.0.0.1:0".into()), ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { insecure_no_tls: true, ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { kind: FrontendKind::Ublk, ..good.clone() }, 400, "invalid_frontend"),
        (AttachRequest { ublk_id: Some(3), ..good.clone() }, 400, "invalid_frontend"),
    ];
    for (request, status, code) in refused {
        assert_eq!(api_error(client.attach_frontend("a", &request)), (status, code.to_string()), "{request:?}");
    }
    // Paths outside the allowed ones (the data dir and `dir`): refused before anything is
    // created, also through a symlink that lies inside.
    let outside = temp_dir("nbd-attach-outside");
    std::os::unix::fs::symlink(outside.join("target.img"), dir.join("link.img")).unwrap();
    let outside_path = |name: &str| outside.join(name).display().to_string();
    let confined = [
        AttachRequest { backing: outside_path("b.img"), ..good.clone() },
        AttachRequest { backing: dir.join("link.img").display().to_string(), ..good.clone() },
        AttachRequest {
            backing: format!("{}/../{}/b.img", dir.display(), outside.file_name().unwrap().to_str().unwrap()),
            ..good.clone()
        },
        AttachRequest { socket: Some(outside_path("nbd.sock")), ..good.clone() },
    ];
    for request in confined {
        assert_eq!(api_error(client.attach_frontend("a", &request)), (403, "path_not_allowed".into()), "{request:?}");
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was created outside");
    assert_eq!(api_error(client.attach_frontend("nope", &good)), (404, "pool_not_found".into()));
    if !Path::new("/dev/ublk-control").exists() {
        // This kernel has no ublk driver (kernel_swap.rs runs ublk in a guest kernel that has).
        let ublk = AttachRequest { kind: FrontendKind::Ublk, socket: None, ..good.clone() };
        assert_eq!(api_error(client.attach_frontend("a", &ublk)), (400, "unsupported_frontend".into()));
    }
    let (status, body) = client
        .request(
            "POST",
            "/api/v1/pools/a/frontends",
            Some(("application/json", br#"{"kind": "iscsi", "size_bytes": 4096, "backing": "/tmp/x"}"#)),
            true,
        )
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    let attached = client.attach_frontend("a", &good).unwrap();
    assert_eq!(attached.address, format!("nbd+unix:///?socket={}", dir.join("nbd.sock").display()));
    let device = attached.device.as_ref().expect("a block device");
    assert_eq!((device.size_bytes, device.block_size, device.export_name.as_str()), (8 * MIB, 4096, "a"));
    assert_eq!(api_error(client.attach_frontend("a", &good)), (409, "frontend_exists".into()));
    let same_backing = AttachRequest { socket: Some(dir.join("other.sock").display().to_string()), ..good.clone() };
    assert_eq!(api_error(client.attach_frontend("other", &same_backing)), (409, "backing_in_use".into()));
    let same_socket = AttachRequest { backing: dir.join("other.img").display().to_string(), ..good.clone() };
    assert_eq!(api_error(client.attach_frontend("other", &same_socket)), (409, "address_in_use".into()));
    // A plain TCP device on a free loopback port (the insecure flag: this host has no TLS),
    // served alongside.
    let tcp = AttachRequest {
        backing: dir.join("tcp.img").display().to_string(),
        socket: None,
        listen: Some("127.0.0.1:0".into()),
        insecure_no_tls: true,
        ..good.clone()
    };
    let tcp = client.attach_frontend("other", &tcp).unwrap();
    assert!(tcp.address.starts_with("nbd://127.0.0.1:") && !tcp.address.ends_with(":0"), "{}", tcp.address);
    qemu_io(&tcp.address, &strings(&["write -P 7 0 64k", "read -P 7 0 64k"]));
    qemu_io(&attached.address, &strings(&["write -P 9 0 64k", "read -P 9 0 64k"]));

    let listed = client.frontends("a").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, attached.id);
    let info = client.pool("a").unwrap();
    assert_eq!(info.frontends.len(), 1);
    assert_eq!(info.frontends[0], listed[0], "pool details and the frontends route show one shape");
    assert_eq!((info.frontends[0].kind, info.frontends[0].pool.as_str()), (FrontendKind::Nbd, "a"));
    assert_eq!(info.frontends[0].address, attached.address);
    assert!(info.frontends[0].counters["writes"] >= 1);

    assert_eq!(api_error(client.detach_frontend("a", "nbd-00000000")), (404, "frontend_not_found".into()));
    assert_eq!(api_error(client.detach_frontend("other", &attached.id)), (404, "frontend_not_found".into()));
    client.detach_frontend("a", &attached.id).unwrap();
    assert!(!dir.join("nbd.sock").exists(), "the socket is gone");
    assert!(client.frontends("a").unwrap().is_empty());
    assert_eq!(client.pool("a").unwrap().counters["stored_pages"], 0, "detach is swapoff");
    // Destroying a pool detaches its device first.
    client.remove_pool("other").unwrap();
    assert!(
        std::net::TcpStream::connect(tcp.device.as_ref().and_then(|d| d.listen.as_deref()).unwrap()).is_err(),
        "the TCP server is gone"
    );
    // The backing file is free again.
    let again = client
        .attach_frontend("a", &AttachRequest { backing: dir.join("tcp.img").display().to_string(), ..good })
        .unwrap();
    qemu_io(&again.address, &strings(&["read -P 0 0 64k"]));
}

/// Runs `what` on a thread of its own and waits at most `limit` for its answer (a hang fails
/// the test instead of hanging it).
fn within<T: Send + 'static>(limit: Duration, what: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(what());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn a_device_whose_listening_address_cannot_be_reached_still_detaches_and_shuts_down() {
    // The server's accept thread used to be woken by a connection to its own address; where
    // none arrives (the socket file removed, a broadcast address that binds but refuses
    // connections) detach, destroy and shutdown waited for ever.
    let dir = temp_dir("nbd-unreachable");
    let server = ServeProcess::start(&dir.join("data"), &allow(&dir));
    let client = server.client();
    for name in ["gone", "broadcast", "kept"] {
        client.create_pool(&pool(name, &["ram"])).unwrap();
    }
    let gone = client.attach_frontend("gone", &unix_request(&dir, 8 * MIB)).unwrap();
    std::fs::remove_file(dir.join("nbd.sock")).unwrap();
    let tcp = |name: &str, listen: &str| AttachRequest {
        backing: dir.join(format!("{name}.img")).display().to_string(),
        socket: None,
        listen: Some(listen.into()),
        insecure_no_tls: true,
        ..unix_request(&dir, 8 * MIB)
    };
    // 127.255.255.255 is loopback and binds, but a connection to it is ENETUNREACH.
    let broadcast = client.attach_frontend("broadcast", &tcp("broadcast", "127.255.255.255:0")).unwrap();
    let kept = client.attach_frontend("kept", &tcp("kept", "127.255.255.255:0")).unwrap();
    let limit = Duration::from_secs(20);
    let detach = |pool: &'static str, id: String| {
        let client = server.client();
        within(limit, move || client.detach_frontend(pool, &id))
    };
    detach("gone", gone.id).expect("detaching a device whose socket file was removed hangs").unwrap();
    detach("broadcast", broadcast.id).expect("detaching a device on 127.255.255.255 hangs").unwrap();
    assert_eq!(client.frontends("kept").unwrap()[0].id, kept.id);
    // The one left is stopped at shutdown.
    assert_eq!(server.stop_within(limit), Some(true), "tmem serve did not stop with a device on 127.255.255.255");
}

#[test]
fn the_cli_attaches_and_detaches() {
    let dir = temp_dir("nbd-cli");
    let server = ServeProcess::start(&dir.join("data"), &allow(&dir));
    server.client().create_pool(&pool("c", &["ram"])).unwrap();
    let tmem = |args: &[&str]| server.cli(args);
    let socket = dir.join("cli.sock").display().to_string();
    let backing = dir.join("cli.img").display().to_string();
    let out = tmem(&["pool", "attach", "c", "--nbd-socket", &socket, "--size", "16M", "--backing", &backing, "--json"]);
    let attached: FrontendInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(attached.device.as_ref().map(|d| d.size_bytes), Some(16 * MIB));
    qemu_io(&attached.address, &strings(&["write -P 3 0 4k", "read -P 3 0 4k"]));
    assert!(tmem(&["pool", "show", "c"]).contains(&attached.address));
    assert!(tmem(&["pool", "detach", "c", &attached.id]).contains("detached"));
    assert!(!Path::new(&socket).exists());
}

#[test]
fn a_device_over_a_persistent_pool_keeps_its_contents_across_a_restart() {
    let dir = temp_dir("nbd-restart");
    let data = dir.join("data");
    let sled = BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") };
    let config = PoolConfig { max_pages: Some(100), ..PoolConfig::new("p", vec![BackendRequest::new("zstd"), sled]) };
    let source = data_file(&dir, "source.img", MIB, 17);
    let server = ServeProcess::start(&data, &allow(&dir));
    let client = server.client();
    client.create_pool(&config).unwrap();
    let attached = client.attach_frontend("p", &unix_request(&dir, 4 * MIB)).unwrap();
    run("nbdcopy", &[source.to_str().unwrap(), &attached.address]);
    qemu_io(&attached.address, &strings(&["write -z 2M 4k", "flush"]));
    let before = client.frontends("p").unwrap();
    assert!(server.stop(), "a clean stop");
    assert!(!dir.join("nbd.sock").exists(), "a stopped server removes its socket");

    // Restarted without the backing file's directory allowed: the device is not served (its
    // record stays); allowed again, it comes back.
    let narrower = ServeProcess::start(&data, &[]);
    assert_eq!(narrower.client().frontends("p").unwrap().len(), 0, "a backing file outside the allowed paths");
    assert!(narrower.stop(), "a clean stop");
    let server = ServeProcess::start(&data, &allow(&dir));
    let client = server.client();
    let after = client.frontends("p").unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].id.as_str(), after[0].address.as_str()), (before[0].id.as_str(), before[0].address.as_str()));
    let back = dir.join("back.img");
    run("nbdcopy", &[&attached.address, back.to_str().unwrap()]);
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back[..MIB as usize], std::fs::read(&source).unwrap()[..], "pool and backing pages both came back");
    assert!(back[MIB as usize..].iter().all(|&b| b == 0));
    let info = client.pool("p").unwrap();
    let counters = &info.frontends[0].counters;
    assert_eq!(counters["pool_pages"] + counters["backing_pages"], 256, "{counters:?}");
    assert!(counters["backing_pages"] > 0 && counters["pool_pages"] > 0, "{counters:?}");
}

#[test]
fn a_pool_attached_to_a_block_device_refuses_every_other_writer() {
    use std::io::{Read as _, Write as _};
    use tmem_api::{peer, wire};
    use tmem_frontend::client::{FrontendClient, Op};

    let dir = temp_dir("nbd-owned");
    let peer_port = crate::peer::free_port();
    let peer_listen = format!("127.0.0.1:{peer_port}");
    let server =
        ServeProcess::start(&dir.join("data"), &["--peer-listen", &peer_listen, "--allow-path", dir.to_str().unwrap()]);
    let client = server.client();
    client.create_pool(&PoolConfig::new("p", vec![BackendRequest::new("ram")])).unwrap();
    let peer_token = crate::peer::peer_token(&server, "p");
    let socket = server.data_dir.join("tmem.sock");
    // A socket frontend connected before the device attached.
    let early = FrontendClient::connect(&socket, &server.token, "p", "early").unwrap();
    let page = vec![7u8; 4096];
    early.batch(&[Op::Store(3, &page)]).unwrap();

    let attached = client.attach_frontend("p", &unix_request(&dir, 4 * MIB)).unwrap();
    let owned = |e: &dyn std::fmt::Display| e.to_string().contains("belongs to the block device");

    // The page API.
    for refused in [
        client.put_page("p", 1, &page).map(drop),
        client.remove_page("p", 1).map(drop),
        client.invalidate_area("p").map(drop),
    ] {
        let e = refused.expect_err("a write to a device's pool was accepted");
        assert!(matches!(&e, ClientError::Api { status: 409, code, .. } if code == "pool_owned"), "{e}");
        assert!(owned(&e), "{e}");
    }
    // Socket frontends: a new one is refused, one already connected is turned away.
    let e =
        FrontendClient::connect(&socket, &server.token, "p", "late").map(drop).expect_err("a socket frontend attached");
    assert!(owned(&e), "{e}");
    let e = early.batch(&[Op::Store(4, &page)]).map(drop).expect_err("an earlier socket frontend kept writing");
    assert!(owned(&e), "{e}");
    // Peers.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
    let mut frame = Vec::new();
    wire::frame(&mut frame, peer::MAX_BODY, peer::HELLO, 1, &[&peer::hello_payload(&peer_token, "p").unwrap()])
        .unwrap();
    stream.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let (kind, _, message) = wire::parse_body(&body).unwrap();
    assert_eq!(kind, peer::ERROR, "a peer attached to a device's pool");
    assert!(String::from_utf8_lossy(message).contains("belongs to the block device"));

    // Detached, the pool is anyone's again.
    client.detach_frontend("p", &attached.id).unwrap();
    client.put_page("p", 1, &page).unwrap();
}
