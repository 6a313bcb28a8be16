// The registry actor: admits and routes. Each operation's flow lives in its
// own file (flows.hpp); what is here is the lookups, the supervision of the
// sandbox actors and the state they report.
#include "actors/sandbox/registry.hpp"

#include <algorithm>
#include <limits>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "actors/sandbox/flows.hpp"
#include "actors/sandbox/registry_state.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"

namespace vesicle {

namespace {

// A create without a key's cap (the embedding API, tests).
constexpr std::uint32_t kNoCap = std::numeric_limits<std::uint32_t>::max();

registry_actor::behavior_type registry_behavior(registry_pointer self, VmHost* vms,
                                                RegistrySettings settings) {
  self->state.vms = vms;
  self->state.settings = settings;
  self->state.pool_usage.assign(settings.pools.size(), 0);
  if (!settings.spaces_dir.empty()) self->state.spaces.emplace(settings.spaces_dir);
  load_templates(self);
  if (settings.reaper) {
    auto reaper_settings = settings.reaper_settings;
    if (!reaper_settings.activity)
      reaper_settings.activity = [gates = vms->op_gates()](const std::string& id) {
        return gates->activity(id);
      };
    self->state.reaper = spawn_reaper(self->system(), caf::actor_cast<expiry_listener>(self),
                                      std::move(reaper_settings));
  }

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
        return create_flow(self, std::move(owner), std::move(spec), kNoCap);
      },
      [=](create_atom, std::string owner, SandboxSpec spec, std::uint32_t max_concurrent) {
        return create_flow(self, std::move(owner), std::move(spec), max_concurrent);
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
        return destroy_flow(self, owner, id);
      },
      [=](begin_op_atom, const std::string& owner,
          const std::string& id) -> caf::result<std::uint64_t> {
        auto record = owned(self, owner, id);
        if (!record) return std::move(record.error());
        if (!(*record)->actor_alive)
          return make_error(ErrorKind::guest_died, "sandbox " + id +
                                                       " died: " + (*record)->info.dead_reason +
                                                       "; delete it and create a new one");
        // The reaper reads the operation at the sandbox's gate (op_gate.hpp).
        return self->delegate((*record)->actor, begin_op_atom::value);
      },
      [=](end_op_atom, const std::string& owner, const std::string& id, std::uint64_t lease) {
        auto record = owned(self, owner, id);
        if (record && (*record)->actor_alive)
          self->send((*record)->actor, end_op_atom::value, lease);
      },
      [=](vm_exited_atom, const std::string& owner, const std::string& id,
          std::string how) -> caf::result<done_atom> {
        auto record = owned(self, owner, id);
        if (!record) return std::move(record.error());
        if (!(*record)->actor_alive) return done_atom::value;
        return self->delegate((*record)->actor, vm_exited_atom::value, std::move(how));
      },
      [=](fork_atom, const std::string& owner, const std::string& id, std::uint32_t n,
          std::uint32_t max_concurrent) { return fork_flow(self, owner, id, n, max_concurrent); },
      [=](merge_atom, const std::string& owner, const std::string& parent,
          const std::string& winner) { return merge_flow(self, owner, parent, winner); },
      [=](freeze_atom, const std::string& owner, const std::string& id) {
        return freeze_request(self, owner, id);
      },
      [=](resume_atom, const std::string& owner, const std::string& space_id, bool persistent,
          std::uint32_t max_concurrent, const SecretValues& secrets) {
        return resume_flow(self, owner, space_id, persistent, max_concurrent, secrets);
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
      [=](save_template_atom, const std::string& owner, const std::string& id,
          TemplateInfo& request) {
        return save_template_flow(self, owner, id, std::move(request));
      },
      [=](templates_atom, const std::string& owner) { return visible_templates(self, owner); },
      [=](template_info_atom, const std::string& owner, const std::string& name) {
        return template_info(self, owner, name);
      },
      [=](delete_template_atom, const std::string& owner, const std::string& name) {
        return delete_template(self, owner, name);
      },
      [=](capacity_atom) { return capacity(self); },
      [=](shutdown_atom) { return shutdown_flow(self); },
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
        expire_flow(self, id, reason, lifetime);
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
  return node_scoped_id("sb-");
}

} // namespace vesicle
