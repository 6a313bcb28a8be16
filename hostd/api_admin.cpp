// /v1/admin: the operator's view of every key's sandboxes (an admin key
// only; the page at /ui uses it). GET /v1/admin/sandboxes lists them with
// their owner and their VM's memory and CPU; DELETE /v1/admin/sandboxes/{id}
// and POST /v1/admin/sandboxes/{id}/exec act on any key's sandbox, as its
// owner would, through the owner's own handlers. POST /v1/admin/keys/reload
// reads the keys file again (as SIGHUP does).
#include <algorithm>

#include "actors/ask.hpp"
#include "common/escape.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/proc_usage.hpp"

namespace vesicle::hostd {

// Every key's sandboxes, oldest first. The registry lists by owner; the key
// store knows every owner there can be (a copy: a reload may change the
// store while this waits for the registry).
asio::awaitable<Result<SandboxInfoList>> Api::all_sandboxes() {
  SandboxInfoList all;
  for (const auto& owner : ctx_.keys.owners()) {
    auto owned = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                               list_atom::value, owner);
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
    *entry->mutable_sandbox() = to_api(info, ctx_.vms);
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

asio::awaitable<Result<KeysReload>> Api::reload_keys() {
  auto removed = ctx_.keys.reload();
  if (!removed) co_return removed.error();
  KeysReload out;
  out.keys = ctx_.keys.entries().size();
  out.removed = std::move(*removed);
  const bool destroy = ctx_.config.keys().removed_key_sandboxes() != "keep";
  for (const auto& id : out.removed) {
    auto owned = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                               list_atom::value, id);
    if (!owned) {
      log::warn("could not list a removed key's sandboxes",
                {{"key", id}, {"error", to_error(owned.error()).message()}});
      continue;
    }
    if (!destroy) {
      // Kept: the admin listing must still find them.
      if (!owned->empty()) ctx_.keys.retire(id);
      out.sandboxes_kept += owned->size();
      continue;
    }
    for (const auto& info : *owned) {
      auto done = co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                          destroy_atom::value, id, info.id);
      if (done) {
        ++out.sandboxes_destroyed;
        log::info("sandbox of a removed key destroyed", {{"sandbox", info.id}, {"key", id}});
      } else {
        log::warn("could not destroy a removed key's sandbox",
                  {{"sandbox", info.id}, {"key", id}, {"error", to_error(done.error()).message()}});
      }
    }
  }
  log::info("API keys reloaded",
            {{"keys", static_cast<std::uint64_t>(out.keys)},
             {"removed", static_cast<std::uint64_t>(out.removed.size())},
             {"destroyed", static_cast<std::uint64_t>(out.sandboxes_destroyed)},
             {"kept", static_cast<std::uint64_t>(out.sandboxes_kept)}});
  co_return out;
}

namespace {
// {"keys": 3, "removed": ["key-…"], "sandboxes_destroyed": 1, "sandboxes_kept": 0}
std::string reload_json(const KeysReload& reload) {
  std::string text = "{\"keys\": " + std::to_string(reload.keys) + ", \"removed\": [";
  for (std::size_t i = 0; i < reload.removed.size(); ++i) {
    text += i ? ", \"" : "\"";
    append_escaped(text, reload.removed[i], true, ControlEscape::json);
    text += "\"";
  }
  text += "], \"sandboxes_destroyed\": " + std::to_string(reload.sandboxes_destroyed) +
          ", \"sandboxes_kept\": " + std::to_string(reload.sandboxes_kept) + "}";
  return text;
}
} // namespace

asio::awaitable<void> Api::admin_reload_keys(Exchange& exchange, const std::string& admin) {
  log::info("admin reloads the API keys", {{"key", admin}});
  auto reloaded = co_await reload_keys();
  if (!reloaded) co_return co_await exchange.respond_error(reloaded.error());
  co_await exchange.respond(200, reload_json(*reloaded));
}

} // namespace vesicle::hostd
