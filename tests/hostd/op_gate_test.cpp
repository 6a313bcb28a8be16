// The operation gates (actors/sandbox/op_gate.hpp): open only while the
// sandbox actor says so, entered only with the owner's key, closed for a
// hold only when nothing runs; and the activity the reaper reads.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "actors/sandbox/op_gate.hpp"

using namespace vesicle;

namespace {

TEST(OpGate, EntersOnlyWhileOpen) {
  std::int64_t now = 100;
  OpGate gate([&] { return now; });
  EXPECT_FALSE(gate.try_enter()) << "a new gate is closed until its sandbox is ready";
  gate.open();
  EXPECT_TRUE(gate.try_enter());
  EXPECT_EQ(gate.activity().running, 1u);
  EXPECT_EQ(gate.activity().last_active_ms, 100);
  now = 250;
  gate.leave();
  EXPECT_EQ(gate.activity().running, 0u);
  EXPECT_EQ(gate.activity().last_active_ms, 250) << "the end of an operation is activity too";
  gate.close();
  EXPECT_FALSE(gate.try_enter());
}

TEST(OpGate, AHoldClosesItOnlyWhenNothingRuns) {
  OpGate gate([] { return std::int64_t{0}; });
  gate.open();
  ASSERT_TRUE(gate.try_enter());
  EXPECT_FALSE(gate.close_if_idle()) << "a fork must not start under a running exec";
  EXPECT_TRUE(gate.try_enter()) << "and the gate stays open";
  gate.leave();
  gate.leave();
  EXPECT_TRUE(gate.close_if_idle());
  EXPECT_FALSE(gate.try_enter()) << "held: new operations go to the actor and wait";
}

TEST(OpGate, ClosingForGoodLetsWhatRunsFinish) {
  OpGate gate([] { return std::int64_t{0}; });
  gate.open();
  ASSERT_TRUE(gate.try_enter());
  gate.close();
  EXPECT_EQ(gate.activity().running, 1u);
  gate.leave();
  gate.leave(); // a stray second leave (a lease handed back twice) does not wrap
  EXPECT_EQ(gate.activity().running, 0u);
}

TEST(OpGate, ConcurrentEntriesAndAHoldNeverOverlap) {
  // Threads enter and leave while another tries to hold: whenever the hold
  // succeeds, nothing is running, and nothing enters until it is released.
  OpGate gate([] { return std::int64_t{0}; });
  gate.open();
  std::atomic<bool> held{false};
  std::atomic<bool> overlap{false};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 3; ++t)
    workers.emplace_back([&] {
      while (!stop) {
        if (!gate.try_enter()) continue;
        if (held) overlap = true;
        gate.leave();
      }
    });
  int holds = 0;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (holds < 200 && std::chrono::steady_clock::now() < give_up) {
    if (!gate.close_if_idle()) continue;
    held = true;
    if (gate.activity().running != 0) overlap = true;
    ++holds;
    held = false;
    gate.open();
  }
  stop = true;
  for (auto& worker : workers)
    worker.join();
  EXPECT_FALSE(overlap);
  EXPECT_GT(holds, 0);
}

TEST(OpGates, FindsAGateOnlyWithItsOwnersKey) {
  OpGates gates;
  auto gate = gates.add("sb-1", "alice");
  EXPECT_EQ(gates.enter("sb-1", "alice"), nullptr) << "closed: not ready yet";
  gate->open();
  EXPECT_EQ(gates.enter("sb-1", "bob"), nullptr) << "another key's sandbox is not found";
  EXPECT_EQ(gates.enter("sb-2", "alice"), nullptr);
  auto entered = gates.enter("sb-1", "alice");
  ASSERT_EQ(entered, gate);
  EXPECT_EQ(gates.activity("sb-1")->running, 1u);
  EXPECT_FALSE(gates.activity("sb-2").has_value());
  entered->leave();
}

TEST(OpGates, RemoveDropsOnlyTheSameGate) {
  OpGates gates;
  std::int64_t now = 7;
  gates.set_clock([&] { return now; });
  auto first = gates.add("sb-1", "alice");
  gates.remove("sb-1", std::make_shared<OpGate>([] { return std::int64_t{0}; }));
  EXPECT_EQ(gates.find("sb-1"), first) << "another gate's removal leaves this one";
  first->open();
  ASSERT_TRUE(first->try_enter());
  EXPECT_EQ(gates.activity("sb-1")->last_active_ms, 7) << "the gates' clock";
  gates.remove("sb-1", first);
  EXPECT_EQ(gates.find("sb-1"), nullptr);
  EXPECT_EQ(gates.enter("sb-1", "alice"), nullptr);
  first->leave(); // a lease outliving its sandbox's entry
}

} // namespace
