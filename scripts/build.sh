#!/usr/bin/env bash
# Configures and builds vesicle (C++), then the guest images.
# Usage: scripts/build.sh [BUILD_DIR]   (default: build/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-$repo/build}

# ccache, keyed by paths relative to the checkout, so a fresh clone (CI) or
# another worktree reuses what an earlier build compiled.
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_DIR=${CCACHE_DIR:-/var/cache/vesicle/ccache} CCACHE_BASEDIR=$repo
  export CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
# Two cores, and some translation units (CAF, Beast) need >1 GiB each.
ninja -C "$build_dir" -j "$(nproc)"
bash "$repo/images/build.sh" --build-dir "$build_dir" --out "$build_dir/images"
