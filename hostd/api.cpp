// Routing and authentication; the handlers live in api_<resource>.cpp.
#include "hostd/api.hpp"

#include <chrono>

#include "common/log.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/http_request_parts.hpp"
#include "hostd/network.hpp"

namespace vesicle::hostd {

namespace {

// Built outside the coroutine: g++ 12 mishandles temporaries of a
// conditional expression inside a coroutine body.
Error unknown_route(const std::vector<std::string>& path) {
  std::string joined;
  for (const auto& part : path)
    joined += "/" + part;
  if (joined.empty()) joined = "/";
  return Error::of(ErrorKind::not_found,
                   "no such API route: " + joined +
                       " (this hostd serves /v1/sandboxes, /v1/spaces, /v1/templates, "
                       "/v1/capacity, /v1/healthz, /v1/admin, /metrics (admin keys), /mcp and "
                       "the page /ui)");
}

} // namespace

std::uint32_t Api::rate_limited(const std::string& key_id) {
  return rate_limiter_.take(key_id, tier_caps(ctx_.keys, ctx_.config, key_id).max_requests_per_s(),
                            RateLimiter::Clock::now());
}

Error requests_quota(const std::string& key_id, std::uint32_t retry_after_s) {
  return Error::of(ErrorKind::quota,
                   "key " + key_id +
                       " made more API requests per second than its tier allows "
                       "(max_requests_per_s); retry after " +
                       std::to_string(retry_after_s) +
                       " s (the Retry-After header), or use a key of a higher tier");
}

namespace {

// A sandbox's settings, which api::Sandbox and api::Space name alike.
template <class Message> void set_spec_fields(Message& out, const SandboxSpec& spec) {
  out.set_template_(spec.template_name);
  out.set_egress(spec.egress);
  for (const auto& name : spec.egress_allow)
    out.add_egress_allow(name);
  out.set_egress_mode(egress_mode(spec.egress, spec.egress_allow));
  out.set_persistent(spec.persistent);
  out.set_vcpus(spec.vcpus);
  out.set_memory_mib(spec.memory_mib);
  out.set_disk_mib(spec.disk_mib);
  out.set_idle_timeout_s(spec.idle_timeout_s);
  out.set_max_lifetime_s(spec.max_lifetime_s);
  for (const auto& host : spec.secret_hosts)
    out.add_secret_hosts(host);
}

} // namespace

api::Sandbox to_api(const SandboxInfo& info, const VmHost& vms) {
  api::Sandbox out;
  out.set_id(info.id);
  // "destroying" is internal: to a client the sandbox is still there until
  // DELETE returns, but no longer usable; "dead" says that best.
  out.set_state(info.state == SandboxState::destroying ? "dead" : to_string(info.state));
  set_spec_fields(out, info.spec);
  out.set_created_at(rfc3339(info.created_at_ms));
  out.set_accel(vms.accel() == vmm::Accel::kvm ? "kvm" : "tcg");
  out.set_dead_reason(info.state == SandboxState::destroying && info.dead_reason.empty()
                          ? "being deleted"
                          : info.dead_reason);
  if (info.state == SandboxState::ready) out.set_paused(vms.paused(info.id));
  out.set_source(info.source);
  out.set_forked_from(info.forked_from);
  out.set_space_id(info.space_id);
  out.set_resumed_from(info.resumed_from);
  out.set_region(cluster_identity().region);
  out.set_node(cluster_identity().node);
  return out;
}

api::Space to_api(const SpaceInfo& space) {
  api::Space out;
  out.set_space_id(space.space_id);
  out.set_sandbox_id(space.sandbox_id);
  set_spec_fields(out, space.spec);
  out.set_created_at(rfc3339(space.created_at_ms));
  out.set_frozen_at(rfc3339(space.frozen_at_ms));
  out.set_reason(space.reason);
  out.set_state_bytes(static_cast<double>(space.state_bytes));
  out.set_disk_bytes(static_cast<double>(space.disk_bytes));
  out.set_size_bytes(static_cast<double>(space.state_bytes + space.disk_bytes));
  out.set_region(cluster_identity().region);
  out.set_node(cluster_identity().node);
  return out;
}

asio::awaitable<void> Api::handle(Exchange& exchange) {
  auto started = std::chrono::steady_clock::now();
  std::string target(exchange.target());
  auto question = target.find('?');
  std::string_view path = std::string_view(target).substr(0, question);
  std::string_view query = question == std::string::npos
                               ? std::string_view{}
                               : std::string_view(target).substr(question + 1);
  const auto parts = split_path(path);
  std::string key_id;
  std::string failure;
  try {
    co_await route(exchange, parts, query, key_id);
  } catch (const std::exception& e) {
    failure = std::string("hostd failed: ") + e.what();
  }
  if (!failure.empty()) {
    if (!exchange.responded())
      co_await exchange.respond_error(Error::of(ErrorKind::internal, failure));
    else
      exchange.abandon_stream();
  }
  if (auto kind = exchange.error_kind()) ++metrics_.errors[std::string(kind_info(*kind).name)];
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - started)
                     .count();
  // The path only: query strings hold file paths, and the headers a key.
  // Probes (health, metrics) come every few seconds: debug, not info.
  const bool probe = parts == std::vector<std::string>{"metrics"} ||
                     parts == std::vector<std::string>{"v1", "healthz"};
  const auto level = !failure.empty() ? log::Level::error
                     : probe          ? log::Level::debug
                                      : log::Level::info;
  if (!log::enabled(level)) co_return;
  const auto verb = http::to_string(exchange.method()); // a Boost string_view
  const std::string_view method(verb.data(), verb.size());
  std::vector<log::Field> fields = {{"method", method},
                                    {"path", path},
                                    {"status", exchange.status()},
                                    {"ms", static_cast<long long>(elapsed)}};
  if (!key_id.empty()) fields.emplace_back("key", key_id);
  if (auto kind = exchange.error_kind()) fields.emplace_back("kind", kind_info(*kind).name);
  // The sandbox or Space the path names, so grep sandbox=<id> finds its
  // requests too.
  if (parts.size() > 2 && parts[1] == "sandboxes") fields.emplace_back("sandbox", parts[2]);
  if (parts.size() > 3 && parts[1] == "admin") fields.emplace_back("sandbox", parts[3]);
  if (parts.size() > 4 && parts[3] == "merge_into") fields.emplace_back("winner", parts[4]);
  if (parts.size() > 2 && parts[1] == "spaces") fields.emplace_back("space", parts[2]);
  if (!failure.empty()) fields.emplace_back("error", failure);
  log::write(level, "request", fields);
}

