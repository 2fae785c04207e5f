#!/usr/bin/env bash
# Memory per page, from outside: the same fio data (1 GiB of 4 KiB pages, 66% compressible,
# a fixed seed) written
#   - through tmem's NBD device into a [zstd(level 1), ram] pool: bytes per page beyond the
#     stored bytes = (growth of the host's RSS - pool_total_size - growth of the arena's
#     headroom) / pages; the headroom (memory committed ahead for the next stores) is
#     reported apart;
#   - to zram with lz4 (if /sys/block/zram0 is there, unused, and we are root): bytes per
#     page beyond the compressed bytes = (mem_used_total - compr_data_size) / pages, plus the
#     16 bytes of zram's table entry per page (allocated for the whole disk size);
# and prints both, with their ratio.
#
# Usage: scripts/bench-memory.sh            (SIZE=1G)
# Needs: fio, python3 (scripts/install-deps.sh --test), and a release build of tmem (built
# here if missing; CARGO_TARGET_DIR is honoured).
set -euo pipefail

SIZE=${SIZE:-1G}
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-memory fio python3

# One fio pass writing SIZE sequentially: the same bytes whatever the target.
write_pages() { # fio-target-args...
    fio --name=fill --rw=write --bs=4k --iodepth=8 --size="$SIZE" --buffer_compress_percentage=66 \
        --buffer_compress_chunk=4k --refill_buffers --randseed=20261130 --output-format=json "$@" >/dev/null
}

start_serve --memory-limit none
TOKEN=$(cat "$WORK/data/token")
api() { # path
    python3 -c "import json,sys,urllib.request; r=urllib.request.Request('http://127.0.0.1:$PORT$1', headers={'Authorization': 'Bearer $TOKEN'}); print(json.dumps(json.load(urllib.request.urlopen(r))))"
}
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$SERVE/status"; }
field() { python3 -c "import json,sys; j=json.load(sys.stdin); print(eval('j' + sys.argv[1]))" "$1"; }

"$TMEM" pool create mem --backend 'zstd:level=1' --backend ram >/dev/null
"$TMEM" pool attach mem --nbd-socket "$WORK/m.sock" --size "$SIZE" --backing "$WORK/m.img" >/dev/null
sleep 1
rss_before=$(rss)
headroom_before=$(api /api/v1/memory | field "['headroom_bytes']")
write_pages --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/m.sock"
sleep 1
rss_after=$(rss)
pool=$(api /api/v1/pools/mem)
pages=$(echo "$pool" | field "['counters']['stored_pages']")
stored=$(echo "$pool" | field "['counters']['pool_total_size']")
memory=$(api /api/v1/memory)
headroom_after=$(echo "$memory" | field "['headroom_bytes']")
index=$(echo "$memory" | field "['index_bytes']")
tmem_overhead=$(python3 -c "print(f'{($rss_after - $rss_before - $stored - ($headroom_after - $headroom_before)) / $pages:.1f}')")
tmem_stored=$(python3 -c "print(f'{$stored / $pages:.0f}')")
tmem_index=$(python3 -c "print(f'{$index / $pages:.1f}')")

ZRAM=/sys/block/zram0
zram_line="zram lz4: skipped (needs root and an unused $ZRAM)"
ratio_line=""
if [ "$(id -u)" -eq 0 ] && [ -w "$ZRAM/disksize" ] && [ "$(cat $ZRAM/disksize)" = "0" ] && ! grep -q zram0 /proc/swaps; then
    echo lz4 > "$ZRAM/comp_algorithm"
    echo "$SIZE" > "$ZRAM/disksize"
    write_pages --ioengine=psync --direct=1 --filename=/dev/zram0
    # mm_stat: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max
    #          same_pages pages_compacted huge_pages ...
    read -r orig compr used _ _ same _ < "$ZRAM/mm_stat"
    zpages=$(( orig / 4096 ))
    echo 1 > "$ZRAM/reset"
    zram_overhead=$(python3 -c "print(f'{($used - $compr) / $zpages + 16:.1f}')")
    zram_stored=$(python3 -c "print(f'{$compr / $zpages:.0f}')")
    zram_line="zram lz4:               $zpages pages ($same same-filled), $zram_stored stored B/page, $zram_overhead B/page beyond them ($(python3 -c "print(f'{($used - $compr) / $zpages:.1f}')") zsmalloc + 16 table)"
    ratio_line="tmem / zram overhead per page: $(python3 -c "print(f'{$tmem_overhead / $zram_overhead:.2f}')")x"
fi

printf '\n%s of 4 KiB pages, 66%% compressible, the same fio data for each target\n\n' "$SIZE"
echo "tmem [zstd(1), ram]:     $pages pages, $tmem_stored stored B/page, $tmem_overhead B/page beyond them ($tmem_index index), headroom $(( headroom_after / 1048576 )) MiB apart"
echo "$zram_line"
[ -n "$ratio_line" ] && echo "$ratio_line"
exit 0
