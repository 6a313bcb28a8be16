// The resume flow:
//
//   admit    the Space is the key's and readable; the key's cap and the
//            host's capacity
//   reserve  claim the Space (it resumes once)         undo: release the claim
//            and a booting placeholder holds the slot  undo: drop it
//   check    VmHost reads the Space's snapshot and checks sizes, checksums,
//            images and network                       undo: forget it
//   launch   a sandbox from the Space                  undo: take it down
//   answer   the new sandbox (VmHost removed the Space once its VM runs),
//            or why not; a Space that fails its checks is kept
//
// And the Space's other requests: one Space, deleting one.
#include "actors/sandbox/flows.hpp"

#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/vm_step.hpp"
#include "common/log.hpp"

namespace vesicle {

caf::expected<SpaceInfo> owned_space(registry_pointer self, const std::string& owner,
                                     const std::string& space_id) {
  if (!self->state.spaces)
    return make_error(ErrorKind::not_found,
                      "no Space " + space_id + ": this hostd keeps no Spaces");
  auto space = self->state.spaces->find(owner, space_id);
  if (space) return std::move(space.value());
  if (space.error().kind == ErrorKind::not_found) return to_caf_error(space.error());
  return make_error(ErrorKind::corrupted, "Space " + space_id +
                                              " cannot be read: " + space.error().message() +
                                              "; it is kept for inspection (DELETE /v1/spaces/" +
                                              space_id + " removes it)");
}

namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names)
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::string secrets_mismatch(const SpaceInfo& space, const SecretValues& given) {
  const auto& kept = space.spec.secret_hosts;
  if (kept.empty())
    return "secrets: Space " + space.space_id +
           " was frozen from a sandbox without secrets; resume it without them";
  std::string text = "secrets: Space " + space.space_id +
                     " was frozen from a sandbox with "
                     "secrets for " +
                     joined(kept) +
                     "; a Space keeps only those names, so "
                     "resume it with secrets for exactly them";
  if (!given.empty()) text += " (given: " + joined(given.hosts()) + ")";
  return text;
}

} // namespace

caf::result<SandboxInfo> resume_flow(registry_pointer self, const std::string& owner,
                                     const std::string& space_id, bool persistent,
                                     std::uint32_t max_concurrent, const SecretValues& secrets) {
  // Admit.
  if (self->state.shutting_down) return shutting_down();
  auto space = owned_space(self, owner, space_id);
  if (!space) return std::move(space.error());
  // The lifetime counts every run: a Space that has used it all stays
  // frozen.
  if (const auto max_ms = std::int64_t{space->spec.max_lifetime_s} * 1000;
      max_ms > 0 && space->lived_ms >= max_ms)
    return make_error(ErrorKind::quota,
                      "Space " + space_id + " has run for its whole lifetime of " +
                          std::to_string(space->spec.max_lifetime_s) +
                          " s (max_lifetime_s, counted across freezes); it cannot run again. "
                          "DELETE /v1/spaces/" +
                          space_id + " removes it");
  // A Space keeps only the hosts its sandbox held secrets for: the caller
  // gives the values again, for exactly those hosts.
  if (secrets.hosts() != space->spec.secret_hosts)
    return make_error(ErrorKind::invalid_argument, secrets_mismatch(*space, secrets));
  if (self->state.spaces->claimed(space_id))
    return make_error(ErrorKind::conflict,
                      "Space " + space_id + " is being resumed right now; a Space resumes once");
  if (auto refused =
          admit(self, owner, 1, max_concurrent, space->spec, "resuming Space " + space_id,
                "delete a sandbox you no longer need (the Space is kept)"))
    return refused;

  // Reserve.
  self->state.spaces->claim(space_id);
  SandboxInfo info;
  info.id = new_sandbox_id();
  info.owner = owner;
  info.spec = space->spec;
  info.spec.persistent = persistent;
  info.spec.secrets = secrets;
  info.created_at_ms = unix_now_ms();
  info.source = "space";
  info.resumed_from = space_id;
  info.lived_before_ms = space->lived_ms;
  self->state.records.emplace(info.id, Record{info, sandbox_actor{}, false, -1, {}});

  auto promise = self->make_response_promise<SandboxInfo>();
  flow_started(self);
  auto answer = [=](caf::expected<SandboxInfo> outcome) mutable {
    if (self->state.spaces) self->state.spaces->release_claim(space_id);
    deliver(promise, std::move(outcome));
    flow_ended(self);
  };
  auto unreserve = [=] {
    self->state.records.erase(info.id);
    self->state.vms->forget_space(space_id);
  };

  // Check.
  VmHost* vms = self->state.vms;
  vm_step<void>(self, [vms, opened = std::move(space.value())](
                          StepDone<void> done) { vms->open_space(opened, std::move(done)); })
      .then(
          [=](done_atom) mutable {
            if (self->state.shutting_down) {
              unreserve();
              return answer(shutting_down());
            }
            // Launch (it replaces the placeholder).
            launch_sandbox(self, info, -1, launch::FromSpace{space_id}, answer);
          },
          [=](caf::error& failure) mutable {
            unreserve();
            auto why = to_error(failure);
            answer(make_error(why.kind,
                              "Space " + space_id + " cannot be resumed: " + why.message() +
                                  "; it is kept as it is for inspection (DELETE /v1/spaces/" +
                                  space_id + " removes it)"));
          });
  return promise;
}

caf::result<done_atom> delete_space(registry_pointer self, const std::string& owner,
                                    const std::string& space_id) {
  if (self->state.spaces && self->state.spaces->claimed(space_id))
    return make_error(ErrorKind::conflict, "Space " + space_id + " is being resumed right now");
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

} // namespace vesicle
