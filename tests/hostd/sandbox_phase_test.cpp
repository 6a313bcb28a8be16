// The sandbox actor's table of moves: what may follow what, and what the API
// shows of each phase.
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include "actors/sandbox/sandbox_phase.hpp"

namespace vesicle {
namespace {

using P = SandboxPhase;
const P kAll[] = {P::booting, P::ready, P::busy, P::frozen, P::dead, P::destroying};

TEST(SandboxPhase, ExactlyTheMovesOfTheDiagram) {
  const std::set<std::pair<P, P>> allowed = {
      {P::booting, P::ready}, {P::booting, P::dead}, {P::booting, P::destroying},
      {P::ready, P::busy},    {P::ready, P::dead},   {P::ready, P::destroying},
      {P::busy, P::ready},    {P::busy, P::frozen},  {P::busy, P::dead},
      {P::dead, P::destroying},
  };
  for (auto from : kAll)
    for (auto to : kAll)
      EXPECT_EQ(can_move(from, to), allowed.count({from, to}) == 1)
          << to_string(from) << " -> " << to_string(to);
}

TEST(SandboxPhase, FrozenAndDestroyingAreEnds) {
  for (auto to : kAll) {
    EXPECT_FALSE(can_move(P::frozen, to)) << to_string(to);
    EXPECT_FALSE(can_move(P::destroying, to)) << to_string(to);
  }
}

TEST(SandboxPhase, BusyShowsAsReady) {
  EXPECT_EQ(public_state(P::busy), SandboxState::ready);
  EXPECT_EQ(public_state(P::ready), SandboxState::ready);
  EXPECT_EQ(public_state(P::booting), SandboxState::booting);
  EXPECT_EQ(public_state(P::frozen), SandboxState::frozen);
  EXPECT_EQ(public_state(P::dead), SandboxState::dead);
  EXPECT_EQ(public_state(P::destroying), SandboxState::destroying);
}

} // namespace
} // namespace vesicle
