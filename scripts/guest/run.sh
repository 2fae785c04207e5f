#!/usr/bin/env bash
# run.sh: boots guest-kernel scenarios under QEMU and checks them — by hand, in CI
# (scripts/test.sh, through tests/all/kernel_swap.rs) and for each test of kernel_swap.rs. A
# scenario is one line of tests/guest/scenarios (its keys are documented there).
#
#   run.sh SCENARIO...            runs these, in order
#   run.sh --ci | --all           every scenario marked ci=yes | every scenario, in table order
#   run.sh --list                 the scenarios, with their ci= mark
#   run.sh --check SCENARIO LOG [KEY=VALUE...]
#                                 checks a saved serial log of SCENARIO (prints its RESULT line),
#                                 with these keys of the table changed
#
#   --separate       one boot per scenario (else neighbours marked share=yes that need the same
#                    machine share one boot)
#   --tmem PATH      run this tmem binary in the guest instead of building the release one
#   --no-precompile  ship no precompiled plugin code: each `tmem serve` in the guest compiles
#   --keep-disk      keep the guest's disk image (TARGET/tmp/guest/BOOT.disk.img)
#   --verbose        every serial line on stderr (else the markers and kernel warnings)
#
# Builds what it needs, and nothing else: the release `tmem` (cargo build --release), swapcheck
# and pagecmp (gcc -static), the kernel (scripts/guest/fetch-kernel.sh, cached), one initramfs per boot
# (scripts/guest/build-initramfs.sh) and one disk per boot: a sparse raw image (4 GiB,
# TMEM_GUEST_DISK_SIZE) made ext4 by mkfs.ext4, attached as virtio-blk and mounted on /mnt in
# the guest, holding the binaries that need shared libraries, the plugins' compiled code and,
# at run time, each scenario's data dir and backing files. What it runs on needs
# scripts/install-deps.sh --test. QEMU is $QEMU (default qemu-system-x86_64).
#
# The bundled plugins are compiled once per binary (and QEMU and kernel) by a `tmem serve` start
# in the first boot that needs it, before its scenarios (`tmem.precompile=1`; same binary, same
# engine settings, same QEMU CPU model: the same compatibility hash, which covers the CPU
# features — the host's own, AVX-512 here, are not QEMU TCG's). run.sh keeps that code
# (TARGET/tmp/guest/cwasm, read from the disk image with debugfs) and ships it on every later
# disk, so the guest's `tmem serve` starts from its cache.
#
# Progress goes to stderr; each scenario ends with one line on stdout,
#   RESULT ok: N pages verified, pswpout X, pswpin Y, no cgroup|cgroup M MiB, ... [SCENARIO]
#   RESULT failed: why [SCENARIO]
# and run.sh exits 0 only when every scenario passed. Artifacts: the serial log of each boot,
# each line stamped with seconds since QEMU started, TARGET/tmp/guest/BOOT.serial.log (BOOT: the
# scenarios' names joined by +). A guest that prints nothing for a scenario's silence= seconds
# gets sysrq w, l, m and t over the serial line (its blocked tasks' and CPUs' stacks, its
# memory, every task's stack)
# before QEMU is killed; a task blocked for 60 s panics the guest after printing every stack.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "$0")/../.." && pwd)
table=$repo/tests/guest/scenarios
qemu=${QEMU:-qemu-system-x86_64}
results=0 failures=0

say() { echo "run.sh: $*" >&2; }
# A failure before any scenario could run: the one RESULT line, exit 1.
die() {
    echo "RESULT failed: $*"
    results=1
    exit 1
}
qemu_pid=""
trap '[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null
      [ "$results" -gt 0 ] || echo "RESULT failed: run.sh stopped before a scenario ran (see above)"' EXIT
trap 'exit 130' INT TERM

