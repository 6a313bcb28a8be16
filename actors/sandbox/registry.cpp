#include "actors/sandbox/registry.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/sandbox/space_store.hpp"
#include "actors/sandbox/vm_host.hpp"

namespace vesicle {

namespace {

struct Record {
  SandboxInfo info;
  sandbox_actor actor;
  bool actor_alive = true;
  int pool = -1; // index into settings.pools of the pool it came from
  // The sandboxes it was forked from, its parent first: merge_into accepts
  // any descendant, also when a sandbox in between is gone.
  std::vector<std::string> ancestors;
};

// Answers whoever waits for a sandbox to become ready (a create, a fork).
using ReadyHandler = std::function<void(caf::expected<SandboxInfo>)>;

// A fork between its parent step and its last child's answer.
struct PendingFork {
  std::string owner;
  std::string parent_id;
  std::vector<std::string> child_ids;
  caf::typed_response_promise<SandboxInfoList> promise;
  std::vector<SandboxInfo> ready;
  std::vector<std::string> failures;
  std::size_t outstanding = 0;
};

// Answers whoever waits for a freeze: the API, the reaper's log, shutdown.
using FreezeHandler = std::function<void(caf::expected<SpaceInfo>)>;

// A resume between its request and its Space's check.
struct PendingResume {
  SandboxInfo info; // the new sandbox, held as a placeholder meanwhile
  caf::typed_response_promise<SandboxInfo> promise;
};

struct PendingMerge {
  std::string winner_id;
  caf::typed_response_promise<SandboxInfo> promise;
};

struct RegistryState {
  VmHost* vms = nullptr;
  RegistrySettings settings;
  std::map<std::string, Record> records;
  bool shutting_down = false;
  // Creates waiting for their sandbox to become ready, so a shutdown can
  // answer them instead of leaving them hanging.
  std::map<std::string, ReadyHandler> pending_creates;
  // Forks by fork snapshot id; merges by parent id.
  std::map<std::string, PendingFork> pending_forks;
  std::map<std::string, PendingMerge> pending_merges;
  // Freezes by sandbox id; resumes by Space id (checked, or launching).
  std::map<std::string, FreezeHandler> pending_freezes;
  std::map<std::string, PendingResume> pending_resumes;
  std::set<std::string> resuming;
  std::optional<SpaceStore> spaces; // unset: no Spaces on this host
  // The last in-use count each pool was told.
  std::vector<std::uint32_t> pool_usage;
  reaper_actor reaper; // null when settings.reaper is off
  static inline const char* name = "registry";
};

using self_pointer = registry_actor::stateful_pointer<RegistryState>;

caf::error shutting_down() {
  return make_error(ErrorKind::unavailable, "hostd is shutting down; retry after it restarts");
}

std::int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

CapacityInfo capacity(self_pointer self) {
  CapacityInfo result;
  result.max_sandboxes = self->state.settings.max_sandboxes;
  for (const auto& [id, record] : self->state.records) {
    switch (record.info.state) {
    case SandboxState::booting:
      ++result.booting;
      break;
    case SandboxState::ready:
      ++result.ready;
      break;
    case SandboxState::destroying:
      ++result.destroying;
      break;
    case SandboxState::dead:
      ++result.dead;
      break;
    case SandboxState::frozen:
      ++result.frozen;
      break;
    }
  }
  return result;
}

// Whether a sandbox holds (or will hold) a VM: it counts against capacity,
// its pool's usage and its key's concurrency cap. Dead and frozen ones
// are records only.
bool holds_vm(const SandboxInfo& info) {
  return info.state != SandboxState::dead && info.state != SandboxState::frozen;
}

std::uint32_t live_of(self_pointer self, const std::string& owner) {
  std::uint32_t live = 0;
  for (const auto& [id, record] : self->state.records)
    if (record.info.owner == owner && holds_vm(record.info)) ++live;
  return live;
}

// The caller's record, or not_found for an unknown id and for another key's
// sandbox alike, so ids cannot be probed across keys.
caf::expected<Record*> owned(self_pointer self, const std::string& owner, const std::string& id) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end() || found->second.info.owner != owner)
    return make_error(ErrorKind::not_found,
                      "no sandbox " + id + " for this key; list yours with GET /v1/sandboxes");
  return &found->second;
}

// Tells each pool how many live sandboxes hold one of its VMs, so it never
// keeps more than its max in total.
void update_pool_usage(self_pointer self) {
  auto& pools = self->state.settings.pools;
  std::vector<std::uint32_t> usage(pools.size(), 0);
  for (const auto& [id, record] : self->state.records)
    if (record.pool >= 0 && record.actor_alive && holds_vm(record.info))
      ++usage[static_cast<std::size_t>(record.pool)];
  for (std::size_t i = 0; i < pools.size(); ++i) {
    if (usage[i] == self->state.pool_usage[i]) continue;
    self->state.pool_usage[i] = usage[i];
    self->send(pools[i].actor, usage_atom::value, usage[i]);
  }
}

int pool_for(self_pointer self, const SandboxSpec& spec) {
  const auto& pools = self->state.settings.pools;
  for (std::size_t i = 0; i < pools.size(); ++i) {
    const auto& t = pools[i].spec;
    if (t.name == spec.template_name && t.vcpus == spec.vcpus && t.memory_mib == spec.memory_mib)
      return static_cast<int>(i);
  }
  return -1;
}

// Spawns the sandbox with its launch plan and answers the create once it is
// ready; if it never gets there, destroys it so a failed create leaves
// nothing behind.
ReadyHandler answer_with(caf::typed_response_promise<SandboxInfo> promise) {
  return [promise](caf::expected<SandboxInfo> outcome) mutable {
    if (outcome)
      promise.deliver(std::move(*outcome));
    else
      promise.deliver(std::move(outcome.error()));
  };
}

