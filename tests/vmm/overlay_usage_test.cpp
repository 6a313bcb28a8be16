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
#include <optional>
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

// A VM's directory as QEMU holds it: its overlay (`written` of 64 MiB)
// open for writing, and a backing file of 8 MiB under the same name open
// read-only.
struct HeldVmDir {
  explicit HeldVmDir(std::uint64_t written) {
    fs::create_directories(dir.path() / "pool-abc" / "template");
    sparse_file(overlay, written, 64 * kMiB);
    sparse_file(backing, 8 * kMiB, 8 * kMiB);
    qemu.emplace(backing, overlay);
  }
  TempDir dir;
  const fs::path overlay = dir.path() / "pool-abc" / kOverlayFileName;
  const fs::path backing = dir.path() / "pool-abc" / "template" / kOverlayFileName;
  std::optional<Holder> qemu;
};

TEST(OverlayUsage, FindsTheOverlayItsProcessWritesAndCountsItsAllocatedBlocks) {
  HeldVmDir held(3 * kMiB);
  const fs::path& overlay = held.overlay;
  Holder& qemu = *held.qemu;
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

TEST(OverlayUsage, AHintIsLookedAtFirstAndSetToTheDescriptorFound) {
  HeldVmDir held(2 * kMiB);
  const fs::path& overlay = held.overlay;
  Holder& qemu = *held.qemu;
  ASSERT_TRUE(qemu.opened());

  int hint = -1;
  auto found = overlay_bytes_in_use(qemu.pid(), &hint);
  ASSERT_TRUE(found) << found.error().message();
  ASSERT_GE(hint, 0);
  const std::string link = "/proc/" + std::to_string(qemu.pid()) + "/fd/" + std::to_string(hint);
  EXPECT_EQ(fs::read_symlink(link), overlay);
  // The same answer through the hint, which stays.
  const int first = hint;
  auto again = overlay_bytes_in_use(qemu.pid(), &hint);
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(*again, *found);
  EXPECT_EQ(hint, first);
  // A hint that names another descriptor (the read-only backing file, one
  // not open) is corrected by a full look.
  for (int wrong : {0, 999}) {
    hint = wrong;
    auto corrected = overlay_bytes_in_use(qemu.pid(), &hint);
    ASSERT_TRUE(corrected) << corrected.error().message();
    EXPECT_EQ(*corrected, *found);
    EXPECT_EQ(hint, first) << "from hint " << wrong;
  }
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
