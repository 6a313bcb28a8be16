#include "net/bridge.hpp"

#include <algorithm>
#include <sstream>

#include "common/log.hpp"
#include "net/conntrack.hpp"
#include "net/ruleset.hpp"
#include "net/tap.hpp"

namespace vesicle::net {
namespace {

constexpr uint32_t kMainTable = 254;

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// Every namespace we make starts like this: no IPv6 at all (nothing of ours
// routes it, and no link-local chatter), loopback up, and forwarding on
// where the namespace routes for others.
Result<void> prepare_namespace(bool forwarding) {
  for (const char* path : {"/proc/sys/net/ipv6/conf/all/disable_ipv6",
                           "/proc/sys/net/ipv6/conf/default/disable_ipv6"}) {
    if (auto written = write_sysctl(path, "1"); !written) return written;
  }
  if (forwarding) {
    if (auto written = write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"); !written) {
      return written;
    }
  }
  auto rtnl = Rtnl::open();
  if (!rtnl) return std::move(rtnl).error();
  return rtnl->set_up("lo");
}

Result<void> check_interface_name(const std::string& name, const char* what) {
  if (name.empty() || name.size() > 15 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
          std::string::npos) {
    return make_error("check configuration", "not an interface name (1-15 of [A-Za-z0-9_.-])",
                      std::string(what) + " " + name);
  }
  return {};
}

// Keeps the first error of a best-effort sequence.
struct FirstError {
  std::optional<Error> error;
  template <class T> void note(const Result<T>& result) {
    if (!result && !error) error = result.error();
  }
  Result<void> result() const {
    if (error) return *error;
    return {};
  }
};

// The error that stopped a flow, plus what went wrong cleaning up after it.
Error with_cleanup(Error error, Result<void> cleanup) {
  if (!cleanup) {
    error.detail += (error.detail.empty() ? "" : "; ") + std::string("cleaning up also failed: ") +
                    cleanup.error().message();
  }
  return error;
}

Result<Leftovers> scan_leftovers(const BridgeConfig& config, bool remove) {
  Leftovers found;
  const std::string host_link = layout::host_link(config.prefix);
  auto names = list_named_netns(config.prefix + "-");
  if (!names) return std::move(names).error();
  found.netns = std::move(*names);

  auto rtnl = Rtnl::open();
  if (!rtnl) return std::move(rtnl).error();
  auto links = rtnl->link_names();
  if (!links) return std::move(links).error();
  for (auto& link : *links) {
    if (starts_with(link, config.prefix + "-")) found.links.push_back(link);
  }
  auto rules = rtnl->count_iif_rules(host_link);
  if (!rules) return std::move(rules).error();
  found.rules = *rules;
  auto routes = rtnl->routes_in_table(config.route_table);
  if (!routes) return std::move(routes).error();
  found.routes = static_cast<int>(routes->size());

  auto nft = Nft::open("host");
  if (!nft) return std::move(nft).error();
  auto listing = (*nft)->run("list tables");
  if (!listing) return std::move(listing).error();
  std::istringstream lines(*listing);
  std::string word, family, name;
  while (lines >> word >> family >> name) {
    if (word == "table" && starts_with(name, config.prefix + "_")) {
      found.tables.push_back(family + " " + name);
    }
  }
  if (!remove) return found;

  FirstError first;
  for (const auto& ns : found.netns)
    first.note(delete_named_netns(ns));
  for (const auto& link : found.links)
    first.note(rtnl->delete_link(link));
  first.note(rtnl->delete_iif_rules(host_link));
  first.note(rtnl->flush_table(config.route_table));
  for (const auto& table : found.tables)
    first.note((*nft)->run("delete table " + table));
  if (auto failed = first.result(); !failed) {
    return std::move(failed).error().with_context("reclaiming leftovers of prefix " +
                                                  config.prefix);
  }
  return found;
}

} // namespace

std::vector<Cidr> default_host_networks() {
  return {
      Cidr{Ipv4{0x0A000000}, 8},  // 10.0.0.0/8
      Cidr{Ipv4{0xAC100000}, 12}, // 172.16.0.0/12
      Cidr{Ipv4{0xC0A80000}, 16}, // 192.168.0.0/16
      Cidr{Ipv4{0x64400000}, 10}, // 100.64.0.0/10
  };
}

std::string Leftovers::describe() const {
  std::ostringstream out;
  auto list = [&](const char* what, const std::vector<std::string>& items) {
    if (items.empty()) return;
    out << what << ":";
    for (const auto& item : items)
      out << " " << item;
    out << "; ";
  };
  list("namespaces", netns);
  list("links", links);
  list("nft tables", tables);
  if (rules) out << "ip rules: " << rules << "; ";
  if (routes) out << "routes in policy table: " << routes << "; ";
  auto text = out.str();
  return text.empty() ? "nothing" : text;
}

Result<void> BridgeConfig::validate() const {
  auto bad = [](std::string what, std::string detail) {
    return make_error("check network configuration", std::move(detail), std::move(what));
  };
  if (prefix.empty() || prefix.size() > 5 || prefix[0] < 'a' || prefix[0] > 'z' ||
      prefix.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") != std::string::npos) {
    return bad("prefix " + prefix, "1-5 of [a-z0-9], starting with a letter");
  }
  if (!uplink.empty()) {
    if (auto checked = check_interface_name(uplink, "uplink"); !checked) return checked;
    if (starts_with(uplink, prefix + "-")) {
      return bad("uplink " + uplink, "must not carry the prefix: it would be reclaimed");
    }
  }
  if (transit.prefix < 8 || transit.prefix > 29) {
    return bad("transit " + transit.str(), "needs a prefix length of 8 to 29");
  }
  if (transit.contains(layout::kGuestAddress) || transit.contains(upstream_resolver)) {
    return bad("transit " + transit.str(), "overlaps the guest network or the resolver");
  }
  if (!uplink.empty()) {
    if (upstream_resolver.value == 0 || Cidr{Ipv4{0x7F000000}, 8}.contains(upstream_resolver) ||
        Cidr{Ipv4{0xA9FE0000}, 16}.contains(upstream_resolver)) {
      return bad("upstream resolver " + upstream_resolver.str(),
                 "must be an address reached through the uplink (not loopback or link-local)");
    }
  }
  layout::TransitPlan plan(transit);
  if (max_slots == 0 || max_slots > plan.max_slots()) {
    return bad("max_slots " + std::to_string(max_slots),
               "must be 1.." + std::to_string(plan.max_slots()) + " for transit " + transit.str());
  }
  if (max_pooled > max_slots) return bad("max_pooled", "cannot exceed max_slots");
  if (route_table == 0 || (route_table >= 253 && route_table <= 255)) {
    return bad("route_table " + std::to_string(route_table),
               "use a table of its own, not 0 or the default/main/local tables (253-255)");
  }
  if (rule_priority == 0 || rule_priority + 1 >= 32766) {
    return bad("rule_priority " + std::to_string(rule_priority),
               "must sit before the main table's rule (1..32764)");
  }
  if (dns_min_ttl.count() < 1 || dns_min_ttl > dns_max_ttl) {
    return bad("dns_min_ttl/dns_max_ttl", "need 1s <= min <= max");
  }
  // An allowed network may hold a metadata endpoint (100.64.0.0/10 holds
  // 100.100.100.200): the endpoint stays denied by its own address. Other
  // always-denied networks cannot be opened in part, so say so.
  const auto endpoints = metadata_endpoints();
  for (const auto& allowed : allowed_networks) {
    for (const auto& never : always_denied_networks(transit)) {
      bool endpoint = std::find(endpoints.begin(), endpoints.end(), never) != endpoints.end();
      if (!endpoint && overlaps(allowed, never)) {
        return bad("allowed_networks " + allowed.str(),
                   "overlaps " + never.str() +
                       ", which no sandbox may reach (loopback, link-local, multicast, the "
                       "guest or transit network); allow a narrower network");
      }
    }
  }
  if (proxy_max_connections == 0) {
    return bad("proxy_max_connections", "must be at least 1");
  }
  if (proxy_idle_timeout.count() < 1) return bad("proxy_idle_timeout", "must be at least 1s");
  return {};
}

// ---------------------------------------------------------------------------

BridgeManager::BridgeManager(BridgeConfig config)
    : config_(std::move(config)), plan_(config_.transit) {
  denied_ = always_denied_networks(config_.transit);
  auto host_side = subtract(config_.denied_networks, config_.allowed_networks);
  denied_.insert(denied_.end(), host_side.begin(), host_side.end());
  stats_.max_slots = config_.max_slots;
}

Result<std::unique_ptr<BridgeManager>> BridgeManager::create(BridgeConfig config) {
  if (auto valid = config.validate(); !valid) return std::move(valid).error();
  auto reclaimed = reclaim_leftovers(config);
  if (!reclaimed) return std::move(reclaimed).error();
  std::unique_ptr<BridgeManager> manager(new BridgeManager(std::move(config)));
  manager->reclaimed_ = std::move(*reclaimed);
  if (auto built = manager->build_egress_and_host(); !built) {
    manager.reset(); // the destructor removes whatever was made
    return std::move(built).error().with_context("setting up sandbox networking");
  }
  return manager;
}

Result<void> BridgeManager::build_egress_and_host() {
  const std::string host_link = layout::host_link(config_.prefix);
  auto host = Netns::of_current_thread();
  if (!host) return std::move(host).error();
  host_ = std::move(*host);

  // 1. The uplink must exist before anything points at it. The host's own
  //    addresses join the denied networks, so the slot and egress layers
  //    refuse the host too (the host table drops it regardless, including
  //    addresses added later).
  auto host_addresses = in_netns(host_, [&]() -> Result<std::vector<Ipv4>> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (!config_.uplink.empty()) {
      auto present = rtnl->has_link(config_.uplink);
      if (!present) return std::move(present).error();
      if (!*present) {
        return make_error("find uplink", "no such interface on the host; check the uplink setting",
                          config_.uplink);
      }
    }
    return rtnl->ipv4_addresses();
  });
  if (!host_addresses) return std::move(host_addresses).error();
  for (Ipv4 address : *host_addresses)
    denied_.push_back(Cidr{address, 32});

