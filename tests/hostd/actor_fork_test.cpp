// Fork and merge_into on the fake driver.
#include "tests/hostd/actor_test_support.hpp"

using namespace vesicle::actor_test;

namespace {

// -- fork and merge_into, on the fake driver ----------------------------------

class ForkTest : public ActorTest {
protected:
  ForkTest() { start_registry(6); }
  caf::expected<SandboxInfoList> fork(const std::string& id, std::uint32_t n,
                                      const std::string& owner = "alice") {
    return ask_registry<SandboxInfoList>(fork_atom::value, owner, id, n, std::uint32_t{10});
  }
  caf::expected<SandboxInfo> merge(const std::string& parent, const std::string& winner) {
    return ask_registry<SandboxInfo>(merge_atom::value, std::string("alice"), parent, winner);
  }
  caf::expected<SandboxInfo> lookup(const std::string& id) {
    return ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), id);
  }
  void destroy(const std::string& id) {
    auto done = ask_registry<done_atom>(destroy_atom::value, std::string("alice"), id);
    EXPECT_TRUE(done) << to_string(done.error());
  }
};

TEST_F(ForkTest, ChildrenComeFromOneSaveTheParentRunsOnAndTheSnapshotGoesWithTheLastVm) {
  auto parent = create();
  ASSERT_TRUE(parent);
  const auto parent_pid = parent->qemu_pid;
  auto children = fork(parent->id, 2);
  ASSERT_TRUE(children) << to_string(children.error());
  ASSERT_EQ(children->size(), 2u);
  for (const auto& child : *children) {
    EXPECT_EQ(child.state, SandboxState::ready);
    EXPECT_EQ(child.source, "fork");
    EXPECT_EQ(child.forked_from, parent->id);
    EXPECT_EQ(child.owner, "alice");
    EXPECT_EQ(child.spec, parent->spec);
  }
  EXPECT_EQ(driver.saves, 1);
  EXPECT_EQ(driver.restores_started, 3) << "the parent and two children";
  auto after = lookup(parent->id);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->state, SandboxState::ready);
  EXPECT_NE(after->qemu_pid, parent_pid) << "the parent runs on a VM restored from the snapshot";
  // It serves again: the hold is released.
  EXPECT_TRUE(ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), parent->id));
  EXPECT_EQ(vms.size(), 3u);
  EXPECT_EQ(vms.fork_snapshots(), 1u);

  destroy(parent->id);
  settle();
  EXPECT_EQ(vms.fork_snapshots(), 1u) << "the children still use it";
  destroy((*children)[0].id);
  destroy((*children)[1].id);
  settle();
  EXPECT_EQ(vms.fork_snapshots(), 0u);
  EXPECT_TRUE(driver.live.empty());
}

TEST_F(ForkTest, ARestoredParentThatWroteMuchRestartsOnTheForksSnapshotOneThatWroteLittleRunsOn) {
  auto root = create();
  ASSERT_TRUE(root);
  auto children = fork(root->id, 1);
  ASSERT_TRUE(children) << to_string(children.error());
  const SandboxInfo child = (*children)[0];
  vesicle::testing::FakeVm* vm = driver.vm(child.id);
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(vm->restored) << "a fork child is restored, as a pool sandbox is";

  // Below fork_parent_restart_mib (64): the child runs on in its QEMU.
  vm->written = 63ull << 20;
  const int restores = driver.restores_started;
  auto first = fork(child.id, 1);
  ASSERT_TRUE(first) << to_string(first.error());
  EXPECT_EQ(driver.restores_started, restores + 1) << "the grandchild only";
  auto kept = lookup(child.id);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->qemu_pid, child.qemu_pid);
  EXPECT_FALSE(vm->paused);

  // At it: the save leaves it paused, and it goes on in a new QEMU.
  vm->written = 64ull << 20;
  auto second = fork(child.id, 2);
  ASSERT_TRUE(second) << to_string(second.error());
  settle();
  EXPECT_EQ(driver.restores_started, restores + 1 + 3) << "two grandchildren and the parent";
  EXPECT_EQ(driver.vm(child.id), driver.vms[child.id]);
  auto restarted = lookup(child.id);
  ASSERT_TRUE(restarted);
  EXPECT_EQ(restarted->state, SandboxState::ready);
  EXPECT_NE(restarted->qemu_pid, child.qemu_pid) << "restarted on the fork's snapshot";
  ASSERT_NE(driver.vm(child.id), nullptr);
  EXPECT_NE(driver.vm(child.id)->qemu_pid(), child.qemu_pid);
  EXPECT_TRUE(ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), child.id))
      << "its hold ends once it runs again";
  EXPECT_EQ(vms.size(), 5u) << "root, child, three grandchildren";
  EXPECT_EQ(driver.live.size(), 5u) << "the child's old VM is gone";

  for (const auto& list : {*second, *first})
    for (const auto& sandbox : list)
      destroy(sandbox.id);
  destroy(child.id);
  destroy(root->id);
  settle();
  EXPECT_EQ(vms.fork_snapshots(), 0u);
  EXPECT_TRUE(driver.live.empty());
}

