// The reaper as the registry runs it, and the per-key concurrency cap.
#include "tests/hostd/actor_test_support.hpp"

using namespace vesicle::actor_test;

namespace {

TEST_F(ReaperRegistryTest, AnIdleSandboxIsEndedAndKeptAsADeadRecord) {
  // The clock the reaper uses is the test's, created_at the real one: align them.
  now_ms = unix_now_ms();
  auto created = create_with(5, 600);
  ASSERT_TRUE(created);
  advance_s(4);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  advance_s(1.5);
  auto info = lookup(created->id);
  EXPECT_EQ(info.state, SandboxState::dead);
  EXPECT_EQ(info.dead_reason, "idle for 5 s (idle_timeout_s)");
  EXPECT_EQ(vms.size(), 0u) << "its VM must be reclaimed";
  EXPECT_TRUE(driver.live.empty());
  EXPECT_EQ(capacity().available(), 8u);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), ErrorKind::guest_died);
  EXPECT_NE(error_message(lease.error()).find("idle for 5 s"), std::string::npos);
  // DELETE removes the record as for any dead sandbox.
  ASSERT_TRUE(ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id));
  EXPECT_TRUE(list().empty());
}

TEST_F(ReaperRegistryTest, AnOperationLongerThanTheIdleTimeoutIsNotInterrupted) {
  now_ms = unix_now_ms();
  auto created = create_with(5, 0);
  ASSERT_TRUE(created);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(lease);
  advance_s(60);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  caf::anon_send(registry, end_op_atom::value, std::string("alice"), created->id, *lease);
  settle();
  advance_s(4);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready) << "idle counts from the op's end";
  advance_s(1.5);
  EXPECT_EQ(lookup(created->id).state, SandboxState::dead);
}

TEST_F(ReaperRegistryTest, AnOperationAtTheGateIsNotInterruptedAndItsEndCounts) {
  now_ms = unix_now_ms();
  auto created = create_with(5, 0);
  ASSERT_TRUE(created);
  auto gate = vms.op_gates()->enter(created->id, "alice");
  ASSERT_NE(gate, nullptr);
  advance_s(60);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  gate->leave();
  advance_s(4);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready) << "idle counts from the op's end";
  advance_s(1.5);
  EXPECT_EQ(lookup(created->id).state, SandboxState::dead);
  EXPECT_EQ(vms.op_gates()->enter(created->id, "alice"), nullptr)
      << "a dead sandbox's gate is shut";
}

TEST_F(ReaperRegistryTest, MaxLifetimeEndsASandboxInUse) {
  now_ms = unix_now_ms();
  auto created = create_with(300, 10);
  ASSERT_TRUE(created);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(lease);
  advance_s(10.5);
  auto info = lookup(created->id);
  EXPECT_EQ(info.state, SandboxState::dead);
  EXPECT_EQ(info.dead_reason, "reached its max lifetime of 10 s (max_lifetime_s)");
  EXPECT_TRUE(driver.live.empty());
  // The handler's lease comes back after the death: harmless.
  caf::anon_send(registry, end_op_atom::value, std::string("alice"), created->id, *lease);
  settle();
  EXPECT_EQ(lookup(created->id).state, SandboxState::dead);
}

TEST_F(ReaperRegistryTest, APersistentSandboxIsLeftRunningWithoutSpaces) {
  now_ms = unix_now_ms();
  auto created = create_with(5, 10, true);
  ASSERT_TRUE(created);
  advance_s(6);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  advance_s(6);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  EXPECT_EQ(vms.size(), 1u);
}

TEST_F(ReaperRegistryTest, ConcurrencyCapPerKey) {
  auto capped = [&](const std::string& owner) {
    SandboxSpec spec;
    spec.memory_mib = 512;
    return ask_registry<SandboxInfo>(create_atom::value, owner, spec, std::uint32_t{2});
  };
  auto first = capped("alice");
  auto second = capped("alice");
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  auto third = capped("alice");
  ASSERT_FALSE(third);
  EXPECT_EQ(code_of(third.error()), ErrorKind::quota);
  EXPECT_NE(error_message(third.error()).find("may run 2 sandboxes at once"), std::string::npos)
      << error_message(third.error());
  EXPECT_NE(error_message(third.error()).find("runs 2"), std::string::npos);
  // Another key has its own count.
  EXPECT_TRUE(capped("bob"));
  // A dead record does not count.
  driver.vm(first->id)->kill("killed by signal 9 (SIGKILL)");
  settle();
  EXPECT_TRUE(capped("alice"));
  EXPECT_FALSE(capped("alice"));
}

} // namespace
