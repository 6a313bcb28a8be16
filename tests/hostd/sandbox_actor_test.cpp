// The sandbox and registry actors on CAF's deterministic test scheduler,
// with a fake VMM driver on an io_context polled by the test: every step
// runs to quiescence (both sides) before the test looks, no sleeps.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <gtest/gtest.h>

#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "actors/ask.hpp"
#include "tests/hostd/fake_driver.hpp"

using namespace vesicle;
using vesicle::testing::FakeDriver;
using vesicle::testing::FakeVm;

namespace {

caf::actor_system_config& test_config(caf::actor_system_config& config) {
  register_caf_types(config);
  config.set("scheduler.policy", caf::atom("testing"));
  config.set("logger.console", caf::atom("none"));
  config.set("logger.file-verbosity", caf::atom("quiet"));
  return config;
}

// Templates go to a directory of this test process, removed at exit.
const std::filesystem::path& test_templates_dir() {
  static const std::filesystem::path dir = [] {
    auto path = std::filesystem::temp_directory_path() /
                ("vesicle-actor-test-" + std::to_string(::getpid()));
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                      ("vesicle-actor-test-" + std::to_string(::getpid())),
                                  ec);
    });
    return path;
  }();
  return dir;
}

VmSettings test_vm_settings() {
  VmSettings settings;
  settings.templates_dir = test_templates_dir() / "templates";
  settings.shm_dir = test_templates_dir() / "shm";
  settings.spaces_dir = test_templates_dir() / "spaces";
  settings.runtime_dir = test_templates_dir() / "run";
  std::filesystem::create_directories(settings.runtime_dir);
  return settings;
}

errc code_of(const caf::error& error) {
  EXPECT_EQ(error.category(), kErrorCategory) << to_string(error);
  return static_cast<errc>(error.code());
}

class ActorTest : public ::testing::Test {
protected:
  ActorTest()
      : system(test_config(config)),
        scheduler(dynamic_cast<caf::scheduler::test_coordinator&>(system.scheduler())),
        driver(io.get_executor()), vms(io.get_executor(), driver, test_vm_settings()) {
    system.await_actors_before_shutdown(false);
    start_registry(3);
  }
  ~ActorTest() override {
    if (registry) caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    // Let every VM's coroutine finish before the driver goes away.
    vms.destroy_all();
    settle();
  }

  void start_registry(std::uint32_t max) {
    RegistrySettings settings;
    settings.max_sandboxes = max;
    registry = spawn_registry(system, vms, settings);
    settle();
  }

  // Runs the asio side and the actors until neither has anything to do.
  void settle() {
    for (int round = 0; round < 10'000; ++round) {
      io.restart();
      auto work = io.poll();
      work += scheduler.run();
      if (work == 0) return;
    }
    ADD_FAILURE() << "the actors and the asio side never went quiet";
  }

  // Settles until `done` holds, for work that leaves both sides for a
  // while (the template check runs on its own thread).
  template <class Predicate> bool settle_until(Predicate done) {
    for (int round = 0; round < 500; ++round) {
      settle();
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // Asks the registry through the same bridge hostd's handlers use.
  template <class R, class... Ts> caf::expected<R> ask_registry(Ts... args) {
    return ask_actor<R>(registry, args...);
  }
  template <class R, class Handle, class... Ts>
  caf::expected<R> ask_actor(Handle actor, Ts... args) {
    std::optional<caf::expected<R>> answer;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          answer = co_await ask<R>(system, actor, std::chrono::seconds(5), args...);
        },
        boost::asio::detached);
    // Most answers come within one settle; some wait for work on another
    // thread (a freeze or resume hashes files on VmHost's checker thread).
    if (!settle_until([&] { return answer.has_value(); })) {
      ADD_FAILURE() << "no answer: the request hangs";
      return caf::make_error(caf::sec::request_timeout);
    }
    return std::move(*answer);
  }

