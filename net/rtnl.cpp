#include "net/rtnl.hpp"

#include <linux/fib_rules.h>
#include <linux/if.h>
#include <linux/rtnetlink.h>
#include <netlink/addr.h>
#include <netlink/cache.h>
#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/nexthop.h>
#include <netlink/route/route.h>
#include <netlink/route/rule.h>
#include <netlink/socket.h>

#include <cstdio>
#include <cstring>

namespace vesicle::net {
namespace {

template <class T, void (*Free)(T*)> struct Deleter {
  void operator()(T* object) const {
    if (object) Free(object);
  }
};
using LinkPtr = std::unique_ptr<rtnl_link, Deleter<rtnl_link, rtnl_link_put>>;
using AddrPtr = std::unique_ptr<rtnl_addr, Deleter<rtnl_addr, rtnl_addr_put>>;
using RoutePtr = std::unique_ptr<rtnl_route, Deleter<rtnl_route, rtnl_route_put>>;
using RulePtr = std::unique_ptr<rtnl_rule, Deleter<rtnl_rule, rtnl_rule_put>>;
using NlAddrPtr = std::unique_ptr<nl_addr, Deleter<nl_addr, nl_addr_put>>;
using CachePtr = std::unique_ptr<nl_cache, Deleter<nl_cache, nl_cache_free>>;

int errno_of(int nl_code) {
  switch (nl_code < 0 ? -nl_code : nl_code) {
  case NLE_EXIST:
    return EEXIST;
  case NLE_OBJ_NOTFOUND:
    return ENOENT;
  case NLE_NODEV:
    return ENODEV;
  case NLE_PERM:
    return EPERM;
  case NLE_BUSY:
    return EBUSY;
  case NLE_INVAL:
    return EINVAL;
  case NLE_NOMEM:
    return ENOMEM;
  case NLE_RANGE:
    return ERANGE;
  case NLE_NOADDR:
    return EADDRNOTAVAIL;
  case NLE_OPNOTSUPP:
    return EOPNOTSUPP;
  case NLE_AGAIN:
    return EAGAIN;
  default:
    return 0;
  }
}

bool is_not_found(int nl_code) {
  return nl_code == -NLE_OBJ_NOTFOUND || nl_code == -NLE_NODEV || nl_code == -NLE_NOADDR;
}

Result<NlAddrPtr> inet_addr(Ipv4 address, int prefix) {
  in_addr raw = address.to_network();
  NlAddrPtr addr(nl_addr_build(AF_INET, &raw, sizeof raw));
  if (!addr) return make_error("nl_addr_build", "out of memory", address.str());
  nl_addr_set_prefixlen(addr.get(), prefix);
  return addr;
}

Result<LinkPtr> get_link(nl_sock* sock, const std::string& name) {
  rtnl_link* raw = nullptr;
  int err = rtnl_link_get_kernel(sock, 0, name.c_str(), &raw);
  if (err < 0) return nl_error("look up link", name, err);
  return LinkPtr(raw);
}

RoutePtr default_route(uint32_t table) {
  RoutePtr route(rtnl_route_alloc());
  if (!route) return route;
  rtnl_route_set_family(route.get(), AF_INET);
  rtnl_route_set_table(route.get(), table);
  in_addr any{};
  NlAddrPtr dst(nl_addr_build(AF_INET, &any, sizeof any));
  nl_addr_set_prefixlen(dst.get(), 0);
  rtnl_route_set_dst(route.get(), dst.get());
  return route;
}

std::string describe_route(rtnl_route* route) {
  char buffer[128];
  std::string text;
  if (auto* dst = rtnl_route_get_dst(route)) text = nl_addr2str(dst, buffer, sizeof buffer);
  text += " type " + std::to_string(rtnl_route_get_type(route));
  if (rtnl_route_get_nnexthops(route) > 0) {
    auto* nh = rtnl_route_nexthop_n(route, 0);
    if (auto* gw = rtnl_route_nh_get_gateway(nh)) {
      text += std::string(" via ") + nl_addr2str(gw, buffer, sizeof buffer);
    }
    text += " ifindex " + std::to_string(rtnl_route_nh_get_ifindex(nh));
  }
  return text;
}

} // namespace

Result<Mac> Mac::parse(std::string_view text) {
  Mac mac;
  unsigned values[6];
  char tail;
  std::string copy(text);
  if (std::sscanf(copy.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &values[0], &values[1], &values[2],
                  &values[3], &values[4], &values[5], &tail) != 6 ||
      copy.size() != 17) {
    return make_error("parse MAC address", "expected six hex pairs like 02:76:73:00:00:02", copy);
  }
  for (int i = 0; i < 6; ++i)
    mac.bytes[i] = static_cast<uint8_t>(values[i]);
  return mac;
}

std::string Mac::str() const {
  char buffer[18];
  std::snprintf(buffer, sizeof buffer, "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1],
                bytes[2], bytes[3], bytes[4], bytes[5]);
  return buffer;
}

Error nl_error(std::string operation, std::string subject, int nl_code) {
  Error error{errno_of(nl_code), std::move(operation), std::move(subject), {}, {}};
  if (error.errno_value == 0) error.detail = nl_geterror(nl_code);
  return error;
}

void NlSockDeleter::operator()(nl_sock* sock) const {
  if (sock) nl_socket_free(sock);
}

Result<Rtnl> Rtnl::open() {
  std::unique_ptr<nl_sock, NlSockDeleter> sock(nl_socket_alloc());
  if (!sock) return make_error("nl_socket_alloc", "out of memory");
  if (int err = nl_connect(sock.get(), NETLINK_ROUTE); err < 0) {
    return nl_error("connect", "NETLINK_ROUTE", err);
  }
  return Rtnl(std::move(sock));
}

Result<int> Rtnl::link_index(const std::string& name) {
  auto link = get_link(sock_.get(), name);
  if (!link) return std::move(link).error();
  return rtnl_link_get_ifindex(link->get());
}

Result<bool> Rtnl::has_link(const std::string& name) {
  rtnl_link* raw = nullptr;
  int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &raw);
  LinkPtr link(raw);
  if (err >= 0) return true;
  if (is_not_found(err)) return false;
  return nl_error("look up link", name, err);
}

