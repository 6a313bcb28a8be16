// The merge flow (merge_into): the VM of a descendant (the winner) becomes
// its ancestor's (the parent's); the winner's id is gone and the parent's
// old VM destroyed.
//
//   admit    both are the key's and ready; the winner descends from the
//            parent (through any number of forks)
//   hold     the parent                           undo: release its hold
//   hold     the winner                           undo: release its hold
//   swap     VmHost moves the winner's VM under the parent's name (hostname,
//            machine-id) and destroys the parent's old VM; on failure both
//            are unchanged
//   hand over  the winner's actor stops without touching the VM, its record
//            goes; the parent's actor hears the new pid and is let go
//   answer   the parent, now running the winner's VM
#include "actors/sandbox/flows.hpp"

#include <algorithm>
#include <chrono>

#include <caf/send.hpp>

#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/vm_step.hpp"

namespace vesicle {

namespace {

// The winner's id ends here: its actor stops without reclaiming the VM
// (now the parent's), the reaper forgets it, its record goes.
void retire_winner(registry_pointer self, const std::string& winner_id) {
  auto winner = self->state.records.find(winner_id);
  if (winner == self->state.records.end()) return;
  if (winner->second.actor_alive) {
    winner->second.actor_alive = false;
    caf::anon_send(winner->second.actor, release_vm_atom::value);
  }
  if (self->state.reaper) {
    auto gone = winner->second.info;
    gone.state = SandboxState::destroying;
    self->send(self->state.reaper, state_atom::value, gone);
  }
  self->state.records.erase(winner);
}

} // namespace

caf::result<SandboxInfo> merge_flow(registry_pointer self, const std::string& owner,
                                    const std::string& parent_id, const std::string& winner_id) {
  // Admit.
  if (self->state.shutting_down) return shutting_down();
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
  auto ready_winner = ready_record(self, owner, winner_id);
  if (!ready_winner) return std::move(ready_winner.error());

  auto promise = self->make_response_promise<SandboxInfo>();
  flow_started(self);
  reaper_op(self, parent_id, ReaperLease::merge, true);
  auto answer = [=](caf::expected<SandboxInfo> outcome) mutable {
    reaper_op(self, parent_id, ReaperLease::merge, false);
    deliver(promise, std::move(outcome));
    flow_ended(self);
  };
  auto parent_actor = (*parent)->actor;
  auto winner_actor = (*ready_winner)->actor;
  const auto timeout = std::chrono::seconds(10);

  // Hold the parent (a second merge into it is refused here), then the
  // winner.
  self->request(parent_actor, timeout, hold_atom::value, true)
      .then(
          [=](done_atom) mutable {
            self->request(winner_actor, timeout, hold_atom::value, true)
                .then(
                    [=](done_atom) mutable {
                      // Swap the VMs.
                      VmHost* vms = self->state.vms;
                      vm_step<std::int32_t>(self,
                                            [=](StepDone<std::int32_t> done) {
                                              vms->merge(parent_id, parent_actor, winner_id,
                                                         std::move(done));
                                            })
                          .then(
                              [=](std::int32_t pid) mutable {
                                // Hand over.
                                retire_winner(self, winner_id);
                                auto merged = self->state.records.find(parent_id);
                                if (merged == self->state.records.end())
                                  return answer(make_error(ErrorKind::not_found,
                                                           "sandbox " + parent_id +
                                                               " was deleted during the merge"));
                                if (merged->second.actor_alive) {
                                  self->send(merged->second.actor, vm_replaced_atom::value, pid);
                                  caf::anon_send(merged->second.actor, hold_atom::value, false);
                                }
                                auto info = merged->second.info;
                                info.qemu_pid = pid;
                                answer(std::move(info));
                              },
                              [=](caf::error& failure) mutable {
                                release_hold(self, parent_id);
                                release_hold(self, winner_id);
                                answer(make_error(ErrorKind::conflict,
                                                  "merging " + winner_id + " into " + parent_id +
                                                      " failed: " + to_error(failure).message() +
                                                      "; both are unchanged"));
                              });
                    },
                    [=](caf::error& refused) mutable {
                      release_hold(self, parent_id);
                      answer(std::move(refused));
                    });
          },
          [=](caf::error& refused) mutable { answer(std::move(refused)); });
  return promise;
}

} // namespace vesicle
