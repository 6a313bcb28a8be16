// The network prefix and addresses soak_integration_test and
// crash_restart_integration_test give hostd. They share one ctest resource
// lock (vesicle_netns), so the two never run at once.
#pragma once

#include <cstdint>

#include "net/bridge.hpp"

namespace vesicle::testing {

inline net::BridgeConfig bridge_config() {
  net::BridgeConfig config;
  config.prefix = "vz";
  config.transit = net::Cidr{net::Ipv4{uint32_t{10} << 24 | uint32_t{231} << 16}, 16};
  config.route_table = 1231;
  config.rule_priority = 7481;
  return config;
}

} // namespace vesicle::testing
