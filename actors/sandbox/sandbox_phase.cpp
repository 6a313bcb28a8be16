#include "actors/sandbox/sandbox_phase.hpp"

#include <array>

namespace vesicle {

namespace {

using P = SandboxPhase;
constexpr std::size_t kPhases = 6;

// kMoves[from][to]: the diagram in sandbox_phase.hpp.
constexpr std::array<std::array<bool, kPhases>, kPhases> kMoves = [] {
  std::array<std::array<bool, kPhases>, kPhases> moves{};
  auto allow = [&moves](P from, P to) {
    moves[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)] = true;
  };
  allow(P::booting, P::ready);      // the VM is up
  allow(P::booting, P::dead);       // the boot failed
  allow(P::booting, P::destroying); // a DELETE that waited for the boot
  allow(P::ready, P::busy);         // a fork, merge or freeze holds it
  allow(P::ready, P::dead);         // the VM died, or the reaper ended it
  allow(P::ready, P::destroying);   // DELETE
  allow(P::busy, P::ready);         // the fork, merge or a failed freeze is done
  allow(P::busy, P::frozen);        // the freeze wrote its Space
  allow(P::busy, P::dead);          // the VM died meanwhile
  allow(P::dead, P::destroying);    // DELETE of the record
  return moves;
}();

} // namespace

bool can_move(SandboxPhase from, SandboxPhase to) {
  return kMoves[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)];
}

SandboxState public_state(SandboxPhase phase) {
  switch (phase) {
  case P::booting:
    return SandboxState::booting;
  case P::ready:
  case P::busy:
    return SandboxState::ready;
  case P::frozen:
    return SandboxState::frozen;
  case P::dead:
    return SandboxState::dead;
  case P::destroying:
    return SandboxState::destroying;
  }
  return SandboxState::dead;
}

const char* to_string(SandboxPhase phase) {
  switch (phase) {
  case P::booting:
    return "booting";
  case P::ready:
    return "ready";
  case P::busy:
    return "busy";
  case P::frozen:
    return "frozen";
  case P::dead:
    return "dead";
  case P::destroying:
    return "destroying";
  }
  return "unknown";
}

} // namespace vesicle
