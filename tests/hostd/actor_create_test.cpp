// Create, delete, death, capacity, ownership and shutdown, on the fake driver.
#include "tests/hostd/actor_test_support.hpp"

#include <fstream>
#include <map>
#include <memory>

#include "actors/sandbox/host_room.hpp"

using namespace vesicle::actor_test;

namespace {

TEST_F(ActorTest, CreateBootsAVmAndAnswersWhenReady) {
  auto created = create();
  ASSERT_TRUE(created) << to_string(created.error());
  EXPECT_EQ(created->state, SandboxState::ready);
  EXPECT_EQ(created->owner, "alice");
  EXPECT_EQ(created->id.size(), 3u + 32u); // "sb-" and 128 random bits
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
  EXPECT_EQ(code_of(lease.error()), ErrorKind::conflict);
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
  EXPECT_EQ(code_of(created.error()), ErrorKind::internal);
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
  EXPECT_EQ(code_of(refused.error()), ErrorKind::capacity);
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
  EXPECT_EQ(code_of(lookup.error()), ErrorKind::not_found);
  auto lease = ask_registry<std::uint64_t>(begin_op_atom::value, bob, created->id);
  ASSERT_FALSE(lease);
  EXPECT_EQ(code_of(lease.error()), ErrorKind::not_found);
  auto destroyed = ask_registry<done_atom>(destroy_atom::value, bob, created->id);
  ASSERT_FALSE(destroyed);
  EXPECT_EQ(code_of(destroyed.error()), ErrorKind::not_found);
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
  EXPECT_EQ(code_of(lease.error()), ErrorKind::guest_died);
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
  EXPECT_EQ(code_of(again.error()), ErrorKind::not_found);
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

// Disk admission counts a running sandbox by what it may still write: the
// registry asks by each sandbox's QEMU pid, and one it cannot see counts
// whole. The free disk is this host's real one; the reserve leaves 5000 MiB
// of it to promise, so a moment's drift of the free figure changes nothing.
TEST_F(ActorTest, DiskAdmissionCountsARunningSandboxByWhatItHasNotWrittenYet) {
  HostRoomSettings room;
  room.disk_dir = test_templates_dir() / "run";
  room.meminfo = test_templates_dir() / "meminfo";
  std::ofstream(room.meminfo) << "MemAvailable: 1073741824 kB\n"; // memory is no limit here
  auto host = read_host_figures(room);
  ASSERT_TRUE(host) << host.error().message();
  if (host->disk_free_mib < 6000) GTEST_SKIP() << "needs 6000 MiB free in " << room.disk_dir;
  room.disk_reserve_mib = host->disk_free_mib - 5000;
  auto written = std::make_shared<std::map<std::int32_t, std::uint64_t>>();
  auto asked = std::make_shared<std::vector<std::int32_t>>();
  room.disk_in_use_mib = [written, asked](std::int32_t pid) -> std::optional<std::uint64_t> {
    asked->push_back(pid);
    auto found = written->find(pid);
    if (found == written->end()) return std::nullopt;
    return found->second;
  };
  caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
  settle();
  RegistrySettings settings;
  settings.max_sandboxes = 3;
  settings.host_room = room;
  registry = spawn_registry(system, vms, settings);
  settle();

  SandboxSpec spec;
  spec.memory_mib = 512;
  spec.disk_mib = 3000; // promised 3001 with its qcow2 tables
  auto first = ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), spec);
  ASSERT_TRUE(first) << to_string(first.error());
  // Nothing known of the first one's overlay: 3001 of ~5000 stay promised.
  auto refused = ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), spec);
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), ErrorKind::capacity);
  EXPECT_NE(error_message(refused.error()).find("needs 3001 MiB of host disk"), std::string::npos)
      << error_message(refused.error());
  EXPECT_NE(error_message(refused.error()).find("3001 MiB that running sandboxes may still write"),
            std::string::npos)
      << error_message(refused.error());
  EXPECT_EQ(*asked, std::vector<std::int32_t>{first->qemu_pid});
  // Its overlay holds 2500 MiB, out of the free disk already: 501 more.
  (*written)[first->qemu_pid] = 2500;
  auto second = ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), spec);
  ASSERT_TRUE(second) << to_string(second.error());
}

} // namespace
