#!/usr/bin/env bash
# Fetches Debian trixie's amd64 kernel for the guest-kernel tests (tests/all/kernel_swap.rs):
# `fetch-kernel.sh OUT_DIR` leaves
#   OUT_DIR/vmlinuz                         the kernel image
#   OUT_DIR/lib/modules/RELEASE/*.ko        the modules of MODULES below and every module they
#                                           depend on (per `modinfo -F depends`), decompressed;
#                                           those built into the kernel are listed in
#                                           modules.builtin instead
#   OUT_DIR/lib/modules/RELEASE/modules.dep so busybox `modprobe NAME` works in the guest
#   OUT_DIR/release                         RELEASE (`uname -r` in the guest)
#   OUT_DIR/package                         the exact package (name=version) that was fetched
#   OUT_DIR/modules                         the module list above (a new list fetches again)
# The package is whatever `linux-image-amd64` depends on in trixie on the mirror this machine's
# apt already uses; apt runs with a private state under OUT_DIR/apt, so the system's sources
# and lists are untouched. Idempotent: does nothing when OUT_DIR is complete. Fails loudly
# (exit 1, one clear line) when the registry cannot be reached. TMEM_DEBIAN_MIRROR overrides the
# mirror.
set -euo pipefail

# The guest's swap devices, its disk (a virtio-blk image with an ext4 file system, which
# needs the crc32c driver), and device-mapper's flakey target (the power-loss scenario cuts
# the writes to a file system with it).
MODULES=(ublk_drv nbd zram virtio_pci virtio_blk crc32c_generic ext4 dm_mod dm_flakey)

die() { echo "fetch-kernel: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: fetch-kernel.sh OUT_DIR"
out=$(mkdir -p "$1" && cd "$1" && pwd)

if [ -s "$out/package" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/lib/modules/$(cat "$out/release" 2>/dev/null)/modules.dep" ] &&
    [ "$(cat "$out/modules" 2>/dev/null)" = "${MODULES[*]}" ]; then
    exit 0
fi
for tool in apt-get dpkg modinfo xz; do
    command -v "$tool" >/dev/null || die "needs $tool (scripts/install-deps.sh --test installs it)"
done

# The Debian mirror this machine's apt already uses (one-line and deb822 sources alike).
mirror=${TMEM_DEBIAN_MIRROR:-}
[ -n "$mirror" ] || mirror=$(
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }
             /^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
        grep -E '/debian/?$' | head -n 1
) || true
[ -n "$mirror" ] || die "found no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list[.d]"

apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
echo "deb $mirror trixie main" > "$apt_dir/sources.list"
apt_opts=(
    -oDir::Etc::SourceList="$apt_dir/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::State::Lists="$apt_dir/lists" -oDir::Cache="$apt_dir/cache"
    -oDir::Etc::Preferences=/dev/null -oDir::Etc::PreferencesParts=/dev/null
    -oAPT::Architecture=amd64 -oAPT::Architectures::=amd64 -oAPT::Sandbox::User=root
)

echo "fetch-kernel: apt update (trixie from $mirror)" >&2
if ! apt-get "${apt_opts[@]}" -qq update >"$apt_dir/update.log" 2>&1 ||
    grep -qE '^(W|E): (Failed|Some index files failed)' "$apt_dir/update.log"; then
    cat "$apt_dir/update.log" >&2
    die "cannot reach the Debian registry ($mirror, suite trixie): see the apt output above"
fi

package=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.12\..*-amd64(-unsigned)?$/ { print $2; exit }')
[ -n "$package" ] || die "trixie's linux-image-amd64 depends on no linux-image-6.12.*-amd64 (apt-cache depends found none)"
version=$(apt-cache "${apt_opts[@]}" show "$package" | awk '$1 == "Version:" { print $2; exit }')

echo "fetch-kernel: downloading $package=$version" >&2
rm -f "$apt_dir/debs/"*.deb
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "$package=$version") ||
    die "cannot download $package=$version from $mirror"
deb=$(ls "$apt_dir/debs/"*.deb)

root="$apt_dir/root"
rm -rf "$root"
dpkg -x "$deb" "$root"
vmlinuz=$(ls "$root"/boot/vmlinuz-* | head -n 1)
release=${vmlinuz##*/vmlinuz-}
moddir=""
for candidate in "$root/usr/lib/modules/$release" "$root/lib/modules/$release"; do
    [ -d "$candidate" ] && moddir=$candidate
done
[ -n "$moddir" ] || die "$deb has no modules directory for $release"

dest="$out/lib/modules/$release"
rm -rf "$out/lib"
mkdir -p "$dest"

# Copies module NAME (and, first, what it depends on) into $dest; appends its modules.dep line.
# Names are kept with `_` (the kernel's own spelling): `modinfo -F depends` may name a module
# with `-` (dm_flakey depends on "dm-mod"), which must not copy it a second time.
declare -A done_modules=() is_builtin=()
dep_lines=() builtin_modules=()
add_module() {
    local name=${1//-/_} file deps dep dep_files=()
    [ -n "${done_modules[$name]:-}" ] && return 0
    done_modules[$name]=1
    # Built into the kernel: nothing to copy (`modprobe` in the guest finds it in modules.builtin).
    if grep -qE "/(${name}|${name//_/-})\.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
        builtin_modules+=("$name")
        is_builtin[$name]=1
        return 0
    fi
    file=$(find "$moddir" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" -o -name "$name.ko.gz" |
        head -n 1)
    if [ -z "$file" ]; then # module names use _ and - interchangeably
        file=$(find "$moddir" -name "${name//_/-}.ko*" -o -name "${name//-/_}.ko*" | head -n 1)
    fi
    [ -n "$file" ] || die "module $name is not in $package"
    deps=$(modinfo -F depends "$file" | tr ',' ' ')
    for dep in $deps; do
        dep=${dep//-/_}
        add_module "$dep"
        [ -n "${is_builtin[$dep]:-}" ] || dep_files+=("$dep.ko")
    done
    case "$file" in
        *.xz) xz -dc "$file" > "$dest/$name.ko" ;;
        *.zst) zstd -qdc "$file" > "$dest/$name.ko" ;;
        *.gz) gzip -dc "$file" > "$dest/$name.ko" ;;
        *) cp "$file" "$dest/$name.ko" ;;
    esac
    dep_lines+=("$name.ko:${dep_files[*]:+ ${dep_files[*]}}")
}
for module in "${MODULES[@]}"; do
    add_module "$module"
done
printf '%s\n' "${dep_lines[@]}" > "$dest/modules.dep"
cp "$moddir/modules.builtin" "$dest/modules.builtin" 2>/dev/null || : > "$dest/modules.builtin"

cp "$vmlinuz" "$out/vmlinuz"
echo "$release" > "$out/release"
rm -rf "$root" "$apt_dir/debs" "$apt_dir/lists" "$apt_dir/cache"
echo "$package=$version" > "$out/package"
echo "${MODULES[*]}" > "$out/modules"
echo "fetch-kernel: $package=$version ($release) with ${dep_lines[*]%%:*} (built in: ${builtin_modules[*]:-none}) in $out" >&2
