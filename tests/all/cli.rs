//! The `tmem` command line against a real `tmem serve`: the real binary, run as a user would,
//! with the token from the data dir or the environment, human and `--json` output, pages
//! through files and standard input, and the exit codes and messages of failures.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{ServeProcess, tagged_page, temp_dir};

/// What one run of `tmem` did.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts success and returns standard output as text.
    pub(crate) fn ok(self) -> String {
        assert_eq!(self.code, 0, "tmem failed: {}{}", self.text(), self.stderr);
        self.text()
    }
}

/// `tmem` with no `TMEM_*` settings from the environment of the test run, in an empty working
/// directory (so the default `tmem-data` does not exist).
pub(crate) fn tmem() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tmem"));
    command
        .env_remove("TMEM_TOKEN")
        .env_remove("TMEM_SERVER")
        .env_remove("TMEM_DATA_DIR")
        .env("RUST_LOG", "warn")
        .current_dir(temp_dir("cli-cwd"));
    command
}

/// `tmem` pointed at `server` through `TMEM_SERVER` and `TMEM_DATA_DIR` (so the token comes
/// from the data dir).
pub(crate) fn tmem_at(server: &ServeProcess) -> Command {
    let mut command = tmem();
    command.env("TMEM_SERVER", &server.url).env("TMEM_DATA_DIR", &server.data_dir);
    command
}

pub(crate) fn run(command: &mut Command, args: &[&str]) -> Run {
    run_with_stdin(command, args, None)
}

