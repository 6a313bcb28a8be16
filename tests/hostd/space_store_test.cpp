// The Space files: their format, and the store's view of the spaces
// directory (ownership, unfinished freezes).
#include "actors/sandbox/space_store.hpp"

#include <chrono>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/hostd/retrying_temp_dir.hpp"

namespace vesicle {
namespace {

namespace fs = std::filesystem;

SpaceInfo sample_space(const std::string& owner) {
  SpaceInfo space;
  space.space_id = new_space_id();
  space.owner = owner;
  space.sandbox_id = "sb-0123456789ab";
  space.spec.template_name = "default";
  space.spec.egress = true;
  space.spec.egress_allow = {"pypi.org", "*.example.com"};
  space.spec.persistent = true;
  space.spec.vcpus = 1;
  space.spec.memory_mib = 512;
  space.spec.disk_mib = 1024;
  space.spec.idle_timeout_s = 4;
  space.spec.max_lifetime_s = 600;
  space.created_at_ms = 1700000000123;
  space.frozen_at_ms = 1700000004567;
  space.reason = "idle";
  space.machine_id = "0123456789abcdef0123456789abcdef";
  space.images_fingerprint = "a1b2c3d4e5f6";
  space.state_bytes = 123456789;
  space.disk_bytes = 98765;
  return space;
}

// A Space as a freeze leaves it: the partial dir with a VM dir, committed.
void write_space(const SpaceStore& store, const SpaceInfo& space) {
  fs::create_directories(store.partial_dir(space.space_id) / "vm");
  auto committed = store.commit(space);
  ASSERT_TRUE(committed) << committed.error().message();
}

TEST(SpaceFile, RoundTripsEveryField) {
  const auto space = sample_space("key-1");
  auto parsed = parse_space(format_space(space));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->space_id, space.space_id);
  EXPECT_EQ(parsed->owner, "key-1");
  EXPECT_EQ(parsed->sandbox_id, space.sandbox_id);
  EXPECT_TRUE(parsed->spec == space.spec);
  EXPECT_EQ(parsed->created_at_ms, space.created_at_ms);
  EXPECT_EQ(parsed->frozen_at_ms, space.frozen_at_ms);
  EXPECT_EQ(parsed->reason, "idle");
  EXPECT_EQ(parsed->machine_id, space.machine_id);
  EXPECT_EQ(parsed->images_fingerprint, space.images_fingerprint);
  EXPECT_EQ(parsed->state_bytes, space.state_bytes);
  EXPECT_EQ(parsed->disk_bytes, space.disk_bytes);
  EXPECT_EQ(parsed->lived_ms, space.lived_ms);
}

// Issue 14: a Space carries the running time its sandbox used, so a resume
// does not restart the lifetime; a Space written before that was kept
// counts its last run (frozen_at_ms - created_at_ms).
TEST(SpaceFile, KeepsTheRunningTimeAndInfersItForOlderSpaces) {
  auto space = sample_space("key-1");
  space.lived_ms = 123'456;
  auto text = format_space(space);
  auto parsed = parse_space(text);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->lived_ms, 123'456);
  const auto line = text.find("lived_ms ");
  ASSERT_NE(line, std::string::npos);
  text.erase(line, text.find('\n', line) + 1 - line);
  auto older = parse_space(text);
  ASSERT_TRUE(older) << older.error().message();
  EXPECT_EQ(older->lived_ms, space.frozen_at_ms - space.created_at_ms);
}

TEST(SpaceFile, NamesTheBadLine) {
  auto text = format_space(sample_space("key-1"));
  auto broken = text;
  broken.replace(broken.find("vcpus 1"), 7, "vcpus x");
  auto parsed = parse_space(broken);
  ASSERT_FALSE(parsed);
  EXPECT_NE(parsed.error().message().find("vcpus"), std::string::npos) << parsed.error().message();

  auto other_version = text;
  other_version.replace(0, std::string("vesicle-space 1").size(), "vesicle-space 2");
  ASSERT_FALSE(parse_space(other_version));
  EXPECT_FALSE(parse_space(""));
  EXPECT_FALSE(parse_space("vesicle-space 1\nowner k\n")); // no space_id
  EXPECT_FALSE(parse_space(text + "surprise 1\n"));
}

TEST(SpaceId, OnlyTheShapeItIsMadeIn) {
  EXPECT_TRUE(is_space_id(new_space_id()));
  EXPECT_NE(new_space_id(), new_space_id());
  EXPECT_FALSE(is_space_id("sp-0123456789aB"));
  EXPECT_FALSE(is_space_id("sp-../../etc/pa"));
  EXPECT_FALSE(is_space_id("sb-0123456789ab"));
  EXPECT_FALSE(is_space_id("sp-0123456789abc"));
  // 128 bits now; Spaces stored before ids grew keep their 48-bit ids.
  EXPECT_EQ(new_space_id().size(), 3u + 32u);
  EXPECT_TRUE(is_space_id("sp-0123456789ab"));
  EXPECT_FALSE(is_space_id("sp-" + std::string(31, 'a')));
  EXPECT_FALSE(is_space_id("sp-" + std::string(33, 'a')));
}

TEST(SpaceStore, ListsAndFindsOnlyTheOwnersSpaces) {
  testing::RetryingTempDir dir("vesicle-space-test");
  SpaceStore store(dir.path());
  auto older = sample_space("alice");
  older.frozen_at_ms = 1000;
  auto newer = sample_space("alice");
  newer.frozen_at_ms = 2000;
  auto bobs = sample_space("bob");
  write_space(store, newer);
  write_space(store, older);
  write_space(store, bobs);

  auto listed = store.list("alice");
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].space_id, older.space_id); // oldest first
  EXPECT_EQ(listed[1].space_id, newer.space_id);
  EXPECT_EQ(store.list("bob").size(), 1u);
  EXPECT_TRUE(store.list("carol").empty());

  EXPECT_TRUE(store.find("alice", older.space_id));
  // Another key's Space reads as missing, the same as an unknown id.
  auto foreign = store.find("alice", bobs.space_id);
  ASSERT_FALSE(foreign);
  EXPECT_EQ(foreign.error().kind, ErrorKind::not_found);
  auto unknown = store.find("alice", new_space_id());
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind, ErrorKind::not_found);
  EXPECT_EQ(store.find("alice", "../keys").error().kind, ErrorKind::not_found);

  ASSERT_TRUE(store.remove(older.space_id));
  EXPECT_FALSE(fs::exists(store.space_dir(older.space_id)));
  EXPECT_EQ(store.list("alice").size(), 1u);
}

