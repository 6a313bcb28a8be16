// hostd's port proxy: one HTTP request from a client (a browser, E2B's SDK
// with getHost(port), vesicle's SDK with sb.url(port)) relayed to a TCP port
// inside a sandbox, and the server's answer relayed back. The bytes go over
// the agent channel (vmm::AgentClient::open_port: the agent connects to
// 127.0.0.1:port in the guest), so it works with egress off and with no
// guest network at all: the traffic never leaves the host.
//
// How (README "Ports inside a sandbox"):
//  - the request's header is re-written for the guest: hop-by-hop headers
//    and the credentials hostd consumed are dropped, `Connection: close` is
//    added, the body is streamed (chunked bodies re-chunked) as it comes;
//  - the answer's header is read (at most 64 KiB), its Connection and
//    Keep-Alive headers replaced by `Connection: close`, and the rest is
//    streamed to the client until the server closes; the client's
//    connection then closes too (one proxied request per connection keeps
//    hostd out of parsing the server's body framing);
//  - a WebSocket (any Upgrade answered with 101) is relayed both ways
//    until either side closes.
// Every buffer is bounded: the channel's windows (256 KiB each way per
// connection) pace a slow client or a slow server.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "hostd/http_exchange.hpp"
#include "vmm/agent_client.hpp"

namespace vesicle::hostd {

struct PortRequest {
  std::uint16_t port = 0;
  // The request target the guest's server sees: "/path?query".
  std::string target;
  // Request headers not to pass on (lowercase), beside the hop-by-hop ones:
  // the credentials hostd took the request on.
  std::vector<std::string> drop_headers;
  // Called once a WebSocket (or other upgrade) was accepted by the guest's
  // server: the caller may then drop its operation lease, so a connection
  // that stays open for hours does not keep the sandbox from being paused.
  std::function<void()> on_upgraded;
};

// Relays the request in `exchange` to the sandbox whose agent is `agent`.
// An Error only when nothing was written to the client yet (the caller
// answers it in its own error style: nothing listens on the port is
// ErrorKind::unavailable); once the answer began, a failure closes the
// client's connection.
asio::awaitable<Result<void>> relay_http(Exchange& exchange, vmm::AgentClient& agent,
                                         PortRequest request);

// A port number from a path segment or header: 1..65535, digits only.
Result<std::uint16_t> parse_port(std::string_view text);

// The host-name form of a port: "<port>-<sandbox id>.<domain>" (any
// ":port" of hostd's own listener after it), case-insensitive. Nullopt
// when `host` is not of that form under `domain`.
struct PortHost {
  std::uint16_t port = 0;
  std::string sandbox_id;
};
std::optional<PortHost> parse_port_host(std::string_view host, std::string_view domain);

} // namespace vesicle::hostd
