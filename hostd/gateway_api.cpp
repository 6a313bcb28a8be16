#include "hostd/gateway_api.hpp"

#include <chrono>
#include <memory>

#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/gateway_proxy.hpp"
#include "hostd/http_request_parts.hpp"
#include "hostd/json.hpp"
#include "messages/api.pb.h"

namespace vesicle::hostd {

namespace {

// The value of `name` in a query string ("" if absent); values here are
// node names, which need no decoding.
std::string query_value(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name && eq != std::string_view::npos)
      return std::string(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

Error unknown_route(const std::vector<std::string>& path) {
  std::string joined;
  for (const auto& part : path)
    joined += "/" + part;
  if (joined.empty()) joined = "/";
  return Error::of(ErrorKind::not_found,
                   "no such API route on a cluster gateway: " + joined +
                       " (it serves /v1/sandboxes, /v1/spaces, /v1/capacity, /v1/healthz, "
                       "/v1/admin, /metrics; /mcp, E2B's API and the page /ui are served by the "
                       "nodes themselves)");
}

double ms_since(std::chrono::steady_clock::time_point then) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - then).count();
}

} // namespace

asio::awaitable<void> GatewayApi::handle(Exchange& exchange) {
  auto started = std::chrono::steady_clock::now();
  ++requests_;
  std::string target(exchange.target());
  auto question = target.find('?');
  std::string_view path = std::string_view(target).substr(0, question);
  const auto parts = split_path(path);
  std::string key_id;
  std::string failure;
  try {
    co_await route(exchange, parts, key_id);
  } catch (const std::exception& e) {
    failure = std::string("the gateway failed: ") + e.what();
  }
  if (!failure.empty()) {
    if (!exchange.responded())
      co_await exchange.respond_error(Error::of(ErrorKind::internal, failure));
    else
      exchange.abandon_stream();
  }
  if (exchange.status() == 503 && !exchange.error_kind()) ++node_unavailable_;
  const bool probe = parts == std::vector<std::string>{"metrics"} ||
                     parts == std::vector<std::string>{"v1", "healthz"};
  const auto level = !failure.empty() ? log::Level::error
                     : probe          ? log::Level::debug
                                      : log::Level::info;
  if (!log::enabled(level)) co_return;
  const auto verb = http::to_string(exchange.method());
  std::vector<log::Field> fields = {{"method", std::string_view(verb.data(), verb.size())},
                                    {"path", path},
                                    {"status", exchange.status()},
                                    {"ms", static_cast<long long>(ms_since(started))}};
  if (!key_id.empty()) fields.emplace_back("key", key_id);
  if (auto kind = exchange.error_kind()) fields.emplace_back("kind", kind_info(*kind).name);
  if (!failure.empty()) fields.emplace_back("error", failure);
  log::write(level, "request", fields);
}