void launch(self_pointer self, SandboxInfo info, int pool, LaunchPlan plan, ReadyHandler on_ready,
            std::vector<std::string> ancestors = {}) {
  if (self->state.shutting_down) {
    if (auto* pooled = std::get_if<launch::FromPoolVm>(&plan))
      self->state.vms->discard(pooled->pool_vm_id);
    on_ready(shutting_down());
    return;
  }
  auto sandbox = spawn_sandbox(self->system(), info, *self->state.vms,
                               caf::actor_cast<state_listener>(self), plan);
  self->monitor(sandbox);
  Record record{info, sandbox, true, pool, std::move(ancestors)};
  self->state.records.emplace(info.id, std::move(record));
  update_pool_usage(self);

  auto id = info.id;
  self->state.pending_creates.emplace(id, std::move(on_ready));
  auto answer = [=](caf::expected<SandboxInfo> outcome) {
    auto pending = self->state.pending_creates.find(id);
    if (pending == self->state.pending_creates.end()) return;
    auto handler = std::move(pending->second);
    self->state.pending_creates.erase(pending);
    handler(std::move(outcome));
  };
  auto timeout = self->state.settings.ready_timeout;
  self->request(sandbox, timeout, await_ready_atom::value)
      .then([=](SandboxInfo& ready) { answer(std::move(ready)); },
            [=](caf::error& failure) {
              log::warn("sandbox did not become ready",
                        {{"sandbox", id}, {"error", self->system().render(failure)}});
              answer(caf::expected<SandboxInfo>(failure));
              // Then take down what is left; its record holds the slot
              // until its VM is really gone.
              auto forget = [=] {
                self->state.vms->reclaim(id, {});
                self->state.records.erase(id);
                update_pool_usage(self);
              };
              self->request(sandbox, timeout, destroy_atom::value)
                  .then([=](done_atom) { forget(); }, [=](caf::error&) { forget(); });
            });
}

// The create flow, as the registry sees it: admit against capacity, take a
// waiting VM from the matching pool if one waits, spawn the sandbox (which
// adopts, restores or boots its VM) and wait until it is ready.
caf::result<SandboxInfo> create(self_pointer self, std::string owner, SandboxSpec spec) {
  if (self->state.shutting_down)
    return shutting_down();
  auto room = capacity(self);
  if (room.available() == 0)
    return make_error(ErrorKind::capacity,
                      "this host runs its maximum of " + std::to_string(room.max_sandboxes) +
                          " sandboxes; retry later or delete one you no longer need");

  SandboxInfo info;
  info.id = new_sandbox_id();
  info.owner = std::move(owner);
  info.spec = std::move(spec);
  info.created_at_ms = now_ms();
  auto promise = self->make_response_promise<SandboxInfo>();
  const int pool = pool_for(self, info.spec);
  if (pool < 0) {
    launch(self, std::move(info), pool, launch::ColdBoot{}, answer_with(promise));
    return promise;
  }
  // Hold the capacity while the pool answers: count the sandbox as booting.
  const auto& entry = self->state.settings.pools[static_cast<std::size_t>(pool)];
  const auto key = entry.spec.key;
  auto placeholder = info;
  self->state.records.emplace(info.id, Record{placeholder, sandbox_actor{}, false, -1});
  self->request(entry.actor, std::chrono::seconds(5), take_atom::value)
      .then(
          [=](std::string& pool_vm_id) mutable {
            self->state.records.erase(info.id);
            // An empty id: none was waiting; restore from the template.
            LaunchPlan plan = launch::FromTemplate{key};
            if (!pool_vm_id.empty()) plan = launch::FromPoolVm{std::move(pool_vm_id), key};
            launch(self, info, pool, std::move(plan), answer_with(promise));
          },
          [=](caf::error&) mutable {
            self->state.records.erase(info.id);
            launch(self, info, pool, launch::FromTemplate{key}, answer_with(promise));
          });
  return promise;
}

// A create held to the owner's concurrency cap (its key's tier): the live
// sandboxes it holds (booting, ready, being deleted; dead records do not
// count) must be fewer than `max_concurrent`.
caf::result<SandboxInfo> create_capped(self_pointer self, std::string owner, SandboxSpec spec,
                                       std::uint32_t max_concurrent) {
  const std::uint32_t live = live_of(self, owner);
  if (live >= max_concurrent)
    return make_error(ErrorKind::quota,
                      "this key may run " + std::to_string(max_concurrent) +
                          " sandboxes at once (its tier's cap) and runs " + std::to_string(live) +
                          "; delete one you no longer need (DELETE /v1/sandboxes/{id}), or use a "
                          "key of a higher tier");
  return create(self, std::move(owner), std::move(spec));
}

void start_freeze(self_pointer self, const std::string& id, std::string reason,
                  FreezeHandler on_done);

// The reaper's decision, and what it means for this sandbox. A
// non-persistent sandbox is ended: its VM goes, its record stays (state
// dead, the reason) until DELETE, like any sandbox that died. A persistent
// one is frozen into a Space; if that fails it is left running (and
// logged), never destroyed, so no work is lost.
void expire(self_pointer self, const std::string& id, const std::string& reason, bool lifetime) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end()) return;
  auto& record = found->second;
  if (!record.actor_alive || record.info.state != SandboxState::ready) return;
  if (record.info.spec.persistent) {
    if (!self->state.spaces) {
      log::warn("persistent sandbox keeps running: this hostd keeps no Spaces",
                {{"sandbox", id}, {"reason", reason}});
      return;
    }
    log::info("freezing persistent sandbox into a Space", {{"sandbox", id}, {"reason", reason}});
    start_freeze(self, id, lifetime ? "lifetime" : "idle", [id](caf::expected<SpaceInfo> frozen) {
      if (!frozen)
        log::warn("sandbox could not be frozen and keeps running",
                  {{"sandbox", id}, {"error", error_message(frozen.error())}});
    });
    return;
  }
  log::info("sandbox ended", {{"sandbox", id}, {"key", record.info.owner}, {"reason", reason}});
  self->send(record.actor, expire_atom::value, reason);
}