asio::awaitable<void> Api::route(Exchange& exchange, const std::vector<std::string>& path,
                                 std::string_view query, std::string& key_id) {
  auto method = exchange.method();
  auto is = [&](std::initializer_list<std::string_view> pattern) { return path_is(path, pattern); };
  // Returns the error rather than the awaitable: respond_error holds its
  // argument by reference, and an awaitable runs only when awaited.
  auto not_allowed = [&](const char* allowed) {
    return Error::of(ErrorKind::method_not_allowed,
                     std::string(http::to_string(method)) + " is not allowed here; use " + allowed);
  };

  if (is({"v1", "healthz"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await healthz(exchange);
  }
  if (!path.empty() && path[0] == "ui") { // the operator's page: its data needs the key
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await ui(exchange, path);
  }

  // E2B's protocol (e2b.hpp) brings its own routes and authentication.
  if (co_await e2b(exchange, path, query, key_id)) co_return;

  auto key = bearer_key(exchange.header(http::field::authorization));
  if (!key)
    co_return co_await exchange.respond_error(Error::of(
        ErrorKind::unauthenticated,
        "no API key: send the header \"Authorization: Bearer <key>\" (hostd --new-key makes "
        "one; a first start without keys wrote one to <state_dir>/first-key)"));
  auto owner = ctx_.keys.authenticate(*key);
  if (!owner)
    co_return co_await exchange.respond_error(Error::of(
        ErrorKind::unauthenticated, "the API key is not valid on this host; check for typos"));
  key_id = *owner;
  if (auto wait = rate_limited(*owner); wait > 0) {
    exchange.add_response_header("Retry-After", std::to_string(wait));
    co_return co_await exchange.respond_error(requests_quota(*owner, wait));
  }

  if (path.size() >= 2 && path[0] == "v1" && path[1] == "admin") {
    const auto* entry = ctx_.keys.find(*owner);
    if (!entry || !entry->admin)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::unauthenticated, "this key is not an admin key; /v1/admin and the "
                                      "operator's page need one (hostd --new-key --admin)"));
    if (is({"v1", "admin", "sandboxes"})) {
      if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
      co_return co_await admin_list(exchange, *owner);
    }
    if (is({"v1", "admin", "sandboxes", "*"})) {
      if (method != http::verb::delete_)
        co_return co_await exchange.respond_error(not_allowed("DELETE"));
      co_return co_await admin_act(exchange, *owner, path[3], AdminAction::destroy);
    }
    if (is({"v1", "admin", "sandboxes", "*", "exec"})) {
      if (method != http::verb::post)
        co_return co_await exchange.respond_error(not_allowed("POST"));
      co_return co_await admin_act(exchange, *owner, path[3], AdminAction::exec);
    }
    if (is({"v1", "admin", "keys", "reload"})) {
      if (method != http::verb::post)
        co_return co_await exchange.respond_error(not_allowed("POST"));
      co_return co_await admin_reload_keys(exchange, *owner);
    }
  }

  if (is({"v1", "capacity"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await capacity(exchange);
  }
  if (is({"metrics"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    // Every tenant's figures: for the operator only.
    if (const auto* entry = ctx_.keys.find(*owner); !entry || !entry->admin)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::forbidden, "/metrics shows every key's figures and needs an admin key; "
                                "use one (hostd --new-key --admin makes one)"));
    co_return co_await metrics(exchange);
  }
  if (is({"mcp"})) co_return co_await mcp(exchange, *owner);
  if (is({"v1", "sandboxes"})) {
    if (method == http::verb::post) co_return co_await create(exchange, *owner);
    if (method == http::verb::get) co_return co_await list(exchange, *owner);
    co_return co_await exchange.respond_error(not_allowed("GET or POST"));
  }
  if (is({"v1", "sandboxes", "*"})) {
    if (method == http::verb::get) co_return co_await get(exchange, *owner, path[2]);
    if (method == http::verb::delete_) co_return co_await destroy(exchange, *owner, path[2]);
    co_return co_await exchange.respond_error(not_allowed("GET or DELETE"));
  }
  if (is({"v1", "sandboxes", "*", "fork"})) {
    if (method != http::verb::post) co_return co_await exchange.respond_error(not_allowed("POST"));
    co_return co_await fork(exchange, *owner, path[2]);
  }
  if (is({"v1", "sandboxes", "*", "merge_into", "*"})) {
    if (method != http::verb::post) co_return co_await exchange.respond_error(not_allowed("POST"));
    co_return co_await merge_into(exchange, *owner, path[2], path[4]);
  }
  if (is({"v1", "sandboxes", "*", "freeze"})) {
    if (method != http::verb::post) co_return co_await exchange.respond_error(not_allowed("POST"));
    co_return co_await freeze(exchange, *owner, path[2]);
  }
  if (is({"v1", "spaces"})) {
    if (method != http::verb::get) co_return co_await exchange.respond_error(not_allowed("GET"));
    co_return co_await list_spaces(exchange, *owner);
  }
  if (is({"v1", "spaces", "*"})) {
    if (method == http::verb::get) co_return co_await get_space(exchange, *owner, path[2]);
    if (method == http::verb::delete_) co_return co_await delete_space(exchange, *owner, path[2]);
    co_return co_await exchange.respond_error(not_allowed("GET or DELETE"));
  }
  if (is({"v1", "spaces", "*", "resume"})) {
    if (method != http::verb::post) co_return co_await exchange.respond_error(not_allowed("POST"));
    co_return co_await resume(exchange, *owner, path[2]);
  }
  if (is({"v1", "templates"})) {
    if (method == http::verb::post) co_return co_await create_template(exchange, *owner);
    if (method == http::verb::get) co_return co_await list_templates(exchange, *owner);
    co_return co_await exchange.respond_error(not_allowed("GET or POST"));
  }
  if (is({"v1", "templates", "*"})) {
    if (method == http::verb::get) co_return co_await get_template(exchange, *owner, path[2]);
    if (method == http::verb::delete_)
      co_return co_await delete_template(exchange, *owner, path[2]);
    co_return co_await exchange.respond_error(not_allowed("GET or DELETE"));
  }
  if (is({"v1", "sandboxes", "*", "exec"})) {
    if (method != http::verb::post) co_return co_await exchange.respond_error(not_allowed("POST"));
    co_return co_await exec(exchange, *owner, path[2]);
  }
  if (is({"v1", "sandboxes", "*", "files"})) {
    if (method == http::verb::put) co_return co_await upload(exchange, *owner, path[2], query);
    if (method == http::verb::get) co_return co_await download(exchange, *owner, path[2], query);
    co_return co_await exchange.respond_error(not_allowed("GET or PUT"));
  }
  // Any method, any path below: the request is the sandbox server's.
  if (path.size() >= 5 && path[0] == "v1" && path[1] == "sandboxes" && path[3] == "ports")
    co_return co_await port(exchange, *owner, path);
  co_await exchange.respond_error(unknown_route(path));
}

} // namespace vesicle::hostd