Result<std::vector<std::string>> Rtnl::link_names() {
  nl_cache* raw = nullptr;
  if (int err = rtnl_link_alloc_cache(sock_.get(), AF_UNSPEC, &raw); err < 0) {
    return nl_error("list links", "", err);
  }
  CachePtr cache(raw);
  std::vector<std::string> names;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    if (const char* name = rtnl_link_get_name(reinterpret_cast<rtnl_link*>(object))) {
      names.emplace_back(name);
    }
  }
  return names;
}

Result<void> Rtnl::add_veth(const std::string& name, int name_netns_fd, const std::string& peer,
                            int peer_netns_fd) {
  LinkPtr link(rtnl_link_veth_alloc());
  if (!link) return make_error("rtnl_link_veth_alloc", "out of memory", name);
  LinkPtr peer_link(rtnl_link_veth_get_peer(link.get()));
  rtnl_link_set_name(link.get(), name.c_str());
  rtnl_link_set_name(peer_link.get(), peer.c_str());
  if (name_netns_fd >= 0) rtnl_link_set_ns_fd(link.get(), name_netns_fd);
  if (peer_netns_fd >= 0) rtnl_link_set_ns_fd(peer_link.get(), peer_netns_fd);
  if (int err = rtnl_link_add(sock_.get(), link.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0) {
    return nl_error("create veth pair", name + " <-> " + peer, err);
  }
  return {};
}

Result<bool> Rtnl::delete_link(const std::string& name) {
  LinkPtr link(rtnl_link_alloc());
  if (!link) return make_error("rtnl_link_alloc", "out of memory", name);
  rtnl_link_set_name(link.get(), name.c_str());
  int err = rtnl_link_delete(sock_.get(), link.get());
  if (err >= 0) return true;
  if (is_not_found(err)) return false;
  return nl_error("delete link", name, err);
}

Result<void> Rtnl::set_up(const std::string& name, std::optional<Mac> mac) {
  auto link = get_link(sock_.get(), name);
  if (!link) return std::move(link).error();
  LinkPtr change(rtnl_link_alloc());
  if (!change) return make_error("rtnl_link_alloc", "out of memory", name);
  rtnl_link_set_flags(change.get(), IFF_UP);
  if (mac) {
    NlAddrPtr lladdr(nl_addr_build(AF_LLC, mac->bytes.data(), mac->bytes.size()));
    if (!lladdr) return make_error("nl_addr_build", "out of memory", mac->str());
    rtnl_link_set_addr(change.get(), lladdr.get());
  }
  if (int err = rtnl_link_change(sock_.get(), link->get(), change.get(), 0); err < 0) {
    return nl_error(mac ? "set MAC " + mac->str() + " and bring up link" : "bring up link", name,
                    err);
  }
  return {};
}

Result<void> Rtnl::add_address(const std::string& link_name, Ipv4 address, int prefix) {
  auto index = link_index(link_name);
  if (!index) return std::move(index).error();
  AddrPtr addr(rtnl_addr_alloc());
  if (!addr) return make_error("rtnl_addr_alloc", "out of memory");
  auto local = inet_addr(address, prefix);
  if (!local) return std::move(local).error();
  rtnl_addr_set_ifindex(addr.get(), *index);
  rtnl_addr_set_family(addr.get(), AF_INET);
  if (int err = rtnl_addr_set_local(addr.get(), local->get()); err < 0) {
    return nl_error("set local address", address.str(), err);
  }
  if (int err = rtnl_addr_add(sock_.get(), addr.get(), 0); err < 0) {
    return nl_error("add address " + address.str() + "/" + std::to_string(prefix), link_name, err);
  }
  return {};
}

Result<std::vector<Ipv4>> Rtnl::ipv4_addresses() {
  nl_cache* raw = nullptr;
  if (int err = rtnl_addr_alloc_cache(sock_.get(), &raw); err < 0) {
    return nl_error("list addresses", "", err);
  }
  CachePtr cache(raw);
  std::vector<Ipv4> addresses;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    auto* addr = reinterpret_cast<rtnl_addr*>(object);
    if (rtnl_addr_get_family(addr) != AF_INET) continue;
    nl_addr* local = rtnl_addr_get_local(addr);
    if (!local || nl_addr_get_len(local) != 4) continue;
    in_addr raw_address;
    std::memcpy(&raw_address, nl_addr_get_binary_addr(local), 4);
    addresses.push_back(Ipv4::from_network(raw_address));
  }
  return addresses;
}

