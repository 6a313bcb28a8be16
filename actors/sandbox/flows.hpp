// The registry's operations, one flow per file. Each reads top to bottom:
// admit -> reserve -> launch or change the VMs -> hand over -> answer, with
// the rollback of each step beside it. A flow keeps what it is in the
// middle of in its own continuations; the registry (registry.cpp) only
// admits, routes and supervises.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "actors/sandbox/registry_state.hpp"

namespace vesicle {

// flow_create.cpp: a new sandbox from a pool VM, a template or a cold boot.
caf::result<SandboxInfo> create_flow(registry_pointer self, std::string owner, SandboxSpec spec,
                                     std::uint32_t max_concurrent);

// flow_destroy.cpp: DELETE; the reaper's verdict; hostd's shutdown.
caf::result<done_atom> destroy_flow(registry_pointer self, const std::string& owner,
                                    const std::string& id);
void expire_flow(registry_pointer self, const std::string& id, const std::string& reason,
                 bool lifetime);
caf::result<done_atom> shutdown_flow(registry_pointer self);

// flow_fork.cpp: n children from a sandbox's state at this moment.
caf::result<SandboxInfoList> fork_flow(registry_pointer self, const std::string& owner,
                                       const std::string& id, std::uint32_t n,
                                       std::uint32_t max_concurrent);

// flow_merge.cpp: a descendant's VM becomes its ancestor's.
caf::result<SandboxInfo> merge_flow(registry_pointer self, const std::string& owner,
                                    const std::string& parent_id, const std::string& winner_id);

// flow_freeze.cpp: a sandbox's VM saved into a Space. freeze_flow answers
// `on_done` (the API, the reaper's log, a shutdown).
using FreezeHandler = std::function<void(caf::expected<SpaceInfo>)>;
void freeze_flow(registry_pointer self, const std::string& id, std::string reason,
                 FreezeHandler on_done);
caf::result<SpaceInfo> freeze_request(registry_pointer self, const std::string& owner,
                                      const std::string& id);

// flow_resume.cpp: a new sandbox running a Space's VM; the Space's files.
caf::result<SandboxInfo> resume_flow(registry_pointer self, const std::string& owner,
                                     const std::string& space_id, bool persistent,
                                     std::uint32_t max_concurrent, const SecretValues& secrets);
caf::expected<SpaceInfo> owned_space(registry_pointer self, const std::string& owner,
                                     const std::string& space_id);
caf::result<done_atom> delete_space(registry_pointer self, const std::string& owner,
                                    const std::string& space_id);

// flow_template.cpp: saved templates. load_templates runs once, at the
// registry's start (a pool for each one on disk); saved_template_for is the
// template a create's spec names (its own before a global one), or null.
void load_templates(registry_pointer self);
const TemplateInfo* saved_template_for(registry_pointer self, const std::string& owner,
                                       const std::string& name);
caf::result<TemplateInfo> save_template_flow(registry_pointer self, const std::string& owner,
                                             const std::string& id, TemplateInfo request);
TemplateInfoList visible_templates(registry_pointer self, const std::string& owner);
caf::result<TemplateInfo> template_info(registry_pointer self, const std::string& owner,
                                        const std::string& name);
caf::result<done_atom> delete_template(registry_pointer self, const std::string& owner,
                                       const std::string& name);
// Stops every saved template's pool (hostd's shutdown).
void stop_template_pools(registry_pointer self);

// Delivers a flow's outcome to its promise.
template <class T> void deliver(caf::typed_response_promise<T>& promise, caf::expected<T> outcome) {
  if (outcome)
    promise.deliver(std::move(*outcome));
  else
    promise.deliver(std::move(outcome.error()));
}

} // namespace vesicle
