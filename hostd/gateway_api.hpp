// The cluster gateway's REST API (docs/cluster.md): the same routes as a
// node's, authenticated here, each call passed on to the node that holds
// its sandbox or Space (the id's tag says which), a create placed by
// region and room, the lists merged from every node, plus
// GET /v1/admin/nodes.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "hostd/gateway_members.hpp"
#include "hostd/http_exchange.hpp"
#include "hostd/keys.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

class GatewayApi {
public:
  GatewayApi(const KeyStore& keys, Members& members, const config::HostdConfig& config)
      : keys_(keys), members_(members), config_(config) {}

  asio::awaitable<void> handle(Exchange& exchange);

private:
  asio::awaitable<void> route(Exchange& exchange, const std::vector<std::string>& path,
                              std::string& key_id);
  asio::awaitable<void> create(Exchange& exchange, std::string_view query);
  // A call about one sandbox or Space, to the node its id names.
  asio::awaitable<void> to_holder(Exchange& exchange, const std::string& id);
  // GET of a list on every node up, merged: `list` is "sandboxes",
  // "spaces" or "admin" (the admin's list of every key's sandboxes).
  asio::awaitable<void> merged_list(Exchange& exchange, const std::string& list);
  asio::awaitable<void> nodes(Exchange& exchange);
  asio::awaitable<void> capacity(Exchange& exchange);
  asio::awaitable<void> metrics(Exchange& exchange);
  asio::awaitable<void> healthz(Exchange& exchange);

  const KeyStore& keys_;
  Members& members_;
  const config::HostdConfig& config_;
  std::uint64_t requests_ = 0;
  std::uint64_t node_unavailable_ = 0;
};

} // namespace vesicle::hostd
