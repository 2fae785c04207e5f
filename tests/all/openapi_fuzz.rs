//! The OpenAPI document against a generic fuzzer: Schemathesis runs every check it has
//! (stateful phase included, following the document's links) against a real `tmem serve`
//! with its token, and any finding fails the test — an answer the document does not list, a
//! schema-valid request refused for a reason the schema could state, invalid data accepted, a
//! 5xx, a response that does not match its schema.
//!
//! What the fuzzer may do to the machine is confined twice: the host allows backing files and
//! sockets only in its data dir and a temporary directory (`--allow-path`: anything else is a
//! 403), and `tests/openapi_fuzz/tmem_hooks.py` moves every `backing` and `socket` path of an
//! attach request into that directory (so attaches succeed), caps device sizes and keeps NBD
//! on loopback. The hooks also hold the one check of ours: which 400s a schema-valid request may
//! get (those that depend on state: registered plugins, a pool's page size, the kernel).
//! `GET /api/v1/stats/stream` is left out: it is an endless event stream (its refusals are
//! tested in `dashboard.rs`).
//!
//! The test cannot pass by testing nothing: Schemathesis must report every operation tested
//! and every case passed, and the hooks log every request with its status, from which every
//! operation that changes state must have succeeded at least once (a fuzzer drawing names and
//! offsets at random finds no pool, page or device, so the hooks aim part of the schema-valid
//! requests at ones that exist). Afterwards the server must still be healthy and stop cleanly
//! on SIGTERM with whatever devices the fuzzer left attached.
//!
//! Schemathesis is installed by `scripts/install-deps.sh --test` into
//! `target/tools/schemathesis` (or named by `TMEM_SCHEMATHESIS`); without it this test fails,
//! it is never skipped. `TMEM_FUZZ_SEED` runs another seed than 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{ServeProcess, temp_dir};

/// Test cases per operation and phase: about 2,400 requests, 25 s of Schemathesis on an idle
/// machine (the whole test, with the server's start, well under a minute).
const MAX_EXAMPLES: &str = "100";

/// Operations the run must get a success from at least once: those that change the host's
/// state (the rest answer with their state, and each of them is called too).
const MUST_SUCCEED: &[&str] = &[
    "POST /api/v1/plugins",
    "DELETE /api/v1/plugins/{name}",
    "POST /api/v1/pools",
    "PATCH /api/v1/pools/{name}",
    "DELETE /api/v1/pools/{name}",
    "POST /api/v1/pools/{name}/frontends",
    "DELETE /api/v1/pools/{name}/frontends/{id}",
    "PUT /api/v1/pools/{name}/pages/{offset}",
    "GET /api/v1/pools/{name}/pages/{offset}",
    "DELETE /api/v1/pools/{name}/pages/{offset}",
    "DELETE /api/v1/pools/{name}/pages",
    "POST /api/v1/pools/{name}/shrink",
    "POST /api/v1/pools/{name}/tokens",
    "DELETE /api/v1/pools/{name}/tokens/{id}",
    "PATCH /api/v1/memory",
];

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("TMEM_SCHEMATHESIS") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/schemathesis");
    assert!(
        path.exists(),
        "Schemathesis is not installed at {}: run `bash scripts/install-deps.sh --test` (or set TMEM_SCHEMATHESIS)",
        path.display()
    );
    path
}

#[test]
fn a_generic_openapi_fuzzer_finds_nothing_undocumented() {
    let root = temp_dir("openapi-fuzz");
    let devices = root.join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    let server =
        ServeProcess::start(&root.join("data"), &["--memory-limit", "256M", "--allow-path", devices.to_str().unwrap()]);
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_fuzz");
    let calls = root.join("calls.log");
    // A real plugin module for uploads to register (the fuzzer's bytes are never one): a test
    // fixture no pool uses, so that removing it can succeed too.
    let plugin = root.join("plugin.wasm");
    std::fs::write(&plugin, tmem_host::bundled::built("tmem_plugin_versioned_v1").unwrap()).unwrap();
    let seed = std::env::var("TMEM_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let started = std::time::Instant::now();
    let output = Command::new("timeout")
        .arg("300")
        .arg(schemathesis())
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .args(["--no-color", "run", &format!("{}/api/v1/openapi.json", server.url)])
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed, "--workers", "1", "--request-timeout", "30"])
        .args(["--exclude-path", "/api/v1/stats/stream"])
        .args(["-H", &format!("Authorization: Bearer {}", server.token)])
        // Its cache and crash files go to the test's directory, not the work tree.
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONPATH", &here)
        .env("SCHEMATHESIS_HOOKS", "tmem_hooks")
        .env("TMEM_FUZZ_DIR", &devices)
        .env("TMEM_FUZZ_URL", &server.url)
        .env("TMEM_FUZZ_TOKEN", &server.token)
        .env("TMEM_FUZZ_CALLS", &calls)
        .env("TMEM_FUZZ_PLUGIN", &plugin)
        .env_remove("SCHEMATHESIS_CONFIG")
        .output()
        .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}\n(seed {seed}; the run took {:.0?})", started.elapsed());
    assert!(output.status.success(), "the fuzzer found something (exit {:?}):\n{report}", output.status.code());
    // It did test: every operation but the stream, in every phase that generates requests,
    // and every generated case passed.
    assert!(report.lines().any(|l| l.trim() == "Tested: 23"), "not every operation was tested:\n{report}");
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(report.contains(&format!("✅ {phase}")), "the {phase} phase did not pass:\n{report}");
    }
    let cases = report.lines().find_map(|l| {
        let (generated, passed) = l.trim().split_once(" generated, ")?;
        Some((generated.parse::<u64>().ok()?, passed.split_once(" passed")?.0.parse::<u64>().ok()?))
    });
    let Some((generated, passed)) = cases else { panic!("no count of test cases in the report:\n{report}") };
    assert!(generated >= 1000 && passed == generated, "{generated} cases generated, {passed} passed:\n{report}");
    // It reached what it tests, by the requests the server answered (tmem_hooks.py's log):
    // every operation, and each one that changes state at least once with success.
    let calls = std::fs::read_to_string(&calls).expect("the hooks logged the requests");
    let mut answered: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for line in calls.lines() {
        let (operation, status) = line.rsplit_once(' ').expect("METHOD PATH STATUS");
        *answered.entry(operation.into()).or_default().entry(status.parse().unwrap()).or_default() += 1;
    }
    let summary: Vec<String> = answered.iter().map(|(op, statuses)| format!("{op}: {statuses:?}")).collect();
    println!("requests by operation and status:\n{}", summary.join("\n"));
    assert_eq!(answered.len(), 23, "not every operation was called:\n{}", summary.join("\n"));
    for operation in MUST_SUCCEED {
        let ok = answered.get(*operation).is_some_and(|s| s.keys().any(|status| (200..300).contains(status)));
        assert!(ok, "{operation} never succeeded:\n{}", summary.join("\n"));
    }
    // The host is still well, and stops cleanly with whatever the fuzzer left attached.
    assert_eq!(server.client().health().unwrap().status, "ok");
    assert_eq!(server.stop_within(Duration::from_secs(60)), Some(true), "tmem serve did not stop cleanly");
}
