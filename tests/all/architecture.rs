//! The containment rules of `ARCHITECTURE.md`, enforced: which source files may name which
//! heavy dependency, and which crates may depend on which. A rule broken here is a design
//! change: move the code, or change the rule in ARCHITECTURE.md and here together.

use std::path::{Path, PathBuf};

/// The workspace root (this test binary belongs to the root package).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the root, with `/` separators.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.strip_prefix(root()).unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// Whether `code` (comments removed) names crate `krate` as a path (`krate::…`, `use krate`).
fn names_crate(code: &str, krate: &str) -> bool {
    code.lines().map(|line| line.split("//").next().unwrap_or("")).any(|line| {
        line.match_indices(krate).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = &line[at + krate.len()..];
            let starts_path = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '"' || c == '-'));
            starts_path
                && (after.starts_with("::") || (line.trim_start().starts_with("use ") && after.starts_with([';', ' '])))
        })
    })
}

/// The crates only a few places may name, and those places (a folder ends with `/`).
const CONTAINED: &[(&str, &[&str], &str)] = &[
    ("wasmtime", &["host/src/plugin/"], "only the plugin runtime runs Wasm"),
    ("axum", &["host/src/rest/", "host/src/server.rs"], "only the REST layer and the server speak HTTP"),
    ("tower_http", &["host/src/rest/", "host/src/server.rs"], "only the REST layer and the server speak HTTP"),
    (
        "sled",
        &["host/src/persist.rs", "host/src/page_store.rs", "host/src/catalog.rs"],
        "sled is the persistence, page store and catalog's business",
    ),
    ("libublk", &["host/src/frontend/ublk.rs"], "only the ublk transport talks to the ublk driver"),
    ("openssl", &["host/src/tls.rs"], "TLS is set up in one place; listeners use its types"),
    ("clap", &["src/"], "the command line lives in the root binary; the libraries take plain config structs"),
];

#[test]
fn heavy_dependencies_stay_where_the_architecture_puts_them() {
    let mut broken = Vec::new();
    let files: Vec<(String, String)> =
        ["api/src", "sdk/src", "frontend/src", "host/src", "src"].iter().flat_map(|dir| sources(dir)).collect();
    assert!(files.len() > 40, "the scan found only {} files", files.len());
    for (krate, allowed, why) in CONTAINED {
        for (path, text) in &files {
            if names_crate(text, krate)
                && !allowed.iter().any(|a| path == a || (a.ends_with('/') && path.starts_with(a)))
            {
                broken.push(format!("{path} names `{krate}`: {why} ({allowed:?})"));
            }
        }
    }
    assert!(broken.is_empty(), "containment rules broken:\n{}", broken.join("\n"));
}

/// The `[dependencies]` crate names of a member's `Cargo.toml`.
fn dependencies(member: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(member).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().split('.').next().unwrap().to_string());
        }
    }
    assert!(!names.is_empty() || member == "sdk", "{member} has no [dependencies]?");
    names
}

#[test]
fn crates_depend_only_downwards() {
    let forbidden: &[(&str, &[&str], &str)] = &[
        (
            "api",
            &["tmem-host", "tmem-frontend", "tmem-sdk", "tokio", "wasmtime", "axum", "sled"],
            "api is what crosses process boundaries, as data: it depends on nothing of ours and no runtime",
        ),
        (
            "sdk",
            &["tmem-host", "tmem-frontend", "libc"],
            "the plugin SDK is only the plugin SDK (it builds for wasm32)",
        ),
        ("frontend", &["tmem-host", "tmem-sdk", "wasmtime", "axum", "sled"], "a frontend links no host"),
        ("host", &["tmem-sdk", "clap"], "the host runs plugins, it is not one; its command line is the binary's"),
    ];
    let mut broken = Vec::new();
    for (member, deps, why) in forbidden {
        for dep in dependencies(member) {
            if deps.contains(&dep.as_str()) {
                broken.push(format!("{member} depends on {dep}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_crate_name_check_sees_paths_and_uses_not_words() {
    assert!(names_crate("use wasmtime::Engine;", "wasmtime"));
    assert!(names_crate("    let e = wasmtime::Engine::default();", "wasmtime"));
    assert!(names_crate("use sled;", "sled"));
    assert!(!names_crate("// wasmtime::Engine in a comment", "wasmtime"));
    assert!(!names_crate(r#"let name = "sled";"#, "sled"));
    assert!(!names_crate("let tmem_plugin_sled = 1; my_sled::x();", "sled"));
}