caf::result<done_atom> destroy(self_pointer self, const std::string& owner, const std::string& id) {
  auto record = owned(self, owner, id);
  if (!record) return std::move(record.error());
  if (!(*record)->actor_alive) {
    self->state.records.erase(id);
    return done_atom::value;
  }
  auto promise = self->make_response_promise<done_atom>();
  self->request((*record)->actor, self->state.settings.ready_timeout, destroy_atom::value)
      .then(
          [=](done_atom) mutable {
            self->state.records.erase(id);
            update_pool_usage(self);
            promise.deliver(done_atom::value);
          },
          [=](caf::error& failure) mutable {
            // The actor did not finish: kill the VM from here so nothing
            // outlives the DELETE, and say so.
            self->state.vms->reclaim(id, {});
            self->state.records.erase(id);
            update_pool_usage(self);
            promise.deliver(make_error(
                ErrorKind::internal, "deleting sandbox " + id + ": its actor did not answer (" +
                                    self->system().render(failure) + "); its VM was killed"));
          });
  return promise;
}

std::string new_fork_id() {
  // Fork snapshots are named like sandboxes, with their own prefix.
  return "fk-" + new_sandbox_id().substr(3);
}

// A record that is ready and whose actor runs, or why it cannot be forked
// or merged now.
caf::expected<Record*> ready_record(self_pointer self, const std::string& owner,
                                    const std::string& id) {
  auto record = owned(self, owner, id);
  if (!record) return record;
  const auto& info = (*record)->info;
  if (!(*record)->actor_alive || info.state == SandboxState::dead)
    return make_error(ErrorKind::guest_died, "sandbox " + id + " died: " + info.dead_reason +
                                              "; delete it and create a new one");
  if (info.state == SandboxState::frozen)
    return make_error(ErrorKind::conflict,
                      "sandbox " + id + " is frozen into Space " + info.space_id +
                          "; resume it with POST /v1/spaces/" + info.space_id + "/resume");
  if (info.state != SandboxState::ready)
    return make_error(ErrorKind::conflict,
                      "sandbox " + id + " is not ready (it is " +
                          (info.state == SandboxState::booting ? "booting" : "being deleted") +
                          "); retry once it is ready");
  return record;
}

// A fork or merge counts as one operation for the reaper: no idle verdict
// while it runs, and the sandbox's idle time starts again when it ends.
constexpr std::uint64_t kForkLease = ~std::uint64_t{0};
constexpr std::uint64_t kMergeLease = ~std::uint64_t{0} - 1;
constexpr std::uint64_t kFreezeLease = ~std::uint64_t{0} - 2;

void reaper_op(self_pointer self, const std::string& id, std::uint64_t lease, bool begun) {
  if (!self->state.reaper) return;
  if (begun)
    self->send(self->state.reaper, begin_op_atom::value, id, lease);
  else
    self->send(self->state.reaper, end_op_atom::value, id, lease);
}

void release_hold(self_pointer self, const std::string& id) {
  auto found = self->state.records.find(id);
  if (found != self->state.records.end() && found->second.actor_alive)
    caf::anon_send(found->second.actor, hold_atom::value, false);
}

// The freeze flow: hold the sandbox (nothing may run while its VM is
// saved), let VmHost write the Space, then tell the sandbox it is frozen.
void start_freeze(self_pointer self, const std::string& id, std::string reason,
                  FreezeHandler on_done) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end()) {
    on_done(make_error(ErrorKind::not_found, "no sandbox " + id));
    return;
  }
  if (!self->state.spaces) {
    on_done(make_error(ErrorKind::conflict,
                       "this hostd keeps no Spaces (it runs without a state directory for them)"));
    return;
  }
  if (self->state.pending_freezes.count(id)) {
    on_done(make_error(ErrorKind::conflict,
                       "sandbox " + id + " is already being frozen; retry once that is done"));
    return;
  }
  const auto& record = found->second;
  SpaceInfo space;
  space.space_id = new_space_id();
  space.owner = record.info.owner;
  space.sandbox_id = id;
  space.spec = record.info.spec;
  space.created_at_ms = record.info.created_at_ms;
  space.reason = std::move(reason);
  self->state.pending_freezes.emplace(id, std::move(on_done));
  reaper_op(self, id, kFreezeLease, true);
  auto fail = [=](caf::error error) {
    reaper_op(self, id, kFreezeLease, false);
    auto pending = self->state.pending_freezes.find(id);
    if (pending == self->state.pending_freezes.end()) return;
    auto handler = std::move(pending->second);
    self->state.pending_freezes.erase(pending);
    handler(std::move(error));
  };
  self->request(record.actor, std::chrono::seconds(10), hold_atom::value, true)
      .then(
          [=](done_atom) {
            registry_actor registry = caf::actor_cast<registry_actor>(self);
            self->state.vms->freeze(id, space, [registry, id](Result<SpaceInfo> written) {
              if (written)
                caf::anon_send(registry, frozen_atom::value, id, caf::error{},
                               std::move(written.value()));
              else
                caf::anon_send(registry, frozen_atom::value, id, to_caf_error(written.error()),
                               SpaceInfo{});
            });
          },
          [=](caf::error& refused) { fail(std::move(refused)); });
}

