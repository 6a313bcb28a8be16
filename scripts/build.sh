#!/usr/bin/env bash
# Configures and builds vesicle (C++), then the guest images.
# Usage: scripts/build.sh [--sanitize] [BUILD_DIR]
#   default: everything and the images in build/
#   --sanitize: an ASan + UBSan build (-DVESICLE_SANITIZE=ON) of only what the
#               unit tests need (target unit_tests), no images; default
#               build-asan/
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
sanitize=0
if [ "${1:-}" = --sanitize ]; then
  sanitize=1
  shift
fi
if [ $sanitize = 1 ]; then
  build_dir=${1:-$repo/build-asan}
  # Debug: assertions on; CMakeLists.txt adds -O1 with the sanitizers.
  config=(-DCMAKE_BUILD_TYPE=Debug -DVESICLE_SANITIZE=ON)
  targets=(unit_tests)
else
  build_dir=${1:-$repo/build}
  config=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DVESICLE_SANITIZE=OFF)
  targets=()
fi

# ccache, keyed by paths relative to the checkout, so a fresh clone (CI) or
# another worktree reuses what an earlier build compiled.
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_DIR=${CCACHE_DIR:-/var/cache/vesicle/ccache} CCACHE_BASEDIR=$repo
  export CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$repo" -B "$build_dir" -G Ninja "${config[@]}" "${launcher[@]}" >/dev/null
# Two cores, and some translation units (CAF, Beast) need >1 GiB each.
ninja -C "$build_dir" -j "$(nproc)" "${targets[@]}"
[ $sanitize = 1 ] || bash "$repo/images/build.sh" --build-dir "$build_dir" --out "$build_dir/images"
