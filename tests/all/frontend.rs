//! The frontend socket of a real `tmem serve`: the client SDK's batched operations, auth,
//! shrink calling back into a connected frontend, frontends visible in the API, bad frames,
//! several frontends at once, and a frontend that disconnects abruptly.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use tmem_api::client::ClientError;
use tmem_api::frontend::{self as proto, MAX_BODY};
use tmem_api::rest::{BackendRequest, FrontendKind, PoolConfig, PoolPatch};
use tmem_api::wire;
use tmem_frontend::client::{FrontendClient, Op, OpResult};

use crate::common::{ServeProcess, tagged_page, temp_dir};

fn socket(server: &ServeProcess) -> std::path::PathBuf {
    server.data_dir.join("tmem.sock")
}

fn pool(server: &ServeProcess, name: &str) {
    server
        .client()
        .create_pool(&PoolConfig::new(name, vec![BackendRequest::new("zstd"), BackendRequest::new("ram")]))
        .unwrap();
}

#[test]
fn a_frontend_stores_loads_and_invalidates_in_batches() {
    let server = ServeProcess::start(&temp_dir("fe"), &[]);
    pool(&server, "p");
    let mode = std::fs::metadata(socket(&server)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the host's user may connect");
    let client = FrontendClient::connect(&socket(&server), &server.token, "p", "app-1").unwrap();
    assert_eq!(client.page_size(), 4096);
    assert!(!client.writethrough());
    let pages: Vec<Vec<u8>> = (0..300).map(tagged_page).collect();
    let mut rng = tmem_host::workload::Rng::new(3);
    let random: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    let mut ops: Vec<Op<'_>> = pages.iter().enumerate().map(|(i, p)| Op::Store(i as u64, p)).collect();
    ops.push(Op::Store(1000, &random));
    let results = client.batch(&ops).unwrap();
    assert!(results[..300].iter().all(|r| *r == OpResult::Stored));
    assert_eq!(results[300], OpResult::Rejected("reject_compress_poor".into()));
    let loads: Vec<Op<'_>> =
        (0..301u64).map(Op::Load).chain([Op::Load(1000), Op::Invalidate(5), Op::Invalidate(5), Op::Load(5)]).collect();
    let results = client.batch(&loads).unwrap();
    for (i, r) in results[..300].iter().enumerate() {
        assert_eq!(*r, OpResult::Loaded { exclusive: false, page: pages[i].clone() }, "offset {i}");
    }
    assert_eq!(
        results[300..],
        [
            OpResult::Absent,
            OpResult::Absent,
            OpResult::Invalidated(true),
            OpResult::Invalidated(false),
            OpResult::Absent
        ]
    );
    // PageBackend::load_many (a region's prefetch): one batch, pages in order, absent ones
    // (5 was just invalidated, 1000 was refused) reported as not found.
    let offsets = [7u64, 5, 8, 1000, 9];
    let mut buf = vec![0u8; offsets.len() * 4096];
    let mut found = [true; 5];
    let mut backend = client;
    tmem_frontend::PageBackend::load_many(&mut backend, &offsets, &mut buf, &mut found).unwrap();
    assert_eq!(found, [true, false, true, false, true]);
    for (i, &o) in offsets.iter().enumerate() {
        if found[i] {
            assert_eq!(buf[i * 4096..(i + 1) * 4096], pages[o as usize][..], "offset {o}");
        }
    }
    let client = backend;
    // Pipelined from several threads on one connection.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..50 {
                    let offset = 2000 + t * 100 + i;
                    let page = tagged_page(offset);
                    assert_eq!(
                        client.batch(&[Op::Store(offset, &page), Op::Load(offset)]).unwrap()[1],
                        OpResult::Loaded { exclusive: false, page }
                    );
                }
            });
        }
    });
    // The API shows the frontend with its counters.
    let info = server.client().pool("p").unwrap();
    assert_eq!(info.frontends.len(), 1);
    assert_eq!(info.frontends[0].name, "app-1");
    assert_eq!(info.frontends[0].counters["stores"], 501);
    // One shape on the frontends route too: a socket frontend with its id, kind and address.
    let listed = server.client().frontends("p").unwrap();
    assert_eq!(listed, info.frontends);
    assert!(listed[0].id.starts_with("socket-") && listed[0].kind == FrontendKind::Socket, "{listed:?}");
    assert_eq!((listed[0].address.as_str(), listed[0].device.is_none()), (socket(&server).to_str().unwrap(), true));
    // A socket frontend detaches by closing its connection, not through the API.
    match server.client().detach_frontend("p", &listed[0].id) {
        Err(ClientError::Api { status: 409, code, .. }) => assert_eq!(code, "frontend_not_detachable"),
        other => panic!("detaching a socket frontend: {other:?}"),
    }
    assert_eq!(client.batch(&[Op::InvalidateArea]).unwrap(), [OpResult::Invalidated(true)]);
    assert_eq!(server.client().pool("p").unwrap().counters["stored_pages"], 0);
    // Writethrough is announced.
    server.client().update_pool("p", &PoolPatch { writethrough: Some(true), ..Default::default() }).unwrap();
    assert_eq!(client.batch(&[Op::Store(1, &pages[1])]).unwrap(), [OpResult::StoredWritethrough]);
    let again = FrontendClient::connect(&socket(&server), &server.token, "p", "app-2").unwrap();
    assert!(again.writethrough());
}