  caf::expected<SandboxInfo> create(const std::string& owner = "alice") {
    SandboxSpec spec;
    spec.memory_mib = 512;
    return ask_registry<SandboxInfo>(create_atom::value, owner, spec);
  }
  // Starts a create without waiting for its answer (for held boots).
  std::shared_ptr<std::optional<caf::expected<SandboxInfo>>> create_async(std::string owner) {
    auto answer = std::make_shared<std::optional<caf::expected<SandboxInfo>>>();
    boost::asio::co_spawn(
        io,
        [this, answer, owner]() -> boost::asio::awaitable<void> {
          // A named spec, not SandboxSpec{}: g++ 12 destroys a braced
          // temporary passed by value to a coroutine twice.
          SandboxSpec spec;
          *answer = co_await ask<SandboxInfo>(system, registry, std::chrono::seconds(60),
                                                     create_atom::value, owner, spec);
        },
        boost::asio::detached);
    settle();
    return answer;
  }
  SandboxInfoList list(const std::string& owner = "alice") {
    auto result = ask_registry<SandboxInfoList>(list_atom::value, owner);
    EXPECT_TRUE(result) << to_string(result.error());
    return result ? *result : SandboxInfoList{};
  }
  CapacityInfo capacity() {
    auto result = ask_registry<CapacityInfo>(capacity_atom::value);
    EXPECT_TRUE(result);
    return result ? *result : CapacityInfo{};
  }

  caf::actor_system_config config;
  caf::actor_system system;
  caf::scheduler::test_coordinator& scheduler;
  boost::asio::io_context io;
  FakeDriver driver;
  VmHost vms;
  registry_actor registry;
};

TEST_F(ActorTest, CreateBootsAVmAndAnswersWhenReady) {
  auto created = create();
  ASSERT_TRUE(created) << to_string(created.error());
  EXPECT_EQ(created->state, SandboxState::ready);
  EXPECT_EQ(created->owner, "alice");
  EXPECT_EQ(created->id.size(), 15u);
  EXPECT_EQ(created->id.rfind("sb-", 0), 0u);
  EXPECT_EQ(created->spec.memory_mib, 512u);
  EXPECT_GT(created->qemu_pid, 0);
  ASSERT_NE(driver.vm(created->id), nullptr);
  EXPECT_EQ(driver.vm(created->id)->config().memory_mib, 512u);
  EXPECT_EQ(vms.size(), 1u);

  auto looked_up = ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(looked_up);
  EXPECT_EQ(looked_up->state, SandboxState::ready);
  auto room = capacity();
  EXPECT_EQ(room.ready, 1u);
  EXPECT_EQ(room.available(), 2u);
}

TEST_F(ActorTest, WhileBootingOperationsAreRefusedWithATypedError) {
  driver.hold_boots = true;
  auto pending = create_async("alice");
  EXPECT_FALSE(pending->has_value()) << "create answered before the VM booted";
  auto sandboxes = list();
  ASSERT_EQ(sandboxes.size(), 1u);
  EXPECT_EQ(sandboxes[0].state, SandboxState::booting);
  EXPECT_EQ(capacity().booting, 1u);

  auto lease =
      ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), sandboxes[0].id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), errc::failed_precondition);
  EXPECT_NE(error_message(lease.error()).find("still booting"), std::string::npos);

  driver.release_boots();
  settle();
  ASSERT_TRUE(pending->has_value());
  ASSERT_TRUE(**pending);
  EXPECT_EQ((**pending)->state, SandboxState::ready);
  auto now =
      ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), sandboxes[0].id);
  EXPECT_TRUE(now);
}

TEST_F(ActorTest, FailedBootLeavesNothingBehind) {
  driver.fail_boots = true;
  auto created = create();
  ASSERT_FALSE(created);
  EXPECT_EQ(code_of(created.error()), errc::boot_failed);
  EXPECT_NE(error_message(created.error()).find("the fake driver was told to fail"),
            std::string::npos);
  EXPECT_TRUE(list().empty());
  EXPECT_EQ(capacity().available(), 3u);
  EXPECT_EQ(vms.size(), 0u);
}

TEST_F(ActorTest, CapacityIsEnforcedAndFreedByDelete) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto created = create();
    ASSERT_TRUE(created);
    ids.push_back(created->id);
  }
  auto refused = create();
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::no_capacity);
  EXPECT_NE(error_message(refused.error()).find("retry later"), std::string::npos);
  EXPECT_EQ(driver.boots_started, 3) << "a refused create must not boot anything";

  auto deleted = ask_registry<done_atom>(destroy_atom::value, std::string("alice"), ids[0]);
  ASSERT_TRUE(deleted);
  EXPECT_TRUE(create());
}

