//! `tmem demo` as a user runs it: a real host, a real userfaultfd region 4x its resident
//! limit over a `[zstd, ram]` pool through the frontend socket — and, mid-run, a shrink from
//! the host that makes the region take pages back. Every page read is verified by the demo;
//! it exits 0 only if none read back wrong.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::temp_dir;
use crate::peer::free_port;

#[test]
fn the_demo_verifies_every_page_through_faults_evictions_and_a_shrink() {
    if std::fs::File::open("/dev/userfaultfd").is_err() {
        eprintln!("skipped: no access to /dev/userfaultfd (the demo needs root)");
        return;
    }
    let dir = temp_dir("demo");
    let port = free_port();
    let demo = Command::new(env!("CARGO_BIN_EXE_tmem"))
        .args(["demo", "--seconds", "8", "--region-mib", "16", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env_remove("TMEM_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run, the host shrinks the pool: the region must take those pages back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        if let Ok(token) = std::fs::read_to_string(dir.join("token")) {
            let client =
                tmem_api::client::Client::new(&format!("http://127.0.0.1:{port}"), Some(token.trim().to_string()));
            if client.pool("demo").is_ok_and(|p| p.counters["stored_pages"] > 500) {
                break client;
            }
        }
        assert!(Instant::now() < deadline, "the demo's pool never filled");
        std::thread::sleep(Duration::from_millis(100));
    };
    let shrunk = client.shrink("demo", 100).unwrap();
    assert!(shrunk.written_back > 0, "the region took pages back: {shrunk:?}");
    let out = demo.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tmem demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no '{name}' in {stdout}"));
        line.trim_start()[name.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let link = format!("dashboard: http://127.0.0.1:{port}/#token={}", token.trim());
    assert!(stdout.contains(&link), "the demo prints a dashboard link that signs in: {stdout}");
    assert_eq!(field("mismatches"), 0);
    assert!(field("pages verified") > 1000, "{stdout}");
    assert!(field("pages stored to pool") > 0 && field("zero-filled faults") > 0, "{stdout}");
    assert!(field("pages taken back") > 0, "the shrink reached the region: {stdout}");
    assert!(
        stdout.contains("rejected to the backing file: ") && !stdout.contains("rejected to the backing file: 0)"),
        "incompressible pages went to the file: {stdout}"
    );
    assert!(field("pages discarded (app)") > 0, "{stdout}");
    // Prefetch is on by default; the sweeps give it something to cover.
    let prefetch = stdout.lines().find(|l| l.trim_start().starts_with("prefetch ")).expect("a prefetch line");
    assert!(prefetch.contains("coverage ") && prefetch.contains("accuracy "), "{stdout}");
    assert!(!prefetch.contains("coverage 0.0%"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