TEST(SpaceStore, AnUnreadableSpaceFileIsAnErrorNotAMissingSpace) {
  testing::RetryingTempDir dir("vesicle-space-test");
  SpaceStore store(dir.path());
  auto space = sample_space("alice");
  write_space(store, space);
  std::ofstream(store.space_dir(space.space_id) / "space", std::ios::trunc) << "garbage\n";
  auto found = store.find("alice", space.space_id);
  ASSERT_FALSE(found);
  EXPECT_NE(found.error().kind, ErrorKind::not_found);
  EXPECT_TRUE(store.list("alice").empty()); // skipped (and logged), not listed half-read
}

TEST(SpaceStore, SweepRemovesUnfinishedFreezesOnly) {
  testing::RetryingTempDir dir("vesicle-space-test");
  SpaceStore store(dir.path());
  auto done = sample_space("alice");
  write_space(store, done);
  const auto interrupted = new_space_id();
  fs::create_directories(store.partial_dir(interrupted) / "vm");
  fs::create_directories(dir.path() / "not-a-space.partial");
  // A removal that hostd's exit cut short.
  const auto removing = dir.path() / (new_space_id() + ".removing");
  fs::create_directories(removing / "vm");

  EXPECT_EQ(store.sweep_partial(), 2u);
  EXPECT_FALSE(fs::exists(store.partial_dir(interrupted)));
  EXPECT_FALSE(fs::exists(removing));
  EXPECT_TRUE(fs::exists(store.space_dir(done.space_id)));
  EXPECT_TRUE(fs::exists(dir.path() / "not-a-space.partial"));
}

// remove() runs on an actor's thread: it must not wait for a big tree to be
// deleted (a Space holds gigabytes), only make the Space gone.
TEST(SpaceStore, RemovingABigSpaceReturnsBeforeItsFilesAreDeleted) {
  testing::RetryingTempDir dir("vesicle-space-test");
  SpaceStore store(dir.path());
  auto space = sample_space("alice");
  write_space(store, space);
  const auto vm = store.space_dir(space.space_id) / "vm";
  for (int d = 0; d < 20; ++d) {
    fs::create_directories(vm / std::to_string(d));
    for (int f = 0; f < 1000; ++f)
      std::ofstream(vm / std::to_string(d) / std::to_string(f)) << "x";
  }
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  ASSERT_TRUE(store.remove(space.space_id));
  const auto returned = Clock::now() - started;
  EXPECT_FALSE(fs::exists(store.space_dir(space.space_id)));
  EXPECT_TRUE(store.list("alice").empty());
  // The files go soon after, on the blocking pool.
  const auto doomed = dir.path() / (space.space_id + ".removing");
  while (fs::exists(doomed) && Clock::now() - started < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto deleted = Clock::now() - started;
  EXPECT_FALSE(fs::exists(doomed));
  EXPECT_LT(returned * 4, deleted)
      << "remove() took " << std::chrono::duration_cast<std::chrono::milliseconds>(returned).count()
      << " ms of the " << std::chrono::duration_cast<std::chrono::milliseconds>(deleted).count()
      << " ms the deletion took: it deleted the tree itself";
}

} // namespace
} // namespace vesicle
