// A running VM's overlay found through its process: a real child holding
// the files open as QEMU does (its overlay read-write, a backing image of
// the same name read-only), looked up through the real /proc.
#include "vmm/overlay_usage.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/vmm/test_support.hpp"

namespace vesicle::vmm {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

constexpr std::uint64_t kMiB = 1024 * 1024;

// A child that opens `read_only` (if any) and then `read_write` (if any),
// says so on a pipe and waits to be killed; killed and reaped when dropped.
class Holder {
public:
  Holder(const fs::path& read_only, const fs::path& read_write) {
    int ready[2];
    if (::pipe(ready) != 0) std::abort();
    const std::string ro = read_only.string(), rw = read_write.string();
    pid_ = ::fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (!ro.empty() && ::open(ro.c_str(), O_RDONLY) < 0) ::_exit(1);
      if (!rw.empty() && ::open(rw.c_str(), O_RDWR) < 0) ::_exit(1);
      (void)::write(ready[1], "x", 1);
      for (;;)
        ::pause();
    }
    ::close(ready[1]);
    char byte = 0;
    opened_ = ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
  }
  ~Holder() { stop(); }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  pid_t pid() const { return pid_; }
  bool opened() const { return opened_; }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

private:
  pid_t pid_ = -1;
  bool opened_ = false;
};

std::uint64_t allocated_bytes(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// A file of `apparent` bytes of which only the first `written` hold data.
void sparse_file(const fs::path& path, std::uint64_t written, std::uint64_t apparent) {
  test::write_file(path, std::string(written, 'd'));
  fs::resize_file(path, apparent);
}

TEST(OverlayUsage, FindsTheOverlayItsProcessWritesAndCountsItsAllocatedBlocks) {
  TempDir dir;
  fs::create_directories(dir.path() / "pool-abc" / "template");
  const fs::path overlay = dir.path() / "pool-abc" / kOverlayFileName;
  const fs::path backing = dir.path() / "pool-abc" / "template" / kOverlayFileName;
  sparse_file(overlay, 3 * kMiB, 64 * kMiB);
  sparse_file(backing, 8 * kMiB, 8 * kMiB);
  Holder qemu(backing, overlay);
  ASSERT_TRUE(qemu.opened());

  auto bytes = overlay_bytes_in_use(qemu.pid());
  ASSERT_TRUE(bytes) << bytes.error().message();
  // The overlay's blocks, not its apparent size nor the backing file's.
  EXPECT_EQ(*bytes, allocated_bytes(overlay));
  EXPECT_GE(*bytes, 3 * kMiB);
  EXPECT_LT(*bytes, 8 * kMiB);

  // The guest writes more: the next look sees it.
  {
    std::fstream grow(overlay, std::ios::in | std::ios::out | std::ios::binary);
    grow.seekp(static_cast<std::streamoff>(32 * kMiB));
    grow << std::string(5 * kMiB, 'e');
  }
  bytes = overlay_bytes_in_use(qemu.pid());
  ASSERT_TRUE(bytes) << bytes.error().message();
  EXPECT_GE(*bytes, 8 * kMiB);
  EXPECT_EQ(*bytes, allocated_bytes(overlay));
}

TEST(OverlayUsage, AProcessWithoutAWritableOverlayOrGoneIsAnError) {
  TempDir dir;
  const fs::path backing = dir.path() / kOverlayFileName;
  sparse_file(backing, kMiB, kMiB);
  // Only a read-only file of that name (a backing image): not its overlay.
  Holder reader(backing, {});
  ASSERT_TRUE(reader.opened());
  auto none = overlay_bytes_in_use(reader.pid());
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message().find("holds no overlay.qcow2 open for writing"),
            std::string::npos)
      << none.error().message();
  // A file merely ending in the name is not it either.
  const fs::path lookalike = dir.path() / "not-an-overlay.qcow2";
  sparse_file(lookalike, kMiB, kMiB);
  Holder other({}, lookalike);
  ASSERT_TRUE(other.opened());
  EXPECT_FALSE(overlay_bytes_in_use(other.pid()));

  // The VM exited between the registry's look and this one.
  const pid_t gone = reader.pid();
  reader.stop();
  auto exited = overlay_bytes_in_use(gone);
  ASSERT_FALSE(exited);
  EXPECT_NE(exited.error().message().find("/proc/" + std::to_string(gone) + "/fd"),
            std::string::npos)
      << exited.error().message();
  EXPECT_FALSE(overlay_bytes_in_use(0));
}

TEST(OverlayUsage, ReadsTheOpenFlagsOfFdinfo) {
  EXPECT_EQ(fdinfo_flags("pos:\t0\nflags:\t0100002\nmnt_id:\t25\nino:\t12\n"), 0100002u);
  EXPECT_EQ(fdinfo_flags("flags: 02"), 02u);
  EXPECT_FALSE(fdinfo_flags("pos:\t0\nmnt_id:\t25\n"));
  EXPECT_FALSE(fdinfo_flags("pos:\t0\nflags:\tnone\n"));
  EXPECT_FALSE(fdinfo_flags(""));
  // This process's own descriptors, as the kernel shows them.
  TempDir dir;
  const fs::path file = dir.path() / "f";
  test::write_file(file, "x");
  for (const int mode : {O_RDONLY, O_WRONLY, O_RDWR}) {
    const int fd = ::open(file.c_str(), mode | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    const auto text = test::read_file("/proc/self/fdinfo/" + std::to_string(fd));
    ::close(fd);
    auto flags = fdinfo_flags(text);
    ASSERT_TRUE(flags) << text;
    EXPECT_EQ(*flags & O_ACCMODE, static_cast<unsigned>(mode)) << text;
  }
}

} // namespace
} // namespace vesicle::vmm