void frozen(self_pointer self, const std::string& id, const caf::error& error, SpaceInfo space) {
  reaper_op(self, id, kFreezeLease, false);
  FreezeHandler handler;
  if (auto pending = self->state.pending_freezes.find(id);
      pending != self->state.pending_freezes.end()) {
    handler = std::move(pending->second);
    self->state.pending_freezes.erase(pending);
  }
  auto record = self->state.records.find(id);
  if (error) {
    // The sandbox runs on (VmHost resumed it), or its actor heard it died.
    release_hold(self, id);
    if (handler) handler(error);
    return;
  }
  if (record != self->state.records.end()) {
    record->second.info.state = SandboxState::frozen;
    record->second.info.space_id = space.space_id;
    record->second.info.qemu_pid = 0;
    if (record->second.actor_alive)
      self->send(record->second.actor, frozen_atom::value, space.space_id);
    update_pool_usage(self);
  }
  if (handler) handler(std::move(space));
}

caf::result<SpaceInfo> freeze(self_pointer self, const std::string& owner, const std::string& id) {
  if (self->state.shutting_down)
    return shutting_down();
  auto record = ready_record(self, owner, id);
  if (!record) return std::move(record.error());
  auto promise = self->make_response_promise<SpaceInfo>();
  start_freeze(self, id, "freeze", [promise](caf::expected<SpaceInfo> frozen) mutable {
    if (frozen)
      promise.deliver(std::move(*frozen));
    else
      promise.deliver(std::move(frozen.error()));
  });
  return promise;
}

// A Space the caller owns, or why not: not_found for a missing one and for
// another key's alike; a `space` file that cannot be read is corrupt.
caf::expected<SpaceInfo> owned_space(self_pointer self, const std::string& owner,
                                     const std::string& space_id) {
  if (!self->state.spaces)
    return make_error(ErrorKind::not_found, "no Space " + space_id + ": this hostd keeps no Spaces");
  auto space = self->state.spaces->find(owner, space_id);
  if (space) return std::move(space.value());
  if (space.error().kind == ErrorKind::not_found) return to_caf_error(space.error());
  return make_error(ErrorKind::corrupted, "Space " + space_id +
                                               " cannot be read: " + space.error().message() +
                                               "; it is kept for inspection (DELETE /v1/spaces/" +
                                               space_id + " removes it)");
}

// The resume flow: admit like a create (capacity, the key's cap), hold a
// placeholder, have VmHost check the Space (space_opened), then launch the
// new sandbox from it.
caf::result<SandboxInfo> resume(self_pointer self, const std::string& owner,
                                const std::string& space_id, bool persistent,
                                std::uint32_t max_concurrent) {
  if (self->state.shutting_down)
    return shutting_down();
  auto space = owned_space(self, owner, space_id);
  if (!space) return std::move(space.error());
  if (self->state.resuming.count(space_id))
    return make_error(ErrorKind::conflict,
                      "Space " + space_id + " is being resumed right now; a Space resumes once");
  const std::uint32_t live = live_of(self, owner);
  if (live >= max_concurrent)
    return make_error(ErrorKind::quota,
                      "this key may run " + std::to_string(max_concurrent) +
                          " sandboxes at once (its tier's cap) and runs " + std::to_string(live) +
                          "; delete one you no longer need, then resume the Space");
  auto room = capacity(self);
  if (room.available() == 0)
    return make_error(ErrorKind::capacity,
                      "this host runs its maximum of " + std::to_string(room.max_sandboxes) +
                          " sandboxes; retry later or delete one you no longer need (the Space "
                          "is kept)");
  SandboxInfo info;
  info.id = new_sandbox_id();
  info.owner = owner;
  info.spec = space->spec;
  info.spec.persistent = persistent;
  info.created_at_ms = now_ms();
  info.source = "space";
  info.resumed_from = space_id;
  self->state.records.emplace(info.id, Record{info, sandbox_actor{}, false, -1});
  auto promise = self->make_response_promise<SandboxInfo>();
  self->state.resuming.insert(space_id);
  self->state.pending_resumes.emplace(space_id, PendingResume{info, promise});
  registry_actor registry = caf::actor_cast<registry_actor>(self);
  self->state.vms->open_space(std::move(space.value()), [registry, space_id](Result<void> opened) {
    caf::anon_send(registry, space_opened_atom::value, space_id,
                   opened ? caf::error{} : to_caf_error(opened.error()));
  });
  return promise;
}

void space_opened(self_pointer self, const std::string& space_id, const caf::error& error) {
  auto found = self->state.pending_resumes.find(space_id);
  if (found == self->state.pending_resumes.end()) {
    self->state.vms->forget_space(space_id);
    return;
  }
  auto pending = std::move(found->second);
  self->state.pending_resumes.erase(found);
  self->state.records.erase(pending.info.id);
  if (error || self->state.shutting_down) {
    self->state.resuming.erase(space_id);
    self->state.vms->forget_space(space_id);
    if (error)
      pending.promise.deliver(make_error(
          to_error(error).kind,
          "Space " + space_id + " cannot be resumed: " + to_error(error).message() +
                                     "; it is kept as it is for inspection (DELETE /v1/spaces/" +
                                     space_id + " removes it)"));
    else
      pending.promise.deliver(
          shutting_down());
    return;
  }
  auto promise = pending.promise;
  launch(self, pending.info, -1, launch::FromSpace{space_id},
         [self, promise, space_id](caf::expected<SandboxInfo> outcome) mutable {
           self->state.resuming.erase(space_id);
           if (outcome)
             promise.deliver(std::move(*outcome));
           else
             promise.deliver(std::move(outcome.error()));
         });
}

