// Admission by host memory and disk: the arithmetic, and a real reading.
#include "actors/sandbox/host_room.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>

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
  EXPECT_EQ(memory_promised(s, "sb-a", 512).still_mib, 612u);
  s.memory_in_use_mib = [](const std::string& id) -> std::optional<std::uint64_t> {
    if (id == "sb-a") return 200;
    if (id == "sb-full") return 700; // past its promise (shared faults): nothing more
    return std::nullopt;             // a leaf not found
  };
  EXPECT_EQ(memory_promised(s, "sb-a", 512).still_mib, 412u);
  EXPECT_EQ(memory_promised(s, "sb-full", 512).still_mib, 0u);
  EXPECT_EQ(memory_promised(s, "sb-unknown", 512).still_mib, 612u);
}

TEST(HostRoom, OvercommitScalesWhatMayBePromised) {
  auto s = settings();
  HostFigures host{3000, 10000};
  // 2000 left after the reserve: 3 x 1124 = 3372 does not fit at 1.0 ...
  EXPECT_TRUE(refuse_room(s, host, {}, {3, 1024, 1}, "x"));
  // ... and does at 2.0 (4000 promisable).
  s.memory_overcommit = 2.0;
  EXPECT_FALSE(refuse_room(s, host, {}, {3, 1024, 1}, "x"));
  // A refusal names the ratio it was made at.
  auto refused = refuse_room(s, host, {}, {4, 1024, 1}, "x");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("1000 MiB reserved, promised 2 times over (memory_overcommit), 0 MiB"),
            std::string::npos)
      << *refused;
}

TEST(HostRoom, OvercommitScalesTheHostsRoomNotOnlyWhatIsFree) {
  auto s = settings();
  // 3000 MiB available and 1000 held by running sandboxes that were
  // promised 3000 (2000 still to take): the room for sandboxes is 3000
  // beyond the reserve.
  HostFigures host{3000, 10000};
  HostCommitments committed{2000, 0, 1000, 0};
  // At 1.0: 3000 - 3000 promised = 0 more; the same as the memory
  // available beyond the reserve (2000) less what they may still take.
  EXPECT_TRUE(refuse_room(s, host, committed, {1, 1, 1}, "x"));
  // At 2.0: 6000 - 3000 = 3000 more: two 1124 MiB sandboxes, not three.
  // (Scaling only what is free would leave 4000 - 2000 = 2000: one.)
  s.memory_overcommit = 2.0;
  EXPECT_FALSE(refuse_room(s, host, committed, {2, 1024, 1}, "x"));
  auto refused = refuse_room(s, host, committed, {3, 1024, 1}, "x");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("can promise 3000 MiB more (3000 MiB available, 1000 MiB reserved, "
                          "promised 2 times over (memory_overcommit), 1000 MiB that running "
                          "sandboxes hold, 2000 MiB that running sandboxes may still use)"),
            std::string::npos)
      << *refused;
  // The disk alike: 4500 free and 1000 written of 3000 promised.
  s.disk_overcommit = 2.0;
  HostFigures disk_host{100000, 4500};
  HostCommitments disk_committed{0, 2000, 0, 1000};
  // (4500 + 1000 - 500) x 2 - 3000 = 7000: three 2049 MiB disks fit.
  EXPECT_FALSE(refuse_room(s, disk_host, disk_committed, {3, 1, 2048}, "x"));
  EXPECT_TRUE(refuse_room(s, disk_host, disk_committed, {4, 1, 2048}, "x"));
}

TEST(HostRoom, ARunningSandboxSaysWhatItHolds) {
  auto s = settings();
  s.memory_in_use_mib = [](const std::string& id) -> std::optional<std::uint64_t> {
    if (id == "sb-big") return 5000;
    if (id == "sb-a") return 100;
    return std::nullopt;
  };
  auto a = memory_promised(s, "sb-a", 512);
  EXPECT_EQ(a.still_mib, 512u);
  EXPECT_EQ(a.held_mib, 100u);
  // At most what it was promised.
  auto big = memory_promised(s, "sb-big", 512);
  EXPECT_EQ(big.still_mib, 0u);
  EXPECT_EQ(big.held_mib, 612u);
  auto unknown = memory_promised(s, "sb-unknown", 512);
  EXPECT_EQ(unknown.still_mib, 612u);
  EXPECT_EQ(unknown.held_mib, 0u);
  s.disk_in_use_mib = [](std::int32_t pid) -> std::optional<std::uint64_t> {
    if (pid == 100) return 700;
    return std::nullopt;
  };
  auto written = disk_promised(s, 100, 2048);
  EXPECT_EQ(written.still_mib, 2049u - 700);
  EXPECT_EQ(written.held_mib, 700u);
  auto not_started = disk_promised(s, 0, 2048);
  EXPECT_EQ(not_started.still_mib, 2049u);
  EXPECT_EQ(not_started.held_mib, 0u);
}

