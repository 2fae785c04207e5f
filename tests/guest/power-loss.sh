# power-loss.sh: the durability orderings of a block device over a persistent pool survive a
# power loss, not only a SIGKILL (tests/guest/scenarios; run by /init in a subshell; issue 16).
#
# A SIGKILL leaves the page cache to the kernel, which writes it out later: it cannot show that
# what tmem acknowledged was on the disk. So the host's whole world here — its data dir (the
# catalog, the pool's sled database) and the device's backing file — is on an ext4 file system
# over a dm-flakey device on the guest's raw second disk (/dev/vdb), mounted with a 600 s
# journal commit interval and the kernel's periodic writeback off: nothing reaches the disk
# unless someone syncs it. A power cut is xfstests' `_flakey_drop_and_remount`: the flakey
# table switches to drop_writes (suspended without freezing the file system), so every write
# from then on is silently dropped, the host is SIGKILLed (the ublk device waits for its
# recovery), the file system is unmounted (its dirty page cache "written" into the void), the
# table lets writes through again and the file system is mounted again: the journal replays,
# and the disk is what it was at the cut. A new `tmem serve` on the same data dir takes the
# ublk device over (user recovery) and every page is read back with O_DIRECT and compared with
# what the kernel had acknowledged before the cut (a flush: `conv=fsync`).
#
# The device: a persistent [zstd, sled] pool (sync durability) of at most 2048 pages as
# /dev/ublkb3, 32 MiB (8192 pages), its backing file on the flakey file system: so most
# stores are refused and go to the backing file. Two rounds, each ending in a power cut:
#   1. 32 MiB written (three pages in four refused by the pool: to the backing file); with
#      exclusive gets, 2 MiB of pool pages read (each durable in the file before it leaves the
#      pool);
#      the pool shrunk to 1024 pages (take-backs, same order); 4 MiB overwritten across pool
#      and file pages (a pool page's new version durable in the file before the store); 1 MiB
#      discarded; a flush; the cut with nothing in flight;
#   2. exclusive gets on, a reader of the whole device and a shrink to 0 pages running: the cut
#      lands in the middle of pages moving out of the pool (reads change no data, so every
#      page must still read as acknowledged).
# Before each cut a canary file is written without fsync: it must be gone after the remount
# (the cut did drop unflushed writes, so the test could fail).
#
# Markers: `GUEST POWER-BEFORE round=N ...` (the device's counters before the cut),
# `GUEST POWER-FILES round=N ...` (the sizes of the catalog's and the pool's files, before the
# cut and after the remount), `GUEST POWER-CUT round=N uptime=S`, `GUEST POWER-VERIFY round=N
# acknowledged=SHA before=SHA read=SHA pages=N differ=N zeros=N stale=N eio=N first=P lost=N
# canary=gone|kept restart_s=S`: before is the device read just before the cut, read the device
# read after the restart; pages to first are pagecmp's (tests/guest/pagecmp.c: the pages that
# read otherwise than acknowledged, as zeros or as other data, those that failed with EIO, the
# first page of them); lost the device's lost_pages (the pages tmem answers with EIO).
#
# What dm-flakey does not model: a disk's volatile write cache. An O_DIRECT write that
# completed is on its disk, fdatasync or not, so the backing file's fdatasyncs (it is written
# with O_DIRECT) are not what this checks; what is checked is that nothing acknowledged depends
# on the page cache or an uncommitted journal (the pool's database, the catalog, the backing
# file's reservation), and the orderings with the cut landing while pages leave the pool.

dir=/mnt/$SCENARIO
fs=/flakey
dev=/dev/mapper/flakey
id=3
ublk=/dev/ublkb$id
mib=32
pages=$((mib * 256))
rm -rf "$dir"
mkdir -p "$dir" "$fs"
server=""
writeback=$(cat /proc/sys/vm/dirty_writeback_centisecs)
expire=$(cat /proc/sys/vm/dirty_expire_centisecs)
cleanup() {
    # The device goes with its server; the file system and the flakey device go too.
    if [ -n "$server" ]; then
        attachment=$(tmem pool show disk --json 2>/dev/null | grep -o '"id": *"ublk-[^"]*"' | cut -d'"' -f4)
        [ -n "$attachment" ] && tmem pool detach disk "$attachment" >/dev/null 2>&1
    fi
    stop_server
    umount "$fs" 2>/dev/null
    dmsetup remove flakey 2>/dev/null
    echo "$writeback" > /proc/sys/vm/dirty_writeback_centisecs
    echo "$expire" > /proc/sys/vm/dirty_expire_centisecs
}
trap cleanup EXIT

