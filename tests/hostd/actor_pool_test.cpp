// The warm pool and its templates, on the fake driver.
#include "tests/hostd/actor_test_support.hpp"

using namespace vesicle::actor_test;

namespace {

// -- the warm pool ----------------------------------------------------------

class PoolTest : public ActorTest {
protected:
  // Replaces the fixture's registry with one that has a pool for the size
  // create() asks for (2 vCPUs, 512 MiB).
  void start_pool(std::uint32_t min_ready, std::uint32_t max) {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    settle();
    TemplateSpec spec;
    spec.vcpus = 2;
    spec.memory_mib = 512;
    spec.min_ready = min_ready;
    spec.max = max;
    spec.preload_modules = {"numpy"};
    spec.key = vms.template_key(spec);
    pool = spawn_pool(system, spec, vms);
    RegistrySettings settings;
    settings.max_sandboxes = 8;
    settings.pools.push_back({spec, pool});
    registry = spawn_registry(system, vms, settings);
  }
  ~PoolTest() override {
    if (pool) caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  }
  PoolInfo info() {
    auto result = ask_actor<PoolInfo>(pool, pool_info_atom::value);
    EXPECT_TRUE(result);
    return result ? *result : PoolInfo{};
  }
  bool filled(std::uint32_t ready) {
    return settle_until([&] {
      auto now = info();
      return now.ready == ready && now.restoring == 0;
    });
  }

  pool_actor pool;
};

TEST_F(PoolTest, TemplateIsBuiltOnceAndThePoolFills) {
  start_pool(2, 8);
  ASSERT_TRUE(filled(2)) << info().template_state;
  EXPECT_EQ(info().template_state, "ready");
  EXPECT_EQ(driver.saves, 1);
  EXPECT_EQ(driver.boots_started, 1) << "only the template VM boots";
  EXPECT_EQ(driver.restores_started, 2);
  EXPECT_EQ(vms.pool_size(), 2u);
}

TEST_F(PoolTest, APreloadModuleThatFailsToImportFailsTheTemplateAndSaysWhich) {
  driver.fail_python_cell = "import sys; import numpy";
  start_pool(1, 8);
  ASSERT_TRUE(settle_until([&] { return info().template_state != "building"; }));
  const auto state = info().template_state;
  EXPECT_EQ(state.rfind("failed: ", 0), 0u) << state;
  EXPECT_NE(state.find("the fake driver fails this cell"), std::string::npos) << state;
  EXPECT_NE(state.find("import numpy"), std::string::npos) << state;
  EXPECT_NE(state.find("check preload_modules"), std::string::npos) << state;
  EXPECT_EQ(driver.saves, 0);
  EXPECT_TRUE(driver.live.empty()) << "the template VM is not left running";
}

TEST_F(PoolTest, CreateTakesAWaitingVmAndThePoolRefills) {
  start_pool(2, 8);
  ASSERT_TRUE(filled(2));
  auto created = create();
  ASSERT_TRUE(created) << to_string(created.error());
  EXPECT_EQ(created->source, "pool");
  EXPECT_EQ(created->state, SandboxState::ready);
  ASSERT_TRUE(filled(2));
  auto now = info();
  EXPECT_EQ(now.hits, 1u);
  EXPECT_EQ(now.misses, 0u);
  EXPECT_EQ(now.in_use, 1u);
  EXPECT_EQ(driver.restores_started, 3);
  // The handed-over VM now belongs to the sandbox: its death is the sandbox's.
  auto* vm = driver.vm(vms.find(created->id)->id());
  ASSERT_NE(vm, nullptr);
  // Restored, it ran its first cell under a throwaway identity (so that
  // the sandbox's first exec finds that path translated), then got a fresh
  // one named after the sandbox as it was handed out.
  ASSERT_EQ(vm->fake_agent().refreshed_hostnames.size(), 2u);
  EXPECT_EQ(vm->fake_agent().refreshed_hostnames[0].rfind("pool-", 0), 0u);
  EXPECT_EQ(vm->fake_agent().refreshed_hostnames[1], created->id);
  EXPECT_EQ(vm->fake_agent().python_cells, std::vector<std::string>{kPoolFirstCell});
  vm->kill("killed by signal 9 (SIGKILL)");
  settle();
  auto listed = list();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].state, SandboxState::dead);
  EXPECT_EQ(info().replaced, 0u);
}

