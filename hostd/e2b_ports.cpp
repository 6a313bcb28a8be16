// Any port inside an E2B sandbox other than envd's and the interpreter's:
// what getHost(port) names, reached by E2B's headers (E2b-Sandbox-Id,
// E2b-Sandbox-Port) or the host name <port>-<id>.<sandbox_domain>, and
// relayed by port_proxy.hpp.
//
// Who may: a client sending the sandbox's envdAccessToken (X-Access-Token,
// what E2B's SDK sends), its trafficAccessToken (e2b-traffic-access-token,
// what E2B documents for private ports) or the owner's key (X-API-KEY);
// anyone when the creator made the sandbox's ports public
// (network.allowPublicTraffic: true). E2B's own default is public; vesicle's
// is not, so a port is never open to the world unless asked for.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include "hostd/api.hpp"
#include "hostd/e2b.hpp"

namespace vesicle::hostd::e2b {

asio::awaitable<void> E2b::port(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                std::string_view port_text) {
  auto port = parse_port(port_text);
  if (!port) co_return co_await exchange.respond(400, error_body(400, port.error().message()));
  bool allowed = sandbox->public_traffic;
  if (auto token = exchange.header("X-Access-Token"); !token.empty())
    allowed = allowed || same_secret(token, sandbox->token);
  if (auto token = exchange.header("e2b-traffic-access-token"); !token.empty())
    allowed = allowed || same_secret(token, sandbox->traffic_token);
  if (auto key = exchange.header("X-API-KEY"); !key.empty()) {
    auto owner = api_.ctx_.keys.authenticate(vesicle_key(key));
    allowed = allowed || (owner && *owner == sandbox->owner);
  }
  if (!allowed)
    co_return co_await exchange.respond(
        401, error_body(401, "port " + std::to_string(*port) +
                                 " of this sandbox is private: send its envdAccessToken as "
                                 "X-Access-Token or its trafficAccessToken as "
                                 "e2b-traffic-access-token (or create it with "
                                 "network.allowPublicTraffic: true)"));
  if (sandbox->vid.empty() || sandbox->changing)
    co_return co_await exchange.respond(
        502, error_body(502, "sandbox \"" + sandbox->id +
                                 "\" is paused (or being paused or resumed); connect to it to "
                                 "resume it"));
  PortRequest request;
  request.port = *port;
  request.target = std::string(exchange.target());
  request.drop_headers = {"x-access-token", "e2b-traffic-access-token", "x-api-key",
                          "e2b-sandbox-id", "e2b-sandbox-port"};
  auto relayed =
      co_await api_.relay_port(exchange, sandbox->owner, sandbox->vid, std::move(request));
  if (!relayed) {
    // E2B's proxy answers 502 when nothing listens on the port.
    const unsigned status =
        relayed.error().kind == ErrorKind::unavailable ? 502 : status_of(relayed.error());
    co_await exchange.respond(status, error_body(status, relayed.error().message()));
  }
}

} // namespace vesicle::hostd::e2b