asio::awaitable<void> GatewayApi::route(Exchange& exchange, const std::vector<std::string>& path,
                                        std::string& key_id) {
  auto method = exchange.method();
  auto is = [&](std::initializer_list<std::string_view> pattern) {
    if (pattern.size() != path.size()) return false;
    std::size_t i = 0;
    for (auto part : pattern) {
      if (part != "*" && part != path[i]) return false;
      ++i;
    }
    return true;
  };
  auto not_allowed = [&](const char* allowed) {
    return Error::of(ErrorKind::method_not_allowed,
                     std::string(http::to_string(method)) + " is not allowed here; use " + allowed);
  };
  if (is({"v1", "healthz"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await healthz(exchange);
  }

  auto key = bearer_key(exchange.header(http::field::authorization));
  if (!key)
    co_return co_await exchange.respond_error(Error::of(
        ErrorKind::unauthenticated, "no API key: send the header \"Authorization: Bearer <key>\""));
  auto owner = keys_.authenticate(*key);
  if (!owner)
    co_return co_await exchange.respond_error(Error::of(
        ErrorKind::unauthenticated, "the API key is not valid on this cluster; check for typos"));
  key_id = *owner;

  if (path.size() >= 2 && path[0] == "v1" && path[1] == "admin") {
    const auto* entry = keys_.find(*owner);
    if (!entry || !entry->admin)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::unauthenticated, "this key is not an admin key; /v1/admin needs one"));
    if (is({"v1", "admin", "nodes"})) {
      if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
      co_return co_await nodes(exchange);
    }
    if (is({"v1", "admin", "sandboxes"})) {
      if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
      co_return co_await merged_list(exchange, "admin");
    }
    if (path.size() >= 4 && path[2] == "sandboxes") co_return co_await to_holder(exchange, path[3]);
  }
  if (is({"v1", "capacity"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await capacity(exchange);
  }
  if (is({"metrics"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await metrics(exchange);
  }
  if (is({"v1", "sandboxes"})) {
    std::string_view target = exchange.target();
    auto question = target.find('?');
    auto query =
        question == std::string_view::npos ? std::string_view{} : target.substr(question + 1);
    if (method == http::verb::post) co_return co_await create(exchange, query);
    if (method == http::verb::get) co_return co_await merged_list(exchange, "sandboxes");
    co_return co_await exchange.respond_error(not_allowed("GET or POST"));
  }
  if (is({"v1", "spaces"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await merged_list(exchange, "spaces");
  }
  // Everything about one sandbox or Space goes to its node; a merge's
  // winner is a fork child of the parent, on the same node.
  if (path.size() >= 3 && path[0] == "v1" && (path[1] == "sandboxes" || path[1] == "spaces"))
    co_return co_await to_holder(exchange, path[2]);
  co_await exchange.respond_error(unknown_route(path));
}

asio::awaitable<void> GatewayApi::create(Exchange& exchange, std::string_view query) {
  // The body is small JSON (capped like a node's): read it to place the
  // sandbox, check it as the node would, then send it on unchanged.
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::CreateSandboxRequest request;
  if (!body->empty()) {
    if (auto parsed = from_json(*body, request); !parsed)
      co_return co_await exchange.respond_error(
          Error::of(ErrorKind::invalid_argument,
                    "the body is not a valid create request: " + parsed.error().message()));
  }
  auto placed = members_.place(request.region(), query_value(query, "node"));
  if (!placed) co_return co_await respond_gateway_error(exchange, placed.error());
  auto target = proxy_target(**placed);
  co_await proxy_call(exchange, target, members_, std::move(*body));
}

asio::awaitable<void> GatewayApi::to_holder(Exchange& exchange, const std::string& id) {
  auto tag = tag_of_id(id);
  const Member* member = tag ? members_.by_tag(*tag) : nullptr;
  if (!member) {
    // A gateway that just started may not know the node yet.
    co_return co_await exchange.respond_error(
        Error::of(ErrorKind::not_found,
                  "no sandbox or Space " + id + " (no node of this cluster makes ids like it)"));
  }
  if (!member->up)
    co_return co_await respond_gateway_error(
        exchange, Error::of(ErrorKind::unavailable,
                            "node \"" + member->report.name + "\" (region \"" +
                                member->report.region + "\"), which holds " + id + ", is down (" +
                                member->down_reason + "); retry when it is back"));
  auto target = proxy_target(*member);
  co_await proxy_call(exchange, target, members_, std::nullopt);
}

asio::awaitable<void> GatewayApi::merged_list(Exchange& exchange, const std::string& list) {
  const std::string authorization(exchange.header(http::field::authorization));
  const std::string path(exchange.target()); // with its query (filters)
  // One message type per list; each node's answer merges into `merged`.
  std::unique_ptr<google::protobuf::Message> merged;
  if (list == "spaces")
    merged = std::make_unique<api::ListSpacesResponse>();
  else if (list == "admin")
    merged = std::make_unique<api::AdminSandboxList>();
  else
    merged = std::make_unique<api::ListSandboxesResponse>();
  std::string unavailable;
  // Copies: the members may change while a node answers.
  std::vector<ProxyTarget> targets;
  for (const auto* member : members_.all()) {
    if (member->up)
      targets.push_back(proxy_target(*member));
    else
      unavailable += (unavailable.empty() ? "" : ",") + member->report.name;
  }
  for (const auto& target : targets) {
    auto answer = co_await node_get(target, members_, path, authorization, 64u << 20);
    if (!answer) {
      unavailable += (unavailable.empty() ? "" : ",") + target.node;
      continue;
    }
    if (answer->status != 200) // the node's refusal, e.g. of the key
      co_return co_await exchange.respond_text(answer->status, "application/json",
                                               std::move(answer->body));
    std::unique_ptr<google::protobuf::Message> part(merged->New());
    auto parsed = from_json(answer->body, *part);
    if (!parsed) {
      log::warn("cluster: a node's list did not parse",
                {{"node", target.node}, {"error", parsed.error().message()}});
      unavailable += (unavailable.empty() ? "" : ",") + target.node;
      continue;
    }
    merged->MergeFrom(*part);
  }
  // The nodes left out, so a client can tell a partial list.
  if (!unavailable.empty())
    exchange.add_response_header("X-Vesicle-Nodes-Unavailable", unavailable);
  co_await exchange.respond(200, to_json(*merged));
}

asio::awaitable<void> GatewayApi::nodes(Exchange& exchange) {
  api::ListNodesResponse out;
  for (const auto* member : members_.all()) {
    auto* node = out.add_nodes();
    node->set_name(member->report.name);
    node->set_region(member->report.region);
    node->set_state(member->up ? "up" : "down");
    node->set_url(member->report.url);
    node->set_tag(member->report.tag);
    node->set_max_sandboxes(member->report.max_sandboxes);
    node->set_available(member->report.available);
    node->set_pool_ready(member->report.pool_ready);
    node->set_memory_free_mib(member->report.memory_free_mib);
    node->set_last_report_ms_ago(ms_since(member->last_report));
    node->set_down_reason(member->down_reason);
  }
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> GatewayApi::capacity(Exchange& exchange) {
  // From the nodes' last reports, without asking them.
  api::Capacity out;
  for (const auto* member : members_.all()) {
    if (!member->up) continue;
    out.set_max_sandboxes(out.max_sandboxes() + member->report.max_sandboxes);
    out.set_available(out.available() + member->report.available);
  }
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> GatewayApi::metrics(Exchange& exchange) {
  std::string text;
  text += "# HELP vesicle_gateway_nodes Nodes known to this gateway by state.\n";
  text += "# TYPE vesicle_gateway_nodes gauge\n";
  std::uint32_t up = 0, down = 0;
  for (const auto* member : members_.all())
    (member->up ? up : down) += 1;
  text += "vesicle_gateway_nodes{state=\"up\"} " + std::to_string(up) + "\n";
  text += "vesicle_gateway_nodes{state=\"down\"} " + std::to_string(down) + "\n";
  text += "# HELP vesicle_gateway_node_available Free sandbox slots per node (last report).\n";
  text += "# TYPE vesicle_gateway_node_available gauge\n";
  for (const auto* member : members_.all())
    text += "vesicle_gateway_node_available{node=\"" + member->report.name + "\",region=\"" +
            member->report.region + "\"} " +
            std::to_string(member->up ? member->report.available : 0) + "\n";
  text += "# HELP vesicle_gateway_node_report_age_seconds Time since each node's last report.\n";
  text += "# TYPE vesicle_gateway_node_report_age_seconds gauge\n";
  for (const auto* member : members_.all())
    text += "vesicle_gateway_node_report_age_seconds{node=\"" + member->report.name + "\"} " +
            std::to_string(ms_since(member->last_report) / 1000) + "\n";
  text += "# HELP vesicle_gateway_requests_total Requests this gateway served.\n";
  text += "# TYPE vesicle_gateway_requests_total counter\n";
  text += "vesicle_gateway_requests_total " + std::to_string(requests_) + "\n";
  text += "# HELP vesicle_gateway_node_unavailable_total Calls answered node_unavailable.\n";
  text += "# TYPE vesicle_gateway_node_unavailable_total counter\n";
  text += "vesicle_gateway_node_unavailable_total " + std::to_string(node_unavailable_) + "\n";
  co_await exchange.respond_text(200, "text/plain; version=0.0.4", std::move(text));
}

asio::awaitable<void> GatewayApi::healthz(Exchange& exchange) {
  api::Health health;
  health.set_status("ok");
  health.set_version(kVersion);
  // The nodes' accel is theirs; a gateway runs no VM.
  health.set_accel("");
  health.set_default_egress("off");
  co_await exchange.respond(200, to_json(health));
}

} // namespace vesicle::hostd