  // 2. The egress namespace, which every slot's traffic crosses.
  auto egress = create_named_netns(layout::egress_netns(config_.prefix));
  if (!egress) return std::move(egress).error();
  egress_ = std::move(*egress);
  if (auto prepared = in_netns(egress_, [] { return prepare_namespace(true); }); !prepared) {
    return prepared;
  }

  // 3. The one link between host and egress namespace.
  auto host_side = in_netns(host_, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (auto made = rtnl->add_veth(host_link, -1, layout::kEgressUplink, egress_.fd()); !made) {
      return made;
    }
    if (auto v6 = write_sysctl("/proc/sys/net/ipv6/conf/" + host_link + "/disable_ipv6", "1");
        !v6) {
      return v6;
    }
    if (auto addr = rtnl->add_address(host_link, plan_.host_side(), plan_.kLinkPrefix); !addr) {
      return addr;
    }
    return rtnl->set_up(host_link);
  });
  if (!host_side) return host_side;
  auto egress_side = in_netns(egress_, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (auto addr =
            rtnl->add_address(layout::kEgressUplink, plan_.egress_side(), plan_.kLinkPrefix);
        !addr) {
      return addr;
    }
    if (auto up = rtnl->set_up(layout::kEgressUplink); !up) return up;
    return rtnl->replace_default_route(kMainTable, layout::kEgressUplink, plan_.host_side());
  });
  if (!egress_side) return egress_side;

  // 4. Host routing: what arrives from the egress namespace looks up only
  //    the policy table (a default route via the uplink) and is otherwise
  //    unreachable; the host's own routes are never consulted for it.
  auto routing = in_netns(host_, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (!config_.uplink.empty()) {
      // NAT to the uplink needs IPv4 forwarding in the host namespace (the
      // per-interface switches are not enough); the host table below only
      // lets the sandboxes' link forward to the uplink.
      if (auto on = write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"); !on) return on;
      if (auto route = rtnl->replace_default_route(config_.route_table, config_.uplink,
                                                   config_.uplink_gateway);
          !route) {
        return route;
      }
      if (auto rule = rtnl->add_iif_rule(config_.rule_priority, host_link, config_.route_table);
          !rule) {
        return rule;
      }
    }
    if (auto rule = rtnl->add_iif_rule(config_.rule_priority + 1, host_link, std::nullopt); !rule) {
      return rule;
    }
    auto nft = Nft::open("host");
    if (!nft) return std::move(nft).error();
    auto applied = (*nft)->run(host_ruleset({layout::nft_table(config_.prefix, "host"), host_link,
                                             config_.uplink, denied_, config_.upstream_resolver}));
    if (!applied) return std::move(applied).error();
    return {};
  });
  if (!routing) return routing;

  // 5. The egress namespace's firewall and NAT.
  auto firewall = in_netns(egress_, [&]() -> Result<std::unique_ptr<Nft>> {
    auto nft = Nft::open(egress_.name());
    if (!nft) return nft;
    auto applied = (*nft)->run(egress_ruleset(
        {layout::nft_table(config_.prefix, "egress"), denied_, config_.upstream_resolver}));
    if (!applied) return std::move(applied).error();
    return nft;
  });
  if (!firewall) return std::move(firewall).error();
  egress_nft_ = std::move(*firewall);

  // 6. The DNS forwarder and proxy of allowlisted slots.
  auto services = EgressServices::start();
  if (!services) return std::move(services).error();
  services_ = std::move(*services);

  // 7. The CA that secret grants need (made on first start).
  if (!config_.secrets_ca_dir.empty()) {
    auto interceptor = TlsInterceptor::create({config_.secrets_ca_dir, config_.upstream_extra_ca});
    if (!interceptor) return std::move(interceptor).error();
    interceptor_ = std::move(*interceptor);
  }
  return {};
}

