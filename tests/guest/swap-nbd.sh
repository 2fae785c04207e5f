# swap-nbd.sh: `tmem swap on` over NBD (tests/guest/scenarios; run by /init in a subshell) — the
# path `tmem swap on` takes where ublk_drv is missing (here asked for with `--transport nbd`):
# an [lz4, ram] pool exported on a Unix socket, connected to /dev/nbdN by the guest's
# nbd-client, mkswap, swapon with discard, as the guest's only swap while swapcheck writes and
# verifies more memory than the guest has (in a memory cgroup); a second `tmem swap on` changes
# nothing; then `tmem swap off` (swapoff, nbd-client -d, detach, the pool dropped).
#
# Parameters: mib, passes and cgroup (swapcheck's, as tmem.sh). Markers: `GUEST SWAP-ON ...`,
# `GUEST SWAP-ON-AGAIN ...`, `GUEST SWAP-STATUS ...`, `GUEST SWAP-OFF ok ...`, and tmem.sh's
# `GUEST POOL ...`, `GUEST POOL-FINAL ...`, `GUEST SWAPCHECK EXIT N`, `GUEST BACKING PATH`.

dir=/mnt/$SCENARIO
rm -rf "$dir"
mkdir -p "$dir"
server="" reporter=""
cleanup() {
    [ -n "$reporter" ] && kill "$reporter" 2>/dev/null
    [ -n "$server" ] && tmem swap off swap >/dev/null 2>&1
    stop_server
}
trap cleanup EXIT

serve "$dir/data" --mlock --allow-path "$dir"
step "tmem serve is up"
on_args="--transport nbd --size 1G --chain lz4,ram --priority 5"
# shellcheck disable=SC2086
out=$(tmem swap on $on_args 2>&1) || fail "tmem swap on $on_args: $out"
echo "GUEST SWAP-ON $(echo "$out" | tr '\n' ' ')"
device=$(awk '$1 ~ /^\/dev\/nbd/ { print $1 }' /proc/swaps)
[ -n "$device" ] || fail "no /dev/nbdN in /proc/swaps: $(cat /proc/swaps)"
# shellcheck disable=SC2086
again=$(tmem swap on $on_args 2>&1) || fail "tmem swap on, a second time: $again"
echo "GUEST SWAP-ON-AGAIN $(echo "$again" | tr '\n' ' ')"
echo "$again" | grep -q "nothing changed" || fail "a second tmem swap on changed something: $again"
tmem swap status | sed 's/^/GUEST SWAP-STATUS /'
step "swap on $device: $(grep -E '^(MemTotal|SwapTotal)' /proc/meminfo | tr -s ' \n' ' ')"

while sleep 10; do
    pool_line swap
done &
reporter=$!
limited "$(param cgroup)" swapcheck "$(param mib)" "$(param passes)"
echo "GUEST SWAPCHECK EXIT $?"
kill $reporter
reporter=""
tmem swap status | sed 's/^/GUEST SWAP-STATUS /'
echo "GUEST POOL-FINAL $(pool_counters swap)"
echo "GUEST BACKING $dir/data/swap.swap"
off=$(tmem swap off swap 2>&1) || fail "tmem swap off: $off"
echo "GUEST SWAP-OFF ok $(echo "$off" | tr '\n' ' ')"
grep -q "^$device " /proc/swaps && fail "$device is still swap after tmem swap off"
tmem pool show swap >/dev/null 2>&1 && fail "tmem swap off left the pool"
stop_server