TEST_F(ActorTest, AnotherKeysSandboxIsNotFound) {
  auto created = create("alice");
  ASSERT_TRUE(created);
  const std::string bob = "bob";
  auto lookup = ask_registry<SandboxInfo>(lookup_atom::value, bob, created->id);
  ASSERT_FALSE(lookup);
  EXPECT_EQ(code_of(lookup.error()), errc::not_found);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, bob, created->id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), errc::not_found);
  auto destroyed = ask_registry<done_atom>(destroy_atom::value, bob, created->id);
  ASSERT_FALSE(destroyed);
  EXPECT_EQ(code_of(destroyed.error()), errc::not_found);
  EXPECT_TRUE(list(bob).empty());
  // Unknown ids answer exactly like foreign ones.
  auto unknown = ask_registry<SandboxInfo>(lookup_atom::value, bob, std::string("sb-000000000000"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(error_message(unknown.error()),
            "no sandbox sb-000000000000 for this key; list yours with GET /v1/sandboxes");
  // Alice's sandbox is untouched.
  EXPECT_NE(driver.vm(created->id), nullptr);
  EXPECT_EQ(list("alice").size(), 1u);
}

TEST_F(ActorTest, VmDeathMarksDeadReclaimsAndFreesCapacity) {
  auto created = create();
  ASSERT_TRUE(created);
  auto* vm = driver.vm(created->id);
  ASSERT_NE(vm, nullptr);
  vm->kill("killed by signal 9 (SIGKILL)");
  settle();

  auto info = ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->state, SandboxState::dead);
  EXPECT_NE(info->dead_reason.find("SIGKILL"), std::string::npos) << info->dead_reason;
  EXPECT_EQ(info->qemu_pid, 0);
  // Reclaimed: destroy() ran (files removed) and the Vm object is gone.
  EXPECT_EQ(vms.size(), 0u);
  EXPECT_EQ(driver.vm(created->id), nullptr);
  EXPECT_TRUE(driver.live.empty());
  auto room = capacity();
  EXPECT_EQ(room.dead, 1u);
  EXPECT_EQ(room.available(), 3u);

  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), errc::sandbox_died);
  EXPECT_NE(error_message(lease.error()).find("SIGKILL"), std::string::npos);

  // The dead record stays listed until DELETE.
  EXPECT_EQ(list().size(), 1u);
  auto deleted = ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(deleted);
  EXPECT_TRUE(list().empty());
}

TEST_F(ActorTest, ADeathSeenByAHandlerIsRecordedBeforeTheReply) {
  auto created = create();
  ASSERT_TRUE(created);
  auto reported = ask_registry<done_atom>(vm_exited_atom::value, std::string("alice"), created->id,
                                          std::string("agent channel closed"));
  ASSERT_TRUE(reported);
  auto info = ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->state, SandboxState::dead);
  EXPECT_NE(info->dead_reason.find("agent channel closed"), std::string::npos);
  EXPECT_EQ(vms.size(), 0u) << "the VM of a dead sandbox must be reclaimed";
}

TEST_F(ActorTest, DeleteDuringBootWaitsForTheBootThenTearsDown) {
  driver.hold_boots = true;
  auto pending = create_async("alice");
  auto id = list().at(0).id;
  std::optional<caf::expected<done_atom>> deleted;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        deleted = co_await ask<done_atom>(system, registry, std::chrono::seconds(60),
                                                 destroy_atom::value, std::string("alice"), id);
      },
      boost::asio::detached);
  settle();
  EXPECT_FALSE(deleted.has_value()) << "delete answered while the VM was still booting";
  driver.release_boots();
  settle();
  ASSERT_TRUE(deleted.has_value());
  EXPECT_TRUE(*deleted);
  ASSERT_TRUE(pending->has_value());
  EXPECT_FALSE(**pending) << "the create must fail: its sandbox was deleted while booting";
  EXPECT_TRUE(list().empty());
  EXPECT_EQ(vms.size(), 0u);
  EXPECT_TRUE(driver.live.empty());
}

TEST_F(ActorTest, DeleteKillsTheVmAndRemovesItsFiles) {
  auto created = create();
  ASSERT_TRUE(created);
  auto* vm = driver.vm(created->id);
  ASSERT_NE(vm, nullptr);
  auto deleted = ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(deleted);
  EXPECT_TRUE(driver.live.empty());
  EXPECT_EQ(vms.size(), 0u);
  auto again = ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::not_found);
}

TEST_F(ActorTest, LeasesAreHandedOutOnlyWhileReady) {
  auto created = create();
  ASSERT_TRUE(created);
  auto first = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  auto second =
      ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  EXPECT_NE(*first, *second);
  caf::anon_send(registry, end_op_atom::value, std::string("alice"), created->id, *first);
  settle();
}

