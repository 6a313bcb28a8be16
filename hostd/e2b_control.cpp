// E2B's routing and control plane: X-API-KEY, create, get, list, timeout,
// pause (onto freeze), connect (onto resume), kill (onto destroy), and the
// sweep that ends a sandbox at its E2B timeout.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <google/protobuf/util/json_util.h>

#include "actors/ask.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/e2b.hpp"
#include "hostd/e2b_connect.hpp"
#include "hostd/e2b_store.hpp"

namespace vesicle::hostd {

namespace e2b {

namespace {

constexpr std::int32_t kDefaultTimeoutS = 300;
// E2B's own cap on a sandbox's timeout (24 hours for its Pro tier).
constexpr std::int32_t kMaxTimeoutS = 86'400;
constexpr std::uint32_t kDefaultPageSize = 100;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Every value of `name` in a query string, comma lists split (the SDKs send
// state=running&state=paused or state=running,paused).
std::vector<std::string> query_values(std::string_view query, std::string_view name) {
  std::vector<std::string> values;
  std::size_t start = 0;
  while (start <= query.size()) {
    auto amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    auto pair = query.substr(start, amp - start);
    auto equals = pair.find('=');
    if (url_decode(pair.substr(0, equals)) == std::string(name) &&
        equals != std::string_view::npos) {
      auto value = url_decode(pair.substr(equals + 1)).value_or("");
      std::size_t from = 0;
      while (from <= value.size()) {
        auto comma = value.find(',', from);
        if (comma == std::string::npos) comma = value.size();
        if (comma > from) values.push_back(value.substr(from, comma - from));
        from = comma + 1;
      }
    }
    start = amp + 1;
  }
  return values;
}

// The metadata filter: itself a URL-encoded "k=v&k2=v2".
std::map<std::string, std::string> metadata_filter(std::string_view query) {
  std::map<std::string, std::string> wanted;
  auto text = query_param(query, "metadata");
  if (!text) return wanted;
  std::string_view rest(*text);
  std::size_t start = 0;
  while (start <= rest.size()) {
    auto amp = rest.find('&', start);
    if (amp == std::string_view::npos) amp = rest.size();
    auto pair = rest.substr(start, amp - start);
    auto equals = pair.find('=');
    if (!pair.empty())
      wanted[url_decode(pair.substr(0, equals)).value_or("")] =
          equals == std::string_view::npos ? "" : url_decode(pair.substr(equals + 1)).value_or("");
    start = amp + 1;
  }
  return wanted;
}

SandboxCreated created_answer(const Sandbox& sandbox, const std::string& domain) {
  SandboxCreated out;
  out.set_sandboxid(sandbox.id);
  out.set_templateid(sandbox.template_id);
  out.set_clientid("vesicle");
  out.set_envdversion(kEnvdVersion);
  out.set_envdaccesstoken(sandbox.token);
  out.set_trafficaccesstoken(sandbox.traffic_token);
  out.set_domain(domain);
  return out;
}

SandboxDetail detail(const Sandbox& sandbox) {
  SandboxDetail out;
  out.set_sandboxid(sandbox.id);
  out.set_templateid(sandbox.template_id);
  out.set_clientid("vesicle");
  out.set_startedat(rfc3339(sandbox.started_ms));
  out.set_endat(rfc3339(sandbox.end_ms));
  out.set_envdversion(kEnvdVersion);
  out.set_cpucount(static_cast<std::int32_t>(sandbox.vcpus));
  out.set_memorymb(static_cast<std::int32_t>(sandbox.memory_mib));
  out.set_disksizemb(static_cast<std::int32_t>(sandbox.disk_mib));
  out.mutable_metadata()->insert(sandbox.metadata.begin(), sandbox.metadata.end());
  out.set_state(sandbox.vid.empty() ? "paused" : "running");
  return out;
}

Error not_found(const std::string& id) {
  return Error::of(ErrorKind::not_found, "sandbox \"" + id + "\" not found");
}

asio::awaitable<void> respond(Exchange& exchange, unsigned status, std::string body) {
  co_await exchange.respond(status, std::move(body));
}

asio::awaitable<void> respond_error(Exchange& exchange, const Error& error) {
  co_await exchange.respond(status_of(error), error_body(status_of(error), error.message()));
}

Result<std::int32_t> checked_timeout(std::int32_t seconds) {
  if (seconds < 0 || seconds > kMaxTimeoutS)
    return Error::of(ErrorKind::invalid_argument, "timeout: 0.." + std::to_string(kMaxTimeoutS) +
                                                      " seconds, got " + std::to_string(seconds));
  return seconds;
}

} // namespace

std::string error_body(unsigned status, std::string_view message) {
  return "{\"code\":" + std::to_string(status) + ",\"message\":" + json_string(message) + "}";
}

unsigned status_of(const Error& error) {
  return kind_info(error.kind).http_status;
}

Result<void> parse(std::string_view json, google::protobuf::Message& message) {
  if (json.empty()) return {};
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &message, options);
  if (!status.ok())
    return Error::of(ErrorKind::invalid_argument,
                     "invalid JSON body: " + std::string(status.message()));
  return {};
}

std::string print(const google::protobuf::Message& message, bool all_fields) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = all_fields;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok())
    return "{}"; // only invalid UTF-8 in a string field fails; callers check theirs
  return out;
}