fn run_with_stdin(command: &mut Command, args: &[&str], stdin: Option<&[u8]>) -> Run {
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().expect("tmem runs");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("tmem exited (not killed by a signal)"),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn the_token_comes_from_the_data_dir_or_the_environment_and_is_required() {
    let server = ServeProcess::start(&temp_dir("cli"), &[]);
    let data_dir = server.data_dir.to_str().unwrap();
    let empty_dir = temp_dir("cli-no-token");
    let empty_dir = empty_dir.to_str().unwrap();

    // From --data-dir, with the server as an option.
    run(&mut tmem(), &["pool", "ls", "--server", &server.url, "--data-dir", data_dir]).ok();
    // From TMEM_TOKEN, with a data dir that has none.
    run(tmem().env("TMEM_TOKEN", &server.token), &["pool", "--server", &server.url, "ls", "--data-dir", empty_dir])
        .ok();
    // From --token.
    run(&mut tmem(), &["plugin", "ls", "--server", &server.url, "--token", &server.token, "--data-dir", empty_dir])
        .ok();

    // None at all.
    let r = run(&mut tmem(), &["pool", "ls", "--server", &server.url, "--data-dir", empty_dir]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("tmem: no API token: set TMEM_TOKEN, pass --token"), "{}", r.stderr);
    assert!(r.stderr.contains("token not found"), "{}", r.stderr);

    // A wrong one: the server's refusal, with its code and status.
    let r = run(&mut tmem(), &["pool", "ls", "--server", &server.url, "--token", "not-the-token"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("tmem: "), "{}", r.stderr);
    assert!(r.stderr.contains("(unauthorized, HTTP 401)"), "{}", r.stderr);

    // An API error: message, code, status; exit 1.
    let r = run(&mut tmem_at(&server), &["pool", "show", "no-such-pool"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("(pool_not_found, HTTP 404)"), "{}", r.stderr);

    // A usage error is clap's: exit 2.
    let r = run(&mut tmem_at(&server), &["pool", "set", "demo"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn plugins_are_listed_uploaded_shown_and_removed() {
    let server = ServeProcess::start(&temp_dir("cli"), &[]);
    let files = temp_dir("cli-files");

    let listing = run(&mut tmem_at(&server), &["plugin", "ls"]).ok();
    let header = listing.lines().next().unwrap();
    assert!(header.starts_with("NAME") && header.contains("VERSION") && header.contains("SHA256"), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with("zstd ") && l.contains("bundled")), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with("ram ") && l.contains("bundled")), "{listing}");
    let plugins = run(&mut tmem_at(&server), &["plugin", "ls", "--json"]).json();
    let names: Vec<&str> = plugins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"zstd") && names.contains(&"ram"), "{plugins}");

    let wasm = tmem_host::bundled::built("tmem_plugin_misbehave").expect("fixture was built by host/build.rs");
    let file = write_file(&files, "misbehave.wasm", &wasm);
    let uploaded = run(&mut tmem_at(&server), &["plugin", "upload", &file]).ok();
    assert!(uploaded.starts_with("registered plugin misbehave "), "{uploaded}");

    let shown = run(&mut tmem_at(&server), &["plugin", "show", "misbehave"]).ok();
    assert!(shown.contains("name:") && shown.contains("misbehave"), "{shown}");
    assert!(shown.contains("uploaded"), "{shown}");
    assert!(shown.contains("KEY") && shown.contains("after"), "the config keys are listed: {shown}");
    let info = run(&mut tmem_at(&server), &["plugin", "show", "misbehave", "--json"]).json();
    assert_eq!(info["name"], "misbehave");
    assert_eq!(info["versions"][0]["bundled"], false);
    assert_eq!(info["versions"][0]["size"], wasm.len() as u64);

    // Under another name, then removed.
    let uploaded = run(&mut tmem_at(&server), &["plugin", "upload", &file, "--name", "chaos", "--json"]).json();
    assert_eq!(uploaded["name"], "chaos");
    run(&mut tmem_at(&server), &["plugin", "rm", "chaos"]).ok();
    let r = run(&mut tmem_at(&server), &["plugin", "show", "chaos"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("(plugin_not_found, HTTP 404)"), "{}", r.stderr);

    // Not a Wasm module.
    let junk = write_file(&files, "junk.wasm", b"not wasm");
    let r = run(&mut tmem_at(&server), &["plugin", "upload", &junk]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("invalid_plugin"), "{}", r.stderr);
}

#[test]
fn pools_are_created_changed_and_removed_and_pages_round_trip() {
    let server = ServeProcess::start(&temp_dir("cli"), &[]);
    let files = temp_dir("cli-files");
    let tmem = || tmem_at(&server);

    let created = run(
        &mut tmem(),
        &["pool", "create", "demo", "--backend", "zstd:level=1", "--backend", "ram", "--max-pages", "100"],
    )
    .ok();
    assert!(created.starts_with("created pool demo"), "{created}");
    assert!(created.contains("zstd") && created.contains("ram"), "{created}");
    assert_eq!(server.client().pool("demo").expect("the API sees it").max_pages, Some(100));

    let listing = run(&mut tmem(), &["pool", "ls"]).ok();
    let header = listing.lines().next().unwrap();
    for column in ["NAME", "PAGE", "CHAIN", "PAGES", "BYTES", "LIMIT", "MODES", "STATE"] {
        assert!(header.contains(column), "{listing}");
    }
    let row = listing.lines().find(|l| l.starts_with("demo ")).unwrap_or_else(|| panic!("no demo row: {listing}"));
    assert!(
        row.contains("zstd") && row.contains("→ ram") && row.contains("100 pages") && row.contains("enabled"),
        "{row}"
    );

    let shown = run(&mut tmem(), &["pool", "show", "demo"]).ok();
    assert!(shown.contains("name:") && shown.contains("demo"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("max pages:") && l.ends_with("100")), "{shown}");
    assert!(shown.contains("level=1"), "the chain shows its config: {shown}");
    assert!(shown.contains("stored_pages"), "the counters are shown: {shown}");

    let info = run(&mut tmem(), &["pool", "show", "demo", "--json"]).json();
    assert_eq!(info["name"], "demo");
    assert_eq!(info["page_size"], 4096);
    assert_eq!(info["max_pages"], 100);
    assert_eq!(info["writethrough"], false);
    assert_eq!(info["backends"][0]["plugin"], "zstd");
    assert_eq!(info["backends"][0]["config"]["level"], 1);
    assert_eq!(info["backends"][1]["plugin"], "ram");
    assert!(info["counters"].is_object() && info["latency"].is_object(), "{info}");
    let pools = run(&mut tmem(), &["pool", "ls", "--json"]).json();
    assert!(pools.as_array().unwrap().iter().any(|p| p["name"] == "demo"), "{pools}");

    run(&mut tmem(), &["pool", "set", "demo", "--max-pages", "50", "--writethrough", "true"]).ok();
    let info = run(&mut tmem(), &["pool", "show", "demo", "--json"]).json();
    assert_eq!(info["max_pages"], 50);
    assert_eq!(info["writethrough"], true);

    // A page from a file, another from standard input; both come back byte for byte.
    let page = tagged_page(7);
    let file = write_file(&files, "page7", &page);
    let put = run(&mut tmem(), &["page", "put", "demo", "7", &file]).ok();
    assert!(put.starts_with("stored"), "{put}");
    assert_eq!(run(&mut tmem(), &["page", "get", "demo", "7"]).stdout, page);
    let out = files.join("out7");
    run(&mut tmem(), &["page", "get", "demo", "7", "-o", out.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&out).unwrap(), page);
    let page8 = tagged_page(8);
    let r = run_with_stdin(&mut tmem(), &["page", "put", "demo", "8", "-", "--json"], Some(&page8));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["outcome"], "stored_writethrough");
    assert_eq!(run(&mut tmem(), &["page", "get", "demo", "0x8"]).stdout, page8);

    // Absent pages.
    let r = run(&mut tmem(), &["page", "get", "demo", "999"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    assert_eq!(r.stderr.trim(), "tmem: page not present");

    // Not a page.
    let short = write_file(&files, "short", &[1u8; 100]);
    let r = run(&mut tmem(), &["page", "put", "demo", "9", &short]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("page"), "{}", r.stderr);
    let r = run_with_stdin(&mut tmem(), &["page", "put", "demo", "9"], Some(&[0u8; 5000]));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("page"), "{}", r.stderr);

    // A rejected store is exit code 3, not an error message.
    run(&mut tmem(), &["pool", "set", "demo", "--disable"]).ok();
    let r = run(&mut tmem(), &["page", "put", "demo", "10", &file]);
    assert_eq!(r.code, 3, "{}{}", r.text(), r.stderr);
    assert!(r.text().starts_with("rejected"), "{}", r.text());
    run(&mut tmem(), &["pool", "set", "demo", "--enable"]).ok();

    // Invalidation, one page and all.
    run(&mut tmem(), &["page", "rm", "demo", "7"]).ok();
    assert_eq!(run(&mut tmem(), &["page", "get", "demo", "7"]).code, 1);
    assert_eq!(run(&mut tmem(), &["page", "rm", "demo", "7"]).code, 1, "gone already");
    let dropped = run(&mut tmem(), &["page", "rm", "demo", "--all"]).ok();
    assert!(dropped.contains("dropped 1 page from pool demo"), "{dropped}");
    assert_eq!(run(&mut tmem(), &["page", "get", "demo", "8"]).code, 1);

    // Shrink (a writethrough pool may drop its pages).
    for offset in 0..4 {
        run_with_stdin(&mut tmem(), &["page", "put", "demo", &offset.to_string()], Some(&tagged_page(offset))).ok();
    }
    let shrunk = run(&mut tmem(), &["pool", "shrink", "demo", "--target-pages", "1", "--json"]).json();
    assert_eq!(shrunk["before"], 4);
    assert_eq!(shrunk["after"], 1);

    run(&mut tmem(), &["pool", "rm", "demo"]).ok();
    let r = run(&mut tmem(), &["pool", "show", "demo"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pool_not_found"), "{}", r.stderr);
    let r = run(&mut tmem(), &["page", "get", "demo", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pool_not_found"), "{}", r.stderr);
}

#[test]
fn an_unreachable_server_is_reported_clearly() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let r = run(&mut tmem(), &["pool", "ls", "--server", &url, "--token", "t"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with(&format!("tmem: cannot reach tmem at {url}: ")), "{}", r.stderr);
    assert!(r.stderr.trim_end().ends_with("(is `tmem serve` running?)"), "{}", r.stderr);
}

#[test]
fn persistent_pools_are_created_with_grants_and_durability_from_the_command_line() {
    let server = ServeProcess::start(&temp_dir("cli-persist"), &[]);
    let created = run(
        &mut tmem_at(&server),
        &[
            "pool",
            "create",
            "disk",
            "--backend",
            "zstd",
            "--backend",
            "sled+storage",
            "--durability",
            "periodic",
            "--flush-interval-ms",
            "250",
        ],
    );
    created.ok();
    let shown: serde_json::Value =
        serde_json::from_str(&run(&mut tmem_at(&server), &["pool", "show", "disk", "--json"]).ok()).unwrap();
    assert_eq!(
        (shown["persistent"].as_bool(), shown["durability"].as_str(), shown["flush_interval_ms"].as_u64()),
        (Some(true), Some("periodic"), Some(250))
    );
    assert_eq!(shown["backends"][1]["grants"], serde_json::json!(["storage"]));
    assert!(
        run(&mut tmem_at(&server), &["pool", "show", "disk"])
            .ok()
            .contains("periodic durability (flushed every 250 ms)")
    );
    run(&mut tmem_at(&server), &["pool", "set", "disk", "--durability", "sync"]).ok();
    assert_eq!(server.client().pool("disk").unwrap().durability, Some(tmem_api::rest::Durability::Sync));
    // Without the grant: refused with the reason, exit 1.
    let refused = run(&mut tmem_at(&server), &["pool", "create", "bare", "--backend", "sled"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("needs the 'storage' capability"), "{}", refused.stderr);
}