BridgeManager::~BridgeManager() {
  std::lock_guard lock(mutex_);
  services_.reset(); // closes every slot's sockets first
  std::vector<uint32_t> ids;
  for (const auto& [id, slot] : slots_)
    ids.push_back(id);
  FirstError first;
  for (auto id : ids)
    first.note(destroy_slot(id));
  egress_nft_.reset();
  egress_ = Netns();
  if (host_.valid()) {
    first.note(in_netns(host_, [&] { return reclaim_leftovers(config_); }));
  } else {
    first.note(reclaim_leftovers(config_));
  }
  if (auto result = first.result(); !result) {
    log::warn("tearing down the sandbox network failed",
              {{"prefix", config_.prefix}, {"error", result.error().message()}});
  }
}

Result<uint32_t> BridgeManager::create_slot() {
  if (slots_.size() >= config_.max_slots) {
    return make_error("acquire network slot",
                      "all " + std::to_string(config_.max_slots) +
                          " slots are in use; release one or raise max_slots");
  }
  uint32_t id = 0;
  while (slots_.count(id))
    ++id;
  const std::string name = layout::slot_netns(config_.prefix, id);
  const std::string egress_link = layout::egress_slot_link(id);
  auto fail = [&](Error error) -> Result<uint32_t> {
    return with_cleanup(std::move(error), destroy_slot(id))
        .with_context("creating network slot " + name);
  };

  // 1. The slot's namespace.
  auto netns = create_named_netns(name);
  if (!netns) return std::move(netns).error().with_context("creating network slot " + name);
  SlotState& slot = slots_[id];
  slot.id = id;
  slot.netns = std::move(*netns);
  if (auto prepared = in_netns(slot.netns, [] { return prepare_namespace(true); }); !prepared) {
    return fail(std::move(prepared).error());
  }

  // 2. The guest's link: the VM's tap, or (tests) a veth to a stand-in guest.
  if (config_.test_guest_namespaces) {
    auto guest = create_named_netns(layout::guest_netns(config_.prefix, id));
    if (!guest) return fail(std::move(guest).error());
    auto configured = in_netns(*guest, [&]() -> Result<void> {
      if (auto prepared = prepare_namespace(false); !prepared) return prepared;
      return {};
    });
    if (!configured) return fail(std::move(configured).error());
    auto linked = in_netns(slot.netns, [&]() -> Result<void> {
      auto rtnl = Rtnl::open();
      if (!rtnl) return std::move(rtnl).error();
      return rtnl->add_veth(layout::kGuestLink, -1, layout::kTestGuestLink, guest->fd());
    });
    if (!linked) return fail(std::move(linked).error());
    // What the guest agent does to eth0 in a VM.
    auto guest_side = in_netns(*guest, [&]() -> Result<void> {
      auto rtnl = Rtnl::open();
      if (!rtnl) return std::move(rtnl).error();
      if (auto up = rtnl->set_up(layout::kTestGuestLink, layout::kGuestMac); !up) return up;
      if (auto addr = rtnl->add_address(layout::kTestGuestLink, layout::kGuestAddress,
                                        layout::kGuestPrefix);
          !addr) {
        return addr;
      }
      return rtnl->replace_default_route(kMainTable, layout::kTestGuestLink,
                                         layout::kGatewayAddress);
    });
    if (!guest_side) return fail(std::move(guest_side).error());
  } else {
    auto tap = in_netns(slot.netns, [] { return create_persistent_tap(layout::kGuestLink); });
    if (!tap) return fail(std::move(tap).error());
  }
  auto gateway = in_netns(slot.netns, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (auto up = rtnl->set_up(layout::kGuestLink, layout::kGatewayMac); !up) return up;
    return rtnl->add_address(layout::kGuestLink, layout::kGatewayAddress, layout::kGuestPrefix);
  });
  if (!gateway) return fail(std::move(gateway).error());

  // 3. The link to the egress namespace.
  auto egress_side = in_netns(egress_, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (auto made = rtnl->add_veth(egress_link, -1, layout::kSlotUplink, slot.netns.fd()); !made) {
      return made;
    }
    if (auto addr = rtnl->add_address(egress_link, plan_.slot_egress_side(id), plan_.kLinkPrefix);
        !addr) {
      return addr;
    }
    return rtnl->set_up(egress_link);
  });
  if (!egress_side) return fail(std::move(egress_side).error());
  auto slot_side = in_netns(slot.netns, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (auto addr = rtnl->add_address(layout::kSlotUplink, plan_.slot_side(id), plan_.kLinkPrefix);
        !addr) {
      return addr;
    }
    return rtnl->set_up(layout::kSlotUplink);
  });
  if (!slot_side) return fail(std::move(slot_side).error());

  // 4. Firewall: the slot's flows get its mark in the egress namespace, and
  //    the slot's own table starts as "off".
  auto marked = egress_nft_->run(egress_mark_element(layout::nft_table(config_.prefix, "egress"),
                                                     egress_link, layout::slot_mark(id), true));
  if (!marked) return fail(std::move(marked).error());
  slot.marked = true;
  auto nft = in_netns(slot.netns, [&]() -> Result<std::unique_ptr<Nft>> {
    auto opened = Nft::open(name);
    if (!opened) return opened;
    auto applied = (*opened)->run(slot_ruleset({layout::nft_table(config_.prefix, "slot"),
                                                EgressMode::off, plan_.slot_side(id), denied_,
                                                config_.upstream_resolver, config_.guest_limits}));
    if (!applied) return std::move(applied).error();
    return opened;
  });
  if (!nft) return fail(std::move(nft).error());
  slot.nft = std::move(*nft);
  ++stats_.created;
  return id;
}