std::string vesicle_key(std::string_view presented) {
  constexpr std::string_view kE2bPrefix = "e2b_";
  if (presented.substr(0, kE2bPrefix.size()) == kE2bPrefix)
    return "vsk_" + std::string(presented.substr(kE2bPrefix.size()));
  return std::string(presented);
}

bool same_secret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string absolute(std::string_view path) {
  if (!path.empty() && path.front() == '/') return std::string(path);
  if (path.empty() || path == ".") return kHome;
  return std::string(kHome) + "/" + std::string(path);
}

asio::awaitable<bool> E2b::handle(Exchange& exchange, const std::vector<std::string>& path,
                                  std::string_view query, std::string& key_id) {
  executor_ = co_await asio::this_coro::executor;
  if (!loaded_) {
    loaded_ = true;
    load();
    start_sweep();
  }
  // Sandbox traffic: routed by E2B's headers or by a host name
  // <port>-<id>.<sandbox_domain>, authenticated by the sandbox's token.
  std::string id(exchange.header("E2b-Sandbox-Id"));
  std::string port(exchange.header("E2b-Sandbox-Port"));
  if (id.empty()) {
    if (auto host = parse_port_host(exchange.header(http::field::host),
                                    api_.ctx_.config.sandbox_domain())) {
      id = host->sandbox_id;
      port = std::to_string(host->port);
    }
  }
  if (!id.empty()) {
    auto found = sandboxes_.find(id);
    if (found == sandboxes_.end()) {
      // What E2B's proxy answers for a sandbox that is gone.
      co_await exchange.respond(
          502, error_body(502, "sandbox \"" + std::string(id) + "\" not found (or killed)"));
      co_return true;
    }
    auto sandbox = found->second;
    key_id = sandbox->owner;
    if (port != std::to_string(kEnvdPort) && !port.empty() &&
        port != std::to_string(kInterpreterPort)) {
      co_await this->port(exchange, sandbox, port);
      co_return true;
    }
    const auto token = exchange.header("X-Access-Token");
    // /contexts comes without the token from the code interpreter SDK; see
    // interpreter() for why the sandbox id is enough there.
    const bool contexts =
        port == std::to_string(kInterpreterPort) && !path.empty() && path[0] == "contexts";
    const bool token_ok = same_secret(token, sandbox->token);
    if (!token_ok && !(contexts && token.empty())) {
      co_await exchange.respond(
          401, error_body(401, "X-Access-Token is missing or not this sandbox's envdAccessToken"));
      co_return true;
    }
    if (sandbox->vid.empty() || sandbox->changing) {
      co_await exchange.respond(
          502, error_body(502, "sandbox \"" + sandbox->id +
                                   "\" is paused (or being paused or resumed); connect to it to "
                                   "resume it"));
      co_return true;
    }
    if (port == std::to_string(kEnvdPort) || port.empty()) {
      co_await envd(exchange, sandbox, path, query);
    } else {
      co_await interpreter(exchange, sandbox, path, token_ok);
    }
    co_return true;
  }

  // The control plane: /sandboxes..., /v2/sandboxes..., or any X-API-KEY.
  // E2B's own paths; /v2/... beyond sandboxes stays vesicle's (404).
  const bool e2b_path =
      !path.empty() && (path[0] == "sandboxes" || path[0] == "snapshots" ||
                        (path[0] == "v2" && path.size() > 1 && path[1] == "sandboxes"));
  const auto api_key = exchange.header("X-API-KEY");
  if (!e2b_path && api_key.empty()) co_return false;
  if (!e2b_path && !path.empty() && path[0] == "v1") co_return false;
  if (api_key.empty()) {
    co_await exchange.respond(
        401, error_body(401, "no API key: send the header \"X-API-KEY: <a vesicle key>\""));
    co_return true;
  }
  auto owner = api_.ctx_.keys.authenticate(vesicle_key(api_key));
  if (!owner) {
    co_await exchange.respond(
        401, error_body(401, "the API key is not valid on this host; check for typos"));
    co_return true;
  }
  key_id = *owner;
  if (auto wait = api_.rate_limited(*owner); wait > 0) {
    exchange.add_response_header("Retry-After", std::to_string(wait));
    co_await exchange.respond(429, error_body(429, requests_quota(*owner, wait).message()));
    co_return true;
  }
  co_await control(exchange, path, query, *owner);
  co_return true;
}

