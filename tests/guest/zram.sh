# zram.sh: the harness's self-test (tests/guest/scenarios; run by /init in a subshell): the
# guest's only swap is zram; swapcheck writes and verifies more memory than the guest has.
# Parameters: mib and passes (swapcheck's). Prints zram's mm_stat and its block-layer counters
# (`/sys/block/zram0/stat`, between `GUEST ZRAM stat-BEGIN` and `GUEST ZRAM stat-END`).

cleanup() {
    swapoff /dev/zram0 2>/dev/null
    [ -w /sys/block/zram0/reset ] && echo 1 > /sys/block/zram0/reset
}
trap cleanup EXIT

modprobe zram num_devices=1 || fail "modprobe zram"
echo lz4 > /sys/block/zram0/comp_algorithm || fail "zram comp_algorithm lz4"
echo 1G > /sys/block/zram0/disksize || fail "zram disksize"
mkswap /dev/zram0 >/dev/null || fail "mkswap /dev/zram0"
swapon /dev/zram0 || fail "swapon /dev/zram0"
step "swap on zram: $(grep -E '^(MemTotal|SwapTotal)' /proc/meminfo | tr -s ' \n' ' ')"

limited "$(param cgroup)" swapcheck "$(param mib)" "$(param passes)"
echo "GUEST SWAPCHECK EXIT $?"
echo "GUEST ZRAM mm_stat $(cat /sys/block/zram0/mm_stat)"
echo "GUEST ZRAM stat-BEGIN"
cat /sys/block/zram0/stat
echo "GUEST ZRAM stat-END"