Result<UniqueFd> BridgeManager::attach_tap(SlotState& slot) {
  return in_netns(slot.netns, [] { return net::attach_tap(layout::kGuestLink); });
}

Result<void> BridgeManager::configure_slot(SlotState& slot, const EgressPolicy& policy,
                                           std::optional<uint32_t> inherit_from) {
  // 1. The firewall for the mode (a fresh table: the allowed set is empty).
  auto applied = slot.nft->run(slot_ruleset({layout::nft_table(config_.prefix, "slot"), policy.mode,
                                             plan_.slot_side(slot.id), denied_,
                                             config_.upstream_resolver, config_.guest_limits}));
  if (!applied) return std::move(applied).error();

  // 2. A route out, except with egress off: then there is none at all.
  auto routed = in_netns(slot.netns, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    if (policy.mode == EgressMode::off) {
      auto deleted = rtnl->delete_default_route(kMainTable);
      if (!deleted) return std::move(deleted).error();
      return {};
    }
    return rtnl->replace_default_route(kMainTable, layout::kSlotUplink,
                                       plan_.slot_egress_side(slot.id));
  });
  if (!routed) return routed;

  // 3. Allowlist: the DNS forwarder and the proxy.
  if (policy.mode == EgressMode::allowlist) {
    auto allow = Allowlist::parse(policy.allow);
    if (!allow) return std::move(allow).error();
    auto netns = slot.netns.duplicate();
    if (!netns) return std::move(netns).error();
    SlotServiceSpec spec;
    spec.slot_id = slot.id;
    spec.netns = std::move(*netns);
    spec.nft = slot.nft;
    spec.nft_table = layout::nft_table(config_.prefix, "slot");
    spec.policy = DnsPolicy{std::move(*allow), denied_, config_.dns_min_ttl, config_.dns_max_ttl};
    spec.upstream_resolver = config_.upstream_resolver;
    spec.proxy_max_connections = config_.proxy_max_connections;
    spec.proxy_idle_timeout = config_.proxy_idle_timeout;
    spec.secrets = policy.secrets;
    spec.interceptor = interceptor_;
    if (inherit_from) {
      auto parent = slots_.find(*inherit_from);
      if (parent != slots_.end() && parent->second.services) {
        spec.inherited = services_->learned(*inherit_from);
      }
    }
    if (auto attached = services_->attach(std::move(spec)); !attached) return attached;
    slot.services = true;
  }
  slot.policy = policy;
  return {};
}