asio::awaitable<void> E2b::control(Exchange& exchange, const std::vector<std::string>& raw_path,
                                   std::string_view query, const std::string& owner) {
  // /v2/sandboxes/... and /sandboxes/... name the same resources.
  std::vector<std::string> path = raw_path;
  const bool v2 = !path.empty() && path[0] == "v2";
  if (v2) path.erase(path.begin());
  const auto method = exchange.method();
  auto is = [&](std::initializer_list<std::string_view> pattern) { return path_is(path, pattern); };
  if (is({"sandboxes"}) && method == http::verb::post) co_return co_await create(exchange, owner);
  if (is({"sandboxes"}) && method == http::verb::get)
    co_return co_await list(exchange, owner, query, v2);
  if (is({"sandboxes", "*"}) && method == http::verb::get)
    co_return co_await get(exchange, owner, path[1]);
  if (is({"sandboxes", "*"}) && method == http::verb::delete_)
    co_return co_await kill(exchange, owner, path[1]);
  if (is({"sandboxes", "*", "timeout"}) && method == http::verb::post)
    co_return co_await set_timeout(exchange, owner, path[1]);
  if (is({"sandboxes", "*", "pause"}) && method == http::verb::post)
    co_return co_await pause(exchange, owner, path[1]);
  if ((is({"sandboxes", "*", "connect"}) || is({"sandboxes", "*", "resume"})) &&
      method == http::verb::post)
    co_return co_await connect(exchange, owner, path[1]);
  if (is({"sandboxes", "*", "fork"}) && method == http::verb::post)
    co_return co_await fork(exchange, owner, path[1]);
  if (is({"sandboxes", "*", "snapshots"}) && method == http::verb::post)
    co_return co_await snapshot(exchange, owner, path[1]);
  if (is({"snapshots"}) && method == http::verb::get)
    co_return co_await list_snapshots(exchange, owner, query);
  if (is({"templates", "*"}) && method == http::verb::delete_)
    co_return co_await delete_snapshot(exchange, owner, path[1]);
  if (is({"sandboxes", "*", "refreshes"}) && method == http::verb::post) {
    // Older SDKs' keep-alive: E2B sandboxes do not idle out; nothing to do.
    if (!owned(owner, path[1])) co_return co_await respond_error(exchange, not_found(path[1]));
    co_return co_await exchange.respond_no_content();
  }
  std::string joined;
  for (const auto& part : raw_path)
    joined += "/" + part;
  co_await exchange.respond(
      501, error_body(501, std::string(http::to_string(method)) + " " + joined +
                               " is not supported by vesicle's E2B compatibility ("
                               "templates, network rules, metrics and logs are not "
                               "mapped yet; see the README's \"E2B compatibility\")"));
}

