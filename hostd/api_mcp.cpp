// /mcp: the Model Context Protocol's streamable HTTP transport (protocol
// 2025-06-18), behind the bearer API key like the rest of the API. Each
// POST carries one JSON-RPC message and gets its answer as one
// application/json body; this server never streams, so it offers no SSE
// stream (GET is 405). initialize opens a session whose id comes back in
// the Mcp-Session-Id header; every later message must carry it (400
// without, 404 for an unknown or ended one, after which a client
// initializes again). DELETE ends a session. The messages themselves are
// hostd/mcp.cpp's.
#include <chrono>

#include "common/log.hpp"
#include "hostd/api.hpp"

namespace vesicle::hostd {

namespace {

constexpr std::string_view kSessionHeader = "Mcp-Session-Id";
constexpr std::string_view kVersionHeader = "MCP-Protocol-Version";

bool mentions(std::string_view header, std::string_view what) {
  return header.find(what) != std::string_view::npos;
}

} // namespace

asio::awaitable<void> Api::mcp(Exchange& exchange, const std::string& owner) {
  const auto method = exchange.method();
  const json::Value no_id;
  // Transport refusals are JSON-RPC error bodies too: that is what an MCP
  // client reads and shows.
  auto refuse = [&](unsigned status, int code, std::string message) {
    return exchange.respond(status, mcp::error_reply(no_id, code, std::move(message)));
  };
  const std::string session(exchange.header(kSessionHeader));

  if (method == http::verb::get) {
    exchange.add_response_header("Allow", "POST, DELETE");
    co_return co_await refuse(405, mcp::kInvalidRequest,
                              "this server sends no server-initiated messages, so it has no SSE "
                              "stream: POST JSON-RPC messages to /mcp");
  }
  if (method == http::verb::delete_) {
    if (session.empty())
      co_return co_await refuse(400, mcp::kInvalidRequest,
                                "DELETE ends a session: send its Mcp-Session-Id header");
    if (!mcp_sessions_.close(session, owner))
      co_return co_await refuse(404, mcp::kInvalidRequest,
                                "no such MCP session (it ended or expired)");
    log::info("mcp session ended", {{"key", owner}});
    co_return co_await exchange.respond_empty(204);
  }
  if (method != http::verb::post) {
    exchange.add_response_header("Allow", "POST, DELETE");
    co_return co_await refuse(405, mcp::kInvalidRequest,
                              "/mcp takes POST (JSON-RPC messages) and DELETE (end a session)");
  }

  const auto content_type = exchange.header(http::field::content_type);
  if (!mentions(content_type, "application/json"))
    co_return co_await refuse(415, mcp::kInvalidRequest,
                              "send the JSON-RPC message with Content-Type: application/json");
  const auto accept = exchange.header(http::field::accept);
  if (!accept.empty() && !mentions(accept, "application/json") && !mentions(accept, "*/*"))
    co_return co_await refuse(406, mcp::kInvalidRequest,
                              "this server answers with application/json: accept it");
  auto body = co_await exchange.read_json_body();
  if (!body)
    co_return co_await refuse(http_status(body.error()), mcp::kInvalidRequest,
                              body.error().message());

  auto step = mcp::step(*body);
  if (!step.initialize) {
    // Everything but initialize belongs to a session. A message that is
    // not even JSON-RPC gets its own error first: it says more.
    if (step.rpc_error && session.empty())
      co_return co_await exchange.respond(400, std::move(*step.reply));
    if (session.empty())
      co_return co_await refuse(400, mcp::kInvalidRequest,
                                "no Mcp-Session-Id header: send initialize first and then the "
                                "session id it returns with every message");
    if (!mcp_sessions_.touch(session, owner))
      co_return co_await refuse(404, mcp::kInvalidRequest,
                                "no such MCP session (it ended or expired): initialize again");
    const auto version = exchange.header(kVersionHeader);
    if (!version.empty() && !mcp::supported_version(version))
      co_return co_await refuse(400, mcp::kInvalidRequest,
                                "unsupported MCP-Protocol-Version \"" + std::string(version) +
                                    "\"; this server speaks " + std::string(mcp::kLatestVersion));
  }
  if (step.initialize) {
    auto id = mcp_sessions_.open(owner, step.protocol_version);
    log::info("mcp session started", {{"key", owner}, {"protocol", step.protocol_version}});
    exchange.add_response_header(std::string(kSessionHeader), id);
  }
  if (step.reply) co_return co_await exchange.respond(200, std::move(*step.reply));
  if (!step.call) co_return co_await exchange.respond_empty(202); // notification or response

  const auto started = std::chrono::steady_clock::now();
  auto result = co_await mcp_tool(owner, *step.call);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  log::info("mcp tool call", {{"tool", step.call->name},
                              {"key", owner},
                              {"error", result.is_error},
                              {"ms", static_cast<long long>(took.count() * 1000)}});
  co_await exchange.respond(200, mcp::tool_reply(step.id, result));
}

} // namespace vesicle::hostd
