#!/usr/bin/env bash
# Measures Debian's backported QEMU 10 against the QEMU 7.2 hostd runs, for
# the choice between them that README.md's design section records (sealed
# memfds on 7.2 vs read-only private file mappings on 10). QEMU 10 is only
# unpacked under /var/cache/vesicle/qemu10, never installed: the system's
# QEMU stays 7.2. Adds bookworm-backports to apt's sources for the download.
#   scripts/measure-qemu10.sh [BUILD_DIR]   (needs snapshot_bench and images)
# Prints, for each: snapshot_bench's figures (restore, finish, PSS) with
# 7.2 and with 10; whether 10 restores a snapshot 7.2 saved; and which of
# the two can map a file its uid may only read as writable private RAM.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
bench=$build/tests/snapshot_bench
images=$build/images
[ -x "$bench" ] || { echo "measure-qemu10: $bench is missing; build it first" >&2; exit 2; }
cache=/var/cache/vesicle/qemu10
qemu72=/usr/bin/qemu-system-x86_64
qemu10=$cache/root/usr/bin/qemu-system-x86_64

if [ ! -x "$qemu10" ]; then
  sources=/etc/apt/sources.list.d/vesicle-backports.sources
  if ! apt-cache policy | grep -q bookworm-backports; then
    cat >"$sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt-get update -qq
  fi
  mkdir -p "$cache/debs"
  (cd "$cache/debs" && apt-get download -q qemu-system-x86/bookworm-backports \
    qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports)
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$cache/root"; done
fi
"$qemu72" -version | head -1
"$qemu10" -version | head -1

out=$build/bench/qemu10
mkdir -p "$out"
for q in 72 10; do
  binary=qemu$q
  echo "== snapshot_bench with QEMU ${q/72/7.2}"
  VESICLE_IMAGES_DIR=$images "$bench" --qemu "${!binary}" --count 10 --keep 3 \
    --json "$out/snapshot_qemu$q.json"
done

echo "== a snapshot QEMU 7.2 saved, restored by QEMU 10"
if VESICLE_IMAGES_DIR=$images "$bench" --qemu "$qemu72" --restore-qemu "$qemu10" --count 1 \
  --keep 0 >"$out/cross.log" 2>&1; then
  echo "restores"
else
  echo "does not restore: $(grep -m1 -i 'error\|fail' "$out/cross.log" || tail -1 "$out/cross.log")"
fi

echo "== RAM from a file the VM's uid may only read (0444, root's), mapped private"
file=$(mktemp -p /dev/shm vesicle-ro-XXXXXX.mem)
trap 'rm -f "$file"' EXIT
truncate -s 64M "$file"
chmod 0444 "$file"
for q in 72 10; do
  binary=qemu$q
  for options in share=off share=off,readonly=on,rom=off; do
    # -S: stop before the guest runs; still up after 2 s means QEMU took it.
    if result=$(timeout 2 setpriv --reuid 1999999999 --regid 1999999999 --clear-groups \
      "${!binary}" -M microvm -m 64M -display none -nodefaults -S -machine memory-backend=m \
      -object "memory-backend-file,id=m,size=64M,mem-path=$file,$options" 2>&1); then
      verdict="exited"
    elif [ $? = 124 ]; then
      verdict="starts"
    else
      verdict="refused: $(echo "$result" | head -1 | sed 's/.*: //')"
    fi
    printf 'QEMU %-4s %-32s %s\n' "${q/72/7.2}" "$options" "$verdict"
  done
done