std::shared_ptr<Sandbox> E2b::owned(const std::string& owner, const std::string& id) {
  auto found = sandboxes_.find(id);
  if (found == sandboxes_.end() || found->second->owner != owner) return nullptr;
  return found->second;
}

asio::awaitable<void> E2b::create(Exchange& exchange, const std::string& owner) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  NewSandbox request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());
  // autoResume: true (2.50) or {"enabled": true} (2.51).
  const auto& resume = request.autoresume();
  const bool auto_resume =
      (resume.has_bool_value() && resume.bool_value()) ||
      (resume.has_struct_value() &&
       resume.struct_value().fields().find("enabled") != resume.struct_value().fields().end() &&
       resume.struct_value().fields().at("enabled").bool_value());
  const char* unmapped = auto_resume                   ? "autoResume"
                         : request.has_mcp()           ? "mcp"
                         : request.volumemounts_size() ? "volumeMounts"
                         : request.autopause()         ? "autoPause"
                                                       : nullptr;
  if (unmapped)
    co_return co_await respond_error(
        exchange, Error::of(ErrorKind::invalid_argument,
                            std::string(unmapped) +
                                ": not supported by vesicle's E2B compatibility yet; create "
                                "the sandbox without it"));
  auto timeout = checked_timeout(request.has_timeout() ? request.timeout() : kDefaultTimeoutS);
  if (!timeout) co_return co_await respond_error(exchange, timeout.error());

  // E2B's stock templates run on the default vesicle template; any other
  // name must be one of this host's templates.
  api::CreateSandboxRequest spec;
  const auto name = template_name(request.templateid());
  if (!name.empty() && name != "base" && name != "code-interpreter-v1" &&
      name != "code-interpreter")
    spec.set_template_(name);
  // Egress (e2b_network.cpp). E2B's default, allow_internet_access true
  // (2.50 always sends it), is the host's own default here, which may be no
  // egress at all when it has no uplink.
  auto public_traffic = apply_network(request, spec);
  if (!public_traffic) co_return co_await respond_error(exchange, public_traffic.error());
  // E2B's timeout is enforced here (sweep); vesicle's own limits are left
  // at the key's tier caps (0 = the cap).
  spec.set_idle_timeout_s(0);
  spec.set_max_lifetime_s(0);
  auto created = co_await api_.create_sandbox(owner, std::move(spec));
  if (!created) co_return co_await respond_error(exchange, created.error());

  auto sandbox = std::make_shared<Sandbox>();
  sandbox->id = random_id("", kIdDigits);
  sandbox->owner = owner;
  sandbox->vid = created->id;
  sandbox->token = random_id("", 64);
  sandbox->traffic_token = random_id("", 64);
  sandbox->public_traffic = *public_traffic;
  sandbox->template_id = name.empty() ? "base" : name;
  sandbox->metadata.insert(request.metadata().begin(), request.metadata().end());
  sandbox->env_vars.insert(request.envvars().begin(), request.envvars().end());
  sandbox->started_ms = now_ms();
  sandbox->end_ms = sandbox->started_ms + std::int64_t{*timeout} * 1000;
  sandbox->vcpus = created->spec.vcpus;
  sandbox->memory_mib = created->spec.memory_mib;
  sandbox->disk_mib = created->spec.disk_mib;
  sandboxes_[sandbox->id] = sandbox;
  start_sweep();
  log::info("e2b sandbox created", {{"e2b", sandbox->id}, {"sandbox", sandbox->vid}});
  co_await respond(exchange, 201,
                   print(created_answer(*sandbox, api_.ctx_.config.sandbox_domain()), true));
}

