#!/usr/bin/env bash
# Measures two hostd builds side by side on this machine, now: pool create,
# exec and fork, each benchmark run for the old binary and then the new one
# in turn, so both see the same load. For a change that must not make these
# figures worse (BENCHMARKS.md records the result).
#   scripts/bench-compare.sh OLD_HOSTD NEW_HOSTD [OUT_DIR]
# The benchmark programs and guest images come from build/. BENCHES="api
# fork" runs only those (default: pool api fork).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: bench-compare.sh OLD_HOSTD NEW_HOSTD [OUT_DIR]}
new=${2:?usage: bench-compare.sh OLD_HOSTD NEW_HOSTD [OUT_DIR]}
out=${3:-$repo/build/bench/compare}
images=$repo/build/images
mkdir -p "$out"
for bin in "$old" "$new"; do
  [ -x "$bin" ] || { echo "bench-compare: $bin is not an executable hostd" >&2; exit 2; }
done

run() { # name hostd
  local name=$1 hostd=$2 tag=$3
  echo "== $name ($tag: $hostd)"
  case $name in
  pool)
    "$repo/build/tests/pool_bench" --hostd "$hostd" --images "$images" --hits 200 --misses 10 \
      --boots 2 --idle 2 --json "$out/pool_$tag.json" ;;
  api)
    "$repo/build/tests/api_bench" --hostd "$hostd" --images "$images" --sandboxes 3 --execs 100 \
      --json "$out/api_$tag.json" ;;
  fork)
    /usr/bin/python3 "$repo/tests/bench/fork_bench.py" --hostd "$hostd" --images "$images" \
      --ns 1 2 4 --reps 3 --json "$out/fork_$tag.json" ;;
  esac
}

for name in ${BENCHES:-pool api fork}; do
  run "$name" "$old" old
  run "$name" "$new" new
done
echo "bench-compare: JSON in $out"
