# tmem.sh: a guest swapping to tmem (tests/guest/scenarios; run by /init in a subshell). tmem
# serve runs inside the guest with a [zstd, ram] pool; a block device of that pool — over NBD
# (through the guest's nbd-client, /dev/nbd0) or ublk (/dev/ublkb0), its backing file on the
# guest's disk — is the guest's only swap while swapcheck writes and verifies more memory than
# the guest has. Parameters: transport (nbd|ublk), mib and passes (swapcheck's), cgroup (the
# limit in MiB of the memory cgroup swapcheck runs in; empty: none, the whole guest is under
# pressure), serve_args and pool_args (more words for `tmem serve` and `tmem pool create`),
# chain (the pool's backends, comma-separated; default zstd,ram), lower and tier (the pool gets a
# lower tier `cold` made of the backends in lower, with `--tier cold:TIER`), second (MIB@S: a
# second swapcheck of MIB MiB, outside any cgroup, starts S seconds into the first — memory
# pressure on the whole guest mid-run; its markers are SECOND ..., and `GUEST SECOND EXIT N`).
# Prints the pool's counters every 10 s (`GUEST POOL ...`), and at the end its JSON between
# `GUEST POOL-JSON-BEGIN` and `GUEST POOL-JSON-END` and every counter on one line
# (`GUEST POOL-FINAL name=value ...`).

dir=/mnt/$SCENARIO
rm -rf "$dir"
mkdir -p "$dir"
transport=$(param transport)
# backing=raw: the device's backing store is the guest's second disk, /dev/vdb (a block
# device: an O_DIRECT page write to it allocates nothing); else a file on the first disk.
backing="$dir/swap.backing"
[ "$(param backing)" = raw ] && backing=/dev/vdb
device="" reporter="" server=""
cleanup() {
    [ -n "$reporter" ] && kill "$reporter" 2>/dev/null
    [ -n "$device" ] && swapoff "$device" 2>/dev/null
    [ "$transport" = nbd ] && nbd-client -d /dev/nbd0 >/dev/null 2>&1
    # The device goes with its server (a later scenario in this boot may want its number).
    id=$(tmem pool show swap --json 2>/dev/null | grep -o '"id": *"\(ublk\|nbd\)-[^"]*"' | cut -d'"' -f4)
    [ -n "$id" ] && tmem pool detach swap "$id" >/dev/null 2>&1
    stop_server
}
trap cleanup EXIT

# A userspace swap server must lock its memory, or the kernel swaps the server's own pages out
# through the server and swap stalls: `--mlock` (mlockall). Its state and the device's backing
# file are on the guest's disk, so a page written to the backing file leaves RAM.
# shellcheck disable=SC2046
# alloc_sample=N: the server reports about one I/O-thread allocation in N on the serial line
# (raw return addresses; see tmem_host::memory::alloc_count).
[ -n "$(param alloc_sample)" ] && export TMEM_ALLOC_SAMPLE="$(param alloc_sample)" TMEM_ALLOC_SAMPLE_DIR=-
# The backing store (and the NBD socket) lie outside the data dir: allowed explicitly.
allow="$dir"
[ "$backing" = /dev/vdb ] && allow="$allow,/dev/vdb"
# tls=x509 (nbd): the export is on loopback TCP and needs TLS with a client certificate, the
# certificates run.sh made (/mnt/tls); nbd-client speaks it (GnuTLS) and hands the kernel its
# end of a local proxy.
tls=$(param tls)
tls_args=""
if [ "$tls" = x509 ]; then
    # (The API stays plain HTTP on loopback: no --api-tls.)
    tls_args="--tls-cert /mnt/tls/server.pem --tls-key /mnt/tls/server.key --tls-client-ca /mnt/tls/ca.pem"
elif [ -n "$tls" ]; then
    fail "tls must be x509"
fi
# shellcheck disable=SC2086
serve "$dir/data" --mlock --allow-path "$allow" $tls_args $(args serve_args)
step "tmem serve is up"

# --backend SPEC for each comma-separated spec of $1.
backends() {
    for spec in $(echo "$1" | tr ',' ' '); do printf '%s %s ' --backend "$spec"; done
}
chain=$(param chain)
tier=""
if [ -n "$(param lower)" ]; then
    # shellcheck disable=SC2046
    tmem pool create cold $(backends "$(param lower)") $(args lower_args) >/dev/null || fail "tmem pool create cold"
    tier="--tier cold:$(param tier)"
