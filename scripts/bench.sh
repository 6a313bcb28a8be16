#!/usr/bin/env bash
# Runs vesicle's benchmarks and writes their JSON into build/bench/. Not part
# of the test suite: benchmarks check speed and memory, tests check behaviour.
#   vm_bench   cold boot to agent-ready, print(1) through the agent
#   api_bench  create / exec / destroy through hostd's HTTP API on loopback
#   pool_bench warm pool: create on hit / miss / cold boot, refill, memory per idle sandbox
#   full_snapshot_bench  full-RAM save and restore (what forks of pool VMs and Spaces use)
#   fork_bench fork(n) through the SDK: latency at the SDK and server-side, first exec, PSS per child
#   space_bench freeze and resume through the SDK (idle, and 200 MiB in the REPL): latency, first exec, Space size
#   template_bench create from a saved template's pool vs the base pool (and with no pool), through the SDK
#   net_bench  network slot acquire/release and NAT throughput (test namespaces)
#   net_vm_bench  HTTP throughput from a real VM through NAT and the allowlist proxy
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build
out=$build/bench
mkdir -p "$out"
images=$build/images

[ "${SKIP_VM_BENCH:-}" ] || "$build/tests/vm_bench" --images "$images" --json "$out/vm_bench.json"

"$build/tests/api_bench" --hostd "$build/hostd/hostd" --images "$images" --json "$out/api_bench.json"

"$build/tests/pool_bench" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/pool_bench.json" ${POOL_BENCH_ARGS:-}

[ "${SKIP_VM_BENCH:-}" ] || VESICLE_IMAGES_DIR=$images "$build/tests/full_snapshot_bench" \
  --json "$out/full_snapshot_bench.json"

/usr/bin/python3 "$repo/tests/bench/fork_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/fork_bench.json" ${FORK_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/space_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/space_bench.json" ${SPACE_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/template_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/template_bench.json" ${TEMPLATE_BENCH_ARGS:-}

"$build/tests/net_bench" --json "$out/net_bench.json"

[ "${SKIP_VM_BENCH:-}" ] || "$build/tests/net_vm_bench" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/net_vm_bench.json"