caf::result<done_atom> delete_space(self_pointer self, const std::string& owner,
                                    const std::string& space_id) {
  if (self->state.resuming.count(space_id))
    return make_error(ErrorKind::conflict,
                      "Space " + space_id + " is being resumed right now");
  // A Space whose own `space` file is unreadable has no known owner: no
  // key may delete it through the API (the host's operator can).
  auto space = owned_space(self, owner, space_id);
  if (!space) return std::move(space.error());
  auto removed = self->state.spaces->remove(space_id);
  if (!removed)
    return make_error(ErrorKind::internal,
                      "removing Space " + space_id + ": " + removed.error().message());
  log::info("Space deleted", {{"space", space_id}, {"key", owner}});
  return done_atom::value;
}

// The fork flow: reserve room for the children (booting placeholders), hold
// the parent (no operation may run while its VM is saved), let VmHost turn
// it into a fork snapshot and resume it, then launch the children from the
// snapshot (forked()).
caf::result<SandboxInfoList> fork(self_pointer self, const std::string& owner,
                                  const std::string& id, std::uint32_t n,
                                  std::uint32_t max_concurrent) {
  if (self->state.shutting_down)
    return shutting_down();
  if (n < 1 || n > kMaxForkChildren)
    return make_error(ErrorKind::invalid_argument, "n: a fork makes 1 to " +
                                                  std::to_string(kMaxForkChildren) +
                                                  " children, got " + std::to_string(n));
  auto record = ready_record(self, owner, id);
  if (!record) return std::move(record.error());
  const std::uint32_t live = live_of(self, owner);
  if (live + n > max_concurrent)
    return make_error(ErrorKind::quota,
                      "forking " + id + " " + std::to_string(n) + " ways would make this key run " +
                          std::to_string(live + n) + " sandboxes; its tier's cap is " +
                          std::to_string(max_concurrent) +
                          "; delete sandboxes you no longer need or fork fewer ways");
  auto room = capacity(self);
  if (room.available() < n)
    return make_error(ErrorKind::capacity,
                      "forking " + id + " " + std::to_string(n) + " ways needs " +
                          std::to_string(n) + " free sandbox slots; this host has " +
                          std::to_string(room.available()) + " of " +
                          std::to_string(room.max_sandboxes) +
                          "; delete sandboxes you no longer need or fork fewer ways");
  const auto base_id = new_fork_id();
  PendingFork pending;
  pending.owner = owner;
  pending.parent_id = id;
  pending.promise = self->make_response_promise<SandboxInfoList>();
  auto ancestors = (*record)->ancestors;
  ancestors.insert(ancestors.begin(), id);
  for (std::uint32_t i = 0; i < n; ++i) {
    SandboxInfo child;
    child.id = new_sandbox_id();
    child.owner = owner;
    child.spec = (*record)->info.spec;
    child.created_at_ms = now_ms();
    child.source = "fork";
    child.forked_from = id;
    pending.child_ids.push_back(child.id);
    // Holds the slot until the child's actor exists.
    self->state.records.emplace(child.id, Record{child, sandbox_actor{}, false, -1, ancestors});
  }
  auto promise = pending.promise;
  self->state.pending_forks.emplace(base_id, std::move(pending));
  auto forget_placeholders = [=] {
    auto found = self->state.pending_forks.find(base_id);
    if (found == self->state.pending_forks.end()) return;
    for (const auto& child : found->second.child_ids)
      self->state.records.erase(child);
    self->state.pending_forks.erase(found);
  };
  reaper_op(self, id, kForkLease, true);
  self->request((*record)->actor, std::chrono::seconds(10), hold_atom::value, true)
      .then(
          [=](done_atom) {
            registry_actor registry = caf::actor_cast<registry_actor>(self);
            self->state.vms->fork_parent(
                id, base_id, [registry, base_id](Result<std::int32_t> pid) {
                  caf::anon_send(registry, forked_atom::value, base_id,
                                 pid ? caf::error{} : to_caf_error(pid.error()),
                                 pid ? *pid : std::int32_t{0});
                });
          },
          [=](caf::error& refused) mutable {
            forget_placeholders();
            reaper_op(self, id, kForkLease, false);
            promise.deliver(std::move(refused));
          });
  return promise;
}

// One child of a fork answered (ready or failed). With the last answer the
// fork is decided: all children, or none (the ones that came up are
// destroyed) and why.
void fork_child_done(self_pointer self, const std::string& base_id,
                     caf::expected<SandboxInfo> outcome, const std::string& child_id) {
  auto found = self->state.pending_forks.find(base_id);
  if (found == self->state.pending_forks.end()) return;
  auto& fork = found->second;
  if (outcome)
    fork.ready.push_back(std::move(*outcome));
  else
    fork.failures.push_back(child_id + ": " + error_message(outcome.error()));
  if (--fork.outstanding > 0) return;
  self->state.vms->release_fork(base_id);
  reaper_op(self, fork.parent_id, kForkLease, false);
  if (fork.failures.empty()) {
    // In the order the children were made.
    SandboxInfoList children;
    for (const auto& id : fork.child_ids)
      for (auto& info : fork.ready)
        if (info.id == id) children.push_back(info);
    fork.promise.deliver(std::move(children));
  } else {
    for (const auto& info : fork.ready) {
      auto record = self->state.records.find(info.id);
      if (record == self->state.records.end() || !record->second.actor_alive) continue;
      auto child = info.id;
      auto forget = [=] {
        self->state.vms->reclaim(child, {});
        self->state.records.erase(child);
      };
      self->request(record->second.actor, self->state.settings.ready_timeout, destroy_atom::value)
          .then([=](done_atom) { forget(); }, [=](caf::error&) { forget(); });
    }
    std::string why = fork.failures.front();
    if (fork.failures.size() > 1)
      why += " (and " + std::to_string(fork.failures.size() - 1) + " more)";
    fork.promise.deliver(make_error(
        ErrorKind::internal,
        "forking " + fork.parent_id + ": " + std::to_string(fork.failures.size()) + " of " +
            std::to_string(fork.child_ids.size()) + " children failed, so none was kept (" + why +
            "); the parent is unchanged"));
  }
  self->state.pending_forks.erase(found);
}

