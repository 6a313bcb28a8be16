#!/usr/bin/env bash
# Extracts Debian's cloud kernel (not installed on the host) into $1:
#   vmlinuz, version, modules/<name>.ko for the virtio drivers the guest needs.
set -euo pipefail
out=$1
work=$(mktemp -d)
chmod 0755 "$work" # apt-get download drops privileges to _apt
trap 'rm -rf "$work"' EXIT

# linux-image-cloud-amd64 is a metapackage; its dependency is the kernel.
package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$package" ]; then
  apt-get update -qq
  package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
(cd "$work" && apt-get download -qq "$package")
dpkg-deb -x "$work"/*.deb "$work/root"

version=$(ls "$work/root/lib/modules")
mkdir -p "$out/modules"
cp "$work/root/boot/vmlinuz-$version" "$out/vmlinuz"
echo "$version" >"$out/version"
for module in virtio_ring virtio virtio_mmio virtio_console virtio_blk failover net_failover virtio_net; do
  path=$(find "$work/root/lib/modules/$version" -name "$module.ko*" | head -n 1)
  [ -n "$path" ] || { echo "kernel.sh: module $module not found in $package" >&2; exit 1; }
  case "$path" in
    *.ko.xz) xz -dc "$path" >"$out/modules/$module.ko" ;;
    *.ko.zst) zstd -qdc "$path" >"$out/modules/$module.ko" ;;
    *) cp "$path" "$out/modules/$module.ko" ;;
  esac
done
