// Ports inside a sandbox through vesicle's own API:
// ANY /v1/sandboxes/{id}/ports/{port}/<path> reaches <path> on the server
// listening on {port} in the sandbox (port_proxy.hpp), with the caller's
// key as its credential. E2B's headers and the host-name form reach the
// same relay through e2b_ports.cpp.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <optional>

#include "hostd/api.hpp"

namespace vesicle::hostd {

namespace {

// The request target past /v1/sandboxes/{id}/ports/{port}: "/" when
// nothing follows; the query kept.
std::string inner_target(std::string_view target) {
  const auto question = target.find('?');
  const std::string_view path = target.substr(0, question);
  const std::string_view query =
      question == std::string_view::npos ? std::string_view{} : target.substr(question);
  std::size_t at = 0;
  for (int segments = 0; segments < 5 && at < path.size();) {
    while (at < path.size() && path[at] == '/')
      ++at;
    const auto slash = path.find('/', at);
    at = slash == std::string_view::npos ? path.size() : slash;
    ++segments;
  }
  std::string inner(path.substr(at));
  if (inner.empty() || inner.front() != '/') inner.insert(inner.begin(), '/');
  inner.append(query);
  return inner;
}

} // namespace

asio::awaitable<void> Api::port(Exchange& exchange, const std::string& owner,
                                const std::vector<std::string>& path) {
  auto port = parse_port(path[4]);
  if (!port) co_return co_await exchange.respond_error(port.error());
  PortRequest request;
  request.port = *port;
  request.target = inner_target(exchange.target());
  // The key is hostd's, not the sandbox server's.
  request.drop_headers = {"authorization"};
  auto relayed = co_await relay_port(exchange, owner, path[2], std::move(request));
  if (!relayed) co_await exchange.respond_error(relayed.error());
}

asio::awaitable<Result<void>> Api::relay_port(Exchange& exchange, const std::string& owner,
                                              const std::string& id, PortRequest request) {
  // An operation lease while the request runs: a web app in use keeps the
  // sandbox from idling out. A WebSocket gives it back once accepted, so a
  // connection open for hours does not keep a pause or fork waiting.
  std::optional<VmLease> lease;
  {
    auto taken = co_await begin_op(owner, id);
    if (!taken) co_return std::move(taken).error();
    lease.emplace(std::move(*taken));
  }
  // The VM object outlives the lease (the relay's channel ends with it).
  auto vm = lease->vm_pointer();
  const std::uint16_t port = request.port;
  request.on_upgraded = [&lease] { lease.reset(); };
  auto relayed = co_await relay_http(exchange, vm->agent(), std::move(request));
  const std::string doing = "relaying port " + std::to_string(port);
  if (!relayed && lease && !lease->usable())
    co_return co_await agent_failure(*lease, relayed.error(), doing);
  co_return relayed;
}

} // namespace vesicle::hostd