fi
# shellcheck disable=SC2046,SC2086
tmem pool create swap $(backends "${chain:-zstd,ram}") $tier $(args pool_args) >/dev/null || fail "tmem pool create"
case "$transport" in
    nbd)
        modprobe nbd nbds_max=1 || fail "modprobe nbd"
        if [ "$tls" = x509 ]; then
            tmem pool attach swap --nbd-listen 127.0.0.1:10809 --size 1G --backing "$backing" ||
                fail "tmem pool attach --nbd-listen"
            # A client without a certificate, or without TLS, is turned away.
            nbd-client 127.0.0.1 10809 /dev/nbd0 -block-size 4096 >/dev/null 2>&1 &&
                fail "a plain nbd-client was served by a TLS-only export"
            nbd-client -c /dev/nbd0 >/dev/null 2>&1 && nbd-client -d /dev/nbd0 >/dev/null 2>&1
            nbd-client 127.0.0.1 10809 /dev/nbd0 -block-size 4096 -swap -enable-tls -tlshostname localhost \
                -cacertfile /mnt/tls/ca.pem -certfile /mnt/tls/client.pem -keyfile /mnt/tls/client.key ||
                fail "nbd-client with TLS (X.509)"
            echo "GUEST TLS nbd-client X.509: plain client refused, certificate client connected"
        else
            tmem pool attach swap --nbd-socket "$dir/swap.nbd" --size 1G --backing "$backing" ||
                fail "tmem pool attach --nbd-socket"
            # nbd-client 3.24 asks for the default export (""), hands the socket to the kernel
            # over netlink and exits; `-swap` locks its memory should it stay (ioctl mode).
            nbd-client -unix "$dir/swap.nbd" /dev/nbd0 -block-size 4096 -swap || fail "nbd-client"
        fi
        swap_device=/dev/nbd0
        ;;
    ublk)
        modprobe ublk_drv || fail "modprobe ublk_drv"
        tmem pool attach swap --ublk --ublk-id 0 --size 1G --backing "$backing" ||
            fail "tmem pool attach --ublk"
        swap_device=/dev/ublkb0
        ;;
    *) fail "transport must be nbd or ublk" ;;
esac
step "pool swap serves $swap_device"
mkswap "$swap_device" >/dev/null || fail "mkswap $swap_device"
# Discard freed swap slots (`-d`): the pool drops the pages the kernel no longer needs.
swapon -d "$swap_device" || fail "swapon -d $swap_device"
device=$swap_device
# The server's mappings, to place the addresses of a livelock's stacks (issue 14).
sed 's/^/GUEST MAPS /' "/proc/$server/maps"
# The I/O threads' own counters (ops, heap allocations, page faults), before and after.
io_path() {
    host_get /metrics | grep "^tmem_io_thread_[a-z_]*{role=\"$transport\"}" |
        sed 's/^tmem_io_thread_//; s/_total{role="[a-z]*"} /=/; s/{role="[a-z]*"} /=/' | tr '\n' ' '
}
echo "GUEST IO-PATH-BEFORE $(io_path)"
step "swap on $device: $(grep -E '^(MemTotal|SwapTotal)' /proc/meminfo | tr -s ' \n' ' ')"

# While the workload runs: the pool's main counters and the guest's memory every 10 s.
while sleep 10; do
    pool_line swap
done &
reporter=$!
# With a cgroup, the workload runs in a memory cgroup smaller than the guest's RAM: the kernel
# swaps its pages out while the server still finds free memory for the pages it stores.
# Without one (global pressure), the server's own allocations may enter direct reclaim, which
# waits for swap-out to the very server that is allocating: a livelock (issue 14).
second=$(param second) second_pid=""
if [ -n "$second" ]; then
    (
        sleep "${second#*@}"
        echo "GUEST SECOND START $(memory_line)"
        { swapcheck "${second%@*}" "$(param passes)"; echo "SWAPCHECK EXIT $?"; } |
            while IFS= read -r line; do echo "SECOND${line#SWAPCHECK}"; done
    ) &
    second_pid=$!
fi
limited "$(param cgroup)" swapcheck "$(param mib)" "$(param passes)"
echo "GUEST SWAPCHECK EXIT $?"
[ -n "$second_pid" ] && wait "$second_pid"
echo "GUEST IO-PATH-AFTER $(io_path)"
kill $reporter
reporter=""
echo "GUEST POOL-JSON-BEGIN"
tmem pool show swap --json
echo "GUEST POOL-JSON-END"
echo "GUEST POOL-FINAL $(pool_counters swap)"
[ -n "$(param lower)" ] && echo "GUEST LOWER-FINAL $(pool_counters cold)"
# The memory governor's decisions and what they moved (its counters in /metrics).
echo "GUEST GOVERNOR $(host_get /metrics | grep -E '^tmem_(governor|memory)_' |
    sed 's/^tmem_//; s/_total{decision="\([a-z]*\)"}/_\1/; s/_total / /; s/ /=/' | tr '\n' ' ')"
echo "GUEST BACKING $backing"
