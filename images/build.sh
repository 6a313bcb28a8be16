#!/usr/bin/env bash
# Builds the guest images and links them into --out as vmlinuz, initrd.img
# and rootfs.ext4 (the files hostd and the tests boot from).
#
# Each stage's output is cached under $VESICLE_CACHE_DIR (default
# /var/cache/vesicle/images) by a hash of everything that goes into it, so a
# second run is a no-op and only a changed recipe or binary rebuilds:
#   kernel-<hash>     Debian's cloud kernel + virtio modules   (kernel.sh)
#   rootfs-<hash>     the Debian tree, debootstrap            (rootfs.sh, packages.txt)
#   initrd-<hash>     initramfs: /init + modules              (kernel, vesicle-init)
#   disk-<hash>       rootfs.ext4: the tree + agent + REPL    (rootfs, agent, repl.py)
# Stages take a lock, so concurrent builds wait for each other instead of
# building the same thing twice.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
build_dir=$repo/build
out=
agent=
repl=
init=
cache=${VESICLE_CACHE_DIR:-/var/cache/vesicle/images}

usage() {
  cat <<USAGE
usage: images/build.sh [--build-dir DIR] [--out DIR] [--agent PATH] [--repl PATH] [--init PATH]
  --build-dir  the CMake build directory holding vesicle-agent and vesicle-init (default: build/)
  --out        where to link vmlinuz, initrd.img, rootfs.ext4 (default: BUILD_DIR/images)
  --agent, --repl, --init  override the guest agent, REPL driver, initramfs init
USAGE
}

while (($#)); do
  case $1 in
    --build-dir) build_dir=$(realpath "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --agent) agent=$(realpath "$2"); shift 2 ;;
    --repl) repl=$(realpath "$2"); shift 2 ;;
    --init) init=$(realpath "$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "images/build.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
out=${out:-$build_dir/images}
agent=${agent:-$build_dir/guest/agent/vesicle-agent}
repl=${repl:-$repo/guest/repl/repl.py}
init=${init:-$build_dir/guest/init/vesicle-init}
for input in "$agent" "$repl" "$init"; do
  [ -f "$input" ] || { echo "images/build.sh: $input is missing; build the project first (scripts/build.sh)" >&2; exit 1; }
done

mkdir -p "$cache"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# cached STAGE KEY FUNCTION: runs FUNCTION DIR unless $cache/STAGE-KEY exists.
cached() {
  local stage=$1 key=$2 recipe=$3 final="$cache/$1-$2"
  exec {lock}>"$cache/.$stage-$key.lock"
  flock "$lock"
  if [ ! -e "$final" ]; then
    echo "images: building $stage ($key)" >&2
    local started=$SECONDS
    rm -rf "$final.tmp"
    mkdir -p "$final.tmp"
    "$recipe" "$final.tmp"
    mv "$final.tmp" "$final"
    echo "images: built $stage in $((SECONDS - started)) s" >&2
  fi
  exec {lock}>&-
  rm -f "$cache/.$stage-$key.lock"
}

build_kernel() { bash "$here/kernel.sh" "$1"; }
build_rootfs() { bash "$here/rootfs.sh" "$1"; }

build_initrd() {
  local staging
  staging=$(mktemp -d)
  mkdir -p "$staging"/{dev,proc,etc,lib/modules,newroot}
  install -m 0755 "$init" "$staging/init"
  strip "$staging/init"
  cp "$kernel_dir"/modules/*.ko "$staging/lib/modules/"
  # Dependencies first: kernel.sh extracted them in this order, checked
  # against each module's depends= string.
  printf '%s\n' virtio_ring virtio virtio_mmio virtio_console virtio_blk failover net_failover \
    virtio_net >"$staging/etc/modules.order"
  mknod -m 600 "$staging/dev/console" c 5 1
  (cd "$staging" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -9) \
    >"$1/initrd.img"
  rm -rf "$staging"
}

build_disk() {
  local tree tree_mib files disk_mib
  tree=$(mktemp -d -p "$cache")
  cp -a "$rootfs_dir/." "$tree/"
  install -d -m 0755 "$tree/usr/lib/vesicle"
  install -m 0755 "$agent" "$tree/usr/lib/vesicle/agent"
  strip "$tree/usr/lib/vesicle/agent"
  install -m 0644 "$repl" "$tree/usr/lib/vesicle/repl.py"
  # As small as the tree allows: the image's size is the smallest disk_mib
  # a sandbox can have, since its disk is a qcow2 overlay of this size or
  # larger (the overlay's virtual size is the quota). The agent grows the
  # filesystem online to each sandbox's disk at boot. Room: the tree (in
  # 4 KiB blocks, as ext4 stores it), a tenth on top for ext4's metadata
  # (inode tables, bitmaps, extent blocks) and 64 MiB for the 32 MiB
  # journal and a little free space. No root reserve (-m 0): everything in
  # a sandbox runs as root anyway. Inodes: the default one per 16 KiB (new
  # groups of a grown filesystem get the same), and never fewer than twice
  # the tree's files.
  tree_mib=$(du -s --block-size=1M "$tree" | cut -f1)
  files=$(find "$tree" | wc -l)
  disk_mib=$((tree_mib + tree_mib / 10 + 64))
  mkfs.ext4 -q -F -L vesicle-root -d "$tree" -b 4096 -m 0 -J size=32 \
    -N $((files * 2 > disk_mib * 64 ? files * 2 : disk_mib * 64)) \
    -E lazy_itable_init=0,lazy_journal_init=0 "$1/rootfs.ext4" "${disk_mib}M"
  echo "images: rootfs.ext4 is ${disk_mib} MiB (tree ${tree_mib} MiB, $files files)" >&2
  chmod 0444 "$1/rootfs.ext4"
  rm -rf "$tree"
}

kernel_key=$(hash_of "$here/kernel.sh")
cached kernel "$kernel_key" build_kernel
kernel_dir=$cache/kernel-$kernel_key

rootfs_key=$(hash_of "$here/rootfs.sh" "$here/packages.txt")
cached rootfs "$rootfs_key" build_rootfs
rootfs_dir=$cache/rootfs-$rootfs_key

initrd_key=$( (echo "$kernel_key"; cat "$init" "$here/build.sh") | sha256sum | cut -c1-16)
cached initrd "$initrd_key" build_initrd

disk_key=$( (echo "$rootfs_key"; cat "$agent" "$repl" "$here/build.sh") | sha256sum | cut -c1-16)
cached disk "$disk_key" build_disk

mkdir -p "$out"
ln -sfn "$kernel_dir/vmlinuz" "$out/vmlinuz"
ln -sfn "$cache/initrd-$initrd_key/initrd.img" "$out/initrd.img"
ln -sfn "$cache/disk-$disk_key/rootfs.ext4" "$out/rootfs.ext4"
cat >"$out/manifest.txt" <<MANIFEST
kernel $(cat "$kernel_dir/version") $kernel_key
rootfs $rootfs_key
initrd $initrd_key
disk $disk_key $(($(stat -c %s "$cache/disk-$disk_key/rootfs.ext4") >> 20))MiB
MANIFEST

# Disk images of older agents pile up while developing; drop those unused
# for a day (a running VM's overlay keeps a file it uses open).
find "$cache" -maxdepth 1 -name 'disk-*' -mmin +1440 ! -name "disk-$disk_key" -exec rm -rf {} + 2>/dev/null || true
echo "images: ready in $out" >&2