Result<void> Rtnl::replace_default_route(uint32_t table, const std::string& link_name,
                                         std::optional<Ipv4> gateway) {
  auto index = link_index(link_name);
  if (!index) return std::move(index).error();
  RoutePtr route = default_route(table);
  if (!route) return make_error("rtnl_route_alloc", "out of memory");
  rtnl_route_set_protocol(route.get(), RTPROT_STATIC);
  rtnl_route_set_type(route.get(), RTN_UNICAST);
  rtnl_route_set_scope(route.get(), gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK);
  rtnl_nexthop* nh = rtnl_route_nh_alloc();
  if (!nh) return make_error("rtnl_route_nh_alloc", "out of memory");
  rtnl_route_nh_set_ifindex(nh, *index);
  if (gateway) {
    auto gw = inet_addr(*gateway, 32);
    if (!gw) {
      rtnl_route_nh_free(nh);
      return std::move(gw).error();
    }
    rtnl_route_nh_set_gateway(nh, gw->get());
  }
  rtnl_route_add_nexthop(route.get(), nh); // the route owns nh from here
  if (int err = rtnl_route_add(sock_.get(), route.get(), NLM_F_CREATE | NLM_F_REPLACE); err < 0) {
    return nl_error("set default route" + (gateway ? " via " + gateway->str() : std::string()),
                    "dev " + link_name + " table " + std::to_string(table), err);
  }
  return {};
}

