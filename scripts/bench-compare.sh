#!/usr/bin/env bash
# Measures two builds of vesicle side by side on this machine, now: pool
# create, exec, fork and freeze/resume, each benchmark run for the old build
# and then the new one in turn, so both see the same load. For a change that
# must not make these figures worse (BENCHMARKS.md records the result).
#   scripts/bench-compare.sh OLD_CHECKOUT NEW_CHECKOUT [OUT_DIR]
# Each checkout must have been built (scripts/build.sh, or at least hostd,
# the guest images, api_bench and pool_bench in build/). Each side runs with
# its own hostd, guest images, benchmark programs and test harness, because
# a harness writes the config its own hostd understands (e.g. a newer one
# gives every test hostd its own cgroup parent, which an older hostd rejects
# as an unknown field). BENCHES="api fork" runs only those (default: pool
# api fork space).
#   git worktree add /tmp/old <commit> && scripts/build.sh /tmp/old/build
#   scripts/bench-compare.sh /tmp/old .
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
old=$(realpath "${1:?usage: bench-compare.sh OLD_CHECKOUT NEW_CHECKOUT [OUT_DIR]}")
new=$(realpath "${2:?usage: bench-compare.sh OLD_CHECKOUT NEW_CHECKOUT [OUT_DIR]}")
out=${3:-$repo/build/bench/compare}
mkdir -p "$out"
for tree in "$old" "$new"; do
  for need in build/hostd/hostd build/tests/api_bench build/tests/pool_bench; do
    [ -x "$tree/$need" ] || {
      echo "bench-compare: $tree/$need is missing; build that checkout first (scripts/build.sh)" >&2
      exit 2
    }
  done
  [ -f "$tree/build/images/manifest.txt" ] || {
    echo "bench-compare: $tree has no guest images in build/images; run scripts/build.sh there" >&2
    exit 2
  }
done

run() { # name checkout tag
  local name=$1 tree=$2 tag=$3
  local hostd=$tree/build/hostd/hostd images=$tree/build/images
  echo "== $name ($tag: $tree, $(git -C "$tree" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  case $name in
  pool)
    "$tree/build/tests/pool_bench" --hostd "$hostd" --images "$images" --hits 200 --misses 10 \
      --boots 2 --idle 2 --json "$out/pool_$tag.json" ;;
  api)
    "$tree/build/tests/api_bench" --hostd "$hostd" --images "$images" --sandboxes 3 --execs 100 \
      --json "$out/api_$tag.json" ;;
  fork)
    /usr/bin/python3 "$tree/tests/bench/fork_bench.py" --hostd "$hostd" --images "$images" \
      --ns 1 2 4 --reps 3 --json "$out/fork_$tag.json" ;;
  space)
    /usr/bin/python3 "$tree/tests/bench/space_bench.py" --hostd "$hostd" --images "$images" \
      --reps 5 --json "$out/space_$tag.json" ;;
  *)
    echo "bench-compare: unknown benchmark $name (pool, api, fork, space)" >&2
    exit 2 ;;
  esac
}

for name in ${BENCHES:-pool api fork space}; do
  run "$name" "$old" old
  run "$name" "$new" new
done
echo "bench-compare: JSON in $out"
