// Spaces (freeze, resume) on the fake driver.
#include "tests/hostd/actor_test_support.hpp"

using namespace vesicle::actor_test;

namespace {

// Spaces on the fake driver: the registry's and the sandbox actor's part
// (the real save and resume are in tests/sdk/test_spaces.py).
class SpacesTest : public ReaperRegistryTest {
protected:
  SpacesTest() {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    settle();
    // The blocking pool may still be deleting the last test's removed Space
    // (SpaceStore::remove): both removals race, so retry until it is gone.
    std::error_code ignored;
    for (int i = 0; i < 100 && std::filesystem::exists(spaces_dir()); ++i)
      std::filesystem::remove_all(spaces_dir(), ignored);
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
                                     std::uint32_t{10}, SecretValues{});
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
  EXPECT_EQ(code_of(lease.error()), ErrorKind::conflict);
  EXPECT_NE(error_message(lease.error()).find(info.space_id), std::string::npos)
      << error_message(lease.error());
  auto again = freeze(created->id);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), ErrorKind::conflict);

  // DELETE drops the record; the Space stays.
  ASSERT_TRUE(ask_registry<done_atom>(destroy_atom::value, std::string("alice"), created->id));
  EXPECT_TRUE(list().empty());
  EXPECT_EQ(spaces().size(), 1u);
  // Deleting the Space is its owner's: another key gets not_found.
  auto foreign =
      ask_registry<done_atom>(delete_space_atom::value, std::string("bob"), info.space_id);
  ASSERT_FALSE(foreign);
  EXPECT_EQ(code_of(foreign.error()), ErrorKind::not_found);
  ASSERT_TRUE(
      ask_registry<done_atom>(delete_space_atom::value, std::string("alice"), info.space_id));
  EXPECT_TRUE(spaces().empty());
  EXPECT_FALSE(std::filesystem::exists(spaces_dir() / info.space_id));
}

TEST_F(SpacesTest, AResumeStandsOnLinksOfItsOwnAndSpendsTheSpaceOnlyOnceReady) {
  auto created = create_with(300, 600, true);
  ASSERT_TRUE(created);
  auto frozen = freeze(created->id);
  ASSERT_TRUE(frozen) << to_string(frozen.error());
  const auto space_disk = spaces_dir() / frozen->space_id / "vm" / "disk.qcow2";

  auto foreign = resume("bob", frozen->space_id, false);
  ASSERT_FALSE(foreign);
  EXPECT_EQ(code_of(foreign.error()), ErrorKind::not_found) << "another key's Space";

  auto resumed = resume("alice", frozen->space_id, true);
  ASSERT_TRUE(resumed) << to_string(resumed.error());
  const auto& info = *resumed;
  EXPECT_NE(info.id, created->id);
  EXPECT_EQ(info.state, SandboxState::ready);
  EXPECT_EQ(info.source, "space");
  EXPECT_EQ(info.resumed_from, frozen->space_id);
  EXPECT_TRUE(info.spec.persistent);
  // A Space frozen from a fork snapshot restores share=off (not
  // restore_full), its VM standing on a link of the Space's disk in a
  // directory of its own: it outlives the Space, which is gone once the
  // sandbox is ready, and goes with the VM.
  EXPECT_TRUE(driver.full_restore_disks.empty());
  ASSERT_FALSE(driver.restore_disks.empty());
  const auto stood_on = driver.restore_disks.back();
  EXPECT_NE(stood_on, space_disk);
  EXPECT_TRUE(std::filesystem::exists(stood_on));
  EXPECT_FALSE(std::filesystem::exists(spaces_dir() / frozen->space_id));
  EXPECT_EQ(vms.size(), 1u);

  auto again = resume("alice", frozen->space_id, false);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), ErrorKind::not_found) << "a Space resumes once";

  ASSERT_TRUE(ask_registry<done_atom>(destroy_atom::value, std::string("alice"), info.id));
  EXPECT_TRUE(settle_until([&] { return !std::filesystem::exists(stood_on.parent_path()); }))
      << "the resumed VM's links outlived it";
}

TEST_F(SpacesTest, ACorruptedSpaceIsRefusedAndKept) {
  auto created = create_with(300, 600, true);
  ASSERT_TRUE(created);
  auto frozen = freeze(created->id);
  ASSERT_TRUE(frozen) << to_string(frozen.error());
  const auto state = spaces_dir() / frozen->space_id / "vm" / "state";
  std::filesystem::resize_file(state, std::filesystem::file_size(state) / 2);
  const int restores_before = driver.restores_started;

  auto resumed = resume("alice", frozen->space_id, false);
  ASSERT_FALSE(resumed);
  EXPECT_EQ(code_of(resumed.error()), ErrorKind::corrupted);
  EXPECT_NE(error_message(resumed.error()).find("state"), std::string::npos)
      << error_message(resumed.error());
  EXPECT_TRUE(driver.full_restore_disks.empty()) << "nothing was started";
  EXPECT_EQ(driver.restores_started, restores_before) << "nothing was started";
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
  EXPECT_EQ(code_of(refused.error()), ErrorKind::conflict);
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
  // The .partial directory is removed on the blocking pool: give it a moment.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!std::filesystem::is_empty(spaces_dir()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
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

} // namespace
