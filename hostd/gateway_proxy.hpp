// Passes one REST call from a gateway's client to a node's REST API and the
// node's answer back (docs/cluster.md). Both bodies stream through in
// pieces as they come (exec output, file transfers): the gateway never holds
// a whole body, only a create's small JSON, which it reads to place it.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "hostd/gateway_members.hpp"
#include "hostd/http_exchange.hpp"

namespace vesicle::hostd {

// A gateway's ErrorKind::unavailable means the node that holds (or would
// hold) the call cannot be reached: clients get 503 with the code
// "node_unavailable" (the SDK's NodeUnavailableError), which no single
// host ever answers. Other errors go out as a node's would.
inline constexpr const char* kNodeUnavailableCode = "node_unavailable";
asio::awaitable<void> respond_gateway_error(Exchange& exchange, const Error& error);

struct ProxyTarget {
  std::string node;
  std::string region;
  std::string host;
  std::string port;
};
ProxyTarget proxy_target(const Member& member);

// Forwards the exchange's request (its method, target and headers; `body`
// if the caller already read it, else the body as it arrives) and writes
// the node's answer. A node that cannot be reached, or that goes down
// (Members aborts the call) before it answered, is a 503
// node_unavailable; after the answer began, the client's response is cut.
asio::awaitable<void> proxy_call(Exchange& exchange, const ProxyTarget& target, Members& members,
                                 std::optional<std::string> body);

// A call the gateway makes itself (the lists it merges from every node):
// the whole answer, at most `max_bytes`.
struct NodeAnswer {
  unsigned status = 0;
  std::string body;
};
asio::awaitable<Result<NodeAnswer>> node_get(const ProxyTarget& target, Members& members,
                                             std::string target_path, std::string authorization,
                                             std::size_t max_bytes);

} // namespace vesicle::hostd
