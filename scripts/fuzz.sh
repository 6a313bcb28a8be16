#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan) and runs
# each for a fixed time from its seed corpus. A crash, sanitizer report or
# failed property fails the run; libFuzzer saves the input under
# <build>/artifacts/<target>/ (replay it with `<build>/tests/fuzz/<target>
# <file>`, then add it to tests/fuzz/regressions/<target>/ with the fix).
#
# Usage: scripts/fuzz.sh [--seconds N] [--build-dir DIR] [--build-only] [TARGET...]
#   --seconds N: how long each target runs (default 15)
#   TARGET: only these (default: all, tests/fuzz/targets.cmake)
# Each target's working corpus (the seeds plus what the fuzzer found) stays
# in <build>/corpus/<target>, so a later run starts from there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=15
build_dir=$repo/build-fuzz
build_only=0
while (($#)); do
  case $1 in
  --seconds) seconds=$2; shift 2 ;;
  --build-dir) build_dir=$2; shift 2 ;;
  --build-only) build_only=1; shift ;;
  -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  *) break ;;
  esac
done
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(sed -n 's/^  \(fuzz_[a-z_]*\).*/\1/p' "$repo/tests/fuzz/targets.cmake")
fi

# The same ccache as scripts/build.sh (keyed by paths relative to the checkout).
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_DIR=${CCACHE_DIR:-/var/cache/vesicle/ccache} CCACHE_BASEDIR=$repo
  export CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
# Debug: assertions on; CMakeLists.txt adds -O1 and the sanitizers.
cmake -S "$repo" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DVESICLE_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
ninja -C "$build_dir" -j "$(nproc)" "${targets[@]}"
((build_only)) && exit 0

# Reports are fatal; leaks too (a parser that leaks per message is a leak in
# hostd). The test suite runs under ASan anyway, so no extra allocator
# checks here.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
printf '%-20s %8s %12s %6s %6s  %s\n' target seconds executions cov ft result
for target in "${targets[@]}"; do
  corpus=$build_dir/corpus/$target
  artifacts=$build_dir/artifacts/$target/
  log=$build_dir/logs/$target.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a parser
  # that allocates for a length it was told, not one it saw, shows here.
  result=ok
  if ! "$build_dir/tests/fuzz/$target" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts" \
    "$corpus" "$repo/tests/fuzz/corpus/$target" >"$log" 2>&1; then
    result="FAILED (log: $log; input: $(ls -t "$artifacts" | head -1))"
    status=1
  fi
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  coverage=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$coverage")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$coverage")
  printf '%-20s %8s %12s %6s %6s  %s\n' "$target" "$seconds" "${executions:-?}" "${cov:-?}" \
    "${ft:-?}" "$result"
  if [ "$result" != ok ]; then
    grep -E 'ERROR|runtime error|property failed|SUMMARY' "$log" | head -5 || true
  fi
done
exit $status