TEST_F(ActorTest, ShutdownDestroysEverythingAndRefusesCreates) {
  ASSERT_TRUE(create("alice"));
  ASSERT_TRUE(create("bob"));
  driver.hold_boots = true;
  auto pending = create_async("carol");
  EXPECT_EQ(driver.pending_boots(), 1u);
  std::optional<caf::expected<done_atom>> done;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        done = co_await ask<done_atom>(system, registry, std::chrono::seconds(60),
                                              shutdown_atom::value);
      },
      boost::asio::detached);
  settle();
  EXPECT_FALSE(done.has_value()) << "shutdown must wait for the booting VM";
  driver.release_boots();
  settle();
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(*done);
  EXPECT_TRUE(driver.live.empty()) << "a VM survived shutdown";
  EXPECT_EQ(vms.size(), 0u);
  ASSERT_TRUE(pending->has_value());
  EXPECT_FALSE(**pending);
  registry = nullptr; // it stopped itself
}

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
  // It got a fresh identity named after the sandbox before it was handed out.
  EXPECT_EQ(vm->fake_agent().refreshed_hostnames, std::vector<std::string>{created->id});
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

} // namespace

// The reaper as the registry runs it, on a clock the test moves, and the
// per-key concurrency cap (issue 6).
class ReaperRegistryTest : public ActorTest {
protected:
  ReaperRegistryTest() {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    settle();
    RegistrySettings settings;
    settings.max_sandboxes = 8;
    settings.reaper_settings.clock = [this] { return now_ms; };
    settings.reaper_settings.timers = false;
    registry = spawn_registry(system, vms, settings);
    settle();
  }

  caf::expected<SandboxInfo> create_with(std::uint32_t idle_s, std::uint32_t lifetime_s,
                                         bool persistent = false) {
    SandboxSpec spec;
    spec.memory_mib = 512;
    spec.idle_timeout_s = idle_s;
    spec.max_lifetime_s = lifetime_s;
    spec.persistent = persistent;
    return ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), spec);
  }
  // Moves the clock and lets the reaper look.
  void advance_s(double seconds) {
    now_ms += static_cast<std::int64_t>(seconds * 1000);
    caf::anon_send(registry, reap_atom::value);
    settle();
  }
  SandboxInfo lookup(const std::string& id) {
    auto info = ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), id);
    EXPECT_TRUE(info) << to_string(info.error());
    return info ? *info : SandboxInfo{};
  }

  std::int64_t now_ms = unix_now_ms();
};

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
  EXPECT_EQ(code_of(lease.error()), errc::sandbox_died);
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

// Spaces on the fake driver: the registry's and the sandbox actor's part
// (the real save and resume are in tests/sdk/test_spaces.py).
class SpacesTest : public ReaperRegistryTest {
protected:
  SpacesTest() {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    settle();
    std::filesystem::remove_all(spaces_dir());
    std::filesystem::create_directories(spaces_dir());
    driver.write_full_saves = true;
    RegistrySettings settings;
    settings.max_sandboxes = 8;
    settings.reaper_settings.clock = [this] { return now_ms; };
    settings.reaper_settings.timers = false;
    settings.spaces_dir = spaces_dir();
    registry = spawn_registry(system, vms, settings);
    settle();
  }
  static std::filesystem::path spaces_dir() { return test_templates_dir() / "spaces"; }
  caf::expected<SpaceInfo> freeze(const std::string& id) {
    return ask_registry<SpaceInfo>(freeze_atom::value, std::string("alice"), id);
  }
  caf::expected<SandboxInfo> resume(const std::string& owner, const std::string& space_id,
                                    bool persistent) {
    return ask_registry<SandboxInfo>(resume_atom::value, owner, space_id, persistent,
                                     std::uint32_t{10});
  }
  // The reaper's freeze answers nobody: settle until the record says frozen.
  bool settle_until_frozen(const std::string& id) {
    return settle_until([&] { return lookup(id).state == SandboxState::frozen; });
  }
  SpaceInfoList spaces(const std::string& owner = "alice") {
    auto listed = ask_registry<SpaceInfoList>(spaces_atom::value, owner);
    EXPECT_TRUE(listed) << to_string(listed.error());
    return listed ? *listed : SpaceInfoList{};
  }
};