# No udev in the guest: libdevmapper makes /dev/mapper/flakey itself and waits for no one.
export DM_DISABLE_UDEV=1
modprobe dm_flakey || fail "modprobe dm_flakey"
modprobe ublk_drv || fail "modprobe ublk_drv"
sectors=$(cat /sys/block/vdb/size)
up="0 $sectors flakey /dev/vdb 0 3600 0"
drop="0 $sectors flakey /dev/vdb 0 0 3600 1 drop_writes"
dmsetup create flakey --table "$up" || fail "dmsetup create flakey"
[ -b $dev ] || dmsetup mknodes flakey
[ -b $dev ] || fail "no $dev after dmsetup create"
mkfs.ext4 -q -F -t ext4 -N 1024 -E lazy_itable_init=0,lazy_journal_init=1 $dev || fail "mkfs.ext4 $dev"
# Nothing is written back unless synced: the journal commits every 600 s (or on an fsync), and
# the kernel's periodic writeback is off.
mount_fs() {
    mount -t ext4 -o noatime,lazytime,commit=600 $dev "$fs"
}
mount_fs || fail "mount $dev"
echo 0 > /proc/sys/vm/dirty_writeback_centisecs
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
step "dm-flakey over /dev/vdb ($sectors sectors), ext4 on it at $fs"

# Starts the host on the flakey file system; `GUEST SERVE-UP` as every scenario.
serve_here() {
    serve "$fs/data" --mlock --allow-path "$fs"
}
serve_here
step "tmem serve is up"
tmem pool create disk --backend zstd --backend sled+storage --max-pages 2048 >/dev/null || fail "tmem pool create"
tmem pool attach disk --ublk --ublk-id $id --size ${mib}M --backing "$fs/disk.backing" ||
    fail "tmem pool attach --ublk"
[ -b $ublk ] || fail "no $ublk"

# device_counters: the ublk device's counters (reads, to_backing, exclusive_to_backing,
# taken_back, pool_pages, backing_pages, lost_pages...) and the pool's stored_pages, one line.
device_counters() {
    pool_counters disk | tr ' ' '\n' | grep -E \
        '^(stored_pages|succ_stores|pool_limit_hit|to_backing|from_backing|exclusive_to_backing|taken_back|pool_pages|backing_pages|zero_pages|lost_pages|flushes|discards|errors)=' |
        tr '\n' ' '
}

# The data: compressible, different on every page (the pool takes what it has room for).
expected=$dir/expected.img
seq 1 5000000 | head -c $((mib << 20)) > "$expected" || fail "the data"
flush_device() {
    dd if=/dev/null of=$ublk conv=notrunc,fsync 2>/dev/null
}

# ---- Round 1: every ordering, then a cut with nothing in flight --------------------------------
dd if="$expected" of=$ublk bs=1M oflag=direct conv=notrunc,fsync 2>/dev/null || fail "dd to $ublk"
step "$mib MiB written and flushed: $(device_counters)"
# Exclusive reads of pool pages (pages 0-511 are the pool's: it took the first pages written).
tmem pool set disk --exclusive-gets true >/dev/null || fail "tmem pool set --exclusive-gets true"
dd if=$ublk of=/dev/null bs=1M count=2 iflag=direct 2>/dev/null || fail "exclusive reads"
tmem pool set disk --exclusive-gets false >/dev/null || fail "tmem pool set --exclusive-gets false"
step "2 MiB read with exclusive gets: $(device_counters)"
tmem pool shrink disk --target-pages 1024 >/dev/null || fail "tmem pool shrink"
step "pool shrunk to 1024 pages: $(device_counters)"
# 4 MiB overwritten at 6 MiB: pages 1536-2559, the pool's and the backing file's.
seq 7000000 8000000 | head -c $((4 << 20)) > "$dir/over.img" || fail "the second data"
dd if="$dir/over.img" of=$ublk bs=1M seek=6 oflag=direct conv=notrunc,fsync 2>/dev/null || fail "overwrite"
dd if="$dir/over.img" of="$expected" bs=1M seek=6 conv=notrunc 2>/dev/null || fail "overwrite the expected data"
# 1 MiB discarded at 16 MiB (durable at the flush after it): it reads as zeros.
blkdiscard -o $((16 << 20)) -l $((1 << 20)) $ublk || fail "blkdiscard"
dd if=/dev/zero of="$expected" bs=1M seek=16 count=1 conv=notrunc 2>/dev/null || fail "discard the expected data"
flush_device || fail "flush $ublk"
step "4 MiB overwritten, 1 MiB discarded, flushed: $(device_counters)"

