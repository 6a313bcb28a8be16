#include "actors/sandbox/registry_state.hpp"

#include <chrono>

#include <caf/send.hpp>

#include "actors/sandbox/host_room.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "common/log.hpp"

namespace vesicle {

caf::error shutting_down() {
  return make_error(ErrorKind::unavailable, "hostd is shutting down; retry after it restarts");
}

CapacityInfo capacity(registry_pointer self) {
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

bool holds_vm(const SandboxInfo& info) {
  return info.state != SandboxState::dead && info.state != SandboxState::frozen;
}

caf::expected<Record*> owned(registry_pointer self, const std::string& owner,
                             const std::string& id) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end() || found->second.info.owner != owner)
    return make_error(ErrorKind::not_found,
                      "no sandbox " + id + " for this key; list yours with GET /v1/sandboxes");
  return &found->second;
}

caf::expected<Record*> ready_record(registry_pointer self, const std::string& owner,
                                    const std::string& id) {
  auto record = owned(self, owner, id);
  if (!record) return record;
  const auto& info = (*record)->info;
  if (!(*record)->actor_alive || info.state == SandboxState::dead)
    return make_error(ErrorKind::guest_died, "sandbox " + id + " died: " + info.dead_reason +
                                                 "; delete it and create a new one");
  if (info.state == SandboxState::frozen)
    return make_error(ErrorKind::conflict, "sandbox " + id + " is frozen into Space " +
                                               info.space_id + "; resume it with POST /v1/spaces/" +
                                               info.space_id + "/resume");
  if (info.state != SandboxState::ready)
    return make_error(ErrorKind::conflict,
                      "sandbox " + id + " is not ready (it is " +
                          (info.state == SandboxState::booting ? "booting" : "being deleted") +
                          "); retry once it is ready");
  return record;
}

caf::error admit(registry_pointer self, const std::string& owner, std::uint32_t more,
                 std::uint32_t max_concurrent, const SandboxSpec& spec, const std::string& what,
                 const std::string& advice) {
  std::uint32_t live = 0;
  for (const auto& [id, record] : self->state.records)
    if (record.info.owner == owner && holds_vm(record.info)) ++live;
  if (live + more > max_concurrent)
    return make_error(ErrorKind::quota, "this key may run " + std::to_string(max_concurrent) +
                                            " sandboxes at once (its tier's cap) and runs " +
                                            std::to_string(live) + "; " + what + " needs " +
                                            std::to_string(more) + " more; " + advice +
                                            ", or use a key of a higher tier");
  auto room = capacity(self);
  if (room.available() < more)
    return make_error(ErrorKind::capacity,
                      what + " needs " + std::to_string(more) + " free sandbox slot" +
                          (more == 1 ? "" : "s") + "; this host has " +
                          std::to_string(room.available()) + " of " +
                          std::to_string(room.max_sandboxes) + "; retry later or " + advice);
  const auto& host_room = self->state.settings.host_room;
  if (!host_room) return {};
  auto figures = read_host_figures(*host_room);
  if (!figures) {
    // Admitting blind could let the OOM killer choose; refusing says why.
    return make_error(ErrorKind::unavailable, what + ": cannot read this host's free memory and " +
                                                  "disk (" + figures.error().message() +
                                                  "); retry later");
  }
  // Every running sandbox may still grow to its whole RAM (plus its VMM)
  // and disk. What it uses now is already out of MemAvailable and the free
  // disk; its cgroup says how much memory that is, its overlay how much
  // disk, and only the rest is still promised. Without a figure (no
  // cgroups, a leaf not found, a QEMU not started yet or just gone) the
  // whole size is counted (strict).
  HostCommitments committed;
  for (const auto& [id, record] : self->state.records) {
    if (!holds_vm(record.info)) continue;
    const auto memory = memory_promised(*host_room, id, record.info.spec.memory_mib);
    const auto disk = disk_promised(*host_room, record.info.qemu_pid, record.info.spec.disk_mib);
    committed.memory_mib += memory.still_mib;
    committed.memory_held_mib += memory.held_mib;
    committed.disk_mib += disk.still_mib;
    committed.disk_held_mib += disk.held_mib;
  }
  RoomRequest request{more, spec.memory_mib, spec.disk_mib};
  if (auto refused = refuse_room(*host_room, *figures, committed, request, what))
    return make_error(ErrorKind::capacity, *refused);
  return {};
}

void update_pool_usage(registry_pointer self) {
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

void flow_started(registry_pointer self) {
  ++self->state.flows_running;
}

void flow_ended(registry_pointer self) {
  if (self->state.flows_running > 0) --self->state.flows_running;
  if (self->state.flows_running == 0 && self->state.on_flows_done) {
    auto done = std::move(self->state.on_flows_done);
    self->state.on_flows_done = nullptr;
    done();
  }
}

void launch_sandbox(registry_pointer self, SandboxInfo info, int pool, LaunchPlan plan,
                    ReadyHandler on_ready, std::vector<std::string> ancestors) {
  if (self->state.shutting_down) {
    // Rollback of the flow's reservation: its placeholder, if it has one.
    if (auto held = self->state.records.find(info.id);
        held != self->state.records.end() && !held->second.actor)
      self->state.records.erase(held);
    if (auto* pooled = std::get_if<launch::FromPoolVm>(&plan))
      self->state.vms->discard(pooled->pool_vm_id);
    if (auto* saved = std::get_if<launch::FromSavedTemplate>(&plan);
        saved && !saved->pool_vm_id.empty())
      self->state.vms->discard(saved->pool_vm_id);
    on_ready(shutting_down());
    return;
  }
  auto sandbox = spawn_sandbox(self->system(), info, *self->state.vms,
                               caf::actor_cast<state_listener>(self), plan);
  self->monitor(sandbox);
  auto id = info.id;
  self->state.records.insert_or_assign(
      id, Record{std::move(info), sandbox, true, pool, std::move(ancestors)});
  update_pool_usage(self);
  self->request(sandbox, self->state.settings.ready_timeout, await_ready_atom::value)
      .then([=](SandboxInfo& ready) { on_ready(std::move(ready)); },
            [=](caf::error& failure) {
              log::warn("sandbox did not become ready",
                        {{"sandbox", id}, {"error", self->system().render(failure)}});
              on_ready(caf::expected<SandboxInfo>(failure));
              // Rollback: take down what is left; its record holds the slot
              // until its VM is really gone.
              take_down(self, id);
            });
}

void take_down(registry_pointer self, const std::string& id, std::function<void()> then) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end()) {
    if (then) then();
    return;
  }
  auto forget = [=] {
    self->state.vms->reclaim(id, {});
    self->state.records.erase(id);
    update_pool_usage(self);
    if (then) then();
  };
  if (!found->second.actor_alive) return forget();
  self->request(found->second.actor, self->state.settings.ready_timeout, destroy_atom::value)
      .then([=](done_atom) { forget(); }, [=](caf::error&) { forget(); });
}

void reaper_op(registry_pointer self, const std::string& id, ReaperLease lease, bool begun) {
  if (!self->state.reaper) return;
  const auto number = static_cast<std::uint64_t>(lease);
  if (begun)
    self->send(self->state.reaper, begin_op_atom::value, id, number);
  else
    self->send(self->state.reaper, end_op_atom::value, id, number);
}

void release_hold(registry_pointer self, const std::string& id) {
  auto found = self->state.records.find(id);
  if (found != self->state.records.end() && found->second.actor_alive)
    caf::anon_send(found->second.actor, hold_atom::value, false);
}

} // namespace vesicle
