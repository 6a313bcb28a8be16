#!/usr/bin/env bash
# The embedding API end to end, as an outside program sees it: installs the
# build into a temporary prefix, builds examples/embed against that prefix
# with find_package(vesicle), and runs it with real VMs on the guest images.
# Usage: scripts/test-embed.sh [BUILD_DIR]   (default: build/; images from
# VESICLE_IMAGES_DIR or BUILD_DIR/images). Leaves nothing behind: the prefix,
# the example's build, its state and memory files and any VM it left go,
# whatever happened.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$(realpath "${1:-$repo/build}")
images=$(realpath -m "${VESICLE_IMAGES_DIR:-$build_dir/images}")

for name in vmlinuz initrd.img rootfs.ext4; do
  if [ ! -r "$images/$name" ]; then
    echo "test-embed: no guest image $images/$name; run scripts/build.sh or set VESICLE_IMAGES_DIR" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/vesicle-embed-test.XXXXXX)
shm=$(mktemp -d /dev/shm/vesicle-embed-test.XXXXXX)
example_pid=

# Kills the example's process group (timeout makes one, led by its own
# pid, holding the example and its QEMUs) and any QEMU still naming this
# run's directories, by pid, then removes the directories.
cleanup() {
  trap '' INT TERM # a second signal must not cut the cleanup short
  if [ -n "$example_pid" ]; then
    kill -KILL -- "-$example_pid" 2>/dev/null || true
  fi
  local proc args
  for proc in /proc/[0-9]*; do
    args=$({ tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null) || continue
    case $args in
    *qemu-system*"$work/"* | *qemu-system*"$shm/"*) kill -KILL "${proc#/proc/}" 2>/dev/null || true ;;
    esac
  done
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # through the EXIT trap

echo "test-embed: installing $build_dir into $work/prefix"
cmake --install "$build_dir" --prefix "$work/prefix" >"$work/install.log" ||
  { cat "$work/install.log" >&2; exit 1; }

echo "test-embed: building examples/embed against the installed package"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$repo/examples/embed" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" >"$work/configure.log" ||
  { cat "$work/configure.log" >&2; exit 1; }
ninja -C "$work/build" >"$work/build.log" || { cat "$work/build.log" >&2; exit 1; }

echo "test-embed: running the example (real VMs)"
started=$(date +%s)
timeout --signal=TERM --kill-after=30 600 \
  "$work/build/embed_example" "$images" "$work/state" "$shm" &
example_pid=$!
wait "$example_pid"
echo "test-embed: the example took $(($(date +%s) - started)) s"
