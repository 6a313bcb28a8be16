#include "net/ipv4.hpp"

#include <algorithm>

#include <arpa/inet.h>

#include <charconv>

namespace vesicle::net {

Result<Ipv4> Ipv4::parse(std::string_view text) {
  // inet_pton accepts only dotted quads (no "1", no octal), which is what we
  // want for addresses that come from configuration.
  std::string copy(text);
  in_addr addr{};
  if (copy.empty() || inet_pton(AF_INET, copy.c_str(), &addr) != 1) {
    return make_error("parse IPv4 address", "expected a dotted quad such as 10.0.0.1",
                      std::string(text));
  }
  return Ipv4::from_network(addr);
}

std::string Ipv4::str() const {
  char buffer[INET_ADDRSTRLEN];
  in_addr addr = to_network();
  inet_ntop(AF_INET, &addr, buffer, sizeof buffer);
  return buffer;
}

Result<Cidr> Cidr::parse(std::string_view text) {
  auto slash = text.find('/');
  auto address = Ipv4::parse(text.substr(0, slash));
  if (!address)
    return std::move(address).error().with_context("parse network " + std::string(text));
  Cidr cidr{*address, 32};
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    int prefix = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (ec != std::errc{} || end != digits.data() + digits.size() || prefix < 0 || prefix > 32) {
      return make_error("parse network", "the prefix length must be 0..32", std::string(text));
    }
    cidr.prefix = prefix;
  }
  if ((cidr.network.value & ~cidr.mask()) != 0) {
    return make_error("parse network",
                      "host bits are set; write the network address (e.g. 10.0.0.0/8)",
                      std::string(text));
  }
  return cidr;
}

bool Cidr::contains(Ipv4 address) const {
  return (address.value & mask()) == network.value;
}

std::string Cidr::str() const {
  return network.str() + "/" + std::to_string(prefix);
}

bool contains_any(const std::vector<Cidr>& networks, Ipv4 address) {
  for (const auto& network : networks) {
    if (network.contains(address)) return true;
  }
  return false;
}

bool overlaps(const Cidr& a, const Cidr& b) {
  return a.contains(b.network) || b.contains(a.network);
}

std::vector<Cidr> subtract(const std::vector<Cidr>& networks, const std::vector<Cidr>& holes) {
  std::vector<Cidr> out;
  std::vector<Cidr> work(networks.rbegin(), networks.rend());
  while (!work.empty()) {
    Cidr network = work.back();
    work.pop_back();
    auto hole = std::find_if(holes.begin(), holes.end(),
                             [&](const Cidr& h) { return overlaps(h, network); });
    if (hole == holes.end()) {
      out.push_back(network);
    } else if (hole->prefix > network.prefix) {
      // The hole is inside: split in halves, and look at each again.
      Cidr low{network.network, network.prefix + 1};
      Cidr high{Ipv4{network.network.value | (uint32_t{1} << (31 - network.prefix))},
                network.prefix + 1};
      work.push_back(high);
      work.push_back(low);
    } // else the hole covers the whole network: nothing of it is left
  }
  return out;
}

} // namespace vesicle::net
