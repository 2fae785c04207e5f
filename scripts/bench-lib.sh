# Shared set-up of the bench scripts (sourced, not run): the release tmem, a work dir removed
# on exit with every process the script started, and `tmem serve` on a free loopback port.

# bench_setup NAME TOOL...: goes to the repository, checks the tools are there, builds the
# release tmem (CARGO_TARGET_DIR is honoured) and makes the work dir. Sets TMEM, WORK, PIDS.
bench_setup() {
    local name=$1 tool
    shift
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    TMEM="${CARGO_TARGET_DIR:-target}/release/tmem"
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: $tool is missing (scripts/install-deps.sh --test)" >&2; exit 1; }
    done
    cargo build --release -q -p tmem
    WORK=$(mktemp -d "/tmp/tmem-$name.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# start_serve ARG...: `tmem serve` with its data dir in $WORK/data and these arguments, up and
# answering. Sets PORT, SERVE (its pid), and exports TMEM_SERVER and TMEM_DATA_DIR for the CLI.
start_serve() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    RUST_LOG=warn "$TMEM" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" "$@" 2>"$WORK/serve.log" &
    SERVE=$!
    PIDS+=("$SERVE")
    export TMEM_SERVER="127.0.0.1:$PORT" TMEM_DATA_DIR="$WORK/data"
    for _ in $(seq 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz')" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "tmem serve did not come up: $(cat "$WORK/serve.log")" >&2
    exit 1
}
