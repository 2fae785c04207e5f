//! Builds every plugin in `plugins/` for `wasm32-unknown-unknown` (always optimized: plugin
//! speed is product speed) and hands them to the host crate: the bundled ones are embedded
//! with `include_bytes!`, and the directory with all of them (test fixtures too) is exposed
//! as `TMEM_BUILT_PLUGINS_DIR`.
//!
//! The plugins are their own cargo workspace with their own target directory, so this nested
//! cargo never waits on the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// Every crate of the plugins workspace (its directory) and the module it builds: the bundled
/// plugins and the test fixtures.
const PLUGINS: [(&str, &str); 8] = [
    ("zstd", "tmem_plugin_zstd"),
    ("lz4", "tmem_plugin_lz4"),
    ("ram", "tmem_plugin_ram"),
    ("sled", "tmem_plugin_sled"),
    ("remote", "tmem_plugin_remote"),
    ("misbehave", "tmem_plugin_misbehave"),
    ("versioned-v1", "tmem_plugin_versioned_v1"),
    ("versioned-v2", "tmem_plugin_versioned_v2"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let plugins = root.join("plugins");
    for watched in ["Cargo.toml", "Cargo.lock"].into_iter().chain(PLUGINS.map(|(dir, _)| dir)) {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    for watched in ["sdk", "api", ".cargo/config.toml", "rust-toolchain.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("wasm-plugins"),
        None => root.join("target").join("wasm-plugins"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--locked", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings are for the host; the plugins get none of them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let outer = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE"
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTDOC"
            );
        if outer {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("running cargo to build the Wasm plugins");
    if !status.success() {
        panic!(
            "building the Wasm plugins in {} failed (see above). They need the {TARGET} rustup target \
             (rust-toolchain.toml lists it) and clang for zstd's C code (README, 'Building').",
            plugins.display()
        );
    }
    let built = target_dir.join(TARGET).join("release");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("plugins");
    std::fs::create_dir_all(&out).unwrap();
    for (_, name) in PLUGINS {
        copy(&built.join(format!("{name}.wasm")), &out.join(format!("{name}.wasm")));
    }
    println!("cargo:rustc-env=TMEM_BUILT_PLUGINS_DIR={}", out.display());
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
