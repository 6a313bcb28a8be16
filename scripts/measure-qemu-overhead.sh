#!/usr/bin/env bash
# Measures what a TCG microVM's QEMU uses beyond its guest RAM: the figure
# behind vmm/cgroup.hpp's kQemuOverheadBytes. Boots a VM with vesicle-vm in a
# cgroup v1 memory leaf without a limit, runs a workload that touches most of
# the guest's RAM and a lot of guest code (numpy, pandas, matplotlib: the TCG
# translation buffer fills), and samples QEMU every 200 ms:
#   anon     RssAnon (QEMU's heap, stacks, the translation buffer)
#   tb       the translation buffer's own RSS (its mapping is tb-size long)
#   shmem    RssShmem (the guest RAM file it has touched)
#   file     RssFile (its binary and libraries)
#   threads  its threads (each counts against pids.max)
#   cgroup   the leaf's memory.max_usage_in_bytes (all of the above plus the
#            kernel memory charged to it: page tables, sockets; and
#            vesicle-vm's own few MiB)
# and prints the peaks. The overhead is cgroup - guest RAM - vesicle-vm's RSS,
# and anon - tb for QEMU's own heap.
# max_usage counts page cache too (the disk images QEMU reads): reclaimable,
# so it overstates what a limit must hold; LIMIT_MIB=N runs the same under a
# limit of N MiB, which finds the smallest limit the VM survives.
# Usage: [LIMIT_MIB=N] scripts/measure-qemu-overhead.sh [BUILD_DIR] [MEMORY_MIB] [VCPUS]
# (root, cgroup v1 memory at /sys/fs/cgroup/memory; BUILD_DIR/images built)
set -euo pipefail
build=$(realpath "${1:-build}")
mib=${2:-512}
vcpus=${3:-2}
cg=/sys/fs/cgroup/memory/vesicle-measure-$$
mkdir "$cg"
# LIMIT_MIB: run under that memory limit (no swap) instead, to find the
# smallest limit the workload survives.
if [ -n "${LIMIT_MIB:-}" ]; then
  echo $((LIMIT_MIB << 20)) >"$cg/memory.limit_in_bytes"
  echo $((LIMIT_MIB << 20)) >"$cg/memory.memsw.limit_in_bytes"
fi
out=$(mktemp -d)
runner=
cleanup() {
  [ -n "$runner" ] && kill "$runner" 2>/dev/null && wait "$runner" 2>/dev/null
  for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$cg" 2>/dev/null && break; sleep 0.2; done
  rm -rf "$out"
}
trap cleanup EXIT

# Half the guest's RAM touched; then code: imports and a chart.
fill=$((mib * 50 / 100))
code="import numpy, pandas, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
b = b'x' * ($fill << 20)
df = pandas.DataFrame(numpy.random.rand(20000, 8)); s = df.describe().to_string()
plt.plot(df[0][:500]); plt.savefig('/tmp/p.png'); print(len(b) >> 20, 'MiB touched')"

(
  echo "$BASHPID" >"$cg/cgroup.procs"
  exec "$build/vmm/cli/vesicle-vm" run --images "$build/images" --memory-mib "$mib" \
    --vcpus "$vcpus" --code "$code" --bash 'tar -cf - /usr /var 2>/dev/null | wc -c'
) >"$out/log" 2>&1 &
runner=$!

peak_anon=0 peak_tb=0 peak_shmem=0 peak_file=0 peak_threads=0 peak_runner=0
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status" 2>/dev/null || echo 0; }
while kill -0 "$runner" 2>/dev/null; do
  qemu=$(pgrep -P "$runner" | head -1 || true)
  if [ -n "$qemu" ]; then
    anon=$(kib RssAnon "$qemu") shmem=$(kib RssShmem "$qemu") file=$(kib RssFile "$qemu")
    threads=$(kib Threads "$qemu")
    # The translation buffer: the one anonymous rwx mapping of tb-size (64 MiB).
    tb=$(awk '/^[0-9a-f]+-[0-9a-f]+ rwxp 00000000 00:00 0/ { want = 1; next }
              /^[0-9a-f]+-[0-9a-f]+ / { want = 0 }
              want && $1 == "Rss:" { sum += $2 } END { print sum + 0 }' "/proc/$qemu/smaps" 2>/dev/null || echo 0)
    ((${anon:-0} > peak_anon)) && peak_anon=$anon
    ((${tb:-0} > peak_tb)) && peak_tb=$tb
    ((${shmem:-0} > peak_shmem)) && peak_shmem=$shmem
    ((${file:-0} > peak_file)) && peak_file=$file
    ((${threads:-0} > peak_threads)) && peak_threads=$threads
  fi
  r=$(kib VmRSS "$runner")
  ((${r:-0} > peak_runner)) && peak_runner=$r
  sleep 0.2
done
wait "$runner" || true
runner=
cat "$out/log" | tail -5
cg_peak=$(($(cat "$cg/memory.max_usage_in_bytes") >> 10))
echo "guest RAM ${mib} MiB, ${vcpus} vCPUs; peaks in MiB:"
echo "  QEMU anon $((peak_anon >> 10)) (translation buffer $((peak_tb >> 10)), the rest $(((peak_anon - peak_tb) >> 10)))"
echo "  QEMU shmem $((peak_shmem >> 10)) file $((peak_file >> 10)) threads $peak_threads"
echo "  vesicle-vm RSS $((peak_runner >> 10))"
echo "  cgroup max_usage $((cg_peak >> 10)): beyond guest RAM and vesicle-vm $(((cg_peak - peak_runner) / 1024 - mib))"
echo "  of which kernel memory (page tables, slab, sockets) at most $(($(cat "$cg/memory.kmem.max_usage_in_bytes") >> 20))"
echo "  at the end: $(awk '$1 ~ /^(cache|rss|shmem|mapped_file)$/ { printf "%s %d ", $1, $2 / 1048576 }' "$cg/memory.stat")"
echo "  oom kills in the cgroup: $(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control")"
