//! The OpenAPI document against a generic fuzzer: Schemathesis runs every check it has
//! (stateful phase included, following the document's links) against a real `tmem serve`
//! with its token, and any finding fails the test — an answer the document does not list, a
//! schema-valid request refused for a reason the schema could state, invalid data accepted, a
//! 5xx, a response that does not match its schema.
//!
//! What the fuzzer may do to the machine is confined by `tests/openapi_fuzz/tmem_hooks.py`:
//! the host has no allowed-paths option yet, so the hooks move every `backing` and `socket`
//! path of an attach request into a temporary directory, cap device sizes and keep NBD on
//! loopback. The hooks also hold the one check of ours: which 400s a schema-valid request may
//! get (those that depend on state: registered plugins, a pool's page size, the kernel).
//! `GET /api/v1/stats/stream` is left out: it is an endless event stream (its refusals are
//! tested in `dashboard.rs`).
//!
//! Schemathesis is installed by `scripts/install-deps.sh --test` into
//! `target/tools/schemathesis` (or named by `TMEM_SCHEMATHESIS`); without it this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ServeProcess, temp_dir};

/// Test cases per operation and phase: about 2,600 requests, half a minute on an idle machine.
const MAX_EXAMPLES: &str = "100";

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
    let server = ServeProcess::start(&root.join("data"), &["--memory-limit", "256M"]);
    let devices = root.join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_fuzz");
    let started = std::time::Instant::now();
    let output = Command::new("timeout")
        .arg("300")
        .arg(schemathesis())
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .args(["--no-color", "run", &format!("{}/api/v1/openapi.json", server.url)])
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "1", "--workers", "1", "--request-timeout", "30"])
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
        .env_remove("SCHEMATHESIS_CONFIG")
        .output()
        .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}\n(the run took {:.0?})", started.elapsed());
    assert!(output.status.success(), "the fuzzer found something (exit {:?}):\n{report}", output.status.code());
    // It did test: every operation but the stream, in every phase that generates requests.
    assert!(report.contains("Tested: 20"), "not every operation was tested:\n{report}");
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(report.contains(&format!("✅ {phase}")), "the {phase} phase did not pass:\n{report}");
    }
    // The host is still well.
    assert_eq!(server.client().health().unwrap().status, "ok");
}
