#!/usr/bin/env bash
# Fails if the network layer left anything behind for the given name
# prefixes (default: hostd's "vs", the net tests' "vn" "vq" "vt" "vu" "vh"
# "vw" "vk" "va" "vc", the soak's "vz", the benchmarks' "vb" "vbn" "vx" "vy" "vp"
# and the E2B suite's "ve" "vf" (tests/e2b/testnet.mjs)): named
# network namespaces, host links, nft tables, ip rules on their host links.
# Read-only; scripts/leak-check.sh can call it.
set -uo pipefail
prefixes=("$@")
[ ${#prefixes[@]} -gt 0 ] || prefixes=(vs vn vq vt vu vb vbn vh vw vk va vc vx vy vp vz ve vf)
leaks=0
report() { echo "leak: $*"; leaks=1; }

for p in "${prefixes[@]}"; do
  ns=$(ls /run/netns 2>/dev/null | grep -E "^${p}-" | xargs)
  [ -z "$ns" ] || report "network namespaces ($p): $ns"
  links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${p}-" | xargs)
  [ -z "$links" ] || report "host links ($p): $links"
  tables=$(nft list tables 2>/dev/null | awk '{print $3}' | grep -E "^${p}_" | xargs)
  [ -z "$tables" ] || report "nft tables ($p): $tables"
  rules=$(ip rule show 2>/dev/null | grep -E "iif ${p}-up\b" | wc -l)
  [ "$rules" = 0 ] || report "ip rules on ${p}-up: $rules"
done
[ $leaks = 0 ] && echo "net leak check: clean (${prefixes[*]})"
exit $leaks
