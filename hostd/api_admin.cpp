// /v1/admin: the operator's view of every key's sandboxes (an admin key
// only; the page at /ui uses it). GET /v1/admin/sandboxes lists them with
// their owner and their VM's memory and CPU; DELETE /v1/admin/sandboxes/{id}
// and POST /v1/admin/sandboxes/{id}/exec act on any key's sandbox, as its
// owner would, through the owner's own handlers.
#include <algorithm>

#include "actors/ask.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/proc_usage.hpp"

namespace vesicle::hostd {

// Every key's sandboxes, oldest first. The registry lists by owner; the key
// store knows every owner there can be.
asio::awaitable<Result<SandboxInfoList>> Api::all_sandboxes() {
  SandboxInfoList all;
  for (const auto& entry : ctx_.keys.entries()) {
    auto owned = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                               list_atom::value, entry.id);
    if (!owned) co_return to_error(owned.error());
    all.insert(all.end(), owned->begin(), owned->end());
  }
  std::stable_sort(all.begin(), all.end(), [](const SandboxInfo& a, const SandboxInfo& b) {
    return a.created_at_ms < b.created_at_ms;
  });
  co_return all;
}

asio::awaitable<void> Api::admin_list(Exchange& exchange, const std::string& admin) {
  auto all = co_await all_sandboxes();
  if (!all) co_return co_await exchange.respond_error(all.error());
  api::AdminSandboxList out;
  out.set_admin_key_id(admin);
  for (const auto& info : *all) {
    auto* entry = out.add_sandboxes();
    *entry->mutable_sandbox() = to_api(info, ctx_.vms.accel());
    entry->set_owner_key_id(info.owner);
    if (auto usage = process_usage(info.qemu_pid)) {
      entry->set_has_vm(true);
      entry->set_vmm_pid(info.qemu_pid);
      entry->set_rss_bytes(static_cast<double>(usage->rss_bytes));
      entry->set_cpu_seconds(usage->cpu_seconds);
    }
  }
  co_await exchange.respond(200, to_json(out));
}

// The owner of sandbox `id`, to act on it as the owner would.
asio::awaitable<Result<std::string>> Api::owner_of(const std::string& id) {
  auto all = co_await all_sandboxes();
  if (!all) co_return all.error();
  for (const auto& info : *all)
    if (info.id == id) co_return info.owner;
  co_return Error::of(ErrorKind::not_found,
                      "no sandbox " + id + " on this host (GET /v1/admin/sandboxes lists them)");
}

asio::awaitable<void> Api::admin_act(Exchange& exchange, const std::string& admin,
                                     const std::string& id, AdminAction action) {
  auto owner = co_await owner_of(id);
  if (!owner) co_return co_await exchange.respond_error(owner.error());
  // Who did it, beside the request's own line (which names the admin key).
  log::info(action == AdminAction::destroy ? "admin destroys a sandbox" : "admin runs code",
            {{"sandbox", id}, {"owner", *owner}, {"key", admin}});
  if (action == AdminAction::destroy) co_return co_await destroy(exchange, *owner, id);
  co_await exec(exchange, *owner, id);
}

} // namespace vesicle::hostd