void forked(self_pointer self, const std::string& base_id, const caf::error& error) {
  auto found = self->state.pending_forks.find(base_id);
  if (found == self->state.pending_forks.end()) {
    self->state.vms->release_fork(base_id);
    return;
  }
  auto& fork = found->second;
  // After a failed save the parent runs on as before: let it serve again.
  // Otherwise VmHost lets it go once it has resumed.
  if (error) release_hold(self, fork.parent_id);
  if (error || self->state.shutting_down) {
    for (const auto& child : fork.child_ids)
      self->state.records.erase(child);
    self->state.vms->release_fork(base_id);
    reaper_op(self, fork.parent_id, kForkLease, false);
    auto failure =
        error ? make_error(to_error(error).kind,
                           "forking " + fork.parent_id + " failed: " + to_error(error).message())
            : shutting_down();
    fork.promise.deliver(std::move(failure));
    self->state.pending_forks.erase(found);
    return;
  }
  fork.outstanding = fork.child_ids.size();
  const auto children = fork.child_ids;
  for (const auto& child_id : children) {
    auto placeholder = self->state.records.find(child_id);
    if (placeholder == self->state.records.end()) continue;
    SandboxInfo info = placeholder->second.info;
    auto ancestors = placeholder->second.ancestors;
    self->state.records.erase(placeholder);
    launch(
        self, std::move(info), -1, launch::FromForkSnapshot{base_id},
        [=](caf::expected<SandboxInfo> outcome) {
          fork_child_done(self, base_id, std::move(outcome), child_id);
        },
        std::move(ancestors));
  }
}

caf::result<SandboxInfo> merge(self_pointer self, const std::string& owner,
                               const std::string& parent_id, const std::string& winner_id) {
  if (self->state.shutting_down)
    return shutting_down();
  if (parent_id == winner_id)
    return make_error(ErrorKind::conflict,
                      "cannot merge " + parent_id +
                          " into itself; merge_into takes one of its forked children");
  auto parent = ready_record(self, owner, parent_id);
  if (!parent) return std::move(parent.error());
  auto winner = owned(self, owner, winner_id);
  if (!winner) return std::move(winner.error());
  const auto& ancestors = (*winner)->ancestors;
  if (std::find(ancestors.begin(), ancestors.end(), parent_id) == ancestors.end())
    return make_error(ErrorKind::conflict,
                      winner_id + " was not forked from " + parent_id +
                          (ancestors.empty() ? std::string(" (it was not forked at all)")
                                             : " (it descends from " + ancestors.front() + ")") +
                          "; merge_into takes a child of " + parent_id + " or one of theirs");
  if (self->state.pending_merges.count(parent_id))
    return make_error(ErrorKind::conflict,
                      "a merge into " + parent_id + " is already running; retry once it is done");
  auto ready_winner = ready_record(self, owner, winner_id);
  if (!ready_winner) return std::move(ready_winner.error());
  auto promise = self->make_response_promise<SandboxInfo>();
  self->state.pending_merges.emplace(parent_id, PendingMerge{winner_id, promise});
  auto parent_actor = (*parent)->actor;
  auto winner_actor = (*ready_winner)->actor;
  auto fail = [=](caf::error error) {
    reaper_op(self, parent_id, kMergeLease, false);
    auto found = self->state.pending_merges.find(parent_id);
    if (found == self->state.pending_merges.end()) return;
    found->second.promise.deliver(std::move(error));
    self->state.pending_merges.erase(found);
  };
  auto timeout = std::chrono::seconds(10);
  reaper_op(self, parent_id, kMergeLease, true);
  self->request(parent_actor, timeout, hold_atom::value, true)
      .then(
          [=](done_atom) {
            self->request(winner_actor, timeout, hold_atom::value, true)
                .then(
                    [=](done_atom) {
                      registry_actor registry = caf::actor_cast<registry_actor>(self);
                      self->state.vms->merge(
                          parent_id, parent_actor, winner_id,
                          [registry, parent_id](Result<std::int32_t> pid) {
                            caf::anon_send(registry, merged_atom::value, parent_id,
                                           pid ? caf::error{} : to_caf_error(pid.error()),
                                           pid ? *pid : std::int32_t{0});
                          });
                    },
                    [=](caf::error& refused) {
                      release_hold(self, parent_id);
                      fail(std::move(refused));
                    });
          },
          [=](caf::error& refused) { fail(std::move(refused)); });
  return promise;
}

