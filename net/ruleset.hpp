// The nftables rulesets, as text, for the three places traffic from a
// sandbox crosses: its slot namespace (per-sandbox policy), the egress
// namespace (all slots), and the host (the one link to the uplink). Each is
// one table replaced atomically; pure functions so they are unit-tested and
// dry-run checked.
//
// The layers repeat each other on purpose: the slot table enforces the
// sandbox's mode; the egress and host tables drop the always-denied networks
// again and only ever pass traffic towards the uplink, so one broken layer
// does not open the host, the metadata address or other sandboxes.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "net/egress.hpp"
#include "net/ipv4.hpp"

namespace vesicle::net {

// Networks no sandbox ever reaches, whatever its mode, allowlist or the
// operator's allowed_networks: "this network", loopback, link-local,
// multicast, reserved, the guest /30, the transit network, and the known
// cloud metadata endpoints (metadata_endpoints()).
std::vector<Cidr> always_denied_networks(const Cidr& transit);

// The IPv4 cloud metadata endpoints: 169.254.169.254 (AWS, GCP, Azure IMDS,
// most others), 168.63.129.16 (Azure wire server), 192.0.0.192 (OCI),
// 100.100.100.200 (Alibaba). Each is denied by address, so allowing the
// network around it (100.64.0.0/10, say) never opens it. The IPv6 one
// (fd00:ec2::254) is unreachable because no sandbox IPv6 is ever forwarded.
std::vector<Cidr> metadata_endpoints();

// What one sandbox may do at most: its connection tracking entries (TCP,
// UDP, ICMP flows from the guest) and how fast it opens new ones. Past
// either, new connections are refused (TCP reset, ICMP admin-prohibited);
// the slot's own conntrack table holds them, so other sandboxes never
// notice. 0: no cap.
struct GuestLimits {
  uint32_t max_connections = 512;
  uint32_t new_connections_per_second = 100; // burst: twice as many
  bool smtp = false;                         // TCP port 25 open
};

struct HostRules {
  std::string table;     // inet table name
  std::string host_link; // <p>-up
  std::string uplink;    // the configured uplink interface
  std::vector<Cidr> denied;
  Ipv4 resolver;
};
std::string host_ruleset(const HostRules& rules);

struct EgressRules {
  std::string table;
  std::vector<Cidr> denied;
  Ipv4 resolver;
};
std::string egress_ruleset(const EgressRules& rules);
std::string egress_mark_element(const std::string& table, const std::string& link, uint32_t mark,
                                bool add);

struct SlotRules {
  std::string table;
  EgressMode mode = EgressMode::off;
  Ipv4 slot_address; // veth0's address, the slot's source address outside
  std::vector<Cidr> denied;
  Ipv4 resolver;
  GuestLimits limits;
};
std::string slot_ruleset(const SlotRules& rules);

// Adds `addresses` to the slot's "allowed" set with the given lifetimes.
// With `replace`, deletes them first in the same transaction so their
// timeouts restart (that fails if one is absent: retry without).
struct AllowedElement {
  Ipv4 address;
  std::chrono::seconds lifetime;
};
std::string allowed_elements(const std::string& table, const std::vector<AllowedElement>& elements,
                             bool replace);

// "add table inet t\ndelete table inet t\n": removes the table if present.
std::string delete_table(const std::string& table);

} // namespace vesicle::net
