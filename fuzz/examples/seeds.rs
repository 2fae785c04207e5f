//! Writes the checked-in seed corpus, `fuzz/corpus/<target>/<name>`: a few valid encodings of
//! each decoder's input, built with `tmem-api`'s own encoders, and edge cases around its
//! limits. Run by hand after a protocol change: `cargo run --example seeds` (in `fuzz/`).

use std::fs;
use std::path::Path;

use tmem_api::frontend::{self as proto, Op};
use tmem_api::nbd::{self, Request};
use tmem_api::{peer, wire};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in
        [("frontend_frame", frontend()), ("peer_frame", peer()), ("nbd_request", nbd()), ("rest_bodies", rest())]
    {
        let dir = root.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("corpus dir");
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes).expect("seed");
        }
    }
}

fn frame(max: usize, kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::frame(&mut out, max, kind, id, &[payload]).expect("seed frame");
    out
}

fn frontend() -> Vec<(&'static str, Vec<u8>)> {
    let max = proto::MAX_BODY;
    // The first byte picks the page size: 1 is 8-byte pages, 3 is 4096.
    let with_pages = |pick: u8, frames: &[Vec<u8>]| [vec![pick], frames.concat()].concat();
    let hello = frame(max, proto::HELLO, 0, &proto::hello_payload("token", "pool", "app").unwrap());
    let batch = |page: &[u8], id| {
        let ops = [Op::Store(3, page), Op::Load(3), Op::Take(4), Op::Invalidate(5), Op::InvalidateArea];
        let mut payload = (ops.len() as u16).to_le_bytes().to_vec();
        for op in &ops {
            proto::put_op(&mut payload, op);
        }
        frame(max, proto::BATCH, id, &payload)
    };
    let taken = frame(max, proto::TAKEN, proto::HOST_ID_BIT | 1, &2u64.to_le_bytes());
    let mut too_many = (proto::MAX_BATCH as u16 + 1).to_le_bytes().to_vec();
    too_many.extend_from_slice(&[proto::OP_LOAD, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut cut = batch(b"pagebyte", 2);
    cut.truncate(cut.len() - 3);
    vec![
        ("session-8", with_pages(1, &[hello.clone(), batch(b"pagebyte", 1), taken])),
        ("session-4096", with_pages(3, &[hello, batch(&[0xa5; 4096], 1)])),
        ("unknown-op", with_pages(1, &[frame(max, proto::BATCH, 1, &[1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0])])),
        ("batch-over-max", with_pages(1, &[frame(max, proto::BATCH, 1, &too_many)])),
        ("cut-frame", with_pages(1, &[cut])),
        ("body-too-short", vec![1, 4, 0, 0, 0, 1, 0, 0, 0]),
        ("body-over-max", [vec![1], (max as u32 + 1).to_le_bytes().to_vec(), vec![2; 5]].concat()),
    ]
}

fn peer() -> Vec<(&'static str, Vec<u8>)> {
    let max = peer::MAX_BODY;
    let hello = frame(max, peer::HELLO, 0, &peer::hello_payload("token", "pool-b").unwrap());
    let put = frame(max, peer::PUT, 1, &[&42u64.to_le_bytes()[..], b"encoded page"].concat());
    let get = frame(max, peer::GET, 2, &42u64.to_le_bytes());
    let delete = frame(max, peer::DELETE, 3, &42u64.to_le_bytes());
    let clear = frame(max, peer::CLEAR, 4, &[]);
    let mut trailing = peer::hello_payload("t", "p").unwrap();
    trailing.push(0);
    vec![
        ("session", [hello, put, get, delete, clear].concat()),
        ("short-offset", frame(max, peer::GET, 1, &[1, 2, 3])),
        ("hello-trailing", frame(max, peer::HELLO, 0, &trailing)),
        ("hello-version-2", frame(max, peer::HELLO, 0, &[2, 0, 0, 0, 0])),
        ("body-over-max", [(max as u32 + 1).to_le_bytes().to_vec(), vec![2; 5]].concat()),
    ]
}

fn nbd() -> Vec<(&'static str, Vec<u8>)> {
    let flags = (nbd::CLIENT_FLAGS).to_be_bytes().to_vec();
    let option = |option, data: &[u8]| {
        let mut out = Vec::new();
        nbd::put_option(&mut out, option, data).unwrap();
        out
    };
    let request = |command, flags, offset, len| {
        Request { flags, command, handle: u64::from(command) + 1, offset, len }.to_bytes().to_vec()
    };
    let info = nbd::info_payload(b"pool", &[nbd::INFO_NAME, nbd::INFO_DESCRIPTION, nbd::INFO_BLOCK_SIZE]).unwrap();
    let meta = nbd::meta_context_payload(b"pool", &[b"base:allocation"]).unwrap();
    let requests = [
        request(nbd::CMD_WRITE, nbd::CMD_FLAG_FUA, 0, 16),
        vec![0x5a; 16],
        request(nbd::CMD_READ, nbd::CMD_FLAG_DF, 0, 4096),
        request(nbd::CMD_FLUSH, 0, 0, 0),
        request(nbd::CMD_TRIM, 0, 4096, 4096),
        request(nbd::CMD_WRITE_ZEROES, nbd::CMD_FLAG_NO_HOLE, 8192, 4096),
        request(nbd::CMD_BLOCK_STATUS, nbd::CMD_FLAG_REQ_ONE, 0, 1 << 20),
        request(nbd::CMD_DISC, 0, 0, 0),
    ]
    .concat();
    let go_session = [
        flags.clone(),
        option(nbd::OPT_STRUCTURED_REPLY, &[]),
        option(nbd::OPT_LIST, &[]),
        option(nbd::OPT_LIST_META_CONTEXT, &nbd::meta_context_payload(b"", &[b"base:"]).unwrap()),
        option(nbd::OPT_SET_META_CONTEXT, &meta),
        option(nbd::OPT_INFO, &info),
        option(nbd::OPT_GO, &info),
        requests.clone(),
    ]
    .concat();
    let old_session = [flags.clone(), option(nbd::OPT_EXPORT_NAME, b"pool"), requests].concat();
    let huge_write =
        [flags.clone(), option(nbd::OPT_EXPORT_NAME, b""), request(nbd::CMD_WRITE, 0, 0, u32::MAX)].concat();
    let mut long_option = [flags.clone(), option(nbd::OPT_GO, &info)].concat();
    long_option[4 + 12..4 + 16].copy_from_slice(&(nbd::MAX_OPTION_DATA + 1).to_be_bytes());
    let absurd_count =
        [flags.clone(), option(nbd::OPT_SET_META_CONTEXT, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])].concat();
    vec![
        ("go-session", go_session),
        ("export-name-session", old_session),
        ("write-over-max", huge_write),
        ("option-over-max", long_option),
        ("meta-count-absurd", absurd_count),
        ("bad-client-flags", [0, 0, 0, 4].to_vec()),
    ]
}

fn rest() -> Vec<(&'static str, Vec<u8>)> {
    let json = |text: &str| text.as_bytes().to_vec();
    vec![
        ("pool-minimal", json(r#"{"name":"p","backends":[{"plugin":"ram"}]}"#)),
        (
            "pool-full",
            json(
                r#"{"name":"db-1","page_size":8192,"backends":[{"plugin":"zstd","version":"1.0.0","config":{"level":5,"mode":"b"}},{"plugin":"sled","grants":["storage"],"config":{"endpoints":["127.0.0.1:6379"],"token":"s","verify":true}}],"max_pages":1000,"max_bytes":null,"accept_threshold_percent":80,"writethrough":true,"exclusive_gets":false,"enabled":true,"shards":4,"sandbox":{"memory_bytes":1048576,"call_timeout_ms":100},"durability":"periodic","flush_interval_ms":500,"integrity":false,"canary_stores":0}"#,
            ),
        ),
        (
            "patch",
            json(
                r#"{"max_pages":null,"max_bytes":5,"enabled":false,"backends":[{"plugin":"ram","config":{"level":-1.5e3}}],"durability":"sync"}"#,
            ),
        ),
        (
            "attach-nbd",
            json(r#"{"kind":"nbd","size_bytes":1073741824,"backing":"/var/lib/tmem/b","listen":"127.0.0.1:0"}"#),
        ),
        (
            "attach-ublk",
            json(r#"{"kind":"ublk","size_bytes":4096,"backing":"/dev/sdb1","ublk_id":7,"allow_remote":false}"#),
        ),
        ("shrink", json(r#"{"target_pages":18446744073709551615}"#)),
        ("memory", json(r#"{"limit_percent":20}"#)),
        ("error", json(r#"{"error":{"code":"pool_not_found","message":"no pool \"x\"\u00e9"}}"#)),
        (
            "manifest",
            json(
                r#"{"abi":1,"name":"zstd","version":"1.0.0","kind":"filter","description":"d","config":[{"key":"level","doc":"","type":"integer","min":1,"max":22,"default":3},{"key":"mode","doc":"","type":"enum","values":["a","b"],"default":"a"},{"key":"e","doc":"","type":"string_list"},{"key":"t","doc":"","type":"secret"},{"key":"v","doc":"","type":"bool","default":true}],"capabilities":["network"]}"#,
            ),
        ),
        ("config", json(r#"{"level":22,"verify":true,"mode":"a","endpoints":[],"token":""}"#)),
        ("deep", json(&format!("{}{}", "[".repeat(200), "]".repeat(200)))),
    ]
}
