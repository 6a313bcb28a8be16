// POST /v1/sandboxes, GET /v1/sandboxes, GET and DELETE /v1/sandboxes/{id}
#include <algorithm>

#include "actors/ask.hpp"
#include "actors/sandbox/template_store.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/network.hpp"
#include "hostd/tiers.hpp"

namespace vesicle::hostd {

// The create request with the configuration's defaults, or a 400 naming the
// field that is wrong.
Result<SandboxSpec> sandbox_spec(const api::CreateSandboxRequest& request,
                                 const config::HostdConfig& config) {
  SandboxSpec spec;
  if (!request.template_().empty() && request.template_() != "default") {
    bool known = false;
    std::string names = "\"default\"";
    for (const auto& pool : config.pools()) {
      known = known || pool.template_() == request.template_();
      if (pool.template_() != "default") names += ", \"" + pool.template_() + "\"";
    }
    // Not a configured one: a saved template (POST /v1/templates), which
    // the registry looks up among the key's own and global ones.
    if (!known && !check_template_name(request.template_()))
      return Error::of(ErrorKind::invalid_argument,
                       "template: \"" + request.template_() +
                           "\" is not a template name; this host has " + names +
                           " and the templates GET /v1/templates lists");
    spec.template_name = request.template_();
  }
  if (!request.region().empty() && request.region() != config.cluster().region())
    return Error::of(ErrorKind::invalid_argument,
                     config.cluster().region().empty()
                         ? "region: this host has no region label; leave region "
                           "empty or ask a gateway that routes by region"
                         : "region: this node is in region \"" + config.cluster().region() +
                               "\"; ask a gateway, which routes by region");
  auto egress = egress_spec(request, config);
  if (!egress) return egress.error();
  auto secrets = secret_values(request.secrets(), &egress->allow, config);
  if (!secrets) return secrets.error();
  spec.egress = egress->egress;
  spec.egress_allow = std::move(egress->allow);
  spec.secrets = std::move(secrets.value());
  spec.secret_hosts = spec.secrets.hosts();
  spec.persistent = request.persistent();
  spec.vcpus = request.has_vcpus() ? request.vcpus() : config.default_vcpus();
  if (spec.vcpus < 1 || spec.vcpus > config.max_vcpus())
    return Error::of(ErrorKind::invalid_argument, "vcpus: must be 1.." +
                                                      std::to_string(config.max_vcpus()) +
                                                      ", got " + std::to_string(spec.vcpus));
  spec.memory_mib = request.has_memory_mib() ? request.memory_mib() : config.default_memory_mib();
  if (spec.memory_mib < 128 || spec.memory_mib > config.max_memory_mib())
    return Error::of(ErrorKind::invalid_argument, "memory_mib: must be 128.." +
                                                      std::to_string(config.max_memory_mib()) +
                                                      ", got " + std::to_string(spec.memory_mib));
  spec.disk_mib = request.has_disk_mib() ? request.disk_mib() : 2048;
  if (spec.disk_mib < 64)
    return Error::of(ErrorKind::invalid_argument,
                     "disk_mib: must be at least 64, got " + std::to_string(spec.disk_mib));
  spec.idle_timeout_s = request.has_idle_timeout_s() ? request.idle_timeout_s() : 300;
  spec.max_lifetime_s = request.has_max_lifetime_s() ? request.max_lifetime_s() : 1800;
  return spec;
}

Result<void> check_disk_fits_image(std::uint32_t disk_mib, std::uint32_t image_mib) {
  if (image_mib == 0 || disk_mib >= image_mib) return {};
  return Error::of(ErrorKind::invalid_argument,
                   "disk_mib: must be at least " + std::to_string(image_mib) +
                       " (the guest image's size; the disk holds the image and what the "
                       "sandbox writes), got " +
                       std::to_string(disk_mib));
}

// The caps of the key `owner`'s tier (its own, or the configuration's
// default_key_tier for a key stored without one).
const config::TierCaps& tier_caps(const KeyStore& keys, const config::HostdConfig& config,
                                  const std::string& owner) {
  const auto* entry = keys.find(owner);
  auto tier = parse_tier(entry && !entry->tier.empty() ? entry->tier : config.default_key_tier());
  return caps_of(config, tier.value_or(Tier::free));
}

// The create flow: validate, ask the registry (capacity, spawn, boot; it
// answers once the sandbox is ready or cleaned up after a failed boot).
asio::awaitable<Result<SandboxInfo>> Api::create_sandbox(const std::string& owner,
                                                         api::CreateSandboxRequest request) {
  // Tier caps clamp silently: before validation, so a request above the
  // host's maximum but within reach of the cap is clamped, not refused.
  const auto& caps = tier_caps(ctx_.keys, ctx_.config, owner);
  clamp_request(request, caps);
  auto spec = sandbox_spec(request, ctx_.config);
  if (!spec) co_return spec.error();
  clamp_spec(*spec, caps);
  if (auto fits = check_disk_fits_image(spec->disk_mib, ctx_.vms.root_disk_mib()); !fits)
    co_return fits.error();
  const std::uint32_t max_concurrent = caps.max_concurrent();
  // A persistent sandbox is frozen into a Space when idle: it needs room
  // for one.
  if (spec->persistent)
    if (auto room = co_await check_storage_quota(owner, spec->memory_mib,
                                                 "creating a persistent sandbox", Stored::space);
        !room)
      co_return room.error();

  const auto started = std::chrono::steady_clock::now();
  auto created = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                           create_atom::value, owner, *spec, max_concurrent);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  metrics_.create_seconds.record(created ? created->source : "failed", took.count());
  if (!created) co_return to_error(created.error());
  // The request's own line cannot name the new sandbox; this one does.
  log::info("sandbox created", {{"sandbox", created->id},
                                {"key", owner},
                                {"source", created->source},
                                {"ms", static_cast<long long>(took.count() * 1000)}});
  co_return std::move(*created);
}

