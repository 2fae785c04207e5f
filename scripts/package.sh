#!/usr/bin/env bash
# Builds the Debian package into target/debian/ (tmem_VERSION-1_ARCH.deb) with cargo-deb, as the
# root Cargo.toml's [package.metadata.deb] describes it: the release binary, tmem.service
# (packaging/systemd/), /etc/tmem/tmem.toml (packaging/tmem.toml, a conffile), man pages and
# bash/zsh/fish completions, generated here by the binary itself (the hidden `tmem generate`)
# so they match it. Installs cargo-deb (pinned) and dpkg-dev (dpkg-shlibdeps, for the
# package's library dependencies) if missing. Reuses target/release/tmem when it is up to
# date (scripts/guest/run.sh builds the same one).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_deb_version=3.8.0
target_dir="${CARGO_TARGET_DIR:-target}"

if ! command -v dpkg-shlibdeps >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dpkg-dev >/dev/null
fi
if ! cargo deb --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
    # (without the caller's RUSTFLAGS: CI's `-D warnings` is for our code, not for cargo-deb's)
    RUSTFLAGS= cargo install --locked cargo-deb --version "$cargo_deb_version"
fi

cargo build --release --locked --bin tmem
tmem="$target_dir/release/tmem"

# Generated files, where [package.metadata.deb]'s assets expect them (relative to the repo,
# whatever CARGO_TARGET_DIR is).
generated=target/packaging
rm -rf "$generated"
"$tmem" generate man "$generated/man" >/dev/null
gzip -9n "$generated"/man/*.1
"$tmem" generate completions "$generated/completions" >/dev/null

mkdir -p target/debian
rm -f target/debian/*.deb
# Stripped: the line tables [profile.release] keeps (for backtraces and the guest tests'
# addr2line) would make /usr/bin/tmem 130 MiB; target/release/tmem keeps them.
cargo deb --no-build --strip --output target/debian/
ls -l target/debian/*.deb