#[test]
fn attaching_needs_the_token_and_a_pool() {
    let server = ServeProcess::start(&temp_dir("fe-auth"), &[]);
    pool(&server, "p");
    let err = FrontendClient::connect(&socket(&server), "wrong", "p", "x").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("wrong token"), "{err}");
    let err = FrontendClient::connect(&socket(&server), &server.token, "nope", "x").unwrap_err();
    assert!(err.to_string().contains("no pool named 'nope'"), "{err}");
    assert!(server.client().pool("p").unwrap().frontends.is_empty());
}

fn raw_hello(server: &ServeProcess, pool: &str) -> UnixStream {
    let mut stream = UnixStream::connect(socket(server)).unwrap();
    let hello = proto::hello_payload(&server.token, pool, "raw").unwrap();
    let mut frame = Vec::new();
    wire::frame(&mut frame, MAX_BODY, proto::HELLO, 0, &[&hello]).unwrap();
    stream.write_all(&frame).unwrap();
    let mut answer = [0u8; 4 + 5 + 5];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer[4], proto::ATTACHED);
    stream
}

/// Reads frames until the host closes; returns the kinds seen.
fn kinds_until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut len = [0u8; 4];
    while stream.read_exact(&mut len).is_ok() {
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if stream.read_exact(&mut body).is_err() {
            break;
        }
        kinds.push(body[0]);
    }
    kinds
}

#[test]
fn malformed_frames_get_an_error_and_lose_nothing() {
    let server = ServeProcess::start(&temp_dir("fe-bad"), &[]);
    pool(&server, "p");
    let client = FrontendClient::connect(&socket(&server), &server.token, "p", "good").unwrap();
    client.batch(&[Op::Store(1, &tagged_page(1))]).unwrap();
    let page = [1u8; 100];
    let cases: Vec<Vec<u8>> = vec![
        // A batch whose page is too short.
        {
            let mut p = 1u16.to_le_bytes().to_vec();
            proto::put_op(&mut p, &Op::Store(2, &page));
            let mut f = Vec::new();
            wire::frame(&mut f, MAX_BODY, proto::BATCH, 1, &[&p]).unwrap();
            f
        },
        // An unknown op.
        {
            let mut f = Vec::new();
            wire::frame(&mut f, MAX_BODY, proto::BATCH, 1, &[&[1, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0]]).unwrap();
            f
        },
        // An oversized frame header.
        u32::MAX.to_le_bytes().to_vec(),
        // An unknown frame kind.
        {
            let mut f = Vec::new();
            wire::frame(&mut f, MAX_BODY, 77, 1, &[]).unwrap();
            f
        },
    ];
    for (i, bytes) in cases.into_iter().enumerate() {
        let mut raw = raw_hello(&server, "p");
        raw.write_all(&bytes).unwrap();
        assert_eq!(kinds_until_closed(&mut raw), [proto::ERROR], "case {i}: an ERROR, then closed");
    }
    // A truncated frame: the writer disappears mid-frame.
    let mut raw = raw_hello(&server, "p");
    let mut frame = Vec::new();
    let mut payload = 1u16.to_le_bytes().to_vec();
    proto::put_op(&mut payload, &Op::Store(3, &tagged_page(3)));
    wire::frame(&mut frame, MAX_BODY, proto::BATCH, 1, &[&payload]).unwrap();
    raw.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(raw);
    // The host still serves, and nothing stored was touched.
    let results = client.batch(&[Op::Load(1), Op::Load(2), Op::Load(3)]).unwrap();
    assert_eq!(
        results,
        [OpResult::Loaded { exclusive: false, page: tagged_page(1) }, OpResult::Absent, OpResult::Absent]
    );
    assert_eq!(server.client().pool("p").unwrap().counters["stored_pages"], 1);
}