TEST(HostRoom, RefusesWhenTheDiskCannotHoldTheWritableDisks) {
  HostFigures host{100000, 5000};
  // 4500 MiB after the reserve; a 2048 MiB disk is promised 2049 with its
  // qcow2 tables.
  EXPECT_FALSE(refuse_room(settings(), host, {0, 2000}, {1, 512, 2048}, "x"));
  auto refused = refuse_room(settings(), host, {0, 3000}, {1, 512, 2048}, "creating a sandbox");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("creating a sandbox needs 2049 MiB of host disk (1 x 2049 MiB: a 2048 "
                          "MiB writable disk and its qcow2 tables)"),
            std::string::npos)
      << *refused;
  EXPECT_NE(refused->find("can promise 1500 MiB more (5000 MiB free in /, 500 MiB reserved, 3000 "
                          "MiB that running sandboxes may still write)"),
            std::string::npos)
      << *refused;
  // No disk_dir: no disk check.
  auto s = settings();
  s.disk_dir.clear();
  EXPECT_FALSE(refuse_room(s, host, {0, 3000}, {1, 512, 2048}, "x"));
}

TEST(HostRoom, ADiskIsPromisedWithItsQcow2Tables) {
  EXPECT_EQ(disk_promised_mib(0), 1u);
  EXPECT_EQ(disk_promised_mib(2048), 2049u);
  EXPECT_EQ(disk_promised_mib(100 * 1024), 100u * 1024 + 26);
}

TEST(HostRoom, ARunningSandboxIsPromisedOnlyTheDiskItHasNotWrittenYet) {
  HostRoomSettings s = settings();
  // No overlay figures: the whole disk and its tables.
  EXPECT_EQ(disk_promised(s, 4242, 2048).still_mib, 2049u);
  std::vector<std::int32_t> asked;
  s.disk_in_use_mib = [&asked](std::int32_t pid) -> std::optional<std::uint64_t> {
    asked.push_back(pid);
    if (pid == 100) return 700;  // has written 700 MiB
    if (pid == 200) return 2100; // past its promise: nothing more
    return std::nullopt;         // gone, or not a VM's QEMU
  };
  EXPECT_EQ(disk_promised(s, 100, 2048).still_mib, 2049u - 700);
  EXPECT_EQ(disk_promised(s, 200, 2048).still_mib, 0u);
  EXPECT_EQ(disk_promised(s, 300, 2048).still_mib, 2049u);
  // A sandbox whose QEMU has not started (pid 0) is not looked up.
  EXPECT_EQ(disk_promised(s, 0, 2048).still_mib, 2049u);
  EXPECT_EQ(asked, (std::vector<std::int32_t>{100, 200, 300}));
}

TEST(HostRoom, DiskOvercommitScalesWhatMayBePromised) {
  auto s = settings();
  HostFigures host{100000, 4500};
  // 4000 MiB left after the reserve: 3 x 2049 = 6147 does not fit at 1.0 ...
  EXPECT_TRUE(refuse_room(s, host, {}, {3, 128, 2048}, "x"));
  // ... and does at 2.0 (8000 promisable) ...
  s.disk_overcommit = 2.0;
  EXPECT_FALSE(refuse_room(s, host, {}, {3, 128, 2048}, "x"));
  // ... until running sandboxes may still write 2000 of it; the refusal
  // says the ratio.
  auto refused = refuse_room(s, host, {0, 2000}, {3, 128, 2048}, "forking sb-1 3 ways");
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("forking sb-1 3 ways needs 6147 MiB of host disk"), std::string::npos)
      << *refused;
  EXPECT_NE(refused->find("can promise 6000 MiB more (4500 MiB free in /, 500 MiB reserved, "
                          "promised 2 times over (disk_overcommit), 2000 MiB"),
            std::string::npos)
      << *refused;
  // Below 1 it promises less than there is.
  s.disk_overcommit = 0.5;
  EXPECT_TRUE(refuse_room(s, host, {}, {1, 128, 2048}, "x"));
  EXPECT_FALSE(refuse_room(s, host, {}, {1, 128, 1024}, "x"));
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
