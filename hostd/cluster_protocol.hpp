// The messages between cluster nodes and gateways over CAF's remote actors
// (caf::io, docs/cluster.md). Only built-in types and NodeReport cross the
// link, so both ends need just configure_cluster_actor_system.
//
//   node -> gateway actor:  (cl_register, secret, NodeReport, node actor)
//                            -> (cl_welcome, secret)   both sides check it
//   gateway -> node actor:  (cl_hello, secret) -> NodeReport   first, always
//                           (cl_status) -> NodeReport   the heartbeat
//   node -> gateway actor:  (cl_report, NodeReport)    on change
#pragma once

#include <cstdint>
#include <string>

#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/meta/type_name.hpp>

namespace vesicle::hostd {

using cl_register_atom = caf::atom_constant<caf::atom("clregister")>;
using cl_welcome_atom = caf::atom_constant<caf::atom("clwelcome")>;
using cl_hello_atom = caf::atom_constant<caf::atom("clhello")>;
using cl_status_atom = caf::atom_constant<caf::atom("clstatus")>;
using cl_report_atom = caf::atom_constant<caf::atom("clreport")>;
// a node link's and the gateway's own timers
using cl_connect_atom = caf::atom_constant<caf::atom("clconnect")>;
using cl_tick_atom = caf::atom_constant<caf::atom("cltick")>;

// A node as it describes itself: who, where its REST API is, and its room.
struct NodeReport {
  std::string name;
  std::string region;
  std::string url; // its REST API, "http://host:port"
  std::string tag; // node_tag(name)
  std::uint32_t max_sandboxes = 0;
  std::uint32_t available = 0;  // sandbox slots free
  std::uint32_t pool_ready = 0; // warm VMs waiting, all pools
  std::uint64_t memory_free_mib = 0;

  bool same_room(const NodeReport& other) const {
    return max_sandboxes == other.max_sandboxes && available == other.available &&
           pool_ready == other.pool_ready &&
           // memory moves all the time; a report per 64 MiB of change
           memory_free_mib / 64 == other.memory_free_mib / 64;
  }
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, NodeReport& x) {
  return f(caf::meta::type_name("vesicle.NodeReport"), x.name, x.region, x.url, x.tag,
           x.max_sandboxes, x.available, x.pool_ready, x.memory_free_mib);
}

// Loads CAF's middleman (caf::io) and registers NodeReport. Before the
// actor system is built.
void configure_cluster_actor_system(caf::actor_system_config& config);

} // namespace vesicle::hostd
