#include "actors/sandbox/sandbox.hpp"

#include <vector>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/sandbox/op_gate.hpp"
#include "actors/sandbox/sandbox_phase.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "common/error_kind.hpp"
#include "common/log.hpp"

namespace vesicle {

namespace {

struct SandboxActorState {
  // The phase is the truth; info.state is what the API shows of it.
  SandboxPhase phase = SandboxPhase::booting;
  SandboxInfo info;
  VmHost* vms = nullptr;
  state_listener listener;
  // Open exactly while the phase is ready: the operations running on the
  // VM, whether begun through this actor or at the gate (op_gate.hpp).
  std::shared_ptr<OpGate> gate;
  std::uint64_t next_lease = 1;
  // Callers of await_ready while booting.
  std::vector<caf::typed_response_promise<SandboxInfo>> ready_waiters;
  // Callers of destroy, answered once the VM is reclaimed.
  std::vector<caf::typed_response_promise<done_atom>> destroy_waiters;
  // Calls (begin_op) that came while a fork, merge or freeze held the
  // sandbox: answered with a lease when it is ready again, else with why
  // not. A fork answers once its children are up, and the parent may still
  // be resuming then: its caller's next exec waits instead of failing.
  std::vector<caf::typed_response_promise<std::uint64_t>> op_waiters;
  // DELETE came while booting or busy: tear down as soon as that resolves.
  bool destroy_requested = false;
  // A VM exists (or may: a boot is in flight) that has not been reclaimed.
  bool holds_vm = true;
  bool reclaim_in_flight = false;
  // The reaper's verdict that came while busy.
  std::string pending_expiry;
  static inline const char* name = "sandbox";
};

using self_pointer = sandbox_actor::stateful_pointer<SandboxActorState>;

// At most this many calls wait for a busy sandbox; more are refused.
constexpr std::size_t kMaxOpWaiters = 64;

caf::error not_now(self_pointer self);
void answer_op_waiters(self_pointer self);

std::string id_of(self_pointer self) {
  return self->state.info.id;
}

void report(self_pointer self) {
  if (self->state.listener) self->send(self->state.listener, state_atom::value, self->state.info);
}

// Every change of phase goes through here and follows sandbox_phase.cpp's
// table; a move it does not allow is a bug, logged and not made.
bool enter(self_pointer self, SandboxPhase next) {
  auto& state = self->state;
  if (next == state.phase) return true;
  if (!can_move(state.phase, next)) {
    log::error(
        "bug: a sandbox phase change the table does not allow; staying",
        {{"sandbox", state.info.id}, {"from", to_string(state.phase)}, {"to", to_string(next)}});
    return false;
  }
  const bool was_ready = state.phase == SandboxPhase::ready;
  state.phase = next;
  // A hold closed the gate already (close_if_idle); any other way out of
  // ready closes it whatever runs.
  if (next == SandboxPhase::ready)
    state.gate->open();
  else if (was_ready)
    state.gate->close();
  if (next != SandboxPhase::busy && !state.op_waiters.empty()) answer_op_waiters(self);
  auto shown = public_state(next);
  if (shown != SandboxState::ready && shown != SandboxState::booting) state.info.qemu_pid = 0;
  if (shown != state.info.state) {
    state.info.state = shown;
    report(self);
  }
  return true;
}

bool is(self_pointer self, SandboxPhase phase) {
  return self->state.phase == phase;
}

// Up, whether or not a fork, merge or freeze holds it.
bool up(self_pointer self) {
  return is(self, SandboxPhase::ready) || is(self, SandboxPhase::busy);
}

// The error a caller gets when the sandbox cannot serve an operation now.
caf::error not_now(self_pointer self) {
  const auto& info = self->state.info;
  switch (self->state.phase) {
  case SandboxPhase::busy:
    return make_error(ErrorKind::conflict,
                      "sandbox " + info.id +
                          " is busy being forked, merged or frozen; retry in a moment");
  case SandboxPhase::booting:
    return make_error(ErrorKind::conflict,
                      "sandbox " + info.id + " is still booting; retry once its state is ready");
  case SandboxPhase::destroying:
    return make_error(ErrorKind::conflict, "sandbox " + info.id + " is being deleted");
  case SandboxPhase::dead:
    return make_error(ErrorKind::guest_died, "sandbox " + info.id + " died: " + info.dead_reason +
                                                 "; delete it and create a new one");
  case SandboxPhase::frozen:
    return make_error(ErrorKind::conflict,
                      "sandbox " + info.id + " is frozen into Space " + info.space_id +
                          "; resume it with POST /v1/spaces/" + info.space_id +
                          "/resume (Sandbox.resume in the SDK), which makes a new sandbox");
  case SandboxPhase::ready:
    break;
  }
  return make_error(ErrorKind::internal,
                    "sandbox " + info.id + " refused an operation while ready");
}

void answer_op_waiters(self_pointer self) {
  auto waiters = std::move(self->state.op_waiters);
  self->state.op_waiters.clear();
  for (auto& waiter : waiters) {
    if (is(self, SandboxPhase::ready) && self->state.gate->try_enter()) {
      waiter.deliver(self->state.next_lease++);
    } else {
      waiter.deliver(not_now(self));
    }
  }
}

void start_reclaim(self_pointer self) {
  if (!self->state.holds_vm || self->state.reclaim_in_flight) return;
  self->state.reclaim_in_flight = true;
  self->state.vms->reclaim(id_of(self), caf::actor_cast<sandbox_actor>(self));
}

void finish_if_destroyed(self_pointer self) {
  if (self->state.holds_vm || self->state.destroy_waiters.empty()) return;
  for (auto& waiter : self->state.destroy_waiters)
    waiter.deliver(done_atom::value);
  self->state.destroy_waiters.clear();
  self->quit();
}

// The VM is gone for good (died, or never booted): answer whoever waits for
// readiness, free the VM's files, and stay around as a dead record so later
// calls learn why.
void die(self_pointer self, std::string reason) {
  self->state.info.dead_reason = std::move(reason);
  enter(self, SandboxPhase::dead);
  for (auto& waiter : self->state.ready_waiters)
    waiter.deliver(not_now(self));
  self->state.ready_waiters.clear();
  start_reclaim(self);
}

// hostd itself disconnected the guest (it broke the agent protocol or
// stopped answering): the reason starts with the ErrorKind's name, and the
// VM did not exit by itself.
bool disconnected_by_host(const std::string& reason) {
  for (auto kind : {ErrorKind::guest_protocol_violation, ErrorKind::timeout}) {
    const std::string prefix = std::string(kind_info(kind).name) + ":";
    if (reason.starts_with(prefix)) return true;
  }
  return false;
}

void begin_destroy(self_pointer self) {
  enter(self, SandboxPhase::destroying);
  for (auto& waiter : self->state.ready_waiters)
    waiter.deliver(not_now(self));
  self->state.ready_waiters.clear();
  start_reclaim(self);
  finish_if_destroyed(self);
}

sandbox_actor::behavior_type sandbox_behavior(self_pointer self, SandboxInfo info, VmHost* vms,
                                              state_listener listener, LaunchPlan plan) {
  self->state.info = std::move(info);
  self->state.phase = SandboxPhase::booting;
  self->state.info.state = SandboxState::booting;
  self->state.vms = vms;
  self->state.listener = std::move(listener);
  // The gate goes with the actor, however it stops; a lease still held
  // keeps the (closed) gate alive until it is handed back.
  auto gates = vms->op_gates();
  auto gate = gates->add(self->state.info.id, self->state.info.owner);
  self->state.gate = gate;
  self->attach_functor([gates, gate, id = self->state.info.id] {
    gate->close();
    gates->remove(id, gate);
  });
  report(self);
  vms->launch(self->state.info.id, self->state.info.spec, std::move(plan),
              caf::actor_cast<sandbox_actor>(self));

  return {
      [=](await_ready_atom) -> caf::result<SandboxInfo> {
        switch (self->state.phase) {
        case SandboxPhase::ready:
        case SandboxPhase::busy:
          return self->state.info;
        case SandboxPhase::booting:
          if (self->state.destroy_requested) return not_now(self);
          self->state.ready_waiters.push_back(self->make_response_promise<SandboxInfo>());
          return self->state.ready_waiters.back();
        default:
          return not_now(self);
        }
      },
      [=](info_atom) -> SandboxInfo { return self->state.info; },
      [=](begin_op_atom) -> caf::result<std::uint64_t> {
        if (is(self, SandboxPhase::busy) && self->state.op_waiters.size() < kMaxOpWaiters) {
          auto promise = self->make_response_promise<std::uint64_t>();
          self->state.op_waiters.push_back(promise);
          return promise;
        }
        if (!is(self, SandboxPhase::ready) || !self->state.gate->try_enter()) return not_now(self);
        return self->state.next_lease++;
      },
      [=](end_op_atom, std::uint64_t) { self->state.gate->leave(); },
      [=](destroy_atom) -> caf::result<done_atom> {
        auto promise = self->make_response_promise<done_atom>();
        self->state.destroy_waiters.push_back(promise);
        switch (self->state.phase) {
        case SandboxPhase::booting:
          // The driver's boot cannot be interrupted; it ends within the boot
          // timeout and then vm_booted / vm_boot_failed finishes the job.
        case SandboxPhase::busy:
          // A fork, merge or freeze is replacing the VM: tear down once it
          // is done (hold(false), frozen), so no VM it makes outlives the
          // DELETE.
          self->state.destroy_requested = true;
          break;
        case SandboxPhase::ready:
        case SandboxPhase::dead:
          begin_destroy(self);
          break;
        case SandboxPhase::frozen:
          // No VM: the record goes, the Space stays.
          finish_if_destroyed(self);
          break;
        case SandboxPhase::destroying:
          break;
        }
        return promise;
      },
      [=](hold_atom, bool hold) -> caf::result<done_atom> {
        if (!hold) {
          // Nothing to do unless busy (the VM may have died meanwhile).
          if (!is(self, SandboxPhase::busy)) return done_atom::value;
          enter(self, SandboxPhase::ready);
          if (self->state.destroy_requested)
            begin_destroy(self);
          else if (!self->state.pending_expiry.empty())
            die(self, std::move(self->state.pending_expiry));
          return done_atom::value;
        }
        if (is(self, SandboxPhase::busy))
          return make_error(
              ErrorKind::conflict,
              "sandbox " + id_of(self) +
                  " is already being forked, merged or frozen; retry once that is done");
        if (!is(self, SandboxPhase::ready)) return not_now(self);
        if (!self->state.gate->close_if_idle())
          return make_error(ErrorKind::conflict,
                            "sandbox " + id_of(self) + " has " +
                                std::to_string(self->state.gate->activity().running) +
                                " exec or file transfer running; fork, merge or freeze once it "
                                "finished");
        enter(self, SandboxPhase::busy);
        return done_atom::value;
      },
      [=](vm_replaced_atom, std::int32_t qemu_pid) {
        if (!up(self)) return;
        self->state.info.qemu_pid = qemu_pid;
        report(self);
      },
      [=](frozen_atom, std::string& space_id) {
        // A freeze holds the sandbox (busy) until its Space is written.
        if (!is(self, SandboxPhase::busy)) return;
        // VmHost let go of the VM once the Space was written.
        self->state.holds_vm = false;
        self->state.pending_expiry.clear();
        self->state.info.space_id = std::move(space_id);
        enter(self, SandboxPhase::frozen);
        // A DELETE that waited for the freeze.
        if (self->state.destroy_requested) finish_if_destroyed(self);
      },
      [=](release_vm_atom) -> done_atom {
        // The VM belongs to another sandbox now: nothing to reclaim.
        self->state.holds_vm = false;
        for (auto& waiter : self->state.destroy_waiters)
          waiter.deliver(done_atom::value);
        self->state.destroy_waiters.clear();
        self->quit();
        return done_atom::value;
      },
      [=](expire_atom, std::string reason) {
        // Not in the middle of a fork or merge: applied once it is done.
        if (is(self, SandboxPhase::busy)) {
          self->state.pending_expiry = std::move(reason);
          return;
        }
        if (is(self, SandboxPhase::ready)) die(self, std::move(reason));
      },
      [=](vm_booted_atom, std::int32_t qemu_pid, std::string& source) {
        if (!is(self, SandboxPhase::booting)) return;
        self->state.info.qemu_pid = qemu_pid;
        self->state.info.source = std::move(source);
        if (self->state.destroy_requested) {
          begin_destroy(self);
          return;
        }
        enter(self, SandboxPhase::ready);
        for (auto& waiter : self->state.ready_waiters)
          waiter.deliver(self->state.info);
        self->state.ready_waiters.clear();
      },
      [=](vm_boot_failed_atom, std::string reason) {
        if (!is(self, SandboxPhase::booting)) return;
        // A failed boot leaves nothing behind (the driver's promise), but
        // reclaiming by id is idempotent and cheap: do it anyway.
        if (self->state.destroy_requested) {
          self->state.info.dead_reason = "boot failed: " + reason;
          begin_destroy(self);
          return;
        }
        for (auto& waiter : self->state.ready_waiters)
          waiter.deliver(make_error(ErrorKind::internal,
                                    "booting sandbox " + id_of(self) + " failed: " + reason));
        self->state.ready_waiters.clear();
        die(self, "boot failed: " + reason);
      },
      [=](vm_exited_atom, std::string reason) -> done_atom {
        // Only a VM that was up can die; in destroying the exit is ours.
        if (up(self)) {
          die(self, disconnected_by_host(reason) ? reason : "the VM exited: " + reason);
          // A DELETE that waited for a fork or merge.
          if (self->state.destroy_requested) begin_destroy(self);
        }
        return done_atom::value;
      },
      [=](vm_reclaimed_atom) {
        self->state.holds_vm = false;
        self->state.reclaim_in_flight = false;
        finish_if_destroyed(self);
      },
  };
}

} // namespace

sandbox_actor spawn_sandbox(caf::actor_system& system, SandboxInfo info, VmHost& vms,
                            state_listener listener, const LaunchPlan& plan) {
  return system.spawn(sandbox_behavior, std::move(info), &vms, std::move(listener), plan);
}

} // namespace vesicle