TEST_F(SpacesTest, TheReaperFreezesAPersistentSandboxAndItsRecordSaysWhere) {
  now_ms = unix_now_ms();
  auto created = create_with(5, 600, true);
  ASSERT_TRUE(created);
  advance_s(5.5);
  ASSERT_TRUE(settle_until_frozen(created->id));
  auto info = lookup(created->id);
  auto listed = spaces();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(info.space_id, listed[0].space_id);
  EXPECT_EQ(listed[0].reason, "idle");
  EXPECT_EQ(listed[0].sandbox_id, created->id);
  EXPECT_TRUE(listed[0].spec.persistent);
  EXPECT_TRUE(spaces("bob").empty()) << "another key sees none";
  EXPECT_EQ(vms.size(), 0u) << "the frozen sandbox holds no VM";
  EXPECT_TRUE(driver.live.empty());
  EXPECT_EQ(capacity().available(), 8u);
  EXPECT_EQ(capacity().frozen, 1u);
  // No .partial directory is left, the Space's own is whole.
  EXPECT_TRUE(std::filesystem::exists(spaces_dir() / info.space_id / "space"));
  EXPECT_TRUE(std::filesystem::exists(spaces_dir() / info.space_id / "vm" / "manifest"));
  EXPECT_FALSE(std::filesystem::exists(spaces_dir() / (info.space_id + ".partial")));

  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), errc::failed_precondition);
  EXPECT_NE(error_message(lease.error()).find(info.space_id), std::string::npos)
      << error_message(lease.error());
  auto again = freeze(created->id);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::failed_precondition);

  // DELETE drops the record; the Space stays.
  ASSERT_TRUE(ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id));
  EXPECT_TRUE(list().empty());
  EXPECT_EQ(spaces().size(), 1u);
  // Deleting the Space is its owner's: another key gets not_found.
  auto foreign =
      ask_registry<done_atom>(delete_space_atom::value, std::string("bob"), info.space_id);
  ASSERT_FALSE(foreign);
  EXPECT_EQ(code_of(foreign.error()), errc::not_found);
  ASSERT_TRUE(
      ask_registry<done_atom>(delete_space_atom::value, std::string("alice"), info.space_id));
  EXPECT_TRUE(spaces().empty());
  EXPECT_FALSE(std::filesystem::exists(spaces_dir() / info.space_id));
}

TEST_F(SpacesTest, AResumeStartsFromACopyOfTheDiskAndSpendsTheSpaceOnlyOnceReady) {
  auto created = create_with(300, 600, true);
  ASSERT_TRUE(created);
  auto frozen = freeze(created->id);
  ASSERT_TRUE(frozen) << to_string(frozen.error());
  const auto space_disk = spaces_dir() / frozen->space_id / "vm" / "disk.qcow2";

  auto foreign = resume("bob", frozen->space_id, false);
  ASSERT_FALSE(foreign);
  EXPECT_EQ(code_of(foreign.error()), errc::not_found) << "another key's Space";

  auto resumed = resume("alice", frozen->space_id, true);
  ASSERT_TRUE(resumed) << to_string(resumed.error());
  const auto& info = *resumed;
  EXPECT_NE(info.id, created->id);
  EXPECT_EQ(info.state, SandboxState::ready);
  EXPECT_EQ(info.source, "space");
  EXPECT_EQ(info.resumed_from, frozen->space_id);
  EXPECT_TRUE(info.spec.persistent);
  // The VM was given a copy, never the Space's own disk; the copy and the
  // Space are gone once the sandbox is ready.
  ASSERT_EQ(driver.full_restore_disks.size(), 1u);
  EXPECT_NE(driver.full_restore_disks[0], space_disk);
  EXPECT_FALSE(std::filesystem::exists(driver.full_restore_disks[0]));
  EXPECT_FALSE(std::filesystem::exists(spaces_dir() / frozen->space_id));
  EXPECT_EQ(vms.size(), 1u);

  auto again = resume("alice", frozen->space_id, false);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::not_found) << "a Space resumes once";
}