void merged(self_pointer self, const std::string& parent_id, const caf::error& error,
            std::int32_t pid) {
  auto found = self->state.pending_merges.find(parent_id);
  if (found == self->state.pending_merges.end()) return;
  auto merge = std::move(found->second);
  self->state.pending_merges.erase(found);
  reaper_op(self, parent_id, kMergeLease, false);
  if (error) {
    release_hold(self, parent_id);
    release_hold(self, merge.winner_id);
    merge.promise.deliver(make_error(ErrorKind::conflict, "merging " + merge.winner_id + " into " +
                                                              parent_id + " failed: " +
                                                              to_error(error).message() +
                                                              "; both are unchanged"));
    return;
  }
  // The winner's id is gone: its actor stops without touching the VM.
  if (auto winner = self->state.records.find(merge.winner_id);
      winner != self->state.records.end()) {
    if (winner->second.actor_alive) {
      auto actor = winner->second.actor;
      winner->second.actor_alive = false;
      caf::anon_send(actor, release_vm_atom::value);
    }
    if (self->state.reaper) {
      auto gone = winner->second.info;
      gone.state = SandboxState::destroying;
      self->send(self->state.reaper, state_atom::value, gone);
    }
    self->state.records.erase(winner);
  }
  auto parent = self->state.records.find(parent_id);
  if (parent == self->state.records.end()) {
    merge.promise.deliver(
        make_error(ErrorKind::not_found, "sandbox " + parent_id + " was deleted during the merge"));
    return;
  }
  if (parent->second.actor_alive) {
    self->send(parent->second.actor, vm_replaced_atom::value, pid);
    caf::anon_send(parent->second.actor, hold_atom::value, false);
  }
  auto info = parent->second.info;
  info.qemu_pid = pid;
  merge.promise.deliver(std::move(info));
}

caf::result<done_atom> shutdown(self_pointer self) {
  self->state.shutting_down = true;
  auto promise = self->make_response_promise<done_atom>();
  auto pending = std::make_shared<std::size_t>(0);
  auto finish = [=]() mutable {
    auto creates = std::move(self->state.pending_creates);
    self->state.pending_creates.clear();
    for (auto& [id, create] : creates)
      create(
          make_error(ErrorKind::unavailable, "hostd shut down while sandbox " + id + " was booting"));
    for (auto& [base, fork] : self->state.pending_forks)
      fork.promise.deliver(
          make_error(ErrorKind::unavailable,
                     "hostd shut down while sandbox " + fork.parent_id + " was being forked"));
    self->state.pending_forks.clear();
    for (auto& [parent, merge] : self->state.pending_merges)
      merge.promise.deliver(
          make_error(ErrorKind::unavailable, "hostd shut down while sandbox " + merge.winner_id +
                                              " was being merged into " + parent));
    self->state.pending_merges.clear();
    for (auto& [space_id, resume] : self->state.pending_resumes) {
      self->state.vms->forget_space(space_id);
      resume.promise.deliver(make_error(ErrorKind::unavailable, "hostd shut down while Space " +
                                                                 space_id + " was being resumed"));
    }
    self->state.pending_resumes.clear();
    promise.deliver(done_atom::value);
    if (self->state.reaper) self->send_exit(self->state.reaper, caf::exit_reason::user_shutdown);
    self->quit();
  };
  auto one_done = [=](const std::string& id) mutable {
    self->state.vms->reclaim(id, {});
    self->state.records.erase(id);
    if (--*pending == 0) finish();
  };
  auto destroy_one = [=](const std::string& id, sandbox_actor actor) mutable {
    self->request(actor, self->state.settings.ready_timeout, destroy_atom::value)
        .then([=](done_atom) mutable { one_done(id); }, [=](caf::error&) mutable { one_done(id); });
  };
  // Persistent sandboxes are frozen first, so a restart loses nothing.
  for (auto& [id, record] : self->state.records) {
    if (!record.actor_alive) continue;
    ++*pending;
    const bool freeze_first = self->state.spaces && record.info.spec.persistent &&
                              record.info.state == SandboxState::ready &&
                              !self->state.pending_freezes.count(id);
    if (!freeze_first) {
      destroy_one(id, record.actor);
      continue;
    }
    start_freeze(self, id, "shutdown",
                 [=, id = id, actor = record.actor](caf::expected<SpaceInfo> frozen) mutable {
                   if (frozen)
                     log::info("sandbox frozen into a Space as hostd stops",
                               {{"sandbox", id}, {"space", frozen->space_id}});
                   else
                     log::warn("sandbox could not be frozen as hostd stops",
                               {{"sandbox", id}, {"error", error_message(frozen.error())}});
                   destroy_one(id, actor);
                 });
  }
  if (*pending == 0) finish();
  return promise;
}

