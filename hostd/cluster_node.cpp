#include "hostd/cluster_node.hpp"

#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "common/ids.hpp"
#include "common/log.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/config.hpp"
#include "messages/caf_types.hpp"

namespace vesicle::hostd {

namespace {

constexpr auto kRetry = std::chrono::seconds(1);
constexpr auto kCallTimeout = std::chrono::seconds(5);

struct NodeLinkState {
  NodeLinkSettings settings;
  caf::actor gateway; // null while not connected
  bool welcomed = false;
  // CAF nodes (gateway processes) that proved the secret with cl_hello;
  // only they are served.
  std::set<caf::node_id> trusted;
  NodeReport report; // the latest measurement
  NodeReport sent;   // what the gateway last got pushed
  bool measuring = false;
  static inline const char* name = "vesicle.node_link";
};

using NodeLink = caf::stateful_actor<NodeLinkState>;

std::string gateway_address(const NodeLinkSettings& settings) {
  return settings.gateway_host + ":" + std::to_string(settings.gateway_port);
}

void reconnect_later(NodeLink* self, caf::timespan delay) {
  if (self->state.gateway) self->demonitor(self->state.gateway);
  self->state.gateway = nullptr;
  self->state.welcomed = false;
  self->delayed_send(self, delay, cl_connect_atom::value);
}

void push_if_changed(NodeLink* self) {
  auto& state = self->state;
  if (!state.gateway || !state.welcomed || state.report.same_room(state.sent)) return;
  state.sent = state.report;
  self->send(state.gateway, cl_report_atom::value, state.report);
}

// Measures the room (registry, pools, host memory) into state.report.
void measure(NodeLink* self) {
  auto& state = self->state;
  if (state.measuring) return;
  state.measuring = true;
  self->request(state.settings.registry, kCallTimeout, capacity_atom::value)
      .then(
          [=](const CapacityInfo& room) {
            auto& report = self->state.report;
            report.max_sandboxes = room.max_sandboxes;
            report.available = room.available();
            report.memory_free_mib = memory_available_mib();
            const auto& pools = self->state.settings.pools;
            if (pools.empty()) {
              report.pool_ready = 0;
              self->state.measuring = false;
              push_if_changed(self);
              return;
            }
            // Fan in the pools' answers; a pool that does not answer counts 0.
            auto left = std::make_shared<std::size_t>(pools.size());
            auto ready = std::make_shared<std::uint32_t>(0);
            auto one_done = [=] {
              if (--*left > 0) return;
              self->state.report.pool_ready = *ready;
              self->state.measuring = false;
              push_if_changed(self);
            };
            for (const auto& pool : pools)
              self->request(pool, kCallTimeout, pool_info_atom::value)
                  .then(
                      [=](const PoolInfo& info) {
                        *ready += info.ready;
                        one_done();
                      },
                      [=](caf::error&) { one_done(); });
          },
          [=](caf::error& failure) {
            self->state.measuring = false;
            log::warn("cluster: the registry did not report its capacity",
                      {{"error", to_error(failure).message()}});
          });
}

void connect(NodeLink* self) {
  auto& settings = self->state.settings;
  if (self->state.gateway) return;
  auto middleman = self->system().middleman().actor_handle();
  self->request(middleman, kCallTimeout, caf::connect_atom::value, settings.gateway_host,
                settings.gateway_port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& found, const std::set<std::string>&) {
            if (!found) return reconnect_later(self, kRetry);
            auto gateway = caf::actor_cast<caf::actor>(std::move(found));
            self->state.gateway = gateway;
            self->monitor(gateway);
            self->request(gateway, kCallTimeout, cl_register_atom::value,
                          self->state.settings.secret, self->state.report,
                          caf::actor_cast<caf::actor>(self))
                .then(
                    [=](cl_welcome_atom, const std::string& theirs) {
                      auto& state = self->state;
                      if (!secret_matches(state.settings.secret, theirs)) {
                        log::error("cluster: the gateway does not know the cluster secret; "
                                   "not registering with it",
                                   {{"gateway", gateway_address(state.settings)}});
                        return reconnect_later(self, std::chrono::seconds(10));
                      }
                      state.welcomed = true;
                      state.sent = state.report;
                      log::info("cluster: registered with the gateway",
                                {{"gateway", gateway_address(state.settings)},
                                 {"node", state.settings.identity.name},
                                 {"region", state.settings.identity.region}});
                    },
                    [=](caf::error& failure) {
                      log::warn("cluster: the gateway refused the registration",
                                {{"gateway", gateway_address(self->state.settings)},
                                 {"error", to_error(failure).message()}});
                      reconnect_later(self, std::chrono::seconds(5));
                    });
          },
          [=](caf::error&) {
            // The gateway is not up (yet): keep trying, quietly.
            self->delayed_send(self, kRetry, cl_connect_atom::value);
          });
}

caf::behavior node_link(NodeLink* self, NodeLinkSettings settings) {
  self->state.settings = std::move(settings);
  self->state.report = self->state.settings.identity;
  self->set_down_handler([=](caf::down_msg& down) {
    auto& state = self->state;
    state.trusted.erase(down.source.node());
    if (!state.gateway || down.source != state.gateway.address()) return;
    log::warn("cluster: lost the link to the gateway; reconnecting",
              {{"gateway", gateway_address(state.settings)}});
    state.gateway = nullptr;
    state.welcomed = false;
    self->delayed_send(self, kRetry, cl_connect_atom::value);
  });
  measure(self);
  self->send(self, cl_connect_atom::value);
  self->delayed_send(self, self->state.settings.heartbeat, cl_tick_atom::value);
  return {
      [=](cl_connect_atom) { connect(self); },
      [=](cl_tick_atom) {
        measure(self);
        self->delayed_send(self, self->state.settings.heartbeat, cl_tick_atom::value);
      },
      // The gateway proves the secret before it is served anything.
      [=](cl_hello_atom, const std::string& theirs) -> caf::result<NodeReport> {
        const auto& sender = self->current_sender();
        if (!sender || !secret_matches(self->state.settings.secret, theirs)) {
          log::warn("cluster: a peer without the cluster secret called this node");
          return make_error(ErrorKind::unauthenticated, "the cluster secret does not match");
        }
        self->state.trusted.insert(sender->node());
        return self->state.report;
      },
      [=](cl_status_atom) -> caf::result<NodeReport> {
        const auto& sender = self->current_sender();
        if (!sender || self->state.trusted.count(sender->node()) == 0)
          return make_error(ErrorKind::unauthenticated, "send cl_hello with the secret first");
        return self->state.report;
      },
  };
}

} // namespace