asio::awaitable<void> Api::create(Exchange& exchange, const std::string& owner) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::CreateSandboxRequest request;
  if (!body->empty()) {
    auto parsed = from_json(*body, request);
    if (!parsed)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::invalid_argument, "invalid create request: " + parsed.error().detail));
  }
  auto created = co_await create_sandbox(owner, std::move(request));
  if (!created) co_return co_await exchange.respond_error(created.error());
  co_await exchange.respond(201, to_json(to_api(*created, ctx_.vms)));
}

asio::awaitable<void> Api::list(Exchange& exchange, const std::string& owner) {
  auto sandboxes = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                                 list_atom::value, owner);
  if (!sandboxes) co_return co_await exchange.respond_error(to_error(sandboxes.error()));
  api::ListSandboxesResponse out;
  for (const auto& info : *sandboxes)
    *out.add_sandboxes() = to_api(info, ctx_.vms);
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> Api::get(Exchange& exchange, const std::string& owner,
                               const std::string& id) {
  auto info = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                        lookup_atom::value, owner, id);
  if (!info) co_return co_await exchange.respond_error(to_error(info.error()));
  co_await exchange.respond(200, to_json(to_api(*info, ctx_.vms)));
}

// POST /v1/sandboxes/{id}/fork {n}: answers once every child is ready (or,
// when one fails, once none is left and the parent is as it was).
asio::awaitable<void> Api::fork(Exchange& exchange, const std::string& owner,
                                const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::ForkRequest request;
  if (!body->empty()) {
    auto parsed = from_json(*body, request);
    if (!parsed)
      co_return co_await exchange.respond_error(
          Error::of(ErrorKind::invalid_argument, "invalid fork request: " + parsed.error().detail));
  }
  const std::uint32_t n = request.has_n() ? request.n() : 1;
  const auto started = std::chrono::steady_clock::now();
  auto children = co_await fork_sandbox(owner, id, n);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  if (!children) co_return co_await exchange.respond_error(children.error());
  api::ForkResponse out;
  for (const auto& info : *children)
    *out.add_children() = to_api(info, ctx_.vms);
  out.set_server_ms(took.count() * 1000.0);
  co_await exchange.respond(201, to_json(out));
}

asio::awaitable<Result<SandboxInfoList>> Api::fork_sandbox(const std::string& owner,
                                                           const std::string& id, std::uint32_t n) {
  if (n < 1 || n > kMaxForkChildren)
    co_return Error::of(ErrorKind::invalid_argument, "n: a fork makes 1 to " +
                                                         std::to_string(kMaxForkChildren) +
                                                         " children, got " + std::to_string(n));
  const auto started = std::chrono::steady_clock::now();
  // Children count against the key's concurrency cap like any sandbox.
  const std::uint32_t max_concurrent = tier_caps(ctx_.keys, ctx_.config, owner).max_concurrent();
  auto children = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                                fork_atom::value, owner, id, n, max_concurrent);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  metrics_.fork_seconds.record(children ? "ok" : "failed", took.count());
  if (!children) co_return to_error(children.error());
  for (const auto& info : *children)
    log::info("sandbox forked", {{"sandbox", info.id},
                                 {"parent", id},
                                 {"key", owner},
                                 {"ms", static_cast<long long>(took.count() * 1000)}});
  co_return std::move(*children);
}

// POST /v1/sandboxes/{id}/merge_into/{winner}
asio::awaitable<void> Api::merge_into(Exchange& exchange, const std::string& owner,
                                      const std::string& parent, const std::string& winner) {
  auto merged = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                          merge_atom::value, owner, parent, winner);
  if (!merged) co_return co_await exchange.respond_error(to_error(merged.error()));
  co_await exchange.respond(200, to_json(to_api(*merged, ctx_.vms)));
}

// The destroy flow: the registry checks ownership and has the sandbox tear
// its VM down; the answer comes once the VM's process and files are gone.
asio::awaitable<void> Api::destroy(Exchange& exchange, const std::string& owner,
                                   const std::string& id) {
  auto done = co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                      destroy_atom::value, owner, id);
  if (!done) co_return co_await exchange.respond_error(to_error(done.error()));
  co_await exchange.respond_no_content();
}

} // namespace vesicle::hostd
