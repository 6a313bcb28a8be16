#include "hostd/cluster_protocol.hpp"

#include <caf/io/middleman.hpp>

namespace vesicle::hostd {

void configure_cluster_actor_system(caf::actor_system_config& config) {
  config.load<caf::io::middleman>();
  config.add_message_type<NodeReport>("vesicle.NodeReport");
}

} // namespace vesicle::hostd
