#!/usr/bin/env bash
# Memory per page, from outside: the same fio data (1 GiB of 4 KiB pages, 66% compressible,
# a fixed seed) written
#   - through tmem's NBD device into a [zstd(level 1), ram] pool, then into a second pool
#     [lz4(store_raw), ram] (lz4 keeping incompressible pages raw, as zram keeps them whole):
#     bytes per page beyond the stored bytes = (growth of the host's RSS - pool_total_size -
#     growth of the arena's headroom) / pages; the headroom (memory committed ahead for the
#     next stores) is reported apart;
#   - to zram with lz4 (if /sys/block/zram0 is there, unused, and we are root): bytes per
#     page beyond the compressed bytes = (mem_used_total - compr_data_size) / pages, plus the
#     16 bytes of zram's table entry per page (allocated for the whole disk size);
# and prints them, with the ratio of tmem's overhead to zram's and of tmem-lz4's stored bytes
# per page to zram-lz4's (the same codec on the same data: the goal is within 10%).
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

# measure_pool NAME BACKEND...: writes the pages through an NBD device of a new pool NAME
# with these backends; sets PAGES, STORED_PER_PAGE, OVERHEAD, INDEX_PER_PAGE, HEADROOM_MIB.
measure_pool() {
    local name=$1 backend args=() rss_before headroom_before rss_after pool stored memory headroom_after index
    shift
    for backend in "$@"; do args+=(--backend "$backend"); done
    "$TMEM" pool create "$name" "${args[@]}" >/dev/null
    "$TMEM" pool attach "$name" --nbd-socket "$WORK/$name.sock" --size "$SIZE" --backing "$WORK/$name.img" >/dev/null
    sleep 1
    rss_before=$(rss)
    headroom_before=$(api /api/v1/memory | field "['headroom_bytes']")
    write_pages --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/$name.sock"
    sleep 1
    rss_after=$(rss)
    pool=$(api "/api/v1/pools/$name")
    PAGES=$(echo "$pool" | field "['counters']['stored_pages']")
    stored=$(echo "$pool" | field "['counters']['pool_total_size']")
    memory=$(api /api/v1/memory)
    headroom_after=$(echo "$memory" | field "['headroom_bytes']")
    index=$(echo "$memory" | field "['index_bytes']")
    OVERHEAD=$(python3 -c "print(f'{($rss_after - $rss_before - $stored - ($headroom_after - $headroom_before)) / $PAGES:.1f}')")
    STORED_PER_PAGE=$(python3 -c "print(f'{$stored / $PAGES:.0f}')")
    # The index is the host's, for every pool: this pool's share is its growth.
    INDEX_PER_PAGE=$(python3 -c "print(f'{($index - ${INDEX_BEFORE:-0}) / $PAGES:.1f}')")
    INDEX_BEFORE=$index
    HEADROOM_MIB=$(( headroom_after / 1048576 ))
}

measure_pool mem 'zstd:level=1' ram
tmem_line="tmem [zstd(1), ram]:     $PAGES pages, $STORED_PER_PAGE stored B/page, $OVERHEAD B/page beyond them ($INDEX_PER_PAGE index), headroom $HEADROOM_MIB MiB apart"
tmem_overhead=$OVERHEAD
measure_pool fast 'lz4:on_incompressible=store_raw' ram
lz4_line="tmem [lz4(store_raw), ram]: $PAGES pages, $STORED_PER_PAGE stored B/page, $OVERHEAD B/page beyond them ($INDEX_PER_PAGE index), headroom $HEADROOM_MIB MiB apart"
lz4_stored=$STORED_PER_PAGE

ZRAM=/sys/block/zram0
zram_line="zram lz4: skipped (needs root and an unused $ZRAM)"
ratio_line=""
codec_line=""
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
    codec_line="tmem lz4 / zram lz4 stored bytes per page: $(python3 -c "print(f'{$lz4_stored / $zram_stored:.3f}')")x (compression ratio $(python3 -c "print(f'{4096 / $lz4_stored:.2f}')") against $(python3 -c "print(f'{4096 / $zram_stored:.2f}')"); goal within 10%)"
fi

printf '\n%s of 4 KiB pages, 66%% compressible, the same fio data for each target\n\n' "$SIZE"
echo "$tmem_line"
echo "$lz4_line"
echo "$zram_line"
[ -n "$ratio_line" ] && echo "$ratio_line"
[ -n "$codec_line" ] && echo "$codec_line"
exit 0
