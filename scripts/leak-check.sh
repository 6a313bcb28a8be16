#!/usr/bin/env bash
# Fails if anything a vesicle test or run leaves behind is still on the
# machine: QEMU processes, guest memory files, per-VM runtime directories,
# and the temporary homes of the hostds the tests start.
set -uo pipefail
leaks=0
report() { echo "leak: $*"; leaks=1; }

if pids=$(pgrep -f 'qemu-system-x86_64.*vesicle' 2>/dev/null); then
  report "QEMU processes still running: $(echo $pids)"
fi
# Template RAM images (vesicle-template-*) are a cache hostd keeps on purpose.
shm=$(find /dev/shm -maxdepth 1 -name 'vesicle-*' ! -name 'vesicle-template-*' 2>/dev/null)
[ -z "$shm" ] || report "guest memory files in /dev/shm: $(echo $shm)"
for dir in ${VESICLE_RUNTIME_DIRS:-/var/lib/vesicle/run /run/vesicle}; do
  if [ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    report "runtime directory $dir is not empty: $(ls "$dir" | head -5 | xargs)"
  fi
done
stale=$(find /tmp /dev/shm -maxdepth 1 \( -name 'hostd-it-*' -o -name 'vesicle-pool-it-*' -o -name 'vesicle-sdk-test-*' -o -name 'vesicle-ts-test-*' -o -name 'vesicle-actor-test-*' -o -name 'vesicle-runtime-test-*' -o -name 'vesicle-embed-test.*' \) 2>/dev/null)
[ -z "$stale" ] || report "test directories left behind: $(echo $stale)"
# Confinement: cgroup leaves (and the roots of test hostds), processes
# running as VM uids (confinement.uid_first 1900000000, 65536 of them),
# uid lock files.
cgroups=$(find /sys/fs/cgroup/memory /sys/fs/cgroup/pids /sys/fs/cgroup/cpu /sys/fs/cgroup/unified \
  -mindepth 1 -maxdepth 2 -type d -name 'vesicle*' 2>/dev/null)
[ -z "$cgroups" ] || report "cgroups left: $(echo $cgroups | head -c 600)"
# (A QEMU killed as its hostd stopped may take a moment to be reaped.)
for _ in 1 2 3 4 5 6 7 8 9 10; do
  vm_uids=$(ps -e -o uid=,pid=,comm= 2>/dev/null | awk '$1 >= 1900000000 && $1 < 1900065536')
  [ -z "$vm_uids" ] && break
  sleep 0.5
done
[ -z "$vm_uids" ] || report "processes running as VM uids: $(echo $vm_uids)"
locks=$(ls -A /run/vesicle-uids 2>/dev/null)
[ -z "$locks" ] || report "uid locks left in /run/vesicle-uids: $(echo $locks | head -c 300)"
# Network namespaces, links, nft tables and ip rules of the network layer.
bash "$(dirname "$0")/testnet/net-leaks.sh" || leaks=1
[ $leaks = 0 ] && echo "leak check: clean (no QEMU process, memory file, VM directory, namespace, link or nft table left)"
exit $leaks
