#!/usr/bin/env bash
# Formatting and lints, as CI enforces them: rustfmt (rustfmt.toml) and clippy with warnings
# as errors, over the workspace, over the plugins' own workspace (built natively here, as
# their unit tests are) and over the fuzz targets' (on stable, without libFuzzer's C++).
# Exits non-zero on the first finding.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
(cd fuzz && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd plugins && cargo clippy --workspace --all-targets --locked -- -D warnings)
(cd fuzz && cargo clippy --all-targets --locked --no-default-features -- -D warnings)
echo "lint: rustfmt and clippy clean"