# The table: S[NAME.KEY]=VALUE, with the defaults below; names in table order.
declare -A S=()
declare -A DEFAULTS=(
    [memory]=512 [cpus]=2 [mib]=0 [passes]=2 [min_ratio]=1 [ci]=no [share]=no [timeout]=900 [silence]=120
)
names=()
while read -r name rest; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    names+=("$name")
    for key in "${!DEFAULTS[@]}"; do S[$name.$key]=${DEFAULTS[$key]}; done
    for word in $rest; do S[$name.${word%%=*}]=${word#*=}; done
    [ -n "${S[$name.script]:-}" ] || die "tests/guest/scenarios: $name has no script="
done < "$table"
get() { echo "${S[$1.$2]:-}"; }
known() { [ -n "${S[$1.script]:-}" ]; }
# The table as the guest reads it (/etc/scenarios): every key of every scenario, defaults filled in.
resolved_table() {
    local name key
    for name in "${names[@]}"; do
        printf '%s' "$name"
        for key in "${!S[@]}"; do
            [[ "$key" == "$name".* ]] && printf ' %s=%s' "${key#"$name".}" "${S[$key]}"
        done
        echo
    done
}

# ---- Checking a serial log ------------------------------------------------------------------

# check SCENARIO LOG: the RESULT line of SCENARIO from the serial log LOG (a boot's log, with or
# without the `[seconds] ` stamps); returns 1 when it failed. Every check the scenario's script
# calls for, from its markers alone, so a saved log can be checked again.
check() {
    local name=$1 log=$2
    awk -v name="$name" -v script="$(get "$name" script)" -v mib="$(get "$name" mib)" \
        -v passes="$(get "$name" passes)" -v min_ratio="$(get "$name" min_ratio)" \
        -v cgroup="$(get "$name" cgroup)" -v expect="$(get "$name" expect)" -v second="$(get "$name" second)" -v tls="$(get "$name" tls)" \
        -v logfile="$log" '
    # kv(text, key): the value of key=value in text ("" when absent).
    function kv(text, key,    n, i, words) {
        n = split(text, words, " ")
        for (i = 1; i <= n; i++) if (index(words[i], key "=") == 1) return substr(words[i], length(key) + 2)
        return ""
    }
    function secs(s) { return sprintf("%.1f s", s) }
    function failed(why) { print "RESULT failed: " why " [" name "]"; bad = 1; exit 1 }
    {
        ts = -1; line = $0
        if (match($0, /^\[ *[0-9]+\.[0-9]+\] /)) { ts = substr($0, 2, RLENGTH - 3) + 0; line = substr($0, RLENGTH + 1) }
        if (line ~ /GUEST INIT / && boot == "") boot = ts
        if (index(line, "HARNESS ") == 1) harness = substr(line, 9)
        if (!began) {
            if (index(line, "GUEST SCENARIO BEGIN name=" name " ")) { began = 1; begin_ts = ts }
            else if (line ~ /GUEST SCENARIO BEGIN /) last_other = kv(line, "name")
            else if (line ~ /GUEST FAIL/ && early_fail == "") early_fail = line
            next
        }
        if (ended) next
        if (index(line, "GUEST SCENARIO END name=" name " ")) { ended = 1; end_ts = ts; status = kv(line, "status"); next }
        if (line ~ /blocked for more than [0-9]+ seconds/ && hung == "") { hung = line; sub(/^.*INFO: /, "", hung); hung_ts = ts }
        # The stacks a hung task or a sysrq prints: the tasks in D state, and what runs on the CPUs.
        if (line ~ /sysrq: / && sysrq_ts == "") sysrq_ts = ts
        if (sysrq_ts == "" && hung == "") quiet_ts = ts
        if (line ~ /task:.* state:D/) {
            task = substr(line, index(line, "task:") + 5); sub(/ +state:D.*$/, "", task)
            if (index(blocked ", ", " " task ", ") == 0 && index(blocked ", ", task ", ") != 1) blocked = blocked (blocked == "" ? "" : ", ") task
        }
        if (line ~ /CPU: [0-9]+ UID: [0-9]+ PID: [0-9]+ Comm: / && line !~ /Comm: swapper/) {
            task = substr(line, index(line, "Comm: ") + 6); sub(/ +(Not tainted|Tainted).*$/, "", task)
            if (index(", " running ", ", ", " task ", ") == 0) running = running (running == "" ? "" : ", ") task
        }
        if (line ~ /Kernel panic/ && panic == "") { panic = line; sub(/^.*Kernel panic - /, "", panic) }
        if (line ~ /Out of memory: Killed process/) { victim = line; sub(/^.*Killed process [0-9]+ \(/, "", victim); sub(/\).*$/, "", victim); oom = oom (oom == "" ? "" : ", ") victim }
        if (line ~ /^GUEST FAIL/ && guest_fail == "") guest_fail = substr(line, 12)
        if (line ~ /^SWAPCHECK FAIL/ && swap_fail == "") swap_fail = line
        if (line ~ /^SWAPCHECK START/) start_ts = ts
        if (line ~ /^SWAPCHECK (PASS|PROGRESS)/) { last_pass = line; sub(/^SWAPCHECK [A-Z]+ /, "", last_pass) }
        if (line ~ /^SWAPCHECK OK/) { ok_line = line; ok_ts = ts }
        if (line ~ /^GUEST SWAPCHECK EXIT/) exit_code = substr(line, 22)
        # The second workload (second=MIB@S): the markers of its swapcheck, renamed SECOND.
        if (line ~ /^SECOND FAIL/ && second_fail == "") second_fail = line
        if (line ~ /^SECOND OK/) second_ok = line
        if (line ~ /^SECOND EXIT/) second_exit = substr(line, 13)
        if (line ~ /^GUEST SECOND START/) second_started = 1
        if (line ~ /^GUEST GOVERNOR/) governor = line
        if (line ~ /^GUEST LOWER-FINAL/) lower = line
        if (line ~ /^GUEST POOL / && (t = kv(line, "governor_target_mib")) != "") {
            if (target_min == "" || t + 0 < target_min + 0) target_min = t
            if (target_max == "" || t + 0 > target_max + 0) target_max = t
        }
        if (line ~ /^GUEST SERVE-UP/) { serves++; if (serves == 1) { serve_s = kv(line, "seconds"); compiled = kv(line, "compiled") } else restart_s = kv(line, "seconds") }
        if (line ~ /^GUEST POOL-FINAL/) pool = line
        if (line ~ /^GUEST IO-PATH-BEFORE/) io_before = line
        if (line ~ /^GUEST IO-PATH-AFTER/) io_after = line
        if (line ~ /^GUEST BACKING /) backing = (substr(line, 15) ~ /^\/dev\//) ? "a block device, " substr(line, 15) : "a file on the guest'"'"'s disk"
        if (zram_next) { zram_stat = line; zram_next = 0 }
        if (line ~ /^GUEST ZRAM stat-BEGIN/) zram_next = 1
        if (line ~ /^GUEST RECOVER/) recover = line
        if (line ~ /^GUEST POOL-AFTER/) after = line
        if (line ~ /still there: yes/) kept = 1
        if (line ~ /^GUEST HOST-KILL /) host_kill = line
        if (line ~ /^GUEST HOST-BACK /) host_back = line
        if (line ~ /^GUEST SWAP-ON-AGAIN /) on_again = line
        if (line ~ /^GUEST SWAP-OFF /) swap_off = line
        if (line ~ /^GUEST TLS /) tls_line = line
        if (line ~ /^GUEST VMSTAT-END /) vmstat_end = line
        # power-loss.sh: the counters before each cut, each cut, each verification after it.
        if (line ~ /^GUEST POWER-BEFORE /) power_before[kv(line, "round")] = line
        if (line ~ /^GUEST POWER-CUT /) cuts++
        if (line ~ /^GUEST POWER-VERIFY /) { rounds++; verify[rounds] = line }
    }
    END {
        if (bad) exit 1
        where = "serial log " logfile
        if (!began) {
            why = harness != "" ? harness : early_fail != "" ? early_fail : "the boot ended before it"
            if (last_other != "") why = why " (the boot ended in " last_other ")"
            failed("did not run: " why)
        }
        # How far the workload got, and what the stacks show.
        into = ""; stacks = ""
        if (start_ts != "" && start_ts >= 0) into = secs((hung != "" ? hung_ts : quiet_ts) - start_ts) " into the workload" (last_pass != "" ? " (last progress: " last_pass ")" : "")
        if (blocked != "") stacks = "; in D state: " blocked
        if (running != "") stacks = stacks "; on the CPUs: " running
        if (hung != "") failed("livelock/hung task: " hung (into == "" ? "" : ", " into) stacks "; every task'"'"'s stack in " where)
        if (harness ~ /printed nothing/) failed("livelock/hung task: " harness (into == "" ? "" : ", the last line " into) stacks "; stacks (sysrq w, l, m, t) in " where)
        if (harness != "") failed("timeout: " harness (into == "" ? "" : ", " into) stacks "; " where)
        if (panic != "") failed("kernel panic: " panic "; " where)
        if (!ended) failed("the guest stopped in the scenario; " where)
        if (guest_fail != "") failed(guest_fail)
        if (swap_fail != "") failed("corrupted data: " swap_fail)
        if (oom != "") failed("OOM kill of " oom)
        if (script == "recover.sh") {
            if (recover == "") failed("no GUEST RECOVER line")
            written = kv(recover, "written"); read = kv(recover, "read")
            if (length(written) != 64) failed("no sha256 of the written data")
            if (read != written) failed("the data read back through the recovered device differs from what was written before the host was killed")
            if (!kept) failed("the kernel did not keep the device while its host was down")
            restored = kv(after, "stored_pages") + 0; loads = kv(after, "loads") + 0
            if (restored < 4096) failed("the restarted host restored " restored " of the device'"'"'s 4096 pages from the pool'"'"'s disk")
            if (loads < 4096) failed("the read after the restart made " loads " loads (4096 expected)")
            if (kv(after, "load_failures") != "0") failed("load_failures=" kv(after, "load_failures"))
            if (status != "0") failed("the scenario'"'"'s script exited " status)
            printf "RESULT ok: 4096 pages verified (16 MiB read back through /dev/ublkb1 after a SIGKILL of the host), pswpout 0, pswpin 0, no cgroup, %d pages restored from the pool'"'"'s disk, %d loads, serve start %s s (compiled %s), restart %s s, scenario %s, boot %s [%s]\n", restored, loads, serve_s, compiled, restart_s, secs(end_ts - begin_ts), secs(boot), name
            exit 0
        }
        if (script == "power-loss.sh") {
            # Two power cuts (dm-flakey drop_writes, the host SIGKILLed, the file system
            # unmounted and mounted again); after each, the next host took the device over and
            # every page read back as the kernel had acknowledged it before the cut.
            if (rounds != 2 || cuts != 2) failed(rounds + 0 " verifications after " cuts + 0 " power cuts (2 expected)")
            b1 = power_before[1]; b2 = power_before[2]
            if (!(kv(b1, "to_backing") + 0 > 0)) failed("no store was refused to the backing file before the first cut (" b1 ")")
            if (!(kv(b1, "exclusive_to_backing") + 0 > 0)) failed("no exclusive read moved a page to the backing file before the first cut")
            if (!(kv(b1, "taken_back") + 0 > 0)) failed("no page was taken back before the first cut")
            text = ""
            for (r = 1; r <= 2; r++) {
                v = verify[r]
                if (length(kv(v, "acknowledged")) != 64) failed("round " r ": no sha256 of the acknowledged data")
                if (kv(v, "before") != kv(v, "acknowledged")) failed("round " r ": the device read otherwise than acknowledged before the cut (a bug without any power loss)")
                if (kv(v, "canary") != "gone") failed("round " r ": a file written without fsync survived the cut (canary=" kv(v, "canary") "): the cut dropped nothing, this test could not fail")
                if (kv(v, "eio") + 0 != kv(v, "lost") + 0) failed("round " r ": " kv(v, "eio") " pages failed to read, the device counts " kv(v, "lost") " lost")
                if (kv(v, "lost") + 0 > 0) failed("round " r ": " kv(v, "lost") " acknowledged pages lost (read as EIO) after the power cut")
                if (kv(v, "differ") + 0 > 0 || kv(v, "read") != kv(v, "acknowledged")) failed("round " r ": after the power cut " kv(v, "differ") " of " kv(v, "pages") " pages read otherwise than acknowledged (" kv(v, "zeros") " as zeros, " kv(v, "stale") " as other data; the first: page " kv(v, "first") ")")
                text = text sprintf("%sround %d: %d pages identical, 0 EIO, 0 lost, restart %s s", r > 1 ? "; " : "", r, kv(v, "pages"), kv(v, "restart_s"))
            }
            if (!(kv(b2, "exclusive_to_backing") + kv(b2, "taken_back") > 0)) failed("no page was leaving the pool when the second cut came (" b2 ")")
            if (status != "0") failed("the scenario script exited " status)
            printf "RESULT ok: 2 power cuts (dm-flakey drop_writes, host SIGKILLed, file system remounted; a file written without fsync gone each time): %s; before cut 1 refused to backing %d, exclusive reads to backing %d, taken back %d; pages leaving the pool at cut 2 (exclusive %d, taken back %d); serve start %s s (compiled %s), scenario %s, boot %s [%s]\n", text, kv(b1, "to_backing"), kv(b1, "exclusive_to_backing"), kv(b1, "taken_back"), kv(b2, "exclusive_to_backing"), kv(b2, "taken_back"), serve_s, compiled, secs(end_ts - begin_ts), secs(boot), name
            exit 0
        }
        # zram.sh and tmem.sh: swapcheck verified every page of every pass, the workload was
        # larger than the guest (min_ratio times its MemTotal), the kernel swapped out and in.
        if (exit_code == "") failed("swapcheck did not finish")
        if (exit_code != "0") failed("swapcheck exited " exit_code " (killed? out of memory?)")
        if (ok_line == "") failed("no SWAPCHECK OK line")
        pages = kv(ok_line, "pages") + 0; verified = kv(ok_line, "verified") + 0
        memtotal = kv(ok_line, "memtotal_kib") + 0; pswpout = kv(ok_line, "pswpout") + 0; pswpin = kv(ok_line, "pswpin") + 0
        if (pages != mib * 256) failed("swapcheck'"'"'s size: " pages " pages, " mib * 256 " expected")
        if (verified != pages * passes) failed(verified " pages verified, " pages * passes " expected (every page of every pass)")
        if (!(pages * 4 > memtotal * min_ratio)) failed("the workload (" pages " pages) must exceed " min_ratio " x the guest'"'"'s RAM (" memtotal " KiB)")
        if (!(pswpout > 0 && pswpin > 0)) failed("the kernel must have swapped out and in (pswpout=" pswpout ", pswpin=" pswpin ")")
        if (status != "0") failed("the scenario'"'"'s script exited " status)
        text = sprintf("%d pages verified, pswpout %d, pswpin %d, %s", verified, pswpout, pswpin, cgroup == "" ? "no cgroup" : "cgroup " cgroup " MiB")
        if (second != "") {
            second_mib = substr(second, 1, index(second, "@") - 1) + 0
            if (!second_started) failed("the second workload did not start")
            if (second_fail != "") failed("corrupted data in the second workload: " second_fail)
            if (second_exit == "") failed("the second workload did not finish")
            if (second_exit != "0") failed("the second workload exited " second_exit " (killed? out of memory?)")
            if (kv(second_ok, "verified") + 0 != second_mib * 256 * passes) failed("the second workload verified " kv(second_ok, "verified") + 0 " pages, " second_mib * 256 * passes " expected")
            text = text sprintf(", and a second workload (%d MiB, no cgroup, from %s s in): %d pages verified", second_mib, substr(second, index(second, "@") + 1), kv(second_ok, "verified"))
        }
        if (script == "zram.sh") {
            n = split(zram_stat, f, " ")
            if (n < 7) failed("no /sys/block/zram0/stat line")
            if (!(f[7] >= pswpout * 8)) failed("zram took " f[7] " sectors, less than every page swapped out (pswpout=" pswpout ")")
            if (!(f[3] > 0)) failed("zram was never read")
            text = text sprintf(", zram %d MiB written, %d MiB read", f[7] / 2048, f[3] / 2048)
        } else {
            if (pool == "") failed("no GUEST POOL-FINAL line (the pool'"'"'s counters)")
            stores = kv(pool, "succ_stores") + 0; loads = kv(pool, "loads") + 0; invalidates = kv(pool, "invalidates") + 0
            refused = kv(pool, "pool_limit_hit") + kv(pool, "reject_alloc_fail") + kv(pool, "reject_compress_poor") + kv(pool, "reject_compress_fail") + kv(pool, "reject_plugin_fault") + kv(pool, "reject_disabled")
            to_backing = kv(pool, "to_backing") + 0; from_backing = kv(pool, "from_backing") + 0
            if (!(stores > 0)) failed("no page was stored in the pool (succ_stores=0, pswpout=" pswpout ")")
            if (!(loads > 0)) failed("no page was loaded from the pool")
            if (kv(pool, "load_failures") + 0 != 0) failed("load_failures=" kv(pool, "load_failures"))
            # (swap-restart.sh runs one pass: the slots are freed at its end, and the clusters that
            # hold the pool'"'"'s pages may stay pinned by other slots; the device'"'"'s discards show
            # that tmem swap on turned discard on.)
            if (script == "tmem.sh" && !(invalidates > 0)) failed("the kernel'"'"'s discards of freed swap slots never reached the pool as invalidates")
            if (script == "swap-restart.sh" && !(kv(pool, "discards") + 0 > 0)) failed("no discard reached the device (swap on without discard?)")
            if (tls != "" && tls_line == "") failed("no GUEST TLS line: the export was not reached over TLS")
            if (tls != "") text = text ", over NBD with TLS (X.509 both ways, the guest" "'"'"'s nbd-client; a plain client refused)"
            if (expect == "refused" && !(refused > 0)) failed("the pool refused no store (its limit never bit)")
            if (expect == "refused" && !(to_backing > 0)) failed("the device wrote no page to its backing file")
            if (expect == "governed") {
                # The governor lowered the target under the second workload'"'"'s pressure, and the
                # tiered pool moved pages down because of it: its idle time is an hour, so every
                # page that moved went under budget pressure (the mover'"'"'s passes, or the
                # governor'"'"'s own before it lowers).
                if (governor == "") failed("no GUEST GOVERNOR line (the governor'"'"'s counters)")
                lowers = kv(governor, "governor_decisions_lower") + 0; moved = kv(governor, "governor_demoted_pages") + 0
                demoted = kv(pool, "tier_demoted_pages") + 0
                if (!(lowers > 0)) failed("the governor never lowered its target (" governor ")")
                if (!(demoted > 0)) failed("no page moved down under the governor'"'"'s target (tier_demoted_pages=0)")
                text = text sprintf(", governor lowered its target %d times (%s to %s MiB seen) and shrank the pool by %d pages, %d pages moved down under it (%d by its own passes; %d promoted; the lower tier holds %d pages, %d bytes)", lowers, target_max, target_min, kv(governor, "governor_shrunk_pages"), demoted, moved, kv(pool, "tier_promoted_pages"), kv(lower, "stored_pages"), kv(lower, "pool_total_size"))
            }
            text = text sprintf(", pool stores %d, refused %d, loads %d, invalidates %d, to backing %d, from backing %d (%s), serve start %s s (compiled %s)", stores, refused, loads, invalidates, to_backing, from_backing, backing, serve_s, compiled)
            # The I/O threads over the workload (their own counters in /metrics).
            io_ops = kv(io_after, "ops") - kv(io_before, "ops")
            if (io_after != "" && io_ops > 0) {
                allocs = kv(io_after, "allocations") + kv(io_after, "reallocations") - kv(io_before, "allocations") - kv(io_before, "reallocations")
                faults = kv(io_after, "minor_faults") + kv(io_after, "major_faults") - kv(io_before, "minor_faults") - kv(io_before, "major_faults")
                text = text sprintf(", I/O threads %d allocations and %d page faults in %d ops", allocs, faults, io_ops)
            }
        }
        # swap-restart.sh: the host was killed while pages were swapped out to it, the next one
        # took the device over, the kernel swapped pages in through it, and `tmem swap` did its part.
        if (script == "swap-restart.sh") {
            if (on_again !~ /nothing changed/) failed("a second tmem swap on did not say it changed nothing: " on_again)
            if (host_kill == "") failed("the host was never killed (no GUEST HOST-KILL line)")
            if (host_back == "") failed("no GUEST HOST-BACK line: the restarted host did not take the device over")
            in_since = kv(vmstat_end, "pswpin") - kv(host_back, "pswpin")
            if (vmstat_end == "" || !(in_since > 0)) failed("no page was swapped in after the restart")
            if (swap_off !~ /^GUEST SWAP-OFF ok/) failed("tmem swap off: " substr(swap_off, 16))
            text = text sprintf(", host killed with %d pages in the pool (pswpout %d), device served again %s s later, pswpin since %d, tmem swap off ok", kv(host_kill, "stored_pages"), kv(host_kill, "pswpout"), kv(host_back, "restart_s"), in_since)
        }
        printf "RESULT ok: %s, workload %s, scenario %s, boot %s [%s]\n", text, secs(ok_ts - start_ts), secs(end_ts - begin_ts), secs(boot), name
    }' "$log"
}

# ---- Arguments --------------------------------------------------------------------------------

selected=() separate=0 tmem_bin="" precompile=1 keep_disk=0 verbose=0
while [ $# -gt 0 ]; do
    case "$1" in
        --ci | --all)
            for name in "${names[@]}"; do
                if [ "$1" = --all ] || [ "$(get "$name" ci)" = yes ]; then selected+=("$name"); fi
            done
            shift ;;
        --list)
            for name in "${names[@]}"; do echo "$name ci=$(get "$name" ci)"; done
            results=1
            exit 0 ;;
        --check)
            [ $# -ge 3 ] || die "usage: run.sh --check SCENARIO LOG [KEY=VALUE...]"
            known "$2" || die "no scenario $2 in tests/guest/scenarios"
            [ -f "$3" ] || die "no log $3"
            for word in "${@:4}"; do S[$2.${word%%=*}]=${word#*=}; done
            results=1
            check "$2" "$3"
            exit ;;
        --separate) separate=1; shift ;;
        --tmem) tmem_bin=$(realpath "$2"); shift 2 ;;
        --no-precompile) precompile=0; shift ;;
        --keep-disk) keep_disk=1; shift ;;
        --verbose) verbose=1; shift ;;
        -*) die "unknown option $1 (see the header of $0)" ;;
        *) known "$1" || die "no scenario $1 in tests/guest/scenarios (run.sh --list)"; selected+=("$1"); shift ;;
    esac
done
[ ${#selected[@]} -gt 0 ] || die "no scenario given (run.sh --list shows them)"

# The boots: neighbours that may share one (share=yes, same memory, cpus and kernel words).
boots=() machine_of_last=""
for name in "${selected[@]}"; do
    machine="$(get "$name" memory)/$(get "$name" cpus)/$(get "$name" kernel)"
    if [ $separate = 0 ] && [ ${#boots[@]} -gt 0 ] && [ "$(get "$name" share)" = yes ] &&
        [ "$(get "${boots[-1]##*,}" share)" = yes ] && [ "$machine" = "$machine_of_last" ]; then
        boots[-1]+=",$name"
    else
        boots+=("$name")
    fi
    machine_of_last=$machine
done

# ---- What the boots need ----------------------------------------------------------------------

# An executable from PATH or the sbin dirs (where Debian puts nbd-client and mkfs.ext4).
find_program() {
    local dir
    for dir in ${PATH//:/ } /usr/sbin /sbin; do
        if [ -x "$dir/$1" ]; then
            echo "$dir/$1"
            return
        fi
    done
    return 1
}
missing() { die "$1 is not installed: run scripts/install-deps.sh --test"; }
command -v "$qemu" >/dev/null || missing "$qemu"
mkfs=$(find_program mkfs.ext4) || missing mkfs.ext4
debugfs=$(find_program debugfs) || missing debugfs

target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
[ -n "$target" ] || die "cargo metadata gave no target directory"
work=$target/tmp/guest
mkdir -p "$work"

elapsed() { awk -v from="$1" -v to="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", to - from }'; }

started=$EPOCHREALTIME
bash "$repo/scripts/guest/fetch-kernel.sh" "$work/kernel" || die "cannot fetch the kernel (see above)"
release=$(cat "$work/kernel/release")

swapcheck=$work/swapcheck pagecmp=$work/pagecmp
if [ ! -x "$swapcheck" ] || [ "$repo/tests/guest/swapcheck.c" -nt "$swapcheck" ]; then
    gcc -static -O2 -Wall -Werror -o "$swapcheck" "$repo/tests/guest/swapcheck.c" || die "cannot compile swapcheck"
fi
if [ ! -x "$pagecmp" ] || [ "$repo/tests/guest/pagecmp.c" -nt "$pagecmp" ]; then
    gcc -static -O2 -Wall -Werror -o "$pagecmp" "$repo/tests/guest/pagecmp.c" || die "cannot compile pagecmp"
fi

needs_tmem=0 needs_nbd=0 needs_tls=0 needs_dm=0
for name in "${selected[@]}"; do
    if [ "$(get "$name" script)" != zram.sh ]; then needs_tmem=1; fi
    if [ "$(get "$name" script)" = power-loss.sh ]; then needs_dm=1; fi
    if [ "$(get "$name" transport)" = nbd ]; then needs_nbd=1; fi
    if [ -n "$(get "$name" tls)" ]; then needs_tls=1; fi
done
[ $needs_tls = 0 ] || command -v openssl >/dev/null || missing openssl
if [ $needs_tmem = 1 ] && [ -z "$tmem_bin" ]; then
    say "building the release tmem (cargo build --release --bin tmem)"
    (cd "$repo" && cargo build --release --locked --bin tmem) || die "cannot build the release tmem (see above)"
    tmem_bin=$target/release/tmem
fi
nbd_client=""
if [ $needs_nbd = 1 ]; then nbd_client=$(find_program nbd-client) || missing nbd-client; fi
# power-loss.sh makes a dm-flakey device and an ext4 file system on it in the guest.
dmsetup=""
if [ $needs_dm = 1 ]; then dmsetup=$(find_program dmsetup) || missing dmsetup; fi
say "ready in $(elapsed "$started") s (kernel $release${tmem_bin:+, tmem $tmem_bin})"

# The plugins' compiled code, for this binary, QEMU and kernel: TARGET/tmp/guest/cwasm, its key
# in cwasm/.key; a boot compiles it (again) when the key differs.
cache=$work/cwasm
cache_key=""
if [ $needs_tmem = 1 ] && [ $precompile = 1 ]; then
    cache_key="$(sha256sum "$tmem_bin" | cut -c1-64) $("$qemu" --version | head -n 1) $release -cpu max"
fi

# make_certificates DIR: a CA, a server certificate for 127.0.0.1 and localhost, and a client
# certificate, all signed by the CA (PEM: ca.pem, server.pem/.key, client.pem/.key) — what
# tls=x509 scenarios give tmem serve and the guest's nbd-client. Made afresh for each boot.
make_certificates() {
    local out=$1
    mkdir -p "$out"
    (
        cd "$out" || exit 1
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tmem-guest-ca -keyout ca.key -out ca.pem &&
            for who in server client; do
                openssl req -newkey rsa:2048 -nodes -subj "/CN=tmem-guest-$who" -keyout $who.key -out $who.csr &&
                    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' \
                        "$([ $who = server ] && echo serverAuth || echo clientAuth)" > $who.ext &&
                    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                        -extfile $who.ext -out $who.pem || exit 1
            done
        rm -f ./*.csr ./*.ext ca.key ca.srl
    ) >/dev/null 2>&1 || die "cannot make the guest's TLS certificates with openssl"
}

# ---- One boot ---------------------------------------------------------------------------------

# run_boot NAME,NAME...: builds the initramfs and the disk, boots, watches, checks each scenario.
run_boot() {
    local list=$1 boot=${1//,/+} names_in_boot name scripts=() script memory cpus words timeout=0 silence=0
    IFS=, read -r -a names_in_boot <<< "$list"
    memory=$(get "${names_in_boot[0]}" memory)
    cpus=$(get "${names_in_boot[0]}" cpus)
    words=$(get "${names_in_boot[0]}" kernel)
    for name in "${names_in_boot[@]}"; do
        timeout=$((timeout + $(get "$name" timeout)))
        [ "$(get "$name" silence)" -gt $silence ] && silence=$(get "$name" silence)
        script=$(get "$name" script)
        [[ " ${scripts[*]} " == *" $script "* ]] || scripts+=("$script")
    done

    local stage log=$work/$boot.serial.log initrd=$work/$boot.initrd.gz disk=$work/$boot.disk.img t
    # A second, raw disk (the guest's /dev/vdb): a device's backing store on a block device.
    local raw=$work/$boot.raw.img
    stage=$(mktemp -d "$work/stage.XXXXXX")
    mkdir -p "$stage/disk/sysroot"
    resolved_table > "$stage/scenarios"
    local build=(bash "$repo/scripts/guest/build-initramfs.sh" --out "$initrd" --init "$repo/tests/guest/init"
        --modules "$work/kernel/lib/modules/$release" --file "$repo/tests/guest/guest.sh=/lib/guest.sh"
        --file "$stage/scenarios=/etc/scenarios" --bin "$swapcheck=/bin/swapcheck" --bin "$pagecmp=/bin/pagecmp"
        --sysroot "$stage/disk/sysroot=/mnt/sysroot")
    for script in "${scripts[@]}"; do build+=(--file "$repo/tests/guest/$script=/lib/scenarios/$script"); done
    [ $needs_tmem = 1 ] && build+=(--disk-bin "$tmem_bin=/bin/tmem")
    [ -n "$nbd_client" ] && build+=(--disk-bin "$nbd_client=/bin/nbd-client")
    [ -n "$dmsetup" ] && build+=(--disk-bin "$dmsetup=/bin/dmsetup" --disk-bin "$mkfs=/bin/mkfs.ext4")
    [ $needs_tls = 1 ] && make_certificates "$stage/disk/tls"
    local precompile_now=0
    if [ -n "$cache_key" ]; then
        mkdir -p "$stage/disk/cwasm"
        cp "$cache"/*.cwasm "$stage/disk/cwasm/" 2>/dev/null || true
        [ "$(cat "$cache/.key" 2>/dev/null)" = "$cache_key" ] || precompile_now=1
    fi
    t=$EPOCHREALTIME
    "${build[@]}" || die "cannot build the initramfs (see above)"
    rm -f "$disk" "$raw"
    truncate -s "${TMEM_GUEST_DISK_SIZE:-4G}" "$disk"
    truncate -s 2G "$raw"
    "$mkfs" -q -F -L tmem-guest -N 4096 -E lazy_itable_init=0,lazy_journal_init=1 -d "$stage/disk" "$disk" ||
        die "mkfs.ext4 of the guest's disk failed"
    say "$boot: initramfs ($(du -k "$initrd" | cut -f1) KiB) and disk ($(du -k "$disk" | cut -f1) KiB used) built in $(elapsed "$t") s"

    local append="console=ttyS0 panic=-1 quiet tmem.run=$list"
    [ $precompile_now = 1 ] && append+=" tmem.precompile=1"
    [ -n "$words" ] && append+=" ${words//,/ }"
    local fifo_out=$stage/serial.out fifo_in=$stage/serial.in stamp_pid input
    mkfifo "$fifo_out" "$fifo_in"
    exec {input}<>"$fifo_in"
    local start=${EPOCHREALTIME/./}
    # The serial console, line by line, stamped with the seconds since QEMU started; the markers
    # (or, --verbose, every line) on stderr too.
    (
        exec 2>/dev/null
        while IFS= read -r line || [ -n "$line" ]; do
            line=${line%$'\r'}
            now=$((${EPOCHREALTIME/./} - start))
            printf -v stamped '[%4d.%03d] %s' $((now / 1000000)) $((now % 1000000 / 1000)) "$line"
            echo "$stamped"
            if [ $verbose = 1 ] || [[ "$line" == *GUEST* || "$line" == SWAPCHECK* || "$line" == *"blocked for more than"* ||
                "$line" == *"Out of memory"* || "$line" == *"Kernel panic"* ]]; then
                echo "$stamped" >&3
            fi
        done < "$fifo_out" > "$log"
    ) 3>&2 &
    stamp_pid=$!
    say "$boot: booting ($memory MiB, $cpus CPUs${words:+, $words}; serial log $log)"
    "$qemu" -accel tcg -cpu max -nodefaults -display none -serial mon:stdio -no-reboot \
        -smp "$cpus" -m "$memory" -kernel "$work/kernel/vmlinuz" -initrd "$initrd" -append "$append" \
        -drive "file=$disk,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$raw,format=raw,if=virtio,cache=unsafe" < "$fifo_in" > "$fifo_out" &
    qemu_pid=$!

    # The watchdog: past the boot's timeout, or after `silence` seconds without a line, the
    # kernel is asked for its stacks over the serial line (sysrq: QEMU's `Ctrl-a b` sends a
    # break, the next key picks the request) and QEMU is killed.
    local why="" now last
    while kill -0 $qemu_pid 2>/dev/null; do
        sleep 1
        now=$(date +%s)
        last=$(stat -c %Y "$log" 2>/dev/null || echo "$now")
        if [ $((${EPOCHREALTIME/./} - start)) -gt $((timeout * 1000000)) ]; then
            why="the guest did not power off within $timeout s"
        elif [ $((now - last)) -ge "$silence" ]; then
            why="the guest printed nothing for $silence s"
        else
            continue
        fi
        say "$boot: $why: asking for stacks (sysrq w, l, m, t), then killing QEMU"
        for key in w l m t; do
            printf '\001b' >&"$input"
            sleep 0.5
            printf '%s' "$key" >&"$input"
            sleep 5
        done
        sleep 10
        kill $qemu_pid 2>/dev/null || true
        break
    done
    wait $qemu_pid 2>/dev/null || true
    qemu_pid=""
    wait $stamp_pid 2>/dev/null || true
    exec {input}>&-
    local total=$((${EPOCHREALTIME/./} - start))
    if [ -n "$why" ]; then
        printf '[%4d.%03d] HARNESS %s; QEMU killed\n' $((total / 1000000)) $((total % 1000000 / 1000)) "$why" >> "$log"
    fi
    say "$boot: QEMU ran $((total / 1000000)) s"

    # The compiled code the boot made, for the boots after it.
    if grep -q "GUEST PRECOMPILE" "$log"; then
        rm -rf "$stage/harvest"
        mkdir -p "$stage/harvest"
        if "$debugfs" -R "rdump /cwasm $stage/harvest" "$disk" >/dev/null 2>&1 && ls "$stage/harvest/cwasm/"*.cwasm >/dev/null 2>&1; then
            rm -rf "$cache"
            mv "$stage/harvest/cwasm" "$cache"
            echo "$cache_key" > "$cache/.key"
            say "$boot: plugins compiled in the guest: $(grep "GUEST SERVE-UP" "$log" | head -n 1 | sed 's/.*seconds=\([0-9.]*\) compiled=\([0-9]*\).*/\2 modules in \1 s/'), kept in $cache"
        fi
    fi
    rm -rf "$stage"
    [ $keep_disk = 1 ] || rm -f "$disk" "$raw"

    for name in "${names_in_boot[@]}"; do
        results=$((results + 1))
        check "$name" "$log" || failures=$((failures + 1))
    done
}

for boot in "${boots[@]}"; do
    run_boot "$boot"
done
[ $failures = 0 ]
