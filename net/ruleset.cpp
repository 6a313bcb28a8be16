#include "net/ruleset.hpp"

#include <algorithm>
#include <sstream>

#include "net/layout.hpp"

namespace vesicle::net {
namespace {

// CIDRs either nest or are disjoint; nft refuses overlapping intervals, so
// drop every network inside another one.
std::vector<Cidr> without_nested(std::vector<Cidr> networks) {
  std::sort(networks.begin(), networks.end(), [](const Cidr& a, const Cidr& b) {
    return a.prefix != b.prefix ? a.prefix < b.prefix : a.network < b.network;
  });
  std::vector<Cidr> kept;
  for (const auto& network : networks) {
    bool nested = std::any_of(kept.begin(), kept.end(), [&](const Cidr& outer) {
      return outer.prefix <= network.prefix && outer.contains(network.network);
    });
    if (!nested) kept.push_back(network);
  }
  return kept;
}

std::string denied_set(const std::vector<Cidr>& denied) {
  std::ostringstream out;
  out << "  set denied {\n    type ipv4_addr; flags interval;\n";
  auto networks = without_nested(denied);
  if (!networks.empty()) {
    out << "    elements = { ";
    for (size_t i = 0; i < networks.size(); ++i) {
      out << (i ? ", " : "") << networks[i].str();
    }
    out << " }\n";
  }
  out << "  }\n";
  return out.str();
}

std::string quoted(const std::string& name) {
  return "\"" + name + "\"";
}

} // namespace

std::vector<Cidr> always_denied_networks(const Cidr& transit) {
  return {
      Cidr{Ipv4{0x00000000}, 8},  // "this network"
      Cidr{Ipv4{0x7F000000}, 8},  // loopback
      Cidr{Ipv4{0xA9FE0000}, 16}, // link-local, cloud metadata (169.254.169.254)
      Cidr{Ipv4{0xE0000000}, 4},  // multicast
      Cidr{Ipv4{0xF0000000}, 4},  // reserved and broadcast
      Cidr{Ipv4{layout::kGuestAddress.value & ~uint32_t{3}}, layout::kGuestPrefix},
      transit,                    // every slot, the egress namespace and the host's end of it
      Cidr{Ipv4{0xA83F8110}, 32}, // 168.63.129.16, Azure wire server
      Cidr{Ipv4{0xC00000C0}, 32}, // 192.0.0.192, OCI metadata
      Cidr{Ipv4{0x646464C8}, 32}, // 100.100.100.200, Alibaba metadata
  };
}

std::vector<Cidr> metadata_endpoints() {
  return {Cidr{Ipv4{0xA9FEA9FE}, 32}, Cidr{Ipv4{0xA83F8110}, 32}, Cidr{Ipv4{0xC00000C0}, 32},
          Cidr{Ipv4{0x646464C8}, 32}};
}

std::string delete_table(const std::string& table) {
  return "add table inet " + table + "\ndelete table inet " + table + "\n";
}

std::string host_ruleset(const HostRules& r) {
  const std::string link = quoted(r.host_link);
  const std::string uplink = quoted(r.uplink);
  std::ostringstream out;
  out << delete_table(r.table) << "table inet " << r.table << " {\n" << denied_set(r.denied);
  // Policies stay accept: this table only ever narrows what the sandboxes'
  // link may do and leaves the host's other traffic alone. Nothing from the
  // link reaches the host itself, uplink or not.
  out << "  chain filter_input {\n"
         "    type filter hook input priority filter; policy accept;\n"
         "    iifname "
      << link << " counter drop\n  }\n";
  if (r.uplink.empty()) {
    // No uplink: the sandboxes' link reaches nothing through the host either.
    out << "  chain filter_forward {\n"
           "    type filter hook forward priority filter; policy accept;\n"
           "    iifname "
        << link << " counter drop\n    oifname " << link << " counter drop\n  }\n}\n";
    return out.str();
  }
  out << "  chain filter_forward {\n"
         "    type filter hook forward priority filter; policy accept;\n"
         "    oifname "
      << link << " iifname " << uplink
      << " ct state established,related accept\n"
         "    oifname "
      << link << " counter drop\n    iifname " << link
      << " meta nfproto ipv6 counter drop\n    iifname " << link << " oifname != " << uplink
      << " counter drop\n    iifname " << link << " ip daddr " << r.resolver.str()
      << " meta l4proto { tcp, udp } th dport 53 accept\n    iifname " << link
      << " ip daddr @denied counter drop\n  }\n";
  out << "  chain nat_postrouting {\n"
         "    type nat hook postrouting priority srcnat; policy accept;\n"
         "    iifname "
      << link << " oifname " << uplink << " masquerade\n  }\n}\n";
  return out.str();
}

std::string egress_ruleset(const EgressRules& r) {
  const std::string up = quoted(layout::kEgressUplink);
  std::ostringstream out;
  out << delete_table(r.table) << "table inet " << r.table << " {\n" << denied_set(r.denied);
  out << "  map slot_mark {\n    type ifname : mark;\n  }\n";
  // The ct mark names the slot a flow came from, so releasing a slot can
  // flush exactly its flows from this namespace's conntrack table.
  out << "  chain mark_slots {\n"
         "    type filter hook prerouting priority mangle; policy accept;\n"
         "    ct state new ct mark set iifname map @slot_mark\n  }\n";
  out << "  chain filter_input {\n"
         "    type filter hook input priority filter; policy drop;\n"
         "    iifname \"lo\" accept\n"
         "    ct state established,related accept\n  }\n";
  out << "  chain filter_forward {\n"
         "    type filter hook forward priority filter; policy drop;\n"
         "    meta nfproto ipv6 drop\n"
         "    iifname "
      << up << " ct state established,related accept\n    iifname \"s*\" oifname " << up
      << " ip daddr " << r.resolver.str()
      << " meta l4proto { tcp, udp } th dport 53 accept\n    iifname \"s*\" oifname " << up
      << " ip daddr @denied counter drop\n    iifname \"s*\" oifname " << up << " accept\n  }\n";
  out << "  chain nat_postrouting {\n"
         "    type nat hook postrouting priority srcnat; policy accept;\n"
         "    oifname "
      << up << " masquerade\n  }\n}\n";
  return out.str();
}

std::string egress_mark_element(const std::string& table, const std::string& link, uint32_t mark,
                                bool add) {
  std::ostringstream out;
  out << (add ? "add" : "delete") << " element inet " << table << " slot_mark { " << quoted(link);
  if (add) out << " : " << mark;
  out << " }\n";
  return out.str();
}

std::string slot_ruleset(const SlotRules& r) {
  const std::string tap = quoted(layout::kGuestLink);
  const std::string up = quoted(layout::kSlotUplink);
  const std::string gateway = layout::kGatewayAddress.str();
  const std::string resolver = r.resolver.str();
  const bool open = r.mode == EgressMode::open;
  const bool allowlist = r.mode == EgressMode::allowlist;
  const std::string reject = " reject with icmpx admin-prohibited\n";
  std::ostringstream out;
  out << delete_table(r.table) << "table inet " << r.table << " {\n" << denied_set(r.denied);
  out << "  set allowed {\n    type ipv4_addr; flags timeout;\n  }\n";

  out << "  chain nat_prerouting {\n"
         "    type nat hook prerouting priority dstnat; policy accept;\n";
  if (open) {
    // The guest's resolver is the gateway; in open mode it is the upstream.
    out << "    iifname " << tap << " ip daddr " << gateway
        << " meta l4proto { tcp, udp } th dport 53 dnat ip to " << resolver << ":53\n";
  }
  if (allowlist) {
    // Every TCP connection, whatever its port, goes to the proxy, which
    // lets it through only for a listed name (TLS SNI or HTTP Host). One to
    // a denied network is refused at once in filter_forward instead.
    out << "    iifname " << tap << " ip daddr != " << gateway
        << " ip daddr != @denied meta l4proto tcp" << (r.limits.smtp ? "" : " tcp dport != 25")
        << " redirect to :" << layout::kProxyPort << "\n";
  }
  out << "  }\n";

  out << "  chain nat_postrouting {\n"
         "    type nat hook postrouting priority srcnat; policy accept;\n"
         "    oifname "
      << up << " ip saddr " << layout::kGuestAddress.str() << " snat ip to " << r.slot_address.str()
      << "\n  }\n";

  // The guest's caps: new connections past the rate or the count are
  // refused before anything else looks at them.
  out << "  chain refuse {\n"
         "    meta l4proto tcp counter reject with tcp reset\n"
         "    counter"
      << reject << "  }\n";
  out << "  chain guest_limits {\n";
  if (r.limits.new_connections_per_second > 0) {
    out << "    limit rate over " << r.limits.new_connections_per_second << "/second burst "
        << 2 * r.limits.new_connections_per_second << " packets jump refuse\n";
  }
  if (r.limits.max_connections > 0) {
    out << "    ct count over " << r.limits.max_connections << " jump refuse\n";
  }
  out << "  }\n";

  out << "  chain filter_input {\n"
         "    type filter hook input priority filter; policy drop;\n"
         "    iifname \"lo\" accept\n"
         "    iifname "
      << up << " ct state established,related accept\n"
      << "    iifname " << tap << " ct state new jump guest_limits\n";
  if (allowlist) {
    out << "    iifname " << tap << " ip daddr " << gateway
        << " meta l4proto { tcp, udp } th dport 53 accept\n"
        << "    iifname " << tap << " ip daddr " << gateway << " tcp dport " << layout::kProxyPort
        << " ct status dnat accept\n";
  }
  out << "    iifname " << tap << reject << "  }\n";

  out << "  chain filter_forward {\n"
         "    type filter hook forward priority filter; policy drop;\n"
         "    ct state established,related accept\n"
         "    iifname "
      << tap << " ct state new jump guest_limits\n";
  if (open) {
    out << "    iifname " << tap << " oifname " << up << " ip daddr " << resolver
        << " meta l4proto { tcp, udp } th dport 53 accept\n";
  }
  out << "    iifname " << tap << " ip daddr @denied" << reject;
  if (!r.limits.smtp) out << "    iifname " << tap << " tcp dport 25 reject with tcp reset\n";
  if (open) out << "    iifname " << tap << " oifname " << up << " meta nfproto ipv4 accept\n";
  out << "    iifname " << tap << reject << "  }\n";

  // What hostd itself sends from the slot (DNS forwarding, proxied
  // connections) never goes to a denied network either.
  out << "  chain filter_output {\n"
         "    type filter hook output priority filter; policy accept;\n";
  if (r.mode == EgressMode::off) {
    out << "    oifname " << up << " drop\n";
  } else {
    out << "    oifname " << up << " ip daddr " << resolver
        << " meta l4proto { tcp, udp } th dport 53 accept\n"
        << "    oifname " << up << " ip daddr @denied drop\n";
    // The proxy connects only to addresses DNS gave for a listed name.
    if (allowlist) out << "    oifname " << up << " ip daddr != @allowed drop\n";
  }
  out << "  }\n}\n";
  return out.str();
}

std::string allowed_elements(const std::string& table, const std::vector<AllowedElement>& elements,
                             bool replace) {
  if (elements.empty()) return {};
  std::ostringstream out;
  if (replace) {
    out << "delete element inet " << table << " allowed { ";
    for (size_t i = 0; i < elements.size(); ++i) {
      out << (i ? ", " : "") << elements[i].address.str();
    }
    out << " }\n";
  }
  out << "add element inet " << table << " allowed { ";
  for (size_t i = 0; i < elements.size(); ++i) {
    out << (i ? ", " : "") << elements[i].address.str() << " timeout "
        << elements[i].lifetime.count() << "s";
  }
  out << " }\n";
  return out.str();
}

} // namespace vesicle::net