# power_cut ROUND: the power cut, then the file system mounted again as the disk was at the cut.
power_cut() {
    local acknowledged before
    acknowledged=$(sha256sum "$expected" | cut -d' ' -f1)
    echo "GUEST POWER-BEFORE round=$1 uptime=$(uptime_s) $(device_counters)"
    echo "GUEST POWER-FILES round=$1 before the cut: $(cd "$fs/data" && ls -lR catalog* pools 2>&1 | awk 'NF >= 9 { printf "%s=%s ", $9, $5 } /:$/ { printf "%s ", $0 }')"
    # The canary: written, never synced.
    echo "power-loss canary, round $1" > "$fs/canary"
    dmsetup suspend --nolockfs flakey && dmsetup load flakey --table "$drop" && dmsetup resume flakey ||
        fail "dmsetup: drop_writes"
    echo "GUEST POWER-CUT round=$1 uptime=$(uptime_s)"
    kill -9 $server
    wait $server 2>/dev/null
    server=""
    umount "$fs" || fail "umount $fs after the cut: $(grep flakey /proc/mounts)"
    dmsetup suspend --nolockfs flakey && dmsetup load flakey --table "$up" && dmsetup resume flakey ||
        fail "dmsetup: writes allowed again"
    echo 3 > /proc/sys/vm/drop_caches
    mount_fs || fail "mount $dev after the cut"
    echo "GUEST POWER-FILES round=$1 after the cut: $(cd "$fs/data" && ls -lR catalog* pools 2>&1 | awk 'NF >= 9 { printf "%s=%s ", $9, $5 } /:$/ { printf "%s ", $0 }')"
    dmesg | grep -E 'EXT4-fs \(dm-0\)' | tail -n 2
    canary=kept
    [ -s "$fs/canary" ] || canary=gone
    echo "$acknowledged" > "$dir/acknowledged.$1"
}

# restart_and_verify ROUND BEFORE_SHA: the next host takes the device over; every page read
# back and compared.
restart_and_verify() {
    local started acknowledged read compared restart_s lost
    acknowledged=$(cat "$dir/acknowledged.$1")
    started=$(uptime_s)
    serve_here
    for _ in $(seq 120); do
        tmem pool show disk --json 2>/dev/null | grep -q '"kind": *"ublk"' && break
        sleep 0.5
    done
    restart_s=$(since "$started")
    # (a device no host took over would hold every read forever)
    tmem pool show disk --json 2>/dev/null | grep -q '"kind": *"ublk"' ||
        fail "round $1: the restarted host did not take $ublk over in $restart_s s: $(tmem pool ls 2>&1 | tr '\n' ' ')"
    step "tmem serve is up again, $ublk served ($restart_s s): $(device_counters)"
    echo 3 > /proc/sys/vm/drop_caches
    # Every page with O_DIRECT, compared with the acknowledged data (pagecmp: differ, zeros,
    # stale, eio, first), and the sha256 of what was read.
    compared=$(pagecmp $ublk "$expected" "$dir/read.img") || fail "pagecmp $ublk"
    read=$(sha256sum "$dir/read.img" | cut -d' ' -f1)
    lost=$(pool_counters disk | tr ' ' '\n' | grep '^lost_pages=' | cut -d= -f2)
    echo "GUEST POWER-VERIFY round=$1 acknowledged=$acknowledged before=$2 read=$read $compared lost=${lost:-0} canary=$canary restart_s=$restart_s"
}

before=$(dd if=$ublk bs=1M count=$mib iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
power_cut 1
restart_and_verify 1 "$before"

# ---- Round 2: the cut in the middle of pages leaving the pool ---------------------------------
before=$(dd if=$ublk bs=1M count=$mib iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
tmem pool set disk --exclusive-gets true >/dev/null || fail "tmem pool set --exclusive-gets true"
moved_before=$(device_counters)
dd if=$ublk of=/dev/null bs=64k iflag=direct 2>/dev/null &
reader=$!
tmem pool shrink disk --target-pages 0 >/dev/null 2>&1 &
shrinker=$!
sleep 2
step "reads with exclusive gets and a shrink running (before them: $moved_before)"
power_cut 2
kill $shrinker 2>/dev/null
restart_and_verify 2 "$before"
# The reader held a request across the restart (reissued to the new host), or had finished.
wait $reader 2>/dev/null
wait $shrinker 2>/dev/null
step "round 2 done: $(device_counters)"
