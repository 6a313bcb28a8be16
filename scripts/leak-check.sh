#!/usr/bin/env bash
# Fails if anything a vesicle test or run leaves behind is still on the
# machine: QEMU processes, guest memory files, per-VM runtime directories.
set -uo pipefail
leaks=0
report() { echo "leak: $*"; leaks=1; }

if pids=$(pgrep -f 'qemu-system-x86_64.*vesicle' 2>/dev/null); then
  report "QEMU processes still running: $(echo $pids)"
fi
shm=$(find /dev/shm -maxdepth 1 -name 'vesicle-*' 2>/dev/null)
[ -z "$shm" ] || report "guest memory files in /dev/shm: $(echo $shm)"
for dir in ${VESICLE_RUNTIME_DIRS:-/run/vesicle}; do
  if [ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    report "runtime directory $dir is not empty: $(ls "$dir" | head -5 | xargs)"
  fi
done
# Network namespaces, links, nft tables and ip rules of the network layer.
bash "$(dirname "$0")/testnet/net-leaks.sh" || leaks=1
[ $leaks = 0 ] && echo "leak check: clean (no QEMU process, memory file, VM directory, namespace, link or nft table left)"
exit $leaks
