#!/usr/bin/env bash
# The main job, from nothing: installs build dependencies, builds tmem in release (the
# bundled plugins are built and embedded by the build), and runs `tmem demo`: the host with the
# bundled plugins, a `[zstd, ram]` pool `demo`, and a verified workload in a userfaultfd region
# 4x larger than its resident limit (root: userfaultfd); then the host keeps serving on
# loopback until Ctrl-C. Extra arguments go to `tmem demo` (e.g. `--seconds 60`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked
exec ./target/release/tmem demo --then-serve --listen "${TMEM_LISTEN:-127.0.0.1:7411}" --data-dir "${TMEM_DATA_DIR:-tmem-data}" "$@"