TEST_F(ForkTest, AChildThatFailsTakesTheOthersDownAndTheParentRunsOn) {
  auto parent = create();
  ASSERT_TRUE(parent);
  // The parent's own restore and the first child's succeed, the second's fails.
  driver.fail_restores_after = 2;
  auto children = fork(parent->id, 2);
  ASSERT_FALSE(children);
  EXPECT_NE(error_message(children.error()).find("none was kept"), std::string::npos)
      << error_message(children.error());
  settle();
  auto sandboxes = list();
  ASSERT_EQ(sandboxes.size(), 1u);
  EXPECT_EQ(sandboxes[0].id, parent->id);
  EXPECT_EQ(sandboxes[0].state, SandboxState::ready);
  EXPECT_EQ(vms.size(), 1u);
  EXPECT_EQ(vms.fork_snapshots(), 1u) << "the parent runs on the snapshot";
}

TEST_F(ForkTest, RefusedWhileAnOperationRunsBeyondCapacityAndForBadN) {
  auto parent = create();
  ASSERT_TRUE(parent);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), parent->id);
  ASSERT_TRUE(lease);
  auto busy = fork(parent->id, 1);
  ASSERT_FALSE(busy);
  EXPECT_EQ(code_of(busy.error()), ErrorKind::conflict);
  EXPECT_NE(error_message(busy.error()).find("running"), std::string::npos);
  anon_send(registry, end_op_atom::value, std::string("alice"), parent->id, *lease);
  settle();

  auto too_many = fork(parent->id, 6);
  ASSERT_FALSE(too_many);
  EXPECT_EQ(code_of(too_many.error()), ErrorKind::capacity);
  auto capped = ask_registry<SandboxInfoList>(fork_atom::value, std::string("alice"), parent->id,
                                              std::uint32_t{2}, std::uint32_t{2});
  ASSERT_FALSE(capped);
  EXPECT_EQ(code_of(capped.error()), ErrorKind::quota);
  auto zero = fork(parent->id, 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(code_of(zero.error()), ErrorKind::invalid_argument);
  auto stranger = fork(parent->id, 1, "bob");
  ASSERT_FALSE(stranger);
  EXPECT_EQ(code_of(stranger.error()), ErrorKind::not_found);
  EXPECT_EQ(driver.saves, 0);
  EXPECT_EQ(list().size(), 1u);
  EXPECT_TRUE(fork(parent->id, 1));
}

// hostd's usual way in: the sandbox's gate, with no message to any actor.
TEST_F(ForkTest, AnOperationAtTheGateHoldsOffAFork) {
  auto parent = create();
  ASSERT_TRUE(parent);
  EXPECT_EQ(vms.op_gates()->enter(parent->id, "bob"), nullptr) << "not bob's sandbox";
  auto gate = vms.op_gates()->enter(parent->id, "alice");
  ASSERT_NE(gate, nullptr) << "a ready sandbox's gate is open";
  auto busy = fork(parent->id, 1);
  ASSERT_FALSE(busy);
  EXPECT_EQ(code_of(busy.error()), ErrorKind::conflict);
  EXPECT_NE(error_message(busy.error()).find("1 exec or file transfer running"), std::string::npos)
      << error_message(busy.error());
  gate->leave();
  auto forked = fork(parent->id, 1);
  ASSERT_TRUE(forked) << to_string(forked.error());
  // Ready again after the fork: its gate and its child's are open.
  auto again = vms.op_gates()->enter(parent->id, "alice");
  ASSERT_NE(again, nullptr);
  again->leave();
  ASSERT_EQ(forked->size(), 1u);
  auto child = vms.op_gates()->enter(forked->front().id, "alice");
  ASSERT_NE(child, nullptr);
  child->leave();
}

