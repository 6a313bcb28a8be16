// common/disk_space: what a filesystem can still take, read on a tmpfs of a
// known size that the test mounts (root only; skipped otherwise).
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "common/disk_space.hpp"

using namespace vesicle;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

// A 16 MiB tmpfs on a directory of its own, unmounted and removed after.
class SmallTmpfs : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/vesicle-disk-space-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
    ASSERT_EQ(::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=16m"), 0) << std::strerror(errno);
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
  bool mounted_ = false;
};

void write_mib(const fs::path& path, unsigned mib) {
  std::ofstream out(path, std::ios::binary);
  const std::string chunk(kMiB, 'x');
  for (unsigned i = 0; i < mib; ++i)
    out << chunk;
}

} // namespace

TEST_F(SmallTmpfs, SaysWhatTheFilesystemCanStillTake) {
  auto empty = available_bytes(dir_);
  ASSERT_TRUE(empty) << empty.error().message();
  EXPECT_EQ(*empty, 16 * kMiB);
  write_mib(dir_ / "five", 5);
  auto after = available_bytes(dir_);
  ASSERT_TRUE(after) << after.error().message();
  EXPECT_EQ(*after, 11 * kMiB);
}

TEST_F(SmallTmpfs, APathNotMadeYetIsAnsweredForTheFilesystemItWillBeOn) {
  write_mib(dir_ / "three", 3);
  auto later = available_bytes(dir_ / "run" / "sb-1" / "overlay.qcow2");
  ASSERT_TRUE(later) << later.error().message();
  EXPECT_EQ(*later, 13 * kMiB);
}

TEST_F(SmallTmpfs, APathUnderAFileIsAnErrorThatNamesIt) {
  write_mib(dir_ / "file", 1);
  auto under = available_bytes(dir_ / "file" / "x");
  ASSERT_FALSE(under);
  const auto message = under.error().message();
  EXPECT_NE(message.find("statvfs"), std::string::npos) << message;
  EXPECT_NE(message.find((dir_ / "file" / "x").string()), std::string::npos) << message;
}
