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

// Networks no sandbox ever reaches, whatever its mode or allowlist.
std::vector<Cidr> always_denied_networks(const Cidr& transit);

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
