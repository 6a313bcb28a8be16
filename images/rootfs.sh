#!/usr/bin/env bash
# Builds the guest's Debian tree (without vesicle's own files) into $1.
# Slow (debootstrap, a few minutes); images/build.sh caches the result by the
# hash of this script and packages.txt.
set -euo pipefail
out=$1
mirror=${VESICLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
packages=$(grep -v '^#' "$here/packages.txt" | grep -v '^$' | paste -sd' ' -)

# The packages go in with apt, not debootstrap --include: debootstrap's
# resolver always takes the first of alternative dependencies, and
# python3-matplotlib's python3-fonttools depends on "python3-scipy |
# python3-munkres", so it would drag in scipy, pythran and a C++ compiler.
# apt takes the alternative packages.txt already asks for.
debootstrap --variant=minbase bookworm "$out" "$mirror"
mount -t proc proc "$out/proc"
trap 'umount "$out/proc"' EXIT
# shellcheck disable=SC2086 # one word per package
chroot "$out" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends $packages
chroot "$out" apt-get clean
# matplotlib lists the system's fonts on its first import (seconds under
# TCG) and caches the list in ~/.cache/matplotlib: build that cache here,
# for root, whose HOME (/root) the REPL runs with.
chroot "$out" env HOME=/root MPLBACKEND=Agg python3 -c 'import matplotlib.pyplot'
umount "$out/proc"
trap - EXIT

# The guest never runs apt or man: drop caches and docs to shrink the image.
rm -rf "$out"/var/cache/apt/archives/*.deb "$out"/var/lib/apt/lists/* \
  "$out"/usr/share/doc/* "$out"/usr/share/man/* "$out"/usr/share/info/*
# Identity is set by the agent at boot; these are placeholders.
# pip installs as root into the guest's Python without
# --break-system-packages: the sandbox is the user's own throwaway machine,
# not a Debian system to protect from pip (PEP 668's marker).
rm -f "$out"/usr/lib/python3*/EXTERNALLY-MANAGED
echo vesicle >"$out/etc/hostname"
: >"$out/etc/machine-id"
printf 'nameserver 10.0.2.3\n' >"$out/etc/resolv.conf"
mkdir -p "$out/usr/lib/vesicle" "$out/data"
