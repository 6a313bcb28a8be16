#!/usr/bin/env bash
# Builds the guest's Debian tree (without vesicle's own files) into $1.
# Slow (debootstrap, a few minutes); images/build.sh caches the result by the
# hash of this script and packages.txt.
set -euo pipefail
out=$1
mirror=${VESICLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
include=$(grep -v '^#' "$here/packages.txt" | grep -v '^$' | paste -sd, -)

debootstrap --variant=minbase --include="$include" bookworm "$out" "$mirror"

# The guest never runs apt or man: drop caches and docs to shrink the image.
rm -rf "$out"/var/cache/apt/archives/*.deb "$out"/var/lib/apt/lists/* \
  "$out"/usr/share/doc/* "$out"/usr/share/man/* "$out"/usr/share/info/*
# Identity is set by the agent at boot; these are placeholders.
echo vesicle >"$out/etc/hostname"
: >"$out/etc/machine-id"
printf 'nameserver 10.0.2.3\n' >"$out/etc/resolv.conf"
mkdir -p "$out/usr/lib/vesicle" "$out/data"
