// Saved templates: the save flow, the catalog (by id, each with its pool)
// and its lookups.
//
// The save flow:
//
//   admit    templates are kept here; the sandbox is ready; the name is
//            free among the owner's templates
//   hold     nothing may run while its VM is saved    undo: release the hold
//   save     VmHost writes the template while the sandbox runs on (undo,
//            VmHost's own: no template is left)
//   hand over  the catalog gets the template and its pool
//   answer   the template
#include <algorithm>
#include <chrono>
#include <limits>

#include <caf/send.hpp>

#include "actors/sandbox/flows.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/vm_step.hpp"
#include "common/log.hpp"

namespace vesicle {

namespace {

// Waiting pool VMs past this would only hold memory no create needs.
constexpr std::uint32_t kMaxTemplatePoolSize = 8;

void start_pool(registry_pointer self, const TemplateInfo& info) {
  TemplateSpec spec;
  spec.name = info.name;
  spec.vcpus = info.vcpus;
  spec.memory_mib = info.memory_mib;
  spec.min_ready = std::min(info.pool_size, kMaxTemplatePoolSize);
  // No cap on the sandboxes made from it beyond max_sandboxes: the pool
  // counts every take as in use and hears no usage (as a configured pool
  // does), so a max would end its refills after that many creates.
  spec.max = std::numeric_limits<std::uint32_t>::max();
  spec.key = info.template_id;
  spec.saved_dir = self->state.template_store->template_dir(info.template_id);
  auto pool = spawn_pool(self->system(), std::move(spec), *self->state.vms);
  self->state.saved_templates[info.template_id] = RegistryState::SavedTemplate{info, pool};
}

caf::error no_template(const std::string& name) {
  return make_error(ErrorKind::not_found,
                    "no template \"" + name + "\" for this key; GET /v1/templates lists yours");
}

} // namespace

void load_templates(registry_pointer self) {
  if (self->state.settings.saved_templates_dir.empty()) return;
  self->state.template_store.emplace(self->state.settings.saved_templates_dir);
  const auto& fingerprint = self->state.vms->images_fingerprint();
  for (auto& info : self->state.template_store->load()) {
    if (info.images_fingerprint != fingerprint) {
      // Its memory holds another kernel: it cannot restore here. Kept, so
      // a host back on those images still has it.
      log::warn("skipping a template saved on other guest images",
                {{"template", info.template_id}, {"name", info.name}, {"key", info.owner}});
      continue;
    }
    start_pool(self, info);
  }
}

const TemplateInfo* saved_template_for(registry_pointer self, const std::string& owner,
                                       const std::string& name) {
  const TemplateInfo* global = nullptr;
  for (const auto& [id, saved] : self->state.saved_templates) {
    if (saved.info.name != name) continue;
    if (saved.info.owner == owner) return &saved.info;
    if (saved.info.global) global = &saved.info;
  }
  return global;
}

caf::result<TemplateInfo> save_template_flow(registry_pointer self, const std::string& owner,
                                             const std::string& id, TemplateInfo request) {
  // Admit.
  if (self->state.shutting_down) return shutting_down();
  if (!self->state.template_store)
    return make_error(ErrorKind::conflict, "this hostd keeps no saved templates");
  if (auto named = check_template_name(request.name); !named) return to_caf_error(named.error());
  for (const auto& pool : self->state.settings.pools)
    if (pool.spec.name == request.name)
      return make_error(ErrorKind::conflict, "name: \"" + request.name +
                                                 "\" is a template this host configures; "
                                                 "choose another name");
  for (const auto& [tid, saved] : self->state.saved_templates)
    if (saved.info.name == request.name &&
        (saved.info.owner == owner || (request.global && saved.info.global)))
      return make_error(ErrorKind::conflict,
                        "a template named \"" + request.name +
                            "\" exists; delete it first (DELETE /v1/templates/" + request.name +
                            ") or choose another name");
  auto record = ready_record(self, owner, id);
  if (!record) return std::move(record.error());

  TemplateInfo info = std::move(request);
  info.template_id = new_template_id();
  info.owner = owner;
  info.from_sandbox = id;
  info.disk_mib = (*record)->info.spec.disk_mib;
  auto promise = self->make_response_promise<TemplateInfo>();
  flow_started(self);
  reaper_op(self, id, ReaperLease::freeze, true);
  auto answer = [=](caf::expected<TemplateInfo> outcome) mutable {
    reaper_op(self, id, ReaperLease::freeze, false);
    deliver(promise, std::move(outcome));
    flow_ended(self);
  };

  // Hold: refused while an exec, a fork, a merge or a freeze runs.
  self->request((*record)->actor, std::chrono::seconds(10), hold_atom::value, true)
      .then(
          [=](done_atom) mutable {
            // Save.
            VmHost* vms = self->state.vms;
            vm_step<TemplateInfo>(self,
                                  [vms, id, info](StepDone<TemplateInfo> done) {
                                    vms->save_template(id, info, std::move(done));
                                  })
                .then(
                    [=](TemplateInfo& saved) mutable {
                      // Hand over.
                      start_pool(self, saved);
                      release_hold(self, id);
                      answer(std::move(saved));
                    },
                    [=](caf::error& failure) mutable {
                      release_hold(self, id);
                      answer(std::move(failure));
                    });
          },
          [=](caf::error& refused) mutable { answer(std::move(refused)); });
  return promise;
}

TemplateInfoList visible_templates(registry_pointer self, const std::string& owner) {
  TemplateInfoList out;
  for (const auto& [id, saved] : self->state.saved_templates)
    if (template_visible(saved.info, owner)) out.push_back(saved.info);
  std::sort(out.begin(), out.end(), [](const TemplateInfo& a, const TemplateInfo& b) {
    return a.created_at_ms != b.created_at_ms ? a.created_at_ms < b.created_at_ms
                                              : a.template_id < b.template_id;
  });
  return out;
}

caf::result<TemplateInfo> template_info(registry_pointer self, const std::string& owner,
                                        const std::string& name) {
  const auto* info = saved_template_for(self, owner, name);
  if (!info) return no_template(name);
  auto found = self->state.saved_templates.find(info->template_id);
  auto promise = self->make_response_promise<TemplateInfo>();
  TemplateInfo answer = *info;
  // With its pool's waiting VMs (0 if the pool does not answer).
  self->request(found->second.pool, std::chrono::seconds(5), pool_info_atom::value)
      .then(
          [=](PoolInfo& pool) mutable {
            answer.pool_ready = pool.ready;
            promise.deliver(std::move(answer));
          },
          [=](caf::error&) mutable { promise.deliver(std::move(answer)); });
  return promise;
}

caf::result<done_atom> delete_template(registry_pointer self, const std::string& owner,
                                       const std::string& name) {
  RegistryState::SavedTemplate* found = nullptr;
  for (auto& [id, saved] : self->state.saved_templates)
    if (saved.info.name == name && saved.info.owner == owner) found = &saved;
  if (!found) {
    const auto* visible = saved_template_for(self, owner, name);
    if (visible)
      return make_error(ErrorKind::not_found, "template \"" + name +
                                                  "\" is global and not this key's; only the "
                                                  "key that saved it can delete it");
    return no_template(name);
  }
  // Sandboxes started from it have disks that stand on its disk.
  for (const auto& [id, record] : self->state.records)
    if (holds_vm(record.info) && record.info.spec.template_name == name &&
        (record.info.owner == owner || found->info.global))
      return make_error(ErrorKind::conflict,
                        "sandbox " + id + " runs from template \"" + name +
                            "\" (its disk stands on the template's); delete the sandboxes "
                            "made from it first");
  const auto template_id = found->info.template_id;
  if (auto removed = self->state.template_store->remove(template_id); !removed)
    return to_caf_error(removed.error());
  caf::anon_send(found->pool, shutdown_atom::value);
  self->state.vms->forget_template(template_id);
  self->state.saved_templates.erase(template_id);
  log::info("template deleted", {{"template", template_id}, {"name", name}, {"key", owner}});
  return done_atom::value;
}

void stop_template_pools(registry_pointer self) {
  for (auto& [id, saved] : self->state.saved_templates)
    caf::anon_send(saved.pool, shutdown_atom::value);
}

} // namespace vesicle
