# guest.sh: what the guest's /init (tests/guest/init) and every scenario script source, as
# /lib/guest.sh: the scenario's parameters, the markers scripts/guest/run.sh reads from the
# serial console (`GUEST ...` lines), and the helpers the scenarios share.

export PATH=/bin

# uptime: the guest's seconds since boot (/proc/uptime).
uptime_s() {
    cut -d' ' -f1 /proc/uptime
}

# since T: seconds from uptime T to now, one decimal.
since() {
    awk -v from="$1" -v to="$(uptime_s)" 'BEGIN { printf "%.1f", to - from }'
}

# cmdline NAME: the value of `tmem.NAME=VALUE` on the kernel command line (empty when absent).
cmdline() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "tmem.$1="*) echo "${word#*=}"; return ;; esac
    done
}

# param NAME: the running scenario's ($SCENARIO) value of NAME=VALUE in /etc/scenarios (the table
# tests/guest/scenarios, every default filled in by run.sh); empty when absent.
param() {
    for word in $(grep "^$SCENARIO " /etc/scenarios); do
        case "$word" in "$1="*) echo "${word#*=}"; return ;; esac
    done
}

# args NAME: a parameter that holds command-line words, comma-separated in the table.
args() {
    param "$1" | tr ',' ' '
}

# Prints a marker line with the guest's uptime: `GUEST STEP uptime=S what`.
step() {
    echo "GUEST STEP uptime=$(uptime_s) $*"
}

# Ends the running scenario on a failure: `GUEST FAIL what` and the last kernel messages. The
# scenario runs in a subshell of /init, which goes on with the next one.
fail() {
    echo "GUEST FAIL $*"
    dmesg | tail -n 30
    exit 1
}

# limited MAX CMD...: runs CMD in a memory cgroup whose limit is MAX MiB, so it swaps while the
# rest of the guest still finds free memory; with MAX empty, runs CMD as it is.
limited() {
    local max=$1
    shift
    if [ -z "$max" ]; then
        "$@"
        return
    fi
    if [ ! -d /sys/fs/cgroup/limited ]; then
        mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
        echo +memory > /sys/fs/cgroup/cgroup.subtree_control || fail "enable the memory controller"
        mkdir /sys/fs/cgroup/limited
    fi
    echo "${max}M" > /sys/fs/cgroup/limited/memory.max || fail "memory.max ${max}M"
    (echo 0 > /sys/fs/cgroup/limited/cgroup.procs && exec "$@")
}

# serve DIR [ARGS...]: starts `tmem serve --data-dir DIR --listen 127.0.0.1:7411 ARGS` in the
# background ($server is its pid) and waits until it answers. Its compiled-code cache
# (DIR/cache/modules) is seeded from the disk's /mnt/cwasm, where run.sh ships the bundled
# plugins compiled ahead of the scenarios (same binary, same QEMU CPU model: the same engine
# compatibility hash). Prints `GUEST SERVE-UP seconds=S compiled=N` (N: modules this start had
# to compile itself; 0 when the shipped cache served them all).
# The host's API, as serve starts it: plain HTTP on loopback (no scenario gives --api-tls;
# busybox's wget could not reach it over HTTPS — its TLS and OpenSSL share no signature
# algorithm).
API_URL=http://127.0.0.1:7411
# host_get PATH: GET PATH from the host's API (nothing on stderr).
host_get() { wget -q -O - "$API_URL$1" 2>/dev/null; }

serve() {
    local data=$1 before started
    shift
    mkdir -p -m 700 "$data" "$data/cache" "$data/cache/modules"
    cp /mnt/cwasm/*.cwasm "$data/cache/modules/" 2>/dev/null
    before=$(ls "$data/cache/modules" | grep -c '\.cwasm$')
    started=$(uptime_s)
    export TMEM_DATA_DIR="$data" RUST_LOG=${RUST_LOG:-warn} NO_COLOR=1
    tmem serve --data-dir "$data" --listen 127.0.0.1:7411 "$@" &
    server=$!
    for i in $(seq 2400); do
        host_get /healthz >/dev/null && break
        kill -0 $server 2>/dev/null || fail "tmem serve exited"
        # Every 30 s, what the probe says (a silent wait would look like a hung guest).
        [ $((i % 120)) = 0 ] &&
            echo "GUEST STEP still waiting for tmem serve at $API_URL: $(wget -q -O /dev/null "$API_URL/healthz" 2>&1 | tr '\n' ' ')"
        sleep 0.25
    done
    host_get /healthz >/dev/null || fail "tmem serve did not come up"
    echo "GUEST SERVE-UP seconds=$(since "$started") compiled=$(($(ls "$data/cache/modules" | grep -c '\.cwasm$') - before))"
}

# stop_server: SIGTERM to $server, then SIGKILL if it has not exited within 30 s.
stop_server() {
    [ -n "$server" ] || return 0
    kill $server 2>/dev/null
    for _ in $(seq 120); do
        kill -0 $server 2>/dev/null || break
        sleep 0.25
    done
    kill -9 $server 2>/dev/null
    wait $server 2>/dev/null
    server=""
}

# pool_counters POOL: `name=value` for every counter of the pool's JSON (`tmem pool show --json`:
# the pool's own, then its frontends'), one line.
pool_counters() {
    tmem pool show "$1" --json 2>/dev/null | grep -o '"[a-z_]*": *[0-9][0-9]*' | tr -d '" ' | tr ':\n' '= '
}

# pool_line POOL: the pool's main counters (those not 0), the guest's memory and the memory
# governor's target, one `GUEST POOL uptime=S ...` line: what the scenarios print every 10 s
# while their workload runs.
pool_line() {
    echo "GUEST POOL uptime=$(uptime_s) $(pool_counters "$1" | tr ' ' '\n' | grep -E \
        '^(succ_stores|loads|pool_limit_hit|reject_[a-z_]*|failed_stores|load_failures|stored_pages|pool_total_size|to_backing|from_backing|tier_demoted_pages|tier_promoted_pages)=' |
        grep -v '=0$' | tr '\n' ' ')$(memory_line)$(host_get /metrics |
        awk '/^tmem_governor_target_bytes / { printf " governor_target_mib=%d", $2 / 1048576 }')"
}

# memory_line: free memory, swap in use and (booted with psi=1) memory pressure, one line.
memory_line() {
    awk '/^MemFree:/ { free = $2 } /^SwapTotal:/ { st = $2 } /^SwapFree:/ { sf = $2 }
         END { printf "memfree_kib=%d swap_used_kib=%d", free, st - sf }' /proc/meminfo
    [ -r /proc/pressure/memory ] &&
        awk '{ split($2, a, "="); printf " psi_%s_avg10=%s", $1, a[2] }' /proc/pressure/memory
}
