#!/usr/bin/env bash
# Block-device benchmark: one fio job (4 KiB random writes, then random reads, at queue depth
# 1 and 32, compressible data: --buffer_compress_percentage=66 --refill_buffers) against
#   - tmem NBD over a [zstd, ram] pool,
#   - tmem NBD over a [ram] pool,
#   - nbdkit memory (the baseline the issue asks to beat),
#   - zram with lz4 on /dev/zram0 (if it is there, unused, and we are root; else skipped),
# all in this one run, and prints IOPS with the ratio to nbdkit memory.
#
# Usage: scripts/bench-block.sh            (RUNTIME=10 seconds per job, SIZE=512M per device)
# Needs: fio, nbdkit, python3 (scripts/install-deps.sh --test), and a release build of tmem
# (built here if missing; CARGO_TARGET_DIR is honoured).
set -euo pipefail

RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-512M}
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench-block fio nbdkit python3

start_serve
"$TMEM" pool create zstd-ram --backend zstd --backend ram >/dev/null
"$TMEM" pool create ram --backend ram >/dev/null
"$TMEM" pool attach zstd-ram --nbd-socket "$WORK/zr.sock" --size "$SIZE" --backing "$WORK/zr.img" >/dev/null
"$TMEM" pool attach ram --nbd-socket "$WORK/r.sock" --size "$SIZE" --backing "$WORK/r.img" >/dev/null
nbdkit -f -U "$WORK/kit.sock" memory "$SIZE" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/kit.sock" ] && break; sleep 0.1; done

# fio JSON for one job; fio's nbd engine prints a line before the JSON.
job() { # target-args... -- rw iodepth
    local rw=${@: -2:1} depth=${@: -1}
    fio --name=bench --rw="$rw" --bs=4k --iodepth="$depth" --size="$SIZE" --time_based --runtime="$RUNTIME" \
        --buffer_compress_percentage=66 --refill_buffers --randrepeat=0 --norandommap --output-format=json \
        "${@:1:$#-2}" | sed -n '/^{/,$p'
}
iops() { python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["write"]["iops"]+j["read"]["iops"]))'; }

declare -A RESULT
run_target() { # name fio-target-args...
    local name=$1; shift
    # Fill the device first, so reads read data.
    fio --name=fill --rw=write --bs=1M --iodepth=4 --size="$SIZE" --buffer_compress_percentage=66 --refill_buffers \
        --output-format=json "$@" >/dev/null
    for rw in randwrite randread; do
        for depth in 1 32; do
            RESULT["$name,$rw,$depth"]=$(job "$@" "$rw" "$depth" | iops)
        done
    done
}

TARGETS=("tmem NBD [zstd, ram]" "tmem NBD [ram]" "nbdkit memory")
run_target "tmem NBD [zstd, ram]" --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/zr.sock"
run_target "tmem NBD [ram]" --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/r.sock"
run_target "nbdkit memory" --ioengine=nbd --uri="nbd+unix:///?socket=$WORK/kit.sock"

ZRAM=/sys/block/zram0
zram_note=""
if [ "$(id -u)" -eq 0 ] && [ -w "$ZRAM/disksize" ] && [ "$(cat $ZRAM/disksize)" = "0" ] && ! grep -q zram0 /proc/swaps; then
    echo lz4 > "$ZRAM/comp_algorithm"
    echo "$SIZE" > "$ZRAM/disksize"
    run_target "zram lz4" --ioengine=io_uring --direct=1 --filename=/dev/zram0
    echo 1 > "$ZRAM/reset"
    TARGETS+=("zram lz4")
else
    zram_note="zram: skipped (needs root and an unused $ZRAM)"
fi

printf '\n4 KiB random I/O, IOPS (ratio to nbdkit memory), %ss per job, %s device, 66%% compressible\n\n' "$RUNTIME" "$SIZE"
printf '%-22s %18s %18s %18s %18s\n' target "randwrite QD1" "randwrite QD32" "randread QD1" "randread QD32"
for t in "${TARGETS[@]}"; do
    printf '%-22s' "$t"
    for rw in randwrite randread; do
        for depth in 1 32; do
            v=${RESULT["$t,$rw,$depth"]}
            base=${RESULT["nbdkit memory,$rw,$depth"]}
            printf ' %9s (%5sx)' "$v" "$(python3 -c "print(f'{$v/$base:.2f}')")"
        done
    done
    printf '\n'
done
[ -n "$zram_note" ] && printf '\n%s\n' "$zram_note"
exit 0
