# recover.sh: a ublk device survives its host's restart (tests/guest/scenarios; run by /init in
# a subshell). tmem serve serves a persistent [zstd, sled] pool (its data dir on the guest's disk)
# as /dev/ublkb1; 16 MiB of compressible data are written to the device (into the pool); the
# host is killed (SIGKILL: no clean shutdown), the kernel keeps /dev/ublkb1 (user recovery) and
# a new tmem serve takes the same device over from its catalog; the data read back through
# /dev/ublkb1 must be what was written. Prints `GUEST RECOVER written=SHA read=SHA
# size_sectors=N` and the pool's counters after the restart (`GUEST POOL-AFTER stored_pages=N
# loads=N load_failures=N`).

dir=/mnt/$SCENARIO
rm -rf "$dir"
mkdir -p "$dir"
server=""
cleanup() {
    # The device goes with its server (a later scenario in this boot may want ublk devices).
    id=$(tmem pool show disk --json 2>/dev/null | grep -o '"id": *"ublk-[^"]*"' | cut -d'"' -f4)
    [ -n "$id" ] && tmem pool detach disk "$id" >/dev/null 2>&1
    stop_server
}
trap cleanup EXIT

modprobe ublk_drv || fail "modprobe ublk_drv"
serve "$dir/data" --allow-path "$dir"
step "tmem serve is up"
tmem pool create disk --backend zstd --backend sled+storage >/dev/null || fail "tmem pool create"
tmem pool attach disk --ublk --ublk-id 1 --size 64M --backing "$dir/disk.backing" || fail "tmem pool attach --ublk"
# Compressible and different on every page, so the pool (not the backing file) keeps it.
seq 1 4000000 | head -c 16777216 > "$dir/data.in" || fail "data"
written=$(sha256sum "$dir/data.in" | cut -d' ' -f1)
dd if="$dir/data.in" of=/dev/ublkb1 bs=1M conv=fsync 2>/dev/null || fail "dd to /dev/ublkb1"
step "16 MiB written to /dev/ublkb1 and flushed"

kill -9 $server
wait $server 2>/dev/null
server=""
sleep 1
state=$(cat /sys/block/ublkb1/size 2>/dev/null)
step "host killed; /dev/ublkb1 still there: $([ -b /dev/ublkb1 ] && echo yes || echo no)"
# Another host (another data dir) asking for that device number while the device waits for its
# own host is refused: starting afresh would have deleted the device with its pages.
serve "$dir/other" --allow-path "$dir"
tmem pool create other --backend ram >/dev/null || fail "tmem pool create other"
if out=$(tmem pool attach other --ublk --ublk-id 1 --size 64M --backing "$dir/other.backing" 2>&1); then
    fail "another host took /dev/ublkb1 over: $out"
fi
echo "$out" | grep -q "/dev/ublkb1 exists" || fail "another host asking for /dev/ublkb1 was refused for another reason: $out"
stop_server
step "another host asking for /dev/ublkb1 is refused (ublk_device_exists)"
serve "$dir/data" --allow-path "$dir"
step "tmem serve is up again"
for _ in $(seq 60); do
    tmem pool show disk --json 2>/dev/null | grep -q '"kind": *"ublk"' && break
    sleep 0.5
done
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/ublkb1 of="$dir/data.out" bs=1M count=16 2>/dev/null || fail "dd from /dev/ublkb1"
read=$(sha256sum "$dir/data.out" | cut -d' ' -f1)
echo "GUEST RECOVER written=$written read=$read size_sectors=$state"
# The restarted host's pool: the pages it restored from disk, and the loads that served the read.
echo "GUEST POOL-AFTER $(tmem pool show disk --json | grep -o '"\(loads\|load_failures\|stored_pages\)": *[0-9]*' | tr -d '" ' | tr ':\n' '= ')"
