// The create flow:
//
//   admit    the key's cap and the host's capacity, else quota / capacity
//   reserve  a booting placeholder holds the slot     undo: drop it
//   take     a waiting VM from the matching pool (if a pool matches; an
//            empty answer or a silent pool: restore from its template)
//   launch   spawn the sandbox actor with its plan    undo: take it down
//   answer   once it is ready, or why it never got there
#include "actors/sandbox/flows.hpp"

#include <algorithm>
#include <chrono>

#include "actors/sandbox/registry_state.hpp"

namespace vesicle {

namespace {

// The pool whose template, vcpus and memory match the spec, or -1.
int pool_for(registry_pointer self, const SandboxSpec& spec) {
  const auto& pools = self->state.settings.pools;
  for (std::size_t i = 0; i < pools.size(); ++i) {
    const auto& t = pools[i].spec;
    if (t.name == spec.template_name && t.vcpus == spec.vcpus && t.memory_mib == spec.memory_mib)
      return static_cast<int>(i);
  }
  return -1;
}

} // namespace

caf::result<SandboxInfo> create_flow(registry_pointer self, std::string owner, SandboxSpec spec,
                                     std::uint32_t max_concurrent) {
  // Admit.
  if (self->state.shutting_down) return shutting_down();
  // A saved template gives its own size; the disk is at least the one it
  // was saved with (a disk never shrinks).
  const TemplateInfo* saved = nullptr;
  if (pool_for(self, spec) < 0 && spec.template_name != "default") {
    saved = saved_template_for(self, owner, spec.template_name);
    if (!saved)
      return make_error(ErrorKind::not_found, "template: no template \"" + spec.template_name +
                                                  "\" for this key; GET /v1/templates lists "
                                                  "the ones you can use");
    spec.vcpus = saved->vcpus;
    spec.memory_mib = saved->memory_mib;
    spec.disk_mib = std::max(spec.disk_mib, saved->disk_mib);
  }
  if (auto refused = admit(self, owner, 1, max_concurrent, spec, "creating a sandbox",
                           "delete one you no longer need (DELETE /v1/sandboxes/{id})"))
    return refused;

  SandboxInfo info;
  info.id = new_sandbox_id();
  info.owner = std::move(owner);
  info.spec = std::move(spec);
  info.created_at_ms = unix_now_ms();
  auto promise = self->make_response_promise<SandboxInfo>();
  flow_started(self);
  auto answer = [self, promise](caf::expected<SandboxInfo> outcome) mutable {
    deliver(promise, std::move(outcome));
    flow_ended(self);
  };

  // Reserve: the placeholder counts as booting until the sandbox replaces
  // it (launch_sandbox), or is dropped if the launch is refused.
  self->state.records.emplace(info.id, Record{info, sandbox_actor{}, false, -1, {}});

  if (saved) {
    // Its pool's waiting VM, or a restore on demand.
    const auto template_id = saved->template_id;
    auto found = self->state.saved_templates.find(template_id);
    self->request(found->second.pool, std::chrono::seconds(5), take_atom::value)
        .then(
            [=](std::string& pool_vm_id) {
              launch_sandbox(self, info, -1, launch::FromSavedTemplate{template_id, pool_vm_id},
                             answer);
            },
            [=](caf::error&) {
              launch_sandbox(self, info, -1, launch::FromSavedTemplate{template_id, ""}, answer);
            });
    return promise;
  }
  const int pool = pool_for(self, info.spec);
  if (pool < 0) {
    launch_sandbox(self, std::move(info), pool, launch::ColdBoot{}, answer);
    return promise;
  }
  // Take a waiting VM; if none waits (an empty id) or the pool does not
  // answer, restore from its template.
  const auto& entry = self->state.settings.pools[static_cast<std::size_t>(pool)];
  const auto key = entry.spec.key;
  self->request(entry.actor, std::chrono::seconds(5), take_atom::value)
      .then(
          [=](std::string& pool_vm_id) {
            LaunchPlan plan = launch::FromTemplate{key};
            if (!pool_vm_id.empty()) plan = launch::FromPoolVm{std::move(pool_vm_id), key};
            launch_sandbox(self, info, pool, std::move(plan), answer);
          },
          [=](caf::error&) {
            launch_sandbox(self, info, pool, launch::FromTemplate{key}, answer);
          });
  return promise;
}

} // namespace vesicle
