// Admission by host memory and disk: the arithmetic, and a real reading.
#include "actors/sandbox/host_room.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace vesicle {
namespace {

HostRoomSettings settings() {
  HostRoomSettings s;
  s.memory_reserve_mib = 1000;
  s.memory_overcommit = 1.0;
  s.vm_overhead_mib = 100;
  s.disk_reserve_mib = 500;
  s.disk_dir = "/";
  return s;
}

TEST(HostRoom, AdmitsWhatFitsAndRefusesWhatDoesNot) {
  HostFigures host{5000, 10000};
  // 4000 MiB promisable; 2 x (1024 + 100) = 2248 fits.
  EXPECT_FALSE(refuse_room(settings(), host, {}, {2, 1024, 2048}, "forking"));
  // With 2000 already promised to running sandboxes it does not.
  auto refused = refuse_room(settings(), host, {2000, 0}, {2, 1024, 2048}, "forking sb-1 2 ways");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("forking sb-1 2 ways needs 2248 MiB of host memory"), std::string::npos)
      << *refused;
  EXPECT_NE(refused->find("can promise 2000 MiB more"), std::string::npos) << *refused;
  EXPECT_NE(refused->find("1000 MiB reserved"), std::string::npos) << *refused;
}

TEST(HostRoom, ARunningSandboxIsPromisedOnlyWhatItDoesNotHoldYet) {
  HostRoomSettings s = settings();
  // No cgroup figures: the whole size (RAM + overhead).
  EXPECT_EQ(memory_still_promised_mib(s, "sb-a", 512), 612u);
  s.memory_in_use_mib = [](const std::string& id) -> std::optional<std::uint64_t> {
    if (id == "sb-a") return 200;
    if (id == "sb-full") return 700; // past its promise (shared faults): nothing more
    return std::nullopt;             // a leaf not found
  };
  EXPECT_EQ(memory_still_promised_mib(s, "sb-a", 512), 412u);
  EXPECT_EQ(memory_still_promised_mib(s, "sb-full", 512), 0u);
  EXPECT_EQ(memory_still_promised_mib(s, "sb-unknown", 512), 612u);
}

TEST(HostRoom, OvercommitScalesWhatMayBePromised) {
  auto s = settings();
  HostFigures host{3000, 10000};
  // 2000 left after the reserve: 3 x 1124 = 3372 does not fit at 1.0 ...
  EXPECT_TRUE(refuse_room(s, host, {}, {3, 1024, 1}, "x"));
  // ... and does at 2.0 (4000 promisable).
  s.memory_overcommit = 2.0;
  EXPECT_FALSE(refuse_room(s, host, {}, {3, 1024, 1}, "x"));
}

TEST(HostRoom, RefusesWhenTheDiskCannotHoldTheWritableDisks) {
  HostFigures host{100000, 5000};
  EXPECT_FALSE(refuse_room(settings(), host, {0, 2000}, {1, 512, 2048}, "x"));
  auto refused = refuse_room(settings(), host, {0, 3000}, {1, 512, 2048}, "creating a sandbox");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("needs 2048 MiB of host disk"), std::string::npos) << *refused;
  EXPECT_NE(refused->find("can promise 1500 MiB more"), std::string::npos) << *refused;
  // No disk_dir: no disk check.
  auto s = settings();
  s.disk_dir.clear();
  EXPECT_FALSE(refuse_room(s, host, {0, 3000}, {1, 512, 2048}, "x"));
}

TEST(HostRoom, ReservesLargerThanTheHostRefuseEverything) {
  HostFigures host{500, 100};
  EXPECT_TRUE(refuse_room(settings(), host, {}, {1, 128, 0}, "x"));
}

TEST(HostRoom, ReadsThisHostsFigures) {
  auto figures = read_host_figures(settings());
  ASSERT_TRUE(figures) << figures.error().message();
  EXPECT_GT(figures->memory_available_mib, 0u);
  EXPECT_GT(figures->disk_free_mib, 0u);
}

TEST(HostRoom, ADiskDirNotMadeYetIsMeasuredOnItsFilesystem) {
  auto s = settings();
  s.disk_dir = "/tmp/vesicle-not-made-yet/run/vesicle";
  auto figures = read_host_figures(s);
  ASSERT_TRUE(figures) << figures.error().message();
  EXPECT_GT(figures->disk_free_mib, 0u);
}

TEST(HostRoom, AMeminfoWithoutMemAvailableIsAnError) {
  auto s = settings();
  s.meminfo =
      std::filesystem::temp_directory_path() / ("vesicle-meminfo-" + std::to_string(::getpid()));
  struct Remove {
    std::filesystem::path path;
    ~Remove() { std::filesystem::remove(path); }
  } remove{s.meminfo};
  std::ofstream(s.meminfo) << "MemTotal: 1000 kB\nMemFree: 10 kB\n";
  auto figures = read_host_figures(s);
  ASSERT_FALSE(figures);
  EXPECT_NE(figures.error().message().find("MemAvailable"), std::string::npos);
  std::ofstream(s.meminfo) << "MemTotal: 1000 kB\nMemAvailable:    2097152 kB\n";
  figures = read_host_figures(s);
  ASSERT_TRUE(figures);
  EXPECT_EQ(figures->memory_available_mib, 2048u);
}

} // namespace
} // namespace vesicle
