#!/usr/bin/env bash
# The soak (issue 14) at full size, by hand: 1000 create/exec/destroy
# cycles and 200 fork/merge cycles against a real hostd while hostile
# guests run beside them (output flood, fd flood, memory bomb, fork bomb,
# agent-channel floods), then hostd's fds and RSS, QEMU processes, runtime
# and shm files, cgroups, network namespaces, links, nft rules and routes
# must be back at baseline. Prints a normal sandbox's exec p50/p99 during
# the soak and writes the figures as JSON. CI runs the same test short
# (20/16) through ctest (soak_integration_test).
#
#   scripts/soak.sh [--cycles N] [--forks M] [--floods K] [--json FILE] [BUILD_DIR]
#
# Needs root, a built tree (ninja -C BUILD_DIR soak_integration_test) and
# the guest images in BUILD_DIR/images (or VESICLE_IMAGES_DIR).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cycles=1000 forks=200 floods=10 json="" build_dir=$repo/build
while [ $# -gt 0 ]; do
  case $1 in
    --cycles) cycles=$2; shift 2 ;;
    --forks) forks=$2; shift 2 ;;
    --floods) floods=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) build_dir=$1; shift ;;
  esac
done
# Absolute: hostd refuses a relative images_dir, and the test runs elsewhere.
[ -d "$build_dir" ] || { echo "soak.sh: no build directory $build_dir (see --help)" >&2; exit 2; }
build_dir=$(cd "$build_dir" && pwd)
binary=$build_dir/tests/soak_integration_test
if [ ! -x "$binary" ]; then
  echo "soak.sh: $binary is missing; build it first: ninja -C $build_dir soak_integration_test" >&2
  exit 2
fi
[ -n "$json" ] || json=$build_dir/soak-$(date -u +%Y%m%dT%H%M%SZ).json
export VESICLE_IMAGES_DIR=${VESICLE_IMAGES_DIR:-$build_dir/images}
start=$SECONDS
status=0
VESICLE_SOAK_CYCLES=$cycles VESICLE_SOAK_FORKS=$forks VESICLE_SOAK_FLOODERS=$floods \
  VESICLE_SOAK_JSON=$json "$binary" || status=$?
echo "soak: $((SECONDS - start)) s, exit $status; figures in $json"
[ -f "$json" ] && cat "$json"
exit $status
