// Spaces: POST /v1/sandboxes/{id}/freeze, GET /v1/spaces, GET and DELETE
// /v1/spaces/{id}, POST /v1/spaces/{id}/resume
#include "actors/ask.hpp"
#include "actors/sandbox/template_store.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/network.hpp"

namespace vesicle::hostd {

// A new Space or template of about `memory_mib` of RAM (either holds every
// RAM page in use) must fit the key's tier: max_spaces Spaces (templates are
// not counted there) and max_spaces_mib for Spaces and templates together,
// since both are bytes the key keeps on the host's disk (a cap of 0 is none).
asio::awaitable<Result<void>> Api::check_storage_quota(const std::string& owner,
                                                       std::uint32_t memory_mib,
                                                       const std::string& doing, Stored adding) {
  const auto& caps = tier_caps(ctx_.keys, ctx_.config, owner);
  auto spaces = co_await ask<SpaceInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                            spaces_atom::value, owner);
  if (!spaces) co_return to_error(spaces.error());
  if (adding == Stored::space && caps.max_spaces() != 0 && spaces->size() >= caps.max_spaces())
    co_return Error::of(ErrorKind::quota,
                        doing + ": key " + owner + " keeps " + std::to_string(spaces->size()) +
                            " Spaces, its tier's max_spaces; delete one you no longer need "
                            "(DELETE /v1/spaces/{id}) or resume one");
  if (caps.max_spaces_mib() == 0) co_return Result<void>{};
  auto templates = co_await ask<TemplateInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                                  templates_atom::value, owner);
  if (!templates) co_return to_error(templates.error());
  constexpr std::uint64_t kMiB = 1024 * 1024;
  std::uint64_t space_bytes = 0;
  for (const auto& space : *spaces)
    space_bytes += space.state_bytes + space.disk_bytes;
  const auto saved = template_usage(*templates, owner);
  const std::uint64_t template_bytes = saved.memory_bytes + saved.disk_bytes;
  const std::uint64_t kept = space_bytes + template_bytes;
  if (kept + std::uint64_t{memory_mib} * kMiB <= std::uint64_t{caps.max_spaces_mib()} * kMiB)
    co_return Result<void>{};
  co_return Error::of(
      ErrorKind::quota,
      doing + ": key " + owner + "'s Spaces take " + std::to_string(space_bytes / kMiB) +
          " MiB and its templates " + std::to_string(template_bytes / kMiB) + " MiB, and a new " +
          (adding == Stored::space ? "Space" : "template") + " about " +
          std::to_string(memory_mib) + " MiB more, past its tier's " +
          std::to_string(caps.max_spaces_mib()) +
          " MiB (max_spaces_mib); delete a Space (DELETE /v1/spaces/{id}) or a template "
          "(DELETE /v1/templates/{name}) you no longer need");
}

// Answers once the Space is on disk and the VM gone (seconds under TCG:
// every RAM page in use is written).
asio::awaitable<Result<SpaceInfo>> Api::freeze_sandbox(const std::string& owner,
                                                       const std::string& id) {
  // Another key's sandbox is unknown (404) before any quota is looked at.
  auto sandbox = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                           lookup_atom::value, owner, id);
  if (!sandbox) co_return to_error(sandbox.error());
  if (auto room = co_await check_storage_quota(owner, sandbox->spec.memory_mib,
                                               "freezing sandbox " + id, Stored::space);
      !room)
    co_return room.error();
  const auto started = std::chrono::steady_clock::now();
  auto space = co_await ask<SpaceInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                       freeze_atom::value, owner, id);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  metrics_.freeze_seconds.record(space ? "ok" : "failed", took.count());
  if (!space) co_return to_error(space.error());
  co_return std::move(*space);
}

asio::awaitable<void> Api::freeze(Exchange& exchange, const std::string& owner,
                                  const std::string& id) {
  auto space = co_await freeze_sandbox(owner, id);
  if (!space) co_return co_await exchange.respond_error(space.error());
  co_await exchange.respond(200, to_json(to_api(*space)));
}

asio::awaitable<void> Api::list_spaces(Exchange& exchange, const std::string& owner) {
  auto spaces = co_await ask<SpaceInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                            spaces_atom::value, owner);
  if (!spaces) co_return co_await exchange.respond_error(to_error(spaces.error()));
  api::ListSpacesResponse out;
  for (const auto& space : *spaces)
    *out.add_spaces() = to_api(space);
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> Api::get_space(Exchange& exchange, const std::string& owner,
                                     const std::string& space_id) {
  auto space = co_await ask<SpaceInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                       space_atom::value, owner, space_id);
  if (!space) co_return co_await exchange.respond_error(to_error(space.error()));
  co_await exchange.respond(200, to_json(to_api(*space)));
}

asio::awaitable<void> Api::delete_space(Exchange& exchange, const std::string& owner,
                                        const std::string& space_id) {
  auto done = co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                      delete_space_atom::value, owner, space_id);
  if (!done) co_return co_await exchange.respond_error(to_error(done.error()));
  co_await exchange.respond_no_content();
}

asio::awaitable<void> Api::resume(Exchange& exchange, const std::string& owner,
                                  const std::string& space_id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::ResumeRequest request;
  if (!body->empty()) {
    auto parsed = from_json(*body, request);
    if (!parsed)
      co_return co_await exchange.respond_error(Error::of(
          ErrorKind::invalid_argument, "invalid resume request: " + parsed.error().detail));
  }
  const bool persistent = request.has_persistent() && request.persistent();
  auto secrets = secret_values(request.secrets(), nullptr, ctx_.config);
  if (!secrets) co_return co_await exchange.respond_error(secrets.error());
  auto resumed = co_await resume_space(owner, space_id, persistent, std::move(*secrets));
  if (!resumed) co_return co_await exchange.respond_error(resumed.error());
  co_await exchange.respond(201, to_json(to_api(*resumed, ctx_.vms)));
}

// Answers once the new sandbox is ready (the Space is checked, then
// resumed), or with why not; a refused Space is kept.
asio::awaitable<Result<SandboxInfo>> Api::resume_space(const std::string& owner,
                                                       const std::string& space_id, bool persistent,
                                                       SecretValues secrets) {
  // The resumed sandbox counts against the key's concurrency cap.
  const std::uint32_t max_concurrent = tier_caps(ctx_.keys, ctx_.config, owner).max_concurrent();
  const auto started = std::chrono::steady_clock::now();
  auto resumed =
      co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout, resume_atom::value,
                                owner, space_id, persistent, max_concurrent, secrets);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  metrics_.resume_seconds.record(resumed ? "ok" : "failed", took.count());
  if (!resumed) co_return to_error(resumed.error());
  log::info("sandbox resumed from a Space", {{"sandbox", resumed->id},
                                             {"space", space_id},
                                             {"key", owner},
                                             {"ms", static_cast<long long>(took.count() * 1000)}});
  co_return std::move(*resumed);
}

} // namespace vesicle::hostd