TEST_F(SpacesTest, ACorruptedSpaceIsRefusedAndKept) {
  auto created = create_with(300, 600, true);
  ASSERT_TRUE(created);
  auto frozen = freeze(created->id);
  ASSERT_TRUE(frozen) << to_string(frozen.error());
  const auto state = spaces_dir() / frozen->space_id / "vm" / "state";
  std::filesystem::resize_file(state, std::filesystem::file_size(state) / 2);

  auto resumed = resume("alice", frozen->space_id, false);
  ASSERT_FALSE(resumed);
  EXPECT_EQ(code_of(resumed.error()), errc::space_corrupted);
  EXPECT_NE(error_message(resumed.error()).find("state"), std::string::npos)
      << error_message(resumed.error());
  EXPECT_TRUE(driver.full_restore_disks.empty()) << "nothing was started";
  EXPECT_EQ(spaces().size(), 1u) << "the Space is kept";
  EXPECT_EQ(capacity().available(), 8u) << "the placeholder is gone";
}

TEST_F(SpacesTest, AFreezeRefusedWhileAnOperationRunsLeavesTheSandboxAsItWas) {
  auto created = create_with(300, 600);
  ASSERT_TRUE(created);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id);
  ASSERT_TRUE(lease);
  auto refused = freeze(created->id);
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::failed_precondition);
  caf::anon_send(registry, end_op_atom::value, std::string("alice"), created->id, *lease);
  settle();
  EXPECT_TRUE(spaces().empty());
  // Once it is idle the freeze goes through, and the sandbox can serve no more.
  auto frozen = freeze(created->id);
  ASSERT_TRUE(frozen) << to_string(frozen.error());
  EXPECT_EQ(frozen->reason, "freeze");
  EXPECT_EQ(lookup(created->id).state, SandboxState::frozen);
}

TEST_F(SpacesTest, AFailedSaveLeavesTheSandboxRunningAndNoSpace) {
  auto created = create_with(300, 600, true);
  ASSERT_TRUE(created);
  driver.fail_saves = true;
  auto failed = freeze(created->id);
  ASSERT_FALSE(failed);
  EXPECT_NE(error_message(failed.error()).find("told to fail"), std::string::npos);
  EXPECT_EQ(lookup(created->id).state, SandboxState::ready);
  EXPECT_TRUE(spaces().empty());
  EXPECT_TRUE(std::filesystem::is_empty(spaces_dir())) << "no .partial directory left";
  // Not held any more: operations work again.
  EXPECT_TRUE(ask_registry<std::uint64_t>(begin_op_atom::value, std::string("alice"), created->id));
}

TEST_F(SpacesTest, ShutdownFreezesPersistentSandboxesAndDestroysTheRest) {
  auto persistent = create_with(300, 600, true);
  auto ephemeral = create_with(300, 600, false);
  ASSERT_TRUE(persistent && ephemeral);
  ASSERT_TRUE(ask_registry<done_atom>(shutdown_atom::value));
  settle();
  EXPECT_EQ(vms.size(), 0u);
  EXPECT_TRUE(driver.live.empty());
  SpaceStore store(spaces_dir());
  auto listed = store.list("alice");
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].sandbox_id, persistent->id);
  EXPECT_EQ(listed[0].reason, "shutdown");
  registry = nullptr; // it stopped
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
  EXPECT_EQ(code_of(third.error()), errc::quota_exceeded);
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
  EXPECT_EQ(code_of(busy.error()), errc::failed_precondition);
  EXPECT_NE(error_message(busy.error()).find("running"), std::string::npos);
  anon_send(registry, end_op_atom::value, std::string("alice"), parent->id, *lease);
  settle();

  auto too_many = fork(parent->id, 6);
  ASSERT_FALSE(too_many);
  EXPECT_EQ(code_of(too_many.error()), errc::no_capacity);
  auto capped = ask_registry<SandboxInfoList>(fork_atom::value, std::string("alice"), parent->id,
                                              std::uint32_t{2}, std::uint32_t{2});
  ASSERT_FALSE(capped);
  EXPECT_EQ(code_of(capped.error()), errc::quota_exceeded);
  auto zero = fork(parent->id, 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(code_of(zero.error()), errc::invalid_argument);
  auto stranger = fork(parent->id, 1, "bob");
  ASSERT_FALSE(stranger);
  EXPECT_EQ(code_of(stranger.error()), errc::not_found);
  EXPECT_EQ(driver.saves, 0);
  EXPECT_EQ(list().size(), 1u);
  EXPECT_TRUE(fork(parent->id, 1));
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
  EXPECT_EQ(code_of(itself.error()), errc::failed_precondition);
  auto stranger = merge(parent->id, other->id);
  ASSERT_FALSE(stranger);
  EXPECT_EQ(code_of(stranger.error()), errc::failed_precondition);
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
  EXPECT_EQ(code_of(gone.error()), errc::not_found);
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
