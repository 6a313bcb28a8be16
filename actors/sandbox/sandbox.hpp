// The sandbox actor: one per sandbox, owning the life of one VM.
//
// Its phases (booting, ready, busy with a fork, merge or freeze, frozen,
// dead, destroying) and the moves between them are one table in
// sandbox_phase.hpp; this actor is the only writer of its phase, and reports
// each change of what the API shows (SandboxState) to its listener.
//
// The VM itself lives on the asio side (VmHost): this actor asks VmHost to
// boot or reclaim it and hears back by message, so nothing here blocks a CAF
// thread. Every request is answered in every state: either the value, or a
// typed error (ErrorKind::conflict, ErrorKind::guest_died, ...) saying why
// not now — never silence.
#pragma once

#include <cstdint>
#include <string>

#include <caf/typed_actor.hpp>

#include "actors/sandbox/launch_plan.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

class VmHost;

using sandbox_actor = caf::typed_actor<
    // Answers once the sandbox is ready (waits while it boots), or with the
    // boot failure / death.
    caf::replies_to<await_ready_atom>::with<SandboxInfo>,
    caf::replies_to<info_atom>::with<SandboxInfo>,
    // Starts an operation on the VM (exec, upload, download): only in state
    // ready, waiting while a fork, merge or freeze holds it. It enters the
    // sandbox's gate (op_gate.hpp), which hostd enters itself when it is
    // open; end_op, or leaving the gate, ends the operation.
    caf::replies_to<begin_op_atom>::with<std::uint64_t>, caf::reacts_to<end_op_atom, std::uint64_t>,
    // Tears the VM down and stops the actor; answered once the VM's files
    // are gone.
    caf::replies_to<destroy_atom>::with<done_atom>,
    // Fork and merge: hold(true) succeeds only when ready with no operation
    // in flight, and refuses new ones until hold(false).
    caf::replies_to<hold_atom, bool>::with<done_atom>,
    // Its VM was replaced (the parent of a fork resumed, a merge): the new
    // QEMU pid.
    caf::reacts_to<vm_replaced_atom, std::int32_t>,
    // Its VM was saved into this Space and is gone (a freeze, while held):
    // state frozen. Operations are refused with the Space's id; destroy
    // only drops the record.
    caf::reacts_to<frozen_atom, std::string>,
    // Its VM went to another sandbox (merge_into): stop without reclaiming.
    caf::replies_to<release_vm_atom>::with<done_atom>,
    // The reaper's verdict (via the registry): a ready sandbox ends as if
    // its VM had died, with `reason` as its dead_reason; in any other state
    // it is ignored.
    caf::reacts_to<expire_atom, std::string>,
    // From VmHost (and from an HTTP handler that saw the VM die first; the
    // reply tells it the death is recorded).
    // vm_booted carries QEMU's pid and where the VM came from (SandboxInfo::source).
    caf::reacts_to<vm_booted_atom, std::int32_t, std::string>,
    caf::reacts_to<vm_boot_failed_atom, std::string>,
    caf::replies_to<vm_exited_atom, std::string>::with<done_atom>,
    caf::reacts_to<vm_reclaimed_atom>>;

// Reports each state change of a sandbox to whoever tracks it (the
// registry): state_atom + the sandbox's SandboxInfo.
using state_listener = caf::typed_actor<caf::reacts_to<state_atom, SandboxInfo>>;

// Spawns a sandbox in state booting and asks `vms` to launch its VM as
// `plan` says. `info` carries id, owner, spec and creation time.
sandbox_actor spawn_sandbox(caf::actor_system& system, SandboxInfo info, VmHost& vms,
                            state_listener listener, const LaunchPlan& plan);

} // namespace vesicle
