// Saved templates: POST /v1/templates, GET /v1/templates, GET and DELETE
// /v1/templates/{name}. Creates name one with the create body's template
// field (api_sandboxes.cpp); the registry resolves it.
#include <algorithm>

#include "actors/ask.hpp"
#include "actors/sandbox/template_store.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"

namespace vesicle::hostd {

namespace {

api::Template to_api(const TemplateInfo& info, const std::string& key) {
  api::Template out;
  out.set_name(info.name);
  out.set_template_id(info.template_id);
  out.set_global(info.global);
  out.set_own(info.owner == key);
  out.set_from_sandbox(info.from_sandbox);
  out.set_created_at(rfc3339(info.created_at_ms));
  out.set_vcpus(info.vcpus);
  out.set_memory_mib(info.memory_mib);
  out.set_disk_mib(info.disk_mib);
  out.set_recipe_hash(info.recipe_hash);
  out.set_pool_size(info.pool_size);
  out.set_memory_bytes(static_cast<double>(info.memory_bytes));
  out.set_disk_bytes(static_cast<double>(info.state_bytes + info.disk_bytes));
  out.set_pool_ready(info.pool_ready);
  return out;
}

// The largest pool a template may ask for (flow_template.cpp caps it too).
constexpr std::uint32_t kMaxPoolSize = 8;

} // namespace

std::uint32_t default_template_pool_size(const config::HostdConfig& config) {
  return config.has_template_pool_size() ? std::min(config.template_pool_size(), kMaxPoolSize) : 1;
}

asio::awaitable<Result<TemplateInfo>> Api::save_template(const std::string& owner,
                                                         const std::string& sandbox_id,
                                                         api::CreateTemplateRequest request) {
  if (sandbox_id.empty())
    co_return Error::of(ErrorKind::invalid_argument,
                        "from_sandbox: name the sandbox to save (its id, \"sb-...\")");
  if (auto named = check_template_name(request.name()); !named) co_return named.error();
  if (request.global()) {
    const auto* entry = ctx_.keys.find(owner);
    if (!entry || !entry->admin)
      co_return Error::of(ErrorKind::invalid_argument,
                          "global: only an admin key can make a template every key may use; "
                          "leave global out to keep it this key's");
  }
  if (request.has_pool_size() && request.pool_size() > kMaxPoolSize)
    co_return Error::of(ErrorKind::invalid_argument, "pool_size: at most " +
                                                         std::to_string(kMaxPoolSize) + ", got " +
                                                         std::to_string(request.pool_size()));
  // The template's bytes count against the key's stored-bytes quota: look
  // the sandbox up first (another key's is 404 before any quota).
  auto sandbox = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                           lookup_atom::value, owner, sandbox_id);
  if (!sandbox) co_return to_error(sandbox.error());
  if (auto room = co_await check_storage_quota(
          owner, sandbox->spec.memory_mib, "saving template " + request.name(), Stored::template_);
      !room)
    co_return room.error();
  TemplateInfo wanted;
  wanted.name = request.name();
  wanted.global = request.global();
  wanted.recipe_hash = request.recipe_hash();
  wanted.pool_size =
      request.has_pool_size() ? request.pool_size() : default_template_pool_size(ctx_.config);
  const auto started = std::chrono::steady_clock::now();
  auto saved = co_await ask<TemplateInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                          save_template_atom::value, owner, sandbox_id, wanted);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  if (!saved) co_return to_error(saved.error());
  log::info("template saved", {{"template", saved->template_id},
                               {"name", saved->name},
                               {"sandbox", sandbox_id},
                               {"key", owner},
                               {"ms", static_cast<long long>(took.count() * 1000)}});
  co_return std::move(*saved);
}

asio::awaitable<void> Api::create_template(Exchange& exchange, const std::string& owner) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::CreateTemplateRequest request;
  if (!body->empty()) {
    auto parsed = from_json(*body, request);
    if (!parsed)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::invalid_argument, "invalid template request: " + parsed.error().detail));
  }
  const std::string from = request.from_sandbox();
  auto saved = co_await save_template(owner, from, std::move(request));
  if (!saved) co_return co_await exchange.respond_error(saved.error());
  co_await exchange.respond(201, to_json(to_api(*saved, owner)));
}

asio::awaitable<void> Api::list_templates(Exchange& exchange, const std::string& owner) {
  auto templates = co_await ask<TemplateInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                                  templates_atom::value, owner);
  if (!templates) co_return co_await exchange.respond_error(to_error(templates.error()));
  api::ListTemplatesResponse out;
  for (const auto& info : *templates)
    *out.add_templates() = to_api(info, owner);
  const auto usage = template_usage(*templates, owner);
  out.mutable_usage()->set_count(usage.count);
  out.mutable_usage()->set_memory_bytes(static_cast<double>(usage.memory_bytes));
  out.mutable_usage()->set_disk_bytes(static_cast<double>(usage.disk_bytes));
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> Api::get_template(Exchange& exchange, const std::string& owner,
                                        const std::string& name) {
  auto info = co_await ask<TemplateInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                         template_info_atom::value, owner, name);
  if (!info) co_return co_await exchange.respond_error(to_error(info.error()));
  co_await exchange.respond(200, to_json(to_api(*info, owner)));
}

asio::awaitable<void> Api::delete_template(Exchange& exchange, const std::string& owner,
                                           const std::string& name) {
  auto done = co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                      delete_template_atom::value, owner, name);
  if (!done) co_return co_await exchange.respond_error(to_error(done.error()));
  co_await exchange.respond_no_content();
}

} // namespace vesicle::hostd