Result<void> BridgeManager::scrub_slot(SlotState& slot) {
  // 1. Stop the slot's DNS forwarder and proxy: their sockets close.
  if (slot.services) {
    services_->detach(slot.id);
    slot.services = false;
  }
  slot.policy = EgressPolicy::off();
  // 2. Firewall back to "off", which also empties the allowed set.
  auto applied = slot.nft->run(slot_ruleset({layout::nft_table(config_.prefix, "slot"),
                                             EgressMode::off, plan_.slot_side(slot.id), denied_,
                                             config_.upstream_resolver, config_.guest_limits}));
  if (!applied) return std::move(applied).error();
  // 3. No route out, and no flow state: the slot's own conntrack table, and
  //    the slot's marked flows in the egress namespace.
  auto local = in_netns(slot.netns, [&]() -> Result<void> {
    auto rtnl = Rtnl::open();
    if (!rtnl) return std::move(rtnl).error();
    auto deleted = rtnl->delete_default_route(kMainTable);
    if (!deleted) return std::move(deleted).error();
    return flush_conntrack();
  });
  if (!local) return local;
  return in_netns(egress_, [&] { return flush_conntrack(layout::slot_mark(slot.id)); });
}

Result<void> BridgeManager::destroy_slot(uint32_t id) {
  auto found = slots_.find(id);
  if (found == slots_.end()) return {};
  SlotState& slot = found->second;
  FirstError first;
  if (slot.services && services_) services_->detach(id);
  slot.nft.reset();
  if (egress_.valid()) {
    first.note(in_netns(egress_, [&]() -> Result<void> {
      auto rtnl = Rtnl::open();
      if (!rtnl) return std::move(rtnl).error();
      auto deleted = rtnl->delete_link(layout::egress_slot_link(id)); // and veth0 with it
      if (!deleted) return std::move(deleted).error();
      return flush_conntrack(layout::slot_mark(id));
    }));
    if (slot.marked && egress_nft_) {
      first.note(egress_nft_->run(egress_mark_element(layout::nft_table(config_.prefix, "egress"),
                                                      layout::egress_slot_link(id),
                                                      layout::slot_mark(id), false)));
    }
  }
  if (config_.test_guest_namespaces) {
    first.note(delete_named_netns(layout::guest_netns(config_.prefix, id)));
  }
  first.note(delete_named_netns(layout::slot_netns(config_.prefix, id)));
  slots_.erase(found);
  pool_.erase(std::remove(pool_.begin(), pool_.end(), id), pool_.end());
  ++stats_.destroyed;
  if (auto result = first.result(); !result) {
    return std::move(result).error().with_context("destroying network slot " + std::to_string(id));
  }
  return {};
}

