# swap-restart.sh: live swapping across a host restart (tests/guest/scenarios; run by /init in a
# subshell). `tmem swap on` makes a persistent pool (`zstd,sled` by default: its data dir on the
# guest's disk) the guest's only swap, as /dev/ublkb2; swapcheck writes and verifies more memory
# than the guest has; once the pool holds `kill_mib` MiB of swapped pages, the host is
# killed (SIGKILL: no clean shutdown) — the kernel keeps /dev/ublkb2 and holds its I/O (ublk user
# recovery), so every process touching a swapped page waits — and a new `tmem serve` on the same
# data dir takes the device over from its catalog. The workload goes on and verifies every page:
# the pages the first host stored come back through the second. Then `tmem swap off` (swapoff:
# every page back to the kernel; detach; the pool dropped).
#
# Parameters: mib, passes and cgroup (swapcheck's, as tmem.sh), kill_mib (MiB of pages the pool
# holds when the host is killed), swap_args (more words for `tmem swap on`), serve_args, backing=raw (the
# device's backing store is the raw second disk, /dev/vdb), alloc_sample (as tmem.sh).
# Markers: `GUEST SWAP-ON-AGAIN` (the second `tmem swap on`'s answer), `GUEST SWAP-STATUS ...`
# (`tmem swap status` lines), `GUEST HOST-KILL uptime=S pswpout=N pswpin=N`, `GUEST HOST-BACK
# uptime=S restart_s=S pswpout=N pswpin=N` (the device served again), `GUEST VMSTAT-END pswpout=N
# pswpin=N` (after the workload), `GUEST SWAP-OFF ok|failed`,
# and tmem.sh's `GUEST POOL ...`, `GUEST POOL-FINAL ...`, `GUEST SWAPCHECK EXIT N`.

dir=/mnt/$SCENARIO
rm -rf "$dir"
mkdir -p "$dir"
server="" reporter="" workload=""
cleanup() {
    [ -n "$reporter" ] && kill "$reporter" 2>/dev/null
    [ -n "$workload" ] && kill -9 "$workload" 2>/dev/null
    # The device goes with its server (a later scenario in this boot may want ublk devices).
    [ -n "$server" ] && tmem swap off swap >/dev/null 2>&1
    stop_server
}
trap cleanup EXIT

vmstat() {
    awk -v key="$1" '$1 == key { print $2 }' /proc/vmstat
}

backing=""
allow="$dir"
# (the default backing file, `tmem swap on`'s: DATA_DIR/swap.swap)
if [ "$(param backing)" = raw ]; then
    backing="--backing /dev/vdb"
    allow="$allow,/dev/vdb"
fi
modprobe ublk_drv || fail "modprobe ublk_drv"
# alloc_sample=N: the server reports about one I/O-thread allocation in N on the serial line.
[ -n "$(param alloc_sample)" ] && export TMEM_ALLOC_SAMPLE="$(param alloc_sample)" TMEM_ALLOC_SAMPLE_DIR=-
# shellcheck disable=SC2046
serve "$dir/data" --mlock --allow-path "$allow" $(args serve_args)
step "tmem serve is up"
# shellcheck disable=SC2046,SC2086
on_args="--size 1G --chain zstd,sled --priority 10 --ublk-id 2 $backing $(args swap_args)"
# shellcheck disable=SC2086
tmem swap on $on_args || fail "tmem swap on $on_args"
# shellcheck disable=SC2086
again=$(tmem swap on $on_args 2>&1) || fail "tmem swap on, a second time: $again"
echo "GUEST SWAP-ON-AGAIN $again"
grep -q '^/dev/ublkb2 ' /proc/swaps || fail "/dev/ublkb2 is not in /proc/swaps: $(cat /proc/swaps)"
tmem swap status | sed 's/^/GUEST SWAP-STATUS /'
step "swap on /dev/ublkb2: $(grep -E '^(MemTotal|SwapTotal)' /proc/meminfo | tr -s ' \n' ' ')"

# The pool's counters and the guest's memory every 10 s (nothing while the host is down).
while sleep 10; do
    pool_line swap
done &
reporter=$!

limited "$(param cgroup)" swapcheck "$(param mib)" "$(param passes)" &
workload=$!
# The kill comes once the pool holds kill_mib MiB of swapped pages: those must come back
# through the next host.
stored() {
    pool_counters swap | tr ' ' '\n' | grep '^stored_pages=' | head -n 1 | cut -d= -f2
}
kill_pages=$(($(param kill_mib) * 256))
while :; do
    held=$(stored)
    [ -n "$held" ] && [ "$held" -ge "$kill_pages" ] && break
    kill -0 $workload 2>/dev/null || fail "the workload ended before the pool held $(param kill_mib) MiB"
    sleep 0.5
done
killed=$(uptime_s)
echo "GUEST HOST-KILL uptime=$killed pswpout=$(vmstat pswpout) pswpin=$(vmstat pswpin) stored_pages=$(stored)"
kill -9 $server
wait $server 2>/dev/null
server=""
[ -b /dev/ublkb2 ] || fail "the kernel dropped /dev/ublkb2 when its host died"
step "host killed; /dev/ublkb2 waits for the next one"
# shellcheck disable=SC2046
serve "$dir/data" --mlock --allow-path "$allow" $(args serve_args)
for _ in $(seq 120); do
    tmem pool show swap --json 2>/dev/null | grep -q '"kind": *"ublk"' && break
    sleep 0.25
done
tmem pool show swap --json 2>/dev/null | grep -q '"kind": *"ublk"' || fail "the restarted host did not take /dev/ublkb2 over"
echo "GUEST HOST-BACK uptime=$(uptime_s) restart_s=$(since "$killed") pswpout=$(vmstat pswpout) pswpin=$(vmstat pswpin)"
grep -q '^/dev/ublkb2 ' /proc/swaps || fail "/dev/ublkb2 left /proc/swaps across the restart"

wait $workload
echo "GUEST SWAPCHECK EXIT $?"
echo "GUEST VMSTAT-END pswpout=$(vmstat pswpout) pswpin=$(vmstat pswpin)"
workload=""
kill $reporter
reporter=""
tmem swap status | sed 's/^/GUEST SWAP-STATUS /'
echo "GUEST POOL-JSON-BEGIN"
tmem pool show swap --json
echo "GUEST POOL-JSON-END"
echo "GUEST POOL-FINAL $(pool_counters swap)"
if [ -n "$backing" ]; then echo "GUEST BACKING ${backing#--backing }"; else echo "GUEST BACKING $dir/data/swap.swap"; fi
if off=$(tmem swap off swap 2>&1); then
    echo "GUEST SWAP-OFF ok $off" | tr '\n' ' '
    echo
else
    echo "GUEST SWAP-OFF failed $off" | tr '\n' ' '
    echo
fi
grep -q '^/dev/ublkb2 ' /proc/swaps && fail "/dev/ublkb2 is still swap after tmem swap off"
stop_server
