#!/usr/bin/env bash
# Every test, from nothing: installs build dependencies, then runs the workspace's tests
# (unit, integration and doc tests; the integration tests start real hosts and a real
# `tmem serve`) and the plugins' own native unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace --locked
(cd plugins && cargo test --locked)
# The benchmark must keep compiling (it is run by hand: timings are never asserted).
cargo bench -p tmem-host --bench chains --locked --no-run
