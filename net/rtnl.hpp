// Links, addresses, routes and policy rules through libnl-route, in the
// namespace of the thread that opened the handle (see netns.hpp: open it
// inside in_netns() to work on another namespace). Every libnl object is
// owned by a unique_ptr with the matching put/free, so no early return leaks
// one.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "net/ipv4.hpp"

struct nl_sock;

namespace vesicle::net {

struct Mac {
  std::array<uint8_t, 6> bytes{};
  static Result<Mac> parse(std::string_view text); // "02:76:73:00:00:02"
  std::string str() const;
  auto operator<=>(const Mac&) const = default;
};

// Turns a negative libnl return code into an Error (with the errno it
// stands for when there is one).
Error nl_error(std::string operation, std::string subject, int nl_code);

struct NlSockDeleter {
  void operator()(nl_sock* sock) const;
};

class Rtnl {
public:
  // A NETLINK_ROUTE socket in the calling thread's network namespace.
  static Result<Rtnl> open();

  Result<int> link_index(const std::string& name);
  Result<bool> has_link(const std::string& name);
  Result<std::vector<std::string>> link_names();

  // A veth pair `name` <-> `peer`. Each end is created directly in the
  // namespace given by its fd (-1: this handle's namespace).
  Result<void> add_veth(const std::string& name, int name_netns_fd, const std::string& peer,
                        int peer_netns_fd);
  // Deleting one end of a veth deletes both. Returns false when no such link.
  Result<bool> delete_link(const std::string& name);
  // Sets the MAC (if given) and brings the link up.
  Result<void> set_up(const std::string& name, std::optional<Mac> mac = std::nullopt);
  Result<void> add_address(const std::string& link, Ipv4 address, int prefix);
  // Every IPv4 address on every link of this namespace.
  Result<std::vector<Ipv4>> ipv4_addresses();

  // default via `gateway` (or on-link when absent) dev `link`, in `table`.
  Result<void> replace_default_route(uint32_t table, const std::string& link,
                                     std::optional<Ipv4> gateway);
  // Returns false when there was none.
  Result<bool> delete_default_route(uint32_t table);
  // Deletes every IPv4 route in `table`; returns how many.
  Result<int> flush_table(uint32_t table);
  // The IPv4 routes of `table`, as "dst via gw dev N" strings (for leak checks).
  Result<std::vector<std::string>> routes_in_table(uint32_t table);

  // `ip rule add iif <iif> priority <priority> lookup <table>`, or with
  // unreachable instead of a lookup when table is nullopt.
  Result<void> add_iif_rule(uint32_t priority, const std::string& iif,
                            std::optional<uint32_t> table);
  // Deletes every IPv4 rule whose iif is `iif`; returns how many.
  Result<int> delete_iif_rules(const std::string& iif);
  Result<int> count_iif_rules(const std::string& iif);

private:
  explicit Rtnl(std::unique_ptr<nl_sock, NlSockDeleter> sock) : sock_(std::move(sock)) {}
  std::unique_ptr<nl_sock, NlSockDeleter> sock_;
};

} // namespace vesicle::net
