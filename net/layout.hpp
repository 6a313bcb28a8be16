// The names and addresses of the network layer, in one place.
//
//   host ns                 egress ns <p>-eg                slot ns <p>-<n>          VM
//   uplink (config) ---     up0  .2 ---- <p>-up .1 (host)
//                           s<n> T(n).1 ---------------- veth0 T(n).2
//                                                         tap0 172.16.0.1 ------- eth0 172.16.0.2
//
// T(n) is the /30 number n+1 of the transit network (default 10.222.0.0/16;
// /30 number 0 is the host <-> egress link). Every slot gives its guest the
// same address and MAC, and its tap the same gateway address and MAC, so a
// restored or forked VM finds its network exactly as it left it; NAT in the
// slot namespace (to T(n).2), the egress namespace (to up0's address) and
// the host (to the uplink's address) keeps each slot distinct outside.
#pragma once

#include <cstdint>
#include <string>

#include "net/ipv4.hpp"
#include "net/rtnl.hpp"

namespace vesicle::net::layout {

inline constexpr const char* kGuestLink = "tap0";     // slot ns: the VM's tap (or test veth)
inline constexpr const char* kSlotUplink = "veth0";   // slot ns: towards the egress ns
inline constexpr const char* kEgressUplink = "up0";   // egress ns: towards the host
inline constexpr const char* kTestGuestLink = "eth0"; // stand-in guest ns (tests only)

inline constexpr Ipv4 kGuestAddress{0xAC100002};   // 172.16.0.2
inline constexpr Ipv4 kGatewayAddress{0xAC100001}; // 172.16.0.1
inline constexpr int kGuestPrefix = 30;
inline const Mac kGuestMac{{0x02, 0x76, 0x73, 0x00, 0x00, 0x02}};
inline const Mac kGatewayMac{{0x02, 0x76, 0x73, 0x00, 0x00, 0x01}};

inline constexpr uint16_t kDnsPort = 53;
inline constexpr uint16_t kProxyPort = 15001; // slot ns, on the gateway address

std::string slot_netns(const std::string& prefix, uint32_t id);
std::string guest_netns(const std::string& prefix, uint32_t id); // tests only
std::string egress_netns(const std::string& prefix);
std::string host_link(const std::string& prefix);
std::string egress_slot_link(uint32_t id);
std::string nft_table(const std::string& prefix, const char* role); // "<p>_host" ...
inline uint32_t slot_mark(uint32_t id) {
  return id + 1;
}

// Addresses out of the transit network.
class TransitPlan {
public:
  explicit TransitPlan(Cidr transit) : transit_(transit) {}
  const Cidr& network() const { return transit_; }
  uint32_t max_slots() const { return static_cast<uint32_t>(transit_.size() / 4 - 1); }
  Ipv4 host_side() const { return at(0, 1); }
  Ipv4 egress_side() const { return at(0, 2); }
  Ipv4 slot_egress_side(uint32_t id) const { return at(id + 1, 1); }
  Ipv4 slot_side(uint32_t id) const { return at(id + 1, 2); }
  static constexpr int kLinkPrefix = 30;

private:
  Ipv4 at(uint32_t block, uint32_t host) const {
    return Ipv4{transit_.network.value + block * 4 + host};
  }
  Cidr transit_;
};

} // namespace vesicle::net::layout