caf::actor spawn_node_link(caf::actor_system& system, NodeLinkSettings settings) {
  return system.spawn<caf::detached>(node_link, std::move(settings));
}

Result<std::string> prepare_cluster_node(config::HostdConfig& config,
                                         caf::actor_system_config& actor_config) {
  if (auto checked = check_node_cluster_config(config); !checked) return checked.error();
  auto secret = read_cluster_secret(config.cluster().secret_file());
  if (!secret) return secret;
  set_node_id_tag(node_tag(config.cluster().node_name()));
  set_cluster_identity({config.cluster().node_name(), config.cluster().region()});
  configure_cluster_actor_system(actor_config);
  return secret;
}

std::vector<caf::actor>
start_cluster_node(caf::actor_system& system, const config::HostdConfig& config,
                   const std::string& secret, const boost::asio::ip::tcp::endpoint& api,
                   registry_actor registry, const std::vector<pool_actor>& pools) {
  const auto& cluster = config.cluster();
  NodeReport identity;
  identity.name = cluster.node_name();
  identity.region = cluster.region();
  identity.tag = node_tag(identity.name);
  identity.url = !cluster.advertise_url().empty()
                     ? cluster.advertise_url()
                     : "http://" + api.address().to_string() + ":" + std::to_string(api.port());
  std::vector<caf::actor> links;
  for (const auto& gateway : cluster.gateways()) {
    auto address = parse_listen_address(gateway); // checked by prepare_cluster_node
    if (!address) continue;
    links.push_back(
        spawn_node_link(system, {address->host, address->port, secret, identity, registry, pools,
                                 std::chrono::milliseconds(cluster.heartbeat_ms())}));
  }
  log::info("cluster: node mode", {{"node", identity.name},
                                   {"region", identity.region},
                                   {"url", identity.url},
                                   {"tag", identity.tag}});
  return links;
}

std::uint64_t memory_available_mib() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    std::uint64_t kib = 0;
    fields >> kib;
    return kib / 1024;
  }
  return 0;
}

} // namespace vesicle::hostd