registry_actor::behavior_type registry_behavior(self_pointer self, VmHost* vms,
                                                RegistrySettings settings) {
  self->state.vms = vms;
  self->state.settings = settings;
  self->state.pool_usage.assign(settings.pools.size(), 0);
  if (!settings.spaces_dir.empty()) self->state.spaces.emplace(settings.spaces_dir);
  if (settings.reaper)
    self->state.reaper = spawn_reaper(self->system(), caf::actor_cast<expiry_listener>(self),
                                      settings.reaper_settings);

  // Supervision: a sandbox actor that stops while its record says it is
  // alive failed (a bug, an exception): record it dead and kill its VM.
  self->set_down_handler([=](caf::down_msg& down) {
    for (auto& [id, record] : self->state.records) {
      if (record.actor.address() != down.source) continue;
      record.actor_alive = false;
      // A normal exit follows a destroy, whose own handler drops the record.
      if (!down.reason) return;
      if (record.info.state != SandboxState::dead) {
        record.info.state = SandboxState::dead;
        record.info.qemu_pid = 0;
        record.info.dead_reason =
            "the sandbox's actor stopped unexpectedly: " + self->system().render(down.reason);
        log::error("sandbox died", {{"sandbox", id}, {"reason", record.info.dead_reason}});
        self->state.vms->reclaim(id, {});
        if (self->state.reaper) self->send(self->state.reaper, state_atom::value, record.info);
      }
      return;
    }
  });

  return {
      [=](create_atom, std::string owner, SandboxSpec spec) {
        return create(self, std::move(owner), std::move(spec));
      },
      [=](create_atom, std::string owner, SandboxSpec spec, std::uint32_t max_concurrent) {
        return create_capped(self, std::move(owner), std::move(spec), max_concurrent);
      },
      [=](lookup_atom, const std::string& owner,
          const std::string& id) -> caf::result<SandboxInfo> {
        auto record = owned(self, owner, id);
        if (!record) return std::move(record.error());
        return (*record)->info;
      },
      [=](list_atom, const std::string& owner) -> SandboxInfoList {
        SandboxInfoList result;
        for (const auto& [id, record] : self->state.records)
          if (record.info.owner == owner) result.push_back(record.info);
        std::sort(result.begin(), result.end(), [](const auto& a, const auto& b) {
          return a.created_at_ms != b.created_at_ms ? a.created_at_ms < b.created_at_ms
                                                    : a.id < b.id;
        });
        return result;
      },
      [=](destroy_atom, const std::string& owner, const std::string& id) {
        return destroy(self, owner, id);
      },
      [=](begin_op_atom, const std::string& owner,
          const std::string& id) -> caf::result<std::uint64_t> {
        auto record = owned(self, owner, id);
        if (!record) return std::move(record.error());
        if (!(*record)->actor_alive)
          return make_error(ErrorKind::guest_died, "sandbox " + id +
                                                    " died: " + (*record)->info.dead_reason +
                                                    "; delete it and create a new one");
        if (!self->state.reaper) return self->delegate((*record)->actor, begin_op_atom::value);
        // Through here rather than delegated, so the reaper learns of the
        // operation only once it really began.
        auto promise = self->make_response_promise<std::uint64_t>();
        self->request((*record)->actor, self->state.settings.ready_timeout, begin_op_atom::value)
            .then(
                [=](std::uint64_t lease) mutable {
                  if (self->state.reaper)
                    self->send(self->state.reaper, begin_op_atom::value, id, lease);
                  promise.deliver(lease);
                },
                [=](caf::error& failure) mutable { promise.deliver(std::move(failure)); });
        return promise;
      },
      [=](end_op_atom, const std::string& owner, const std::string& id, std::uint64_t lease) {
        auto record = owned(self, owner, id);
        if (record && (*record)->actor_alive)
          self->send((*record)->actor, end_op_atom::value, lease);
        if (self->state.reaper) self->send(self->state.reaper, end_op_atom::value, id, lease);
      },
      [=](vm_exited_atom, const std::string& owner, const std::string& id,
          std::string how) -> caf::result<done_atom> {
        auto record = owned(self, owner, id);
        if (!record) return std::move(record.error());
        if (!(*record)->actor_alive) return done_atom::value;
        return self->delegate((*record)->actor, vm_exited_atom::value, std::move(how));
      },
      [=](fork_atom, const std::string& owner, const std::string& id, std::uint32_t n,
          std::uint32_t max_concurrent) { return fork(self, owner, id, n, max_concurrent); },
      [=](merge_atom, const std::string& owner, const std::string& parent,
          const std::string& winner) { return merge(self, owner, parent, winner); },
      [=](forked_atom, const std::string& base_id, const caf::error& error, std::int32_t) {
        forked(self, base_id, error);
      },
      [=](merged_atom, const std::string& parent, const caf::error& error, std::int32_t pid) {
        merged(self, parent, error, pid);
      },
      [=](freeze_atom, const std::string& owner, const std::string& id) {
        return freeze(self, owner, id);
      },
      [=](frozen_atom, const std::string& id, const caf::error& error, SpaceInfo& space) {
        frozen(self, id, error, std::move(space));
      },
      [=](resume_atom, const std::string& owner, const std::string& space_id, bool persistent,
          std::uint32_t max_concurrent) {
        return resume(self, owner, space_id, persistent, max_concurrent);
      },
      [=](space_opened_atom, const std::string& space_id, const caf::error& error) {
        space_opened(self, space_id, error);
      },
      [=](spaces_atom, const std::string& owner) -> SpaceInfoList {
        if (!self->state.spaces) return {};
        return self->state.spaces->list(owner);
      },
      [=](space_atom, const std::string& owner,
          const std::string& space_id) -> caf::result<SpaceInfo> {
        auto space = owned_space(self, owner, space_id);
        if (!space) return std::move(space.error());
        return std::move(*space);
      },
      [=](delete_space_atom, const std::string& owner, const std::string& space_id) {
        return delete_space(self, owner, space_id);
      },
      [=](capacity_atom) { return capacity(self); },
      [=](shutdown_atom) { return shutdown(self); },
      [=](state_atom, SandboxInfo& info) {
        auto found = self->state.records.find(info.id);
        if (found == self->state.records.end()) return;
        auto& record = found->second;
        if (info.state == SandboxState::dead && record.info.state != SandboxState::dead)
          log::warn("sandbox died", {{"sandbox", info.id}, {"reason", info.dead_reason}});
        if (self->state.reaper) self->send(self->state.reaper, state_atom::value, info);
        record.info = std::move(info);
        update_pool_usage(self);
      },
      [=](expire_atom, const std::string& id, const std::string& reason, bool lifetime) {
        expire(self, id, reason, lifetime);
      },
      [=](reap_atom) {
        if (self->state.reaper) self->send(self->state.reaper, reap_atom::value);
      },
  };
}

} // namespace

registry_actor spawn_registry(caf::actor_system& system, VmHost& vms, RegistrySettings settings) {
  return system.spawn(registry_behavior, &vms, settings);
}

std::string new_sandbox_id() {
  return random_id("sb-", 12);
}

} // namespace vesicle