/// What a frontend's own device received: `(offset, page)`.
type Device = Vec<(u64, Vec<u8>)>;

#[test]
fn shrink_asks_the_connected_frontend_to_take_pages_back() {
    let server = ServeProcess::start(&temp_dir("fe-shrink"), &[]);
    pool(&server, "p");
    let client = FrontendClient::connect(&socket(&server), &server.token, "p", "device").unwrap();
    let device: Arc<Mutex<Device>> = Arc::default();
    let sink = device.clone();
    client.on_take_back(Box::new(move |offset, page| sink.lock().unwrap().push((offset, page.to_vec()))));
    let pages: Vec<Vec<u8>> = (0..100).map(tagged_page).collect();
    let ops: Vec<Op<'_>> = pages.iter().enumerate().map(|(i, p)| Op::Store(i as u64, p)).collect();
    client.batch(&ops).unwrap();
    let shrunk = server.client().shrink("p", 40).unwrap();
    assert_eq!((shrunk.before, shrunk.after, shrunk.written_back), (100, 40, 60));
    let taken = device.lock().unwrap().clone();
    assert_eq!(taken.len(), 60);
    for (offset, page) in &taken {
        assert_eq!(*page, pages[*offset as usize], "the device got the right bytes for offset {offset}");
    }
    let info = server.client().pool("p").unwrap();
    assert_eq!((info.counters["written_back_pages"], info.frontends[0].counters["taken_back"]), (60, 60));
    // Every page is in exactly one place: the pool or the device.
    let results = client.batch(&(0..100u64).map(Op::Load).collect::<Vec<_>>()).unwrap();
    let in_pool = results.iter().filter(|r| matches!(r, OpResult::Loaded { .. })).count();
    assert_eq!(in_pool, 40);
    for (offset, _) in &taken {
        assert_eq!(results[*offset as usize], OpResult::Absent);
    }
}

#[test]
fn two_frontends_on_two_pools_and_an_abrupt_disconnect() {
    let server = ServeProcess::start(&temp_dir("fe-two"), &[]);
    pool(&server, "a");
    pool(&server, "b");
    std::thread::scope(|s| {
        for name in ["a", "b"] {
            let server = &server;
            s.spawn(move || {
                let client = FrontendClient::connect(&socket(server), &server.token, name, name).unwrap();
                let pages: Vec<Vec<u8>> =
                    (0..200).map(|i| tagged_page(i + if name == "a" { 0 } else { 10_000 })).collect();
                let ops: Vec<Op<'_>> = pages.iter().enumerate().map(|(i, p)| Op::Store(i as u64, p)).collect();
                client.batch(&ops).unwrap();
                let results = client.batch(&(0..200u64).map(Op::Load).collect::<Vec<_>>()).unwrap();
                for (i, r) in results.into_iter().enumerate() {
                    assert_eq!(r, OpResult::Loaded { exclusive: false, page: pages[i].clone() }, "{name} offset {i}");
                }
            });
        }
    });
    // A frontend dies in the middle of a batch: the host detaches it, the pool stays whole.
    let mut raw = raw_hello(&server, "a");
    let mut payload = 2u16.to_le_bytes().to_vec();
    let page = tagged_page(7);
    proto::put_op(&mut payload, &Op::Store(500, &page));
    proto::put_op(&mut payload, &Op::Store(501, &page));
    let mut frame = Vec::new();
    wire::frame(&mut frame, MAX_BODY, proto::BATCH, 1, &[&payload]).unwrap();
    raw.write_all(&frame[..frame.len() - 10]).unwrap();
    drop(raw);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let info = server.client().pool("a").unwrap();
    assert!(info.frontends.is_empty(), "detached: {:?}", info.frontends);
    assert_eq!(info.counters["stored_pages"], 200, "the partial batch did nothing");
    let client = FrontendClient::connect(&socket(&server), &server.token, "a", "after").unwrap();
    assert_eq!(
        client.batch(&[Op::Load(199)]).unwrap(),
        [OpResult::Loaded { exclusive: false, page: tagged_page(199) }]
    );
}

