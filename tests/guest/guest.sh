# guest.sh: what every guest init script of the guest-kernel tests (tests/all/kernel_swap.rs)
# starts with, sourced as /lib/guest.sh: mounts, the kernel command line's `tmem.NAME=VALUE`
# parameters, and the markers the test on the outside reads from the serial console
# (`GUEST ...` lines). The guest powers off when its script ends or fails.

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

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
