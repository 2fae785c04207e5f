#!/usr/bin/env bash
# The main job, from nothing: installs build dependencies, builds tmem in release (the
# bundled plugins are built and embedded by the build), and runs the host with a `[zstd, ram]`
# pool named `demo`, listening on loopback. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked
exec ./target/release/tmem serve --demo-pool --listen "${TMEM_LISTEN:-127.0.0.1:7411}" --data-dir "${TMEM_DATA_DIR:-tmem-data}"
