#!/usr/bin/env bash
# Runs vesicle's benchmarks and writes their JSON into build/bench/. Not part
# of the test suite: benchmarks check speed and memory, tests check behaviour.
#   vm_bench   cold boot to agent-ready, print(1) through the agent
#   api_bench  create / exec / destroy through hostd's HTTP API on loopback
#   net_bench  network slot acquire/release and NAT throughput (test namespaces)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build
out=$build/bench
mkdir -p "$out"
images=$build/images

[ "${SKIP_VM_BENCH:-}" ] || "$build/tests/vm_bench" --images "$images" --json "$out/vm_bench.json"

state=$(mktemp -d)
trap 'kill $hostd_pid 2>/dev/null; wait $hostd_pid 2>/dev/null; rm -rf "$state"' EXIT
cat >"$state/hostd.conf" <<CONF
listen: "127.0.0.1:0"
state_dir: "$state/state"
runtime_dir: "$state/run"
images_dir: "$images"
CONF
"$build/hostd/hostd" --config "$state/hostd.conf" >"$state/log" 2>&1 &
hostd_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$state/log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$state/log" | head -n 1)
key=$(grep -E '^vsk_' "$state/log" | head -n 1)
/usr/bin/python3 "$repo/tests/bench/api_bench.py" --url "$url" --key "$key" --json "$out/api_bench.json"

"$build/tests/net_bench" --json "$out/net_bench.json"
