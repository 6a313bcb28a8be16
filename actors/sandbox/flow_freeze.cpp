// The freeze flow:
//
//   admit    Spaces are on; the sandbox is ready (the API's freeze)
//   hold     nothing may run while its VM is saved     undo: release the hold
//   save     VmHost writes the Space and ends the VM   undo (VmHost's own):
//            no Space is left, the VM runs on as before when it can
//   hand over  the record and the actor learn "frozen, into Space sp-…"
//   answer   the Space
#include "actors/sandbox/flows.hpp"

#include <algorithm>
#include <chrono>

#include <caf/send.hpp>

#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/vm_step.hpp"

namespace vesicle {

void freeze_flow(registry_pointer self, const std::string& id, std::string reason,
                 FreezeHandler on_done) {
  // Admit.
  auto found = self->state.records.find(id);
  if (found == self->state.records.end() || !found->second.actor_alive) {
    on_done(make_error(ErrorKind::not_found, "no running sandbox " + id));
    return;
  }
  if (!self->state.spaces) {
    on_done(make_error(ErrorKind::conflict,
                       "this hostd keeps no Spaces (it runs without a state directory for them)"));
    return;
  }
  const auto& record = found->second;
  SpaceInfo space;
  space.space_id = new_space_id();
  space.owner = record.info.owner;
  space.sandbox_id = id;
  space.spec = record.info.spec;
  space.spec.secrets = {}; // a Space keeps the hosts, never the values
  space.created_at_ms = record.info.created_at_ms;
  // Its lifetime so far, carried to the sandbox that resumes it.
  space.lived_ms = record.info.lived_before_ms +
                   std::max<std::int64_t>(0, unix_now_ms() - record.info.created_at_ms);
  space.reason = std::move(reason);

  flow_started(self);
  reaper_op(self, id, ReaperLease::freeze, true);
  auto answer = [=](caf::expected<SpaceInfo> outcome) {
    reaper_op(self, id, ReaperLease::freeze, false);
    on_done(std::move(outcome));
    flow_ended(self);
  };

  // Hold: refused while an exec, a fork, a merge or another freeze runs.
  self->request(record.actor, std::chrono::seconds(10), hold_atom::value, true)
      .then(
          [=](done_atom) {
            // Save.
            VmHost* vms = self->state.vms;
            vm_step<SpaceInfo>(self,
                               [vms, id, space](StepDone<SpaceInfo> done) {
                                 vms->freeze(id, space, std::move(done));
                               })
                .then(
                    [=](SpaceInfo& written) {
                      // Hand over.
                      auto frozen = self->state.records.find(id);
                      if (frozen != self->state.records.end()) {
                        auto& info = frozen->second.info;
                        info.state = SandboxState::frozen;
                        info.space_id = written.space_id;
                        info.qemu_pid = 0;
                        if (frozen->second.actor_alive)
                          self->send(frozen->second.actor, frozen_atom::value, written.space_id);
                        update_pool_usage(self);
                      }
                      answer(std::move(written));
                    },
                    [=](caf::error& failure) {
                      // The sandbox runs on (VmHost resumed it), or its actor
                      // heard that it died.
                      release_hold(self, id);
                      answer(std::move(failure));
                    });
          },
          [=](caf::error& refused) { answer(std::move(refused)); });
}

caf::result<SpaceInfo> freeze_request(registry_pointer self, const std::string& owner,
                                      const std::string& id) {
  if (self->state.shutting_down) return shutting_down();
  auto record = ready_record(self, owner, id);
  if (!record) return std::move(record.error());
  auto promise = self->make_response_promise<SpaceInfo>();
  freeze_flow(self, id, "freeze",
              [promise](caf::expected<SpaceInfo> frozen) mutable { deliver(promise, frozen); });
  return promise;
}

} // namespace vesicle
