#!/usr/bin/env bash
# Runs vesicle's benchmarks and writes their JSON into build/bench/. Not part
# of the test suite: benchmarks check speed and memory, tests check behaviour.
#   vm_bench   cold boot to agent-ready, print(1) through the agent
#   api_bench  create / exec / destroy through hostd's HTTP API on loopback
#   pool_bench warm pool: create on hit / miss / cold boot, refill, memory per idle sandbox
#              (misses with a QEMU started ahead; pool_bench_cold.json: --prestarted 0)
#   full_snapshot_bench  full-RAM save and restore (what forks of pool VMs and Spaces use)
#   fork_bench fork(n) through the SDK: latency at the SDK and server-side, first exec, PSS per
#              child, family memory growth; issue 15's rows as fork_{pool,boot,grandchild,memory,pool_memory}.json:
#                fork_bench.py --source pool --ns 1 5 --parent-mib 100   (default Sandbox(), warm pool)
#                fork_bench.py --source boot --ns 1                      (cold-booted parent)
#                fork_bench.py --source pool --grandchild --ns 1         (fork of a fork child)
#                fork_bench.py --source boot --ns 4 --parent-mib 200     (host memory growth)
#                fork_bench.py --source pool --ns 4 --parent-mib 200     (the same, pool parent)
#                fork_bench.py --source pool --ns 5 --parent-mib 100 --prestarted 5
#                                                  (every child of fork(5) started ahead)
#              (~1 min each at these sizes; --reps N for more)
#   density_bench idle default Sandbox()s until admission refuses (or --max), at the default
#              admission and at memory and disk overcommit 10: count, PSS/USS per sandbox,
#              exec p50/p99 at 25/50/100%
#                density_bench.py [--max 200] [--overcommit 0 10] [--disk-overcommit 10]
#                                 [--execs 200] [--disk-mib 1536]
#                                 [--no-network]
#   exec_bench hostd CPU per print(1) (1000 sequential, /proc/<hostd>/stat) and execs/s with
#              1, 2, 4, 6 clients on their own sandboxes
#                exec_bench.py [--execs 1000] [--clients 1 2 4 6] [--seconds 10]
#   pool_net_bench pool hit with networking on: default egress, egress off, allowlist, and no
#              networking (needs an uplink: scripts/detect-network.sh)
#                pool_net_bench.py [--hits 30] [--no-baseline]
#   space_bench freeze and resume through the SDK (idle, and 200 MiB in the REPL): latency, first exec, Space size
#   template_bench create from a saved template's pool vs the base pool (and with no pool), through the SDK
#   net_bench  network slot acquire/release and NAT throughput (test namespaces)
#   net_vm_bench  HTTP throughput from a real VM through NAT and the allowlist proxy
# At the end, also when a benchmark failed, tests/bench/bench_tables.py writes
# build/bench/TABLES.md from whatever JSON is there (and prints it): issue 15's table,
# p50 / p95 of this run beside the figures last recorded in BENCHMARKS.md
# (tests/bench/recorded_figures.json), the issue's targets and the hosted product's
# published figures; a report missing is "not run". `bench_tables.py --record` makes
# this run's figures the recorded ones.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build
out=$build/bench
mkdir -p "$out"
images=$build/images
# Issue 15's table on the way out, whatever ran; the exit status stays the run's.
trap '/usr/bin/python3 "$repo/tests/bench/bench_tables.py" --dir "$out" || true' EXIT

[ "${SKIP_VM_BENCH:-}" ] || "$build/tests/vm_bench" --images "$images" --json "$out/vm_bench.json"

"$build/tests/api_bench" --hostd "$build/hostd/hostd" --images "$images" --json "$out/api_bench.json"

"$build/tests/pool_bench" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/pool_bench.json" ${POOL_BENCH_ARGS:-}
"$build/tests/pool_bench" --hostd "$build/hostd/hostd" --images "$images" --hits 0 --boots 0 \
  --idle 0 --prestarted 0 --json "$out/pool_bench_cold.json"

[ "${SKIP_VM_BENCH:-}" ] || VESICLE_IMAGES_DIR=$images "$build/tests/full_snapshot_bench" \
  --json "$out/full_snapshot_bench.json"

/usr/bin/python3 "$repo/tests/bench/fork_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/fork_bench.json" ${FORK_BENCH_ARGS:-}

# Issue 15's fork rows (see the header).
fork15() {
  local name=$1
  shift
  /usr/bin/python3 "$repo/tests/bench/fork_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
    --json "$out/fork_$name.json" "$@" ${FORK15_BENCH_ARGS:-}
}
fork15 pool --source pool --ns 1 5 --parent-mib 100
fork15 boot --source boot --ns 1
fork15 grandchild --source pool --grandchild --ns 1
fork15 memory --source boot --ns 4 --parent-mib 200 --reps 3
fork15 pool_memory --source pool --ns 4 --parent-mib 200 --reps 3
fork15 pool5 --source pool --ns 5 --parent-mib 100 --prestarted 5

/usr/bin/python3 "$repo/tests/bench/density_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/density_bench.json" ${DENSITY_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/exec_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/exec_bench.json" ${EXEC_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/pool_net_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/pool_net_bench.json" ${POOL_NET_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/space_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/space_bench.json" ${SPACE_BENCH_ARGS:-}

/usr/bin/python3 "$repo/tests/bench/template_bench.py" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/template_bench.json" ${TEMPLATE_BENCH_ARGS:-}

"$build/tests/net_bench" --json "$out/net_bench.json"

[ "${SKIP_VM_BENCH:-}" ] || "$build/tests/net_vm_bench" --hostd "$build/hostd/hostd" --images "$images" \
  --json "$out/net_vm_bench.json"