#[test]
fn a_batch_whose_answer_cannot_fit_a_frame_is_refused_before_it_runs() {
    // 2 MiB pages: 1024 takes in a 9 KiB batch would ask for a 2 GiB answer.
    let server = ServeProcess::start(&temp_dir("fe-huge-answer"), &[]);
    let mut config = PoolConfig::new("big", vec![BackendRequest::new("ram")]);
    config.page_size = 2 << 20;
    server.client().create_pool(&config).unwrap();
    let client = FrontendClient::connect(&socket(&server), &server.token, "big", "good").unwrap();
    let page = vec![5u8; 2 << 20];
    client.batch(&[Op::Store(0, &page), Op::Store(1, &page)]).unwrap();
    let rss = |pid| crate::common::rss(pid);
    let before = rss(server.child.id());
    let mut raw = raw_hello(&server, "big");
    let mut payload = 1024u16.to_le_bytes().to_vec();
    for o in 0..1024u64 {
        proto::put_op(&mut payload, &Op::Take(o % 2));
    }
    let mut frame = Vec::new();
    wire::frame(&mut frame, MAX_BODY, proto::BATCH, 1, &[&payload]).unwrap();
    assert!(frame.len() < 10 << 10);
    raw.write_all(&frame).unwrap();
    assert_eq!(kinds_until_closed(&mut raw), [proto::ERROR], "an ERROR, then closed");
    let grown = rss(server.child.id()).saturating_sub(before);
    assert!(grown < 128 << 20, "the host grew by {} MiB", grown >> 20);
    // No take ran: both pages are still in the pool, and the SDK's own batches (split by
    // bytes) take them back whole.
    assert_eq!(server.client().pool("big").unwrap().counters["stored_pages"], 2);
    let results = client.batch(&[Op::Take(0), Op::Take(1)]).unwrap();
    assert!(results.iter().all(|r| matches!(r, OpResult::Loaded { page: p, .. } if *p == page)), "{results:?}");
}

#[test]
fn a_frontend_that_claims_pages_it_did_not_take_cannot_hold_a_shrink() {
    let server = ServeProcess::start(&temp_dir("fe-liar"), &[]);
    pool(&server, "p");
    // The liar attaches first (shrink asks the first frontend): it answers every TAKE_BACK
    // with TAKEN = all of them, and takes nothing.
    let mut liar = raw_hello(&server, "p");
    let mut answers = liar.try_clone().unwrap();
    let lying = std::thread::spawn(move || {
        let mut len = [0u8; 4];
        let mut lies = 0;
        while liar.read_exact(&mut len).is_ok() {
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            if liar.read_exact(&mut body).is_err() {
                break;
            }
            let (kind, id, payload) = wire::parse_body(&body).unwrap();
            if kind == proto::TAKE_BACK {
                let asked = u32::from_le_bytes(payload[..4].try_into().unwrap()) as u64;
                let mut frame = Vec::new();
                wire::frame(&mut frame, MAX_BODY, proto::TAKEN, id, &[&asked.to_le_bytes()]).unwrap();
                answers.write_all(&frame).unwrap();
                lies += 1;
            }
        }
        lies
    });
    let client = FrontendClient::connect(&socket(&server), &server.token, "p", "storer").unwrap();
    let pages: Vec<Vec<u8>> = (0..50).map(tagged_page).collect();
    let ops: Vec<Op<'_>> = pages.iter().enumerate().map(|(i, p)| Op::Store(i as u64, p)).collect();
    client.batch(&ops).unwrap();
    let started = std::time::Instant::now();
    let shrunk = server.client().shrink("p", 10).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the shrink took {:?}", started.elapsed());
    assert_eq!((shrunk.before, shrunk.after, shrunk.written_back), (50, 50, 0), "nothing was taken, nothing counted");
    // Nothing was lost.
    let results = client.batch(&(0..50u64).map(Op::Load).collect::<Vec<_>>()).unwrap();
    assert!(results.iter().all(|r| matches!(r, OpResult::Loaded { .. })));
    server.client().remove_pool("p").unwrap_or(());
    drop(client);
    drop(server);
    assert!(lying.join().unwrap() >= 1, "the liar was asked");
}

#[test]
fn a_socket_path_that_is_a_file_is_not_deleted() {
    let dir = temp_dir("fe-socket-file");
    let file = dir.join("precious");
    std::fs::write(&file, b"not a socket").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["serve", "--data-dir", dir.join("data").to_str().unwrap(), "--listen", "127.0.0.1:0", "--socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"), "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a socket", "the file is intact");
}

