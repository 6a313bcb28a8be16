// The phases of a sandbox actor and the one table of moves between them.
// The actor (sandbox.cpp) is the only writer of its phase; everyone else
// learns it from its replies and its state reports, where busy shows as
// ready (the API's SandboxState has no busy: the sandbox is up, and calls
// that need it idle get a conflict naming what it is busy with).
//
//   booting --booted--> ready --hold--> busy --done--> ready
//   booting --failed--> dead          busy --saved--> frozen
//   ready --died or expired--> dead   busy --died--> dead
//   booting, ready, dead --destroy--> destroying
//   frozen and destroying end the actor (destroy, reclaimed).
#pragma once

#include <cstdint>

#include "messages/caf_types.hpp"

namespace vesicle {

enum class SandboxPhase : std::uint8_t { booting, ready, busy, frozen, dead, destroying };

// Whether the actor may move from `from` to `to`. Staying is not a move.
bool can_move(SandboxPhase from, SandboxPhase to);

// What the API shows for a phase.
SandboxState public_state(SandboxPhase phase);

const char* to_string(SandboxPhase phase);

} // namespace vesicle
