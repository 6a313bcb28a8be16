// The fork flow: n children, each starting from the parent's state at this
// moment (memory, processes, files), all or nothing; the parent runs on.
//
//   admit    n in range; the parent is ready; the key's cap and the host's
//            capacity hold n more
//   reserve  n booting placeholders hold the children's slots
//                                                  undo: drop the placeholders
//   hold     the parent (no exec, merge, freeze or other fork meanwhile)
//                                                  undo: release the hold
//   save     VmHost turns the parent's VM into the fork snapshot fk-… and
//            resumes the parent as one more copy of it (it hears vm_replaced
//            and hold(false) from VmHost; a restored parent that wrote
//            little runs on instead, one that wrote much is restarted once
//            the children are launched)            undo: the snapshot is let
//            go; a parent that cannot be resumed dies (its actor hears why)
//   launch   each child from the snapshot, all at once
//   answer   once every child answered: all of them, in order; or, when any
//            failed, take down the ones that came up (the second child fails
//            to start -> the first is destroyed, its record dropped) and say
//            which failed; the parent is unchanged either way.
#include "actors/sandbox/flows.hpp"

#include <algorithm>
#include <chrono>
#include <memory>

#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/vm_step.hpp"

namespace vesicle {

namespace {

// What a fork is in the middle of, shared by its continuations.
struct Fork {
  std::string parent_id;
  std::string base_id; // the fork snapshot
  std::vector<std::string> child_ids;
  std::vector<SandboxInfo> ready;
  std::vector<std::string> failures;
  std::size_t outstanding = 0;
  caf::typed_response_promise<SandboxInfoList> promise;
};

std::string new_fork_id() {
  // Fork snapshots are named like sandboxes, with their own prefix.
  return "fk-" + new_sandbox_id().substr(3);
}

void answer(registry_pointer self, Fork& fork, caf::expected<SandboxInfoList> outcome) {
  reaper_op(self, fork.parent_id, ReaperLease::fork, false);
  deliver(fork.promise, std::move(outcome));
  flow_ended(self);
}

void drop_placeholders(registry_pointer self, const Fork& fork) {
  for (const auto& child : fork.child_ids) {
    auto held = self->state.records.find(child);
    if (held != self->state.records.end() && !held->second.actor) self->state.records.erase(held);
  }
}

// One child answered; with the last answer the fork is decided.
void child_done(registry_pointer self, std::shared_ptr<Fork> fork, const std::string& child_id,
                caf::expected<SandboxInfo> outcome) {
  if (outcome)
    fork->ready.push_back(std::move(*outcome));
  else
    fork->failures.push_back(child_id + ": " + error_message(outcome.error()));
  if (--fork->outstanding > 0) return;
  // Every child's VM now holds its own reference to the snapshot, or none.
  self->state.vms->release_fork(fork->base_id);
  if (fork->failures.empty()) {
    SandboxInfoList children; // in the order they were made
    for (const auto& id : fork->child_ids)
      for (auto& info : fork->ready)
        if (info.id == id) children.push_back(info);
    return answer(self, *fork, std::move(children));
  }
  // Rollback: all or nothing.
  for (const auto& info : fork->ready)
    take_down(self, info.id);
  std::string why = fork->failures.front();
  if (fork->failures.size() > 1)
    why += " (and " + std::to_string(fork->failures.size() - 1) + " more)";
  auto kind = self->state.shutting_down ? ErrorKind::unavailable : ErrorKind::internal;
  answer(self, *fork,
         make_error(kind, "forking " + fork->parent_id + ": " +
                              std::to_string(fork->failures.size()) + " of " +
                              std::to_string(fork->child_ids.size()) +
                              " children failed, so none was kept (" + why +
                              "); the parent is unchanged"));
}

void launch_children(registry_pointer self, std::shared_ptr<Fork> fork) {
  fork->outstanding = fork->child_ids.size();
  for (const auto& child_id : fork->child_ids) {
    auto held = self->state.records.find(child_id);
    if (held == self->state.records.end()) {
      // Its placeholder was deleted meanwhile.
      child_done(self, fork, child_id,
                 make_error(ErrorKind::conflict, "deleted while the fork was starting"));
      continue;
    }
    SandboxInfo info = held->second.info;
    auto ancestors = held->second.ancestors;
    launch_sandbox(
        self, std::move(info), -1, launch::FromForkSnapshot{fork->base_id},
        [=](caf::expected<SandboxInfo> outcome) {
          child_done(self, fork, child_id, std::move(outcome));
        },
        std::move(ancestors));
  }
}

} // namespace

caf::result<SandboxInfoList> fork_flow(registry_pointer self, const std::string& owner,
                                       const std::string& id, std::uint32_t n,
                                       std::uint32_t max_concurrent) {
  // Admit.
  if (self->state.shutting_down) return shutting_down();
  if (n < 1 || n > kMaxForkChildren)
    return make_error(ErrorKind::invalid_argument, "n: a fork makes 1 to " +
                                                       std::to_string(kMaxForkChildren) +
                                                       " children, got " + std::to_string(n));
  auto parent = ready_record(self, owner, id);
  if (!parent) return std::move(parent.error());
  if (auto refused = admit(
          self, owner, n, max_concurrent, (*parent)->info.spec,
          "forking " + id + " " + std::to_string(n) + " ways",
          "delete sandboxes you no longer need (DELETE /v1/sandboxes/{id}) or fork fewer ways"))
    return refused;

  // Reserve.
  auto fork = std::make_shared<Fork>();
  fork->parent_id = id;
  fork->base_id = new_fork_id();
  fork->promise = self->make_response_promise<SandboxInfoList>();
  auto ancestors = (*parent)->ancestors;
  ancestors.insert(ancestors.begin(), id);
  for (std::uint32_t i = 0; i < n; ++i) {
    SandboxInfo child;
    child.id = new_sandbox_id();
    child.owner = owner;
    child.spec = (*parent)->info.spec;
    child.created_at_ms = unix_now_ms();
    // A child goes on from its parent's state, and its lifetime with it.
    child.lived_before_ms =
        (*parent)->info.lived_before_ms +
        std::max<std::int64_t>(0, child.created_at_ms - (*parent)->info.created_at_ms);
    child.source = "fork";
    child.forked_from = id;
    fork->child_ids.push_back(child.id);
    self->state.records.emplace(child.id, Record{child, sandbox_actor{}, false, -1, ancestors});
  }
  flow_started(self);
  reaper_op(self, id, ReaperLease::fork, true);
  auto promise = fork->promise;

  // Hold the parent.
  self->request((*parent)->actor, std::chrono::seconds(10), hold_atom::value, true)
      .then(
          [=](done_atom) {
            // Save it as the fork snapshot.
            VmHost* vms = self->state.vms;
            const auto base_id = fork->base_id;
            vm_step<std::int32_t>(self,
                                  [vms, id, base_id](StepDone<std::int32_t> done) {
                                    vms->fork_parent(id, base_id, std::move(done));
                                  })
                .then(
                    [=](std::int32_t) {
                      if (self->state.shutting_down) {
                        drop_placeholders(self, *fork);
                        self->state.vms->release_fork(fork->base_id);
                        return answer(self, *fork, shutting_down());
                      }
                      // Launch.
                      launch_children(self, fork);
                    },
                    [=](caf::error& failure) {
                      // The parent runs on as before: let it serve again.
                      release_hold(self, id);
                      drop_placeholders(self, *fork);
                      self->state.vms->release_fork(fork->base_id);
                      auto why = to_error(failure);
                      answer(self, *fork,
                             make_error(why.kind, "forking " + id + " failed: " + why.message()));
                    });
          },
          [=](caf::error& refused) {
            drop_placeholders(self, *fork);
            answer(self, *fork, std::move(refused));
          });
  return promise;
}

} // namespace vesicle