TEST_F(ForkTest, MergeIntoADescendantTakesItsVmAndItsIdIsGone) {
  auto parent = create();
  auto other = create();
  ASSERT_TRUE(parent && other);
  auto children = fork(parent->id, 2);
  ASSERT_TRUE(children);
  auto grandchildren = fork((*children)[0].id, 1);
  ASSERT_TRUE(grandchildren);
  const auto winner = (*grandchildren)[0];

  auto itself = merge(parent->id, parent->id);
  ASSERT_FALSE(itself);
  EXPECT_EQ(code_of(itself.error()), ErrorKind::conflict);
  auto stranger = merge(parent->id, other->id);
  ASSERT_FALSE(stranger);
  EXPECT_EQ(code_of(stranger.error()), ErrorKind::conflict);
  EXPECT_NE(error_message(stranger.error()).find("not forked"), std::string::npos);

  // A grandchild is a descendant, even once its own parent is gone.
  destroy((*children)[0].id);
  auto merged = merge(parent->id, winner.id);
  ASSERT_TRUE(merged) << to_string(merged.error());
  EXPECT_EQ(merged->id, parent->id);
  EXPECT_EQ(merged->qemu_pid, winner.qemu_pid);
  settle();
  auto gone = lookup(winner.id);
  ASSERT_FALSE(gone);
  EXPECT_EQ(code_of(gone.error()), ErrorKind::not_found);
  auto after = lookup(parent->id);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->state, SandboxState::ready);
  EXPECT_EQ(after->qemu_pid, winner.qemu_pid);
  EXPECT_EQ(vms.size(), 3u) << "parent (the winner's VM), the other child, the stranger";
  auto* vm = driver.vm(winner.id);
  ASSERT_NE(vm, nullptr) << "the winner's VM lives on under the parent's id";
  EXPECT_EQ(vm->fake_agent().refreshed_hostnames.back(), parent->id);

  // Its exit is now the parent's death.
  vm->kill("killed by signal 9 (SIGKILL)");
  settle();
  auto dead = lookup(parent->id);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->state, SandboxState::dead);
}

} // namespace

namespace {

// A shutdown that arrives while a fork saves its parent: the fork answers
// unavailable (its children are never launched), the shutdown waits for
// that answer, and nothing is left: no VM, no fork snapshot.
TEST_F(ForkTest, AShutdownDuringAForkAnswersItAndLeavesNothing) {
  auto parent = create();
  ASSERT_TRUE(parent);
  std::optional<caf::expected<SandboxInfoList>> forked;
  std::optional<caf::expected<done_atom>> stopped;
  // Both requests reach the registry before either is worked on.
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        forked = co_await ask<SandboxInfoList>(system, registry, std::chrono::seconds(60),
                                               fork_atom::value, std::string("alice"), parent->id,
                                               std::uint32_t{2}, std::uint32_t{10});
      },
      boost::asio::detached);
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        stopped = co_await ask<done_atom>(system, registry, std::chrono::seconds(60),
                                          shutdown_atom::value);
      },
      boost::asio::detached);
  ASSERT_TRUE(settle_until([&] { return forked.has_value() && stopped.has_value(); }));
  ASSERT_FALSE(*forked);
  EXPECT_EQ(code_of(forked->error()), ErrorKind::unavailable) << to_string(forked->error());
  EXPECT_TRUE(*stopped);
  EXPECT_EQ(driver.restores_started, 1) << "the parent was resumed; no child was launched";
  EXPECT_TRUE(driver.live.empty()) << "a VM survived shutdown";
  EXPECT_EQ(vms.size(), 0u);
  EXPECT_EQ(vms.fork_snapshots(), 0u);
  registry = nullptr; // it stopped itself
}

} // namespace