Result<bool> Rtnl::delete_default_route(uint32_t table) {
  RoutePtr route = default_route(table);
  if (!route) return make_error("rtnl_route_alloc", "out of memory");
  int err = rtnl_route_delete(sock_.get(), route.get(), 0);
  if (err >= 0) return true;
  if (is_not_found(err) || err == -NLE_FAILURE) return false;
  return nl_error("delete default route", "table " + std::to_string(table), err);
}

Result<int> Rtnl::flush_table(uint32_t table) {
  nl_cache* raw = nullptr;
  if (int err = rtnl_route_alloc_cache(sock_.get(), AF_INET, 0, &raw); err < 0) {
    return nl_error("list routes", "table " + std::to_string(table), err);
  }
  CachePtr cache(raw);
  int deleted = 0;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    auto* route = reinterpret_cast<rtnl_route*>(object);
    if (rtnl_route_get_table(route) != table) continue;
    int err = rtnl_route_delete(sock_.get(), route, 0);
    if (err < 0 && !is_not_found(err)) {
      return nl_error("delete route " + describe_route(route), "table " + std::to_string(table),
                      err);
    }
    ++deleted;
  }
  return deleted;
}

Result<std::vector<std::string>> Rtnl::routes_in_table(uint32_t table) {
  nl_cache* raw = nullptr;
  if (int err = rtnl_route_alloc_cache(sock_.get(), AF_INET, 0, &raw); err < 0) {
    return nl_error("list routes", "table " + std::to_string(table), err);
  }
  CachePtr cache(raw);
  std::vector<std::string> routes;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    auto* route = reinterpret_cast<rtnl_route*>(object);
    if (rtnl_route_get_table(route) == table) routes.push_back(describe_route(route));
  }
  return routes;
}

Result<void> Rtnl::add_iif_rule(uint32_t priority, const std::string& iif,
                                std::optional<uint32_t> table) {
  RulePtr rule(rtnl_rule_alloc());
  if (!rule) return make_error("rtnl_rule_alloc", "out of memory");
  rtnl_rule_set_family(rule.get(), AF_INET);
  rtnl_rule_set_prio(rule.get(), priority);
  if (int err = rtnl_rule_set_iif(rule.get(), iif.c_str()); err < 0) {
    return nl_error("set rule iif", iif, err);
  }
  if (table) {
    rtnl_rule_set_action(rule.get(), FR_ACT_TO_TBL);
    rtnl_rule_set_table(rule.get(), *table);
  } else {
    rtnl_rule_set_action(rule.get(), FR_ACT_UNREACHABLE);
  }
  if (int err = rtnl_rule_add(sock_.get(), rule.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0) {
    return nl_error("add rule iif " + iif + " priority " + std::to_string(priority),
                    table ? "lookup " + std::to_string(*table) : "unreachable", err);
  }
  return {};
}

Result<int> Rtnl::delete_iif_rules(const std::string& iif) {
  nl_cache* raw = nullptr;
  if (int err = rtnl_rule_alloc_cache(sock_.get(), AF_INET, &raw); err < 0) {
    return nl_error("list rules", iif, err);
  }
  CachePtr cache(raw);
  int deleted = 0;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    auto* rule = reinterpret_cast<rtnl_rule*>(object);
    const char* rule_iif = rtnl_rule_get_iif(rule);
    if (!rule_iif || iif != rule_iif) continue;
    int err = rtnl_rule_delete(sock_.get(), rule, 0);
    if (err < 0 && !is_not_found(err)) return nl_error("delete rule with iif", iif, err);
    ++deleted;
  }
  return deleted;
}

Result<int> Rtnl::count_iif_rules(const std::string& iif) {
  nl_cache* raw = nullptr;
  if (int err = rtnl_rule_alloc_cache(sock_.get(), AF_INET, &raw); err < 0) {
    return nl_error("list rules", iif, err);
  }
  CachePtr cache(raw);
  int count = 0;
  for (auto* object = nl_cache_get_first(cache.get()); object; object = nl_cache_get_next(object)) {
    const char* rule_iif = rtnl_rule_get_iif(reinterpret_cast<rtnl_rule*>(object));
    if (rule_iif && iif == rule_iif) ++count;
  }
  return count;
}

} // namespace vesicle::net
