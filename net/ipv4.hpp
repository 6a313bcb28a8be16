// IPv4 addresses and prefixes as values: parsed once, compared and formatted
// without touching the resolver. The network layer is IPv4-only on purpose
// (sandbox IPv6 is dropped everywhere); see net/README.md.
#pragma once

#include <netinet/in.h>

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace vesicle::net {

struct Ipv4 {
  uint32_t value = 0; // host byte order

  static Result<Ipv4> parse(std::string_view text);
  static Ipv4 from_network(in_addr addr) { return Ipv4{ntohl(addr.s_addr)}; }
  in_addr to_network() const { return in_addr{htonl(value)}; }
  std::string str() const;
  auto operator<=>(const Ipv4&) const = default;
};

struct Cidr {
  Ipv4 network;
  int prefix = 32;

  // "10.0.0.0/8"; a bare address means /32. Host bits must be zero.
  static Result<Cidr> parse(std::string_view text);
  bool contains(Ipv4 address) const;
  uint32_t mask() const { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }
  uint64_t size() const { return uint64_t{1} << (32 - prefix); }
  std::string str() const;
  auto operator<=>(const Cidr&) const = default;
};

bool contains_any(const std::vector<Cidr>& networks, Ipv4 address);
bool overlaps(const Cidr& a, const Cidr& b);
// `networks` without the addresses in `holes`, as the fewest CIDRs that
// splitting at prefix boundaries gives ("10.0.0.0/8" minus "10.1.0.0/16"
// is eight networks, /9 to /16).
std::vector<Cidr> subtract(const std::vector<Cidr>& networks, const std::vector<Cidr>& holes);

} // namespace vesicle::net
