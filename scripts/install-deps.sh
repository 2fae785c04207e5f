#!/usr/bin/env bash
# Installs what building tmem needs on a fresh Debian machine (as root, or with sudo): clang
# and llvm (zstd's C code for the Wasm plugins), libssl-dev and pkg-config (the host's TLS) and
# the wasm32 rustup target. With `--test`, the openssl CLI (the TLS tests' certificates) and
# curl (an HTTPS client of the API), also what the tests run against: redis-server and
# redis-cli (the remote store's Redis and Redis Cluster tests), Debian's chromium, Node.js and the dashboard's npm packages
# (playwright-core drives chromium in the dashboard's browser test), and what the guest-kernel
# tests (tests/all/kernel_swap.rs, scripts/guest/) need: QEMU, busybox-static, cpio, kmod
# (modinfo), xz, gcc with a static libc (swapcheck), nbd-client and dmsetup (copied into the
# guest), e2fsprogs (mkfs.ext4 makes the guest's disk, debugfs reads it back; mkfs.ext4 is
# copied into the guest too); and Schemathesis, the
# OpenAPI fuzzer of tests/all/openapi_fuzz.rs (pinned, from PyPI, in a venv under
# target/tools/schemathesis).
# Idempotent; safe to run before every build.
set -euo pipefail

# The OpenAPI fuzzer (tests/all/openapi_fuzz.rs), at the version its hooks were written for.
schemathesis_version=4.32.5
schemathesis_venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools/schemathesis"
schemathesis_installed() {
    "$schemathesis_venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $schemathesis_version"
}

need_apt=()
command -v clang >/dev/null || need_apt+=(clang)
command -v llvm-ar >/dev/null || need_apt+=(llvm)
# OpenSSL, which the host links for TLS (the openssl crate finds it with pkg-config).
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
if [ "${1:-}" = "--test" ]; then
    # The block-device tests' NBD clients: qemu-io and qemu-img, nbdinfo and nbdcopy, fio, nbdkit.
    command -v qemu-io >/dev/null || need_apt+=(qemu-utils)
    command -v nbdcopy >/dev/null || need_apt+=(libnbd-bin)
    command -v fio >/dev/null || need_apt+=(fio)
    command -v nbdkit >/dev/null || need_apt+=(nbdkit)
    # The TLS tests make their certificates and keys with the openssl CLI; curl is the HTTPS
    # client tests/all/rest_tls.rs checks the API with.
    command -v openssl >/dev/null || need_apt+=(openssl)
    command -v curl >/dev/null || need_apt+=(curl)
    command -v redis-server >/dev/null || need_apt+=(redis-server)
    command -v redis-cli >/dev/null || need_apt+=(redis-tools)
    [ -x /usr/bin/chromium ] || need_apt+=(chromium)
    command -v node >/dev/null || need_apt+=(nodejs)
    command -v npm >/dev/null || need_apt+=(npm)
    # The guest-kernel tests (scripts/guest/): QEMU, the initramfs tools, swapcheck, nbd-client,
    # the guest's disk, dmsetup (the power-loss scenario's dm-flakey device).
    dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
    command -v cpio >/dev/null || need_apt+=(cpio)
    command -v xz >/dev/null || need_apt+=(xz-utils)
    [ -x /usr/sbin/modinfo ] || [ -x /sbin/modinfo ] || need_apt+=(kmod)
    command -v gcc >/dev/null || need_apt+=(gcc)
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need_apt+=(libc6-dev)
    [ -x /usr/sbin/nbd-client ] || [ -x /sbin/nbd-client ] || need_apt+=(nbd-client)
    [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || need_apt+=(e2fsprogs)
    [ -x /usr/sbin/dmsetup ] || [ -x /sbin/dmsetup ] || need_apt+=(dmsetup)
    # The OpenAPI fuzzer's Python (3.11 or later: Debian 12's), with venv and pip: Debian's
    # python3 makes no venv without python3-venv (importing venv and ensurepip succeeds all
    # the same), so making one is the test. Skipped when the fuzzer is already installed.
    if ! schemathesis_installed; then
        if ! command -v python3 >/dev/null; then
            need_apt+=(python3 python3-venv)
        else
            probe=$(mktemp -d)
            python3 -m venv "$probe/venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
            rm -rf "$probe"
        fi
    fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# QEMU for the guest-kernel tests, at the version of the machine's qemu-utils: when qemu-utils
# came from bookworm-backports (qemu 10), a qemu-system-x86 from bookworm (qemu 7.2) would take
# qemu-utils away with it, so it comes from backports too — through a private apt state, so the
# system's sources stay as they are.
if [ "${1:-}" = "--test" ] && ! command -v qemu-system-x86_64 >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ "$utils" == *bpo* ]]; then
        . /etc/os-release
        apt_state=$(mktemp -d)
        mkdir -p "$apt_state/lists/partial"
        {
            echo "deb http://deb.debian.org/debian $VERSION_CODENAME main"
            echo "deb http://deb.debian.org/debian $VERSION_CODENAME-updates main"
            echo "deb http://deb.debian.org/debian-security $VERSION_CODENAME-security main"
            echo "deb http://deb.debian.org/debian $VERSION_CODENAME-backports main"
        } >"$apt_state/sources.list"
        private=(-oDir::Etc::SourceList="$apt_state/sources.list" -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists="$apt_state/lists")
        $SUDO apt-get -qq "${private[@]}" update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${private[@]}" -t "$VERSION_CODENAME-backports" \
            qemu-system-x86 qemu-utils >/dev/null
        rm -rf "$apt_state"
    else
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-system-x86 >/dev/null
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "tmem needs a Rust toolchain (cargo, rustup): none was found on PATH" >&2
    exit 1
fi
# rust-toolchain.toml lists the target too; this makes the install explicit and early.
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown

if [ "${1:-}" = "--test" ]; then
    # The browser test's packages, exactly as package-lock.json pins them.
    (cd "$(dirname "$0")/../web-ui" && npm ci --no-audit --no-fund --loglevel=error)
    # The OpenAPI fuzzer, in a venv of its own (a half-made one from an interrupted run is
    # made again).
    if ! schemathesis_installed; then
        rm -rf "$schemathesis_venv"
        python3 -m venv "$schemathesis_venv"
        "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
        schemathesis_installed
    fi
fi