#[test]
fn running_out_of_descriptors_backs_off_instead_of_spinning() {
    let dir = temp_dir("fe-emfile");
    let log = dir.join("serve.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The host with few descriptors: idle connections exhaust them.
    let mut child = std::process::Command::new("bash")
        .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_tmem"), "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("TMEM_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let up = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ureq::get(&health).call().is_ok()
    });
    assert!(up, "tmem serve did not come up: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let socket = dir.join("data").join("tmem.sock");
    let idle: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let failures = std::fs::read_to_string(&log).unwrap().matches("accepting a frontend failed").count();
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let still_up = ureq::get(&health).call().is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures > 0, "the descriptors did run out");
    assert!(failures < 100, "{failures} failed accepts logged in about 2 s: the loop spins");
    assert!(still_up, "the host serves once descriptors are free again");
}

#[test]
fn a_frontend_of_a_destroyed_pool_is_turned_away_not_acknowledged() {
    let server = ServeProcess::start(&temp_dir("fe-destroyed"), &[]);
    pool(&server, "p");
    let client = FrontendClient::connect(&socket(&server), &server.token, "p", "late").unwrap();
    client.batch(&[Op::Store(1, &tagged_page(1))]).unwrap();
    server.client().remove_pool("p").unwrap();
    // A store into a pool nobody can reach again would be acknowledged and lost: refused.
    let page = tagged_page(2);
    let result = client.batch(&[Op::Store(2, &page)]);
    assert!(result.is_err(), "{result:?}");
    assert!(result.unwrap_err().to_string().contains("was destroyed"));
    // A new pool of the same name is a new pool: nothing of the old one, nothing of the late store.
    pool(&server, "p");
    let fresh = FrontendClient::connect(&socket(&server), &server.token, "p", "new").unwrap();
    assert_eq!(fresh.batch(&[Op::Load(1), Op::Load(2)]).unwrap(), [OpResult::Absent, OpResult::Absent]);
}

/// A page of `page_size` bytes that names its offset and size all over.
fn sized_page(offset: u64, page_size: usize) -> Vec<u8> {
    format!("<page {offset:016x} of {page_size}> ").bytes().cycle().take(page_size).collect()
}

#[test]
fn shrink_takes_back_every_page_whole_with_4_kib_256_kib_and_2_mib_pages() {
    // Take-back answers carry whole pages: with large pages one shrink round (up to 256
    // pages) needs several frames, each of which must fit MAX_BODY, and no page may be taken
    // from the pool without reaching the frontend's device.
    let server = ServeProcess::start(&temp_dir("fe-shrink-sizes"), &[]);
    for (page_size, count, keep) in [(4usize << 10, 600u64, 100u64), (256 << 10, 300, 40), (2 << 20, 48, 8)] {
        let name = format!("p{}", page_size >> 10);
        let mut config = PoolConfig::new(&name, vec![BackendRequest::new("ram")]);
        config.page_size = page_size as _;
        server.client().create_pool(&config).unwrap();
        let client = FrontendClient::connect(&socket(&server), &server.token, &name, "device").unwrap();
        let device: Arc<Mutex<Device>> = Arc::default();
        let sink = device.clone();
        client.on_take_back(Box::new(move |offset, page| sink.lock().unwrap().push((offset, page.to_vec()))));
        let pages: Vec<Vec<u8>> = (0..count).map(|o| sized_page(o, page_size)).collect();
        let ops: Vec<Op<'_>> = pages.iter().enumerate().map(|(o, p)| Op::Store(o as u64, p)).collect();
        assert!(client.batch(&ops).unwrap().iter().all(|r| *r == OpResult::Stored), "{page_size}-byte pages stored");
        drop(ops);
        let shrunk = server.client().shrink(&name, keep).unwrap();
        assert_eq!((shrunk.before, shrunk.after, shrunk.written_back), (count, keep, count - keep), "{page_size}");
        let taken = std::mem::take(&mut *device.lock().unwrap());
        assert_eq!(taken.len() as u64, count - keep, "{page_size}-byte pages: the device got every page taken");
        for (offset, page) in &taken {
            assert!(*page == pages[*offset as usize], "{page_size}-byte page {offset} came back whole");
        }
        // Every page is in exactly one place, with its bytes: the pool or the device.
        let mut on_device = vec![false; count as usize];
        for (offset, _) in &taken {
            assert!(!std::mem::replace(&mut on_device[*offset as usize], true), "page {offset} taken twice");
        }
        for offset in 0..count {
            let result = client.batch(&[Op::Load(offset)]).unwrap().remove(0);
            if on_device[offset as usize] {
                assert_eq!(result, OpResult::Absent, "{page_size}-byte page {offset} left the pool");
            } else {
                assert!(
                    matches!(&result, OpResult::Loaded { page, .. } if *page == pages[offset as usize]),
                    "{page_size}-byte page {offset} is still in the pool"
                );
            }
        }
    }
}