asio::awaitable<void> E2b::get(Exchange& exchange, const std::string& owner,
                               const std::string& id) {
  auto sandbox = owned(owner, id);
  if (!sandbox) co_return co_await respond_error(exchange, not_found(id));
  if (!sandbox->vid.empty() && !sandbox->changing) {
    // A sandbox vesicle ended on its own (its VM died, the tier's lifetime
    // cap) is gone for E2B too.
    auto info =
        co_await ask<SandboxInfo>(api_.ctx_.system, api_.ctx_.registry, api_.ctx_.actor_timeout,
                                  lookup_atom::value, owner, sandbox->vid);
    if (!info || info->state == SandboxState::dead) {
      (void)co_await destroy(*sandbox);
      sandboxes_.erase(id);
      co_return co_await respond_error(exchange, not_found(id));
    }
  }
  co_await respond(exchange, 200, print(detail(*sandbox), true));
}

Result<Page> page_of(std::string_view query) {
  Page page{.offset = 0, .limit = kDefaultPageSize};
  if (auto text = query_param(query, "limit"); text && !text->empty()) {
    char* end = nullptr;
    const auto value = std::strtoul(text->c_str(), &end, 10);
    if (*end != '\0' || value == 0)
      return Error::of(ErrorKind::invalid_argument,
                       "limit: a positive number, got \"" + *text + "\"");
    page.limit = value;
  }
  if (auto token = query_param(query, "nextToken"); token && !token->empty()) {
    char* end = nullptr;
    page.offset = std::strtoul(token->c_str(), &end, 10);
    if (*end != '\0')
      return Error::of(ErrorKind::invalid_argument, "nextToken: not one this host handed out");
  }
  return page;
}

asio::awaitable<void> E2b::list(Exchange& exchange, const std::string& owner,
                                std::string_view query, bool paged) {
  auto states = query_values(query, "state");
  auto metadata = metadata_filter(query);
  std::vector<std::shared_ptr<Sandbox>> matches;
  for (const auto& [id, sandbox] : sandboxes_) {
    if (sandbox->owner != owner) continue;
    const std::string state = sandbox->vid.empty() ? "paused" : "running";
    if (!states.empty() && std::find(states.begin(), states.end(), state) == states.end()) continue;
    bool wanted = true;
    for (const auto& [key, value] : metadata) {
      auto it = sandbox->metadata.find(key);
      wanted = wanted && it != sandbox->metadata.end() && it->second == value;
    }
    if (wanted) matches.push_back(sandbox);
  }
  std::sort(matches.begin(), matches.end(), [](const auto& a, const auto& b) {
    return a->started_ms != b->started_ms ? a->started_ms < b->started_ms : a->id < b->id;
  });
  Page page{.offset = 0, .limit = matches.size()};
  if (paged) {
    auto asked = page_of(query);
    if (!asked) co_return co_await respond_error(exchange, asked.error());
    page = *asked;
  }
  // Unpaged (2.50's GET /sandboxes): every match, and no x-next-token.
  std::string out = page_json(exchange, matches.size(), page,
                              [&](std::size_t i) { return print(detail(*matches[i]), true); });
  co_await respond(exchange, 200, std::move(out));
}

asio::awaitable<void> E2b::set_timeout(Exchange& exchange, const std::string& owner,
                                       const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  TimeoutBody request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());
  auto sandbox = owned(owner, id);
  if (!sandbox) co_return co_await respond_error(exchange, not_found(id));
  auto timeout = checked_timeout(request.timeout());
  if (!timeout) co_return co_await respond_error(exchange, timeout.error());
  sandbox->end_ms = now_ms() + std::int64_t{*timeout} * 1000;
  if (sandbox->vid.empty()) persist();
  co_await exchange.respond_no_content();
}

