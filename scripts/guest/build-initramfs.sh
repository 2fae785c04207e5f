#!/usr/bin/env bash
# Builds a guest's initramfs (a gzip'd newc cpio) for the guest-kernel tests: busybox-static
# (every applet linked in /bin), kernel modules, binaries with the shared libraries `ldd` lists
# and the dynamic loader, extra files, and the guest's /init script. Generic: the caller
# (scripts/guest/run.sh) decides what goes in.
#
#   build-initramfs.sh --out FILE --init SCRIPT
#       [--modules DIR]        a lib/modules/RELEASE dir (from fetch-kernel.sh) -> /lib/modules/RELEASE
#       [--bin PATH[=DEST]]... an executable -> DEST (default /bin/NAME), debug info stripped,
#                              plus its shared libraries at the paths ldd prints
#       [--file SRC=DEST]...   any file, copied as is
#       [--sysroot DIR=MOUNT]  with --disk-bin: a directory the caller turns into the guest's
#                              disk, mounted at MOUNT in the guest before the binaries run
#       [--disk-bin PATH[=DEST]]... as --bin, but the executable and its shared libraries go to
#                              DIR (at DIR/DEST, DIR/LIB) and the initramfs holds symlinks
#                              DEST -> MOUNT/DEST, LIB -> MOUNT/LIB: their pages are then file
#                              pages of the disk, which the guest's kernel can drop and read
#                              again, rather than pages of the initramfs (tmpfs), which it can
#                              only swap out — possibly to the very swap server they belong to
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }

out="" init="" modules="" sysroot="" mountpoint=""
bins=() files=() disk_bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --init) init=$2; shift 2 ;;
        --modules) modules=$2; shift 2 ;;
        --bin) bins+=("$2"); shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        --sysroot) sysroot=${2%%=*} mountpoint=${2#*=}; shift 2 ;;
        --disk-bin) disk_bins+=("$2"); shift 2 ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[ -n "$out" ] && [ -n "$init" ] || die "--out FILE and --init SCRIPT are required"
[ -f "$init" ] || die "no init script $init"
[ ${#disk_bins[@]} -eq 0 ] || { [ -n "$sysroot" ] && [ "$mountpoint" != "$sysroot" ]; } ||
    die "--disk-bin needs --sysroot DIR=MOUNT"
for tool in busybox cpio gzip ldd; do
    command -v "$tool" >/dev/null || die "needs $tool (scripts/install-deps.sh --test installs it)"
done
busybox=$(command -v busybox)
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not static (install busybox-static)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,run,tmp,etc,lib,root}
ln -s bin "$stage/sbin"
mkdir -p "$stage/usr"
ln -s ../bin "$stage/usr/bin"
ln -s ../bin "$stage/usr/sbin"

cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
done

# put ROOT SPEC: the executable SPEC (PATH[=DEST]) at ROOT/DEST, debug info stripped, and its
# shared libraries (ldd's "name => /path (addr)") and loader ("/lib64/ld-linux... (addr)") at
# ROOT/PATH; prints DEST and each library's path.
put() {
    local root=$1 spec=$2 src dest lib
    src=${spec%%=*}
    dest=/bin/$(basename "$src")
    [ "$spec" != "$src" ] && dest=${spec#*=}
    [ -x "$src" ] || die "no executable $src"
    mkdir -p "$root$(dirname "$dest")"
    rm -f "$root$dest" # may be a busybox applet link
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$root$dest" "$src"
    else
        cp "$src" "$root$dest"
    fi
    echo "$dest"
    if ldd "$src" >/dev/null 2>&1; then
        for lib in $(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
            if [ ! -e "$root$lib" ]; then
                mkdir -p "$root$(dirname "$lib")"
                cp -L "$lib" "$root$lib"
            fi
            echo "$lib"
        done
    fi
}

for spec in "${bins[@]}"; do
    put "$stage" "$spec" >/dev/null
done
# On the disk, with links from the initramfs (a file the initramfs already holds stays there).
for spec in "${disk_bins[@]}"; do
    paths=$(put "$sysroot" "$spec")
    for path in $paths; do
        if [ ! -e "$stage$path" ] || [ -L "$stage$path" ]; then
            mkdir -p "$stage$(dirname "$path")"
            ln -sfn "$mountpoint$path" "$stage$path"
        fi
    done
done

for spec in "${files[@]}"; do
    src=${spec%%=*}
    dest=${spec#*=}
    [ "$spec" != "$src" ] || die "--file needs SRC=DEST, got $spec"
    [ -f "$src" ] || die "no file $src"
    mkdir -p "$stage$(dirname "$dest")"
    cp -L "$src" "$stage$dest"
done

if [ -n "$modules" ]; then
    [ -f "$modules/modules.dep" ] || die "$modules has no modules.dep (use fetch-kernel.sh's lib/modules/RELEASE)"
    mkdir -p "$stage/lib/modules"
    cp -r "$modules" "$stage/lib/modules/$(basename "$modules")"
fi

cp "$init" "$stage/init"
chmod 755 "$stage/init"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