TEST_F(PoolTest, EmptyPoolRestoresOnDemandAndOtherSizesColdBoot) {
  start_pool(0, 8);
  ASSERT_TRUE(settle_until([&] { return info().template_state == "ready"; }));
  auto restored = create();
  ASSERT_TRUE(restored);
  EXPECT_EQ(restored->source, "restore");
  EXPECT_EQ(info().misses, 1u);
  SandboxSpec other;
  other.memory_mib = 768;
  auto booted = ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), other);
  ASSERT_TRUE(booted);
  EXPECT_EQ(booted->source, "boot");
  EXPECT_EQ(info().misses, 1u) << "another size does not touch the pool";
}

TEST_F(PoolTest, AWaitingVmThatDiesIsReplaced) {
  start_pool(2, 8);
  ASSERT_TRUE(filled(2));
  FakeVm* victim = nullptr;
  for (const auto& id : driver.live)
    if (id.rfind("pool-", 0) == 0) victim = driver.vm(id);
  ASSERT_NE(victim, nullptr);
  victim->kill("killed by signal 9 (SIGKILL)");
  ASSERT_TRUE(filled(2));
  EXPECT_EQ(info().replaced, 1u);
  EXPECT_EQ(driver.restores_started, 3);
}

TEST_F(PoolTest, NeverMoreThanMaxInTotal) {
  start_pool(2, 3);
  ASSERT_TRUE(filled(2));
  ASSERT_TRUE(create());
  ASSERT_TRUE(create());
  // Two in use, so one more may wait, not two.
  ASSERT_TRUE(filled(1));
  EXPECT_EQ(info().in_use, 2u);
  EXPECT_EQ(vms.pool_size(), 1u);
}

TEST_F(PoolTest, ATemplateThatCannotBeSavedMeansColdBoots) {
  driver.fail_saves = true;
  start_pool(2, 8);
  ASSERT_TRUE(settle_until([&] { return info().template_state.rfind("failed", 0) == 0; }));
  EXPECT_TRUE(driver.live.empty()) << "the template VM must not be left running";
  auto created = create();
  ASSERT_TRUE(created);
  EXPECT_EQ(created->source, "boot");
  EXPECT_EQ(vms.pool_size(), 0u);
}

TEST_F(PoolTest, FailedRestoresAreRetriedNotLooped) {
  driver.fail_restores = true;
  start_pool(2, 8);
  ASSERT_TRUE(settle_until([&] { return driver.restores_started >= 1; }));
  settle();
  // The retry waits (a second, doubling): no tight loop of restores.
  EXPECT_EQ(driver.restores_started, 1);
  EXPECT_EQ(info().ready, 0u);
}

TEST_F(PoolTest, AFirstCellThatRaisesStillLeavesTheVmWaiting) {
  // As in a saved template whose cells broke `os`: the agent answered, so
  // the VM is sound and waits.
  driver.fail_python_cell = kPoolFirstCell;
  start_pool(1, 8);
  ASSERT_TRUE(filled(1));
  auto created = create();
  ASSERT_TRUE(created) << to_string(created.error());
  EXPECT_EQ(created->source, "pool");
}

TEST_F(PoolTest, AVmWhoseAgentFailsItsFirstCellIsDiscardedAndNeverHandedOut) {
  driver.die_on_python_cell = kPoolFirstCell;
  start_pool(1, 8);
  auto pool_vm_lives = [&] {
    for (const auto& id : driver.live)
      if (id.rfind("pool-", 0) == 0) return true;
    return false;
  };
  ASSERT_TRUE(settle_until([&] { return driver.restores_started >= 1 && !pool_vm_lives(); }));
  settle();
  EXPECT_EQ(info().ready, 0u);
  EXPECT_EQ(vms.pool_size(), 0u);
  // A create meanwhile takes no such VM: it restores one on demand.
  auto created = create();
  ASSERT_TRUE(created) << to_string(created.error());
  EXPECT_EQ(created->source, "restore");
}

} // namespace