asio::awaitable<void> E2b::pause(Exchange& exchange, const std::string& owner,
                                 const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  auto sandbox = owned(owner, id);
  if (!sandbox) co_return co_await respond_error(exchange, not_found(id));
  if (sandbox->vid.empty() || sandbox->changing)
    co_return co_await exchange.respond(
        409, error_body(409, "sandbox \"" + id + "\" is already paused (or being paused)"));
  if (!sandbox->processes.empty())
    co_return co_await exchange.respond(
        400, error_body(400, "sandbox \"" + id +
                                 "\" has commands running; vesicle pauses (freezes) a sandbox "
                                 "only when nothing runs: kill them first"));
  sandbox->changing = true;
  auto space = co_await api_.freeze_sandbox(owner, sandbox->vid);
  sandbox->changing = false;
  if (!space) co_return co_await respond_error(exchange, space.error());
  sandbox->frozen_vid = sandbox->vid;
  sandbox->vid.clear();
  sandbox->space_id = space->space_id;
  persist();
  co_await exchange.respond_no_content();
}

asio::awaitable<void> E2b::connect(Exchange& exchange, const std::string& owner,
                                   const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  TimeoutBody request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());
  auto sandbox = owned(owner, id);
  if (!sandbox) co_return co_await respond_error(exchange, not_found(id));
  if (sandbox->changing)
    co_return co_await exchange.respond(
        409, error_body(409, "sandbox \"" + id + "\" is being paused or resumed; retry"));
  unsigned status = 200;
  if (sandbox->vid.empty()) {
    sandbox->changing = true;
    auto resumed = co_await api_.resume_space(owner, sandbox->space_id, false);
    sandbox->changing = false;
    if (!resumed) co_return co_await respond_error(exchange, resumed.error());
    sandbox->vid = resumed->id;
    // The frozen sandbox's entry is only a record now; its Space is gone.
    const auto frozen = std::exchange(sandbox->frozen_vid, std::string());
    sandbox->space_id.clear();
    persist();
    (void)co_await ask<done_atom>(api_.ctx_.system, api_.ctx_.registry, api_.ctx_.create_timeout,
                                  destroy_atom::value, owner, frozen);
    status = 201;
  }
  if (request.has_timeout()) {
    auto timeout = checked_timeout(request.timeout());
    if (!timeout) co_return co_await respond_error(exchange, timeout.error());
    sandbox->end_ms = std::max(sandbox->end_ms, now_ms() + std::int64_t{*timeout} * 1000);
  }
  co_await respond(exchange, status,
                   print(created_answer(*sandbox, api_.ctx_.config.sandbox_domain()), true));
}

// Onto vesicle's fork, which is all or nothing: either every child runs
// (201, one {"sandbox"} per child, each a new E2B sandbox with its own id
// and token) or none does and the call fails as a whole.
asio::awaitable<void> E2b::fork(Exchange& exchange, const std::string& owner,
                                const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  ForkBody request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());
  auto parent = owned(owner, id);
  if (!parent) co_return co_await respond_error(exchange, not_found(id));
  if (parent->vid.empty() || parent->changing)
    co_return co_await exchange.respond(
        409, error_body(409, "sandbox \"" + id + "\" is paused; connect to it before forking"));
  auto timeout = checked_timeout(request.has_timeout() ? request.timeout() : kDefaultTimeoutS);
  if (!timeout) co_return co_await respond_error(exchange, timeout.error());
  const std::uint32_t count = request.has_count() ? request.count() : 1;
  auto children = co_await api_.fork_sandbox(owner, parent->vid, count);
  if (!children) co_return co_await respond_error(exchange, children.error());
  std::string out = "[";
  for (const auto& info : *children) {
    auto child = std::make_shared<Sandbox>(*parent);
    child->id = random_id("", kIdDigits);
    child->vid = info.id;
    child->token = random_id("", 64);
    child->traffic_token = random_id("", 64);
    child->started_ms = now_ms();
    child->end_ms = child->started_ms + std::int64_t{*timeout} * 1000;
    // What ran in the parent is not the child's to list or signal.
    child->processes.clear();
    child->snapshots.clear();
    sandboxes_[child->id] = child;
    start_sweep();
    if (out.size() > 1) out += ",";
    out +=
        "{\"sandbox\":" + print(created_answer(*child, api_.ctx_.config.sandbox_domain()), true) +
        "}";
  }
  co_await respond(exchange, 201, out + "]");
}