Slot BridgeManager::describe(const SlotState& slot, UniqueFd tap_fd) const {
  Slot out;
  out.id = slot.id;
  out.netns = slot.netns.name();
  out.tap_name = layout::kGuestLink;
  out.tap_fd = std::move(tap_fd);
  out.policy = slot.policy;
  if (config_.test_guest_namespaces) out.guest_netns = layout::guest_netns(config_.prefix, slot.id);
  return out;
}

Result<EgressPolicy> BridgeManager::checked_policy(const EgressPolicy& requested) const {
  EgressPolicy policy = requested;
  if (policy.mode == EgressMode::allowlist) {
    auto checked = EgressPolicy::allowlist(policy.allow);
    if (!checked) return std::move(checked).error();
    policy = std::move(*checked);
    policy.secrets = requested.secrets;
  } else if (!policy.allow.empty()) {
    return make_error("check egress", "an allowlist needs egress mode allowlist");
  }
  if (!policy.secrets.empty()) {
    if (policy.mode != EgressMode::allowlist) {
      return make_error("check egress",
                        "secrets need an allowlist (egress_allow) naming each host");
    }
    if (!interceptor_) {
      return make_error("check egress",
                        "secrets need network.secrets_ca_dir in hostd's configuration");
    }
    auto grants = check_secret_grants(policy.secrets, policy.allow);
    if (!grants) return std::move(grants).error();
    policy.secrets = std::move(*grants);
  }
  if (policy.mode != EgressMode::off && config_.uplink.empty()) {
    return make_error("check egress",
                      std::string("egress ") + to_string(policy.mode) +
                          " needs an uplink; none is configured (only egress off is available)");
  }
  return policy;
}

