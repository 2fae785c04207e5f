#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of what crosses a process boundary (fuzz/: the
# frontend and peer protocols, the NBD client stream, the REST bodies), with cargo-fuzz
# (libFuzzer) on the nightly toolchain. Installs what it needs when missing (nightly with the
# minimal profile, cargo-fuzz), builds the targets (fuzz/target), then runs each for
# FUZZ_SECONDS (default 30) on a copy of its checked-in seeds (fuzz/corpus/<target>, which
# never grows) and prints one line per target. Any crash fails the run; its input is kept in
# fuzz/artifacts/<target>/ (replay it with `cargo +nightly fuzz run <target> <file>`).
#
# Usage: scripts/fuzz.sh [target...]     (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frontend_frame peer_frame nbd_request rest_bodies)
# A build from nothing gains nothing from incremental state.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

if ! command -v cargo >/dev/null; then
    echo "fuzzing needs a Rust toolchain (cargo, rustup): none was found on PATH" >&2
    exit 1
fi
# cargo-fuzz needs nightly (its -Z sanitizer-coverage flags); the stable toolchain stays the
# default.
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libfuzzer-sys compiles libFuzzer (C++) with the cc crate: any C++ compiler does. Debian's
# g++ provides c++; scripts/install-deps.sh installs clang, whose clang++ does as well.
if ! command -v c++ >/dev/null && [ -z "${CXX:-}" ]; then
    if command -v clang++ >/dev/null; then
        export CXX=clang++
    else
        echo "fuzzing needs a C++ compiler (libFuzzer): run scripts/install-deps.sh (clang)" >&2
        exit 1
    fi
fi

cd fuzz
# No sanitizer: tmem-api has no unsafe code, and AddressSanitizer would cost most of the
# executions a short run has. Debug assertions and overflow checks stay on (cargo-fuzz's
# default), so an arithmetic overflow is a crash.
fuzz=(cargo +nightly fuzz)
build=(--sanitizer none)
mkdir -p corpus-run
started=$SECONDS
if ! "${fuzz[@]}" build "${build[@]}" >corpus-run/build.log 2>&1; then
    cat corpus-run/build.log >&2
    echo "fuzz: the targets do not build" >&2
    exit 1
fi
echo "fuzz: built the targets in $((SECONDS - started))s"

failed=()
for target in "${targets[@]}"; do
    # libFuzzer adds what it finds to its first corpus directory: a copy, never the seeds.
    run="corpus-run/$target"
    rm -rf "$run"
    mkdir -p "$run" "artifacts/$target"
    cp corpus/"$target"/* "$run"/
    seeds=$(ls corpus/"$target" | wc -l)
    log="corpus-run/$target.log"
    if "${fuzz[@]}" run "${build[@]}" "$target" "$run" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    # The last status line says coverage (edges), features and corpus; the final stats, the
    # executions.
    execs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
    echo "fuzz: $target: $status, ${execs:-?} execs in ${seconds}s, ${cov:-no coverage line} (from $seeds seeds)"
    if [ "$status" = FAILED ]; then
        tail -n 40 "$log" >&2
        ls -1 "artifacts/$target" >&2 || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]}: inputs in fuzz/artifacts/ (add each as a regression test in api)" >&2
    exit 1
fi
