#!/usr/bin/env bash
# Prints the `network` section of hostd's configuration for this host, found
# from its default route and its resolver, so a default sandbox gets open
# egress through NAT:
#   network { uplink: "eth0" uplink_gateway: "192.0.2.1"
#             upstream_resolver: "10.255.255.53" denied_networks: [...] }
# Denied: hostd's default private ranges and the uplink's own subnets (the
# host's LAN is no sandbox's business); hostd denies link-local, metadata
# and the host itself anyway.
# Exits 1 with the reason on stderr when the host has no IPv4 default route
# or no resolver a sandbox could use; hostd then runs with egress off.
set -euo pipefail

route=$(ip -4 route show default | head -n 1)
if [ -z "$route" ]; then
  echo "detect-network: this host has no IPv4 default route, so sandboxes get no internet" >&2
  exit 1
fi
uplink=$(awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' <<<"$route")
gateway=$(awk '{for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1)}' <<<"$route")

# The first IPv4 nameserver that is not on loopback: a stub resolver on
# 127.0.0.53 (systemd-resolved) is the host's own and no sandbox reaches it;
# the servers it forwards to are in its own resolv.conf.
resolver=
for file in /etc/resolv.conf /run/systemd/resolve/resolv.conf; do
  [ -r "$file" ] || continue
  resolver=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ && $2 !~ /^127\./ {print $2; exit}' "$file")
  [ -n "$resolver" ] && break
done
if [ -z "$resolver" ]; then
  echo "detect-network: no IPv4 nameserver outside 127.0.0.0/8 in /etc/resolv.conf or" \
    "/run/systemd/resolve/resolv.conf; set network.upstream_resolver by hand" >&2
  exit 1
fi

# denied_networks replaces hostd's default list (RFC 1918 and 100.64/10),
# so that list comes first, then the uplink's own subnets it does not cover.
denied=$(ip -4 -o addr show dev "$uplink" scope global | awk '{print $4}' | python3 -c '
import ipaddress, sys
nets = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]
for line in sys.stdin:
    own = ipaddress.ip_interface(line.strip()).network
    if not any(own.subnet_of(net) for net in nets):
        nets.append(own)
print(", ".join(f"\"{net}\"" for net in nets))
')

echo "network {"
echo "  uplink: \"$uplink\""
[ -n "$gateway" ] && echo "  uplink_gateway: \"$gateway\""
echo "  upstream_resolver: \"$resolver\""
echo "  denied_networks: [$denied]"
echo "  default_egress: \"open\""
echo "}"