Result<Slot> BridgeManager::acquire_slot(const EgressPolicy& requested, AcquireOptions options) {
  auto checked = checked_policy(requested);
  if (!checked) return std::move(checked).error().with_context("acquiring network slot");
  const EgressPolicy& policy = *checked;

  std::lock_guard lock(mutex_);
  // Twice at most: a pooled slot whose tap is still held by a VM that did
  // not exit is dropped and replaced by a fresh one.
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool pooled = !pool_.empty();
    uint32_t id;
    if (pooled) {
      id = pool_.front();
      pool_.pop_front();
    } else {
      auto created = create_slot();
      if (!created) return std::move(created).error();
      id = *created;
    }
    SlotState& slot = slots_.at(id);
    UniqueFd tap;
    if (!config_.test_guest_namespaces) {
      auto attached = attach_tap(slot);
      if (!attached) {
        bool busy = attached.error().errno_value == EBUSY;
        auto destroyed = destroy_slot(id);
        if (busy && destroyed) {
          ++stats_.dropped_busy;
          continue;
        }
        return with_cleanup(std::move(attached).error(), std::move(destroyed))
            .with_context("acquiring network slot " + std::to_string(id));
      }
      tap = std::move(*attached);
    }
    if (auto configured = configure_slot(slot, policy, options.inherit_dns_from); !configured) {
      Result<void> cleanup = scrub_slot(slot);
      if (cleanup) {
        pool_.push_back(id);
      } else {
        cleanup = destroy_slot(id);
      }
      return with_cleanup(std::move(configured).error(), std::move(cleanup))
          .with_context(std::string("acquiring network slot ") + std::to_string(id) +
                        " for egress " + to_string(policy.mode));
    }
    slot.in_use = true;
    ++(pooled ? stats_.acquired_pooled : stats_.acquired_fresh);
    return describe(slot, std::move(tap));
  }
  return make_error("acquire network slot",
                    "two slots in a row had their tap still held by another process; are old "
                    "VMs still running?");
}

