// A hostd in cluster mode registers with its gateways over CAF's remote
// actors (docs/cluster.md): one link actor per gateway connects to the
// gateway's published actor, registers itself (with the cluster secret)
// as the node actor the gateway calls, answers the gateway's heartbeats
// with its capacity, pushes a report when that changes, and reconnects
// when the link drops (a gateway restart rebuilds its view this way).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "actors/sandbox/pool.hpp"
#include "actors/sandbox/registry.hpp"
#include "common/result.hpp"
#include "hostd/cluster_protocol.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

struct NodeLinkSettings {
  std::string gateway_host;
  std::uint16_t gateway_port = 0;
  std::string secret;
  NodeReport identity; // name, region, url, tag; the room is measured
  registry_actor registry;
  std::vector<pool_actor> pools;
  std::chrono::milliseconds heartbeat{1000};
};

// Spawns the link actor for one gateway (detached: it reads /proc).
caf::actor spawn_node_link(caf::actor_system& system, NodeLinkSettings settings);

// For main, before the actor system is built: checks the cluster section,
// reads the secret (returned), sets the id tag and the identity the API
// shows, and loads caf::io into `actor_config`.
Result<std::string> prepare_cluster_node(config::HostdConfig& config,
                                         caf::actor_system_config& actor_config);
// Once the REST API listens at `api`: a link actor per gateway.
std::vector<caf::actor>
start_cluster_node(caf::actor_system& system, const config::HostdConfig& config,
                   const std::string& secret, const boost::asio::ip::tcp::endpoint& api,
                   registry_actor registry, const std::vector<pool_actor>& pools);

// The host's MemAvailable in MiB (0 if unknown).
std::uint64_t memory_available_mib();

} // namespace vesicle::hostd