asio::awaitable<void> E2b::kill(Exchange& exchange, const std::string& owner,
                                const std::string& id) {
  auto sandbox = owned(owner, id);
  if (!sandbox) co_return co_await respond_error(exchange, not_found(id));
  sandboxes_.erase(id);
  if (sandbox->vid.empty()) persist();
  auto done = co_await destroy(*sandbox);
  if (!done && done.error().kind != ErrorKind::not_found)
    co_return co_await respond_error(exchange, done.error());
  co_await exchange.respond_no_content();
}

asio::awaitable<Result<void>> E2b::destroy(Sandbox& sandbox) {
  for (auto& [pid, process] : sandbox.processes)
    process->abort();
  sandbox.processes.clear();
  const auto& ctx = api_.ctx_;
  if (!sandbox.space_id.empty())
    (void)co_await ask<done_atom>(ctx.system, ctx.registry, ctx.actor_timeout,
                                  delete_space_atom::value, sandbox.owner, sandbox.space_id);
  std::string vid = sandbox.vid;
  if (vid.empty()) vid = sandbox.frozen_vid;
  if (vid.empty()) co_return Result<void>{};
  auto done = co_await ask<done_atom>(ctx.system, ctx.registry, ctx.create_timeout,
                                      destroy_atom::value, sandbox.owner, vid);
  if (!done) co_return to_error(done.error());
  co_return Result<void>{};
}

// The sweep runs only while there are E2B sandboxes: a timer pending
// forever would keep an io_context that should run dry (tests) running.
void E2b::start_sweep() {
  if (stopped_ || sweeping_ || sandboxes_.empty()) return;
  sweeping_ = true;
  asio::co_spawn(
      executor_,
      [weak = weak_from_this()]() -> asio::awaitable<void> {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        for (;;) {
          timer.expires_after(std::chrono::seconds(1));
          boost::system::error_code ignored;
          co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
          auto self = weak.lock();
          if (!self) co_return;
          if (self->stopped_) {
            self->sweeping_ = false;
            co_return;
          }
          co_await self->sweep();
          if (self->sandboxes_.empty()) {
            self->sweeping_ = false;
            co_return;
          }
        }
      },
      asio::detached);
}

asio::awaitable<void> E2b::sweep() {
  const auto now = now_ms();
  std::vector<std::shared_ptr<Sandbox>> expired;
  for (const auto& [id, sandbox] : sandboxes_)
    if (sandbox->end_ms <= now && !sandbox->changing) expired.push_back(sandbox);
  for (const auto& sandbox : expired) {
    sandboxes_.erase(sandbox->id);
    if (sandbox->vid.empty()) persist();
    log::info("e2b sandbox timed out", {{"e2b", sandbox->id}, {"sandbox", sandbox->vid}});
    (void)co_await destroy(*sandbox);
  }
}

void E2b::persist() {
  const auto path = table_path(api_.ctx_.config.state_dir());
  if (auto saved = save_table(path, sandboxes_); !saved)
    log::warn("the E2B table was not saved; paused E2B sandboxes will be unknown after a restart",
              {{"error", saved.error().message()}});
}

void E2b::load() {
  const auto path = table_path(api_.ctx_.config.state_dir());
  auto loaded = load_table(path);
  if (!loaded) {
    log::warn("the E2B table was not loaded; paused E2B sandboxes are unknown",
              {{"error", loaded.error().message()}});
    return;
  }
  for (auto& [id, sandbox] : *loaded)
    sandboxes_.emplace(id, std::move(sandbox));
  if (!loaded->empty())
    log::info("e2b table loaded", {{"paused", static_cast<long long>(loaded->size())}});
}

} // namespace e2b

asio::awaitable<bool> Api::e2b(Exchange& exchange, const std::vector<std::string>& path,
                               std::string_view query, std::string& key_id) {
  if (!e2b_) e2b_ = std::make_shared<e2b::E2b>(*this);
  auto keep = e2b_;
  co_return co_await keep->handle(exchange, path, query, key_id);
}

void Api::stop_e2b() {
  if (e2b_) e2b_->stop();
}

} // namespace vesicle::hostd
