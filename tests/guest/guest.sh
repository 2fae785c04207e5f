# guest.sh: what every guest init script of the guest-kernel tests (tests/all/kernel_swap.rs)
# starts with, sourced as /lib/guest.sh: mounts, the kernel command line's `tmem.NAME=VALUE`
# parameters, and the markers the test on the outside reads from the serial console
# (`GUEST ...` lines). The guest powers off when its script ends or fails.

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

# A stalled swap device must fail the run fast and say why: a task blocked for 60 s panics the
# kernel (QEMU then exits), which first prints that task's stack and every task's state and
# stack (panic_print=1) — tmem's threads included. Kernel messages up to KERN_INFO reach the
# console from here on (the boot itself stays quiet).
echo 60 > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/hung_task_panic
echo 1 > /proc/sys/kernel/panic_print
dmesg -n 7

# param NAME: the value of `tmem.NAME=VALUE` on the kernel command line (empty when absent).
param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "tmem.$1="*) echo "${word#*=}"; return ;; esac
    done
}

# Prints a marker line with the guest's uptime: `GUEST STEP uptime=S what`.
step() {
    echo "GUEST STEP uptime=$(cut -d' ' -f1 /proc/uptime) $*"
}

# limited MAX CMD...: runs CMD in a memory cgroup whose limit is MAX (e.g. 256M), so it swaps
# while the rest of the guest still finds free memory.
limited() {
    max=$1
    shift
    if [ ! -d /sys/fs/cgroup/limited ]; then
        mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
        echo +memory > /sys/fs/cgroup/cgroup.subtree_control || fail "enable the memory controller"
        mkdir /sys/fs/cgroup/limited
    fi
    echo "$max" > /sys/fs/cgroup/limited/memory.max || fail "memory.max $max"
    (echo 0 > /sys/fs/cgroup/limited/cgroup.procs && exec "$@")
}

# Ends the run: `GUEST DONE` and power off (the test sees QEMU exit).
finish() {
    sync
    echo "GUEST DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
    poweroff -f
}

# Ends the run on a failure: `GUEST FAIL what`, the last kernel messages, then power off.
fail() {
    echo "GUEST FAIL $*"
    dmesg | tail -n 30
    finish
}