Result<void> BridgeManager::set_egress(uint32_t id, const EgressPolicy& requested,
                                       AcquireOptions options) {
  auto checked = checked_policy(requested);
  if (!checked)
    return std::move(checked).error().with_context("changing egress of slot " + std::to_string(id));
  std::lock_guard lock(mutex_);
  auto found = slots_.find(id);
  if (found == slots_.end() || !found->second.in_use) {
    return make_error("change egress", "the slot is not in use", std::to_string(id));
  }
  SlotState& slot = found->second;
  if (auto scrubbed = scrub_slot(slot); !scrubbed) {
    return std::move(scrubbed).error().with_context("changing egress of slot " +
                                                    std::to_string(id));
  }
  if (auto configured = configure_slot(slot, *checked, options.inherit_dns_from); !configured) {
    auto reset = scrub_slot(slot); // leave it off, whatever half-applied
    return with_cleanup(std::move(configured).error(), std::move(reset))
        .with_context(std::string("changing egress of slot ") + std::to_string(id) + " to " +
                      to_string(checked->mode));
  }
  return {};
}

Result<void> BridgeManager::release_slot(uint32_t id) {
  std::lock_guard lock(mutex_);
  auto found = slots_.find(id);
  if (found == slots_.end() || !found->second.in_use) {
    return make_error("release network slot", "not in use (released twice?)", std::to_string(id));
  }
  SlotState& slot = found->second;
  slot.in_use = false;
  auto scrubbed = scrub_slot(slot);
  if (!scrubbed || pool_.size() >= config_.max_pooled) {
    // A slot that could not be scrubbed is never handed out again.
    auto destroyed = destroy_slot(id);
    if (!scrubbed) {
      return std::move(scrubbed).error().with_context("scrubbing network slot " +
                                                      std::to_string(id));
    }
    return destroyed;
  }
  pool_.push_back(id);
  return {};
}

Result<void> BridgeManager::prewarm(size_t count) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < count && pool_.size() < config_.max_pooled; ++i) {
    auto created = create_slot();
    if (!created) return std::move(created).error().with_context("prewarming network slots");
    pool_.push_back(*created);
  }
  return {};
}

BridgeStats BridgeManager::stats() const {
  std::lock_guard lock(mutex_);
  BridgeStats out = stats_;
  out.pooled = pool_.size();
  out.in_use = slots_.size() - pool_.size();
  return out;
}

SlotServiceCounters BridgeManager::service_counters(uint32_t id) {
  return services_ ? services_->counters(id) : SlotServiceCounters{};
}

Result<Leftovers> BridgeManager::reclaim_leftovers(const BridgeConfig& config) {
  return scan_leftovers(config, true);
}

Result<Leftovers> BridgeManager::find_leftovers(const BridgeConfig& config) {
  return scan_leftovers(config, false);
}

} // namespace vesicle::net
