#!/usr/bin/env bash
# Configures and builds vesicle (C++), then the guest images.
# Usage: scripts/build.sh [BUILD_DIR]   (default: build/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-$repo/build}

cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# Two cores, and some translation units (CAF, Beast) need >1 GiB each.
ninja -C "$build_dir" -j "$(nproc)"
bash "$repo/images/build.sh" --build-dir "$build_dir" --out "$build_dir/images"
