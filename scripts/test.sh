#!/usr/bin/env bash
# Every test, from nothing: installs build dependencies, checks formatting and clippy, then
# runs the plugins' own native unit tests and the workspace's tests (unit, integration and doc tests; the integration tests
# start real hosts and a real `tmem serve`), fuzzes every decoder (scripts/fuzz.sh), then the slow guest-kernel tests on their own,
# builds, installs and removes the Debian package (scripts/package.sh), and ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
# A build from nothing gains nothing from incremental state (1.3 GiB of it in target/debug).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash scripts/install-deps.sh --test
# Disk is finite on CI's machine: say what there is, and what the build took, at the end.
df -h . | awk 'NR == 2 { print "disk: " $4 " free before the build" }'
# Formatting and clippy first: a finding fails the run before the long tests.
bash scripts/lint.sh
# (clippy --all-targets also type-checks the benchmarks, which are run by hand: timings are never
# asserted.)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd plugins && cargo test --locked) 2>&1 | tee -a "$log"
cargo test --workspace --locked 2>&1 | tee -a "$log"
# Coverage-guided fuzzing of every decoder (fuzz/): each target for FUZZ_SECONDS (30 s) on a
# copy of its seed corpus; a crash fails the run. About 3 minutes with the build (a minute
# more on a fresh machine, to install cargo-fuzz).
bash scripts/fuzz.sh 2>&1 | tee -a "$log"
# The guest-kernel scenarios marked ci=yes in tests/guest/scenarios (the zram self-test, ublk
# recovery, a real kernel swapping to tmem over ublk and over NBD in a memory cgroup, and
# `tmem swap on` with the host restarted under live swapping, and over NBD: about 14 minutes under QEMU's
# software emulation) are ignored in the suite above and run here, through
# scripts/guest/run.sh, one QEMU at a time.
cargo test --locked --test all kernel_swap::ci_scenarios -- --ignored --nocapture 2>&1 | tee -a "$log"
# The Debian package (scripts/package.sh: about 15 s, reusing the release binary the guest tests
# built, plus a few minutes on a fresh machine to compile cargo-deb once): installed with dpkg,
# its binary run from /usr/bin, its units verified (systemd-analyze, if there is one), then purged
# so the machine is left as it was.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
timeout 1800 bash scripts/package.sh
$SUDO dpkg -i target/debian/tmem_*.deb
/usr/bin/tmem --version
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify --man=no /lib/systemd/system/tmem.service /lib/systemd/system/tmem-swap.service
fi
$SUDO dpkg --purge tmem
echo "package: target/debian/$(cd target/debian && ls tmem_*.deb) installed, ran and purged"
echo "disk: target/ holds $(du -sh target | cut -f1), plugins/target $(du -sh plugins/target | cut -f1), fuzz/target $(du -sh fuzz/target | cut -f1)"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
